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
import dataclasses
import errno
import hashlib
import hmac
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
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from bridge.wire import protocol
from bridge.wire.codec import ProtocolError, bad_array, decode, encode, request_from_header
from bridge.wire.contract import check_arrays
from bridge.wire.keys import ignored_files, read_authorized_clients
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


_LIBC = ctypes.CDLL(None, use_errno=True)
_TCP_INFO = 11                 # linux/tcp.h
_BYTES_ACKED, _BYTES_RECEIVED = 120, 128   # offsets of tcpi_bytes_acked / tcpi_bytes_received (Linux >= 4.1)
_FIONREAD = 0x541B             # SIOCINQ: bytes in the receive queue not yet read


def tcp_counters(fd: int) -> tuple[int, int, int] | None:
    """(bytes the peer acknowledged, bytes received from it, bytes received but not yet read) of a TCP socket
    fd, from the kernel (TCP_INFO, FIONREAD) without dup-ing it; None for a non-TCP or closed fd."""
    buf = ctypes.create_string_buffer(256)
    size = ctypes.c_uint32(256)
    if _LIBC.getsockopt(fd, 6, _TCP_INFO, buf, ctypes.byref(size)) != 0 or size.value < _BYTES_RECEIVED + 8:
        return None
    acked = int.from_bytes(buf.raw[_BYTES_ACKED:_BYTES_ACKED + 8], "little")
    received = int.from_bytes(buf.raw[_BYTES_RECEIVED:_BYTES_RECEIVED + 8], "little")
    unread = ctypes.c_int(0)
    if _LIBC.ioctl(fd, _FIONREAD, ctypes.byref(unread)) != 0:
        return None
    return acked, received, unread.value


def wire_bytes(frames: list[Any]) -> int:
    """A lower bound on the bytes ZMTP 3 puts on the wire for these frames (payload + a 2- or 9-byte header
    each; CURVE adds more), so that sent - acknowledged never overstates what a reader has left unread."""
    total = 0
    for f in frames:
        n = len(f) if isinstance(f, (bytes, bytearray)) else len(memoryview(getattr(f, "buffer", f)))
        total += n + (2 if n < 256 else 9)
    return total


@dataclasses.dataclass(eq=False)
class Connection:
    """One peer connection, told apart from any later one that reuses its fd number or its routing id by
    the socket's inode (sockfs numbers are not reused while the process lives). `sent` counts the reply
    bytes handed to libzmq for it; sent - (bytes the peer's kernel acknowledged) bounds what the server still
    holds for it (libzmq's pipe and the kernel's send buffer)."""

    fd: int
    dev: int
    ino: int
    sent: int = 0
    received: int = 0          # wire bytes (a lower bound) of the whole messages read from it
    stalled: bool = False      # over its unread-reply budget: its jobs ended, new ones refused until it reads

    def alive(self) -> bool:
        try:
            st = os.fstat(self.fd)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == (self.dev, self.ino)

    def unread(self) -> int:
        """Reply bytes sent and not yet acknowledged by the peer (0 when the kernel cannot say)."""
        counters = tcp_counters(self.fd)
        return 0 if counters is None else max(0, self.sent - counters[0])



class BackendServer:
    """The ROUTER service. `handlers` maps op -> Handler (see backend.service.queue); `request_types` adds ops
    beyond bridge.wire.protocol.REQUEST_TYPES (e.g. the benchmark's echo)."""

    def __init__(self, bind: str = DEFAULT_BIND, handlers: Mapping[str, Handler] | None = None, *,
                 keys_dir: str | os.PathLike | None = None, queue_size: int = 16,
                 max_message_bytes: int = 1 << 30, heartbeat_s: float = 1.0, client_timeout_s: float = 30.0,
                 request_types: Mapping[str, type[Request]] | None = None, send_hwm: int = 256,
                 max_queued_bytes: int = 2 << 30, max_client_jobs: int | None = None,
                 admission: Callable[[Request, dict[str, np.ndarray]], None] | None = None,
                 hello_extra: Callable[[], dict[str, Any]] | None = None,
                 max_unread_reply_bytes: int = 64 << 20, max_inbound_bytes: int = 256 << 20) -> None:
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
        self.max_unread_reply_bytes = int(max_unread_reply_bytes)   # per connection (a client)
        self.max_inbound_bytes = int(max_inbound_bytes)             # all connections' unfinished requests
        if self.max_unread_reply_bytes < 1 or self.max_inbound_bytes < 1:
            raise ValueError(f"max_unread_reply_bytes and max_inbound_bytes must be positive, got "
                             f"{self.max_unread_reply_bytes}, {self.max_inbound_bytes}")
        self.admission = admission
        self.hello_extra = hello_extra  # fields the service adds to hello (its model: name, supports)
        self.queued_bytes = 0            # bytes of the requests of the jobs queued or running
        self.stats = {"received": 0, "errors": 0, "accepted": 0, "finished": 0, "clients_gone": 0,
                      "replies_dropped": 0, "clients_stalled": 0, "over_reply_budget": 0, "inbound_dropped": 0}

        self._context = zmq.Context()
        self._auth = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._jobs: dict[tuple[bytes, str], Job] = {}
        self._last_seen: dict[bytes, float] = {}
        self._stalled: set[bytes] = set()      # clients whose send pipe was full at the last try
        self._log_key = os.urandom(16)          # routing ids go to the log only as a keyed digest
        self._conns: dict[int, Connection] = {}   # fd -> the live connection on it (socket monitor + messages)
        self._draining = False
        try:
            if keys is not None:
                self._auth = ThreadAuthenticator(self._context)
                self._auth.start()
                clients = Path(keys_dir) / "authorized_clients"  # type: ignore[arg-type]
                if clients.is_dir():   # fail loud: zmq's own loader skips a bad file or drops the whole list
                    allowed = read_authorized_clients(clients)     # ValueError naming every bad file
                    for name in ignored_files(clients):
                        log.warning("authorized_clients/%s is not read (only NAME.key files are)", name)
                    self._auth.configure_curve_callback(domain="*", credentials_provider=_AllowList(allowed))
                    log.info("CURVE: %d client key(s) allowed (%s)", len(allowed), ", ".join(sorted(allowed)))
                else:
                    self._auth.configure_curve(domain="*", location=zmq.auth.CURVE_ALLOW_ANY)
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
            self._monitor = self._router.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
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
        poller.register(self._monitor, zmq.POLLIN)
        next_beat = time.monotonic() + self.heartbeat_s
        next_inbound = 0.0
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
                if self._monitor in events:
                    self._drain_monitor()
                if self._router in events:
                    self._drain(self._router, self._on_message)
                now = time.monotonic()
                if now >= next_inbound:
                    self._check_inbound()
                    next_inbound = now + 0.1
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
            if self._owner_here(job):
                self._error(job.identity, job.request.id, protocol.E_SHUTTING_DOWN,
                            f"the backend is shutting down; {job.request.op} {job.request.id!r} did not finish",
                            job.conn)
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
        if getattr(self, "_monitor", None) is not None:
            try:
                self._router.disable_monitor()
            except zmq.ZMQError:
                pass
        for name in ("_monitor", "_router", "_outbox"):
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

    # ------------------------------------------------------------------ connections
    def _tag(self, identity: bytes) -> str:
        """A routing id as it goes to the log: a keyed digest (per process), never the id itself, so that a
        log line cannot be replayed to take a client's id."""
        return "client-" + hmac.new(self._log_key, identity, hashlib.sha256).hexdigest()[:10]

    def _connection(self, fd: int) -> Connection | None:
        """The live connection on fd (made on first sight: a message can come before its monitor event)."""
        if fd < 0:
            return None        # inproc: no socket; the peer is this process
        conn = self._conns.get(fd)
        if conn is not None and conn.alive():
            return conn
        try:
            st = os.fstat(fd)
        except OSError:
            return None
        if conn is not None:   # the fd was closed and reused by a new connection
            self._connection_gone(conn, "its connection closed")
        conn = self._conns[fd] = Connection(fd, st.st_dev, st.st_ino)
        return conn

    def _drain_monitor(self) -> None:
        for _ in range(_DRAIN):
            try:
                event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            fd = int(event["value"])
            if event["event"] == zmq.EVENT_ACCEPTED:
                self._connection(fd)
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                conn = self._conns.get(fd)
                if conn is not None and not conn.alive():
                    del self._conns[fd]
                    self._connection_gone(conn, "its connection closed")

    def _check_inbound(self) -> None:
        """Bytes read from each connection that are not yet whole messages we took (a half-received message,
        whole ones waiting in the pipe) stay under max_inbound_bytes in all: above it the connections holding
        most are dropped (shutdown of the socket), with a log line."""
        held: list[tuple[int, Connection]] = []
        total = 0
        for fd, conn in list(self._conns.items()):
            counters = tcp_counters(fd)
            if counters is None or not conn.alive():
                continue
            _, received, unread = counters
            pending = received - unread - conn.received - _HANDSHAKE_ALLOWANCE
            if pending > 0:
                held.append((pending, conn))
                total += pending
        if total <= self.max_inbound_bytes:
            return
        for pending, conn in sorted(held, key=lambda item: -item[0]):
            log.warning("dropping a connection holding %d bytes of unfinished requests: the %d connections hold %d "
                        "bytes, the inbound budget is %d (max_inbound_mb)", pending, len(held), total,
                        self.max_inbound_bytes)
            self.stats["inbound_dropped"] += 1
            _LIBC.shutdown(conn.fd, 2)       # SHUT_RDWR: libzmq sees the error, closes it and frees the message
            self._connection_gone(conn, "dropped for the inbound budget")
            total -= pending
            if total <= self.max_inbound_bytes:
                break

    def _connection_gone(self, conn: Connection, why: str) -> None:
        jobs = [j for j in self._jobs.values() if j.conn is conn and not j.cancelled]
        if self._conns.get(conn.fd) is conn and not conn.alive():
            del self._conns[conn.fd]
        if not jobs:
            return
        self.stats["clients_gone"] += 1
        log.warning("%s is gone (%s); cancelling its %d job(s)", self._tag(jobs[0].identity), why, len(jobs))
        for job in jobs:
            job.cancel_event.set()
            if self.queue.remove(job):
                self._forget(job)

    def _owner_here(self, job: Job) -> bool:
        """The job's own connection is still the one behind its routing id; else it is cancelled (a later
        connection presenting the same id never gets its replies)."""
        if job.conn is None or job.conn.alive():
            return True
        self._connection_gone(job.conn, "its connection closed")
        return False

    # ------------------------------------------------------------------ sending
    def _drain(self, sock: zmq.Socket, handle) -> None:
        for _ in range(_DRAIN):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            handle(frames)

    def _send(self, identity: bytes, frames: list[Any], conn: Connection | None = None) -> bool:
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
                log.warning("dropped a reply to %s: %s", self._tag(identity), exc)
            return False
        if conn is not None:
            conn.sent += wire_bytes(frames)
        self._stalled.discard(identity)
        return True

    def _reply(self, identity: bytes, header: dict[str, Any], arrays=None, conn: Connection | None = None) -> bool:
        if header.get("kind") == "error":
            self.stats["errors"] += 1
        return self._send(identity, encode(header, arrays), conn)

    def _error(self, identity: bytes, request_id: str, code: str, message: str,
               conn: Connection | None = None) -> None:
        log.info("error to %s for %r: %s: %s", self._tag(identity), request_id, code, message)
        self._reply(identity, error_header(request_id, code, message), conn=conn)

    def _forward(self, frames: list[zmq.Frame]) -> None:
        """A message from the worker: pass it on unless its job was cancelled (already answered), its
        connection is gone (whoever holds the routing id now is someone else), or the client has more
        unread reply bytes than max_unread_reply_bytes (then its jobs end with over_budget)."""
        tag, identity, rid, body = frames[0].bytes, frames[1].bytes, frames[2].bytes.decode(), frames[3:]
        job = self._jobs.get((identity, rid))
        if tag == FINAL:
            if self._jobs.pop((identity, rid), None) is not None:
                self.queued_bytes -= job.nbytes  # type: ignore[union-attr]
            self.stats["finished"] += 1
        if job is None or job.cancelled or not self._owner_here(job):
            return
        conn = job.conn
        if conn is not None and len(body) > 1:      # arrays: the heavy replies
            size = wire_bytes(body)
            unread = conn.unread()
            if unread + size > self.max_unread_reply_bytes:
                self._over_reply_budget(job, unread, size)
                return
        self._send(identity, body, conn)

    def _over_reply_budget(self, job: Job, unread: int, size: int) -> None:
        conn = job.conn
        conn.stalled = True
        self.stats["over_reply_budget"] += 1
        jobs = [j for j in self._jobs.values() if j.conn is conn and not j.cancelled]
        if job not in jobs:          # its final reply: already out of the table
            jobs.append(job)
        log.warning("%s has %d bytes of replies it has not read; a reply of %d more would pass the budget of %d "
                    "(max_unread_reply_mb): its %d job(s) end with over_budget", self._tag(job.identity), unread,
                    size, self.max_unread_reply_bytes, len(jobs))
        for j in jobs:
            j.cancel_event.set()
            if self.queue.remove(j):
                self._forget(j)
            self._error(j.identity, j.request.id, protocol.E_OVER_BUDGET,
                        f"{j.request.op} {j.request.id!r} ended: this client has {unread} bytes of replies it has "
                        f"not read, the budget is {self.max_unread_reply_bytes}; read replies as they come",
                        conn=conn)

    # ------------------------------------------------------------------ receiving
    def _on_message(self, frames: list[zmq.Frame]) -> None:
        identity, body = frames[0].bytes, frames[1:]
        self.stats["received"] += 1
        self._last_seen[identity] = time.monotonic()
        conn = self._connection(frames[0].get(zmq.SRCFD))
        if conn is not None:
            conn.received += wire_bytes(body)
        try:
            user = frames[0].get("User-Id") if self.curve else ""
        except zmq.ZMQError:
            user = ""
        try:
            self._handle(identity, body, conn, user)
        except ProtocolError as exc:
            self._error(identity, exc.request_id, exc.code, exc.message, conn)
        except Exception as exc:  # a bug here must not end the service
            log.exception("internal error on a message from %s", self._tag(identity))
            self._error(identity, "", protocol.E_INTERNAL, f"{type(exc).__name__}: {exc}", conn)

    def _handle(self, identity: bytes, body: list[zmq.Frame], conn: Connection | None = None, user: str = "") -> None:
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
                self._reply(identity, reply_header(rid, "result", **self.hello_fields()), conn=conn)
            elif op == "ping":
                self._reply(identity, reply_header(rid, "result", time=time.time()), conn=conn)
            else:
                self._cancel(identity, request.target, rid, conn, user)  # type: ignore[attr-defined]
            return
        handler = self.handlers.get(op)
        if handler is None:
            raise ProtocolError(protocol.E_UNKNOWN_OP, f"op {op!r} is not served by this backend "
                                f"(capabilities: {', '.join(self.capabilities)})", rid)
        key = (identity, rid)
        if key in self._jobs and self._owner_here(self._jobs[key]) and not self._jobs[key].cancelled:
            raise ProtocolError(protocol.E_INVALID, f"request id {rid!r} is already in flight", rid)
        if self._draining:
            raise ProtocolError(protocol.E_SHUTTING_DOWN, "the backend is shutting down; no new jobs", rid)
        nbytes = self._admit(identity, request, arrays, body, conn)
        job = Job(identity, request, arrays, handler, conn=conn, user=user, frames=body, nbytes=nbytes)
        try:
            position = self.queue.put(job)
        except QueueFull:
            raise ProtocolError(protocol.E_QUEUE_FULL, f"the job queue is full ({self.queue.maxsize} jobs); "
                                f"retry later", rid) from None
        old = self._jobs.get(key)
        if old is not None:     # a cancelled job of a closed connection that presented the same routing id
            self.queued_bytes -= old.nbytes
        self._jobs[key] = job
        self.queued_bytes += nbytes
        self.stats["accepted"] += 1
        self._reply(identity, reply_header(rid, "accepted", queue_position=position), conn=conn)

    def _admit(self, identity: bytes, request: Request, arrays: dict[str, np.ndarray], body: list[Any],
               conn: Connection | None = None) -> int:
        """Refuse a job before it is queued: undeclared arrays, a cost above the per-job limit, this
        client's share of the queue, the byte budget. Returns the bytes the job holds while queued."""
        rid, op = request.id, request.op
        contract = protocol.REQUEST_ARRAYS.get(op)
        if contract is not None:
            try:
                check_arrays(arrays, contract, error=bad_array, optional=protocol.OPTIONAL_ARRAYS.get(op, ()),
                             allow_extra=False)
            except ProtocolError as exc:
                raise ProtocolError(exc.code, f"{op}: {exc.message}", rid) from None
        if self.admission is not None:
            try:
                self.admission(request, arrays)
            except ProtocolError as exc:
                raise ProtocolError(exc.code, exc.message, rid) from None
        if conn is not None and conn.stalled:
            unread = conn.unread()
            if unread > self.max_unread_reply_bytes // 8:   # it has read (nearly) all: serve it again
                raise ProtocolError(protocol.E_OVER_BUDGET, f"this client has {unread} bytes of replies it has not "
                                    f"read (the budget is {self.max_unread_reply_bytes}); read them, then retry", rid)
            conn.stalled = False
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
                           "send_hwm": self.send_hwm, "max_unread_reply_bytes": self.max_unread_reply_bytes,
                           "max_inbound_bytes": self.max_inbound_bytes}}

    # ------------------------------------------------------------------ cancellation and liveness
    def _cancel(self, identity: bytes, target: str, cancel_id: str, conn: Connection | None = None,
                user: str = "") -> None:
        """Cancel one of this client's jobs: its `error cancelled` goes out now (a queued job is dropped,
        a running one stops at its next progress/check_cancelled); the cancel request gets a result. Only
        the connection that sent the job (under CURVE: the same key) can cancel it."""
        job = self._jobs.get((identity, target))
        found = job is not None and not job.cancelled and job.conn is conn and job.user == user
        if found:
            job.cancel_event.set()
            if self.queue.remove(job):
                self._forget(job)
            self._error(identity, target, protocol.E_CANCELLED, f"{job.request.op} {target!r} was cancelled", conn)
        self._reply(identity, reply_header(cancel_id, "result", target=target, found=found), conn=conn)

    def _client_gone(self, identity: bytes, why: str) -> None:
        self._last_seen.pop(identity, None)
        jobs = [j for j in self._jobs.values() if j.identity == identity]
        if not jobs:
            return
        self.stats["clients_gone"] += 1
        log.warning("%s is gone (%s); cancelling its %d job(s)", self._tag(identity), why, len(jobs))
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
        log.warning("%s does not read its replies (%d unread, the send high-water mark); dropping its "
                    "replies and cancelling its %d job(s)", self._tag(identity), self.send_hwm, len(jobs))
        for job in jobs:
            job.cancel_event.set()
            if self.queue.remove(job):
                self._forget(job)

    def _forget(self, job: Job) -> None:
        if self._jobs.pop(job.key, None) is not None:
            self.queued_bytes -= job.nbytes

    def _heartbeat(self, now: float) -> None:
        by_client: dict[bytes, list[str]] = {}
        conn_of: dict[bytes, Connection | None] = {}
        for (identity, rid), job in list(self._jobs.items()):
            if not job.cancelled and self._owner_here(job):
                by_client.setdefault(identity, []).append(rid)
                conn_of[identity] = job.conn
        for identity, ids in by_client.items():
            silent = now - self._last_seen.get(identity, now)
            if silent > self.client_timeout_s:
                self._client_gone(identity, f"silent for {silent:.0f} s")
            else:
                self._reply(identity, reply_header("", "heartbeat", jobs=ids), conn=conn_of[identity])
        for identity in [i for i, t in self._last_seen.items() if now - t > 10 * max(self.client_timeout_s, 1)]:
            if identity not in by_client:
                del self._last_seen[identity]
        self._stalled &= set(self._last_seen)
        for fd, conn in list(self._conns.items()):   # connections whose monitor event was missed
            if not conn.alive():
                del self._conns[fd]
                self._connection_gone(conn, "its connection closed")


class _AllowList:
    """ZAP credentials provider: the CURVE client keys of authorized_clients/ (bridge.wire.keys)."""

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        self._keys = frozenset(keys.values())

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self._keys


_HANDSHAKE_ALLOWANCE = 4096     # ZMTP greeting, READY and CURVE handshake bytes a connection sends before messages
