/* test_metrics.c - MaxRel, ZNCC, SSIM and summaries against closed forms.
 * With --dump DIR it also writes random pred/target arrays and the C
 * results for test_metrics_golden.py, which recomputes them with numpy.
 *
 * Tolerances: the metrics are double precision in fixed loop orders, no
 * BLAS, no FMA contraction (-ffp-contract=off), so they are the same on every host
 * but for the last bit of libm's exp (the SSIM window, MaxRel). Each
 * tolerance is a bound on the gap to the closed form, far above that bit:
 * ZNCC of an affine image (1e-6): the affine map rounded to float32 moves
 * the correlation by O(U32^2); constant SSIM images (1e-6): the map is the
 * luminance term up to the windows' double rounding (~1e-15); identical
 * images (1e-12) and the summaries (1e-15, 1e-12): a few double roundings;
 * MaxRel (1e-9): exp's arguments of size 40 carry 40 ulps (1e-14). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "common/npy.h"
#include "common/rng.h"
#include "stats/transforms.h"
#include "trainer/metrics.h"

static void fill(float *a, size_t n, uint32_t s) {
  ce_rng r = ce_rng_make(31, s, 0, 0);
  for (size_t i = 0; i < n; i++) a[i] = (float)ce_rng_uniform(&r);
}

static void test_zncc(void) {
  enum { N = 2, F = 3, H = 8, W = 9, S = H * W };
  float p[N * F * S], t[N * F * S];
  fill(t, N * F * S, 1);
  double per[N];
  for (int i = 0; i < N * F * S; i++) p[i] = 3 * t[i] + 1; /* affine: 1 */
  CHECK_CLOSE(metrics_zncc(p, t, N, F, H, W, per), 1, 1e-6, 0);
  CHECK_CLOSE(per[1], 1, 1e-6, 0);
  for (int i = 0; i < N * F * S; i++) p[i] = -2 * t[i]; /* negated: -1 */
  CHECK_CLOSE(metrics_zncc(p, t, N, F, H, W, NULL), -1, 1e-6, 0);
  for (int i = 0; i < N * F * S; i++) p[i] = 0.5f; /* constant prediction: 0 */
  CHECK(metrics_zncc(p, t, N, F, H, W, NULL) == 0);
}

static void test_ssim(void) {
  enum { N = 2, F = 2, H = 16, W = 13, S = H * W };
  float p[N * F * S], t[N * F * S];
  fill(t, N * F * S, 2);
  double per[N];
  CHECK_CLOSE(metrics_ssim(t, t, N, F, H, W, SSIM_INTERIOR, per), 1, 1e-12, 0);
  CHECK_CLOSE(metrics_ssim(t, t, N, F, H, W, SSIM_REFLECT, per), 1, 1e-12, 0);
  CHECK_CLOSE(per[0], 1, 1e-12, 0);
  /* constant images x = a, y = a + c: the variances vanish and the map is
     the luminance term (2ab + C1) / (a^2 + b^2 + C1) everywhere. Targets
     a(s, f) = 0.2 s + 0.1 f give each channel the data range 0.2. */
  for (int i = 0; i < N * F * S; i++) {
    int s = i / (F * S), f = (i / S) % F;
    t[i] = (float)(0.2 * s + 0.1 * f);
    p[i] = t[i] + 0.25f;
  }
  double expect = 0;
  for (int s = 0; s < N; s++)
    for (int f = 0; f < F; f++) {
      double a = t[(s * F + f) * S], b = p[(s * F + f) * S];
      double La = (double)t[(1 * F + f) * S] - t[f * S], C1 = (0.01 * La) * (0.01 * La);
      expect += (2 * a * b + C1) / (a * a + b * b + C1) / (N * F);
    }
  CHECK_CLOSE(metrics_ssim(p, t, N, F, H, W, SSIM_INTERIOR, NULL), expect, 1e-6, 0);
  CHECK_CLOSE(metrics_ssim(p, t, N, F, H, W, SSIM_REFLECT, NULL), expect, 1e-6, 0);
  CHECK(isnan(metrics_ssim(p, t, N, F, 10, 10, SSIM_INTERIOR, NULL)));
}

static void test_maxrel(void) {
  /* normalised targets x0 per frequency, predictions x0 + d: with the
     min-max log transform I = exp(x R + min), R = max - min, the error at a
     pixel is I_t(f) |1 - exp(d R)| / max_f I_t(f) */
  enum { F = 3, H = 4, W = 5, S = H * W };
  stats_norm mp = {.i_mode = STATS_I_MINMAX, .lnI_min = -40, .lnI_scale = -27.064306 - -40.0};
  const double R = mp.lnI_scale, d = 0.01;
  float t[F * S], p[F * S];
  double x0[F] = {0.5, 0.7, 0.6}, per[1];
  for (int f = 0; f < F; f++)
    for (int i = 0; i < S; i++) {
      t[f * S + i] = (float)x0[f];
      p[f * S + i] = (float)(x0[f] + d);
    }
  CHECK_OK(metrics_maxrel(p, t, 1, F, H, W, metrics_stats_inverse, &mp, per));
  double expect = 0, imax = exp((double)(float)x0[1] * R);
  for (int f = 0; f < F; f++) {
    double xt = (double)(float)x0[f], xp = (double)(float)(x0[f] + d);
    expect += fabs(exp(xt * R) - exp(xp * R)) / imax;
  }
  expect *= 100.0 / F;
  CHECK_CLOSE(per[0], expect, 1e-9, 0);
  /* the single-channel transform's inverse */
  stats_norm md = {.i_mode = STATS_I_MEDIAN, .lnI_min = -3, .lnI_scale = 2};
  float v = 0.5f;
  double out;
  CHECK_OK(metrics_stats_inverse(&md, &v, &out, 1));
  CHECK_CLOSE(out, exp(-2.0), 1e-15, 0);
}

static void test_summary(void) {
  double v[5] = {12, 3, 7, 1, 30};
  metrics_summary s;
  CHECK_OK(metrics_summarise(v, 5, &s));
  CHECK(s.median == 7 && s.min == 1 && s.max == 30);
  CHECK_CLOSE(s.mean, 53.0 / 5, 1e-15, 0);
  CHECK_CLOSE(s.p25, 3, 1e-15, 0);   /* numpy.percentile(v, 25) */
  CHECK_CLOSE(s.p90, 22.8, 1e-12, 0); /* 12 + 0.6 * 18 */
  CHECK_CLOSE(s.frac_below_10, 0.6, 1e-15, 0);
  double w[4] = {4, 1, 3, 2};
  CHECK_OK(metrics_summarise(w, 4, &s));
  CHECK(s.median == 2.5);
  CHECK_ERR(metrics_summarise(w, 0, &s), "no samples");
}

/* ---- golden data for the numpy check ------------------------------------ */

static int dump(const char *dir) {
  enum { N = 3, F = 2, H = 20, W = 17, S = H * W };
  static float p[N * F * S], t[N * F * S];
  fill(t, N * F * S, 10);
  fill(p, N * F * S, 11);
  for (int i = 0; i < N * F * S; i++) p[i] = 0.7f * t[i] + 0.3f * p[i]; /* correlated */
  stats_norm mp = {.i_mode = STATS_I_MINMAX, .lnI_min = -40, .lnI_scale = -27.064306 - -40.0};
  double res[3 + 4 * N];
  res[0] = metrics_zncc(p, t, N, F, H, W, res + 3);
  res[1] = metrics_ssim(p, t, N, F, H, W, SSIM_INTERIOR, res + 3 + N);
  res[2] = metrics_ssim(p, t, N, F, H, W, SSIM_REFLECT, res + 3 + 2 * N);
  if (metrics_maxrel(p, t, N, F, H, W, metrics_stats_inverse, &mp, res + 3 + 3 * N) < 0) return 1;
  char path[1024];
  size_t shape[4] = {N, F, H, W}, rs[1] = {3 + 4 * N};
  snprintf(path, sizeof path, "%s/pred.npy", dir);
  if (npy_write(path, p, NPY_F32, 4, shape) < 0) return 1;
  snprintf(path, sizeof path, "%s/target.npy", dir);
  if (npy_write(path, t, NPY_F32, 4, shape) < 0) return 1;
  snprintf(path, sizeof path, "%s/results.npy", dir);
  if (npy_write(path, res, NPY_F64, 1, rs) < 0) return 1;
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 3 && !strcmp(argv[1], "--dump")) {
    int rc = dump(argv[2]);
    if (rc) fprintf(stderr, "test_metrics --dump: %s\n", ce_err_msg());
    return rc;
  }
  RUN(test_zncc);
  RUN(test_ssim);
  RUN(test_maxrel);
  RUN(test_summary);
  return check_report();
}
