/* transforms.c - normalisation transforms (see transforms.h). */
#include "stats/transforms.h"

#include <math.h>

#include "stats/norm_body.h" /* the arithmetic, shared with the trainer backends */

void stats_ln_f32(const float *x, size_t n, float *out) {
  for (size_t i = 0; i < n; i++) out[i] = (float)log((double)x[i]);
}

void stats_ln_intensity(const float *I, size_t n, double clip, float *out) {
  const float fill = norm_body_zero_fill(norm_body_smallest_thread(I, n, 0, 1, INFINITY));
  for (size_t i = 0; i < n; i++) out[i] = norm_body_ln_intensity(I[i], fill, clip);
}

int stats_is_outlier(const stats_norm *p, const float *vz, size_t nvox) {
  if (!(p->outlier_vz_range > 0) || nvox == 0) return 0;
  float lo = vz[0], hi = vz[0];
  for (size_t i = 1; i < nvox; i++) {
    lo = vz[i] < lo ? vz[i] : lo;
    hi = vz[i] > hi ? vz[i] : hi;
  }
  return (double)hi - (double)lo > p->outlier_vz_range;
}

void stats_norm_inputs(const stats_norm *p, const float *in, size_t nvox, float *out) {
  norm_body_inputs_thread(p, in, out, 1, nvox, 0, 1);
}

void stats_denorm_inputs(const stats_norm *p, const float *in, size_t nvox, float *out) {
  for (size_t i = 0; i < nvox; i++) {
    out[i] = (float)((double)in[i] * p->vz_std + p->vz_mean);
    out[nvox + i] = (float)exp((double)in[nvox + i] * p->lnT_scale + p->lnT_min);
    out[2 * nvox + i] = (float)exp((double)in[2 * nvox + i] * p->lnn_scale + p->lnn_min);
  }
}

void stats_norm_targets(const stats_norm *p, const float *I, size_t nval, float *out) {
  const float fill = norm_body_zero_fill(norm_body_smallest_thread(I, nval, 0, 1, INFINITY));
  norm_body_targets_thread(p, I, &fill, out, 1, nval, 0, 1);
}

void stats_denorm_targets(const stats_norm *p, const float *t, size_t nval, float *out) {
  for (size_t i = 0; i < nval; i++) out[i] = (float)norm_body_denorm_target_f64(p, t[i]);
}

void stats_denorm_targets_f64(const stats_norm *p, const float *t, size_t nval, double *out) {
  for (size_t i = 0; i < nval; i++) out[i] = norm_body_denorm_target_f64(p, t[i]);
}
