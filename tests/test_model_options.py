"""backend/model_options.py: the shared --model/--steps/--guidance/--threads options, and the two commands that
use them (backend/figures.py, benchmarks/prompt_fidelity.py) parsing and running with them."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from backend import figures
from backend.model_options import add_model_options, use_threads
from training.fidelity import ATTRIBUTES

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: restores torch's thread count


def test_defaults_and_overrides():
    parser = argparse.ArgumentParser()
    add_model_options(parser, steps=10, guidance=3.0, threads=2, note="docs: ")
    args = parser.parse_args([])
    assert (args.model, args.steps, args.guidance, args.threads) == ("default", 10, 3.0, 2)
    args = parser.parse_args(["--model", "genlca-small", "--steps", "5", "--guidance", "1.5", "--threads", "0"])
    assert (args.model, args.steps, args.guidance, args.threads) == ("genlca-small", 5, 1.5, 0)
    text = parser.format_help()
    assert "docs: Euler steps per sample (default: 10)" in " ".join(text.split())


def test_use_threads_sets_leaves_and_refuses():
    use_threads(2)
    assert torch.get_num_threads() == 2
    use_threads(0)  # torch's setting stays as it is
    assert torch.get_num_threads() == 2
    with pytest.raises(ValueError, match="expected --threads >= 0, got -1"):
        use_threads(-1)
    use_threads(1)
    assert torch.get_num_threads() == 1


def test_figures_reject_a_bad_thread_count_before_any_work(tmp_path):
    out = tmp_path / "turntable.png"
    with pytest.raises(ValueError, match="got -3"):
        figures.main(["turntable", "--out", str(out), "--threads", "-3"])
    assert not out.exists()


def test_prompt_fidelity_command_runs_one_prompt_through_the_wire(tmp_path):
    """`python -m benchmarks.prompt_fidelity` with one prompt on the session's tiny random model ($GENLCA_MODEL,
    tests/conftest.py, inherited): a real server on 127.0.0.1, generate -> get_avatar -> render; the JSON holds
    one scored person. Run as the command it is: a test never imports the benchmarks package."""
    out = tmp_path / "fidelity.json"
    run = subprocess.run([sys.executable, "-m", "benchmarks.prompt_fidelity", "--prompts", "1", "--heldout", "0",
                          "--steps", "1", "--size", "32", "--threads", "1", "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    (result,) = json.loads(out.read_text())
    assert result["group"] == "seen" and set(result["hits"]) <= set(ATTRIBUTES)
    assert "| | all | 1 |" in run.stdout
