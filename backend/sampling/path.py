"""THE time convention of the project, written once here and nowhere else (docs/DESIGN.md, "The method, as built", 4):

    x_t = (1 - t) * x_data + t * noise,    t in [0, 1],  t = 1 is pure noise, t = 0 is data,
    v   = dx_t / dt = noise - x_data       (what the model predicts).

Sampling integrates dx/dt = v(x, t) from t = 1 down to t = 0. Anything that needs to noise data to a
given t, or to recover x_data / noise from (x_t, v), calls the functions here.
"""
from __future__ import annotations

import dataclasses
import math

import torch


def _bcast(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """t (B,) or () -> broadcastable to x (B, ...)."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return t.reshape(t.shape + (1,) * (x.ndim - t.ndim)) if t.ndim else t


@dataclasses.dataclass(frozen=True)
class FlowPath:
    """The straight (rectified-flow) path between data and Gaussian noise."""

    def sample(self, x_data: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x_data, noise (B, ...), t (B,) -> (x_t (B, ...), target velocity (B, ...))."""
        if x_data.shape != noise.shape:
            raise ValueError(f"x_data and noise must have one shape, got {tuple(x_data.shape)} and {tuple(noise.shape)}")
        return self.interpolate(x_data, noise, t), noise - x_data

    @staticmethod
    def interpolate(x_data: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        tb = _bcast(torch.as_tensor(t), x_data)
        return (1.0 - tb) * x_data + tb * noise

    @staticmethod
    def data_from_velocity(x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """x_data = x_t - t * v (exact on the straight path)."""
        return x_t - _bcast(torch.as_tensor(t), x_t) * v

    @staticmethod
    def noise_from_velocity(x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """noise = x_t + (1 - t) * v."""
        return x_t + (1.0 - _bcast(torch.as_tensor(t), x_t)) * v


def sample_logit_normal(n: int, mean: float = 0.0, std: float = 1.0, generator: torch.Generator | None = None,
                        device: torch.device | str | None = None) -> torch.Tensor:
    """(n,) training times t = sigmoid(N(mean, std)) (SD3's logit-normal: more weight mid-path)."""
    z = torch.randn(n, generator=generator, device=device) * std + mean
    return torch.sigmoid(z)


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Timestep shift s: t' = s t / (1 + (s - 1) t). s > 1 spends more steps near noise (t = 1), which
    large token maps need (more dimensions keep more signal at a given t); s = 1 is the identity."""
    if shift <= 0:
        raise ValueError(f"timestep shift must be > 0, got {shift}")
    return shift * t / (1.0 + (shift - 1.0) * t)


def time_grid(steps: int, shift: float = 1.0, t_start: float = 1.0, t_end: float = 0.0,
              device: torch.device | str | None = None) -> torch.Tensor:
    """(steps + 1,) float64 decreasing times from t_start to t_end, uniform then shifted."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not (0.0 <= t_end < t_start <= 1.0):
        raise ValueError(f"expected 0 <= t_end < t_start <= 1, got t_start={t_start}, t_end={t_end}")
    u = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64, device=device)
    grid = shift_time(u, shift)  # shifted grid on [1, 0]
    return t_end + (t_start - t_end) * grid


def logit_normal_density(t: torch.Tensor, mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """p(t) of `sample_logit_normal` (for tests and loss weighting)."""
    logit = torch.log(t / (1 - t))
    return torch.exp(-0.5 * ((logit - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi) * t * (1 - t))
