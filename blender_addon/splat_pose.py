"""Posed splats without vertex groups or an Armature modifier: the top-k skin kept as INT point
attributes, the rest centres as REST_POSITION, and `update_splat_pose`, which poses, in numpy, the centres
("position": linear blend skinning with each bone's full matrix pose · rest⁻¹, scale included) and the
orientations ("posed_rotation": the blended bone rotations) the way the backend's LBS does
(backend/avatar/skinning.py `pose`), each written with one `foreach_set`. binding.py's handlers call it when
a pose changes (frame change, hand-posing), so the viewport, playback and renders follow the armature.
Meshes imported before REST_POSITION existed (deformed by an Armature modifier) get their orientations only."""
from __future__ import annotations

import bpy
import numpy as np

from ._bridge import retarget, rigmaps
from .armature_build import avatar_joint_names, bone_matrices, bone_order

SKIN_ATTRIBUTE = "genlca_skin_{}"  # INT point attributes, one per skin slot: joint << 16 | weight * 65535
REST_POSITION = "genlca_rest_position"  # FLOAT_VECTOR point attribute: the centres at rest ("position" is posed)
POSED_ROTATION = "posed_rotation"  # QUATERNION point attribute: "rotation" turned by the blended bones
POSE_KEY = "_genlca_pose"  # on the mesh: the skinning matrices (J, 3, 4) the pose was computed for
POSE_TOLERANCE = 1e-5  # skinning matrices (rotation entries; metres) closer than this to POSE_KEY: no rewrite
AUTO_UPDATE_MAX_SPLATS = 1_000_000  # binding's handlers leave bigger avatars at their last pose
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


def rest_positions(mesh: bpy.types.Mesh) -> np.ndarray:
    """(N, 3) float32 splat centres at rest: REST_POSITION where the mesh has it, else its positions."""
    n = len(mesh.vertices)
    attr = mesh.attributes.get(REST_POSITION)
    if attr is None or attr.data_type != "FLOAT_VECTOR" or attr.domain != "POINT":
        attr = mesh.attributes["position"]
    out = np.empty(n * 3, np.float32)
    attr.data.foreach_get("vector", out)
    return out.reshape(n, 3)


def skin_runs(slots: list[np.ndarray]) -> tuple[np.ndarray | None, list[np.ndarray]]:
    """Runs of consecutive Gaussians that share a skin row (the backend's UV texels): (index of each run's
    first Gaussian, or None when every row is its own run; the packed slots of each run)."""
    n = len(slots[0])
    head = np.empty(n, np.bool_)
    head[:1] = True
    head[1:] = slots[0][1:] != slots[0][:-1]
    for p in slots[1:]:
        head[1:] |= p[1:] != p[:-1]
    heads = np.flatnonzero(head)
    if len(heads) == n:
        return None, list(slots)
    return heads, [p[heads] for p in slots]


def _expand(values: np.ndarray, heads: np.ndarray | None, n: int) -> np.ndarray:
    """Per-run values (C, M) -> per-Gaussian (C, N)."""
    return values if heads is None else np.repeat(values, np.diff(np.append(heads, n)), axis=1)


def _check_joints(rows: list[np.ndarray], j_count: int) -> None:
    top = max(int((p >> 16).max(initial=0)) for p in rows)
    if top >= j_count:
        raise ValueError(f"the skin refers to joint {top} of {j_count}")


def posed_splat_centres(rest: np.ndarray, slots: list[np.ndarray], matrices: np.ndarray,
                        runs: tuple | None = None) -> np.ndarray:
    """Rest centres (N, 3) moved by linear blend skinning, as the backend's `pose` moves means:
    p' = (sum_s w_s A[j_s]) p with the weights of each row divided by their sum (the stored weights are
    rounded to 1/65535; the Armature modifier divides by the sum too). matrices: (J, 3, 4) or (J, 4, 4)
    skinning matrices A_j in the mesh's space (`skinning_matrices`); slots: packed skin (`_skin_slots`);
    runs: `skin_runs(slots)` when already computed. Returns (N, 3) float32; a Gaussian without weight
    stays at rest.

    Numpy, O(N k): each run of Gaussians sharing a skin row blends its 12 matrix entries once
    (component-major contiguous gathers), then one multiply-add per entry over all Gaussians."""
    n = len(rest)
    a = np.asarray(matrices, np.float64)[:, :3, :4]
    if n == 0 or not slots:
        return np.array(rest, np.float32, copy=True)
    heads, rows = runs if runs is not None else skin_runs(slots)
    _check_joints(rows, len(a))
    m = len(rows[0])
    entries = np.ascontiguousarray(a.reshape(len(a), 12).T, np.float32)  # (12, J)
    acc = np.zeros((12, m), np.float32)
    total = np.zeros(m, np.float32)
    weight = np.empty(m, np.float32)
    gathered = np.empty(m, np.float32)
    for p in rows:
        np.bitwise_and(p, 0xFFFF, out=weight, casting="unsafe")  # the integer weight: its scale cancels
        total += weight
        joint = (p >> 16).astype(np.intp)
        for c in range(12):
            np.take(entries[c], joint, out=gathered)
            gathered *= weight
            acc[c] += gathered
    empty = total <= 0.0
    if empty.any():  # no weight: the identity
        acc[:, empty] = np.eye(3, 4, dtype=np.float32).reshape(12, 1)
        total[empty] = 1.0
    acc *= 1.0 / total
    acc = _expand(acc, heads, n)
    x, y, z = (np.ascontiguousarray(rest[:, c], np.float32) for c in range(3))
    out = np.empty((n, 3), np.float32)
    for r in range(3):
        row = acc[4 * r + 3].copy()
        row += acc[4 * r] * x
        row += acc[4 * r + 1] * y
        row += acc[4 * r + 2] * z
        out[:, r] = row
    return out


def posed_splat_rotations(rest: np.ndarray, slots: list[np.ndarray], deltas: np.ndarray,
                          runs: tuple | None = None) -> np.ndarray:
    """Rest orientations (N, 4) wxyz turned by the skin-blended bone rotations, as the backend's LBS does
    (backend/avatar/skinning.py `pose`): q = normalise(sum_s w_s sign_s delta[j_s]), with sign_s making
    delta[j_s] agree with delta[j_0] (slot 0), then q * rest. slots: packed skin (`_skin_slots`), deltas:
    (J, 4) wxyz bone rotations (pose · rest⁻¹); runs: as in `posed_splat_centres`. Returns (N, 4) float32;
    a Gaussian without weight keeps its rest orientation.

    Numpy, O(N k), about 5 ms per 100k Gaussians for the backend's skins: runs of Gaussians that share a
    skin row (the backend's UV texels) are blended once, the sign-aligned quaternions come from a J x J
    table, and the arrays are component-major so each step is a contiguous gather or multiply."""
    n = len(rest)
    q = np.asarray(deltas, np.float64)
    j_count = len(q)
    if n == 0 or not slots:
        return np.array(rest, np.float32, copy=True)
    heads, rows = runs if runs is not None else skin_runs(slots)
    m = len(rows[0])
    joint0 = (rows[0] >> 16).astype(np.intp)
    _check_joints(rows, j_count)
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
    acc = _expand(acc, heads, n)
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


def skinning_matrices(mesh_obj: bpy.types.Object, armature_obj: bpy.types.Object, pose: np.ndarray | None = None,
                      depsgraph: bpy.types.Depsgraph | None = None) -> np.ndarray:
    """(J, 4, 4) float64, joint order: each bone's skinning matrix A_j = pose_j · rest_j⁻¹ (scale and
    translation included) taken into the mesh's local space: what the Armature modifier would apply.
    pose: (J, 4, 4) armature-space pose matrices in joint order; None reads the evaluated armature's."""
    names = avatar_joint_names(armature_obj)
    bones = armature_obj.data.bones
    rest = bone_matrices(bones, "matrix_local", len(bones))[bone_order(bones, names)].astype(np.float64)
    if pose is None:
        depsgraph = depsgraph or bpy.context.evaluated_depsgraph_get()
        evaluated = armature_obj.evaluated_get(depsgraph)
        pose_bones = evaluated.pose.bones
        pose = bone_matrices(pose_bones, "matrix", len(pose_bones))[bone_order(pose_bones, names)]
    pose = np.asarray(pose, np.float64)
    if pose.shape != rest.shape:
        raise ValueError(f"expected pose matrices of shape {rest.shape}, got {pose.shape}")
    a = pose @ retarget.inverse_similarity(rest)
    # armature space -> the mesh's space (the import parents the mesh with an identity offset); mathutils
    # inverts a 4x4 in C: LAPACK's threads would compete with Blender's for one small matrix
    relative = armature_obj.matrix_world.inverted_safe() @ mesh_obj.matrix_world
    if not np.allclose(np.array(relative, np.float64), np.eye(4), atol=1e-9):
        a = np.array(relative.inverted_safe(), np.float64) @ a @ np.array(relative, np.float64)
    return a


def bone_rotation_deltas(matrices: np.ndarray) -> np.ndarray:
    """(J, 4) wxyz (w >= 0): the rotation of each skinning matrix (J, 4, 4), its scale divided out."""
    return rigmaps.matrix_to_quat(_unit_columns(np.asarray(matrices)[:, :3, :3]))


def splat_armature(mesh_obj: bpy.types.Object) -> bpy.types.Object | None:
    """The armature posing a splat mesh: its parent (what the import sets up), else the object of an
    Armature modifier (imports from before the centres were posed here)."""
    parent = mesh_obj.parent
    if parent is not None and parent.type == "ARMATURE":
        return parent
    return next((m.object for m in mesh_obj.modifiers if m.type == "ARMATURE" and m.object), None)


def _write(mesh: bpy.types.Mesh, name: str, data_type: str, prop: str, values: np.ndarray) -> None:
    attr = mesh.attributes.get(name)
    if attr is not None and (attr.data_type != data_type or attr.domain != "POINT"):
        mesh.attributes.remove(attr)
        attr = None
    if attr is None:
        attr = mesh.attributes.new(name, data_type, "POINT")
    attr.data.foreach_set(prop, values.ravel())


def update_splat_pose(mesh_obj: bpy.types.Object, armature_obj: bpy.types.Object | None = None,
                      pose: np.ndarray | None = None, depsgraph: bpy.types.Depsgraph | None = None,
                      force: bool = False) -> bool:
    """Pose the splats: "position" from REST_POSITION (`posed_splat_centres`) and POSED_ROTATION from the
    rest "rotation" (`posed_splat_rotations`), one bulk read of the armature's pose and one `foreach_set`
    each. A mesh without REST_POSITION (an older import with an Armature modifier) gets its orientations
    only. At rest both are the rest values exactly.

    armature_obj: the posing armature (None: `splat_armature`). pose: as in `skinning_matrices` (None: the
    evaluated armature's current pose). Skipped, returning False, when the mesh has no skin attributes or,
    unless `force`, when the skinning matrices are within POSE_TOLERANCE of those it was last posed with
    (POSE_KEY on the mesh, saved and undone with the attributes)."""
    mesh = mesh_obj.data
    if mesh.attributes.get(SKIN_ATTRIBUTE.format(0)) is None:
        return False
    armature_obj = armature_obj or splat_armature(mesh_obj)
    if armature_obj is None:
        return False
    matrices = skinning_matrices(mesh_obj, armature_obj, pose, depsgraph)
    key = np.asarray(matrices[:, :3, :], np.float32).ravel()
    done = mesh.get(POSE_KEY)
    centres = mesh.attributes.get(REST_POSITION) is not None
    if not force and done is not None and len(done) == len(key) and mesh.attributes.get(POSED_ROTATION) is not None:
        if np.abs(np.asarray(done, np.float32) - key).max(initial=0.0) < POSE_TOLERANCE:
            return False
    n = len(mesh.vertices)
    rest = np.empty(n * 4, np.float32)
    mesh.attributes["rotation"].data.foreach_get("value", rest)
    rest = rest.reshape(n, 4)
    # at rest within the tolerance (Blender's float32 chain of pose matrices): exactly the rest values
    at_rest = np.abs(matrices[:, :3, :] - np.eye(3, 4)).max(initial=0.0) < POSE_TOLERANCE
    slots = [] if at_rest else _skin_slots(mesh)
    runs = skin_runs(slots) if slots else None
    if centres:
        rest_centres = rest_positions(mesh)
        posed = rest_centres if at_rest else posed_splat_centres(rest_centres, slots, matrices, runs)
        mesh.attributes["position"].data.foreach_set("vector", posed.ravel())
    turned = rest if at_rest else posed_splat_rotations(rest, slots, bone_rotation_deltas(matrices), runs)
    _write(mesh, POSED_ROTATION, "QUATERNION", "value", turned)
    mesh[POSE_KEY] = key
    mesh.update()
    return True
