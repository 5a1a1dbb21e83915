"""Token shards and a tiny DiT training config for the diffusion-training tests (tests/test_train_diffusion.py,
test_recipe.py, test_evaluate.py, test_scaling.py) and their torchrun children: a fixtures module, no tests.
Shards are made from region colours (encode_explicit), R = 32, with per-clip visibility of random regions."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from backend.avatar.template import load_template
from backend.avatar.tokens import TokenDecoderConfig, encode_explicit
from backend.avatar.uv_layout import load_layout
from training import train_diffusion as td
from training.data.shards import TokenShard, add_to_manifest, save_shard

COLOURS = {"red": (0.8, 0.1, 0.1), "blue": (0.1, 0.3, 0.8), "green": (0.15, 0.6, 0.25), "white": (0.9, 0.9, 0.9)}


def make_shards(folder: Path, n: int = 12, r: int = 32, seed: int = 0) -> Path:
    """Token shards from region colours (encode_explicit) with per-clip visibility of random regions."""
    layout = load_layout(load_template("anny"), r)
    cfg = TokenDecoderConfig(token_channels=12, token_layout="explicit", gaussians_per_texel=1, sh_degree=0)
    rng = np.random.default_rng(seed)
    tokens, vis, caps, metas = [], [], [], []
    names = list(COLOURS)
    for i in range(n):
        upper, lower = names[rng.integers(4)], names[rng.integers(4)]
        rgb = torch.full((3, r, r), 0.7)
        rgb[:, layout.region_mask(["torso", "arms"])] = torch.tensor(COLOURS[upper])[:, None]
        rgb[:, layout.region_mask("legs")] = torch.tensor(COLOURS[lower])[:, None]
        tokens.append(encode_explicit(layout, cfg, rgb, opacity=torch.full((r, r), 0.9)).numpy())
        seen = np.zeros((r, r), bool)
        for region in ("head", "torso", "arms", "hands", "legs", "feet"):
            if rng.random() < 0.6:
                seen |= layout.region_mask(region).numpy()
        vis.append(seen)
        caps.append([f"a person in a {upper} shirt and {lower} trousers", f"{upper} top, {lower} trousers"])
        metas.append({"split": "train", "attributes": {"upper_colour": upper, "lower_colour": lower}})
    half = n // 2
    for k, sl in enumerate((slice(0, half), slice(half, n))):
        shard = TokenShard(tokens=np.stack(tokens[sl]), visibility=np.stack(vis[sl]),
                           atlas_mask=layout.atlas_mask.numpy(), clip_ids=[f"c{i}" for i in range(n)][sl],
                           captions=caps[sl], metas=metas[sl], source={"kind": "test-ground-truth"})
        sha = save_shard(shard, folder / f"s{k}.tokens.safetensors")
        add_to_manifest(folder, f"s{k}.tokens.safetensors", shard.clip_ids, sha)
    return folder


def tiny_config(shards: Path, out: Path, **train) -> td.DiffusionConfig:
    cfg = td.DiffusionConfig()
    cfg.data.shards = str(shards)
    cfg.condition.text_encoder = "hashing"
    cfg.model.hidden_size, cfg.model.depth = 64, 2
    base = dict(out_dir=str(out), global_batch=4, steps=40, warmup=5, log_every=1000, ckpt_every=1000, device="cpu",
                progress=False, threads=1)
    cfg.train = dataclasses.replace(cfg.train, **{**base, **train})
    return cfg


def training_setup(shards: Path, mode: str):
    """(config, dataset, condition bank, model) for one loss evaluation under visibility `mode`."""
    cfg = tiny_config(shards, Path("/nonexistent"), visibility_mode=mode)
    ds = td.load_dataset(shards, ["train"])
    mean, std = td.token_statistics(ds.tokens, ds.visibility, ds.atlas_mask)
    ds = td.fill_unseen(ds, mean, "transparent_mean")
    enc = td.load_text_encoder("hashing")
    model = td.build_model(cfg, 32, 12, enc.dim)
    model.token_mean.copy_(mean), model.token_std.copy_(std)
    with torch.no_grad():  # a non-trivial output layer so that the loss depends on the input
        model.final_layer.linear.weight.normal_(0, 0.05)
        for b in model.blocks:
            b.adaLN_modulation[-1].weight.normal_(0, 0.05)
    return cfg, ds, td.ConditionBank(enc, ds.captions), model
