"""Render an avatar through the backend for the scene's frame range.

Three stages, none blocking the main thread for long: (1) a session task reads the avatar armature's
pose and the active camera frame by frame (a few frames per timer tick); (2) a `render` request carries
joint_rotations, root_translations, world_to_camera and intrinsics (bridge.wire.protocol.RENDER_ARRAYS), and
for an avatar fitted to another armature's proportions joint_locations and joint_scales
(RENDER_POSE_ARRAYS), so the frames show the proportions the viewport shows;
(3) each streamed frame (`progress`, stage "frame", array "rgba") is written atomically as a PNG in the
output folder. At the end the PNGs become an image sequence shown as the camera's background image.

Cameras are sent in avatar space (world_to_camera · avatar matrix_world), since the backend poses the
avatar at its own origin.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import bpy
import numpy as np

from . import binding, camera as camera_mod, export
from ._bridge import png, protocol

COLLECT_SLICE_S = 0.04  # main-thread time per timer tick spent reading poses


def frame_path(out_dir: str | os.PathLike, prefix: str, frame: int) -> Path:
    return Path(out_dir) / f"{prefix}{frame:04d}.png"


def write_frame(path: Path, rgba: np.ndarray) -> Path:
    """Atomic PNG write (fast zlib level: frames stream in while the user works)."""
    if rgba.dtype != np.uint8 or rgba.ndim != 3 or rgba.shape[2] != 4:
        raise ValueError(f"expected an RGBA frame (H, W, 4) uint8, got {rgba.shape} {rgba.dtype}")
    return export.write_atomic(path, png.encode_png(rgba, compress_level=1))  # exclusive temp file, rename


def show_as_background(scene: bpy.types.Scene, cam: bpy.types.Object, first: Path, frame_start: int,
                       frame_count: int) -> bpy.types.Image:
    """Load the PNG sequence (files numbered by scene frame) as the camera's background image."""
    image = bpy.data.images.load(str(first), check_existing=True)
    image.source = "SEQUENCE"
    image.reload()
    data = cam.data
    data.show_background_images = True
    slot = next((b for b in data.background_images if b.image == image), None) or data.background_images.new()
    slot.image = image
    slot.alpha = 1.0
    slot.display_depth = "FRONT"
    user = slot.image_user
    user.frame_start = frame_start
    user.frame_duration = frame_count
    user.frame_offset = frame_start - 1  # file number = scene frame
    user.use_auto_refresh = True
    return image


class RenderJob:
    """One render of `avatar` (armature object) through the scene camera over frames [start, end]."""

    def __init__(self, session, scene: bpy.types.Scene, avatar: bpy.types.Object, frame_start: int,
                 frame_end: int, out_dir: str | os.PathLike, background=(0.0, 0.0, 0.0),
                 on_done: Callable[[list[Path]], None] | None = None,
                 on_error: Callable[[str, str], None] | None = None):
        if frame_end < frame_start:
            raise ValueError(f"empty frame range {frame_start}..{frame_end}")
        avatar_id = avatar.get("genlca_avatar_id", "")
        if not avatar_id:
            raise ValueError(f"{avatar.name!r} is not a GenLCA avatar armature")
        camera_mod.camera_arrays(scene)  # fail now (no camera, not perspective), not in the timer
        scale = np.linalg.norm(np.array(avatar.matrix_world)[:3, :3], axis=0)
        if not np.allclose(scale, 1.0, atol=1e-4):
            raise ValueError(f"{avatar.name!r} is scaled by {np.round(scale, 4).tolist()}; the backend renders the "
                             f"avatar at its own size: apply the scale (Object > Apply > Scale) or reset it")
        self.session, self.scene_name, self.avatar_name = session, scene.name, avatar.name
        self.avatar_id = str(avatar_id)
        self.frame_start, self.frame_end = int(frame_start), int(frame_end)
        self.out_dir = Path(out_dir)
        self.prefix = f"genlca_{self.avatar_id[:8]}_"
        self.background = tuple(float(c) for c in background)
        self.on_done, self.on_error = on_done, on_error
        self.paths: list[Path] = []
        self.job_id = ""
        self.collect_id = session.add_task(self._collect(), label="render: reading poses",
                                           scene_name=scene.name, on_error=on_error)

    def _collect(self):
        """Session task: read pose and camera per frame, a slice of frames per tick, then submit."""
        scene = bpy.data.scenes[self.scene_name]
        avatar = bpy.data.objects[self.avatar_name]
        count = self.frame_end - self.frame_start + 1
        posed, w2c, ks = [], [], []
        current = scene.frame_current
        frames = binding.iter_pose_matrices(avatar, self.frame_start, self.frame_end, scene)
        try:
            tick = time.monotonic()
            for frame, matrices in frames:
                posed.append(matrices)
                placement = np.array(avatar.matrix_world, dtype=np.float64)  # avatar space -> world
                view, k = camera_mod.camera_arrays(scene)
                w2c.append(view @ placement)
                ks.append(k)
                if time.monotonic() - tick > COLLECT_SLICE_S:
                    yield len(posed), count
                    tick = time.monotonic()
        finally:
            frames.close()
            scene.frame_set(current)
        # joint_rotations (F, J, 4), root_translations (F, 3); with a fitted skeleton also joint_locations
        # (F, J, 3) and joint_scales (F, J)
        arrays = binding.pose_arrays(avatar, np.stack(posed))
        width, height = camera_mod.render_size(scene)
        arrays.update(world_to_camera=np.stack(w2c).astype(np.float32),          # (F, 4, 4)
                      intrinsics=np.stack(ks).astype(np.float32))                 # (F, 3, 3)
        request = protocol.Render(avatar_id=self.avatar_id, width=width, height=height, background=self.background)
        self.job_id = self.session.submit(request, arrays, label="render", scene_name=self.scene_name,
                                          on_result=self._on_result, on_error=self.on_error,
                                          on_progress=self._on_progress)
        yield count, count

    def _on_progress(self, reply) -> None:
        if reply.header.get("stage") != "frame" or "rgba" not in reply.arrays:
            return
        index = int(reply.header.get("frame", len(self.paths)))
        path = write_frame(frame_path(self.out_dir, self.prefix, self.frame_start + index), reply.arrays["rgba"])
        self.paths.append(path)

    def _on_result(self, reply) -> None:
        scene = bpy.data.scenes.get(self.scene_name)
        if self.paths and scene is not None and scene.camera is not None:
            first = frame_path(self.out_dir, self.prefix, self.frame_start)
            if first.exists():
                show_as_background(scene, scene.camera, first, self.frame_start, len(self.paths))
        if self.on_done:
            self.on_done(sorted(self.paths))

    def cancel(self) -> None:
        self.session.cancel(self.collect_id)
        if self.job_id:
            self.session.cancel(self.job_id)
