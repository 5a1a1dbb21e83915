"""Bind an avatar armature to an armature already in the scene (Mixamo, Rigify, CMU BVH, GenLCA names),
and read an armature's pose as the wire's joint rotations.

Binding stores, on the avatar armature object (`Object.genlca`), the source armature, the detected rig
and an editable bone map (source bone -> avatar joint). The avatar follows its source through
`apply_binding`, called from a frame-change handler: it takes the source's evaluated world rotations,
turns them into avatar-local rotations with `bridge.rigmaps.retarget_pose` (rest-pose alignment on, so
a T-pose mocap drives an A-pose template) and writes them to the avatar's pose bones in bulk. The root
goes where the source's root is (relative to each object's origin), scaled by the ratio of the two
skeletons' hip heights.

The splats follow the bones' rotations through `scene_import.update_splat_rotations` ("posed_rotation"),
called by three handlers: frame changes (after `apply_binding` for bound avatars, from the pose just
written; from the evaluated pose for the others), `depsgraph_update_pre` (hand-posing: a pose predicted
from the bones' own channels is written before the depsgraph evaluates, so the mesh is evaluated once)
and `depsgraph_update_post` (for avatar armatures among the updates: the evaluated pose, which corrects
the prediction where constraints or drivers differ; an unchanged pose costs a comparison of J
quaternions). Meshes above scene_import.AUTO_UPDATE_MAX_SPLATS Gaussians are left out.
"""
from __future__ import annotations

import json
from typing import Mapping

import bpy
import numpy as np

from . import scene_import
from ._bridge import rigmaps


joint_names = scene_import.avatar_joint_names
_matrices = scene_import.bone_matrices
_order = scene_import.bone_order


def rest_matrices(avatar: bpy.types.Object) -> np.ndarray:
    """(J, 4, 4) bone rest frames in armature space, template order."""
    bones = avatar.data.bones
    return _matrices(bones, "matrix_local", len(bones))[_order(bones, joint_names(avatar))]


def joint_parents(avatar: bpy.types.Object) -> np.ndarray:
    names = joint_names(avatar)
    index = {n: i for i, n in enumerate(names)}
    return np.array([index[b.parent.name] if b.parent else -1 for b in (avatar.data.bones[n] for n in names)])


def local_pose(rest: np.ndarray, posed: np.ndarray, parents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pose-bone matrices (..., J, 4, 4) in armature space -> local rotations (..., J, 4) wxyz relative to
    rest in each bone's rest frame (Blender's matrix_basis rotation) and root translations (..., 3)."""
    rot_rest = rest[:, :3, :3].astype(np.float64)  # (J, 3, 3)
    rot = posed[..., :3, :3].astype(np.float64)
    rot = rot / np.linalg.norm(rot, axis=-2, keepdims=True)  # drop bone scale
    has_parent = parents >= 0
    p = np.where(has_parent, parents, 0)
    parent_rest = np.where(has_parent[:, None, None], rot_rest[p], np.eye(3))
    parent_pose = np.where(has_parent[..., None, None], rot[..., p, :, :], np.eye(3))
    # basis = rest_j^-1 · rest_parent · pose_parent^-1 · pose_j
    basis = (np.swapaxes(rot_rest, -1, -2) @ parent_rest) @ np.swapaxes(parent_pose, -1, -2) @ rot
    root = int(np.flatnonzero(~has_parent)[0])
    translation = posed[..., root, :3, 3] - rest[root, :3, 3]
    return rigmaps.matrix_to_quat(basis).astype(np.float32), translation.astype(np.float32)


def read_pose_frames(avatar: bpy.types.Object, frame_start: int, frame_end: int,
                     scene: bpy.types.Scene | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The avatar armature's pose over frames [frame_start, frame_end]: joint_rotations (F, J, 4) wxyz and
    root_translations (F, 3), in template order, per bridge.protocol.RENDER_ARRAYS. Changes the scene's
    current frame and restores it."""
    scene = scene or bpy.context.scene
    posed = []
    current = scene.frame_current
    try:
        for frame, matrices in iter_pose_matrices(avatar, frame_start, frame_end, scene):
            posed.append(matrices)
    finally:
        scene.frame_set(current)
    return local_pose(rest_matrices(avatar), np.stack(posed), joint_parents(avatar))


def iter_pose_matrices(avatar: bpy.types.Object, frame_start: int, frame_end: int, scene: bpy.types.Scene):
    """Yield (frame, pose matrices (J, 4, 4) in armature space) frame by frame (for sliced reading).

    Avatar splat meshes are left out of the depsgraph while reading, and their splat orientations are
    not updated, so each frame costs the armatures' evaluation only."""
    global _reading_pose
    order = _order(avatar.pose.bones, joint_names(avatar))
    hidden = [o for o in scene.objects if o.type == "MESH" and "genlca_avatar_id" in o and not o.hide_viewport]
    for o in hidden:
        o.hide_viewport = True
    _reading_pose += 1
    try:
        for frame in range(frame_start, frame_end + 1):
            scene.frame_set(frame)
            if avatar.genlca.source_armature is not None:
                apply_binding(avatar, bpy.context.evaluated_depsgraph_get())
                bpy.context.view_layer.update()
            evaluated = avatar.evaluated_get(bpy.context.evaluated_depsgraph_get())
            yield frame, _matrices(evaluated.pose.bones, "matrix", len(order))[order]
    finally:
        _reading_pose -= 1
        for o in hidden:
            o.hide_viewport = False


_reading_pose = 0  # > 0 while iter_pose_matrices steps through frames: no splat orientation updates


def pose_rotations_from_basis(avatar: bpy.types.Object) -> np.ndarray:
    """(J, 3, 3) armature-space pose rotations, joint order, by forward kinematics from the pose bones'
    own channels (`matrix_basis`): what the depsgraph computes for bones that inherit their parent's
    rotation, before it has run, without constraints or drivers."""
    names = joint_names(avatar)
    bones = avatar.pose.bones
    basis = _matrices(bones, "matrix_basis", len(bones))[_order(bones, names)].astype(np.float64)
    rest = rest_matrices(avatar)[:, :3, :3].astype(np.float64)
    unit = lambda m: m / np.linalg.norm(m, axis=-2, keepdims=True)  # noqa: E731 (drop bone scale)
    return rigmaps.world_rotations(unit(basis[:, :3, :3]), unit(rest), joint_parents(avatar))


def is_avatar(obj: bpy.types.Object) -> bool:
    return obj.type == "ARMATURE" and scene_import.JOINT_NAMES_KEY in obj


def splat_meshes(avatar: bpy.types.Object) -> list[bpy.types.Object]:
    """The avatar's splat meshes (children with the skin attributes)."""
    first = scene_import.SKIN_ATTRIBUTE.format(0)
    return [c for c in avatar.children if c.type == "MESH" and first in c.data.attributes]


def update_splats(avatar: bpy.types.Object, depsgraph: bpy.types.Depsgraph | None = None,
                  predict: bool = False) -> int:
    """Update "posed_rotation" of the avatar's splat meshes of at most AUTO_UPDATE_MAX_SPLATS Gaussians
    from its evaluated pose (predict: from `pose_rotations_from_basis`). Returns how many were rewritten.
    Nothing while `iter_pose_matrices` reads frames (the scene goes back to its frame afterwards)."""
    if _reading_pose:
        return 0
    meshes = [m for m in splat_meshes(avatar) if len(m.data.vertices) <= scene_import.AUTO_UPDATE_MAX_SPLATS]
    if not meshes:
        return 0
    pose = pose_rotations_from_basis(avatar) if predict else None
    return sum(scene_import.update_splat_rotations(m, avatar, pose=pose, depsgraph=depsgraph) for m in meshes)


# ------------------------------------------------------------------ binding
def default_map(avatar: bpy.types.Object, source: bpy.types.Object) -> tuple[str, dict[str, str]]:
    """Detected rig of `source` and its bone map onto the avatar's joints."""
    names = [b.name for b in source.data.bones]
    rig = rigmaps.detect_rig(names)
    return rig, rigmaps.map_for(rig, names, template_joints=joint_names(avatar))


def bind(avatar: bpy.types.Object, source: bpy.types.Object,
         bone_map: Mapping[str, str] | None = None, rig: str | None = None) -> dict[str, str]:
    """Bind `avatar` to `source`: detect the rig (unless given), store the map (editable in the panel)
    and pose the avatar once. Returns the map used."""
    if avatar.type != "ARMATURE" or source.type != "ARMATURE":
        raise ValueError(f"expected two armatures, got {avatar.name!r} ({avatar.type}) and "
                         f"{source.name!r} ({source.type})")
    if avatar == source:
        raise ValueError("an avatar cannot be bound to itself")
    if bone_map is None:
        detected, bone_map = default_map(avatar, source)
        rig = rig or detected
    props = avatar.genlca
    props.source_armature = source
    props.rig = rig or "custom"
    set_bone_map(avatar, bone_map)
    apply_binding(avatar, bpy.context.evaluated_depsgraph_get())
    return dict(bone_map)


def unbind(avatar: bpy.types.Object) -> None:
    props = avatar.genlca
    props.source_armature = None
    props.bone_map.clear()
    for pb in avatar.pose.bones:
        pb.rotation_quaternion = (1.0, 0.0, 0.0, 0.0)
        pb.location = (0.0, 0.0, 0.0)


def set_bone_map(avatar: bpy.types.Object, bone_map: Mapping[str, str]) -> None:
    items = avatar.genlca.bone_map
    items.clear()
    for source_bone, joint in bone_map.items():
        item = items.add()
        item.source, item.target = source_bone, joint


def bone_map(avatar: bpy.types.Object) -> dict[str, str]:
    return {item.source: item.target for item in avatar.genlca.bone_map if item.source and item.target}


def bone_map_json(avatar: bpy.types.Object) -> str:
    return json.dumps(bone_map(avatar), indent=1, sort_keys=True)


def _root_index(parents: np.ndarray) -> int:
    return int(np.flatnonzero(parents < 0)[0])


def apply_binding(avatar: bpy.types.Object, depsgraph: bpy.types.Depsgraph) -> None:
    """Pose `avatar` from its bound source armature's current evaluated pose."""
    source = avatar.genlca.source_armature
    if source is None or source.type != "ARMATURE":  # Blender < 5.0 lets the picker take any object
        return
    src_eval = source.evaluated_get(depsgraph)
    src_names = [b.name for b in source.data.bones]
    count = len(src_names)
    src_world = np.array(src_eval.matrix_world, dtype=np.float64)  # (4, 4)
    src_rot = src_world[:3, :3] / np.linalg.norm(src_world[:3, :3], axis=0)
    src_rest = _matrices(source.data.bones, "matrix_local", count).astype(np.float64)
    src_pose = _matrices(src_eval.pose.bones, "matrix", count)[_order(src_eval.pose.bones, src_names)]
    src_pose = src_pose.astype(np.float64)
    tpl_names = joint_names(avatar)
    parents = joint_parents(avatar)
    rest = rest_matrices(avatar).astype(np.float64)
    av_world = np.array(avatar.matrix_world, dtype=np.float64)
    av_rot = av_world[:3, :3] / np.linalg.norm(av_world[:3, :3], axis=0)
    mapping = {s: t for s, t in bone_map(avatar).items() if s in source.data.bones and t in avatar.data.bones}
    unit = lambda m: m / np.linalg.norm(m, axis=-2, keepdims=True)  # noqa: E731 (drop bone scale)
    local = rigmaps.retarget_pose(src_rot @ unit(src_rest[:, :3, :3]), src_rot @ unit(src_pose[:, :3, :3]),
                                  av_rot @ rest[:, :3, :3], mapping, parents, src_names, tpl_names)
    # root position: the source root's place relative to its object origin, scaled by the ratio of the
    # skeletons' hip heights (root above the lowest joint at rest), becomes the avatar root's place
    # relative to the avatar's origin. Mocap rigs whose rest pose hangs below the origin (BVH) and rigs
    # standing on it (Mixamo) both land the avatar's feet where the source's feet are.
    root = _root_index(parents)
    src_root_name = next((s for s, t in mapping.items() if t == tpl_names[root]), None)
    translation = np.zeros(3)
    if src_root_name is not None:
        si = src_names.index(src_root_name)
        src_lin, av_lin = src_world[:3, :3], av_world[:3, :3]
        src_heads = src_rest[:, :3, 3] @ src_lin.T  # (B, 3) world-oriented, from the source origin
        tpl_heads = rest[:, :3, 3] @ av_lin.T       # (J, 3) likewise for the avatar
        src_height = src_heads[si, 2] - src_heads[:, 2].min()
        tpl_height = tpl_heads[root, 2] - tpl_heads[:, 2].min()
        scale = tpl_height / src_height if src_height > 1e-6 and tpl_height > 1e-6 else 1.0
        target = np.linalg.solve(av_lin, scale * (src_lin @ src_pose[si, :3, 3]))  # avatar armature space
        translation = rest[root, :3, :3].T @ (target - rest[root, :3, 3])
    bones = avatar.pose.bones
    order = _order(bones, tpl_names)
    quats = np.empty((len(bones), 4), np.float32)
    quats[order] = local
    for pb in bones:
        if pb.rotation_mode != "QUATERNION":
            pb.rotation_mode = "QUATERNION"
    bones.foreach_set("rotation_quaternion", quats.ravel())
    bones[tpl_names[root]].location = translation.tolist()


def _report(what: str, obj: bpy.types.Object, exc: Exception) -> None:
    print(f"GenLCA: {what} of {obj.name!r} failed: {type(exc).__name__}: {exc}")


@bpy.app.handlers.persistent
def on_frame_change(scene: bpy.types.Scene, depsgraph: bpy.types.Depsgraph | None = None) -> None:
    depsgraph = depsgraph or bpy.context.evaluated_depsgraph_get()
    for obj in scene.objects:
        if obj.type != "ARMATURE":
            continue
        bound = obj.genlca.source_armature is not None
        if bound:
            try:
                apply_binding(obj, depsgraph)
            except Exception as exc:  # a broken binding must not break playback
                _report("binding", obj, exc)
                continue
        if is_avatar(obj):
            try:  # a bound avatar's pose was just written and is not evaluated yet: predict it
                update_splats(obj, depsgraph, predict=bound)
            except Exception as exc:
                _report("splat rotation update", obj, exc)


_seen_basis: dict[int, bytes] = {}  # avatar armature -> its pose bones' matrix_basis at the last update


@bpy.app.handlers.persistent
def on_depsgraph_update_pre(scene: bpy.types.Scene, *_args) -> None:
    """Before the depsgraph evaluates: avatars whose pose channels changed get their splat rotations from
    the predicted pose now, so the splat mesh is evaluated once with them."""
    seen = {}
    for obj in scene.objects:
        if not is_avatar(obj):
            continue
        try:
            bones = obj.pose.bones
            buf = np.empty(len(bones) * 16, np.float32)
            bones.foreach_get("matrix_basis", buf)
            key = obj.session_uid
            seen[key] = buf.tobytes()
            if _seen_basis.get(key) != seen[key]:
                update_splats(obj, predict=True)
        except Exception as exc:
            _report("splat rotation update", obj, exc)
    _seen_basis.clear()
    _seen_basis.update(seen)


@bpy.app.handlers.persistent
def on_depsgraph_update_post(scene: bpy.types.Scene, depsgraph: bpy.types.Depsgraph | None = None) -> None:
    """After it evaluated: the avatar armatures among the updates get their splat rotations from the
    evaluated pose (no write when the prediction matched)."""
    if depsgraph is None:
        return
    try:
        avatars = [u.id.original for u in depsgraph.updates
                   if isinstance(u.id, bpy.types.Object) and is_avatar(u.id)]
    except Exception as exc:
        print(f"GenLCA: reading the depsgraph updates failed: {exc}")
        return
    for avatar in avatars:
        try:
            update_splats(avatar, depsgraph)
        except Exception as exc:
            _report("splat rotation update", avatar, exc)


_HANDLERS = (("frame_change_post", on_frame_change), ("depsgraph_update_pre", on_depsgraph_update_pre),
             ("depsgraph_update_post", on_depsgraph_update_post))


def register() -> None:
    for name, handler in _HANDLERS:
        handlers = getattr(bpy.app.handlers, name)
        if handler not in handlers:
            handlers.append(handler)


def unregister() -> None:
    for name, handler in _HANDLERS:
        handlers = getattr(bpy.app.handlers, name)
        if handler in handlers:
            handlers.remove(handler)
    _seen_basis.clear()
