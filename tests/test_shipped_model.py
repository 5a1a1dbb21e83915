"""The model that ships in checkpoints/ (the default of `genlca-backend serve`): it loads by name with no
arguments, generates deterministic, body-shaped avatars in a few seconds on a CPU, and its colours follow
the prompt. Prompt fidelity over many held-out people is measured by `genlca-train eval` (docs/BENCHMARKS.md,
"The shipped model"); here a few fixed prompts are checked with the same classifier."""
from __future__ import annotations

import pytest
import torch

from backend.avatar.tokens import decode
from backend.pipelines.generate import SamplerSettings, generate_tokens
from backend.pipelines.model_bundle import CHECKPOINTS, DEFAULT_MODEL, load_bundle
from training.evaluate import RegionTexels, classify_attributes


@pytest.fixture(scope="module")
def shipped():
    mp = pytest.MonkeyPatch()
    mp.delenv("GENLCA_MODEL", raising=False)  # the suite's tiny random model is not the shipped one
    try:
        yield load_bundle("default")
    finally:
        mp.undo()


def test_the_default_model_ships_in_the_repository_and_describes_itself(shipped):
    assert (CHECKPOINTS / DEFAULT_MODEL / "dit.safetensors").is_file()
    d = shipped.describe()
    assert d["name"] == DEFAULT_MODEL and d["resolution"] == 64 and d["token_channels"] == 12
    assert {"text", "image", "region_edit", "text_edit"} <= set(d["supports"])
    assert "genlca-train" in shipped.note  # the commands that made it travel with it
    assert (CHECKPOINTS / DEFAULT_MODEL / "dit.safetensors").stat().st_size < 40 * 2 ** 20


def test_generates_a_deterministic_standing_adult(shipped):
    settings = SamplerSettings(steps=10, guidance=4.0)
    a, _ = generate_tokens(shipped, "a woman in a red t-shirt and blue trousers", seed=1, settings=settings)
    b, _ = generate_tokens(shipped, "a woman in a red t-shirt and blue trousers", seed=1, settings=settings)
    assert torch.equal(a, b)
    with torch.no_grad():
        g = decode(a, shipped.layout, shipped.decoder)
    z = g.means[:, 2]
    # the template is 1.67 m; hair and shoes may add a little, a trained model does not scatter splats
    assert 1.4 < float(z.quantile(0.999) - z.quantile(0.001)) < 2.0 and float(z.quantile(0.001)) > -0.1
    assert float(g.opacities.median()) > 0.5
