/* metrics.c - MaxRel, ZNCC, SSIM (see metrics.h). */
#include "trainer/metrics.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "stats/transforms.h"
#include "trainer/metrics_body.h"

int metrics_stats_inverse(const void *params, const float *norm, double *phys, size_t n) {
  metrics_body_inverse(params, norm, phys, n);
  return 0;
}

int metrics_maxrel(const float *pred, const float *target, int n, int f, int h, int w,
                   intensity_inverse inv, const void *inv_params, double *per_sample) {
  const size_t hw = (size_t)h * w, ns = (size_t)f * hw;
  double *tp = ce_malloc_array(2 * ns, sizeof(double), "maxrel buffers");
  if (!tp) return -1;
  double *pp = tp + ns;
  for (int s = 0; s < n; s++) {
    if (inv(inv_params, target + s * ns, tp, ns) < 0 || inv(inv_params, pred + s * ns, pp, ns) < 0) {
      free(tp);
      return ce_err_prefix("maxrel: sample %d: inverse transform", s);
    }
    double bad;
    per_sample[s] = metrics_body_maxrel(tp, pp, f, hw, &bad);
    if (bad >= 0) {
      free(tp);
      return metrics_maxrel_error(s, bad, per_sample[s]);
    }
  }
  free(tp);
  return 0;
}

int metrics_maxrel_error(int sample, double pixel, double tmax) {
  return ce_err("maxrel: sample %d pixel %zu: largest target intensity %g, expected > 0", sample,
                (size_t)pixel, tmax);
}

double metrics_zncc(const float *pred, const float *target, int n, int f, int h, int w,
                    double *per_sample) {
  const size_t hw = (size_t)h * w;
  double total = 0;
  for (int s = 0; s < n; s++) {
    const size_t at = (size_t)s * f * hw;
    const double v = metrics_body_zncc_sample(pred + at, target + at, f, hw);
    if (per_sample) per_sample[s] = v;
    total += v;
  }
  return total / n;
}

/* ---- SSIM --------------------------------------------------------------- */

double metrics_ssim(const float *pred, const float *target, int n, int f, int h, int w,
                    ssim_mode mode, double *per_sample) {
  if (h < METRICS_SSIM_WIN || w < METRICS_SSIM_WIN) {
    ce_err("ssim: images of %d x %d are smaller than the %d px window", h, w, METRICS_SSIM_WIN);
    return NAN;
  }
  double g[METRICS_SSIM_WIN];
  metrics_body_ssim_window(g);
  const int reflect = mode == SSIM_REFLECT;
  const size_t hw = (size_t)h * w;
  double *buf = ce_malloc_array(metrics_body_ssim_scratch(h, w, reflect), sizeof(double),
                                "ssim buffers");
  if (!buf) return NAN;
  double total = 0;
  if (per_sample) memset(per_sample, 0, sizeof(double) * n);
  for (int c = 0; c < f; c++) {
    double tmin, tmax;
    metrics_body_range(target, n, f, c, hw, &tmin, &tmax);
    for (int s = 0; s < n; s++) {
      const size_t at = ((size_t)s * f + c) * hw;
      double v = metrics_body_ssim(pred + at, target + at, h, w, reflect, g, tmax - tmin, buf);
      if (per_sample) per_sample[s] += v / f; /* metrics_body_channel_mean's order */
      total += v;
    }
  }
  free(buf);
  return total / ((double)n * f);
}

/* ---- summaries ---------------------------------------------------------- */

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double quantile(const double *sorted, int n, double q) {
  double pos = q * (n - 1);
  int i = (int)floor(pos);
  if (i >= n - 1) return sorted[n - 1];
  return sorted[i] + (pos - i) * (sorted[i + 1] - sorted[i]);
}

int metrics_summarise(const double *v, int n, metrics_summary *s) {
  if (n < 1) return ce_err("metrics: no samples to summarise");
  double *a = ce_malloc_array((size_t)n, sizeof(double), "metrics summary");
  if (!a) return -1;
  memcpy(a, v, sizeof(double) * n);
  qsort(a, (size_t)n, sizeof(double), cmp_double);
  double sum = 0;
  int below = 0;
  for (int i = 0; i < n; i++) {
    sum += a[i];
    below += a[i] < 10;
  }
  s->mean = sum / n;
  s->min = a[0];
  s->max = a[n - 1];
  s->median = quantile(a, n, 0.5);
  s->p10 = quantile(a, n, 0.10);
  s->p25 = quantile(a, n, 0.25);
  s->p75 = quantile(a, n, 0.75);
  s->p90 = quantile(a, n, 0.90);
  s->frac_below_10 = (double)below / n;
  free(a);
  return 0;
}
