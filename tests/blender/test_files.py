"""Files the add-on writes: atomic writes, names it does not trust, PNG frames, the image sequence."""
from __future__ import annotations

import os
import stat
import sys

import bpy
import numpy as np
import pytest

from .conftest import addon_module


def test_export_names_keep_only_a_basename_with_the_format_extension(addon):
    safe = addon_module("export").safe_filename
    assert safe("../../etc/passwd", "x", "ply") == "passwd.ply"
    assert safe("..\\..\\Windows\\evil.dll", "x", "ply") == "evil.dll.ply"
    assert safe("avatar 1.ply", "x", "ply") == "avatar_1.ply"
    assert safe("avatar.PLY", "x", "ply") == "avatar.ply"
    assert safe("avatar.ply", "x", "safetensors") == "avatar.safetensors"  # the format decides
    assert safe("run.sh", "x", "safetensors") == "run.sh.safetensors"
    assert safe("..", "fallback", "ply") == "fallback.ply"
    assert safe(".bashrc", "fallback", "ply") == "bashrc.ply"
    assert safe("", "", "ply") == "genlca.ply"
    assert len(safe("a" * 1000, "x", "safetensors")) <= 128
    for name in ("../x", "/abs/y.ply", "a/b/c.safetensors", "~/.ssh/authorized_keys", "con:stream", "\x00nul"):
        for fmt in ("ply", "safetensors"):
            out = safe(name, "x", fmt)
            assert "/" not in out and "\\" not in out and not out.startswith(".") and out.endswith("." + fmt), out
    with pytest.raises(ValueError, match="format"):
        safe("a.ply", "x", "exe")


def test_atomic_write_uses_an_exclusive_temp_file_and_follows_no_planted_symlink(addon, tmp_path):
    export = addon_module("export")
    path = export.write_atomic(tmp_path / "a" / "b.ply", np.frombuffer(b"ply\n", np.uint8))
    assert path.read_bytes() == b"ply\n" and [p.name for p in path.parent.iterdir()] == ["b.ply"]
    # symlinks planted at the names the old code used (.b.ply.<pid>.tmp) and at the target itself
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"keep me")
    out = tmp_path / "out"
    out.mkdir()
    (out / f".c.ply.{os.getpid()}.tmp").symlink_to(victim)
    (out / "c.ply").symlink_to(victim)
    written = export.write_atomic(out / "c.ply", b"new")
    assert victim.read_bytes() == b"keep me"  # nothing written through a symlink
    assert not written.is_symlink() and written.read_bytes() == b"new"  # the link itself was replaced
    assert stat.S_IMODE(written.stat().st_mode) == 0o644
    leftovers = sorted(p.name for p in out.iterdir())
    assert leftovers == [f".c.ply.{os.getpid()}.tmp", "c.ply"]  # only the planted link beside the file
    # a write that fails leaves no temporary file behind
    with pytest.raises(TypeError):
        export.write_atomic(out / "d.ply", object())
    assert sorted(p.name for p in out.iterdir()) == leftovers


def test_export_reply_names_are_sanitised(addon, tmp_path):
    """export_avatar's result handler with a hostile suggested name writes inside out_dir, as .ply."""
    export = addon_module("export")

    class FakeSession:  # only the submit hook: the reply handler is what is under test
        def submit(self, request, **kw):
            self.on_result = kw["on_result"]
            return "job"

    class Reply:
        header = {"filename": "../../../escape.sh"}
        arrays = {"file": np.frombuffer(b"ply\n", np.uint8)}

    session, done = FakeSession(), []
    export.export_avatar(session, "abcdef0123", "ply", tmp_path / "out", on_done=done.append)
    session.on_result(Reply())
    assert done == [tmp_path / "out" / "escape.sh.ply"] and done[0].read_bytes() == b"ply\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


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
    png, workflows = addon_module("_bridge").png, addon_module("workflows")
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[:5] = (255, 0, 0)  # red band on top
    rgb[:, -3:] = (0, 0, 255)
    rgb[7, 8] = (12, 200, 77)
    png.write_png(tmp_path / "ref.png", rgb)
    got = workflows.load_reference_image(str(tmp_path / "ref.png"))
    assert got.shape == (20, 30, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, rgb)
    assert not any(i.filepath.endswith("ref.png") for i in bpy.data.images)  # not left in the file
