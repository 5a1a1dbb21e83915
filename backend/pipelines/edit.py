"""Editing an avatar's token map with the diffusion model: a new prompt over it, or one region regenerated.

- `edit_text`: keeps identity and changes what the prompt says. The source is noised to `strength`
  along the flow path and integrated back under the new prompt (SDEdit for flows); strength 0 returns
  the source, 1 ignores it. With `invert=True` the source is first integrated up to t = strength along
  the ODE under an empty prompt (deterministic, closer to the source than fresh noise).
- `regenerate_region`: inpainting in token space with the body-part mask of the UV atlas; every texel
  outside the region keeps its source token bit for bit, hence every Gaussian decoded from it.
- `edit_mask` / `regenerate_auto`: DiffEdit (Couairon et al. 2022) in token space. Where the DiT's velocity
  under the new prompt differs from its velocity under the reference prompt (the source's own caption) is
  what the prompt changes; that mask is then inpainted like a named region.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from backend.avatar.body_parts import REGION_NAMES
from backend.sampling.editing import edit_from_strength, inpaint, noise_like
from backend.sampling.path import FlowPath, time_grid
from backend.sampling.recipe import decoder_tokens
from backend.sampling.solvers import solve_ode
from backend.pipelines.generate import (Cancel, Progress, SamplerSettings, condition, guided_velocity,
                                       stage_progress)


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
            x_s = solve_ode(source_velocity, x_src, up, settings.method, progress=stage_progress(progress, "invert"),
                            cancel=cancel)
            x = solve_ode(velocity, x_s, up.flip(0), settings.method, progress=stage_progress(progress, "sample"),
                          cancel=cancel)
        else:
            x = edit_from_strength(velocity, x_src, strength, steps, seed=seed, method=settings.method,
                                   shift=settings.shift, progress=stage_progress(progress, "sample"), cancel=cancel)
        out = decoder_tokens(dit, x, atlas)[0]
    return out.cpu(), info


def regenerate_region(bundle, tokens: torch.Tensor, regions: str | list[str], prompt: str = "", *, seed: int = 0,
                      settings: SamplerSettings | None = None, progress: Progress | None = None,
                      cancel: Cancel | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """tokens (C, R, R) -> (tokens with `regions` regenerated under `prompt`, info); bit-identical elsewhere."""
    names = [regions] if isinstance(regions, str) else list(regions)
    unknown = [n for n in names if n not in REGION_NAMES]
    if not names or unknown:
        raise ValueError(f"unknown region(s) {unknown or names}; expected some of {list(REGION_NAMES)}")
    settings = settings or SamplerSettings()
    region = bundle.layout.region_mask(names)  # (R, R)
    out = _inpaint_mask(bundle, tokens, region, prompt, seed=seed, settings=settings, progress=progress,
                        cancel=cancel)
    return out, {"regions": names, "steps": settings.steps, "guidance": settings.guidance, "seed": seed,
                 "regenerated_texels": int(region.sum()), "used": ["text"] if prompt.strip() else []}


MASK_SEEDS = (0, 1, 2, 3)   # fixed noise draws of the mask estimate (independent of the edit's seed)
MASK_T = 0.5                # the noise level the two velocities are compared at
MASK_THRESHOLD = 0.5        # a texel is masked where its min-max normalised smoothed difference >= this
MASK_DILATE = 1             # texels of 3x3 dilation after thresholding
MASK_SNAP = None            # snap=f: a body region at least f masked is masked whole; off (measured no better)


def _atlas_blur(x: torch.Tensor, atlas: torch.Tensor) -> torch.Tensor:
    """3x3 box mean of x (R, R) over atlas texels only (texels outside the atlas neither give nor take)."""
    a = atlas.to(x.dtype)[None, None]
    num = F.avg_pool2d((x * atlas)[None, None], 3, stride=1, padding=1, count_include_pad=True)
    den = F.avg_pool2d(a, 3, stride=1, padding=1, count_include_pad=True)
    return torch.where(atlas, num[0, 0] / den[0, 0].clamp_min(1e-12), torch.zeros_like(x))


def edit_mask(bundle, tokens: torch.Tensor, prompt: str, ref_prompt: str = "", *, seeds: tuple[int, ...] = MASK_SEEDS,
              t: float = MASK_T, threshold: float | str = MASK_THRESHOLD, dilate: int = MASK_DILATE,
              snap: float | None = MASK_SNAP) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (mask (R, R) bool, inside the atlas; difference map (R, R) float in [0, 1], 0 outside the atlas).

    The normalised source is noised to t with each of `seeds`; the map is |v(prompt) - v(ref_prompt)| of the
    conditional DiT (no guidance: CFG only scales the difference), averaged over channels and seeds,
    3x3-smoothed on the atlas and min-max normalised over the atlas. Masked: map >= threshold (a level, or
    "otsu": `otsu_threshold` of the map), dilated by
    `dilate` texels, then (snap) every body region whose texels are at least `snap` masked is added whole.
    Identical prompts give identical velocities, so an all-zero map and an empty mask."""

    if threshold != "otsu" and not (isinstance(threshold, (int, float)) and 0.0 < threshold <= 1.0):
        raise ValueError(f"threshold must be in (0, 1] or 'otsu', got {threshold!r}")
    if not 0.0 < t < 1.0 or dilate < 0 or not seeds:
        raise ValueError(f"edit_mask needs 0 < t < 1, dilate >= 0 and a seed; got t={t}, dilate={dilate}, "
                         f"seeds={seeds}")
    if snap is not None and not 0.0 < snap <= 1.0:
        raise ValueError(f"snap must be in (0, 1] or None, got {snap}")
    dit = bundle.dit
    src, atlas = _source(bundle, tokens)
    plain = SamplerSettings(steps=1, guidance=1.0)
    with bundle.lock, torch.no_grad():
        x_src = dit.normalize(src[None]) * atlas
        v_new = guided_velocity(bundle, condition(bundle, prompt, None), plain)
        v_ref = guided_velocity(bundle, condition(bundle, ref_prompt, None), plain)
        tt = torch.full((1,), float(t), device=src.device)
        diff = torch.zeros(atlas.shape, device=src.device)
        for seed in seeds:
            x_t = FlowPath.interpolate(x_src, noise_like(x_src, seed), t)
            diff += (v_new(x_t, tt) - v_ref(x_t, tt)).abs().mean(dim=(0, 1))
    diff = _atlas_blur(diff.float() / len(seeds), atlas)
    low, peak = float(diff[atlas].min()), float(diff[atlas].max())
    if peak > low:  # min-max over the atlas: a change spread evenly over the body does not mask it all
        heat = torch.where(atlas, (diff - low) / (peak - low), torch.zeros_like(diff))
        level = otsu_threshold(heat[atlas]) if threshold == "otsu" else float(threshold)
        mask = (heat >= level) & atlas
    else:
        heat, mask = torch.zeros_like(diff), torch.zeros_like(atlas)
    if dilate and bool(mask.any()):
        k = 2 * dilate + 1
        mask = (F.max_pool2d(mask.float()[None, None], k, stride=1, padding=dilate)[0, 0] > 0) & atlas
    if snap is not None and bool(mask.any()):
        for name in REGION_NAMES:
            region = bundle.layout.region_mask(name).to(mask.device)
            if int(region.sum()) and float((mask & region).sum()) >= snap * float(region.sum()):
                mask |= region
    return mask.cpu(), heat.cpu()


def otsu_threshold(values: torch.Tensor, bins: int = 64) -> float:
    """Otsu's threshold of values in [0, 1]: the level that maximises the between-class variance of the two
    classes it splits the histogram into (parameter-free for a bimodal "changed / kept" map)."""
    hist = torch.histc(values.float(), bins=bins, min=0.0, max=1.0).double()
    p = hist / hist.sum().clamp_min(1.0)
    centres = (torch.arange(bins, dtype=torch.float64) + 0.5) / bins
    w0 = torch.cumsum(p, 0)  # weight of the class at or below each bin
    m0 = torch.cumsum(p * centres, 0)
    mean = m0[-1]
    between = (mean * w0 - m0) ** 2 / (w0 * (1.0 - w0)).clamp_min(1e-12)
    k = int(torch.argmax(between[:-1]))  # split after bin k
    return float((k + 1) / bins)


def regenerate_auto(bundle, tokens: torch.Tensor, prompt: str, ref_prompt: str = "", *, seed: int = 0,
                    settings: SamplerSettings | None = None, threshold: float | str = MASK_THRESHOLD,
                    snap: float | None = MASK_SNAP, progress: Progress | None = None,
                    cancel: Cancel | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """tokens (C, R, R) -> (tokens with `edit_mask(prompt vs ref_prompt)` inpainted under `prompt`, info).

    Every texel outside the mask keeps its source token bit for bit. `inpaint` starts from t = 1 (noise) inside
    the mask, so there is no strength here. An empty mask returns the source unchanged."""
    if not prompt.strip():
        raise ValueError("an auto-region edit needs a prompt (the mask is what that prompt changes)")
    settings = settings or SamplerSettings()
    if progress is not None:
        progress("mask", 0, 1)
    mask, _ = edit_mask(bundle, tokens, prompt, ref_prompt, threshold=threshold, snap=snap)
    if progress is not None:
        progress("mask", 1, 1)
    rule = (f"smoothed |v(prompt) - v(reference)| at t={MASK_T} over seeds {list(MASK_SEEDS)}, min-max normalised, "
            f">= {threshold}, dilated {MASK_DILATE}" + (f", regions >= {snap} masked whole" if snap else ""))
    info: dict[str, Any] = {"steps": settings.steps, "guidance": settings.guidance, "seed": seed,
                            "reference_prompt": ref_prompt, "masked_texels": int(mask.sum()),
                            "masked_fraction": int(mask.sum()) / int(bundle.layout.atlas_mask.sum()),
                            "mask_rule": rule, "used": ["text"]}
    if not bool(mask.any()):
        src, _ = _source(bundle, tokens)
        return src.cpu().clone(), info
    return _inpaint_mask(bundle, tokens, mask, prompt, seed=seed, settings=settings, progress=progress,
                         cancel=cancel), info


def _inpaint_mask(bundle, tokens: torch.Tensor, mask: torch.Tensor, prompt: str, *, seed: int,
                  settings: SamplerSettings, progress: Progress | None,
                  cancel: Cancel | None) -> torch.Tensor:
    """(C, R, R): inpainted where mask (R, R) is True under `prompt`; the source tokens themselves elsewhere."""
    dit = bundle.dit
    src, atlas = _source(bundle, tokens)
    region = mask.to(src.device)
    with bundle.lock, torch.no_grad():
        x_src = dit.normalize(src[None]) * atlas
        velocity = guided_velocity(bundle, condition(bundle, prompt, None), settings)
        x = inpaint(velocity, x_src, ~region[None, None], settings.steps, seed=seed, method=settings.method,
                    shift=settings.shift, progress=stage_progress(progress, "sample"), cancel=cancel)
        new = decoder_tokens(dit, x, atlas)[0]
        out = torch.where(region[None], new, src)  # outside the mask: the source tokens themselves
    return out.cpu()
