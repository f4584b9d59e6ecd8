/* gradcheck.h - finite-difference gradient checks for nn.h graphs (tests).
 *
 * The layers run in float32, so elementwise central differences are noisy.
 * We check directional derivatives instead: for a random +-1 direction d
 * over one tensor (each parameter tensor, and the input when it needs a
 * gradient), the central difference (L(w + h d) - L(w - h d)) / 2h must
 * match g.d within rtol * (|g.d| + ||g||). ||g|| is the typical size of g.d
 * for a random d, so a wrong gradient (a missing term, a transposed index, a
 * factor) misses by O(||g||) while float32 rounding and the O(h^2)
 * truncation stay far below 1%. A few single entries of the input gradient
 * are also compared one by one.
 *
 * rtol covers what does not depend on the host: the O(h^2) truncation and,
 * in whole networks, ReLU and max-pooling kinks crossed within +-h (the same
 * weights and data everywhere: measured the same to 10-20% on 10 OpenBLAS
 * kernels). The float32 rounding of the two objective values does depend
 * on the host (BLAS kernel, summation order), so it is measured on it: the
 * objective's change when every value of the probed tensors moves by one
 * ulp (the size of the per-layer rounding), L_ulp, adds GC_ROUND_FACTOR x
 * |L_ulp - L| / h to the tolerance. A check whose rounding term reaches
 * half the gradient's size could not tell a wrong gradient: it fails.
 *
 * The objective is either sum_i r_i y_i with fixed random r (the output's
 * gradient is r), or a caller's loss function.
 *
 * Tensors are backend memory (backend.h): the checks read and write them
 * through nn_download / nn_upload only, so they run on any backend.
 */
#ifndef COEMU_TEST_GRADCHECK_H
#define COEMU_TEST_GRADCHECK_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "common/rng.h"
#include "trainer/nn.h"

/* the largest error / tolerance, and rounding term / gradient size, of the
 * checks since gc_net began */
static double gc_worst_, gc_round_worst_;

#define GC_ROUND_FACTOR 4.0

/* |num - gd| against the tolerance; the rounding term must leave the check
 * able to fail (a wrong gradient misses by O(|g|)). */
static inline void gc_judge(double num, double gd, double gn2, double rtol, double round,
                            const char *what, const char *prefix) {
  const double tol = rtol * (fabs(gd) + sqrt(gn2)) + GC_ROUND_FACTOR * round + 1e-9;
  gc_worst_ = fmax(gc_worst_, fabs(num - gd) / tol);
  gc_round_worst_ = fmax(gc_round_worst_, GC_ROUND_FACTOR * round / (fabs(gd) + sqrt(gn2) + 1e-300));
  CHECK_MSG(fabs(num - gd) <= tol,
            "%s%s: directional derivative %.8g by differences, %.8g analytic (|g| %.3g, "
            "rounding term %.3g)", what, prefix, num, gd, sqrt(gn2), GC_ROUND_FACTOR * round);
  CHECK_MSG(GC_ROUND_FACTOR * round <= 0.5 * (fabs(gd) + sqrt(gn2)) + 1e-9,
            "%s%s: float32 rounding %.3g of the objective / h is too large against the "
            "gradient (|g| %.3g) to check it by differences on this host", what, prefix,
            GC_ROUND_FACTOR * round, sqrt(gn2));
}

/* dir[i] for the one-ulp moves: up or down, seeded */
static inline float gc_ulp(float v, ce_rng *r) {
  return nextafterf(v, ce_rng_u32(r) & 1 ? INFINITY : -INFINITY);
}

/* objective: runs forward, returns L and (if grad) writes dL/dy into grad
 * (host memory, batch x output size floats) */
typedef double (*gc_objective)(nn_net *net, int out, const float *r, float *grad, void *user);

/* Host copies of a node's output (batch x size floats) and of a parameter's
 * values; free() them. */
static inline float *gc_host_out(const nn_net *net, int node) {
  float *y = malloc(sizeof(float) * (size_t)net->batch * (size_t)net->nodes[node].size);
  CHECK_OK(nn_out_download(net, node, y));
  return y;
}
static inline float *gc_host_param(const nn_net *net, int i) {
  float *w = malloc(sizeof(float) * (size_t)net->params[i].n);
  CHECK_OK(nn_param_download(net, i, w));
  return w;
}

/* sum r_i y_i; user NULL: training-mode forward, else an int* giving the mode */
static inline double gc_dot_objective(nn_net *net, int out, const float *r, float *grad, void *user) {
  nn_forward(net, user ? *(const int *)user : 1);
  float *y = gc_host_out(net, out);
  size_t n = (size_t)net->batch * net->nodes[out].size;
  double L = 0;
  for (size_t i = 0; i < n; i++) L += (double)r[i] * y[i];
  if (grad) memcpy(grad, r, sizeof(float) * n);
  free(y);
  return L;
}

static inline void gc_fill(float *a, size_t n, ce_rng *rng, double lo, double hi) {
  for (size_t i = 0; i < n; i++) a[i] = (float)(lo + (hi - lo) * ce_rng_uniform(rng));
}

/* An input node filled with U(lo, hi) (drawn on the host, uploaded); the
 * host copy is returned (free() it). */
static inline float *gc_fill_input(nn_net *net, int x, ce_rng *rng, double lo, double hi) {
  size_t n = (size_t)net->batch * net->nodes[x].size;
  float *v = malloc(sizeof(float) * n);
  gc_fill(v, n, rng, lo, hi);
  CHECK_OK(nn_input_upload(net, x, v));
  return v;
}

/* Directional check of one tensor w (backend memory, n floats) with analytic
 * gradient g (host); returns the measured rounding term |L_ulp - L| / h. */
static inline double gc_tensor(nn_net *net, int out, const float *r, gc_objective obj, void *user,
                      float *w, const float *g, size_t n, double h, double rtol, const char *what,
                      uint32_t salt) {
  ce_rng rng = ce_rng_make(99, salt, 0, 3);
  float *d = malloc(sizeof(float) * n), *w0 = malloc(sizeof(float) * n),
        *wt = malloc(sizeof(float) * n);
  CHECK_OK(nn_download(net, w0, w, n));
  double gd = 0, gn = 0;
  for (size_t i = 0; i < n; i++) {
    d[i] = ce_rng_u32(&rng) & 1 ? 1.0f : -1.0f;
    gd += (double)g[i] * d[i];
    gn += (double)g[i] * g[i];
  }
  for (size_t i = 0; i < n; i++) wt[i] = (float)(w0[i] + h * d[i]);
  CHECK_OK(nn_upload(net, w, wt, n));
  double lp = obj(net, out, r, NULL, user);
  for (size_t i = 0; i < n; i++) wt[i] = (float)(w0[i] - h * d[i]);
  CHECK_OK(nn_upload(net, w, wt, n));
  double lm = obj(net, out, r, NULL, user);
  CHECK_OK(nn_upload(net, w, w0, n));
  double l0 = obj(net, out, r, NULL, user);
  for (size_t i = 0; i < n; i++) wt[i] = gc_ulp(w0[i], &rng);
  CHECK_OK(nn_upload(net, w, wt, n));
  double lu = obj(net, out, r, NULL, user);
  CHECK_OK(nn_upload(net, w, w0, n));
  gc_judge((lp - lm) / (2 * h), gd, gn, rtol, fabs(lu - l0) / h, what, "");
  free(d);
  free(w0);
  free(wt);
  return fabs(lu - l0) / h;
}

/* Directional check of all used trainable parameters whose name starts with
 * prefix (a whole module at once), with analytic gradients g[i]. */
static inline void gc_group(nn_net *net, int out, const float *r, gc_objective obj, void *user,
                            float **g, const char *prefix, double h, double rtol, const char *what) {
  double gd = 0, gn = 0, lp = 0, lm = 0, l0 = 0, lu = 0;
  float **w0 = calloc((size_t)net->nparams, sizeof *w0);
  int any = 0;
  for (int i = 0; i < net->nparams; i++) {
    nn_param *p = &net->params[i];
    if (!g[i] || !p->used || strncmp(p->name, prefix, strlen(prefix)) != 0) continue;
    any = 1;
    w0[i] = gc_host_param(net, i);
  }
  /* passes: w + h d, w - h d, w, every value one ulp up or down */
  for (int pass = 0; pass < 4 && any; pass++) {
    for (int i = 0; i < net->nparams; i++) {
      nn_param *p = &net->params[i];
      if (!w0[i]) continue;
      ce_rng ri = ce_rng_make(98, (uint32_t)i, 0, 3), ru = ce_rng_make(97, (uint32_t)i, 0, 3);
      float *w = malloc(sizeof(float) * p->n);
      for (int64_t j = 0; j < p->n; j++) {
        float d = ce_rng_u32(&ri) & 1 ? 1.0f : -1.0f;
        if (pass == 0) {
          gd += (double)g[i][j] * d;
          gn += (double)g[i][j] * g[i][j];
        }
        w[j] = pass == 0 ? (float)(w0[i][j] + h * d) : pass == 1 ? (float)(w0[i][j] - h * d)
             : pass == 2 ? w0[i][j] : gc_ulp(w0[i][j], &ru);
      }
      CHECK_OK(nn_param_upload(net, i, w));
      free(w);
    }
    double l = obj(net, out, r, NULL, user);
    if (pass == 0) lp = l;
    if (pass == 1) lm = l;
    if (pass == 2) l0 = l;
    if (pass == 3) lu = l;
  }
  for (int i = 0; i < net->nparams; i++) {
    if (!w0[i]) continue;
    CHECK_OK(nn_param_upload(net, i, w0[i]));
    free(w0[i]);
  }
  free(w0);
  if (!any) return;
  char label[160];
  snprintf(label, sizeof label, ": %s*", prefix);
  gc_judge((lp - lm) / (2 * h), gd, gn, rtol, fabs(lu - l0) / h, what, label);
}

/* Check every trainable parameter and (if it needs a gradient) input node x.
 * groups: NULL to check tensor by tensor, or a NULL-terminated list of name
 * prefixes to check module by module (faster for whole networks). */
static inline void gc_net(nn_net *net, int x, int out, gc_objective obj, void *user, double h,
                   double rtol, const char *what, const char *const *groups) {
  gc_worst_ = gc_round_worst_ = 0;
  size_t nout = (size_t)net->batch * net->nodes[out].size;
  float *r = malloc(sizeof(float) * nout), *seed = malloc(sizeof(float) * nout);
  ce_rng rng = ce_rng_make(7, 1, 2, 3);
  gc_fill(r, nout, &rng, -1, 1);
  nn_seed_grad(net, out);
  obj(net, out, r, seed, user);
  CHECK_OK(nn_grad_upload(net, out, seed));
  CHECK_OK(nn_zero_grad(net));
  CHECK_OK(nn_backward(net));
  /* copy the analytic gradients before the probes overwrite activations */
  float **g = calloc((size_t)net->nparams + 1, sizeof *g);
  for (int i = 0; i < net->nparams; i++)
    if (net->params[i].trainable) {
      g[i] = malloc(sizeof(float) * net->params[i].n);
      CHECK_OK(nn_param_grad_download(net, i, g[i]));
    }
  size_t nx = (size_t)net->batch * net->nodes[x].size;
  float *gx = NULL;
  if (net->nodes[x].needs_grad) {
    gx = malloc(sizeof(float) * nx);
    CHECK_OK(nn_grad_download(net, x, gx));
  }
  char label[256];
  for (int k = 0; groups && groups[k]; k++) gc_group(net, out, r, obj, user, g, groups[k], h, rtol, what);
  for (int i = 0; i < net->nparams && !groups; i++) {
    if (!g[i]) continue;
    snprintf(label, sizeof label, "%s: %s", what, net->params[i].name);
    gc_tensor(net, out, r, obj, user, net->params[i].w, g[i], (size_t)net->params[i].n, h, rtol,
              label, (uint32_t)i);
  }
  if (gx) {
    snprintf(label, sizeof label, "%s: input", what);
    const double round =
        gc_tensor(net, out, r, obj, user, nn_out(net, x), gx, nx, h, rtol, label, 1000);
    /* a few entries one by one */
    float *xv = gc_host_out(net, x);
    double gmax = 0;
    for (size_t i = 0; i < nx; i++) gmax = fmax(gmax, fabs(gx[i]));
    for (size_t k = 0; k < 6 && k < nx; k++) {
      size_t i = (k * 7919) % nx;
      float v0 = xv[i];
      xv[i] = (float)(v0 + h);
      CHECK_OK(nn_input_upload(net, x, xv));
      double lp = obj(net, out, r, NULL, user);
      xv[i] = (float)(v0 - h);
      CHECK_OK(nn_input_upload(net, x, xv));
      double lm = obj(net, out, r, NULL, user);
      xv[i] = v0;
      CHECK_OK(nn_input_upload(net, x, xv));
      double num = (lp - lm) / (2 * h);
      const double tol = 3 * rtol * (fabs(gx[i]) + gmax) + GC_ROUND_FACTOR * round + 1e-6;
      gc_worst_ = fmax(gc_worst_, fabs(num - gx[i]) / tol);
      CHECK_MSG(fabs(num - gx[i]) <= tol, "%s: dL/dx[%zu] = %.8g by differences, %.8g analytic",
                what, i, num, gx[i]);
    }
    free(xv);
  }
  fprintf(stderr, "  %s: worst error %.2g of the tolerance; rounding terms up to %.2g of |g|\n",
          what, gc_worst_, gc_round_worst_);
  for (int i = 0; i < net->nparams; i++) free(g[i]);
  free(g);
  free(gx);
  free(r);
  free(seed);
}

#endif
