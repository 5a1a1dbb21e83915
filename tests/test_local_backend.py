"""bridge.local_backend.LocalBackend with real processes: a real `backend.service.cli serve` answers hello over the
wire and exits 0 on stop; a backend that cannot start raises BackendStartError with its output's tail; a
process that never opens its port, or ignores SIGTERM, is still stopped."""
from __future__ import annotations

import stat
import sys
import zipfile

import pytest

from bridge.wire import protocol
from bridge.wire.client import BridgeClient
from bridge.local_backend import BackendStartError, LocalBackend, port_open
from tests.model_package import make_tiny_package


def fake_python(path, body: str, interpreter: str = sys.executable) -> str:
    """An executable that stands in for the backend's Python: a script that gets the serve arguments
    (the fifth is the --bind address)."""
    path.write_text(f"#!{interpreter}\n{body}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


SILENT = "echo warming up >&2\nexec sleep 60\n"  # sh: the line is written within milliseconds
STUBBORN = """import signal, socket, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
server = socket.socket()
server.bind(("127.0.0.1", int(sys.argv[5].rsplit(":", 1)[1])))
server.listen()
time.sleep(60)
"""


def test_real_backend_says_hello_and_stops_cleanly(tmp_path):
    model = make_tiny_package(tmp_path / "tiny-model", name="tiny-local")
    log = tmp_path / "backend.log"
    with LocalBackend(sys.executable, "--no-persist", "--set", f"model={model}", log_path=log) as backend:
        assert backend.poll() is None and port_open(backend.port)
        client = BridgeClient(backend.address, timeout_s=60.0)
        try:
            hello = client.call(protocol.Hello(client="test_local_backend"), timeout_s=60.0)
        finally:
            client.close()
        assert hello.header["protocol"] == protocol.PROTOCOL_VERSION
        assert hello.header["model"]["name"] == "tiny-local"
    assert backend.poll() == 0  # SIGTERM: jobs end, exit 0
    assert not port_open(backend.port)
    text = log.read_text()  # a log the caller named is kept
    assert "serving model tiny-local" in text and "signal 15: stopping" in text, text[-2000:]
    assert backend.stop() == 0  # again: nothing to do


def test_backend_that_cannot_load_its_model_names_the_cause(tmp_path):
    missing = tmp_path / "no-such-model"
    backend = LocalBackend(sys.executable, "--no-persist", "--set", f"model={missing}")
    with pytest.raises(BackendStartError, match="exited with status 2 before serving") as caught:
        backend.start(timeout_s=300)
    assert "cannot load the model" in caught.value.log_tail and str(missing) in caught.value.log_tail
    assert str(caught.value).endswith(caught.value.log_tail)
    assert backend.poll() == 2 and not backend.log_path.exists()  # the temporary log is removed


def test_backend_that_never_opens_its_port_is_stopped(tmp_path):
    backend = LocalBackend(fake_python(tmp_path / "silent", SILENT, "/bin/sh"))
    with pytest.raises(BackendStartError, match=r"did not open port \d+ within 2 s") as caught:
        backend.start(timeout_s=2)
    assert caught.value.log_tail == "warming up\n"
    assert backend.poll() == -15  # stopped by SIGTERM


def test_stop_kills_a_backend_that_ignores_sigterm(tmp_path):
    backend = LocalBackend(fake_python(tmp_path / "stubborn", STUBBORN)).start(timeout_s=60)
    assert backend.poll() is None
    assert backend.stop(grace_s=0.5) == -9  # SIGTERM ignored: SIGKILL after the grace period
    assert not port_open(backend.port)


def test_missing_python_is_a_start_error(tmp_path):
    backend = LocalBackend(tmp_path / "bin" / "python")
    with pytest.raises(BackendStartError, match="cannot run the backend's Python"):
        backend.start(timeout_s=5)
    assert backend.poll() is None


def test_relative_python_is_resolved_against_the_callers_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert LocalBackend("venv/bin/python").python == str(tmp_path / "venv" / "bin" / "python")
    assert LocalBackend("python3").python == "python3"  # a bare name is looked up on PATH


def test_the_addon_zip_leaves_the_launcher_out(tmp_path):
    """build_addon.py vendors bridge/ into the extension without local_backend.py (the add-on never starts a
    backend); checked on the zip it writes with the wheels it has cached (skipped when there are none)."""
    import build_addon

    caches = [build_addon.WHEEL_CACHE / f"host-{build_addon.host_platform()}-cp{v.replace('.', '')}"
              for v in build_addon.PYTHONS]
    if not all((cache / ".complete").exists() for cache in caches):
        pytest.skip("no cached wheels for this machine (build/wheels): build_addon.py would need PyPI")
    zip_path = build_addon.build(None, tmp_path, [sys.executable, "-m", "pip"])
    with zipfile.ZipFile(zip_path) as zf:
        names = set(zf.namelist())
    assert "bridge/wire/protocol.py" in names and "bridge/local_backend.py" not in names
