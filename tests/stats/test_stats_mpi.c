/* test_stats_mpi.c - stats/ across MPI ranks (run with 1, 2, 3 and 4 ranks).
 * Every rank generates the whole data set (a pure function of the index),
 * keeps an uneven slice of it (rank 1 keeps none when there are >= 2 ranks)
 * and checks the collective results against a serial reference computed
 * from all the data: min, max, quantiles and medians identical, moments
 * bit-identical to one accumulator over everything (the accumulators are
 * exact), the median of medians and its rank interval, and its bound. */
#include <stdlib.h>

#include "check_mpi.h"
#include "common/rng.h"
#include "stats/moments.h"
#include "stats/moments_mpi.h"
#include "stats/quantile.h"
#include "stats/select.h"

static int rank_, size_;

static float value(int set, size_t i) {
  ce_rng r = ce_rng_make(2024, (uint32_t)set, (uint32_t)i, 0);
  double u = ce_rng_uniform_pos(&r), v = ce_rng_uniform(&r);
  double g = sqrt(-2 * log(u)) * cos(2 * M_PI * v);
  switch (set) {
  case 0: return (float)(1e8 + 1e3 * g);                   /* offset */
  case 1: return (float)(tan(M_PI * (v - 0.5)));           /* heavy tail */
  case 2: return (float)((int)(v * 7));                    /* ties */
  case 3: return v < 0.05 ? NAN : v < 0.07 ? (u < 0.5 ? -INFINITY : INFINITY) : (float)g; /* NaN, Inf */
  case 4: return 42.0f;                                    /* constant */
  }
  return 0;
}

/* The slice [lo, hi) of n values kept by this rank: uneven, rank 1 empty. */
static void slice(size_t n, size_t *lo, size_t *hi) {
  size_t cut[5] = {0};
  double w[4] = {0.5, 0.0, 0.3, 0.2};
  if (size_ == 1) { *lo = 0; *hi = n; return; }
  double tot = 0;
  for (int r = 0; r < size_; r++) tot += w[r];
  double acc = 0;
  for (int r = 0; r < size_; r++) {
    acc += w[r];
    cut[r + 1] = r == size_ - 1 ? n : (size_t)(n * acc / tot);
  }
  *lo = cut[rank_];
  *hi = cut[rank_ + 1];
}

static int cmpf(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return (x > y) - (x < y);
}

static double ref_quantile(const float *sorted, size_t n, double q) {
  double h = q * (double)(n - 1);
  size_t lo = (size_t)floor(h), hi = (size_t)ceil(h);
  double frac = h - floor(h);
  return frac == 0 || sorted[lo] == sorted[hi] ? sorted[lo]
                                               : sorted[lo] + frac * (sorted[hi] - (double)sorted[lo]);
}

static void test_sets(void) {
  const size_t n = 100003;
  const double qs[5] = {0, 0.25, 0.5, 0.999, 1};
  float *all = malloc(n * sizeof *all), *fin = malloc(n * sizeof *fin);
  double *alld = malloc(n * sizeof *alld);
  for (int set = 0; set < 5; set++) {
    for (size_t i = 0; i < n; i++) all[i] = value(set, i);
    size_t lo, hi;
    slice(n, &lo, &hi);
    /* Moments: bit-identical to one accumulator over everything. */
    stats_moments m, ref;
    stats_moments_init(&m);
    stats_moments_add_f32(&m, all + lo, hi - lo);
    CHECK_OK(stats_moments_allreduce(&m, MPI_COMM_WORLD));
    stats_moments_init(&ref);
    stats_moments_add_f32(&ref, all, n);
    stats_summary s, sr;
    stats_moments_summary(&m, &s);
    stats_moments_summary(&ref, &sr);
    CHECK(s.count == sr.count && s.nan_count == sr.nan_count);
    CHECK_MSG(memcmp(&s.mean, &sr.mean, 8) == 0 && memcmp(&s.m2, &sr.m2, 8) == 0,
              "set %d: mean %.17g m2 %.17g, serial %.17g %.17g", set, s.mean, s.m2, sr.mean, sr.m2);
    CHECK(s.min == sr.min && s.max == sr.max);
    /* Quantiles: exact, 2 passes. */
    size_t nf = 0;
    for (size_t i = 0; i < n; i++)
      if (isfinite(all[i])) fin[nf++] = all[i];
    qsort(fin, nf, sizeof *fin, cmpf);
    double out[5];
    int passes = 0;
    CHECK_OK(stats_quantiles_f32(MPI_COMM_WORLD, all + lo, hi - lo, 5, qs, out, &passes));
    CHECK(passes == 2);
    for (int k = 0; k < 5; k++)
      CHECK_MSG(out[k] == ref_quantile(fin, nf, qs[k]), "set %d q %g: %.9g, expected %.9g", set,
                qs[k], out[k], ref_quantile(fin, nf, qs[k]));
    CHECK(out[0] == s.min && out[4] == s.max);
    /* The same data as double: 4 passes, same answers. */
    for (size_t i = 0; i < n; i++) alld[i] = all[i];
    CHECK_OK(stats_quantiles_f64(MPI_COMM_WORLD, alld + lo, hi - lo, 5, qs, out, &passes));
    CHECK(passes == 4);
    for (int k = 0; k < 5; k++) CHECK(out[k] == ref_quantile(fin, nf, qs[k]));
  }
  free(all);
  free(fin);
  free(alld);
}

/* The median of medians: exact value, its true rank, and the bound
 * q_hi >= 1/4, q_lo <= 3/4 for chunks of equal size, on random data and on
 * data built to push it to the bound. */
static void test_median_of_medians(void) {
  const size_t c = 101, m = 64, n = c * m;
  float *all = malloc(n * sizeof *all), *meds = malloc(c * sizeof *meds),
        *tmp = malloc(m * sizeof *tmp);
  for (int adversarial = 0; adversarial < 2; adversarial++) {
    for (size_t i = 0; i < n; i++) {
      size_t ch = i / m, j = i % m;
      if (!adversarial) all[i] = value(1, i);
      /* First half of the chunks: lower half small, upper half large;
       * others all large. M is then the largest "small" value: its rank is
       * about n/4. */
      else all[i] = ch <= c / 2 ? (j < m / 2 ? (float)(ch * m + j) : 1e6f + (float)i)
                                : 1e6f + (float)i;
    }
    for (size_t ch = 0; ch < c; ch++) {
      memcpy(tmp, all + ch * m, m * sizeof *tmp);
      meds[ch] = stats_lower_median_f32(tmp, m);
    }
    /* Serial reference. */
    float *sm = malloc(c * sizeof *sm);
    memcpy(sm, meds, c * sizeof *sm);
    float M = stats_lower_median_f32(sm, c);
    uint64_t lt = 0, le = 0;
    stats_rank_count_f32(all, n, M, &lt, &le);
    free(sm);
    /* Distributed: chunks split unevenly over the ranks. */
    size_t lo, hi;
    slice(c, &lo, &hi);
    double mom;
    CHECK_OK(stats_mom_value(MPI_COMM_WORLD, meds + lo, hi - lo, &mom));
    CHECK(mom == M);
    uint64_t llt = 0, lle = 0;
    stats_rank_count_f32(all + lo * m, (hi - lo) * m, mom, &llt, &lle);
    stats_mom_report r;
    CHECK_OK(stats_mom_finish(MPI_COMM_WORLD, mom, llt, lle, (hi - lo) * m, &r));
    CHECK(r.n_total == n && r.n_lt == lt && r.n_le == le);
    CHECK(r.q_hi >= 0.25 && r.q_lo <= 0.75);
    CHECK(fabs(r.rank_error) <= 0.25);
    CHECK(r.n_le >= ((c + 1) / 2) * ((m + 1) / 2));
    CHECK(n - r.n_lt >= (c / 2 + 1) * (m / 2 + 1));
    if (adversarial) {
      CHECK_MSG(r.q_hi < 0.26, "adversarial q_hi %g", r.q_hi);
      CHECK(r.rank_error < -0.24);
    }
  }
  free(all);
  free(meds);
  free(tmp);
}

/* No data anywhere: NaN, no hang; bad arguments refused on every rank. */
static void test_empty(void) {
  double out[1];
  int passes;
  CHECK_OK(stats_quantiles_f32(MPI_COMM_WORLD, NULL, 0, 1, (double[]){0.5}, out, &passes));
  CHECK(isnan(out[0]) && passes == 1);
  CHECK_ERR(stats_quantiles_f32(MPI_COMM_WORLD, NULL, 0, 1, (double[]){1.5}, out, &passes),
            "expected 0..1");
  stats_moments mm;
  stats_moments_init(&mm);
  CHECK_OK(stats_moments_allreduce(&mm, MPI_COMM_WORLD));
  stats_summary s;
  stats_moments_summary(&mm, &s);
  CHECK(s.count == 0 && isnan(s.mean));
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
  if (size_ > 4) {
    fprintf(stderr, "test_stats_mpi: run with 1..4 ranks\n");
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  RUN(test_sets);
  RUN(test_median_of_medians);
  RUN(test_empty);
  return check_mpi_finish();
}
