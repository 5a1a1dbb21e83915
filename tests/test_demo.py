"""`make demo` (backend.demo) end to end at a small size: every artefact it promises is written and sane."""
from __future__ import annotations

import json

import numpy as np

from backend import demo
from bridge.files.png import read_png


def test_demo_writes_frames_sheets_exports_and_summary(tmp_path):
    summary = demo.run(tmp_path, prompt="a person", seed=1, size=64, views=2, frames=2)
    assert summary["joints"] == 104 and summary["gaussians"] == 637 * 2  # the tiny test model: R = 32, K = 2
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    for name in ("turntable_000.png", "turntable_001.png", "animation_000.png", "animation_001.png"):
        rgba = read_png(tmp_path / name)
        assert rgba.shape == (64, 64, 4)
        assert 0.02 < (rgba[..., 3] > 128).mean() < 0.7, name          # an avatar in frame
    first, last = read_png(tmp_path / "animation_000.png"), read_png(tmp_path / "animation_001.png")
    assert np.abs(first.astype(int) - last.astype(int)).max() > 100      # the pose changed the frame
    assert read_png(tmp_path / "turntable_sheet.png").shape == (64, 128, 4)
    ply = tmp_path / f"genlca-{summary['avatar_id']}.ply"
    assert ply.read_bytes().startswith(b"ply\nformat binary_little_endian 1.0\n")
    assert (tmp_path / f"genlca-{summary['avatar_id']}.safetensors").stat().st_size > 100_000
    assert not list(tmp_path.glob("*.tmp"))
