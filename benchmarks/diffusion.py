"""Diffusion benchmarks: `python -m benchmarks.diffusion [--presets tiny small] [--steps 10 25 50] [--model NAME_OR_DIR]`.

Untrained presets (--presets; default tiny and small when no --model is given): (1) training samples/s of
TokenMapDiT at R = 64, C = 12 (forward + backward + AdamW on the visibility-aware loss, random token maps
with half the texels visible, median of --runs steps after a warm-up), and (2) seconds per avatar to sample
a token map with Euler and text CFG (two model evaluations per step, batched) plus the explicit decode.
Their text conditions come from the hashing encoder, so the timing excludes the sentence encoder.

A model package (--model, e.g. genlca-small): what an artist waits for with that model, through the same
pipeline functions the backend serves: seconds per avatar (generate_tokens with the package's own text
encoder, Euler, guidance --guidance, then decode to Gaussians) for each step count, photo -> avatar seconds
(find and fit the person in --photo, observe it, sample at the middle step count, decode), and CPU render
frames/s at 512 x 512 of the decoded avatar (front view, rest pose). The sentence encoder's time is
included (it caches captions; a new one costs ~10 ms).
"""
from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import torch

from backend.figures import DEFAULT_PHOTO  # libdlib19.1's 2007_007763.jpg, as in docs/images/photo_to_avatar.png
from benchmarks.timing import machine_line, median_seconds, median_wall_and_cpu

PROMPTS = ("a woman with long blonde hair in a red dress, wearing white sneakers",
           "a man with short black hair in a green hoodie and grey trousers, wearing black boots",
           "a bald man in a blue t-shirt and beige shorts, wearing brown sandals",
           "a woman with brown hair in a bun in a yellow jacket and navy trousers, wearing white sneakers")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--presets", nargs="+", default=None,
                        help="untrained DiT presets (default: tiny small, or none when --model is given)")
    parser.add_argument("--model", default=None, help="a model package: a name under checkpoints/ or a folder")
    parser.add_argument("--guidance", type=float, default=4.0, help="text CFG scale of --model's samples")
    parser.add_argument("--photo", type=Path, default=DEFAULT_PHOTO,
                        help="a photo or video of a person for photo -> avatar (a video: its first frame)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_line())
    presets = args.presets if args.presets is not None else ([] if args.model else ["tiny", "small"])
    if presets:
        untrained_presets(presets, args)
    if args.model:
        model_package(args)


def untrained_presets(presets: list[str], args: argparse.Namespace) -> None:
    from backend.avatar.template import load_template
    from backend.avatar.tokens import TokenDecoder, TokenDecoderConfig, decode
    from backend.avatar.uv_layout import load_layout
    from backend.models.conditioning import HashingTextEncoder, text_condition
    from backend.models.dit import build_dit, patch_geometry, patch_validity
    from training.evaluate import sample_tokens
    from training.train_diffusion import flow_loss

    layout = load_layout(load_template("anny"), 64)
    geometry = patch_geometry(layout, 4)
    encoder = HashingTextEncoder()
    dec = TokenDecoder(TokenDecoderConfig(token_channels=12, token_layout="explicit", gaussians_per_texel=4,
                                          sh_degree=0))
    gen = torch.Generator().manual_seed(0)
    for preset in presets:
        torch.manual_seed(0)
        model = build_dit(preset, geometry)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        b = args.batch
        x = torch.randn(b, 12, 64, 64, generator=gen)
        vis = torch.rand(b, 64, 64, generator=gen) < 0.5
        cond = text_condition(encoder, ["a person in a red shirt"] * b, model.config.image_dim)
        pv = patch_validity(vis, layout.atlas_mask, 4)
        mask = vis & layout.atlas_mask

        def step() -> None:
            model.train()
            loss = flow_loss(model, x, torch.randn_like(x), torch.rand(b), cond, mask, pv)
            opt.zero_grad()
            loss.backward()
            opt.step()

        t = median_seconds(step, args.runs)
        print(f"train  {preset:5s} ({params:5.1f} M params)  batch {b}: {t:.3f} s/step, {b / t:.1f} samples/s")
        model.eval()
        c1 = text_condition(encoder, ["a person in a red shirt"], model.config.image_dim)
        for steps in args.steps:
            def sample_one() -> None:
                tokens = sample_tokens(model, c1, steps=steps, text_scale=4.0, atlas_mask=layout.atlas_mask)
                with torch.no_grad():
                    decode(tokens[0], layout, dec)

            t = median_seconds(sample_one, max(1, args.runs - 1))
            print(f"sample {preset:5s} {steps:3d} Euler steps + CFG + decode: {t:.2f} s/avatar")
        with torch.no_grad():
            t = median_seconds(lambda: decode(torch.zeros(12, 64, 64), layout, dec), args.runs)
        print(f"decode (R=64, K=4, {layout.num_valid * 4} Gaussians): {t * 1000:.0f} ms")


def model_package(args: argparse.Namespace) -> None:
    """Seconds per avatar, photo -> avatar seconds and 512 x 512 render frames/s of one model package."""
    from backend.avatar.tokens import decode
    from backend.pipelines.generate import SamplerSettings, generate_tokens
    from backend.pipelines.model_bundle import load_bundle
    from backend.render import RenderOptions, render
    from backend.render.camera import orbit_cameras

    bundle = load_bundle(args.model)
    d = bundle.describe()
    print(f"model {d['name']} (sha256 {d['sha256']}, R={d['resolution']}, C={d['token_channels']}, "
          f"K={d['gaussians_per_texel']}, {sum(p.numel() for p in bundle.dit.parameters()) / 1e6:.1f} M DiT "
          f"params, text encoder {type(bundle.text_encoder).__name__}, tokenizer: {d['tokenizer']})")
    prompts = itertools.cycle(PROMPTS)
    runs = max(1, args.runs - 1)
    with torch.no_grad():  # one warm-up for all step counts (encoder, allocator, decoder routing)
        gaussians = decode(generate_tokens(bundle, PROMPTS[0], settings=SamplerSettings(steps=1))[0], bundle.layout,
                           bundle.decoder)
    for steps in args.steps:
        settings = SamplerSettings(steps=steps, guidance=args.guidance)

        def avatar() -> None:
            nonlocal gaussians
            tokens, _ = generate_tokens(bundle, next(prompts), seed=0, settings=settings)
            with torch.no_grad():
                gaussians = decode(tokens, bundle.layout, bundle.decoder)

        t, cpu = median_wall_and_cpu(avatar, runs, warm_up=False)
        print(f"avatar {d['name']} {steps:3d} Euler steps, guidance {args.guidance:g}, + decode: {t:.2f} s/avatar, "
              f"{cpu:.2f} CPU s (median of {runs})", flush=True)
    photo_seconds(bundle, args)
    camera = orbit_cameras(1, 3.2, height=1.1, target=(0.0, 0.0, 0.88), fov=36.0, width=512, height_px=512)[0]
    options = RenderOptions(background=(1.0, 1.0, 1.0), backend="torch")
    with torch.no_grad():
        t, cpu = median_wall_and_cpu(lambda: render(gaussians, camera, options=options), args.runs)
    print(f"render {len(gaussians)} Gaussians at 512x512, CPU renderer: {1 / t:.2f} frames/s ({t:.2f} s/frame, "
          f"{cpu:.2f} CPU s; median of {args.runs})")


def photo_seconds(bundle, args: argparse.Namespace) -> None:
    """photo -> avatar: fit the person, observe (crop, tokens with a tokenizer), sample, decode."""
    from backend.avatar.tokens import decode
    from backend.perception.media import read_image, read_video
    from backend.pipelines.generate import SamplerSettings, generate_tokens
    from backend.pipelines.photo import fit_photo, observe_fitted

    if not args.photo.is_file():
        print(f"photo -> avatar: skipped, no photo at {args.photo} (scripts/fetch_test_data.sh ingest)")
        return
    image = read_video(args.photo, max_frames=1)[0][0] if args.photo.suffix.lower() in (".avi", ".mp4", ".mov") \
        else read_image(args.photo)
    steps = args.steps[len(args.steps) // 2]
    settings = SamplerSettings(steps=steps, guidance=args.guidance)
    fit_photo(image, args.photo.name)  # warm-up: the detector and the fitter load once per process
    t0, c0 = time.perf_counter(), time.process_time()
    person = fit_photo(image, args.photo.name)
    t1, c1 = time.perf_counter(), time.process_time()
    observation = observe_fitted(bundle, person)
    tokens, info = generate_tokens(bundle, "", seed=0, settings=settings, photo=observation)
    with torch.no_grad():
        decode(tokens, bundle.layout, bundle.decoder)
    t2, c2 = time.perf_counter(), time.process_time()
    print(f"photo -> avatar ({args.photo.name} {image.shape[1]}x{image.shape[0]}, {steps} steps, used "
          f"{'+'.join(info['used'])}): {t2 - t0:.2f} s = fit {t1 - t0:.2f} + observe, sample and decode "
          f"{t2 - t1:.2f}; CPU s {c2 - c0:.2f} = {c1 - c0:.2f} + {c2 - c1:.2f} (one run after a fitting warm-up)")


if __name__ == "__main__":
    main()
