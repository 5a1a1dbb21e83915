"""Avatars as files, no backend needed: a GenLCA avatar `.safetensors` (rigged) or a 3DGS `.ply` (splats).

Reading and writing is `bridge.files.avatar` (numpy only); the scene is built by the same staged import
as a `get_avatar` reply (`scene_import.import_steps`), so a file and a download give the same objects.
Export reads the arrays back from those objects: positions, the rest `rotation`, `log(scale)`, and the
values the import keeps as they were stored (`genlca_opacity_logit`, `genlca_sh_<i>`: every SH band);
a rigged avatar adds its skin (the packed `genlca_skin_<i>` attributes, weights within 7.7e-6) and the
skeleton kept on the armature (`genlca_skeleton`). Both writers are atomic (temporary file + rename).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import bpy
import numpy as np

from . import scene_import
from ._bridge import avatar_files
from .armature_build import avatar_joint_names
from .splat_pose import splat_skin

AvatarFileError = avatar_files.AvatarFileError
FILE_SUFFIXES = (".safetensors", ".ply")


def read(path: str | Path):
    """The file as an `AvatarFile`; every problem an AvatarFileError that names the file."""
    path = Path(bpy.path.abspath(str(path)))
    avatar = avatar_files.read_avatar_file(path)
    try:
        scene_import.check_avatar_arrays(avatar.arrays, avatar.joint_names)
    except ValueError as exc:  # the import's own checks (skin count, parents) on top of the reader's
        raise AvatarFileError(f"{path}: {exc}") from None
    return avatar


def import_steps(context: bpy.types.Context, path: str | Path, collection: bpy.types.Collection | None = None,
                 out: dict | None = None) -> Iterator[tuple[int, int]]:
    """Read the file, then the staged scene import (`scene_import.import_steps`); out gets "armature"
    (None for unrigged splats), "mesh" and "file" (the AvatarFile)."""
    out = {} if out is None else out
    path = Path(bpy.path.abspath(str(path)))
    avatar = read(path)
    out["file"] = avatar
    meta = dict(avatar.meta)
    meta.setdefault("source_file", path.name)
    header = {"avatar_id": str(meta.get("avatar_id", "")), "joint_names": avatar.joint_names, "meta": meta}
    yield from scene_import.import_steps(context, header, avatar.arrays, collection, name=f"GenLCA {path.stem}",
                                         out=out)


def import_file(context: bpy.types.Context, path: str | Path, collection: bpy.types.Collection | None = None
                ) -> tuple[bpy.types.Object | None, bpy.types.Object]:
    """Import in one go: (armature or None, splat mesh)."""
    out: dict = {}
    for _ in import_steps(context, path, collection, out):
        pass
    return out["armature"], out["mesh"]


def splat_objects(obj: bpy.types.Object | None) -> tuple[bpy.types.Object, bpy.types.Object | None]:
    """(splat mesh, its avatar armature or None) for an avatar armature, its splat mesh, or splats alone."""
    if obj is not None and obj.type == "ARMATURE":
        meshes = [c for c in obj.children if c.type == "MESH" and "rotation" in c.data.attributes]
        if not meshes:
            raise ValueError(f"armature {obj.name!r} has no GenLCA splat mesh")
        return meshes[0], (obj if scene_import.SKELETON_KEY in obj else None)  # older imports: splats only
    if obj is None or obj.type != "MESH" or "rotation" not in obj.data.attributes:
        raise ValueError(f"{obj.name if obj else 'nothing'!r} is not a GenLCA avatar or splat mesh: select the "
                         f"avatar's armature or its splats")
    parent = obj.parent if obj.parent is not None and scene_import.SKELETON_KEY in obj.parent else None
    return obj, parent


def _attribute(mesh: bpy.types.Mesh, name: str, prop: str, width: int) -> np.ndarray:
    n = len(mesh.vertices)
    out = np.empty(n * width, np.float32)
    mesh.attributes[name].data.foreach_get(prop, out)
    return out.reshape(n, width) if width > 1 else out


def scene_avatar(obj: bpy.types.Object):
    """An `AvatarFile` from an imported avatar (rest pose) or splat mesh."""
    mesh_obj, armature = splat_objects(obj)
    mesh = mesh_obj.data
    arrays = {"means": scene_import.rest_positions(mesh),  # "position" is posed
              "rotations": _attribute(mesh, "rotation", "value", 4)}
    with np.errstate(divide="ignore"):
        arrays["log_scales"] = np.log(_attribute(mesh, "scale", "vector", 3))
    if scene_import.RAW_OPACITY_ATTRIBUTE in mesh.attributes:
        arrays["opacity_logits"] = _attribute(mesh, scene_import.RAW_OPACITY_ATTRIBUTE, "value", 1)
    else:  # splats made some other way: from the displayed opacity
        p = np.clip(_attribute(mesh, "opacity", "value", 1), 1e-6, 1 - 1e-6)
        arrays["opacity_logits"] = np.log(p / (1 - p)).astype(np.float32)
    bands = [_attribute(mesh, scene_import.RAW_SH_ATTRIBUTE.format(i), "vector", 3)
             for i in range(16) if scene_import.RAW_SH_ATTRIBUTE.format(i) in mesh.attributes]
    if not bands:  # from the displayed colour (linear -> sRGB -> DC)
        c = np.clip(_attribute(mesh, "color", "color", 4)[:, :3], 0, 1)
        srgb = np.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1 / 2.4) - 0.055)
        bands = [((srgb - 0.5) / scene_import.SH_C0).astype(np.float32)]
    arrays["sh"] = np.stack(bands, axis=1)
    if not np.isfinite(arrays["log_scales"]).all():
        raise ValueError(f"{mesh_obj.name!r} has splats of zero scale")
    meta_owner, joint_names = mesh_obj, []
    if armature is not None:
        indices, weights = splat_skin(mesh)
        arrays["skin_indices"], arrays["skin_weights"] = indices.astype(np.uint16), weights
        skeleton = armature[scene_import.SKELETON_KEY]
        j = len(skeleton["joint_parents"])
        arrays["joint_parents"] = np.asarray(skeleton["joint_parents"], np.int32)
        arrays["rest_matrices"] = np.asarray(skeleton["rest_matrices"], np.float32).reshape(j, 4, 4)
        arrays["joint_tails"] = np.asarray(skeleton["joint_tails"], np.float32).reshape(j, 3)
        joint_names, meta_owner = avatar_joint_names(armature), armature
    try:
        meta = json.loads(meta_owner.get("genlca_meta", "{}"))
    except json.JSONDecodeError:
        meta = {}
    return avatar_files.AvatarFile(arrays, joint_names, meta if isinstance(meta, dict) else {})


def export_file(obj: bpy.types.Object, path: str | Path, y_up: bool = False) -> Path:
    """Write the avatar or splats `obj` to `path`: `.ply` (3DGS; y_up for Y-up viewers) or `.safetensors`
    (rigged avatars only). Atomic: an existing file is replaced whole or not at all."""
    path = Path(bpy.path.abspath(str(path)))
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise AvatarFileError(f"{path}: expected a .ply or .safetensors file name")
    avatar = scene_avatar(obj)
    if suffix == ".ply":
        return avatar_files.write_ply(path, avatar.arrays, y_up=y_up)
    if not avatar.rigged:
        raise AvatarFileError(f"{path}: {obj.name!r} is splats without a skeleton; export it as .ply")
    return avatar_files.write_avatar(path, avatar)
