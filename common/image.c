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

/* libpng's default handlers print "libpng error: ..." on stderr; the write's
 * own error (fs_commit_tmp: the file, errno) is the one to show. */
static void png_quiet_error(png_structp png, png_const_charp msg) {
  (void)msg;
  png_longjmp(png, 1);
}
static void png_quiet_warning(png_structp png, png_const_charp msg) {
  (void)png;
  (void)msg;
}

int ce_write_rgb_png_text(const char *path, const uint8_t *rgb, int width, int height,
                          const char *const *keys, const char *const *values, int ntext) {
  FILE *f;
  char tmp[4096];
  CE_TRY(fs_open_tmp(path, tmp, sizeof tmp, &f));
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, png_quiet_error,
                                            png_quiet_warning);
  png_infop info = png ? png_create_info_struct(png) : NULL;
  png_text *txt = ntext > 0 ? calloc((size_t)ntext, sizeof *txt) : NULL;
  if (!png || !info || (ntext > 0 && !txt)) {
    png_destroy_write_struct(&png, &info);
    free(txt);
    return fs_commit_tmp(f, tmp, path, 0);
  }
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    free(txt);
    return fs_commit_tmp(f, tmp, path, 0);
  }
  png_init_io(png, f);
  png_set_IHDR(png, info, (png_uint_32)width, (png_uint_32)height, 8, PNG_COLOR_TYPE_RGB,
               PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  int nt = 0;
  for (int i = 0; i < ntext; i++)
    if (keys[i] && values[i] && *values[i])
      txt[nt++] = (png_text){.compression = PNG_TEXT_COMPRESSION_NONE, .key = (char *)keys[i],
                             .text = (char *)values[i]};
  if (nt) png_set_text(png, info, txt, nt);
  png_write_info(png, info);
  for (int y = 0; y < height; y++)
    png_write_row(png, (png_const_bytep)(rgb + (size_t)y * width * 3));
  png_write_end(png, NULL);
  png_destroy_write_struct(&png, &info);
  free(txt);
  return fs_commit_tmp(f, tmp, path, 1);
}

int ce_write_rgb_png(const char *path, const uint8_t *rgb, int width, int height) {
  return ce_write_rgb_png_text(path, rgb, width, height, NULL, NULL, 0);
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

enum { GAP = 4 };

int ce_colorbar_height(int h, int ts, int has_label) {
  const int th = 9 * ts;
  return h + 3 * ts + 2 + th + (has_label ? GAP + th : 0);
}

static void fill(ce_image *img, int x0, int y0, int x1, int y1, const uint8_t c[3]) {
  for (int y = y0 < 0 ? 0 : y0; y < y1 && y < img->height; y++)
    for (int x = x0 < 0 ? 0 : x0; x < x1 && x < img->width; x++)
      memcpy(img->rgb + ((size_t)y * img->width + x) * 3, c, 3);
}

int ce_colorbar_draw(ce_image *img, int x, int y, int w, int h, ce_cmap map, double lo, double hi,
                     int log_scale, const char *label, int ts) {
  const uint8_t ink[3] = {0x20, 0x20, 0x20};
  for (int i = 0; i < w; i++) {
    uint8_t c[3];
    ce_cmap_rgb(map, w > 1 ? (double)i / (w - 1) : 0, c);
    fill(img, x + i, y, x + i + 1, y + h, c);
  }
  if (!(hi > lo)) hi = lo + 1; /* what the panels used: an all-equal map is the lowest colour */
  /* ticks at round values, as many as fit with a label of ~7 characters each */
  double t[64];
  char lab[64][CE_PLOT_LABEL];
  int maxt = w / (6 * ts * 9), nt;
  if (maxt < 2) maxt = 2;
  if (log_scale && hi - lo < 300) {
    nt = ce_plot_ticks(pow(10, lo), pow(10, hi), 1, maxt, t, 64);
  } else
    nt = ce_plot_ticks(lo, hi, 0, maxt, t, 64);
  ce_plot_tick_labels(t, nt, log_scale && hi - lo < 300, lab);
  int right = -1000000; /* the last drawn label's right edge: labels never overlap */
  const int ty = y + h + 3 * ts + 2;
  for (int k = 0; k < nt; k++) {
    double v = log_scale && hi - lo < 300 ? log10(t[k]) : t[k];
    double f = (v - lo) / (hi - lo);
    if (!(f >= -1e-9 && f <= 1 + 1e-9)) continue;
    int px = x + (int)lrint(f * (w - 1));
    fill(img, px, y + h, px + (ts > 1 ? 2 : 1), y + h + 3 * ts, ink);
    int lw, lh;
    ce_plot_text_size(lab[k], ts, &lw, &lh);
    int lx = px - lw / 2;
    if (lx < x) lx = x;
    if (lx + lw > x + w) lx = x + w - lw;
    if (lx < right + 3 * ts) continue;
    ce_plot_text(img, lx, ty, lab[k], ts, 0x202020);
    right = lx + lw;
  }
  if (label && *label) {
    char cut[512];
    int fit = w / (6 * ts);
    snprintf(cut, sizeof cut, "%.*s", fit < (int)sizeof cut - 1 ? fit : (int)sizeof cut - 1, label);
    int lw, lh;
    ce_plot_text_size(cut, ts, &lw, &lh);
    ce_plot_text(img, x + (w - lw) / 2, ty + 9 * ts + GAP, cut, ts, 0x202020);
  }
  return ce_colorbar_height(h, ts, label && *label);
}

static int text_w(const char *s, int ts) {
  int w, h;
  ce_plot_text_size(s ? s : "", ts, &w, &h);
  return w;
}

int ce_render_panels(const char *what, const ce_map2d *maps, int n, const ce_panel_style *style,
                     ce_image *img, ce_panel_layout *lay) {
  img->rgb = NULL;
  if (n <= 0) CE_FAIL("%s: no panels to draw", what);
  ce_panel_style st = style ? *style : (ce_panel_style){0};
  int pw = 0, ph = 0;
  for (int i = 0; i < n; i++) {
    if (maps[i].nx > pw) pw = maps[i].nx;
    if (maps[i].ny > ph) ph = maps[i].ny;
  }
  if (pw <= 0 || ph <= 0) CE_FAIL("%s: empty panels", what);
  int scale = st.scale > 0 ? st.scale : (pw >= 256 ? 1 : 256 / pw);
  if (scale < 1) scale = 1;
  int cols = st.columns > 0 && st.columns < n ? st.columns : n;
  int rows = (n + cols - 1) / cols;
  if (st.groups)
    for (int c = 0; c < cols; c++)
      if (st.groups[c] < 0 || st.groups[c] >= CE_PANEL_GROUPS)
        CE_FAIL("%s: column %d: range group %d, expected 0..%d", what, c, st.groups[c],
                CE_PANEL_GROUPS - 1);
  /* text: scale 2 when panels are wide enough for it, strips for the title,
   * each row's title and labels, and the colour bars */
  const int ts = pw * scale >= 160 ? 2 : 1, th = 9 * ts;
  const int title_h = st.title ? th + 2 * GAP : 0, label_h = st.labels ? th + GAP : 0,
            rtitle_h = st.row_titles ? th + GAP : 0;
  /* the colour ranges: one, one per group, or one per panel */
  double glo[CE_PANEL_GROUPS], ghi[CE_PANEL_GROUPS];
  for (int g = 0; g < CE_PANEL_GROUPS; g++) glo[g] = INFINITY, ghi[g] = -INFINITY;
  const int one_range = !st.groups && (st.vmin < st.vmax || st.shared_range);
  if (!st.groups && st.vmin < st.vmax) {
    glo[0] = st.log_scale ? log10(st.vmin > 0 ? st.vmin : 1e-300) : st.vmin;
    ghi[0] = st.log_scale ? log10(st.vmax > 0 ? st.vmax : 1e-300) : st.vmax;
  } else if (one_range || st.groups)
    for (int i = 0; i < n; i++) {
      int g = st.groups ? st.groups[i % cols] : 0;
      map_range(&maps[i], st.log_scale, &glo[g], &ghi[g]);
    }
  /* the bars: where, which range */
  int nbar = 0, bx[CE_PANEL_GROUPS], bw[CE_PANEL_GROUPS], bg[CE_PANEL_GROUPS];
  const int cellw = pw * scale + GAP, panels_w = cols * cellw + GAP, bar_h = 10 * ts;
  int has_label = 0;
  if (st.colorbar && one_range && isfinite(glo[0])) {
    bx[0] = GAP, bw[0] = panels_w - 2 * GAP, bg[0] = 0, nbar = 1;
    has_label = st.bar_label && *st.bar_label;
  } else if (st.colorbar && st.groups)
    for (int g = 0; g < CE_PANEL_GROUPS; g++) {
      int c0 = -1, c1 = -1;
      for (int c = 0; c < cols; c++)
        if (st.groups[c] == g) c1 = c, c0 = c0 < 0 ? c : c0;
      if (c0 < 0 || !isfinite(glo[g])) continue;
      bx[nbar] = GAP + c0 * cellw, bw[nbar] = (c1 - c0 + 1) * cellw - GAP, bg[nbar] = g;
      has_label |= st.group_labels && st.group_labels[g] && *st.group_labels[g];
      nbar++;
    }
  const int band_h = nbar ? GAP + ce_colorbar_height(bar_h, ts, has_label) + GAP : 0;
  /* the width: the panels, widened to the longest title line */
  int W = panels_w;
  int tw = text_w(st.title, ts) + 2 * GAP;
  if (tw > W) W = tw;
  for (int r = 0; st.row_titles && r < rows; r++)
    if (text_w(st.row_titles[r], ts) + 2 * GAP > W) W = text_w(st.row_titles[r], ts) + 2 * GAP;
  if (W > 8192) W = 8192;
  const int rowh = rtitle_h + label_h + ph * scale + GAP;
  int H = title_h + GAP + rows * rowh + band_h;
  uint8_t *rgb = ce_malloc_array((size_t)W * H, 3, what);
  if (!rgb) return -1;
  memset(rgb, 255, (size_t)W * H * 3);
  *img = (ce_image){rgb, W, H};
  if (lay) {
    memset(lay, 0, sizeof *lay);
    lay->title_y = 0;
    lay->title_h = title_h;
    lay->panel_x = GAP;
    lay->panel_y = title_h + GAP + rtitle_h + label_h;
  }
  if (st.title) ce_plot_text(img, GAP, GAP, st.title, ts, 0x202020);
  for (int r = 0; st.row_titles && r < rows; r++)
    if (st.row_titles[r]) ce_plot_text(img, GAP, title_h + GAP + r * rowh, st.row_titles[r], ts, 0x202020);
  for (int i = 0; i < n; i++) {
    int g = st.groups ? st.groups[i % cols] : 0;
    double lo = glo[g], hi = ghi[g];
    if (!one_range && !st.groups) {
      lo = INFINITY;
      hi = -INFINITY;
      map_range(&maps[i], st.log_scale, &lo, &hi);
    }
    double span = hi > lo ? hi - lo : 1.0;
    int ox = GAP + (i % cols) * cellw;
    int oy = title_h + GAP + (i / cols) * rowh + rtitle_h + label_h;
    if (st.labels && st.labels[i]) { /* cut to the panel's width: labels never overlap */
      char cut[256];
      size_t fit = (size_t)(pw * scale) / (size_t)(6 * ts);
      snprintf(cut, sizeof cut, "%.*s", (int)(fit < sizeof cut ? fit : sizeof cut - 1), st.labels[i]);
      ce_plot_text(img, ox, oy - label_h, cut, ts, 0x202020);
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
  const int by = H - band_h + GAP;
  for (int b = 0; b < nbar; b++) {
    int g = bg[b];
    const char *label = one_range ? st.bar_label : st.group_labels ? st.group_labels[g] : NULL;
    ce_colorbar_draw(img, bx[b], by, bw[b], bar_h, st.cmap, glo[g], ghi[g], st.log_scale, label, ts);
    if (lay) {
      lay->bar[b].x = bx[b], lay->bar[b].y = by, lay->bar[b].w = bw[b], lay->bar[b].h = bar_h;
      lay->bar[b].lo = glo[g], lay->bar[b].hi = ghi[g] > glo[g] ? ghi[g] : glo[g] + 1;
      lay->bar[b].group = g;
      lay->nbars = b + 1;
    }
  }
  return 0;
}

/* The words of a picture, for its PNG text chunks: "Title" and a
 * "Description" of one line per row title, panel label and colour bar. */
static char *describe(int n, const ce_panel_style *st,
                      const ce_panel_layout *lay) {
  size_t cap = 256;
  int cols = st->columns > 0 && st->columns < n ? st->columns : n, rows = (n + cols - 1) / cols;
  for (int r = 0; st->row_titles && r < rows; r++)
    cap += (st->row_titles[r] ? strlen(st->row_titles[r]) : 0) + 32;
  for (int i = 0; st->labels && i < n; i++) cap += (st->labels[i] ? strlen(st->labels[i]) : 0) + 32;
  for (int c = 0; st->groups && st->group_labels && c < cols; c++) /* only the groups in use */
    cap += (st->group_labels[st->groups[c]] ? strlen(st->group_labels[st->groups[c]]) : 0) + 96;
  cap += (st->bar_label ? strlen(st->bar_label) : 0) + 96 * CE_PANEL_GROUPS;
  char *d = malloc(cap);
  if (!d) return NULL;
  size_t k = 0;
  d[0] = 0;
#define ADD(...) k += (size_t)snprintf(d + k, k < cap ? cap - k : 0, __VA_ARGS__)
  for (int r = 0; st->row_titles && r < rows; r++)
    if (st->row_titles[r]) ADD("row %d: %s\n", r, st->row_titles[r]);
  for (int i = 0; st->labels && i < n; i++)
    if (st->labels[i]) ADD("panel %d: %s\n", i, st->labels[i]);
  for (int b = 0; b < lay->nbars; b++) {
    const char *l = st->groups ? (st->group_labels ? st->group_labels[lay->bar[b].group] : NULL)
                               : st->bar_label;
    ADD("colour bar %d: %s; %s %.6g to %.6g\n", b, l ? l : "", st->log_scale ? "log10 range" : "range",
        lay->bar[b].lo, lay->bar[b].hi);
  }
#undef ADD
  return d;
}

int ce_write_panels_png(const char *path, const ce_map2d *maps, int n,
                        const ce_panel_style *style) {
  ce_image img;
  ce_panel_layout lay;
  CE_TRY(ce_render_panels(path, maps, n, style, &img, &lay));
  ce_panel_style st = style ? *style : (ce_panel_style){0};
  char *desc = describe(n, &st, &lay);
  const char *keys[3] = {"Title", "Description", "Software"},
             *vals[3] = {st.title, desc, "coemu " COEMU_VERSION};
  int rc = desc ? ce_write_rgb_png_text(path, img.rgb, img.width, img.height, keys, vals, 3)
                : ce_err("%s: out of memory", path);
  free(desc);
  free(img.rgb);
  return rc;
}
