"""The rigged-mesh export (backend/export): time, and how well the mesh stands for the Gaussians.

    .venv/bin/python -m benchmarks.glb_export [--gaussians 100000] [--frames 250]

For a trousers, a dress and a long-hair avatar on the anny template (tests/export_avatars.py, seeded): the
export time (mesh, texture, PNG, GLB with a --frames motion), the silhouette IoU of mesh against opaque
Gaussians over 8 views around the body (backend/export/fidelity.py, orthographic 256 px; the same with the
bare template for reference), and per body region (by height) the CIEDE2000 difference between the mean
texture colour at the mesh's vertices there and the mean colour of the opaque Gaussian nearest to each of
those vertices (what the splats show at that point of the surface). Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from backend.avatar.template import load_template
from backend.export import avatar_mesh, fidelity, gltf
from tests.export_avatars import KINDS, template_avatar

REGIONS = {"legs": (0.10, 0.40), "torso": (0.60, 0.80), "head": (0.90, 1.00)}  # fractions of the height


def texture_at_vertices(mesh: gltf.SkinnedMesh) -> np.ndarray:
    """(V, 3) sRGB in [0, 1]: the texture at each vertex's UV (decoded from the mesh's own PNG)."""
    import zlib

    data = mesh.texture_png
    pos, idat, w = 8, b"", 0
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            w, h = int.from_bytes(body[:4], "big"), int.from_bytes(body[4:8], "big")
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    image = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, -1)[:, 1:].reshape(h, w, 3)
    px = np.clip((mesh.uvs * (w, h)).astype(int), 0, (w - 1, h - 1))
    return image[px[:, 1], px[:, 0]] / 255.0


def region_delta_e(mesh: gltf.SkinnedMesh, arrays: dict, kind: str) -> dict[str, float]:
    rgb, opacity = avatar_mesh.gaussian_colours(arrays)
    means = arrays["means"].astype(np.float64)
    verts = mesh.positions.astype(np.float64) @ avatar_mesh.Z_UP_TO_Y_UP[:3, :3]  # Z-up
    height = verts[:, 2].max()
    tex = texture_at_vertices(mesh)
    opaque = opacity > 0.5
    seen = rgb[opaque][avatar_mesh.nearest_points(verts, means[opaque])]  # the splat colour at each vertex
    regions = dict(REGIONS)
    if kind == "dress":
        regions = {"skirt": (0.30, 0.45), **{k: v for k, v in REGIONS.items() if k != "legs"}}
    out = {}
    for name, (lo, hi) in regions.items():
        v = (verts[:, 2] >= lo * height) & (verts[:, 2] <= hi * height)
        out[name] = float(fidelity.delta_e00(fidelity.srgb_to_lab(seen[v].mean(0)),
                                             fidelity.srgb_to_lab(tex[v].mean(0))))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gaussians", type=int, default=100_000, help="Gaussians on the body (plus skirt / hair)")
    ap.add_argument("--frames", type=int, default=250, help="frames of motion in the GLB")
    args = ap.parse_args()
    print(f"# {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, numpy "
          f"{np.__version__}")
    template = load_template("anny")
    rows = []
    for kind in KINDS:
        header, arrays = template_avatar(template, kind, n=args.gaussians)
        j = len(header["joint_names"])
        rng = np.random.default_rng(0)
        q = np.concatenate([np.ones((args.frames, j, 1)), rng.normal(0, 0.2, (args.frames, j, 3))], -1)
        motion = {"joint_rotations": q / np.linalg.norm(q, axis=-1, keepdims=True),
                  "root_translations": rng.normal(0, 0.1, (args.frames, 3))}
        start = time.perf_counter()
        poses = avatar_mesh.pose_matrices_from_wire(arrays["rest_matrices"], arrays["joint_parents"], **motion)
        mesh = avatar_mesh.avatar_mesh(template, arrays, header["joint_names"], pose_matrices=poses)
        data = gltf.glb_bytes(mesh)
        seconds = time.perf_counter() - start
        _, opacity = avatar_mesh.gaussian_colours(arrays)
        radii = 2.0 * np.exp(arrays["log_scales"]).max(1)

        def iou(m: gltf.SkinnedMesh) -> np.ndarray:
            pos = m.positions.astype(np.float64) @ avatar_mesh.Z_UP_TO_Y_UP[:3, :3]
            return fidelity.silhouette_iou(fidelity.silhouettes(arrays["means"], radii, opacity, pos,
                                                                m.indices.astype(np.int64)))

        carried = iou(mesh)
        bare = iou(avatar_mesh.avatar_mesh(template, arrays, header["joint_names"], texture_size=64, displace=False))
        colours = region_delta_e(mesh, arrays, kind)
        print(f"{kind}: {len(arrays['means'])} Gaussians, export {seconds:.2f} s, {len(data) / 1e6:.1f} MB; IoU "
              f"mean {carried.mean():.3f} min {carried.min():.3f} (bare {bare.mean():.3f} / {bare.min():.3f}); "
              f"ΔE00 {colours}")
        rows.append((kind, len(arrays["means"]), seconds, len(data), carried, bare, colours))
    print(f"\n| avatar | Gaussians | export ({args.frames}-frame motion) | GLB | silhouette IoU, 8 views: mean / min "
          f"| bare template: mean / min | region colour ΔE00 |\n|---|---|---|---|---|---|---|")
    for kind, n, s, size, c, b, col in rows:
        de = ", ".join(f"{k} {v:.1f}" for k, v in col.items())
        print(f"| {kind} | {n // 1000}k | {s:.2f} s | {size / 1e6:.1f} MB | {c.mean():.3f} / {c.min():.3f} | "
              f"{b.mean():.3f} / {b.min():.3f} | {de} |")


if __name__ == "__main__":
    main()
