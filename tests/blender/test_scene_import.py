"""Avatar import with *Fast preview (add-on only)*: skeleton, splat attributes (skin and rest centres, no
vertex groups or Armature modifier), posing moves the centres by LBS (binding's handlers,
`update_splat_pose`), and the explicit "Bake Vertex Groups" operator (quantised skin weights). The
standard rig (the default) is tested in test_standard_rig.py."""
from __future__ import annotations

import time

import bpy
import numpy as np
import pytest

from ..synthetic_avatar import synthetic_avatar
from .conftest import addon_module

SKIN_LEVELS = 1023  # skin_groups.SKIN_LEVELS: baked weights are multiples of 1/1023


@pytest.fixture(autouse=True)
def fast_preview(scene):
    scene.genlca.fast_preview = True  # imports here use the handlers' posing


@pytest.fixture
def imported(scene):
    scene_import = addon_module("scene_import")
    header, arrays = synthetic_avatar(2000, joints=30, k=4, seed=3)
    start = time.perf_counter()
    armature, mesh = scene_import.import_avatar(bpy.context, header, arrays)
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
    assert mesh.parent == armature and [m.type for m in mesh.modifiers] == ["NODES"] and not mesh.vertex_groups
    assert not any(a.name.startswith("skin_pack_") for a in mesh.data.attributes)
    scene_import = addon_module("scene_import")
    rest = mesh.data.attributes[scene_import.REST_POSITION]
    assert rest.data_type == "FLOAT_VECTOR" and rest.domain == "POINT"
    np.testing.assert_array_equal(scene_import.rest_positions(mesh.data), arrays["means"])


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


def bake(mesh, armature) -> None:
    """The "Bake Vertex Groups" operator on the avatar selected in the panel."""
    scene = bpy.context.scene
    item = scene.genlca.avatars.add()
    item.avatar_id, item.armature = armature["genlca_avatar_id"], armature
    scene.genlca.avatar_index = len(scene.genlca.avatars) - 1
    assert bpy.ops.genlca.bake_vertex_groups() == {"FINISHED"}


def test_baked_vertex_groups_hold_the_quantised_top_k_weights(imported):
    header, arrays, armature, mesh, _ = imported
    scene_import = addon_module("scene_import")
    n, k = arrays["skin_weights"].shape
    bake(mesh, armature)
    names = [g.name for g in mesh.vertex_groups]
    assert names == header["joint_names"]  # one group per joint, in joint order
    got = vertex_group_weights(mesh)
    want = dense_skin(arrays, len(names))
    # the stored weights (1/65535 steps, <= 7.7e-6 off) rounded again to multiples of 1/1023 (<= 4.9e-4)
    tolerance = 0.5 / SKIN_LEVELS + 0.5 / 65535 + 1e-7
    assert np.abs(got - want).max() <= tolerance
    np.testing.assert_allclose(got * SKIN_LEVELS, np.rint(got * SKIN_LEVELS), atol=1e-3)
    assert max(len(v.groups) for v in mesh.data.vertices) == k  # no zero-weight entries
    assert all(g.weight > 0 for v in mesh.data.vertices for g in v.groups)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=k * tolerance)
    bake(mesh, armature)  # again: the groups are replaced, not doubled
    assert [g.name for g in mesh.vertex_groups] == header["joint_names"]
    assert np.abs(vertex_group_weights(mesh) - got).max() == 0.0


def test_skin_weight_runs_edge_cases(scene):
    skin_groups = addon_module("skin_groups")
    assert skin_groups.SKIN_LEVELS == SKIN_LEVELS
    levels = SKIN_LEVELS
    # a joint twice in one row, weights that round to 0, a row of zeros
    indices = np.array([[3, 3, 1, 0], [2, 0, 1, 3], [0, 1, 2, 3]], np.uint16)
    weights = np.array([[0.25, 0.25, 0.5, 0.0], [1.0, 1e-4, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
    vertices, starts, joints, quantised = skin_groups.skin_weight_runs(indices, weights)
    runs = [(int(j), int(q), vertices[a:b].tolist()) for j, q, a, b in zip(joints, quantised, starts, starts[1:])]
    q4 = round(0.25 * levels)
    assert runs == [(1, round(0.5 * levels), [0]), (2, levels, [1]), (3, q4, [0, 0])]  # ADD sums the pair
    empty = skin_groups.skin_weight_runs(indices, np.zeros_like(weights))
    assert len(empty[0]) == 0 and empty[1].tolist() == [0] and len(empty[2]) == 0
    # more than 65536 (joint, weight) pairs: the two-pass sort gives the same runs
    rng = np.random.default_rng(0)
    indices = rng.integers(0, 300, (40_000, 4)).astype(np.uint16)
    weights = rng.random((40_000, 4)).astype(np.float32)
    vertices, starts, joints, quantised = skin_groups.skin_weight_runs(indices, weights, levels=60_000)
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
        vertices, starts, joints, quantised = skin_groups.skin_weight_runs(indices, weights, levels=65_535)
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
    bake(mesh, armature)
    assert [g.name for g in mesh.vertex_groups] == header["joint_names"]
    tolerance = 0.5 / SKIN_LEVELS + 0.5 / 65535 + 1e-7
    assert np.abs(vertex_group_weights(mesh) - dense_skin(arrays, 6)).max() <= tolerance


def test_sparse_skin_import_and_bake(scene):
    """Backend-like skins (zero weights pad the rows, runs of Gaussians share a row)."""
    scene_import = addon_module("scene_import")
    header, arrays = synthetic_avatar(1500, joints=30, k=8, seed=2, skin="sparse")
    weights = arrays["skin_weights"]
    assert (weights == 0).any() and np.allclose(weights.sum(1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(weights[0], weights[9])  # one texel: 10 Gaussians
    armature, mesh = scene_import.import_avatar(bpy.context, header, arrays)
    assert not mesh.vertex_groups
    bake(mesh, armature)
    assert [g.name for g in mesh.vertex_groups] == header["joint_names"]
    got = vertex_group_weights(mesh)
    assert np.abs(got - dense_skin(arrays, 30)).max() <= 0.5 / SKIN_LEVELS + 0.5 / 65535 + 1e-7
    kept = (np.rint(np.rint(weights * 65535) / 65535 * SKIN_LEVELS) > 0).sum(1)
    np.testing.assert_array_equal([len(v.groups) for v in mesh.data.vertices], kept)


def lbs(arrays, armature, names, normalise: bool = True) -> np.ndarray:
    """Reference LBS of the rest means with Blender's own pose-bone matrices: A_j = pose_j · rest_j⁻¹,
    means' = (sum_k w_k A[idx_k]) means, as backend/avatar/skinning.py `pose` (float64)."""
    binding = addon_module("binding")
    pose = np.array([np.array(armature.pose.bones[n].matrix) for n in names])
    skin = pose @ np.linalg.inv(binding.rest_matrices(armature).astype(np.float64))  # (J, 4, 4)
    w = arrays["skin_weights"].astype(np.float64)
    if normalise:
        w = w / np.maximum(w.sum(1, keepdims=True), 1e-30)
    blended = np.einsum("nk,nkab->nab", w, skin[arrays["skin_indices"].astype(np.int64)])
    means = np.c_[arrays["means"], np.ones(len(arrays["means"]))]
    return np.einsum("nab,nb->na", blended, means)[:, :3]


def positions(mesh) -> np.ndarray:
    co = np.empty(len(mesh.data.vertices) * 3, np.float32)
    mesh.data.attributes["position"].data.foreach_get("vector", co)
    return co.reshape(-1, 3)


def test_posing_moves_the_centres_like_lbs(imported):
    header, arrays, armature, mesh, _ = imported
    rng = np.random.default_rng(0)
    for pb in armature.pose.bones:
        q = np.r_[1.0, rng.normal(0, 0.3, 3)]
        pb.rotation_quaternion = q / np.linalg.norm(q)
    armature.pose.bones[0].location = (0.1, -0.05, 0.2)
    armature.pose.bones[3].scale = (1.2, 1.2, 1.2)  # proportion fitting scales bones: the children move out
    bpy.context.view_layer.update()  # binding's handlers pose the centres
    posed = positions(mesh)
    want = lbs(arrays, armature, header["joint_names"])
    assert np.abs(posed - arrays["means"]).max() > 0.05  # it moved
    # float32 matrices and points (~1e-7 relative, coordinates below ~3 m) and the stored weights (1/65535
    # steps, renormalised: <= 8 * 7.7e-6 relative of a lever arm below ~3 m)
    np.testing.assert_allclose(posed, want, atol=2e-4)
    np.testing.assert_allclose(posed, lbs(arrays, armature, header["joint_names"], normalise=False), atol=2e-4)
    # what is drawn: the evaluated mesh (the Geometry Nodes off) has the posed centres
    mesh.modifiers["GenLCA splats"].show_viewport = False
    evaluated = mesh.evaluated_get(bpy.context.evaluated_depsgraph_get()).data
    co = np.empty(len(evaluated.vertices) * 3, np.float32)
    evaluated.vertices.foreach_get("co", co)
    np.testing.assert_array_equal(co.reshape(-1, 3), posed)
    mesh.modifiers["GenLCA splats"].show_viewport = True
    # the rest pose again: exactly the rest centres, and the export reads the rest centres meanwhile
    np.testing.assert_array_equal(addon_module("scene_import").avatar_arrays(mesh)["means"], arrays["means"])
    for pb in armature.pose.bones:
        pb.rotation_quaternion, pb.location, pb.scale = (1, 0, 0, 0), (0, 0, 0), (1, 1, 1)
    bpy.context.view_layer.update()
    np.testing.assert_array_equal(positions(mesh), arrays["means"])


def test_weightless_splats_stay_and_a_turned_mesh_is_posed_in_its_space(scene):
    scene_import = addon_module("scene_import")
    header, arrays = synthetic_avatar(400, joints=12, k=3, seed=2)
    arrays["skin_weights"][:10] = 0.0
    armature, mesh = scene_import.import_avatar(bpy.context, header, arrays)
    rng = np.random.default_rng(4)
    for pb in armature.pose.bones:
        q = np.r_[1.0, rng.normal(0, 0.4, 3)]
        pb.rotation_quaternion = q / np.linalg.norm(q)
    mesh.matrix_parent_inverse = np.eye(4).tolist()
    mesh.location, mesh.rotation_euler = (0.2, 0.0, -0.1), (0.3, -0.2, 1.0)
    bpy.context.view_layer.update()
    posed = positions(mesh)
    np.testing.assert_array_equal(posed[:10], arrays["means"][:10])
    # in armature space the points move by the armature's LBS
    m = np.array(mesh.matrix_local, np.float64)  # mesh space -> armature space
    to_arm = lambda p: p @ m[:3, :3].T + m[:3, 3]  # noqa: E731
    want = lbs(dict(arrays, means=to_arm(arrays["means"].astype(np.float64))), armature, header["joint_names"])
    np.testing.assert_allclose(to_arm(posed.astype(np.float64))[10:], want[10:], atol=2e-4)


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
