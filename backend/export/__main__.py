"""genlca-export: an avatar file as a rigged, textured glTF binary for game engines.

    python -m backend.export AVATAR.safetensors --out avatar.glb [--texture-size 1024]
                             [--motion motion.npz --fps 30] [--keep-template-names] [--no-displace]

AVATAR.safetensors: a GenLCA avatar (the backend's `export` op, the add-on's *Save File*). --motion: an
.npz with the arrays of a render request's pose (bridge.wire.protocol RENDER_ARRAYS: joint_rotations (F, J, 4)
wxyz, root_translations (F, 3); optional joint_locations (F, J, 3), joint_scales (F, J)), written as the
glTF animation. Numpy only (no torch): runs wherever the backend's environment does.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from backend.avatar.template import load_template
from backend.export import avatar_mesh, gltf
from bridge.files import avatar as avatar_files

MOTION_KEYS = ("joint_rotations", "root_translations")
OPTIONAL_MOTION_KEYS = ("joint_locations", "joint_scales")


def read_motion(path: Path, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Pose matrices (F, J, 4, 4) from a motion .npz; ValueError naming the file and the problem."""
    with np.load(path) as data:
        missing = [k for k in MOTION_KEYS if k not in data]
        if missing:
            raise ValueError(f"{path}: the motion lacks {missing} (expected {MOTION_KEYS})")
        pose = {k: data[k] for k in MOTION_KEYS + OPTIONAL_MOTION_KEYS if k in data}
    j = len(arrays["joint_parents"])
    rotations = pose["joint_rotations"]
    if rotations.ndim != 3 or rotations.shape[1:] != (j, 4):
        raise ValueError(f"{path}: expected joint_rotations of shape (F, {j}, 4), got {rotations.shape}")
    if pose["root_translations"].shape != (len(rotations), 3):
        raise ValueError(f"{path}: expected root_translations of shape ({len(rotations)}, 3), "
                         f"got {pose['root_translations'].shape}")
    return avatar_mesh.pose_matrices_from_wire(arrays["rest_matrices"], arrays["joint_parents"], **pose)


def export_glb(avatar_path: Path, out: Path, texture_size: int = 1024, motion: Path | None = None,
               fps: float = 24.0, standard_names: bool = True, displace: bool = True) -> Path:
    avatar = avatar_files.read_avatar(avatar_path)
    if not avatar.rigged:
        raise ValueError(f"{avatar_path}: not a rigged avatar (no skeleton or skin): a mesh needs both")
    template = load_template(str(avatar.meta.get("template", "anny")))
    poses = read_motion(motion, avatar.arrays) if motion is not None else None
    mesh = avatar_mesh.avatar_mesh(template, avatar.arrays, avatar.joint_names,
                                   name=f"GenLCA {avatar_path.stem}", texture_size=texture_size,
                                   pose_matrices=poses, fps=fps, standard_names=standard_names, displace=displace)
    return gltf.write_glb(out, mesh)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="genlca-export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("avatar", type=Path, help="the avatar (.safetensors)")
    parser.add_argument("--out", type=Path, required=True, help="the .glb to write")
    parser.add_argument("--texture-size", type=int, default=1024, help="side of the colour texture (pixels)")
    parser.add_argument("--motion", type=Path, help="an .npz with joint_rotations and root_translations")
    parser.add_argument("--fps", type=float, default=24.0, help="frames per second of --motion")
    parser.add_argument("--keep-template-names", action="store_true",
                        help="keep the template's joint names (default: Mixamo / Unity-humanoid names)")
    parser.add_argument("--no-displace", action="store_true",
                        help="the template's body only (default: pushed out to the avatar's clothes and hair)")
    args = parser.parse_args(argv)
    if args.out.suffix.lower() != ".glb":
        parser.error(f"--out must end in .glb, got {args.out}")
    start = time.perf_counter()
    try:
        path = export_glb(args.avatar, args.out, args.texture_size, args.motion, args.fps,
                          not args.keep_template_names, not args.no_displace)
    except (ValueError, OSError, avatar_files.AvatarFileError) as exc:
        print(f"genlca-export: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
