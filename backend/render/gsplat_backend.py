"""The CUDA backend: gsplat's fused `rasterization` (imported only when this runs)."""
from __future__ import annotations

import torch

from backend.avatar.gaussians import Gaussians


def render_gsplat(gaussians: Gaussians, viewmats: torch.Tensor, ks: torch.Tensor, width: int, height: int,
                  background: torch.Tensor, sh_degree: int, near: float, far: float, options,
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """viewmats (B, 4, 4), Ks (B, 3, 3), background (3,) -> rgb (B, H, W, 3), alpha (B, H, W, 1), depth (B, H, W, 1)."""
    try:
        from gsplat import rasterization
    except ImportError as exc:  # gsplat also needs `packaging`, which it does not declare
        raise RuntimeError(f"backend 'gsplat' needs the gsplat package with its CUDA extension: {exc}") from exc
    if gaussians.device.type != "cuda":
        raise ValueError(f"backend 'gsplat' needs CUDA tensors, got Gaussians on {gaussians.device}")
    b = viewmats.shape[0]
    colors, alphas, _ = rasterization(
        means=gaussians.means,  # (N, 3)
        quats=gaussians.rotations,  # (N, 4) wxyz, gsplat normalises
        scales=gaussians.log_scales.exp(),  # (N, 3)
        opacities=torch.sigmoid(gaussians.opacity_logits),  # (N,)
        colors=gaussians.sh,  # (N, S, 3)
        viewmats=viewmats,  # (B, 4, 4)
        Ks=ks,  # (B, 3, 3)
        width=width,
        height=height,
        near_plane=near,
        far_plane=far,
        eps2d=options.eps2d,
        sh_degree=sh_degree,
        tile_size=options.tile_size or 16,
        backgrounds=background.expand(b, 3).contiguous(),  # (B, 3)
        render_mode="RGB+ED",
        packed=False,
        rasterize_mode="antialiased" if options.antialias else "classic",
    )  # colors (B, H, W, 4), alphas (B, H, W, 1)
    return colors[..., :3], alphas, colors[..., 3:4]
