/* sampler_body.h - the sampler (sampler.c) as per-thread bodies that a CUDA
 * compiler can build for the device and any C compiler for the host
 * (SB_HD: __host__ __device__ under nvcc, nothing otherwise), over a model
 * flattened to plain arrays (sampler_flat) and one direction's geometry
 * (sampler_geo); sampler_flatten and sampler_geometry (sampler.h) fill
 * them. The tests drive the bodies by a plain loop over the thread indices
 * (sampler_body_run_host) and compare them with sample_cube bit for bit.
 *
 * Two launches per cube (n voxels per edge, k^3 sub-samples per voxel):
 *   1. sub-line threads, t in [0, n*n*k*k): column t / k^2 (ix = column / n,
 *      iy = column % n), sub-line t % k^2 (a = ../k, b = ..%k): the leaf
 *      cell of each of its n*k points into idx[t*n*k + j] (-1: background),
 *      walking the line leaf by leaf exactly as sampler.c's walk_line does
 *      (the first point of a run located in the tree, the run's end from the
 *      leaf's exit, cell indices clamped to the leaf), or, with a background
 *      fill, point by point with the ball and the domain checked;
 *   2. voxel threads, t in [0, n^3) = (ix*n + iy)*n + iz: the n-weighted
 *      sums of the voxel's k^3 sub-samples in sampler.c's order (sub-line,
 *      then point), then the means, into v_los, T, n_co at t. Under
 *      `limited` a sub-sample is its cell's value plus the cell's limited
 *      slopes times the point's offset from the centre (sb_limited_point,
 *      the function sampler.c's CPU loop calls), evaluated here from the
 *      point's place on its sub-line rather than stored between the
 *      launches: the scratch stays the cell indices, 8 bytes a point.
 * Same arithmetic as sampler.c, in the same order (-ffp-contract=off: no contraction;
 * nvcc: --fmad=false), so the same bits. The directions (Philox,
 * rotate/directions.h) are drawn on the host, as on the CPU, and enter as
 * the rotation matrix of sampler_geo. The extra per-cell fields of
 * sample_cube_fields (LVG populations) are not in these bodies.
 */
#ifndef COEMU_SAMPLER_BODY_H
#define COEMU_SAMPLER_BODY_H

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define SB_HD __host__ __device__
#else
#define SB_HD
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* The model (rotate/model.h's ce_model) as plain arrays. */
typedef struct sampler_flat {
  int levmax, bshift;
  int ng[3], bnx[3];
  double xmin[3], inv_dxf[3];
  int64_t nfine[3];
  int64_t ncell;          /* cells per leaf */
  const float *cells;     /* [(leaf*ncell + local)*5 + field]: n, T, vx, vy, vz */
  const int32_t *root;    /* [ng0*ng1*ng2] node codes */
  const int32_t *nodes;   /* 8 children per refined node; < 0: leaf -(code+1) */
  const int32_t *leaf_geo; /* [leaf*4]: level, ig0, ig1, ig2 (1-based) */
  /* the linear reconstruction's corner records (model.h's nodal: per leaf
   * nnodal nodes, x fastest, 8 floats each: ln n, ln T, vx, vy, vz, 0..) */
  const float *nodal;
  int64_t nnodal;
  /* the limited reconstruction's per-cell records (NULL where not built:
   * sampler.h's sampler_limited_build; SB_LIMITED_STRIDE floats a cell,
   * the layout of sb_limited_point) */
  const float *limited;
} sampler_flat;

/* sampler_geo.recon: sampler.h's sampler_recon values the bodies have */
#define SB_RECON_CONSTANT 0
#define SB_RECON_LINEAR 1
#define SB_RECON_LIMITED 2

/* floats per cell of the limited reconstruction's records */
#define SB_LIMITED_STRIDE 24

/* One cube: the options and the direction. */
typedef struct sampler_geo {
  int n, k, fill;
  int recon;      /* SB_RECON_CONSTANT, SB_RECON_LINEAR or SB_RECON_LIMITED */
  double edge;
  double r2;      /* ball_radius^2, or INFINITY without a ball */
  double R[9];    /* dir_matrix(q) */
  double c[3];    /* model centre */
  float bg[5];    /* what a background sub-sample takes */
  double inv;     /* 1 / k^3 */
} sampler_geo;

/* sub-sample position j along a line, in metres from the centre (sampler.c) */
static inline SB_HD double sb_uz(const sampler_geo *G, int j) {
  const int k = G->k;
  return ((j / k + (j % k + 0.5) / k) / G->n - 0.5) * G->edge;
}

/* The positions of a line's n k sub-samples, uz[j] = sb_uz(G, j) (the same
 * bits: the same expression): a launch's threads read them from a table
 * filled once (the device: in shared memory, per block) instead of two
 * float64 divisions and an integer one per point, the most of the
 * constant walk's arithmetic on a GPU. uz NULL: the expression. Every cube
 * of one launch shares n, k and the edge (sampler_device_sample's one set
 * of options). */
static inline SB_HD void sb_uz_table(const sampler_geo *G, double *uz) {
  for (int j = 0; j < G->n * G->k; j++) uz[j] = sb_uz(G, j);
}
static inline SB_HD double sb_uz_at(const sampler_geo *G, const double *uz, int j) {
  return uz ? uz[j] : sb_uz(G, j);
}

/* model_find without the cache: the leaf holding finest cell f, its range
 * [lo, hi), shift and first cell; returns the cell index */
static inline SB_HD int64_t sb_find(const sampler_flat *F, const int64_t f[3], int64_t lo[3],
                                    int64_t hi[3], int *shift, int64_t *base) {
  int32_t code;
  int lev = 1;
  if (F->bshift >= 0) {
    int s0 = F->bshift + F->levmax - 1;
    code = F->root[((int64_t)(f[2] >> s0) * F->ng[1] + (int64_t)(f[1] >> s0)) * F->ng[0] +
                   (int64_t)(f[0] >> s0)];
    while (code >= 0) {
      lev++;
      int sh = F->bshift + F->levmax - lev;
      code = F->nodes[code + (int)((f[0] >> sh) & 1) + 2 * (int)((f[1] >> sh) & 1) +
                      4 * (int)((f[2] >> sh) & 1)];
    }
  } else {
    int64_t r[3];
    for (int d = 0; d < 3; d++) r[d] = f[d] / ((int64_t)F->bnx[d] << (F->levmax - 1));
    code = F->root[(r[2] * F->ng[1] + r[1]) * F->ng[0] + r[0]];
    while (code >= 0) {
      lev++;
      int ic = 0;
      for (int d = 0; d < 3; d++)
        ic |= (int)((f[d] / ((int64_t)F->bnx[d] << (F->levmax - lev))) & 1) << d;
      code = F->nodes[code + ic];
    }
  }
  int64_t leaf = -(int64_t)code - 1;
  const int32_t *g = F->leaf_geo + leaf * 4;
  int s = F->levmax - g[0];
  *shift = s;
  for (int d = 0; d < 3; d++) {
    int64_t span = (int64_t)F->bnx[d] << s;
    lo[d] = (int64_t)(g[1 + d] - 1) * span;
    hi[d] = lo[d] + span;
  }
  *base = leaf * F->ncell;
  return *base + ((((f[2] - lo[2]) >> s) * F->bnx[1] + ((f[1] - lo[1]) >> s)) * F->bnx[0] +
                  ((f[0] - lo[0]) >> s));
}

/* Sub-line thread t's line (both reconstructions): its points are A + B
 * uz(j) in finest-cell units and lb + l uz(j) in metres (sampler.c). */
static inline SB_HD void sb_line_setup(const sampler_flat *F, const sampler_geo *G, int64_t t,
                                       double lb[3], double A[3], double B[3]) {
  const int n = G->n, k = G->k, kk = k * k;
  const int64_t column = t / kk;
  const int L = (int)(t % kk), a = L / k, b = L % k;
  const int ix = (int)(column / n), iy = (int)(column % n);
  const double *R = G->R, *c = G->c;
  double ux = ((ix + (a + 0.5) / k) / n - 0.5) * G->edge;
  double uy = ((iy + (b + 0.5) / k) / n - 0.5) * G->edge;
  for (int d = 0; d < 3; d++) {
    lb[d] = c[d] + R[3 * d] * ux + R[3 * d + 1] * uy;
    A[d] = (lb[d] - F->xmin[d]) * F->inv_dxf[d];
    B[d] = R[3 * d + 2] * F->inv_dxf[d];
  }
}

/* A run of walk_line (sampler.c's trail_leaf): the leaf of point j (at
 * finest cell f), and the end je of the points j..je-1 in it (the first
 * with uz >= the leaf's exit, at least j + 1: estimated from the spacing,
 * then corrected). */
static inline SB_HD int sb_run(const sampler_flat *F, const sampler_geo *G, const double *uz,
                               const double A[3], const double B[3], const double inv_b[3],
                               const int64_t f[3], int j, int64_t lo[3], int64_t hi[3], int *sh,
                               int64_t *base) {
  const int nk = G->n * G->k;
  const double inv_du = nk / G->edge, uz0 = sb_uz_at(G, uz, 0);
  sb_find(F, f, lo, hi, sh, base);
  double uhi = INFINITY;
  for (int d = 0; d < 3; d++) {
    double e = B[d] > 0 ? ((double)hi[d] - A[d]) * inv_b[d]
               : B[d] < 0 ? ((double)lo[d] - A[d]) * inv_b[d] : INFINITY;
    uhi = e < uhi ? e : uhi;
  }
  double est = (uhi - uz0) * inv_du;
  int je = !(est < nk) ? nk : est <= j + 1 ? j + 1 : (int)est;
  while (je < nk && sb_uz_at(G, uz, je) < uhi) je++;
  while (je > j + 1 && sb_uz_at(G, uz, je - 1) >= uhi) je--;
  return je;
}

/* 1. one sub-line: the cells of its n*k points (uz: sb_uz_table or NULL) */
static inline SB_HD void sb_line_thread(const sampler_flat *F, const sampler_geo *G,
                                        const double *uz_tab, int64_t t, int64_t *idx_all) {
  const int nk = G->n * G->k;
  int64_t *idx = idx_all + t * nk;
  const double *R = G->R, *c = G->c;
  double lb[3], A[3], B[3];
  sb_line_setup(F, G, t, lb, A, B);
  int64_t lo[3], hi[3], base;
  int sh;
  if (G->fill) { /* per point, the ball and the domain checked (model_locate) */
    for (int j = 0; j < nk; j++) {
      double uz = sb_uz_at(G, uz_tab, j);
      double x[3] = {lb[0] + R[2] * uz, lb[1] + R[5] * uz, lb[2] + R[8] * uz};
      double d0 = x[0] - c[0], d1 = x[1] - c[1], d2 = x[2] - c[2];
      idx[j] = -1;
      if (!(d0 * d0 + d1 * d1 + d2 * d2 <= G->r2)) continue;
      int64_t f[3] = {0, 0, 0};
      int in = 1;
      for (int d = 0; d < 3; d++) {
        double tt = (x[d] - F->xmin[d]) * F->inv_dxf[d];
        if (!(tt >= 0 && tt < (double)F->nfine[d])) in = 0;
        else f[d] = (int64_t)tt;
      }
      if (in) idx[j] = sb_find(F, f, lo, hi, &sh, &base);
    }
    return;
  }
  /* walk_line (sampler.c) */
  const double inv_b[3] = {B[0] != 0 ? 1 / B[0] : 0, B[1] != 0 ? 1 / B[1] : 0,
                           B[2] != 0 ? 1 / B[2] : 0};
  const double nf[3] = {(double)F->nfine[0], (double)F->nfine[1], (double)F->nfine[2]};
  const int64_t b0 = F->bnx[0], b1 = F->bnx[1], b2 = F->bnx[2];
  int j = 0;
  while (j < nk) {
    double uzj = sb_uz_at(G, uz_tab, j);
    double t0 = A[0] + B[0] * uzj, t1 = A[1] + B[1] * uzj, t2 = A[2] + B[2] * uzj;
    if (!(t0 >= 0 && t0 < nf[0] && t1 >= 0 && t1 < nf[1] && t2 >= 0 && t2 < nf[2])) {
      idx[j++] = -1;
      continue;
    }
    const int64_t f[3] = {(int64_t)t0, (int64_t)t1, (int64_t)t2};
    const int je = sb_run(F, G, uz_tab, A, B, inv_b, f, j, lo, hi, &sh, &base);
    for (; j < je; j++) {
      double u = sb_uz_at(G, uz_tab, j);
      int64_t i0 = ((int64_t)(A[0] + B[0] * u) - lo[0]) >> sh;
      int64_t i1 = ((int64_t)(A[1] + B[1] * u) - lo[1]) >> sh;
      int64_t i2 = ((int64_t)(A[2] + B[2] * u) - lo[2]) >> sh;
      i0 = i0 < 0 ? 0 : i0 >= b0 ? b0 - 1 : i0;
      i1 = i1 < 0 ? 0 : i1 >= b1 ? b1 - 1 : i1;
      i2 = i2 < 0 ? 0 : i2 >= b2 ? b2 - 1 : i2;
      idx[j] = base + (i2 * b1 + i1) * b0 + i0;
    }
  }
}

/* The limited reconstruction's sub-sample at point (t0, t1, t2) (finest-cell
 * units) of the cell whose record is r: (centre[3], value[5], slopes
 * [axis 3][field 5], 0), the value plus slope . (t - centre) in double,
 * left to right, rounded to float, n and T clamped at 0 against round-off.
 * The bodies call it, and so do the CPU sampler's portable loops
 * (sampler.c's limited_points, whose AVX2 and AVX-512 forms do the same
 * operations lane by lane: the same bits). */
static inline SB_HD void sb_limited_point(const float *r, double t0, double t1, double t2,
                                          float out[5]) {
  const double d0 = t0 - r[0], d1 = t1 - r[1], d2 = t2 - r[2];
  for (int f = 0; f < 5; f++) {
    const float *s = r + 8 + f;
    double x = (double)r[3 + f] + (double)s[0] * d0 + (double)s[5] * d1 + (double)s[10] * d2;
    out[f] = (float)(f <= 1 && x < 0 ? 0 : x);
  }
}

/* The five fields of a voxel's sub-sample into f: cell cix's (-1: the
 * background record), or under `limited` (lim, a constant at each call)
 * the cell's reconstruction at point u of the sub-line A + B u. Values, not
 * a pointer into f or the cells: f then stays in registers on the device
 * (tests/common's gpu_kernel_resources fails a kernel with a stack frame). */
static inline SB_HD void sb_voxel_sub_sample(const sampler_flat *F, const sampler_geo *G, int lim,
                                             int64_t cix, const double A[3], const double B[3],
                                             double u, float f[5]) {
  if (lim && cix >= 0) {
    sb_limited_point(F->limited + cix * SB_LIMITED_STRIDE, A[0] + B[0] * u, A[1] + B[1] * u,
                     A[2] + B[2] * u, f);
    return;
  }
  const float *s = cix >= 0 ? F->cells + cix * 5 : G->bg;
  for (int d = 0; d < 5; d++) f[d] = s[d];
}

/* 2. one voxel: the means of its k^3 sub-samples (lim: `limited`, whose
 * sub-line places A, B are made again here, as the first launch made them) */
static inline SB_HD void sb_voxel_means(const sampler_flat *F, const sampler_geo *G, int lim,
                                        const int64_t *idx_all, int64_t t, float *v_los,
                                        float *T, float *n_co) {
  const int n = G->n, k = G->k, nk = n * k, kk = k * k;
  const int64_t column = t / n;
  const int iz = (int)(t % n);
  const int64_t *idx = idx_all + column * kk * nk;
  const double l[3] = {G->R[2], G->R[5], G->R[8]};
  double w[5] = {0, 0, 0, 0, 0}, lb[3], A[3] = {0, 0, 0}, B[3] = {0, 0, 0};
  float f[5];
  for (int L = 0; L < kk; L++) {
    if (lim) sb_line_setup(F, G, column * kk + L, lb, A, B);
    for (int i = 0; i < k; i++) {
      const int j = iz * k + i;
      sb_voxel_sub_sample(F, G, lim, idx[L * nk + j], A, B, lim ? sb_uz(G, j) : 0, f);
      double nn = f[0];
      w[0] += nn;
      for (int d = 1; d < 5; d++) w[d] += nn * f[d];
    }
  }
  n_co[t] = (float)(w[0] * G->inv);
  if (w[0] > 0) {
    T[t] = (float)(w[1] / w[0]);
    v_los[t] = (float)((l[0] * w[2] + l[1] * w[3] + l[2] * w[4]) / w[0]);
  } else {
    double p[5] = {0, 0, 0, 0, 0};
    for (int L = 0; L < kk; L++) {
      if (lim) sb_line_setup(F, G, column * kk + L, lb, A, B);
      for (int i = 0; i < k; i++) {
        const int j = iz * k + i;
        sb_voxel_sub_sample(F, G, lim, idx[L * nk + j], A, B, lim ? sb_uz(G, j) : 0, f);
        for (int d = 1; d < 5; d++) p[d] += f[d];
      }
    }
    T[t] = (float)(p[1] * G->inv);
    v_los[t] = (float)((l[0] * p[2] + l[1] * p[3] + l[2] * p[4]) * G->inv);
  }
}

/* constant, and limited: each its own function, so that the device's
 * constant (and linear) voxel kernel is not compiled with limited's
 * registers (121 against 72: fewer blocks per SM) */
static inline SB_HD void sb_voxel_thread(const sampler_flat *F, const sampler_geo *G,
                                         const int64_t *idx_all, int64_t t, float *v_los,
                                         float *T, float *n_co) {
  sb_voxel_means(F, G, 0, idx_all, t, v_los, T, n_co);
}
static inline SB_HD void sb_limited_voxel_thread(const sampler_flat *F, const sampler_geo *G,
                                                 const int64_t *idx_all, int64_t t, float *v_los,
                                                 float *T, float *n_co) {
  sb_voxel_means(F, G, 1, idx_all, t, v_los, T, n_co);
}

#ifdef __cplusplus
}
#endif

#endif
