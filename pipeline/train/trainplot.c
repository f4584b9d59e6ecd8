/* trainplot.c - loss curves and MaxRel distributions as PNG (trainplot.h). */
#include "pipeline/train/trainplot.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/error.h"
#include "common/fsutil.h"
#include "common/plot.h"

int trainplot_read_columns(const char *path, int xc, int yc, double **x, double **y, int *n) {
  *x = *y = NULL;
  *n = 0;
  char *text;
  size_t len;
  CE_TRY(fs_read_all(path, &text, &len));
  int cap = 0;
  char *line = strchr(text, '\n');
  while (line && line[1]) {
    line++;
    char *nl = strchr(line, '\n');
    if (!nl) break;
    *nl = 0;
    double vx = 0, vy = 0;
    int col = 0, got = 0;
    for (char *f = line; f; col++) {
      char *comma = strchr(f, ',');
      if (col == xc) vx = strtod(f, NULL), got |= 1;
      if (col == yc) vy = strtod(f, NULL), got |= 2;
      f = comma ? comma + 1 : NULL;
    }
    if (got == 3) {
      if (*n == cap) {
        cap = cap ? 2 * cap : 256;
        double *nx = realloc(*x, sizeof(double) * (size_t)cap), *ny = nx ? realloc(*y, sizeof(double) * (size_t)cap) : NULL;
        if (nx) *x = nx;
        if (!nx || !ny) {
          free(text);
          CE_FAIL("%s: out of memory", path);
        }
        *y = ny;
      }
      (*x)[*n] = vx;
      (*y)[*n] = vy;
      (*n)++;
    }
    line = nl;
  }
  free(text);
  return 0;
}

int trainplot_loss_png(const char *png, const char *train_csv, const char *val_csv,
                       const char *title) {
  double *ts = NULL, *tl = NULL, *vs = NULL, *vl = NULL, *mean = NULL;
  int nt = 0, nv = 0, rc = trainplot_read_columns(train_csv, 0, 3, &ts, &tl, &nt);
  if (rc == 0 && access(val_csv, F_OK) == 0) rc = trainplot_read_columns(val_csv, 0, 2, &vs, &vl, &nv);
  if (rc == 0 && nt > 0) { /* running mean over 2% of the steps, at least 5 */
    int w = nt / 50 > 5 ? nt / 50 : 5;
    mean = malloc(sizeof(double) * (size_t)nt);
    if (!mean) rc = ce_err("%s: out of memory", png);
    double acc = 0;
    for (int i = 0; rc == 0 && i < nt; i++) {
      acc += tl[i] - (i >= w ? tl[i - w] : 0);
      mean[i] = acc / (i + 1 < w ? i + 1 : w);
    }
  }
  if (rc == 0) {
    char t[256];
    snprintf(t, sizeof t, "%s: loss", title);
    ce_series s[3] = {
        {.label = "training (per step)", .x = ts, .y = tl, .n = nt, .color = 0xb0c4de},
        {.label = "training (running mean)", .x = ts, .y = mean, .n = mean ? nt : 0},
        {.label = "validation", .x = vs, .y = vl, .n = nv, .style = CE_PLOT_LINE | CE_PLOT_MARKERS}};
    ce_chart c = {.title = t, .xlabel = "optimiser step", .ylabel = "0.8 MSE + 0.2 spectral L1",
                  .log_y = 1};
    rc = ce_plot_lines_png(png, &c, s, 3);
  }
  free(ts);
  free(tl);
  free(vs);
  free(vl);
  free(mean);
  return rc;
}

int trainplot_maxrel_png(const char *png, const double *maxrel, int64_t n,
                         const metrics_summary *s, const char *what) {
  if (n > 0x7fffffff) CE_FAIL("%s: %lld values are too many to plot", png, (long long)n);
  char t[256], l0[64], l1[64];
  snprintf(t, sizeof t, "MaxRel per sample (%s, %lld samples): median %.3g%%", what, (long long)n,
           s->median);
  snprintf(l0, sizeof l0, "median %.3g%%", s->median);
  snprintf(l1, sizeof l1, "90%% quantile %.3g%%", s->p90);
  const double v[2] = {s->median, s->p90};
  const char *labels[2] = {l0, l1};
  ce_chart c = {.title = t, .xlabel = "MaxRel (%)", .ylabel = "samples"};
  return ce_plot_histogram_png(png, &c, maxrel, (int)n, 0, v, labels, 2);
}
