"""Editing in token space, on top of any velocity (usually a GuidedVelocity) and the time convention.

- `edit_from_strength`: noise the source to t = s along the path, then integrate back to t = 0 under
  the new condition (SDEdit for flows). s = 0 returns the source, s = 1 ignores it.
- `invert`: integrate the ODE from t = 0 up to t = 1 under the source condition (deterministic
  noise that regenerates the source), then `sample` back under the new condition.
- `inpaint`: regenerate a region; after every solver step the kept region is reset to the source
  noised to the step's time with one fixed noise draw, so at t = 0 it equals the source exactly.
"""
from __future__ import annotations

from typing import Callable

import torch

from backend.sampling.path import FlowPath, time_grid
from backend.sampling.solvers import Method, solve_ode

Velocity = Callable[..., torch.Tensor]


def noise_like(x: torch.Tensor, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(x.shape, generator=gen, dtype=torch.float32).to(x.device, x.dtype)


def sample(velocity: Velocity, noise: torch.Tensor, steps: int, method: Method = "euler", shift: float = 1.0,
           progress=None, cancel=None) -> torch.Tensor:
    """noise (B, ...) at t = 1 -> data (B, ...) at t = 0."""
    return solve_ode(velocity, noise, time_grid(steps, shift), method, progress=progress, cancel=cancel)


def edit_from_strength(velocity: Velocity, x_src: torch.Tensor, strength: float, steps: int, seed: int = 0,
                       method: Method = "euler", shift: float = 1.0, progress=None, cancel=None) -> torch.Tensor:
    """x_src (B, ...) -> edited (B, ...); `steps` covers [strength, 0]."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    if strength == 0.0:
        return x_src.clone()
    x_s = FlowPath.interpolate(x_src, noise_like(x_src, seed), strength)
    return solve_ode(velocity, x_s, time_grid(steps, shift, t_start=strength), method, progress=progress,
                     cancel=cancel)


def invert(velocity: Velocity, x_src: torch.Tensor, steps: int, method: Method = "euler", shift: float = 1.0,
           progress=None, cancel=None) -> torch.Tensor:
    """x_src (B, ...) at t = 0 -> its noise (B, ...) at t = 1 along the ODE (the grid reversed)."""
    return solve_ode(velocity, x_src, time_grid(steps, shift).flip(0), method, progress=progress, cancel=cancel)


def inpaint(velocity: Velocity, x_src: torch.Tensor, keep: torch.Tensor, steps: int, seed: int = 0,
            method: Method = "euler", shift: float = 1.0, progress=None, cancel=None) -> torch.Tensor:
    """Regenerate where keep is False.

    x_src: (B, C, R, R) source token map (model space)
    keep:  (B or 1, 1 or C, R, R) bool, True where the source stays
    returns (B, C, R, R); equal to x_src bit for bit where keep is True
    """
    noise = noise_like(x_src, seed)
    keep = keep.to(torch.bool).to(x_src.device)

    def hold_kept(x: torch.Tensor, t: float) -> torch.Tensor:
        return torch.where(keep, FlowPath.interpolate(x_src, noise, t), x)

    x = torch.where(keep, FlowPath.interpolate(x_src, noise, 1.0), noise)
    # the last hook runs at t = 0 exactly, where (1 - 0) * x_src + 0 * noise is x_src bit for bit
    return solve_ode(velocity, x, time_grid(steps, shift), method, progress=progress, cancel=cancel,
                     step_hook=hold_kept)
