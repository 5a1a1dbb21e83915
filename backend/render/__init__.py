"""Rendering of 3D Gaussians: one public `render`, gsplat on CUDA, the pure-PyTorch twin everywhere else.

    out = render(gaussians, cameras, options=RenderOptions(background=(1, 1, 1)))
    out.rgb (B, H, W, 3), out.alpha (B, H, W, 1), out.depth (B, H, W, 1) expected z-depth

Nothing heavy is imported here: gsplat loads only when the gsplat backend runs.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Literal, Sequence

import torch

from backend.avatar.gaussians import Gaussians
from backend.render.camera import Camera, stack_cameras
from backend.render.cpu_rasterizer import RenderCostError, composite, project, tile_pair_counts

__all__ = ["Camera", "RenderCostError", "RenderOptions", "RenderOutput", "frame_cost", "render", "resolve_backend"]


@dataclasses.dataclass
class RenderOptions:
    """Settings of one render call.

    background:      RGB in [0, 1] behind the Gaussians
    sh_degree:       SH degree to evaluate (None: all the Gaussians carry); clipped to theirs
    near, far:       depth range (None: each camera's own near/far)
    backend:         "auto" (gsplat if CUDA tensors and gsplat import, else torch), "gsplat" or "torch"
    tile_size:       tile edge in pixels; None: 16 for gsplat, 8 for the CPU twin (fewer wasted pixel-Gaussian
                     pairs and earlier tile stops; measured 1.4x faster than 16 on the body benchmark)
    chunk_elements:  CPU twin: tiles x pixels x Gaussians per block; ~40 bytes each under autograd
    eps2d:           screen-space dilation added to the 2D covariance diagonal (pixels^2)
    antialias:       gsplat's "antialiased" mode (opacity times the dilation's compensation)
    max_memory_gb:   CPU twin: refuse chunk settings whose block would exceed this much
    block_pairs:     CPU twin: Gaussian-tile pairs listed and sorted at once (~32 bytes each); a frame with
                     more is composited in rectangles of tiles (the same pixels up to float rounding), so its memory
                     stays bounded however close the camera or however small the body
    max_tile_pairs:  refuse a frame above this many Gaussian-tile pairs (RenderCostError, a ValueError),
                     counted after projection and before any pair is listed, at the backend's tile size;
                     None: no limit. The renderer's cost is its pairs, not its pixels: a 512^2 frame of a
                     body 2.5 m away makes ~1e5, a camera 3 cm from a body shrunk to 2 cm ~3e7
    """

    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    sh_degree: int | None = None
    near: float | None = None
    far: float | None = None
    backend: Literal["auto", "gsplat", "torch"] = "auto"
    tile_size: int | None = None
    chunk_elements: int = 1 << 20
    eps2d: float = 0.3
    antialias: bool = False
    max_memory_gb: float = 1.0
    block_pairs: int = 1 << 22
    max_tile_pairs: int | None = None

    def __post_init__(self) -> None:
        if len(self.background) != 3:
            raise ValueError(f"expected an RGB background of 3 values, got {self.background!r}")
        if self.backend not in ("auto", "gsplat", "torch"):
            raise ValueError(f"backend must be 'auto', 'gsplat' or 'torch', got {self.backend!r}")
        if self.sh_degree is not None and not 0 <= self.sh_degree <= 3:
            raise ValueError(f"sh_degree must be in 0..3 or None, got {self.sh_degree}")
        if self.tile_size not in (None, 8, 16, 32):
            raise ValueError(f"tile_size must be None, 8, 16 or 32, got {self.tile_size}")
        if self.chunk_elements < 32 ** 2 * 8:
            raise ValueError(f"chunk_elements must be at least {32 ** 2 * 8}, got {self.chunk_elements}")
        if self.chunk_elements * 40 > self.max_memory_gb * 2 ** 30:
            raise ValueError(f"chunk_elements={self.chunk_elements} needs ~{self.chunk_elements * 40 / 2**30:.2f} GB "
                             f"per block, over max_memory_gb={self.max_memory_gb}")
        if self.block_pairs < 1 or (self.max_tile_pairs is not None and self.max_tile_pairs < 1):
            raise ValueError(f"block_pairs and max_tile_pairs must be positive, got {self.block_pairs}, "
                             f"{self.max_tile_pairs}")
        if self.eps2d < 0:
            raise ValueError(f"eps2d must be >= 0, got {self.eps2d}")


@dataclasses.dataclass
class RenderOutput:
    rgb: torch.Tensor  # (B, H, W, 3)
    alpha: torch.Tensor  # (B, H, W, 1)
    depth: torch.Tensor  # (B, H, W, 1) expected depth (sum w z / sum w); 0 where nothing was hit


def resolve_backend(gaussians: Gaussians, backend: str) -> str:
    """The backend "auto" means here: gsplat for CUDA tensors when gsplat imports, the torch twin otherwise."""
    if backend != "auto":
        return backend
    if gaussians.device.type == "cuda" and torch.cuda.is_available():
        try:
            import gsplat  # noqa: F401  (lazy: pulls CUDA extensions)
        except Exception:  # gsplat missing or broken: fall back to the twin
            return "torch"
        return "gsplat"
    return "torch"


def render(gaussians: Gaussians, cameras: Camera | Sequence[Camera], *,
           options: RenderOptions | None = None, between_blocks: Callable[[], None] | None = None) -> RenderOutput:
    """Render N Gaussians into B cameras of one image size; differentiable on both backends.

    Raises RenderCostError (a ValueError) for a camera whose Gaussian-tile pairs pass
    options.max_tile_pairs. between_blocks (CPU twin) is called before each block of tiles, e.g. a job's
    cancel check, so that a costly frame can be stopped part-way."""
    options = options or RenderOptions()
    if not isinstance(gaussians, Gaussians):
        raise TypeError(f"expected Gaussians, got {type(gaussians).__name__}")
    gaussians.validate(check_finite=True)
    viewmats_np, ks_np, width, height = stack_cameras(cameras)
    cams = [cameras] if isinstance(cameras, Camera) else list(cameras)
    near = options.near if options.near is not None else cams[0].near
    far = options.far if options.far is not None else cams[0].far
    if not 0 < near < far:
        raise ValueError(f"expected 0 < near < far, got near={near}, far={far}")
    dtype = gaussians.means.dtype
    if not dtype.is_floating_point:
        raise TypeError(f"expected floating-point Gaussians, got {dtype}")
    device = gaussians.device
    viewmats = torch.as_tensor(viewmats_np, dtype=dtype, device=device)  # (B, 4, 4)
    ks = torch.as_tensor(ks_np, dtype=dtype, device=device)  # (B, 3, 3)
    background = torch.tensor(options.background, dtype=dtype, device=device)  # (3,)
    sh_degree = gaussians.sh_degree if options.sh_degree is None else min(options.sh_degree, gaussians.sh_degree)

    if resolve_backend(gaussians, options.backend) == "gsplat":
        from backend.render.gsplat_backend import render_gsplat

        if options.max_tile_pairs is not None:  # gsplat lists every pair at once: count them first
            for b in range(len(viewmats)):
                frame_cost(gaussians, viewmats[b], ks[b], width, height, options.tile_size or 16, near, far,
                           options, limit=options.max_tile_pairs)

        rgb, alpha, depth = render_gsplat(gaussians, viewmats, ks, width, height, background, sh_degree,
                                          near, far, options)
        return RenderOutput(rgb, alpha, depth)

    outs = []
    for b in range(len(viewmats)):
        proj = project(gaussians.means, gaussians.rotations, gaussians.log_scales, gaussians.opacity_logits,
                       gaussians.sh, viewmats[b], ks[b], width, height, sh_degree=sh_degree, near=near, far=far,
                       eps2d=options.eps2d, antialias=options.antialias)
        outs.append(composite(proj, width, height, background, options.tile_size or 8, options.chunk_elements,
                              options.block_pairs, options.max_tile_pairs, between_blocks))
    rgb, alpha, depth = (torch.stack(t) for t in zip(*outs))  # (B, H, W, 3), (B, H, W, 1), (B, H, W, 1)
    return RenderOutput(rgb, alpha, depth)


def frame_cost(gaussians: Gaussians, viewmat: torch.Tensor, k: torch.Tensor, width: int, height: int,
               tile_size: int, near: float, far: float, options: RenderOptions | None = None,
               limit: int | None = None) -> int:
    """Gaussian-tile pairs of one camera (viewmat (4, 4), K (3, 3)) at `tile_size`: the projection and a
    per-tile count (O(N + tiles) memory), no pair listed. Raises RenderCostError above `limit`."""
    options = options or RenderOptions()
    with torch.no_grad():
        proj = project(gaussians.means, gaussians.rotations, gaussians.log_scales, gaussians.opacity_logits,
                       gaussians.sh[:, :1], viewmat, k, width, height, sh_degree=0, near=near, far=far,
                       eps2d=options.eps2d, antialias=options.antialias)
        pairs = int(tile_pair_counts(proj["means2d"], proj["radii"], tile_size, -(-width // tile_size),
                                     -(-height // tile_size)).sum())
    if limit is not None and pairs > limit:
        raise RenderCostError(pairs, limit, tile_size)
    return pairs
