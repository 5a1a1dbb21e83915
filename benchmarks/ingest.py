"""Video/photo ingest and body fitting: `python -m benchmarks ingest` (or `python -m benchmarks.ingest [...]`).

Prints, as markdown tables:
1. fitting where the truth is known: MPJPE (cm, pelvis-aligned, 15 joints) and 2D reprojection error (px) of
   the fitted pose, (a) on posed-template clips rendered with a known camera (`fit_eval.ground_truth_clip`)
   and (b) on the synthetic-people generator's clips (`training/data/synthetic.py`: CMU/walk-cycle motion,
   moving cameras, clothes and hair in the silhouettes), keypoints projected from their true pose;
2. the real Debian videos (g1.avi, g2.avi) and a video of two synthetic people crossing
   (`training/data/crossing.py`, seed 3): per clip (= tracked identity), frames kept / seen and the dropped
   ones' reasons, keypoint reprojection error and silhouette IoU of the fitted template against the
   person's mask on every kept frame; for the crossing video, which person the clip follows and the share
   of its mask on that person (smallest over its frames) and on the other one (largest);
3. the real Debian photos (libdlib19.1 examples): people found, reprojection, IoU, named failures;
4. ingest throughput, frames/s (decode + detect/track + fit; the IoU measurement is not timed).
With --figure PATH it also saves frame | mask | fitted-template overlays of a real video; with --qc DIR it
runs `genlca-train ingest`'s library path on the three videos and prints its QC report (--qc-figure: the
contact sheets in one picture).
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _data() -> Path | None:
    out = subprocess.run([str(ROOT / "scripts" / "fetch_test_data.sh"), "ingest"], capture_output=True, text=True)
    if out.returncode != 0:
        print(f"real data unavailable: {out.stderr.strip()}")
        return None
    return Path(out.stdout.strip().splitlines()[-1])


def _measure(template, record) -> list[float]:
    from backend.perception.fitting import render_silhouette, silhouette_iou

    w, h = record.image_size
    return [silhouette_iou(render_silhouette(template, record.joint_rotations[f], record.root_translation[f],
                                             record.viewmats[f], record.intrinsics[f], w, h), record.masks[f] >= 128)
            for f in range(record.num_frames)]


def fit_accuracy(template, clips: int, synth_people: int) -> None:
    from training.data.fit_eval import ground_truth_clip, score_fit
    from backend.perception.fitting import BodyFitter

    fitter = BodyFitter(template)
    print("\n| truth | clip | frames | MPJPE cm | abs. joint error cm | reprojection px | fit s |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for seed in range(clips):
        truth = ground_truth_clip(template, n_frames=4, seed=seed)
        t0 = time.perf_counter()
        fit = fitter.fit(truth.keypoints, (truth.width, truth.height), masks=truth.masks, intrinsics=truth.intrinsics)
        s = score_fit(template, truth, fit)
        rows.append(s)
        print(f"| posed template | seed {seed} | 4 | {s['mpjpe_cm']} | {s['absolute_joint_error_cm']} | "
              f"{s['reprojection_px']} | {time.perf_counter() - t0:.1f} |")
    if synth_people:
        try:
            from training.data import synthetic
        except ImportError as exc:
            print(f"| synthetic people | skipped ({exc}) | | | | | |")
            return
        for record, truth in synthetic_truths(synthetic, template, synth_people):
            t0 = time.perf_counter()
            fit = fitter.fit(truth.keypoints, (truth.width, truth.height), masks=truth.masks,
                             intrinsics=truth.intrinsics)
            s = score_fit(template, truth, fit)
            rows.append(s)
            print(f"| synthetic people | {record.clip_id} ({record.meta.get('camera', {}).get('view', '')}) | {record.num_frames} | "
                  f"{s['mpjpe_cm']} | {s['absolute_joint_error_cm']} | {s['reprojection_px']} | "
                  f"{time.perf_counter() - t0:.1f} |")


def synthetic_truths(synthetic, template, people: int):
    """(clip record, its fitting truth) for `people` synthetic people (seed 0, 8 frames of 256 x 256), made in
    a temporary folder that is removed when the loop ends. synthetic: the training.data.synthetic module."""
    from training.data.fit_eval import truth_from_record
    from training.data.records import iter_record_paths, load_record

    with tempfile.TemporaryDirectory() as tmp:
        synthetic.generate(synthetic.SynthConfig(seed=0, frames=8, width=256, height=256), people, tmp,
                           workers=1, progress=False)
        for path in iter_record_paths(tmp):
            record = load_record(path)
            yield record, truth_from_record(template, record)


def focal_study(template, synth_people: int) -> None:
    """Synthetic people fitted three ways: with their true intrinsics, with the 55-degree guess held fixed,
    and with the guess as the prior of a fitted focal length (`FitConfig.fit_focal`): MPJPE and focal error."""
    import dataclasses

    from backend.perception.fitting import BodyFitter, FitConfig
    from training.data import synthetic
    from training.data.fit_eval import score_fit

    ways = {"true intrinsics": FitConfig(), "55 deg guess, fixed": FitConfig(),
            "55 deg guess, focal fitted": dataclasses.replace(FitConfig(), fit_focal=True)}
    fitters = {name: BodyFitter(template, cfg) for name, cfg in ways.items()}
    print("\n| clip | true fov deg | way | MPJPE cm | abs. joint error cm | reprojection px | focal error % |")
    print("|---|---|---|---|---|---|---|")
    for record, truth in synthetic_truths(synthetic, template, synth_people):
        true_f = float(truth.intrinsics[0, 0])
        fov = 2 * np.degrees(np.arctan(truth.width / 2 / true_f))
        for name, fitter in fitters.items():
            given = truth.intrinsics if name == "true intrinsics" else None
            fit = fitter.fit(truth.keypoints, (truth.width, truth.height), masks=truth.masks, intrinsics=given)
            sc = score_fit(template, truth, fit)
            err = 100 * (float(fit.intrinsics[0, 0]) / true_f - 1)
            print(f"| {record.clip_id} ({record.meta.get('camera', {}).get('view', '')}) | {fov:.1f} | {name} | "
                  f"{sc['mpjpe_cm']} | {sc['absolute_joint_error_cm']} | {sc['reprojection_px']} | {err:+.1f} |",
                  flush=True)


FITTERS = {  # the fitter before issue 22's body work (no shape, no mocap prior, hands and feet at rest) and now
    "before": dict(fit_shape=False, pose_prior=False, w_extremity=1e4),
    "shape + prior": dict(),
}


def heldout_study(template, clips: int, ways: dict[str, dict] | None = None) -> list[dict]:
    """Known body shape and motion (`fit_eval.mocap_clip`), fitted on the even frames, scored on the odd ones
    (`fit_eval.heldout_scores`): per clip and fitter, MPJPE (all 15 joints; knees and ankles) on held-out
    frames, silhouette IoU on input and held-out frames, body-shape error. Clips: `clips` of each of
    crop-legs / BVH (held-out mocap), crop-legs / walk cycle, full / BVH."""
    import dataclasses

    from backend.perception.fitting import BodyFitter, FitConfig
    from training.data.fit_eval import heldout_scores, mocap_clip

    ways = ways or FITTERS
    fitters = {name: BodyFitter(template, dataclasses.replace(FitConfig(), **kw)) for name, kw in ways.items()}
    kinds = [("crop-legs", "bvh"), ("crop-legs", "walk"), ("full", "bvh")]
    print("\n| clip | view | motion | fitter | MPJPE held-out cm | legs held-out cm | MPJPE input cm | legs input cm "
          "| IoU input | IoU held-out | body vertex error cm | fitted shape |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for view, source in kinds:
        for seed in range(clips):
            truth = mocap_clip(template, seed, view=view, motion_source=source)
            for name, fitter in fitters.items():
                t0 = time.process_time()
                sc = heldout_scores(template, fitter, truth.clip, truth.shape)
                rows.append({"seed": seed, "view": view, "motion": truth.motion, "fitter": name, **sc})
                print(f"| {seed} | {view} | {truth.motion} | {name} | {sc['mpjpe_heldout_cm']} | {sc['legs_heldout_cm']} | "
                      f"{sc['mpjpe_input_cm']} | {sc['legs_input_cm']} | {sc['iou_input']} | {sc['iou_heldout']} | "
                      f"{sc['shape_vertex_cm']} | {sc['fitted_shape']} (true {[round(float(v), 2) for v in truth.shape]}) "
                      f"| {time.process_time() - t0:.0f} CPU-s |", flush=True)
    for name in ways:
        for view, source in kinds:
            sel = [r for r in rows if r["fitter"] == name and r["view"] == view and (source in r["motion"][:4])]
            if sel:
                m = {k: round(float(np.mean([r[k] for r in sel])), 3) for k in
                     ("mpjpe_heldout_cm", "legs_heldout_cm", "iou_input", "iou_heldout", "shape_vertex_cm")}
                print(f"mean | {view} | {source} | {name} | n={len(sel)} | {m}")
    return rows


def real_heldout(template, records_dir: Path, ways: dict[str, dict] | None = None) -> list[dict]:
    """Ingested real clips (`genlca-train ingest` records: MediaPipe keypoints and masks, the 55-degree camera
    guess) refitted by `fit_eval.heldout_fit`: even frames fitted with their silhouettes, odd frames from their
    keypoints alone with the body shape of the even ones; silhouette IoU against each frame's mask."""
    import dataclasses

    from backend.perception.fitting import BodyFitter, FitConfig
    from training.data.fit_eval import heldout_fit
    from training.data.records import iter_record_paths, load_record

    ways = ways or FITTERS
    fitters = {name: BodyFitter(template, dataclasses.replace(FitConfig(), **kw)) for name, kw in ways.items()}
    print("\n| clip | frames in / held out | fitter | IoU input (mean / min) | IoU held-out (mean / min) | "
          "fitted shape | CPU s |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for path in iter_record_paths(records_dir):
        r = load_record(path)
        for name, fitter in fitters.items():
            c0 = time.process_time()
            h = heldout_fit(template, fitter, r.keypoints, r.masks, r.image_size, r.intrinsics[0])
            shape = "-" if h.fit_inputs.shape is None else [round(float(v), 2) for v in h.fit_inputs.shape]
            rows.append({"clip": r.clip_id, "fitter": name, "iou_input": float(np.mean(h.iou_inputs)),
                         "iou_heldout": float(np.mean(h.iou_held_out))})
            print(f"| {r.clip_id} | {len(h.inputs)} / {len(h.held_out)} | {name} | {np.mean(h.iou_inputs):.3f} / "
                  f"{np.min(h.iou_inputs):.3f} | {np.mean(h.iou_held_out):.3f} / {np.min(h.iou_held_out):.3f} | "
                  f"{shape} | {time.process_time() - c0:.0f} |", flush=True)
    for name in ways:
        sel = [r for r in rows if r["fitter"] == name]
        print(f"| mean of {len(sel)} clips | | {name} | {np.mean([r['iou_input'] for r in sel]):.3f} | "
              f"{np.mean([r['iou_heldout'] for r in sel]):.3f} | | |")
    return rows


def identity_scores(record, video) -> tuple[int, float, float]:
    """A crossing-video clip against the truth: (its person, the smallest share of its mask on that person
    over its frames, the largest share on the other person)."""
    shares = []
    for k, f in enumerate(record.meta["frame_indices"]):
        m = record.masks[k] >= 128
        shares.append([float((m & video.person_mask(p)[f]).sum() / max(m.sum(), 1)) for p in (0, 1)])
    shares = np.asarray(shares)
    who = int(np.argmax(shares.sum(0)))
    return who, float(shares[:, who].min()), float(shares[:, 1 - who].max())


def _dropped(record) -> str:
    from collections import Counter

    c = Counter(record.meta.get("dropped_frames", {}).values())
    return ", ".join(f"{r} {n}" for r, n in sorted(c.items())) or "none"


def real_media(template, data: Path, figure: str | None, max_photos: int | None = None,
               crossing: tuple[Path, object] | None = None, videos: bool = True) -> None:
    from training.data.ingest import IngestConfig, IngestError, ingest_file
    from training.data.ingest_figure import save_overlay_figure

    config = IngestConfig(measure=False)
    total_frames, total_seconds, total_cpu = 0, 0.0, 0.0
    photos = sorted(p.name for p in data.glob("*.jpg"))[:max_photos]
    files = ([data / "g1.avi", data / "g2.avi"] if videos else []) + ([crossing[0]] if crossing else []) + \
        [data / p for p in photos]
    print("\n| file | clip | frames kept / seen | dropped | reprojection px (mean / max) | "
          "silhouette IoU (mean / min) | identity (crossing: person, min own share, max other share) | s |")
    print("|---|---|---|---|---|---|---|---|")
    for path in files:
        name = path.name
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            records = ingest_file(path, config)
        except IngestError as exc:
            print(f"| {name} | {type(exc).__name__}: {str(exc).split(': ', 1)[-1]} | | | | | | "
                  f"{time.perf_counter() - t0:.1f} |")
            continue
        seconds = time.perf_counter() - t0
        total_seconds += seconds
        total_cpu += time.process_time() - c0
        total_frames += sum(r.num_frames for r in records)
        for r in records:
            rep = np.asarray(r.meta["fit"]["reprojection_px"])
            iou = np.asarray(_measure(template, r))
            seen = r.num_frames + len(r.meta.get("dropped_frames", {}))
            ident = "-"
            if crossing and path == crossing[0]:
                who, own, other = identity_scores(r, crossing[1])
                ident = f"person {who}, {own:.3f}, {other:.3f}"
            print(f"| {name} | {r.clip_id} | {r.num_frames} / {seen} | {_dropped(r)} | {np.nanmean(rep):.1f} / "
                  f"{np.nanmax(rep):.1f} | {iou.mean():.3f} / {iou.min():.3f} | {ident} | {seconds:.1f} |")
        if figure and name == "g1.avi":
            # the cyclist: the clip whose person moves farthest across the frame
            best = max(records, key=lambda r: np.ptp(r.keypoints[:, 0, 0]) if r.num_frames > 1 else 0)
            print(f"\nfigure: {save_overlay_figure(template, best, figure)} ({best.clip_id})\n")
    if total_seconds:
        print(f"\ningest throughput (one process): {total_frames} frames in {total_seconds:.1f} s wall = "
              f"{total_frames / total_seconds:.2f} frames/s; {total_cpu:.1f} CPU-s = "
              f"{total_frames / total_cpu:.2f} frames per CPU-second (all threads; load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at the end)")


def qc_run(data: Path, crossing: tuple[Path, object], out: Path, figure: str | None) -> None:
    """`genlca-train ingest` of g1.avi, g2.avi and the crossing video into `out` (the library path, QC report
    included), then the per-clip table from the records on disk; with `figure`, the contact sheets stacked
    into one picture."""
    from training.data.ingest import IngestConfig, ingest_library
    from training.data.ingest_qc import stack_sheets
    from training.data.records import load_record

    with tempfile.TemporaryDirectory() as tmp:
        for p in (data / "g1.avi", data / "g2.avi", crossing[0]):
            (Path(tmp) / p.name).symlink_to(p.resolve())
        t0, c0 = time.perf_counter(), time.process_time()
        summary = ingest_library(tmp, out, IngestConfig(), progress=False)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    print("\n| file | clip | frames kept / seen | dropped | reprojection px (mean / max) | "
          "silhouette IoU (mean / min) | identity (crossing: person, min own share, max other share) |")
    print("|---|---|---|---|---|---|---|")
    for path in sorted(out.glob("*.clip.safetensors")):
        r = load_record(path)
        rep = np.asarray(r.meta["fit"]["reprojection_px"])
        iou = np.asarray(r.meta["fit"]["silhouette_iou"])
        seen = r.num_frames + len(r.meta.get("dropped_frames", {}))
        ident = "-"
        if Path(r.meta["source_file"]).name == crossing[0].name:
            who, own, other = identity_scores(r, crossing[1])
            ident = f"person {who}, {own:.3f}, {other:.3f}"
        print(f"| {Path(r.meta['source_file']).name} | {r.clip_id} | {r.num_frames} / {seen} | {_dropped(r)} | "
              f"{np.nanmean(rep):.1f} / {np.nanmax(rep):.1f} | {iou.mean():.3f} / {iou.min():.3f} | {ident} |")
    print(f"\nQC report: {summary['qc_report']}\n")
    print((out / "qc" / "report.md").read_text())
    print(f"ingest (decode + detect/track + fit + IoU + QC sheets, one process): {summary['frames']} clip frames "
          f"in {seconds:.1f} s wall, {cpu:.1f} CPU-s of this process = {summary['frames'] / cpu:.2f} frames per "
          f"CPU-second (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at the end)")
    if figure:
        print(f"QC figure: {stack_sheets(sorted((out / 'qc').glob('*.png')), figure)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=3, help="posed-template truth clips")
    parser.add_argument("--synth-people", type=int, default=4, help="synthetic-generator clips (0: none)")
    parser.add_argument("--no-real", action="store_true", help="skip the Debian videos and photos")
    parser.add_argument("--photos", type=int, default=None, help="at most this many Debian photos (default: all)")
    parser.add_argument("--figure", default=None, help="save the overlay figure of g1.avi here")
    parser.add_argument("--no-crossing", action="store_true", help="skip the two-person crossing video")
    parser.add_argument("--focal", type=int, default=0, help="synthetic clips for the focal-length study (0: none)")
    parser.add_argument("--heldout", type=int, default=0, help="known-body clips per kind for the held-out "
                        "frame study (fit_eval.mocap_clip; 0: none)")
    parser.add_argument("--real-heldout", default=None, help="a folder of ingested records (e.g. g1.avi and g2.avi "
                        "through `genlca-train ingest`): held-out-frame silhouette IoU of the body fit")
    parser.add_argument("--qc", default=None, help="also run `genlca-train ingest` on g1.avi, g2.avi and the "
                        "crossing video into this folder (QC report in its qc/)")
    parser.add_argument("--qc-figure", default=None, help="with --qc: the contact sheets stacked into this PNG")
    args = parser.parse_args(argv)

    import torch

    from backend.avatar.template import load_template

    torch.set_num_threads(1)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    template = load_template("anny")
    fit_accuracy(template, args.clips, args.synth_people)
    if args.heldout:
        heldout_study(template, args.heldout)
    if args.real_heldout:
        real_heldout(template, Path(args.real_heldout))
    if args.focal:
        focal_study(template, args.focal)
    if not args.no_real:
        data = _data()
        if data is not None:
            with tempfile.TemporaryDirectory() as tmp:
                crossing = None
                if not args.no_crossing:
                    from training.data.crossing import make_crossing, write_video

                    video = make_crossing()
                    crossing = (write_video(Path(tmp) / "crossing.mp4", video.frames, video.fps), video)
                if args.qc and crossing:  # the videos through the library path, with its QC report
                    qc_run(data, crossing, Path(args.qc), args.qc_figure)
                    if args.photos != 0:
                        real_media(template, data, None, args.photos, None, videos=False)
                else:
                    real_media(template, data, args.figure, args.photos, crossing)


if __name__ == "__main__":
    main()
