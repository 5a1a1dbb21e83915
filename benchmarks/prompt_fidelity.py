"""Prompt fidelity through the wire: `python -m benchmarks.prompt_fidelity [--model NAME_OR_DIR] [--prompts 16]`.

The acceptance check "generate from prompts -> attribute check on the renders": a backend server runs in
this process on 127.0.0.1 (a real ZeroMQ socket, the handlers `genlca-backend serve` runs, the model
package --model); the bridge client sends `generate` for each prompt, fetches the avatar (`get_avatar`),
has it rendered in its rest pose from the front and the back (`render`, frames streamed back as RGBA), and
reads the garment and hair colours off those frames (training/evaluate.py `classify_rendered_attributes`:
the torso for the top, the thighs for the bottom, the feet for shoes, the crown for hair, each the median
colour of its texels' pixels -> the nearest named colour of the vocabulary).

The prompts are built from the synthetic vocabulary with known attributes (fixed seed): --prompts minus
--heldout people whose combination of attributes training saw, and --heldout people that each show one of
`vocabulary.HELDOUT_COMBINATIONS` (never seen together in training). Prints a line per prompt, then the
per-attribute accuracy as a Markdown table (hair colour is not scored on bald people).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from backend.model_options import add_model_options, use_threads
from benchmarks.timing import write_json_atomic
from training.fidelity import ATTRIBUTES, accuracy, backend_client, check_person, fidelity_people


def markdown(results: list[dict[str, Any]], model: str) -> str:
    acc = accuracy(results)
    rows = [f"| {model} | group | prompts | " + " | ".join(ATTRIBUTES) + " | mean |",
            "|---|---|---|" + "---|" * (len(ATTRIBUTES) + 1)]
    for group in ("seen", "heldout", "all"):
        if group not in acc:
            continue
        count = sum(1 for r in results if group in (r["group"], "all"))
        cells = [f"{acc[group][a][0]}/{acc[group][a][1]}" if a in acc[group] else "-" for a in ATTRIBUTES]
        scored = [v for v in acc[group].values()]
        mean = sum(h for h, _ in scored) / max(1, sum(n for _, n in scored))
        rows.append(f"| | {group} | {count} | " + " | ".join(cells) + f" | {mean:.2f} |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_options(parser)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--heldout", type=int, default=4, help="of --prompts, people with a held-out combination")
    parser.add_argument("--seed", type=int, default=0, help="sampler seed of every prompt")
    parser.add_argument("--size", type=int, default=128, help="render size in pixels (square)")
    parser.add_argument("--out", type=Path, default=None, help="write the per-prompt results as JSON here")
    args = parser.parse_args(argv)
    use_threads(args.threads)

    people = fidelity_people(args.prompts, args.heldout)
    results, layouts = [], {}
    t0 = time.perf_counter()
    with backend_client(args.model) as client:
        for i, person in enumerate(people):
            r = check_person(client, person, steps=args.steps, guidance=args.guidance, seed=args.seed,
                             size=args.size, layouts=layouts)
            results.append(r)
            marks = " ".join(f"{k.split('_')[0]}={r['predicted'][k]}{'' if ok else ' (x ' + r['truth'][k] + ')'}"
                             for k, ok in r["hits"].items())
            print(f"{i + 1:2d}/{len(people)} [{r['group']}] {r['caption']!r}: {marks}  ({r['seconds']:.0f} s)",
                  flush=True)
    model = results[0]["model"] if results else {"name": args.model}
    name = f"{model['name']} ({model.get('sha256', '?')})"
    print(f"\n{len(results)} prompts, {args.steps} steps, guidance {args.guidance:g}, seed {args.seed}, renders "
          f"{args.size}x{args.size} front + back, {time.perf_counter() - t0:.0f} s in all\n")
    print(markdown(results, name))
    if args.out is not None:
        write_json_atomic(args.out, [{k: v for k, v in r.items() if k not in ("views", "avatar")} for r in results])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
