"""Photo -> avatar colour fidelity: `python -m benchmarks photo_avatar [--model DIR] [--frames N] ...`.

For real photos of people (libdlib19.1's example photos and frames of python3-mecavideo's g1.avi/g2.avi,
fetched by `make testdata`), each image goes through the backend's photo -> avatar path: person found and
fitted once (`backend/pipelines/photo.py fit_photo`), then for each way of using the photo: observed
(`observe_fitted`), sampled (`backend/pipelines/generate.py generate_tokens`) and decoded
(`backend/avatar/tokens.py decode`). The ways, all from the one package and seed:

- prior: no condition at all (empty prompt, no photo): what the photo has to beat;
- copy + fill: no generative model: the seen texels keep the colour the tokenizer read, every other texel
  gets the median of the seen texels' colours (copy + region fill: the median of its own region's seen
  texels, where it has some): what the DiT has to beat on the unseen texels;
- image crop: the reference crop for the DiT's image encoder only (the package without its tokenizer);
- tokenizer, colour: crop + the tokenizer's colour channels of the texels the photo shows kept (the
  `--photo-channels colour` package), the DiT samples the rest;
- tokenizer, all: crop + every token channel of the seen texels kept (`--photo-channels all`).
The tokenizer rows need a package with a tokenizer (`genlca-train package --tokenizer ...`).

Measured per image and way:
- photo side: the median Lab colour of the person's torso and leg pixels (`backend/perception/regions.py
  photo_regions`: torso = shoulders-hips quadrilateral, legs = hip-knee-ankle bands, in the eroded mask);
- avatar side: the median Lab colour of the decoded avatar's texels of the same regions (the atlas's
  "torso" and "legs" edit regions; a texel's colour is the opacity-weighted mean SH-DC colour of its K
  Gaussians), read on the texels, not on a render;
- CIEDE2000 and CIE76 between the two, for all of a region's texels and, with a tokenizer in the package,
  for the texels the photo shows (the tokenizer's visibility: the fitted template's anchors projected into
  the photo, depth-tested) and the ones it does not (the back, the far side) apart. Seen texels are pinned
  to the photo's colour by the tokenizer ways, so their score is mostly the tokenizer's reading of the
  photo; the unseen ones are what the DiT adds. The photo's region colour stands in for the unseen
  texels' truth (a garment is assumed one colour front and back);
- seconds from the image array to decoded Gaussians (fit + observe + sample + decode): wall, and the
  process's CPU seconds (all its threads; on a loaded machine wall time mostly measures the queue).
A region the photo does not show (keypoints not visible, e.g. legs in a portrait) is "-".
Prints Markdown tables (per image, and medians per way); `--json PATH` also writes the rows.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np

from benchmarks.timing import write_json_atomic
from training.fidelity import PHOTO_REGIONS as REGIONS, copy_fill_lab, region_masks, split_lab, texel_lab

ROOT = Path(__file__).resolve().parents[1]


def test_images(data: Path, frames: int, photos: int | None) -> list[tuple[str, np.ndarray]]:
    """(name, (H, W, 3) uint8) for the Debian photos (dogs.jpg, without a person, is left out) and `frames`
    evenly spaced frames of each video."""
    from backend.perception.media import read_image, read_video

    out = [(p.name, read_image(p)) for p in sorted(data.glob("*.jpg")) if p.name != "dogs.jpg"][:photos]
    for video in ("g1.avi", "g2.avi"):
        if frames > 0 and (data / video).is_file():
            images, indices, _ = read_video(data / video, max_frames=frames)
            out += [(f"{video}#{i}", image) for i, image in zip(indices, images)]
    return out


def ways(bundle) -> dict[str, object]:
    """{way: the bundle it samples with}: the crop-only one drops the tokenizer; the tokenizer ones pin
    the colour or every channel (`backend/pipelines/model_bundle.py photo_channel_indices`)."""
    import dataclasses

    from backend.pipelines.model_bundle import photo_channel_indices

    out = {"image crop": dataclasses.replace(bundle, tokenizer=None, photo_pins=None, photo_channels=())}
    if bundle.tokenizer is not None:
        for pins in ("colour", "all"):
            out[f"tokenizer, {pins}"] = dataclasses.replace(
                bundle, photo_pins=pins, photo_channels=photo_channel_indices(bundle.decoder.config, pins))
    return out


def avatar_from(bundle, person, prompt: str, seed: int, settings) -> tuple[np.ndarray, dict]:
    """A fitted person -> observed, sampled, decoded -> ((M, 3) texel Lab, generate_tokens' info)."""
    import torch

    from backend.avatar.tokens import decode
    from backend.pipelines.generate import generate_tokens
    from backend.pipelines.photo import observe_fitted

    photo = observe_fitted(bundle, person)
    tokens, info = generate_tokens(bundle, prompt, seed=seed, settings=settings, photo=photo)
    with torch.no_grad():
        gaussians = decode(tokens, bundle.layout, bundle.decoder)
    return texel_lab(gaussians, bundle.decoder.config.gaussians_per_texel), info


def prior_lab(bundle, seed: int, settings) -> np.ndarray:
    """The unconditioned avatar's texel colours (empty prompt, no photo, same seed), (M, 3) Lab."""
    import torch

    from backend.avatar.tokens import decode
    from backend.pipelines.generate import generate_tokens

    tokens, _ = generate_tokens(bundle, "", seed=seed, settings=settings)
    with torch.no_grad():
        gaussians = decode(tokens, bundle.layout, bundle.decoder)
    return texel_lab(gaussians, bundle.decoder.config.gaussians_per_texel)


def _fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def _scores(photo_lab: dict, avatar: dict[str, np.ndarray]) -> dict:
    """photo_lab: {region: Lab}; avatar: split_lab's {region[/seen|/unseen]: Lab} -> dE per key present."""
    from backend.perception.regions import delta_e76, delta_e2000

    out = {}
    for key, lab in avatar.items():
        region, _, part = key.partition("/")
        if region not in photo_lab:
            continue
        name = f"{region}_{part}" if part else region
        out[f"{name}_avatar_lab"] = [round(float(v), 2) for v in lab]
        out[f"{name}_de00"] = round(float(delta_e2000(photo_lab[region], lab)), 2)
        out[f"{name}_de76"] = round(float(delta_e76(photo_lab[region], lab)), 2)
    return out


def measure(bundle, images, prompt: str, seed: int, settings) -> list[dict]:
    """One row per image: the photo's region colours and, per way, the scores (all texels of a region, and
    the texels the photo shows / does not show apart) and seconds."""
    from backend.perception.media import PerceptionError
    from backend.perception.regions import median_lab, photo_regions
    from backend.pipelines.photo import fit_photo, observe_fitted

    masks = region_masks(bundle.layout)
    prior = prior_lab(bundle, seed, settings)
    by_way = ways(bundle)
    valid = bundle.layout.valid_indices.numpy()
    rows = []
    for name, image in images:
        row: dict = {"image": name}
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            person = fit_photo(image, name)
        except PerceptionError as exc:
            row["error"] = f"{type(exc).__name__}: {str(exc).split(': ', 1)[-1]}"
            rows.append(row)
            continue
        fit_s, fit_cpu = time.perf_counter() - t0, time.process_time() - c0
        regions = photo_regions(person.masks[0], person.keypoints[0])
        photo_lab = {}
        row.update(perception_seconds=round(fit_s, 2), person_px=int((person.masks[0] > 127).sum()))
        for region in REGIONS:
            row[f"{region}_px"] = int(regions[region].sum())
            lab = median_lab(person.frames[0], regions[region])
            if lab is not None:
                photo_lab[region] = lab
                row[f"{region}_photo_lab"] = [round(float(v), 2) for v in lab]
        seen = None
        if bundle.tokenizer is not None:
            photo = observe_fitted(bundle, person)
            seen = photo.visible.reshape(-1).numpy()[valid].astype(bool)
            for region, m in masks.items():
                row[f"{region}_seen_texels"] = f"{int((m & seen).sum())}/{int(m.sum())}"
        row["ways"] = {"prior": _scores(photo_lab, split_lab(prior, masks, seen))}
        if seen is not None:
            for way, lab in copy_fill_lab(bundle, photo, masks, seen).items():
                row["ways"][way] = _scores(photo_lab, lab)
        for way, way_bundle in by_way.items():
            t1, c1 = time.perf_counter(), time.process_time()
            lab, info = avatar_from(way_bundle, person, prompt, seed, settings)
            row["ways"][way] = {**_scores(photo_lab, split_lab(lab, masks, seen)), "used": info["used"],
                                "kept_texels": info.get("kept_texels", 0),
                                "seconds": round(fit_s + time.perf_counter() - t1, 2),
                                "cpu_seconds": round(fit_cpu + time.process_time() - c1, 2)}
        rows.append(row)
        print(f"  {name}: " + "; ".join(f"{way} {r.get('torso_seen_de00', '-')} / {r.get('torso_unseen_de00', '-')}"
                                        for way, r in row["ways"].items()) + " dE00 (torso seen / unseen)",
              flush=True)
    return rows


def way_names(rows: list[dict]) -> list[str]:
    names: list[str] = []
    for r in rows:
        for way in r.get("ways", {}):
            if way not in names:
                names.append(way)
    return names


PARTS = ("", "_seen", "_unseen")


def markdown_images(rows: list[dict]) -> str:
    """Per image: pixels, seen texels, then torso / legs dE00 (all; seen; unseen texels) for every way."""
    names = way_names(rows)
    lines = ["| image | person px | torso px | legs px | torso / legs texels seen | "
             + " | ".join(f"{w}: torso all, seen, unseen / legs all, seen, unseen ΔE00" for w in names) + " |",
             "|---|---|---|---|---|" + "---|" * len(names)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['image']} | {r['error']} | | | |" + " |" * len(names))
            continue
        cells = [r["image"], str(r["person_px"]), str(r["torso_px"]), str(r["legs_px"]),
                 f"{r.get('torso_seen_texels', '-')} / {r.get('legs_seen_texels', '-')}"]
        for way in names:
            w = r["ways"].get(way, {})
            cells.append(" / ".join(", ".join(_fmt(w.get(f"{region}{part}_de00")) for part in PARTS)
                                    for region in REGIONS))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _median_cell(ok: list[dict], way: str, key: str) -> str:
    vals = [r["ways"][way][key] for r in ok if key in r["ways"].get(way, {})]
    return f"{np.median(vals):.1f} (n={len(vals)})" if vals else "-"


def markdown(rows: list[dict]) -> str:
    """One row per way: median CIEDE2000 over the images of the torso / legs, over all of a region's
    texels, the seen ones and the unseen ones; seconds per photo."""
    ok = [r for r in rows if "error" not in r]
    lines = ["| photo used as | torso ΔE00 all | torso seen | torso unseen | legs ΔE00 all | legs seen | legs unseen "
             "| s per photo | CPU s per photo |", "|---|---|---|---|---|---|---|---|---|"]
    for way in way_names(ok):
        cells = [way] + [_median_cell(ok, way, f"{region}{part}_de00") for region in REGIONS for part in PARTS]
        for key in ("seconds", "cpu_seconds"):
            secs = [r["ways"][way][key] for r in ok if key in r["ways"][way]]
            cells.append(f"{np.median(secs):.1f}" if secs else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def unseen_verdict(rows: list[dict], way: str = "tokenizer, colour", baseline: str = "copy + fill") -> str:
    """Does `way` beat `baseline` on the unseen texels? Per image and region, who is closer to the photo."""
    wins, total, diffs = 0, 0, []
    for r in rows:
        if "error" in r or way not in r["ways"] or baseline not in r["ways"]:
            continue
        for region in REGIONS:
            key = f"{region}_unseen_de00"
            if key in r["ways"][way] and key in r["ways"][baseline]:
                d = r["ways"][way][key] - r["ways"][baseline][key]
                diffs.append(d)
                wins += d < 0
                total += 1
    if not total:
        return f"{way} vs {baseline} on unseen texels: nothing to compare"
    return (f"{way} vs {baseline} on unseen texels: closer to the photo in {wins} of {total} image-regions, "
            f"median difference {np.median(diffs):+.1f} ΔE00 (negative: {way} better)")


def _data(folder: str | None) -> Path:
    if folder:
        return Path(folder)
    out = subprocess.run([str(ROOT / "scripts" / "fetch_test_data.sh"), "ingest"], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"the real photos are unavailable (make testdata): {out.stderr.strip()}")
    return Path(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="model package folder or name (default: the shipped "
                        "genlca-small, as `genlca-backend serve`)")
    parser.add_argument("--data", default=None, help="folder of the test photos and videos (default: "
                        "scripts/fetch_test_data.sh ingest)")
    parser.add_argument("--frames", type=int, default=4, help="frames per video, evenly spaced (0: none)")
    parser.add_argument("--photos", type=int, default=None, help="at most this many photos (default: all)")
    parser.add_argument("--prompt", default="", help="text with the photo (default: none, photo only)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--image-guidance", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args(argv)

    import torch

    from backend.pipelines.generate import SamplerSettings
    from backend.pipelines.model_bundle import load_bundle

    torch.set_num_threads(args.threads)
    bundle = load_bundle(args.model)
    settings = SamplerSettings(steps=args.steps, image_guidance=args.image_guidance)
    images = test_images(_data(args.data), args.frames, args.photos)
    model = bundle.describe()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, threads {torch.get_num_threads()}; model {model['name']} "
          f"(sha256 {model['sha256']}, tokenizer: {model['tokenizer']}, photo pins "
          f"{model['photo_pins']}); {len(images)} images; steps "
          f"{settings.steps}, image guidance {settings.image_guidance}, seed {args.seed}, prompt {args.prompt!r}")
    start = time.perf_counter()
    rows = measure(bundle, images, args.prompt, args.seed, settings)
    print()
    print(markdown_images(rows))
    print()
    print(markdown(rows))
    print()
    for baseline in ("copy + fill", "copy + region fill", "prior"):
        print(unseen_verdict(rows, baseline=baseline))
    print(f"\n{len(images)} images in {time.perf_counter() - start:.0f} s (load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at the end)")
    if args.json:
        write_json_atomic(args.json, {"model": model, "settings": vars(args), "rows": rows}, indent=2)


if __name__ == "__main__":
    main()
