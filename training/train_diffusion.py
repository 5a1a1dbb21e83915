"""Visibility-aware flow-matching training of TokenMapDiT on token shards (`genlca-train diffusion`).

    genlca-train diffusion --config training/configs/diffusion_tiny.yaml --set train.steps=2000
    torchrun --nproc_per_node 2 -m training.cli diffusion --config ... (DDP, gloo on CPU / NCCL on GPU)

One step (per rank, on its slice of the global batch; all draws from runtime.step_generator(seed, step)):

    x_data = normalize(tokens)                   per-channel stats (data.statistics: of the valid texels,
                                                 or of every atlas texel as the model sees them)
    t = shift(sigmoid(N(t_mean, t_std)), t_shift), noise ~ N(0, I);  x_t, v* = FlowPath.sample(x_data, noise, t)
    v = DiT(x_t, t, condition with CFG dropout, patch_valid)
    loss = mean over samples of [ sum over C and texels in M of w_c (v - v*)² / (sum_c w_c * |M|) ]
           (w_c: train.channel_weights per channel group, e.g. colour 3, latent 0;
            train.region_weighting: each texel weighted by 1 / its body region's share of the atlas)

Where the compute goes (`genlca-train diagnose` measures it; docs/BENCHMARKS.md, "Prompt fidelity: the
recipe"): a garment is hundreds of texels of one colour, so x_t still shows its colour until t ~ 0.9 and
only steps near t = 1 make the model take colour from the text. `train.t_shift` (SD3's resolution shift,
t' = s t / (1 + (s - 1) t)) moves the draws there; the checkpoint records it and sampling uses the same
shift by default.

`train.visibility_mode` picks what the model sees and what the loss counts (M):

    aware      invalid patches -> MASK embedding;  M = visible AND atlas AND in a valid patch (the GenLCA
             recipe; a texel of a MASKed patch is left out: the model never saw its noise, so its
             velocity cannot be predicted: `train.loss_in_masked_patches` puts it back)
    loss_mask  raw tokens in;                       M = visible AND atlas      (ablation baseline)
    naive      raw tokens in;                       M = atlas                  (ablation baseline)

A patch is invalid when fewer than `train.patch_visible_threshold` (default 0.5) of its atlas texels
were visible (dit.patch_validity). The loss is a per-sample mean, so that ranks average to exactly the
gradient of the global batch.

"Raw tokens" of unseen texels: a tokenizer's shards hold whatever it produced there; ground-truth
synthetic shards hold the truth, which no real data would. So for ground-truth shards
(`data.unseen_fill`, default "transparent_mean") the unseen atlas texels are replaced, for every mode
alike, by what a photometrically trained feed-forward reconstructor leaves where it had no signal: the
training set's mean token (an average colour, shape and scale) with a low opacity (0.1; no gradient
ever pulled it up). "mean" keeps the mean opacity, "zero" writes zeros, "none" keeps the shard's tokens
(use it for tokenizer shards). This choice decides what the naive baseline learns in unseen regions;
it is made before any result and stated with the ablation.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from backend.avatar.template import load_template
from backend.avatar.tokens import EXPLICIT_CHANNELS, EXPLICIT_CHANNEL_GROUPS
from backend.avatar.uv_layout import load_layout
from backend.config import apply_overrides, load_config, to_dict
from backend.models.checkpoint import CheckpointError, load_checkpoint
from backend.models.conditioning import cfg_dropout, drop, load_text_encoder
from backend.models.dit import DiT_models, TokenMapDiT, patch_geometry, patch_validity, synthetic_geometry
from backend.sampling.path import FlowPath, sample_logit_normal, shift_time
from training import runtime
from training.data import vocabulary
from training.data.shards import iter_shards

VisibilityMode = Literal["aware", "naive", "loss_mask"]
UNSEEN_OPACITY = 0.1
INIT_OPACITY = 0.95  # TokenDecoderConfig.init_opacity: explicit channel 6 = logit(o) - logit(0.95)


@dataclasses.dataclass
class ModelSection:
    preset: str = "tiny"
    patch_size: int = 4
    hidden_size: int | None = None  # None: the preset's
    depth: int | None = None
    num_heads: int | None = None
    image_encoder: Literal["conv", "none"] = "conv"


@dataclasses.dataclass
class DataSection:
    shards: str = ""                 # folder with manifest.json (training/data/shards.py); "a,b" joins libraries
    splits: list[str] = dataclasses.field(default_factory=lambda: ["train"])  # meta["split"]; [] = all
    unseen_fill: Literal["transparent_mean", "mean", "zero", "none"] = "transparent_mean"
    max_items: int = 0               # 0: all
    template: str = "anny"           # for the atlas geometry of the positional encoding; "" = a flat grid
    statistics: Literal["visible", "atlas"] = "visible"  # normalisation over the valid texels, or over every
                                     # atlas texel after the unseen fill (no fill lands at tens of sigmas)
    recaption: bool = False          # synthetic people: captions rewritten from meta["attributes"] by
                                     # training/data/vocabulary.py (every attribute named), not the stored ones


@dataclasses.dataclass
class ConditionSection:
    text_encoder: str = "minilm"     # "minilm" | "minilm+phrases" | "hashing" | a folder with a transformer encoder
    max_text_tokens: int = 32
    p_drop_text: float = 0.1         # text only
    p_drop_image: float = 0.1        # image only
    p_drop_both: float = 0.1
    use_images: bool = True          # condition on ref_crops when the shards carry them


@dataclasses.dataclass
class TrainSection:
    steps: int = 1000
    global_batch: int = 16
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    t_mean: float = 0.0              # logit-normal t
    t_std: float = 1.0
    visibility_mode: VisibilityMode = "aware"
    patch_visible_threshold: float = 0.5
    t_shift: float = 1.0             # SD3 timestep shift of the training draws (and the default at sampling)
    channel_weights: dict[str, float] = dataclasses.field(default_factory=dict)  # per channel group
                                     # (colour, offset, opacity, scale, latent; explicit layout), default 1
    loss_in_masked_patches: bool = False  # aware mode: count visible texels of MASKed patches (irreducible)
    ema_warmup: bool = False         # EMA decay min(ema_decay, (1 + step) / (10 + step)) (a fresh run's
                                     # EMA then forgets its random initial weights)
    region_weighting: bool = False   # weight a texel's loss by 1 / its body region's share of the atlas, so
                                     # the feet (5 % of the texels) count as much as the head (35 %)
    log_every: int = 10
    ckpt_every: int = 200
    out_dir: str = "runs/diffusion"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    mixed_precision: Literal["auto", "bf16", "fp32"] = "auto"
    progress: bool = True
    threads: int = 0                 # torch CPU threads; 0: torch's default (on a shared CPU, 1 is often fastest)
    init: str = ""                   # start from these DiT weights (a model package, its dit.safetensors, or a
                                     # training checkpoint; fresh optimizer, step 0); out_dir's last wins


@dataclasses.dataclass
class DiffusionConfig:
    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    data: DataSection = dataclasses.field(default_factory=DataSection)
    condition: ConditionSection = dataclasses.field(default_factory=ConditionSection)
    train: TrainSection = dataclasses.field(default_factory=TrainSection)


# ------------------------------------------------------------------------------ data
@dataclasses.dataclass
class TokenDataset:
    """All training clips in memory (token maps at R = 64 are 200 kB each in float32)."""

    tokens: torch.Tensor          # (N, C, R, R) float32, decoder space
    visibility: torch.Tensor      # (N, R, R) bool
    atlas_mask: torch.Tensor      # (R, R) bool
    captions: list[list[str]]
    metas: list[dict[str, Any]]
    ref_crops: torch.Tensor | None  # (N, S, S, 3) uint8
    source: dict[str, Any]

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def load_dataset(folder: str | Path, splits: list[str], max_items: int = 0) -> TokenDataset:
    """Clips of `splits` from one shard folder, or several joined by commas (one library per folder)."""
    toks, vis, caps, metas, crops, atlas, source = [], [], [], [], [], None, {}
    folders = [f.strip() for f in str(folder).split(",") if f.strip()]
    shards = (shard for f in folders for shard in iter_shards(f))
    for shard in shards:
        keep = [i for i, m in enumerate(shard.metas) if not splits or m.get("split", "train") in splits]
        if not keep:
            continue
        toks.append(torch.from_numpy(shard.tokens[keep].astype(np.float32)))
        vis.append(torch.from_numpy(shard.visibility[keep] > 0))
        caps += [shard.captions[i] for i in keep]
        metas += [shard.metas[i] for i in keep]
        crops.append(None if shard.ref_crops is None else torch.from_numpy(shard.ref_crops[keep]))
        shard_atlas = torch.from_numpy(shard.atlas_mask > 0)
        if atlas is not None and not torch.equal(atlas, shard_atlas):
            raise ValueError(f"{folder}: shards of different atlases (token resolution or template) cannot be joined")
        atlas = shard_atlas
        source = shard.source
    if not toks:
        raise ValueError(f"{folder}: no clips of splits {splits} in the shards")
    tokens = torch.cat(toks)
    ref = torch.cat(crops) if all(c is not None for c in crops) else None
    ds = TokenDataset(tokens, torch.cat(vis), atlas, caps, metas, ref, source)
    if max_items:
        ds = subset(ds, list(range(min(max_items, len(ds)))))
    return ds


def subset(ds: TokenDataset, idx: list[int]) -> TokenDataset:
    return TokenDataset(ds.tokens[idx], ds.visibility[idx], ds.atlas_mask, [ds.captions[i] for i in idx],
                        [ds.metas[i] for i in idx], None if ds.ref_crops is None else ds.ref_crops[idx], ds.source)


def token_statistics(tokens: torch.Tensor, visibility: torch.Tensor, atlas: torch.Tensor,
                     min_std: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (C,) over the valid (visible and atlas) texels of every clip. The std is
    floored (`min_std`, token units) so that a channel that is constant where seen (latent channels of
    ground truth, a uniform opacity) does not blow other values of it up to hundreds of sigmas."""
    m = (visibility & atlas).float()[:, None]  # (N, 1, R, R)
    count = m.sum().clamp_min(1)
    mean = (tokens * m).sum((0, 2, 3)) / count  # (C,)
    var = (((tokens - mean[:, None, None]) ** 2) * m).sum((0, 2, 3)) / count
    return mean, var.sqrt().clamp_min(min_std)


def recaption(ds: TokenDataset, count: int = 4) -> TokenDataset:
    """Captions rewritten from each synthetic person's attributes (vocabulary.captions, seeded by the person
    id: the same captions every run); clips without attributes keep theirs."""
    caps = [vocabulary.captions(m["attributes"], vocabulary.caption_rng(str(m.get("person_id", i))), count)
            if vocabulary.can_caption(m.get("attributes", {})) else c for i, (c, m) in enumerate(zip(ds.captions, ds.metas))]
    return dataclasses.replace(ds, captions=caps)


def fill_unseen(ds: TokenDataset, mean: torch.Tensor, mode: str) -> TokenDataset:
    """Replace unseen atlas texels as a tokenizer would have left them (module docstring)."""
    if mode == "none":
        return ds
    fill = torch.zeros_like(mean) if mode == "zero" else mean.clone()
    if mode == "transparent_mean":
        if fill.numel() < 7:
            raise ValueError("unseen_fill 'transparent_mean' needs the explicit token layout (opacity in channel 6)")
        fill[6] = math.log(UNSEEN_OPACITY / (1 - UNSEEN_OPACITY)) - math.log(INIT_OPACITY / (1 - INIT_OPACITY))
    unseen = (~ds.visibility & ds.atlas_mask)[:, None]  # (N, 1, R, R)
    tokens = torch.where(unseen, fill[None, :, None, None], ds.tokens)
    return dataclasses.replace(ds, tokens=tokens)


# ------------------------------------------------------------------------------ model
def build_model(cfg: DiffusionConfig, resolution: int, channels: int, text_dim: int) -> TokenMapDiT:
    m = cfg.model
    kw = {k: v for k, v in (("hidden_size", m.hidden_size), ("depth", m.depth), ("num_heads", m.num_heads)) if v}
    if m.preset not in DiT_models:
        raise ValueError(f"model.preset: unknown {m.preset!r}; expected one of {sorted(DiT_models)}")
    dit_cfg = DiT_models[m.preset](resolution=resolution, token_channels=channels, patch_size=m.patch_size,
                                   text_dim=text_dim, image_encoder=m.image_encoder, **kw)
    if cfg.data.template:
        geometry = patch_geometry(load_layout(load_template(cfg.data.template), resolution), m.patch_size)
    else:
        geometry = synthetic_geometry(dit_cfg)
    return TokenMapDiT(dit_cfg, geometry)


def texel_loss_mask(visibility: torch.Tensor, atlas: torch.Tensor, mode: str) -> torch.Tensor:
    """(B, R, R) bool: the texels the loss counts."""
    atlas = atlas.to(visibility.device)
    if mode == "naive":
        return atlas.expand_as(visibility).clone()
    return visibility & atlas


def texels_of_patches(patch_valid: torch.Tensor, patch_size: int, resolution: int) -> torch.Tensor:
    """(B, T) bool per patch -> (B, R, R) bool per texel (row-major patches, as dit.patch_validity)."""
    g = resolution // patch_size
    grid = patch_valid.reshape(-1, g, g)
    return grid.repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2)


def region_weights(template: str, resolution: int) -> torch.Tensor:
    """(R, R) float: 1 / (the texel's body region's share of the atlas texels), scaled to mean 1 over the
    atlas (texels of no region: 1 before scaling; 0 outside the atlas)."""
    layout = load_layout(load_template(template), resolution)
    atlas = layout.atlas_mask
    weights = atlas.float()
    for mask in layout.region_masks().values():
        mask = torch.from_numpy(mask) & atlas
        if mask.any():
            weights[mask] = float(atlas.sum()) / float(mask.sum())
    return weights / weights[atlas].mean()


def channel_weight_vector(weights: dict[str, float], channels: int) -> torch.Tensor | None:
    """(C,) loss weight per channel from weights per group (backend/avatar/tokens.EXPLICIT_CHANNEL_GROUPS;
    "latent" = the channels after them); None when no weight is given."""
    if not weights:
        return None
    groups = channel_groups(channels)
    unknown = sorted(set(weights) - set(groups))
    if unknown:
        raise ValueError(f"train.channel_weights: unknown group(s) {unknown}; expected some of {sorted(groups)}")
    w = torch.ones(channels)
    for name, value in weights.items():
        if not (math.isfinite(float(value)) and float(value) >= 0):
            raise ValueError(f"train.channel_weights.{name}: expected a finite weight >= 0, got {value!r}")
        w[list(groups[name])] = float(value)
    if float(w.sum()) <= 0:
        raise ValueError("train.channel_weights: every channel has weight 0")
    return w


def channel_groups(channels: int) -> dict[str, tuple[int, ...]]:
    return {**EXPLICIT_CHANNEL_GROUPS, "latent": tuple(range(EXPLICIT_CHANNELS, channels))}


def flow_loss(model: TokenMapDiT, x_data: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
              condition: dict[str, torch.Tensor], loss_mask: torch.Tensor,
              patch_valid: torch.Tensor | None, texel_weights: torch.Tensor | None = None,
              channel_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample masked (and, with texel_weights (R, R) / channel_weights (C,), weighted) MSE of the
    velocity, averaged over samples.

    x_data, noise (B, C, R, R), t (B,), loss_mask (B, R, R) bool, patch_valid (B, T) bool or None.
    """
    return per_sample_flow_loss(model, x_data, noise, t, condition, loss_mask, patch_valid, texel_weights,
                                channel_weights).mean()


def per_sample_flow_loss(model: TokenMapDiT, x_data: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                         condition: dict[str, torch.Tensor], loss_mask: torch.Tensor,
                         patch_valid: torch.Tensor | None, texel_weights: torch.Tensor | None = None,
                         channel_weights: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) the loss of `flow_loss` per sample."""
    x_t, target = FlowPath().sample(x_data, noise, t)  # (B, C, R, R) ×2
    v = model(x_t, t, **condition, patch_valid=patch_valid)  # (B, C, R, R)
    m = loss_mask[:, None].to(v.dtype)  # (B, 1, R, R)
    if texel_weights is not None:
        m = m * texel_weights.to(m)
    w = torch.ones(v.shape[1], device=v.device) if channel_weights is None else channel_weights.to(v.device)
    err = ((v.float() - target) ** 2) * w[None, :, None, None]  # (B, C, R, R)
    return (err * m).sum((1, 2, 3)) / (m.sum((1, 2, 3)) * w.sum()).clamp_min(1e-8)


class ConditionBank:
    """Text encodings of every caption of the dataset, computed once (the encoder caches repeats)."""

    def __init__(self, encoder: Any, captions: list[list[str]]) -> None:
        unique = sorted({c for caps in captions for c in caps} | {""})  # "": clips without a caption
        self.index = {c: i for i, c in enumerate(unique)}
        tokens, mask, pooled = encoder.encode(unique)
        self.tokens, self.mask, self.pooled = tokens, mask, pooled
        self.dim = encoder.dim

    def lookup(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = torch.tensor([self.index[c] for c in captions])
        return self.tokens[idx], self.mask[idx], self.pooled[idx]


def make_batch(step: int, ds: TokenDataset, cfg: DiffusionConfig, bank: ConditionBank, model: TokenMapDiT,
               ctx: runtime.DistributedContext) -> tuple[torch.Tensor, ...]:
    """This rank's share of the global batch at `step`: (x_data, noise, t, condition, loss_mask, patch_valid)."""
    tr, cc = cfg.train, cfg.condition
    bg = tr.global_batch
    gen = runtime.step_generator(tr.seed, step)
    idx_all = runtime.global_batch_indices(step, len(ds), bg, tr.seed)  # (Bg,)
    c, r = ds.tokens.shape[1], ds.tokens.shape[2]
    noise_all = torch.randn(bg, c, r, r, generator=gen)  # (Bg, C, R, R)
    t_all = shift_time(sample_logit_normal(bg, tr.t_mean, tr.t_std, generator=gen), tr.t_shift)  # (Bg,)
    drop_text_all, drop_image_all = cfg_dropout(bg, cc.p_drop_text, cc.p_drop_image, cc.p_drop_both, gen)
    pick_all = torch.randint(0, 1 << 30, (bg,), generator=gen)
    sl = runtime.rank_slice(bg, ctx)
    idx = idx_all[sl].tolist()
    dev = ctx.device
    atlas = ds.atlas_mask.to(dev)
    x_data = model.normalize(ds.tokens[idx].to(dev)) * atlas  # (B, C, R, R); 0 outside the atlas
    vis = ds.visibility[idx].to(dev)
    captions = [ds.captions[i][int(p) % len(ds.captions[i])] if ds.captions[i] else "" for i, p in
                zip(idx, pick_all[sl])]
    tokens, mask, pooled = bank.lookup(captions)
    b = len(idx)
    use_img = cc.use_images and ds.ref_crops is not None and model.image_encoder is not None
    if use_img:
        image_tokens = model.encode_image(ds.ref_crops[idx].to(dev))  # (B, Li, Di)
        image_mask = torch.ones(image_tokens.shape[:2], dtype=torch.bool, device=dev)
    else:
        image_tokens = torch.zeros(b, 1, model.config.image_dim, device=dev)
        image_mask = torch.zeros(b, 1, dtype=torch.bool, device=dev)
    cond = {"text_tokens": tokens.to(dev), "text_mask": mask.to(dev), "text_pooled": pooled.to(dev),
            "image_tokens": image_tokens, "image_mask": image_mask}
    cond = drop(cond, drop_text_all[sl].to(dev), drop_image_all[sl].to(dev))
    loss_mask = texel_loss_mask(vis, atlas, tr.visibility_mode)
    patch_valid = (patch_validity(vis, atlas, model.config.patch_size, tr.patch_visible_threshold)
                   if tr.visibility_mode == "aware" else None)
    if patch_valid is not None and not tr.loss_in_masked_patches:
        loss_mask = loss_mask & texels_of_patches(patch_valid, model.config.patch_size, r)
    return x_data, noise_all[sl].to(dev), t_all[sl].to(dev), cond, loss_mask, patch_valid


# ------------------------------------------------------------------------------ the loop
def checkpoint_config(cfg: DiffusionConfig, model: TokenMapDiT, ds: TokenDataset) -> dict[str, Any]:
    return {"model": dataclasses.asdict(model.config), "train_config": to_dict(cfg),
            "sampling_shift": cfg.train.t_shift,
            "text_encoder": cfg.condition.text_encoder, "max_text_tokens": cfg.condition.max_text_tokens,
            "visibility_mode": cfg.train.visibility_mode, "token_source": ds.source,
            "dataset_size": len(ds)}


def init_weights(model: TokenMapDiT, source: str | os.PathLike) -> None:
    """Load a DiT's weights (and its token statistics) to fine-tune from: a model package folder, its
    dit.safetensors or a training checkpoint. The architecture must match the config's exactly."""
    path = Path(source)
    if path.is_dir():
        path = path / "dit.safetensors"
    ckpt = load_checkpoint(path, "dit", training_state=False)
    theirs, ours = ckpt.config.get("model", {}), dataclasses.asdict(model.config)
    differ = sorted(k for k in ours if k in theirs and theirs[k] != ours[k]
                    and not (isinstance(ours[k], tuple) and list(ours[k]) == theirs[k]))
    if differ:
        raise CheckpointError(f"train.init {path}: its DiT differs from this config in "
                              + ", ".join(f"{k} ({theirs[k]} vs {ours[k]})" for k in differ))
    missing, unexpected = model.load_state_dict(ckpt.model, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"train.init {path}: weights do not fit the model (missing {missing[:4]}, "
                              f"unexpected {unexpected[:4]})")


def train(cfg: DiffusionConfig, *, stop_at: int | None = None, resume: bool = True, stream=None,
          dataset: TokenDataset | None = None) -> list[float]:
    """Run (or continue) training; returns this call's per-step losses (averaged over ranks).
    `stop_at`: stop after that step (a checkpoint is written), as if killed right after it."""
    ctx = runtime.init_distributed(cfg.train.device)
    tr = cfg.train
    if tr.threads > 0:
        torch.set_num_threads(tr.threads)
    torch.manual_seed(tr.seed)
    ds = dataset if dataset is not None else load_dataset(cfg.data.shards, cfg.data.splits, cfg.data.max_items)
    if cfg.data.recaption:
        ds = recaption(ds)
    mean, std = token_statistics(ds.tokens, ds.visibility, ds.atlas_mask)
    ds = fill_unseen(ds, mean, cfg.data.unseen_fill)
    if cfg.data.statistics == "atlas":  # what the model sees: every atlas texel, unseen ones as filled
        mean, std = token_statistics(ds.tokens, torch.ones_like(ds.visibility), ds.atlas_mask)
    encoder = load_text_encoder(cfg.condition.text_encoder, cfg.condition.max_text_tokens)
    bank = ConditionBank(encoder, ds.captions)
    model = build_model(cfg, ds.tokens.shape[-1], ds.tokens.shape[1], encoder.dim).to(ctx.device)
    model.token_mean.copy_(mean)
    model.token_std.copy_(std)
    if tr.init:
        init_weights(model, tr.init)
    ema = runtime.EMA(model, tr.ema_decay)
    if tr.region_weighting and not cfg.data.template:
        raise ValueError("train.region_weighting needs the body regions of data.template (it is empty)")
    weights = region_weights(cfg.data.template, ds.tokens.shape[-1]).to(ctx.device) if tr.region_weighting else None
    cweights = channel_weight_vector(tr.channel_weights, ds.tokens.shape[1])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tr.lr, weight_decay=tr.weight_decay, betas=(0.9, 0.99))
    out = Path(tr.out_dir)
    ckpt_path = out / "last.safetensors"
    start = 0
    if resume and ckpt_path.is_file():
        start, _ = runtime.load_training_state(ckpt_path, kind="dit", model=model, optimizer=optimizer, ema=ema)
    logger = runtime.TrainLogger(ctx, tr.log_every, out / "tb", stream=stream)
    bar = runtime.progress_bar(tr.steps, start, ctx, tr.progress)
    losses: list[float] = []
    end = tr.steps if stop_at is None else min(tr.steps, stop_at)
    out.mkdir(parents=True, exist_ok=True)
    metrics = open(out / "metrics.jsonl", "a", buffering=1) if ctx.is_main else None  # line-buffered: readable live
    model.train()
    step = start
    try:
        for step in range(start, end):
            lr = runtime.cosine_warmup_lr(step, tr.lr, tr.warmup, tr.steps)
            for g in optimizer.param_groups:
                g["lr"] = lr
            with runtime.autocast(ctx, tr.mixed_precision):
                x_data, noise, t, cond, loss_mask, patch_valid = make_batch(step, ds, cfg, bank, model, ctx)
                loss = flow_loss(model, x_data, noise, t, cond, loss_mask, patch_valid, weights, cweights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            runtime.allreduce_gradients(params, ctx)
            grad_norm = runtime.clip_gradients(params, tr.grad_clip)
            optimizer.step()
            ema.update(model, decay=min(tr.ema_decay, (1 + step) / (10 + step)) if tr.ema_warmup else None)
            value = runtime.allreduce_mean(float(loss.detach()), ctx)
            losses.append(value)
            done = step + 1
            logger.step(done, value, tr.global_batch, lr=lr, grad_norm=grad_norm)
            if metrics is not None:
                metrics.write(json.dumps({"step": done, "loss": value, "lr": lr, "grad_norm": grad_norm,
                                          "time": time.time()}) + "\n")
            bar.update(1)
            if ctx.is_main and (done % tr.ckpt_every == 0 or done == end):
                runtime.save_training_state(ckpt_path, kind="dit", config=checkpoint_config(cfg, model, ds),
                                            model=model, optimizer=optimizer, step=done, ema=ema,
                                            name=f"TokenMapDiT-{cfg.model.preset}",
                                            note=f"{tr.visibility_mode}, step {done}")
            if ctx.distributed and done % tr.ckpt_every == 0:
                torch.distributed.barrier()
    finally:
        bar.close()
        logger.close()
        if metrics is not None:
            metrics.close()
    return losses


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="genlca-train diffusion", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML file (training/configs/diffusion_*.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.steps=500 (repeatable)")
    parser.add_argument("--no-resume", action="store_true", help="ignore train.out_dir/last.safetensors")
    parser.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                        help="stop after this step (checkpoint written; the schedule still follows train.steps)")
    return parser


def run(args: argparse.Namespace) -> int:
    cfg = apply_overrides(load_config(args.config, DiffusionConfig), args.set)
    try:
        losses = train(cfg, resume=not args.no_resume, stop_at=args.stop_at)
    finally:
        runtime.shutdown_distributed()
    if losses and int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"steps": len(losses), "final_loss": losses[-1], "out_dir": cfg.train.out_dir}))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
