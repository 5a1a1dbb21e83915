"""backend.service.server + bridge.wire.client over real sockets on 127.0.0.1: every message type, big payloads,
progress order, cancellation, vanished clients, concurrency, queue limits and handler failures."""
from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pytest
import zmq

from backend.service.queue import HandlerError
from backend.pipelines.store import AvatarStore
from backend.service.server import BackendServer
from bridge.wire import protocol
from bridge.wire.client import BridgeClient, BridgeError
from bridge.wire.codec import check_arrays, decode, encode, request_header
from tests.placeholder_pipeline import placeholder_handlers


@dataclasses.dataclass
class Echo(protocol.Request):
    """Test-only op: sends its arrays back; `fail` picks a failure, `busy_s` works without progress."""

    op = "echo"
    fail: str = ""
    busy_s: float = 0.0


def echo(request, arrays, ctx):
    if request.fail == "handler":
        raise HandlerError(protocol.E_NOT_FOUND, "no such thing as 'x'")
    if request.fail == "internal":
        raise ZeroDivisionError("division by zero in the test handler")
    end = time.monotonic() + request.busy_s
    while time.monotonic() < end:
        np.linalg.norm(np.ones(10000))
        ctx.check_cancelled()
    return {"count": len(arrays), "names": sorted(arrays)}, dict(arrays)


def start_server(**kw) -> BackendServer:
    store = kw.pop("store", None) or AvatarStore()
    handlers = {**placeholder_handlers(store), "echo": echo}
    server = BackendServer("tcp://127.0.0.1:*", handlers, request_types={"echo": Echo}, **kw)
    server.serve_in_thread()
    return server


@pytest.fixture
def server():
    s = start_server(heartbeat_s=0.2)
    yield s
    s.stop()


@pytest.fixture
def client(server):
    c = BridgeClient(server.address, timeout_s=5.0, heartbeat_s=0.2)
    yield c
    c.close()


def collect(client: BridgeClient, rid: str, timeout_s: float = 120.0) -> list:
    """Every reply for `rid` up to and including its result or error (the timeout is a safety net for a
    hung server, not a latency promise: latency is the benchmarks' business)."""
    out, end = [], time.monotonic() + timeout_s
    while time.monotonic() < end:
        for reply in client.poll(50):
            if reply.id == rid:
                out.append(reply)
                if reply.done:
                    return out
    raise AssertionError(f"no final reply for {rid} within {timeout_s} s; got {[r.kind for r in out]}")


def wait_until(predicate, timeout_s: float) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(0.01)
    return time.monotonic() - start


def test_round_trip_of_every_message_type(server, client):
    hello = client.call(protocol.Hello(client="pytest"))
    assert hello.kind == "result" and hello.header["protocol"] == protocol.PROTOCOL_VERSION
    assert set(hello.header["capabilities"]) == {"hello", "ping", "cancel", "generate", "get_avatar", "echo"}
    assert hello.header["limits"]["queue_size"] == 16 and client.connected
    assert client.call(protocol.Ping()).header["time"] > 0

    replies = collect(client, client.submit(protocol.Generate(prompt="a sailor", seed=7, steps=3)))
    assert [r.kind for r in replies] == ["accepted", "progress", "progress", "progress", "result"]
    assert replies[-1].header["meta"]["generator"] == "placeholder-random"
    avatar_id = replies[-1].header["avatar_id"]

    avatar = client.call(protocol.GetAvatar(avatar_id=avatar_id))
    dims = check_arrays(avatar.arrays, protocol.AVATAR_ARRAYS)
    assert dims == {"N": 20000, "S": 16, "k": 1, "J": 1} and avatar.header["joint_names"] == ["root"]
    assert np.isfinite(avatar.arrays["means"]).all()
    again = client.call(protocol.GetAvatar(avatar_id=avatar_id))   # deterministic and stable
    assert again.arrays["means"].tobytes() == avatar.arrays["means"].tobytes()

    with pytest.raises(BridgeError) as e:
        client.call(protocol.GetAvatar(avatar_id="nope"))
    assert e.value.code == protocol.E_NOT_FOUND and "'nope'" in e.value.message
    for op_request in (protocol.Render(avatar_id=avatar_id), protocol.Export(avatar_id=avatar_id),
                       protocol.Edit(avatar_id=avatar_id)):
        with pytest.raises(BridgeError) as e:
            client.call(op_request)
        assert e.value.code == protocol.E_UNKNOWN_OP and repr(op_request.op) in e.value.message
    cancel = client.call(protocol.Cancel(id="c-1", target="nothing"))
    assert cancel.header["found"] is False and cancel.id == "c-1"


def test_heartbeats_keep_a_silent_job_alive_past_the_client_timeout(server):
    with BridgeClient(server.address, timeout_s=0.6, heartbeat_s=0.2) as client:
        start = time.monotonic()
        reply = client.call(Echo(busy_s=1.5), {"x": np.arange(3)})
        assert time.monotonic() - start >= 1.5 and reply.header["count"] == 1
    raw = zmq.Context.instance().socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(server.address)
    try:
        raw.send_multipart(encode(request_header(Echo(id="hb", busy_s=0.7))))
        kinds = []
        while not kinds or kinds[-1] not in ("result", "error"):
            assert raw.poll(3000)
            header, _ = decode(raw.recv_multipart())
            kinds.append(header["kind"])
            if header["kind"] == "heartbeat":
                assert header["jobs"] == ["hb"] and header["id"] == ""
        assert kinds[0] == "accepted" and kinds[-1] == "result" and kinds.count("heartbeat") >= 2
    finally:
        raw.close(0)


def gaussian_payload(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """n Gaussians at ~65 float32-equivalents each (the get_avatar layout, top-8 skin weights)."""
    rng = np.random.default_rng(seed)
    f4 = lambda *shape: rng.standard_normal((n, *shape), dtype=np.float32)  # noqa: E731
    return {"means": f4(3), "rotations": f4(4), "log_scales": f4(3), "opacity_logits": f4(),
            "sh": f4(16, 3), "skin_indices": rng.integers(0, 104, (n, 8), dtype=np.uint16),
            "skin_weights": f4(8)}


def test_a_100k_gaussian_payload_arrives_bit_exact(server, client):
    payload = gaussian_payload(100_000)
    assert sum(a.nbytes for a in payload.values()) > 100_000 * 60 * 4
    reply = client.call(Echo(), payload, timeout_s=30)
    assert reply.header["names"] == sorted(payload)
    for name, array in payload.items():
        got = reply.arrays[name]
        assert got.dtype == array.dtype and got.shape == array.shape
        assert got.tobytes() == array.tobytes(), name


def test_progress_arrives_in_order_between_accepted_and_result(server, client):
    replies = collect(client, client.submit(protocol.Generate(steps=60)))
    assert replies[0].kind == "accepted" and replies[-1].kind == "result"
    assert [(r.stage, r.step, r.total) for r in replies[1:-1]] == [("relax", i, 60) for i in range(1, 61)]


def test_cancel_stops_a_running_job_at_its_next_progress(server, client):
    rid = client.submit(protocol.Generate(steps=200_000))   # ~20 min of work if never cancelled
    replies = []
    while not any(r.kind == "progress" for r in replies):
        replies += client.poll(50)
    start = time.monotonic()
    client.cancel(rid)
    final = None
    while final is None and time.monotonic() - start < 60:      # a safety net, not a latency promise
        final = next((r for r in client.poll(20) if r.id == rid and r.done), None)
    assert final is not None and final.kind == "error" and final.code == protocol.E_CANCELLED
    wait_until(lambda: server.active_jobs() == [], 60.0)
    assert client.call(protocol.Generate(steps=1)).header["avatar_id"]  # the worker is free again


def test_a_queued_job_is_dropped_at_once_and_a_full_queue_says_so():
    server = start_server(queue_size=1, heartbeat_s=0.2)
    try:
        with BridgeClient(server.address, timeout_s=5) as client:
            running = client.submit(protocol.Generate(steps=200_000))
            while not any(r.kind == "progress" for r in client.poll(50)):
                pass
            queued = client.submit(protocol.Generate(steps=1))
            refused = collect(client, client.submit(protocol.Generate(steps=1)))
            assert refused[-1].code == protocol.E_QUEUE_FULL and "1 jobs" in refused[-1].message
            client.cancel(queued)
            assert collect(client, queued)[-1].code == protocol.E_CANCELLED
            assert queued not in server.active_jobs()  # dropped from the queue, not run first
            client.cancel(running)
            assert collect(client, running)[-1].code == protocol.E_CANCELLED
    finally:
        server.stop()


def test_a_client_that_vanishes_mid_job_does_not_leak_the_job(server):
    client = BridgeClient(server.address, timeout_s=5)
    client.submit(protocol.Generate(steps=200_000))
    while not any(r.kind == "progress" for r in client.poll(50)):
        pass
    assert len(server.active_jobs()) == 1
    client.close()                       # gone without cancelling
    wait_until(lambda: server.active_jobs() == [], 60.0)  # a safety net: the job ends when the client is gone
    assert server.stats["clients_gone"] == 1
    with BridgeClient(server.address, timeout_s=5) as other:   # and the worker is free
        assert other.call(protocol.Generate(steps=1), timeout_s=5).header["avatar_id"]


def test_handler_errors_and_crashes_become_error_replies_and_the_server_lives_on(server, client):
    with pytest.raises(BridgeError) as e:
        client.call(Echo(fail="handler"))
    assert (e.value.code, e.value.message) == (protocol.E_NOT_FOUND, "no such thing as 'x'")
    with pytest.raises(BridgeError) as e:
        client.call(Echo(fail="internal"))
    assert e.value.code == protocol.E_INTERNAL and "ZeroDivisionError: division by zero in the test" in e.value.message
    with pytest.raises(BridgeError) as e:
        client.call(protocol.Generate(steps=0))
    assert e.value.code == protocol.E_INVALID and "steps" in e.value.message
    with pytest.raises(BridgeError) as e:
        client.call(protocol.Generate(steps=1), {"image": np.zeros((4, 4), np.uint8)})
    assert e.value.code == protocol.E_BAD_ARRAY and "'image'" in e.value.message
    client.submit(Echo(id="dup", busy_s=0.5))
    duplicate = client.submit(Echo(id="dup"))
    replies = collect(client, duplicate)
    assert replies[-1].code == protocol.E_INVALID and "'dup' is already in flight" in replies[-1].message
    assert client.call(protocol.Ping()).kind == "result"


def test_eight_concurrent_clients_each_get_their_own_replies():
    server = start_server(queue_size=256, heartbeat_s=0.2)
    results: dict[int, dict[str, list]] = {}
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            with BridgeClient(server.address, timeout_s=20) as client:
                sent: dict[str, str] = {}
                for i in range(25):
                    kind = ("ping", "generate", "get_avatar", "echo")[i % 4]
                    request = {"ping": protocol.Ping(), "generate": protocol.Generate(seed=index, steps=2),
                               "get_avatar": protocol.GetAvatar(avatar_id=f"missing-{index}-{i}"),
                               "echo": Echo()}[kind]
                    arrays = {"tag": np.array([index, i], np.int32)} if kind == "echo" else None
                    sent[client.submit(request, arrays)] = kind
                got: dict[str, list] = {rid: [] for rid in sent}
                end = time.monotonic() + 30
                while any(not r or not r[-1].done for r in got.values()) and time.monotonic() < end:
                    for reply in client.poll(50):
                        assert reply.id in got, f"client {index} got a reply for {reply.id} it never sent"
                        got[reply.id].append(reply)
                for rid, kind in sent.items():
                    final = got[rid][-1]
                    if kind == "get_avatar":
                        assert final.code == protocol.E_NOT_FOUND and f"missing-{index}" in final.message
                    else:
                        assert final.kind == "result", (kind, final.header)
                    if kind == "echo":
                        assert final.arrays["tag"][0] == index
                    if kind == "generate":
                        assert final.header["meta"]["seed"] == index
                results[index] = got
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)

    try:
        threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors[0]
        assert len(results) == 8 and all(len(r) == 25 for r in results.values())
        assert server.stats["accepted"] == 8 * 25 - 8 * 7  # ping and cancel are answered without a job
    finally:
        server.stop()


def test_client_timeout_and_lazy_pirate_reconnect_against_a_silent_router():
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    client = BridgeClient(f"tcp://127.0.0.1:{port}", timeout_s=0.5, heartbeat_s=0.1)
    try:
        start = time.monotonic()
        rid = client.submit(protocol.Ping())
        replies = []
        while not replies:
            replies = client.poll(0)
        elapsed = time.monotonic() - start
        assert replies[0].id == rid and replies[0].code == protocol.E_TIMEOUT and "0.5 s" in replies[0].message
        assert elapsed >= 0.5 and not client.connected     # never early (how late is the benchmarks' business)
        assert client.poll(80) == []
        first_identity = router.recv_multipart(zmq.NOBLOCK)[0]
        # the server comes back: answer the next request by hand
        rid = client.submit(protocol.Hello())
        while True:
            assert router.poll(2000)
            identity, *frames = router.recv_multipart()
            header, _ = decode(frames)
            if header["id"] == rid:
                break
        assert identity != first_identity   # a new socket after the timeout
        router.send_multipart([identity, *encode({"v": 1, "id": rid, "kind": "result", "protocol": 1})])
        reply = None
        while reply is None:
            reply = next((r for r in client.poll(50) if r.id == rid), None)
        assert reply.kind == "result" and client.connected
    finally:
        client.close()
        router.close(0)
