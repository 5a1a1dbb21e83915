"""A video of two synthetic people crossing, with the truth of who is where: the identity test of ingest.

Two people of the synthetic generator (`training/data/synthetic.py`: body shape, clothes, hair, walk-cycle
motion, a front-facing camera) are rendered as tiles of `tile` pixels and pasted onto a street-like
background: person 0 walks from the left edge to the right, person 1 from the right to the left, person 0
in front, so in the middle frames one hides part of the other. What comes back per frame is the picture
and each person's visible pixels (`identity`: -1 background, 0 or 1), which is what a test needs to say
whether a clip followed one person. Everything follows from `seed` (bit-identical on every run).

    python -m training.data.crossing OUT.mp4 [--seed 3] [--frames 16]   (writes OUT.mp4 and OUT.npz)
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np


@dataclasses.dataclass
class CrossingVideo:
    frames: np.ndarray     # (F, H, W, 3) uint8
    identity: np.ndarray   # (F, H, W) int8: -1 background, p for person p's visible pixels
    boxes: np.ndarray      # (F, 2, 4) each person's full (amodal) box x0, y0, x1, y1, pixels
    fps: float

    def person_mask(self, p: int) -> np.ndarray:
        return self.identity == p  # (F, H, W) bool

    def overlapping(self) -> np.ndarray:
        """(F,) bool: frames where the two people's boxes meet."""
        a, b = self.boxes[:, 0], self.boxes[:, 1]
        ix = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
        return ix > 0


def _background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A wall over a pavement, both with a little texture: nothing person-like."""
    y = np.arange(height)[:, None, None] / height
    wall = np.array([0.62, 0.6, 0.55]) + 0.05 * np.sin(np.arange(width)[None, :, None] / 9.0)
    ground = np.array([0.45, 0.45, 0.47]) * (0.9 + 0.2 * y)
    img = np.where(y < 0.78, wall, ground) + rng.normal(0, 0.015, (height, width, 3))
    return np.clip(img * 255, 0, 255).astype(np.uint8)


def make_crossing(seed: int = 3, frames: int = 16, width: int = 480, height: int = 270,
                  people: tuple[int, int] = (0, 1), tile: tuple[int, int] = (160, 240)) -> CrossingVideo:
    """Two synthetic people (indices `people` of generator seed `seed`) crossing in `frames` frames."""
    import torch

    from training.data import synthetic

    tw, th = tile
    if th > height or 2 * tw > width + tw // 2:
        raise ValueError(f"tiles of {tw}x{th} do not fit a {width}x{height} frame for two people to cross")
    ctx = synthetic.Context(synthetic.SynthConfig(seed=seed, frames=frames, width=tw, height=th))
    tiles, alphas = [], []
    with torch.no_grad():
        for index in people:
            rng = synthetic.person_rng(seed, index)
            person = synthetic.make_person(ctx, index, rng)
            clip = synthetic.make_clip(ctx, person, rng, view="front-only", occlude=False, motion_source="walk")
            tiles.append(clip.frames.astype(np.float32))
            alphas.append(clip.masks.astype(np.float32) / 255.0)
    rng = np.random.default_rng([seed, 7])
    bg = _background(height, width, rng).astype(np.float32)
    y0 = height - th
    xs = np.linspace(0, width - tw, frames).round().astype(int)
    starts = (xs, xs[::-1])  # person 0 left -> right, person 1 right -> left
    out = np.empty((frames, height, width, 3), np.uint8)
    identity = np.full((frames, height, width), -1, np.int8)
    boxes = np.zeros((frames, 2, 4), np.float32)
    for f in range(frames):
        img = bg.copy()
        for p in (1, 0):  # person 1 first: person 0 walks in front
            x0 = starts[p][f]
            a = alphas[p][f][..., None]
            region = img[y0:y0 + th, x0:x0 + tw]
            img[y0:y0 + th, x0:x0 + tw] = a * tiles[p][f] + (1 - a) * region
            seen = alphas[p][f] >= 0.5
            identity[f, y0:y0 + th, x0:x0 + tw][seen] = p
            ys, xs_ = np.nonzero(seen)
            boxes[f, p] = [x0 + xs_.min(), y0 + ys.min(), x0 + xs_.max() + 1, y0 + ys.max() + 1] if len(ys) else 0
        out[f] = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return CrossingVideo(frames=out, identity=identity, boxes=boxes, fps=10.0)


def write_video(path: str | Path, frames: np.ndarray, fps: float = 10.0, quality: int = 4) -> Path:
    """(F, H, W, 3) uint8 -> an MPEG-4 video (PyAV); bit rate 4 Mbit/s / `quality`."""
    import av

    path = Path(path)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=int(round(fps)))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.bit_rate = 4_000_000 // quality
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="the video to write (.mp4); the truth goes beside it as .npz")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--frames", type=int, default=16)
    args = parser.parse_args(argv)
    video = make_crossing(args.seed, args.frames)
    path = write_video(args.out, video.frames, video.fps)
    np.savez_compressed(path.with_suffix(".npz"), identity=video.identity, boxes=video.boxes)
    print(path)


if __name__ == "__main__":
    main()
