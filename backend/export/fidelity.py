"""How well the exported mesh stands for the avatar's Gaussians, in numpy: orthographic silhouettes from
views around the vertical axis (the splats: each opaque Gaussian's centre drawn as a disc of its size;
the mesh: its triangles filled) and their intersection over union; region colours compared in CIEDE2000
(`delta_e00`). Used by tests/test_gltf_export.py and benchmarks/glb_export.py."""
from __future__ import annotations

import numpy as np

OPAQUE = 0.5


def _fill_triangles(tri: np.ndarray, size: int) -> np.ndarray:
    """Triangles (F, 3, 2) in pixel units -> (size, size) bool mask (barycentric samples denser than the
    pixels; rows are image rows)."""
    mask = np.zeros(size * size, bool)
    extent = np.ptp(tri, axis=1).max(1)
    levels = np.minimum(np.exp2(np.ceil(np.log2(np.maximum(2.0, extent * 1.5)))), 256).astype(int)
    for level in np.unique(levels):
        which = np.flatnonzero(levels == level)
        i, j = np.meshgrid(np.arange(level + 1), np.arange(level + 1), indexing="ij")
        keep = i + j <= level
        bary = np.stack([i[keep], j[keep], level - i[keep] - j[keep]], 1) / level
        batch = max(1, 2_000_000 // len(bary))
        for start in range(0, len(which), batch):
            pts = np.matmul(bary[None], tri[which[start:start + batch]]).reshape(-1, 2)
            px = np.clip(pts.astype(int), 0, size - 1)
            mask[px[:, 1] * size + px[:, 0]] = True
    return mask.reshape(size, size)


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(r):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def _erode(mask: np.ndarray, r: int) -> np.ndarray:
    return ~_dilate(~mask, r)


def silhouettes(means: np.ndarray, radii: np.ndarray, opacity: np.ndarray, vertices: np.ndarray,
                faces: np.ndarray, views: int = 8, size: int = 256, close: int = 3) -> list[tuple[np.ndarray, np.ndarray]]:
    """(splat mask, mesh mask) per view: Z-up points (N, 3) and mesh (V, 3), (F, 3) seen from `views`
    directions evenly around Z, orthographic, in a size² frame that holds both. The splat mask is closed
    (`close` px of dilation, then of erosion) so the gaps between sampled centres do not count as background."""
    out = []
    opaque = opacity >= OPAQUE
    for k in range(views):
        a = 2.0 * np.pi * k / views
        rot = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
        p = (means[opaque] @ rot.T)[:, [0, 2]]
        v = (vertices @ rot.T)[:, [0, 2]]
        lo = np.minimum(p.min(0), v.min(0))
        span = float(np.max(np.maximum(p.max(0), v.max(0)) - lo)) * 1.02
        scale = size / span
        to_px = lambda q: (q - lo) * scale  # noqa: E731
        splat = np.zeros((size, size), bool)
        pp = to_px(p)
        r = np.maximum(radii[opaque] * scale, 0.5)
        for dy in range(-2, 3):  # discs of up to 2 px radius
            for dx in range(-2, 3):
                use = dx * dx + dy * dy <= r * r + 0.25
                c = np.clip((pp[use] + (dx, dy)).astype(int), 0, size - 1)
                splat[c[:, 1], c[:, 0]] = True
        splat = _erode(_dilate(splat, close), close)  # close the gaps between discs: a surface, as rendered
        mesh = _fill_triangles(to_px(v)[faces], size)
        out.append((splat, mesh))
    return out


def silhouette_iou(masks: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """IoU per view."""
    return np.array([(a & b).sum() / max(1, (a | b).sum()) for a, b in masks])


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1] (..., 3) -> CIELAB (D65)."""
    c = np.asarray(rgb, np.float64)
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                  [0.0193339, 0.1191920, 0.9503041]])
    xyz = lin @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def delta_e00(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIEDE2000 colour difference (Sharma, Wu, Dalal 2005)."""
    l1, a1, b1 = np.moveaxis(np.asarray(lab1, np.float64), -1, 0)
    l2, a2, b2 = np.moveaxis(np.asarray(lab2, np.float64), -1, 0)
    c1, c2 = np.hypot(a1, b1), np.hypot(a2, b2)
    cm = (c1 + c2) / 2
    g = 0.5 * (1 - np.sqrt(cm ** 7 / (cm ** 7 + 25.0 ** 7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p = np.degrees(np.arctan2(b1, a1p)) % 360
    h2p = np.degrees(np.arctan2(b2, a2p)) % 360
    dlp, dcp = l2 - l1, c2p - c1p
    dh = h2p - h1p
    dh = np.where(dh > 180, dh - 360, np.where(dh < -180, dh + 360, dh))
    dh = np.where(c1p * c2p == 0, 0.0, dh)
    dhp = 2 * np.sqrt(c1p * c2p) * np.sin(np.radians(dh / 2))
    lpm, cpm = (l1 + l2) / 2, (c1p + c2p) / 2
    hs = h1p + h2p
    hpm = np.where(c1p * c2p == 0, hs, np.where(np.abs(h1p - h2p) <= 180, hs / 2,
                                                np.where(hs < 360, (hs + 360) / 2, (hs - 360) / 2)))
    t = (1 - 0.17 * np.cos(np.radians(hpm - 30)) + 0.24 * np.cos(np.radians(2 * hpm))
         + 0.32 * np.cos(np.radians(3 * hpm + 6)) - 0.20 * np.cos(np.radians(4 * hpm - 63)))
    sl = 1 + 0.015 * (lpm - 50) ** 2 / np.sqrt(20 + (lpm - 50) ** 2)
    sc, sh = 1 + 0.045 * cpm, 1 + 0.015 * cpm * t
    rt = -2 * np.sqrt(cpm ** 7 / (cpm ** 7 + 25.0 ** 7)) * np.sin(np.radians(60 * np.exp(-(((hpm - 275) / 25) ** 2))))
    return np.sqrt((dlp / sl) ** 2 + (dcp / sc) ** 2 + (dhp / sh) ** 2 + rt * (dcp / sc) * (dhp / sh))
