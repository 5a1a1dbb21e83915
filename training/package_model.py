"""`genlca-train package`: turn training checkpoints into a model package the backend serves.

    genlca-train package --dit runs/diffusion_small/last.safetensors [--tokenizer runs/tok/last.safetensors \
        --photo-channels colour|all] --out checkpoints/my-model --name my-model --note "the commands that made it"

A package is a folder with `dit.safetensors` (and optionally `tokenizer.safetensors`): the EMA weights as
the model weights, the training config in the metadata, no optimizer state or RNG (a fraction of the
size), the name and a note that carries the commands that made it. `genlca-backend serve --set
model=checkpoints/my-model` then serves it; the shipped default is `checkpoints/genlca-small` (README).
`--dtype float16` stores the weight matrices in half precision (half the size; the loader casts them back
to float32, so sampling runs in float32 on weights rounded to 11 significant bits); vectors (biases, norms,
the token statistics, the atlas geometry) stay float32. `--photo-channels` (stored in the tokenizer's
config) says which token channels of the texels a photo shows are kept in photo -> avatar: "colour"
(default: the SH-DC colour channels, what the tokenizer recovers reliably; the DiT samples the geometry)
or "all". Written atomically; the package is checked by loading it the way the service does (a tokenizer
whose tokens do not decode like the DiT's is refused there).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from backend.models.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from backend.pipelines.model_bundle import ModelError, PHOTO_CHANNELS, load_bundle

HALF_MIN_ELEMENTS = 4096  # --dtype float16: only matrices this big are halved (vectors and geometry stay float32)


def storage_weights(weights: dict[str, torch.Tensor], dtype: str) -> dict[str, torch.Tensor]:
    """The weights as stored: "float32" keeps them; "float16" halves float32 matrices of at least
    HALF_MIN_ELEMENTS elements (what dominates the size) and keeps everything else exactly."""
    if dtype == "float32":
        return dict(weights)
    if dtype != "float16":
        raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
    return {k: v.half() if v.dtype == torch.float32 and v.dim() >= 2 and v.numel() >= HALF_MIN_ELEMENTS else v
            for k, v in weights.items()}


def package_checkpoint(src: str | Path, dst: str | Path, kind: str, name: str, note: str,
                       weights_from: str = "ema", dtype: str = "float32",
                       extra_config: dict | None = None) -> str:
    """Copy a training checkpoint as an inference one; returns the new sha256. `weights_from`: "ema" (the
    EMA weights when the checkpoint has them) or "live" (the optimised weights: better for a short run,
    where an EMA of decay d still holds d**steps of the initial weights). `extra_config` is merged into
    the stored config (the tokenizer's `photo_channels`)."""
    if weights_from not in ("ema", "live"):
        raise ValueError(f"weights must be 'ema' or 'live', got {weights_from!r}")
    ckpt = load_checkpoint(src, kind, training_state=False)
    use_ema = weights_from == "ema" and ckpt.ema is not None
    weights = storage_weights(ckpt.ema if use_ema else ckpt.model, dtype)
    train = {k: v for k, v in ckpt.train.items() if k in ("step",)}
    config = {**ckpt.config, **(extra_config or {}),
              "source_checkpoint": {"file": Path(src).name, "sha256": ckpt.sha256,
                                    "weights": "ema" if use_ema else "live", "dtype": dtype}}
    return save_checkpoint(dst, Checkpoint(kind=kind, config=config, model=weights, train=train, name=name,
                                           note=note))


def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    name = args.name or out.name
    if args.photo_channels and not args.tokenizer:
        print("genlca-train package: --photo-channels says what a tokenizer's tokens pin; give --tokenizer",
              file=sys.stderr)
        return 2
    try:
        report = {"dit": package_checkpoint(args.dit, out / "dit.safetensors", "dit", name, args.note,
                                            args.weights, args.dtype)}
        if args.tokenizer:
            report["tokenizer"] = package_checkpoint(args.tokenizer, out / "tokenizer.safetensors", "tokenizer",
                                                     name, args.note, args.weights, args.dtype,
                                                     {"photo_channels": args.photo_channels or "colour"})
        bundle = load_bundle(out, text_encoder=args.text_encoder or None)
    except (CheckpointError, ModelError) as exc:
        print(f"genlca-train package: {exc}", file=sys.stderr)
        return 2
    report["model"] = bundle.describe()
    report["bytes"] = {p.name: p.stat().st_size for p in sorted(out.glob("*.safetensors"))}
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dit", required=True, help="a `dit` training checkpoint (genlca-train diffusion)")
    parser.add_argument("--tokenizer", default=None, help="a `tokenizer` training checkpoint (optional)")
    parser.add_argument("--out", required=True, help="the package folder to write")
    parser.add_argument("--name", default="", help="the model's name (default: the folder's name)")
    parser.add_argument("--weights", choices=("ema", "live"), default="ema",
                        help="the EMA weights (default) or the live ones (short runs: see package_checkpoint)")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                        help="float16: weight matrices stored in half precision (half the size)")
    parser.add_argument("--photo-channels", choices=PHOTO_CHANNELS, default=None,
                        help="token channels a photo pins on the texels it shows: colour (default; the DiT "
                             "samples their geometry) or all (needs --tokenizer)")
    parser.add_argument("--note", default="", help="free text kept in the checkpoint, e.g. the commands that made it")
    parser.add_argument("--text-encoder", default="", help="check the package with this text encoder instead "
                                                          "of the checkpoint's own (tests)")
