/* transforms.c - normalisation transforms (see transforms.h). */
#include "stats/transforms.h"

#include <math.h>

#include "stats/norm_body.h" /* the arithmetic, shared with the trainer backends */

#if defined(__AVX512F__) && defined(COEMU_HAVE_LIBMVEC)
#include <immintrin.h>
__m512d _ZGVeN8v_log(__m512d); /* glibc's libmvec */
#define LN_VECTOR 1
#else
#define LN_VECTOR 0
#endif

/* (float)log((double)x), the scalar libm log's bits, 8 at a time where
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
 * 1.3-1.4 ns a value against 3.2 (libmvec's log is most of it). */
void stats_ln_f32(const float *x, size_t n, float *out) {
  size_t i = 0;
#if LN_VECTOR
  const __m512d rel = _mm512_set1_pd(0x1p-36), near1 = _mm512_set1_pd(0x1p-20),
                zero = _mm512_setzero_pd(), inf = _mm512_set1_pd(INFINITY);
  for (; i + 8 <= n; i += 8) {
    const __m512d xd = _mm512_cvtps_pd(_mm256_loadu_ps(x + i));
    const __m512d y = _ZGVeN8v_log(xd);
    const __m512d ay = _mm512_abs_pd(y), d = _mm512_mul_pd(ay, rel);
    const __m256 f = _mm512_cvtpd_ps(y);
    const __m256 lo = _mm512_cvtpd_ps(_mm512_sub_pd(y, d)), hi = _mm512_cvtpd_ps(_mm512_add_pd(y, d));
    const unsigned same = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(lo, hi, _CMP_EQ_OQ));
    const unsigned ok = same & _mm512_cmp_pd_mask(xd, zero, _CMP_GT_OQ) &
                        _mm512_cmp_pd_mask(xd, inf, _CMP_LT_OQ) &
                        _mm512_cmp_pd_mask(ay, near1, _CMP_GE_OQ);
    _mm256_storeu_ps(out + i, f);
    if (ok != 0xffu)
      for (int j = 0; j < 8; j++)
        if (!(ok >> j & 1u)) out[i + j] = (float)log((double)x[i + j]);
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
