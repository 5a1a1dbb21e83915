"""The attribute vocabulary of synthetic people, its sampler, captions and the combination split.

A person is a dict of attributes (JSON-serialisable, stored in each clip record's `meta["attributes"]`):

    gender, age_group, build, stature    from the body-shape macro values (`body_shape.SHAPE_NAMES`)
    skin_tone                            SKIN_TONES
    hair_style, hair_colour              HAIR_STYLES, HAIR_COLOURS
    upper, upper_colour, upper_pattern   UPPER_GARMENTS, COLOURS, PATTERNS
    lower, lower_colour                  LOWER_GARMENTS, COLOURS ("dress": upper and lower are one garment)
    shoes, shoes_colour                  SHOES, COLOURS

Splits: every person is assigned "train" / "val" / "test" from its own seeded draw (a split by person:
one person's clips never straddle two splits), except that a person whose attributes contain one of
`HELDOUT_COMBINATIONS` (pairs of attribute values that are each common in training but never seen
*together* there) is always "heldout-combo". Generalisation to new combinations is measured on those.
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np

from backend.avatar.garments import GARMENT_COLOURS, HAIR_COLOURS

# sRGB in [0, 1]; the garment and hair colours live with the edit's lexicon (backend/avatar/garments.py),
# which reads them back from prompts
COLOURS = GARMENT_COLOURS
SKIN_TONES: dict[str, tuple[float, float, float]] = {
    "pale": (0.96, 0.82, 0.72), "light": (0.90, 0.72, 0.58), "medium": (0.80, 0.60, 0.45),
    "tan": (0.68, 0.48, 0.33), "brown": (0.50, 0.33, 0.22), "dark": (0.32, 0.21, 0.14),
}
HAIR_STYLES = ("bald", "short", "long", "bun")
UPPER_GARMENTS = ("t-shirt", "long-sleeve shirt", "tank top", "hoodie", "jacket")
LOWER_GARMENTS = ("shorts", "trousers", "skirt", "dress")
SHOES = ("sneakers", "boots", "sandals")
PATTERNS = ("plain", "stripes", "checks", "chest print")

# Pairs never seen together in training (each value is common on its own).
HELDOUT_COMBINATIONS: tuple[tuple[tuple[str, str], tuple[str, str]], ...] = (
    (("upper_colour", "red"), ("upper", "hoodie")),
    (("lower_colour", "green"), ("lower", "skirt")),
    (("hair_style", "long"), ("hair_colour", "blonde")),
    (("upper_pattern", "stripes"), ("upper", "jacket")),
)
SPLIT_FRACTIONS = (("train", 0.9), ("val", 0.05), ("test", 0.05))


def _pick(rng: np.random.Generator, options, p=None) -> Any:
    options = list(options)
    return options[int(rng.choice(len(options), p=p))]


def sample_shape(rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """Macro values (6,) in `body_shape.SHAPE_NAMES` order and the gender word (moderate ranges)."""
    woman = bool(rng.random() < 0.5)
    gender = rng.uniform(0.0, 0.3) if woman else rng.uniform(0.7, 1.0)
    shape = np.array([gender, rng.uniform(0.5, 0.8), rng.uniform(0.3, 0.7), rng.uniform(0.25, 0.8),
                      rng.uniform(0.35, 0.65), rng.uniform(0.3, 0.7)], dtype=np.float32)
    return shape, "woman" if woman else "man"


def sample_attributes(rng: np.random.Generator) -> dict[str, Any]:
    """Appearance attributes (body-shape words are added by the generator once the shape is fitted)."""
    # garments are not tied to gender: the sampler is deliberately unbiased
    lower = _pick(rng, LOWER_GARMENTS, p=[0.25, 0.35, 0.2, 0.2])
    upper = "dress" if lower == "dress" else _pick(rng, UPPER_GARMENTS)
    attrs: dict[str, Any] = {
        "skin_tone": _pick(rng, SKIN_TONES),
        "hair_style": _pick(rng, HAIR_STYLES, p=[0.1, 0.4, 0.35, 0.15]),
        "hair_colour": _pick(rng, HAIR_COLOURS),
        "upper": upper,
        "upper_colour": _pick(rng, COLOURS),
        "upper_pattern": _pick(rng, PATTERNS, p=[0.4, 0.25, 0.15, 0.2]),
        "lower": lower,
        "lower_colour": _pick(rng, COLOURS),
        "shoes": _pick(rng, SHOES),
        "shoes_colour": _pick(rng, ("black", "white", "brown", "grey", "blue", "red")),
    }
    if lower == "dress":
        attrs["lower_colour"] = attrs["upper_colour"]
    return attrs


def heldout_combinations_in(attrs: dict[str, Any]) -> list[str]:
    """The held-out combinations this person shows, as "key=value+key=value" strings."""
    return [f"{a}={va}+{b}={vb}" for (a, va), (b, vb) in HELDOUT_COMBINATIONS
            if attrs.get(a) == va and attrs.get(b) == vb]


def assign_split(attrs: dict[str, Any], rng: np.random.Generator) -> str:
    draw = rng.random()  # always drawn, so the rest of the person's stream does not depend on the split
    if heldout_combinations_in(attrs):
        return "heldout-combo"
    edge = 0.0
    for name, fraction in SPLIT_FRACTIONS:
        edge += fraction
        if draw < edge:
            return name
    return SPLIT_FRACTIONS[-1][0]


# ------------------------------------------------------------------ captions
# Every caption names every attribute the person has (a model cannot learn what its captions omit): the
# gender (with stature / build when they apply), skin tone, hair style and colour, the top (colour,
# pattern, garment), the bottom (colour, garment) or the dress, and the shoes (colour, kind). Phrasings
# vary the order and the wording; synonyms are the words a user types for the same value. The first
# caption is the canonical one (the evaluation prompts with it); the others draw their wording.
COLOUR_SYNONYMS = {"navy": ("navy", "dark blue"), "grey": ("grey", "gray"), "purple": ("purple", "violet")}
HAIR_COLOUR_SYNONYMS = {"blonde": ("blonde", "blond")}
GARMENT_SYNONYMS = {
    "t-shirt": ("t-shirt", "tee"), "long-sleeve shirt": ("long-sleeve shirt", "long-sleeved top"),
    "tank top": ("tank top", "sleeveless top"), "hoodie": ("hoodie", "hooded sweatshirt"),
    "jacket": ("jacket",), "trousers": ("trousers", "pants"), "shorts": ("shorts",), "skirt": ("skirt",),
    "dress": ("dress",), "sneakers": ("sneakers", "trainers"), "boots": ("boots",), "sandals": ("sandals",),
}
CAPTION_PHRASINGS = 5


def _word(value: str, table: dict[str, tuple[str, ...]], rng: np.random.Generator | None) -> str:
    options = table.get(value, (value,))
    return options[0] if rng is None else options[int(rng.integers(len(options)))]


def _article(words: str) -> str:
    return "an" if words[0] in "aeiou" else "a"


def _garment_phrase(colour: str, garment: str, pattern: str = "plain") -> str:
    if pattern == "stripes":
        return f"a striped {colour} {garment}"
    if pattern == "checks":
        return f"a {colour} checked {garment}"
    if pattern == "chest print":
        return f"{_article(colour)} {colour} {garment} with a print on the chest"
    return f"{_article(colour)} {colour} {garment}"


def _plural_lower(colour: str, lower: str) -> str:
    if lower in ("shorts", "trousers", "pants"):
        return f"{colour} {lower}"
    return f"{_article(colour)} {colour} {lower}"


def _hair_phrase(style: str, colour: str) -> str:
    if style == "bald":
        return "a bald head"
    if style == "bun":
        return f"{colour} hair in a bun"
    return f"{style} {colour} hair"


def caption_parts(attrs: dict[str, Any], rng: np.random.Generator | None = None) -> dict[str, str]:
    """The phrase of each attribute group: person, skin, hair, outfit (top and bottom, or the dress), shoes.
    rng None: the canonical words; else synonyms are drawn."""
    adjs = [a for a in (attrs.get("stature"), attrs.get("build")) if a]
    colour = {k: _word(attrs[k], COLOUR_SYNONYMS, rng) for k in ("upper_colour", "lower_colour", "shoes_colour")}
    if attrs["lower"] == "dress":
        outfit = _garment_phrase(colour["upper_colour"], "dress", attrs["upper_pattern"])
    else:
        outfit = (_garment_phrase(colour["upper_colour"], _word(attrs["upper"], GARMENT_SYNONYMS, rng),
                                  attrs["upper_pattern"]) + " and "
                  + _plural_lower(colour["lower_colour"], _word(attrs["lower"], GARMENT_SYNONYMS, rng)))
    return {"person": " ".join(adjs + [attrs["gender"]]), "noun": attrs["gender"],
            "age": attrs.get("age_group", "adult"), "skin": f"{attrs['skin_tone']} skin",
            "hair": _hair_phrase(attrs["hair_style"], _word(attrs["hair_colour"], HAIR_COLOUR_SYNONYMS, rng)),
            "outfit": outfit, "shoes": f"{colour['shoes_colour']} {_word(attrs['shoes'], GARMENT_SYNONYMS, rng)}"}


def phrasing(parts: dict[str, str], which: int) -> str:
    """One of CAPTION_PHRASINGS sentence shapes; each names every part."""
    p = parts
    art = _article(p["person"])
    options = (
        f"{art} {p['person']} with {p['skin']} and {p['hair']} in {p['outfit']}, wearing {p['shoes']}",
        f"{art} {p['person']} with {p['hair']}, dressed in {p['outfit']} and {p['shoes']}, {p['skin']}",
        f"{p['person']} wearing {p['outfit']} and {p['shoes']}; {p['hair']}; {p['skin']}",
        f"full-body photo of {_article(p['age'])} {p['age']} {p['noun']} with {p['hair']} and {p['skin']} "
        f"in {p['outfit']}, {p['shoes']}",
        f"{p['outfit']} and {p['shoes']} on {art} {p['person']} with {p['hair']} and {p['skin']}",
    )
    return options[which]


def canonical_caption(attrs: dict[str, Any]) -> str:
    """The first caption of `captions`: the first sentence shape in the canonical words (what eval prompts)."""
    return phrasing(caption_parts(attrs), 0)


def captions(attrs: dict[str, Any], rng: np.random.Generator, count: int = 4) -> list[str]:
    """Several phrasings of one person's attributes: the first is the canonical one (canonical words,
    the first sentence shape), the others draw a shape and synonyms from `rng`. Every caption names
    every attribute (`caption_coverage` checks it)."""
    out = [canonical_caption(attrs)]
    for which in rng.permutation(CAPTION_PHRASINGS)[:max(0, count - 1)]:
        out.append(phrasing(caption_parts(attrs, rng), int(which)))
    return out


def benchmark_caption(attrs: dict[str, Any], rng: np.random.Generator) -> str:
    """The fixed prompt of the through-the-wire benchmarks (benchmarks/prompt_fidelity.py, edit_fidelity.py) and
    of the shipped-model tests, whose measured numbers hold for exactly these prompts: the round-2 canonical
    caption (person, hair, outfit, shoes; no skin tone), with the one draw it took from `rng` (so the
    benchmark's later people are the same too). Training and `genlca-train eval` use `captions`."""
    g = lambda colour, garment, pattern: (  # noqa: E731  (round 2's wording, "a orange" included)
        f"a striped {colour} {garment}" if pattern == "stripes" else f"a {colour} checked {garment}"
        if pattern == "checks" else f"a {colour} {garment} with a print on the chest" if pattern == "chest print"
        else f"{_article(colour)} {colour} {garment}")
    person = " ".join([a for a in (attrs.get("stature"), attrs.get("build")) if a] + [attrs["gender"]])
    if attrs["lower"] == "dress":
        outfit = g(attrs["upper_colour"], "dress", attrs["upper_pattern"])
    else:
        lower = attrs["lower"]
        outfit = (g(attrs["upper_colour"], attrs["upper"], attrs["upper_pattern"]) + " and "
                  + (f"{attrs['lower_colour']} {lower}" if lower in ("shorts", "trousers")
                     else f"{_article(attrs['lower_colour'])} {attrs['lower_colour']} {lower}"))
    rng.permutation(4)
    return (f"{_article(person)} {person} with {_hair_phrase(attrs['hair_style'], attrs['hair_colour'])} in "
            f"{outfit}, wearing {attrs['shoes_colour']} {attrs['shoes']}")


def can_caption(attrs: dict[str, Any]) -> bool:
    """Whether `captions` can describe these attributes (a synthetic person's full set)."""
    return all(k in attrs for k in ("gender", "skin_tone", "hair_style", "hair_colour", "upper", "upper_colour",
                                    "upper_pattern", "lower", "lower_colour", "shoes", "shoes_colour"))


def caption_rng(person_id: str) -> np.random.Generator:
    """The caption stream of a person (separate from the person's own stream, so captions can be rewritten
    without changing the people): seeded by the person id."""
    return np.random.default_rng(list(person_id.encode()))


def attribute_words(key: str, value: str) -> tuple[str, ...]:
    """Words that name `value` of attribute `key` in a caption (synonyms included)."""
    if key in ("upper_colour", "lower_colour", "shoes_colour"):
        return COLOUR_SYNONYMS.get(value, (value,))
    if key == "hair_colour":
        return HAIR_COLOUR_SYNONYMS.get(value, (value,))
    if key in ("upper", "lower", "shoes"):
        return GARMENT_SYNONYMS.get(value, (value,))
    if key == "upper_pattern":
        return {"plain": ("",), "stripes": ("striped",), "checks": ("checked",), "chest print": ("print",)}[value]
    if key == "skin_tone":
        return (f"{value} skin",)
    return (value,)


CAPTION_ATTRIBUTES = ("gender", "skin_tone", "hair_style", "hair_colour", "upper", "upper_colour",
                      "upper_pattern", "lower", "lower_colour", "shoes", "shoes_colour")


def caption_coverage(attrs: dict[str, Any], caption: str) -> dict[str, bool]:
    """Which of the person's attributes the caption names (a word of the value appears; hair colour of a
    bald person and the lower garment of a dress, which the dress names, count as named)."""
    text = f" {caption.lower()} "
    out = {}
    for key in CAPTION_ATTRIBUTES:
        value = attrs.get(key)
        if value is None:
            continue
        if (key == "hair_colour" and attrs.get("hair_style") == "bald") or (key == "upper_pattern" and value == "plain"):
            out[key] = True
            continue
        if key in ("upper", "upper_colour") and attrs.get("lower") == "dress" and key == "upper":
            out[key] = " dress" in text
            continue
        if key == "hair_style" and value == "bald":
            out[key] = "bald" in text
            continue
        out[key] = any(re.search(rf"(?<![\w-]){re.escape(w)}(?![\w-])", text) for w in attribute_words(key, value))
    return out
