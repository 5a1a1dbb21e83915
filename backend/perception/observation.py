"""A person seen in frames -> a fitted body, a reference crop, observed tokens.

`Perception` holds the detector, template and fitter (built once per process and configuration);
`Perception.fit_person` fits one person's detections; `reference_crop` and `tokenize_views` turn a fitted
person into the DiT's image condition and the tokenizer's tokens. The training stack's ingest and
tokenization call the same functions, so a photo is seen the same way at training and at inference.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from backend.avatar.template import load_template
from backend.perception.detector import PersonDetector
from backend.perception.fitting import FIT_JOINTS, BodyFitter, FitConfig, render_silhouette, silhouette_iou


@dataclasses.dataclass
class FittedPerson:
    """One person in F frames of size (H, W), with the template fitted; J template joints."""

    frames: np.ndarray            # (F, H, W, 3) uint8 RGB
    masks: np.ndarray             # (F, H, W) uint8, person mask 0..255
    keypoints: np.ndarray         # (F, 33, 3) x, y pixels, visibility (mediapipe-pose-33)
    viewmat: np.ndarray           # (4, 4) world-to-camera (OpenCV), the same for every frame
    intrinsics: np.ndarray        # (3, 3) pixels
    joint_rotations: np.ndarray   # (F, J, 4) wxyz, local, relative to the rest pose
    root_translation: np.ndarray  # (F, 3) metres
    fit_meta: dict[str, Any]      # reprojection error, loss, fitted joints, silhouette IoU when measured
    shape: np.ndarray | None = None  # (6,) fitted body shape (macro values); None: the default body


class Perception:
    """Detector, template and fitter, built once (`perception()` caches one per configuration)."""

    def __init__(self, template: str = "anny", fit: FitConfig | None = None, max_people: int = 3):
        self.template = load_template(template)
        self.fitter = BodyFitter(self.template, fit or FitConfig())
        self.detector = PersonDetector(max_people=max_people)

    def fit_person(self, frames: list[np.ndarray], observations: list, temporal: bool,
                   measure: bool = True) -> FittedPerson:
        """Fit the template to one person's detections (`PersonObservation` per frame, frames alike in size).
        measure: the silhouette IoU of the fit per frame into fit_meta."""
        kp = np.stack([o.keypoints for o in observations])  # (F, 33, 3)
        masks = np.stack([o.mask for o in observations])  # (F, H, W) float in [0, 1]
        h, w = frames[0].shape[:2]
        fit = self.fitter.fit(kp, (w, h), masks=masks, temporal=temporal)
        meta: dict[str, Any] = {"reprojection_px": [round(float(x), 2) for x in fit.reprojection_px],
                                "loss": round(fit.loss, 5), "fitted_joints": list(FIT_JOINTS)}
        if measure:
            ious = [silhouette_iou(render_silhouette(self.template, fit.joint_rotations[f], fit.root_translation[f],
                                                     fit.viewmat, fit.intrinsics, w, h, shape=fit.shape),
                                  masks[f] >= 0.5)
                    for f in range(len(frames))]
            meta["silhouette_iou"] = [round(x, 4) for x in ious]
        return FittedPerson(frames=np.stack(frames), masks=np.round(masks * 255).astype(np.uint8), keypoints=kp,
                            viewmat=fit.viewmat, intrinsics=fit.intrinsics, joint_rotations=fit.joint_rotations,
                            root_translation=fit.root_translation, fit_meta=meta, shape=fit.shape)


_CACHE: dict[str, Perception] = {}


def perception(template: str = "anny", fit: FitConfig | None = None, max_people: int = 3) -> Perception:
    """The process's Perception for this configuration (the last one built is kept; MediaPipe and the
    template are slow to load)."""
    fit = fit or FitConfig()
    key = json.dumps({"template": template, "fit": dataclasses.asdict(fit), "max_people": max_people},
                     sort_keys=True)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = Perception(template, fit, max_people)
    return _CACHE[key]


def reference_crop(frame: np.ndarray, mask: np.ndarray, size: int = 64, margin: float = 0.1) -> np.ndarray:
    """frame (H, W, 3) uint8, mask (H, W) uint8 0..255 -> (size, size, 3) uint8: a square around the mask
    (the whole frame if the mask is empty)."""
    image = torch.from_numpy(np.ascontiguousarray(frame)).float().permute(2, 0, 1)[None]  # (1, 3, H, W)
    person = np.asarray(mask) > 127
    h, w = person.shape
    if person.any():
        ys, xs = np.nonzero(person)
        cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
        half = max(ys.max() - ys.min(), xs.max() - xs.min()) / 2 * (1 + margin) + 1
    else:
        cy, cx, half = h / 2, w / 2, max(h, w) / 2
    theta = torch.tensor([[[half * 2 / w, 0.0, (2 * cx + 1) / w - 1], [0.0, half * 2 / h, (2 * cy + 1) / h - 1]]],
                         dtype=torch.float32)
    grid = F.affine_grid(theta, (1, 3, size, size), align_corners=False)
    crop = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)[0]  # (3, S, S)
    return crop.permute(1, 2, 0).round().clamp(0, 255).byte().numpy()


@torch.no_grad()
def tokenize_views(tokenizer, frames: np.ndarray, masks: np.ndarray, viewmats: np.ndarray, intrinsics: np.ndarray,
                   joint_rotations: np.ndarray, root_translation: np.ndarray,
                   input_frames: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """F fitted views of one person -> tokens (C, R, R) float16 and visibility (R, R) uint8, from up to
    `input_frames` evenly spaced views. frames (F, H, W, 3) uint8, masks (F, H, W) uint8, viewmats (F, 4, 4),
    intrinsics (F, 3, 3), joint_rotations (F, J, 4), root_translation (F, 3)."""
    n = len(frames)
    idx = sorted(set(np.linspace(0, n - 1, min(n, input_frames)).round().astype(int).tolist()))
    inputs = tokenizer.prepare(frames[idx], masks[idx], viewmats[idx], intrinsics[idx], joint_rotations[idx],
                               root_translation[idx])
    tokens = tokenizer(inputs)[0]  # (C, R, R)
    r = tokenizer.config.resolution
    vis = torch.zeros(r * r, dtype=torch.uint8)
    vis[tokenizer.valid_indices] = ((inputs.weight[0] > 0.5).any(0)).to(torch.uint8)
    return tokens.float().numpy().astype(np.float16), vis.reshape(r, r).numpy()
