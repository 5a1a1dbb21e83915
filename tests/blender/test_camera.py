"""bridge.cameras.blender_to_opencv against Blender's own projection and backend.render.camera."""
from __future__ import annotations

import importlib.util
import math
import sys

import bpy
import numpy as np
import pytest
from bpy_extras.object_utils import world_to_camera_view

from .conftest import ROOT, addon_module

CASES = [  # (sensor_fit, width, height, pixel_aspect_x, pixel_aspect_y, shift_x, shift_y, lens)
    ("AUTO", 640, 480, 1, 1, 0.0, 0.0, 50.0),
    ("AUTO", 480, 640, 1, 1, 0.1, -0.05, 35.0),
    ("HORIZONTAL", 320, 200, 1, 1, -0.2, 0.1, 24.0),
    ("VERTICAL", 300, 400, 1, 1, 0.05, 0.2, 85.0),
    ("AUTO", 400, 300, 2, 1, 0.1, 0.1, 50.0),
    ("VERTICAL", 400, 300, 1, 2, -0.1, 0.05, 40.0),
]


@pytest.mark.parametrize("fit,width,height,ax,ay,sx,sy,lens", CASES)
def test_projection_matches_blender(scene, fit, width, height, ax, ay, sx, sy, lens):
    cam_data = bpy.data.cameras.new("cam")
    cam = bpy.data.objects.new("cam", cam_data)
    scene.collection.objects.link(cam)
    scene.camera = cam
    cam.location = (1.0, -5.0, 1.6)
    cam.rotation_euler = (math.radians(80), math.radians(5), math.radians(12))
    cam_data.lens, cam_data.sensor_fit, cam_data.shift_x, cam_data.shift_y = lens, fit, sx, sy
    cam_data.sensor_width, cam_data.sensor_height = 36.0, 24.0
    r = scene.render
    r.resolution_x, r.resolution_y, r.resolution_percentage = width, height, 100
    r.pixel_aspect_x, r.pixel_aspect_y = ax, ay
    bpy.context.view_layer.update()
    w2c, k = addon_module("camera").camera_arrays(scene)
    rng = np.random.default_rng(0)
    points = rng.uniform([-1, -1, 0], [1, 1, 2], (20, 3))
    for p in points:
        ndc = world_to_camera_view(scene, cam, __import__("mathutils").Vector(p))  # x, y in [0, 1], y up
        pc = w2c[:3, :3] @ p + w2c[:3, 3]
        u, v = (k @ (pc / pc[2]))[:2]
        assert pc[2] == pytest.approx(ndc.z, rel=1e-5)
        assert u == pytest.approx(ndc.x * width, abs=1e-3)
        assert v == pytest.approx((1.0 - ndc.y) * height, abs=1e-3)


def test_same_formula_as_backend_camera(addon):
    spec = importlib.util.spec_from_file_location("backend_camera", ROOT / "backend" / "render" / "camera.py")
    if spec is None or not (ROOT / "backend" / "render" / "camera.py").exists():
        pytest.skip("backend/render/camera.py is missing")
    backend_camera = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = backend_camera  # dataclasses look their module up
    try:
        spec.loader.exec_module(backend_camera)  # numpy only: no torch needed
    finally:
        del sys.modules[spec.name]
    cameras = addon_module("_bridge").cameras
    rng = np.random.default_rng(1)
    for fit, width, height, ax, ay, sx, sy, lens in CASES:
        a = rng.normal(size=3)
        c, s = np.cos(a), np.sin(a)
        rot = (np.array([[c[2], -s[2], 0], [s[2], c[2], 0], [0, 0, 1]]) @ np.array([[c[1], 0, s[1]], [0, 1, 0], [-s[1], 0, c[1]]])
               @ np.array([[1, 0, 0], [0, c[0], -s[0]], [0, s[0], c[0]]]))
        m = np.eye(4)
        m[:3, :3], m[:3, 3] = rot, rng.normal(size=3)
        w2c, k = cameras.blender_to_opencv(m, lens, 36.0, 24.0, fit, sx, sy, width, height, ax / ay)
        ref = backend_camera.from_blender(m, lens, 36.0, 24.0, fit, sx, sy, width, height, ax / ay)
        np.testing.assert_allclose(w2c, ref.world_to_camera, atol=1e-9)
        np.testing.assert_allclose(k, ref.intrinsics, atol=1e-9)
