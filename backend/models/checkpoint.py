"""Checkpoints as safetensors with the config in the metadata; no pickle anywhere.

One file holds everything a run needs to resume exactly, under prefixes:

    model.<name>        the live weights
    ema.<name>          the EMA weights (optional)
    optim.<i>.<name>    the optimizer's per-parameter state tensors (i: index in the param groups' order)
    rng.torch           torch's CPU generator state (uint8), rng.cuda.<d> for each CUDA device
    extra.<name>        any other tensors (e.g. a data-order permutation)

Metadata (strings): format, version, kind (e.g. "dit", "tokenizer"), config (JSON of the model config),
train (JSON: step, epoch, optimizer hyper-parameters and scalar state, python/numpy RNG, anything else),
name and note (free text, e.g. the command that made it). `load_checkpoint` checks the format, version and
kind and names the file and the problem (missing, truncated, another kind or version).

The one way a trained model comes out of a checkpoint is `load_model(path, kind, from_checkpoint)`: read
and check the file, build the model from its stored config and weights (EMA when present and asked for),
on a device, in eval mode. Resuming training is `training/runtime.py`'s load_training_state, on top of
`load_checkpoint`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

FORMAT = "genlca-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    pass


@dataclasses.dataclass
class Checkpoint:
    kind: str
    config: dict[str, Any]
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None = None
    optimizer: dict[str, Any] | None = None  # torch optimizer state_dict
    train: dict[str, Any] = dataclasses.field(default_factory=dict)
    extra: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    rng: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    name: str = ""
    note: str = ""
    sha256: str = ""  # of the file it was loaded from


def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, json) of every RNG a training loop draws from: torch CPU/CUDA, numpy, python."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for d in range(torch.cuda.device_count()):
            tensors[f"cuda.{d}"] = torch.cuda.get_rng_state(d)
    np_state = np.random.get_state()
    py_state = random.getstate()
    return tensors, {"numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
                     "python": [py_state[0], list(py_state[1]), py_state[2]]}


def restore_rng(tensors: dict[str, torch.Tensor], states: dict[str, Any]) -> None:
    if "torch" in tensors:
        torch.set_rng_state(tensors["torch"])
    for key, value in tensors.items():
        if key.startswith("cuda.") and torch.cuda.is_available():
            d = int(key.split(".")[1])
            if d < torch.cuda.device_count():
                torch.cuda.set_rng_state(value, d)
    if "numpy" in states:
        s = states["numpy"]
        np.random.set_state((s[0], np.asarray(s[1], dtype=np.uint32), *s[2:]))
    if "python" in states:
        s = states["python"]
        random.setstate((s[0], tuple(s[1]), s[2]))


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, per_param in state["state"].items():
        for key, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    for idx, values in info.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(values)
    return {"state": state, "param_groups": info["param_groups"]}


def save_checkpoint(path: str | os.PathLike, ckpt: Checkpoint) -> str:
    """Write atomically (temporary file in the same folder, fsync, rename); returns the file's sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {f"model.{k}": v for k, v in ckpt.model.items()}
    if ckpt.ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ckpt.ema.items()})
    train = dict(ckpt.train)
    if ckpt.optimizer is not None:
        opt_tensors, opt_info = _flatten_optimizer(ckpt.optimizer)
        tensors.update(opt_tensors)
        train["optimizer"] = opt_info
    tensors.update({f"rng.{k}": v for k, v in ckpt.rng.items()})
    tensors.update({f"extra.{k}": v for k, v in ckpt.extra.items()})
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    seen: set[int] = set()
    for k, v in tensors.items():  # safetensors refuses shared storage (e.g. EMA buffers that are the model's)
        if v.numel() and v.untyped_storage().data_ptr() in seen:
            tensors[k] = v.clone()
        seen.add(tensors[k].untyped_storage().data_ptr())
    try:
        metadata = {"format": FORMAT, "version": str(VERSION), "kind": ckpt.kind, "config": json.dumps(ckpt.config),
                    "train": json.dumps(train), "name": ckpt.name, "note": ckpt.note}
    except TypeError as exc:
        raise CheckpointError(f"checkpoint config/train state must be JSON-serialisable: {exc}") from None
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return file_sha256(path)


def load_checkpoint(path: str | os.PathLike, kind: str | None = None, *, training_state: bool = True) -> Checkpoint:
    """Read a checkpoint; `kind` (if given) must match. `training_state=False` skips optimizer/RNG tensors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise CheckpointError(f"{path}: not a GenLCA checkpoint (format {meta.get('format')!r})")
            if meta.get("version") != str(VERSION):
                raise CheckpointError(f"{path}: checkpoint version {meta.get('version')!r}; this code reads {VERSION}")
            if kind is not None and meta.get("kind") != kind:
                raise CheckpointError(f"{path}: a {meta.get('kind')!r} checkpoint, expected {kind!r}")
            groups: dict[str, dict[str, torch.Tensor]] = {"model": {}, "ema": {}, "optim": {}, "rng": {}, "extra": {}}
            for key in f.keys():
                prefix, _, name = key.partition(".")
                if prefix not in groups:
                    raise CheckpointError(f"{path}: unexpected tensor {key!r}")
                if not training_state and prefix in ("optim", "rng"):
                    continue
                groups[prefix][name if prefix != "optim" else key] = f.get_tensor(key)
    except CheckpointError:
        raise
    except Exception as exc:  # truncated or foreign file: safetensors raises its own types
        raise CheckpointError(f"{path}: cannot read the checkpoint (truncated or damaged?): {exc}") from None
    try:
        config = json.loads(meta.get("config", "{}"))
        train = json.loads(meta.get("train", "{}"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: damaged metadata ({exc})") from None
    opt_info = train.pop("optimizer", None)
    optimizer = _unflatten_optimizer(groups["optim"], opt_info) if (opt_info is not None and training_state) else None
    return Checkpoint(kind=meta.get("kind", ""), config=config, model=groups["model"], ema=groups["ema"] or None,
                      optimizer=optimizer, train=train, extra=groups["extra"], rng=groups["rng"],
                      name=meta.get("name", ""), note=meta.get("note", ""), sha256=file_sha256(path))


def load_model(path: str | os.PathLike, kind: str, from_checkpoint: Callable[..., nn.Module], *,
               device: str | torch.device = "cpu", use_ema: bool = True) -> tuple[nn.Module, Checkpoint]:
    """(model, checkpoint): `from_checkpoint(ckpt, use_ema=...)` builds the model of a `kind` checkpoint from
    its config and weights (e.g. backend.models.dit.dit_from_checkpoint,
    backend.models.tokenizer.tokenizer_from_checkpoint); the model comes back on `device` in eval mode.
    Raises CheckpointError naming the file: unreadable, another kind or version, or weights that do not
    fit this code's model."""
    ckpt = load_checkpoint(path, kind, training_state=False)
    try:
        model = from_checkpoint(ckpt, use_ema=use_ema)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: the {kind} checkpoint does not fit this code's model ({exc})") from None
    return model.to(device).eval(), ckpt


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
