/* image.c - colour maps and PNG panels (libpng). */
#include "common/image.h"

#include <math.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/fsutil.h"
#include "common/plot.h"

/* Colour maps sampled at 9 points from matplotlib's tables, linearly
 * interpolated: enough for previews. */
static const uint8_t viridis9[9][3] = {{68, 1, 84},    {71, 44, 122},  {59, 81, 139},
                                       {44, 113, 142}, {33, 144, 141}, {39, 173, 129},
                                       {92, 200, 99},  {170, 220, 50}, {253, 231, 37}};
static const uint8_t inferno9[9][3] = {{0, 0, 4},      {31, 12, 72},   {85, 15, 109},
                                       {136, 34, 106}, {186, 54, 85},  {227, 89, 51},
                                       {249, 140, 10}, {249, 201, 50}, {252, 255, 164}};
static const uint8_t coolwarm9[9][3] = {{59, 76, 192},   {98, 130, 234},  {141, 176, 254},
                                        {184, 208, 249}, {221, 221, 221}, {245, 196, 173},
                                        {244, 154, 123}, {222, 96, 77},   {180, 4, 38}};

void ce_cmap_rgb(ce_cmap map, double t, uint8_t rgb[3]) {
  if (t != t) {
    rgb[0] = rgb[1] = rgb[2] = 128;
    return;
  }
  const uint8_t(*tab)[3] =
      map == CE_CMAP_INFERNO ? inferno9 : map == CE_CMAP_COOLWARM ? coolwarm9 : viridis9;
  if (t < 0) t = 0;
  if (t > 1) t = 1;
  double s = t * 8;
  int i = (int)s;
  if (i > 7) i = 7;
  double f = s - i;
  for (int c = 0; c < 3; c++)
    rgb[c] = (uint8_t)lrint(tab[i][c] + f * (tab[i + 1][c] - tab[i][c]));
}

int ce_write_rgb_png(const char *path, const uint8_t *rgb, int width, int height) {
  FILE *f;
  char tmp[4096];
  CE_TRY(fs_open_tmp(path, tmp, sizeof tmp, &f));
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
  png_infop info = png ? png_create_info_struct(png) : NULL;
  if (!png || !info) {
    png_destroy_write_struct(&png, &info);
    return fs_commit_tmp(f, tmp, path, 0);
  }
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    return fs_commit_tmp(f, tmp, path, 0);
  }
  png_init_io(png, f);
  png_set_IHDR(png, info, (png_uint_32)width, (png_uint_32)height, 8, PNG_COLOR_TYPE_RGB,
               PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  for (int y = 0; y < height; y++)
    png_write_row(png, (png_const_bytep)(rgb + (size_t)y * width * 3));
  png_write_end(png, NULL);
  png_destroy_write_struct(&png, &info);
  return fs_commit_tmp(f, tmp, path, 1);
}

static double map_value(const ce_map2d *m, int x, int y, int logs) {
  double v = m->data[x * m->stride_x + y * m->stride_y];
  if (logs) v = v > 0 ? log10(v) : NAN;
  return v;
}

static void map_range(const ce_map2d *m, int logs, double *lo, double *hi) {
  for (int x = 0; x < m->nx; x++)
    for (int y = 0; y < m->ny; y++) {
      double v = map_value(m, x, y, logs);
      if (!isfinite(v)) continue;
      if (v < *lo) *lo = v;
      if (v > *hi) *hi = v;
    }
}

int ce_write_panels_png(const char *path, const ce_map2d *maps, int n,
                        const ce_panel_style *style) {
  if (n <= 0) CE_FAIL("%s: no panels to draw", path);
  ce_panel_style st = style ? *style : (ce_panel_style){0};
  int pw = 0, ph = 0;
  for (int i = 0; i < n; i++) {
    if (maps[i].nx > pw) pw = maps[i].nx;
    if (maps[i].ny > ph) ph = maps[i].ny;
  }
  int scale = st.scale > 0 ? st.scale : (pw >= 256 ? 1 : 256 / pw);
  if (scale < 1) scale = 1;
  int cols = st.columns > 0 && st.columns < n ? st.columns : n;
  int rows = (n + cols - 1) / cols;
  int gap = 4;
  /* text: scale 2 when panels are wide enough for it, strips for the title,
   * the labels above each row and the colour bar */
  const int ts = pw * scale >= 160 ? 2 : 1, th = 9 * ts;
  const int title_h = st.title ? th + 2 * gap : 0, label_h = st.labels ? th + gap : 0;
  double glo = INFINITY, ghi = -INFINITY;
  if (st.vmin < st.vmax) {
    glo = st.log_scale ? log10(st.vmin > 0 ? st.vmin : 1e-300) : st.vmin;
    ghi = st.log_scale ? log10(st.vmax > 0 ? st.vmax : 1e-300) : st.vmax;
  } else if (st.shared_range)
    for (int i = 0; i < n; i++) map_range(&maps[i], st.log_scale, &glo, &ghi);
  const int one_range = st.vmin < st.vmax || st.shared_range;
  const int bar_h = st.colorbar && one_range ? 12 * ts + th + 3 * gap : 0;
  int W = cols * pw * scale + (cols + 1) * gap;
  int H = title_h + rows * (ph * scale + label_h) + (rows + 1) * gap + bar_h;
  uint8_t *rgb = ce_malloc_array((size_t)W * H, 3, path);
  if (!rgb) return -1;
  memset(rgb, 255, (size_t)W * H * 3);
  ce_image img = {rgb, W, H};
  if (st.title) ce_plot_text(&img, gap, gap, st.title, ts, 0x202020);
  for (int i = 0; i < n; i++) {
    double lo = glo, hi = ghi;
    if (!one_range) {
      lo = INFINITY;
      hi = -INFINITY;
      map_range(&maps[i], st.log_scale, &lo, &hi);
    }
    double span = hi > lo ? hi - lo : 1.0;
    int ox = gap + (i % cols) * (pw * scale + gap);
    int oy = title_h + gap + (i / cols) * (ph * scale + label_h + gap) + label_h;
    if (st.labels && st.labels[i]) { /* cut to the panel's width: labels never overlap */
      char cut[256];
      size_t fit = (size_t)(pw * scale) / (size_t)(6 * ts);
      snprintf(cut, sizeof cut, "%.*s", (int)(fit < sizeof cut ? fit : sizeof cut - 1), st.labels[i]);
      ce_plot_text(&img, ox, oy - label_h, cut, ts, 0x202020);
    }
    for (int y = 0; y < maps[i].ny; y++)
      for (int x = 0; x < maps[i].nx; x++) {
        double v = map_value(&maps[i], x, y, st.log_scale);
        uint8_t c[3];
        if (st.log_scale && v != v)
          ce_cmap_rgb(st.cmap, 0, c); /* non-positive values: lowest colour */
        else
          ce_cmap_rgb(st.cmap, isfinite(v) ? (v - lo) / span : NAN, c);
        for (int sy = 0; sy < scale; sy++) {
          int py = oy + (maps[i].ny - 1 - y) * scale + sy; /* y upwards */
          uint8_t *row = rgb + ((size_t)py * W + ox + (size_t)x * scale) * 3;
          for (int sx = 0; sx < scale; sx++) memcpy(row + 3 * sx, c, 3);
        }
      }
  }
  if (bar_h && isfinite(glo) && isfinite(ghi)) { /* the colour bar and its end values */
    int by = H - bar_h + gap, bw = W - 2 * gap, bh = 12 * ts;
    for (int x = 0; x < bw; x++) {
      uint8_t c[3];
      ce_cmap_rgb(st.cmap, bw > 1 ? (double)x / (bw - 1) : 0, c);
      for (int y = 0; y < bh; y++) memcpy(rgb + ((size_t)(by + y) * W + gap + x) * 3, c, 3);
    }
    char a[48], b[48], l[64];
    double vlo = st.log_scale ? pow(10, glo) : glo, vhi = st.log_scale ? pow(10, ghi) : ghi;
    snprintf(a, sizeof a, "%.3g", vlo);
    snprintf(b, sizeof b, "%.3g", vhi);
    snprintf(l, sizeof l, "%s%s", a, st.log_scale ? " (log scale)" : "");
    int rw, rh;
    ce_plot_text_size(b, ts, &rw, &rh);
    ce_plot_text(&img, gap, by + bh + gap, l, ts, 0x202020);
    ce_plot_text(&img, W - gap - rw, by + bh + gap, b, ts, 0x202020);
  }
  int rc = ce_write_rgb_png(path, rgb, W, H);
  free(rgb);
  return rc;
}
