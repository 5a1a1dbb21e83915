"""Headless Blender (the `bpy` wheel) as the scripts and the add-on tests drive it: Blender's user folders in a
private directory, the extension built and installed with Blender's own installer, and the add-on's session
pumped the way Blender's timer would.

Stdlib only at import: `bpy` loads inside the functions, after `use_private_user_folders` has run. Imported as
`scripts.headless_blender` with the repository root on sys.path (scripts/demo_blender.py,
scripts/blender_figure.py, tests/blender/conftest.py).
"""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
ADDON_MODULE = "bl_ext.user_default.genlca"
USER_FOLDER_VARIABLES = ("BLENDER_USER_RESOURCES", "BLENDER_USER_CONFIG", "BLENDER_USER_SCRIPTS",
                         "BLENDER_USER_EXTENSIONS", "BLENDER_USER_DATAFILES")


class AddonBuildError(RuntimeError):
    """build_addon.py failed (most often: no PyPI and no cached wheels in build/wheels)."""


def use_private_user_folders(folder: str | os.PathLike) -> None:
    """Point Blender's user folders into folder (one subfolder each), so the user's own Blender set-up is never
    touched. Blender reads them once, when bpy loads: calling this later would silently do nothing."""
    if "bpy" in sys.modules:
        raise RuntimeError("bpy is already loaded: Blender's user folders must be set before it loads")
    for var in USER_FOLDER_VARIABLES:
        os.environ[var] = os.path.join(os.fspath(folder), var.lower())


def build_addon_zip(out: Path) -> Path:
    """`build_addon.py --platform current --out out`: the installable extension zip for this machine."""
    built = subprocess.run([sys.executable, str(ROOT / "build_addon.py"), "--platform", "current", "--out", str(out)],
                           cwd=ROOT, capture_output=True, text=True)
    if built.returncode != 0:
        raise AddonBuildError(f"build_addon.py --platform current failed:\n{built.stdout[-2000:]}\n"
                              f"{built.stderr[-2000:]}")
    zips = sorted(Path(out).glob("genlca-*.zip"))
    if len(zips) != 1:
        raise AddonBuildError(f"expected one genlca-*.zip in {out}, found {[z.name for z in zips]}")
    return zips[0]


def enable_addon() -> None:
    """Enable the installed extension unless it is enabled already."""
    import bpy

    if ADDON_MODULE not in bpy.context.preferences.addons:
        bpy.ops.preferences.addon_enable(module=ADDON_MODULE)


def install_addon(zip_path: Path) -> ModuleType:
    """Install the extension zip with Blender's own installer into the user repository and enable it: the
    add-on's package."""
    import bpy

    result = bpy.ops.extensions.package_install_files(filepath=str(zip_path), repo="user_default",
                                                      enable_on_install=True)
    if result != {"FINISHED"}:
        raise RuntimeError(f"Blender's extension installer returned {result} for {zip_path}")
    enable_addon()
    return importlib.import_module(ADDON_MODULE)


def addon_module(name: str) -> ModuleType:
    """One module of the installed add-on, e.g. addon_module("session")."""
    return importlib.import_module(f"{ADDON_MODULE}.{name}")


def pump_until(session, done: Callable[[], object], timeout_s: float, pumps: list | None = None, *,
               what: str = "pumping", interval_s: float = 0.005) -> None:
    """Run the session's timer work as Blender's timer would, until done() is true; appends each pump's
    `PumpStats` to pumps when given. timeout_s only stops a hung run: it is no latency promise."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done within {timeout_s:g} s; jobs "
                               f"{[(j.label, j.stage) for j in session.jobs.values()]}")
        session.pump()
        if pumps is not None:
            pumps.append(session.last_pump)
        time.sleep(interval_s)
