/* quantile.c - exact distributed quantiles by histogram refinement on
 * order-preserving keys (see quantile.h). */
#include "stats/quantile.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"

int stats_qsel_init(stats_qsel *s, MPI_Comm comm, stats_key_width width, int nq,
                    const double *q) {
  memset(s, 0, sizeof *s);
  if (width != STATS_KEY32 && width != STATS_KEY64)
    CE_FAIL("stats_qsel_init: key width %d, expected 32 or 64", (int)width);
  if (nq < 1 || nq > STATS_QMAX)
    CE_FAIL("stats_qsel_init: %d quantiles, expected 1..%d", nq, STATS_QMAX);
  for (int i = 0; i < nq; i++)
    if (!(q[i] >= 0 && q[i] <= 1)) CE_FAIL("stats_qsel_init: q[%d] = %g, expected 0..1", i, q[i]);
  s->comm = comm;
  s->width = width;
  s->nq = nq;
  memcpy(s->q, q, (size_t)nq * sizeof *q);
  s->nt = 2 * nq;
  s->ngroups = 1;
  s->hist = ce_calloc_array(STATS_QBINS, sizeof(uint64_t), "quantile histogram");
  return s->hist ? 0 : -1;
}

int stats_qsel_done(const stats_qsel *s) { return s->done; }

/* The bits of the key fixed after `pass` passes are the top 16*pass.
 * Pass 1 skips non-finite values (NaN, +-Inf: rejected). Later passes need
 * no test: the keys of +Inf and positive NaNs are >= 0xff800000 (float32;
 * top bits >= 0xfff0 for double), those of -Inf and negative NaNs
 * <= 0x007fffff (<= 0x000f...), so they fill top-16-bit bins that hold no
 * finite value, and a prefix selected from pass 1 never matches them. (The
 * test in pass 1 also lets gcc vectorise that loop better than without.) */
#define FEED_BODY(KEY)                                                         \
  if (s->done) return;                                                         \
  uint64_t *h = s->hist;                                                       \
  if (s->pass == 0) {                                                          \
    int sh = s->width - 16;                                                    \
    for (size_t i = 0; i < n; i++)                                             \
      if (isfinite(x[i])) h[(size_t)(KEY(x[i]) >> sh)]++;                      \
    return;                                                                    \
  }                                                                            \
  int sh = s->width - 16 * s->pass, ng = s->ngroups;                           \
  uint64_t gp[2 * STATS_QMAX];                                                 \
  memcpy(gp, s->gprefix, sizeof gp);                                           \
  for (size_t i = 0; i < n; i++) {                                             \
    uint64_t k = KEY(x[i]);                                                    \
    uint64_t top = k >> sh;                                                    \
    size_t bin = (size_t)((k >> (sh - 16)) & 0xffff);                          \
    for (int g = 0; g < ng; g++)                                               \
      if (top == gp[g]) {                                                      \
        h[(size_t)g * STATS_QBINS + bin]++;                                    \
        break;                                                                 \
      }                                                                        \
  }

void stats_qsel_feed_f32(stats_qsel *s, const float *x, size_t n) {
  if (s->width != 32) CE_BUG("stats_qsel_feed_f32 on a %d-bit selection", s->width);
  FEED_BODY(stats_key_f32)
}

void stats_qsel_feed_f64(stats_qsel *s, const double *x, size_t n) {
  if (s->width != 64) CE_BUG("stats_qsel_feed_f64 on a %d-bit selection", s->width);
  FEED_BODY(stats_key_f64)
}

int stats_qsel_end_pass(stats_qsel *s) {
  if (s->done) return 0;
  size_t nbins = (size_t)s->ngroups * STATS_QBINS;
  if (MPI_Allreduce(MPI_IN_PLACE, s->hist, (int)nbins, MPI_UINT64_T, MPI_SUM, s->comm) !=
      MPI_SUCCESS)
    CE_FAIL("stats_qsel_end_pass: MPI_Allreduce of %zu counts failed", nbins);
  if (s->pass == 0) {
    uint64_t total = 0;
    for (size_t b = 0; b < STATS_QBINS; b++) total += s->hist[b];
    s->total = total;
    if (total == 0) {
      s->done = 1;
      s->pass = 1;
      return 0;
    }
    for (int i = 0; i < s->nq; i++) {
      double h = s->q[i] * (double)(total - 1);
      uint64_t lo = (uint64_t)floor(h), hi = (uint64_t)ceil(h);
      if (hi > total - 1) hi = total - 1;
      if (lo > hi) lo = hi;
      s->rank[2 * i] = lo;
      s->rank[2 * i + 1] = hi;
    }
  }
  /* Locate each wanted rank's bin in its group's histogram. */
  for (int j = 0; j < s->nt; j++) {
    const uint64_t *h = s->hist + (size_t)s->group[j] * STATS_QBINS;
    uint64_t c = s->below[j];
    size_t b = 0;
    for (; b < STATS_QBINS; b++) {
      if (c + h[b] > s->rank[j]) break;
      c += h[b];
    }
    if (b == STATS_QBINS) CE_BUG("stats_qsel_end_pass: rank %llu not in the histogram",
                                 (unsigned long long)s->rank[j]);
    s->below[j] = c;
    s->prefix[j] = (s->prefix[j] << 16) | b;
  }
  s->pass++;
  if (16 * s->pass == s->width) {
    s->done = 1;
    return 0;
  }
  /* Next pass: one histogram per distinct prefix. */
  s->ngroups = 0;
  for (int j = 0; j < s->nt; j++) {
    int g = 0;
    while (g < s->ngroups && s->gprefix[g] != s->prefix[j]) g++;
    if (g == s->ngroups) s->gprefix[s->ngroups++] = s->prefix[j];
    s->group[j] = g;
  }
  free(s->hist);
  s->hist = ce_calloc_array((size_t)s->ngroups * STATS_QBINS, sizeof(uint64_t),
                            "quantile histogram");
  return s->hist ? 0 : -1;
}

double stats_qsel_order_stat(const stats_qsel *s, int j) {
  if (!s->done || j < 0 || j >= s->nt) CE_BUG("stats_qsel_order_stat(%d) before the end", j);
  if (s->total == 0) return NAN;
  return s->width == 32 ? (double)stats_unkey_f32((uint32_t)s->prefix[j])
                        : stats_unkey_f64(s->prefix[j]);
}

void stats_qsel_result(const stats_qsel *s, double *out) {
  for (int i = 0; i < s->nq; i++) {
    double lo = stats_qsel_order_stat(s, 2 * i), hi = stats_qsel_order_stat(s, 2 * i + 1);
    if (s->total == 0) {
      out[i] = NAN;
      continue;
    }
    double h = s->q[i] * (double)(s->total - 1);
    double frac = h - floor(h);
    out[i] = (frac == 0 || lo == hi) ? lo : lo + frac * (hi - lo);
  }
}

void stats_qsel_free(stats_qsel *s) {
  free(s->hist);
  s->hist = NULL;
}

/* The passes of an in-memory selection; x is float* (STATS_KEY32) or
 * double* (STATS_KEY64). */
static int quantiles_in_memory(MPI_Comm comm, int key, const void *x, size_t n, int nq,
                               const double *q, double *out, int *passes) {
  stats_qsel s;
  CE_TRY(stats_qsel_init(&s, comm, key, nq, q));
  while (!s.done) {
    if (key == STATS_KEY32)
      stats_qsel_feed_f32(&s, x, n);
    else
      stats_qsel_feed_f64(&s, x, n);
    if (stats_qsel_end_pass(&s) < 0) {
      stats_qsel_free(&s);
      return -1;
    }
  }
  stats_qsel_result(&s, out);
  if (passes) *passes = s.pass;
  stats_qsel_free(&s);
  return 0;
}

int stats_quantiles_f32(MPI_Comm comm, const float *x, size_t n, int nq, const double *q,
                        double *out, int *passes) {
  return quantiles_in_memory(comm, STATS_KEY32, x, n, nq, q, out, passes);
}

int stats_quantiles_f64(MPI_Comm comm, const double *x, size_t n, int nq, const double *q,
                        double *out, int *passes) {
  return quantiles_in_memory(comm, STATS_KEY64, x, n, nq, q, out, passes);
}

void stats_rank_count_f32(const float *x, size_t n, double v, uint64_t *lt, uint64_t *le) {
  uint64_t a = 0, b = 0;
  for (size_t i = 0; i < n; i++) {
    int fin = isfinite(x[i]) != 0;
    a += fin & ((double)x[i] < v);
    b += fin & ((double)x[i] <= v);
  }
  *lt += a;
  *le += b;
}

int stats_mom_value(MPI_Comm comm, const float *chunk_medians, size_t nchunks, double *mom) {
  stats_qsel s;
  CE_TRY(stats_qsel_init(&s, comm, STATS_KEY32, 1, (double[]){0.5}));
  while (!s.done) {
    stats_qsel_feed_f32(&s, chunk_medians, nchunks);
    if (stats_qsel_end_pass(&s) < 0) {
      stats_qsel_free(&s);
      return -1;
    }
  }
  *mom = stats_qsel_order_stat(&s, 0);  /* rank floor((c-1)/2): the lower median */
  stats_qsel_free(&s);
  return 0;
}

int stats_mom_finish(MPI_Comm comm, double mom, uint64_t local_lt, uint64_t local_le,
                     uint64_t local_n, stats_mom_report *r) {
  uint64_t v[3] = {local_lt, local_le, local_n};
  if (MPI_Allreduce(MPI_IN_PLACE, v, 3, MPI_UINT64_T, MPI_SUM, comm) != MPI_SUCCESS)
    CE_FAIL("stats_mom_finish: MPI_Allreduce failed");
  memset(r, 0, sizeof *r);
  r->mom = mom;
  r->n_lt = v[0];
  r->n_le = v[1];
  r->n_total = v[2];
  if (v[2] == 0 || isnan(mom)) {
    r->q_lo = r->q_hi = r->rank_error = NAN;
    return 0;
  }
  r->q_lo = (double)v[0] / (double)v[2];
  r->q_hi = (double)v[1] / (double)v[2];
  r->rank_error = r->q_lo > 0.5 ? r->q_lo - 0.5 : r->q_hi < 0.5 ? r->q_hi - 0.5 : 0.0;
  return 0;
}
