"""Avatar import: skeleton, splat attributes, vertex groups, and posing deforms the splats (LBS)."""
from __future__ import annotations

import time

import bpy
import numpy as np
import pytest

from .conftest import addon_module


@pytest.fixture(params=[None, 8], ids=["one-bake", "bake-chunks-of-8"])
def imported(scene, request):
    scene_import = addon_module("scene_import")
    header, arrays = scene_import.synthetic_avatar(2000, joints=30, k=4, seed=3)
    start = time.perf_counter()
    armature, mesh = scene_import.import_avatar(bpy.context, header, arrays, bake_chunk=request.param)
    return header, arrays, armature, mesh, time.perf_counter() - start


def test_skeleton_matches_rest_frames(imported):
    header, arrays, armature, mesh, _ = imported
    binding = addon_module("binding")
    assert binding.joint_names(armature) == header["joint_names"]
    np.testing.assert_allclose(binding.rest_matrices(armature), arrays["rest_matrices"], atol=1e-5)
    np.testing.assert_array_equal(binding.joint_parents(armature), arrays["joint_parents"])
    tails = np.array([armature.data.bones[n].tail_local for n in header["joint_names"]])
    np.testing.assert_allclose(tails, arrays["joint_tails"], atol=1e-5)
    assert armature["genlca_avatar_id"] == header["avatar_id"]


def test_splat_attributes(imported):
    header, arrays, armature, mesh, _ = imported
    got = addon_module("scene_import").avatar_arrays(mesh)
    np.testing.assert_allclose(got["means"], arrays["means"], atol=1e-6)
    np.testing.assert_allclose(got["scale"], np.exp(arrays["log_scales"]), rtol=1e-5)
    q = arrays["rotations"] / np.linalg.norm(arrays["rotations"], axis=1, keepdims=True)
    np.testing.assert_allclose(np.abs((got["rotation"] * q).sum(1)), 1.0, atol=1e-5)  # same rotation (wxyz)
    np.testing.assert_allclose(got["opacity"], 1 / (1 + np.exp(-arrays["opacity_logits"])), atol=1e-5)
    assert got["color"].min() >= 0.0 and got["color"].max() <= 1.0
    assert mesh.parent == armature and mesh.modifiers[0].type == "ARMATURE" and mesh.modifiers[1].type == "NODES"
    assert not any(a.name.startswith("skin_pack_") for a in mesh.data.attributes)


def test_vertex_groups_hold_the_top_k_weights(imported):
    header, arrays, armature, mesh, _ = imported
    n, k = arrays["skin_weights"].shape
    names = [g.name for g in mesh.vertex_groups]
    assert names == header["joint_names"]
    got = np.zeros((n, len(names)))
    for v in mesh.data.vertices:
        for g in v.groups:
            got[v.index, g.group] = g.weight
    want = np.zeros_like(got)
    np.put_along_axis(want, arrays["skin_indices"].astype(np.int64), arrays["skin_weights"], axis=1)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert max(len(v.groups) for v in mesh.data.vertices) == k  # no zero-weight entries


def test_posing_moves_skinned_vertices_like_lbs(imported):
    header, arrays, armature, mesh, _ = imported
    mesh.modifiers["GenLCA splats"].show_viewport = False  # read the deformed points, not the instances
    rng = np.random.default_rng(0)
    for pb in armature.pose.bones:
        q = np.r_[1.0, rng.normal(0, 0.3, 3)]
        pb.rotation_quaternion = q / np.linalg.norm(q)
    armature.pose.bones[0].location = (0.1, -0.05, 0.2)
    bpy.context.view_layer.update()
    evaluated = mesh.evaluated_get(bpy.context.evaluated_depsgraph_get()).data
    posed = np.empty(len(evaluated.vertices) * 3, np.float32)
    evaluated.vertices.foreach_get("co", posed)
    posed = posed.reshape(-1, 3)
    # reference LBS with the pose-bone matrices Blender computed: A_j = pose_j · rest_j^-1
    binding = addon_module("binding")
    names = header["joint_names"]
    pose = np.array([np.array(armature.pose.bones[n].matrix) for n in names])
    skin = pose @ np.linalg.inv(binding.rest_matrices(armature).astype(np.float64))  # (J, 4, 4)
    means = np.c_[arrays["means"], np.ones(len(arrays["means"]))]
    blended = np.einsum("nk,nkab->nab", arrays["skin_weights"], skin[arrays["skin_indices"].astype(np.int64)])
    want = np.einsum("nab,nb->na", blended, means)[:, :3]
    assert np.abs(posed - arrays["means"]).max() > 0.05  # it moved
    np.testing.assert_allclose(posed, want, atol=2e-4)


def test_read_pose_frames_inverts_fk(imported, scene):
    header, arrays, armature, mesh, _ = imported
    binding, rigmaps = addon_module("binding"), addon_module("_bridge").rigmaps
    rng = np.random.default_rng(1)
    scene.frame_start, scene.frame_end = 1, 3
    quats = {}
    for frame in (1, 2, 3):
        for pb in armature.pose.bones:
            q = np.r_[1.0, rng.normal(0, 0.4, 3)]
            pb.rotation_quaternion = q / np.linalg.norm(q)
            pb.keyframe_insert("rotation_quaternion", frame=frame)
            quats[frame, pb.name] = q / np.linalg.norm(q)
        armature.pose.bones[header["joint_names"][0]].location = (0.0, 0.1 * frame, 0.0)
        armature.pose.bones[header["joint_names"][0]].keyframe_insert("location", frame=frame)
    rotations, translations = binding.read_pose_frames(armature, 1, 3, scene)
    assert rotations.shape == (3, len(header["joint_names"]), 4) and rotations.dtype == np.float32
    assert translations.shape == (3, 3)
    for f, frame in enumerate((1, 2, 3)):
        for j, name in enumerate(header["joint_names"]):
            want = quats[frame, name]
            assert abs(float(np.dot(rotations[f, j], want))) == pytest.approx(1.0, abs=1e-4)
    rest = arrays["rest_matrices"][0, :3, :3]
    np.testing.assert_allclose(translations[:, :], [rest @ (0.0, 0.1 * fr, 0.0) for fr in (1, 2, 3)], atol=1e-5)
    assert rigmaps is not None
