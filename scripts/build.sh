#!/usr/bin/env bash
# Configure (once) and build coemu into BUILDDIR (default: build).
#   scripts/build.sh [BUILDDIR] [meson options...]
# Quiet on success; on failure prints the build log and exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
builddir=${1:-build}
shift || true
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if [ ! -f "$builddir/build.ninja" ]; then
  if ! meson setup "$builddir" "$@" >"$log" 2>&1; then
    cat "$log"
    echo "build: meson setup $builddir failed" >&2
    exit 1
  fi
fi
if ! ninja -C "$builddir" >"$log" 2>&1; then
  grep -E "error|FAILED" -A5 "$log" | head -100
  echo "build: ninja -C $builddir failed (full log above)" >&2
  exit 1
fi
