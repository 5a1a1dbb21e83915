"""CPU render benchmark: the torch twin vs the project's own reference loop (a plain per-tile loop written
here, over gsplat's pure-torch projection).

The reference loop is this project's own simple implementation, the yardstick the twin was optimised
against; it is not gsplat's renderer (gsplat rasterises on CUDA only) and not any other project's CPU
renderer, so the speed-up it shows is over our own straightforward code, not over a peer.

    python -m benchmarks.render            # all cases, each in a fresh subprocess (peak RSS per case)
    python -m benchmarks.render --case torch:50000:fwd   # one case, prints one JSON line

Scene: an avatar-like body (Gaussians on an ellipsoid 1.7 m tall, 0.5 m wide) 2.5 m from the camera,
filling a 512x512 frame, scales 1-2 cm, opacities 0.5-0.99, SH degree 3 (backend/render/scenes.py).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from backend.avatar.gaussians import Gaussians
from backend.render.scenes import body_camera, body_scene


def reference_loop_render(g: Gaussians, cam, tile: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """The project's own reference: gsplat's pure-torch projection + a plain Python loop over tiles with a
    full cumprod per tile (no early stop). Written for this benchmark; not a peer renderer."""
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci, _spherical_harmonics

    vm = torch.as_tensor(cam.world_to_camera, dtype=torch.float32)[None]  # (1, 4, 4)
    k = torch.as_tensor(cam.intrinsics, dtype=torch.float32)[None]  # (1, 3, 3)
    w, h = cam.width, cam.height
    covars, _ = _quat_scale_to_covar_preci(g.rotations, g.log_scales.exp(), compute_preci=False)
    radii, means2d, depths, conics, _ = _fully_fused_projection(g.means, covars, vm, k, w, h)
    radii, means2d, depths, conics = radii[0], means2d[0], depths[0], conics[0]  # (N, 2), (N, 2), (N,), (N, 3)
    campos = torch.linalg.inv(vm[0])[:3, 3]
    colors = (_spherical_harmonics(3, g.means - campos, g.sh) + 0.5).clamp_min(0)  # (N, 3)
    opac = torch.sigmoid(g.opacity_logits)  # (N,)
    order = torch.argsort(depths)
    rgb = torch.zeros(h, w, 3)
    alpha_img = torch.zeros(h, w, 1)
    ys, xs = torch.meshgrid(torch.arange(tile) + 0.5, torch.arange(tile) + 0.5, indexing="ij")
    rows, tiles_rgb, tiles_a = [], [], []
    for ty in range(0, h, tile):
        for tx in range(0, w, tile):
            m = order[((radii[order] > 0).all(-1) & (means2d[order, 0] + radii[order, 0] > tx)
                       & (means2d[order, 0] - radii[order, 0] < tx + tile) & (means2d[order, 1] + radii[order, 1] > ty)
                       & (means2d[order, 1] - radii[order, 1] < ty + tile))]
            if len(m) == 0:
                continue
            dx = (xs + tx).reshape(-1, 1) - means2d[m, 0]  # (256, K)
            dy = (ys + ty).reshape(-1, 1) - means2d[m, 1]  # (256, K)
            c = conics[m]
            sigma = 0.5 * (c[:, 0] * dx * dx + c[:, 2] * dy * dy) + c[:, 1] * dx * dy
            a = (opac[m] * torch.exp(-sigma)).clamp_max(0.999)
            a = torch.where(a >= 1 / 255, a, torch.zeros_like(a))
            t = torch.cumprod(torch.cat([torch.ones_like(a[:, :1]), 1 - a[:, :-1]], 1), 1)  # (256, K)
            wts = a * t
            tiles_rgb.append(((wts @ colors[m]).reshape(tile, tile, 3), ty, tx))
            tiles_a.append(wts.sum(1).reshape(tile, tile, 1))
    for (c, ty, tx), a in zip(tiles_rgb, tiles_a):
        rgb = rgb.index_put((torch.arange(ty, ty + tile)[:, None], torch.arange(tx, tx + tile)[None]), c)
        alpha_img = alpha_img.index_put((torch.arange(ty, ty + tile)[:, None], torch.arange(tx, tx + tile)[None]), a)
    return rgb, alpha_img


def run_case(impl: str, n: int, mode: str, repeats: int = 5) -> dict:
    """impl: "torch" (the twin) or "ownref" (reference_loop_render); mode: "fwd" or "fwd+bwd"."""
    if impl not in ("torch", "ownref") or mode not in ("fwd", "fwd+bwd"):
        raise ValueError(f"expected impl torch|ownref and mode fwd|fwd+bwd, got {impl!r}, {mode!r}")
    torch.set_num_threads(2)
    from backend.render import render

    g = body_scene(n)
    cam = body_camera()
    base_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # torch + scene, before any render
    leaves = [g.means, g.rotations, g.log_scales, g.opacity_logits, g.sh]
    times = []
    for i in range(repeats + 1):  # the first run warms up
        for t in leaves:
            t.grad = None
            t.requires_grad_(mode == "fwd+bwd")
        start = time.perf_counter()
        with torch.set_grad_enabled(mode == "fwd+bwd"):
            if impl == "torch":
                out = render(g, cam)
                rgb, alpha = out.rgb[0], out.alpha[0]
            else:
                rgb, alpha = reference_loop_render(g, cam)
            if mode == "fwd+bwd":
                (rgb.sum() + alpha.sum()).backward()
        if i:
            times.append(time.perf_counter() - start)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"impl": impl, "n": n, "mode": mode, "median_s": statistics.median(times), "peak_rss_mb": peak_mb,
            "render_mb": peak_mb - base_mb,
            "coverage": float(alpha.detach().mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", help="impl:n:mode, e.g. torch:50000:fwd (runs in this process)")
    parser.add_argument("--sizes", default="50000,200000")
    args = parser.parse_args()
    if args.case:
        impl, n, mode = args.case.split(":")
        print(json.dumps(run_case(impl, int(n), mode)))
        return
    rows = {}
    for n in (int(s) for s in args.sizes.split(",")):
        for mode in ("fwd", "fwd+bwd"):
            for impl in ("torch", "ownref"):
                if impl == "ownref" and mode == "fwd+bwd" and n > 50000:
                    print(f"ownref N={n:>7,} {mode:8s} skipped: its autograd graph needs ~27 GB", flush=True)
                    continue
                res = subprocess.run([sys.executable, "-m", "benchmarks.render", "--case", f"{impl}:{n}:{mode}"],
                                     capture_output=True, text=True)
                if res.returncode != 0:
                    print(f"{impl} {n} {mode}: failed ({res.stderr.strip().splitlines()[-1:]})", flush=True)
                    continue
                rows[impl, n, mode] = r = json.loads(res.stdout.strip().splitlines()[-1])
                print(f"{impl:6s} N={n:>7,} {mode:8s} median {r['median_s']:.3f} s  peak RSS {r['peak_rss_mb']:.0f} MB"
                      f" (render {r['render_mb']:.0f} MB above torch + scene)  coverage {r['coverage']:.2f}", flush=True)
            if ("torch", n, mode) in rows and ("ownref", n, mode) in rows:
                t, b = rows["torch", n, mode], rows["ownref", n, mode]
                print(f"  -> twin is {b['median_s'] / t['median_s']:.1f}x faster than our own reference loop, "
                      f"{b['render_mb'] / max(t['render_mb'], 1.0):.1f}x less render memory", flush=True)


if __name__ == "__main__":
    main()
