#!/usr/bin/env bash
# The device check: one prepared script for a machine with an NVIDIA GPU
# (docs/benchmarks.md, "Device figures"). It needs nvcc, gcc with OpenMP and
# glibc, nothing else: no meson, MPI, HDF5, ZeroMQ, libyaml or libpng (the
# GPU machine has none of them); it compiles three standalone binaries from
# the sources they need (common/error, fsutil, cli, npy, checksum; solver/; the CUDA kernels):
#   test_lte_backends  every backend, the CUDA one on the device included,
#                      against the literal reference (docs/physics.md's rules),
#                      the CPU kernel and the host-compiled kernel bodies;
#                      the float32 path (device kernel, CPU, bodies) within
#                      1e-5 of the float64 reference ("float32 ..." lines);
#                      run again with chunks of one cube
#                      (COEMU_CUDA_SOLVER_CHUNK=1: the two streams' buffers
#                      reused cube after cube); the device's solver in two
#                      kernel forms (COEMU_CUDA_SOLVER_FORM=two: a cell
#                      kernel, then a ray kernel; =fused: one kernel, the
#                      cells through shared memory), and in the default
#                      (auto: the fastest form, timed once per shape)
#   test_pomme         every backend against Pomme 0.2.1's golden images
#   gpu_bench          cubes/s of the LTE solver, 64^3 x 7 channels, float64
#                      and float32 cells, and the float32 path (precision=
#                      float32), on the device and on the CPU; on the device
#                      also with the cubes resident there (images into one
#                      page-locked block and into malloc'd rows; chunks of
#                      4, 16, 32 cubes; each kernel form), each checked bit
#                      for bit against the images from host cells
# and, where libyaml's header is found (the units sidecar of a model):
#   test_sample        the sampler: the device's cubes bit for bit against
#                      the CPU's, the host-compiled bodies too
#   gpu_sample_bench   sample (on the device) + solve (on the device) of a
#                      loaded AMRVAC model: cubes/s, samples/s, bus GB/s, for
#                      the linear reconstruction (the default), constant and
#                      limited
#   gpu_devpipe_check  issue 17's dataset check: the demo job's first models'
#                      samples made by the producer's CPU path and by the
#                      device pipeline (pipeline/generate/devpipe.h: cubes
#                      sampled and solved on the device, only images and
#                      inputs back), compared by docs/physics.md's rules;
#                      images only: the input rows' XXH64s made on the
#                      device equal the CPU rows'; then sample + solve
#                      samples/s and bytes back per sample (images only:
#                      images + 8-byte checksums; with inputs: GB/s)
# The sampler's parity rule: the device's cubes equal the CPU's bit for bit,
# constant, linear and limited (the same float and double operations as the host
# code, fused steps explicit, --fmad=false: no contraction).
# then runs them, parity first, and prints one line per figure. Under 5
# minutes on one GPU (each step has a time limit), then the trainer's part
# (scripts/gpu-check-trainer.sh; GPU_CHECK_SKIP_TRAINER=1 leaves it out).
#
#   bash scripts/gpu-check.sh               build, parity tests, benchmarks
#   bash scripts/gpu-check.sh --build-only  build only (CI: nvcc, no GPU; the
#                                           meson test gpu_check_build)
#   bash scripts/gpu-check.sh --run-only    the steps again on the binaries built
#                                           before in GPU_CHECK_DIR
# Environment: NVCC (default nvcc), CC (gcc), GPU_ARCH (90: H100/H200; a
# comma-separated list), GPU_CHECK_DIR (build folder, default build-gpu-check),
# GPU_BENCH_ARGS (extra gpu_bench options, e.g. "--batch 128"), GPU_SAMPLE_BENCH_ARGS and
# GPU_DEVPIPE_ARGS (the same for gpu_sample_bench and gpu_devpipe_check), GPU_CHECK_PROFILE
# (1: Nsight Compute on the sampler's and solver's kernels), GPU_CHECK_DEPS
# (default TRAINER_CHECK_DEPS: a `scripts/gpu-check-trainer.sh --pack-deps`
# folder, whose libyaml builds the sampler's part where the GPU machine has none),
# GPU_NVCC_DEFS (extra -D flags for the kernels: scripts/gpu-tune.sh's variants).
# NVCC=tests/cuda_emu/bin/nvcc builds the same binaries against the CUDA
# emulator and runs these steps on the CPU (scripts/cuda-emu-check.sh: CI).
set -euo pipefail
cd "$(dirname "$0")/.."
build_only=0 run_only=0
case "${1:-}" in
  --build-only) build_only=1 ;;
  --run-only) run_only=1 ;;
  "") ;;
  *) echo "usage: scripts/gpu-check.sh [--build-only | --run-only]" >&2; exit 2 ;;
esac
NVCC=${NVCC:-nvcc}
CC=${CC:-gcc}
ARCH=${GPU_ARCH:-90}
out=${GPU_CHECK_DIR:-build-gpu-check}
if ! command -v "$NVCC" >/dev/null 2>&1; then
  echo "gpu-check: no CUDA compiler ($NVCC) on PATH" >&2
  exit 1
fi
mkdir -p "$out/obj"
root=$PWD
gencode=()
IFS=',' read -ra archs <<<"$ARCH"
for a in "${archs[@]}"; do gencode+=("-gencode=arch=compute_${a},code=[sm_${a},compute_${a}]"); done
# GPU_NVCC_DEFS: extra -D flags for the kernels (the launch-bounds sweep of
# scripts/gpu-tune.sh: LTE_RAYS_MIN_BLOCKS, LTE_CELLS_MIN_BLOCKS, SB_LINES_MIN_BLOCKS)
read -ra nvdefs <<<"${GPU_NVCC_DEFS:-}"
defs=(-D_GNU_SOURCE -DCOEMU_HAVE_CUDA "-DCOEMU_VERSION=\"gpu-check\""
      "-DCOEMU_DEFAULT_LAMDA_CO=\"$root/tests/data/lamda/co.dat\"")
# the solver's flags (solver/meson.build): no FMA contraction; the host's
# vector units, and glibc's libmvec where it links
cflags=(-std=c17 -O2 -g -fopenmp -ffp-contract=off -ffunction-sections -march=native -I"$root" -I"$root/tests" "${defs[@]}")
# the CUDA runtime's header (gpu_bench's resident cubes)
cuda_inc=$(dirname "$(dirname "$(command -v "$NVCC")")")/include
[ -d "$cuda_inc" ] && cflags+=(-I"$cuda_inc")
# GPU_CHECK_CFLAGS: extra flags for the C sources (scripts/cuda-emu-check.sh's
# sanitizers)
read -ra xcflags <<<"${GPU_CHECK_CFLAGS:-}"
cflags+=("${xcflags[@]}")
libs=(-lm)
ldeps=() # a packed dependency folder: headers, and libraries found at link and run time
deps=${GPU_CHECK_DEPS:-${TRAINER_CHECK_DEPS:-}}
if [ -n "$deps" ]; then
  deps=$(cd "$deps" && pwd)
  cflags+=(-I"$deps/include")
  ldeps=(-L"$deps/lib" "-Wl,-rpath=$deps/lib")
fi
t0=$SECONDS
if [ "$run_only" = 1 ]; then
  # the binaries of an earlier build in $out, as they are
  [ -x "$out/test_lte_backends" ] || { echo "gpu-check: --run-only: nothing built in $out" >&2; exit 1; }
  have_yaml=0
  [ -x "$out/gpu_devpipe_check" ] && have_yaml=1
else
if echo 'int main(void){return 0;}' | "$CC" -x c - -o "$out/obj/mvec-probe" -lmvec 2>/dev/null; then
  cflags+=(-DCOEMU_HAVE_LIBMVEC)
  libs=(-lmvec -lm)
fi
have_yaml=0
if echo '#include <yaml.h>
int main(void){return 0;}' | "$CC" "${cflags[@]}" -x c - -o "$out/obj/yaml-probe" "${ldeps[@]}" -lyaml 2>/dev/null; then
  have_yaml=1
fi
lib=(common/error.c common/fsutil.c common/cli.c common/npy.c common/checksum.c solver/lamda.c
     solver/lte_line.c solver/lte.c
     solver/lte_kernel_cpu.c solver/freqgrid.c solver/cubes.c tests/solver/ref_lte.c)
objs=()
pids=()
rot=(rotate/amrvac_forest.c rotate/amrvac.c rotate/units.c rotate/model.c rotate/directions.c
     rotate/sampler.c rotate/compat.c)
dp=(rotate/amrvac_write.c rotate/synth.c pipeline/generate/devpipe.c) # the demo's models, the pipeline
extra=()
[ "$have_yaml" = 1 ] && extra=("${rot[@]}" "${dp[@]}" tests/rotate/test_sample.c
                               tests/rotate/gpu_sample_bench.c tests/pipeline/gpu_devpipe_check.c)
for s in "${lib[@]}" tests/solver/test_lte_backends.c tests/solver/test_pomme.c tests/solver/gpu_bench.c "${extra[@]}"; do
  o="$out/obj/$(echo "$s" | tr / _).o"
  "$CC" "${cflags[@]}" -c "$s" -o "$o" &
  pids+=($!)
done
"$NVCC" -O3 --fmad=false -std=c++17 "${gencode[@]}" -I"$root" "${defs[@]}" "${nvdefs[@]}" \
  -Xcompiler=-fPIC -c solver/lte_kernel_cuda.cu -o "$out/obj/lte_kernel_cuda.o"
"$NVCC" -O3 --fmad=false -std=c++17 "${gencode[@]}" -I"$root" "${defs[@]}" "${nvdefs[@]}" \
  -Xcompiler=-fPIC -c rotate/sampler_cuda.cu -o "$out/obj/sampler_cuda.o"
"$NVCC" -O3 -std=c++17 "${gencode[@]}" -I"$root" "${defs[@]}" \
  -Xcompiler=-fPIC -c pipeline/generate/devpipe_hash_cuda.cu -o "$out/obj/devpipe_hash_cuda.o"
for p in "${pids[@]}"; do wait "$p"; done
for s in "${lib[@]}"; do objs+=("$out/obj/$(echo "$s" | tr / _).o"); done
objs+=("$out/obj/lte_kernel_cuda.o")
for b in test_lte_backends test_pomme gpu_bench; do
  "$NVCC" -o "$out/$b" "$out/obj/tests_solver_$b.c.o" "${objs[@]}" -Xcompiler=-fopenmp \
    "${libs[@]}" -lpthread
done
built="test_lte_backends, test_pomme, gpu_bench"
if [ "$have_yaml" = 1 ]; then
  robjs=()
  for s in "${rot[@]}"; do robjs+=("$out/obj/$(echo "$s" | tr / _).o"); done
  for b in test_sample gpu_sample_bench; do
    "$NVCC" -o "$out/$b" "$out/obj/tests_rotate_$b.c.o" "${robjs[@]}" "$out/obj/sampler_cuda.o" \
      "${objs[@]}" -Xcompiler=-fopenmp "${ldeps[@]/#-Wl,/-Xlinker=}" "${libs[@]}" -lyaml -lpthread
  done
  # synth.c's PNG preview (common/image.c, libpng: not on the GPU machine) is
  # never called here: its section is dropped (-ffunction-sections above)
  for s in "${dp[@]}"; do robjs+=("$out/obj/$(echo "$s" | tr / _).o"); done
  "$NVCC" -o "$out/gpu_devpipe_check" "$out/obj/tests_pipeline_gpu_devpipe_check.c.o" "${robjs[@]}" \
    "$out/obj/sampler_cuda.o" "$out/obj/devpipe_hash_cuda.o" "${objs[@]}" -Xcompiler=-fopenmp \
    -Xlinker=--gc-sections "${ldeps[@]/#-Wl,/-Xlinker=}" "${libs[@]}" \
    -lyaml -lpthread
  built="$built, test_sample, gpu_sample_bench, gpu_devpipe_check"
else
  echo "gpu-check: no libyaml header here: the sampler's test and sample + solve bench are not built"
fi
echo "gpu-check: built $built in $out ($((SECONDS - t0)) s)"
fi
[ "$build_only" = 1 ] && exit 0

# --- on the GPU machine -------------------------------------------------------
rc=0
if command -v nvidia-smi >/dev/null 2>&1; then
  echo "gpu-check gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
fi
echo "gpu-check host: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
export COEMU_TEST_DATA="$root/tests/data"
export COEMU_REQUIRE_DEVICE=1 # a device backend that cannot run fails the parity tests
# the solver's kernel form: the default (auto: the faster of the two, timed
# once per shape), set explicitly so that the backend says which it took
export COEMU_CUDA_SOLVER_FORM=${COEMU_CUDA_SOLVER_FORM:-auto}
step() { # name limit command...: the command's figure lines, then "ok" or "FAIL"
  local name=$1 limit=$2
  shift 2
  local log="$out/$name.log" s=$SECONDS st=0
  timeout "$limit" "$@" >"$log" 2>&1 || st=$?
  grep -E '^  (cpu|cuda|bodies|float32|device sampler|sampler bodies)|backend vs Pomme|^gpu_(sample_|devpipe_)?(bench|check)|^solver backend .cuda.: [0-9]+ rays' "$log" | sed "s/^ */gpu-check $name: /" || true
  if [ "$st" = 0 ]; then
    echo "gpu-check $name: ok ($((SECONDS - s)) s)"
  else
    echo "gpu-check $name: FAIL (status $st, log $log)"
    tail -20 "$log" | sed "s/^/  /"
    rc=1
  fi
}
step parity_lte_backends 120 env COEMU_CUDA_SOLVER_FORM=two "$out/test_lte_backends"
step parity_lte_backends_chunk1 120 env COEMU_CUDA_SOLVER_CHUNK=1 "$out/test_lte_backends"
step parity_lte_backends_fused 120 env COEMU_CUDA_SOLVER_FORM=fused "$out/test_lte_backends"
step parity_pomme 60 "$out/test_pomme"
[ "$have_yaml" = 1 ] && step parity_sampler 60 "$out/test_sample"
# shellcheck disable=SC2086
step bench_solver 120 "$out/gpu_bench" ${GPU_BENCH_ARGS:-}
# shellcheck disable=SC2086
[ "$have_yaml" = 1 ] && step bench_sample_solve 60 "$out/gpu_sample_bench" ${GPU_SAMPLE_BENCH_ARGS:-}
# shellcheck disable=SC2086
[ "$have_yaml" = 1 ] && step bench_sample_solve_constant 60 "$out/gpu_sample_bench" --reconstruction constant ${GPU_SAMPLE_BENCH_ARGS:-}
# shellcheck disable=SC2086
[ "$have_yaml" = 1 ] && step bench_sample_solve_limited 60 "$out/gpu_sample_bench" --reconstruction limited ${GPU_SAMPLE_BENCH_ARGS:-}
# shellcheck disable=SC2086
[ "$have_yaml" = 1 ] && step devpipe_dataset 90 "$out/gpu_devpipe_check" ${GPU_DEVPIPE_ARGS:-}
# GPU_CHECK_PROFILE=1: Nsight Compute on the sampler's and the solver's
# kernels (one launch of each: speed of light, occupancy, launch figures),
# the report in $out/ncu.log, its summary lines printed
if [ "${GPU_CHECK_PROFILE:-0}" = 1 ] && [ "$have_yaml" = 1 ]; then
  ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1 || true)
  if [ -n "$ncu" ]; then
    step profile 120 "$ncu" --launch-count 4 -k 'regex:sb_|lte_' --section SpeedOfLight \
      --section Occupancy --section LaunchStats "$out/gpu_sample_bench" --batch 16 --reps 1
    grep -E '^  [a-z_]+.*\(|Duration|Compute \(SM\) Throughput|Memory Throughput|Achieved Occupancy|Registers Per Thread' \
      "$out/profile.log" | sed 's/^ */gpu-check profile: /' || true
  else
    echo "gpu-check profile: SKIP: no ncu on PATH or under /opt/nvidia/nsight-compute"
  fi
fi
# the trainer's part: its own build (gcc + nvcc), parity, curves, speed and
# the PyTorch anchor (set TRAINER_CHECK_DEPS where the machine lacks OpenBLAS
# and FFTW: scripts/gpu-check-trainer.sh --pack-deps)
if [ "${GPU_CHECK_SKIP_TRAINER:-0}" != 1 ]; then
  bash "$root/scripts/gpu-check-trainer.sh" || rc=1
fi
echo "gpu-check: $([ $rc = 0 ] && echo ok || echo FAILED) ($SECONDS s)"
exit $rc
