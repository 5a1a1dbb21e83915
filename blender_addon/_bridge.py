"""The bridge package (wire protocol, rig maps, PNG, camera maths, atomic files) as the add-on sees it.

The installed extension carries a copy of the repository's `bridge/` as a subpackage (`genlca.bridge`,
made by build_addon.py with its imports turned relative); run from the repository (tests, development)
the top-level `bridge` package is used. `client` and `keys` are imported on first use, since they need pyzmq.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

VENDORED = (Path(__file__).parent / "bridge" / "__init__.py").is_file()
_PREFIX = (__package__ + ".bridge") if VENDORED else "bridge"

protocol = importlib.import_module(_PREFIX + ".wire.protocol")
contract = importlib.import_module(_PREFIX + ".wire.contract")
rigmaps = importlib.import_module(_PREFIX + ".rig.rigmaps")
retarget = importlib.import_module(_PREFIX + ".rig.retarget")
cameras = importlib.import_module(_PREFIX + ".geometry.cameras")
png = importlib.import_module(_PREFIX + ".files.png")
avatar_files = importlib.import_module(_PREFIX + ".files.avatar")
files = importlib.import_module(_PREFIX + ".files.atomic")   # write_atomic


def client_module() -> ModuleType:
    """bridge.wire.client (needs pyzmq and msgpack: bundled wheels in the extension)."""
    return importlib.import_module(_PREFIX + ".wire.client")


def keys_module() -> ModuleType:
    """bridge.wire.keys (needs pyzmq: bundled wheels in the extension)."""
    return importlib.import_module(_PREFIX + ".wire.keys")
