/* lte_kernel_cpu.c - the CPU backend of lte_kernel.h: the LTE imager's
 * kernel, 8-wide vectors, OpenMP threads over the rays of a batch.
 *
 * Every expression below follows Pomme's operation order (parenthesised as
 * Pomme evaluates it), because optically thin segments cancel: reordering a
 * product changes the last bit of an intermediate, and the per-segment
 * optical depth can amplify that by 1e4 or more. The build disables FMA
 * contraction for solver/ for the same reason. These images are the
 * reference bits of the contract (lte_kernel.h): a change here must leave
 * them bit-identical.
 *
 * Layout of the work: one ray (pixel) at a time per thread. Per cell, 8
 * cells at once: populations, S, a*dx, 1/width, Doppler factor. For up to 8
 * frequencies together: b per cell, then exp(-b^2) and erf(b) only for the
 * lanes that need a call, packed into full vectors (the rest are exact
 * constants in the wings). Per frequency: the segment optical depths; the
 * running sum tau (scalar: it is a recurrence; the frequencies interleave);
 * exp(-tau); the formal solution per segment, summed.
 */
#include "solver/lte_kernel.h"

#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "solver/lte_kernel_body.h" /* the segment arithmetic, shared with the device */

#define SQRT_PI 1.7724538509055159 /* np.sqrt(np.pi) */
#define INV_SQRT_PI (1.0 / SQRT_PI)

/* ---------------------------------------------------------------------- */
/* 8-wide double vectors (GCC vector extensions: the same source gives
 * AVX-512 code with -march=native on AVX-512 hosts and SSE/AVX pairs
 * elsewhere). */
typedef double v8d __attribute__((vector_size(64)));
typedef long long v8l __attribute__((vector_size(64)));
#define W 8

static inline v8d ld(const double *p) {
  v8d r;
  memcpy(&r, p, sizeof r);
  return r;
}
static inline void st(double *p, v8d x) { memcpy(p, &x, sizeof x); }
static inline v8d splat(double x) { return (v8d){x, x, x, x, x, x, x, x}; }
static inline int all_set(v8l m) {
  for (int i = 0; i < W; i++)
    if (!m[i]) return 0;
  return 1;
}
/* mask ? x : y, mask lanes all ones or all zeros */
static inline v8d blend(v8l mask, v8d x, v8d y) {
  return (v8d)(((v8l)x & mask) | ((v8l)y & ~mask));
}
static inline v8d vabs(v8d x) {
  const long long m = 0x7fffffffffffffffLL;
  return (v8d)((v8l)x & (v8l){m, m, m, m, m, m, m, m});
}

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

/* Lane masks as bits, and packing: the lanes of a mask stored contiguously
 * and back, so that exp/erf run on full vectors of the lanes that need them
 * (every routine here computes each lane from that lane alone, so the bits
 * do not depend on the packing). Register compress + plain store: the
 * memory forms of compress are slow on some CPUs. pack writes a whole vector
 * at dst (zeros after the packed lanes); dst needs W doubles of room. */
static inline unsigned lanes(v8l m) {
#if defined(__AVX512F__)
  return _mm512_test_epi64_mask((__m512i)m, (__m512i)m);
#else
  unsigned r = 0;
  for (int i = 0; i < W; i++) r |= (unsigned)(m[i] != 0) << i;
  return r;
#endif
}
static inline int pack(double *dst, unsigned m, v8d x) {
#if defined(__AVX512F__)
  st(dst, (v8d)_mm512_maskz_compress_pd((__mmask8)m, (__m512d)x));
#else
  v8d r = splat(0);
  for (int i = 0, k = 0; i < W; i++)
    if (m >> i & 1) r[k++] = x[i];
  st(dst, r);
#endif
  return __builtin_popcount(m);
}
/* The inverse of pack: lanes of m from src in order, the others from fill. */
static inline v8d unpack(const double *src, unsigned m, v8d fill) {
#if defined(__AVX512F__)
  return (v8d)_mm512_mask_expand_pd((__m512d)fill, (__mmask8)m, (__m512d)ld(src));
#else
  for (int i = 0, k = 0; i < W; i++)
    if (m >> i & 1) fill[i] = src[k++];
  return fill;
#endif
}
/* Per-lane libm: the portable path, and the reference the vector routines
 * are tested against (lte_kernel_model.libm). */
static inline v8d lexp(v8d x) {
  for (int i = 0; i < W; i++) x[i] = exp(x[i]);
  return x;
}
static inline v8d lerf(v8d x) {
  for (int i = 0; i < W; i++) x[i] = erf(x[i]);
  return x;
}
#if defined(__AVX512F__) && defined(COEMU_HAVE_LIBMVEC)
/* glibc libmvec, AVX-512 variants (declared here: math.h exposes them only
 * under -ffast-math). They differ from libm by about an ulp; the tests
 * compare both against the literal reference. */
__m512d _ZGVeN8v_exp(__m512d);
__m512d _ZGVeN8v_erf(__m512d);
static inline v8d vexp(v8d x, int libm) { return libm ? lexp(x) : (v8d)_ZGVeN8v_exp((__m512d)x); }
static inline v8d verf(v8d x, int libm) { return libm ? lerf(x) : (v8d)_ZGVeN8v_erf((__m512d)x); }
static inline v8d vsqrt(v8d x) { return (v8d)_mm512_sqrt_pd((__m512d)x); }
#define VARIANT "avx512-libmvec"
#else
static inline v8d vexp(v8d x, int libm) {
  (void)libm;
  return lexp(x);
}
static inline v8d verf(v8d x, int libm) {
  (void)libm;
  return lerf(x);
}
static inline v8d vsqrt(v8d x) {
  for (int i = 0; i < W; i++) x[i] = sqrt(x[i]);
  return x;
}
#define VARIANT "portable"
#endif

/* ---------------------------------------------------------------------- */
/* The partition function, 8 temperatures at a time */

/* Z for 8 temperatures: the table with gathered coefficients when every
 * lane is inside it, else lane by lane (lte_z_partition: the same bits). */
static inline v8d z_vec(const lte_kernel_model *M, v8d T) {
  v8l bits = (v8l)T;
  v8l e = (bits >> 52) - 1023;
  v8d m = (v8d)((bits & 0x000fffffffffffffLL) | 0x3ff0000000000000LL);
  v8d u = (m - 1.0) * LTE_ZT_SUB;
  v8l j = __builtin_convertvector(u, v8l);
  v8d s = 2.0 * (u - __builtin_convertvector(j, v8d)) - 1.0;
  v8l piece = e * LTE_ZT_SUB + j;
  int fast = all_set((v8l)(T >= 1.0) & (v8l)(T < (double)(1 << LTE_ZT_OCT)) & (v8l)(j < LTE_ZT_SUB));
  if (fast && M->any_zdirect)
    for (int i = 0; i < W; i++) fast &= !M->zdirect[piece[i]];
  if (!fast) {
    v8d Z;
    for (int i = 0; i < W; i++)
      Z[i] = lte_z_partition(M->nlev, M->neg_e_over_k, M->g, M->ztab, M->zdirect, T[i]);
    return Z;
  }
  v8l base = piece * LTE_ZT_NC;
  v8d b1 = splat(0), b2 = splat(0), s2 = 2.0 * s, c;
  for (int k = LTE_ZT_NC - 1; k >= 0; k--) {
#if defined(__AVX512F__)
    c = (v8d)_mm512_i64gather_pd((__m512i)(base + k), M->ztab, 8);
#else
    for (int i = 0; i < W; i++) c[i] = M->ztab[base[i] + k];
#endif
    if (k == 0) return c + s * b1 - b2;
    v8d b0 = c + s2 * b1 - b2;
    b2 = b1;
    b1 = b0;
  }
  return b1; /* not reached */
}

/* ---------------------------------------------------------------------- */
/* The kernel */

typedef struct {
  int nzp;  /* nz rounded up to W */
  const double *T, *n, *v;        /* ray inputs, float64: the caller's, or: */
  double *T_buf, *n_buf, *v_buf;  /* copies (float32 inputs, or padding to nzp) */
  const double *pl, *pu;          /* non-LTE populations (NULL: LTE), or: */
  double *pl_buf, *pu_buf;        /* their copies */
  double *S, *adx, *iw, *shift;   /* per cell */
  double *b, *eb, *er;            /* per cell, W frequencies */
  double *pe, *pr;                /* packed exp / erf arguments and results */
  double *dtau, *tau, *em;        /* per segment / cell, W frequencies */
} workspace;

static int ws_alloc(workspace *w, int nz) {
  memset(w, 0, sizeof *w);
  w->nzp = (nz + W - 1) / W * W;
  size_t len = (size_t)w->nzp + W; /* one spare vector: segment loads read k+1 */
  double *all = calloc((9 + 8 * W) * len, sizeof(double));
  if (!all) return -1;
  double **p[] = {&w->T_buf, &w->n_buf, &w->v_buf, &w->S, &w->adx, &w->iw, &w->shift,
                  &w->pl_buf, &w->pu_buf};
  for (int i = 0; i < 9; i++) *p[i] = all + (size_t)i * len;
  double **q[] = {&w->b, &w->eb, &w->er, &w->pe, &w->pr, &w->dtau, &w->tau, &w->em};
  for (int i = 0; i < 8; i++) *q[i] = all + 9 * len + (size_t)i * W * len;
  return 0;
}
static void ws_free(workspace *w) { free(w->T_buf); }

/* Per-cell constants for cells [0, nzp): populations (LTE over all levels),
 * S, a*dx, 1/width, 1+v/c. */
static void cells(const lte_kernel_model *M, workspace *w) {
  const double vt2 = M->vt2;
  const double eta_c = M->eta_c;
  const double inv_c = M->inv_c;
  for (int z = 0; z < w->nzp; z += W) {
    v8d T = ld(w->T + z);
    v8d pl, pu;
    if (w->pl) { /* non-LTE: the given populations */
      pl = ld(w->pl + z);
      pu = ld(w->pu + z);
    } else {
      v8d invT = 1.0 / T;
      v8d Z;
      if (M->libm)
        for (int i = 0; i < W; i++) Z[i] = lte_z_direct(M->nlev, M->neg_e_over_k, M->g, T[i]);
      else
        Z = z_vec(M, T);
      v8d r = 1.0 / Z;
      pl = (M->g_l * vexp(M->neg_e_over_k_l * invT, M->libm)) * r;
      pu = (M->g_u * vexp(M->neg_e_over_k_u * invT, M->libm)) * r;
    }
    v8d eta = eta_c * pu;
    v8d chi = M->fac * (M->B_lu * pl - M->B_ul * pu);
    /* chi == 0 (populations underflow, T < ~0.05 K): S = 0, see lte_cell_eval */
    st(w->S + z, (v8d)((v8l)(eta / chi) & (chi != 0.0)));
    v8d iw = 1.0 / (M->nu0_over_c * vsqrt(M->two_k_over_m * T + vt2));
    st(w->iw + z, iw);
    st(w->adx + z, (((INV_SQRT_PI * iw) * chi) * ld(w->n + z)) * M->dx);
    st(w->shift + z, 1.0 + ld(w->v + z) * inv_c);
  }
}

/* exp(-x) for x >= 0 where it is not exactly 0: from x = 746 on it is 0 in
 * libm, and libmvec hands such lanes to libm one by one (~70 ns each), so
 * they are set directly. */
#define EXP_ZERO 746.0

/* b, exp(-b^2) and erf(b) of every cell at nb frequencies. Far in the wings
 * the results are exact constants (erf = +-1 from |b| = 5.93 on in libm and
 * libmvec alike, checked over [5.95, 1e300]; exp(-b^2) = 0 from b^2 = 746
 * on): those lanes are set directly, the others packed into full vectors
 * (the 7 channels of a ray mostly see a cell in different wings). */
static void profiles(const lte_kernel_model *M, workspace *w, const double *nu, int nb) {
  const size_t len = (size_t)w->nzp + W;
  const double nu0 = M->nu0;
  int ne = 0, nr = 0;
  for (int f = 0; f < nb; f++)
    for (int z = 0; z < w->nzp; z += W) {
      v8d b = ld(w->iw + z) * (ld(w->shift + z) * nu[f] - nu0);
      v8d bb = b * b;
      st(w->b + f * len + z, b);
      ne += pack(w->pe + ne, lanes(~(v8l)(bb >= EXP_ZERO)), -bb);
      nr += pack(w->pr + nr, lanes(~(v8l)(bb >= 36.0)), b);
    }
  st(w->pe + ne, splat(0)); /* the lanes after the last packed one: cheap, finite */
  st(w->pr + nr, splat(0));
  for (int i = 0; i < ne; i += W) st(w->pe + i, vexp(ld(w->pe + i), M->libm));
  for (int i = 0; i < nr; i += W) st(w->pr + i, verf(ld(w->pr + i), M->libm));
  const long long sign = (long long)0x8000000000000000ULL;
  ne = nr = 0;
  for (int f = 0; f < nb; f++)
    for (int z = 0; z < w->nzp; z += W) {
      v8d b = ld(w->b + f * len + z);
      v8d bb = b * b;
      unsigned me = lanes(~(v8l)(bb >= EXP_ZERO)), mr = lanes(~(v8l)(bb >= 36.0));
      st(w->eb + f * len + z, unpack(w->pe + ne, me, splat(0)));
      st(w->er + f * len + z, unpack(w->pr + nr, mr, (v8d)(((v8l)b & sign) | (v8l)splat(1.0))));
      ne += __builtin_popcount(me);
      nr += __builtin_popcount(mr);
    }
}

/* Optical depths of the segments of one ray at one frequency into dtau, from
 * its b, exp(-b^2), erf(b). */
static void segments(workspace *w, int nz, const double *bf, const double *ebf, const double *erf_,
                     double *dtau) {
  const int nseg = nz - 1;
  for (int k = 0; k < nseg; k += W) {
    v8d a0 = ld(w->adx + k), a1 = ld(w->adx + k + 1);
    v8d b0 = ld(bf + k), b1 = ld(bf + k + 1);
    v8d eb0 = ld(ebf + k), eb1 = ld(ebf + k + 1);
    v8d er0 = ld(erf_ + k), er1 = ld(erf_ + k + 1);
    LTE_SEG_DTAU(v8d, a0, a1, b0, b1, eb0, eb1, er0, er1, b10, d, near);
    st(dtau + k, blend((v8l)(vabs(b10) < 1.0e-4), near, d));
  }
}

/* Formal solution of one ray at one frequency, S linear in tau. */
static double formal(const lte_kernel_model *M, workspace *w, int nz, const double *dtau,
                     const double *tau, double *em, double bdy) {
  const int nzp = w->nzp, nseg = nz - 1;
  for (int z = 0; z < nzp; z += W) {
    v8d t = ld(tau + z);
    v8l zero = (v8l)(t >= EXP_ZERO);
    st(em + z, all_set(zero) ? splat(0) : (v8d)(~zero & (v8l)vexp(blend(zero, splat(0), -t), M->libm)));
  }
  v8d acc = splat(0);
  const int corrected = M->corrected_taylor;
  for (int k = 0; k < nseg; k += W) {
    v8d D = ld(dtau + k);
    v8d S0 = ld(w->S + k), S1 = ld(w->S + k + 1);
    v8d em0 = ld(em + k), em1 = ld(em + k + 1);
    /* behind an opaque layer every term is exactly 0 */
    if (all_set((v8l)(em0 == 0.0)) && all_set((v8l)(em1 == 0.0))) continue;
    LTE_SEG_FORMAL(v8d, D, S0, S1, em0, em1, corrected, r, taylor);
    r = blend((v8l)(D < 1.0e-4), taylor, r);
    if (k + W > nseg) { /* lanes past the last segment */
      v8l live;
      for (int i = 0; i < W; i++) live[i] = k + i < nseg ? -1 : 0;
      r = blend(live, r, splat(0));
    }
    acc = acc + r;
  }
  double sum = 0;
  for (int i = 0; i < W; i++) sum += acc[i];
  double I = bdy * em[nz - 1] + sum;
  return M->take_abs ? fabs(I) : I;
}

/* Up to W frequencies of one ray. The running sums tau (a recurrence along
 * z) of the W frequencies advance together, so their additions overlap. */
static void ray_block(const lte_kernel_model *M, workspace *w, int nz, const double *nu, int nb,
                      const double *bdy, double *out) {
  const size_t len = (size_t)w->nzp + W;
  const int nseg = nz - 1;
  profiles(M, w, nu, nb);
  for (int f = 0; f < nb; f++)
    segments(w, nz, w->b + f * len, w->eb + f * len, w->er + f * len, w->dtau + f * len);
  double t[W] = {0};
  for (int f = 0; f < nb; f++) w->tau[f * len] = 0;
  for (int k = 0; k < nseg; k++)
    for (int f = 0; f < nb; f++) {
      t[f] = t[f] + w->dtau[f * len + k];
      w->tau[f * len + k + 1] = t[f];
    }
  for (int f = 0; f < nb; f++) {
    double *tau = w->tau + f * len;
    for (int z = nz; z < w->nzp; z++) tau[z] = tau[nz - 1];
    out[f] = formal(M, w, nz, w->dtau + f * len, tau, w->em + f * len, bdy[f]);
  }
}

/* ---------------------------------------------------------------------- */
/* The batch: its rays over OpenMP threads */

/* Copy ray `off` of cube c into the workspace (float64). Returns whether
 * every cell is valid (lte_kernel_cell_ok). */
static int load_ray(const lte_kernel_batch *B, double c_light, int c, size_t off, workspace *w) {
  const int nz = B->nz;
  if (B->dtype == LTE_KERNEL_F32) {
    const float *v = (const float *)B->v[c] + off, *T = (const float *)B->T[c] + off,
                *n = (const float *)B->n[c] + off;
    for (int z = 0; z < nz; z++) w->v_buf[z] = v[z], w->T_buf[z] = T[z], w->n_buf[z] = n[z];
    w->v = w->v_buf, w->T = w->T_buf, w->n = w->n_buf;
  } else if (nz == w->nzp) { /* no padding: read the caller's arrays in place */
    w->v = (const double *)B->v[c] + off;
    w->T = (const double *)B->T[c] + off;
    w->n = (const double *)B->n[c] + off;
  } else {
    memcpy(w->v_buf, (const double *)B->v[c] + off, nz * sizeof(double));
    memcpy(w->T_buf, (const double *)B->T[c] + off, nz * sizeof(double));
    memcpy(w->n_buf, (const double *)B->n[c] + off, nz * sizeof(double));
    w->v = w->v_buf, w->T = w->T_buf, w->n = w->n_buf;
  }
  /* one branch-free pass (NaN fails every comparison) */
  int ok = 1;
  for (int z = 0; z < nz; z++) ok &= lte_kernel_cell_ok(w->v[z], w->T[z], w->n[z], c_light);
  if (!ok) return 0;
  for (int z = nz; z < w->nzp; z++) { /* padding (copies only): finite copies of the last cell */
    w->v_buf[z] = w->v[nz - 1];
    w->T_buf[z] = w->T[nz - 1];
    w->n_buf[z] = w->n[nz - 1];
  }
  w->pl = w->pu = NULL;
  if (B->pop_l) { /* non-LTE populations: always copied (and padded) */
    for (int z = 0; z < nz; z++) {
      if (B->dtype == LTE_KERNEL_F32)
        w->pl_buf[z] = ((const float *)B->pop_l[c])[off + z],
        w->pu_buf[z] = ((const float *)B->pop_u[c])[off + z];
      else
        w->pl_buf[z] = ((const double *)B->pop_l[c])[off + z],
        w->pu_buf[z] = ((const double *)B->pop_u[c])[off + z];
      ok &= lte_kernel_pop_ok(w->pl_buf[z], w->pu_buf[z]);
    }
    if (!ok) return 0;
    for (int z = nz; z < w->nzp; z++) w->pl_buf[z] = w->pl_buf[nz - 1], w->pu_buf[z] = w->pu_buf[nz - 1];
    w->pl = w->pl_buf, w->pu = w->pu_buf;
  }
  return 1;
}

/* The float32 path (lte_kernel_model.f32): the host-compiled bodies of
 * lte_kernel_body.h, one ray per call (a view of one ray: its cells in the
 * caller's cube, scratch of nz cells), OpenMP threads over the rays. */
static int cpu_solve_f32(const lte_kernel_model *M, const lte_kernel_batch *B) {
  const int nf = B->nf, nz = B->nz;
  const long long rays = (long long)B->nx * B->ny, total = rays * B->ncube;
  const size_t esz = B->dtype == LTE_KERNEL_F32 ? 4 : 8;
  int bad = 0, alloc_failed = 0;
  int nt = B->threads > 0 ? B->threads : omp_get_max_threads();
#pragma omp parallel num_threads(nt)
  {
    double *scratch = malloc(4 * (size_t)nz * sizeof(double));
    if (!scratch) {
#pragma omp atomic write
      alloc_failed = 1;
    }
#pragma omp for schedule(dynamic, 16)
    for (long long r = 0; r < total; r++) {
      if (!scratch) continue;
      const int c = (int)(r / rays);
      const long long pix = r % rays;
      const size_t off = (size_t)pix * nz * esz;
      int flag = 0;
      lte_body_view V = {.nray = 1, .npix = 1, .nz = nz, .nf = nf, .dtype = B->dtype,
                         .v = (const char *)B->v[c] + off, .T = (const char *)B->T[c] + off,
                         .n = (const char *)B->n[c] + off,
                         .pl = B->pop_l ? (const char *)B->pop_l[c] + off : NULL,
                         .pu = B->pop_u ? (const char *)B->pop_u[c] + off : NULL,
                         .freqs = B->freqs, .background = B->background,
                         .background_map = B->background_map ? B->background_map + pix * nf : NULL,
                         .S = scratch, .adx = scratch + nz, .iw = scratch + 2 * (size_t)nz,
                         .shift = scratch + 3 * (size_t)nz, .bad = &flag,
                         .image = B->image[c] + pix * nf};
      lte_body_run_host(M, &V);
      if (flag) {
#pragma omp atomic write
        bad = 1;
      }
    }
    free(scratch);
  }
  if (alloc_failed) CE_FAIL("LTE solver: out of memory for the ray workspace (nz = %d)", nz);
  return bad ? LTE_KERNEL_BAD_INPUT : 0;
}

static int cpu_solve(const lte_kernel_model *M, const lte_kernel_batch *B) {
  if (M->f32) return cpu_solve_f32(M, B);
  const int nf = B->nf, ny = B->ny, nz = B->nz;
  const long long rays = (long long)B->nx * ny, total = rays * B->ncube;
  int bad = 0, alloc_failed = 0;
  int nt = B->threads > 0 ? B->threads : omp_get_max_threads();
#pragma omp parallel num_threads(nt)
  {
    workspace w;
    int ok = ws_alloc(&w, nz) == 0;
    if (!ok) {
#pragma omp atomic write
      alloc_failed = 1;
    }
#pragma omp for schedule(dynamic, 16)
    for (long long r = 0; r < total; r++) {
      if (!ok) continue;
      int c = (int)(r / rays);
      long long pix = r % rays;
      double *img = B->image[c] + (size_t)pix * nf;
      if (!load_ray(B, M->c, c, (size_t)pix * nz, &w)) {
#pragma omp atomic write
        bad = 1;
        for (int f = 0; f < nf; f++) img[f] = NAN;
        continue;
      }
      cells(M, &w);
      for (int f0 = 0; f0 < nf; f0 += W) {
        int nb = nf - f0 < W ? nf - f0 : W;
        double bdy[W];
        for (int f = 0; f < nb; f++)
          bdy[f] = B->background_map ? B->background_map[(size_t)pix * nf + f0 + f] : B->background;
        ray_block(M, &w, nz, B->freqs + f0, nb, bdy, img + f0);
      }
    }
    if (ok) ws_free(&w);
  }
  if (alloc_failed) CE_FAIL("LTE solver: out of memory for the ray workspace (nz = %d)", nz);
  return bad ? LTE_KERNEL_BAD_INPUT : 0;
}

const lte_kernel lte_kernel_cpu = {"cpu", VARIANT, cpu_solve, NULL, NULL};
