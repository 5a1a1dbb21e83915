"""The rigged-mesh export from Blender, proved with Blender's own importers: a generated avatar (real backend
on loopback, tiny random model), bound to the CMU clip with its motion baked, exported through the panel
as GLB (the backend's `export` op with the scene's motion) and as FBX (that GLB through Blender's glTF
importer and FBX exporter); the GLB re-imported by Blender's glTF importer has the avatar's joints where
the avatar's are, frame by frame (<= 1 cm), and the FBX re-imported by its FBX importer has the skeleton."""
from __future__ import annotations

import json

import bpy
import numpy as np
import pytest

from .conftest import addon_module, pump_until
from .test_backend import live  # noqa: F401  (the session fixture against the session's backend)
from .test_binding import import_bvh

FRAMES = (40, 52)


def heads_world(obj) -> dict[str, np.ndarray]:
    world = np.array(obj.matrix_world)
    return {pb.name: (world @ np.append(np.array(pb.head), 1.0))[:3] for pb in obj.pose.bones}


@pytest.mark.timeout(900)  # a backend start, a generate, the CMU clip and two exports: ~1 min idle, 5+ loaded
def test_export_glb_and_fbx_and_reimport(live, scene, cmu_bvh, tmp_path):  # noqa: F811
    session, out_dir = live
    workflows, binding = addon_module("workflows"), addon_module("binding")
    errors: list[str] = []
    on_error = lambda code, msg: errors.append(f"{code}: {msg}")  # noqa: E731
    scene.genlca.prompt, scene.genlca.steps, scene.genlca.seed = "a woman in a red dress", 2, 5
    imported: list = []
    workflows.generate(session, scene, on_done=lambda arm, mesh: imported.append((arm, mesh)), on_error=on_error)
    pump_until(session, lambda: imported or errors, 300)
    assert not errors, errors
    avatar, _ = imported[0]
    source = import_bvh(cmu_bvh)
    scene.frame_start, scene.frame_end = FRAMES
    binding.bind(avatar, source, bake=FRAMES)
    scene.render.fps, scene.render.fps_base = 30, 1.0

    written: list = []
    for fmt in ("glb", "fbx"):
        scene.genlca.export_format = fmt
        assert bpy.ops.genlca.export() == {"FINISHED"}
        pump_until(session, lambda: len(written) > ["glb", "fbx"].index(fmt) or errors or
                   any(p.suffix == f".{fmt}" for p in out_dir.iterdir()), 300)
        assert not errors, errors
        (path,) = [p for p in out_dir.iterdir() if p.suffix == f".{fmt}"]
        written.append(path)
    glb, fbx = written
    assert fbx.stat().st_size > 10_000

    # the avatar's joints over the baked frames, in world space
    names = binding.joint_names(avatar)
    want = []
    for frame in range(FRAMES[0], FRAMES[1] + 1):
        scene.frame_set(frame)
        bpy.context.view_layer.update()
        h = heads_world(avatar)
        want.append(np.array([h[n] for n in names]))
    want = np.stack(want)
    assert np.ptp(want[:, names.index("wrist.L")], axis=0).max() > 0.02  # it moves

    # Blender's glTF importer: the file's joints follow the avatar (its names are the Mixamo ones)
    before = set(bpy.data.objects)
    assert bpy.ops.import_scene.gltf(filepath=str(glb)) == {"FINISHED"}
    arm = next(o for o in bpy.data.objects if o not in before and o.type == "ARMATURE")
    doc = json.loads(glb.read_bytes()[20:20 + int.from_bytes(glb.read_bytes()[12:16], "little")])
    gltf_names = [doc["nodes"][j]["name"] for j in doc["skins"][0]["joints"]]
    assert doc["asset"]["extras"]["genlca_joint_names"] == names and "Hips" in gltf_names
    action = arm.animation_data.action
    first = int(round(action.frame_range[0]))
    worst = 0.0
    for i in range(FRAMES[1] - FRAMES[0] + 1):
        scene.frame_set(first + i)
        bpy.context.view_layer.update()
        h = heads_world(arm)
        got = np.array([h[n] for n in gltf_names])
        worst = max(worst, float(np.linalg.norm(got - want[i], axis=1).max()))
    print(f"re-imported GLB: joints within {worst * 1000:.2f} mm of the avatar's over {len(want)} frames")
    assert worst <= 0.01

    # Blender's FBX importer reads the FBX: the same skeleton
    before = set(bpy.data.objects)
    assert bpy.ops.import_scene.fbx(filepath=str(fbx)) == {"FINISHED"}
    fbx_arm = next(o for o in bpy.data.objects if o not in before and o.type == "ARMATURE")
    assert {b.name for b in fbx_arm.data.bones} >= set(gltf_names)
    assert any(o.type == "MESH" for o in bpy.data.objects if o not in before)
