/* compat.c - ball trim, rotation, 128^3 cell-mean binning with parent fill. */
#include "rotate/compat.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "rotate/directions.h"

/* Calls fn for every leaf cell centre within the ball; returns the count. */
typedef void (*cell_fn)(const double u[3], const model_real *f, const double l[3], void *user);

static int64_t for_ball_cells(const ce_model *m, const double R[9], double radius, cell_fn fn,
                              void *user) {
  double c[3], dxf[3];
  model_centre(m, c);
  for (int d = 0; d < 3; d++) dxf[d] = 1.0 / m->inv_dxf[d];
  const double l[3] = {R[2], R[5], R[8]};
  int64_t count = 0;
  for (int64_t leaf = 0; leaf < m->nleaves; leaf++) {
    const amrvac_block_id *id = &m->ids[leaf];
    double h[3], lo[3];
    for (int d = 0; d < 3; d++) {
      h[d] = dxf[d] * (double)((int64_t)1 << (m->levmax - id->level));
      lo[d] = m->xmin[d] + (double)(id->ig[d] - 1) * m->bnx[d] * h[d];
    }
    for (int k = 0; k < m->bnx[2]; k++)
      for (int j = 0; j < m->bnx[1]; j++)
        for (int i = 0; i < m->bnx[0]; i++) {
          double x[3] = {lo[0] + (i + 0.5) * h[0] - c[0], lo[1] + (j + 0.5) * h[1] - c[1],
                         lo[2] + (k + 0.5) * h[2] - c[2]};
          if (x[0] * x[0] + x[1] * x[1] + x[2] * x[2] > radius * radius) continue;
          double u[3];
          for (int d = 0; d < 3; d++) u[d] = R[d] * x[0] + R[3 + d] * x[1] + R[6 + d] * x[2];
          int64_t cell = leaf * m->ncell + ((int64_t)k * m->bnx[1] + j) * m->bnx[0] + i;
          fn(u, m->cells + cell * MODEL_NF, l, user);
          count++;
        }
  }
  return count;
}

typedef struct {
  double lo[3], hi[3];
  double *sum; /* 4 per bin: count, n, T, v_z */
} bins;

static void bbox_fn(const double u[3], const model_real *f, const double l[3], void *user) {
  bins *b = user;
  for (int d = 0; d < 3; d++) {
    if (u[d] < b->lo[d]) b->lo[d] = u[d];
    if (u[d] > b->hi[d]) b->hi[d] = u[d];
  }
}

static int bin_of(double u, double lo, double hi) {
  if (!(hi > lo)) return 0;
  int i = (int)floor((u - lo) / (hi - lo) * COMPAT_BINS);
  return i < 0 ? 0 : i >= COMPAT_BINS ? COMPAT_BINS - 1 : i;
}

static void bin_fn(const double u[3], const model_real *f, const double l[3], void *user) {
  bins *b = user;
  int i = bin_of(u[0], b->lo[0], b->hi[0]), j = bin_of(u[1], b->lo[1], b->hi[1]),
      k = bin_of(u[2], b->lo[2], b->hi[2]);
  double *s = b->sum + 4 * (((size_t)i * COMPAT_BINS + j) * COMPAT_BINS + k);
  s[0] += 1;
  s[1] += f[MODEL_N];
  s[2] += f[MODEL_T];
  s[3] += l[0] * f[MODEL_VX] + l[1] * f[MODEL_VY] + l[2] * f[MODEL_VZ];
}

int compat_grid(const ce_model *m, const double q[4], double radius, float *v_z, float *T,
                float *n_co, double *dx, double *voxel) {
  if (!(radius > 0)) CE_FAIL("compat: ball radius %g m, expected > 0", radius);
  double R[9];
  dir_matrix(q, R);
  bins b = {{INFINITY, INFINITY, INFINITY}, {-INFINITY, -INFINITY, -INFINITY}, NULL};
  if (for_ball_cells(m, R, radius, bbox_fn, &b) == 0)
    CE_FAIL("compat: no cell centre lies within %g m of the model centre", radius);
  /* the pyramid: level L has 2^L cells per edge, L = 7 (128) down to 0 */
  double *lev[8];
  size_t total = 0;
  for (int L = 0; L <= 7; L++) total += (size_t)1 << (3 * L);
  double *all = calloc(total * 4, sizeof(double));
  if (!all) CE_FAIL("compat: out of memory");
  size_t at = 0;
  for (int L = 7; L >= 0; L--) {
    lev[L] = all + 4 * at;
    at += (size_t)1 << (3 * L);
  }
  b.sum = lev[7];
  for_ball_cells(m, R, radius, bin_fn, &b);
  for (int L = 6; L >= 0; L--) {
    int nL = 1 << L, nF = 2 * nL;
    for (int i = 0; i < nF; i++)
      for (int j = 0; j < nF; j++)
        for (int k = 0; k < nF; k++) {
          const double *s = lev[L + 1] + 4 * (((size_t)i * nF + j) * nF + k);
          double *p = lev[L] + 4 * (((size_t)(i / 2) * nL + j / 2) * nL + k / 2);
          for (int v = 0; v < 4; v++) p[v] += s[v];
        }
  }
  const int off = (COMPAT_BINS - COMPAT_OUT) / 2;
  for (int i = 0; i < COMPAT_OUT; i++)
    for (int j = 0; j < COMPAT_OUT; j++)
      for (int k = 0; k < COMPAT_OUT; k++) {
        int L = 7, ci = i + off, cj = j + off, ck = k + off;
        const double *s = lev[7] + 4 * (((size_t)ci * 128 + cj) * 128 + ck);
        while (s[0] == 0 && L > 0) {
          L--;
          ci /= 2; cj /= 2; ck /= 2;
          int nL = 1 << L;
          s = lev[L] + 4 * (((size_t)ci * nL + cj) * nL + ck);
        }
        size_t o = ((size_t)i * COMPAT_OUT + j) * COMPAT_OUT + k;
        n_co[o] = (float)(s[1] / s[0]);
        T[o] = (float)(s[2] / s[0]);
        v_z[o] = (float)(s[3] / s[0]);
      }
  free(all);
  *voxel = (b.hi[2] - b.lo[2]) / COMPAT_BINS;
  *dx = (b.hi[2] - b.lo[2]) / COMPAT_OUT;
  return 0;
}
