"""bridge.files.avatar (numpy only, for the add-on) against the backend's torch writers and readers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.avatar.avatar_file import AvatarRecord, load_avatar, save_avatar
from backend.avatar.gaussians import Gaussians
from backend.avatar.ply import load_ply, save_ply
from bridge.files.avatar import (Z_UP_TO_Y_UP, AvatarFile, AvatarFileError, read_avatar, read_avatar_file, read_ply,
                                 sh_basis, sh_rotation, write_avatar, write_ply)


def _gaussians(n: int = 50, degree: int = 3, seed: int = 0) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, 4, generator=g)
    return Gaussians(means=torch.randn(n, 3, generator=g), rotations=q / q.norm(dim=1, keepdim=True),
                     log_scales=torch.randn(n, 3, generator=g) - 4, opacity_logits=torch.randn(n, generator=g),
                     sh=torch.randn(n, (degree + 1) ** 2, 3, generator=g),
                     skin_indices=torch.randint(0, 3, (n, 2), generator=g),
                     skin_weights=torch.full((n, 2), 0.5))


def _record(n: int = 50) -> AvatarRecord:
    rest = np.tile(np.eye(4, dtype=np.float32), (3, 1, 1))
    return AvatarRecord(gaussians=_gaussians(n), joint_names=["root", "spine", "head"], joint_parents=[-1, 0, 1],
                        rest_matrices=rest, joint_tails=np.ones((3, 3), np.float32), meta={"prompt": "a person"})


def test_avatar_safetensors_both_ways(tmp_path):
    rec = _record()
    save_avatar(tmp_path / "a.safetensors", rec)
    av = read_avatar(tmp_path / "a.safetensors")
    assert av.rigged and av.joint_names == ["root", "spine", "head"] and av.meta["prompt"] == "a person"
    np.testing.assert_array_equal(av.arrays["means"], rec.gaussians.means.numpy())
    assert av.arrays["skin_indices"].dtype == np.uint16  # wire dtype, whatever the file stored
    write_avatar(tmp_path / "b.safetensors", av)
    back = load_avatar(tmp_path / "b.safetensors")
    assert torch.equal(back.gaussians.sh, rec.gaussians.sh) and back.joint_names == rec.joint_names
    assert not list(tmp_path.glob(".*tmp"))


def test_ply_both_ways_and_header_states_axes(tmp_path):
    g = _gaussians(degree=3)
    save_ply(tmp_path / "a.ply", g)
    av = read_ply(tmp_path / "a.ply")
    assert not av.rigged and av.count == 50
    np.testing.assert_allclose(av.arrays["sh"], g.sh.numpy())
    write_ply(tmp_path / "b.ply", av.arrays)
    assert b"comment genlca axes=z-up units=m" in (tmp_path / "b.ply").read_bytes()[:300]
    back = load_ply(tmp_path / "b.ply")
    assert torch.allclose(back.means, g.means) and torch.allclose(back.sh, g.sh)


def test_y_up_export_turns_positions_and_keeps_view_dependent_colour(tmp_path):
    g = _gaussians(degree=3)
    arrays = {k: v.numpy() for k, v in g.state_dict().items()}
    write_ply(tmp_path / "y.ply", arrays, y_up=True)
    raw = (tmp_path / "y.ply").read_bytes()
    assert b"comment genlca axes=y-up units=m" in raw[:300]
    (tmp_path / "viewer.ply").write_bytes(raw.replace(b"axes=y-up", b"axes=?????", 1))
    turned = load_ply(tmp_path / "viewer.ply")  # as a viewer that knows nothing of our comment reads it
    np.testing.assert_allclose(turned.means.numpy(), arrays["means"] @ Z_UP_TO_Y_UP.T, atol=1e-6)
    # the colour seen along d before equals the colour seen along R d after, for every band
    dirs = np.random.default_rng(0).normal(size=(20, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    before = np.einsum("ms,nsc->nmc", sh_basis(dirs, 3), arrays["sh"])
    after = np.einsum("ms,nsc->nmc", sh_basis(dirs @ Z_UP_TO_Y_UP.T, 3), turned.sh.numpy())
    np.testing.assert_allclose(after, before, atol=1e-4)  # float32 storage of O(1) coefficients
    # our own reader reads the axes comment and turns it back
    again = read_ply(tmp_path / "y.ply")
    np.testing.assert_allclose(again.arrays["means"], arrays["means"], atol=1e-5)
    np.testing.assert_allclose(again.arrays["sh"], arrays["sh"], atol=1e-4)


def test_sh_rotation_is_orthogonal_and_identity_for_identity():
    for degree in (1, 2, 3):
        d = sh_rotation(Z_UP_TO_Y_UP, degree)
        np.testing.assert_allclose(d @ d.T, np.eye((degree + 1) ** 2), atol=1e-10)
        np.testing.assert_allclose(sh_rotation(np.eye(3), degree), np.eye((degree + 1) ** 2), atol=1e-10)


def test_bad_files_get_named_errors(tmp_path):
    save_avatar(tmp_path / "a.safetensors", _record())
    data = (tmp_path / "a.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data[:-40])
    with pytest.raises(AvatarFileError, match="truncated or damaged"):
        read_avatar(tmp_path / "t.safetensors")
    (tmp_path / "x.obj").write_bytes(b"v 0 0 0\n")
    with pytest.raises(AvatarFileError, match="expected a .safetensors avatar or a .ply"):
        read_avatar_file(tmp_path / "x.obj")
    (tmp_path / "p.ply").write_bytes(b"ply\nformat ascii 1.0\nelement vertex 1\nend_header\n")
    with pytest.raises(AvatarFileError, match="binary_little_endian"):
        read_ply(tmp_path / "p.ply")
    bad = read_avatar(tmp_path / "a.safetensors")
    bad.arrays["skin_indices"] = bad.arrays["skin_indices"].copy()
    bad.arrays["skin_indices"][0, 0] = 30000
    write_avatar(tmp_path / "s.safetensors", bad)
    with pytest.raises(AvatarFileError, match="skin_indices reach joint 30000"):
        read_avatar(tmp_path / "s.safetensors")
    nan = AvatarFile(dict(bad.arrays), bad.joint_names, {})
    nan.arrays["skin_indices"] = np.zeros_like(bad.arrays["skin_indices"])
    nan.arrays["means"] = bad.arrays["means"].copy()
    nan.arrays["means"][3, 1] = np.nan
    write_avatar(tmp_path / "n.safetensors", nan)
    with pytest.raises(AvatarFileError, match="means contains NaN"):
        read_avatar(tmp_path / "n.safetensors")
