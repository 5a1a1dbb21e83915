"""Per-texel ground-truth visibility of a synthetic clip.

A texel counts as SEEN in a frame when at least half of its K decoded Gaussians pass every test:

- inside the image (pixel centre within [0, W) x [0, H)) and in front of the camera (z > near),
- not behind an occluder rectangle,
- facing the camera: the posed normal (third axis of the Gaussian's posed rotation, the anchor's
  tangent-frame normal) points towards the camera,
- depth test: its camera depth is at most the rendered expected depth at its pixel + `DEPTH_TOLERANCE`
  (the frame is rendered from the same Gaussians, so the first surface wins),
- enough pixels: the texel's footprint (texel edge in metres x focal / depth) is at least
  `MIN_FOOTPRINT_PX` pixels.

The per-clip map is the fraction of frames in which the texel was seen, (R, R) float32; the binary
mask the diffusion model trains with (`shard_mask`) is 1 where that fraction is at least
`MIN_FRAMES` frames' worth (one frame: a texel the clip showed once is observed).
"""
from __future__ import annotations

import numpy as np
import torch

from bridge.geometry.rotations import quat_to_matrix

DEPTH_TOLERANCE = 0.03  # metres
MIN_FOOTPRINT_PX = 0.5
MIN_FRAMES = 1


def frame_visibility(means: torch.Tensor, rotations: torch.Tensor, depth: np.ndarray, viewmat: np.ndarray,
                     intrinsics: np.ndarray, occluders: list[list[int]], texel_size: np.ndarray,
                     k: int, near: float = 0.05) -> np.ndarray:
    """One frame. means (N, 3), rotations (N, 4) posed (N = M * K, texel-major); depth (H, W) rendered;
    occluders: [x0, y0, x1, y1] pixel rectangles; texel_size (M,) metres -> (M,) bool seen."""
    normals = quat_to_matrix(rotations.double())[:, :, 2].numpy()  # (N, 3) world
    return points_visibility(means.double().numpy(), normals, depth, viewmat, intrinsics, occluders, texel_size,
                             k, near)


def points_visibility(means: np.ndarray, normals: np.ndarray, depth: np.ndarray, viewmat: np.ndarray,
                      intrinsics: np.ndarray, occluders: list[list[int]], texel_size: np.ndarray,
                      k: int, near: float = 0.05) -> np.ndarray:
    """`frame_visibility` of posed points (N, 3) with their surface normals (N, 3), numpy float64."""
    h, w = depth.shape
    p = means @ viewmat[:3, :3].T.astype(np.float64) + viewmat[:3, 3]  # (N, 3) camera
    z = p[:, 2]
    safe_z = np.where(z > near, z, 1.0)
    u = intrinsics[0, 0] * p[:, 0] / safe_z + intrinsics[0, 2]
    v = intrinsics[1, 1] * p[:, 1] / safe_z + intrinsics[1, 2]
    ok = (z > near) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    for x0, y0, x1, y1 in occluders:
        ok &= ~((u >= x0) & (u < x1) & (v >= y0) & (v < y1))
    centre = -viewmat[:3, :3].T @ viewmat[:3, 3]
    ok &= ((centre[None] - means) * normals).sum(1) > 0
    ui, vi = np.clip(u.astype(np.int64), 0, w - 1), np.clip(v.astype(np.int64), 0, h - 1)
    d = depth[vi, ui]
    ok &= (d > 0) & (z <= d + DEPTH_TOLERANCE)
    per_texel = ok.reshape(-1, k).mean(1) >= 0.5  # (M,)
    texel_z = safe_z.reshape(-1, k).mean(1)
    footprint = texel_size * intrinsics[0, 0] / np.maximum(texel_z, 1e-6)
    return per_texel & (footprint >= MIN_FOOTPRINT_PX)


def clip_visibility(seen: np.ndarray, valid_indices: np.ndarray, resolution: int) -> np.ndarray:
    """seen (F, M) bool -> (R, R) float32 fraction of frames (0 outside the atlas)."""
    out = np.zeros(resolution * resolution, dtype=np.float32)
    out[valid_indices] = seen.mean(0).astype(np.float32)
    return out.reshape(resolution, resolution)


def shard_mask(visibility: np.ndarray, num_frames: int) -> np.ndarray:
    """(R, R) fraction -> (R, R) uint8 1 where the texel was seen in at least MIN_FRAMES frames."""
    return (visibility * num_frames >= MIN_FRAMES - 1e-6).astype(np.uint8)
