/* select.c - introselect with a BFPRT fallback (see select.h). */
#include "stats/select.h"

#include <math.h>

#include "common/error.h"

static inline void swapf(float *a, size_t i, size_t j) {
  float t = a[i];
  a[i] = a[j];
  a[j] = t;
}

/* Sort up to 5 elements (insertion sort) and return the index of the median. */
static size_t median_small(float *a, size_t lo, size_t n) {
  for (size_t i = lo + 1; i < lo + n; i++)
    for (size_t j = i; j > lo && a[j - 1] > a[j]; j--) swapf(a, j - 1, j);
  return lo + (n - 1) / 2;
}

static void select_range(float *a, size_t lo, size_t hi, size_t k, stats_select_cost *c);

/* BFPRT pivot of a[lo..hi): the median of the medians of groups of five.
 * The group medians are gathered at the front of the range and their median
 * found by a recursive selection. */
static float bfprt_pivot(float *a, size_t lo, size_t hi, stats_select_cost *c) {
  size_t n = hi - lo;
  if (n <= 5) return a[median_small(a, lo, n)];
  size_t ng = 0;
  for (size_t g = lo; g < hi; g += 5) {
    size_t len = hi - g < 5 ? hi - g : 5;
    swapf(a, lo + ng, median_small(a, g, len));
    ng++;
  }
  size_t mid = lo + (ng - 1) / 2;
  c->visits += n;
  c->bfprt_steps++;
  select_range(a, lo, lo + ng, mid, c);
  return a[mid];
}

static float median3(float x, float y, float z) {
  if (x > y) { float t = x; x = y; y = t; }
  if (y > z) y = z;
  return x > y ? x : y;
}

/* Select rank k within a[lo..hi), lo <= k < hi. */
static void select_range(float *a, size_t lo, size_t hi, size_t k, stats_select_cost *c) {
  int bad = 0;
  while (hi - lo > 1) {
    size_t n = hi - lo;
    float p;
    if (n <= 5) {
      median_small(a, lo, n);  /* sorts the range */
      return;
    }
    p = bad ? bfprt_pivot(a, lo, hi, c) : median3(a[lo], a[lo + n / 2], a[hi - 1]);
    c->visits += n;
    /* Three-way partition (Dijkstra): [lo,lt) < p, [lt,gt) == p, [gt,hi) > p. */
    size_t lt = lo, i = lo, gt = hi;
    while (i < gt) {
      if (a[i] < p) swapf(a, lt++, i++);
      else if (a[i] > p) swapf(a, i, --gt);
      else i++;
    }
    size_t kept;
    if (k < lt) { kept = lt - lo; hi = lt; }
    else if (k >= gt) { kept = hi - gt; lo = gt; }
    else return;
    bad = kept > n - n / 4;  /* kept more than 3/4: use BFPRT next */
  }
}

float stats_select_cost_f32(float *a, size_t n, size_t k, stats_select_cost *cost) {
  if (n == 0 || k >= n) CE_BUG("stats_select_f32: k = %zu, n = %zu", k, n);
  stats_select_cost c = {0, 0};
  select_range(a, 0, n, k, &c);
  if (cost) *cost = c;
  return a[k];
}

float stats_select_f32(float *a, size_t n, size_t k) {
  return stats_select_cost_f32(a, n, k, NULL);
}

float stats_lower_median_f32(float *a, size_t n) {
  return stats_select_f32(a, n, (n - 1) / 2);
}

double stats_median_f32(float *a, size_t n) {
  size_t hi = n / 2;
  float xh = stats_select_f32(a, n, hi);
  if (n % 2) return xh;
  float xl = a[0];
  for (size_t i = 1; i < hi; i++) xl = a[i] > xl ? a[i] : xl;
  return 0.5 * ((double)xl + (double)xh);
}

size_t stats_drop_nan_f32(float *a, size_t n) {
  size_t m = 0;
  for (size_t i = 0; i < n; i++)
    if (!isnan(a[i])) a[m++] = a[i];
  return m;
}

size_t stats_drop_nonfinite_f32(float *a, size_t n) {
  size_t m = 0;
  for (size_t i = 0; i < n; i++)
    if (isfinite(a[i])) a[m++] = a[i];
  return m;
}
