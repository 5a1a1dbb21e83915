"""Posed splat orientations: the top-k skin kept as INT point attributes, and `update_splat_rotations`,
which blends each Gaussian's bone rotations (pose · rest⁻¹) with its skin weights the way the backend's
LBS does (backend/avatar/skinning.py) into "posed_rotation", which the Geometry Nodes tree uses when it
exists. binding.py's handlers call it when a pose changes."""
from __future__ import annotations

import bpy
import numpy as np

from ._bridge import rigmaps
from .armature_build import avatar_joint_names, bone_matrices, bone_order

SKIN_ATTRIBUTE = "genlca_skin_{}"  # INT point attributes, one per skin slot: joint << 16 | weight * 65535
POSED_ROTATION = "posed_rotation"  # QUATERNION point attribute: "rotation" turned by the blended bones
POSE_KEY = "_genlca_pose"  # on the mesh: the bone rotations (J, 4) "posed_rotation" was computed for
POSE_TOLERANCE = 1e-5  # bone rotations (quaternion components) closer than this to POSE_KEY: no rewrite
AUTO_UPDATE_MAX_SPLATS = 1_000_000  # binding's handlers leave bigger avatars at their last orientations
_WEIGHT_LEVELS = 65535
_SIGN_TABLE_MAX_JOINTS = 512  # up to this many joints the sign-aligned quaternions come from a J x J table

def _skin_attributes(mesh: bpy.types.Mesh, indices: np.ndarray, weights: np.ndarray) -> None:
    """The top-k skin as k INT point attributes (SKIN_ATTRIBUTE): joint index in the high 16 bits, the
    weight rounded to a multiple of 1/65535 in the low 16 (within 7.7e-6 of the backend's). Slot order is
    kept: slot 0 is the joint the backend aligns quaternion signs to."""
    q = np.clip(weights, 0.0, 1.0, dtype=np.float32)
    q *= np.float32(_WEIGHT_LEVELS)
    packed = indices.astype(np.uint32) << np.uint32(16)
    packed |= np.rint(q, out=q).astype(np.uint32)
    packed = packed.view(np.int32)
    for s in range(packed.shape[1]):
        mesh.attributes.new(SKIN_ATTRIBUTE.format(s), "INT", "POINT").data.foreach_set(
            "value", np.ascontiguousarray(packed[:, s]))


def _skin_slots(mesh: bpy.types.Mesh) -> list[np.ndarray]:
    """The packed skin slots as (N,) uint32 arrays; [] when the mesh has none (not a GenLCA import)."""
    n = len(mesh.vertices)
    slots = []
    while True:
        attr = mesh.attributes.get(SKIN_ATTRIBUTE.format(len(slots)))
        if attr is None or attr.data_type != "INT" or attr.domain != "POINT":
            return slots
        buf = np.empty(n, np.int32)
        attr.data.foreach_get("value", buf)
        slots.append(buf.view(np.uint32))


def splat_skin(mesh: bpy.types.Mesh) -> tuple[np.ndarray, np.ndarray]:
    """The stored top-k skin: joint indices (N, k) int64 and weights (N, k) float32 (multiples of 1/65535)."""
    slots = _skin_slots(mesh)
    if not slots:
        raise ValueError(f"mesh {mesh.name!r} carries no skin attributes ({SKIN_ATTRIBUTE.format(0)}, ...)")
    packed = np.stack(slots, axis=1)
    return (packed >> 16).astype(np.int64), (packed & 0xFFFF).astype(np.float32) / np.float32(_WEIGHT_LEVELS)


def posed_splat_rotations(rest: np.ndarray, slots: list[np.ndarray], deltas: np.ndarray) -> np.ndarray:
    """Rest orientations (N, 4) wxyz turned by the skin-blended bone rotations, as the backend's LBS does
    (backend/avatar/skinning.py `pose`): q = normalise(sum_s w_s sign_s delta[j_s]), with sign_s making
    delta[j_s] agree with delta[j_0] (slot 0), then q * rest. slots: packed skin (`_skin_slots`), deltas:
    (J, 4) wxyz bone rotations (pose · rest⁻¹). Returns (N, 4) float32; a Gaussian without weight keeps
    its rest orientation.

    Numpy, O(N k), about 5 ms per 100k Gaussians for the backend's skins: runs of Gaussians that share a
    skin row (the backend's UV texels) are blended once, the sign-aligned quaternions come from a J x J
    table, and the arrays are component-major so each step is a contiguous gather or multiply."""
    n = len(rest)
    q = np.asarray(deltas, np.float64)
    j_count = len(q)
    if n == 0 or not slots:
        return np.array(rest, np.float32, copy=True)
    # runs of equal skin rows: blend each run once
    head = np.empty(n, np.bool_)
    head[0] = True
    head[1:] = slots[0][1:] != slots[0][:-1]
    for p in slots[1:]:
        head[1:] |= p[1:] != p[:-1]
    heads = np.flatnonzero(head)
    del head
    rows = [p[heads] for p in slots] if len(heads) < n else list(slots)
    m = len(rows[0])
    joint0 = (rows[0] >> 16).astype(np.intp)
    if max(int((p >> 16).max()) for p in rows) >= j_count:
        raise ValueError(f"the skin refers to joint {max(int((p >> 16).max()) for p in rows)} of {j_count}")
    components = np.ascontiguousarray(q.T, np.float32)  # (4, J)
    acc = np.zeros((4, m), np.float32)
    gathered = np.empty(m, np.float32)
    weight = np.empty(m, np.float32)
    table = pivot = None
    if j_count <= _SIGN_TABLE_MAX_JOINTS:  # table[c, j0 * J + j] = sign(delta[j] . delta[j0]) delta[j][c]
        sign = np.where(q @ q.T < 0.0, -1.0, 1.0)
        table = np.ascontiguousarray((sign[:, :, None] * q[None, :, :]).reshape(j_count * j_count, 4).T,
                                     np.float32)
    else:
        pivot = components[:, joint0]  # (4, M)
    for s, p in enumerate(rows):
        np.bitwise_and(p, 0xFFFF, out=weight, casting="unsafe")
        joint = joint0 if s == 0 else (p >> 16).astype(np.intp)
        if s == 0 or table is not None:
            source, index = (components, joint0) if s == 0 else (table, joint0 * j_count + joint)
            for c in range(4):  # contiguous gathers and multiply-adds, one component at a time
                np.take(source[c], index, out=gathered)
                gathered *= weight
                acc[c] += gathered
        else:
            slot = components[:, joint]  # (4, M)
            weight[np.einsum("cm,cm->m", slot, pivot) < 0.0] *= -1.0
            slot *= weight
            acc += slot
    norm2 = np.einsum("cm,cm->m", acc, acc)
    empty = norm2 < 1e-20  # no weight: identity
    if empty.any():
        acc[:, empty] = ((1.0,), (0.0,), (0.0,), (0.0,))
        norm2[empty] = 1.0
    acc *= 1.0 / np.sqrt(norm2)
    if m < n:
        acc = np.repeat(acc, np.diff(np.append(heads, n)), axis=1)
    aw, ax, ay, az = acc
    bw, bx, by, bz = rest[:, 0], rest[:, 1], rest[:, 2], rest[:, 3]
    out = np.empty((n, 4), np.float32)
    out[:, 0] = aw * bw - ax * bx - ay * by - az * bz
    out[:, 1] = aw * bx + ax * bw + ay * bz - az * by
    out[:, 2] = aw * by - ax * bz + ay * bw + az * bx
    out[:, 3] = aw * bz + ax * by - ay * bx + az * bw
    return out

def _unit_columns(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, np.float64)
    return m / np.maximum(np.linalg.norm(m, axis=-2, keepdims=True), 1e-12)  # drops bone scale


def bone_rotation_deltas(mesh_obj: bpy.types.Object, armature_obj: bpy.types.Object,
                         pose: np.ndarray | None = None,
                         depsgraph: bpy.types.Depsgraph | None = None) -> np.ndarray:
    """(J, 4) wxyz (w >= 0), joint order: each bone's rotation pose · rest⁻¹ in the mesh's local space
    (the rotation part of the skinning matrix A_j the Armature modifier applies). pose: (J, 3, 3) or
    (J, 4, 4) armature-space pose matrices in joint order; None reads the evaluated armature's."""
    names = avatar_joint_names(armature_obj)
    bones = armature_obj.data.bones
    rest = _unit_columns(bone_matrices(bones, "matrix_local", len(bones))[bone_order(bones, names)][:, :3, :3])
    if pose is None:
        depsgraph = depsgraph or bpy.context.evaluated_depsgraph_get()
        evaluated = armature_obj.evaluated_get(depsgraph)
        pose_bones = evaluated.pose.bones
        pose = bone_matrices(pose_bones, "matrix", len(pose_bones))[bone_order(pose_bones, names)]
    posed = _unit_columns(np.asarray(pose)[:, :3, :3])
    delta = posed @ np.swapaxes(rest, -1, -2)
    # the Armature modifier works in armature space: conjugate into the mesh's space when they differ
    relative = np.linalg.inv(np.array(armature_obj.matrix_world, np.float64)) @ np.array(mesh_obj.matrix_world,
                                                                                          np.float64)
    to_armature = _unit_columns(relative[:3, :3])
    if not np.allclose(to_armature, np.eye(3), atol=1e-7):
        delta = to_armature.T @ delta @ to_armature
    return rigmaps.matrix_to_quat(delta)


def update_splat_rotations(mesh_obj: bpy.types.Object, armature_obj: bpy.types.Object | None = None,
                           pose: np.ndarray | None = None, depsgraph: bpy.types.Depsgraph | None = None,
                           force: bool = False) -> bool:
    """Write POSED_ROTATION: each splat's rest "rotation" turned by its skin-blended bone rotations (see
    `posed_splat_rotations`), with one bulk read of the armature's pose and one `foreach_set`.

    armature_obj: the deforming armature (None: the mesh's Armature modifier's). pose: as in
    `bone_rotation_deltas` (None: the evaluated armature's current pose). Skipped, returning False, when
    the mesh has no skin attributes or, unless `force`, when the bone rotations are within POSE_TOLERANCE
    of those it was last computed for (POSE_KEY on the mesh, saved and undone with the attribute)."""
    mesh = mesh_obj.data
    if mesh.attributes.get(SKIN_ATTRIBUTE.format(0)) is None:
        return False
    if armature_obj is None:
        armature_obj = next((m.object for m in mesh_obj.modifiers if m.type == "ARMATURE" and m.object), None)
        if armature_obj is None:
            return False
    deltas = bone_rotation_deltas(mesh_obj, armature_obj, pose, depsgraph)
    key = np.asarray(deltas, np.float32).ravel()
    done = mesh.get(POSE_KEY)
    if not force and done is not None and len(done) == len(key) and mesh.attributes.get(POSED_ROTATION) is not None:
        was, now = np.asarray(done, np.float32).reshape(-1, 4), key.reshape(-1, 4)
        if np.minimum(np.abs(was - now).max(1), np.abs(was + now).max(1)).max(initial=0.0) < POSE_TOLERANCE:
            return False  # q and -q: the same rotation
    slots = _skin_slots(mesh)
    n = len(mesh.vertices)
    rest = np.empty(n * 4, np.float32)
    mesh.attributes["rotation"].data.foreach_get("value", rest)
    rest = rest.reshape(n, 4)
    if np.abs(deltas - (1.0, 0.0, 0.0, 0.0)).max(initial=0.0) < 1e-6:
        posed = rest  # the rest pose: exactly the rest orientations
    else:
        posed = posed_splat_rotations(rest, slots, deltas)
    attr = mesh.attributes.get(POSED_ROTATION)
    if attr is not None and (attr.data_type != "QUATERNION" or attr.domain != "POINT"):
        mesh.attributes.remove(attr)
        attr = None
    if attr is None:
        attr = mesh.attributes.new(POSED_ROTATION, "QUATERNION", "POINT")
    attr.data.foreach_set("value", posed.ravel())
    mesh[POSE_KEY] = key
    mesh.update()
    return True
