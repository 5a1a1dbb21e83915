"""Fixtures for the Blender add-on tests (run with .venv-blender's pytest: the real `bpy` module).

Blender's user folders point at a temporary directory before `bpy` loads, so the tests never touch the
user's Blender setup. The add-on is tested as users get it: `build_addon.py --platform current` builds
the extension zip and Blender's own extension installer installs and enables it (its bundled pyzmq and
msgpack wheels included).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bridge.local_backend import BackendStartError, LocalBackend, free_port  # noqa: F401  (tests import free_port)
from scripts.headless_blender import (ADDON_MODULE, AddonBuildError, addon_module, build_addon_zip,  # noqa: F401
                                      enable_addon, install_addon, pump_until, use_private_user_folders)

ROOT = Path(__file__).resolve().parents[2]
_USER_DIR = tempfile.mkdtemp(prefix="genlca_blender_user_")
use_private_user_folders(_USER_DIR)

try:
    import bpy
except ImportError as exc:
    # `make test` runs this suite in the Blender environments and sets GENLCA_BACKEND_PYTHON: a bpy that does
    # not import there is a broken environment, not a reason to pass. By hand in another venv: skipped.
    if os.environ.get("GENLCA_BACKEND_PYTHON"):
        raise RuntimeError(f"the add-on suite runs in {sys.executable}, where bpy does not import: {exc}") from exc
    pytest.skip("the Blender tests need the bpy wheel (.venv-blender; `make test`)", allow_module_level=True)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/blender" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.blender)


@pytest.fixture(scope="session")
def addon_zip(tmp_path_factory) -> Path:
    try:
        return build_addon_zip(tmp_path_factory.mktemp("dist"))
    except AddonBuildError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def addon(addon_zip):
    """The installed and enabled extension's package (bl_ext.user_default.genlca)."""
    yield install_addon(addon_zip)
    addon_module("session").close_session()


def clean_scene():
    """The current scene with the add-on enabled, emptied of objects and data blocks, its GenLCA settings blank."""
    enable_addon()
    if bpy.context.object is not None and bpy.context.object.mode != "OBJECT":
        bpy.ops.object.mode_set(mode="OBJECT")
    for collection in (bpy.data.objects, bpy.data.meshes, bpy.data.armatures, bpy.data.actions, bpy.data.cameras,
                       bpy.data.images):
        for block in list(collection):
            collection.remove(block)
    s = bpy.context.scene
    s.frame_start, s.frame_end, s.frame_current = 1, 3, 1
    props = s.genlca
    props.avatars.clear()
    props.message = props.prompt = props.image_path = props.edit_prompt = ""
    props.image, props.region = None, "whole_body"
    props.connected, props.connection = False, "not connected"
    return s


@pytest.fixture
def scene(addon):
    """A clean scene with the add-on enabled, cleaned again afterwards: a test that uses only `addon` (a fresh
    install, no prompt) must not see what an earlier test left in the scene."""
    yield clean_scene()
    clean_scene()


@pytest.fixture(scope="session")
def cmu_bvh() -> Path:
    """CMU mocap 01_01.bvh (Debian assimp-testmodels), via scripts/fetch_test_data.sh."""
    script = ROOT / "scripts" / "fetch_test_data.sh"
    try:
        out = subprocess.run([str(script)], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot fetch 01_01.bvh: {exc}")
    if out.returncode != 0:
        pytest.skip(f"cannot fetch 01_01.bvh (apt-get download assimp-testmodels): {out.stderr.strip()}")
    return Path(out.stdout.strip().splitlines()[-1])


def backend_python() -> str:
    python = os.environ.get("GENLCA_BACKEND_PYTHON")
    if not python:
        pytest.skip("GENLCA_BACKEND_PYTHON is not set (make test sets it to .venv/bin/python)")
    return python


TINY_MODEL_NAME = "tiny-random"
_TINY_MODEL: list[str] = []


def tiny_model() -> str:
    """A tiny random model package (tests/model_package.py), made once per session by the backend's Python:
    the backends of these tests serve it, so they need neither the shipped checkpoint nor minutes of sampling."""
    if not _TINY_MODEL:
        folder = os.path.join(_USER_DIR, "tiny-model")
        made = subprocess.run([backend_python(), "-c", "import sys; from pathlib import Path; "
                               "from tests.model_package import make_tiny_package; "
                               f"make_tiny_package(Path(sys.argv[1]), name={TINY_MODEL_NAME!r})", folder],
                              cwd=ROOT, capture_output=True, text=True, timeout=600)
        if made.returncode != 0:
            pytest.fail(f"cannot make the tiny model package:\n{made.stderr[-3000:]}")
        _TINY_MODEL.append(folder)
    return _TINY_MODEL[0]


def start_backend(port: int, *extra: str) -> LocalBackend:
    """`python -m backend.service.cli serve` on 127.0.0.1:port (plus extra arguments) with the tiny random model, run by
    GENLCA_BACKEND_PYTHON (bridge.local_backend); waits for the port."""
    backend = LocalBackend(backend_python(), "--avatar-dir", os.path.join(_USER_DIR, "avatars"),
                           "--set", f"model={tiny_model()}", *extra, port=port)
    try:
        return backend.start(timeout_s=120.0)
    except BackendStartError as exc:
        pytest.fail(str(exc))


def stop_backend(backend: LocalBackend) -> None:
    backend.stop(grace_s=10.0)


@pytest.fixture(scope="session")
def backend_address():
    """A real backend on loopback for the whole session."""
    port = free_port()
    proc = start_backend(port)
    try:
        yield f"tcp://127.0.0.1:{port}"
    finally:
        stop_backend(proc)


def assert_pumps_bounded(pumps: list) -> None:
    """The main thread's work per pump is bounded by counts, not by the clock: at most MAX_REPLIES_PER_PUMP
    replies and MAX_SLICES_PER_PUMP slices per task (how long that takes is the benchmarks' business; the
    longest pump is printed for the log)."""
    session_mod = addon_module("session")
    assert pumps, "nothing was pumped"
    assert max(p.replies for p in pumps) <= session_mod.MAX_REPLIES_PER_PUMP
    tasks_at_once = 2  # at most an import and a pose collection run side by side in these tests
    assert max(p.slices for p in pumps) <= tasks_at_once * session_mod.MAX_SLICES_PER_PUMP
    print(f"pumps: {len(pumps)}, most replies {max(p.replies for p in pumps)}, most slices "
          f"{max(p.slices for p in pumps)}, most bytes {max(p.reply_bytes for p in pumps)}, "
          f"longest {max(p.seconds for p in pumps) * 1000:.1f} ms")


def remove_user_dir() -> None:
    shutil.rmtree(_USER_DIR, ignore_errors=True)
