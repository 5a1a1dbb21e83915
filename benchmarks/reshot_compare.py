"""Rigged avatar import vs the ReshotAI 3DGS add-on's (unrigged) import of the same number of Gaussians.

    git clone https://github.com/ReshotAI/gaussian-splatting-blender-addon /tmp/reshot   # GPL-3, not vendored
    .venv-blender/bin/python benchmarks/reshot_compare.py --reshot /tmp/reshot/blender-addon \
        [--sizes 100000 500000] [--repeats 2]

For each size, in one process and alternating (both see the same machine load):
- ours: the avatar file (`.safetensors`, written once by bridge/files/avatar.py from the synthetic avatar of
  tests/synthetic_avatar.py: 104 joints, top-8 sparse skin) read from disk and imported rigged
  (`bridge.files.avatar.read_safetensors`, then `scene_import.import_steps`, the add-on's import of a
  `get_avatar` reply: armature, splat mesh with the packed skin and rest centres, Geometry Nodes, material;
  File > Import also runs the wire codec's array checks, which need the extension's bundled msgpack wheel);
- ReshotAI: the same Gaussians as a standard 3DGS PLY (x y z, normals, f_dc, 45 f_rest, opacity, scale,
  rot; written once here) imported by its own operator `object.import_gaussian_splatting`, loaded from the
  folder given by --reshot (its code is run, never copied into this repository).
Both times are wall seconds from a file on disk to objects in the scene. Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bpy  # noqa: E402
import numpy as np  # noqa: E402

import blender_addon  # noqa: E402
from blender_addon import scene_import  # noqa: E402
from benchmarks import blender_import  # noqa: E402
from bridge.files.atomic import avatar as avatar_files  # noqa: E402
from tests.synthetic_avatar import synthetic_avatar  # noqa: E402


def clear_scene() -> None:
    """blender_import's clear_scene, plus the node groups and materials each ReshotAI import adds."""
    blender_import.clear_scene()
    for collection in (bpy.data.node_groups, bpy.data.materials):
        for block in list(collection):
            collection.remove(block)


def write_3dgs_ply(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """The Gaussians as the 3DGS reference implementation writes them (binary little endian, SH degree 3 with
    zero f_rest), which is what the ReshotAI add-on reads."""
    n = len(arrays["means"])
    names = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(45)]
             + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
    v = np.zeros((n, len(names)), "<f4")
    v[:, 0:3] = arrays["means"]
    v[:, 6:9] = arrays["sh"].reshape(n, -1)[:, :3]
    v[:, 54] = arrays["opacity_logits"]
    v[:, 55:58] = arrays["log_scales"]
    v[:, 58:62] = arrays["rotations"]  # (w, x, y, z) in both
    header = ("ply\nformat binary_little_endian 1.0\nelement vertex %d\n" % n
              + "".join(f"property float {name}\n" for name in names) + "end_header\n").encode()
    path.write_bytes(header + v.tobytes())


def load_reshot(folder: Path):
    spec = importlib.util.spec_from_file_location("reshot_gaussian_splatting", folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    if spec is None or not (folder / "__init__.py").is_file():
        raise SystemExit(f"--reshot {folder}: not the add-on folder (expected __init__.py and plyfile.py)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    module.register()
    return module


def time_ours(path: Path, header: dict) -> float:
    clear_scene()
    t0 = time.perf_counter()
    arrays, _meta = avatar_files.read_safetensors(path)  # every tensor, checked against the file's size
    for _ in scene_import.import_steps(bpy.context, header, arrays):  # armature, mesh, skin, GN, material
        pass
    return time.perf_counter() - t0


def time_reshot(path: Path) -> float:
    clear_scene()
    devnull = os.open(os.devnull, os.O_WRONLY)
    saved = os.dup(1)
    os.dup2(devnull, 1)  # its operator prints per stage
    try:
        t0 = time.perf_counter()
        result = bpy.ops.object.import_gaussian_splatting(filepath=str(path))
        elapsed = time.perf_counter() - t0
    finally:
        os.dup2(saved, 1)
        os.close(devnull)
    if result != {"FINISHED"}:
        raise SystemExit(f"the ReshotAI import returned {result}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reshot", required=True, type=Path, help="the ReshotAI add-on's blender-addon folder")
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 500_000])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    blender_addon.register()
    load_reshot(args.reshot.resolve())
    print(f"# {platform.machine()}, {os.cpu_count()} CPU cores, Blender {bpy.app.version_string} (bpy module), "
          f"Python {platform.python_version()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            header, arrays = synthetic_avatar(n, joints=104, k=8, seed=0, skin="sparse")
            ours_path = Path(tmp) / f"avatar-{n}.safetensors"
            avatar_files.write_safetensors(ours_path, arrays, {"avatar_id": "bench"})
            ply_path = Path(tmp) / f"splats-{n}.ply"
            write_3dgs_ply(ply_path, arrays)
            ours, theirs = [], []
            for _ in range(args.repeats):
                ours.append(time_ours(ours_path, header))
                theirs.append(time_reshot(ply_path))
            print(f"{n} Gaussians: ours (rigged, from .safetensors) best {min(ours):.3f} s; ReshotAI (unrigged, "
                  f"from .ply) best {min(theirs):.3f} s; ratio {min(theirs) / min(ours):.1f}x")
            rows.append((n, min(ours), min(theirs)))
    print("\n| Gaussians | ours: rigged import from .safetensors | ReshotAI: unrigged import from .ply | ReshotAI / ours |")
    print("|---|---|---|---|")
    for n, a, b in rows:
        print(f"| {n // 1000}k | {a:.3f} s | {b:.3f} s | {b / a:.1f}x |")


if __name__ == "__main__":
    main()
