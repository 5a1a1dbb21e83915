"""Avatar core: body template, UV token layout, token decoding to rigged Gaussians, skinning.

Names are resolved lazily so that `import backend.avatar.gaussians` stays cheap and free of cycles.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Gaussians": "backend.avatar.gaussians",
    "BodyTemplate": "backend.avatar.template",
    "load_template": "backend.avatar.template",
    "load_smplx_template": "backend.avatar.smplx_template",
    "TexelLayout": "backend.avatar.uv_layout",
    "build_layout": "backend.avatar.uv_layout",
    "load_layout": "backend.avatar.uv_layout",
    "TokenDecoder": "backend.avatar.tokens",
    "TokenDecoderConfig": "backend.avatar.tokens",
    "decode": "backend.avatar.tokens",
    "placeholder_tokens": "backend.avatar.tokens",
    "part_colored_gaussians": "backend.avatar.tokens",
    "Skeleton": "backend.avatar.skinning",
    "forward_kinematics": "backend.avatar.skinning",
    "pose": "backend.avatar.skinning",
    "pose_frames": "backend.avatar.skinning",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'backend.avatar' has no attribute {name!r}")
