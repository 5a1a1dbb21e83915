"""A tiny random model package for fast CPU tests of the pipelines and the service (diffusers' habit:
fast tests on tiny random models with fixed seeds; the shipped checkpoint has slow tests of its own)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from backend.avatar.template import load_template
from backend.avatar.tokens import TokenDecoderConfig
from backend.avatar.uv_layout import load_layout
from backend.config import to_dict
from backend.models.checkpoint import Checkpoint, save_checkpoint
from backend.models.dit import DiTConfig, TokenMapDiT, patch_geometry


def make_tiny_package(folder: Path, resolution: int = 32, seed: int = 0, name: str = "tiny-random",
                      tokenizer: bool = False, photo_channels: str | None = None) -> Path:
    """Writes folder/dit.safetensors: a random TokenMapDiT (final layer perturbed so the velocity is not
    zero; token statistics that keep the decoded Gaussians near the body, as a trained model's do) with
    the hashing text encoder and the explicit decoder; with `tokenizer`, also folder/tokenizer.safetensors
    (`make_tiny_tokenizer`); returns the folder."""
    torch.manual_seed(seed)
    layout = load_layout(load_template("anny"), resolution)
    cfg = DiTConfig(resolution=resolution, token_channels=12, patch_size=4, hidden_size=64, depth=2, num_heads=4,
                    text_dim=384, image_dim=64)
    model = TokenMapDiT(cfg, patch_geometry(layout, cfg.patch_size))
    with torch.no_grad():
        for p in model.final_layer.parameters():
            p.normal_(0.0, 0.05)
        for block in model.blocks:
            for p in block.adaLN_modulation.parameters():
                p.normal_(0.0, 0.02)
        # token statistics like a trained model's: colours spread, geometry close to the body surface
        model.token_std.copy_(torch.tensor([0.5] * 3 + [0.03] * 3 + [0.1] * 4 + [0.1] * 2))
    decoder = TokenDecoderConfig(token_channels=12, gaussians_per_texel=2, sh_degree=0, token_layout="explicit")
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(folder / "dit.safetensors", Checkpoint(
        kind="dit", config={"model": dataclasses.asdict(cfg), "text_encoder": "hashing", "max_text_tokens": 16,
                            "token_source": {"kind": "test", "decoder_config": to_dict(decoder)}},
        model=model.state_dict(), name=name, note="random weights for tests"))
    if tokenizer:
        make_tiny_tokenizer(folder / "tokenizer.safetensors", resolution, seed, photo_channels)
    return folder


def make_tiny_tokenizer(path: Path, resolution: int = 32, seed: int = 0, photo_channels: str | None = None) -> Path:
    """A random tiny Tokenizer checkpoint at `path` (12 channels, K = 2, as make_tiny_package's DiT): its
    decoder is the fresh explicit one (head weight zero), as a tokenizer trained with train_decoder=false;
    its atlas head is perturbed so that every token channel, not only the colour, carries the photo.
    `photo_channels` (None: leave the key out, a package made before the choice existed)."""
    from backend.models.tokenizer import Tokenizer, Tokenizer_tiny

    torch.manual_seed(seed + 1)
    cfg = dataclasses.replace(Tokenizer_tiny(), resolution=resolution)
    model = Tokenizer.build(cfg)
    with torch.no_grad():
        model.head.weight.normal_(0.0, 0.05)
    config = {"model": to_dict(cfg)}
    if photo_channels is not None:
        config["photo_channels"] = photo_channels
    save_checkpoint(path, Checkpoint(kind="tokenizer", config=config, model=model.state_dict(),
                                     name="tiny-tokenizer", note="random weights for tests"))
    return path
