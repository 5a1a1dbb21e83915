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


def assert_z_up_metres_facing_minus_y(template, left_wrist: str) -> None:
    """The template convention (docs/ARCHITECTURE.md): metres, Z-up, feet on z = 0, facing -Y, the
    character's left towards +X; skin weights rows sum to 1."""
    lo, hi = template.vertices.min(0), template.vertices.max(0)
    assert abs(lo[2]) < 1e-6                     # feet on z = 0
    assert 1.5 < hi[2] < 1.9                     # a human in metres, Z-up
    nose = template.vertices[template.vertices[:, 2] > 1.45]
    assert nose[:, 1].min() < nose[:, 1].mean() - 0.05  # the face sticks out towards -Y
    assert template.joint_heads[template.joint_index(left_wrist)][0] > 0.3  # character's left is +X
    np.testing.assert_allclose(template.skin_weights.sum(1), 1.0, atol=1e-5)


def assert_rest_frames_are_blender_bones(template) -> np.ndarray:
    """Rest frames are rotations whose +Y axis runs from each bone's head to its tail (Blender's bone axes);
    returns the (J, 3, 3) float64 rotations for further checks."""
    rot = template.rest_matrices[:, :3, :3].astype(np.float64)
    np.testing.assert_allclose(rot.transpose(0, 2, 1) @ rot, np.broadcast_to(np.eye(3), rot.shape), atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-5)
    direction = template.joint_tails - template.joint_heads
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    np.testing.assert_allclose(rot[:, :, 1], direction, atol=1e-5)  # +Y from head to tail
    return rot
