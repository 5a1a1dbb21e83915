#!/usr/bin/env bash
# Creates (or refreshes) the project's virtual environments.
#   .venv          backend + training + tests (torch, gsplat, anny, ...)
#   .venv-blender  the real Blender Python module (bpy from PyPI) for the add-on tests; no torch.
# Idempotent: a stamp file holding a hash of the inputs skips work that is already done.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
WANT=${1:-all}   # all | main | blender

stamp_ok() { [ -f "$1/.genlca-stamp" ] && [ "$(cat "$1/.genlca-stamp")" = "$2" ]; }

setup_main() {
  local h; h=$(cat pyproject.toml scripts/setup_env.sh | sha256sum | cut -c1-16)
  if stamp_ok .venv "$h"; then return; fi
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "[setup] CUDA present: installing the default (CUDA) torch build"
    .venv/bin/python -m pip install -q "torch>=2.4,<=2.14.1"
  else
    # CPU machine: take the CPU build first (a local wheel here), so no dependency can pull CUDA.
    echo "[setup] no CUDA: installing the CPU build of torch first"
    .venv/bin/python -m pip install -q "torch==2.13.0" \
      || .venv/bin/python -m pip install -q "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
  fi
  .venv/bin/python -m pip install -q -e ".[dev]"
  echo "$h" > .venv/.genlca-stamp
}

setup_blender() {
  local spec=${BPY_SPEC:-bpy==5.0.1}
  local h; h=$(echo "$spec" | sha256sum | cut -c1-16)
  if stamp_ok .venv-blender "$h"; then return; fi
  [ -x .venv-blender/bin/python ] || "$PY" -m venv .venv-blender
  .venv-blender/bin/python -m pip install -q --upgrade pip
  .venv-blender/bin/python -m pip install -q "$spec" pytest pytest-timeout
  echo "$h" > .venv-blender/.genlca-stamp
}

case "$WANT" in
  all) setup_main; setup_blender ;;
  main) setup_main ;;
  blender) setup_blender ;;
  *) echo "usage: $0 [all|main|blender]" >&2; exit 2 ;;
esac
