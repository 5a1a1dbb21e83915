"""The model a service runs: a diffusion checkpoint and what it needs, resolved from one name or path.

A *model package* is a folder holding `dit.safetensors` (the TokenMapDiT, config in its metadata) and,
optionally, `tokenizer.safetensors` (the feed-forward reconstruction model, for photo -> avatar). Every
dimension comes from the checkpoints: token-map resolution and channels from the DiT's config, the
token decoder (K Gaussians per texel, SH degree, layout) from the token source recorded at training
time (`config["token_source"]["decoder_config"]`), the decoder's weights from the tokenizer checkpoint
when there is one (it fine-tunes them), else the decoder's exact routing (ground-truth token maps need
nothing more); the text encoder from the DiT's config.

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

REPO_ROOT = Path(__file__).resolve().parents[2]
CHECKPOINTS = REPO_ROOT / "checkpoints"
DEFAULT_MODEL = "genlca-small"  # the shipped package (README, "The shipped model")


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
                "tokenizer": self.tokenizer is not None, "supports": self.supports}


def load_bundle(name: str | os.PathLike = "default", device: str = "cpu", text_encoder: str | None = None) -> ModelBundle:
    """Load and check a model package (see the module docstring). Raises ModelError naming the problem."""
    from backend.avatar.skinning import Skeleton
    from backend.avatar.template import load_template
    from backend.avatar.tokens import TokenDecoder, TokenDecoderConfig
    from backend.avatar.uv_layout import load_layout
    from backend.config import ConfigError, from_dict
    from backend.models.checkpoint import CheckpointError, load_checkpoint
    from backend.models.conditioning import load_text_encoder
    from backend.models.dit import dit_from_checkpoint

    path = resolve_model_path(name)
    try:
        ckpt = load_checkpoint(path, kind="dit", training_state=False)
        dit = dit_from_checkpoint(ckpt).to(device)
    except CheckpointError as exc:
        raise ModelError(str(exc)) from None
    except (KeyError, TypeError, RuntimeError) as exc:
        raise ModelError(f"{path}: the checkpoint does not fit this code's TokenMapDiT ({exc})") from None
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
    tokenizer = None
    tok_path = path.with_name("tokenizer.safetensors")
    if tok_path.is_file():
        tokenizer = _load_tokenizer(tok_path, device)
        if tokenizer.decoder.config.token_channels != dit.config.token_channels:
            raise ModelError(f"{tok_path}: the tokenizer makes {tokenizer.decoder.config.token_channels} token "
                             f"channels, the DiT {dit.config.token_channels}")
        decoder = tokenizer.decoder  # fine-tuned with the tokenizer: its tokens decode through it
    encoder_name = text_encoder or ckpt.config.get("text_encoder", "minilm")
    try:
        encoder = load_text_encoder(encoder_name, int(ckpt.config.get("max_text_tokens", 32)), device)
    except Exception as exc:  # a missing encoder package or folder
        raise ModelError(f"{path}: cannot load the text encoder {encoder_name!r} ({exc})") from None
    return ModelBundle(name=ckpt.name or path.parent.name, path=path, dit=dit, decoder=decoder.to(device),
                       layout=layout, template=template, skeleton=Skeleton.from_template(template),
                       text_encoder=encoder, tokenizer=tokenizer, sha256=ckpt.sha256, config=ckpt.config,
                       note=ckpt.note)


def _load_tokenizer(path: Path, device: str) -> Any:
    """The tokenizer of a package (its `decoder` is the TokenDecoder it was trained with)."""
    from backend.models.checkpoint import CheckpointError, load_checkpoint

    try:
        import backend.models.tokenizer as tokenizer_module
        ckpt = load_checkpoint(path, kind="tokenizer", training_state=False)
        model = tokenizer_module.tokenizer_from_checkpoint(ckpt).to(device).eval()
    except CheckpointError as exc:
        raise ModelError(str(exc)) from None
    except (AttributeError, KeyError, TypeError, RuntimeError) as exc:
        raise ModelError(f"{path}: the tokenizer checkpoint does not fit this code ({exc})") from None
    return model
