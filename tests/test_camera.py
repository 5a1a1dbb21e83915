"""Cameras: OpenCV convention, look_at/orbit, and the one conversion to and from Blender's camera."""
from __future__ import annotations

import math

import numpy as np
import pytest

from backend.render.camera import Camera, from_blender, look_at, orbit_cameras, to_blender


def blender_matrix(location, rot_deg_xyz) -> np.ndarray:
    """Blender's matrix_world for an object with Euler XYZ rotation (R = Rz Ry Rx) at `location`."""
    ax, ay, az = (math.radians(a) for a in rot_deg_xyz)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    m = np.eye(4)
    m[:3, :3] = rz @ ry @ rx
    m[:3, 3] = location
    return m


BLENDER = dict(matrix_world=blender_matrix((1.0, -6.0, 1.5), (80.0, 0.0, 10.0)), lens_mm=50.0, sensor_width_mm=36.0,
               sensor_height_mm=24.0, sensor_fit="AUTO", shift_x=0.0, shift_y=0.0, width_px=640, height_px=480)


def on_axis_point(matrix_world: np.ndarray, distance: float = 3.0) -> np.ndarray:
    return matrix_world[:3, 3] - distance * matrix_world[:3, 2]  # Blender cameras look down their -z


def test_point_on_view_axis_projects_to_principal_point_and_image_centre():
    cam = from_blender(**BLENDER)
    uv, z = cam.project(on_axis_point(BLENDER["matrix_world"]))
    np.testing.assert_allclose(uv, [320.0, 240.0], atol=1e-9)
    np.testing.assert_allclose(uv, cam.intrinsics[:2, 2], atol=1e-9)
    assert z == pytest.approx(3.0)
    # Blender's camera +y is image up: a point above the axis lands above the centre (smaller v)
    up = on_axis_point(BLENDER["matrix_world"]) + 0.1 * BLENDER["matrix_world"][:3, 1]
    assert cam.project(up)[0][1] < 240.0


@pytest.mark.parametrize("width, height, fit, expect_fx", [
    (640, 480, "AUTO", 50 / 36 * 640),  # landscape AUTO: the sensor width spans the image width
    (480, 640, "AUTO", 50 / 36 * 640),  # portrait AUTO: the sensor *width* spans the larger (height)
    (640, 480, "HORIZONTAL", 50 / 36 * 640),
    (640, 480, "VERTICAL", 50 / 24 * 480),
])
def test_sensor_fit(width, height, fit, expect_fx):
    cam = from_blender(**{**BLENDER, "width_px": width, "height_px": height, "sensor_fit": fit})
    assert cam.intrinsics[0, 0] == pytest.approx(expect_fx)
    assert cam.intrinsics[1, 1] == pytest.approx(expect_fx)


@pytest.mark.parametrize("width, height", [(640, 480), (300, 500)])
def test_shift_moves_the_axis_point_by_shift_times_the_larger_side(width, height):
    base = dict(BLENDER, width_px=width, height_px=height)
    cam = from_blender(**{**base, "shift_x": 0.1, "shift_y": -0.05})
    uv, _ = cam.project(on_axis_point(base["matrix_world"]))
    big = max(width, height)
    # shifting the frame right/up moves the scene left/down in the image
    np.testing.assert_allclose(uv, [width / 2 - 0.1 * big, height / 2 - 0.05 * big], atol=1e-9)


def test_pixel_aspect_scales_fy():
    cam = from_blender(**{**BLENDER, "pixel_aspect": 2.0})
    assert cam.intrinsics[1, 1] == pytest.approx(2.0 * cam.intrinsics[0, 0])


@pytest.mark.parametrize("params", [
    BLENDER,
    {**BLENDER, "shift_x": 0.2, "shift_y": 0.1, "sensor_fit": "VERTICAL", "lens_mm": 35.0},
    {**BLENDER, "width_px": 300, "height_px": 700, "pixel_aspect": 1.5, "shift_y": -0.3},
])
def test_round_trips(params):
    cam = from_blender(**params)
    back = from_blender(**to_blender(cam))
    np.testing.assert_allclose(back.world_to_camera, cam.world_to_camera, atol=1e-12)
    np.testing.assert_allclose(back.intrinsics, cam.intrinsics, atol=1e-9)
    np.testing.assert_allclose(to_blender(cam)["matrix_world"], params["matrix_world"], atol=1e-12)
    assert (back.width, back.height) == (cam.width, cam.height)


def test_object_scale_is_ignored():
    scaled = BLENDER["matrix_world"].copy()
    scaled[:3, :3] *= 2.5
    np.testing.assert_allclose(from_blender(**{**BLENDER, "matrix_world": scaled}).world_to_camera,
                               from_blender(**BLENDER).world_to_camera, atol=1e-12)


def test_look_at_axes_and_orbit():
    w2c = look_at((0.0, -3.0, 1.0), (0.0, 0.0, 1.0))
    cam = Camera(w2c, [[100.0, 0, 50], [0, 100.0, 50], [0, 0, 1]], 100, 100)
    np.testing.assert_allclose(cam.center, [0.0, -3.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(cam.project([0.0, 0.0, 1.0])[0], [50, 50], atol=1e-9)
    assert cam.project([0.0, 0.0, 1.5])[0][1] < 50  # world up is image up
    assert cam.project([0.5, 0.0, 1.0])[0][0] > 50  # world +x is image right seen from the front (-y)
    cams = orbit_cameras(4, radius=2.0, height=1.0, target=(0, 0, 1), fov=40, width=64, height_px=48)
    assert len(cams) == 4
    for c in cams:
        assert np.linalg.norm(c.center - [0, 0, 1]) == pytest.approx(2.0)
        np.testing.assert_allclose(c.project([0.0, 0.0, 1.0])[0], [32, 24], atol=1e-9)


def test_bad_blender_values_raise_named_errors():
    with pytest.raises(ValueError, match="sensor_fit"):
        from_blender(**{**BLENDER, "sensor_fit": "DIAGONAL"})
    with pytest.raises(ValueError, match="lens"):
        from_blender(**{**BLENDER, "lens_mm": 0.0})
    with pytest.raises(ValueError, match="matrix_world"):
        from_blender(**{**BLENDER, "matrix_world": np.eye(3)})
    with pytest.raises(ValueError, match="parallel"):
        look_at((0, 0, 0), (0, 0, 1))
