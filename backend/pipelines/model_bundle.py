"""The model a service runs: a diffusion checkpoint and what it needs, resolved from one name or path.

A *model package* is a folder holding `dit.safetensors` (the TokenMapDiT, config in its metadata) and,
optionally, `tokenizer.safetensors` (the feed-forward reconstruction model, for photo -> avatar). Every
dimension comes from the checkpoints: token-map resolution and channels from the DiT's config, the
token decoder (K Gaussians per texel, SH degree, layout) from the token source recorded at training
time (`config["token_source"]["decoder_config"]`); the text encoder from the DiT's config.

The decoder is the one the DiT's tokens were made for. A DiT trained on ground-truth explicit token maps
decodes through the exact routing of that config; a tokenizer beside it must decode the same way (trained
with its decoder frozen: head weight zero, same routing), else its tokens could not be mixed with the DiT's
and the package is refused. A DiT trained on a tokenized library (no decoder config in its token source)
decodes through the tokenizer's (possibly fine-tuned) decoder.

Which token channels a photo pins (`photo_channels`, written by `genlca-train package --photo-channels`
into the tokenizer checkpoint's config): "colour" (the channels the explicit layout routes to the SH-DC
colour: what a tokenizer recovers reliably) or "all". `bundle.photo_channels` holds the indices.

    bundle = load_bundle("default")            # $GENLCA_MODEL, else checkpoints/genlca-small in the repository
    bundle = load_bundle("/models/my-studio")  # a folder, or a dit .safetensors file
    bundle.describe()                          # name, version, sha256 prefix: for hello and every reply
"""
from __future__ import annotations

import dataclasses
import os
import threading
from pathlib import Path
from typing import Any

import torch

from backend.avatar.skinning import Skeleton
from backend.avatar.template import load_template
from backend.avatar.tokens import COLOUR_CHANNELS, TokenDecoder, TokenDecoderConfig
from backend.avatar.uv_layout import load_layout
from backend.config import ConfigError, from_dict
from backend.models.checkpoint import CheckpointError, load_model
from backend.models.conditioning import load_text_encoder
from backend.models.dit import dit_from_checkpoint
from backend.models.tokenizer import CHECKPOINT_KIND, tokenizer_from_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[2]
CHECKPOINTS = REPO_ROOT / "checkpoints"
DEFAULT_MODEL = "genlca-small"  # the shipped package (README, "The shipped model")
PHOTO_CHANNELS = ("colour", "all")  # what `genlca-train package --photo-channels` may store
LEGACY_PHOTO_CHANNELS = "all"       # a tokenizer packaged before the choice existed pinned every channel


class ModelError(RuntimeError):
    """The model cannot be loaded: missing, truncated, of another version, or inconsistent."""


def resolve_model_path(name: str | os.PathLike) -> Path:
    """"default" ($GENLCA_MODEL if set, else the shipped package), a package name under checkpoints/,
    a package folder, or a dit .safetensors file."""
    text = str(name)
    if text in ("", "default"):
        text = os.environ.get("GENLCA_MODEL") or DEFAULT_MODEL
    path = Path(text).expanduser()
    if not path.exists() and (CHECKPOINTS / text).exists():
        path = CHECKPOINTS / text
    if path.is_dir():
        path = path / "dit.safetensors"
    if not path.is_file():
        known = sorted(p.name for p in CHECKPOINTS.iterdir() if (p / "dit.safetensors").is_file()) \
            if CHECKPOINTS.is_dir() else []
        raise ModelError(f"no diffusion checkpoint at {path} (model {str(name)!r}); packaged models: "
                         f"{known or 'none'}. Train one with `genlca-train diffusion` (README, 'Retraining').")
    return path


@dataclasses.dataclass
class ModelBundle:
    name: str
    path: Path
    dit: Any                  # TokenMapDiT (eval, EMA weights)
    decoder: Any              # TokenDecoder
    layout: Any               # TexelLayout at the DiT's resolution
    template: Any             # BodyTemplate
    skeleton: Any             # Skeleton
    text_encoder: Any         # conditioning.TextEncoder
    tokenizer: Any | None     # Tokenizer or None
    sha256: str
    config: dict[str, Any]
    note: str = ""
    photo_pins: str | None = None               # "colour" | "all" with a tokenizer, else None
    photo_channels: tuple[int, ...] = ()        # token channels a photo's observed texels pin
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    @property
    def resolution(self) -> int:
        return int(self.dit.config.resolution)

    @property
    def supports(self) -> list[str]:
        """What this model can condition on and do (the add-on enables its controls from this)."""
        out = ["text", "seed", "steps", "guidance", "text_edit", "region_edit"]
        if self.dit.image_encoder is not None or self.tokenizer is not None:
            out.append("image")
        return out

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": str(self.config.get("version", "1")), "sha256": self.sha256[:12],
                "resolution": self.resolution, "token_channels": int(self.dit.config.token_channels),
                "gaussians_per_texel": int(self.decoder.config.gaussians_per_texel),
                "sh_degree": int(self.decoder.config.sh_degree), "template": self.template.name,
                "tokenizer": self.tokenizer is not None, "photo_pins": self.photo_pins,
                "photo_channels": list(self.photo_channels), "supports": self.supports}


def photo_channel_indices(cfg: Any, pins: str) -> tuple[int, ...]:
    """"colour" -> the channels both token layouts route to the SH-DC colour; "all" -> every channel of cfg."""
    if pins == "all":
        return tuple(range(int(cfg.token_channels)))
    if pins == "colour":
        return COLOUR_CHANNELS
    raise ValueError(f"photo_channels must be one of {PHOTO_CHANNELS}, got {pins!r}")


# decoder config fields that do not change what a token decodes to when the MLP head is zero
_HIDDEN_FIELDS = ("hidden_channels", "hidden_layers")


def decoding_difference(decoder: Any, reference: Any) -> str | None:
    """None when `decoder` decodes every token map exactly as `reference`, a fresh decoder whose MLP head
    is zero (the explicit routing); else what differs. Exact: the output is head bias + skip(tokens)."""
    for field in dataclasses.fields(reference.config):
        if field.name in _HIDDEN_FIELDS:
            continue
        name = field.name
        a, b = getattr(decoder.config, name), getattr(reference.config, name)
        if a != b:
            return f"decoder config {name} is {a!r}, the DiT's is {b!r}"
    if bool(reference.head.weight.any()):
        raise ValueError("the reference decoder must be a fresh one (head weight zero)")
    if bool(decoder.head.weight.any()):
        return "its decoder's MLP head is not zero (the decoder was fine-tuned)"
    for name in ("head.bias", "skip.weight"):
        if not torch.equal(decoder.state_dict()[name].float(), reference.state_dict()[name].float()):
            return f"its decoder's {name} differs from the explicit routing"
    return None


def load_bundle(name: str | os.PathLike = "default", device: str = "cpu", text_encoder: str | None = None) -> ModelBundle:
    """Load and check a model package (see the module docstring). Raises ModelError naming the problem."""

    path = resolve_model_path(name)
    try:
        dit, ckpt = load_model(path, "dit", dit_from_checkpoint, device=device)
    except CheckpointError as exc:
        raise ModelError(str(exc)) from None
    template = load_template(ckpt.config.get("template", "anny"))
    layout = load_layout(template, int(dit.config.resolution))
    source = ckpt.config.get("token_source") or {}
    try:
        dec_cfg = from_dict(source.get("decoder_config") or {"token_channels": int(dit.config.token_channels),
                                                              "token_layout": "explicit"}, TokenDecoderConfig)
    except (ConfigError, ValueError) as exc:
        raise ModelError(f"{path}: token_source.decoder_config is not a valid decoder config ({exc})") from None
    if dec_cfg.token_channels != dit.config.token_channels:
        raise ModelError(f"{path}: the DiT makes {dit.config.token_channels} token channels, its decoder config "
                         f"expects {dec_cfg.token_channels}")
    decoder = TokenDecoder(dec_cfg).eval()
    tokenizer, pins, channels = None, None, ()
    tok_path = path.with_name("tokenizer.safetensors")
    if tok_path.is_file():
        tokenizer, pins = _load_tokenizer(tok_path, device)
        tok_cfg = tokenizer.config
        if (tok_cfg.token_channels, tok_cfg.resolution) != (dit.config.token_channels, dit.config.resolution):
            raise ModelError(f"{tok_path}: the tokenizer makes {tok_cfg.token_channels} x {tok_cfg.resolution}^2 "
                             f"token maps, the DiT {dit.config.token_channels} x {dit.config.resolution}^2")
        if source.get("decoder_config"):  # the DiT learnt ground-truth tokens: the tokenizer must match them
            why = decoding_difference(tokenizer.decoder, decoder)
            if why is not None:
                raise ModelError(f"{tok_path}: its tokens do not decode like the DiT's ({why}); train the "
                                 f"tokenizer with train_decoder=false, or train the DiT on its tokens")
        else:  # the DiT learnt this tokenizer's tokens: they decode through its (fine-tuned) decoder
            decoder = tokenizer.decoder
        channels = photo_channel_indices(decoder.config, pins)
    encoder_name = text_encoder or ckpt.config.get("text_encoder", "minilm")
    try:
        encoder = load_text_encoder(encoder_name, int(ckpt.config.get("max_text_tokens", 32)), device)
    except Exception as exc:  # a missing encoder package or folder
        raise ModelError(f"{path}: cannot load the text encoder {encoder_name!r} ({exc})") from None
    return ModelBundle(name=ckpt.name or path.parent.name, path=path, dit=dit, decoder=decoder.to(device),
                       layout=layout, template=template, skeleton=Skeleton.from_template(template),
                       text_encoder=encoder, tokenizer=tokenizer, sha256=ckpt.sha256, config=ckpt.config,
                       note=ckpt.note, photo_pins=pins, photo_channels=channels)


def _load_tokenizer(path: Path, device: str) -> tuple[Any, str]:
    """The tokenizer of a package (its `decoder` is the TokenDecoder it was trained with; float16 weights
    are cast back to float32) and the photo channels its package pins."""
    try:
        model, ckpt = load_model(path, CHECKPOINT_KIND, tokenizer_from_checkpoint, device=device)
    except CheckpointError as exc:
        raise ModelError(str(exc)) from None
    pins = ckpt.config.get("photo_channels", LEGACY_PHOTO_CHANNELS)
    if pins not in PHOTO_CHANNELS:
        raise ModelError(f"{path}: photo_channels is {pins!r}, expected one of {PHOTO_CHANNELS}")
    return model, pins
