"""Which texels of the UV atlas a frame shows: one computation for the tokenizer and for tokenization.

A texel is seen in a frame when its surface anchor, posed by LBS with the frame's body pose,

- projects inside the image (and, where a person mask is given, onto the person),
- faces the camera (its posed normal points towards the camera centre), and
- is not hidden by the body itself: its camera depth is within `depth_tolerance` of a z-buffer of the
  posed template mesh (vertices and anchors splatted into cells of `cell_px` pixels, nearest depth kept).

`TexelVisibility(template, layout)(joint_rotations, root_translation, viewmats, intrinsics, width, height,
masks)` returns per frame and valid texel the pixel position, the camera depth and a weight in [0, 1]
(product of the soft facing term and the hard tests). The tokenizer uses the weight to fuse pixel-aligned
features across frames; `genlca-train tokenize` thresholds it (`seen_texels`) into the per-clip
visibility mask that the diffusion model trains with. Pixel centres are at (x + 0.5, y + 0.5), the
renderer's convention, so `uv / (W, H) * 2 - 1` is grid_sample's `align_corners=False` coordinate.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from backend.avatar.skinning import Skeleton, skinning_matrices
from backend.avatar.template import BodyTemplate
from backend.avatar.uv_layout import TexelLayout


@dataclasses.dataclass
class TexelView:
    uv: torch.Tensor  # (F, M, 2) pixel coordinates (x right, y down)
    depth: torch.Tensor  # (F, M) camera z in metres
    weight: torch.Tensor  # (F, M) in [0, 1]: 0 behind the body, off the image, off the mask or facing away
    points: torch.Tensor  # (F, M, 3) posed anchors in world space

    def grid(self, width: int, height: int) -> torch.Tensor:
        """(F, M, 2) grid_sample coordinates in [-1, 1] (align_corners=False)."""
        scale = torch.tensor([2.0 / width, 2.0 / height], dtype=self.uv.dtype, device=self.uv.device)
        return self.uv * scale - 1.0


def _blend(a: torch.Tensor, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Skinning matrices a (F, J, 4, 4), top-k indices/weights (P, k) -> blended (F, P, 3, 4)."""
    m = torch.zeros(a.shape[0], idx.shape[0], 3, 4, dtype=a.dtype)
    for k in range(idx.shape[1]):
        m = m + w[None, :, k, None, None] * a[:, idx[:, k], :3, :]  # (F, P, 3, 4)
    return m


class TexelVisibility:
    """Posed-template visibility of a layout's valid texels (see the module docstring)."""

    def __init__(self, template: BodyTemplate, layout: TexelLayout, depth_tolerance: float = 0.04,
                 facing_softness: float = 0.2, cell_px: int | None = None) -> None:
        self.skeleton = Skeleton.from_template(template)
        self.layout = layout
        self.depth_tolerance = depth_tolerance
        self.facing_softness = facing_softness
        self.cell_px = cell_px
        self.anchors = layout.gather("anchors").float()  # (M, 3)
        self.normals = layout.gather("frames")[..., 2].float()  # (M, 3)
        self.skin_idx = layout.gather("skin_indices").long()  # (M, 8)
        self.skin_w = layout.gather("skin_weights").float()  # (M, 8)
        vidx, vw = template.topk_skin(8)
        self.vertices = torch.as_tensor(template.vertices, dtype=torch.float32)  # (V, 3)
        self.vert_idx = torch.as_tensor(vidx).long()  # (V, 8)
        self.vert_w = torch.as_tensor(vw).float()  # (V, 8)

    @torch.no_grad()
    def __call__(self, joint_rotations, root_translation, viewmats, intrinsics, width: int, height: int,
                 masks: torch.Tensor | None = None) -> TexelView:
        """joint_rotations (F, J, 4) wxyz, root_translation (F, 3), viewmats (F, 4, 4), intrinsics (F, 3, 3),
        masks (F, H, W) in [0, 1] or None -> TexelView of the M valid texels in F frames."""
        rot = torch.as_tensor(joint_rotations, dtype=torch.float32)
        f = rot.shape[0]
        a = skinning_matrices(self.skeleton, rot, torch.as_tensor(root_translation, dtype=torch.float32))  # (F, J, 4, 4)
        m = _blend(a, self.skin_idx, self.skin_w)  # (F, M, 3, 4)
        points = (m[..., :3] @ self.anchors[None, :, :, None]).squeeze(-1) + m[..., 3]  # (F, M, 3)
        normals = F.normalize((m[..., :3] @ self.normals[None, :, :, None]).squeeze(-1), dim=-1)  # (F, M, 3)
        mv = _blend(a, self.vert_idx, self.vert_w)  # (F, V, 3, 4)
        verts = (mv[..., :3] @ self.vertices[None, :, :, None]).squeeze(-1) + mv[..., 3]  # (F, V, 3)

        vm = torch.as_tensor(viewmats, dtype=torch.float32).reshape(f, 4, 4)
        ks = torch.as_tensor(intrinsics, dtype=torch.float32).reshape(f, 3, 3)
        uv, z = _project(points, vm, ks)  # (F, M, 2), (F, M)
        centres = -(vm[:, :3, :3].transpose(1, 2) @ vm[:, :3, 3:]).squeeze(-1)  # (F, 3)
        to_cam = F.normalize(centres[:, None] - points, dim=-1)  # (F, M, 3)
        facing = ((normals * to_cam).sum(-1) / self.facing_softness).clamp(0.0, 1.0)  # (F, M)
        inside = (uv[..., 0] >= 0) & (uv[..., 0] < width) & (uv[..., 1] >= 0) & (uv[..., 1] < height) & (z > 1e-3)

        cell = self.cell_px or max(1, round(min(width, height) / 64))
        gw, gh = (width + cell - 1) // cell, (height + cell - 1) // cell
        vuv, vz = _project(verts, vm, ks)  # (F, V, 2), (F, V)
        zbuf = _zbuffer(torch.cat([vuv, uv], 1), torch.cat([vz, z], 1), cell, gw, gh)  # (F, gh, gw)
        cx = (uv[..., 0] / cell).floor().long().clamp(0, gw - 1)  # (F, M)
        cy = (uv[..., 1] / cell).floor().long().clamp(0, gh - 1)
        front = torch.gather(zbuf.reshape(f, -1), 1, cy * gw + cx)  # (F, M)
        unoccluded = z <= front + self.depth_tolerance
        weight = facing * (inside & unoccluded).float()  # (F, M)
        if masks is not None:
            mk = torch.as_tensor(masks, dtype=torch.float32).reshape(f, 1, height, width)
            grid = uv * torch.tensor([2.0 / width, 2.0 / height]) - 1.0  # (F, M, 2)
            on_person = F.grid_sample(mk, grid[:, None], mode="bilinear", align_corners=False)[:, 0, 0]  # (F, M)
            weight = weight * (on_person > 0.5).float()
        return TexelView(uv=uv, depth=z, weight=weight, points=points)


def _project(points: torch.Tensor, viewmats: torch.Tensor, ks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """points (F, P, 3), viewmats (F, 4, 4), ks (F, 3, 3) -> pixels (F, P, 2), depth (F, P)."""
    pc = points @ viewmats[:, :3, :3].transpose(1, 2) + viewmats[:, None, :3, 3]  # (F, P, 3)
    z = pc[..., 2]
    zs = z.clamp_min(1e-6)
    u = pc[..., 0] / zs * ks[:, None, 0, 0] + ks[:, None, 0, 2]
    v = pc[..., 1] / zs * ks[:, None, 1, 1] + ks[:, None, 1, 2]
    return torch.stack([u, v], -1), z


def _zbuffer(uv: torch.Tensor, z: torch.Tensor, cell: int, gw: int, gh: int) -> torch.Tensor:
    """Nearest depth per cell: uv (F, P, 2) pixels, z (F, P) -> (F, gh, gw), +inf where nothing lands."""
    f = uv.shape[0]
    cx = (uv[..., 0] / cell).floor()
    cy = (uv[..., 1] / cell).floor()
    ok = (cx >= 0) & (cx < gw) & (cy >= 0) & (cy < gh) & (z > 1e-3)
    flat = (cy.clamp(0, gh - 1) * gw + cx.clamp(0, gw - 1)).long()  # (F, P)
    zz = torch.where(ok, z, torch.full_like(z, float("inf")))
    buf = torch.full((f, gh * gw), float("inf"))
    buf = buf.scatter_reduce(1, flat, zz, reduce="amin")
    return buf.reshape(f, gh, gw)


def seen_texels(view: TexelView, threshold: float = 0.5, min_frames: int = 1) -> torch.Tensor:
    """(M,) bool: texels whose weight exceeds `threshold` in at least `min_frames` frames."""
    return (view.weight > threshold).sum(0) >= min_frames


def visibility_map(layout: TexelLayout, per_texel: torch.Tensor) -> torch.Tensor:
    """Scatter (M,) or (..., M) valid-texel values onto the atlas: (R, R) or (..., R, R), zero outside."""
    r = layout.resolution
    lead = per_texel.shape[:-1]
    out = torch.zeros(lead + (r * r,), dtype=per_texel.dtype)
    out[..., layout.valid_indices] = per_texel
    return out.reshape(lead + (r, r))
