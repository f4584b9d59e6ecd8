/* backend_cuda.cu - the trainer's CUDA backend (backend_cuda.h, backend.h):
 * device memory, cuDNN convolutions, cuBLAS linear layers, cuFFT for the
 * loss, and kernels of its own for the rest, each with the arithmetic of its
 * CPU reference in layers_cpu.c / loss.c / backend_cpu.c (same formulas, the
 * same double sums; only the order of the sums differs, fixed per shape, so
 * a run repeats bit for bit on one device).
 *
 * Every CUDA, cuDNN, cuBLAS and cuFFT call goes through a checked wrapper
 * (CUDA_CHECK, CUDNN_CHECK, CUBLAS_CHECK, CUFFT_CHECK) that turns a failure
 * into the trainer's error (common/error.h): "file:line: call: reason".
 * Kernel launches are checked with KERNEL_CHECK (cudaGetLastError).
 *
 * One stream carries all work; upload, download, loss_eval, the reducer's
 * staging, free and finish wait for it (backend.h, HOST SYNCHRONISATION).
 * A reducer with device sums (NCCL, trainer/nccl_comm.h) sums gradient buckets on
 * a second stream, ordered by events (cuda_reduce_bucket); the input feed's
 * upload_async copies on a third (cuda_upload_async).
 *
 * COEMU_CUDA_TIMES=1 (read at init) turns on the timing mode ("the timing
 * mode" below; nn_cuda_times_report): every group of work on the stream
 * timed by a pair of events, per call kind, shape, algorithm and math.
 *
 * COEMU_CUDNN_API=graph (read at init; default legacy) runs the float32 and
 * TF32 convolutions on cuDNN's graph API (cudnn_graph.h: engine configs from
 * heuristics, autotuned, as PyTorch through cudnn-frontend) instead of the
 * legacy cudnnFind / cudnnConvolution* calls; native bf16 stays legacy
 * ("graph plans" below). COEMU_CUDNN_API=auto plans each such call both
 * ways and keeps the faster (graph_or_legacy). */
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>
#include <cufft.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cuda_check.h"
#include "common/env.h"
extern "C" {
#include "trainer/cuda/backend_cuda.h"
#include "trainer/cuda/cudnn_graph.h"
#include "trainer/layers_cpu.h"
#include "trainer/loss.h"
#include "trainer/metrics.h"
#include "trainer/nn.h"
}
#include "stats/norm_body.h"
#include "trainer/metrics_body.h"

/* ---- checked calls ------------------------------------------------------ */

static int cu_fail(const char *file, int line, const char *call, const char *why) {
  return ce_err("%s:%d: %s: %s", file, line, call, why);
}

static const char *cufft_string(cufftResult r) {
  switch (r) {
  case CUFFT_SUCCESS: return "success";
  case CUFFT_INVALID_PLAN: return "invalid plan";
  case CUFFT_ALLOC_FAILED: return "allocation failed";
  case CUFFT_INVALID_TYPE: return "invalid type";
  case CUFFT_INVALID_VALUE: return "invalid value";
  case CUFFT_INTERNAL_ERROR: return "internal error";
  case CUFFT_EXEC_FAILED: return "execution failed";
  case CUFFT_SETUP_FAILED: return "setup failed";
  case CUFFT_INVALID_SIZE: return "invalid size";
  case CUFFT_UNALIGNED_DATA: return "unaligned data";
  case CUFFT_INVALID_DEVICE: return "invalid device";
  case CUFFT_NO_WORKSPACE: return "no workspace";
  case CUFFT_NOT_IMPLEMENTED: return "not implemented";
  case CUFFT_NOT_SUPPORTED: return "not supported";
  default: return "unknown cuFFT error";
  }
}

#define CUDA_CHECK(call)                                                                 \
  do {                                                                                   \
    cudaError_t e_ = (call);                                                             \
    if (e_ != cudaSuccess) return cu_fail(__FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
  } while (0)
#define CUDNN_CHECK(call)                                                                \
  do {                                                                                   \
    cudnnStatus_t s_ = (call);                                                           \
    if (s_ != CUDNN_STATUS_SUCCESS)                                                      \
      return cu_fail(__FILE__, __LINE__, #call, cudnnGetErrorString(s_));                \
  } while (0)
#define CUBLAS_CHECK(call)                                                               \
  do {                                                                                   \
    cublasStatus_t s_ = (call);                                                          \
    if (s_ != CUBLAS_STATUS_SUCCESS)                                                     \
      return cu_fail(__FILE__, __LINE__, #call, cublasGetStatusString(s_));              \
  } while (0)
#define CUFFT_CHECK(call)                                                                \
  do {                                                                                   \
    cufftResult r_ = (call);                                                             \
    if (r_ != CUFFT_SUCCESS) return cu_fail(__FILE__, __LINE__, #call, cufft_string(r_)); \
  } while (0)
#define KERNEL_CHECK(what)                                                               \
  do {                                                                                   \
    cudaError_t e_ = cudaGetLastError();                                                 \
    if (e_ != cudaSuccess)                                                               \
      return cu_fail(__FILE__, __LINE__, "launch of " what, cudaGetErrorString(e_));     \
  } while (0)

/* ---- state -------------------------------------------------------------- */

/* A convolution's cuDNN plan: descriptors and the algorithms chosen once for
 * its shape (conv_shape, whether dx is wanted, the math mode, bf16 tensors:
 * native bf16, x w y in CUDNN_DATA_BFLOAT16, float32 compute). */
typedef struct {
  conv_shape s;
  int need_dx, tf32, sums_only, bf16;
  cudnnTensorDescriptor_t x, y, b;
  cudnnFilterDescriptor_t w;
  cudnnConvolutionDescriptor_t conv;
  cudnnConvolutionFwdAlgo_t fwd;
  cudnnConvolutionBwdDataAlgo_t bwd_data;
  cudnnConvolutionBwdFilterAlgo_t bwd_filter;
  size_t ws; /* the most workspace bytes of the three */
  /* the other acceptable algorithms of each call (0 forward, 1 backward
     filter, 2 backward data), best first: where cuDNN refuses the chosen one
     at run time (its Find timed it, the call says BAD_PARAM or NOT_SUPPORTED:
     seen for bf16 weight gradients on an H200, cuDNN 9.19), the next one */
  int nalt[3];
  struct {
    int algo;
    size_t mem;           /* its workspace bytes */
    cudnnMathType_t math; /* the math type it runs with (run_math) */
  } alt[3][16];
  /* the math type each call runs with: the one its algorithm was timed with
     (cuDNN >= 7.4 picks kernels by algorithm and math type together, so an
     algorithm Find timed under FMA math can be refused under tensor-op
     math); float32 without tf32 always FMA math (no TF32) */
  cudnnMathType_t math[3];
  /* native bf16: call k (as alt) refused by cuDNN with every acceptable
     algorithm; that call then runs on the emulated path's arithmetic
     (conv_forward_f32, conv_backward_f32 on the shape's float32 plan) */
  int refused[3];
  /* COEMU_CUDNN_API=graph (float32 and tf32 plans): the beta of the
     backward calls, fixed in their graphs (1: the gradients accumulate; 0:
     the emulated bf16 results, rounded when added), part of the plan's key
     (-1 in legacy mode and for native bf16); call k (as alt) on its graph
     and tuned engine where one was found (gp[k] != NULL), else on the
     legacy algorithm; legacy_found[k]: that algorithm chosen (cudnnFind) */
  int accum;
  cg_graph *gg[3];
  cg_plan *gp[3];
  int legacy_found[3];
  float legacy_ms[3]; /* the chosen legacy algorithm's time in cudnnFind (COEMU_CUDNN_API=auto) */
} conv_plan;

/* COEMU_CUDNN_API's values (S.graph) */
enum { API_LEGACY = 0, API_GRAPH = 1, API_AUTO = 2 };
static const char *const API_WORDS[3] = {"legacy", "graph", "auto"};

static struct {
  int users;
  int device, nsm;
  char name[256];
  cudaStream_t stream;
  cudnnHandle_t dnn;
  cublasHandle_t blas;
  conv_plan *plans;
  int nplans, plan_cap;
  void *scratch; /* small per-call buffers (BatchNorm sums, coefficients) */
  size_t scratch_bytes;
  int tf32;
  int sums_only; /* COEMU_CUDNN_ALGOS=sums: only algorithms whose outputs are plain sums */
  int any_order; /* COEMU_CUDNN_DETERMINISTIC=0: the fastest algorithm, deterministic or not */
  int verbose;   /* COEMU_CUDNN_VERBOSE=1: every plan's timed algorithms on stderr */
  int refuse_bf16; /* COEMU_CUDNN_REFUSE_BF16=1 (tests): every native bf16 call taken as refused */
  int bf16_emulated; /* COEMU_BF16=emulated: bf16 nets on the float32 path with rounded copies */
  int times;         /* COEMU_CUDA_TIMES=1: the timing mode (below) */
  int graph;         /* COEMU_CUDNN_API: API_LEGACY, API_GRAPH (float32 / tf32 convolutions on
                        the graph API) or API_AUTO (per call, the faster of the two) */
  int graph_configs; /* COEMU_CUDNN_GRAPH_CONFIGS: engine configs tried per call, after the
                        filters (16) */
  int graph_planned, graph_fallbacks; /* nn_cuda_graph_counts, since init */
  int graph_declined; /* COEMU_CUDNN_API=auto: calls whose legacy algorithm timed faster */
  size_t ws_limit;
  int ws_limit_set;
  /* device reducer sums (NCCL): gradient buckets run on comm, after the
     backward work recorded in grads_done; comm_done orders the division */
  cudaStream_t comm;
  cudaEvent_t grads_done, comm_done;
} S;

#define THREADS 256

static unsigned grid_for(long n) {
  long b = (n + THREADS - 1) / THREADS;
  long cap = (long)(S.nsm > 0 ? S.nsm : 80) * 32;
  if (b > cap) b = cap;
  return (unsigned)(b < 1 ? 1 : b);
}

extern "C" int nn_cuda_set_tf32(int on) {
  if (on != 0 && on != 1) return ce_err("cuda backend: tf32 = %d, expected 0 or 1", on);
  S.tf32 = on;
  if (S.blas) /* convolutions pick it up in their plans (keyed by the mode) */
    CUBLAS_CHECK(cublasSetMathMode(S.blas, on ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
  return 0;
}

extern "C" int nn_cuda_tf32(void) { return S.tf32; }

extern "C" void nn_cuda_set_workspace_limit(size_t bytes) {
  S.ws_limit = bytes;
  S.ws_limit_set = 1;
}

extern "C" const char *nn_cuda_device_name(void) { return S.users ? S.name : ""; }

extern "C" void nn_cuda_graph_counts(int *planned, int *fell_back) {
  *planned = S.graph_planned;
  *fell_back = S.graph_fallbacks;
}

extern "C" int nn_cuda_graph_declined(void) { return S.graph_declined; }

/* ---- the timing mode (COEMU_CUDA_TIMES=1) ------------------------------ */

/* Where a step's device time goes, with the arithmetic unchanged: each group
 * of work queued on the stream (one cuDNN call, a layer's kernels, a part of
 * the loss, Adam, a memset, a copy) is bracketed by two events recorded on
 * the stream, and keyed by what it is (call kind, shape, cuDNN's algorithm
 * and math type). Nothing waits on the events while a step runs: the pairs
 * are read with cudaEventElapsedTime where the host waits for the stream
 * anyway (sync_stream: every loss_eval, upload and download) once half the
 * pool is used, when the pool is full and its regions have completed
 * (otherwise the pool grows), or at the report, and summed per key. The
 * groups do not nest (the layer dispatch times whole layers except
 * convolutions and linear layers, which time their parts), so the keys add
 * up to the timed part of a step; what lies between the groups (the GPU
 * idle while the host queues or waits) is the wall time less that sum. Off
 * (S.times 0), no event is created or recorded: each site tests S.times
 * once (times_begin). Work on the other streams (the input feed's copies,
 * device reducer sums) is not timed. */
#define TIMES_KEY 176

typedef struct { /* a key's sums */
  char key[TIMES_KEY];
  uint32_t hash;
  double ms;
  long calls;
} times_entry;

static struct {
  cudaEvent_t *ev;        /* 2 per region: its start and its stop */
  char (*key)[TIMES_KEY]; /* each region's key; "" while open (or abandoned) */
  int cap, n, open;       /* regions the pool holds, regions recorded, still open */
  times_entry *tab;
  int ntab, tab_cap;
} T;

static void times_release(void) {
  for (int i = 0; i < 2 * T.cap; i++)
    if (T.ev[i]) cudaEventDestroy(T.ev[i]);
  free(T.ev);
  free(T.key);
  free(T.tab);
  memset(&T, 0, sizeof T);
}

static uint32_t times_hash(const char *k) { /* FNV-1a */
  uint32_t h = 2166136261u;
  for (; *k; k++) h = (h ^ (unsigned char)*k) * 16777619u;
  return h;
}

static int times_add(const char *key, double ms) {
  const uint32_t h = times_hash(key);
  for (int i = 0; i < T.ntab; i++)
    if (T.tab[i].hash == h && !strcmp(T.tab[i].key, key)) {
      T.tab[i].ms += ms;
      T.tab[i].calls++;
      return 0;
    }
  if (T.ntab == T.tab_cap) {
    int cap = T.tab_cap ? 2 * T.tab_cap : 256;
    void *nt = realloc(T.tab, sizeof *T.tab * (size_t)cap);
    if (!nt) return ce_err("timing mode: out of memory for %d keys", cap);
    T.tab = (times_entry *)nt;
    T.tab_cap = cap;
  }
  times_entry *e = &T.tab[T.ntab++];
  snprintf(e->key, sizeof e->key, "%s", key);
  e->hash = h;
  e->ms = ms;
  e->calls = 1;
  return 0;
}

/* The recorded regions into the table. wait 0: only when the last one has
 * completed (then all have: one stream), else nothing yet; wait 1:
 * cudaEventSynchronize on it first. Never while a region is open (its
 * slot must stay). */
static int times_resolve(int wait) {
  if (T.n == 0 || T.open > 0) return 0;
  cudaEvent_t last = NULL;
  for (int i = T.n - 1; i >= 0 && !last; i--)
    if (T.key[i][0]) last = T.ev[2 * i + 1];
  if (last) {
    if (wait) {
      CUDA_CHECK(cudaEventSynchronize(last));
    } else {
      const cudaError_t e = cudaEventQuery(last);
      if (e == cudaErrorNotReady) return 0;
      if (e != cudaSuccess)
        return cu_fail(__FILE__, __LINE__, "cudaEventQuery", cudaGetErrorString(e));
    }
  }
  for (int i = 0; i < T.n; i++) {
    if (!T.key[i][0]) continue; /* abandoned by an error */
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, T.ev[2 * i], T.ev[2 * i + 1]));
    CE_TRY(times_add(T.key[i], ms));
  }
  T.n = 0;
  return 0;
}

/* Room for one more region: the completed ones resolved, else a larger
 * pool (creating events does not wait for the device); past 2^18 regions
 * pending, a wait for the device. */
static int times_room(void) {
  CE_TRY(times_resolve(0));
  if (T.n < T.cap) return 0;
  if (T.cap >= (1 << 18) && T.open == 0) return times_resolve(1);
  const int cap = T.cap ? 2 * T.cap : 2048;
  cudaEvent_t *ev = (cudaEvent_t *)realloc(T.ev, sizeof *ev * 2 * (size_t)cap);
  if (!ev) return ce_err("timing mode: out of memory for %d event pairs", cap);
  T.ev = ev;
  memset(T.ev + 2 * T.cap, 0, sizeof *ev * 2 * (size_t)(cap - T.cap));
  char(*key)[TIMES_KEY] = (char(*)[TIMES_KEY])realloc(T.key, sizeof *key * (size_t)cap);
  if (!key) return ce_err("timing mode: out of memory for %d keys", cap);
  T.key = key;
  const int old = T.cap;
  T.cap = cap; /* times_release destroys what exists of the new events */
  for (int i = 2 * old; i < 2 * cap; i++) CUDA_CHECK(cudaEventCreate(&T.ev[i]));
  return 0;
}

/* Opens a region: *slot is its index, or -1 when the timing mode is off
 * (then times_end does nothing). */
static int times_begin(int *slot) {
  *slot = -1;
  if (!S.times) return 0;
  if (T.n == T.cap) CE_TRY(times_room());
  const int i = T.n;
  T.key[i][0] = 0;
  CUDA_CHECK(cudaEventRecord(T.ev[2 * i], S.stream));
  T.n++;
  T.open++;
  *slot = i;
  return 0;
}

/* Closes region slot (from times_begin) under the key printf makes of fmt. */
__attribute__((format(printf, 2, 3))) static int times_end(int slot, const char *fmt, ...) {
  if (slot < 0) return 0;
  CUDA_CHECK(cudaEventRecord(T.ev[2 * slot + 1], S.stream));
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(T.key[slot], TIMES_KEY, fmt, ap);
  va_end(ap);
  if (!T.key[slot][0]) snprintf(T.key[slot], TIMES_KEY, "?");
  T.open--;
  return 0;
}

static int times_cmp(const void *a, const void *b) {
  const double x = ((const times_entry *)a)->ms, y = ((const times_entry *)b)->ms;
  return x < y ? 1 : x > y ? -1 : 0;
}

extern "C" int nn_cuda_times(void) { return S.users > 0 && S.times; }

static int times_off(void) {
  return ce_err("cuda backend: the timing mode is off (set COEMU_CUDA_TIMES=1 before the "
                "backend's init)");
}

extern "C" int nn_cuda_times_reset(void) {
  if (!nn_cuda_times()) return times_off();
  T.open = 0; /* regions an error left open: abandoned (no key) */
  CE_TRY(times_resolve(1));
  T.ntab = 0;
  return 0;
}

extern "C" int nn_cuda_times_report(FILE *f, const char *label, int steps) {
  if (!nn_cuda_times()) return times_off();
  if (steps < 1) return ce_err("nn_cuda_times_report: %d steps, expected >= 1", steps);
  T.open = 0;
  CE_TRY(times_resolve(1));
  qsort(T.tab, (size_t)T.ntab, sizeof *T.tab, times_cmp);
  double ms = 0;
  long calls = 0;
  for (int i = 0; i < T.ntab; i++) {
    fprintf(f, "%s %s: ms_per_step %.3f calls_per_step %g\n", label, T.tab[i].key,
            T.tab[i].ms / steps, (double)T.tab[i].calls / steps);
    ms += T.tab[i].ms;
    calls += T.tab[i].calls;
  }
  fprintf(f, "%s total: ms_per_step %.3f calls_per_step %g (%d keys, %d steps)\n", label,
          ms / steps, (double)calls / steps, T.ntab, steps);
  fflush(f);
  T.ntab = 0;
  return 0;
}

static int sync_stream(void) {
  CUDA_CHECK(cudaStreamSynchronize(S.stream));
  /* the timing mode: the pairs are complete now, read them without a wait
     of their own once half the pool is used */
  return S.times && T.n >= T.cap / 2 ? times_resolve(0) : 0;
}

/* At least `bytes` of device scratch (contents not kept). */
static void *scratch(size_t bytes) {
  if (bytes <= S.scratch_bytes) return S.scratch;
  size_t want = bytes < 65536 ? 65536 : bytes;
  if (S.scratch) {
    if (sync_stream() < 0) return NULL;
    cudaError_t e = cudaFree(S.scratch);
    S.scratch = NULL;
    S.scratch_bytes = 0;
    if (e != cudaSuccess) {
      cu_fail(__FILE__, __LINE__, "cudaFree(scratch)", cudaGetErrorString(e));
      return NULL;
    }
  }
  cudaError_t e = cudaMalloc(&S.scratch, want);
  if (e != cudaSuccess) {
    S.scratch = NULL;
    cu_fail(__FILE__, __LINE__, "cudaMalloc(scratch)", cudaGetErrorString(e));
    return NULL;
  }
  S.scratch_bytes = want;
  return S.scratch;
}

/* ---- process setup ------------------------------------------------------ */

/* call k without its graph plan (COEMU_CUDNN_API=graph): the legacy
 * algorithm from now on */
static void graph_drop(conv_plan *p, int k) {
  cg_plan_destroy(p->gp[k]);
  cg_graph_destroy(p->gg[k]);
  p->gp[k] = NULL;
  p->gg[k] = NULL;
}

static void destroy_plan(conv_plan *p) {
  for (int k = 0; k < 3; k++) graph_drop(p, k);
  if (p->x) cudnnDestroyTensorDescriptor(p->x);
  if (p->y) cudnnDestroyTensorDescriptor(p->y);
  if (p->b) cudnnDestroyTensorDescriptor(p->b);
  if (p->w) cudnnDestroyFilterDescriptor(p->w);
  if (p->conv) cudnnDestroyConvolutionDescriptor(p->conv);
  memset(p, 0, sizeof *p);
}

static void release_all(void) {
  times_release();
  for (int i = 0; i < S.nplans; i++) destroy_plan(&S.plans[i]);
  free(S.plans);
  S.plans = NULL;
  S.nplans = S.plan_cap = 0;
  if (S.scratch) cudaFree(S.scratch);
  S.scratch = NULL;
  S.scratch_bytes = 0;
  if (S.grads_done) cudaEventDestroy(S.grads_done);
  if (S.comm_done) cudaEventDestroy(S.comm_done);
  if (S.comm) cudaStreamDestroy(S.comm);
  S.grads_done = S.comm_done = NULL;
  S.comm = NULL;
  if (S.blas) cublasDestroy(S.blas);
  if (S.dnn) cudnnDestroy(S.dnn);
  if (S.stream) cudaStreamDestroy(S.stream);
  S.blas = NULL;
  S.dnn = NULL;
  S.stream = NULL;
  S.name[0] = 0;
}

static int open_device(void) {
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess)
    return ce_err("no usable CUDA device: cudaGetDeviceCount: %s", cudaGetErrorString(e));
  if (count < 1) return ce_err("no CUDA device on this machine");
  /* one GPU per rank: COEMU_CUDA_DEVICE, else the node-local rank the MPI
     launcher exports (Open MPI, MPICH, Slurm) modulo the devices */
  int dev = 0;
  long chosen = 0;
  const int set = ce_env_int("COEMU_CUDA_DEVICE", 0, count - 1, "a device index", &chosen);
  if (set < 0) return -1;
  if (set) {
    dev = (int)chosen;
  } else {
    static const char *const local[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID",
                                        "SLURM_LOCALID", "PMI_LOCAL_RANK"};
    for (int i = 0; i < 4; i++) {
      const char *v = getenv(local[i]);
      char *end;
      long r = v && *v ? strtol(v, &end, 10) : -1;
      if (r >= 0 && v && !*end) {
        dev = (int)(r % count);
        break;
      }
    }
  }
  CUDA_CHECK(cudaSetDevice(dev));
  cudaDeviceProp prop;
  CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
  S.device = dev;
  S.nsm = prop.multiProcessorCount;
  snprintf(S.name, sizeof S.name, "%.200s, sm_%d%d, %.1f GiB", prop.name, prop.major, prop.minor,
           (double)prop.totalGlobalMem / (1024.0 * 1024 * 1024));
  CUDA_CHECK(cudaStreamCreateWithFlags(&S.stream, cudaStreamNonBlocking));
  cg_hold_nvrtc(); /* before cuDNN can load it: the legacy API checks engines too */
  CUDNN_CHECK(cudnnCreate(&S.dnn));
  CUDNN_CHECK(cudnnSetStream(S.dnn, S.stream));
  CUBLAS_CHECK(cublasCreate(&S.blas));
  CUBLAS_CHECK(cublasSetStream(S.blas, S.stream));
  CUBLAS_CHECK(cublasSetPointerMode(S.blas, CUBLAS_POINTER_MODE_HOST));
  CUBLAS_CHECK(cublasSetMathMode(S.blas, S.tf32 ? CUBLAS_TF32_TENSOR_OP_MATH
                                                : CUBLAS_DEFAULT_MATH));
  /* the switches (docs/trainer.md): unset is the default; the first bad one is the error */
  S.graph = API_LEGACY; /* (ce_env_word leaves it as it is when unset) */
  if ((S.sums_only = ce_env_switch("COEMU_CUDNN_ALGOS", "any", "sums", "any or sums")) < 0 ||
      (S.any_order = ce_env_switch("COEMU_CUDNN_DETERMINISTIC", "1", "0",
                                   "1 (the default: the fastest deterministic algorithm) or 0 "
                                   "(the fastest)")) < 0 ||
      (S.times = ce_env_switch("COEMU_CUDA_TIMES", "0", "1",
                               "1 (time every group of device work, nn_cuda_times_report) or "
                               "0")) < 0 ||
      (S.bf16_emulated = ce_env_switch("COEMU_BF16", "native", "emulated",
                                       "native or emulated")) < 0 ||
      ce_env_word("COEMU_CUDNN_API", API_WORDS, 3,
                  "legacy (the default: cudnnFind and the cudnnConvolution* calls), graph "
                  "(cuDNN's graph API for the float32 and tf32 convolutions) or auto (per "
                  "convolution call, the faster of the two as timed when it is planned)",
                  &S.graph) < 0)
    return -1;
  const char *vb = getenv("COEMU_CUDNN_VERBOSE");
  S.verbose = vb && *vb && strcmp(vb, "0");
  const char *rf = getenv("COEMU_CUDNN_REFUSE_BF16");
  S.refuse_bf16 = rf && *rf && strcmp(rf, "0");
  S.graph_planned = S.graph_fallbacks = S.graph_declined = 0;
  long configs = CG_DEFAULT_MAX_CONFIGS;
  if (ce_env_int("COEMU_CUDNN_GRAPH_CONFIGS", 1, 256,
                 "a number of engine configs timed per convolution call with "
                 "COEMU_CUDNN_API=graph", &configs) < 0)
    return -1;
  S.graph_configs = (int)configs;
  if (!S.ws_limit_set) {
    long mib = CG_TRAINER_WORKSPACE_MIB;
    if (ce_env_int("COEMU_CUDNN_WORKSPACE_MB", 0, 1L << 20, "a workspace limit in MiB", &mib) < 0)
      return -1;
    S.ws_limit = (size_t)mib << 20;
  }
  return 0;
}

static int cuda_init(int threads) {
  (void)threads;
  if (S.users > 0) {
    S.users++;
    return 0;
  }
  if (open_device() < 0) {
    release_all();
    return -1;
  }
  S.users = 1;
  return 0;
}

static void feed_release(void); /* the input feed's copy stream (below) */

static void cuda_finish(void) {
  if (S.users == 0 || --S.users > 0) return;
  cudaStreamSynchronize(S.stream);
  if (S.comm) cudaStreamSynchronize(S.comm);
  feed_release();
  release_all();
}

/* ---- memory ------------------------------------------------------------- */

static void *cuda_alloc(size_t bytes) {
  void *p = NULL;
  cudaError_t e = cudaMalloc(&p, bytes ? bytes : 256); /* 256-byte aligned */
  if (e != cudaSuccess) {
    cudaGetLastError(); /* clear the sticky-free error state */
    ce_err("out of device memory allocating %zu bytes: cudaMalloc: %s", bytes,
           cudaGetErrorString(e));
    return NULL;
  }
  e = cudaMemsetAsync(p, 0, bytes, S.stream);
  if (e != cudaSuccess) {
    cu_fail(__FILE__, __LINE__, "cudaMemsetAsync", cudaGetErrorString(e));
    cudaFree(p);
    return NULL;
  }
  return p;
}

static void cuda_free(void *p) {
  if (!p) return;
  cudaStreamSynchronize(S.stream); /* queued work may still use it */
  if (S.comm) cudaStreamSynchronize(S.comm);
  cudaFree(p);
}

/* the timing mode's key of a copy or memset: its size class (powers of 4
   from 1 MiB), so that the few large ones stand apart from the many small */
static const char *size_class(size_t bytes) {
  static const char *const c[] = {"< 1 MiB", "1-4 MiB", "4-16 MiB", "16-64 MiB", "64-256 MiB",
                                  ">= 256 MiB"};
  int k = 0;
  for (size_t b = (size_t)1 << 20; k < 5 && bytes >= b; b <<= 2) k++;
  return c[k];
}

/* host memory that is not page-locked goes through the driver's staging
   buffers: slower, and the copy ends when the last chunk is staged */
static int cuda_upload(void *dst, const void *src, size_t bytes) {
  if (!bytes) return 0;
  int tm;
  CE_TRY(times_begin(&tm));
  CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, S.stream));
  CE_TRY(times_end(tm, "copy h2d (upload) %s", size_class(bytes)));
  return sync_stream();
}

static int cuda_download(void *dst, const void *src, size_t bytes) {
  if (!bytes) return 0;
  int tm;
  CE_TRY(times_begin(&tm));
  CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, S.stream));
  CE_TRY(times_end(tm, "copy d2h (download) %s", size_class(bytes)));
  return sync_stream();
}

static int cuda_copy(void *dst, const void *src, size_t bytes) {
  if (!bytes) return 0;
  int tm;
  CE_TRY(times_begin(&tm));
  CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, S.stream));
  return times_end(tm, "copy d2d %s", size_class(bytes));
}

static int cuda_zero(void *p, size_t bytes) {
  if (!bytes) return 0;
  int tm;
  CE_TRY(times_begin(&tm));
  CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, S.stream));
  return times_end(tm, "memset zero %s", size_class(bytes));
}

/* ---- reductions --------------------------------------------------------- */

/* The sum of v over the block (THREADS threads), valid in thread 0; a fixed
 * tree, so the same order every time. */
__device__ static double block_sum(double v, double *sh) {
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int o = THREADS / 2; o > 0; o >>= 1) {
    if ((int)threadIdx.x < o) sh[threadIdx.x] += sh[threadIdx.x + o];
    __syncthreads();
  }
  double r = sh[0];
  __syncthreads();
  return r;
}

/* out[k] = sum of part[k*nb .. (k+1)*nb) in order, k < nk (one thread each). */
__global__ static void k_sum_rows(int nk, int nb, const double *part, double *out) {
  int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= nk) return;
  double s = 0;
  for (int b = 0; b < nb; b++) s += part[(long)k * nb + b];
  out[k] = s;
}

/* ---- elementwise layers ------------------------------------------------- */

#define GRID_STRIDE(i, n) \
  for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (long)gridDim.x * blockDim.x)

__global__ static void k_relu(long n, const float *x, float *y) {
  GRID_STRIDE(i, n) y[i] = x[i] > 0 ? x[i] : 0;
}
__global__ static void k_relu_back(long n, const float *y, const float *g, float *dx) {
  GRID_STRIDE(i, n) dx[i] += y[i] > 0 ? g[i] : 0;
}
__global__ static void k_tanh(long n, const float *x, float *y) {
  GRID_STRIDE(i, n) y[i] = tanhf(x[i]);
}
__global__ static void k_tanh_back(long n, const float *y, const float *g, float *dx) {
  GRID_STRIDE(i, n) dx[i] += g[i] * (1 - y[i] * y[i]);
}
__global__ static void k_add(long n, const float *a, const float *b, float *y) {
  GRID_STRIDE(i, n) y[i] = a[i] + b[i];
}
__global__ static void k_accum(long n, const float *g, float *d) {
  GRID_STRIDE(i, n) d[i] += g[i];
}
/* rows x len: d[r*dp + i] += g[r*gp + i] (concat / slice backward) */
__global__ static void k_accum_rows(int rows, long len, const float *g, long gp, float *d, long dp) {
  GRID_STRIDE(i, (long)rows * len) {
    long r = i / len, j = i % len;
    d[r * dp + j] += g[r * gp + j];
  }
}
__global__ static void k_div(long n, float *g, float world) {
  GRID_STRIDE(i, n) g[i] /= world;
}

/* MaxPool3d, kernel = stride = k, floor mode; ties to the first (strict >),
 * the window order of layers_cpu.c's window_argmax. */
__device__ static long window_argmax(const float *x, int h, int w, int k, int od, int oh, int ow) {
  long best = ((long)od * k * h + (long)oh * k) * w + (long)ow * k;
  for (int a = 0; a < k; a++)
    for (int b = 0; b < k; b++)
      for (int c = 0; c < k; c++) {
        long i = (((long)od * k + a) * h + (long)oh * k + b) * w + (long)ow * k + c;
        if (x[i] > x[best]) best = i;
      }
  return best;
}
__global__ static void k_maxpool(int nc, int d, int h, int w, int k, const float *x, float *y) {
  const int od = d / k, oh = h / k, ow = w / k;
  const long S = (long)d * h * w, OS = (long)od * oh * ow;
  GRID_STRIDE(i, (long)nc * OS) {
    long q = i / OS, r = i % OS;
    int xx = (int)(r % ow), yy = (int)((r / ow) % oh), z = (int)(r / ((long)ow * oh));
    const float *xq = x + q * S;
    y[i] = xq[window_argmax(xq, h, w, k, z, yy, xx)];
  }
}
/* every input element is in one window at most: no two threads add to one dx */
__global__ static void k_maxpool_back(int nc, int d, int h, int w, int k, const float *x,
                                      const float *dy, float *dx) {
  const int od = d / k, oh = h / k, ow = w / k;
  const long S = (long)d * h * w, OS = (long)od * oh * ow;
  GRID_STRIDE(i, (long)nc * OS) {
    long q = i / OS, r = i % OS;
    int xx = (int)(r % ow), yy = (int)((r / ow) % oh), z = (int)(r / ((long)ow * oh));
    dx[q * S + window_argmax(x + q * S, h, w, k, z, yy, xx)] += dy[i];
  }
}

/* nearest upsampling by (fd, fh, fw) */
__global__ static void k_upsample(int nc, int d, int h, int w, int fd, int fh, int fw,
                                  const float *x, float *y) {
  const long OD = (long)d * fd, OH = (long)h * fh, OW = (long)w * fw, OS = OD * OH * OW;
  GRID_STRIDE(i, (long)nc * OS) {
    long q = i / OS, r = i % OS;
    long xx = r % OW, yy = (r / OW) % OH, z = r / (OW * OH);
    y[i] = x[q * d * h * w + ((z / fd) * h + yy / fh) * w + xx / fw];
  }
}
/* one thread per input element, adding its fd*fh*fw sources in the CPU's
 * order (z, then y, then x ascending) */
__global__ static void k_upsample_back(int nc, int d, int h, int w, int fd, int fh, int fw,
                                       const float *dy, float *dx) {
  const long S = (long)d * h * w, OH = (long)h * fh, OW = (long)w * fw, OS = S * fd * fh * fw;
  GRID_STRIDE(i, (long)nc * S) {
    long q = i / S, r = i % S;
    long xx = r % w, yy = (r / w) % h, z = r / ((long)w * h);
    float acc = dx[i];
    for (int a = 0; a < fd; a++)
      for (int b = 0; b < fh; b++) {
        const float *src = dy + q * OS + ((z * fd + a) * OH + yy * fh + b) * OW + xx * fw;
        for (int c = 0; c < fw; c++) acc += src[c];
      }
    dx[i] = acc;
  }
}

/* ---- BatchNorm ---------------------------------------------------------- */

/* Per-channel partial sums over (N, S): grid (nb, C), block THREADS; block b
 * of channel ch takes positions j = b*THREADS + t, stepping nb*THREADS, of
 * every sample. mode 0: sum x; 1: sum (x - mu[ch])^2; 2: sum dy and sum
 * dy * ((x - mu[ch]) * is[ch]). part[(k*C + ch)*nb + b]. */
__global__ static void k_bn_partial(int mode, int n, int c, long s, const float *x, const float *dy,
                                    const double *mu, const double *is, int nb, double *part) {
  __shared__ double sh[THREADS];
  const int ch = blockIdx.y, b = blockIdx.x;
  double a0 = 0, a1 = 0;
  const double m = mode ? mu[ch] : 0, v = mode == 2 ? is[ch] : 0;
  for (int i = 0; i < n; i++) {
    const long base = ((long)i * c + ch) * s;
    for (long j = (long)b * THREADS + threadIdx.x; j < s; j += (long)nb * THREADS) {
      const double xv = x[base + j];
      if (mode == 0) {
        a0 += xv;
      } else if (mode == 1) {
        const double dv = xv - m;
        a0 += dv * dv;
      } else {
        const float g = dy[base + j];
        a0 += g;
        a1 += g * ((xv - m) * v);
      }
    }
  }
  a0 = block_sum(a0, sh);
  if (mode == 2) a1 = block_sum(a1, sh);
  if (threadIdx.x == 0) {
    part[(long)ch * nb + b] = a0;
    if (mode == 2) part[((long)c + ch) * nb + b] = a1;
  }
}

__global__ static void k_div_f64(int n, double *v, double by) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) v[i] /= by;
}

/* the training-mode coefficients of channel ch (bn_channel_apply): scale,
 * shift, the running statistics, save (mean, invstd) */
__global__ static void k_bn_coef_train(int c, const float *gamma, const float *beta,
                                       const double *mean, const double *sq, double m,
                                       float *rmean, float *rvar, float momentum, float eps,
                                       float *save, float *scale, float *shift) {
  int ch = blockIdx.x * blockDim.x + threadIdx.x;
  if (ch >= c) return;
  double mu = mean[ch], var = sq[ch] / m, invstd = 1.0 / sqrt(var + eps);
  scale[ch] = (float)(gamma[ch] * invstd);
  shift[ch] = (float)(beta[ch] - mu * gamma[ch] * invstd);
  rmean[ch] = (float)((1 - momentum) * rmean[ch] + momentum * mu);
  rvar[ch] = (float)((1 - momentum) * rvar[ch] + momentum * var * m / (m - 1));
  save[ch] = (float)mu;
  save[c + ch] = (float)invstd;
}

__global__ static void k_bn_coef_eval(int c, const float *gamma, const float *beta,
                                      const float *rmean, const float *rvar, float eps,
                                      float *scale, float *shift) {
  int ch = blockIdx.x * blockDim.x + threadIdx.x;
  if (ch >= c) return;
  double invstd = 1.0 / sqrt((double)rvar[ch] + eps);
  scale[ch] = (float)(gamma[ch] * invstd);
  shift[ch] = (float)(beta[ch] - rmean[ch] * gamma[ch] * invstd);
}

__global__ static void k_bn_affine(long total, int c, long s, const float *x, const float *scale,
                                   const float *shift, float *y) {
  GRID_STRIDE(i, total) {
    int ch = (int)((i / s) % c);
    y[i] = x[i] * scale[ch] + shift[ch];
  }
}

/* (mu, is) per channel in double: from save (training) or the running
 * statistics (evaluation) */
__global__ static void k_bn_state(int c, int train, const float *save, const float *rmean,
                                  const float *rvar, float eps, double *mu, double *is) {
  int ch = blockIdx.x * blockDim.x + threadIdx.x;
  if (ch >= c) return;
  mu[ch] = train ? save[ch] : rmean[ch];
  is[ch] = train ? save[c + ch] : 1.0 / sqrt((double)rvar[ch] + eps);
}

/* dgamma += (float)sum dy*xhat, dbeta += (float)sum dy */
__global__ static void k_bn_param_grads(int c, const double *sums, float *dgamma, float *dbeta) {
  int ch = blockIdx.x * blockDim.x + threadIdx.x;
  if (ch >= c) return;
  dgamma[ch] += (float)sums[c + ch];
  dbeta[ch] += (float)sums[ch];
}

/* dx += (float)(gamma*is*(dy - mdy - xhat*mdyx)), mdy = sum dy / m, mdyx =
 * sum dy*xhat / m (sums NULL: evaluation mode, both 0) */
__global__ static void k_bn_dx(long total, int c, long s, const float *x, const float *gamma,
                               const double *mu, const double *is, const float *dy,
                               const double *sums, double m, float *dx) {
  GRID_STRIDE(i, total) {
    int ch = (int)((i / s) % c);
    double a = gamma[ch] * is[ch];
    double mdy = sums ? sums[ch] / m : 0, mdyx = sums ? sums[c + ch] / m : 0;
    double xhat = (x[i] - mu[ch]) * is[ch];
    dx[i] += (float)(a * (dy[i] - mdy - xhat * mdyx));
  }
}

/* blocks per channel for the partial sums: enough blocks over all channels
 * to fill the device, none idle */
static int bn_blocks(int c, long s) {
  long want = (4L * (S.nsm > 0 ? S.nsm : 80) + c - 1) / c;
  long most = (s + THREADS - 1) / THREADS;
  if (want > most) want = most;
  if (want > 1024) want = 1024;
  return want < 1 ? 1 : (int)want;
}

/* Per-channel sums (mode as k_bn_partial) into out[k*C + ch], device. */
static int bn_sums(int mode, int n, int c, long s, const float *x, const float *dy,
                   const double *mu, const double *is, double *part, double *out) {
  const int nb = bn_blocks(c, s), nk = mode == 2 ? 2 : 1;
  dim3 grid(nb, c);
  k_bn_partial<<<grid, THREADS, 0, S.stream>>>(mode, n, c, s, x, dy, mu, is, nb, part);
  KERNEL_CHECK("k_bn_partial");
  k_sum_rows<<<(nk * c + 63) / 64, 64, 0, S.stream>>>(nk * c, nb, part, out);
  KERNEL_CHECK("k_sum_rows");
  return 0;
}

/* The BatchNorm scratch: partials (2 C nb), then 6C+2 doubles of sums, then
 * 2C floats of coefficients. */
typedef struct {
  double *part, *sum, *sq, *mu, *is;
  float *scale, *shift;
} bn_scratch;

static int bn_scratch_get(int c, long s, bn_scratch *b) {
  const size_t nb = (size_t)bn_blocks(c, s);
  const size_t nd = 2 * (size_t)c * nb + 8 * (size_t)c + 2;
  char *p = (char *)scratch(sizeof(double) * nd + sizeof(float) * 2 * (size_t)c);
  if (!p) return -1;
  double *d = (double *)p;
  b->part = d;
  b->sum = d + 2 * (size_t)c * nb; /* 2C + 1: sums of dy, dy*xhat, count */
  b->sq = b->sum + 2 * (size_t)c + 1;
  b->mu = b->sq + (size_t)c;
  b->is = b->mu + (size_t)c;
  b->scale = (float *)(d + nd);
  b->shift = b->scale + c;
  return 0;
}

/* Host staging of a reducer sum: n doubles of device memory dev summed
 * across replicas (extra: values appended on the host, summed too; NULL:
 * none). The summed values go back to dev (n) and to host (n + nextra). */
static int reducer_sum_staged(const nn_reducer *r, double *dev, size_t n, double *host,
                              size_t nextra, const char *what) {
  if (r->dev_sum_f64) { /* in place on the device, extras appended there (room: bn_scratch) */
    if (nextra)
      CUDA_CHECK(cudaMemcpyAsync(dev + n, host + n, sizeof(double) * nextra, cudaMemcpyHostToDevice,
                                 S.stream));
    if (r->dev_sum_f64(r->ctx, dev, n + nextra, S.stream) < 0)
      return ce_err_prefix("summing %s over %d replicas", what, r->world);
    if (!nextra) return 0; /* the host needs only the extras (the counts) */
    CUDA_CHECK(cudaMemcpyAsync(host + n, dev + n, sizeof(double) * nextra, cudaMemcpyDeviceToHost,
                               S.stream));
    return sync_stream();
  }
  CUDA_CHECK(cudaMemcpyAsync(host, dev, sizeof(double) * n, cudaMemcpyDeviceToHost, S.stream));
  CE_TRY(sync_stream());
  if (r->sum_f64(r->ctx, host, n + nextra) < 0)
    return ce_err_prefix("summing %s over %d replicas", what, r->world);
  CUDA_CHECK(cudaMemcpyAsync(dev, host, sizeof(double) * n, cudaMemcpyHostToDevice, S.stream));
  return sync_stream(); /* host is freed by the caller */
}

static int bn_forward(nn_net *net, nn_node *nd, int train) {
  const int N = net->batch, C = nd->c;
  const long Sv = (long)nd->d * nd->h * nd->w, total = (long)N * C * Sv;
  const float *x = net->nodes[nd->in[0]].out;
  nn_param *P = net->params;
  float *gamma = P[nd->param[0]].w, *beta = P[nd->param[1]].w, *rmean = P[nd->param[2]].w,
        *rvar = P[nd->param[3]].w;
  bn_scratch b;
  CE_TRY(bn_scratch_get(C, Sv, &b));
  const unsigned cg = (unsigned)(C + 63) / 64;
  if (!train) {
    k_bn_coef_eval<<<cg, 64, 0, S.stream>>>(C, gamma, beta, rmean, rvar, nd->eps, b.scale, b.shift);
    KERNEL_CHECK("k_bn_coef_eval");
  } else {
    const nn_reducer *r = nn_get_reducer(net);
    const int sync = r && !net->reducer.local_batchnorm;
    double m = (double)N * Sv;
    CE_TRY(bn_sums(0, N, C, Sv, x, NULL, NULL, NULL, b.part, b.sum));
    if (sync) {
      double *host = (double *)ce_malloc_array((size_t)C + 1, sizeof(double), "BatchNorm sums");
      if (!host) return -1;
      host[C] = m; /* the local value count, summed with the channel sums */
      int rc = reducer_sum_staged(r, b.sum, (size_t)C, host, 1, "BatchNorm statistics");
      m = host[C];
      free(host);
      CE_TRY(rc);
      if (m < 2)
        return ce_err("batch statistics need more than 1 value per channel (%.0f over %d replicas)",
                      m, r->world);
    } else if (m < 2) {
      return ce_err("batch statistics need more than 1 value per channel (batch %d x %ld)", N, Sv);
    }
    CUDA_CHECK(cudaMemcpyAsync(b.mu, b.sum, sizeof(double) * C, cudaMemcpyDeviceToDevice, S.stream));
    k_div_f64<<<cg, 64, 0, S.stream>>>(C, b.mu, m); /* mean = sum / m, as the CPU in double */
    KERNEL_CHECK("k_div_f64");
    CE_TRY(bn_sums(1, N, C, Sv, x, NULL, b.mu, NULL, b.part, b.sq));
    if (sync) {
      double *host = (double *)ce_malloc_array((size_t)C, sizeof(double), "BatchNorm deviations");
      if (!host) return -1;
      int rc = reducer_sum_staged(r, b.sq, (size_t)C, host, 0, "BatchNorm deviations");
      free(host);
      CE_TRY(rc);
    }
    k_bn_coef_train<<<cg, 64, 0, S.stream>>>(C, gamma, beta, b.mu, b.sq, m, rmean, rvar,
                                             nd->momentum, nd->eps, nd->save, b.scale, b.shift);
    KERNEL_CHECK("k_bn_coef_train");
  }
  k_bn_affine<<<grid_for(total), THREADS, 0, S.stream>>>(total, C, Sv, x, b.scale, b.shift, nd->out);
  KERNEL_CHECK("k_bn_affine");
  return 0;
}

static int bn_backward(nn_net *net, nn_node *nd, float *dx) {
  const int N = net->batch, C = nd->c;
  const long Sv = (long)nd->d * nd->h * nd->w, total = (long)N * C * Sv;
  const float *x = net->nodes[nd->in[0]].out;
  nn_param *P = net->params;
  const int train = net->train;
  const nn_reducer *r = nn_get_reducer(net);
  const int sync = train && r && !net->reducer.local_batchnorm;
  bn_scratch b;
  CE_TRY(bn_scratch_get(C, Sv, &b));
  const unsigned cg = (unsigned)(C + 63) / 64;
  k_bn_state<<<cg, 64, 0, S.stream>>>(C, train, nd->save, P[nd->param[2]].w, P[nd->param[3]].w,
                                      nd->eps, b.mu, b.is);
  KERNEL_CHECK("k_bn_state");
  CE_TRY(bn_sums(2, N, C, Sv, x, nd->grad, b.mu, b.is, b.part, b.sum));
  k_bn_param_grads<<<cg, 64, 0, S.stream>>>(C, b.sum, P[nd->param[0]].g, P[nd->param[1]].g);
  KERNEL_CHECK("k_bn_param_grads");
  if (!dx) return 0;
  double m = (double)N * Sv;
  if (sync) { /* the same graph everywhere: every replica skips or calls alike */
    double *host = (double *)ce_malloc_array(2 * (size_t)C + 1, sizeof(double), "BatchNorm gradient sums");
    if (!host) return -1;
    host[2 * C] = m;
    int rc = reducer_sum_staged(r, b.sum, 2 * (size_t)C, host, 1, "BatchNorm gradients");
    m = host[2 * C];
    free(host);
    CE_TRY(rc);
  }
  k_bn_dx<<<grid_for(total), THREADS, 0, S.stream>>>(total, C, Sv, x, P[nd->param[0]].w, b.mu,
                                                      b.is, nd->grad, train ? b.sum : NULL, m, dx);
  KERNEL_CHECK("k_bn_dx");
  return 0;
}

/* ---- convolutions (cuDNN) ----------------------------------------------- */

static conv_shape node_conv_shape(const nn_net *net, const nn_node *nd) {
  const nn_node *in = &net->nodes[nd->in[0]];
  conv_shape s = {net->batch, in->c, in->d, in->h, in->w, nd->c, nd->d, nd->h, nd->w,
                  nd->k.v[0], nd->k.v[1], nd->k.v[2], nd->s.v[0], nd->s.v[1], nd->s.v[2],
                  nd->p.v[0], nd->p.v[1], nd->p.v[2]};
  return s;
}

/* Depth 1 in and out with a depth-1 kernel: a 2-D convolution (4-D
 * descriptors, cuDNN's 2-D kernels). */
static int is_2d(const conv_shape *s) {
  return s->d == 1 && s->od == 1 && s->kd == 1 && s->sd == 1 && s->pd == 0;
}

static int set_tensor(cudnnTensorDescriptor_t t, int n, int c, int d, int h, int w, int two,
                      cudnnDataType_t type = CUDNN_DATA_FLOAT) {
  if (two) {
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(t, CUDNN_TENSOR_NCHW, type, n, c, h, w));
  } else {
    int dims[5] = {n, c, d, h, w};
    int str[5] = {c * d * h * w, d * h * w, h * w, w, 1};
    CUDNN_CHECK(cudnnSetTensorNdDescriptor(t, type, 5, dims, str));
  }
  return 0;
}

/* Algorithms whose every output is a plain float sum of the products (no
 * FFT or Winograd transform): the ones the elementwise bound of the parity
 * harness (gamma_n x the sum of magnitudes) holds for, chosen with
 * COEMU_CUDNN_ALGOS=sums. */
static int plain_sum(cudnnConvolutionFwdAlgo_t a) {
  return a == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM ||
         a == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM ||
         a == CUDNN_CONVOLUTION_FWD_ALGO_GEMM || a == CUDNN_CONVOLUTION_FWD_ALGO_DIRECT;
}
static int plain_sum(cudnnConvolutionBwdDataAlgo_t a) {
  return a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_0 || a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_1;
}
static int plain_sum(cudnnConvolutionBwdFilterAlgo_t a) {
  return a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0 || a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1 ||
         a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3;
}

/* The fastest result within the workspace limit: deterministic ones first
 * (repeatable runs), then the others; in float32 mode only those cuDNN
 * reports as FMA math (DEFAULT_MATH may use TF32 on Ampere and later), and
 * only where none is, DEFAULT_MATH ones; -1 if none fits. */
template <typename Perf>
static int pick_from(const Perf *r, int n, size_t limit, int tf32, const int *skip) {
  for (int pass = S.any_order ? 1 : 0; pass < 3; pass++)
    for (int i = 0; i < n; i++) {
      if (skip && skip[i]) continue;
      if (r[i].status != CUDNN_STATUS_SUCCESS || r[i].memory > limit) continue;
      if (S.sums_only && !plain_sum(r[i].algo)) continue;
      if (!tf32 && r[i].mathType != CUDNN_FMA_MATH &&
          (pass < 2 || r[i].mathType != CUDNN_DEFAULT_MATH))
        continue;
      if (pass == 0 && r[i].determinism != CUDNN_DETERMINISTIC) continue;
      return i;
    }
  return -1;
}

/* The math type a call runs with: the one its algorithm was timed with,
 * except that float32 without tensor ops always runs FMA math (DEFAULT math
 * may use TF32 on Ampere and later). */
static cudnnMathType_t run_math(cudnnMathType_t timed, int tensor_ops) {
  return tensor_ops ? timed : CUDNN_FMA_MATH;
}

/* The choice (pick_from), and every other acceptable result, in the order
 * the choice would take them, into the plan's alternatives of call k; the
 * timed table on stderr under COEMU_CUDNN_VERBOSE. */
template <typename Perf>
static int pick(const Perf *r, int n, size_t limit, int tf32, conv_plan *p, int k) {
  int skip[64] = {0};
  if (n > 64) n = 64;
  const int first = pick_from(r, n, limit, tf32, skip);
  p->nalt[k] = 0;
  if (first >= 0) {
    p->math[k] = run_math(r[first].mathType, tf32);
    p->legacy_ms[k] = r[first].time;
    skip[first] = 1;
    for (int i; p->nalt[k] < 16 && (i = pick_from(r, n, limit, tf32, skip)) >= 0; skip[i] = 1) {
      p->alt[k][p->nalt[k]].algo = (int)r[i].algo;
      p->alt[k][p->nalt[k]].math = run_math(r[i].mathType, tf32);
      p->alt[k][p->nalt[k]++].mem = r[i].memory;
    }
  }
  if (S.verbose) {
    static const char *const call[3] = {"forward", "backward filter", "backward data"};
    const conv_shape *s = &p->s;
    fprintf(stderr, "coemu cudnn: %dx%dx%dx%dx%d -> %d, kernel %dx%dx%d, stride %dx%dx%d, %s%s%s: "
            "%s:", s->n, s->cin, s->d, s->h, s->w, s->cout, s->kd, s->kh, s->kw, s->sd, s->sh,
            s->sw, p->bf16 ? "bf16" : tf32 ? "tf32" : "float32", S.sums_only ? ", sums only" : "",
            S.any_order ? ", any order" : "", call[k]);
    for (int i = 0; i < n; i++)
      if (r[i].status == CUDNN_STATUS_SUCCESS)
        fprintf(stderr, " %s%d %.3f ms %.0f MiB%s%s", i == first ? "*" : "", (int)r[i].algo,
                r[i].time, r[i].memory / 1048576.0,
                r[i].determinism == CUDNN_DETERMINISTIC ? "" : " nondet",
                r[i].mathType == CUDNN_FMA_MATH ? " fma" : r[i].mathType == CUDNN_DEFAULT_MATH
                                                             ? " default"
                                                             : " tensor");
    fprintf(stderr, "\n");
  }
  return first;
}

/* A convolution call of the plan (k as in conv_plan.alt) through call(),
 * which reads the plan's current algorithm: where cuDNN refuses it at run
 * time, the plan moves to its next alternative that fits the workspace of
 * ws bytes, once and for all, and the call is made again. A native bf16
 * plan with no alternative left returns CONV_REFUSED (p->refused[k] set):
 * the caller runs that call on the emulated arithmetic instead. */
#define CONV_REFUSED 1
template <typename Call>
static int conv_call(conv_plan *p, int k, size_t ws, const char *what, Call call) {
  if (p->bf16 && S.refuse_bf16) { /* the fallback's test (trainer_gpu_check) */
    p->refused[k] = 1;
    return CONV_REFUSED;
  }
  for (;;) {
    CUDNN_CHECK(cudnnSetConvolutionMathType(p->conv, p->math[k]));
    const cudnnStatus_t st = call();
    if (st == CUDNN_STATUS_SUCCESS) return 0;
    int next = -1;
    if (st == CUDNN_STATUS_BAD_PARAM || st == CUDNN_STATUS_NOT_SUPPORTED)
      while (next < 0 && p->nalt[k] > 0) {
        if (p->alt[k][0].mem <= ws) next = p->alt[k][0].algo, p->math[k] = p->alt[k][0].math;
        p->nalt[k]--;
        memmove(p->alt[k], p->alt[k] + 1, sizeof p->alt[k][0] * (size_t)p->nalt[k]);
      }
    const int cur = k == 0 ? (int)p->fwd : k == 1 ? (int)p->bwd_filter : (int)p->bwd_data;
    if (next < 0 && p->bf16 && (st == CUDNN_STATUS_BAD_PARAM || st == CUDNN_STATUS_NOT_SUPPORTED)) {
      fprintf(stderr, "coemu: cuDNN refused every bf16 algorithm for %s (%s); this shape runs "
              "that call as float32 products of bf16-rounded operands, the result rounded to "
              "bf16, from now on\n", what, cudnnGetErrorString(st));
      p->refused[k] = 1;
      return CONV_REFUSED;
    }
    if (next < 0) {
      cu_fail(__FILE__, __LINE__, what, cudnnGetErrorString(st));
      return ce_err_prefix("cuDNN algorithm %d (no other acceptable one left)", cur);
    }
    fprintf(stderr, "coemu: cuDNN refused algorithm %d for %s (%s); this shape uses %d from now on\n",
            cur, what, cudnnGetErrorString(st), next);
    if (k == 0) p->fwd = (cudnnConvolutionFwdAlgo_t)next;
    else if (k == 1) p->bwd_filter = (cudnnConvolutionBwdFilterAlgo_t)next;
    else p->bwd_data = (cudnnConvolutionBwdDataAlgo_t)next;
  }
}


/* The timing mode's key of call k (as conv_plan.alt) of plan p, e.g. "conv3d
 * fwd 32x7x64x64x64->16 k3x3x3 s1x1x1 algo 1 fma": the input (n, cin, d, h,
 * w), the output channels, kernel, stride, the algorithm the call ran with
 * (after any refusal) and its math type; " bf16" for bf16 tensors; a graph
 * engine (COEMU_CUDNN_API=graph) as "engine 27 graph" (+ " tf32"); tail:
 * how it ran (a refusal, the bf16 fallback). */
static int times_end_conv(int slot, const conv_plan *p, int k, const char *tail) {
  if (slot < 0) return 0;
  static const char *const call[3] = {"fwd", "bwd filter", "bwd data"};
  const conv_shape *s = &p->s;
  if (p->gp[k]) /* a graph engine (COEMU_CUDNN_API=graph): "engine 27 graph" */
    return times_end(slot, "conv%dd %s %dx%dx%dx%dx%d->%d k%dx%dx%d s%dx%dx%d engine %lld graph%s%s",
                     is_2d(s) ? 2 : 3, call[k], s->n, s->cin, s->d, s->h, s->w, s->cout, s->kd,
                     s->kh, s->kw, s->sd, s->sh, s->sw, (long long)cg_plan_info(p->gp[k])->engine,
                     p->tf32 ? " tf32" : "", tail);
  const int algo = k == 0 ? (int)p->fwd : k == 1 ? (int)p->bwd_filter : (int)p->bwd_data;
  return times_end(slot, "conv%dd %s %dx%dx%dx%dx%d->%d k%dx%dx%d s%dx%dx%d algo %d %s%s%s",
                   is_2d(s) ? 2 : 3, call[k], s->n, s->cin, s->d, s->h, s->w, s->cout, s->kd,
                   s->kh, s->kw, s->sd, s->sh, s->sw, algo, cg_math_name(p->math[k]),
                   p->bf16 ? " bf16" : "", tail);
}

/* ... and of a convolution's bias (forward: added to y; backward: its
 * gradient, the sum of dy), keyed by the output (n, cout, od, oh, ow) */
static int times_end_bias(int slot, const conv_plan *p, const char *dir, const char *tail) {
  if (slot < 0) return 0;
  const conv_shape *s = &p->s;
  return times_end(slot, "conv%dd bias %s %dx%dx%dx%dx%d%s", is_2d(s) ? 2 : 3, dir, s->n, s->cout,
                   s->od, s->oh, s->ow, tail);
}

/* The legacy algorithm of call k (as conv_plan.alt) within lim bytes of
 * workspace: cudnnFind* times every algorithm on buffers it allocates, pick
 * chooses (and keeps the alternatives); grow: p->ws grows to its workspace
 * (at plan creation; a later choice, after a graph call failed, stays
 * within the workspace the net has). */
static int legacy_find(conv_plan *p, int k, size_t lim, int grow) {
  const int tensor_ops = p->tf32 || p->bf16;
  CUDNN_CHECK(cudnnSetConvolutionMathType(p->conv, tensor_ops ? CUDNN_TENSOR_OP_MATH
                                                              : CUDNN_FMA_MATH));
  int got = 0, i;
  size_t mem;
  if (k == 0) {
    cudnnConvolutionFwdAlgoPerf_t fr[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
    CUDNN_CHECK(cudnnFindConvolutionForwardAlgorithm(S.dnn, p->x, p->w, p->conv, p->y,
                                                     CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &got, fr));
    i = pick(fr, got, lim, tensor_ops, p, 0);
    if (i < 0)
      return ce_err("cuDNN: no forward algorithm for this convolution within the %zu-byte "
                    "workspace limit (COEMU_CUDNN_WORKSPACE_MB)", lim);
    p->fwd = fr[i].algo;
    mem = fr[i].memory;
  } else if (k == 1) {
    cudnnConvolutionBwdFilterAlgoPerf_t wr[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
    CUDNN_CHECK(cudnnFindConvolutionBackwardFilterAlgorithm(
        S.dnn, p->x, p->y, p->conv, p->w, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &got, wr));
    i = pick(wr, got, lim, tensor_ops, p, 1);
    if (i < 0)
      return ce_err("cuDNN: no backward-filter algorithm within the %zu-byte workspace limit", lim);
    p->bwd_filter = wr[i].algo;
    mem = wr[i].memory;
  } else {
    cudnnConvolutionBwdDataAlgoPerf_t dr[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
    CUDNN_CHECK(cudnnFindConvolutionBackwardDataAlgorithm(
        S.dnn, p->w, p->y, p->conv, p->x, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &got, dr));
    i = pick(dr, got, lim, tensor_ops, p, 2);
    if (i < 0)
      return ce_err("cuDNN: no backward-data algorithm within the %zu-byte workspace limit", lim);
    p->bwd_data = dr[i].algo;
    mem = dr[i].memory;
  }
  if (grow && mem > p->ws) p->ws = mem;
  p->legacy_found[k] = 1;
  return 0;
}

/* ---- graph plans (COEMU_CUDNN_API=graph) ---------------------------------
 * A float32 or tf32 plan's calls on cuDNN's graph API (cudnn_graph.h): per
 * call a one-operation graph with the alpha and beta that call site uses
 * (forward beta 0; the backward calls beta p->accum), engine configs from
 * heuristics mode A then FALLBACK, filtered as the legacy pick filters:
 * strict float32 drops the TENSOR_CORE (and DOWN_CONVERT_INPUTS,
 * REDUCED_PRECISION_REDUCTION) notes, i.e. FMA only, as PyTorch without
 * TF32; tf32 allows tensor cores; COEMU_CUDNN_ALGOS=sums drops FFT and
 * Winograd engines; deterministic engines first (none: then any) unless
 * COEMU_CUDNN_DETERMINISTIC=0; the workspace limit. The first
 * COEMU_CUDNN_GRAPH_CONFIGS (16) left are finalized and timed on scratch
 * tensors of the shape (1 warm-up + 3 runs, the fastest, as cudnnFind), the
 * fastest kept;
 * the plan's workspace p->ws covers it (nn_net.work is sized from the
 * plans). A call without a usable engine, or whose engine fails at run time,
 * says so once on stderr and uses the legacy algorithm from then on. */

static const char *const CALL_NAME[3] = {"forward", "backward filter", "backward data"};
static const cg_op CALL_OP[3] = {CG_FWD, CG_BWD_FILTER, CG_BWD_DATA};

static cg_conv cg_conv_of(const conv_shape *s) {
  cg_conv c;
  memset(&c, 0, sizeof c);
  c.nd = is_2d(s) ? 2 : 3;
  c.n = s->n, c.cin = s->cin, c.cout = s->cout;
  c.in[0] = s->d, c.in[1] = s->h, c.in[2] = s->w;
  c.k[0] = s->kd, c.k[1] = s->kh, c.k[2] = s->kw;
  c.stride[0] = s->sd, c.stride[1] = s->sh, c.stride[2] = s->sw;
  c.pad[0] = s->pd, c.pad[1] = s->ph, c.pad[2] = s->pw;
  c.io = CUDNN_DATA_FLOAT;
  return c;
}

static void shape_text(char *out, size_t n, const conv_plan *p) {
  const conv_shape *s = &p->s;
  snprintf(out, n, "%dx%dx%dx%dx%d -> %d, kernel %dx%dx%d, stride %dx%dx%d, %s", s->n, s->cin,
           s->d, s->h, s->w, s->cout, s->kd, s->kh, s->kw, s->sd, s->sh, s->sw,
           p->tf32 ? "tf32" : "float32");
}

/* the timed table of one graph search on stderr (COEMU_CUDNN_VERBOSE) */
static void graph_table(const conv_plan *p, int k, const cg_tune_stats *st, int det_pass) {
  char sh[160];
  shape_text(sh, sizeof sh, p);
  fprintf(stderr, "coemu cudnn graph: %s%s%s, beta %d: %s:", sh, S.sums_only ? ", sums only" : "",
          S.any_order ? ", any order" : det_pass ? ", deterministic" : ", any order (no "
          "deterministic engine)", k ? p->accum : 0, CALL_NAME[k]);
  for (int i = 0; i < st->ntimed; i++) {
    const cg_info *f = &st->timed[i].info;
    fprintf(stderr, " %sengine %lld %.3f ms %.0f MiB%s%s%s%s", i == st->best ? "*" : "",
            (long long)f->engine, st->timed[i].ms, (double)f->ws / 1048576.0,
            f->nondet ? " nondet" : "", f->tensor_core ? " tensor" : "", f->rtc ? " rtc" : "",
            f->heur ? " fallback" : "");
  }
  fprintf(stderr, " (configs: heuristics A %d, fallback %d, %d looked at; dropped %d tensor-core, "
          "%d down-convert, %d reduced-precision, %d fft/winograd, %d nondet, %d over the "
          "workspace; failed %d finalize, %d run; %.2f s)\n", st->heur_a, st->heur_fb, st->looked,
          st->skip_tc, st->skip_down, st->skip_reduced, st->skip_numerics, st->skip_nondet,
          st->skip_ws, st->fail_finalize, st->fail_exec, st->seconds);
}

/* call k's graph and engine on the scratch tensors t (x, w, y shaped): 0
 * with p->gp[k] set, or with the reason on stderr and p->gp[k] NULL (the
 * legacy algorithm then) */
static int graph_plan(conv_plan *p, int k, void *const t[3]) {
  const cg_conv c = cg_conv_of(&p->s);
  const float beta = k == 0 ? 0.0f : (float)p->accum;
  cg_tune_stats st, first;
  int rc = -1, any = 0;
  if (cg_graph_create(&p->gg[k], &c, CALL_OP[k], 1.0f, beta, S.dnn) == 0) {
    cg_prefs pr;
    memset(&pr, 0, sizeof pr);
    pr.allow_tensor_core = p->tf32;
    pr.sums_only = S.sums_only;
    pr.ws_limit = S.ws_limit;
    pr.max_configs = S.graph_configs;
    pr.reps = 3;
    pr.deterministic_only = !S.any_order;
    /* as pick_from: deterministic engines first, then any */
    rc = cg_autotune_deterministic_first(S.dnn, p->gg[k], &pr, t[0], t[1], t[2], &p->gp[k], &st,
                                         &first, &any);
    if (S.verbose && any && !S.any_order) graph_table(p, k, &first, 1);
    if (rc >= 0 && S.verbose) graph_table(p, k, &st, !any);
  }
  if (rc != 0) {
    char sh[160];
    shape_text(sh, sizeof sh, p);
    fprintf(stderr, "coemu: cuDNN graph API: no usable engine for the %s of %s (%s); that call "
            "uses the legacy API\n", CALL_NAME[k], sh, cg_error());
    graph_drop(p, k);
    S.graph_fallbacks++;
    cudaGetLastError(); /* a non-sticky error of the search is not the next call's */
    return 0;
  }
  S.graph_planned++;
  const size_t ws = cg_plan_workspace(p->gp[k]);
  if (ws > p->ws) p->ws = ws;
  return 0;
}

/* the graph plans of p's calls (need_dx: all three), on scratch tensors of
 * the shape allocated here (filled with 0x3c3c3c3c, about 0.0115) */
static int graph_plans(conv_plan *p) {
  const conv_shape *s = &p->s;
  const size_t n[3] = {(size_t)s->n * s->cin * s->d * s->h * s->w,
                       (size_t)s->cout * s->cin * s->kd * s->kh * s->kw,
                       (size_t)s->n * s->cout * s->od * s->oh * s->ow};
  void *t[3] = {NULL, NULL, NULL};
  int rc = 0;
  for (int i = 0; i < 3 && rc == 0; i++) {
    void *m = NULL;
    cudaError_t e = cudaMalloc(&m, sizeof(float) * n[i]);
    if (e == cudaSuccess) {
      t[i] = m;
      e = cudaMemsetAsync(m, 0x3c, sizeof(float) * n[i], S.stream);
    }
    if (e != cudaSuccess) {
      char sh[160];
      shape_text(sh, sizeof sh, p);
      fprintf(stderr, "coemu: cuDNN graph API: no device memory for the search's scratch tensors "
              "of %s (%s); this shape uses the legacy API\n", sh, cudaGetErrorString(e));
      cudaGetLastError();
      rc = 1;
    }
  }
  for (int k = 0; k < 3 && rc == 0; k++)
    if (k < 2 || p->need_dx) rc = graph_plan(p, k, t);
  for (int i = 0; i < 3; i++) cudaFree(t[i]);
  return rc < 0 ? -1 : 0;
}

/* COEMU_CUDNN_API=auto: each call of the plan that has both keeps the
 * faster of its graph engine (cg_autotune: the fastest of 3 runs after a
 * warm-up) and its legacy algorithm (cudnnFind's time of the one pick_from
 * chose), both timed on the shape's scratch tensors; a tie keeps the graph
 * engine. Under COEMU_CUDNN_VERBOSE one line per call says which. The
 * workspace p->ws already covers both. */
static void graph_or_legacy(conv_plan *p) {
  for (int k = 0; k < 3; k++) {
    if (!p->gp[k] || !p->legacy_found[k]) continue;
    const float g = cg_plan_ms(p->gp[k]), l = p->legacy_ms[k];
    const int legacy = l < g;
    if (S.verbose) {
      char sh[160];
      shape_text(sh, sizeof sh, p);
      fprintf(stderr, "coemu cudnn auto: %s: %s: graph engine %lld %.3f ms, legacy algorithm %d "
              "%.3f ms: %s\n", sh, CALL_NAME[k], (long long)cg_plan_info(p->gp[k])->engine, g,
              k == 0 ? (int)p->fwd : k == 1 ? (int)p->bwd_filter : (int)p->bwd_data, l,
              legacy ? "legacy" : "graph");
    }
    if (legacy) {
      graph_drop(p, k);
      S.graph_planned--, S.graph_declined++;
    }
  }
}

static int plan_create(conv_plan *p, const conv_shape *s, int need_dx, int tf32, int bf16,
                       int accum) {
  memset(p, 0, sizeof *p);
  p->s = *s;
  p->need_dx = need_dx;
  p->tf32 = tf32;
  p->bf16 = bf16;
  p->sums_only = S.sums_only;
  p->accum = accum;
  /* bf16: cuDNN's PSEUDO_BFLOAT16 configuration (x, w, y bf16, float32
     compute; the output rounded once at the store: precision.h) */
  const cudnnDataType_t io = bf16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_FLOAT;
  const int two = is_2d(s);
  CUDNN_CHECK(cudnnCreateTensorDescriptor(&p->x));
  CUDNN_CHECK(cudnnCreateTensorDescriptor(&p->y));
  CUDNN_CHECK(cudnnCreateTensorDescriptor(&p->b));
  CUDNN_CHECK(cudnnCreateFilterDescriptor(&p->w));
  CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&p->conv));
  CE_TRY(set_tensor(p->x, s->n, s->cin, s->d, s->h, s->w, two, io));
  CE_TRY(set_tensor(p->y, s->n, s->cout, s->od, s->oh, s->ow, two, io));
  CE_TRY(set_tensor(p->b, 1, s->cout, 1, 1, 1, two));
  if (two) {
    CUDNN_CHECK(cudnnSetFilter4dDescriptor(p->w, io, CUDNN_TENSOR_NCHW, s->cout,
                                           s->cin, s->kh, s->kw));
    CUDNN_CHECK(cudnnSetConvolution2dDescriptor(p->conv, s->ph, s->pw, s->sh, s->sw, 1, 1,
                                                CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
  } else {
    int fdim[5] = {s->cout, s->cin, s->kd, s->kh, s->kw};
    int pad[3] = {s->pd, s->ph, s->pw}, str[3] = {s->sd, s->sh, s->sw}, dil[3] = {1, 1, 1};
    CUDNN_CHECK(cudnnSetFilterNdDescriptor(p->w, io, CUDNN_TENSOR_NCHW, 5, fdim));
    CUDNN_CHECK(cudnnSetConvolutionNdDescriptor(p->conv, 3, pad, str, dil, CUDNN_CROSS_CORRELATION,
                                                CUDNN_DATA_FLOAT));
  }
  /* bf16 on tensor cores: products of bf16 values are exact in their float32
     accumulators, as on the FMA units (legacy_find sets the math type) */
  if (accum >= 0) CE_TRY(graph_plans(p)); /* graph or auto mode, float32 / tf32 */
  /* cudnnFind* times every algorithm on scratch buffers it allocates: the
     calls without a graph engine, and in auto mode every call */
  const size_t lim = S.ws_limit;
  for (int k = 0; k < 3; k++)
    if ((k < 2 || need_dx) && (!p->gp[k] || S.graph == API_AUTO)) CE_TRY(legacy_find(p, k, lim, 1));
  if (S.graph == API_AUTO) graph_or_legacy(p);
  return 0;
}

/* The plan of a shape, found once and kept until the last finish. accum:
 * whether the backward calls accumulate (beta 1; 0 for the emulated bf16
 * results), a key of graph plans only. */
static conv_plan *plan_for(const conv_shape *s, int need_dx, int tf32, int bf16, int accum) {
  accum = S.graph && !bf16 ? accum : -1;
  for (int i = 0; i < S.nplans; i++) {
    conv_plan *p = &S.plans[i];
    if (!memcmp(&p->s, s, sizeof *s) && p->need_dx == need_dx && p->tf32 == tf32 &&
        p->bf16 == bf16 && p->sums_only == S.sums_only && p->accum == accum)
      return p;
  }
  if (S.nplans == S.plan_cap) {
    int cap = S.plan_cap ? 2 * S.plan_cap : 32;
    conv_plan *np = (conv_plan *)realloc(S.plans, sizeof(conv_plan) * (size_t)cap);
    if (!np) {
      ce_err("out of memory for cuDNN plans");
      return NULL;
    }
    S.plans = np;
    S.plan_cap = cap;
  }
  conv_plan *p = &S.plans[S.nplans];
  if (plan_create(p, s, need_dx, tf32, bf16, accum) < 0) {
    destroy_plan(p);
    ce_err_prefix("planning the convolution %dx%dx%dx%dx%d -> %d channels, kernel %dx%dx%d, "
                  "stride %dx%dx%d", s->n, s->cin, s->d, s->h, s->w, s->cout, s->kd, s->kh, s->kw,
                  s->sd, s->sh, s->sw);
    return NULL;
  }
  S.nplans++;
  return p;
}

/* Call k of a float32 / tf32 plan on its graph engine where it has one
 * (COEMU_CUDNN_API=graph), with the tensors x, w, y in the roles of
 * cudnn_graph.h's CG_UID_* and the workspace of ws bytes; where it has
 * none, or the engine fails (said once on stderr, the graph plan dropped),
 * the legacy algorithm through conv_call (found now, within ws, if the plan
 * had none). */
template <typename Call>
static int conv_run(conv_plan *p, int k, const void *x, const void *w, const void *y, void *work,
                    size_t ws, const char *what, Call legacy) {
  if (p->gp[k]) {
    if (cg_plan_execute(S.dnn, p->gp[k], x, w, y, work, ws) == 0) return 0;
    char sh[160];
    shape_text(sh, sizeof sh, p);
    fprintf(stderr, "coemu: cuDNN graph API: the %s of %s failed (%s); that call uses the legacy "
            "API from now on\n", CALL_NAME[k], sh, cg_error());
    graph_drop(p, k);
    S.graph_fallbacks++;
    if (!p->legacy_found[k] && legacy_find(p, k, ws, 0) < 0)
      return ce_err_prefix("%s: the legacy algorithm after the graph engine failed", what);
  }
  return conv_call(p, k, ws, what, legacy);
}

/* ---- precision (precision.h) ------------------------------------------ */

/* Tensor cores (TF32 math) for the net's products: precision tf32, or
 * float32 under nn_cuda_set_tf32(1). */
static int net_tf32(const nn_net *net) {
  return net->precision == NN_TF32 || (net->precision == NN_FLOAT32 && S.tf32);
}

/* Native bf16 (the default for bf16 nets): the operands converted once into
 * bf16 scratch, cuDNN's bf16 convolutions and cublasGemmEx with bf16 A and B
 * on tensor cores. COEMU_BF16=emulated keeps the float32 path with rounded
 * float copies (FMA math), the same definition (precision.h), for parity
 * diagnosis. */
static int net_bf16_native(const nn_net *net) {
  return net->precision == NN_BF16 && !S.bf16_emulated;
}

/* Whether the net's backward convolutions accumulate into the gradients
 * (beta 1), or write results that are rounded when added (bf16: beta 0);
 * conv_backward_f32's beta, the graph plans' key (plan_for). */
static int net_accum(const nn_net *net) { return !nn_rounds_conv_result(net->precision); }

extern "C" const char *nn_cuda_bf16_path(void) { return S.bf16_emulated ? "emulated" : "native"; }

/* bf16 storage: the bit patterns of nn_bf16_bits (precision.h), which cuDNN
 * and cuBLAS read as CUDNN_DATA_BFLOAT16 / CUDA_R_16BF. */
typedef uint16_t bf16_t;

__device__ static inline float load_f(float v) { return v; }
__device__ static inline float load_f(bf16_t v) { return nn_bf16_value(v); }

__global__ static void k_round(long n, const float *a, float *r, int p) {
  GRID_STRIDE(i, n) r[i] = nn_round_operand(a[i], p);
}
/* the conversion of every native bf16 operand: nn_round_bf16's bits */
__global__ static void k_to_bf16(long n, const float *a, bf16_t *r) {
  GRID_STRIDE(i, n) r[i] = nn_bf16_bits(a[i]);
}
/* acc[i] += round_bf16(v[i]) (float v: the emulated path), k_add_bf16:
 * acc[i] += v[i] (bf16 v: cuDNN's rounded store); a convolution's result
 * into the float32 gradient it accumulates into */
__global__ static void k_add_bf16_result(long n, const float *v, float *acc) {
  GRID_STRIDE(i, n) acc[i] += nn_round_bf16(v[i]);
}
__global__ static void k_add_bf16(long n, const bf16_t *v, float *acc) {
  GRID_STRIDE(i, n) acc[i] += nn_bf16_value(v[i]);
}
/* y = v + b[channel] over (n, c, P): a native bf16 convolution's output
 * and its float32 bias; k_round_bf16_bias: the emulated path's, in place */
__global__ static void k_conv_out_bf16(long n, int c, long P, const bf16_t *v, const float *b,
                                       float *y) {
  GRID_STRIDE(i, n) y[i] = nn_bf16_value(v[i]) + b[(i / P) % c];
}
__global__ static void k_round_bf16_bias(long n, int c, long P, const float *b, float *y) {
  GRID_STRIDE(i, n) y[i] = nn_round_bf16(y[i]) + b[(i / P) % c];
}
/* db[ch] += the sum of dy over (n, P) for channel ch: one block per
 * channel, a float tree sum (cudnnConvolutionBackwardBias for bf16 dy) */
__global__ static void k_conv_bias_grad(int n, int c, long P, const bf16_t *dy, float *db) {
  __shared__ float part[THREADS];
  const int ch = blockIdx.x;
  float acc = 0;
  for (long j = threadIdx.x; j < (long)n * P; j += blockDim.x)
    acc += nn_bf16_value(dy[((long)(j / P) * c + ch) * P + j % P]);
  part[threadIdx.x] = acc;
  __syncthreads();
  for (int h = blockDim.x / 2; h > 0; h /= 2) {
    if ((int)threadIdx.x < h) part[threadIdx.x] += part[threadIdx.x + h];
    __syncthreads();
  }
  if (threadIdx.x == 0) db[ch] += part[0];
}

/* The operands of one convolution or linear layer at the net's precision:
 * float32 the tensors themselves; tf32 and bf16 (emulated) copies rounded
 * by nn_round_operand (the CPU emulation's function, at its points) into the
 * device scratch, followed by `extra` floats for the caller (a bf16
 * convolution's float32 results before their rounding); valid until the
 * next scratch() call. */
typedef struct {
  const float *x, *w, *dy;
  float *extra;
} dev_operands;

/* n floats (or bf16s: size 2) from *at, 64-byte aligned for cuDNN's
 * vectorised loads */
static char *carve(char **at, long n, size_t size) {
  char *r = *at;
  *at += ((size_t)n * size + 63) / 64 * 64;
  return r;
}

static int dev_operands_get(const nn_net *net, const nn_node *nd, int with_dy, long extra,
                            dev_operands *o) {
  const nn_node *in = &net->nodes[nd->in[0]];
  const nn_param *w = &net->params[nd->param[0]];
  const long n[3] = {(long)net->batch * in->size, (long)w->n,
                     with_dy ? (long)net->batch * nd->size : 0};
  const float *src[3] = {in->out, w->w, nd->grad};
  o->x = in->out;
  o->w = w->w;
  o->dy = nd->grad;
  o->extra = NULL;
  const int p = net->precision;
  const long rounded = p == NN_FLOAT32 ? 0 : n[0] + n[1] + n[2];
  if (!rounded && !extra) return 0;
  char *at = (char *)scratch(sizeof(float) * (size_t)(rounded + extra) + 4 * 64);
  if (!at) return -1;
  float *dst[3];
  for (int k = 0; k < 3; k++) dst[k] = rounded ? (float *)carve(&at, n[k], sizeof(float)) : NULL;
  if (extra) o->extra = (float *)carve(&at, extra, sizeof(float));
  if (!rounded) return 0;
  int tm;
  CE_TRY(times_begin(&tm));
  for (int k = 0; k < 3; k++)
    if (n[k]) {
      k_round<<<grid_for(n[k]), THREADS, 0, S.stream>>>(n[k], src[k], dst[k], p);
      KERNEL_CHECK("k_round");
    }
  CE_TRY(times_end(tm, "round operands %s (k_round)", nn_precision_name(p)));
  o->x = dst[0];
  o->w = dst[1];
  if (with_dy) o->dy = dst[2];
  return 0;
}

/* Native bf16: x, w (and dy) converted once into bf16 scratch, then room for
 * the bf16 results of a convolution (out_y: y; out_dw, out_dx: dW and dx),
 * valid until the next scratch() call. */
typedef struct {
  const bf16_t *x, *w, *dy;
  bf16_t *y, *dw, *dx;
} dev_bf16;

static int dev_bf16_get(const nn_net *net, const nn_node *nd, int with_dy, int out_y, int out_dw,
                        int out_dx, dev_bf16 *o) {
  const nn_node *in = &net->nodes[nd->in[0]];
  const nn_param *w = &net->params[nd->param[0]];
  const long nx = (long)net->batch * in->size, nw = (long)w->n, ny = (long)net->batch * nd->size;
  const long n[6] = {nx, nw, with_dy ? ny : 0, out_y ? ny : 0, out_dw ? nw : 0, out_dx ? nx : 0};
  const float *src[3] = {in->out, w->w, nd->grad};
  long total = 0;
  for (int k = 0; k < 6; k++) total += n[k];
  char *at = (char *)scratch(sizeof(bf16_t) * (size_t)total + 7 * 64);
  if (!at) return -1;
  bf16_t *part[6];
  for (int k = 0; k < 6; k++) part[k] = n[k] ? (bf16_t *)carve(&at, n[k], sizeof(bf16_t)) : NULL;
  int tm;
  CE_TRY(times_begin(&tm));
  for (int k = 0; k < 3; k++)
    if (n[k]) {
      k_to_bf16<<<grid_for(n[k]), THREADS, 0, S.stream>>>(n[k], src[k], part[k]);
      KERNEL_CHECK("k_to_bf16");
    }
  CE_TRY(times_end(tm, "convert operands to bf16 (k_to_bf16)"));
  o->x = part[0];
  o->w = part[1];
  o->dy = part[2];
  o->y = part[3];
  o->dw = part[4];
  o->dx = part[5];
  return 0;
}

static int conv_plan_of(const nn_net *net, const nn_node *nd, conv_plan **out) {
  conv_shape s = node_conv_shape(net, nd);
  conv_plan *p =
      plan_for(&s, net->nodes[nd->in[0]].needs_grad, net_tf32(net), net_bf16_native(net),
               net_accum(net));
  if (!p) return -1;
  if (p->ws > sizeof(float) * net->work_n)
    return ce_err("convolution workspace: %zu bytes needed, %zu allocated (the workspace "
                  "limit changed since nn_set_batch)", p->ws, sizeof(float) * net->work_n);
  *out = p;
  return 0;
}

static size_t cuda_workspace(const nn_net *net, const nn_node *nd) {
  if (nd->kind != NN_CONV) return 0;
  conv_shape s = node_conv_shape(net, nd);
  /* an error here (no algorithm fits) is met again, and reported, at the
     layer's first forward */
  conv_plan *p =
      plan_for(&s, net->nodes[nd->in[0]].needs_grad, net_tf32(net), net_bf16_native(net),
               net_accum(net));
  return p ? (p->ws + sizeof(float) - 1) / sizeof(float) : 0;
}

static const float ONE = 1.0f, ZERO = 0.0f;

/* The float32 plan of nd's shape (FMA math): the one a refused native bf16
 * call runs on (conv_call's CONV_REFUSED) */
static int conv_plan_f32_of(const nn_net *net, const nn_node *nd, conv_plan **out) {
  conv_shape s = node_conv_shape(net, nd);
  conv_plan *p = plan_for(&s, net->nodes[nd->in[0]].needs_grad, 0, 0, net_accum(net));
  if (!p) return -1;
  *out = p;
  return 0;
}

/* The workspace of a float32 convolution: net->work, or (own_ws: a refused
 * native bf16 call, whose float32 plan the net's workspace was not sized
 * for) the plan's own p->ws bytes of device scratch after the operands */
static long conv_ws_floats(const conv_plan *p, int own_ws) {
  return own_ws ? (long)((p->ws + sizeof(float) - 1) / sizeof(float)) : 0;
}

/* Forward on the float32 arithmetic at the net's precision: float32 itself,
 * or the products of tf32- / bf16-rounded operand copies (dev_operands_get),
 * a bf16 result rounded (emulated bf16, and a native bf16 call cuDNN
 * refused: products of bf16 values are exact in float32 either way, so the
 * same arithmetic as the native call) */
static int conv_forward_f32(nn_net *net, nn_node *nd, conv_plan *p, int own_ws) {
  const nn_param *P = net->params;
  const long ny = (long)net->batch * nd->size, sp = (long)nd->d * nd->h * nd->w;
  dev_operands o;
  CE_TRY(dev_operands_get(net, nd, 0, conv_ws_floats(p, own_ws), &o));
  void *work = own_ws ? (void *)o.extra : (void *)net->work;
  const size_t ws = own_ws ? p->ws : sizeof(float) * net->work_n;
  const char *how = own_ws ? " (bf16 fallback)" : "";
  int tm;
  CE_TRY(times_begin(&tm));
  CE_TRY(conv_run(p, 0, o.x, o.w, nd->out, work, ws, "cudnnConvolutionForward", [&] {
    return cudnnConvolutionForward(S.dnn, &ONE, p->x, o.x, p->w, o.w, p->conv, p->fwd, work, ws,
                                   &ZERO, p->y, nd->out);
  }));
  CE_TRY(times_end_conv(tm, p, 0, how));
  CE_TRY(times_begin(&tm));
  if (nn_rounds_conv_result(net->precision)) { /* bf16 */
    k_round_bf16_bias<<<grid_for(ny), THREADS, 0, S.stream>>>(ny, nd->c, sp, P[nd->param[1]].w,
                                                              nd->out);
    KERNEL_CHECK("k_round_bf16_bias");
    return times_end_bias(tm, p, "fwd", " rounded to bf16 (k_round_bf16_bias)");
  }
  CUDNN_CHECK(cudnnAddTensor(S.dnn, &ONE, p->b, P[nd->param[1]].w, &ONE, p->y, nd->out));
  return times_end_bias(tm, p, "fwd", " (cudnnAddTensor)");
}

static int conv_forward(nn_net *net, nn_node *nd) {
  conv_plan *p;
  CE_TRY(conv_plan_of(net, nd, &p));
  const nn_param *P = net->params;
  const long ny = (long)net->batch * nd->size, sp = (long)nd->d * nd->h * nd->w;
  if (p->bf16 && !p->refused[0]) {
    dev_bf16 o;
    CE_TRY(dev_bf16_get(net, nd, 0, 1, 0, 0, &o));
    const size_t ws = sizeof(float) * net->work_n;
    int tm;
    CE_TRY(times_begin(&tm));
    const int rc = conv_call(p, 0, ws, "cudnnConvolutionForward (bf16)", [&] {
      return cudnnConvolutionForward(S.dnn, &ONE, p->x, o.x, p->w, o.w, p->conv, p->fwd, net->work,
                                     ws, &ZERO, p->y, o.y);
    });
    if (rc < 0) return -1;
    CE_TRY(times_end_conv(tm, p, 0, rc == CONV_REFUSED ? " (refused)" : ""));
    if (rc == 0) {
      CE_TRY(times_begin(&tm));
      k_conv_out_bf16<<<grid_for(ny), THREADS, 0, S.stream>>>(ny, nd->c, sp, o.y,
                                                              P[nd->param[1]].w, nd->out);
      KERNEL_CHECK("k_conv_out_bf16");
      return times_end_bias(tm, p, "fwd", " from bf16 (k_conv_out_bf16)");
    }
  }
  if (p->bf16) { /* refused: the float32 plan of the shape, on its own workspace */
    CE_TRY(conv_plan_f32_of(net, nd, &p));
    return conv_forward_f32(net, nd, p, 1);
  }
  return conv_forward_f32(net, nd, p, 0);
}

/* Backward on the float32 arithmetic at the net's precision (as
 * conv_forward_f32): with `filter` the weight and bias gradients, and with
 * dx the input gradient. Emulated bf16 results go to `extra` (beta 0) and
 * are rounded when added; otherwise beta 1: every gradient accumulates
 * (nn.h). */
static int conv_backward_f32(nn_net *net, nn_node *nd, float *dx, conv_plan *p, int own_ws,
                             int filter) {
  const nn_param *P = net->params;
  const long nw = (long)P[nd->param[0]].n, nx = (long)net->batch * net->nodes[nd->in[0]].size;
  const int rounds = nn_rounds_conv_result(net->precision);
  /* the bf16 results' room, each part 64-byte aligned (graph plans declare
     16-byte aligned tensors) */
  const long nw64 = (nw + 15) / 16 * 16, nx64 = (nx + 15) / 16 * 16;
  const long nres = rounds ? (filter ? nw64 : 0) + (dx ? nx64 : 0) : 0;
  dev_operands o;
  CE_TRY(dev_operands_get(net, nd, 1, nres + conv_ws_floats(p, own_ws), &o));
  float *rdw = rounds && filter ? o.extra : NULL, *rdx = rounds && dx ? o.extra + (filter ? nw64 : 0) : NULL;
  void *work = own_ws ? (void *)(o.extra + nres) : (void *)net->work;
  const size_t ws = own_ws ? p->ws : sizeof(float) * net->work_n;
  const char *how = own_ws ? " (bf16 fallback)" : "";
  /* a graph plan's beta is its own (plan_for keys it by net_accum) */
  if ((p->gp[1] || p->gp[2]) && p->accum != !rounds)
    return ce_err("convolution '%s': its graph plan has beta %d, this call needs %d", nd->name,
                  p->accum, !rounds);
  int tm;
  if (filter) {
    CE_TRY(times_begin(&tm));
    CE_TRY(conv_run(p, 1, o.x, rounds ? rdw : P[nd->param[0]].g, o.dy, work, ws,
                    "cudnnConvolutionBackwardFilter", [&] {
      return cudnnConvolutionBackwardFilter(S.dnn, &ONE, p->x, o.x, p->y, o.dy, p->conv,
                                            p->bwd_filter, work, ws, rounds ? &ZERO : &ONE, p->w,
                                            rounds ? rdw : P[nd->param[0]].g);
    }));
    CE_TRY(times_end_conv(tm, p, 1, how));
    if (rounds) {
      CE_TRY(times_begin(&tm));
      k_add_bf16_result<<<grid_for(nw), THREADS, 0, S.stream>>>(nw, rdw, P[nd->param[0]].g);
      KERNEL_CHECK("k_add_bf16_result");
      CE_TRY(times_end(tm, "bf16 results rounded and added (k_add_bf16_result)"));
    }
    CE_TRY(times_begin(&tm));
    CUDNN_CHECK(cudnnConvolutionBackwardBias(S.dnn, &ONE, p->y, o.dy, &ONE, p->b,
                                             P[nd->param[1]].g));
    CE_TRY(times_end_bias(tm, p, "bwd", " (cudnnConvolutionBackwardBias)"));
  }
  if (dx) {
    float *t = rounds ? rdx : dx;
    CE_TRY(times_begin(&tm));
    CE_TRY(conv_run(p, 2, t, o.w, o.dy, work, ws, "cudnnConvolutionBackwardData", [&] {
      return cudnnConvolutionBackwardData(S.dnn, &ONE, p->w, o.w, p->y, o.dy, p->conv,
                                          p->bwd_data, work, ws, rounds ? &ZERO : &ONE, p->x, t);
    }));
    CE_TRY(times_end_conv(tm, p, 2, how));
    if (rounds) {
      CE_TRY(times_begin(&tm));
      k_add_bf16_result<<<grid_for(nx), THREADS, 0, S.stream>>>(nx, t, dx);
      KERNEL_CHECK("k_add_bf16_result");
      CE_TRY(times_end(tm, "bf16 results rounded and added (k_add_bf16_result)"));
    }
  }
  return 0;
}

static int conv_backward(nn_net *net, nn_node *nd, float *dx) {
  conv_plan *p;
  CE_TRY(conv_plan_of(net, nd, &p));
  const nn_param *P = net->params;
  if (dx && !p->need_dx)
    return ce_err("convolution '%s': planned without an input gradient", nd->name);
  if (!p->bf16) return conv_backward_f32(net, nd, dx, p, 0, 1);
  /* native bf16: results into bf16 scratch (beta 0), then added to the
     float32 gradients; a call cuDNN refuses (now or before) runs, with what
     follows it, on the float32 plan (conv_backward_f32) */
  const long nw = (long)P[nd->param[0]].n, nx = (long)net->batch * net->nodes[nd->in[0]].size;
  const size_t ws = sizeof(float) * net->work_n;
  int filter = 1; /* the weight and bias gradients still to make */
  if (!p->refused[1] && !(dx && p->refused[2])) {
    dev_bf16 o;
    CE_TRY(dev_bf16_get(net, nd, 1, 0, 1, dx != NULL, &o));
    int tm;
    CE_TRY(times_begin(&tm));
    int rc = conv_call(p, 1, ws, "cudnnConvolutionBackwardFilter (bf16)", [&] {
      return cudnnConvolutionBackwardFilter(S.dnn, &ONE, p->x, o.x, p->y, o.dy, p->conv,
                                            p->bwd_filter, net->work, ws, &ZERO, p->w, o.dw);
    });
    if (rc < 0) return -1;
    CE_TRY(times_end_conv(tm, p, 1, rc == CONV_REFUSED ? " (refused)" : ""));
    if (rc == 0) {
      CE_TRY(times_begin(&tm));
      k_add_bf16<<<grid_for(nw), THREADS, 0, S.stream>>>(nw, o.dw, P[nd->param[0]].g);
      KERNEL_CHECK("k_add_bf16");
      CE_TRY(times_end(tm, "bf16 results added (k_add_bf16)"));
      CE_TRY(times_begin(&tm));
      k_conv_bias_grad<<<nd->c, THREADS, 0, S.stream>>>(net->batch, nd->c,
                                                        (long)nd->d * nd->h * nd->w, o.dy,
                                                        P[nd->param[1]].g);
      KERNEL_CHECK("k_conv_bias_grad");
      CE_TRY(times_end_bias(tm, p, "bwd", " from bf16 (k_conv_bias_grad)"));
      filter = 0;
      if (!dx) return 0;
      CE_TRY(times_begin(&tm));
      rc = conv_call(p, 2, ws, "cudnnConvolutionBackwardData (bf16)", [&] {
        return cudnnConvolutionBackwardData(S.dnn, &ONE, p->w, o.w, p->y, o.dy, p->conv,
                                            p->bwd_data, net->work, ws, &ZERO, p->x, o.dx);
      });
      if (rc < 0) return -1;
      CE_TRY(times_end_conv(tm, p, 2, rc == CONV_REFUSED ? " (refused)" : ""));
      if (rc == 0) {
        CE_TRY(times_begin(&tm));
        k_add_bf16<<<grid_for(nx), THREADS, 0, S.stream>>>(nx, o.dx, dx);
        KERNEL_CHECK("k_add_bf16");
        return times_end(tm, "bf16 results added (k_add_bf16)");
      }
    }
  }
  conv_plan *f;
  CE_TRY(conv_plan_f32_of(net, nd, &f));
  return conv_backward_f32(net, nd, dx, f, 1, filter);
}

/* ---- linear layers (cuBLAS) --------------------------------------------- */

/* y[i, o] = b[o] */
__global__ static void k_bias_rows(int n, int out, const float *b, float *y) {
  GRID_STRIDE(i, (long)n * out) y[i] = b[i % out];
}
/* db[o] += dy[i, o], i in order (linear_backward's float sum); dy float32
 * or native bf16 */
template <typename T>
__global__ static void k_bias_grad(int n, int out, const T *dy, float *db) {
  int o = blockIdx.x * blockDim.x + threadIdx.x;
  if (o >= out) return;
  float acc = db[o];
  for (int i = 0; i < n; i++) acc += load_f(dy[(long)i * out + o]);
  db[o] = acc;
}

/* cuBLAS's math for the net's precision (net_tf32): a handle setting, no
 * synchronisation */
static int set_blas_math(int tf32) {
  CUBLAS_CHECK(cublasSetMathMode(S.blas, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
  return 0;
}

/* C (m x n, column-major, float32) += op(A) op(B), A and B float32 or native
 * bf16 (CUDA_R_16BF: bf16 products on tensor cores, exact in the float32
 * accumulators of CUBLAS_COMPUTE_32F; C stays float32, precision.h). */
static int gemm(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const float *a,
                int lda, const float *b, int ldb, float *c, int ldc) {
  CUBLAS_CHECK(cublasSgemm(S.blas, ta, tb, m, n, k, &ONE, a, lda, b, ldb, &ONE, c, ldc));
  return 0;
}
static int gemm(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const bf16_t *a,
                int lda, const bf16_t *b, int ldb, float *c, int ldc) {
  CUBLAS_CHECK(cublasGemmEx(S.blas, ta, tb, m, n, k, &ONE, a, CUDA_R_16BF, lda, b, CUDA_R_16BF, ldb,
                            &ONE, c, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return 0;
}

/* Row-major y (n, out) = x (n, in) W^T, W (out, in): in cuBLAS's column-major
 * terms y^T (out x n) = W^T' ... i.e. gemm(T, N, out, n, in, W [ld in], x [ld in]). */
template <typename T>
static int dev_linear_forward(int n, int in, int out, const T *x, const T *w, const float *b,
                              float *y) {
  k_bias_rows<<<grid_for((long)n * out), THREADS, 0, S.stream>>>(n, out, b, y);
  KERNEL_CHECK("k_bias_rows");
  return gemm(CUBLAS_OP_T, CUBLAS_OP_N, out, n, in, w, in, x, in, y, out);
}

template <typename T>
static int dev_linear_backward(int n, int in, int out, const T *x, const T *w, const T *dy,
                               float *dw, float *db, float *dx) {
  /* dW (out, in) += dy^T x: column-major dW^T (in x out) += x^T' (in x n) dy^T' (n x out) */
  CE_TRY(gemm(CUBLAS_OP_N, CUBLAS_OP_T, in, out, n, x, in, dy, out, dw, in));
  k_bias_grad<<<(out + 127) / 128, 128, 0, S.stream>>>(n, out, dy, db);
  KERNEL_CHECK("k_bias_grad");
  if (dx) /* dx (n, in) += dy W: column-major dx^T (in x n) += W^T' (in x out) dy^T' (out x n) */
    CE_TRY(gemm(CUBLAS_OP_N, CUBLAS_OP_N, in, n, out, w, in, dy, out, dx, in));
  return 0;
}

/* The timing mode's key of a linear layer's cuBLAS part (the bias kernel
 * and the products): batch x inputs -> outputs and cuBLAS's arithmetic. */
static int times_end_linear(int slot, const nn_net *net, const nn_node *nd, const char *dir) {
  if (slot < 0) return 0;
  return times_end(slot, "linear %s %dx%ld->%d cublas %s", dir, net->batch,
                   (long)net->nodes[nd->in[0]].size, nd->c,
                   net_bf16_native(net) ? "bf16 gemmex" : net_tf32(net) ? "tf32" : "fma");
}

/* A linear layer at the net's precision (native bf16: the operands
 * converted, cublasGemmEx; otherwise the float32 path on rounded copies). */
static int linear_forward_at(nn_net *net, nn_node *nd) {
  const nn_node *in = &net->nodes[nd->in[0]];
  const float *b = net->params[nd->param[1]].w;
  CE_TRY(set_blas_math(net_tf32(net)));
  int tm;
  if (net_bf16_native(net)) {
    dev_bf16 o;
    CE_TRY(dev_bf16_get(net, nd, 0, 0, 0, 0, &o));
    CE_TRY(times_begin(&tm));
    CE_TRY(dev_linear_forward(net->batch, (int)in->size, nd->c, o.x, o.w, b, nd->out));
    return times_end_linear(tm, net, nd, "fwd");
  }
  dev_operands o;
  CE_TRY(dev_operands_get(net, nd, 0, 0, &o));
  CE_TRY(times_begin(&tm));
  CE_TRY(dev_linear_forward(net->batch, (int)in->size, nd->c, o.x, o.w, b, nd->out));
  return times_end_linear(tm, net, nd, "fwd");
}

static int linear_backward_at(nn_net *net, nn_node *nd, float *dx) {
  const nn_node *in = &net->nodes[nd->in[0]];
  const nn_param *P = net->params;
  CE_TRY(set_blas_math(net_tf32(net)));
  int tm;
  if (net_bf16_native(net)) {
    dev_bf16 o;
    CE_TRY(dev_bf16_get(net, nd, 1, 0, 0, 0, &o));
    CE_TRY(times_begin(&tm));
    CE_TRY(dev_linear_backward(net->batch, (int)in->size, nd->c, o.x, o.w, o.dy,
                               P[nd->param[0]].g, P[nd->param[1]].g, dx));
    return times_end_linear(tm, net, nd, dx ? "bwd" : "bwd (no dx)");
  }
  dev_operands o;
  CE_TRY(dev_operands_get(net, nd, 1, 0, &o));
  CE_TRY(times_begin(&tm));
  CE_TRY(dev_linear_backward(net->batch, (int)in->size, nd->c, o.x, o.w, o.dy, P[nd->param[0]].g,
                             P[nd->param[1]].g, dx));
  return times_end_linear(tm, net, nd, dx ? "bwd" : "bwd (no dx)");
}

/* ---- layer dispatch ----------------------------------------------------- */

static const char *kind_name(int kind) {
  static const char *const name[NN_KIND_COUNT] = {"input", "conv", "batchnorm", "relu", "tanh",
                                                  "maxpool", "linear", "upsample", "add",
                                                  "concat", "view", "slice"};
  return kind >= 0 && kind < NN_KIND_COUNT && name[kind] ? name[kind] : "layer";
}

/* The timing mode's key of a layer timed whole: kind, direction, the input
 * (n, c, d, h, w) and the output (c, d, h, w) where it differs. */
static int times_end_node(int slot, const nn_net *net, const nn_node *nd, const char *dir) {
  if (slot < 0) return 0;
  const nn_node *in = &net->nodes[nd->in[0]];
  char out[64] = "";
  if (in->c != nd->c || in->d != nd->d || in->h != nd->h || in->w != nd->w)
    snprintf(out, sizeof out, "->%dx%dx%dx%d", nd->c, nd->d, nd->h, nd->w);
  return times_end(slot, "%s %s %dx%dx%dx%dx%d%s", kind_name(nd->kind), dir, net->batch, in->c,
                   in->d, in->h, in->w, out);
}

static int forward_node(nn_net *net, nn_node *nd, int train);
static int backward_node(nn_net *net, nn_node *nd);

/* The timing mode times each layer whole, except convolutions and linear
 * layers: they time their parts (operand conversions, the cuDNN / cuBLAS
 * calls, the bias) themselves. */
static int cuda_forward(nn_net *net, nn_node *nd, int train) {
  if (!S.times || nd->kind == NN_CONV || nd->kind == NN_LINEAR)
    return forward_node(net, nd, train);
  int tm;
  CE_TRY(times_begin(&tm));
  CE_TRY(forward_node(net, nd, train));
  return times_end_node(tm, net, nd,
                        nd->kind != NN_BATCHNORM ? "fwd" : train ? "fwd train" : "fwd eval");
}

static int cuda_backward(nn_net *net, nn_node *nd) {
  const int k = nd->kind;
  if (!S.times || k == NN_CONV || k == NN_LINEAR ||
      (!net->nodes[nd->in[0]].needs_grad &&
       (k == NN_RELU || k == NN_TANH || k == NN_MAXPOOL || k == NN_UPSAMPLE))) /* nothing to do */
    return backward_node(net, nd);
  int tm;
  CE_TRY(times_begin(&tm));
  CE_TRY(backward_node(net, nd));
  return times_end_node(tm, net, nd, "bwd");
}

static int forward_node(nn_net *net, nn_node *nd, int train) {
  const int N = net->batch;
  const nn_node *in = &net->nodes[nd->in[0]];
  const float *x = in->out;
  float *y = nd->out;
  const long total = (long)N * nd->size;
  switch (nd->kind) {
  case NN_CONV:
    return conv_forward(net, nd);
  case NN_BATCHNORM:
    return bn_forward(net, nd, train);
  case NN_RELU:
    k_relu<<<grid_for(total), THREADS, 0, S.stream>>>(total, x, y);
    KERNEL_CHECK("k_relu");
    return 0;
  case NN_TANH:
    k_tanh<<<grid_for(total), THREADS, 0, S.stream>>>(total, x, y);
    KERNEL_CHECK("k_tanh");
    return 0;
  case NN_MAXPOOL: {
    int k = nd->k.v[0];
    k_maxpool<<<grid_for(total), THREADS, 0, S.stream>>>(N * in->c, in->d, in->h, in->w, k, x, y);
    KERNEL_CHECK("k_maxpool");
    return 0;
  }
  case NN_LINEAR:
    return linear_forward_at(net, nd);
  case NN_UPSAMPLE:
    k_upsample<<<grid_for(total), THREADS, 0, S.stream>>>(N * in->c, in->d, in->h, in->w,
                                                           nd->s.v[0], nd->s.v[1], nd->s.v[2], x, y);
    KERNEL_CHECK("k_upsample");
    return 0;
  case NN_ADD:
    k_add<<<grid_for(total), THREADS, 0, S.stream>>>(total, x, net->nodes[nd->in[1]].out, y);
    KERNEL_CHECK("k_add");
    return 0;
  case NN_CONCAT: {
    long off = 0;
    for (int j = 0; j < nd->nin; j++) {
      const nn_node *src = &net->nodes[nd->in[j]];
      CUDA_CHECK(cudaMemcpy2DAsync(y + off, sizeof(float) * nd->size, src->out,
                                   sizeof(float) * src->size, sizeof(float) * src->size, N,
                                   cudaMemcpyDeviceToDevice, S.stream));
      off += src->size;
    }
    return 0;
  }
  case NN_SLICE: {
    const long Sv = (long)nd->d * nd->h * nd->w;
    CUDA_CHECK(cudaMemcpy2DAsync(y, sizeof(float) * nd->size, x + nd->slice0 * Sv,
                                 sizeof(float) * in->size, sizeof(float) * nd->size, N,
                                 cudaMemcpyDeviceToDevice, S.stream));
    return 0;
  }
  default:
    return ce_err("layer kind %d has no CUDA forward", (int)nd->kind);
  }
}

static int backward_node(nn_net *net, nn_node *nd) {
  const int N = net->batch;
  nn_node *in = &net->nodes[nd->in[0]];
  const float *x = in->out, *y = nd->out, *g = nd->grad;
  float *dx = in->needs_grad ? in->grad : NULL;
  const long total = (long)N * nd->size;
  switch (nd->kind) {
  case NN_CONV:
    return conv_backward(net, nd, dx);
  case NN_BATCHNORM:
    return bn_backward(net, nd, dx);
  case NN_RELU:
    if (dx) {
      k_relu_back<<<grid_for(total), THREADS, 0, S.stream>>>(total, y, g, dx);
      KERNEL_CHECK("k_relu_back");
    }
    return 0;
  case NN_TANH:
    if (dx) {
      k_tanh_back<<<grid_for(total), THREADS, 0, S.stream>>>(total, y, g, dx);
      KERNEL_CHECK("k_tanh_back");
    }
    return 0;
  case NN_MAXPOOL:
    if (dx) {
      k_maxpool_back<<<grid_for(total), THREADS, 0, S.stream>>>(N * in->c, in->d, in->h, in->w,
                                                                 nd->k.v[0], x, g, dx);
      KERNEL_CHECK("k_maxpool_back");
    }
    return 0;
  case NN_LINEAR:
    return linear_backward_at(net, nd, dx);
  case NN_UPSAMPLE:
    if (dx) {
      const long ntot = (long)N * in->size;
      k_upsample_back<<<grid_for(ntot), THREADS, 0, S.stream>>>(N * in->c, in->d, in->h, in->w,
                                                                 nd->s.v[0], nd->s.v[1],
                                                                 nd->s.v[2], g, dx);
      KERNEL_CHECK("k_upsample_back");
    }
    return 0;
  case NN_ADD:
    for (int j = 0; j < 2; j++) {
      nn_node *src = &net->nodes[nd->in[j]];
      if (!src->needs_grad) continue;
      k_accum<<<grid_for(total), THREADS, 0, S.stream>>>(total, g, src->grad);
      KERNEL_CHECK("k_accum");
    }
    return 0;
  case NN_CONCAT:
  case NN_SLICE: {
    long off = 0;
    for (int j = 0; j < nd->nin; j++) {
      nn_node *src = &net->nodes[nd->in[j]];
      long len = nd->kind == NN_CONCAT ? src->size : nd->size;
      long soff = nd->kind == NN_CONCAT ? 0 : nd->slice0 * (long)nd->d * nd->h * nd->w;
      if (src->needs_grad) {
        k_accum_rows<<<grid_for((long)N * len), THREADS, 0, S.stream>>>(
            N, len, g + off, nd->size, src->grad + soff, src->size);
        KERNEL_CHECK("k_accum_rows");
      }
      off += len;
    }
    return 0;
  }
  default:
    return ce_err("layer kind %d has no CUDA backward", (int)nd->kind);
  }
}

/* ---- optimiser ---------------------------------------------------------- */

__global__ static void k_adam(long n, float *w, const float *g, float *m, float *v, nn_adam_coef c) {
  GRID_STRIDE(j, n) {
    float gj = g[j] + c.l2 * w[j];
    float mj = c.b1 * m[j] + c.omb1 * gj;
    float vj = c.b2 * v[j] + c.omb2 * gj * gj;
    m[j] = mj;
    v[j] = vj;
    w[j] = w[j] * c.decay - c.step * mj / (sqrtf(vj) * c.rbc2 + c.eps);
  }
}

static int cuda_adam_update(nn_net *net, float *const *m, float *const *v, const nn_adam_coef *c) {
  int tm, kernels = 0;
  long values = 0;
  CE_TRY(times_begin(&tm));
  for (int i = 0; i < net->nparams; i++) {
    nn_param *p = &net->params[i];
    if (!m[i]) continue;
    k_adam<<<grid_for(p->n), THREADS, 0, S.stream>>>(p->n, p->w, p->g, m[i], v[i], *c);
    KERNEL_CHECK("k_adam");
    kernels++;
    values += (long)p->n;
  }
  return times_end(tm, "adam update (%d k_adam kernels, %ld values)", kernels, values);
}

/* ---- loss (cuFFT, double precision as loss.c) --------------------------- */

#define LOSS_BLOCKS 256

typedef struct {
  int h, w, wc, max_images;
  double *e;               /* max_images x h x w: p - t, then the spectral gradient */
  cufftDoubleComplex *spec; /* max_images x h x wc */
  double *part;            /* 2 x LOSS_BLOCKS partial sums */
  double *sums;            /* (sum e^2, sum |E|) */
  cufftHandle fwd, inv;
  int have_fwd, have_inv;
} cuda_loss;

static void loss_release(cuda_loss *l) {
  if (!l) return;
  if (l->have_fwd) cufftDestroy(l->fwd);
  if (l->have_inv) cufftDestroy(l->inv);
  cudaFree(l->e);
  cudaFree(l->spec);
  cudaFree(l->part);
  cudaFree(l->sums);
  free(l);
}

static int loss_setup(cuda_loss *l) {
  const size_t nr = (size_t)l->max_images * l->h * l->w, nc = (size_t)l->max_images * l->h * l->wc;
  CUDA_CHECK(cudaMalloc(&l->e, sizeof(double) * nr));
  CUDA_CHECK(cudaMalloc(&l->spec, sizeof(cufftDoubleComplex) * nc));
  CUDA_CHECK(cudaMalloc(&l->part, sizeof(double) * 2 * LOSS_BLOCKS));
  CUDA_CHECK(cudaMalloc(&l->sums, sizeof(double) * 2));
  int dims[2] = {l->h, l->w};
  CUFFT_CHECK(cufftPlanMany(&l->fwd, 2, dims, NULL, 1, l->h * l->w, NULL, 1, l->h * l->wc,
                            CUFFT_D2Z, l->max_images));
  l->have_fwd = 1;
  CUFFT_CHECK(cufftPlanMany(&l->inv, 2, dims, NULL, 1, l->h * l->wc, NULL, 1, l->h * l->w,
                            CUFFT_Z2D, l->max_images));
  l->have_inv = 1;
  CUFFT_CHECK(cufftSetStream(l->fwd, S.stream));
  CUFFT_CHECK(cufftSetStream(l->inv, S.stream));
  return 0;
}

static void *cuda_loss_create(int h, int w, int max_images) {
  if (h < 1 || w < 1 || max_images < 1) {
    ce_err("loss: image %d x %d, %d images: expected positive sizes", h, w, max_images);
    return NULL;
  }
  cuda_loss *l = (cuda_loss *)calloc(1, sizeof *l);
  if (!l) {
    ce_err("loss: out of memory");
    return NULL;
  }
  l->h = h;
  l->w = w;
  l->wc = w / 2 + 1;
  l->max_images = max_images;
  if (loss_setup(l) < 0) {
    ce_err_prefix("loss: %d images of %d x %d on the device", max_images, h, w);
    loss_release(l);
    return NULL;
  }
  return l;
}

static void cuda_loss_destroy(void *p) {
  if (!p) return;
  cudaStreamSynchronize(S.stream);
  loss_release((cuda_loss *)p);
}

/* e = p - t (double) for i < n, 0 up to all; part[block] = sum of e^2 */
__global__ static void k_loss_diff(long n, long all, const float *p, const float *t, double *e,
                                   double *part) {
  __shared__ double sh[THREADS];
  double sq = 0;
  GRID_STRIDE(i, all) {
    double v = i < n ? (double)p[i] - t[i] : 0;
    e[i] = v;
    sq += v * v;
  }
  sq = block_sum(sq, sh);
  if (threadIdx.x == 0) part[blockIdx.x] = sq;
}

/* sum of |E| over the full spectrum (mirrored columns twice); E/|E| in place */
__global__ static void k_loss_spec(long nspec, int wc, int w, cufftDoubleComplex *z,
                                   double *part) {
  __shared__ double sh[THREADS];
  double s = 0;
  GRID_STRIDE(i, nspec) {
    int kx = (int)(i % wc);
    double a = hypot(z[i].x, z[i].y);
    int twice = kx > 0 && !(w % 2 == 0 && kx == w / 2);
    s += twice ? 2 * a : a;
    if (a > 0) {
      z[i].x /= a;
      z[i].y /= a;
    } else {
      z[i].x = z[i].y = 0;
    }
  }
  s = block_sum(s, sh);
  if (threadIdx.x == 0) part[blockIdx.x] = s;
}

__global__ static void k_loss_grad(long n, const float *p, const float *t, const double *e,
                                   double N, float scale, float *grad) {
  GRID_STRIDE(i, n) {
    float g = (float)((LOSS_W_MSE * 2 * ((double)p[i] - t[i]) + LOSS_W_FFT * e[i]) / N);
    if (scale != 1.0f) g *= scale;
    grad[i] = g;
  }
}

static int cuda_loss_eval(void *lp, const float *p, const float *t, int m, float seed_scale,
                          loss_value *out, float *grad) {
  cuda_loss *l = (cuda_loss *)lp;
  if (m < 1 || m > l->max_images)
    return ce_err("loss: %d images, this loss was made for 1..%d", m, l->max_images);
  const long n = (long)m * l->h * l->w, all = (long)l->max_images * l->h * l->w;
  const long nspec = (long)m * l->h * l->wc;
  /* the timing mode's keys: the kernels and each cuFFT transform apart */
  const int mi = l->max_images, h = l->h, w = l->w;
  int tm;
  CE_TRY(times_begin(&tm));
  k_loss_diff<<<LOSS_BLOCKS, THREADS, 0, S.stream>>>(n, all, p, t, l->e, l->part);
  KERNEL_CHECK("k_loss_diff");
  CE_TRY(times_end(tm, "loss diff and squares %dx%dx%d (k_loss_diff)", mi, h, w));
  CE_TRY(times_begin(&tm));
  CUFFT_CHECK(cufftExecD2Z(l->fwd, l->e, l->spec));
  CE_TRY(times_end(tm, "loss cufft d2z %dx%dx%d", mi, h, w));
  CE_TRY(times_begin(&tm));
  k_loss_spec<<<LOSS_BLOCKS, THREADS, 0, S.stream>>>(nspec, l->wc, l->w, l->spec,
                                                     l->part + LOSS_BLOCKS);
  KERNEL_CHECK("k_loss_spec");
  k_sum_rows<<<1, 64, 0, S.stream>>>(2, LOSS_BLOCKS, l->part, l->sums);
  KERNEL_CHECK("k_sum_rows");
  CE_TRY(times_end(tm, "loss spectrum |E| and sums %dx%dx%d (k_loss_spec, k_sum_rows)", mi, h,
                   l->wc));
  if (grad) {
    /* e <- unnormalised inverse DFT of E/|E| (real) */
    CE_TRY(times_begin(&tm));
    CUFFT_CHECK(cufftExecZ2D(l->inv, l->spec, l->e));
    CE_TRY(times_end(tm, "loss cufft z2d %dx%dx%d", mi, h, w));
    CE_TRY(times_begin(&tm));
    k_loss_grad<<<grid_for(n), THREADS, 0, S.stream>>>(n, p, t, l->e, (double)n, seed_scale, grad);
    KERNEL_CHECK("k_loss_grad");
    CE_TRY(times_end(tm, "loss gradient %dx%dx%d (k_loss_grad)", m, h, w));
  }
  double sums[2];
  CE_TRY(times_begin(&tm));
  CUDA_CHECK(cudaMemcpyAsync(sums, l->sums, sizeof sums, cudaMemcpyDeviceToHost, S.stream));
  CE_TRY(times_end(tm, "loss sums d2h"));
  CE_TRY(sync_stream());
  const double N = (double)n;
  out->mse = sums[0] / N;
  out->fft = sums[1] / N;
  out->total = LOSS_W_MSE * out->mse + LOSS_W_FFT * out->fft;
  return 0;
}

/* ---- data parallelism --------------------------------------------------- */

/* grad_block[first, first + count) summed in pieces of at most reducer.chunk
 * (backend.h: call 4): on the device when the reducer has device sums (on
 * `stream`), else through the host (downloaded, summed, uploaded). */
static int sum_grads(nn_net *net, size_t first, size_t count, cudaStream_t stream) {
  const nn_reducer *r = nn_get_reducer(net);
  const size_t chunk = r->chunk ? r->chunk : NN_REDUCE_CHUNK;
  float *host = NULL;
  if (!r->dev_sum_f32) {
    host = (float *)ce_malloc_array(count < chunk ? (count ? count : 1) : chunk, sizeof(float),
                                    "gradient staging");
    if (!host) return -1;
  }
  int rc = 0;
  for (size_t off = first; off < first + count && rc == 0; off += chunk) {
    size_t n = first + count - off < chunk ? first + count - off : chunk;
    if (r->dev_sum_f32) {
      if (r->dev_sum_f32(r->ctx, net->grad_block + off, n, stream) < 0) rc = -1;
    } else {
      rc = cuda_download(host, net->grad_block + off, sizeof(float) * n);
      if (rc == 0 && r->sum_f32(r->ctx, host, n) < 0) rc = -1;
      if (rc == 0) rc = cuda_upload(net->grad_block + off, host, sizeof(float) * n);
    }
    if (rc < 0)
      ce_err_prefix("summing parameter gradients [%zu, %zu) over %d replicas", off, off + n,
                    r->world);
  }
  free(host);
  return rc;
}

/* A bucket (bucket.h): device sums go on the second stream once the backward
 * queued so far is done, so they overlap the rest of the backward; host sums
 * are staged at once. */
static int cuda_reduce_bucket(nn_net *net, size_t off, size_t n) {
  if (!nn_get_reducer(net)->dev_sum_f32) return sum_grads(net, off, n, S.stream);
  if (!S.comm) {
    CUDA_CHECK(cudaStreamCreateWithFlags(&S.comm, cudaStreamNonBlocking));
    CUDA_CHECK(cudaEventCreateWithFlags(&S.grads_done, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventCreateWithFlags(&S.comm_done, cudaEventDisableTiming));
  }
  CUDA_CHECK(cudaEventRecord(S.grads_done, S.stream));
  CUDA_CHECK(cudaStreamWaitEvent(S.comm, S.grads_done, 0));
  return sum_grads(net, off, n, S.comm);
}

/* The sums (or, in buckets, the wait for them), then every value / world on
 * the device. */
static int cuda_reduce_grads(nn_net *net) {
  const nn_reducer *r = nn_get_reducer(net);
  if (!r) return 0;
  const size_t total = net->grad_used_n;
  if (!r->bucket) {
    CE_TRY(sum_grads(net, 0, total, S.stream));
  } else if (r->dev_sum_f32 && S.comm) {
    CUDA_CHECK(cudaEventRecord(S.comm_done, S.comm));
    CUDA_CHECK(cudaStreamWaitEvent(S.stream, S.comm_done, 0));
  }
  if (r->world > 1) {
    int tm;
    CE_TRY(times_begin(&tm));
    k_div<<<grid_for((long)total), THREADS, 0, S.stream>>>((long)total, net->grad_block,
                                                           (float)r->world);
    KERNEL_CHECK("k_div");
    return times_end(tm, "gradients / world (k_div)");
  }
  return 0;
}

/* ---- host staging ------------------------------------------------------- */

/* Page-locked: uploads from it are DMA copies (backend.h, host_alloc). */
static void *cuda_host_alloc(size_t bytes) {
  void *p = NULL;
  cudaError_t e = cudaHostAlloc(&p, bytes ? bytes : 64, cudaHostAllocDefault);
  if (e != cudaSuccess) {
    cudaGetLastError();
    ce_err("out of page-locked host memory allocating %zu bytes: cudaHostAlloc: %s", bytes,
           cudaGetErrorString(e));
    return NULL;
  }
  memset(p, 0, bytes);
  return p;
}

static void cuda_host_free(void *p) {
  if (p) cudaFreeHost(p);
}

/* ---- the input feed: copies beside the compute, normalisation ---------- */

/* upload_async copies on a stream of its own, after the compute work queued
 * before it (queued: dst may be a buffer that work still reads); upload_wait
 * records `done` on it, makes the compute stream wait for it and blocks the
 * host until it (backend.h, HOST SYNCHRONISATION). */
static struct {
  cudaStream_t copy;
  cudaEvent_t queued, done;
  int pending;
} F;

static void feed_release(void) {
  if (F.copy) {
    cudaStreamSynchronize(F.copy);
    cudaStreamDestroy(F.copy);
    cudaEventDestroy(F.queued);
    cudaEventDestroy(F.done);
  }
  memset(&F, 0, sizeof F);
}

static int cuda_upload_async(void *dst, const void *src, size_t bytes) {
  if (!bytes) return 0;
  if (!F.copy) {
    CUDA_CHECK(cudaStreamCreateWithFlags(&F.copy, cudaStreamNonBlocking));
    CUDA_CHECK(cudaEventCreateWithFlags(&F.queued, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventCreateWithFlags(&F.done, cudaEventDisableTiming));
  }
  CUDA_CHECK(cudaEventRecord(F.queued, S.stream));
  CUDA_CHECK(cudaStreamWaitEvent(F.copy, F.queued, 0));
  CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, F.copy));
  F.pending = 1;
  return 0;
}

static int cuda_upload_wait(void) {
  if (!F.pending) return 0;
  F.pending = 0;
  CUDA_CHECK(cudaEventRecord(F.done, F.copy));
  CUDA_CHECK(cudaStreamWaitEvent(S.stream, F.done, 0));
  CUDA_CHECK(cudaEventSynchronize(F.done));
  return 0;
}

/* The bodies of stats/norm_body.h: every value a thread of a grid-stride
 * loop; a target sample's zero fill is its block's minimum (exact in any
 * order, so the kernels give the host's bits wherever log does). */
__global__ void k_norm_inputs(stats_norm p, const float *in, float *out, size_t samples,
                              size_t nvox) {
  norm_body_inputs_thread(&p, in, out, samples, nvox, (size_t)blockIdx.x * blockDim.x + threadIdx.x,
                          (size_t)gridDim.x * blockDim.x);
}

__global__ void k_norm_fill(const float *in, size_t nval, float *fill) {
  __shared__ float m[THREADS];
  const unsigned t = threadIdx.x;
  m[t] = norm_body_smallest_thread(in + (size_t)blockIdx.x * nval, nval, t, blockDim.x, INFINITY);
  __syncthreads();
  for (unsigned h = blockDim.x / 2; h > 0; h /= 2) {
    if (t < h && m[t + h] < m[t]) m[t] = m[t + h];
    __syncthreads();
  }
  if (t == 0) fill[blockIdx.x] = norm_body_zero_fill(m[0]);
}

__global__ void k_norm_targets(stats_norm p, const float *in, const float *fill, float *out,
                               size_t samples, size_t nval) {
  norm_body_targets_thread(&p, in, fill, out, samples, nval,
                           (size_t)blockIdx.x * blockDim.x + threadIdx.x,
                           (size_t)gridDim.x * blockDim.x);
}

static int cuda_normalise_inputs(const stats_norm *p, const float *in, float *out, int samples,
                                 size_t nvox) {
  if (samples < 1 || !nvox) return 0;
  int tm;
  CE_TRY(times_begin(&tm));
  k_norm_inputs<<<grid_for((long)((size_t)samples * 3 * nvox)), THREADS, 0, S.stream>>>(
      *p, in, out, (size_t)samples, nvox);
  KERNEL_CHECK("k_norm_inputs");
  return times_end(tm, "normalise inputs (k_norm_inputs)");
}

static int cuda_normalise_targets(const stats_norm *p, const float *in, float *out, int samples,
                                  size_t nval) {
  if (samples < 1 || !nval) return 0;
  float *fill = (float *)scratch(sizeof(float) * (size_t)samples);
  if (!fill) return -1;
  int tm;
  CE_TRY(times_begin(&tm));
  k_norm_fill<<<(unsigned)samples, THREADS, 0, S.stream>>>(in, nval, fill);
  KERNEL_CHECK("k_norm_fill");
  k_norm_targets<<<grid_for((long)((size_t)samples * nval)), THREADS, 0, S.stream>>>(
      *p, in, fill, out, (size_t)samples, nval);
  KERNEL_CHECK("k_norm_targets");
  return times_end(tm, "normalise targets (k_norm_fill, k_norm_targets)");
}

/* ---- the table ---------------------------------------------------------- */

/* ---- evaluation: the metrics of trainer/metrics_body.h ----------------- */

/* A thread per channel (its data range), per sample (MaxRel, ZNCC) or per
 * sample and channel (SSIM), each running a serial body: the host's
 * operations in the host's order (docs/trainer.md bounds what exp and fused
 * multiply-adds change). Only the per-sample doubles come back. */
struct metrics_window {
  double g[METRICS_SSIM_WIN];
};

__global__ void k_metrics_range(const float *t, int n, int f, size_t hw, double *range) {
  for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < f; c += gridDim.x * blockDim.x)
    metrics_body_range(t, n, f, c, hw, &range[2 * c], &range[2 * c + 1]);
}

/* out[METRICS_MAXREL n + s], out[METRICS_ZNCC n + s], bad[s]; scratch: 2 f hw
 * doubles per sample. */
__global__ void k_metrics_sample(stats_norm p, const float *pred, const float *target, int n,
                                 int f, size_t hw, double *scr, double *out, double *bad) {
  const size_t ns = (size_t)f * hw;
  for (int s = blockIdx.x * blockDim.x + threadIdx.x; s < n; s += gridDim.x * blockDim.x) {
    double *tp = scr + (size_t)s * 2 * ns, *pp = tp + ns;
    const float *ps = pred + s * ns, *ts = target + s * ns;
    metrics_body_inverse(&p, ts, tp, ns);
    metrics_body_inverse(&p, ps, pp, ns);
    out[METRICS_MAXREL * n + s] = metrics_body_maxrel(tp, pp, f, hw, &bad[s]);
    out[METRICS_ZNCC * n + s] = metrics_body_zncc_sample(ps, ts, f, hw);
  }
}

/* v[s f + c] = SSIM of (s, c); scratch: per image metrics_body_ssim_scratch. */
__global__ void k_metrics_ssim(metrics_window g, const float *pred, const float *target, int n,
                               int f, int h, int w, int reflect, const double *range, double *scr,
                               size_t per, double *v) {
  const size_t hw = (size_t)h * w;
  for (long i = blockIdx.x * blockDim.x + threadIdx.x; i < (long)n * f;
       i += (long)gridDim.x * blockDim.x) {
    const int c = (int)(i % f);
    v[i] = metrics_body_ssim(pred + i * hw, target + i * hw, h, w, reflect, g.g,
                             range[2 * c + 1] - range[2 * c], scr + i * per);
  }
}

__global__ void k_metrics_channel_mean(const double *v, int n, int f, double *out) {
  for (int s = blockIdx.x * blockDim.x + threadIdx.x; s < n; s += gridDim.x * blockDim.x)
    out[s] = metrics_body_channel_mean(v + (size_t)s * f, f);
}

static int cuda_metrics(const stats_norm *p, const float *pred, const float *target, int n, int f,
                        int h, int w, double *out) {
  if (n < 1) return 0;
  const size_t hw = (size_t)h * w, ns = (size_t)f * hw, nf = (size_t)n * f;
  const int ssim = h >= METRICS_SSIM_WIN && w >= METRICS_SSIM_WIN;
  const size_t per = ssim ? metrics_body_ssim_scratch(h, w, 1) : 0;
  /* results (METRICS_FIELDS n), bad (n), ranges (2 f), SSIM per image (n f),
   * the per-sample scratch, the per-image SSIM scratch */
  const size_t res = (size_t)(METRICS_FIELDS + 1) * n, ranges = 2 * (size_t)f;
  const size_t total = res + ranges + nf + (size_t)n * 2 * ns + nf * per;
  double *d = (double *)scratch(sizeof(double) * total);
  if (!d) return -1;
  double *d_out = d, *d_bad = d + (size_t)METRICS_FIELDS * n, *d_range = d + res;
  double *d_v = d_range + ranges, *d_smp = d_v + nf, *d_ssim = d_smp + (size_t)n * 2 * ns;
  int tm;
  CE_TRY(times_begin(&tm));
  k_metrics_sample<<<grid_for(n), THREADS, 0, S.stream>>>(*p, pred, target, n, f, hw, d_smp, d_out,
                                                            d_bad);
  KERNEL_CHECK("k_metrics_sample");
  if (ssim) {
    metrics_window g;
    metrics_body_ssim_window(g.g); /* on the host: the device takes no exp of its own here */
    k_metrics_range<<<grid_for(f), THREADS, 0, S.stream>>>(target, n, f, hw, d_range);
    KERNEL_CHECK("k_metrics_range");
    for (int r = 0; r < 2; r++) {
      k_metrics_ssim<<<grid_for((long)nf), THREADS, 0, S.stream>>>(g, pred, target, n, f, h, w, r,
                                                                    d_range, d_ssim, per, d_v);
      KERNEL_CHECK("k_metrics_ssim");
      k_metrics_channel_mean<<<grid_for(n), THREADS, 0, S.stream>>>(
          d_v, n, f, d_out + (size_t)(METRICS_SSIM_I + r) * n);
      KERNEL_CHECK("k_metrics_channel_mean");
    }
  }
  CE_TRY(times_end(tm, "metrics %d samples (k_metrics_*)", n));
  double *h_res = (double *)malloc(sizeof(double) * res);
  if (!h_res) return ce_err("metrics: out of memory for %d samples' results", n);
  if (cuda_download(h_res, d, sizeof(double) * res) < 0) {
    free(h_res);
    return -1;
  }
  memcpy(out, h_res, sizeof(double) * (size_t)METRICS_FIELDS * n);
  if (!ssim)
    for (int s = 0; s < 2 * n; s++) out[(size_t)METRICS_SSIM_I * n + s] = NAN;
  int rc = 0;
  for (int s = 0; s < n && rc == 0; s++)
    if (h_res[(size_t)METRICS_FIELDS * n + s] >= 0)
      rc = metrics_maxrel_error(s, h_res[(size_t)METRICS_FIELDS * n + s],
                                out[METRICS_MAXREL * n + s]);
  free(h_res);
  return rc;
}

extern "C" const nn_backend nn_backend_cuda = {
    /* .name = */ "cuda",
    /* .precisions = */ NN_PRECISION_BIT(NN_TF32) | NN_PRECISION_BIT(NN_BF16),
    /* .init = */ cuda_init,
    /* .finish = */ cuda_finish,
    /* .alloc = */ cuda_alloc,
    /* .free = */ cuda_free,
    /* .upload = */ cuda_upload,
    /* .download = */ cuda_download,
    /* .copy = */ cuda_copy,
    /* .zero = */ cuda_zero,
    /* .forward = */ cuda_forward,
    /* .backward = */ cuda_backward,
    /* .workspace = */ cuda_workspace,
    /* .adam_update = */ cuda_adam_update,
    /* .loss_create = */ cuda_loss_create,
    /* .loss_destroy = */ cuda_loss_destroy,
    /* .loss_eval = */ cuda_loss_eval,
    /* .reduce_grads = */ cuda_reduce_grads,
    /* .reduce_bucket = */ cuda_reduce_bucket,
    /* .host_alloc = */ cuda_host_alloc,
    /* .host_free = */ cuda_host_free,
    /* .upload_async = */ cuda_upload_async,
    /* .upload_wait = */ cuda_upload_wait,
    /* .normalise_inputs = */ cuda_normalise_inputs,
    /* .normalise_targets = */ cuda_normalise_targets,
    /* .metrics = */ cuda_metrics,
};
