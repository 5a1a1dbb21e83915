"""A BVH's frame rate: Blender's BVH importer keeps one key per clip frame and drops the clip's rate
unless it rescales the keys or the scene. `genlca.import_bvh` reads the file's "Frame Time:" and keeps
the rate on the action; binding (the operator) sets the scene's rate from it, so the clip plays at its
own speed. BVHs are written here (the Hips/Chest/Collar naming of test_bone_maps) with known frame times."""
from __future__ import annotations

import bpy
import pytest

from .conftest import addon_module
from .test_binding import import_anny, import_bvh
from .test_bone_maps import MOTION, write_bvh


def bvh_with_frame_time(path, frame_time_line: str):
    write_bvh(path)
    text = path.read_text()
    assert "Frame Time: 0.0333333\n" in text
    path.write_text(text.replace("Frame Time: 0.0333333\n", frame_time_line + "\n"))
    return path


def bind_from_operator(source, **options) -> None:
    bpy.context.view_layer.objects.active = source
    assert bpy.ops.genlca.bind_armature(**options) == {"FINISHED"}


@pytest.mark.parametrize("line, seconds", [("Frame Time: 0.00833333", 0.00833333), ("Frame Time:\t0.01", 0.01),
                                           ("frame time:  0.0333667", 0.0333667)])
def test_frame_time_is_read_from_the_file(scene, tmp_path, line, seconds):
    path = bvh_with_frame_time(tmp_path / "clip.bvh", line)
    assert addon_module("binding").read_bvh_frame_time(str(path)) == seconds


@pytest.mark.parametrize("line, message", [("", "no 'Frame Time:' line"), ("Frame Time: 0", "positive number"),
                                           ("Frame Time: -0.01", "positive number"),
                                           ("Frame Time: fast", "not a number")])
def test_a_bad_frame_time_is_refused_with_the_file(scene, tmp_path, line, message):
    path = bvh_with_frame_time(tmp_path / "bad.bvh", line)
    with pytest.raises(ValueError, match=message) as err:
        addon_module("binding").read_bvh_frame_time(str(path))
    assert "bad.bvh" in str(err.value)
    # the import operator refuses it before Blender's importer runs: no armature is made
    before = len(bpy.data.objects)
    with pytest.raises(RuntimeError, match=message):
        bpy.ops.genlca.import_bvh(filepath=str(path), global_scale=0.01)
    assert len(bpy.data.objects) == before


def test_imported_clip_plays_at_its_own_rate_after_binding(scene, tmp_path):
    binding = addon_module("binding")
    path = bvh_with_frame_time(tmp_path / "walk_120.bvh", "Frame Time: 0.00833333")
    scene.render.fps, scene.render.fps_base = 24, 1.0
    assert bpy.ops.genlca.import_bvh(filepath=str(path), global_scale=0.01) == {"FINISHED"}
    source = bpy.context.view_layer.objects.active
    assert source.type == "ARMATURE"
    assert binding.clip_rate(source) == pytest.approx(1 / 0.00833333, rel=1e-12)
    assert binding.action_range(source) == (1, len(MOTION))  # one key per clip frame: not rescaled
    assert (scene.render.fps, scene.render.fps_base) == (24, 1.0)  # the import leaves the scene alone
    import_anny(scene)
    bind_from_operator(source)
    fps = scene.render.fps / scene.render.fps_base
    assert scene.render.fps == 120 and fps == pytest.approx(1 / 0.00833333, rel=1e-6)  # Blender's float fps_base
    # the clip lasts as long in the scene as in the file
    frames = len(MOTION)
    assert (scene.frame_end - scene.frame_start + 1) / fps == pytest.approx(frames * 0.00833333, rel=1e-6)


def test_rate_from_a_named_file_for_blenders_own_import(scene, tmp_path):
    binding = addon_module("binding")
    path = bvh_with_frame_time(tmp_path / "walk_30.bvh", "Frame Time: 0.0333667")  # 29.97 fps (NTSC)
    source = import_bvh(path, scale=0.01)  # Blender's importer: no rate kept
    assert binding.clip_rate(source) is None
    import_anny(scene)
    scene.render.fps, scene.render.fps_base = 24, 1.0
    bind_from_operator(source, use_clip_rate=False, clip_path=str(path))
    assert (scene.render.fps, scene.render.fps_base) == (24, 1.0)  # kept on the action, not applied
    assert binding.clip_rate(source) == pytest.approx(1 / 0.0333667, rel=1e-12)
    bind_from_operator(source)
    assert scene.render.fps == 30
    assert scene.render.fps / scene.render.fps_base == pytest.approx(1 / 0.0333667, rel=1e-6)
    assert binding.scene_rate(30 / 1.001) == (30, pytest.approx(1.001, rel=1e-12))
    # a missing file is refused by name and changes nothing
    with pytest.raises(RuntimeError, match="missing.bvh"):
        bind_from_operator(source, clip_path=str(tmp_path / "missing.bvh"))
