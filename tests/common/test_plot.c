/* Tests of common/plot: ticks and labels against known answers, text ink
 * boxes, the data-to-pixel mapping seen in the drawn pixels, histogram bar
 * heights against the counts, PNG files read back with libpng, edge cases
 * and errors.
 * Tolerances: tick positions and pixel mappings are a few double roundings
 * of fixed scalar formulas (1e-12 relative, 1e-9 px), bar heights are counts
 * drawn at whole pixels (2%); nothing depends on BLAS or thread order. */
#include <dirent.h>
#include <png.h>
#include <stdint.h>

#include "check.h"
#include "common/fsutil.h"
#include "common/image.h"
#include "common/plot.h"

static const char *dir;

static void path_in(char *buf, size_t len, const char *name) {
  snprintf(buf, len, "%s/%s", dir, name);
}

static uint32_t pixel(const ce_image *img, int x, int y) {
  const uint8_t *p = img->rgb + ((size_t)y * img->width + x) * 3;
  return (uint32_t)p[0] << 16 | (uint32_t)p[1] << 8 | p[2];
}

/* Read a PNG back as RGB (NULL if libpng cannot). */
static uint8_t *read_png(const char *path, int *w, int *h) {
  png_image im;
  memset(&im, 0, sizeof im);
  im.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_file(&im, path)) return NULL;
  im.format = PNG_FORMAT_RGB;
  uint8_t *buf = malloc(PNG_IMAGE_SIZE(im));
  if (!buf || !png_image_finish_read(&im, NULL, buf, 0, NULL)) {
    free(buf);
    png_image_free(&im);
    return NULL;
  }
  *w = (int)im.width, *h = (int)im.height;
  return buf;
}

static int check_ticks(double lo, double hi, int log, int max, const double *want, int nwant) {
  double t[40];
  int n = ce_plot_ticks(lo, hi, log, max, t, 40);
  int ok = n == nwant;
  for (int i = 0; ok && i < n; i++) ok = fabs(t[i] - want[i]) <= 1e-12 * fmax(1, fabs(want[i]));
  if (!ok) {
    fprintf(stderr, "ticks(%g, %g, log=%d, max=%d):", lo, hi, log, max);
    for (int i = 0; i < n; i++) fprintf(stderr, " %g", t[i]);
    fprintf(stderr, "\n");
  }
  return ok;
}

static void test_ticks_known(void) {
  CHECK(check_ticks(0, 1, 0, 6, (double[]){0, 0.2, 0.4, 0.6, 0.8, 1}, 6));
  CHECK(check_ticks(3, 97, 0, 6, (double[]){20, 40, 60, 80}, 4));
  CHECK(check_ticks(-1, 1, 0, 5, (double[]){-1, -0.5, 0, 0.5, 1}, 5));
  CHECK(check_ticks(0, 20000, 0, 5, (double[]){0, 5000, 10000, 15000, 20000}, 5));
  CHECK(check_ticks(0.995, 1.005, 0, 5, (double[]){0.996, 0.998, 1, 1.002, 1.004}, 5));
  /* log: decades, every k-th decade when many, 1-2-5 within ~ a decade, else linear */
  CHECK(check_ticks(1e-3, 10, 1, 8, (double[]){1e-3, 1e-2, 0.1, 1, 10}, 5));
  CHECK(check_ticks(5e-4, 20, 1, 8, (double[]){1e-3, 1e-2, 0.1, 1, 10}, 5));
  CHECK(check_ticks(1e-30, 1e10, 1, 6, (double[]){1e-30, 1e-20, 1e-10, 1, 1e10}, 5));
  CHECK(check_ticks(2, 30, 1, 8, (double[]){2, 5, 10, 20}, 4));
  CHECK(check_ticks(1.5, 1.9, 1, 6, (double[]){1.5, 1.6, 1.7, 1.8, 1.9}, 5));
  /* no ticks for empty or bad ranges */
  double t[4];
  CHECK(ce_plot_ticks(1, 1, 0, 5, t, 4) == 0);
  CHECK(ce_plot_ticks(-1, 10, 1, 5, t, 4) == 0);
  CHECK(ce_plot_ticks(0, NAN, 0, 5, t, 4) == 0);
}

/* Invariants over many ranges: inside the range, increasing, equal steps of
 * 1, 2 or 5 times a power of ten, at most max_ticks + 1 and at least 2. */
static void test_ticks_invariants(void) {
  for (int i = 0; i < 400; i++) {
    double lo = (i % 37 - 18) * pow(10, i % 11 - 5) * 0.37;
    double hi = lo + (1 + i % 13) * pow(10, i % 7 - 3) * 0.91;
    int max = 2 + i % 9;
    double t[40];
    int n = ce_plot_ticks(lo, hi, 0, max, t, 40);
    CHECK_MSG(n >= 2 && n <= 2 * max + 1, "%g..%g max %d: %d ticks", lo, hi, max, n);
    for (int k = 0; k < n; k++) CHECK(t[k] >= lo - 1e-9 * (hi - lo) && t[k] <= hi + 1e-9 * (hi - lo));
    if (n < 2) continue;
    double step = t[1] - t[0], m = step / pow(10, floor(log10(step) + 1e-6));
    CHECK_MSG(fabs(m - 1) < 1e-6 || fabs(m - 2) < 1e-6 || fabs(m - 5) < 1e-6, "step %g", step);
    for (int k = 1; k < n; k++) CHECK_CLOSE(t[k] - t[k - 1], step, 1e-6, 0);
  }
}

static int format_is(double v, double step, const char *want) {
  char b[CE_PLOT_LABEL];
  ce_plot_format(v, step, b, sizeof b);
  if (strcmp(b, want)) fprintf(stderr, "format(%g, %g) = '%s', expected '%s'\n", v, step, b, want);
  return !strcmp(b, want);
}

static void test_labels(void) {
  CHECK(format_is(0.5, 0.1, "0.5"));
  CHECK(format_is(10, 10, "10"));
  CHECK(format_is(1e-3, 1e-3, "1e-3"));
  CHECK(format_is(25000, 5000, "2.5e4"));
  CHECK(format_is(0.6000000000000001, 0.2, "0.6"));
  CHECK(format_is(-0.25, 0.05, "-0.25"));
  CHECK(format_is(1e-17, 0.1, "0"));
  CHECK(format_is(-2e-5, 1e-5, "-2e-5"));
  CHECK(format_is(1.5e300, 1e299, "1.5e300"));

  char lab[8][CE_PLOT_LABEL];
  const char *want_lin[] = {"0", "5e3", "1e4", "1.5e4", "2e4"};
  ce_plot_tick_labels((double[]){0, 5000, 10000, 15000, 20000}, 5, 0, lab);
  for (int i = 0; i < 5; i++) CHECK_MSG(!strcmp(lab[i], want_lin[i]), "'%s' != '%s'", lab[i], want_lin[i]);
  const char *want_small[] = {"0", "0.2", "0.4", "0.6", "0.8", "1.0"};
  ce_plot_tick_labels((double[]){0, 0.2, 0.4, 0.6000000000000001, 0.8, 1}, 6, 0, lab);
  for (int i = 0; i < 6; i++) CHECK_MSG(!strcmp(lab[i], want_small[i]), "'%s' != '%s'", lab[i], want_small[i]);
  const char *want_log[] = {"1e-3", "0.01", "0.1", "1", "10", "1e4"};
  ce_plot_tick_labels((double[]){1e-3, 1e-2, 0.1, 1, 10, 1e4}, 6, 1, lab);
  for (int i = 0; i < 6; i++) CHECK_MSG(!strcmp(lab[i], want_log[i]), "'%s' != '%s'", lab[i], want_log[i]);
  const char *want_125[] = {"2", "5", "10", "20"};
  ce_plot_tick_labels((double[]){2, 5, 10, 20}, 4, 1, lab);
  for (int i = 0; i < 4; i++) CHECK_MSG(!strcmp(lab[i], want_125[i]), "'%s' != '%s'", lab[i], want_125[i]);
  const char *want_loglin[] = {"1.5", "1.6", "1.7"};
  ce_plot_tick_labels((double[]){1.5, 1.6, 1.7000000000000002}, 3, 1, lab);
  for (int i = 0; i < 3; i++) CHECK_MSG(!strcmp(lab[i], want_loglin[i]), "'%s' != '%s'", lab[i], want_loglin[i]);
}

/* Ink of the text lies in the box its size names, the box's edges are
 * reached, and descenders fall in the last two rows. */
static void ink_box(const ce_image *img, int *x0, int *y0, int *x1, int *y1) {
  *x0 = *y0 = 1 << 30, *x1 = *y1 = -1;
  for (int y = 0; y < img->height; y++)
    for (int x = 0; x < img->width; x++)
      if (pixel(img, x, y) != 0xffffff) {
        if (x < *x0) *x0 = x;
        if (x > *x1) *x1 = x;
        if (y < *y0) *y0 = y;
        if (y > *y1) *y1 = y;
      }
}

static void test_text(void) {
  uint8_t buf[120 * 60 * 3];
  ce_image img = {buf, 120, 60};
  int w, h, x0, y0, x1, y1;
  ce_plot_text_size("Ag", 2, &w, &h);
  CHECK(w == 22 && h == 18);
  memset(buf, 255, sizeof buf);
  ce_plot_text(&img, 10, 20, "Ag", 2, 0x000000);
  ink_box(&img, &x0, &y0, &x1, &y1);
  CHECK_MSG(x0 == 10 && y0 == 20 && x1 == 10 + w - 1 && y1 == 20 + h - 1,
            "ink box %d..%d x %d..%d, expected 10..31 x 20..37", x0, x1, y0, y1);
  memset(buf, 255, sizeof buf);
  ce_plot_text(&img, 10, 20, "AE", 2, 0x000000); /* capitals: the top 7 rows only */
  ink_box(&img, &x0, &y0, &x1, &y1);
  CHECK(y0 == 20 && y1 == 20 + 14 - 1 && x0 == 10 && x1 == 31);
  CHECK(pixel(&img, 12, 20) == 0 && pixel(&img, 10, 20) == 0xffffff); /* A's round top */
  /* a byte outside ASCII is drawn as '?' */
  uint8_t ref[120 * 60 * 3];
  memset(buf, 255, sizeof buf);
  ce_plot_text(&img, 3, 3, "\xe9", 1, 0x000000);
  memcpy(ref, buf, sizeof buf);
  memset(buf, 255, sizeof buf);
  ce_plot_text(&img, 3, 3, "?", 1, 0x000000);
  CHECK(memcmp(ref, buf, sizeof buf) == 0);
  /* clipped at the edges without writing outside */
  memset(buf, 255, sizeof buf);
  ce_plot_text(&img, -7, 55, "clip me", 3, 0x000000);
  ce_plot_text(&img, 110, -5, "clip", 3, 0x000000);
  ink_box(&img, &x0, &y0, &x1, &y1);
  CHECK(x0 >= 0 && y0 >= 0 && x1 < 120 && y1 < 60 && x1 >= 0);
}

/* Count pixels of colour c in row y (or column x) of the plot area. */
static int count_row(const ce_image *img, const ce_plot_frame *f, int y, uint32_t c) {
  int n = 0;
  for (int x = f->left; x < f->right; x++) n += pixel(img, x, y) == c;
  return n;
}

static void test_line_mapping(void) {
  double x[11], y1[11], y2[11];
  for (int i = 0; i < 11; i++) x[i] = i / 10.0, y1[i] = 0.5, y2[i] = 0.25;
  ce_series s[2] = {{.x = x, .y = y1, .n = 11, .color = 0xff0000}, {.x = x, .y = y2, .n = 11}};
  ce_chart c = {.title = "t", .xlabel = "x", .ylabel = "y", .xmin = 0, .xmax = 1, .ymin = 0,
                .ymax = 1};
  ce_image img;
  ce_plot_frame f;
  CHECK_OK(ce_plot_lines("mem", &c, s, 2, &img, &f));
  if (!img.rgb) return;
  CHECK(img.width == 800 && img.height == 500);
  CHECK(f.x0 == 0 && f.x1 == 1 && f.y0 == 0 && f.y1 == 1);
  CHECK(f.left > 0 && f.right < 800 && f.top > 0 && f.bottom < 500 && f.left < f.right);
  CHECK_CLOSE(ce_plot_px(&f, 0), f.left, 0, 1e-9);
  CHECK_CLOSE(ce_plot_px(&f, 1), f.right, 0, 1e-9);
  CHECK_CLOSE(ce_plot_py(&f, 0), f.bottom, 0, 1e-9);
  CHECK_CLOSE(ce_plot_py(&f, 1), f.top, 0, 1e-9);
  int r1 = (int)floor(ce_plot_py(&f, 0.5)), r2 = (int)floor(ce_plot_py(&f, 0.25));
  int width = f.right - f.left;
  CHECK_MSG(count_row(&img, &f, r1, 0xff0000) >= width - 2, "row %d: %d red of %d", r1,
            count_row(&img, &f, r1, 0xff0000), width);
  CHECK(count_row(&img, &f, r2, 0xff7f0e) >= width - 2); /* the palette's second colour */
  for (int d = 3; d <= 6; d++) {
    CHECK(count_row(&img, &f, r1 - d, 0xff0000) == 0 && count_row(&img, &f, r1 + d, 0xff0000) == 0);
    CHECK(count_row(&img, &f, r2 - d, 0xff7f0e) == 0 && count_row(&img, &f, r2 + d, 0xff7f0e) == 0);
  }
  /* nothing of the series outside the plot area */
  int outside = 0;
  for (int yy = 0; yy < img.height; yy++)
    for (int xx = 0; xx < img.width; xx++)
      if (xx < f.left || xx >= f.right || yy < f.top || yy >= f.bottom)
        outside += pixel(&img, xx, yy) == 0xff0000;
  CHECK(outside == 0);
  free(img.rgb);

  /* a log axis: 100 is halfway between 1 and 1e4; a diagonal line in
   * log-log space passes through the plot area's centre */
  double lx[2] = {1, 1e4}, ly[2] = {100, 100}, dy[2] = {1, 1e4};
  ce_series ls[2] = {{.x = lx, .y = dy, .n = 2, .color = 0x0000ff},
                     {.x = lx, .y = ly, .n = 2, .color = 0x00ff00}};
  ce_chart lc = {.log_x = 1, .log_y = 1, .xmin = 1, .xmax = 1e4, .ymin = 1, .ymax = 1e4,
                 .width = 600, .height = 600};
  CHECK_OK(ce_plot_lines("mem", &lc, ls, 2, &img, &f));
  if (!img.rgb) return;
  CHECK_CLOSE(ce_plot_py(&f, 100), (f.top + f.bottom) / 2.0, 0, 1e-9);
  CHECK(count_row(&img, &f, (int)floor(ce_plot_py(&f, 100)), 0x00ff00) >= f.right - f.left - 2);
  int cx = (int)floor(ce_plot_px(&f, 10)), cy = (int)floor(ce_plot_py(&f, 10));
  CHECK_MSG(pixel(&img, cx, cy) == 0x0000ff, "diagonal at (%d,%d): %06x", cx, cy, pixel(&img, cx, cy));
  CHECK(isnan(ce_plot_px(&f, 0)) && isnan(ce_plot_py(&f, -1)));
  free(img.rgb);
}

static void test_histogram_bars(void) {
  double v[] = {0.5, 1.5, 1.5, 2.5, 2.5, 2.5, 3.5, 3.5, 3.5, 3.5, NAN, 7, -1, INFINITY};
  double med = 2.0;
  const char *lab[] = {"median 2"};
  ce_chart c = {.xmin = 0, .xmax = 4, .title = "h", .xlabel = "v"};
  ce_image img;
  ce_plot_frame f;
  int counts[4];
  CHECK_OK(ce_plot_histogram("mem", &c, v, 14, 4, &med, lab, 1, &img, &f, counts));
  if (!img.rgb) return;
  CHECK(counts[0] == 1 && counts[1] == 2 && counts[2] == 3 && counts[3] == 4);
  CHECK(f.y0 == 0 && f.y1 >= 4);
  int h[4];
  for (int k = 0; k < 4; k++) {
    int col = (int)floor(ce_plot_px(&f, k + 0.5));
    h[k] = 0;
    for (int y = f.bottom - 1; y >= f.top && pixel(&img, col, y) == 0x1f77b4; y--) h[k]++;
    CHECK_MSG(abs(h[k] - (int)lrint(ce_plot_py(&f, 0) - ce_plot_py(&f, counts[k]))) <= 1,
              "bar %d: %d pixels for count %d", k, h[k], counts[k]);
  }
  for (int k = 0; k < 3; k++) CHECK_CLOSE((double)h[k] / h[3], counts[k] / 4.0, 0.02, 0);
  /* the dashed median line: red in its column, on and off */
  int col = (int)floor(ce_plot_px(&f, med)), red = 0, runs = 0, prev = 0;
  for (int y = f.top; y < f.bottom; y++) {
    int r = pixel(&img, col, y) == 0xd62728;
    red += r, runs += r && !prev, prev = r;
  }
  CHECK_MSG(red > (f.bottom - f.top) / 3 && runs >= 10, "median line: %d red pixels in %d dashes", red, runs);
  free(img.rgb);
}

static void test_png_files(void) {
  char p[1200];
  path_in(p, sizeof p, "lines.png");
  double x[3] = {1, 2, 3}, y[3] = {0.9, 0.3, 0.1};
  ce_series s = {.label = "train", .x = x, .y = y, .n = 3, .style = CE_PLOT_LINE | CE_PLOT_MARKERS};
  ce_chart c = {.title = "loss", .xlabel = "epoch", .ylabel = "loss", .log_y = 1, .width = 640,
                .height = 400};
  CHECK_OK(ce_plot_lines_png(p, &c, &s, 1));
  int w = 0, h = 0;
  uint8_t *rgb = read_png(p, &w, &h);
  CHECK(rgb && w == 640 && h == 400);
  ce_image img;
  CHECK_OK(ce_plot_lines("mem", &c, &s, 1, &img, NULL));
  if (rgb && img.rgb) CHECK(memcmp(rgb, img.rgb, (size_t)640 * 400 * 3) == 0);
  free(rgb);
  free(img.rgb);

  path_in(p, sizeof p, "hist.png");
  double v[100];
  for (int i = 0; i < 100; i++) v[i] = 1 + (i * 37 % 100) / 10.0;
  double med = 5.95;
  CHECK_OK(ce_plot_histogram_png(p, &(ce_chart){.width = 300, .height = 200}, v, 100, 0, &med,
                                 NULL, 1));
  rgb = read_png(p, &w, &h);
  CHECK(rgb && w == 300 && h == 200);
  free(rgb);
  /* written atomically: no temporary files left behind */
  DIR *d = opendir(dir);
  struct dirent *e;
  int others = 0;
  while (d && (e = readdir(d)))
    others += e->d_name[0] != '.' && strcmp(e->d_name, "lines.png") && strcmp(e->d_name, "hist.png");
  if (d) closedir(d);
  CHECK(others == 0);
}

/* Plot-area pixels that are neither background nor grid. */
static int ink_in_plot(const ce_image *img, const ce_plot_frame *f) {
  int n = 0;
  for (int y = f->top; y < f->bottom; y++)
    for (int x = f->left; x < f->right; x++) {
      uint32_t c = pixel(img, x, y);
      n += c != 0xffffff && c != 0xe6e6e6;
    }
  return n;
}

static void test_edge_cases(void) {
  char p[1200];
  ce_image img;
  ce_plot_frame f;
  ce_chart c = {.title = "edge", .xlabel = "x", .ylabel = "y"};
  /* no data: a file, and "no data" written in the plot area */
  path_in(p, sizeof p, "empty.png");
  CHECK_OK(ce_plot_lines_png(p, &c, NULL, 0));
  CHECK(fs_file_size(p) > 0);
  CHECK_OK(ce_plot_lines("mem", &c, NULL, 0, &img, &f));
  CHECK(img.rgb && ink_in_plot(&img, &f) > 20);
  free(img.rgb);
  double bad[4] = {NAN, INFINITY, -INFINITY, NAN};
  ce_series sb = {.label = "bad", .y = bad, .n = 4};
  CHECK_OK(ce_plot_lines("mem", &c, &sb, 1, &img, &f));
  CHECK(img.rgb && f.x0 == 0 && f.x1 == 1);
  free(img.rgb);
  /* NaN and Inf skipped: the range is the finite points' */
  double x[6] = {0, 1, 2, 3, 4, 5}, y[6] = {1, NAN, 3, INFINITY, 5, 1e308};
  ce_series s = {.x = x, .y = y, .n = 6};
  CHECK_OK(ce_plot_lines("mem", &c, &s, 1, &img, &f));
  CHECK(img.rgb && f.y0 < 1 && f.y0 > 0.5 && f.y1 > 5 && f.y1 < 5.5 && f.x1 < 4.5);
  free(img.rgb);
  /* all-equal values: a range around the value */
  double eq[5] = {7, 7, 7, 7, 7};
  ce_series se = {.y = eq, .n = 5, .style = CE_PLOT_MARKERS};
  CHECK_OK(ce_plot_lines("mem", &c, &se, 1, &img, &f));
  if (img.rgb) {
    CHECK(f.y0 < 7 && f.y1 > 7);
    CHECK(ink_in_plot(&img, &f) > 50);
    free(img.rgb);
  }
  /* a dashed series (no line flag given): dashes along its row, with gaps */
  ce_series sd = {.y = eq, .n = 5, .style = CE_PLOT_DASHED, .color = 0x00aa00};
  CHECK_OK(ce_plot_lines("mem", &c, &sd, 1, &img, &f));
  if (img.rgb) {
    int on = count_row(&img, &f, (int)floor(ce_plot_py(&f, 7)), 0x00aa00);
    int len = (int)(ce_plot_px(&f, 4) - ce_plot_px(&f, 0));
    CHECK_MSG(on > len / 2 && on < len * 0.8, "dashed: %d of %d pixels", on, len);
    free(img.rgb);
  }
  path_in(p, sizeof p, "equal.png");
  CHECK_OK(ce_plot_lines_png(p, &c, &se, 1));
  /* log axis: non-positive values skipped */
  double ly[5] = {-1, 0, 1, 10, 100};
  ce_chart cl = {.log_y = 1, .log_x = 1};
  ce_series sl = {.x = (double[]){1, 2, 0, 4, 5}, .y = ly, .n = 5, .label = "log"};
  CHECK_OK(ce_plot_lines("mem", &cl, &sl, 1, &img, &f));
  CHECK(img.rgb && f.y0 > 0 && f.y0 < 10 && f.x0 > 3 && f.x0 < 4);
  free(img.rgb);
  /* one point: drawn as a dot */
  double one = 3;
  ce_series s1 = {.y = &one, .n = 1, .color = 0x123456};
  CHECK_OK(ce_plot_lines("mem", &c, &s1, 1, &img, &f));
  if (img.rgb) {
    int px = (int)floor(ce_plot_px(&f, 0)), py = (int)floor(ce_plot_py(&f, 3));
    CHECK(pixel(&img, px, py) == 0x123456);
    free(img.rgb);
  }
  /* histograms: no values, all equal, all NaN, log bins with non-positive values */
  int counts[10];
  path_in(p, sizeof p, "hist_empty.png");
  CHECK_OK(ce_plot_histogram_png(p, &c, NULL, 0, 10, NULL, NULL, 0));
  CHECK_OK(ce_plot_histogram("mem", &c, eq, 5, 10, NULL, NULL, 0, &img, &f, counts));
  if (img.rgb) {
    int sum = 0;
    for (int k = 0; k < 10; k++) sum += counts[k];
    CHECK(sum == 5 && f.x0 < 7 && f.x1 > 7);
    free(img.rgb);
  }
  CHECK_OK(ce_plot_histogram("mem", &c, bad, 4, 10, NULL, NULL, 0, &img, &f, counts));
  CHECK(img.rgb && counts[0] == 0 && ink_in_plot(&img, &f) > 20);
  free(img.rgb);
  double lv[6] = {-1, 0, 0.01, 0.1, 1, 10};
  ce_chart ch = {.log_x = 1};
  CHECK_OK(ce_plot_histogram("mem", &ch, lv, 6, 4, NULL, NULL, 0, &img, &f, counts));
  if (img.rgb) {
    CHECK(counts[0] == 1 && counts[1] == 1 && counts[2] == 1 && counts[3] == 1);
    free(img.rgb);
  }
  /* huge and tiny values do not break the axes */
  double wild[4] = {1e-300, 1e300, -1e300, 5};
  ce_series sw = {.y = wild, .n = 4};
  CHECK_OK(ce_plot_lines("mem", &c, &sw, 1, &img, &f));
  free(img.rgb);
  CHECK_OK(ce_plot_lines("mem", &(ce_chart){.log_y = 1}, &sw, 1, &img, &f));
  free(img.rgb);
  CHECK_OK(ce_plot_histogram("mem", &(ce_chart){.xmin = 1, .xmax = 1 + 1e-12}, wild, 4, 3, wild,
                              NULL, 4, &img, &f, NULL));
  free(img.rgb);
  CHECK(format_is(INFINITY, 1, "inf") && format_is(3, 0, "3") && format_is(0.25, NAN, "0.25"));
  CHECK_OK(ce_plot_histogram("mem", NULL, wild, 4, 0, NULL, NULL, 0, &img, &f, NULL));
  free(img.rgb);
}

static void test_errors(void) {
  char p[1200];
  double y[2] = {1, 2};
  ce_series s = {.y = y, .n = 2};
  path_in(p, sizeof p, "err.png");
  CHECK_ERR(ce_plot_lines_png(p, &(ce_chart){.width = 50}, &s, 1), "err.png: chart size 50x500");
  CHECK_ERR(ce_plot_lines_png(p, &(ce_chart){.text_scale = 9}, &s, 1), "text scale 9");
  CHECK_ERR(ce_plot_lines_png(p, &(ce_chart){.text_scale = 8, .width = 200, .height = 200}, &s, 1),
            "too small");
  CHECK_ERR(ce_plot_lines_png(p, NULL, &s, -1), "-1 series");
  CHECK_ERR(ce_plot_lines_png(p, NULL, &(ce_series){.n = 3}, 1), "series 0: 3 points");
  CHECK_ERR(ce_plot_lines_png(p, &(ce_chart){.log_y = 1, .ymin = -1, .ymax = 1}, &s, 1),
            "expected ymin > 0");
  CHECK_ERR(ce_plot_histogram_png(p, NULL, y, 2, -1, NULL, NULL, 0), "-1 bins");
  CHECK_ERR(ce_plot_histogram_png(p, NULL, y, 2, 5, NULL, NULL, 2), "2 vertical lines");
  CHECK_ERR(ce_plot_histogram_png(p, NULL, NULL, 2, 5, NULL, NULL, 0), "2 values");
  ce_image img;
  int counts[1];
  CHECK_ERR(ce_plot_histogram("h.png", NULL, y, 2, 0, NULL, NULL, 0, &img, NULL, counts),
            "automatic bins");
  CHECK_ERR(ce_plot_lines_png("/nonexistent_dir_coemu/x.png", NULL, &s, 1),
            "/nonexistent_dir_coemu/x.png");
  FILE *f = fopen(p, "r");
  CHECK(f == NULL); /* nothing written for the failed calls */
  if (f) fclose(f);
}

/* ce_write_panels_png's title, labels and colour bar (image.h): the panels
 * move down by the strips' heights and are otherwise the same pixels; the
 * strips hold ink; the colour bar runs from the colour map's 0 to its 1. */
static void test_panel_annotations(void) {
  char plain[512], annot[512];
  snprintf(plain, sizeof plain, "%s/panels-plain.png", dir);
  snprintf(annot, sizeof annot, "%s/panels-annotated.png", dir);
  double a[16 * 8];
  for (int i = 0; i < 16 * 8; i++) a[i] = 1 + i;
  ce_map2d maps[2] = {{a, 16, 8, 8, 1}, {a, 16, 8, 8, 1}};
  const char *labels[2] = {"target", "predicted"};
  ce_panel_style st = {.cmap = CE_CMAP_INFERNO, .shared_range = 1, .log_scale = 1};
  CHECK_OK(ce_write_panels_png(plain, maps, 2, &st));
  st.title = "sample 7";
  st.labels = labels;
  st.colorbar = 1;
  CHECK_OK(ce_write_panels_png(annot, maps, 2, &st));
  int w0, h0, w1, h1;
  uint8_t *p0 = read_png(plain, &w0, &h0), *p1 = read_png(annot, &w1, &h1);
  CHECK(p0 && p1);
  if (!p0 || !p1) return;
  /* 16 px panels scaled to 256: text scale 2 (18 px), gap 4: title 26, label 22, bar 54 */
  CHECK_MSG(w0 == 524 && h0 == 136 && w1 == 524 && h1 == 136 + 26 + 22 + 54,
            "sizes %dx%d and %dx%d", w0, h0, w1, h1);
  int same = 1;
  for (int y = 0; y < 128; y++)
    same &= !memcmp(p0 + ((size_t)(4 + y) * w0 + 4) * 3, p1 + ((size_t)(52 + y) * w1 + 4) * 3, 3 * 516);
  CHECK_MSG(same, "the panels are the same pixels, 48 rows lower");
  int ink_title = 0, ink_label = 0;
  for (int y = 4; y < 22; y++)
    for (int x = 0; x < w1; x++) ink_title += p1[((size_t)y * w1 + x) * 3] < 128;
  for (int y = 30; y < 48; y++)
    for (int x = 264; x < w1; x++) ink_label += p1[((size_t)y * w1 + x) * 3] < 128;
  CHECK_MSG(ink_title > 20 && ink_label > 20, "ink in the title (%d) and the second label (%d)",
            ink_title, ink_label);
  uint8_t c0[3], c1[3];
  ce_cmap_rgb(CE_CMAP_INFERNO, 0, c0);
  ce_cmap_rgb(CE_CMAP_INFERNO, 1, c1);
  int by = h1 - 54 + 4 + 6;
  CHECK(!memcmp(p1 + ((size_t)by * w1 + 4) * 3, c0, 3));
  CHECK(!memcmp(p1 + ((size_t)by * w1 + w1 - 5) * 3, c1, 3));
  free(p0);
  free(p1);
}


/* Colour bars per range group, ticks and labels (ce_render_panels): two rows
 * of three columns in groups {0, 0, 1}; each group's bar spans its columns,
 * runs the colour map from 0 to 1 pixel for pixel, carries the group's range
 * (its panels over both rows), tick marks at round values and its label;
 * row titles and a title wider than the panels widen the image; the bars add
 * exactly their band to the height. */
static void test_panel_groups(void) {
  double a[8 * 8], b[8 * 8], c[8 * 8];
  for (int i = 0; i < 64; i++) a[i] = i, b[i] = 100 + i, c[i] = -5 + 0.1 * i;
  ce_map2d maps[6] = {{a, 8, 8, 8, 1}, {b, 8, 8, 8, 1}, {c, 8, 8, 8, 1},
                      {b, 8, 8, 8, 1}, {a, 8, 8, 8, 1}, {c, 8, 8, 8, 1}};
  const int groups[3] = {0, 0, 1};
  const char *gl[2] = {"v_z [km/s]", "log T [K]"}, *rt[2] = {"sample 1", "sample 2"};
  const char *title = "a title much wider than the six panels of this picture, so the picture widens";
  ce_panel_style st = {.cmap = CE_CMAP_VIRIDIS, .columns = 3, .scale = 20, .title = title,
                       .groups = groups, .group_labels = gl, .row_titles = rt};
  ce_image plain, img;
  ce_panel_layout l0, lay;
  CHECK_OK(ce_render_panels("groups", maps, 6, &st, &plain, &l0));
  st.colorbar = 1;
  CHECK_OK(ce_render_panels("groups", maps, 6, &st, &img, &lay));
  if (!plain.rgb || !img.rgb) return;
  int tw, th;
  ce_plot_text_size(title, 2, &tw, &th);
  const int cellw = 8 * 20 + 4;
  CHECK_MSG(img.width == tw + 8 && img.width > 3 * cellw + 4, "width %d: the title's %d + 8",
            img.width, tw);
  CHECK_MSG(l0.nbars == 0 && lay.nbars == 2, "bars: %d without colorbar, %d with", l0.nbars, lay.nbars);
  CHECK_MSG(img.height - plain.height == 4 + ce_colorbar_height(20, 2, 1) + 4,
            "the bars add their band: %d", img.height - plain.height);
  CHECK(lay.bar[0].x == 4 && lay.bar[0].w == 2 * cellw - 4 && lay.bar[1].x == 4 + 2 * cellw &&
        lay.bar[1].w == cellw - 4 && lay.bar[0].group == 0 && lay.bar[1].group == 1);
  CHECK_MSG(lay.bar[0].lo == 0 && lay.bar[0].hi == 163 && fabs(lay.bar[1].lo + 5) < 1e-12 &&
                fabs(lay.bar[1].hi - (-5 + 6.3)) < 1e-12,
            "ranges [%g, %g] and [%g, %g]", lay.bar[0].lo, lay.bar[0].hi, lay.bar[1].lo, lay.bar[1].hi);
  for (int k = 0; k < 2; k++) {
    int ramp = 1, y = lay.bar[k].y + lay.bar[k].h / 2;
    for (int i = 0; i < lay.bar[k].w; i++) {
      uint8_t want[3];
      ce_cmap_rgb(CE_CMAP_VIRIDIS, (double)i / (lay.bar[k].w - 1), want);
      ramp &= !memcmp(img.rgb + ((size_t)y * img.width + lay.bar[k].x + i) * 3, want, 3);
    }
    CHECK_MSG(ramp, "bar %d is the colour map's ramp", k);
    /* a tick under a round value: 100 on bar 0 ([0, 163]), 0 on bar 1 ([-5, 1.3]) */
    double v = k == 0 ? 100 : 0;
    int px = lay.bar[k].x + (int)lrint((v - lay.bar[k].lo) / (lay.bar[k].hi - lay.bar[k].lo) * (lay.bar[k].w - 1));
    const uint8_t *t = img.rgb + ((size_t)(lay.bar[k].y + lay.bar[k].h + 1) * img.width + px) * 3;
    CHECK_MSG(t[0] == 0x20 && t[1] == 0x20 && t[2] == 0x20, "bar %d: tick mark at %g (x %d)", k, v, px);
    int ink = 0; /* tick labels and the bar's label under it */
    for (int yy = lay.bar[k].y + lay.bar[k].h + 3; yy < img.height; yy++)
      for (int x = lay.bar[k].x; x < lay.bar[k].x + lay.bar[k].w; x++)
        ink += img.rgb[((size_t)yy * img.width + x) * 3] == 0x20;
    CHECK_MSG(ink > 100, "bar %d: text under it (%d ink pixels)", k, ink);
  }
  /* row titles: ink in the strip above each row's panels */
  for (int r = 0; r < 2; r++) {
    int y0 = lay.title_h + 4 + r * (9 * 2 + 4 + 8 * 20 + 4), ink = 0;
    for (int y = y0; y < y0 + 18; y++)
      for (int x = 0; x < 200; x++) ink += img.rgb[((size_t)y * img.width + x) * 3] == 0x20;
    CHECK_MSG(ink > 30, "row %d title: %d ink pixels", r, ink);
  }
  /* the panels: the first panel's top-left pixel has the colour of a's
     top row start (y upwards) in group 0's range */
  uint8_t want[3];
  ce_cmap_rgb(CE_CMAP_VIRIDIS, a[7] / 163.0, want);
  CHECK(!memcmp(img.rgb + ((size_t)lay.panel_y * img.width + lay.panel_x) * 3, want, 3));
  /* log-scale ticks at decades: 1e-17 on a bar over [10^-17.5, 10^-14.2] */
  double e[4] = {pow(10, -17.5), pow(10, -16), pow(10, -15), pow(10, -14.2)};
  ce_map2d m1 = {e, 2, 2, 2, 1};
  ce_panel_style sl = {.cmap = CE_CMAP_INFERNO, .log_scale = 1, .shared_range = 1, .scale = 100,
                       .colorbar = 1, .bar_label = "I_nu [W m^-2 Hz^-1 sr^-1]"};
  ce_image li;
  ce_panel_layout ll;
  CHECK_OK(ce_render_panels("log", &m1, 1, &sl, &li, &ll));
  if (li.rgb && ll.nbars == 1) {
    int px = ll.bar[0].x + (int)lrint((-17 - ll.bar[0].lo) / (ll.bar[0].hi - ll.bar[0].lo) * (ll.bar[0].w - 1));
    const uint8_t *t = li.rgb + ((size_t)(ll.bar[0].y + ll.bar[0].h + 1) * li.width + px) * 3;
    CHECK_MSG(fabs(ll.bar[0].lo + 17.5) < 1e-9 && t[0] == 0x20, "log bar: a tick at 1e-17 (x %d)", px);
  }
  free(li.rgb);
  const int bad[3] = {0, 9, 1};
  st.groups = bad;
  ce_image none;
  CHECK_ERR(ce_render_panels("bad", maps, 6, &st, &none, NULL), "bad: column 1: range group 9");
  free(plain.rgb);
  free(img.rgb);
}

int main(void) {
  dir = check_scratch("plot");
  RUN(test_ticks_known);
  RUN(test_ticks_invariants);
  RUN(test_labels);
  RUN(test_text);
  RUN(test_line_mapping);
  RUN(test_histogram_bars);
  RUN(test_png_files);
  RUN(test_edge_cases);
  RUN(test_errors);
  RUN(test_panel_annotations);
  RUN(test_panel_groups);
  check_scratch_remove();
  return check_report();
}
