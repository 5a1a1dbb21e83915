"""The sampling recipe, written once: guided velocity -> ODE from noise -> denormalise -> zero off the atlas.

    tokens = sample_tokens(dit, condition, steps=25, text_scale=4.0, seed=7, atlas_mask=layout.atlas_mask)

Used by generation (backend/pipelines/generate.py) and by evaluation (training's eval), so a sample in
the service and a sample in the eval report come from the same code for the same (model, condition,
seed, settings). Time runs from t = 1 (noise) to t = 0 (data) (backend/sampling/path.py).
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from backend.models.conditioning import guidance_variants
from backend.sampling.editing import noise_like, sample
from backend.sampling.guidance import GuidedVelocity
from backend.sampling.solvers import Method


def guided_velocity(model: Any, condition: dict[str, torch.Tensor], text_scale: float = 4.0,
                    image_scale: float = 1.0) -> GuidedVelocity:
    """Classifier-free guidance over the DiT for `condition` (B, ...): text and image scales (1 = off)."""
    no_text, null = guidance_variants(condition)
    return GuidedVelocity(model, condition, no_text, null, text_scale=text_scale, image_scale=image_scale)


def decoder_tokens(model: Any, x: torch.Tensor, atlas_mask: torch.Tensor | None = None) -> torch.Tensor:
    """x (B, C, R, R) in the model's normalised space -> decoder tokens (B, C, R, R), zero off the atlas."""
    tokens = model.denormalize(x)
    if atlas_mask is not None:
        tokens = tokens * atlas_mask.to(tokens.device, tokens.dtype)
    return tokens


def sample_tokens(model: Any, condition: dict[str, torch.Tensor], steps: int = 25, method: Method = "euler",
                  shift: float = 1.0, text_scale: float = 4.0, image_scale: float = 1.0, seed: int = 0,
                  atlas_mask: torch.Tensor | None = None, progress: Callable[[int, int], None] | None = None,
                  cancel: Callable[[], bool] | None = None) -> torch.Tensor:
    """condition (B, ...) -> token maps (B, C, R, R) in decoder space (zero outside the atlas), on the
    model's device. The noise is drawn from `seed` on the CPU (the same on every device)."""
    cfg = model.config
    device = next(model.parameters()).device
    b = condition["text_mask"].shape[0]
    velocity = guided_velocity(model, condition, text_scale, image_scale)
    noise = noise_like(torch.zeros(b, cfg.token_channels, cfg.resolution, cfg.resolution, device=device), seed)
    x = sample(velocity, noise, steps, method, shift, progress=progress, cancel=cancel)  # (B, C, R, R)
    return decoder_tokens(model, x, atlas_mask)
