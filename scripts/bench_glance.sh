#!/usr/bin/env bash
# The CPU figures of docs/benchmarks.md, "Latest figures at a glance": every
# command of its rows that runs in a minute, run R times (default 3) with one
# binary, each line stamped with the time and the load (figures taken while
# something else runs are not comparable). Take the medians from the output.
#
#   bash scripts/bench_glance.sh [--coemu PATH] [--runs R] > glance.log
#
# PATH: the coemu binary (default build/pipeline/coemu: a release build,
# bash scripts/build.sh). Needs mpirun for the generate row and python3 for
# the serve rows' Python client; the demo dataset goes to /dev/shm (1.8 GB)
# and is removed after each run.
set -uo pipefail
cd "$(dirname "$0")/.."
coemu=build/pipeline/coemu
runs=3
while [ $# -gt 0 ]; do
  [ $# -ge 2 ] || { echo "bench_glance.sh: $1 needs a value (--coemu PATH, --runs R)" >&2; exit 2; }
  case "$1" in
  --coemu) coemu=$2; shift 2 ;;
  --runs) runs=$2; shift 2 ;;
  *) echo "bench_glance.sh: unknown option '$1' (--coemu PATH, --runs R)" >&2; exit 2 ;;
  esac
done
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || { echo "bench_glance.sh: --runs '$runs': expected a whole number >= 1" >&2; exit 2; }
[ -x "$coemu" ] || { echo "bench_glance.sh: $coemu: no coemu binary there (bash scripts/build.sh)" >&2; exit 2; }
export COEMU_TEST_DATA=$PWD/tests/data
demo=/dev/shm/coemu-glance.$$
trap 'rm -rf "$demo"' EXIT
run() { echo "### $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg): $*"; "$@" 2>&1; }
lscpu | grep -E "^Model name|^CPU\(s\)"
run "$coemu" --version
for r in $(seq 1 "$runs"); do
  echo "### run $r of $runs"
  run "$coemu" bench solver
  run "$coemu" bench solver --precision float32
  run "$coemu" bench sample --reps 30 --repeat 3
  run "$coemu" bench stats
  run "$coemu" bench synth
  run env OMP_NUM_THREADS=2 "$coemu" bench train
  run "$coemu" bench stream
  run "$coemu" bench nlte
  rm -rf "$demo"
  run mpirun --allow-run-as-root --oversubscribe -n 2 "$coemu" generate jobs/demo.yaml --out "$demo"
  run "$coemu" bench serve "$demo" --batch 1 --python pipeline/stream
  run "$coemu" bench serve "$demo" --batch 16 --python pipeline/stream
  rm -rf "$demo"
done
echo "### done $(date -u +%H:%M:%S)"
