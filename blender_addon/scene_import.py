"""Build a rigged avatar in the scene from a `get_avatar` result (bridge.protocol.AVATAR_ARRAYS).

Result: an armature object (one bone per joint, edit bones from the rest matrices: head = translation,
+Y towards the tail, roll from the matrix) and, parented to it, a mesh object with one vertex per
Gaussian and no faces. The mesh carries the attributes "scale" (exp of log-scale, FLOAT_VECTOR),
"rotation" (QUATERNION, wxyz: the rest orientation), "opacity" (sigmoid of the logit), "color" (SH DC ->
linear RGBA), the top-k skin packed into k INT attributes "genlca_skin_0".. (joint << 16 | weight in
1/65535: `splat_skin` reads them back), vertex groups with the same weights quantised to multiples of
1/SKIN_LEVELS, an Armature modifier (posing deforms it in the viewport) and a Geometry Nodes modifier that
draws the splats as ellipsoids.

The Armature modifier moves the splat centres; `update_splat_rotations` turns the splats with the bones:
it blends each Gaussian's bone rotations (pose · rest⁻¹) with its skin weights the way the backend's LBS
does (backend/avatar/skinning.py) and writes "posed_rotation", which the Geometry Nodes tree uses when it
exists. binding.py's handlers call it when a pose changes. `import_steps` yields between stages so the
session can spread a large import over several timer ticks; `import_avatar` runs them all.
"""
from __future__ import annotations

import array
import json
import traceback
from typing import Any, Iterator, Mapping

import bpy
import numpy as np
from mathutils import Matrix

from . import splat_nodes
from ._bridge import protocol, rigmaps

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


def _collection(context: bpy.types.Context, collection: bpy.types.Collection | None) -> bpy.types.Collection:
    return collection if collection is not None else context.scene.collection


JOINT_NAMES_KEY = "genlca_joint_names"  # on an avatar armature: its joints in template order (JSON)


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
    obj[JOINT_NAMES_KEY] = json.dumps(joint_names)
    return obj


SKIN_LEVELS = 1023  # vertex-group weights are multiples of 1/SKIN_LEVELS: error <= 1/2046 per weight
_TEMP_GROUP = "genlca-tmp-{:05d}"  # vertex-group names while the weights are written (sort in joint order)


def skin_weight_runs(indices: np.ndarray, weights: np.ndarray, levels: int = SKIN_LEVELS) -> tuple[
        np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Top-k skin weights (N, k) -> runs of vertices that share a joint and a quantised weight.

    Weights are rounded to multiples of 1/levels; entries that round to 0 (< 1/(2 levels)) are left out
    (the Armature modifier divides by each vertex's weight sum). Returns (vertices int32 (M,), starts
    int64 (R + 1,), joints int64 (R,), quantised int64 (R,)): run r is vertices[starts[r]:starts[r + 1]],
    ascending, all with joint joints[r] and weight quantised[r] / levels; runs are ordered by joint, then
    weight. Numpy only, O(N k): the (joint, weight) pairs that occur are ranked through a lookup table,
    then one stable sort of the 16-bit ranks (numpy's radix sort); two when more than 65536 pairs occur."""
    n, k = weights.shape
    if not 1 <= levels < 1 << 16:
        raise ValueError(f"levels must be in 1..65535, got {levels}")
    scaled = np.clip(weights, 0.0, 1.0, dtype=np.float32)  # a new array
    scaled *= np.float32(levels)
    q = np.rint(scaled, out=scaled).astype(np.uint16).ravel()  # (N*k,)
    flat = np.flatnonzero(q)  # the nonzero entries, vertex-major
    if len(flat) == 0:
        empty = np.zeros(0, np.int64)
        return np.zeros(0, np.int32), np.zeros(1, np.int64), empty, empty
    q = q[flat]
    joint = indices.ravel()[flat]
    vertex = (flat // k).astype(np.int32)
    del flat
    key = joint.astype(np.int32) * np.int32(levels + 1) + q  # (joint, weight) pair
    size = int(key.max()) + 1  # at most J * (levels + 1)
    present = None
    if size <= 1 << 26:
        present = np.zeros(size, np.bool_)
        present[key] = True
        pairs = np.flatnonzero(present)  # the pairs that occur, in (joint, weight) order
    else:
        pairs = np.unique(key)
    if len(pairs) <= 1 << 16:
        if present is not None:
            rank_of = np.cumsum(present, dtype=np.int32)
            rank_of -= 1
            rank = rank_of[key].astype(np.uint16)
        else:
            rank = np.searchsorted(pairs, key).astype(np.uint16)
        order = np.argsort(rank, kind="stable")
        counts = np.bincount(rank, minlength=len(pairs))
    else:  # LSD radix: by weight, then by joint
        order = np.argsort(q, kind="stable")
        order = order[np.argsort(joint[order].astype(np.uint16), kind="stable")]
        counts = np.bincount(np.searchsorted(pairs, key), minlength=len(pairs))
    starts = np.zeros(len(pairs) + 1, np.int64)
    np.cumsum(counts, out=starts[1:])
    return vertex[order], starts, pairs // (levels + 1), pairs % (levels + 1)


def skin_vertex_group_steps(obj: bpy.types.Object, joint_names: list[str], indices: np.ndarray,
                            weights: np.ndarray, levels: int = SKIN_LEVELS,
                            step_joints: int | None = None) -> Iterator[None]:
    """Vertex groups (one per joint, in joint order, named after it) holding the top-k skin weights,
    quantised to multiples of 1/levels (see `skin_weight_runs`). A generator that yields once the runs
    are computed and then after about `step_joints` joints' worth of weights (None: once at the end).

    Blender has no bulk setter for deform weights; `VertexGroup.add(vertices, weight)` takes a list of
    vertices with one weight, so it is called once per run: at most J * levels calls whatever N is
    (15k-25k for the backend's avatars, ~0.6 µs each). Inside, a weight costs ~0.1-0.2 µs (the index
    conversion, a realloc of the vertex's weights) plus ~1 ns per group in front of its group in the
    object's list, so the groups are created in order of use (most weights first) under temporary names,
    then sorted into joint order (one O(N k) remap) and renamed. `obj` is best not yet linked to a scene:
    `add` then skips depsgraph work. Mode ADD sums a joint listed twice for a vertex."""
    vertices, starts, joints, quantised = skin_weight_runs(indices, weights, levels)
    yield
    j_count = len(joint_names)
    entries = np.diff(starts)
    use = np.bincount(joints, weights=entries, minlength=j_count)
    temp = [_TEMP_GROUP.format(j) for j in range(j_count)]
    reorder = not set(temp) & set(joint_names)
    groups: list = [None] * j_count
    for j in (np.argsort(-use, kind="stable") if reorder else range(j_count)):
        groups[j] = obj.vertex_groups.new(name=temp[j] if reorder else joint_names[j])
    adds = [g.add for g in groups]
    verts = array.array("i", vertices.tobytes())  # a slice of it is a memcpy; ints made as `add` reads them
    bounds = starts.tolist()
    run_joint = joints.tolist()
    run_weight = (quantised / levels).tolist()
    runs = len(run_joint)
    cuts = [runs]
    if step_joints is not None and runs:  # steps of about equal work: step_joints / J of the weights each
        per_step = max(1, len(vertices) * max(1, step_joints) // j_count)
        ends = np.searchsorted(starts[1:], np.arange(per_step, len(vertices), per_step))
        cuts = np.unique(np.append(ends + 1, runs)).tolist()
    done = 0
    for cut in cuts:
        for r in range(done, cut):
            adds[run_joint[r]](verts[bounds[r]:bounds[r + 1]], run_weight[r], "ADD")
        done = cut
        if cut < runs:
            yield
    if reorder:
        try:  # the temporary names sort in joint order; no undo step
            with bpy.context.temp_override(object=obj, active_object=obj):
                bpy.ops.object.vertex_group_sort("EXEC_DEFAULT", False, sort_type="NAME")
        except RuntimeError:  # the groups stay in order of use: the weights are right all the same
            traceback.print_exc()
        for g, joint in zip(groups, joint_names):
            g.name = joint
    yield


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
    _skin_attributes(mesh, arrays["skin_indices"], arrays["skin_weights"])


# ------------------------------------------------------------------ posed splat orientations
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


def avatar_joint_names(armature_obj: bpy.types.Object) -> list[str]:
    """The avatar's joints in template order (stored at import), else the armature's bone order."""
    stored = armature_obj.get(JOINT_NAMES_KEY)
    return json.loads(stored) if stored else [b.name for b in armature_obj.data.bones]


def bone_matrices(collection, attr: str, count: int) -> np.ndarray:
    """Bulk `foreach_get` of a 4x4 matrix property of a bone collection -> (count, 4, 4) row-major."""
    buf = np.empty(count * 16, np.float32)
    collection.foreach_get(attr, buf)
    return buf.reshape(count, 4, 4).transpose(0, 2, 1)  # Blender flattens matrices column by column


def bone_order(bones, names: list[str]) -> np.ndarray:
    """Index into `bones` (a bone collection) for each name."""
    position = {b.name: i for i, b in enumerate(bones)}
    missing = [n for n in names if n not in position]
    if missing:
        raise KeyError(f"the armature lacks the joints {missing[:5]}")
    return np.array([position[n] for n in names])


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


def import_steps(context: bpy.types.Context, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
                 collection: bpy.types.Collection | None = None, name: str | None = None,
                 out: dict | None = None, bake_chunk: int | None = None) -> Iterator[tuple[int, int]]:
    """The import as a generator of stages (for the session's timer); `out` receives "armature", "mesh".

    Yields (stage, 5) after each stage: 1 armature, 2 mesh with the splat attributes, 3 skin weights
    grouped into runs (numpy), 4 vertex groups, 5 parent, modifiers, material and the link into the
    collection. bake_chunk: about that many joints' worth of vertex-group weights per step of stage 4
    (the session's timer runs one step per tick); None writes them all in one step. (The name is from
    the Geometry Nodes bake this replaced.)"""
    out = {} if out is None else out
    joint_names = [str(n) for n in header["joint_names"]]
    n, j_count, k = check_avatar_arrays(arrays, joint_names)
    avatar_id = str(header.get("avatar_id", ""))
    name = name or f"GenLCA {avatar_id[:8] or 'avatar'}"
    total = 5

    armature = build_armature(context, name, joint_names, arrays["joint_parents"], arrays["rest_matrices"],
                              arrays["joint_tails"], collection)
    armature["genlca_avatar_id"] = avatar_id
    armature["genlca_meta"] = json.dumps(header.get("meta", {}), default=str)
    out["armature"] = armature
    yield 1, total

    mesh = bpy.data.meshes.new(name + " splats")
    mesh.vertices.add(n)
    _splat_attributes(mesh, arrays)
    obj = bpy.data.objects.new(name + " splats", mesh)  # linked at the end: vertex groups go faster
    obj["genlca_avatar_id"] = avatar_id
    out["mesh"] = obj
    yield 2, total

    stage = 3
    for _ in skin_vertex_group_steps(obj, joint_names, arrays["skin_indices"], arrays["skin_weights"],
                                     step_joints=bake_chunk):
        yield stage, total
        stage = 4

    obj.parent = armature
    deform = obj.modifiers.new("Armature", "ARMATURE")
    deform.object = armature
    deform.use_vertex_groups = True
    splats = obj.modifiers.new("GenLCA splats", "NODES")
    splats.node_group = splat_nodes.splat_tree()
    mesh.materials.append(splat_nodes.splat_material())
    _collection(context, collection).objects.link(obj)
    yield 5, total


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


# How many of the top-8 skin weights are nonzero per texel in the backend's anny layout (R=128): 1..8
_ANNY_NONZERO = np.array([2372, 1227, 1632, 1150, 1114, 1020, 1101, 614], np.float64)


def synthetic_avatar(n: int, joints: int = 104, k: int = 8, seed: int = 0,
                     skin: str = "dense") -> tuple[dict, dict[str, np.ndarray]]:
    """A random rigged avatar (header, arrays) per AVATAR_ARRAYS: a chain-and-branches skeleton standing on
    z=0 with Gaussians spread around its bones. For tests and benchmarks.

    skin="dense": all k skin weights nonzero, the joints spread over the skeleton, Gaussians in random
    order (the worst case for the import). skin="sparse": like the backend's avatars: Gaussians in runs
    of 10 (one UV texel) that share a skin row, texels grouped by body region (owner joint), 1-8 nonzero
    weights per row as often as in the anny layout (3.8 on average; zeros pad the row to k) on joints
    near the owner in the skeleton."""
    if skin not in ("dense", "sparse"):
        raise ValueError(f"skin must be 'dense' or 'sparse', got {skin!r}")
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
    if skin == "sparse":
        if k > joints:
            raise ValueError(f"skin='sparse' needs k <= joints, got k={k}, joints={joints}")
        rs = np.random.default_rng([seed, 1])
        per_texel = 10
        texels = -(-n // per_texel)
        texel_owner = np.sort(rs.integers(0, joints, texels))
        owner = np.repeat(texel_owner, per_texel)[:n]
        means = (heads[owner] + rs.normal(0, 0.03, (n, 3))).astype(np.float32)
        children: list[list[int]] = [[] for _ in range(joints)]
        for j in range(1, joints):
            children[parents[j]].append(j)
        near = np.empty((joints, k), np.int64)  # each joint and its nearest joints in the skeleton
        for j in range(joints):
            seen, frontier = [j], [j]
            while len(seen) < k:
                frontier = [m for f in frontier for m in ([parents[f]] if parents[f] >= 0 else []) + children[f]
                            if m not in seen]
                seen += frontier
            near[j] = seen[:k]
        nonzero = np.minimum(rs.choice(np.arange(1, 9), texels, p=_ANNY_NONZERO / _ANNY_NONZERO.sum()), k)
        tw = rs.gamma(1.0, size=(texels, k))
        tw[np.arange(k)[None, :] >= nonzero[:, None]] = 0.0
        tw = -np.sort(-tw, axis=1)
        tw /= tw.sum(1, keepdims=True)
        idx = np.repeat(near[texel_owner], per_texel, axis=0)[:n]
        w = np.repeat(tw.astype(np.float32), per_texel, axis=0)[:n]
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
