#!/usr/bin/env bash
# The trainer's device check (docs/benchmarks.md, "Trainer on the GPU"): one
# prepared script for a machine with an NVIDIA GPU, called by
# scripts/gpu-check.sh (or alone). No meson, MPI, HDF5, ZeroMQ, libyaml or
# libpng: it compiles one standalone binary, tests/trainer/trainer_gpu_check,
# from trainer/ (the CPU reference and the CUDA backend), common/error,
# fsutil and checksum, with gcc + nvcc, against OpenBLAS, FFTW, zlib, cuDNN,
# cuBLAS and cuFFT, then runs, with a time limit each:
#   parity   layer parity CPU and CUDA against the literal references, one
#            whole step CUDA vs CPU, checkpoints both ways, 20 steps of the
#            7-channel COEmuNet CPU vs GPU from the same weights and data,
#            then training and inference samples/s on the GPU (fp32, TF32,
#            bf16); bf16 (trainer/precision.h; the native path: bf16 cuDNN
#            convolutions, cublasGemmEx): layers at tf32 / bf16, one
#            bf16 step against the CPU's bf16 emulation, the bf16 curve vs fp32
#            gradient buckets through a single-rank NCCL communicator against
#            no reducer (bit for bit; NCCL optional), the input feed's wait
#            fraction, and its backend path (asynchronous copies on the copy
#            stream, normalisation kernels) against host normalisation: the
#            normalised values within a 1-ulp ln's bound, 3 steps bit for bit
#            when exact
#            (tests/trainer/dp_check.h); the metrics entry (MaxRel, ZNCC,
#            SSIM per sample, trainer/metrics_body.h) on the device against
#            the CPU's within bounds derived for exp's ulp and fused
#            multiply-adds (check_metrics)
#   anchor   PyTorch + cuDNN on the same GPU, same model, loss, optimiser and
#            batch (tests/trainer/torch_anchor.py): fp32, TF32, bf16
# and, with TRAINER_CHECK_PROFILE=1, where a training step's device time goes
# on each side (docs/trainer.md, "Where a step's device time goes"):
#   times    COEMU_CUDA_TIMES=1 trainer_gpu_check --only-bench --no-bench: the
#            CUDA backend's timing mode, fp32 and TF32 at the bench batch
#            (--times-steps 5 timed steps after 2 warm-ups): one line per
#            cuDNN call / layer / loss part / Adam / memset / copy key,
#              trainer-check: times cuda fp32 conv3d fwd 32x7x64x64x64->16
#                k3x3x3 s1x1x1 algo 1 fma: ms_per_step 12.345 calls_per_step 1
#            largest first, a total line and the wall time per step
#   profile  torch_anchor.py --profile fp32,tf32: the same model and batch
#            under torch.profiler, the top CUDA kernels by device time,
#              anchor: profile torch fp32 kernel <name> ms_per_step X calls_per_step Y
# and prints one line per figure.
#
#   bash scripts/gpu-check-trainer.sh               build, parity, curves, speed, anchor
#   bash scripts/gpu-check-trainer.sh --build-only  build only (CI: nvcc + cuDNN, no GPU)
#   bash scripts/gpu-check-trainer.sh --pack-deps DIR
#        copy OpenBLAS, FFTW and zlib (headers and libraries) from this host
#        into DIR, for a GPU machine that has none of them: carry DIR there
#        and set TRAINER_CHECK_DEPS=DIR (the GPU image has nvcc, cuDNN and
#        PyTorch, but no OpenBLAS or FFTW)
# Environment: NVCC (nvcc), CC (gcc), GPU_ARCH (90; comma-separated),
# TRAINER_CHECK_DIR (build folder, default build-gpu-check-trainer),
# TRAINER_CHECK_DEPS (a --pack-deps folder), CUDNN_HOME (cuDNN's prefix, if
# not beside nvcc or in the Python package nvidia-cudnn), TRAINER_CHECK_ARGS
# (extra trainer_gpu_check options, e.g. "--batch 64"), PYTHON (python3),
# TRAINER_CHECK_BF16_EMULATED=1 (the parity again with COEMU_BF16=emulated),
# TRAINER_CHECK_PROFILE=1 (the steps times and profile above, after the
# others; TRAINER_CHECK_TIMES_ARGS replaces their trainer_gpu_check options,
# default "--only-bench --no-bench", TRAINER_CHECK_PROFILE_LIMIT their time
# limit in seconds, default 90), GPU_CHECK_KEEP=DIR (at the end, every step's
# log copied into DIR: trainer.log, anchor.log, times.log, profile.log, ...;
# their stderr holds the COEMU_CUDNN_VERBOSE tables of cuDNN's timed
# algorithms per convolution).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
mode=run
case "${1:-}" in
  --build-only) mode=build ;;
  --pack-deps)
    [ $# -eq 2 ] || { echo "usage: scripts/gpu-check-trainer.sh --pack-deps DIR" >&2; exit 2; }
    mode=pack ;;
  "") ;;
  *) echo "usage: scripts/gpu-check-trainer.sh [--build-only | --pack-deps DIR]" >&2; exit 2 ;;
esac

# --- --pack-deps: the CPU libraries, for a machine without them --------------
if [ "$mode" = pack ]; then
  d=$2
  mkdir -p "$d/include" "$d/lib"
  hdr() { # the first of the candidate headers that exists
    for f in "$@"; do [ -f "$f" ] && { cp -L "$f" "$d/include/"; return 0; }; done
    echo "gpu-check-trainer: --pack-deps: none of $* here" >&2; exit 1
  }
  hdr /usr/include/x86_64-linux-gnu/openblas-pthread/cblas.h /usr/include/cblas.h /usr/include/openblas/cblas.h
  hdr /usr/include/x86_64-linux-gnu/openblas-pthread/openblas_config.h /usr/include/openblas_config.h /usr/include/openblas/openblas_config.h
  hdr /usr/include/fftw3.h
  hdr /usr/include/zlib.h
  hdr /usr/include/zconf.h /usr/include/x86_64-linux-gnu/zconf.h
  hdr /usr/include/yaml.h # the sampler's part of scripts/gpu-check.sh (GPU_CHECK_DEPS)
  for lib in libopenblas.so.0 libfftw3.so.3 libgfortran.so.5 libquadmath.so.0 libz.so.1 libyaml-0.so.2; do
    p=$(ldconfig -p | awk -v l="$lib" '$1 == l && /x86-64/ && !n++ {print $NF}')
    [ -n "$p" ] || { echo "gpu-check-trainer: --pack-deps: $lib not found by ldconfig" >&2; exit 1; }
    cp -L "$p" "$d/lib/$lib"
  done
  ln -sf libopenblas.so.0 "$d/lib/libopenblas.so"
  ln -sf libfftw3.so.3 "$d/lib/libfftw3.so"
  ln -sf libz.so.1 "$d/lib/libz.so"
  ln -sf libyaml-0.so.2 "$d/lib/libyaml.so"
  echo "gpu-check-trainer: packed into $d ($(du -sh "$d" | cut -f1)): carry it and set TRAINER_CHECK_DEPS=$d"
  exit 0
fi

NVCC=${NVCC:-nvcc}
CC=${CC:-gcc}
PYTHON=${PYTHON:-python3}
ARCH=${GPU_ARCH:-90}
out=${TRAINER_CHECK_DIR:-build-gpu-check-trainer}
if ! command -v "$NVCC" >/dev/null 2>&1; then
  echo "gpu-check-trainer: no CUDA compiler ($NVCC) on PATH" >&2
  exit 1
fi
cuda_home=$(dirname "$(dirname "$(command -v "$NVCC")")")

# --- where the libraries are ---------------------------------------------------
inc=(-I"$root" -I"$root/tests")
ldirs=()
add_dir() { # a library folder: searched at link time and at run time
  ldirs+=(-L"$1" "-Xlinker=-rpath=$1")
}
for d in "$cuda_home/include" /usr/include/x86_64-linux-gnu/openblas-pthread /usr/include/openblas; do
  [ -d "$d" ] && inc+=(-I"$d")
done
[ -d "$cuda_home/lib64" ] && add_dir "$cuda_home/lib64"
[ -d "$cuda_home/lib" ] && add_dir "$cuda_home/lib"
if [ -n "${TRAINER_CHECK_DEPS:-}" ]; then
  deps=$(cd "$TRAINER_CHECK_DEPS" && pwd)
  inc+=(-I"$deps/include")
  add_dir "$deps/lib"
fi
# cuDNN (and cuBLAS / cuFFT when the toolkit lacks them): CUDNN_HOME, beside
# nvcc, or the Python packages nvidia-cudnn / nvidia-cublas / nvidia-cufft
if [ -n "${CUDNN_HOME:-}" ]; then
  inc+=(-I"$CUDNN_HOME/include")
  for l in lib64 lib; do [ -d "$CUDNN_HOME/$l" ] && add_dir "$CUDNN_HOME/$l"; done
fi
if command -v "$PYTHON" >/dev/null 2>&1; then
  pyn=$("$PYTHON" -c 'import nvidia, os; print(" ".join(nvidia.__path__))' 2>/dev/null || true)
  for top in $pyn; do
    for f in $(find "$top" -maxdepth 4 \( -name 'cudnn.h' -o -name 'cublas_v2.h' -o -name 'cufft.h' \) 2>/dev/null); do
      inc+=(-I"$(dirname "$f")")
    done
    for f in $(find "$top" -maxdepth 4 \( -name 'libcudnn.so*' -o -name 'libcublas.so*' -o -name 'libcufft.so*' \) 2>/dev/null); do
      add_dir "$(dirname "$f")"
    done
  done
fi
probe() { # a header the build needs
  echo "#include <$1>" | "$CC" -x c -E "${inc[@]}" - >/dev/null 2>&1 || {
    echo "gpu-check-trainer: $1 not found (${2}); searched: ${inc[*]}" >&2
    exit 1
  }
}
probe cblas.h "OpenBLAS: install it, or --pack-deps on a host that has it"
probe fftw3.h "FFTW: install it, or --pack-deps"
probe zlib.h "zlib: install it, or --pack-deps"
probe cudnn.h "cuDNN: set CUDNN_HOME"
# one link flag per library, pointing at an unversioned name where the
# folder only has a versioned one (pip's nvidia packages)
mkdir -p "$out/obj" "$out/lib"
libs=()
for l in openblas fftw3 z cudnn cublas cufft; do
  found=
  for a in "${ldirs[@]}" -L/usr/lib/x86_64-linux-gnu -L/usr/lib64 -L/usr/lib; do
    case "$a" in -L*) d=${a#-L} ;; *) continue ;; esac
    if [ -e "$d/lib$l.so" ]; then found=1; break; fi
    v=$(ls "$d"/lib"$l".so.* 2>/dev/null | head -1 || true)
    if [ -n "$v" ]; then ln -sf "$v" "$out/lib/lib$l.so"; found=1; break; fi
  done
  [ -n "$found" ] || { echo "gpu-check-trainer: lib$l.so not found (searched ${ldirs[*]} and the system)" >&2; exit 1; }
  libs+=(-l"$l")
done
ldirs+=(-L"$out/lib")

# NCCL (the device reducer, trainer/nccl_comm.h): optional; without it the
# check says the NCCL part is skipped
nccl=
if echo "#include <nccl.h>" | "$CC" -x c -E "${inc[@]}" - >/dev/null 2>&1; then
  for a in "${ldirs[@]}" -L/usr/lib/x86_64-linux-gnu; do
    case "$a" in -L*) d=${a#-L} ;; *) continue ;; esac
    if [ -e "$d/libnccl.so" ]; then nccl=1; break; fi
    v=$(ls "$d"/libnccl.so.* 2>/dev/null | head -1 || true)
    if [ -n "$v" ]; then ln -sf "$v" "$out/lib/libnccl.so"; nccl=1; break; fi
  done
fi
if [ -n "$nccl" ]; then libs+=(-lnccl); else echo "gpu-check-trainer: NCCL not found: its check is skipped"; fi

# --- build -----------------------------------------------------------------------
gencode=()
IFS=',' read -ra archs <<<"$ARCH"
for a in "${archs[@]}"; do gencode+=("-gencode=arch=compute_${a},code=[sm_${a},compute_${a}]"); done
defs=(-D_GNU_SOURCE -DCOEMU_HAVE_CUDA -DCOEMU_HAVE_CUDA_TRAINER "-DCOEMU_VERSION=\"gpu-check-trainer\"")
[ -n "$nccl" ] && defs+=(-DCOEMU_HAVE_NCCL)
cflags=(-std=c17 -O2 -g -fopenmp -fno-math-errno -ffp-contract=off -march=native "${inc[@]}" "${defs[@]}")
src=(trainer/nn.c trainer/bucket.c trainer/backend_cpu.c trainer/layers_cpu.c trainer/coemunet.c
     trainer/loss.c trainer/optim.c trainer/checkpoint.c trainer/train.c trainer/train_bench.c trainer/precision.c trainer/nccl_comm.c
     trainer/metrics.c trainer/cuda/cudnn_graph.c
     pipeline/train/feed.c stats/transforms.c common/error.c common/fsutil.c common/checksum.c common/progress.c
     tests/trainer/trainer_gpu_check.c)
t0=$SECONDS
pids=()
objs=()
for s in "${src[@]}"; do
  o="$out/obj/$(echo "$s" | tr / _).o"
  objs+=("$o")
  "$CC" "${cflags[@]}" -c "$s" -o "$o" &
  pids+=($!)
done
# the cuDNN engine probe (docs/trainer.md, "The cuDNN engine probe"): the
# graph API module above and cuDNN, nothing else
"$CC" "${cflags[@]}" -c tests/trainer/cudnn_engine_probe.c -o "$out/obj/cudnn_engine_probe.o" &
pids+=($!)
"$NVCC" -O3 -std=c++17 "${gencode[@]}" "${inc[@]}" "${defs[@]}" -Xcompiler=-fPIC \
  -c trainer/cuda/backend_cuda.cu -o "$out/obj/backend_cuda.o"
for p in "${pids[@]}"; do wait "$p"; done
"$NVCC" -o "$out/trainer_gpu_check" "${objs[@]}" "$out/obj/backend_cuda.o" -Xcompiler=-fopenmp \
  "${ldirs[@]}" "${libs[@]}" -lm -lpthread -ldl
"$NVCC" -o "$out/cudnn_engine_probe" "$out/obj/cudnn_engine_probe.o" \
  "$out/obj/trainer_cuda_cudnn_graph.c.o" "${ldirs[@]}" -lcudnn -lm -lpthread -ldl
echo "gpu-check-trainer: built $out/trainer_gpu_check, $out/cudnn_engine_probe ($((SECONDS - t0)) s)"
[ "$mode" = build ] && exit 0

# --- on the GPU machine ------------------------------------------------------------
rc=0
rm -f "$out"/*.log # this run's step logs only (GPU_CHECK_KEEP)
if command -v nvidia-smi >/dev/null 2>&1; then
  echo "gpu-check-trainer gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
fi
echo "gpu-check-trainer host: $(nproc) cores"
export COEMU_REQUIRE_DEVICE=1 # a CUDA backend that cannot run is a failure here
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
step() { # name limit command...: its result lines, then ok or FAIL
  local name=$1 limit=$2
  shift 2
  local log="$out/$name.log" s=$SECONDS st=0
  timeout "$limit" "$@" >"$log" 2>&1 || st=$?
  grep -E '^(trainer-check|anchor):' "$log" | sed "s/^/gpu-check-trainer $name: /" || true
  if [ "$st" = 0 ]; then
    echo "gpu-check-trainer $name: ok ($((SECONDS - s)) s)"
  else
    echo "gpu-check-trainer $name: FAIL (status $st, log $log)"
    tail -20 "$log" | sed "s/^/  /"
    rc=1
  fi
}
# shellcheck disable=SC2086
step trainer 300 "$out/trainer_gpu_check" --tf32 ${TRAINER_CHECK_ARGS:-}
# the bf16 entries above ran the native path (bf16 cuDNN / cublasGemmEx);
# TRAINER_CHECK_BF16_EMULATED=1 repeats the parity on the emulated one
# (float32 cuDNN / cuBLAS on rounded copies: the same definition, for
# telling a tensor-core effect from a wrong rounding point)
if [ "${TRAINER_CHECK_BF16_EMULATED:-0}" = 1 ]; then
  # shellcheck disable=SC2086
  step trainer-bf16-emulated 120 env COEMU_BF16=emulated "$out/trainer_gpu_check" --no-bench \
    --no-curves ${TRAINER_CHECK_ARGS:-}
fi
have_torch=
"$PYTHON" -c 'import torch' >/dev/null 2>&1 && have_torch=1
if [ -n "$have_torch" ]; then
  step anchor 180 "$PYTHON" tests/trainer/torch_anchor.py
else
  echo "gpu-check-trainer anchor: SKIP: $PYTHON has no torch"
fi
# coemu against the anchor, same precision, same batch, same feed
# (fp32-fastest: cuDNN's fastest algorithms, deterministic or not, as
# PyTorch's default; fp32: the fastest deterministic ones, coemu's default;
# -ws16g: with 16 GiB of workspace allowed instead of 512 MiB; fp32-graph:
# the float32 convolutions on cuDNN's graph API, COEMU_CUDNN_API=graph, as
# PyTorch's; fp32-auto: each call on the faster of the two APIs,
# COEMU_CUDNN_API=auto; each against torch's fp32). Feeds (trainer/train_bench.h): the
# batch copied from pageable host memory before each step (the lines
# without a feed= word), from page-locked memory beside the step before
# (feed=pinned), or already on the device (feed=resident)
for p in fp32 fp32-fastest fp32-fastest-ws16g fp32-graph fp32-auto tf32 bf16; do
  for k in train infer; do
    for f in "" "feed=pinned " "feed=resident "; do
      # (|| true: a figure missing from a log is no reason to stop under pipefail)
      c=$(grep -hE "^trainer-check: $k cuda $p batch=[0-9]+ ${f}samples/s" "$out/trainer.log" 2>/dev/null | awk '{print $NF}' | head -1 || true)
      a=$(grep -hE "^anchor: $k torch ${p%%-*} batch=[0-9]+ ${f}samples/s" "$out/anchor.log" 2>/dev/null | awk '{print $NF}' | head -1 || true)
      if [ -n "$c" ] && [ -n "$a" ]; then
        echo "gpu-check-trainer: $k $p ${f:-feed=pageable }samples/s: coemu $c, torch $a ($(awk -v c="$c" -v a="$a" 'BEGIN {printf "%.2f", c / a}') x)"
      fi
    done
  done
done
# where a step's device time goes: coemu's timing mode (the events around
# every group of work, COEMU_CUDA_TIMES) and PyTorch's kernels (torch.profiler)
if [ "${TRAINER_CHECK_PROFILE:-0}" = 1 ]; then
  plimit=${TRAINER_CHECK_PROFILE_LIMIT:-90}
  # shellcheck disable=SC2086
  step times "$plimit" env COEMU_CUDA_TIMES=1 "$out/trainer_gpu_check" \
    ${TRAINER_CHECK_TIMES_ARGS:---only-bench --no-bench} ${TRAINER_CHECK_ARGS:-}
  if [ -n "$have_torch" ]; then
    step profile "$plimit" "$PYTHON" tests/trainer/torch_anchor.py --profile fp32,tf32
  else
    echo "gpu-check-trainer profile: SKIP: $PYTHON has no torch"
  fi
fi
if [ -n "${GPU_CHECK_KEEP:-}" ]; then
  if mkdir -p "$GPU_CHECK_KEEP" && cp "$out"/*.log "$GPU_CHECK_KEEP"/; then
    echo "gpu-check-trainer: logs kept in $GPU_CHECK_KEEP: $(cd "$out" && echo *.log)"
  else
    echo "gpu-check-trainer: GPU_CHECK_KEEP=$GPU_CHECK_KEEP: could not copy the logs of $out"
    rc=1
  fi
fi
echo "gpu-check-trainer: $([ $rc = 0 ] && echo ok || echo FAILED) ($SECONDS s)"
exit $rc
