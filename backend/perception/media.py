"""Reading photos and videos for perception (the backend's photo -> avatar, the training stack's ingest),
with errors that name the file and the problem.

Videos decode with PyAV (FFmpeg's libraries inside the wheel, in-process): frames arrive as numpy arrays
with the stream's frame rate and a typed `av.error.FFmpegError` on a corrupt file, with no ffmpeg
executable to find and no pipe to parse (imageio-ffmpeg's model). Photos read with Pillow (EXIF
orientation applied).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

VIDEO_SUFFIXES = frozenset({".avi", ".mp4", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"})
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


class PerceptionError(ValueError):
    """A photo or video that perception cannot use; the message starts with the file or image."""


class CorruptFileError(PerceptionError):
    """Unreadable, truncated or not a photo/video at all."""


class ImageTooLargeError(CorruptFileError):
    """A photo that declares more pixels than `read_image` decodes (a decompression bomb: a 109 KB PNG can
    declare 30000 x 30000). Refused from the header, before any pixel is decoded."""


class NoPersonError(PerceptionError):
    """Nobody was found in the photo (or in any frame of the video)."""


def media_kind(path: str | os.PathLike) -> str | None:
    suffix = Path(path).suffix.lower()
    return "video" if suffix in VIDEO_SUFFIXES else "photo" if suffix in IMAGE_SUFFIXES else None


def fit_size(image: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale (area filter) so the longer side is at most `max_side`; smaller images stay as they are."""
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image
    import cv2

    s = max_side / max(h, w)
    return cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


MAX_IMAGE_PIXELS = 8192 * 8192   # what read_image decodes at most (after JPEG draft scaling): ~200 MB as RGB


def read_image(path: str | os.PathLike, max_side: int = 1024, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """(H, W, 3) uint8 RGB, the longer side at most `max_side`.

    The size comes from the file's header first: a JPEG above `max_pixels` is decoded at the smallest 1/2^k
    scale that still covers max_side (Pillow's draft mode), and an image that would still decode to more
    than `max_pixels` raises ImageTooLargeError naming its size, before any pixel is decoded (Pillow's own
    bomb check only warns below 2 x its limit, and raises an exception of its own above)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.format == "JPEG" and im.size[0] * im.size[1] > max_pixels:
                im.draft("RGB", (max_side, max_side))   # decode at 1/2, 1/4 or 1/8 scale: far fewer pixels
            width, height = im.size
            if width * height > max_pixels:
                raise ImageTooLargeError(f"{path}: image of {width}x{height} pixels is above the limit of "
                                         f"{max_pixels} pixels (a decompression-bomb guard); downscale it first")
            im = ImageOps.exif_transpose(im)
            rgb = np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise CorruptFileError(f"{path}: file not found") from None
    except Image.DecompressionBombError as exc:   # Pillow's own check, when it fires before ours (at open)
        raise ImageTooLargeError(f"{path}: image above the limit of {max_pixels} pixels (a decompression-bomb "
                                 f"guard): {exc}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, PerceptionError):
            raise
        raise CorruptFileError(f"{path}: cannot read the image ({exc})") from None
    if rgb.ndim != 3 or min(rgb.shape[:2]) < 16:
        raise CorruptFileError(f"{path}: image of size {rgb.shape[1::-1]} is too small (need at least 16 px a side)")
    return fit_size(rgb, max_side)


def read_video(path: str | os.PathLike, max_frames: int = 32, max_side: int = 1024) -> tuple[list[np.ndarray], list[int], float]:
    """Decode a video: at most `max_frames` frames, evenly spaced over the whole video.

    Returns (frames (H, W, 3) uint8 RGB, their indices in the video, frames per second of the kept frames).
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise CorruptFileError(f"{path}: file not found")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise CorruptFileError(f"{path}: no video stream")
            stream = container.streams.video[0]
            rate = float(stream.average_rate or stream.guessed_rate or 25.0)
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    except CorruptFileError:
        raise
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError, OSError) as exc:
        raise CorruptFileError(f"{path}: cannot decode the video ({type(exc).__name__}: {exc})") from None
    if not frames:
        raise CorruptFileError(f"{path}: the video has no decodable frames")
    # evenly spaced over the video; the kept frames' rate follows the stride
    keep = np.unique(np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).round().astype(int)).tolist()
    stride = (keep[-1] - keep[0]) / max(len(keep) - 1, 1) if len(keep) > 1 else 1.0
    return [fit_size(frames[i], max_side) for i in keep], keep, rate / max(stride, 1.0)
