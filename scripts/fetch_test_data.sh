#!/usr/bin/env bash
# Fetches the CMU mocap clip 01_01.bvh (Debian package assimp-testmodels) into a cache folder and prints
# its path. Used by the Blender tests (tests/blender) to bind an avatar to a real BVH armature.
#   GENLCA_TESTDATA  cache folder (default: ~/.cache/genlca/testdata)
# Exit status 0 and the path on stdout when the file is there with the recorded checksum; 1 otherwise.
set -euo pipefail
CACHE=${GENLCA_TESTDATA:-${XDG_CACHE_HOME:-$HOME/.cache}/genlca/testdata}
BVH="$CACHE/01_01.bvh"
SHA256=1d9ee909452ee62784306545cf1fcd634243db1173e0c90cecbed793e50361a8
ok() { [ -f "$BVH" ] && echo "$SHA256  $BVH" | sha256sum -c --status; }

if ! ok; then
  mkdir -p "$CACHE"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && apt-get download assimp-testmodels >/dev/null 2>&1) \
    || { echo "fetch_test_data: 'apt-get download assimp-testmodels' failed" >&2; exit 1; }
  dpkg-deb -x "$work"/assimp-testmodels_*.deb "$work/x"
  src=$(find "$work/x" -name 01_01.bvh | head -n 1)
  [ -n "$src" ] || { echo "fetch_test_data: 01_01.bvh not found in assimp-testmodels" >&2; exit 1; }
  cp "$src" "$BVH.tmp" && mv "$BVH.tmp" "$BVH"
  ok || { echo "fetch_test_data: checksum mismatch for $BVH (want $SHA256)" >&2; rm -f "$BVH"; exit 1; }
fi
echo "$BVH"
