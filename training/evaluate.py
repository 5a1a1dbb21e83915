"""`genlca-train eval`: DiT checkpoints against held-out synthetic people with known ground truth.

    genlca-train eval --checkpoints runs/aware/last.safetensors runs/naive/last.safetensors \
        --shards data/synthetic/shards --out runs/eval.json --markdown runs/eval.md

For every held-out person (shard meta `split` in --splits; "test" = attribute combinations seen in
training, "heldout-combo" = combinations never seen together there) the model samples `--samples`
token maps from the person's first caption (fixed seeds, Euler, CFG), decodes them with the explicit
token decoder, and renders them through backend.render from views of regions that training clips
rarely show (the back, the back of the legs). Metrics, all pure functions below with tests:

(a) unobserved regions: hole fraction = the fraction of pixels inside the *template's* silhouette
    (the bare body rendered opaque from the same view) where the avatar's alpha < 0.5; colour RMSE and
    PSNR against the ground truth's render on the same pixels (colours composited on black).
(b) prompt fidelity: attributes classified from the decoded region colours (the median texel colour of
    the region -> the nearest named colour of training/data/vocabulary.py): upper_colour (torso),
    lower_colour (thighs), shoes_colour (feet), hair_colour (crown of the head; skipped for bald), as
    accuracy per attribute against the person's meta, separately for seen and held-out combinations.
    The classifier's own accuracy on the ground-truth tokens is reported as the ceiling, and every miss
    as "truth -> predicted" (`attribute_errors`: a neighbouring shade, another garment's colour, ...).
    `classify_rendered_attributes` reads the same attributes off renders instead (front and back views,
    the regions' texels projected to pixels): what benchmarks/prompt_fidelity.py checks through the wire.
(b') every other attribute a prompt names (garment type of the top and the bottom, pattern, hair style,
    shoe kind) is read by `AttributeProbe`: a linear classifier per attribute over statistics of the token
    map's body-part cells, fitted on the ground-truth token maps of the training split (never on the people
    it scores); its accuracy on the held-out ground truth is that reader's ceiling, in the same table.
    Held-out combinations are also scored on the pair itself (`pair_accuracy`: both of its attributes right).
    Every accuracy comes with a 95 % interval (Wilson for one attribute, a bootstrap over people for the
    mean over attributes).
(c) visual quality against the ground truth, front view: colour noise (the std of the rendered colour
    inside each attribute region) and floaters (alpha outside the ground truth's silhouette dilated by
    FLOATER_MARGIN_PX pixels, per image pixel), each as the ratio of the sample's mean to the ground
    truth's own mean.
(d) diversity: mean pairwise RMS distance of decoded texel colours between samples of one prompt.
(e) Fréchet distance between generated and ground-truth avatars on region colour statistics (mean
    RGB of the six edit regions: an 18-D feature per avatar).
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import itertools
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from backend.avatar.body_parts import PART_IDS
from backend.avatar.gaussians import SH_C0
from backend.avatar.template import load_template
from backend.avatar.tokens import TokenDecoder, TokenDecoderConfig, decode, encode_explicit
from backend.avatar.uv_layout import load_layout
from backend.models.checkpoint import load_checkpoint
from backend.models.conditioning import load_text_encoder, text_condition
from backend.models.dit import dit_from_checkpoint
from backend.render import RenderOptions, render
from backend.render.camera import Camera, intrinsics_from_fov, look_at
from backend.sampling import recipe
from bridge.files.atomic import write_atomic
from training.data import vocabulary
from training.data.shards import iter_shards
from training.data.vocabulary import heldout_combinations_in

REGIONS = ("head", "torso", "arms", "hands", "legs", "feet")
PROBE_ATTRIBUTES = ("upper", "upper_pattern", "lower", "hair_style", "shoes")
FLOATER_MARGIN_PX = 3


# ------------------------------------------------------------------------------ metrics (pure)
def hole_fraction(alpha: torch.Tensor, silhouette: torch.Tensor) -> float:
    """alpha (H, W) in [0, 1], silhouette (H, W) bool -> fraction of silhouette pixels with alpha < 0.5."""
    sil = silhouette.bool()
    if not bool(sil.any()):
        return float("nan")
    return float((alpha[sil] < 0.5).float().mean())


def masked_rmse_psnr(rgb: torch.Tensor, rgb_ref: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """rgb, rgb_ref (H, W, 3) in [0, 1], mask (H, W) bool -> (RMSE, PSNR dB with peak 1) over the mask."""
    m = mask.bool()
    if not bool(m.any()):
        return float("nan"), float("nan")
    mse = float(((rgb[m] - rgb_ref[m]) ** 2).mean())
    return math.sqrt(mse), (10.0 * math.log10(1.0 / mse) if mse > 0 else float("inf"))


def nearest_name(rgb: np.ndarray, palette: dict[str, tuple[float, float, float]]) -> str:
    names = list(palette)
    d = ((np.asarray([palette[n] for n in names]) - np.asarray(rgb)[None]) ** 2).sum(1)
    return names[int(d.argmin())]


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to features a (N, D) and b (M, D):
    |mu_a - mu_b|² + tr(S_a + S_b - 2 (S_a^½ S_b S_a^½)^½) (symmetric square roots by eigh)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a = np.atleast_2d(np.cov(a, rowvar=False)) if len(a) > 1 else np.zeros((a.shape[1],) * 2)
    s_b = np.atleast_2d(np.cov(b, rowvar=False)) if len(b) > 1 else np.zeros((b.shape[1],) * 2)

    def sqrtm_psd(m: np.ndarray) -> np.ndarray:
        w, v = np.linalg.eigh((m + m.T) / 2)
        return (v * np.sqrt(np.clip(w, 0, None))) @ v.T

    ra = sqrtm_psd(s_a)
    cross = sqrtm_psd(ra @ s_b @ ra)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * cross))


def diversity(colours: torch.Tensor) -> float:
    """colours (S, M, 3) texel colours of S samples -> mean pairwise RMS distance (0 for S < 2)."""
    s = colours.shape[0]
    if s < 2:
        return 0.0
    d = [float(((colours[i] - colours[j]) ** 2).mean().sqrt()) for i, j in itertools.combinations(range(s), 2)]
    return float(np.mean(d))


# ------------------------------------------------------------------------------ token-map readers
def texel_rgb(tokens: torch.Tensor) -> torch.Tensor:
    """Explicit layout: (C, R, R) -> (3, R, R) colour in [0, 1] (channels 0..2 = SH DC)."""
    return (tokens[:3] * SH_C0 + 0.5).clamp(0, 1)


@dataclasses.dataclass
class RegionTexels:
    """Where attributes are read on the atlas: (R, R) bool masks."""

    masks: dict[str, torch.Tensor]

    @classmethod
    def from_layout(cls, layout: Any) -> "RegionTexels":
        masks = {r: layout.region_mask(r) for r in REGIONS}
        parts = layout.part_ids
        z = layout.anchors[..., 2]
        head = parts == PART_IDS["head"]
        top = float(z[head].max()) if bool(head.any()) else 0.0
        masks["crown"] = head & (z > top - 0.05)
        masks["thighs"] = (parts == PART_IDS["upper_leg.L"]) | (parts == PART_IDS["upper_leg.R"])
        return cls(masks)


def region_features(tokens: torch.Tensor, regions: RegionTexels) -> np.ndarray:
    """(C, R, R) -> (18,) mean RGB of the six edit regions."""
    rgb = texel_rgb(tokens)
    return np.concatenate([rgb[:, regions.masks[r]].mean(1).numpy() for r in REGIONS])


ATTRIBUTE_REGIONS = {"upper_colour": "torso", "lower_colour": "thighs", "shoes_colour": "feet",
                     "hair_colour": "crown"}  # the region of RegionTexels each attribute is read on


def attribute_palettes() -> dict[str, dict[str, tuple[float, float, float]]]:
    """The named colours each attribute can take (training/data/vocabulary.py)."""
    shoes = {k: vocabulary.COLOURS[k] for k in ("black", "white", "brown", "grey", "blue", "red")}
    return {"upper_colour": dict(vocabulary.COLOURS), "lower_colour": dict(vocabulary.COLOURS),
            "shoes_colour": shoes, "hair_colour": dict(vocabulary.HAIR_COLOURS)}


def classify_attributes(tokens: torch.Tensor, regions: RegionTexels) -> dict[str, str]:
    """Attributes read from decoded region colours: median texel colour -> nearest named colour."""
    rgb = texel_rgb(tokens)
    palettes = attribute_palettes()
    return {key: nearest_name(rgb[:, regions.masks[region]].median(1).values.numpy(), palettes[key])
            for key, region in ATTRIBUTE_REGIONS.items()}


# ------------------------------------------------------------------------------ attributes on renders
@dataclasses.dataclass
class RenderedView:
    """One render of an avatar in its rest pose and the camera that made it."""

    rgb: np.ndarray                 # (H, W, 3) in [0, 1] (or uint8), composited over `background`
    alpha: np.ndarray               # (H, W) in [0, 1] (or uint8)
    camera: Any                     # backend.render.camera.Camera
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)


def attribute_cameras(size: int = 128) -> dict[str, Any]:
    """Front and back views of a standing template (raised a little, so the crown shows), square images."""
    k = intrinsics_from_fov(40.0, size, size)
    return {view: Camera(look_at((0.0, y, 1.5), (0.0, 0.0, 0.85)), k, size, size, 0.01, 100.0)
            for view, y in (("front", -3.0), ("back", 3.0))}


def visible_texels(layout: Any, camera: Any, cell: int = 4, depth_tolerance: float = 0.05,
                   min_facing: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Which atlas texels' rest-pose anchors a camera sees, and where: (pixels (M, 2) int (x, y),
    visible (M,) bool), M = layout.num_valid in valid_indices order.

    Visible: inside the image, the surface normal turned towards the camera (cosine > min_facing), and
    within depth_tolerance metres of the nearest anchor in the same cell x cell pixel block (a z-buffer
    of the template's own anchors: an arm in front of the torso hides the torso texels behind it)."""
    anchors = layout.gather("anchors").double().numpy()                   # (M, 3)
    normals = layout.gather("frames")[:, :, 2].double().numpy()           # (M, 3)
    uv, z = camera.project(anchors)                                       # (M, 2), (M,)
    to_camera = camera.center[None] - anchors
    facing = (normals * to_camera).sum(1) / np.linalg.norm(to_camera, axis=1) > min_facing
    px = np.floor(uv).astype(np.int64)                                    # (M, 2)
    inside = (z > camera.near) & (px[:, 0] >= 0) & (px[:, 1] >= 0) & (px[:, 0] < camera.width) & \
        (px[:, 1] < camera.height)
    cols = -(-camera.width // cell)
    block = np.where(inside, (px[:, 1] // cell) * cols + px[:, 0] // cell, 0)
    nearest = np.full(cols * -(-camera.height // cell), np.inf)
    np.minimum.at(nearest, block[inside], z[inside])
    visible = inside & facing & (z <= nearest[block] + depth_tolerance)
    return px, visible


def classify_rendered_attributes(views: list[RenderedView], layout: Any, regions: RegionTexels,
                                 min_alpha: float = 0.5) -> dict[str, str | None]:
    """Attributes read from renders: each region's texels seen by some view (`visible_texels`) are projected
    to pixels; the median colour of those pixels where the avatar covers them (alpha >= min_alpha, colour
    un-composited from the background) -> the nearest named colour. None when no view shows the region."""
    valid = layout.valid_indices.numpy()
    palettes = attribute_palettes()
    samples: dict[str, list[np.ndarray]] = {key: [] for key in ATTRIBUTE_REGIONS}
    for view in views:
        rgb = np.asarray(view.rgb, np.float64) / (255.0 if np.asarray(view.rgb).dtype == np.uint8 else 1.0)
        alpha = np.asarray(view.alpha, np.float64) / (255.0 if np.asarray(view.alpha).dtype == np.uint8 else 1.0)
        alpha = alpha.reshape(alpha.shape[:2])
        if rgb.shape[:2] != (view.camera.height, view.camera.width) or alpha.shape != rgb.shape[:2]:
            raise ValueError(f"expected rgb (H, W, 3) and alpha (H, W) of the camera's {view.camera.height}x"
                             f"{view.camera.width}, got {rgb.shape} and {alpha.shape}")
        px, visible = visible_texels(layout, view.camera)
        for key, region in ATTRIBUTE_REGIONS.items():
            seen = visible & regions.masks[region].reshape(-1).numpy()[valid]
            x, y = px[seen, 0], px[seen, 1]
            a = alpha[y, x]
            covered = a >= min_alpha
            fg = (rgb[y, x] - (1.0 - a)[:, None] * np.asarray(view.background)) / np.maximum(a, 1e-6)[:, None]
            samples[key].append(fg[covered].clip(0.0, 1.0))
    out: dict[str, str | None] = {}
    for key, parts in samples.items():
        colours = np.concatenate(parts) if parts else np.zeros((0, 3))
        out[key] = nearest_name(np.median(colours, 0), palettes[key]) if len(colours) else None
    return out


def attribute_hits(predicted: dict[str, str], truth: dict[str, Any]) -> dict[str, bool]:
    """Which predicted attributes match; hair colour is not scored for bald people."""
    out = {}
    for key, value in predicted.items():
        if key not in truth or (key == "hair_colour" and truth.get("hair_style") == "bald"):
            continue
        out[key] = value == truth[key]
    return out


# ------------------------------------------------------------------------------ every other attribute
def cell_index(layout: Any) -> tuple[torch.Tensor, int]:
    """(R, R) long: each atlas texel's cell, -1 outside. A cell is a body part split at its median height
    and front / back (the sign of y about the part's mean anchor): sleeves, hems, hair length and a chest
    print change different cells."""
    parts = layout.part_ids
    atlas = layout.atlas_mask
    anchors = layout.anchors
    cells = torch.full(parts.shape, -1, dtype=torch.long)
    n = int(parts.max()) + 1
    for p in range(n):
        m = (parts == p) & atlas
        if not bool(m.any()):
            continue
        z, y = anchors[..., 2], anchors[..., 1]
        upper = z >= z[m].median()
        back = y >= y[m].mean()
        cells[m] = (p * 4 + upper.long() * 2 + back.long())[m]
    return cells, 4 * n


def token_features(tokens: torch.Tensor, cells: torch.Tensor, num_cells: int, channels: int = 10) -> torch.Tensor:
    """(B, C, R, R) -> (B, F): per cell, mean and std of the first `channels` (explicit) channels, and the
    colour's mean absolute step between neighbouring texels along each atlas axis inside a cell (stripes
    and checks)."""
    b = tokens.shape[0]
    x = tokens[:, :channels].flatten(2).double()  # (B, Ch, R²)
    flat = cells.reshape(-1)
    inside = flat >= 0
    one = torch.zeros(num_cells, flat.numel(), dtype=torch.float64)
    one[flat[inside], torch.nonzero(inside)[:, 0]] = 1.0
    count = one.sum(1).clamp_min(1)  # (cells,)
    mean = x @ one.T / count  # (B, Ch, cells)
    var = ((x ** 2) @ one.T / count - mean ** 2).clamp_min(0)
    feats = [mean.flatten(1), var.sqrt().flatten(1)]
    colour = tokens[:, :3].double()
    for dim in (2, 3):
        a = colour.narrow(dim, 1, colour.shape[dim] - 1)
        c0 = cells.narrow(dim - 2, 1, cells.shape[dim - 2] - 1)
        c1 = cells.narrow(dim - 2, 0, cells.shape[dim - 2] - 1)
        same = (c0 == c1) & (c0 >= 0)
        step = (a - colour.narrow(dim, 0, colour.shape[dim] - 1)).abs().mean(1)  # (B, ., .)
        one_s = torch.zeros(num_cells, same.numel(), dtype=torch.float64)
        idx = torch.nonzero(same.reshape(-1))[:, 0]
        one_s[c0.reshape(-1)[idx], idx] = 1.0
        feats.append(step.flatten(1) @ one_s.T / one_s.sum(1).clamp_min(1))
    return torch.cat(feats, 1).float().reshape(b, -1)


class AttributeProbe:
    """A linear classifier per categorical attribute (PROBE_ATTRIBUTES) over `token_features`, fitted on
    ground-truth token maps with their attributes (full-batch Adam on the cross-entropy, L2, standardised
    features; deterministic)."""

    def __init__(self, layout: Any) -> None:
        self.cells, self.num_cells = cell_index(layout)
        self.heads: dict[str, tuple[list[str], torch.Tensor, torch.Tensor]] = {}
        self.mu = self.sd = None

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        f = token_features(tokens, self.cells, self.num_cells)
        return (f - self.mu) / self.sd if self.mu is not None else f

    def fit(self, tokens: torch.Tensor, attributes: list[dict[str, Any]], steps: int = 300,
            weight_decay: float = 1e-3, seed: int = 0) -> "AttributeProbe":
        raw = token_features(tokens, self.cells, self.num_cells)
        self.mu, self.sd = raw.mean(0), raw.std(0).clamp_min(1e-6)
        x = (raw - self.mu) / self.sd
        torch.manual_seed(seed)
        for key in PROBE_ATTRIBUTES:
            labels = sorted({a[key] for a in attributes if key in a})
            if len(labels) < 2:
                continue
            keep = [i for i, a in enumerate(attributes) if key in a]
            y = torch.tensor([labels.index(attributes[i][key]) for i in keep])
            w = torch.zeros(x.shape[1], len(labels), requires_grad=True)
            bias = torch.zeros(len(labels), requires_grad=True)
            opt = torch.optim.Adam([w, bias], lr=0.05)
            for _ in range(steps):
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(x[keep] @ w + bias, y) + weight_decay * (w ** 2).sum()
                loss.backward()
                opt.step()
            self.heads[key] = (labels, w.detach(), bias.detach())
        return self

    def predict(self, tokens: torch.Tensor) -> list[dict[str, str]]:
        """(B, C, R, R) -> per map {attribute: value}."""
        x = self.features(tokens)
        out: list[dict[str, str]] = [{} for _ in range(x.shape[0])]
        for key, (labels, w, bias) in self.heads.items():
            for i, j in enumerate((x @ w + bias).argmax(1).tolist()):
                out[i][key] = labels[j]
        return out


def wilson_interval(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion hits / n ((nan, nan) for n = 0)."""
    if n == 0:
        return float("nan"), float("nan")
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_mean_interval(per_person: list[float], draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean of per-person scores."""
    x = np.asarray([v for v in per_person if not math.isnan(v)], np.float64)
    if len(x) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(draws, len(x)))].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def pair_hits(person_attributes: dict[str, Any], predicted: dict[str, str]) -> dict[str, bool]:
    """For each held-out combination the person shows ("key=value+key=value"): both attributes read right."""
    out = {}
    for combo in heldout_combinations_in(person_attributes):
        keys = [part.split("=", 1)[0] for part in combo.split("+")]
        out[combo] = all(predicted.get(k) == person_attributes.get(k) for k in keys)
    return out


def read_all_attributes(tokens: torch.Tensor, regions: "RegionTexels", probe: AttributeProbe | None) -> dict[str, str]:
    """Colours from the regions (classify_attributes) and, with a probe, every other attribute."""
    predicted = classify_attributes(tokens, regions)
    if probe is not None:
        predicted.update(probe.predict(tokens[None])[0])
    return predicted


def summarise_hits(hits: dict[str, dict[str, list[bool]]]) -> dict[str, Any]:
    """{group: {attribute: [bool]}} -> accuracy, Wilson interval and count per attribute and group."""
    out: dict[str, Any] = {}
    for group, by_attr in hits.items():
        out[group] = {k: {"accuracy": float(np.mean(v)), "interval": wilson_interval(int(sum(v)), len(v)),
                          "n": len(v)} for k, v in sorted(by_attr.items())}
    return out


def mean_accuracy_interval(per_person: dict[str, list[float]]) -> dict[str, Any]:
    """{group: [per-person mean over attributes]} -> the mean and its bootstrap interval."""
    return {g: {"mean": float(np.mean(v)), "interval": bootstrap_mean_interval(v), "people": len(v)}
            for g, v in per_person.items() if v}


def region_colour_noise(view: "RenderedView", layout: Any, regions: "RegionTexels", min_alpha: float = 0.5) -> float:
    """Mean over the attribute regions seen from the view of the std of the rendered colour on the
    region's pixels (a garment's colour noise; NaN when no region shows)."""
    rgb = np.asarray(view.rgb, np.float64)
    alpha = np.asarray(view.alpha, np.float64)
    valid = layout.valid_indices.numpy()
    px, visible = visible_texels(layout, view.camera)
    stds = []
    for region in ATTRIBUTE_REGIONS.values():
        seen = visible & regions.masks[region].reshape(-1).numpy()[valid]
        x, y = px[seen, 0], px[seen, 1]
        keep = alpha[y, x] >= min_alpha
        if keep.sum() >= 8:
            stds.append(float(rgb[y[keep], x[keep]].std(0).mean()))
    return float(np.mean(stds)) if stds else float("nan")


def floater_mass(alpha: torch.Tensor, reference_alpha: torch.Tensor, margin: int = FLOATER_MARGIN_PX) -> float:
    """Alpha outside the reference silhouette (alpha >= 0.5) dilated by `margin` pixels, per pixel."""
    sil = (reference_alpha >= 0.5).float()[None, None]
    grown = torch.nn.functional.max_pool2d(sil, 2 * margin + 1, stride=1, padding=margin)[0, 0] > 0
    return float(alpha[~grown].sum()) / float(alpha.numel())


# ------------------------------------------------------------------------------ sampling and rendering
@torch.no_grad()
def sample_tokens(model: Any, condition: dict[str, torch.Tensor], steps: int = 25, method: str = "euler",
                  shift: float = 1.0, text_scale: float = 4.0, image_scale: float = 1.0, seed: int = 0,
                  atlas_mask: torch.Tensor | None = None, progress: Callable[[int, int], None] | None = None,
                  cancel: Callable[[], bool] | None = None) -> torch.Tensor:
    """condition (B, ...) -> token maps (B, C, R, R) in decoder space (zero outside the atlas): the
    service's own recipe (backend/sampling/recipe.py), so the eval scores what the service samples."""
    return recipe.sample_tokens(model, condition, steps, method, shift, text_scale, image_scale, seed, atlas_mask,
                                progress, cancel)


def eval_cameras(size: int = 128) -> dict[str, Any]:
    """Views of regions that clips rarely show: the back, and the back of the legs (closer, lower)."""
    k = intrinsics_from_fov(40.0, size, size)
    return {"back": Camera(look_at((0.0, 3.2, 0.95), (0.0, 0.0, 0.9)), k, size, size, 0.01, 100.0),
            "legs_back": Camera(look_at((0.0, 1.8, 0.45), (0.0, 0.0, 0.45)), k, size, size, 0.01, 100.0),
            "front": Camera(look_at((0.0, -3.2, 0.95), (0.0, 0.0, 0.9)), k, size, size, 0.01, 100.0)}


class Renderer:
    def __init__(self, layout: Any, decoder_config: Any, size: int = 128) -> None:
        self.layout, self.decoder = layout, TokenDecoder(decoder_config).eval()
        self.cameras = eval_cameras(size)

    @torch.no_grad()
    def __call__(self, tokens: torch.Tensor, view: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(C, R, R) -> rgb (H, W, 3) on black, alpha (H, W)."""
        g = decode(tokens.float(), self.layout, self.decoder)
        out = render(g, self.cameras[view], options=RenderOptions(background=(0.0, 0.0, 0.0), backend="torch"))
        return out.rgb[0], out.alpha[0, ..., 0]


def template_tokens(layout: Any, decoder_config: Any) -> torch.Tensor:
    """The bare template body, opaque, grey: its render gives the silhouette that hole fraction uses."""
    r = layout.resolution
    return encode_explicit(layout, decoder_config, torch.full((3, r, r), 0.5), opacity=torch.full((r, r), 0.995))


# ------------------------------------------------------------------------------ the evaluation
def evaluate_checkpoint(model: Any, encoder: Any, people: list[dict[str, Any]], renderer: Renderer,
                        regions: RegionTexels, silhouettes: dict[str, torch.Tensor], samples: int = 2,
                        steps: int = 25, text_scale: float = 4.0, seed: int = 0,
                        probe: AttributeProbe | None = None, shift: float = 1.0,
                        per_person: bool = False) -> dict[str, Any]:
    """people: dicts with gt tokens (C, R, R), caption, attributes, split. With a probe, every attribute
    the caption names is scored (module docstring (b')), with pairs, intervals and visual ratios.
    per_person: also return every person's values (key "per_person", lists in the order of `people`), so
    that runs scored on the same people can be pooled and compared person by person (training/ablation.py)."""
    holes: dict[str, list[float]] = {v: [] for v in silhouettes}
    psnr: dict[str, list[float]] = {v: [] for v in silhouettes}
    rmse: dict[str, list[float]] = {v: [] for v in silhouettes}
    hits: dict[str, dict[str, list[bool]]] = {}
    errors: dict[str, collections.Counter] = {}  # attribute -> "truth -> predicted" -> count
    div, feats = [], []
    pairs: dict[str, list[bool]] = {}
    by_group: dict[str, list[float]] = {}
    attr_mean: list[float] = []  # per person, in the order of `people`
    noise, noise_gt, floaters, floaters_gt = [], [], [], []
    atlas = renderer.layout.atlas_mask
    for i, person in enumerate(people):
        cond = text_condition(encoder, [person["caption"]] * samples, model.config.image_dim)
        tokens = sample_tokens(model, cond, steps=steps, text_scale=text_scale, seed=seed + 1000 * i,
                               atlas_mask=atlas, shift=shift)  # (S, C, R, R)
        first = tokens[0]
        feats.append(region_features(first, regions))
        div.append(diversity(texel_rgb(tokens.transpose(0, 1)).permute(1, 2, 3, 0)[:, atlas]))
        predicted = read_all_attributes(first, regions, probe)
        group = combination_group(person["split"])
        scored = attribute_hits(predicted, person["attributes"])
        for key, ok in scored.items():
            hits.setdefault(group, {}).setdefault(key, []).append(ok)
            if not ok:
                errors.setdefault(key, collections.Counter())[f"{person['attributes'][key]} -> {predicted[key]}"] += 1
        attr_mean.append(float(np.mean(list(scored.values()))) if scored else float("nan"))
        by_group.setdefault(group, []).append(attr_mean[-1])
        for combo, ok in pair_hits(person["attributes"], predicted).items():
            pairs.setdefault(combo, []).append(ok)
        if probe is not None and "front" in renderer.cameras:
            rgb, alpha = renderer(first, "front")
            rgb_gt, alpha_gt = renderer(person["tokens"], "front")
            cam = renderer.cameras["front"]
            noise.append(region_colour_noise(RenderedView(rgb.numpy(), alpha.numpy(), cam), renderer.layout, regions))
            noise_gt.append(region_colour_noise(RenderedView(rgb_gt.numpy(), alpha_gt.numpy(), cam), renderer.layout,
                                                regions))
            floaters.append(floater_mass(alpha, alpha_gt))
            floaters_gt.append(floater_mass(alpha_gt, alpha_gt))
        for view, sil in silhouettes.items():
            rgb, alpha = renderer(first, view)
            rgb_gt, _ = renderer(person["tokens"], view)
            holes[view].append(hole_fraction(alpha, sil))
            e, p = masked_rmse_psnr(rgb, rgb_gt, sil)
            rmse[view].append(e)
            psnr[view].append(p)
    gt_feats = np.stack([region_features(p["tokens"], regions) for p in people])
    extra: dict[str, Any] = {}
    if probe is not None:
        pair_all = [ok for v in pairs.values() for ok in v]
        extra = {"attribute_detail": summarise_hits(hits), "mean_accuracy": mean_accuracy_interval(by_group),
                 "pair_accuracy": {"all": {"accuracy": float(np.mean(pair_all)) if pair_all else float("nan"),
                                           "interval": wilson_interval(int(sum(pair_all)), len(pair_all)),
                                           "n": len(pair_all)},
                                   **{c: {"accuracy": float(np.mean(v)), "n": len(v)} for c, v in sorted(pairs.items())}},
                 "visual": {"colour_noise": float(np.nanmean(noise)), "colour_noise_gt": float(np.nanmean(noise_gt)),
                            "colour_noise_ratio": float(np.nanmean(noise) / np.nanmean(noise_gt)),
                            "floaters": float(np.mean(floaters)), "floaters_gt": float(np.mean(floaters_gt)),
                            "floaters_ratio": float(np.mean(floaters) / max(np.mean(floaters_gt), 1e-9))}}
    if per_person:
        extra["per_person"] = {"clip_id": [p.get("clip_id") for p in people], "split": [p["split"] for p in people],
                               "group": [combination_group(p["split"]) for p in people],
                               "hole_fraction": holes, "psnr_db": psnr, "rmse": rmse, "attribute_mean": attr_mean,
                               **({"colour_noise": noise, "colour_noise_gt": noise_gt, "floaters": floaters,
                                   "floaters_gt": floaters_gt} if noise else {})}
    return {**extra, "hole_fraction": {v: float(np.mean(x)) for v, x in holes.items()},
            "psnr_db": {v: float(np.mean(x)) for v, x in psnr.items()},
            "rmse": {v: float(np.mean(x)) for v, x in rmse.items()},
            "attribute_accuracy": {s: {k: float(np.mean(v)) for k, v in d.items()} for s, d in hits.items()},
            "attribute_errors": {k: dict(c.most_common()) for k, c in sorted(errors.items())},
            "diversity": float(np.mean(div)), "frechet_region_colour": frechet_distance(np.stack(feats), gt_feats),
            "people": len(people)}


def combination_group(split: str) -> str:
    """"heldout" for people whose attribute combination training never saw together, else "seen"."""
    return "heldout" if split == "heldout-combo" else "seen"


def ground_truth_row(people: list[dict[str, Any]], renderer: Renderer, regions: RegionTexels,
                     silhouettes: dict[str, torch.Tensor], probe: AttributeProbe | None = None) -> dict[str, Any]:
    """The same metrics on the ground truth itself: the ceiling of attribute accuracy (the readers' own
    accuracy) and the holes that the decoder leaves on a perfect token map."""
    hits: dict[str, dict[str, list[bool]]] = {}
    holes: dict[str, list[float]] = {v: [] for v in silhouettes}
    pairs: list[bool] = []
    per_person: dict[str, list[float]] = {}
    for person in people:
        predicted = read_all_attributes(person["tokens"], regions, probe)
        scored = attribute_hits(predicted, person["attributes"])
        for key, ok in scored.items():
            hits.setdefault(combination_group(person["split"]), {}).setdefault(key, []).append(ok)
        per_person.setdefault(combination_group(person["split"]), []).append(float(np.mean(list(scored.values()))))
        pairs += list(pair_hits(person["attributes"], predicted).values())
        for view, sil in silhouettes.items():
            holes[view].append(hole_fraction(renderer(person["tokens"], view)[1], sil))
    extra: dict[str, Any] = {}
    if probe is not None:
        extra = {"attribute_detail": summarise_hits(hits), "mean_accuracy": mean_accuracy_interval(per_person),
                 "pair_accuracy": {"all": {"accuracy": float(np.mean(pairs)) if pairs else float("nan"),
                                           "interval": wilson_interval(int(sum(pairs)), len(pairs)), "n": len(pairs)}}}
    return {**extra, "hole_fraction": {v: float(np.mean(x)) for v, x in holes.items()},
            "attribute_accuracy": {s: {k: float(np.mean(v)) for k, v in d.items()} for s, d in hits.items()}}


def load_people(folder: str | Path, splits: list[str], max_people: int,
                recaption: bool = False) -> tuple[list[dict[str, Any]], dict]:
    """One entry per person (first clip of each `meta['person']`, else per clip), ground-truth tokens.
    recaption: the prompt is the canonical caption of the person's attributes (vocabulary.captions' first,
    which names every attribute), not the first stored caption."""
    people, seen, source = [], set(), {}
    per_split = {s: 0 for s in splits}
    for shard in iter_shards(folder):
        source = shard.source
        for i, meta in enumerate(shard.metas):
            split = meta.get("split", "train")
            key = meta.get("person_id", meta.get("person", shard.clip_ids[i]))
            if split not in per_split or key in seen or per_split[split] >= max_people:
                continue
            seen.add(key)
            per_split[split] += 1
            attrs = meta.get("attributes", {})
            caption = (vocabulary.canonical_caption(attrs) if recaption and vocabulary.can_caption(attrs)
                       else shard.captions[i][0])
            people.append({"tokens": torch.from_numpy(shard.tokens[i].astype(np.float32)),
                           "caption": caption, "attributes": attrs,
                           "split": split, "clip_id": shard.clip_ids[i]})
    return people, source


def decoder_config_from(source: dict[str, Any], channels: int) -> Any:
    raw = source.get("decoder_config") or source.get("decoder")
    given = dict(raw) if isinstance(raw, dict) else {}
    given.setdefault("token_channels", channels)
    given.setdefault("token_layout", "explicit")
    return TokenDecoderConfig(**{k: v for k, v in given.items() if k in {f.name for f in dataclasses.fields(TokenDecoderConfig)}})


def markdown_table(results: dict[str, dict[str, Any]]) -> str:
    views = ["back", "legs_back"]
    head = ("| model | hole back | hole legs | PSNR back dB | PSNR legs dB | attr acc seen | attr acc held-out "
            "| diversity | FD region colour |\n|---|---|---|---|---|---|---|---|---|")
    rows = [head]
    for name, r in results.items():
        acc = r.get("attribute_accuracy", {})

        def mean_acc(split: str) -> str:
            d = acc.get(split)
            return f"{np.mean(list(d.values())):.2f}" if d else "-"

        def fmt(section: str, v: str, spec: str = ".3f") -> str:
            x = r.get(section, {}).get(v)
            return "-" if x is None else format(x, spec)

        rows.append(f"| {name} | {fmt('hole_fraction', views[0])} | {fmt('hole_fraction', views[1])} | "
                    f"{fmt('psnr_db', views[0], '.2f')} | {fmt('psnr_db', views[1], '.2f')} | {mean_acc('seen')} | "
                    f"{mean_acc('heldout')} | {r.get('diversity', float('nan')):.3f} | "
                    f"{r.get('frechet_region_colour', float('nan')):.4f} |")
    attrs = ("upper_colour", "lower_colour", "shoes_colour", "hair_colour")
    rows += ["", "| model | group | " + " | ".join(attrs) + " |", "|---|---|" + "---|" * len(attrs)]
    for name, r in results.items():
        for group, acc in sorted(r.get("attribute_accuracy", {}).items()):
            rows.append(f"| {name} | {group} | " + " | ".join(
                f"{acc[a]:.2f}" if a in acc else "-" for a in attrs) + " |")
    detailed = {n: r for n, r in results.items() if "attribute_detail" in r}
    if detailed:
        keys = sorted({k for r in detailed.values() for g in r["attribute_detail"].values() for k in g})
        rows += ["", "Every attribute the prompt names, accuracy [95 % interval] (n people); the ground-truth row is "
                 "the readers' ceiling:", "",
                 "| model | group | mean [95 %] | " + " | ".join(keys) + " | held-out pairs |",
                 "|---|---|---|" + "---|" * len(keys) + "---|"]
        for name, r in detailed.items():
            for group, acc in sorted(r["attribute_detail"].items()):
                m = r.get("mean_accuracy", {}).get(group, {})
                mean = (f"{m['mean']:.2f} [{m['interval'][0]:.2f}, {m['interval'][1]:.2f}] ({m['people']})"
                        if m else "-")
                cells = [f"{acc[k]['accuracy']:.2f} [{acc[k]['interval'][0]:.2f}, {acc[k]['interval'][1]:.2f}]"
                         if k in acc else "-" for k in keys]
                pair = r.get("pair_accuracy", {}).get("all") if group == "heldout" else None
                pair_cell = (f"{pair['accuracy']:.2f} [{pair['interval'][0]:.2f}, {pair['interval'][1]:.2f}] "
                             f"({pair['n']})" if pair else "-")
                rows.append(f"| {name} | {group} | {mean} | " + " | ".join(cells) + f" | {pair_cell} |")
        visual = {n: r["visual"] for n, r in detailed.items() if "visual" in r}
        if visual:
            rows += ["", "| model | colour noise in regions (x ground truth) | floaters (x ground truth) |", "|---|---|---|"]
            rows += [f"| {n} | {v['colour_noise']:.4f} ({v['colour_noise_ratio']:.2f}x) | "
                     f"{v['floaters']:.5f} ({v['floaters_ratio']:.2f}x) |" for n, v in visual.items()]
    if any(r.get("attribute_errors") for r in results.values()):  # what the misses were, both groups together
        rows += ["", "| model | " + " | ".join(f"{a} misses (truth -> predicted)" for a in attrs) + " |",
                 "|---|" + "---|" * len(attrs)]
        for name, r in results.items():
            if "attribute_errors" in r:
                rows.append(f"| {name} | " + " | ".join(", ".join(f"{e} x{n}" for e, n in list(
                    r["attribute_errors"].get(a, {}).items())[:4]) or "-" for a in attrs) + " |")
    return "\n".join(rows) + "\n"


def write_report(results: dict[str, Any], table: str, out: str | None, markdown: str | None) -> None:
    """Print the table; write the JSON results and the table where asked (atomically)."""
    print(table)
    if out:
        write_atomic(out, json.dumps(results, indent=1))
    if markdown:
        write_atomic(markdown, table)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="genlca-train eval", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", nargs="+", required=True, help="DiT checkpoints (kind 'dit')")
    parser.add_argument("--shards", required=True, help="token shards with the held-out people (ground truth)")
    parser.add_argument("--splits", nargs="+", default=["val", "test", "heldout-combo"],
                        help="held-out people: val/test show seen combinations, heldout-combo unseen ones")
    parser.add_argument("--max-people", type=int, default=16, help="per split")
    parser.add_argument("--samples", type=int, default=2, help="samples per prompt (diversity)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--text-scale", type=float, default=4.0)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--text-encoder", default=None, help="override the checkpoint's text encoder")
    parser.add_argument("--out", default=None, help="JSON results")
    parser.add_argument("--markdown", default=None, help="write the table here too")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--probe-shards", default=None,
                        help="shards whose train split fits the attribute probe (default: --shards)")
    parser.add_argument("--probe-people", type=int, default=1500,
                        help="training people the probe is fitted on (0: no probe, colours only)")
    parser.add_argument("--stored-captions", action="store_true",
                        help="prompt with each person's first stored caption (default: the canonical caption "
                             "of its attributes, which names every attribute)")
    parser.add_argument("--shift", type=float, default=None,
                        help="sampling timestep shift (default: the checkpoint's sampling_shift, else 1)")
    parser.add_argument("--loss-png", default=None,
                        help="also plot the training loss of each checkpoint (metrics.jsonl beside it) into this PNG")
    return parser


def plot_loss_curves(checkpoints: list[str], out: str | Path, smooth: int = 20) -> None:
    """Training loss per step (running mean over `smooth` steps) of each run, log scale (matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    for path in checkpoints:
        metrics = Path(path).parent / "metrics.jsonl"
        if not metrics.is_file():
            continue
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        # a resumed run logs again the steps between its checkpoint and the kill: the last one counts
        rows = sorted({r["step"]: r for r in rows}.values(), key=lambda r: r["step"])
        steps = np.array([r["step"] for r in rows])
        loss = np.array([r["loss"] for r in rows])
        k = max(1, min(smooth, len(loss)))
        ax.plot(steps[k - 1:], np.convolve(loss, np.ones(k) / k, mode="valid"), label=Path(path).parent.name)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(f"training loss (mean of {smooth} steps)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    people, source = load_people(args.shards, args.splits, args.max_people, recaption=not args.stored_captions)
    if not people:
        raise SystemExit(f"{args.shards}: no people in splits {args.splits}")
    r, c = people[0]["tokens"].shape[-1], people[0]["tokens"].shape[0]
    layout = load_layout(load_template("anny"), r)
    dec_cfg = decoder_config_from(source, c)
    renderer = Renderer(layout, dec_cfg, args.image_size)
    regions = RegionTexels.from_layout(layout)
    tmpl = template_tokens(layout, dec_cfg)
    silhouettes = {v: renderer(tmpl, v)[1] >= 0.5 for v in ("back", "legs_back")}
    probe = None
    if args.probe_people > 0:
        train_people, _ = load_people(args.probe_shards or args.shards, ["train"], args.probe_people)
        scored = {p["clip_id"] for p in people}
        train_people = [p for p in train_people if p["clip_id"] not in scored]
        if len(train_people) >= 20:
            probe = AttributeProbe(layout).fit(torch.stack([p["tokens"] for p in train_people]),
                                               [p["attributes"] for p in train_people])
    results: dict[str, Any] = {"ground truth": ground_truth_row(people, renderer, regions, silhouettes, probe)}
    for path in args.checkpoints:
        ckpt = load_checkpoint(path, "dit", training_state=False)
        model = dit_from_checkpoint(ckpt)
        encoder = load_text_encoder(args.text_encoder or ckpt.config.get("text_encoder", "minilm"),
                                    int(ckpt.config.get("max_text_tokens", 32)))
        name = f"{Path(path).parent.name} ({ckpt.config.get('visibility_mode', '?')})"
        shift = args.shift if args.shift is not None else float(ckpt.config.get("sampling_shift", 1.0))
        results[name] = evaluate_checkpoint(model, encoder, people, renderer, regions, silhouettes, args.samples,
                                            args.steps, args.text_scale, args.seed, probe=probe, shift=shift)
        results[name]["sampling_shift"] = shift
        results[name]["checkpoint"] = str(path)
        print(json.dumps({name: results[name]}), flush=True)
    write_report(results, markdown_table(results), args.out, args.markdown)
    if args.loss_png:
        plot_loss_curves(args.checkpoints, args.loss_png)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
