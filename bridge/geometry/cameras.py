"""Blender camera -> OpenCV camera (world_to_camera 4x4, intrinsics 3x3), numpy only.

The Blender add-on cannot import `backend`, so the formula of `backend.render.camera.from_blender`
lives here too, in plain numpy; tests hold the two against each other. Conventions:

    Blender camera: matrix_world is camera-to-world, camera axes x right, y up, looking down -z; lens,
                    sensor size (mm), sensor fit, shift and pixel aspect as in
                    `BKE_camera_params_compute_viewplane`.
    OpenCV camera:  x right, y down, z forward; K in pixels, pixel centres at (i + 0.5, j + 0.5).
"""
from __future__ import annotations

import numpy as np

BLENDER_TO_OPENCV_AXES = np.diag([1.0, -1.0, -1.0, 1.0])  # (4, 4), its own inverse
SENSOR_FITS = ("AUTO", "HORIZONTAL", "VERTICAL")


def blender_to_opencv(matrix_world, lens_mm: float, sensor_width: float, sensor_height: float, sensor_fit: str,
                      shift_x: float, shift_y: float, width: int, height: int,
                      pixel_aspect: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A Blender perspective camera -> (world_to_camera (4, 4), intrinsics (3, 3)), float64.

    matrix_world (4, 4) camera-to-world (object scale is removed); pixel_aspect = pixel_aspect_x /
    pixel_aspect_y of the render settings; width, height the render size in pixels (after the
    resolution percentage). Shift is in units of the fitted sensor dimension, as in Blender.
    """
    c2w = np.array(matrix_world, dtype=np.float64)
    if c2w.shape != (4, 4) or not np.isfinite(c2w).all():
        raise ValueError(f"expected a finite matrix_world of shape (4, 4), got {c2w.shape}")
    scale = np.linalg.norm(c2w[:3, :3], axis=0)  # (3,)
    if (scale < 1e-9).any():
        raise ValueError(f"matrix_world has a degenerate axis scale {scale.tolist()}")
    c2w[:3, :3] /= scale
    r = c2w[:3, :3]
    if not np.allclose(r @ r.T, np.eye(3), atol=1e-4) or np.linalg.det(r) < 0:
        raise ValueError("matrix_world rotation is sheared or mirrored; expected a rigid camera transform")
    if lens_mm <= 0 or sensor_width <= 0 or sensor_height <= 0 or pixel_aspect <= 0:
        raise ValueError(f"expected positive lens, sensor and pixel aspect, got lens={lens_mm}, "
                         f"sensor={sensor_width}x{sensor_height}, pixel_aspect={pixel_aspect}")
    if int(width) < 1 or int(height) < 1:
        raise ValueError(f"expected a positive image size, got {width}x{height}")
    if sensor_fit not in SENSOR_FITS:
        raise ValueError(f"sensor_fit must be one of {SENSOR_FITS}, got {sensor_fit!r}")
    fit = sensor_fit
    if fit == "AUTO":  # Blender: the larger of (aspect_x * width, aspect_y * height)
        fit = "HORIZONTAL" if pixel_aspect * width >= height else "VERTICAL"
    sensor = sensor_height if sensor_fit == "VERTICAL" else sensor_width  # AUTO uses the width field
    ycor = 1.0 / pixel_aspect
    viewfac = width if fit == "HORIZONTAL" else ycor * height  # pixels spanned by the sensor
    fx = lens_mm * viewfac / sensor
    fy = fx / ycor
    cx = 0.5 * width - shift_x * viewfac
    cy = 0.5 * height + shift_y * viewfac / ycor  # image y points down, Blender's shift_y up
    k = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    w2c = np.linalg.inv(c2w @ BLENDER_TO_OPENCV_AXES)  # (4, 4)
    return w2c, k
