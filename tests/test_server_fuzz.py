"""5,000 malformed messages on a real socket: each gets exactly one structured `error` reply, and the
server still answers a valid ping afterwards.

Every message here reaches the server with a ROUTER identity, so every one is answered (none is
dropped); the reply carries the message's id when its header could be read that far, else "". The one
case without a reply is a single frame above max_message_bytes: libzmq (MAXMSGSIZE) drops that
connection before the server sees the message (tested at the end).
"""
from __future__ import annotations


import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.service.server import BackendServer
from bridge.wire import protocol
from bridge.wire.codec import decode, encode, request_header
from tests.placeholder_pipeline import placeholder_handlers

LIMIT = 1 << 20


@pytest.fixture(scope="module")
def server():
    s = BackendServer("tcp://127.0.0.1:*", placeholder_handlers(), max_message_bytes=LIMIT, heartbeat_s=0.5)
    s.serve_in_thread()
    yield s
    s.stop()


@pytest.fixture
def dealer(server):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.address)
    yield sock
    sock.close(0)


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def malformed(i: int, rng: np.random.Generator) -> tuple[list[bytes], str]:
    """Message number i (deterministic) and the id its error reply must carry ("" when unreadable)."""
    rid = f"fuzz-{i}"
    ok = {"v": 1, "id": rid, "op": "generate"}
    spec = {"name": "image", "dtype": "|u1", "shape": [2, 2, 3]}
    kind = i % 16
    if kind == 0:
        return [rng.bytes(int(rng.integers(0, 64)))], ""
    if kind == 1:
        return [rng.bytes(int(rng.integers(1, 32))) for _ in range(int(rng.integers(2, 5)))], ""
    if kind == 2:
        return [pack([1, rid]) if i % 3 else pack(rid) if i % 2 else pack(int(rng.integers(-9, 9)))], ""
    if kind == 3:
        return [pack({"id": rid, "op": "ping"})], rid
    if kind == 4:
        return [pack({**ok, "v": int(rng.integers(2, 1000))})], rid
    if kind == 5:
        return [pack({**ok, "op": f"op{int(rng.integers(1e6))}"})], rid
    if kind == 6:
        dtype = ["<c8", ">f4", "O", "<U4", "f4", "<f16", "", 7][int(rng.integers(8))]
        return [pack({**ok, "arrays": [{**spec, "dtype": dtype}]}), b"\0" * 12], rid
    if kind == 7:
        shape = [[-1, 2, 3], [2.0, 2, 3], "2,2,3", [True, 2], [2] * 40, None][int(rng.integers(6))]
        return [pack({**ok, "arrays": [{**spec, "shape": shape}]}), b"\0" * 12], rid
    if kind == 8:
        return [pack({**ok, "arrays": [spec]}), b"\0" * int(rng.choice([0, 11, 13, 1000]))], rid
    if kind == 9:
        extra = int(rng.integers(0, 3))
        specs = [spec] if extra == 0 else []            # 1 spec and 2 frames, or 0 specs and 1-3 frames
        return [pack({**ok, "arrays": specs})] + [b"\0" * 12] * (2 if extra == 0 else extra + 1), rid
    if kind == 10:
        field, value = [("steps", "ten"), ("seed", 1.5), ("prompt", 5), ("guidance", None), ("steps", True)][i % 5]
        return [pack({**ok, field: value})], rid
    if kind == 11:
        if i % 160 == 11:  # a few oversize messages: total above the limit, every frame below it
            half = LIMIT // 2 + 8
            specs = [{"name": name, "dtype": "|u1", "shape": [half]} for name in ("a", "b")]
            return [pack({**ok, "arrays": specs}), b"\0" * half, b"\0" * half], rid
        return [pack({**ok, "steps": 0})], rid   # valid message, rejected by the handler... after a job
    if kind == 12:
        return [pack({"v": 1, "id": "", "op": "ping"})], ""
    if kind == 13:
        return [pack({"v": 1, "id": rid, "kind": "result"})], rid
    if kind == 14:
        return [pack({**ok, "unknown_field": 1})], rid
    # kind 15: msgpack the codec refuses: ext types, non-str keys, duplicate arrays, arrays for ping
    variant = i % 4
    if variant == 0:
        return [msgpack.packb({**ok, "x": msgpack.ExtType(3, b"zz")})], rid
    if variant == 1:
        return [msgpack.packb({**ok, 7: 1})], ""
    if variant == 2:
        return [pack({**ok, "arrays": [spec, spec]}), b"\0" * 12, b"\0" * 12], rid
    return [pack({"v": 1, "id": rid, "op": "ping", "arrays": [spec]}), b"\0" * 12], rid


def test_five_thousand_malformed_messages_each_get_a_structured_error(server, dealer):
    rng = np.random.default_rng(1234)
    total, codes = 5000, {}
    expected_ids: list[str] = []
    handler_jobs = 0
    received: list[dict] = []
    batch = 250
    for first in range(0, total, batch):
        for i in range(first, first + batch):
            frames, rid = malformed(i, rng)
            if i % 16 == 11 and i % 160 != 11:
                handler_jobs += 1      # valid request, the handler refuses steps=0: accepted + error
            expected_ids.append(rid)
            dealer.send_multipart(frames)
        want = len(expected_ids) + handler_jobs
        while len(received) < want:
            assert dealer.poll(5000), f"only {len(received)} of {want} replies"
            header, _ = decode(dealer.recv_multipart())
            if header["kind"] == "heartbeat":
                continue
            received.append(header)
    errors = [h for h in received if h["kind"] == "error"]
    assert len(errors) == total and len(received) == total + handler_jobs
    assert all(h["kind"] in ("error", "accepted") for h in received)
    for h in errors:
        assert h["code"] in protocol.ERROR_CODES and isinstance(h["message"], str) and h["message"]
        codes[h["code"]] = codes.get(h["code"], 0) + 1
    # every id that could be read comes back, each exactly once per message
    want_ids = sorted(r for r in expected_ids if r)
    got_ids = sorted(h["id"] for h in errors if h["id"])
    assert got_ids == want_ids
    assert {protocol.E_BAD_MESSAGE, protocol.E_BAD_VERSION, protocol.E_UNKNOWN_OP, protocol.E_BAD_ARRAY,
            protocol.E_INVALID, protocol.E_TOO_LARGE} <= set(codes)
    dealer.send_multipart(encode(request_header(protocol.Ping(id="after"))))
    assert dealer.poll(2000)
    header, _ = decode(dealer.recv_multipart())
    assert header["id"] == "after" and header["kind"] == "result"


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=40), min_size=1, max_size=4))
def test_arbitrary_frame_lists_get_one_reply_each(server, frames):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.address)
    try:
        sock.send_multipart(frames)
        assert sock.poll(2000)
        header, _ = decode(sock.recv_multipart())
        assert header["kind"] in ("error", "result", "accepted")
        if header["kind"] == "error":
            assert header["code"] in protocol.ERROR_CODES
    finally:
        sock.close(0)


def test_a_frame_above_the_limit_drops_that_connection_only(server, dealer):
    dealer.send_multipart([pack({"v": 1, "id": "big", "op": "generate", "arrays": [
        {"name": "image", "dtype": "|u1", "shape": [LIMIT + 1]}]}), b"\0" * (LIMIT + 1)])
    assert not dealer.poll(300)
    other = zmq.Context.instance().socket(zmq.DEALER)
    other.setsockopt(zmq.LINGER, 0)
    other.connect(server.address)
    try:
        other.send_multipart(encode(request_header(protocol.Ping(id="p"))))
        assert other.poll(2000)
        assert decode(other.recv_multipart())[0]["id"] == "p"
    finally:
        other.close(0)
