/* progress.c - timing and rate/ETA reporting. */
#define _POSIX_C_SOURCE 200809L
#include "common/progress.h"

#include <stdio.h>
#include <time.h>

double ce_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void ce_format_duration(double s, char *buf, int len) {
  if (s < 0 || s != s) s = 0;
  if (s < 60)
    snprintf(buf, (size_t)len, "%.1fs", s);
  else if (s < 3600)
    snprintf(buf, (size_t)len, "%dm%02ds", (int)(s / 60), (int)s % 60);
  else if (s < 86400 * 10)
    snprintf(buf, (size_t)len, "%dh%02dm", (int)(s / 3600), ((int)s % 3600) / 60);
  else
    snprintf(buf, (size_t)len, "%.1fd", s / 86400);
}

void ce_progress_init(ce_progress *p, const char *label, const char *unit,
                      int64_t total, int quiet) {
  p->label = label;
  p->unit = unit;
  p->total = total;
  p->kept = 0;
  p->t0 = p->last = ce_now();
  p->interval = 1.0;
  p->quiet = quiet;
  p->printed = -1;
}

static void print_line(ce_progress *p, int64_t done, double now, const char *end) {
  double el = now - p->t0;
  int64_t made = done - p->kept;
  double rate = el > 0 && made > 0 ? (double)made / el : 0;
  char e[32], eta[32];
  ce_format_duration(el, e, sizeof e);
  if (rate > 0 && p->total > done)
    ce_format_duration((double)(p->total - done) / rate, eta, sizeof eta);
  else
    snprintf(eta, sizeof eta, "-");
  fprintf(stderr, "%s: %lld/%lld %s (%.1f%%)  %.3g/s  elapsed %s  ETA %s%s", p->label,
          (long long)done, (long long)p->total, p->unit,
          p->total > 0 ? 100.0 * (double)done / (double)p->total : 100.0, rate, e, eta, end);
  fflush(stderr);
  p->printed = done;
}

void ce_progress_update(ce_progress *p, int64_t done) {
  if (p->quiet) return;
  double now = ce_now();
  if (now - p->last < p->interval) return;
  p->last = now;
  print_line(p, done, now, "\n");
}

void ce_progress_done(ce_progress *p, int64_t done) {
  if (p->quiet || p->printed == done) return;
  print_line(p, done, ce_now(), "\n");
}
