"""Classifier-free guidance as a wrapper around the model (never inside a solver).

With separate text and image scales (InstructPix2Pix-style composition):

    v = v(∅, ∅) + s_img * (v(∅, img) - v(∅, ∅)) + s_txt * (v(txt, img) - v(∅, img))

where v(txt, img) is the model under the full condition, v(∅, img) with the text dropped and v(∅, ∅)
with both dropped (the same nulls CFG dropout trains on). With s_img = 1 this is ordinary text CFG
around the image-conditioned model, and with both scales 1 it is the conditional model alone, so only
the evaluations a formula needs are run, batched into one forward.

Conditions are dicts of model keyword arguments with a batch dimension (B, ...); the three variants
must share keys and shapes (conditioning.py builds them so).
"""
from __future__ import annotations

from typing import Callable

import torch

Condition = dict[str, torch.Tensor]


class GuidedVelocity:
    """velocity(x (B, ...), t (B,)) for a solver, from model(x, t, **condition) and guidance scales."""

    def __init__(self, model: Callable[..., torch.Tensor], cond: Condition, cond_no_text: Condition | None = None,
                 cond_null: Condition | None = None, text_scale: float = 1.0, image_scale: float = 1.0) -> None:
        self.model = model
        self.text_scale = float(text_scale)
        self.image_scale = float(image_scale)
        self.cond = cond
        self.cond_no_text = cond_no_text
        self.cond_null = cond_null
        if self.text_scale != 1.0 and cond_no_text is None:
            raise ValueError("text guidance (text_scale != 1) needs cond_no_text")
        if self.image_scale != 1.0 and cond_null is None:
            raise ValueError("image guidance (image_scale != 1) needs cond_null")
        if self.image_scale != 1.0 and cond_no_text is None:
            raise ValueError("image guidance (image_scale != 1) needs cond_no_text")

    def variants(self) -> list[Condition]:
        """The conditions to evaluate, in the order `combine` expects."""
        out = [self.cond]
        if self.text_scale != 1.0 or self.image_scale != 1.0:
            out.append(self.cond_no_text)
        if self.image_scale != 1.0:
            out.append(self.cond_null)
        return out

    @staticmethod
    def combine(vs: list[torch.Tensor], text_scale: float, image_scale: float) -> torch.Tensor:
        """vs: [v(txt, img)] + [v(∅, img)] + [v(∅, ∅)] (as far as needed) -> guided velocity."""
        if len(vs) == 1:
            return vs[0]
        v_full, v_img = vs[0], vs[1]
        v_null = vs[2] if len(vs) > 2 else v_img
        return v_null + image_scale * (v_img - v_null) + text_scale * (v_full - v_img)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **extras) -> torch.Tensor:
        conds = self.variants()
        n = len(conds)
        if n == 1:
            return self.model(x, t, **self.cond, **extras)
        keys = conds[0].keys()
        for c in conds[1:]:
            if c.keys() != keys:
                raise ValueError(f"guidance conditions must share keys, got {sorted(keys)} and {sorted(c.keys())}")
        batched = {k: torch.cat([c[k] for c in conds], 0) for k in keys}  # (n * B, ...)
        v = self.model(torch.cat([x] * n, 0), torch.cat([t] * n, 0), **batched, **extras)  # (n * B, ...)
        return self.combine(list(v.chunk(n, 0)), self.text_scale, self.image_scale)
