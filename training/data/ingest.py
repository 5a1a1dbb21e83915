"""Real ingest: photos and videos of people -> clip records with a fitted body (`genlca-train ingest`).

Per file: decode (`backend/perception/media`), find people and track them (`backend/perception/detector`,
MediaPipe: 33 landmarks and a mask per person), fit the anny template to each person's keypoints and mask
(`backend/perception/fitting`, through `observation.Perception`, the code photo -> avatar runs too), write
one clip record per person (`records`). A video gives one clip per tracked identity with the frames where that
person was found alone and in view (frames where the person overlaps someone, is occluded, too small, blurred
or off-colour are dropped, `meta["dropped_frames"]` says which and why); a photo gives a one-frame clip per
person. A library run also writes a QC report, `<out>/qc/report.md` with a contact sheet per person
(`training/data/ingest_qc.py`). Records keep the frames at their decoded size (longer
side at most `IngestConfig.max_side`).

Errors name the file and the problem: `CorruptFileError` (unreadable, truncated, not a photo or video),
`NoPersonError` (nobody found in any frame), `TooFewFramesError` (people found, but no one in enough
frames for a clip). A library run (`ingest_library`) records each failure in `<out>/failures.json` and goes
on; it is resumable: a file whose clips are all written (`<out>/.ingest/<file key>.json` lists them) is
skipped by the next run. Large libraries shard across processes or machines the way `genlca-train
tokenize` does: under torchrun (RANK, WORLD_SIZE), rank k takes files k::world, and after a barrier rank 0
merges the failures and writes the QC report:

    torchrun --nproc-per-node 4 -m training.cli ingest LIBRARY --out OUT
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from backend.perception.fitting import KEYPOINT_FORMAT, FitConfig
from backend.perception.media import (CorruptFileError, NoPersonError, PerceptionError, fit_size, media_kind,
                                      read_image, read_video)
from backend.perception.observation import Perception, perception
from bridge.files.atomic import write_atomic
from training.data.ingest_qc import contact_sheet, file_report, write_library_report
from training.data.records import ClipRecord, record_path, save_record

__all__ = ["IngestConfig", "IngestError", "CorruptFileError", "NoPersonError", "TooFewFramesError",
           "ingest_photo", "ingest_file", "ingest_library"]

# the shape a fitted record carries: the mean body of the synthetic generator's macro parameters
# (training/data/body_shape.py: all six at 0.5); ingest does not fit body shape yet
SHAPE_NAMES = ("gender", "age", "muscle", "weight", "height", "proportions")
MEAN_SHAPE = np.full(len(SHAPE_NAMES), 0.5, np.float32)


IngestError = PerceptionError  # every ingest refusal; CorruptFileError and NoPersonError come from perception


class TooFewFramesError(IngestError):
    """People were found, but none in enough frames for a clip."""


@dataclasses.dataclass
class IngestConfig:
    max_frames: int = 32          # frames decoded per video, evenly spaced over it
    min_frames: int = 3           # a video person needs at least this many frames for a clip
    max_people: int = 3
    max_side: int = 1024          # longer image side kept in the record
    licence: str = "unknown"      # copied into every record's meta (say where the footage came from)
    template: str = "anny"
    measure: bool = True          # silhouette IoU of the fit per frame into meta["fit"]
    fit: FitConfig = dataclasses.field(default_factory=FitConfig)


def _models(config: IngestConfig) -> Perception:
    return perception(config.template, config.fit, config.max_people)


def clip_key(path: str | os.PathLike, root: str | os.PathLike | None = None) -> str:
    """A file's clip-id stem: its path below `root` with every non-alphanumeric run as '_'."""
    rel = Path(path).relative_to(root) if root is not None else Path(Path(path).name)
    return re.sub(r"[^A-Za-z0-9]+", "_", str(rel.with_suffix("")) + "_" + rel.suffix.lstrip(".")).strip("_")


def _record(models: Perception, config: IngestConfig, clip_id: str, frames: list[np.ndarray],
            observations: list, meta: dict[str, Any], temporal: bool) -> ClipRecord:
    person = models.fit_person(frames, observations, temporal=temporal, measure=config.measure)
    n = len(frames)
    meta = {"captions": [], "template": models.template.name, "keypoint_format": KEYPOINT_FORMAT,
            "shape_names": list(SHAPE_NAMES), "licence": config.licence, "split": "train", "fit": person.fit_meta,
            **meta}
    return ClipRecord(clip_id=clip_id, frames=person.frames, masks=person.masks,
                      viewmats=np.repeat(person.viewmat[None], n, 0),
                      intrinsics=np.repeat(person.intrinsics[None], n, 0), joint_rotations=person.joint_rotations,
                      root_translation=person.root_translation, keypoints=person.keypoints,
                      shape=MEAN_SHAPE if person.shape is None else person.shape.astype(np.float32),
                      meta=meta)


def ingest_photo(image: np.ndarray, config: IngestConfig | None = None, clip_id: str = "photo",
                 name: str = "image") -> ClipRecord:
    """One photo (H, W, 3) uint8 -> a one-frame clip of its most visible person; NoPersonError if none.
    `name` is what errors call the image."""
    config = config or IngestConfig()
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise CorruptFileError(f"{name}: expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    return _photo_records(image, config, clip_id, name, people=1)[0]


def _photo_records(image, config, stem, name, people=None) -> list[ClipRecord]:
    models = _models(config)
    image = fit_size(image, config.max_side)
    found = models.detector.detect_image(image)
    if not found:
        raise NoPersonError(f"{name}: no person found in the photo")
    records = []
    for p, obs in enumerate(found[:people]):
        meta = {"source": "photo", "source_file": str(name), "person_id": f"{stem}-p{p}", "fps": 0.0,
                "frame_indices": [0]}
        records.append(_record(models, config, f"{stem}-p{p}", [image], [obs], meta, temporal=False))
    return records


def ingest_file(path: str | os.PathLike, config: IngestConfig | None = None, stem: str | None = None,
                qc_dir: str | os.PathLike | None = None) -> list[ClipRecord]:
    """A photo or video file -> its clip records (one per person); raises an IngestError naming the file.
    qc_dir: also write the file's QC entry `<qc_dir>/<stem>.json` and a contact sheet per person of a video
    (`training/data/ingest_qc.py`), failures included."""
    config = config or IngestConfig()
    path = Path(path)
    stem = stem or clip_key(path)
    kind = media_kind(path)
    if kind is None:
        raise CorruptFileError(f"{path}: not a photo or video this ingest reads (suffix {path.suffix!r})")
    if kind == "photo":
        records = _photo_records(read_image(path, config.max_side), config, stem, path)
        if qc_dir is not None:
            _write_qc(qc_dir, stem, {"file": str(path), "frames": 1, "people": len(records), "clips": len(records),
                                     "persons": [{"person": p, "frames_seen": 1, "kept": 1, "kept_frames": [0],
                                                  "dropped": {}, "dropped_by_reason": {}, "clip": r.clip_id,
                                                  "reprojection_px": r.meta["fit"]["reprojection_px"][0]}
                                                 for p, r in enumerate(records)]})
        return records
    frames, indices, fps = read_video(path, config.max_frames, config.max_side)
    models = _models(config)
    tracks = models.detector.track_video(frames)
    if not tracks:
        if qc_dir is not None:
            _write_qc(qc_dir, stem, file_report(str(path), indices, [], {}, config.min_frames, "NoPersonError"))
        raise NoPersonError(f"{path}: no person found in any of {len(frames)} frames")
    clips: dict[int, ClipRecord] = {}
    for p, track in enumerate(tracks):
        if len(track.frames) < config.min_frames:
            continue
        meta = {"source": "video", "source_file": str(path), "person_id": f"{stem}-p{p}", "fps": round(fps, 4),
                "frame_indices": [indices[i] for i in track.frames],
                "dropped_frames": {str(indices[i]): r for i, r in sorted(track.dropped.items())}}
        clips[p] = _record(models, config, f"{stem}-p{p}", [frames[i] for i in track.frames],
                           [track.observations[i] for i in track.frames], meta, temporal=True)
    if qc_dir is not None:
        error = None if clips else "TooFewFramesError"
        _write_qc(qc_dir, stem, file_report(str(path), indices, tracks, clips, config.min_frames, error))
        for p, track in enumerate(tracks):
            contact_sheet(models.template, frames, indices, track, clips.get(p), Path(qc_dir) / f"{stem}-p{p}.png")
    if not clips:
        longest = max(tracks, key=lambda t: (len(t.all_frames), len(t.frames)))
        why = ", ".join(f"{r} {n}" for r, n in sorted(Counter(longest.dropped.values()).items())) or "none"
        raise TooFewFramesError(f"{path}: {len(tracks)} person track(s) found, the longest seen in "
                                f"{len(longest.all_frames)} of {len(frames)} frames ({len(longest.frames)} kept; "
                                f"dropped: {why}); a clip needs at least {config.min_frames} kept frames")
    return list(clips.values())


def _write_qc(qc_dir, stem: str, entry: dict[str, Any]) -> None:
    write_atomic(Path(qc_dir) / f"{stem}.json", json.dumps(entry, indent=2))


# ------------------------------------------------------------------ library runs
def find_media(input_dir: str | os.PathLike) -> list[Path]:
    return sorted(p for p in Path(input_dir).rglob("*") if p.is_file() and media_kind(p) is not None)


def _done_marker(out_dir: Path, key: str) -> Path:
    return out_dir / ".ingest" / f"{key}.json"


def is_done(out_dir: Path, key: str) -> bool:
    marker = _done_marker(out_dir, key)
    try:
        clips = json.loads(marker.read_text())["clips"]
    except (OSError, ValueError, KeyError):
        return False
    return all(record_path(out_dir, c).exists() for c in clips)


def _ingest_one(job: tuple[str, str, str, IngestConfig]) -> dict[str, Any]:
    """Worker: one file -> records on disk and its done marker. Never raises for a bad file."""
    path, key, out_dir, config = job
    t0 = time.perf_counter()
    try:
        import torch

        torch.set_num_threads(1)  # workers are the parallelism; one thread each
        records = ingest_file(path, config, stem=key, qc_dir=Path(out_dir) / "qc")
        clips = [save_record(r, out_dir).stem.removesuffix(".clip") for r in records]
        write_atomic(_done_marker(Path(out_dir), key), json.dumps({"file": path, "clips": clips}, indent=2))
        return {"file": path, "clips": clips, "frames": sum(r.num_frames for r in records),
                "seconds": time.perf_counter() - t0}
    except IngestError as exc:
        return {"file": path, "error": type(exc).__name__, "message": str(exc), "seconds": time.perf_counter() - t0}
    except Exception as exc:  # a bug or an unexpected library failure: record it, keep the run going
        return {"file": path, "error": type(exc).__name__, "message": f"{path}: unexpected failure: {exc}",
                "seconds": time.perf_counter() - t0}


def ingest_library(input_dir: str | os.PathLike, out_dir: str | os.PathLike, config: IngestConfig | None = None,
                   workers: int = 1, progress: bool = True, rank: int = 0, world: int = 1) -> dict[str, Any]:
    """Every photo and video below `input_dir` -> clip records in `out_dir`. Returns the run's summary;
    failures also go to `<out_dir>/failures.json` (replaced by each run). Sharded: rank k of `world` takes
    files k::world of the sorted list and writes `failures.rank<k>.json` (`merge_failures` folds them);
    the QC report is rewritten from every file's QC entry present (the last rank to finish, or
    `write_library_report`, sees them all)."""
    config = config or IngestConfig()
    input_dir, out_dir = Path(input_dir), Path(out_dir)
    if not input_dir.is_dir():
        raise IngestError(f"{input_dir}: input folder not found")
    if not 0 <= rank < world:
        raise IngestError(f"rank {rank} is not in a world of {world}")
    out_dir.mkdir(parents=True, exist_ok=True)
    files = find_media(input_dir)[rank::world]
    jobs, skipped = [], []
    for f in files:
        key = clip_key(f, input_dir)
        (skipped if is_done(out_dir, key) else jobs).append((str(f), key, str(out_dir), config))
    results: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    bar = _progress(len(jobs), progress)
    for res in _run_jobs(jobs, workers):
        results.append(res)
        bar.set_postfix_str(Path(res["file"]).name + (" FAILED" if "error" in res else ""), refresh=False)
        bar.update(1)
    bar.close()
    failures = [{k: r[k] for k in ("file", "error", "message")} for r in results if "error" in r]
    write_atomic(out_dir / ("failures.json" if world == 1 else f"failures.rank{rank}.json"),
                 json.dumps(failures, indent=2))
    qc = write_library_report(out_dir)
    frames = sum(r.get("frames", 0) for r in results)
    seconds = time.perf_counter() - t0
    return {"rank": rank, "world": world, "files": len(files), "skipped": len(skipped), "processed": len(jobs),
            "failed": len(failures), "clips": sum(len(r.get("clips", [])) for r in results), "frames": frames,
            "seconds": round(seconds, 2), "frames_per_second": round(frames / seconds, 3) if seconds > 0 else 0.0,
            "qc": qc, "qc_report": str(out_dir / "qc" / "report.md"), "failures": failures}


def merge_failures(out_dir: str | os.PathLike) -> int:
    """Fold every `failures.rank<k>.json` into `failures.json` (replacing it); returns the failures listed."""
    out_dir = Path(out_dir)
    merged = []
    for path in sorted(out_dir.glob("failures.rank*.json")):
        merged += json.loads(path.read_text())
    write_atomic(out_dir / "failures.json", json.dumps(merged, indent=2))
    return len(merged)


def _run_jobs(jobs: list, workers: int) -> Iterable[dict[str, Any]]:
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield _ingest_one(job)
        return
    import multiprocessing

    # spawn: MediaPipe and torch both keep threads, which fork would copy half-alive
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap_unordered(_ingest_one, jobs)


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="file", desc="ingest", disable=not enabled, dynamic_ncols=True)


# ------------------------------------------------------------------ `genlca-train ingest`
def add_subparser(sub) -> None:
    p = sub.add_parser("ingest", help="photos and videos of people -> clip records with a fitted body")
    p.add_argument("input", help="a folder (searched recursively) or one photo/video file")
    p.add_argument("--out", required=True, help="output folder for <clip_id>.clip.safetensors and failures.json")
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes (default 1)")
    p.add_argument("--licence", default="unknown", help="licence of the footage, stored in every record")
    p.add_argument("--max-frames", type=int, default=IngestConfig.max_frames, help="frames decoded per video")
    p.add_argument("--min-frames", type=int, default=IngestConfig.min_frames, help="frames a video clip needs")
    p.add_argument("--max-people", type=int, default=IngestConfig.max_people, help="people tracked per file")
    p.add_argument("--iters", type=int, default=FitConfig.iters_pose, help="body-fit optimisation steps")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run_cli)


def run_cli(args) -> int:
    import sys

    config = IngestConfig(max_frames=args.max_frames, min_frames=args.min_frames, max_people=args.max_people,
                          licence=args.licence, fit=FitConfig(iters_pose=args.iters))
    source = Path(args.input)
    if source.is_file():  # one file: the same bookkeeping as a folder holding only it
        import shutil
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            link = Path(tmp) / source.name
            try:
                link.symlink_to(source.resolve())
            except OSError:
                shutil.copy2(source, link)
            summary = ingest_library(tmp, args.out, config, workers=1, progress=not args.no_progress)
    else:
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        try:
            summary = ingest_library(source, args.out, config, workers=args.workers, progress=not args.no_progress,
                                     rank=rank, world=world)
        except IngestError as exc:
            print(f"genlca-train ingest: {exc}", file=sys.stderr)
            return 2
        if world > 1:  # under torchrun: wait for every rank, then rank 0 writes the library's report
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("gloo")
            dist.barrier()
            if rank == 0:
                summary["failures_total"] = merge_failures(args.out)
                summary["qc"] = write_library_report(args.out)
            dist.destroy_process_group()
    json.dump({k: v for k, v in summary.items() if k != "failures"}, sys.stdout, indent=2)
    print()
    for f in summary["failures"]:
        print(f"failed: {f['error']}: {f['message']}", file=sys.stderr)
    return 0 if summary["processed"] == 0 or summary["failed"] < summary["processed"] else 1
