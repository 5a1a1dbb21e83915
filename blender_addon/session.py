"""The connection to the backend and the table of jobs in flight, pumped from a `bpy.app.timers` callback.

Only the main thread touches `bpy`: the timer drains the socket without blocking (`client.poll(0)`),
hands each reply to its job's callbacks, and runs main-thread tasks (avatar import, pose collection) in
slices of a few milliseconds. Liveness is the client's: a request that hears nothing (no reply, no
heartbeat listing it) for `timeout_s` comes back as `error timeout`, which the session turns into a
message that names the address. Callbacks never raise into Blender: an
exception becomes the job's error message (the traceback goes to the console only). With a server key the
connection is CURVE with the add-on's one persistent client keypair (keys.py), so the backend's allow-list
of client keys can admit this Blender.
"""
from __future__ import annotations

import collections
import dataclasses
import time
import traceback
from typing import Any, Callable, Iterator

import bpy

from . import keys
from ._bridge import client_module, protocol

TIMER_INTERVAL_S = 0.05
PUMP_BUDGET_S = 0.03  # main-thread time one pump may spend on replies and tasks before yielding
# The work one pump may do, whatever the clock says (tests check these, not milliseconds): replies beyond
# this wait in the session's inbox for the next pump, and each task advances at most this many slices.
MAX_REPLIES_PER_PUMP = 16
MAX_SLICES_PER_PUMP = 16


@dataclasses.dataclass
class PumpStats:
    """What one pump did: replies dispatched, task slices advanced, array bytes handed to callbacks."""

    replies: int = 0
    slices: int = 0
    reply_bytes: int = 0
    seconds: float = 0.0  # for the status line and benchmarks; tests do not assert on it

ResultCallback = Callable[[Any], None]            # a reply with .header and .arrays
ErrorCallback = Callable[[str, str], None]        # code, message
ProgressCallback = Callable[[Any], None]


@dataclasses.dataclass
class Job:
    """One request in flight, or one main-thread task (avatar import, pose collection)."""

    id: str
    label: str
    scene_name: str = ""
    on_result: ResultCallback | None = None
    on_error: ErrorCallback | None = None
    on_progress: ProgressCallback | None = None
    task: Iterator[Any] | None = None   # main-thread work, advanced one slice per step
    last_heard: float = dataclasses.field(default_factory=time.monotonic)
    stage: str = "queued"
    step: int = 0
    total: int = 0
    done: bool = False
    error: str = ""

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total) if self.total > 0 else 0.0


class Session:
    """Owns one BridgeClient and the jobs sent through it."""

    def __init__(self, address: str, server_public_key: str | None = None, timeout_s: float = 30.0,
                 client_keypair: tuple[str, str] | None = None):
        """client_keypair: (public, secret) Z85 of this client, used with a server key (CURVE); default: the
        add-on's persistent pair (keys.client_keypair), so a backend's allow-list can name this Blender."""
        self.address = address
        self.server_public_key = server_public_key or None
        self.timeout_s = float(timeout_s)
        try:
            client_cls = client_module().BridgeClient
        except ImportError as exc:
            raise RuntimeError(f"the GenLCA bridge cannot load ({exc}); reinstall the extension so that its "
                               f"bundled pyzmq and msgpack wheels are installed") from None
        curve = {}
        if self.server_public_key:
            public, secret = client_keypair or keys.client_keypair()
            curve = {"client_public_key": public, "client_secret_key": secret}
        self.client = client_cls(address, server_public_key=self.server_public_key, timeout_s=self.timeout_s,
                                 **curve)
        self.jobs: dict[str, Job] = {}
        self._task_seq = 0
        self._inbox: collections.deque = collections.deque()  # replies polled but not dispatched yet
        # what the backend says it generates with (hello, or a result's meta.generator); "" until it says
        self.generator = ""
        self.generator_inputs: tuple[str, ...] | None = None  # the inputs it uses, when it lists them
        self.model: dict = {}  # hello's `model` (name, version, sha256, resolution, ...); {} until it says
        self.max_pump_s = 0.0   # longest pump so far (the status line and benchmarks read it)
        self.last_pump = PumpStats()

    # -------------------------------------------------------------- jobs
    def submit(self, request: protocol.Request, arrays: dict | None = None, *, label: str, scene_name: str = "",
               on_result: ResultCallback | None = None, on_error: ErrorCallback | None = None,
               on_progress: ProgressCallback | None = None) -> str:
        job_id = self.client.submit(request, arrays=arrays)
        self.jobs[job_id] = Job(job_id, label, scene_name, on_result, on_error, on_progress)
        ensure_timer()
        return job_id

    def add_task(self, task: Iterator[Any], *, label: str, scene_name: str = "",
                 on_error: ErrorCallback | None = None) -> str:
        """Main-thread work as a generator: each `next()` does one slice (< ~50 ms) and may yield
        (step, total) for the progress bar."""
        self._task_seq += 1
        job_id = f"task-{self._task_seq}"
        self.jobs[job_id] = Job(job_id, label, scene_name, on_error=on_error, task=task, stage=label)
        ensure_timer()
        return job_id

    def cancel(self, job_id: str) -> None:
        job = self.jobs.get(job_id)
        if job is None:
            return
        if job.task is None:
            try:
                self.client.cancel(job_id)
            except Exception:  # the job ends here whatever the socket says
                traceback.print_exc()
        self._fail(job, protocol.E_CANCELLED, f"{job.label} cancelled")

    def cancel_all(self) -> None:
        for job_id in list(self.jobs):
            self.cancel(job_id)

    @property
    def busy(self) -> bool:
        return bool(self.jobs) or bool(self._inbox)

    # -------------------------------------------------------------- pumping
    def pump(self, budget_s: float = PUMP_BUDGET_S) -> int:
        """Dispatch up to MAX_REPLIES_PER_PUMP replies and advance each task by up to MAX_SLICES_PER_PUMP
        slices, stopping early after ~budget_s; returns the number of events handled (stats in last_pump)."""
        start = time.monotonic()
        stats = PumpStats()
        if not self._inbox:
            self._inbox.extend(self.client.poll(timeout_ms=0))
        while self._inbox and stats.replies < MAX_REPLIES_PER_PUMP:
            reply = self._inbox.popleft()
            stats.replies += 1
            arrays = getattr(reply, "arrays", None) or {}
            stats.reply_bytes += sum(int(getattr(a, "nbytes", 0)) for a in arrays.values())
            self._dispatch(reply)
            if time.monotonic() - start > budget_s:
                break
        for job in [j for j in self.jobs.values() if j.task is not None]:
            slices = 0
            while not job.done and slices < MAX_SLICES_PER_PUMP and time.monotonic() - start <= budget_s:
                self._advance(job)
                slices += 1
            stats.slices += slices
        stats.seconds = time.monotonic() - start
        self.last_pump = stats
        self.max_pump_s = max(self.max_pump_s, stats.seconds)
        return stats.replies + stats.slices

    def _advance(self, job: Job) -> None:
        try:
            out = next(job.task)  # type: ignore[arg-type]
            if isinstance(out, tuple) and len(out) == 2:
                job.step, job.total = int(out[0]), int(out[1])
        except StopIteration:
            job.done = True
            self.jobs.pop(job.id, None)
        except Exception as exc:
            traceback.print_exc()
            self._fail(job, protocol.E_INTERNAL, f"{job.label} failed: {exc}")

    def _dispatch(self, reply: Any) -> None:
        kind = reply.kind
        if kind == "heartbeat":  # the client consumes them; kept for clients that pass them on
            return
        job = self.jobs.get(reply.id)
        if job is None:  # a reply to a job cancelled or timed out here
            return
        job.last_heard = time.monotonic()
        try:
            if kind == "accepted":
                job.stage = "accepted"
            elif kind == "progress":
                job.stage = getattr(reply, "stage", "") or reply.header.get("stage", "")
                job.step = int(getattr(reply, "step", None) or reply.header.get("step", 0) or 0)
                job.total = int(getattr(reply, "total", None) or reply.header.get("total", 0) or 0)
                if job.on_progress:
                    job.on_progress(reply)
            elif kind == "result":
                job.done = True
                self.jobs.pop(job.id, None)
                if job.on_result:
                    job.on_result(reply)
            elif kind == "error":
                code = getattr(reply, "code", None) or reply.header.get("code", protocol.E_INTERNAL)
                message = getattr(reply, "message", None) or reply.header.get("message", "")
                if code == protocol.E_TIMEOUT:  # raised by the client: no reply and no heartbeat in time
                    what = "did not answer" if job.stage == "queued" else "stopped answering"
                    message = (f"the GenLCA backend at {self.address} {what} within {self.timeout_s:g} s "
                               f"({job.label}); is it running? (Preferences > Add-ons > GenLCA)")
                else:
                    message = f"{job.label}: the backend says: {message} ({code})"
                self._fail(job, code, message)
        except Exception as exc:
            traceback.print_exc()
            self._fail(job, protocol.E_INTERNAL, f"{job.label} failed in Blender: {exc}")

    def _fail(self, job: Job, code: str, message: str) -> None:
        job.done, job.error = True, message
        self.jobs.pop(job.id, None)
        if job.on_error:
            try:
                job.on_error(code, message)
            except Exception:
                traceback.print_exc()

    def close(self) -> None:
        self.jobs.clear()
        self._inbox.clear()
        try:
            self.client.close()
        except Exception:
            traceback.print_exc()


# ------------------------------------------------------------------ the add-on's one session
_session: Session | None = None


def settings() -> dict[str, Any]:
    """The add-on preferences as plain values (defaults when the add-on is not registered)."""
    out: dict[str, Any] = {"address": "tcp://127.0.0.1:5555", "server_public_key": "", "timeout_s": 30.0,
                           "output_dir": ""}
    addon = bpy.context.preferences.addons.get(__package__)
    if addon is not None and addon.preferences is not None:
        p = addon.preferences
        out.update(address=p.backend_address, server_public_key=p.server_public_key, timeout_s=p.timeout_s,
                   output_dir=bpy.path.abspath(p.output_dir) if p.output_dir else "")
    return out


def get_session() -> Session:
    """The session for the current preferences (a new one when the address, key or timeout changed)."""
    global _session
    s = settings()
    key = (s["address"], s["server_public_key"] or None, float(s["timeout_s"]))
    if _session is not None and (_session.address, _session.server_public_key, _session.timeout_s) != key:
        close_session()
    if _session is None:
        _session = Session(*key)
    return _session


def current_session() -> Session | None:
    return _session


def close_session() -> None:
    """Close the socket and forget its jobs (their callbacks are not called)."""
    global _session
    if _session is not None:
        _session.close()
        _show_progress(_session)  # the panels stop showing the forgotten jobs
        _session = None


def _timer() -> float | None:
    session = _session
    if session is None:
        return None
    try:
        session.pump()
    except Exception:
        traceback.print_exc()
    _show_progress(session)
    return TIMER_INTERVAL_S if session.busy else None


def ensure_timer() -> None:
    if not bpy.app.timers.is_registered(_timer):
        bpy.app.timers.register(_timer, first_interval=0.0, persistent=True)


def stop_timer() -> None:
    if bpy.app.timers.is_registered(_timer):
        bpy.app.timers.unregister(_timer)


def _show_progress(session: Session) -> None:
    """Mirror the jobs into each scene's panel fields, the status bar and the window-manager cursor."""
    by_scene: dict[str, Job] = {}
    for job in session.jobs.values():
        by_scene.setdefault(job.scene_name, job)
    for scene in bpy.data.scenes:
        props = getattr(scene, "genlca", None)
        if props is None:
            continue
        job = by_scene.get(scene.name)
        stage = ""  # the stage and the sampler's step as it streams: "sample 3/25"
        if job is not None:
            stage = job.stage + (f" {job.step}/{job.total}" if job.total else "")
        values = ({"job_running": True, "job_label": job.label, "job_stage": stage, "job_progress": job.fraction}
                  if job is not None else {"job_running": False, "job_progress": 0.0})
        for name, value in values.items():
            if getattr(props, name) != value:  # write only changes: each write tags the scene for an update
                setattr(props, name, value)
    text = None
    if session.jobs:
        job = next(iter(session.jobs.values()))
        text = f"GenLCA: {job.label} — {job.stage}" + (f" {job.step}/{job.total}" if job.total else "")
    wm = bpy.context.window_manager
    for window in getattr(wm, "windows", []):
        try:
            window.workspace.status_text_set(text)
        except Exception:  # no UI (background mode) or a workspace without a status bar
            pass
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()


def notify(level: str, message: str) -> None:
    """Show a message from a callback as an operator report (Info editor, status bar)."""
    print(f"GenLCA {level}: {message}")
    try:
        bpy.ops.genlca.notify(level=level, message=message)
    except Exception:  # the add-on is not registered (plain-function use in tests)
        pass
