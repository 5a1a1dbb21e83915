"""Pipelines: the operations the backend serves, as handlers for backend.server.

`default_service()` is what `genlca-backend serve` runs: the model package named by ServiceConfig.model
(diffusion model, token decoder, optional tokenizer) over the avatar core (template, skinning, renderer,
PLY/safetensors export); `default_handlers()` gives just its handlers.
"""
from __future__ import annotations

from typing import Any


def default_service(store=None, config=None):
    from backend.pipelines.avatar_service import AvatarService
    from backend.pipelines.store import AvatarStore

    return AvatarService(store if store is not None else AvatarStore(), config)


def default_handlers(store=None, config=None) -> dict[str, Any]:
    return default_service(store, config).handlers()
