"""Token shards: what the diffusion model trains on.

`genlca-train tokenize` turns a library of clip records into shards (the tokenizer's token maps with the
per-clip visibility); the synthetic generator can also write shards straight from its ground truth
(so the diffusion model can be developed before the tokenizer is trained). One shard file holds N clips:

    tokens       (N, C, R, R)  float16  token maps on the template's UV atlas
    visibility   (N, R, R)     uint8    1 where the clip showed the texel (the per-clip mask)
    atlas_mask   (R, R)        uint8    1 inside a UV chart (the static mask, the same for every clip)
    ref_crops    (N, S, S, 3)  uint8    a reference crop of the person (image conditioning), optional

Metadata: format, version, clip_ids (JSON list), captions (JSON list of lists), metas (JSON list of the
clip records' meta), source (JSON: how the tokens were made, e.g. tokenizer checkpoint name + sha256).
A folder of shards has a `manifest.json` listing every shard with its clip ids, count and sha256;
writers add shards atomically (shard first, then manifest), so a killed run leaves no half shard and a
rerun skips the clips the manifest already holds.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from backend.avatar.template import save_safetensors_atomic
from backend.models.checkpoint import file_sha256  # one sha256 of a file for checkpoints and shards
from backend.perception.observation import reference_crop as crop_around_mask
from training.data.records import ClipRecord

FORMAT = "genlca-tokens"
VERSION = 1
SUFFIX = ".tokens.safetensors"
MANIFEST = "manifest.json"


class ShardError(ValueError):
    pass


@dataclasses.dataclass
class TokenShard:
    tokens: np.ndarray  # (N, C, R, R) float16
    visibility: np.ndarray  # (N, R, R) uint8
    atlas_mask: np.ndarray  # (R, R) uint8
    clip_ids: list[str]
    captions: list[list[str]]
    metas: list[dict[str, Any]]
    ref_crops: np.ndarray | None = None  # (N, S, S, 3) uint8
    source: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tokens = np.ascontiguousarray(self.tokens, dtype=np.float16)
        self.visibility = np.ascontiguousarray(self.visibility, dtype=np.uint8)
        self.atlas_mask = np.ascontiguousarray(self.atlas_mask, dtype=np.uint8)
        if self.ref_crops is not None:
            self.ref_crops = np.ascontiguousarray(self.ref_crops, dtype=np.uint8)
        self.validate()

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def validate(self) -> None:
        if self.tokens.ndim != 4 or self.tokens.shape[2] != self.tokens.shape[3]:
            raise ShardError(f"tokens: expected (N, C, R, R), got {self.tokens.shape}")
        n, _, r, _ = self.tokens.shape
        if self.visibility.shape != (n, r, r):
            raise ShardError(f"visibility: expected {(n, r, r)}, got {self.visibility.shape}")
        if self.atlas_mask.shape != (r, r):
            raise ShardError(f"atlas_mask: expected {(r, r)}, got {self.atlas_mask.shape}")
        if not (len(self.clip_ids) == len(self.captions) == len(self.metas) == n):
            raise ShardError(f"clip_ids/captions/metas must each have {n} entries, got "
                             f"{len(self.clip_ids)}/{len(self.captions)}/{len(self.metas)}")
        if self.ref_crops is not None and (self.ref_crops.ndim != 4 or self.ref_crops.shape[0] != n
                                           or self.ref_crops.shape[-1] != 3):
            raise ShardError(f"ref_crops: expected ({n}, S, S, 3), got {self.ref_crops.shape}")
        if not np.isfinite(self.tokens.astype(np.float32)).all():
            raise ShardError("tokens: contain NaN or inf (or overflow float16)")


def reference_crop(record: ClipRecord, size: int = 64, margin: float = 0.1) -> np.ndarray:
    """A shard's reference crop of a clip: (size, size, 3) uint8, a square around the person's mask in the
    first frame (whole frame if empty); the same crop photo -> avatar gives the DiT
    (backend/perception/observation.py)."""
    return crop_around_mask(record.frames[0], record.masks[0], size, margin)


def save_shard(shard: TokenShard, path: str | os.PathLike) -> str:
    """Write one shard atomically; returns its sha256."""
    shard.validate()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"tokens": shard.tokens, "visibility": shard.visibility, "atlas_mask": shard.atlas_mask}
    if shard.ref_crops is not None:
        arrays["ref_crops"] = shard.ref_crops
    metadata = {"format": FORMAT, "version": str(VERSION), "clip_ids": json.dumps(shard.clip_ids),
                "captions": json.dumps(shard.captions), "metas": json.dumps(shard.metas),
                "source": json.dumps(shard.source)}
    save_safetensors_atomic(arrays, path, metadata)
    return file_sha256(path)


def load_shard(path: str | os.PathLike) -> TokenShard:
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="numpy") as f:
            header = f.metadata() or {}
            if header.get("format") != FORMAT or header.get("version") != str(VERSION):
                raise ShardError(f"{path}: not a token shard of version {VERSION} "
                                 f"(format {header.get('format')!r}, version {header.get('version')!r})")
            keys = set(f.keys())
            arrays = {k: f.get_tensor(k) for k in ("tokens", "visibility", "atlas_mask", "ref_crops") if k in keys}
        return TokenShard(clip_ids=json.loads(header["clip_ids"]), captions=json.loads(header["captions"]),
                          metas=json.loads(header["metas"]), source=json.loads(header.get("source", "{}")),
                          **arrays)
    except ShardError:
        raise
    except Exception as exc:
        raise ShardError(f"{path}: cannot read the token shard ({exc})") from None


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.exists():
        return {"format": FORMAT, "version": VERSION, "shards": []}
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ShardError(f"{path}: cannot read the manifest ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise ShardError(f"{path}: not a token-shard manifest")
    return manifest


def add_to_manifest(folder: str | os.PathLike, shard_name: str, clip_ids: list[str], sha256: str) -> None:
    """Record a written shard (atomic rewrite of manifest.json). Under torchrun, ranks write their own
    manifests (`manifest.rank<k>.json` via `manifest_name`) and rank 0 merges them: no shared file races."""
    write_manifest_entry(folder, MANIFEST, shard_name, clip_ids, sha256)


def write_manifest_entry(folder: str | os.PathLike, manifest_name: str, shard_name: str, clip_ids: list[str],
                         sha256: str) -> None:
    folder = Path(folder)
    path = folder / manifest_name
    manifest = json.loads(path.read_text()) if path.exists() else {"format": FORMAT, "version": VERSION, "shards": []}
    manifest["shards"] = [s for s in manifest["shards"] if s["name"] != shard_name]
    manifest["shards"].append({"name": shard_name, "clip_ids": clip_ids, "count": len(clip_ids), "sha256": sha256})
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=manifest_name + ".", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, path)


def iter_shards(folder: str | os.PathLike, verify: bool = False) -> Iterator[TokenShard]:
    """The shards the manifest lists, in order (optionally checking each file's sha256)."""
    folder = Path(folder)
    for entry in read_manifest(folder)["shards"]:
        path = folder / entry["name"]
        if verify and file_sha256(path) != entry["sha256"]:
            raise ShardError(f"{path}: sha256 differs from the manifest (corrupt or replaced)")
        yield load_shard(path)


def done_clip_ids(folder: str | os.PathLike) -> set[str]:
    return {c for s in read_manifest(folder)["shards"] for c in s["clip_ids"]}
