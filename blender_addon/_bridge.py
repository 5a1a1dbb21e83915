"""The bridge package (wire protocol, rig maps, PNG, camera maths, atomic files) as the add-on sees it.

The installed extension carries a copy of the repository's `bridge/` as a subpackage (`genlca.bridge`,
made by build_addon.py with its imports turned relative); run from the repository (tests, development)
the top-level `bridge` package is used. `client` is imported on first use, since it needs pyzmq.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

VENDORED = (Path(__file__).parent / "bridge" / "__init__.py").is_file()
_PREFIX = (__package__ + ".bridge") if VENDORED else "bridge"

protocol = importlib.import_module(_PREFIX + ".protocol")
rigmaps = importlib.import_module(_PREFIX + ".rigmaps")
retarget = importlib.import_module(_PREFIX + ".retarget")
contract = importlib.import_module(_PREFIX + ".contract")
png = importlib.import_module(_PREFIX + ".png")
cameras = importlib.import_module(_PREFIX + ".cameras")
files = importlib.import_module(_PREFIX + ".files")


def client_module() -> ModuleType:
    """bridge.client (needs pyzmq and msgpack: bundled wheels in the extension)."""
    return importlib.import_module(_PREFIX + ".client")
