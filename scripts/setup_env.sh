#!/usr/bin/env bash
# Creates (or refreshes) the project's virtual environments.
#   .venv          backend + training + tests (torch, gsplat, anny, ...)
#   .venv-blender  the real Blender Python module (bpy from PyPI) for the add-on tests; no torch.
# Idempotent: a stamp file holding a hash of the inputs skips work that is already done.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
WANT=${1:-all}   # all | main | blender | demo (main + .venv-blender only: what `make demo` needs)

stamp_ok() { [ -f "$1/.genlca-stamp" ] && [ "$(cat "$1/.genlca-stamp")" = "$2" ]; }

setup_main() {
  local h; h=$(cat pyproject.toml scripts/setup_env.sh | sha256sum | cut -c1-16)
  if stamp_ok .venv "$h"; then return; fi
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --no-compile --upgrade pip
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "[setup] CUDA present: installing the default (CUDA) torch build"
    .venv/bin/python -m pip install -q --no-compile "torch>=2.4,<=2.14.1"
  else
    # CPU machine: take the CPU build first (a local wheel here), so no dependency can pull CUDA.
    echo "[setup] no CUDA: installing the CPU build of torch first"
    .venv/bin/python -m pip install -q --no-compile "torch==2.13.0" \
      || .venv/bin/python -m pip install -q --no-compile "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
  fi
  .venv/bin/python -m pip install -q --no-compile -e ".[dev]"
  echo "$h" > .venv/.genlca-stamp
}

# The add-on is tested against the oldest Blender it supports (4.2 LTS, Python 3.11), the newest for
# Python 3.11 (5.0.1, used by the benchmarks and figures) and the newest Blender (5.3, Python 3.13).
# BPY_SPEC overrides the 5.0.1 pin of .venv-blender.
find_python313() {
  local c
  for c in "${PYTHON313:-}" python3.13 "$(pyenv root 2>/dev/null)"/versions/3.13*/bin/python3.13 \
           /usr/bin/python3.13 /usr/local/bin/python3.13; do
    [ -n "$c" ] && "$c" -c "import sys; assert sys.version_info[:2] == (3, 13)" >/dev/null 2>&1 && { echo "$c"; return; }
  done
}

setup_bpy_env() {  # venv-dir python spec
  local dir=$1 py=$2 spec=$3
  local h; h=$(echo "$spec" | sha256sum | cut -c1-16)
  if stamp_ok "$dir" "$h"; then return; fi
  [ -x "$dir/bin/python" ] || "$py" -m venv "$dir"
  "$dir/bin/python" -m pip install -q --no-compile --upgrade pip
  "$dir/bin/python" -m pip install -q --no-compile "$spec" pytest pytest-timeout
  echo "$h" > "$dir/.genlca-stamp"
}

setup_blender() {
  setup_bpy_env .venv-blender "$PY" "${BPY_SPEC:-bpy==5.0.1}"
  setup_bpy_env .venv-blender-4.2 "$PY" "bpy==4.2.23"
  local py313; py313=$(find_python313)
  if [ -n "$py313" ]; then
    setup_bpy_env .venv-blender-5.3 "$py313" "bpy==5.3.0"
  else
    echo "[setup] no Python 3.13 found (set PYTHON313): the newest Blender (bpy 5.3) will not be tested" >&2
  fi
}

# The Khronos glTF validator and three.js (npm, ~20 MB) for the export tests (tests/test_gltf_export.py),
# into tools/gltf/node_modules. Without node/npm the tests that need them skip and say why.
setup_gltf_tools() {
  if ! command -v npm >/dev/null 2>&1; then
    echo "[setup] no npm: the glTF validator tests will be skipped (apt-get install nodejs npm)" >&2
    return
  fi
  local h; h=$(sha256sum tools/gltf/package-lock.json | cut -c1-16)
  if stamp_ok tools/gltf/node_modules "$h"; then return; fi
  (cd tools/gltf && npm ci --no-audit --no-fund --silent)
  echo "$h" > tools/gltf/node_modules/.genlca-stamp
}

case "$WANT" in
  all) setup_main; setup_blender; setup_gltf_tools ;;
  main) setup_main; setup_gltf_tools ;;
  blender) setup_blender ;;
  demo) setup_main; setup_bpy_env .venv-blender "$PY" "${BPY_SPEC:-bpy==5.0.1}" ;;
  *) echo "usage: $0 [all|main|blender|demo]" >&2; exit 2 ;;
esac
