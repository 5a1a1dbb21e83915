"""Does the auto-region mask cover the garment the prompt changes? `python -m benchmarks edit_mask [--model M]
[--people 24] [--attributes upper_colour lower_colour shoes_colour hair_colour] [--grow 8 12 16 off] [--json PATH]`.

The acceptance line "Region Auto's mask covers >= 90 % of the named garment's texels and keeps the rest" needs
the garment's texels, which only a ground-truth avatar has: the synthetic generator paints every texel with a
label (skin, hair, upper, lower, shoes; training/data/appearance.py). So the sources here are ground-truth token
maps of generator people (training/data/synthetic.py `make_person`, seed --seed, dresses left out: their top and
bottom are one garment), the reference prompt is the person's canonical caption and the new prompt the same
caption with ONE colour changed (as `make demo`'s "red shirt" -> "green shirt"). For each mask setting
(`backend/pipelines/edit.py edit_mask`, grow = CIEDE2000 tolerance of `grow_garment` or off) the table gives,
per edited attribute, the share of the garment's texels the mask covers (median and the share of edits with
>= 90 %), and the share of the other atlas texels it takes (spill; median and max), the latter also for the
skin of the arms and hands (texels labelled skin in those regions), which the issue names as kept.

No sampling here: the mask is two conditional velocities at t = 0.5 over 4 noise draws, so the run is
seconds per edit. Whether the inpainted garment then reads as the new colour is benchmarks/edit_fidelity.py's
question (through the wire, on model-made sources).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from backend.model_options import add_model_options, use_threads
from benchmarks.timing import write_json_atomic

SLOTS = {"upper_colour": "upper", "lower_colour": "lower", "shoes_colour": "shoes", "hair_colour": "hair"}


def edit_sources(count: int, attributes: tuple[str, ...], seed: int = 0) -> list[dict[str, Any]]:
    """count generator people (no dresses, no bald heads when hair is edited), each with its ground-truth tokens,
    texel labels, canonical caption and, per attribute, another colour and the caption naming it instead."""
    import torch

    from training.data import appearance, synthetic, vocabulary as vocab

    ctx = synthetic.Context(synthetic.SynthConfig(seed=seed))
    rng = np.random.default_rng(seed)
    people, index = [], 0
    while len(people) < count:
        person = synthetic.make_person(ctx, index, synthetic.person_rng(seed, index))
        index += 1
        attrs = person.attributes
        if attrs["lower"] == "dress" or ("hair_colour" in attributes and attrs["hair_style"] == "bald"):
            continue
        edits = {}
        for key in attributes:
            table = vocab.HAIR_COLOURS if key == "hair_colour" else vocab.COLOURS
            colour = str(rng.choice(sorted(c for c in table if c != attrs[key])))
            edits[key] = {"colour": colour, "caption": vocab.canonical_caption({**attrs, key: colour}),
                          "garment": person.labels == appearance.LABELS.index(SLOTS[key])}
        people.append({"person_id": person.person_id, "tokens": torch.as_tensor(person.tokens),
                       "labels": person.labels, "caption": vocab.canonical_caption(attrs), "edits": edits})
    return people


def score_mask(mask: np.ndarray, garment: np.ndarray, labels: np.ndarray, atlas: np.ndarray,
               limbs: np.ndarray) -> dict[str, float]:
    """Coverage of the garment (R, R) and spill over the rest of the atlas, and over the skin of `limbs`."""
    from training.data.appearance import LABELS

    garment = garment & atlas
    rest = atlas & ~garment
    limb_skin = limbs & atlas & (labels == LABELS.index("skin"))
    return {"coverage": float((mask & garment).sum() / max(1, garment.sum())),
            "spill": float((mask & rest).sum() / max(1, rest.sum())),
            "limb_skin_spill": float((mask & limb_skin).sum() / max(1, limb_skin.sum())),
            "masked_fraction": float(mask[atlas].mean())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_options(parser)
    parser.add_argument("--people", type=int, default=24)
    parser.add_argument("--attributes", nargs="+", default=list(SLOTS), choices=sorted(SLOTS))
    parser.add_argument("--grow", nargs="+", default=["off", "12"],
                        help="mask settings to compare: CIEDE2000 tolerances of grow_garment, or 'off'")
    parser.add_argument("--seed", type=int, default=0, help="generator seed of the people and their new colours")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    use_threads(args.threads)
    from backend.pipelines.edit import edit_mask
    from backend.pipelines.model_bundle import load_bundle

    settings = [None if g == "off" else float(g) for g in args.grow]
    bundle = load_bundle(args.model)
    atlas = bundle.layout.atlas_mask.numpy()
    limbs = bundle.layout.region_mask(["arms", "hands"]).numpy()
    t0 = time.perf_counter()
    people = edit_sources(args.people, tuple(args.attributes), args.seed)
    results = []
    for person in people:
        for key, edit in person["edits"].items():
            for grow in settings:
                mask, _ = edit_mask(bundle, person["tokens"], edit["caption"], person["caption"], grow=grow)
                results.append({"person_id": person["person_id"], "attribute": key, "grow": grow,
                                "colour": edit["colour"],
                                **score_mask(mask.numpy(), edit["garment"], person["labels"], atlas, limbs)})
    rows = []
    print(f"{len(people)} ground-truth sources, model {args.model}, {time.perf_counter() - t0:.0f} s")
    print("| attribute | grow (dE00) | edits | coverage median | coverage >= 0.9 | spill median (max) | "
          "arm/hand skin spill median (max) |")
    print("|---|---|---|---|---|---|---|")
    for key in args.attributes:
        for grow in settings:
            cell = [r for r in results if r["attribute"] == key and r["grow"] == grow]
            cov = np.array([r["coverage"] for r in cell])
            spill = np.array([r["spill"] for r in cell])
            limb = np.array([r["limb_skin_spill"] for r in cell])
            row = {"attribute": key, "grow": grow, "edits": len(cell), "coverage_median": float(np.median(cov)),
                   "coverage_ge_0.9": int((cov >= 0.9).sum()), "spill_median": float(np.median(spill)),
                   "spill_max": float(spill.max()), "limb_skin_spill_median": float(np.median(limb)),
                   "limb_skin_spill_max": float(limb.max())}
            rows.append(row)
            print(f"| {key} | {'off' if grow is None else f'{grow:g}'} | {len(cell)} | {row['coverage_median']:.2f} | "
                  f"{row['coverage_ge_0.9']}/{len(cell)} | {row['spill_median']:.3f} ({row['spill_max']:.3f}) | "
                  f"{row['limb_skin_spill_median']:.3f} ({row['limb_skin_spill_max']:.3f}) |")
    if args.json:
        write_json_atomic(args.json, {"model": args.model, "people": args.people, "seed": args.seed,
                                      "rows": rows, "edits": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
