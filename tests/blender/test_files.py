"""Files the add-on writes: atomic writes, names it does not trust, PNG frames, the image sequence."""
from __future__ import annotations

import sys

import bpy
import numpy as np

from .conftest import addon_module


def test_export_names_and_atomic_write(addon, tmp_path):
    export = addon_module("export")
    assert export.safe_filename("../../etc/passwd", "x.ply") == "passwd"
    assert export.safe_filename("avatar 1.ply", "x.ply") == "avatar_1.ply"
    assert export.safe_filename("..", "fallback.ply") == "fallback.ply"
    path = export.write_atomic(tmp_path / "a" / "b.ply", np.frombuffer(b"ply\n", np.uint8))
    assert path.read_bytes() == b"ply\n" and [p.name for p in path.parent.iterdir()] == ["b.ply"]


def test_frames_become_the_camera_background(scene, tmp_path):
    render, png = addon_module("render"), addon_module("_bridge").png
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (24, 32, 4), dtype=np.uint8) for _ in range(3)]
    paths = [render.write_frame(render.frame_path(tmp_path, "genlca_test_", 10 + i), f) for i, f in enumerate(frames)]
    for path, frame in zip(paths, frames):
        np.testing.assert_array_equal(png.read_png(path), frame)
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in paths]  # no temporary files left
    cam = bpy.data.objects.new("cam", bpy.data.cameras.new("cam"))
    scene.collection.objects.link(cam)
    image = render.show_as_background(scene, cam, paths[0], 10, 3)
    slot = cam.data.background_images[0]
    assert image.source == "SEQUENCE" and slot.image == image and cam.data.show_background_images
    assert (slot.image_user.frame_start, slot.image_user.frame_duration, slot.image_user.frame_offset) == (10, 3, 9)
    scene.frame_set(11)
    assert slot.image_user.frame_current == 11  # file number = scene frame


def test_no_torch_in_blender(addon):
    assert "torch" not in sys.modules


def test_reference_image_reads_top_row_first(addon, tmp_path):
    png, jobs = addon_module("_bridge").png, addon_module("jobs")
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[:5] = (255, 0, 0)  # red band on top
    rgb[:, -3:] = (0, 0, 255)
    rgb[7, 8] = (12, 200, 77)
    png.write_png(tmp_path / "ref.png", rgb)
    got = jobs.load_reference_image(str(tmp_path / "ref.png"))
    assert got.shape == (20, 30, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, rgb)
    assert not any(i.filepath.endswith("ref.png") for i in bpy.data.images)  # not left in the file
