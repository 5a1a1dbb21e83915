"""Posed splat orientations: the stored skin, `scene_import.update_splat_pose` against the backend's
LBS of rotations (a numpy copy of backend/avatar/skinning.py `pose`, and the backend's own function run by
GENLCA_BACKEND_PYTHON), the Geometry Nodes instances, and binding's handlers (hand-posing, frame changes,
bound avatars)."""
from __future__ import annotations

import json
import os
import subprocess
import textwrap

import bpy
import numpy as np
import pytest

from ..synthetic_avatar import synthetic_avatar
from .conftest import ROOT, addon_module

# tolerances: Blender's pose matrices are float32 (rotations within ~1e-6), the stored skin weights are
# multiples of 1/65535 (within 7.7e-6 of the backend's float weights)
EXACT_ATOL = 1e-5      # one bone, weight 1: only float32 rounding
BLENDED_ATOL = 1e-4    # several bones blended with the rounded weights


# ------------------------------------------------------------------ numpy quaternion helpers (w, x, y, z)
def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    aw, ax, ay, az = np.moveaxis(np.asarray(a, np.float64), -1, 0)
    bw, bx, by, bz = np.moveaxis(np.asarray(b, np.float64), -1, 0)
    return np.stack([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw], -1)


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q, np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    m = np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                  2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                  2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1)
    return m.reshape(q.shape[:-1] + (3, 3))


def matrix_to_quat(m: np.ndarray) -> np.ndarray:
    """Shepperd's method, w >= 0 (as backend/avatar/skinning.py matrix_to_quat)."""
    m = np.asarray(m, np.float64)
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    d21, d02, d10 = m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]
    s01, s02, s12 = m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1]
    diag = np.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    cands = np.stack([np.stack([diag[..., 0], d21, d02, d10], -1), np.stack([d21, diag[..., 1], s01, s02], -1),
                      np.stack([d02, s01, diag[..., 2], s12], -1), np.stack([d10, s02, s12, diag[..., 3]], -1)], -2)
    best = np.argmax(diag, -1)
    q = np.take_along_axis(cands, best[..., None, None].repeat(4, -1), -2)[..., 0, :]
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., :1] < 0, -q, q)


def same_rotation(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Per-row max component difference of two quaternion arrays, q and -q being the same rotation."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    sign = np.where((got * want).sum(-1, keepdims=True) < 0, -1.0, 1.0)
    return np.abs(got - sign * want).max(-1)


def backend_pose_rotations(arrays: dict, local: np.ndarray, root_translation=(0.0, 0.0, 0.0)) -> np.ndarray:
    """backend/avatar/skinning.py `pose` (LBS, not dual quaternions), its rotations only, in numpy:
    G_root = T(t) R_root P_root, G_j = G_parent (R_parent^-1 R_j) P_j, A_j = G_j R_j^-1; jq = quat(A_j);
    q = normalise(sum_k w_k sign_k jq[idx_k]) with the signs aligned to jq[idx_0]; rotations = q * rest."""
    rest = arrays["rest_matrices"].astype(np.float64)
    rest_inv = np.linalg.inv(rest)
    parents = arrays["joint_parents"]
    pose = np.tile(np.eye(4), (len(rest), 1, 1))
    pose[:, :3, :3] = quat_to_matrix(local)
    g = []
    for j, p in enumerate(parents):
        if p < 0:
            root = rest[j].copy()
            root[:3, 3] += root_translation
            g.append(root @ pose[j])
        else:
            g.append(g[p] @ (rest_inv[p] @ rest[j]) @ pose[j])
    a = np.stack(g) @ rest_inv
    jq = matrix_to_quat(a[:, :3, :3])
    idx, w = arrays["skin_indices"].astype(np.int64), arrays["skin_weights"].astype(np.float64)
    pivot = jq[idx[:, 0]]
    blend = np.zeros((len(idx), 4))
    for k in range(idx.shape[1]):
        q_k = jq[idx[:, k]]
        s = np.where((q_k * pivot).sum(-1, keepdims=True) < 0, -1.0, 1.0)
        blend += w[:, k:k + 1] * s * q_k
    with np.errstate(invalid="ignore"):  # rows without weight: NaN (the test leaves them out)
        blend /= np.linalg.norm(blend, axis=-1, keepdims=True)
    rot = arrays["rotations"] / np.linalg.norm(arrays["rotations"], axis=-1, keepdims=True)
    out = quat_mul(blend, rot)
    return out / np.linalg.norm(out, axis=-1, keepdims=True)


def random_local_rotations(j: int, seed: int, spread: float = 0.6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q = np.c_[np.ones(j), rng.normal(0, spread, (j, 3))]
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def pose_armature(armature, names, local) -> None:
    for name, q in zip(names, local):
        armature.pose.bones[name].rotation_quaternion = q.tolist()


def posed_rotation(mesh_obj) -> np.ndarray:
    attr = mesh_obj.data.attributes["posed_rotation"]
    out = np.empty(len(attr.data) * 4, np.float32)
    attr.data.foreach_get("value", out)
    return out.reshape(-1, 4)


def rest_rotation(mesh_obj) -> np.ndarray:
    return addon_module("scene_import").avatar_arrays(mesh_obj)["rotation"]


def subtree(parents: np.ndarray, root: int) -> set[int]:
    out = {root}
    for j, p in enumerate(parents):
        if p in out:
            out.add(j)
    return out


@pytest.fixture(autouse=True)
def fast_preview(scene):
    scene.genlca.fast_preview = True  # the handlers' posing (*Fast preview*); the standard rig: test_standard_rig.py


@pytest.fixture
def avatar(scene):
    """A 30-joint avatar, k=4 dense skin; Gaussians 0-99 skinned only to joint B (weight 1 in slot 0),
    100-199 only to joint O, outside B's subtree."""
    scene_import = addon_module("scene_import")
    header, arrays = synthetic_avatar(1200, joints=30, k=4, seed=11)
    parents = arrays["joint_parents"]
    b = 5
    o = next(j for j in range(30) if j not in subtree(parents, b))
    idx, w = arrays["skin_indices"], arrays["skin_weights"]
    idx[:100, 0], w[:100] = b, (1.0, 0.0, 0.0, 0.0)
    idx[100:200, 0], w[100:200] = o, (1.0, 0.0, 0.0, 0.0)
    armature, mesh = scene_import.import_avatar(bpy.context, header, arrays)
    return header, arrays, armature, mesh, b, o


# ------------------------------------------------------------------ storage
def test_skin_attributes_hold_the_top_k_skin_and_survive_save(avatar, tmp_path):
    header, arrays, armature, mesh, _, _ = avatar
    scene_import = addon_module("scene_import")
    names = [a.name for a in mesh.data.attributes if a.name.startswith("genlca_skin_")]
    assert names == [f"genlca_skin_{s}" for s in range(4)]
    assert all(mesh.data.attributes[n].data_type == "INT" and mesh.data.attributes[n].domain == "POINT"
               for n in names)
    idx, w = scene_import.splat_skin(mesh.data)
    np.testing.assert_array_equal(idx, arrays["skin_indices"])
    assert np.abs(w - arrays["skin_weights"]).max() <= 0.5 / 65535 + 1e-7
    pose_armature(armature, header["joint_names"], random_local_rotations(30, seed=2))
    bpy.context.view_layer.update()
    scene_import.update_splat_pose(mesh, armature)  # done already by the handlers, or now
    assert same_rotation(posed_rotation(mesh), rest_rotation(mesh)).max() > 0.3
    # saved and read back (appended from the file): skin, rest and posed orientations, the pose key
    path = tmp_path / "avatar.blend"
    bpy.data.libraries.write(str(path), {mesh.data})
    with bpy.data.libraries.load(str(path)) as (src, dst):
        dst.meshes = [mesh.data.name]
    loaded = dst.meshes[0]
    try:
        assert loaded is not None and loaded != mesh.data
        idx2, w2 = scene_import.splat_skin(loaded)
        np.testing.assert_array_equal(idx2, idx)
        np.testing.assert_array_equal(w2, w)
        for name in ("rotation", "posed_rotation"):
            a, b = (np.empty(len(m.vertices) * 4, np.float32) for m in (mesh.data, loaded))
            mesh.data.attributes[name].data.foreach_get("value", a)
            loaded.attributes[name].data.foreach_get("value", b)
            np.testing.assert_array_equal(a, b)
        assert list(loaded[scene_import.POSE_KEY]) == list(mesh.data[scene_import.POSE_KEY])
    finally:
        bpy.data.meshes.remove(loaded)


# ------------------------------------------------------------------ update_splat_pose
def test_rest_pose_gives_the_rest_rotation(avatar):
    _, _, armature, mesh, _, _ = avatar
    scene_import = addon_module("scene_import")
    assert scene_import.update_splat_pose(mesh, armature, force=True)
    np.testing.assert_array_equal(posed_rotation(mesh), rest_rotation(mesh))
    # unchanged pose: nothing to write
    assert not scene_import.update_splat_pose(mesh, armature)


def test_a_90_degree_bone_turns_its_splats_by_90_degrees(avatar):
    header, arrays, armature, mesh, b, o = avatar
    scene_import = addon_module("scene_import")
    name = header["joint_names"][b]
    local = np.array([np.cos(np.pi / 4), np.sin(np.pi / 4), 0.0, 0.0])  # 90 degrees about the bone's X
    armature.pose.bones[name].rotation_quaternion = local.tolist()
    bpy.context.view_layer.update()
    scene_import.update_splat_pose(mesh, armature, force=True)
    got = posed_rotation(mesh)
    rest = rest_rotation(mesh)
    r_b = arrays["rest_matrices"][b, :3, :3].astype(np.float64)
    turn = matrix_to_quat(r_b @ quat_to_matrix(local) @ r_b.T)  # the bone's turn in armature space
    axis = r_b[:, 0]
    np.testing.assert_allclose(turn, np.r_[np.cos(np.pi / 4), np.sin(np.pi / 4) * axis], atol=1e-7)
    assert same_rotation(got[:100], quat_mul(turn, rest[:100])).max() < EXACT_ATOL
    # the splats' frames turned by exactly 90 degrees about the bone's axis
    frames_before, frames_after = quat_to_matrix(rest[:100]), quat_to_matrix(got[:100])
    relative = frames_after @ np.swapaxes(frames_before, -1, -2)
    np.testing.assert_allclose(np.einsum("nii->n", relative), 1.0, atol=EXACT_ATOL)  # trace 1 + 2 cos 90°
    np.testing.assert_allclose(relative @ axis, np.broadcast_to(axis, (100, 3)), atol=EXACT_ATOL)
    # splats skinned only to a joint outside the bone's subtree keep their rest orientation
    assert same_rotation(got[100:200], rest[100:200]).max() < EXACT_ATOL
    moved = np.isin(arrays["skin_indices"], list(subtree(arrays["joint_parents"], b))) & (arrays["skin_weights"] > 0)
    untouched = ~moved.any(1)
    assert untouched.sum() >= 100 and same_rotation(got[untouched], rest[untouched]).max() < EXACT_ATOL
    assert same_rotation(got[~untouched], rest[~untouched]).min() > 1e-3  # the others turned, at least a bit
    # and the posed orientations are unit quaternions
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("table", [True, False], ids=["sign-table", "no-table"])
def test_matches_the_backends_lbs_of_rotations(avatar, table, monkeypatch):
    header, arrays, armature, mesh, _, _ = avatar
    scene_import = addon_module("scene_import")
    if not table:
        monkeypatch.setattr(addon_module("splat_pose"), "_SIGN_TABLE_MAX_JOINTS", 0)
    local = random_local_rotations(30, seed=4)
    pose_armature(armature, header["joint_names"], local)
    armature.pose.bones[header["joint_names"][0]].location = (0.1, 0.2, -0.1)  # moves, does not turn
    bpy.context.view_layer.update()
    assert scene_import.update_splat_pose(mesh, armature, force=True)
    want = backend_pose_rotations(arrays, local, root_translation=(0.1, 0.2, -0.1))
    got = posed_rotation(mesh)
    assert same_rotation(got, rest_rotation(mesh)).max() > 0.3  # they turned
    err = same_rotation(got, want)
    assert err.max() < BLENDED_ATOL, err.max()


def test_matches_the_backend_itself(scene, tmp_path):
    """The backend's own `skinning.pose` (torch, in GENLCA_BACKEND_PYTHON) on the same avatar and pose."""
    python = os.environ.get("GENLCA_BACKEND_PYTHON")
    if not python:
        pytest.skip("GENLCA_BACKEND_PYTHON is not set (make test sets it to .venv/bin/python)")
    scene_import = addon_module("scene_import")
    header, arrays = synthetic_avatar(3000, joints=40, k=8, seed=6, skin="sparse")
    armature, mesh = scene_import.import_avatar(bpy.context, header, arrays)
    local = random_local_rotations(40, seed=9, spread=0.8)
    pose_armature(armature, header["joint_names"], local)
    bpy.context.view_layer.update()
    scene_import.update_splat_pose(mesh, armature, force=True)
    np.savez(tmp_path / "in.npz", local=local.astype(np.float32), **arrays)
    script = textwrap.dedent("""
        import sys, numpy as np, torch
        from backend.avatar.gaussians import Gaussians
        from backend.avatar.skinning import Skeleton, pose
        a = np.load(sys.argv[1])
        t = lambda k: torch.from_numpy(a[k])
        g = Gaussians(means=t("means"), rotations=t("rotations"), log_scales=t("log_scales"),
                      opacity_logits=t("opacity_logits"), sh=t("sh"), skin_indices=t("skin_indices").long(),
                      skin_weights=t("skin_weights"))
        sk = Skeleton([f"j{i}" for i in range(len(a["joint_parents"]))], t("joint_parents").long(),
                      t("rest_matrices"))
        posed = pose(g, sk, t("local"))
        np.save(sys.argv[2], posed.rotations.numpy())
        np.save(sys.argv[3], posed.means.numpy())
    """)
    run = subprocess.run([python, "-c", script, str(tmp_path / "in.npz"), str(tmp_path / "out.npy"),
                          str(tmp_path / "means.npy")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    want = np.load(tmp_path / "out.npy")
    err = same_rotation(posed_rotation(mesh), want)
    assert err.max() < BLENDED_ATOL, err.max()
    # the centres too: float32 on both sides, the stored weights within 7.7e-6 each (lever arms below 3 m)
    centres = np.empty(len(mesh.data.vertices) * 3, np.float32)
    mesh.data.attributes["position"].data.foreach_get("vector", centres)
    np.testing.assert_allclose(centres.reshape(-1, 3), np.load(tmp_path / "means.npy"), atol=2e-4)
    # and the numpy copy of the formula agrees with the backend
    assert same_rotation(backend_pose_rotations(arrays, local), want).max() < 1e-5


def test_weightless_splats_and_turned_objects(scene):
    scene_import = addon_module("scene_import")
    header, arrays = synthetic_avatar(400, joints=12, k=3, seed=2)
    arrays["skin_weights"][:10] = 0.0  # no weight: the Armature modifier leaves them, so do we
    armature, mesh = scene_import.import_avatar(bpy.context, header, arrays)
    local = random_local_rotations(12, seed=1)
    pose_armature(armature, header["joint_names"], local)
    # the mesh turned against its armature (not how the import leaves it): the bone turns are conjugated
    mesh.matrix_parent_inverse = np.eye(4).tolist()
    mesh.rotation_euler = (0.3, -0.2, 1.0)
    bpy.context.view_layer.update()
    scene_import.update_splat_pose(mesh, armature, force=True)
    got, rest = posed_rotation(mesh), rest_rotation(mesh)
    assert same_rotation(got[:10], rest[:10]).max() < 1e-6
    m = np.array(mesh.matrix_local)[:3, :3]  # mesh space -> armature space
    world_rest = matrix_to_quat(m @ quat_to_matrix(rest))
    want_world = backend_pose_rotations({**arrays, "rotations": world_rest.astype(np.float32)}, local)
    got_world = matrix_to_quat(m @ quat_to_matrix(got))
    assert same_rotation(got_world[10:], want_world[10:]).max() < BLENDED_ATOL


# ------------------------------------------------------------------ Geometry Nodes
def instance_rotations(mesh_obj) -> np.ndarray:
    """(N, 3, 3) rotations of the splat instances (scale divided out), in point order, object space."""
    depsgraph = bpy.context.evaluated_depsgraph_get()
    world_inv = np.linalg.inv(np.array(mesh_obj.matrix_world))
    found = {}
    for inst in depsgraph.object_instances:
        if inst.is_instance and inst.parent is not None and inst.parent.original == mesh_obj:
            found[inst.persistent_id[1]] = world_inv @ np.array(inst.matrix_world)
    rot = np.stack([found[i][:3, :3] for i in range(len(found))])
    return rot / np.linalg.norm(rot, axis=-2, keepdims=True)


def test_the_splat_tree_orients_instances_by_posed_rotation(avatar):
    header, arrays, armature, mesh, _, _ = avatar
    tree = mesh.modifiers["GenLCA splats"].node_group
    names = {n.inputs["Name"].default_value for n in tree.nodes if n.bl_idname == "GeometryNodeInputNamedAttribute"}
    assert {"rotation", "posed_rotation"} <= names
    # without posed_rotation the instances follow "rotation"
    bpy.context.view_layer.update()
    if "posed_rotation" in mesh.data.attributes:  # the handlers may have written the rest orientations
        mesh.data.attributes.remove(mesh.data.attributes["posed_rotation"])
    rest = rest_rotation(mesh)
    np.testing.assert_allclose(instance_rotations(mesh), quat_to_matrix(rest), atol=2e-5)
    # posed: the handlers write posed_rotation and the instances follow it
    pose_armature(armature, header["joint_names"], random_local_rotations(30, seed=3))
    bpy.context.view_layer.update()
    got = posed_rotation(mesh)
    assert same_rotation(got, rest).max() > 0.3
    np.testing.assert_allclose(instance_rotations(mesh), quat_to_matrix(got), atol=2e-5)


# ------------------------------------------------------------------ handlers
def test_hand_posing_updates_through_the_handlers(avatar):
    header, arrays, armature, mesh, b, _ = avatar
    scene_import, binding = addon_module("scene_import"), addon_module("binding")
    for name, handler in binding._HANDLERS:
        assert handler in getattr(bpy.app.handlers, name)
    local = random_local_rotations(30, seed=5)
    pose_armature(armature, header["joint_names"], local)
    bpy.context.view_layer.update()
    want = backend_pose_rotations(arrays, local)
    assert same_rotation(posed_rotation(mesh), want).max() < BLENDED_ATOL
    # a constraint the prediction from the pose channels does not know: the evaluated pose wins
    name = header["joint_names"][b]
    limit = armature.pose.bones[name].constraints.new("LIMIT_ROTATION")
    limit.use_limit_x = limit.use_limit_y = limit.use_limit_z = True  # all limits 0: the bone stays at rest
    limit.owner_space = "LOCAL"
    armature.pose.bones[name].rotation_quaternion = (np.cos(0.6), np.sin(0.6), 0.0, 0.0)
    bpy.context.view_layer.update()
    got = posed_rotation(mesh)
    evaluated = armature.evaluated_get(bpy.context.evaluated_depsgraph_get())
    r_b = arrays["rest_matrices"][b, :3, :3]
    pose_b = np.array(evaluated.pose.bones[name].matrix)[:3, :3]
    turn = matrix_to_quat(pose_b @ r_b.T)
    assert same_rotation(got[:100], quat_mul(turn, rest_rotation(mesh)[:100])).max() < EXACT_ATOL
    # matches a fresh computation from the evaluated pose
    before = got.copy()
    assert scene_import.update_splat_pose(mesh, armature, force=True)
    assert np.abs(posed_rotation(mesh) - before).max() < 1e-6


def test_keyframes_and_bindings_update_on_frame_change(avatar, scene, monkeypatch):
    header, arrays, armature, mesh, _, _ = avatar
    scene_import, binding = addon_module("scene_import"), addon_module("binding")
    names = header["joint_names"]
    # keyframed (unbound): frame_change_post uses the evaluated pose
    armature.animation_data_create()
    poses = {1: random_local_rotations(30, seed=7), 3: random_local_rotations(30, seed=8)}
    for frame, local in poses.items():
        pose_armature(armature, names, local)
        for name in names:
            armature.pose.bones[name].keyframe_insert("rotation_quaternion", frame=frame)
    scene.frame_set(3)
    want = backend_pose_rotations(arrays, poses[3])
    assert same_rotation(posed_rotation(mesh), want).max() < BLENDED_ATOL
    scene.frame_set(1)
    assert same_rotation(posed_rotation(mesh), backend_pose_rotations(arrays, poses[1])).max() < BLENDED_ATOL
    # reading the pose over frames (render through the backend) leaves the splats alone
    writes = []
    update = scene_import.update_splat_pose
    monkeypatch.setattr(scene_import, "update_splat_pose", lambda *a, **k: writes.append(update(*a, **k)))
    binding.read_pose_frames(armature, 1, 3, scene)
    monkeypatch.undo()
    assert scene.frame_current == 1 and not any(writes)  # back at frame 1: nothing to rewrite
    assert same_rotation(posed_rotation(mesh), backend_pose_rotations(arrays, poses[1])).max() < BLENDED_ATOL
    # bound to another avatar with the same joints: posed from the pose just written (not yet evaluated)
    source_header, source_arrays = synthetic_avatar(10, joints=30, k=4, seed=11)
    source, source_mesh = scene_import.import_avatar(bpy.context, source_header, source_arrays, name="source")
    bpy.data.objects.remove(source_mesh)
    armature.animation_data_clear()
    binding.bind(armature, source, bone_map={n: n for n in names}, rig="genlca")
    source.animation_data_create()
    src_pose = random_local_rotations(30, seed=12)
    for frame, local in ((1, np.tile([1.0, 0, 0, 0], (30, 1))), (2, src_pose)):
        pose_armature(source, names, local)
        for name in names:
            source.pose.bones[name].keyframe_insert("rotation_quaternion", frame=frame)
    scene.frame_set(2)
    evaluated = armature.evaluated_get(bpy.context.evaluated_depsgraph_get())
    got = posed_rotation(mesh)
    local, _ = binding.local_pose(binding.rest_matrices(armature),
                                  binding._matrices(evaluated.pose.bones, "matrix", 30)[
                                      binding._order(evaluated.pose.bones, names)], binding.joint_parents(armature))
    assert same_rotation(local, src_pose).max() < 1e-4  # same skeleton: the avatar copies the source
    assert same_rotation(got, backend_pose_rotations(arrays, src_pose)).max() < BLENDED_ATOL
    binding.unbind(armature)


def test_handlers_skip_large_avatars_and_unregister(avatar, monkeypatch):
    header, arrays, armature, mesh, _, _ = avatar
    scene_import, binding = addon_module("scene_import"), addon_module("binding")
    bpy.context.view_layer.update()
    before = posed_rotation(mesh).copy()
    monkeypatch.setattr(scene_import, "AUTO_UPDATE_MAX_SPLATS", 1000)  # the avatar has 1200
    pose_armature(armature, header["joint_names"], random_local_rotations(30, seed=13))
    bpy.context.view_layer.update()
    np.testing.assert_array_equal(posed_rotation(mesh), before)
    assert scene_import.update_splat_pose(mesh, armature)  # called directly, it still works
    try:
        binding.unregister()
        for name, handler in binding._HANDLERS:
            assert handler not in getattr(bpy.app.handlers, name)
    finally:
        binding.register()
    # a broken avatar (joint names that do not match its bones) does not raise into Blender
    monkeypatch.setattr(scene_import, "AUTO_UPDATE_MAX_SPLATS", 10**9)
    armature["genlca_joint_names"] = json.dumps(["nope"] + header["joint_names"][1:])
    try:
        pose_armature(armature, header["joint_names"], random_local_rotations(30, seed=14))
        bpy.context.view_layer.update()
        bpy.context.scene.frame_set(2)
    finally:
        armature["genlca_joint_names"] = json.dumps(header["joint_names"])


def test_an_older_import_with_an_armature_modifier_gets_orientations_only(avatar):
    """Files saved before the centres were posed here: vertex groups and an Armature modifier deform the
    points, no REST_POSITION. The handlers must not move the points a second time."""
    header, arrays, armature, mesh, _, _ = avatar
    scene_import = addon_module("scene_import")
    addon_module("skin_groups").bake_vertex_groups(mesh, header["joint_names"])
    mesh.data.attributes.remove(mesh.data.attributes[scene_import.REST_POSITION])
    deform = mesh.modifiers.new("Armature", "ARMATURE")
    deform.object = armature
    bpy.ops.object.select_all(action="DESELECT")
    with bpy.context.temp_override(object=mesh, active_object=mesh):
        bpy.ops.object.modifier_move_to_index(modifier="Armature", index=0)
    local = random_local_rotations(30, seed=21)
    pose_armature(armature, header["joint_names"], local)
    bpy.context.view_layer.update()
    assert addon_module("splat_pose").splat_armature(mesh) == armature
    co = np.empty(len(arrays["means"]) * 3, np.float32)
    mesh.data.attributes["position"].data.foreach_get("vector", co)
    np.testing.assert_array_equal(co.reshape(-1, 3), arrays["means"])  # the mesh itself stays at rest
    assert same_rotation(posed_rotation(mesh), backend_pose_rotations(arrays, local)).max() < BLENDED_ATOL
    mesh.modifiers["GenLCA splats"].show_viewport = False
    evaluated = mesh.evaluated_get(bpy.context.evaluated_depsgraph_get()).data
    evaluated.vertices.foreach_get("co", co)
    assert np.abs(co.reshape(-1, 3) - arrays["means"]).max() > 0.05  # the modifier deforms it, once
