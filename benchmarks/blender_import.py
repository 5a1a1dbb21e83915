"""Blender import benchmark: a rigged avatar of 100k and 500k Gaussians (104 joints, top-8 skin weights)
into the scene, and 250 frames of armature pose read back as the wire's joint rotations.

    .venv-blender/bin/python benchmarks/blender_import.py [--sizes 100000 500000] [--frames 250]

Runs the add-on's plain functions from the repository (no backend, no UI). Prints one line per
measurement and a Markdown table for docs/BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
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

STAGES = ("armature", "mesh + skin attributes", "vertex groups (GN bake)", "splat attributes + modifiers")  # one-shot


def clear_scene() -> None:
    for collection in (bpy.data.objects, bpy.data.meshes, bpy.data.armatures, bpy.data.actions):
        for block in list(collection):
            collection.remove(block)


def time_import(n: int, repeats: int, bake_chunk: int | None = None) -> tuple[list[float], list[list[float]]]:
    """Total import times and the duration of each step (one step per session timer tick)."""
    header, arrays = scene_import.synthetic_avatar(n, joints=104, k=8, seed=0)
    totals, stages = [], []
    for _ in range(repeats):
        clear_scene()
        marks = [time.perf_counter()]
        for _step in scene_import.import_steps(bpy.context, header, arrays, bake_chunk=bake_chunk):
            marks.append(time.perf_counter())
        totals.append(marks[-1] - marks[0])
        stages.append(list(np.diff(marks)))
    return totals, stages


def time_pose_read(frames: int, repeats: int) -> list[float]:
    clear_scene()
    header, arrays = scene_import.synthetic_avatar(1000, joints=104, k=8, seed=0)
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
    ap.add_argument("--frames", type=int, default=250)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=16, help="joints per bake step for the stepped import")
    args = ap.parse_args()
    blender_addon.register()
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, Blender {bpy.app.version_string} (bpy module)"
    print(f"# {machine}")
    rows = []
    for n in args.sizes:
        totals, stages = time_import(n, args.repeats)
        best = int(np.argmin(totals))
        detail = ", ".join(f"{name} {t * 1000:.0f} ms" for name, t in zip(STAGES, stages[best]))
        print(f"import {n:>7} Gaussians: best {min(totals):.3f} s, median {statistics.median(totals):.3f} s ({detail})")
        rows.append((f"import rigged avatar, {n // 1000}k Gaussians, 104 joints, k=8", min(totals), detail))
        totals, stages = time_import(n, args.repeats, bake_chunk=args.chunk)
        best = int(np.argmin(totals))
        longest = max(stages[best])
        print(f"import {n:>7} Gaussians in timer steps (bake {args.chunk} joints per step): best {min(totals):.3f} s, "
              f"{len(stages[best])} steps, longest step {longest * 1000:.0f} ms")
        rows.append((f"same, as the add-on does it (bake {args.chunk} joints per timer step)", min(totals),
                     f"{len(stages[best])} steps, longest {longest * 1000:.0f} ms"))
    times = time_pose_read(args.frames, args.repeats)
    print(f"read {args.frames} frames of pose (104 bones): best {min(times):.3f} s, median {statistics.median(times):.3f} s")
    rows.append((f"read {args.frames} frames of armature pose (104 bones)", min(times),
                 f"{min(times) / args.frames * 1000:.2f} ms per frame"))
    print("\n| measurement | best of %d | detail |\n|---|---|---|" % args.repeats)
    for name, t, detail in rows:
        print(f"| {name} | {t:.3f} s | {detail} |")
    blender_addon.unregister()


if __name__ == "__main__":
    main()
