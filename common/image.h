/* image.h - PNG previews: colour maps and panels of 2-D maps.
 *
 * A preview is a row (or grid) of panels, each a 2-D map drawn with a
 * perceptual colour map (viridis or inferno) and a shared or per-panel
 * value range, optionally on a log scale. Written with libpng, atomically.
 */
#ifndef COEMU_IMAGE_H
#define COEMU_IMAGE_H

#include <stddef.h>
#include <stdint.h>

typedef enum { CE_CMAP_VIRIDIS = 0, CE_CMAP_INFERNO = 1, CE_CMAP_COOLWARM = 2 } ce_cmap;

/* Map t in [0,1] (clamped; NaN -> grey) to RGB. */
void ce_cmap_rgb(ce_cmap map, double t, uint8_t rgb[3]);

typedef struct {
  const double *data;  /* nx*ny values; element (x, y) at data[x*stride_x + y*stride_y] */
  int nx, ny;
  ptrdiff_t stride_x, stride_y;
} ce_map2d;

typedef struct {
  ce_cmap cmap;
  int log_scale;      /* log10 of values (non-positive values -> lowest colour) */
  int shared_range;   /* one range for all panels (else per panel) */
  int scale;          /* pixels per value (>= 1), 0 = choose so panels are ~256 px */
  int columns;        /* panels per row, 0 = all in one row */
  double vmin, vmax;  /* if vmin < vmax, use this range instead of the data's */
  const char *title;  /* drawn above the panels (NULL: none) */
  const char *const *labels; /* n labels, one above each panel, cut to its width (NULL: none) */
  int colorbar;       /* 1: a colour bar with its range under the panels (one range:
                         shared_range or vmin < vmax; ignored otherwise) */
} ce_panel_style;

/* Draw `n` maps side by side into a PNG (x to the right, y upwards), with
 * the title, labels and colour bar of the style (text in plot.h's font). */
int ce_write_panels_png(const char *path, const ce_map2d *maps, int n,
                        const ce_panel_style *style);

/* Write an 8-bit RGB image (rows top to bottom). */
int ce_write_rgb_png(const char *path, const uint8_t *rgb, int width, int height);

#endif
