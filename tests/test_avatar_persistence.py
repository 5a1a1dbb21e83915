"""Avatars outlive the backend: PersistentAvatarStore keeps them as files, and a new server on the same
folder serves the avatars of the old one (a Blender scene saved yesterday still renders today)."""
from __future__ import annotations

import os
import socket
import time

import numpy as np
import pytest

from backend.service.handlers import default_handlers
from backend.service.config import ServiceConfig
from backend.pipelines.store import PersistentAvatarStore, default_avatar_dir
from backend.service.server import BackendServer
from bridge.wire import protocol
from bridge.wire.client import BridgeClient, BridgeError

CONFIG = ServiceConfig(device="cpu")  # the model: $GENLCA_MODEL, a tiny random package (tests/conftest.py)


def _serve(folder, capacity: int = 4):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    store = PersistentAvatarStore(folder, capacity=capacity)
    server = BackendServer(address, default_handlers(store=store, config=CONFIG))
    server.serve_in_thread()
    return server, BridgeClient(address, timeout_s=60.0), store


def test_a_restarted_backend_serves_the_avatars_of_the_last_one(tmp_path):
    server, client, _ = _serve(tmp_path)
    try:
        avatar_id = client.call(protocol.Generate(prompt="kept", seed=2), timeout_s=60).header["avatar_id"]
        before = client.call(protocol.GetAvatar(avatar_id=avatar_id), timeout_s=30)
    finally:
        client.close()
        server.stop()
    assert (tmp_path / f"{avatar_id}.safetensors").is_file() and not list(tmp_path.glob("*.tmp"))

    server, client, store = _serve(tmp_path)
    try:
        assert avatar_id not in store                          # not in memory: read from its file
        after = client.call(protocol.GetAvatar(avatar_id=avatar_id), timeout_s=30)
        assert after.header["meta"] == before.header["meta"]
        for name, array in before.arrays.items():
            np.testing.assert_array_equal(after.arrays[name], array, err_msg=name)
        edited = client.call(protocol.Edit(avatar_id=avatar_id, prompt="x", region="head"), timeout_s=60)
        assert edited.header["meta"]["edited_from"] == avatar_id
    finally:
        client.close()
        server.stop()


def test_evicted_avatars_come_back_from_disk(tmp_path):
    server, client, store = _serve(tmp_path, capacity=1)
    try:
        ids = [client.call(protocol.Generate(prompt=f"p{i}"), timeout_s=60).header["avatar_id"] for i in range(3)]
        assert store.ids() == [ids[-1]]
        got = client.call(protocol.GetAvatar(avatar_id=ids[0]), timeout_s=30)
        assert got.header["avatar_id"] == ids[0] and store.ids() == [ids[0]]
    finally:
        client.close()
        server.stop()


def test_ids_never_reach_the_file_system_unless_the_service_made_them(tmp_path):
    (tmp_path / "outside.safetensors").write_bytes(b"secret")
    store = PersistentAvatarStore(tmp_path / "avatars")
    for bad in ("../outside", "/etc/passwd", "ABCDEF123456", "abc", "a" * 65, "", "abcdef/../x"):
        assert store.path(bad) is None and store.get(bad) is None
    with pytest.raises(ValueError, match="lowercase hex"):
        store.put("../outside", object())


def test_a_damaged_file_is_reported_missing_and_the_server_keeps_serving(tmp_path):
    server, client, store = _serve(tmp_path)
    try:
        avatar_id = client.call(protocol.Generate(prompt="d"), timeout_s=60).header["avatar_id"]
        store.pop(avatar_id)                                   # forget it in memory and on disk ...
        (tmp_path / f"{avatar_id}.safetensors").write_bytes(b"\x00" * 100)   # ... and leave garbage instead
        with pytest.raises(BridgeError) as info:
            client.call(protocol.GetAvatar(avatar_id=avatar_id), timeout_s=30)
        assert info.value.code == protocol.E_NOT_FOUND and avatar_id in info.value.message
        assert client.call(protocol.Ping(), timeout_s=10).kind == "result"
    finally:
        client.close()
        server.stop()


def test_the_folder_keeps_at_most_max_files_dropping_the_least_recently_used(tmp_path):
    from backend.service.handlers import AvatarService

    service = AvatarService(PersistentAvatarStore(tmp_path, capacity=8, max_files=2), CONFIG)

    class Ctx:
        def progress(self, *a, **k): pass
        def check_cancelled(self): pass

    ids = []
    for i in range(3):
        header, _ = service.generate(protocol.Generate(prompt=f"m{i}"), {}, Ctx())
        ids.append(header["avatar_id"])
        time.sleep(0.02)                                        # distinct modification times
        os.utime(tmp_path / f"{ids[-1]}.safetensors", (time.time() + i, time.time() + i))
    assert sorted(p.stem for p in tmp_path.glob("*.safetensors")) == sorted(ids[1:])


def test_default_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("GENLCA_AVATAR_DIR", str(tmp_path / "a"))
    assert default_avatar_dir() == tmp_path / "a"
    monkeypatch.delenv("GENLCA_AVATAR_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "c"))
    assert default_avatar_dir() == tmp_path / "c" / "genlca" / "avatars"


def _generated(tmp_path, prompt: str = "v"):
    from backend.service.handlers import AvatarService

    class Ctx:
        def progress(self, *a, **k): pass
        def check_cancelled(self): pass

    store = PersistentAvatarStore(tmp_path, capacity=4)
    service = AvatarService(store, CONFIG)
    header, _ = service.generate(protocol.Generate(prompt=prompt), {}, Ctx())
    return service, store, header["avatar_id"], Ctx()


def _write_unchecked(path, record) -> None:
    """An avatar file written around save_avatar's own checks (as a damaged or hostile file would be)."""
    import json

    import torch
    from safetensors.torch import save_file

    tensors = record.gaussians.state_dict(prefix="gaussians.")
    tensors.update({f"skeleton.{k}": torch.from_numpy(np.ascontiguousarray(getattr(record, k)))
                    for k in ("joint_parents", "rest_matrices", "joint_tails")})
    save_file(tensors, str(path), metadata={"format": "genlca-avatar", "version": "1",
                                            "joint_names": json.dumps(record.joint_names), "meta": "{}"})


@pytest.mark.parametrize("damage", ["skin_index_out_of_range", "nan_means", "shape_mismatch", "bad_parent"])
def test_inconsistent_avatar_files_are_refused_on_load(tmp_path, damage):
    from backend.avatar.avatar_file import load_avatar
    from backend.service.queue import HandlerError

    service, store, avatar_id, ctx = _generated(tmp_path)
    path = tmp_path / f"{avatar_id}.safetensors"
    record = load_avatar(path)
    g = record.gaussians
    if damage == "skin_index_out_of_range":
        g.skin_indices[0, 0] = 30000
    elif damage == "nan_means":
        g.means[3, 1] = float("nan")
    elif damage == "shape_mismatch":
        g.opacity_logits = g.opacity_logits[:-1]
    else:
        record.joint_parents[2] = len(record.joint_names) + 5
    store.pop(avatar_id)
    _write_unchecked(path, record)
    with pytest.raises(ValueError):
        load_avatar(path)
    with pytest.raises(HandlerError) as e:     # the service says not_found, never internal
        service.get_avatar(protocol.GetAvatar(avatar_id=avatar_id), {}, ctx)
    assert e.value.code == protocol.E_NOT_FOUND


def test_symlinks_out_of_the_folder_dangling_entries_and_leftover_temp_files(tmp_path):
    folder = tmp_path / "avatars"
    service, store, avatar_id, ctx = _generated(folder)
    outside = tmp_path / "elsewhere.safetensors"
    (folder / f"{avatar_id}.safetensors").rename(outside)
    store.pop(avatar_id)
    (folder / f"{avatar_id}.safetensors").symlink_to(outside)           # a valid avatar file, but outside
    assert store.get(avatar_id) is None
    (folder / "deadbeef00.safetensors").symlink_to(tmp_path / "missing.safetensors")   # dangling
    header, _ = service.generate(protocol.Generate(prompt="after"), {}, ctx)           # still works
    assert store.get(header["avatar_id"]) is not None and store.get("deadbeef00") is None
    leftover = folder / ".0123456789ab.safetensors.123.tmp"
    leftover.write_bytes(b"half a file")
    PersistentAvatarStore(folder)
    assert not leftover.exists() and (folder / f"{header['avatar_id']}.safetensors").is_file()
