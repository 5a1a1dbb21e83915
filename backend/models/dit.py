"""TokenMapDiT: a diffusion transformer over patches of a UV token map (after facebookresearch/DiT models.py).

Read top to bottom: the atlas positional encoding, embedders, the block (adaLN-zero self-attention,
cross-attention to condition tokens, MLP), the final layer, the model, then the presets.

- Patches: the (C, R, R) token map is cut into p × p patches (p = 4 at R = 64 -> T = 256 tokens).
- Position on the body, not only on the image: each patch gets the 2D sin-cos code of its grid cell
  plus a code of the mean 3D rest-pose anchor of its atlas texels plus an embedding of its majority
  body part (id 0 = outside the atlas). UV charts that touch in the image but not on the body (or vice
  versa) are told apart this way. The geometry comes from the TexelLayout and is stored as buffers, so a
  checkpoint carries it.
- Visibility: during training, patch tokens of invalid patches (`patch_valid` False) are replaced by a
  learnable MASK embedding right after the patch embedding (before the positional code, so the model
  still knows where the hole is). In eval mode `patch_valid` is ignored: at inference every patch
  counts as valid and the model generates the whole body.
- Conditions: the context for cross-attention is [a learned always-valid null token, projected text
  tokens, projected image tokens] with a key-padding mask (a dropped condition is all-masked, so the
  null token keeps attention defined); the pooled text vector joins the timestep in adaLN.

The model knows nothing about noise schedules (backend/sampling) or token statistics beyond storing the
per-channel normalisation the training set gave (`token_mean`, `token_std`, buffers in the checkpoint).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from backend.models.conditioning import ConvImageEncoder


@dataclasses.dataclass
class DiTConfig:
    resolution: int = 64          # R
    token_channels: int = 12      # C (explicit layout: colour, offset, opacity, scale, latent)
    patch_size: int = 4           # p
    hidden_size: int = 384        # D
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    text_dim: int = 384           # width of the text encoder's tokens (all-MiniLM-L6-v2: 384)
    image_dim: int = 256          # width of the image condition tokens
    num_parts: int = 15           # body parts of the template (+1 embedding for "outside the atlas")
    image_encoder: str = "conv"   # "conv": a small conv encoder over the reference crop, trained with the DiT;
                                  # "none": image tokens come from outside (e.g. the tokenizer's features)

    def __post_init__(self) -> None:
        if self.resolution % self.patch_size:
            raise ValueError(f"resolution {self.resolution} is not divisible by patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.image_encoder not in ("conv", "none"):
            raise ValueError(f"image_encoder must be 'conv' or 'none', got {self.image_encoder!r}")
        if self.hidden_size % 4:
            raise ValueError(f"hidden_size must be divisible by 4 for the 2D sin-cos code, got {self.hidden_size}")

    @property
    def grid(self) -> int:
        return self.resolution // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid ** 2


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


# ------------------------------------------------------------------------------ positional encoding
def sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    """pos (M,) -> (M, dim) sin-cos code (MAE/DiT)."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(dim: int, grid: int) -> np.ndarray:
    """(grid * grid, dim): half the channels code the row, half the column."""
    rows, cols = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64), indexing="ij")
    return np.concatenate([sincos_1d(dim // 2, rows), sincos_1d(dim // 2, cols)], axis=1)


def patch_geometry(layout: Any, patch_size: int) -> dict[str, torch.Tensor]:
    """From a TexelLayout: per patch (T = (R/p)^2, row-major) the mean rest-pose anchor of its atlas
    texels (T, 3) (zeros outside), its majority body part + 1 (T,) (0: no atlas texel) and its atlas
    fraction (T,)."""
    r, p = layout.resolution, patch_size
    g = r // p
    atlas = layout.atlas_mask.float().reshape(g, p, g, p).permute(0, 2, 1, 3).reshape(g * g, p * p)  # (T, p²)
    anchors = layout.anchors.float().reshape(g, p, g, p, 3).permute(0, 2, 1, 3, 4).reshape(g * g, p * p, 3)
    count = atlas.sum(1)  # (T,)
    mean_anchor = (anchors * atlas[..., None]).sum(1) / count.clamp_min(1)[:, None]  # (T, 3)
    parts = (layout.part_ids + 1).reshape(g, p, g, p).permute(0, 2, 1, 3).reshape(g * g, p * p)  # (T, p²)
    n_parts = int(parts.max()) + 1
    hist = F.one_hot(parts, n_parts).sum(1)  # (T, n_parts)
    hist[:, 0] = 0  # majority among atlas texels only
    major = torch.where(count > 0, hist.argmax(1), torch.zeros_like(count, dtype=torch.long))  # (T,)
    return {"patch_anchor": mean_anchor, "patch_part": major, "patch_atlas": count / (p * p)}


def synthetic_geometry(config: DiTConfig) -> dict[str, torch.Tensor]:
    """Geometry for a model built without a template (tests, benchmarks): a flat grid, every patch in
    the atlas, parts in horizontal bands."""
    g = config.grid
    rows, cols = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
    anchor = torch.stack([cols.float() / g, torch.zeros(g, g), 1.0 - rows.float() / g], -1).reshape(-1, 3)
    part = 1 + (rows.reshape(-1) * config.num_parts // g)
    return {"patch_anchor": anchor, "patch_part": part, "patch_atlas": torch.ones(g * g)}


# ------------------------------------------------------------------------------ embedders
class TimestepEmbedder(nn.Module):
    """Scalar t in [0, 1] -> (B, D) (DiT's frequency embedding; t scaled by 1000 for the frequencies)."""

    def __init__(self, hidden_size: int, frequency_size: int = 256) -> None:
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(nn.Linear(frequency_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    @staticmethod
    def frequency_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = 1000.0 * t[:, None].float() * freqs[None]  # (B, half)
        return torch.cat([torch.cos(args), torch.sin(args)], -1)  # (B, dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.frequency_embedding(t, self.frequency_size))  # (B, D)


class AtlasPositionEmbedder(nn.Module):
    """Per-patch code: 2D sin-cos of the grid cell + MLP(sin-cos of the mean 3D anchor) + part embedding."""

    def __init__(self, config: DiTConfig, geometry: dict[str, torch.Tensor]) -> None:
        super().__init__()
        d, t = config.hidden_size, config.num_patches
        for key, shape in (("patch_anchor", (t, 3)), ("patch_part", (t,)), ("patch_atlas", (t,))):
            if tuple(geometry[key].shape) != shape:
                raise ValueError(f"geometry {key}: expected shape {shape}, got {tuple(geometry[key].shape)}")
        self.register_buffer("grid_code", torch.from_numpy(sincos_2d(d, config.grid)).float())  # (T, D)
        self.register_buffer("patch_anchor", geometry["patch_anchor"].float())  # (T, 3)
        self.register_buffer("patch_part", geometry["patch_part"].long())  # (T,)
        self.register_buffer("patch_atlas", geometry["patch_atlas"].float())  # (T,)
        self.anchor_mlp = nn.Sequential(nn.Linear(3 * 32, d), nn.SiLU(), nn.Linear(d, d))
        self.part_embed = nn.Embedding(config.num_parts + 1, d)

    def forward(self) -> torch.Tensor:
        # anchors in metres: wavelengths from ~12 m down to ~3 cm tell body parts and neighbours apart
        a = self.patch_anchor  # (T, 3)
        freqs = torch.logspace(math.log10(0.5), math.log10(200.0), 16, device=a.device, dtype=a.dtype)  # (16,)
        ang = a[..., None] * freqs  # (T, 3, 16)
        code = torch.cat([torch.sin(ang), torch.cos(ang)], -1).reshape(a.shape[0], -1)  # (T, 96)
        return self.grid_code + self.anchor_mlp(code) + self.part_embed(self.patch_part)  # (T, D)


class PatchEmbed(nn.Module):
    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(config.token_channels, config.hidden_size, config.patch_size, config.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, T, D)


# ------------------------------------------------------------------------------ block
class Attention(nn.Module):
    """Multi-head attention; self-attention when `context` is None."""

    def __init__(self, dim: int, num_heads: int, context_dim: int | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim or dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        ctx = x if context is None else context  # (B, L, Dc)
        h = self.num_heads
        q = self.q(x).reshape(b, n, h, d // h).transpose(1, 2)  # (B, H, N, Dh)
        k, v = self.kv(ctx).reshape(b, ctx.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)  # 2 × (B, H, L, Dh)
        mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, L) True = attend
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, N, Dh)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))  # (B, N, D)


class DiTBlock(nn.Module):
    """adaLN-zero self-attention and MLP (DiT), with cross-attention to the condition tokens between them
    (pre-norm, output projection zero-initialised so that a fresh block is the identity)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm_cross = nn.LayerNorm(hidden_size, eps=1e-6)
        self.cross = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        hidden = int(hidden_size * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden_size, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, hidden_size))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)  # 6 × (B, D)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))  # (B, T, D)
        x = x + self.cross(self.norm_cross(x), context, context_mask)  # (B, T, D)
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))  # (B, T, D)
        return x


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)  # 2 × (B, D)
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (B, T, p² C)


# ------------------------------------------------------------------------------ the model
class TokenMapDiT(nn.Module):
    def __init__(self, config: DiTConfig, geometry: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.config = cfg = config
        d = cfg.hidden_size
        self.x_embedder = PatchEmbed(cfg)
        self.pos_embedder = AtlasPositionEmbedder(cfg, geometry if geometry is not None else synthetic_geometry(cfg))
        self.t_embedder = TimestepEmbedder(d)
        self.text_pool_embedder = nn.Sequential(nn.Linear(cfg.text_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.text_proj = nn.Linear(cfg.text_dim, d)
        self.image_proj = nn.Linear(cfg.image_dim, d)
        self.null_context = nn.Parameter(torch.zeros(1, 1, d))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.blocks = nn.ModuleList([DiTBlock(d, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth)])
        self.final_layer = FinalLayer(d, cfg.patch_size, cfg.token_channels)
        self.image_encoder = ConvImageEncoder(cfg.image_dim) if cfg.image_encoder == "conv" else None
        self.register_buffer("token_mean", torch.zeros(cfg.token_channels))
        self.register_buffer("token_std", torch.ones(cfg.token_channels))
        self.initialize_weights()

    def initialize_weights(self) -> None:
        def _basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        self.apply(_basic_init)
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.normal_(self.null_context, std=0.02)
        nn.init.normal_(self.pos_embedder.part_embed.weight, std=0.02)
        for block in self.blocks:  # adaLN-zero, and a zero cross-attention output
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
            nn.init.zeros_(block.cross.proj.weight)
            nn.init.zeros_(block.cross.proj.bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def encode_image(self, crops: torch.Tensor) -> torch.Tensor:
        """Reference crops (B, S, S, 3) uint8 -> image tokens (B, (S/16)², image_dim)."""
        if self.image_encoder is None:
            raise RuntimeError("this model takes image tokens from outside (image_encoder='none')")
        return self.image_encoder(crops)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, p² C) -> (B, C, R, R)."""
        c, p, g = self.config.token_channels, self.config.patch_size, self.config.grid
        x = x.reshape(x.shape[0], g, g, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, g * p, g * p)

    def embed_patches(self, x: torch.Tensor, patch_valid: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, R, R), patch_valid (B, T) bool or None -> (B, T, D) with MASK where invalid (training only)."""
        h = self.x_embedder(x)  # (B, T, D)
        if patch_valid is not None and self.training:
            h = torch.where(patch_valid[..., None], h, self.mask_token.to(h.dtype))  # (B, T, D)
        return h + self.pos_embedder()[None].to(h.dtype)  # (B, T, D)

    def forward(self, x: torch.Tensor, t: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor,
                text_pooled: torch.Tensor, image_tokens: torch.Tensor, image_mask: torch.Tensor,
                patch_valid: torch.Tensor | None = None) -> torch.Tensor:
        """Velocity of the normalised token map.

        x:            (B, C, R, R) noisy token map (normalised channels)
        t:            (B,) time in [0, 1] (1 = noise; backend/sampling/path.py)
        text_tokens:  (B, L, text_dim), text_mask (B, L) bool (True = a real token; all False = dropped)
        text_pooled:  (B, text_dim) (zeros when dropped)
        image_tokens: (B, Li, image_dim), image_mask (B, Li) bool
        patch_valid:  (B, T) bool, False = invalid patch -> MASK embedding (training only)
        returns       (B, C, R, R)
        """
        b = x.shape[0]
        h = self.embed_patches(x, patch_valid)  # (B, T, D)
        c = self.t_embedder(t) + self.text_pool_embedder(text_pooled)  # (B, D)
        context = torch.cat([self.null_context.expand(b, -1, -1), self.text_proj(text_tokens),
                             self.image_proj(image_tokens)], 1)  # (B, 1 + L + Li, D)
        context_mask = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=x.device), text_mask.bool(),
                                  image_mask.bool()], 1)  # (B, 1 + L + Li)
        for block in self.blocks:
            h = block(h, c, context, context_mask)  # (B, T, D)
        h = self.final_layer(h, c)  # (B, T, p² C)
        return self.unpatchify(h)  # (B, C, R, R)

    # token statistics (the training set's, stored in the checkpoint)
    def normalize(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, C, R, R) decoder tokens -> model space."""
        return (tokens - self.token_mean[:, None, None]) / self.token_std[:, None, None]

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, R, R) model space -> decoder tokens."""
        return x * self.token_std[:, None, None] + self.token_mean[:, None, None]


def patch_validity(visibility: torch.Tensor, atlas_mask: torch.Tensor, patch_size: int,
                   threshold: float = 0.5) -> torch.Tensor:
    """Which patches count as valid for the MASK embedding.

    visibility: (B, R, R) bool/uint8, atlas_mask (R, R) -> (B, T) bool.
    A patch is invalid when it holds atlas texels and fewer than `threshold` of them were visible; a patch
    with no atlas texel is valid (there is nothing unseen in it, its tokens are the constant background).
    """
    b, r, _ = visibility.shape
    p, g = patch_size, r // patch_size
    atlas = atlas_mask.bool().to(visibility.device)
    seen = (visibility.bool() & atlas).float().reshape(b, g, p, g, p).sum((2, 4))  # (B, g, g)
    total = atlas.float().reshape(g, p, g, p).sum((1, 3))  # (g, g)
    valid = (total == 0) | (seen >= threshold * total)  # (B, g, g)
    return valid.reshape(b, g * g)


# ------------------------------------------------------------------------------ presets
def DiT_tiny(**kw: Any) -> DiTConfig:
    return DiTConfig(**{"hidden_size": 128, "depth": 4, "num_heads": 4, **kw})


def DiT_small(**kw: Any) -> DiTConfig:
    return DiTConfig(**{"hidden_size": 256, "depth": 8, "num_heads": 4, **kw})


def DiT_base(**kw: Any) -> DiTConfig:
    return DiTConfig(**{"hidden_size": 768, "depth": 12, "num_heads": 12, **kw})


def DiT_large(**kw: Any) -> DiTConfig:
    return DiTConfig(**{"hidden_size": 1024, "depth": 24, "num_heads": 16, **kw})


DiT_models: dict[str, Callable[..., DiTConfig]] = {"tiny": DiT_tiny, "small": DiT_small, "base": DiT_base,
                                                   "large": DiT_large}


def build_dit(preset: str, geometry: dict[str, torch.Tensor] | None = None, **overrides: Any) -> TokenMapDiT:
    if preset not in DiT_models:
        raise ValueError(f"unknown DiT preset {preset!r}; expected one of {sorted(DiT_models)}")
    return TokenMapDiT(DiT_models[preset](**overrides), geometry)


def dit_from_checkpoint(ckpt: Any, use_ema: bool = True) -> TokenMapDiT:
    """A TokenMapDiT from a loaded `dit` Checkpoint (config from its metadata, geometry from its buffers)."""
    cfg = DiTConfig(**ckpt.config["model"])
    weights = ckpt.ema if (use_ema and ckpt.ema is not None) else ckpt.model
    geometry = {k: weights[f"pos_embedder.{k}"] for k in ("patch_anchor", "patch_part", "patch_atlas")}
    model = TokenMapDiT(cfg, geometry)
    model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in weights.items()})
    return model.eval()
