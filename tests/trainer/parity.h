/* parity.h - the backend-parity harness (tests): every layer kind, the loss,
 * the Adam update and the reducer paths of a trainer backend (backend.h),
 * run through its table and compared with literal references computed in
 * double on the host from the same float inputs; and one whole COEmuNet
 * training step against the CPU reference backend.
 *
 * Used by tests/trainer/test_backend_parity.c (CI: the CPU backend, a
 * deliberately broken one, and the CUDA one where a device exists) and by
 * the standalone tests/trainer/trainer_gpu_check.c (scripts/gpu-check-trainer.sh).
 * Nothing here uses tests/check.h: the checks count into a par_report, and
 * the caller decides (a broken backend must fail).
 *
 * Tolerances (docs/architecture.md, "Tolerances"), per element:
 *   - exact where the operation is exact by construction: ReLU, max pooling
 *     (a selection), upsampling forward, the elementwise sum (one correctly
 *     rounded addition), concatenation, slices, and their backward passes
 *     that add one value into zero;
 *   - a float32 sum of n terms (a convolution's output, input gradient,
 *     weight and bias gradients; a linear layer's; upsampling's backward),
 *     in any order, with or without FMA: gamma_n x the sum of the terms'
 *     magnitudes (Higham: gamma_n = n u / (1 - n u), u = 2^-24), the sum of
 *     magnitudes computed alongside the reference;
 *   - a value computed in double and rounded to float once (BatchNorm, the
 *     loss's gradient): a few u x the magnitudes of its terms, plus, where
 *     the backend uses float-rounded saved state (BatchNorm's mean and
 *     1/std), that rounding carried through the formula (derived at each
 *     check below);
 *   - the loss value (double, FFT): gamma_{2hw} in double x the DFT's sum of
 *     magnitudes;
 *   - tanh: 4 ulp of the result (the C library's tanhf and CUDA's are within
 *     2 ulp of the exact value each).
 * The whole step is compared with the CPU reference as tests/trainer/
 * test_parallel.c compares data-parallel steps: relative mismatches of the
 * loss, the gradients, the update and the running statistics, within
 * PAR_FLOOR_FACTOR x the noise floor measured on this host (the CPU step
 * with every input one ulp off, two draws, and with 2 threads). */
#ifndef COEMU_TEST_PARITY_H
#define COEMU_TEST_PARITY_H

#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "step_batch.h"
#include "common/error.h"
#include "common/rng.h"
#include "trainer/checkpoint.h"
#include "trainer/coemunet.h"
#include "trainer/nn.h"
#include "trainer/optim.h"
#include "trainer/train.h"

/* ---- reports ------------------------------------------------------------ */

typedef struct {
  long checks, failures; /* elements (or values) compared, and those out of tolerance */
  double worst;          /* the largest |got - ref| / tol */
  char first[512];       /* the first failure */
  int errors;            /* calls that failed (an error message) */
  int verbose;           /* print one line per check */
} par_report;

static void par_note(par_report *r, const char *fmt, ...) {
  if (r->failures + r->errors > 1 || r->first[0]) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(r->first, sizeof r->first, fmt, ap);
  va_end(ap);
}

static int par_call(par_report *r, int rc, const char *what) {
  if (rc < 0) {
    if (!r->first[0]) snprintf(r->first, sizeof r->first, "%s: %s", what, ce_err_msg());
    r->errors++;
  }
  return rc;
}

static const double PAR_U = FLT_EPSILON / 2;
static double par_gamma(double n) { return n * PAR_U / (1 - n * PAR_U); }
static double par_gamma64(double n) {
  return n * (DBL_EPSILON / 2) / (1 - n * (DBL_EPSILON / 2));
}

/* One judged array into the report: n checks, bad failures, the worst
 * value in units of `unit` (printed when verbose). */
static void par_tally(par_report *r, const char *what, size_t n, long bad, double worst,
                      const char *unit) {
  r->checks += (long)n;
  r->failures += bad;
  if (worst > r->worst) r->worst = worst;
  if (r->verbose)
    fprintf(stderr, "    %-40s %6zu values, worst %.3g x %s%s\n", what, n, worst, unit,
            bad ? "  FAIL" : "");
}

/* |got - ref| <= tol elementwise (tol NULL: exact, bit for bit as floats). */
static void par_judge(par_report *r, const char *what, const float *got, const double *ref,
                      const double *tol, size_t n) {
  long bad = 0;
  double worst = 0;
  for (size_t i = 0; i < n; i++) {
    double d = fabs((double)got[i] - ref[i]);
    int ok = tol ? d <= tol[i] : (float)ref[i] == got[i];
    double q = tol ? (tol[i] > 0 ? d / tol[i] : (d > 0 ? INFINITY : 0)) : (ok ? 0 : INFINITY);
    if (!ok || got[i] != got[i]) {
      if (!bad) par_note(r, "%s[%zu] = %.9g, reference %.9g (tolerance %.3g)", what, i, got[i],
                         ref[i], tol ? tol[i] : 0.0);
      bad++;
    }
    if (q > worst) worst = q;
  }
  par_tally(r, what, n, bad, worst, tol ? "tolerance" : "tolerance (exact)");
}

/* A bf16 convolution's result (precision.h: the float32 sum rounded to bf16
 * once, then shift[i] added in float32; shift NULL: nothing added, the value
 * is the rounded sum exactly): got[i] - shift[i] must be the bf16 rounding of
 * some float within ref[i] +- tol[i] (the float32 sum's bound), within the
 * one float rounding of the addition. Rounding is monotone, so that is the
 * interval [round((float)(ref - tol')), round((float)(ref + tol'))], tol'
 * widened by the conversion of ref +- tol to float. A result not rounded to
 * bf16 (float32 arithmetic) lies outside it almost always: the negative
 * controls. */
static void par_judge_bf16(par_report *r, const char *what, const float *got, const double *ref,
                           const double *tol, const double *shift, size_t n) {
  long bad = 0;
  double worst = 0;
  for (size_t i = 0; i < n; i++) {
    const double t = tol[i] + 2 * PAR_U * (fabs(ref[i]) + tol[i]);
    const double lo = nn_round_bf16((float)(ref[i] - t)), hi = nn_round_bf16((float)(ref[i] + t));
    const double v = (double)got[i] - (shift ? shift[i] : 0),
                 slack = shift ? PAR_U * fabs((double)got[i]) : 0;
    const int ok = got[i] == got[i] && v - slack <= hi && v + slack >= lo;
    /* reported: the distance from the rounding of ref itself, in window
       widths (0: the same bf16 value; > 1: outside) */
    const double mid = nn_round_bf16((float)ref[i]), d = fabs(v - mid) - slack;
    double q = d <= 0 ? 0 : hi > lo ? d / (hi - lo) : INFINITY;
    if (!ok && q <= 1) q = INFINITY;
    if (!ok) {
      if (!bad) par_note(r, "%s[%zu] = %.9g, reference %.9g: not a bf16 rounding of [%.9g, %.9g] "
                         "(+ %.9g)", what, i, got[i], ref[i], ref[i] - t, ref[i] + t,
                         shift ? shift[i] : 0.0);
      bad++;
    }
    if (q > worst) worst = q;
  }
  par_tally(r, what, n, bad, worst, "the bf16 window");
}

static double *par_dup(const float *a, size_t n) {
  double *d = (double *)malloc(sizeof(double) * (n ? n : 1));
  for (size_t i = 0; i < n; i++) d[i] = a[i];
  return d;
}

static double *par_zeros(size_t n) { return (double *)calloc(n ? n : 1, sizeof(double)); }

/* a reference sum and its magnitudes from a gradient's prior values (NULL:
   zero), which the backward adds to */
static void par_start_from(double *sum, double *mag, const float *prior, size_t n) {
  if (!prior) return;
  for (size_t i = 0; i < n; i++) sum[i] = prior[i], mag[i] = fabs((double)prior[i]);
}

static float *par_fill(size_t n, ce_rng *g, double lo, double hi) {
  float *a = (float *)malloc(sizeof(float) * (n ? n : 1));
  for (size_t i = 0; i < n; i++) a[i] = (float)(lo + (hi - lo) * ce_rng_uniform(g));
  return a;
}

static float *par_down(const nn_net *net, const float *src, size_t n) {
  float *a = (float *)malloc(sizeof(float) * (n ? n : 1));
  if (nn_download(net, a, src, n) < 0) memset(a, 0, sizeof(float) * n);
  return a;
}

/* ---- one layer on a backend --------------------------------------------- */

/* A net of inputs (needs_grad set) and one layer on backend be, batch N,
 * with its inputs filled, run forward (train or not) and backward with the
 * random output gradient dy. */
typedef struct {
  nn_net net;
  int in[NN_MAX_IN], nin, out, N;
  float *x[NN_MAX_IN], *dy;
  float *y, *dx[NN_MAX_IN];  /* downloaded results */
  float *w[4], *g[4];        /* parameters before the step (host), their gradients */
  /* the gradients' values before the backward (convolutions and linear
     layers outside bf16; else NULL: zero): the backward must add to them */
  float *g0[4], *dx0[NN_MAX_IN];
  int ok;
} par_layer;

enum { PK_CONV, PK_LINEAR, PK_BN, PK_RELU, PK_TANH, PK_MAXPOOL, PK_UPSAMPLE, PK_ADD, PK_CONCAT,
       PK_SLICE };

typedef struct {
  int kind;
  int c[NN_MAX_IN], d, h, w; /* the inputs' shapes (c per input) */
  int nin, grad_in;          /* grad_in: the inputs need a gradient */
  int cout;                  /* conv / linear / slice (channels) */
  nn_int3 k, s, p;           /* conv kernel/stride/pad; pool k; upsample s */
  int c0;                    /* slice start */
  int train;
} par_case;

static void par_layer_free(par_layer *L) {
  for (int j = 0; j < L->nin; j++) {
    free(L->x[j]);
    free(L->dx[j]);
    free(L->dx0[j]);
  }
  for (int k = 0; k < 4; k++) {
    free(L->w[k]);
    free(L->g[k]);
    free(L->g0[k]);
  }
  free(L->dy);
  free(L->y);
  nn_free(&L->net);
  memset(L, 0, sizeof *L);
}

/* precision: the net's (nn_set_precision; conv and linear layers) */
static int par_layer_run(par_layer *L, const nn_backend *be, const par_case *pc, int N,
                         uint32_t seed, int precision, par_report *r) {
  memset(L, 0, sizeof *L);
  nn_net *net = &L->net;
  nn_init(net);
  if (par_call(r, nn_set_backend(net, be), "nn_set_backend") < 0) return -1;
  if (par_call(r, nn_set_precision(net, precision), "nn_set_precision") < 0) return -1;
  L->nin = pc->nin;
  L->N = N;
  char nm[16];
  for (int j = 0; j < pc->nin; j++) {
    snprintf(nm, sizeof nm, "x%d", j);
    L->in[j] = nn_input(net, nm, pc->c[j], pc->d, pc->h, pc->w);
    net->nodes[L->in[j]].needs_grad = pc->grad_in;
  }
  int o = -1;
  switch (pc->kind) {
  case PK_CONV: o = nn_conv(net, "layer", L->in[0], pc->cout, pc->k, pc->s, pc->p); break;
  case PK_LINEAR: o = nn_linear(net, "layer", L->in[0], pc->cout); break;
  case PK_BN: o = nn_batchnorm(net, "layer", L->in[0]); break;
  case PK_RELU: o = nn_relu(net, "layer", L->in[0]); break;
  case PK_TANH: o = nn_tanh(net, "layer", L->in[0]); break;
  case PK_MAXPOOL: o = nn_maxpool(net, "layer", L->in[0], pc->k.v[0]); break;
  case PK_UPSAMPLE: o = nn_upsample(net, "layer", L->in[0], pc->s); break;
  case PK_ADD: o = nn_add(net, "layer", L->in[0], L->in[1]); break;
  case PK_CONCAT: o = nn_concat(net, "layer", L->in, pc->nin); break;
  case PK_SLICE: o = nn_slice(net, "layer", L->in[0], pc->c0, pc->cout); break;
  }
  if (par_call(r, o, "building the layer") < 0) return -1;
  L->out = o;
  if (par_call(r, nn_finalize(net, 1000 + seed), "nn_finalize") < 0) return -1;
  if (par_call(r, nn_set_batch(net, N), "nn_set_batch") < 0) return -1;
  ce_rng g = ce_rng_make(4242, seed, 0, 9);
  for (int j = 0; j < pc->nin; j++) {
    size_t n = (size_t)N * net->nodes[L->in[j]].size;
    L->x[j] = par_fill(n, &g, -1.5, 1.5);
    if (par_call(r, nn_input_upload(net, L->in[j], L->x[j]), "input upload") < 0) return -1;
  }
  /* parameters: random (BatchNorm: gamma, beta, running statistics too) */
  nn_node *nd = &net->nodes[o];
  for (int k = 0; k < nd->nparam; k++) {
    nn_param *p = &net->params[nd->param[k]];
    double lo = -0.6, hi = 0.6;
    if (pc->kind == PK_BN) {
      if (k == 0) lo = 0.5, hi = 1.5;       /* gamma */
      else if (k == 3) lo = 0.3, hi = 2.0;  /* running var */
    }
    L->w[k] = par_fill((size_t)p->n, &g, lo, hi);
    if (par_call(r, nn_param_upload(net, nd->param[k], L->w[k]), "parameter upload") < 0) return -1;
  }
  if (par_call(r, nn_forward(net, pc->train), "forward") < 0) return -1;
  size_t ny = (size_t)N * nd->size;
  L->y = par_down(net, nd->out, ny);
  L->dy = par_fill(ny, &g, -1, 1);
  nn_seed_grad(net, o);
  if (par_call(r, nn_zero_grad(net), "zero_grad") < 0) return -1;
  if (par_call(r, nn_grad_upload(net, o, L->dy), "gradient upload") < 0) return -1;
  /* Gradients accumulate (nn.h): the library calls run with beta = 1 (cuDNN's
     backward data and filter, cuBLAS), so a convolution's or linear layer's
     gradients start from random values here, which the references start
     from too; from zero an engine that overwrote instead of adding would
     pass. (bf16 rounds the products' sums before adding: left at zero.) */
  if ((pc->kind == PK_CONV || pc->kind == PK_LINEAR) && !nn_rounds_conv_result(precision)) {
    for (int k = 0; k < nd->nparam; k++) {
      nn_param *p = &net->params[nd->param[k]];
      if (!p->g) continue;
      L->g0[k] = par_fill((size_t)p->n, &g, -0.5, 0.5);
      if (par_call(r, nn_upload(net, p->g, L->g0[k], (size_t)p->n), "gradient prefill") < 0)
        return -1;
    }
    for (int j = 0; j < pc->nin; j++) {
      const nn_node *xn = &net->nodes[L->in[j]];
      if (!xn->needs_grad) continue;
      L->dx0[j] = par_fill((size_t)N * xn->size, &g, -0.5, 0.5);
      if (par_call(r, nn_upload(net, xn->grad, L->dx0[j], (size_t)N * xn->size),
                   "input gradient prefill") < 0)
        return -1;
    }
  }
  if (par_call(r, nn_backward(net), "backward") < 0) return -1;
  for (int j = 0; j < pc->nin; j++)
    if (net->nodes[L->in[j]].needs_grad)
      L->dx[j] = par_down(net, net->nodes[L->in[j]].grad, (size_t)N * net->nodes[L->in[j]].size);
  for (int k = 0; k < nd->nparam; k++) {
    nn_param *p = &net->params[nd->param[k]];
    if (p->g) L->g[k] = par_down(net, p->g, (size_t)p->n);
    else { /* running statistics: their values after the forward */
      L->g[k] = par_down(net, p->w, (size_t)p->n);
    }
  }
  L->ok = 1;
  return 0;
}

/* The host copies of a product's operands (x, w, dy) rounded as precision p
 * rounds them (precision.h): the exact references of the checks below then
 * hold for a backend that rounds them and sums in float32, within the same
 * gamma_n bounds (the products of rounded operands are exact in float32). */
static void par_round_operands(par_layer *L, int p) {
  const nn_net *net = &L->net;
  const size_t n[3] = {(size_t)L->N * net->nodes[L->in[0]].size,
                       (size_t)net->params[net->nodes[L->out].param[0]].n,
                       (size_t)L->N * net->nodes[L->out].size};
  float *a[3] = {L->x[0], L->w[0], L->dy};
  for (int k = 0; k < 3; k++)
    for (size_t i = 0; i < n[k]; i++) a[k][i] = nn_round_operand(a[k][i], p);
}

/* ---- references --------------------------------------------------------- */

/* ref: the precision of the reference (its operands rounded by
 * par_round_operands; bf16 also rounds the results, par_judge_bf16). */
static void par_check_conv(par_report *r, const par_layer *L, const par_case *pc, const char *name,
                           int ref) {
  const nn_net *net = &L->net;
  const nn_node *nd = &net->nodes[L->out], *in = &net->nodes[L->in[0]];
  const int N = L->N, ci_n = in->c, co_n = nd->c, kd = nd->k.v[0], kh = nd->k.v[1], kw = nd->k.v[2];
  const int sd = nd->s.v[0], sh = nd->s.v[1], sw = nd->s.v[2], pd = nd->p.v[0], ph = nd->p.v[1],
            pw = nd->p.v[2];
  const long P = (long)nd->d * nd->h * nd->w, Sv = (long)in->d * in->h * in->w;
  const long K = (long)ci_n * kd * kh * kw;
  const float *x = L->x[0], *w = L->w[0], *b = L->w[1], *dy = L->dy;
  size_t ny = (size_t)N * co_n * P, nx = (size_t)N * ci_n * Sv, nw = (size_t)co_n * K;
  double *y = par_zeros(ny), *ym = par_zeros(ny), *dx = par_zeros(nx), *dxm = par_zeros(nx);
  double *dw = par_zeros(nw), *dwm = par_zeros(nw), *db = par_zeros(co_n), *dbm = par_zeros(co_n);
  par_start_from(dx, dxm, L->dx0[0], nx);
  par_start_from(dw, dwm, L->g0[0], nw);
  par_start_from(db, dbm, L->g0[1], (size_t)co_n);
  for (int n = 0; n < N; n++)
    for (int co = 0; co < co_n; co++)
      for (int z = 0; z < nd->d; z++)
        for (int yy = 0; yy < nd->h; yy++)
          for (int xx = 0; xx < nd->w; xx++) {
            long oi = (((long)n * co_n + co) * nd->d + z) * nd->h * nd->w + (long)yy * nd->w + xx;
            double acc = b[co], am = fabs(b[co]), g = dy[oi];
            db[co] += g;
            dbm[co] += fabs(g);
            for (int ci = 0; ci < ci_n; ci++)
              for (int a = 0; a < kd; a++)
                for (int bb = 0; bb < kh; bb++)
                  for (int c = 0; c < kw; c++) {
                    int iz = z * sd - pd + a, iy = yy * sh - ph + bb, ix = xx * sw - pw + c;
                    if (iz < 0 || iz >= in->d || iy < 0 || iy >= in->h || ix < 0 || ix >= in->w)
                      continue;
                    long xi = (((long)n * ci_n + ci) * in->d + iz) * in->h * in->w +
                              (long)iy * in->w + ix;
                    long wi = (((long)co * ci_n + ci) * kd + a) * kh * kw + (long)bb * kw + c;
                    double t = (double)w[wi] * x[xi];
                    acc += t;
                    am += fabs(t);
                    dx[xi] += (double)w[wi] * g;
                    dxm[xi] += fabs((double)w[wi] * g);
                    dw[wi] += (double)x[xi] * g;
                    dwm[wi] += fabs((double)x[xi] * g);
                  }
            y[oi] = acc;
            ym[oi] = am;
          }
  char what[160];
  /* tolerances: gamma_n x the magnitudes, n the terms of each sum (+1 for
     the bias, +1 for the accumulation into the zeroed gradient) */
  for (size_t i = 0; i < ny; i++) ym[i] *= par_gamma((double)K + 1);
  for (size_t i = 0; i < nx; i++) dxm[i] *= par_gamma((double)co_n * kd * kh * kw + 2);
  for (size_t i = 0; i < nw; i++) dwm[i] *= par_gamma((double)N * P + 2);
  for (int i = 0; i < co_n; i++) dbm[i] *= par_gamma((double)N * P + 2);
  const int rounded = nn_rounds_conv_result(ref);
  double *bias = NULL;
  if (rounded) { /* the sum without the bias, which the backend adds after rounding */
    bias = par_zeros(ny);
    for (size_t i = 0; i < ny; i++) {
      bias[i] = b[(i / (size_t)P) % (size_t)co_n];
      y[i] -= bias[i];
    }
  }
  snprintf(what, sizeof what, "%s: output", name);
  if (rounded) par_judge_bf16(r, what, L->y, y, ym, bias, ny);
  else par_judge(r, what, L->y, y, ym, ny);
  snprintf(what, sizeof what, "%s: weight gradient", name);
  if (rounded) par_judge_bf16(r, what, L->g[0], dw, dwm, NULL, nw);
  else par_judge(r, what, L->g[0], dw, dwm, nw);
  snprintf(what, sizeof what, "%s: bias gradient", name);
  par_judge(r, what, L->g[1], db, dbm, co_n);
  if (pc->grad_in) {
    snprintf(what, sizeof what, "%s: input gradient", name);
    if (rounded) par_judge_bf16(r, what, L->dx[0], dx, dxm, NULL, nx);
    else par_judge(r, what, L->dx[0], dx, dxm, nx);
  }
  free(bias);
  free(y); free(ym); free(dx); free(dxm); free(dw); free(dwm); free(db); free(dbm);
}

static void par_check_linear(par_report *r, const par_layer *L, const char *name) {
  const nn_net *net = &L->net;
  const int N = L->N, in = (int)net->nodes[L->in[0]].size, out = net->nodes[L->out].c;
  const float *x = L->x[0], *w = L->w[0], *b = L->w[1], *dy = L->dy;
  double *y = par_zeros((size_t)N * out), *ym = par_zeros((size_t)N * out);
  double *dx = par_zeros((size_t)N * in), *dxm = par_zeros((size_t)N * in);
  double *dw = par_zeros((size_t)out * in), *dwm = par_zeros((size_t)out * in);
  double *db = par_zeros(out), *dbm = par_zeros(out);
  par_start_from(dx, dxm, L->dx0[0], (size_t)N * in);
  par_start_from(dw, dwm, L->g0[0], (size_t)out * in);
  par_start_from(db, dbm, L->g0[1], (size_t)out);
  for (int n = 0; n < N; n++)
    for (int o = 0; o < out; o++) {
      double acc = b[o], am = fabs(b[o]), g = dy[(long)n * out + o];
      db[o] += g;
      dbm[o] += fabs(g);
      for (int i = 0; i < in; i++) {
        double t = (double)x[(long)n * in + i] * w[(long)o * in + i];
        acc += t;
        am += fabs(t);
        dx[(long)n * in + i] += g * w[(long)o * in + i];
        dxm[(long)n * in + i] += fabs(g * w[(long)o * in + i]);
        dw[(long)o * in + i] += g * x[(long)n * in + i];
        dwm[(long)o * in + i] += fabs(g * x[(long)n * in + i]);
      }
      y[(long)n * out + o] = acc;
      ym[(long)n * out + o] = am;
    }
  for (long i = 0; i < (long)N * out; i++) ym[i] *= par_gamma(in + 1);
  for (long i = 0; i < (long)N * in; i++) dxm[i] *= par_gamma(out + 2);
  for (long i = 0; i < (long)out * in; i++) dwm[i] *= par_gamma(N + 2);
  for (int i = 0; i < out; i++) dbm[i] *= par_gamma(N + 2);
  char what[160];
  snprintf(what, sizeof what, "%s: output", name);
  par_judge(r, what, L->y, y, ym, (size_t)N * out);
  snprintf(what, sizeof what, "%s: weight gradient", name);
  par_judge(r, what, L->g[0], dw, dwm, (size_t)out * in);
  snprintf(what, sizeof what, "%s: bias gradient", name);
  par_judge(r, what, L->g[1], db, dbm, out);
  snprintf(what, sizeof what, "%s: input gradient", name);
  par_judge(r, what, L->dx[0], dx, dxm, (size_t)N * in);
  free(y); free(ym); free(dx); free(dxm); free(dw); free(dwm); free(db); free(dbm);
}

/* BatchNorm, training or evaluation mode (docs/trainer.md derives it). */
static void par_check_bn(par_report *r, const par_layer *L, int train, const char *name) {
  const nn_net *net = &L->net;
  const nn_node *nd = &net->nodes[L->out];
  const int N = L->N, C = nd->c;
  const long S = (long)nd->d * nd->h * nd->w;
  const size_t n = (size_t)N * C * S;
  const float *x = L->x[0], *dy = L->dy, *gam = L->w[0], *bet = L->w[1], *rm = L->w[2], *rv = L->w[3];
  const double mom = nd->momentum, eps = nd->eps, m = (double)N * S;
  double *y = par_zeros(n), *yt = par_zeros(n), *dx = par_zeros(n), *dxt = par_zeros(n);
  double *dg = par_zeros(C), *dgt = par_zeros(C), *dbt = par_zeros(C), *dbr = par_zeros(C);
  double *rmr = par_zeros(C), *rmt = par_zeros(C), *rvr = par_zeros(C), *rvt = par_zeros(C);
  for (int ch = 0; ch < C; ch++) {
    double mean = 0, sq = 0;
    for (int i = 0; i < N; i++)
      for (long j = 0; j < S; j++) mean += x[((long)i * C + ch) * S + j];
    mean /= m;
    for (int i = 0; i < N; i++)
      for (long j = 0; j < S; j++) {
        double d = x[((long)i * C + ch) * S + j] - mean;
        sq += d * d;
      }
    double var = sq / m;
    double mu = train ? mean : rm[ch];
    double is = train ? 1.0 / sqrt(var + eps) : 1.0 / sqrt((double)rv[ch] + eps);
    double scale = gam[ch] * is, shift = bet[ch] - mu * scale;
    for (int i = 0; i < N; i++)
      for (long j = 0; j < S; j++) {
        long q = ((long)i * C + ch) * S + j;
        y[q] = x[q] * scale + shift;
        /* scale and shift rounded to float, the product and the sum */
        yt[q] = par_gamma(4) * (fabs(x[q] * scale) + fabs(shift)) + 4 * PAR_U * fabs(mu * scale);
      }
    /* running statistics: (1 - mom) r + mom v, rounded */
    rmr[ch] = train ? (1 - mom) * rm[ch] + mom * mean : rm[ch];
    rvr[ch] = train ? (1 - mom) * rv[ch] + mom * var * m / (m - 1) : rv[ch];
    rmt[ch] = par_gamma(3) * (fabs((1 - mom) * rm[ch]) + fabs(mom * mean));
    rvt[ch] = par_gamma(3) * (fabs((1 - mom) * rv[ch]) + fabs(mom * var * m / (m - 1)));
    /* backward: sums of dy and dy xhat with the exact statistics; the
       backend's saved mean and 1/std are float-rounded: xhat moves by at
       most u (|xhat| + |mean| is) =: u X, its sum by u Y, Y = sum |dy| X */
    double sdy = 0, sdyx = 0, sady = 0, Y = 0;
    for (int i = 0; i < N; i++)
      for (long j = 0; j < S; j++) {
        long q = ((long)i * C + ch) * S + j;
        double xh = (x[q] - mu) * is;
        sdy += dy[q];
        sady += fabs(dy[q]);
        sdyx += dy[q] * xh;
        Y += fabs(dy[q]) * (fabs(xh) + fabs(mu) * is);
      }
    dg[ch] = sdyx;
    dgt[ch] = par_gamma(4) * (fabs(sdyx) + Y);
    dbr[ch] = sdy;
    dbt[ch] = par_gamma(2) * sady;
    double a = gam[ch] * is, mdy = train ? sdy / m : 0, mdyx = train ? sdyx / m : 0;
    for (int i = 0; i < N; i++)
      for (long j = 0; j < S; j++) {
        long q = ((long)i * C + ch) * S + j;
        double xh = (x[q] - mu) * is, X = fabs(xh) + fabs(mu) * is;
        dx[q] = a * (dy[q] - mdy - xh * mdyx);
        dxt[q] = par_gamma(6) * fabs(a) *
                 (fabs(dy[q]) + fabs(mdy) + 2 * X * (fabs(mdyx) + (train ? Y / m : 0)));
      }
  }
  char what[160];
  snprintf(what, sizeof what, "%s: output", name);
  par_judge(r, what, L->y, y, yt, n);
  snprintf(what, sizeof what, "%s: running mean", name);
  par_judge(r, what, L->g[2], rmr, rmt, C);
  snprintf(what, sizeof what, "%s: running var", name);
  par_judge(r, what, L->g[3], rvr, rvt, C);
  snprintf(what, sizeof what, "%s: gamma gradient", name);
  par_judge(r, what, L->g[0], dg, dgt, C);
  snprintf(what, sizeof what, "%s: beta gradient", name);
  par_judge(r, what, L->g[1], dbr, dbt, C);
  snprintf(what, sizeof what, "%s: input gradient", name);
  par_judge(r, what, L->dx[0], dx, dxt, n);
  free(y); free(yt); free(dx); free(dxt); free(dg); free(dgt); free(dbt); free(dbr);
  free(rmr); free(rmt); free(rvr); free(rvt);
}

/* The elementwise and data-movement layers: exact, except tanh and the sums
 * of upsampling's backward. */
static void par_check_simple(par_report *r, const par_layer *L, const par_case *pc, const char *name) {
  const nn_net *net = &L->net;
  const nn_node *nd = &net->nodes[L->out];
  const int N = L->N;
  const size_t ny = (size_t)N * nd->size;
  double *y = par_zeros(ny), *yt = NULL;
  double *dx[NN_MAX_IN] = {0}, *dxt[NN_MAX_IN] = {0};
  size_t nx[NN_MAX_IN];
  for (int j = 0; j < L->nin; j++) {
    nx[j] = (size_t)N * net->nodes[L->in[j]].size;
    dx[j] = par_zeros(nx[j]);
  }
  const float *x = L->x[0], *g = L->dy;
  const nn_node *in = &net->nodes[L->in[0]];
  switch (pc->kind) {
  case PK_RELU:
    for (size_t i = 0; i < ny; i++) {
      y[i] = x[i] > 0 ? x[i] : 0;
      dx[0][i] = L->y[i] > 0 ? g[i] : 0;
    }
    break;
  case PK_TANH:
    yt = par_zeros(ny);
    dxt[0] = par_zeros(ny);
    for (size_t i = 0; i < ny; i++) {
      y[i] = tanh((double)x[i]);
      yt[i] = 8 * PAR_U * fabs(y[i]) + FLT_MIN; /* 4 ulp; an ulp is at most 2u |y| */
      double yb = L->y[i];                      /* the backward uses the backend's y */
      dx[0][i] = g[i] * (1 - yb * yb);
      dxt[0][i] = par_gamma(3) * fabs(g[i]) * (1 + yb * yb);
    }
    break;
  case PK_MAXPOOL: {
    const int k = pc->k.v[0], od = in->d / k, oh = in->h / k, ow = in->w / k;
    const long Sv = (long)in->d * in->h * in->w, OS = (long)od * oh * ow;
    for (long q = 0; q < (long)N * in->c; q++)
      for (long o = 0; o < OS; o++) {
        int xx = (int)(o % ow), yy = (int)((o / ow) % oh), z = (int)(o / ((long)ow * oh));
        long best = -1;
        for (int a = 0; a < k; a++)
          for (int b = 0; b < k; b++)
            for (int c = 0; c < k; c++) {
              long i = ((long)(z * k + a) * in->h + yy * k + b) * in->w + xx * k + c;
              if (best < 0 || x[q * Sv + i] > x[q * Sv + best]) best = i;
            }
        y[q * OS + o] = x[q * Sv + best];
        dx[0][q * Sv + best] += g[q * OS + o];
      }
    break;
  }
  case PK_UPSAMPLE: {
    const int fd = pc->s.v[0], fh = pc->s.v[1], fw = pc->s.v[2];
    const long OH = (long)in->h * fh, OW = (long)in->w * fw, OS = (long)in->d * fd * OH * OW,
               Sv = (long)in->d * in->h * in->w;
    dxt[0] = par_zeros(nx[0]);
    for (long q = 0; q < (long)N * in->c; q++)
      for (long o = 0; o < OS; o++) {
        long xx = o % OW, yy = (o / OW) % OH, z = o / (OW * OH);
        long i = q * Sv + ((z / fd) * in->h + yy / fh) * in->w + xx / fw;
        y[q * OS + o] = x[i];
        dx[0][i] += g[q * OS + o];
        dxt[0][i] += fabs(g[q * OS + o]);
      }
    for (size_t i = 0; i < nx[0]; i++) dxt[0][i] *= par_gamma((double)fd * fh * fw + 1);
    break;
  }
  case PK_ADD:
    for (size_t i = 0; i < ny; i++) {
      y[i] = (float)(L->x[0][i] + L->x[1][i]); /* one rounding: the same everywhere */
      dx[0][i] = g[i];
      dx[1][i] = g[i];
    }
    break;
  case PK_CONCAT:
    for (int n = 0; n < N; n++) {
      long off = 0;
      for (int j = 0; j < L->nin; j++) {
        long sz = net->nodes[L->in[j]].size;
        for (long i = 0; i < sz; i++) {
          y[n * nd->size + off + i] = L->x[j][n * sz + i];
          dx[j][n * sz + i] = g[n * nd->size + off + i];
        }
        off += sz;
      }
    }
    break;
  case PK_SLICE: {
    const long Sv = (long)nd->d * nd->h * nd->w;
    for (int n = 0; n < N; n++)
      for (long i = 0; i < nd->size; i++) {
        y[n * nd->size + i] = x[n * in->size + pc->c0 * Sv + i];
        dx[0][n * in->size + pc->c0 * Sv + i] = g[n * nd->size + i];
      }
    break;
  }
  }
  char what[160];
  snprintf(what, sizeof what, "%s: output", name);
  par_judge(r, what, L->y, y, yt, ny);
  for (int j = 0; j < L->nin; j++)
    if (L->dx[j]) {
      snprintf(what, sizeof what, "%s: input %d gradient", name, j);
      par_judge(r, what, L->dx[j], dx[j], dxt[j], nx[j]);
    }
  free(y);
  free(yt);
  for (int j = 0; j < L->nin; j++) {
    free(dx[j]);
    free(dxt[j]);
  }
}

/* ---- loss --------------------------------------------------------------- */

static void par_check_loss(par_report *r, const nn_backend *be, int h, int w, int mimg, int m,
                           float scale) {
  nn_net net; /* for the backend's memory functions */
  nn_init(&net);
  if (par_call(r, nn_set_backend(&net, be), "nn_set_backend") < 0) return;
  const size_t hw = (size_t)h * w, n = (size_t)m * hw;
  ce_rng g = ce_rng_make(5151, (uint32_t)(h * 100 + w), (uint32_t)m, 1);
  float *p = par_fill(n, &g, -1, 1), *t = par_fill(n, &g, -1, 1);
  float *dp = nn_alloc(&net, n, "prediction"), *dt = nn_alloc(&net, n, "target"),
        *dg = nn_alloc(&net, n, "loss gradient");
  void *loss = be->loss_create(h, w, mimg);
  char what[160];
  snprintf(what, sizeof what, "loss %dx%d, %d of %d images, seed scale %g", h, w, m, mimg, scale);
  if (!dp || !dt || !dg || !loss) {
    par_call(r, -1, what);
  } else if (par_call(r, nn_upload(&net, dp, p, n), what) == 0 &&
             par_call(r, nn_upload(&net, dt, t, n), what) == 0) {
    loss_value lv;
    if (par_call(r, be->loss_eval(loss, dp, dt, m, scale, &lv, dg), what) == 0) {
      float *got = par_down(&net, dg, n);
      double *ref = par_zeros(n), *tol = par_zeros(n);
      double sq = 0, sabs = 0, sq_mag = 0, fft_tol = 0;
      double *re = par_zeros(hw), *im = par_zeros(hw);
      const double PI2 = 2 * 3.14159265358979323846;
      for (int k = 0; k < m; k++) {
        const float *pk = p + k * hw, *tk = t + k * hw;
        double esum = 0;
        for (size_t i = 0; i < hw; i++) {
          double e = (double)pk[i] - tk[i];
          sq += e * e;
          sq_mag += e * e;
          esum += fabs(e);
        }
        /* E = DFT2(e), naive; each coefficient within gamma64(2hw) sum|e| */
        const double errE = par_gamma64(8.0 * hw) * esum; /* the FFT's and this
                                                                 naive DFT's */
        double ratio = 0;
        for (int ky = 0; ky < h; ky++)
          for (int kx = 0; kx < w; kx++) {
            double a = 0, b = 0;
            for (int yy = 0; yy < h; yy++)
              for (int xx = 0; xx < w; xx++) {
                double th = -PI2 * ((double)ky * yy / h + (double)kx * xx / w);
                double e = (double)pk[yy * w + xx] - tk[yy * w + xx];
                a += e * cos(th);
                b += e * sin(th);
              }
            double mag = hypot(a, b);
            sabs += mag;
            fft_tol += errE;
            re[ky * w + kx] = mag > 0 ? a / mag : 0;
            im[ky * w + kx] = mag > 0 ? b / mag : 0;
            ratio += mag > 0 ? 2 * errE / mag : 2;
          }
        for (int yy = 0; yy < h; yy++)
          for (int xx = 0; xx < w; xx++) {
            double s = 0;
            for (int ky = 0; ky < h; ky++)
              for (int kx = 0; kx < w; kx++) {
                double th = PI2 * ((double)ky * yy / h + (double)kx * xx / w);
                s += re[ky * w + kx] * cos(th) - im[ky * w + kx] * sin(th);
              }
            size_t i = k * hw + yy * w + xx;
            double e = (double)p[i] - t[i];
            ref[i] = scale * (LOSS_W_MSE * 2 * e + LOSS_W_FFT * s) / (double)n;
            tol[i] = fabs(scale) * (par_gamma(3) * (LOSS_W_MSE * 2 * fabs(e) + LOSS_W_FFT * fabs(s)) +
                                    LOSS_W_FFT * (ratio + par_gamma64(4.0 * hw) * hw)) / (double)n;
          }
      }
      double mse = sq / n, fft = sabs / n;
      double vref[3] = {LOSS_W_MSE * mse + LOSS_W_FFT * fft, mse, fft};
      double vtol[3] = {0, par_gamma64((double)n + 2) * sq_mag / n,
                        fft_tol / n + par_gamma64((double)n * 2 + 2) * fft};
      vtol[0] = LOSS_W_MSE * vtol[1] + LOSS_W_FFT * vtol[2] + 4 * DBL_EPSILON * vref[0];
      double got_v[3] = {lv.total, lv.mse, lv.fft};
      for (int q = 0; q < 3; q++) {
        double d = fabs(got_v[q] - vref[q]);
        r->checks++;
        if (!(d <= vtol[q])) {
          par_note(r, "%s: loss value %d = %.17g, reference %.17g (tolerance %.3g)", what, q,
                   got_v[q], vref[q], vtol[q]);
          r->failures++;
        }
        if (vtol[q] > 0 && d / vtol[q] > r->worst) r->worst = d / vtol[q];
      }
      char w2[200];
      snprintf(w2, sizeof w2, "%s: gradient", what);
      par_judge(r, w2, got, ref, tol, n);
      free(got);
      free(ref);
      free(tol);
      free(re);
      free(im);
    }
  }
  if (loss) be->loss_destroy(loss);
  nn_release(&net, dp);
  nn_release(&net, dt);
  nn_release(&net, dg);
  nn_free(&net);
  free(p);
  free(t);
}

/* ---- Adam --------------------------------------------------------------- */

static void par_check_adam(par_report *r, const nn_backend *be, adam_kind kind) {
  nn_net net;
  nn_init(&net);
  if (par_call(r, nn_set_backend(&net, be), "nn_set_backend") < 0) return;
  int x = nn_input(&net, "x", 7, 1, 1, 1);
  int l = nn_linear(&net, "lin", x, 33);
  adam o;
  memset(&o, 0, sizeof o);
  if (par_call(r, l < 0 ? -1 : nn_finalize(&net, 3), "adam net") < 0 ||
      par_call(r, nn_set_batch(&net, 2), "adam net") < 0) {
    nn_free(&net);
    return;
  }
  adam_config cfg = {kind, 3e-3, 0.9, 0.999, 1e-8, kind == ADAM ? 0 : 0.05};
  if (par_call(r, adam_init(&o, &net, &cfg), "adam_init") < 0) {
    nn_free(&net);
    return;
  }
  ce_rng g = ce_rng_make(777, (uint32_t)kind, 0, 2);
  const int np = net.nparams;
  float *w0[8], *g0[8], *m0[8], *v0[8];
  for (int i = 0; i < np; i++) {
    size_t n = (size_t)net.params[i].n;
    w0[i] = par_fill(n, &g, -1, 1);
    g0[i] = par_fill(n, &g, -0.1, 0.1);
    m0[i] = par_fill(n, &g, -0.05, 0.05);
    v0[i] = par_fill(n, &g, 0, 0.01);
    nn_param_upload(&net, i, w0[i]);
    nn_upload(&net, net.params[i].g, g0[i], n);
    nn_upload(&net, o.m[i], m0[i], n);
    nn_upload(&net, o.v[i], v0[i], n);
  }
  o.t = 5;
  const double lr = 3e-3;
  if (par_call(r, adam_step(&o, &net, lr), "adam_step") == 0) {
    nn_adam_coef c = adam_coef(&cfg, 6, lr);
    for (int i = 0; i < np; i++) {
      size_t n = (size_t)net.params[i].n;
      float *w = par_down(&net, net.params[i].w, n), *mm = par_down(&net, o.m[i], n),
            *vv = par_down(&net, o.v[i], n);
      double *wr = par_zeros(n), *wt = par_zeros(n), *mr = par_zeros(n), *mt = par_zeros(n),
             *vr = par_zeros(n), *vt = par_zeros(n);
      for (size_t j = 0; j < n; j++) {
        double gj = (double)g0[i][j] + (double)c.l2 * w0[i][j];
        double ga = fabs(g0[i][j]) + fabs((double)c.l2 * w0[i][j]);
        mr[j] = (double)c.b1 * m0[i][j] + (double)c.omb1 * gj;
        mt[j] = par_gamma(4) * (fabs((double)c.b1 * m0[i][j]) + c.omb1 * ga);
        vr[j] = (double)c.b2 * v0[i][j] + (double)c.omb2 * gj * gj;
        vt[j] = par_gamma(6) * ((double)c.b2 * v0[i][j] + c.omb2 * ga * ga);
        double den = sqrt(vr[j]) * c.rbc2 + c.eps;
        double upd = (double)c.step * mr[j] / den;
        wr[j] = (double)w0[i][j] * c.decay - upd;
        wt[j] = par_gamma(3) * fabs((double)w0[i][j] * c.decay) +
                c.step * (mt[j] + fabs(mr[j]) * (0.5 * vt[j] / fmax(vr[j], 1e-300) + par_gamma(6))) / den +
                PAR_U * fabs(wr[j]);
      }
      char what[160];
      snprintf(what, sizeof what, "%s %s: first moment", adam_kind_name(kind), net.params[i].name);
      par_judge(r, what, mm, mr, mt, n);
      snprintf(what, sizeof what, "%s %s: second moment", adam_kind_name(kind), net.params[i].name);
      par_judge(r, what, vv, vr, vt, n);
      snprintf(what, sizeof what, "%s %s: weights", adam_kind_name(kind), net.params[i].name);
      par_judge(r, what, w, wr, wt, n);
      free(w); free(mm); free(vv); free(wr); free(wt); free(mr); free(mt); free(vr); free(vt);
    }
  }
  for (int i = 0; i < np; i++) {
    free(w0[i]);
    free(g0[i]);
    free(m0[i]);
    free(v0[i]);
  }
  adam_free(&o);
  nn_free(&net);
}

/* ---- the reducer paths -------------------------------------------------- */

/* world replicas that all hold the same buffer: the sum is world x it
 * (exact for world 2); counts the calls. */
typedef struct {
  int world;
  long f64, f32;
} par_dup_reducer;

static int par_sum_f64(void *ctx, double *buf, size_t n) {
  par_dup_reducer *d = (par_dup_reducer *)ctx;
  d->f64++;
  for (size_t i = 0; i < n; i++) buf[i] *= d->world;
  return 0;
}
static int par_sum_f32(void *ctx, float *buf, size_t n) {
  par_dup_reducer *d = (par_dup_reducer *)ctx;
  d->f32++;
  for (size_t i = 0; i < n; i++) buf[i] *= (float)d->world;
  return 0;
}

/* Synchronised BatchNorm and the gradient reduction through the table: two
 * identical replicas give the statistics and averaged gradients of one,
 * exactly (every sum doubles a value; every division halves it), so
 * output, input and parameter gradients equal the no-reducer run bit for
 * bit; the sums come in the documented number (backend.h). */
static void par_check_reducer(par_report *r, const nn_backend *be) {
  par_case pc = {PK_BN, {3}, 3, 4, 5, 1, 1, 0, {{0}}, {{0}}, {{0}}, 0, 1};
  par_layer A, B;
  if (par_layer_run(&A, be, &pc, 2, 77, NN_FLOAT32, r) < 0) {
    par_layer_free(&A);
    return;
  }
  /* B: the same with the duplicating reducer, world 2 */
  memset(&B, 0, sizeof B);
  nn_net *net = &B.net;
  par_dup_reducer d = {2, 0, 0};
  nn_reducer red = {.world = 2, .sum_f64 = par_sum_f64, .sum_f32 = par_sum_f32, .ctx = &d,
                    .chunk = 2};
  nn_init(net);
  par_call(r, nn_set_backend(net, be), "nn_set_backend");
  int x = nn_input(net, "x0", 3, 3, 4, 5);
  net->nodes[x].needs_grad = 1;
  int o = nn_batchnorm(net, "layer", x);
  const size_t ny = (size_t)2 * 3 * 60;
  int ok = par_call(r, o < 0 ? -1 : nn_finalize(net, 1077), "reducer net") == 0 &&
           par_call(r, nn_set_batch(net, 2), "reducer net") == 0 &&
           par_call(r, nn_set_reducer(net, &red), "nn_set_reducer") == 0;
  for (int k = 0; ok && k < 4; k++)
    ok = par_call(r, nn_param_upload(net, net->nodes[o].param[k], A.w[k]), "upload") == 0;
  ok = ok && par_call(r, nn_input_upload(net, x, A.x[0]), "upload") == 0 &&
       par_call(r, nn_forward(net, 1), "forward with a reducer") == 0;
  if (ok) {
    nn_seed_grad(net, o);
    ok = par_call(r, nn_zero_grad(net), "zero_grad") == 0 &&
         par_call(r, nn_grad_upload(net, o, A.dy), "upload") == 0 &&
         par_call(r, nn_backward(net), "backward with a reducer") == 0 &&
         par_call(r, nn_reduce_grads(net), "reduce_grads") == 0;
  }
  if (ok) {
    float *y = par_down(net, net->nodes[o].out, ny), *dx = par_down(net, net->nodes[x].grad, ny);
    double *ya = par_dup(A.y, ny), *dxa = par_dup(A.dx[0], ny);
    par_judge(r, "synchronised BatchNorm (2 identical replicas): output", y, ya, NULL, ny);
    par_judge(r, "synchronised BatchNorm (2 identical replicas): input gradient", dx, dxa, NULL, ny);
    for (int k = 0; k < 2; k++) {
      float *gk = par_down(net, net->params[net->nodes[o].param[k]].g, 3);
      double *ga = par_dup(A.g[k], 3);
      par_judge(r, k ? "reduced gradients (2 replicas): beta" : "reduced gradients (2 replicas): gamma",
                gk, ga, NULL, 3);
      free(gk);
      free(ga);
    }
    /* forward: 2 sums per BatchNorm; backward 1; the gradient block in
       chunks of 2 floats */
    long want32 = (long)((net->grad_used_n + 1) / 2);
    r->checks += 2;
    if (d.f64 != 3 || d.f32 != want32) {
      par_note(r, "reducer calls: %ld sum_f64 (3 expected), %ld sum_f32 (%ld expected)", d.f64,
               d.f32, want32);
      r->failures++;
    }
    if (r->verbose)
      fprintf(stderr, "    %-40s %ld sum_f64, %ld sum_f32 calls\n", "reducer call counts", d.f64, d.f32);
    free(y);
    free(dx);
    free(ya);
    free(dxa);
  }
  nn_free(net);
  par_layer_free(&A);
}

/* ---- every layer -------------------------------------------------------- */

static const struct {
  const char *name;
  par_case pc;
} par_cases[] = {
      /* COEmuNet's shapes in small: the stem (one channel of input data, no
         input gradient), a strided block convolution, 'same', 1x1x1, the
         2-D decoder convolution (depth 1) and the 3-D one with (1,3,3) */
      {"conv stem k3 pad 0", {PK_CONV, {1}, 7, 6, 5, 1, 0, 3, {{3, 3, 3}}, {{1, 1, 1}}, {{0, 0, 0}}, 0, 1}},
      {"conv k3 stride 2 pad 1", {PK_CONV, {2}, 7, 6, 5, 1, 1, 3, {{3, 3, 3}}, {{2, 2, 2}}, {{1, 1, 1}}, 0, 1}},
      {"conv k3 same", {PK_CONV, {3}, 4, 5, 6, 1, 1, 2, {{3, 3, 3}}, {{1, 1, 1}}, {{1, 1, 1}}, 0, 1}},
      {"conv 1x1x1", {PK_CONV, {4}, 3, 4, 5, 1, 1, 3, {{1, 1, 1}}, {{1, 1, 1}}, {{0, 0, 0}}, 0, 1}},
      {"conv 2-D (1,3,3) on depth 1", {PK_CONV, {4}, 1, 6, 7, 1, 1, 3, {{1, 3, 3}}, {{1, 1, 1}}, {{0, 1, 1}}, 0, 1}},
      {"conv (1,3,3) on depth 3", {PK_CONV, {3}, 3, 5, 6, 1, 1, 2, {{1, 3, 3}}, {{1, 1, 1}}, {{0, 1, 1}}, 0, 1}},
      {"linear", {PK_LINEAR, {5}, 2, 1, 3, 1, 1, 9, {{0}}, {{0}}, {{0}}, 0, 1}},
      {"batchnorm train", {PK_BN, {3}, 3, 4, 5, 1, 1, 0, {{0}}, {{0}}, {{0}}, 0, 1}},
      {"batchnorm eval", {PK_BN, {3}, 3, 4, 5, 1, 1, 0, {{0}}, {{0}}, {{0}}, 0, 0}},
      {"relu", {PK_RELU, {3}, 2, 3, 4, 1, 1, 0, {{0}}, {{0}}, {{0}}, 0, 1}},
      {"tanh", {PK_TANH, {3}, 2, 3, 4, 1, 1, 0, {{0}}, {{0}}, {{0}}, 0, 1}},
      {"maxpool 2", {PK_MAXPOOL, {2}, 5, 4, 6, 1, 1, 0, {{2, 2, 2}}, {{0}}, {{0}}, 0, 1}},
      {"upsample (1,2,2)", {PK_UPSAMPLE, {2}, 3, 2, 3, 1, 1, 0, {{0}}, {{1, 2, 2}}, {{0}}, 0, 1}},
      {"upsample (2,2,2)", {PK_UPSAMPLE, {2}, 2, 3, 2, 1, 1, 0, {{0}}, {{2, 2, 2}}, {{0}}, 0, 1}},
      {"add", {PK_ADD, {3, 3}, 2, 3, 4, 2, 1, 0, {{0}}, {{0}}, {{0}}, 0, 1}},
      {"concat", {PK_CONCAT, {2, 3, 1}, 2, 2, 3, 3, 1, 0, {{0}}, {{0}}, {{0}}, 0, 1}},
      {"slice", {PK_SLICE, {5}, 2, 3, 2, 1, 1, 2, {{0}}, {{0}}, {{0}}, 1, 1}},
};
#define PAR_NCASES ((int)(sizeof par_cases / sizeof par_cases[0]))

/* Case i run on backend be at precision run, checked against references
 * from operands rounded as precision ref rounds them (run != ref: a negative
 * control that must fail). */
static void par_case_run(const nn_backend *be, par_report *r, int i, int run, int ref) {
  const par_case *pc = &par_cases[i].pc;
  par_layer L;
  if (par_layer_run(&L, be, pc, 3, (uint32_t)i, run, r) == 0) {
    if (ref != NN_FLOAT32) par_round_operands(&L, ref);
    if (pc->kind == PK_CONV) par_check_conv(r, &L, pc, par_cases[i].name, ref);
    else if (pc->kind == PK_LINEAR) par_check_linear(r, &L, par_cases[i].name);
    else if (pc->kind == PK_BN) par_check_bn(r, &L, pc->train, par_cases[i].name);
    else par_check_simple(r, &L, pc, par_cases[i].name);
  } else if (r->verbose) {
    fprintf(stderr, "    %s: %s\n", par_cases[i].name, r->first);
  }
  par_layer_free(&L);
}

/* The convolutions and linear layers at precision run (tf32, bf16) against
 * references at precision ref (the same, or another: a negative control). */
static void par_layers_precision(const nn_backend *be, par_report *r, int run, int ref) {
  for (int i = 0; i < PAR_NCASES; i++)
    if (par_cases[i].pc.kind == PK_CONV || par_cases[i].pc.kind == PK_LINEAR)
      par_case_run(be, r, i, run, ref);
}

static void par_layers(const nn_backend *be, par_report *r) {
  for (int i = 0; i < PAR_NCASES; i++) par_case_run(be, r, i, NN_FLOAT32, NN_FLOAT32);
  par_check_loss(r, be, 6, 5, 4, 3, 1.0f);  /* odd width, a spare image */
  par_check_loss(r, be, 4, 8, 2, 2, 0.5f);  /* even width (the Nyquist column), a seed scale */
  par_check_adam(r, be, ADAM);
  par_check_adam(r, be, ADAM_L2);
  par_check_adam(r, be, ADAMW);
  par_check_reducer(r, be);
}

/* ---- a whole training step ---------------------------------------------- */

/* How far one training step lies from the reference step (relative), as in
 * tests/trainer/test_parallel.c. */
typedef struct {
  double loss, grad, update, stats;
} par_mismatch;

typedef struct {
  double loss;
  int nparams;
  float **g, **w; /* gradients the update used; weights (and running statistics) after */
} par_step_rec;

static void par_rec_free(par_step_rec *s) {
  for (int i = 0; i < s->nparams; i++) {
    free(s->g[i]);
    free(s->w[i]);
  }
  free(s->g);
  free(s->w);
  memset(s, 0, sizeof *s);
}

/* The scaled-down COEmuNet of tests/trainer/test_backend.c. */
static const coemunet_config PAR_CFG = {2, 16, 2, {2, 3, 4}, 8, 8, COEMUNET_SHORTCUT_REFERENCE};
#define PAR_B 3

/* The precision of the whole-step checks (par_step_reference, par_step). */
static int par_step_precision = NN_FLOAT32;


/* One training step of a fresh model (seed 11) on backend be; ulp_salt > 0
 * moves every input value one ulp up or down (a noise-floor variant);
 * ulp_salt == PAR_REVERSED feeds the same samples in reverse order (another:
 * the exact step is the same, every sum over the batch runs in another
 * order, as on another backend). */
#define PAR_REVERSED UINT32_MAX
/* ulp draws beyond the first two: the floor is the largest of a heavy-tailed
 * spread (a draw that moves a ReLU or a max-pool choice moves the gradient
 * far more than one that does not), 4e-5 to 3.4e-4 in the gradient on one
 * host, and on the first GPU host's CPU both first draws fell ~20x below
 * that host's device step: more draws make the floor a host's, not a draw's */
#define PAR_MORE_ULP_DRAWS 6
static int par_one_step(const nn_backend *be, uint32_t ulp_salt, par_step_rec *out) {
  memset(out, 0, sizeof *out);
  coemunet m;
  adam o;
  trainer tr;
  memset(&o, 0, sizeof o);
  memset(&tr, 0, sizeof tr);
  const size_t nx = (size_t)PAR_B * 3 * PAR_CFG.grid * PAR_CFG.grid * PAR_CFG.grid;
  const size_t nt = (size_t)PAR_B * PAR_CFG.nfreq * PAR_CFG.grid * PAR_CFG.grid;
  float *x = (float *)malloc(sizeof(float) * nx), *t = (float *)malloc(sizeof(float) * nt);
  test_step_batch(&PAR_CFG, PAR_B, 0, x, t);
  if (ulp_salt == PAR_REVERSED) {
    const size_t sx = nx / PAR_B, st = nt / PAR_B;
    for (int b = 0; b < PAR_B / 2; b++) {
      float *xa = x + b * sx, *xb = x + (PAR_B - 1 - b) * sx;
      float *ta = t + b * st, *tb = t + (PAR_B - 1 - b) * st;
      for (size_t i = 0; i < sx; i++) {
        float v = xa[i];
        xa[i] = xb[i], xb[i] = v;
      }
      for (size_t i = 0; i < st; i++) {
        float v = ta[i];
        ta[i] = tb[i], tb[i] = v;
      }
    }
  } else if (ulp_salt) {
    ce_rng g = ce_rng_make(99, ulp_salt, 0, 5);
    for (size_t i = 0; i < nx; i++) x[i] = nextafterf(x[i], ce_rng_u32(&g) & 1 ? INFINITY : -INFINITY);
  }
  adam_config ac = {ADAMW, 2e-3, 0.9, 0.999, 1e-8, 0.01};
  int rc = coemunet_build_on(&m, &PAR_CFG, 11, be);
  if (rc == 0) rc = nn_set_precision(&m.net, par_step_precision);
  if (rc == 0) rc = nn_set_batch(&m.net, PAR_B);
  if (rc == 0) rc = adam_init(&o, &m.net, &ac);
  if (rc == 0) rc = trainer_init(&tr, &m, &o);
  loss_value lv;
  if (rc == 0) rc = trainer_step(&tr, x, t, 2e-3, &lv);
  if (rc == 0) {
    const nn_net *net = &m.net;
    out->loss = lv.total;
    out->nparams = net->nparams;
    out->g = (float **)calloc((size_t)net->nparams, sizeof(float *));
    out->w = (float **)calloc((size_t)net->nparams, sizeof(float *));
    for (int i = 0; i < net->nparams; i++) {
      const nn_param *p = &net->params[i];
      out->w[i] = par_down(net, p->w, (size_t)p->n);
      if (p->g) out->g[i] = par_down(net, p->g, (size_t)p->n);
    }
  }
  trainer_free(&tr);
  adam_free(&o);
  coemunet_free(&m);
  free(x);
  free(t);
  return rc;
}

/* a against ref, both from the same initial weights (init): the loss, the
 * gradients and the update w_after - w_init (relative norms over the
 * trainable, used tensors), the running statistics (largest relative
 * difference). Tensors whose reference gradient is rounding noise are left
 * out of the gradient and update norms, as in tests/trainer/test_parallel.c:
 * a convolution bias right before a BatchNorm has dL/db = 0 exactly, its
 * computed gradient is float32 noise, and Adam's first step turns any noise
 * into a full step of size lr in a random direction. */
static par_mismatch par_compare(const nn_net *shape, const par_step_rec *a, const par_step_rec *ref,
                                const par_step_rec *init) {
  par_mismatch mm = {fabs(a->loss - ref->loss) / fabs(ref->loss), 0, 0, 0};
  double total2 = 0, count = 0;
  for (int i = 0; i < shape->nparams; i++) {
    const nn_param *q = &shape->params[i];
    if (!q->trainable || !q->used) continue;
    for (int64_t j = 0; j < q->n; j++) total2 += (double)ref->g[i][j] * ref->g[i][j];
    count += (double)q->n;
  }
  const double rms = sqrt(total2 / (count > 0 ? count : 1));
  double gn = 0, gd = 0, un = 0, ud = 0;
  for (int i = 0; i < shape->nparams; i++) {
    const nn_param *q = &shape->params[i];
    if (q->trainable && q->used) {
      double t2 = 0;
      for (int64_t j = 0; j < q->n; j++) t2 += (double)ref->g[i][j] * ref->g[i][j];
      if (sqrt(t2 / (double)q->n) <= 1e-3 * rms) continue; /* rounding noise */
      for (int64_t j = 0; j < q->n; j++) {
        double dg = (double)a->g[i][j] - ref->g[i][j];
        gn += dg * dg;
        gd += (double)ref->g[i][j] * ref->g[i][j];
        double du = (double)a->w[i][j] - ref->w[i][j];
        double uref = (double)ref->w[i][j] - init->w[i][j];
        un += du * du;
        ud += uref * uref;
      }
    } else if (!q->trainable) {
      for (int64_t j = 0; j < q->n; j++) {
        double d = fabs((double)a->w[i][j] - ref->w[i][j]) / (fabs(ref->w[i][j]) + 1e-3);
        if (d > mm.stats) mm.stats = d;
      }
    }
  }
  mm.grad = gd > 0 ? sqrt(gn / gd) : sqrt(gn);
  mm.update = ud > 0 ? sqrt(un / ud) : sqrt(un);
  return mm;
}

#define PAR_FLOOR_FACTOR 10.0
#define PAR_FLOOR_MIN (4 * DBL_EPSILON)

static double *par_metric(par_mismatch *m, int q) {
  return q == 0 ? &m->loss : q == 1 ? &m->grad : q == 2 ? &m->update : &m->stats;
}
static const char *const par_metric_name[4] = {"loss", "grad", "update", "BN stats"};

typedef struct {
  par_step_rec ref, init;
  coemunet shape; /* the graph only (parameter names, shapes) */
  par_mismatch floor;
  int ok;
} par_step_ref;

static void par_step_reference_free(par_step_ref *R);

/* The CPU reference step and its noise floor: every input one ulp off (two
 * draws, then PAR_MORE_ULP_DRAWS more), the CPU step at another OpenMP thread count, and the batch in
 * reverse order (every batch sum reordered: what another backend's
 * reductions do; in bf16 it also flips the roundings that a reordered
 * float32 accumulation flips, which the ulp variants, absorbed by bf16's
 * rounding of the inputs, cannot). */
static int par_step_reference(par_step_ref *R, int verbose) {
  memset(R, 0, sizeof *R);
  CE_TRY(coemunet_describe(&R->shape, &PAR_CFG));
  /* the initial weights: a model built and not stepped */
  coemunet m;
  CE_TRY(coemunet_build_on(&m, &PAR_CFG, 11, &nn_backend_cpu));
  R->init.nparams = m.net.nparams;
  R->init.w = (float **)calloc((size_t)m.net.nparams, sizeof(float *));
  R->init.g = (float **)calloc((size_t)m.net.nparams, sizeof(float *));
  for (int i = 0; i < m.net.nparams; i++)
    R->init.w[i] = par_down(&m.net, m.net.params[i].w, (size_t)m.net.params[i].n);
  coemunet_free(&m);
  CE_TRY(par_one_step(&nn_backend_cpu, 0, &R->ref));
  const int threads = omp_get_max_threads();
  static const char *const variant[4] = {"inputs +-1 ulp", "inputs +-1 ulp (2)",
                                          "another thread count", "the batch reversed"};
  for (int v = 0; v < 4 + PAR_MORE_ULP_DRAWS; v++) {
    par_step_rec s;
    if (v == 2) omp_set_num_threads(threads == 1 ? 2 : 1);
    const uint32_t salt = v < 2   ? 19 + (uint32_t)v
                          : v == 3 ? PAR_REVERSED
                          : v > 3  ? 100 + (uint32_t)v
                                   : 0;
    int rc = par_one_step(&nn_backend_cpu, salt, &s);
    if (v == 2) omp_set_num_threads(threads);
    CE_TRY(rc);
    par_mismatch mm = par_compare(&R->shape.net, &s, &R->ref, &R->init);
    if (verbose)
      fprintf(stderr, "    floor: %-28s loss %.2e  grad %.2e  update %.2e  BN stats %.2e\n",
              v < 4 ? variant[v] : "inputs +-1 ulp (more)", mm.loss, mm.grad, mm.update, mm.stats);
    for (int q = 0; q < 4; q++)
      if (*par_metric(&mm, q) > *par_metric(&R->floor, q)) *par_metric(&R->floor, q) = *par_metric(&mm, q);
    par_rec_free(&s);
  }
  for (int q = 0; q < 4; q++)
    if (*par_metric(&R->floor, q) < PAR_FLOOR_MIN) *par_metric(&R->floor, q) = PAR_FLOOR_MIN;
  if (par_step_precision != NN_FLOAT32) {
    /* bf16 rounds away the variants above (an input one float32 ulp off is
       mostly the same bf16 value), leaving a floor of ~0 for the loss and the
       update; another backend's step differs from the emulation by its own
       float32 accumulation orders (and the bf16 roundings those flip): the
       floor of a reduced precision is at least the float32 step's */
    par_step_ref F;
    const int prec = par_step_precision;
    par_step_precision = NN_FLOAT32;
    int rc = par_step_reference(&F, verbose);
    par_step_precision = prec;
    if (rc < 0) return -1;
    for (int q = 0; q < 4; q++)
      if (*par_metric(&F.floor, q) > *par_metric(&R->floor, q))
        *par_metric(&R->floor, q) = *par_metric(&F.floor, q);
    par_step_reference_free(&F);
  }
  R->ok = 1;
  return 0;
}

static void par_step_reference_free(par_step_ref *R) {
  par_rec_free(&R->ref);
  par_rec_free(&R->init);
  coemunet_free(&R->shape);
  memset(R, 0, sizeof *R);
}

/* The step on backend be against the CPU reference: *exact is set when the
 * two are bit-identical (loss, gradients, weights); *within when every
 * metric lies within PAR_FLOOR_FACTOR x the floor. */
static int par_step(const nn_backend *be, const par_step_ref *R, par_mismatch *mm, int *exact,
                    int *within) {
  par_step_rec s;
  CE_TRY(par_one_step(be, 0, &s));
  *mm = par_compare(&R->shape.net, &s, &R->ref, &R->init);
  int same = s.loss == R->ref.loss;
  for (int i = 0; same && i < s.nparams; i++) {
    size_t n = (size_t)R->shape.net.params[i].n;
    same = !memcmp(s.w[i], R->ref.w[i], sizeof(float) * n) &&
           (!s.g[i] || !memcmp(s.g[i], R->ref.g[i], sizeof(float) * n));
  }
  *exact = same;
  *within = 1;
  par_mismatch f = R->floor;
  for (int q = 0; q < 4; q++)
    if (!(*par_metric(mm, q) <= PAR_FLOOR_FACTOR * *par_metric(&f, q))) *within = 0;
  par_rec_free(&s);
  return 0;
}

/* ---- checkpoints across backends --------------------------------------- */

/* A model trained one step on backend `from` and saved to path, loaded into a
 * model on backend `to` (built from another seed): every parameter, buffer,
 * Adam moment and the step count arrive bit for bit (checkpoints go through
 * downloads and uploads only, backend.h), and the checkpoint `to` saves back
 * is the same file, byte for byte (path2). Returns the differing values
 * (0: interchangeable), or -1 with an error. control: the negative control,
 * no load (b keeps its own weights): the comparison must then find them. */
static long par_checkpoint(const nn_backend *from, const nn_backend *to, const char *path,
                           const char *path2, int control) {
  coemunet a, b;
  adam oa, ob;
  trainer tr;
  memset(&oa, 0, sizeof oa);
  memset(&ob, 0, sizeof ob);
  memset(&tr, 0, sizeof tr);
  const size_t nx = (size_t)PAR_B * 3 * PAR_CFG.grid * PAR_CFG.grid * PAR_CFG.grid;
  const size_t nt = (size_t)PAR_B * PAR_CFG.nfreq * PAR_CFG.grid * PAR_CFG.grid;
  float *x = (float *)malloc(sizeof(float) * nx), *t = (float *)malloc(sizeof(float) * nt);
  test_step_batch(&PAR_CFG, PAR_B, 1, x, t);
  adam_config ac = {ADAMW, 2e-3, 0.9, 0.999, 1e-8, 0.01};
  train_state st = {11, 1, 0, {2e-3, 0.5, 2}}, st2;
  loss_value lv;
  long diff = -1;
  int built_b = 0;
  int rc = coemunet_build_on(&a, &PAR_CFG, 11, from);
  if (rc == 0) rc = nn_set_precision(&a.net, par_step_precision); /* master weights: float32 */
  if (rc == 0) rc = nn_set_batch(&a.net, PAR_B);
  if (rc == 0) rc = adam_init(&oa, &a.net, &ac);
  if (rc == 0) rc = trainer_init(&tr, &a, &oa);
  if (rc == 0) rc = trainer_step(&tr, x, t, 2e-3, &lv);
  if (rc == 0) rc = checkpoint_save(path, &a, &oa, &st);
  if (rc == 0) rc = coemunet_build_on(&b, &PAR_CFG, 99, to);
  if (rc == 0) built_b = 1;
  if (rc == 0) rc = adam_init(&ob, &b.net, &ac);
  st2 = st;
  if (rc == 0 && !control) rc = checkpoint_load(path, &b, &ob, &st2);
  if (rc == 0) rc = checkpoint_save(path2, &b, &ob, &st2);
  if (rc == 0) {
    diff = oa.t != ob.t;
    for (int i = 0; i < a.net.nparams; i++) {
      const size_t n = (size_t)a.net.params[i].n;
      const float *pa[3] = {a.net.params[i].w, adam_has_state(&oa, i) ? oa.m[i] : NULL,
                            adam_has_state(&oa, i) ? oa.v[i] : NULL};
      const float *pb[3] = {b.net.params[i].w, adam_has_state(&ob, i) ? ob.m[i] : NULL,
                            adam_has_state(&ob, i) ? ob.v[i] : NULL};
      for (int k = 0; k < 3; k++) {
        if (!pa[k] || !pb[k]) {
          diff += pa[k] != pb[k];
          continue;
        }
        float *u = par_down(&a.net, pa[k], n), *v = par_down(&b.net, pb[k], n);
        for (size_t j = 0; j < n; j++) diff += memcmp(&u[j], &v[j], sizeof(float)) != 0;
        free(u);
        free(v);
      }
    }
    FILE *f = fopen(path, "rb"), *g = fopen(path2, "rb");
    int ca = 0, cb = 0;
    while (f && g && (ca = fgetc(f)) == (cb = fgetc(g)) && ca != EOF) {
    }
    if (!f || !g || ca != cb) diff++;
    if (f) fclose(f);
    if (g) fclose(g);
  }
  trainer_free(&tr);
  adam_free(&oa);
  adam_free(&ob);
  coemunet_free(&a);
  if (built_b) coemunet_free(&b);
  free(x);
  free(t);
  return rc < 0 ? -1 : diff;
}

#endif
