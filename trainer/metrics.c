/* metrics.c - MaxRel, ZNCC, SSIM (see metrics.h). */
#include "trainer/metrics.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "stats/transforms.h"

int metrics_stats_inverse(const void *params, const float *norm, double *phys, size_t n) {
  stats_denorm_targets_f64(params, norm, n, phys);
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
    double acc = 0;
    for (size_t px = 0; px < hw; px++) {
      double tmax = tp[px];
      for (int c = 1; c < f; c++) tmax = fmax(tmax, tp[c * hw + px]);
      if (!(tmax > 0)) {
        free(tp);
        return ce_err("maxrel: sample %d pixel %zu: largest target intensity %g, expected > 0", s,
                      px, tmax);
      }
      for (int c = 0; c < f; c++) acc += fabs(tp[c * hw + px] - pp[c * hw + px]) / tmax;
    }
    per_sample[s] = 100.0 * acc / (double)ns;
  }
  free(tp);
  return 0;
}

double metrics_zncc(const float *pred, const float *target, int n, int f, int h, int w,
                    double *per_sample) {
  const size_t hw = (size_t)h * w;
  double total = 0;
  for (int s = 0; s < n; s++) {
    double ss = 0;
    for (int c = 0; c < f; c++) {
      const float *p = pred + ((size_t)s * f + c) * hw, *t = target + ((size_t)s * f + c) * hw;
      double mp = 0, mt = 0;
      for (size_t i = 0; i < hw; i++) {
        mp += p[i];
        mt += t[i];
      }
      mp /= hw;
      mt /= hw;
      double spt = 0, spp = 0, stt = 0;
      for (size_t i = 0; i < hw; i++) {
        double a = p[i] - mp, b = t[i] - mt;
        spt += a * b;
        spp += a * a;
        stt += b * b;
      }
      double den = sqrt(spp * stt);
      ss += den > 0 ? spt / den : 0;
    }
    if (per_sample) per_sample[s] = ss / f;
    total += ss / f;
  }
  return total / n;
}

/* ---- SSIM --------------------------------------------------------------- */

#define SSIM_WIN 11
#define SSIM_HALF 5

/* Separable Gaussian filter of one image, "valid" part of a padded input:
 * in (ph x pw) -> out ((ph - 10) x (pw - 10)). tmp holds ph x (pw - 10). */
static void gauss_valid(const double *in, int ph, int pw, const double *g, double *tmp, double *out) {
  int ow = pw - 2 * SSIM_HALF, oh = ph - 2 * SSIM_HALF;
  for (int y = 0; y < ph; y++)
    for (int x = 0; x < ow; x++) {
      double a = 0;
      for (int k = 0; k < SSIM_WIN; k++) a += g[k] * in[(size_t)y * pw + x + k];
      tmp[(size_t)y * ow + x] = a;
    }
  for (int y = 0; y < oh; y++)
    for (int x = 0; x < ow; x++) {
      double a = 0;
      for (int k = 0; k < SSIM_WIN; k++) a += g[k] * tmp[(size_t)(y + k) * ow + x];
      out[(size_t)y * ow + x] = a;
    }
}

static int reflect(int i, int n) { /* numpy/torch 'reflect': no edge repeat */
  if (i < 0) return -i;
  if (i >= n) return 2 * (n - 1) - i;
  return i;
}

double metrics_ssim(const float *pred, const float *target, int n, int f, int h, int w,
                    ssim_mode mode, double *per_sample) {
  if (h < SSIM_WIN || w < SSIM_WIN) {
    ce_err("ssim: images of %d x %d are smaller than the %d px window", h, w, SSIM_WIN);
    return NAN;
  }
  double g[SSIM_WIN], gs = 0;
  for (int k = 0; k < SSIM_WIN; k++) {
    double d = k - SSIM_HALF;
    g[k] = exp(-d * d / (2 * 1.5 * 1.5));
    gs += g[k];
  }
  for (int k = 0; k < SSIM_WIN; k++) g[k] /= gs;
  const int pad = mode == SSIM_REFLECT ? SSIM_HALF : 0;
  const int ph = h + 2 * pad, pw = w + 2 * pad, oh = ph - 2 * SSIM_HALF, ow = pw - 2 * SSIM_HALF;
  const size_t hw = (size_t)h * w, psz = (size_t)ph * pw, osz = (size_t)oh * ow;
  /* 5 padded inputs (x, y, x^2, y^2, xy), their 5 filtered maps, one temp */
  double *buf = ce_malloc_array(5 * psz + 5 * osz + (size_t)ph * ow, sizeof(double), "ssim buffers");
  if (!buf) return NAN;
  double *in = buf, *mu = buf + 5 * psz, *tmp = mu + 5 * osz;
  double total = 0;
  if (per_sample) memset(per_sample, 0, sizeof(double) * n);
  for (int c = 0; c < f; c++) {
    double tmin = INFINITY, tmax = -INFINITY;
    for (int s = 0; s < n; s++) {
      const float *t = target + ((size_t)s * f + c) * hw;
      for (size_t i = 0; i < hw; i++) {
        tmin = fmin(tmin, t[i]);
        tmax = fmax(tmax, t[i]);
      }
    }
    double L = tmax - tmin, C1 = (0.01 * L) * (0.01 * L), C2 = (0.03 * L) * (0.03 * L);
    for (int s = 0; s < n; s++) {
      const float *p = pred + ((size_t)s * f + c) * hw, *t = target + ((size_t)s * f + c) * hw;
      for (int y = 0; y < ph; y++)
        for (int x = 0; x < pw; x++) {
          size_t src = (size_t)reflect(y - pad, h) * w + reflect(x - pad, w), dst = (size_t)y * pw + x;
          double a = p[src], b = t[src];
          in[dst] = a;
          in[psz + dst] = b;
          in[2 * psz + dst] = a * a;
          in[3 * psz + dst] = b * b;
          in[4 * psz + dst] = a * b;
        }
      for (int q = 0; q < 5; q++) gauss_valid(in + q * psz, ph, pw, g, tmp, mu + q * osz);
      double acc = 0;
      for (size_t i = 0; i < osz; i++) {
        double mx = mu[i], my = mu[osz + i];
        double sxx = mu[2 * osz + i] - mx * mx, syy = mu[3 * osz + i] - my * my;
        double sxy = mu[4 * osz + i] - mx * my;
        double num = (2 * mx * my + C1) * (2 * sxy + C2);
        double den = (mx * mx + my * my + C1) * (sxx + syy + C2);
        acc += den != 0 ? num / den : 1.0; /* both constant and equal to 0: identical */
      }
      double v = acc / osz;
      if (per_sample) per_sample[s] += v / f;
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
