"""training/scaling.py: each size trained once (a rerun skips it, a killed one resumes exactly), the table
and the curve written, bad sizes and foreign output folders refused. Tiny model, R = 32, 12 clips."""
from __future__ import annotations

import dataclasses
import json

import pytest

from tests.diffusion_shards import make_shards, tiny_config
from training import scaling
from training import train_diffusion as td

EVAL = dict(eval_splits=["train"], max_people=2, eval_steps=2, samples=1, image_size=48)


@pytest.fixture(scope="module")
def curve(tmp_path_factory):
    """Sizes 4 and 8, 3 steps at batch 4; size 8 was killed after step 2 before the curve was asked for."""
    tmp = tmp_path_factory.mktemp("scaling")
    shards = make_shards(tmp / "shards", n=12)
    base = tiny_config(shards, tmp / "unused", steps=3, global_batch=4)
    ds = td.load_dataset(shards, ["train"])
    out = tmp / "out"
    td.train(scaling.size_config(base, str(shards), 8, out / "n8"), stop_at=2, dataset=td.subset(ds, list(range(8))))
    first = scaling.run_scaling(base, str(shards), [8, 4], out, png=tmp / "curve.png", **EVAL)
    return {"tmp": tmp, "shards": shards, "base": base, "ds": ds, "out": out, "first": first}


def test_each_size_trained_once_and_a_killed_one_resumed(curve):
    assert curve["first"]["actions"] == {"4": "trained", "8": "resumed from step 2"}
    steps = [json.loads(line)["step"] for line in (curve["out"] / "n8" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # the resumed process went on from step 3, it did not start over
    for n in (4, 8):
        state = scaling.checkpoint_state(curve["out"] / f"n{n}" / "last.safetensors")
        assert state["step"] == 3 and state["dataset_size"] == n


def test_resumed_size_equals_an_uninterrupted_run(curve):
    whole = curve["tmp"] / "whole"
    losses = td.train(scaling.size_config(curve["base"], str(curve["shards"]), 8, whole),
                      dataset=td.subset(curve["ds"], list(range(8))))
    resumed = scaling.read_losses(curve["out"] / "n8" / "metrics.jsonl")
    assert [resumed[s] for s in (1, 2, 3)] == losses  # exact resume: bit-equal losses (same ops, same order)


def test_rerun_skips_training_and_evaluation(curve):
    evals = {n: (curve["out"] / f"n{n}" / "eval.json").stat().st_mtime_ns for n in (4, 8)}
    ckpts = {n: (curve["out"] / f"n{n}" / "last.safetensors").stat().st_mtime_ns for n in (4, 8)}
    again = scaling.run_scaling(curve["base"], str(curve["shards"]), [4, 8], curve["out"], **EVAL)
    assert again["actions"] == {"4": "skipped", "8": "skipped"}
    for n in (4, 8):
        assert (curve["out"] / f"n{n}" / "eval.json").stat().st_mtime_ns == evals[n]
        assert (curve["out"] / f"n{n}" / "last.safetensors").stat().st_mtime_ns == ckpts[n]
    assert [r["metrics"] for r in again["rows"]] == [r["metrics"] for r in curve["first"]["rows"]]


def test_table_json_and_png(curve):
    rows = curve["first"]["rows"]
    assert [r["people"] for r in rows] == [4, 8]
    # epochs = steps / (people // batch): 3 / 1 and 3 / 2; the budget in samples is the same for both
    assert [r["epochs"] for r in rows] == [3.0, 1.5] and {r["samples"] for r in rows} == {12}
    for r in rows:
        losses = scaling.read_losses(curve["out"] / f"n{r['people']}" / "metrics.jsonl")
        assert r["final_loss"] == pytest.approx(sum(losses.values()) / 3, rel=1e-12)  # tail of 50 covers all 3
        assert 0.0 <= r["hole_fraction"]["back"] <= 1.0 and r["psnr_db"]["back"] > 0
    saved = json.loads((curve["out"] / "scaling.json").read_text())
    assert saved["sizes"] == [4, 8] and saved["evaluation"]["max_people"] == 2 and len(saved["held_out_people"]) == 2
    table = (curve["out"] / "scaling.md").read_text().splitlines()
    assert table[0].startswith("| training people | epochs seen |")
    assert table[3].startswith("| 4 | 3.0 | ") and table[4].startswith("| 8 | 1.5 | ")
    assert (curve["tmp"] / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_foreign_folder_bad_sizes_and_repeated_people_are_refused(curve):
    longer = dataclasses.replace(curve["base"], train=dataclasses.replace(curve["base"].train, steps=5))
    with pytest.raises(scaling.ScalingError, match="another recipe"):
        scaling.run_scaling(longer, str(curve["shards"]), [4], curve["out"], **EVAL)
    with pytest.raises(scaling.ScalingError, match="only 12 training clips"):
        scaling.check_people(curve["ds"], [4, 13])
    with pytest.raises(scaling.ScalingError, match="distinct positive"):
        scaling.check_people(curve["ds"], [4, 4])
    twins = dataclasses.replace(curve["ds"], metas=[{"person_id": f"p{i // 2}"} for i in range(12)])
    with pytest.raises(scaling.ScalingError, match="repeat people"):
        scaling.check_people(twins, [4])


def test_cli_registers_the_command():
    from training.cli import build_parser

    args = build_parser().parse_args(["scaling", "--config", "c.yaml", "--shards", "s", "--out", "o"])
    assert args.sizes == [100, 200, 400, 800] and args.run is scaling.run_cli
