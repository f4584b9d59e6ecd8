#!/usr/bin/env bash
# The device tuning run (docs/benchmarks.md, "Device figures"): one
# prepared script, beside scripts/gpu-check.sh, for deciding the next
# kernel work from figures rather than from reading the kernels. Same needs
# as gpu-check.sh (nvcc, gcc; a --pack-deps folder for libyaml); ~4-5
# minutes for the solver part, ~6-7 for the trainer part on one H200 by the
# steps' estimates (two parts, below). It prints one line per figure, `gpu-tune STEP: ...`:
#   overlap    gpu_devpipe_check (its parity: the device pipeline against the
#              CPU path, chunks of 5 alternating buffers; then the sample +
#              solve bench), one chunk after the other (the default) and
#              with the next chunk sampled while one is solved (its lines
#              say "overlap"), then the overlap with chunks of 32 and 64
#              cubes (COEMU_DEVPIPE_OVERLAP=1 COEMU_DEVPIPE_CHUNK); each
#              bench also images only without checksums and with them
#              after the solve (`hash=after`, COEMU_DEVPIPE_HASH)
#   variant V  the sampler's and solver's kernels built with other launch
#              bounds (GPU_NVCC_DEFS: LTE_RAYS_MIN_BLOCKS, LTE_CELLS_MIN_BLOCKS,
#              SB_LINES_MIN_BLOCKS; LTE_BODY_RAY_GROUP=0, the solver threads'
#              plain order; LTE_BODY_READ_AHEAD=0, cells read at their step;
#              each in its own build folder, built in parallel first):
#              gpu_bench's resident solver figures (the
#              images into page-locked and pageable rows, and per chunk
#              size: COEMU_CUDA_SOLVER_CHUNK 4, 16, 32, each bit for bit
#              against the images from host cells) and gpu_devpipe_check
#              (parity included: the bits must not move)
#   form       gpu_devpipe_check with the solver's kernel forms two (cells
#              then rays) and fused (lte_kernel_body.h section 4) forced
#              (COEMU_CUDA_SOLVER_FORM; the default, auto, times every form
#              once per shape and says which it took): parity and samples/s;
#              every variant's gpu_bench also times each form resident
#              (`resident form=two|two-small|fused`, bit for bit against the
#              images from host cells)
#   nsys       where Nsight Systems is found: device time per kernel and per
#              copy kind over one gpu_devpipe_check (after the overlap steps)
#              and one gpu_bench (last)
#   trainer    (GPU_TUNE_TRAINER=0 leaves it out) first the parity (every
#              layer, every precision, float32 on the graph API), then
#              float32 on the graph API and on the faster API per call
#              (fp32-graph, fp32-auto, resident), then the training and
#              inference rates of coemu and PyTorch with the batch fed three
#              ways (pageable host memory as before, page-locked beside the
#              step before, resident on the device: trainer/train_bench.h)
#              and the copies' GB/s alone; then where a float32 training
#              step's device time goes: coemu's per-call table
#              (COEMU_CUDA_TIMES=1; docs/trainer.md), the same with the
#              convolutions on cuDNN's graph API (COEMU_CUDNN_API=graph),
#              PyTorch's kernels under
#              its profiler (torch_anchor.py --profile), and the cuDNN engine
#              probe (tests/trainer/cudnn_engine_probe.c, built by
#              scripts/gpu-check-trainer.sh: per convolution
#              shape, the legacy API's strict-float32 algorithms against the
#              graph API's engines), and PyTorch's rates with NDHWC convolutions
#              (torch_anchor.py --channels-last: is the layout the way to
#              5,000 inference samples/s?)
#
#   bash scripts/gpu-tune.sh
# In two calls, each well inside one device command's 10 minutes:
#   GPU_TUNE_TRAINER=0 bash scripts/gpu-tune.sh   the solver and pipeline part
#   GPU_TUNE_SOLVER=0 bash scripts/gpu-tune.sh    the trainer part
# Environment: GPU_TUNE_VARIANTS ("label=defs;label=defs", default below),
# GPU_TUNE_SOLVER (0: no overlap, variants or nsys steps, no variant builds),
# GPU_CHECK_DEPS / TRAINER_CHECK_DEPS (as gpu-check.sh), GPU_CHECK_KEEP (a
# folder: every log copied there), GPU_TUNE_TRAINER (0: no trainer part),
# TRAINER_CHECK_DEPS (as gpu-check-trainer.sh), PYTHON, GPU_TUNE_BENCH_ARGS and
# GPU_TUNE_DEVPIPE_ARGS (options added after every gpu_bench and gpu_devpipe_check
# command's own: the dry run of the solver part on the CUDA emulator,
# NVCC=tests/cuda_emu/bin/nvcc, passes small sizes there), GPU_TUNE_DIR (the
# prefix of the build and log folders, default build-gpu-tune), GPU_TUNE_NSYS (0:
# no Nsight Systems steps).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
# base: the defaults; flat: the solver's threads in the plain order (before
# the ray groups of solver/lte_kernel_body.h); behind: the ray threads read
# each cell at its step, not a step ahead (LTE_BODY_READ_AHEAD=0, the order
# before 2026-12-06); rays3 / rays4: the ray (and
# cell) kernels held to 80 / 64 registers; lines3: the sampler's sub-line
# kernel held to 80 (it spills 172 bytes). (The ray kernels in blocks of
# 128 threads, once the variant rblk128, are now the solver's run-time form
# two-small: gpu_bench's `resident form=two-small` lines in every variant.)
variants=${GPU_TUNE_VARIANTS:-"base=;flat=-DLTE_BODY_RAY_GROUP=0;behind=-DLTE_BODY_READ_AHEAD=0;rays3=-DLTE_RAYS_MIN_BLOCKS=3;rays4=-DLTE_RAYS_MIN_BLOCKS=4 -DLTE_CELLS_MIN_BLOCKS=4;lines3=-DSB_LINES_MIN_BLOCKS=3"}
# the variants' build folders and the logs: GPU_TUNE_DIR-LABEL, GPU_TUNE_DIR-logs
pre=${GPU_TUNE_DIR:-build-gpu-tune}
# every step's log goes straight to GPU_CHECK_KEEP when set (a run cut short
# by a time limit keeps what it did)
logs=${GPU_CHECK_KEEP:-$pre-logs}
mkdir -p "$logs" "$pre-logs"
export COEMU_TEST_DATA="$root/tests/data"
export COEMU_REQUIRE_DEVICE=1
# the solver's kernel form: the default (auto), set explicitly so that the
# backend says which form it took for each shape, with both times
export COEMU_CUDA_SOLVER_FORM=${COEMU_CUDA_SOLVER_FORM:-auto}
read -ra xbench <<<"${GPU_TUNE_BENCH_ARGS:-}"
read -ra xdev <<<"${GPU_TUNE_DEVPIPE_ARGS:-}"
t0=$SECONDS
rc=0
step() { # name limit command...: the figure lines, then ok or FAIL
  local name=$1 limit=$2
  shift 2
  local log="$logs/$(echo "$name" | tr ' /=' '___').log" s=$SECONDS st=0
  timeout "$limit" "$@" >"$log" 2>&1 || st=$?
  grep -E '^gpu_(devpipe_)?(bench|check)|trainer-check: (times|train|infer|upload|layer|training|checkpoints|graph API|fp32-graph|fp32-auto)|^anchor: (profile|train|infer|upload|channels_last)|^probe:|^solver backend .cuda.: [0-9]+ rays' "$log" |
    grep -v 'backend=cpu' | sed "s/^ */gpu-tune $name: /" || true
  if [ "$st" = 0 ]; then
    echo "gpu-tune $name: ok ($((SECONDS - s)) s)"
  else
    echo "gpu-tune $name: FAIL (status $st, log $log)"
    tail -15 "$log" | sed "s/^/  /"
    rc=1
  fi
}

# --- builds: every variant at once ------------------------------------------
solver=${GPU_TUNE_SOLVER:-1}
vlist=()
[ "$solver" = 1 ] && IFS=';' read -ra vlist <<<"$variants"
pids=()
for v in "${vlist[@]}"; do
  label=${v%%=*} defs=${v#*=}
  GPU_NVCC_DEFS="$defs" GPU_CHECK_DIR="$pre-$label" \
    bash scripts/gpu-check.sh --build-only >"$pre-logs/build-$label.log" 2>&1 &
  pids+=($!)
done
# the trainer's binary beside them (its time is the trainer part's)
tpid=
if [ "${GPU_TUNE_TRAINER:-1}" = 1 ]; then
  bash scripts/gpu-check-trainer.sh --build-only >"$pre-logs/build-trainer.log" 2>&1 &
  tpid=$!
fi
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    echo "gpu-tune build ${vlist[$i]%%=*}: FAIL"
    tail -15 "$pre-logs/build-${vlist[$i]%%=*}.log" | sed "s/^/  /"
    exit 1
  fi
done
echo "gpu-tune: built ${#vlist[@]} variants ($((SECONDS - t0)) s)"
if command -v nvidia-smi >/dev/null 2>&1; then
  echo "gpu-tune gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
fi

# Nsight Systems: device time per kernel and per copy kind (where it is found)
nsys_step() { # what (devpipe | bench)
  local what=$1 cmd
  if [ $what = devpipe ]; then cmd=("$b/gpu_devpipe_check" --models 1 --ref 1 --reps 2 "${xdev[@]}")
  else cmd=("$b/gpu_bench" --cpu-batch 1 --reps 3 "${xbench[@]}"); fi
  if timeout 120 "$nsys" profile --trace=cuda --sample=none --cpuctxsw=none --force-overwrite=true \
       -o "$pre-logs/nsys-$what" "${cmd[@]}" >"$pre-logs/nsys-$what-run.log" 2>&1; then
    "$nsys" stats --report cuda_gpu_kern_sum --report cuda_gpu_mem_time_sum --format table \
      "$pre-logs/nsys-$what.nsys-rep" >"$logs/nsys-$what.txt" 2>&1 || true
    # the table rows: time %, total ns, instances, ..., name
    grep -E '^ *[0-9]+\.[0-9]+ +[0-9,]+ +[0-9,]+ ' "$logs/nsys-$what.txt" | head -24 |
      sed "s/^ */gpu-tune nsys $what: /" | cut -c1-240
  else
    echo "gpu-tune nsys $what: FAIL"
    tail -8 "$pre-logs/nsys-$what-run.log" | sed "s/^/  /"
  fi
}
nsys=$(command -v nsys || ls /opt/nvidia/nsight-systems/*/bin/nsys /usr/local/cuda/bin/nsys 2>/dev/null | head -1 || true)
[ "${GPU_TUNE_NSYS:-1}" = 0 ] && nsys= # (the emulator's dry run: no device to profile)

if [ "$solver" = 1 ]; then
  # --- the overlap, on the default build --------------------------------------
  b="$pre-${vlist[0]%%=*}"
  step "overlap" 120 "$b/gpu_devpipe_check" --models 1 "${xdev[@]}" # both ways (the default is off)
  for ck in 32 64; do
    step "overlap chunk=$ck" 90 env COEMU_DEVPIPE_OVERLAP=1 COEMU_DEVPIPE_CHUNK=$ck \
      "$b/gpu_devpipe_check" --models 1 --ref 1 "${xdev[@]}"
  done
  # the solver's kernel forms in the pipeline, two of them forced (the
  # steps above ran the default, auto: the fastest, timed once per shape),
  # parity included; every form's resident figures are gpu_bench's
  # `resident form=...` lines (variant base)
  for form in two fused; do
    step "form=$form pipeline" 90 env COEMU_CUDA_SOLVER_FORM=$form "$b/gpu_devpipe_check" \
      --models 1 --ref 1 "${xdev[@]}"
  done
  # where the pipeline's device time goes (before the variants: it says more)
  if [ -n "$nsys" ]; then nsys_step devpipe
  else echo "gpu-tune nsys: SKIP: no nsys on PATH, under /opt/nvidia/nsight-systems or /usr/local/cuda/bin"; fi

  # --- launch-bounds variants -------------------------------------------------
  for v in "${vlist[@]}"; do
    label=${v%%=*}
    step "variant $label solver" 60 "$pre-$label/gpu_bench" --cpu-batch 1 "${xbench[@]}"
    [ "$label" = "${vlist[0]%%=*}" ] && step "variant $label solver batch=256" 60 \
      "$pre-$label/gpu_bench" --batch 256 --cpu-batch 1 "${xbench[@]}"
    [ "$label" != "${vlist[0]%%=*}" ] && step "variant $label pipeline" 90 \
      "$pre-$label/gpu_devpipe_check" --models 1 "${xdev[@]}"
  done
fi

# --- the trainer: where a float32 step's time goes --------------------------------
# coemu's per-call device times (COEMU_CUDA_TIMES=1, fp32 then tf32, with the
# plans' timed cuDNN tables on stderr: COEMU_CUDNN_VERBOSE), PyTorch's kernels
# under its profiler, and the cuDNN engine probe (the legacy API's algorithms
# against the graph API's engines, strict float32, per convolution shape)
if [ "${GPU_TUNE_TRAINER:-1}" = 1 ]; then
  if wait "$tpid"; then
    tdir=${TRAINER_CHECK_DIR:-build-gpu-check-trainer}
    # first the parity (~15 s): every layer on the device against the
    # literal references, float32, tf32, bf16, and float32 through cuDNN's
    # graph API, which must now run on graph plans (its first device run
    # since the engine search counts its cap after the filters)
    step "trainer parity" 90 env OMP_NUM_THREADS="$(nproc)" "$tdir/trainer_gpu_check" --only-parity
    # then float32 with the convolutions on cuDNN's graph API, and each call
    # on the faster of the two APIs (COEMU_CUDNN_API=graph, auto), the batch
    # resident: whether the graph engines close the fp32 gap to PyTorch (the
    # question of issue 18 this run answers first: before the feeds)
    step "trainer fp32 apis" 150 env OMP_NUM_THREADS="$(nproc)" "$tdir/trainer_gpu_check" \
      --only-bench --precisions fp32-graph,fp32-auto --feeds resident --iters 5
    # first, what the rates measured: the batch from pageable host memory
    # (as every earlier figure), from page-locked memory beside the step
    # before, or already on the device (trainer/train_bench.h), and the
    # copies alone; coemu, then PyTorch (fp32, tf32, bf16; no curves)
    step "trainer feeds" 150 env OMP_NUM_THREADS="$(nproc)" "$tdir/trainer_gpu_check" \
      --only-bench --tf32 --precisions fp32,tf32,bf16 --iters 5
    if "${PYTHON:-python3}" -c 'import torch' >/dev/null 2>&1; then
      step "trainer torch feeds" 120 "${PYTHON:-python3}" tests/trainer/torch_anchor.py \
        --curve-steps 0 --iters 5
    fi
    step "trainer times" 150 env COEMU_CUDA_TIMES=1 OMP_NUM_THREADS="$(nproc)" \
      "$tdir/trainer_gpu_check" --only-bench --no-bench
    # the same tables with the float32 and TF32 convolutions on cuDNN's
    # graph API (COEMU_CUDNN_API=graph: the engines PyTorch's filter keeps)
    step "trainer times graph" 150 env COEMU_CUDA_TIMES=1 COEMU_CUDNN_API=graph \
      OMP_NUM_THREADS="$(nproc)" "$tdir/trainer_gpu_check" --only-bench --no-bench
    if "${PYTHON:-python3}" -c 'import torch' >/dev/null 2>&1; then
      step "trainer torch profile" 120 "${PYTHON:-python3}" tests/trainer/torch_anchor.py --profile fp32,tf32
      # PyTorch with NDHWC convolutions (channels-last weights and inputs):
      # whether the layout is the way to 5,000 inference samples/s
      step "trainer torch channels-last" 120 "${PYTHON:-python3}" tests/trainer/torch_anchor.py \
        --channels-last --curve-steps 0 --iters 5 --feeds resident
    else
      echo "gpu-tune trainer torch profile: SKIP: no torch"
    fi
    # (its deadline 10 s before the time limit: the totals still print)
    step "cudnn probe" 130 "$tdir/cudnn_engine_probe" --quick --deadline 120
  else
    echo "gpu-tune trainer: FAIL (build)"
    tail -15 "$pre-logs/build-trainer.log" | sed "s/^/  /"
    rc=1
  fi
fi
# --- Nsight Systems over the solver's bench -------------------------------------
[ "$solver" = 1 ] && [ -n "$nsys" ] && nsys_step bench

echo "gpu-tune: $([ $rc = 0 ] && echo ok || echo FAILED) ($((SECONDS - t0)) s)"
exit $rc
