"""The `.safetensors` avatar: decoded rigged Gaussians, skeleton, optional tokens, and metadata.

Tensors:  gaussians.<field> (the Gaussians' state_dict), skeleton.joint_parents (J,) int32,
          skeleton.rest_matrices (J, 4, 4) float32, skeleton.joint_tails (J, 3) float32, tokens (C, R, R) optional
Metadata (strings, as safetensors requires): "format" = "genlca-avatar", "version", "joint_names" (JSON list),
          "meta" (JSON object: template, resolution, generator, prompt, seed, ...).
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save

from backend.avatar.gaussians import Gaussians

FORMAT = "genlca-avatar"
VERSION = 1
SKELETON_KEYS = ("joint_parents", "rest_matrices", "joint_tails")


@dataclasses.dataclass
class AvatarRecord:
    gaussians: Gaussians
    joint_names: list[str]
    joint_parents: np.ndarray  # (J,) int32, -1 for the root
    rest_matrices: np.ndarray  # (J, 4, 4) float32 joint-to-world at rest
    joint_tails: np.ndarray  # (J, 3) float32 bone tail positions (for Blender bones)
    tokens: torch.Tensor | None = None  # (C, R, R)
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        j = len(self.joint_names)
        self.joint_parents = np.asarray(self.joint_parents, dtype=np.int32)
        self.rest_matrices = np.asarray(self.rest_matrices, dtype=np.float32)
        self.joint_tails = np.asarray(self.joint_tails, dtype=np.float32)
        for name, shape in (("joint_parents", (j,)), ("rest_matrices", (j, 4, 4)), ("joint_tails", (j, 3))):
            if getattr(self, name).shape != shape:
                raise ValueError(f"expected {name} of shape {shape} for {j} joints, got {getattr(self, name).shape}")


def save_avatar(path: str | os.PathLike, avatar: AvatarRecord) -> None:
    """Write atomically (a new temporary file in the same folder, then os.replace)."""
    path = Path(path)
    avatar.gaussians.validate(check_finite=True)
    tensors = avatar.gaussians.detach().to("cpu").state_dict(prefix="gaussians.")
    tensors.update({f"skeleton.{k}": torch.from_numpy(np.ascontiguousarray(getattr(avatar, k))) for k in SKELETON_KEYS})
    if avatar.tokens is not None:
        tensors["tokens"] = avatar.tokens.detach().cpu().contiguous()
    try:
        meta_json = json.dumps(avatar.meta)
    except TypeError as exc:
        raise ValueError(f"avatar meta must be JSON-serialisable: {exc}") from exc
    metadata = {"format": FORMAT, "version": str(VERSION), "joint_names": json.dumps(list(avatar.joint_names)),
                "meta": meta_json}
    data = save(tensors, metadata=metadata)
    # a fresh name, created exclusively and never through a symlink: nothing planted in the folder is followed
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists() or tmp.is_symlink():
            tmp.unlink()


def load_avatar(path: str | os.PathLike, device: str | torch.device = "cpu") -> AvatarRecord:
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for foreign/truncated files
        raise ValueError(f"{path} is not a readable safetensors file: {exc}") from exc
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path}: metadata format is {metadata.get('format')!r}, expected {FORMAT!r}")
    if int(metadata.get("version", "0")) > VERSION:
        raise ValueError(f"{path}: avatar version {metadata['version']} is newer than supported {VERSION}")
    missing = [k for k in ("joint_names", "meta") if k not in metadata]
    missing += [f"skeleton.{k}" for k in SKELETON_KEYS if f"skeleton.{k}" not in tensors]
    if missing:
        raise KeyError(f"{path}: avatar file lacks {', '.join(missing)}")
    try:
        joint_names, meta = json.loads(metadata["joint_names"]), json.loads(metadata["meta"])
    except ValueError as exc:
        raise ValueError(f"{path}: metadata is not valid JSON: {exc}") from None
    gaussians = Gaussians.from_state_dict({k: v for k, v in tensors.items() if k.startswith("gaussians.")},
                                          prefix="gaussians.")
    record = AvatarRecord(
        gaussians=gaussians, joint_names=joint_names,
        joint_parents=tensors["skeleton.joint_parents"].cpu().numpy(),
        rest_matrices=tensors["skeleton.rest_matrices"].cpu().numpy(),
        joint_tails=tensors["skeleton.joint_tails"].cpu().numpy(),
        tokens=tensors.get("tokens"), meta=meta) if isinstance(joint_names, list) else None
    if record is None:
        raise ValueError(f"{path}: joint_names must be a JSON list")
    try:
        check_record(record)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return record


def check_record(record: AvatarRecord) -> None:
    """What load_avatar checks, like the wire's arrays: shapes agree, values are finite, skin indices and
    parents name existing joints, skin weights are non-negative. ValueError names the first problem."""
    g = record.gaussians
    for name in ("means", "rotations", "log_scales", "opacity_logits", "sh"):
        if not isinstance(getattr(g, name), torch.Tensor) or not getattr(g, name).is_floating_point():
            raise ValueError(f"gaussians.{name} must be a floating-point tensor")
    g.validate(check_finite=True)
    j = len(record.joint_names)
    if j < 1 or not all(isinstance(n, str) and n for n in record.joint_names):
        raise ValueError(f"joint_names must be {j} non-empty str, at least one")
    if len(set(record.joint_names)) != j:
        raise ValueError("joint_names has duplicates")
    if not isinstance(record.meta, dict):
        raise ValueError(f"meta must be a JSON object, got {type(record.meta).__name__}")
    parents = record.joint_parents
    if parents.size and ((parents < -1).any() or (parents >= j).any()):
        raise ValueError(f"joint_parents must be in -1..{j - 1}, got {parents.min()}..{parents.max()}")
    for name in ("rest_matrices", "joint_tails"):
        if not np.isfinite(getattr(record, name)).all():
            raise ValueError(f"skeleton.{name} has NaN or inf")
    if g.skin_indices is not None:
        idx = g.skin_indices
        if idx.is_floating_point() or idx.dtype == torch.bool:
            raise ValueError(f"gaussians.skin_indices must be integers, got {idx.dtype}")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= j):
            raise ValueError(f"gaussians.skin_indices must be in 0..{j - 1} ({j} joints), got "
                             f"{int(idx.min())}..{int(idx.max())}")
        if g.skin_weights.numel() and float(g.skin_weights.min()) < 0:   # type: ignore[union-attr]
            raise ValueError("gaussians.skin_weights has negative weights")
    if record.tokens is not None:
        t = record.tokens
        if not t.is_floating_point() or t.ndim != 3 or not bool(torch.isfinite(t).all()):
            raise ValueError(f"tokens must be a finite float (C, R, R) tensor, got {t.dtype} {tuple(t.shape)}")
