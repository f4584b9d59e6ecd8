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
 */
#ifndef COEMU_TEST_GRADCHECK_H
#define COEMU_TEST_GRADCHECK_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "common/rng.h"
#include "trainer/nn.h"

/* objective: runs forward, returns L and (if grad) writes dL/dy into grad */
typedef double (*gc_objective)(nn_net *net, int out, const float *r, float *grad, void *user);

/* sum r_i y_i; user NULL: training-mode forward, else an int* giving the mode */
static inline double gc_dot_objective(nn_net *net, int out, const float *r, float *grad, void *user) {
  nn_forward(net, user ? *(const int *)user : 1);
  const float *y = nn_out(net, out);
  size_t n = (size_t)net->batch * net->nodes[out].size;
  double L = 0;
  for (size_t i = 0; i < n; i++) L += (double)r[i] * y[i];
  if (grad) memcpy(grad, r, sizeof(float) * n);
  return L;
}

static inline void gc_fill(float *a, size_t n, ce_rng *rng, double lo, double hi) {
  for (size_t i = 0; i < n; i++) a[i] = (float)(lo + (hi - lo) * ce_rng_uniform(rng));
}

/* Directional check of one tensor w (n floats) with analytic gradient g. */
static inline void gc_tensor(nn_net *net, int out, const float *r, gc_objective obj, void *user,
                      float *w, const float *g, size_t n, double h, double rtol, const char *what,
                      uint32_t salt) {
  ce_rng rng = ce_rng_make(99, salt, 0, 3);
  float *d = malloc(sizeof(float) * n), *w0 = malloc(sizeof(float) * n);
  memcpy(w0, w, sizeof(float) * n);
  double gd = 0, gn = 0;
  for (size_t i = 0; i < n; i++) {
    d[i] = ce_rng_u32(&rng) & 1 ? 1.0f : -1.0f;
    gd += (double)g[i] * d[i];
    gn += (double)g[i] * g[i];
  }
  for (size_t i = 0; i < n; i++) w[i] = (float)(w0[i] + h * d[i]);
  double lp = obj(net, out, r, NULL, user);
  for (size_t i = 0; i < n; i++) w[i] = (float)(w0[i] - h * d[i]);
  double lm = obj(net, out, r, NULL, user);
  memcpy(w, w0, sizeof(float) * n);
  double num = (lp - lm) / (2 * h);
  CHECK_MSG(fabs(num - gd) <= rtol * (fabs(gd) + sqrt(gn)) + 1e-9,
            "%s: directional derivative %.8g by differences, %.8g analytic (|g| %.3g)", what, num,
            gd, sqrt(gn));
  free(d);
  free(w0);
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
      for (int64_t j = 0; j < p->n; j++) {
        float d = ce_rng_u32(&ri) & 1 ? 1.0f : -1.0f;
        if (pass == 0) { gd += (double)g[i][j] * d; gn += (double)g[i][j] * g[i][j]; p->w[j] += (float)(h * d); }
        if (pass == 1) p->w[j] -= (float)(2 * h * d);
        if (pass == 2) p->w[j] += (float)(h * d);
      }
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
  float *r = malloc(sizeof(float) * nout);
  ce_rng rng = ce_rng_make(7, 1, 2, 3);
  gc_fill(r, nout, &rng, -1, 1);
  nn_seed_grad(net, out);
  obj(net, out, r, nn_grad(net, out), user);
  nn_zero_grad(net);
  CHECK_OK(nn_backward(net));
  /* copy the analytic gradients before the probes overwrite activations */
  float **g = calloc((size_t)net->nparams + 1, sizeof *g);
  for (int i = 0; i < net->nparams; i++)
    if (net->params[i].trainable) {
      g[i] = malloc(sizeof(float) * net->params[i].n);
      memcpy(g[i], net->params[i].g, sizeof(float) * net->params[i].n);
    }
  size_t nx = (size_t)net->batch * net->nodes[x].size;
  float *gx = NULL;
  if (net->nodes[x].needs_grad) {
    gx = malloc(sizeof(float) * nx);
    memcpy(gx, nn_grad(net, x), sizeof(float) * nx);
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
    float *xv = nn_out(net, x);
    gc_tensor(net, out, r, obj, user, xv, gx, nx, h, rtol, label, 1000);
    /* a few entries one by one */
    double gmax = 0;
    for (size_t i = 0; i < nx; i++) gmax = fmax(gmax, fabs(gx[i]));
    for (size_t k = 0; k < 6 && k < nx; k++) {
      size_t i = (k * 7919) % nx;
      float v0 = xv[i];
      xv[i] = (float)(v0 + h);
      double lp = obj(net, out, r, NULL, user);
      xv[i] = (float)(v0 - h);
      double lm = obj(net, out, r, NULL, user);
      xv[i] = v0;
      double num = (lp - lm) / (2 * h);
      CHECK_MSG(fabs(num - gx[i]) <= 3 * rtol * (fabs(gx[i]) + gmax) + 1e-6,
                "%s: dL/dx[%zu] = %.8g by differences, %.8g analytic", what, i, num, gx[i]);
    }
  }
  for (int i = 0; i < net->nparams; i++) free(g[i]);
  free(g);
  free(gx);
  free(r);
}

#endif
