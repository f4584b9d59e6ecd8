/* quantile.h - exact quantiles of data spread over MPI ranks, and the median
 * of medians with the true rank of its value.
 *
 * Distributed selection by histogram refinement on order-preserving keys
 * (select.h: a float32 x maps to the uint32 key(x) = bits ^ (x < 0 ?
 * 0xffffffff : 0x80000000), which sorts exactly as the floats do, -0 just
 * below +0; a double maps to a uint64 key the same way). Pass 1 counts the keys' top 16
 * bits (65536 bins, one MPI_Allreduce of 512 KiB); the bin holding the wanted
 * global rank k is found by a prefix sum. Pass 2 counts the next 16 bits of
 * the keys inside that bin only. After 2 passes a float32 key is known
 * exactly (4 passes for double). Communication is 65536 counts per pass and
 * wanted bin, independent of the number of values; each rank scans its data
 * once per pass, NaN and +-Inf skipped (rejected, as by the moments:
 * quantiles and moments describe the same finite values). Every rank gets the same
 * answer, whatever the split of the data (a rank may hold none).
 *
 * The quantile q of N values is numpy's default ("linear"): h = q (N-1),
 * x_(floor h) + (h - floor h)(x_(ceil h) - x_(floor h)), in double; the median
 * is q = 0.5. Both order statistics are found in the same passes.
 *
 * One-call use (all data in memory):
 *   double med; int passes;
 *   stats_quantiles_f32(comm, x, n, 1, (double[]){0.5}, &med, &passes);
 *
 * Data too large to hold (read again for each pass):
 *   stats_qsel q; stats_qsel_init(&q, comm, STATS_KEY32, nq, probs);
 *   while (!stats_qsel_done(&q)) {
 *     for each block: stats_qsel_feed_f32(&q, block, len);
 *     stats_qsel_end_pass(&q);        // collective
 *   }
 *   stats_qsel_result(&q, out);  ... stats_qsel_free(&q);
 */
#ifndef COEMU_STATS_QUANTILE_H
#define COEMU_STATS_QUANTILE_H

#include <stddef.h>
#include <stdint.h>

#include <mpi.h>

#include "stats/select.h" /* stats_key_f32 / _f64 and their inverses */

#define STATS_QMAX 8          /* quantiles per selection */
#define STATS_QBINS 65536     /* 16 bits of key per pass */

typedef enum { STATS_KEY32 = 32, STATS_KEY64 = 64 } stats_key_width;

typedef struct {
  MPI_Comm comm;
  int width;                    /* 32 or 64 */
  int nq;
  double q[STATS_QMAX];
  int pass;                     /* passes completed */
  int done;
  uint64_t total;               /* finite values over all ranks (after pass 1) */
  int nt;                       /* wanted ranks (2 per quantile) */
  uint64_t rank[2 * STATS_QMAX];
  uint64_t prefix[2 * STATS_QMAX]; /* key bits fixed so far for each wanted rank */
  uint64_t below[2 * STATS_QMAX];  /* values with keys below that prefix */
  int group[2 * STATS_QMAX];    /* index of its histogram this pass */
  int ngroups;
  uint64_t gprefix[2 * STATS_QMAX];
  uint64_t *hist;               /* ngroups x STATS_QBINS */
} stats_qsel;

/* q[i] in [0, 1]. Returns 0, or -1 with a message (bad q, out of memory). */
int stats_qsel_init(stats_qsel *s, MPI_Comm comm, stats_key_width width, int nq,
                    const double *q);
int stats_qsel_done(const stats_qsel *s);
void stats_qsel_feed_f32(stats_qsel *s, const float *x, size_t n);  /* width 32 */
void stats_qsel_feed_f64(stats_qsel *s, const double *x, size_t n); /* width 64 */
/* Collective: sums the histograms, fixes 16 more key bits. */
int stats_qsel_end_pass(stats_qsel *s);
/* After done: out[i] = quantile q[i] (NaN when there are no values). */
void stats_qsel_result(const stats_qsel *s, double *out);
/* After done: the value of global rank rank[j] for the j-th wanted rank
 * (2i: floor(h_i), 2i+1: ceil(h_i)). */
double stats_qsel_order_stat(const stats_qsel *s, int j);
void stats_qsel_free(stats_qsel *s);

/* One call on in-memory data. *passes gets the number of passes made. */
int stats_quantiles_f32(MPI_Comm comm, const float *x, size_t n, int nq, const double *q,
                        double *out, int *passes);
int stats_quantiles_f64(MPI_Comm comm, const double *x, size_t n, int nq, const double *q,
                        double *out, int *passes);

/* Where a value v falls in the data of all ranks: *lt = #(x < v), *le =
 * #(x <= v) over the finite x (NaN and +-Inf not
 * counted, as in the moments). Local part, to be summed by the caller. */
void stats_rank_count_f32(const float *x, size_t n, double v, uint64_t *lt, uint64_t *le);

/* The median of medians and the true rank of its value.
 * Each chunk i (e.g. one sample) contributes its lower median
 * (select.h); the median of medians M is the lower median of those, over
 * all ranks. Its quantile interval in the whole data is
 *   [lo, hi] = [#(x < M) / N, #(x <= M) / N]
 * and rank_error = 0 if 0.5 is in [lo, hi], else lo - 0.5 or hi - 0.5.
 * Bound (docs/statistics.md): with c chunks of m values each,
 *   #(x <= M) >= ceil(c/2) ceil(m/2) and #(x >= M) >= (floor(c/2)+1)(floor(m/2)+1),
 * both >= N/4, so hi >= 1/4, lo <= 3/4 and |rank_error| <= 1/4. */
typedef struct {
  double mom;                /* M (NaN if no chunk had values) */
  uint64_t n_total, n_lt, n_le;
  double q_lo, q_hi, rank_error;
} stats_mom_report;

/* Collective. chunk_medians: this rank's chunk medians (no NaN). The caller
 * supplies the counts around M (stats_rank_count_f32 over its data, summed
 * by this function) through a second call: */
int stats_mom_value(MPI_Comm comm, const float *chunk_medians, size_t nchunks, double *mom);
int stats_mom_finish(MPI_Comm comm, double mom, uint64_t local_lt, uint64_t local_le,
                     uint64_t local_n, stats_mom_report *r);

#endif
