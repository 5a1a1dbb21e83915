"""The GenLCA backend service: a ZeroMQ ROUTER that validates requests and runs them as jobs.

    server = BackendServer("tcp://127.0.0.1:5555", handlers)
    server.serve_forever()                 # or server.serve_in_thread() in tests; server.stop() ends it

Threads: the I/O thread (the one in serve_forever) owns the ROUTER socket and every table of jobs and
clients; one worker thread (backend.service.queue.Worker) runs the handlers and sends what they say through an
inproc PUSH -> PULL pipe that the I/O thread polls beside the ROUTER. Built-in ops (hello, ping, cancel)
are answered on the I/O thread at once; the others are queued (bounded; full -> queue_full).

Per request: decode + validate -> `accepted` -> `progress`* -> `result` | `error`. While a client has a
job queued or running it gets a `heartbeat` every heartbeat_s listing those jobs. A client that goes away
(ROUTER_MANDATORY send fails with EHOSTUNREACH, or silent for client_timeout_s while it has jobs) has its
jobs cancelled. Malformed messages get a structured `error` (the ROUTER always knows the sender's
identity); a frame above max_message_bytes makes libzmq drop that connection instead (MAXMSGSIZE).

Bounds (docs/ARCHITECTURE.md, "Threat model"): arrays an op does not declare are refused before queueing;
`admission` (ServiceConfig.check_request) refuses jobs above the per-job cost; the queued requests' bytes
stay under max_queued_bytes, each client under max_client_jobs; every client's pipe holds at most
send_hwm replies, and a client that lets it fill (does not read) loses its replies and its jobs.
Routing ids: libzmq's ROUTER aborts the process when the id it auto-assigns to a new peer is already
taken by a peer that chose it (router.cpp identify_peer); see unpredictable_routing_ids().
stop() (SIGTERM/SIGINT in backend.service.cli) drains: every queued and running job gets `shutting_down`, the
running one stops at its next progress/cancel check, new jobs are refused, then the sockets close.
Docs: docs/PROTOCOL.md.
"""
from __future__ import annotations

import ctypes
import errno
import ipaddress
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import zmq
import zmq.auth
import zmq.auth.thread

from bridge.wire import protocol
from bridge.wire.codec import ProtocolError, check_arrays, decode, encode, request_from_header
from bridge.wire.protocol import PROTOCOL_VERSION, Request
from backend.service.queue import FINAL, Handler, Job, JobQueue, QueueFull, Worker, error_header, reply_header

log = logging.getLogger("genlca.backend")

SERVER_VERSION = "0.1.0"
BUILTIN_OPS = ("hello", "ping", "cancel")
DEFAULT_BIND = "tcp://127.0.0.1:5555"
_DRAIN = 256            # messages handled per socket per loop turn, so neither side starves the other


def is_loopback(address: str) -> bool:
    """True for ipc://, inproc:// and tcp:// on 127.0.0.0/8, ::1 or localhost."""
    scheme, _, rest = address.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp" or not rest:
        return False
    host = rest.rsplit(":", 1)[0] if ":" in rest else rest
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # an interface name or hostname: not provably loopback


def server_keys(keys_dir: str | os.PathLike | None) -> tuple[bytes, bytes] | None:
    """(public, secret) from keys_dir/server.key_secret (as `genlca-backend keys` writes it), or None."""
    if keys_dir is None:
        return None
    path = Path(keys_dir) / "server.key_secret"
    if not path.is_file():
        raise FileNotFoundError(f"no server CURVE keys at {path}; create them with "
                                f"`genlca-backend keys --keys-dir {keys_dir}`")
    public, secret = zmq.auth.load_certificate(str(path))
    if not secret:
        raise ValueError(f"{path} holds no secret key")
    return public, secret


def unpredictable_routing_ids() -> bool:
    """Seed the C library's rand() from os.urandom; call right before creating a ROUTER.

    libzmq (4.3.5 and master) starts each ROUTER's auto-assigned routing ids (0x00 + a 32-bit counter) at
    rand(), which nothing ever seeds: the first ROUTER of a process always starts at the same value
    (0x006B8B4567 on glibc). identify_peer() checks a peer-chosen id against the ids in use (and ignores
    a duplicate) but does not check an auto-assigned one, so a client that connected first with that id
    makes the next ordinary connection abort the process (`Assertion failed: ok (socket_base.cpp)`).
    libzmq has no option to refuse peer-chosen ids; ROUTER_HANDOVER takes the same path, and a ZAP
    handler never sees the peer's id (the ZAP request carries the server socket's own id). Seeding rand()
    makes the start unguessable (2**32 values); our own clients also pick random ids outside the auto
    range (bridge.wire.client), so they never take the auto-id path at all. Returns False when libc's srand
    cannot be found (then the ids stay predictable; logged)."""
    try:
        libc = ctypes.CDLL(None)
        libc.srand(ctypes.c_uint(int.from_bytes(os.urandom(4), "little")))
        return True
    except (OSError, AttributeError) as exc:
        log.warning("cannot seed rand() for libzmq's routing ids (%s); they stay predictable", exc)
        return False


def return_large_buffers_to_the_os(threshold: int = 1 << 20) -> bool:
    """glibc: allocate blocks above `threshold` with mmap, always (mallopt M_MMAP_THRESHOLD). By default
    the threshold follows the largest block freed so far (up to 32 MiB), after which wire-sized buffers come
    from the heap and a burst of refused requests leaves the process holding their memory."""
    try:
        return bool(ctypes.CDLL(None).mallopt(-3, ctypes.c_int(threshold)))   # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


class BackendServer:
    """The ROUTER service. `handlers` maps op -> Handler (see backend.service.queue); `request_types` adds ops
    beyond bridge.wire.protocol.REQUEST_TYPES (e.g. the benchmark's echo)."""

    def __init__(self, bind: str = DEFAULT_BIND, handlers: Mapping[str, Handler] | None = None, *,
                 keys_dir: str | os.PathLike | None = None, queue_size: int = 16,
                 max_message_bytes: int = 1 << 30, heartbeat_s: float = 1.0, client_timeout_s: float = 30.0,
                 request_types: Mapping[str, type[Request]] | None = None, send_hwm: int = 256,
                 max_queued_bytes: int = 2 << 30, max_client_jobs: int | None = None,
                 admission: Callable[[Request, dict[str, np.ndarray]], None] | None = None,
                 hello_extra: Callable[[], dict[str, Any]] | None = None) -> None:
        keys = server_keys(keys_dir)
        if keys is None and not is_loopback(bind):
            raise PermissionError(f"refusing to bind {bind!r} without CURVE keys: only loopback addresses "
                                  f"(127.0.0.0/8, ::1, localhost, ipc://, inproc://) may serve unencrypted; "
                                  f"pass keys_dir with server keys (`genlca-backend keys`)")
        self.handlers: dict[str, Handler] = dict(handlers or {})
        clash = sorted(set(self.handlers) & set(BUILTIN_OPS))
        if clash:
            raise ValueError(f"handlers for built-in ops {clash} are not allowed")
        self.request_types = {**protocol.REQUEST_TYPES, **(request_types or {})}
        missing = sorted(set(self.handlers) - set(self.request_types))
        if missing:
            raise ValueError(f"handlers {missing} have no request type; pass request_types")
        self.max_message_bytes = int(max_message_bytes)
        self.heartbeat_s = float(heartbeat_s)
        self.client_timeout_s = float(client_timeout_s)
        self.queue = JobQueue(queue_size)
        self.curve = keys is not None
        self.send_hwm = int(send_hwm)
        self.max_queued_bytes = int(max_queued_bytes)
        self.max_client_jobs = None if max_client_jobs is None else int(max_client_jobs)   # None: no share
        if self.send_hwm < 1 or self.max_queued_bytes < 1 or (self.max_client_jobs or 1) < 1:
            raise ValueError(f"send_hwm, max_queued_bytes and max_client_jobs must be positive, got "
                             f"{self.send_hwm}, {self.max_queued_bytes}, {self.max_client_jobs}")
        self.admission = admission
        self.hello_extra = hello_extra  # fields the service adds to hello (its model: name, supports)
        self.queued_bytes = 0            # bytes of the requests of the jobs queued or running
        self.stats = {"received": 0, "errors": 0, "accepted": 0, "finished": 0, "clients_gone": 0,
                      "replies_dropped": 0, "clients_stalled": 0}

        self._context = zmq.Context()
        self._auth = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._jobs: dict[tuple[bytes, str], Job] = {}
        self._last_seen: dict[bytes, float] = {}
        self._stalled: set[bytes] = set()      # clients whose send pipe was full at the last try
        self._draining = False
        try:
            if keys is not None:
                from zmq.auth.thread import ThreadAuthenticator

                self._auth = ThreadAuthenticator(self._context)
                self._auth.start()
                clients = Path(keys_dir) / "authorized_clients"  # type: ignore[arg-type]
                self._auth.configure_curve(domain="*", location=str(clients) if clients.is_dir()
                                           else zmq.auth.CURVE_ALLOW_ANY)
            unpredictable_routing_ids()
            return_large_buffers_to_the_os()
            self._router = self._context.socket(zmq.ROUTER)
            self._router.setsockopt(zmq.LINGER, 0)
            self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)   # a full or gone pipe raises instead of dropping
            self._router.setsockopt(zmq.SNDHWM, self.send_hwm)  # per client; full -> _client_stalled
            self._router.setsockopt(zmq.RCVHWM, 16)             # per client; then TCP pushes back
            self._router.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)
            if "[" in bind or bind.partition("://")[2].count(":") > 1:
                self._router.setsockopt(zmq.IPV6, 1)
            if keys is not None:
                self._router.curve_publickey, self._router.curve_secretkey = keys
                self._router.curve_server = True
            self._router.bind(bind)
            self.address: str = self._router.getsockopt_string(zmq.LAST_ENDPOINT)
            self._outbox_address = f"inproc://genlca-outbox-{id(self):x}"
            self._outbox = self._context.socket(zmq.PULL)
            self._outbox.setsockopt(zmq.LINGER, 0)
            self._outbox.bind(self._outbox_address)
        except Exception:
            self._close_sockets()
            raise
        self._worker = Worker(self._context, self._outbox_address, self.queue)
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def serve_forever(self) -> None:
        """Run the I/O loop in this thread until stop()."""
        self._worker.start()
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._outbox, zmq.POLLIN)
        next_beat = time.monotonic() + self.heartbeat_s
        log.info("GenLCA backend serving on %s (CURVE %s, ops %s)", self.address, "on" if self.curve else "off",
                 ", ".join(self.capabilities))
        self._ready.set()
        try:
            while True:
                if self._stop.is_set() and not self._draining:
                    self._begin_shutdown()
                if self._draining and not self._worker.is_alive():
                    break
                wait_ms = max(0, min(100, int((next_beat - time.monotonic()) * 1000)))
                events = dict(poller.poll(wait_ms))
                if self._outbox in events:
                    self._drain(self._outbox, self._forward)
                if self._router in events:
                    self._drain(self._router, self._on_message)
                now = time.monotonic()
                if now >= next_beat:
                    self._heartbeat(now)
                    next_beat = now + self.heartbeat_s
        finally:
            self._shutdown()

    def serve_in_thread(self) -> threading.Thread:
        """serve_forever on a daemon thread; returns once the server is serving."""
        self._thread = threading.Thread(target=self.serve_forever, name="genlca-backend-io", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the backend I/O thread did not start within 10 s")
        return self._thread

    def stop(self, join: bool = True) -> None:
        """Ask the I/O loop to end (safe from any thread, including signal handlers with join=False)."""
        self._stop.set()
        if join and self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)

    def __enter__(self) -> "BackendServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        if self._thread is None:
            self._close_sockets()

    @property
    def capabilities(self) -> list[str]:
        return [*BUILTIN_OPS, *sorted(self.handlers)]

    def active_jobs(self) -> list[str]:
        """Ids of the jobs queued or running (a snapshot; for tests and logs)."""
        return [rid for (_, rid) in self._jobs.copy()]

    def _begin_shutdown(self) -> None:
        """Stop taking jobs: every queued and running job gets `shutting_down` now and is cancelled (the
        running one stops at its next progress/check_cancelled); the loop goes on answering (new jobs are
        refused with shutting_down) until the worker has finished."""
        self._draining = True
        jobs = [job for job in self._jobs.values() if not job.cancelled]   # before stop() cancels the running one
        self._worker.stop()
        self.queue.drain()
        log.info("stopping: %d job(s) end with shutting_down; waiting for the worker", len(jobs))
        for job in jobs:
            job.cancel_event.set()
            self._error(job.identity, job.request.id, protocol.E_SHUTTING_DOWN,
                        f"the backend is shutting down; {job.request.op} {job.request.id!r} did not finish")
        self._jobs = {key: job for key, job in self._jobs.items() if job is self._worker.current}
        self.queued_bytes = sum(job.nbytes for job in self._jobs.values())

    def _shutdown(self) -> None:
        if not self._draining:        # the loop ended by an exception: still stop the worker
            self._worker.stop()
            for job in self.queue.drain():
                job.cancel_event.set()
        if self._worker.is_alive():
            self._worker.join(5)
        router = getattr(self, "_router", None)
        if router is not None:
            router.setsockopt(zmq.LINGER, 1000)   # let the last replies (shutting_down) go out
        self._close_sockets(term=not self._worker.is_alive())
        log.info("GenLCA backend on %s stopped", self.address)

    def _close_sockets(self, term: bool = True) -> None:
        for name in ("_router", "_outbox"):
            sock = getattr(self, name, None)
            if sock is not None:
                sock.close(0)
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if term:
            self._context.term()
        else:
            log.warning("the worker did not stop within 5 s; leaving its context open")

    # ------------------------------------------------------------------ sending
    def _drain(self, sock: zmq.Socket, handle) -> None:
        for _ in range(_DRAIN):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            handle(frames)

    def _send(self, identity: bytes, frames: list[Any]) -> bool:
        try:
            self._router.send_multipart([identity, *frames], zmq.NOBLOCK, copy=False)
        except zmq.Again:       # the client's pipe holds send_hwm replies it has not read
            self.stats["replies_dropped"] += 1
            self._client_stalled(identity)
            return False
        except zmq.ZMQError as exc:
            if exc.errno == errno.EHOSTUNREACH:
                self._client_gone(identity, "it disconnected")
            else:
                log.warning("dropped a reply to client %s: %s", identity.hex(), exc)
            return False
        self._stalled.discard(identity)
        return True

    def _reply(self, identity: bytes, header: dict[str, Any], arrays=None) -> bool:
        if header.get("kind") == "error":
            self.stats["errors"] += 1
        return self._send(identity, encode(header, arrays))

    def _error(self, identity: bytes, request_id: str, code: str, message: str) -> None:
        log.info("error to %s for %r: %s: %s", identity.hex(), request_id, code, message)
        self._reply(identity, error_header(request_id, code, message))

    def _forward(self, frames: list[zmq.Frame]) -> None:
        """A message from the worker: pass it on unless its job was cancelled (already answered)."""
        tag, identity, rid, body = frames[0].bytes, frames[1].bytes, frames[2].bytes.decode(), frames[3:]
        job = self._jobs.get((identity, rid))
        if tag == FINAL:
            if self._jobs.pop((identity, rid), None) is not None:
                self.queued_bytes -= job.nbytes  # type: ignore[union-attr]
            self.stats["finished"] += 1
        if job is not None and not job.cancelled:
            self._send(identity, body)

    # ------------------------------------------------------------------ receiving
    def _on_message(self, frames: list[zmq.Frame]) -> None:
        identity, body = frames[0].bytes, frames[1:]
        self.stats["received"] += 1
        self._last_seen[identity] = time.monotonic()
        try:
            self._handle(identity, body)
        except ProtocolError as exc:
            self._error(identity, exc.request_id, exc.code, exc.message)
        except Exception as exc:  # a bug here must not end the service
            log.exception("internal error on a message from %s", identity.hex())
            self._error(identity, "", protocol.E_INTERNAL, f"{type(exc).__name__}: {exc}")

    def _handle(self, identity: bytes, body: list[zmq.Frame]) -> None:
        header, arrays = decode(body, self.max_message_bytes)
        rid = header["id"]
        if "op" not in header:
            raise ProtocolError(protocol.E_BAD_MESSAGE, f"a request needs 'op', got a message of kind "
                                f"{header.get('kind')!r}", rid)
        request = request_from_header(header, self.request_types)
        if not rid:
            raise ProtocolError(protocol.E_INVALID, "a request needs a non-empty 'id' (replies are matched by it)")
        op = request.op
        if op in BUILTIN_OPS:
            if arrays:
                raise ProtocolError(protocol.E_BAD_ARRAY, f"{op} takes no arrays, got {sorted(arrays)}", rid)
            if op == "hello":
                self._reply(identity, reply_header(rid, "result", **self.hello_fields()))
            elif op == "ping":
                self._reply(identity, reply_header(rid, "result", time=time.time()))
            else:
                self._cancel(identity, request.target, rid)  # type: ignore[attr-defined]
            return
        handler = self.handlers.get(op)
        if handler is None:
            raise ProtocolError(protocol.E_UNKNOWN_OP, f"op {op!r} is not served by this backend "
                                f"(capabilities: {', '.join(self.capabilities)})", rid)
        key = (identity, rid)
        if key in self._jobs:
            raise ProtocolError(protocol.E_INVALID, f"request id {rid!r} is already in flight", rid)
        if self._draining:
            raise ProtocolError(protocol.E_SHUTTING_DOWN, "the backend is shutting down; no new jobs", rid)
        nbytes = self._admit(identity, request, arrays, body)
        job = Job(identity, request, arrays, handler, frames=body, nbytes=nbytes)
        try:
            position = self.queue.put(job)
        except QueueFull:
            raise ProtocolError(protocol.E_QUEUE_FULL, f"the job queue is full ({self.queue.maxsize} jobs); "
                                f"retry later", rid) from None
        self._jobs[key] = job
        self.queued_bytes += nbytes
        self.stats["accepted"] += 1
        self._reply(identity, reply_header(rid, "accepted", queue_position=position))

    def _admit(self, identity: bytes, request: Request, arrays: dict[str, np.ndarray], body: list[Any]) -> int:
        """Refuse a job before it is queued: undeclared arrays, a cost above the per-job limit, this
        client's share of the queue, the byte budget. Returns the bytes the job holds while queued."""
        rid, op = request.id, request.op
        contract = protocol.REQUEST_ARRAYS.get(op)
        if contract is not None:
            optional = protocol.OPTIONAL_ARRAYS.get(op, frozenset())
            missing = [name for name in contract if name not in arrays and name not in optional]
            extra = sorted(set(arrays) - set(contract))
            if missing or extra:
                takes = f"{op} takes arrays {sorted(contract)}" if contract else f"{op} takes no arrays"
                raise ProtocolError(protocol.E_BAD_ARRAY, f"{takes}{f' ({sorted(optional)} optional)' if optional else ''}"
                                    f"; missing {missing}, unexpected {extra}", rid)
            try:
                check_arrays(arrays, contract, optional=optional)
            except ProtocolError as exc:
                raise ProtocolError(exc.code, f"{op}: {exc.message}", rid) from None
        if self.admission is not None:
            try:
                self.admission(request, arrays)
            except ProtocolError as exc:
                raise ProtocolError(exc.code, exc.message, rid) from None
        mine = sum(1 for job in self._jobs.values() if job.identity == identity and not job.cancelled)
        if self.max_client_jobs is not None and mine >= self.max_client_jobs:
            raise ProtocolError(protocol.E_CLIENT_QUOTA, f"this client already has {mine} jobs queued or running, "
                                f"the limit per client is {self.max_client_jobs}; wait for one to finish", rid)
        nbytes = sum(len(memoryview(getattr(f, "buffer", f))) for f in body)
        if self.queued_bytes + nbytes > self.max_queued_bytes:
            raise ProtocolError(protocol.E_OVER_BUDGET, f"{op} request of {nbytes} bytes would bring the queued "
                                f"requests to {self.queued_bytes + nbytes} bytes, the budget is "
                                f"{self.max_queued_bytes}; retry later", rid)
        return nbytes

    def hello_fields(self) -> dict[str, Any]:
        extra = self.hello_extra() if self.hello_extra is not None else {}
        return {**extra, "protocol": PROTOCOL_VERSION, "server": f"genlca-backend {SERVER_VERSION}",
                "capabilities": self.capabilities, "curve": self.curve,
                "limits": {"max_message_bytes": self.max_message_bytes, "queue_size": self.queue.maxsize,
                           "heartbeat_s": self.heartbeat_s, "client_timeout_s": self.client_timeout_s,
                           "max_queued_bytes": self.max_queued_bytes, "max_client_jobs": self.max_client_jobs,
                           "send_hwm": self.send_hwm}}

    # ------------------------------------------------------------------ cancellation and liveness
    def _cancel(self, identity: bytes, target: str, cancel_id: str) -> None:
        """Cancel one of this client's jobs: its `error cancelled` goes out now (a queued job is dropped,
        a running one stops at its next progress/check_cancelled); the cancel request gets a result."""
        job = self._jobs.get((identity, target))
        found = job is not None and not job.cancelled
        if found:
            job.cancel_event.set()
            if self.queue.remove(job):
                self._forget(job)
            self._error(identity, target, protocol.E_CANCELLED, f"{job.request.op} {target!r} was cancelled")
        self._reply(identity, reply_header(cancel_id, "result", target=target, found=found))

    def _client_gone(self, identity: bytes, why: str) -> None:
        self._last_seen.pop(identity, None)
        jobs = [j for j in self._jobs.values() if j.identity == identity]
        if not jobs:
            return
        self.stats["clients_gone"] += 1
        log.warning("client %s is gone (%s); cancelling its %d job(s)", identity.hex(), why, len(jobs))
        for job in jobs:
            job.cancel_event.set()
            if self.queue.remove(job):
                self._forget(job)

    def _client_stalled(self, identity: bytes) -> None:
        """The client's pipe is full (it does not read its replies): its replies are dropped until it reads
        again, and its jobs are cancelled (their work would only pile up more replies)."""
        if identity in self._stalled:
            return
        self._stalled.add(identity)
        self.stats["clients_stalled"] += 1
        jobs = [j for j in self._jobs.values() if j.identity == identity and not j.cancelled]
        log.warning("client %s does not read its replies (%d unread, the send high-water mark); dropping its "
                    "replies and cancelling its %d job(s)", identity.hex(), self.send_hwm, len(jobs))
        for job in jobs:
            job.cancel_event.set()
            if self.queue.remove(job):
                self._forget(job)

    def _forget(self, job: Job) -> None:
        if self._jobs.pop(job.key, None) is not None:
            self.queued_bytes -= job.nbytes

    def _heartbeat(self, now: float) -> None:
        by_client: dict[bytes, list[str]] = {}
        for (identity, rid), job in list(self._jobs.items()):
            if not job.cancelled:
                by_client.setdefault(identity, []).append(rid)
        for identity, ids in by_client.items():
            silent = now - self._last_seen.get(identity, now)
            if silent > self.client_timeout_s:
                self._client_gone(identity, f"silent for {silent:.0f} s")
            else:
                self._reply(identity, reply_header("", "heartbeat", jobs=ids))
        for identity in [i for i, t in self._last_seen.items() if now - t > 10 * max(self.client_timeout_s, 1)]:
            if identity not in by_client:
                del self._last_seen[identity]
        self._stalled &= set(self._last_seen)
