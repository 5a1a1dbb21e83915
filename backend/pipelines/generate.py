"""Text (and photo) -> token map, with the sampling loop in plain sight (after diffusers' pipeline_dit).

    tokens, info = generate_tokens(bundle, "a woman with long red hair in a blue dress", seed=7,
                                   settings=SamplerSettings(steps=25, guidance=4.0),
                                   progress=lambda stage, i, n: ..., cancel=lambda: False)

Steps: encode the conditions (text by the bundle's sentence encoder; a photo as a reference crop for the
DiT's image encoder), draw the seeded noise, integrate the ODE from t = 1 to 0 through classifier-free
guidance (backend/sampling: the time convention lives there and only there), map back from the model's
normalised space to decoder tokens, zero outside the atlas (those three steps are backend/sampling/recipe.py,
shared with training's evaluation). Where the photo's tokens are known (the
tokenizer recovered the texels the photo shows), the package's pinned channels of those texels
(`bundle.photo_channels`: by default the colour) are kept and everything else is inpainted: the geometry,
opacity and scale of the seen texels and all of the unseen ones.

Pipelines take a progress callback `(stage, step, total)` and a cancel check; they know nothing of the
wire, so they run the same under the server, a script or a test.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np
import torch

from backend.sampling import recipe
from backend.sampling.editing import inpaint
from backend.sampling.guidance import GuidedVelocity

Progress = Callable[[str, int, int], None]
Cancel = Callable[[], bool]
CROP_SIZE = 64  # the reference crop the DiT's image encoder takes (training/data/shards.py ref_crops)


@dataclasses.dataclass
class SamplerSettings:
    steps: int = 25
    guidance: float = 4.0          # text CFG scale (1 = the conditional model alone)
    image_guidance: float = 1.0    # image CFG scale
    method: str = "euler"          # "euler" | "heun"
    shift: float = 1.0             # timestep shift (backend/sampling/path.py)

    def __post_init__(self) -> None:
        if not 1 <= self.steps <= 1000:
            raise ValueError(f"steps must be in 1..1000, got {self.steps}")
        if not (np.isfinite(self.guidance) and 0.0 <= self.guidance <= 30.0):
            raise ValueError(f"guidance must be in [0, 30], got {self.guidance}")
        if not (np.isfinite(self.image_guidance) and 0.0 <= self.image_guidance <= 30.0):
            raise ValueError(f"image_guidance must be in [0, 30], got {self.image_guidance}")
        if self.method not in ("euler", "heun"):
            raise ValueError(f"method must be 'euler' or 'heun', got {self.method!r}")
        if not (np.isfinite(self.shift) and 0.05 <= self.shift <= 20.0):
            raise ValueError(f"shift must be in [0.05, 20], got {self.shift}")


@dataclasses.dataclass
class PhotoObservation:
    """What a photo tells before sampling: the reference crop, and (with a tokenizer) observed tokens."""

    crop: np.ndarray                         # (S, S, 3) uint8 around the person
    tokens: torch.Tensor | None = None       # (C, R, R) decoder tokens where seen
    visible: torch.Tensor | None = None      # (R, R) bool, texels the photo showed
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


def condition(bundle, prompt: str, crop: np.ndarray | None) -> dict[str, torch.Tensor]:
    """The DiT's condition for one sample (B = 1): text tokens/mask/pooled and image tokens/mask."""
    dit = bundle.dit
    device = next(dit.parameters()).device
    tokens, mask, pooled = bundle.text_encoder.encode([prompt.strip()])
    if not prompt.strip():  # an empty prompt is the dropped condition the model was trained with
        mask = torch.zeros_like(mask)
        pooled = torch.zeros_like(pooled)
    if crop is not None and dit.image_encoder is not None:
        with torch.no_grad():
            image_tokens = dit.encode_image(torch.from_numpy(np.ascontiguousarray(crop))[None].to(device))
        image_mask = torch.ones(image_tokens.shape[:2], dtype=torch.bool, device=device)
    else:
        image_tokens = torch.zeros(1, 1, dit.config.image_dim, device=device)
        image_mask = torch.zeros(1, 1, dtype=torch.bool, device=device)
    return {"text_tokens": tokens.to(device), "text_mask": mask.to(device), "text_pooled": pooled.to(device),
            "image_tokens": image_tokens, "image_mask": image_mask}


def guided_velocity(bundle, cond: dict[str, torch.Tensor], settings: SamplerSettings) -> GuidedVelocity:
    """The bundle's DiT under CFG with the settings' scales (image guidance only when an image is given)."""
    has_image = bool(cond["image_mask"].any())
    return recipe.guided_velocity(bundle.dit, cond, settings.guidance,
                                  settings.image_guidance if has_image else 1.0)


def stage_progress(progress: Progress | None, stage: str) -> Callable[[int, int], None] | None:
    """A solver's (step, total) callback that reports as `stage` through a pipeline's progress callback."""
    return None if progress is None else (lambda i, n: progress(stage, i, n))


def generate_tokens(bundle, prompt: str, *, seed: int = 0, settings: SamplerSettings | None = None,
                    photo: PhotoObservation | None = None, progress: Progress | None = None,
                    cancel: Cancel | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """-> (tokens (C, R, R) in decoder space, info). Deterministic for (model, prompt, photo, seed, settings)."""
    settings = settings or SamplerSettings()
    dit, layout = bundle.dit, bundle.layout
    device = next(dit.parameters()).device
    atlas = layout.atlas_mask.to(device)
    with bundle.lock, torch.no_grad():
        cond = condition(bundle, prompt, photo.crop if photo is not None else None)
        info: dict[str, Any] = {"steps": settings.steps, "guidance": settings.guidance, "method": settings.method,
                                "shift": settings.shift, "seed": seed, "used": ["text"] if prompt.strip() else []}
        if photo is not None:
            info["used"].append("image")
        if photo is not None and photo.tokens is not None and photo.visible is not None:
            keep = observed_mask(bundle, photo, device)  # (1, C, R, R)
            x_src = dit.normalize(photo.tokens[None].to(device)) * atlas
            x = inpaint(guided_velocity(bundle, cond, settings), x_src, keep, settings.steps, seed=seed,
                        method=settings.method, shift=settings.shift, progress=stage_progress(progress, "sample"),
                        cancel=cancel)
            info["kept_texels"] = int(keep.any(1).sum())
            info["kept_channels"] = list(bundle.photo_channels)
            info["used"].append("tokenizer")
            tokens = recipe.decoder_tokens(dit, x, atlas)[0]  # (C, R, R)
            # the pinned entries exactly as recovered (normalise/denormalise rounds)
            tokens = torch.where(keep[0], photo.tokens.to(device), tokens)
        else:
            has_image = bool(cond["image_mask"].any())
            tokens = recipe.sample_tokens(dit, cond, settings.steps, settings.method, settings.shift,
                                          settings.guidance, settings.image_guidance if has_image else 1.0, seed,
                                          atlas, progress=stage_progress(progress, "sample"), cancel=cancel)[0]
    return tokens.cpu(), info


def observed_mask(bundle, photo: PhotoObservation, device) -> torch.Tensor:
    """(1, C, R, R) bool: the texels the photo showed (inside the atlas) x the channels the package pins."""
    c, r = bundle.dit.config.token_channels, bundle.dit.config.resolution
    if tuple(photo.tokens.shape) != (c, r, r) or tuple(photo.visible.shape) != (r, r):
        raise ValueError(f"expected photo tokens ({c}, {r}, {r}) and visibility ({r}, {r}), got "
                         f"{tuple(photo.tokens.shape)} and {tuple(photo.visible.shape)}")
    if not bundle.photo_channels:
        raise ValueError("the model package pins no token channels for photos (it has no tokenizer)")
    channels = torch.zeros(c, dtype=torch.bool, device=device)
    channels[list(bundle.photo_channels)] = True
    seen = photo.visible.to(device).bool() & bundle.layout.atlas_mask.to(device)  # (R, R)
    return (channels[:, None, None] & seen[None])[None]  # (1, C, R, R)
