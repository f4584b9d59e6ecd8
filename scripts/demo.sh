#!/usr/bin/env bash
# Install what is missing, build, and run the main job on the embedded
# default: jobs/demo.yaml (16 synthetic AGB binary-wind models x 32
# directions, 64^3 cubes, the 7 COEmuNet channels of CO J=2-1) on 2 MPI
# ranks. Re-running resumes an unfinished dataset (finished shards are
# kept) and leaves a finished one as it is (verify below reads every byte).
#   scripts/demo.sh [RANKS] [OUTDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
echo "demo: checking the Debian packages and Python modules (scripts/setup.sh; installs what is missing)"
bash scripts/setup.sh
echo "demo: building coemu into build/ (scripts/build.sh: about a minute on 2 cores the first time)"
bash scripts/build.sh build
ranks=${1:-2}
out=${2:-demo-dataset}
mpi=(--oversubscribe)
[ "$(id -u)" -eq 0 ] && mpi+=(--allow-run-as-root)
# the job, its LAMDA file and an estimate of samples, disk and time
./build/pipeline/coemu generate jobs/demo.yaml --check
echo "demo: making the dataset on $ranks MPI ranks into $out/ (a rerun resumes, or finds it finished)"
mpirun "${mpi[@]}" -n "$ranks" ./build/pipeline/coemu generate jobs/demo.yaml --out "$out"
./build/pipeline/coemu verify "$out"
run=""
[ "$(id -u)" -eq 0 ] && run="--allow-run-as-root "
cat <<EOF
demo: dataset in $out/ (open $out/dataset.h5 with h5py or any HDF5 reader), preview $out/preview.png
demo: next (README.md, "Then, for example"):
  build/pipeline/coemu inspect $out                       # what is in it
  mpirun ${run}-n 2 build/pipeline/coemu stats $out         # the global statistics again (generate made them)
  build/pipeline/coemu train jobs/train-demo.yaml          # train a small COEmuNet on it (a few minutes on 2 cores)
  build/pipeline/coemu eval train-demo/finetune/best.ckpt $out   # its metrics and pictures
EOF
[ "$out" = demo-dataset ] ||
  echo "demo: (jobs/train-demo.yaml reads demo-dataset/: set its finetune.data.dataset to $out)"
