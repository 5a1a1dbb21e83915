"""What the benchmarks share: the median of timed runs after a warm-up, the machine line they print, and the
atomic write of their --json results."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

from bridge.files.atomic import write_atomic


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


def write_json_atomic(path: str | Path, value: Any, indent: int = 1) -> None:
    """value as JSON at path, written beside it and renamed: a reader never sees half a file."""
    write_atomic(path, json.dumps(value, indent=indent))
