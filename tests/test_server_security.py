"""Binding rules, CURVE encryption and the `genlca-backend` command line, on real sockets."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import zmq

from backend.service.cli import main as cli_main
from backend.service.server import BackendServer, is_loopback
from bridge.wire import protocol
from bridge.wire.client import BridgeClient, BridgeError
from tests.placeholder_pipeline import placeholder_handlers

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("address,loopback", [
    ("tcp://127.0.0.1:5555", True), ("tcp://127.3.2.1:1", True), ("tcp://localhost:5555", True),
    ("tcp://[::1]:5555", True), ("ipc:///tmp/genlca", True), ("inproc://x", True),
    ("tcp://0.0.0.0:5555", False), ("tcp://*:5555", False), ("tcp://192.168.1.4:5555", False),
    ("tcp://eth0:5555", False), ("tcp://[::]:5555", False), ("udp://127.0.0.1:1", False),
])
def test_loopback_addresses(address, loopback):
    assert is_loopback(address) is loopback


def test_a_non_loopback_bind_without_keys_is_refused():
    address = f"tcp://0.0.0.0:{free_port()}"
    with pytest.raises(PermissionError) as e:
        BackendServer(address, placeholder_handlers())
    assert address in str(e.value) and "CURVE" in str(e.value) and "genlca-backend keys" in str(e.value)
    with pytest.raises(FileNotFoundError) as e:
        BackendServer(address, placeholder_handlers(), keys_dir="/nonexistent/keys")
    assert "server.key_secret" in str(e.value)


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    assert cli_main(["keys", "--keys-dir", str(folder)]) == 0
    assert (folder / "server.key").is_file() and (folder / "server.key_secret").is_file()
    assert oct((folder / "server.key_secret").stat().st_mode)[-3:] == "600"
    return folder


def test_curve_only_a_client_with_the_server_key_is_answered(keys_dir):
    port = free_port()
    server = BackendServer(f"tcp://0.0.0.0:{port}", placeholder_handlers(), keys_dir=keys_dir)
    server.serve_in_thread()
    address = f"tcp://127.0.0.1:{port}"
    try:
        with BridgeClient(address, server_public_key=keys_dir / "server.key", timeout_s=3) as good:
            hello = good.call(protocol.Hello())
            assert hello.header["curve"] is True
        public = zmq.auth.load_certificate(str(keys_dir / "server.key"))[0]
        with BridgeClient(address, server_public_key=public.decode(), timeout_s=3) as good_z85:
            assert good_z85.call(protocol.Ping()).kind == "result"
        wrong = zmq.curve_keypair()[0]
        for key in (None, wrong):
            with BridgeClient(address, server_public_key=key, timeout_s=0.5) as bad:
                with pytest.raises(BridgeError) as e:
                    bad.call(protocol.Ping())
                assert e.value.code == protocol.E_TIMEOUT
        assert server.stats["received"] == 2   # the refused clients' messages never reached the server
    finally:
        server.stop()


def test_curve_with_an_authorized_clients_folder(keys_dir, tmp_path):
    (tmp_path / "authorized_clients").mkdir()
    for name in ("server.key", "server.key_secret"):
        (tmp_path / name).write_bytes((keys_dir / name).read_bytes())
    with pytest.raises(ValueError, match="holds no client key"):   # a list that would refuse everyone
        BackendServer("tcp://127.0.0.1:*", placeholder_handlers(), keys_dir=tmp_path)
    listed_public, listed_secret = zmq.curve_keypair()
    assert cli_main(["keys", "--keys-dir", str(tmp_path), "--add-client", "listed",
                     f"--public-key={listed_public.decode()}"]) == 0
    server = BackendServer("tcp://127.0.0.1:*", placeholder_handlers(), keys_dir=tmp_path)
    server.serve_in_thread()
    try:
        with BridgeClient(server.address, server_public_key=tmp_path / "server.key", timeout_s=0.5) as stranger:
            with pytest.raises(BridgeError):
                stranger.call(protocol.Ping())   # its on-the-fly key is not in authorized_clients
        assert server.stats["received"] == 0
        with BridgeClient(server.address, server_public_key=tmp_path / "server.key", client_public_key=listed_public,
                          client_secret_key=listed_secret, timeout_s=5) as listed:
            assert listed.call(protocol.Ping()).kind == "result"
    finally:
        server.stop()


def test_cli_serve_answers_and_stops_cleanly_on_sigterm(tmp_path):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    refused = subprocess.run([sys.executable, "-m", "backend.service.cli", "serve", "--bind", f"tcp://0.0.0.0:{port}",
                              "--no-persist"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "CURVE" in refused.stderr
    proc = subprocess.Popen([sys.executable, "-m", "backend.service.cli", "serve", "--bind", f"tcp://127.0.0.1:{port}",
                             "--queue-size", "4", "--max-message-mb", "64", "--avatar-dir", str(tmp_path / "avatars")],
                            cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with BridgeClient(f"tcp://127.0.0.1:{port}", timeout_s=120) as client:
            hello = client.call(protocol.Hello(), timeout_s=120)
        assert hello.header["limits"] == {"max_message_bytes": 64 << 20, "queue_size": 4, "heartbeat_s": 1.0,
                                          "client_timeout_s": 30.0, "max_queued_bytes": 2048 << 20,
                                          "max_client_jobs": 8, "send_hwm": 256, "max_unread_reply_bytes": 64 << 20,
                                          "max_inbound_bytes": 512 << 20}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        out = proc.stdout.read()
        assert "serving" in out and str(tmp_path / "avatars") in out
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_persistent_client_keypair_is_private_reused_and_never_written_through_a_symlink(tmp_path):
    from bridge.wire.keys import check_z85_key, load_or_create_client_keypair

    folder = tmp_path / "client"
    public, secret = load_or_create_client_keypair(folder)
    assert zmq.curve_public(secret) == public and check_z85_key(public) == public
    assert oct((folder / "client.key_secret").stat().st_mode)[-3:] == "600"
    assert zmq.auth.load_certificate(str(folder / "client.key_secret")) == (public, secret)
    assert zmq.auth.load_certificate(str(folder / "client.key"))[0] == public
    assert load_or_create_client_keypair(folder) == (public, secret)        # the same pair next time
    assert not list(folder.glob(".*.tmp"))
    other = tmp_path / "other"
    other.mkdir()
    (other / "client.key_secret").symlink_to(tmp_path / "planted")
    with pytest.raises(ValueError, match="symlink"):
        load_or_create_client_keypair(other)
    assert not (tmp_path / "planted").exists()
    for bad in ("short", "x" * 41, public.decode()[:-1] + "~"):
        with pytest.raises(ValueError):
            check_z85_key(bad)
    with pytest.raises(ValueError, match="both"):
        BridgeClient("tcp://127.0.0.1:1", server_public_key=public, client_public_key=public)
    with pytest.raises(ValueError, match="belong"):
        BridgeClient("tcp://127.0.0.1:1", server_public_key=public, client_public_key=zmq.curve_keypair()[0],
                     client_secret_key=secret)
