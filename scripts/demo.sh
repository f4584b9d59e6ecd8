#!/usr/bin/env bash
# Install what is missing, build, and run the main job on the embedded
# default: jobs/demo.yaml (16 synthetic AGB binary-wind models x 32
# directions, 64^3 cubes, the 7 COEmuNet channels of CO J=2-1) on 2 MPI
# ranks. Re-running resumes (finished shards are kept).
#   scripts/demo.sh [RANKS] [OUTDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh build
ranks=${1:-2}
out=${2:-demo-dataset}
mpi=(--oversubscribe)
[ "$(id -u)" -eq 0 ] && mpi+=(--allow-run-as-root)
# the job, its LAMDA file and an estimate of samples, disk and time
./build/pipeline/coemu generate jobs/demo.yaml --check
mpirun "${mpi[@]}" -n "$ranks" ./build/pipeline/coemu generate jobs/demo.yaml --out "$out"
./build/pipeline/coemu verify "$out"
echo "demo: dataset in $out/ (open $out/dataset.h5 with h5py or any HDF5 reader), preview $out/preview.png"
