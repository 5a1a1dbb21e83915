"""Pipelines: the operations the backend serves, as handlers for backend.server.

`default_handlers()` is what `genlca-backend serve` runs: the real avatar core (template, token map,
decoder, skinning, renderer, PLY/safetensors export).
"""
from __future__ import annotations

from typing import Any


def default_handlers(store=None, config=None) -> dict[str, Any]:
    from backend.pipelines.avatar_service import AvatarService
    from backend.pipelines.store import AvatarStore

    return AvatarService(store if store is not None else AvatarStore(), config).handlers()
