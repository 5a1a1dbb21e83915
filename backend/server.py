"""The GenLCA backend service: a ZeroMQ ROUTER that validates requests and runs them as jobs.

    server = BackendServer("tcp://127.0.0.1:5555", handlers)
    server.serve_forever()                 # or server.serve_in_thread() in tests; server.stop() ends it

Threads: the I/O thread (the one in serve_forever) owns the ROUTER socket and every table of jobs and
clients; one worker thread (backend.jobs.Worker) runs the handlers and sends what they say through an
inproc PUSH -> PULL pipe that the I/O thread polls beside the ROUTER. Built-in ops (hello, ping, cancel)
are answered on the I/O thread at once; the others are queued (bounded; full -> queue_full).

Per request: decode + validate -> `accepted` -> `progress`* -> `result` | `error`. While a client has a
job queued or running it gets a `heartbeat` every heartbeat_s listing those jobs. A client that goes away
(ROUTER_MANDATORY send fails with EHOSTUNREACH, or silent for client_timeout_s while it has jobs) has its
jobs cancelled. Malformed messages get a structured `error` (the ROUTER always knows the sender's
identity); a frame above max_message_bytes makes libzmq drop that connection instead (MAXMSGSIZE).
Docs: docs/PROTOCOL.md.
"""
from __future__ import annotations

import errno
import ipaddress
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Mapping

import zmq

from bridge import protocol
from bridge.codec import ProtocolError, decode, encode, request_from_header
from bridge.protocol import PROTOCOL_VERSION, Request
from backend.jobs import FINAL, Handler, Job, JobQueue, QueueFull, Worker, error_header, reply_header

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


class BackendServer:
    """The ROUTER service. `handlers` maps op -> Handler (see backend.jobs); `request_types` adds ops
    beyond bridge.protocol.REQUEST_TYPES (e.g. the benchmark's echo)."""

    def __init__(self, bind: str = DEFAULT_BIND, handlers: Mapping[str, Handler] | None = None, *,
                 keys_dir: str | os.PathLike | None = None, queue_size: int = 16,
                 max_message_bytes: int = 1 << 30, heartbeat_s: float = 1.0, client_timeout_s: float = 30.0,
                 request_types: Mapping[str, type[Request]] | None = None) -> None:
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
        self.stats = {"received": 0, "errors": 0, "accepted": 0, "finished": 0, "clients_gone": 0}

        self._context = zmq.Context()
        self._auth = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._jobs: dict[tuple[bytes, str], Job] = {}
        self._last_seen: dict[bytes, float] = {}
        try:
            if keys is not None:
                from zmq.auth.thread import ThreadAuthenticator

                self._auth = ThreadAuthenticator(self._context)
                self._auth.start()
                clients = Path(keys_dir) / "authorized_clients"  # type: ignore[arg-type]
                self._auth.configure_curve(domain="*", location=str(clients) if clients.is_dir()
                                           else zmq.auth.CURVE_ALLOW_ANY)
            self._router = self._context.socket(zmq.ROUTER)
            self._router.setsockopt(zmq.LINGER, 0)
            self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)
            self._router.setsockopt(zmq.SNDHWM, 0)   # never drop a reply; a gone client's pipe is freed
            self._router.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)
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
            while not self._stop.is_set():
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

    def _shutdown(self) -> None:
        self._worker.stop()
        for job in self.queue.drain():
            job.cancel_event.set()
        if self._worker.is_alive():
            self._worker.join(5)
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
            return True
        except zmq.ZMQError as exc:
            if exc.errno == errno.EHOSTUNREACH:
                self._client_gone(identity, "it disconnected")
            else:
                log.warning("dropped a reply to client %s: %s", identity.hex(), exc)
            return False

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
            self._jobs.pop((identity, rid), None)
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
        job = Job(identity, request, arrays, handler, frames=body)
        try:
            position = self.queue.put(job)
        except QueueFull:
            raise ProtocolError(protocol.E_QUEUE_FULL, f"the job queue is full ({self.queue.maxsize} jobs); "
                                f"retry later", rid) from None
        self._jobs[key] = job
        self.stats["accepted"] += 1
        self._reply(identity, reply_header(rid, "accepted", queue_position=position))

    def hello_fields(self) -> dict[str, Any]:
        return {"protocol": PROTOCOL_VERSION, "server": f"genlca-backend {SERVER_VERSION}",
                "capabilities": self.capabilities, "curve": self.curve,
                "limits": {"max_message_bytes": self.max_message_bytes, "queue_size": self.queue.maxsize,
                           "heartbeat_s": self.heartbeat_s, "client_timeout_s": self.client_timeout_s}}

    # ------------------------------------------------------------------ cancellation and liveness
    def _cancel(self, identity: bytes, target: str, cancel_id: str) -> None:
        """Cancel one of this client's jobs: its `error cancelled` goes out now (a queued job is dropped,
        a running one stops at its next progress/check_cancelled); the cancel request gets a result."""
        job = self._jobs.get((identity, target))
        found = job is not None and not job.cancelled
        if found:
            job.cancel_event.set()
            if self.queue.remove(job):
                self._jobs.pop(job.key, None)
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
                self._jobs.pop(job.key, None)

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
