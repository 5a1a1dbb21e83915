"""Jobs of the backend service: the bounded queue, the context a handler runs with, and the worker.

One compute worker thread runs the jobs one at a time (the models share one GPU). It never touches the
ROUTER socket: everything a job says (progress, result, error) goes through the worker's own inproc PUSH
socket to the I/O thread (backend.service.server), which owns the ROUTER. zmq sockets are not thread-safe, so
each socket here is created and used by exactly one thread.

Worker -> I/O thread message: [b"more" | b"final", identity, request id (utf-8), header, array frames...];
"final" tells the I/O thread that the job is over.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
import traceback
from typing import Any, Callable

import numpy as np
import zmq

from bridge.wire import protocol
from bridge.wire.codec import ProtocolError, encode
from bridge.wire.protocol import PROTOCOL_VERSION, Request

log = logging.getLogger("genlca.backend")

MORE, FINAL = b"more", b"final"


class HandlerError(Exception):
    """Raised by a handler to end its job with `error {code, message}` (code from bridge.wire.protocol)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class JobCancelled(Exception):
    """Raised inside a handler (by JobContext.progress / check_cancelled) once its job is cancelled."""


Handler = Callable[[Request, dict[str, np.ndarray], "JobContext"], tuple[dict[str, Any], dict[str, np.ndarray]]]


@dataclasses.dataclass(eq=False)
class Job:
    """One queued or running request. Created and indexed by the I/O thread; run by the worker."""

    identity: bytes
    request: Request
    arrays: dict[str, np.ndarray]
    handler: Handler
    conn: Any = None                 # the connection that sent it (backend.service.server.Connection); None: inproc
    user: str = ""                   # under CURVE the sender's public key (the ZAP User-Id), else ""
    frames: list[Any] = dataclasses.field(default_factory=list)   # keeps the received frames alive
    nbytes: int = 0                  # bytes of the request's frames (the server's queued-bytes budget)
    cancel_event: threading.Event = dataclasses.field(default_factory=threading.Event)
    state: str = "queued"            # queued | running | done (I/O thread's view)
    created: float = dataclasses.field(default_factory=time.monotonic)

    @property
    def key(self) -> tuple[bytes, str]:
        return (self.identity, self.request.id)

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()


class QueueFull(Exception):
    pass


class JobQueue:
    """A bounded FIFO of jobs from which a cancelled job can be removed at once (queue.Queue cannot)."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"queue size must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self._items: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()

    def put(self, job: Job) -> int:
        """Append; returns the job's position (0 = next). Raises QueueFull."""
        with self._cond:
            if len(self._items) >= self.maxsize:
                raise QueueFull
            self._items.append(job)
            self._cond.notify()
            return len(self._items) - 1

    def get(self, timeout: float) -> Job | None:
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            return self._items.popleft() if self._items else None

    def remove(self, job: Job) -> bool:
        with self._cond:
            try:
                self._items.remove(job)
                return True
            except ValueError:
                return False

    def drain(self) -> list[Job]:
        with self._cond:
            items = list(self._items)
            self._items.clear()
            return items

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


def reply_header(request_id: str, kind: str, **fields: Any) -> dict[str, Any]:
    return {**fields, "v": PROTOCOL_VERSION, "id": request_id, "kind": kind}


def error_header(request_id: str, code: str, message: str) -> dict[str, Any]:
    return reply_header(request_id, "error", code=code, message=message)


class JobContext:
    """What a handler gets besides its request and arrays: progress reporting and cancellation.

    `progress(...)` streams a `progress` reply (in order, before the result); its arrays are copied, so
    the handler may reuse its buffers. Both `progress` and `check_cancelled` raise JobCancelled once the
    job is cancelled (by the client, or because the client went away): call one of them at least every
    few hundred milliseconds of work so that a cancel takes effect within a second.
    """

    def __init__(self, job: Job,
                 send: Callable[[bytes, Job, dict[str, Any], dict[str, np.ndarray] | None, bool], None]) -> None:
        self._job = job
        self._send = send

    @property
    def request_id(self) -> str:
        return self._job.request.id

    @property
    def cancelled(self) -> bool:
        return self._job.cancelled

    def check_cancelled(self) -> None:
        if self._job.cancelled:
            raise JobCancelled(self.request_id)

    def progress(self, stage: str, step: int, total: int, arrays: dict[str, np.ndarray] | None = None,
                 **fields: Any) -> None:
        self.check_cancelled()
        header = reply_header(self.request_id, "progress", **fields, stage=str(stage), step=int(step),
                              total=int(total))
        copied = {k: np.array(v, copy=True) for k, v in arrays.items()} if arrays else None
        self._send(MORE, self._job, header, copied, True)   # private copies: safe to send without another


class Worker(threading.Thread):
    """The compute thread: takes jobs from the queue and runs their handlers, one at a time."""

    def __init__(self, context: zmq.Context, outbox_address: str, jobs: JobQueue) -> None:
        super().__init__(name="genlca-worker", daemon=True)
        self._context = context
        self._outbox_address = outbox_address
        self._jobs = jobs
        self._halt = threading.Event()
        self._push: zmq.Socket | None = None
        self.current: Job | None = None

    def stop(self) -> None:
        self._halt.set()
        job = self.current
        if job is not None:
            job.cancel_event.set()

    def _send(self, tag: bytes, job: Job, header: dict[str, Any], arrays: dict[str, np.ndarray] | None,
              zero_copy: bool) -> None:
        assert self._push is not None and threading.current_thread() is self, "only the worker thread sends"
        try:
            frames = encode(header, arrays)
        except ProtocolError as exc:
            if tag == FINAL:  # a result the wire cannot carry: report it instead of losing the job
                frames = encode(error_header(job.request.id, protocol.E_INTERNAL,
                                             f"the {job.request.op} result cannot be encoded: {exc.message}"))
            else:
                raise
        self._push.send_multipart([tag, job.identity, job.request.id.encode(), *frames], copy=not zero_copy)

    def run(self) -> None:
        self._push = self._context.socket(zmq.PUSH)
        self._push.setsockopt(zmq.LINGER, 0)
        self._push.setsockopt(zmq.SNDHWM, 0)
        self._push.connect(self._outbox_address)
        try:
            while not self._halt.is_set():
                job = self._jobs.get(timeout=0.1)
                if job is None or job.cancelled:
                    continue
                self.current = job
                try:
                    self._run(job)
                finally:
                    self.current = None
        finally:
            self._push.close(0)

    def _run(self, job: Job) -> None:
        request = job.request
        ctx = JobContext(job, self._send)
        try:
            fields, arrays = job.handler(request, job.arrays, ctx)
            if job.cancelled:
                raise JobCancelled(request.id)
            self._send(FINAL, job, reply_header(request.id, "result", **(fields or {})), arrays or None, True)
        except JobCancelled:
            self._send(FINAL, job, error_header(request.id, protocol.E_CANCELLED, f"{request.op} {request.id!r} "
                                                f"was cancelled"), None, False)
        except HandlerError as exc:
            self._send(FINAL, job, error_header(request.id, exc.code, exc.message), None, False)
        except ProtocolError as exc:   # a handler checked its arrays with bridge.wire.codec.bad_array
            self._send(FINAL, job, error_header(request.id, exc.code, exc.message), None, False)
        except Exception as exc:  # a bug in a handler ends its job, never the server
            log.error("%s %r failed:\n%s", request.op, request.id, traceback.format_exc())
            self._send(FINAL, job, error_header(request.id, protocol.E_INTERNAL,
                                                f"{request.op} failed: {type(exc).__name__}: {exc}"), None, False)
        finally:
            job.arrays = {}
            job.frames = []
