#!/usr/bin/env bash
# Build and run tests/trainer/cudnn_engine_probe (cuDNN's legacy convolution
# API with FMA math against its backend / graph API engines, on COEmuNet's
# convolution shapes; see the comment at the top of the .c file).
#
#   bash tests/trainer/cudnn_engine_probe.sh                 build, then run (time limit)
#   bash tests/trainer/cudnn_engine_probe.sh --build-only    build only (no GPU needed)
#   bash tests/trainer/cudnn_engine_probe.sh --batch 64 ...  other arguments go to the probe
#
# Needs only nvcc (for the CUDA toolkit's headers and libcudart), a C
# compiler and cuDNN 9, found as scripts/gpu-check-trainer.sh finds it:
# CUDNN_HOME, beside nvcc, or the Python package nvidia-cudnn (pip's
# nvidia-cudnn-cu1x, e.g. PyTorch's), then the system's.
# Environment: NVCC (nvcc), CC (gcc), PYTHON (python3), CUDNN_HOME,
# PROBE_DIR (build folder, default build-cudnn-probe), PROBE_TIMEOUT (time
# limit of the run in seconds, default 150; the probe's own --deadline is set
# 10 s below it so that it prints its totals before).
set -euo pipefail
cd "$(dirname "$0")/../.."
mode=run
if [ "${1:-}" = --build-only ]; then
  mode=build
  shift
fi
NVCC=${NVCC:-nvcc}
CC=${CC:-gcc}
PYTHON=${PYTHON:-python3}
out=${PROBE_DIR:-build-cudnn-probe}
limit=${PROBE_TIMEOUT:-150}
say() { echo "cudnn-probe: $*"; }
die() { echo "cudnn-probe: $*" >&2; exit 1; }

command -v "$NVCC" >/dev/null 2>&1 || die "no CUDA compiler ($NVCC) on PATH"
command -v "$CC" >/dev/null 2>&1 || die "no C compiler ($CC) on PATH"
cuda_home=$(dirname "$(dirname "$(command -v "$NVCC")")")

# --- the CUDA runtime ---------------------------------------------------------
cuda_inc=
for d in "$cuda_home/include" "$cuda_home/targets/x86_64-linux/include"; do
  [ -f "$d/cuda_runtime_api.h" ] && { cuda_inc=$d; break; }
done
[ -n "$cuda_inc" ] || die "cuda_runtime_api.h not found under $cuda_home"
has_lib() { # dir name: the folder holds libNAME.so or a versioned libNAME.so.*
  [ -e "$1/lib$2.so" ] || ls "$1"/lib"$2".so.* >/dev/null 2>&1
}
cudart_lib=
for d in "$cuda_home/lib64" "$cuda_home/lib" "$cuda_home/targets/x86_64-linux/lib"; do
  has_lib "$d" cudart && { cudart_lib=$d; break; }
done
[ -n "$cudart_lib" ] || die "libcudart.so not found under $cuda_home"

# --- cuDNN: a header folder and a library folder, from the same prefix if any ---
prefixes=()
[ -n "${CUDNN_HOME:-}" ] && prefixes+=("$CUDNN_HOME")
prefixes+=("$cuda_home")
if command -v "$PYTHON" >/dev/null 2>&1; then
  # pip's nvidia-cudnn-cu1x: site-packages/nvidia/cudnn/{include,lib}
  pyn=$("$PYTHON" -c 'import nvidia, os; print(" ".join(nvidia.__path__))' 2>/dev/null || true)
  for top in $pyn; do
    [ -d "$top/cudnn" ] && prefixes+=("$top/cudnn")
  done
fi
prefixes+=(/usr /usr/local)
cudnn_inc=
cudnn_lib=
any_inc=
any_lib=
for p in "${prefixes[@]}"; do
  i=
  l=
  for d in "$p/include" "$p/include/x86_64-linux-gnu"; do
    [ -f "$d/cudnn.h" ] && { i=$d; break; }
  done
  for d in "$p/lib64" "$p/lib" "$p/lib/x86_64-linux-gnu"; do
    has_lib "$d" cudnn && { l=$d; break; }
  done
  [ -z "$any_inc" ] && [ -n "$i" ] && any_inc=$i
  [ -z "$any_lib" ] && [ -n "$l" ] && any_lib=$l
  if [ -n "$i" ] && [ -n "$l" ]; then
    cudnn_inc=$i
    cudnn_lib=$l
    break
  fi
done
if [ -z "$cudnn_inc" ]; then
  # a header from one place, the library from another (pip packages without
  # headers): cuDNN 9's API is stable within the major version
  if [ -z "$any_inc" ] || [ -z "$any_lib" ]; then
    die "cuDNN not found (header: ${any_inc:-none}, library: ${any_lib:-none}; searched ${prefixes[*]}); set CUDNN_HOME"
  fi
  cudnn_inc=$any_inc
  cudnn_lib=$any_lib
  say "cuDNN header from $cudnn_inc, library from $cudnn_lib (different places)"
fi
ver=$(awk '/#define CUDNN_(MAJOR|MINOR|PATCHLEVEL) /{printf "%s%s", s, $3; s="."}' \
  "$cudnn_inc/cudnn_version.h" 2>/dev/null || true)
say "cuDNN ${ver:-?}: headers $cudnn_inc, libraries $cudnn_lib; CUDA runtime $cudart_lib"

# --- build ----------------------------------------------------------------------
mkdir -p "$out/lib"
# unversioned names for the linker where a folder only has versioned ones
for pair in "cudnn:$cudnn_lib" "cudart:$cudart_lib"; do
  n=${pair%%:*}
  d=${pair#*:}
  if [ ! -e "$d/lib$n.so" ]; then
    v=$(ls "$d"/lib"$n".so.* 2>/dev/null | sort | head -1)
    ln -sf "$v" "$out/lib/lib$n.so"
  fi
done
incs=(-I"$cudnn_inc")
[ "$cudnn_inc" != "$cuda_inc" ] && incs+=(-I"$cuda_inc")
t0=$SECONDS
# the graph API part: trainer/cuda/cudnn_graph.c, the trainer's module
"$CC" -std=c17 -O2 -g -Wall -Wextra -I. "${incs[@]}" tests/trainer/cudnn_engine_probe.c \
  trainer/cuda/cudnn_graph.c -o "$out/cudnn_engine_probe" -L"$out/lib" -L"$cudnn_lib" -L"$cudart_lib" \
  -Wl,-rpath,"$cudnn_lib" -Wl,-rpath,"$cudart_lib" -lcudnn -lcudart -lm
say "built $out/cudnn_engine_probe ($((SECONDS - t0)) s)"
[ "$mode" = build ] && exit 0

# --- run --------------------------------------------------------------------------
if command -v nvidia-smi >/dev/null 2>&1; then
  say "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)"
fi
# cuDNN loads its sub-libraries (libcudnn_graph, _cnn, _engines_*) from its
# own folder at run time
export LD_LIBRARY_PATH="$cudnn_lib:$cudart_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
deadline=$((limit > 20 ? limit - 10 : limit))
st=0
timeout "$limit" "$out/cudnn_engine_probe" --deadline "$deadline" "$@" || st=$?
case $st in
  0) say "ok ($((SECONDS - t0)) s)" ;;
  124) say "FAIL: the time limit of $limit s was reached" ;;
  *) say "FAIL (status $st)" ;;
esac
exit "$st"
