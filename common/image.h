/* image.h - PNG previews: colour maps and panels of 2-D maps.
 *
 * A preview is a row (or grid) of panels, each a 2-D map drawn with a
 * perceptual colour map (viridis or inferno) and a shared or per-panel
 * value range, optionally on a log scale, with titles, labels and colour
 * bars that carry ticks and units (docs/plots.md). Written with libpng,
 * atomically.
 */
#ifndef COEMU_IMAGE_H
#define COEMU_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "common/plot.h"

typedef enum { CE_CMAP_VIRIDIS = 0, CE_CMAP_INFERNO = 1, CE_CMAP_COOLWARM = 2 } ce_cmap;

/* Map t in [0,1] (clamped; NaN -> grey) to RGB. */
void ce_cmap_rgb(ce_cmap map, double t, uint8_t rgb[3]);

typedef struct {
  const double *data;  /* nx*ny values; element (x, y) at data[x*stride_x + y*stride_y] */
  int nx, ny;
  ptrdiff_t stride_x, stride_y;
} ce_map2d;

enum { CE_PANEL_GROUPS = 8 };

typedef struct {
  ce_cmap cmap;
  int log_scale;      /* log10 of values (non-positive values -> lowest colour) */
  int shared_range;   /* one range for all panels (else per panel) */
  int scale;          /* pixels per value (>= 1), 0 = choose so panels are ~256 px */
  int columns;        /* panels per row, 0 = all in one row */
  double vmin, vmax;  /* if vmin < vmax, use this range instead of the data's */
  const char *title;  /* drawn above the panels (NULL: none) */
  const char *const *labels; /* n labels, one above each panel, cut to its width (NULL: none) */
  int colorbar;       /* 1: colour bars under the panels, with ticks at round values and
                         the bar's label: one bar where there is one range (shared_range
                         or vmin < vmax), one per group with groups; none otherwise */
  const char *bar_label;     /* the one bar's quantity and unit, e.g.
                                "I_nu [W m^-2 Hz^-1 sr^-1]" (NULL: none) */
  const int *groups;  /* NULL, or one range group 0..CE_PANEL_GROUPS-1 per column: the
                         panels of a group's columns (every row) share a range, and its
                         colour bar spans those columns (give a group adjacent columns) */
  const char *const *group_labels; /* the groups' bar labels, indexed by group (entries for
                                      the groups in use; NULL entries: none) */
  const char *const *row_titles;   /* one line above each row of panels (NULL: none) */
} ce_panel_style;

/* Where ce_render_panels put things (pixels, y downwards). */
typedef struct {
  int title_y, title_h;  /* the title band */
  int panel_x, panel_y;  /* the first panel's top-left corner */
  int nbars;
  struct {
    int x, y, w, h;      /* the colour ramp: column x + i has the colour of i / (w - 1) */
    double lo, hi;       /* its range, in the drawn units (log10 of the values with log_scale) */
    int group;           /* its range group (0 for the one bar) */
  } bar[CE_PANEL_GROUPS];
} ce_panel_layout;

/* Draw `n` maps side by side (x to the right, y upwards) with the title, row
 * titles, labels and colour bars of the style (text in plot.h's font; the
 * image is widened where a text line would not fit) into *img (img->rgb
 * malloc'd, free() it) and, if lay is not NULL, where things went. `what`
 * names the output in error messages. */
int ce_render_panels(const char *what, const ce_map2d *maps, int n, const ce_panel_style *style,
                     ce_image *img, ce_panel_layout *lay);
int ce_write_panels_png(const char *path, const ce_map2d *maps, int n,
                        const ce_panel_style *style);

/* A colour bar: the ramp of map over [x, x+w) x [y, y+h), tick marks and
 * labels at round values of [lo, hi] under it (log_scale: lo, hi are log10
 * of the values; the ticks are values, e.g. 1e-17), then label. Returns the
 * height drawn below y (ce_colorbar_height). */
int ce_colorbar_draw(ce_image *img, int x, int y, int w, int h, ce_cmap map, double lo, double hi,
                     int log_scale, const char *label, int text_scale);
int ce_colorbar_height(int h, int text_scale, int has_label);

/* Write an 8-bit RGB image (rows top to bottom); _text adds PNG tEXt chunks
 * (key, value; NULL or empty values skipped). ce_write_panels_png writes
 * "Title", "Description" (one line per row title, panel label and colour
 * bar with its label and range) and "Software", so a picture's words can be
 * read without looking at it (and are checked so by the tests). */
int ce_write_rgb_png(const char *path, const uint8_t *rgb, int width, int height);
int ce_write_rgb_png_text(const char *path, const uint8_t *rgb, int width, int height,
                          const char *const *keys, const char *const *values, int ntext);

#endif
