"""`genlca-train`: the training stack's command line, one subcommand per stage (README, "Retraining").

    prepare          build and cache the body template and its UV texel layouts (safetensors)
    synth, ingest    clip records: synthetic people (training/data/synthetic.py), real videos/photos
                     (training/data/ingest.py)
    tokenizer, fit   train the tokenizer (training/train_tokenizer.py); fit one clip's token map directly
    tokenize,        clip records -> token shards (training/tokenize_library.py, torchrun-aware); one real
    tokenize-video   video -> token map (training/tokenize_video.py)
    diffusion, eval  train the token-map DiT (training/train_diffusion.py, torchrun-aware); evaluate it
                     (training/evaluate.py)
    scaling          the data-scaling curve (training/scaling.py)
    ablation         the visibility ablation: aware / loss_mask / naive x seeds (training/ablation.py)
    package          a model package the backend serves (training/package_model.py)

Each stage's options and code live in its module; the modules are imported when the parser is built.
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def _prepare(args: argparse.Namespace) -> int:
    from backend.avatar.template import load_template
    from backend.avatar.uv_layout import load_layout

    t0 = time.perf_counter()
    template = load_template(args.template, cache_dir=args.cache_dir)
    report = {"template": template.name, "vertices": int(template.vertices.shape[0]),
              "faces": int(template.faces.shape[0]), "joints": len(template.joint_names),
              "seconds": {"template": round(time.perf_counter() - t0, 3)}, "layouts": {}}
    for r in args.resolutions:
        t1 = time.perf_counter()
        layout = load_layout(template, r, cache_dir_override=args.cache_dir)
        report["layouts"][str(r)] = {"valid_texels": int(layout.valid_indices.numel()),
                                     "atlas_fraction": round(float(layout.atlas_mask.float().mean()), 4),
                                     "seconds": round(time.perf_counter() - t1, 3)}
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genlca-train", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="build and cache the body template and its UV texel layouts")
    prep.add_argument("--template", default="anny", help="body template name (default: anny)")
    prep.add_argument("--resolutions", type=int, nargs="+", default=[32, 64, 128, 256],
                      choices=[32, 64, 128, 256], help="token map resolutions R to prepare")
    prep.add_argument("--cache-dir", default=None, help="cache folder (default: $GENLCA_CACHE or ~/.cache/genlca)")
    prep.set_defaults(run=_prepare)
    from training.data import synthetic  # `genlca-train synth`: its options and code live in that module

    synthetic.add_subparser(sub)
    from training.data import ingest  # `genlca-train ingest`: its options and code live in that module

    ingest.add_subparser(sub)
    _add_tokenizer_commands(sub)
    _add_diffusion_commands(sub)
    return parser


def _add_tokenizer_commands(sub) -> None:
    """tokenizer (training), fit (per-clip optimisation), tokenize (library -> token shards)."""
    def lazy(module: str):
        def run(args: argparse.Namespace) -> int:
            import importlib
            return importlib.import_module(module).main(args)
        return run

    from training import fit_clip, tokenize_library, tokenize_video, train_tokenizer  # light: torch only, no model built
    for name, module, helptext in (
            ("tokenizer", train_tokenizer, "train the tokenizer (frames -> token map) on clip records"),
            ("fit", fit_clip, "optimise one clip's token map directly (per-subject baseline)"),
            ("tokenize", tokenize_library, "tokenize a library of clip records into token shards (torchrun-aware)"),
            ("tokenize-video", tokenize_video, "tokenize a real video of a person; silhouette IoU on held-out frames")):
        p = sub.add_parser(name, help=helptext)
        module.add_arguments(p)
        p.set_defaults(run=lazy(module.__name__))


def _add_diffusion_commands(sub) -> None:
    """diffusion (visibility-aware flow-matching DiT training), eval (held-out synthetic people)."""
    from training import evaluate, train_diffusion

    p = sub.add_parser("diffusion", help="train the token-map DiT (YAML config, torchrun-aware)")
    train_diffusion.build_parser(p)
    p.set_defaults(run=train_diffusion.run)
    p = sub.add_parser("eval", help="evaluate DiT checkpoints on held-out synthetic people")
    evaluate.build_parser(p)
    p.set_defaults(run=evaluate.run)
    from training import diagnose

    p = sub.add_parser("diagnose", help="where a DiT's compute goes: loss by t, channel group and texel class, "
                                        "with and without the caption; caption coverage")
    diagnose.build_parser(p)
    p.set_defaults(run=diagnose.run)
    from training import scaling  # `genlca-train scaling`: the data-scaling curve (train + eval per size)

    scaling.add_subparser(sub)
    from training import ablation  # `genlca-train ablation`: visibility modes x seeds (train + eval per run)

    ablation.add_subparser(sub)
    from training import package_model

    p = sub.add_parser("package", help="make a model package the backend serves from training checkpoints")
    package_model.add_arguments(p)
    p.set_defaults(run=package_model.main)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
