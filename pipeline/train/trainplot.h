/* trainplot.h - the pictures of a training run and of an evaluation, drawn
 * with common/plot.h:
 *   loss.png    training loss per step (and its running mean over an epoch's
 *               worth of steps) and the validation loss, log scale;
 *   maxrel.png  the per-sample MaxRel distribution with its median. */
#ifndef COEMU_TRAINPLOT_H
#define COEMU_TRAINPLOT_H

#include <stdint.h>

#include "trainer/metrics.h"

/* Columns xc and yc (0-based) of a log CSV with a header line (train.csv,
 * validation.csv) as doubles, rows with both present: *x, *y malloc'd (free
 * them), *n rows. The one reader of the logs' numbers. */
int trainplot_read_columns(const char *path, int xc, int yc, double **x, double **y, int *n);

/* From a stage's train.csv and validation.csv (trainrun.h). */
int trainplot_loss_png(const char *png, const char *train_csv, const char *val_csv,
                       const char *title);

/* Histogram of n per-sample MaxRel values (%), median and 90% quantile
 * marked; `what` (e.g. the split) goes into the title. */
int trainplot_maxrel_png(const char *png, const double *maxrel, int64_t n,
                         const metrics_summary *s, const char *what);

#endif
