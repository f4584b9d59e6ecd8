/* cudnn_graph.c - one convolution on cuDNN's graph (backend) API
 * (cudnn_graph.h). Attribute names, types and counts as cuDNN 9's
 * cudnn_graph.h declares them. */
#define _POSIX_C_SOURCE 200809L
#include "trainer/cuda/cudnn_graph.h"

#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef cudnnBackendDescriptor_t bdesc;

/* ---- messages ------------------------------------------------------------- */

static _Thread_local char ERR[1024];

const char *cg_error(void) { return ERR; }

static int set_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int set_err(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(ERR, sizeof ERR, fmt, ap);
  va_end(ap);
  return -1;
}

static int dnn_err(const char *call, cudnnStatus_t s, const char *label) {
  char last[600] = "";
#if CUDNN_MAJOR >= 9
  cudnnGetLastErrorString(last, sizeof last);
#endif
  return set_err("%s: %s (%d) [%s]%s%s", call, cudnnGetErrorString(s), (int)s, label ? label : "",
                 last[0] ? ": " : "", last);
}

static int cuda_err(const char *call, cudaError_t e, const char *label) {
  return set_err("%s: %s (%s) [%s]", call, cudaGetErrorString(e), cudaGetErrorName(e),
                 label ? label : "");
}

/* checked calls inside a function with a `fail:` label and a `label` */
#define DNN(call)                                                                         \
  do {                                                                                    \
    cudnnStatus_t s_ = (call);                                                            \
    if (s_ != CUDNN_STATUS_SUCCESS) {                                                     \
      dnn_err(#call, s_, label);                                                          \
      goto fail;                                                                          \
    }                                                                                     \
  } while (0)
#define CU(call)                                                                          \
  do {                                                                                    \
    cudaError_t e_ = (call);                                                              \
    if (e_ != cudaSuccess) {                                                              \
      cuda_err(#call, e_, label);                                                         \
      goto fail;                                                                          \
    }                                                                                     \
  } while (0)

static void bfree(bdesc *d) {
  if (*d) cudnnBackendDestroyDescriptor(*d);
  *d = NULL;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- geometry ---------------------------------------------------------------- */

const char *cg_op_name(cg_op op) {
  return op == CG_FWD ? "fwd" : op == CG_BWD_DATA ? "bwd_data" : op == CG_BWD_FILTER ? "bwd_filter" : "?";
}

int cg_out_dim(const cg_conv *c, int i) {
  if (c->nd == 2 && i == 0) return 1;
  return (c->in[i] + 2 * c->pad[i] - c->k[i]) / c->stride[i] + 1;
}

struct cg_graph {
  cg_conv c;
  cg_op op;
  float alpha, beta;
  int rank;
  int64_t dims[3][5]; /* x, w, y (CG_UID_* - 1) */
  size_t elems[3];
  bdesc x, w, y, conv, opd, graph;
  char label[192];
};

const char *cg_graph_label(const cg_graph *g) { return g->label; }
bdesc cg_graph_desc(const cg_graph *g) { return g->graph; }
cg_op cg_graph_op(const cg_graph *g) { return g->op; }
size_t cg_graph_elems(const cg_graph *g, int uid) {
  return uid >= CG_UID_X && uid <= CG_UID_Y ? g->elems[uid - 1] : 0;
}

static void triple(char *out, size_t n, const char *tag, const int *v, int nd) {
  if (nd == 2) snprintf(out, n, " %s%dx%d", tag, v[1], v[2]);
  else snprintf(out, n, " %s%dx%dx%d", tag, v[0], v[1], v[2]);
}

/* dims of x, w, y; the label */
static int geometry(cg_graph *g) {
  const cg_conv *c = &g->c;
  char k[40], s[40], p[40];
  triple(k, sizeof k, "k", c->k, c->nd);
  triple(s, sizeof s, "s", c->stride, c->nd);
  triple(p, sizeof p, "p", c->pad, c->nd);
  char beta[48] = "";
  if (g->alpha != 1.0f || g->beta != 0.0f)
    snprintf(beta, sizeof beta, " alpha %g beta %g", (double)g->alpha, (double)g->beta);
  if (c->nd == 3)
    snprintf(g->label, sizeof g->label, "conv3d %dx%dx%dx%dx%d->%d%s%s%s %s%s%s", c->n, c->cin,
             c->in[0], c->in[1], c->in[2], c->cout, k, s, p, cg_op_name(g->op),
             c->io == CUDNN_DATA_BFLOAT16 ? " bf16" : "", beta);
  else
    snprintf(g->label, sizeof g->label, "conv2d %dx%dx%dx%d->%d%s%s%s %s%s%s", c->n, c->cin,
             c->in[1], c->in[2], c->cout, k, s, p, cg_op_name(g->op),
             c->io == CUDNN_DATA_BFLOAT16 ? " bf16" : "", beta);
  if (c->nd != 2 && c->nd != 3) return set_err("%d spatial dimensions, expected 2 or 3 [%s]", c->nd, g->label);
  if (c->io != CUDNN_DATA_FLOAT && c->io != CUDNN_DATA_BFLOAT16)
    return set_err("data type %d, expected float or bf16 [%s]", (int)c->io, g->label);
  const int first = c->nd == 2 ? 1 : 0;
  g->rank = c->nd + 2;
  int64_t *x = g->dims[0], *w = g->dims[1], *y = g->dims[2];
  x[0] = c->n, x[1] = c->cin;
  w[0] = c->cout, w[1] = c->cin;
  y[0] = c->n, y[1] = c->cout;
  if (c->n < 1 || c->cin < 1 || c->cout < 1) return set_err("empty convolution [%s]", g->label);
  for (int i = first; i < 3; i++) {
    const int o = cg_out_dim(c, i);
    if (c->in[i] < 1 || c->k[i] < 1 || c->stride[i] < 1 || c->pad[i] < 0 || o < 1)
      return set_err("spatial dimension %d: input %d, kernel %d, stride %d, pad %d: no output [%s]",
                     i, c->in[i], c->k[i], c->stride[i], c->pad[i], g->label);
    x[2 + i - first] = c->in[i];
    w[2 + i - first] = c->k[i];
    y[2 + i - first] = o;
  }
  for (int t = 0; t < 3; t++) {
    g->elems[t] = 1;
    for (int i = 0; i < g->rank; i++) g->elems[t] *= (size_t)g->dims[t][i];
  }
  return 0;
}

/* a packed tensor: dims and strides (int64), unique id, 16-byte alignment */
static int make_tensor(bdesc *t, int64_t uid, int rank, const int64_t *dims, cudnnDataType_t dt,
                       const char *label) {
  int64_t str[5];
  const int64_t align = 16;
  str[rank - 1] = 1;
  for (int i = rank - 2; i >= 0; i--) str[i] = str[i + 1] * dims[i + 1];
  DNN(cudnnBackendCreateDescriptor(CUDNN_BACKEND_TENSOR_DESCRIPTOR, t));
  DNN(cudnnBackendSetAttribute(*t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dt));
  DNN(cudnnBackendSetAttribute(*t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, rank, dims));
  DNN(cudnnBackendSetAttribute(*t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, rank, str));
  DNN(cudnnBackendSetAttribute(*t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid));
  DNN(cudnnBackendSetAttribute(*t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align));
  DNN(cudnnBackendFinalize(*t));
  return 0;
fail:
  bfree(t);
  return -1;
}

/* float compute, cross-correlation, per spatial dimension pre/post paddings,
   strides, dilations (int64 arrays) */
static int make_conv(bdesc *d, const cg_conv *c, const char *label) {
  const int64_t nsp = c->nd;
  const int off = c->nd == 2 ? 1 : 0;
  int64_t pad[3], str[3], dil[3];
  for (int i = 0; i < c->nd; i++) {
    pad[i] = c->pad[i + off];
    str[i] = c->stride[i + off];
    dil[i] = 1;
  }
  const cudnnDataType_t comp = CUDNN_DATA_FLOAT;
  const cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION;
  DNN(cudnnBackendCreateDescriptor(CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR, d));
  DNN(cudnnBackendSetAttribute(*d, CUDNN_ATTR_CONVOLUTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp));
  DNN(cudnnBackendSetAttribute(*d, CUDNN_ATTR_CONVOLUTION_CONV_MODE, CUDNN_TYPE_CONVOLUTION_MODE, 1, &mode));
  DNN(cudnnBackendSetAttribute(*d, CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, CUDNN_TYPE_INT64, 1, &nsp));
  DNN(cudnnBackendSetAttribute(*d, CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, CUDNN_TYPE_INT64, nsp, pad));
  DNN(cudnnBackendSetAttribute(*d, CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, CUDNN_TYPE_INT64, nsp, pad));
  DNN(cudnnBackendSetAttribute(*d, CUDNN_ATTR_CONVOLUTION_DILATIONS, CUDNN_TYPE_INT64, nsp, dil));
  DNN(cudnnBackendSetAttribute(*d, CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES, CUDNN_TYPE_INT64, nsp, str));
  DNN(cudnnBackendFinalize(*d));
  return 0;
fail:
  bfree(d);
  return -1;
}

void cg_graph_destroy(cg_graph *g) {
  if (!g) return;
  bfree(&g->graph);
  bfree(&g->opd);
  bfree(&g->conv);
  bfree(&g->x);
  bfree(&g->w);
  bfree(&g->y);
  free(g);
}

/* cuDNN dlopens NVRTC (libnvrtc.so.<CUDA major>) for each engine it checks
   and dlcloses it after: 157 loads in the engine probe's self-test, 70 of
   them in its deviceless search of one training step. Each load runs
   NVRTC's static initialisers again, among them the 72,704-byte emergency
   pool of the libstdc++ linked into it, which the unload never frees;
   LeakSanitizer then reports those blocks from a module that is gone,
   which no suppression can name. One reference held for the process's
   life makes cuDNN's loads and unloads count up and down on a library that
   stays mapped (the probe's self-test counts the loads during its search:
   0 with this, 70 without). Best effort: where NVRTC is missing, cuDNN's
   own load fails the same way without it. */
static void nvrtc_hold(void) {
  char name[32];
  snprintf(name, sizeof name, "libnvrtc.so.%d", CUDART_VERSION / 1000);
  (void)dlopen(name, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
}

void cg_hold_nvrtc(void) {
  static pthread_once_t nvrtc_once = PTHREAD_ONCE_INIT;
  pthread_once(&nvrtc_once, nvrtc_hold);
}

int cg_graph_create(cg_graph **out, const cg_conv *c, cg_op op, float alpha, float beta,
                    cudnnHandle_t handle) {
  cg_hold_nvrtc();
  *out = NULL;
  cg_graph *g = (cg_graph *)calloc(1, sizeof *g);
  if (!g) return set_err("out of host memory for a cuDNN graph");
  g->c = *c;
  if (!g->c.io) g->c.io = CUDNN_DATA_FLOAT;
  g->op = op;
  g->alpha = alpha;
  g->beta = beta;
  const char *label = g->label;
  if (op != CG_FWD && op != CG_BWD_DATA && op != CG_BWD_FILTER) {
    set_err("operation %d, expected fwd, bwd_data or bwd_filter", (int)op);
    goto fail;
  }
  if (geometry(g) < 0) goto fail;
  if (make_tensor(&g->x, CG_UID_X, g->rank, g->dims[0], g->c.io, label) < 0) goto fail;
  if (make_tensor(&g->w, CG_UID_W, g->rank, g->dims[1], g->c.io, label) < 0) goto fail;
  if (make_tensor(&g->y, CG_UID_Y, g->rank, g->dims[2], g->c.io, label) < 0) goto fail;
  if (make_conv(&g->conv, &g->c, label) < 0) goto fail;
  /* alpha and beta: float, the compute type's */
  if (op == CG_FWD) {
    DNN(cudnnBackendCreateDescriptor(CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR, &g->opd));
    DNN(cudnnBackendSetAttribute(g->opd, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &g->x));
    DNN(cudnnBackendSetAttribute(g->opd, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &g->w));
    DNN(cudnnBackendSetAttribute(g->opd, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &g->y));
    DNN(cudnnBackendSetAttribute(g->opd, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &g->conv));
    DNN(cudnnBackendSetAttribute(g->opd, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA, CUDNN_TYPE_FLOAT, 1, &alpha));
    DNN(cudnnBackendSetAttribute(g->opd, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA, CUDNN_TYPE_FLOAT, 1, &beta));
  } else if (op == CG_BWD_DATA) {
    DNN(cudnnBackendCreateDescriptor(CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_DATA_DESCRIPTOR, &g->opd));
    DNN(cudnnBackendSetAttribute(g->opd, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DX, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &g->x));
    DNN(cudnnBackendSetAttribute(g->opd, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_W, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &g->w));
    DNN(cudnnBackendSetAttribute(g->opd, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DY, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &g->y));
    DNN(cudnnBackendSetAttribute(g->opd, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_CONV_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &g->conv));
    DNN(cudnnBackendSetAttribute(g->opd, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_ALPHA, CUDNN_TYPE_FLOAT, 1, &alpha));
    DNN(cudnnBackendSetAttribute(g->opd, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_BETA, CUDNN_TYPE_FLOAT, 1, &beta));
  } else {
    DNN(cudnnBackendCreateDescriptor(CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_FILTER_DESCRIPTOR, &g->opd));
    DNN(cudnnBackendSetAttribute(g->opd, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_X, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &g->x));
    DNN(cudnnBackendSetAttribute(g->opd, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DW, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &g->w));
    DNN(cudnnBackendSetAttribute(g->opd, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DY, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &g->y));
    DNN(cudnnBackendSetAttribute(g->opd, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_CONV_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &g->conv));
    DNN(cudnnBackendSetAttribute(g->opd, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_ALPHA, CUDNN_TYPE_FLOAT, 1, &alpha));
    DNN(cudnnBackendSetAttribute(g->opd, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_BETA, CUDNN_TYPE_FLOAT, 1, &beta));
  }
  DNN(cudnnBackendFinalize(g->opd));
  DNN(cudnnBackendCreateDescriptor(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, &g->graph));
  DNN(cudnnBackendSetAttribute(g->graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &g->opd));
  /* the handle: deprecated in later 9.x releases (optional there: the graph
     targets the current device), required by earlier ones */
  if (handle) DNN(cudnnBackendSetAttribute(g->graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle));
  DNN(cudnnBackendFinalize(g->graph));
  *out = g;
  return 0;
fail:
  cg_graph_destroy(g);
  return -1;
}

/* ---- engine configs, plans, variant packs ------------------------------------- */

int cg_heuristics(const cg_graph *g, cudnnBackendHeurMode_t mode, bdesc *cfgs, int cap,
                  int64_t *total) {
  return cg_heuristics_for(g, mode, NULL, cfgs, cap, total);
}

int cg_heuristics_for(const cg_graph *g, cudnnBackendHeurMode_t mode, bdesc deviceprop,
                      bdesc *cfgs, int cap, int64_t *total) {
  const char *label = g->label;
  bdesc heur = NULL;
  bdesc graph = g->graph;
  int64_t n = 0, got = 0;
  int k = 0;
  *total = 0;
  DNN(cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, &heur));
  DNN(cudnnBackendSetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &graph));
  DNN(cudnnBackendSetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode));
#if CG_HAVE_DEVICEPROP
  if (deviceprop)
    DNN(cudnnBackendSetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_DEVICEPROP,
                                 CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &deviceprop));
#else
  if (deviceprop) {
    set_err("cuDNN %d has no device-properties descriptors (9.8 or later) [%s]", CUDNN_VERSION, label);
    goto fail;
  }
#endif
  DNN(cudnnBackendFinalize(heur));
  DNN(cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &n, NULL));
  *total = n;
  if (n > cap) n = cap;
  if (n <= 0) {
    bfree(&heur);
    return 0;
  }
  for (k = 0; k < n; k++) DNN(cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, &cfgs[k]));
  DNN(cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, n, &got, cfgs));
  if (got > n) got = n;
  for (int64_t i = got < 0 ? 0 : got; i < n; i++) bfree(&cfgs[i]);
  bfree(&heur);
  return (int)(got < 0 ? 0 : got);
fail:
  for (int i = 0; i < k; i++) bfree(&cfgs[i]);
  bfree(&heur);
  return -1;
}

int cg_config_info(bdesc cfg, cg_info *info, const char *label) {
  bdesc eng = NULL;
  int64_t cnt = 0;
  cudnnBackendNumericalNote_t notes[CUDNN_NUMERICAL_NOTE_TYPE_COUNT];
  cudnnBackendBehaviorNote_t bnotes[CUDNN_BEHAVIOR_NOTE_TYPE_COUNT];
  const int heur = info->heur, index = info->index;
  memset(info, 0, sizeof *info);
  info->heur = heur;
  info->index = index;
  info->engine = -1;
  info->ws = -1;
  DNN(cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINE_DESCRIPTOR, &eng));
  DNN(cudnnBackendGetAttribute(cfg, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cnt, &eng));
  DNN(cudnnBackendGetAttribute(eng, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &cnt, &info->engine));
  cnt = 0;
  DNN(cudnnBackendGetAttribute(eng, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE,
                               CUDNN_NUMERICAL_NOTE_TYPE_COUNT, &cnt, notes));
  if (cnt > CUDNN_NUMERICAL_NOTE_TYPE_COUNT) cnt = CUDNN_NUMERICAL_NOTE_TYPE_COUNT;
  for (int64_t i = 0; i < cnt; i++) {
    info->tensor_core |= notes[i] == CUDNN_NUMERICAL_NOTE_TENSOR_CORE;
    info->down_convert |= notes[i] == CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS;
    info->reduced_reduction |= notes[i] == CUDNN_NUMERICAL_NOTE_REDUCED_PRECISION_REDUCTION;
    info->fft |= notes[i] == CUDNN_NUMERICAL_NOTE_FFT;
    info->nondet |= notes[i] == CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC;
    info->winograd |= notes[i] == CUDNN_NUMERICAL_NOTE_WINOGRAD ||
                      notes[i] == CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_4x4 ||
                      notes[i] == CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_6x6 ||
                      notes[i] == CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_13x13;
  }
  cnt = 0;
  if (cudnnBackendGetAttribute(eng, CUDNN_ATTR_ENGINE_BEHAVIOR_NOTE, CUDNN_TYPE_BEHAVIOR_NOTE,
                               CUDNN_BEHAVIOR_NOTE_TYPE_COUNT, &cnt, bnotes) == CUDNN_STATUS_SUCCESS) {
    if (cnt > CUDNN_BEHAVIOR_NOTE_TYPE_COUNT) cnt = CUDNN_BEHAVIOR_NOTE_TYPE_COUNT;
    for (int64_t i = 0; i < cnt; i++) info->rtc |= bnotes[i] == CUDNN_BEHAVIOR_NOTE_RUNTIME_COMPILATION;
  }
#if CUDNN_VERSION >= 90200
  { /* the config's workspace, before a plan is built for it */
    int64_t w = 0;
    if (cudnnBackendGetAttribute(cfg, CUDNN_ATTR_ENGINECFG_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &cnt,
                                 &w) == CUDNN_STATUS_SUCCESS)
      info->ws = w;
  }
#endif
  bfree(&eng);
  return 0;
fail:
  bfree(&eng);
  return -1;
}

cudnnStatus_t cg_plan_finalize(cudnnHandle_t handle, bdesc cfg, bdesc *plan, int64_t *ws,
                               const char *label, int quiet) {
  return cg_plan_finalize_for(handle, NULL, cfg, plan, ws, label, quiet);
}

cudnnStatus_t cg_plan_finalize_for(cudnnHandle_t handle, bdesc deviceprop, bdesc cfg, bdesc *plan,
                                   int64_t *ws, const char *label, int quiet) {
  cudnnStatus_t s;
  int64_t cnt = 0;
  *ws = 0;
  *plan = NULL;
#define STEP(call, loud)                                                                  \
  do {                                                                                    \
    s = (call);                                                                           \
    if (s != CUDNN_STATUS_SUCCESS) {                                                      \
      if ((loud) || !quiet) dnn_err(#call, s, label);                                     \
      else set_err("%s: %s [%s]", #call, cudnnGetErrorString(s), label);                  \
      goto fail;                                                                          \
    }                                                                                     \
  } while (0)
  STEP(cudnnBackendCreateDescriptor(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, plan), 1);
  STEP(cudnnBackendSetAttribute(*plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cfg), 1);
  /* deprecated as the graph's (cg_graph_create) */
  if (handle) STEP(cudnnBackendSetAttribute(*plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle), 1);
#if CG_HAVE_DEVICEPROP
  if (deviceprop)
    STEP(cudnnBackendSetAttribute(*plan, CUDNN_ATTR_EXECUTION_PLAN_DEVICEPROP,
                                  CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &deviceprop), 1);
#else
  if (deviceprop) STEP(CUDNN_STATUS_NOT_SUPPORTED, 1);
#endif
  STEP(cudnnBackendFinalize(*plan), 0);
  STEP(cudnnBackendGetAttribute(*plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &cnt, ws), 1);
#undef STEP
  return CUDNN_STATUS_SUCCESS;
fail:
  bfree(plan);
  return s;
}

cudnnStatus_t cg_variant_pack(bdesc *vp, void *x, void *w, void *y, void *ws, const char *label) {
  cudnnStatus_t s;
  void *ptrs[3] = {x, w, y};
  const int64_t uids[3] = {CG_UID_X, CG_UID_W, CG_UID_Y};
  *vp = NULL;
#define STEP(call)                                                                        \
  do {                                                                                    \
    s = (call);                                                                           \
    if (s != CUDNN_STATUS_SUCCESS) {                                                      \
      dnn_err(#call, s, label);                                                           \
      goto fail;                                                                          \
    }                                                                                     \
  } while (0)
  STEP(cudnnBackendCreateDescriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, vp));
  STEP(cudnnBackendSetAttribute(*vp, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, 3, ptrs));
  STEP(cudnnBackendSetAttribute(*vp, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, 3, uids));
  STEP(cudnnBackendSetAttribute(*vp, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &ws));
  STEP(cudnnBackendFinalize(*vp));
#undef STEP
  return CUDNN_STATUS_SUCCESS;
fail:
  bfree(vp);
  return s;
}

/* ---- plans: autotuning, execution ---------------------------------------------- */

#define CG_VP_CACHE 8
struct cg_plan {
  bdesc plan, cfg; /* the config stays alive beside its plan */
  int64_t ws;
  cg_info info;
  float ms;
  char label[192];
  struct {
    const void *ptr[4];
    bdesc vp;
  } vpc[CG_VP_CACHE];
  int nvp, next_vp;
};

size_t cg_plan_workspace(const cg_plan *p) { return (size_t)p->ws; }
const cg_info *cg_plan_info(const cg_plan *p) { return &p->info; }
float cg_plan_ms(const cg_plan *p) { return p->ms; }

void cg_plan_destroy(cg_plan *p) {
  if (!p) return;
  for (int i = 0; i < p->nvp; i++) bfree(&p->vpc[i].vp);
  bfree(&p->plan);
  bfree(&p->cfg);
  free(p);
}

static int aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

int cg_plan_execute(cudnnHandle_t handle, cg_plan *p, const void *x, const void *w, const void *y,
                    void *ws, size_t ws_bytes) {
  const char *label = p->label;
  if ((size_t)p->ws > ws_bytes)
    return set_err("engine %lld needs %lld bytes of workspace, %zu given [%s]",
                   (long long)p->info.engine, (long long)p->ws, ws_bytes, label);
  if (!aligned16(x) || !aligned16(w) || !aligned16(y) || (p->ws > 0 && !aligned16(ws)))
    return set_err("a tensor or the workspace is not 16-byte aligned (x %p, w %p, y %p, workspace "
                   "%p), the graph's tensors are declared so [%s]", x, w, y, (void *)ws, label);
  if (p->ws == 0) ws = NULL;
  const void *key[4] = {x, w, y, ws};
  bdesc vp = NULL;
  for (int i = 0; i < p->nvp && !vp; i++)
    if (!memcmp(p->vpc[i].ptr, key, sizeof key)) vp = p->vpc[i].vp;
  if (!vp) {
    if (cg_variant_pack(&vp, (void *)x, (void *)w, (void *)y, ws, label) != CUDNN_STATUS_SUCCESS)
      return -1;
    int slot = p->nvp < CG_VP_CACHE ? p->nvp++ : p->next_vp;
    if (slot == p->next_vp && p->nvp == CG_VP_CACHE) {
      bfree(&p->vpc[slot].vp);
      p->next_vp = (p->next_vp + 1) % CG_VP_CACHE;
    }
    memcpy(p->vpc[slot].ptr, key, sizeof key);
    p->vpc[slot].vp = vp;
  }
  const cudnnStatus_t s = cudnnBackendExecute(handle, p->plan, vp);
  if (s != CUDNN_STATUS_SUCCESS) {
    char what[64];
    snprintf(what, sizeof what, "cudnnBackendExecute (engine %lld)", (long long)p->info.engine);
    return dnn_err(what, s, label);
  }
  return 0;
}

double cg_time_runs(cudnnStatus_t (*fn)(void *ctx), void *ctx, cudaStream_t stream, int reps,
                    cudnnStatus_t *failed, const char *label) {
  cudaEvent_t a = NULL, b = NULL;
  double best = -1;
  *failed = CUDNN_STATUS_SUCCESS;
  cudaGetLastError(); /* a stale, non-sticky error is not this one's */
  cudnnStatus_t s = fn(ctx);
  if (s != CUDNN_STATUS_SUCCESS) {
    *failed = s;
    return -1;
  }
  CU(cudaStreamSynchronize(stream));
  CU(cudaEventCreate(&a));
  CU(cudaEventCreate(&b));
  for (int r = 0; r < reps; r++) {
    CU(cudaEventRecord(a, stream));
    s = fn(ctx);
    if (s != CUDNN_STATUS_SUCCESS) {
      *failed = s;
      cudaEventDestroy(a);
      cudaEventDestroy(b);
      return -1;
    }
    CU(cudaEventRecord(b, stream));
    CU(cudaEventSynchronize(b));
    float ms = 0;
    CU(cudaEventElapsedTime(&ms, a, b));
    if (best < 0 || ms < best) best = ms;
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return best;
fail:
  if (a) cudaEventDestroy(a);
  if (b) cudaEventDestroy(b);
  return -2;
}

const char *cg_math_name(cudnnMathType_t m) {
  switch (m) {
  case CUDNN_FMA_MATH: return "fma";
  case CUDNN_TENSOR_OP_MATH: return "tensor";
  case CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION: return "tensor-conversion";
  default: return "default";
  }
}

typedef struct {
  cudnnHandle_t h;
  bdesc plan, vp;
} plan_run_ctx;
static cudnnStatus_t plan_run(void *ctx) {
  const plan_run_ctx *c = ctx;
  return cudnnBackendExecute(c->h, c->plan, c->vp);
}

/* one plan timed on stream (cg_time_runs): the fastest (ms); -1 the
   execution failed (not supported here: quiet), -2 a CUDA error */
static double time_plan(cudnnHandle_t h, cudaStream_t stream, bdesc plan, bdesc vp, int reps,
                        const char *label) {
  plan_run_ctx c = {h, plan, vp};
  cudnnStatus_t failed;
  const double ms = cg_time_runs(plan_run, &c, stream, reps, &failed, label);
  if (ms == -1) dnn_err("cudnnBackendExecute", failed, label);
  return ms;
}

int cg_autotune(cudnnHandle_t handle, const cg_graph *g, const cg_prefs *prefs, void *x, void *w,
                void *y, cg_plan **out, cg_tune_stats *stats) {
  const char *label = g->label;
  cg_tune_stats local;
  cg_tune_stats *st = stats ? stats : &local;
  memset(st, 0, sizeof *st);
  st->best = -1;
  *out = NULL;
  const double t0 = now_s();
  const int max_configs = prefs->max_configs > 0 ? prefs->max_configs : CG_DEFAULT_MAX_CONFIGS;
  const int reps = prefs->reps > 0 ? prefs->reps : 3;
  cudaStream_t stream = NULL;
  void *ws = NULL;
  size_t ws_have = 0;
  bdesc best_plan = NULL, best_cfg = NULL;
  cg_info best_info;
  double best_ms = -1;
  int64_t best_ws = 0;
  int rc = -1, left = max_configs, fatal = 0;
  int64_t seen[512];
  int nseen = 0;
  const bdesc dp = prefs->deviceprop; /* set: no device (cudnn_graph.h) */
  memset(&best_info, 0, sizeof best_info);
  if (!dp) DNN(cudnnGetStream(handle, &stream));
  static const cudnnBackendHeurMode_t modes[2] = {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK};
  for (int m = 0; m < 2 && left > 0; m++) {
    bdesc cfgs[256];
    int64_t total = 0;
    memset(cfgs, 0, sizeof cfgs);
    const int n = cg_heuristics_for(g, modes[m], dp, cfgs, 256, &total);
    if (n < 0) goto fail;
    if (m == 0) st->heur_a = (int)total;
    else st->heur_fb = (int)total;
    for (int i = 0; i < n; i++) {
      bdesc plan = NULL, vp = NULL, cfg = cfgs[i];
      cfgs[i] = NULL;
      cg_info info;
      memset(&info, 0, sizeof info);
      info.heur = m;
      info.index = i;
      int64_t pws = 0;
      double ms;
      int dup = 0, keep = 0;
      if (left <= 0) goto next;
      if (cg_config_info(cfg, &info, label) < 0) {
        st->fail_info++;
        goto next;
      }
      /* an engine the fallback list repeats from mode A's list, where its
         config passed the filters (knobs are not compared: mode A's config
         of the engine is the one taken; a notes filter that dropped mode
         A's config may keep the fallback's, whose knobs differ: engine 28
         is a tensor-core config in mode A and an FMA one in the fallback
         list of some sm_90 shapes) */
      for (int k = 0; m == 1 && k < nseen; k++) dup |= seen[k] == info.engine;
      if (dup) {
        st->duplicate++;
        goto next;
      }
      /* PyTorch drops DOWN_CONVERT_INPUTS configs always and TENSOR_CORE
         ones for float32 without TF32 (Conv_v8.cpp) */
      if (info.down_convert) {
        st->skip_down++;
        goto next;
      }
      if (info.tensor_core && !prefs->allow_tensor_core) {
        st->skip_tc++;
        goto next;
      }
      if (info.reduced_reduction && !prefs->allow_tensor_core) {
        st->skip_reduced++;
        goto next;
      }
      if (prefs->sums_only && (info.fft || info.winograd)) {
        st->skip_numerics++;
        goto next;
      }
      if (info.nondet && prefs->deterministic_only) {
        st->skip_nondet++;
        goto next;
      }
      if (info.rtc && (prefs->no_rtc || dp)) { /* deviceless: not compiled here */
        st->skip_rtc++;
        goto next;
      }
      if (info.ws >= 0 && (uint64_t)info.ws > (uint64_t)prefs->ws_limit) {
        st->skip_ws++;
        goto next;
      }
      /* the cap counts the configs taken past the notes (those that cost a
         plan and its timing), as PyTorch filters before it tries: mode A
         lists tensor-core configs first for float data (on sm_90 the FMA
         ones of most COEmuNet forwards sit past its 16th), so a cap taken
         before the filters left strict float32 calls without an engine and
         the fallback list unread */
      st->looked++;
      left--;
      if (m == 0 && nseen < 512) seen[nseen++] = info.engine;
      if (cg_plan_finalize_for(handle, dp, cfg, &plan, &pws, label, 1) != CUDNN_STATUS_SUCCESS) {
        st->fail_finalize++;
        goto next;
      }
      info.ws = pws;
      if ((uint64_t)pws > (uint64_t)prefs->ws_limit) {
        st->skip_ws++;
        goto next;
      }
      if (dp) { /* deviceless: a plan that would be timed; nothing runs */
        if (st->ntimed < CG_MAX_TIMED) {
          st->timed[st->ntimed].info = info;
          st->timed[st->ntimed].ms = 0.0f;
          st->ntimed++;
        }
        st->best = 0;
        goto next;
      }
      if ((size_t)pws > ws_have) {
        cudaFree(ws); /* synchronises */
        ws = NULL;
        ws_have = 0;
        const cudaError_t e = cudaMalloc(&ws, (size_t)pws);
        if (e != cudaSuccess) {
          cudaGetLastError(); /* not sticky */
          ws = NULL;
          st->skip_ws++;
          goto next;
        }
        ws_have = (size_t)pws;
      }
      if (cg_variant_pack(&vp, x, w, y, pws ? ws : NULL, label) != CUDNN_STATUS_SUCCESS) {
        fatal = 1;
        goto next;
      }
      ms = time_plan(handle, stream, plan, vp, reps, label);
      bfree(&vp);
      if (ms == -2) { /* a CUDA error: nothing more can be timed */
        fatal = 1;
        goto next;
      }
      if (ms < 0) {
        st->fail_exec++;
        goto next;
      }
      if (st->ntimed < CG_MAX_TIMED) {
        st->timed[st->ntimed].info = info;
        st->timed[st->ntimed].ms = (float)ms;
        st->ntimed++;
      }
      if (best_ms < 0 || ms < best_ms) {
        bfree(&best_plan);
        bfree(&best_cfg);
        best_plan = plan;
        best_cfg = cfg;
        best_info = info;
        best_ms = ms;
        best_ws = pws;
        plan = NULL;
        keep = 1;
        st->best = st->ntimed - 1;
      }
    next:
      bfree(&plan);
      if (!keep) bfree(&cfg);
      if (fatal) {
        for (int k = i + 1; k < n; k++) bfree(&cfgs[k]);
        goto fail;
      }
    }
  }
  cudaFree(ws);
  ws = NULL;
  st->seconds = now_s() - t0;
  if (dp && st->ntimed > 0) return 0; /* deviceless: plans would be timed */
  if (!best_plan) {
    set_err("no usable engine: of the configs of heuristics A (%d) and fallback (%d), %d "
            "tensor-core, %d down-convert, %d reduced-precision, %d fft/winograd, %d "
            "nondeterministic, %d runtime-compiled, %d over the %zu-byte workspace limit dropped; "
            "of %d tried, %d failed to finalize, %d to run; %d failed to answer [%s]", st->heur_a,
            st->heur_fb, st->skip_tc, st->skip_down, st->skip_reduced, st->skip_numerics,
            st->skip_nondet, st->skip_rtc, st->skip_ws, prefs->ws_limit, st->looked,
            st->fail_finalize, st->fail_exec, st->fail_info, label);
    return 1;
  }
  cg_plan *p = (cg_plan *)calloc(1, sizeof *p);
  if (!p) {
    set_err("out of host memory for a cuDNN plan [%s]", label);
    goto fail;
  }
  p->plan = best_plan;
  p->cfg = best_cfg;
  p->ws = best_ws;
  p->info = best_info;
  p->ms = (float)best_ms;
  snprintf(p->label, sizeof p->label, "%s", label);
  *out = p;
  return 0;
fail:
  rc = -1;
  cudaFree(ws);
  bfree(&best_plan);
  bfree(&best_cfg);
  st->seconds = now_s() - t0;
  return rc;
}

int cg_autotune_deterministic_first(cudnnHandle_t handle, const cg_graph *g,
                                    const cg_prefs *prefs, void *x, void *w, void *y, cg_plan **out,
                                    cg_tune_stats *st, cg_tune_stats *st_first, int *any_order) {
  cg_prefs pr = *prefs;
  cg_tune_stats local;
  if (!st) st = &local;
  *any_order = !pr.deterministic_only;
  int rc = cg_autotune(handle, g, &pr, x, w, y, out, st);
  if (rc != 1 || !pr.deterministic_only) return rc;
  if (st_first) *st_first = *st;
  pr.deterministic_only = 0; /* as the legacy pick's second pass: any engine */
  *any_order = 1;
  return cg_autotune(handle, g, &pr, x, w, y, out, st);
}

/* ---- a device described, not present ------------------------------------------------ */

/* An H200 (sm_90) as cuDNN's JSON describes a device (the keys of
 * cudnnBackend's DEVICEPROP descriptor; values of the H200 of the device
 * runs: 132 SMs, 50 MiB L2, 227 KiB of shared memory a block by opt-in,
 * 64 Ki registers an SM; clocks and memory size nominal). The heuristics
 * and the plans' support checks read the architecture and the limits. */
static const char CG_H200_JSON[] =
    "{\"cudaDeviceId\":0,\"deviceName\":\"NVIDIA H200\",\"deviceVer\":900,\"driverVer\":13000,"
    "\"isTccDriver\":0,\"l2CacheSize\":52428800,\"maxCtasPerSM\":32,\"maxRegistersPerSM\":65536,"
    "\"maxSharedMemoryPerBlock\":49152,\"maxSharedMemoryPerBlockOptin\":232448,"
    "\"maxThreadsPerBlock\":1024,\"maxThreadsPerSM\":2048,\"memClockRateKHz\":3201000,"
    "\"multiProcessorCount\":132,\"pciDeviceId\":0,\"regsPerBlock\":65536,"
    "\"reservedSharedMemoryPerBlock\":1024,\"smClockRateKHz\":1980000,\"supportCoopLaunch\":1,"
    "\"totalGlobalMem\":150754820096,\"warpSize\":32,\"maxBlockSize\":[1024,1024,64],"
    "\"maxGridSize\":[2147483647,65535,65535]}";

int cg_deviceprop_h200(bdesc *dp) {
  const char *label = "deviceprop H200";
  *dp = NULL;
#if CG_HAVE_DEVICEPROP
  DNN(cudnnBackendCreateDescriptor(CUDNN_BACKEND_DEVICEPROP_DESCRIPTOR, dp));
  DNN(cudnnBackendSetAttribute(*dp, CUDNN_ATTR_DEVICEPROP_JSON_REPRESENTATION, CUDNN_TYPE_CHAR,
                               (int64_t)strlen(CG_H200_JSON), CG_H200_JSON));
  DNN(cudnnBackendFinalize(*dp));
  return 0;
fail:
  bfree(dp);
  return -1;
#else
  (void)label;
  return set_err("cuDNN %d has no device-properties descriptors (9.8 or later)", CUDNN_VERSION);
#endif
}

/* ---- self-test ------------------------------------------------------------------ */

int cg_self_test(FILE *out, int verbose) {
  /* nd, n, cin, cout, in, k, stride, pad */
  static const cg_conv shapes[] = {
      {3, 4, 1, 4, {64, 64, 64}, {3, 3, 3}, {1, 1, 1}, {0, 0, 0}, CUDNN_DATA_FLOAT},  /* stem */
      {3, 4, 4, 8, {31, 31, 31}, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}, CUDNN_DATA_FLOAT},  /* strided */
      {3, 4, 8, 8, {16, 16, 16}, {1, 1, 1}, {1, 1, 1}, {0, 0, 0}, CUDNN_DATA_FLOAT},  /* 1x1x1 */
      {3, 4, 16, 8, {7, 32, 32}, {1, 3, 3}, {1, 1, 1}, {0, 1, 1}, CUDNN_DATA_FLOAT},  /* decoder */
      {2, 4, 16, 8, {1, 32, 32}, {1, 3, 3}, {1, 1, 1}, {0, 1, 1}, CUDNN_DATA_FLOAT},  /* 2-D */
      {3, 4, 8, 16, {16, 16, 16}, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, CUDNN_DATA_BFLOAT16},
  };
  const int ns = (int)(sizeof shapes / sizeof shapes[0]);
  int bad = 0, ngraphs = 0, nheur = 0;
  for (int i = 0; i < ns; i++)
    for (int op = 0; op < CG_NOPS; op++)
      for (int b = 0; b < 2; b++) {
        cg_graph *g = NULL;
        if (cg_graph_create(&g, &shapes[i], (cg_op)op, 1.0f, (float)b, NULL) < 0) {
          fprintf(out, "cudnn-graph: self-test: FAIL: %s\n", cg_error());
          bad++;
          continue;
        }
        ngraphs++;
        /* the sizes against the legacy formula */
        const int first = shapes[i].nd == 2 ? 1 : 0;
        size_t ny = (size_t)shapes[i].n * (size_t)shapes[i].cout;
        for (int d = first; d < 3; d++) ny *= (size_t)cg_out_dim(&shapes[i], d);
        if (cg_graph_elems(g, CG_UID_Y) != ny || cg_graph_op(g) != (cg_op)op) {
          fprintf(out, "cudnn-graph: self-test: FAIL: %s: %zu output elements, expected %zu\n",
                  cg_graph_label(g), cg_graph_elems(g, CG_UID_Y), ny);
          bad++;
        }
        for (int m = 0; m < 2; m++) {
          bdesc cfgs[256];
          int64_t total = 0;
          memset(cfgs, 0, sizeof cfgs);
          const int k = cg_heuristics(g, m ? CUDNN_HEUR_MODE_FALLBACK : CUDNN_HEUR_MODE_A, cfgs,
                                      256, &total);
          if (k < 0) {
            fprintf(out, "cudnn-graph: self-test: FAIL: heuristics %s: %s\n", m ? "fallback" : "A",
                    cg_error());
            bad++;
            continue;
          }
          nheur++;
          int ninfo = 0;
          for (int c = 0; c < k; c++) {
            cg_info info;
            memset(&info, 0, sizeof info);
            ninfo += cg_config_info(cfgs[c], &info, cg_graph_label(g)) == 0;
            bfree(&cfgs[c]);
          }
          if (verbose)
            fprintf(out, "cudnn-graph: self-test: %s heuristics %s: %lld configs, %d handed back, "
                    "%d described\n", cg_graph_label(g), m ? "fallback" : "A", (long long)total, k,
                    ninfo);
        }
        cg_graph_destroy(g);
      }
  /* a bad geometry is refused with a message */
  cg_conv wrong = shapes[0];
  wrong.in[0] = 2; /* kernel 3, no padding: no output */
  cg_graph *g = NULL;
  if (cg_graph_create(&g, &wrong, CG_FWD, 1.0f, 0.0f, NULL) == 0 || !strstr(cg_error(), "no output")) {
    fprintf(out, "cudnn-graph: self-test: FAIL: a convolution without output accepted (%s)\n",
            cg_error());
    cg_graph_destroy(g);
    bad++;
  }
  fprintf(out, "cudnn-graph: self-test: %d graphs (%d shapes x 3 operations x beta 0 and 1), %d "
          "heuristics queries, %d failures\n", ngraphs, ns, nheur, bad);
  return bad;
}
