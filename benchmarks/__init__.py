"""Benchmarks: `python -m benchmarks` runs them all; `python -m benchmarks.<name>` runs one.
Numbers, with command and machine, live in docs/BENCHMARKS.md."""
