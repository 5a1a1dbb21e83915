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
import contextlib
import socket
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from backend.model_options import add_model_options, use_threads
from benchmarks.timing import write_json_atomic

ATTRIBUTES = ("upper_colour", "lower_colour", "shoes_colour", "hair_colour")


def fidelity_people(count: int = 16, heldout: int = 4, seed: int = 0) -> list[dict[str, Any]]:
    """count people (attributes, caption, group "seen" | "heldout"), the last `heldout` of them each forced
    to show one held-out combination in turn. Deterministic for (count, heldout, seed)."""
    from training.data import vocabulary as vocab

    if not 0 <= heldout <= count:
        raise ValueError(f"expected 0 <= heldout <= count, got heldout={heldout}, count={count}")
    rng = np.random.default_rng(seed)
    people: list[dict[str, Any]] = []
    while len(people) < count - heldout:
        attrs = vocab.sample_attributes(rng)
        if not vocab.heldout_combinations_in(attrs):
            people.append(_person(attrs, rng, "seen"))
    combos = vocab.HELDOUT_COMBINATIONS
    while len(people) < count:
        attrs = vocab.sample_attributes(rng)
        if attrs["lower"] == "dress":  # every held-out pair names a garment that a dress would replace
            continue
        for key, value in combos[(len(people) - (count - heldout)) % len(combos)]:
            attrs[key] = value
        people.append(_person(attrs, rng, "heldout"))
    return people


def _person(attrs: dict[str, Any], rng: np.random.Generator, group: str) -> dict[str, Any]:
    from training.data import vocabulary as vocab

    attrs = {**attrs, "gender": "woman" if rng.random() < 0.5 else "man"}
    return {"attributes": attrs, "caption": vocab.benchmark_caption(attrs, rng), "group": group}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def backend_client(model: str, timeout_s: float = 120.0) -> Iterator[Any]:
    """A BackendServer on a free 127.0.0.1 port serving `model` (the handlers of `genlca-backend serve`),
    and a BridgeClient connected to it; both closed on exit."""
    from backend.service.handlers import default_handlers
    from backend.service.config import ServiceConfig
    from backend.service.server import BackendServer
    from bridge.wire.client import BridgeClient

    address = f"tcp://127.0.0.1:{_free_port()}"
    server = BackendServer(address, default_handlers(config=ServiceConfig(model=model, device="cpu")))
    server.serve_in_thread()
    client = BridgeClient(address, timeout_s=timeout_s)
    try:
        yield client
    finally:
        client.close()
        server.stop()


def render_views(client: Any, avatar_id: str, joints: int, size: int, background=(0.0, 0.0, 0.0)) -> list[Any]:
    """The avatar rendered by the backend in its rest pose from training/evaluate.py's attribute cameras:
    RenderedView per camera (uint8 RGB and alpha as the wire carries them)."""
    from bridge.wire import protocol
    from training.evaluate import RenderedView, attribute_cameras

    cameras = list(attribute_cameras(size).values())
    n = len(cameras)
    rotations = np.zeros((n, joints, 4), np.float32)
    rotations[..., 0] = 1.0  # rest pose: the template's anchors are where the classifier projects them
    arrays = {"joint_rotations": rotations, "root_translations": np.zeros((n, 3), np.float32),
              "world_to_camera": np.stack([c.world_to_camera for c in cameras]).astype(np.float32),
              "intrinsics": np.stack([c.intrinsics for c in cameras]).astype(np.float32)}
    frames: dict[int, np.ndarray] = {}
    client.call(protocol.Render(avatar_id=avatar_id, width=size, height=size, background=tuple(background)),
                arrays, timeout_s=600.0,
                on_progress=lambda r: frames.__setitem__(int(r.header["frame"]), r.arrays["rgba"])
                if "rgba" in r.arrays else None)
    if sorted(frames) != list(range(n)):
        raise RuntimeError(f"render of {avatar_id} returned frames {sorted(frames)}, expected 0..{n - 1}")
    return [RenderedView(frames[i][..., :3], frames[i][..., 3], cameras[i], tuple(background)) for i in range(n)]


def fetch_and_render(client: Any, avatar_id: str, size: int,
                     layouts: dict[tuple[str, int], Any]) -> tuple[Any, Any, Any, list[Any]]:
    """get_avatar, then render_views: (the get_avatar reply, the avatar's UVLayout, its RegionTexels, the views).
    layouts caches (UVLayout, RegionTexels) per (template, resolution) of the avatars' meta."""
    from backend.avatar.template import load_template
    from backend.avatar.uv_layout import load_layout
    from bridge.wire import protocol
    from training.evaluate import RegionTexels

    got = client.call(protocol.GetAvatar(avatar_id=avatar_id), timeout_s=120.0)
    meta = got.header["meta"]
    key = (meta["template"], int(meta["resolution"]))
    if key not in layouts:
        layout = load_layout(load_template(key[0]), key[1])
        layouts[key] = (layout, RegionTexels.from_layout(layout))
    layout, regions = layouts[key]
    return got, layout, regions, render_views(client, avatar_id, len(got.header["joint_names"]), size)


def check_person(client: Any, person: dict[str, Any], *, steps: int, guidance: float, seed: int, size: int,
                 layouts: dict[tuple[str, int], Any]) -> dict[str, Any]:
    """generate -> get_avatar -> render -> classify, for one person: the predicted attributes and hits."""
    from bridge.wire import protocol
    from training.evaluate import attribute_hits, classify_rendered_attributes

    t0 = time.perf_counter()
    made = client.call(protocol.Generate(prompt=person["caption"], seed=seed, steps=steps, guidance=guidance),
                       timeout_s=1800.0)
    avatar_id = made.header["avatar_id"]
    got, layout, regions, views = fetch_and_render(client, avatar_id, size, layouts)
    predicted = classify_rendered_attributes(views, layout, regions)
    meta = got.header["meta"]
    return {"caption": person["caption"], "group": person["group"], "avatar_id": avatar_id, "model": meta["model"],
            "predicted": predicted, "hits": attribute_hits(predicted, person["attributes"]),
            "truth": {k: person["attributes"][k] for k in ATTRIBUTES},
            "seconds": time.perf_counter() - t0, "views": views, "avatar": got.arrays}


def accuracy(results: list[dict[str, Any]]) -> dict[str, dict[str, tuple[int, int]]]:
    """{group: {attribute: (hits, scored)}} for groups "seen", "heldout" and "all"."""
    table: dict[str, dict[str, list[int]]] = {}
    for r in results:
        for group in (r["group"], "all"):
            for key, ok in r["hits"].items():
                cell = table.setdefault(group, {}).setdefault(key, [0, 0])
                cell[0] += int(ok)
                cell[1] += 1
    return {g: {k: (v[0], v[1]) for k, v in d.items()} for g, d in table.items()}


def mean_accuracy(results: list[dict[str, Any]]) -> float:
    """The fraction of all scored attributes that match (every attribute of every prompt weighs the same)."""
    hits = [ok for r in results for ok in r["hits"].values()]
    return float(np.mean(hits)) if hits else float("nan")


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
