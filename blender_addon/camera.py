"""Blender camera -> the wire's OpenCV camera (world_to_camera 4x4, intrinsics 3x3 in pixels).

The formula is bridge.geometry.cameras.blender_to_opencv, the project's only implementation of Blender's camera
model (backend.render.camera.from_blender calls it too); this module only reads the Blender data it needs.
tests/blender/test_camera.py holds it against Blender's own projection.
"""
from __future__ import annotations

import bpy
import numpy as np

from ._bridge import cameras


def render_size(scene: bpy.types.Scene) -> tuple[int, int]:
    r = scene.render
    return (max(1, int(r.resolution_x * r.resolution_percentage / 100)),
            max(1, int(r.resolution_y * r.resolution_percentage / 100)))


def camera_arrays(scene: bpy.types.Scene, camera: bpy.types.Object | None = None,
                  matrix_world: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(world_to_camera (4, 4), intrinsics (3, 3)) of `camera` (default: the scene camera) at its current
    transform (or `matrix_world`), for the scene's render size."""
    camera = camera or scene.camera
    if camera is None or camera.type != "CAMERA":
        raise ValueError("the scene has no active camera; add one (Add > Camera) and make it active")
    data = camera.data
    if data.type != "PERSP":
        raise ValueError(f"camera {camera.name!r} is {data.type}; the GenLCA renderer needs a perspective camera")
    width, height = render_size(scene)
    r = scene.render
    m = np.array(camera.matrix_world if matrix_world is None else matrix_world, dtype=np.float64)
    return cameras.blender_to_opencv(m, data.lens, data.sensor_width, data.sensor_height, data.sensor_fit,
                                     data.shift_x, data.shift_y, width, height,
                                     r.pixel_aspect_x / r.pixel_aspect_y)
