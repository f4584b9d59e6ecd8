/* plot.h - PNG charts: line/scatter plots and histograms with axes, ticks,
 * labels and a legend, drawn by coemu itself (no plotting library).
 *
 *   const double step[] = {1, 2, 3}, loss[] = {0.9, 0.3, 0.1}, val[] = {1, 0.5, 0.3};
 *   ce_series s[2] = {{.label = "train", .x = step, .y = loss, .n = 3},
 *                     {.label = "validation", .x = step, .y = val, .n = 3}};
 *   ce_chart c = {.title = "loss", .xlabel = "epoch", .ylabel = "loss", .log_y = 1};
 *   if (ce_plot_lines_png("loss.png", &c, s, 2) < 0) ... ce_err_msg() ...
 *
 * Axes: the range is the finite data's (or the chart's own, see ce_chart)
 * padded by 5%; all-equal data get a range around the value. Linear axes
 * have "nice" ticks (1, 2 or 5 times a power of ten), log axes decades
 * (every k-th decade when there are many; 1-2-5 ticks or linear ticks when
 * the range spans less than a decade). Tick labels are compact: 0.5, 10,
 * 1e-3, 2.5e4.
 *
 * Bad points are skipped: NaN and infinite values, and non-positive values
 * on a log axis; a line series breaks at them (a lone valid point is drawn
 * as a dot). A chart without any drawable point shows its empty axes and
 * "no data". Text uses a built-in 5x9 pixel font for ASCII 32..126 (other
 * bytes are drawn as '?'), scaled by an integer factor.
 *
 * Errors: functions return 0 on success, -1 with ce_err() naming the path
 * (bad sizes or arguments, allocation, writing). Files are written
 * atomically (temporary file + rename, see fsutil.h). Nothing prints.
 */
#ifndef COEMU_PLOT_H
#define COEMU_PLOT_H

#include <stddef.h>
#include <stdint.h>

/* Series styles (bit flags; 0 means CE_PLOT_LINE; dashed implies a line). */
enum { CE_PLOT_LINE = 1, CE_PLOT_MARKERS = 2, CE_PLOT_DASHED = 4 };

typedef struct {
  const char *label;     /* legend entry; NULL or "" = not in the legend */
  const double *x, *y;   /* n points; x NULL = 0, 1, 2, ... */
  int n;
  int style;             /* CE_PLOT_* flags */
  uint32_t color;        /* 0xRRGGBB; 0 = the palette's colour for its index */
} ce_series;

typedef struct {
  const char *title, *xlabel, *ylabel;  /* NULL = none */
  int log_x, log_y;      /* log10 axes (histograms: log_x = log-spaced bins; log_y ignored) */
  int width, height;     /* pixels; 0 = 800 x 500; allowed 160..8192 */
  double xmin, xmax;     /* fixed x range if xmin < xmax (else from the data) */
  double ymin, ymax;     /* fixed y range if ymin < ymax */
  int text_scale;        /* font scale factor 1..8; 0 = from the size (2 at 800 x 500) */
} ce_chart;

/* Where the data went: the plot area in pixel coordinates (x to the right,
 * y downwards; pixel (i, j) covers [i, i+1) x [j, j+1)) and the axis ranges
 * in data units. ce_plot_px()/ce_plot_py() map a data value to a
 * continuous pixel coordinate (NaN where a log axis gets x <= 0). */
typedef struct {
  int left, top, right, bottom;  /* plot area [left, right) x [top, bottom) */
  double x0, x1, y0, y1;         /* axis ranges: x0 at left, y0 at bottom */
  int log_x, log_y;
} ce_plot_frame;

double ce_plot_px(const ce_plot_frame *f, double x);
double ce_plot_py(const ce_plot_frame *f, double y);

/* An RGB image in memory (rows top to bottom, 3 bytes a pixel). */
typedef struct {
  uint8_t *rgb;
  int width, height;
} ce_image;

/* Line/scatter chart of `nseries` series (nseries 0..16) into *img
 * (img->rgb malloc'd, free() it; NULL on failure) and, if frame is not
 * NULL, its frame.
 * `what` names the output in error messages. */
int ce_plot_lines(const char *what, const ce_chart *c, const ce_series *s, int nseries,
                  ce_image *img, ce_plot_frame *frame);
int ce_plot_lines_png(const char *path, const ce_chart *c, const ce_series *s, int nseries);

/* Histogram of n values in `bins` equal bins (0 = automatic, at most 10000)
 * over the finite values' range (or the chart's x range; values outside it
 * are not counted), with nvlines dashed vertical markers (e.g. the median)
 * listed in the legend under vline_labels (may be NULL). The y label
 * defaults to "count". counts, if not NULL, receives the bin counts
 * (`bins` of them; with bins = 0 pass NULL). */
int ce_plot_histogram(const char *what, const ce_chart *c, const double *values, int n,
                      int bins, const double *vlines, const char *const *vline_labels,
                      int nvlines, ce_image *img, ce_plot_frame *frame, int *counts);
int ce_plot_histogram_png(const char *path, const ce_chart *c, const double *values, int n,
                          int bins, const double *vlines, const char *const *vline_labels,
                          int nvlines);

/* Tick positions for the axis range [lo, hi] (lo < hi; for log, lo > 0):
 * the coarsest 1-2-5 steps giving at most max_ticks ticks, or the next finer
 * step where that leaves fewer than two. Writes at most cap values in
 * increasing order and returns their number (0 for a bad range). */
int ce_plot_ticks(double lo, double hi, int log, int max_ticks, double *ticks, int cap);

/* Labels of an axis' ticks (as from ce_plot_ticks): linear axes all in one
 * form (fixed-point, or mantissa-exponent when a tick is below 0.01 or from
 * 1e4 up: 0, 5e3, 1e4, 1.5e4); log axes with decade or 1-2-5 ticks each
 * value in its own (1e-3, 0.01, 0.1, 1, 10, 1e4), other log ticks as linear. */
enum { CE_PLOT_LABEL = 24 };
void ce_plot_tick_labels(const double *ticks, int n, int log, char (*labels)[CE_PLOT_LABEL]);

/* Compact label of tick value v on an axis whose tick spacing is `step`
 * (the digits shown are those the spacing needs): "0", "0.2", "15", "1e-3",
 * "2.5e4"; mantissa-exponent below 0.01 and from 1e4 up (a step that is not
 * positive and finite: printf's %.6g). */
void ce_plot_format(double v, double step, char *buf, size_t len);

/* Text in the built-in font: its size in pixels at `scale` (each character
 * advances 6*scale, the text is 9*scale tall: capitals 7 rows, descenders
 * 2), and drawing it with its top-left corner at (x, y), clipped to the
 * image (at most 1000 characters). */
void ce_plot_text_size(const char *s, int scale, int *w, int *h);
void ce_plot_text(ce_image *img, int x, int y, const char *s, int scale, uint32_t color);

#endif
