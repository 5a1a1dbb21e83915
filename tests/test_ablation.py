"""training/ablation.py: every (mode, seed) run trained once (a rerun skips it and reuses its evaluation, a
killed one resumes exactly, one another process holds is left to it and done last), the table, JSON and
figure written with the seeds pooled and the paired difference; the fill check and foreign folders refused.
Tiny model, 30 synthetic people (27 train, 3 held out), 3 steps at batch 4, 2 modes x 2 seeds."""
from __future__ import annotations

import dataclasses
import fcntl
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from training import ablation
from training import train_diffusion as td

pytestmark = pytest.mark.timeout(1800)  # the set-up: ~25 CPU-seconds (4 runs trained, 4 evaluated), many times
                                        # that in wall time on a loaded machine
EVAL = dict(eval_splits=["val", "test", "heldout-combo"], max_people=2, eval_steps=2, samples=1, image_size=48)
MODES, SEEDS = ["aware", "naive"], [0, 1]


def base_config(shards: Path) -> td.DiffusionConfig:
    """The tiny preset made smaller (D 64, depth 2), hashing text encoder, the ablation's fill defaults."""
    cfg = td.DiffusionConfig()
    cfg.data = dataclasses.replace(cfg.data, shards=str(shards), unseen_fill="mean", statistics="atlas")
    cfg.condition.text_encoder = "hashing"
    cfg.model.hidden_size, cfg.model.depth = 64, 2
    cfg.train = dataclasses.replace(cfg.train, global_batch=4, steps=3, warmup=1, log_every=1000, ckpt_every=1000,
                                    device="cpu", progress=False, threads=1)
    return cfg


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """naive-s0 killed after step 2 before the command ran; aware-s1 held by "another process" (a lock
    released when the command says it will come back to it)."""
    from training.data.synthetic import SynthConfig, generate_shards

    threads = torch.get_num_threads()
    tmp = tmp_path_factory.mktemp("ablation")
    shards = tmp / "shards"
    generate_shards(SynthConfig(seed=3), 30, shards, workers=1, shard_size=16, progress=False)
    base = base_config(shards)
    ds = td.load_dataset(shards, ["train"])
    out = tmp / "out"
    td.train(ablation.run_config(base, str(shards), "naive", 0, out / "naive-s0"), stop_at=2, dataset=ds)
    (out / "aware-s1").mkdir(parents=True)
    other = open(out / "aware-s1" / "lock", "w")
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    said = []

    def log(line: str) -> None:
        said.append(line)
        if "another process holds it" in line:
            other.close()  # the other process finished with it

    first = ablation.run_ablation(base, str(shards), MODES, SEEDS, out, png=tmp / "ablation.png", log=log, **EVAL)
    yield {"tmp": tmp, "shards": shards, "base": base, "ds": ds, "out": out, "first": first, "said": said}
    torch.set_num_threads(threads)  # the trainer set train.threads = 1 for the process


def test_each_run_trained_once_a_killed_one_resumed_a_held_one_left_to_its_owner(study):
    assert study["first"]["actions"] == {"aware-s0": "trained", "naive-s0": "resumed from step 2",
                                         "naive-s1": "trained", "aware-s1": "trained (after another process)"}
    trained = [line.split(":")[0] for line in study["said"] if "steps" in line and "->" in line]
    assert trained == ["[ablation] aware-s0", "[ablation] naive-s0", "[ablation] naive-s1", "[ablation] aware-s1"]
    steps = [json.loads(line)["step"] for line in (study["out"] / "naive-s0" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # the second invocation went on from step 3, it did not start over
    for mode in MODES:
        for seed in SEEDS:
            state = ablation.checkpoint_state(study["out"] / f"{mode}-s{seed}" / "last.safetensors")
            assert state["step"] == 3 and state["train_config"]["train"]["visibility_mode"] == mode
            assert state["train_config"]["train"]["seed"] == seed


def test_resumed_run_equals_an_uninterrupted_one(study):
    whole = study["tmp"] / "whole"
    losses = td.train(ablation.run_config(study["base"], str(study["shards"]), "naive", 0, whole), dataset=study["ds"])
    resumed = ablation.read_losses(study["out"] / "naive-s0" / "metrics.jsonl")
    assert [resumed[s] for s in (1, 2, 3)] == losses  # bit-equal losses
    a, b = load_file(str(whole / "last.safetensors")), load_file(str(study["out"] / "naive-s0" / "last.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # weights, EMA, optimizer state: identical


def test_rerun_skips_training_and_reuses_evaluations(study):
    runs = [f"{m}-s{s}" for m in MODES for s in SEEDS]
    mtimes = {r: [(study["out"] / r / f).stat().st_mtime_ns for f in ("eval.json", "last.safetensors")] for r in runs}
    said = []
    again = ablation.run_ablation(study["base"], str(study["shards"]), MODES, SEEDS, study["out"], log=said.append,
                                  **EVAL)
    assert again["actions"] == {r: "skipped" for r in runs} and said == []  # nothing trained, nothing evaluated
    assert {r: [(study["out"] / r / f).stat().st_mtime_ns for f in ("eval.json", "last.safetensors")]
            for r in runs} == mtimes
    assert json.dumps(again["by_mode"], sort_keys=True) == json.dumps(study["first"]["by_mode"], sort_keys=True)


def test_table_json_and_png(study):
    result = json.loads((study["out"] / "ablation.json").read_text())
    assert result["modes"] == MODES and result["seeds"] == SEEDS and len(result["held_out_people"]) == 3
    assert result["fill"]["unseen_fill"] == "mean" and result["fill"]["statistics"] == "atlas"
    assert max(result["fill"]["unseen_max_sigma"]) <= 6.0
    assert result["probe_fitted_on"] == 27  # every training person; none of them scored
    for mode in MODES:
        pooled, per_seed = result["by_mode"][mode]["pooled"], result["by_mode"][mode]["per_seed"]
        for key in ("psnr_db_back", "psnr_db_legs_back", "hole_fraction_back", "attr_seen", "attr_heldout",
                    "colour_noise_ratio", "floaters_ratio"):
            lo, hi = pooled[key]["interval"]
            assert lo <= pooled[key]["mean"] <= hi, (mode, key)
        # the same people in every run: the pooled mean of a per-person metric is the mean of the seeds' means
        assert pooled["psnr_db_back"]["mean"] == pytest.approx(
            sum(per_seed[str(s)]["psnr_db_back"]["mean"] for s in SEEDS) / 2, rel=1e-9)
        for seed in SEEDS:  # a seed's row is evaluate.py's own numbers for that run
            run = result["by_mode"][mode]["runs"][f"{mode}-s{seed}"]
            assert per_seed[str(seed)]["psnr_db_back"]["mean"] == pytest.approx(run["psnr_db"]["back"], rel=1e-9)
            assert per_seed[str(seed)]["attr_seen"]["interval"] == pytest.approx(run["mean_accuracy"]["seen"]["interval"])
            assert per_seed[str(seed)]["floaters_ratio"]["mean"] == pytest.approx(run["visual"]["floaters_ratio"])
    diff = result["differences"]["aware - naive"]
    aware, naive = result["by_mode"]["aware"]["pooled"], result["by_mode"]["naive"]["pooled"]
    for key in ("psnr_db_back", "psnr_db_legs_back", "hole_fraction_back", "hole_fraction_legs_back"):
        assert diff[key]["mean"] == pytest.approx(aware[key]["mean"] - naive[key]["mean"], abs=1e-9)
        assert diff[key]["interval"][0] <= diff[key]["mean"] <= diff[key]["interval"][1]
    table = (study["out"] / "ablation.md").read_text()
    assert "`data.unseen_fill: mean`, `data.statistics: atlas`" in table
    lines = table.splitlines()
    rows = [line.split(" | ")[0] for line in lines if line.startswith("| ")]
    assert rows[:6] == ["| run", "| ground truth (reference)", "| **aware** (seeds pooled)", "| aware s0",
                        "| aware s1", "| **naive** (seeds pooled)"]
    assert any(line.startswith("| aware - naive | ") for line in lines)
    assert (study["tmp"] / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fill_check_and_foreign_folder(study):
    ds, base = study["ds"], study["base"]
    raw = dataclasses.replace(base, data=dataclasses.replace(base.data, unseen_fill="transparent_mean",
                                                             statistics="visible"))
    with pytest.raises(ablation.AblationError, match=r"naive input reaches \d+\.\d sigma on channel 6"):
        ablation.check_fill(raw, ds, ["aware", "naive"], 6.0)  # the trainer's default: opacity 0.1 in unseen texels
    assert ablation.check_fill(raw, ds, ["aware"], 6.0)["checked_for"] == []  # aware alone is not checked
    assert ablation.check_fill(base, ds, MODES, 6.0)["worst_channel"] in range(12)
    longer = dataclasses.replace(base, train=dataclasses.replace(base.train, steps=5))
    folder = study["out"] / "aware-s0"
    with pytest.raises(ablation.AblationError, match="another recipe"):
        ablation.train_run(ablation.run_config(longer, str(study["shards"]), "aware", 0, folder), ds, folder)
    with pytest.raises(ablation.AblationError, match="modes must be distinct"):
        ablation.run_ablation(base, str(study["shards"]), ["aware", "blind"], [0], study["out"], **EVAL)


def test_cli_registers_the_command_with_the_fill_defaults():
    from training.cli import build_parser

    args = build_parser().parse_args(["ablation", "--config", "c.yaml", "--shards", "s", "--out", "o"])
    assert args.modes == ["aware", "loss_mask", "naive"] and args.seeds == [0, 1] and args.run is ablation.run_cli
    config = str(Path(ablation.__file__).parent / "configs" / "diffusion_tiny.yaml")
    cfg = ablation.base_config(config, [])
    assert (cfg.data.unseen_fill, cfg.data.statistics) == ("mean", "atlas")
    assert ablation.base_config(config, ["data.unseen_fill=zero"]).data.unseen_fill == "zero"  # --set wins
