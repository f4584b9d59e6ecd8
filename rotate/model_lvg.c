/* model_lvg.c - per-cell inputs of the 3-D LVG solver from a model
 * (model_lvg.h). */
#include "rotate/model_lvg.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"

/* Cell `cell`'s local indices, shift and first finest index per dimension. */
static void cell_geom(const ce_model *m, int64_t cell, int i[3], int *shift, int64_t lo[3]) {
  int64_t leaf = cell / m->ncell, li = cell % m->ncell;
  const amrvac_block_id *id = &m->ids[leaf];
  *shift = m->levmax - id->level;
  i[0] = (int)(li % m->bnx[0]);
  i[1] = (int)((li / m->bnx[0]) % m->bnx[1]);
  i[2] = (int)(li / ((int64_t)m->bnx[0] * m->bnx[1]));
  for (int d = 0; d < 3; d++) lo[d] = (int64_t)(id->ig[d] - 1) * ((int64_t)m->bnx[d] << *shift);
}

void model_cell_centre(const ce_model *m, int64_t cell, double x[3]) {
  int i[3], s;
  int64_t lo[3];
  cell_geom(m, cell, i, &s, lo);
  for (int d = 0; d < 3; d++)
    x[d] = m->xmin[d] + ((double)(lo[d] + ((int64_t)i[d] << s)) + 0.5 * (double)((int64_t)1 << s)) /
                            m->inv_dxf[d];
}

void model_cell_name(const ce_model *m, int64_t cell, char *buf, size_t len) {
  int i[3], s;
  int64_t lo[3];
  double x[3];
  cell_geom(m, cell, i, &s, lo);
  model_cell_centre(m, cell, x);
  const amrvac_block_id *id = &m->ids[cell / m->ncell];
  snprintf(buf, len, "leaf %lld (level %d, block %d %d %d), cell (%d, %d, %d) at (%.6g, %.6g, %.6g) m",
           (long long)(cell / m->ncell), id->level, id->ig[0], id->ig[1], id->ig[2], i[0], i[1], i[2],
           x[0], x[1], x[2]);
}

/* Centre [m] of the cell with index c found by model_locate, from its cache. */
static void found_centre(const ce_model *m, const model_cache *k, int64_t c, double x[3]) {
  int64_t li = c - k->base;
  int64_t i[3] = {li % m->bnx[0], (li / m->bnx[0]) % m->bnx[1], li / ((int64_t)m->bnx[0] * m->bnx[1])};
  for (int d = 0; d < 3; d++)
    x[d] = m->xmin[d] +
           ((double)(k->lo[d] + (i[d] << k->shift)) + 0.5 * (double)((int64_t)1 << k->shift)) /
               m->inv_dxf[d];
}

int model_velocity_gradient(const ce_model *m, double *grad) {
  const int64_t N = m->nleaves * m->ncell;
  for (int64_t c = 0; c < N; c++) {
    int i[3], s;
    int64_t lo[3];
    cell_geom(m, c, i, &s, lo);
    double x0[3], h[3];
    model_cell_centre(m, c, x0);
    for (int d = 0; d < 3; d++) h[d] = (double)((int64_t)1 << s) / m->inv_dxf[d];
    const model_real *f0 = m->cells + c * MODEL_NF;
    double A[9] = {0}, B[9] = {0}; /* sum dx dx^T; sum dv_i dx_j */
    int nn = 0;
    model_cache cache = {0};
    for (int d = 0; d < 3; d++)
      for (int sg = -1; sg <= 1; sg += 2) {
        double p[3] = {x0[0], x0[1], x0[2]};
        p[d] += sg * h[d];
        int64_t k = model_locate(m, p, &cache);
        if (k < 0 || k == c) continue; /* outside the domain */
        double xk[3], dx[3], dv[3];
        found_centre(m, &cache, k, xk);
        const model_real *fk = m->cells + k * MODEL_NF;
        for (int a = 0; a < 3; a++) {
          dx[a] = xk[a] - x0[a];
          dv[a] = (double)fk[MODEL_VX + a] - (double)f0[MODEL_VX + a];
        }
        for (int a = 0; a < 3; a++)
          for (int b = 0; b < 3; b++) {
            A[3 * a + b] += dx[a] * dx[b];
            B[3 * a + b] += dv[a] * dx[b];
          }
        nn++;
      }
    /* G = B A^-1 (A symmetric) */
    double inv[9];
    inv[0] = A[4] * A[8] - A[5] * A[7];
    inv[1] = A[2] * A[7] - A[1] * A[8];
    inv[2] = A[1] * A[5] - A[2] * A[4];
    inv[3] = A[5] * A[6] - A[3] * A[8];
    inv[4] = A[0] * A[8] - A[2] * A[6];
    inv[5] = A[2] * A[3] - A[0] * A[5];
    inv[6] = A[3] * A[7] - A[4] * A[6];
    inv[7] = A[1] * A[6] - A[0] * A[7];
    inv[8] = A[0] * A[4] - A[1] * A[3];
    double det = A[0] * inv[0] + A[1] * inv[3] + A[2] * inv[6];
    double scale = A[0] * A[4] * A[8];
    if (nn < 3 || !(fabs(det) > 1e-12 * scale)) {
      char name[256];
      model_cell_name(m, c, name, sizeof name);
      CE_FAIL("model: %s: %d neighbours do not span 3 dimensions (velocity gradient)", name, nn);
    }
    double *G = grad + 9 * c;
    for (int a = 0; a < 3; a++)
      for (int b = 0; b < 3; b++)
        G[3 * a + b] =
            (B[3 * a] * inv[b] + B[3 * a + 1] * inv[3 + b] + B[3 * a + 2] * inv[6 + b]) / det;
  }
  return 0;
}

void model_lvg_inputs_free(model_lvg_inputs *in) {
  free(in->t_kin);
  free(in->n_h2);
  free(in->n_mol);
  free(in->grad_v);
  free(in->length);
  free(in->order);
  memset(in, 0, sizeof *in);
}

int model_lvg_inputs_make(const ce_model *m, double x_co, double x_mol, model_lvg_inputs *in) {
  memset(in, 0, sizeof *in);
  if (!(x_co > 0 && x_co <= 1))
    CE_FAIL("model: CO abundance n_CO/n_H2 = %g, expected in (0, 1] (the sidecar's co_abundance)", x_co);
  if (!(x_mol > 0 && x_mol <= 1))
    CE_FAIL("model: molecule abundance n_mol/n_H2 = %g, expected in (0, 1]", x_mol);
  const int64_t N = m->nleaves * m->ncell;
  in->ncell = N;
  in->chunk = m->ncell;
  in->t_kin = ce_malloc_array((size_t)N, sizeof(double), "LVG inputs");
  in->n_h2 = ce_malloc_array((size_t)N, sizeof(double), "LVG inputs");
  in->n_mol = ce_malloc_array((size_t)N, sizeof(double), "LVG inputs");
  in->grad_v = ce_malloc_array((size_t)N, 9 * sizeof(double), "LVG inputs");
  in->length = ce_malloc_array((size_t)N, sizeof(double), "LVG inputs");
  in->order = ce_malloc_array((size_t)N, sizeof(int64_t), "LVG inputs");
  if (!in->t_kin || !in->n_h2 || !in->n_mol || !in->grad_v || !in->length || !in->order) {
    model_lvg_inputs_free(in);
    return -1;
  }
  for (int64_t c = 0; c < N; c++) {
    const model_real *f = m->cells + c * MODEL_NF;
    in->t_kin[c] = f[MODEL_T];
    in->n_h2[c] = (double)f[MODEL_N] / x_co * 1e-6; /* m^-3 -> cm^-3 */
    in->n_mol[c] = x_mol * in->n_h2[c];
    int i[3], s;
    int64_t lo[3];
    cell_geom(m, c, i, &s, lo);
    double e = INFINITY;
    for (int d = 0; d < 3; d++) e = fmin(e, (double)((int64_t)1 << s) / m->inv_dxf[d]);
    in->length[c] = e * 100.0; /* m -> cm */
  }
  /* serpentine order inside each leaf: consecutive cells share a face */
  const int b0 = m->bnx[0], b1 = m->bnx[1], b2 = m->bnx[2];
  int64_t at = 0;
  for (int64_t l = 0; l < m->nleaves; l++) {
    int64_t row = 0;
    for (int k = 0; k < b2; k++)
      for (int jj = 0; jj < b1; jj++, row++) {
        int j = k % 2 == 0 ? jj : b1 - 1 - jj;
        for (int ii = 0; ii < b0; ii++) {
          int i = row % 2 == 0 ? ii : b0 - 1 - ii;
          in->order[at++] = l * m->ncell + ((int64_t)k * b1 + j) * b0 + i;
        }
      }
  }
  if (model_velocity_gradient(m, in->grad_v) < 0) {
    model_lvg_inputs_free(in);
    return -1;
  }
  return 0;
}
