"""The avatar's armature: one bone per joint, edit bones straight from the rest matrices (head =
translation, +Y towards the tail, roll from the matrix), and bulk readers of bone matrices and joint
order that binding and the splat posing share."""
from __future__ import annotations

import json

import bpy
import numpy as np
from mathutils import Matrix


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
