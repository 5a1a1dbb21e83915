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
    from tests.diffusion_shards import make_shards, tiny_config
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
    # every miss is counted once as "truth -> predicted" under its attribute
    accuracy, errors = row["attribute_accuracy"]["seen"], row["attribute_errors"]
    for attr, acc in accuracy.items():
        assert sum(errors.get(attr, {}).values()) == round((1 - acc) * 2)
        assert all(" -> " in e and e.split(" -> ")[0] != e.split(" -> ")[1] for e in errors.get(attr, {}))


def _painted_avatar(layout, regions, colours):
    """Ground-truth tokens with each region painted a known colour, and its decoded Gaussians."""
    from backend.avatar.tokens import TokenDecoder, TokenDecoderConfig, decode, encode_explicit

    cfg = TokenDecoderConfig(token_channels=12, token_layout="explicit", gaussians_per_texel=2, sh_degree=0)
    r = layout.resolution
    rgb = torch.full((3, r, r), 0.5)
    for mask, colour in colours:
        rgb[:, mask] = torch.tensor(colour, dtype=torch.float32)[:, None]
    tokens = encode_explicit(layout, cfg, rgb, opacity=torch.full((r, r), 0.99))
    with torch.no_grad():
        return tokens, decode(tokens, layout, TokenDecoder(cfg).eval())


def test_visible_texels_hide_the_back_of_the_body_behind_the_front():
    from backend.avatar.template import load_template
    from backend.avatar.uv_layout import load_layout

    layout = load_layout(load_template("anny"), 32)
    front = ev.attribute_cameras(96)["front"]
    normals = layout.gather("frames")[:, :, 2].numpy()
    torso = layout.region_mask("torso").reshape(-1)[layout.valid_indices].numpy()
    back_facing = torso & (normals[:, 1] > 0.8)   # torso texels whose surface faces +y, away from the camera
    assert back_facing.sum() > 5
    # facing test off: the depth test alone (the torso is ~0.2 m deep, the tolerance 0.05 m) hides them
    px, visible = ev.visible_texels(layout, front, min_facing=-1.0)
    assert not visible[back_facing].any() and visible[torso & (normals[:, 1] < -0.8)].mean() > 0.9
    assert (px[visible] >= 0).all() and (px[visible] < 96).all()


def test_rendered_attribute_classifier_reads_painted_colours_from_front_and_back_renders():
    """Regions painted with vocabulary colours, rendered with the CPU renderer over a grey background:
    the median un-composited colour of the projected texels is within the renderer's blending of the
    painted colour, nearer to it than to any other name (the closest names: 0.25 apart in RGB among garment
    colours, 0.17 among hair colours, so a blend error under half of that cannot change the answer)."""
    from backend.avatar.template import load_template
    from backend.avatar.uv_layout import load_layout
    from backend.render import RenderOptions, render
    from training.data import vocabulary as vocab

    layout = load_layout(load_template("anny"), 32)
    regions = ev.RegionTexels.from_layout(layout)
    _, gaussians = _painted_avatar(layout, regions, (
        (layout.region_mask("torso"), vocab.COLOURS["teal"]), (layout.region_mask("legs"), vocab.COLOURS["purple"]),
        (layout.region_mask("feet"), vocab.COLOURS["red"]), (layout.region_mask("head"), vocab.SKIN_TONES["tan"]),
        (regions.masks["crown"], vocab.HAIR_COLOURS["grey"])))
    background = (0.5, 0.5, 0.5)
    views = []
    for camera in ev.attribute_cameras(96).values():
        with torch.no_grad():
            out = render(gaussians, camera, options=RenderOptions(background=background, backend="torch"))
        views.append(ev.RenderedView(out.rgb[0].numpy(), out.alpha[0, ..., 0].numpy(), camera, background))
    got = ev.classify_rendered_attributes(views, layout, regions)
    assert got == {"upper_colour": "teal", "lower_colour": "purple", "shoes_colour": "red", "hair_colour": "grey"}
    # uint8 frames as the wire's render replies carry them read the same
    as_bytes = [ev.RenderedView((v.rgb * 255 + 0.5).astype(np.uint8), (v.alpha * 255 + 0.5).astype(np.uint8),
                                v.camera, background) for v in views]
    assert ev.classify_rendered_attributes(as_bytes, layout, regions) == got
    # a view that shows nothing classifies nothing
    empty = ev.RenderedView(np.zeros((96, 96, 3)), np.zeros((96, 96)), views[0].camera)
    assert ev.classify_rendered_attributes([empty], layout, regions) == dict.fromkeys(ev.ATTRIBUTE_REGIONS)
    with pytest.raises(ValueError, match="expected rgb"):
        ev.classify_rendered_attributes([ev.RenderedView(np.zeros((8, 8, 3)), np.zeros((8, 8)), views[0].camera)],
                                        layout, regions)
