#!/usr/bin/env bash
# Configure (once) and build coemu into BUILDDIR (default: build).
#   scripts/build.sh [BUILDDIR] [meson options...]
set -euo pipefail
cd "$(dirname "$0")/.."
builddir=${1:-build}
shift || true
if [ ! -f "$builddir/build.ninja" ]; then
  meson setup "$builddir" "$@" >/dev/null
fi
ninja -C "$builddir" >/dev/null
