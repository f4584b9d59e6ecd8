#!/usr/bin/env bash
# Install what is missing, build and run the whole test suite.
#   scripts/test.sh              normal (release, -O2) build in build/
#   scripts/test.sh --sanitize   AddressSanitizer + UndefinedBehaviorSanitizer build in build-san/
#   scripts/test.sh --portable   portable build (-Dnative=false: no -march=native, the
#                                solver's portable kernel) in build-portable/, its CUDA
#                                code on the CUDA emulator (-Dcuda=disabled
#                                -Dgpu_emulator=true: every device path of the suite
#                                runs on the CPU; docs/architecture.md)
#   scripts/test.sh --mpich      MPICH build (-Dmpi=mpich, HDF5 of MPICH; no CUDA) in
#                                build-mpich/, every MPI test under MPICH's Hydra
#                                (Debian's MPICH installed beside Open MPI)
#   scripts/test.sh --clang      clang build (CC=clang CXX=clang++, LLVM's OpenMP; no
#                                CUDA) in build-clang/: another compiler's code for
#                                the same bits (docs/cluster.md, "Compilers")
#   scripts/test.sh [...] --suite NAME   only meson suite NAME (e.g. blas: the
#                                tests that reach a BLAS matrix product); repeatable
# Prints "N passed, N failed" (one line per test executable and a total).
# The environment passes through: OPENBLAS_CORETYPE=Haswell bash scripts/test.sh
# runs the suite on OpenBLAS's Haswell kernels (any AVX2 host); the BLAS
# kernel that ran is printed before the closing line.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=()
suite=()
while [ $# -gt 0 ]; do
  case "$1" in
    --sanitize | --portable | --mpich | --clang) mode=("$1") ;;
    --suite)
      [ $# -ge 2 ] || { echo "scripts/test.sh: --suite needs a meson suite name" >&2; exit 2; }
      suite+=(--suite "$2")
      shift ;;
    *)
      echo "usage: scripts/test.sh [--sanitize | --portable | --mpich | --clang] [--suite NAME]..." >&2
      exit 2 ;;
  esac
  shift
done
set -- "${mode[@]}"
if [ "${1:-}" = "--mpich" ] || [ "${1:-}" = "--clang" ] || [ "${1:-}" = "--portable" ]; then
  bash scripts/setup.sh "$1"
else
  bash scripts/setup.sh
fi
if [ "${1:-}" = "--sanitize" ]; then
  builddir=build-san
  bash scripts/build.sh "$builddir" -Dbuildtype=debugoptimized -Db_sanitize=address,undefined \
    -Db_lundef=false -Dc_args=-fno-sanitize-recover=all
  export ASAN_OPTIONS="abort_on_error=0:halt_on_error=1:detect_leaks=1:allocator_may_return_null=1"
  export LSAN_OPTIONS="suppressions=$PWD/tests/lsan.supp:print_suppressions=0"
  export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
  export COEMU_SANITIZE=1   # tests/mpirun.sh: no leak checks inside MPI processes
  mult=4
elif [ "${1:-}" = "--mpich" ]; then
  builddir=build-mpich
  bash scripts/build.sh "$builddir" -Dmpi=mpich -Dcuda=disabled
  mult=1
elif [ "${1:-}" = "--clang" ]; then
  builddir=build-clang
  CC=clang CXX=clang++ bash scripts/build.sh "$builddir" -Dcuda=disabled
  mult=1
elif [ "${1:-}" = "--portable" ]; then
  builddir=build-portable
  bash scripts/build.sh "$builddir" -Dnative=false -Dcuda=disabled -Dgpu_emulator=true
  mult=1
else
  builddir=build
  bash scripts/build.sh "$builddir"
  mult=1
fi
rc=0
meson test -C "$builddir" --print-errorlogs --num-processes 2 \
  --timeout-multiplier "$mult" "${suite[@]}" >"$builddir/test-output.txt" 2>&1 || rc=$?
grep -E '^ *[0-9]+/[0-9]+ ' "$builddir/test-output.txt" || true
if [ ! -f "$builddir/meson-logs/testlog.json" ]; then
  cat "$builddir/test-output.txt"
  echo "0 passed, 1 failed"
  exit 1
fi
if [ $rc -ne 0 ]; then
  echo "--- failing test output ($builddir/meson-logs/testlog.txt) ---"
  sed -n '/^Summary of Failures/,$p' "$builddir/test-output.txt" | head -50
  python3 scripts/test_summary.py --failures "$builddir/meson-logs/testlog.json" | tail -200
fi
logs=("$builddir/meson-logs/testlog.json")
if [ $rc -ne 0 ] && [ "$builddir" = build-san ]; then
  # A test that failed only because LeakSanitizer's own tracer crashed (a known
  # intermittent fault of the runtime, not a leak: scripts/test_summary.py)
  # runs once more; its second result is the one counted. Every other failure
  # stands as it is.
  mapfile -t faulted < <(python3 scripts/test_summary.py --sanitizer-faults "${logs[0]}")
  if [ ${#faulted[@]} -gt 0 ]; then
    echo "--- LeakSanitizer's tracer crashed in: ${faulted[*]}; running them once more ---"
    rm -f "$builddir/meson-logs/rerun.json"
    meson test -C "$builddir" --no-rebuild --print-errorlogs --num-processes 2 \
      --timeout-multiplier "$mult" --logbase rerun "${faulted[@]}" \
      >"$builddir/test-rerun-output.txt" 2>&1 || true
    grep -E '^ *[0-9]+/[0-9]+ ' "$builddir/test-rerun-output.txt" || true
    [ -f "$builddir/meson-logs/rerun.json" ] && logs+=("$builddir/meson-logs/rerun.json")
  fi
fi
echo "configuration: $builddir, BLAS kernel $(python3 scripts/blas_core.py "$builddir")"
# the closing line: "N passed, N failed" (a rerun's result replaces the first)
rc=0
python3 scripts/test_summary.py "${logs[@]}" || rc=1
exit $rc
