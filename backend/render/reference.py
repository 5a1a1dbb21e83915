"""Brute-force twin of the tile compositor: every Gaussian against every pixel, one Gaussian at a time.

Slow (a Python loop over Gaussians) and differentiable by plain autograd; tests hold the tile
rasterizer against it (images and gradients).
"""
from __future__ import annotations

import torch

from backend.render.cpu_rasterizer import ALPHA_THRESHOLD, MAX_ALPHA, T_STOP


def composite_reference(proj: dict[str, torch.Tensor], width: int, height: int, background: torch.Tensor,
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """proj from `cpu_rasterizer.project` (front to back) -> rgb (H, W, 3), alpha (H, W, 1), depth (H, W, 1)."""
    dt, dev = proj["means2d"].dtype, proj["means2d"].device
    ys, xs = torch.meshgrid(torch.arange(height, dtype=dt, device=dev) + 0.5,
                            torch.arange(width, dtype=dt, device=dev) + 0.5, indexing="ij")  # (H, W) each
    trans = torch.ones(height, width, dtype=dt, device=dev)  # (H, W)
    done = torch.zeros(height, width, dtype=torch.bool, device=dev)  # (H, W)
    feats = torch.cat([proj["colors"], proj["depths"][:, None]], -1)  # (M, 4)
    out = torch.zeros(height, width, 4, dtype=dt, device=dev)  # (H, W, 4)
    for i in range(len(feats)):
        (mx, my), (a, b, c), o = proj["means2d"][i], proj["conics"][i], proj["opacities"][i]
        dx, dy = xs - mx, ys - my  # (H, W) each
        sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy  # (H, W)
        alpha = (o * torch.exp(-sigma)).clamp_max(MAX_ALPHA)  # (H, W)
        skip = (sigma < 0) | (alpha < ALPHA_THRESHOLD)  # (H, W)
        next_t = trans * (1 - alpha)  # (H, W)
        done = done | (~skip & (next_t <= T_STOP))
        use = ~skip & ~done  # (H, W)
        out = out + torch.where(use, alpha * trans, 0.0)[..., None] * feats[i]  # (H, W, 4)
        trans = torch.where(use, next_t, trans)
    alpha_img = (1 - trans)[..., None]  # (H, W, 1)
    rgb = out[..., :3] + trans[..., None] * background  # (H, W, 3)
    depth = out[..., 3:4] / alpha_img.clamp_min(1e-10)  # (H, W, 1)
    return rgb, alpha_img, depth
