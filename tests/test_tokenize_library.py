"""Library tokenization: shards with visibility and crops, resumable after a kill, disjoint under torchrun."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.config import to_dict
from backend.models.checkpoint import Checkpoint, save_checkpoint
from backend.models.tokenizer import Tokenizer, tokenizer_models
from training.data.records import save_record
from training.data.shards import MANIFEST, iter_shards, read_manifest
from training.eval_tokenizer import toy_clip
from training.data.shards import reference_crop
from training.tokenize_library import tokenize_library
from backend.models.tokenizer import load_tokenizer
from training.train_tokenizer import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
CLIPS = 5


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def setup(tmp_path_factory, one_thread):
    """A library of 5 toy clips and a (freshly initialised) tiny tokenizer checkpoint."""
    root = tmp_path_factory.mktemp("tok")
    torch.manual_seed(0)
    model = Tokenizer.build(tokenizer_models["tiny"]())
    for seed in range(CLIPS):
        save_record(toy_clip(model.template, model.layout, model.config.decoder_config(), seed, frames=3,
                             front_frames=2, size=32), root / "lib")
    ckpt = root / "tiny.safetensors"
    save_checkpoint(ckpt, Checkpoint(kind="tokenizer", config=to_dict(TrainConfig(model=model.config)),
                                     model=model.state_dict(), ema={k: v.clone() for k, v in model.state_dict().items()}))
    return root, ckpt


def _all_clip_ids(out: Path) -> list[str]:
    return [c for shard in iter_shards(out, verify=True) for c in shard.clip_ids]


def test_kill_mid_run_then_resume(setup, tmp_path):
    root, ckpt = setup
    model = load_tokenizer(ckpt)
    out = tmp_path / "shards"

    def killed(name: str) -> None:
        raise KeyboardInterrupt(f"killed after {name}")

    with pytest.raises(KeyboardInterrupt):
        tokenize_library(model, root / "lib", out, shard_size=2, input_frames=3, progress=False, after_shard=killed)
    assert len(read_manifest(out)["shards"]) == 1 and len(_all_clip_ids(out)) == 2
    # a shard written just before a kill but never recorded must not survive the rerun
    orphan = out / "r000-deadbeef0000.tokens.safetensors"
    orphan.write_bytes((out / read_manifest(out)["shards"][0]["name"]).read_bytes())
    report = tokenize_library(model, root / "lib", out, shard_size=2, input_frames=3, progress=False)
    assert report["skipped"] == 2 and report["tokenized"] == CLIPS - 2
    assert not orphan.exists()
    ids = _all_clip_ids(out)
    assert sorted(ids) == sorted(f"toy-train-{i:05d}" for i in range(CLIPS)) and len(set(ids)) == CLIPS
    # a third run has nothing to do
    assert tokenize_library(model, root / "lib", out, shard_size=2, progress=False)["tokenized"] == 0

    shard = next(iter_shards(out))
    r = model.config.resolution
    assert shard.tokens.dtype == np.float16 and shard.tokens.shape[1:] == (12, r, r)
    assert shard.visibility.shape[1:] == (r, r) and shard.visibility.max() == 1
    assert not (shard.visibility.astype(bool) & ~shard.atlas_mask.astype(bool)).any()  # seen only inside the atlas
    assert shard.visibility.mean() < shard.atlas_mask.mean()  # 3 frames never show all of the body
    assert shard.ref_crops.shape[1:] == (64, 64, 3) and shard.captions[0] == ["a toy person"]
    assert shard.metas[0]["source"] == "synthetic"


def test_reference_crop_centres_on_the_person(setup):
    from training.data.records import load_record, iter_record_paths

    rec = load_record(next(iter(iter_record_paths(setup[0] / "lib"))))
    rec.masks[0] = 0
    rec.masks[0, 4:12, 20:28] = 255
    rec.frames[0] = 0
    rec.frames[0, 4:12, 20:28] = 200
    crop = reference_crop(rec, 16, margin=0.0)
    assert crop.shape == (16, 16, 3) and crop[4:12, 4:12].mean() > 150  # the person fills the crop's centre


def test_torchrun_two_ranks_write_disjoint_shards_covering_the_library(setup, tmp_path):
    root, ckpt = setup
    out = tmp_path / "shards"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "training.cli", "tokenize", "--checkpoint", str(ckpt), "--library", str(root / "lib"),
           "--out", str(out), "--shard-size", "2", "--input-frames", "3", "--threads", "1", "--no-progress"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    entries = read_manifest(out)["shards"]
    assert not list(out.glob("manifest.rank*.json"))  # merged by rank 0
    by_rank: dict[str, set[str]] = {}
    for e in entries:
        by_rank.setdefault(e["name"][:4], set()).update(e["clip_ids"])
    assert set(by_rank) == {"r000", "r001"}
    assert not (by_rank["r000"] & by_rank["r001"])
    ids = _all_clip_ids(out)
    assert len(ids) == CLIPS and set(ids) == {f"toy-train-{i:05d}" for i in range(CLIPS)}
    assert json.loads((out / MANIFEST).read_text())["format"] == "genlca-tokens"
