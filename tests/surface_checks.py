"""Checks shared by the template tests (anny and SMPL-X)."""
from __future__ import annotations

import numpy as np


def max_anchor_distance(template, layout, samples: int = 300, candidates: int = 32, seed: int = 0) -> float:
    """Largest distance from sampled layout anchors to the template mesh, over the `candidates` triangles
    with the nearest centroids (independent of the layout's own face ids). Needs trimesh."""
    from trimesh.triangles import closest_point

    tris = template.vertices.astype(np.float64)[template.faces]  # (F, 3, 3)
    centroids = tris.mean(1)
    anchors = layout.gather("anchors").double().numpy()
    rng = np.random.default_rng(seed)
    sample = anchors[rng.choice(len(anchors), samples, replace=False)]  # (P, 3)
    d2 = ((sample[:, None, :] - centroids[None]) ** 2).sum(-1)  # (P, F)
    near = np.argpartition(d2, candidates, axis=1)[:, :candidates]  # (P, candidates)
    points = np.repeat(sample, candidates, axis=0)
    closest = closest_point(tris[near.reshape(-1)], points)
    return float(np.linalg.norm(closest - points, axis=1).reshape(-1, candidates).min(1).max())
