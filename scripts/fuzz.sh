#!/usr/bin/env bash
# Fuzz coemu's readers for a while (docs/faults.md, "Fuzzing the readers"):
#   bash scripts/fuzz.sh [SECONDS] [TARGET...]
# SECONDS per target (default 60); TARGETs among amrvac lamda job weights
# stream (default: all five):
#   amrvac   AMRVAC snapshots (.dat)                  tests/rotate/fuzz_amrvac.c
#   lamda    LAMDA molecule files                     tests/solver/fuzz_lamda.c
#   job      generate jobs, training jobs, units sidecars (YAML)
#                                                     tests/pipeline/fuzz_job.c
#   weights  checkpoints, safetensors, .npy           tests/trainer/fuzz_weights.c
#   stream   what a producer sends a stream consumer  tests/stream/fuzz_stream.c
# Builds the libFuzzer targets into build-fuzz/ (clang, -Dfuzz=true, ASan +
# UBSan, no CUDA; installs clang first: scripts/setup.sh --clang), seeds each
# corpus build-fuzz/corpus/TARGET/ with the files of the target's seeds test
# (the weights target makes its seeds with coemu's own writers) and keeps
# what libFuzzer adds, so a later run goes on from there. An input that
# crashes, hangs (20 s), leaks, trips a sanitizer, or is refused without a message is saved
# under build-fuzz/artifacts/TARGET/, with the command that replays it. Prints
# one line per target, then "N passed, N failed" (targets), and exits
# non-zero if any target failed.
set -uo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
case "$seconds" in '' | *[!0-9]*) echo "usage: scripts/fuzz.sh [SECONDS] [amrvac|lamda|job|weights|stream]..." >&2; exit 2 ;; esac
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(amrvac lamda job weights stream)
for t in "${targets[@]}"; do
  case $t in amrvac | lamda | job | weights | stream) ;; *) echo "fuzz: unknown target '$t' (amrvac lamda job weights stream)" >&2; exit 2 ;; esac
done

bash scripts/setup.sh --clang >/dev/null || { echo "fuzz: scripts/setup.sh --clang failed" >&2; exit 1; }
b=build-fuzz
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if [ ! -f "$b/build.ninja" ] &&
   ! CC=clang CXX=clang++ meson setup "$b" -Dfuzz=true -Db_sanitize=address,undefined \
       -Db_lundef=false -Dcuda=disabled -Dbenchmarks=false -Dc_args=-fno-sanitize-recover=all \
       >"$log" 2>&1; then
  cat "$log"; echo "fuzz: meson setup $b failed" >&2; exit 1
fi
# Each target's seeds are those of its seeds test (tests/meson.build,
# fuzz_targets): that test's files, or, for a target whose test takes none
# (it makes its own with coemu's writers), what its --make-seeds writes.
tests_json=$(meson introspect "$b" --tests) || { echo "fuzz: meson introspect $b failed" >&2; exit 1; }
seed_files() { # the files of target $1's seeds test, one a line
  python3 -c 'import json, sys
for x in json.loads(sys.argv[1]):
    if x["name"].endswith("_fuzz_" + sys.argv[2] + "_seeds"):
        for a in x["cmd"][1:]:
            print(a)' "$tests_json" "$1"
}
ninja_targets=()
for t in "${targets[@]}"; do
  ninja_targets+=("tests/fuzz_$t")
  [ -n "$(seed_files "$t")" ] || ninja_targets+=("tests/fuzz_${t}_seeds")
done
if ! ninja -C "$b" "${ninja_targets[@]}" >"$log" 2>&1; then
  grep -E "error|FAILED" -A5 "$log" | head -60; echo "fuzz: building the targets failed" >&2; exit 1
fi

export ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=1:abort_on_error=0"
export LSAN_OPTIONS="suppressions=$PWD/tests/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
rc=0 passed=0 failed=0
for t in "${targets[@]}"; do
  corpus=$b/corpus/$t art=$b/artifacts/$t
  mkdir -p "$corpus" "$art"
  mapfile -t seeds < <(seed_files "$t")
  if [ ${#seeds[@]} -gt 0 ]; then
    cp -n "${seeds[@]}" "$corpus"/ || { echo "fuzz: $t: copying its seeds failed" >&2; exit 1; }
  elif ! "$b/tests/fuzz_${t}_seeds" --make-seeds "$corpus" >/dev/null; then
    echo "fuzz: $t: making its seeds failed" >&2; exit 1
  fi
  out=$art/fuzz.log
  "$b/tests/fuzz_$t" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2560 -print_final_stats=1 \
    -artifact_prefix="$art/" "$corpus" >"$out" 2>&1
  st=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out" | tail -n 1)
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$out" | tail -n 1)
  n=$(find "$corpus" -type f | wc -l)
  if [ $st -eq 0 ]; then
    echo "fuzz: $t: ok: ${runs:-?} inputs in $seconds s, ${cov:-cov ?}, corpus $n files ($corpus)"
    passed=$((passed + 1))
  else
    rc=1 failed=$((failed + 1))
    found=$(ls -t "$art" | grep -E '^(crash|leak|timeout|oom|slow-unit)-' | head -n 1)
    echo "fuzz: $t: FAILED after ${runs:-?} inputs (exit $st): $(grep -m1 -E 'ERROR|runtime error|SUMMARY' "$out")"
    [ -n "$found" ] && echo "fuzz: $t: replay: $b/tests/fuzz_$t $art/$found   (log: $out)"
  fi
done
echo "$passed passed, $failed failed"
exit $rc
