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

/* One sub-sample: sum[] += (n, n T, n v_los, T, v_los) of cell fields f. */
static inline void add_cell(double sum[5], const model_real *f, const double l[3]) {
  double n = f[MODEL_N], T = f[MODEL_T];
  double vl = l[0] * f[MODEL_VX] + l[1] * f[MODEL_VY] + l[2] * f[MODEL_VZ];
  sum[0] += n;
  sum[1] += n * T;
  sum[2] += n * vl;
  sum[3] += T;
  sum[4] += vl;
}

/* One sub-line without background fill: find the leaf of the first point,
 * then take every following point whose uz stays below the leaf's exit
 * (one comparison per point). Local cell indices are clamped to the block,
 * so a point that round-off puts a hair past the exit reads the edge cell
 * of the leaf instead of memory outside it. */
static void walk_line(const ce_model *m, const double A[3], const double B[3], const double *uz,
                      const int *jz, int nk, double du, const double l[3], double *acc,
                      int64_t *idx, model_cache *c) {
  /* uz[j] = uz[0] + j du up to round-off; 1/B once per line */
  const double inv_b[3] = {B[0] != 0 ? 1 / B[0] : 0, B[1] != 0 ? 1 / B[1] : 0,
                           B[2] != 0 ? 1 / B[2] : 0};
  const double nf[3] = {(double)m->nfine[0], (double)m->nfine[1], (double)m->nfine[2]};
  const int64_t b0 = m->bnx[0], b1 = m->bnx[1], b2 = m->bnx[2];
  const model_real *cells = m->cells;
  int j = 0;
  while (j < nk) {
    double t0 = A[0] + B[0] * uz[j], t1 = A[1] + B[1] * uz[j], t2 = A[2] + B[2] * uz[j];
    if (!(t0 >= 0 && t0 < nf[0] && t1 >= 0 && t1 < nf[1] && t2 >= 0 && t2 < nf[2])) {
      j++; /* outside the domain: only on round-off at a face (sampler_check) */
      continue;
    }
    model_find(m, (int64_t[3]){(int64_t)t0, (int64_t)t1, (int64_t)t2}, c);
    double uhi = INFINITY;
    for (int d = 0; d < 3; d++) {
      double e = B[d] > 0 ? ((double)c->hi[d] - A[d]) * inv_b[d]
                 : B[d] < 0 ? ((double)c->lo[d] - A[d]) * inv_b[d] : INFINITY;
      uhi = e < uhi ? e : uhi;
    }
    const int64_t lo0 = c->lo[0], lo1 = c->lo[1], lo2 = c->lo[2], base = c->base;
    const int sh = c->shift;
    /* the points of this leaf: j .. je-1, je the first index with uz >= uhi
     * (at least one point): estimated from the spacing, then corrected */
    double est = (uhi - uz[0]) / du;
    int je = !(est < nk) ? nk : est <= j + 1 ? j + 1 : (int)est;
    while (je < nk && uz[je] < uhi) je++;
    while (je > j + 1 && uz[je - 1] >= uhi) je--;
    /* pass 1 (vectorises): cell indices */
    for (int jj = j; jj < je; jj++) {
      int64_t i0 = ((int64_t)(A[0] + B[0] * uz[jj]) - lo0) >> sh;
      int64_t i1 = ((int64_t)(A[1] + B[1] * uz[jj]) - lo1) >> sh;
      int64_t i2 = ((int64_t)(A[2] + B[2] * uz[jj]) - lo2) >> sh;
      i0 = i0 < 0 ? 0 : i0 >= b0 ? b0 - 1 : i0;
      i1 = i1 < 0 ? 0 : i1 >= b1 ? b1 - 1 : i1;
      i2 = i2 < 0 ? 0 : i2 >= b2 ? b2 - 1 : i2;
      idx[jj] = base + (i2 * b1 + i1) * b0 + i0;
    }
    /* pass 2: sums per voxel, kept local, flushed when the voxel changes */
    int cur = jz[j];
    double sum[5] = {0, 0, 0, 0, 0};
    for (; j < je; j++) {
      if (jz[j] != cur) {
        for (int v = 0; v < 5; v++) acc[5 * cur + v] += sum[v], sum[v] = 0;
        cur = jz[j];
      }
      add_cell(sum, cells + idx[j] * MODEL_NF, l);
    }
    for (int v = 0; v < 5; v++) acc[5 * cur + v] += sum[v];
  }
}

/* The voxels of one (ix, iy) column are filled by k^2 sub-lines along z,
 * each stepping through n*k points: consecutive points are close, so the
 * locator's last-leaf cache almost always hits. Positions are evaluated
 * directly (not accumulated) in units of the finest cells. */
int sample_cube(const ce_model *m, const double q[4], const sampler_opts *o, float *v_los,
                float *T, float *n_co) {
  CE_TRY(sampler_check(m, o));
  double R[9], c[3];
  dir_matrix(q, R);
  model_centre(m, c);
  const int n = o->n, k = o->k, nk = n * k;
  const double l[3] = {R[2], R[5], R[8]};
  double *acc = malloc(sizeof(double) * 5 * (size_t)n), *uz = malloc(sizeof(double) * (size_t)nk);
  int *jz = malloc(sizeof(int) * (size_t)nk);
  int64_t *idx = malloc(sizeof(int64_t) * (size_t)nk);
  if (!acc || !uz || !jz || !idx) {
    free(acc);
    free(uz);
    free(jz);
    free(idx);
    CE_FAIL("sampler: out of memory");
  }
  for (int j = 0; j < nk; j++) {
    uz[j] = ((j / k + (j % k + 0.5) / k) / n - 0.5) * o->edge;
    jz[j] = j / k;
  }
  const int fill = o->fill_background;
  const double r2 = o->ball_radius > 0 ? o->ball_radius * o->ball_radius : INFINITY;
  const double bn = fill ? o->bg_n : 0, bT = fill ? o->bg_T : 0;
  const double inv = 1.0 / (k * k * k);
  model_cache cache = {0};
  const model_real *cells = m->cells;
  for (int ix = 0; ix < n; ix++)
    for (int iy = 0; iy < n; iy++) {
      for (int i = 0; i < 5 * n; i++) acc[i] = 0;
      for (int a = 0; a < k; a++)
        for (int b = 0; b < k; b++) {
          double ux = ((ix + (a + 0.5) / k) / n - 0.5) * o->edge;
          double uy = ((iy + (b + 0.5) / k) / n - 0.5) * o->edge;
          double lb[3], A[3], B[3];
          for (int d = 0; d < 3; d++) {
            lb[d] = c[d] + R[3 * d] * ux + R[3 * d + 1] * uy;
            A[d] = (lb[d] - m->xmin[d]) * m->inv_dxf[d];
            B[d] = R[3 * d + 2] * m->inv_dxf[d];
          }
          if (fill) { /* rare: per point, with the ball and the domain checked */
            for (int j = 0; j < nk; j++) {
              double x[3] = {lb[0] + R[2] * uz[j], lb[1] + R[5] * uz[j], lb[2] + R[8] * uz[j]};
              double d0 = x[0] - c[0], d1 = x[1] - c[1], d2 = x[2] - c[2];
              int64_t cell = d0 * d0 + d1 * d1 + d2 * d2 <= r2 ? model_locate(m, x, &cache) : -1;
              double *sum = acc + 5 * jz[j];
              if (cell < 0) {
                sum[0] += bn; sum[1] += bn * bT; sum[3] += bT;
              } else {
                add_cell(sum, cells + cell * MODEL_NF, l);
              }
            }
          } else {
            walk_line(m, A, B, uz, jz, nk, o->edge / nk, l, acc, idx, &cache);
          }
        }
      for (int iz = 0; iz < n; iz++) {
        const double *s = acc + 5 * iz;
        size_t at = ((size_t)ix * n + iy) * n + iz;
        n_co[at] = (float)(s[0] * inv);
        if (s[0] > 0) {
          T[at] = (float)(s[1] / s[0]);
          v_los[at] = (float)(s[2] / s[0]);
        } else {
          T[at] = (float)(s[3] * inv);
          v_los[at] = (float)(s[4] * inv);
        }
      }
    }
  free(acc);
  free(uz);
  free(jz);
  free(idx);
  return 0;
}
