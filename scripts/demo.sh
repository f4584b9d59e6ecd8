#!/usr/bin/env bash
# Install what is missing, build, and run the main job on the embedded
# default. Until the dataset pipeline lands this ray-traces the built-in
# example cube (an analytic AGB wind with a spiral shell) and draws its
# channel maps.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh build
mkdir -p demo-out
./build/pipeline/coemu solve --example --channels coemunet --abs \
  --out demo-out/image.npy --fits demo-out/image.fits --preview demo-out/preview.png
echo "demo: image in demo-out/image.npy (and .fits), channel maps in demo-out/preview.png"
