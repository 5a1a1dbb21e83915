"""The figure for docs/: the imported avatar rendered by Blender itself (Cycles, CPU, headless) beside the
backend's photoreal frame of the same pose from the same camera.

    .venv-blender/bin/python scripts/blender_figure.py --backend-python .venv/bin/python \
        --out docs/images/blender_vs_backend.png

What it does, all through the add-on's own code (installed from the built extension zip, as the tests do):
starts `<backend-python> -m backend.service.cli serve` on a free loopback port (bridge.local_backend; stopped
at the end, whatever happens), says hello, generates an avatar and imports it (`workflows.generate`: armature + splat mesh with the
Geometry Nodes ellipsoids and their material), poses two bones on the armature (the end frame of
backend/demo.py's animation: left arm raised 70°, right knee bent 60°), adds a camera (front 3/4 view)
and a light, renders with Cycles, then renders the same frame through the backend with the add-on's
`render.RenderJob` (the pose read back from the armature, the scene camera converted to OpenCV) and
writes both side by side (left Blender, right backend). Blender's user folders point at a temporary
directory, so the user's Blender setup is never touched.

The functions below take the add-on package's modules as arguments, so tests/blender/test_figure.py runs
the same pipeline at a tiny size against the test session's backend.
"""
from __future__ import annotations

import argparse
import importlib
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # Blender's Python: the repository's bridge and scripts (stdlib only)
    sys.path.append(str(ROOT))
from bridge.local_backend import LocalBackend  # noqa: E402
from scripts.headless_blender import (ADDON_MODULE, build_addon_zip, install_addon, pump_until,  # noqa: E402
                                      use_private_user_folders)

# (joint, world axis, degrees): backend/demo.py animation_poses at its last frame. The avatar faces -Y with
# its left arm towards +X: a negative turn about +Y lifts that arm, a positive turn about +X swings the
# right lower leg backwards (a knee bend).
POSE = (("upperarm01.L", (0.0, 1.0, 0.0), -70.0), ("lowerleg01.R", (1.0, 0.0, 0.0), 60.0))
BACKGROUND = (1.0, 1.0, 1.0)  # behind both halves (display values)
GAP_PX = 6


# ---------------------------------------------------------------------- add-on and backend
def addon_modules(package: str = ADDON_MODULE) -> SimpleNamespace:
    """The add-on modules the figure uses (an installed and enabled extension)."""
    names = ("workflows", "binding", "camera", "render", "session", "_bridge")
    return SimpleNamespace(**{n.lstrip("_"): importlib.import_module(f"{package}.{n}") for n in names})


def _call(session, start: Callable[[Callable, Callable], object], timeout_s: float, what: str):
    """Start an add-on workflow with (on_done, on_error) callbacks and pump until it ends."""
    results: list = []
    errors: list[str] = []
    start(lambda *out: results.append(out), lambda code, msg: errors.append(f"{code}: {msg}"))
    pump_until(session, lambda: bool(results or errors), timeout_s, what=what)
    if errors:
        raise RuntimeError(f"{what} failed: {errors[0]}")
    return results[0]


def connect(m: SimpleNamespace, scene, timeout_s: float = 60.0) -> dict:
    session = m.session.get_session()
    (info,) = _call(session, lambda ok, err: m.workflows.hello(session, scene, on_done=ok, on_error=err), timeout_s,
                    "hello")
    return info


def generate_avatar(m: SimpleNamespace, scene, prompt: str, seed: int, steps: int = 2, timeout_s: float = 300.0):
    """Generate over the bridge and import: (armature object, splat mesh object)."""
    session = m.session.get_session()
    scene.genlca.prompt, scene.genlca.seed, scene.genlca.steps = prompt, seed, steps
    return _call(session, lambda ok, err: m.workflows.generate(session, scene, on_done=ok, on_error=err), timeout_s,
                 "generate + import")


# ---------------------------------------------------------------------- scene
def clear_scene(scene) -> None:
    import bpy

    for collection in (bpy.data.objects, bpy.data.meshes, bpy.data.armatures, bpy.data.cameras, bpy.data.lights,
                       bpy.data.images):
        for block in list(collection):
            collection.remove(block)
    scene.genlca.avatars.clear()


def pose_avatar(m: SimpleNamespace, avatar, pose=POSE) -> None:
    """Rotate bones about world axes, written as pose-bone quaternions (in each bone's rest frame)."""
    from mathutils import Quaternion

    names = m.binding.joint_names(avatar)
    rest = m.binding.rest_matrices(avatar).astype(np.float64)  # (J, 4, 4) armature space
    placement = np.array(avatar.matrix_world, dtype=np.float64)[:3, :3]
    for pb in avatar.pose.bones:
        pb.rotation_mode = "QUATERNION"
        pb.rotation_quaternion = (1.0, 0.0, 0.0, 0.0)
    for joint, world_axis, degrees in pose:
        axis = rest[names.index(joint), :3, :3].T @ np.linalg.solve(placement, np.asarray(world_axis))
        avatar.pose.bones[joint].rotation_quaternion = Quaternion(axis / np.linalg.norm(axis), math.radians(degrees))


def splat_centres(mesh_obj) -> np.ndarray:
    """(N, 3) world positions of the posed (Armature-deformed) splat centres."""
    import bpy

    shown = [mod for mod in mesh_obj.modifiers if mod.type == "NODES" and mod.show_viewport]
    for mod in shown:  # the splat instances replace the points: read the skinned points under them
        mod.show_viewport = False
    try:
        evaluated = mesh_obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
        mesh = evaluated.to_mesh()
        co = np.empty(len(mesh.vertices) * 3, np.float32)
        mesh.vertices.foreach_get("co", co)
        evaluated.to_mesh_clear()
    finally:
        for mod in shown:
            mod.show_viewport = True
    world = np.array(mesh_obj.matrix_world, dtype=np.float64)
    return co.reshape(-1, 3).astype(np.float64) @ world[:3, :3].T + world[:3, 3]


def project(m: SimpleNamespace, scene, points: np.ndarray) -> np.ndarray:
    """World points (N, 3) -> pixel coordinates (N, 2) through the scene camera, by the add-on's own camera
    conversion (the one the backend render uses)."""
    w2c, k = m.camera.camera_arrays(scene)
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    uv = cam @ k.T
    return uv[:, :2] / uv[:, 2:]


def add_camera_and_light(m: SimpleNamespace, scene, mesh_obj, azimuth_deg: float = 35.0,
                         elevation_deg: float = 8.0, fill: float = 0.86):
    """A perspective camera in front of the avatar (it faces -Y), turned `azimuth_deg` towards +X (its
    left side) and `elevation_deg` up, aimed at the posed body; lens and shift frame the projected splat
    centres (centred, `fill` of the image along the tighter side). A sun light from the front. Returns
    the camera object."""
    import bpy
    from mathutils import Vector

    bpy.context.view_layer.update()
    points = splat_centres(mesh_obj)
    lo, hi = points.min(0), points.max(0)
    target, size = (lo + hi) / 2, float(np.linalg.norm(hi - lo))
    cam_data = bpy.data.cameras.new("Figure camera")
    cam_data.lens, cam_data.sensor_fit, cam_data.sensor_width = 50.0, "AUTO", 36.0
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    direction = np.array([math.sin(az) * math.cos(el), -math.cos(az) * math.cos(el), math.sin(el)])
    cam = bpy.data.objects.new("Figure camera", cam_data)
    scene.collection.objects.link(cam)
    cam.location = Vector((target + 1.6 * size * direction).tolist())
    cam.rotation_euler = Vector((-direction).tolist()).to_track_quat("-Z", "Y").to_euler()
    scene.camera = cam
    bpy.context.view_layer.update()
    width, height = m.camera.render_size(scene)
    uv = project(m, scene, points)
    extent = uv.max(0) - uv.min(0)  # pixels; they scale with the lens about the principal point
    cam_data.lens *= fill * min(width / extent[0], height / extent[1])
    uv = project(m, scene, points)
    centre = (uv.max(0) + uv.min(0)) / 2
    viewfac = max(width, height)  # AUTO fit, square pixels: shift is in units of the longer side
    cam_data.shift_x = (centre[0] - width / 2) / viewfac
    cam_data.shift_y = (height / 2 - centre[1]) / viewfac  # image v points down, Blender's shift_y up
    sun = bpy.data.objects.new("Figure light", bpy.data.lights.new("Figure light", "SUN"))
    sun.data.energy = 3.0
    sun.rotation_euler = (math.radians(50), 0.0, math.radians(30))
    scene.collection.objects.link(sun)
    bpy.context.view_layer.update()
    return cam


def setup_cycles(scene, width: int, height: int, samples: int) -> None:
    """Cycles on the CPU, transparent film (alpha for the silhouette), no denoiser, the Standard view
    transform (the splats' emission colours are the sRGB colours the backend shows)."""
    r = scene.render
    r.engine = "CYCLES"
    r.resolution_x, r.resolution_y, r.resolution_percentage = width, height, 100
    r.pixel_aspect_x = r.pixel_aspect_y = 1.0
    r.film_transparent = True
    r.image_settings.file_format = "PNG"
    r.image_settings.color_mode = "RGBA"
    r.image_settings.color_depth = "8"
    c = scene.cycles
    c.device = "CPU"
    c.samples = samples
    c.use_adaptive_sampling = False
    c.use_denoising = False
    c.max_bounces = 2
    c.transparent_max_bounces = 64  # many overlapping semi-transparent ellipsoids along a ray
    scene.view_settings.view_transform = "Standard"
    scene.view_settings.look = "None"
    scene.view_settings.exposure, scene.view_settings.gamma = 0.0, 1.0


def render_cycles(scene, path: Path) -> np.ndarray:
    """Render the scene camera's view with the scene's engine; (H, W, 4) uint8 straight alpha, top row first."""
    import bpy

    path.parent.mkdir(parents=True, exist_ok=True)
    scene.render.filepath = str(path)
    bpy.ops.render.render(write_still=True, scene=scene.name)
    image = bpy.data.images.load(str(path), check_existing=False)
    try:
        w, h = image.size
        pixels = np.empty(w * h * 4, np.float32)
        image.pixels.foreach_get(pixels)  # bottom row first; a byte image: the stored values / 255
    finally:
        bpy.data.images.remove(image)
    return np.ascontiguousarray((pixels.reshape(h, w, 4)[::-1] * 255.0 + 0.5).astype(np.uint8))


def render_backend(m: SimpleNamespace, scene, avatar, out_dir: Path, background=BACKGROUND,
                   timeout_s: float = 300.0) -> np.ndarray:
    """The current frame through the backend with the add-on's RenderJob (pose read from the armature,
    scene camera converted to OpenCV in avatar space); (H, W, 4) uint8, rgb over `background`."""
    session = m.session.get_session()
    frame = scene.frame_current
    (paths,) = _call(session, lambda ok, err: m.render.RenderJob(session, scene, avatar, frame, frame, out_dir,
                                                                 background=background, on_done=ok, on_error=err),
                     timeout_s, "render through the backend")
    return m.bridge.files.png.read_png(paths[0])


# ---------------------------------------------------------------------- picture
def over(rgba: np.ndarray, background=BACKGROUND, premultiplied: bool = False) -> np.ndarray:
    """RGBA uint8 -> RGB uint8 over a background colour."""
    rgb = rgba[..., :3].astype(np.float32) / 255.0
    a = rgba[..., 3:].astype(np.float32) / 255.0
    bg = np.asarray(background, np.float32)
    out = (rgb if premultiplied else rgb * a) + (1.0 - a) * bg
    return (np.clip(out, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = GAP_PX, gap_value: int = 200) -> np.ndarray:
    """Two (H, W, 3) images with a thin grey gap between them."""
    if left.shape != right.shape:
        raise ValueError(f"the two halves differ in size: {left.shape} vs {right.shape}")
    h, w, c = left.shape
    sheet = np.full((h, 2 * w + gap, c), gap_value, np.uint8)
    sheet[:, :w], sheet[:, w + gap:] = left, right
    return sheet


def silhouette_iou(alpha_a: np.ndarray, alpha_b: np.ndarray, threshold: int = 128) -> float:
    a, b = alpha_a >= threshold, alpha_b >= threshold
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def make_figure(m: SimpleNamespace, scene, avatar, mesh_obj, work: Path, width: int, height: int,
                samples: int) -> dict:
    """Pose, frame, render both ways. Returns {"blender": RGBA, "backend": RGBA, "sheet": RGB, "iou",
    "timings"}."""
    timings: dict[str, float] = {}
    pose_avatar(m, avatar)
    setup_cycles(scene, width, height, samples)
    add_camera_and_light(m, scene, mesh_obj)
    t = time.perf_counter()
    blender = render_cycles(scene, work / "blender.png")
    timings["cycles_s"] = time.perf_counter() - t
    t = time.perf_counter()
    backend = render_backend(m, scene, avatar, work / "backend")
    timings["backend_render_s"] = time.perf_counter() - t
    sheet = side_by_side(over(blender), backend[..., :3])
    return {"blender": blender, "backend": backend, "sheet": sheet, "timings": timings,
            "iou": silhouette_iou(blender[..., 3], backend[..., 3])}


# ---------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend-python", default=os.environ.get("GENLCA_BACKEND_PYTHON", ".venv/bin/python"),
                   help="the Python with torch that runs `-m backend.service.cli serve` (default: %(default)s)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "blender_vs_backend.png")
    p.add_argument("--width", type=int, default=384)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--samples", type=int, default=24, help="Cycles samples per pixel")
    p.add_argument("--prompt", default="a woman in a red shirt and dark jeans")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--addon-zip", type=Path, default=None, help="a built extension (default: build one)")
    p.add_argument("--keep", type=Path, default=None, help="also keep both halves as PNGs in this folder")
    args = p.parse_args(argv)

    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="genlca_figure_"))
    use_private_user_folders(work / "user")  # before bpy loads: never touch the user's Blender setup
    timings: dict[str, float] = {}
    backend = LocalBackend(args.backend_python, "--no-persist")
    try:
        backend.start(timeout_s=120.0)  # the backend loads torch while Blender starts: start it first
        port = backend.port
        import bpy

        t = time.perf_counter()
        bpy.ops.wm.read_factory_settings(use_empty=True)
        install_addon(args.addon_zip or build_addon_zip(work / "dist"))
        m = addon_modules()
        scene = bpy.context.scene
        prefs = bpy.context.preferences.addons[ADDON_MODULE].preferences
        prefs.backend_address, prefs.timeout_s, prefs.output_dir = f"tcp://127.0.0.1:{port}", 120.0, str(work)
        timings["blender_setup_s"] = time.perf_counter() - t
        info = connect(m, scene)
        timings["backend_ready_s"] = time.perf_counter() - start  # backend started in parallel: hello answered
        print(f"backend tcp://127.0.0.1:{port}: {info.get('server', '')} protocol {info.get('protocol')}", flush=True)
        t = time.perf_counter()
        avatar, mesh_obj = generate_avatar(m, scene, args.prompt, args.seed)
        timings["generate_import_s"] = time.perf_counter() - t
        print(f"avatar {avatar['genlca_avatar_id']}: {len(mesh_obj.data.vertices)} Gaussians, "
              f"{len(avatar.data.bones)} bones", flush=True)
        fig = make_figure(m, scene, avatar, mesh_obj, work, args.width, args.height, args.samples)
        timings.update(fig["timings"])
        m.bridge.files.png.write_png(args.out, fig["sheet"])  # atomic: temporary file, then rename
        if args.keep is not None:
            m.bridge.files.png.write_png(args.keep / "blender.png", fig["blender"])
            m.bridge.files.png.write_png(args.keep / "backend.png", fig["backend"])
        m.session.close_session()
    finally:
        backend.stop(grace_s=10.0)
        shutil.rmtree(work, ignore_errors=True)
    timings["total_s"] = time.perf_counter() - start
    print(f"wrote {args.out} ({fig['sheet'].shape[1]}x{fig['sheet'].shape[0]}): left Blender Cycles "
          f"({args.samples} spp), right the backend; silhouette IoU {fig['iou']:.3f}")
    print("timings: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
