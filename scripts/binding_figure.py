"""The binding figure for docs/: a generated avatar bound to the CMU mocap of `make testdata` (Blender's BVH
importer, proportion fitting on), three frames side by side, the mocap armature drawn over each.

    .venv-blender/bin/python scripts/binding_figure.py --backend-python .venv/bin/python \
        --out docs/images/binding_cmu.png

The backend generates the avatar (its splats); Blender imports it with the add-on's own code, binds it
(`binding.bind`), poses it frame by frame through the add-on's frame-change handler and renders the
`GenLCA splats` ellipsoids with Cycles (CPU): the Blender side shows the fitted pose exactly (per-bone
placement and scale), which a backend render would not (the render request carries joint rotations and a
root translation only). The mocap's bones are projected with the add-on's camera conversion
(`camera.camera_arrays`) and drawn as black lines with joints as dots. Reuses scripts/blender_figure.py
(install, generate, Cycles set-up, camera framing) and bridge.local_backend (backend start and stop).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import blender_figure as bf  # noqa: E402  (puts the repository on sys.path)
from bridge.local_backend import LocalBackend  # noqa: E402

ROOT = bf.ROOT
CMU_SCALE = 0.056444


def draw_line(img: np.ndarray, a: np.ndarray, b: np.ndarray, colour, width: int = 2) -> None:
    """A straight line from pixel a to pixel b (x, y), `width` pixels thick, into img (H, W, 3)."""
    steps = int(max(abs(b - a).max(), 1)) * 2
    for t in np.linspace(0.0, 1.0, steps + 1):
        x, y = a + t * (b - a)
        x0, y0 = int(round(x)) - width // 2, int(round(y)) - width // 2
        img[max(y0, 0):max(y0 + width, 0), max(x0, 0):max(x0 + width, 0)] = colour


def draw_armature(m, scene, source, img: np.ndarray) -> None:
    """The source armature's posed bones (head to child head, or to tail at the ends) over img."""
    world = np.array(source.matrix_world)
    heads = {pb.name: (world @ np.append(np.array(pb.head), 1.0))[:3] for pb in source.pose.bones}
    tails = {pb.name: (world @ np.append(np.array(pb.tail), 1.0))[:3] for pb in source.pose.bones}
    segments = []
    for pb in source.pose.bones:
        if pb.parent is not None:
            segments.append((heads[pb.parent.name], heads[pb.name]))
        if not pb.children:
            segments.append((heads[pb.name], tails[pb.name]))
    for a, b in segments:
        uv = bf.project(m, scene, np.array([a, b]))
        draw_line(img, uv[0], uv[1], (20, 20, 20), 2)
    for uv in bf.project(m, scene, np.array(list(heads.values()))):
        draw_line(img, uv, uv, (230, 40, 40), 5)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend-python", default=os.environ.get("GENLCA_BACKEND_PYTHON", ".venv/bin/python"))
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "binding_cmu.png")
    p.add_argument("--frames", type=int, nargs=3, default=[200, 560, 1170])
    p.add_argument("--width", type=int, default=288)
    p.add_argument("--height", type=int, default=432)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--prompt", default="a woman in a red shirt and dark jeans")
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)

    fetched = subprocess.run([str(ROOT / "scripts" / "fetch_test_data.sh")], capture_output=True, text=True)
    if fetched.returncode != 0:
        raise SystemExit(f"no CMU clip: {fetched.stderr.strip()}")
    bvh = fetched.stdout.strip().splitlines()[-1]
    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="genlca_binding_figure_"))
    for var in ("BLENDER_USER_RESOURCES", "BLENDER_USER_CONFIG", "BLENDER_USER_SCRIPTS", "BLENDER_USER_EXTENSIONS",
                "BLENDER_USER_DATAFILES"):
        os.environ[var] = str(work / "user" / var.lower())
    backend = LocalBackend(args.backend_python, "--no-persist")
    try:
        backend.start(timeout_s=120.0)
        port = backend.port
        import bpy

        bpy.ops.wm.read_factory_settings(use_empty=True)
        m = bf.install_addon(None, work)
        scene = bpy.context.scene
        prefs = bpy.context.preferences.addons[bf.ADDON_MODULE].preferences
        prefs.backend_address, prefs.timeout_s, prefs.output_dir = f"tcp://127.0.0.1:{port}", 120.0, str(work)
        bf.connect(m, scene)
        avatar, mesh_obj = bf.generate_avatar(m, scene, args.prompt, args.seed)
        bpy.ops.import_anim.bvh(filepath=bvh, global_scale=CMU_SCALE, update_scene_fps=False,
                                update_scene_duration=False)
        source = bpy.context.view_layer.objects.active
        mapping = m.binding.bind(avatar, source)
        print(f"bound {len(mesh_obj.data.vertices)} Gaussians to {source.name}: {len(mapping)} bones "
              f"({avatar.genlca.rig})", flush=True)
        bf.setup_cycles(scene, args.width, args.height, args.samples)
        panels = []
        for i, frame in enumerate(args.frames):
            scene.frame_set(frame)
            bpy.context.view_layer.update()
            for obj in [o for o in scene.objects if o.type in ("CAMERA", "LIGHT")]:
                bpy.data.objects.remove(obj)
            bf.add_camera_and_light(m, scene, mesh_obj, azimuth_deg=30.0, fill=0.8)
            rgba = bf.render_cycles(scene, work / f"frame{i}.png")
            img = bf.over(rgba)
            draw_armature(m, scene, source, img)
            panels.append(img)
        sheet = panels[0]
        for panel in panels[1:]:
            sheet = bf.side_by_side(sheet, panel) if sheet.shape == panel.shape else np.concatenate(
                [sheet, np.full((sheet.shape[0], bf.GAP_PX, 3), 200, np.uint8), panel], axis=1)
        m.bridge.files.png.write_png(args.out, sheet)
        m.session.close_session()
    finally:
        backend.stop(grace_s=10.0)
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.out} ({sheet.shape[1]}x{sheet.shape[0]}) in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
