/* backend_cpu.c - the CPU reference backend (backend.h): host memory, the
 * layers on layers_cpu.c's kernels (vol2col + OpenBLAS sgemm, OpenMP),
 * synchronised BatchNorm, Adam, the loss of loss.c (FFTW) and the gradient
 * reduction, with the process's thread settings made in one place (init). */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "trainer/backend.h"
#include "trainer/layers_cpu.h"
#include "trainer/loss.h"
#include "trainer/nn.h"
#include "trainer/precision.h"
#include "stats/norm_body.h"
#include "trainer/metrics.h"
#include "trainer/metrics_body.h"

/* ---- process setup ------------------------------------------------------ */

/* The matrix products run inside the backend's OpenMP loops over samples or
 * output slices, one thread each: OpenBLAS's own threads would oversubscribe
 * the cores, so it runs one thread while the backend is initialised. OpenMP's
 * count is set only when the caller asks (threads > 0). The last finish()
 * puts back what the first init found, and only what an init changed. */
static struct {
  int users;        /* inits not yet finished: the settings go back at the last finish */
  int blas_threads; /* OpenBLAS's count before the first init */
  int omp_threads;  /* OpenMP's (this thread's nthreads-var) before the first init */
  int omp_changed;  /* an init set OpenMP's count */
} cpu_state;

static int cpu_init(int threads) {
  const int omp_before = omp_get_max_threads();
  if (cpu_state.users++ == 0) {
    cpu_state.blas_threads = openblas_get_num_threads();
    cpu_state.omp_threads = omp_before;
    cpu_state.omp_changed = 0;
  }
  openblas_set_num_threads(1);
  /* an OpenMP build of OpenBLAS sets OpenMP's count too: keep the caller's */
  if (threads > 0) {
    omp_set_num_threads(threads);
    cpu_state.omp_changed = 1;
  } else if (omp_get_max_threads() != omp_before) {
    omp_set_num_threads(omp_before);
  }
  return 0;
}

static void cpu_finish(void) {
  if (cpu_state.users == 0 || --cpu_state.users > 0) return;
  const int omp_now = omp_get_max_threads();
  openblas_set_num_threads(cpu_state.blas_threads);
  if (cpu_state.omp_changed)
    omp_set_num_threads(cpu_state.omp_threads);
  else if (omp_get_max_threads() != omp_now) /* an OpenMP build of OpenBLAS */
    omp_set_num_threads(omp_now);
}

/* ---- memory ------------------------------------------------------------- */

/* calloc (large blocks come zeroed from the kernel and stay untouched until
 * used), aligned to 64 bytes by hand: the pointer calloc gave sits just
 * below the block. */
#define CPU_ALIGN 64

static void *cpu_alloc(size_t bytes) {
  const size_t extra = CPU_ALIGN + sizeof(void *);
  if (bytes > SIZE_MAX - extra) {
    ce_err("%zu bytes: too large", bytes);
    return NULL;
  }
  char *raw = calloc(1, bytes + extra);
  if (!raw) {
    ce_err("out of memory allocating %zu bytes", bytes);
    return NULL;
  }
  uintptr_t a = ((uintptr_t)raw + sizeof(void *) + CPU_ALIGN - 1) & ~(uintptr_t)(CPU_ALIGN - 1);
  ((void **)a)[-1] = raw;
  return (void *)a;
}

static void cpu_free(void *p) {
  if (p) free(((void **)p)[-1]);
}

static int cpu_copy(void *dst, const void *src, size_t bytes) {
  if (bytes) memcpy(dst, src, bytes);
  return 0;
}

static int cpu_zero(void *p, size_t bytes) {
  if (bytes) memset(p, 0, bytes);
  return 0;
}

/* ---- layers ------------------------------------------------------------- */

static conv_shape node_conv_shape(const nn_net *net, const nn_node *nd) {
  const nn_node *in = &net->nodes[nd->in[0]];
  conv_shape s = {net->batch, in->c, in->d, in->h, in->w, nd->c, nd->d, nd->h, nd->w,
                  nd->k.v[0], nd->k.v[1], nd->k.v[2], nd->s.v[0], nd->s.v[1], nd->s.v[2],
                  nd->p.v[0], nd->p.v[1], nd->p.v[2]};
  return s;
}

/* The scratch was sized at nn_set_batch() for the thread count of then. */
static int check_work(const nn_net *net, const conv_shape *s) {
  size_t need = conv3d_workspace(s);
  if (need > net->work_n)
    return ce_err("scratch of %zu floats, %zu needed: the OpenMP thread count grew since "
                  "nn_set_batch()", net->work_n, need);
  return 0;
}

static size_t cpu_workspace(const nn_net *net, const nn_node *nd) {
  if (nd->kind != NN_CONV) return 0;
  conv_shape s = node_conv_shape(net, nd);
  return conv3d_workspace(&s);
}

/* Synchronised BatchNorm (nn.h, nn_reducer): the statistics of the global
 * batch from two sums across replicas, (per-channel sums, value count), then
 * squared deviations from the global mean. */
static int bn_forward_sync(nn_net *net, nn_node *nd) {
  const nn_reducer *r = nn_get_reducer(net);
  const int N = net->batch, C = nd->c;
  const long S = (long)nd->d * nd->h * nd->w;
  const float *x = net->nodes[nd->in[0]].out;
  nn_param *P = net->params;
  double *buf = ce_malloc_array((size_t)2 * C + 1, sizeof(double), "BatchNorm sums");
  if (!buf) return -1;
  double *mean = buf, *sq = buf + C + 1;
  batchnorm_sums(N, C, S, x, mean);
  mean[C] = (double)N * S;
  int rc = -1;
  if (r->sum_f64(r->ctx, buf, (size_t)C + 1) < 0) {
    ce_err_prefix("summing BatchNorm statistics over %d replicas", r->world);
    goto done;
  }
  const double m = mean[C];
  if (m < 2) {
    ce_err("batch statistics need more than 1 value per channel (%.0f over %d replicas)", m,
           r->world);
    goto done;
  }
  for (int ch = 0; ch < C; ch++) mean[ch] /= m;
  batchnorm_sqdev(N, C, S, x, mean, sq);
  if (r->sum_f64(r->ctx, sq, (size_t)C) < 0) {
    ce_err_prefix("summing BatchNorm deviations over %d replicas", r->world);
    goto done;
  }
  batchnorm_normalise(N, C, S, x, P[nd->param[0]].w, P[nd->param[1]].w, mean, sq, m,
                      P[nd->param[2]].w, P[nd->param[3]].w, nd->momentum, nd->eps, nd->out,
                      nd->save);
  rc = 0;
done:
  free(buf);
  return rc;
}

/* Its backward: the sums of dy and dy*xhat (and the value count) summed across
 * replicas before dx; dgamma and dbeta keep the local sums (nn_reduce_grads()
 * sums them with the other gradients). */
static int bn_backward_sync(nn_net *net, nn_node *nd, float *dx) {
  const nn_reducer *r = nn_get_reducer(net);
  const int N = net->batch, C = nd->c;
  const long S = (long)nd->d * nd->h * nd->w;
  const float *x = net->nodes[nd->in[0]].out;
  nn_param *P = net->params;
  double *sums = ce_malloc_array((size_t)2 * C + 1, sizeof(double), "BatchNorm gradient sums");
  if (!sums) return -1;
  batchnorm_backward_sums(N, C, S, x, nd->save, nd->grad, sums, P[nd->param[0]].g,
                          P[nd->param[1]].g);
  int rc = 0;
  if (dx) { /* the same graph everywhere: every replica skips or calls alike */
    sums[2 * C] = (double)N * S;
    rc = r->sum_f64(r->ctx, sums, (size_t)2 * C + 1);
    if (rc < 0)
      ce_err_prefix("summing BatchNorm gradients over %d replicas", r->world);
    else
      batchnorm_backward_dx(N, C, S, x, P[nd->param[0]].w, nd->save, nd->grad, sums,
                            sums[2 * C], dx);
  }
  free(sums);
  return rc;
}

/* ---- precision (precision.h) ------------------------------------------ */

/* The operands of one convolution or linear layer at the net's precision:
 * float32 uses the tensors themselves; tf32 and bf16 rounded copies (host
 * scratch), made right before the product as the CUDA backend makes them. */
typedef struct {
  const float *x, *w, *dy;
  float *buf;
} operands;

static int operands_get(const nn_net *net, const nn_node *nd, int with_dy, operands *o) {
  const nn_node *in = &net->nodes[nd->in[0]];
  const nn_param *w = &net->params[nd->param[0]];
  const size_t nx = (size_t)net->batch * (size_t)in->size, nw = (size_t)w->n,
               ndy = with_dy ? (size_t)net->batch * (size_t)nd->size : 0;
  o->x = in->out;
  o->w = w->w;
  o->dy = nd->grad;
  o->buf = NULL;
  const int p = net->precision;
  if (p == NN_FLOAT32) return 0;
  float *b = o->buf = ce_malloc_array(nx + nw + ndy, sizeof(float), "rounded operands");
  if (!b) return -1;
  const float *src[3] = {in->out, w->w, nd->grad};
  const size_t n[3] = {nx, nw, ndy};
  size_t off = 0;
  for (int k = 0; k < 3; k++) {
    const float *a = src[k];
    float *r = b + off;
    const long len = (long)n[k];
#pragma omp parallel for schedule(static)
    for (long i = 0; i < len; i++) r[i] = nn_round_operand(a[i], p);
    off += n[k];
  }
  o->x = b;
  o->w = b + nx;
  o->dy = with_dy ? b + nx + nw : nd->grad;
  return 0;
}

/* acc[i] += round_bf16(v[i]): a bf16 convolution's result added to the
 * float32 output or gradient it accumulates into (precision.h). */
static void add_bf16_result(float *acc, const float *v, size_t n) {
  const long len = (long)n;
#pragma omp parallel for schedule(static)
  for (long i = 0; i < len; i++) acc[i] += nn_round_bf16(v[i]);
}

/* A convolution at a precision that rounds its result (bf16): the float32
 * products into zeroed buffers, then each rounded once and added, the bias
 * after the rounding (precision.h). */
static int conv_forward_rounded(const conv_shape *s, const operands *o, const float *b, float *y,
                                float *work) {
  float *zb = ce_calloc_array((size_t)s->cout, sizeof(float), "zero bias");
  if (!zb) return -1;
  conv3d_forward(s, o->x, o->w, zb, y, work);
  free(zb);
  const long P = (long)s->od * s->oh * s->ow, rows = (long)s->n * s->cout;
#pragma omp parallel for schedule(static)
  for (long r = 0; r < rows; r++)
    for (long p = 0; p < P; p++) y[r * P + p] = nn_round_bf16(y[r * P + p]) + b[r % s->cout];
  return 0;
}

static int conv_backward_rounded(const conv_shape *s, const operands *o, float *dw, float *db,
                                 float *dx, float *work) {
  const size_t nw = (size_t)s->cout * s->cin * s->kd * s->kh * s->kw,
               nx = dx ? (size_t)s->n * s->cin * s->d * s->h * s->w : 0;
  float *t = ce_calloc_array(nw + nx, sizeof(float), "convolution results");
  if (!t) return -1;
  conv3d_backward(s, o->x, o->w, o->dy, t, db, dx ? t + nw : NULL, work);
  add_bf16_result(dw, t, nw);
  if (dx) add_bf16_result(dx, t + nw, nx);
  free(t);
  return 0;
}

static int cpu_forward(nn_net *net, nn_node *nd, int train) {
  const int N = net->batch;
  const nn_node *in = &net->nodes[nd->in[0]];
  const float *x = in->out;
  float *y = nd->out;
  const long total = (long)N * nd->size;
  nn_param *P = net->params;
  switch (nd->kind) {
  case NN_CONV: {
    conv_shape s = node_conv_shape(net, nd);
    CE_TRY(check_work(net, &s));
    operands o;
    CE_TRY(operands_get(net, nd, 0, &o));
    int rc = 0;
    if (nn_rounds_conv_result(net->precision))
      rc = conv_forward_rounded(&s, &o, P[nd->param[1]].w, y, net->work);
    else
      conv3d_forward(&s, o.x, o.w, P[nd->param[1]].w, y, net->work);
    free(o.buf);
    return rc;
  }
  case NN_BATCHNORM: {
    long S = (long)nd->d * nd->h * nd->w;
    if (train && nn_get_reducer(net) && !net->reducer.local_batchnorm) return bn_forward_sync(net, nd);
    if (train) {
      if ((long)N * S < 2)
        return ce_err("batch statistics need more than 1 value per channel (batch %d x %ld)", N, S);
      batchnorm_forward_train(N, nd->c, S, x, P[nd->param[0]].w, P[nd->param[1]].w,
                              P[nd->param[2]].w, P[nd->param[3]].w, nd->momentum, nd->eps, y,
                              nd->save);
    } else {
      batchnorm_forward_eval(N, nd->c, S, x, P[nd->param[0]].w, P[nd->param[1]].w,
                             P[nd->param[2]].w, P[nd->param[3]].w, nd->eps, y);
    }
    return 0;
  }
  case NN_RELU:
#pragma omp parallel for schedule(static)
    for (long i = 0; i < total; i++) y[i] = x[i] > 0 ? x[i] : 0;
    return 0;
  case NN_TANH:
#pragma omp parallel for schedule(static)
    for (long i = 0; i < total; i++) y[i] = tanhf(x[i]);
    return 0;
  case NN_MAXPOOL:
    maxpool3d_forward(N * in->c, in->d, in->h, in->w, nd->k.v[0], x, y);
    return 0;
  case NN_LINEAR: {
    operands o;
    CE_TRY(operands_get(net, nd, 0, &o));
    linear_forward(N, (int)in->size, nd->c, o.x, o.w, P[nd->param[1]].w, y);
    free(o.buf);
    return 0;
  }
  case NN_UPSAMPLE:
    upsample_forward(N * in->c, in->d, in->h, in->w, nd->s.v[0], nd->s.v[1], nd->s.v[2], x, y);
    return 0;
  case NN_ADD: {
    const float *b = net->nodes[nd->in[1]].out;
#pragma omp parallel for schedule(static)
    for (long i = 0; i < total; i++) y[i] = x[i] + b[i];
    return 0;
  }
  case NN_CONCAT:
  case NN_SLICE: {
    /* per sample: the output's channel block [off, off + part) <-> an input */
    for (int n = 0; n < N; n++) {
      long off = 0;
      for (int j = 0; j < nd->nin; j++) {
        const nn_node *src = &net->nodes[nd->in[j]];
        if (nd->kind == NN_CONCAT) {
          memcpy(y + n * nd->size + off, src->out + n * src->size, sizeof(float) * src->size);
          off += src->size;
        } else {
          long S = (long)nd->d * nd->h * nd->w;
          memcpy(y + n * nd->size, src->out + n * src->size + nd->slice0 * S,
                 sizeof(float) * nd->size);
        }
      }
    }
    return 0;
  }
  default:
    return ce_err("layer kind %d has no CPU forward", (int)nd->kind);
  }
}

static int cpu_backward(nn_net *net, nn_node *nd) {
  const int N = net->batch;
  nn_node *in = &net->nodes[nd->in[0]];
  const float *x = in->out, *y = nd->out, *g = nd->grad;
  float *dx = in->needs_grad ? in->grad : NULL;
  const long total = (long)N * nd->size;
  nn_param *P = net->params;
  switch (nd->kind) {
  case NN_CONV: {
    conv_shape s = node_conv_shape(net, nd);
    CE_TRY(check_work(net, &s));
    operands o;
    CE_TRY(operands_get(net, nd, 1, &o));
    int rc = 0;
    if (nn_rounds_conv_result(net->precision))
      rc = conv_backward_rounded(&s, &o, P[nd->param[0]].g, P[nd->param[1]].g, dx, net->work);
    else
      conv3d_backward(&s, o.x, o.w, o.dy, P[nd->param[0]].g, P[nd->param[1]].g, dx, net->work);
    free(o.buf);
    return rc;
  }
  case NN_BATCHNORM:
    if (net->train && nn_get_reducer(net) && !net->reducer.local_batchnorm)
      return bn_backward_sync(net, nd, dx);
    batchnorm_backward(N, nd->c, (long)nd->d * nd->h * nd->w, net->train, x, P[nd->param[0]].w,
                       P[nd->param[2]].w, P[nd->param[3]].w, nd->eps, nd->save, g, dx,
                       P[nd->param[0]].g, P[nd->param[1]].g);
    return 0;
  case NN_RELU:
    if (dx)
#pragma omp parallel for schedule(static)
      for (long i = 0; i < total; i++) dx[i] += y[i] > 0 ? g[i] : 0;
    return 0;
  case NN_TANH:
    if (dx)
#pragma omp parallel for schedule(static)
      for (long i = 0; i < total; i++) dx[i] += g[i] * (1 - y[i] * y[i]);
    return 0;
  case NN_MAXPOOL:
    if (dx) maxpool3d_backward(N * in->c, in->d, in->h, in->w, nd->k.v[0], x, g, dx);
    return 0;
  case NN_LINEAR: {
    operands o;
    CE_TRY(operands_get(net, nd, 1, &o));
    linear_backward(N, (int)in->size, nd->c, o.x, o.w, o.dy, P[nd->param[0]].g,
                    P[nd->param[1]].g, dx);
    free(o.buf);
    return 0;
  }
  case NN_UPSAMPLE:
    if (dx)
      upsample_backward(N * in->c, in->d, in->h, in->w, nd->s.v[0], nd->s.v[1], nd->s.v[2], g, dx);
    return 0;
  case NN_ADD:
    for (int j = 0; j < 2; j++) {
      nn_node *src = &net->nodes[nd->in[j]];
      if (!src->needs_grad) continue;
      float *d = src->grad;
#pragma omp parallel for schedule(static)
      for (long i = 0; i < total; i++) d[i] += g[i];
    }
    return 0;
  case NN_CONCAT:
  case NN_SLICE:
    for (int n = 0; n < N; n++) {
      long off = 0;
      for (int j = 0; j < nd->nin; j++) {
        nn_node *src = &net->nodes[nd->in[j]];
        long len = nd->kind == NN_CONCAT ? src->size : nd->size;
        long soff = nd->kind == NN_CONCAT ? 0 : nd->slice0 * (long)nd->d * nd->h * nd->w;
        if (src->needs_grad) {
          float *d = src->grad + n * src->size + soff;
          const float *gg = g + n * nd->size + off;
          for (long i = 0; i < len; i++) d[i] += gg[i];
        }
        off += len;
      }
    }
    return 0;
  default:
    return ce_err("layer kind %d has no CPU backward", (int)nd->kind);
  }
}

/* ---- optimiser ---------------------------------------------------------- */

static int cpu_adam_update(nn_net *net, float *const *m, float *const *v, const nn_adam_coef *c) {
  /* locals, so that the stores below cannot alias them and the loop vectorises */
  const float step = c->step, rbc2 = c->rbc2, fb1 = c->b1, fb2 = c->b2, omb1 = c->omb1,
              omb2 = c->omb2, feps = c->eps, l2 = c->l2, decay = c->decay;
  for (int i = 0; i < net->nparams; i++) {
    nn_param *p = &net->params[i];
    if (!m[i]) continue;
    float *w = p->w, *mi = m[i], *vi = v[i];
    const float *g = p->g;
#pragma omp parallel for schedule(static)
    for (int64_t j = 0; j < p->n; j++) {
      float gj = g[j] + l2 * w[j];
      mi[j] = fb1 * mi[j] + omb1 * gj;
      vi[j] = fb2 * vi[j] + omb2 * gj * gj;
      w[j] = w[j] * decay - step * mi[j] / (sqrtf(vi[j]) * rbc2 + feps);
    }
  }
  return 0;
}

/* ---- loss --------------------------------------------------------------- */

static void *cpu_loss_create(int h, int w, int max_images) { return loss_create(h, w, max_images); }

static void cpu_loss_destroy(void *l) { loss_destroy(l); }

static int cpu_loss_eval(void *l, const float *p, const float *t, int m, float seed_scale,
                         loss_value *out, float *grad) {
  CE_TRY(loss_eval(l, p, t, m, out, grad));
  if (grad && seed_scale != 1.0f) {
    const long len = (long)m * (long)loss_image_pixels(l);
    for (long i = 0; i < len; i++) grad[i] *= seed_scale;
  }
  return 0;
}

/* ---- data parallelism --------------------------------------------------- */

/* grad_block[first, first + count) summed in pieces of at most reducer.chunk.
 * Host memory: the block goes to the sums as it is. The padding between
 * parameters is zero everywhere and stays zero. */
static int cpu_sum_grads(nn_net *net, size_t first, size_t count) {
  const nn_reducer *r = nn_get_reducer(net);
  const size_t chunk = r->chunk ? r->chunk : NN_REDUCE_CHUNK;
  for (size_t off = first; off < first + count; off += chunk) {
    size_t n = first + count - off < chunk ? first + count - off : chunk;
    if (r->sum_f32(r->ctx, net->grad_block + off, n) < 0)
      return ce_err_prefix("summing parameter gradients [%zu, %zu) over %d replicas", off,
                           off + n, r->world);
  }
  return 0;
}

/* A bucket is summed at once: the host sums complete before they return. */
static int cpu_reduce_bucket(nn_net *net, size_t off, size_t n) {
  return cpu_sum_grads(net, off, n);
}

static int cpu_reduce_grads(nn_net *net) {
  const nn_reducer *r = nn_get_reducer(net);
  if (!r) return 0;
  if (!r->bucket) CE_TRY(cpu_sum_grads(net, 0, net->grad_used_n));
  if (r->world > 1) {
    const float world = (float)r->world;
    const long n = (long)net->grad_used_n;
    float *g = net->grad_block;
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) g[i] /= world;
  }
  return 0;
}

/* ---- the table ---------------------------------------------------------- */

/* ---- the input feed ------------------------------------------------------ */

/* Backend memory is host memory: the copy is complete when it returns. */
static int cpu_upload_wait(void) { return 0; }

/* The bodies of stats/norm_body.h, a sample per OpenMP iteration. */
static int cpu_normalise_inputs(const stats_norm *p, const float *in, float *out, int samples,
                                size_t nvox) {
#pragma omp parallel for schedule(static)
  for (int k = 0; k < samples; k++)
    norm_body_inputs_thread(p, in + (size_t)k * 3 * nvox, out + (size_t)k * 3 * nvox, 1, nvox, 0,
                            1);
  return 0;
}

static int cpu_normalise_targets(const stats_norm *p, const float *in, float *out, int samples,
                                 size_t nval) {
#pragma omp parallel for schedule(static)
  for (int k = 0; k < samples; k++) {
    const float *x = in + (size_t)k * nval;
    const float fill = norm_body_zero_fill(norm_body_smallest_thread(x, nval, 0, 1, INFINITY));
    norm_body_targets_thread(p, x, &fill, out + (size_t)k * nval, 1, nval, 0, 1);
  }
  return 0;
}

/* ---- evaluation --------------------------------------------------------- */

/* The bodies of trainer/metrics_body.h, a sample per OpenMP iteration (each
 * writes only its own sample's results and its thread's scratch). */
static int cpu_metrics(const stats_norm *p, const float *pred, const float *target, int n, int f,
                       int h, int w, double *out) {
  if (n < 1) return 0;
  const size_t hw = (size_t)h * w, ns = (size_t)f * hw;
  const int ssim = h >= METRICS_SSIM_WIN && w >= METRICS_SSIM_WIN;
  double g[METRICS_SSIM_WIN], *range = ce_malloc_array(2 * (size_t)f, sizeof(double), "metrics");
  if (!range) return -1;
  metrics_body_ssim_window(g);
  if (ssim)
    for (int c = 0; c < f; c++)
      metrics_body_range(target, n, f, c, hw, &range[2 * c], &range[2 * c + 1]);
  const size_t per = 2 * ns + (size_t)f + (ssim ? metrics_body_ssim_scratch(h, w, 1) : 0);
  int bad_sample = n, fail = 0;
  double bad_px = 0, bad_t = 0;
#pragma omp parallel
  {
    double *buf = malloc(sizeof(double) * per);
    if (!buf) {
#pragma omp atomic write
      fail = 1;
    }
#pragma omp for schedule(dynamic)
    for (int s = 0; s < n; s++) {
      if (!buf) continue;
      double *tp = buf, *pp = tp + ns, *v = pp + ns, *scr = v + f, bad;
      const float *ps = pred + s * ns, *ts = target + s * ns;
      metrics_body_inverse(p, ts, tp, ns);
      metrics_body_inverse(p, ps, pp, ns);
      out[METRICS_MAXREL * n + s] = metrics_body_maxrel(tp, pp, f, hw, &bad);
      if (bad >= 0) {
#pragma omp critical(cpu_metrics_bad)
        if (s < bad_sample) bad_sample = s, bad_px = bad, bad_t = out[METRICS_MAXREL * n + s];
      }
      out[METRICS_ZNCC * n + s] = metrics_body_zncc_sample(ps, ts, f, hw);
      for (int r = 0; r < 2; r++) {
        for (int c = 0; c < f && ssim; c++)
          v[c] = metrics_body_ssim(ps + c * hw, ts + c * hw, h, w, r, g,
                                   range[2 * c + 1] - range[2 * c], scr);
        out[(METRICS_SSIM_I + r) * n + s] = ssim ? metrics_body_channel_mean(v, f) : NAN;
      }
    }
    free(buf);
  }
  free(range);
  if (fail)
    return ce_err("metrics: out of memory for the scratch of %d threads", omp_get_max_threads());
  return bad_sample < n ? metrics_maxrel_error(bad_sample, bad_px, bad_t) : 0;
}

const nn_backend nn_backend_cpu = {
    .name = "cpu",
    .precisions = NN_PRECISION_BIT(NN_TF32) | NN_PRECISION_BIT(NN_BF16), /* emulated */
    .init = cpu_init,
    .finish = cpu_finish,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .copy = cpu_copy,
    .zero = cpu_zero,
    .forward = cpu_forward,
    .backward = cpu_backward,
    .workspace = cpu_workspace,
    .adam_update = cpu_adam_update,
    .loss_create = cpu_loss_create,
    .loss_destroy = cpu_loss_destroy,
    .loss_eval = cpu_loss_eval,
    .reduce_grads = cpu_reduce_grads,
    .reduce_bucket = cpu_reduce_bucket,
    .host_alloc = cpu_alloc, /* backend memory is host memory */
    .host_free = cpu_free,
    .upload_async = cpu_copy,
    .upload_wait = cpu_upload_wait,
    .normalise_inputs = cpu_normalise_inputs,
    .normalise_targets = cpu_normalise_targets,
    .metrics = cpu_metrics,
};
