"""Run every benchmark module: `python -m benchmarks [name ...]`.

Each module is imported lazily by name and its `main()` called with no arguments (its defaults). A module
that is missing, or that needs what this interpreter lacks (bpy for blender_import: run that one with
.venv-blender/bin/python), is skipped with a note; the others still run.
"""
from __future__ import annotations

import importlib
import inspect
import sys
import time
import traceback

BENCHMARKS = ("bridge", "render", "posing", "blender_import", "ingest", "synth", "tokenizer", "diffusion")


def run(name: str) -> str:
    try:
        module = importlib.import_module(f"benchmarks.{name}")
    except ModuleNotFoundError as exc:
        return f"skipped ({exc}; {'run it with .venv-blender/bin/python' if exc.name == 'bpy' else 'not present'})"
    main = getattr(module, "main", None)
    if main is None:
        return "skipped (the module has no main())"
    saved = sys.argv
    sys.argv = [f"benchmarks.{name}"]   # modules that read sys.argv see no arguments
    start = time.perf_counter()
    try:
        main([]) if inspect.signature(main).parameters else main()
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
    names = list(argv if argv is not None else sys.argv[1:]) or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    results = {}
    for name in names:
        print(f"\n=== benchmarks.{name} ===", flush=True)
        results[name] = run(name)
        print(f"--- benchmarks.{name}: {results[name]}", flush=True)
    print("\nsummary:")
    for name, outcome in results.items():
        print(f"  {name}: {outcome}")
    return 1 if any(o.startswith("failed") for o in results.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
