# GenLCA for Blender. The README's two commands: `make demo` and `make test`.
SHELL := /bin/bash
PY := .venv/bin/python
BPY := .venv-blender/bin/python

.PHONY: setup demo demo-backend test test-main test-blender test-slow blender-suites suites bench bench-blender testdata addon addon-current clean

setup:
	@scripts/setup_env.sh all

# The artist's workflow in headless Blender through the add-on (scripts/demo_blender.py): set-up, backend,
# generate, edit, bind to CMU mocap, render, export. MODEL=FOLDER (or $$GENLCA_MODEL) picks another model
# package; DEMO_ARGS passes more options (e.g. DEMO_ARGS="--size 480x640 --frames 12").
demo:
	@scripts/setup_env.sh demo
	$(BPY) scripts/demo_blender.py $(if $(MODEL),--model $(MODEL)) $(DEMO_ARGS)

# The backend alone over ZeroMQ, no Blender (backend/demo.py).
demo-backend:
	@scripts/setup_env.sh main
	$(PY) -m backend.demo

# The add-on suite runs in every Blender environment that setup made (4.2 LTS, 5.0.1, 5.3).
BLENDER_ENVS = .venv-blender-4.2 .venv-blender .venv-blender-5.3

# Every suite runs even when an earlier one fails; the summary lists each suite's result and `make test`
# fails if any suite failed. pytest's exit code 5 ("no tests collected") counts as a failure: a suite
# that runs nothing proves nothing.
test: setup
	@$(MAKE) --no-print-directory SUITES="main $(BLENDER_ENVS)" suites

blender-suites:
	@$(MAKE) --no-print-directory SUITES="$(BLENDER_ENVS)" suites

# SUITES: "main" (the backend suite in .venv) and/or Blender environments (the add-on suite in each that
# exists; only the optional 5.3 one, which needs a Python 3.13, may be missing). Exit codes are collected,
# not stopped at.
suites:
	@declare -a results; failed=0; \
	for suite in $(SUITES); do \
	  if [ "$$suite" = main ]; then \
	    echo "== main suite ($(PY))"; \
	    $(PY) -m pytest -q tests --ignore=tests/blender; rc=$$?; \
	  elif [ -x $$suite/bin/python ]; then \
	    echo "== add-on tests in $$($$suite/bin/python -c 'import bpy; print("Blender", bpy.app.version_string)' 2>/dev/null) ($$suite)"; \
	    GENLCA_BACKEND_PYTHON=$(abspath $(PY)) $$suite/bin/python -m pytest -q -p no:cacheprovider tests/blender; rc=$$?; \
	  elif [ "$$suite" = .venv-blender-5.3 ]; then \
	    results+=("$$suite: not set up (skipped: setup found no Python 3.13)"); continue; \
	  else \
	    results+=("$$suite: FAILED (not set up: run make setup)"); failed=1; continue; \
	  fi; \
	  case $$rc in \
	    0) results+=("$$suite: passed") ;; \
	    5) results+=("$$suite: FAILED (no tests collected)"); failed=1 ;; \
	    *) results+=("$$suite: FAILED (pytest exit $$rc)"); failed=1 ;; \
	  esac; \
	done; \
	echo "== summary"; for line in "$${results[@]}"; do echo "   $$line"; done; \
	exit $$failed

test-main:
	@scripts/setup_env.sh main
	$(PY) -m pytest -q tests --ignore=tests/blender

test-blender: setup
	@$(MAKE) --no-print-directory blender-suites

test-slow: setup
	$(PY) -m pytest -q tests --ignore=tests/blender -m slow

bench: setup
	$(PY) -m benchmarks
	$(BPY) benchmarks/blender_import.py

bench-blender: setup
	$(BPY) benchmarks/blender_import.py

testdata:
	scripts/fetch_test_data.sh

addon:
	python3 build_addon.py

addon-current:
	python3 build_addon.py --platform current

clean:
	rm -rf .venv .venv-blender .venv-blender-4.2 .venv-blender-5.3 build dist
