/* metrics.h - COEmuNet's evaluation metrics on held-out samples
 * (docs/trainer.md).
 *
 * Arrays are (n samples, f frequency channels, h, w) float32 in the
 * normalised units the network predicts; per-sample results go to
 * per_sample[n] (NULL to skip) so callers can report distributions.
 *
 * MaxRel needs the physical intensities: an intensity_inverse maps
 * normalised values back to I. metrics_stats_inverse is the inverse of the
 * dataset's own normalisation (stats/transforms.h, parameters from /stats):
 * I = exp(x scale + min) with scale = max - min (seven channels) or the
 * median (single channel).
 */
#ifndef COEMU_METRICS_H
#define COEMU_METRICS_H

#include <stddef.h>

/* Map n normalised values to physical intensities; returns 0 or -1. */
typedef int (*intensity_inverse)(const void *params, const float *norm, double *phys, size_t n);

/* params: a const stats_norm * (stats/transforms.h). */
int metrics_stats_inverse(const void *params, const float *norm, double *phys, size_t n);

/* MaxRel (%) per sample: mean over (freq, y, x) of |t - p| / max_freq t at
 * that pixel, in physical units, times 100. per_sample is required here
 * (summarise it with metrics_summarise: the paper reports the median). */
int metrics_maxrel(const float *pred, const float *target, int n, int f, int h, int w,
                   intensity_inverse inv, const void *inv_params, double *per_sample);

/* The error of a sample with no MaxRel (metrics_body_maxrel's *bad >= 0:
 * the pixel, tmax its largest target intensity); returns -1. */
int metrics_maxrel_error(int sample, double pixel, double tmax);

/* The per-sample results of a backend's metrics entry (backend.h): out[k n + s]. */
enum { METRICS_MAXREL, METRICS_ZNCC, METRICS_SSIM_I, METRICS_SSIM_R, METRICS_FIELDS };

/* Zero-normalised cross-correlation per image and channel (0 where either
 * image is constant); per_sample gets the mean over channels. Returns the
 * mean over samples and channels. */
double metrics_zncc(const float *pred, const float *target, int n, int f, int h, int w,
                    double *per_sample);

typedef enum {
  SSIM_INTERIOR = 0, /* mean of the SSIM map where the 11x11 window fits (5 px crop, no padding) */
  SSIM_REFLECT = 1   /* mean of the full map, input reflect-padded by 5 px (torchmetrics >= 1.5) */
} ssim_mode;

/* SSIM with a Gaussian window (11, sigma 1.5), k1 0.01, k2 0.03, population
 * (co)variances, data_range = max - min of the target over all n samples for
 * each channel. per_sample gets the mean over channels; returns the mean over
 * samples and channels, or NAN with an error for images smaller than 11. */
double metrics_ssim(const float *pred, const float *target, int n, int f, int h, int w,
                    ssim_mode mode, double *per_sample);

/* Distribution of per-sample values (MaxRel). Quantiles interpolate linearly
 * between order statistics, as numpy's default. */
typedef struct {
  double median, mean, min, max, p10, p25, p75, p90;
  double frac_below_10; /* fraction of samples with a value < 10 */
} metrics_summary;
int metrics_summarise(const double *v, int n, metrics_summary *s);

#endif
