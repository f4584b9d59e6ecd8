/* sampler_body_linear.h - the linear reconstruction (docs/sampling.md,
 * "Reconstructions") as host-and-device functions: the pieces sampler.c's
 * portable loops call (one text for the CPU, the device and the host-run
 * bodies: the corner projection, the run's first place, a point's cell and
 * place, lerp3, expf_poly, the voxel sums), and the two per-thread bodies
 * of sampler_body.h's launches for `linear`:
 *   1. sub-line threads, t in [0, n*n*k*k) (as sb_line_thread): the line
 *      walked leaf by leaf as walk_line_linear does (the same runs, so the
 *      same float steps from each run's first point), each point's 8 cell
 *      corners projected on the line of sight as lin_leaf does (v_los in
 *      double from the float corners, rounded once), lerped in z, x, y,
 *      then n = expf_poly(ln n), T = expf_poly(ln T), v_los, or the
 *      background (outside the domain; with a fill, outside the ball), into
 *      three planes pn, pT, pv of np = n^3 k^3 floats at t*n*k + j;
 *   2. voxel threads, t in [0, n^3): the n-weighted sums of the voxel's k^3
 *      points in double, in point order, and the means (linear_column).
 * The AVX-512 loops of sampler.c do the same operations in the same order;
 * the portable ones are these functions. Same bits everywhere (-ffp-contract=off:
 * no contraction; nvcc: --fmad=false; the fused steps are explicit fmaf). */
#ifndef COEMU_SAMPLER_BODY_LINEAR_H
#define COEMU_SAMPLER_BODY_LINEAR_H

#include <stdlib.h>
#include <string.h>

#include "rotate/sampler_body.h"

#ifdef __cplusplus
extern "C" {
#endif

#define SB_LIN_NF 4 /* a projected corner record: ln n, ln T, v_los, 0 */

/* exp in float for ln n and ln T (Cephes' expf: x = n ln 2 + r, |r| <=
 * ln 2 / 2, a degree-6 polynomial for e^r, then the exponent; relative
 * error ~1e-7), every step one rounded float operation, so that the scalar
 * and vector forms (sampler.c's expf_poly16) give the same bits. Arguments
 * below ln MODEL_NODAL_TINY + 1 give 0 (the clamp of n = 0, model.h); above
 * 88 they are clamped. So the exponent n is in [-123, 127], 2^n a normal
 * float, and p 2^n one rounding: the bits of ldexpf(p, n) and of
 * _mm512_scalef_ps, without ldexpf's libm call. */
#define SB_EXPF_LO ((float)(-85.195648)) /* ln(1e-37) + 0.1: a clamped zero stays 0 */
#define SB_EXPF_HI 88.0f
static inline SB_HD float sb_expf_poly(float x) {
  if (x < SB_EXPF_LO) return 0;
  x = x > SB_EXPF_HI ? SB_EXPF_HI : x;
  float n = nearbyintf(x * 1.44269504088896341f);
  float r = fmaf(n, -0.693359375f, x);
  r = fmaf(n, 2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = fmaf(p, r, 1.3981999507e-3f);
  p = fmaf(p, r, 8.3334519073e-3f);
  p = fmaf(p, r, 4.1665795894e-2f);
  p = fmaf(p, r, 1.6666665459e-1f);
  p = fmaf(p, r, 5.0000001201e-1f);
  p = fmaf(p, r * r, r);
  p = p + 1.0f;
  const uint32_t e = (uint32_t)((int)n + 127) << 23;
  float two_n;
  memcpy(&two_n, &e, sizeof two_n);
  return p * two_n;
}

/* One corner record s (model.h's nodal: ln n, ln T, vx, vy, vz) projected
 * on the line of sight l: (ln n, ln T, l . v, 0), l . v in double from the
 * floats, rounded once. v enters a voxel only through v_los and the
 * projection is linear, so lerping v_los is lerping v and projecting. */
static inline SB_HD void sb_lin_corner(const float *s, const double l[3], float *o) {
  o[0] = s[0];
  o[1] = s[1];
  o[2] = (float)(l[0] * s[2] + l[1] * s[3] + l[2] * s[4]);
  o[3] = 0;
}

/* 1 / span for a leaf of shift sh (span = 2^sh finest cells): 2^-sh,
 * exactly the double 1.0 / 2^sh, made from its exponent bits (no
 * division: this runs once per run of points). */
static inline SB_HD double sb_inv_span(int sh) {
  const uint64_t e = (uint64_t)(1023 - sh) << 52;
  double r;
  memcpy(&r, &e, sizeof r);
  return r;
}

/* A run's first place in its leaf's cells, s0 = (t - lo) / span (in
 * double, then rounded), and g = (B / inv_du) / span, the step per point
 * in cells (Bdu = B / inv_du, once per line): the points of the run are
 * placed in float from these. */
static inline SB_HD void sb_lin_run_start(const double t[3], const double lo[3], double inv_span,
                                          const double Bdu[3], float s0[3], float gs[3]) {
  for (int d = 0; d < 3; d++) {
    s0[d] = (float)((t[d] - lo[d]) * inv_span);
    gs[d] = (float)(Bdu[d] * inv_span);
  }
}

/* Point jj (from the run's first) of a run: s = s0 + g jj (one fused
 * multiply-add), its cell id = floor(s) clamped to the block (bmax: the
 * last cell per axis) and its place fd = s - id clamped to [0, 1]; max and
 * min as _mm512_max_ps / _mm512_min_ps: (a > b ? a : b), (a < b ? a : b). */
static inline SB_HD void sb_lin_place(const float s0[3], const float gs[3], float jj,
                                      const double bmax[3], float id[3], float fd[3]) {
  /* the three fmaf first: without FMA hardware (-Dnative=false) each is a
   * libm call, and interleaved with floorf more values cross calls */
  const float s[3] = {fmaf(gs[0], jj, s0[0]), fmaf(gs[1], jj, s0[1]), fmaf(gs[2], jj, s0[2])};
  for (int d = 0; d < 3; d++) {
    float x = floorf(s[d]), top = (float)bmax[d];
    x = x > 0 ? x : 0;
    id[d] = x < top ? x : top;
    x = s[d] - id[d];
    x = x > 0 ? x : 0;
    fd[d] = x < 1 ? x : 1;
  }
}

/* The trilinear function of one cell at (x, y, z) in [0, 1]^3 on the
 * SB_LIN_NF lanes, from its 8 corner records c_xyz (strides SB_LIN_NF, sy,
 * sz along x, y, z): lerps along z, then x, then y, each a + f (b - a) as
 * one subtraction and one fused multiply-add, in float:
 *   w_xy = c_xy0 + z (c_xy1 - c_xy0)        (xy = 00, 10, 01, 11)
 *   x_y  = w_0y + x (w_1y - w_0y)            (y = 0, 1)
 *   v    = x_0 + y (x_1 - x_0) */
static inline SB_HD void sb_lerp3(const float *cr, int64_t sy, int64_t sz, float x, float y,
                                  float z, float *out) {
  const int S = SB_LIN_NF;
  const int64_t off[4] = {0, S, sy, sy + S}; /* xy = 00, 10, 01, 11 */
  for (int q = 0; q < SB_LIN_NF; q++) {
    float w[4];
    for (int c = 0; c < 4; c++) {
      const float lo = cr[off[c] + q], hi = cr[off[c] + sz + q];
      w[c] = fmaf(z, hi - lo, lo);
    }
    const float x0 = fmaf(x, w[1] - w[0], w[0]), x1 = fmaf(x, w[3] - w[2], w[2]);
    out[q] = fmaf(y, x1 - x0, x0);
  }
}

/* Voxel iz of a column where its k^3 points hold no n: T and v_los are the
 * plain means of the points (in double, in point order: line L's point j at
 * L n k + j in pT, pv). */
static inline SB_HD void sb_lin_plain_means(const float *pT, const float *pv, int nk, int k,
                                            int iz, double inv, float *T, float *v_los) {
  double sT = 0, sv = 0;
  for (int L = 0; L < k * k; L++)
    for (int i = 0; i < k; i++) {
      const int p = L * nk + iz * k + i;
      sT += pT[p];
      sv += pv[p];
    }
  T[iz] = (float)(sT * inv);
  v_los[iz] = (float)(sv * inv);
}

/* Voxel iz of a column from its points' n, T, v_los (pn, pT, pv as in
 * sb_lin_plain_means): the n-weighted sums in double in point order (line
 * by line, then along z), then n plain, T and v_los n-weighted, or plain
 * where the points hold no n; into v_los[iz], T[iz], n_co[iz]. */
static inline SB_HD void sb_lin_voxel(const float *pn, const float *pT, const float *pv, int nk,
                                      int k, int iz, double inv, float *v_los, float *T,
                                      float *n_co) {
  double w0 = 0, w1 = 0, w2 = 0;
  for (int L = 0; L < k * k; L++)
    for (int i = 0; i < k; i++) {
      const int p = L * nk + iz * k + i;
      const double nn = pn[p];
      w0 += nn;
      w1 += nn * pT[p];
      w2 += nn * pv[p];
    }
  n_co[iz] = (float)(w0 * inv);
  if (w0 > 0) {
    T[iz] = (float)(w1 / w0);
    v_los[iz] = (float)(w2 / w0);
  } else {
    sb_lin_plain_means(pT, pv, nk, k, iz, inv, T, v_los);
  }
}

/* 1. one sub-line under `linear`: its points' n, T, v_los into the planes
 * pn, pT, pv (np floats each, np = n^3 k^3) at t n k + j */
static inline SB_HD void sb_lin_line_thread(const sampler_flat *F, const sampler_geo *G,
                                            const double *uz_tab, int64_t t, float *planes) {
  const int nk = G->n * G->k;
  const int64_t np = (int64_t)G->n * G->n * G->k * G->k * nk;
  float *pn = planes + t * nk, *pT = pn + np, *pv = pT + np;
  const double *R = G->R, *c = G->c;
  const double l[3] = {R[2], R[5], R[8]};
  double lb[3], A[3], B[3];
  sb_line_setup(F, G, t, lb, A, B);
  const double inv_b[3] = {B[0] != 0 ? 1 / B[0] : 0, B[1] != 0 ? 1 / B[1] : 0,
                           B[2] != 0 ? 1 / B[2] : 0};
  const double nf[3] = {(double)F->nfine[0], (double)F->nfine[1], (double)F->nfine[2]};
  const int64_t n0 = F->bnx[0] + 1, n1 = F->bnx[1] + 1;
  const double bmax[3] = {(double)(F->bnx[0] - 1), (double)(F->bnx[1] - 1),
                          (double)(F->bnx[2] - 1)};
  const double inv_du = nk / G->edge;
  const double Bdu[3] = {B[0] / inv_du, B[1] / inv_du, B[2] / inv_du};
  int j = 0;
  while (j < nk) {
    const double uzj = sb_uz_at(G, uz_tab, j);
    const double tt[3] = {A[0] + B[0] * uzj, A[1] + B[1] * uzj, A[2] + B[2] * uzj};
    int je = j + 1; /* outside the domain (round-off at a face; a fill): the background */
    int64_t lo[3], hi[3], base;
    int sh = 0;
    const int in = tt[0] >= 0 && tt[0] < nf[0] && tt[1] >= 0 && tt[1] < nf[1] && tt[2] >= 0 &&
                   tt[2] < nf[2];
    float s0[3] = {0, 0, 0}, gs[3] = {0, 0, 0}; /* set where in */
    const float *nodes = F->nodal;
    if (in) {
      const int64_t f[3] = {(int64_t)tt[0], (int64_t)tt[1], (int64_t)tt[2]};
      je = sb_run(F, G, uz_tab, A, B, inv_b, f, j, lo, hi, &sh, &base);
      const double lod[3] = {(double)lo[0], (double)lo[1], (double)lo[2]};
      sb_lin_run_start(tt, lod, sb_inv_span(sh), Bdu, s0, gs);
      nodes += base / F->ncell * F->nnodal * 8;
    }
    for (const int j0 = j; j < je; j++) {
      int bg = !in;
      if (G->fill && !bg) { /* the ball: background beyond r */
        const double uz = sb_uz_at(G, uz_tab, j);
        const double d0 = lb[0] + R[2] * uz - c[0], d1 = lb[1] + R[5] * uz - c[1],
                     d2 = lb[2] + R[8] * uz - c[2];
        bg = !(d0 * d0 + d1 * d1 + d2 * d2 <= G->r2);
      }
      if (bg) {
        pn[j] = G->bg[0], pT[j] = G->bg[1], pv[j] = 0;
        continue;
      }
      float id[3], fd[3], cr[8 * SB_LIN_NF], rec[SB_LIN_NF];
      sb_lin_place(s0, gs, (float)(j - j0), bmax, id, fd);
      const int64_t node = (((int64_t)id[2] * n1 + (int64_t)id[1]) * n0 + (int64_t)id[0]);
      for (int q = 0; q < 8; q++) /* corner xyz at (x + 2 y + 4 z) SB_LIN_NF */
        sb_lin_corner(nodes + (node + ((q >> 2) * n1 + ((q >> 1) & 1)) * n0 + (q & 1)) * 8, l,
                      cr + q * SB_LIN_NF);
      sb_lerp3(cr, 2 * SB_LIN_NF, 4 * SB_LIN_NF, fd[0], fd[1], fd[2], rec);
      pn[j] = sb_expf_poly(rec[0]);
      pT[j] = sb_expf_poly(rec[1]);
      pv[j] = rec[2];
    }
  }
}

/* 2. one voxel under `linear`: the means of its k^3 points */
static inline SB_HD void sb_lin_voxel_thread(const sampler_geo *G, const float *planes, int64_t t,
                                             float *v_los, float *T, float *n_co) {
  const int n = G->n, k = G->k, nk = n * k;
  const int64_t np = (int64_t)n * n * k * k * nk, column = t / n;
  const float *pn = planes + column * k * k * nk;
  sb_lin_voxel(pn, pn + np, pn + 2 * np, nk, k, (int)(t % n), G->inv, v_los + column * n,
               T + column * n, n_co + column * n);
}

/* The scratch between the two launches, bytes per cube: cell indices
 * (constant) or the points' n, T, v_los (linear) */
static inline SB_HD int64_t sb_scratch_bytes(const sampler_geo *G) {
  const int64_t np = (int64_t)G->n * G->n * G->k * G->k * G->n * G->k;
  return np * (G->recon == SB_RECON_LINEAR ? 3 * (int64_t)sizeof(float) : (int64_t)sizeof(int64_t));
}

/* The launches' bodies for G's reconstruction (scratch: sb_scratch_bytes;
 * uz: sb_uz_table or NULL) */
static inline SB_HD void sb_any_line_thread(const sampler_flat *F, const sampler_geo *G,
                                            const double *uz, int64_t t, void *scratch) {
  if (G->recon == SB_RECON_LINEAR)
    sb_lin_line_thread(F, G, uz, t, (float *)scratch);
  else
    sb_line_thread(F, G, uz, t, (int64_t *)scratch);
}
/* constant and linear (the device's voxel kernel; limited has its own) */
static inline SB_HD void sb_cl_voxel_thread(const sampler_flat *F, const sampler_geo *G,
                                            const void *scratch, int64_t t, float *v_los,
                                            float *T, float *n_co) {
  if (G->recon == SB_RECON_LINEAR)
    sb_lin_voxel_thread(G, (const float *)scratch, t, v_los, T, n_co);
  else
    sb_voxel_thread(F, G, (const int64_t *)scratch, t, v_los, T, n_co);
}
static inline SB_HD void sb_any_voxel_thread(const sampler_flat *F, const sampler_geo *G,
                                             const void *scratch, int64_t t, float *v_los,
                                             float *T, float *n_co) {
  if (G->recon == SB_RECON_LIMITED)
    sb_limited_voxel_thread(F, G, (const int64_t *)scratch, t, v_los, T, n_co);
  else
    sb_cl_voxel_thread(F, G, scratch, t, v_los, T, n_co);
}

#ifndef __CUDACC__
/* The host: both launches as plain loops in thread order (scratch:
 * sb_scratch_bytes(G) bytes), the sub-lines reading the positions from a
 * table as on the device (the expression where there is no memory for one). */
static inline void sampler_body_run_host(const sampler_flat *F, const sampler_geo *G,
                                         void *scratch, float *v_los, float *T, float *n_co) {
  const int64_t n = G->n, k = G->k;
  double *uz = (double *)malloc(sizeof(double) * (size_t)(n * k));
  if (uz) sb_uz_table(G, uz);
  for (int64_t t = 0; t < n * n * k * k; t++) sb_any_line_thread(F, G, uz, t, scratch);
  free(uz);
  for (int64_t t = 0; t < n * n * n; t++) sb_any_voxel_thread(F, G, scratch, t, v_los, T, n_co);
}
#endif

#ifdef __cplusplus
}
#endif

#endif
