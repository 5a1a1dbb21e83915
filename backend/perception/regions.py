"""Body regions of a person in a photo, and colour differences in CIELAB.

`photo_regions` segments the torso and the legs of a fitted person from the person mask and the
MediaPipe pose-33 keypoints: torso = the quadrilateral shoulders-hips, legs = bands of half-width
`LEG_HALF_WIDTH` x hip distance along hip-knee and knee-ankle of each leg (starting at the hip, outside
the torso); both are intersected with the person mask and eroded (edge pixels mix person and background).
A region whose keypoints are not visible (visibility < `MIN_VISIBILITY`, or outside the image) is empty.

Colours: sRGB (IEC 61966-2-1) -> CIE XYZ (D65) -> CIELAB; differences as CIE76 (Euclidean in Lab) and
CIEDE2000 (Sharma, Wu, Dalal 2005). A region's colour is the per-channel median of its pixels' Lab values.
"""
from __future__ import annotations

import numpy as np

# MediaPipe pose-33 indices (backend/perception/fitting.py MEDIAPIPE_POSE_33)
L_SHOULDER, R_SHOULDER, L_HIP, R_HIP, L_KNEE, R_KNEE, L_ANKLE, R_ANKLE = 11, 12, 23, 24, 25, 26, 27, 28
MIN_VISIBILITY = 0.5
LEG_HALF_WIDTH = 0.3   # x the hip-to-hip distance: MediaPipe's hip points are joint centres ~25 cm apart,
                       # a thigh is ~15 cm across, so 0.3 keeps the band on the leg
ERODE_FRACTION = 0.01  # erosion radius, x the person's keypoint height (at least 1 px)

# sRGB primaries -> XYZ (IEC 61966-2-1), and the D65 white they map (1, 1, 1) to
_RGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                        [0.2126729, 0.7151522, 0.0721750],
                        [0.0193339, 0.1191920, 0.9503041]])
_WHITE = _RGB_TO_XYZ.sum(1)


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) sRGB, uint8 (0..255) or float (0..1) -> (..., 3) float64 L*, a*, b*."""
    rgb = np.asarray(rgb)
    c = rgb.astype(np.float64) / 255.0 if rgb.dtype == np.uint8 else np.asarray(rgb, np.float64)
    if c.shape[-1:] != (3,):
        raise ValueError(f"expected colours of shape (..., 3), got {c.shape}")
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    t = (linear @ _RGB_TO_XYZ.T) / _WHITE
    eps, kappa = 216 / 24389, 24389 / 27
    f = np.where(t > eps, np.cbrt(t), (kappa * t + 16) / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def lab_to_srgb(lab: np.ndarray) -> np.ndarray:
    """(..., 3) L*, a*, b* -> (..., 3) float sRGB in [0, 1] (the inverse of `srgb_to_lab`; out-of-gamut colours
    are clipped)."""
    lab = np.asarray(lab, np.float64)
    fy = (lab[..., 0] + 16) / 116
    f = np.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], -1)
    eps, kappa = 216 / 24389, 24389 / 27
    t = np.where(f ** 3 > eps, f ** 3, (116 * f - 16) / kappa)
    linear = np.clip((t * _WHITE) @ np.linalg.inv(_RGB_TO_XYZ).T, 0.0, 1.0)
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)


def delta_e76(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIE76: Euclidean distance in Lab. (..., 3), (..., 3) -> (...)."""
    return np.linalg.norm(np.asarray(lab1, np.float64) - np.asarray(lab2, np.float64), axis=-1)


def delta_e2000(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIEDE2000 with kL = kC = kH = 1 (Sharma, Wu, Dalal 2005). (..., 3), (..., 3) -> (...)."""
    l1, a1, b1 = np.moveaxis(np.asarray(lab1, np.float64), -1, 0)
    l2, a2, b2 = np.moveaxis(np.asarray(lab2, np.float64), -1, 0)
    c_bar = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2
    g = 0.5 * (1 - np.sqrt(c_bar ** 7 / (c_bar ** 7 + 25.0 ** 7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p = np.degrees(np.arctan2(b1, a1p)) % 360
    h2p = np.degrees(np.arctan2(b2, a2p)) % 360
    dlp, dcp = l2 - l1, c2p - c1p
    dh = h2p - h1p
    dh = np.where(dh > 180, dh - 360, np.where(dh < -180, dh + 360, dh))
    dh = np.where(c1p * c2p == 0, 0.0, dh)
    dhp = 2 * np.sqrt(c1p * c2p) * np.sin(np.radians(dh / 2))
    lbp, cbp = (l1 + l2) / 2, (c1p + c2p) / 2
    hsum = h1p + h2p
    hbp = np.where(np.abs(h1p - h2p) > 180, np.where(hsum < 360, (hsum + 360) / 2, (hsum - 360) / 2), hsum / 2)
    hbp = np.where(c1p * c2p == 0, hsum, hbp)
    t = (1 - 0.17 * np.cos(np.radians(hbp - 30)) + 0.24 * np.cos(np.radians(2 * hbp))
         + 0.32 * np.cos(np.radians(3 * hbp + 6)) - 0.20 * np.cos(np.radians(4 * hbp - 63)))
    d_theta = 30 * np.exp(-(((hbp - 275) / 25) ** 2))
    rc = 2 * np.sqrt(cbp ** 7 / (cbp ** 7 + 25.0 ** 7))
    sl = 1 + 0.015 * (lbp - 50) ** 2 / np.sqrt(20 + (lbp - 50) ** 2)
    sc, sh = 1 + 0.045 * cbp, 1 + 0.015 * cbp * t
    rt = -np.sin(np.radians(2 * d_theta)) * rc
    return np.sqrt((dlp / sl) ** 2 + (dcp / sc) ** 2 + (dhp / sh) ** 2 + rt * (dcp / sc) * (dhp / sh))


def median_lab(image: np.ndarray, region: np.ndarray) -> np.ndarray | None:
    """Per-channel median Lab of the (H, W, 3) sRGB image's pixels where region (H, W) is True; None if empty."""
    if not region.any():
        return None
    return np.median(srgb_to_lab(image[region]), axis=0)


def _polygon(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    import cv2

    out = np.zeros(shape, np.uint8)
    cv2.fillPoly(out, [np.round(points).astype(np.int32)], 1)
    return out.astype(bool)


def _band(a: np.ndarray, b: np.ndarray, half_width: float, shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre lies within half_width of the segment a-b, rounded at b, cut square at a (the
    thigh band stops at the hip line instead of reaching up into the pelvis)."""
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]]
    p = np.stack([xs, ys], -1).astype(np.float64)  # (H, W, 2)
    ab = b - a
    t = ((p - a) @ ab) / max(float(ab @ ab), 1e-9)  # (H, W) position along a-b
    near = np.linalg.norm(p - (a + np.clip(t, 0.0, 1.0)[..., None] * ab), axis=-1) <= half_width
    return near & (t >= 0)


def photo_regions(mask: np.ndarray, keypoints: np.ndarray) -> dict[str, np.ndarray]:
    """mask (H, W) person mask (uint8 0..255 or bool), keypoints (33, 3) x, y pixels, visibility ->
    {"torso": (H, W) bool, "legs": (H, W) bool}, inside the eroded person mask."""
    import cv2

    mask = np.asarray(mask)
    person = mask > 127 if mask.dtype == np.uint8 else mask.astype(bool)
    kp = np.asarray(keypoints, np.float64)
    if kp.shape != (33, 3) or person.ndim != 2:
        raise ValueError(f"expected mask (H, W) and keypoints (33, 3), got {person.shape} and {kp.shape}")
    h, w = person.shape
    xy = kp[:, :2]
    seen = (kp[:, 2] >= MIN_VISIBILITY) & (xy[:, 0] >= 0) & (xy[:, 0] < w) & (xy[:, 1] >= 0) & (xy[:, 1] < h)
    visible = kp[seen, :2]
    height = float(np.ptp(visible[:, 1])) if len(visible) > 1 else float(h)
    radius = max(1, round(ERODE_FRACTION * height))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))

    def eroded(region: np.ndarray) -> np.ndarray:
        return cv2.erode((region & person).astype(np.uint8), kernel).astype(bool)

    empty = np.zeros((h, w), bool)
    torso_polygon = empty
    if seen[[L_SHOULDER, R_SHOULDER, R_HIP, L_HIP]].all():
        torso_polygon = _polygon(xy[[L_SHOULDER, R_SHOULDER, R_HIP, L_HIP]], (h, w))
    legs = empty.copy()
    if seen[[L_HIP, R_HIP]].all():
        half = LEG_HALF_WIDTH * float(np.linalg.norm(xy[L_HIP] - xy[R_HIP]))
        for hip, knee, ankle in ((L_HIP, L_KNEE, L_ANKLE), (R_HIP, R_KNEE, R_ANKLE)):
            if seen[knee]:
                legs |= _band(xy[hip], xy[knee], half, (h, w))
                if seen[ankle]:
                    legs |= _band(xy[knee], xy[ankle], half, (h, w))
        legs = eroded(legs & ~torso_polygon) if half >= 1 else empty
    return {"torso": eroded(torso_polygon), "legs": legs}
