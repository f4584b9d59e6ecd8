/* lte.c - the LTE line imager (see lte.h and docs/physics.md).
 *
 * Every expression below follows Pomme's operation order (parenthesised as
 * Pomme evaluates it), because optically thin segments cancel: reordering a
 * product changes the last bit of an intermediate, and the per-segment
 * optical depth can amplify that by 1e4 or more. The build disables FMA
 * contraction for this file for the same reason.
 *
 * Layout of the work: one ray (pixel) at a time per thread. Per cell, 8
 * cells at once: populations, S, a*dx, 1/width, Doppler factor. For up to 8
 * frequencies together: b per cell, then exp(-b^2) and erf(b) only for the
 * lanes that need a call, packed into full vectors (the rest are exact
 * constants in the wings). Per frequency: the segment optical depths; the
 * running sum tau (scalar: it is a recurrence; the frequencies interleave);
 * exp(-tau); the formal solution per segment, summed.
 */
#include "solver/lte.h"

#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"

#define SQRT_PI 1.7724538509055159 /* np.sqrt(np.pi) */
#define INV_SQRT_PI (1.0 / SQRT_PI)
#define PI 3.141592653589793

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
 * are tested against (lte_options.libm). */
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
const char *lte_kernel_name(void) { return "avx512-libmvec"; }
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
const char *lte_kernel_name(void) { return "portable"; }
#endif

/* ---------------------------------------------------------------------- */
/* Line constants */

typedef struct {
  double e;
  double g;
} level_eg;

/* The partition function Z(T) = sum_i g_i exp(-E_i/(k T)) over all levels
 * depends on T alone, and summing it directly costs one exp per level and
 * cell (41 for CO, 91 for SO): most of the solver's time. The kernel reads
 * it instead from Chebyshev pieces: each octave [2^e, 2^(e+1)) of T from
 * 1 K to 32768 K is cut into ZT_SUB equal pieces, each with a degree
 * ZT_NC-1 interpolant (128 pieces of degree 6: fewer gathered coefficients
 * per cell than 64 of degree 9, measured 0.8 ms faster per 64^3 cube) at Chebyshev nodes of the direct sum. Every piece is
 * checked against the direct sum at points between the nodes when the table
 * is built; one that is off by more than ZT_TOL relative is marked to use
 * the direct sum instead. So Z differs from Pomme's by <= 5e-14 relative, far
 * inside the 1e-7 equivalence; S, eta and chi follow it linearly. */
#define ZT_OCT 15
#define ZT_SUB 128
#define ZT_NC 7
#define ZT_TOL 5e-14

static double z_direct(const lte_line *L, double T) {
  double invT = 1.0 / T, Z = 0;
  for (int i = 0; i < L->nlev; i++) Z += L->g[i] * exp(L->neg_e_over_k[i] * invT);
  return Z;
}

static inline double cheb_eval(const double *c, double s) {
  double b1 = 0, b2 = 0, s2 = 2 * s;
  for (int k = ZT_NC - 1; k >= 1; k--) {
    double b0 = c[k] + s2 * b1 - b2;
    b2 = b1;
    b1 = b0;
  }
  return c[0] + s * b1 - b2;
}

/* Piece index and local coordinate s in [-1, 1] of T, or -1 outside. */
static inline int z_piece(double T, double *s) {
  if (!(T >= 1.0 && T < (double)(1 << ZT_OCT))) return -1;
  uint64_t bits;
  memcpy(&bits, &T, 8);
  int e = (int)(bits >> 52) - 1023;
  bits = (bits & 0x000fffffffffffffULL) | 0x3ff0000000000000ULL;
  double m;
  memcpy(&m, &bits, 8);
  double u = (m - 1.0) * ZT_SUB;
  int j = (int)u;
  if (j >= ZT_SUB) j = ZT_SUB - 1;
  *s = 2.0 * (u - j) - 1.0;
  return e * ZT_SUB + j;
}

static double piece_T(int piece, double s) {
  int e = piece / ZT_SUB, j = piece % ZT_SUB;
  return ldexp(1.0 + (j + 0.5 * (s + 1.0)) / ZT_SUB, e);
}

static int z_table_build(lte_line *L) {
  const int np = ZT_OCT * ZT_SUB;
  L->ztab = ce_malloc_array((size_t)np * ZT_NC, sizeof(double), "partition table");
  L->zdirect = ce_calloc_array((size_t)np, 1, "partition table");
  L->zpieces = np;
  if (!L->ztab || !L->zdirect) return -1;
  for (int p = 0; p < np; p++) {
    double f[ZT_NC], *c = L->ztab + (size_t)p * ZT_NC;
    for (int n = 0; n < ZT_NC; n++) f[n] = z_direct(L, piece_T(p, cos(PI * (n + 0.5) / ZT_NC)));
    for (int k = 0; k < ZT_NC; k++) {
      double a = 0;
      for (int n = 0; n < ZT_NC; n++) a += f[n] * cos(PI * k * (n + 0.5) / ZT_NC);
      c[k] = (k == 0 ? 1.0 : 2.0) * a / ZT_NC;
    }
    for (int q = 0; q <= 6; q++) { /* check between and beyond the nodes */
      double s = -1.0 + q / 3.0, zt = cheb_eval(c, s), zd = z_direct(L, piece_T(p, s));
      if (!(fabs(zt - zd) <= ZT_TOL * zd)) L->zdirect[p] = L->any_zdirect = 1;
    }
  }
  return 0;
}

/* Z for 8 temperatures: the table with gathered coefficients when every
 * lane is inside it, else lane by lane. */
static inline v8d z_vec(const lte_line *L, v8d T) {
  v8l bits = (v8l)T;
  v8l e = (bits >> 52) - 1023;
  v8d m = (v8d)((bits & 0x000fffffffffffffLL) | 0x3ff0000000000000LL);
  v8d u = (m - 1.0) * ZT_SUB;
  v8l j = __builtin_convertvector(u, v8l);
  v8d s = 2.0 * (u - __builtin_convertvector(j, v8d)) - 1.0;
  v8l piece = e * ZT_SUB + j;
  int fast = all_set((v8l)(T >= 1.0) & (v8l)(T < (double)(1 << ZT_OCT)) & (v8l)(j < ZT_SUB));
  if (fast && L->any_zdirect)
    for (int i = 0; i < W; i++) fast &= !L->zdirect[piece[i]];
  if (!fast) {
    v8d Z;
    for (int i = 0; i < W; i++) Z[i] = lte_partition(L, T[i]);
    return Z;
  }
  v8l base = piece * ZT_NC;
  v8d b1 = splat(0), b2 = splat(0), s2 = 2.0 * s, c;
  for (int k = ZT_NC - 1; k >= 0; k--) {
#if defined(__AVX512F__)
    c = (v8d)_mm512_i64gather_pd((__m512i)(base + k), L->ztab, 8);
#else
    for (int i = 0; i < W; i++) c[i] = L->ztab[base[i] + k];
#endif
    if (k == 0) return c + s * b1 - b2;
    v8d b0 = c + s2 * b1 - b2;
    b2 = b1;
    b1 = b0;
  }
  return b1; /* not reached */
}

double lte_partition(const lte_line *L, double T) {
  double s;
  int p = z_piece(T, &s);
  if (p < 0 || L->zdirect[p]) return z_direct(L, T);
  return cheb_eval(L->ztab + (size_t)p * ZT_NC, s);
}

int lte_line_init(lte_line *L, const lamda_molecule *m, int transition, double mass_amu) {
  memset(L, 0, sizeof *L);
  CE_TRY(lamda_check_transition(m, transition));
  const lamda_line *t = &m->lines[transition - 1];
  L->transition = transition;
  L->upper = t->upper;
  L->lower = t->lower;
  L->nlev = m->nlev;
  L->mass_amu = mass_amu > 0 ? mass_amu : m->weight;
  if (!(L->mass_amu > 0) || !isfinite(L->mass_amu))
    return ce_err("molecular mass = %g u, expected > 0", L->mass_amu);
  level_eg *lv = ce_malloc_array((size_t)m->nlev, sizeof *lv, "LTE levels");
  L->neg_e_over_k = ce_malloc_array((size_t)m->nlev, sizeof(double), "LTE levels");
  L->g = ce_malloc_array((size_t)m->nlev, sizeof(double), "LTE levels");
  if (!lv || !L->neg_e_over_k || !L->g) {
    free(lv);
    lte_line_free(L);
    return -1;
  }
  /* Pomme: energy *= 1.0E+2*HH*CC (cm^-1 -> J); exponent = (-energy/KB)/T */
  const double cm_to_j = (1.0e2 * LTE_H) * LTE_C;
  for (int i = 0; i < m->nlev; i++) {
    double e_j = m->levels[i].energy_cm * cm_to_j;
    lv[i].e = -e_j / LTE_KB;
    lv[i].g = m->levels[i].weight;
  }
  L->neg_e_over_k_u = lv[t->upper - 1].e;
  L->neg_e_over_k_l = lv[t->lower - 1].e;
  L->g_u = lv[t->upper - 1].g;
  L->g_l = lv[t->lower - 1].g;
  for (int i = 0; i < m->nlev; i++) { /* file order, as Pomme sums */
    L->neg_e_over_k[i] = lv[i].e;
    L->g[i] = lv[i].g;
  }
  free(lv);
  if (z_table_build(L) < 0) {
    lte_line_free(L);
    return -1;
  }
  /* Pomme's LineData/Line constants */
  L->nu0 = t->freq_ghz * 1.0e9;
  L->A = t->A;
  L->B_ul = (L->A * (LTE_C * LTE_C)) / ((2.0 * LTE_H) * pow(L->nu0, 3));
  L->B_lu = (L->g_u / L->g_l) * L->B_ul;
  L->fac = (LTE_H * L->nu0) / (4.0 * PI);
  L->nu0_over_c = L->nu0 / LTE_C;
  L->two_k_over_m = (2.0 * LTE_KB) / (L->mass_amu * LTE_AMU);
  return 0;
}

void lte_line_free(lte_line *L) {
  if (!L) return;
  free(L->neg_e_over_k);
  free(L->g);
  free(L->ztab);
  free(L->zdirect);
  L->neg_e_over_k = L->g = L->ztab = NULL;
  L->zdirect = NULL;
}

void lte_cell_eval(const lte_line *L, double T, double vturb, lte_cell *o) {
  double invT = 1.0 / T, Z = z_direct(L, T);
  double r = 1.0 / Z;
  o->Z = Z;
  o->p_l = (L->g_l * exp(L->neg_e_over_k_l * invT)) * r;
  o->p_u = (L->g_u * exp(L->neg_e_over_k_u * invT)) * r;
  o->eta = (L->fac * L->A) * o->p_u;
  o->chi = L->fac * (L->B_lu * o->p_l - L->B_ul * o->p_u);
  /* Below ~0.05 K both levels' populations underflow to 0: the cell neither
   * emits nor absorbs, and its S (0/0 in Pomme, which then returns NaN
   * images) is set to 0, the value whose contribution is the true one. */
  o->S = o->chi != 0 ? o->eta / o->chi : 0.0;
  o->iw = 1.0 / (L->nu0_over_c * sqrt(L->two_k_over_m * T + vturb * vturb));
}

/* ---------------------------------------------------------------------- */
/* The kernel */

typedef struct {
  int nzp;  /* nz rounded up to W */
  const double *T, *n, *v;        /* ray inputs, float64: the caller's, or: */
  double *T_buf, *n_buf, *v_buf;  /* copies (float32 inputs, or padding to nzp) */
  double *S, *adx, *iw, *shift;   /* per cell */
  double *b, *eb, *er;            /* per cell, W frequencies */
  double *pe, *pr;                /* packed exp / erf arguments and results */
  double *dtau, *tau, *em;        /* per segment / cell, W frequencies */
} workspace;

static int ws_alloc(workspace *w, int nz) {
  memset(w, 0, sizeof *w);
  w->nzp = (nz + W - 1) / W * W;
  size_t len = (size_t)w->nzp + W; /* one spare vector: segment loads read k+1 */
  double *all = calloc((7 + 8 * W) * len, sizeof(double));
  if (!all) return -1;
  double **p[] = {&w->T_buf, &w->n_buf, &w->v_buf, &w->S, &w->adx, &w->iw, &w->shift};
  for (int i = 0; i < 7; i++) *p[i] = all + (size_t)i * len;
  double **q[] = {&w->b, &w->eb, &w->er, &w->pe, &w->pr, &w->dtau, &w->tau, &w->em};
  for (int i = 0; i < 8; i++) *q[i] = all + 7 * len + (size_t)i * W * len;
  return 0;
}
static void ws_free(workspace *w) { free(w->T_buf); }

/* Per-cell constants for cells [0, nzp): populations (LTE over all levels),
 * S, a*dx, 1/width, 1+v/c. */
static void cells(const lte_line *L, const lte_options *o, workspace *w) {
  const double vt2 = o->vturb * o->vturb;
  const double eta_c = L->fac * L->A;
  for (int z = 0; z < w->nzp; z += W) {
    v8d T = ld(w->T + z);
    v8d invT = 1.0 / T;
    v8d Z;
    if (o->libm)
      for (int i = 0; i < W; i++) Z[i] = z_direct(L, T[i]);
    else
      Z = z_vec(L, T);
    v8d r = 1.0 / Z;
    v8d pl = (L->g_l * vexp(L->neg_e_over_k_l * invT, o->libm)) * r;
    v8d pu = (L->g_u * vexp(L->neg_e_over_k_u * invT, o->libm)) * r;
    v8d eta = eta_c * pu;
    v8d chi = L->fac * (L->B_lu * pl - L->B_ul * pu);
    /* chi == 0 (populations underflow, T < ~0.05 K): S = 0, see lte_cell_eval */
    st(w->S + z, (v8d)((v8l)(eta / chi) & (chi != 0.0)));
    v8d iw = 1.0 / (L->nu0_over_c * vsqrt(L->two_k_over_m * T + vt2));
    st(w->iw + z, iw);
    st(w->adx + z, (((INV_SQRT_PI * iw) * chi) * ld(w->n + z)) * o->dx);
    st(w->shift + z, 1.0 + ld(w->v + z) * (1.0 / LTE_C));
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
static void profiles(const lte_line *L, const lte_options *o, workspace *w, const double *nu,
                     int nb) {
  const size_t len = (size_t)w->nzp + W;
  const double nu0 = L->nu0;
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
  for (int i = 0; i < ne; i += W) st(w->pe + i, vexp(ld(w->pe + i), o->libm));
  for (int i = 0; i < nr; i += W) st(w->pr + i, verf(ld(w->pr + i), o->libm));
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
    v8d b10 = b1 - b0, a01 = a0 + a1;
    v8d sp_a1b0 = (SQRT_PI * a1) * b0;
    v8d sp_a0b1 = (SQRT_PI * a0) * b1;
    v8d d = (a1 - a0) * (eb0 - eb1);
    d = d + (sp_a1b0 - sp_a0b1) * (er0 - er1);
    d = d * (0.5 / (b10 * b10 + 1.0e-30));
    v8d near = (0.5 * a01) * eb0 - ((1.0 / 3.0) * (a01 + a1)) * ((eb0 * b0) * b10);
    st(dtau + k, blend((v8l)(vabs(b10) < 1.0e-4), near, d));
  }
}

/* Formal solution of one ray at one frequency, S linear in tau. */
static double formal(const lte_options *o, workspace *w, int nz, const double *dtau,
                     const double *tau, double *em, double bdy) {
  const int nzp = w->nzp, nseg = nz - 1;
  for (int z = 0; z < nzp; z += W) {
    v8d t = ld(tau + z);
    v8l zero = (v8l)(t >= EXP_ZERO);
    st(em + z, all_set(zero) ? splat(0) : (v8d)(~zero & (v8l)vexp(blend(zero, splat(0), -t), o->libm)));
  }
  v8d acc = splat(0);
  const int corrected = o->corrected_taylor;
  for (int k = 0; k < nseg; k += W) {
    v8d D = ld(dtau + k);
    v8d S0 = ld(w->S + k), S1 = ld(w->S + k + 1);
    v8d em0 = ld(em + k), em1 = ld(em + k + 1);
    /* behind an opaque layer every term is exactly 0 */
    if (all_set((v8l)(em0 == 0.0)) && all_set((v8l)(em1 == 0.0))) continue;
    v8d r = S0 * (em1 - em0 * (1.0 - D));
    r = r + S1 * (em0 - em1 * (1.0 + D));
    r = r / (D + 1.0e-30);
    v8d c = 0.5 * D, f0 = c, f1 = c;
    c = c * ((1.0 / 3.0) * D);
    if (corrected) { /* exact: f0 = D/2 - D^2/6 + D^3/24, f1 = D/2 + D^2/6 + D^3/24 */
      f0 = f0 - c;
      f1 = f1 + c;
      c = c * ((1.0 / 4.0) * D);
      f0 = f0 + c;
      f1 = f1 + c;
    } else { /* Pomme: D^2 and D^3 signs swapped */
      f0 = f0 + c;
      f1 = f1 - c;
      c = c * ((1.0 / 4.0) * D);
      f0 = f0 + c;
      f1 = f1 - c;
    }
    v8d taylor = S0 * (em0 * f0) + S1 * (em1 * f1);
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
  return o->take_abs ? fabs(I) : I;
}

/* Up to W frequencies of one ray. The running sums tau (a recurrence along
 * z) of the W frequencies advance together, so their additions overlap. */
static void ray_block(const lte_line *L, const lte_options *o, workspace *w, int nz,
                      const double *nu, int nb, const double *bdy, double *out) {
  const size_t len = (size_t)w->nzp + W;
  const int nseg = nz - 1;
  profiles(L, o, w, nu, nb);
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
    out[f] = formal(o, w, nz, w->dtau + f * len, tau, w->em + f * len, bdy[f]);
  }
}

/* ---------------------------------------------------------------------- */
/* Driver: rays of one or more cubes over OpenMP threads */

typedef struct {
  int f32;
  const void *const *v, *const *T, *const *n;
} cube_inputs;

/* Copy ray `ray` of cube c into the workspace (float64), checking values.
 * Returns the z index of the first bad cell and its array (0 v, 1 T, 2 n),
 * or -1. */
static int load_ray(const cube_inputs *in, int c, size_t off, int nz, workspace *w, int *which) {
  if (in->f32) {
    const float *v = (const float *)in->v[c] + off, *T = (const float *)in->T[c] + off,
                *n = (const float *)in->n[c] + off;
    for (int z = 0; z < nz; z++) w->v_buf[z] = v[z], w->T_buf[z] = T[z], w->n_buf[z] = n[z];
    w->v = w->v_buf, w->T = w->T_buf, w->n = w->n_buf;
  } else if (nz == w->nzp) { /* no padding: read the caller's arrays in place */
    w->v = (const double *)in->v[c] + off;
    w->T = (const double *)in->T[c] + off;
    w->n = (const double *)in->n[c] + off;
  } else {
    memcpy(w->v_buf, (const double *)in->v[c] + off, nz * sizeof(double));
    memcpy(w->T_buf, (const double *)in->T[c] + off, nz * sizeof(double));
    memcpy(w->n_buf, (const double *)in->n[c] + off, nz * sizeof(double));
    w->v = w->v_buf, w->T = w->T_buf, w->n = w->n_buf;
  }
  /* one branch-free pass (NaN fails every comparison), then find the culprit */
  int ok = 1;
  for (int z = 0; z < nz; z++)
    ok &= (fabs(w->v[z]) < LTE_C) & (w->T[z] > 0) & (w->T[z] <= DBL_MAX) & (w->n[z] >= 0) &
          (w->n[z] <= DBL_MAX);
  if (!ok)
    for (int z = 0; z < nz; z++) {
      if (!(fabs(w->v[z]) < LTE_C)) { *which = 0; return z; }
      if (!(w->T[z] > 0 && w->T[z] <= DBL_MAX)) { *which = 1; return z; }
      if (!(w->n[z] >= 0 && w->n[z] <= DBL_MAX)) { *which = 2; return z; }
    }
  for (int z = nz; z < w->nzp; z++) { /* padding (copies only): finite copies of the last cell */
    w->v_buf[z] = w->v[nz - 1];
    w->T_buf[z] = w->T[nz - 1];
    w->n_buf[z] = w->n[nz - 1];
  }
  return -1;
}

static int check_args(const lte_line *L, const double *freqs, int nf, int nx, int ny, int nz,
                      const lte_options *o) {
  if (!L || !L->g) CE_FAIL("LTE solver: line not initialised");
  if (nf < 1 || nx < 1 || ny < 1 || nz < 1)
    CE_FAIL("LTE solver: cube %d x %d x %d with %d frequencies, expected all >= 1", nx, ny, nz,
            nf);
  if (nz > (1 << 24)) CE_FAIL("LTE solver: nz = %d too large", nz);
  if (!(o->dx > 0) || !isfinite(o->dx)) CE_FAIL("LTE solver: dx = %g, expected > 0", o->dx);
  if (!(o->vturb >= 0) || !isfinite(o->vturb))
    CE_FAIL("LTE solver: vturb = %g m/s, expected >= 0", o->vturb);
  if (!isfinite(o->background)) CE_FAIL("LTE solver: background = %g, expected finite", o->background);
  for (int f = 0; f < nf; f++)
    if (!(freqs[f] > 0) || !isfinite(freqs[f]))
      CE_FAIL("LTE solver: frequency %d = %g Hz, expected > 0", f, freqs[f]);
  return 0;
}

static int solve(const lte_line *L, const double *freqs, int nf, int ncube, int nx, int ny,
                 int nz, const cube_inputs *in, const lte_options *o, double *const *image) {
  CE_TRY(check_args(L, freqs, nf, nx, ny, nz, o));
  const long long rays = (long long)nx * ny, total = rays * ncube;
  long long bad = -1; /* first bad ray (cube-major), reported after the loop */
  int bad_z = 0, bad_which = 0, alloc_failed = 0;
  int nt = o->threads > 0 ? o->threads : omp_get_max_threads();
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
      int which, z = load_ray(in, c, (size_t)pix * nz, nz, &w, &which);
      double *img = image[c] + (size_t)pix * nf;
      if (z >= 0) {
#pragma omp critical(lte_bad)
        if (bad < 0 || r < bad) {
          bad = r;
          bad_z = z;
          bad_which = which;
        }
        for (int f = 0; f < nf; f++) img[f] = NAN;
        continue;
      }
      cells(L, o, &w);
      for (int f0 = 0; f0 < nf; f0 += W) {
        int nb = nf - f0 < W ? nf - f0 : W;
        double bdy[W];
        for (int f = 0; f < nb; f++)
          bdy[f] = o->background_map ? o->background_map[(size_t)pix * nf + f0 + f] : o->background;
        ray_block(L, o, &w, nz, freqs + f0, nb, bdy, img + f0);
      }
    }
    if (ok) ws_free(&w);
  }
  if (alloc_failed) CE_FAIL("LTE solver: out of memory for the ray workspace (nz = %d)", nz);
  if (bad >= 0) {
    int c = (int)(bad / rays);
    long long pix = bad % rays;
    int x = (int)(pix / ny), y = (int)(pix % ny);
    size_t off = (size_t)pix * nz + bad_z;
    static const char *names[3] = {"v_z", "T", "n"};
    static const char *expect[3] = {"finite with |v| < c", "finite and > 0 K",
                                    "finite and >= 0"};
    double val = in->f32 ? (double)((const float *const *)(bad_which == 0   ? in->v
                                                           : bad_which == 1 ? in->T
                                                                            : in->n))[c][off]
                         : ((const double *const *)(bad_which == 0   ? in->v
                                                    : bad_which == 1 ? in->T
                                                                     : in->n))[c][off];
    ce_err("%s[%d, %d, %d] = %g, expected %s", names[bad_which], x, y, bad_z, val,
           expect[bad_which]);
    if (ncube > 1) ce_err_prefix("cube %d", c);
    return -1;
  }
  return 0;
}

int lte_solve_cube(const lte_line *L, const double *freqs, int nf, int nx, int ny, int nz,
                   const double *v, const double *T, const double *n, const lte_options *opt,
                   double *image) {
  const void *pv = v, *pT = T, *pn = n;
  cube_inputs in = {0, &pv, &pT, &pn};
  return solve(L, freqs, nf, 1, nx, ny, nz, &in, opt, &image);
}

int lte_solve_cube_f32(const lte_line *L, const double *freqs, int nf, int nx, int ny, int nz,
                       const float *v, const float *T, const float *n, const lte_options *opt,
                       double *image) {
  const void *pv = v, *pT = T, *pn = n;
  cube_inputs in = {1, &pv, &pT, &pn};
  return solve(L, freqs, nf, 1, nx, ny, nz, &in, opt, &image);
}

int lte_solve_batch(const lte_line *L, const double *freqs, int nf, int ncube, int nx, int ny,
                    int nz, const double *const *v, const double *const *T,
                    const double *const *n, const lte_options *opt, double *const *image) {
  if (ncube < 1) CE_FAIL("LTE solver: %d cubes, expected >= 1", ncube);
  cube_inputs in = {0, (const void *const *)v, (const void *const *)T, (const void *const *)n};
  return solve(L, freqs, nf, ncube, nx, ny, nz, &in, opt, image);
}
