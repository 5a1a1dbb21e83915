"""`TexelLayout`: what every texel of an R×R token map means on the body.

Texel (row r, column c) has its centre at u = (c + 0.5) / R, v = 1 - (r + 0.5) / R: row 0 is the top
of the UV image (v = 1), as in the texture images that ship with MakeHuman. A texel is inside the
atlas when its centre falls in a UV triangle; it then has

- a surface anchor (barycentric point of that triangle on the rest mesh),
- a tangent frame: columns (tangent, bitangent, normal); the tangent follows +u on the surface, the
  normal is the interpolated vertex normal, bitangent = normal × tangent (orthonormal, det +1),
- top-8 skin weights interpolated from the triangle's vertices (rows sum to 1),
- a body-part id (the part of the triangle corner nearest in barycentric terms),
- a footprint: the world-space edge length of one texel there (for the decoder's base scale).

Built with a vectorised rasteriser (no per-texel Python loop) and cached as safetensors keyed by the
template's source hash and R.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import torch

from backend.avatar import body_parts
from backend.avatar.template import BodyTemplate, cache_dir, save_safetensors_atomic, topk_weights

LAYOUT_FORMAT_VERSION = 1
SUPPORTED_RESOLUTIONS = (32, 64, 128, 256)
SKIN_TOPK = 8


@dataclasses.dataclass
class TexelLayout:
    """Per-texel data for one (template, R). Tensors are CPU float32/int64/bool.

    anchors:      (R, R, 3)     rest-pose surface points (zeros outside the atlas)
    frames:       (R, R, 3, 3)  columns: tangent, bitangent, normal (identity outside)
    skin_indices: (R, R, 8)     joint indices
    skin_weights: (R, R, 8)     weights, rows sum to 1 inside the atlas
    atlas_mask:   (R, R)        bool, texel centre inside a UV chart
    part_ids:     (R, R)        int64 body part (-1 outside)
    face_ids:     (R, R)        int64 triangle (-1 outside)
    barycentric:  (R, R, 3)     barycentric coordinates in that triangle
    texel_size:   (R, R)        metres covered by one texel edge there
    valid_indices:(M,)          flat indices r * R + c of the atlas texels
    """

    template_name: str
    resolution: int
    anchors: torch.Tensor
    frames: torch.Tensor
    skin_indices: torch.Tensor
    skin_weights: torch.Tensor
    atlas_mask: torch.Tensor
    part_ids: torch.Tensor
    face_ids: torch.Tensor
    barycentric: torch.Tensor
    texel_size: torch.Tensor
    valid_indices: torch.Tensor
    part_names: tuple[str, ...] = ()

    @property
    def num_valid(self) -> int:
        return int(self.valid_indices.numel())

    def gather(self, name: str) -> torch.Tensor:
        """A per-texel field at the valid texels only: (M, ...)."""
        t = getattr(self, name)
        return t.reshape(self.resolution * self.resolution, *t.shape[2:])[self.valid_indices]

    def region_masks(self) -> dict[str, np.ndarray]:
        return body_parts.all_region_masks(self.part_ids.numpy(), self.atlas_mask.numpy())

    def region_mask(self, regions: str | list[str]) -> torch.Tensor:  # (R, R) bool
        return torch.from_numpy(body_parts.region_mask(self.part_ids.numpy(), self.atlas_mask.numpy(), regions))


def _vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    tri = vertices[faces]  # (F, 3, 3)
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # (F, 3) area-weighted
    vn = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(vn, faces[:, k], fn)
    return vn / np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-12)


def rasterize_uv(uvs: np.ndarray, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Which triangle covers each texel centre. uvs: (F, 3, 2) -> face_ids (R, R) (-1: none), bary (R, R, 3).

    Candidate (triangle, texel) pairs come from each triangle's texel bounding box, expanded with
    `np.repeat`; barycentric coordinates decide. Where charts overlap the larger-area triangle wins.
    """
    r = resolution
    # pixel coordinates: x = u * R - 0.5 (column), y = (1 - v) * R - 0.5 (row); centres at integers
    px = np.stack([uvs[..., 0] * r - 0.5, (1.0 - uvs[..., 1]) * r - 0.5], axis=-1)  # (F, 3, 2)
    lo = np.clip(np.ceil(px.min(1) - 1e-9), 0, r - 1).astype(np.int64)   # (F, 2)
    hi = np.clip(np.floor(px.max(1) + 1e-9), 0, r - 1).astype(np.int64)  # (F, 2)
    ext = np.maximum(hi - lo + 1, 0)  # (F, 2)
    ext[(px.max(1) < 0).any(1) | (px.min(1) > r - 1).any(1)] = 0
    counts = ext[:, 0] * ext[:, 1]  # (F,)
    fid = np.repeat(np.arange(len(uvs)), counts)  # (P,)
    local = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)  # (P,)
    w = ext[fid, 0]
    xs = lo[fid, 0] + local % w
    ys = lo[fid, 1] + local // w
    a, b, c = px[fid, 0], px[fid, 1], px[fid, 2]  # (P, 2)
    v0, v1 = b - a, c - a
    p = np.stack([xs, ys], axis=1) - a
    det = v0[:, 0] * v1[:, 1] - v0[:, 1] * v1[:, 0]
    ok = np.abs(det) > 1e-12
    det = np.where(ok, det, 1.0)
    l1 = (p[:, 0] * v1[:, 1] - p[:, 1] * v1[:, 0]) / det
    l2 = (v0[:, 0] * p[:, 1] - v0[:, 1] * p[:, 0]) / det
    l0 = 1.0 - l1 - l2
    eps = 1e-7
    inside = ok & (l0 >= -eps) & (l1 >= -eps) & (l2 >= -eps)
    fid, xs, ys = fid[inside], xs[inside], ys[inside]
    bary = np.clip(np.stack([l0, l1, l2], axis=1)[inside], 0.0, 1.0)
    bary /= bary.sum(1, keepdims=True)
    # deterministic tie-break: sort by (texel, -|det|) and keep the first pair per texel
    flat = ys * r + xs
    order = np.lexsort((-np.abs(det[inside]), flat))
    flat, fid, bary = flat[order], fid[order], bary[order]
    first = np.ones(len(flat), dtype=bool)
    first[1:] = flat[1:] != flat[:-1]
    face_ids = np.full(r * r, -1, dtype=np.int64)
    bary_map = np.zeros((r * r, 3), dtype=np.float64)
    face_ids[flat[first]] = fid[first]
    bary_map[flat[first]] = bary[first]
    return face_ids.reshape(r, r), bary_map.reshape(r, r, 3)


def build_layout(template: BodyTemplate, resolution: int) -> TexelLayout:
    if resolution not in SUPPORTED_RESOLUTIONS:
        raise ValueError(f"layout resolution must be one of {SUPPORTED_RESOLUTIONS}, got {resolution}")
    r = resolution
    verts = template.vertices.astype(np.float64)
    faces, uvs = template.faces, template.uvs.astype(np.float64)
    face_ids, bary = rasterize_uv(uvs, r)
    valid = np.flatnonzero(face_ids.reshape(-1) >= 0)  # (M,)
    fid = face_ids.reshape(-1)[valid]
    bc = bary.reshape(-1, 3)[valid]  # (M, 3)
    corners = faces[fid]  # (M, 3)
    tri = verts[corners]  # (M, 3, 3)
    anchors = np.einsum("mk,mkd->md", bc, tri)

    vn = _vertex_normals(verts, faces)
    normal = np.einsum("mk,mkd->md", bc, vn[corners])
    face_n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normal = np.where((np.linalg.norm(normal, axis=1) > 1e-8)[:, None], normal, face_n)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    # tangent = dP/du from the triangle's UV parametrisation
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    t_uv = uvs[fid]
    d1, d2 = t_uv[:, 1] - t_uv[:, 0], t_uv[:, 2] - t_uv[:, 0]
    det = d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]
    det_safe = np.where(np.abs(det) > 1e-14, det, 1.0)
    tangent = (e1 * d2[:, 1:2] - e2 * d1[:, 1:2]) / det_safe[:, None]
    tangent -= normal * (tangent * normal).sum(1, keepdims=True)
    tn = np.linalg.norm(tangent, axis=1, keepdims=True)
    fallback = np.cross(normal, np.where(np.abs(normal[:, :1]) < 0.9, [[1.0, 0, 0]], [[0, 1.0, 0]]))
    tangent = np.where(tn > 1e-10, tangent / np.maximum(tn, 1e-30), fallback / np.linalg.norm(fallback, axis=1, keepdims=True))
    bitangent = np.cross(normal, tangent)
    frames = np.stack([tangent, bitangent, normal], axis=-1)  # (M, 3, 3) columns

    area3d = 0.5 * np.linalg.norm(face_n, axis=1)
    area_uv = 0.5 * np.abs(det)
    texel_size = np.sqrt(area3d / np.maximum(area_uv, 1e-14)) / r  # metres per texel edge

    skin = np.einsum("mk,mkj->mj", bc, template.skin_weights[corners].astype(np.float64))  # (M, J)
    sk_idx, sk_w = topk_weights(skin, SKIN_TOPK)
    if sk_idx.shape[1] < SKIN_TOPK:  # templates with fewer than 8 joints: pad with zero weights
        pad = SKIN_TOPK - sk_idx.shape[1]
        sk_idx = np.pad(sk_idx, ((0, 0), (0, pad)))
        sk_w = np.pad(sk_w, ((0, 0), (0, pad)))
    parts = template.vertex_parts[corners[np.arange(len(fid)), bc.argmax(1)]]

    def scatter(values: np.ndarray, fill: float | int, dtype) -> np.ndarray:
        out = np.full((r * r,) + values.shape[1:], fill, dtype=dtype)
        out[valid] = values
        return out.reshape((r, r) + values.shape[1:])

    eye = np.broadcast_to(np.eye(3), (r * r, 3, 3)).copy()
    eye[valid] = frames
    return TexelLayout(
        template_name=template.name, resolution=r,
        anchors=torch.from_numpy(scatter(anchors, 0.0, np.float32)),
        frames=torch.from_numpy(eye.reshape(r, r, 3, 3).astype(np.float32)),
        skin_indices=torch.from_numpy(scatter(sk_idx, 0, np.int64)),
        skin_weights=torch.from_numpy(scatter(sk_w, 0.0, np.float32)),
        atlas_mask=torch.from_numpy(face_ids >= 0),
        part_ids=torch.from_numpy(scatter(parts, -1, np.int64)),
        face_ids=torch.from_numpy(face_ids),
        barycentric=torch.from_numpy(bary.astype(np.float32)),
        texel_size=torch.from_numpy(scatter(texel_size, 0.0, np.float32)),
        valid_indices=torch.from_numpy(valid.astype(np.int64)),
        part_names=tuple(template.part_names),
    )


_TENSOR_FIELDS = ("anchors", "frames", "skin_indices", "skin_weights", "atlas_mask", "part_ids", "face_ids",
                  "barycentric", "texel_size", "valid_indices")


def load_layout(template: BodyTemplate, resolution: int, cache_dir_override: str | os.PathLike | None = None,
                use_cache: bool = True) -> TexelLayout:
    """Build or load the cached layout for (template, resolution)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    key = template.source_hash or "nohash"
    path = cache_dir(cache_dir_override) / f"layout-{template.name}-{key}-R{resolution}-v{LAYOUT_FORMAT_VERSION}.safetensors"
    if use_cache and template.source_hash and path.exists():
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
        t = load_file(str(path))
        return TexelLayout(template_name=meta["template_name"], resolution=int(meta["resolution"]),
                           part_names=tuple(json.loads(meta["part_names"])), **t)
    layout = build_layout(template, resolution)
    if use_cache and template.source_hash:
        arrays = {k: getattr(layout, k).numpy() for k in _TENSOR_FIELDS}
        meta = {"template_name": layout.template_name, "resolution": str(resolution),
                "part_names": json.dumps(list(layout.part_names)), "source_hash": key,
                "format_version": str(LAYOUT_FORMAT_VERSION)}
        save_safetensors_atomic(arrays, path, meta)
    return layout
