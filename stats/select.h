/* select.h - exact order statistics of float arrays in linear time.
 *
 * stats_select_f32(a, n, k) rearranges a[0..n) so that a[k] is the value of
 * rank k (0-based) in sorted order, every a[i < k] <= a[k] and every
 * a[i > k] >= a[k], and returns a[k]. No sorting: an introselect.
 *   - Each step partitions three ways (< pivot, == pivot, > pivot), so ties
 *     and constant data cost one pass.
 *   - The pivot is normally the median of three elements (cheap, and on
 *     ordinary data it discards about half the array per step).
 *   - A step that keeps more than 3/4 of its range is "bad"; the step after a
 *     bad step takes the BFPRT pivot instead (Blum, Floyd, Pratt, Rivest &
 *     Tarjan 1973: the median of the medians of groups of five, found
 *     recursively). A BFPRT pivot has at least 3/10 of the range on each side
 *     (minus a constant), so every two steps shrink the range to at most 3/4
 *     of it and the total work is linear in n whatever the data: the BFPRT
 *     pivot is what guarantees linear time; the median of three only makes
 *     the common case faster.
 * Precondition: no NaN in a (NaN has no rank; remove them first with
 * stats_drop_nan_f32). n > 0 and k < n, else CE_BUG.
 *
 * stats_median_f32: the median as numpy defines it, the mean of the values of
 * rank floor((n-1)/2) and floor(n/2) (one selection, then the maximum of the
 * lower part). stats_lower_median_f32: the value of rank floor((n-1)/2), the
 * median that the median-of-medians bound (quantile.h) is stated for, by
 * stats_order_stat_f32 below (a's order afterwards is not a partition).
 */
#ifndef COEMU_STATS_SELECT_H
#define COEMU_STATS_SELECT_H

#include <stddef.h>
#include <stdint.h>

/* Order-preserving keys: a float32 x maps to the uint32 key(x) = bits ^
 * (x < 0 ? 0xffffffff : 0x80000000), which sorts exactly as the floats do
 * (-0 just below +0, -inf lowest, +inf highest; NaNs beyond both ends); a
 * double maps to a uint64 key the same way. Used by stats_order_stat_f32
 * below and the distributed selection of quantile.h. */
static inline uint32_t stats_key_f32(float x) {
  uint32_t b;
  __builtin_memcpy(&b, &x, 4);
  /* the sign smeared (arithmetic shift) rather than a ?: that may branch:
   * signs are random in the data, a branch would mispredict half the time */
  return b ^ ((uint32_t)((int32_t)b >> 31) | 0x80000000u);
}
static inline float stats_unkey_f32(uint32_t k) {
  uint32_t b = k ^ ((k >> 31) ? 0x80000000u : 0xffffffffu);
  float x;
  __builtin_memcpy(&x, &b, 4);
  return x;
}
static inline uint64_t stats_key_f64(double x) {
  uint64_t b;
  __builtin_memcpy(&b, &x, 8);
  return b ^ ((uint64_t)((int64_t)b >> 63) | (uint64_t)1 << 63);
}
static inline double stats_unkey_f64(uint64_t k) {
  uint64_t b = k ^ ((k >> 63) ? (uint64_t)1 << 63 : ~(uint64_t)0);
  double x;
  __builtin_memcpy(&x, &b, 8);
  return x;
}

float stats_select_f32(float *a, size_t n, size_t k);

/* The same, reporting its work: element visits of the partitions and pivot
 * searches (at most about 30 n, whatever the data) and BFPRT pivots taken. */
typedef struct {
  size_t visits, bfprt_steps;
} stats_select_cost;
float stats_select_cost_f32(float *a, size_t n, size_t k, stats_select_cost *cost);
double stats_median_f32(float *a, size_t n);
float stats_lower_median_f32(float *a, size_t n);

/* The value of rank k (0-based) of a[0..n) (no NaN; n > 0, k < n, else
 * CE_BUG) by radix selection on the keys above: a histogram of the keys' top
 * 11 bits over the whole array finds the bin that holds rank k; the values
 * in that bin are moved to the front (a's order is not kept: a is scratch)
 * and histogrammed on the next 11 bits, then the last 10, which fixes the
 * key. Two passes over the data and a few over what is left, with no
 * data-dependent branch: ~10x the introselect's speed on a sample's 64^3
 * values, the same value (the rank-k value is unique; where -0 and +0 tie
 * at rank k it is the one the keys put there, where stats_select_f32 may
 * return either). stats_lower_median_f32 is this at rank floor((n-1)/2). */
float stats_order_stat_f32(float *a, size_t n, size_t k);

/* Move the non-NaN values to the front (order not kept); returns their number. */
size_t stats_drop_nan_f32(float *a, size_t n);

/* Move the finite values (no NaN, no +-Inf) to the front; returns their number. */
size_t stats_drop_nonfinite_f32(float *a, size_t n);

#endif
