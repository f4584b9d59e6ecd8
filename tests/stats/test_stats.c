/* test_stats.c - stats/ on one process: exact moments against long-double
 * two-pass references and closed forms, split independence (bit-identical),
 * selection against sorting, the transforms and the /stats group.
 *
 * Tolerances: the moments are exact (integer bins, rounded once), so they
 * are the same on every host and thread split; the tolerances bound the
 * long-double reference's own error, Chan's merge in double (a few
 * roundings of positive terms), and the transforms' float32 rounding (2^-24
 * of |ln x| <= 40, see there). Merges and splits are compared bit for bit:
 * exact by construction. */
#include <float.h>
#include <hdf5.h>
#include <stdlib.h>
#include <unistd.h>

#include "check.h"
#include "common/rng.h"
#include "stats/moments.h"
#include "stats/select.h"
#include "stats/statsfile.h"
#include "stats/transforms.h"

/* Reference: two passes in long double over the finite values. */
static void reference(const float *x, size_t n, long double *mean, long double *m2,
                      size_t *finite) {
  long double s = 0;
  size_t k = 0;
  for (size_t i = 0; i < n; i++)
    if (isfinite(x[i])) { s += x[i]; k++; }
  *mean = k ? s / k : 0;
  long double q = 0;
  for (size_t i = 0; i < n; i++)
    if (isfinite(x[i])) { long double d = x[i] - *mean; q += d * d; }
  *m2 = q;
  *finite = k;
}

static void summary_of(const float *x, size_t n, stats_summary *s) {
  stats_moments m;
  stats_moments_init(&m);
  stats_moments_add_f32(&m, x, n);
  stats_moments_summary(&m, s);
}

typedef enum { D_NORMAL, D_OFFSET, D_HEAVY, D_TIES, D_TINY, D_HUGE, D_NAN } dist;

static float draw(ce_rng *r, dist d) {
  double u = ce_rng_uniform_pos(r), v = ce_rng_uniform(r);
  double g = sqrt(-2 * log(u)) * cos(2 * M_PI * v);
  switch (d) {
  case D_NORMAL: return (float)g;
  case D_OFFSET: return (float)(1e8 + 100 * g);
  case D_HEAVY: return (float)tan(M_PI * (v - 0.5)) * (float)exp(10 * u);  /* Cauchy-like */
  case D_TIES: return (float)((int)(v * 5) - 2);
  case D_TINY: return (float)(g * 1e-42);  /* subnormal */
  case D_HUGE: return (float)(g * 1e37);
  case D_NAN: return v < 0.1 ? NAN : v < 0.15 ? (u < 0.5 ? INFINITY : -INFINITY) : (float)g;
  }
  return 0;
}

static float *make(dist d, size_t n, uint32_t key) {
  float *x = malloc(n * sizeof *x);
  ce_rng r = ce_rng_make(77, key, (uint32_t)d, 0);
  for (size_t i = 0; i < n; i++) x[i] = draw(&r, d);
  return x;
}

static void test_moments_against_reference(void) {
  const size_t n = 200001;
  for (int d = D_NORMAL; d <= D_NAN; d++) {
    float *x = make((dist)d, n, 1);
    long double mean, m2;
    size_t k;
    reference(x, n, &mean, &m2, &k);
    stats_summary s;
    summary_of(x, n, &s);
    CHECK(s.count == (int64_t)k);
    /* The exact result is rounded once or twice; the long-double reference
     * carries about 1e-16 relative error of the sum of |x|. */
    double scale = 0;
    for (size_t i = 0; i < n; i++)
      if (isfinite(x[i])) scale += fabs(x[i]) / (double)k;
    CHECK_CLOSE(s.mean, (double)mean, 1e-15, 1e-15 * scale);
    CHECK_CLOSE(s.m2, (double)m2, 1e-12, 0);
    CHECK_CLOSE(s.std, sqrtl(m2 / k), 1e-12, 0);
    float mn = INFINITY, mx = -INFINITY;
    int64_t nn = 0, ni = 0;
    for (size_t i = 0; i < n; i++) {
      if (isnan(x[i])) nn++;
      else if (isinf(x[i])) ni++;
      else { mn = fminf(mn, x[i]); mx = fmaxf(mx, x[i]); }
    }
    CHECK(s.min == mn && s.max == mx);
    CHECK(s.nan_count == nn && s.inf_count == ni);
    if (d == D_NAN) CHECK(nn > 0 && ni > 0);
    free(x);
  }
}

static void test_moments_closed_forms(void) {
  /* 1..n: mean (n+1)/2, M2 = n (n^2 - 1) / 12, both exact in double. */
  const size_t n = 100000;
  float *x = malloc(n * sizeof *x);
  for (size_t i = 0; i < n; i++) x[i] = (float)(i + 1);
  stats_summary s;
  summary_of(x, n, &s);
  CHECK(s.mean == 50000.5);
  CHECK(s.m2 == (double)n * ((double)n * n - 1) / 12);
  /* Constant data far from 0: variance exactly 0, mean exactly the value. */
  for (size_t i = 0; i < n; i++) x[i] = 123456792.0f;
  summary_of(x, n, &s);
  CHECK(s.mean == 123456792.0 && s.m2 == 0 && s.std == 0);
  CHECK(s.min == 123456792.0 && s.max == 123456792.0);
  /* Offset cancellation: 1e8 + {-8, +8} (float spacing at 1e8 is 8):
   * variance exactly 64, where naive sum of squares in double loses it. */
  for (size_t i = 0; i < n; i++) x[i] = i % 2 ? 100000008.0f : 99999992.0f;
  summary_of(x, n, &s);
  CHECK(s.mean == 1e8 && s.var == 64);
  /* Extremes: FLT_MAX and the smallest subnormal together. */
  float e[4] = {FLT_MAX, -FLT_MAX, 0x1p-149f, -0x1p-149f};
  summary_of(e, 4, &s);
  CHECK(s.mean == 0);
  CHECK_CLOSE(s.var, (double)FLT_MAX * FLT_MAX / 2, 1e-15, 0);
  summary_of(e + 2, 1, &s);
  CHECK(s.mean == 0x1p-149 && s.m2 == 0);
  /* Empty and all-NaN. */
  summary_of(x, 0, &s);
  CHECK(s.count == 0 && isnan(s.mean) && isnan(s.min));
  float nanv[3] = {NAN, NAN, INFINITY};
  summary_of(nanv, 3, &s);
  CHECK(s.count == 0 && s.nan_count == 2 && s.inf_count == 1 && isnan(s.std));
  free(x);
}

/* Any split into chunks, merged in any order, gives bit-identical results. */
static void test_moments_split_independent(void) {
  const size_t n = 300007;
  for (int d = D_NORMAL; d <= D_NAN; d++) {
    float *x = make((dist)d, n, 2);
    stats_summary whole;
    summary_of(x, n, &whole);
    ce_rng r = ce_rng_make(5, (uint32_t)d, 0, 0);
    enum { NC = 7 };
    stats_moments *parts = malloc(NC * sizeof *parts);
    for (int c = 0; c < NC; c++) stats_moments_init(&parts[c]);
    size_t i = 0;
    while (i < n) {  /* uneven pieces, scattered over the parts */
      size_t len = 1 + ce_rng_u32(&r) % 100000;
      if (len > n - i) len = n - i;
      stats_moments_add_f32(&parts[ce_rng_u32(&r) % NC], x + i, len);
      i += len;
    }
    /* Through packed states (what moments_mpi.c sends between ranks), into
     * an accumulator whose bins are not folded yet. */
    stats_moments *viapack = malloc(sizeof *viapack);
    stats_moments_init(viapack);
    stats_moments_add_f32(viapack, x, 1000);
    stats_moments *rest = malloc(sizeof *rest);
    stats_moments_init(rest);
    stats_moments_add_f32(rest, x + 1000, n - 1000);
    stats_moments_packed pk;
    stats_moments_pack(rest, &pk);
    stats_moments_merge_packed(viapack, &pk);
    for (int c = NC - 1; c > 0; c--) stats_moments_merge(&parts[c - 1], &parts[c]);
    stats_summary s, sp;
    stats_moments_summary(&parts[0], &s);
    stats_moments_summary(viapack, &sp);
    CHECK(s.count == whole.count && s.nan_count == whole.nan_count);
    CHECK(memcmp(&s.mean, &whole.mean, 8) == 0 && memcmp(&s.m2, &whole.m2, 8) == 0);
    CHECK(s.min == whole.min && s.max == whole.max);
    CHECK(sp.count == whole.count && sp.nan_count == whole.nan_count &&
          sp.inf_count == whole.inf_count);
    CHECK(memcmp(&sp.mean, &whole.mean, 8) == 0 && memcmp(&sp.m2, &whole.m2, 8) == 0);
    CHECK(sp.min == whole.min && sp.max == whole.max);
    CHECK(memcmp(viapack->S, parts[0].S, sizeof viapack->S) == 0 &&
          memcmp(viapack->Q, parts[0].Q, sizeof viapack->Q) == 0);
    free(rest);
    free(viapack);
    free(parts);
    free(x);
  }
}

/* Chan's pairwise merge of summaries agrees with the exact moments. */
static void test_chan_merge(void) {
  const size_t n = 100000;
  float *x = make(D_OFFSET, n, 3);
  stats_summary whole, a, b;
  summary_of(x, n, &whole);
  summary_of(x, 30000, &a);
  summary_of(x + 30000, n - 30000, &b);
  stats_summary_merge(&a, &b);
  CHECK(a.count == whole.count);
  CHECK_CLOSE(a.mean, whole.mean, 1e-15, 0);
  CHECK_CLOSE(a.m2, whole.m2, 1e-9, 0);
  stats_summary empty;
  summary_of(x, 0, &empty);
  stats_summary c = empty;
  stats_summary_merge(&c, &whole);
  CHECK(c.mean == whole.mean && c.m2 == whole.m2);
  free(x);
}

/* the key order (select.h): as the floats', -0 below +0; the sorted
   references of test_select (compared with ==, so the zeros' order does not
   matter there) and of test_order_stat (compared bit for bit) */
static int cmpkey(const void *a, const void *b) {
  uint32_t x = stats_key_f32(*(const float *)a), y = stats_key_f32(*(const float *)b);
  return (x > y) - (x < y);
}

static void test_select(void) {
  const size_t n = 10007;
  float *x = malloc(n * sizeof *x), *s = malloc(n * sizeof *s), *w = malloc(n * sizeof *w);
  ce_rng r = ce_rng_make(9, 0, 0, 0);
  for (int pattern = 0; pattern < 7; pattern++) {
    for (size_t i = 0; i < n; i++) {
      switch (pattern) {
      case 0: x[i] = (float)ce_rng_uniform(&r); break;
      case 1: x[i] = (float)i; break;                     /* sorted */
      case 2: x[i] = (float)(n - i); break;               /* reversed */
      case 3: x[i] = 4.0f; break;                         /* constant */
      case 4: x[i] = (float)(ce_rng_u32(&r) % 3); break;  /* ties */
      case 5: x[i] = (float)(i < n / 2 ? i : n - i); break; /* organ pipe */
      case 6: x[i] = draw(&r, D_HEAVY); break;
      }
    }
    memcpy(s, x, n * sizeof *x);
    qsort(s, n, sizeof *s, cmpkey);
    size_t ks[] = {0, 1, n / 4, (n - 1) / 2, n / 2, n - 2, n - 1};
    for (size_t j = 0; j < sizeof ks / sizeof ks[0]; j++) {
      memcpy(w, x, n * sizeof *x);
      float v = stats_select_f32(w, n, ks[j]);
      CHECK_MSG(v == s[ks[j]], "pattern %d k %zu: %g, expected %g", pattern, ks[j], v, s[ks[j]]);
      int part = 1;
      for (size_t i = 0; i < n; i++)
        if ((i < ks[j] && w[i] > v) || (i > ks[j] && w[i] < v)) part = 0;
      CHECK(part);
    }
    memcpy(w, x, n * sizeof *x);
    stats_select_cost cost;
    stats_select_cost_f32(w, n, n / 2, &cost);
    CHECK_MSG(cost.visits <= 30 * n, "pattern %d: %zu visits for n = %zu", pattern, cost.visits, n);
    memcpy(w, x, n * sizeof *x);
    CHECK(stats_median_f32(w, n) == s[n / 2]);  /* n odd */
    memcpy(w, x, (n - 1) * sizeof *x);
    memcpy(s, x, (n - 1) * sizeof *x);
    qsort(s, n - 1, sizeof *s, cmpkey);
    CHECK(stats_median_f32(w, n - 1) == 0.5 * ((double)s[(n - 2) / 2] + s[(n - 1) / 2]));
    memcpy(w, x, (n - 1) * sizeof *x);
    CHECK(stats_lower_median_f32(w, n - 1) == s[(n - 2) / 2]);
  }
  /* A median of three that keeps almost everything (the three sampled
   * elements are the smallest) makes the next step take the BFPRT pivot. */
  for (size_t i = 0; i < n; i++) x[i] = (float)(i + 10);
  x[0] = 0; x[n / 2] = 1; x[n - 1] = 2;
  memcpy(s, x, n * sizeof *x);
  qsort(s, n, sizeof *s, cmpkey);
  stats_select_cost cost;
  CHECK(stats_select_cost_f32(x, n, n / 2, &cost) == s[n / 2]);
  CHECK(cost.bfprt_steps >= 1 && cost.visits <= 30 * n);
  float small[1] = {3};
  CHECK(stats_median_f32(small, 1) == 3);
  float two[2] = {5, 1};
  CHECK(stats_median_f32(two, 2) == 3);
  float withnan[5] = {NAN, 2, INFINITY, NAN, 1};
  CHECK(stats_drop_nan_f32(withnan, 5) == 3);
  float withnan2[5] = {NAN, 2, INFINITY, NAN, 1};
  CHECK(stats_drop_nonfinite_f32(withnan2, 5) == 2);
  free(x);
  free(s);
  free(w);
}

/* stats_order_stat_f32 (radix selection) against a sort in key order: every
 * rank of small arrays, chosen ranks of large ones, on data that spreads
 * over every key level (signs, exponents, subnormals, +-0, +-inf), lies in
 * one top-level bin (the later levels decide), is constant, or ties. The
 * returned value's bits must be the sorted array's. */
static void test_order_stat(void) {
  const size_t big = 200003;
  float *x = malloc(big * sizeof *x), *s = malloc(big * sizeof *s), *w = malloc(big * sizeof *w);
  ce_rng r = ce_rng_make(11, 0, 0, 0);
  for (int pattern = 0; pattern < 8; pattern++) {
    for (int size = 0; size < 5; size++) {
      const size_t n = (size_t[]){1, 2, 7, 1000, big}[size];
      for (size_t i = 0; i < n; i++) {
        const uint32_t u = ce_rng_u32(&r);
        float v;
        switch (pattern) {
        case 0: v = (float)ce_rng_uniform(&r); break;
        case 1: memcpy(&v, &u, 4); if (isnan(v)) v = 0.0f; break; /* any bits */
        case 2: v = 1.0f + (float)(u >> 8) * 0x1p-24f * 0x1p-10f; break; /* one top bin */
        case 3: v = -3.5f; break;                                   /* constant */
        case 4: v = (float)(u % 5) - 2.0f; break;                   /* ties, with 0 */
        case 5: v = (u & 1) ? 0.0f : -0.0f; break;                  /* signed zeros */
        case 6: v = (u % 4 == 0) ? INFINITY : (u % 4 == 1) ? -INFINITY : (u % 4 == 2) ? 0x1p-149f
                                                                            : -0x1p-140f; break;
        default: v = draw(&r, D_HEAVY); break;
        }
        x[i] = v;
      }
      memcpy(s, x, n * sizeof *x);
      qsort(s, n, sizeof *s, cmpkey);
      const size_t every = n <= 1000 ? 1 : n / 17;
      int bad = 0;
      for (size_t k = 0; k < n && bad < 3; k += (k + every < n || k == n - 1) ? every : n - 1 - k) {
        memcpy(w, x, n * sizeof *x);
        const float v = stats_order_stat_f32(w, n, k);
        if (memcmp(&v, &s[k], 4) != 0) {
          CHECK_MSG(0, "pattern %d n %zu k %zu: %a, expected %a", pattern, n, k, v, s[k]);
          bad++;
        }
      }
      CHECK_MSG(!bad, "pattern %d n %zu", pattern, n);
      memcpy(w, x, n * sizeof *x);
      const float lm = stats_lower_median_f32(w, n);
      CHECK(memcmp(&lm, &s[(n - 1) / 2], 4) == 0);
    }
  }
  free(x);
  free(s);
  free(w);
}

/* stats_ln_f32 (libmvec's vector log where the float rounding is certain)
 * against the scalar (float)log((double)x), bit for bit: every 37th
 * positive float (all exponents, subnormals included: 58 million values),
 * the specials (+-0, negatives, +-inf, NaN), values next to 1, and arrays
 * whose length is no multiple of 8. */
static void test_ln_exact(void) {
  const size_t chunk = 1 << 20;
  float *x = malloc(chunk * sizeof *x), *a = malloc(chunk * sizeof *a);
  size_t n = 0, checked = 0, differ = 0;
  float first_bad = 0;
  for (uint64_t b = 1; b <= 0x7f800000u; b += 37) {
    const uint32_t u = (uint32_t)b;
    memcpy(&x[n++], &u, 4);
    if (n == chunk || b + 37 > 0x7f800000u) {
      stats_ln_f32(x, n, a);
      for (size_t i = 0; i < n; i++) {
        const float r = (float)log((double)x[i]);
        if (memcmp(&r, &a[i], 4) != 0 && differ++ == 0) first_bad = x[i];
      }
      checked += n;
      n = 0;
    }
  }
  CHECK_MSG(differ == 0, "%zu of %zu values differ from libm's, the first x = %a", differ, checked,
            (double)first_bad);
  const float special[] = {0.0f, -0.0f, -1.0f, -INFINITY, INFINITY, NAN, -NAN, 1.0f,
                           nextafterf(1.0f, 0.0f), nextafterf(1.0f, 2.0f), 1.0f + 0x1p-20f,
                           1.0f - 0x1p-21f, 0x1p-149f, FLT_MAX, 2.7182817f, 0.5f, 3.0f};
  const size_t ns = sizeof special / sizeof special[0];
  for (size_t len = 1; len <= ns; len++) {
    stats_ln_f32(special, len, a);
    for (size_t i = 0; i < len; i++) {
      const float r = (float)log((double)special[i]);
      CHECK_MSG(memcmp(&r, &a[i], 4) == 0, "x = %a: %a, libm %a", (double)special[i],
                (double)a[i], (double)r); /* NaNs too: those lanes are libm's */
    }
  }
  free(x);
  free(a);
}

static stats_norm example_norm(int mode) {
  stats_norm p = {0};
  p.vz_mean = 120.5; p.vz_std = 3.2e3;
  p.lnT_min = log(10.0); p.lnT_scale = 2.1;
  p.lnn_min = log(1e6); p.lnn_scale = 4.5;
  p.i_mode = mode;
  if (mode == STATS_I_MINMAX) {
    p.lnI_clip = STATS_LNI_CLIP; p.lnI_min = -40; p.lnI_scale = -27.064306 - -40;
  } else {
    p.lnI_clip = -INFINITY; p.lnI_min = -50; p.lnI_scale = 6.5;
  }
  return p;
}

static void test_transforms(void) {
  enum { NV = 1000 };
  float in[3 * NV], fw[3 * NV], back[3 * NV];
  ce_rng r = ce_rng_make(11, 0, 0, 0);
  for (int i = 0; i < NV; i++) {
    in[i] = (float)(2e4 * (ce_rng_uniform(&r) - 0.5));
    in[NV + i] = (float)(10 * exp(5 * ce_rng_uniform(&r)));
    in[2 * NV + i] = (float)(1e6 * exp(20 * ce_rng_uniform(&r)));
  }
  stats_norm p = example_norm(STATS_I_MINMAX);
  stats_norm_inputs(&p, in, NV, fw);
  CHECK_CLOSE(fw[0], (in[0] - 120.5) / 3.2e3, 1e-6, 1e-6);
  CHECK_CLOSE(fw[NV], (log(in[NV]) - log(10.0)) / 2.1, 1e-6, 1e-6);
  stats_denorm_inputs(&p, fw, NV, back);
  /* ln x is rounded to float32 (relative error 2^-24 of |ln x| <= 40),
   * so exp(ln x) carries up to ~3e-6 relative error. */
  for (int i = 0; i < 3 * NV; i++) CHECK_CLOSE(back[i], in[i], 5e-6, 1e-3);
  /* Targets, minmax with the reference values of the paper: min -40, max
   * -27.064306: I = e^max -> 1, I = e^-40 -> 0, smaller is clipped to 0,
   * zeros take the sample's smallest positive value. */
  float I[5] = {(float)exp(-27.064306), (float)exp(-40), (float)exp(-45), 0, (float)exp(-30)};
  float t[5], Ib[5];
  stats_norm_targets(&p, I, 5, t);
  CHECK_CLOSE(t[0], 1, 1e-6, 1e-6);
  CHECK_CLOSE(t[1], 0, 0, 1e-6);
  CHECK(t[2] == 0 && t[3] == 0);
  CHECK_CLOSE(t[4], (-30 + 40) / 12.935694, 1e-6, 1e-6);
  stats_denorm_targets(&p, t, 5, Ib);
  CHECK_CLOSE(Ib[0], I[0], 1e-5, 0);
  CHECK_CLOSE(Ib[4], I[4], 1e-5, 0);
  /* Median mode: no clip; zero -> smallest positive (e^-45). */
  stats_norm pm = example_norm(STATS_I_MEDIAN);
  stats_norm_targets(&pm, I, 5, t);
  CHECK_CLOSE(t[2], (-45 + 50) / 6.5, 1e-6, 0);
  CHECK(t[3] == t[2]);
  stats_denorm_targets(&pm, t, 5, Ib);
  for (int i = 0; i < 5; i++) CHECK_CLOSE(Ib[i], i == 3 ? I[2] : I[i], 1e-5, 0);
  /* A negative intensity (round-off; the exact one is >= 0) counts as a
   * zero: the sample's smallest positive value, not NaN (which /stats and
   * the training targets would carry); NaN stays NaN; all-zero sample ->
   * -inf (median mode). */
  float neg[4] = {-1e-29f, 2, -0.0f, 3}, ln[4];
  stats_ln_intensity(neg, 4, -INFINITY, ln);
  CHECK(ln[0] == (float)log(2.0) && ln[1] == ln[0] && ln[2] == ln[0] && ln[3] == (float)log(3.0));
  float nan_in[2] = {NAN, -1};
  stats_ln_intensity(nan_in, 2, -40, ln);
  CHECK(isnan(ln[0]) && ln[1] == -40); /* no positive value: fill 0, ln 0 = -inf, clipped */
  float zero[2] = {0, 0};
  stats_ln_intensity(zero, 2, -INFINITY, ln);
  CHECK(isinf(ln[0]) && ln[0] < 0);
  stats_ln_intensity(zero, 2, -40, ln);
  CHECK(ln[0] == -40);
  /* The outlier rule. */
  stats_norm po = p;
  po.outlier_vz_range = STATS_OUTLIER_VZ_RANGE;
  float vz[3] = {-5e4f, 0, 5.0001e4f};
  CHECK(stats_is_outlier(&po, vz, 3) == 1);
  vz[2] = 4.9e4f;
  CHECK(stats_is_outlier(&po, vz, 3) == 0);
  CHECK(stats_is_outlier(&p, (float[]){-1e9f, 1e9f}, 2) == 0);  /* rule off */
}

static void test_statsfile(void) {
  char path[64];
  snprintf(path, sizeof path, "/tmp/coemu_test_stats_%d.h5", (int)getpid());
  hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  CHECK(f >= 0);
  H5Fclose(f);
  stats_norm p = example_norm(STATS_I_MINMAX), q;
  CHECK_ERR(stats_file_read_norm(path, &q), "no group /stats");
  stats_field fl[2] = {0};
  snprintf(fl[0].name, sizeof fl[0].name, "v_z");
  snprintf(fl[1].name, sizeof fl[1].name, "ln_T");
  fl[0].s.count = 10; fl[0].s.mean = 1.5; fl[0].s.std = 2; fl[0].median = 1.25;
  fl[0].mom.mom = 1; fl[0].mom.rank_error = -0.125; fl[0].chunks = 3;
  stats_provenance prov = {"train", 20, 10, 1, 2, 0, 0, 0, 0.25};
  CHECK_OK(stats_file_write(path, fl, 2, &p, &prov));
  CHECK_OK(stats_file_write(path, fl, 2, &p, &prov));  /* replaces */
  { /* the share of pixels below the clip, as an attribute of the group */
    hid_t hf = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT), g = H5Gopen2(hf, "/stats", H5P_DEFAULT);
    hid_t a = H5Aopen(g, "pixels_below_clip", H5P_DEFAULT);
    double frac = -1;
    CHECK(a >= 0 && H5Aread(a, H5T_NATIVE_DOUBLE, &frac) >= 0 && frac == 0.25);
    if (a >= 0) H5Aclose(a);
    H5Gclose(g);
    H5Fclose(hf);
  }
  CHECK_OK(stats_file_read_norm(path, &q));
  CHECK(memcmp(&p.vz_mean, &q.vz_mean, 6 * sizeof(double)) == 0);
  CHECK(q.i_mode == p.i_mode && q.lnI_clip == p.lnI_clip && q.lnI_min == p.lnI_min &&
        q.lnI_scale == p.lnI_scale && q.outlier_vz_range == p.outlier_vz_range);
  stats_field g;
  CHECK_OK(stats_file_read_field(path, "v_z", &g));
  CHECK(g.s.count == 10 && g.s.mean == 1.5 && g.median == 1.25 && g.mom.rank_error == -0.125 &&
        g.chunks == 3);
  CHECK_ERR(stats_file_read_field(path, "ln_X", &g), "/stats/ln_X: no such group");
  CHECK_ERR(stats_file_read_norm("/nonexistent/x.h5", &q), "cannot open");
  p.vz_std = 0;
  CHECK_OK(stats_file_write(path, fl, 2, &p, &prov));
  CHECK_ERR(stats_file_read_norm(path, &q), "not > 0");
  unlink(path);
}

int main(void) {
  RUN(test_moments_against_reference);
  RUN(test_moments_closed_forms);
  RUN(test_moments_split_independent);
  RUN(test_chan_merge);
  RUN(test_select);
  RUN(test_order_stat);
  RUN(test_ln_exact);
  RUN(test_transforms);
  RUN(test_statsfile);
  return check_report();
}
