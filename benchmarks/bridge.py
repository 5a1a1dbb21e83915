"""Bridge throughput, one way, between two processes: our wire against pickle and against libzmq's floor.

    python -m benchmarks.bridge                  # 100k and 1M Gaussians, median of 9 rounds after a warm-up round
    python -m benchmarks.bridge --gaussians 100000 --repeats 3

Payload per Gaussian: 59 float32 (means 3, rotations 4, log_scales 3, opacity 1, SH 16x3) plus top-8 skin
weights (8 uint16 + 8 float32): 284 bytes, as get_avatar sends them.

Every method sends the arrays from this process to a receiver process over tcp://127.0.0.1 and waits for
a few-byte acknowledgement that the receiver sends once it holds usable arrays; one-way GB/s = payload
bytes / that time (the acknowledgement is ~100 bytes, so its latency is within the noise).
- "raw floor": send_multipart of the arrays' raw buffers with copy=False, recv_multipart(copy=False) on a
  DEALER: libzmq alone, no header, no checks; nothing can be faster over this transport.
- "pickle 5": pickle protocol 5 with out-of-band buffers (buffer_callback), the buffers sent as zero-copy
  frames and `pickle.loads(header, buffers=frames)` on a zero-copy receive: the best a pickle bridge does.
- "bridge": BridgeClient.call of a benchmark-only `sink` op with the arrays to a BackendServer in the
  receiver process: the full path (ROUTER, header and array checks, admission, job queue, worker thread,
  result back through the I/O thread). The sink handler returns the arrays' total size.
"""
from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import os
import pickle
import platform
import statistics
import time

import numpy as np
import zmq

from bridge.wire import protocol


@dataclasses.dataclass
class Sink(protocol.Request):
    """Benchmark-only op: the server receives the arrays and answers with their sizes."""

    op = "sink"


def sink(request, arrays, ctx):
    return {"bytes": sum(a.nbytes for a in arrays.values())}, {}


def payload(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    f4 = lambda *shape: rng.standard_normal((n, *shape), dtype=np.float32)  # noqa: E731
    return {"means": f4(3), "rotations": f4(4), "log_scales": f4(3), "opacity_logits": f4(),
            "sh": f4(16, 3), "skin_indices": rng.integers(0, 104, (n, 8), dtype=np.uint16), "skin_weights": f4(8)}


# ------------------------------------------------------------------------------ receivers (child processes)
def _receive(address: str, count: int, received_bytes) -> None:
    """A DEALER that answers each of `count` messages with received_bytes(frames), the bytes it got."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(address)
    for _ in range(count):
        frames = sock.recv_multipart(copy=False)
        sock.send(str(received_bytes(frames)).encode())
        del frames
    sock.close(1000)
    ctx.term()


def _raw_bytes(frames: list) -> int:
    return sum(len(f.buffer) for f in frames)


def _unpickled_bytes(frames: list) -> int:
    arrays = pickle.loads(frames[0].buffer, buffers=[f.buffer for f in frames[1:]])
    return sum(a.nbytes for a in arrays.values())


def _raw_receiver(address: str, count: int) -> None:
    _receive(address, count, _raw_bytes)


def _pickle_receiver(address: str, count: int) -> None:
    _receive(address, count, _unpickled_bytes)


def _bridge_server(address: str, ready) -> None:
    import logging

    from backend.service.server import BackendServer

    logging.disable(logging.INFO)
    server = BackendServer(address, {"sink": sink}, request_types={"sink": Sink})
    ready.set()
    server.serve_forever()


# ------------------------------------------------------------------------------ senders (this process)
def _free_address() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


class DealerMethod:
    """A DEALER here, a receiver process there; `once()` sends the payload and waits for the ack."""

    def __init__(self, arrays, count: int, encode, receiver) -> None:
        self.arrays, self.encode = arrays, encode
        self.size = sum(a.nbytes for a in arrays.values())
        address = _free_address()
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(address)
        self.proc = mp.get_context("spawn").Process(target=receiver, args=(address, count), daemon=True)
        self.proc.start()

    def once(self) -> float:
        start = time.perf_counter()
        self.sock.send_multipart(self.encode(self.arrays), copy=False)
        got = int(self.sock.recv())
        elapsed = time.perf_counter() - start
        assert got == self.size, (got, self.size)
        return elapsed

    def close(self) -> None:
        self.proc.join(30)
        if self.proc.is_alive():
            self.proc.kill()
        self.sock.close(0)
        self.ctx.term()


def raw_frames(arrays) -> list[memoryview]:
    return [memoryview(v.reshape(-1).view(np.uint8)) for v in arrays.values()]


def pickle5_frames(arrays) -> list:
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(arrays, protocol=5, buffer_callback=buffers.append)
    return [head, *[b.raw() for b in buffers]]


class BridgeMethod:
    """BridgeClient here, BackendServer (sink op) in a receiver process."""

    def __init__(self, arrays) -> None:
        from bridge.wire.client import BridgeClient

        self.arrays = arrays
        self.size = sum(a.nbytes for a in arrays.values())
        address = _free_address()
        spawn = mp.get_context("spawn")
        ready = spawn.Event()
        self.proc = spawn.Process(target=_bridge_server, args=(address, ready), daemon=True)
        self.proc.start()
        if not ready.wait(120):
            raise RuntimeError("the benchmark's backend did not start")
        self.client = BridgeClient(address, timeout_s=120)

    def once(self) -> float:
        start = time.perf_counter()
        reply = self.client.call(Sink(), self.arrays, timeout_s=120)
        elapsed = time.perf_counter() - start
        assert reply.header["bytes"] == self.size, (reply.header, self.size)
        return elapsed

    def close(self) -> None:
        self.client.close()
        self.proc.kill()
        self.proc.join(10)


def measure(arrays, repeats: int) -> dict[str, list[float]]:
    """Median inputs per method; the methods take turns within every round, so a load that comes and goes
    on a shared machine weighs on all of them alike. Round 0 is a warm-up."""
    methods = {"raw": DealerMethod(arrays, repeats + 1, raw_frames, _raw_receiver),
               "pickle5": DealerMethod(arrays, repeats + 1, pickle5_frames, _pickle_receiver),
               "bridge": BridgeMethod(arrays)}
    times: dict[str, list[float]] = {name: [] for name in methods}
    try:
        for i in range(repeats + 1):
            for name, method in methods.items():
                elapsed = method.once()
                if i:
                    times[name].append(elapsed)
    finally:
        for method in methods.values():
            method.close()
    return times


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gaussians", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--repeats", type=int, default=9)
    args = p.parse_args(argv)
    print(f"bridge benchmark, one way between two processes: Python {platform.python_version()}, pyzmq "
          f"{zmq.__version__} (libzmq {zmq.zmq_version()}), {platform.machine()}, {os.cpu_count()} CPUs, "
          f"median of {args.repeats} after a warm-up")
    print("| Gaussians | payload | raw zero-copy pyzmq (floor) | pickle 5, out-of-band, zero-copy recv | bridge "
          "(BridgeClient -> BackendServer) | bridge / floor | bridge / pickle 5 |")
    print("|---|---|---|---|---|---|---|")
    for n in args.gaussians:
        arrays = payload(n)
        size = sum(a.nbytes for a in arrays.values())
        times = measure(arrays, args.repeats)
        raw, pkl, ours = (statistics.median(times[k]) for k in ("raw", "pickle5", "bridge"))

        def cell(t: float) -> str:
            return f"{t * 1e3:.1f} ms, {size / t / 1e9:.2f} GB/s"

        print(f"| {n:,} | {size / 1e6:.1f} MB | {cell(raw)} | {cell(pkl)} | {cell(ours)} | {raw / ours:.0%} | "
              f"{pkl / ours:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
