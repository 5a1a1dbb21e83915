"""Text-edit fidelity through the wire: `python -m benchmarks edit_fidelity [--model M] [--strengths 0.4 0.6 0.8]
[--pairs 6] [--steps 25] [--attributes upper_colour lower_colour] [--invert | --region auto|REGION] [--json PATH]`.

The acceptance check "text edit changes the named attribute and keeps the rest": a backend server runs in this
process on 127.0.0.1 (training/fidelity.py `backend_client`: a real ZeroMQ socket, the handlers of
`genlca-backend serve`, the model package --model). For each of --pairs people drawn from the synthetic
vocabulary (fixed seed; no dresses, whose top and bottom are one garment) the client sends `generate` with the
person's caption, then, per edited attribute and strength, `edit` with the same caption but ONE garment colour
changed to another named colour. Source and every edit are fetched (`get_avatar`), rendered front and back
(`render`) and read like prompt_fidelity: the garment, shoe and hair colours off the frames
(training/evaluate.py `classify_rendered_attributes`), and each body region's colour as the median CIELAB of
its texels' opacity-weighted Gaussian colours (training/fidelity.py `avatar_region_lab`).

Per (attribute, mode, strength) the table gives: the fraction of edits where the new colour is read on its region
("hit"; in brackets how many sources already read it), the fraction where each other attribute reads as on
the source, the median over edits of CIEDE2000 between source and edit for the regions that should stay
(KEPT_REGIONS) and for the edited region. Without --invert every edit runs the noise mode (the source mixed
with seeded noise to t = strength); with --invert it sends `Edit(invert=True)`, so the source is integrated
up to t = strength along the ODE first (backend/pipelines/edit.py `edit_text`); with --region auto it sends
`Edit(region="auto")`: the texels the new caption changes against the source's caption are inpainted and every
other texel is kept bit for bit (`regenerate_auto`; inpainting starts from noise, so strength does not enter and
one strength is enough); --region torso etc. regenerates that named region. The table's mode column says
which ran, read back from each edit's reply meta. --same-caption is the control: each edit sends the source's
own caption, so "hit" is the top still reading as captioned and every dE00 is drift the edit adds by itself.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from backend.model_options import add_model_options, use_threads
from benchmarks.timing import write_json_atomic
from training.fidelity import ATTRIBUTES, EDITABLE, KEPT_REGIONS, backend_client, edit_pairs, run_pair


def summary(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (attribute, mode, strength): counts, fractions and median CIEDE2000 over the edits."""
    cells: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    for r in results:
        for e in r["edits"]:
            cells.setdefault((e["attribute"], e["mode"], e["strength"]), []).append(e)
    rows = []
    for (key, mode, strength), edits in sorted(cells.items()):
        rows.append({
            "attribute": key, "mode": mode, "strength": strength, "edits": len(edits),
            "hit": float(np.mean([e["hit"] for e in edits])),
            "source_hit": int(sum(e["source_hit"] for e in edits)),
            # the acceptance count: hits among the edits whose source did not already read as the new colour
            "fresh_hits": int(sum(e["hit"] and not e["source_hit"] for e in edits)),
            "fresh_edits": int(sum(not e["source_hit"] for e in edits)),
            "unchanged": {a: float(np.mean([e["unchanged"][a] for e in edits])) for a in ATTRIBUTES if a != key},
            "kept_de00": {reg: float(np.median([e["de00"][reg] for e in edits])) for reg in KEPT_REGIONS[key]},
            "kept_de00_max": float(max(e["de00"][reg] for e in edits for reg in KEPT_REGIONS[key])),
            "edited_de00": float(np.median([e["de00"][EDITABLE[key]] for e in edits])),
            "masked_fraction": (float(np.median([e["masked_fraction"] for e in edits]))
                                if all(e.get("masked_fraction") is not None for e in edits) else None),
            "seconds": float(np.median([e["seconds"] for e in edits]))})
    return rows


def markdown(rows: list[dict[str, Any]], model: str) -> str:
    out = [f"| {model} | mode | strength | edits | new colour read (source had it) | read where the source did not "
           "| other attributes unchanged | kept regions median dE00 (max) | edited region median dE00 | s per edit |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        unchanged = ", ".join(f"{a.split('_')[0]} {v:.2f}" for a, v in row["unchanged"].items())
        kept = ", ".join(f"{reg} {v:.1f}" for reg, v in row["kept_de00"].items())
        mode = row["mode"] + (f" (masked {row['masked_fraction']:.2f})" if row.get("masked_fraction") is not None
                              else "")
        out.append(f"| {row['attribute']} | {mode} | {row['strength']:g} | {row['edits']} | {row['hit']:.2f} "
                   f"({row['source_hit']}) | {row['fresh_hits']}/{row['fresh_edits']} | {unchanged} | {kept} ({row['kept_de00_max']:.1f}) | "
                   f"{EDITABLE[row['attribute']]} {row['edited_de00']:.1f} | {row['seconds']:.1f} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_options(parser)
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.4, 0.6, 0.8])
    parser.add_argument("--pairs", type=int, default=6,
                        help="source people, each edited once per attribute and strength")
    parser.add_argument("--attributes", nargs="+", default=["upper_colour"], choices=sorted(EDITABLE))
    parser.add_argument("--seed", type=int, default=0, help="sampler seed of every generate and edit")
    parser.add_argument("--pair-seed", type=int, default=0, help="seed of the people and their new colours")
    parser.add_argument("--size", type=int, default=128, help="render size in pixels (square)")
    parser.add_argument("--json", type=Path, default=None, help="write the per-edit results and the table rows here")
    parser.add_argument("--invert", action="store_true", help="edit by ODE inversion to t = strength (Edit.invert) "
                        "instead of seeded noise")
    parser.add_argument("--region", default="", help="send Edit(region=...): 'auto' (inpaint what the new caption "
                        "changes, the rest bit-identical) or a body region; default: a whole-body text edit")
    parser.add_argument("--same-caption", action="store_true", help="control: every edit sends the source's own "
                        "caption, so the dE00 columns are the edit's drift with nothing asked to change")
    args = parser.parse_args(argv)
    bad = [s for s in args.strengths if not 0.0 < s <= 1.0]
    if bad:
        parser.error(f"strengths must be in (0, 1], got {bad}")
    if args.region and args.invert:
        parser.error("--invert is a whole-body text edit's; it cannot go with --region")
    use_threads(args.threads)
    people = edit_pairs(args.pairs, tuple(args.attributes), args.pair_seed)
    results, layouts = [], {}
    t0 = time.perf_counter()
    with backend_client(args.model) as client:
        for i, person in enumerate(people):
            r = run_pair(client, person, args.strengths, steps=args.steps, guidance=args.guidance, seed=args.seed,
                         size=args.size, layouts=layouts, invert=args.invert, region=args.region,
                         same_caption=args.same_caption)
            results.append(r)
            print(f"{i + 1:2d}/{len(people)} {r['caption']!r}: source reads {r['source']}", flush=True)
            for e in r["edits"]:
                kept = " ".join(f"{reg} {e['de00'][reg]:.1f}" for reg in KEPT_REGIONS[e["attribute"]])
                edited = EDITABLE[e["attribute"]]
                print(f"    {e['attribute']} -> {e['colour']} at {e['strength']:g} ({e['mode']}): read "
                      f"{e['predicted'][e['attribute']]} ({'hit' if e['hit'] else 'miss'}); kept dE00 {kept}; "
                      f"{edited} {e['de00'][edited]:.1f}", flush=True)
    model = results[0]["model"]
    name = f"{model['name']} ({model.get('sha256', '?')[:12]})"
    rows = summary(results)
    print(f"\n{len(results)} sources x {len(args.attributes)} attribute(s) x {len(args.strengths)} strengths, "
          f"{rows[0]['mode'] if rows else '?'} mode, "
          f"{args.steps} steps (an edit: round(steps x strength)), guidance {args.guidance:g}, seed {args.seed}, "
          f"renders {args.size}x{args.size} front + back, {time.perf_counter() - t0:.0f} s in all\n")
    print(markdown(rows, name))
    if args.json is not None:
        write_json_atomic(args.json, {"model": model, "args": {k: str(v) for k, v in vars(args).items()},
                                       "rows": rows, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
