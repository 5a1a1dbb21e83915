"""The splats' outer surface as seen along the mesh's normals (numpy only).

A Gaussian of opacity o and covariance Σ draws alpha >= τ exactly over the projection of its ellipsoid
{x : (x - μ)ᵀ Σ⁻¹ (x - μ) <= k}, k = 2 ln(o / τ), from any view (the 2D Gaussian a renderer splats is the
marginal of the 3D one: same peak, same level sets projected). The union of those ellipsoids at τ = 0.5 is
what a render's alpha >= 0.5 silhouette shows, less what overlapping Gaussians add up to (at the edge of a
body a ray grazes many Gaussians, each below 0.5): the union at a lower level, SILHOUETTE_ALPHA, stands for
it (chosen on held-out avatars: docs/BENCHMARKS.md, "Mesh against splats"). The mesh is pushed out, vertex
by vertex, to the farthest point along its normal that lies in one of those ellipsoids:

    q(t) = (v + t n - μ)ᵀ Σ⁻¹ (v + t n - μ) = a t² - 2 b t + c,   a = nᵀΣ⁻¹n, b = nᵀΣ⁻¹(μ - v), c = (μ - v)ᵀΣ⁻¹(μ - v)
    farthest t with q(t) <= k:  (b + sqrt(b² - a (c - k))) / a   (none when the root is imaginary)

Which (Gaussian, vertex) pairs are tried: the vertices within the Gaussian's reach (REACH_SIGMAS of its
largest axis, at most MAX_REACH) of its *foot* vertex (the template vertex nearest to it in its own body
region, avatar_mesh.nearest_vertices_by_joint), so that a skirt's Gaussians 20 cm off the legs are tried
against the leg vertices under them and never against a hand beside them. The colour at the pushed-out vertex
is the Gaussians' colours weighted by their density there (o · exp(-q/2)): the outermost Gaussians, the ones a
camera sees.
"""
from __future__ import annotations

import numpy as np

SILHOUETTE_ALPHA = 0.05  # per-Gaussian alpha level whose union stands for a render's alpha >= 0.5 silhouette
REACH_SIGMAS = 3.0  # vertices within this many largest-axis sigmas of a Gaussian's foot vertex are tried
MAX_REACH = 0.5  # metres (avatar_mesh.MAX_DISPLACEMENT)
MIN_REACH = 0.01  # metres: at least the template's vertex spacing
_PAIR_CHUNK = 1_000_000


def rotation_matrices(quats_wxyz: np.ndarray) -> np.ndarray:
    """(N, 4) wxyz quaternions, any norm -> (N, 3, 3)."""
    q = np.asarray(quats_wxyz, np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    w, x, y, z = q.T
    return np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                     2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                     2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1).reshape(-1, 3, 3)


def inverse_covariances(rotations: np.ndarray, log_scales: np.ndarray) -> np.ndarray:
    """Σ⁻¹ = R diag(1/s²) Rᵀ, (N, 3, 3)."""
    r = rotation_matrices(rotations)
    inv_s2 = np.exp(-2.0 * np.asarray(log_scales, np.float64))  # (N, 3)
    return np.einsum("nij,nj,nkj->nik", r, inv_s2, r)


def pairs_within(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All (query, point) index pairs with |points[point] - centres[query]| <= radii[query]: a uniform grid
    per power-of-two radius (cells as large as the radius, the 27 cells around each query)."""
    points = np.asarray(points, np.float64)
    radii = np.asarray(radii, np.float64)
    level = np.ceil(np.log2(np.maximum(radii, 1e-6) / MIN_REACH)).astype(int)
    out_q, out_p = [], []
    offsets = np.stack(np.meshgrid(*[np.arange(-1, 2)] * 3, indexing="ij"), -1).reshape(-1, 3)  # (27, 3)
    for lv in np.unique(level):
        cell = MIN_REACH * 2.0 ** lv
        queries = np.flatnonzero(level == lv)
        origin = points.min(0) - 2 * cell
        pc = np.floor((points - origin) / cell).astype(np.int64)
        dims = pc.max(0) + 3
        keys = np.ravel_multi_index(pc.T, dims)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        qc = np.floor((centres[queries] - origin) / cell).astype(np.int64)  # (Q, 3)
        around = qc[:, None, :] + offsets[None]  # (Q, 27, 3)
        valid = ((around >= 0) & (around < dims)).all(-1)
        qk = np.where(valid, np.ravel_multi_index(np.moveaxis(np.clip(around, 0, dims - 1), -1, 0), dims), -1)
        lo = np.searchsorted(sorted_keys, qk, "left")
        hi = np.searchsorted(sorted_keys, qk, "right")
        counts = np.where(valid, hi - lo, 0).ravel()
        q_of = np.repeat(np.repeat(queries, 27), counts)
        starts = np.repeat(lo.ravel(), counts)
        within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        p_of = order[starts + within]
        keep = np.linalg.norm(points[p_of] - centres[q_of], axis=1) <= radii[q_of]
        out_q.append(q_of[keep])
        out_p.append(p_of[keep])
    if not out_q:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_q), np.concatenate(out_p)


class Shell:
    """The (Gaussian, vertex) pairs and their ray terms; `extent` and `colours` read them."""

    def __init__(self, vertices: np.ndarray, normals: np.ndarray, foot: np.ndarray, means: np.ndarray,
                 rotations: np.ndarray, log_scales: np.ndarray, opacity: np.ndarray) -> None:
        self.opacity = np.asarray(opacity, np.float64)
        sigma = np.exp(np.asarray(log_scales, np.float64)).max(1)
        reach = np.clip(REACH_SIGMAS * sigma, MIN_REACH, MAX_REACH)
        g, v = pairs_within(vertices, vertices[foot], reach)
        inv_cov = inverse_covariances(rotations, log_scales)
        a, b, c = (np.empty(len(g)) for _ in range(3))
        for s in range(0, len(g), _PAIR_CHUNK):
            gi, vi = g[s:s + _PAIR_CHUNK], v[s:s + _PAIR_CHUNK]
            m, n = inv_cov[gi], normals[vi]
            d = means[gi] - vertices[vi]
            mn = np.einsum("pij,pj->pi", m, n)
            a[s:s + len(gi)] = np.einsum("pi,pi->p", n, mn)
            b[s:s + len(gi)] = np.einsum("pi,pi->p", d, mn)
            c[s:s + len(gi)] = np.einsum("pi,pij,pj->p", d, m, d)
        self.gaussian, self.vertex, self.a, self.b, self.c = g, v, a, b, c
        self.vertex_count = len(vertices)

    def extent(self, alpha: float | None = None) -> np.ndarray:
        """(V,) the farthest t >= 0 along each vertex's normal inside a Gaussian's alpha >= `alpha` ellipsoid
        (0 where none)."""
        alpha = SILHOUETTE_ALPHA if alpha is None else alpha
        o = self.opacity[self.gaussian]
        k = 2.0 * np.log(np.maximum(o, 1e-12) / alpha)
        disc = self.b ** 2 - self.a * (self.c - k)
        hit = (o > alpha) & (disc >= 0)
        t = (self.b[hit] + np.sqrt(disc[hit])) / self.a[hit]
        out = np.zeros(self.vertex_count)
        np.maximum.at(out, self.vertex[hit], np.maximum(t, 0.0))
        return out

    def colours(self, rgb: np.ndarray, t: np.ndarray, min_weight: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
        """(V, 3) the density-weighted colour of the Gaussians at each vertex moved out by t (V,), and (V,)
        whether any Gaussian there weighs at least min_weight."""
        tv = t[self.vertex]
        q = self.a * tv * tv - 2.0 * self.b * tv + self.c
        w = self.opacity[self.gaussian] * np.exp(-0.5 * np.maximum(q, 0.0))
        total = np.bincount(self.vertex, weights=w, minlength=self.vertex_count)
        out = np.zeros((self.vertex_count, 3))
        for ch in range(3):
            out[:, ch] = np.bincount(self.vertex, weights=w * rgb[self.gaussian, ch], minlength=self.vertex_count)
        known = total >= min_weight
        out[known] /= total[known, None]
        return out, known
