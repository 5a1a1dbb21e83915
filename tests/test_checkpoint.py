"""Checkpoints: safetensors + JSON, exact resume of model, optimizer and RNG; named errors for bad files."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from backend.models.checkpoint import (Checkpoint, CheckpointError, capture_rng, load_checkpoint, restore_rng,
                                       save_checkpoint)


def _step(model, opt, x):
    opt.zero_grad()
    loss = (model(x) ** 2).mean()
    loss.backward()
    opt.step()
    return loss.item()


def test_resume_continues_bit_identically(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        _step(model, opt, torch.randn(5, 4))
    tensors, states = capture_rng()
    save_checkpoint(tmp_path / "c.safetensors", Checkpoint("test", {"width": 8}, model.state_dict(),
                                                           optimizer=opt.state_dict(), train={"step": 3, "rng": states},
                                                           rng=tensors))
    reference = [_step(model, opt, torch.randn(5, 4)) + random.random() + float(np.random.rand()) for _ in range(4)]

    ck = load_checkpoint(tmp_path / "c.safetensors", kind="test")
    model2 = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 2))
    model2.load_state_dict(ck.model)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-2)
    opt2.load_state_dict(ck.optimizer)
    restore_rng(ck.rng, ck.train["rng"])
    resumed = [_step(model2, opt2, torch.randn(5, 4)) + random.random() + float(np.random.rand()) for _ in range(4)]
    assert resumed == reference and ck.train["step"] == 3 and ck.config == {"width": 8} and len(ck.sha256) == 64


def test_bad_files_get_named_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.safetensors")
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, Checkpoint("dit", {}, {"w": torch.ones(1000)}))
    with pytest.raises(CheckpointError, match="expected 'tokenizer'"):
        load_checkpoint(path, kind="tokenizer")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated or damaged"):
        load_checkpoint(path)
    (tmp_path / "foreign.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "foreign.safetensors")
    assert not list(tmp_path.glob("*.tmp"))
