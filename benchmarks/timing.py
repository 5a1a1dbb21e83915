"""What the benchmarks share: the median of timed runs after a warm-up, and the machine line they print."""
from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable


def median_seconds(fn: Callable[[], object], runs: int) -> float:
    """Median wall-clock seconds of `runs` calls of fn, after one untimed warm-up call."""
    if runs < 1:
        raise ValueError(f"runs must be at least 1, got {runs}")
    fn()  # warm-up: lazy imports, allocator, caches
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def machine_line() -> str:
    """The processor, CPU count and torch threads, for the first line of a benchmark's output."""
    import torch

    return (f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads")
