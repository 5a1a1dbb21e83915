"""Quaternion and rotation-matrix maths, written once for numpy arrays and torch tensors alike.

Quaternions are (w, x, y, z) (docs/DESIGN.md, "Conventions"); matrices rotate column vectors. Every
function takes (..., 4) / (..., 3, 3) and broadcasts over the leading axes; it returns what it was given:
numpy in (float64, as the add-on's and the rig maps' maths wants) -> numpy out, a torch tensor in (any
float dtype, any device, differentiable) -> a torch tensor out. The bridge never imports torch: a tensor's
own module supplies stack/where, and torch is in sys.modules whenever a tensor exists.

    R = quat_to_matrix(q)           # (..., 3, 3)
    q = matrix_to_quat(R)           # (..., 4), w >= 0 (Shepperd: the best-conditioned of four formulas)
    q = quat_multiply(a, b)         # the Hamilton product a * b: rotate by b, then by a
    q = axis_angle_to_quat(axis, degrees)
    R = rotation_between(a, b)      # (3, 3) numpy: the smallest rotation taking direction a onto b
"""
from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np


def _is_numpy(x: Any) -> bool:
    return not type(x).__module__.startswith("torch")


def _stack(items: list[Any], axis: int) -> Any:
    if _is_numpy(items[0]):
        return np.stack(items, axis)
    return sys.modules["torch"].stack(items, dim=axis)


def _where(cond: Any, a: Any, b: Any) -> Any:
    return np.where(cond, a, b) if _is_numpy(a) else sys.modules["torch"].where(cond, a, b)


def _unit(q: Any) -> Any:
    """q / |q| along the last axis."""
    if _is_numpy(q):
        return q / np.linalg.norm(q, axis=-1, keepdims=True)
    return q / q.norm(dim=-1, keepdim=True)


def _as_float(x: Any) -> Any:
    return np.asarray(x, dtype=np.float64) if _is_numpy(x) else x


def quat_multiply(a: Any, b: Any) -> Any:
    """The Hamilton product a * b of (..., 4) wxyz quaternions (broadcast): the rotation b, then a."""
    aw, ax, ay, az = (a[..., i] for i in range(4))
    bw, bx, by, bz = (b[..., i] for i in range(4))
    return _stack([aw * bw - ax * bx - ay * by - az * bz,
                   aw * bx + ax * bw + ay * bz - az * by,
                   aw * by - ax * bz + ay * bw + az * bx,
                   aw * bz + ax * by - ay * bx + az * bw], -1)


def quat_to_matrix(q: Any) -> Any:
    """(..., 4) wxyz, any non-zero norm -> (..., 3, 3) rotation matrices."""
    q = _unit(_as_float(q))
    w, x, y, z = (q[..., i] for i in range(4))
    m = _stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1)
    return m.reshape(tuple(q.shape[:-1]) + (3, 3))


def matrix_to_quat(m: Any) -> Any:
    """(..., 3, 3) rotation matrices -> (..., 4) unit wxyz quaternions with w >= 0 (Shepperd's method: per
    matrix, the best-conditioned of the four candidate formulas)."""
    m = _as_float(m)
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    diag = _stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    candidates = [
        _stack([diag[..., 0], m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
        _stack([m[..., 2, 1] - m[..., 1, 2], diag[..., 1], m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], -1),
        _stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], diag[..., 2], m[..., 1, 2] + m[..., 2, 1]], -1),
        _stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1], diag[..., 3]], -1),
    ]
    best = diag.argmax(-1)[..., None]   # (..., 1)
    q = _where(best == 0, candidates[0],
               _where(best == 1, candidates[1], _where(best == 2, candidates[2], candidates[3])))
    q = _unit(q)
    return _where(q[..., :1] < 0, -q, q)


def axis_angle_to_quat(axis: Any, degrees: float) -> np.ndarray:
    """(4,) float64 wxyz: a rotation of `degrees` about `axis` (3,), any non-zero length."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    half = math.radians(degrees) / 2
    return np.array([math.cos(half), *(math.sin(half) * axis)])


def rotation_between(a: Any, b: Any) -> np.ndarray:
    """(3, 3) float64: the smallest rotation taking direction a (3,) onto direction b (3,), any non-zero
    lengths; opposite directions turn 180 degrees about an axis perpendicular to a. Numpy only (the rig
    maps' rest alignment and the binding's retargeting)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
    c = float(a @ b)
    if c < -1.0 + 1e-9:
        axis = np.cross(a, [1.0, 0.0, 0.0] if abs(a[0]) < 0.9 else [0.0, 1.0, 0.0])
        axis = axis / np.maximum(np.linalg.norm(axis, axis=-1, keepdims=True), 1e-12)
        return 2.0 * np.outer(axis, axis) - np.eye(3)
    v = (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])  # a x b
    vx = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    return np.eye(3) + vx + vx @ vx / (1.0 + c)
