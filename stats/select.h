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
 * median that the median-of-medians bound (quantile.h) is stated for.
 */
#ifndef COEMU_STATS_SELECT_H
#define COEMU_STATS_SELECT_H

#include <stddef.h>

float stats_select_f32(float *a, size_t n, size_t k);

/* The same, reporting its work: element visits of the partitions and pivot
 * searches (at most about 30 n, whatever the data) and BFPRT pivots taken. */
typedef struct {
  size_t visits, bfprt_steps;
} stats_select_cost;
float stats_select_cost_f32(float *a, size_t n, size_t k, stats_select_cost *cost);
double stats_median_f32(float *a, size_t n);
float stats_lower_median_f32(float *a, size_t n);

/* Move the non-NaN values to the front (order not kept); returns their number. */
size_t stats_drop_nan_f32(float *a, size_t n);

/* Move the finite values (no NaN, no +-Inf) to the front; returns their number. */
size_t stats_drop_nonfinite_f32(float *a, size_t n);

#endif
