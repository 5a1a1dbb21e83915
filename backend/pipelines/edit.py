"""Editing an avatar's token map with the diffusion model: a new prompt over it, or one region regenerated.

- `edit_text`: keeps identity and changes what the prompt says. The source is noised to `strength`
  along the flow path and integrated back under the new prompt (SDEdit for flows); strength 0 returns
  the source, 1 ignores it. With `invert=True` the source is first integrated up to t = strength along
  the ODE under an empty prompt (deterministic, closer to the source than fresh noise).
- `regenerate_region`: inpainting in token space with the body-part mask of the UV atlas; every texel
  outside the region keeps its source token bit for bit, hence every Gaussian decoded from it.
"""
from __future__ import annotations

from typing import Any

import torch

from backend.pipelines.generate import Cancel, Progress, SamplerSettings, _stepper, condition, guided_velocity


def _source(bundle, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The checked source token map on the model's device and the atlas mask there: (C, R, R), (R, R)."""
    c, r = bundle.dit.config.token_channels, bundle.dit.config.resolution
    if tuple(tokens.shape) != (c, r, r):
        raise ValueError(f"the avatar's token map has shape {tuple(tokens.shape)}; this model edits ({c}, {r}, {r}) "
                         f"token maps (an avatar made by another model cannot be edited by this one)")
    if not bool(torch.isfinite(tokens).all()):
        raise ValueError("the avatar's token map contains NaN or inf")
    device = next(bundle.dit.parameters()).device
    return tokens.to(device), bundle.layout.atlas_mask.to(device)


def edit_text(bundle, tokens: torch.Tensor, prompt: str, *, strength: float = 0.6, seed: int = 0,
              settings: SamplerSettings | None = None, invert: bool = False, progress: Progress | None = None,
              cancel: Cancel | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """tokens (C, R, R) -> (edited tokens (C, R, R), info)."""
    from backend.sampling.editing import edit_from_strength
    from backend.sampling.path import time_grid
    from backend.sampling.solvers import solve_ode

    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    settings = settings or SamplerSettings()
    dit = bundle.dit
    src, atlas = _source(bundle, tokens)
    steps = max(1, round(settings.steps * strength)) if strength > 0 else 0
    info: dict[str, Any] = {"strength": strength, "steps": steps, "guidance": settings.guidance, "seed": seed,
                            "inverted": invert, "used": ["text"]}
    if strength == 0.0:
        return src.cpu().clone(), info
    with bundle.lock, torch.no_grad():
        x_src = dit.normalize(src[None]) * atlas
        velocity = guided_velocity(bundle, condition(bundle, prompt, None), settings)
        if invert:
            source_velocity = guided_velocity(bundle, condition(bundle, "", None),
                                              SamplerSettings(steps=settings.steps, guidance=1.0))
            up = time_grid(steps, settings.shift, t_start=strength).flip(0)  # 0 -> strength
            x_s = solve_ode(source_velocity, x_src, up, settings.method, progress=_stepper(progress, "invert"),
                            cancel=cancel)
            x = solve_ode(velocity, x_s, up.flip(0), settings.method, progress=_stepper(progress, "sample"),
                          cancel=cancel)
        else:
            x = edit_from_strength(velocity, x_src, strength, steps, seed=seed, method=settings.method,
                                   shift=settings.shift, progress=_stepper(progress, "sample"), cancel=cancel)
        out = dit.denormalize(x)[0] * atlas
    return out.cpu(), info


def regenerate_region(bundle, tokens: torch.Tensor, regions: str | list[str], prompt: str = "", *, seed: int = 0,
                      settings: SamplerSettings | None = None, progress: Progress | None = None,
                      cancel: Cancel | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """tokens (C, R, R) -> (tokens with `regions` regenerated under `prompt`, info); bit-identical elsewhere."""
    from backend.avatar.body_parts import REGION_NAMES
    from backend.sampling.editing import inpaint

    names = [regions] if isinstance(regions, str) else list(regions)
    unknown = [n for n in names if n not in REGION_NAMES]
    if not names or unknown:
        raise ValueError(f"unknown region(s) {unknown or names}; expected some of {list(REGION_NAMES)}")
    settings = settings or SamplerSettings()
    dit = bundle.dit
    src, atlas = _source(bundle, tokens)
    region = bundle.layout.region_mask(names).to(src.device)  # (R, R)
    with bundle.lock, torch.no_grad():
        x_src = dit.normalize(src[None]) * atlas
        velocity = guided_velocity(bundle, condition(bundle, prompt, None), settings)
        x = inpaint(velocity, x_src, ~region[None, None], settings.steps, seed=seed, method=settings.method,
                    shift=settings.shift, progress=_stepper(progress, "sample"), cancel=cancel)
        new = dit.denormalize(x)[0] * atlas
        out = torch.where(region[None], new, src)  # outside the region: the source tokens themselves
    return out.cpu(), {"regions": names, "steps": settings.steps, "guidance": settings.guidance, "seed": seed,
                       "regenerated_texels": int(region.sum()), "used": ["text"] if prompt.strip() else []}
