/* sampler.c - voxel averages of k^3 sub-samples along rotated cube lines. */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>

#include "directions.h"
#include "error.h"

void sampler_defaults(sampler_opts *o) {
  o->n = 64;
  o->edge = 0;
  o->k = 2;
  o->ball_radius = 0;
  o->fill_background = 0;
  o->bg_n = 0;
  o->bg_T = 0;
}

int sampler_check(const ce_model *m, const sampler_opts *o) {
  if (o->n < 1 || o->n > 4096) CE_FAIL("sampler: n = %d, expected 1..4096", o->n);
  if (o->k < 1 || o->k > 16) CE_FAIL("sampler: k = %d, expected 1..16", o->k);
  if (!(o->edge > 0) || !isfinite(o->edge))
    CE_FAIL("sampler: cube edge = %g m, expected a positive length", o->edge);
  if (o->fill_background) {
    if (!(o->bg_n >= 0) || !(o->bg_T >= 0))
      CE_FAIL("sampler: background n = %g, T = %g, expected non-negative values", o->bg_n,
              o->bg_T);
    return 0;
  }
  double corner = sqrt(3.0) * 0.5 * o->edge, half = model_half_extent(m);
  if (o->ball_radius > 0) {
    if (corner > o->ball_radius)
      CE_FAIL("sampler: the cube of edge %g m reaches %g m from the centre, outside the ball of "
              "radius %g m (use a smaller edge, or request a background fill)",
              o->edge, corner, o->ball_radius);
    if (o->ball_radius > half * (1 + 1e-12))
      CE_FAIL("sampler: ball radius %g m exceeds the model's smallest half-extent %g m",
              o->ball_radius, half);
  } else if (corner > half * (1 + 1e-12)) {
    CE_FAIL("sampler: the cube of edge %g m reaches %g m from the centre, outside the domain "
            "(smallest half-extent %g m); request a background fill to sample it",
            o->edge, corner, half);
  }
  return 0;
}

int sample_cube(const ce_model *m, const double q[4], const sampler_opts *o, float *v_los,
                float *T, float *n_co) {
  CE_TRY(sampler_check(m, o));
  double R[9], c[3];
  dir_matrix(q, R);
  model_centre(m, c);
  const int n = o->n, k = o->k, ks = k * k * k;
  const double h = o->edge / n;
  const double l[3] = {R[2], R[5], R[8]};
  double *off = malloc(sizeof(double) * 3 * (size_t)ks);
  if (!off) CE_FAIL("sampler: out of memory");
  for (int a = 0, s = 0; a < k; a++)
    for (int b = 0; b < k; b++)
      for (int e = 0; e < k; e++, s++) {
        double u[3] = {((a + 0.5) / k - 0.5) * h, ((b + 0.5) / k - 0.5) * h,
                       ((e + 0.5) / k - 0.5) * h};
        for (int d = 0; d < 3; d++)
          off[3 * s + d] = R[3 * d] * u[0] + R[3 * d + 1] * u[1] + R[3 * d + 2] * u[2];
      }
  const int fill = o->fill_background;
  const double r2 = o->ball_radius > 0 ? o->ball_radius * o->ball_radius : INFINITY;
  const double inv = 1.0 / ks;
  model_cache cache = {0};
  const double *cells = m->cells;
  for (int ix = 0; ix < n; ix++)
    for (int iy = 0; iy < n; iy++) {
      double ux = ((ix + 0.5) / n - 0.5) * o->edge, uy = ((iy + 0.5) / n - 0.5) * o->edge;
      for (int iz = 0; iz < n; iz++) {
        double uz = ((iz + 0.5) / n - 0.5) * o->edge;
        double base[3];
        for (int d = 0; d < 3; d++) base[d] = c[d] + R[3 * d] * ux + R[3 * d + 1] * uy + R[3 * d + 2] * uz;
        double sn = 0, snT = 0, snv = 0, sT = 0, sv = 0;
        for (int s = 0; s < ks; s++) {
          double x[3] = {base[0] + off[3 * s], base[1] + off[3 * s + 1], base[2] + off[3 * s + 2]};
          int64_t cell = -1;
          if (!fill) {
            cell = model_locate(m, x, &cache);
          } else {
            double d0 = x[0] - c[0], d1 = x[1] - c[1], d2 = x[2] - c[2];
            if (d0 * d0 + d1 * d1 + d2 * d2 <= r2) cell = model_locate(m, x, &cache);
          }
          if (cell < 0) { /* background (only reachable with fill, or on round-off at a face) */
            double bn = fill ? o->bg_n : 0, bT = fill ? o->bg_T : 0;
            sn += bn; snT += bn * bT; sT += bT;
            continue;
          }
          const double *f = cells + cell * MODEL_NF;
          double vl = l[0] * f[MODEL_VX] + l[1] * f[MODEL_VY] + l[2] * f[MODEL_VZ];
          sn += f[MODEL_N];
          snT += f[MODEL_N] * f[MODEL_T];
          snv += f[MODEL_N] * vl;
          sT += f[MODEL_T];
          sv += vl;
        }
        size_t idx = ((size_t)ix * n + iy) * n + iz;
        n_co[idx] = (float)(sn * inv);
        if (sn > 0) {
          T[idx] = (float)(snT / sn);
          v_los[idx] = (float)(snv / sn);
        } else {
          T[idx] = (float)(sT * inv);
          v_los[idx] = (float)(sv * inv);
        }
      }
    }
  free(off);
  return 0;
}
