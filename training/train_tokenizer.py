"""`genlca-train tokenizer --config FILE.yaml [--set k=v]`: train the tokenizer on clip records.

Each step takes `batch_clips` clips per rank (sources mixed by their config weights), gives the model
`input_frames` frames of each clip and renders its decoded, LBS-posed Gaussians into `heldout_frames`
*other* frames of the same clip with the project's renderer (gsplat on CUDA, the torch twin on CPU).

Losses (weights in `loss`):
    l1     |render - frame * mask| over the image (the render is premultiplied: black background)
    ssim   1 - SSIM(render, frame * mask) (11x11 Gaussian window)
    mask   |alpha - mask|
    token  where a record carries ground-truth tokens (`extras["gt_tokens"]`, synthetic people), the L1
           between predicted and true explicit channels (0..9) on the texels the *input* frames show.
           An honest use of synthetic ground truth: it says where geometry the photometric loss
           cannot pin down (offsets, scales) should go; unseen texels are left to the photometric loss.

The loop stands on training/runtime.py, like the DiT's: torchrun set-up (gloo on CPU, NCCL on GPU) and one
all-reduce of the gradients per step, bf16 autocast on CUDA (`mixed_precision`), gradient clipping, EMA,
the warm-up schedule, the logger (stdout + tensorboard when installed) and a progress bar, and a
safetensors checkpoint (model, EMA, optimizer, RNG, config) every `ckpt_every` steps, written atomically;
`metrics.jsonl` on rank 0. Each rank draws its own clips; the data draw of step s on rank k is seeded by
(seed, k, s), so a resumed run draws exactly what an unbroken run would.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from backend.avatar.skinning import Skeleton, pose
from backend.avatar.tokens import EXPLICIT_CHANNELS, decode
from backend.config import apply_overrides, load_config, to_dict
from backend.models.tokenizer import CHECKPOINT_KIND, Tokenizer, TokenizerConfig
from backend.render import RenderOptions, render
from backend.render.camera import Camera
from training import runtime
from training.data.records import ClipRecord, iter_record_paths, load_record

@dataclasses.dataclass
class DataSource:
    path: str                      # a folder of clip records
    weight: float = 1.0            # share of the draws
    split: str = "train"           # keep records whose meta["split"] is this ("" keeps all)


@dataclasses.dataclass
class LossWeights:
    l1: float = 1.0
    ssim: float = 0.2
    mask: float = 1.0
    token: float = 0.5


@dataclasses.dataclass
class TrainConfig:
    model: TokenizerConfig = dataclasses.field(default_factory=TokenizerConfig)
    data: list[DataSource] = dataclasses.field(default_factory=list)
    out_dir: str = "runs/tokenizer"
    steps: int = 1000
    batch_clips: int = 2           # per rank
    input_frames: int = 4
    heldout_frames: int = 2
    render_size: int = 96          # longer side of the held-out renders
    lr: float = 1e-3
    decoder_lr_scale: float = 0.1  # the decoder MLP is fine-tuned slower
    train_decoder: bool = True
    weight_decay: float = 0.0
    warmup: int = 50               # steps of linear warm-up, then the constant lr
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    loss: LossWeights = dataclasses.field(default_factory=LossWeights)
    log_every: int = 10
    ckpt_every: int = 100
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    mixed_precision: Literal["auto", "bf16", "fp32"] = "auto"   # bf16 autocast on CUDA ("auto", "bf16")
    threads: int = 0               # torch CPU threads per rank (0: leave as is)

    def __post_init__(self) -> None:
        if self.input_frames < 1 or self.heldout_frames < 1:
            raise ValueError("input_frames and heldout_frames must be >= 1")
        if any(s.weight < 0 for s in self.data):
            raise ValueError("data weights must be >= 0")


# ------------------------------------------------------------------ views, rendering, losses
@dataclasses.dataclass
class Views:
    """Frames of one clip at render size: targets and what the renderer needs to draw them."""

    rgb: torch.Tensor  # (V, h, w, 3) in [0, 1], premultiplied by the mask
    mask: torch.Tensor  # (V, h, w) in [0, 1]
    cameras: list[Camera]
    joint_rotations: torch.Tensor  # (V, J, 4)
    root_translation: torch.Tensor  # (V, 3)
    valid: torch.Tensor | None = None  # (V, h, w) 1 where the frame shows the scene, 0 under an occluder


def occluder_mask(record: ClipRecord) -> torch.Tensor:
    """(H, W) float: 0 inside the record's occluder rectangles (meta["occluders"], [x0, y0, x1, y1] pixels,
    drawn over the person by the synthetic generator, the same in every frame), 1 elsewhere. The losses
    and metrics ignore occluded pixels: the mask says "no person" there, but the person may be behind."""
    w, h = record.image_size
    valid = torch.ones(h, w)
    for x0, y0, x1, y1 in record.meta.get("occluders", []) or []:
        valid[max(0, int(y0)):max(0, int(y1)), max(0, int(x0)):max(0, int(x1))] = 0.0
    return valid


def clip_views(record: ClipRecord, indices, size: int | None) -> Views:
    """The record's frames `indices`, resized so the longer side is `size` (None: as stored)."""
    idx = list(int(i) for i in indices)
    w, h = record.image_size
    s = 1.0 if size is None else size / max(w, h)
    rw, rh = max(1, round(w * s)), max(1, round(h * s))
    rgb = torch.from_numpy(record.frames[idx]).float().permute(0, 3, 1, 2) / 255.0  # (V, 3, H, W)
    mask = torch.from_numpy(record.masks[idx]).float()[:, None] / 255.0  # (V, 1, H, W)
    valid = occluder_mask(record)[None, None].expand(len(idx), 1, h, w)  # (V, 1, H, W)
    if (rw, rh) != (w, h):
        rgb = F.interpolate(rgb, size=(rh, rw), mode="area")  # (V, 3, h, w)
        mask = F.interpolate(mask, size=(rh, rw), mode="area")  # (V, 1, h, w)
        valid = (F.interpolate(valid, size=(rh, rw), mode="area") > 0.999).float()  # (V, 1, h, w)
    cams = []
    for i in idx:
        k = record.intrinsics[i].astype(np.float64).copy()
        k[0] *= rw / w
        k[1] *= rh / h
        cams.append(Camera(record.viewmats[i], k, rw, rh))
    return Views(rgb=(rgb * mask).permute(0, 2, 3, 1), mask=mask[:, 0], cameras=cams,
                 joint_rotations=torch.from_numpy(record.joint_rotations[idx]),
                 root_translation=torch.from_numpy(record.root_translation[idx]), valid=valid[:, 0].contiguous())


def render_tokens(tokens: torch.Tensor, model: Tokenizer, skeleton: Skeleton, views: Views) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens (C, R, R) -> rgb (V, h, w, 3) and alpha (V, h, w): decoded, posed per view, rendered on black."""
    g = decode(tokens.float(), model.layout, model.decoder)
    rgbs, alphas = [], []
    for v, cam in enumerate(views.cameras):
        posed = pose(g, skeleton, views.joint_rotations[v], views.root_translation[v])
        out = render(posed, cam, options=RenderOptions(background=(0.0, 0.0, 0.0)))
        rgbs.append(out.rgb[0])
        alphas.append(out.alpha[0, ..., 0])
    return torch.stack(rgbs), torch.stack(alphas)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]  # (1, 1, size, size)


def ssim(a: torch.Tensor, b: torch.Tensor, reduce: bool = True) -> torch.Tensor:
    """SSIM of images (V, H, W, 3) in [0, 1] (Wang et al. 2004, 11x11 Gaussian window, sigma 1.5, valid
    region only). Returns the mean, or (V,) per image with reduce=False."""
    x, y = a.permute(0, 3, 1, 2), b.permute(0, 3, 1, 2)  # (V, 3, H, W)
    c = x.shape[1]
    win = _gaussian_window().to(x).expand(c, 1, 11, 11)
    mu_x = F.conv2d(x, win, groups=c)
    mu_y = F.conv2d(y, win, groups=c)
    sxx = F.conv2d(x * x, win, groups=c) - mu_x ** 2
    syy = F.conv2d(y * y, win, groups=c) - mu_y ** 2
    sxy = F.conv2d(x * y, win, groups=c) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))
    per = s.mean((1, 2, 3))  # (V,)
    return per.mean() if reduce else per


def photometric_losses(rgb: torch.Tensor, alpha: torch.Tensor, views: Views) -> dict[str, torch.Tensor]:
    """L1, 1 - SSIM and |alpha - mask| over the pixels not under an occluder."""
    valid = views.valid if views.valid is not None else torch.ones_like(views.mask)  # (V, h, w)
    n = valid.sum().clamp_min(1.0)
    v3 = valid[..., None]
    return {"l1": ((rgb - views.rgb).abs() * v3).sum() / (3 * n), "ssim": 1.0 - ssim(rgb * v3, views.rgb * v3),
            "mask": ((alpha - views.mask).abs() * valid).sum() / n}


def token_loss(tokens: torch.Tensor, record: ClipRecord, seen_map: torch.Tensor) -> torch.Tensor | None:
    """L1 on the explicit channels over the texels the inputs showed; None when the record has no
    ground truth at this resolution. tokens (C, R, R), seen_map (R, R) bool."""
    gt = record.extras.get("gt_tokens")
    if gt is None or tuple(gt.shape[-2:]) != tuple(tokens.shape[-2:]) or gt.shape[0] < EXPLICIT_CHANNELS:
        return None
    gt_t = torch.from_numpy(np.asarray(gt, dtype=np.float32))[:EXPLICIT_CHANNELS]  # (10, R, R)
    w = seen_map.float()
    diff = (tokens[:EXPLICIT_CHANNELS].float() - gt_t).abs().mean(0)  # (R, R)
    return (diff * w).sum() / w.sum().clamp_min(1.0)


# ------------------------------------------------------------------ data
class ClipLibrary:
    """Clip records of the configured sources (paths listed once; records loaded on demand, cached)."""

    def __init__(self, sources: list[DataSource], min_frames: int, cache_size: int = 64) -> None:
        self.sources: list[tuple[DataSource, list[Path]]] = []
        for src in sources:
            paths = []
            for p in iter_record_paths(src.path):
                meta = load_record(p, frames=False).meta
                if src.split and meta.get("split", "train") != src.split:
                    continue
                paths.append(p)
            if paths and src.weight > 0:
                self.sources.append((src, paths))
        if not self.sources:
            raise ValueError(f"no clip records found in {[s.path for s in sources]} (with the splits asked for)")
        self.min_frames = min_frames
        self._cache: dict[Path, ClipRecord] = {}
        self._cache_size = cache_size

    def draw(self, gen: torch.Generator) -> ClipRecord:
        weights = torch.tensor([s.weight for s, _ in self.sources], dtype=torch.float64)
        _, paths = self.sources[int(torch.multinomial(weights, 1, generator=gen))]
        for _ in range(20):
            rec = self.load(paths[int(torch.randint(len(paths), (1,), generator=gen))])
            if rec.num_frames >= self.min_frames:
                return rec
        raise ValueError(f"no clip with at least {self.min_frames} frames after 20 draws")

    def load(self, path: Path) -> ClipRecord:
        if path not in self._cache:
            if len(self._cache) >= self._cache_size:
                self._cache.pop(next(iter(self._cache)))
            self._cache[path] = load_record(path)
        return self._cache[path]


def split_frames(num_frames: int, n_in: int, n_out: int, gen: torch.Generator) -> tuple[list[int], list[int]]:
    perm = torch.randperm(num_frames, generator=gen).tolist()
    return sorted(perm[:n_in]), sorted(perm[n_in:n_in + n_out])


def clip_inputs(model: Tokenizer, record: ClipRecord, indices):
    idx = list(indices)
    return model.prepare(record.frames[idx], record.masks[idx], record.viewmats[idx], record.intrinsics[idx],
                         record.joint_rotations[idx], record.root_translation[idx])


def build_model(config: TokenizerConfig) -> Tokenizer:
    return Tokenizer.build(config)


# ------------------------------------------------------------------ the loop
def train_step_clip(model: Tokenizer, skeleton: Skeleton, record: ClipRecord, cfg: TrainConfig,
                    gen: torch.Generator, ctx: runtime.DistributedContext) -> dict[str, torch.Tensor]:
    n_in = min(cfg.input_frames, record.num_frames - 1)
    idx_in, idx_out = split_frames(record.num_frames, n_in, cfg.heldout_frames, gen)
    inputs = clip_inputs(model, record, idx_in)
    with runtime.autocast(ctx, cfg.mixed_precision):
        tokens = model(inputs)[0].float()  # (C, R, R)
    views = clip_views(record, idx_out, cfg.render_size)
    rgb, alpha = render_tokens(tokens, model, skeleton, views)
    losses = photometric_losses(rgb, alpha, views)
    seen = torch.zeros(model.config.resolution ** 2, dtype=torch.bool)
    seen[model.valid_indices] = (inputs.weight[0] > 0.5).any(0)
    tl = token_loss(tokens, record, seen.reshape(model.config.resolution, -1))
    if tl is not None:
        losses["token"] = tl
    return losses


def total_loss(losses: dict[str, torch.Tensor], weights: LossWeights) -> torch.Tensor:
    return sum(getattr(weights, k) * v for k, v in losses.items())


def train(cfg: TrainConfig, note: str = "", progress: bool = True, stop_after: int | None = None) -> dict[str, Any]:
    """Run (or resume) training; returns the last logged metrics. `stop_after`: leave after that many
    steps of this call (tests use it to simulate an interrupted run)."""
    ctx = runtime.init_distributed(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model).to(ctx.device)
    skeleton = model.visibility.skeleton
    if not cfg.train_decoder:
        model.decoder.requires_grad_(False)
    ema = runtime.EMA(model, cfg.ema_decay)
    dec_params = [p for p in model.decoder.parameters() if p.requires_grad]
    other = [p for n, p in model.named_parameters() if not n.startswith("decoder.")]
    groups = [{"params": other, "lr": cfg.lr}]
    if dec_params:
        groups.append({"params": dec_params, "lr": cfg.lr * cfg.decoder_lr_scale})
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    params = [p for g in groups for p in g["params"]]
    base_lrs = [g["lr"] for g in opt.param_groups]

    step = 0
    last = out / "last.safetensors"
    if last.exists():
        step, _ = runtime.load_training_state(last, kind=CHECKPOINT_KIND, model=model, optimizer=opt, ema=ema)
    library = ClipLibrary(cfg.data, min_frames=2)
    logger = runtime.TrainLogger(ctx, cfg.log_every, out / "tb")
    bar = runtime.progress_bar(cfg.steps, step, ctx, progress)
    metrics: dict[str, Any] = {}
    done_here = 0
    t_last, clips_since = time.perf_counter(), 0
    try:
        while step < cfg.steps and (stop_after is None or done_here < stop_after):
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + ctx.rank * 7919 + step)
            scale = runtime.cosine_warmup_lr(step, 1.0, cfg.warmup, cfg.steps, min_ratio=1.0)  # warm-up, then 1
            for g, lr in zip(opt.param_groups, base_lrs):
                g["lr"] = lr * scale
            opt.zero_grad(set_to_none=True)
            sums: dict[str, float] = {}
            for _ in range(cfg.batch_clips):
                record = library.draw(gen)
                losses = train_step_clip(model, skeleton, record, cfg, gen, ctx)
                loss = total_loss(losses, cfg.loss)
                (loss / cfg.batch_clips).backward()
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) / cfg.batch_clips
                sums["loss"] = sums.get("loss", 0.0) + float(loss.detach()) / cfg.batch_clips
            runtime.allreduce_gradients(params, ctx)
            grad_norm = runtime.clip_gradients(params, cfg.grad_clip)
            opt.step()
            ema.update(model)
            step += 1
            done_here += 1
            clips_since += cfg.batch_clips * ctx.world_size
            bar.update(1)
            bar.set_postfix(loss=f"{sums['loss']:.4f}")
            logger.step(step, sums["loss"], cfg.batch_clips * ctx.world_size,
                        **{k: v for k, v in sums.items() if k != "loss"}, grad_norm=grad_norm)
            if ctx.is_main and (step % cfg.log_every == 0 or step == cfg.steps):
                now = time.perf_counter()
                metrics = {"step": step, **{k: round(v, 6) for k, v in sums.items()},
                           "grad_norm": round(float(grad_norm), 4), "lr": opt.param_groups[0]["lr"],
                           "clips_per_s": round(clips_since / (now - t_last), 4)}
                t_last, clips_since = now, 0
                with open(out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(metrics) + "\n")
            if ctx.is_main and (step % cfg.ckpt_every == 0 or step == cfg.steps):
                runtime.save_training_state(last, kind=CHECKPOINT_KIND, config=to_dict(cfg), model=model,
                                            optimizer=opt, step=step, ema=ema, name=f"tokenizer step {step}",
                                            note=note)
    finally:
        bar.close()
        logger.close()
    if ctx.distributed:
        torch.distributed.barrier()
    return metrics


def load_train_config(path: str | None, overrides: list[str]) -> TrainConfig:
    cfg = load_config(path, TrainConfig) if path else TrainConfig()
    return apply_overrides(cfg, overrides) if overrides else cfg


def main(args: argparse.Namespace) -> int:
    cfg = load_train_config(args.config, args.set or [])
    try:
        metrics = train(cfg, note=" ".join(sys.argv), progress=not args.no_progress)
    finally:
        runtime.shutdown_distributed()
    if int(os.environ.get("RANK", 0)) == 0:
        print(json.dumps(metrics))
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config (training/configs/tokenizer_tiny.yaml, ...)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
