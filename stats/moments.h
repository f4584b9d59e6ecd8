/* moments.h - exact, mergeable moments of float32 data (count, mean, M2,
 * min, max, NaN and Inf counts).
 *
 * Every finite float32 is an integer significand m (< 2^24) times a power of
 * two fixed by its exponent field. The accumulator adds the significands
 * (and their squares, < 2^48) into integer bins indexed by the exponent field
 * and folds the bins into two wide fixed-point integers:
 *   S = sum x   in units of 2^-149 (the float32 quantum),  384 bits, signed
 *   Q = sum x^2 in units of 2^-298,                        640 bits
 * Integer addition is associative, so the state after any split of the data
 * over chunks, threads or MPI ranks, merged in any order, is bit-identical.
 * The mean S/n and the central moment M2 = (nQ - S^2)/n are computed from the
 * exact integers once, at the end (nQ - S^2 is formed exactly, then rounded
 * once to double): no cancellation, whatever the offset of the data (1e8 +
 * noise gives the same variance as the noise alone), and results that do not
 * depend on the number of ranks. See docs/statistics.md.
 *
 *   stats_moments m; stats_moments_init(&m);
 *   stats_moments_add_f32(&m, data, n);        // any number of times
 *   stats_moments_merge(&m, &other);           // any order
 *   stats_moments_allreduce(&m, MPI_COMM_WORLD);   // moments_mpi.h
 *   stats_summary s; stats_moments_summary(&m, &s);   // s.mean, s.m2, s.std ...
 *
 * This module uses neither MPI nor HDF5 (the stats core library, which the
 * trainer links); the MPI reduction is moments_mpi.h, which moves packed
 * states (stats_moments_pack) between ranks and merges them here.
 *
 * NaN and +-Inf are counted (nan_count, inf_count) and otherwise ignored.
 * stats_summary also merges by Chan et al.'s parallel formula
 * (stats_summary_merge) for callers that only keep (count, mean, M2).
 */
#ifndef COEMU_STATS_MOMENTS_H
#define COEMU_STATS_MOMENTS_H

#include <stddef.h>
#include <stdint.h>

#define STATS_S_LIMBS 6   /* 384-bit signed sum, LSB 2^-149 */
#define STATS_Q_LIMBS 10  /* 640-bit sum of squares, LSB 2^-298 */

typedef struct {
  int64_t count;              /* finite values */
  int64_t nan_count, inf_count;
  float min, max;             /* +inf / -inf while count == 0 */
  uint64_t S[STATS_S_LIMBS];  /* two's complement, little-endian limbs */
  uint64_t Q[STATS_Q_LIMBS];
  /* Bins of the hot loop, folded into S and Q every STATS_FOLD values. */
  int64_t sum_bin[256];
  uint64_t sq_bin[256];
  int64_t unfolded;
} stats_moments;

/* The result: population moments, as double. */
typedef struct {
  int64_t count, nan_count, inf_count;
  double mean, m2;  /* m2 = sum (x - mean)^2 */
  double var, std;  /* population: m2 / count (NaN when count == 0) */
  double min, max;  /* NaN when count == 0 */
} stats_summary;

void stats_moments_init(stats_moments *m);
void stats_moments_add_f32(stats_moments *m, const float *x, size_t n);
/* a += b (b is folded first, hence not const). */
void stats_moments_merge(stats_moments *a, stats_moments *b);

/* The folded state without the bins: what travels between ranks (plain
 * bytes, no pointers; moments_mpi.h). */
typedef struct {
  int64_t count, nan_count, inf_count;
  float min, max;
  uint64_t S[STATS_S_LIMBS], Q[STATS_Q_LIMBS];
} stats_moments_packed;

/* Fold m's bins and copy its state into *p. */
void stats_moments_pack(stats_moments *m, stats_moments_packed *p);
/* a += p: the same exact sum as stats_moments_merge. */
void stats_moments_merge_packed(stats_moments *a, const stats_moments_packed *p);
void stats_moments_summary(stats_moments *m, stats_summary *s);

/* Chan, Golub & LeVeque (1979) pairwise combination of two summaries:
 * n = na + nb, delta = mb - ma, mean = ma + delta nb/n,
 * M2 = M2a + M2b + delta^2 na nb / n; min, max and counts combined. */
void stats_summary_merge(stats_summary *a, const stats_summary *b);

#endif
