"""The standard rig (the default import): vertex groups and Blender's Armature modifier ahead of the splat
display, the splat tree turning each splat with its bones, the bound motion baked into an action; a saved
file animates the same in a fresh Blender process without the add-on, and its background render shows
the posed avatar.

Tolerances: vertex-group weights are multiples of 1/1023 (skin_groups.SKIN_LEVELS), the packed skin of
1/65535; orientations are read off frame points 0.1 m apart in float32 (~1e-6)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import bpy
import numpy as np
import pytest

from ..synthetic_avatar import synthetic_avatar
from .conftest import addon_module
from .test_binding import anny_avatar, import_bvh
from .test_splat_pose import instance_rotations, quat_to_matrix

ROOT = Path(__file__).resolve().parents[2]
SKIN_LEVELS = 1023


def evaluated_centres(mesh) -> np.ndarray:
    """(N, 3) splat centres as Blender evaluates them (Armature modifier; the splat display off)."""
    splats = mesh.modifiers["GenLCA splats"]
    shown = splats.show_viewport
    splats.show_viewport = False
    try:
        evaluated = mesh.evaluated_get(bpy.context.evaluated_depsgraph_get()).data
        co = np.empty(len(evaluated.vertices) * 3, np.float32)
        evaluated.vertices.foreach_get("co", co)
    finally:
        splats.show_viewport = shown
    return co.reshape(-1, 3)


def random_pose(armature, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for pb in armature.pose.bones:
        q = np.r_[1.0, rng.normal(0, 0.3, 3)]
        pb.rotation_quaternion = q / np.linalg.norm(q)
    armature.pose.bones[0].location = (0.1, -0.05, 0.2)
    armature.pose.bones[3].scale = (1.2, 1.2, 1.2)


def test_standard_import_is_a_blender_rig(scene):
    scene_import, binding = addon_module("scene_import"), addon_module("binding")
    header, arrays = synthetic_avatar(1500, joints=30, k=8, seed=2, skin="sparse")
    armature, mesh = scene_import.import_avatar(bpy.context, header, arrays)
    assert scene_import.rig_mode(armature) == "standard"
    assert [m.type for m in mesh.modifiers] == ["ARMATURE", "NODES"]  # deform first, then the splat display
    assert mesh.modifiers[0].object == armature and mesh.modifiers[0].use_vertex_groups
    assert [g.name for g in mesh.vertex_groups] == header["joint_names"]
    frames = scene_import.bone_frames_object(mesh)
    assert frames is not None and frames.parent == armature and frames.hide_render
    assert len(frames.data.vertices) == 3 * len(header["joint_names"])
    # only nonzero weights are written
    kept = (np.rint(np.rint(arrays["skin_weights"] * 65535) / 65535 * SKIN_LEVELS) > 0).sum(1)
    np.testing.assert_array_equal([len(v.groups) for v in mesh.data.vertices], kept)
    # posing: Blender deforms the points (LBS with the quantised weights), the handlers leave them alone
    random_pose(armature, seed=0)
    bpy.context.view_layer.update()
    np.testing.assert_array_equal(scene_import.rest_positions(mesh.data), arrays["means"])
    position = np.empty(len(arrays["means"]) * 3, np.float32)
    mesh.data.attributes["position"].data.foreach_get("vector", position)
    np.testing.assert_array_equal(position.reshape(-1, 3), arrays["means"])  # "position" is not rewritten
    splat_pose = addon_module("splat_pose")
    matrices = splat_pose.skinning_matrices(mesh, armature)
    slots = splat_pose._skin_slots(mesh.data)
    want = splat_pose.posed_splat_centres(arrays["means"], slots, matrices)
    got = evaluated_centres(mesh)
    assert np.abs(got - arrays["means"]).max() > 0.05
    # weight steps of 1/1023 against 1/65535 (renormalised): each slot moves a point by at most half a step
    # times the spread of its bones' transforms of that point (below 2 * 3 m here)
    np.testing.assert_allclose(got, want, atol=8 * (0.5 / SKIN_LEVELS + 0.5 / 65535) * 6.0 / 8 + 1e-5)
    # orientations: the splat tree blends the bones' rotations as the backend's LBS does
    deltas = splat_pose.bone_rotation_deltas(matrices)
    rest = arrays["rotations"] / np.linalg.norm(arrays["rotations"], axis=1, keepdims=True)
    turned = splat_pose.posed_splat_rotations(rest.astype(np.float32), slots, deltas)
    np.testing.assert_allclose(instance_rotations(mesh), quat_to_matrix(turned), atol=2e-5)
    assert "posed_rotation" not in mesh.data.attributes  # nothing written by the add-on
    assert binding.update_splats(armature) == 0


def bound_anny(scene, cmu_bvh, frames: tuple[int, int]):
    source = import_bvh(cmu_bvh)
    header, arrays = anny_avatar()
    armature, mesh = addon_module("scene_import").import_avatar(bpy.context, header, arrays)
    item = scene.genlca.avatars.add()
    item.avatar_id, item.label, item.armature = header["avatar_id"], "anny", armature
    scene.genlca.avatar_index = len(scene.genlca.avatars) - 1
    scene.frame_start, scene.frame_end = frames
    bpy.context.view_layer.objects.active = source
    assert bpy.ops.genlca.bind_armature(use_action_range=False) == {"FINISHED"}  # bakes the scene's range
    return source, armature, mesh


def test_bind_bakes_an_action_that_replays_the_solver(scene, cmu_bvh):
    binding = addon_module("binding")
    source, armature, mesh = bound_anny(scene, cmu_bvh, (100, 130))
    action = armature.animation_data.action
    assert action is not None and action.get(binding.MOTION_KEY)
    assert list(armature[binding.BAKED_KEY]) == [100, 130] and not binding.is_live(armature)
    names = binding.joint_names(armature)
    for frame in (100, 117, 130):
        scene.frame_set(frame)
        bpy.context.view_layer.update()
        location, rotation, scale = binding.solved_channels(armature, bpy.context.evaluated_depsgraph_get())
        got = np.array([armature.pose.bones[n].rotation_quaternion for n in names])
        # float32 keys of the same quaternions (either sign)
        assert np.abs(np.abs((got * rotation).sum(1)) - 1.0).max() < 1e-5
        np.testing.assert_allclose([armature.pose.bones[n].location for n in names], location, atol=1e-5)
    # Bake Motion again, then unbind: the action goes, the avatar is at rest
    assert bpy.ops.genlca.bake_motion() == {"FINISHED"}
    assert armature.animation_data.action is not None and len(bpy.data.actions) == 2  # the source's and ours
    binding.unbind(armature)
    assert armature.animation_data.action is None and binding.BAKED_KEY not in armature
    bpy.context.view_layer.update()
    np.testing.assert_allclose(evaluated_centres(mesh), anny_avatar()[1]["means"], atol=1e-5)


def posed_channels(scene, armature, frames) -> np.ndarray:
    """(F, J, 7) location and rotation_quaternion of the avatar's pose bones as its action plays them."""
    names = addon_module("binding").joint_names(armature)
    out = []
    for frame in frames:
        scene.frame_set(frame)
        out.append([[*armature.pose.bones[n].location, *armature.pose.bones[n].rotation_quaternion] for n in names])
    return np.array(out)


def test_timer_bake_is_all_or_nothing(scene, cmu_bvh, monkeypatch):
    """Bake Motion over bpy.app.timers ticks (the operators with a UI): a tick solves frames within its
    budget and writes nothing; cancelled or failed part-way, the avatar keeps the action it had; finished,
    the same keys as the bake at once. Blender runs no timers in background mode (bpy as a module), so the
    test calls the registered callback, `bake.tick`, as Blender's timer loop would."""
    binding, motion_bake = addon_module("binding"), addon_module("motion_bake")
    monkeypatch.setattr(motion_bake, "BAKE_TICK_S", 0.0)  # one frame per tick: counts, not the clock
    source, armature, mesh = bound_anny(scene, cmu_bvh, (100, 130))  # background mode: baked at once
    first = armature.animation_data.action
    first_name = first.name
    want = posed_channels(scene, armature, (100, 113, 130))
    scene.frame_set(105)

    bake = motion_bake.start_bake(armature, 100, 130, scene)
    assert bpy.app.timers.is_registered(bake._callback) and motion_bake.running_bake(armature) is bake
    assert bake.tick() == 0.0 and bake.tick() == 0.0
    assert bake.solved == 2 and bake.progress == pytest.approx(2 / 31)
    assert scene.frame_current == 105 and mesh.hide_viewport  # the user's frame; splats out of the depsgraph
    assert armature.animation_data.action == first and len(bpy.data.actions) == 2
    bake.cancel()
    assert bake.state == "cancelled" and not bpy.app.timers.is_registered(bake._callback)
    assert motion_bake.running_bake(armature) is None and not mesh.hide_viewport
    assert armature.animation_data.action == first and list(armature[binding.BAKED_KEY]) == [100, 130]
    assert bake.tick() is None  # a tick Blender had queued before the cancel does nothing

    # to the end: progress rises a frame per tick, the last tick writes the action in one go
    done: list = []
    bake = motion_bake.start_bake(armature, 100, 130, scene, on_done=done.append)
    progress = []
    while bake.tick() is not None:
        progress.append(bake.progress)
        assert armature.animation_data.action == first
    assert np.all(np.diff(progress) > 0) and len(progress) == 30
    assert bake.state == "done" and done == [bake.action] and armature.animation_data.action == bake.action
    assert first_name not in bpy.data.actions and len(bpy.data.actions) == 2  # the source's and the new one
    assert not bpy.app.timers.is_registered(bake._callback) and not mesh.hide_viewport
    np.testing.assert_allclose(posed_channels(scene, armature, (100, 113, 130)), want, atol=1e-6)

    # a failure part-way (the map loses its bones): reported, and the avatar keeps its motion
    second = armature.animation_data.action
    bone_map = binding.bone_map(armature)
    errors: list = []
    bake = motion_bake.start_bake(armature, 100, 130, scene, on_error=errors.append)
    assert bake.tick() == 0.0
    armature.genlca.bone_map.clear()
    assert bake.tick() is None
    assert bake.state == "failed" and errors and "no bone of its map" in errors[0]
    assert armature.animation_data.action == second and len(bpy.data.actions) == 2 and not mesh.hide_viewport

    # one frame moves no channel: a still pose, and the earlier baked motion goes
    binding.set_bone_map(armature, bone_map)
    assert binding.bake_motion(armature, 110, 110, scene) is None
    assert armature.animation_data.action is None and len(bpy.data.actions) == 1
    assert list(armature[binding.BAKED_KEY]) == [110, 110]


FRESH_BLENDER = textwrap.dedent("""
    import sys
    import bpy
    import numpy as np
    blend, frame, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    bpy.ops.wm.open_mainfile(filepath=blend)
    assert not any("genlca" in name for name in bpy.context.preferences.addons.keys()), "the add-on is installed"
    assert not hasattr(bpy.types.Scene, "genlca"), "the add-on is registered"
    scene = bpy.context.scene
    mesh = next(o for o in scene.objects if o.type == "MESH" and "genlca_avatar_id" in o)
    scene.frame_set(frame)
    splats = mesh.modifiers["GenLCA splats"]
    splats.show_viewport = False
    ev = mesh.evaluated_get(bpy.context.evaluated_depsgraph_get()).data
    co = np.empty(len(ev.vertices) * 3, np.float32)
    ev.vertices.foreach_get("co", co)
    splats.show_viewport = True
    np.save(out + "/centres.npy", co.reshape(-1, 3))
    # `blender -b scene.blend -a` for one frame: the render settings saved with the file
    scene.frame_start = scene.frame_end = frame
    scene.render.filepath = out + "/posed_"
    bpy.ops.render.render(animation=True)
    armature = mesh.parent
    armature.data.pose_position = "REST"
    scene.render.filepath = out + "/rest_"
    bpy.ops.render.render(animation=True)
""")


def test_saved_file_animates_without_the_addon(scene, cmu_bvh, tmp_path):
    """A bound avatar saved to a .blend, opened by a fresh Blender process that has no add-on: the same
    evaluated splat centres at frame N (<= 1 mm), and a background render of frame N shows the posed
    avatar (its alpha silhouette covers the posed centres projected by the camera, and differs from the
    rest pose's)."""
    frame = 120
    source, armature, mesh = bound_anny(scene, cmu_bvh, (110, 130))
    scene.frame_set(frame)
    here = evaluated_centres(mesh)
    world = np.array(mesh.matrix_world)
    posed_world = here @ world[:3, :3].T + world[:3, 3]
    # a camera framing the posed avatar, Cycles at a small size, transparent film
    cam = bpy.data.objects.new("cam", bpy.data.cameras.new("cam"))
    scene.collection.objects.link(cam)
    scene.camera = cam
    centre = posed_world.mean(0)
    cam.location = (centre[0], centre[1] - 4.5, centre[2])
    cam.rotation_euler = (np.radians(90), 0.0, 0.0)
    render = scene.render
    render.engine = "CYCLES"
    scene.cycles.samples, scene.cycles.device = 1, "CPU"
    render.resolution_x, render.resolution_y, render.resolution_percentage = 48, 64, 100
    render.image_settings.file_format, render.image_settings.color_mode = "PNG", "RGBA"
    render.film_transparent = True
    blend = tmp_path / "bound.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend), copy=True)

    user = tmp_path / "fresh_user"
    env = dict(os.environ, **{v: str(user / v.lower()) for v in
                              ("BLENDER_USER_RESOURCES", "BLENDER_USER_CONFIG", "BLENDER_USER_SCRIPTS",
                               "BLENDER_USER_EXTENSIONS", "BLENDER_USER_DATAFILES")})
    env.pop("PYTHONPATH", None)  # not the repository's add-on either
    ran = subprocess.run([sys.executable, "-c", FRESH_BLENDER, str(blend), str(frame), str(tmp_path)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr[-3000:]
    there = np.load(tmp_path / "centres.npy")
    assert np.abs(there - anny_avatar()[1]["means"]).max() > 0.1  # posed, not a statue
    assert np.abs(there - here).max() <= 1e-3

    png = addon_module("_bridge").png
    posed = png.read_png(tmp_path / f"posed_{frame:04d}.png")[..., 3] > 0
    rest = png.read_png(tmp_path / f"rest_{frame:04d}.png")[..., 3] > 0
    assert posed.any() and rest.any()
    # the posed centres, projected by the scene camera, land on the rendered silhouette
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector
    ndc = np.array([world_to_camera_view(scene, cam, Vector(p)) for p in posed_world[::20]])
    cols = np.clip((ndc[:, 0] * render.resolution_x).astype(int), 0, render.resolution_x - 1)
    rows = np.clip(((1.0 - ndc[:, 1]) * render.resolution_y).astype(int), 0, render.resolution_y - 1)
    near = np.zeros_like(posed)
    for dr in (-1, 0, 1):  # one pixel of slack for the pixel grid
        for dc in (-1, 0, 1):
            near |= np.roll(np.roll(posed, dr, 0), dc, 1)
    assert near[rows, cols].mean() > 0.95, "the render does not show the posed avatar"
    iou = (posed & rest).sum() / (posed | rest).sum()
    assert iou < 0.9, f"the render at frame {frame} looks like the rest pose (IoU {iou:.2f})"
    print(f"fresh process: max centre difference {np.abs(there - here).max():.2e} m; posed/rest IoU {iou:.2f}")
