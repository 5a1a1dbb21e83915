"""Add-on preferences: where the backend is and how long to wait for it; where outputs go; this Blender's
client public key (shown, and copied by a button) for a backend that admits only listed clients."""

import bpy

from . import keys


class GenLCAPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    backend_address: bpy.props.StringProperty(
        name="Backend address", default="tcp://127.0.0.1:5555",
        description="ZeroMQ address of the GenLCA backend (genlca-backend serve --bind ...)")
    server_public_key: bpy.props.StringProperty(
        name="Server public key", default="", subtype="PASSWORD",
        description="CURVE public key of the backend (Z85, 40 characters); required for a non-loopback backend")
    timeout_s: bpy.props.FloatProperty(
        name="Timeout", default=30.0, min=0.5, max=3600.0, unit="TIME_ABSOLUTE",
        description="Give up on a job when the backend sends nothing (not even a heartbeat) for this long")
    output_dir: bpy.props.StringProperty(
        name="Output folder", default="", subtype="DIR_PATH",
        description="Rendered frames and exported avatars go here. Empty: a 'genlca' folder next to the saved "
                    ".blend file, or the extension's user folder for an unsaved file")

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        layout.prop(self, "backend_address")
        layout.prop(self, "server_public_key")
        # this Blender's own CURVE key (keys.py), for the backend operator's allow-list
        row = layout.row(align=True)
        row.label(text=f"Client public key: {keys.client_public_key()}")
        row.operator(GENLCA_OT_copy_client_key.bl_idname, text="", icon="COPYDOWN")
        layout.prop(self, "timeout_s")
        layout.prop(self, "output_dir")


class GENLCA_OT_copy_client_key(bpy.types.Operator):
    """Copy this Blender's GenLCA client public key to the clipboard, for the backend's allow-list
    (genlca-backend keys --add-client NAME --public-key KEY)"""

    bl_idname = "genlca.copy_client_key"
    bl_label = "Copy Client Public Key"
    bl_options = {"INTERNAL"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        try:
            public = keys.client_keypair()[0]
        except Exception as exc:
            self.report({"ERROR"}, f"no client key: {exc}")
            return {"CANCELLED"}
        context.window_manager.clipboard = public
        self.report({"INFO"}, f"client public key copied: {public}")
        return {"FINISHED"}


def output_dir(context: bpy.types.Context | None = None) -> str:
    """The folder for outputs; never inside the add-on's own folder."""
    context = context or bpy.context
    addon = context.preferences.addons.get(__package__)
    chosen = addon.preferences.output_dir if addon is not None and addon.preferences is not None else ""
    if chosen:
        return bpy.path.abspath(chosen)
    if bpy.data.filepath:
        return bpy.path.abspath("//genlca")
    try:
        return bpy.utils.extension_path_user(__package__, path="output", create=True)
    except (ValueError, AttributeError):  # not running as an extension (repository checkout, tests)
        import tempfile
        return tempfile.mkdtemp(prefix="genlca_")


classes = (GenLCAPreferences, GENLCA_OT_copy_client_key)
register, unregister = bpy.utils.register_classes_factory(classes)
