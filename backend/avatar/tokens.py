"""Structured token map -> rigged 3D Gaussians.

A token map `tokens[B, C, R, R]` lies on the template's UV atlas (`TexelLayout`). `TokenDecoder` is a
texel-wise MLP (1×1 convolutions) that maps each texel's token to K Gaussians:

- offset: `pattern_k * texel_size + tanh(o) * max_offset`, in the anchor's tangent frame (t, b, n),
- rotation: a unit quaternion relative to the tangent frame, composed to template space,
- log-scale: `log(texel_size * base_scale / sqrt(K)) + scale_range * tanh(s)`, the normal axis thinner,
- opacity logit and SH coefficients (degree 0..3, 3DGS layout; `sh[:, 0]` is DC).

The output layer starts at zero and a linear skip routes token channels 0..2 to the DC colour, so a
freshly built decoder (`TokenDecoder(cfg, seed=...)`) is deterministic and turns `placeholder_tokens`
into a plausible coloured body: the stand-in generator until the diffusion model exists.
Gaussians are ordered texel-major: Gaussian m * K + k is the k-th of valid texel m.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn as nn

from backend.avatar.gaussians import SH_C0, Gaussians, sh_coeff_count
from backend.avatar.skinning import matrix_to_quat, quat_multiply
from backend.avatar.uv_layout import TexelLayout


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

    def __post_init__(self) -> None:
        if self.token_channels < 3:
            raise ValueError(f"token_channels must be >= 3 (channels 0..2 carry colour), got {self.token_channels}")
        if not 1 <= self.gaussians_per_texel <= 16:
            raise ValueError(f"gaussians_per_texel must be in 1..16, got {self.gaussians_per_texel}")
        sh_coeff_count(self.sh_degree)

    @property
    def channels_per_gaussian(self) -> int:
        return 3 + 4 + 3 + 1 + 3 * sh_coeff_count(self.sh_degree)


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
    local = base_local[None] * size[:, None, None] + torch.tanh(raw[..., 0:3]) * cfg.max_offset  # (B, M, K, 3)
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
    from backend.avatar import body_parts

    cfg = TokenDecoderConfig(token_channels=3, gaussians_per_texel=k, sh_degree=sh_degree, hidden_layers=0)
    decoder = TokenDecoder(cfg)
    parts = layout.part_ids.clamp_min(0)  # (R, R)
    rgb = torch.from_numpy(body_parts.PART_COLORS)[parts].permute(2, 0, 1)  # (3, R, R)
    with torch.no_grad():
        g = decode((rgb - 0.5) / SH_C0 * layout.atlas_mask, layout, decoder)
    assert isinstance(g, Gaussians)
    return g
