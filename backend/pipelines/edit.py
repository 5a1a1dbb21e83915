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

import numpy as np
import torch
import torch.nn.functional as F

from backend.avatar.body_parts import REGION_NAMES
from backend.avatar.garments import (SLOT_CONTINUES, SLOT_CORE, SLOT_NEAR_CORE_M, SLOT_REGIONS, changed_slots,
                                     colour_changes)
from backend.avatar.gaussians import SH_C0
from backend.avatar.tokens import COLOUR_CHANNELS
from backend.perception.regions import delta_e2000, lab_to_srgb, srgb_to_lab
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
    settings = (settings or SamplerSettings()).resolved(bundle.config)
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
    settings = (settings or SamplerSettings()).resolved(bundle.config)
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
MASK_GROW_SHARE = 0.1       # grow: a body region at least this share masked is searched for the garment's colour
MASK_REACH_HEAT = 0.2      # grow by the words: outside the garment's core region the map must be at least this
CONNECT_STEP_M = 0.05       # grow: a sleeve is followed from the torso in hops of at most this (texels 2.3 cm apart, median)
MASK_COLOUR_FLOOR = 0.02    # grow by the words: added to the map's weight when a garment's colour is read
MASK_GROW_TOLERANCE = 12.0  # grow: CIEDE2000 from the masked texels' colour(s) within which a texel joins the mask


def _atlas_blur(x: torch.Tensor, atlas: torch.Tensor) -> torch.Tensor:
    """3x3 box mean of x (R, R) over atlas texels only (texels outside the atlas neither give nor take)."""
    a = atlas.to(x.dtype)[None, None]
    num = F.avg_pool2d((x * atlas)[None, None], 3, stride=1, padding=1, count_include_pad=True)
    den = F.avg_pool2d(a, 3, stride=1, padding=1, count_include_pad=True)
    return torch.where(atlas, num[0, 0] / den[0, 0].clamp_min(1e-12), torch.zeros_like(x))


def edit_mask(bundle, tokens: torch.Tensor, prompt: str, ref_prompt: str = "", *, seeds: tuple[int, ...] = MASK_SEEDS,
              t: float = MASK_T, threshold: float | str = MASK_THRESHOLD, dilate: int = MASK_DILATE,
              snap: float | None = MASK_SNAP, grow: float | None = MASK_GROW_TOLERANCE,
              grow_share: float = MASK_GROW_SHARE) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (mask (R, R) bool, inside the atlas; difference map (R, R) float in [0, 1], 0 outside the atlas).

    The normalised source is noised to t with each of `seeds`; the map is |v(prompt) - v(ref_prompt)| of the
    conditional DiT (no guidance: CFG only scales the difference), averaged over channels and seeds,
    3x3-smoothed on the atlas and min-max normalised over the atlas. Masked: map >= threshold (a level, or
    "otsu": `otsu_threshold` of the map), dilated by
    `dilate` texels, then (snap) every body region whose texels are at least `snap` masked is added whole.
    grow (a CIEDE2000 tolerance, None: off): the thresholded texels mark the garment the prompt changes, and
    `grow_garment` completes it on the source by colour (the difference map finds where a garment is, the
    source's colours say how far it reaches: "green shirt" against "red shirt" lights the shoulders most,
    and the whole red shirt is what must change). Identical prompts give identical velocities, so an
    all-zero map and an empty mask."""

    if threshold != "otsu" and not (isinstance(threshold, (int, float)) and 0.0 < threshold <= 1.0):
        raise ValueError(f"threshold must be in (0, 1] or 'otsu', got {threshold!r}")
    if not 0.0 < t < 1.0 or dilate < 0 or not seeds:
        raise ValueError(f"edit_mask needs 0 < t < 1, dilate >= 0 and a seed; got t={t}, dilate={dilate}, "
                         f"seeds={seeds}")
    if snap is not None and not 0.0 < snap <= 1.0:
        raise ValueError(f"snap must be in (0, 1] or None, got {snap}")
    if (grow is not None and not grow > 0) or not 0.0 < grow_share <= 1.0:
        raise ValueError(f"grow must be a CIEDE2000 tolerance > 0 or None and grow_share in (0, 1]; got "
                         f"grow={grow}, grow_share={grow_share}")
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
    slots = changed_slots(prompt, ref_prompt) if grow is not None else ()
    if slots:  # the words name the garment: look for it where that garment can lie, whatever the map says
        mask = garment_mask(slots, heat, src, bundle.layout, mask, tolerance=grow)
    elif grow is not None and bool(mask.any()):
        mask = grow_garment(mask, heat, src, bundle.layout, tolerance=grow, share=grow_share)
    if dilate and grow is None and bool(mask.any()):  # a grown mask follows the garment's own edge
        k = 2 * dilate + 1
        mask = (F.max_pool2d(mask.float()[None, None], k, stride=1, padding=dilate)[0, 0] > 0) & atlas
    if snap is not None and bool(mask.any()):
        for name in REGION_NAMES:
            region = bundle.layout.region_mask(name).to(mask.device)
            if int(region.sum()) and float((mask & region).sum()) >= snap * float(region.sum()):
                mask |= region
    return mask.cpu(), heat.cpu()


def texel_lab(tokens: torch.Tensor) -> np.ndarray:
    """(R, R, 3) CIELAB of each texel's colour (the SH-DC channels of a (C, R, R) token map, clamped to sRGB)."""
    rgb = (0.5 + SH_C0 * tokens[list(COLOUR_CHANNELS)].float()).clamp(0.0, 1.0)
    return srgb_to_lab(rgb.permute(1, 2, 0).cpu().numpy())


def garment_colours(lab: np.ndarray, weight: np.ndarray, tolerance: float, clusters: int = 2,
                    min_share: float = 0.25, iterations: int = 10) -> np.ndarray:
    """(K, 3) the colour(s) of a garment from its texels' Lab (N, 3) and weights (N,): a weighted k-means
    (k = `clusters`, deterministic farthest-point start) in Lab; a cluster holding less than `min_share` of the
    weight is a stray (skin at the mask's edge) and dropped; clusters closer than `tolerance` merge. Two
    clusters cover a two-colour pattern (stripes, checks)."""
    w = np.asarray(weight, np.float64) + 1e-12
    centres = [lab[int(np.argmax(w))]]  # the most-changed texel's colour, then the farthest from it
    for _ in range(1, clusters):
        d = np.min([delta_e2000(lab, c) for c in centres], axis=0)
        centres.append(lab[int(np.argmax(d))])
    centres = np.asarray(centres)
    for _ in range(iterations):
        nearest = np.argmin(np.stack([delta_e2000(lab, c) for c in centres]), axis=0)
        centres = np.stack([np.average(lab[nearest == k], axis=0, weights=w[nearest == k])
                            if (nearest == k).any() else centres[k] for k in range(len(centres))])
    nearest = np.argmin(np.stack([delta_e2000(lab, c) for c in centres]), axis=0)
    share = np.array([w[nearest == k].sum() for k in range(len(centres))]) / w.sum()
    order = np.argsort(-share)
    kept = [centres[order[0]]]
    for k in order[1:]:
        if share[k] >= min_share and all(float(delta_e2000(centres[k], c)) > tolerance for c in kept):
            kept.append(centres[k])
    return np.asarray(kept)


def grow_garment(mask: torch.Tensor, heat: torch.Tensor, tokens: torch.Tensor, layout, *,
                 tolerance: float = MASK_GROW_TOLERANCE, share: float = MASK_GROW_SHARE) -> torch.Tensor:
    """The garment a difference mask points at, completed on the source by colour: (R, R) bool.

    mask (R, R) bool: the texels the prompt changes most; heat (R, R): the difference map (weights);
    tokens (C, R, R): the source. The garment's colour(s) (`garment_colours` of the masked texels, weighted by
    heat) are looked for in every body region (REGION_NAMES) of which at least `share` is masked; a texel of
    such a region joins the mask where its colour is within `tolerance` CIEDE2000 of one of them. Regions the
    mask does not reach stay as they are, so a red shirt grows over the torso and the sleeves but not into red
    shoes; the masked texels themselves always stay masked."""
    m = mask.cpu().numpy()
    if not m.any():
        return mask.clone()
    lab, h = texel_lab(tokens), heat.cpu().numpy()
    centres = garment_colours(lab[m], h[m], tolerance)
    out = m.copy()
    for name in REGION_NAMES:
        region = layout.region_mask(name).cpu().numpy()
        if not region.any() or (m & region).sum() < share * region.sum():
            continue
        out |= _nearer_garment(lab, region, centres, 1.0 - h, tolerance)
    return torch.from_numpy(out).to(mask.device)


def garment_mask(slots: tuple[str, ...], heat: torch.Tensor, tokens: torch.Tensor, layout, mask: torch.Tensor, *,
                 tolerance: float = MASK_GROW_TOLERANCE, floor: float = MASK_COLOUR_FLOOR,
                 reach_heat: float = MASK_REACH_HEAT) -> torch.Tensor:
    """(R, R) bool: the texels of the garments `slots` (backend/avatar/garments.py) on the source `tokens`: the
    union of `slot_garment` over the slots."""
    lab, h, m = texel_lab(tokens), heat.cpu().numpy(), mask.cpu().numpy()
    out = np.zeros_like(m)
    for slot in slots:
        out |= slot_garment(slot, lab, h, m, layout, tolerance=tolerance, floor=floor, reach_heat=reach_heat)[0]
    return torch.from_numpy(out).to(mask.device)


def slot_garment(slot: str, lab: np.ndarray, heat: np.ndarray, mask: np.ndarray, layout, *,
                 tolerance: float = MASK_GROW_TOLERANCE, floor: float = MASK_COLOUR_FLOOR,
                 reach_heat: float = MASK_REACH_HEAT) -> tuple[np.ndarray, np.ndarray]:
    """One garment on the source: ((R, R) bool its texels, (K, 3) its colour(s) in Lab, main colour first).

    lab (R, R, 3): the source's texel colours (`texel_lab`); heat (R, R): the difference map; mask (R, R) bool:
    the map's thresholded texels. The garment's colour(s) are read in its core region (SLOT_CORE: torso for a
    top, feet for shoes), each texel weighted by the map (+ `floor`, so a map that missed the garment still
    reads the region's dominant colour), and every texel of the regions the garment can cover (SLOT_REGIONS)
    within `tolerance` CIEDE2000 of them is taken (outside the core region only where the map is
    >= `reach_heat`, or, for SLOT_NEAR_CORE_M / SLOT_CONTINUES garments, near or joined to the core),
    together with the map's own texels inside the core region and the specks they enclose."""
    core = layout.region_mask(SLOT_CORE[slot]).cpu().numpy()
    centres = garment_colours(lab[core], heat[core] + floor, tolerance)
    reach = layout.region_mask(list(SLOT_REGIONS[slot])).cpu().numpy()
    found = _nearer_garment(lab, reach, centres, 1.0 - heat, tolerance)
    # beyond its core region a garment must also be where the map sees a change (a beige hoodie beside a
    # white skirt's waist band has nearly its colour; the map tells them apart), or, for a garment that
    # only just leaves its core (a boot's shaft), near its core on the body
    beyond = heat >= reach_heat
    inside, outside = found & core, found & ~core
    if inside.any() and (SLOT_NEAR_CORE_M.get(slot) or slot in SLOT_CONTINUES):
        anchors = layout.anchors.cpu().numpy()
        if SLOT_NEAR_CORE_M.get(slot):
            near = torch.cdist(torch.from_numpy(anchors[outside]).double(),
                               torch.from_numpy(anchors[inside]).double()).amin(1).numpy()
            close = np.zeros_like(found)
            close[outside] = near <= SLOT_NEAR_CORE_M[slot]
            beyond |= close
        if slot in SLOT_CONTINUES:  # a sleeve: the garment's colour, unbroken from the core
            beyond |= _connected(outside, inside, anchors)
    texels = _fill_specks((found & (core | beyond)) | (mask & core), reach, layout.atlas_mask.cpu().numpy())
    return texels, centres


def _connected(candidates: np.ndarray, seeds: np.ndarray, anchors: np.ndarray, step: float = CONNECT_STEP_M,
               rounds: int = 64) -> np.ndarray:
    """(R, R) bool: the `candidates` reached from `seeds` through candidates, each hop at most `step` metres
    between rest-pose anchors (a flood fill over the body surface: a red sleeve joined to a red torso is
    reached, a red shoe below bare red-free shins is not)."""
    cand = torch.from_numpy(anchors[candidates]).double()
    if not len(cand):
        return np.zeros_like(candidates)
    reached = torch.cdist(cand, torch.from_numpy(anchors[seeds]).double()).amin(1) <= step
    hops = torch.cdist(cand, cand) <= step
    for _ in range(rounds):
        more = reached | hops[:, reached].any(1)
        if bool((more == reached).all()):
            break
        reached = more
    out = np.zeros_like(candidates)
    out[candidates] = reached.numpy()
    return out


def _fill_specks(mask: np.ndarray, region: np.ndarray, atlas: np.ndarray, share: float = 0.6,
                 rounds: int = 2) -> np.ndarray:
    """mask (R, R) with the texels of `region` whose atlas neighbours (3 x 3) are at least `share` masked added,
    `rounds` times: a generated garment's colour noise leaves specks beyond the colour tolerance, which would
    keep the old colour inside the new garment."""
    out = mask.copy()
    a = torch.from_numpy(atlas.astype(np.float32))[None, None]
    for _ in range(rounds):
        m = torch.from_numpy(out.astype(np.float32))[None, None]
        near = F.avg_pool2d(m, 3, stride=1, padding=1, count_include_pad=True)[0, 0].numpy()
        valid = F.avg_pool2d(a, 3, stride=1, padding=1, count_include_pad=True)[0, 0].numpy()
        add = region & ~out & (near >= share * np.maximum(valid, 1e-6))
        if not add.any():
            break
        out |= add
    return out


def _nearer_garment(lab: np.ndarray, region: np.ndarray, centres: np.ndarray, rest_weight: np.ndarray,
                    tolerance: float) -> np.ndarray:
    """(R, R) bool: texels of `region` within `tolerance` CIEDE2000 of a garment colour (`centres`) AND nearer to
    it than to the colours of the rest of the region (`garment_colours` weighted by `rest_weight`, the ones
    not within tolerance of the garment's): brown hair next to brown skin is told apart by which it is nearer."""
    d_garment = np.min([delta_e2000(lab[region], c) for c in centres], axis=0)
    rest = [c for c in garment_colours(lab[region], np.clip(rest_weight[region], 0.0, None), tolerance, clusters=3,
                                       min_share=0.1)
            if min(float(delta_e2000(c, g)) for g in centres) > tolerance]
    keep = d_garment <= tolerance
    if rest:
        keep &= d_garment < np.min([delta_e2000(lab[region], c) for c in rest], axis=0)
    out = np.zeros_like(region)
    out[region] = keep
    return out


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
                    snap: float | None = MASK_SNAP, recolour: bool = True, progress: Progress | None = None,
                    cancel: Cancel | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """tokens (C, R, R) -> (tokens with `edit_mask(prompt vs ref_prompt)` changed under `prompt`, info).

    Every texel outside the mask keeps its source token bit for bit. Inside it: when the prompt differs from the
    reference only in a garment's colour words (`garments.colour_changes`; recolour=True) the garment keeps its
    shape, pattern and shading and takes the named colour (`recolour_garment`: the same shirt, green), else the
    mask is inpainted from t = 1 (noise) under the prompt, so there is no strength here. An empty mask returns
    the source unchanged. info["method"] says which ran."""
    if not prompt.strip():
        raise ValueError("an auto-region edit needs a prompt (the mask is what that prompt changes)")
    settings = (settings or SamplerSettings()).resolved(bundle.config)
    if progress is not None:
        progress("mask", 0, 1)
    mask, heat = edit_mask(bundle, tokens, prompt, ref_prompt, threshold=threshold, snap=snap)
    if progress is not None:
        progress("mask", 1, 1)
    slots = changed_slots(prompt, ref_prompt)
    rule = (f"smoothed |v(prompt) - v(reference)| at t={MASK_T} over seeds {list(MASK_SEEDS)}, min-max normalised, "
            f">= {threshold}" + (f", grown over the {'/'.join(slots)} garment by colour (CIEDE2000 <= "
                                 f"{MASK_GROW_TOLERANCE:g})" if slots else
                                 f", grown by colour in regions >= {MASK_GROW_SHARE:g} masked") +
            (f", regions >= {snap} masked whole" if snap else ""))
    changes = colour_changes(prompt, ref_prompt) if recolour else {}
    info: dict[str, Any] = {"steps": settings.steps, "guidance": settings.guidance, "seed": seed,
                            "reference_prompt": ref_prompt, "masked_texels": int(mask.sum()),
                            "masked_fraction": int(mask.sum()) / int(bundle.layout.atlas_mask.sum()),
                            "mask_rule": rule, "garments": list(slots), "used": ["text"],
                            "method": "recolour" if changes and bool(mask.any()) else "inpaint"}
    if not bool(mask.any()):
        src, _ = _source(bundle, tokens)
        return src.cpu().clone(), info
    if changes:
        src, _ = _source(bundle, tokens)
        out = src.cpu().clone()
        lab, h, m = texel_lab(src), heat.numpy(), mask.numpy()
        for slot, rgb in changes.items():
            garment, centres = slot_garment(slot, lab, h, m, bundle.layout)
            out = recolour_garment(out, torch.from_numpy(garment & m), centres, rgb)
        return out, info
    return _inpaint_mask(bundle, tokens, mask, prompt, seed=seed, settings=settings, progress=progress,
                         cancel=cancel), info


def recolour_garment(tokens: torch.Tensor, mask: torch.Tensor, centres: np.ndarray,
                     rgb: tuple[float, float, float]) -> torch.Tensor:
    """(C, R, R): `tokens` with the garment under `mask` (R, R) in the colour `rgb` (sRGB in [0, 1]).

    `centres` (K, 3): the garment's colours in Lab, main colour first (`slot_garment`). The main colour is moved
    to the new colour in CIELAB and every masked texel nearer to it than to a second pattern colour moves by the
    same offset, so shading and the garment's own variation stay (a red shirt's folds are a green shirt's
    folds); a second colour (stripes, a print) and every channel but colour stay as they are."""
    out = tokens.clone()
    m = mask.cpu().numpy()
    if not m.any():
        return out
    lab = texel_lab(tokens)[m]
    main = np.stack([delta_e2000(lab, c) for c in centres]).argmin(0) == 0
    target = srgb_to_lab(np.asarray(rgb, np.float64))
    new_rgb = lab_to_srgb(lab[main] + (target - centres[0]))  # (N, 3)
    idx = np.argwhere(m)[main]
    dc = torch.from_numpy((new_rgb - 0.5) / SH_C0).to(out.dtype)
    for k, ch in enumerate(COLOUR_CHANNELS):
        out[ch, idx[:, 0], idx[:, 1]] = dc[:, k]
    return out


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
