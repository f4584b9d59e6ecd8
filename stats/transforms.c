/* transforms.c - normalisation transforms (see transforms.h). */
#include "stats/transforms.h"

#include <math.h>

void stats_ln_f32(const float *x, size_t n, float *out) {
  for (size_t i = 0; i < n; i++) out[i] = (float)log((double)x[i]);
}

void stats_ln_intensity(const float *I, size_t n, double clip, float *out) {
  float smallest = INFINITY;
  for (size_t i = 0; i < n; i++) {
    if (I[i] > 0 && I[i] < smallest) smallest = I[i];
  }
  if (isinf(smallest)) smallest = 0;  /* nothing positive: ln 0 = -inf */
  for (size_t i = 0; i < n; i++) {
    double v = I[i] == 0 ? smallest : I[i];
    double t = log(v);
    out[i] = (float)(t < clip ? clip : t);  /* NaN stays NaN */
  }
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
  const float *v = in, *T = in + nvox, *nc = in + 2 * nvox;
  for (size_t i = 0; i < nvox; i++) {
    out[i] = (float)(((double)v[i] - p->vz_mean) / p->vz_std);
    out[nvox + i] = (float)(((double)(float)log((double)T[i]) - p->lnT_min) / p->lnT_scale);
    out[2 * nvox + i] =
        (float)(((double)(float)log((double)nc[i]) - p->lnn_min) / p->lnn_scale);
  }
}

void stats_denorm_inputs(const stats_norm *p, const float *in, size_t nvox, float *out) {
  for (size_t i = 0; i < nvox; i++) {
    out[i] = (float)((double)in[i] * p->vz_std + p->vz_mean);
    out[nvox + i] = (float)exp((double)in[nvox + i] * p->lnT_scale + p->lnT_min);
    out[2 * nvox + i] = (float)exp((double)in[2 * nvox + i] * p->lnn_scale + p->lnn_min);
  }
}

void stats_norm_targets(const stats_norm *p, const float *I, size_t nval, float *out) {
  stats_ln_intensity(I, nval, p->lnI_clip, out);
  for (size_t i = 0; i < nval; i++)
    out[i] = (float)(((double)out[i] - p->lnI_min) / p->lnI_scale);
}

static inline double denorm_intensity(const stats_norm *p, float t) {
  return exp((double)t * p->lnI_scale + p->lnI_min); /* both modes: min + scale * t */
}

void stats_denorm_targets(const stats_norm *p, const float *t, size_t nval, float *out) {
  for (size_t i = 0; i < nval; i++) out[i] = (float)denorm_intensity(p, t[i]);
}

void stats_denorm_targets_f64(const stats_norm *p, const float *t, size_t nval, double *out) {
  for (size_t i = 0; i < nval; i++) out[i] = denorm_intensity(p, t[i]);
}
