"""The .safetensors avatar: round trip of Gaussians, skeleton, tokens and metadata; errors name the gap."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from backend.avatar.avatar_file import AvatarRecord, load_avatar, save_avatar
from backend.avatar.gaussians import Gaussians


def record(tokens: bool = True) -> AvatarRecord:
    g = torch.Generator().manual_seed(0)
    n, j = 50, 3
    gaussians = Gaussians(torch.randn(n, 3, generator=g), torch.randn(n, 4, generator=g),
                          torch.randn(n, 3, generator=g), torch.randn(n, generator=g), torch.randn(n, 4, 3, generator=g),
                          torch.randint(0, j, (n, 4), generator=g), torch.rand(n, 4, generator=g).softmax(-1))
    return AvatarRecord(gaussians=gaussians, joint_names=["root", "spine", "head"], joint_parents=[-1, 0, 1],
                        rest_matrices=np.tile(np.eye(4, dtype=np.float32), (j, 1, 1)),
                        joint_tails=np.arange(9, dtype=np.float32).reshape(3, 3),
                        tokens=torch.randn(8, 4, 4, generator=g) if tokens else None,
                        meta={"template": "anny", "resolution": 4, "generator": "test", "prompt": "a person", "seed": 3})


@pytest.mark.parametrize("with_tokens", [True, False])
def test_round_trip(tmp_path, with_tokens):
    rec = record(with_tokens)
    save_avatar(tmp_path / "a.safetensors", rec)
    back = load_avatar(tmp_path / "a.safetensors")
    for name, t in rec.gaussians.state_dict().items():
        assert torch.equal(getattr(back.gaussians, name), t), name
    assert back.joint_names == rec.joint_names and back.meta == rec.meta
    for k in ("joint_parents", "rest_matrices", "joint_tails"):
        np.testing.assert_array_equal(getattr(back, k), getattr(rec, k))
    assert (back.tokens is None) == (not with_tokens)
    if with_tokens:
        assert torch.equal(back.tokens, rec.tokens)
    assert not list(tmp_path.glob(".*tmp"))


def test_missing_keys_and_foreign_files_are_named(tmp_path):
    save_avatar(tmp_path / "a.safetensors", record())
    tensors = load_file(str(tmp_path / "a.safetensors"))
    del tensors["skeleton.joint_tails"], tensors["gaussians.sh"]
    meta = {"format": "genlca-avatar", "version": "1", "joint_names": json.dumps(["a", "b", "c"]), "meta": "{}"}
    save_file(tensors, str(tmp_path / "b.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match="missing arrays .*joint_tails"):
        load_avatar(tmp_path / "b.safetensors")
    tensors["skeleton.joint_tails"] = torch.zeros(3, 3)
    save_file(tensors, str(tmp_path / "c.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match=r"missing arrays \['sh'\]"):
        load_avatar(tmp_path / "c.safetensors")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "d.safetensors"))
    with pytest.raises(ValueError, match="format"):
        load_avatar(tmp_path / "d.safetensors")
    (tmp_path / "e.safetensors").write_bytes(b"nonsense")
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_avatar(tmp_path / "e.safetensors")
    with pytest.raises(ValueError, match="joint_tails"):
        AvatarRecord(record().gaussians, ["a"], [-1], np.eye(4)[None], np.zeros((2, 3)))
