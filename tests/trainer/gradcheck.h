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
 * gradient g (host). */
static inline void gc_tensor(nn_net *net, int out, const float *r, gc_objective obj, void *user,
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
  double num = (lp - lm) / (2 * h);
  CHECK_MSG(fabs(num - gd) <= rtol * (fabs(gd) + sqrt(gn)) + 1e-9,
            "%s: directional derivative %.8g by differences, %.8g analytic (|g| %.3g)", what, num,
            gd, sqrt(gn));
  free(d);
  free(w0);
  free(wt);
}

/* Directional check of all used trainable parameters whose name starts with
 * prefix (a whole module at once), with analytic gradients g[i]. */
static inline void gc_group(nn_net *net, int out, const float *r, gc_objective obj, void *user,
                            float **g, const char *prefix, double h, double rtol, const char *what) {
  ce_rng rng = ce_rng_make(98, 0, 0, 3);
  double gd = 0, gn = 0, lp, lm;
  int any = 0;
  for (int pass = 0; pass < 3; pass++) {
    for (int i = 0; i < net->nparams; i++) {
      nn_param *p = &net->params[i];
      if (!g[i] || !p->used || strncmp(p->name, prefix, strlen(prefix)) != 0) continue;
      any = 1;
      ce_rng ri = ce_rng_make(98, (uint32_t)i, 0, 3);
      float *w = gc_host_param(net, i);
      for (int64_t j = 0; j < p->n; j++) {
        float d = ce_rng_u32(&ri) & 1 ? 1.0f : -1.0f;
        if (pass == 0) { gd += (double)g[i][j] * d; gn += (double)g[i][j] * g[i][j]; w[j] += (float)(h * d); }
        if (pass == 1) w[j] -= (float)(2 * h * d);
        if (pass == 2) w[j] += (float)(h * d);
      }
      CHECK_OK(nn_param_upload(net, i, w));
      free(w);
    }
    if (pass == 0) lp = obj(net, out, r, NULL, user);
    if (pass == 1) lm = obj(net, out, r, NULL, user);
  }
  (void)rng;
  if (!any) return;
  double num = (lp - lm) / (2 * h);
  CHECK_MSG(fabs(num - gd) <= rtol * (fabs(gd) + sqrt(gn)) + 1e-9,
            "%s: %s*: directional derivative %.8g by differences, %.8g analytic (|g| %.3g)", what,
            prefix, num, gd, sqrt(gn));
}

/* Check every trainable parameter and (if it needs a gradient) input node x.
 * groups: NULL to check tensor by tensor, or a NULL-terminated list of name
 * prefixes to check module by module (faster for whole networks). */
static inline void gc_net(nn_net *net, int x, int out, gc_objective obj, void *user, double h,
                   double rtol, const char *what, const char *const *groups) {
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
      CHECK_MSG(fabs(num - gx[i]) <= 3 * rtol * (fabs(gx[i]) + gmax) + 1e-6,
                "%s: dL/dx[%zu] = %.8g by differences, %.8g analytic", what, i, num, gx[i]);
    }
    free(xv);
  }
  for (int i = 0; i < net->nparams; i++) free(g[i]);
  free(g);
  free(gx);
  free(r);
  free(seed);
}

#endif
