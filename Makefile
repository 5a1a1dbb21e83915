# GenLCA for Blender. The README's two commands: `make demo` and `make test`.
SHELL := /bin/bash
PY := .venv/bin/python
BPY := .venv-blender/bin/python

.PHONY: setup demo test test-main test-blender test-slow bench addon clean

setup:
	@scripts/setup_env.sh all

demo: setup
	$(PY) -m backend.demo

test: setup
	$(PY) -m pytest -q tests --ignore=tests/blender
	GENLCA_BACKEND_PYTHON=$(abspath $(PY)) $(BPY) -m pytest -q tests/blender

test-main:
	@scripts/setup_env.sh main
	$(PY) -m pytest -q tests --ignore=tests/blender

test-blender:
	@scripts/setup_env.sh all
	GENLCA_BACKEND_PYTHON=$(abspath $(PY)) $(BPY) -m pytest -q tests/blender

test-slow: setup
	$(PY) -m pytest -q tests --ignore=tests/blender -m slow

bench: setup
	$(PY) -m benchmarks

addon:
	python3 build_addon.py

clean:
	rm -rf .venv .venv-blender build dist
