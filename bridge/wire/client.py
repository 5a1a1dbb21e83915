"""BridgeClient: the DEALER side of the GenLCA wire, made for a UI timer that must never block.

    client = BridgeClient("tcp://127.0.0.1:5555")
    rid = client.submit(protocol.Generate(prompt="a sailor"))   # returns at once
    ...
    for reply in client.poll(timeout_ms=0):                      # e.g. from bpy.app.timers every 50 ms
        ...  # reply.kind in accepted | progress | result | error (heartbeats are consumed here)

    reply = client.call(protocol.Hello())                        # blocking, for scripts and tests

Liveness: every in-flight request has a timer, reset by any reply for it and by server heartbeats that
list it. When a timer passes timeout_s, poll() returns `error timeout` for that request. When the whole
server has been silent for timeout_s, the socket is closed and made anew (the ZeroMQ guide's Lazy
Pirate) and every pending request fails with timeout. While requests are in flight the client pings
every heartbeat_s, so the server can tell a slow client from a vanished one.

CURVE: with server_public_key the socket is a CURVE client. Its own keypair is client_public_key /
client_secret_key when given (a persistent pair, bridge.wire.keys.load_or_create_client_keypair, that the
server's allow-list can name), else a fresh pair per connection (accepted only by servers without one).

Routing id: every socket takes a random 16-byte routing id that does not start with a zero byte, so the
server's ROUTER never auto-assigns one to it (see backend.service.server.unpredictable_routing_ids).

Zero-copy sends: large arrays go out as memoryviews with `track=True`; the client keeps them referenced
until libzmq is done with them (sending from a buffer freed too early crashes with "Bad address").
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
import uuid
from typing import Any, Callable

import numpy as np
import zmq
import zmq.auth

from bridge.wire import protocol
from bridge.wire.codec import ProtocolError, decode, encode, request_header
from bridge.wire.protocol import Request

log = logging.getLogger("genlca.bridge")

DEFAULT_ADDRESS = "tcp://127.0.0.1:5555"
_KEEPALIVE_PREFIX = "keepalive-"
_MAX_DRAIN = 1000


class BridgeError(Exception):
    """An `error` reply (or a client-side timeout) raised by BridgeClient.call."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclasses.dataclass
class Reply:
    """One message from the server. `arrays` are read-only views on the received frames."""

    id: str
    kind: str
    header: dict[str, Any]
    arrays: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def code(self) -> str:
        return str(self.header.get("code", "")) if self.kind == "error" else ""

    @property
    def message(self) -> str:
        return str(self.header.get("message", "")) if self.kind == "error" else ""

    @property
    def stage(self) -> str:
        return str(self.header.get("stage", ""))

    @property
    def step(self) -> int:
        return int(self.header.get("step", 0))

    @property
    def total(self) -> int:
        return int(self.header.get("total", 0))

    @property
    def done(self) -> bool:
        """True for the last reply of a request (result or error)."""
        return self.kind in ("result", "error")


def _error_reply(request_id: str, code: str, message: str) -> Reply:
    return Reply(request_id, "error", {"v": protocol.PROTOCOL_VERSION, "id": request_id, "kind": "error",
                                       "code": code, "message": message})


def load_public_key(key: bytes | str | os.PathLike) -> bytes:
    """A Z85 CURVE public key (40 chars) from bytes, a str, or a .key / .key_secret certificate file."""
    if isinstance(key, bytes) and len(key) == 40:
        return key
    if isinstance(key, str) and len(key) == 40 and not os.path.exists(key):
        return key.encode("ascii")
    path = os.fspath(key)
    if isinstance(path, bytes):
        path = path.decode()
    if not os.path.isfile(path):
        raise ValueError(f"server_public_key must be a 40-character Z85 key or a certificate file, "
                         f"got {key!r}")
    public, _ = zmq.auth.load_certificate(path)
    return public


@dataclasses.dataclass
class _Pending:
    op: str
    deadline: float          # monotonic time after which the request fails with timeout


class BridgeClient:
    """DEALER client. Not thread-safe: use one client per thread (Blender: the main thread)."""

    def __init__(self, address: str = DEFAULT_ADDRESS, *, server_public_key: bytes | str | os.PathLike | None = None,
                 client_public_key: bytes | str | None = None, client_secret_key: bytes | str | None = None,
                 timeout_s: float = 10.0, heartbeat_s: float = 1.0, max_message_bytes: int = 1 << 30) -> None:
        from bridge.wire.keys import check_z85_key

        self.address = address
        self.timeout_s = float(timeout_s)
        self.heartbeat_s = float(heartbeat_s)
        self.max_message_bytes = int(max_message_bytes)
        self._server_key = load_public_key(server_public_key) if server_public_key else None
        if (client_public_key is None) != (client_secret_key is None):
            raise ValueError("pass both client_public_key and client_secret_key, or neither")
        self._client_keys: tuple[bytes, bytes] | None = None
        if client_public_key is not None and client_secret_key is not None:
            public, secret = check_z85_key(client_public_key), check_z85_key(client_secret_key)
            if zmq.curve_public(secret) != public:
                raise ValueError("client_public_key does not belong to client_secret_key")
            self._client_keys = (public, secret)
        self._context = zmq.Context()
        self._socket: zmq.Socket | None = None
        self._pending: dict[str, _Pending] = {}
        self._backlog: list[Reply] = []          # replies read by call() that poll() has not returned yet
        self._tracked: list[tuple[zmq.MessageTracker, list[Any]]] = []
        self._last_heard = 0.0                   # monotonic time of the last message from the server
        self._last_ping = 0.0
        self._quiet_since = time.monotonic()     # start of the current stretch with no server message
        self._connect()

    # ------------------------------------------------------------------ socket
    def _connect(self) -> None:
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVTIMEO, max(1, int(self.timeout_s * 1000)))
        sock.setsockopt(zmq.ROUTING_ID, bytes([1 + os.urandom(1)[0] % 255]) + os.urandom(15))
        if "[" in self.address:
            sock.setsockopt(zmq.IPV6, 1)
        if self._server_key is not None:
            public, secret = self._client_keys or zmq.curve_keypair()
            sock.curve_publickey, sock.curve_secretkey = public, secret
            sock.curve_serverkey = self._server_key
        sock.connect(self.address)
        self._socket = sock
        self._quiet_since = time.monotonic()

    def _reconnect(self) -> None:
        log.info("no reply from %s for %.1f s; reconnecting", self.address, self.timeout_s)
        self._release_tracked(wait_s=0.0)
        if self._socket is not None:
            self._socket.close(0)
        self._tracked.clear()
        self._connect()

    def close(self) -> None:
        """Close the socket; waits up to 1 s for zero-copy sends still in progress."""
        if self._socket is None:
            return
        self._release_tracked(wait_s=1.0)
        self._socket.close(0)
        self._tracked.clear()
        self._socket = None
        self._context.term()

    def __enter__(self) -> "BridgeClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _release_tracked(self, wait_s: float) -> None:
        end = time.monotonic() + wait_s
        for tracker, _ in self._tracked:
            left = end - time.monotonic()
            if left <= 0:
                break
            try:
                tracker.wait(left)
            except zmq.NotDone:
                break
        self._tracked = [(t, refs) for t, refs in self._tracked if not t.done]

    @property
    def connected(self) -> bool:
        """True when the server has said anything within the last timeout_s."""
        return self._last_heard > 0 and time.monotonic() - self._last_heard < self.timeout_s

    @property
    def pending(self) -> list[str]:
        """Ids of the requests that have not had their result or error yet."""
        return list(self._pending)

    # ------------------------------------------------------------------ sending
    def submit(self, request: Request, arrays: dict[str, np.ndarray] | None = None) -> str:
        """Send a request without waiting; returns its id (a new uuid4 hex when request.id is empty).
        Replies arrive through poll(). Raises ProtocolError when the request cannot be encoded."""
        if self._socket is None:
            raise RuntimeError("the client is closed")
        if not request.id:
            request = dataclasses.replace(request, id=uuid.uuid4().hex)
        frames = encode(request_header(request), arrays)
        size = sum(len(memoryview(f)) for f in frames)
        if size > self.max_message_bytes:
            raise ProtocolError(protocol.E_TOO_LARGE, f"{request.op} request is {size} bytes, the limit is "
                                f"{self.max_message_bytes}", request.id)
        if not self._pending:  # the server's silence counts only while we wait for it
            self._quiet_since = time.monotonic()
        self._pending[request.id] = _Pending(request.op, time.monotonic() + self.timeout_s)
        try:
            if len(frames) > 1:
                tracker = self._socket.send_multipart(frames, zmq.NOBLOCK, copy=False, track=True)
                self._tracked.append((tracker, [frames, arrays]))
            else:
                self._socket.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            self._pending.pop(request.id, None)
            self._backlog.append(_error_reply(request.id, protocol.E_TIMEOUT,
                                              f"cannot send {request.op} to {self.address}: send queue full"))
        self._tracked = [(t, refs) for t, refs in self._tracked if not t.done]
        return request.id

    def cancel(self, request_id: str) -> str:
        """Ask the server to cancel a request; returns the cancel request's own id. The cancelled request
        ends with `error cancelled` (or its result, if it finished first)."""
        return self.submit(protocol.Cancel(target=request_id))

    def _keepalive(self, now: float) -> None:
        if now - self._last_ping < self.heartbeat_s or self._socket is None:
            return
        self._last_ping = now
        header = request_header(protocol.Ping(id=_KEEPALIVE_PREFIX + uuid.uuid4().hex[:12]))
        try:
            self._socket.send_multipart(encode(header), zmq.NOBLOCK)
        except zmq.Again:
            pass

    # ------------------------------------------------------------------ receiving
    def poll(self, timeout_ms: int = 0) -> list[Reply]:
        """Every reply that has arrived, without blocking longer than timeout_ms (0: not at all).
        Also returns `error timeout` for requests whose server went silent for timeout_s."""
        out, self._backlog = self._backlog, []
        if self._socket is None:
            return out
        if timeout_ms > 0 and not out:
            self._socket.poll(timeout_ms, zmq.POLLIN)
        for _ in range(_MAX_DRAIN):
            try:
                frames = self._socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            reply = self._on_frames(frames)
            if reply is not None:
                out.append(reply)
        out.extend(self._check_timeouts())
        return out

    def _on_frames(self, frames: list[zmq.Frame]) -> Reply | None:
        now = time.monotonic()
        self._last_heard = now
        self._quiet_since = now
        try:
            header, arrays = decode(frames, self.max_message_bytes)
        except ProtocolError as exc:
            log.warning("undecodable message from %s: %s", self.address, exc)
            if exc.request_id in self._pending:
                self._pending.pop(exc.request_id)
                return _error_reply(exc.request_id, exc.code, f"bad reply from the server: {exc.message}")
            return None
        rid, kind = header["id"], header.get("kind", "")
        if kind == "heartbeat":
            for job_id in header.get("jobs", []) if isinstance(header.get("jobs"), list) else []:
                if job_id in self._pending:
                    self._pending[job_id].deadline = now + self.timeout_s
            return None
        if rid.startswith(_KEEPALIVE_PREFIX):
            return None
        pending = self._pending.get(rid)
        if pending is None:
            return None  # a late reply to a request that already timed out or was cancelled
        if kind in ("result", "error"):
            del self._pending[rid]
        else:
            pending.deadline = now + self.timeout_s
        return Reply(rid, kind, header, arrays)

    def _check_timeouts(self) -> list[Reply]:
        if not self._pending:
            return []
        now = time.monotonic()
        self._keepalive(now)
        expired = [rid for rid, p in self._pending.items() if now > p.deadline]
        server_silent = now - self._quiet_since > self.timeout_s
        if server_silent:
            expired = list(self._pending)
        out = []
        for rid in expired:
            p = self._pending.pop(rid)
            out.append(_error_reply(rid, protocol.E_TIMEOUT, f"no reply from {self.address} to {p.op} {rid!r} "
                                    f"within {self.timeout_s:g} s"))
        if server_silent and out:
            self._reconnect()
        return out

    # ------------------------------------------------------------------ blocking convenience
    def call(self, request: Request, arrays: dict[str, np.ndarray] | None = None, timeout_s: float | None = None,
             on_progress: Callable[[Reply], None] | None = None) -> Reply:
        """Submit and wait for the result. Raises BridgeError on an error reply, on a liveness timeout, or
        when timeout_s (total, optional) passes (the request is then cancelled). Replies to other requests
        that arrive meanwhile stay queued for poll()."""
        rid = self.submit(request, arrays)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        others: list[Reply] = []
        try:
            while True:
                if deadline is not None and time.monotonic() > deadline:
                    if rid in self._pending:
                        self.cancel(rid)
                        self._pending.pop(rid, None)
                    raise BridgeError(protocol.E_TIMEOUT, f"{request.op} {rid!r} did not finish within {timeout_s:g} s")
                wait = 100 if deadline is None else max(1, min(100, int((deadline - time.monotonic()) * 1000)))
                for reply in self.poll(wait):
                    if reply.id != rid:
                        others.append(reply)
                    elif reply.kind == "result":
                        return reply
                    elif reply.kind == "error":
                        raise BridgeError(reply.code, reply.message)
                    elif reply.kind == "progress" and on_progress is not None:
                        on_progress(reply)
        finally:
            self._backlog = others + self._backlog
