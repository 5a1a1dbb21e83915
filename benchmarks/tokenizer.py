"""Tokenizer benchmarks: `python -m benchmarks.tokenizer [--clips 6] [--threads 1] [--checkpoint CKPT]`.

Prints, per preset (tiny, small; fresh weights unless --checkpoint): parameters, seconds per clip of the
tokenizer's forward pass (visibility + encoder + fusion + atlas UNet) on 4 frames of 128x128, and the
library tokenization throughput (clips/s, shards written, `training/tokenize_library.py`) on --clips toy
clip records of 8 frames; and the per-clip optimisation baseline's seconds per step.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from backend.models.tokenizer import load_tokenizer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clips", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--checkpoint", default=None, help="a tiny/small tokenizer checkpoint instead of fresh weights")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from backend.models.tokenizer import Tokenizer, tokenizer_models
    from training.data.records import save_record
    from training.eval_tokenizer import toy_clip
    from training.fit_clip import fit_clip
    from training.tokenize_library import tokenize_library
    from training.train_tokenizer import clip_inputs

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads {args.threads}, "
          f"load average {os.getloadavg()[0]:.1f}")
    presets = ["checkpoint"] if args.checkpoint else ["tiny", "small"]
    for name in presets:
        torch.manual_seed(0)
        model = load_tokenizer(args.checkpoint) if args.checkpoint else Tokenizer.build(tokenizer_models[name]())
        model.eval()
        cfg = model.config
        params = sum(p.numel() for p in model.parameters())
        with tempfile.TemporaryDirectory() as tmp:
            lib = Path(tmp) / "lib"
            clips = [toy_clip(model.template, model.layout, cfg.decoder_config(), s, frames=8, size=128)
                     for s in range(args.clips)]
            for c in clips:
                save_record(c, lib)
            times = []
            with torch.no_grad():
                for c in clips:
                    t0 = time.perf_counter()
                    model(clip_inputs(model, c, [0, 1, 2, 3]))
                    times.append(time.perf_counter() - t0)
            report = tokenize_library(model, lib, Path(tmp) / "shards", shard_size=4, input_frames=8, progress=False)
            t0 = time.perf_counter()
            steps = 10
            fit_clip(model, model.visibility.skeleton, clips[0], [0, 1, 2, 3], steps=steps, render_size=96)
            fit_step = (time.perf_counter() - t0) / steps
        print(f"{name}: R={cfg.resolution} K={cfg.gaussians_per_texel} params {params / 1e6:.2f} M | forward "
              f"{statistics.median(times):.3f} s/clip (4 frames 128x128, median of {len(times)}) | tokenize "
              f"{report['clips_per_s']} clips/s ({report['tokenized']} clips, 8 frames each) | per-clip fit "
              f"{fit_step:.3f} s/step (2 views of 96x96)", flush=True)


if __name__ == "__main__":
    main()
