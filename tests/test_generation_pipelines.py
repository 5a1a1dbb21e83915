"""Generation and editing pipelines on a tiny random model package (fast, CPU, fixed seeds)."""
from __future__ import annotations

import pytest
import torch

from backend.avatar.body_parts import REGION_NAMES
from backend.avatar.tokens import decode
from backend.pipelines.edit import edit_mask, edit_text, regenerate_auto, regenerate_region
from backend.pipelines.generate import PhotoObservation, SamplerSettings, condition, generate_tokens
from backend.pipelines.model_bundle import ModelError, load_bundle
from backend.sampling.recipe import sample_tokens
from backend.sampling.solvers import SamplingCancelled
from tests.model_package import make_tiny_package


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return load_bundle(make_tiny_package(tmp_path_factory.mktemp("pkg")))


def test_bundle_reports_its_model(bundle):
    d = bundle.describe()
    assert d["name"] == "tiny-random" and len(d["sha256"]) == 12 and d["resolution"] == 32
    assert d["token_channels"] == 12 and d["gaussians_per_texel"] == 2 and "text" in d["supports"]


def test_generate_is_deterministic_and_reports_every_step(bundle):
    events = []
    settings = SamplerSettings(steps=4, guidance=3.0)
    a, info = generate_tokens(bundle, "a man in a red jacket", seed=3, settings=settings,
                              progress=lambda s, i, n: events.append((s, i, n)))
    b, _ = generate_tokens(bundle, "a man in a red jacket", seed=3, settings=settings)
    c, _ = generate_tokens(bundle, "a man in a red jacket", seed=4, settings=settings)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert events == [("sample", i, 4) for i in range(1, 5)]
    assert a.shape == (12, 32, 32) and not a[:, ~bundle.layout.atlas_mask].any()
    assert info["used"] == ["text"] and info["seed"] == 3


def test_generate_is_the_shared_sampling_recipe(bundle):
    """generate and evaluation sample through backend.sampling.recipe: for one condition, one seed and one
    set of settings, the batch recipe gives generate's token map to the bit."""
    settings = SamplerSettings(steps=3, guidance=2.5, method="heun", shift=2.0)
    got, _ = generate_tokens(bundle, "a man in a red jacket", seed=9, settings=settings)
    cond = condition(bundle, "a man in a red jacket", None)
    with torch.no_grad():
        want = sample_tokens(bundle.dit, cond, settings.steps, settings.method, settings.shift, settings.guidance,
                             1.0, 9, bundle.layout.atlas_mask)
    assert want.shape == (1, 12, 32, 32) and torch.equal(got, want[0])


def test_prompt_changes_the_sample(bundle):
    s = SamplerSettings(steps=3, guidance=4.0)
    a, _ = generate_tokens(bundle, "red shirt", seed=1, settings=s)
    b, _ = generate_tokens(bundle, "blue skirt", seed=1, settings=s)
    assert not torch.equal(a, b)


def test_cancel_stops_between_steps(bundle):
    calls = []
    with pytest.raises(SamplingCancelled):
        generate_tokens(bundle, "x", seed=0, settings=SamplerSettings(steps=10),
                        progress=lambda s, i, n: calls.append(i), cancel=lambda: len(calls) >= 2)
    assert calls == [1, 2]


def test_region_edit_keeps_every_other_texel_and_gaussian_bit_identical(bundle):
    src, _ = generate_tokens(bundle, "a woman", seed=0, settings=SamplerSettings(steps=3))
    out, info = regenerate_region(bundle, src, "torso", "a green hoodie", seed=5, settings=SamplerSettings(steps=3))
    torso = bundle.layout.region_mask("torso")
    assert torch.equal(out[:, ~torso], src[:, ~torso]) and not torch.equal(out[:, torso], src[:, torso])
    assert info["regenerated_texels"] == int(torso.sum())
    with torch.no_grad():
        g_src, g_out = decode(src, bundle.layout, bundle.decoder), decode(out, bundle.layout, bundle.decoder)
    k = bundle.decoder.config.gaussians_per_texel
    other = (~torso).reshape(-1)[bundle.layout.valid_indices].repeat_interleave(k)
    assert torch.equal(g_src.means[other], g_out.means[other]) and torch.equal(g_src.sh[other], g_out.sh[other])
    with pytest.raises(ValueError, match="unknown region"):
        regenerate_region(bundle, src, "tail")


def test_text_edit_strength(bundle):
    src, _ = generate_tokens(bundle, "a woman", seed=0, settings=SamplerSettings(steps=4))
    same, _ = edit_text(bundle, src, "a man", strength=0.0)
    assert torch.equal(same, src)
    small, info = edit_text(bundle, src, "a man", strength=0.25, seed=1, settings=SamplerSettings(steps=8))
    large, _ = edit_text(bundle, src, "a man", strength=1.0, seed=1, settings=SamplerSettings(steps=8))
    assert info["steps"] == 2
    assert (small - src).abs().mean() < (large - src).abs().mean()  # less strength stays closer
    inverted, _ = edit_text(bundle, src, "a man", strength=0.5, invert=True, settings=SamplerSettings(steps=4))
    assert torch.isfinite(inverted).all() and not torch.equal(inverted, src)
    with pytest.raises(ValueError, match="token map has shape"):
        edit_text(bundle, torch.zeros(12, 64, 64), "x")


def test_otsu_threshold_splits_a_bimodal_map_between_its_modes_and_edit_mask_takes_it(bundle):
    from backend.pipelines.edit import otsu_threshold

    gen = torch.Generator().manual_seed(0)
    kept, changed = torch.rand(500, generator=gen) * 0.2, 0.6 + torch.rand(200, generator=gen) * 0.4
    level = otsu_threshold(torch.cat([kept, changed]))
    assert 0.2 <= level <= 0.6  # every level in the empty gap separates the classes perfectly
    src, _ = generate_tokens(bundle, "a woman in a red top", seed=0, settings=SamplerSettings(steps=3))
    raw, heat = edit_mask(bundle, src, "a woman in a blue top", "a woman in a red top", dilate=0, threshold="otsu",
                          grow=None)
    atlas = bundle.layout.atlas_mask
    assert torch.equal(raw, (heat >= otsu_threshold(heat[atlas])) & atlas)
    with pytest.raises(ValueError, match="threshold"):
        edit_mask(bundle, src, "x", "y", threshold="median")


def test_edit_mask_is_inside_the_atlas_deterministic_and_empty_for_the_same_prompt(bundle):
    src, _ = generate_tokens(bundle, "a woman in a red top", seed=0, settings=SamplerSettings(steps=3))
    atlas = bundle.layout.atlas_mask
    mask, heat = edit_mask(bundle, src, "a woman in a blue top", "a woman in a red top", grow=None)
    again, heat2 = edit_mask(bundle, src, "a woman in a blue top", "a woman in a red top", grow=None)
    assert mask.shape == atlas.shape and mask.dtype == torch.bool
    assert torch.equal(mask, again) and torch.equal(heat, heat2)
    assert mask.any() and not mask[~atlas].any() and not heat[~atlas].any()
    assert float(heat[atlas].max()) == 1.0 and float(heat[atlas].min()) == 0.0  # min-max over the atlas
    # without dilation the mask is exactly the threshold rule; dilation only adds, and stays in the atlas
    raw, h = edit_mask(bundle, src, "a woman in a blue top", "a woman in a red top", dilate=0, grow=None)
    assert torch.equal(raw, (h >= 0.5) & atlas) and bool((mask | ~raw).all()) and mask.sum() > raw.sum()
    # snapping adds every body region at least half masked, whole, and nothing else
    snapped, _ = edit_mask(bundle, src, "a woman in a blue top", "a woman in a red top", snap=0.5, grow=None)
    regions = {r: bundle.layout.region_mask(r) for r in REGION_NAMES}
    whole = [r for r, m in regions.items() if (mask & m).sum() >= 0.5 * m.sum()]
    expected = mask | (bundle.layout.region_mask(whole) if whole else torch.zeros_like(mask))
    assert torch.equal(snapped, expected)
    # the default grows the mask over the garment the words name (a top: torso and arms) and leaves the map
    grown, h3 = edit_mask(bundle, src, "a woman in a blue top", "a woman in a red top")
    assert torch.equal(h3, heat) and not grown[~bundle.layout.region_mask(["torso", "arms"])].any()
    # the same prompt on both sides: the two velocities are the same numbers, so the map is 0 everywhere
    same, zero = edit_mask(bundle, src, "a woman in a red top", "a woman in a red top")
    assert not same.any() and not zero.any()


def test_auto_region_keeps_every_texel_outside_its_mask_bit_identical(bundle):
    src, _ = generate_tokens(bundle, "a woman in a red top", seed=0, settings=SamplerSettings(steps=3))
    settings = SamplerSettings(steps=3)
    out, info = regenerate_auto(bundle, src, "a woman in a blue top", "a woman in a red top", seed=2,
                                settings=settings)
    mask, _ = edit_mask(bundle, src, "a woman in a blue top", "a woman in a red top")
    assert info["masked_texels"] == int(mask.sum()) > 0 and bool((bundle.layout.atlas_mask & ~mask).any())
    assert info["masked_fraction"] == pytest.approx(int(mask.sum()) / int(bundle.layout.atlas_mask.sum()))
    assert torch.equal(out[:, ~mask], src[:, ~mask]) and not torch.equal(out[:, mask], src[:, mask])
    with torch.no_grad():
        g_src, g_out = decode(src, bundle.layout, bundle.decoder), decode(out, bundle.layout, bundle.decoder)
    k = bundle.decoder.config.gaussians_per_texel
    other = (~mask).reshape(-1)[bundle.layout.valid_indices].repeat_interleave(k)
    assert torch.equal(g_src.sh[other], g_out.sh[other]) and torch.equal(g_src.means[other], g_out.means[other])
    same, info_same = regenerate_auto(bundle, src, "a woman in a red top", "a woman in a red top", settings=settings)
    assert torch.equal(same, src) and info_same["masked_fraction"] == 0.0
    with pytest.raises(ValueError, match="needs a prompt"):
        regenerate_auto(bundle, src, "  ", "a woman")


@pytest.fixture(scope="module")
def photo_bundles(tmp_path_factory):
    """The tiny package with a tokenizer, pinning the colour (the default) and every channel."""
    root = tmp_path_factory.mktemp("photo")
    return {pins: load_bundle(make_tiny_package(root / pins, tokenizer=True, photo_channels=pins))
            for pins in ("colour", "all")}


def _photo(bundle):
    """A PhotoObservation whose tokens are a sample of the model (in range) seen on the torso and head."""
    import numpy as np

    seen, _ = generate_tokens(bundle, "a person", seed=9, settings=SamplerSettings(steps=2))
    visible = bundle.layout.region_mask(["torso", "head"])
    return PhotoObservation(crop=np.full((64, 64, 3), 128, np.uint8), tokens=seen, visible=visible)


def test_photo_keeps_the_pinned_channels_of_seen_texels_exactly(photo_bundles):
    """colour (the default): channels 0..2 of the seen texels equal the photo's tokens bit for bit; their
    geometry channels and every channel of unseen texels are sampled (differ from the photo's)."""
    bundle = photo_bundles["colour"]
    assert bundle.photo_pins == "colour" and bundle.photo_channels == (0, 1, 2)
    photo = _photo(bundle)
    visible = photo.visible
    out, info = generate_tokens(bundle, "", seed=2, settings=SamplerSettings(steps=3), photo=photo)
    colour, geometry = list(bundle.photo_channels), list(range(3, 12))
    assert torch.equal(out[colour][:, visible], photo.tokens[colour][:, visible])
    for c in geometry:  # every unpinned channel of the seen texels is the DiT's, not the photo's
        assert not torch.equal(out[c][visible], photo.tokens[c][visible]), c
    unseen = bundle.layout.atlas_mask & ~visible
    assert not (out[:, unseen] == photo.tokens[:, unseen]).all(0).any()  # no unseen texel is copied
    assert not out[:, ~bundle.layout.atlas_mask].any()
    assert info["used"] == ["image", "tokenizer"] and info["kept_texels"] == int(visible.sum())
    assert info["kept_channels"] == [0, 1, 2]
    again, _ = generate_tokens(bundle, "", seed=2, settings=SamplerSettings(steps=3), photo=photo)
    assert torch.equal(out, again)


def test_photo_pinning_all_channels_keeps_seen_texels_exactly(photo_bundles):
    bundle = photo_bundles["all"]
    photo = _photo(bundle)
    visible = photo.visible
    out, info = generate_tokens(bundle, "", seed=2, settings=SamplerSettings(steps=3), photo=photo)
    assert torch.equal(out[:, visible], photo.tokens[:, visible])
    unseen = bundle.layout.atlas_mask & ~visible
    assert not (out[:, unseen] == photo.tokens[:, unseen]).all(0).any()
    assert info["kept_channels"] == list(range(12)) and info["kept_texels"] == int(visible.sum())


def test_photo_tokens_need_a_package_with_a_tokenizer(bundle):
    import numpy as np

    photo = PhotoObservation(crop=np.full((64, 64, 3), 128, np.uint8), tokens=torch.zeros(12, 32, 32),
                             visible=bundle.layout.region_mask("torso"))
    with pytest.raises(ValueError, match="pins no token channels"):
        generate_tokens(bundle, "", seed=0, settings=SamplerSettings(steps=1), photo=photo)
    photo.tokens = torch.zeros(12, 16, 16)
    with pytest.raises(ValueError, match=r"expected photo tokens \(12, 32, 32\)"):
        generate_tokens(bundle, "", seed=0, settings=SamplerSettings(steps=1), photo=photo)


def test_colour_channels_decode_to_colour_only(photo_bundles):
    """The channels "colour" pins change the decoded SH colour and nothing else (the decoder's routing)."""
    bundle = photo_bundles["colour"]
    base, _ = generate_tokens(bundle, "a person", seed=4, settings=SamplerSettings(steps=2))
    moved = base.clone()
    moved[list(bundle.photo_channels)] += 0.5 * bundle.layout.atlas_mask
    with torch.no_grad():
        a, b = decode(base, bundle.layout, bundle.decoder), decode(moved, bundle.layout, bundle.decoder)
    assert not torch.equal(a.sh, b.sh)
    for name in ("means", "rotations", "log_scales", "opacity_logits"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_missing_truncated_or_foreign_checkpoints_are_named(tmp_path):
    with pytest.raises(ModelError, match="no diffusion checkpoint"):
        load_bundle(tmp_path / "nothing")
    pkg = make_tiny_package(tmp_path / "pkg")
    data = (pkg / "dit.safetensors").read_bytes()
    (pkg / "dit.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="truncated or damaged"):
        load_bundle(pkg)
    from backend.models.checkpoint import Checkpoint, save_checkpoint

    save_checkpoint(tmp_path / "tok.safetensors", Checkpoint("tokenizer", {}, {"w": torch.zeros(1)}))
    with pytest.raises(ModelError, match="expected 'dit'"):
        load_bundle(tmp_path / "tok.safetensors")


def test_package_command_makes_a_servable_model_from_a_training_checkpoint(tmp_path):
    """genlca-train package: EMA weights become the model, optimizer state and RNG are dropped."""
    import dataclasses

    from backend.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
    from training.cli import main

    pkg = make_tiny_package(tmp_path / "src")
    tiny = load_checkpoint(pkg / "dit.safetensors")
    ema = {k: v + 0.5 if v.is_floating_point() and k.startswith("final_layer") else v for k, v in tiny.model.items()}
    opt_model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(opt_model.parameters())
    opt_model(torch.ones(1, 2)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path / "train.safetensors", dataclasses.replace(
        tiny, model={k: torch.zeros_like(v) if v.is_floating_point() else v for k, v in tiny.model.items()},
        ema=ema, optimizer=opt.state_dict(), train={"step": 123}))
    assert main(["package", "--dit", str(tmp_path / "train.safetensors"), "--out", str(tmp_path / "pkg"),
                 "--name", "studio-v1", "--note", "made by a test"]) == 0
    out = load_checkpoint(tmp_path / "pkg" / "dit.safetensors", "dit")
    assert out.optimizer is None and not out.rng and out.ema is None and out.train == {"step": 123}
    assert torch.equal(out.model["final_layer.linear.weight"], ema["final_layer.linear.weight"])
    assert out.name == "studio-v1" and out.note == "made by a test"
    assert out.config["source_checkpoint"]["weights"] == "ema"
    bundle = load_bundle(tmp_path / "pkg")
    assert bundle.describe()["name"] == "studio-v1"
    assert main(["package", "--dit", str(tmp_path / "train.safetensors"), "--out", str(tmp_path / "live"),
                 "--weights", "live"]) == 0
    live = load_checkpoint(tmp_path / "live" / "dit.safetensors", "dit")
    assert live.config["source_checkpoint"]["weights"] == "live" and not live.model["final_layer.linear.weight"].any()
    assert main(["package", "--dit", str(tmp_path / "nothing.safetensors"), "--out", str(tmp_path / "x")]) == 2


def test_package_in_float16_halves_the_matrices_and_loads_as_float32(tmp_path):
    """--dtype float16: weight matrices stored as float16 (each within half an fp16 ulp, 2**-11 relative),
    vectors and the atlas geometry exact; the loaded model is float32 and samples deterministically."""
    from backend.models.checkpoint import load_checkpoint
    from training.cli import main
    from training.package_model import HALF_MIN_ELEMENTS

    pkg = make_tiny_package(tmp_path / "src")
    assert main(["package", "--dit", str(pkg / "dit.safetensors"), "--out", str(tmp_path / "half"),
                 "--dtype", "float16", "--weights", "live"]) == 0
    full = load_checkpoint(pkg / "dit.safetensors", "dit").model
    half = load_checkpoint(tmp_path / "half" / "dit.safetensors", "dit")
    assert half.config["source_checkpoint"]["dtype"] == "float16"
    halved = 0
    for k, v in full.items():
        h = half.model[k]
        if v.dtype == torch.float32 and v.dim() >= 2 and v.numel() >= HALF_MIN_ELEMENTS:
            halved += 1
            assert h.dtype == torch.float16
            assert torch.all((h.float() - v).abs() <= v.abs() * 2.0 ** -11 + 2.0 ** -25)  # fp16 rounding
        else:
            assert torch.equal(h, v)
    assert halved > 0
    assert (tmp_path / "half" / "dit.safetensors").stat().st_size < 0.75 * (pkg / "dit.safetensors").stat().st_size
    bundle = load_bundle(tmp_path / "half")
    assert all(p.dtype == torch.float32 for p in bundle.dit.parameters())
    from backend.pipelines.generate import SamplerSettings, generate_tokens

    a, _ = generate_tokens(bundle, "a red top", seed=3, settings=SamplerSettings(steps=2, guidance=2.0))
    b, _ = generate_tokens(bundle, "a red top", seed=3, settings=SamplerSettings(steps=2, guidance=2.0))
    assert torch.equal(a, b) and torch.isfinite(a).all()


def test_package_photo_channels_round_trip(tmp_path):
    """--photo-channels is stored in the packaged tokenizer, read back by load_bundle and described; the
    default is colour; a package's decoder for the DiT's samples is the DiT's own (the tokenizer's equals it);
    a tokenizer whose decoder was fine-tuned is refused by name."""
    from backend.models.checkpoint import load_checkpoint, save_checkpoint
    from training.cli import main
    from tests.model_package import make_tiny_tokenizer

    src = make_tiny_package(tmp_path / "src")
    tok = make_tiny_tokenizer(tmp_path / "tok.safetensors")
    plain = load_bundle(src)
    assert plain.photo_pins is None and plain.photo_channels == () and plain.describe()["photo_pins"] is None
    for flag, pins, channels in ((None, "colour", [0, 1, 2]), ("colour", "colour", [0, 1, 2]),
                                 ("all", "all", list(range(12)))):
        out = tmp_path / f"pkg-{flag}"
        argv = ["package", "--dit", str(src / "dit.safetensors"), "--tokenizer", str(tok), "--out", str(out),
                "--dtype", "float16"] + (["--photo-channels", flag] if flag else [])
        assert main(argv) == 0
        assert load_checkpoint(out / "tokenizer.safetensors", "tokenizer").config["photo_channels"] == pins
        b = load_bundle(out)
        d = b.describe()
        assert d["tokenizer"] and d["photo_pins"] == pins and d["photo_channels"] == channels
        assert b.tokenizer is not None and b.decoder is not b.tokenizer.decoder
        probe = torch.randn(1, 12, 32, 32, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            assert torch.equal(b.decoder(probe), plain.decoder(probe))  # the DiT's decoder, unchanged
            assert torch.equal(b.tokenizer.decoder(probe), plain.decoder(probe))  # the same function
    assert main(["package", "--dit", str(src / "dit.safetensors"), "--out", str(tmp_path / "no-tok"),
                 "--photo-channels", "all"]) == 2  # nothing to pin without a tokenizer
    # a tokenizer packaged before --photo-channels existed pinned every channel
    legacy = make_tiny_package(tmp_path / "legacy", tokenizer=True, photo_channels=None)
    assert load_bundle(legacy).photo_pins == "all"
    # a fine-tuned decoder does not decode the DiT's tokens: refused by name
    ckpt = load_checkpoint(tok, "tokenizer")
    ckpt.model["decoder.head.weight"] = ckpt.model["decoder.head.weight"] + 0.01
    save_checkpoint(tmp_path / "tuned.safetensors", ckpt)
    assert main(["package", "--dit", str(src / "dit.safetensors"), "--tokenizer", str(tmp_path / "tuned.safetensors"),
                 "--out", str(tmp_path / "tuned")]) == 2
    with pytest.raises(ModelError, match="do not decode like the DiT's.*head is not zero"):
        load_bundle(tmp_path / "tuned")
