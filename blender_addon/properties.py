"""Scene- and object-level settings: what to generate, the job in flight, the avatars, the bindings."""

import bpy

from ._bridge import protocol


class GenLCAAvatarItem(bpy.types.PropertyGroup):
    avatar_id: bpy.props.StringProperty(name="Avatar id")
    label: bpy.props.StringProperty(name="Label")
    armature: bpy.props.PointerProperty(name="Armature", type=bpy.types.Object)


class GenLCABoneMapItem(bpy.types.PropertyGroup):
    source: bpy.props.StringProperty(name="Source bone", description="Bone of the bound scene armature")
    target: bpy.props.StringProperty(name="Avatar joint", description="Joint of the avatar it drives")


def _is_armature(self, obj: bpy.types.Object) -> bool:
    return obj.type == "ARMATURE"


# A PointerProperty `poll` callback makes Blender 4.2-4.5 crash (4.2, 4.3) or hang (4.5) when it exits
# (seen with the bpy module; Blender 5.0+ is fine). There the picker lists every object and binding
# checks the type itself (binding.bind_armature reports a non-armature by name).
_ARMATURE_POLL = {"poll": _is_armature} if bpy.app.version >= (5, 0, 0) else {}


class GenLCAObjectProps(bpy.types.PropertyGroup):
    """On an avatar armature: the scene armature that drives it, and how."""

    source_armature: bpy.props.PointerProperty(name="Driven by", type=bpy.types.Object, **_ARMATURE_POLL)
    rig: bpy.props.StringProperty(name="Rig", description="Detected naming of the driving armature")
    bone_map: bpy.props.CollectionProperty(type=GenLCABoneMapItem)
    bone_map_index: bpy.props.IntProperty()
    map_armature: bpy.props.PointerProperty(name="Map for", type=bpy.types.Object, **_ARMATURE_POLL,
                                            description="The armature whose bones the bone map names")
    fit_proportions: bpy.props.BoolProperty(
        name="Fit Proportions", default=True,
        description="Stretch the avatar's bones to the driving armature's lengths, so its joints land on "
                    "the armature's joints (off: the avatar keeps its own proportions and follows rotations)")


class GenLCASceneProps(bpy.types.PropertyGroup):
    # generation
    prompt: bpy.props.StringProperty(name="Prompt", description="Describe the person to generate")
    image_path: bpy.props.StringProperty(name="Reference image", subtype="FILE_PATH",
                                         description="Optional photo of the person (with or without a prompt)")
    image: bpy.props.PointerProperty(name="Reference image", type=bpy.types.Image,
                                     description="Optional photo of the person as a Blender image (used before "
                                                 "the file path)")
    seed: bpy.props.IntProperty(name="Seed", default=0, min=0)
    steps: bpy.props.IntProperty(name="Steps", default=32, min=1, max=1000)
    guidance: bpy.props.FloatProperty(name="Guidance", default=4.0, min=0.0, max=30.0)
    # editing
    edit_prompt: bpy.props.StringProperty(name="Edit prompt", description="What to change in the active avatar")
    strength: bpy.props.FloatProperty(name="Strength", default=0.6, min=0.01, max=1.0, subtype="FACTOR")
    region: bpy.props.EnumProperty(
        name="Region", items=[("whole_body", "Whole Body", "Text edit of the whole avatar at the strength"),
                             (protocol.AUTO_REGION, "Auto (what the prompt changes)",
                              "Change the garment the edit prompt changes against the avatar's own caption (a "
                              "new colour word recolours it, keeping its folds); every other texel stays "
                              "bit-identical")]
        + [(r, r.title(), f"Regenerate the {r}; every other region stays bit-identical")
           for r in protocol.BODY_REGIONS],
        # Auto by default: a whole-body noise edit at a strength low enough to keep the person barely changes
        # the shipped model's output (docs/BENCHMARKS.md, "Editing"), while Auto changes what the prompt names
        default=protocol.AUTO_REGION)
    export_format: bpy.props.EnumProperty(name="Format", items=[
        ("ply", "PLY", "Standard 3DGS PLY: the splats, for any splat viewer"),
        ("safetensors", ".safetensors", "The GenLCA avatar file: splats, skeleton and skin"),
        ("glb", "GLB (rigged mesh)", "A rigged, textured mesh for game engines (Unity, Unreal, Godot, three.js), "
                                     "with the avatar's animation over the scene's frames"),
        ("fbx", "FBX (rigged mesh)", "The GLB through Blender's glTF importer and FBX exporter")])
    fast_preview: bpy.props.BoolProperty(
        name="Fast preview (add-on only)", default=False,
        description="Import avatars without vertex groups or an Armature modifier: the add-on's handlers pose "
                    "the splats in numpy (faster for very large avatars). A file saved this way shows the "
                    "avatar frozen in its rest pose wherever the add-on is not installed (render farms, "
                    "exporters, colleagues). Off: a standard rig that Blender poses itself")
    # connection and the job in flight (written by the session's timer)
    connection: bpy.props.StringProperty(name="Connection", default="not connected")
    connected: bpy.props.BoolProperty(default=False)
    job_running: bpy.props.BoolProperty(default=False)
    job_label: bpy.props.StringProperty()
    job_stage: bpy.props.StringProperty()
    job_progress: bpy.props.FloatProperty(min=0.0, max=1.0, subtype="FACTOR")
    message: bpy.props.StringProperty(description="The last result or error")
    message_is_error: bpy.props.BoolProperty(default=False)
    # avatars
    avatars: bpy.props.CollectionProperty(type=GenLCAAvatarItem)
    avatar_index: bpy.props.IntProperty(name="Avatar", default=0)



def active_avatar(props: GenLCASceneProps) -> "GenLCAAvatarItem | None":
    """The avatar selected in the panel's list, or None.

    A free function, not a method: a Python method on a registered PropertyGroup makes Blender 4.2-4.5
    crash (4.2, 4.3) or hang (4.5) when it exits (seen with the bpy module; 5.0+ is fine).
    """
    return props.avatars[props.avatar_index] if 0 <= props.avatar_index < len(props.avatars) else None


classes = (GenLCAAvatarItem, GenLCABoneMapItem, GenLCAObjectProps, GenLCASceneProps)
_register, _unregister = bpy.utils.register_classes_factory(classes)


def register() -> None:
    _register()
    bpy.types.Scene.genlca = bpy.props.PointerProperty(type=GenLCASceneProps)
    bpy.types.Object.genlca = bpy.props.PointerProperty(type=GenLCAObjectProps)


def unregister() -> None:
    del bpy.types.Object.genlca
    del bpy.types.Scene.genlca
    _unregister()
