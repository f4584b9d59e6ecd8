/* freqgrid.c - frequency grids (see freqgrid.h). */
#include "solver/freqgrid.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/cli.h"
#include "common/error.h"
#include "solver/lte.h"

void freqgrid_linspace(double start, double end, int n, double *out) {
  if (n == 1) {
    out[0] = start;
    return;
  }
  double step = (end - start) / (n - 1);
  int half = n / 2;
  for (int i = 0; i < n; i++)
    out[i] = i < half ? start + step * i : end - step * (n - 1 - i);
}

void freqgrid_coemunet(double nu0, double out[FREQGRID_COEMUNET_N]) {
  /* Python: dd = 300*(31-1)/2/c, evaluated left to right */
  double dd = 300.0 * (31 - 1) / 2 / LTE_C;
  double all[31];
  freqgrid_linspace(nu0 - nu0 * dd, nu0 + nu0 * dd, 31, all);
  memcpy(out, all + 12, FREQGRID_COEMUNET_N * sizeof(double));
}

int freqgrid_velocity(double nu0, double v0, double dv, int count, int keep_lo, int keep_hi,
                      double *out, int *nout) {
  if (count < 1) CE_FAIL("velocity channels: count = %d, expected >= 1", count);
  if (!isfinite(v0) || !isfinite(dv)) CE_FAIL("velocity channels: V0 and DV must be finite");
  if (dv == 0 && count > 1)
    CE_FAIL("velocity channels: DV = 0 with COUNT = %d gives %d channels of the same velocity; "
            "expected DV != 0 (or COUNT 1)", count, count);
  if (keep_lo < 0 && keep_hi < 0) {
    keep_lo = 0;
    keep_hi = count - 1;
  }
  if (keep_lo < 0 || keep_hi >= count || keep_lo > keep_hi)
    CE_FAIL("velocity channels: keep %d..%d, expected 0 <= LO <= HI < COUNT = %d", keep_lo,
            keep_hi, count);
  int k = 0;
  for (int i = keep_lo; i <= keep_hi; i++) {
    double v = v0 + dv * i;
    if (!(fabs(v) < LTE_C)) CE_FAIL("velocity channels: channel %d at %g m/s, expected |v| < c", i, v);
    out[k++] = nu0 * (1.0 - v / LTE_C);
  }
  *nout = k;
  return 0;
}

typedef struct {
  double v;
  int i;
} value_at;
static int by_value_then_index(const void *a, const void *b) {
  const value_at *x = a, *y = b;
  return x->v < y->v ? -1 : x->v > y->v ? 1 : (x->i > y->i) - (x->i < y->i);
}

int freqgrid_find_repeat(const double *v, int n, int *first, int *second) {
  if (n < 2) return 0;
  value_at *s = ce_malloc_array((size_t)n, sizeof *s, "channel order");
  if (!s) return -1;
  for (int i = 0; i < n; i++) s[i] = (value_at){v[i], i};
  qsort(s, (size_t)n, sizeof *s, by_value_then_index);
  int found = 0;
  for (int k = 1; k < n; k++) /* equal values are neighbours, in index order */
    if (s[k].v == s[k - 1].v && (!found || s[k].i < *second))
      *first = s[k - 1].i, *second = s[k].i, found = 1;
  free(s);
  return found;
}

static int parse_list(const char *spec, const char *s, double **out, int *nout) {
  int cap = 1;
  for (const char *p = s; *p; p++) cap += *p == ',';
  double *f = ce_malloc_array((size_t)cap, sizeof *f, "frequency list");
  if (!f) return -1;
  char *copy = strdup(s);
  int k = 0;
  char *save = NULL;
  for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    if (cli_parse_double(tok, &f[k]) < 0 || !(f[k] > 0) || !isfinite(f[k])) {
      ce_err("--channels '%s': frequency %d = '%s', expected a number > 0 [Hz]", spec, k + 1, tok);
      free(copy);
      free(f);
      return -1;
    }
    k++;
  }
  free(copy);
  int a, b, rep = freqgrid_find_repeat(f, k, &a, &b);
  if (rep != 0) {
    if (rep > 0)
      ce_err("--channels '%s': frequencies %d and %d are both %.17g Hz (two channels of the same "
             "image)", spec, a + 1, b + 1, f[b]);
    free(f);
    return -1;
  }
  if (k == 0) {
    free(f);
    CE_FAIL("--channels '%s': empty frequency list", spec);
  }
  *out = f;
  *nout = k;
  return 0;
}

int freqgrid_parse(const char *spec, double nu0, double **out, int *nout) {
  *out = NULL;
  *nout = 0;
  if (!strcmp(spec, "coemunet")) {
    double *f = ce_malloc_array(FREQGRID_COEMUNET_N, sizeof *f, "frequency grid");
    if (!f) return -1;
    freqgrid_coemunet(nu0, f);
    *out = f;
    *nout = FREQGRID_COEMUNET_N;
    return 0;
  }
  if (!strncmp(spec, "list:", 5)) return parse_list(spec, spec + 5, out, nout);
  /* V0:DV:COUNT[:LO:HI] */
  char *copy = strdup(spec), *save = NULL;
  char *field[6];
  int nfield = 0;
  for (char *tok = strtok_r(copy, ":", &save); tok && nfield < 6; tok = strtok_r(NULL, ":", &save))
    field[nfield++] = tok;
  double v0, dv;
  int64_t count, lo = -1, hi = -1;
  int ok = (nfield == 3 || nfield == 5) && cli_parse_double(field[0], &v0) == 0 &&
           cli_parse_double(field[1], &dv) == 0 && cli_parse_int(field[2], &count) == 0 &&
           (nfield == 3 ||
            (cli_parse_int(field[3], &lo) == 0 && cli_parse_int(field[4], &hi) == 0));
  free(copy);
  if (!ok)
    CE_FAIL("--channels '%s': expected coemunet, V0:DV:COUNT[:LO:HI] (m/s, channel indices) "
            "or list:F1,F2,... (Hz)", spec);
  if (count < 1 || count > 1000000)
    CE_FAIL("--channels '%s': COUNT = %lld, expected 1..1000000", spec, (long long)count);
  double *f = ce_malloc_array((size_t)count, sizeof *f, "frequency grid");
  if (!f) return -1;
  if (freqgrid_velocity(nu0, v0, dv, (int)count, (int)lo, (int)hi, f, nout) < 0) {
    free(f);
    return ce_err_prefix("--channels '%s'", spec);
  }
  *out = f;
  return 0;
}

int freqgrid_uniform(const double *f, int n, double *step) {
  if (n < 2) {
    *step = 0;
    return 1;
  }
  double s = (f[n - 1] - f[0]) / (n - 1);
  *step = s;
  if (s == 0) return 0;
  for (int i = 1; i < n; i++)
    if (fabs((f[i] - f[i - 1]) - s) > 1e-9 * fabs(s)) return 0;
  return 1;
}
