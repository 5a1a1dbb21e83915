"""How far a scene keeps the rasterizer's discrete decisions from their thresholds (for the render tests).

Twin and reference evaluate the same arithmetic in different orders (and torch's kernels differ per CPU:
vector width, MKL path, thread split), so each quantity may differ by a few ulps between them. A decision
within those ulps of its threshold can go either way on another CPU, and the two images or gradients then
differ by far more than round-off (see tests/test_render_gsplat_reference.py). Tests assert these margins
before comparing numbers, so their tolerances can be round-off bounds.
"""
from __future__ import annotations

import math

import torch

from backend.render.cpu_rasterizer import ALPHA_THRESHOLD as ALPHA_MIN, MAX_ALPHA as ALPHA_MAX, T_STOP


def decision_margins(ref: dict[str, torch.Tensor], cam) -> dict[str, float]:
    """How far the scene keeps gsplat's discrete decisions from their thresholds, relative to the threshold.

    ref: means2d (N, 2), conics (N, 3), opacities (N,), depths (N,) and optionally valid (N,) bool (gsplat's
    reference dict; a `cpu_rasterizer.project` output has no "valid": all of it counts). cam: width, height.
    Replays per-pixel compositing (front to back, every valid Gaussian) and returns the smallest relative
    distance, over every pixel a decision is taken on, of: alpha from 1/255 (skip), the raw alpha from 0.999
    (clamp), the transmittance after a Gaussian from 1e-4 (stop), and the depth of a Gaussian from the
    previous one that counted on the same pixel (order). A decision closer than round-off to its threshold
    can go either way on another CPU; tests assert these margins before comparing numbers.
    """
    with torch.no_grad():
        dt = ref["means2d"].dtype
        valid = ref.get("valid")
        valid = torch.ones(len(ref["depths"]), dtype=torch.bool) if valid is None else valid
        ids = valid.nonzero().squeeze(1)
        ids = ids[torch.argsort(ref["depths"][ids], stable=True)]
        ys, xs = torch.meshgrid(torch.arange(cam.height, dtype=dt) + 0.5, torch.arange(cam.width, dtype=dt) + 0.5,
                                indexing="ij")  # (H, W)
        trans = torch.ones(cam.height, cam.width, dtype=dt)
        done = torch.zeros(cam.height, cam.width, dtype=torch.bool)
        last_depth = torch.full((cam.height, cam.width), float("nan"), dtype=dt)
        inf = torch.tensor(float("inf"), dtype=dt)
        out = {"skip": math.inf, "clamp": math.inf, "stop": math.inf, "order": math.inf}
        for i in ids.tolist():
            (mx, my), (a, b, c), o, z = ref["means2d"][i], ref["conics"][i], ref["opacities"][i], ref["depths"][i]
            dx, dy = xs - mx, ys - my
            sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
            raw = o * torch.exp(-sigma)
            alpha = torch.clamp_max(raw, ALPHA_MAX)
            open_ = ~done & (sigma >= 0)
            out["skip"] = min(out["skip"], float(torch.where(open_, (alpha / ALPHA_MIN - 1).abs(), inf).min()))
            taken = open_ & (alpha >= ALPHA_MIN)
            out["clamp"] = min(out["clamp"], float(torch.where(taken, (raw / ALPHA_MAX - 1).abs(), inf).min()))
            next_t = trans * (1.0 - alpha)
            out["stop"] = min(out["stop"], float(torch.where(taken, (next_t / T_STOP - 1).abs(), inf).min()))
            gap = torch.where(taken & ~last_depth.isnan(), (z - last_depth).abs() / z.abs(), inf)
            out["order"] = min(out["order"], float(gap.min()))
            last_depth = torch.where(taken, z, last_depth)
            stop = taken & (next_t <= T_STOP)
            trans = torch.where(taken & ~stop, next_t, trans)
            done = done | stop
        return out


def assert_well_conditioned(ref: dict[str, torch.Tensor], cam, margin: float | dict[str, float]) -> None:
    m = decision_margins(ref, cam)
    need = margin if isinstance(margin, dict) else dict.fromkeys(m, margin)
    close = {k: v for k, v in m.items() if not v > need[k]}
    assert not close, f"decisions closer to their thresholds than round-off could flip: {close} (need {need})"
