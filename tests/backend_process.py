"""The real `genlca-backend` command for the adversarial tests (tests/test_adversarial.py,
test_adversarial_bounds.py): a fixtures module, no tests. `Backend` runs `python -m backend.service.cli serve`
in a subprocess on a free 127.0.0.1 port; `backend_cli` runs any other subcommand to completion."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from bridge.local_backend import free_port
from bridge.wire import protocol
from bridge.wire.client import BridgeClient

ROOT = Path(__file__).resolve().parents[1]


def backend_cli(*args: str, timeout_s: float = 300) -> subprocess.CompletedProcess:
    """`python -m backend.service.cli ARGS...` in the repository, output captured as text."""
    return subprocess.run([sys.executable, "-m", "backend.service.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=timeout_s)


class Backend:
    """`python -m backend.service.cli serve ...` in a subprocess; its log goes to a file (a pipe nobody reads
    would block a chatty server). Waits up to start_timeout_s for "serving" (the model loads in minutes on a
    loaded 2-core machine); a backend that does not start is killed."""

    def __init__(self, tmp_path: Path, *args: str, port: int | None = None, start_timeout_s: float = 120) -> None:
        self.port = port or free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.log_path = tmp_path / f"backend-{self.port}.log"
        self._log = open(self.log_path, "w")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([sys.executable, "-m", "backend.service.cli", "serve", "--bind", self.address, *args],
                                     cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + start_timeout_s
        try:
            while "serving" not in self.log():
                assert self.proc.poll() is None, f"the backend exited with {self.proc.returncode}:\n{self.log()}"
                assert time.monotonic() < deadline, f"the backend did not start:\n{self.log()}"
                time.sleep(0.05)
        except AssertionError:
            self.close()
            raise

    def log(self) -> str:
        return self.log_path.read_text()

    def rss(self, field: str = "VmRSS") -> int:
        """Resident memory now (VmRSS) or at its peak so far (VmHWM), bytes."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no {field}")

    def ping(self, **keys) -> protocol.Request:
        with BridgeClient(self.address, timeout_s=20, **keys) as client:
            return client.call(protocol.Ping(), timeout_s=20)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self._log.close()
