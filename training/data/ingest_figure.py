"""A picture of a fitted clip: per frame, the frame, the person mask, and the fitted template over the frame
(template silhouette tinted, its edge drawn, detected keypoints as dots and fitted landmarks as crosses)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from backend.avatar.skinning import Skeleton, skinning_matrices
from backend.perception.fitting import landmark_anchors, render_silhouette
from training.data.records import ClipRecord

_BONES = ((11, 12), (11, 13), (13, 15), (12, 14), (14, 16), (11, 23), (12, 24), (23, 24), (23, 25), (25, 27),
          (24, 26), (26, 28), (0, 7), (0, 8))


def fitted_landmarks(template, record: ClipRecord) -> np.ndarray:
    """(F, 33, 2) pixels: where the record's pose puts the fitter's landmark anchors."""
    import torch


    bones, points, _ = landmark_anchors(template)
    a = skinning_matrices(Skeleton.from_template(template), torch.from_numpy(record.joint_rotations),
                          torch.from_numpy(record.root_translation)).numpy().astype(np.float64)[:, bones]
    world = np.einsum("fnij,nj->fni", a[..., :3, :3], points) + a[..., :3, 3]
    out = []
    for f in range(record.num_frames):
        vm, k = record.viewmats[f].astype(np.float64), record.intrinsics[f].astype(np.float64)
        pc = world[f] @ vm[:3, :3].T + vm[:3, 3]
        out.append(pc[:, :2] / pc[:, 2:3] * [k[0, 0], k[1, 1]] + k[:2, 2])
    return np.stack(out)


def overlay_panel(template, record: ClipRecord, frame: int) -> np.ndarray:
    """(H, 3W, 3) uint8: frame | mask | fitted template over the frame."""
    import cv2

    img = record.frames[frame]
    h, w = img.shape[:2]
    sil = render_silhouette(template, record.joint_rotations[frame], record.root_translation[frame],
                            record.viewmats[frame], record.intrinsics[frame], w, h, shape=record.shape)
    over = img.astype(np.float32)
    over[sil] = 0.45 * over[sil] + 0.55 * np.array([255, 140, 30])
    over = over.astype(np.uint8)
    edge = cv2.morphologyEx(sil.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    over[edge] = (255, 255, 0)
    kp = record.keypoints[frame]
    fitted = fitted_landmarks(template, record)[frame]
    for a, b in _BONES:
        if kp[a, 2] > 0.5 and kp[b, 2] > 0.5:
            cv2.line(over, tuple(np.round(fitted[a]).astype(int)), tuple(np.round(fitted[b]).astype(int)), (40, 40, 255), 1,
                     cv2.LINE_AA)
    for i in range(33):
        if kp[i, 2] > 0.5:
            cv2.circle(over, tuple(np.round(kp[i, :2]).astype(int)), 2, (0, 255, 0), -1, cv2.LINE_AA)
    mask = np.repeat(record.masks[frame][:, :, None], 3, 2)
    return np.concatenate([img, mask, over], 1)


def save_overlay_figure(template, record: ClipRecord, path: str | Path, frames: list[int] | None = None,
                        crop: bool = True) -> Path:
    """Rows of `overlay_panel` for the chosen frames (default: 4 spread over the clip), cropped to the person."""
    from PIL import Image

    n = record.num_frames
    frames = frames if frames is not None else sorted(set(np.linspace(0, n - 1, min(4, n)).round().astype(int).tolist()))
    rows = []
    for f in frames:
        panel = overlay_panel(template, record, f)
        if crop:
            h, w = record.frames[f].shape[:2]
            ys, xs = np.nonzero(record.masks[f] >= 128)
            if len(xs):
                pad = int(0.25 * max(ys.max() - ys.min(), xs.max() - xs.min())) + 8
                x0, x1 = max(0, xs.min() - pad), min(w, xs.max() + pad)
                y0, y1 = max(0, ys.min() - pad), min(h, ys.max() + pad)
                panel = np.concatenate([panel[y0:y1, i * w + x0:i * w + x1] for i in range(3)], 1)
        rows.append(panel)
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    scale = max(1, int(900 // width))
    image = np.concatenate(rows, 0).repeat(scale, 0).repeat(scale, 1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path
