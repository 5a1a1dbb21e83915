"""Build a rigged avatar in the scene from a `get_avatar` result (bridge.protocol.AVATAR_ARRAYS).

Result: an armature object (one bone per joint, edit bones from the rest matrices: head = translation,
+Y towards the tail, roll from the matrix) and, parented to it, a mesh object with one vertex per
Gaussian and no faces. The mesh carries the attributes "scale" (exp of log-scale, FLOAT_VECTOR),
"rotation" (QUATERNION, wxyz), "opacity" (sigmoid of the logit), "color" (SH DC -> linear RGBA), vertex
groups with the top-k skin weights, an Armature modifier (posing deforms it in the viewport) and a
Geometry Nodes modifier that draws the splats as ellipsoids.

The Armature modifier moves the splat centres; splat orientations stay as imported (the backend's
renderer rotates them properly). `import_steps` yields between stages so the session can spread a large
import over several timer ticks; `import_avatar` runs them all.
"""
from __future__ import annotations

import json
from typing import Any, Iterator, Mapping

import bpy
import numpy as np
from mathutils import Matrix

from . import splat_nodes
from ._bridge import protocol

SH_C0 = 0.28209479177387814


def check_avatar_arrays(arrays: Mapping[str, np.ndarray], joint_names: list[str]) -> tuple[int, int, int]:
    """Check every array of AVATAR_ARRAYS against its dtype and shape pattern; returns (N, J, k)."""
    missing = sorted(set(protocol.AVATAR_ARRAYS) - set(arrays))
    if missing:
        raise ValueError(f"the avatar lacks the arrays {missing}")
    dims: dict[str, int] = {"J": len(joint_names)}
    for name, (dtype, pattern) in protocol.AVATAR_ARRAYS.items():
        a = arrays[name]
        if np.dtype(a.dtype) != np.dtype(dtype):
            raise ValueError(f"expected {name} of dtype {dtype}, got {a.dtype}")
        want = pattern.split(",")
        if a.ndim != len(want):
            raise ValueError(f"expected {name} of shape ({pattern}), got {a.shape}")
        for sym, size in zip(want, a.shape):
            if sym.isdigit():
                if int(sym) != size:
                    raise ValueError(f"expected {name} of shape ({pattern}), got {a.shape}")
            elif dims.setdefault(sym, size) != size:
                raise ValueError(f"{name} has {sym}={size}, other arrays have {sym}={dims[sym]}")
    if not 1 <= dims["k"] <= 8:
        raise ValueError(f"expected 1 to 8 skin weights per Gaussian, got {dims['k']}")
    parents = arrays["joint_parents"]
    if ((parents >= np.arange(dims["J"])) | (parents < -1)).any():
        raise ValueError("joint_parents must list each parent before its child (-1 for the root)")
    if int(arrays["skin_indices"].max(initial=0)) >= dims["J"]:
        raise ValueError(f"skin_indices refer to joint {int(arrays['skin_indices'].max())} of {dims['J']}")
    return dims["N"], dims["J"], dims["k"]


def _srgb_to_linear(c: np.ndarray) -> np.ndarray:
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _collection(context: bpy.types.Context, collection: bpy.types.Collection | None) -> bpy.types.Collection:
    return collection if collection is not None else context.scene.collection


def build_armature(context: bpy.types.Context, name: str, joint_names: list[str], parents: np.ndarray,
                   rest_matrices: np.ndarray, joint_tails: np.ndarray,
                   collection: bpy.types.Collection | None = None) -> bpy.types.Object:
    """An armature object whose bones match the joints (names, parents, rest frames, tails)."""
    arm = bpy.data.armatures.new(name)
    obj = bpy.data.objects.new(name, arm)
    _collection(context, collection).objects.link(obj)
    view_layer = context.view_layer
    previous = view_layer.objects.active
    if previous is not None and previous.mode != "OBJECT":
        with context.temp_override(active_object=previous, object=previous):
            bpy.ops.object.mode_set(mode="OBJECT")
    view_layer.objects.active = obj
    with context.temp_override(active_object=obj, object=obj, selected_objects=[obj]):
        bpy.ops.object.mode_set(mode="EDIT")
        bones = []
        for j, joint in enumerate(joint_names):
            eb = arm.edit_bones.new(joint)
            head = rest_matrices[j, :3, 3]
            length = float(np.linalg.norm(joint_tails[j] - head))
            eb.head, eb.tail = (0.0, 0.0, 0.0), (0.0, max(length, 1e-3), 0.0)
            eb.matrix = Matrix(rest_matrices[j].astype(np.float64).tolist())  # keeps the length
            if parents[j] >= 0:
                eb.parent = bones[parents[j]]
            bones.append(eb)
        bpy.ops.object.mode_set(mode="OBJECT")
    if previous is not None and previous.name in view_layer.objects:
        view_layer.objects.active = previous
    for pb in obj.pose.bones:
        pb.rotation_mode = "QUATERNION"
    obj["genlca_joint_names"] = json.dumps(joint_names)
    return obj


def _bake_skin_groups(context: bpy.types.Context, obj: bpy.types.Object, tree: bpy.types.GeometryNodeTree) -> None:
    """Skin attributes -> vertex groups, through a bake tree (see splat_nodes): evaluate, keep the result."""
    mod = obj.modifiers.new("GenLCA skin bake", "NODES")
    mod.node_group = tree
    depsgraph = context.evaluated_depsgraph_get()
    baked = bpy.data.meshes.new_from_object(obj.evaluated_get(depsgraph), preserve_all_data_layers=False,
                                            depsgraph=depsgraph)
    obj.modifiers.remove(mod)
    old, obj.data = obj.data, baked
    baked.name = old.name
    bpy.data.meshes.remove(old)


def import_steps(context: bpy.types.Context, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
                 collection: bpy.types.Collection | None = None, name: str | None = None,
                 out: dict | None = None, bake_chunk: int | None = None) -> Iterator[tuple[int, int]]:
    """The import as a generator of stages (for the session's timer); `out` receives "armature", "mesh".

    bake_chunk: joints per vertex-group bake (a multiple of 4); None bakes all joints at once (fastest in
    total; smaller chunks keep each step short: ~0.4 ms per joint per 100k Gaussians)."""
    out = {} if out is None else out
    joint_names = [str(n) for n in header["joint_names"]]
    n, j_count, k = check_avatar_arrays(arrays, joint_names)
    avatar_id = str(header.get("avatar_id", ""))
    name = name or f"GenLCA {avatar_id[:8] or 'avatar'}"
    total = 4

    armature = build_armature(context, name, joint_names, arrays["joint_parents"], arrays["rest_matrices"],
                              arrays["joint_tails"], collection)
    armature["genlca_avatar_id"] = avatar_id
    armature["genlca_meta"] = json.dumps(header.get("meta", {}), default=str)
    out["armature"] = armature
    yield 1, total

    mesh = bpy.data.meshes.new(name + " splats")
    mesh.vertices.add(n)
    mesh.vertices.foreach_set("co", np.ascontiguousarray(arrays["means"], dtype=np.float32).ravel())
    # dense weights, four joints per FLOAT_COLOR attribute: (P, N, 4), for the bake tree
    packed = np.zeros((splat_nodes.skin_pack_count(j_count), n, 4), np.float32)
    rows = np.arange(n)
    skin_idx = arrays["skin_indices"].astype(np.int64)
    for slot in range(k):
        packed[skin_idx[:, slot] // 4, rows, skin_idx[:, slot] % 4] += arrays["skin_weights"][:, slot]
    for p in range(packed.shape[0]):
        mesh.attributes.new(f"skin_pack_{p}", "FLOAT_COLOR", "POINT").data.foreach_set("color", packed[p].ravel())
        if bake_chunk is not None and p % 8 == 7:
            yield 2, total
    del packed
    obj = bpy.data.objects.new(name + " splats", mesh)
    _collection(context, collection).objects.link(obj)
    obj["genlca_avatar_id"] = avatar_id
    out["mesh"] = obj
    yield 2, total

    for joint in joint_names:
        obj.vertex_groups.new(name=joint)
    chunk = j_count if bake_chunk is None else max(4, bake_chunk // 4 * 4)
    for start in range(0, j_count, chunk):
        steps = splat_nodes.skin_bake_tree_steps(joint_names, start, start + chunk)  # cached; sliced when built
        while True:
            try:
                next(steps)
                yield 2, total
            except StopIteration as done:
                tree = done.value
                break
        _bake_skin_groups(context, obj, tree)
        yield 3, total
    for attr in [a.name for a in obj.data.attributes if a.name.startswith("skin_pack_")]:
        obj.data.attributes.remove(obj.data.attributes[attr])

    mesh = obj.data
    scale = np.exp(arrays["log_scales"].astype(np.float32))  # (N, 3)
    mesh.attributes.new("scale", "FLOAT_VECTOR", "POINT").data.foreach_set("vector", scale.ravel())
    rotations = arrays["rotations"].astype(np.float32)
    rotations = rotations / np.maximum(np.linalg.norm(rotations, axis=1, keepdims=True), 1e-12)  # (N, 4) wxyz
    mesh.attributes.new("rotation", "QUATERNION", "POINT").data.foreach_set("value", rotations.ravel())
    opacity = 1.0 / (1.0 + np.exp(-arrays["opacity_logits"].astype(np.float32)))  # (N,)
    mesh.attributes.new("opacity", "FLOAT", "POINT").data.foreach_set("value", opacity)
    rgb = np.clip(0.5 + SH_C0 * arrays["sh"][:, 0, :].astype(np.float32), 0.0, 1.0)  # (N, 3) sRGB
    rgba = np.concatenate([_srgb_to_linear(rgb), np.ones((n, 1), np.float32)], axis=1).astype(np.float32)
    mesh.attributes.new("color", "FLOAT_COLOR", "POINT").data.foreach_set("color", rgba.ravel())

    obj.parent = armature
    deform = obj.modifiers.new("Armature", "ARMATURE")
    deform.object = armature
    deform.use_vertex_groups = True
    splats = obj.modifiers.new("GenLCA splats", "NODES")
    splats.node_group = splat_nodes.splat_tree()
    mesh.materials.append(splat_nodes.splat_material())
    yield 4, total


def import_avatar(context: bpy.types.Context, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
                  collection: bpy.types.Collection | None = None, name: str | None = None,
                  bake_chunk: int | None = None) -> tuple[bpy.types.Object, bpy.types.Object]:
    """Import in one go: returns (armature object, splat mesh object)."""
    out: dict = {}
    for _ in import_steps(context, header, arrays, collection, name, out, bake_chunk):
        pass
    return out["armature"], out["mesh"]


def avatar_arrays(mesh_obj: bpy.types.Object) -> dict[str, np.ndarray]:
    """Read back the splat attributes of an imported avatar (rest pose): means, scales, rotations, ..."""
    mesh = mesh_obj.data
    n = len(mesh.vertices)
    out = {"means": np.empty(n * 3, np.float32), "scale": np.empty(n * 3, np.float32),
           "rotation": np.empty(n * 4, np.float32), "opacity": np.empty(n, np.float32),
           "color": np.empty(n * 4, np.float32)}
    mesh.vertices.foreach_get("co", out["means"])
    mesh.attributes["scale"].data.foreach_get("vector", out["scale"])
    mesh.attributes["rotation"].data.foreach_get("value", out["rotation"])
    mesh.attributes["opacity"].data.foreach_get("value", out["opacity"])
    mesh.attributes["color"].data.foreach_get("color", out["color"])
    return {"means": out["means"].reshape(n, 3), "scale": out["scale"].reshape(n, 3),
            "rotation": out["rotation"].reshape(n, 4), "opacity": out["opacity"], "color": out["color"].reshape(n, 4)}


def synthetic_avatar(n: int, joints: int = 104, k: int = 8, seed: int = 0) -> tuple[dict, dict[str, np.ndarray]]:
    """A random rigged avatar (header, arrays) per AVATAR_ARRAYS: a chain-and-branches skeleton standing on
    z=0 with Gaussians spread around its bones. For tests and benchmarks."""
    rng = np.random.default_rng(seed)
    parents = np.array([-1] + [int(rng.integers(max(0, j - 4), j)) for j in range(1, joints)], np.int32)
    rest = np.tile(np.eye(4, dtype=np.float32), (joints, 1, 1))
    heads = np.zeros((joints, 3), np.float32)
    heads[0] = (0.0, 0.0, 1.0)
    for j in range(1, joints):
        heads[j] = heads[parents[j]] + rng.normal(0, 0.05, 3).astype(np.float32) + (0, 0, 0.02)
        rest[j, :3, 3] = heads[j]
    rest[0, :3, 3] = heads[0]
    # bone frames: +Y along the bone (up the body), X/Z horizontal; a per-joint yaw for a non-trivial roll
    for j in range(joints):
        a = rng.uniform(-np.pi, np.pi)
        y = np.array([0.0, 0.0, 1.0])
        x = np.array([np.cos(a), np.sin(a), 0.0])
        z = np.cross(x, y)
        rest[j, :3, :3] = np.stack([x, y, z], axis=1)
    tails = heads + rest[:, :3, 1] * 0.05
    owner = rng.integers(0, joints, n)
    means = (heads[owner] + rng.normal(0, 0.03, (n, 3))).astype(np.float32)
    patterns = np.stack([rng.choice(joints - 1, k - 1, replace=False) + 1 for _ in range(64)])  # (64, k-1)
    offsets = np.concatenate([np.zeros((n, 1), np.int64), patterns[rng.integers(0, 64, n)]], axis=1)
    idx = (owner[:, None] + offsets) % joints  # (n, k) distinct joints, the owner first
    w = rng.random((n, k)).astype(np.float32) + np.eye(k, dtype=np.float32)[0] * 2
    w /= w.sum(1, keepdims=True)
    q = rng.normal(size=(n, 4)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    arrays = {
        "means": means, "rotations": q,
        "log_scales": np.log(rng.uniform(0.002, 0.02, (n, 3))).astype(np.float32),
        "opacity_logits": rng.normal(0, 2, n).astype(np.float32),
        "sh": rng.normal(0, 0.5, (n, 1, 3)).astype(np.float32),
        "skin_indices": idx.astype(np.uint16), "skin_weights": w,
        "joint_parents": parents, "rest_matrices": rest.astype(np.float32), "joint_tails": tails.astype(np.float32),
    }
    header = {"avatar_id": f"synthetic{seed}", "joint_names": [f"joint{j:03d}" for j in range(joints)],
              "meta": {"generator": "synthetic"}}
    return header, arrays
