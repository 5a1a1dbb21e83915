"""Photo -> avatar colour fidelity: `python -m benchmarks photo_avatar [--model DIR] [--frames N] ...`.

For real photos of people (libdlib19.1's example photos and frames of python3-mecavideo's g1.avi/g2.avi,
fetched by `make testdata`), each image goes through the backend's photo -> avatar path: person found and
fitted (`backend/pipelines/photo.py fit_photo`), observed (`observe_fitted`: reference crop, tokens when
the package has a tokenizer), sampled (`backend/pipelines/generate.py generate_tokens`) and decoded
(`backend/avatar/tokens.py decode`). Measured per image:

- photo side: the median Lab colour of the person's torso and leg pixels (`backend/perception/regions.py
  photo_regions`: torso = shoulders-hips quadrilateral, legs = hip-knee-ankle bands, in the eroded mask);
- avatar side: the median Lab colour of the decoded avatar's texels of the same regions (the atlas's
  "torso" and "legs" edit regions; a texel's colour is the opacity-weighted mean SH-DC colour of its K
  Gaussians), read on the texels, not on a render;
- CIEDE2000 and CIE76 between the two, and the same for the prior: the avatar the model makes with the
  same seed and no condition at all (what the photo has to beat);
- seconds from the image array to decoded Gaussians (fit + observe + sample + decode): wall, and the
  process's CPU seconds (all its threads; on a loaded machine wall time mostly measures the queue).
A region the photo does not show (keypoints not visible, e.g. legs in a portrait) is "-".
Prints a Markdown table; `--json PATH` also writes the rows.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REGIONS = ("torso", "legs")


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


def avatar_region_lab(gaussians, layout, gaussians_per_texel: int) -> dict[str, np.ndarray]:
    """Decoded Gaussians (texel-major, K per valid texel) -> {region: median Lab of its texels' colours}."""
    import torch

    from backend.avatar.gaussians import SH_C0
    from backend.perception.regions import srgb_to_lab

    k = gaussians_per_texel
    rgb = (gaussians.sh[:, 0, :] * SH_C0 + 0.5).clamp(0, 1).reshape(-1, k, 3)  # (M, K, 3)
    alpha = torch.sigmoid(gaussians.opacity_logits).reshape(-1, k, 1)  # (M, K, 1)
    texel_rgb = ((rgb * alpha).sum(1) / alpha.sum(1).clamp_min(1e-6)).double().numpy()  # (M, 3)
    lab = srgb_to_lab(texel_rgb)
    valid = layout.valid_indices.numpy()
    out = {}
    for region in REGIONS:
        in_region = layout.region_mask(region).reshape(-1).numpy()[valid]
        out[region] = np.median(lab[in_region], axis=0)
    return out


def photo_to_avatar(bundle, image: np.ndarray, name: str, prompt: str, seed: int, settings) -> dict:
    """One image through the backend path; the fitted person, the avatar's region colours, the seconds."""
    import torch

    from backend.avatar.tokens import decode
    from backend.pipelines.generate import generate_tokens
    from backend.pipelines.photo import fit_photo, observe_fitted

    t0, c0 = time.perf_counter(), time.process_time()
    person = fit_photo(image, name)
    photo = observe_fitted(bundle, person)
    t1 = time.perf_counter()
    tokens, info = generate_tokens(bundle, prompt, seed=seed, settings=settings, photo=photo)
    with torch.no_grad():
        gaussians = decode(tokens, bundle.layout, bundle.decoder)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    avatar = avatar_region_lab(gaussians, bundle.layout, bundle.decoder.config.gaussians_per_texel)
    return {"person": person, "avatar_lab": avatar, "seconds": seconds, "cpu_seconds": cpu_seconds,
            "perception_seconds": t1 - t0,
            "used": info["used"]}


def prior_lab(bundle, seed: int, settings) -> dict[str, np.ndarray]:
    """The unconditioned avatar's region colours (empty prompt, no photo, same seed)."""
    import torch

    from backend.avatar.tokens import decode
    from backend.pipelines.generate import generate_tokens

    tokens, _ = generate_tokens(bundle, "", seed=seed, settings=settings)
    with torch.no_grad():
        gaussians = decode(tokens, bundle.layout, bundle.decoder)
    return avatar_region_lab(gaussians, bundle.layout, bundle.decoder.config.gaussians_per_texel)


def _fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def measure(bundle, images, prompt: str, seed: int, settings) -> list[dict]:
    from backend.perception.media import PerceptionError
    from backend.perception.regions import delta_e76, delta_e2000, median_lab, photo_regions

    prior = prior_lab(bundle, seed, settings)
    rows = []
    for name, image in images:
        row: dict = {"image": name}
        try:
            got = photo_to_avatar(bundle, image, name, prompt, seed, settings)
        except PerceptionError as exc:
            row["error"] = f"{type(exc).__name__}: {str(exc).split(': ', 1)[-1]}"
            rows.append(row)
            continue
        person = got["person"]
        regions = photo_regions(person.masks[0], person.keypoints[0])
        row.update(seconds=round(got["seconds"], 2), cpu_seconds=round(got["cpu_seconds"], 2),
                   perception_seconds=round(got["perception_seconds"], 2), used=got["used"],
                   person_px=int((person.masks[0] > 127).sum()))
        for region in REGIONS:
            lab = median_lab(person.frames[0], regions[region])
            row[f"{region}_px"] = int(regions[region].sum())
            if lab is None:
                continue
            row[f"{region}_photo_lab"] = [round(float(v), 2) for v in lab]
            row[f"{region}_avatar_lab"] = [round(float(v), 2) for v in got["avatar_lab"][region]]
            row[f"{region}_de00"] = round(float(delta_e2000(lab, got["avatar_lab"][region])), 2)
            row[f"{region}_de76"] = round(float(delta_e76(lab, got["avatar_lab"][region])), 2)
            row[f"{region}_prior_de00"] = round(float(delta_e2000(lab, prior[region])), 2)
        rows.append(row)
        print(f"  {name}: {row.get('torso_de00', '-')} / {row.get('legs_de00', '-')} dE00, {row['seconds']} s",
              flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| image | person px | torso px | legs px | torso ΔE00 (prior) | legs ΔE00 (prior) | torso ΔE76 | "
             "legs ΔE76 | photo -> avatar s (perception s) | CPU s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['image']} | {r['error']} | | | | | | | | |")
            continue
        cells = [r["image"], str(r["person_px"]), str(r["torso_px"]), str(r["legs_px"])]
        for region in REGIONS:
            de, prior = r.get(f"{region}_de00"), r.get(f"{region}_prior_de00")
            cells.append("-" if de is None else f"{de:.1f} ({prior:.1f})")
        cells += [_fmt(r.get("torso_de76")), _fmt(r.get("legs_de76")),
                  f"{r['seconds']:.1f} ({r['perception_seconds']:.1f})", f"{r['cpu_seconds']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    ok = [r for r in rows if "error" not in r]
    summary = ["**median**", "", "", ""]
    for region in REGIONS:
        de = [r[f"{region}_de00"] for r in ok if f"{region}_de00" in r]
        prior = [r[f"{region}_prior_de00"] for r in ok if f"{region}_prior_de00" in r]
        summary.append(f"{np.median(de):.1f} ({np.median(prior):.1f}), n={len(de)}" if de else "-")
    for region in REGIONS:
        de = [r[f"{region}_de76"] for r in ok if f"{region}_de76" in r]
        summary.append(f"{np.median(de):.1f}" if de else "-")
    for key in ("seconds", "cpu_seconds"):
        secs = [r[key] for r in ok]
        summary.append(f"{np.median(secs):.1f}" if secs else "-")
    lines.append("| " + " | ".join(summary) + " |")
    return "\n".join(lines)


def _data(folder: str | None) -> Path:
    if folder:
        return Path(folder)
    out = subprocess.run([str(ROOT / "scripts" / "fetch_test_data.sh"), "ingest"], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"the real photos are unavailable (make testdata): {out.stderr.strip()}")
    return Path(out.stdout.strip().splitlines()[-1])


def _write_json_atomic(path: Path, value) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2))
    os.replace(tmp, path)


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
          f"(sha256 {model['sha256']}, tokenizer: {model['tokenizer']}); {len(images)} images; steps "
          f"{settings.steps}, image guidance {settings.image_guidance}, seed {args.seed}, prompt {args.prompt!r}")
    start = time.perf_counter()
    rows = measure(bundle, images, args.prompt, args.seed, settings)
    print()
    print(markdown(rows))
    print(f"\n{len(images)} images in {time.perf_counter() - start:.0f} s (load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at the end)")
    if args.json:
        _write_json_atomic(Path(args.json), {"model": model, "settings": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
