"""End-to-end demo (`make demo`): the artist's path without Blender.

Starts the backend service on a free loopback port, then, as a client over ZeroMQ: says hello,
generates an avatar, fetches it as rigged Gaussians, renders a turntable and a posed animation (arm
raise + knee bend, by linear blend skinning), and exports it as a 3DGS .ply and a .safetensors avatar.
Everything lands in outputs/demo/ (or --out).
"""
from __future__ import annotations

import argparse
import json
import math
import socket
import time
from pathlib import Path

import numpy as np

from bridge.wire import protocol
from bridge.wire.client import BridgeClient
from bridge.files.png import write_png


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def axis_angle_quat(axis, degrees: float) -> np.ndarray:  # (4,) wxyz
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    half = math.radians(degrees) / 2
    return np.array([math.cos(half), *(math.sin(half) * axis)], dtype=np.float32)


def turntable_cameras(n: int, width: int, height: int, radius: float = 3.2, fov_deg: float = 36.0):
    """n cameras around the avatar as (world_to_camera (n, 4, 4), intrinsics (n, 3, 3)) float32 arrays,
    looking at the body centre from slightly above; the first in front of the avatar (it faces -Y)."""
    from backend.render.camera import orbit_cameras

    cams = orbit_cameras(n, radius, height=0.88 + 0.25, target=(0.0, 0.0, 0.88), fov=fov_deg, width=width,
                         height_px=height, start_deg=-90.0)
    return (np.asarray([c.world_to_camera for c in cams], np.float32),
            np.asarray([c.intrinsics for c in cams], np.float32))


def animation_poses(joint_names: list[str], rest_matrices: np.ndarray, frames: int) -> np.ndarray:
    """(F, J, 4) local rotations: the left arm rises and the right knee bends over `frames` frames.

    The avatar faces -Y with its left arm towards +X: a negative turn about +Y lifts that arm; a positive
    turn about +X swings the lower leg backwards (+Y), a natural knee bend.
    """
    poses = np.zeros((frames, len(joint_names), 4), np.float32)
    poses[..., 0] = 1.0
    arm = joint_names.index("upperarm01.L")
    knee = joint_names.index("lowerleg01.R")
    for f in range(frames):
        s = f / max(frames - 1, 1)
        # rotate about the world Y axis (front-back), expressed in each bone's rest frame
        poses[f, arm] = axis_angle_quat(rest_matrices[arm, :3, :3].T @ np.array([0.0, 1.0, 0.0]), -70.0 * s)
        poses[f, knee] = axis_angle_quat(rest_matrices[knee, :3, :3].T @ np.array([1.0, 0.0, 0.0]), 60.0 * s)
    return poses


def render_frames(client: BridgeClient, avatar_id: str, poses, w2c, intr, width: int, height: int,
                  out_dir: Path, stem: str, timeout_s: float) -> list[Path]:
    frames = poses.shape[0]
    arrays = {"joint_rotations": poses, "root_translations": np.zeros((frames, 3), np.float32),
              "world_to_camera": w2c, "intrinsics": intr}
    paths: list[Path] = []

    def on_progress(reply) -> None:
        if reply.header.get("stage") == "frame" and "rgba" in reply.arrays:
            index = int(reply.header["frame"])
            paths.append(write_png(out_dir / f"{stem}_{index:03d}.png", reply.arrays["rgba"]))
            print(f"  {stem} frame {index + 1}/{frames}", flush=True)

    client.call(protocol.Render(avatar_id=avatar_id, width=width, height=height, background=(1.0, 1.0, 1.0)),
                arrays, timeout_s=timeout_s, on_progress=on_progress)
    return paths


def contact_sheet(paths: list[Path], columns: int) -> np.ndarray:
    from bridge.files.png import read_png

    images = [read_png(p) for p in paths]
    h, w, c = images[0].shape
    rows = math.ceil(len(images) / columns)
    sheet = np.full((rows * h, columns * w, c), 255, np.uint8)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        sheet[r * h:(r + 1) * h, col * w:(col + 1) * w] = image
    return sheet


def run(out_dir: Path, prompt: str, seed: int, size: int, views: int, frames: int) -> dict:
    from backend.service.handlers import default_handlers
    from backend.service.server import BackendServer

    out_dir.mkdir(parents=True, exist_ok=True)
    address = f"tcp://127.0.0.1:{free_port()}"
    timings: dict[str, float] = {}
    server = BackendServer(address, default_handlers())
    server.serve_in_thread()
    client = BridgeClient(address, timeout_s=120.0)
    try:
        t = time.perf_counter()
        hello = client.call(protocol.Hello(client="genlca-demo"), timeout_s=10.0)
        print(f"connected to backend {address}: protocol {hello.header.get('protocol')}, "
              f"ops {hello.header.get('capabilities')}")
        generated = client.call(protocol.Generate(prompt=prompt, seed=seed), timeout_s=300.0)
        avatar_id = generated.header["avatar_id"]
        timings["generate_s"] = time.perf_counter() - t
        print(f"generated avatar {avatar_id}: {json.dumps(generated.header.get('meta'))}")
        if "placeholder" in str(generated.header.get("meta", {}).get("generator", "")):
            print("note: no diffusion model is trained yet; the prompt only seeds a placeholder token map")

        t = time.perf_counter()
        avatar = client.call(protocol.GetAvatar(avatar_id=avatar_id), timeout_s=60.0)
        timings["get_avatar_s"] = time.perf_counter() - t
        joint_names = list(avatar.header["joint_names"])
        rest = avatar.arrays["rest_matrices"]
        n = avatar.arrays["means"].shape[0]
        print(f"rigged avatar: {n} Gaussians, {len(joint_names)} joints, "
              f"{sum(a.nbytes for a in avatar.arrays.values()) / 1e6:.1f} MB over the wire")

        t = time.perf_counter()
        w2c, intr = turntable_cameras(views, size, size)
        rest_pose = np.tile(np.array([1, 0, 0, 0], np.float32), (views, len(joint_names), 1))
        turntable = render_frames(client, avatar_id, rest_pose, w2c, intr, size, size, out_dir, "turntable", 600.0)
        write_png(out_dir / "turntable_sheet.png", contact_sheet(turntable, columns=min(views, 4)))
        timings["turntable_s"] = time.perf_counter() - t

        t = time.perf_counter()
        poses = animation_poses(joint_names, rest, frames)
        w2c, intr = turntable_cameras(1, size, size)
        posed = render_frames(client, avatar_id, poses, np.repeat(w2c, frames, 0), np.repeat(intr, frames, 0),
                              size, size, out_dir, "animation", 600.0)
        write_png(out_dir / "animation_sheet.png", contact_sheet(posed, columns=min(frames, 4)))
        timings["animation_s"] = time.perf_counter() - t

        for fmt in protocol.EXPORT_FORMATS:
            exported = client.call(protocol.Export(avatar_id=avatar_id, format=fmt), timeout_s=60.0)
            path = out_dir / exported.header["filename"]
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(exported.arrays["file"].tobytes())
            tmp.replace(path)
            print(f"exported {path} ({path.stat().st_size / 1e6:.1f} MB)")
    finally:
        client.close()
        server.stop()
    summary = {"avatar_id": avatar_id, "gaussians": n, "joints": len(joint_names), "out_dir": str(out_dir),
               "timings": {k: round(v, 2) for k, v in timings.items()}}
    tmp = out_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(out_dir / "summary.json")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"))
    parser.add_argument("--prompt", default="a woman in a red shirt and dark jeans")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--size", type=int, default=384, help="frame width and height in pixels")
    parser.add_argument("--views", type=int, default=8, help="turntable views")
    parser.add_argument("--frames", type=int, default=4, help="animation frames")
    args = parser.parse_args(argv)
    summary = run(args.out, args.prompt, args.seed, args.size, args.views, args.frames)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
