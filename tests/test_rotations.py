"""bridge/geometry/rotations.py: one quaternion/matrix module for numpy and torch, checked against the maths
itself (orthonormal matrices, the round trip, the Hamilton product as matrix composition) and across the
two array kinds."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bridge.geometry.rotations import (axis_angle_to_quat, matrix_to_quat, quat_multiply, quat_to_matrix,
                                      rotation_between)


def _quats(n: int, seed: int = 0) -> np.ndarray:
    q = np.random.default_rng(seed).normal(size=(n, 4))
    q[:4] = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]   # each branch of Shepperd's choice
    return q


def test_matrices_are_rotations_and_the_round_trip_returns_the_unit_quaternion():
    q = _quats(500)
    m = quat_to_matrix(q)
    assert m.dtype == np.float64 and m.shape == (500, 3, 3)
    np.testing.assert_allclose(m @ np.swapaxes(m, -1, -2), np.broadcast_to(np.eye(3), m.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(m), 1.0, atol=1e-12)
    unit = q / np.linalg.norm(q, axis=-1, keepdims=True)
    unit = np.where(unit[:, :1] < 0, -unit, unit)
    np.testing.assert_allclose(matrix_to_quat(m), unit, atol=1e-12)


def test_the_product_composes_like_the_matrices():
    a, b = _quats(100, 1), _quats(100, 2)
    np.testing.assert_allclose(quat_to_matrix(quat_multiply(a, b)), quat_to_matrix(a) @ quat_to_matrix(b), atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_in_torch_out_with_the_numpy_values_and_gradients(dtype):
    q = _quats(200, 3)
    t = torch.tensor(q, dtype=dtype, requires_grad=True)
    m = quat_to_matrix(t)
    assert isinstance(m, torch.Tensor) and m.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    np.testing.assert_allclose(m.detach().numpy(), quat_to_matrix(q), atol=tol)
    np.testing.assert_allclose(matrix_to_quat(m).detach().numpy(), matrix_to_quat(quat_to_matrix(q)), atol=tol * 10)
    np.testing.assert_allclose(quat_multiply(t, t).detach().numpy(), quat_multiply(q, q), atol=tol * 10)
    m.sum().backward()
    assert t.grad is not None and torch.isfinite(t.grad).all()


def test_axis_angle():
    np.testing.assert_allclose(quat_to_matrix(axis_angle_to_quat([0, 0, 2], 90)) @ [1, 0, 0], [0, 1, 0], atol=1e-12)


def test_rotation_between_takes_a_onto_b_by_the_smallest_turn():
    """Random pairs, parallel and opposite ones: a proper rotation taking a's direction onto b's, turning
    about a x b (so by the angle between them; opposite: 180 degrees). Tolerance 1e-12 (float64 round-off)."""
    rng = np.random.default_rng(0)
    pairs = [(rng.normal(size=3) * 3, rng.normal(size=3)) for _ in range(50)]
    pairs += [(np.array([0.0, 2.0, 0.0]), np.array([0.0, -1.0, 0.0])), (np.array([1.0, 0, 0]), np.array([5.0, 0, 0]))]
    for a, b in pairs:
        r = rotation_between(a, b)
        ua, ub = a / np.linalg.norm(a), b / np.linalg.norm(b)
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
        assert abs(np.linalg.det(r) - 1.0) < 1e-12
        np.testing.assert_allclose(r @ ua, ub, atol=1e-12)
        angle = np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1))
        assert abs(angle - np.arccos(np.clip(ua @ ub, -1, 1))) < 1e-6

