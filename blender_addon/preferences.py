"""Add-on preferences: where the backend is and how long to wait for it; where outputs go."""

import bpy


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
        layout.prop(self, "timeout_s")
        layout.prop(self, "output_dir")


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


classes = (GenLCAPreferences,)
register, unregister = bpy.utils.register_classes_factory(classes)
