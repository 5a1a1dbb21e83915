"""`make demo`: the artist's workflow end to end, in real (headless) Blender, through the GenLCA add-on.

Run by the Python of .venv-blender (the `bpy` module from PyPI):

    .venv-blender/bin/python scripts/demo_blender.py [--model FOLDER] [--out outputs/demo] [--size 256x320]

Stages (each timed; a failure names its stage, exits with status 1 and stops the backend):
  build add-on   build_addon.py --platform current: the installable extension zip
  backend        `python -m backend.service.cli serve` (the backend's Python, default .venv/bin/python) on a free
                 loopback port, on the shipped model (or --model / $GENLCA_MODEL)
  install        Blender's own extension installer installs the zip and enables the add-on
  connect        the add-on's Connect operator (hello: protocol, model)
  generate text  the Generate operator with a prompt; the avatar is imported into the scene
  generate photo the Generate operator with a reference photo (a person photo from `make testdata`)
  edit text      the Edit operator with Region Auto: a new prompt over the prompted avatar, only what it
                 changes regenerated (--edit-region whole_body: a whole-body edit at --strength)
  edit region    the Regenerate Region operator: one body region regenerated, the rest kept
  portraits      each avatar rendered through the backend at rest, from the front (for the contact sheet)
  bind mocap     Blender's BVH importer reads the CMU clip 01_01; the Bind operator drives the prompted avatar
                 from it (scale fix, proportion fitting)
  render         the Render Through Backend operator: a few frames of the mocap through a tracking camera
  export ply     the Export operator (3DGS .ply)
  export glb     the Export operator, format GLB: the rigged, textured mesh for game engines with the bound
                 motion (the scene's frame range) as its animation
  save blend     the scene as a .blend; a fresh Blender process without the add-on opens it and checks that
                 the avatar's splats move between two frames (the standard rig: Blender poses them itself)
  contact sheet  the rendered frames and the avatars side by side (PNG)

Outputs in --out: frames/, portraits/, the .ply, the .glb, demo.blend, contact_sheet.png, summary.json,
backend.log.
Blender's user folders point at a temporary directory, so the user's own Blender set-up is never touched.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # Blender's Python: the repository's bridge and scripts (stdlib only)
    sys.path.append(str(ROOT))
from bridge.local_backend import LocalBackend  # noqa: E402
from scripts.headless_blender import (ADDON_MODULE, addon_module, build_addon_zip, install_addon,  # noqa: E402
                                      use_private_user_folders)

PHOTO = "2008_001009.jpg"  # a person photo of libdlib19.1's examples (scripts/fetch_test_data.sh ingest)


class StageError(RuntimeError):
    pass


class Stages:
    """Prints each stage as it starts and ends, records its time, and names it in any failure."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self.skipped: dict[str, str] = {}
        self.start = time.perf_counter()

    @contextlib.contextmanager
    def stage(self, name: str):
        print(f"[demo] {name} ...", flush=True)
        t = time.perf_counter()
        try:
            yield
        except StageError:
            raise
        except BaseException as exc:
            raise StageError(f"stage '{name}' failed: {type(exc).__name__}: {exc}") from exc
        self.timings[name] = round(time.perf_counter() - t, 2)
        print(f"[demo] {name}: done in {self.timings[name]:.1f} s", flush=True)

    def skip(self, name: str, why: str) -> None:
        self.skipped[name] = why
        print(f"[demo] {name}: SKIPPED ({why})", flush=True)


# ------------------------------------------------------------------------------------------- test data
def fetch(*args: str) -> Path | None:
    """scripts/fetch_test_data.sh [args]: the path it prints last, or None when it cannot fetch."""
    try:
        out = subprocess.run([str(ROOT / "scripts" / "fetch_test_data.sh"), *args], capture_output=True, text=True,
                             timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = out.stdout.strip().splitlines()
    return Path(lines[-1]) if out.returncode == 0 and lines else None


# ------------------------------------------------------------------------------------------- demo
def run(args: argparse.Namespace, stages: Stages) -> dict:
    out = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    (out / "frames").mkdir(parents=True)
    (out / "portraits").mkdir()
    work = Path(tempfile.mkdtemp(prefix="genlca_demo_"))
    use_private_user_folders(work)  # before bpy loads
    width, height = args.size
    summary: dict = {"out_dir": str(out), "avatars": {}, "size": [width, height]}
    backend = None
    try:
        with stages.stage("build add-on"):
            zip_path = build_addon_zip(work / "dist")
            print(f"  {zip_path.name}", flush=True)

        with stages.stage("backend"):
            backend = LocalBackend(args.backend_python, "--avatar-dir", str(work / "avatars"),
                                   *(["--set", f"model={args.model}"] if args.model else []),
                                   log_path=out / "backend.log").start(timeout_s=300.0, poll_s=0.2)
            port = backend.port
            served = [ln for ln in backend.log_text().splitlines() if ln.startswith("genlca-backend: serving")]
            print(f"  {served[-1][len('genlca-backend: '):] if served else f'serving on port {port}'}", flush=True)

        import bpy  # noqa: E402  (after the user folders are set)
        import numpy as np

        with stages.stage("install"):
            install_addon(zip_path)
            prefs = bpy.context.preferences.addons[ADDON_MODULE].preferences
            prefs.backend_address, prefs.timeout_s = f"tcp://127.0.0.1:{port}", args.timeout

        scene = bpy.context.scene
        for obj in list(bpy.data.objects):  # the factory scene's cube, light and camera
            bpy.data.objects.remove(obj)
        props = scene.genlca
        session_mod = addon_module("session")
        timeout = args.timeout

        def pump(done, what: str) -> None:
            """Run the session's timer work as Blender's timer would, until done() or an error message."""
            session = session_mod.current_session()
            deadline = time.monotonic() + timeout
            last = ""
            while True:
                session = session_mod.current_session() or session
                session.pump()
                session_mod._show_progress(session)
                if props.job_stage and props.job_stage != last:
                    last = props.job_stage
                    if args.verbose or not last.startswith("sample ") or last.split("/")[0].endswith(("1", "0")):
                        print(f"  {props.job_label}: {last}", flush=True)
                if props.message_is_error:
                    raise RuntimeError(props.message)
                if done() and not session.busy:
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{what} not done within {timeout:.0f} s")
                time.sleep(0.01)

        def run_op(op, **kwargs) -> None:
            props.message, props.message_is_error = "", False
            result = op(**kwargs)
            if result != {"FINISHED"}:
                raise RuntimeError(f"{op.idname_py()} returned {result}: {props.message}")

        def generate_avatar(name: str, op, **kwargs):
            before = len(props.avatars)
            run_op(op, **kwargs)
            pump(lambda: len(props.avatars) > before, name)
            item = props.avatars[props.avatar_index]
            (mesh,) = addon_module("binding").splat_meshes(item.armature)
            info = {"avatar_id": item.avatar_id, "label": item.label, "armature": item.armature.name,
                    "gaussians": len(mesh.data.vertices)}
            summary["avatars"][name] = info
            print(f"  avatar {item.label!r}: {info['gaussians']} Gaussians, {len(item.armature.data.bones)} joints "
                  f"({item.avatar_id[:8]})", flush=True)
            return item

        with stages.stage("connect"):
            run_op(bpy.ops.genlca.connect)
            pump(lambda: props.connected, "connect")
            print(f"  {props.message}", flush=True)
            summary["backend"] = props.connection
            summary["model"] = dict(session_mod.current_session().model)

        props.steps, props.guidance, props.seed = args.steps, args.guidance, args.seed
        with stages.stage("generate text"):
            props.prompt = args.prompt
            prompted = generate_avatar("prompt", bpy.ops.genlca.generate)
            prompted_id = prompted.avatar_id

        if args.photo is not None and not args.photo.is_file():
            raise StageError(f"stage 'generate photo' failed: --photo {args.photo} is not a file")
        photo = args.photo or ((fetch("ingest") or Path("/nonexistent")) / PHOTO)
        if photo.is_file():
            with stages.stage("generate photo"):
                props.prompt, props.image = "", bpy.data.images.load(str(photo))
                generate_avatar("photo", bpy.ops.genlca.generate)
                summary["avatars"]["photo"]["photo"] = str(photo)
                props.image = None
        else:
            stages.skip("generate photo", "no person photo: `make testdata` (scripts/fetch_test_data.sh ingest) "
                                          "could not fetch libdlib19.1's examples")

        def select(avatar_id: str) -> None:
            props.avatar_index = next(i for i, a in enumerate(props.avatars) if a.avatar_id == avatar_id)

        with stages.stage("edit text"):
            select(prompted_id)
            props.prompt, props.region, props.edit_prompt, props.strength = args.prompt, args.edit_region, \
                args.edit_prompt, args.strength
            generate_avatar("text edit", bpy.ops.genlca.edit)

        with stages.stage("edit region"):
            select(prompted_id)
            props.region, props.edit_prompt = args.region, args.region_prompt
            generate_avatar(f"{args.region} regenerated", bpy.ops.genlca.regenerate_region)
            props.region = "whole_body"

        # the avatars sit side by side along X so the saved scene shows them all
        items = [(a.avatar_id, a.armature) for a in props.avatars]
        for i, (_, arm) in enumerate(items):
            arm.location = (1.0 * i, 3.0, 0.0) if arm.get("genlca_avatar_id") != prompted_id else (0.0, 0.0, 0.0)

        with stages.stage("portraits"):
            cam = bpy.data.objects.new("GenLCA portrait camera", bpy.data.cameras.new("portrait"))
            scene.collection.objects.link(cam)
            cam.data.lens = 50.0
            scene.camera = cam
            scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = \
                width, height, 100
            prefs.output_dir = str(out / "portraits")
            for name, info in summary["avatars"].items():
                arm = bpy.data.objects[info["armature"]]
                x, y, _ = arm.location
                cam.location = (x, y - 3.9, 0.9)
                cam.rotation_euler = (math.radians(90), 0.0, 0.0)
                select(info["avatar_id"])
                before = set((out / "portraits").glob("*.png"))
                run_op(bpy.ops.genlca.render, use_scene_range=False, frame_start=1, frame_end=1)
                pump(lambda: len(set((out / "portraits").glob("*.png")) - before) == 1, f"portrait of {name}")
                (png_path,) = set((out / "portraits").glob("*.png")) - before
                info["portrait"] = str(png_path.rename(png_path.with_name(f"{name.replace(' ', '_')}.png")))

        bvh = args.bvh or fetch()
        if bvh is None or not bvh.is_file():
            raise StageError("stage 'bind mocap' failed: no CMU BVH (scripts/fetch_test_data.sh could not fetch "
                             "assimp-testmodels; run `make testdata`)")
        with stages.stage("bind mocap"):
            scene.render.fps = args.fps  # the BVH's 120 fps are resampled to the scene's: a few frames show motion
            bpy.ops.import_anim.bvh(filepath=str(bvh), use_fps_scale=True, update_scene_fps=False,
                                    update_scene_duration=False)
            source = bpy.context.view_layer.objects.active
            if source is None or source.type != "ARMATURE":
                raise RuntimeError("Blender's BVH importer made no armature")
            select(prompted_id)
            run_op(bpy.ops.genlca.bind_armature, fix_scale=True, use_action_range=True)
            avatar = bpy.data.objects[summary["avatars"]["prompt"]["armature"]]
            print(f"  {props.message or ''}bound {avatar.name} to {source.name} ({avatar.genlca.rig}, "
                  f"{len(avatar.genlca.bone_map)} bones), scale {source.scale[0]:.4g}, scene frames "
                  f"{scene.frame_start}-{scene.frame_end} at {scene.render.fps} fps", flush=True)
            summary["mocap"] = {"bvh": str(bvh), "rig": avatar.genlca.rig, "frames": [scene.frame_start,
                                                                                    scene.frame_end]}

        with stages.stage("render"):
            first = scene.frame_start + int(args.clip_start * (scene.frame_end - scene.frame_start))
            last = min(scene.frame_end, first + args.frames - 1)
            # a camera that frames the whole stretch of motion: at the hips' mean position, from the side the
            # avatar faces, far enough for the hips' spread
            hips = []
            for f in range(first, last + 1):
                scene.frame_set(f)
                hips.append(np.array(source.matrix_world @ source.pose.bones[0].head))
            hips = np.array(hips)
            centre = hips.mean(0)
            spread = float(np.ptp(hips[:, :2], 0).max()) if len(hips) > 1 else 0.0
            anim_cam = bpy.data.objects.new("GenLCA camera", bpy.data.cameras.new("camera"))
            scene.collection.objects.link(anim_cam)
            anim_cam.data.lens = 50.0
            distance = 3.6 + 1.2 * spread
            anim_cam.location = (centre[0], centre[1] - distance, centre[2] - 0.12)  # level with mid-body
            anim_cam.rotation_euler = (math.radians(90), 0.0, 0.0)
            scene.camera = anim_cam
            select(prompted_id)
            prefs.output_dir = str(out / "frames")
            run_op(bpy.ops.genlca.render, use_scene_range=False, frame_start=first, frame_end=last)
            pump(lambda: len(list((out / "frames").glob("*.png"))) == last - first + 1, "render")
            frames = sorted((out / "frames").glob("*.png"))
            summary["frames"] = [str(p) for p in frames]
            summary["render"] = {"frames": [first, last], "camera": anim_cam.name}
            print(f"  {len(frames)} frames ({first}-{last}) in {out / 'frames'}", flush=True)

        def export(fmt: str) -> Path:
            """The prompted avatar exported through the add-on's Export operator as `fmt` into `out`."""
            select(prompted_id)
            props.export_format = fmt
            prefs.output_dir = str(out)
            run_op(bpy.ops.genlca.export)
            pump(lambda: list(out.glob(f"*.{fmt}")), f"export {fmt}")
            (path,) = out.glob(f"*.{fmt}")
            summary[fmt] = str(path)
            return path

        with stages.stage("export ply"):
            ply = export("ply")
            print(f"  {ply} ({ply.stat().st_size / 1e6:.1f} MB)", flush=True)

        with stages.stage("export glb"):
            glb = export("glb")
            print(f"  {glb} ({glb.stat().st_size / 1e6:.1f} MB; frames {scene.frame_start}-{scene.frame_end} "
                  f"as its animation)", flush=True)

        with stages.stage("save blend"):
            scene.frame_set(first)
            blend = out / "demo.blend"
            bpy.ops.wm.save_as_mainfile(filepath=str(blend), check_existing=False)
            summary["blend"] = str(blend)
            print(f"  {blend} ({blend.stat().st_size / 1e6:.1f} MB)", flush=True)
            moved = splats_move_without_addon(blend, first, last)
            summary["blend_without_addon"] = {"frames": [first, last], "splats_moved_m": moved}
            if moved < 0.01:
                raise RuntimeError(f"opened without the add-on, demo.blend's avatar does not move ({moved:.4f} m)")
            print(f"  opened without the add-on: the splats move {moved:.3f} m between frames {first} and {last}",
                  flush=True)

        with stages.stage("contact sheet"):
            sheet = out / "contact_sheet.png"
            contact_sheet(addon_module("_bridge").png, [Path(p) for p in summary["frames"]],
                          [Path(a["portrait"]) for a in summary["avatars"].values()], sheet)
            summary["contact_sheet"] = str(sheet)
            summary["contact_sheet_layout"] = {"top row": "rendered animation frames",
                                             "bottom row": list(summary["avatars"])}
            print(f"  {sheet}", flush=True)
        session_mod.close_session()
    finally:
        if backend is not None:
            backend.stop(grace_s=15.0)
        shutil.rmtree(work, ignore_errors=True)
    return summary


WITHOUT_ADDON = """
import sys
import bpy
import numpy as np
bpy.ops.wm.open_mainfile(filepath=sys.argv[1])
assert not hasattr(bpy.types.Scene, "genlca"), "the add-on is registered"
scene = bpy.context.scene
mesh = next(o for o in scene.objects if o.type == "MESH" and "genlca_skin_0" in o.data.attributes
            and o.parent is not None and o.parent.animation_data is not None)
mesh.modifiers["GenLCA splats"].show_viewport = False
centres = []
for frame in (int(sys.argv[2]), int(sys.argv[3])):
    scene.frame_set(frame)
    ev = mesh.evaluated_get(bpy.context.evaluated_depsgraph_get()).data
    co = np.empty(len(ev.vertices) * 3, np.float32)
    ev.vertices.foreach_get("co", co)
    centres.append(co.reshape(-1, 3))
print("MOVED", float(np.linalg.norm(centres[1] - centres[0], axis=1).max()))
"""


def splats_move_without_addon(blend: Path, first: int, last: int) -> float:
    """How far (m) the bound avatar's splats move between two frames in a fresh Blender process (this Python,
    Blender's user folders in a new temporary directory: no add-on installed)."""
    with tempfile.TemporaryDirectory(prefix="genlca_plain_blender_") as user:
        env = dict(os.environ, **{v: os.path.join(user, v.lower()) for v in
                                  ("BLENDER_USER_RESOURCES", "BLENDER_USER_CONFIG", "BLENDER_USER_SCRIPTS",
                                   "BLENDER_USER_EXTENSIONS", "BLENDER_USER_DATAFILES")})
        env.pop("PYTHONPATH", None)
        ran = subprocess.run([sys.executable, "-c", WITHOUT_ADDON, str(blend), str(first), str(last)], env=env,
                             cwd=user, capture_output=True, text=True, timeout=600)
    moved = [line for line in ran.stdout.splitlines() if line.startswith("MOVED ")]
    if ran.returncode != 0 or not moved:
        raise RuntimeError(f"a fresh Blender could not open {blend}: {ran.stderr[-2000:]}")
    return float(moved[-1].split()[1])


def contact_sheet(png, frames: list[Path], portraits: list[Path], path: Path) -> None:
    """Top row: the rendered animation frames; bottom row: the avatars (prompt, photo, text edit, region) at
    rest. Each tile over a light grey (the renders are RGBA over transparent black), 4 px gutters."""
    import numpy as np

    def over_grey(rgba):
        a = rgba[..., 3:4].astype(np.float32) / 255.0
        rgb = rgba[..., :3].astype(np.float32) * a + 215.0 * (1 - a)  # premultiplied-agnostic: alpha-weighted
        return np.clip(rgb, 0, 255).astype(np.uint8)

    rows = [[over_grey(png.read_png(p)) for p in frames], [over_grey(png.read_png(p)) for p in portraits]]
    rows = [r for r in rows if r]
    h, w = rows[0][0].shape[:2]
    gap = 4
    cols = max(len(r) for r in rows)
    sheet = np.full((len(rows) * (h + gap) + gap, cols * (w + gap) + gap, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            y, x = gap + r * (h + gap), gap + c * (w + gap)
            sheet[y:y + tile.shape[0], x:x + tile.shape[1]] = tile
    rgba = np.concatenate([sheet, np.full(sheet.shape[:2] + (1,), 255, np.uint8)], -1)
    path.write_bytes(png.encode_png(np.ascontiguousarray(rgba)))


def size(text: str) -> tuple[int, int]:
    w, _, h = text.partition("x")
    return int(w), int(h or w)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "demo")
    p.add_argument("--model", default=os.environ.get("GENLCA_MODEL", ""),
                   help="model package folder or name (default: $GENLCA_MODEL, else the shipped package under checkpoints/)")
    p.add_argument("--backend-python", default=str(ROOT / ".venv" / "bin" / "python"))
    p.add_argument("--prompt", default="a woman in a red shirt and blue jeans")
    p.add_argument("--edit-prompt", default="a woman in a green shirt and blue jeans")
    p.add_argument("--edit-region", default="auto", choices=["auto", "whole_body"],
                   help="auto: regenerate only what the edit prompt changes (the rest bit-identical); whole_body: a "
                        "noise edit of the whole avatar at --strength (docs/BENCHMARKS.md, 'Text edit')")
    p.add_argument("--strength", type=float, default=0.6)
    p.add_argument("--region", default="legs", help="the body region to regenerate (head, torso, arms, legs, ...)")
    p.add_argument("--region-prompt", default="a woman in a red shirt and black trousers")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--steps", type=int, default=16, help="sampler steps per generate/edit")
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--photo", type=Path, default=None, help=f"person photo (default: {PHOTO} of `make testdata`)")
    p.add_argument("--bvh", type=Path, default=None, help="BVH mocap (default: CMU 01_01 of `make testdata`)")
    p.add_argument("--fps", type=int, default=4, help="scene fps the mocap is resampled to")
    p.add_argument("--frames", type=int, default=6, help="frames rendered through the backend")
    p.add_argument("--clip-start", type=float, default=0.3, help="where in the clip the frames start (0..1)")
    p.add_argument("--size", type=size, default=(240, 320), help="frame size WxH in pixels")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one stage may wait for the backend")
    p.add_argument("--verbose", action="store_true", help="print every sampler step")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    stages = Stages()
    try:
        summary = run(args, stages)
    except StageError as exc:
        print(f"[demo] FAILED: {exc}", file=sys.stderr, flush=True)
        print(f"[demo] the backend is stopped; timings so far: {json.dumps(stages.timings)}", file=sys.stderr)
        return 1
    summary["timings_s"] = stages.timings
    summary["skipped"] = stages.skipped
    summary["total_s"] = round(time.perf_counter() - stages.start, 2)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print("[demo] timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in stages.timings.items())
          + f"; total {summary['total_s']:.1f} s", flush=True)
    print(f"[demo] done: {args.out / 'summary.json'}, {summary['contact_sheet']}", flush=True)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # the bpy module's own exit is slow with the add-on's timers and handlers registered
