/* lte_kernel_cpu.c - the CPU backend of lte_kernel.h: the LTE imager's
 * kernel, vectors of the host's width, OpenMP threads over the rays of a
 * batch.
 *
 * Every expression below follows Pomme's operation order (parenthesised as
 * Pomme evaluates it), because optically thin segments cancel: reordering a
 * product changes the last bit of an intermediate, and the per-segment
 * optical depth can amplify that by 1e4 or more. The build disables FMA
 * contraction for solver/ for the same reason. These images are the
 * reference bits of the contract (lte_kernel.h): a change here must leave
 * them bit-identical. Subnormals are flushed to zero while it computes
 * (lte_kernel.h, "The float environment": gradual underflow's assists in
 * the line's far wings were most of its time on model cubes).
 *
 * Layout of the work: one ray (pixel) at a time per thread. Per cell, a
 * vector of cells at once (VW: 8, 4 or 2): populations, S, a*dx, 1/width,
 * Doppler factor. For up to NB = 8 frequencies together: b per cell, then exp(-b^2) and erf(b) only for the
 * lanes that need a call, packed into full vectors (the rest are exact
 * constants in the wings). Per frequency: the segment optical depths; the
 * running sum tau (scalar: it is a recurrence; the frequencies interleave);
 * exp(-tau); the formal solution per segment, summed in 8 partial sums
 * on every host.
 */
#include "solver/lte_kernel.h"

#include <float.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/vecmath.h"
#include "solver/lte_kernel_body.h" /* the segment arithmetic, shared with the device */

#define SQRT_PI 1.7724538509055159 /* np.sqrt(np.pi) */
#define INV_SQRT_PI (1.0 / SQRT_PI)

/* ---------------------------------------------------------------------- */
/* Vectors of the host's width (common/vecmath.h: VW doubles, 8 with
 * AVX-512, 4 with AVX2, 2 otherwise), GCC vector extensions. The kernel's
 * results do not depend on VW: every lane is computed alone, and the one
 * sum across lanes, the formal solution's, keeps LTE_BODY_LANES (8) partial
 * sums on every host, walked in vectors of VW. NB: the channels of a ray
 * taken together (their tau recurrences interleave). */
typedef vm_vd vd;
typedef vm_vl vl;
#define VW VM_ND
#define NB 8
#define NACC (LTE_BODY_LANES / VW) /* vectors of partial sums */
#define FULL VM_ALL_LANES          /* every lane's bit */

/* LOAD_STORE(ld, st, V, T): ld(p) the vector of type V at T *p, st(p, x)
 * stores x there (any alignment) */
#define LOAD_STORE(ld, st, V, T)                                      \
  static inline V ld(const T *p) {                                    \
    V r;                                                              \
    memcpy(&r, p, sizeof r);                                          \
    return r;                                                         \
  }                                                                   \
  static inline void st(T *p, V x) { memcpy(p, &x, sizeof x); }
LOAD_STORE(ld, st, vd, double)
static inline vd splat(double x) {
  vd r;
  for (int i = 0; i < VW; i++) r[i] = x;
  return r;
}
/* mask ? x : y, mask lanes all ones or all zeros */
static inline vd blend(vl mask, vd x, vd y) {
  return (vd)(((vl)x & mask) | ((vl)y & ~mask));
}
static inline vd vabs(vd x) { return (vd)((vl)x & 0x7fffffffffffffffLL); }

/* Packing (lane masks as bits: vm_lanes): the lanes of a mask stored contiguously
 * and back, so that exp/erf run on full vectors of the lanes that need them
 * (every routine here computes each lane from that lane alone, so the bits
 * do not depend on the packing). pack writes a whole vector at dst (zeros
 * after the packed lanes); dst needs VW doubles of room. Three forms with
 * the same results: AVX-512 (register compress + plain store: the memory
 * forms of compress are slow on some CPUs), AVX2 (a permutation from a
 * table), and lane by lane. */
#if defined(__AVX512F__)
static inline int pack(double *dst, unsigned m, vd x) {
  st(dst, (vd)_mm512_maskz_compress_pd((__mmask8)m, (__m512d)x));
  return __builtin_popcount(m);
}
/* The inverse of pack: lanes of m from src in order, the others from fill. */
static inline vd unpack(const double *src, unsigned m, vd fill) {
  return (vd)_mm512_mask_expand_pd((__m512d)fill, (__mmask8)m, (__m512d)ld(src));
}
#elif defined(__AVX2__)
/* For a 4-bit lane mask: the 32-bit indices that move its lanes to the
 * front (compress) and back (expand), and the mask as lanes (built once,
 * lane_tables_init); front[n]: the first n lanes */
static struct {
  int32_t compress[16][8], expand[16][8];
  int64_t mask[16][4], front[5][4];
} lane_tab;
static pthread_once_t lane_tab_once = PTHREAD_ONCE_INIT;
static void lane_tables_init(void) {
  for (int m = 0; m < 16; m++)
    for (int i = 0, k = 0; i < 4; i++) {
      lane_tab.mask[m][i] = m >> i & 1 ? -1 : 0;
      if (m >> i & 1) {
        lane_tab.compress[m][2 * k] = 2 * i, lane_tab.compress[m][2 * k + 1] = 2 * i + 1;
        lane_tab.expand[m][2 * i] = 2 * k, lane_tab.expand[m][2 * i + 1] = 2 * k + 1;
        k++;
      }
    }
  for (int n = 0; n <= 4; n++)
    for (int i = 0; i < 4; i++) lane_tab.front[n][i] = i < n ? -1 : 0;
}
static inline __m256i lut(const void *row) { return _mm256_loadu_si256((const __m256i *)row); }
static inline int pack(double *dst, unsigned m, vd x) {
  const int n = __builtin_popcount(m);
  const __m256i c = _mm256_permutevar8x32_epi32((__m256i)x, lut(lane_tab.compress[m]));
  _mm256_storeu_si256((__m256i *)dst, _mm256_and_si256(c, lut(lane_tab.front[n])));
  return n;
}
static inline vd unpack(const double *src, unsigned m, vd fill) {
  const __m256i e = _mm256_permutevar8x32_epi32(_mm256_loadu_si256((const __m256i *)src),
                                                lut(lane_tab.expand[m]));
  return (vd)_mm256_blendv_epi8((__m256i)fill, e, lut(lane_tab.mask[m]));
}
#else
static inline int pack(double *dst, unsigned m, vd x) {
  vd r = splat(0);
  for (int i = 0, k = 0; i < VW; i++)
    if (m >> i & 1) r[k++] = x[i];
  st(dst, r);
  return __builtin_popcount(m);
}
static inline vd unpack(const double *src, unsigned m, vd fill) {
  for (int i = 0, k = 0; i < VW; i++)
    if (m >> i & 1) fill[i] = src[k++];
  return fill;
}
#endif
static inline int all_set(vl m) { return vm_lanes(m) == FULL; }
/* exp and erf: libmvec's on AVX-512 and AVX2 builds (common/vecmath.h),
 * else libm's lane by lane; with M->libm ("literal" mode: lte_kernel_model.libm)
 * libm's on every build, the reference the vector routines are tested
 * against. They differ from libm by about an ulp; the tests compare both
 * against the literal reference. */
static inline vd vexp(vd x, int libm) { return libm ? vm_lexp(x) : vm_exp(x); }
static inline vd verf(vd x, int libm) { return libm ? vm_lerf(x) : vm_erf(x); }
static inline vd vsqrt(vd x) { return vm_sqrt(x); }
#if VECMATH_LIBMVEC
#define VARIANT VECMATH_ISA "-libmvec"
#else
#define VARIANT "portable"
#endif

/* ---------------------------------------------------------------------- */
/* The partition function, a vector of temperatures at a time */

/* Z for VW temperatures: the table with gathered coefficients when every
 * lane is inside it, else lane by lane (lte_z_partition: the same bits). */
static inline vd z_vec(const lte_kernel_model *M, vd T) {
  vl bits = (vl)T;
  vl e = (bits >> 52) - 1023;
  vd m = (vd)((bits & 0x000fffffffffffffLL) | 0x3ff0000000000000LL);
  vd u = (m - 1.0) * LTE_ZT_SUB;
  vl j = __builtin_convertvector(u, vl);
  vd s = 2.0 * (u - __builtin_convertvector(j, vd)) - 1.0;
  vl piece = e * LTE_ZT_SUB + j;
  int fast = all_set((vl)(T >= 1.0) & (vl)(T < (double)(1 << LTE_ZT_OCT)) & (vl)(j < LTE_ZT_SUB));
  if (fast && M->any_zdirect)
    for (int i = 0; i < VW; i++) fast &= !M->zdirect[piece[i]];
  if (!fast) {
    vd Z;
    for (int i = 0; i < VW; i++)
      Z[i] = lte_z_partition(M->nlev, M->neg_e_over_k, M->g, M->ztab, M->zdirect, T[i]);
    return Z;
  }
  vl base = piece * LTE_ZT_NC;
  vd b1 = splat(0), b2 = splat(0), s2 = 2.0 * s, c;
  for (int k = LTE_ZT_NC - 1; k >= 0; k--) {
#if defined(__AVX512F__)
    c = (vd)_mm512_i64gather_pd((__m512i)(base + k), M->ztab, 8);
#elif defined(__AVX2__)
    c = (vd)_mm256_i64gather_pd(M->ztab, (__m256i)(base + k), 8);
#else
    for (int i = 0; i < VW; i++) c[i] = M->ztab[base[i] + k];
#endif
    if (k == 0) return c + s * b1 - b2;
    vd b0 = c + s2 * b1 - b2;
    b2 = b1;
    b1 = b0;
  }
  return b1; /* not reached */
}

/* ---------------------------------------------------------------------- */
/* The kernel */

typedef struct {
  int nzp;  /* nz rounded up to LTE_BODY_LANES */
  const double *T, *n, *v;        /* ray inputs, float64: the caller's, or: */
  double *T_buf, *n_buf, *v_buf;  /* copies (float32 inputs, or padding to nzp) */
  const double *pl, *pu;          /* non-LTE populations (NULL: LTE), or: */
  double *pl_buf, *pu_buf;        /* their copies */
  double *S, *adx, *iw, *shift;   /* per cell */
  double *b, *eb, *er;            /* per cell, NB frequencies */
  double *pe, *pr;                /* packed exp / erf arguments and results */
  double *dtau, *tau, *em;        /* per segment / cell, NB frequencies */
} workspace;

static int ws_alloc(workspace *w, int nz) {
  memset(w, 0, sizeof *w);
  w->nzp = (nz + LTE_BODY_LANES - 1) / LTE_BODY_LANES * LTE_BODY_LANES;
  size_t len = (size_t)w->nzp + LTE_BODY_LANES; /* spare: segment loads read k+1 */
  double *all = calloc((9 + 8 * NB) * len, sizeof(double));
  if (!all) return -1;
  double **p[] = {&w->T_buf, &w->n_buf, &w->v_buf, &w->S, &w->adx, &w->iw, &w->shift,
                  &w->pl_buf, &w->pu_buf};
  for (int i = 0; i < 9; i++) *p[i] = all + (size_t)i * len;
  double **q[] = {&w->b, &w->eb, &w->er, &w->pe, &w->pr, &w->dtau, &w->tau, &w->em};
  for (int i = 0; i < 8; i++) *q[i] = all + 9 * len + (size_t)i * NB * len;
  return 0;
}
static void ws_free(workspace *w) { free(w->T_buf); }

/* Per-cell constants for cells [0, nzp): populations (LTE over all levels),
 * S, a*dx, 1/width, 1+v/c. */
static void cells(const lte_kernel_model *M, workspace *w) {
  const double vt2 = M->vt2;
  const double eta_c = M->eta_c;
  const double inv_c = M->inv_c;
  for (int z = 0; z < w->nzp; z += VW) {
    vd T = ld(w->T + z);
    vd pl, pu;
    if (w->pl) { /* non-LTE: the given populations */
      pl = ld(w->pl + z);
      pu = ld(w->pu + z);
    } else {
      vd invT = 1.0 / T;
      vd Z;
      if (M->libm)
        for (int i = 0; i < VW; i++) Z[i] = lte_z_direct(M->nlev, M->neg_e_over_k, M->g, T[i]);
      else
        Z = z_vec(M, T);
      vd r = 1.0 / Z;
      pl = (M->g_l * vexp(M->neg_e_over_k_l * invT, M->libm)) * r;
      pu = (M->g_u * vexp(M->neg_e_over_k_u * invT, M->libm)) * r;
    }
    vd eta = eta_c * pu;
    vd chi = M->fac * (M->B_lu * pl - M->B_ul * pu);
    /* chi == 0 (populations underflow, T < ~0.05 K): S = 0, see lte_cell_eval */
    st(w->S + z, (vd)((vl)(eta / chi) & (chi != 0.0)));
    vd iw = 1.0 / (M->nu0_over_c * vsqrt(M->two_k_over_m * T + vt2));
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
  const size_t len = (size_t)w->nzp + LTE_BODY_LANES;
  const double nu0 = M->nu0;
  int ne = 0, nr = 0;
  for (int f = 0; f < nb; f++)
    for (int z = 0; z < w->nzp; z += VW) {
      vd b = ld(w->iw + z) * (ld(w->shift + z) * nu[f] - nu0);
      vd bb = b * b;
      st(w->b + f * len + z, b);
      ne += pack(w->pe + ne, vm_lanes(~(vl)(bb >= EXP_ZERO)), -bb);
      nr += pack(w->pr + nr, vm_lanes(~(vl)(bb >= 36.0)), b);
    }
  st(w->pe + ne, splat(0)); /* the lanes after the last packed one: cheap, finite */
  st(w->pr + nr, splat(0));
  for (int i = 0; i < ne; i += VW) st(w->pe + i, vexp(ld(w->pe + i), M->libm));
  for (int i = 0; i < nr; i += VW) st(w->pr + i, verf(ld(w->pr + i), M->libm));
  const long long sign = (long long)0x8000000000000000ULL;
  ne = nr = 0;
  for (int f = 0; f < nb; f++)
    for (int z = 0; z < w->nzp; z += VW) {
      vd b = ld(w->b + f * len + z);
      vd bb = b * b;
      unsigned me = vm_lanes(~(vl)(bb >= EXP_ZERO)), mr = vm_lanes(~(vl)(bb >= 36.0));
      st(w->eb + f * len + z, unpack(w->pe + ne, me, splat(0)));
      st(w->er + f * len + z, unpack(w->pr + nr, mr, (vd)(((vl)b & sign) | (vl)splat(1.0))));
      ne += __builtin_popcount(me);
      nr += __builtin_popcount(mr);
    }
}

/* Optical depths of the segments of one ray at one frequency into dtau, from
 * its b, exp(-b^2), erf(b). */
static void segments(workspace *w, int nz, const double *bf, const double *ebf, const double *erf_,
                     double *dtau) {
  const int nseg = nz - 1;
  for (int k = 0; k < nseg; k += VW) {
    vd a0 = ld(w->adx + k), a1 = ld(w->adx + k + 1);
    vd b0 = ld(bf + k), b1 = ld(bf + k + 1);
    vd eb0 = ld(ebf + k), eb1 = ld(ebf + k + 1);
    vd er0 = ld(erf_ + k), er1 = ld(erf_ + k + 1);
    vd b10 = b1 - b0;
    const vl nm = (vl)(vabs(b10) < 1.0e-4);
    const unsigned m = vm_lanes(nm);
    /* the branch every lane takes alone (the usual case), else both */
    if (m == 0) {
      LTE_SEG_DTAU_FAR(vd, a0, a1, b0, b1, eb0, eb1, er0, er1, b10, d);
      st(dtau + k, d);
    } else if (m == FULL) {
      LTE_SEG_DTAU_NEAR(vd, a0, a1, b0, eb0, b10, near);
      st(dtau + k, near);
    } else {
      LTE_SEG_DTAU_FAR(vd, a0, a1, b0, b1, eb0, eb1, er0, er1, b10, d);
      LTE_SEG_DTAU_NEAR(vd, a0, a1, b0, eb0, b10, near);
      st(dtau + k, blend(nm, near, d));
    }
  }
}

/* Formal solution of one ray at one frequency, S linear in tau; on a ray
 * with a masing segment (the sign of a*dx changes: lte_kernel_body.h,
 * LTE_SEG_MASING; masing_ray) every segment's term by lte_body_emissive,
 * lane by lane, from the cells' b, exp(-b^2), erf(b). */
static double formal(const lte_kernel_model *M, workspace *w, int nz, const double *dtau,
                     const double *tau, double *em, const double *bf, const double *ebf,
                     const double *erf_, int masing, double bdy) {
  const int nzp = w->nzp, nseg = nz - 1;
  for (int z = 0; z < nzp; z += VW) {
    vd t = ld(tau + z);
    vl zero = (vl)(t >= EXP_ZERO);
    st(em + z, all_set(zero) ? splat(0) : (vd)(~zero & (vl)vexp(blend(zero, splat(0), -t), M->libm)));
  }
  /* LTE_BODY_LANES partial sums (acc[p] lane i: the segments k with
   * k % LTE_BODY_LANES = p VW + i), the one order on every host */
  vd acc[NACC];
  for (int p = 0; p < NACC; p++) acc[p] = splat(0);
  const int corrected = M->corrected_taylor;
  for (int k0 = 0; k0 < nseg; k0 += LTE_BODY_LANES) {
    /* behind an opaque layer every term is exactly 0 */
    int opaque = 1;
    for (int p = 0; p < NACC; p++) {
      const int k = k0 + p * VW;
      opaque &= all_set((vl)(ld(em + k) == 0.0)) && all_set((vl)(ld(em + k + 1) == 0.0));
    }
    if (opaque) continue;
    for (int p = 0; p < NACC; p++) {
      const int k = k0 + p * VW;
      vd D = ld(dtau + k);
      vd S0 = ld(w->S + k), S1 = ld(w->S + k + 1);
      vd em0 = ld(em + k), em1 = ld(em + k + 1);
      const vl tm = (vl)(D < 1.0e-4);
      const unsigned m = vm_lanes(tm);
      vd r;
      if (masing) { /* a masing ray (masing_ray): every lane alone, in the emissivity form */
        r = splat(0);
        for (int i = 0; i < VW && k + i < nseg; i++) {
          const int j = k + i;
          r[i] = lte_body_emissive(w->adx[j], w->adx[j + 1], w->S[j], w->S[j + 1], bf[j], bf[j + 1],
                                   ebf[j], ebf[j + 1], erf_[j], erf_[j + 1], dtau[j], em[j]);
        }
      } else if (m == FULL) {
        /* thin segments (D < 1e-4, the line's wings) are most of a ray's: the
         * branch every lane takes alone, else both (the same bits either way) */
        LTE_SEG_FORMAL_TAYLOR(vd, D, S0, S1, em0, em1, corrected, taylor);
        r = taylor;
      } else if (m == 0) {
        LTE_SEG_FORMAL_R(vd, D, S0, S1, em0, em1, rr);
        r = rr;
      } else {
        LTE_SEG_FORMAL(vd, D, S0, S1, em0, em1, corrected, rr, taylor);
        r = blend(tm, taylor, rr);
      }
      if (k + VW > nseg) { /* lanes past the last segment */
        vl live;
        for (int i = 0; i < VW; i++) live[i] = k + i < nseg ? -1 : 0;
        r = blend(live, r, splat(0));
      }
      acc[p] = acc[p] + r;
    }
  }
  double sum = 0;
  for (int p = 0; p < NACC; p++)
    for (int i = 0; i < VW; i++) sum += acc[p][i];
  double I = bdy * em[nz - 1] + sum;
  return M->take_abs ? fabs(I) : I;
}

/* whether the ray (after cells()) has a masing segment (LTE_SEG_MASING):
 * never in LTE (a >= 0), so LTE rays skip the test */
static int masing_ray(const workspace *w, int nz) {
  return w->pl && lte_body_masing_ray(w->adx, 1, nz);
}

/* Up to NB frequencies of one ray. The running sums tau (a recurrence along
 * z) of the NB frequencies advance together, so their additions overlap. */
static void ray_block(const lte_kernel_model *M, workspace *w, int nz, const double *nu, int nb,
                      const double *bdy, double *out) {
  const size_t len = (size_t)w->nzp + LTE_BODY_LANES;
  const int nseg = nz - 1;
  const int masing = masing_ray(w, nz);
  profiles(M, w, nu, nb);
  for (int f = 0; f < nb; f++)
    segments(w, nz, w->b + f * len, w->eb + f * len, w->er + f * len, w->dtau + f * len);
  double t[NB] = {0};
  for (int f = 0; f < nb; f++) w->tau[f * len] = 0;
  for (int k = 0; k < nseg; k++)
    for (int f = 0; f < nb; f++) {
      t[f] = t[f] + w->dtau[f * len + k];
      w->tau[f * len + k + 1] = t[f];
    }
  for (int f = 0; f < nb; f++) {
    double *tau = w->tau + f * len;
    for (int z = nz; z < w->nzp; z++) tau[z] = tau[nz - 1];
    out[f] = formal(M, w, nz, w->dtau + f * len, tau, w->em + f * len, w->b + f * len,
                    w->eb + f * len, w->er + f * len, masing, bdy[f]);
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

/* ---------------------------------------------------------------------- */
/* The float32 path (lte_kernel_model.f32; docs/physics.md, "The float32
 * path"): the cells as above (float64), then per ray and channel the
 * bodies' float32 formulas (lte_kernel_body.h's LTE_F32_*: one text) on
 * float vectors of the host's width (VF lanes) along the ray: b, exp(-b^2)
 * and erfc(|b|) of VF cells, the optical depths of VF segments (each lane the branch the body
 * would take: the others are computed and dropped, or skipped when no lane
 * takes them), the running sum tau in float64 (a recurrence: the channels
 * interleave, as the float64 path's), exp(-tau), the formal solution's
 * terms, and their float64 sum in the bodies' order. With libm set
 * ("literal" mode) the functions are libm's, lane by lane: the bodies' bits
 * (tests/solver/test_lte_backends.c); else glibc libmvec's on AVX-512
 * and AVX2 builds (common/vecmath.h; about an ulp from libm's;
 * docs/physics.md's bound takes 2 ulp for exp and 4 for erfc). */
typedef vm_vf vf;
typedef vm_vi vi;
#define VF VM_NF /* floats a vector */
LOAD_STORE(ldf, stf, vf, float)
static inline vf splatf(float c) {
  vf r;
  for (int i = 0; i < VF; i++) r[i] = c;
  return r;
}
static inline vf self(vi m, vf a, vf b) { return (vf)((m & (vi)a) | (~m & (vi)b)); }
static inline int any(vi m) {
#if defined(__AVX512F__)
  return _mm512_test_epi32_mask((__m512i)m, (__m512i)m) != 0;
#elif defined(__AVX__)
  return !_mm256_testz_si256((__m256i)m, (__m256i)m);
#else
  uint64_t q[VF / 2], o = 0;
  memcpy(q, &m, sizeof q);
  for (int i = 0; i < VF / 2; i++) o |= q[i];
  return o != 0;
#endif
}
/* VW doubles rounded to float32 (as C's conversion: the current rounding mode) */
static inline void sthf(float *p, vd x) {
  const vm_vh y = __builtin_convertvector(x, vm_vh);
  memcpy(p, &y, sizeof y);
}
static inline vf vabsf(vf x) { return (vf)((vi)x & 0x7fffffff); }
#define F32_SPLAT(c) splatf(c)
#define F32_SEL(m, a, b) self((m), (a), (b))

/* libmvec's float functions leave their fast path, lane by lane through
 * libm (~5-35 ns a lane), where the result is subnormal or 0: expf below
 * -87.3, erfcf from 10, expm1f below ~-88. The arguments there are
 * replaced before the call and the results set after it:
 *  - exp(-x), 87 <= x < LTE_F32_EXP_ZERO: exp(-x/2)^2 (a subnormal, within
 *    a subnormal ulp of libm's; no float32 exp has a relative error bound
 *    there);
 *  - erfc(x) = 0 from x = 10 on: its float32 value is at most 2.8e-45
 *    there (two subnormal ulps; libm gives 0 from 10.06 on);
 *  - expm1(x) = -1 from x = -88 on (it is -1 in float32 from -18 on).
 * Literal mode calls libm lane by lane everywhere. */
#define F32_LIBMVEC VECMATH_LIBMVEC
static inline vf mvexpf(vf x) { return vm_expf(x); }
static inline vf verfcf(vf x, int libm) {
  if (libm || !F32_LIBMVEC) return vm_lerfcf(x);
  const vi fast = x < 10.0f; /* x = |b| >= 0 */
  return self(fast, vm_erfcf(self(fast, x, splatf(0.0f))), splatf(0.0f));
}
static inline vf vexpm1f(vf x, int libm) {
  if (libm || !F32_LIBMVEC) return vm_lexpm1f(x);
  return vm_expm1f(self(x > -88.0f, x, splatf(-88.0f)));
}
/* lte_f32_expneg lane by lane: exp(-x), 0 from LTE_F32_EXP_ZERO on */
static inline vf vexpnegf(vf x, int libm) {
  const vi zero = x >= LTE_F32_EXP_ZERO;
  if (libm || !F32_LIBMVEC) return self(zero, splatf(0.0f), vm_lexpf(self(zero, splatf(0.0f), -x)));
  const vi sub = ~zero & (x >= 87.0f); /* subnormal results */
  vf r = mvexpf(self(sub | zero, splatf(0.0f), -x));
  if (any(sub)) {
    const vf h = mvexpf(self(sub, -0.5f * x, splatf(0.0f)));
    r = self(sub, h * h, r);
  }
  return self(zero, splatf(0.0f), r);
}

/* per thread: the float32 arrays of one ray, up to NB channels */
typedef struct {
  int nzq;               /* nz + 1 rounded up to VF, plus VF (segment loads read k + 1) */
  float *a, *S;          /* a dx and S of each cell, rounded once to float32 */
  float *b, *e, *c;      /* per cell and channel: b, exp(-b^2), erfc(|b|) */
  float *D, *em, *term;  /* per segment / cell and channel */
  double *tau;           /* per cell and channel */
} f32_workspace;

static int f32_ws_alloc(f32_workspace *f, int nz) {
  memset(f, 0, sizeof *f);
  f->nzq = (nz + 1 + VF - 1) / VF * VF + VF;
  const size_t n = (size_t)f->nzq;
  float *all = calloc((2 + 6 * NB) * n, sizeof(float));
  f->tau = calloc(NB * n, sizeof(double));
  if (!all || !f->tau) {
    free(all), free(f->tau);
    return -1;
  }
  float **p[] = {&f->b, &f->e, &f->c, &f->D, &f->em, &f->term};
  f->a = all, f->S = all + n;
  for (int i = 0; i < 6; i++) *p[i] = all + (2 + (size_t)i * NB) * n;
  return 0;
}
static void f32_ws_free(f32_workspace *f) { free(f->a), free(f->tau); }

/* Up to NB channels of one ray (after cells()), into out[f]. */
static void f32_ray_block(const lte_kernel_model *M, const workspace *w, f32_workspace *g, int nz,
                          const double *nu, int nb, const double *bdy, double *out) {
  const size_t n = (size_t)g->nzq;
  const int nseg = nz - 1, libm = M->libm;
#define F32_EXPNEG(x) vexpnegf((x), libm)
#define F32_EXPM1(x) vexpm1f((x), libm)
  for (int z = 0; z < nz; z++) g->a[z] = (float)w->adx[z], g->S[z] = (float)w->S[z];
  const int masing = masing_ray(w, nz);
  for (int f = 0; f < nb; f++) {
    float *b = g->b + f * n, *e = g->e + f * n, *c = g->c + f * n, *D = g->D + f * n;
    /* lte_f32_b on VW cells at a time (w's arrays hold nzp >= nz cells) */
    for (int z = 0; z < nz; z += VW) {
      vd xd = ld(w->iw + z) * (ld(w->shift + z) * nu[f] - M->nu0);
      xd = blend((vl)(xd > LTE_F32_B_MAX), splat(LTE_F32_B_MAX), xd);
      sthf(b + z, blend((vl)(xd < -LTE_F32_B_MAX), splat(-LTE_F32_B_MAX), xd));
    }
    for (int z = nz; z < (int)n; z++) b[z] = 0.0f; /* finite padding */
    for (int z = 0; z < nz; z += VF) {
      const vf x = ldf(b + z);
      stf(e + z, F32_EXPNEG(x * x));
      stf(c + z, verfcf(vabsf(x), libm));
    }
    for (int k = 0; k < nseg; k += VF) {
      const vf a0 = ldf(g->a + k), a1 = ldf(g->a + k + 1);
      vf b0 = ldf(b + k), b1 = ldf(b + k + 1);
      const vf e0 = ldf(e + k), e1 = ldf(e + k + 1), c0 = ldf(c + k), c1 = ldf(c + k + 1);
      const vi flip = b0 + b1 < 0.0f; /* e, c are of |b| */
      b0 = self(flip, -b0, b0), b1 = self(flip, -b1, b1);
      const vf h = 0.5f * (b1 - b0), bm = 0.5f * (b0 + b1);
      const vf ah = vabsf(h);
      const vi near = (ah <= 0.5f) & (bm * ah <= 0.5f);
      vf d = splatf(0.0f);
      if (any(~near)) {
        LTE_F32_DTAU_FAR(vf, F32_SPLAT, F32_SEL, a0, a1, b0, b1, e0, e1, c0, c1, df);
        d = df;
      }
      if (any(near)) {
        LTE_F32_DTAU_NEAR(vf, F32_SPLAT, F32_EXPNEG, a0, a1, bm, h, dn);
        d = self(near, dn, d);
      }
      stf(D + k, d);
    }
  }
  /* tau: the channels' recurrences interleaved; exp(-tau) */
  double t[NB] = {0};
  for (int f = 0; f < nb; f++) g->tau[f * n] = 0.0;
  for (int k = 0; k < nseg; k++)
    for (int f = 0; f < nb; f++) {
      t[f] = t[f] + (double)g->D[f * n + k];
      g->tau[f * n + k + 1] = t[f];
    }
  for (int f = 0; f < nb; f++) {
    float *em = g->em + f * n;
    for (int z = 0; z < nz; z += VW) sthf(em + z, ld(g->tau + f * n + z));
    for (int z = 0; z < nz; z += VF) stf(em + z, F32_EXPNEG(ldf(em + z)));
    em[0] = 1.0f; /* the bodies start from 1 (exp(-0) alike) */
    for (int z = nz; z < (int)n; z++) em[z] = 0.0f;
    /* the formal solution's terms */
    const float *D = g->D + f * n;
    float *term = g->term + f * n;
    const int corrected = M->corrected_taylor;
    for (int k = 0; k < nseg; k += VF) {
      const vf d = ldf(D + k), S0 = ldf(g->S + k), S1 = ldf(g->S + k + 1);
      const vf em0 = ldf(em + k), em1 = ldf(em + k + 1);
      const vi tay = d < 1.0e-4f, ser = ~tay & (d < 0.5f), ex = ~tay & ~ser;
      vf r = splatf(0.0f);
      if (!masing && any(ex)) {
        LTE_F32_FORMAL_EXP(vf, F32_EXPM1, d, w0, w1);
        r = em0 * (S0 * w0 + S1 * w1);
      }
      if (!masing && any(ser)) {
        LTE_F32_FORMAL_SERIES(vf, F32_SPLAT, d, w0, w1);
        r = self(ser, em0 * (S0 * w0 + S1 * w1), r);
      }
      if (!masing && any(tay)) {
        LTE_F32_FORMAL_TAYLOR(vf, d, S0, S1, em0, em1, corrected, ty);
        r = self(tay, ty, r);
      }
      /* a masing ray (masing_ray, non-LTE only): every lane alone, in the
       * emissivity form */
      if (masing) {
        const float *b = g->b + f * n, *e = g->e + f * n, *c = g->c + f * n;
        for (int i = 0; i < VF && k + i < nseg; i++) {
          const int j = k + i;
          r[i] = lte_f32_emissive(g->a[j], g->a[j + 1], g->S[j], g->S[j + 1], b[j], b[j + 1], e[j],
                                  e[j + 1], c[j], c[j + 1], D[j], em[j]);
        }
      }
      stf(term + k, r);
    }
  }
  /* the terms' float64 sums in the bodies' order (behind an opaque layer
   * nothing is added), the channels interleaved */
  double sum[NB] = {0};
  for (int k = 0; k < nseg; k++)
    for (int f = 0; f < nb; f++)
      if (g->em[f * n + k] != 0.0f) sum[f] = sum[f] + (double)g->term[f * n + k];
  for (int f = 0; f < nb; f++) {
    const double I = bdy[f] * (double)g->em[f * n + nz - 1] + sum[f];
    out[f] = M->take_abs ? fabs(I) : I;
  }
#undef F32_EXPNEG
#undef F32_EXPM1
}

static int cpu_solve(const lte_kernel_model *M, const lte_kernel_batch *B) {
  const int nf = B->nf, ny = B->ny, nz = B->nz;
  const long long rays = (long long)B->nx * ny, total = rays * B->ncube;
  int bad = 0, alloc_failed = 0;
  int nt = B->threads > 0 ? B->threads : omp_get_max_threads();
#if !defined(__AVX512F__) && defined(__AVX2__)
  pthread_once(&lane_tab_once, lane_tables_init); /* pack's tables */
#endif
#pragma omp parallel num_threads(nt)
  {
    /* subnormals flushed in this thread while it computes (lte_kernel.h,
     * "The float environment"), the caller's mode back after */
    const lte_host_fpenv fenv = lte_host_flush_begin();
    workspace w;
    f32_workspace g;
    int ok = ws_alloc(&w, nz) == 0;
    if (ok && M->f32 && f32_ws_alloc(&g, nz) < 0) ws_free(&w), ok = 0;
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
      for (int f0 = 0; f0 < nf; f0 += NB) {
        int nb = nf - f0 < NB ? nf - f0 : NB;
        double bdy[NB];
        for (int f = 0; f < nb; f++)
          bdy[f] = B->background_map ? B->background_map[(size_t)pix * nf + f0 + f] : B->background;
        if (M->f32)
          f32_ray_block(M, &w, &g, nz, B->freqs + f0, nb, bdy, img + f0);
        else
          ray_block(M, &w, nz, B->freqs + f0, nb, bdy, img + f0);
      }
    }
    if (ok) ws_free(&w);
    if (ok && M->f32) f32_ws_free(&g);
    lte_host_flush_end(fenv);
  }
  if (alloc_failed) CE_FAIL("LTE solver: out of memory for the ray workspace (nz = %d)", nz);
  return bad ? LTE_KERNEL_BAD_INPUT : 0;
}

const lte_kernel lte_kernel_cpu = {"cpu", VARIANT, cpu_solve, NULL, NULL};
