/* transforms.c - normalisation transforms (see transforms.h). */
#include "stats/transforms.h"

#include <math.h>
#include <string.h>

#include "stats/norm_body.h" /* the arithmetic, shared with the trainer backends */

#include "common/vecmath.h" /* libmvec's log on the host's vectors */

/* (float)log((double)x), the scalar libm log's bits, a vector at a time where
 * they are certain. libmvec's log is within 4 ulp of the true value, libm's
 * within 1 (glibc's documented bounds): the two double results differ by
 * less than 2^-48 relative, so they round to the same float unless a float
 * rounding boundary lies near them. Where no boundary lies within 2^-36
 * relative of the vector result ((float)(y - d) == (float)(y + d), d =
 * 2^-36 |y|; rounding is monotone), the vector result's rounding is the
 * scalar one's; elsewhere, and for x <= 0, inf, NaN and x near 1 (|y| <
 * 2^-20, where a signed or subnormal zero could differ), libm's scalar log
 * is called (3.5e-4 of all positive floats). The same bits as the scalar
 * loop on every input (test_stats: test_ln_exact, every 37th float; on
 * glibc 2.36 the rounded vector result equals libm's for every one of the
 * 2^31 positive floats, so the guard is for other libmvec releases), in
 * 1.3-1.4 ns a value against 3.2 on AVX-512 (libmvec's log is most of it;
 * docs/benchmarks.md, "AVX2 hosts", for AVX2's). */
void stats_ln_f32(const float *x, size_t n, float *out) {
  size_t i = 0;
#if VECMATH_LIBMVEC
  typedef vm_vh vh;
  for (; i + VM_ND <= n; i += VM_ND) {
    vh xf;
    memcpy(&xf, x + i, sizeof xf);
    const vm_vd xd = __builtin_convertvector(xf, vm_vd);
    const vm_vd y = vm_log(xd);
    const vm_vd ay = (vm_vd)((vm_vl)y & 0x7fffffffffffffffLL), d = ay * 0x1p-36;
    const vh f = __builtin_convertvector(y, vh);
    const vh lo = __builtin_convertvector(y - d, vh), hi = __builtin_convertvector(y + d, vh);
    const vm_vl ok = __builtin_convertvector(lo == hi, vm_vl) & (xd > 0) & (xd < INFINITY) & (ay >= 0x1p-20);
    memcpy(out + i, &f, sizeof f);
    if (vm_lanes(ok) != VM_ALL_LANES)
      for (int j = 0; j < VM_ND; j++)
        if (!ok[j]) out[i + j] = (float)log((double)x[i + j]);
  }
#endif
  for (; i < n; i++) out[i] = (float)log((double)x[i]);
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
