"""Binding an avatar to a real BVH armature (CMU 01_01 through Blender's own BVH importer)."""
from __future__ import annotations

import time

import bpy
import numpy as np
import pytest

from .conftest import addon_module


def import_bvh(path) -> bpy.types.Object:
    start = time.perf_counter()
    bpy.ops.import_anim.bvh(filepath=str(path), global_scale=0.056444, update_scene_fps=False,
                            update_scene_duration=False)
    obj = bpy.context.view_layer.objects.active
    assert obj is not None and obj.type == "ARMATURE", "the BVH importer made no armature"
    print(f"BVH import {time.perf_counter() - start:.2f} s, {len(obj.data.bones)} bones")
    return obj


def template_like_avatar(source: bpy.types.Object, seed: int = 0):
    """A rigged avatar whose joints carry template (GenLCA) names: the CMU bones the rig map knows,
    rest frames of the source rolled randomly about their own axis (another bone-axis convention)."""
    rigmaps = addon_module("_bridge").rigmaps
    rng = np.random.default_rng(seed)
    src_world = np.array(source.matrix_world)
    bones = [b for b in source.data.bones if b.name in rigmaps.CMU]
    names = [rigmaps.CMU[b.name] for b in bones]
    index = {b.name: i for i, b in enumerate(bones)}
    parents, rest, tails = [], [], []
    for b in bones:
        p = b.parent
        while p is not None and p.name not in index:
            p = p.parent
        parents.append(index[p.name] if p is not None else -1)
        m = src_world @ np.array(b.matrix_local)
        a = rng.uniform(-np.pi, np.pi)
        roll = np.array([[np.cos(a), 0, np.sin(a), 0], [0, 1, 0, 0], [-np.sin(a), 0, np.cos(a), 0], [0, 0, 0, 1]])
        m = m @ roll
        m[:3, :3] /= np.linalg.norm(m[:3, :3], axis=0)
        rest.append(m)
        tails.append(m[:3, 3] + m[:3, 1] * max(b.length * np.linalg.norm(src_world[:3, 0]), 0.01))
    n = 400
    owner = rng.integers(0, len(bones), n)
    heads = np.array(rest)[:, :3, 3]
    arrays = {
        "means": (heads[owner] + rng.normal(0, 0.02, (n, 3))).astype(np.float32),
        "rotations": np.tile(np.float32([1, 0, 0, 0]), (n, 1)),
        "log_scales": np.full((n, 3), np.log(0.01), np.float32),
        "opacity_logits": np.zeros(n, np.float32), "sh": np.zeros((n, 1, 3), np.float32),
        "skin_indices": owner[:, None].astype(np.uint16), "skin_weights": np.ones((n, 1), np.float32),
        "joint_parents": np.array(parents, np.int32), "rest_matrices": np.array(rest, np.float32),
        "joint_tails": np.array(tails, np.float32),
    }
    return {"avatar_id": "bvh-test", "joint_names": names, "meta": {}}, arrays


@pytest.fixture
def bound(scene, cmu_bvh):
    source = import_bvh(cmu_bvh)
    header, arrays = template_like_avatar(source)
    armature, mesh = addon_module("scene_import").import_avatar(bpy.context, header, arrays)
    mapping = addon_module("binding").bind(armature, source)
    return source, armature, mesh, mapping


def world_axes(obj, bone_name):
    m = np.array(obj.matrix_world) @ np.array(obj.pose.bones[bone_name].matrix)
    return m[:3, :3] / np.linalg.norm(m[:3, :3], axis=0), m[:3, 3]


def test_bind_detects_cmu_and_follows_the_mocap(bound, scene):
    source, armature, mesh, mapping = bound
    assert armature.genlca.rig == "cmu" and armature.genlca.source_armature == source
    assert len(mapping) >= 20 and mapping["Hips"] == "root"
    for frame in (40, 120):
        scene.frame_set(frame)  # the add-on's frame-change handler poses the avatar
        bpy.context.view_layer.update()
        worst = 0.0
        for src_bone, joint in mapping.items():
            src_rot, src_head = world_axes(source, src_bone)
            av_rot, av_head = world_axes(armature, joint)
            cos = float(np.clip(src_rot[:, 1] @ av_rot[:, 1], -1, 1))
            worst = max(worst, np.degrees(np.arccos(cos)))
        assert worst < 1.0, f"frame {frame}: a bone points {worst:.2f} degrees away from its source"
        _, hips = world_axes(source, "Hips")
        _, root = world_axes(armature, "root")
        np.testing.assert_allclose(root, hips, atol=1e-3)  # same size: the root follows 1:1


def test_bone_map_is_editable(bound):
    source, armature, mesh, mapping = bound
    binding = addon_module("binding")
    items = armature.genlca.bone_map
    assert binding.bone_map(armature) == mapping
    item = next(i for i in items if i.source == "LeftForeArm")
    item.target = ""  # the user unmaps a bone: that joint now follows its parent
    binding.apply_binding(armature, bpy.context.evaluated_depsgraph_get())
    assert "LeftForeArm" not in binding.bone_map(armature)
    assert np.allclose(armature.pose.bones["lowerarm01.L"].rotation_quaternion, (1, 0, 0, 0), atol=1e-6)
    assert '"LeftArm": "upperarm01.L"' in binding.bone_map_json(armature)


def test_read_pose_frames_of_a_bound_avatar(bound, scene):
    source, armature, mesh, mapping = bound
    binding = addon_module("binding")
    start = time.perf_counter()
    rotations, translations = binding.read_pose_frames(armature, 10, 19, scene)
    elapsed = time.perf_counter() - start
    assert rotations.shape == (10, len(binding.joint_names(armature)), 4)
    np.testing.assert_allclose(np.linalg.norm(rotations, axis=-1), 1.0, atol=1e-5)
    assert np.abs(np.diff(translations, axis=0)).max() > 1e-4  # the mocap walks
    assert not mesh.hide_viewport  # the splats were hidden only while reading
    print(f"read 10 bound frames in {elapsed * 1000:.1f} ms")
