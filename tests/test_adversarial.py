"""A client must not be able to crash or exhaust the backend (issue 12). Every test runs the real
`genlca-backend` command in a subprocess and talks to it over real sockets on 127.0.0.1.

Numbers (docs/ARCHITECTURE.md, "Threat model"): RSS growth under a client that never reads is measured
over GENLCA_NONREADER_SECONDS (default 8 s) and scaled to 60 s; the @slow variant measures the full 60 s.
"""
from __future__ import annotations

import ctypes
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from bridge.wire import protocol
from bridge.wire.client import BridgeClient, BridgeError
from bridge.wire.keys import load_or_create_client_keypair
from tests.backend_process import Backend, backend_cli

ROOT = Path(__file__).resolve().parents[1]
MB = 1 << 20


@pytest.fixture
def backend_factory(tmp_path):
    started: list[Backend] = []

    def start(*args: str, port: int | None = None) -> Backend:
        started.append(Backend(tmp_path, *args, port=port))
        return started[-1]

    yield start
    for b in started:
        b.close()


def collect(client: BridgeClient, ids: list[str], timeout_s: float = 120) -> dict[str, list]:
    """Every reply of `ids` until each has its result or error."""
    replies: dict[str, list] = {rid: [] for rid in ids}
    open_ids = set(ids)
    deadline = time.monotonic() + timeout_s
    while open_ids:
        assert time.monotonic() < deadline, f"no final reply for {sorted(open_ids)}"
        for reply in client.poll(100):
            if reply.id in replies:
                replies[reply.id].append(reply)
                if reply.done:
                    open_ids.discard(reply.id)
    return replies


# ------------------------------------------------------------------------------------------ routing ids
def _glibc_first_routing_ids(count: int) -> list[bytes]:
    """The routing ids an unseeded libzmq ROUTER auto-assigns first: 0x00 + generate_random() (two rand()
    calls: low | (high & 1) << 31), for the first `count` ROUTERs (or rand() calls before) of a process."""
    libc = ctypes.CDLL(None)
    libc.srand(1)                      # glibc's state when nothing seeded it
    r = [libc.rand() for _ in range(2 * count)]
    libc.srand(int.from_bytes(os.urandom(4), "little"))
    return [b"\x00" + ((((r[2 * k + 1] & 1) << 31) | r[2 * k]) & 0xFFFFFFFF).to_bytes(4, "big") for k in range(count)]


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="the predicted ids follow glibc's rand()")
def test_client_chosen_routing_ids_cannot_abort_the_server(backend_factory):
    """The reproduction: clients take the ids libzmq would assign next, then ordinary clients connect.
    Without server-side seeding the first plain connection aborts the process (socket_base.cpp:2113)."""
    backend = backend_factory("--no-persist")
    context = zmq.Context()
    squatters = []
    try:
        for rid in _glibc_first_routing_ids(128):
            sock = context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.ROUTING_ID, rid)
            sock.connect(backend.address)
            squatters.append(sock)
        for sock in squatters:           # each squatter is registered with its chosen id before we go on
            sock.send_multipart([b"\x80"])
            assert sock.poll(20000), "a squatter got no reply"
            sock.recv_multipart()
        for _ in range(4):               # plain DEALERs take libzmq's auto-assigned ids
            plain = context.socket(zmq.DEALER)
            plain.setsockopt(zmq.LINGER, 0)
            plain.connect(backend.address)
            plain.send_multipart([b"\x80"])
            assert plain.poll(20000), f"the server stopped answering:\n{backend.log()}"
            plain.close()
        assert backend.ping().kind == "result"       # and the project's own client
        assert backend.proc.poll() is None
    finally:
        for sock in squatters:
            sock.close()
        context.term()


# ------------------------------------------------------------------------------------------ remote mode
def test_serve_with_keys_admits_only_listed_client_keys(backend_factory, tmp_path):
    keys = tmp_path / "keys"
    assert backend_cli("keys", "--keys-dir", str(keys)).returncode == 0
    listed_public, listed_secret = load_or_create_client_keypair(tmp_path / "listed")
    stranger = load_or_create_client_keypair(tmp_path / "stranger")
    bad = backend_cli("keys", "--keys-dir", str(keys), "--add-client", "blender", "--public-key", "not-a-key")
    assert bad.returncode == 2 and "Z85" in bad.stderr and "Traceback" not in bad.stderr
    added = backend_cli("keys", "--keys-dir", str(keys), "--add-client", "blender", f"--public-key={listed_public.decode()}")
    assert added.returncode == 0, added.stderr
    assert (keys / "authorized_clients" / "blender.key").is_file()

    backend = backend_factory("--no-persist", "--keys-dir", str(keys))
    # a fresh interpreter (nothing imported zmq.auth for it) with the persistent keypair from its folder
    script = ("import sys; from bridge.wire import protocol; from bridge.wire.client import BridgeClient; "
              "from bridge.wire.keys import load_or_create_client_keypair; "
              "pub, sec = load_or_create_client_keypair(sys.argv[2]); "
              "c = BridgeClient(sys.argv[1], server_public_key=sys.argv[3], client_public_key=pub, "
              "client_secret_key=sec, timeout_s=20); "
              "print(c.call(protocol.Hello(), timeout_s=20).header['curve']); c.close()")
    fresh = subprocess.run([sys.executable, "-c", script, backend.address, str(tmp_path / "listed"),
                            str(keys / "server.key")], cwd=ROOT, capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert fresh.returncode == 0 and fresh.stdout.strip() == "True", fresh.stderr
    assert backend.ping(server_public_key=keys / "server.key", client_public_key=listed_public,
                        client_secret_key=listed_secret.decode()).kind == "result"
    for pair in (stranger, None):      # an unlisted persistent key; a fresh key per connection
        extra = {} if pair is None else {"client_public_key": pair[0], "client_secret_key": pair[1]}
        with BridgeClient(backend.address, server_public_key=keys / "server.key", timeout_s=1.0, **extra) as c:
            with pytest.raises(BridgeError) as e:
                c.call(protocol.Ping())
            assert e.value.code == protocol.E_TIMEOUT
    assert backend.proc.poll() is None


# ------------------------------------------------------------------------------------------ bounded resources
def _nonreader_growth(backend: Backend, seconds: float) -> tuple[int, int]:
    """A DEALER that sends hello requests as fast as the server takes them and never reads. Returns
    (RSS growth in bytes from 1 s in to the end, requests sent)."""
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(backend.address)
    import msgpack
    sent = 0
    try:
        start = time.monotonic()
        base = None
        while time.monotonic() - start < seconds:
            if base is None and time.monotonic() - start > 1.0:
                base = backend.rss()
            header = msgpack.packb({"v": 1, "id": f"h{sent}", "op": "hello", "client": "x" * 64, "arrays": []})
            try:
                sock.send(header, zmq.NOBLOCK)
                sent += 1
            except zmq.Again:
                time.sleep(0.001)
        assert base is not None
        return backend.rss() - base, sent
    finally:
        sock.close()
        context.term()


def _check_nonreader(backend: Backend, seconds: float) -> None:
    growth, sent = _nonreader_growth(backend, seconds)
    per_60s = growth * 60.0 / max(seconds - 1.0, 1e-3)
    print(f"non-reading client: {sent} requests in {seconds:.0f} s, RSS growth {growth / MB:.1f} MB "
          f"({per_60s / MB:.1f} MB per 60 s scaled)")
    assert sent > 10_000, "the client did not manage to flood the server"
    assert per_60s < 256 * MB
    # the server notices when its replies back up, which on a loaded machine may come after the flood stops
    deadline = time.monotonic() + 60.0
    while "does not read its replies" not in backend.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "does not read its replies" in backend.log()
    assert backend.ping().kind == "result" and backend.proc.poll() is None


def test_a_client_that_never_reads_keeps_memory_bounded(backend_factory):
    _check_nonreader(backend_factory("--no-persist"), float(os.environ.get("GENLCA_NONREADER_SECONDS", "8")))


@pytest.mark.slow
def test_a_client_that_never_reads_for_60_s_keeps_memory_bounded(backend_factory):
    _check_nonreader(backend_factory("--no-persist"), 61.0)


def test_oversized_requests_are_refused_or_bounded_by_the_byte_budget(backend_factory):
    # 200 MiB requests: above the 64 MiB default message limit (libzmq would drop the connection), so the
    # limit is raised here to reach the image-size check and the byte budget behind it
    backend = backend_factory("--no-persist", "--queue-size", "32", "--max-message-mb", "256",
                              "--set", "max_queued_mb=64", "--set", "max_client_jobs=32")
    huge = np.zeros((200 * MB // (3 * 4096), 4096, 3), np.uint8)      # 200 MiB, 17M pixels: above the image limit
    big = np.zeros((2048, 2048, 3), np.uint8)                         # 12 MiB each, 16 of them: 192 MiB > 64
    with BridgeClient(backend.address, timeout_s=120) as client:
        # keep the worker busy with many small frames (little memory of its own), so the requests below queue
        avatar_id, arrays = _long_render(client, frames=2000, size=256)
        busy = client.submit(protocol.Render(avatar_id=avatar_id, width=256, height=256), arrays)
        while not any(r.id == busy and r.stage == "frame" for r in client.poll(100)):
            assert backend.proc.poll() is None
        base = backend.rss()
        ids = [client.submit(protocol.Generate(prompt=f"p{i}"), {"image": huge}) for i in range(16)]
        replies = collect(client, ids)
        assert all([r.kind for r in rs] == ["error"] and rs[0].code == protocol.E_TOO_LARGE
                   for rs in replies.values()), replies
        # the worker is busy with the render: these wait in the queue, up to the byte budget
        ids = [client.submit(protocol.Generate(prompt=f"q{i}"), {"image": big}) for i in range(16)]
        firsts = {}
        while len(firsts) < len(ids):
            for reply in client.poll(100):
                if reply.id in ids:
                    firsts.setdefault(reply.id, reply)
        accepted = [rid for rid in ids if firsts[rid].kind == "accepted"]
        refused = [firsts[rid] for rid in ids if firsts[rid].kind != "accepted"]
        assert 0 < len(accepted) <= 64 // 12 and len(refused) == 16 - len(accepted)
        assert all(r.code == protocol.E_OVER_BUDGET for r in refused), [r.header for r in refused]
        growth, peak = backend.rss() - base, backend.rss("VmHWM") - base
        client.cancel(busy)
        replies = collect(client, accepted)
        # each queued job ends (a blank image may be refused by the model: not our business here)
        assert all(rs[-1].done and rs[-1].code != protocol.E_INTERNAL for rs in replies.values()), \
            [rs[-1].header for rs in replies.values()]
        unused = client.submit(protocol.Edit(avatar_id="00ff00ff"), {"image": big})
        (reply,) = collect(client, [unused])[unused]
        assert reply.code == protocol.E_BAD_ARRAY and "image" in reply.message
    print(f"16 x 200 MiB + 16 x 12 MiB generate requests: server RSS growth {growth / MB:.0f} MB while queued "
          f"(peak {peak / MB:.0f} MB above the start)")
    assert growth < 256 * MB


def test_a_render_over_the_cost_limit_or_the_client_share_is_refused_up_front(backend_factory):
    backend = backend_factory("--no-persist", "--set", "max_client_jobs=2")
    frames, joints = 2000, 4
    rotations = np.zeros((frames, joints, 4), np.float32)
    rotations[..., 0] = 1
    arrays = {"joint_rotations": rotations, "root_translations": np.zeros((frames, 3), np.float32),
              "world_to_camera": np.tile(np.eye(4, dtype=np.float32), (frames, 1, 1)),
              "intrinsics": np.tile(np.eye(3, dtype=np.float32), (frames, 1, 1))}
    with BridgeClient(backend.address, timeout_s=60) as client:
        rid = client.submit(protocol.Render(avatar_id="00ff00ff", width=2048, height=2048), arrays)
        (reply,) = collect(client, [rid])[rid]     # refused before it was queued: no `accepted`
        assert reply.code == protocol.E_TOO_COSTLY and "pixel-frames" in reply.message
        stray = client.submit(protocol.Render(avatar_id="00ff00ff", width=64, height=64),
                              {**arrays, "extra": np.zeros(3, np.float32)})
        (reply,) = collect(client, [stray])[stray]
        assert reply.code == protocol.E_BAD_ARRAY and "extra" in reply.message
        # the per-client share: two jobs in flight, the third is refused
        ids = [client.submit(protocol.Generate(prompt=f"s{i}")) for i in range(3)]
        replies = collect(client, ids)
        firsts = [replies[i][0] for i in ids]
        assert [r.kind for r in firsts[:2]] == ["accepted", "accepted"]
        assert firsts[2].code == protocol.E_CLIENT_QUOTA


# ------------------------------------------------------------------------------------------ shutdown
def _long_render(client: BridgeClient, frames: int, size: int) -> tuple[str, dict]:
    generated = client.call(protocol.Generate(prompt="slow"), timeout_s=120)
    avatar = client.call(protocol.GetAvatar(avatar_id=generated.header["avatar_id"]), timeout_s=60)
    joints = len(avatar.header["joint_names"])
    rotations = np.zeros((frames, joints, 4), np.float32)
    rotations[..., 0] = 1
    w2c = np.tile(np.eye(4, dtype=np.float32), (frames, 1, 1))
    w2c[:, 1, 1] = w2c[:, 2, 2] = -1      # look at the body from the front (it faces -Y) ...
    w2c[:, 1, 2], w2c[:, 2, 1], w2c[:, 1, 1], w2c[:, 2, 2] = -1, 1, 0, 0
    w2c[:, 2, 3] = 3.0
    intrinsics = np.tile(np.array([[size, 0, size / 2], [0, size, size / 2], [0, 0, 1]], np.float32), (frames, 1, 1))
    return generated.header["avatar_id"], {"joint_rotations": rotations,
                                           "root_translations": np.zeros((frames, 3), np.float32),
                                           "world_to_camera": w2c, "intrinsics": intrinsics}


def test_sigterm_during_a_long_render_ends_every_job_with_shutting_down_and_exits_0(backend_factory):
    backend = backend_factory("--no-persist")
    with BridgeClient(backend.address, timeout_s=120) as client:
        avatar_id, arrays = _long_render(client, frames=200, size=2048)
        running = client.submit(protocol.Render(avatar_id=avatar_id, width=2048, height=2048), arrays)
        queued = [client.submit(protocol.Render(avatar_id=avatar_id, width=64, height=64), arrays) for _ in range(2)]
        deadline = time.monotonic() + 300
        seen: dict[str, list] = {rid: [] for rid in [running, *queued]}
        while not any(r.kind == "progress" and r.stage == "frame" for r in seen[running]):
            assert time.monotonic() < deadline and backend.proc.poll() is None
            for reply in client.poll(100):
                seen[reply.id].append(reply)
        backend.proc.send_signal(signal.SIGTERM)
        rest = collect(client, [rid for rid in seen if not (seen[rid] and seen[rid][-1].done)])
        for rid, replies in rest.items():
            seen[rid] += replies
        for rid, replies in seen.items():
            assert replies[-1].kind == "error" and replies[-1].code == protocol.E_SHUTTING_DOWN, (rid, replies[-1].header)
        assert backend.proc.wait(300) == 0, backend.log()
    log = backend.log()
    assert "terminate called" not in log and "Traceback" not in log


def test_a_second_signal_exits_at_once(backend_factory):
    backend = backend_factory("--no-persist")
    with BridgeClient(backend.address, timeout_s=120) as client:
        avatar_id, arrays = _long_render(client, frames=200, size=2048)   # the largest frames allowed
        running = client.submit(protocol.Render(avatar_id=avatar_id, width=2048, height=2048), arrays)
        while True:   # the worker is inside a frame of several seconds once the first one has arrived
            replies = [r for r in client.poll(100) if r.id == running]
            assert backend.proc.poll() is None
            if any(r.kind == "progress" and r.stage == "frame" for r in replies):
                break
        backend.proc.send_signal(signal.SIGTERM)
        final = collect(client, [running])[running][-1]
        assert final.code == protocol.E_SHUTTING_DOWN     # the first signal was handled
        backend.proc.send_signal(signal.SIGTERM)
        assert backend.proc.wait(60) == 128 + signal.SIGTERM
    assert "exiting now" in backend.log()
