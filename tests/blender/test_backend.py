"""Against a real backend on 127.0.0.1 (GENLCA_BACKEND_PYTHON -m backend.cli serve): generate, import,
bind to a CMU BVH armature, render 3 frames through the backend, export. Every pump of the session (the
timer callback's work) is counted: none may handle more than the session's bounds (replies, task slices)."""
from __future__ import annotations

import math
import time
from pathlib import Path

import bpy
import numpy as np
import pytest

from .conftest import (ADDON_MODULE, addon_module, assert_pumps_bounded, free_port, pump_until, start_backend,
                       stop_backend)
from .test_binding import import_bvh


@pytest.fixture
def live(scene, addon, backend_address, tmp_path):
    prefs = bpy.context.preferences.addons[ADDON_MODULE].preferences
    saved = (prefs.backend_address, prefs.timeout_s, prefs.output_dir)
    prefs.backend_address, prefs.timeout_s, prefs.output_dir = backend_address, 60.0, str(tmp_path)
    session = addon_module("session").get_session()
    yield session, tmp_path
    prefs.backend_address, prefs.timeout_s, prefs.output_dir = saved
    addon_module("session").close_session()


def test_generate_bind_render_export(live, scene, cmu_bvh):
    session, out_dir = live
    jobs, binding = addon_module("jobs"), addon_module("binding")
    pumps: list = []
    errors: list[str] = []
    on_error = lambda code, msg: errors.append(f"{code}: {msg}")  # noqa: E731

    # connect through the operator, as a user would
    assert bpy.ops.genlca.connect() == {"FINISHED"}
    session = addon_module("session").get_session()
    pump_until(session, lambda: scene.genlca.connected or errors, 30, pumps)
    assert not errors and scene.genlca.connected

    # generate -> get_avatar -> staged import
    scene.genlca.prompt, scene.genlca.steps, scene.genlca.seed = "a woman in a green jacket", 2, 7
    imported: list = []
    jobs.generate(session, scene, on_done=lambda arm, mesh: imported.append((arm, mesh)), on_error=on_error)
    pump_until(session, lambda: imported or errors, 300, pumps)
    assert not errors, errors
    avatar, mesh = imported[0]
    assert scene.genlca.avatars[-1].armature == avatar and len(mesh.data.vertices) > 0
    assert len(mesh.vertex_groups) == len(avatar.data.bones)

    # bind to the CMU mocap
    source = import_bvh(cmu_bvh)
    mapping = binding.bind(avatar, source)
    assert avatar.genlca.rig == "cmu" and len(mapping) >= 15

    # posing moves the skinned splats
    mesh.modifiers["GenLCA splats"].show_viewport = False
    depsgraph = bpy.context.evaluated_depsgraph_get()
    rest = np.empty(len(mesh.data.vertices) * 3, np.float32)
    mesh.data.vertices.foreach_get("co", rest)
    scene.frame_set(60)
    bpy.context.view_layer.update()
    posed = np.empty_like(rest)
    mesh.evaluated_get(bpy.context.evaluated_depsgraph_get()).data.vertices.foreach_get("co", posed)
    assert np.abs(posed - rest).max() > 0.02
    mesh.modifiers["GenLCA splats"].show_viewport = True
    assert depsgraph is not None

    # render 3 frames through the backend, seen by a scene camera
    cam = bpy.data.objects.new("cam", bpy.data.cameras.new("cam"))
    scene.collection.objects.link(cam)
    scene.camera = cam
    cam.location = (0.0, -4.0, 1.0)
    cam.rotation_euler = (math.radians(90), 0.0, 0.0)
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 128, 96, 100
    scene.frame_start, scene.frame_end = 30, 32
    frames: list[Path] = []
    jobs.render_frames(session, scene, avatar, str(out_dir), on_done=frames.extend, on_error=on_error)
    pump_until(session, lambda: frames or errors, 300, pumps)
    assert not errors, errors
    assert [p.name[-8:] for p in frames] == ["0030.png", "0031.png", "0032.png"]
    png = addon_module("_bridge").png
    rgba = [png.read_png(p) for p in frames]
    assert rgba[0].shape == (96, 128, 4)
    coverage = [float((f[..., 3] > 0).mean()) for f in rgba]
    print(f"avatar: {len(mesh.data.vertices)} Gaussians; rendered alpha coverage {coverage}")
    assert min(coverage) > 0.01, "the avatar is not in the rendered frames"
    assert np.any(rgba[0] != rgba[2]), "the mocap pose did not reach the renderer"
    print(f"frames in {out_dir}")
    backgrounds = cam.data.background_images
    assert cam.data.show_background_images and backgrounds[0].image.source == "SEQUENCE"

    # export a PLY
    files: list[Path] = []
    jobs.export_file(session, scene, avatar["genlca_avatar_id"], "ply", str(out_dir), on_done=files.append,
                     on_error=on_error)
    pump_until(session, lambda: files or errors, 120, pumps)
    assert not errors, errors
    assert files[0].read_bytes()[:3] == b"ply" and files[0].parent == out_dir

    assert_pumps_bounded(pumps)


def test_backend_killed_mid_session(scene, addon):
    """A real backend process that dies: the next request fails with a clear message within the timeout."""
    port = free_port()
    proc = start_backend(port)
    prefs = bpy.context.preferences.addons[ADDON_MODULE].preferences
    saved = (prefs.backend_address, prefs.timeout_s)
    prefs.backend_address, prefs.timeout_s = f"tcp://127.0.0.1:{port}", 1.5
    try:
        jobs, session_mod = addon_module("jobs"), addon_module("session")
        session = session_mod.get_session()
        pumps: list = []
        errors: list[str] = []
        jobs.hello(session, scene, on_error=lambda code, msg: errors.append(msg))
        pump_until(session, lambda: scene.genlca.connected or errors, 30, pumps)
        assert scene.genlca.connected and not errors
        stop_backend(proc)
        start = time.monotonic()
        scene.genlca.prompt = "a dancer"
        jobs.generate(session, scene, on_error=lambda code, msg: errors.append(f"{code}: {msg}"))
        pump_until(session, lambda: errors, 30, pumps)
        assert time.monotonic() - start >= 1.5  # the timeout, never earlier
        assert errors[0].startswith("timeout: ") and prefs.backend_address in errors[0], errors
        assert scene.genlca.message_is_error and "is it running" in scene.genlca.message
        assert_pumps_bounded(pumps)
    finally:
        if proc.poll() is None:
            stop_backend(proc)
        prefs.backend_address, prefs.timeout_s = saved
        addon_module("session").close_session()


def test_placeholder_generation_is_said_and_unused_inputs_are_greyed(live, scene):
    """The real backend has no model yet: its results say so in meta.generator, and the add-on says so too
    (status text, panel note) and greys out what the generator does not use. When a backend reports a real
    model in hello, the same code enables the controls again."""
    session, _ = live
    jobs = addon_module("jobs")
    errors: list[str] = []
    on_error = lambda code, msg: errors.append(f"{code}: {msg}")  # noqa: E731
    jobs.hello(session, scene, on_error=on_error)
    pump_until(session, lambda: scene.genlca.connected or errors, 30)
    scene.genlca.prompt, scene.genlca.seed = "a man in a blue suit", 3
    imported: list = []
    jobs.generate(session, scene, on_done=lambda arm, mesh: imported.append(arm), on_error=on_error)
    pump_until(session, lambda: imported or errors, 300)
    assert not errors, errors
    status = jobs.generator_status(session)
    assert status.placeholder and "placeholder" in status.name, status
    assert status.unused == ["reference image", "steps", "guidance"] and "text" in status.inputs
    message = scene.genlca.message
    assert message.startswith("imported placeholder avatar") and status.name in message, message

    # a backend with a model: hello names it and lists what it uses -> the controls enable themselves
    other = addon_module("session").Session("tcp://127.0.0.1:9", timeout_s=1.0)
    try:
        assert jobs.generator_status(other).unused == []  # unknown: nothing is greyed out on a guess
        jobs.note_generator(other, {"capabilities": {"generator": "genlca-dit small",
                                                     "supports": ["text", "image", "steps", "guidance"]}})
        status = jobs.generator_status(other)
        assert not status.placeholder and status.unused == [] and status.name == "genlca-dit small"
        jobs.note_generator(other, {"generator": "genlca-dit small", "supports": ["text", "steps"]})
        assert jobs.generator_status(other).unused == ["reference image", "guidance"]
    finally:
        other.close()
