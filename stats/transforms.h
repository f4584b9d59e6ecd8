/* transforms.h - the COEmuNet normalisation of inputs and targets, forward
 * and inverse (docs/statistics.md; the rules are those of the paper's
 * preprocessing, docs/statistics.md):
 *   v_z    (v - mean) / std                       (population std)
 *   T, n   (ln x - min) / median(ln x - min)      (zeros are invalid: ln 0 = -inf)
 *   I, F > 1 channels ("minmax"): per sample, zeros -> the sample's smallest
 *          non-zero value; t = ln I; t = max(t, -40); (t - min) / (max - min)
 *   I, 1 channel ("median"): zeros replaced as above; (ln I - min) / median(ln I - min)
 * min, median and max are global statistics of the ln field over the
 * training split (stats/quantile.h, `coemu stats`). The parameters live in a
 * dataset's /stats group (statsfile.h). Logarithms are taken in double and
 * rounded to float32, so every rank computes bit-identical ln values.
 * The inverse undoes everything except the zero replacement and the clip.
 *
 * Layouts: inputs of one sample are [3][nvox] (v_z, T, n_CO; nvox = n^3),
 * targets of one sample [F][npix] (npix = n^2), float32, C order.
 */
#ifndef COEMU_STATS_TRANSFORMS_H
#define COEMU_STATS_TRANSFORMS_H

#include <math.h>
#include <stddef.h>

typedef enum { STATS_I_MINMAX = 0, STATS_I_MEDIAN = 1 } stats_i_mode;

#define STATS_LNI_CLIP (-40.0)        /* clip of ln I in the minmax mode */
#define STATS_OUTLIER_VZ_RANGE 1e5    /* the paper's outlier rule [m/s] */

typedef struct {
  double vz_mean, vz_std;
  double lnT_min, lnT_scale;   /* scale = median(ln T - min) */
  double lnn_min, lnn_scale;   /* the same for n_CO */
  int i_mode;                  /* stats_i_mode */
  double lnI_clip;             /* -40 (minmax) or -INFINITY (no clip) */
  double lnI_min, lnI_scale;   /* minmax: max - min; median: median(ln I - min) */
  double outlier_vz_range;     /* > 0: samples whose max v_z - min v_z exceed it are dropped */
} stats_norm;

/* out[i] = (float)log((double)x[i]), libm's bits (libmvec's vector log
 * where the rounding to float is certain to agree: transforms.c). */
void stats_ln_f32(const float *x, size_t n, float *out);

/* ln I of one sample (all its channels, n values): zeros and negatives
 * (round-off: the exact intensity is >= 0) replaced by the sample's
 * smallest positive value first (a sample of zeros only gives -inf), then
 * ln, then max(t, clip) (clip = -INFINITY: none). NaN stays NaN. */
void stats_ln_intensity(const float *inten, size_t n, double clip, float *out);

/* 1 if the sample's v_z range exceeds p->outlier_vz_range (> 0). */
int stats_is_outlier(const stats_norm *p, const float *vz, size_t nvox);

void stats_norm_inputs(const stats_norm *p, const float *in, size_t nvox, float *out);
void stats_denorm_inputs(const stats_norm *p, const float *in, size_t nvox, float *out);
void stats_norm_targets(const stats_norm *p, const float *inten, size_t nval, float *out);
void stats_denorm_targets(const stats_norm *p, const float *t, size_t nval, float *out);
/* The same into double (metrics compare physical intensities in double). */
void stats_denorm_targets_f64(const stats_norm *p, const float *t, size_t nval, double *out);

#endif
