"""Skin weights as vertex groups, what Blender's Armature modifier deforms with (the standard rig that
`scene_import` builds by default; also an FBX export, weight painting): top-k weights grouped into runs of
vertices that share a joint and a quantised weight, one `VertexGroup.add` per run, only nonzero weights
(0.46 s per 100k Gaussians with the backend's sparse top-8 skins on 2 loaded cores; docs/BENCHMARKS.md).
The fast-preview import leaves them out (the add-on's handlers pose the splats from the packed skin
attributes, `splat_pose`); "Bake Vertex Groups" writes them on request.

`build_bone_frames`: the small mesh (three points per joint, each point weighted 1 to its joint, deformed
by an Armature modifier) from which the splat tree reads each bone's rotation (`splat_nodes`)."""
from __future__ import annotations

import array
import traceback
from typing import Iterator

import bpy
import numpy as np

from .splat_pose import splat_skin


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


BONE_FRAMES_KEY = "genlca_bone_frames"  # on the bone-frames mesh object
FRAME_AXIS_LENGTH = 0.1  # metres from a joint's head to its x and y frame points


def build_bone_frames(armature_obj: bpy.types.Object, joint_names: list[str], rest_matrices: np.ndarray,
                      name: str) -> bpy.types.Object:
    """A mesh object of 3 J points, in the armature's space: joint j's rest head and the head moved along
    world x and y (points 3j, 3j+1, 3j+2), each in joint j's vertex group with weight 1, an Armature
    modifier on `armature_obj`, parented to it with an identity offset. Posed, points 3j+1 - 3j and
    3j+2 - 3j are the x and y columns of the bone's skinning matrix pose · rest⁻¹ (times its uniform scale).
    Not rendered (points only) and not selectable; the caller links it."""
    rest = np.asarray(rest_matrices, np.float32)
    j_count = len(joint_names)
    if rest.shape != (j_count, 4, 4):
        raise ValueError(f"expected rest matrices of shape ({j_count}, 4, 4), got {rest.shape}")
    points = np.repeat(rest[:, None, :3, 3], 3, axis=1)  # (J, 3, 3)
    points[:, 1, 0] += FRAME_AXIS_LENGTH
    points[:, 2, 1] += FRAME_AXIS_LENGTH
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(3 * j_count)
    mesh.attributes["position"].data.foreach_set("vector", points.ravel())
    obj = bpy.data.objects.new(name, mesh)
    for j, joint in enumerate(joint_names):
        obj.vertex_groups.new(name=joint).add([3 * j, 3 * j + 1, 3 * j + 2], 1.0, "REPLACE")
    deform = obj.modifiers.new("Armature", "ARMATURE")
    deform.object, deform.use_vertex_groups, deform.use_bone_envelopes = armature_obj, True, False
    obj.parent = armature_obj
    obj[BONE_FRAMES_KEY] = True
    obj.hide_render, obj.hide_select = True, True
    return obj


def bake_vertex_groups(obj: bpy.types.Object, joint_names: list[str], levels: int = SKIN_LEVELS) -> int:
    """Replace the splat mesh's vertex groups named after joints by groups holding its stored skin
    (`splat_pose.splat_skin`) quantised to 1/levels; returns how many weights were written."""
    indices, weights = splat_skin(obj.data)
    names = set(joint_names)
    for group in [g for g in obj.vertex_groups if g.name in names]:
        obj.vertex_groups.remove(group)
    for _ in skin_vertex_group_steps(obj, joint_names, indices, weights, levels):
        pass
    return int((np.rint(np.clip(weights, 0.0, 1.0) * levels) > 0).sum())
