"""What a studio sees after `genlca-train ingest`: a quality report per library.

Per file (`file_report`, written to `<out>/qc/<file key>.json` by the ingest of that file): the people
found (one entry per identity track), per person the frames kept for its clip and the frames dropped with
the reason (`backend/perception/detector.py` DROP_REASONS: overlap, occluded, too small, blurred,
appearance), the clip written or why none was (fewer than `min_frames` kept), and the fit's reprojection
error and silhouette IoU on the kept frames. Per person a contact sheet (`<out>/qc/<clip id>.png`,
`contact_sheet`): every frame the person was seen in, cropped around them; kept frames with the fitted
template over them (orange, yellow edge; green dots: the detected keypoints), dropped frames greyed with
the reason written on them. Per library (`write_library_report`, after every run): `<out>/qc/report.md`
and `report.json`, the table of every file's people and frames, and the totals per reason.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from backend.perception.detector import DROP_REASONS
from bridge.files.atomic import write_atomic

THUMB_HEIGHT = 120


def file_report(name: str, frame_indices: list[int], tracks: list, clips: dict[int, Any], min_frames: int,
                error: str | None = None) -> dict[str, Any]:
    """The QC entry of one file. tracks: `detector.Track`s (frame numbers are positions in
    `frame_indices`); clips: track position -> its ClipRecord (tracks without a clip are absent)."""
    people = []
    for p, tr in enumerate(tracks):
        rec = clips.get(p)
        entry: dict[str, Any] = {
            "person": p, "frames_seen": len(tr.all_frames), "kept": len(tr.frames),
            "kept_frames": [frame_indices[i] for i in tr.frames],
            "dropped": {str(frame_indices[i]): r for i, r in sorted(tr.dropped.items())},
            "dropped_by_reason": {r: sum(1 for v in tr.dropped.values() if v == r) for r in DROP_REASONS
                                  if any(v == r for v in tr.dropped.values())},
            "clip": rec.clip_id if rec is not None else None}
        if rec is None:
            entry["no_clip"] = f"{len(tr.frames)} frame(s) kept, a clip needs {min_frames}"
        else:
            fit = rec.meta.get("fit", {})
            entry["reprojection_px"] = round(float(np.nanmean(fit.get("reprojection_px", [np.nan]))), 2)
            if "silhouette_iou" in fit:
                entry["silhouette_iou"] = round(float(np.nanmean(fit["silhouette_iou"])), 3)
        people.append(entry)
    out: dict[str, Any] = {"file": name, "frames": len(frame_indices), "people": len(tracks),
                           "clips": sum(1 for e in people if e["clip"]), "persons": people}
    if error:
        out["error"] = error
    return out


def _label(img: np.ndarray, text: str, colour=(255, 255, 255)) -> None:
    import cv2

    scale = max(0.28, min(img.shape[0] / 300, img.shape[1] / (19.0 * max(len(text), 1))))
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.rectangle(img, (0, 0), (tw + 4, th + 6), (0, 0, 0), -1)
    cv2.putText(img, text, (2, th + 3), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


def contact_sheet(template, frames: list[np.ndarray], frame_indices: list[int], track, record,
                  path: str | Path, max_frames: int = 16) -> Path:
    """One row of thumbnails: the person in every frame it was seen (at most `max_frames`, evenly spread),
    kept frames with the fit over them, dropped ones greyed with the reason."""
    import cv2
    from PIL import Image

    from training.data.ingest_figure import overlay_panel

    seen = track.all_frames
    if len(seen) > max_frames:
        seen = [seen[i] for i in np.linspace(0, len(seen) - 1, max_frames).round().astype(int)]
    kept_pos = {f: k for k, f in enumerate(track.frames)}
    thumbs = []
    for f in seen:
        img = frames[f]
        h, w = img.shape[:2]
        if record is not None and f in kept_pos:
            k = kept_pos[f]
            tile = overlay_panel(template, record, k)[:, 2 * w:]
            label, colour = f"#{frame_indices[f]} kept", (120, 255, 120)
        else:
            obs = track._at(f)
            tile = img.astype(np.float32)
            m = obs.mask >= 0.5
            tile[~m] = 0.35 * tile[~m] + 0.65 * 128
            tile = tile.astype(np.uint8)
            reason = track.dropped.get(f, "too few frames")
            label, colour = f"#{frame_indices[f]} {reason}", (255, 110, 110)
        box = track._at(f).bbox
        pad = 0.2 * (box[3] - box[1]) + 6
        x0, y0 = int(max(0, box[0] - pad)), int(max(0, box[1] - pad))
        x1, y1 = int(min(w, box[2] + pad)), int(min(h, box[3] + pad))
        tile = np.ascontiguousarray(tile[y0:y1, x0:x1])
        s = THUMB_HEIGHT / max(tile.shape[0], 1)
        tile = cv2.resize(tile, (max(1, round(tile.shape[1] * s)), THUMB_HEIGHT), interpolation=cv2.INTER_AREA)
        _label(tile, label, colour)
        thumbs.append(np.pad(tile, ((0, 0), (0, 3), (0, 0)), constant_values=255))
    sheet = np.concatenate(thumbs, 1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(path, optimize=True)
    return path


def write_library_report(out_dir: str | Path) -> dict[str, Any]:
    """Every `<out>/qc/*.json` -> `<out>/qc/report.json` and `report.md`; returns the totals."""
    qc = Path(out_dir) / "qc"
    entries = []
    for p in sorted(qc.glob("*.json")):
        if p.name == "report.json":
            continue
        try:
            entries.append(json.loads(p.read_text()))
        except (OSError, ValueError):
            continue
    reasons = {r: 0 for r in DROP_REASONS}
    kept = 0
    lines = ["| file | frames | people found | clips | person: kept / seen, dropped (reason: n) | reprojection px | "
             "silhouette IoU |", "|---|---|---|---|---|---|---|"]
    for e in entries:
        cells = []
        for person in e.get("persons", []):
            kept += person["kept"]
            for r, n in person["dropped_by_reason"].items():
                reasons[r] += n
            why = ", ".join(f"{r}: {n}" for r, n in person["dropped_by_reason"].items()) or "none dropped"
            clip = person["clip"] or f"no clip ({person.get('no_clip', '')})"
            cells.append((f"p{person['person']}: {person['kept']} / {person['frames_seen']}, {why} -> {clip}",
                          person.get("reprojection_px"), person.get("silhouette_iou")))
        if not cells:
            lines.append(f"| {Path(e['file']).name} | {e.get('frames', '-')} | 0 | 0 | {e.get('error', '')} | | |")
        for k, (text, rep, iou) in enumerate(cells):
            head = f"| {Path(e['file']).name} | {e['frames']} | {e['people']} | {e['clips']} |" if k == 0 else "| | | | |"
            lines.append(f"{head} {text} | {'-' if rep is None else rep} | {'-' if iou is None else iou} |")
    totals = {"files": len(entries), "people": sum(e.get("people", 0) for e in entries),
              "clips": sum(e.get("clips", 0) for e in entries), "frames_kept": kept, "frames_dropped": reasons}
    lines += ["", "Frames kept: {}; dropped: {}.".format(
        kept, ", ".join(f"{r} {n}" for r, n in reasons.items()))]
    write_atomic(qc / "report.json", json.dumps({"totals": totals, "files": entries}, indent=2))
    write_atomic(qc / "report.md", "# Ingest QC\n\n" + "\n".join(lines) + "\n")
    return totals


def stack_sheets(paths: list[Path], out: str | Path, width: int | None = 1100, colours: int = 128) -> Path:
    """Contact sheets -> one picture, one sheet a row (at most `width` pixels wide), each with its name
    above it; `colours`: a palette of that many colours (a small PNG for docs), 0: full colour."""
    import cv2
    from PIL import Image

    sheets = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    if not sheets:
        raise ValueError("no contact sheets to stack")
    width = min(width or 10 ** 6, max(s.shape[1] for s in sheets))
    rows = []
    for p, s in zip(paths, sheets):
        title = np.full((18, width, 3), 255, np.uint8)
        cv2.putText(title, Path(p).stem, (2, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        if s.shape[1] > width:
            s = cv2.resize(s, (width, round(s.shape[0] * width / s.shape[1])), interpolation=cv2.INTER_AREA)
        rows += [title, np.pad(s, ((0, 4), (0, width - s.shape[1]), (0, 0)), constant_values=255)]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.concatenate(rows, 0))
    if colours:
        image = image.quantize(colours, dither=Image.Dither.NONE)
    image.save(out, optimize=True)
    return out
