"""`genlca-train scaling`: the data-scaling curve — one DiT recipe trained on growing numbers of people.

    genlca-train scaling --config training/configs/diffusion_tiny.yaml --shards data/dit_train_shards \
        --sizes 100 200 400 800 --out runs/scaling --set train.steps=400 --set train.global_batch=16 \
        --set train.threads=1 --png docs/images/data_scaling.png

For every size N the same recipe (config, seed, steps, global batch: a fixed budget of steps x batch
training samples, whatever N is) trains on the first N training clips of the shards (`data.max_items`:
deterministic, and a prefix, so every set holds the smaller ones) into OUT/nN/. The shards must hold
one clip per person among those N; it is checked. Then every size is evaluated on the same held-out
people with the same sampler and seeds (training/evaluate.py) and OUT/scaling.json, OUT/scaling.md and
a PNG curve are written.

Resumable: a size whose OUT/nN/last.safetensors is at the final step is not trained again, one that
stopped part-way resumes through the trainer's exact resume, and an evaluation already in OUT/nN/eval.json
for the same checkpoint and settings is reused. A lock file per size (OUT/nN/lock, flock) lets two
processes work on different sizes at once without touching the same one.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bridge.files.atomic import write_atomic
from training import runtime


class ScalingError(RuntimeError):
    """Bad sizes, a data set that cannot serve them, or an output folder holding another recipe."""


# ------------------------------------------------------------------------------ locks
def size_lock(folder: Path) -> contextlib.AbstractContextManager[None]:
    """Exclusive lock on one size's folder; ScalingError when another live process holds it."""
    return runtime.folder_lock(folder, busy=lambda f: ScalingError(f"{f}: another process is working on this size"))


def checkpoint_state(path: Path) -> dict[str, Any] | None:
    """(step, dataset size, train config) from a checkpoint's metadata, without reading its tensors."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    config, train = json.loads(meta.get("config", "{}")), json.loads(meta.get("train", "{}"))
    return {"step": int(train.get("step", 0)), "dataset_size": config.get("dataset_size"),
            "train_config": config.get("train_config", {})}


def read_losses(metrics: Path) -> dict[int, float]:
    """step -> loss from metrics.jsonl (a resumed run rewrites the steps after its checkpoint: last one wins)."""
    out: dict[int, float] = {}
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                out[int(row["step"])] = float(row["loss"])
    return out


# ------------------------------------------------------------------------------ training
def size_config(base: Any, shards: str, n: int, out: Path) -> Any:
    """The recipe for size n: the base config with its data prefix and output folder."""
    cfg = dataclasses.replace(base, data=dataclasses.replace(base.data, shards=shards, max_items=n),
                              train=dataclasses.replace(base.train, out_dir=str(out)))
    return cfg


def check_people(ds: Any, sizes: list[int]) -> None:
    """Every size fits in the data and its clips are distinct people."""
    if len(set(sizes)) != len(sizes) or any(n < 1 for n in sizes):
        raise ScalingError(f"sizes must be distinct positive numbers of people, got {sizes}")
    if max(sizes) > len(ds):
        raise ScalingError(f"size {max(sizes)} asked for, but the shards hold only {len(ds)} training clips")
    ids = [m.get("person_id", m.get("person", f"clip{i}")) for i, m in enumerate(ds.metas[:max(sizes)])]
    if len(set(ids)) != len(ids):
        raise ScalingError("the first training clips repeat people; data.max_items would not count people")


def train_size(base: Any, shards: str, ds_all: Any, n: int, out: Path, log=print) -> str:
    """Train (or finish) size n in `out`; returns "trained", "resumed from step S" or "skipped"."""
    from training import train_diffusion as td

    cfg = size_config(base, shards, n, out)
    ckpt = out / "last.safetensors"
    state = checkpoint_state(ckpt)
    if state is not None:
        want = {k: getattr(cfg.train, k) for k in ("steps", "global_batch", "seed", "lr", "visibility_mode")}
        have = {k: state["train_config"].get("train", {}).get(k) for k in want}
        if have != want or state["dataset_size"] != n:
            raise ScalingError(f"{out}: holds another recipe ({have}, {state['dataset_size']} people); "
                               f"expected {want}, {n} people: use another --out")
        if state["step"] >= cfg.train.steps:
            return "skipped"
    action = f"resumed from step {state['step']}" if state else "trained"
    log(f"[scaling] n={n}: {action} -> {cfg.train.steps} steps in {out}")
    td.train(cfg, resume=True, dataset=td.subset(ds_all, list(range(n))))
    return action


# ------------------------------------------------------------------------------ evaluation
@dataclasses.dataclass
class HeldOut:
    """The held-out people and everything the metrics need, built once for every size."""

    people: list[dict[str, Any]]
    renderer: Any
    regions: Any
    silhouettes: dict[str, Any]
    settings: dict[str, Any]

    @classmethod
    def load(cls, shards: str, splits: list[str], max_people: int, **settings: Any) -> "HeldOut":
        from backend.avatar.template import load_template
        from backend.avatar.uv_layout import load_layout
        from training import evaluate as ev

        people, source = ev.load_people(shards, splits, max_people)
        if not people:
            raise ScalingError(f"{shards}: no held-out people in splits {splits}")
        r, c = people[0]["tokens"].shape[-1], people[0]["tokens"].shape[0]
        layout = load_layout(load_template("anny"), r)
        dec_cfg = ev.decoder_config_from(source, c)
        renderer = ev.Renderer(layout, dec_cfg, settings.get("image_size", 128))
        tmpl = ev.template_tokens(layout, dec_cfg)
        silhouettes = {v: renderer(tmpl, v)[1] >= 0.5 for v in ("back", "legs_back")}
        settings = {"shards": str(shards), "splits": list(splits), "max_people": max_people,
                    "people": [p["clip_id"] for p in people], **settings}
        return cls(people, renderer, ev.RegionTexels.from_layout(layout), silhouettes, settings)

    def ground_truth(self) -> dict[str, Any]:
        from training import evaluate as ev

        return ev.ground_truth_row(self.people, self.renderer, self.regions, self.silhouettes)


def eval_size(held: HeldOut, out: Path, log=print) -> dict[str, Any]:
    """Metrics of out/last.safetensors (EMA weights), cached in out/eval.json for this checkpoint and settings."""
    from backend.models.checkpoint import file_sha256, load_model
    from backend.models.conditioning import load_text_encoder
    from backend.models.dit import dit_from_checkpoint
    from training import evaluate as ev

    ckpt_path = out / "last.safetensors"
    key = {"checkpoint_sha256": file_sha256(ckpt_path), **held.settings}
    cache = out / "eval.json"
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return cached["metrics"]
    log(f"[scaling] evaluating {ckpt_path} on {len(held.people)} held-out people")
    model, ckpt = load_model(ckpt_path, "dit", dit_from_checkpoint)
    encoder = load_text_encoder(ckpt.config.get("text_encoder", "minilm"), int(ckpt.config.get("max_text_tokens", 32)))
    s = held.settings
    metrics = ev.evaluate_checkpoint(model, encoder, held.people, held.renderer, held.regions, held.silhouettes,
                                     s["samples"], s["steps"], s["text_scale"], s["seed"])
    write_atomic(cache, json.dumps({"key": key, "metrics": metrics}, indent=1))
    return metrics


# ------------------------------------------------------------------------------ the table and the curve
def size_row(n: int, out: Path, steps: int, batch: int, metrics: dict[str, Any], tail: int = 50) -> dict[str, Any]:
    """One row of the curve: training facts of size n and its held-out metrics."""
    losses = read_losses(out / "metrics.jsonl")
    last = [losses[s] for s in range(max(1, steps - tail + 1), steps + 1) if s in losses]
    acc = metrics.get("attribute_accuracy", {})
    return {"people": n, "steps": steps, "global_batch": batch, "samples": steps * batch,
            "epochs": steps / runtime.steps_per_epoch(n, batch),
            "final_loss": float(np.mean(last)) if last else float("nan"), "loss_tail_steps": len(last),
            "psnr_db": metrics.get("psnr_db", {}), "hole_fraction": metrics.get("hole_fraction", {}),
            "attr_seen": float(np.mean(list(acc["seen"].values()))) if acc.get("seen") else float("nan"),
            "attr_heldout": float(np.mean(list(acc["heldout"].values()))) if acc.get("heldout") else float("nan"),
            "frechet_region_colour": metrics.get("frechet_region_colour", float("nan")), "metrics": metrics}


def markdown(rows: list[dict[str, Any]], ground_truth: dict[str, Any] | None = None) -> str:
    """The table a studio reads: one line per number of training people."""
    def pair(d: dict[str, float], spec: str) -> str:
        return " / ".join(format(d[v], spec) if v in d else "-" for v in ("back", "legs_back"))

    lines = ["| training people | epochs seen | loss (last 50 steps) | PSNR unseen back / legs dB "
             "| hole fraction back / legs | attr acc seen | attr acc held-out | FD region colour |",
             "|---|---|---|---|---|---|---|---|"]
    if ground_truth:
        acc = ground_truth.get("attribute_accuracy", {})
        mean = {g: f"{np.mean(list(a.values())):.2f}" for g, a in acc.items() if a}
        lines.append(f"| ground truth (reference) | - | - | - | {pair(ground_truth.get('hole_fraction', {}), '.3f')} "
                     f"| {mean.get('seen', '-')} | {mean.get('heldout', '-')} | - |")
    for r in rows:
        lines.append(f"| {r['people']} | {r['epochs']:.1f} | {r['final_loss']:.4f} | {pair(r['psnr_db'], '.2f')} | "
                     f"{pair(r['hole_fraction'], '.3f')} | {r['attr_seen']:.2f} | {r['attr_heldout']:.2f} | "
                     f"{r['frechet_region_colour']:.3f} |")
    return "\n".join(lines) + "\n"


def plot_curve(rows: list[dict[str, Any]], out: str | Path, title: str = "",
               ground_truth: dict[str, Any] | None = None) -> Path:
    """Four panels against the number of training people (log2 axis): PSNR, holes, attributes, FD;
    the ground truth's own hole fraction and attribute accuracy (the metrics' ceiling) as dotted lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["people"] for r in rows]
    fig, axes = plt.subplots(2, 2, figsize=(8, 6), dpi=110)
    panels = [
        (axes[0, 0], "PSNR on unseen regions, dB (higher is better)",
         {"back": [r["psnr_db"].get("back", np.nan) for r in rows],
          "back of legs": [r["psnr_db"].get("legs_back", np.nan) for r in rows]}),
        (axes[0, 1], "hole fraction (lower is better)",
         {"back": [r["hole_fraction"].get("back", np.nan) for r in rows],
          "back of legs": [r["hole_fraction"].get("legs_back", np.nan) for r in rows]}),
        (axes[1, 0], "attribute accuracy (higher is better)",
         {"seen combinations": [r["attr_seen"] for r in rows],
          "held-out combinations": [r["attr_heldout"] for r in rows]}),
        (axes[1, 1], "Fréchet distance, region colours (lower is better)",
         {"FD": [r["frechet_region_colour"] for r in rows]}),
    ]
    gt = ground_truth or {}
    gt_acc = {g: float(np.mean(list(a.values()))) for g, a in gt.get("attribute_accuracy", {}).items() if a}
    references = {axes[0, 1]: [gt.get("hole_fraction", {}).get(v) for v in ("back", "legs_back")],
                  axes[1, 0]: [gt_acc.get(g) for g in ("seen", "heldout")]}
    for ax, label, series in panels:
        for k, (name, ys) in enumerate(series.items()):
            line = ax.plot(n, ys, marker="o", label=name)[0]
            ref = references.get(ax, [None, None])[k] if ax in references else None
            if ref is not None:
                ax.axhline(ref, color=line.get_color(), linestyle=":", linewidth=1, label=f"{name}: ground truth")
        ax.set_xscale("log", base=2)
        ax.set_xticks(n)
        ax.set_xticklabels([str(v) for v in n])
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("training people")
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=7)
    axes[1, 0].set_ylim(0.0, 1.05)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    os.replace(tmp, out)
    return out


# ------------------------------------------------------------------------------ the command
def run_scaling(base: Any, shards: str, sizes: list[int], out: str | Path, *, eval_splits: list[str],
                max_people: int, eval_steps: int, samples: int, text_scale: float = 4.0, seed: int = 0,
                image_size: int = 128, png: str | Path | None = None, log=print) -> dict[str, Any]:
    """Train and evaluate every size (skipping finished work), then write scaling.json/.md (and the PNG)."""
    from training import train_diffusion as td

    out = Path(out)
    sizes = sorted(sizes)
    ds_all = td.load_dataset(shards, base.data.splits)
    check_people(ds_all, sizes)
    held = HeldOut.load(shards, eval_splits, max_people, steps=eval_steps, samples=samples, text_scale=text_scale,
                        seed=seed, image_size=image_size)
    actions, rows = {}, []
    for n in sizes:  # each size trained then evaluated, so that a cut-short run still has whole rows
        with size_lock(out / f"n{n}"):
            actions[n] = train_size(base, shards, ds_all, n, out / f"n{n}", log)
            metrics = eval_size(held, out / f"n{n}", log)
        rows.append(size_row(n, out / f"n{n}", base.train.steps, base.train.global_batch, metrics))
    gt = held.ground_truth()
    result = {"sizes": sizes, "actions": {str(k): v for k, v in actions.items()}, "recipe": _recipe(base),
              "evaluation": {k: v for k, v in held.settings.items() if k != "people"},
              "held_out_people": held.settings["people"], "ground_truth": gt, "rows": rows}
    write_atomic(out / "scaling.json", json.dumps(result, indent=1))
    write_atomic(out / "scaling.md", markdown(rows, gt))
    if png:
        plot_curve(rows, png, title=f"{base.model.preset} DiT, {base.train.steps} steps x batch "
                                    f"{base.train.global_batch}; {len(held.people)} held-out people", ground_truth=gt)
    return result


def _recipe(cfg: Any) -> dict[str, Any]:
    from backend.config import to_dict

    d = to_dict(cfg)
    d["data"].pop("max_items", None)
    d["train"].pop("out_dir", None)
    return d


def add_subparser(sub) -> None:
    p = sub.add_parser("scaling", help="data-scaling curve: one DiT recipe on growing numbers of training people")
    p.add_argument("--config", required=True, help="DiT YAML (training/configs/diffusion_*.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--shards", required=True, help="token shards: training clips and held-out people")
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 200, 400, 800], help="numbers of training people")
    p.add_argument("--out", required=True, help="folder for nN/ runs, scaling.json and scaling.md")
    p.add_argument("--png", default=None, help="write the curve here (PNG)")
    p.add_argument("--eval-splits", nargs="+", default=["val", "heldout-combo"])
    p.add_argument("--max-people", type=int, default=24, help="held-out people per split")
    p.add_argument("--eval-steps", type=int, default=25, help="sampler steps (Euler)")
    p.add_argument("--samples", type=int, default=1, help="samples per held-out prompt")
    p.add_argument("--text-scale", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0, help="evaluation seed")
    p.set_defaults(run=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    import torch

    from backend.config import apply_overrides, load_config
    from training.train_diffusion import DiffusionConfig

    base = apply_overrides(load_config(args.config, DiffusionConfig), args.set)
    if base.train.threads > 0:
        torch.set_num_threads(base.train.threads)
    try:
        result = run_scaling(base, args.shards, args.sizes, args.out, eval_splits=args.eval_splits,
                             max_people=args.max_people, eval_steps=args.eval_steps, samples=args.samples,
                             text_scale=args.text_scale, seed=args.seed, png=args.png)
    except ScalingError as exc:
        print(f"genlca-train scaling: {exc}", file=sys.stderr)
        return 2
    print(markdown(result["rows"], result["ground_truth"]))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="genlca-train scaling")
    add_subparser(parser.add_subparsers(dest="command", required=True))
    return run_cli(parser.parse_args(["scaling", *(argv or sys.argv[1:])]))


if __name__ == "__main__":
    sys.exit(main())
