"""The "GenLCA" tab of the 3D viewport sidebar."""
from __future__ import annotations

import bpy

from . import binding, motion_bake, properties, session, workflows


class GENLCA_UL_avatars(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index=0):
        row = layout.row(align=True)
        row.label(text=item.label or item.avatar_id[:8], icon="ARMATURE_DATA" if item.armature else "ERROR")
        if item.armature is not None and item.armature.genlca.source_armature is not None:
            row.label(text=item.armature.genlca.source_armature.name, icon="LINKED")


class GENLCA_UL_bone_map(bpy.types.UIList):
    """One row per mapped joint: a bone of the driving armature -> an avatar joint, both picked from lists."""

    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index=0):
        row = layout.row(align=True)
        source = data.source_armature or data.map_armature
        if source is not None and source.type == "ARMATURE":
            row.prop_search(item, "source", source.data, "bones", text="", icon="BONE_DATA")
        else:
            row.prop(item, "source", text="", emboss=False)
        row.label(icon="FORWARD")
        avatar = data.id_data
        if avatar is not None and avatar.type == "ARMATURE":
            row.prop_search(item, "target", avatar.data, "bones", text="", icon="BONE_DATA")
        else:
            row.prop(item, "target", text="", emboss=False)


class _GenLCAPanel:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "GenLCA"


class GENLCA_PT_main(_GenLCAPanel, bpy.types.Panel):
    bl_label = "GenLCA"

    def draw(self, context):
        layout = self.layout
        props = context.scene.genlca
        row = layout.row(align=True)
        row.label(text=props.connection, icon="LINKED" if props.connected else "UNLINKED")
        row.operator("genlca.connect", text="", icon="FILE_REFRESH")
        if props.job_running:
            box = layout.box()
            row = box.row(align=True)
            row.progress(factor=props.job_progress, text=f"{props.job_label}: {props.job_stage}")
            row.operator("genlca.cancel", text="", icon="X")
        if props.message:
            layout.label(text=props.message, icon="ERROR" if props.message_is_error else "INFO")


class GENLCA_PT_generate(_GenLCAPanel, bpy.types.Panel):
    bl_label = "Generate"
    bl_parent_id = "GENLCA_PT_main"

    def draw(self, context):
        layout = self.layout
        props = context.scene.genlca
        status = workflows.generator_status(session.current_session())  # what the backend said it uses
        if status.model:
            layout.label(text=f"Model: {status.model}", icon="OUTLINER_DATA_ARMATURE")
        layout.prop(props, "prompt", text="")
        col = layout.column(align=True)
        col.enabled = "image" in status.inputs
        col.template_ID(props, "image", open="image.open")
        if props.image is None:
            col.prop(props, "image_path", text="")
        col = layout.column(align=True)
        col.prop(props, "seed")
        sub = col.column(align=True)
        sub.enabled = "steps" in status.inputs
        sub.prop(props, "steps")
        sub = col.column(align=True)
        sub.enabled = "guidance" in status.inputs
        sub.prop(props, "guidance")
        layout.operator("genlca.generate", icon="OUTLINER_OB_ARMATURE")


class GENLCA_PT_avatars(_GenLCAPanel, bpy.types.Panel):
    bl_label = "Avatars"
    bl_parent_id = "GENLCA_PT_main"

    def draw(self, context):
        layout = self.layout
        props = context.scene.genlca
        layout.template_list("GENLCA_UL_avatars", "", props, "avatars", props, "avatar_index", rows=3)
        row = layout.row(align=True)
        row.operator("genlca.import_avatar", icon="IMPORT")
        row.prop(props, "export_format", text="")
        row.operator("genlca.export", text="", icon="EXPORT")
        row = layout.row(align=True)  # files on disk, no backend needed
        row.operator("genlca.import_file", text="Open File", icon="FILEBROWSER")
        row.operator("genlca.export_file", text="Save File", icon="FILE_TICK")
        layout.prop(props, "fast_preview")
        if props.fast_preview:
            layout.label(text="New imports animate only with the add-on", icon="ERROR")


class GENLCA_PT_edit(_GenLCAPanel, bpy.types.Panel):
    bl_label = "Edit"
    bl_parent_id = "GENLCA_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout = self.layout
        props = context.scene.genlca
        inputs = workflows.generator_status(session.current_session()).inputs  # greyed: what the model lacks
        row = layout.row()
        row.enabled = "region_edit" in inputs
        row.prop(props, "region")
        whole = props.region == workflows.WHOLE_BODY
        auto = props.region == workflows.AUTO_REGION
        col = layout.column(align=True)
        col.enabled = "text_edit" in inputs if whole or auto else True
        col.prop(props, "edit_prompt", text="")
        sub = col.row()
        sub.enabled = whole  # a region is regenerated from noise: strength is a text edit's
        sub.prop(props, "strength")
        label = "Edit" if whole else "Change What the Prompt Changes" if auto else f"Regenerate {props.region.title()}"
        layout.operator("genlca.edit", text=label, icon="GREASEPENCIL" if whole else "FILE_REFRESH")


class GENLCA_PT_animate(_GenLCAPanel, bpy.types.Panel):
    bl_label = "Animate & Render"
    bl_parent_id = "GENLCA_PT_main"

    def draw(self, context):
        layout = self.layout
        item = properties.active_avatar(context.scene.genlca)
        avatar = item.armature if item is not None else None
        layout.operator("genlca.import_bvh", icon="ANIM_DATA")
        row = layout.row(align=True)
        row.operator("genlca.bind_armature", icon="CON_ARMATURE")
        row.operator("genlca.unbind_armature", text="", icon="UNLINKED")
        if avatar is not None:
            ap = avatar.genlca
            layout.prop(ap, "fit_proportions")
            if ap.source_armature is not None:
                layout.label(text=f"Driven by {ap.source_armature.name} ({ap.rig})")
                baked = avatar.get(binding.BAKED_KEY)
                layout.label(text=f"Motion baked, frames {baked[0]}-{baked[1]}" if baked is not None
                             else "Live: animates only with the add-on", icon="ACTION" if baked else "ERROR")
                bake = motion_bake.running_bake(avatar)
                if bake is not None:
                    row = layout.row(align=True)
                    row.progress(factor=bake.progress, text=f"Baking motion: {bake.solved}/{len(bake.frames)} frames")
                    row.operator("genlca.cancel_bake", text="", icon="CANCEL")
                else:
                    layout.operator("genlca.bake_motion", icon="ACTION")
            elif ap.map_armature is not None:
                layout.label(text=f"Bone map for {ap.map_armature.name} ({ap.rig})")
            layout.operator("genlca.propose_bone_map", icon="VIEWZOOM")
            if len(ap.bone_map) or ap.map_armature is not None:
                row = layout.row()
                row.template_list("GENLCA_UL_bone_map", "", ap, "bone_map", ap, "bone_map_index", rows=4)
                col = row.column(align=True)
                col.operator("genlca.bone_map_edit", text="", icon="ADD").action = "ADD"
                col.operator("genlca.bone_map_edit", text="", icon="REMOVE").action = "REMOVE"
                col.operator("genlca.bone_map_edit", text="", icon="TRASH").action = "CLEAR"
        layout.operator("genlca.bake_vertex_groups", icon="GROUP_VERTEX")
        layout.operator("genlca.render", icon="RENDER_ANIMATION")


classes = (GENLCA_UL_avatars, GENLCA_UL_bone_map, GENLCA_PT_main, GENLCA_PT_generate, GENLCA_PT_avatars,
           GENLCA_PT_edit, GENLCA_PT_animate)
register, unregister = bpy.utils.register_classes_factory(classes)
