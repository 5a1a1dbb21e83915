"""Which garment a prompt names, and where on the body it can lie: the words of an edit, read for the mask.

A text edit such as "a woman in a green shirt and blue jeans" over "a woman in a red shirt and blue jeans"
changes one garment. `changed_slots` finds it without a model: the words that differ between the two prompts
(difflib's alignment of their word sequences) and the garment noun they belong to (the first garment word
after the changed words within the same phrase, else the last one before them). A slot is one of
`SLOT_REGIONS`' keys; `SLOT_REGIONS` says which body regions (backend/avatar/body_parts.REGION_NAMES) that
garment can cover and `SLOT_CORE` the region where it always is (the colour of the garment is read there).

`colour_changes` reads the narrower edit "the same garment in another colour" (every changed word names a colour):
the auto-region edit then recolours the garment instead of regenerating it. Colours are sRGB in [0, 1]: the
garment and hair colours are the synthetic generator's own (training/data/vocabulary.py takes them from here),
so a word means the same colour to the generator that taught the model and to the edit.

The lexicon holds the words a user types for each slot: the synthetic captions' garments and synonyms
(training/data/vocabulary.py; tests/test_edit_mask.py checks every one of them maps here) and the common
words beyond them (shirt, sweater, jeans, ...). A prompt the lexicon cannot read gives no slot, and the
auto-region edit then relies on the model's difference map alone.
"""
from __future__ import annotations

import difflib
import re

GARMENT_COLOURS: dict[str, tuple[float, float, float]] = {
    "black": (0.07, 0.07, 0.08), "white": (0.93, 0.93, 0.91), "grey": (0.50, 0.50, 0.52),
    "red": (0.80, 0.10, 0.12), "blue": (0.14, 0.30, 0.78), "navy": (0.09, 0.13, 0.35),
    "green": (0.15, 0.58, 0.25), "yellow": (0.95, 0.82, 0.15), "orange": (0.95, 0.50, 0.10),
    "purple": (0.45, 0.20, 0.62), "pink": (0.95, 0.55, 0.70), "brown": (0.45, 0.28, 0.15),
    "beige": (0.85, 0.76, 0.60), "teal": (0.10, 0.55, 0.55),
}
HAIR_COLOURS: dict[str, tuple[float, float, float]] = {
    "black": (0.05, 0.04, 0.04), "dark brown": (0.20, 0.12, 0.07), "brown": (0.38, 0.23, 0.12),
    "blonde": (0.88, 0.74, 0.45), "red": (0.62, 0.20, 0.08), "grey": (0.66, 0.66, 0.66),
}
COLOUR_SYNONYMS = {"dark blue": "navy", "gray": "grey", "violet": "purple", "blond": "blonde"}

SLOT_WORDS: dict[str, tuple[str, ...]] = {
    "upper": ("shirt", "t-shirt", "tshirt", "tee", "top", "blouse", "sweater", "jumper", "sweatshirt", "hoodie",
              "jacket", "coat", "blazer", "cardigan", "vest", "polo", "tank", "tunic", "parka"),
    "lower": ("trousers", "pants", "jeans", "shorts", "skirt", "leggings", "chinos", "joggers", "slacks"),
    "dress": ("dress", "gown", "jumpsuit"),
    "shoes": ("shoes", "shoe", "sneakers", "trainers", "boots", "sandals", "heels", "loafers", "footwear"),
    "hair": ("hair", "ponytail", "bun", "braid", "braids", "curls"),
}
SLOT_REGIONS: dict[str, tuple[str, ...]] = {
    "upper": ("torso", "arms"), "lower": ("torso", "legs"), "dress": ("torso", "legs", "arms"),
    "shoes": ("feet", "legs"), "hair": ("head", "torso"),
}
SLOT_CORE: dict[str, str] = {"upper": "torso", "lower": "legs", "dress": "torso", "shoes": "feet", "hair": "head"}
# a garment that leaves its core region only a little (a boot's shaft up the shin): within this many metres of
# the core region's garment texels on the rest-pose body it needs no support from the difference map
SLOT_NEAR_CORE_M: dict[str, float] = {"shoes": 0.25}
# garments followed out of their core region along their own colour, unbroken (a sleeve down the arm)
SLOT_CONTINUES: frozenset[str] = frozenset({"upper", "dress"})
_WORD_SLOT = {w: slot for slot, words in SLOT_WORDS.items() for w in words}
_PHRASE_END = {"and", "with", "in", "wearing", "on", ",", ";", "."}


def words(prompt: str) -> list[str]:
    """Lower-case words and the punctuation that ends a phrase (hyphenated words stay whole)."""
    return re.findall(r"[a-z0-9]+(?:-[a-z0-9]+)*|[,;.]", prompt.lower())


def slot_of(word: str) -> str | None:
    """The slot a garment word names ("sleeveless" no, "sneakers" shoes), plural or singular."""
    if word in _WORD_SLOT:
        return _WORD_SLOT[word]
    if word.endswith("s") and word[:-1] in _WORD_SLOT:
        return _WORD_SLOT[word[:-1]]
    return None


def _slot_near(seq: list[str], start: int, end: int) -> str | None:
    """The slot of the changed words seq[start:end]: a garment word among them, else the first one after them
    in the same phrase, else the last one before them in the same phrase."""
    for w in seq[start:end]:
        if slot_of(w):
            return slot_of(w)
    for w in seq[end:]:
        if w in _PHRASE_END:
            break
        if slot_of(w):
            return slot_of(w)
    for w in reversed(seq[:start]):
        if w in _PHRASE_END:
            break
        if slot_of(w):
            return slot_of(w)
    return None


def changed_slots(prompt: str, reference: str) -> tuple[str, ...]:
    """The garment slots whose words differ between `prompt` and `reference`, in the order they appear in the
    prompt; () when the reference is empty (everything differs: nothing to read), when the prompts are the same,
    or when a changed word belongs to no garment (e.g. "a man" -> "a woman": not a garment edit)."""
    new, old = words(prompt), words(reference)
    if not old or new == old:
        return ()
    slots: list[str] = []
    matcher = difflib.SequenceMatcher(a=old, b=new, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        slot = _slot_near(new, j1, j2) if j2 > j1 else _slot_near(old, i1, i2)
        if slot is None:
            return ()
        if slot not in slots:
            slots.append(slot)
    return tuple(slots)


def colour_of(span: list[str], slot: str) -> tuple[float, float, float] | None:
    """The sRGB of the colour the words `span` name for a garment of `slot` (hair has its own shades), or None."""
    name = COLOUR_SYNONYMS.get(" ".join(span), " ".join(span))
    if slot == "hair" and name in HAIR_COLOURS:
        return HAIR_COLOURS[name]
    return GARMENT_COLOURS.get(name)


def colour_changes(prompt: str, reference: str) -> dict[str, tuple[float, float, float]]:
    """{slot: new sRGB} when the prompt differs from the reference only in colour words, each belonging to a
    garment ("a green shirt" over "a red shirt": {"upper": green}); {} for any other change (a new garment, a
    pattern, a word the lexicon does not know), for an empty reference and for the same prompt."""
    new, old = words(prompt), words(reference)
    if not old or new == old:
        return {}
    changes: dict[str, tuple[float, float, float]] = {}
    matcher = difflib.SequenceMatcher(a=old, b=new, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        slot = _slot_near(new, j1, j2) if j2 > j1 else None
        colour = colour_of(new[j1:j2], slot) if slot else None
        if colour is None or changes.get(slot, colour) != colour:
            return {}
        changes[slot] = colour
    return changes
