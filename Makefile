# GenLCA for Blender. The README's two commands: `make demo` and `make test`.
SHELL := /bin/bash
PY := .venv/bin/python
BPY := .venv-blender/bin/python

.PHONY: setup demo test test-main test-blender test-slow blender-suites bench bench-blender testdata addon addon-current clean

setup:
	@scripts/setup_env.sh all

demo:
	@scripts/setup_env.sh main
	$(PY) -m backend.demo

# The add-on suite runs in every Blender environment that setup made (4.2 LTS, 5.0.1, 5.3).
BLENDER_ENVS = .venv-blender-4.2 .venv-blender .venv-blender-5.3

test: setup
	$(PY) -m pytest -q tests --ignore=tests/blender
	@$(MAKE) --no-print-directory blender-suites

blender-suites:
	@set -e; for env in $(BLENDER_ENVS); do \
	  if [ -x $$env/bin/python ]; then \
	    echo "== add-on tests in $$($$env/bin/python -c 'import bpy; print("Blender", bpy.app.version_string)' 2>/dev/null) ($$env)"; \
	    GENLCA_BACKEND_PYTHON=$(abspath $(PY)) $$env/bin/python -m pytest -q -p no:cacheprovider tests/blender; \
	  fi; \
	done

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
