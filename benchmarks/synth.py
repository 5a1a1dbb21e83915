"""Synthetic people per minute: `python -m benchmarks synth` (or `python -m benchmarks.synth --people N`).

Times `training.data.synthetic.generate` end to end (shape fit, painting, token encoding, decoding,
posing, rendering 8 frames of 128 x 128 with the CPU twin, visibility, keypoints, writing the record)
into a temporary folder, after a one-person warm-up (template, layout and shape-basis caches loaded).
The 1,000-people run of docs/BENCHMARKS.md is the CLI itself: `genlca-train synth --people 1000 ...`.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.synth", description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=6)
    parser.add_argument("--workers", type=int, nargs="+", default=[1])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args(argv)

    import torch

    from training.data import synthetic

    rows = []
    for workers in args.workers:
        config = synthetic.SynthConfig(seed=1234, frames=args.frames, width=args.size, height=args.size)
        with tempfile.TemporaryDirectory() as tmp:
            torch.set_num_threads(1)
            synthetic.generate(config, 1, tmp, workers=1, start=10_000, progress=False)  # warm-up
            t0 = time.perf_counter()
            report = synthetic.generate(config, args.people, tmp, workers=workers, progress=False)
            seconds = time.perf_counter() - t0
        rows.append({"workers": workers, "people": report["generated"], "frames": args.frames,
                     "size": f"{args.size}x{args.size}", "seconds": round(seconds, 2),
                     "people_per_min": round(60 * report["generated"] / seconds, 2),
                     "seconds_per_person": round(seconds / max(report["generated"], 1), 3)})
    print(json.dumps({"machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                      "torch": torch.__version__, "results": rows}, indent=2))
    print("\n| workers | people | frames | size | seconds | people/min | s/person |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['workers']} | {r['people']} | {r['frames']} | {r['size']} | {r['seconds']} | "
              f"{r['people_per_min']} | {r['seconds_per_person']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
