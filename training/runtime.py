"""What every training script here shares: torchrun/DDP set-up, data order by step, EMA, mixed precision,
gradient clipping and all-reduce, logging (stdout + tensorboard when installed), a progress bar,
checkpoints that resume exactly (through backend/models/checkpoint.py), and a lock per run folder so that
processes can share a set of runs (`genlca-train scaling`, `genlca-train ablation`).

Exactness by construction: the data order and every random draw of a step are functions of
(seed, step), not of how many steps a process has run, so a resumed run, an uninterrupted run and a
run on W ranks see the same global batch at step k:

    order  = permutation(len(dataset), seed + epoch),  epoch = k // steps_per_epoch
    batch  = order[(k % steps_per_epoch) * B : ... + B]        (the global batch, B = global batch size)
    rank r takes batch[r * B / W : (r + 1) * B / W]             (DistributedSampler-style sharding)
    step_generator(seed, k) seeds the step's noise, t and dropout draws for the global batch; a rank
    draws them all and keeps its slice.

Gradients are averaged across ranks by one all-reduce of the flattened gradients (`allreduce_gradients`)
instead of a DistributedDataParallel wrapper: parameters unused under some configs (a mask token in the
naive ablation, an image encoder without crops) need no `find_unused_parameters`, and state-dict names
stay the same on one rank and on many. A loss that is a mean over the rank's samples then gives exactly
the single-process gradient of the global batch.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
import torch.nn as nn

from backend.models.checkpoint import Checkpoint, capture_rng, load_checkpoint, restore_rng, save_checkpoint


# ------------------------------------------------------------------------------------------- distributed
@dataclasses.dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistributedContext:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); without it, one CPU/GPU process.
    device: "auto" (CUDA when present), "cpu" or "cuda". Backend: NCCL on CUDA, gloo on CPU."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but CUDA is not available")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world)
    return DistributedContext(rank=rank, world_size=world, local_rank=local, device=dev)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def allreduce_gradients(parameters: list[nn.Parameter], ctx: DistributedContext) -> None:
    """Average .grad over ranks (missing grads count as zeros, so every rank reduces the same vector)."""
    if not ctx.distributed:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = torch.cat([g.reshape(-1) for g in grads])  # (P,)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= ctx.world_size
    offset = 0
    for p in parameters:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def allreduce_mean(value: float, ctx: DistributedContext) -> float:
    if not ctx.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / ctx.world_size


# ------------------------------------------------------------------------------------------- data order
def steps_per_epoch(dataset_size: int, global_batch: int) -> int:
    """Full global batches per epoch (the tail that does not fill a batch waits for the next epoch's order)."""
    if global_batch < 1:
        raise ValueError(f"global batch size must be >= 1, got {global_batch}")
    if dataset_size < global_batch:
        raise ValueError(f"dataset of {dataset_size} items is smaller than one global batch of {global_batch}")
    return dataset_size // global_batch


def global_batch_indices(step: int, dataset_size: int, global_batch: int, seed: int) -> torch.Tensor:
    """(B,) dataset indices of the global batch at `step` (0-based)."""
    spe = steps_per_epoch(dataset_size, global_batch)
    epoch, within = divmod(step, spe)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(dataset_size, generator=gen)
    return order[within * global_batch:(within + 1) * global_batch]


def rank_slice(global_batch: int, ctx: DistributedContext) -> slice:
    if global_batch % ctx.world_size:
        raise ValueError(f"global batch {global_batch} is not divisible by world size {ctx.world_size}")
    per = global_batch // ctx.world_size
    return slice(ctx.rank * per, (ctx.rank + 1) * per)


def step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator for every random draw of one step (same on every rank and after a resume)."""
    return torch.Generator().manual_seed((seed + 1) * 7_919 + step * 104_729)


# ------------------------------------------------------------------------------------------- EMA
class EMA:
    """Exponential moving average of a model's floating-point parameters and buffers (DiT's `update_ema`)."""

    def __init__(self, model: nn.Module, decay: float = 0.9999) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float | None = None) -> None:
        """One EMA step; `decay` overrides the configured one for this step (warm-up schedules)."""
        d = self.decay if decay is None else decay
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(d).add_(v.detach().float(), alpha=1.0 - d)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:5]}")
        self.shadow = {k: state[k].clone().float() for k in self.shadow}

    def copy_to(self, model: nn.Module) -> None:
        model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in self.shadow.items()})


# ------------------------------------------------------------------------------------------- precision
def autocast(ctx: DistributedContext, mixed_precision: str = "auto") -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA ("auto" or "bf16"); full precision on CPU (where bf16 matmuls are slower
    and the exact-resume tests want float32)."""
    if mixed_precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"mixed_precision must be 'auto', 'bf16' or 'fp32', got {mixed_precision!r}")
    if ctx.device.type == "cuda" and mixed_precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def clip_gradients(parameters: list[nn.Parameter], max_norm: float) -> float:
    """Clip to max_norm (<= 0: no clipping); returns the norm before clipping."""
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return 0.0
    if max_norm <= 0:
        return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])))
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))


# ------------------------------------------------------------------------------------------- logging
class TrainLogger:
    """Every `every` steps: one stdout line (step, loss, samples/s, extras) and tensorboard scalars when the
    `tensorboard` package is installed (optional). Only rank 0 writes."""

    def __init__(self, ctx: DistributedContext, every: int = 10, log_dir: str | os.PathLike | None = None,
                 stream=None) -> None:
        self.ctx, self.every = ctx, max(1, every)
        self.stream = stream or sys.stdout
        self.writer = None
        if ctx.is_main and log_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(str(log_dir))
            except ImportError:  # torch.utils.tensorboard needs the tensorboard package
                self.writer = None
        self._t0 = time.perf_counter()
        self._samples = 0
        self._losses: list[float] = []

    def step(self, step: int, loss: float, samples: int, **scalars: float) -> None:
        self._samples += samples
        self._losses.append(loss)
        if step % self.every:
            return
        dt = max(time.perf_counter() - self._t0, 1e-9)
        rate = self._samples / dt
        mean_loss = sum(self._losses) / len(self._losses)
        if self.ctx.is_main:
            extra = " ".join(f"{k} {v:.4g}" for k, v in scalars.items())
            print(f"step {step:7d}  loss {mean_loss:.5f}  samples/s {rate:8.2f}  {extra}".rstrip(),
                  file=self.stream, flush=True)
            if self.writer is not None:
                self.writer.add_scalar("train/loss", mean_loss, step)
                self.writer.add_scalar("train/samples_per_s", rate, step)
                for k, v in scalars.items():
                    self.writer.add_scalar(f"train/{k}", v, step)
        self._t0, self._samples, self._losses = time.perf_counter(), 0, []

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def progress_bar(total: int, initial: int, ctx: DistributedContext, enabled: bool = True) -> Any:
    """A tqdm bar on rank 0 when tqdm is installed and stderr is a terminal; otherwise a no-op object."""
    if enabled and ctx.is_main and sys.stderr.isatty():
        try:
            from tqdm import tqdm
            return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)
        except ImportError:
            pass

    class _Null:
        def update(self, n: int = 1) -> None: ...
        def set_postfix(self, **kw) -> None: ...
        def close(self) -> None: ...
    return _Null()


# ------------------------------------------------------------------------------------------- checkpoints
def save_training_state(path: str | os.PathLike, *, kind: str, config: dict[str, Any], model: nn.Module,
                        optimizer: torch.optim.Optimizer, step: int, ema: EMA | None = None,
                        extra: dict[str, torch.Tensor] | None = None, train: dict[str, Any] | None = None,
                        name: str = "", note: str = "") -> str:
    """Atomic checkpoint of everything `load_training_state` needs to continue exactly; returns sha256."""
    rng_tensors, rng_states = capture_rng()
    state = {"step": step, **rng_states, **(train or {})}
    ckpt = Checkpoint(kind=kind, config=config, model=model.state_dict(), ema=ema.state_dict() if ema else None,
                      optimizer=optimizer.state_dict(), train=state, extra=extra or {}, rng=rng_tensors,
                      name=name, note=note)
    return save_checkpoint(path, ckpt)


def load_training_state(path: str | os.PathLike, *, kind: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                        ema: EMA | None = None, restore_rng_state: bool = True) -> tuple[int, Any]:
    """Load model/EMA/optimizer/RNG from `path`; returns (step, the Checkpoint for its config and extras)."""
    ckpt = load_checkpoint(path, kind)
    model.load_state_dict(ckpt.model)
    if ema is not None and ckpt.ema is not None:
        ema.load_state_dict(ckpt.ema)
    if ckpt.optimizer is not None:
        optimizer.load_state_dict(ckpt.optimizer)
    if restore_rng_state:
        restore_rng(ckpt.rng, ckpt.train)
    return int(ckpt.train.get("step", 0)), ckpt


def latest_checkpoint(folder: str | os.PathLike, stem: str = "last") -> Path | None:
    path = Path(folder) / f"{stem}.safetensors"
    return path if path.is_file() else None


def cosine_warmup_lr(step: int, base_lr: float, warmup: int, total: int, min_ratio: float = 0.1) -> float:
    """Linear warm-up then cosine decay to min_ratio * base_lr (a pure function of step: resumable)."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    if total <= warmup:
        return base_lr
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return base_lr * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * p)))


# ------------------------------------------------------------------------------------------- run folders
class Busy(Exception):
    """Another live process holds this run folder's lock."""


@contextlib.contextmanager
def folder_lock(folder: Path, wait: bool = False,
                busy: Callable[[Path], Exception] = lambda folder: Busy(str(folder))) -> Iterator[None]:
    """Exclusive flock on folder/lock (made if missing) for the duration; when another live process holds it,
    raises busy(folder) (default Busy), or waits for it with `wait`. The lock dies with its process."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise busy(folder) from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
