"""Structured token map -> rigged 3D Gaussians.

A token map `tokens[B, C, R, R]` lies on the template's UV atlas (`TexelLayout`). `TokenDecoder` is a
texel-wise MLP (1×1 convolutions) that maps each texel's token to K Gaussians:

- offset: `pattern_k * texel_size + tanh(o) * max_offset`, in the anchor's tangent frame (t, b, n),
- rotation: a unit quaternion relative to the tangent frame, composed to template space,
- log-scale: `log(texel_size * base_scale / sqrt(K)) + scale_range * tanh(s)`, the normal axis thinner,
- opacity logit and SH coefficients (degree 0..3, 3DGS layout; `sh[:, 0]` is DC).

The output layer starts at zero and a linear skip routes token channels to Gaussian parameters, so a
freshly built decoder (`TokenDecoder(cfg, seed=...)`) is deterministic. Two token layouts:

- "latent": only channels 0..2 are routed (to the DC colour); the rest is free (a colour-only decoder,
  as for the body-part figure, `part_colored_gaussians`).
- "explicit" (the default; the model chain): the first `EXPLICIT_CHANNELS` channels have fixed meanings that the
  skip routes exactly, so a token map can be written from known texel parameters (`encode_explicit`,
  used by the synthetic generator for ground truth) and decoded back without training:
      0..2  colour as the SH DC term, (rgb - 0.5) / SH_C0
      3..5  offset from the anchor in its tangent frame (t, b, n): atanh(offset / reach)
      6     opacity: logit(opacity) - logit(init_opacity)
      7..9  log-scale: atanh((log_scale - base) / scale_range)
  Channels 10.. are latent (the decoder's MLP may use them). `reach` is per texel, by body region
  (`region_reach`): long hair and skirts need offsets of tens of centimetres, fingers a few millimetres.
  The tokenizer trains the MLP residual on top of this exact routing.

Gaussians are ordered texel-major: Gaussian m * K + k is the k-th of valid texel m.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn as nn

from backend.avatar import body_parts
from backend.avatar.body_parts import REGION_NAMES
from backend.avatar.gaussians import SH_C0, Gaussians, sh_coeff_count
from backend.avatar.uv_layout import TexelLayout
from bridge.geometry.rotations import matrix_to_quat, quat_multiply


@dataclasses.dataclass
class TokenDecoderConfig:
    token_channels: int = 32      # C
    gaussians_per_texel: int = 4  # K
    sh_degree: int = 3
    hidden_channels: int = 128
    hidden_layers: int = 2
    max_offset: float = 0.03      # metres, bound of the learned offset along each frame axis
    base_scale: float = 0.75      # Gaussian std relative to texel_size / sqrt(K)
    normal_scale: float = 0.35    # normal-axis std relative to the tangent-plane std (flat splats)
    scale_range: float = 2.5      # learned log-scale stays within base ± scale_range
    init_opacity: float = 0.95
    token_layout: str = "explicit"  # "explicit" | "latent" (see the module docstring)
    # explicit layout: reach of the offset per edit region, metres (hair beyond the scalp, skirts off the legs)
    region_reach: dict[str, float] = dataclasses.field(default_factory=lambda: dict(DEFAULT_REGION_REACH))

    def __post_init__(self) -> None:
        if self.token_channels < 3:
            raise ValueError(f"token_channels must be >= 3 (channels 0..2 carry colour), got {self.token_channels}")
        if self.token_layout not in ("latent", "explicit"):
            raise ValueError(f"token_layout must be 'latent' or 'explicit', got {self.token_layout!r}")
        if self.token_layout == "explicit" and self.token_channels < EXPLICIT_CHANNELS:
            raise ValueError(f"the explicit token layout needs token_channels >= {EXPLICIT_CHANNELS}, "
                             f"got {self.token_channels}")
        unknown = sorted(set(self.region_reach) - set(REGION_NAMES))
        if unknown:
            raise ValueError(f"region_reach: unknown regions {unknown}; expected some of {list(REGION_NAMES)}")
        if any(not 0 < v <= 2.0 for v in self.region_reach.values()):
            raise ValueError(f"region_reach values must be in (0, 2] metres, got {self.region_reach}")
        if not 1 <= self.gaussians_per_texel <= 16:
            raise ValueError(f"gaussians_per_texel must be in 1..16, got {self.gaussians_per_texel}")
        sh_coeff_count(self.sh_degree)

    @property
    def channels_per_gaussian(self) -> int:
        return 3 + 4 + 3 + 1 + 3 * sh_coeff_count(self.sh_degree)


EXPLICIT_CHANNELS = 10
COLOUR_CHANNELS = (0, 1, 2)  # the SH-DC colour, in both layouts (the channels a photo's colour pins)
DEFAULT_REGION_REACH = {"head": 0.45, "torso": 0.30, "arms": 0.12, "hands": 0.03, "legs": 0.40, "feet": 0.05}


def _texel_pattern(k: int) -> torch.Tensor:
    """(K, 2) fixed sub-texel positions in units of the texel edge (sunflower spiral, centred)."""
    if k == 1:
        return torch.zeros(1, 2)
    i = torch.arange(k, dtype=torch.float64) + 0.5
    r = torch.sqrt(i / k) * 0.35
    a = i * math.pi * (3.0 - math.sqrt(5.0))
    return torch.stack([r * torch.cos(a), r * torch.sin(a)], -1).float()


class TokenDecoder(nn.Module):
    def __init__(self, config: TokenDecoderConfig | None = None, seed: int = 0) -> None:
        super().__init__()
        self.config = cfg = config or TokenDecoderConfig()
        gen = torch.Generator().manual_seed(seed)
        layers: list[nn.Module] = []
        c_in = cfg.token_channels
        for _ in range(cfg.hidden_layers):
            layers += [nn.Conv2d(c_in, cfg.hidden_channels, 1), nn.GELU()]
            c_in = cfg.hidden_channels
        self.mlp = nn.Sequential(*layers)
        out = cfg.gaussians_per_texel * cfg.channels_per_gaussian
        self.head = nn.Conv2d(c_in, out, 1)
        self.skip = nn.Conv2d(cfg.token_channels, out, 1, bias=False)
        self.register_buffer("pattern", _texel_pattern(cfg.gaussians_per_texel), persistent=False)
        self._init_weights(gen)

    def _init_weights(self, gen: torch.Generator) -> None:
        with torch.no_grad():
            for m in self.mlp:
                if isinstance(m, nn.Conv2d):
                    bound = 1.0 / math.sqrt(m.in_channels)
                    m.weight.copy_(torch.empty_like(m.weight).uniform_(-bound, bound, generator=gen))
                    m.bias.zero_()
            self.head.weight.zero_()
            self.head.bias.zero_()
            self.skip.weight.zero_()
            cfg = self.config
            per = cfg.channels_per_gaussian
            p = logit(cfg.init_opacity)
            for k in range(cfg.gaussians_per_texel):
                o = k * per
                self.head.bias[o + 3] = 3.0  # quaternion w: atanh-free identity after normalisation
                self.head.bias[o + 10] = p
                for c in range(3):  # DC colour = token channel c
                    self.skip.weight[o + 11 + c, c, 0, 0] = 1.0
                if cfg.token_layout == "explicit":
                    for c in range(3):  # offset (3..5) and log-scale (7..9) raw values = token channels
                        self.skip.weight[o + c, 3 + c, 0, 0] = 1.0
                        self.skip.weight[o + 7 + c, 7 + c, 0, 0] = 1.0
                    self.skip.weight[o + 10, 6, 0, 0] = 1.0  # opacity logit offset

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, C, R, R) -> raw per-texel parameters (B, K, P, R, R)."""
        b, c, r, _ = tokens.shape
        h = self.mlp(tokens)  # (B, H, R, R)
        raw = self.head(h) + self.skip(tokens)  # (B, K * P, R, R)
        return raw.reshape(b, self.config.gaussians_per_texel, self.config.channels_per_gaussian, r, r)


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def decode(tokens: torch.Tensor, layout: TexelLayout, decoder: TokenDecoder) -> Gaussians | list[Gaussians]:
    """tokens (C, R, R) -> Gaussians, or (B, C, R, R) -> list of B Gaussians; canonical template space, rigged."""
    cfg = decoder.config
    given = tuple(tokens.shape)
    single = tokens.ndim == 3
    if single:
        tokens = tokens[None]
    r = layout.resolution
    if tokens.ndim != 4 or tokens.shape[1] != cfg.token_channels or tuple(tokens.shape[2:]) != (r, r):
        raise ValueError(f"expected tokens of shape (B, {cfg.token_channels}, {r}, {r}) or "
                         f"({cfg.token_channels}, {r}, {r}), got {given}")
    if not bool(torch.isfinite(tokens).all()):
        raise ValueError("token map contains NaN or inf")
    device, dtype = tokens.device, tokens.dtype
    raw = decoder(tokens)  # (B, K, P, R, R)
    b, k, p = raw.shape[:3]
    valid = layout.valid_indices.to(device)  # (M,)
    raw = raw.reshape(b, k, p, r * r)[..., valid].permute(0, 3, 1, 2)  # (B, M, K, P)
    m = raw.shape[1]
    anchors = layout.gather("anchors").to(device, dtype)  # (M, 3)
    frames = layout.gather("frames").to(device, dtype)  # (M, 3, 3) columns t, b, n
    size = layout.gather("texel_size").to(device, dtype).clamp_min(1e-5)  # (M,)
    frame_q = matrix_to_quat(frames)  # (M, 4)

    pattern = decoder.pattern.to(device, dtype)  # (K, 2)
    base_local = torch.cat([pattern, torch.zeros(k, 1, device=device, dtype=dtype)], -1)  # (K, 3)
    reach = texel_reach(layout, cfg).to(device, dtype)[:, None, None]  # (M, 1, 1)
    local = base_local[None] * size[:, None, None] + torch.tanh(raw[..., 0:3]) * reach  # (B, M, K, 3)
    means = anchors[:, None] + torch.einsum("mij,bmkj->bmki", frames, local)  # (B, M, K, 3)
    q_local = raw[..., 3:7]
    q_local = q_local / q_local.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    rotations = quat_multiply(frame_q[None, :, None].expand_as(q_local), q_local)  # (B, M, K, 4)
    base = torch.log(size * cfg.base_scale / math.sqrt(k))  # (M,)
    base3 = base[:, None, None] + torch.tensor([0.0, 0.0, math.log(cfg.normal_scale)], device=device, dtype=dtype)
    log_scales = base3 + cfg.scale_range * torch.tanh(raw[..., 7:10])  # (B, M, K, 3)
    opacity = raw[..., 10]  # (B, M, K)
    s = sh_coeff_count(cfg.sh_degree)
    sh = raw[..., 11:11 + 3 * s].reshape(b, m, k, s, 3)  # (B, M, K, S, 3), DC first

    skin_idx = layout.gather("skin_indices").to(device)  # (M, 8)
    skin_w = layout.gather("skin_weights").to(device, dtype)
    out = []
    for i in range(b):
        out.append(Gaussians(
            means=means[i].reshape(m * k, 3), rotations=rotations[i].reshape(m * k, 4),
            log_scales=log_scales[i].reshape(m * k, 3), opacity_logits=opacity[i].reshape(m * k),
            sh=sh[i].reshape(m * k, s, 3),
            skin_indices=skin_idx.repeat_interleave(k, 0), skin_weights=skin_w.repeat_interleave(k, 0),
        ))
    return out[0] if single else out


def texel_reach(layout: TexelLayout, cfg: TokenDecoderConfig) -> torch.Tensor:
    """(M,) offset reach per valid texel: `max_offset` everywhere for the latent layout, the region's
    reach for the explicit one."""
    if cfg.token_layout != "explicit":
        return torch.full((layout.num_valid,), cfg.max_offset)
    reach = torch.full((layout.resolution, layout.resolution), cfg.max_offset)
    for region, value in cfg.region_reach.items():
        reach[layout.region_mask(region)] = value
    return reach.reshape(-1)[layout.valid_indices]


def encode_explicit(layout: TexelLayout, cfg: TokenDecoderConfig, rgb: torch.Tensor,
                    offset: torch.Tensor | None = None, opacity: torch.Tensor | None = None,
                    log_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Known texel parameters -> an explicit-layout token map (C, R, R) that a fresh decoder turns back
    into them (the inverse of the routing in `decode`; latent channels are zero, outside the atlas zero).

    rgb:       (3, R, R) colour in [0, 1]
    offset:    (3, R, R) metres in the anchor's tangent frame (t, b, n); clipped to 99.9 % of the reach
    opacity:   (R, R) in (0, 1)
    log_scale: (3, R, R) natural-log standard deviations (t, b, n); clipped to the decoder's range
    """
    if cfg.token_layout != "explicit":
        raise ValueError("encode_explicit needs a decoder config with token_layout='explicit'")
    r = layout.resolution
    if tuple(rgb.shape) != (3, r, r):
        raise ValueError(f"expected rgb of shape (3, {r}, {r}), got {tuple(rgb.shape)}")
    tokens = torch.zeros(cfg.token_channels, r, r)
    tokens[0:3] = (rgb.float() - 0.5) / SH_C0
    flat_valid = layout.valid_indices
    if offset is not None:
        reach = torch.full((r * r,), cfg.max_offset)
        reach[flat_valid] = texel_reach(layout, cfg)
        ratio = (offset.float().reshape(3, r * r) / reach).clamp(-0.999, 0.999)
        tokens[3:6] = torch.atanh(ratio).reshape(3, r, r)
    if opacity is not None:
        o = opacity.float().clamp(1e-4, 1 - 1e-4)
        tokens[6] = torch.log(o / (1 - o)) - logit(cfg.init_opacity)
    if log_scale is not None:
        k = cfg.gaussians_per_texel
        size = layout.texel_size.clamp_min(1e-5)
        base = torch.log(size * cfg.base_scale / math.sqrt(k))  # (R, R)
        base3 = base[None] + torch.tensor([0.0, 0.0, math.log(cfg.normal_scale)])[:, None, None]
        ratio = ((log_scale.float() - base3) / cfg.scale_range).clamp(-0.999, 0.999)
        tokens[7:10] = torch.atanh(ratio)
    return tokens * layout.atlas_mask.to(tokens.dtype)


def gaussian_texel_index(layout: TexelLayout, k: int) -> torch.Tensor:
    """(M * K,) flat texel index r * R + c of each decoded Gaussian (texel-major order)."""
    return layout.valid_indices.repeat_interleave(k)


# ------------------------------------------------------------------ placeholders and docs helpers
_SKIN_TONES = torch.tensor([[0.96, 0.80, 0.69], [0.88, 0.67, 0.52], [0.78, 0.57, 0.42], [0.55, 0.38, 0.26],
                            [0.36, 0.24, 0.16]])


def _smooth_noise(c: int, r: int, gen: torch.Generator, cells: int = 8) -> torch.Tensor:
    coarse = torch.randn(1, c, cells, cells, generator=gen)
    return torch.nn.functional.interpolate(coarse, size=(r, r), mode="bicubic", align_corners=False)[0]


def placeholder_tokens(layout: TexelLayout, channels: int = 32, seed: int = 0, batch: int | None = None) -> torch.Tensor:
    """A seeded token map that the freshly initialised decoder turns into a clothed-looking body:
    skin on head/neck/arms/hands, a shirt on the torso, trousers on the legs, shoes on the feet, with
    smooth low-frequency variation. Channels 3.. carry smooth noise. (C, R, R), or (B, C, R, R)."""
    if batch is not None:
        return torch.stack([placeholder_tokens(layout, channels, seed + i) for i in range(batch)])
    gen = torch.Generator().manual_seed(seed)
    r = layout.resolution
    skin = _SKIN_TONES[torch.randint(len(_SKIN_TONES), (1,), generator=gen)].reshape(3)
    shirt, trousers, shoes = torch.rand(3, 3, generator=gen) * torch.tensor([[0.9], [0.6], [0.35]])
    region_colour = {"head": skin, "arms": skin, "hands": skin, "torso": shirt, "legs": trousers, "feet": shoes}
    rgb = torch.zeros(3, r, r)
    for region, colour in region_colour.items():
        mask = layout.region_mask(region)
        rgb[:, mask] = colour[:, None]
    tokens = 0.5 * _smooth_noise(channels, r, gen)
    tokens[:3] = (rgb - 0.5) / SH_C0 + 0.15 * tokens[:3]
    return tokens * layout.atlas_mask.to(tokens.dtype)


def part_colored_gaussians(layout: TexelLayout, k: int = 1, sh_degree: int = 0) -> Gaussians:
    """Rigged Gaussians on the anchors, coloured by body part (for the docs turntable)."""
    cfg = TokenDecoderConfig(token_channels=3, gaussians_per_texel=k, sh_degree=sh_degree, hidden_layers=0,
                             token_layout="latent")
    decoder = TokenDecoder(cfg)
    parts = layout.part_ids.clamp_min(0)  # (R, R)
    rgb = torch.from_numpy(body_parts.PART_COLORS)[parts].permute(2, 0, 1)  # (3, R, R)
    with torch.no_grad():
        g = decode((rgb - 0.5) / SH_C0 * layout.atlas_mask, layout, decoder)
    assert isinstance(g, Gaussians)
    return g
