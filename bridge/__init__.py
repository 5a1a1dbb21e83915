"""GenLCA bridge: what the Blender add-on and the backend share (numpy, msgpack, pyzmq; never torch or bpy).

Sub-packages by concern: `wire` (protocol, codec, array contract, client, keys), `rig` (bone maps,
retargeting), `geometry` (cameras), `files` (atomic writes, PNG, avatar files). `local_backend` starts a
backend process for the repository's scripts and tests (build_addon.py leaves it out of the extension).

`bridge.wire.protocol` (schemas) and `bridge.wire.codec` (frames <-> header + arrays) need only msgpack and numpy;
`bridge.wire.client` (BridgeClient) also needs pyzmq, so it is imported on first use of its names here.
"""
from __future__ import annotations

from typing import Any

from bridge.wire.protocol import PROTOCOL_VERSION, REQUEST_TYPES, Request

__all__ = ["PROTOCOL_VERSION", "REQUEST_TYPES", "Request", "ProtocolError", "encode", "decode",
           "BridgeClient", "BridgeError", "Reply"]

# relative module names, so that the add-on's vendored copy (genlca.bridge) resolves them too
_LAZY = {"ProtocolError": ".wire.codec", "encode": ".wire.codec", "decode": ".wire.codec",
         "BridgeClient": ".wire.client", "BridgeError": ".wire.client", "Reply": ".wire.client"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bridge' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module, __name__), name)
