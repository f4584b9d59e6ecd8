/* plot.c - line charts and histograms drawn into RGB images and written as
 * PNG (see plot.h). Lines and markers are anti-aliased through a coverage
 * mask: each pixel takes the largest coverage any piece of one series gives
 * it, so joints and overlapping segments of a series are not darkened. */
#include "common/plot.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/image.h"

/* The font: 5x9 glyphs for ASCII 32..126, drawn for coemu and placed in the
 * public domain. Nine rows top to bottom, bit 4 = the leftmost column;
 * capitals and digits use rows 0-6, descenders rows 7-8. */
enum { GLYPH_W = 5, GLYPH_H = 9, ADVANCE = 6, MAX_TEXT = 1000 };
static const uint8_t font5x9[95][GLYPH_H] = {
    {0x00,0x00,0x00,0x00,0x00,0x00,0x00,0x00,0x00}, /* ' ' */
    {0x04,0x04,0x04,0x04,0x04,0x00,0x04,0x00,0x00}, /* '!' */
    {0x0A,0x0A,0x0A,0x00,0x00,0x00,0x00,0x00,0x00}, /* '"' */
    {0x0A,0x0A,0x1F,0x0A,0x1F,0x0A,0x0A,0x00,0x00}, /* '#' */
    {0x04,0x0F,0x14,0x0E,0x05,0x1E,0x04,0x00,0x00}, /* '$' */
    {0x18,0x19,0x02,0x04,0x08,0x13,0x03,0x00,0x00}, /* '%' */
    {0x0C,0x12,0x14,0x08,0x15,0x12,0x0D,0x00,0x00}, /* '&' */
    {0x04,0x04,0x08,0x00,0x00,0x00,0x00,0x00,0x00}, /* "'" */
    {0x02,0x04,0x08,0x08,0x08,0x04,0x02,0x00,0x00}, /* '(' */
    {0x08,0x04,0x02,0x02,0x02,0x04,0x08,0x00,0x00}, /* ')' */
    {0x00,0x04,0x15,0x0E,0x15,0x04,0x00,0x00,0x00}, /* '*' */
    {0x00,0x04,0x04,0x1F,0x04,0x04,0x00,0x00,0x00}, /* '+' */
    {0x00,0x00,0x00,0x00,0x00,0x0C,0x0C,0x04,0x08}, /* ',' */
    {0x00,0x00,0x00,0x1F,0x00,0x00,0x00,0x00,0x00}, /* '-' */
    {0x00,0x00,0x00,0x00,0x00,0x0C,0x0C,0x00,0x00}, /* '.' */
    {0x00,0x01,0x02,0x04,0x08,0x10,0x00,0x00,0x00}, /* '/' */
    {0x0E,0x11,0x13,0x15,0x19,0x11,0x0E,0x00,0x00}, /* '0' */
    {0x04,0x0C,0x04,0x04,0x04,0x04,0x0E,0x00,0x00}, /* '1' */
    {0x0E,0x11,0x01,0x02,0x04,0x08,0x1F,0x00,0x00}, /* '2' */
    {0x1F,0x02,0x04,0x02,0x01,0x11,0x0E,0x00,0x00}, /* '3' */
    {0x02,0x06,0x0A,0x12,0x1F,0x02,0x02,0x00,0x00}, /* '4' */
    {0x1F,0x10,0x1E,0x01,0x01,0x11,0x0E,0x00,0x00}, /* '5' */
    {0x06,0x08,0x10,0x1E,0x11,0x11,0x0E,0x00,0x00}, /* '6' */
    {0x1F,0x01,0x02,0x04,0x08,0x08,0x08,0x00,0x00}, /* '7' */
    {0x0E,0x11,0x11,0x0E,0x11,0x11,0x0E,0x00,0x00}, /* '8' */
    {0x0E,0x11,0x11,0x0F,0x01,0x02,0x0C,0x00,0x00}, /* '9' */
    {0x00,0x0C,0x0C,0x00,0x0C,0x0C,0x00,0x00,0x00}, /* ':' */
    {0x00,0x0C,0x0C,0x00,0x0C,0x0C,0x04,0x08,0x00}, /* ';' */
    {0x02,0x04,0x08,0x10,0x08,0x04,0x02,0x00,0x00}, /* '<' */
    {0x00,0x00,0x1F,0x00,0x1F,0x00,0x00,0x00,0x00}, /* '=' */
    {0x08,0x04,0x02,0x01,0x02,0x04,0x08,0x00,0x00}, /* '>' */
    {0x0E,0x11,0x01,0x02,0x04,0x00,0x04,0x00,0x00}, /* '?' */
    {0x0E,0x11,0x01,0x0D,0x15,0x15,0x0E,0x00,0x00}, /* '@' */
    {0x0E,0x11,0x11,0x1F,0x11,0x11,0x11,0x00,0x00}, /* 'A' */
    {0x1E,0x11,0x11,0x1E,0x11,0x11,0x1E,0x00,0x00}, /* 'B' */
    {0x0E,0x11,0x10,0x10,0x10,0x11,0x0E,0x00,0x00}, /* 'C' */
    {0x1C,0x12,0x11,0x11,0x11,0x12,0x1C,0x00,0x00}, /* 'D' */
    {0x1F,0x10,0x10,0x1E,0x10,0x10,0x1F,0x00,0x00}, /* 'E' */
    {0x1F,0x10,0x10,0x1E,0x10,0x10,0x10,0x00,0x00}, /* 'F' */
    {0x0E,0x11,0x10,0x17,0x11,0x11,0x0F,0x00,0x00}, /* 'G' */
    {0x11,0x11,0x11,0x1F,0x11,0x11,0x11,0x00,0x00}, /* 'H' */
    {0x0E,0x04,0x04,0x04,0x04,0x04,0x0E,0x00,0x00}, /* 'I' */
    {0x07,0x02,0x02,0x02,0x02,0x12,0x0C,0x00,0x00}, /* 'J' */
    {0x11,0x12,0x14,0x18,0x14,0x12,0x11,0x00,0x00}, /* 'K' */
    {0x10,0x10,0x10,0x10,0x10,0x10,0x1F,0x00,0x00}, /* 'L' */
    {0x11,0x1B,0x15,0x15,0x11,0x11,0x11,0x00,0x00}, /* 'M' */
    {0x11,0x11,0x19,0x15,0x13,0x11,0x11,0x00,0x00}, /* 'N' */
    {0x0E,0x11,0x11,0x11,0x11,0x11,0x0E,0x00,0x00}, /* 'O' */
    {0x1E,0x11,0x11,0x1E,0x10,0x10,0x10,0x00,0x00}, /* 'P' */
    {0x0E,0x11,0x11,0x11,0x15,0x12,0x0D,0x00,0x00}, /* 'Q' */
    {0x1E,0x11,0x11,0x1E,0x14,0x12,0x11,0x00,0x00}, /* 'R' */
    {0x0F,0x10,0x10,0x0E,0x01,0x01,0x1E,0x00,0x00}, /* 'S' */
    {0x1F,0x04,0x04,0x04,0x04,0x04,0x04,0x00,0x00}, /* 'T' */
    {0x11,0x11,0x11,0x11,0x11,0x11,0x0E,0x00,0x00}, /* 'U' */
    {0x11,0x11,0x11,0x11,0x11,0x0A,0x04,0x00,0x00}, /* 'V' */
    {0x11,0x11,0x11,0x15,0x15,0x15,0x0A,0x00,0x00}, /* 'W' */
    {0x11,0x11,0x0A,0x04,0x0A,0x11,0x11,0x00,0x00}, /* 'X' */
    {0x11,0x11,0x0A,0x04,0x04,0x04,0x04,0x00,0x00}, /* 'Y' */
    {0x1F,0x01,0x02,0x04,0x08,0x10,0x1F,0x00,0x00}, /* 'Z' */
    {0x0E,0x08,0x08,0x08,0x08,0x08,0x0E,0x00,0x00}, /* '[' */
    {0x00,0x10,0x08,0x04,0x02,0x01,0x00,0x00,0x00}, /* '\\' */
    {0x0E,0x02,0x02,0x02,0x02,0x02,0x0E,0x00,0x00}, /* ']' */
    {0x04,0x0A,0x11,0x00,0x00,0x00,0x00,0x00,0x00}, /* '^' */
    {0x00,0x00,0x00,0x00,0x00,0x00,0x00,0x1F,0x00}, /* '_' */
    {0x08,0x04,0x02,0x00,0x00,0x00,0x00,0x00,0x00}, /* '`' */
    {0x00,0x00,0x0E,0x01,0x0F,0x11,0x0F,0x00,0x00}, /* 'a' */
    {0x10,0x10,0x16,0x19,0x11,0x11,0x1E,0x00,0x00}, /* 'b' */
    {0x00,0x00,0x0E,0x10,0x10,0x11,0x0E,0x00,0x00}, /* 'c' */
    {0x01,0x01,0x0D,0x13,0x11,0x11,0x0F,0x00,0x00}, /* 'd' */
    {0x00,0x00,0x0E,0x11,0x1F,0x10,0x0E,0x00,0x00}, /* 'e' */
    {0x06,0x09,0x08,0x1C,0x08,0x08,0x08,0x00,0x00}, /* 'f' */
    {0x00,0x00,0x0F,0x11,0x11,0x13,0x0D,0x01,0x0E}, /* 'g' */
    {0x10,0x10,0x16,0x19,0x11,0x11,0x11,0x00,0x00}, /* 'h' */
    {0x04,0x00,0x0C,0x04,0x04,0x04,0x0E,0x00,0x00}, /* 'i' */
    {0x02,0x00,0x06,0x02,0x02,0x02,0x02,0x12,0x0C}, /* 'j' */
    {0x10,0x10,0x12,0x14,0x18,0x14,0x12,0x00,0x00}, /* 'k' */
    {0x0C,0x04,0x04,0x04,0x04,0x04,0x0E,0x00,0x00}, /* 'l' */
    {0x00,0x00,0x1A,0x15,0x15,0x15,0x15,0x00,0x00}, /* 'm' */
    {0x00,0x00,0x16,0x19,0x11,0x11,0x11,0x00,0x00}, /* 'n' */
    {0x00,0x00,0x0E,0x11,0x11,0x11,0x0E,0x00,0x00}, /* 'o' */
    {0x00,0x00,0x1E,0x11,0x11,0x19,0x16,0x10,0x10}, /* 'p' */
    {0x00,0x00,0x0F,0x11,0x11,0x13,0x0D,0x01,0x01}, /* 'q' */
    {0x00,0x00,0x16,0x19,0x10,0x10,0x10,0x00,0x00}, /* 'r' */
    {0x00,0x00,0x0E,0x10,0x0E,0x01,0x1E,0x00,0x00}, /* 's' */
    {0x08,0x08,0x1C,0x08,0x08,0x09,0x06,0x00,0x00}, /* 't' */
    {0x00,0x00,0x11,0x11,0x11,0x13,0x0D,0x00,0x00}, /* 'u' */
    {0x00,0x00,0x11,0x11,0x11,0x0A,0x04,0x00,0x00}, /* 'v' */
    {0x00,0x00,0x11,0x11,0x15,0x15,0x0A,0x00,0x00}, /* 'w' */
    {0x00,0x00,0x11,0x0A,0x04,0x0A,0x11,0x00,0x00}, /* 'x' */
    {0x00,0x00,0x11,0x11,0x11,0x13,0x0D,0x01,0x0E}, /* 'y' */
    {0x00,0x00,0x1F,0x02,0x04,0x08,0x1F,0x00,0x00}, /* 'z' */
    {0x02,0x04,0x04,0x08,0x04,0x04,0x02,0x00,0x00}, /* '{' */
    {0x04,0x04,0x04,0x04,0x04,0x04,0x04,0x04,0x00}, /* '|' */
    {0x08,0x04,0x04,0x02,0x04,0x04,0x08,0x00,0x00}, /* '}' */
    {0x00,0x00,0x08,0x15,0x02,0x00,0x00,0x00,0x00}, /* '~' */
};

/* Colours (0xRRGGBB): the series palette is matplotlib's "tab10". */
static const uint32_t palette[10] = {0x1f77b4, 0xff7f0e, 0x2ca02c, 0xd62728, 0x9467bd,
                                     0x8c564b, 0xe377c2, 0x7f7f7f, 0xbcbd22, 0x17becf};
enum {
  COL_BG = 0xffffff, COL_GRID = 0xe6e6e6, COL_FRAME = 0x404040, COL_TEXT = 0x202020,
  COL_NOTE = 0x909090, COL_LEGEND_EDGE = 0xc8c8c8, COL_BAR = 0x1f77b4, COL_VLINE = 0xd62728
};

/* ---- pixels and text ---- */

static void fill_rect(ce_image *img, int x0, int y0, int x1, int y1, uint32_t c) {
  if (x0 < 0) x0 = 0;
  if (y0 < 0) y0 = 0;
  if (x1 > img->width) x1 = img->width;
  if (y1 > img->height) y1 = img->height;
  for (int y = y0; y < y1; y++)
    for (int x = x0; x < x1; x++) {
      uint8_t *p = img->rgb + ((size_t)y * img->width + x) * 3;
      p[0] = (uint8_t)(c >> 16), p[1] = (uint8_t)(c >> 8), p[2] = (uint8_t)c;
    }
}

void ce_plot_text_size(const char *s, int scale, int *w, int *h) {
  size_t n = s ? strnlen(s, MAX_TEXT) : 0;
  *w = n ? ((int)n * ADVANCE - 1) * scale : 0;
  *h = GLYPH_H * scale;
}

/* Horizontal text, or vertical (rotated a quarter turn anticlockwise, read
 * bottom to top) with the top-left of its bounding box at (x, y). */
static void draw_text(ce_image *img, int x, int y, const char *s, int scale, uint32_t c,
                      int vertical) {
  int w, h;
  ce_plot_text_size(s, scale, &w, &h);
  for (int i = 0; s && i < MAX_TEXT && s[i]; i++) {
    unsigned ch = (unsigned char)s[i];
    const uint8_t *g = font5x9[(ch >= 32 && ch <= 126 ? ch : '?') - 32];
    for (int r = 0; r < GLYPH_H; r++)
      for (int col = 0; col < GLYPH_W; col++) {
        if (!(g[r] >> (GLYPH_W - 1 - col) & 1)) continue;
        int u = (i * ADVANCE + col) * scale, v = r * scale; /* along the text, down */
        if (vertical)
          fill_rect(img, x + v, y + w - u - scale, x + v + scale, y + w - u, c);
        else
          fill_rect(img, x + u, y + v, x + u + scale, y + v + scale, c);
      }
  }
}

void ce_plot_text(ce_image *img, int x, int y, const char *s, int scale, uint32_t color) {
  draw_text(img, x, y, s, scale < 1 ? 1 : scale, color, 0);
}

/* ---- anti-aliased lines and discs through a coverage mask ---- */

typedef struct {
  float *cov;                   /* width*height coverages in [0,1] */
  int width, height;
  int cx0, cy0, cx1, cy1;       /* drawing clip rectangle */
  int dx0, dy0, dx1, dy1;       /* dirty rectangle, to composite and clear */
} mask;

static void mask_put(mask *m, int x, int y, double c) {
  if (x < m->cx0 || x >= m->cx1 || y < m->cy0 || y >= m->cy1 || c <= 0) return;
  float *p = &m->cov[(size_t)y * m->width + x];
  if (c > 1) c = 1;
  if (c > *p) *p = (float)c;
  if (x < m->dx0) m->dx0 = x;
  if (x >= m->dx1) m->dx1 = x + 1;
  if (y < m->dy0) m->dy0 = y;
  if (y >= m->dy1) m->dy1 = y + 1;
}

/* Blend colour c over the image by the mask's coverage, then clear it. */
static void mask_composite(mask *m, ce_image *img, uint32_t c) {
  double rgb[3] = {(c >> 16) & 255, (c >> 8) & 255, c & 255};
  for (int y = m->dy0; y < m->dy1; y++)
    for (int x = m->dx0; x < m->dx1; x++) {
      float *a = &m->cov[(size_t)y * m->width + x];
      if (*a <= 0) continue;
      uint8_t *p = img->rgb + ((size_t)y * img->width + x) * 3;
      for (int k = 0; k < 3; k++) p[k] = (uint8_t)lrint(p[k] + *a * (rgb[k] - p[k]));
      *a = 0;
    }
  m->dx0 = m->dy0 = INT32_MAX;
  m->dx1 = m->dy1 = 0;
}

static void mask_disc(mask *m, double cx, double cy, double r) {
  if (!(fabs(cx) < 1e7 && fabs(cy) < 1e7)) return;
  for (int y = (int)floor(cy - r - 1); y <= (int)floor(cy + r + 1); y++)
    for (int x = (int)floor(cx - r - 1); x <= (int)floor(cx + r + 1); x++)
      mask_put(m, x, y, r + 0.5 - hypot(x + 0.5 - cx, y + 0.5 - cy));
}

/* Clip the segment a-b to the rectangle [x0,x1] x [y0,y1] (Liang-Barsky);
 * returns 0 if nothing is left, else the parameters t0 <= t1 of the part. */
static int clip_segment(double ax, double ay, double bx, double by, double x0, double y0,
                        double x1, double y1, double *t0, double *t1) {
  double p[4] = {-(bx - ax), bx - ax, -(by - ay), by - ay};
  double q[4] = {ax - x0, x1 - ax, ay - y0, y1 - ay};
  *t0 = 0, *t1 = 1;
  for (int k = 0; k < 4; k++) {
    if (p[k] == 0) {
      if (q[k] < 0) return 0;
      continue;
    }
    double t = q[k] / p[k];
    if (p[k] < 0 && t > *t0) *t0 = t;
    if (p[k] > 0 && t < *t1) *t1 = t;
  }
  return *t0 <= *t1;
}

/* A segment of half-width hw. Dashes (dash_on > 0): ink where the arc
 * length s0 + distance from a, modulo dash_on + dash_off, is < dash_on. */
static void mask_segment(mask *m, double ax, double ay, double bx, double by, double hw,
                         double dash_on, double dash_off, double s0) {
  double r = hw + 1, t0, t1;
  if (!clip_segment(ax, ay, bx, by, m->cx0 - r, m->cy0 - r, m->cx1 + r, m->cy1 + r, &t0, &t1))
    return;
  double dx = bx - ax, dy = by - ay, len = hypot(dx, dy);
  s0 += t0 * len;
  ax += t0 * dx, ay += t0 * dy;
  dx *= t1 - t0, dy *= t1 - t0, len *= t1 - t0;
  /* walk the major axis; on each step cover a band of the minor axis */
  int steep = fabs(dy) > fabs(dx);
  double aM = steep ? ay : ax, aN = steep ? ax : ay, dM = steep ? dy : dx, dN = steep ? dx : dy;
  double band = fabs(dM) > 0 ? r * len / fabs(dM) : r;
  int i0 = (int)floor(fmin(aM, aM + dM) - r), i1 = (int)floor(fmax(aM, aM + dM) + r);
  for (int i = i0; i <= i1; i++) {
    double cM = i + 0.5, t = fabs(dM) > 0 ? (cM - aM) / dM : 0;
    t = t < 0 ? 0 : t > 1 ? 1 : t;
    double cN = aN + t * dN;
    for (int j = (int)floor(cN - band); j <= (int)floor(cN + band); j++) {
      double px = steep ? j + 0.5 : cM, py = steep ? cM : j + 0.5;
      double u = len > 0 ? ((px - ax) * dx + (py - ay) * dy) / (len * len) : 0;
      u = u < 0 ? 0 : u > 1 ? 1 : u;
      if (dash_on > 0 && fmod(s0 + u * len, dash_on + dash_off) >= dash_on) continue;
      double cov = hw + 0.5 - hypot(px - (ax + u * dx), py - (ay + u * dy));
      if (steep)
        mask_put(m, j, i, cov);
      else
        mask_put(m, i, j, cov);
    }
  }
}

/* ---- ticks and their labels ---- */

/* Linear ticks i * step in [lo, hi], step = m * 10^k with m in {1, 2, 5}
 * the smallest giving at most max_ticks ticks (i * m / 10^-k for k < 0
 * keeps 0.6 from becoming 0.6000000000000001). */
static int linear_ticks(double lo, double hi, int max_ticks, double *ticks, int cap,
                        double *step_out) {
  double step0 = (hi - lo) / max_ticks;
  if (!(step0 > 0) || !isfinite(step0)) return 0;
  int k = (int)floor(log10(step0));
  static const int mant[4] = {1, 2, 5, 10};
  double p = pow(10, abs(k)), step = 0;
  int m = 10;
  for (int j = 0; j < 4; j++) {
    m = mant[j];
    step = k < 0 ? m / p : m * p;
    if (step >= step0 * (1 - 1e-9)) break;
  }
  if (m == 10) m = 1, k++, p = pow(10, abs(k)), step = k < 0 ? m / p : m * p;
  if (!(step > 0) || !isfinite(step)) return 0;
  double first = ceil(lo / step - 1e-9), last = floor(hi / step + 1e-9);
  while (last - first < 1 && m > 0) { /* fewer than two ticks: the next finer step */
    m = m == 1 ? 5 : m == 5 ? 2 : 1;
    if (m == 5) k--, p = pow(10, abs(k));
    step = k < 0 ? m / p : m * p;
    first = ceil(lo / step - 1e-9), last = floor(hi / step + 1e-9);
  }
  if (!(last - first < cap)) return 0;
  int n = 0;
  for (double i = first; i <= last; i++)
    ticks[n++] = k < 0 ? i * m / p : i * step;
  *step_out = step;
  return n;
}

int ce_plot_ticks(double lo, double hi, int log, int max_ticks, double *ticks, int cap) {
  double step;
  if (max_ticks < 2) max_ticks = 2;
  if (!(lo < hi) || !isfinite(lo) || !isfinite(hi) || (log && !(lo > 0)) || cap < 1) return 0;
  if (!log) return linear_ticks(lo, hi, max_ticks, ticks, cap, &step);
  double a = log10(lo), b = log10(hi), d0 = ceil(a - 1e-9), d1 = floor(b + 1e-9);
  if (d1 - d0 + 1 >= 2) { /* decades; every k-th (k = 1, 2, 5, 10, ...) when there are many */
    int n = 0;
    if (d1 - d0 + 1 <= max_ticks)
      for (double d = d0; d <= d1 && n < cap; d++) ticks[n++] = d;
    else
      n = linear_ticks(a, b, max_ticks, ticks, cap, &step);
    for (int i = 0; i < n; i++) ticks[i] = pow(10, ticks[i]);
    return n;
  }
  int n = 0; /* less than two decades: 1, 2, 5 times powers of ten */
  for (double d = floor(a); d <= ceil(b) && n < cap; d++)
    for (int j = 0; j < 3 && n < cap; j++) {
      double v = (j == 0 ? 1 : j == 1 ? 2 : 5) * pow(10, d);
      if (v >= lo * (1 - 1e-12) && v <= hi * (1 + 1e-12)) ticks[n++] = v;
    }
  if (n >= 2 && n <= max_ticks) return n;
  return linear_ticks(lo, hi, max_ticks, ticks, cap, &step);
}

/* v with the digits a tick spacing of `step` needs, fixed-point or as
 * mantissa "e" exponent (no "+", no leading zeros: 2.5e4, 1e-3). */
static void format_number(double v, double step, int exp_form, char *buf, size_t len) {
  if (!isfinite(v)) {
    snprintf(buf, len, "%s", v != v ? "nan" : v > 0 ? "inf" : "-inf");
    return;
  }
  if (!(fabs(step) > 0) || !isfinite(step)) { /* no spacing to go by */
    snprintf(buf, len, "%.6g", v);
    return;
  }
  if (v == 0 || fabs(v) < fabs(step) * 1e-9) {
    snprintf(buf, len, "0");
    return;
  }
  int ks = (int)floor(log10(fabs(step)) + 1e-9);
  if (!exp_form) {
    snprintf(buf, len, "%.*f", ks < 0 ? -ks : 0, v);
    return;
  }
  int e = (int)floor(log10(fabs(v)) + 1e-9), dec = e - ks > 0 ? e - ks : 0;
  char tmp[64], *ep;
  snprintf(tmp, sizeof tmp, "%.*e", dec > 15 ? 15 : dec, v);
  if ((ep = strchr(tmp, 'e')) != NULL) { /* not inf or nan */
    char *end = ep, exp[16]; /* strip zeros (and a bare point) off the mantissa */
    snprintf(exp, sizeof exp, "e%d", atoi(ep + 1));
    if (strchr(tmp, '.')) {
      while (end[-1] == '0') end--;
      if (end[-1] == '.') end--;
    }
    memcpy(end, exp, strlen(exp) + 1);
  }
  size_t n = strlen(tmp) < len ? strlen(tmp) : len - 1;
  memcpy(buf, tmp, n), buf[n] = 0;
}

static int needs_exp(double v) { return v != 0 && !(fabs(v) >= 1e-2 && fabs(v) < 1e4); }

void ce_plot_format(double v, double step, char *buf, size_t len) {
  format_number(v, step, needs_exp(v), buf, len);
}

/* Whether the tick is 1, 2 or 5 times a power of ten (decade or 1-2-5 ticks). */
static int is_125(double v) {
  double m = v / pow(10, floor(log10(v) + 1e-9));
  return fabs(m - 1) < 1e-6 || fabs(m - 2) < 1e-6 || fabs(m - 5) < 1e-6;
}

void ce_plot_tick_labels(const double *ticks, int n, int log, char (*labels)[CE_PLOT_LABEL]) {
  int exp_form = 0, per_value = log; /* log axes: each value its own form ... */
  for (int i = 0; i < n; i++) {
    exp_form |= needs_exp(ticks[i]);
    per_value &= ticks[i] > 0 && is_125(ticks[i]); /* ... unless the ticks are linear */
  }
  for (int i = 0; i < n; i++) {
    if (per_value) /* 1e-3, 0.01, 0.1, 1, 10, 1e4 */
      ce_plot_format(ticks[i], pow(10, floor(log10(ticks[i]) + 1e-9)), labels[i], CE_PLOT_LABEL);
    else
      format_number(ticks[i], n > 1 ? ticks[1] - ticks[0] : ticks[0], exp_form, labels[i],
                    CE_PLOT_LABEL);
  }
}

/* ---- chart frame: layout, grid, axes, labels ---- */

enum { MAX_TICKS = 40, MAX_SERIES = 16, MAX_VLINES = 16, MAX_BINS = 10000 };

typedef struct {
  int n;
  double t[MAX_TICKS];
  char lab[MAX_TICKS][CE_PLOT_LABEL];
} axis_ticks;

typedef struct {
  ce_image img;
  ce_plot_frame f;
  mask m;
  int ts, pad; /* text scale; spacing unit */
} chart;

/* Values beyond 1e300 count as infinite, so spans and padding stay finite. */
static int usable(double v, int log) {
  return isfinite(v) && fabs(v) <= 1e300 && (!log || v >= 1e-300);
}

static double axis_unit(int log, double v) { return log ? (v > 0 ? log10(v) : NAN) : v; }
static double axis_data(int log, double u) { return log ? pow(10, u) : u; }

double ce_plot_px(const ce_plot_frame *f, double x) {
  double a = axis_unit(f->log_x, f->x0), b = axis_unit(f->log_x, f->x1);
  return f->left + (axis_unit(f->log_x, x) - a) / (b - a) * (f->right - f->left);
}

double ce_plot_py(const ce_plot_frame *f, double y) {
  double a = axis_unit(f->log_y, f->y0), b = axis_unit(f->log_y, f->y1);
  return f->bottom - (axis_unit(f->log_y, y) - a) / (b - a) * (f->bottom - f->top);
}

/* The axis range for data in [lo, hi] (lo > hi: no data, a unit range):
 * padded by `pad` of the span; all-equal data get a range around them. */
static void axis_range(double lo, double hi, int log, double pad, double *r0, double *r1) {
  if (!(lo <= hi)) {
    *r0 = log ? 1 : 0, *r1 = log ? 10 : 1;
    return;
  }
  double a = axis_unit(log, lo), b = axis_unit(log, hi), d;
  if (b - a <= 1e-12 * fmax(fabs(a), fabs(b)))
    d = log ? 0.5 : a != 0 ? fabs(a) * 0.1 : 1;
  else
    d = (b - a) * pad;
  if (log) /* stay within the doubles' normal range */
    a = fmax(a - d, -300), b = fmin(b + d, 300), d = 0;
  *r0 = axis_data(log, a - d), *r1 = axis_data(log, b + d);
}

/* Ticks for [lo, hi] in `length` pixels, as many as fit with labels of
 * `label_len` pixels (width or height) plus `gap` between them. */
static void fit_ticks(axis_ticks *a, double lo, double hi, int log, int length, int ts,
                      int vertical, int max_ticks) {
  int th = GLYPH_H * ts, gap = vertical ? th : 2 * ADVANCE * ts;
  double ua = axis_unit(log, lo), ub = axis_unit(log, hi);
  for (int mt = max_ticks; mt >= 2; mt--) {
    a->n = ce_plot_ticks(lo, hi, log, mt, a->t, MAX_TICKS);
    ce_plot_tick_labels(a->t, a->n, log, a->lab);
    int fits = 1;
    for (int i = 1; i < a->n && fits; i++) {
      int w0, w1, h;
      ce_plot_text_size(a->lab[i - 1], ts, &w0, &h);
      ce_plot_text_size(a->lab[i], ts, &w1, &h);
      double need = vertical ? th + gap : (w0 + w1) / 2.0 + gap;
      double du = axis_unit(log, a->t[i]) - axis_unit(log, a->t[i - 1]);
      fits = du / (ub - ua) * length >= need;
    }
    if (fits) return;
  }
}

static int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

/* Log axes with decade ticks get minor ticks at 2..9 times each decade. */
static void minor_ticks(chart *ch, const axis_ticks *a, int log, int vertical) {
  if (!log || a->n < 2 || fabs(a->t[1] / a->t[0] - 10) > 1e-6) return;
  ce_plot_frame *f = &ch->f;
  int len = ch->ts + 1;
  double lo = vertical ? f->y0 : f->x0, hi = vertical ? f->y1 : f->x1;
  for (double d = floor(log10(lo)); d <= ceil(log10(hi)); d++)
    for (int m = 2; m <= 9; m++) {
      double v = m * pow(10, d);
      if (v < lo || v > hi) continue;
      if (vertical) {
        int y = (int)floor(ce_plot_py(f, v));
        fill_rect(&ch->img, f->left - 1 - len, y, f->left - 1, y + 1, COL_FRAME);
      } else {
        int x = (int)floor(ce_plot_px(f, v));
        fill_rect(&ch->img, x, f->bottom + 1, x + 1, f->bottom + 1 + len, COL_FRAME);
      }
    }
}

/* Lay out and draw everything but the data and the legend. x/y data ranges
 * are lo > hi when there are no data; y_counts: the y axis is 0..yhi with
 * integer ticks. */
static int chart_begin(chart *ch, const char *what, const ce_chart *cin, double xlo, double xhi,
                       double ylo, double yhi, double xpad, int y_counts) {
  ce_chart c = cin ? *cin : (ce_chart){0};
  int W = c.width ? c.width : 800, H = c.height ? c.height : 500;
  if (W < 160 || W > 8192 || H < 160 || H > 8192)
    CE_FAIL("%s: chart size %dx%d, expected 160..8192 pixels each way", what, W, H);
  if (c.text_scale < 0 || c.text_scale > 8)
    CE_FAIL("%s: text scale %d, expected 1..8 (0 = automatic)", what, c.text_scale);
  int ts = c.text_scale ? c.text_scale : clampi((int)lrint(fmin(W, H * 1.6) / 400), 1, 8);
  int th = GLYPH_H * ts, pad = 5 * ts, tick = 3 * ts, tw, tmp;
  ce_plot_frame *f = &ch->f;
  *f = (ce_plot_frame){.log_x = c.log_x != 0, .log_y = c.log_y != 0};
  axis_range(xlo, xhi, f->log_x, xpad, &f->x0, &f->x1);
  axis_range(ylo, yhi, f->log_y, 0.05, &f->y0, &f->y1);
  if (y_counts) f->y0 = 0, f->y1 = yhi; /* bars stand on zero */
  if (c.xmin < c.xmax) f->x0 = c.xmin, f->x1 = c.xmax;
  if (c.ymin < c.ymax) f->y0 = c.ymin, f->y1 = c.ymax;
  if (f->log_x && !(f->x0 > 0))
    CE_FAIL("%s: x range %g..%g on a log axis, expected xmin > 0", what, c.xmin, c.xmax);
  if (f->log_y && !(f->y0 > 0))
    CE_FAIL("%s: y range %g..%g on a log axis, expected ymin > 0", what, c.ymin, c.ymax);
  int tts = ts + 1; /* the title a size larger if it fits */
  ce_plot_text_size(c.title, tts, &tw, &tmp);
  if (tw > W - 2 * pad) tts = ts;
  f->top = pad + (c.title && *c.title ? GLYPH_H * tts + pad : th / 2);
  f->bottom = H - (tick + pad / 2 + th + (c.xlabel && *c.xlabel ? pad + th : 0) + pad);
  int min_area = 2 * th > 32 ? 2 * th : 32; /* the plot area's least width and height */
  if (f->bottom - f->top < min_area)
    CE_FAIL("%s: chart %dx%d too small for text scale %d", what, W, H, ts);
  axis_ticks ax, ay;
  int ymax_ticks = clampi((f->bottom - f->top) / (3 * th), 2, 10);
  if (y_counts) ymax_ticks = clampi((int)floor(f->y1) + 1, 2, ymax_ticks);
  fit_ticks(&ay, f->y0, f->y1, f->log_y, f->bottom - f->top, ts, 1, ymax_ticks);
  int lw = 0;
  for (int i = 0; i < ay.n; i++) {
    ce_plot_text_size(ay.lab[i], ts, &tw, &tmp);
    if (tw > lw) lw = tw;
  }
  f->left = pad + (c.ylabel && *c.ylabel ? th + pad : 0) + lw + tick + pad / 2 + 1;
  f->right = W - 4 * pad;
  if (f->right - f->left < min_area)
    CE_FAIL("%s: chart %dx%d too small for text scale %d", what, W, H, ts);
  fit_ticks(&ax, f->x0, f->x1, f->log_x, f->right - f->left, ts, 0,
            clampi((f->right - f->left) / (6 * ADVANCE * ts), 2, 12));

  ch->ts = ts, ch->pad = pad;
  ch->img = (ce_image){ce_malloc_array((size_t)W * H, 3, what), W, H};
  ch->m = (mask){ce_calloc_array((size_t)W * H, sizeof(float), what), W, H, f->left, f->top,
                 f->right, f->bottom, INT32_MAX, INT32_MAX, 0, 0};
  if (!ch->img.rgb || !ch->m.cov) {
    free(ch->img.rgb), free(ch->m.cov);
    return -1;
  }
  ce_image *img = &ch->img;
  fill_rect(img, 0, 0, W, H, COL_BG);
  for (int i = 0; i < ay.n; i++) {
    int y = clampi((int)floor(ce_plot_py(f, ay.t[i])), f->top, f->bottom - 1);
    fill_rect(img, f->left, y, f->right, y + 1, COL_GRID);
    fill_rect(img, f->left - 1 - tick, y, f->left - 1, y + 1, COL_FRAME);
    ce_plot_text_size(ay.lab[i], ts, &tw, &tmp);
    draw_text(img, f->left - 1 - tick - pad / 2 - tw, y - 7 * ts / 2, ay.lab[i], ts, COL_TEXT, 0);
  }
  for (int i = 0; i < ax.n; i++) {
    int x = clampi((int)floor(ce_plot_px(f, ax.t[i])), f->left, f->right - 1);
    fill_rect(img, x, f->top, x + 1, f->bottom, COL_GRID);
    fill_rect(img, x, f->bottom + 1, x + 1, f->bottom + 1 + tick, COL_FRAME);
    ce_plot_text_size(ax.lab[i], ts, &tw, &tmp);
    draw_text(img, x - tw / 2, f->bottom + 1 + tick + pad / 2, ax.lab[i], ts, COL_TEXT, 0);
  }
  minor_ticks(ch, &ay, f->log_y, 1);
  minor_ticks(ch, &ax, f->log_x, 0);
  fill_rect(img, f->left - 1, f->top - 1, f->right + 1, f->top, COL_FRAME);
  fill_rect(img, f->left - 1, f->bottom, f->right + 1, f->bottom + 1, COL_FRAME);
  fill_rect(img, f->left - 1, f->top - 1, f->left, f->bottom + 1, COL_FRAME);
  fill_rect(img, f->right, f->top - 1, f->right + 1, f->bottom + 1, COL_FRAME);
  int mid = (f->left + f->right) / 2;
  if (c.xlabel && *c.xlabel) {
    ce_plot_text_size(c.xlabel, ts, &tw, &tmp);
    draw_text(img, mid - tw / 2, f->bottom + 1 + tick + pad / 2 + th + pad, c.xlabel, ts,
              COL_TEXT, 0);
  }
  if (c.ylabel && *c.ylabel) {
    ce_plot_text_size(c.ylabel, ts, &tw, &tmp);
    draw_text(img, pad, (f->top + f->bottom) / 2 - tw / 2, c.ylabel, ts, COL_TEXT, 1);
  }
  if (c.title && *c.title) {
    ce_plot_text_size(c.title, tts, &tw, &tmp);
    draw_text(img, tw <= f->right - f->left ? mid - tw / 2 : (W - tw) / 2, pad, c.title, tts,
              COL_TEXT, 0);
  }
  return 0;
}

static void chart_note_no_data(chart *ch) {
  int w, h;
  ce_plot_text_size("no data", ch->ts, &w, &h);
  draw_text(&ch->img, (ch->f.left + ch->f.right - w) / 2, (ch->f.top + ch->f.bottom - h) / 2,
            "no data", ch->ts, COL_NOTE, 0);
}

/* Hand the image over (or free it on failure) and release the mask. */
static int chart_end(chart *ch, int rc, ce_image *img, ce_plot_frame *frame) {
  free(ch->m.cov);
  if (rc < 0) {
    free(ch->img.rgb);
    return -1;
  }
  *img = ch->img;
  if (frame) *frame = ch->f;
  return 0;
}

/* ---- legend ---- */

typedef struct {
  const char *label;
  uint32_t color;
  int style;
} legend_entry;

static double line_half_width(int ts) { return 0.6 * ts; }
static int line_style(int style) { /* 0 = a line; dashed implies a line */
  return style == 0 ? CE_PLOT_LINE : style & CE_PLOT_DASHED ? style | CE_PLOT_LINE : style;
}
static double marker_radius(int ts) { return 1.8 * ts; }

/* Pixels in the box that data were drawn on (neither background nor grid). */
static long ink_in_box(const ce_image *img, int x0, int y0, int w, int h) {
  long n = 0;
  for (int y = y0; y < y0 + h; y++)
    for (int x = x0; x < x0 + w; x++) {
      const uint8_t *p = img->rgb + ((size_t)y * img->width + x) * 3;
      uint32_t c = (uint32_t)p[0] << 16 | (uint32_t)p[1] << 8 | p[2];
      n += c != COL_BG && c != COL_GRID;
    }
  return n;
}

/* The legend goes into the corner of the plot area where it hides the
 * fewest drawn pixels (top right, top left, bottom right, bottom left). */
static void draw_legend(chart *ch, const legend_entry *e, int n) {
  int ts = ch->ts, pad = ch->pad, th = GLYPH_H * ts, swatch = 12 * ts, lw = 0, w, h;
  if (n == 0) return;
  for (int i = 0; i < n; i++) {
    ce_plot_text_size(e[i].label, ts, &w, &h);
    if (w > lw) lw = w;
  }
  ce_plot_frame *f = &ch->f;
  int bw = 3 * pad + swatch + lw, bh = 2 * pad + n * th + (n - 1) * 3 * ts;
  bw = bw < f->right - f->left - 2 * pad ? bw : f->right - f->left - 2 * pad;
  bh = bh < f->bottom - f->top - 2 * pad ? bh : f->bottom - f->top - 2 * pad;
  int xs[2] = {f->right - pad - bw, f->left + pad}, ys[2] = {f->top + pad, f->bottom - pad - bh};
  int bx = xs[0], by = ys[0];
  long best = -1;
  for (int k = 0; k < 4; k++) {
    long ink = ink_in_box(&ch->img, xs[k & 1], ys[k >> 1], bw, bh);
    if (best < 0 || ink < best) best = ink, bx = xs[k & 1], by = ys[k >> 1];
  }
  fill_rect(&ch->img, bx, by, bx + bw, by + bh, COL_LEGEND_EDGE);
  fill_rect(&ch->img, bx + 1, by + 1, bx + bw - 1, by + bh - 1, COL_BG);
  mask *m = &ch->m;
  m->cx0 = bx + 1, m->cy0 = by + 1, m->cx1 = bx + bw - 1, m->cy1 = by + bh - 1;
  for (int i = 0; i < n; i++) {
    int y = by + pad + i * (th + 3 * ts);
    double yc = y + 3.5 * ts, x0 = bx + pad, x1 = x0 + swatch;
    int style = line_style(e[i].style);
    if (style & CE_PLOT_LINE)
      mask_segment(m, x0, yc, x1, yc, line_half_width(ts), style & CE_PLOT_DASHED ? 4 * ts : 0,
                   2 * ts, 0);
    if (style & CE_PLOT_MARKERS) mask_disc(m, (x0 + x1) / 2, yc, marker_radius(ts));
    mask_composite(m, &ch->img, e[i].color);
    draw_text(&ch->img, bx + 2 * pad + swatch, y, e[i].label, ts, COL_TEXT, 0);
  }
}

/* ---- line charts ---- */

int ce_plot_lines(const char *what, const ce_chart *c, const ce_series *s, int nseries,
                  ce_image *img, ce_plot_frame *frame) {
  if (!what) what = "plot";
  img->rgb = NULL;
  if (nseries < 0 || nseries > MAX_SERIES || (nseries > 0 && !s))
    CE_FAIL("%s: %d series, expected 0..%d", what, nseries, MAX_SERIES);
  int lx = c && c->log_x, ly = c && c->log_y;
  double xlo = INFINITY, xhi = -INFINITY, ylo = INFINITY, yhi = -INFINITY;
  long valid = 0;
  for (int k = 0; k < nseries; k++) {
    if (s[k].n < 0 || (s[k].n > 0 && !s[k].y))
      CE_FAIL("%s: series %d: %d points and %s y values, expected n >= 0 and y given", what, k,
              s[k].n, s[k].y ? "some" : "no");
    for (int i = 0; i < s[k].n; i++) {
      double x = s[k].x ? s[k].x[i] : i, y = s[k].y[i];
      if (!usable(x, lx) || !usable(y, ly)) continue;
      valid++;
      xlo = fmin(xlo, x), xhi = fmax(xhi, x), ylo = fmin(ylo, y), yhi = fmax(yhi, y);
    }
  }
  chart ch;
  CE_TRY(chart_begin(&ch, what, c, xlo, xhi, ylo, yhi, 0.05, 0));
  ce_plot_frame *f = &ch.f;
  int ts = ch.ts, nleg = 0;
  legend_entry leg[MAX_SERIES];
  for (int k = 0; k < nseries; k++) {
    uint32_t color = s[k].color ? s[k].color & 0xffffff : palette[k % 10];
    int style = line_style(s[k].style);
    double hw = line_half_width(ts), dash_on = style & CE_PLOT_DASHED ? 7 * ts : 0;
    double px = 0, py = 0, arc = 0;
    int run = 0; /* valid points in the current unbroken run */
    for (int i = 0; i <= s[k].n; i++) {
      double x = i < s[k].n ? (s[k].x ? s[k].x[i] : i) : NAN, y = i < s[k].n ? s[k].y[i] : NAN;
      if (!usable(x, lx) || !usable(y, ly)) { /* a break: a lone point becomes a dot */
        if (run == 1 && (style & CE_PLOT_LINE) && !(style & CE_PLOT_MARKERS))
          mask_disc(&ch.m, px, py, marker_radius(ts));
        run = 0;
        continue;
      }
      double qx = ce_plot_px(f, x), qy = ce_plot_py(f, y);
      qx = fmax(-1e12, fmin(1e12, qx)), qy = fmax(-1e12, fmin(1e12, qy));
      if (run > 0 && (style & CE_PLOT_LINE)) {
        mask_segment(&ch.m, px, py, qx, qy, hw, dash_on, 4 * ts, arc);
        arc += hypot(qx - px, qy - py);
      } else if (run == 0)
        arc = 0;
      if (style & CE_PLOT_MARKERS) mask_disc(&ch.m, qx, qy, marker_radius(ts));
      px = qx, py = qy, run++;
    }
    mask_composite(&ch.m, &ch.img, color);
    if (s[k].label && *s[k].label) leg[nleg++] = (legend_entry){s[k].label, color, style};
  }
  if (valid == 0) chart_note_no_data(&ch);
  draw_legend(&ch, leg, nleg);
  return chart_end(&ch, 0, img, frame);
}

/* A chart's PNG with its words as text chunks (image.h): Title, and the
 * axes' labels as Description. */
static int chart_png(const char *path, const ce_chart *c, const ce_image *img) {
  char desc[1024];
  snprintf(desc, sizeof desc, "x: %s\ny: %s\n", c && c->xlabel ? c->xlabel : "",
           c && c->ylabel ? c->ylabel : "");
  const char *keys[3] = {"Title", "Description", "Software"},
             *vals[3] = {c ? c->title : NULL, desc, "coemu " COEMU_VERSION};
  return ce_write_rgb_png_text(path, img->rgb, img->width, img->height, keys, vals, 3);
}

int ce_plot_lines_png(const char *path, const ce_chart *c, const ce_series *s, int nseries) {
  ce_image img;
  CE_TRY(ce_plot_lines(path, c, s, nseries, &img, NULL));
  int rc = chart_png(path, c, &img);
  free(img.rgb);
  return rc;
}

/* ---- histograms ---- */

int ce_plot_histogram(const char *what, const ce_chart *c, const double *values, int n,
                      int bins, const double *vlines, const char *const *vline_labels,
                      int nvlines, ce_image *img, ce_plot_frame *frame, int *counts) {
  static const uint32_t vline_colors[4] = {COL_VLINE, 0x2ca02c, 0x9467bd, 0xff7f0e};
  if (!what) what = "histogram";
  img->rgb = NULL;
  if (n < 0 || (n > 0 && !values)) CE_FAIL("%s: %d values, expected n >= 0 and values", what, n);
  if (bins < 0 || bins > MAX_BINS) CE_FAIL("%s: %d bins, expected 1..%d (0 = automatic)", what,
                                           bins, MAX_BINS);
  if (bins == 0 && counts) CE_FAIL("%s: bin counts asked for with automatic bins", what);
  if (nvlines < 0 || nvlines > MAX_VLINES || (nvlines > 0 && !vlines))
    CE_FAIL("%s: %d vertical lines, expected 0..%d", what, nvlines, MAX_VLINES);
  ce_chart cc = c ? *c : (ce_chart){0};
  int lx = cc.log_x != 0;
  cc.log_y = 0;
  if (!cc.ylabel) cc.ylabel = "count";
  double lo = INFINITY, hi = -INFINITY;
  long valid = 0;
  for (int i = 0; i < n; i++)
    if (usable(values[i], lx)) lo = fmin(lo, values[i]), hi = fmax(hi, values[i]), valid++;
  if (cc.xmin < cc.xmax) lo = cc.xmin, hi = cc.xmax;
  if (lx && lo <= hi && !(lo > 0))
    CE_FAIL("%s: x range %g..%g with log bins, expected xmin > 0", what, lo, hi);
  if (bins == 0) bins = clampi((int)ceil(2 * cbrt((double)valid)), 5, 100); /* Rice's rule */
  double e0 = 0, e1 = 1; /* bin range, in axis units */
  if (lo <= hi) {
    if (cc.xmin < cc.xmax)
      e0 = axis_unit(lx, lo), e1 = axis_unit(lx, hi);
    else {
      axis_range(lo, hi, lx, 0, &e0, &e1);
      e0 = axis_unit(lx, e0), e1 = axis_unit(lx, e1);
    }
  }
  int *cnt = ce_calloc_array((size_t)bins, sizeof(int), what), maxc = 0;
  if (!cnt) return -1;
  for (int i = 0; i < n && lo <= hi; i++) {
    double u = usable(values[i], lx) ? axis_unit(lx, values[i]) : NAN;
    if (!(u >= e0 && u <= e1)) continue;
    int k = (int)floor((u - e0) / (e1 - e0) * bins);
    k = k < bins ? k : bins - 1;
    if (++cnt[k] > maxc) maxc = cnt[k];
  }
  chart ch;
  if (chart_begin(&ch, what, &cc, axis_data(lx, e0), axis_data(lx, e1), 0,
                  maxc > 0 ? maxc * 1.08 : 1, 0.03, 1) < 0) {
    free(cnt);
    return -1;
  }
  ce_plot_frame *f = &ch.f;
  for (int k = 0; k < bins; k++) {
    if (cnt[k] == 0) continue;
    int x0 = (int)lrint(ce_plot_px(f, axis_data(lx, e0 + k * (e1 - e0) / bins)));
    int x1 = (int)lrint(ce_plot_px(f, axis_data(lx, e0 + (k + 1) * (e1 - e0) / bins)));
    if (x1 - x0 >= 4) x1--; /* a white gap between wide bars */
    if (x1 <= x0) x1 = x0 + 1;
    int y0 = clampi((int)lrint(ce_plot_py(f, cnt[k])), f->top, f->bottom);
    fill_rect(&ch.img, clampi(x0, f->left, f->right), y0, clampi(x1, f->left, f->right),
              f->bottom, COL_BAR);
  }
  int nleg = 0, ts = ch.ts;
  legend_entry leg[MAX_VLINES];
  for (int k = 0; k < nvlines; k++) {
    if (!usable(vlines[k], lx)) continue;
    double x = fmax(-1e12, fmin(1e12, ce_plot_px(f, vlines[k])));
    uint32_t color = vline_colors[k % 4];
    mask_segment(&ch.m, x, f->top, x, f->bottom, line_half_width(ts), 7 * ts, 4 * ts, 0);
    mask_composite(&ch.m, &ch.img, color);
    if (vline_labels && vline_labels[k] && *vline_labels[k])
      leg[nleg++] = (legend_entry){vline_labels[k], color, CE_PLOT_LINE | CE_PLOT_DASHED};
  }
  if (valid == 0) chart_note_no_data(&ch);
  draw_legend(&ch, leg, nleg);
  if (counts) memcpy(counts, cnt, (size_t)bins * sizeof(int));
  free(cnt);
  return chart_end(&ch, 0, img, frame);
}

int ce_plot_histogram_png(const char *path, const ce_chart *c, const double *values, int n,
                          int bins, const double *vlines, const char *const *vline_labels,
                          int nvlines) {
  ce_image img;
  CE_TRY(ce_plot_histogram(path, c, values, n, bins, vlines, vline_labels, nvlines, &img, NULL,
                           NULL));
  int rc = chart_png(path, c, &img);
  free(img.rgb);
  return rc;
}
