"""scripts/blender_figure.py at a tiny size against the test session's real backend: the avatar imported,
posed on its armature and rendered by Blender's Cycles must cover the same pixels as the backend's frame
of the same pose through the same camera (the add-on's pose and camera path, end to end)."""
from __future__ import annotations

import importlib.util

import bpy
import numpy as np
import pytest

from .conftest import ADDON_MODULE, ROOT

WIDTH, HEIGHT, SAMPLES = 96, 128, 4
# Measured at 96x128, 4 samples: IoU 0.848, centroids 0.35 px apart, bounding boxes within 2 px, the
# silhouette mirrored left-right 0.42 (at 384x512, 24 samples: IoU 0.966, boxes equal). What keeps it below
# 1: the backend dilates each projected Gaussian by eps2d = 0.3 px^2 (its silhouette is ~1 px fatter all
# round, which weighs at this size), and Blender draws each Gaussian as a 2-sigma ellipsoid of constant
# opacity that the pose moves but does not rotate. Bugs cost far more; measured by patching the add-on's
# render path: quaternions sent conjugated 0.675, camera shift ignored 0.32, focal length 10% off 0.64.
MIN_IOU = 0.78
MAX_CENTROID_PX = 1.5
MAX_BOX_PX = 3


def load_figure_module():
    spec = importlib.util.spec_from_file_location("blender_figure", ROOT / "scripts" / "blender_figure.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def render_settings(scene):
    """Put back what the figure changes in the scene's render and colour settings."""
    r, v = scene.render, scene.view_settings
    saved = (r.engine, r.resolution_x, r.resolution_y, r.resolution_percentage, r.film_transparent, r.filepath,
             v.view_transform, v.look)
    yield
    (r.engine, r.resolution_x, r.resolution_y, r.resolution_percentage, r.film_transparent, r.filepath,
     v.view_transform, v.look) = saved
    for light in list(bpy.data.lights):
        bpy.data.lights.remove(light)


def centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def bounding_box(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()])


def test_blender_render_matches_backend_frame(scene, addon, backend_address, render_settings, tmp_path):
    figure = load_figure_module()
    m = figure.addon_modules(ADDON_MODULE)
    prefs = bpy.context.preferences.addons[ADDON_MODULE].preferences
    saved = (prefs.backend_address, prefs.timeout_s, prefs.output_dir)
    prefs.backend_address, prefs.timeout_s, prefs.output_dir = backend_address, 60.0, str(tmp_path)
    try:
        figure.connect(m, scene)
        avatar, mesh_obj = figure.generate_avatar(m, scene, "a woman in a red shirt and dark jeans", seed=7)
        fig = figure.make_figure(m, scene, avatar, mesh_obj, tmp_path, WIDTH, HEIGHT, SAMPLES)
    finally:
        prefs.backend_address, prefs.timeout_s, prefs.output_dir = saved
        m.session.close_session()

    blender, backend = fig["blender"], fig["backend"]
    assert blender.shape == backend.shape == (HEIGHT, WIDTH, 4)
    a, b = blender[..., 3] >= 128, backend[..., 3] >= 128
    print(f"coverage blender {a.mean():.3f}, backend {b.mean():.3f}; IoU {fig['iou']:.3f}; "
          f"mirrored IoU {figure.silhouette_iou(blender[..., 3], backend[:, ::-1, 3]):.3f}; {fig['timings']}")
    for name, mask, image in (("Blender", a, blender), ("backend", b, backend)):
        assert 0.05 < mask.mean() < 0.5, f"the {name} render shows no avatar (coverage {mask.mean():.3f})"
        assert not mask[0].any() and not mask[-1].any(), f"the {name} render cuts the avatar off"
        assert np.ptp(image[mask][:, :3].astype(int), axis=0).max() > 30, f"the {name} render is one flat colour"
    assert fig["iou"] > MIN_IOU, f"the Blender and backend silhouettes overlap by IoU {fig['iou']:.3f}"
    offset = np.linalg.norm(centroid(a) - centroid(b))
    assert offset < MAX_CENTROID_PX, f"the silhouettes' centres are {offset:.2f} px apart"
    box_a, box_b = bounding_box(a), bounding_box(b)
    assert np.abs(box_a - box_b).max() <= MAX_BOX_PX, f"bounding boxes differ: {box_a} vs {box_b}"
    assert figure.silhouette_iou(blender[..., 3], backend[:, ::-1, 3]) < MIN_IOU - 0.1  # the check discriminates

    sheet = fig["sheet"]
    assert sheet.shape == (HEIGHT, 2 * WIDTH + figure.GAP_PX, 3)
    path = m.bridge.png.write_png(tmp_path / "figure.png", sheet)
    np.testing.assert_array_equal(m.bridge.png.read_png(path), sheet)
