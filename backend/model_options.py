"""The command-line options of every command that samples a model package in this process (the docs' figures,
the fidelity benchmarks): which package, how many Euler steps, the text CFG scale, and torch's thread count.

Stdlib only at import, so a command's `--help` stays fast; torch loads in `use_threads`.
"""
from __future__ import annotations

import argparse


def add_model_options(parser: argparse.ArgumentParser, *, steps: int = 25, guidance: float = 4.0,
                      threads: int = 1, note: str = "") -> None:
    """--model, --steps, --guidance and --threads on parser; note (e.g. "docs: ") starts the first three helps,
    for commands where only some modes sample."""
    parser.add_argument("--model", default="default",
                        help=f"{note}a model package name under checkpoints/ or a folder (default: $GENLCA_MODEL if "
                             "set, else the shipped package)")
    parser.add_argument("--steps", type=int, default=steps, help=f"{note}Euler steps per sample (default: %(default)s)")
    parser.add_argument("--guidance", type=float, default=guidance,
                        help=f"{note}text CFG scale (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=threads,
                        help="torch CPU threads (default: %(default)s: on a loaded 2-core machine more threads "
                             "oversubscribe it; 0: leave torch's default)")


def use_threads(threads: int) -> None:
    """torch.set_num_threads(threads), or nothing for 0 (torch's default); a negative count is an error."""
    if threads < 0:
        raise ValueError(f"expected --threads >= 0, got {threads}")
    if threads:
        import torch

        torch.set_num_threads(threads)
