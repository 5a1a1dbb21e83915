"""Named errors for values that used to end as `internal`: zero quaternions, non-finite colours, arrays an
op does not use; and binds that used to end in a traceback (tcp://[::1])."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from backend.service.handlers import default_handlers
from backend.service.config import ServiceConfig
from backend.service.server import BackendServer
from bridge.wire import protocol
from bridge.wire.client import BridgeClient, BridgeError

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ServiceConfig(device="cpu")  # the model: $GENLCA_MODEL, a tiny random package (tests/conftest.py)


@pytest.fixture(scope="module")
def served():
    server = BackendServer("tcp://127.0.0.1:*", default_handlers(config=CONFIG), admission=CONFIG.check_request)
    server.serve_in_thread()
    client = BridgeClient(server.address, timeout_s=60)
    avatar_id = client.call(protocol.Generate(prompt="v"), timeout_s=60).header["avatar_id"]
    joints = len(client.call(protocol.GetAvatar(avatar_id=avatar_id)).header["joint_names"])
    yield server, client, avatar_id, joints
    client.close()
    server.stop()


def render_arrays(frames: int, joints: int) -> dict[str, np.ndarray]:
    rotations = np.zeros((frames, joints, 4), np.float32)
    rotations[..., 0] = 1
    w2c = np.tile(np.eye(4, dtype=np.float32), (frames, 1, 1))
    w2c[:, 2, 3] = 3
    intrinsics = np.tile(np.array([[32, 0, 16], [0, 32, 16], [0, 0, 1]], np.float32), (frames, 1, 1))
    return {"joint_rotations": rotations, "root_translations": np.zeros((frames, 3), np.float32),
            "world_to_camera": w2c, "intrinsics": intrinsics}


def test_a_zero_quaternion_is_an_invalid_argument(served):
    _, client, avatar_id, joints = served
    arrays = render_arrays(2, joints)
    arrays["joint_rotations"][1, 5] = 0
    with pytest.raises(BridgeError) as e:
        client.call(protocol.Render(avatar_id=avatar_id, width=32, height=32), arrays)
    assert e.value.code == protocol.E_INVALID and "joint_rotations[1, 5]" in e.value.message


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_background_colours_are_invalid_arguments(served, bad):
    _, client, avatar_id, joints = served
    with pytest.raises(BridgeError) as e:
        client.call(protocol.Render(avatar_id=avatar_id, width=32, height=32, background=(0.0, bad, 0.0)),
                    render_arrays(1, joints))
    assert e.value.code == protocol.E_INVALID and "background" in e.value.message
    ok = client.call(protocol.Render(avatar_id=avatar_id, width=32, height=32), render_arrays(1, joints))
    assert ok.header["frames"] == 1


@pytest.mark.parametrize("op,arrays,words", [
    (protocol.Generate(prompt="x"), {"mask": np.zeros((4, 4), np.uint8)}, "mask"),
    (protocol.Generate(prompt="x"), {"image": np.zeros((4, 4, 3), np.float32)}, "image"),
    (protocol.GetAvatar(avatar_id="00ff00ff"), {"image": np.zeros((4, 4, 3), np.uint8)}, "image"),
])
def test_arrays_an_op_does_not_declare_are_refused_before_queueing(served, op, arrays, words):
    server, client, _, _ = served
    accepted = server.stats["accepted"]
    with pytest.raises(BridgeError) as e:
        client.call(op, arrays)
    assert e.value.code == protocol.E_BAD_ARRAY and words in e.value.message
    assert server.stats["accepted"] == accepted


def _free_port(family=socket.AF_INET, host="127.0.0.1") -> int:
    with socket.socket(family) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def test_an_ipv6_loopback_bind_serves_or_fails_cleanly():
    try:
        port = _free_port(socket.AF_INET6, "::1")
    except OSError:
        port = None
    if port is None:       # no IPv6 on this machine: the CLI must still say so without a traceback
        proc = subprocess.run([sys.executable, "-m", "backend.service.cli", "serve", "--bind", "tcp://[::1]:5599",
                               "--no-persist"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert proc.returncode == 2 and "Traceback" not in proc.stderr and "[::1]" in proc.stderr
        return
    server = BackendServer(f"tcp://[::1]:{port}", {})
    server.serve_in_thread()
    try:
        with BridgeClient(f"tcp://[::1]:{port}", timeout_s=10) as client:
            assert client.call(protocol.Ping(), timeout_s=10).kind == "result"
    finally:
        server.stop()
