"""`genlca-train fit`: per-subject optimisation of one clip's token map (the quality anchor; a studio tool).

The token map itself is the parameter: initialised to the clip's mean person colour (every other
explicit channel zero: surface-hugging Gaussians of the decoder's default size and opacity), decoded by
the same `TokenDecoder`, posed by LBS and rendered with the same renderer as the tokenizer's training,
and fitted to the given frames with the same L1 + SSIM + mask losses (Adam).

    genlca-train fit --record CLIP.clip.safetensors --out tokens.safetensors [--checkpoint TOKENIZER]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from backend.avatar.gaussians import SH_C0
from backend.avatar.skinning import Skeleton
from backend.avatar.template import save_safetensors_atomic
from backend.models.tokenizer import Tokenizer, tokenizer_models
from training.data.records import ClipRecord, load_record
from training.train_tokenizer import Views, clip_views, photometric_losses, render_tokens
from backend.models.tokenizer import load_tokenizer


def mean_colour_tokens(model: Tokenizer, record: ClipRecord, indices) -> torch.Tensor:
    """(C, R, R): the clip's mean person colour on every atlas texel, other channels zero."""
    idx = list(indices)
    rgb = torch.from_numpy(record.frames[idx]).float() / 255.0  # (N, H, W, 3)
    mask = torch.from_numpy(record.masks[idx]).float()[..., None] / 255.0  # (N, H, W, 1)
    mean = (rgb * mask).sum((0, 1, 2)) / mask.sum().clamp_min(1.0)  # (3,)
    r = model.config.resolution
    tokens = torch.zeros(model.config.token_channels, r, r)
    tokens[:3] = ((mean - 0.5) / SH_C0)[:, None, None]
    return tokens * model.layout.atlas_mask.float()


def fit_clip(model: Tokenizer, skeleton: Skeleton, record: ClipRecord, indices, steps: int = 200, lr: float = 0.05,
             render_size: int = 96, views_per_step: int = 2, weights=(1.0, 0.2, 1.0), seed: int = 0,
             init: torch.Tensor | None = None, progress: bool = False,
             geometry_l2: float = 0.0) -> tuple[torch.Tensor, list[float]]:
    """Optimise a token map (C, R, R) to the record's frames `indices`; returns it and the loss history.
    The model's decoder is used frozen (a fresh one, or a trained tokenizer's). geometry_l2: weight of a
    pull of every channel but colour (0..2) back to its start (the surface-hugging Gaussians), so that
    the few input views cannot grow geometry that only they explain."""
    idx = list(int(i) for i in indices)
    gen = torch.Generator().manual_seed(seed)
    start = init.clone() if init is not None else mean_colour_tokens(model, record, idx)
    tokens = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([tokens], lr=lr)
    model.decoder.requires_grad_(False)
    all_views = clip_views(record, idx, render_size)
    history = []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=steps, desc=f"fit {record.clip_id}", file=sys.stderr)
    for _ in range(steps):
        pick = torch.randperm(len(idx), generator=gen)[:views_per_step].tolist()
        views = _subset(all_views, pick)
        rgb, alpha = render_tokens(tokens, model, skeleton, views)
        losses = photometric_losses(rgb, alpha, views)
        loss = weights[0] * losses["l1"] + weights[1] * losses["ssim"] + weights[2] * losses["mask"]
        if geometry_l2:
            loss = loss + geometry_l2 * ((tokens[3:] - start[3:]) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss):.4f}")
    if bar is not None:
        bar.close()
    model.decoder.requires_grad_(True)
    return (tokens.detach() * model.layout.atlas_mask.float()), history


def _subset(views, pick):
    return Views(rgb=views.rgb[pick], mask=views.mask[pick], cameras=[views.cameras[i] for i in pick],
                 joint_rotations=views.joint_rotations[pick], root_translation=views.root_translation[pick],
                 valid=None if views.valid is None else views.valid[pick])


def main(args: argparse.Namespace) -> int:
    model = load_tokenizer(args.checkpoint) if args.checkpoint else Tokenizer.build(tokenizer_models[args.preset]())
    record = load_record(args.record)
    frames = args.frames if args.frames else list(range(record.num_frames))
    t0 = time.perf_counter()
    tokens, history = fit_clip(model, model.visibility.skeleton, record, frames, steps=args.steps, lr=args.lr,
                               render_size=args.render_size, progress=not args.no_progress)
    seconds = time.perf_counter() - t0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors_atomic({"tokens": tokens.numpy().astype(np.float32)}, out,
                            {"format": "genlca-fitted-tokens", "clip_id": record.clip_id,
                             "resolution": str(model.config.resolution), "steps": str(args.steps)})
    print(json.dumps({"clip_id": record.clip_id, "out": str(out), "seconds": round(seconds, 2),
                      "first_loss": round(history[0], 5), "last_loss": round(history[-1], 5)}))
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--record", required=True, help="a clip record (.clip.safetensors)")
    parser.add_argument("--out", required=True, help="where to write the fitted token map (.safetensors)")
    parser.add_argument("--checkpoint", help="a tokenizer checkpoint whose decoder to use (default: a fresh one)")
    parser.add_argument("--preset", default="small", help="tokenizer preset for the fresh decoder and layout")
    parser.add_argument("--frames", type=int, nargs="*", help="frame indices to fit (default: all)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--render-size", type=int, default=96)
    parser.add_argument("--no-progress", action="store_true")
