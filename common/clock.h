/* clock.h - the small timing helpers every benchmark uses: a monotonic clock
 * in seconds and the qsort comparison for the medians of its figures. */
#ifndef COEMU_CLOCK_H
#define COEMU_CLOCK_H

#include <time.h>

/* wall seconds since an arbitrary start (CLOCK_MONOTONIC: immune to clock changes) */
static inline double ce_now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

/* qsort order of doubles, ascending (no NaN among them) */
static inline int ce_cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

#endif
