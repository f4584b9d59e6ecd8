/* sampler.c - voxel averages of k^3 sub-samples along rotated cube lines. */
#include "rotate/sampler.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__) && defined(__AVX512DQ__)
#include <immintrin.h>
#define SAMPLER_AVX512 1 /* the hot loops in AVX-512; the portable ones give the same bits */
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define SAMPLER_AVX2 1 /* AMD Zen 2/3, Intel Haswell on: some of them in AVX2, the same bits */
#endif

/* Portable builds (-Dnative=false) on x86-64: the baseline ISA has no FMA,
 * so each fmaf of the linear reconstruction's portable loops (lerp3, the
 * places, the exp polynomial) would be a libm call (~18x slower). Those
 * loops are compiled twice, for the FMA extension (fmaf one instruction,
 * floorf and nearbyintf SSE4.1 roundings) and for the baseline (libm's
 * fmaf), and chosen per call by the CPU: the same bits either way, since
 * fmaf is the exactly rounded a b + c in both and -ffp-contract=off (meson.build)
 * forbids any other contraction (tests/rotate/test_sample.c's test_bodies compares them). */
#if !SAMPLER_AVX512 && !defined(__FMA__) && defined(__x86_64__) && defined(__GNUC__)
#define SAMPLER_FMA_DISPATCH 1
#define SAMPLER_FMA_CLONE __attribute__((target("fma")))
#else
#define SAMPLER_FMA_DISPATCH 0
#endif

#include "common/error.h"
#include "rotate/directions.h"
#include "rotate/sampler_body_linear.h"
#ifdef COEMU_HAVE_CUDA
#include "rotate/sampler_cuda.h"
#endif

const char *sampler_recon_name(int r) {
  return r == SAMPLER_CONSTANT ? "constant"
         : r == SAMPLER_LINEAR ? "linear"
         : r == SAMPLER_LIMITED ? "limited"
                                : NULL;
}

int sampler_recon_version(int r) { return r == SAMPLER_LINEAR ? 3 : 1; }

int sampler_recon_parse(const char *name) {
  if (!strcmp(name, "constant")) return SAMPLER_CONSTANT;
  if (!strcmp(name, "linear")) return SAMPLER_LINEAR;
  if (!strcmp(name, "limited")) return SAMPLER_LIMITED;
  return -1;
}

static inline double minmod(double a, double b) {
  return a > 0 && b > 0 ? fmin(a, b) : a < 0 && b < 0 ? fmax(a, b) : 0;
}

/* sampler.h. Slopes in double from the float cells, stored as float. */
int sampler_limited_build(ce_model *m) {
  pthread_mutex_lock(&m->nodal_lock);
  if (m->limited) {
    pthread_mutex_unlock(&m->nodal_lock);
    return 0;
  }
  const int64_t nc = m->ncell, S = SAMPLER_LIMITED_STRIDE;
  model_real *rec = ce_malloc_array((size_t)(m->nleaves * nc), S * sizeof(model_real),
                                    "limited reconstruction");
  if (!rec) {
    pthread_mutex_unlock(&m->nodal_lock);
    return -1;
  }
  model_cache cache = {0};
  for (int64_t L = 0; L < m->nleaves; L++) {
    const int sh = m->levmax - m->ids[L].level;
    const int64_t span = (int64_t)1 << sh;
    for (int64_t c = 0; c < nc; c++) {
      const int64_t ic[3] = {c % m->bnx[0], (c / m->bnx[0]) % m->bnx[1],
                             c / ((int64_t)m->bnx[0] * m->bnx[1])};
      double ctr[3]; /* the centre in finest-cell units */
      for (int d = 0; d < 3; d++)
        ctr[d] = (double)(((int64_t)(m->ids[L].ig[d] - 1) * m->bnx[d] + ic[d]) * span) +
                 0.5 * (double)span;
      const model_real *v = m->cells + (L * nc + c) * MODEL_NF;
      model_real *r = rec + (L * nc + c) * S;
      double lo[MODEL_NF], hi[MODEL_NF], sl[3][MODEL_NF];
      for (int f = 0; f < MODEL_NF; f++) lo[f] = hi[f] = v[f];
      for (int d = 0; d < 3; d++) {
        double dv[2][MODEL_NF];
        int have[2] = {0, 0};
        for (int side = 0; side < 2; side++) {
          /* the point just past the face centre (half a finest cell) */
          double t[3] = {ctr[0], ctr[1], ctr[2]};
          t[d] += (side ? 1 : -1) * 0.5 * (double)(span + 1);
          if (!(t[d] >= 0 && t[d] < (double)m->nfine[d])) continue;
          const int64_t fi[3] = {(int64_t)t[0], (int64_t)t[1], (int64_t)t[2]};
          int64_t nb = model_find(m, fi, &cache);
          int64_t nloc = nb - cache.base, span_nb = (int64_t)1 << cache.shift;
          int64_t id = d == 0   ? nloc % m->bnx[0]
                       : d == 1 ? (nloc / m->bnx[0]) % m->bnx[1]
                                : nloc / ((int64_t)m->bnx[0] * m->bnx[1]);
          double cnb = (double)(cache.lo[d] + id * span_nb) + 0.5 * (double)span_nb;
          double dist = fabs(cnb - ctr[d]);
          const model_real *w = m->cells + nb * MODEL_NF;
          for (int f = 0; f < MODEL_NF; f++) {
            dv[side][f] = ((double)w[f] - (double)v[f]) / dist * (side ? 1 : -1);
            lo[f] = fmin(lo[f], w[f]);
            hi[f] = fmax(hi[f], w[f]);
          }
          have[side] = 1;
        }
        for (int f = 0; f < MODEL_NF; f++)
          sl[d][f] = have[0] && have[1]
                         ? minmod(0.5 * (dv[0][f] + dv[1][f]),
                                  minmod(2 * dv[0][f], 2 * dv[1][f]))
                         : 0;
      }
      for (int f = 0; f < MODEL_NF; f++) {
        double ext = 0, room = fmin(hi[f] - v[f], v[f] - lo[f]);
        for (int d = 0; d < 3; d++) ext += fabs(sl[d][f]) * 0.5 * (double)span;
        double phi = ext > room ? room / ext : 1;
        for (int d = 0; d < 3; d++) r[8 + MODEL_NF * d + f] = (model_real)(sl[d][f] * phi);
        r[3 + f] = v[f];
      }
      for (int d = 0; d < 3; d++) r[d] = (model_real)ctr[d];
      r[23] = 0;
    }
  }
  m->limited = rec;
  pthread_mutex_unlock(&m->nodal_lock);
  return 0;
}

/* The values of points j (fine-cell coordinates t = A + B uz[j]) in leaf
 * cells idx[j] (-1: none) under the limited reconstruction, into
 * pts[j * MODEL_NF ..]: sampler_body.h's sb_limited_point, the device's function, with the five
 * fields of a point on the lanes of one vector where the build has AVX-512
 * (all five) or AVX2 (four, the fifth scalar): the same operations per
 * lane, a multiply and an add each (no contraction), the clamp a select
 * on x < 0 (so -0 and NaN stay as the scalar code leaves them), the same
 * rounding to float. Most of `limited`'s time was this loop, scalar. */
static void limited_points(const ce_model *m, const double A[3], const double B[3],
                           const double *uz, int nk, const int64_t *idx, model_real *pts) {
#if SAMPLER_AVX512
  const __m512d zero = _mm512_setzero_pd();
  for (int j = 0; j < nk; j++) {
    if (idx[j] < 0) continue;
    const model_real *r = m->limited + idx[j] * SAMPLER_LIMITED_STRIDE;
    const double d0 = A[0] + B[0] * uz[j] - r[0], d1 = A[1] + B[1] * uz[j] - r[1],
                 d2 = A[2] + B[2] * uz[j] - r[2];
    __m512d x = _mm512_cvtps_pd(_mm256_maskz_loadu_ps(0x1f, r + 3));
    x = _mm512_add_pd(x, _mm512_mul_pd(_mm512_cvtps_pd(_mm256_maskz_loadu_ps(0x1f, r + 8)),
                                       _mm512_set1_pd(d0)));
    x = _mm512_add_pd(x, _mm512_mul_pd(_mm512_cvtps_pd(_mm256_maskz_loadu_ps(0x1f, r + 13)),
                                       _mm512_set1_pd(d1)));
    x = _mm512_add_pd(x, _mm512_mul_pd(_mm512_cvtps_pd(_mm256_maskz_loadu_ps(0x1f, r + 18)),
                                       _mm512_set1_pd(d2)));
    const __mmask8 neg = _mm512_mask_cmp_pd_mask(0x3, x, zero, _CMP_LT_OQ); /* n, T < 0 */
    x = _mm512_mask_mov_pd(x, neg, zero);
    _mm256_mask_storeu_ps(pts + j * MODEL_NF, 0x1f, _mm512_cvtpd_ps(x));
  }
#elif SAMPLER_AVX2
  const __m256d zero = _mm256_setzero_pd();
  const __m256d nT = _mm256_castsi256_pd(_mm256_setr_epi64x(-1, -1, 0, 0)); /* lanes n, T */
  for (int j = 0; j < nk; j++) {
    if (idx[j] < 0) continue;
    const model_real *r = m->limited + idx[j] * SAMPLER_LIMITED_STRIDE;
    const double d0 = A[0] + B[0] * uz[j] - r[0], d1 = A[1] + B[1] * uz[j] - r[1],
                 d2 = A[2] + B[2] * uz[j] - r[2];
    /* fields 0-3 on four lanes, the fifth (vz, not clamped) scalar */
    __m256d x = _mm256_cvtps_pd(_mm_loadu_ps(r + 3));
    x = _mm256_add_pd(x, _mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(r + 8)), _mm256_set1_pd(d0)));
    x = _mm256_add_pd(x, _mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(r + 13)), _mm256_set1_pd(d1)));
    x = _mm256_add_pd(x, _mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(r + 18)), _mm256_set1_pd(d2)));
    x = _mm256_blendv_pd(x, zero, _mm256_and_pd(_mm256_cmp_pd(x, zero, _CMP_LT_OQ), nT));
    _mm_storeu_ps(pts + j * MODEL_NF, _mm256_cvtpd_ps(x));
    const double x4 = (double)r[7] + (double)r[12] * d0 + (double)r[17] * d1 + (double)r[22] * d2;
    pts[j * MODEL_NF + 4] = (model_real)x4;
  }
#else
  for (int j = 0; j < nk; j++)
    if (idx[j] >= 0)
      sb_limited_point(m->limited + idx[j] * SAMPLER_LIMITED_STRIDE, A[0] + B[0] * uz[j],
                       A[1] + B[1] * uz[j], A[2] + B[2] * uz[j], pts + j * MODEL_NF);
#endif
}

void sampler_defaults(sampler_opts *o) {
  o->reconstruction = SAMPLER_LINEAR;
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
  if (!sampler_recon_name(o->reconstruction))
    CE_FAIL("sampler: reconstruction %d, expected %s", o->reconstruction, SAMPLER_RECON_NAMES);
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

/* The leaves crossed by the previous sub-line, in order: the next sub-line
 * (a neighbour, less than a voxel away) mostly crosses the same ones, and
 * checking a leaf's bounds is cheaper than descending the tree. */
typedef struct {
  model_cache *prev, *cur; /* n k entries each: at most one leaf per point */
  int nprev, ncur, at;     /* at: the entry of prev matched last */
} leaf_trail;

/* the sub-line's leaves become the trail of the next */
static inline void trail_next(leaf_trail *tr) {
  model_cache *t = tr->prev;
  tr->prev = tr->cur;
  tr->cur = t;
  tr->nprev = tr->ncur;
  tr->ncur = tr->at = 0;
}

static inline int leaf_has(const model_cache *c, const int64_t f[3]) {
  return f[0] >= c->lo[0] && f[0] < c->hi[0] && f[1] >= c->lo[1] && f[1] < c->hi[1] &&
         f[2] >= c->lo[2] && f[2] < c->hi[2];
}

/* The leaf of the point t (fine-cell coordinates) of a sub-line A + B u,
 * from the trail or the tree, appended to tr->cur; and the points j..je-1
 * of the line that lie in it (je the first with uz >= the leaf's exit, at
 * least j + 1: estimated from the spacing 1/inv_du, then corrected). */
static inline const model_cache *trail_leaf(const ce_model *m, const double A[3],
                                            const double B[3], const double inv_b[3],
                                            const double t[3], const double *uz, int nk, int j,
                                            double inv_du, leaf_trail *tr, int *je_out) {
  const int64_t f[3] = {(int64_t)t[0], (int64_t)t[1], (int64_t)t[2]};
  model_cache *c = &tr->cur[tr->ncur++];
  if (tr->at < tr->nprev && leaf_has(&tr->prev[tr->at], f))
    *c = tr->prev[tr->at];
  else if (tr->at + 1 < tr->nprev && leaf_has(&tr->prev[tr->at + 1], f))
    *c = tr->prev[++tr->at];
  else
    model_find(m, f, c);
  double uhi = INFINITY;
  for (int d = 0; d < 3; d++) {
    double e = B[d] > 0 ? ((double)c->hi[d] - A[d]) * inv_b[d]
               : B[d] < 0 ? ((double)c->lo[d] - A[d]) * inv_b[d] : INFINITY;
    uhi = e < uhi ? e : uhi;
  }
  /* uz[i] ~ uz[0] + i / inv_du: the first point at or past the exit is
   * about ceil(est); the loops below make it exact (both rarely step, so
   * their exits are predicted) */
  double est = (uhi - uz[0]) * inv_du;
  int je = !(est < nk) ? nk : est <= j + 1 ? j + 1 : (int)ceil(est);
  while (je < nk && uz[je] < uhi) je++;
  while (je > j + 1 && uz[je - 1] >= uhi) je--;
  *je_out = je;
  return c;
}

/* One sub-line without background fill: cell indices idx[0..nk-1] of its
 * points (-1: none). Find the leaf of the first point, then take every
 * following point whose uz stays below the leaf's exit (one comparison per
 * point). Local cell indices are clamped to the block, so a point that
 * round-off puts a hair past the exit reads the edge cell of the leaf
 * instead of memory outside it. */
static void walk_line(const ce_model *m, const double A[3], const double B[3],
                      const double inv_b[3], const double *uz, int nk, double inv_du, int64_t *idx,
                      leaf_trail *tr) {
  /* uz[j] = uz[0] + j / inv_du up to round-off; inv_b = 1/B (0 where B = 0) */
  const double nf[3] = {(double)m->nfine[0], (double)m->nfine[1], (double)m->nfine[2]};
  const int64_t b0 = m->bnx[0], b1 = m->bnx[1], b2 = m->bnx[2];
#if SAMPLER_AVX2
  const int small32 = nf[0] < 0x1p30 && nf[1] < 0x1p30 && nf[2] < 0x1p30;
#endif
  int j = 0;
  while (j < nk) {
    double t0 = A[0] + B[0] * uz[j], t1 = A[1] + B[1] * uz[j], t2 = A[2] + B[2] * uz[j];
    if (!(t0 >= 0 && t0 < nf[0] && t1 >= 0 && t1 < nf[1] && t2 >= 0 && t2 < nf[2])) {
      idx[j++] = -1; /* outside the domain: only on round-off at a face (sampler_check) */
      continue;
    }
    const double t[3] = {t0, t1, t2};
    int je; /* the points of this leaf: j .. je-1 */
    const model_cache *c = trail_leaf(m, A, B, inv_b, t, uz, nk, j, inv_du, tr, &je);
    const int64_t lo0 = c->lo[0], lo1 = c->lo[1], lo2 = c->lo[2], base = c->base;
    const int sh = c->shift;
#if SAMPLER_AVX512
    /* 8 points at a time, the last ones masked (no scalar remainder):
     * the loop below in vectors, multiply and add unfused like it */
    const __m512i vlo0 = _mm512_set1_epi64(lo0), vlo1 = _mm512_set1_epi64(lo1),
                  vlo2 = _mm512_set1_epi64(lo2), vbase = _mm512_set1_epi64(base),
                  zero = _mm512_setzero_si512(), top0 = _mm512_set1_epi64(b0 - 1),
                  top1 = _mm512_set1_epi64(b1 - 1), top2 = _mm512_set1_epi64(b2 - 1),
                  vb0 = _mm512_set1_epi64(b0), vb1 = _mm512_set1_epi64(b1);
    const int bs = m->bshift; /* log2 of the block size, or -1 */
    const __m128i vsh = _mm_cvtsi32_si128(sh), vbs = _mm_cvtsi32_si128(bs);
    const __m512d vA0 = _mm512_set1_pd(A[0]), vA1 = _mm512_set1_pd(A[1]),
                  vA2 = _mm512_set1_pd(A[2]), vB0 = _mm512_set1_pd(B[0]),
                  vB1 = _mm512_set1_pd(B[1]), vB2 = _mm512_set1_pd(B[2]);
    for (; j < je; j += 8) {
      __mmask8 mk = je - j >= 8 ? 0xff : (__mmask8)((1u << (je - j)) - 1);
      __m512d u = _mm512_maskz_loadu_pd(mk, uz + j);
      __m512i i0 = _mm512_sra_epi64(
          _mm512_sub_epi64(_mm512_cvttpd_epi64(_mm512_add_pd(vA0, _mm512_mul_pd(vB0, u))), vlo0),
          vsh);
      __m512i i1 = _mm512_sra_epi64(
          _mm512_sub_epi64(_mm512_cvttpd_epi64(_mm512_add_pd(vA1, _mm512_mul_pd(vB1, u))), vlo1),
          vsh);
      __m512i i2 = _mm512_sra_epi64(
          _mm512_sub_epi64(_mm512_cvttpd_epi64(_mm512_add_pd(vA2, _mm512_mul_pd(vB2, u))), vlo2),
          vsh);
      i0 = _mm512_min_epi64(_mm512_max_epi64(i0, zero), top0);
      i1 = _mm512_min_epi64(_mm512_max_epi64(i1, zero), top1);
      i2 = _mm512_min_epi64(_mm512_max_epi64(i2, zero), top2);
      __m512i r = bs >= 0 ? _mm512_sll_epi64(_mm512_add_epi64(_mm512_sll_epi64(i2, vbs), i1), vbs)
                          : _mm512_mullo_epi64(_mm512_add_epi64(_mm512_mullo_epi64(i2, vb1), i1), vb0);
      _mm512_mask_storeu_epi64(idx + j, mk, _mm512_add_epi64(vbase, _mm512_add_epi64(r, i0)));
    }
    j = je;
#else
#if SAMPLER_AVX2
    /* 4 points at a time: the loop below on 256-bit vectors, multiply and
     * add unfused like it; the coordinates in int32 (the model's fine grid
     * is below 2^30 a side: small32), the cell number widened to
     * int64 for the leaf's base */
    if (small32) {
      const __m256d vA0 = _mm256_set1_pd(A[0]), vA1 = _mm256_set1_pd(A[1]),
                    vA2 = _mm256_set1_pd(A[2]), vB0 = _mm256_set1_pd(B[0]),
                    vB1 = _mm256_set1_pd(B[1]), vB2 = _mm256_set1_pd(B[2]);
      const __m128i vlo0 = _mm_set1_epi32((int32_t)lo0), vlo1 = _mm_set1_epi32((int32_t)lo1),
                    vlo2 = _mm_set1_epi32((int32_t)lo2), zero = _mm_setzero_si128(),
                    top0 = _mm_set1_epi32((int32_t)(b0 - 1)), top1 = _mm_set1_epi32((int32_t)(b1 - 1)),
                    top2 = _mm_set1_epi32((int32_t)(b2 - 1)), vb0 = _mm_set1_epi32((int32_t)b0),
                    vb1 = _mm_set1_epi32((int32_t)b1), vsh = _mm_cvtsi32_si128(sh);
      const __m256i vbase = _mm256_set1_epi64x(base);
      for (; j + 4 <= je; j += 4) {
        const __m256d u = _mm256_loadu_pd(uz + j);
        __m128i i0 = _mm_sra_epi32(
            _mm_sub_epi32(_mm256_cvttpd_epi32(_mm256_add_pd(vA0, _mm256_mul_pd(vB0, u))), vlo0), vsh);
        __m128i i1 = _mm_sra_epi32(
            _mm_sub_epi32(_mm256_cvttpd_epi32(_mm256_add_pd(vA1, _mm256_mul_pd(vB1, u))), vlo1), vsh);
        __m128i i2 = _mm_sra_epi32(
            _mm_sub_epi32(_mm256_cvttpd_epi32(_mm256_add_pd(vA2, _mm256_mul_pd(vB2, u))), vlo2), vsh);
        i0 = _mm_min_epi32(_mm_max_epi32(i0, zero), top0);
        i1 = _mm_min_epi32(_mm_max_epi32(i1, zero), top1);
        i2 = _mm_min_epi32(_mm_max_epi32(i2, zero), top2);
        const __m128i r = _mm_add_epi32(
            _mm_mullo_epi32(_mm_add_epi32(_mm_mullo_epi32(i2, vb1), i1), vb0), i0);
        _mm256_storeu_si256((__m256i *)(idx + j), _mm256_add_epi64(vbase, _mm256_cvtepi32_epi64(r)));
      }
    }
#endif
    for (; j < je; j++) {
      int64_t i0 = ((int64_t)(A[0] + B[0] * uz[j]) - lo0) >> sh;
      int64_t i1 = ((int64_t)(A[1] + B[1] * uz[j]) - lo1) >> sh;
      int64_t i2 = ((int64_t)(A[2] + B[2] * uz[j]) - lo2) >> sh;
      i0 = i0 < 0 ? 0 : i0 >= b0 ? b0 - 1 : i0;
      i1 = i1 < 0 ? 0 : i1 >= b1 ? b1 - 1 : i1;
      i2 = i2 < 0 ? 0 : i2 >= b2 ? b2 - 1 : i2;
      idx[j] = base + (i2 * b1 + i1) * b0 + i0;
    }
#endif
  }
  trail_next(tr);
}

/* exp in float for the linear reconstruction's ln n and ln T:
 * sb_expf_poly (sampler_body_linear.h), and with AVX-512 and AVX2 the same
 * steps on 16 and 8 lanes (the same bits). */
/* x - n ln 2 in two steps, then the polynomial: p = e^r, the steps of
 * sb_expf_poly on a vector type T with its fused multiply-add, multiply,
 * add and broadcast (one text for both widths) */
#define EXPF_POLY_VEC(T, fmadd, mul, add, set1, x, n, p)   \
  T p;                                                     \
  {                                                        \
    T r_ = fmadd(n, set1(-0.693359375f), x);               \
    r_ = fmadd(n, set1(2.12194440e-4f), r_);               \
    p = set1(1.9875691500e-4f);                            \
    p = fmadd(p, r_, set1(1.3981999507e-3f));              \
    p = fmadd(p, r_, set1(8.3334519073e-3f));              \
    p = fmadd(p, r_, set1(4.1665795894e-2f));              \
    p = fmadd(p, r_, set1(1.6666665459e-1f));              \
    p = fmadd(p, r_, set1(5.0000001201e-1f));              \
    p = fmadd(p, mul(r_, r_), r_);                         \
    p = add(p, set1(1.0f));                                \
  }
#if SAMPLER_AVX512
static inline __m512 expf_poly16(__m512 x) {
  __mmask16 zero = _mm512_cmp_ps_mask(x, _mm512_set1_ps(SB_EXPF_LO), _CMP_LT_OQ);
  x = _mm512_min_ps(x, _mm512_set1_ps(SB_EXPF_HI));
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), 0x08);
  EXPF_POLY_VEC(__m512, _mm512_fmadd_ps, _mm512_mul_ps, _mm512_add_ps, _mm512_set1_ps, x, n, p);
  return _mm512_maskz_mov_ps((__mmask16)~zero, _mm512_scalef_ps(p, n));
}
#endif

#if SAMPLER_AVX2
static inline __m256 expf_poly8(__m256 x) {
  const __m256 zero = _mm256_cmp_ps(x, _mm256_set1_ps(SB_EXPF_LO), _CMP_LT_OQ);
  x = _mm256_min_ps(x, _mm256_set1_ps(SB_EXPF_HI));
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  EXPF_POLY_VEC(__m256, _mm256_fmadd_ps, _mm256_mul_ps, _mm256_add_ps, _mm256_set1_ps, x, n, p);
  /* 2^n from its exponent bits, n in [-123, 127] (sb_expf_poly) */
  const __m256 two_n = _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
  return _mm256_andnot_ps(zero, _mm256_mul_ps(p, two_n));
}
#endif

/* The linear reconstruction per cube: the corner records of the leaves a
 * cube visits, projected once per cube onto its line of sight l: per node
 * (ln n, ln T, v_los = l . v, 0) in float (l . v in double from the float
 * corner values, rounded once). v enters the voxel only through v_los, and
 * the projection is linear, so this is the same function as interpolating
 * v and projecting after; 4 floats per node instead of 8. Made for a leaf
 * the first time a sub-line enters it (done[leaf]). */
typedef struct {
  float *rec;          /* nleaves * nnodal * LIN_NF */
  unsigned char *done; /* per leaf */
  double l[3];
  /* AVX-512, per sub-line of n k points: each point's run (n k + 16), its
   * corner records (offset in rec) and its place in the cell (n k + 16
   * each), written for a segment of runs before its lerps read them, so
   * that no lerp waits on its own point's placing */
  unsigned char *run;
  int32_t *pnd;
  float *pfx, *pfy, *pfz;
} lin_proj;
#define LIN_NF SB_LIN_NF /* ln n, ln T, v_los, 0 */
#define LIN_RUNS 32      /* runs per segment: a permutation of two vectors */

static void lin_proj_close(lin_proj *P) {
  free(P->rec);
  free(P->done);
  free(P->run);
  free(P->pnd);
  free(P->pfx);
  free(P->pfy);
  free(P->pfz);
  memset(P, 0, sizeof *P);
}

/* The per-cube tables of the linear reconstruction on the line of sight l,
 * for sub-lines of nk points: 0, or -1 with an error (P closed). The
 * corner records are addressed by 32-bit offsets in the AVX-512 loops. */
static int lin_proj_open(lin_proj *P, const ce_model *m, const double l[3], int nk) {
  memset(P, 0, sizeof *P);
  for (int d = 0; d < 3; d++) P->l[d] = l[d];
  const int64_t nrec = m->nleaves * m->nnodal * LIN_NF;
  if (nrec > INT32_MAX)
    CE_FAIL("sampler: %lld leaves of %lld corner nodes: more than the linear reconstruction's "
            "2^31 corner values per cube (use fewer, larger blocks, or `constant`)",
            (long long)m->nleaves, (long long)m->nnodal);
  const size_t np = (size_t)nk + 16;
  if (!(P->rec = malloc(sizeof(float) * (size_t)nrec)) ||
      !(P->done = calloc((size_t)m->nleaves, 1)) || !(P->run = calloc(np, 1)) ||
      !(P->pnd = calloc(np, sizeof(int32_t))) || !(P->pfx = calloc(np, sizeof(float))) ||
      !(P->pfy = calloc(np, sizeof(float))) || !(P->pfz = calloc(np, sizeof(float)))) {
    lin_proj_close(P);
    CE_FAIL("sampler: out of memory for the linear reconstruction's tables (%lld leaves)",
            (long long)m->nleaves);
  }
  return 0;
}

static const float *lin_leaf(const ce_model *m, lin_proj *P, int64_t leaf) {
  float *o = P->rec + leaf * m->nnodal * LIN_NF;
  if (!P->done[leaf]) {
    const model_real *s = m->nodal + leaf * m->nnodal * MODEL_NODAL_STRIDE;
    int64_t i = 0;
#if SAMPLER_AVX512
    /* 8 nodes at a time (a, b, c, d: two 8-float records each), with
     * sb_lin_corner's operations: l . v in double, (l0 vx + l1 vy) + l2 vz,
     * every product and sum rounded (the same bits); then the records
     * (ln n, ln T, v_los, 0) of nodes 0-3 from (a, b) and of 4-7 from (c, d) */
    const __m512d l0 = _mm512_set1_pd(P->l[0]), l1 = _mm512_set1_pd(P->l[1]),
                  l2 = _mm512_set1_pd(P->l[2]);
    const __m512i sel[3] = {_mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 26, 18, 10, 2),
                            _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 27, 19, 11, 3),
                            _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 28, 20, 12, 4)},
                  two = _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 19, 18, 17, 16, 3, 2, 1, 0),
                  nT = _mm512_set_epi32(0, 0, 25, 24, 0, 0, 17, 16, 0, 0, 9, 8, 0, 0, 1, 0),
                  vlo = _mm512_set_epi32(0, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0),
                  vhi = _mm512_set_epi32(0, 7, 0, 0, 0, 6, 0, 0, 0, 5, 0, 0, 0, 4, 0, 0);
    for (; i + 8 <= m->nnodal; i += 8, s += 8 * MODEL_NODAL_STRIDE) {
      const __m512 a = _mm512_loadu_ps(s), b = _mm512_loadu_ps(s + 16),
                   c = _mm512_loadu_ps(s + 32), d = _mm512_loadu_ps(s + 48);
      __m512d f[3]; /* vx, vy, vz of the 8 nodes */
      for (int q = 0; q < 3; q++)
        f[q] = _mm512_cvtps_pd(_mm512_castps512_ps256(_mm512_permutex2var_ps(
            _mm512_permutex2var_ps(a, sel[q], b), two, _mm512_permutex2var_ps(c, sel[q], d))));
      const __m512 vl = _mm512_castps256_ps512(_mm512_cvtpd_ps(_mm512_add_pd(
          _mm512_add_pd(_mm512_mul_pd(l0, f[0]), _mm512_mul_pd(l1, f[1])), _mm512_mul_pd(l2, f[2]))));
      _mm512_storeu_ps(o + LIN_NF * i, _mm512_mask_permutexvar_ps(
                                           _mm512_maskz_permutex2var_ps(0x3333, a, nT, b), 0x4444, vlo, vl));
      _mm512_storeu_ps(o + LIN_NF * (i + 4), _mm512_mask_permutexvar_ps(
                                                 _mm512_maskz_permutex2var_ps(0x3333, c, nT, d), 0x4444, vhi, vl));
    }
#endif
    for (; i < m->nnodal; i++, s += MODEL_NODAL_STRIDE) sb_lin_corner(s, P->l, o + LIN_NF * i);
    P->done[leaf] = 1;
  }
  return o;
}

/* The trilinear function of one cell at a point: sb_lerp3
 * (sampler_body_linear.h: lerps along z, then x, then y, each one
 * subtraction and one fused multiply-add in float) on the projected corner
 * records. No per-cell set-up and no branch on a cell change: every point
 * reads its cell's corners itself. The AVX-512 build does the same
 * operations in the same order (the z lerps of the 4 corner pairs on one
 * 16-lane vector, the x lerps of 2 points on one, the y lerps of 4 on
 * one): the same bits. */

#if SAMPLER_AVX2
/* sb_lerp3 of one point on 256-bit vectors: the z lerps of the corner
 * records 00 and 10 (adjacent) on one vector and of 01 and 11 on another,
 * the x lerps of (00, 01) against (10, 11) on one, the y lerp on 128 bits:
 * the same operations per lane, so the same bits */
static inline void lerp3_avx2(const float *cr, int64_t sy, int64_t sz, float x, float y, float z,
                              float *out) {
  const __m256 vz = _mm256_set1_ps(z);
  const __m256 a0 = _mm256_loadu_ps(cr), a1 = _mm256_loadu_ps(cr + sz),
               b0 = _mm256_loadu_ps(cr + sy), b1 = _mm256_loadu_ps(cr + sy + sz);
  const __m256 wa = _mm256_fmadd_ps(vz, _mm256_sub_ps(a1, a0), a0), /* w00 | w10 */
      wb = _mm256_fmadd_ps(vz, _mm256_sub_ps(b1, b0), b0);          /* w01 | w11 */
  const __m256 u0 = _mm256_permute2f128_ps(wa, wb, 0x20), u1 = _mm256_permute2f128_ps(wa, wb, 0x31);
  const __m256 xv = _mm256_fmadd_ps(_mm256_set1_ps(x), _mm256_sub_ps(u1, u0), u0); /* x0 | x1 */
  const __m128 x0 = _mm256_castps256_ps128(xv), x1 = _mm256_extractf128_ps(xv, 1);
  _mm_storeu_ps(out, _mm_fmadd_ps(_mm_set1_ps(y), _mm_sub_ps(x1, x0), x0));
}
#endif

#if SAMPLER_AVX2
/* sb_lin_place of the np points of a run (jj = 0 .. np-1), 8 at a time:
 * each point's corner record in the leaf's records (nd, floats) and its
 * place in the cell (fx, fy, fz). Lanes past np are written too (the
 * arrays hold a run and 16 more). The same operations per lane as
 * sb_lin_place: fmaf, floorf, the clamps as max/min (which keep its
 * results for +-0 and NaN: the second operand), so the same bits. */
_Static_assert(SB_LIN_NF == 4, "lin_place_run_avx2 scales node numbers by 4");
static void lin_place_run_avx2(const float s0[3], const float gs[3], const double bmax[3],
                               int64_t n0, int64_t n1, int np, int32_t *nd, float *fx, float *fy,
                               float *fz) {
  const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.0f);
  __m256 vs0[3], vgs[3], top[3];
  for (int d = 0; d < 3; d++)
    vs0[d] = _mm256_set1_ps(s0[d]), vgs[d] = _mm256_set1_ps(gs[d]),
    top[d] = _mm256_set1_ps((float)bmax[d]);
  const __m256i vn0 = _mm256_set1_epi32((int32_t)n0), vn1 = _mm256_set1_epi32((int32_t)n1),
                lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  float *const f[3] = {fx, fy, fz};
  for (int q = 0; q < np; q += 8) {
    const __m256 jj = _mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_set1_epi32(q), lane));
    __m256i id[3];
    for (int d = 0; d < 3; d++) {
      const __m256 sd = _mm256_fmadd_ps(vgs[d], jj, vs0[d]);
      const __m256 i = _mm256_min_ps(
          _mm256_max_ps(_mm256_round_ps(sd, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC), zero), top[d]);
      _mm256_storeu_ps(f[d] + q, _mm256_min_ps(_mm256_max_ps(_mm256_sub_ps(sd, i), zero), one));
      id[d] = _mm256_cvttps_epi32(i);
    }
    /* ((i2 n1 + i1) n0 + i0) records of SB_LIN_NF floats: within a leaf's
     * nodes, far below 2^31 */
    const __m256i node = _mm256_add_epi32(
        _mm256_mullo_epi32(_mm256_add_epi32(_mm256_mullo_epi32(id[2], vn1), id[1]), vn0), id[0]);
    _mm256_storeu_si256((__m256i *)(nd + q), _mm256_slli_epi32(node, 2));
  }
}
#endif

/* A run of the line's points in one leaf, from point j (both paths of
 * walk_line_linear_body): 0 where t(j) lies outside the domain (only on
 * round-off at a face); else 1, with je (the end of the run), the leaf's
 * projected corners, its first cell's number, and the run's first place s0
 * and step gs in cells (sb_lin_run_start). */
static inline __attribute__((always_inline)) int
lin_run(const ce_model *m, lin_proj *P, const double A[3], const double B[3],
        const double inv_b[3], const double nf[3], const double *uz, int nk, int j,
        double inv_du, const double Bdu[3], leaf_trail *tr, int *je, const float **nbase,
        int64_t *base, float s0[3], float gs[3]) {
  const double t0 = A[0] + B[0] * uz[j], t1 = A[1] + B[1] * uz[j], t2 = A[2] + B[2] * uz[j];
  if (!(t0 >= 0 && t0 < nf[0] && t1 >= 0 && t1 < nf[1] && t2 >= 0 && t2 < nf[2])) return 0;
  const double t[3] = {t0, t1, t2};
  const model_cache *c = trail_leaf(m, A, B, inv_b, t, uz, nk, j, inv_du, tr, je);
  const double lo[3] = {(double)c->lo[0], (double)c->lo[1], (double)c->lo[2]};
  *nbase = lin_leaf(m, P, c->leaf);
  *base = c->base;
  sb_lin_run_start(t, lo, sb_inv_span(c->shift), Bdu, s0, gs);
  return 1;
}

#if SAMPLER_AVX512
/* memset for the short fills of a run (~20 bytes, lengths varying from run
 * to run): masked 64-byte stores, no branch on the length class */
static inline void fill_bytes(unsigned char *p, unsigned char v, int len) {
#if defined(__AVX512BW__) && defined(__BMI2__)
  const __m512i b = _mm512_set1_epi8((char)v);
  for (; len >= 64; len -= 64, p += 64) _mm512_storeu_si512(p, b);
  if (len > 0) _mm512_mask_storeu_epi8(p, _bzhi_u64(~0ull, (unsigned)len), b);
#else
  memset(p, v, (size_t)len);
#endif
}

/* lerp3 (sb_lerp3) of np points, four at a time, into out[p LIN_NF ..]:
 * point p's cell corners at rec + off[p] (00, 10 along x, then 01, 11 at
 * + sy; the face z = 1 at + sz), its place in the cell (fx, fy, fz)[p].
 * Each point's corner records of the faces z = 0 and z = 1 as two 16-lane
 * vectors, lerped in z (w00, w10, w01, w11 of 4 lanes each); then two
 * points' x lerps on one vector (lanes (w00, w01) of both against (w10,
 * w11), fx of each on its 8 lanes), and four points' y lerps on one (x_0
 * of each against x_1): the same operations per lane as sb_lerp3, so the
 * same bits. The arrays hold np rounded up to a multiple of 4 entries
 * (off and fz valid there); the lanes past np are not stored. A function
 * of its own: the loop keeps its strides and tables in registers. */
static __attribute__((noinline)) void lin_lerp_points(const float *rec, const int32_t *off,
                                                      const float *fx, const float *fy,
                                                      const float *fz, int np, int64_t sy,
                                                      int64_t sz, float *out) {
  /* the grouped x and y lerps take the even 4-lane blocks (w_0y, x_0) of
   * two vectors (shuffle 0x88) against their odd ones (w_1y, x_1: 0xdd);
   * the points' lanes of fx (two points, 8 lanes each) and fy (four, 4) */
  const __m512i pair0 = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0),
                pair1 = _mm512_set_epi32(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2),
                quad = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
  for (int p = 0; p < np; p += 4) {
    __m512 w[4];
    for (int i = 0; i < 4; i++) {
      const float *cr = rec + off[p + i];
      const __m512 f0 = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(cr)),
                                           _mm256_loadu_ps(cr + sy), 1),
                   f1 = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(cr + sz)),
                                           _mm256_loadu_ps(cr + sz + sy), 1);
      w[i] = _mm512_fmadd_ps(_mm512_set1_ps(fz[p + i]), _mm512_sub_ps(f1, f0), f0);
    }
    const __m512 vfx = _mm512_castps128_ps512(_mm_loadu_ps(fx + p)),
                 vfy = _mm512_castps128_ps512(_mm_loadu_ps(fy + p));
    __m512 xv[2];
    for (int h = 0; h < 2; h++) {
      const __m512 u0 = _mm512_shuffle_f32x4(w[2 * h], w[2 * h + 1], 0x88),
                   u1 = _mm512_shuffle_f32x4(w[2 * h], w[2 * h + 1], 0xdd),
                   fxp = _mm512_permutexvar_ps(h ? pair1 : pair0, vfx);
      xv[h] = _mm512_fmadd_ps(fxp, _mm512_sub_ps(u1, u0), u0);
    }
    const __m512 x0 = _mm512_shuffle_f32x4(xv[0], xv[1], 0x88),
                 x1 = _mm512_shuffle_f32x4(xv[0], xv[1], 0xdd),
                 fyq = _mm512_permutexvar_ps(quad, vfy);
    const __m512 v = _mm512_fmadd_ps(fyq, _mm512_sub_ps(x1, x0), x0);
    if (np - p >= 4)
      _mm512_storeu_ps(out + (size_t)p * LIN_NF, v);
    else
      _mm512_mask_storeu_ps(out + (size_t)p * LIN_NF, (__mmask16)((1u << 4 * (np - p)) - 1), v);
  }
}
#endif

/* One sub-line for the linear reconstruction: the interpolated (ln n,
 * ln T, v_los, 0) of every point into pts[j * LIN_NF ..] (lerp3 on the
 * projected corners, lin_leaf), out[j] = 1 for a point
 * outside the domain (0 else), cidx[j] its leaf cell (for the extra fields;
 * cidx NULL: none wanted; -1 outside the domain). The runs of points in one
 * leaf are found as in walk_line; in a run, each point's place in its cell
 * is stepped in float from the run's first point j0: s = s0 + g (j - j0)
 * (one fused multiply-add; s0 = (t(j0) - lo) / span in double, rounded),
 * i = floor(s) clamped to the block, f = s - i clamped to [0, 1] (with
 * AVX-512 16 points at a time across run ends, the same operations, so
 * the same bits).
 * Returns the number of points outside the domain. */
static inline __attribute__((always_inline)) int
walk_line_linear_body(const ce_model *m, lin_proj *P, const double A[3], const double B[3],
                      const double inv_b[3], const double Bdu[3], const double *uz, int nk,
                      double inv_du, unsigned char *out, int64_t *cidx, float *pts,
                      leaf_trail *tr) {
  const double nf[3] = {(double)m->nfine[0], (double)m->nfine[1], (double)m->nfine[2]};
  const int64_t b0 = m->bnx[0], b1 = m->bnx[1], b2 = m->bnx[2];
  const int64_t n0 = b0 + 1, n1 = b1 + 1;
  const int64_t sy = n0 * LIN_NF, sz = n1 * n0 * LIN_NF;
  const double bmax[3] = {(double)(b0 - 1), (double)(b1 - 1), (double)(b2 - 1)};
  int j = 0, nout = 0;
#if SAMPLER_AVX512
  /* The runs of up to LIN_RUNS at a time first (their first places, steps,
   * first points and leaves in tables; each point's run in P->run); then
   * 1. their points' places 16 at a time across run ends, each lane taking
   * its run's entries by a permutation (no loop that ends at a run's end:
   * a run is ~20 points, those loop exits were mispredicted), and 2. the
   * lerps of all of them (lin_lerp_points), none waiting on the placing
   * of its own point. The same operations per point as one run at a time,
   * so the same bits. */
  const __m512 zero = _mm512_setzero_ps(), one = _mm512_set1_ps(1),
               top0 = _mm512_set1_ps((float)bmax[0]), top1 = _mm512_set1_ps((float)bmax[1]),
               top2 = _mm512_set1_ps((float)bmax[2]), fb0 = _mm512_set1_ps((float)b0),
               fb1 = _mm512_set1_ps((float)b1), fn0 = _mm512_set1_ps((float)n0),
               fn1 = _mm512_set1_ps((float)n1);
  const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  unsigned char *run = P->run;
  while (j < nk) {
    float rs[6][LIN_RUNS]; /* s0 x, y, z, gs x, y, z */
    int32_t rj0[LIN_RUNS];
    int32_t rlo[LIN_RUNS]; /* the run's leaf's records in P->rec, floats */
    const float *nb;
    int64_t rbase[LIN_RUNS];
    const int js = j;
    int nr = 0, segout = 0;
    for (; j < nk && nr < LIN_RUNS; nr++) {
      float s0[3], gs[3];
      int je = j + 1;
      if (!lin_run(m, P, A, B, inv_b, nf, uz, nk, j, inv_du, Bdu, tr, &je, &nb, &rbase[nr], s0,
                   gs)) { /* the point reads some leaf's corners; its record is zeroed below */
        out[j] = 1;
        segout++;
        rlo[nr] = 0, rbase[nr] = -1;
        s0[0] = s0[1] = s0[2] = gs[0] = gs[1] = gs[2] = 0;
      } else {
        rlo[nr] = (int32_t)(nb - P->rec);
        fill_bytes(out + j, 0, je - j);
      }
      for (int d = 0; d < 3; d++) rs[d][nr] = s0[d], rs[3 + d][nr] = gs[d];
      rj0[nr] = j;
      fill_bytes(run + j, (unsigned char)nr, je - j);
      j = je;
    }
    __m512 tab[6][2];
    for (int d = 0; d < 6; d++)
      tab[d][0] = _mm512_loadu_ps(rs[d]), tab[d][1] = _mm512_loadu_ps(rs[d] + 16);
    const __m512i tj0a = _mm512_loadu_si512(rj0), tj0b = _mm512_loadu_si512(rj0 + 16),
                  tloa = _mm512_loadu_si512(rlo), tlob = _mm512_loadu_si512(rlo + 16);
    /* 1. every point's corner node and place in its cell, 16 at a time */
    for (int jc = js; jc < j; jc += 16) {
      const int nl = j - jc >= 16 ? 16 : j - jc;
      /* each lane's run (P->run is padded: whole vectors) */
      const __m512i r = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(run + jc)));
      const __m512 jj = _mm512_cvtepi32_ps(_mm512_sub_epi32(
          _mm512_add_epi32(_mm512_set1_epi32(jc), lane), _mm512_permutex2var_epi32(tj0a, r, tj0b)));
#define LIN_TAB(d) _mm512_permutex2var_ps(tab[d][0], r, tab[d][1])
      const __m512 sx = _mm512_fmadd_ps(LIN_TAB(3), jj, LIN_TAB(0)),
                   sy_ = _mm512_fmadd_ps(LIN_TAB(4), jj, LIN_TAB(1)),
                   sz_ = _mm512_fmadd_ps(LIN_TAB(5), jj, LIN_TAB(2));
#undef LIN_TAB
      const __m512 i0 = _mm512_min_ps(_mm512_max_ps(_mm512_roundscale_ps(sx, 0x09), zero), top0),
                   i1 = _mm512_min_ps(_mm512_max_ps(_mm512_roundscale_ps(sy_, 0x09), zero), top1),
                   i2 = _mm512_min_ps(_mm512_max_ps(_mm512_roundscale_ps(sz_, 0x09), zero), top2);
      _mm512_storeu_ps(P->pfx + jc, _mm512_min_ps(_mm512_max_ps(_mm512_sub_ps(sx, i0), zero), one));
      _mm512_storeu_ps(P->pfy + jc, _mm512_min_ps(_mm512_max_ps(_mm512_sub_ps(sy_, i1), zero), one));
      _mm512_storeu_ps(P->pfz + jc, _mm512_min_ps(_mm512_max_ps(_mm512_sub_ps(sz_, i2), zero), one));
      /* node and cell numbers in float: integers below 2^24, so exact;
       * the node's record in P->rec */
      const __m512i nd = _mm512_cvttps_epi32(_mm512_fmadd_ps(_mm512_fmadd_ps(i2, fn1, i1), fn0, i0));
      _mm512_storeu_si512(P->pnd + jc, _mm512_add_epi32(_mm512_permutex2var_epi32(tloa, r, tlob),
                                                        _mm512_slli_epi32(nd, 2)));
      if (cidx) {
        int32_t cc[16];
        _mm512_storeu_si512(cc, _mm512_cvttps_epi32(
                                    _mm512_fmadd_ps(_mm512_fmadd_ps(i2, fb1, i1), fb0, i0)));
        for (int q = 0; q < nl; q++) {
          const int64_t b = rbase[run[jc + q]];
          cidx[jc + q] = b < 0 ? -1 : b + cc[q];
        }
      }
    }
    /* 2. the lerps (lin_lerp_points); lanes past the segment repeat its
     * last point and are not stored */
    for (int e = j; e < j + 3; e++) P->pnd[e] = P->pnd[j - 1], P->pfz[e] = P->pfz[j - 1];
    lin_lerp_points(P->rec, P->pnd + js, P->pfx + js, P->pfy + js, P->pfz + js, j - js, sy, sz,
                    pts + (size_t)js * LIN_NF);
    if (segout) /* outside the domain: zeros */
      for (int p = js; p < j; p++)
        if (out[p]) memset(pts + (size_t)p * LIN_NF, 0, sizeof(float) * LIN_NF);
    nout += segout;
  }
#else
  while (j < nk) {
    float s0[3], gs[3];
    const float *nbase;
    int64_t base;
    int je;
    if (!lin_run(m, P, A, B, inv_b, nf, uz, nk, j, inv_du, Bdu, tr, &je, &nbase, &base, s0, gs)) {
      out[j] = 1; /* outside the domain: only on round-off at a face */
      for (int q = 0; q < LIN_NF; q++) pts[(size_t)j * LIN_NF + q] = 0;
      if (cidx) cidx[j] = -1;
      nout++;
      j++;
      continue;
    }
    memset(out + j, 0, (size_t)(je - j));
    /* the places in cells, in float from the run's first point j0: s =
     * s0 + g (j - j0) with s0 = (t(j0) - lo) / span (in double, then
     * rounded) and g = B du / span the step per point in cells */
#if SAMPLER_AVX2
    if (!cidx) { /* 1. the run's places, 8 at a time; 2. its lerps */
      lin_place_run_avx2(s0, gs, bmax, n0, n1, je - j, P->pnd, P->pfx, P->pfy, P->pfz);
      for (int q = 0; q < je - j; q++)
        lerp3_avx2(nbase + P->pnd[q], sy, sz, P->pfx[q], P->pfy[q], P->pfz[q],
                   pts + (size_t)(j + q) * LIN_NF);
      j = je;
      continue;
    }
#endif
    for (const int j0 = j; j < je; j++) {
      float id[3], fd[3];
      sb_lin_place(s0, gs, (float)(j - j0), bmax, id, fd);
      const int64_t i0 = (int64_t)id[0], i1 = (int64_t)id[1], i2 = (int64_t)id[2];
      if (cidx) cidx[j] = base + (i2 * b1 + i1) * b0 + i0;
      sb_lerp3(nbase + ((i2 * n1 + i1) * n0 + i0) * LIN_NF, sy, sz, fd[0], fd[1], fd[2],
               pts + (size_t)j * LIN_NF);
    }
  }
#endif
  trail_next(tr);
  return nout;
}
#if SAMPLER_FMA_DISPATCH
SAMPLER_FMA_CLONE static int walk_line_linear_fma(const ce_model *m, lin_proj *P,
                                                  const double A[3], const double B[3],
                                                  const double inv_b[3], const double Bdu[3],
                                                  const double *uz, int nk, double inv_du,
                                                  unsigned char *out, int64_t *cidx, float *pts,
                                                  leaf_trail *tr) {
  return walk_line_linear_body(m, P, A, B, inv_b, Bdu, uz, nk, inv_du, out, cidx, pts, tr);
}
#endif
/* B (the line's step in fine cells per metre of u) is the cube's; inv_b =
 * 1/B (0 where B = 0) and Bdu = B / inv_du, once per cube */
static int walk_line_linear(const ce_model *m, lin_proj *P, const double A[3], const double B[3],
                            const double inv_b[3], const double Bdu[3], const double *uz, int nk,
                            double inv_du, unsigned char *out, int64_t *cidx, float *pts,
                            leaf_trail *tr) {
#if SAMPLER_FMA_DISPATCH
  if (__builtin_cpu_supports("fma"))
    return walk_line_linear_fma(m, P, A, B, inv_b, Bdu, uz, nk, inv_du, out, cidx, pts, tr);
#endif
  return walk_line_linear_body(m, P, A, B, inv_b, Bdu, uz, nk, inv_du, out, cidx, pts, tr);
}

#if SAMPLER_AVX512 || SAMPLER_AVX2
/* k = 2, the nv voxels from iz of a vector loop: those whose bit of pos is
 * 0 (no CO: the n-weighted means were 0/0) take the plain means. Rare. */
static inline void lin_plain_means_unset(unsigned pos, int nv, const float *pT, const float *pv,
                                         int nk, int iz, double inv, float *T, float *v_los) {
  if (pos == (1u << nv) - 1) return;
  for (int z = 0; z < nv; z++)
    if (!(pos >> z & 1)) sb_lin_plain_means(pT, pv, nk, 2, iz + z, inv, T, v_los);
}
#endif

/* The voxels of one column under the linear reconstruction, from the
 * interpolated records of its k^2 sub-lines (pts: line L's point j at
 * (L n k + j) LIN_NF; out[] 1 where a point takes the background bg).
 * First every point's n = exp(ln n), T = exp(ln T) and v_los, as three
 * arrays (pn, pT, pv: np floats each, padded to 16); then the n-weighted
 * sums of each voxel's k^3 points in double, in point order (line by
 * line, then along z), and the means: n plain, T and v_los n-weighted, or
 * plain where the points hold no n. With AVX-512: 16 points per exp, and
 * for k = 2 eight voxels at a time, the same operations in the same order
 * (the same bits as the portable loops). */
static inline __attribute__((always_inline)) void
linear_column_body(const float *pts, const unsigned char *out, int nout, int n, int k,
                   const model_real bg[MODEL_NF], double inv, float *pn, float *pT, float *pv,
                   float *v_los, float *T, float *n_co) {
  const int nk = n * k, kk = k * k, np = nk * kk;
#if SAMPLER_AVX512
  const __m512i sel_a = _mm512_set_epi32(29, 25, 21, 17, 13, 9, 5, 1, 28, 24, 20, 16, 12, 8, 4, 0),
                sel_b = _mm512_set_epi32(31, 27, 23, 19, 15, 11, 7, 3, 30, 26, 22, 18, 14, 10, 6, 2);
  for (int j = 0; j < np; j += 16) { /* pts is padded: whole vectors */
    const float *p = pts + (size_t)j * LIN_NF;
    __m512 r0 = _mm512_loadu_ps(p), r1 = _mm512_loadu_ps(p + 16), r2 = _mm512_loadu_ps(p + 32),
           r3 = _mm512_loadu_ps(p + 48);
    /* (ln n of points 0-7 | ln T of 0-7), (v 0-7 | 0), and of points 8-15 */
    __m512 a01 = _mm512_permutex2var_ps(r0, sel_a, r1), b01 = _mm512_permutex2var_ps(r0, sel_b, r1),
           a23 = _mm512_permutex2var_ps(r2, sel_a, r3), b23 = _mm512_permutex2var_ps(r2, sel_b, r3);
    _mm512_storeu_ps(pn + j, expf_poly16(_mm512_shuffle_f32x4(a01, a23, 0x44)));
    _mm512_storeu_ps(pT + j, expf_poly16(_mm512_shuffle_f32x4(a01, a23, 0xee)));
    _mm512_storeu_ps(pv + j, _mm512_shuffle_f32x4(b01, b23, 0x44));
  }
#elif SAMPLER_AVX2
  /* 8 points' records (ln n, ln T, v_los, 0) transposed by unpacks: the
   * lanes come out in point order 0 4 2 6 1 5 3 7, put back by one
   * permutation after the (lane by lane) exps */
  const __m256i order = _mm256_setr_epi32(0, 4, 2, 6, 1, 5, 3, 7);
  for (int j = 0; j < np; j += 8) { /* pts is padded: whole vectors */
    const float *p = pts + (size_t)j * LIN_NF;
    const __m256 r0 = _mm256_loadu_ps(p), r1 = _mm256_loadu_ps(p + 8), r2 = _mm256_loadu_ps(p + 16),
                 r3 = _mm256_loadu_ps(p + 24);
    const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1),
                 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    _mm256_storeu_ps(pn + j, _mm256_permutevar8x32_ps(expf_poly8(_mm256_unpacklo_ps(t0, t2)), order));
    _mm256_storeu_ps(pT + j, _mm256_permutevar8x32_ps(expf_poly8(_mm256_unpackhi_ps(t0, t2)), order));
    _mm256_storeu_ps(pv + j, _mm256_permutevar8x32_ps(_mm256_unpacklo_ps(t1, t3), order));
  }
#else
  for (int j = 0; j < np; j++) {
    pn[j] = sb_expf_poly(pts[(size_t)j * LIN_NF]);
    pT[j] = sb_expf_poly(pts[(size_t)j * LIN_NF + 1]);
    pv[j] = pts[(size_t)j * LIN_NF + 2];
  }
#endif
  if (nout)
    for (int j = 0; j < np; j++)
      if (out[j]) pn[j] = bg[MODEL_N], pT[j] = bg[MODEL_T], pv[j] = 0;
  int iz = 0;
#if SAMPLER_AVX512
  if (k == 2) { /* 8 voxels (16 points of each line) at a time */
    const __m512i eo = _mm512_set_epi32(15, 13, 11, 9, 7, 5, 3, 1, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512d vinv = _mm512_set1_pd(inv), dzero = _mm512_setzero_pd();
    for (; iz + 8 <= n; iz += 8) {
      __m512d w0 = dzero, w1 = dzero, w2 = dzero;
      for (int L = 0; L < 4; L++) {
        const int at = L * nk + 2 * iz;
        __m512 fn = _mm512_permutexvar_ps(eo, _mm512_loadu_ps(pn + at)),
               fT = _mm512_permutexvar_ps(eo, _mm512_loadu_ps(pT + at)),
               fv = _mm512_permutexvar_ps(eo, _mm512_loadu_ps(pv + at));
        for (int i = 0; i < 2; i++) { /* the first point of each voxel, then the second */
          __m512d dn = _mm512_cvtps_pd(i ? _mm512_extractf32x8_ps(fn, 1) : _mm512_castps512_ps256(fn)),
                  dT = _mm512_cvtps_pd(i ? _mm512_extractf32x8_ps(fT, 1) : _mm512_castps512_ps256(fT)),
                  dv = _mm512_cvtps_pd(i ? _mm512_extractf32x8_ps(fv, 1) : _mm512_castps512_ps256(fv));
          w0 = _mm512_add_pd(w0, dn);
          w1 = _mm512_add_pd(w1, _mm512_mul_pd(dn, dT));
          w2 = _mm512_add_pd(w2, _mm512_mul_pd(dn, dv));
        }
      }
      __mmask8 pos = _mm512_cmp_pd_mask(w0, dzero, _CMP_GT_OQ);
      _mm256_storeu_ps(n_co + iz, _mm512_cvtpd_ps(_mm512_mul_pd(w0, vinv)));
      _mm256_storeu_ps(T + iz, _mm512_cvtpd_ps(_mm512_div_pd(w1, w0)));
      _mm256_storeu_ps(v_los + iz, _mm512_cvtpd_ps(_mm512_div_pd(w2, w0)));
      lin_plain_means_unset((unsigned)pos, 8, pT, pv, nk, iz, inv, T, v_los);
    }
  }
#elif SAMPLER_AVX2
  if (k == 2) { /* 4 voxels (8 points of each line) at a time, as the AVX-512 loop */
    const __m256i eo = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    const __m256d vinv = _mm256_set1_pd(inv), dzero = _mm256_setzero_pd();
    for (; iz + 4 <= n; iz += 4) {
      __m256d w0 = dzero, w1 = dzero, w2 = dzero;
      for (int L = 0; L < 4; L++) {
        const int at = L * nk + 2 * iz;
        const __m256 fn = _mm256_permutevar8x32_ps(_mm256_loadu_ps(pn + at), eo),
                     fT = _mm256_permutevar8x32_ps(_mm256_loadu_ps(pT + at), eo),
                     fv = _mm256_permutevar8x32_ps(_mm256_loadu_ps(pv + at), eo);
        for (int i = 0; i < 2; i++) { /* the first point of each voxel, then the second */
          const __m256d dn = _mm256_cvtps_pd(i ? _mm256_extractf128_ps(fn, 1) : _mm256_castps256_ps128(fn)),
                        dT = _mm256_cvtps_pd(i ? _mm256_extractf128_ps(fT, 1) : _mm256_castps256_ps128(fT)),
                        dv = _mm256_cvtps_pd(i ? _mm256_extractf128_ps(fv, 1) : _mm256_castps256_ps128(fv));
          w0 = _mm256_add_pd(w0, dn);
          w1 = _mm256_add_pd(w1, _mm256_mul_pd(dn, dT));
          w2 = _mm256_add_pd(w2, _mm256_mul_pd(dn, dv));
        }
      }
      const int pos = _mm256_movemask_pd(_mm256_cmp_pd(w0, dzero, _CMP_GT_OQ));
      _mm_storeu_ps(n_co + iz, _mm256_cvtpd_ps(_mm256_mul_pd(w0, vinv)));
      _mm_storeu_ps(T + iz, _mm256_cvtpd_ps(_mm256_div_pd(w1, w0)));
      _mm_storeu_ps(v_los + iz, _mm256_cvtpd_ps(_mm256_div_pd(w2, w0)));
      lin_plain_means_unset((unsigned)pos, 4, pT, pv, nk, iz, inv, T, v_los);
    }
  }
#endif
  for (; iz < n; iz++) sb_lin_voxel(pn, pT, pv, nk, k, iz, inv, v_los, T, n_co);
}
#if SAMPLER_FMA_DISPATCH
SAMPLER_FMA_CLONE static void linear_column_fma(const float *pts, const unsigned char *out,
                                                int nout, int n, int k,
                                                const model_real bg[MODEL_NF], double inv,
                                                float *pn, float *pT, float *pv, float *v_los,
                                                float *T, float *n_co) {
  linear_column_body(pts, out, nout, n, k, bg, inv, pn, pT, pv, v_los, T, n_co);
}
#endif
static void linear_column(const float *pts, const unsigned char *out, int nout, int n, int k,
                          const model_real bg[MODEL_NF], double inv, float *pn, float *pT,
                          float *pv, float *v_los, float *T, float *n_co) {
#if SAMPLER_FMA_DISPATCH
  if (__builtin_cpu_supports("fma")) {
    linear_column_fma(pts, out, nout, n, k, bg, inv, pn, pT, pv, v_los, T, n_co);
    return;
  }
#endif
  linear_column_body(pts, out, nout, n, k, bg, inv, pn, pT, pv, v_los, T, n_co);
}

/* The fields of a sub-sample in cell c (-1: the background record bg). */
static inline const model_real *sub_sample(const model_real *cells, const model_real *bg,
                                           int64_t c) {
  return c >= 0 ? cells + c * MODEL_NF : bg;
}

/* The n voxels of one column from the cell indices of its k^2 sub-lines
 * (line L's point j at idx[L*n*k + j]; -1 takes the background record bg).
 * First the n-weighted sums w = (n, n T, n v_x, n v_y, n v_z) of each
 * voxel's k^3 sub-samples, in double, into sums[8 iz ..]; then the means, in
 * a pass of their own so that the divisions of one voxel need not wait for
 * the sums of the next. v_los = l . v is taken after summing (linear). The
 * plain means (voxels without CO) are summed again when needed: rare.
 * With AVX-512 one sub-sample is one masked load of its five floats
 * widened to eight double lanes and one multiply-add with (1, n, n, n, n)
 * (exact products of floats, so the same bits as the portable loop).
 * Inlined with k = 2 as a constant for the default. */
static inline __attribute__((always_inline)) void
sum_column(const model_real *cells, const model_real bg[MODEL_NF], const int64_t *idx, int n,
           int k, const double l[3], double inv, double *sums, float *v_los, float *T,
           float *n_co) {
  const int nk = n * k, kk = k * k;
#if SAMPLER_AVX512
  const __m512d one = _mm512_set1_pd(1);
  const __m512i lane0 = _mm512_setzero_si512();
  for (int iz = 0; iz < n; iz++) {
    __m512d sw = _mm512_setzero_pd();
    for (int L = 0; L < kk; L++)
      for (int i = 0; i < k; i++) {
        const model_real *f = sub_sample(cells, bg, idx[L * nk + iz * k + i]);
        __m512d a = _mm512_cvtps_pd(_mm256_maskz_loadu_ps(0x1f, f));
        __m512d wn = _mm512_mask_permutexvar_pd(one, 0x1e, lane0, a); /* (1, n, n, n, n, 1..) */
        sw = _mm512_fmadd_pd(a, wn, sw);
      }
    _mm512_storeu_pd(sums + 8 * iz, sw);
  }
#elif SAMPLER_AVX2
  /* one sub-sample: its first four fields widened to four double lanes
   * and one multiply and one add with (1, n, n, n) (exact products of
   * floats, as the portable loop's), the fifth (vz) in a scalar */
  const __m256d first = _mm256_setr_pd(1, 0, 0, 0);
  for (int iz = 0; iz < n; iz++) {
    __m256d sw = _mm256_setzero_pd();
    double w4 = 0;
    for (int L = 0; L < kk; L++)
      for (int i = 0; i < k; i++) {
        const model_real *f = sub_sample(cells, bg, idx[L * nk + iz * k + i]);
        const __m256d a = _mm256_cvtps_pd(_mm_loadu_ps(f));
        const double nn = f[MODEL_N];
        const __m256d wn = _mm256_blend_pd(_mm256_set1_pd(nn), first, 0x1); /* (1, n, n, n) */
        sw = _mm256_add_pd(sw, _mm256_mul_pd(a, wn));
        w4 += nn * f[MODEL_VZ];
      }
    _mm256_storeu_pd(sums + 8 * iz, sw);
    sums[8 * iz + 4] = w4;
  }
#else
  for (int iz = 0; iz < n; iz++) {
    double *w = sums + 8 * iz;
    for (int d = 0; d < 5; d++) w[d] = 0;
    for (int L = 0; L < kk; L++)
      for (int i = 0; i < k; i++) {
        const model_real *f = sub_sample(cells, bg, idx[L * nk + iz * k + i]);
        double nn = f[MODEL_N];
        w[0] += nn;
        for (int d = 1; d < 5; d++) w[d] += nn * f[d];
      }
  }
#endif
  for (int iz = 0; iz < n; iz++) {
    const double *w = sums + 8 * iz;
    n_co[iz] = (float)(w[0] * inv);
    if (w[0] > 0) { /* both quotients by one (two-lane) division */
      typedef double pair __attribute__((vector_size(16)));
      pair q = (pair){w[1], l[0] * w[2] + l[1] * w[3] + l[2] * w[4]} / (pair){w[0], w[0]};
      T[iz] = (float)q[0];
      v_los[iz] = (float)q[1];
    } else {
      double p[5] = {0, 0, 0, 0, 0};
      for (int L = 0; L < kk; L++)
        for (int i = 0; i < k; i++) {
          const model_real *f = sub_sample(cells, bg, idx[L * nk + iz * k + i]);
          for (int d = 1; d < 5; d++) p[d] += f[d];
        }
      T[iz] = (float)(p[MODEL_T] * inv);
      v_los[iz] = (float)((l[0] * p[MODEL_VX] + l[1] * p[MODEL_VY] + l[2] * p[MODEL_VZ]) * inv);
    }
  }
}

/* Extra per-cell fields of one column (sample_cube_fields): field e of a
 * voxel is the n-weighted mean of its k^3 sub-samples, sum(n x) / sum(n) in
 * double in sub-sample order, or their plain mean where sum(n) = 0. */
static void extra_column(const model_real *cells, const model_real bg[MODEL_NF], const int64_t *idx,
                         int n, int k, double inv, int nextra, const float *const *fields,
                         const float *bgx, float *const *out, size_t at) {
  const int nk = n * k, kk = k * k;
  for (int e = 0; e < nextra; e++)
    for (int iz = 0; iz < n; iz++) {
      double w = 0, s = 0, p = 0;
      for (int L = 0; L < kk; L++)
        for (int i = 0; i < k; i++) {
          int64_t c = idx[L * nk + iz * k + i];
          double nn = c >= 0 ? cells[c * MODEL_NF + MODEL_N] : bg[MODEL_N];
          double x = c >= 0 ? fields[e][c] : bgx ? bgx[e] : 0.0;
          w += nn;
          s += nn * x;
          p += x;
        }
      out[e][at + iz] = (float)(w > 0 ? s / w : p * inv);
    }
}

int sampler_prepare(ce_model *m, const sampler_opts *o) {
  if (o->reconstruction == SAMPLER_LINEAR) return model_nodal_build(m);
  if (o->reconstruction == SAMPLER_LIMITED) return sampler_limited_build(m);
  return 0;
}

/* The voxels of one (ix, iy) column are filled by k^2 sub-lines along z,
 * each stepping through n*k points in runs of points in one leaf (the
 * leaves mostly those of the previous sub-line, leaf_trail); the cell
 * indices of all k^2 sub-lines first, then the sums per voxel
 * (sum_column). Positions are evaluated directly (not accumulated) in
 * units of the finest cells. */
static int sample(const ce_model *m, const double q[4], const sampler_opts *o, float *v_los,
                  float *T, float *n_co, int nextra, const float *const *fields, const float *bgx,
                  float *const *out) {
  CE_TRY(sampler_check(m, o));
  const int linear = o->reconstruction == SAMPLER_LINEAR,
            limited = o->reconstruction == SAMPLER_LIMITED, pointwise = linear || limited;
  CE_TRY(sampler_prepare((ce_model *)m, o)); /* once per model, under its lock */
  double R[9], c[3];
  dir_matrix(q, R);
  model_centre(m, c);
  const int n = o->n, k = o->k, nk = n * k;
  const double l[3] = {R[2], R[5], R[8]};
  double *uz = malloc(sizeof(double) * (size_t)nk);
  int64_t *idx = malloc(sizeof(int64_t) * (size_t)nk * k * k);
  double *sums = malloc(sizeof(double) * 8 * (size_t)n);
  /* linear and limited: the cells of the points (for the extra fields);
   * limited: the points' values (read by sum_column as cells, + 3 floats of
   * slack for its 8-lane loads); linear: the points' interpolated records
   * (LIN_NF floats, padded to 16 points), whether each takes the
   * background, their n, T, v_los (linear_column) and the corner records
   * projected on l (lin_proj) */
  const int np = nk * k * k, npad = (np + 15) / 16 * 16;
  int64_t *nidx = pointwise && nextra ? malloc(sizeof(int64_t) * (size_t)np) : NULL;
  model_real *fr = limited ? calloc((size_t)np * MODEL_NF + 8, sizeof(model_real)) : NULL;
  float *lp = linear ? calloc((size_t)npad * LIN_NF, sizeof(float)) : NULL;
  float *pn = linear ? malloc(sizeof(float) * 3 * (size_t)npad) : NULL;
  unsigned char *lout = linear ? malloc((size_t)np) : NULL;
  lin_proj proj = {0};
  const int proj_failed = linear && lin_proj_open(&proj, m, l, nk) != 0;
  leaf_trail trail = {malloc(sizeof(model_cache) * (size_t)nk),
                      malloc(sizeof(model_cache) * (size_t)nk), 0, 0, 0};
  if (proj_failed || !uz || !idx || !sums || !trail.prev || !trail.cur ||
      (pointwise && nextra && !nidx) || (limited && !fr) || (linear && (!lp || !pn || !lout))) {
    free(nidx);
    free(fr);
    free(lp);
    free(pn);
    free(lout);
    lin_proj_close(&proj);
    free(uz);
    free(sums);
    free(idx);
    free(trail.prev);
    free(trail.cur);
    if (proj_failed) return -1; /* lin_proj_open said why */
    CE_FAIL("sampler: out of memory");
  }
  for (int j = 0; j < nk; j++) uz[j] = ((j / k + (j % k + 0.5) / k) / n - 0.5) * o->edge;
  /* every sub-line's step in fine cells per metre of u, B, is the cube's:
   * 1/B and B / inv_du once per cube */
  const double inv_du = nk / o->edge;
  double B[3], inv_b[3], Bdu[3];
  for (int d = 0; d < 3; d++) {
    B[d] = R[3 * d + 2] * m->inv_dxf[d];
    inv_b[d] = B[d] != 0 ? 1 / B[d] : 0;
    Bdu[d] = B[d] / inv_du;
  }
  const int fill = o->fill_background;
  const double r2 = o->ball_radius > 0 ? o->ball_radius * o->ball_radius : INFINITY;
  /* what a sub-sample outside the ball or the domain takes (zeros without a
   * fill: only round-off at a face reaches there) */
  const model_real bg[MODEL_NF] = {fill ? (model_real)o->bg_n : 0, fill ? (model_real)o->bg_T : 0,
                                   0, 0, 0};
  const double inv = 1.0 / (k * k * k);
  model_cache cache = {0};
  for (int ix = 0; ix < n; ix++)
    for (int iy = 0; iy < n; iy++) {
      int nout = 0; /* linear: points of the column that take the background */
      for (int a = 0; a < k; a++)
        for (int b = 0; b < k; b++) {
          /* the sub-line's place across the cube: the same formula as uz */
          const double ux = uz[ix * k + a], uy = uz[iy * k + b];
          double lb[3], A[3];
          int64_t *line = idx + (size_t)(a * k + b) * nk;
          int64_t *nline = nidx ? nidx + (size_t)(a * k + b) * nk : NULL;
          model_real *fline = limited ? fr + (size_t)(a * k + b) * nk * MODEL_NF : NULL;
          for (int d = 0; d < 3; d++) {
            lb[d] = c[d] + R[3 * d] * ux + R[3 * d + 1] * uy;
            A[d] = (lb[d] - m->xmin[d]) * m->inv_dxf[d];
          }
          if (linear) {
            unsigned char *lo_ = lout + (size_t)(a * k + b) * nk;
            nout += walk_line_linear(m, &proj, A, B, inv_b, Bdu, uz, nk, inv_du, lo_, nline,
                                     lp + (size_t)(a * k + b) * nk * LIN_NF, &trail);
            if (fill) /* the ball: background beyond r */
              for (int j = 0; j < nk; j++) {
                double x[3] = {lb[0] + R[2] * uz[j], lb[1] + R[5] * uz[j], lb[2] + R[8] * uz[j]};
                double d0 = x[0] - c[0], d1 = x[1] - c[1], d2 = x[2] - c[2];
                if (!(d0 * d0 + d1 * d1 + d2 * d2 <= r2)) {
                  nout += !lo_[j];
                  lo_[j] = 1;
                  if (nline) nline[j] = -1;
                }
              }
          } else if (fill) { /* rare: per point, with the ball and the domain checked */
            for (int j = 0; j < nk; j++) {
              double x[3] = {lb[0] + R[2] * uz[j], lb[1] + R[5] * uz[j], lb[2] + R[8] * uz[j]};
              double d0 = x[0] - c[0], d1 = x[1] - c[1], d2 = x[2] - c[2];
              line[j] = d0 * d0 + d1 * d1 + d2 * d2 <= r2 ? model_locate(m, x, &cache) : -1;
            }
          } else {
            walk_line(m, A, B, inv_b, uz, nk, inv_du, line, &trail);
          }
          if (limited) { /* the cells' slopes at the points; idx then as linear's */
            limited_points(m, A, B, uz, nk, line, fline);
            const int64_t first = (int64_t)(a * k + b) * nk;
            for (int j = 0; j < nk; j++) {
              if (nline) nline[j] = line[j];
              line[j] = line[j] >= 0 ? first + j : -1;
            }
          }
        }
      size_t at = ((size_t)ix * n + iy) * n;
      if (linear) {
        linear_column(lp, lout, nout, n, k, bg, inv, pn, pn + npad, pn + 2 * (size_t)npad,
                      v_los + at, T + at, n_co + at);
      } else {
        /* limited: the points' values stand in for the cells */
        const model_real *src = limited ? fr : m->cells;
        if (k == 2)
          sum_column(src, bg, idx, n, 2, l, inv, sums, v_los + at, T + at, n_co + at);
        else
          sum_column(src, bg, idx, n, k, l, inv, sums, v_los + at, T + at, n_co + at);
      }
      if (nextra)
        extra_column(m->cells, bg, pointwise ? nidx : idx, n, k, inv, nextra, fields, bgx, out, at);
    }
  free(uz);
  free(idx);
  free(nidx);
  free(fr);
  free(lp);
  free(pn);
  free(lout);
  lin_proj_close(&proj);
  free(sums);
  free(trail.prev);
  free(trail.cur);
  return 0;
}

_Static_assert(SB_RECON_CONSTANT == SAMPLER_CONSTANT && SB_RECON_LINEAR == SAMPLER_LINEAR &&
                   SB_RECON_LIMITED == SAMPLER_LIMITED,
               "sampler_body.h's reconstruction numbers are sampler.h's");
_Static_assert(SB_LIMITED_STRIDE == SAMPLER_LIMITED_STRIDE && MODEL_NF == 5 && MODEL_T == 1,
               "sb_limited_point reads sampler_limited_build's records");
_Static_assert(MODEL_NODAL_STRIDE == 8 && MODEL_N == 0 && MODEL_T == 1 && MODEL_VX == 2,
               "sampler_body_linear.h reads 8-float corner records (ln n, ln T, v)");

int sampler_flatten(const ce_model *m, sampler_flat *F, int32_t **leaf_geo) {
  if (m->nleaves > INT32_MAX / 8 || m->nnodes > INT32_MAX)
    CE_FAIL("sampler: %lld leaves, too many for the flat model", (long long)m->nleaves);
  /* the linear reconstruction's corners travel with the model (once per
   * model, under its lock) */
  CE_TRY(model_nodal_build((ce_model *)m));
  int32_t *g = ce_malloc_array((size_t)m->nleaves, 4 * sizeof(int32_t), "leaf geometry");
  if (!g) return -1;
  for (int64_t i = 0; i < m->nleaves; i++) {
    g[4 * i] = m->ids[i].level;
    for (int d = 0; d < 3; d++) g[4 * i + 1 + d] = m->ids[i].ig[d];
  }
  *F = (sampler_flat){.levmax = m->levmax, .bshift = m->bshift, .ncell = m->ncell,
                      .cells = m->cells, .root = m->root, .nodes = m->nodes, .leaf_geo = g,
                      .nodal = m->nodal, .nnodal = m->nnodal, .limited = m->limited};
  for (int d = 0; d < 3; d++) {
    F->ng[d] = m->ng[d], F->bnx[d] = m->bnx[d], F->xmin[d] = m->xmin[d];
    F->inv_dxf[d] = m->inv_dxf[d], F->nfine[d] = m->nfine[d];
  }
  *leaf_geo = g;
  return 0;
}

int sampler_geometry(const ce_model *m, const double q[4], const sampler_opts *o, sampler_geo *G) {
  CE_TRY(sampler_check(m, o));
  if (o->reconstruction == SAMPLER_LIMITED && !m->limited)
    CE_FAIL("sampler: the limited reconstruction's slopes are not built for this model "
            "(sampler_prepare)");
  memset(G, 0, sizeof *G);
  G->n = o->n, G->k = o->k, G->fill = o->fill_background, G->edge = o->edge;
  G->recon = o->reconstruction;
  G->r2 = o->ball_radius > 0 ? o->ball_radius * o->ball_radius : INFINITY;
  dir_matrix(q, G->R);
  model_centre(m, G->c);
  G->bg[MODEL_N] = o->fill_background ? (model_real)o->bg_n : 0;
  G->bg[MODEL_T] = o->fill_background ? (model_real)o->bg_T : 0;
  G->inv = 1.0 / (o->k * o->k * o->k);
  return 0;
}

int sample_cube(const ce_model *m, const double q[4], const sampler_opts *o, float *v_los,
                float *T, float *n_co) {
  return sample(m, q, o, v_los, T, n_co, 0, NULL, NULL, NULL);
}

int sample_cube_fields(const ce_model *m, const double q[4], const sampler_opts *o, float *v_los,
                       float *T, float *n_co, int nextra, const float *const *fields,
                       const float *bg_fields, float *const *out) {
  if (nextra < 0 || nextra > SAMPLER_MAX_EXTRA || (nextra && (!fields || !out)))
    CE_FAIL("sampler: %d extra fields, expected 0..%d with their arrays", nextra, SAMPLER_MAX_EXTRA);
  for (int e = 0; e < nextra; e++)
    if (!fields[e] || !out[e]) CE_FAIL("sampler: extra field %d has no array", e);
  return sample(m, q, o, v_los, T, n_co, nextra, fields, bg_fields, out);
}

/* ---------------------------------------------------------------------- */
/* The device sampler (sampler_cuda.h) for a ce_model */

struct sampler_device {
  const ce_model *m;
  int32_t *geo;
#ifdef COEMU_HAVE_CUDA
  sampler_cuda *d;
#endif
};

int sampler_device_open(const ce_model *m, int recon, int ordinal, sampler_device **out,
                        char *desc, size_t ndesc) {
  *out = NULL;
  if (!sampler_recon_name(recon))
    CE_FAIL("sampler device: reconstruction %d, expected %s", recon, SAMPLER_RECON_NAMES);
#ifdef COEMU_HAVE_CUDA
  /* limited: its records travel with the model (built once per model, under
   * its lock); for the others they stay on the host even where built (96
   * bytes a cell the handle would not read) */
  if (recon == SAMPLER_LIMITED) CE_TRY(sampler_limited_build((ce_model *)m));
  sampler_device *s = calloc(1, sizeof *s);
  if (!s) CE_FAIL("sampler: out of memory");
  s->m = m;
  sampler_flat F;
  int rc = sampler_flatten(m, &F, &s->geo);
  if (recon != SAMPLER_LIMITED) F.limited = NULL;
  if (rc < 0 ||
      sampler_cuda_open(&F, m->nleaves, m->nnodes, (int64_t)m->ng[0] * m->ng[1] * m->ng[2],
                        ordinal, &s->d, desc, ndesc) < 0) {
    free(s->geo);
    free(s);
    return -1;
  }
  *out = s;
  return 0;
#else
  (void)m, (void)ordinal, (void)desc, (void)ndesc;
  CE_FAIL("sampler device 'cuda' is not built into this coemu (built: cpu)");
#endif
}

int sampler_device_open_sibling(sampler_device *s, sampler_device **out) {
  *out = NULL;
#ifdef COEMU_HAVE_CUDA
  sampler_device *t = calloc(1, sizeof *t);
  if (!t) CE_FAIL("sampler: out of memory");
  t->m = s->m; /* geo: the flat model's host arrays stay s's */
  if (sampler_cuda_open_sibling(s->d, &t->d) < 0) {
    free(t);
    return -1;
  }
  *out = t;
  return 0;
#else
  (void)s;
  CE_FAIL("sampler device 'cuda' is not built into this coemu (built: cpu)");
#endif
}

int sampler_device_supports(int r) { return sampler_recon_name(r) != NULL; }

/* dev NULL: sampler_device_sample (every cube to the host); else
 * sampler_device_sample_dev */
static int device_sample(sampler_device *s, int ncube, const double (*q)[4], const sampler_opts *o,
                         const float **dev, float *const *v_los, float *const *T,
                         float *const *n_co) {
  if (!sampler_device_supports(o->reconstruction)) /* before anything else: without CUDA too */
    CE_FAIL("sampler device: reconstruction %d, expected %s", o->reconstruction,
            SAMPLER_RECON_NAMES);
  if (!s) CE_FAIL("sampler device: no device handle (sampler_device_open)");
#ifdef COEMU_HAVE_CUDA
  if (ncube < 1) return 0;
  sampler_geo *G = ce_malloc_array((size_t)ncube, sizeof *G, "sampler geometries");
  if (!G) return -1;
  int rc = 0;
  for (int c = 0; c < ncube && rc == 0; c++) rc = sampler_geometry(s->m, q[c], o, &G[c]);
  if (rc == 0)
    rc = dev ? sampler_cuda_sample_dev(s->d, ncube, G, dev, v_los, T, n_co)
             : sampler_cuda_sample(s->d, ncube, G, v_los, T, n_co);
  free(G);
  return rc;
#else
  (void)s, (void)ncube, (void)q, (void)dev, (void)v_los, (void)T, (void)n_co;
  CE_FAIL("sampler device 'cuda' is not built into this coemu (built: cpu)");
#endif
}

int sampler_device_sample(sampler_device *s, int ncube, const double (*q)[4],
                          const sampler_opts *o, float *const *v_los, float *const *T,
                          float *const *n_co) {
  return device_sample(s, ncube, q, o, NULL, v_los, T, n_co);
}

int sampler_device_sample_dev(sampler_device *s, int ncube, const double (*q)[4],
                              const sampler_opts *o, const float **dev, float *const *v_los,
                              float *const *T, float *const *n_co) {
  *dev = NULL;
  return device_sample(s, ncube, q, o, dev, v_los, T, n_co);
}

void *sampler_device_host_alloc(int ordinal, size_t n, size_t size, const char *what, int *pinned) {
  *pinned = 0;
#ifdef COEMU_HAVE_CUDA
  size_t bytes;
  /* within ce_malloc_array's checks (its message otherwise) */
  if (ce_mul_size(n, size, &bytes) == 0 && bytes <= ce_alloc_limit()) {
    void *p = sampler_cuda_host_alloc(ordinal, bytes);
    if (p) {
      *pinned = 1;
      return p;
    }
  }
#else
  (void)ordinal;
#endif
  return ce_malloc_array(n, size, what);
}

void sampler_device_host_free(void *p, int pinned) {
#ifdef COEMU_HAVE_CUDA
  if (pinned) {
    sampler_cuda_host_free(p);
    return;
  }
#else
  (void)pinned;
#endif
  free(p);
}

void sampler_device_close(sampler_device *s) {
  if (!s) return;
#ifdef COEMU_HAVE_CUDA
  sampler_cuda_close(s->d);
#endif
  free(s->geo);
  free(s);
}
