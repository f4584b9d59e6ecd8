#!/usr/bin/env bash
# The device check on the CUDA emulator (tests/cuda_emu/; docs/architecture.md,
# "The CUDA emulator"): scripts/gpu-check.sh's binaries built against the
# emulated runtime (NVCC=tests/cuda_emu/bin/nvcc) and its steps run on this
# host's CPU, at small sizes, in both of the emulator's stream orders:
#   lazy   a stream's work runs only when the host waits for it (a host that
#          reads before waiting, or rewrites a buffer a queued copy still
#          reads, gets wrong bytes and fails the parity);
#   eager  each call runs as it is made.
# Then the solver part of scripts/gpu-tune.sh (the device session's tuning
# run; its variant flat, small sizes; not under the sanitizers), and the
# paths a device takes rarely:
#   refused    the solver's fused kernel given more registers than a block of
#              13 channels' threads can hold (COEMU_CUDA_EMU_REGS): the
#              default form choice (auto) leaves it out with a line on
#              stderr, and the images still pass;
#   no_device  an emulated host without a device: every backend's clear error;
#   bad_setting  a bad COEMU_CUDA_EMU: exit 2 with the variable named.
# What this proves: the host code of the .cu files and of their callers
# (devices, streams, events, copies, chunks, the two host threads of the
# device pipeline's overlap, launches, error paths) runs and gives the
# device parity checks' results. What it cannot: any speed, register or
# occupancy figure, or the device's math library (scripts/gpu-check.sh on
# a GPU does that).
#
#   bash scripts/cuda-emu-check.sh      (CUDA_EMU_DIR: build folder,
#                                        default build-cuda-emu; CXX: g++;
#                                        CUDA_EMU_SANITIZE: address,undefined)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=${CUDA_EMU_DIR:-build-cuda-emu}
mkdir -p "$out"
out=$(cd "$out" && pwd)
export NVCC="$root/tests/cuda_emu/bin/nvcc"
export GPU_CHECK_DIR="$out" GPU_CHECK_SKIP_TRAINER=1
# small sizes: the kernels run on one CPU core each
export GPU_BENCH_ARGS="--batch 3 --reps 1 --size 24 --cpu-batch 2 --chunks 1,2"
export GPU_SAMPLE_BENCH_ARGS="--batch 2 --reps 1"
export GPU_DEVPIPE_ARGS="--models 1 --dirs 6 --ref 2 --batch 6 --reps 1 --n 24"
# CUDA_EMU_SANITIZE=address,undefined (the sanitizer build's CI run): every
# source and the emulator built with them, so that a kernel's or a copy's
# overrun of device memory (host memory here) is an error
if [ -n "${CUDA_EMU_SANITIZE:-}" ]; then
  export GPU_CHECK_CFLAGS="-fsanitize=$CUDA_EMU_SANITIZE -fno-omit-frame-pointer"
  export COEMU_CUDA_EMU_CXXFLAGS="$GPU_CHECK_CFLAGS"
fi
rc=0
for order in lazy eager; do
  echo "cuda-emu-check: the device check, $order order"
  how=() # built once, for the first order
  [ "$order" = eager ] && how=(--run-only)
  if ! COEMU_CUDA_EMU=$order bash scripts/gpu-check.sh "${how[@]}" 2>&1 | sed "s/^/[$order] /"; then
    rc=1
  fi
done
# the solver part of scripts/gpu-tune.sh, on one of its variants (the threads
# in the plain order; its steps run on the first variant): every step of the
# device session's tuning run starts, parses its options and passes its
# parity here first (not in the sanitizer build: the same code as above, and
# its builds are the slowest part there)
if [ -n "${CUDA_EMU_SANITIZE:-}" ]; then
  echo "cuda-emu-check: scripts/gpu-tune.sh's solver part: left to the unsanitized builds"
else
  echo "cuda-emu-check: scripts/gpu-tune.sh's solver part, variant flat"
  if ! GPU_TUNE_TRAINER=0 GPU_TUNE_NSYS=0 GPU_TUNE_DIR="$out/tune" GPU_CHECK_KEEP="$out/tune-logs" \
    GPU_TUNE_VARIANTS="flat=-DLTE_BODY_RAY_GROUP=0" \
    GPU_TUNE_BENCH_ARGS="--batch 2 --reps 1 --size 16 --chunks 1" \
    GPU_TUNE_DEVPIPE_ARGS="--dirs 4 --ref 1 --batch 4 --reps 1 --n 16" \
    bash scripts/gpu-tune.sh 2>&1 | grep -E "^gpu-tune [^:]*: (ok|FAIL)|^gpu-tune: |^  " | sed "s/^/[tune] /"; then
    rc=1
  fi
fi
export COEMU_TEST_DATA="$root/tests/data"
# one step: name command...; its log in $out/emu_NAME.log
check() {
  local name=$1
  shift
  if "$@" >"$out/emu_$name.log" 2>&1; then
    echo "cuda-emu-check $name: ok"
  else
    echo "cuda-emu-check $name: FAIL (log $out/emu_$name.log)"
    tail -20 "$out/emu_$name.log" | sed "s/^/  /"
    rc=1
  fi
}
refused() {
  COEMU_REQUIRE_DEVICE=1 COEMU_CUDA_SOLVER_FORM=auto \
    COEMU_CUDA_EMU_REGS='lte_fused_kernel<0>=160,lte_fused_kernel<1>=160' "$out/test_lte_backends" &&
    grep -q "the fused form cannot run on this device (.*too many resources" "$out/emu_refused.log" &&
    grep -q "13 channels.* in two [0-9.]* ms, two-small [0-9.]* ms: two" "$out/emu_refused.log" &&
    grep -q "7 channels.*fused [0-9.]* ms: " "$out/emu_refused.log"
}
check refused refused
no_device() {
  COEMU_CUDA_EMU_DEVICES=0 "$out/test_lte_backends" &&
    grep -q "cuda: built, cannot run here: .*no CUDA device" "$out/emu_no_device.log"
}
check no_device no_device
bad_setting() { # the emulator's own settings: a bad value ends the run, named
  local st=0
  COEMU_CUDA_EMU=fast "$out/test_lte_backends" || st=$?
  [ "$st" = 2 ] && grep -q "cuda emulator: COEMU_CUDA_EMU = 'fast': expected lazy" "$out/emu_bad_setting.log"
}
check bad_setting bad_setting
echo "cuda-emu-check: $([ $rc = 0 ] && echo ok || echo FAILED) ($SECONDS s)"
exit $rc
