"""training/evaluate.py: every metric on a known input gives a known number; the attribute classifier
reads ground truth back; `genlca-train eval` runs end to end on a tiny checkpoint."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from training import evaluate as ev


def test_hole_fraction_and_psnr_known_values():
    alpha = torch.zeros(4, 4)
    alpha[:, :2] = 1.0
    sil = torch.zeros(4, 4, dtype=torch.bool)
    sil[:2] = True  # 8 pixels, 4 of them with alpha 0
    assert ev.hole_fraction(alpha, sil) == 0.5
    assert math.isnan(ev.hole_fraction(alpha, torch.zeros(4, 4, dtype=torch.bool)))
    a = torch.zeros(4, 4, 3)
    b = a + 0.1
    rmse, psnr = ev.masked_rmse_psnr(a, b, sil)
    assert rmse == pytest.approx(0.1) and psnr == pytest.approx(20.0)


def test_frechet_distance_and_diversity_known_values():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 4))
    assert ev.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    shift = np.array([1.0, 2.0, 0.0, 0.0])
    assert ev.frechet_distance(x, x + shift) == pytest.approx(5.0, abs=1e-6)  # |d|² with equal covariances
    # 1-D: N(0, 1) vs N(0, 4): (1 - 2)² = 1
    a, b = np.array([[-1.0], [1.0]]), np.array([[-2.0], [2.0]])
    assert ev.frechet_distance(a, b) == pytest.approx(2.0 + 8.0 - 2 * 4.0)
    c = torch.zeros(3, 10, 3)
    c[1] += 0.2
    c[2] += 0.4
    assert ev.diversity(c) == pytest.approx((0.2 + 0.4 + 0.2) / 3)
    assert ev.diversity(c[:1]) == 0.0


def test_nearest_name_and_attribute_hits():
    from training.data import vocabulary as vocab

    assert ev.nearest_name(np.array(vocab.COLOURS["teal"]) + 0.02, vocab.COLOURS) == "teal"
    hits = ev.attribute_hits({"upper_colour": "red", "hair_colour": "black"},
                             {"upper_colour": "red", "hair_colour": "blonde", "hair_style": "bald"})
    assert hits == {"upper_colour": True}


def test_classifier_reads_ground_truth_region_colours():
    from backend.avatar.template import load_template
    from backend.avatar.tokens import TokenDecoderConfig, encode_explicit
    from backend.avatar.uv_layout import load_layout
    from training.data import vocabulary as vocab

    layout = load_layout(load_template("anny"), 32)
    regions = ev.RegionTexels.from_layout(layout)
    cfg = TokenDecoderConfig(token_channels=12, token_layout="explicit", gaussians_per_texel=1, sh_degree=0)
    rgb = torch.full((3, 32, 32), 0.5)
    for mask, colour in ((layout.region_mask("torso"), vocab.COLOURS["green"]),
                         (layout.region_mask("legs"), vocab.COLOURS["navy"]),
                         (layout.region_mask("feet"), vocab.COLOURS["white"]),
                         (layout.region_mask("head"), vocab.SKIN_TONES["tan"]),
                         (regions.masks["crown"], vocab.HAIR_COLOURS["blonde"])):
        rgb[:, mask] = torch.tensor(colour)[:, None]
    tokens = encode_explicit(layout, cfg, rgb)
    got = ev.classify_attributes(tokens, regions)
    assert got == {"upper_colour": "green", "lower_colour": "navy", "shoes_colour": "white", "hair_colour": "blonde"}
    f = ev.region_features(tokens, regions)
    assert f.shape == (18,) and np.allclose(f[3:6], vocab.COLOURS["green"], atol=1e-3)


def test_eval_cli_end_to_end_on_a_tiny_checkpoint(tmp_path):
    from tests.test_train_diffusion import make_shards, tiny_config
    from training import train_diffusion as td
    from training.cli import main

    shards = make_shards(tmp_path / "shards", n=8)
    td.train(tiny_config(shards, tmp_path / "run", steps=2, global_batch=4))
    rc = main(["eval", "--checkpoints", str(tmp_path / "run" / "last.safetensors"), "--shards", str(shards),
               "--splits", "train", "--max-people", "2", "--samples", "2", "--steps", "2", "--image-size", "48",
               "--out", str(tmp_path / "e.json"), "--markdown", str(tmp_path / "e.md"), "--threads", "1"])
    assert rc == 0
    res = json.loads((tmp_path / "e.json").read_text())
    row = res["run (aware)"]
    assert row["people"] == 2 and 0.0 <= row["hole_fraction"]["back"] <= 1.0
    assert row["diversity"] > 0 and math.isfinite(row["frechet_region_colour"])
    assert "ground truth" in res and "| run (aware) |" in (tmp_path / "e.md").read_text()
