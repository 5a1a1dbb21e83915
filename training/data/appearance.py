"""Paint a synthetic person's attributes onto the UV atlas as explicit texel parameters.

Every valid texel of the R x R layout gets a colour, an offset from its anchor (tangent frame t, b, n;
metres), an opacity and log-scales; `encode_explicit` turns them into the ground-truth token map.

- Body shape: the macro-target displacement (`body_shape`) is the first part of every offset.
- Garments are thin shells (offset along the normal, 0.5-2 cm), painted by body part and by height on
  the displaced body (hem lines from the template's joints: waist, hips, knees, ankles, elbows).
- Loose garments and hair are GEOMETRY, not recoloured skin: long hair moves the back and sides of the
  scalp and neck outwards and downwards into a curtain (a voluminous mane that clears the back), a bun
  pushes the upper back of the head out into a ball, skirts and dresses push thigh and hip texels
  radially out from the body axis into a bell (cone) from the hips to the hem. Stretched texels get
  proportionally larger scales so the sheet keeps no holes. Everything stays within the decoder's
  per-region reach (`DEFAULT_REGION_REACH`: head 0.45 m, legs 0.40 m, torso 0.30 m).

All arrays here are numpy (R, R, ...) on the layout's grid; only valid texels matter.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from backend.avatar.body_parts import PART_IDS
from training.data import vocabulary as vocab


@dataclasses.dataclass
class BodyLandmarks:
    """Heights (z, metres) and axes of the template used for hem lines and hair."""

    head_centre: np.ndarray   # (3,)
    head_top: float
    neck_low: float
    shoulder: float
    chest: float
    waist: float
    hip: float
    knee: float
    ankle: float
    elbow: float
    body_axis_y: float
    eye_x: float
    eye_z: float

    @classmethod
    def from_template(cls, template, layout) -> "BodyLandmarks":
        heads = {n: template.rest_matrices[i, :3, 3] for i, n in enumerate(template.joint_names)}
        a = layout.anchors.numpy()
        head = layout.part_ids.numpy() == PART_IDS["head"]
        neck = layout.part_ids.numpy() == PART_IDS["neck"]
        centre = np.array([0.0, float(np.median(a[head][:, 1])), float(heads["head"][2]) + 0.045])
        return cls(head_centre=centre, head_top=float(a[head][:, 2].max()), neck_low=float(a[neck][:, 2].min()),
                   shoulder=float(heads["upperarm01.L"][2]), chest=float(heads["spine01"][2]) - 0.05,
                   waist=float(heads["spine03"][2]) - 0.03, hip=float(heads["root"][2]),
                   knee=float(heads["lowerleg01.L"][2]), ankle=0.10, elbow=float(heads["lowerarm01.L"][2]),
                   body_axis_y=float(heads["spine05"][1]), eye_x=abs(float(heads["eye.L"][0])),
                   eye_z=float(heads["eye.L"][2]))


@dataclasses.dataclass
class TexelParams:
    rgb: np.ndarray        # (R, R, 3) in [0, 1]
    offset: np.ndarray     # (R, R, 3) world-space displacement of the anchor (metres), rest pose
    log_scale: np.ndarray  # (R, R, 3) added to the decoder's base log-scale (t, b, n)
    opacity: np.ndarray    # (R, R)
    labels: np.ndarray     # (R, R) int: what covers the texel (LABELS)


LABELS = ("skin", "hair", "upper", "lower", "shoes")


def _smooth_noise(rng: np.random.Generator, r: int, cells: int = 6) -> np.ndarray:
    coarse = rng.standard_normal((cells, cells))
    idx = np.linspace(0, cells - 1, r)
    i0 = np.floor(idx).astype(int)
    i1 = np.minimum(i0 + 1, cells - 1)
    f = idx - i0
    rows = coarse[i0] * (1 - f)[:, None] + coarse[i1] * f[:, None]
    return rows[:, i0] * (1 - f)[None] + rows[:, i1] * f[None]


def paint(layout, landmarks: BodyLandmarks, attrs: dict[str, Any], displacement: np.ndarray,
          rng: np.random.Generator) -> TexelParams:
    """Attributes -> texel parameters. displacement: (R, R, 3) body-shape offset of each anchor."""
    r = layout.resolution
    lm = landmarks
    atlas = layout.atlas_mask.numpy()
    part = layout.part_ids.numpy()
    anchor = layout.anchors.numpy().astype(np.float64)
    normal = layout.frames.numpy()[..., 2].astype(np.float64)
    pos = anchor + displacement  # (R, R, 3) body surface of this person
    x, y, z = pos[..., 0], pos[..., 1], pos[..., 2]

    def parts(*names: str) -> np.ndarray:
        return np.isin(part, [PART_IDS[n] for n in names]) & atlas

    head, neck, torso = parts("head"), parts("neck"), parts("torso")
    upper_arm, lower_arm = parts("upper_arm.L", "upper_arm.R"), parts("lower_arm.L", "lower_arm.R")
    upper_leg, lower_leg = parts("upper_leg.L", "upper_leg.R"), parts("lower_leg.L", "lower_leg.R")
    feet = parts("foot.L", "foot.R")
    front = normal[..., 1] < -0.35

    skin = np.asarray(vocab.SKIN_TONES[attrs["skin_tone"]])
    rgb = np.broadcast_to(skin, (r, r, 3)).copy()
    rgb *= (1.0 + 0.03 * _smooth_noise(rng, r))[..., None]
    offset = displacement.astype(np.float64).copy()
    log_scale = np.zeros((r, r, 3))
    opacity = np.full((r, r), 0.97)
    labels = np.zeros((r, r), dtype=np.int64)

    def cover(mask: np.ndarray, colour, thickness: float, label: str) -> None:
        rgb[mask] = colour if np.ndim(colour) == 1 else colour[mask]
        offset[mask] += normal[mask] * thickness
        labels[mask] = LABELS.index(label)

    # ---- lower garment (painted first: the upper garment's hem may overlap it)
    lower, lower_col = attrs["lower"], np.asarray(vocab.COLOURS[attrs["lower_colour"]])
    waist_band = torso & (z < lm.waist)
    if lower in ("shorts", "trousers"):
        hem = lm.ankle if lower == "trousers" else lm.knee + rng.uniform(0.12, 0.2)
        legs_cov = (upper_leg | lower_leg) & (z > hem)
        cover(waist_band | legs_cov, lower_col, 0.008, "lower")
    else:  # skirt or dress: a bell from the hips to the hem
        hem = lm.knee + (rng.uniform(0.0, 0.2) if lower == "skirt" else rng.uniform(-0.12, 0.08))
        cloth = waist_band | ((upper_leg | lower_leg) & (z > hem))
        cover(cloth, lower_col, 0.006, "lower")
        _bell(pos, cloth & (z < lm.hip + 0.05), upper_leg | lower_leg, lm, rng.uniform(0.25, 0.45),
              offset, log_scale)

    # ---- upper garment
    upper = attrs["upper"]
    up_col = np.asarray(vocab.COLOURS[attrs["upper_colour"]])
    pattern_col = _pattern_colours(attrs, up_col, pos, lm, front, rng)
    neckline = torso & front & (z > lm.shoulder - 0.03) & (np.abs(x) < 0.07)
    if upper == "dress":
        body = torso & (z >= lm.waist) & ~neckline
        sleeves = np.zeros_like(body)
        thick = 0.006
    else:
        hem = {"t-shirt": lm.hip + 0.02, "long-sleeve shirt": lm.hip + 0.02, "tank top": lm.hip + 0.04,
               "hoodie": lm.hip - 0.04, "jacket": lm.hip - 0.06}[upper]
        body = torso & (z >= hem)
        if upper in ("t-shirt", "tank top"):
            body &= ~neckline
        if upper == "tank top":
            body &= ~((np.abs(x) > 0.11) & (z > lm.shoulder - 0.06))
            sleeves = np.zeros_like(body)
        elif upper == "t-shirt":
            sleeves = upper_arm & (z > lm.elbow + 0.08)
        else:
            sleeves = upper_arm | lower_arm
        thick = {"t-shirt": 0.007, "long-sleeve shirt": 0.007, "tank top": 0.005, "hoodie": 0.015,
                 "jacket": 0.018}[upper]
    cover(body | sleeves, pattern_col, thick, "upper")
    if upper == "hoodie":  # the hood lies bunched on the upper back and the back of the neck
        hood = ((torso & (z > lm.shoulder - 0.1)) | (neck & (normal[..., 1] > -0.2))) & (normal[..., 1] > 0.0)
        cover(hood, up_col * 0.9, 0.03, "upper")
        log_scale[hood] += np.array([0.3, 0.3, 0.5])
    if upper == "jacket":  # an open front: a zip line and a collar
        zip_line = body & front & (np.abs(x) < 0.018)
        rgb[zip_line] = np.asarray(vocab.COLOURS["grey"]) * 0.6
        collar = neck & (z < lm.neck_low + 0.04)
        cover(collar, up_col, 0.012, "upper")

    # ---- shoes
    shoes, shoe_col = attrs["shoes"], np.asarray(vocab.COLOURS[attrs["shoes_colour"]])
    if shoes == "sneakers":
        cover(feet, shoe_col, 0.006, "shoes")
        sole = feet & (z < 0.018)
        rgb[sole] = vocab.COLOURS["white"]
    elif shoes == "boots":
        cover(feet | (lower_leg & (z < lm.ankle + 0.14)), shoe_col, 0.01, "shoes")
    else:  # sandals: sole and two straps, toes and instep stay skin
        straps = feet & ((z < 0.02) | (np.abs(z - 0.05) < 0.008) | (np.abs(z - 0.075) < 0.008))
        cover(straps, shoe_col, 0.004, "shoes")

    # a face the tokenizer can orient by: eyes and mouth on front-facing head texels
    face_front = head & (normal[..., 1] < -0.55)
    for ex in (lm.eye_x, -lm.eye_x):
        rgb[face_front & (np.abs(x - ex) < 0.013) & (np.abs(z - lm.eye_z) < 0.009)] = (0.12, 0.09, 0.08)
    rgb[face_front & (np.abs(x) < 0.022) & (np.abs(z - (lm.eye_z - 0.072)) < 0.007)] = skin * np.array([0.75, 0.5, 0.5])
    _hair(attrs, lm, head, neck, torso, pos, normal, rgb, offset, log_scale, opacity, labels, rng)
    rgb = np.clip(rgb, 0.0, 1.0)
    keep = atlas[..., None]
    return TexelParams(rgb=rgb * keep, offset=offset * keep, log_scale=log_scale * keep,
                       opacity=np.where(atlas, opacity, 0.5), labels=np.where(atlas, labels, -1))


def _bell(pos: np.ndarray, bell: np.ndarray, legs: np.ndarray, lm: BodyLandmarks, flare: float,
          offset: np.ndarray, log_scale: np.ndarray) -> None:
    """Skirt/dress geometry: move `bell` texels onto a surface of revolution about the body axis whose
    radius grows from the hips down (`flare` metres per metre). Each leg's texels, all around that
    leg's own axis, spread over one half of the bell (outer side -> side of the bell, inner side -> the
    front and back centre lines), so the bell has no gap between the legs."""
    x, y, z = pos[..., 0], pos[..., 1], pos[..., 2]
    cy = lm.body_axis_y
    radius = 0.19 + np.clip(lm.hip - z, 0.0, None) * flare
    psi = np.arctan2(y - cy, x)  # hips/torso texels: their own azimuth about the body axis
    ring = np.full(x.shape, 0.0)
    for sign in (1.0, -1.0):
        side = bell & legs & (np.sign(x) == sign)
        if not side.any():
            continue
        xc, yc = x[side].mean(), y[side].mean()
        psi_t = np.arctan2(y - yc, sign * (x - xc))  # outer side 0, inner side +-pi
        half = psi_t / 2.0
        psi = np.where(side, np.arctan2(np.sin(half), sign * np.cos(half)), psi)
        r_leg = np.hypot(x - xc, y - yc)
        ring = np.where(side, radius / (2.0 * np.maximum(r_leg, 0.02)), ring)
    torso_part = bell & ~legs
    ring = np.where(torso_part, radius / np.maximum(np.hypot(x, y - cy), 0.05), ring)
    target_x, target_y = radius * np.cos(psi), cy + radius * np.sin(psi)
    offset[..., 0] += np.where(bell, target_x - x, 0.0)
    offset[..., 1] += np.where(bell, target_y - y, 0.0)
    grow = np.where(bell, np.log(np.clip(ring, 1.0, 6.0)), 0.0)
    log_scale[..., 0] += grow
    log_scale[..., 1] += grow
    log_scale[..., 2] += np.where(bell, 0.4, 0.0)


def _pattern_colours(attrs, base: np.ndarray, pos: np.ndarray, lm: BodyLandmarks, front: np.ndarray,
                     rng: np.random.Generator) -> np.ndarray:
    """(R, R, 3) garment colour with its pattern (stripes by height, checks by height x azimuth)."""
    r = pos.shape[0]
    out = np.broadcast_to(base, (r, r, 3)).copy()
    pattern = attrs["upper_pattern"]
    light = float(base.mean()) > 0.5
    second = np.asarray(vocab.COLOURS["navy" if light else "white"])
    z = pos[..., 2]
    if pattern == "stripes":
        period = rng.uniform(0.05, 0.08)
        out[np.sin(2 * math.pi * z / period) > 0.2] = second
    elif pattern == "checks":
        period = rng.uniform(0.07, 0.1)
        az = np.arctan2(pos[..., 0], pos[..., 1] - lm.body_axis_y) * 0.15  # arc length at ~15 cm radius
        a = np.sin(2 * math.pi * z / period) > 0
        b = np.sin(2 * math.pi * az / period) > 0
        out[a ^ b] = 0.6 * base + 0.4 * second
    elif pattern == "chest print":
        print_col = np.asarray(vocab.COLOURS[str(rng.choice(["white", "yellow", "black", "orange"]))])
        if np.allclose(print_col, base):
            print_col = second
        centre_z = lm.chest - 0.02
        disc = front & ((pos[..., 0] / 0.075) ** 2 + ((z - centre_z) / 0.075) ** 2 < 1.0)
        out[disc] = print_col
    return out


def _hair(attrs, lm: BodyLandmarks, head, neck, torso, pos, normal, rgb, offset, log_scale, opacity, labels,
          rng: np.random.Generator) -> None:
    style = attrs["hair_style"]
    if style == "bald":
        return
    colour = np.asarray(vocab.HAIR_COLOURS[attrs["hair_colour"]])
    colour = colour[None, None] * (1.0 + 0.08 * _smooth_noise(rng, pos.shape[0], 10))[..., None]
    hx, hy, hz = lm.head_centre
    rel = pos - np.array([hx, hy, 0.0])
    radial = np.linalg.norm(rel[..., :2], axis=-1).clip(1e-4)
    # angle from the back (+y) around the head's vertical axis: 0 back, pi front
    ang = np.arccos(np.clip(rel[..., 1] / radial, -1.0, 1.0))
    z = pos[..., 2]
    face = head & (ang > 1.9) & (z < hz + 0.06)
    ears_side = head & (ang > 1.35) & (z < hz - 0.01)
    scalp = head & ~face & ~ears_side & (z > hz - 0.07)
    h = LABELS.index("hair")

    def put(mask, thick, scale=(0.0, 0.0, 0.0)):
        rgb[mask] = colour[mask]
        offset[mask] += normal[mask] * thick
        log_scale[mask] += np.asarray(scale)
        labels[mask] = h
        opacity[mask] = 0.96

    put(scalp, 0.012 if style == "short" else 0.018, (0.15, 0.15, 0.3))
    if style == "bun":
        bun = scalp & (ang < 1.0) & (z > hz + 0.0) & (z < hz + 0.09)
        w = np.clip(1.0 - ang / 1.0, 0.0, 1.0) * np.clip(1.0 - np.abs(z - (hz + 0.045)) / 0.045, 0.0, 1.0)
        bump = rng.uniform(0.05, 0.07) * np.sqrt(w)
        offset[bun] += normal[bun] * bump[bun, None]
        log_scale[bun] += np.array([0.6, 0.6, 0.6])
    elif style == "long":
        # the curtain: back and sides of scalp (below the crown) and of the neck fall to `end`
        start = hz + 0.03
        end = rng.uniform(lm.shoulder - 0.25, lm.shoulder - 0.1)
        source = ((scalp & (z < start)) | (neck & (ang < 1.9))) & (ang < 1.9)
        t = np.clip((start - z) / max(start - lm.neck_low, 1e-3), 0.0, 1.0)  # 0 at the top .. 1 at the bottom
        back = ang < 1.4
        new_z = start - t * (start - end)
        side_end = lm.head_centre[2] - 0.13  # side hair falls to the chin and rests on the shoulders
        new_z = np.where(back, new_z, start - t * (start - side_end))
        r_target = np.where(back, 0.17 + 0.05 * t, 0.13 + 0.03 * t)  # a full mane that clears the back
        new_r = np.maximum(radial, r_target)
        dirs = rel[..., :2] / radial[..., None]
        target = np.stack([hx + dirs[..., 0] * new_r, hy + dirs[..., 1] * new_r, new_z], -1)
        d = np.where(source[..., None], target - pos, 0.0)
        offset[source] += d[source]
        stretch = np.where(back, (start - end), (start - side_end)) / max(start - lm.neck_low, 1e-3)
        grow = np.log(np.clip(stretch, 1.0, 8.0)) + np.log(np.clip(new_r / radial, 1.0, 4.0))
        rgb[source] = colour[source]
        labels[source] = h
        opacity[source] = 0.96
        log_scale[source] += np.stack([grow, grow, np.full_like(grow, 0.6)], -1)[source]
        # hair tips lying on the upper back over the garment
        tips = torso & (normal[..., 1] > 0.4) & (z > end - 0.03) & (np.abs(pos[..., 0]) < 0.12)
        put(tips, 0.03, (0.2, 0.2, 0.4))
