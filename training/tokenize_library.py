"""`genlca-train tokenize --checkpoint CKPT --library DIR --out DIR`: clip records -> token shards.

Per clip: the tokenizer's token map (fp16) from up to `input_frames` frames (evenly spaced), the per-texel
visibility of those frames (the model's own depth-tested projection, `backend.avatar.visibility`, weight
> 0.5 in at least one frame), the static atlas mask, the captions, a reference crop (`crop_size`
square around the person's mask in the first frame) and the record's meta. Shards of `shard_size` clips
(`training/data/shards.py`), each written atomically before the manifest names it.

Under torchrun, rank k takes clips k::world and writes its own `manifest.rank<k>.json`; rank 0 merges
them into `manifest.json` at the end. A rerun (after a kill, with any world size) skips every clip that
any manifest already lists and deletes shard files that no manifest names (a shard written just before
a kill, never recorded), so no clip is tokenized twice and no half-written shard is ever listed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from backend.models.checkpoint import file_sha256
from backend.models.tokenizer import Tokenizer, load_tokenizer
from backend.perception.observation import tokenize_views
from training import runtime
from training.data.records import ClipRecord, iter_record_paths, load_record
from training.data.shards import (FORMAT as SHARD_FORMAT, MANIFEST, SUFFIX as SHARD_SUFFIX, TokenShard, reference_crop,
                                  save_shard, write_manifest_entry)


def rank_manifest(rank: int) -> str:
    return f"manifest.rank{rank}.json"


def _read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    if data.get("format") != SHARD_FORMAT:
        raise ValueError(f"{path}: not a token-shard manifest")
    return data["shards"]


def listed_shards(out: Path) -> list[dict]:
    """Every shard entry of manifest.json and of the per-rank manifests (by name, first wins)."""
    entries: dict[str, dict] = {}
    for path in [out / MANIFEST, *sorted(out.glob("manifest.rank*.json"))]:
        for e in _read(path):
            entries.setdefault(e["name"], e)
    return list(entries.values())


def library_paths(library: str | os.PathLike) -> list[Path]:
    """A folder of clip records, or a text file listing record paths (one per line, relative to it)."""
    library = Path(library)
    if library.is_file():
        return [(library.parent / line.strip()) for line in library.read_text().splitlines() if line.strip()]
    return list(iter_record_paths(library))


def tokenize_clip(model: Tokenizer, record: ClipRecord, input_frames: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """-> tokens (C, R, R) float16 and visibility (R, R) uint8 from up to `input_frames` frames."""
    return tokenize_views(model, record.frames, record.masks, record.viewmats, record.intrinsics,
                          record.joint_rotations, record.root_translation, input_frames)


def tokenize_library(model: Tokenizer, library: str | os.PathLike, out: str | os.PathLike, rank: int = 0,
                     world: int = 1, shard_size: int = 16, input_frames: int = 8, crop_size: int = 64,
                     source: dict | None = None, progress: bool = True,
                     after_shard: Callable[[str], None] | None = None) -> dict:
    """Tokenize this rank's share of the library into `out`; returns counts and clips/s."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = library_paths(library)
    mine = paths[rank::world]
    listed = listed_shards(out)
    done = {c for e in listed for c in e["clip_ids"]}
    names = {e["name"] for e in listed}
    pattern = f"r*-*{SHARD_SUFFIX}" if world == 1 else f"r{rank:03d}-*{SHARD_SUFFIX}"
    for f in out.glob(pattern):  # written before a kill, never recorded
        if f.name not in names:
            f.unlink()
    manifest_name = MANIFEST if world == 1 else rank_manifest(rank)
    pending = []
    for p in mine:
        header = load_record(p, frames=False)
        if header.clip_id not in done:
            pending.append(p)
    atlas = model.layout.atlas_mask.numpy().astype(np.uint8)
    bar = None
    if progress:
        try:
            from tqdm import tqdm
            bar = tqdm(total=len(mine), initial=len(mine) - len(pending), desc=f"tokenize r{rank}", file=sys.stderr)
        except ImportError:
            bar = None
    t0 = time.perf_counter()
    written = 0
    for start in range(0, len(pending), shard_size):
        batch = pending[start:start + shard_size]
        tokens, vis, crops, ids, captions, metas = [], [], [], [], [], []
        for p in batch:
            rec = load_record(p)
            t, v = tokenize_clip(model, rec, input_frames)
            tokens.append(t)
            vis.append(v)
            crops.append(reference_crop(rec, crop_size))
            ids.append(rec.clip_id)
            captions.append(rec.captions)
            metas.append(rec.meta)
            if bar is not None:
                bar.update(1)
        digest = hashlib.sha1("\n".join(ids).encode()).hexdigest()[:12]
        name = f"r{rank:03d}-{digest}{SHARD_SUFFIX}"
        shard = TokenShard(tokens=np.stack(tokens), visibility=np.stack(vis), atlas_mask=atlas, clip_ids=ids,
                           captions=captions, metas=metas, ref_crops=np.stack(crops), source=source or {})
        sha = save_shard(shard, out / name)
        write_manifest_entry(out, manifest_name, name, ids, sha)
        written += len(ids)
        if after_shard is not None:
            after_shard(name)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    return {"rank": rank, "clips": len(mine), "tokenized": written, "skipped": len(mine) - len(pending),
            "seconds": round(seconds, 3), "clips_per_s": round(written / seconds, 3) if written else None}


def merge_manifests(out: str | os.PathLike) -> int:
    """Fold every manifest.rank<k>.json into manifest.json (idempotent); returns the number of shards listed."""
    out = Path(out)
    main = {e["name"] for e in _read(out / MANIFEST)}
    for path in sorted(out.glob("manifest.rank*.json")):
        for e in _read(path):
            if e["name"] not in main:
                write_manifest_entry(out, MANIFEST, e["name"], e["clip_ids"], e["sha256"])
                main.add(e["name"])
        path.unlink()
    return len(main)


def main(args: argparse.Namespace) -> int:
    ctx = runtime.init_distributed("cpu")   # the tokenizer runs on the CPU; gloo between ranks
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model = load_tokenizer(args.checkpoint)
        source = {"tokenizer": Path(args.checkpoint).name, "sha256": file_sha256(args.checkpoint),
                  "input_frames": args.input_frames}
        report = tokenize_library(model, args.library, args.out, ctx.rank, ctx.world_size, args.shard_size,
                                  args.input_frames, args.crop_size, source, progress=not args.no_progress)
        if ctx.distributed:
            torch.distributed.barrier()
        if ctx.is_main:
            report["shards"] = merge_manifests(args.out)
        print(json.dumps(report), flush=True)
    finally:
        runtime.shutdown_distributed()
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="tokenizer checkpoint (.safetensors)")
    parser.add_argument("--library", required=True, help="folder of clip records, or a file listing them")
    parser.add_argument("--out", required=True, help="output folder for shards and manifest.json")
    parser.add_argument("--shard-size", type=int, default=16, help="clips per shard")
    parser.add_argument("--input-frames", type=int, default=8, help="frames per clip given to the tokenizer")
    parser.add_argument("--crop-size", type=int, default=64, help="reference crop edge in pixels")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads per rank (0: default)")
    parser.add_argument("--no-progress", action="store_true")
