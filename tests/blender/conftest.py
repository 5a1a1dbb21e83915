"""Fixtures for the Blender add-on tests (run with .venv-blender's pytest: the real `bpy` module).

Blender's user folders point at a temporary directory before `bpy` loads, so the tests never touch the
user's Blender setup. The add-on is tested as users get it: `build_addon.py --platform current` builds
the extension zip and Blender's own extension installer installs and enables it (its bundled pyzmq and
msgpack wheels included).
"""
from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from bridge.local_backend import BackendStartError, LocalBackend, free_port  # noqa: F401  (tests import free_port)

ROOT = Path(__file__).resolve().parents[2]
_USER_DIR = tempfile.mkdtemp(prefix="genlca_blender_user_")
for _var in ("BLENDER_USER_RESOURCES", "BLENDER_USER_CONFIG", "BLENDER_USER_SCRIPTS", "BLENDER_USER_EXTENSIONS",
             "BLENDER_USER_DATAFILES"):
    os.environ[_var] = os.path.join(_USER_DIR, _var.lower())

try:
    import bpy
except ImportError as exc:
    # `make test` runs this suite in the Blender environments and sets GENLCA_BACKEND_PYTHON: a bpy that does
    # not import there is a broken environment, not a reason to pass. By hand in another venv: skipped.
    if os.environ.get("GENLCA_BACKEND_PYTHON"):
        raise RuntimeError(f"the add-on suite runs in {sys.executable}, where bpy does not import: {exc}") from exc
    pytest.skip("the Blender tests need the bpy wheel (.venv-blender; `make test`)", allow_module_level=True)

ADDON_MODULE = "bl_ext.user_default.genlca"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/blender" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.blender)


@pytest.fixture(scope="session")
def addon_zip(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run([sys.executable, str(ROOT / "build_addon.py"), "--platform", "current", "--out", str(out)],
                           cwd=ROOT, capture_output=True, text=True)
    if built.returncode != 0:  # most often: no PyPI and no cached wheels in build/wheels
        pytest.fail(f"build_addon.py --platform current failed:\n{built.stdout[-2000:]}\n{built.stderr[-2000:]}")
    (zip_path,) = out.glob("genlca-*.zip")
    return zip_path


def enable_addon() -> None:
    if ADDON_MODULE not in bpy.context.preferences.addons:
        bpy.ops.preferences.addon_enable(module=ADDON_MODULE)


@pytest.fixture(scope="session")
def addon(addon_zip):
    """The installed and enabled extension's package (bl_ext.user_default.genlca)."""
    result = bpy.ops.extensions.package_install_files(filepath=str(addon_zip), repo="user_default",
                                                      enable_on_install=True)
    assert result == {"FINISHED"}
    enable_addon()
    yield importlib.import_module(ADDON_MODULE)
    importlib.import_module(ADDON_MODULE + ".session").close_session()


@pytest.fixture
def scene(addon):
    """A clean scene with the add-on enabled; data from earlier tests removed."""
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


def addon_module(name: str):
    return importlib.import_module(f"{ADDON_MODULE}.{name}")


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
    """`python -m backend.cli serve` on 127.0.0.1:port (plus extra arguments) with the tiny random model, run by
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


def pump_until(session, done, timeout_s: float, pumps: list | None = None) -> None:
    """Call the session's timer work the way Blender would, until done() or timeout; appends each pump's
    `PumpStats` (replies, slices, bytes) to pumps. timeout_s only stops a hung test: it is no latency promise."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"not done within {timeout_s} s; jobs: "
                                 f"{[(j.label, j.stage) for j in session.jobs.values()]}")
        session.pump()
        if pumps is not None:
            pumps.append(session.last_pump)
        time.sleep(0.01)


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
