"""Build a rigged avatar in the scene from a `get_avatar` result (bridge.wire.protocol.AVATAR_ARRAYS).

Result: an armature object (`armature_build`) and, parented to it, a mesh object with one vertex per
Gaussian and no faces. The mesh carries the attributes "scale" (exp of log-scale, FLOAT_VECTOR),
"rotation" (QUATERNION, wxyz: the rest orientation), "opacity" (sigmoid of the logit), "color" (SH DC ->
linear RGBA), the top-k skin packed into k INT attributes "genlca_skin_0".. and the rest centres
"genlca_rest_position" (`splat_pose`), and a Geometry Nodes modifier that draws the splats as ellipsoids
(`splat_nodes`). No vertex groups and no Armature modifier: binding's handlers pose the centres and
orientations in numpy (`splat_pose.update_splat_pose`), which makes the import as fast as an unrigged one;
vertex groups for other tools are an explicit operator (`skin_groups`, "Bake Vertex Groups"). The arrays
are checked first against bridge.wire.protocol.AVATAR_ARRAYS with the one contract check of `bridge.wire.contract`.

`import_steps` yields between stages so the session can spread a large import over several timer
ticks; `import_avatar` runs them all. The names of the modules it was split into stay importable from
here (binding, workflows and the tests use them).
"""
from __future__ import annotations

import json
from typing import Any, Iterator, Mapping

import bpy
import numpy as np

from . import splat_nodes
from ._bridge import contract, protocol
from .armature_build import (JOINT_NAMES_KEY, _collection, avatar_joint_names, bone_matrices,  # noqa: F401
                             bone_order, build_armature)
from .splat_pose import (AUTO_UPDATE_MAX_SPLATS, POSE_KEY, POSE_TOLERANCE, POSED_ROTATION,  # noqa: F401
                         REST_POSITION, SKIN_ATTRIBUTE, _skin_attributes, posed_splat_centres,
                         posed_splat_rotations, rest_positions, skinning_matrices, splat_skin, update_splat_pose)

SH_C0 = 0.28209479177387814
SPLAT_KEYS = ("means", "rotations", "log_scales", "opacity_logits", "sh")  # what an unrigged splat file has
RAW_SH_ATTRIBUTE = "genlca_sh_{}"  # FLOAT_VECTOR per SH coefficient as stored (re-export keeps every band)
RAW_OPACITY_ATTRIBUTE = "genlca_opacity_logit"
SKELETON_KEY = "genlca_skeleton"  # on an avatar armature: the skeleton arrays as received (re-export)


def is_rigged(arrays: Mapping[str, np.ndarray]) -> bool:
    return "skin_indices" in arrays and "rest_matrices" in arrays


def check_avatar_arrays(arrays: Mapping[str, np.ndarray], joint_names: list[str]) -> tuple[int, int, int]:
    """Check every array of AVATAR_ARRAYS (`bridge.wire.contract.check_arrays`) and the skeleton's and skin's
    values; returns (N, J, k). Splats without skin and skeleton (a third-party PLY): (N, 0, 0)."""
    if not is_rigged(arrays):
        dims = contract.check_arrays(arrays, {k: protocol.AVATAR_ARRAYS[k] for k in SPLAT_KEYS})
        return dims["N"], 0, 0
    dims = contract.check_arrays(arrays, protocol.AVATAR_ARRAYS, {"J": len(joint_names)})
    if not 1 <= dims["k"] <= 8:
        raise ValueError(f"expected 1 to 8 skin weights per Gaussian, got {dims['k']}")
    parents = arrays["joint_parents"]
    if ((parents >= np.arange(dims["J"])) | (parents < -1)).any():
        raise ValueError("joint_parents must list each parent before its child (-1 for the root)")
    if int(arrays["skin_indices"].max(initial=0)) >= dims["J"]:
        raise ValueError(f"skin_indices refer to joint {int(arrays['skin_indices'].max())} of {dims['J']}")
    return dims["N"], dims["J"], dims["k"]


def _srgb_to_linear_flat(c: np.ndarray) -> np.ndarray:
    """sRGB -> linear for a contiguous float32 array in [0, 1]."""
    linear = np.power((c + np.float32(0.055)) * np.float32(1 / 1.055), np.float32(2.4))
    low = c <= np.float32(0.04045)
    linear[low] = c[low] * np.float32(1 / 12.92)
    return linear


def _splat_attributes(mesh: bpy.types.Mesh, arrays: Mapping[str, np.ndarray]) -> None:
    """Positions and the splat attributes: one bulk `foreach_set` of a contiguous float32 array each.
    (`mesh.vertices.foreach_set("co")` goes element by element: 40x slower than the "position" layer.)"""
    n = len(mesh.vertices)
    mesh.attributes["position"].data.foreach_set("vector", np.ascontiguousarray(arrays["means"], np.float32).ravel())
    scale = np.exp(arrays["log_scales"], dtype=np.float32)  # (N, 3)
    mesh.attributes.new("scale", "FLOAT_VECTOR", "POINT").data.foreach_set("vector", scale.ravel())
    rotations = np.array(arrays["rotations"], dtype=np.float32)  # (N, 4) wxyz
    norm = np.sqrt(np.einsum("ij,ij->i", rotations, rotations))
    rotations /= np.maximum(norm, np.float32(1e-12))[:, None]
    mesh.attributes.new("rotation", "QUATERNION", "POINT").data.foreach_set("value", rotations.ravel())
    with np.errstate(over="ignore"):  # exp(-logit) = inf -> opacity 0
        opacity = np.exp(-arrays["opacity_logits"], dtype=np.float32)
    opacity += np.float32(1.0)
    np.reciprocal(opacity, out=opacity)  # sigmoid
    mesh.attributes.new("opacity", "FLOAT", "POINT").data.foreach_set("value", opacity)
    srgb = np.array(arrays["sh"][:, 0, :], dtype=np.float32).ravel()  # SH DC, contiguous (N*3,)
    srgb *= np.float32(SH_C0)
    srgb += np.float32(0.5)
    np.clip(srgb, 0.0, 1.0, out=srgb)
    rgba = np.empty((n, 4), np.float32)
    rgba[:, 3] = 1.0
    rgba[:, :3] = _srgb_to_linear_flat(srgb).reshape(n, 3)
    mesh.attributes.new("color", "FLOAT_COLOR", "POINT").data.foreach_set("color", rgba.ravel())
    # the stored values too: "color" is clipped DC and "opacity" saturates, re-export needs them as they were
    mesh.attributes.new(RAW_OPACITY_ATTRIBUTE, "FLOAT", "POINT").data.foreach_set(
        "value", np.ascontiguousarray(arrays["opacity_logits"], np.float32))
    for i in range(arrays["sh"].shape[1]):
        mesh.attributes.new(RAW_SH_ATTRIBUTE.format(i), "FLOAT_VECTOR", "POINT").data.foreach_set(
            "vector", np.ascontiguousarray(arrays["sh"][:, i, :], np.float32).ravel())
    if "skin_indices" in arrays:
        _skin_attributes(mesh, arrays["skin_indices"], arrays["skin_weights"])
        mesh.attributes.new(REST_POSITION, "FLOAT_VECTOR", "POINT").data.foreach_set(
            "vector", np.ascontiguousarray(arrays["means"], np.float32).ravel())



def import_steps(context: bpy.types.Context, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
                 collection: bpy.types.Collection | None = None, name: str | None = None,
                 out: dict | None = None) -> Iterator[tuple[int, int]]:
    """The import as a generator of stages (for the session's timer); `out` receives "armature", "mesh".

    Yields (stage, 3) after each stage: 1 armature, 2 mesh with the splat attributes (and the skin),
    3 parent, Geometry Nodes modifier, material and the link into the collection."""
    out = {} if out is None else out
    joint_names = [str(n) for n in header.get("joint_names", [])]
    n, j_count, k = check_avatar_arrays(arrays, joint_names)
    rigged = is_rigged(arrays)  # unrigged splats (a PLY): the mesh alone, no armature or skin
    avatar_id = str(header.get("avatar_id", ""))
    name = name or f"GenLCA {avatar_id[:8] or 'avatar'}"
    total = 3

    armature = None
    if rigged:
        armature = build_armature(context, name, joint_names, arrays["joint_parents"], arrays["rest_matrices"],
                                  arrays["joint_tails"], collection)
        armature["genlca_avatar_id"] = avatar_id
        armature["genlca_meta"] = json.dumps(header.get("meta", {}), default=str)
        armature[SKELETON_KEY] = {key: np.asarray(arrays[key]).ravel().tolist()
                                  for key in ("joint_parents", "rest_matrices", "joint_tails")}
    out["armature"] = armature
    yield 1, total

    mesh = bpy.data.meshes.new(name + " splats")
    mesh.vertices.add(n)
    _splat_attributes(mesh, arrays)
    obj = bpy.data.objects.new(name + " splats", mesh)
    obj["genlca_avatar_id"] = avatar_id
    if not rigged:
        obj["genlca_meta"] = json.dumps(header.get("meta", {}), default=str)
    out["mesh"] = obj
    yield 2, total

    if rigged:
        obj.parent = armature  # identity offset: the mesh's space is the armature's
    splats = obj.modifiers.new("GenLCA splats", "NODES")
    splats.node_group = splat_nodes.splat_tree()
    mesh.materials.append(splat_nodes.splat_material())
    _collection(context, collection).objects.link(obj)
    yield 3, total


def import_avatar(context: bpy.types.Context, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
                  collection: bpy.types.Collection | None = None, name: str | None = None
                  ) -> tuple[bpy.types.Object, bpy.types.Object]:
    """Import in one go: returns (armature object, splat mesh object)."""
    out: dict = {}
    for _ in import_steps(context, header, arrays, collection, name, out):
        pass
    return out["armature"], out["mesh"]


def avatar_arrays(mesh_obj: bpy.types.Object) -> dict[str, np.ndarray]:
    """Read back the splat attributes of an imported avatar (rest pose): means, scales, rotations, ..."""
    mesh = mesh_obj.data
    n = len(mesh.vertices)
    out = {"scale": np.empty(n * 3, np.float32),
           "rotation": np.empty(n * 4, np.float32), "opacity": np.empty(n, np.float32),
           "color": np.empty(n * 4, np.float32)}
    mesh.attributes["scale"].data.foreach_get("vector", out["scale"])
    mesh.attributes["rotation"].data.foreach_get("value", out["rotation"])
    mesh.attributes["opacity"].data.foreach_get("value", out["opacity"])
    mesh.attributes["color"].data.foreach_get("color", out["color"])
    return {"means": rest_positions(mesh), "scale": out["scale"].reshape(n, 3),
            "rotation": out["rotation"].reshape(n, 4), "opacity": out["opacity"], "color": out["color"].reshape(n, 4)}

