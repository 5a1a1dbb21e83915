"""Avatar import: skeleton, splat attributes, vertex groups (quantised skin weights), and posing deforms
the splats (LBS)."""
from __future__ import annotations

import time

import bpy
import numpy as np
import pytest

from ..synthetic_avatar import synthetic_avatar
from .conftest import addon_module


@pytest.fixture(params=[None, 8], ids=["one-step", "steps-of-8-joints"])
def imported(scene, request):
    scene_import = addon_module("scene_import")
    header, arrays = synthetic_avatar(2000, joints=30, k=4, seed=3)
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


def vertex_group_weights(mesh) -> np.ndarray:
    """(N, J) weights read back one vertex at a time (slow; small meshes only)."""
    got = np.zeros((len(mesh.data.vertices), len(mesh.vertex_groups)))
    for v in mesh.data.vertices:
        for g in v.groups:
            got[v.index, g.group] = g.weight
    return got


def dense_skin(arrays, joints: int) -> np.ndarray:
    want = np.zeros((len(arrays["skin_weights"]), joints))
    np.add.at(want, (np.arange(len(want))[:, None], arrays["skin_indices"].astype(np.int64)), arrays["skin_weights"])
    return want


def test_vertex_groups_hold_the_quantised_top_k_weights(imported):
    header, arrays, armature, mesh, _ = imported
    scene_import = addon_module("scene_import")
    n, k = arrays["skin_weights"].shape
    names = [g.name for g in mesh.vertex_groups]
    assert names == header["joint_names"]  # one group per joint, in joint order
    got = vertex_group_weights(mesh)
    want = dense_skin(arrays, len(names))
    tolerance = 0.5 / scene_import.SKIN_LEVELS + 1e-7  # rounding to multiples of 1/1023: <= 4.9e-4
    assert np.abs(got - want).max() <= tolerance
    np.testing.assert_allclose(got * scene_import.SKIN_LEVELS, np.rint(got * scene_import.SKIN_LEVELS), atol=1e-3)
    assert max(len(v.groups) for v in mesh.data.vertices) == k  # no zero-weight entries
    assert all(g.weight > 0 for v in mesh.data.vertices for g in v.groups)
    # every vertex's weights still sum to ~1 (the Armature modifier divides by the sum anyway)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=k * tolerance)


def test_skin_weight_runs_edge_cases(scene):
    scene_import = addon_module("scene_import")
    levels = scene_import.SKIN_LEVELS
    # a joint twice in one row, weights that round to 0, a row of zeros
    indices = np.array([[3, 3, 1, 0], [2, 0, 1, 3], [0, 1, 2, 3]], np.uint16)
    weights = np.array([[0.25, 0.25, 0.5, 0.0], [1.0, 1e-4, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
    vertices, starts, joints, quantised = scene_import.skin_weight_runs(indices, weights)
    runs = [(int(j), int(q), vertices[a:b].tolist()) for j, q, a, b in zip(joints, quantised, starts, starts[1:])]
    q4 = round(0.25 * levels)
    assert runs == [(1, round(0.5 * levels), [0]), (2, levels, [1]), (3, q4, [0, 0])]  # ADD sums the pair
    empty = scene_import.skin_weight_runs(indices, np.zeros_like(weights))
    assert len(empty[0]) == 0 and empty[1].tolist() == [0] and len(empty[2]) == 0
    # more than 65536 (joint, weight) pairs: the two-pass sort gives the same runs
    rng = np.random.default_rng(0)
    indices = rng.integers(0, 300, (40_000, 4)).astype(np.uint16)
    weights = rng.random((40_000, 4)).astype(np.float32)
    vertices, starts, joints, quantised = scene_import.skin_weight_runs(indices, weights, levels=60_000)
    assert len(joints) > 1 << 16
    assert (np.diff(joints * 60_001 + quantised) > 0).all()
    assert starts[-1] == len(vertices) == (np.rint(weights * 60_000) > 0).sum()
    lengths = np.diff(starts)
    back = np.zeros((40_000, 300))
    np.add.at(back, (vertices, np.repeat(joints, lengths)), np.repeat(quantised / 60_000, lengths))
    want = np.zeros_like(back)
    np.add.at(want, (np.arange(40_000)[:, None], indices.astype(np.int64)), weights)
    assert np.abs(back - want).max() <= 4 * 0.5 / 60_000 + 1e-7
    for a, b in zip(starts[:50], starts[1:51]):
        assert (np.diff(vertices[a:b]) >= 0).all()
    # many joints and levels (no lookup table): same runs as a plain sort
    for n in (1000, 40_000):
        indices = rng.integers(0, 3000, (n, 4)).astype(np.uint16)
        weights = rng.random((n, 4)).astype(np.float32)
        vertices, starts, joints, quantised = scene_import.skin_weight_runs(indices, weights, levels=65_535)
        q = np.rint(weights * 65_535).astype(np.int64).ravel()
        key = indices.astype(np.int64).ravel() * 65_536 + q
        order = np.lexsort((np.arange(4 * n), key))  # by (joint, weight), then vertex
        order = order[q[order] > 0]
        np.testing.assert_array_equal(vertices, order // 4)
        np.testing.assert_array_equal(joints * 65_536 + quantised, np.unique(key[q > 0]))


def test_vertex_group_names_like_the_temporary_ones(scene):
    scene_import = addon_module("scene_import")
    header, arrays = synthetic_avatar(300, joints=6, k=3, seed=5)
    header["joint_names"] = [f"genlca-tmp-{j:05d}" for j in (3, 0, 5, 1, 4, 2)]
    armature, mesh = scene_import.import_avatar(bpy.context, header, arrays)
    assert [g.name for g in mesh.vertex_groups] == header["joint_names"]
    assert np.abs(vertex_group_weights(mesh) - dense_skin(arrays, 6)).max() <= 0.5 / scene_import.SKIN_LEVELS + 1e-7


def test_sparse_skin_import(scene):
    """Backend-like skins (zero weights pad the rows, runs of Gaussians share a row), in steps."""
    scene_import = addon_module("scene_import")
    header, arrays = synthetic_avatar(1500, joints=30, k=8, seed=2, skin="sparse")
    weights = arrays["skin_weights"]
    assert (weights == 0).any() and np.allclose(weights.sum(1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(weights[0], weights[9])  # one texel: 10 Gaussians
    armature, mesh = scene_import.import_avatar(bpy.context, header, arrays, bake_chunk=3)
    assert [g.name for g in mesh.vertex_groups] == header["joint_names"]
    got = vertex_group_weights(mesh)
    assert np.abs(got - dense_skin(arrays, 30)).max() <= 0.5 / scene_import.SKIN_LEVELS + 1e-7
    kept = (np.rint(weights * scene_import.SKIN_LEVELS) > 0).sum(1)
    np.testing.assert_array_equal([len(v.groups) for v in mesh.data.vertices], kept)


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
    # reference LBS with the pose-bone matrices Blender computed: A_j = pose_j · rest_j^-1, with the
    # vertex-group weights (normalised, as the Armature modifier does) and with the source weights
    binding = addon_module("binding")
    names = header["joint_names"]
    pose = np.array([np.array(armature.pose.bones[n].matrix) for n in names])
    skin = pose @ np.linalg.inv(binding.rest_matrices(armature).astype(np.float64))  # (J, 4, 4)
    means = np.c_[arrays["means"], np.ones(len(arrays["means"]))]
    groups = vertex_group_weights(mesh)
    groups /= groups.sum(1, keepdims=True)
    exact = np.einsum("nj,jab,nb->na", groups, skin, means)[:, :3]
    blended = np.einsum("nk,nkab->nab", arrays["skin_weights"], skin[arrays["skin_indices"].astype(np.int64)])
    want = np.einsum("nab,nb->na", blended, means)[:, :3]
    assert np.abs(posed - arrays["means"]).max() > 0.05  # it moved
    np.testing.assert_allclose(posed, exact, atol=2e-5)
    np.testing.assert_allclose(posed, want, atol=1e-3)  # weight quantisation: <= 4.9e-4 per weight


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
