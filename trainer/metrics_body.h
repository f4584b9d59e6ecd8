/* metrics_body.h - the per-sample arithmetic of metrics.h (MaxRel, ZNCC,
 * SSIM) as host-and-device functions: the one definition that metrics.c's
 * loops, the CPU backend's metrics entry and the CUDA backend's kernels
 * (trainer/cuda/) all run, as stats/norm_body.h is for the normalisation.
 *
 * Each body is serial and in the order metrics.c always summed, so a thread
 * per sample (or per sample and channel) on a device does the host's
 * operations in the host's order; only the double exp of the inverse
 * transform (MaxRel) and contractions into fused multiply-adds may differ
 * (docs/trainer.md bounds their effect). The Gaussian window is computed on
 * the host (metrics_body_ssim_window) and handed to the device, so the
 * device takes no exp of its own there. */
#ifndef COEMU_METRICS_BODY_H
#define COEMU_METRICS_BODY_H

#include <math.h>
#include <stddef.h>

#include "stats/norm_body.h" /* NORM_HD, norm_body_denorm_target_f64 */

#define METRICS_SSIM_WIN 11
#define METRICS_SSIM_HALF 5

/* MaxRel (%) of one sample from its physical intensities tp (target), pp
 * (prediction), [f][hw] doubles each. A pixel whose largest target
 * intensity is not > 0 has no MaxRel: *bad = that pixel and the return is
 * the intensity; otherwise *bad = -1. */
NORM_HD double metrics_body_maxrel(const double *tp, const double *pp, int f, size_t hw,
                                   double *bad) {
  double acc = 0;
  *bad = -1;
  for (size_t px = 0; px < hw; px++) {
    double tmax = tp[px];
    for (int c = 1; c < f; c++) tmax = fmax(tmax, tp[c * hw + px]);
    if (!(tmax > 0)) {
      *bad = (double)px;
      return tmax;
    }
    for (int c = 0; c < f; c++) acc += fabs(tp[c * hw + px] - pp[c * hw + px]) / tmax;
  }
  return 100.0 * acc / (double)((size_t)f * hw);
}

/* The physical intensities of n normalised values (metrics_stats_inverse). */
NORM_HD void metrics_body_inverse(const stats_norm *p, const float *norm, double *phys, size_t n) {
  for (size_t i = 0; i < n; i++) phys[i] = norm_body_denorm_target_f64(p, norm[i]);
}

/* ZNCC of one image pair of hw values (0 where either is constant). */
NORM_HD double metrics_body_zncc(const float *p, const float *t, size_t hw) {
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
  return den > 0 ? spt / den : 0;
}

/* ZNCC of one sample: the channels' ZNCC summed in channel order, then / f
 * (images of hw values at p + c hw, t + c hw). */
NORM_HD double metrics_body_zncc_sample(const float *p, const float *t, int f, size_t hw) {
  double ss = 0;
  for (int c = 0; c < f; c++) ss += metrics_body_zncc(p + c * hw, t + c * hw, hw);
  return ss / f;
}

/* SSIM of one sample from its channels' v[f]: each / f, summed in channel
 * order (metrics_ssim's per_sample; note the order differs from ZNCC's). */
NORM_HD double metrics_body_channel_mean(const double *v, int f) {
  double acc = 0;
  for (int c = 0; c < f; c++) acc += v[c] / f;
  return acc;
}

/* The Gaussian window (11, sigma 1.5), normalised to sum 1. */
NORM_HD void metrics_body_ssim_window(double g[METRICS_SSIM_WIN]) {
  double gs = 0;
  for (int k = 0; k < METRICS_SSIM_WIN; k++) {
    double d = k - METRICS_SSIM_HALF;
    g[k] = exp(-d * d / (2 * 1.5 * 1.5));
    gs += g[k];
  }
  for (int k = 0; k < METRICS_SSIM_WIN; k++) g[k] /= gs;
}

/* Smallest and largest target value of channel c over n samples of [f][hw]
 * (SSIM's data range is hi - lo). */
NORM_HD void metrics_body_range(const float *target, int n, int f, int c, size_t hw, double *lo,
                                double *hi) {
  double tmin = INFINITY, tmax = -INFINITY;
  for (int s = 0; s < n; s++) {
    const float *t = target + ((size_t)s * f + c) * hw;
    for (size_t i = 0; i < hw; i++) {
      tmin = fmin(tmin, (double)t[i]);
      tmax = fmax(tmax, (double)t[i]);
    }
  }
  *lo = tmin;
  *hi = tmax;
}

/* Doubles of scratch metrics_body_ssim needs for h x w images; reflect: 1
 * for SSIM_REFLECT (metrics.h), 0 for SSIM_INTERIOR. */
NORM_HD size_t metrics_body_ssim_scratch(int h, int w, int reflect) {
  const int pad = reflect ? METRICS_SSIM_HALF : 0;
  const size_t ph = (size_t)h + 2 * pad, pw = (size_t)w + 2 * pad;
  const size_t oh = ph - 2 * METRICS_SSIM_HALF, ow = pw - 2 * METRICS_SSIM_HALF;
  return 5 * ph * pw + 5 * oh * ow + ph * ow; /* 5 inputs, their 5 filtered maps, a temp */
}

/* Separable Gaussian filter of one image, "valid" part of a padded input:
 * in (ph x pw) -> out ((ph - 10) x (pw - 10)). tmp holds ph x (pw - 10). */
NORM_HD void metrics_body_gauss_valid(const double *in, int ph, int pw, const double *g,
                                      double *tmp, double *out) {
  int ow = pw - 2 * METRICS_SSIM_HALF, oh = ph - 2 * METRICS_SSIM_HALF;
  for (int y = 0; y < ph; y++)
    for (int x = 0; x < ow; x++) {
      double a = 0;
      for (int k = 0; k < METRICS_SSIM_WIN; k++) a += g[k] * in[(size_t)y * pw + x + k];
      tmp[(size_t)y * ow + x] = a;
    }
  for (int y = 0; y < oh; y++)
    for (int x = 0; x < ow; x++) {
      double a = 0;
      for (int k = 0; k < METRICS_SSIM_WIN; k++) a += g[k] * tmp[(size_t)(y + k) * ow + x];
      out[(size_t)y * ow + x] = a;
    }
}

NORM_HD int metrics_body_reflect(int i, int n) { /* numpy/torch 'reflect': no edge repeat */
  if (i < 0) return -i;
  if (i >= n) return 2 * (n - 1) - i;
  return i;
}

/* SSIM (mean of the map) of one image pair of h x w (>= 11 each), data
 * range L, window g, buf: metrics_body_ssim_scratch(h, w, reflect) doubles. */
NORM_HD double metrics_body_ssim(const float *p, const float *t, int h, int w, int reflect,
                                 const double *g, double L, double *buf) {
  const int pad = reflect ? METRICS_SSIM_HALF : 0;
  const int ph = h + 2 * pad, pw = w + 2 * pad;
  const int oh = ph - 2 * METRICS_SSIM_HALF, ow = pw - 2 * METRICS_SSIM_HALF;
  const size_t psz = (size_t)ph * pw, osz = (size_t)oh * ow;
  double *in = buf, *mu = buf + 5 * psz, *tmp = mu + 5 * osz;
  const double C1 = (0.01 * L) * (0.01 * L), C2 = (0.03 * L) * (0.03 * L);
  for (int y = 0; y < ph; y++)
    for (int x = 0; x < pw; x++) {
      size_t src = (size_t)metrics_body_reflect(y - pad, h) * w + metrics_body_reflect(x - pad, w);
      size_t dst = (size_t)y * pw + x;
      double a = p[src], b = t[src];
      in[dst] = a;
      in[psz + dst] = b;
      in[2 * psz + dst] = a * a;
      in[3 * psz + dst] = b * b;
      in[4 * psz + dst] = a * b;
    }
  for (int q = 0; q < 5; q++) metrics_body_gauss_valid(in + q * psz, ph, pw, g, tmp, mu + q * osz);
  double acc = 0;
  for (size_t i = 0; i < osz; i++) {
    double mx = mu[i], my = mu[osz + i];
    double sxx = mu[2 * osz + i] - mx * mx, syy = mu[3 * osz + i] - my * my;
    double sxy = mu[4 * osz + i] - mx * my;
    double num = (2 * mx * my + C1) * (2 * sxy + C2);
    double den = (mx * mx + my * my + C1) * (sxx + syy + C2);
    acc += den != 0 ? num / den : 1.0; /* both constant and equal to 0: identical */
  }
  return acc / osz;
}

#endif
