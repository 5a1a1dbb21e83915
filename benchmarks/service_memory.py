"""What a hostile client can make the backend hold (issue 24): the server's RSS above idle, measured from
outside, for the attacks of tests/test_adversarial_bounds.py at full size, against the code of any checkout.

    python -m benchmarks.service_memory                      # this checkout
    python -m benchmarks.service_memory --root /work/main    # another checkout (old or new layout), same cases

Cases (each on a fresh `genlca-backend serve --no-persist`, default settings):
- render:    one 2048^2 frame of the avatar with the root bone scaled to 0.01, the camera 3 cm away, fov 90
- nonreader: a DEALER asks for 1000 frames at 512^2 (1 MiB each) and never reads, 60 s (it pings every
             second, so it is not "silent" and its jobs are not dropped for client_timeout_s)
- partial:   4 raw connections each send 300 MiB of a frame declared as 1000 MiB and stop, 20 s
- partial-under-limit: 12 raw connections each send 60 MiB of a frame declared as 63 MiB (below the 64 MiB
             request limit), 20 s
Each prints one JSON line: peak RSS above idle (MB, sampled every 5 ms), what the server answered, the
slowest ping of a well-behaved client meanwhile (ms). A case stops early when the server passes --cap-gb.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import zmq

from backend.render.scenes import front_view_arrays
from bridge.wire import protocol
from bridge.wire.client import BridgeClient, BridgeError
from bridge.wire.codec import encode, request_header

MB = 1 << 20


class Server:
    def __init__(self, root: Path, *args: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.address = f"tcp://127.0.0.1:{self.port}"
        module = "backend.service.cli" if (root / "backend" / "service" / "cli.py").is_file() else "backend.cli"
        self.log_path = Path(tempfile.mkstemp(prefix="service-memory-", suffix=".log")[1])
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", module, "serve", "--bind", self.address, "--no-persist",
                                      *args], cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
                                     stdout=self._log, stderr=subprocess.STDOUT)
        while "serving" not in self.log_path.read_text():
            if self.proc.poll() is not None:
                raise RuntimeError(self.log_path.read_text())
            time.sleep(0.1)

    def rss(self) -> int:
        with open(f"/proc/{self.proc.pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self._log.close()


class Watch:
    """Peak RSS above the start (every 5 ms) and the slowest ping of a well-behaved client (every 100 ms)."""

    def __init__(self, server: Server, cap: int) -> None:
        self.server, self.cap, self.base, self.peak, self.ping_ms = server, cap, server.rss(), 0, 0.0
        self.pings_failed = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._rss, daemon=True), threading.Thread(target=self._ping,
                                                                                              daemon=True)]
        for t in self._threads:
            t.start()

    @property
    def over_cap(self) -> bool:
        return self.peak > self.cap

    def _rss(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.server.rss() - self.base)
            except OSError:
                return
            time.sleep(0.005)

    def _ping(self) -> None:
        with BridgeClient(self.server.address, timeout_s=10) as client:
            while not self._stop.is_set():
                start = time.perf_counter()
                try:
                    client.call(protocol.Ping(), timeout_s=10)
                    self.ping_ms = max(self.ping_ms, (time.perf_counter() - start) * 1000)
                except BridgeError:
                    self.pings_failed += 1
                time.sleep(0.1)

    def stop(self) -> dict:
        self._stop.set()
        for t in self._threads:
            t.join(15)
        return {"peak_mb": round(self.peak / MB), "slowest_ping_ms": round(self.ping_ms, 1),
                "pings_failed": self.pings_failed}


def _avatar(server: Server):
    with BridgeClient(server.address, timeout_s=300) as client:
        made = client.call(protocol.Generate(prompt="a person", steps=1), timeout_s=600)
        got = client.call(protocol.GetAvatar(avatar_id=made.header["avatar_id"]), timeout_s=300)
    return made.header["avatar_id"], len(got.header["joint_names"]), np.array(got.arrays["rest_matrices"]), \
        np.array(got.arrays["means"])


def case_render(server: Server, cap: int, seconds: float) -> dict:
    avatar_id, joints, rest, means = _avatar(server)
    root = rest[0, :3, 3]
    arrays = front_view_arrays(joints, 2048, 1, root + 0.01 * (means.mean(0) - root), 0.03, 90.0, 0.01)
    watch = Watch(server, cap)
    start = time.monotonic()
    with BridgeClient(server.address, timeout_s=600) as client:
        rid = client.submit(protocol.Render(avatar_id=avatar_id, width=2048, height=2048), arrays)
        outcome = "running"
        while outcome == "running" and not watch.over_cap and time.monotonic() - start < seconds:
            for reply in client.poll(50):
                if reply.id == rid and reply.kind in ("error", "result", "progress"):
                    outcome = reply.code if reply.kind == "error" else "rendered"
    return {**watch.stop(), "outcome": outcome if not watch.over_cap else f"killed above the cap",
            "seconds": round(time.monotonic() - start, 1)}


def case_nonreader(server: Server, cap: int, seconds: float) -> dict:
    avatar_id, joints, rest, _ = _avatar(server)
    arrays = front_view_arrays(joints, 512, 1000, rest[0, :3, 3], 2.5, 40.0, 1.0)
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 1)
    sock.connect(server.address)
    watch = Watch(server, cap)
    start = time.monotonic()
    sock.send_multipart(encode(request_header(protocol.Render(id="flood", avatar_id=avatar_id, width=512,
                                                              height=512)), arrays), copy=False)
    pings = 0
    while time.monotonic() - start < seconds and not watch.over_cap:
        sock.send_multipart(encode(request_header(protocol.Ping(id=f"p{pings}"))))
        pings += 1
        time.sleep(1.0)
    result = watch.stop()
    sock.setsockopt(zmq.RCVHWM, 1000)
    final = "none"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and sock.poll(1000):
        header = msgpack.unpackb(sock.recv_multipart()[0])
        if header.get("id") == "flood" and header.get("kind") in ("error", "result"):
            final = header.get("code", "result")
            break
    sock.close()
    context.term()
    logged = "replies it has not read" in server.log_path.read_text()
    return {**result, "outcome": f"final reply: {final}" + ("; over its unread-reply budget (logged)" if logged
                                                            else ""), "seconds": round(seconds)}


def _raw_partial(port: int, declared: int, send: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31)
    props = b"".join(bytes([len(k)]) + k + len(v).to_bytes(4, "big") + v
                     for k, v in ((b"Socket-Type", b"DEALER"), (b"Identity", b"\x01" + os.urandom(15))))
    body = b"\x05READY" + props
    s.sendall(b"\x04" + bytes([len(body)]) + body + b"\x02" + declared.to_bytes(8, "big"))
    chunk = b"\x00" * MB
    try:
        for _ in range(send // MB):
            s.sendall(chunk)
    except OSError:
        pass
    return s


def case_partial(server: Server, cap: int, seconds: float, connections: int, declared_mb: int, send_mb: int) -> dict:
    watch = Watch(server, cap)
    socks = [_raw_partial(server.port, declared_mb * MB, send_mb * MB) for _ in range(connections)]
    start = time.monotonic()
    while time.monotonic() - start < seconds and not watch.over_cap:
        time.sleep(0.1)
    result = watch.stop()
    held = server.rss() - watch.base
    for s in socks:
        s.close()
    dropped = "dropping a connection" in server.log_path.read_text()
    return {**result, "outcome": f"RSS +{held // MB} MB after {seconds:.0f} s" + ("; peers dropped (logged)"
                                                                                    if dropped else ""),
            "seconds": round(seconds)}


CASES = {
    "render": lambda s, cap: case_render(s, cap, 120.0),
    "nonreader": lambda s, cap: case_nonreader(s, cap, 60.0),
    "partial": lambda s, cap: case_partial(s, cap, 20.0, 4, 1000, 300),
    "partial-under-limit": lambda s, cap: case_partial(s, cap, 20.0, 12, 63, 60),
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.service_memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=str(Path(__file__).resolve().parents[1]),
                   help="the checkout whose backend is measured (default: this one)")
    p.add_argument("--case", action="append", choices=sorted(CASES), help="run only these (repeatable)")
    p.add_argument("--cap-gb", type=float, default=4.0, help="stop a case once the server holds this much more")
    args = p.parse_args(argv)
    root = Path(args.root).resolve()
    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    for name in args.case or list(CASES):
        server = Server(root)
        try:
            idle = server.rss()
            result = CASES[name](server, int(args.cap_gb * (1 << 30)))
        finally:
            server.close()
        print(json.dumps({"case": name, "root": str(root), "commit": commit, "idle_mb": idle // MB, **result}),
              flush=True)


if __name__ == "__main__":
    main()
