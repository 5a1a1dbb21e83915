"""Against a real backend on 127.0.0.1 (GENLCA_BACKEND_PYTHON -m backend.service.cli serve): generate, import,
bind to a CMU BVH armature, render 3 frames through the backend, export. Every pump of the session (the
timer callback's work) is counted: none may handle more than the session's bounds (replies, task slices)."""
from __future__ import annotations

import json
import math
import subprocess
import time
from pathlib import Path

import bpy
import numpy as np
import pytest

from .conftest import (ADDON_MODULE, ROOT, TINY_MODEL_NAME, addon_module, assert_pumps_bounded, free_port,
                       pump_until, start_backend, stop_backend)
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
    workflows, binding = addon_module("workflows"), addon_module("binding")
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
    workflows.generate(session, scene, on_done=lambda arm, mesh: imported.append((arm, mesh)), on_error=on_error)
    pump_until(session, lambda: imported or errors, 300, pumps)
    assert not errors, errors
    avatar, mesh = imported[0]
    assert scene.genlca.avatars[-1].armature == avatar and len(mesh.data.vertices) > 0
    assert mesh.parent == avatar and mesh.modifiers[0].type == "ARMATURE"  # the standard rig

    # bind to the CMU mocap
    source = import_bvh(cmu_bvh)
    mapping = binding.bind(avatar, source, bake=(1, 80))  # the frames used below, baked into an action
    assert avatar.genlca.rig == "cmu" and len(mapping) >= 15

    # posing moves the skinned splats
    mesh.modifiers["GenLCA splats"].show_viewport = False
    depsgraph = bpy.context.evaluated_depsgraph_get()
    rest = addon_module("scene_import").rest_positions(mesh.data).ravel()
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
    workflows.render_frames(session, scene, avatar, str(out_dir), on_done=frames.extend, on_error=on_error)
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
    workflows.export_file(session, scene, avatar["genlca_avatar_id"], "ply", str(out_dir), on_done=files.append,
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
        workflows, session_mod = addon_module("workflows"), addon_module("session")
        session = session_mod.get_session()
        pumps: list = []
        errors: list[str] = []
        workflows.hello(session, scene, on_error=lambda code, msg: errors.append(msg))
        pump_until(session, lambda: scene.genlca.connected or errors, 30, pumps)
        assert scene.genlca.connected and not errors
        stop_backend(proc)
        start = time.monotonic()
        scene.genlca.prompt = "a dancer"
        workflows.generate(session, scene, on_error=lambda code, msg: errors.append(f"{code}: {msg}"))
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


class PanelRecorder:
    """Stands in for a panel's `layout`: records every label, prop and operator with whether it is enabled
    (a row's `enabled = False` greys out everything drawn into it), so a test can read what draw() shows."""

    def __init__(self, items: list | None = None, enabled: bool = True):
        self.items = [] if items is None else items
        self.enabled, self._parent_enabled = True, enabled

    def _on(self) -> bool:
        return self._parent_enabled and self.enabled

    def _sub(self, *args, **kwargs) -> "PanelRecorder":
        return PanelRecorder(self.items, self._on())

    row = column = box = split = _sub

    def label(self, text: str = "", **kwargs) -> None:
        self.items.append(("label", text, self._on()))

    def prop(self, data, name: str, **kwargs) -> None:
        self.items.append(("prop", name, self._on()))

    def template_ID(self, data, name: str, **kwargs) -> None:
        self.items.append(("prop", name, self._on()))

    def operator(self, idname: str, **kwargs):
        self.items.append(("operator", kwargs.get("text", idname), self._on()))
        return type("OperatorProps", (), {})()

    def enabled_of(self, kind: str, name: str) -> bool:
        return next(on for k, n, on in self.items if k == kind and n == name)


def draw_panel(panel_name: str) -> PanelRecorder:
    panel = getattr(addon_module("panels"), panel_name)
    recorder = PanelRecorder()
    panel.draw(type("Panel", (), {"layout": recorder})(), bpy.context)
    return recorder


def test_panel_shows_the_model_and_greys_what_it_does_not_support(live, scene):
    """hello names the tiny random model and lists what it supports: the Generate panel shows the model's
    name, every control is enabled; a generator that lists less greys out the rest."""
    session, _ = live
    workflows = addon_module("workflows")
    errors: list[str] = []
    said: list[dict] = []
    workflows.hello(session, scene, on_done=said.append, on_error=lambda code, msg: errors.append(f"{code}: {msg}"))
    pump_until(session, lambda: said or errors, 60)
    assert not errors and scene.genlca.connected, errors
    status = workflows.generator_status(session)
    assert status.name == f"genlca-dit {TINY_MODEL_NAME}", status
    assert status.model.startswith(TINY_MODEL_NAME) and session.model["sha256"][:8] in status.model
    assert set(workflows.GENERATOR_INPUTS + workflows.EDIT_INPUTS) <= status.inputs and status.unused == []
    assert f"model {status.model}" in scene.genlca.message
    panel = draw_panel("GENLCA_PT_generate")
    assert ("label", f"Model: {status.model}", True) in panel.items, panel.items
    assert all(on for kind, name, on in panel.items if kind == "prop"), panel.items
    edit_panel = draw_panel("GENLCA_PT_edit")
    assert edit_panel.enabled_of("prop", "region") and edit_panel.enabled_of("prop", "strength")

    # a backend that lists less: its controls grey out (data-driven, nothing hard-coded per model)
    session.generator_inputs = ("text", "seed", "steps", "text_edit")
    panel = draw_panel("GENLCA_PT_generate")
    assert not panel.enabled_of("prop", "image") and not panel.enabled_of("prop", "guidance")
    assert panel.enabled_of("prop", "steps") and panel.enabled_of("prop", "prompt")
    assert not draw_panel("GENLCA_PT_edit").enabled_of("prop", "region")

    other = addon_module("session").Session("tcp://127.0.0.1:9", timeout_s=1.0)
    try:
        assert workflows.generator_status(other).unused == []  # unknown: nothing is greyed out on a guess
        workflows.note_generator(other, {"generator": "genlca-dit text-only", "supports": ["text", "seed"]})
        status = workflows.generator_status(other)
        assert status.unused == ["reference image", "steps", "guidance"]
        workflows.note_generator(other, {"capabilities": {"generator": "genlca-dit small", "model": {"name": "small"},
                                                     "supports": ["text", "image", "steps", "guidance"]}})
        status = workflows.generator_status(other)
        assert status.unused == [] and status.model == "small"
        assert "region_edit" not in status.inputs
    finally:
        other.close()


@pytest.fixture(scope="session")
def ingest_photos() -> Path | None:
    """The photos of `make testdata` (libdlib19.1's examples: people, and dogs.jpg without one), or None."""
    try:
        out = subprocess.run([str(ROOT / "scripts" / "fetch_test_data.sh"), "ingest"], capture_output=True, text=True,
                             timeout=180)
    except (OSError, subprocess.TimeoutExpired):
        return None
    folder = Path(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 and out.stdout.strip() else None
    return folder if folder is not None and (folder / "2008_001009.jpg").is_file() else None


def _synthetic_image(name: str, width: int = 96, height: int = 128) -> bpy.types.Image:
    """A Blender image with no person in it: a colour gradient."""
    image = bpy.data.images.new(name, width, height)
    y, x = np.mgrid[0:height, 0:width] / np.float32(max(width, height))
    rgba = np.stack([x, y, 0.5 * np.ones_like(x), np.ones_like(x)], -1).astype(np.float32)
    image.pixels.foreach_set(rgba.ravel())
    return image


def _generate(session, scene, timeout_s: float = 300):
    """jobs.generate through the live session; returns (armature, mesh, error, progress stages with steps)."""
    workflows, session_mod = addon_module("workflows"), addon_module("session")
    imported, errors, progress = [], [], []

    def on_progress(reply) -> None:
        session_mod._show_progress(session)  # what the timer shows: panel field and status bar
        progress.append(scene.genlca.job_stage)

    job_id = workflows.generate(session, scene, on_done=lambda arm, mesh: imported.append((arm, mesh)),
                           on_error=lambda code, msg: errors.append((code, msg)))
    session.jobs[job_id].on_progress = on_progress
    pump_until(session, lambda: imported or errors, timeout_s)
    session_mod._show_progress(session)  # as the timer would after the job: the panel is idle again
    arm, mesh = imported[0] if imported else (None, None)
    return arm, mesh, (errors[0] if errors else None), progress


def test_generate_from_a_reference_image_and_a_photo_without_a_person(live, scene, ingest_photos):
    """The panel's reference image (a Blender image datablock) goes with generate: a photo of a person gives an
    avatar (sampler steps shown as they come); an image with no person is refused by name."""
    session, _ = live
    workflows = addon_module("workflows")
    scene.genlca.prompt, scene.genlca.steps, scene.genlca.seed = "", 4, 11
    if ingest_photos is not None:
        photo = bpy.data.images.load(str(ingest_photos / "2008_001009.jpg"))
        scene.genlca.image = photo
        sent = workflows.reference_image(scene.genlca)
        assert sent.dtype == np.uint8 and sent.shape == (photo.size[1], photo.size[0], 3)
        arm, mesh, error, progress = _generate(session, scene)
        assert error is None, error
        assert len(mesh.data.vertices) > 0 and scene.genlca.avatars[-1].armature == arm
        assert scene.genlca.avatars[-1].label == photo.name
        meta = json.loads(arm["genlca_meta"])
        assert TINY_MODEL_NAME in meta["generator"], meta
        assert [f"sample {i}/4" for i in range(1, 5)] == [p for p in progress if p.startswith("sample ")][-4:], \
            progress
        no_person = bpy.data.images.load(str(ingest_photos / "dogs.jpg"))
    else:
        print("no test photos (make testdata): only the refusal of an image without a person is tested")
        no_person = _synthetic_image("gradient")
    scene.genlca.image = no_person
    arm, _, error, _ = _generate(session, scene)
    assert arm is None and error is not None
    code, message = error
    assert code == "invalid_argument" and "reference image cannot be used" in message, error
    assert scene.genlca.message_is_error and scene.genlca.message == message


def test_reference_image_from_a_blender_image_is_top_row_first_and_bounded(addon, scene):
    workflows = addon_module("workflows")
    image = bpy.data.images.new("ref", 6, 4)
    rgba = np.zeros((4, 6, 4), np.float32)  # Blender: bottom row first
    rgba[..., 3] = 1
    rgba[0] = (1.0, 0.0, 0.0, 1.0)  # bottom row red
    rgba[3, 2] = (0.0, 0.5, 1.0, 1.0)  # top row, third pixel
    image.pixels.foreach_set(rgba.ravel())
    got = workflows.image_rgb(image)
    assert got.shape == (4, 6, 3) and got.dtype == np.uint8
    assert (got[3] == (255, 0, 0)).all() and tuple(got[0, 2]) == (0, 128, 255)
    big = bpy.data.images.new("big", 300, 150)
    small = workflows.image_rgb(big, max_side=100)
    assert small.shape == (50, 100, 3) and tuple(big.size) == (300, 150)  # read from a copy
    assert [i.name for i in bpy.data.images] == ["big", "ref"]  # the copy is gone


def _edit_through_panel(session, scene, source_mesh):
    """Press the Edit panel's operator, wait for the second avatar: (its armature, the source's arrays, a bool
    per splat: changed in any array)."""
    scene_import = addon_module("scene_import")
    assert bpy.ops.genlca.edit() == {"FINISHED"}
    pump_until(session, lambda: (len(scene.genlca.avatars) == 2 and not session.jobs) or scene.genlca.message_is_error,
               300)
    assert not scene.genlca.message_is_error, scene.genlca.message
    edited = scene.genlca.avatars[-1].armature
    (edited_mesh,) = addon_module("binding").splat_meshes(edited)
    a, b = scene_import.avatar_arrays(source_mesh), scene_import.avatar_arrays(edited_mesh)
    assert a["means"].shape == b["means"].shape
    changed = np.zeros(len(a["means"]), bool)
    for key in a:
        changed |= (a[key] != b[key]).reshape(len(changed), -1).any(1)
    return edited, a, changed


def test_region_edit_through_the_panel_keeps_every_other_splat(live, scene):
    """Regenerate the head through the Edit panel's operator: the new avatar's splats outside the head are
    bit-identical to the source's, and the changed ones sit at the top of the body."""
    session, _ = live
    scene.genlca.prompt, scene.genlca.steps, scene.genlca.seed = "a woman in a red dress", 3, 5
    source, source_mesh, error, _ = _generate(session, scene)
    assert error is None, error
    scene.genlca.region = "head"
    panel = draw_panel("GENLCA_PT_edit")
    assert ("operator", "Regenerate Head", True) in panel.items and not panel.enabled_of("prop", "strength")
    edited, a, changed = _edit_through_panel(session, scene, source_mesh)
    assert edited != source and scene.genlca.avatars[-1].label.endswith("(head)")
    z = a["means"][:, 2]
    print(f"head edit: {changed.sum()} of {len(changed)} splats changed; their lowest z {z[changed].min():.3f}, "
          f"body median {np.median(z):.3f}")
    assert 0 < changed.sum() < 0.5 * len(changed)
    assert z[changed].min() > np.median(z)  # the head's splats, not the legs'
    meta = json.loads(edited["genlca_meta"])
    assert meta.get("region", "head") == "head"


def test_auto_region_edit_through_the_panel_changes_only_masked_splats(live, scene):
    """Region "Auto": the panel asks for an edit prompt and greys the strength; the backend masks what the edit
    prompt changes against the avatar's caption, so at most that fraction of the splats change."""
    session, _ = live
    scene.genlca.prompt, scene.genlca.steps, scene.genlca.seed = "a woman in a red dress", 3, 5
    source, source_mesh, error, _ = _generate(session, scene)
    assert error is None, error
    scene.genlca.region, scene.genlca.edit_prompt = "auto", ""
    assert not bpy.ops.genlca.edit.poll()  # Auto needs the prompt whose change it masks
    scene.genlca.edit_prompt = "a woman in a blue dress"
    panel = draw_panel("GENLCA_PT_edit")
    assert ("operator", "Change What the Prompt Changes", True) in panel.items and not panel.enabled_of("prop", "strength")
    edited, a, changed = _edit_through_panel(session, scene, source_mesh)
    assert scene.genlca.avatars[-1].label.endswith("(auto)")
    meta = json.loads(edited["genlca_meta"])
    assert meta["mode"] == "auto-region" and 0.0 < meta["masked_fraction"] < 1.0
    assert 0 < changed.sum() <= meta["masked_fraction"] * len(changed)
