"""Run every benchmark module: `python -m benchmarks [name ...]`, or one with its options:
`python -m benchmarks name --option value ...`.

Each module is imported lazily by name and its `main()` called with no arguments (its defaults), or with
the options that follow a single name (everything from the first argument that starts with "-"). A module
that is missing, or that needs what this interpreter lacks (bpy for blender_import: run that one with
.venv-blender/bin/python), is skipped with a note; the others still run.
"""
from __future__ import annotations

import importlib
import inspect
import sys
import time
import traceback

BENCHMARKS = ("bridge", "render", "posing", "blender_import", "ingest", "synth", "tokenizer", "diffusion",
              "photo_avatar", "edit_fidelity", "edit_mask")


def run(name: str, options: list[str] | None = None) -> str:
    try:
        module = importlib.import_module(f"benchmarks.{name}")
    except ModuleNotFoundError as exc:
        return f"skipped ({exc}; {'run it with .venv-blender/bin/python' if exc.name == 'bpy' else 'not present'})"
    main = getattr(module, "main", None)
    if main is None:
        return "skipped (the module has no main())"
    saved = sys.argv
    sys.argv = [f"benchmarks.{name}", *(options or [])]   # modules that read sys.argv see only their options
    start = time.perf_counter()
    try:
        main(list(options or [])) if inspect.signature(main).parameters else main()
    except SystemExit as exc:
        if exc.code not in (0, None):
            return f"failed (exit {exc.code})"
    except Exception:
        traceback.print_exc()
        return "failed (see the traceback above)"
    finally:
        sys.argv = saved
    return f"done in {time.perf_counter() - start:.0f} s"


def main(argv: list[str] | None = None) -> int:
    args = list(argv if argv is not None else sys.argv[1:])
    first_option = next((i for i, a in enumerate(args) if a.startswith("-")), len(args))
    names, options = args[:first_option] or list(BENCHMARKS), args[first_option:]
    if options and len(names) != 1:
        print(f"options {options} need exactly one benchmark name before them, got {names}", file=sys.stderr)
        return 2
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    results = {}
    for name in names:
        print(f"\n=== benchmarks.{name} ===", flush=True)
        results[name] = run(name, options)
        print(f"--- benchmarks.{name}: {results[name]}", flush=True)
    print("\nsummary:")
    for name, outcome in results.items():
        print(f"  {name}: {outcome}")
    return 1 if any(o.startswith("failed") for o in results.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
