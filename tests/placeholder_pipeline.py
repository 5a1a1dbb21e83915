"""PLACEHOLDER handlers: a seeded Gaussian cloud shaped like a body, numpy only, no model.

They exist so that the server's tests (tests/test_server_*.py) exercise the service and the wire without
the avatar core or any weights; production code serves backend.pipelines.default_handlers.
`generate` is real work, done in `steps` relaxation steps with a progress reply per step (so progress
order and cancellation can be tested); `get_avatar` returns the arrays of bridge.wire.protocol.AVATAR_ARRAYS
with a one-joint skeleton. Every result says `meta.generator == "placeholder-random"`.
"""
from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import numpy as np

from bridge.wire import protocol
from bridge.wire.codec import check_array
from bridge.wire.protocol import Request
from backend.service.queue import HandlerError, JobContext
from backend.pipelines.store import AvatarStore

GENERATOR = "placeholder-random"
N_GAUSSIANS = 20_000
SH_COEFFS = 16
MAX_STEPS = 1_000_000

# Body parts as ellipsoids (centre, semi-axes) in metres, Z-up, facing -Y: head, torso, arms, legs.
_PARTS = np.array([
    [[0.0, 0.0, 1.62], [0.09, 0.10, 0.12]],
    [[0.0, 0.0, 1.20], [0.18, 0.11, 0.30]],
    [[-0.32, 0.0, 1.20], [0.05, 0.05, 0.30]],
    [[0.32, 0.0, 1.20], [0.05, 0.05, 0.30]],
    [[-0.10, 0.0, 0.45], [0.07, 0.07, 0.45]],
    [[0.10, 0.0, 0.45], [0.07, 0.07, 0.45]],
], dtype=np.float64)
_PART_COLOURS = np.array([[0.9, 0.7, 0.6], [0.2, 0.3, 0.7], [0.9, 0.7, 0.6], [0.9, 0.7, 0.6],
                          [0.15, 0.15, 0.2], [0.15, 0.15, 0.2]])
_SH_C0 = 0.28209479177387814


@dataclasses.dataclass
class PlaceholderAvatar:
    gaussians: dict[str, np.ndarray]     # the AVATAR_ARRAYS
    joint_names: list[str]
    meta: dict[str, Any]


def relax_step(points: np.ndarray, rate: float) -> tuple[np.ndarray, np.ndarray]:
    """Move every point (N, 3) a fraction `rate` towards the surface of its nearest body ellipsoid;
    returns the new points and the part index (N,) of each."""
    centres, axes = _PARTS[:, 0], _PARTS[:, 1]                                # (P, 3), (P, 3)
    local = (points[:, None, :] - centres[None]) / axes[None]                 # (N, P, 3) unit-sphere coords
    radius = np.linalg.norm(local, axis=-1)                                   # (N, P)
    part = np.argmin(np.abs(radius - 1.0) * axes.mean(-1)[None], axis=1)      # (N,) nearest surface (approx.)
    rows = np.arange(points.shape[0])
    on_surface = local[rows, part] / np.maximum(radius[rows, part], 1e-9)[:, None]   # (N, 3)
    target = centres[part] + on_surface * axes[part]                          # (N, 3)
    return points + rate * (target - points), part


def placeholder_cloud(seed: int, steps: int, ctx: JobContext | None = None,
                      n: int = N_GAUSSIANS) -> dict[str, np.ndarray]:
    """The AVATAR_ARRAYS of a seeded body-shaped cloud, relaxed over `steps` steps (deterministic)."""
    rng = np.random.default_rng(seed)
    points = rng.uniform([-0.45, -0.2, 0.0], [0.45, 0.2, 1.8], size=(n, 3))  # (N, 3)
    part = np.zeros(n, dtype=np.int64)
    rate = 1.0 - 0.05 ** (1.0 / steps)   # after all steps, 95 % of the way to the surface
    for step in range(steps):
        points, part = relax_step(points, rate)
        if ctx is not None:
            ctx.progress("relax", step + 1, steps)
    quats = rng.normal(size=(n, 4))
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    sh = np.zeros((n, SH_COEFFS, 3))
    sh[:, 0] = (_PART_COLOURS[part] + rng.normal(0, 0.03, (n, 3)) - 0.5) / _SH_C0
    sh[:, 1:] = rng.normal(0, 0.01, (n, SH_COEFFS - 1, 3))
    bone = np.eye(4)
    bone[:3, :3] = [[1, 0, 0], [0, 0, -1], [0, 1, 0]]   # bone +Y (Blender) along world +Z
    bone[:3, 3] = [0.0, 0.0, 0.9]
    return {
        "means": points.astype(np.float32),
        "rotations": quats.astype(np.float32),
        "log_scales": np.log(rng.uniform(0.006, 0.015, (n, 3))).astype(np.float32),
        "opacity_logits": rng.normal(2.0, 0.5, n).astype(np.float32),
        "sh": sh.astype(np.float32),
        "skin_indices": np.zeros((n, 1), dtype=np.uint16),
        "skin_weights": np.ones((n, 1), dtype=np.float32),
        "joint_parents": np.array([-1], dtype=np.int32),
        "rest_matrices": bone[None].astype(np.float32),
        "joint_tails": np.array([[0.0, 0.0, 1.2]], dtype=np.float32),
    }


def placeholder_handlers(store: AvatarStore | None = None) -> dict[str, Any]:
    """{"generate", "get_avatar"} handlers over `store` (a new AvatarStore when None)."""
    store = AvatarStore() if store is None else store

    def generate(request: Request, arrays: dict[str, np.ndarray], ctx: JobContext):
        assert isinstance(request, protocol.Generate)
        if not 1 <= request.steps <= MAX_STEPS:
            raise HandlerError(protocol.E_INVALID, f"steps must be in 1..{MAX_STEPS}, got {request.steps}")
        if "image" in arrays:
            check_array(arrays, "image", "|u1", "H,W,3")
        extra = sorted(set(arrays) - {"image"})
        if extra:
            raise HandlerError(protocol.E_BAD_ARRAY, f"generate takes only an optional 'image' array, got {extra}")
        gaussians = placeholder_cloud(request.seed, request.steps, ctx)
        avatar_id = uuid.uuid4().hex
        meta = {"generator": GENERATOR, "prompt": request.prompt, "seed": request.seed, "steps": request.steps,
                "gaussians": int(gaussians["means"].shape[0]), "note": "placeholder: no diffusion model"}
        store.put(avatar_id, PlaceholderAvatar(gaussians, ["root"], meta))
        return {"avatar_id": avatar_id, "meta": meta}, {}

    def get_avatar(request: Request, arrays: dict[str, np.ndarray], ctx: JobContext):
        assert isinstance(request, protocol.GetAvatar)
        if arrays:
            raise HandlerError(protocol.E_BAD_ARRAY, f"get_avatar takes no arrays, got {sorted(arrays)}")
        avatar = store.get(request.avatar_id)
        if avatar is None:
            raise HandlerError(protocol.E_NOT_FOUND, f"no avatar with id {request.avatar_id!r} "
                               f"(it may have been evicted; {len(store)} stored)")
        return ({"avatar_id": request.avatar_id, "joint_names": list(avatar.joint_names), "meta": avatar.meta},
                dict(avatar.gaussians))

    return {"generate": generate, "get_avatar": get_avatar}
