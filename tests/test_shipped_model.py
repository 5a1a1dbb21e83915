"""The model that ships in checkpoints/ (the default of `genlca-backend serve`): it loads by name with no
arguments, generates deterministic, body-shaped avatars in a few seconds on a CPU, and its colours follow
the prompt. Prompt fidelity over many held-out people is measured by `genlca-train eval` (docs/BENCHMARKS.md,
"The shipped model") and through the wire by `benchmarks/prompt_fidelity.py` (on training/fidelity.py); here a few of its prompts run
through real sockets (generate -> get_avatar -> render front and back -> colours read off the frames)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.avatar.tokens import decode
from backend.pipelines.generate import SamplerSettings, generate_tokens
from backend.pipelines.model_bundle import CHECKPOINTS, DEFAULT_MODEL, load_bundle
from training.fidelity import (ATTRIBUTES, KEPT_REGIONS, backend_client, check_person, edit_pairs, fidelity_people,
                               mean_accuracy, run_pair)

# Prompt fidelity through the wire: the first FIDELITY_PROMPTS prompts of training/fidelity.py `fidelity_people` (the
# last of them a held-out combination), FIDELITY_STEPS Euler steps, guidance 4, seed 0, 128 px renders. The
# fraction of scored attributes (top, bottom, shoes and hair colour; hair not on bald people) that match the
# prompt, measured for genlca-small (stage 4, aa5d19e78b51; one torch thread): 11 of the 15 scored (stage 2: 12), against
# chance of about 0.13 (1/14 for a garment colour, 1/6 for shoes and hair); the assert allows two hits fewer,
# since another CPU's float rounding may turn a borderline colour the other way. Set for each newly shipped
# model with `python -m benchmarks.prompt_fidelity --model NAME --prompts 4 --heldout 1 --steps 10` (its "all" mean).
FIDELITY_PROMPTS = 4
FIDELITY_STEPS = 10
MEASURED_FIDELITY = 11 / 15
MIN_FIDELITY = MEASURED_FIDELITY - 2 / 15


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


@pytest.fixture(scope="module")
def through_the_wire():
    """The fidelity prompts through a real backend on 127.0.0.1 serving the shipped package, and the first
    prompt sent once more with the same seed."""
    people = fidelity_people(FIDELITY_PROMPTS, heldout=1)
    layouts: dict = {}
    with backend_client(str(CHECKPOINTS / DEFAULT_MODEL)) as client:
        run = [check_person(client, p, steps=FIDELITY_STEPS, guidance=4.0, seed=0, size=128, layouts=layouts)
               for p in people]
        again = check_person(client, people[0], steps=FIDELITY_STEPS, guidance=4.0, seed=0, size=128, layouts=layouts)
    return people, run, again


def test_attributes_are_read_off_the_renders_of_every_prompt(through_the_wire):
    people, run, _ = through_the_wire
    assert [r["group"] for r in run] == ["seen"] * (FIDELITY_PROMPTS - 1) + ["heldout"]
    for person, r in zip(people, run):
        assert r["model"]["name"] == DEFAULT_MODEL and r["caption"] == person["caption"]
        # every region shows in the front or back render of a body-shaped avatar, so each gets a colour name
        assert set(r["predicted"]) == set(ATTRIBUTES) and None not in r["predicted"].values()
        scored = set(ATTRIBUTES) - ({"hair_colour"} if person["attributes"]["hair_style"] == "bald" else set())
        assert set(r["hits"]) == scored
        for view in r["views"]:
            assert view.rgb.dtype == np.uint8 and view.rgb.shape == (128, 128, 3)
            assert (view.alpha >= 128).mean() > 0.05  # the avatar covers the frame's centre, not a few splats


def test_same_request_and_seed_give_a_bit_identical_avatar_and_the_same_reading(through_the_wire):
    _, run, again = through_the_wire
    assert again["avatar_id"] != run[0]["avatar_id"]
    assert set(again["avatar"]) == set(run[0]["avatar"])
    for name, array in run[0]["avatar"].items():
        assert np.array_equal(array, again["avatar"][name]), name
    for a, b in zip(run[0]["views"], again["views"]):
        assert np.array_equal(a.rgb, b.rgb) and np.array_equal(a.alpha, b.alpha)
    assert again["predicted"] == run[0]["predicted"]


def test_prompt_fidelity_on_the_renders_is_at_least_the_shipped_models(through_the_wire):
    _, run, _ = through_the_wire
    assert mean_accuracy(run) >= MIN_FIDELITY


# Text edit through the wire: person EDIT_PAIR of training/fidelity.py `edit_pairs` ("... in a navy
# long-sleeve shirt ..."), generated and then edited to a yellow shirt with the caption otherwise unchanged, in
# the EDIT_REGION mode (region "auto": the garment the changed words name is masked, found on the source by its
# colour where the DiT's difference map points, and, since only a colour word changed, recoloured; every other
# texel bit-identical; docs/BENCHMARKS.md "Text edit through the wire"), EDIT_STEPS steps, guidance 4, seed 0.
# Over 12 people (top and bottom) the shipped model read the new colour in 11 of 12 such edits with every kept
# region, arms and hands included, within 1.0 dE00, where a whole-body noise edit moves them by 8-17 dE00.
# Measured for genlca-small (stage 4, aa5d19e78b51; one torch thread), CIEDE2000 between the source's and the
# edit's region-median Lab:
# MEASURED_KEPT_DE00 for the regions the edit should keep, MEASURED_EDITED_DE00 on the torso. A request is
# bit-identical on one CPU, so only another CPU's float rounding can move these numbers, by far less than one
# dE00; the margin of 2 dE00 (about twice a just-noticeable difference) absorbs that (and a texel at the mask's
# border that rounds the other way) and still fails an edit that visibly moves a kept region. Set for each newly
# shipped model with `python -m benchmarks edit_fidelity --model NAME --pairs 6 --strengths 1.0 --steps 10
# --region auto` (its row EDIT_PAIR + 1).
EDIT_PAIR = 5
EDIT_REGION = "auto"
EDIT_STRENGTH = 1.0
EDIT_STEPS = 10
MEASURED_KEPT_DE00 = {"legs": 0.0, "head": 0.0, "feet": 0.0, "hands": 0.0}
MEASURED_EDITED_DE00 = 95.46
KEPT_DE00_MARGIN = 2.0


def test_edit_pairs_are_seeded_and_each_edit_caption_changes_one_colour_word():
    pairs = edit_pairs(6, ("upper_colour", "lower_colour"))
    assert pairs == edit_pairs(6, ("upper_colour", "lower_colour"))
    assert pairs != edit_pairs(6, ("upper_colour", "lower_colour"), seed=1)
    for person in pairs:
        assert person["attributes"]["lower"] != "dress"  # a dress is top and bottom at once
        source = person["caption"].split()
        for key, edit in person["edits"].items():
            assert edit["colour"] != person["attributes"][key]
            words = edit["caption"].split()
            assert len(words) == len(source)
            changed = [(a, b) for a, b in zip(source, words) if a != b and {a, b} != {"a", "an"}]
            assert changed == [(person["attributes"][key], edit["colour"])], (person["caption"], edit["caption"])


@pytest.fixture(scope="module")
def text_edit():
    """One source generated and edited through a real backend on 127.0.0.1 serving the shipped package."""
    person = edit_pairs(EDIT_PAIR + 1)[EDIT_PAIR]
    with backend_client(str(CHECKPOINTS / DEFAULT_MODEL)) as client:
        result = run_pair(client, person, [EDIT_STRENGTH], steps=EDIT_STEPS, guidance=4.0, seed=0, size=128,
                          layouts={}, region=EDIT_REGION)
    return person, result


def test_text_edit_reads_the_new_colour_on_the_torso_and_not_before(text_edit):
    person, result = text_edit
    (edit,) = result["edits"]
    assert result["model"]["name"] == DEFAULT_MODEL and edit["mode"] == "auto-region (recolour)"
    assert edit["attribute"] == "upper_colour" and edit["colour"] == person["edits"]["upper_colour"]["colour"]
    assert edit["colour"] != person["attributes"]["upper_colour"]
    assert result["source"]["upper_colour"] != edit["colour"]
    assert edit["predicted"]["upper_colour"] == edit["colour"]


def test_text_edit_keeps_the_other_regions_within_the_measured_colour_difference(text_edit):
    _, result = text_edit
    (edit,) = result["edits"]
    assert set(KEPT_REGIONS["upper_colour"]) == set(MEASURED_KEPT_DE00)
    for region, measured in MEASURED_KEPT_DE00.items():
        assert edit["de00"][region] <= measured + KEPT_DE00_MARGIN, (region, edit["de00"][region])
    # the edit lands where the prompt changed: the torso moves as far as measured, and further than any kept region
    assert edit["de00"]["torso"] >= MEASURED_EDITED_DE00 - KEPT_DE00_MARGIN
    assert edit["de00"]["torso"] > max(edit["de00"][r] for r in MEASURED_KEPT_DE00) + 2 * KEPT_DE00_MARGIN
