/* cudnn_engine_probe.c - cuDNN's legacy convolution API against its backend
 * (graph) API, on COEmuNet's convolution shapes, float32.
 *
 * The question it answers: is the CUDA trainer's strict-float32 training slow
 * (0.24x PyTorch on an H200) because the legacy API's FMA-math algorithms
 * (cudnnFindConvolution*Algorithm with CUDNN_FMA_MATH, what
 * trainer/cuda/backend_cuda.cu's plan_create / pick_from use) are slower than
 * the engines the backend API offers (what PyTorch uses through
 * cudnn-frontend: heuristics, every engine config without the TENSOR_CORE or
 * DOWN_CONVERT_INPUTS numerical note when TF32 is off, nondeterministic ones
 * kept, the fastest one timed)?
 *
 * For every shape of the table below and each of forward, backward data and
 * backward filter (NCDHW float32 tensors; NCHW for 2-D shapes):
 *   legacy_fma       cudnnFind*Algorithm with CUDNN_FMA_MATH on the
 *                    convolution descriptor; the fastest result whose
 *                    mathType is CUDNN_FMA_MATH within the workspace limit,
 *                    timed again here (1 warm-up + 3 timed runs, cudaEvents,
 *                    the fastest), with cuDNN's own find time beside it
 *   legacy_fma_det   the same, deterministic results only
 *   legacy_trainer   what the trainer runs: the deterministic FMA choice
 *                    within --trainer-ws-mib (512, the trainer's default
 *                    COEMU_CUDNN_WORKSPACE_MB), the backward calls timed with
 *                    beta 1 (the trainer accumulates gradients)
 *   legacy_any       for reference: cudnnFind with CUDNN_TENSOR_OP_MATH, the
 *                    fastest result of any math type (TF32 allowed)
 *   backend_fma      one operation graph with a single convolution operation;
 *                    engine configs from CUDNN_HEUR_MODE_A then
 *                    CUDNN_HEUR_MODE_FALLBACK; those without the TENSOR_CORE
 *                    and DOWN_CONVERT_INPUTS notes finalized into plans
 *                    (failures skipped), executed (1 warm-up + 3 timed), the
 *                    fastest kept
 *   backend_fma_det  the same, without the NONDETERMINISTIC note
 *   backend_tensor   for reference: the fastest config with the TENSOR_CORE
 *                    note (TF32)
 * one line each:
 *   probe: conv3d 32x8x16x16x16->8 k3 s1 p1 bwd_filter legacy_fma algo 1 ms 0.123 ws_MiB 0.0 ...
 *   probe: conv3d 32x8x16x16x16->8 k3 s1 p1 bwd_filter backend_fma engine 27 ms 0.045 ws_MiB 1.0 nondet 0 ...
 * then sums per operation over the shapes ("probe: total fwd legacy_fma X ms
 * backend_fma Y ms ..."), and the same weighted by how often a training step
 * of the model calls each shape ("probe: per-step ..."; backward data only
 * where the trainer computes it).
 *
 * Every CUDA / cuDNN call is checked; a failure prints the call, cuDNN's
 * status string and the shape, and the probe goes on with the next method or
 * shape. At most --max-configs engine configs are tried per operation and
 * shape, and after --deadline seconds the rest is skipped (the totals then
 * say how many shapes they cover). Exit status 0 if anything was timed, 1 if
 * nothing could be (no device, ...), 2 for a usage error.
 *
 * Options: --batch N (32), --shape-filter SUBSTR (shapes whose label or
 * layer names contain SUBSTR), --quick (1 warm-up + 1 timed run),
 * --ops fwd,bwd_data,bwd_filter, --max-configs N (32), --ws-limit-mib N
 * (4096), --trainer-ws-mib N (512), --deadline S (140), --no-tensor (skip the
 * TF32 references), --no-rtc (skip runtime-compiled engines), --with-1ch
 * (also the 2-D decoder of the single-channel model), --list (the shapes,
 * no device needed), --self-test (build every descriptor and finalize the
 * backend operation descriptors without a device, then the trainer's engine
 * search for an H200 described to cuDNN, every plan finalized for it; meson
 * test trainer_cudnn_deviceless), --verbose (every engine
 * config tried).
 *
 * The graph API's descriptors, heuristics queries, engine notes, plans and
 * variant packs come from trainer/cuda/cudnn_graph.h (the module the
 * trainer's COEMU_CUDNN_API=graph runs on; compiled in beside this file);
 * the timing, the filters and the report are the probe's.
 *
 * Built by scripts/gpu-check-trainer.sh (beside trainer_gpu_check, on the
 * cuDNN it finds); run by scripts/gpu-tune.sh.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* dl_iterate_phdr */
#endif
#include <cuda_runtime_api.h>
#include <cudnn.h>

#include "trainer/cuda/cudnn_graph.h"

#include <link.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- the shapes ------------------------------------------------------------ */

/* Every distinct convolution of the 7-channel COEmuNet (coemunet_default(7):
 * grid 64, stem 4, encoder 8/16/32, decoder 64; the default reference
 * shortcut variant), as trainer/coemunet.c builds it (cbr / res_block /
 * encoder / build_graph) and ../shared/docs/coemunet.md ("Architecture")
 * describes it. Per sample; the batch is --batch. `uses`: calls of the shape
 * in one forward pass (the three encoder branches v_z, T, n_CO have the same
 * shapes; the reference variant's identity blocks build a 1x1x1 shortcut that
 * is never called). need_dx 0: the trainer computes no input gradient (the
 * stem sees the network input).
 *   encoder, each branch on a 1x64^3 slice:
 *     stem CBR(1->4, k3, s1, pad 0) -> 4x62^3, MaxPool3d(2) -> 4x31^3
 *     stage1 block(4->8, s2): CBR0 k3 s2 p1 -> 8x16^3, CBR1 k3 'same',
 *            shortcut CBR 1x1x1 on x2; + 2 identity blocks (2 x CBR k3 each)
 *     stage2 block(8->16, s2) -> 16x8^3, the same pattern
 *     stage3 block(16->32, s2) -> 32x4^3, the same pattern
 *   decoder3d, input (64, 7, 8, 8): 3 stages of 3 x Conv3d (1,3,3) pad
 *     (0,1,1) (c -> c/2, then c/2 -> c/2 twice) and an upsample x(1,2,2);
 *     final Conv3d(8 -> 1, (1,3,3), pad (0,1,1)) at 7x64x64
 * With --with-1ch also the single-channel model's 2-D decoder (Conv2d k3 p1,
 * 64->32 at 8x8, 32->16 at 16x16, 16->8 at 32x32, 8->1 at 64x64; the trainer
 * runs depth-1 convolutions as 2-D ones, backend_cuda.cu is_2d); its encoder
 * is the one above. */
typedef struct {
  const char *where; /* the layers (trainer/coemunet.c names) */
  int nd;            /* spatial dimensions: 3 (NCDHW) or 2 (NCHW, d = 1) */
  int cin, d, h, w;  /* input per sample */
  int cout;
  int k[3], s[3], p[3]; /* depth, height, width */
  int uses;             /* calls per forward pass of the model */
  int need_dx;
  int single; /* 1: single-channel model only (--with-1ch) */
} shape_t;

#define K3 {3, 3, 3}
#define K1 {1, 1, 1}
#define K133 {1, 3, 3}
#define S1 {1, 1, 1}
#define S2 {2, 2, 2}
#define P0 {0, 0, 0}
#define P1 {1, 1, 1}
#define P011 {0, 1, 1}
static const shape_t SHAPES[] = {
    {"encoder*.layers.0 (stem)", 3, 1, 64, 64, 64, 4, K3, S1, P0, 3, 0, 0},
    {"encoder*.layers.2.CBR0 (stage1 strided)", 3, 4, 31, 31, 31, 8, K3, S2, P1, 3, 1, 0},
    {"encoder*.layers.2.CBR1, layers.3-4.CBR0/CBR1 (stage1 k3)", 3, 8, 16, 16, 16, 8, K3, S1, P1,
     15, 1, 0},
    {"encoder*.layers.2.short_CBR0 (stage1 1x1x1)", 3, 8, 16, 16, 16, 8, K1, S1, P0, 3, 1, 0},
    {"encoder*.layers.5.CBR0 (stage2 strided)", 3, 8, 16, 16, 16, 16, K3, S2, P1, 3, 1, 0},
    {"encoder*.layers.5.CBR1, layers.6-7.CBR0/CBR1 (stage2 k3)", 3, 16, 8, 8, 8, 16, K3, S1, P1,
     15, 1, 0},
    {"encoder*.layers.5.short_CBR0 (stage2 1x1x1)", 3, 16, 8, 8, 8, 16, K1, S1, P0, 3, 1, 0},
    {"encoder*.layers.8.CBR0 (stage3 strided)", 3, 16, 8, 8, 8, 32, K3, S2, P1, 3, 1, 0},
    {"encoder*.layers.8.CBR1, layers.9-10.CBR0/CBR1 (stage3 k3)", 3, 32, 4, 4, 4, 32, K3, S1, P1,
     15, 1, 0},
    {"encoder*.layers.8.short_CBR0 (stage3 1x1x1)", 3, 32, 4, 4, 4, 32, K1, S1, P0, 3, 1, 0},
    {"decoder3d.layers.0 (stage1 64->32)", 3, 64, 7, 8, 8, 32, K133, S1, P011, 1, 1, 0},
    {"decoder3d.layers.3, .6 (stage1 32->32)", 3, 32, 7, 8, 8, 32, K133, S1, P011, 2, 1, 0},
    {"decoder3d.layers.10 (stage2 32->16)", 3, 32, 7, 16, 16, 16, K133, S1, P011, 1, 1, 0},
    {"decoder3d.layers.13, .16 (stage2 16->16)", 3, 16, 7, 16, 16, 16, K133, S1, P011, 2, 1, 0},
    {"decoder3d.layers.20 (stage3 16->8)", 3, 16, 7, 32, 32, 8, K133, S1, P011, 1, 1, 0},
    {"decoder3d.layers.23, .26 (stage3 8->8)", 3, 8, 7, 32, 32, 8, K133, S1, P011, 2, 1, 0},
    {"decoder3d.layers.30 (final 8->1)", 3, 8, 7, 64, 64, 1, K133, S1, P011, 1, 1, 0},
    /* single-channel model (nfreq 1), 2-D decoder: --with-1ch */
    {"decoder.layers.0 (1ch stage1 64->32)", 2, 64, 1, 8, 8, 32, K133, S1, P011, 1, 1, 1},
    {"decoder.layers.4 (1ch stage2 32->16)", 2, 32, 1, 16, 16, 16, K133, S1, P011, 1, 1, 1},
    {"decoder.layers.8 (1ch stage3 16->8)", 2, 16, 1, 32, 32, 8, K133, S1, P011, 1, 1, 1},
    {"decoder.layers.12 (1ch final 8->1)", 2, 8, 1, 64, 64, 1, K133, S1, P011, 1, 1, 1},
};
#define NSHAPES ((int)(sizeof SHAPES / sizeof SHAPES[0]))

static int out_dim(int i, int k, int s, int p) { return (i + 2 * p - k) / s + 1; }

/* ---- options, state ------------------------------------------------------- */

enum { OP_FWD, OP_BWD_DATA, OP_BWD_FILTER, NOPS };
static const char *const OP_NAME[NOPS] = {"fwd", "bwd_data", "bwd_filter"};

enum { M_LFMA, M_LFMA_DET, M_LTRAINER, M_LANY, M_BFMA, M_BFMA_DET, M_BTC, NMETHODS };
static const char *const M_NAME[NMETHODS] = {"legacy_fma",     "legacy_fma_det", "legacy_trainer",
                                             "legacy_any",     "backend_fma",    "backend_fma_det",
                                             "backend_tensor"};

static struct {
  int batch, quick, max_configs, no_tensor, no_rtc, with_1ch, verbose, list, self_test;
  int ops[NOPS];
  const char *filter;
  double ws_limit, trainer_ws, deadline; /* bytes, bytes, seconds */
} O = {32, 0, 32, 0, 0, 0, 0, 0, 0, {1, 1, 1}, NULL, 4096.0 * 1048576.0,
       CG_TRAINER_WORKSPACE_MIB * 1048576.0, 140.0};

static cudnnHandle_t H;
static char LABEL[192];  /* the shape (and operation) for error messages */
static double T0;        /* start, seconds */
static int BROKEN;       /* a sticky CUDA error: nothing more can run */
static int DEADLINE_HIT;
static int NTIMED;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
static int past_deadline(void) {
  if (!DEADLINE_HIT && now_s() - T0 > O.deadline) {
    DEADLINE_HIT = 1;
    printf("probe: deadline of %.0f s reached: the rest is skipped\n", O.deadline);
    fflush(stdout);
  }
  return DEADLINE_HIT;
}

static void dnn_fail(const char *call, cudnnStatus_t s) {
  char msg[512] = "";
  cudnnGetLastErrorString(msg, sizeof msg);
  printf("probe: error: %s: %s (%d) [%s]%s%s\n", call, cudnnGetErrorString(s), (int)s, LABEL,
         msg[0] ? ": " : "", msg);
  fflush(stdout);
}
static void cuda_fail(const char *call, cudaError_t e) {
  printf("probe: error: %s: %s (%s) [%s]\n", call, cudaGetErrorString(e), cudaGetErrorName(e),
         LABEL);
  fflush(stdout);
  /* errors that leave the context unusable */
  if (e == cudaErrorIllegalAddress || e == cudaErrorLaunchFailure ||
      e == cudaErrorIllegalInstruction || e == cudaErrorMisalignedAddress ||
      e == cudaErrorHardwareStackError || e == cudaErrorAssert || e == cudaErrorECCUncorrectable ||
      e == cudaErrorLaunchTimeout || e == cudaErrorInvalidPc)
    BROKEN = 1;
}

/* checked calls: on failure print and goto fail (the caller's cleanup) */
#define DNN(call)                                                                            \
  do {                                                                                       \
    cudnnStatus_t s_ = (call);                                                               \
    if (s_ != CUDNN_STATUS_SUCCESS) {                                                        \
      dnn_fail(#call, s_);                                                                   \
      goto fail;                                                                             \
    }                                                                                        \
  } while (0)
/* ... quiet unless --verbose: failures that are part of the search (an engine
   config that does not finalize or run for this shape) */
#define DNNQ(call, counter)                                                                  \
  do {                                                                                       \
    cudnnStatus_t s_ = (call);                                                               \
    if (s_ != CUDNN_STATUS_SUCCESS) {                                                        \
      if (O.verbose) dnn_fail(#call, s_);                                                    \
      (counter)++;                                                                           \
      goto fail;                                                                             \
    }                                                                                        \
  } while (0)
#define CU(call)                                                                             \
  do {                                                                                       \
    cudaError_t e_ = (call);                                                                 \
    if (e_ != cudaSuccess) {                                                                 \
      cuda_fail(#call, e_);                                                                  \
      goto fail;                                                                             \
    }                                                                                        \
  } while (0)

/* ---- shapes: labels and sizes --------------------------------------------- */

typedef struct {
  const shape_t *s;
  int n;
  int od, oh, ow;
  int64_t xdim[5], wdim[5], ydim[5]; /* NC[D]HW; nd + 2 used */
  int rank;                          /* 5 or 4 */
  size_t nx, nw, ny;                 /* elements */
  char label[128];
} geom_t;

static void triple(char *out, size_t n, const char *tag, const int *v, int nd) {
  if (nd == 2) {
    if (v[1] == v[2]) snprintf(out, n, " %s%d", tag, v[1]);
    else snprintf(out, n, " %s%dx%d", tag, v[1], v[2]);
  } else if (v[0] == v[1] && v[1] == v[2]) {
    snprintf(out, n, " %s%d", tag, v[0]);
  } else {
    snprintf(out, n, " %s%dx%dx%d", tag, v[0], v[1], v[2]);
  }
}

static void geom_of(const shape_t *s, int batch, geom_t *g) {
  memset(g, 0, sizeof *g);
  g->s = s;
  g->n = batch;
  g->od = out_dim(s->d, s->k[0], s->s[0], s->p[0]);
  g->oh = out_dim(s->h, s->k[1], s->s[1], s->p[1]);
  g->ow = out_dim(s->w, s->k[2], s->s[2], s->p[2]);
  if (s->nd == 3) {
    g->rank = 5;
    int64_t x[5] = {batch, s->cin, s->d, s->h, s->w}, w[5] = {s->cout, s->cin, s->k[0], s->k[1], s->k[2]},
            y[5] = {batch, s->cout, g->od, g->oh, g->ow};
    memcpy(g->xdim, x, sizeof x);
    memcpy(g->wdim, w, sizeof w);
    memcpy(g->ydim, y, sizeof y);
  } else {
    g->rank = 4;
    int64_t x[4] = {batch, s->cin, s->h, s->w}, w[4] = {s->cout, s->cin, s->k[1], s->k[2]},
            y[4] = {batch, s->cout, g->oh, g->ow};
    memcpy(g->xdim, x, sizeof x);
    memcpy(g->wdim, w, sizeof w);
    memcpy(g->ydim, y, sizeof y);
  }
  g->nx = g->nw = g->ny = 1;
  for (int i = 0; i < g->rank; i++) {
    g->nx *= (size_t)g->xdim[i];
    g->nw *= (size_t)g->wdim[i];
    g->ny *= (size_t)g->ydim[i];
  }
  char k[32], st[32], p[32];
  triple(k, sizeof k, "k", s->k, s->nd);
  triple(st, sizeof st, "s", s->s, s->nd);
  triple(p, sizeof p, "p", s->p, s->nd);
  if (s->nd == 3)
    snprintf(g->label, sizeof g->label, "conv3d %dx%dx%dx%dx%d->%d%s%s%s", batch, s->cin, s->d, s->h,
             s->w, s->cout, k, st, p);
  else
    snprintf(g->label, sizeof g->label, "conv2d %dx%dx%dx%d->%d%s%s%s", batch, s->cin, s->h, s->w,
             s->cout, k, st, p);
}

static int selected(const geom_t *g) {
  if (g->s->single && !O.with_1ch) return 0;
  if (!O.filter) return 1;
  return strstr(g->label, O.filter) || strstr(g->s->where, O.filter);
}

/* ---- timing ---------------------------------------------------------------- */

typedef cudnnStatus_t (*run_fn)(void *ctx);

/* 1 warm-up, then reps timed runs (cg_time_runs: cudaEvents on the default
   stream, which the handle uses): the fastest in ms; -1 on failure (printed). */
static double time_runs(run_fn fn, void *ctx, const char *what, int quiet) {
  cudnnStatus_t failed;
  const double ms = cg_time_runs(fn, ctx, 0, O.quick ? 1 : 3, &failed, what);
  if (ms == -1 && (!quiet || O.verbose)) dnn_fail(what, failed);
  if (ms == -2) fprintf(stderr, "probe: %s\n", cg_error());
  return ms < 0 ? -1 : ms;
}

/* ---- device buffers -------------------------------------------------------- */

typedef struct {
  float *x, *w, *y, *dx, *dw; /* y doubles as dy */
} bufs_t;

static void fill(float *h, size_t n, uint32_t seed) {
  for (size_t i = 0; i < n; i++) {
    seed = seed * 1664525u + 1013904223u;
    h[i] = (float)((seed >> 8) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
  }
}

static void bufs_free(bufs_t *b) {
  cudaFree(b->x);
  cudaFree(b->w);
  cudaFree(b->y);
  cudaFree(b->dx);
  cudaFree(b->dw);
  memset(b, 0, sizeof *b);
}

static int bufs_alloc(const geom_t *g, bufs_t *b) {
  memset(b, 0, sizeof *b);
  size_t m = g->nx > g->ny ? g->nx : g->ny;
  if (g->nw > m) m = g->nw;
  float *h = (float *)malloc(m * sizeof(float));
  if (!h) {
    printf("probe: error: out of host memory [%s]\n", LABEL);
    return -1;
  }
  CU(cudaMalloc((void **)&b->x, g->nx * sizeof(float)));
  CU(cudaMalloc((void **)&b->dx, g->nx * sizeof(float)));
  CU(cudaMalloc((void **)&b->w, g->nw * sizeof(float)));
  CU(cudaMalloc((void **)&b->dw, g->nw * sizeof(float)));
  CU(cudaMalloc((void **)&b->y, g->ny * sizeof(float)));
  fill(h, g->nx, 1u);
  CU(cudaMemcpy(b->x, h, g->nx * sizeof(float), cudaMemcpyHostToDevice));
  CU(cudaMemcpy(b->dx, h, g->nx * sizeof(float), cudaMemcpyHostToDevice));
  fill(h, g->nw, 2u);
  for (size_t i = 0; i < g->nw; i++) h[i] *= 0.1f;
  CU(cudaMemcpy(b->w, h, g->nw * sizeof(float), cudaMemcpyHostToDevice));
  CU(cudaMemcpy(b->dw, h, g->nw * sizeof(float), cudaMemcpyHostToDevice));
  fill(h, g->ny, 3u);
  CU(cudaMemcpy(b->y, h, g->ny * sizeof(float), cudaMemcpyHostToDevice));
  free(h);
  return 0;
fail:
  free(h);
  bufs_free(b);
  return -1;
}

/* ---- legacy API -------------------------------------------------------------- */

typedef struct {
  cudnnTensorDescriptor_t x, y;
  cudnnFilterDescriptor_t w;
  cudnnConvolutionDescriptor_t c;
} legacy_desc;

static void legacy_destroy(legacy_desc *d) {
  if (d->x) cudnnDestroyTensorDescriptor(d->x);
  if (d->y) cudnnDestroyTensorDescriptor(d->y);
  if (d->w) cudnnDestroyFilterDescriptor(d->w);
  if (d->c) cudnnDestroyConvolutionDescriptor(d->c);
  memset(d, 0, sizeof *d);
}

/* the trainer's descriptors (backend_cuda.cu set_tensor / plan_create) */
static int legacy_create(const geom_t *g, legacy_desc *d) {
  const shape_t *s = g->s;
  memset(d, 0, sizeof *d);
  DNN(cudnnCreateTensorDescriptor(&d->x));
  DNN(cudnnCreateTensorDescriptor(&d->y));
  DNN(cudnnCreateFilterDescriptor(&d->w));
  DNN(cudnnCreateConvolutionDescriptor(&d->c));
  if (s->nd == 2) {
    DNN(cudnnSetTensor4dDescriptor(d->x, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, g->n, s->cin, s->h, s->w));
    DNN(cudnnSetTensor4dDescriptor(d->y, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, g->n, s->cout, g->oh, g->ow));
    DNN(cudnnSetFilter4dDescriptor(d->w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, s->cout, s->cin, s->k[1], s->k[2]));
    DNN(cudnnSetConvolution2dDescriptor(d->c, s->p[1], s->p[2], s->s[1], s->s[2], 1, 1,
                                        CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
  } else {
    int xd[5] = {g->n, s->cin, s->d, s->h, s->w};
    int xs[5] = {s->cin * s->d * s->h * s->w, s->d * s->h * s->w, s->h * s->w, s->w, 1};
    int yd[5] = {g->n, s->cout, g->od, g->oh, g->ow};
    int ys[5] = {s->cout * g->od * g->oh * g->ow, g->od * g->oh * g->ow, g->oh * g->ow, g->ow, 1};
    int fd[5] = {s->cout, s->cin, s->k[0], s->k[1], s->k[2]};
    int pad[3] = {s->p[0], s->p[1], s->p[2]}, str[3] = {s->s[0], s->s[1], s->s[2]}, dil[3] = {1, 1, 1};
    DNN(cudnnSetTensorNdDescriptor(d->x, CUDNN_DATA_FLOAT, 5, xd, xs));
    DNN(cudnnSetTensorNdDescriptor(d->y, CUDNN_DATA_FLOAT, 5, yd, ys));
    DNN(cudnnSetFilterNdDescriptor(d->w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, 5, fd));
    DNN(cudnnSetConvolutionNdDescriptor(d->c, 3, pad, str, dil, CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
  }
  /* the output size cuDNN computes must be the table's */
  int od[5] = {0};
  DNN(cudnnGetConvolutionNdForwardOutputDim(d->c, d->x, d->w, g->rank, od));
  for (int i = 0; i < g->rank; i++)
    if (od[i] != (int)g->ydim[i]) {
      printf("probe: error: cuDNN's output dimension %d is %d, the table's %lld [%s]\n", i, od[i],
             (long long)g->ydim[i], LABEL);
      goto fail;
    }
  return 0;
fail:
  legacy_destroy(d);
  return -1;
}

typedef struct { /* one cudnnFind result, any of the three operations */
  int algo;
  cudnnStatus_t status;
  float time;
  size_t memory;
  cudnnDeterminism_t det;
  cudnnMathType_t math;
} perf_t;

static int legacy_find(const geom_t *g, legacy_desc *d, int op, cudnnMathType_t math, perf_t *out,
                       int cap) {
  int got = 0;
  (void)g;
  DNN(cudnnSetConvolutionMathType(d->c, math));
  if (op == OP_FWD) {
    cudnnConvolutionFwdAlgoPerf_t r[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
    int n = cap < CUDNN_CONVOLUTION_FWD_ALGO_COUNT ? cap : CUDNN_CONVOLUTION_FWD_ALGO_COUNT;
    DNN(cudnnFindConvolutionForwardAlgorithm(H, d->x, d->w, d->c, d->y, n, &got, r));
    for (int i = 0; i < got; i++)
      out[i] = (perf_t){(int)r[i].algo, r[i].status, r[i].time, r[i].memory, r[i].determinism, r[i].mathType};
  } else if (op == OP_BWD_DATA) {
    cudnnConvolutionBwdDataAlgoPerf_t r[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
    int n = cap < CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT ? cap : CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT;
    DNN(cudnnFindConvolutionBackwardDataAlgorithm(H, d->w, d->y, d->c, d->x, n, &got, r));
    for (int i = 0; i < got; i++)
      out[i] = (perf_t){(int)r[i].algo, r[i].status, r[i].time, r[i].memory, r[i].determinism, r[i].mathType};
  } else {
    cudnnConvolutionBwdFilterAlgoPerf_t r[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
    int n = cap < CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT ? cap : CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT;
    DNN(cudnnFindConvolutionBackwardFilterAlgorithm(H, d->x, d->y, d->c, d->w, n, &got, r));
    for (int i = 0; i < got; i++)
      out[i] = (perf_t){(int)r[i].algo, r[i].status, r[i].time, r[i].memory, r[i].determinism, r[i].mathType};
  }
  return got;
fail:
  return -1;
}

typedef struct {
  legacy_desc *d;
  bufs_t *b;
  int op, algo;
  void *ws;
  size_t ws_bytes;
  float beta;
} legacy_run_ctx;

static cudnnStatus_t legacy_run(void *p) {
  legacy_run_ctx *c = (legacy_run_ctx *)p;
  const float one = 1.0f;
  if (c->op == OP_FWD)
    return cudnnConvolutionForward(H, &one, c->d->x, c->b->x, c->d->w, c->b->w, c->d->c,
                                   (cudnnConvolutionFwdAlgo_t)c->algo, c->ws, c->ws_bytes, &c->beta,
                                   c->d->y, c->b->y);
  if (c->op == OP_BWD_DATA)
    return cudnnConvolutionBackwardData(H, &one, c->d->w, c->b->w, c->d->y, c->b->y, c->d->c,
                                        (cudnnConvolutionBwdDataAlgo_t)c->algo, c->ws, c->ws_bytes,
                                        &c->beta, c->d->x, c->b->dx);
  return cudnnConvolutionBackwardFilter(H, &one, c->d->x, c->b->x, c->d->y, c->b->y, c->d->c,
                                        (cudnnConvolutionBwdFilterAlgo_t)c->algo, c->ws, c->ws_bytes,
                                        &c->beta, c->d->w, c->b->dw);
}

/* time algorithm r with math type `math` (the result's own, or FMA where the
   trainer runs every float32 call with FMA math: backend_cuda.cu run_math) */
static double legacy_time(legacy_desc *d, bufs_t *b, int op, const perf_t *r, cudnnMathType_t math,
                          float beta) {
  void *ws = NULL;
  double ms = -1;
  DNN(cudnnSetConvolutionMathType(d->c, math));
  if (r->memory) CU(cudaMalloc(&ws, r->memory));
  legacy_run_ctx c = {d, b, op, r->algo, ws, r->memory, beta};
  ms = time_runs(legacy_run, &c, op == OP_FWD        ? "cudnnConvolutionForward"
                                 : op == OP_BWD_DATA ? "cudnnConvolutionBackwardData"
                                                     : "cudnnConvolutionBackwardFilter",
                 0);
fail:
  cudaFree(ws);
  return ms;
}


/* the index of the fastest acceptable result (results come sorted by time) */
static int legacy_pick(const perf_t *r, int n, double limit, int fma_only, int det_only) {
  for (int i = 0; i < n; i++) {
    if (r[i].status != CUDNN_STATUS_SUCCESS || (double)r[i].memory > limit) continue;
    if (fma_only && r[i].math != CUDNN_FMA_MATH) continue;
    if (det_only && r[i].det != CUDNN_DETERMINISTIC) continue;
    return i;
  }
  return -1;
}

/* the trainer's choice (backend_cuda.cu pick_from, float32): deterministic
   FMA, then any FMA, then DEFAULT math, within its workspace limit */
static int trainer_pick(const perf_t *r, int n) {
  for (int pass = 0; pass < 3; pass++)
    for (int i = 0; i < n; i++) {
      if (r[i].status != CUDNN_STATUS_SUCCESS || (double)r[i].memory > O.trainer_ws) continue;
      if (r[i].math != CUDNN_FMA_MATH && (pass < 2 || r[i].math != CUDNN_DEFAULT_MATH)) continue;
      if (pass == 0 && r[i].det != CUDNN_DETERMINISTIC) continue;
      return i;
    }
  return -1;
}

typedef struct {
  double ms[NMETHODS]; /* -1: not timed */
} op_result;

static void legacy_line(const geom_t *g, int op, const char *method, const perf_t *r, double ms,
                        const char *extra) {
  if (!r || ms < 0) {
    printf("probe: %s %s %s none%s\n", g->label, OP_NAME[op], method, extra ? extra : "");
  } else {
    printf("probe: %s %s %s algo %d ms %.4f ws_MiB %.1f nondet %d math %s find_ms %.4f%s\n", g->label,
           OP_NAME[op], method, r->algo, ms, (double)r->memory / 1048576.0,
           r->det != CUDNN_DETERMINISTIC, cg_math_name(r->math), (double)r->time, extra ? extra : "");
  }
  fflush(stdout);
}

static void legacy_op(const geom_t *g, legacy_desc *d, bufs_t *b, int op, op_result *res) {
  perf_t r[64];
  char extra[160];
  int n = legacy_find(g, d, op, CUDNN_FMA_MATH, r, 64);
  if (n < 0) {
    legacy_line(g, op, M_NAME[M_LFMA], NULL, -1, " (cudnnFind failed)");
  } else {
    int nfma = 0;
    for (int i = 0; i < n; i++) nfma += r[i].status == CUDNN_STATUS_SUCCESS && r[i].math == CUDNN_FMA_MATH;
    const int i = legacy_pick(r, n, O.ws_limit, 1, 0), j = legacy_pick(r, n, O.ws_limit, 1, 1),
              t = trainer_pick(r, n);
    double mi = i >= 0 ? legacy_time(d, b, op, &r[i], r[i].math, 0.0f) : -1;
    double mj = j < 0 ? -1 : j == i ? mi : legacy_time(d, b, op, &r[j], r[j].math, 0.0f);
    /* the trainer accumulates its gradients: beta 1 on the backward calls */
    const float tbeta = op == OP_FWD ? 0.0f : 1.0f;
    double mt = t < 0                                                   ? -1
                : (t == i && tbeta == 0.0f && r[t].math == CUDNN_FMA_MATH) ? mi
                : legacy_time(d, b, op, &r[t], CUDNN_FMA_MATH, tbeta);
    res->ms[M_LFMA] = mi;
    res->ms[M_LFMA_DET] = mj;
    res->ms[M_LTRAINER] = mt;
    snprintf(extra, sizeof extra, " (%d fma results of %d)", nfma, n);
    legacy_line(g, op, M_NAME[M_LFMA], i >= 0 ? &r[i] : NULL, mi, extra);
    legacy_line(g, op, M_NAME[M_LFMA_DET], j >= 0 ? &r[j] : NULL, mj, NULL);
    snprintf(extra, sizeof extra, " beta %g ws_limit_MiB %.0f", (double)tbeta, O.trainer_ws / 1048576.0);
    legacy_line(g, op, M_NAME[M_LTRAINER], t >= 0 ? &r[t] : NULL, mt, extra);
  }
  if (BROKEN || O.no_tensor) return;
  n = legacy_find(g, d, op, CUDNN_TENSOR_OP_MATH, r, 64);
  if (n < 0) {
    legacy_line(g, op, M_NAME[M_LANY], NULL, -1, " (cudnnFind failed)");
    return;
  }
  const int a = legacy_pick(r, n, O.ws_limit, 0, 0);
  double ma = a >= 0 ? legacy_time(d, b, op, &r[a], r[a].math, 0.0f) : -1;
  res->ms[M_LANY] = ma;
  legacy_line(g, op, M_NAME[M_LANY], a >= 0 ? &r[a] : NULL, ma, NULL);
}

/* ---- backend (graph) API ----------------------------------------------------- */

/* The descriptors (tensors, convolution, operation, operation graph),
   heuristics queries, engine notes, plans and variant packs come from
   trainer/cuda/cudnn_graph.h, the module the trainer's CUDA backend runs its
   COEMU_CUDNN_API=graph convolutions on; the timing and the statistics
   below are the probe's own. */

typedef cudnnBackendDescriptor_t bdesc;

static void bfree(bdesc *d) {
  if (*d) cudnnBackendDestroyDescriptor(*d);
  *d = NULL;
}

/* a module failure: its message (call, status, shape, cuDNN's last error) */
static void cg_fail(void) {
  printf("probe: error: %s\n", cg_error());
  fflush(stdout);
}

static cg_conv cg_conv_of_shape(const geom_t *gm) {
  const shape_t *s = gm->s;
  cg_conv c;
  memset(&c, 0, sizeof c);
  c.nd = s->nd;
  c.n = gm->n, c.cin = s->cin, c.cout = s->cout;
  c.in[0] = s->d, c.in[1] = s->h, c.in[2] = s->w;
  for (int i = 0; i < 3; i++) c.k[i] = s->k[i], c.stride[i] = s->s[i], c.pad[i] = s->p[i];
  c.io = CUDNN_DATA_FLOAT;
  return c;
}

/* the operation graph of one convolution operation: forward (x, w -> y),
   backward data (w, dy -> dx), backward filter (x, dy -> dw); alpha 1, beta 0;
   its sizes checked against the table's; NULL on failure (printed) */
static cg_graph *be_graph_create(const geom_t *gm, int op) {
  const cg_conv c = cg_conv_of_shape(gm);
  cg_graph *g = NULL;
  if (cg_graph_create(&g, &c, (cg_op)op, 1.0f, 0.0f, H) < 0) {
    cg_fail();
    return NULL;
  }
  if (cg_graph_elems(g, CG_UID_X) != gm->nx || cg_graph_elems(g, CG_UID_W) != gm->nw ||
      cg_graph_elems(g, CG_UID_Y) != gm->ny) {
    printf("probe: error: the graph's tensors have %zu, %zu, %zu elements, the table's %zu, %zu, "
           "%zu [%s]\n", cg_graph_elems(g, CG_UID_X), cg_graph_elems(g, CG_UID_W),
           cg_graph_elems(g, CG_UID_Y), gm->nx, gm->nw, gm->ny, LABEL);
    cg_graph_destroy(g);
    return NULL;
  }
  return g;
}

typedef struct {
  int ok;
  double ms, ws_mib;
  int64_t engine;
  int nondet, rtc, cfg;
  const char *heur;
} be_best;

typedef struct {
  be_best fma, fma_det, tc;
  int nconfigs, tried, ran, tc_seen, downconv, rtc_skipped, fin_fail, ws_over, exec_fail, info_fail;
  int heur_a, heur_fb;
  double finalize_s; /* building plans (runtime-compiled engines compile there) */
} be_stats;

typedef struct {
  bdesc plan, vp;
} be_run_ctx;

static cudnnStatus_t be_run(void *p) {
  be_run_ctx *c = (be_run_ctx *)p;
  return cudnnBackendExecute(H, c->plan, c->vp);
}

static void be_keep(be_best *b, double ms, double ws_mib, int64_t engine, int nondet, int rtc,
                    int cfg, const char *heur) {
  if (b->ok && ms >= b->ms) return;
  b->ok = 1;
  b->ms = ms;
  b->ws_mib = ws_mib;
  b->engine = engine;
  b->nondet = nondet;
  b->rtc = rtc;
  b->cfg = cfg;
  b->heur = heur;
}

/* one engine config: its engine's notes, a plan, a variant pack, timed */
static void be_try(const geom_t *gm, int op, bufs_t *b, bdesc cfg, int idx, const char *heur,
                   be_stats *st) {
  bdesc plan = NULL, vp = NULL;
  void *ws = NULL;
  int64_t ws_size = 0;
  cg_info in;
  memset(&in, 0, sizeof in);
  st->tried++;
  if (cg_config_info(cfg, &in, LABEL) < 0) {
    if (O.verbose) cg_fail();
    st->info_fail++;
    goto fail;
  }
  const int tc = in.tensor_core, nondet = in.nondet, down = in.down_convert, rtc = in.rtc;
  const int64_t engine = in.engine;
  if (O.verbose)
    printf("probe:   %s %s config %s#%d engine %lld tc %d nondet %d down_convert %d rtc %d\n", gm->label,
           OP_NAME[op], heur, idx, (long long)engine, tc, nondet, down, rtc);
  st->tc_seen += tc;
  /* PyTorch drops DOWN_CONVERT_INPUTS configs always, TENSOR_CORE ones for
     float32 without TF32 (Conv_v8.cpp filterEngineConfigs) */
  if (down) {
    st->downconv++;
    goto fail;
  }
  if (tc && O.no_tensor) goto fail;
  if (rtc && O.no_rtc) {
    st->rtc_skipped++;
    goto fail;
  }
  if (in.ws >= 0 && (double)in.ws > O.ws_limit) { /* the config's workspace (cuDNN >= 9.2) */
    st->ws_over++;
    goto fail;
  }
  {
    const double t = now_s();
    const cudnnStatus_t s = cg_plan_finalize(H, cfg, &plan, &ws_size, LABEL, 1);
    st->finalize_s += now_s() - t;
    if (s != CUDNN_STATUS_SUCCESS) {
      if (O.verbose) cg_fail();
      st->fin_fail++;
      goto fail;
    }
  }
  if ((double)ws_size > O.ws_limit) {
    st->ws_over++;
    goto fail;
  }
  if (ws_size > 0) {
    cudaError_t e = cudaMalloc(&ws, (size_t)ws_size);
    if (e != cudaSuccess) {
      cudaGetLastError(); /* not sticky */
      if (O.verbose) cuda_fail("cudaMalloc (engine workspace)", e);
      ws = NULL;
      st->ws_over++;
      goto fail;
    }
  }
  {
    void *px = op == OP_BWD_DATA ? (void *)b->dx : (void *)b->x;
    void *pw = op == OP_BWD_FILTER ? (void *)b->dw : (void *)b->w;
    if (cg_variant_pack(&vp, px, pw, b->y, ws, LABEL) != CUDNN_STATUS_SUCCESS) {
      cg_fail();
      goto fail;
    }
  }
  {
    be_run_ctx c = {plan, vp};
    const double ms = time_runs(be_run, &c, "cudnnBackendExecute", 1);
    if (ms < 0) {
      st->exec_fail++;
      goto fail;
    }
    st->ran++;
    const double mib = (double)ws_size / 1048576.0;
    if (O.verbose)
      printf("probe:   %s %s config %s#%d engine %lld ms %.4f ws_MiB %.1f\n", gm->label, OP_NAME[op],
             heur, idx, (long long)engine, ms, mib);
    if (tc) {
      be_keep(&st->tc, ms, mib, engine, nondet, rtc, idx, heur);
    } else {
      be_keep(&st->fma, ms, mib, engine, nondet, rtc, idx, heur);
      if (!nondet) be_keep(&st->fma_det, ms, mib, engine, nondet, rtc, idx, heur);
    }
  }
fail:
  cudaFree(ws);
  bfree(&vp);
  bfree(&plan);
}

static void be_line(const geom_t *g, int op, const char *method, const be_best *b, const be_stats *st) {
  char tail[256];
  snprintf(tail, sizeof tail,
           " (of %d configs: A %d, fallback %d; %d ran; skipped: %d tensor-core%s, %d down-convert, "
           "%d rtc, %d over ws; failed: %d finalize, %d execute, %d query; plans built in %.2f s)%s",
           st->nconfigs, st->heur_a, st->heur_fb, st->ran, st->tc_seen,
           O.no_tensor ? "" : " (timed separately)", st->downconv, st->rtc_skipped, st->ws_over,
           st->fin_fail, st->exec_fail, st->info_fail, st->finalize_s, DEADLINE_HIT ? " [deadline]" : "");
  if (!b->ok)
    printf("probe: %s %s %s none%s\n", g->label, OP_NAME[op], method, tail);
  else
    printf("probe: %s %s %s engine %lld ms %.4f ws_MiB %.1f nondet %d rtc %d heur %s#%d%s\n", g->label,
           OP_NAME[op], method, (long long)b->engine, b->ms, b->ws_mib, b->nondet, b->rtc, b->heur,
           b->cfg, tail);
  fflush(stdout);
}

static void backend_op(const geom_t *gm, bufs_t *b, int op, op_result *res) {
  be_stats st;
  memset(&st, 0, sizeof st);
  cg_graph *g = be_graph_create(gm, op);
  if (!g) {
    be_line(gm, op, M_NAME[M_BFMA], &st.fma, &st);
    return;
  }
  static const cudnnBackendHeurMode_t modes[2] = {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK};
  static const char *const mname[2] = {"A", "fallback"};
  int left = O.max_configs;
  for (int m = 0; m < 2 && left > 0 && !BROKEN; m++) {
    bdesc cfgs[256] = {NULL};
    int64_t total = 0;
    /* mode A first; keep a quarter of the cap for the fallback list */
    int cap = m == 0 ? O.max_configs - O.max_configs / 4 : left;
    if (cap > 256) cap = 256;
    const int n = cg_heuristics(g, modes[m], cfgs, cap, &total);
    if (n < 0) {
      cg_fail();
      continue;
    }
    if (m == 0) st.heur_a = (int)total;
    else st.heur_fb = (int)total;
    for (int i = 0; i < n; i++) {
      if (left > 0 && !BROKEN && !past_deadline()) {
        st.nconfigs++;
        left--;
        be_try(gm, op, b, cfgs[i], i, mname[m], &st);
      }
      bfree(&cfgs[i]);
    }
  }
  cg_graph_destroy(g);
  res->ms[M_BFMA] = st.fma.ok ? st.fma.ms : -1;
  res->ms[M_BFMA_DET] = st.fma_det.ok ? st.fma_det.ms : -1;
  res->ms[M_BTC] = st.tc.ok ? st.tc.ms : -1;
  be_line(gm, op, M_NAME[M_BFMA], &st.fma, &st);
  be_line(gm, op, M_NAME[M_BFMA_DET], &st.fma_det, &st);
  if (!O.no_tensor) be_line(gm, op, M_NAME[M_BTC], &st.tc, &st);
}

/* ---- without a device: --list, --self-test ---------------------------------- */

static int list_shapes(void) {
  for (int i = 0; i < NSHAPES; i++) {
    geom_t g;
    geom_of(&SHAPES[i], O.batch, &g);
    if (!selected(&g)) continue;
    printf("probe: shape %s -> %dx%dx%d uses %d need_dx %d  # %s\n", g.label, g.od, g.oh, g.ow,
           SHAPES[i].uses, SHAPES[i].need_dx, SHAPES[i].where);
  }
  return 0;
}

/* Objects the dynamic loader has loaded so far (dlpi_adds: one count per
   load, reloads included). cuDNN loads NVRTC for each engine it checks and
   unloaded it after each, 70 reloads over the search below, until
   cg_graph_create held it loaded (cg_hold_nvrtc, cudnn_graph.c): each reload
   left a block from NVRTC's libstdc++ that LeakSanitizer could not trace. */
static int dl_adds_cb(struct dl_phdr_info *info, size_t size, void *data) {
  (void)size;
  *(unsigned long long *)data = info->dlpi_adds;
  return 1;
}
static unsigned long long dl_loads(void) {
  unsigned long long n = 0;
  dl_iterate_phdr(dl_adds_cb, &n);
  return n;
}

/* The trainer's graph-API search (trainer/cuda/backend_cuda.cu, graph_plan:
   COEMU_CUDNN_API=graph) for every convolution call of a COEmuNet training
   step at --batch, on an H200 described to cuDNN rather than present
   (cg_deviceprop_h200; cuDNN >= 9.8): the heuristics for sm_90, the
   trainer's filters (strict float32: no tensor-core, down-converting or
   reduced-precision engines; tf32: tensor cores allowed), deterministic
   engines first and then any, its workspace limit
   (CG_TRAINER_WORKSPACE_MIB) and its cap of CG_DEFAULT_MAX_CONFIGS configs
   tried, every candidate's plan finalized for the device. Each call must be
   left with at least one plan, or on a device it would fall
   back to the legacy API (as it did for 20 of the 50 float32 calls when the
   cap was counted before the filters: mode A lists its tensor-core configs
   first).
   What this cannot see: runtime-compiled engines (left out), and whether
   the plans run and how fast. The number of calls without a plan (0: ok;
   cuDNN without device descriptors: a SKIP line, 0), plus one when cuDNN
   loaded libraries once per engine during the search (dl_loads). */
static int deviceless_selection(void) {
  const unsigned long long loads0 = dl_loads();
  bdesc dp = NULL;
  if (cg_deviceprop_h200(&dp) < 0) {
    printf("probe: self-test: deviceless selection: SKIP: %s\n", cg_error());
    return 0;
  }
  int calls = 0, without = 0, any_order = 0, cands = 0;
  for (int i = 0; i < NSHAPES; i++) {
    geom_t gm;
    geom_of(&SHAPES[i], O.batch, &gm);
    if (!selected(&gm)) continue;
    const cg_conv c = cg_conv_of_shape(&gm);
    for (int tf32 = 0; tf32 < 2; tf32++)
      for (int op = 0; op < NOPS; op++) {
        if (op == OP_BWD_DATA && !gm.s->need_dx) continue; /* the trainer makes no dx there */
        snprintf(LABEL, sizeof LABEL, "%s %s %s", gm.label, OP_NAME[op], tf32 ? "tf32" : "float32");
        cg_graph *g = NULL;
        /* the trainer's betas: forward 0; the backward calls accumulate */
        if (cg_graph_create(&g, &c, (cg_op)op, 1.0f, op == OP_FWD ? 0.0f : 1.0f, NULL) < 0) {
          printf("probe: self-test: deviceless selection: FAIL: %s\n", cg_error());
          without++;
          calls++;
          continue;
        }
        cg_prefs pr;
        memset(&pr, 0, sizeof pr);
        pr.allow_tensor_core = tf32;
        pr.ws_limit = (size_t)O.trainer_ws;
        pr.max_configs = CG_DEFAULT_MAX_CONFIGS;
        pr.deviceprop = dp;
        pr.deterministic_only = 1;
        cg_tune_stats st;
        cg_plan *none = NULL; /* deviceless: no plan is kept */
        int any;
        const int rc = cg_autotune_deterministic_first(NULL, g, &pr, NULL, NULL, NULL, &none, &st,
                                                       NULL, &any);
        const int det = !any;
        calls++;
        if (rc != 0) {
          without++;
          printf("probe: self-test: deviceless selection: FAIL: no plan for %s (%s)\n", LABEL,
                 cg_error());
        } else {
          any_order += !det;
          cands += st.ntimed;
          if (O.verbose) {
            printf("probe: self-test: deviceless %s: %d plan(s)%s, engines", LABEL, st.ntimed,
                   det ? "" : " (no deterministic one)");
            for (int k = 0; k < st.ntimed; k++)
              printf(" %lld%s%s", (long long)st.timed[k].info.engine,
                     st.timed[k].info.heur ? "f" : "", st.timed[k].info.nondet ? "n" : "");
            printf(" (heuristics A %d, fallback %d; dropped %d tensor-core, %d nondeterministic, "
                   "%d reduced-precision reduction, %d runtime-compiled; %d failed to finalize)\n",
                   st.heur_a, st.heur_fb, st.skip_tc, st.skip_nondet, st.skip_reduced,
                   st.skip_rtc, st.fail_finalize);
          }
        }
        cg_graph_destroy(g);
      }
  }
  cudnnBackendDestroyDescriptor(dp);
  const unsigned long long loads = dl_loads() - loads0;
  printf("probe: self-test: deviceless selection on an H200 described to cuDNN %zu: %d calls "
         "(float32 and tf32), %d with a plan (%d only with a nondeterministic engine), %d "
         "candidate plans, %d without; %llu libraries loaded meanwhile\n", cudnnGetVersion(),
         calls, calls - without, any_order, cands, without, loads);
  /* a few first loads are fine (a cuDNN sub-library); one per engine is the
     reload the hold is there to stop */
  if (loads > 8) {
    printf("probe: self-test: deviceless selection: FAIL: %llu library loads during the search "
           "(NVRTC reloaded per engine? cudnn_graph.c's cg_hold_nvrtc)\n", loads);
    without++;
  }
  return without;
}

/* descriptors only: legacy ones (no handle needed) with cuDNN's output size
   check; backend tensors, convolution, operation and operation-graph
   descriptors finalized (cuDNN validates the attribute types and the shapes
   there; the graph without a handle, which cuDNN 9.19 accepts, earlier 9.x
   releases may not); both heuristics queried (without a device they finalize
   and count configs, but hand back none that is supported); then the
   module's own self-test (cg_self_test); then the trainer's search for an
   H200 described to cuDNN (deviceless_selection above). Running plans and
   variant packs needs a device. */
static int self_test(void) {
  int bad = 0, n = 0, nheur = 0;
  printf("probe: self-test: cuDNN %zu (header %d)\n", cudnnGetVersion(), CUDNN_VERSION);
  for (int i = 0; i < NSHAPES; i++) {
    geom_t g;
    geom_of(&SHAPES[i], O.batch, &g);
    if (!selected(&g)) continue;
    snprintf(LABEL, sizeof LABEL, "%s", g.label);
    legacy_desc d;
    if (legacy_create(&g, &d) < 0) bad++;
    else legacy_destroy(&d);
    for (int op = 0; op < NOPS; op++) {
      snprintf(LABEL, sizeof LABEL, "%s %s", g.label, OP_NAME[op]);
      cg_graph *bg = be_graph_create(&g, op);
      if (!bg) {
        bad++;
        continue;
      }
      for (int m = 0; m < 2; m++) {
        bdesc cfgs[256] = {NULL};
        int64_t total = 0;
        const int k = cg_heuristics(bg, m ? CUDNN_HEUR_MODE_FALLBACK : CUDNN_HEUR_MODE_A, cfgs, 256, &total);
        if (k < 0) {
          cg_fail();
          bad++;
          continue;
        }
        nheur++;
        if (O.verbose)
          printf("probe: self-test: %s heuristics %s: %lld configs, %d handed back\n", LABEL,
                 m ? "fallback" : "A", (long long)total, k);
        for (int c = 0; c < k; c++) bfree(&cfgs[c]);
      }
      cg_graph_destroy(bg);
    }
    n++;
  }
  printf("probe: self-test: %d shapes, %d heuristics queries, %d failures\n", n, nheur, bad);
  /* the module's own (trainer/cuda/cudnn_graph.h: beta 1, bf16 io, 2-D) */
  const int mbad = cg_self_test(stdout, O.verbose);
  const int dbad = deviceless_selection();
  printf("probe: self-test: %s\n", bad || mbad || dbad ? "FAIL" : "ok");
  return bad || mbad || dbad ? 1 : 0;
}

/* ---- main ---------------------------------------------------------------------- */

static void usage(FILE *f) {
  fprintf(f,
          "usage: cudnn_engine_probe [--batch N] [--shape-filter SUBSTR] [--quick] "
          "[--ops fwd,bwd_data,bwd_filter]\n"
          "         [--max-configs N] [--ws-limit-mib N] [--trainer-ws-mib N] [--deadline S] "
          "[--no-tensor] [--no-rtc]\n"
          "         [--with-1ch] [--list] [--self-test] [--verbose]\n");
}

static int parse_int(const char *v, const char *opt, long lo, long hi, long *out) {
  char *e = NULL;
  long x = v ? strtol(v, &e, 10) : 0;
  if (!v || !*v || *e || x < lo || x > hi) {
    fprintf(stderr, "cudnn_engine_probe: %s expects an integer in %ld..%ld\n", opt, lo, hi);
    return -1;
  }
  *out = x;
  return 0;
}

static int parse_args(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    long x;
    if (!strcmp(a, "--batch")) {
      if (parse_int(v, a, 1, 4096, &x) < 0) return -1;
      O.batch = (int)x, i++;
    } else if (!strcmp(a, "--shape-filter")) {
      if (!v) return fprintf(stderr, "cudnn_engine_probe: --shape-filter needs a value\n"), -1;
      O.filter = v, i++;
    } else if (!strcmp(a, "--max-configs")) {
      if (parse_int(v, a, 1, 256, &x) < 0) return -1;
      O.max_configs = (int)x, i++;
    } else if (!strcmp(a, "--ws-limit-mib")) {
      if (parse_int(v, a, 0, 1L << 20, &x) < 0) return -1;
      O.ws_limit = (double)x * 1048576.0, i++;
    } else if (!strcmp(a, "--trainer-ws-mib")) {
      if (parse_int(v, a, 0, 1L << 20, &x) < 0) return -1;
      O.trainer_ws = (double)x * 1048576.0, i++;
    } else if (!strcmp(a, "--deadline")) {
      if (parse_int(v, a, 1, 1L << 20, &x) < 0) return -1;
      O.deadline = (double)x, i++;
    } else if (!strcmp(a, "--ops")) {
      if (!v) return fprintf(stderr, "cudnn_engine_probe: --ops needs a value\n"), -1;
      for (int k = 0; k < NOPS; k++) O.ops[k] = 0;
      char buf[128];
      snprintf(buf, sizeof buf, "%s", v);
      for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        int found = 0;
        for (int k = 0; k < NOPS; k++)
          if (!strcmp(t, OP_NAME[k])) O.ops[k] = found = 1;
        if (!found) return fprintf(stderr, "cudnn_engine_probe: --ops: unknown '%s'\n", t), -1;
      }
      i++;
    } else if (!strcmp(a, "--quick")) {
      O.quick = 1;
    } else if (!strcmp(a, "--no-tensor")) {
      O.no_tensor = 1;
    } else if (!strcmp(a, "--no-rtc")) {
      O.no_rtc = 1;
    } else if (!strcmp(a, "--with-1ch")) {
      O.with_1ch = 1;
    } else if (!strcmp(a, "--list")) {
      O.list = 1;
    } else if (!strcmp(a, "--self-test")) {
      O.self_test = 1;
    } else if (!strcmp(a, "--verbose")) {
      O.verbose = 1;
    } else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      exit(0);
    } else {
      fprintf(stderr, "cudnn_engine_probe: unknown option '%s'\n", a);
      usage(stderr);
      return -1;
    }
  }
  return 0;
}

int main(int argc, char **argv) {
  if (parse_args(argc, argv) < 0) return 2;
  if (O.list) return list_shapes();
  if (O.self_test) return self_test();
  T0 = now_s();
  snprintf(LABEL, sizeof LABEL, "setup");

  int ndev = 0;
  cudaError_t e = cudaGetDeviceCount(&ndev);
  if (e != cudaSuccess || ndev < 1) {
    printf("probe: no CUDA device: %s\n",
           e != cudaSuccess ? cudaGetErrorString(e) : "cudaGetDeviceCount found none");
    return 1;
  }
  struct cudaDeviceProp prop;
  int rt = 0, drv = 0;
  CU(cudaGetDeviceProperties(&prop, 0));
  CU(cudaSetDevice(0));
  cudaRuntimeGetVersion(&rt);
  cudaDriverGetVersion(&drv);
  cg_hold_nvrtc(); /* as the trainer's backend: the legacy timings load engines too */
  DNN(cudnnCreate(&H));
  printf("probe: device %s (sm_%d%d, %d SMs, %.1f GiB); CUDA runtime %d, driver %d; cuDNN %zu "
         "(header %d); batch %d; float32 %s; up to %d configs per operation; workspace <= %.0f MiB; "
         "deadline %.0f s\n",
         prop.name, prop.major, prop.minor, prop.multiProcessorCount,
         (double)prop.totalGlobalMem / 1073741824.0, rt, drv, cudnnGetVersion(), CUDNN_VERSION,
         O.batch, O.quick ? "1 warm-up + 1 timed run" : "1 warm-up + 3 timed runs (fastest)",
         O.max_configs, O.ws_limit / 1048576.0, O.deadline);
  fflush(stdout);

  /* sums: over the shapes, and weighted by calls per step; shape counts */
  double sum[NOPS][NMETHODS] = {{0}}, step[NOPS][NMETHODS] = {{0}};
  int cnt[NOPS][NMETHODS] = {{0}};
  /* paired sums (shapes where both legacy_fma and backend_fma ran) */
  double pl[NOPS] = {0}, pb[NOPS] = {0}, psl[NOPS] = {0}, psb[NOPS] = {0};
  int pn[NOPS] = {0}, nsel = 0;

  for (int i = 0; i < NSHAPES && !BROKEN && !past_deadline(); i++) {
    geom_t g;
    geom_of(&SHAPES[i], O.batch, &g);
    if (!selected(&g)) continue;
    nsel++;
    snprintf(LABEL, sizeof LABEL, "%s", g.label);
    printf("probe: shape %s -> %dx%dx%d uses %d need_dx %d (%s) at %.1f s\n", g.label, g.od, g.oh,
           g.ow, g.s->uses, g.s->need_dx, g.s->where, now_s() - T0);
    fflush(stdout);
    bufs_t b;
    if (bufs_alloc(&g, &b) < 0) continue;
    legacy_desc d;
    const int have_legacy = legacy_create(&g, &d) == 0;
    for (int op = 0; op < NOPS && !BROKEN; op++) {
      if (!O.ops[op] || past_deadline()) continue;
      snprintf(LABEL, sizeof LABEL, "%s %s", g.label, OP_NAME[op]);
      op_result r;
      for (int m = 0; m < NMETHODS; m++) r.ms[m] = -1;
      if (have_legacy) legacy_op(&g, &d, &b, op, &r);
      if (!BROKEN && !past_deadline()) backend_op(&g, &b, op, &r);
      /* backward data of a shape whose input gradient the trainer skips: not
         in the per-step sums */
      const double w = (op == OP_BWD_DATA && !g.s->need_dx) ? 0.0 : (double)g.s->uses;
      for (int m = 0; m < NMETHODS; m++)
        if (r.ms[m] >= 0) {
          sum[op][m] += r.ms[m];
          step[op][m] += w * r.ms[m];
          cnt[op][m]++;
          NTIMED++;
        }
      if (r.ms[M_LFMA] >= 0 && r.ms[M_BFMA] >= 0) {
        pl[op] += r.ms[M_LFMA];
        pb[op] += r.ms[M_BFMA];
        psl[op] += w * r.ms[M_LFMA];
        psb[op] += w * r.ms[M_BFMA];
        pn[op]++;
        printf("probe: %s %s backend_fma speedup %.2fx (legacy_fma %.4f ms / backend_fma %.4f ms)\n",
               g.label, OP_NAME[op], r.ms[M_LFMA] / (r.ms[M_BFMA] > 0 ? r.ms[M_BFMA] : 1e-9),
               r.ms[M_LFMA], r.ms[M_BFMA]);
      }
      e = cudaDeviceSynchronize();
      if (e != cudaSuccess) cuda_fail("cudaDeviceSynchronize", e);
    }
    if (have_legacy) legacy_destroy(&d);
    bufs_free(&b);
  }

  /* totals */
  for (int pass = 0; pass < 2; pass++) {
    const char *what = pass == 0 ? "total" : "per-step";
    double all[NMETHODS] = {0}, allpl = 0, allpb = 0;
    for (int op = 0; op < NOPS; op++) {
      if (!O.ops[op]) continue;
      printf("probe: %s %s", what, OP_NAME[op]);
      for (int m = 0; m < NMETHODS; m++) {
        const double v = pass == 0 ? sum[op][m] : step[op][m];
        all[m] += v;
        printf(" %s %.3f ms", M_NAME[m], v);
      }
      printf(" (shapes timed:");
      for (int m = 0; m < NMETHODS; m++) printf(" %d", cnt[op][m]);
      printf(" of %d)\n", nsel);
      const double l = pass == 0 ? pl[op] : psl[op], bk = pass == 0 ? pb[op] : psb[op];
      allpl += l;
      allpb += bk;
      printf("probe: %s %s paired legacy_fma %.3f ms backend_fma %.3f ms backend_fma speedup %.2fx over %d shapes\n",
             what, OP_NAME[op], l, bk, bk > 0 ? l / bk : 0.0, pn[op]);
    }
    printf("probe: %s all", what);
    for (int m = 0; m < NMETHODS; m++) printf(" %s %.3f ms", M_NAME[m], all[m]);
    printf("\n");
    printf("probe: %s all paired legacy_fma %.3f ms backend_fma %.3f ms backend_fma speedup %.2fx\n", what, allpl,
           allpb, allpb > 0 ? allpl / allpb : 0.0);
  }
  printf("probe: per-step = each shape's time x its calls per training step of the 7-channel model "
         "(the three encoder branches counted; backward data only where the trainer computes it)%s\n",
         O.with_1ch ? "; the --with-1ch shapes counted once each" : "");
  printf("probe: done in %.1f s: %d timings%s%s\n", now_s() - T0, NTIMED,
         DEADLINE_HIT ? " (deadline reached: partial)" : "", BROKEN ? " (stopped by a CUDA error)" : "");
  cudnnDestroy(H);
  return NTIMED > 0 ? 0 : 1;
fail:
  printf("probe: setup failed: nothing timed\n");
  return 1;
}
