"""Pinhole cameras in the one internal convention, and the one conversion to and from Blender's camera.

Internal convention (OpenCV, as gsplat expects):
    camera axes   x right, y down, z forward (the camera looks down +z)
    world_to_camera  (4, 4) rigid transform, world points (Z-up, metres) -> camera coordinates
    intrinsics K  (3, 3) in pixels; pixel (i, j) covers [i, i+1) x [j, j+1), so its centre is (i+0.5, j+0.5)
                  and a camera point (x, y, z) lands at u = fx * x / z + cx, v = fy * y / z + cy

Blender's camera object: its matrix_world is camera-to-world with camera axes x right, y up, looking
down -z; the lens (mm), sensor size (mm), sensor fit, shift and pixel aspect follow
`BKE_camera_params_compute_viewplane`. `from_blender` and `to_blender` are the only two places that know
that convention. All math here is numpy so the Blender add-on can reuse the same formulas.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np

# camera axes of Blender (x right, y up, -z forward) -> OpenCV (x right, y down, z forward)
from bridge.geometry.cameras import BLENDER_TO_OPENCV_AXES, SENSOR_FITS, blender_to_opencv  # noqa: F401 (re-exported)


def _as_matrix(value: Any, shape: tuple[int, int], name: str) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; no torch import here
        value = value.detach().cpu().numpy()
    m = np.asarray(value, dtype=np.float64)
    if m.shape != shape:
        raise ValueError(f"expected {name} of shape {shape}, got {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError(f"{name} has non-finite entries: {m.tolist()}")
    return m


def _check_rigid(m: np.ndarray, name: str, atol: float = 1e-4) -> None:
    r = m[:3, :3]
    if not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0], atol=1e-6):
        raise ValueError(f"{name} must have last row (0, 0, 0, 1), got {m[3].tolist()}")
    if not np.allclose(r @ r.T, np.eye(3), atol=atol) or np.linalg.det(r) < 0:
        raise ValueError(f"{name} rotation is not orthonormal and right-handed (det {np.linalg.det(r):.4g})")


@dataclasses.dataclass
class Camera:
    """One pinhole camera (OpenCV axes). Arrays are float64 numpy; torch tensors are accepted."""

    world_to_camera: np.ndarray  # (4, 4)
    intrinsics: np.ndarray  # (3, 3) K in pixels
    width: int
    height: int
    near: float = 0.01
    far: float = 1e10

    def __post_init__(self) -> None:
        self.world_to_camera = _as_matrix(self.world_to_camera, (4, 4), "world_to_camera")
        self.intrinsics = _as_matrix(self.intrinsics, (3, 3), "intrinsics")
        _check_rigid(self.world_to_camera, "world_to_camera")
        k = self.intrinsics
        if k[0, 0] <= 0 or k[1, 1] <= 0:
            raise ValueError(f"intrinsics focal lengths must be positive, got fx={k[0, 0]}, fy={k[1, 1]}")
        if k[0, 1] != 0 or k[1, 0] != 0 or not np.allclose(k[2], [0.0, 0.0, 1.0]):
            raise ValueError(f"intrinsics must be [[fx,0,cx],[0,fy,cy],[0,0,1]], got {k.tolist()}")
        if int(self.width) != self.width or int(self.height) != self.height or self.width < 1 or self.height < 1:
            raise ValueError(f"image size must be positive integers, got {self.width}x{self.height}")
        self.width, self.height = int(self.width), int(self.height)
        if not 0 < self.near < self.far:
            raise ValueError(f"expected 0 < near < far, got near={self.near}, far={self.far}")

    @property
    def camera_to_world(self) -> np.ndarray:  # (4, 4)
        return np.linalg.inv(self.world_to_camera)

    @property
    def center(self) -> np.ndarray:  # (3,) camera position in world
        r, t = self.world_to_camera[:3, :3], self.world_to_camera[:3, 3]
        return -r.T @ t

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points (..., 3) -> pixel coordinates (..., 2) and camera depth z (...)."""
        p = np.asarray(points, dtype=np.float64)
        pc = p @ self.world_to_camera[:3, :3].T + self.world_to_camera[:3, 3]  # (..., 3)
        z = pc[..., 2]  # (...)
        uv = pc[..., :2] / z[..., None] * np.diag(self.intrinsics)[:2] + self.intrinsics[:2, 2]  # (..., 2)
        return uv, z


def stack_cameras(cameras: "Camera | Sequence[Camera]") -> tuple[np.ndarray, np.ndarray, int, int]:
    """Batch cameras of one image size: viewmats (B, 4, 4), Ks (B, 3, 3), width, height."""
    cams = [cameras] if isinstance(cameras, Camera) else list(cameras)
    if not cams:
        raise ValueError("expected at least one camera")
    for c in cams:
        if not isinstance(c, Camera):
            raise TypeError(f"expected Camera, got {type(c).__name__}")
    sizes = {(c.width, c.height) for c in cams}
    if len(sizes) != 1:
        raise ValueError(f"all cameras of one render must share the image size, got {sorted(sizes)}")
    w, h = sizes.pop()
    viewmats = np.stack([c.world_to_camera for c in cams])  # (B, 4, 4)
    ks = np.stack([c.intrinsics for c in cams])  # (B, 3, 3)
    return viewmats, ks, w, h


def intrinsics_from_fov(fov_deg: float, width: int, height: int) -> np.ndarray:
    """K (3, 3) for a horizontal field of view in degrees, square pixels, centred principal point."""
    if not 0 < fov_deg < 180:
        raise ValueError(f"expected 0 < fov < 180 degrees, got {fov_deg}")
    f = 0.5 * width / math.tan(math.radians(fov_deg) / 2)
    return np.array([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])


def look_at(eye: Sequence[float], target: Sequence[float], up: Sequence[float] = (0.0, 0.0, 1.0)) -> np.ndarray:
    """world_to_camera (4, 4) of an OpenCV camera at `eye` looking at `target`, with `up` up in the image."""
    eye_, target_, up_ = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    forward = target_ - eye_  # (3,) camera +z
    if np.linalg.norm(forward) < 1e-12:
        raise ValueError(f"look_at needs eye != target, got eye={eye_.tolist()}")
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up_)  # (3,) camera +x
    if np.linalg.norm(right) < 1e-9:
        raise ValueError(f"look_at up {up_.tolist()} is parallel to the view direction {forward.tolist()}")
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)  # (3,) camera +y
    r = np.stack([right, down, forward])  # (3, 3) rows are camera axes in world
    m = np.eye(4)
    m[:3, :3] = r
    m[:3, 3] = -r @ eye_
    return m


def orbit_cameras(n: int, radius: float, height: float = 1.0, target: Sequence[float] = (0.0, 0.0, 1.0),
                  fov: float = 40.0, width: int = 512, height_px: int = 512, start_deg: float = -90.0,
                  near: float = 0.01, far: float = 1e10) -> list[Camera]:
    """n cameras on a horizontal circle of `radius` at z=`height` around `target` (a turntable).

    The first camera sits at azimuth `start_deg` (-90: on the -y axis, facing +y, Blender's front view).
    """
    if n < 1 or radius <= 0:
        raise ValueError(f"expected n >= 1 and radius > 0, got n={n}, radius={radius}")
    k = intrinsics_from_fov(fov, width, height_px)
    cams = []
    for i in range(n):
        a = math.radians(start_deg + 360.0 * i / n)
        eye = (target[0] + radius * math.cos(a), target[1] + radius * math.sin(a), height)
        cams.append(Camera(look_at(eye, target), k, width, height_px, near, far))
    return cams


# ------------------------------------------------------------------------------- Blender
def from_blender(matrix_world: Any, lens_mm: float, sensor_width_mm: float, sensor_height_mm: float,
                 sensor_fit: str, shift_x: float, shift_y: float, width_px: int, height_px: int,
                 pixel_aspect: float = 1.0, clip_start: float = 0.01, clip_end: float = 1e10) -> Camera:
    """Blender perspective camera -> Camera.

    matrix_world: (4, 4) camera-to-world, Blender camera axes (x right, y up, looking down -z); a uniform
    or non-uniform object scale is removed. pixel_aspect = pixel_aspect_x / pixel_aspect_y of the render
    settings. Shift is in units of the fitted sensor dimension, as in Blender: with square pixels and
    AUTO fit a shift of 1 moves the image by max(width, height) pixels.
    """
    # One formula for both sides: the add-on cannot import backend, so it lives in bridge (numpy only).
    w2c, k = blender_to_opencv(_as_matrix(matrix_world, (4, 4), "matrix_world"), lens_mm, sensor_width_mm,
                               sensor_height_mm, sensor_fit, shift_x, shift_y, width_px, height_px, pixel_aspect)
    return Camera(w2c, k, width_px, height_px, clip_start, clip_end)


def to_blender(camera: Camera, sensor_width_mm: float = 36.0) -> dict[str, Any]:
    """Camera -> the keyword arguments of `from_blender` (HORIZONTAL fit on a sensor of the given width)."""
    k = camera.intrinsics
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    w, h = camera.width, camera.height
    pixel_aspect = fy / fx
    return {
        "matrix_world": camera.camera_to_world @ BLENDER_TO_OPENCV_AXES,  # (4, 4)
        "lens_mm": float(fx * sensor_width_mm / w),
        "sensor_width_mm": float(sensor_width_mm),
        "sensor_height_mm": float(sensor_width_mm * h / (w * pixel_aspect)),
        "sensor_fit": "HORIZONTAL",
        "shift_x": float((0.5 * w - cx) / w),
        "shift_y": float((cy - 0.5 * h) / (w * pixel_aspect)),
        "width_px": w,
        "height_px": h,
        "pixel_aspect": float(pixel_aspect),
        "clip_start": float(camera.near),
        "clip_end": float(camera.far),
    }
