"""The built extension zip installs and enables headless, and unregistering leaves nothing behind."""
from __future__ import annotations

import importlib
import re
import zipfile

import bpy

from .conftest import ADDON_MODULE, enable_addon


def genlca_types() -> list[str]:
    return [name for name in dir(bpy.types) if name.upper().startswith("GENLCA")]


def test_zip_carries_manifest_bridge_and_wheels(addon_zip):
    with zipfile.ZipFile(addon_zip) as zf:
        names = set(zf.namelist())
        manifest = zf.read("blender_manifest.toml").decode()
        wheels = re.search(r"^wheels = \[(.*)\]$", manifest, re.M).group(1)
        listed = re.findall(r'"\./(wheels/[^"]+)"', wheels)
        assert {w.split("/")[1].split("-")[0] for w in listed} == {"pyzmq", "msgpack"}
        assert set(listed) <= names
        assert {"__init__.py", "bridge/wire/protocol.py", "bridge/rig/rigmaps.py", "bridge/geometry/cameras.py"} <= names
        for name in names:
            if name.startswith("bridge/"):
                assert not re.search(r"^\s*(from|import) bridge\b", zf.read(name).decode(), re.M), name
        assert 'id = "genlca"' in manifest and 'network = ' in manifest and 'files = ' in manifest


def test_install_enable_disable_leaves_nothing(addon):
    assert ADDON_MODULE in bpy.context.preferences.addons
    assert {"GENLCA_PT_main", "GENLCA_OT_generate"} <= set(genlca_types())
    assert hasattr(bpy.types.Scene, "genlca") and hasattr(bpy.types.Object, "genlca")
    assert bpy.ops.genlca.generate.poll() is False  # no prompt yet: poll refuses and explains
    for wheel_module in ("zmq", "msgpack"):  # the bundled wheels were installed
        assert importlib.import_module(wheel_module)

    bpy.ops.preferences.addon_disable(module=ADDON_MODULE)
    try:
        assert genlca_types() == []
        assert not hasattr(bpy.types.Scene, "genlca") and not hasattr(bpy.types.Object, "genlca")
        assert all("genlca" not in getattr(h, "__module__", "") for h in bpy.app.handlers.frame_change_post)
    finally:
        enable_addon()
    assert {"GENLCA_PT_main", "GENLCA_OT_generate"} <= set(genlca_types())


def test_every_installed_module_imports_in_blender_without_torch(addon):
    """Each module of the installed extension (walked, so new ones count), its vendored bridge included,
    imports inside real Blender; the bundled pyzmq/msgpack wheels make bridge.wire.client importable (a wheel
    that failed to install fails here, it does not skip); torch is never loaded."""
    import pkgutil
    import sys

    names = [m.name for m in pkgutil.walk_packages(addon.__path__, prefix=ADDON_MODULE + ".")]
    assert {ADDON_MODULE + ".session", ADDON_MODULE + ".panels", ADDON_MODULE + ".bridge.wire.client"} <= set(names)
    for name in names:
        importlib.import_module(name)
    assert importlib.import_module(ADDON_MODULE + "._bridge").client_module().BridgeClient
    assert [m for m in ("torch", "gsplat") if m in sys.modules] == []


def test_preferences_and_output_folder_outside_the_addon(addon):
    prefs = bpy.context.preferences.addons[ADDON_MODULE].preferences
    assert prefs.backend_address.startswith("tcp://127.0.0.1:")
    from importlib import import_module
    from pathlib import Path
    out = Path(import_module(ADDON_MODULE + ".preferences").output_dir())
    addon_dir = Path(addon.__file__).parent
    assert addon_dir not in out.parents and out != addon_dir


_EXIT_SCRIPT = """
import os, sys, tempfile
user = tempfile.mkdtemp(prefix="genlca_exit_")
for var in ("BLENDER_USER_RESOURCES", "BLENDER_USER_CONFIG", "BLENDER_USER_SCRIPTS", "BLENDER_USER_EXTENSIONS",
            "BLENDER_USER_DATAFILES"):
    os.environ[var] = os.path.join(user, var.lower())
import bpy
assert bpy.ops.extensions.package_install_files(filepath=sys.argv[1], repo="user_default",
                                                enable_on_install=True) == {"FINISHED"}
assert "bl_ext.user_default.genlca" in bpy.context.preferences.addons
print("enabled")
"""


def test_blender_exits_cleanly_with_the_addon_enabled(addon_zip, tmp_path):
    """Blender quits with status 0 with the extension enabled. (Blender 4.2-4.5 crash or hang at exit
    when a PropertyGroup with a Python method or a PointerProperty poll stays registered; properties.py
    avoids both there. `make test` also checks each suite's exit status.)"""
    import subprocess
    import sys

    script = tmp_path / "exit_check.py"
    script.write_text(_EXIT_SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(addon_zip)], capture_output=True, text=True, timeout=120)
    assert "enabled" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.returncode == 0, f"Blender {bpy.app.version_string} exited with {done.returncode}"
