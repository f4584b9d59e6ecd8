/* select.c - introselect with a BFPRT fallback (see select.h). */
#include "stats/select.h"

#include <math.h>
#include <string.h>

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

/* Radix selection (select.h). Levels of key bits: 31..21, 20..10, 9..0. */
#define RS_BINS 2048
#define RS_COPIES 4        /* interleaved histograms: clustered data (most of a \
                            * sample in a few bins) would otherwise serialise \
                            * on one counter's increments */
#define RS_BLOCK (1u << 30) /* values per block: a copy's uint32 counts can't wrap */

static const int rs_shift[3] = {21, 10, 0};
static const uint32_t rs_mask[3] = {0x7ff, 0x7ff, 0x3ff};

/* The histogram of level L's bits of a[0..n) into tot (RS_BINS counts). */
static void rs_histogram(const float *a, size_t n, int L, uint64_t *tot) {
  uint32_t h[RS_COPIES][RS_BINS];
  const int s = rs_shift[L];
  const uint32_t mask = rs_mask[L];
  for (int b = 0; b < RS_BINS; b++) tot[b] = 0;
  for (size_t lo = 0; lo < n; lo += RS_BLOCK) {
    const size_t hi = n - lo < RS_BLOCK ? n : lo + RS_BLOCK;
    memset(h, 0, sizeof h);
    size_t i = lo;
    for (; i + RS_COPIES <= hi; i += RS_COPIES)
      for (int c = 0; c < RS_COPIES; c++) h[c][(stats_key_f32(a[i + c]) >> s) & mask]++;
    for (; i < hi; i++) h[0][(stats_key_f32(a[i]) >> s) & mask]++;
    for (int c = 0; c < RS_COPIES; c++)
      for (int b = 0; b < RS_BINS; b++) tot[b] += h[c][b];
  }
}

float stats_order_stat_f32(float *a, size_t n, size_t k) {
  if (n == 0 || k >= n) CE_BUG("stats_order_stat_f32: k = %zu, n = %zu", k, n);
  uint64_t hist[RS_BINS];
  uint32_t key = 0; /* the bits fixed so far */
  for (int L = 0; L < 3; L++) {
    rs_histogram(a, n, L, hist);
    uint32_t b = 0;
    uint64_t below = 0;
    while (below + hist[b] <= k) below += hist[b++]; /* sum(hist) = n > k: ends */
    k -= below;
    key |= b << rs_shift[L];
    if (L == 2) break;
    /* the values of bin b to the front, in order, without a branch */
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
      const float v = a[i];
      a[m] = v;
      m += ((stats_key_f32(v) >> rs_shift[L]) & rs_mask[L]) == b;
    }
    n = m;
  }
  return stats_unkey_f32(key);
}

float stats_lower_median_f32(float *a, size_t n) {
  return stats_order_stat_f32(a, n, (n - 1) / 2);
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
