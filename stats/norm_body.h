/* norm_body.h - the normalisation of transforms.h, one value at a time, as
 * host-and-device functions: the one definition that stats/transforms.c's
 * loops (the host: serve, the stream's data.stream.stats), the CPU backend's
 * normalise entries and the CUDA backend's kernels (trainer/cuda/) all run,
 * so a batch normalised on the device is the host's arithmetic.
 *
 * A thread of a device kernel handles the values i = tid, tid + stride, ...
 * (the norm_body_*_thread bodies); the host loops are the same bodies with
 * one thread (tid 0, stride 1). Every step is an exact function of the
 * value (no sums): the order of the threads does not change a bit, and the
 * targets' one reduction, the sample's smallest positive intensity, is a
 * minimum (exact in any order). */
#ifndef COEMU_STATS_NORM_BODY_H
#define COEMU_STATS_NORM_BODY_H

#include <math.h>
#include <stddef.h>

#include "stats/transforms.h"

#ifdef __CUDACC__
#define NORM_HD __host__ __device__ static inline
#else
#define NORM_HD static inline
#endif

/* Input channel c (0 v_z, 1 T, 2 n_CO) of one voxel; ln in double, rounded
 * to float32 before the affine map (transforms.h). */
NORM_HD float norm_body_input(const stats_norm *p, int c, float x) {
  if (c == 0) return (float)(((double)x - p->vz_mean) / p->vz_std);
  const double lo = c == 1 ? p->lnT_min : p->lnn_min, sc = c == 1 ? p->lnT_scale : p->lnn_scale;
  return (float)(((double)(float)log((double)x) - lo) / sc);
}

/* Thread tid of stride over `samples` samples of [3][nvox] values each. */
NORM_HD void norm_body_inputs_thread(const stats_norm *p, const float *in, float *out,
                                     size_t samples, size_t nvox, size_t tid, size_t stride) {
  const size_t n = samples * 3 * nvox;
  for (size_t i = tid; i < n; i += stride) out[i] = norm_body_input(p, (int)(i / nvox % 3), in[i]);
}

/* The smallest positive value among v[tid], v[tid + stride], ... below n,
 * min'ed into acc (start: INFINITY). NaN and negatives are not positive. */
NORM_HD float norm_body_smallest_thread(const float *v, size_t n, size_t tid, size_t stride,
                                        float acc) {
  for (size_t i = tid; i < n; i += stride) acc = v[i] > 0 && v[i] < acc ? v[i] : acc;
  return acc;
}

/* What replaces the zeros: the smallest positive value, or 0 when there is
 * none (ln 0 = -inf, a sample of zeros). */
NORM_HD float norm_body_zero_fill(float smallest) { return isinf(smallest) ? 0.0f : smallest; }

/* ln I with the zeros, and the negatives, replaced by fill and clipped
 * below at clip (-INFINITY: none); NaN stays NaN (stats_ln_intensity). The
 * exact intensity is never negative (I = int eta e^-tau ds, eta >= 0): a
 * stored negative is the formal solution's round-off in the far wings
 * (~1e-29 of a line's 1e-14), and ln of it would put NaN into /stats and
 * into the training targets. */
NORM_HD float norm_body_ln_intensity(float x, float fill, double clip) {
  const double t = log(x <= 0 ? (double)fill : (double)x);
  return (float)(t < clip ? clip : t);
}

/* One target value given its sample's zero fill. */
NORM_HD float norm_body_target(const stats_norm *p, float x, float fill) {
  return (float)(((double)norm_body_ln_intensity(x, fill, p->lnI_clip) - p->lnI_min) /
                 p->lnI_scale);
}

/* Thread tid of stride over `samples` samples of nval values each, fill[k]
 * the zero fill of sample k. */
NORM_HD void norm_body_targets_thread(const stats_norm *p, const float *in, const float *fill,
                                      float *out, size_t samples, size_t nval, size_t tid,
                                      size_t stride) {
  const size_t n = samples * nval;
  for (size_t i = tid; i < n; i += stride) out[i] = norm_body_target(p, in[i], fill[i / nval]);
}

/* The physical intensity of one normalised target value, in double (the
 * inverse of both modes: exp(min + scale t); stats_denorm_targets*, and the
 * trainer's MaxRel: trainer/metrics_body.h). */
NORM_HD double norm_body_denorm_target_f64(const stats_norm *p, float t) {
  return exp((double)t * p->lnI_scale + p->lnI_min);
}

#endif
