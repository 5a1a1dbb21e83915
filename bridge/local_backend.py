"""A backend service process on this machine: `<python> -m backend.service.cli serve` on a loopback port, started,
waited for and always stopped.

For the callers that run outside the backend's Python (Blender's Python has no torch): scripts/demo_blender.py,
scripts/blender_figure.py, scripts/binding_figure.py and tests/blender/conftest.py. Standard library only, so it
imports in any Python. build_addon.py leaves it out of the extension: the add-on connects to a backend, it
never starts one.

    with LocalBackend(".venv/bin/python", "--no-persist") as backend:
        ...  # backend.address == "tcp://127.0.0.1:<port>"

Ready means the port accepts TCP connections: `serve` loads the model first and binds its ROUTER socket only
then, so a request sent from then on is queued and answered. (A ZeroMQ `hello` here would need pyzmq, which
Blender's Python gets only with the add-on's wheels, after the backend has been started.)
"""
from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]  # the backend package sits beside bridge/


class BackendStartError(RuntimeError):
    """The backend exited before it served, or did not open its port in time. `log_tail`: the end of its
    output (stdout and stderr together), which names the cause."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(f"{message}; its output ends:\n{log_tail}" if log_tail else f"{message}; no output")
        self.log_tail = log_tail


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the OS reports free on `host` now (another process may take it before it is bound)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) == 0


class LocalBackend:
    """`<python> -m backend.service.cli serve --bind tcp://127.0.0.1:<port> <serve_args...>`, run in `cwd` (the
    repository, default). Its stdout and stderr go to `log_path`, or to a temporary file removed at stop.
    A `python` with a path separator is made absolute against the caller's folder, not `cwd`."""

    def __init__(self, python: str | os.PathLike, *serve_args: str, port: int | None = None,
                 log_path: str | os.PathLike | None = None, cwd: str | os.PathLike = REPO_ROOT) -> None:
        python = os.fspath(python)
        self.python = str(Path(python).absolute()) if os.sep in python else python
        self.serve_args = tuple(serve_args)
        self.port = port if port is not None else free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.cwd = Path(cwd)
        self.log_path = Path(log_path) if log_path is not None else None
        self._temporary_log = log_path is None
        self._log = None
        self.process: subprocess.Popen | None = None

    @property
    def command(self) -> list[str]:
        return [self.python, "-m", "backend.service.cli", "serve", "--bind", self.address, *self.serve_args]

    def start(self, timeout_s: float = 120.0, poll_s: float = 0.1) -> LocalBackend:
        """Run the process and return once its port accepts connections. Raises BackendStartError (with the
        log's tail) when it exits first or the port stays closed for timeout_s; the process is stopped then."""
        if self.process is not None:
            raise RuntimeError(f"the backend on {self.address} was started already")
        if self._temporary_log:
            fd, name = tempfile.mkstemp(prefix="genlca_backend_", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self._log = open(self.log_path, "wb")
        try:
            self.process = subprocess.Popen(self.command, cwd=self.cwd, stdout=self._log, stderr=subprocess.STDOUT)
        except OSError as exc:
            self._close_log()
            raise BackendStartError(f"cannot run the backend's Python {self.python}: {exc}") from exc
        deadline = time.monotonic() + timeout_s
        while not port_open(self.port):
            status = self.process.poll()
            if status is not None or time.monotonic() > deadline:
                why = (f"the backend exited with status {status} before serving on {self.address}"
                       if status is not None else
                       f"the backend did not open port {self.port} within {timeout_s:g} s")
                tail = self.log_tail()
                self.stop()
                raise BackendStartError(f"{why} ({' '.join(self.command)})", tail)
            time.sleep(poll_s)
        return self

    def poll(self) -> int | None:
        """None while the process runs (or before start), else its exit status."""
        return None if self.process is None else self.process.poll()

    def log_text(self) -> str:
        """Everything the backend has written so far ("" once a temporary log is removed)."""
        try:
            return self.log_path.read_text(errors="replace") if self.log_path is not None else ""
        except FileNotFoundError:
            return ""

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_text()[-chars:]

    def stop(self, grace_s: float = 15.0) -> int | None:
        """SIGTERM (the backend ends its jobs with `shutting_down` and exits 0), SIGKILL after grace_s; then
        the log is closed (a temporary one removed). Safe to call again; returns the exit status."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._close_log()
        return self.poll()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
            if self._temporary_log and self.log_path is not None:
                self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> LocalBackend:
        return self.start() if self.process is None else self

    def __exit__(self, *exc_info) -> None:
        self.stop()
