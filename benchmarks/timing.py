"""What the benchmarks share: the median of timed runs after a warm-up, and the machine line they print."""
from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable


def median_seconds(fn: Callable[[], object], runs: int, warm_up: bool = True) -> float:
    """Median wall-clock seconds of `runs` calls of fn, after one untimed warm-up call (unless warm_up=False:
    the caller warmed up already)."""
    return median_wall_and_cpu(fn, runs, warm_up)[0]


def median_wall_and_cpu(fn: Callable[[], object], runs: int, warm_up: bool = True) -> tuple[float, float]:
    """Median wall-clock and median CPU seconds of this process (all its threads) over `runs` calls of fn.
    On a shared machine the CPU seconds are what the work costs; wall time also counts waiting for a core."""
    if runs < 1:
        raise ValueError(f"runs must be at least 1, got {runs}")
    if warm_up:
        fn()  # lazy imports, allocator, caches
    wall, cpu = [], []
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def machine_line() -> str:
    """The processor, CPU count and torch threads, for the first line of a benchmark's output."""
    import torch

    return (f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads")
