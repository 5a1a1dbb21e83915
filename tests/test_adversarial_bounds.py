"""Issue 24 replayed as an attacker would: every byte and every frame's cost bounded, every reply tied to
the client that asked. Real sockets on 127.0.0.1: the real `genlca-backend serve` in a subprocess (its RSS
is what is measured) for the render, reply and inbound bounds; an in-process BackendServer with the
placeholder handlers for the routing-id cases (no model to load); the real `keys` command line.

Memory is checked against the stated budgets plus a tolerance for what a loop turn of the server can let in
before it acts (no wall-clock asserts). The module starts one real server (~1 min on a loaded 2-core machine).
"""
from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq
import zmq.auth

from backend.render.scenes import front_view_arrays
from backend.service.cli import main as cli_main
from backend.service.server import BackendServer
from bridge.wire import protocol
from bridge.wire.client import BridgeClient, BridgeError
from bridge.wire.codec import encode, request_header
from tests.backend_process import Backend, backend_cli
from tests.placeholder_pipeline import placeholder_handlers

ROOT = Path(__file__).resolve().parents[1]
MB = 1 << 20
MSG_MB, INBOUND_MB, UNREAD_MB, BLOCK_PAIRS = 32, 64, 8, 1 << 18
pytestmark = pytest.mark.timeout(900)   # the module's server loads the model in the first test's set-up


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    """One real server for the module, with small budgets so that each case crosses them quickly."""
    tmp = tmp_path_factory.mktemp("bounds")
    server = Backend(tmp, "--avatar-dir", str(tmp / "avatars"), "--max-message-mb", str(MSG_MB),
                            "--set", f"max_inbound_mb={INBOUND_MB}", "--set", f"max_unread_reply_mb={UNREAD_MB}",
                            "--set", f"render_block_pairs={BLOCK_PAIRS}", start_timeout_s=900)
    server.avatar_dir = tmp / "avatars"
    yield server
    server.close()


@pytest.fixture(scope="module")
def avatar(backend):
    with BridgeClient(backend.address, timeout_s=120) as client:
        made = client.call(protocol.Generate(prompt="a person", steps=1), timeout_s=300)
        got = client.call(protocol.GetAvatar(avatar_id=made.header["avatar_id"]), timeout_s=120)
    return made.header["avatar_id"], got.header["joint_names"], np.array(got.arrays["rest_matrices"]), \
        np.array(got.arrays["means"])


class PeakRSS:
    """Samples a process's VmRSS every 5 ms on a thread; `peak` above `base` (the RSS when it started)."""

    def __init__(self, backend: Backend) -> None:
        self.backend, self.base, self.peak = backend, backend.rss(), 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.backend.rss() - self.base)
            except (OSError, AssertionError):
                return
            time.sleep(0.005)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def render_arrays(joints: int, rest: np.ndarray, side: int, frames: int = 1, root_scale: float = 1.0,
                  distance: float = 2.5, fov_deg: float = 40.0, target: np.ndarray | None = None) -> dict:
    """A front camera `distance` from `target` (default: the body's middle), the root bone scaled."""
    centre = target if target is not None else rest[0, :3, 3]
    return front_view_arrays(joints, side, frames, centre, distance, fov_deg, root_scale)


def shrunk_target(rest: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Where the body's Gaussians gather when the root bone is scaled by 0.01 (about the root's head)."""
    root = rest[0, :3, 3]
    return root + 0.01 * (means.mean(0) - root)


# ------------------------------------------------------------------------------------------ 1. render cost
def test_a_legal_close_up_of_a_shrunken_body_is_refused_by_its_pair_cost(backend, avatar):
    """The issue's frame: 2048^2, the root scaled to 0.01, the camera 3 cm away at fov 90 (4e8 Gaussian-tile
    pairs: +6 GB on main). Refused with too_costly before a pair is listed; the server stays small."""
    avatar_id, joints, rest, means = avatar
    arrays = render_arrays(len(joints), rest, 2048, root_scale=0.01, distance=0.03, fov_deg=90,
                           target=shrunk_target(rest, means))
    peak = PeakRSS(backend)
    with BridgeClient(backend.address, timeout_s=120) as client:
        with pytest.raises(BridgeError) as e:
            client.call(protocol.Render(avatar_id=avatar_id, width=2048, height=2048), arrays, timeout_s=300)
        assert client.call(protocol.Ping()).kind == "result"
    grown = peak.stop()
    print(f"2048^2 close-up: {e.value.code}: {e.value.message}; server RSS peak +{grown / MB:.0f} MB")
    assert e.value.code == protocol.E_TOO_COSTLY and "Gaussian-tile pairs" in e.value.message
    assert grown < 1024 * MB


def test_a_close_up_below_the_pair_limit_renders_in_bounded_blocks(backend, avatar):
    """The same kind of frame at 128^2 (~2.6e6 pairs) is legal: it renders in blocks of 2^18 pairs, and the
    server's peak stays within 40 bytes a pair of one block, the frame's buffers and 64 MB of slack."""
    avatar_id, joints, rest, means = avatar
    arrays = render_arrays(len(joints), rest, 128, root_scale=0.01, distance=0.03, fov_deg=90,
                           target=shrunk_target(rest, means))
    peak = PeakRSS(backend)
    with BridgeClient(backend.address, timeout_s=300) as client:
        frames = []
        client.call(protocol.Render(avatar_id=avatar_id, width=128, height=128), arrays, timeout_s=600,
                    on_progress=lambda r: frames.append(r.arrays["rgba"]))
    grown = peak.stop()
    print(f"128^2 close-up rendered in blocks: server RSS peak +{grown / MB:.0f} MB")
    assert len(frames) == 1 and frames[0].shape == (128, 128, 4) and frames[0][..., 3].max() > 0
    assert grown < 40 * BLOCK_PAIRS + 200 * 128 * 128 + 64 * MB


@pytest.mark.parametrize("name,index,value", [("joint_scales", (0, 0), 1e30), ("joint_scales", (0, 3), 1e-30),
                                              ("joint_locations", (0, 2, 1), 3.4e38),
                                              ("root_translations", (0, 0), 3.4e38),
                                              ("world_to_camera", (0, 0, 3), 1e20)])
def test_pose_and_camera_values_outside_a_rig_are_named_not_internal(backend, avatar, name, index, value):
    avatar_id, joints, rest, _ = avatar
    arrays = render_arrays(len(joints), rest, 64)
    arrays[name][index] = value
    with BridgeClient(backend.address, timeout_s=60) as client:
        with pytest.raises(BridgeError) as e:
            client.call(protocol.Render(avatar_id=avatar_id, width=64, height=64), arrays)
    assert e.value.code == protocol.E_INVALID and name in e.value.message and "outside" in e.value.message


def test_scales_that_compound_down_the_chain_past_the_range_are_named(backend, avatar):
    avatar_id, joints, rest, _ = avatar
    arrays = render_arrays(len(joints), rest, 64)
    arrays["joint_scales"][:] = 0.5          # legal per bone, 0.5^depth down a chain
    with BridgeClient(backend.address, timeout_s=60) as client:
        with pytest.raises(BridgeError) as e:
            client.call(protocol.Render(avatar_id=avatar_id, width=64, height=64), arrays)
    assert e.value.code == protocol.E_INVALID and "multiply to" in e.value.message
    assert "Traceback" not in backend.log()


def test_not_found_names_no_server_path(backend):
    with BridgeClient(backend.address, timeout_s=60) as client:
        with pytest.raises(BridgeError) as e:
            client.call(protocol.GetAvatar(avatar_id="00ff00ff"))
    assert e.value.code == protocol.E_NOT_FOUND and "00ff00ff" in e.value.message
    assert str(backend.avatar_dir) not in e.value.message and "/" not in e.value.message


# ------------------------------------------------------------------------------------------ 2. unread replies
def test_a_client_that_never_reads_its_frames_stops_getting_work_within_its_budget(backend, avatar):
    """A DEALER asks for 200 frames of 512^2 (1 MiB each), pings, and never reads: once its unread bytes would pass
    max_unread_reply_mb (8 MiB) its render ends with over_budget, a new job is refused, and the server holds
    no more than the budget plus the kernel's socket buffers and a frame in flight. A well-behaved client is
    answered throughout."""
    avatar_id, joints, rest, _ = avatar
    arrays = render_arrays(len(joints), rest, 512, frames=200)
    request = protocol.Render(id="flood", avatar_id=avatar_id, width=512, height=512)
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 1)
    sock.connect(backend.address)
    peak = PeakRSS(backend)
    try:
        sock.send_multipart(encode(request_header(request), arrays), copy=False)
        deadline = time.monotonic() + 300
        pings = 0
        with BridgeClient(backend.address, timeout_s=60) as good:
            while "replies it has not read" not in backend.log():
                assert time.monotonic() < deadline, backend.log()[-3000:]
                assert good.call(protocol.Ping()).kind == "result"
                # the flood pings too (never reading the answers), so it is not taken for gone when silent
                sock.send_multipart(encode(request_header(protocol.Ping(id=f"p{pings}"))))
                pings += 1
                time.sleep(0.2)
        grown = peak.stop()
        again = protocol.Render(id="again", avatar_id=avatar_id, width=512, height=512)
        sock.send_multipart(encode(request_header(again), arrays), copy=False)
        replies = {}
        while not ("flood" in replies and "again" in replies):
            assert sock.poll(60_000), f"no final replies: {sorted(replies)}"
            header = msgpack.unpackb(sock.recv_multipart()[0])
            if header.get("kind") in ("result", "error"):
                replies[header["id"]] = header
    finally:
        sock.close()
        context.term()
    print(f"non-reading client: server RSS peak +{grown / MB:.0f} MB; {replies['flood']['message']}")
    assert replies["flood"]["code"] == protocol.E_OVER_BUDGET
    assert replies["again"]["code"] == protocol.E_OVER_BUDGET and "not read" in replies["again"]["message"]
    assert grown < (UNREAD_MB + 64) * MB      # the budget, the kernel's send buffer (<= 4 MB), frame buffers


# ------------------------------------------------------------------------------------------ 3. inbound bytes
def _zmtp_dealer(port: int) -> socket.socket:
    """A raw ZMTP 3.0 NULL DEALER with a random 16-byte routing id: greeting and READY, nothing else."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31)
    props = b"".join(bytes([len(k)]) + k + len(v).to_bytes(4, "big") + v
                     for k, v in ((b"Socket-Type", b"DEALER"), (b"Identity", b"\x01" + os.urandom(15))))
    body = b"\x05READY" + props
    s.sendall(b"\x04" + bytes([len(body)]) + body)
    return s


def _partial(port: int, declared: int, send: int) -> socket.socket:
    s = _zmtp_dealer(port)
    s.sendall(b"\x02" + declared.to_bytes(8, "big"))         # one long frame, no MORE
    chunk = b"\x00" * MB
    try:
        for _ in range(send // MB):
            s.sendall(chunk)
    except OSError:
        pass                                                   # dropped by the server
    return s


def _closed_by_peer(s: socket.socket) -> bool:
    s.settimeout(0.05)
    try:
        while True:
            data = s.recv(65536)
            if not data:
                return True
    except socket.timeout:
        return False
    except OSError:
        return True


def test_half_received_messages_are_bounded_across_connections(backend):
    """Six raw connections each send 20 MiB of a declared 30 MiB frame (under the 32 MiB message limit) and
    stop: 120 MiB in all, above the 64 MiB inbound budget. The heaviest are dropped with a log line; the
    server's RSS stays within the budget plus a loop turn's intake (a 32 MiB message)."""
    port = int(backend.address.rsplit(":", 1)[1])
    peak = PeakRSS(backend)
    conns = [_partial(port, 30 * MB, 20 * MB) for _ in range(6)]
    try:
        deadline = time.monotonic() + 60
        while "inbound budget" not in backend.log():
            assert time.monotonic() < deadline, backend.log()[-3000:]
            time.sleep(0.05)
        assert backend.ping().kind == "result"
        grown = peak.stop()
        dropped = sum(_closed_by_peer(s) for s in conns)
    finally:
        for s in conns:
            s.close()
    print(f"6 x 20 MiB partial messages: {dropped} connections dropped, server RSS peak +{grown / MB:.0f} MB")
    assert dropped >= 2
    assert grown < (INBOUND_MB + MSG_MB + 32) * MB


def test_a_frame_declared_above_the_request_limit_is_dropped_before_it_is_held(backend):
    """The issue's 1000 MiB declaration: libzmq (MAXMSGSIZE, here 32 MiB) closes the connection at the frame
    header, before allocating; nothing is held."""
    port = int(backend.address.rsplit(":", 1)[1])
    base = backend.rss()
    s = _partial(port, 1000 * MB, 8 * MB)
    try:
        deadline = time.monotonic() + 30
        while not _closed_by_peer(s):
            assert time.monotonic() < deadline, "the server kept the connection"
    finally:
        s.close()
    assert backend.rss() - base < 32 * MB and backend.ping().kind == "result"


# ------------------------------------------------------------------------------------------ 4. ownership
def _long_job(sock: zmq.Socket, rid: str) -> None:
    sock.send_multipart(encode(request_header(protocol.Generate(id=rid, prompt="x", steps=200_000))), copy=False)


def _replies(sock: zmq.Socket, seconds_of_polls: int) -> list[dict]:
    out = []
    for _ in range(seconds_of_polls * 10):
        while sock.poll(0):
            out.append(msgpack.unpackb(sock.recv_multipart()[0]))
        time.sleep(0.1)
    return out


def _ownership_case(server: BackendServer, context: zmq.Context, curve: dict | None = None,
                    thief_curve: dict | None = None) -> tuple[list[dict], list[dict]]:
    """B (routing id X) starts a long job and closes mid-job; A connects presenting X, pings, tries to
    cancel B's job, and listens. Returns (what A received, what B received before closing)."""
    rid_x = b"\x01" + os.urandom(15)

    def dealer(keys: dict | None) -> zmq.Socket:
        s = context.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.ROUTING_ID, rid_x)
        for option, value in (keys or {}).items():
            s.setsockopt(option, value)
        s.connect(server.address)
        return s

    bob = dealer(curve)
    _long_job(bob, "bobs-job")
    seen_by_bob = []
    while not any(r.get("kind") == "progress" for r in seen_by_bob):
        assert bob.poll(30_000), "bob's job never started"
        seen_by_bob.append(msgpack.unpackb(bob.recv_multipart()[0]))
    bob.close()
    # libzmq ignores a connection whose id is still held by a live pipe: retry until the id is free (bounded)
    for _ in range(50):
        thief = dealer(thief_curve if thief_curve is not None else curve)
        thief.send_multipart([msgpack.packb({"v": 1, "id": "mine", "op": "ping", "arrays": []})])
        if thief.poll(500):
            break
        thief.close()
    else:
        raise AssertionError("the thief's connection was never taken")
    thief.send_multipart([msgpack.packb({"v": 1, "id": "c", "op": "cancel", "target": "bobs-job", "arrays": []})])
    seen = _replies(thief, 3)
    thief.close()
    return seen, seen_by_bob


def test_a_new_connection_presenting_an_old_routing_id_gets_none_of_its_replies():
    server = BackendServer("tcp://127.0.0.1:*", placeholder_handlers(), heartbeat_s=0.2)
    server.serve_in_thread()
    context = zmq.Context()
    try:
        seen, _ = _ownership_case(server, context)
    finally:
        context.term()
        server.stop()
    assert [r["id"] for r in seen if r["id"] not in ("", "mine", "c")] == [], seen
    cancel = next(r for r in seen if r["id"] == "c")
    assert cancel["kind"] == "result" and cancel["found"] is False
    assert all(r["id"] != "bobs-job" for r in seen) and not any(r.get("jobs") for r in seen)


def test_under_curve_alice_never_receives_or_cancels_bobs_frames(tmp_path, caplog):
    keys = tmp_path / "keys"
    assert cli_main(["keys", "--keys-dir", str(keys)]) == 0
    server_public = zmq.auth.load_certificate(str(keys / "server.key"))[0]
    pairs = {name: zmq.curve_keypair() for name in ("alice", "bob")}
    for name, (public, _) in pairs.items():
        assert cli_main(["keys", "--keys-dir", str(keys), "--add-client", name, f"--public-key={public.decode()}"]) == 0

    def curve(name: str) -> dict:
        public, secret = pairs[name]
        return {zmq.CURVE_SERVERKEY: server_public, zmq.CURVE_PUBLICKEY: public, zmq.CURVE_SECRETKEY: secret}

    server = BackendServer("tcp://127.0.0.1:*", placeholder_handlers(), keys_dir=keys, heartbeat_s=0.2)
    server.serve_in_thread()
    context = zmq.Context()
    caplog.set_level("INFO", logger="genlca.backend")
    try:
        seen, seen_by_bob = _ownership_case(server, context, curve("bob"), curve("alice"))
    finally:
        context.term()
        server.stop()
    assert any(r["id"] == "mine" and r["kind"] == "result" for r in seen)       # alice is served ...
    assert all(r["id"] in ("", "mine", "c") for r in seen), seen                # ... only her own replies
    assert next(r for r in seen if r["id"] == "c")["found"] is False
    assert server.stats["clients_gone"] >= 1                                    # bob's job was cancelled


def test_routing_ids_never_reach_the_log(caplog):
    server = BackendServer("tcp://127.0.0.1:*", placeholder_handlers(), heartbeat_s=0.2)
    server.serve_in_thread()
    caplog.set_level("INFO", logger="genlca.backend")
    context = zmq.Context()
    rid = b"\x01" + os.urandom(15)
    try:
        s = context.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.ROUTING_ID, rid)
        s.connect(server.address)
        s.send_multipart([b"\x80"])                 # a malformed message: an error, logged
        assert s.poll(10_000)
        _long_job(s, "j")
        assert s.poll(10_000)
        s.close()                                    # its job is cancelled: logged
        deadline = time.monotonic() + 30
        while server.stats["clients_gone"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        context.term()
        server.stop()
    text = caplog.text
    assert "client-" in text and rid.hex() not in text and rid.hex()[:8] not in text


# ------------------------------------------------------------------------------------------ 5. the small items
def test_keys_add_client_refuses_a_non_ascii_key_and_a_silent_overwrite(tmp_path):
    keys = tmp_path / "keys"
    public = zmq.curve_keypair()[0].decode()
    other = zmq.curve_keypair()[0].decode()
    bad = backend_cli("keys", "--keys-dir", str(keys), "--add-client", "x", "--public-key", "é" * 40)
    assert bad.returncode == 2 and "non-ASCII" in bad.stderr and "Traceback" not in bad.stderr
    assert not (keys / "authorized_clients" / "x.key").exists()
    assert backend_cli("keys", "--keys-dir", str(keys), "--add-client", "blender", "--public-key", public).returncode == 0
    again = backend_cli("keys", "--keys-dir", str(keys), "--add-client", "blender", "--public-key", public)
    assert again.returncode == 0 and "already" in again.stdout
    clash = backend_cli("keys", "--keys-dir", str(keys), "--add-client", "blender", "--public-key", other)
    assert clash.returncode == 2 and "--replace" in clash.stderr
    assert zmq.auth.load_certificate(str(keys / "authorized_clients" / "blender.key"))[0].decode() == public
    assert backend_cli("keys", "--keys-dir", str(keys), "--add-client", "blender", "--public-key", other,
                "--replace").returncode == 0
    assert zmq.auth.load_certificate(str(keys / "authorized_clients" / "blender.key"))[0].decode() == other


def _key_starting_with_dash() -> str:
    while True:   # '-' is one of Z85's 85 digits: about one key in 85 starts with it
        public = zmq.curve_keypair()[0].decode()
        if public.startswith("-"):
            return public


def test_a_public_key_that_starts_with_a_dash_is_taken_as_the_flags_value(tmp_path):
    """`--public-key -abc...`: argparse alone takes the key for an option ("expected one argument"); the
    command joins the flag and its next token, so the documented form works for every key."""
    keys = tmp_path / "keys"
    public = _key_starting_with_dash()
    assert cli_main(["keys", "--keys-dir", str(keys), "--add-client", "dash", "--public-key", public]) == 0
    assert zmq.auth.load_certificate(str(keys / "authorized_clients" / "dash.key"))[0].decode() == public
    out = backend_cli("keys", "--keys-dir", str(keys), "--add-client", "dash2", "--public-key", public)
    assert out.returncode == 0 and public in out.stdout, out.stderr
    with pytest.raises(SystemExit) as missing:   # no value at all is still argparse's error, exit 2
        cli_main(["keys", "--keys-dir", str(keys), "--add-client", "none", "--public-key"])
    assert missing.value.code == 2


@pytest.mark.parametrize("content", [b"", b"garbage\n", b'public-key = "short"\n'])
def test_a_bad_key_file_in_authorized_clients_stops_the_server_naming_it(tmp_path, content):
    """Fail closed and loud: an operator who wrote a key meant to let someone in; serving while refusing
    everyone (what zmq's loader leaves) hides the mistake."""
    keys = tmp_path / "keys"
    assert cli_main(["keys", "--keys-dir", str(keys)]) == 0
    assert cli_main(["keys", "--keys-dir", str(keys), "--add-client", "good",
                     "--public-key", zmq.curve_keypair()[0].decode()]) == 0
    (keys / "authorized_clients" / "broken.key").write_bytes(content)
    with pytest.raises(ValueError, match="broken.key"):
        BackendServer("tcp://127.0.0.1:*", placeholder_handlers(), keys_dir=keys)


def test_the_serve_command_exits_2_on_a_bad_key_file(tmp_path):
    keys = tmp_path / "keys"
    assert cli_main(["keys", "--keys-dir", str(keys)]) == 0
    (keys / "authorized_clients").mkdir()
    (keys / "authorized_clients" / "empty.key").write_bytes(b"")
    out = backend_cli("serve", "--bind", "tcp://127.0.0.1:0", "--no-persist", "--keys-dir", str(keys))
    assert out.returncode == 2 and "empty.key" in out.stderr and "Traceback" not in out.stderr


def _bomb_png(path: Path, side: int) -> Path:
    """A 1-bit PNG of zeros declaring side x side pixels: 109 KB for 30000^2."""
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


_READ = """
import json, resource, sys
from backend.perception.media import ImageTooLargeError, read_image
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    read_image(sys.argv[1])
    print(json.dumps({"error": None}))
except ImageTooLargeError as exc:
    print(json.dumps({"error": str(exc), "grown": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024}))
"""


@pytest.mark.parametrize("side", [30000, 12000])
def test_read_image_refuses_a_decompression_bomb_by_name_before_decoding(tmp_path, side):
    png = _bomb_png(tmp_path / f"bomb{side}.png", side)
    out = subprocess.run([sys.executable, "-c", _READ, str(png)], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["error"] and str(png) in result["error"] and "limit" in result["error"]
    assert result["grown"] < 64 * MB          # 12000^2 decoded to +800 MB on main
