"""Avatars as files with no backend: a GenLCA avatar .safetensors (rigged) and a 3DGS .ply (splats) imported
through the File > Import operator, re-exported through File > Export, read back with bridge.files.avatar;
a corrupt or foreign file is refused with a report that names it, and nothing is left half-written."""
from __future__ import annotations

import bpy
import numpy as np
import pytest

from .conftest import addon_module


def _avatar(rng: np.random.Generator, n: int = 300, sh_bands: int = 4, rigged: bool = True):
    """A small rigged avatar (4 joints in a chain along +Z, 2 skin weights each) with random splats."""
    files = addon_module("file_io").avatar_files
    rot = rng.normal(size=(n, 4)).astype(np.float32)
    rot /= np.linalg.norm(rot, axis=1, keepdims=True)
    arrays = {"means": rng.normal(0, 0.3, (n, 3)).astype(np.float32) + np.float32([0, 0, 1]),
              "rotations": rot, "log_scales": rng.uniform(-6, -3, (n, 3)).astype(np.float32),
              "opacity_logits": rng.uniform(-30, 30, n).astype(np.float32),  # saturated opacities too
              "sh": rng.normal(0, 1.5, (n, sh_bands, 3)).astype(np.float32)}  # colours outside [0, 1] too
    names = []
    if rigged:
        j = 4
        rest = np.tile(np.eye(4, dtype=np.float32), (j, 1, 1))
        rest[:, 2, 3] = np.arange(j) * 0.5
        first = rng.integers(0, j, n)
        w0 = rng.uniform(0.5, 1.0, n).astype(np.float32)
        arrays.update({"skin_indices": np.stack([first, (first + 1) % j], 1).astype(np.uint16),
                       "skin_weights": np.stack([w0, 1 - w0], 1).astype(np.float32),
                       "joint_parents": np.arange(-1, j - 1, dtype=np.int32), "rest_matrices": rest,
                       "joint_tails": rest[:, :3, 3] + np.float32([0, 0, 0.4])})
        names = ["hips", "spine", "neck", "head"]
    return files.AvatarFile(arrays, names, {"avatar_id": "abc123", "prompt": "a test"})


def _assert_same_splats(got: dict, want: dict, atol_scale: float = 2e-6) -> None:
    np.testing.assert_array_equal(got["means"], want["means"])
    np.testing.assert_array_equal(got["opacity_logits"], want["opacity_logits"])
    np.testing.assert_array_equal(got["sh"], want["sh"])
    np.testing.assert_allclose(got["rotations"], want["rotations"], atol=1e-6)  # unit quaternions, renormalised
    np.testing.assert_allclose(got["log_scales"], want["log_scales"], atol=atol_scale)  # exp then log in float32


def test_safetensors_avatar_imports_rigged_and_exports_again_without_a_backend(scene, tmp_path):
    files, session_mod = addon_module("file_io").avatar_files, addon_module("session")
    session_mod.close_session()
    avatar = _avatar(np.random.default_rng(0))
    source = files.write_avatar(tmp_path / "colleague.safetensors", avatar)

    assert bpy.ops.genlca.import_file(filepath=str(source)) == {"FINISHED"}
    assert session_mod.current_session() is None  # no backend was asked
    item = scene.genlca.avatars[-1]
    armature = item.armature
    assert armature is not None and item.label == "colleague" and item.avatar_id == "abc123"
    assert [b.name for b in armature.data.bones] == avatar.joint_names
    (mesh,) = armature.children
    assert len(mesh.data.vertices) == 300 and mesh.parent == armature and not mesh.vertex_groups
    assert [m.name for m in mesh.modifiers] == ["GenLCA splats"]  # the handlers pose it: no Armature modifier

    bpy.context.view_layer.objects.active = armature
    out = tmp_path / "again.safetensors"
    assert bpy.ops.genlca.export_file(filepath=str(out)) == {"FINISHED"}
    back = files.read_avatar_file(out)
    _assert_same_splats(back.arrays, avatar.arrays)
    np.testing.assert_array_equal(back.arrays["skin_indices"], avatar.arrays["skin_indices"])
    np.testing.assert_allclose(back.arrays["skin_weights"], avatar.arrays["skin_weights"], atol=7.7e-6)  # 1/65535
    for key in ("joint_parents", "rest_matrices", "joint_tails"):
        np.testing.assert_array_equal(back.arrays[key], avatar.arrays[key])
    assert back.joint_names == avatar.joint_names and back.meta["prompt"] == "a test"

    # another armature active (a mocap rig): export takes the avatar selected in the panel's list
    other = bpy.data.objects.new("mocap", bpy.data.armatures.new("mocap"))
    scene.collection.objects.link(other)
    bpy.context.view_layer.objects.active = other
    assert bpy.ops.genlca.export_file(filepath=str(tmp_path / "listed.ply")) == {"FINISHED"}
    np.testing.assert_array_equal(files.read_avatar_file(tmp_path / "listed.ply").arrays["means"],
                                  avatar.arrays["means"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.safetensors", "colleague.safetensors", "listed.ply"]


def test_ply_imports_as_splats_and_round_trips_through_y_up(scene, tmp_path):
    file_io = addon_module("file_io")
    files = file_io.avatar_files
    avatar = _avatar(np.random.default_rng(1), n=200, sh_bands=16, rigged=False)  # SH degree 3
    source = files.write_ply(tmp_path / "splats.ply", avatar.arrays)
    assert b"comment genlca axes=z-up" in source.read_bytes()[:200]

    assert bpy.ops.genlca.import_file(filepath=str(source)) == {"FINISHED"}
    mesh = bpy.data.objects["GenLCA splats splats"]
    assert mesh.parent is None and "Armature" not in mesh.modifiers and not mesh.vertex_groups
    assert len(scene.genlca.avatars) == 0  # unrigged: nothing to bind

    bpy.context.view_layer.objects.active = mesh
    y_up = tmp_path / "y_up.ply"
    assert bpy.ops.genlca.export_file(filepath=str(y_up), y_up=True) == {"FINISHED"}
    assert b"comment genlca axes=y-up" in y_up.read_bytes()[:200]
    raw = np.frombuffer(y_up.read_bytes().split(b"end_header\n", 1)[1], "<f4").reshape(200, 62)
    np.testing.assert_allclose(raw[:, 0:3], avatar.arrays["means"][:, [0, 2, 1]] * [1, 1, -1], atol=1e-6)

    # a Y-up file comes back Z-up: import it, export it plain, same splats (SH rotated there and back)
    assert bpy.ops.genlca.import_file(filepath=str(y_up)) == {"FINISHED"}
    bpy.context.view_layer.objects.active = bpy.data.objects["GenLCA y_up splats"]
    z_up = tmp_path / "z_up.ply"
    assert bpy.ops.genlca.export_file(filepath=str(z_up)) == {"FINISHED"}
    back = files.read_avatar_file(z_up).arrays
    np.testing.assert_allclose(back["means"], avatar.arrays["means"], atol=1e-6)
    np.testing.assert_allclose(back["sh"], avatar.arrays["sh"], atol=1e-4)
    np.testing.assert_allclose(np.abs((back["rotations"] * avatar.arrays["rotations"]).sum(1)), 1.0, atol=1e-5)
    np.testing.assert_array_equal(back["opacity_logits"], avatar.arrays["opacity_logits"])

    # splats have no skeleton: .safetensors is refused by name and nothing is written
    with pytest.raises(RuntimeError, match="without a skeleton; export it as .ply"):
        bpy.ops.genlca.export_file(filepath=str(tmp_path / "no.safetensors"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["splats.ply", "y_up.ply", "z_up.ply"]


def test_corrupt_and_foreign_files_get_a_report_naming_them(scene, tmp_path):
    files = addon_module("file_io").avatar_files
    good = files.write_avatar(tmp_path / "good.safetensors", _avatar(np.random.default_rng(2)))
    data = good.read_bytes()
    cases = {"truncated.safetensors": (data[:len(data) // 2], "truncated or damaged"),
             "garbage.safetensors": (b"\xff" * 64, "not a safetensors file"),
             "noheader.ply": (b"ply\nformat ascii 1.0\n", "not a PLY file"),
             "mesh.ply": (b"ply\nformat binary_little_endian 1.0\nelement vertex 1\nproperty float x\n"
                          b"property float y\nproperty float z\nend_header\n" + bytes(12), "missing 3DGS properties"),
             "photo.png": (b"\x89PNG", "expected a .safetensors avatar or a .ply")}
    for name, (blob, problem) in cases.items():
        path = tmp_path / name
        path.write_bytes(blob)
        with pytest.raises(RuntimeError) as err:
            bpy.ops.genlca.import_file(filepath=str(path))
        message = str(err.value)
        assert name in message and problem in message and "Traceback" not in message, message
    assert not [o for o in bpy.data.objects] and len(scene.genlca.avatars) == 0  # nothing half-imported
