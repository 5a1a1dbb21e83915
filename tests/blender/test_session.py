"""The session against real sockets: an absent backend and a silent one fail with a clear message within
the timeout, and no pump blocks the main thread for more than 100 ms."""
from __future__ import annotations

import time

import bpy
import pytest

from .conftest import ADDON_MODULE, addon_module, free_port, pump_until

MAX_PUMP_S = 0.1


@pytest.fixture
def client_available(addon):
    try:
        addon_module("_bridge").client_module()
    except ImportError as exc:
        pytest.skip(f"bridge/client.py is not available yet: {exc}")


@pytest.fixture
def prefs(addon):
    p = bpy.context.preferences.addons[ADDON_MODULE].preferences
    saved = (p.backend_address, p.timeout_s)
    yield p
    p.backend_address, p.timeout_s = saved
    addon_module("session").close_session()


def test_absent_backend_reports_within_the_timeout(scene, prefs, client_available):
    session_mod, jobs = addon_module("session"), addon_module("jobs")
    prefs.backend_address, prefs.timeout_s = f"tcp://127.0.0.1:{free_port()}", 1.0
    session = session_mod.get_session()
    errors: list[tuple[str, str]] = []
    start = time.monotonic()
    jobs.hello(session, scene, on_error=lambda code, msg: errors.append((code, msg)))
    pumps: list[float] = []
    pump_until(session, lambda: bool(errors), timeout_s=3.0, max_pump=pumps)
    elapsed = time.monotonic() - start
    code, message = errors[0]
    assert code == "timeout" and prefs.backend_address in message and "is it running" in message
    assert 1.0 <= elapsed < 2.0
    assert scene.genlca.message_is_error and prefs.backend_address in scene.genlca.message
    assert not scene.genlca.connected
    assert max(pumps) < MAX_PUMP_S


def test_silent_backend_times_out_and_cancel_works(scene, prefs, client_available):
    """A real ROUTER socket that takes requests and never answers (a hung or dead backend)."""
    import zmq
    session_mod, jobs = addon_module("session"), addon_module("jobs")
    port = free_port()
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(f"tcp://127.0.0.1:{port}")
    try:
        prefs.backend_address, prefs.timeout_s = f"tcp://127.0.0.1:{port}", 1.0
        session = session_mod.get_session()
        scene.genlca.prompt = "a person in a red coat"
        errors: list[str] = []
        start = time.monotonic()
        job = jobs.generate(session, scene, on_error=lambda code, msg: errors.append(code))
        pumps: list[float] = []
        pump_until(session, lambda: bool(errors), timeout_s=3.0, max_pump=pumps)
        assert errors == ["timeout"] and time.monotonic() - start < 2.0
        assert router.poll(100), "the request never reached the socket"
        assert job not in session.jobs
        # cancel: the job ends at once, with a warning rather than an error
        prefs.timeout_s = 30.0
        session = session_mod.get_session()
        cancelled: list[str] = []
        job = jobs.generate(session, scene, on_error=lambda code, msg: cancelled.append(code))
        assert bpy.ops.genlca.cancel.poll()
        assert bpy.ops.genlca.cancel() == {"FINISHED"}
        assert cancelled == ["cancelled"] and not session.busy
        assert max(pumps) < MAX_PUMP_S
    finally:
        router.close(0)


def test_operators_explain_why_they_are_disabled(scene):
    assert not bpy.ops.genlca.generate.poll()
    assert not bpy.ops.genlca.edit.poll()
    assert not bpy.ops.genlca.render.poll()
    assert not bpy.ops.genlca.cancel.poll()
    scene.genlca.prompt = "an old sailor"
    assert bpy.ops.genlca.generate.poll()
