"""The add-on's camera (`camera.camera_arrays`, i.e. bridge.geometry.cameras.blender_to_opencv) against Blender's own
projection, two ways: `bpy_extras.object_utils.world_to_camera_view` (points through the camera frame, which
Blender builds from lens, sensor fit, shift and pixel aspect) and the projection matrix Blender itself renders
with (`Object.calc_matrix_camera`). The expected numbers come from Blender, never from our formula."""
from __future__ import annotations

import math

import bpy
import mathutils
import numpy as np
import pytest
from bpy_extras.object_utils import world_to_camera_view

from .conftest import addon_module

CASES = [  # (sensor_fit, width, height, percentage, pixel aspect x, y, shift_x, shift_y, lens, sensor w, h)
    ("AUTO", 640, 480, 100, 1, 1, 0.0, 0.0, 50.0, 36.0, 24.0),
    ("AUTO", 480, 640, 100, 1, 1, 0.1, -0.05, 35.0, 36.0, 24.0),
    ("HORIZONTAL", 320, 200, 100, 1, 1, -0.2, 0.1, 24.0, 36.0, 24.0),
    ("VERTICAL", 300, 400, 100, 1, 1, 0.05, 0.2, 85.0, 36.0, 24.0),
    ("AUTO", 400, 300, 100, 2, 1, 0.1, 0.1, 50.0, 36.0, 24.0),
    ("VERTICAL", 400, 300, 100, 1, 2, -0.1, 0.05, 40.0, 36.0, 24.0),
    ("HORIZONTAL", 1920, 1080, 50, 1, 1, 0.3, -0.25, 18.0, 23.5, 15.6),  # percentage, APS-C sensor
    ("AUTO", 300, 300, 100, 1, 1.5, -0.15, 0.3, 70.0, 30.0, 40.0),  # square image, non-square pixels
    ("VERTICAL", 1280, 720, 75, 1.2, 1, 0.0, -0.4, 28.0, 36.0, 20.0),
]
IDS = [f"{c[0].lower()}-{c[1]}x{c[2]}@{c[3]}-pa{c[4]}:{c[5]}-shift{c[6]},{c[7]}-{c[8]}mm" for c in CASES]


def setup_camera(scene, fit, width, height, percentage, ax, ay, sx, sy, lens, sensor_w, sensor_h):
    cam_data = bpy.data.cameras.new("cam")
    cam = bpy.data.objects.new("cam", cam_data)
    scene.collection.objects.link(cam)
    scene.camera = cam
    cam.location = (1.0, -5.0, 1.6)
    cam.rotation_euler = (math.radians(80), math.radians(5), math.radians(12))
    cam_data.lens, cam_data.sensor_fit, cam_data.shift_x, cam_data.shift_y = lens, fit, sx, sy
    cam_data.sensor_width, cam_data.sensor_height = sensor_w, sensor_h
    r = scene.render
    r.resolution_x, r.resolution_y, r.resolution_percentage = width, height, percentage
    r.pixel_aspect_x, r.pixel_aspect_y = ax, ay
    bpy.context.view_layer.update()
    return cam


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_projection_matches_world_to_camera_view(scene, case):
    cam = setup_camera(scene, *case)
    width, height = addon_module("camera").render_size(scene)
    w2c, k = addon_module("camera").camera_arrays(scene)
    rng = np.random.default_rng(0)
    points = rng.uniform([-1, -1, 0], [1, 1, 2], (20, 3))
    for p in points:
        ndc = world_to_camera_view(scene, cam, mathutils.Vector(p))  # x, y in [0, 1] over the frame, y up
        pc = w2c[:3, :3] @ p + w2c[:3, 3]
        u, v = (k @ (pc / pc[2]))[:2]
        assert pc[2] == pytest.approx(ndc.z, rel=1e-5)
        # Blender works in float32 (mathutils): 1e-3 px is ~1e-6 of the image, a few float32 ulps
        assert u == pytest.approx(ndc.x * width, abs=1e-3)
        assert v == pytest.approx((1.0 - ndc.y) * height, abs=1e-3)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_intrinsics_match_blenders_projection_matrix(scene, case):
    """Blender's OpenGL-style projection P maps camera space (x right, y up, -z forward) to NDC in [-1, 1]:
    x_ndc = P00 x / -z - P02, y_ndc = P11 y / -z - P12. In pixels (y down) that is fx = W P00 / 2,
    cx = W (1 - P02) / 2, fy = H P11 / 2, cy = H (1 + P12) / 2."""
    cam = setup_camera(scene, *case)
    fit, _, _, _, ax, ay = case[:6]
    width, height = addon_module("camera").render_size(scene)
    p = np.array(cam.calc_matrix_camera(bpy.context.evaluated_depsgraph_get(), x=width, y=height,
                                        scale_x=ax, scale_y=ay))
    expect = np.array([[width * p[0, 0] / 2, 0.0, width * (1 - p[0, 2]) / 2],
                       [0.0, height * p[1, 1] / 2, height * (1 + p[1, 2]) / 2],
                       [0.0, 0.0, 1.0]])
    _, k = addon_module("camera").camera_arrays(scene)
    np.testing.assert_allclose(k, expect, rtol=1e-5, atol=1e-3)  # P is float32
    if ax != ay:  # non-square pixels really change the intrinsics (fx != fy)
        assert abs(k[0, 0] / k[1, 1] - ay / ax) < 1e-5


def test_camera_arrays_refuse_what_the_renderer_cannot_do(scene):
    cam = setup_camera(scene, *CASES[0])
    cam.data.type = "ORTHO"
    with pytest.raises(ValueError, match="perspective"):
        addon_module("camera").camera_arrays(scene)
