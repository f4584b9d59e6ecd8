/* step_batch.h - the trainer tests' synthetic data: step k's global batch
 * of B samples, smooth random fields plus noise, a pure function of (k, s)
 * (test_parallel.c, parity.h, trainer_gpu_check.c). */
#ifndef COEMU_TEST_STEP_BATCH_H
#define COEMU_TEST_STEP_BATCH_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "common/rng.h"
#include "stats/transforms.h"
#include "trainer/coemunet.h"

static inline void test_step_batch(const coemunet_config *c, int B, int k, float *x, float *t) {
  const int G = c->grid;
  const size_t v = (size_t)G * G * G, img = (size_t)G * G;
  for (int s = 0; s < B; s++) {
    ce_rng r = ce_rng_make(77, (uint32_t)k, (uint32_t)s, 3);
    double a = ce_rng_uniform(&r), b = ce_rng_uniform(&r);
    float *xs = x + (size_t)s * 3 * v, *ts = t + (size_t)s * c->nfreq * img;
    for (size_t i = 0; i < v; i++) {
      double z = (double)(i / img) / G;
      xs[i] = (float)(2 * a - 1 + 0.3 * z + 0.1 * ce_rng_uniform(&r));
      xs[v + i] = (float)(b - 0.5 * z + 0.1 * ce_rng_uniform(&r));
      xs[2 * v + i] = (float)(a * b + 0.2 * ce_rng_uniform(&r));
    }
    for (size_t i = 0; i < (size_t)c->nfreq * img; i++)
      ts[i] = (float)(0.5 * a * sin(0.3 * (double)(i % img)) + 0.2 * b + 0.05 * ce_rng_uniform(&r));
  }
}

/* Normalisation parameters of the demo job's orders of magnitude (v_z in
 * m/s, T in K, n_CO in m^-3, I in W m^-2 Hz^-1 sr^-1); minmax with the -40
 * clip, or median without one. */
static inline stats_norm test_norm_params(int median) {
  stats_norm p = {12.5, 850.0, log(8.0), 2.1, log(1e-3), 6.5, median ? STATS_I_MEDIAN : STATS_I_MINMAX,
                  median ? -INFINITY : STATS_LNI_CLIP, -52.0, 20.0, 0.0};
  return p;
}

/* Step k's batch as stored (raw): test_step_batch's fields mapped back
 * through p's inverse, and every 37th intensity 0 (the zero fill). */
static inline void test_raw_batch(const coemunet_config *c, const stats_norm *p, int B, int k,
                                  float *x, float *t) {
  const size_t v = (size_t)c->grid * c->grid * c->grid, nt = (size_t)c->nfreq * c->grid * c->grid;
  test_step_batch(c, B, k, x, t);
  for (int s = 0; s < B; s++) {
    stats_denorm_inputs(p, x + (size_t)s * 3 * v, v, x + (size_t)s * 3 * v);
    stats_denorm_targets(p, t + (size_t)s * nt, nt, t + (size_t)s * nt);
    for (size_t i = 5; i < nt; i += 37) t[(size_t)s * nt + i] = 0.0f;
  }
}

#endif
