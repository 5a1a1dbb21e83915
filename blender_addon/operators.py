"""Thin operators: check, start a job through `workflows`, report. Work happens in the session's timer."""

from pathlib import Path

import bpy
from bpy_extras.io_utils import ExportHelper, ImportHelper

from . import binding, file_io, motion_bake, preferences, properties, session, skin_groups, workflows


def _session(op: bpy.types.Operator) -> session.Session | None:
    try:
        return session.get_session()
    except Exception as exc:  # no pyzmq, a bad address or key
        op.report({"ERROR"}, f"GenLCA cannot connect: {exc}")
        return None


def _idle(cls, context) -> bool:
    if context.scene.genlca.job_running:
        cls.poll_message_set("A GenLCA job is running; wait for it or cancel it")
        return False
    return True


def _active_item(cls, context):
    item = properties.active_avatar(context.scene.genlca)
    if item is None:
        cls.poll_message_set("Generate or import an avatar first")
    return item


def _start(op: bpy.types.Operator, start, *args, **kwargs) -> set[str]:
    s = _session(op)
    if s is None:
        return {"CANCELLED"}
    try:
        start(s, *args, **kwargs)
    except Exception as exc:  # bad input, an unreadable image, a request the codec refuses: a report, no traceback
        op.report({"ERROR"}, str(exc))
        return {"CANCELLED"}
    return {"FINISHED"}


class GENLCA_OT_connect(bpy.types.Operator):
    """Say hello to the GenLCA backend (checks the address, the key and the protocol version)"""

    bl_idname = "genlca.connect"
    bl_label = "Connect"

    @classmethod
    def poll(cls, context):
        return _idle(cls, context)  # connecting again opens a fresh socket: it would drop running jobs

    def execute(self, context):
        session.close_session()  # fresh socket: the preferences may have changed
        self.report({"INFO"}, f"Connecting to {session.settings()['address']}…")
        return _start(self, workflows.hello, context.scene)


class GENLCA_OT_generate(bpy.types.Operator):
    """Generate an avatar from the prompt and/or the reference image"""

    bl_idname = "genlca.generate"
    bl_label = "Generate"

    @classmethod
    def poll(cls, context):
        props = context.scene.genlca
        if not props.prompt.strip() and not props.image_path and props.image is None:
            cls.poll_message_set("Write a prompt or choose a reference image")
            return False
        return _idle(cls, context)

    def execute(self, context):
        return _start(self, workflows.generate, context.scene)


class GENLCA_OT_edit(bpy.types.Operator):
    """Edit the selected avatar: the whole body with the edit prompt (strength: how far it may move), or
    regenerate the chosen region (the rest stays bit-identical)"""

    bl_idname = "genlca.edit"
    bl_label = "Edit"

    @classmethod
    def poll(cls, context):
        if _active_item(cls, context) is None:
            return False
        props = context.scene.genlca
        if props.region in (workflows.WHOLE_BODY, workflows.AUTO_REGION) and not props.edit_prompt.strip():
            cls.poll_message_set("Write an edit prompt (or pick a body region to regenerate)")
            return False
        return _idle(cls, context)

    def execute(self, context):
        return _start(self, workflows.edit, context.scene, region=context.scene.genlca.region)


class GENLCA_OT_regenerate_region(bpy.types.Operator):
    """Regenerate one body region of the selected avatar; the rest stays"""

    bl_idname = "genlca.regenerate_region"
    bl_label = "Regenerate Region"

    @classmethod
    def poll(cls, context):
        if _active_item(cls, context) is None:
            return False
        if context.scene.genlca.region == workflows.WHOLE_BODY:
            cls.poll_message_set("Pick the body region to regenerate")
            return False
        if context.scene.genlca.region == workflows.AUTO_REGION and not context.scene.genlca.edit_prompt.strip():
            cls.poll_message_set("Write an edit prompt: Auto regenerates what it changes")
            return False
        return _idle(cls, context)

    def execute(self, context):
        return _start(self, workflows.edit, context.scene, region=context.scene.genlca.region)


class GENLCA_OT_cancel(bpy.types.Operator):
    """Cancel the running GenLCA jobs"""

    bl_idname = "genlca.cancel"
    bl_label = "Cancel"

    @classmethod
    def poll(cls, context):
        s = session.current_session()
        if s is None or not s.busy:
            cls.poll_message_set("No GenLCA job is running")
            return False
        return True

    def execute(self, context):
        session.current_session().cancel_all()
        self.report({"WARNING"}, "GenLCA jobs cancelled")
        return {"FINISHED"}


class GENLCA_OT_import_avatar(bpy.types.Operator):
    """Download an avatar from the backend and build it in the scene (armature + splats)"""

    bl_idname = "genlca.import_avatar"
    bl_label = "Import Avatar"

    avatar_id: bpy.props.StringProperty(name="Avatar id", description="Empty: the avatar selected in the list")

    @classmethod
    def poll(cls, context):
        return _idle(cls, context)

    def execute(self, context):
        avatar_id = self.avatar_id
        if not avatar_id:
            item = properties.active_avatar(context.scene.genlca)
            if item is None:
                self.report({"ERROR"}, "Give an avatar id or select an avatar in the list")
                return {"CANCELLED"}
            avatar_id = item.avatar_id
        return _start(self, workflows.fetch_and_import, context.scene, avatar_id)


def _avatar_and_armature(cls, context):
    """(avatar armature, active armature) for the bone-map operators, or None with a poll message."""
    item = _active_item(cls, context)
    if item is None:
        return None
    if item.armature is None:
        cls.poll_message_set("The selected avatar has no armature in this file; import it again")
        return None
    obj = context.active_object
    if obj is None or obj.type != "ARMATURE" or obj == item.armature:
        cls.poll_message_set("Make the armature that should drive the avatar the active object")
        return None
    return item.armature, obj


class GENLCA_OT_bind_armature(bpy.types.Operator):
    """Drive the selected avatar from the active armature (any humanoid naming, or matched by its shape;
    the bone map below is used when it was made for this armature)"""

    bl_idname = "genlca.bind_armature"
    bl_label = "Bind to Active Armature"
    bl_options = {"REGISTER", "UNDO"}

    fix_scale: bpy.props.BoolProperty(name="Fix Scale", default=True,
                                      description="Scale an armature that is far bigger or smaller than the "
                                                  "avatar (e.g. a centimetre BVH) to the avatar's size")
    use_action_range: bpy.props.BoolProperty(name="Scene Range from Action", default=True,
                                             description="Set the scene's frame range to the armature's action")
    use_clip_rate: bpy.props.BoolProperty(name="Scene Frame Rate from Clip", default=True,
                                          description="Play the action at its clip's own frame rate (a BVH's "
                                                      "Frame Time, known when it was imported through GenLCA "
                                                      "or named below)")
    bake_motion: bpy.props.BoolProperty(
        name="Bake Motion", default=True,
        description="Bake the bound motion over the scene's frame range into an action on the avatar's "
                    "armature, so the file animates without the add-on (render farms, FBX / glTF export). "
                    "Off: the add-on poses the avatar live on every frame change (add-on only)")
    clip_path: bpy.props.StringProperty(name="BVH File", subtype="FILE_PATH", default="",
                                        description="The BVH the armature's action came from (optional): its "
                                                    "Frame Time sets the scene's frame rate")

    @classmethod
    def poll(cls, context):
        return _avatar_and_armature(cls, context) is not None

    def execute(self, context):
        avatar, source = _avatar_and_armature(type(self), context)
        notes = []
        factor = binding.scale_fix(avatar, source) if self.fix_scale else None
        if factor is not None:
            avatar_h, source_h = binding.heights(avatar, source)
            source.scale = [c * factor for c in source.scale]
            notes.append(f"scaled {source.name} by {factor:.4g} ({source_h:.3g} tall against the avatar's "
                         f"{avatar_h:.3g})")
        if self.clip_path:
            try:
                binding.remember_clip_rate(source, self.clip_path)
            except (ValueError, OSError) as exc:
                self.report({"ERROR"}, str(exc))
                return {"CANCELLED"}
        fps = binding.clip_rate(source) if self.use_clip_rate else None
        if fps is not None and binding.set_scene_rate(context.scene, fps):
            notes.append(f"scene frame rate {fps:.6g} fps from the clip")
        frames = binding.action_range(source) if self.use_action_range else None
        if frames is not None and (context.scene.frame_start, context.scene.frame_end) != frames:
            context.scene.frame_start, context.scene.frame_end = frames
            notes.append(f"scene frames {frames[0]}-{frames[1]} from the action")
        ap = avatar.genlca
        edited = ap.map_armature == source and len(ap.bone_map) > 0
        scene = context.scene
        frames = (scene.frame_start, scene.frame_end)
        timer_bake = self.bake_motion and not bpy.app.background  # background mode runs no timers
        try:
            # with a UI: bound live now, the bake follows over timer ticks (the avatar plays live meanwhile)
            mapping = binding.bind(avatar, source, bone_map=binding.bone_map(avatar) if edited else None,
                                   rig=ap.rig if edited else None,
                                   bake=frames if self.bake_motion and not timer_bake else False)
            if timer_bake:
                _start_bake(avatar, frames, scene)
                notes.append(f"baking frames {frames[0]}-{frames[1]}")
        except (ValueError, KeyError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        ap.map_armature = source
        self.report({"INFO"}, f"Bound {avatar.name} to {source.name} ({avatar.genlca.rig}, {len(mapping)} "
                              f"bones mapped)" + "".join(f"; {n}" for n in notes))
        return {"FINISHED"}


class GENLCA_OT_bake_motion(bpy.types.Operator):
    """Bake the bound avatar's motion again over the scene's frame range (after changing the bone map,
    Fit Proportions or the driving armature's animation), so the file animates without the add-on"""

    bl_idname = "genlca.bake_motion"
    bl_label = "Bake Motion"
    bl_options = {"REGISTER"}  # with a UI the action is written by a later timer tick, outside this undo step

    @classmethod
    def poll(cls, context):
        item = properties.active_avatar(context.scene.genlca)
        if item is None or item.armature is None or item.armature.genlca.source_armature is None:
            cls.poll_message_set("Select a bound avatar in the GenLCA list")
            return False
        return True

    def execute(self, context):
        avatar = properties.active_avatar(context.scene.genlca).armature
        scene = context.scene
        try:
            if not bpy.app.background:
                _start_bake(avatar, (scene.frame_start, scene.frame_end), scene)
                self.report({"INFO"}, f"Baking frames {scene.frame_start}-{scene.frame_end} of {avatar.name}")
                return {"FINISHED"}
            action = binding.bake_motion(avatar, scene.frame_start, scene.frame_end, scene)
        except ValueError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Baked frames {scene.frame_start}-{scene.frame_end} of {avatar.name}"
                              + (f" into {action.name}" if action is not None else " (a still pose)"))
        return {"FINISHED"}


def _start_bake(avatar: bpy.types.Object, frames: tuple[int, int], scene: bpy.types.Scene) -> None:
    """A timer bake (motion_bake) whose end is told in the panel's message line."""
    props, name = scene.genlca, avatar.name

    def done(action) -> None:
        props.message, props.message_is_error = f"Baked frames {frames[0]}-{frames[1]} of {name}", False

    def failed(message: str) -> None:
        props.message, props.message_is_error = f"Baking {name} failed: {message}", True

    motion_bake.start_bake(avatar, frames[0], frames[1], scene, on_done=done, on_error=failed)


class GENLCA_OT_cancel_bake(bpy.types.Operator):
    """Stop baking the avatar's motion; it keeps the motion it had before"""

    bl_idname = "genlca.cancel_bake"
    bl_label = "Cancel Bake"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        item = properties.active_avatar(context.scene.genlca)
        if item is None or motion_bake.running_bake(item.armature) is None:
            cls.poll_message_set("No motion bake is running for the active avatar")
            return False
        return True

    def execute(self, context):
        avatar = properties.active_avatar(context.scene.genlca).armature
        motion_bake.cancel_bake(avatar)
        self.report({"INFO"}, f"Cancelled the motion bake of {avatar.name}")
        return {"FINISHED"}


class GENLCA_OT_import_bvh(bpy.types.Operator, ImportHelper):
    """Import a BVH motion clip with Blender's importer (one key per clip frame) and remember its frame
    rate on the action, so binding plays it at its own speed"""

    bl_idname = "genlca.import_bvh"
    bl_label = "Import Motion (.bvh)"
    bl_options = {"REGISTER", "UNDO"}

    filename_ext = ".bvh"
    filter_glob: bpy.props.StringProperty(default="*.bvh", options={"HIDDEN"})
    global_scale: bpy.props.FloatProperty(name="Scale", default=1.0, min=1e-6, max=1e6,
                                          description="Scale of the clip's units (binding offers to fix an "
                                                      "armature far off the avatar's size)")

    def execute(self, context):
        try:
            frame_time = binding.read_bvh_frame_time(self.filepath)  # refuse a file without one before importing
        except (ValueError, OSError) as exc:
            self.report({"ERROR"}, f"GenLCA cannot import the motion: {exc}")
            return {"CANCELLED"}
        result = bpy.ops.import_anim.bvh(filepath=self.filepath, global_scale=self.global_scale,
                                         use_fps_scale=False, update_scene_fps=False, update_scene_duration=False)
        source = context.view_layer.objects.active
        if result != {"FINISHED"} or source is None or source.type != "ARMATURE":
            self.report({"ERROR"}, f"Blender's BVH importer made no armature from {self.filepath}")
            return {"CANCELLED"}
        fps = binding.remember_clip_rate(source, self.filepath)
        self.report({"INFO"}, f"Imported {source.name}: {fps:.6g} fps ({frame_time:.6g} s per frame)")
        return {"FINISHED"}


class GENLCA_OT_bake_vertex_groups(bpy.types.Operator):
    """Write the selected avatar's skin weights as vertex groups (one per joint) for other tools, e.g. an
    FBX export or weight painting. The add-on poses the splats without them"""

    bl_idname = "genlca.bake_vertex_groups"
    bl_label = "Bake Vertex Groups"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        item = _active_item(cls, context)
        if item is None or item.armature is None or not binding.splat_meshes(item.armature):
            cls.poll_message_set("The selected avatar has no splat mesh with skin weights in this file")
            return False
        return True

    def execute(self, context):
        avatar = properties.active_avatar(context.scene.genlca).armature
        counts = [skin_groups.bake_vertex_groups(mesh, binding.joint_names(avatar))
                  for mesh in binding.splat_meshes(avatar)]
        self.report({"INFO"}, f"Baked {sum(counts)} vertex-group weights of {avatar.name}")
        return {"FINISHED"}


class GENLCA_OT_propose_bone_map(bpy.types.Operator):
    """Match the active armature's bones to the avatar's joints (by their names, else by the skeleton's
    shape) and show the map for editing"""

    bl_idname = "genlca.propose_bone_map"
    bl_label = "Propose Bone Map"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return _avatar_and_armature(cls, context) is not None

    def execute(self, context):
        avatar, source = _avatar_and_armature(type(self), context)
        try:
            how, mapping = binding.propose_map(avatar, source)
        except ValueError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        binding.set_bone_map(avatar, mapping)
        avatar.genlca.map_armature, avatar.genlca.rig = source, how
        self.report({"INFO"}, f"{len(mapping)} bones of {source.name} matched ({how})")
        return {"FINISHED"}


def _map_owner(cls, context):
    item = _active_item(cls, context)
    if item is None or item.armature is None:
        return None
    return item.armature


class GENLCA_OT_bone_map_edit(bpy.types.Operator):
    """Add a row to the bone map, remove the selected row, or clear the map"""

    bl_idname = "genlca.bone_map_edit"
    bl_label = "Edit Bone Map"
    bl_options = {"REGISTER", "UNDO", "INTERNAL"}

    action: bpy.props.EnumProperty(items=[("ADD", "Add", "Add a row"), ("REMOVE", "Remove", "Remove the row"),
                                          ("CLEAR", "Clear", "Remove every row")])

    @classmethod
    def poll(cls, context):
        return _map_owner(cls, context) is not None

    def execute(self, context):
        ap = _map_owner(type(self), context).genlca
        if self.action == "ADD":
            ap.bone_map.add()
            ap.bone_map_index = len(ap.bone_map) - 1
        elif self.action == "REMOVE" and 0 <= ap.bone_map_index < len(ap.bone_map):
            ap.bone_map.remove(ap.bone_map_index)
            ap.bone_map_index = min(ap.bone_map_index, len(ap.bone_map) - 1)
        elif self.action == "CLEAR":
            ap.bone_map.clear()
        return {"FINISHED"}


class GENLCA_OT_unbind_armature(bpy.types.Operator):
    """Stop driving the selected avatar and reset its pose"""

    bl_idname = "genlca.unbind_armature"
    bl_label = "Unbind"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        item = _active_item(cls, context)
        if item is None or item.armature is None or item.armature.genlca.source_armature is None:
            cls.poll_message_set("The selected avatar is not bound")
            return False
        return True

    def execute(self, context):
        binding.unbind(properties.active_avatar(context.scene.genlca).armature)
        return {"FINISHED"}


class GENLCA_OT_render(bpy.types.Operator):
    """Render the selected avatar photorealistically through the backend, for the scene's frame range and
    camera; the frames become the camera's background"""

    bl_idname = "genlca.render"
    bl_label = "Render Through Backend"

    use_scene_range: bpy.props.BoolProperty(name="Scene Range", default=True,
                                            description="Render the scene's frame range (off: the range below)")
    frame_start: bpy.props.IntProperty(name="Start", default=1)
    frame_end: bpy.props.IntProperty(name="End", default=250)

    @classmethod
    def poll(cls, context):
        item = _active_item(cls, context)
        if item is None or item.armature is None:
            return False
        if context.scene.camera is None:
            cls.poll_message_set("The scene needs an active camera")
            return False
        return _idle(cls, context)

    def execute(self, context):
        avatar = properties.active_avatar(context.scene.genlca).armature
        frames = {} if self.use_scene_range else {"frame_start": self.frame_start, "frame_end": self.frame_end}
        return _start(self, workflows.render_frames, context.scene, avatar, preferences.output_dir(context), **frames)


class GENLCA_OT_export(bpy.types.Operator):
    """Export the selected avatar into the output folder: a 3DGS PLY, a GenLCA .safetensors file, or a rigged,
    textured mesh for game engines (GLB, FBX) with its animation over the scene's frames"""

    bl_idname = "genlca.export"
    bl_label = "Export Avatar"

    @classmethod
    def poll(cls, context):
        return _active_item(cls, context) is not None and _idle(cls, context)

    def execute(self, context):
        props = context.scene.genlca
        item = properties.active_avatar(props)
        return _start(self, workflows.export_file, context.scene, item.avatar_id, props.export_format,
                      preferences.output_dir(context), armature=item.armature)


class GENLCA_OT_export_mesh(bpy.types.Operator, ExportHelper):
    """Export the selected avatar as a rigged, textured mesh for game engines (the backend makes it from the
    body template; its animation over the scene's frames goes with it)"""

    bl_idname = "genlca.export_mesh"
    bl_label = "Export Avatar Mesh"

    filename_ext = ".glb"
    filter_glob: bpy.props.StringProperty(default="*.glb;*.fbx", options={"HIDDEN"})
    mesh_format: bpy.props.EnumProperty(name="Format", items=[
        ("glb", "glTF Binary (.glb)", "Unity, Unreal, Godot, three.js"),
        ("fbx", "FBX (.fbx)", "Through Blender's glTF importer and FBX exporter")])

    @classmethod
    def poll(cls, context):
        return _active_item(cls, context) is not None and _idle(cls, context)

    def check(self, context):
        self.filename_ext = "." + self.mesh_format
        return super().check(context)

    def execute(self, context):
        item = properties.active_avatar(context.scene.genlca)
        path = bpy.path.ensure_ext(self.filepath, "." + self.mesh_format)
        return _start(self, workflows.export_file, context.scene, item.avatar_id, self.mesh_format,
                      str(Path(path).parent), armature=item.armature, filepath=path)


class GENLCA_OT_notify(bpy.types.Operator):
    """Show a GenLCA message (used by the background jobs)"""

    bl_idname = "genlca.notify"
    bl_label = "GenLCA Message"
    bl_options = {"INTERNAL"}

    level: bpy.props.EnumProperty(items=[(k, k, "") for k in ("INFO", "WARNING", "ERROR")])
    message: bpy.props.StringProperty()

    def execute(self, context):
        self.report({self.level}, self.message)
        return {"FINISHED"}


_FILE_FILTER = "*.safetensors;*.ply"


class GENLCA_OT_import_file(bpy.types.Operator, ImportHelper):
    """Import a GenLCA avatar (.safetensors, rigged) or a 3D Gaussian splat PLY (splats, unrigged) from disk;
    no backend needed"""

    bl_idname = "genlca.import_file"
    bl_label = "Import GenLCA Avatar / Splats"
    bl_options = {"REGISTER", "UNDO"}

    filename_ext = ".safetensors"
    filter_glob: bpy.props.StringProperty(default=_FILE_FILTER, options={"HIDDEN"})

    def execute(self, context):
        try:
            armature, mesh = file_io.import_file(context, self.filepath)
        except (file_io.AvatarFileError, ValueError, OSError) as exc:  # named file and problem, no traceback
            self.report({"ERROR"}, f"GenLCA cannot import: {exc}")
            return {"CANCELLED"}
        if armature is not None:  # a rigged avatar joins the list: bind, render and export work on it
            workflows.add_to_avatar_list(context.scene, armature.get("genlca_avatar_id", ""),
                                    bpy.path.display_name_from_filepath(self.filepath)[:40], armature)
        what = f"avatar {armature.name}" if armature is not None else f"splats {mesh.name} (unrigged)"
        self.report({"INFO"}, f"GenLCA imported {what}: {len(mesh.data.vertices)} Gaussians")
        return {"FINISHED"}


class GENLCA_OT_export_file(bpy.types.Operator, ExportHelper):
    """Export the active avatar or splats to a file: 3DGS .ply (any splat viewer) or GenLCA .safetensors
    (rigged; opens in the add-on and the backend); no backend needed"""

    bl_idname = "genlca.export_file"
    bl_label = "Export GenLCA Avatar / Splats"

    filename_ext = ".ply"
    filter_glob: bpy.props.StringProperty(default=_FILE_FILTER, options={"HIDDEN"})
    y_up: bpy.props.BoolProperty(name="Y Up (PLY)", default=False,
                                 description="Rotate the splats into Y-up for viewers that expect it (the PLY "
                                             "header states the axes; GenLCA and Blender are Z-up)")

    @classmethod
    def poll(cls, context):
        try:
            file_io.splat_objects(_export_object(context))
        except ValueError as exc:
            cls.poll_message_set(str(exc))
            return False
        return True

    def check(self, context):
        if self.filepath.lower().endswith(file_io.FILE_SUFFIXES):  # either format's name is kept as given
            return False
        return super().check(context)

    def execute(self, context):
        path = self.filepath if self.filepath.lower().endswith(file_io.FILE_SUFFIXES) else self.filepath + ".ply"
        try:
            written = file_io.export_file(_export_object(context), path, y_up=self.y_up)
        except (file_io.AvatarFileError, ValueError, OSError) as exc:
            self.report({"ERROR"}, f"GenLCA cannot export: {exc}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"GenLCA exported {written}")
        return {"FINISHED"}


def _export_object(context):
    """The active object when it is an avatar or splats, else the avatar selected in the panel."""
    obj = context.active_object
    try:
        file_io.splat_objects(obj)
        return obj
    except ValueError:  # e.g. a mocap armature is active: fall back to the panel's avatar
        pass
    item = properties.active_avatar(context.scene.genlca)
    return item.armature if item is not None else obj


def _import_menu(self, context):
    self.layout.operator(GENLCA_OT_import_file.bl_idname, text="GenLCA Avatar / Splats (.safetensors, .ply)")


def _export_menu(self, context):
    self.layout.operator(GENLCA_OT_export_file.bl_idname, text="GenLCA Avatar / Splats (.safetensors, .ply)")
    self.layout.operator(GENLCA_OT_export_mesh.bl_idname, text="GenLCA Avatar Mesh for Game Engines (.glb, .fbx)")


classes = (GENLCA_OT_connect, GENLCA_OT_generate, GENLCA_OT_edit, GENLCA_OT_regenerate_region, GENLCA_OT_cancel,
           GENLCA_OT_import_avatar, GENLCA_OT_bind_armature, GENLCA_OT_bake_motion, GENLCA_OT_cancel_bake,
           GENLCA_OT_import_bvh, GENLCA_OT_bake_vertex_groups,
           GENLCA_OT_propose_bone_map, GENLCA_OT_bone_map_edit,
           GENLCA_OT_unbind_armature, GENLCA_OT_render,
           GENLCA_OT_export, GENLCA_OT_export_mesh, GENLCA_OT_notify, GENLCA_OT_import_file, GENLCA_OT_export_file)
_register, _unregister = bpy.utils.register_classes_factory(classes)


def register() -> None:
    _register()
    bpy.types.TOPBAR_MT_file_import.append(_import_menu)
    bpy.types.TOPBAR_MT_file_export.append(_export_menu)


def unregister() -> None:
    bpy.types.TOPBAR_MT_file_export.remove(_export_menu)
    bpy.types.TOPBAR_MT_file_import.remove(_import_menu)
    _unregister()
