"""The bound motion baked into an action, a few frames per `bpy.app.timers` tick, so the UI never freezes.

    bake = start_bake(avatar, 1, 2500, scene)     # returns at once; Blender's timer runs bake.tick
    bake.progress, bake.state                     # 0..1; "running" | "done" | "cancelled" | "failed"
    cancel_bake(avatar)                           # or bake.cancel(); the avatar is as before the bake

`MotionBake` has two phases. Solving: `step(budget_s)` steps the scene through frames until budget_s of
work is spent, runs the binding's solver on each (`binding.solved_channels`) and keeps the pose channels
in numpy arrays; nothing is written to the avatar. Writing: `finish()` turns the arrays into an action in one
go (`write_action`), and on any error removes what it had made and gives the avatar its earlier action back.
So a bake that is cancelled or fails part-way leaves no half-baked action, and the avatar keeps the motion
it had. While a bake runs, the scene's frame is put back after every tick, and the avatar splat meshes stay
hidden in the viewport (their evaluation would cost more than the solve on each stepped frame); `cancel`,
a failure and `finish` show them again.

Background mode (`blender -b`, bpy as a module) runs no timers: there `bake_motion` (binding.py) bakes at
once, and the operators call it. Tests drive a timer bake by calling `bake.tick()` as Blender would
(`tick` is the callback start_bake registers; it returns the next interval, or None when the bake ended,
and unregisters itself if it was registered).
"""
from __future__ import annotations

import time
from typing import Callable

import bpy
import numpy as np

from . import binding

BAKE_TICK_S = 0.05  # seconds of solving per timer tick (a frame takes ~10-20 ms): the UI redraws between ticks
_LINEAR = 1  # Keyframe.interpolation's enum value of 'LINEAR' (CONSTANT 0, LINEAR 1, BEZIER 2)
_bakes: dict[int, "MotionBake"] = {}  # avatar session_uid -> its running timer bake


class MotionBake:
    """The bake of `avatar`'s bound motion over [frame_start, frame_end] (module docstring)."""

    def __init__(self, avatar: bpy.types.Object, frame_start: int, frame_end: int,
                 scene: bpy.types.Scene | None = None,
                 on_done: Callable[[bpy.types.Action | None], None] | None = None,
                 on_error: Callable[[str], None] | None = None) -> None:
        if avatar.genlca.source_armature is None:
            raise ValueError(f"avatar {avatar.name!r} is not bound: bind it before baking its motion")
        if frame_end < frame_start:
            raise ValueError(f"expected frame_start <= frame_end, got {frame_start}..{frame_end}")
        self.avatar, self.scene = avatar, scene or bpy.context.scene
        self.frames = np.arange(int(frame_start), int(frame_end) + 1)
        self.names = binding.joint_names(avatar)
        count = len(self.names)
        self.location = np.zeros((len(self.frames), count, 3))
        self.rotation = np.zeros((len(self.frames), count, 4))
        self.scale = np.ones((len(self.frames), count))
        self.solved = 0  # frames solved so far
        self.state = "running"
        self.error = ""
        self.action: bpy.types.Action | None = None
        self.on_done, self.on_error = on_done, on_error
        self._hidden: list[bpy.types.Object] = []
        self._callback = self.tick  # one bound-method object: bpy.app.timers compares callbacks by identity

    @property
    def progress(self) -> float:
        return self.solved / len(self.frames)

    # ---------------------------------------------------------------- solving
    def _hide_splats(self) -> None:
        if not self._hidden:
            self._hidden = [o for o in self.scene.objects
                            if o.type == "MESH" and "genlca_avatar_id" in o and not o.hide_viewport]
            for o in self._hidden:
                o.hide_viewport = True

    def _show_splats(self) -> None:
        for o in self._hidden:
            try:
                o.hide_viewport = False
            except ReferenceError:  # deleted while the bake ran
                pass
        self._hidden = []

    def step(self, budget_s: float | None = None) -> bool:
        """Solve frames until budget_s seconds were spent (None: all of them); True when every frame is
        solved. The scene's frame is put back before it returns."""
        current = self.scene.frame_current
        self._hide_splats()
        binding._reading_pose += 1
        start = time.perf_counter()
        try:
            while self.solved < len(self.frames):
                self.scene.frame_set(int(self.frames[self.solved]))
                channels = binding.solved_channels(self.avatar, bpy.context.evaluated_depsgraph_get())
                if channels is None:
                    raise ValueError(f"avatar {self.avatar.name!r} has no bone of its map on its source armature")
                i = self.solved
                self.location[i], self.rotation[i], self.scale[i] = channels
                self.solved += 1
                if budget_s is not None and time.perf_counter() - start >= budget_s:
                    break
        finally:
            binding._reading_pose -= 1
            self.scene.frame_set(current)
        return self.solved == len(self.frames)

    # ---------------------------------------------------------------- writing
    def finish(self) -> bpy.types.Action | None:
        """Write the solved frames as the avatar's action (replacing its earlier baked one); returns it, None
        when no channel moves (the pose is set). All or nothing."""
        if self.solved != len(self.frames):
            raise RuntimeError(f"{len(self.frames) - self.solved} frames are not solved yet")
        self._show_splats()
        ad = self.avatar.animation_data
        previous = ad.action if ad is not None else None
        try:
            self.action = write_action(self.avatar, self.names, self.frames, self.location, self.rotation,
                                       self.scale)
        except BaseException:
            if self.avatar.animation_data is not None:
                self.avatar.animation_data.action = previous
            raise
        if previous is not None and previous != self.action and previous.get(binding.MOTION_KEY):
            if self.action is None:  # a still pose replaces the earlier baked motion
                self.avatar.animation_data.action = None
            if previous.users == 0:
                bpy.data.actions.remove(previous)
        self.avatar[binding.BAKED_KEY] = [int(self.frames[0]), int(self.frames[-1])]
        self.state = "done"
        return self.action

    def run(self) -> bpy.types.Action | None:
        """The whole bake now (background mode, scripts, `binding.bake_motion`)."""
        try:
            self.step(None)
        finally:
            self._show_splats()
        return self.finish()

    # ---------------------------------------------------------------- the timer
    def tick(self) -> float | None:
        """The bpy.app.timers callback: one step of BAKE_TICK_S; the last one writes the action."""
        if self.state != "running":
            return self._ended()
        try:
            self.avatar.name  # noqa: B018  (ReferenceError when the avatar was deleted)
            if self.step(BAKE_TICK_S):
                self.finish()
                if self.on_done is not None:
                    self.on_done(self.action)
                return self._ended()
        except Exception as exc:  # noqa: BLE001  (a timer must not raise: report and end)
            self._fail(f"{type(exc).__name__}: {exc}")
            return self._ended()
        _redraw()
        return 0.0

    def cancel(self) -> None:
        """Stop; the avatar keeps what it had before the bake (its action, its pose channels)."""
        if self.state == "running":
            self.state = "cancelled"
            self._show_splats()
            self._ended()

    def _fail(self, message: str) -> None:
        self.state, self.error = "failed", message
        self._show_splats()
        print(f"GenLCA: the motion bake failed: {message}")
        if self.on_error is not None:
            self.on_error(message)

    def _ended(self) -> None:  # returns None: a timer callback's "do not call again"
        for key, bake in list(_bakes.items()):
            if bake is self:
                del _bakes[key]
        if bpy.app.timers.is_registered(self._callback):
            bpy.app.timers.unregister(self._callback)
        _redraw()
        return None


def write_action(avatar: bpy.types.Object, names: list[str], frames: np.ndarray, location: np.ndarray,
                 rotation: np.ndarray, scale: np.ndarray) -> bpy.types.Action | None:
    """Pose channels over frames -> a new action on `avatar` (one linear key per frame; channels that move
    less than binding.CONSTANT_TOLERANCE get their value and no F-curve). location (F, J, 3), rotation
    (F, J, 4) wxyz, scale (F, J). A failure part-way removes the new action and raises."""
    rotation = rotation.copy()
    # one hemisphere from frame to frame: linear keys between q and -q would pass through zero
    flip = np.einsum("fjc,fjc->fj", rotation[1:], rotation[:-1]) < 0.0
    sign = np.concatenate([np.ones((1, len(names))), np.where(np.cumsum(flip, axis=0) % 2 == 1, -1.0, 1.0)])
    rotation *= sign[..., None]
    channels = {"location": location, "rotation_quaternion": rotation,
                "scale": np.repeat(scale[..., None], 3, axis=-1)}
    bones = avatar.pose.bones
    for pb in bones:
        pb.rotation_mode = "QUATERNION"
    action = None
    keyed = np.asarray(frames, np.float64)
    try:
        for j, name in enumerate(names):
            pb = bones[name]
            for path, values in channels.items():
                series = values[:, j, :]  # (F, C)
                setattr(pb, path, series[0].tolist())
                for c in range(series.shape[1]):
                    if np.ptp(series[:, c]) <= binding.CONSTANT_TOLERANCE:
                        continue
                    if action is None:
                        action = bpy.data.actions.new(f"{avatar.name} motion")
                        action[binding.MOTION_KEY] = True
                        ad = avatar.animation_data or avatar.animation_data_create()
                        ad.action = action
                    curve = binding._new_fcurve(action, avatar, f'pose.bones["{name}"].{path}', c, name)
                    points = curve.keyframe_points
                    points.add(len(keyed))
                    points.foreach_set("co", np.column_stack([keyed, series[:, c]]).astype(np.float32).ravel())
                    points.foreach_set("interpolation", np.full(len(keyed), _LINEAR, np.int32))
                    curve.update()
    except BaseException:
        if action is not None:
            if avatar.animation_data is not None and avatar.animation_data.action == action:
                avatar.animation_data.action = None
            bpy.data.actions.remove(action)
        raise
    return action


def start_bake(avatar: bpy.types.Object, frame_start: int, frame_end: int, scene: bpy.types.Scene | None = None,
               on_done: Callable[[bpy.types.Action | None], None] | None = None,
               on_error: Callable[[str], None] | None = None) -> MotionBake:
    """Begin a timer bake of `avatar` (a running one of the same avatar is cancelled first)."""
    cancel_bake(avatar)
    bake = MotionBake(avatar, frame_start, frame_end, scene, on_done, on_error)
    _bakes[avatar.session_uid] = bake
    bpy.app.timers.register(bake._callback, first_interval=0.0)
    return bake


def running_bake(avatar: bpy.types.Object | None) -> MotionBake | None:
    return None if avatar is None else _bakes.get(avatar.session_uid)


def cancel_bake(avatar: bpy.types.Object) -> bool:
    """Cancel `avatar`'s running bake; True if there was one."""
    bake = _bakes.get(avatar.session_uid)
    if bake is None:
        return False
    bake.cancel()
    return True


def cancel_all() -> None:
    for bake in list(_bakes.values()):
        bake.cancel()


def _redraw() -> None:
    """The panels show a bake's progress: ask the 3D views to redraw (none in background mode)."""
    wm = bpy.context.window_manager
    for window in getattr(wm, "windows", []):
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()
