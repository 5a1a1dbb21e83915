"""Renders follow the armature: the splat centres are posed by binding's handlers (no Armature
modifier), so an animation render (Ctrl F12) must show each frame's pose. Cycles on the CPU, 32x32
pixels, 1 sample: each frame of the animation render equals a still render at that frame, and a root
that moves between the frames moves the splats in the picture."""
from __future__ import annotations

import bpy
import numpy as np

from ..synthetic_avatar import synthetic_avatar
from .conftest import addon_module

SIZE = 32


def load(path) -> np.ndarray:
    image = bpy.data.images.load(str(path))
    try:
        return np.array(image.pixels[:], np.float32).reshape(SIZE, SIZE, 4)
    finally:
        bpy.data.images.remove(image)


def test_animation_render_shows_each_frames_pose(scene, tmp_path):
    header, arrays = synthetic_avatar(400, joints=12, k=3, seed=2)
    arrays["log_scales"][:] = np.log(0.03)  # big, opaque splats: a few pixels each
    arrays["opacity_logits"][:] = 5.0
    armature, mesh = addon_module("scene_import").import_avatar(bpy.context, header, arrays)  # standard rig
    cam = bpy.data.objects.new("cam", bpy.data.cameras.new("cam"))
    scene.collection.objects.link(cam)
    scene.camera = cam
    cam.location, cam.rotation_euler = (0.0, -4.0, 1.3), (np.radians(90), 0.0, 0.0)
    root = armature.pose.bones[header["joint_names"][0]]
    root.location = (0.0, 0.0, 0.0)
    root.keyframe_insert("location", frame=1)
    root.location = (0.0, 0.6, 0.0)  # the root bone's +Y is world up: the avatar rises 0.6 m
    root.keyframe_insert("location", frame=2)
    render = scene.render
    render.engine = "CYCLES"
    scene.cycles.samples, scene.cycles.device = 1, "CPU"
    render.resolution_x = render.resolution_y = SIZE
    render.resolution_percentage = 100
    render.image_settings.file_format, render.image_settings.color_mode = "PNG", "RGBA"
    render.film_transparent = True  # alpha: where the splats are
    scene.frame_start, scene.frame_end = 1, 2
    render.filepath = str(tmp_path / "anim_")
    bpy.ops.render.render(animation=True)
    frames = {f: load(tmp_path / f"anim_{f:04d}.png") for f in (1, 2)}
    for f in (1, 2):
        scene.frame_set(f)
        render.filepath = str(tmp_path / f"still_{f}.png")
        bpy.ops.render.render(write_still=True)
        np.testing.assert_array_equal(frames[f], load(tmp_path / f"still_{f}.png"))
    assert frames[1][..., 3].max() > 0.5 and frames[1][..., 3].min() == 0.0  # the splats are in view, not all of it
    # the picture moved up: the alpha-weighted image row of the splats (row 0 is the bottom in Blender)
    rows = np.arange(SIZE)[:, None]
    centre = {f: float((frames[f][..., 3] * rows).sum() / frames[f][..., 3].sum()) for f in (1, 2)}
    assert centre[2] > centre[1] + 2.0, centre
