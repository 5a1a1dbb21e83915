"""Bridge throughput: rigged-Gaussian payloads through the real service vs pickle over REQ/REP.

    python -m benchmarks.bridge                  # 100k and 1M Gaussians, median of 5 after a warm-up
    python -m benchmarks.bridge --gaussians 100000 --repeats 3

Payload per Gaussian: 59 float32 (means 3, rotations 4, log_scales 3, opacity 1, SH 16x3) plus top-8 skin
weights (8 uint16 + 8 float32): 284 bytes, as get_avatar sends them.

"bridge": BridgeClient.call(Echo) through BackendServer on tcp://127.0.0.1 (ROUTER, job queue, worker
thread, inproc hop back to the I/O thread); the echo handler returns the received arrays unchanged.
"pickle": a REQ/REP pair on tcp://127.0.0.1; the client pickles the dict of arrays, the server unpickles
it, pickles it again and sends it back, the client unpickles (the usual "just pickle it" bridge).
"raw": the same arrays as bare zero-copy frames between two DEALER sockets of one context (a reference
for libzmq alone; it has one I/O thread where client and server have one each).
Throughput counts the payload twice (sent + received) over the median round-trip time.
"""
from __future__ import annotations

import argparse
import dataclasses
import pickle
import platform
import statistics
import threading
import time

import numpy as np
import zmq

from bridge import protocol


@dataclasses.dataclass
class Echo(protocol.Request):
    """Benchmark-only op: the arrays come back as they went."""

    op = "echo"


def echo(request, arrays, ctx):
    return {"count": len(arrays)}, dict(arrays)


def payload(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    f4 = lambda *shape: rng.standard_normal((n, *shape), dtype=np.float32)  # noqa: E731
    return {"means": f4(3), "rotations": f4(4), "log_scales": f4(3), "opacity_logits": f4(),
            "sh": f4(16, 3), "skin_indices": rng.integers(0, 104, (n, 8), dtype=np.uint16), "skin_weights": f4(8)}


def time_bridge(arrays: dict[str, np.ndarray], repeats: int) -> list[float]:
    from backend.server import BackendServer
    from bridge.client import BridgeClient

    server = BackendServer("tcp://127.0.0.1:*", {"echo": echo}, request_types={"echo": Echo})
    server.serve_in_thread()
    times = []
    try:
        with BridgeClient(server.address, timeout_s=60) as client:
            for i in range(repeats + 1):
                start = time.perf_counter()
                reply = client.call(Echo(), arrays, timeout_s=120)
                elapsed = time.perf_counter() - start
                if i == 0:  # warm-up; check the data once
                    assert all(np.array_equal(reply.arrays[k], v) for k, v in arrays.items())
                else:
                    times.append(elapsed)
                del reply
    finally:
        server.stop()
    return times


def time_pickle(arrays: dict[str, np.ndarray], repeats: int) -> list[float]:
    ctx = zmq.Context()
    rep = ctx.socket(zmq.REP)
    rep.setsockopt(zmq.LINGER, 0)
    port = rep.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            if rep.poll(100):
                rep.send(pickle.dumps(pickle.loads(rep.recv())))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(f"tcp://127.0.0.1:{port}")
    times = []
    try:
        for i in range(repeats + 1):
            start = time.perf_counter()
            req.send(pickle.dumps(arrays))
            back = pickle.loads(req.recv())
            elapsed = time.perf_counter() - start
            if i == 0:
                assert all(np.array_equal(back[k], v) for k, v in arrays.items())
            else:
                times.append(elapsed)
            del back
    finally:
        stop.set()
        thread.join(2)
        req.close(0)
        rep.close(0)
        ctx.term()
    return times


def time_raw(arrays: dict[str, np.ndarray], repeats: int) -> list[float]:
    """Reference: raw zero-copy frames DEALER -> DEALER and back, no header, no checks, no threads."""
    ctx = zmq.Context()
    a, b = ctx.socket(zmq.DEALER), ctx.socket(zmq.DEALER)
    for sock in (a, b):
        sock.setsockopt(zmq.LINGER, 0)
    b.connect(f"tcp://127.0.0.1:{a.bind_to_random_port('tcp://127.0.0.1')}")
    frames = [memoryview(v.reshape(-1).view(np.uint8)) for v in arrays.values()]

    def serve() -> None:
        for _ in range(repeats + 1):
            b.send_multipart(b.recv_multipart(copy=False), copy=False)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    times = []
    try:
        for i in range(repeats + 1):
            start = time.perf_counter()
            a.send_multipart(frames, copy=False)
            back = a.recv_multipart(copy=False)
            if i:
                times.append(time.perf_counter() - start)
            del back
        thread.join(5)
    finally:
        a.close(0)
        b.close(0)
        ctx.term()
    return times


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gaussians", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    print(f"bridge benchmark: Python {platform.python_version()}, pyzmq {zmq.__version__} (libzmq "
          f"{zmq.zmq_version()}), {platform.machine()}, median of {args.repeats} round trips after a warm-up")
    print("| Gaussians | payload | bridge round trip | bridge GB/s | pickle REQ/REP round trip | pickle GB/s "
          "| bridge speed-up | raw zero-copy pyzmq (reference) |")
    print("|---|---|---|---|---|---|---|---|")
    for n in args.gaussians:
        arrays = payload(n)
        size = sum(a.nbytes for a in arrays.values())
        bridge = statistics.median(time_bridge(arrays, args.repeats))
        baseline = statistics.median(time_pickle(arrays, args.repeats))
        raw = statistics.median(time_raw(arrays, args.repeats))
        def gbps(t: float, size: int = size) -> float:  # sent + received
            return 2 * size / t / 1e9

        print(f"| {n:,} | {size / 1e6:.1f} MB | {bridge * 1e3:.1f} ms | {gbps(bridge):.2f} | "
              f"{baseline * 1e3:.1f} ms | {gbps(baseline):.2f} | {baseline / bridge:.1f}x | "
              f"{raw * 1e3:.1f} ms, {gbps(raw):.2f} GB/s |", flush=True)


if __name__ == "__main__":
    main()
