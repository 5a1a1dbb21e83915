#!/usr/bin/env bash
# Reproduces the round-3 successors of the shipped model checkpoints/genlca-small from an empty checkout, on
# a CPU machine: data generation -> DiT training (stages 3 and 4 of the ledger) -> package -> eval.
# Stage 3 continues the stage-2 package (checkpoints/genlca-small, sha256 95a681cbcf05), stage 4 the stage-3
# package, so the ledger adds up; it is in the package note and in docs/BENCHMARKS.md ("Prompt fidelity: the
# recipe"). Stages 1-2 of the ledger: training/configs/diffusion_small.yaml.
#
#   scripts/train_shipped_model.sh              # everything (about 2.2 h of training on one quiet core)
#   STAGE=eval scripts/train_shipped_model.sh   # only the evaluation of the package in checkpoints/
# Environment: WORKERS (data generation processes, default 2), INIT (the package stage 3 starts from,
# default checkpoints/genlca-small), OUT (where the new package goes, default runs/genlca-small-stage4), STOP4
# (the step stage 4 stops at, default 1600: the shipped run stopped there for the evaluation; lr had decayed
# to 3.8e-5 from 2e-4).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
scripts/setup_env.sh main
WORKERS=${WORKERS:-2}
INIT=${INIT:-checkpoints/genlca-small}
OUT=${OUT:-runs/genlca-small-stage4}
STOP4=${STOP4:-1600}
STAGE=${STAGE:-all}
mkdir -p runs/eval logs

if [ "$STAGE" = all ]; then
  # 3,000 synthetic people (generator v2), token shards straight from the generator: ~2,400 train people,
  # ~300 val/test and ~330 held-out-combination people for the evaluation. Deterministic and resumable.
  $PY -m training.cli synth --tokens-only --people 3000 --seed 0 --workers "$WORKERS" \
      --shards data/people_s0 --shard-size 250 --no-progress
  # stage 3 (session of 2026-12-07): 350 steps of the round-3 recipe from the stage-2 package
  $PY -m training.cli diffusion --config training/configs/diffusion_small_stage3.yaml --set train.init="$INIT" \
      --stop-at 350
  $PY -m training.cli package --dit runs/stage3/last.safetensors --out runs/genlca-small-stage3 --weights ema \
      --dtype float16 --note "stage 3 of genlca-small: scripts/train_shipped_model.sh"
  # stage 4 (session of 2026-12-08): the same recipe from the stage-3 package, a new cosine over 2,000 steps, seed 4
  $PY -m training.cli diffusion --config training/configs/diffusion_small_stage3.yaml \
      --set train.init=runs/genlca-small-stage3 --set train.steps=2000 --set train.seed=4 \
      --set train.out_dir=runs/stage4 --stop-at "$STOP4"
  $PY -m training.cli package --dit runs/stage4/last.safetensors --out "$OUT" --weights ema --dtype float16 \
      --note "stage 4 of genlca-small: scripts/train_shipped_model.sh (training/configs/diffusion_small_stage3.yaml \
from the stage-3 package, 2,000-step cosine stopped at step $STOP4, seed 4; data: genlca-train synth --tokens-only \
--people 3000 --seed 0, generator v2)"
  cp "$INIT/tokenizer.safetensors" "$OUT/tokenizer.safetensors"  # the small tokenizer is unchanged
  MODEL=$OUT
else
  MODEL=${MODEL:-checkpoints/genlca-small}
fi

# Every attribute the prompt names, >= 100 people per group, 95 % intervals, the readers' ceiling.
$PY -m training.cli eval --checkpoints "$MODEL/dit.safetensors" --shards data/people_s0 \
    --splits val test heldout-combo --max-people 110 --samples 1 --steps 25 --threads 2 \
    --out runs/eval/shipped.json --markdown runs/eval/shipped.md
$PY -m training.cli diagnose --dit "$MODEL" --shards data/people_s0 --people 32 \
    --out runs/eval/diagnose.json --markdown runs/eval/diagnose.md
