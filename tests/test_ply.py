"""3DGS PLY export/import: exact round trip, the independent plyfile reader agrees, clear errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from plyfile import PlyData

from backend.avatar.gaussians import Gaussians
from backend.avatar.ply import PROPERTIES, load_ply, save_ply


def scene(n: int = 257, degree: int = 3, seed: int = 0) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    return Gaussians(torch.randn(n, 3, generator=g), torch.randn(n, 4, generator=g), torch.randn(n, 3, generator=g),
                     torch.randn(n, generator=g), torch.randn(n, (degree + 1) ** 2, 3, generator=g))


def test_round_trip_is_bitwise(tmp_path):
    g = scene()
    save_ply(tmp_path / "a.ply", g)
    back = load_ply(tmp_path / "a.ply")
    for name in ("means", "rotations", "log_scales", "opacity_logits", "sh"):
        assert torch.equal(getattr(back, name), getattr(g, name)), name
    assert not list(tmp_path.glob(".*tmp"))  # the temporary file is gone


def test_lower_degree_pads_zeros_and_sh_degree_argument(tmp_path):
    g = scene(degree=1)
    save_ply(tmp_path / "a.ply", g)
    full = load_ply(tmp_path / "a.ply")
    assert full.sh.shape == (257, 16, 3) and torch.equal(full.sh[:, :4], g.sh) and not full.sh[:, 4:].any()
    assert torch.equal(load_ply(tmp_path / "a.ply", sh_degree=1).sh, g.sh)


def test_plyfile_reads_names_order_and_values(tmp_path):
    g = scene(n=10)
    save_ply(tmp_path / "a.ply", g)
    ply = PlyData.read(str(tmp_path / "a.ply"))
    v = ply["vertex"]
    assert [p.name for p in v.properties] == PROPERTIES and len(PROPERTIES) == 62
    assert ply.text is False and ply.byte_order == "<"
    np.testing.assert_array_equal(np.stack([v["x"], v["y"], v["z"]], -1), g.means.numpy())
    np.testing.assert_array_equal(v["opacity"], g.opacity_logits.numpy())
    np.testing.assert_array_equal(np.stack([v[f"rot_{i}"] for i in range(4)], -1), g.rotations.numpy())
    np.testing.assert_array_equal(np.stack([v[f"scale_{i}"] for i in range(3)], -1), g.log_scales.numpy())
    np.testing.assert_array_equal(np.stack([v[f"f_dc_{i}"] for i in range(3)], -1), g.sh[:, 0].numpy())
    # channel-major f_rest: f_rest_0..14 are red's 15 coefficients, f_rest_15 is green's first
    np.testing.assert_array_equal(v["f_rest_0"], g.sh[:, 1, 0].numpy())
    np.testing.assert_array_equal(v["f_rest_14"], g.sh[:, 15, 0].numpy())
    np.testing.assert_array_equal(v["f_rest_15"], g.sh[:, 1, 1].numpy())
    np.testing.assert_array_equal(v["f_rest_44"], g.sh[:, 15, 2].numpy())
    assert not np.stack([v["nx"], v["ny"], v["nz"]]).any()


def test_truncated_and_foreign_files_raise_clear_errors(tmp_path):
    save_ply(tmp_path / "a.ply", scene(n=20))
    data = (tmp_path / "a.ply").read_bytes()
    (tmp_path / "short.ply").write_bytes(data[:-100])
    with pytest.raises(ValueError, match="truncated"):
        load_ply(tmp_path / "short.ply")
    (tmp_path / "text.ply").write_bytes(b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nend_header\n0\n")
    with pytest.raises(ValueError, match="binary_little_endian"):
        load_ply(tmp_path / "text.ply")
    (tmp_path / "mesh.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 1\nproperty float x\n"
                                        b"property float y\nproperty float z\nend_header\n" + bytes(12))
    with pytest.raises(ValueError, match="missing 3DGS properties"):
        load_ply(tmp_path / "mesh.ply")
    (tmp_path / "junk.ply").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="not a PLY"):
        load_ply(tmp_path / "junk.ply")
