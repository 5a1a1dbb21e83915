#!/usr/bin/env bash
# Fetches the CMU mocap clip 01_01.bvh (Debian package assimp-testmodels) into a cache folder and prints
# its path. Used by the Blender tests (tests/blender) to bind an avatar to a real BVH armature.
#   GENLCA_TESTDATA  cache folder (default: ~/.cache/genlca/testdata)
# Exit status 0 and the path on stdout when the file is there with the recorded checksum; 1 otherwise.
# `fetch_test_data.sh ingest` fetches only the ingest set (below) and prints its folder; without an argument
# the ingest set is fetched too (a failure there is a warning) and the last line stays the BVH path.
# Ingest set, in $CACHE/ingest: videos of a person cycling g1.avi, g2.avi (python3-mecavideo) and photos of
# people faces/*.jpg, dogs.jpg without one (libdlib19.1's examples); terms: each package's copyright file.
set -euo pipefail
CACHE=${GENLCA_TESTDATA:-${XDG_CACHE_HOME:-$HOME/.cache}/genlca/testdata}
INGEST="$CACHE/ingest"
INGEST_FILES="python3-mecavideo g1.avi 0f6fbf3feb2842d06fc45f2f736f67184988be058c4e6ea2b24b332d8d36714f
python3-mecavideo g2.avi 4ca02dfcef93603f0a9914c5e34d94ba0aa4dc82588008cad7fdacdc25b7cf50
libdlib19.1 2007_007763.jpg 17d9897dd55d38179f51dc18371b3f4495a606aaa2846e25a3cb6a58b3a97c89
libdlib19.1 2008_001009.jpg 2509864113a286bf245161d0317a18c38b6a6641135969847a7e59dff359c52c
libdlib19.1 2008_001322.jpg 2ea5a60f5347baab8da6eccce43b0320d63da1368d7710fb15cbff8a790bc626
libdlib19.1 2008_002079.jpg f929bdf416d756b37eb90c119b892eba5d21041b134883e18d827bce641fb48f
libdlib19.1 2008_002470.jpg 14b543e3ac55b497aaaba9dc03a39be04c8ae670851b3f78f9f5adb08295d780
libdlib19.1 2008_002506.jpg ede6804edf0ec005144ffe7f0f2b56bd2aa1d21beee79d29f72cb16ead19a447
libdlib19.1 2008_004176.jpg 92a075f5e1d279f009ab4809592aaf0109e429adf3266e5aa8ce2755730b41c2
libdlib19.1 2008_007676.jpg 09a0e07d6fb3b4276e73b9f6450b5c69d97d3e3b75807948caf6defd40260e6f
libdlib19.1 2009_004587.jpg 2dc5d52a5388499cf912d7d99dc9d05e4bec7651153331f40e81ae4813bb317c
libdlib19.1 Tom_Cruise_avp_2014_4.jpg d9bea1c716b461c15ac3bc7e256bb5efa3e04379d7131f9347e96e4baa6a37c6
libdlib19.1 bald_guys.jpg e0c40697dbd9a07684274f71760bc5161468e926ba75ff90d48b168019402e8b
libdlib19.1 dogs.jpg 66e22f8c3bd3b8f876ad9158caaa064992d2b56a5681d9c6efa163a59db7ed03"

ingest_ok() { echo "$INGEST_FILES" | while read -r _ name sum; do echo "$sum  $INGEST/$name"; done \
  | sha256sum -c --status 2>/dev/null; }
fetch_ingest() {
  ingest_ok && return 0
  mkdir -p "$INGEST"
  local work pkg name sum src
  work=$(mktemp -d)
  for pkg in $(echo "$INGEST_FILES" | cut -d' ' -f1 | sort -u); do
    (cd "$work" && apt-get download "$pkg" >/dev/null 2>&1) \
      || { echo "fetch_test_data: 'apt-get download $pkg' failed" >&2; rm -rf "$work"; return 1; }
    dpkg-deb -x "$work"/"$pkg"_*.deb "$work/x"
  done
  while read -r pkg name sum; do
    src=$(find "$work/x" -name "$name" | head -n 1)
    [ -n "$src" ] || { echo "fetch_test_data: $name not found in $pkg" >&2; rm -rf "$work"; return 1; }
    cp "$src" "$INGEST/$name.tmp" && mv "$INGEST/$name.tmp" "$INGEST/$name"
    echo "$sum  $INGEST/$name" | sha256sum -c --status \
      || { echo "fetch_test_data: checksum mismatch for $INGEST/$name (want $sum)" >&2; rm -f "$INGEST/$name"; rm -rf "$work"; return 1; }
  done <<< "$INGEST_FILES"
  rm -rf "$work"
}
if [ "${1:-}" = ingest ]; then
  fetch_ingest || exit 1
  echo "$INGEST"
  exit 0
fi
fetch_ingest || echo "fetch_test_data: warning: the ingest set was not fetched" >&2
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
