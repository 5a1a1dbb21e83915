"""The `.safetensors` avatar as the backend holds it: decoded rigged Gaussians, skeleton, optional tokens,
and metadata, in torch.

Tensors:  gaussians.<field> (the Gaussians' state_dict), skeleton.joint_parents (J,) int32,
          skeleton.rest_matrices (J, 4, 4) float32, skeleton.joint_tails (J, 3) float32, tokens (C, R, R) optional
Metadata (strings, as safetensors requires): "format" = "genlca-avatar", "version", "joint_names" (JSON list),
          "meta" (JSON object: template, resolution, generator, prompt, seed, ...).

The bytes are read and written by `bridge/files/avatar.py` (numpy; the add-on uses the same code), so the
format, its version check and its value checks live in one place; this module converts to and from torch.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np
import torch

from backend.avatar.gaussians import Gaussians
from bridge.files.avatar import GAUSSIAN_KEYS, SKELETON_KEYS, AvatarFile, AvatarFileError, read_avatar, write_avatar


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
    """Write atomically (bridge.files.atomic: an exclusive temporary file in the same folder, then rename)."""
    avatar.gaussians.validate(check_finite=True)
    if avatar.gaussians.skin_indices is None:
        raise ValueError("an avatar file holds rigged Gaussians; these have no skin")
    arrays = {k: v.numpy() for k, v in avatar.gaussians.detach().to("cpu").state_dict().items()}
    arrays.update({k: np.ascontiguousarray(getattr(avatar, k)) for k in SKELETON_KEYS})
    tokens = None if avatar.tokens is None else avatar.tokens.detach().cpu().contiguous().numpy()
    try:
        json.dumps(avatar.meta)
    except TypeError as exc:
        raise ValueError(f"avatar meta must be JSON-serialisable: {exc}") from exc
    write_avatar(path, AvatarFile(arrays, list(avatar.joint_names), avatar.meta, tokens))


def load_avatar(path: str | os.PathLike, device: str | torch.device = "cpu") -> AvatarRecord:
    """The avatar at `path` on `device`. Raises AvatarFileError (a ValueError) naming the file and the first
    problem: not a safetensors file, not an avatar, a newer version, a missing or mis-shaped array, values
    a renderer cannot take (bridge.files.avatar.read_avatar checks them)."""
    file = read_avatar(path)
    if not file.rigged:
        raise AvatarFileError(f"{path}: the avatar has no skin or skeleton")
    tensors = {k: torch.from_numpy(np.array(file.arrays[k])) for k in GAUSSIAN_KEYS}
    tensors["skin_indices"] = tensors["skin_indices"].long()   # torch's index type (the wire's is uint16)
    gaussians = Gaussians(**tensors).to(device)
    try:
        gaussians.validate(check_finite=True)
    except ValueError as exc:
        raise AvatarFileError(f"{path}: {exc}") from None
    skeleton = {k: np.array(file.arrays[k]) for k in SKELETON_KEYS}   # writable copies of the file's bytes
    return AvatarRecord(gaussians=gaussians, joint_names=file.joint_names, **skeleton, meta=file.meta,
                        tokens=None if file.tokens is None else torch.from_numpy(file.tokens).to(device))
