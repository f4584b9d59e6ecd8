/* bench_stats.c - `coemu bench stats`: throughput of the exact moments
 * accumulator (one core) and time of the exact distributed median.
 *   coemu bench stats [--n-moments N] [--n-median N]
 *   mpiexec -n 2 coemu bench stats --n-median 1e9     (N is the total over ranks)
 * Prints
 *   stats moments GB/s_per_core X n=N
 *   stats chunk_median n=M ms X introselect_ms Y value=V
 *   stats ln n=M ns_per_value X libm_ns_per_value Y
 *   stats median n=N ranks=R passes=P seconds=S value=V
 * chunk_median: the lower median of one chunk of M values (a sample's 64^3
 * voxels by default), as `coemu stats` takes it for every sample and input
 * field (the median of medians): stats_lower_median_f32's radix selection,
 * then the introselect (stats_select_f32) on the same data for comparison;
 * medians of 9 runs on one rank. ln: stats_ln_f32 (ln T, ln n of every
 * sample's inputs) on M positive values, against the scalar libm loop it
 * equals bit for bit (a mismatch is an error).
 * Data: deterministic (common/rng.h keyed by the global index block), so
 * the median does not depend on the number of ranks. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mpi.h>

#include "common/cli.h"
#include "common/clock.h"
#include "common/error.h"
#include "common/progress.h"
#include "common/rng.h"
#include "pipeline/bench/benches.h"
#include "stats/moments.h"
#include "stats/quantile.h"
#include "stats/select.h"
#include "stats/transforms.h"

/* Values [lo, hi) of the global sequence: a 23-bit significand in [1, 2)
 * scaled by 2^(0..15) with a random sign: many exponents, heavy-ish tail. */
static void fill(float *x, uint64_t lo, uint64_t hi) {
  const uint64_t block = 1 << 16;
  for (uint64_t b = lo / block; b * block < hi; b++) {
    ce_rng r = ce_rng_make(99, (uint32_t)b, (uint32_t)(b >> 32), 0);
    uint64_t s = b * block, e = s + block;
    for (uint64_t i = s; i < e; i++) {
      uint32_t u = ce_rng_u32(&r);
      if (i < lo || i >= hi) continue;
      uint32_t bits = (u >> 9) | 0x3f800000u;
      float f;
      memcpy(&f, &bits, 4);
      x[i - lo] = ldexpf(f, (int)(u & 15)) * ((u & 16) ? -1.0f : 1.0f);
    }
  }
}

/* stats_ln_f32 against the scalar libm loop. */
static int ln_speed(size_t m) {
  enum { RUNS = 9 };
  float *x = ce_malloc_array(m, sizeof *x, "ln data"), *a = ce_malloc_array(m, sizeof *a, "ln out"),
        *b = ce_malloc_array(m, sizeof *b, "ln out");
  if (!x || !a || !b) {
    free(x), free(a), free(b);
    return cli_fail("bench stats");
  }
  fill(x, 0, m);
  for (size_t i = 0; i < m; i++) x[i] = fabsf(x[i]) * 37.0f; /* positive, as T and n */
  double t[2][RUNS];
  for (int run = 0; run < RUNS; run++) {
    double t0 = ce_now();
    stats_ln_f32(x, m, a);
    t[0][run] = ce_now() - t0;
    t0 = ce_now();
    for (size_t i = 0; i < m; i++) b[i] = (float)log((double)x[i]);
    t[1][run] = ce_now() - t0;
  }
  qsort(t[0], RUNS, sizeof t[0][0], ce_cmp_double);
  qsort(t[1], RUNS, sizeof t[1][0], ce_cmp_double);
  const int same = memcmp(a, b, m * sizeof *a) == 0;
  printf("stats ln n=%zu ns_per_value %.3f libm_ns_per_value %.3f%s\n", m,
         1e9 * t[0][RUNS / 2] / (double)m, 1e9 * t[1][RUNS / 2] / (double)m,
         same ? "" : " MISMATCH");
  free(x), free(a), free(b);
  if (same) return 0;
  ce_err("stats_ln_f32 and the scalar libm loop disagree");
  return cli_fail("bench stats");
}

/* The per-chunk lower median: radix selection and introselect. */
static int chunk_median(size_t m) {
  enum { RUNS = 9 };
  float *x = ce_malloc_array(m, sizeof *x, "chunk data"), *w = ce_malloc_array(m, sizeof *w, "chunk scratch");
  if (!x || !w) {
    free(x), free(w);
    return cli_fail("bench stats");
  }
  fill(x, 0, m);
  double t[2][RUNS];
  float v[2] = {0, 0};
  for (int run = 0; run < RUNS; run++)
    for (int alg = 0; alg < 2; alg++) {
      memcpy(w, x, m * sizeof *w);
      const double t0 = ce_now();
      v[alg] = alg == 0 ? stats_lower_median_f32(w, m) : stats_select_f32(w, m, (m - 1) / 2);
      t[alg][run] = ce_now() - t0;
    }
  qsort(t[0], RUNS, sizeof t[0][0], ce_cmp_double);
  qsort(t[1], RUNS, sizeof t[1][0], ce_cmp_double);
  printf("stats chunk_median n=%zu ms %.3f introselect_ms %.3f value=%.9g%s\n", m,
         1e3 * t[0][RUNS / 2], 1e3 * t[1][RUNS / 2], v[0], v[0] == v[1] ? "" : " MISMATCH");
  free(x), free(w);
  if (v[0] == v[1]) return 0;
  ce_err("chunk median: the radix selection and the introselect disagree");
  return cli_fail("bench stats");
}

/* A count of float32 values typed as a number (1e8 or 100000000): a whole
 * number from 1 to what `ranks` arrays of the allocation limit hold. Checked
 * here, before MPI_Init, as a usage error that echoes the text typed: cast
 * unchecked, 1e20 became 18446744073709551615 values and a failed
 * allocation (exit 1) while -5 was a usage error. */
static int parse_count(const char *opt, const char *text, uint64_t ranks, size_t *out) {
  const double limit = (double)ce_alloc_limit(), max = floor(limit / 4) * (double)ranks;
  double v;
  if (cli_parse_double(text, &v) < 0 || !isfinite(v))
    return cli_usage_fail("bench stats", "%s %s: not a number (expected a count of values, "
                          "e.g. 1e8)", opt, text);
  char need[160] = "";
  if (v > max)
    snprintf(need, sizeof need, ": %s float32 values take %.3g bytes%s, over the allocation limit "
             "of %.3g GiB%s", text, 4 * v, ranks > 1 ? " over the ranks" : "",
             limit / 1073741824.0, ranks > 1 ? " a rank" : "");
  if (v < 1 || v > max || v != floor(v))
    return cli_usage_fail("bench stats", "%s %s: expected a whole number 1..%.0f%s%s", opt, text,
                          max, ranks > 1 ? " on these ranks" : "", need);
  *out = (size_t)v;
  return 0;
}

int bench_stats(int argc, char **argv) {
  const char *nmom_s = "2.5e7", *nmed_s = "2e7", *nchunk_s = "262144";
  cli_opt opts[] = {
      {"n-moments", CLI_STR, &nmom_s, "N", "values for the moments throughput (one rank), 1 to "
       "the allocation limit / 4 bytes (64 GiB: 1.7e10; default 2.5e7)", 0, 0},
      {"n-chunk", CLI_STR, &nchunk_s, "M", "values of one chunk for the per-chunk lower median, "
       "1 to the allocation limit / 4 bytes (default 262144, 64^3)", 0, 0},
      {"n-median", CLI_STR, &nmed_s, "N", "values for the exact median, over all ranks, 1 to "
       "ranks x the allocation limit / 4 bytes (default 2e7)", 0, 0},
      {0}};
  const cli_command spec = {"bench stats", "[options]",
                            "Exact moments throughput and exact distributed median time. Counts "
                            "may be written 1e8.", opts, 0, 0};
  cli_status r = cli_run_parse(&spec, argc, argv, NULL, NULL);
  if (r != CLI_OK) return cli_exit(r);
  /* the ranks a launcher started (0: it does not say; 1 then, the bound
     that holds for any number) share the median's values */
  const int launched = cli_launcher_size();
  size_t nmom, nmed, nchunk;
  int bad = parse_count("--n-moments", nmom_s, 1, &nmom);
  if (!bad) bad = parse_count("--n-chunk", nchunk_s, 1, &nchunk);
  if (!bad) bad = parse_count("--n-median", nmed_s, launched > 1 ? (uint64_t)launched : 1, &nmed);
  if (bad) return bad;
  MPI_Init(NULL, NULL);
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  int rc = 0;
  if (rank == 0) {
    size_t n = nmom;
    float *x = ce_malloc_array(n, sizeof *x, "moments data");
    if (!x) {
      rc = cli_fail("bench stats");
    } else {
      fill(x, 0, n);
      double best = 1e30;
      stats_summary s;
      for (int rep = 0; rep < 3; rep++) {
        double t0 = ce_now();
        stats_moments m;
        stats_moments_init(&m);
        stats_moments_add_f32(&m, x, n);
        stats_moments_summary(&m, &s);
        double t = ce_now() - t0;
        if (t < best) best = t;
      }
      printf("stats moments GB/s_per_core %.2f n=%zu mean=%.6g std=%.6g\n",
             (double)n * 4 / best / 1e9, n, s.mean, s.std);
      free(x);
    }
    if (rc == 0) rc = chunk_median(nchunk);
    if (rc == 0) rc = ln_speed(nchunk);
  }
  MPI_Bcast(&rc, 1, MPI_INT, 0, MPI_COMM_WORLD);
  if (rc == 0) {
    uint64_t N = nmed, lo = N * (uint64_t)rank / (uint64_t)size,
             hi = N * (uint64_t)(rank + 1) / (uint64_t)size;
    float *x = ce_malloc_array(hi - lo ? hi - lo : 1, sizeof *x, "median data");
    int ok = x != NULL, all_ok;
    MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (!all_ok) {
      rc = ok ? 1 : cli_fail("bench stats");
    } else {
      fill(x, lo, hi);
      MPI_Barrier(MPI_COMM_WORLD);
      double t0 = ce_now(), med;
      int passes;
      if (stats_quantiles_f32(MPI_COMM_WORLD, x, hi - lo, 1, (double[]){0.5}, &med, &passes) < 0)
        rc = cli_fail("bench stats");
      double t = ce_now() - t0;
      if (rc == 0 && rank == 0)
        printf("stats median n=%llu ranks=%d passes=%d seconds=%.3f value=%.9g\n",
               (unsigned long long)N, size, passes, t, med);
    }
    free(x);
  }
  MPI_Finalize();
  return rc;
}
