"""Synthetic scenes for the renderer's benchmarks and tests (as gsplat ships its own test-scene helper): a
body-sized shell of Gaussians, the camera that frames it, and the same body shrunk into a close-up where every
Gaussian covers most of the frame (the renderer's worst case for tile pairs); and the arrays of a `render`
request that shows an avatar at rest from the front (the service's cost and memory tests and benchmark).

Body: Gaussians on (and slightly around) an ellipsoid 1.7 m tall and 0.5 m wide centred at z = 1 m, scales
1-2 cm, opacities 0.5-0.99, SH degree 3; seeded, so a scene is the same on every machine.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from backend.avatar.gaussians import Gaussians
from backend.render.camera import Camera, intrinsics_from_fov, look_at


def body_scene(n: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> Gaussians:
    """n Gaussians scattered on (and slightly around) a body-sized ellipsoid centred at z = 1 m."""
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(n, 3, generator=g, dtype=torch.float64)
    d = d / d.norm(dim=-1, keepdim=True)  # (n, 3) unit directions
    radii = torch.tensor([0.25, 0.15, 0.85], dtype=torch.float64)  # (3,) semi-axes
    shell = 1.0 + 0.02 * torch.randn(n, 1, generator=g, dtype=torch.float64)  # (n, 1)
    means = d * radii * shell + torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)  # (n, 3)
    quats = torch.randn(n, 4, generator=g, dtype=torch.float64)  # (n, 4)
    log_scales = torch.log(0.01 + 0.01 * torch.rand(n, 3, generator=g, dtype=torch.float64))  # (n, 3)
    opacity_logits = torch.logit(0.5 + 0.49 * torch.rand(n, generator=g, dtype=torch.float64))  # (n,)
    sh = 0.3 * torch.randn(n, 16, 3, generator=g, dtype=torch.float64)  # (n, 16, 3)
    sh[:, 1:] *= 0.1
    return Gaussians(means.to(dtype), quats.to(dtype), log_scales.to(dtype), opacity_logits.to(dtype), sh.to(dtype))


def body_camera(width: int = 512, height: int = 512) -> Camera:
    """A camera 2.5 m in front of the body (on -Y, looking at +Y) whose frame the 1.7 m body fills."""
    fov = math.degrees(2 * math.atan(0.95 / 2.5))
    return Camera(look_at((0.0, -2.5, 1.0), (0.0, 0.0, 1.0)), intrinsics_from_fov(fov, width, height), width, height)


def shrunk_close_up(n: int, side: int, seed: int = 0) -> tuple[Gaussians, Camera]:
    """The body shrunk 100x (its Gaussians keep their 1-2 cm size) seen from 3 cm at fov 90 on a side x side
    frame, so every Gaussian covers most of the image."""
    g = body_scene(n, seed)
    centre = torch.tensor([0.0, 0.0, 1.0])
    g = g.replace(means=(g.means - centre) * 0.01 + centre)
    cam = Camera(look_at((0.0, -0.03, 1.0), (0.0, 0.0, 1.0)), intrinsics_from_fov(90, side, side), side, side)
    return g, cam


def front_view_arrays(joints: int, side: int, frames: int, centre: np.ndarray, distance: float = 2.5,
                      fov_deg: float = 40.0, root_scale: float = 1.0) -> dict[str, np.ndarray]:
    """A `render` request's arrays (bridge.wire.protocol.RENDER_ARRAYS and the pose arrays): the rest pose
    with the root bone scaled by root_scale, seen by a side x side camera `distance` in front of `centre`
    (on -Y looking at +Y, Z up), for `frames` frames."""
    rotations = np.zeros((frames, joints, 4), np.float32)
    rotations[..., 0] = 1
    scales = np.ones((frames, joints), np.float32)
    scales[:, 0] = root_scale
    centre = np.asarray(centre, np.float64)
    w2c = look_at(centre - np.array([0.0, distance, 0.0]), centre)
    k = intrinsics_from_fov(fov_deg, side, side)
    return {"joint_rotations": rotations, "root_translations": np.zeros((frames, 3), np.float32),
            "world_to_camera": np.tile(w2c.astype(np.float32), (frames, 1, 1)),
            "intrinsics": np.tile(k.astype(np.float32), (frames, 1, 1)),
            "joint_scales": scales, "joint_locations": np.zeros((frames, joints, 3), np.float32)}

