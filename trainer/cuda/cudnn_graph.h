/* cudnn_graph.h - one convolution on cuDNN's graph (backend) API, plain C.
 *
 * What PyTorch does through cudnn-frontend, for a single convolution
 * operation: a one-operation graph (forward x, w -> y; backward data w, dy ->
 * dx; backward filter x, dy -> dw; packed NCDHW or NCHW tensors, float or
 * bf16 storage with float compute, alpha and beta fixed at creation), engine
 * configs from heuristics (mode A, then FALLBACK), filtered by their
 * numerical and behaviour notes, finalized into execution plans, each timed
 * on the caller's scratch tensors (1 warm-up + reps timed runs on the
 * handle's stream, cudaEvents, the fastest run), the fastest plan within a
 * workspace limit kept (cg_autotune) and executed later on real pointers
 * (cg_plan_execute; variant packs cached per pointer set).
 *
 * Used by the trainer's CUDA backend (backend_cuda.cu, COEMU_CUDNN_API=graph)
 * and by tests/trainer/cudnn_engine_probe.c (the descriptor building: the
 * lower-level calls below). Every failing call leaves a message in
 * cg_error(): the call, cuDNN's status string and number, the shape and
 * operation, and cudnnGetLastErrorString's text where there is one.
 *
 * Without a device, descriptors and operation graphs finalize and the
 * heuristics answer (with configs none of which is supported); plans cannot
 * be finalized. cg_self_test checks that part. With a device described
 * instead (a DEVICEPROP descriptor, cuDNN >= 9.8: cg_deviceprop_h200) the
 * heuristics answer for that device and plans finalize for it, so the
 * search up to the timing runs without one (cg_prefs.deviceprop;
 * tests/trainer/cudnn_engine_probe.c --self-test runs it over COEmuNet's
 * calls as the trainer makes them).
 */
#ifndef COEMU_CUDNN_GRAPH_H
#define COEMU_CUDNN_GRAPH_H

#include <cuda_runtime.h>
#include <cudnn.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* device-properties descriptors (a device described, not present) */
#if defined(CUDNN_VERSION) && CUDNN_VERSION >= 90800
#define CG_HAVE_DEVICEPROP 1
#else
#define CG_HAVE_DEVICEPROP 0
#endif

typedef enum { CG_FWD = 0, CG_BWD_DATA = 1, CG_BWD_FILTER = 2, CG_NOPS = 3 } cg_op;

/* "fwd", "bwd_data", "bwd_filter" */
const char *cg_op_name(cg_op op);

/* A convolution's geometry: cross-correlation, dilation 1. Spatial arrays
 * are (depth, height, width); nd 2 (NCHW tensors, cuDNN's 2-D kernels) uses
 * [1] and [2] only. */
typedef struct {
  int nd; /* 3 (NCDHW) or 2 (NCHW) */
  int n, cin, cout;
  int in[3];
  int k[3], stride[3], pad[3];
  cudnnDataType_t io; /* CUDNN_DATA_FLOAT or CUDNN_DATA_BFLOAT16 (0: float) */
} cg_conv;

/* fn(ctx) once (a warm-up), then reps runs timed with cudaEvents on
 * stream: the fastest in ms; -1 when fn failed (*failed its status, no
 * message: the caller knows what fn was), -2 on a CUDA error (cg_error,
 * naming label). Shared by the autotuning and the engine probe's timings. */
double cg_time_runs(cudnnStatus_t (*fn)(void *ctx), void *ctx, cudaStream_t stream, int reps,
                    cudnnStatus_t *failed, const char *label);
/* "fma", "tensor", "tensor-conversion" or "default" */
const char *cg_math_name(cudnnMathType_t m);

/* The output size of spatial dimension i (0..2). */
int cg_out_dim(const cg_conv *c, int i);

/* The message of the last failure (this thread). */
const char *cg_error(void);

/* ---- the operation graph ------------------------------------------------ */

/* Tensor unique ids in graphs and variant packs: the x-shaped tensor (x or
 * dx), the filter-shaped one (w or dw), the y-shaped one (y or dy). */
enum { CG_UID_X = 1, CG_UID_W = 2, CG_UID_Y = 3 };

typedef struct cg_graph cg_graph;

/* Holds NVRTC loaded for the rest of the process (once; thread-safe; best
 * effort), so that cuDNN's per-engine loads and unloads of it neither
 * re-run its initialisers nor leak their blocks (cudnn_graph.c). Called by
 * cg_graph_create, and by whatever opens a cuDNN handle first: cuDNN 9's
 * legacy API runs on the same engines. */
void cg_hold_nvrtc(void);

/* The finalized graph of one operation of convolution c, y-role output
 * scaled as out = alpha * result + beta * out. handle may be NULL (cuDNN
 * 9.19 finalizes graphs without one; the graph then targets the current
 * device). 0 on success, -1 with cg_error(). */
int cg_graph_create(cg_graph **g, const cg_conv *c, cg_op op, float alpha, float beta,
                    cudnnHandle_t handle);
void cg_graph_destroy(cg_graph *g);
/* "conv3d 32x8x16x16x16->8 k3x3x3 s1x1x1 p1x1x1 bwd_filter" (+ " bf16", + " beta 1") */
const char *cg_graph_label(const cg_graph *g);
cudnnBackendDescriptor_t cg_graph_desc(const cg_graph *g);
cg_op cg_graph_op(const cg_graph *g);
/* elements of the x-, w- and y-shaped tensors */
size_t cg_graph_elems(const cg_graph *g, int uid);

/* ---- engine configs and plans (the lower level) ------------------------- */

/* Up to cap engine configs of heuristics mode `mode` (created here, the
 * caller destroys them with cudnnBackendDestroyDescriptor) into cfgs; *total:
 * how many the heuristics offered. Their count, -1 with cg_error(). */
int cg_heuristics(const cg_graph *g, cudnnBackendHeurMode_t mode, cudnnBackendDescriptor_t *cfgs,
                  int cap, int64_t *total);
/* The same for the device deviceprop describes (NULL: as cg_heuristics) */
int cg_heuristics_for(const cg_graph *g, cudnnBackendHeurMode_t mode,
                      cudnnBackendDescriptor_t deviceprop, cudnnBackendDescriptor_t *cfgs, int cap,
                      int64_t *total);

/* An engine config's engine and notes. */
typedef struct {
  int64_t engine; /* CUDNN_ATTR_ENGINE_GLOBAL_INDEX */
  int tensor_core, down_convert, reduced_reduction, fft, winograd, nondet;
  int rtc;        /* runtime compilation (plans take long to finalize) */
  int64_t ws;     /* the config's workspace bytes (cuDNN >= 9.2), -1 unknown */
  int heur;       /* cg_autotune: 0 mode A, 1 fallback */
  int index;      /* cg_autotune: its place in that heuristics list */
} cg_info;

int cg_config_info(cudnnBackendDescriptor_t cfg, cg_info *info, const char *label);

/* The finalized execution plan of config cfg (handle may be NULL in
 * cuDNN >= 9.x releases that accept it) and its workspace bytes. quiet: no
 * message for a failed finalize (a config that does not support the shape:
 * part of the search); the status is returned either way (CUDNN_STATUS_...
 * of the failing call). */
cudnnStatus_t cg_plan_finalize(cudnnHandle_t handle, cudnnBackendDescriptor_t cfg,
                               cudnnBackendDescriptor_t *plan, int64_t *ws, const char *label,
                               int quiet);
/* The same for the device deviceprop describes (NULL: as cg_plan_finalize;
 * set: handle may be NULL, the plan can be inspected but not executed) */
cudnnStatus_t cg_plan_finalize_for(cudnnHandle_t handle, cudnnBackendDescriptor_t deviceprop,
                                   cudnnBackendDescriptor_t cfg, cudnnBackendDescriptor_t *plan,
                                   int64_t *ws, const char *label, int quiet);

/* A finalized variant pack: the x-, w-, y-shaped tensors' pointers (roles as
 * CG_UID_*) and the workspace. */
cudnnStatus_t cg_variant_pack(cudnnBackendDescriptor_t *vp, void *x, void *w, void *y, void *ws,
                              const char *label);

/* ---- autotuning and execution ------------------------------------------- */

/* The trainer's search defaults (trainer/cuda/backend_cuda.cu; the
 * environment's COEMU_CUDNN_GRAPH_CONFIGS and COEMU_CUDNN_WORKSPACE_MB change
 * them there), which the engine probe's deviceless self-test reproduces. */
#define CG_DEFAULT_MAX_CONFIGS 16
#define CG_TRAINER_WORKSPACE_MIB 512

typedef struct {
  int allow_tensor_core;  /* tf32 / bf16: engines with the TENSOR_CORE note allowed; 0: strict
                             float32 (TENSOR_CORE and REDUCED_PRECISION_REDUCTION dropped) */
  int deterministic_only; /* drop the NONDETERMINISTIC note */
  int sums_only;          /* drop FFT and Winograd engines (plain sums of products only) */
  int no_rtc;             /* drop runtime-compiled engines */
  size_t ws_limit;        /* bytes */
  int max_configs;        /* configs tried (finalized and timed) after the filters, A then
                             fallback (<= 0: CG_DEFAULT_MAX_CONFIGS) */
  int reps;               /* timed runs after the warm-up (<= 0: 3) */
  /* NULL: the handle's device. Set (cg_deviceprop_h200): the search for the
   * device it describes, without one: heuristics and plans for it, the
   * filters and the cap as above, runtime-compiled engines left out; no
   * plan is timed or kept (cg_autotune's *out stays NULL, handle may be
   * NULL): 0 when a config finalized (st->timed lists them, ms 0), 1 when
   * none did. */
  cudnnBackendDescriptor_t deviceprop;
} cg_prefs;

#define CG_MAX_TIMED 64
typedef struct {
  int heur_a, heur_fb; /* configs each heuristics mode offered */
  int looked;          /* configs tried past the filters (at most max_configs) */
  /* dropped by the preferences */
  int skip_tc, skip_down, skip_reduced, skip_numerics /* fft, winograd */, skip_nondet, skip_rtc,
      skip_ws /* over the limit, or no memory to time it */, duplicate;
  /* failed: engine query, plan finalize (not supported), execution */
  int fail_info, fail_finalize, fail_exec;
  int ntimed;
  struct {
    cg_info info;
    float ms;
  } timed[CG_MAX_TIMED];
  int best; /* index into timed, -1 none */
  double seconds; /* the whole search */
} cg_tune_stats;

typedef struct cg_plan cg_plan;

/* Times the acceptable engine configs of graph g on the caller's scratch
 * tensors x, w, y (the roles of CG_UID_*; device memory of
 * cg_graph_elems(g, uid) elements each, the output one overwritten or
 * accumulated into) with workspace allocated here, on handle's stream;
 * keeps the fastest as *out. 0: *out set; 1: no usable engine (*out NULL,
 * st says why, cg_error() too); -1: a CUDA / cuDNN error (cg_error()). st
 * may be NULL. */
int cg_autotune(cudnnHandle_t handle, const cg_graph *g, const cg_prefs *prefs, void *x, void *w,
                void *y, cg_plan **out, cg_tune_stats *st);

/* cg_autotune with prefs->deterministic_only tried first and, when no
 * deterministic engine is usable (1), again with any engine (the trainer's
 * policy, also checked without a device by cudnn_engine_probe --self-test).
 * *any_order: whether the result is the second pass's (or the prefs asked
 * for any order); st_first (may be NULL): the first pass's stats when the
 * second ran. Returns as cg_autotune. */
int cg_autotune_deterministic_first(cudnnHandle_t handle, const cg_graph *g,
                                    const cg_prefs *prefs, void *x, void *w, void *y, cg_plan **out,
                                    cg_tune_stats *st, cg_tune_stats *st_first, int *any_order);

/* Runs plan p on handle's stream with the tensors x, w, y (as
 * cg_autotune) and workspace ws of ws_bytes bytes (at least
 * cg_plan_workspace(p)); pointers 16-byte aligned. Variant packs are cached
 * per pointer set (8). 0, or -1 with cg_error() (the caller may fall back). */
int cg_plan_execute(cudnnHandle_t handle, cg_plan *p, const void *x, const void *w, const void *y,
                    void *ws, size_t ws_bytes);
size_t cg_plan_workspace(const cg_plan *p);
const cg_info *cg_plan_info(const cg_plan *p);
float cg_plan_ms(const cg_plan *p); /* its time in cg_autotune */
void cg_plan_destroy(cg_plan *p);

/* ---- without a device ----------------------------------------------------- */

/* A finalized DEVICEPROP descriptor of an H200 (sm_90; cudnn_graph.c has
 * its properties), for cg_prefs.deviceprop and the *_for calls; the caller
 * destroys it. 0, or -1 with cg_error() (cuDNN before 9.8 has none). */
int cg_deviceprop_h200(cudnnBackendDescriptor_t *dp);

/* Descriptors and operation graphs of a few 2-D and 3-D shapes (strided,
 * 1x1x1, (1,3,3) with pad (0,1,1)), every operation, float with beta 0 and
 * 1 and bf16 io, finalized without a handle; heuristics mode A and FALLBACK
 * queried for each (their count; without a device none is supported).
 * Lines "cudnn-graph: self-test ..." on out (verbose: one per graph). The
 * number of failures. */
int cg_self_test(FILE *out, int verbose);

#ifdef __cplusplus
}
#endif

#endif
