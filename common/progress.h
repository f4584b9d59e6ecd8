/* progress.h - wall clock and progress lines for long work.
 *
 * ce_progress prints, at most once per `interval` seconds, to stderr:
 *   "generate: 1234/5000 samples (24.7%)  53.1/s  elapsed 23s  ETA 1m11s"
 * and a final line from ce_progress_done(). Disabled when quiet is set.
 * The rate, and the ETA from it, count only the units this run made: a
 * resume's kept units (`kept`, which the caller keeps up to date) are in the
 * count and the percentage but cost no time, so counting them would
 * overstate the rate and understate the ETA.
 */
#ifndef COEMU_PROGRESS_H
#define COEMU_PROGRESS_H

#include <stdint.h>

/* Monotonic wall-clock time in seconds. */
double ce_now(void);

/* Format a duration as "1h02m", "3m05s" or "4.2s". */
void ce_format_duration(double seconds, char *buf, int len);

typedef struct {
  const char *label, *unit;
  int64_t total;
  int64_t kept; /* of the units done, those an earlier run made (not in the rate) */
  double t0, last, interval;
  int quiet;
  int64_t printed; /* the count of the last line printed (-1: none yet) */
} ce_progress;

void ce_progress_init(ce_progress *p, const char *label, const char *unit,
                      int64_t total, int quiet);
/* Report that `done` units are finished (prints if the interval elapsed). */
void ce_progress_update(ce_progress *p, int64_t done);
/* The final line, unless the last line printed already said `done`. */
void ce_progress_done(ce_progress *p, int64_t done);

#endif
