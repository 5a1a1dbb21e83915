"""Bind an avatar armature to an armature already in the scene (any humanoid naming, or matched by its
shape), and read an armature's pose as the wire's joint rotations.

Binding stores, on the avatar armature object (`Object.genlca`), the source armature, how the map was
found (`rig`), an editable bone map (source bone -> avatar joint; `map_armature`: the armature it names)
and `fit_proportions`; on the object itself the source's floor height (FLOOR_KEY). `propose_map` asks
`bridge.rig.rigmaps.propose_map` (tables, names, shape); `bind` checks a given map and refuses it with the
names it gets wrong. The avatar follows its source through `apply_binding`, run once per frame when the
motion is baked (below) or from a frame-change handler when bound live: `bridge.rig.retarget.solve` turns
the source's evaluated world matrices into world matrices of the avatar's joints (aimed by positions; with
fitting also placed and uniformly scaled), `pose_basis` into pose channels (location, quaternion, scale),
written in bulk. The avatar's rest data are never touched:
`unbind` resets the channels and the avatar is exactly at rest.

The bound motion is baked (the default for the standard rig, `bake_motion`): at bind, the solver runs once
per frame of the source's action (or the scene's range, from the operator) and its pose channels become
an action on the avatar armature, one linear key per frame (channels that do not move get no F-curve).
Why an action and not bone constraints to the source: the solver aims joints by positions, fits
proportions and keeps the feet on the source's floor, which Copy Rotation / Child Of cannot express (they
would follow the source bones' own axes, which CMU's zero-length BVH bones do not have); an action is
what every consumer of a .blend reads: the viewport, F12, `blender -b -a`, the FBX / glTF / USD / Alembic
exporters, other add-ons, with or without this add-on, and without the source armature. The cost: the
bake takes ~13 ms per frame on 2 loaded cores, and editing the map, Fit Proportions or the source's
animation needs **Bake Motion** again. `bake=False` keeps the old live binding (the frame handler applies
the solver on every frame change; add-on only).

The splats of a standard-rig avatar follow the bones through Blender's Armature modifier and the splat
tree (`scene_import`). Those of a *fast preview* avatar follow through `scene_import.update_splat_pose`
(centres "position" and orientations "posed_rotation", linear blend skinning in numpy), called by three
handlers: frame changes (after `apply_binding` for live-bound avatars, from the pose just written; from the
evaluated pose for the others), `depsgraph_update_pre` (hand-posing: a pose predicted from the bones' own
channels is written before the depsgraph evaluates, so the mesh is evaluated once) and
`depsgraph_update_post` (for avatar armatures among the updates: the evaluated pose, which corrects the
prediction where constraints or drivers differ; an unchanged pose costs a comparison of J matrices).
Meshes above scene_import.AUTO_UPDATE_MAX_SPLATS Gaussians are left out.
"""
from __future__ import annotations

import json
import re
from typing import Mapping

import bpy
import numpy as np

from . import scene_import
from ._bridge import retarget, rigmaps


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


FITTED_TOLERANCE = 1e-5  # a pose-bone location (metres) or scale this far from 0 / 1: the skeleton is fitted


def pose_arrays(avatar: bpy.types.Object, posed: np.ndarray) -> dict[str, np.ndarray]:
    """Pose matrices (F, J, 4, 4) in armature space -> a render request's pose arrays (float32):
    joint_rotations and root_translations (bridge.wire.protocol.RENDER_ARRAYS) and, when a bone has a location
    or a scale (a skeleton fitted to another armature's proportions), joint_locations and joint_scales
    (RENDER_POSE_ARRAYS: Blender's pose channels, `retarget.pose_basis`; the root's location is left to
    root_translations), so the backend renders the proportions the viewport shows."""
    rest, parents = rest_matrices(avatar).astype(np.float64), joint_parents(avatar)
    rotations, translations = local_pose(rest, posed, parents)
    out = {"joint_rotations": rotations, "root_translations": translations}
    channels = [retarget.pose_basis(rest, parents, np.asarray(m, np.float64)) for m in posed]
    locations = np.stack([c[0] for c in channels])  # (F, J, 3)
    scales = np.stack([c[2] for c in channels])  # (F, J)
    locations[:, parents < 0] = 0.0
    fitted = max(np.abs(locations).max(initial=0.0), np.abs(scales - 1.0).max(initial=0.0)) > FITTED_TOLERANCE
    if fitted:
        out["joint_locations"], out["joint_scales"] = locations.astype(np.float32), scales.astype(np.float32)
    return out


def read_pose_frames(avatar: bpy.types.Object, frame_start: int, frame_end: int,
                     scene: bpy.types.Scene | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The avatar armature's pose over frames [frame_start, frame_end]: joint_rotations (F, J, 4) wxyz and
    root_translations (F, 3), in template order, per bridge.wire.protocol.RENDER_ARRAYS. Changes the scene's
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
            if is_live(avatar):
                apply_binding(avatar, bpy.context.evaluated_depsgraph_get())
                bpy.context.view_layer.update()
            evaluated = avatar.evaluated_get(bpy.context.evaluated_depsgraph_get())
            yield frame, _matrices(evaluated.pose.bones, "matrix", len(order))[order]
    finally:
        _reading_pose -= 1
        for o in hidden:
            o.hide_viewport = False


_reading_pose = 0  # > 0 while iter_pose_matrices steps through frames: no splat orientation updates


def pose_matrices_from_basis(avatar: bpy.types.Object) -> np.ndarray:
    """(J, 4, 4) armature-space pose matrices, joint order, by forward kinematics from the pose bones' own
    channels (`matrix_basis`: location, rotation, scale): pose_j = pose_parent · rest_parent⁻¹ · rest_j ·
    basis_j, what the depsgraph computes for bones that inherit their parent's transform, before it has
    run, without constraints or drivers."""
    names = joint_names(avatar)
    bones = avatar.pose.bones
    basis = _matrices(bones, "matrix_basis", len(bones))[_order(bones, names)].astype(np.float64)
    rest = rest_matrices(avatar).astype(np.float64)
    parents = joint_parents(avatar)
    frame = rest.copy()  # each joint's frame when its basis is identity, relative to its parent's pose
    has = parents >= 0
    frame[has] = retarget.inverse_similarity(rest[parents[has]]) @ rest[has]
    pose = np.empty_like(rest)
    for j, p in enumerate(parents):  # parents come first (checked at import)
        pose[j] = (pose[p] @ frame[j] if p >= 0 else frame[j]) @ basis[j]
    return pose


def is_avatar(obj: bpy.types.Object) -> bool:
    return obj.type == "ARMATURE" and scene_import.JOINT_NAMES_KEY in obj


def splat_meshes(avatar: bpy.types.Object) -> list[bpy.types.Object]:
    """The avatar's splat meshes (children with the skin attributes)."""
    first = scene_import.SKIN_ATTRIBUTE.format(0)
    return [c for c in avatar.children if c.type == "MESH" and first in c.data.attributes]


def update_splats(avatar: bpy.types.Object, depsgraph: bpy.types.Depsgraph | None = None,
                  predict: bool = False) -> int:
    """Pose the avatar's splat meshes of at most AUTO_UPDATE_MAX_SPLATS Gaussians (centres and
    orientations) from its evaluated pose (predict: from `pose_matrices_from_basis`). Returns how many
    were rewritten.
    Nothing while `iter_pose_matrices` reads frames (the scene goes back to its frame afterwards)."""
    if _reading_pose or scene_import.rig_mode(avatar) != scene_import.RIG_FAST_PREVIEW:
        return 0  # a standard rig's splats are posed by its Armature modifier and the splat tree
    meshes = [m for m in splat_meshes(avatar) if len(m.data.vertices) <= scene_import.AUTO_UPDATE_MAX_SPLATS]
    if not meshes:
        return 0
    pose = pose_matrices_from_basis(avatar) if predict else None
    return sum(scene_import.update_splat_pose(m, avatar, pose=pose, depsgraph=depsgraph) for m in meshes)


# ------------------------------------------------------------------ binding
SCALE_WARNING = 4.0  # a source this many times taller or shorter than the avatar is out of scale


def _world(obj: bpy.types.Object) -> np.ndarray:
    return np.array(obj.matrix_world, dtype=np.float64)


def source_skeleton(source: bpy.types.Object) -> tuple[list[str], list[int], np.ndarray, np.ndarray]:
    """Bone names, parent indices, rest matrices (B, 4, 4) in world space and lengths (bone units)."""
    bones = source.data.bones
    names = [b.name for b in bones]
    index = {n: i for i, n in enumerate(names)}
    parents = [index[b.parent.name] if b.parent else -1 for b in bones]
    rest = _world(source) @ _matrices(bones, "matrix_local", len(bones)).astype(np.float64)
    lengths = np.array([b.length for b in bones], np.float64)
    return names, parents, rest, lengths


def propose_map(avatar: bpy.types.Object, source: bpy.types.Object) -> tuple[str, dict[str, str]]:
    """How the map was found ("cmu", "mixamo", .., "names" or "topology") and the proposed source bone ->
    avatar joint map (`bridge.rig.rigmaps.propose_map`)."""
    names, parents, rest, lengths = source_skeleton(source)
    tails = rest[:, :3, 3] + rest[:, :3, 1] * lengths[:, None]
    return rigmaps.propose_map(names, parents, rest[:, :3, 3], template_joints=joint_names(avatar), tails=tails)


def default_map(avatar: bpy.types.Object, source: bpy.types.Object) -> tuple[str, dict[str, str]]:
    return propose_map(avatar, source)


def check_map(avatar: bpy.types.Object, source: bpy.types.Object, mapping: Mapping[str, str]) -> None:
    """ValueError naming every bone of `mapping` the source lacks and every joint the avatar lacks."""
    rigmaps.check_map(mapping, [b.name for b in source.data.bones], joint_names(avatar),
                      f"armature {source.name!r}", f"avatar {avatar.name!r}")


def heights(avatar: bpy.types.Object, source: bpy.types.Object) -> tuple[float, float]:
    """World heights (rest heads and tails) of the avatar and the source skeleton."""
    out = []
    for obj in (avatar, source):
        bones = obj.data.bones
        pts = np.array([list(b.head_local) + [1.0] for b in bones] + [list(b.tail_local) + [1.0] for b in bones])
        z = (pts @ _world(obj).T)[:, 2]
        out.append(float(z.max() - z.min()))
    return out[0], out[1]


def scale_fix(avatar: bpy.types.Object, source: bpy.types.Object) -> float | None:
    """The factor that brings a source armature wildly out of scale (SCALE_WARNING) to the avatar's size:
    a power of ten when one is within 25% of the exact ratio (centimetre or millimetre rigs), else the
    exact ratio; None when the sizes are comparable."""
    avatar_h, source_h = heights(avatar, source)
    if avatar_h <= 0 or source_h <= 0:
        return None
    ratio = avatar_h / source_h
    if 1 / SCALE_WARNING <= ratio <= SCALE_WARNING:
        return None
    power = 10.0 ** round(np.log10(ratio))
    return power if 0.8 <= ratio / power <= 1.25 else ratio


def action_range(source: bpy.types.Object) -> tuple[int, int] | None:
    """The frame range of the source's action, or None when it has none."""
    ad = source.animation_data
    if ad is None or ad.action is None:
        return None
    start, end = ad.action.frame_range
    return int(np.floor(start)), int(np.ceil(end))


CLIP_FPS_KEY = "genlca_clip_fps"  # on an action: the frame rate of the clip it came from (frames per second)
_FRAME_TIME_LINES = 4096  # a BVH's "Frame Time:" comes right after its hierarchy: read this many lines at most
_FRAME_TIME = re.compile(r"\s*frame\s+time\s*:\s*(\S*)", re.IGNORECASE)


def read_bvh_frame_time(path: str) -> float:
    """Seconds per frame from a BVH file's "Frame Time:" line (Blender's BVH importer reads it, but keeps
    it only when it rescales the keys or changes the scene's rate). ValueError naming the file when the
    line is missing or its value is not a positive number."""
    path = bpy.path.abspath(str(path))
    with open(path, "r", encoding="latin-1") as f:
        for number, line in enumerate(f):
            if number >= _FRAME_TIME_LINES:
                break
            found = _FRAME_TIME.match(line)
            if found is None:
                continue
            try:
                seconds = float(found.group(1))
            except ValueError:
                raise ValueError(f"{path}: 'Frame Time:' is not a number: {line.strip()!r}") from None
            if not np.isfinite(seconds) or seconds <= 0.0:
                raise ValueError(f"{path}: 'Frame Time:' must be a positive number of seconds, got {seconds}")
            return seconds
    raise ValueError(f"{path}: no 'Frame Time:' line in the BVH header (is it a BVH file?)")


def remember_clip_rate(source: bpy.types.Object, bvh_path: str) -> float:
    """Store the frame rate of the BVH the source's action came from on that action (CLIP_FPS_KEY, kept
    with the action in the .blend); returns it in frames per second."""
    action = source.animation_data.action if source.animation_data is not None else None
    if action is None:
        raise ValueError(f"armature {source.name!r} has no action to take a frame rate for")
    fps = 1.0 / read_bvh_frame_time(bvh_path)
    action[CLIP_FPS_KEY] = fps
    return fps


def clip_rate(source: bpy.types.Object) -> float | None:
    """The frame rate stored on the source's action (`remember_clip_rate`), or None."""
    action = source.animation_data.action if source.animation_data is not None else None
    fps = action.get(CLIP_FPS_KEY) if action is not None else None
    return float(fps) if fps else None


def scene_rate(fps: float) -> tuple[int, float]:
    """(render.fps, render.fps_base) for a frame rate, as Blender's BVH importer sets them: the nearest
    whole rate and the base that makes fps / fps_base exact (120 -> (120, 1.0); 29.97 -> (30, 1.001))."""
    whole = max(1, int(round(fps)))
    return whole, whole / fps


def set_scene_rate(scene: bpy.types.Scene, fps: float) -> bool:
    """Set the scene's frame rate to `fps`; False when it already plays at that rate (within 1e-6)."""
    if abs(scene.render.fps / scene.render.fps_base - fps) <= 1e-6 * fps:
        return False
    scene.render.fps, scene.render.fps_base = scene_rate(fps)
    return True


FLOOR_KEY = "genlca_floor"  # on a bound avatar: the world height of its source's floor
FLOOR_SAMPLES = 24
MAX_LIFT = 0.025  # metres: how far the ground contact may lift the avatar off the source's joints
OFF_FLOOR = 0.25  # metres: a source whose lowest bone is this far from its floor is not standing on it


def estimate_floor(source: bpy.types.Object, scene: bpy.types.Scene | None = None) -> float:
    """The world height the source's feet stand on: over up to FLOOR_SAMPLES frames of its action, the
    lowest bone end (head or tail) per frame; the 20th percentile of those (a glitchy frame may dip below
    the floor). Without an action: the lowest bone end at the current frame. Restores the frame."""
    scene = scene or bpy.context.scene
    frames = action_range(source)
    samples = [scene.frame_current] if frames is None else \
        sorted(set(np.linspace(frames[0], frames[1], FLOOR_SAMPLES).round().astype(int).tolist()))
    current = scene.frame_current
    lows = []
    bones = source.pose.bones
    lengths = np.array([b.length for b in source.data.bones])[_order(source.data.bones, [b.name for b in bones])]
    hidden = [o for o in scene.objects if o.type == "MESH" and "genlca_avatar_id" in o and not o.hide_viewport]
    for o in hidden:  # only the armature is needed: leave the splat meshes out of the evaluation
        o.hide_viewport = True
    global _reading_pose
    _reading_pose += 1
    try:
        for frame in samples:
            scene.frame_set(frame)
            evaluated = source.evaluated_get(bpy.context.evaluated_depsgraph_get())
            m = np.array(evaluated.matrix_world, np.float64) @ _matrices(evaluated.pose.bones, "matrix", len(bones))
            ends = np.concatenate([m[:, :3, 3], m[:, :3, 3] + m[:, :3, 1] * lengths[:, None]])
            lows.append(ends[:, 2].min())
    finally:
        _reading_pose -= 1
        for o in hidden:
            o.hide_viewport = False
        scene.frame_set(current)
    return float(np.percentile(lows, 20))


def _ground_lift(avatar: bpy.types.Object, plan, world: np.ndarray, src_world: np.ndarray) -> float:
    """How far to lift the fitted avatar (world z) so that its soles do not sink below the source's floor
    (at most MAX_LIFT): each joint near the avatar's rest floor keeps its rest height above it, scaled.
    Nothing while the source itself is well off its floor (e.g. its rest pose hangs below its origin)."""
    floor = avatar.get(FLOOR_KEY)
    if floor is None:
        return 0.0
    ends = np.concatenate([src_world[:, :3, 3], src_world[:, :3, 3] + src_world[:, :3, 1] * plan.src_lengths[:, None]])
    if abs(float(ends[:, 2].min()) - floor) > OFF_FLOOR:
        return 0.0
    feet, clearance = _feet(avatar, plan)
    if not len(feet):
        return 0.0
    scale = np.cbrt(np.linalg.det(world[feet, :3, :3]))
    sole = float((world[feet, 2, 3] - scale * clearance).min())
    return float(np.clip(floor - sole, 0.0, MAX_LIFT))


_feet_cache: dict[int, tuple] = {}


def _feet(avatar: bpy.types.Object, plan) -> tuple[np.ndarray, np.ndarray]:
    """Avatar joints within 10% of its height above its rest floor (the feet), and their heights above
    it (the rest floor: its lowest splat, else its lowest joint end)."""
    cached = _feet_cache.get(avatar.session_uid)
    if cached is not None and cached[0] is plan:
        return cached[1], cached[2]
    z = plan.tpl_rest[:, 2, 3]
    floor = z.min()
    meshes = splat_meshes(avatar)
    if meshes:
        mesh = meshes[0]
        co = scene_import.rest_positions(mesh.data)  # "position" is posed
        world = np.array(mesh.matrix_world, np.float64)
        if len(co):
            floor = float((co @ world[:3, :3].T + world[:3, 3])[:, 2].min())
    height = z.max() - floor
    feet = np.flatnonzero(z < floor + 0.1 * height)
    _feet_cache[avatar.session_uid] = (plan, feet, z[feet] - floor)
    return feet, z[feet] - floor


def bind(avatar: bpy.types.Object, source: bpy.types.Object,
         bone_map: Mapping[str, str] | None = None, rig: str | None = None,
         fit_proportions: bool | None = None, bake: tuple[int, int] | bool | None = None) -> dict[str, str]:
    """Bind `avatar` to `source`: propose a map (unless given; a given map is checked and refused with
    the names it gets wrong), store it (editable in the panel) and pose the avatar once. Returns the map.

    bake: the frames (first, last) whose motion becomes an action on the avatar (`bake_motion`), so the
    file plays without the add-on; False: live, the add-on's frame handler poses it (add-on only);
    None: a standard-rig avatar bakes `bake_range`, a fast-preview one is live."""
    if avatar.type != "ARMATURE" or source.type != "ARMATURE":
        raise ValueError(f"expected two armatures, got {avatar.name!r} ({avatar.type}) and "
                         f"{source.name!r} ({source.type})")
    if avatar == source:
        raise ValueError("an avatar cannot be bound to itself")
    if bone_map is None:
        detected, bone_map = propose_map(avatar, source)
        rig = rig or detected
    bone_map = {s: t for s, t in bone_map.items() if s and t}
    check_map(avatar, source, bone_map)
    if not bone_map:
        raise ValueError(f"the bone map for {source.name!r} is empty: map at least the hips")
    props = avatar.genlca
    if fit_proportions is not None and hasattr(props, "fit_proportions"):
        props.fit_proportions = fit_proportions
    avatar[FLOOR_KEY] = estimate_floor(source)
    _cancel_bake(avatar)
    props.source_armature = source
    props.rig = rig or "custom"
    set_bone_map(avatar, bone_map)
    _plans.pop(avatar.session_uid, None)
    _remove_motion(avatar)
    if bake is None:
        bake = scene_import.rig_mode(avatar) == scene_import.RIG_STANDARD
    if bake is True:
        bake = bake_range(source, bpy.context.scene)
    if bake:
        bake_motion(avatar, *bake)
    else:
        apply_binding(avatar, bpy.context.evaluated_depsgraph_get())
    return dict(bone_map)


def unbind(avatar: bpy.types.Object) -> None:
    """Stop driving the avatar; its pose returns exactly to its own rest pose (the map stays, to bind
    again)."""
    _cancel_bake(avatar)
    props = avatar.genlca
    props.source_armature = None
    _plans.pop(avatar.session_uid, None)
    _remove_motion(avatar)
    bones = avatar.pose.bones
    count = len(bones)
    bones.foreach_set("location", np.zeros(count * 3, np.float32))
    bones.foreach_set("rotation_quaternion", np.tile(np.float32([1, 0, 0, 0]), count))
    bones.foreach_set("scale", np.ones(count * 3, np.float32))
    avatar.update_tag(refresh={"DATA"})
    update_splats(avatar, predict=True)


def set_bone_map(avatar: bpy.types.Object, bone_map: Mapping[str, str]) -> None:
    """Store the map on the avatar (one row per avatar joint that a bone drives)."""
    items = avatar.genlca.bone_map
    items.clear()
    for source_bone, joint in bone_map.items():
        item = items.add()
        item.source, item.target = source_bone, joint


def bone_map(avatar: bpy.types.Object) -> dict[str, str]:
    return {item.source: item.target for item in avatar.genlca.bone_map if item.source and item.target}


def bone_map_json(avatar: bpy.types.Object) -> str:
    return json.dumps(bone_map(avatar), indent=1, sort_keys=True)


_plans: dict[int, tuple[tuple, object]] = {}  # avatar session_uid -> (key, RetargetPlan)


def _plan(avatar: bpy.types.Object, source: bpy.types.Object, mapping: Mapping[str, str]):
    """The retarget plan of this binding (rebuilt when the map or either object's transform changes)."""
    key = (source.session_uid, tuple(sorted(mapping.items())), _world(avatar).tobytes(), _world(source).tobytes())
    cached = _plans.get(avatar.session_uid)
    if cached is not None and cached[0] == key:
        return cached[1]
    names, parents, src_rest, lengths = source_skeleton(source)
    tpl_names = joint_names(avatar)
    bones = avatar.data.bones
    order = _order(bones, tpl_names)
    av = _world(avatar)
    tails = np.empty(len(bones) * 3, np.float32)
    bones.foreach_get("tail_local", tails)
    tails = tails.reshape(-1, 3)[order].astype(np.float64) @ av[:3, :3].T + av[:3, 3]
    src_index = {n: i for i, n in enumerate(names)}
    tpl_index = {n: i for i, n in enumerate(tpl_names)}
    plan = retarget.plan_retarget(av @ rest_matrices(avatar).astype(np.float64), joint_parents(avatar), tails,
                                  src_rest, parents, lengths,
                                  {src_index[s]: tpl_index[t] for s, t in mapping.items()})
    _plans[avatar.session_uid] = (key, plan)
    return plan


def solved_channels(avatar: bpy.types.Object, depsgraph: bpy.types.Depsgraph
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The avatar's pose channels (location (J, 3), rotation_quaternion (J, 4) wxyz, uniform scale (J,),
    joint order) that follow its bound source armature's current evaluated pose (`bridge.rig.retarget.solve`;
    with `fit_proportions` the avatar's joints land on the source's); None when it is not bound."""
    source = avatar.genlca.source_armature
    if source is None or source.type != "ARMATURE":  # Blender < 5.0 lets the picker take any object
        return None
    mapping = {s: t for s, t in bone_map(avatar).items() if s in source.data.bones and t in avatar.data.bones}
    if not mapping:
        return None
    plan = _plan(avatar, source, mapping)
    src_eval = source.evaluated_get(depsgraph)
    src_names = [b.name for b in source.data.bones]
    src_pose = _matrices(src_eval.pose.bones, "matrix", len(src_names))[_order(src_eval.pose.bones, src_names)]
    src_world = np.array(src_eval.matrix_world, dtype=np.float64) @ src_pose.astype(np.float64)
    fit = bool(getattr(avatar.genlca, "fit_proportions", True))
    world = retarget.solve(plan, src_world, fit=fit)
    if fit:  # feet on the source's floor: a sole that would sink lifts the avatar (MAX_LIFT at most)
        world[:, 2, 3] += _ground_lift(avatar, plan, world, src_world)
    arm = np.array(avatar.matrix_world.inverted(), np.float64) @ world  # armature space
    return retarget.pose_basis(rest_matrices(avatar).astype(np.float64), joint_parents(avatar), arm)


def apply_binding(avatar: bpy.types.Object, depsgraph: bpy.types.Depsgraph) -> None:
    """Pose `avatar` from its bound source armature's current evaluated pose (`solved_channels`)."""
    channels = solved_channels(avatar, depsgraph)
    if channels is None:
        return
    location, rotation, scale = channels
    bones = avatar.pose.bones
    order = _order(bones, joint_names(avatar))
    count = len(bones)
    loc = np.zeros((count, 3), np.float32)
    quats = np.tile(np.float32([1, 0, 0, 0]), (count, 1))
    scales = np.ones((count, 3), np.float32)
    loc[order], quats[order], scales[order] = location, rotation, scale[:, None]
    for pb in bones:
        if pb.rotation_mode != "QUATERNION":
            pb.rotation_mode = "QUATERNION"
    bones.foreach_set("location", loc.ravel())
    bones.foreach_set("rotation_quaternion", quats.ravel())
    bones.foreach_set("scale", scales.ravel())
    avatar.update_tag(refresh={"DATA"})  # foreach_set tags nothing: re-evaluate the pose


# ------------------------------------------------------------------ the bound motion as an action
BAKED_KEY = "genlca_baked"  # on a bound avatar: [first, last] frame of its baked motion (absent: live)
MOTION_KEY = "genlca_motion"  # on an action: the avatar binding baked it (unbind and a new bake remove it)
CONSTANT_TOLERANCE = 1e-6  # a channel that varies less than this over the frames gets no F-curve


def is_live(avatar: bpy.types.Object) -> bool:
    """Bound and followed frame by frame by the add-on's handler (not baked into an action)."""
    return avatar.genlca.source_armature is not None and avatar.get(BAKED_KEY) is None


def _new_fcurve(action: bpy.types.Action, obj: bpy.types.Object, data_path: str, index: int, group: str):
    if hasattr(action, "fcurve_ensure_for_datablock"):  # Blender 4.4+: layered actions (a slot per user)
        return action.fcurve_ensure_for_datablock(obj, data_path, index=index, group_name=group)
    return action.fcurves.new(data_path, index=index, action_group=group)


def _cancel_bake(avatar: bpy.types.Object) -> None:
    from . import motion_bake

    motion_bake.cancel_bake(avatar)


def _remove_motion(avatar: bpy.types.Object) -> None:
    ad = avatar.animation_data
    action = ad.action if ad is not None else None
    if action is not None and action.get(MOTION_KEY):
        ad.action = None
        if action.users == 0:
            bpy.data.actions.remove(action)
    avatar.pop(BAKED_KEY, None)


def bake_motion(avatar: bpy.types.Object, frame_start: int, frame_end: int,
                scene: bpy.types.Scene | None = None) -> bpy.types.Action | None:
    """Bake the bound motion over [frame_start, frame_end] into an action on the avatar armature (its
    pose channels, one key per frame, linear), which replaces an earlier baked one: Blender then plays the
    avatar without the add-on, in any process, in every exporter. Channels that do not move get their
    value and no F-curve. Returns the action (None when no channel moves: the pose is set). At once, in this
    call; `motion_bake.start_bake` does the same over timer ticks (the operators, with a UI)."""
    from . import motion_bake

    return motion_bake.MotionBake(avatar, frame_start, frame_end, scene).run()


def bake_range(source: bpy.types.Object, scene: bpy.types.Scene) -> tuple[int, int]:
    """The frames a bind bakes by default: the source's action, else the current frame."""
    return action_range(source) or (scene.frame_current, scene.frame_current)


def _report(what: str, obj: bpy.types.Object, exc: Exception) -> None:
    print(f"GenLCA: {what} of {obj.name!r} failed: {type(exc).__name__}: {exc}")


@bpy.app.handlers.persistent
def on_frame_change(scene: bpy.types.Scene, depsgraph: bpy.types.Depsgraph | None = None) -> None:
    depsgraph = depsgraph or bpy.context.evaluated_depsgraph_get()
    for obj in scene.objects:
        if obj.type != "ARMATURE":
            continue
        bound = is_live(obj)
        if bound and not _reading_pose:
            try:
                apply_binding(obj, depsgraph)
            except Exception as exc:  # a broken binding must not break playback
                _report("binding", obj, exc)
                continue
        if is_avatar(obj):
            try:  # a bound avatar's pose was just written and is not evaluated yet: predict it
                update_splats(obj, depsgraph, predict=bound)
            except Exception as exc:
                _report("splat pose update", obj, exc)


_seen_basis: dict[int, bytes] = {}  # avatar armature -> its pose bones' matrix_basis at the last update


@bpy.app.handlers.persistent
def on_depsgraph_update_pre(scene: bpy.types.Scene, *_args) -> None:
    """Before the depsgraph evaluates: avatars whose pose channels changed get their splat rotations from
    the predicted pose now, so the splat mesh is evaluated once with them."""
    seen = {}
    for obj in scene.objects:
        if not is_avatar(obj) or scene_import.rig_mode(obj) != scene_import.RIG_FAST_PREVIEW:
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
            _report("splat pose update", obj, exc)
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
            _report("splat pose update", avatar, exc)


_HANDLERS = (("frame_change_post", on_frame_change), ("depsgraph_update_pre", on_depsgraph_update_pre),
             ("depsgraph_update_post", on_depsgraph_update_post))


def register() -> None:
    for name, handler in _HANDLERS:
        handlers = getattr(bpy.app.handlers, name)
        if handler not in handlers:
            handlers.append(handler)


def unregister() -> None:
    from . import motion_bake

    motion_bake.cancel_all()
    for name, handler in _HANDLERS:
        handlers = getattr(bpy.app.handlers, name)
        if handler in handlers:
            handlers.remove(handler)
    _seen_basis.clear()
