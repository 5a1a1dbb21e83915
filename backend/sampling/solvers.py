"""ODE solvers for dx/dt = velocity(x, t, **extras), integrated along a time grid (path.time_grid).

The solver knows nothing about models, guidance or the time convention beyond "t is a scalar per
step": pass any callable `velocity(x (B, ...), t (B,), **extras) -> (B, ...)`. Euler is first order
(one velocity per step), Heun second order (two per step: an Euler predictor, then the trapezoid
corrector; the corrector is evaluated at t = 0 on the last step too, which a flow model allows).

`progress(step, total)` is called after every step; `cancel()` is checked between steps and raises
SamplingCancelled, so a server can stop a job without killing its worker. `step_hook(x, t_next)`
lets editing.py overwrite part of the state after every step (masked inpainting).
"""
from __future__ import annotations

from typing import Callable, Literal, Protocol

import torch


class SamplingCancelled(RuntimeError):
    pass


class Velocity(Protocol):
    def __call__(self, x: torch.Tensor, t: torch.Tensor, **extras) -> torch.Tensor: ...


Method = Literal["euler", "heun"]
METHODS = ("euler", "heun")


@torch.no_grad()
def solve_ode(velocity: Velocity, x: torch.Tensor, grid: torch.Tensor, method: Method = "euler",
              progress: Callable[[int, int], None] | None = None, cancel: Callable[[], bool] | None = None,
              step_hook: Callable[[torch.Tensor, float], torch.Tensor] | None = None,
              **extras) -> torch.Tensor:
    """Integrate from grid[0] to grid[-1].

    velocity: callable (x (B, ...), t (B,), **extras) -> (B, ...)
    x:        (B, ...) state at grid[0] (noise for sampling from t = 1)
    grid:     (S + 1,) times; decreasing to sample, increasing to invert
    returns   (B, ...) state at grid[-1]
    """
    if method not in METHODS:
        raise ValueError(f"unknown solver {method!r}; expected one of {METHODS}")
    if grid.ndim != 1 or grid.numel() < 2:
        raise ValueError(f"expected a 1-D time grid with >= 2 entries, got shape {tuple(grid.shape)}")
    total = grid.numel() - 1
    b = x.shape[0]
    times = [float(v) for v in grid]
    for i in range(total):
        if cancel is not None and cancel():
            raise SamplingCancelled(f"cancelled before step {i + 1} of {total}")
        t0, t1 = times[i], times[i + 1]
        h = t1 - t0
        tb0 = torch.full((b,), t0, dtype=x.dtype, device=x.device)
        v0 = velocity(x, tb0, **extras)  # (B, ...)
        if method == "euler":
            x = x + h * v0
        else:
            x_pred = x + h * v0
            tb1 = torch.full((b,), t1, dtype=x.dtype, device=x.device)
            v1 = velocity(x_pred, tb1, **extras)  # (B, ...)
            x = x + 0.5 * h * (v0 + v1)
        if step_hook is not None:
            x = step_hook(x, t1)
        if progress is not None:
            progress(i + 1, total)
    return x


def function_evaluations(method: Method, steps: int) -> int:
    """Model calls per sample (before guidance doubles them)."""
    return steps * (2 if method == "heun" else 1)
