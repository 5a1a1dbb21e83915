"""The avatar as a rigged, textured mesh for game engines: the backend writes the .glb (the body template's
mesh lives there: backend/export), with the avatar's motion in the scene as its animation; FBX goes
through Blender's own exporters: the .glb is imported by Blender's glTF importer and written by its FBX
exporter, then the imported objects are removed again.

`motion_arrays` reads the avatar's pose over the scene's frame range (its baked or keyframed action, or a
live binding) as a render request's pose arrays (`binding.pose_arrays`); nothing when it does not move."""
from __future__ import annotations

import os
from pathlib import Path

import bpy
import numpy as np

from . import binding

MESH_FORMATS = ("glb", "fbx")
STILL_TOLERANCE = 1e-6  # pose matrices that vary less than this over the frames: no animation


def is_animated(avatar: bpy.types.Object) -> bool:
    ad = avatar.animation_data
    return (ad is not None and ad.action is not None) or binding.is_live(avatar)


def motion_arrays(avatar: bpy.types.Object, scene: bpy.types.Scene) -> tuple[dict[str, np.ndarray], float] | None:
    """(pose arrays of the scene's frame range, frames per second), or None for an avatar that does not
    move. Steps the scene's frames (the splat meshes left out) and restores the current one."""
    if not is_animated(avatar):
        return None
    current = scene.frame_current
    try:
        posed = np.stack([m for _, m in binding.iter_pose_matrices(avatar, scene.frame_start, scene.frame_end,
                                                                   scene)])
    finally:
        scene.frame_set(current)
    if np.ptp(posed, axis=0).max(initial=0.0) < STILL_TOLERANCE:
        return None
    return binding.pose_arrays(avatar, posed), scene.render.fps / scene.render.fps_base


def glb_to_fbx(glb: str | os.PathLike, fbx: str | os.PathLike) -> Path:
    """Convert a .glb to .fbx with Blender's glTF importer and FBX exporter (armature and mesh, the
    animation baked, no leaf bones); the imported objects are removed afterwards. Returns the .fbx path."""
    before = set(bpy.data.objects)
    actions_before = set(bpy.data.actions)
    result = bpy.ops.import_scene.gltf(filepath=str(glb))
    if result != {"FINISHED"}:
        raise RuntimeError(f"Blender's glTF importer could not read {glb}: {result}")
    imported = [o for o in bpy.data.objects if o not in before]
    try:
        for obj in bpy.context.view_layer.objects:
            obj.select_set(obj in imported)
        result = bpy.ops.export_scene.fbx(filepath=str(fbx), use_selection=True, object_types={"ARMATURE", "MESH"},
                                          add_leaf_bones=False, bake_anim=True, path_mode="COPY",
                                          embed_textures=True, axis_forward="-Z", axis_up="Y")
        if result != {"FINISHED"}:
            raise RuntimeError(f"Blender's FBX exporter could not write {fbx}: {result}")
    finally:
        meshes = [o.data for o in imported if o.type == "MESH"]
        for obj in imported:
            bpy.data.objects.remove(obj)
        for mesh in meshes:
            if mesh.users == 0:
                bpy.data.meshes.remove(mesh)
        for action in set(bpy.data.actions) - actions_before:
            if action.users == 0:
                bpy.data.actions.remove(action)
    return Path(fbx)
