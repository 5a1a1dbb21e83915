"""GenLCA bridge: the wire protocol shared by the Blender add-on and the backend (no torch, no bpy).

`bridge.protocol` (schemas) and `bridge.codec` (frames <-> header + arrays) need only msgpack and numpy;
`bridge.client` (BridgeClient) also needs pyzmq, so it is imported on first use of its names here.
"""
from __future__ import annotations

from typing import Any

from bridge.protocol import PROTOCOL_VERSION, REQUEST_TYPES, Request

__all__ = ["PROTOCOL_VERSION", "REQUEST_TYPES", "Request", "ProtocolError", "encode", "decode",
           "BridgeClient", "BridgeError", "Reply"]

# relative module names, so that the add-on's vendored copy (genlca.bridge) resolves them too
_LAZY = {"ProtocolError": ".codec", "encode": ".codec", "decode": ".codec",
         "BridgeClient": ".client", "BridgeError": ".client", "Reply": ".client"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bridge' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module, __name__), name)
