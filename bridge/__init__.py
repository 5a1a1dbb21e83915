"""GenLCA bridge: the wire protocol shared by the Blender add-on and the backend (no torch, no bpy)."""
from bridge.protocol import PROTOCOL_VERSION

__all__ = ["PROTOCOL_VERSION"]
