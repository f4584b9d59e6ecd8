/* test_synth.c - coemu synth: the analytic model against closed forms, and
 * the written .dat files against the byte spec, parsed here independently of
 * the reader (rotate/amrvac.c).
 *
 * The file checks work on an amrvac_snapshot (check_file_* below), filled by
 * raw_read(), a minimal parser of 3-D version-5 files written for this test.
 * A round trip through the real reader only needs amrvac_open() +
 * amrvac_read_blocks() in place of raw_read() and the same
 * check_snapshot() call (see there and test_written_files).
 *
 * Tolerances: the model is scalar double arithmetic in fixed orders (no
 * BLAS, no sums across threads, no FMA contraction: -ffp-contract=off), the same on
 * every host up to libm's last bit: 1e-15..1e-12 bound a few double
 * roundings (pow, exp, trigonometry within an ulp or two), 1e-8 and 2e-6 the
 * float32/stored precision of the written fields, 2e-4 and the mass-flux
 * tolerances the discretisation of the fixed grids. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rotate/amrvac_write.h"
#include "check.h"
#include "common/fsutil.h"
#include "rotate/model.h"
#include "rotate/synth.h"

#define PI 3.14159265358979323846

static const char *tmpdir;

/* ---- an independent parser of 3-D v5 files ---------------------------- */

typedef struct {
  const unsigned char *p;
  size_t n, pos;
  int bad;
} cursor;

static void take(cursor *c, void *dst, size_t len) {
  if (c->pos + len > c->n) {
    c->bad = 1;
    memset(dst, 0, len);
    return;
  }
  memcpy(dst, c->p + c->pos, len);
  c->pos += len;
}
static int32_t i32(cursor *c) { int32_t v; take(c, &v, 4); return v; }
static int64_t i64(cursor *c) { int64_t v; take(c, &v, 8); return v; }
static double f64(cursor *c) { double v; take(c, &v, 8); return v; }
/* a char16 name: must be space padded; trailing blanks removed */
static void name16(cursor *c, char out[17]) {
  take(c, out, 16);
  out[16] = 0;
  for (int i = 0; i < 16; i++) CHECK_MSG(out[i] != 0, "NUL in a space-padded name at byte %zu", c->pos - 16 + i);
  for (int i = 15; i >= 0 && out[i] == ' '; i--) out[i] = 0;
}

/* Parse a 3-D version-5 file into s (same layout as the reader's); raw bytes
 * are checked on the way (offsets, ghost counts, sizes). Returns 0 or -1. */
static int raw_read(const char *path, amrvac_snapshot *s) {
  memset(s, 0, sizeof *s);
  char *buf;
  size_t len;
  if (fs_read_all(path, &buf, &len) < 0) return -1;
  cursor c = {(unsigned char *)buf, len, 0, 0};
  amrvac_header *h = &s->h;
  h->version = i32(&c);
  h->offset_tree = i32(&c);
  h->offset_blocks = i32(&c);
  h->nw = i32(&c);
  h->ndir = i32(&c);
  h->ndim = i32(&c);
  h->levmax = i32(&c);
  h->nleafs = i32(&c);
  h->nparents = i32(&c);
  h->it = i32(&c);
  CHECK(h->version == 5 && h->ndim == 3 && h->nw == 5 && h->nleafs > 0);
  if (h->version != 5 || h->ndim != 3 || h->nw != 5 || h->nleafs <= 0) {
    free(buf);
    return -1;
  }
  CHECK(c.pos == 40);
  h->time = f64(&c);
  for (int d = 0; d < 3; d++) h->xmin[d] = f64(&c);
  for (int d = 0; d < 3; d++) h->xmax[d] = f64(&c);
  for (int d = 0; d < 3; d++) h->domain_nx[d] = i32(&c);
  for (int d = 0; d < 3; d++) h->block_nx[d] = i32(&c);
  for (int d = 0; d < 3; d++) h->periodic[d] = i32(&c);
  name16(&c, h->geometry);
  h->staggered = i32(&c);
  h->w_names = calloc(5, sizeof *h->w_names);
  for (int i = 0; i < 5; i++) name16(&c, h->w_names[i]);
  name16(&c, h->physics_type);
  h->n_params = i32(&c);
  CHECK(h->n_params == 1);
  h->params = calloc(1, sizeof(double));
  h->param_names = calloc(1, sizeof *h->param_names);
  h->params[0] = f64(&c);
  name16(&c, h->param_names[0]);
  h->snapshotnext = i32(&c);
  h->slicenext = i32(&c);
  h->collapsenext = i32(&c);
  CHECK_MSG((int64_t)c.pos == h->offset_tree, "header ends at %zu, offset_tree = %lld", c.pos,
            (long long)h->offset_tree);
  int nl = h->nleafs, nb = h->nleafs + h->nparents;
  s->node_bits = malloc(sizeof(int32_t) * nb);
  s->leaves = calloc(nl, sizeof *s->leaves);
  for (int i = 0; i < nb; i++) s->node_bits[i] = i32(&c);
  for (int i = 0; i < nl; i++) s->leaves[i].id.level = i32(&c);
  for (int i = 0; i < nl; i++)
    for (int d = 0; d < 3; d++) s->leaves[i].id.ig[d] = i32(&c);
  for (int i = 0; i < nl; i++) s->leaves[i].offset = i64(&c);
  CHECK_MSG((int64_t)c.pos == h->offset_blocks, "tree ends at %zu, offset_blocks = %lld", c.pos,
            (long long)h->offset_blocks);
  const int n1 = h->block_nx[0], n2 = h->block_nx[1], n3 = h->block_nx[2];
  const size_t cells = (size_t)n1 * n2 * n3;
  s->w = malloc(sizeof(double) * 5 * cells * nl);
  int bad_off = 0, bad_ghost = 0;
  for (int i = 0; i < nl; i++) {
    if ((int64_t)c.pos != s->leaves[i].offset) bad_off++;
    c.pos = (size_t)s->leaves[i].offset;
    for (int d = 0; d < 6; d++)
      if (i32(&c) != 0) bad_ghost++;
    take(&c, s->w + (size_t)i * 5 * cells, 8 * 5 * cells);
  }
  CHECK_MSG(bad_off == 0, "%d block records are not at their stored offsets", bad_off);
  CHECK_MSG(bad_ghost == 0, "%d nonzero ghost counts", bad_ghost);
  CHECK_MSG(c.pos == len, "the last block ends at %zu, the file has %zu bytes", c.pos, len);
  CHECK(!c.bad);
  s->file_size = (int64_t)len;
  snprintf(s->path, sizeof s->path, "%s", path);
  free(buf);
  return c.bad ? -1 : 0;
}

/* ---- checks on a snapshot, whoever read it ---------------------------- */

static void check_file_header(const amrvac_snapshot *s, const synth_params *p, const synth_grid *g) {
  const amrvac_header *h = &s->h;
  CHECK(h->version == 5);
  CHECK(h->offset_tree == 288 && amrvac_v5_header_bytes(h) == 288);
  int64_t nl = h->nleafs, nb = nl + h->nparents;
  CHECK(h->offset_blocks == h->offset_tree + 4 * nb + 4 * nl + 12 * nl + 8 * nl);
  CHECK(h->ndim == 3 && h->ndir == 3 && h->nw == 5 && h->it == 0 && h->time == 0);
  CHECK(h->levmax >= 1 && h->levmax <= g->levels);
  CHECK(!strcmp(h->geometry, "Cartesian_3D") && !strcmp(h->physics_type, "hd"));
  CHECK(h->staggered == 0);
  const char *names[5] = {"rho", "m1", "m2", "m3", "e"};
  for (int i = 0; i < 5; i++) CHECK(!strcmp(h->w_names[i], names[i]));
  CHECK(h->n_params == 1 && !strcmp(h->param_names[0], "gamma") && h->params[0] == 5.0 / 3.0);
  for (int d = 0; d < 3; d++) {
    CHECK(h->domain_nx[d] == g->base_nx && h->block_nx[d] == g->block_nx && h->periodic[d] == 0);
    CHECK(h->xmin[d] == -p->half_width / SYNTH_AU && h->xmax[d] == p->half_width / SYNTH_AU);
  }
  int64_t rec = 24 + 40 * (int64_t)g->block_nx * g->block_nx * g->block_nx;
  CHECK(s->file_size == h->offset_blocks + nl * rec);
  for (int64_t i = 0; i < nl; i++)
    CHECK_MSG(s->leaves[i].offset == h->offset_blocks + i * rec, "leaf %lld offset %lld", (long long)i,
              (long long)s->leaves[i].offset);
}

/* The forest: the node bits decode to the stored level/ig arrays, and the
 * leaves tile the domain (every finest-level cell covered exactly once). */
static void check_file_forest(const amrvac_snapshot *s) {
  const amrvac_header *h = &s->h;
  int ng[3];
  for (int d = 0; d < 3; d++) ng[d] = h->domain_nx[d] / h->block_nx[d];
  amrvac_block_id *dec = malloc(sizeof *dec * h->nleafs);
  CHECK_OK(amrvac_forest_decode(3, ng, h->levmax, s->node_bits, (int64_t)h->nleafs + h->nparents,
                                h->nleafs, dec));
  int bad = 0, top = 0;
  for (int i = 0; i < h->nleafs; i++) {
    if (dec[i].level != s->leaves[i].id.level) bad++;
    for (int d = 0; d < 3; d++) bad += dec[i].ig[d] != s->leaves[i].id.ig[d];
    if (s->leaves[i].id.level > top) top = s->leaves[i].id.level;
  }
  free(dec);
  CHECK_MSG(bad == 0, "%d mismatches between the node bits and the level/ig arrays", bad);
  CHECK(top == h->levmax);
  int64_t nf = (int64_t)h->domain_nx[0] << (h->levmax - 1);
  unsigned char *cov = calloc((size_t)(nf * nf * nf), 1);
  int over = 0;
  for (int i = 0; i < h->nleafs; i++) {
    const amrvac_block_id *id = &s->leaves[i].id;
    int64_t span = (int64_t)h->block_nx[0] << (h->levmax - id->level);
    int64_t o[3];
    for (int d = 0; d < 3; d++) o[d] = (id->ig[d] - 1) * span;
    for (int64_t k = o[2]; k < o[2] + span; k++)
      for (int64_t j = o[1]; j < o[1] + span; j++)
        for (int64_t a = o[0]; a < o[0] + span; a++)
          if (cov[(k * nf + j) * nf + a]++) over++;
  }
  int64_t holes = 0;
  for (int64_t q = 0; q < nf * nf * nf; q++) holes += cov[q] == 0;
  free(cov);
  CHECK_MSG(over == 0 && holes == 0, "leaves overlap in %d and miss %lld finest cells", over, (long long)holes);
}

/* Cell centre (SI) of cell (i,j,k) of leaf l, per the spec's formula. */
static void cell_centre(const amrvac_header *h, const amrvac_block_id *id, int i, int j, int k, double x[3]) {
  int ijk[3] = {i, j, k};
  for (int d = 0; d < 3; d++) {
    double dx = (h->xmax[d] - h->xmin[d]) / h->domain_nx[d] / (double)(1 << (id->level - 1));
    x[d] = (h->xmin[d] + ((id->ig[d] - 1) * h->block_nx[d] + ijk[d] + 0.5) * dx) * SYNTH_AU;
  }
}

/* Physical fields of one cell decoded from the conserved code variables with
 * the sidecar's units (docs/sidecar.md). */
static void cell_fields(const amrvac_snapshot *s, int l, size_t a, double *nh2, double *T, double v[3]) {
  const size_t cells = (size_t)s->h.block_nx[0] * s->h.block_nx[1] * s->h.block_nx[2];
  const double *w = s->w + (size_t)l * 5 * cells;
  double rho = w[a], m[3] = {w[cells + a], w[2 * cells + a], w[3 * cells + a]}, e = w[4 * cells + a];
  *nh2 = rho * SYNTH_UNIT_NUMBERDENSITY / 2;
  for (int d = 0; d < 3; d++) v[d] = m[d] / rho * SYNTH_UNIT_VELOCITY;
  double pc = (s->h.params[0] - 1) * (e - 0.5 * (m[0] * m[0] + m[1] * m[1] + m[2] * m[2]) / rho);
  *T = SYNTH_MU * SYNTH_M_H * pc / rho * SYNTH_UNIT_VELOCITY * SYNTH_UNIT_VELOCITY / SYNTH_KB;
}

/* Every cell equals synth_eval at its centre (to round-off). */
static void check_file_cells(const amrvac_snapshot *s, const synth_params *p) {
  const amrvac_header *h = &s->h;
  const int n = h->block_nx[0];
  double worst_n = 0, worst_T = 0, worst_v = 0;
  for (int l = 0; l < h->nleafs; l++)
    for (int k = 0; k < n; k++)
      for (int j = 0; j < n; j++)
        for (int i = 0; i < n; i++) {
          double x[3], n0, T0, v0[3], n1, T1, v1[3];
          cell_centre(h, &s->leaves[l].id, i, j, k, x);
          synth_eval(p, x, &n0, &T0, v0);
          cell_fields(s, l, ((size_t)k * n + j) * n + i, &n1, &T1, v1);
          worst_n = fmax(worst_n, fabs(n1 - n0) / n0);
          worst_T = fmax(worst_T, fabs(T1 - T0) / T0);
          double vm = sqrt(v0[0] * v0[0] + v0[1] * v0[1] + v0[2] * v0[2]);
          for (int d = 0; d < 3; d++) worst_v = fmax(worst_v, fabs(v1[d] - v0[d]) / vm);
        }
  CHECK_MSG(worst_n < 1e-12 && worst_T < 1e-8 && worst_v < 1e-12,
            "cells vs synth_eval: worst relative errors n %.3g T %.3g v %.3g", worst_n, worst_T, worst_v);
}

/* Everything checked on a written synth file, for any reader's result:
 * the round trip through rotate/amrvac.c is
 *   amrvac_open(path, &s); amrvac_read_blocks(&s); check_snapshot(&s, &p, &g);
 * (plus amrvac_free) in test_written_files, next to raw_read. */
static void check_snapshot(const amrvac_snapshot *s, const synth_params *p, const synth_grid *g) {
  check_file_header(s, p, g);
  check_file_forest(s);
  check_file_cells(s, p);
}

/* Mass flux through the sphere r = R from the cells: a smooth radial window
 * W(r) = exp(-1/(1 - q^2)), q = (r - R)/D (zero with all its derivatives at
 * |q| = 1, so the cell sum converges fast) turns the surface integral into a
 * volume sum, Mdot = sum rho v.r^ W dV / integral(W dr). */
static double file_mass_flux(const amrvac_snapshot *s, double R, double D) {
  const amrvac_header *h = &s->h;
  const int n = h->block_nx[0];
  double sum = 0;
  for (int l = 0; l < h->nleafs; l++) {
    double dx = (h->xmax[0] - h->xmin[0]) / h->domain_nx[0] / (double)(1 << (s->leaves[l].id.level - 1)) * SYNTH_AU;
    for (int k = 0; k < n; k++)
      for (int j = 0; j < n; j++)
        for (int i = 0; i < n; i++) {
          double x[3], nh2, T, v[3];
          cell_centre(h, &s->leaves[l].id, i, j, k, x);
          double r = sqrt(x[0] * x[0] + x[1] * x[1] + x[2] * x[2]);
          if (fabs(r - R) >= D) continue;
          cell_fields(s, l, ((size_t)k * n + j) * n + i, &nh2, &T, v);
          double q = (r - R) / D, wgt = exp(-1 / (1 - q * q));
          sum += nh2 * SYNTH_RHO_PER_NH2 * (v[0] * x[0] + v[1] * x[1] + v[2] * x[2]) / r * wgt * dx * dx * dx;
        }
  }
  return sum / (D * 0.44399381616807943); /* integral of exp(-1/(1-q^2)) over (-1, 1) */
}

/* ---- tests ----------------------------------------------------------- */

static synth_params smooth_params(void) {
  synth_params p;
  synth_draw(11, 3, &p);
  p.arm_contrast = 0;
  p.plane_contrast = 0;
  p.arm_dv_r = 0;
  synth_derive(&p);
  return p;
}

/* Closed forms of the smooth wind at a point. */
static void test_eval_smooth_wind(void) {
  synth_params p = smooth_params();
  for (int t = 0; t < 20; t++) {
    double r = p.r_star * (1.01 + 40.0 * t);
    double x[3] = {0.3 * r, -0.4 * r, sqrt(0.75) * r}, nh2, T, v[3];
    synth_eval(&p, x, &nh2, &T, v);
    double vr = fmax(p.v_inf * pow(1 - p.r_star / r, p.beta), p.v_floor);
    CHECK_CLOSE(nh2, p.mdot / (4 * PI * r * r * vr) / SYNTH_RHO_PER_NH2, 1e-14, 0);
    CHECK_CLOSE(T, fmax(p.t_star * pow(p.r_star / r, p.t_exp), p.t_floor), 1e-14, 0);
    /* radial, plus the arms' tangential term only (arm_dv_t > 0 even without contrast) */
    double rad = (v[0] * x[0] + v[1] * x[1] + v[2] * x[2]) / r;
    CHECK_CLOSE(rad, vr, 1e-12, 0);
  }
  /* inside the star: constant density and temperature, v -> 0 at the centre */
  double x0[3] = {0, 0, 0}, nh2, T, v[3];
  synth_eval(&p, x0, &nh2, &T, v);
  CHECK(T == p.t_star && v[0] == 0 && v[1] == 0 && v[2] == 0 && nh2 > 0 && isfinite(nh2));
}

/* Mass flux of the analytic field through spheres, by Gauss-Legendre in mu
 * (64 points per band, 16 bands) and the trapezoid rule in azimuth (exact for
 * periodic integrands): Mdot for the smooth wind, and for the full model
 * without the arms' radial velocity excess (the normalisations are exact). */
static double eval_mass_flux(const synth_params *p, double R) {
  static const double gx[8] = {0.0950125098376374, 0.2816035507792589, 0.4580167776572274,
                               0.6178762444026438, 0.7554044083550030, 0.8656312023878318,
                               0.9445750230732326, 0.9894009349916499};
  static const double gw[8] = {0.1894506104550685, 0.1826034150449236, 0.1691565193950025,
                               0.1495959888165767, 0.1246289712555339, 0.0951585116824928,
                               0.0622535239386479, 0.0271524594117541};
  const int bands = 32, naz = 1024;
  double sum = 0;
  for (int b = 0; b < bands; b++) {
    double m0 = -1 + 2.0 * b / bands, hw = 1.0 / bands;
    for (int q = 0; q < 16; q++) {
      double mu = m0 + hw * (1 + (q < 8 ? -gx[7 - q] : gx[q - 8])), wq = hw * gw[q < 8 ? 7 - q : q - 8];
      double st = sqrt(1 - mu * mu), ring = 0;
      for (int a = 0; a < naz; a++) {
        double th = 2 * PI * a / naz, xr[3], nh2, T, v[3];
        for (int d = 0; d < 3; d++) xr[d] = R * (st * (cos(th) * p->e1[d] + sin(th) * p->e2[d]) + mu * p->n[d]);
        synth_eval(p, xr, &nh2, &T, v);
        double vr = (v[0] * xr[0] + v[1] * xr[1] + v[2] * xr[2]) / R;
        ring += nh2 * SYNTH_RHO_PER_NH2 * vr * R * R;
      }
      sum += wq * (2 * PI / naz) * ring;
    }
  }
  return sum;
}

static void test_eval_mass_flux(void) {
  synth_params p = smooth_params();
  for (int t = 0; t < 3; t++) CHECK_CLOSE(eval_mass_flux(&p, p.r_star * (1.5 + 20 * t)), p.mdot, 1e-12, 0);
  synth_draw(11, 4, &p); /* spiral and plane enhancement on */
  p.arm_dv_r = 0;
  p.arm_contrast = 3.5;
  p.plane_contrast = 2.5;
  p.ecc = 0.4;
  synth_derive(&p);
  CHECK(p.arm_width > 0 && p.plane_width > 0);
  for (int t = 0; t < 3; t++) CHECK_CLOSE(eval_mass_flux(&p, p.r_star * (1.5 + 20 * t)), p.mdot, 1e-9, 0);
}

/* Archimedean arms: along a ray in the orbital plane of a circular orbit,
 * the density maxima (relative to the smooth wind) are v_inf P apart, and
 * the arm passes through the companion's azimuth at r = 0+. */
static void test_eval_arm_spacing(void) {
  synth_params p;
  synth_draw(5, 9, &p);
  p.ecc = 0;
  p.plane_contrast = 0;
  p.arm_contrast = 2;
  synth_derive(&p);
  double lam = p.v_inf * p.period, dr = lam * 1e-4, prev = -1, pprev = -1;
  double peaks[16];
  int np = 0;
  for (double r = 3 * p.r_star; r < 3 * p.r_star + 5.2 * lam && np < 16; r += dr) {
    double x[3] = {r * p.e1[0], r * p.e1[1], r * p.e1[2]}, nh2, T, v[3];
    synth_eval(&p, x, &nh2, &T, v);
    double vr = fmax(p.v_inf * pow(1 - p.r_star / r, p.beta), p.v_floor);
    double rel = nh2 * r * r * vr; /* smooth wind divided out */
    if (pprev >= 0 && prev > pprev && prev >= rel) peaks[np++] = r - dr;
    pprev = prev;
    prev = rel;
  }
  CHECK(np >= 5);
  for (int i = 1; i < np; i++) CHECK_CLOSE(peaks[i] - peaks[i - 1], lam, 2e-4, 0);
  /* psi = 0 at the peaks: azimuth 0 (e1) = companion azimuth at launch time -r/v_inf */
  for (int i = 0; i < np; i++) {
    double psi = remainder(0 - (p.periastron + p.phase - 2 * PI * peaks[i] / lam), 2 * PI);
    CHECK(fabs(psi) < 2 * PI * 2e-4);
  }
}

/* Kepler orbit: at mean anomaly 0 the companion is at periastron, a (1 - e),
 * in the direction of the argument of periastron; the basis is orthonormal. */
static void test_orbit(void) {
  synth_params p;
  synth_draw(2, 1, &p);
  p.ecc = 0.5;
  p.phase = 0;
  synth_derive(&p);
  double rc = sqrt(p.comp_pos[0] * p.comp_pos[0] + p.comp_pos[1] * p.comp_pos[1] + p.comp_pos[2] * p.comp_pos[2]);
  CHECK_CLOSE(rc, p.sep * 0.5, 1e-13, 0);
  double c1 = 0, c2 = 0;
  for (int d = 0; d < 3; d++) {
    c1 += p.comp_pos[d] * p.e1[d];
    c2 += p.comp_pos[d] * p.e2[d];
  }
  CHECK_CLOSE(atan2(c2, c1), remainder(p.periastron, 2 * PI), 1e-12, 1e-12);
  double dots[6] = {0};
  for (int d = 0; d < 3; d++) {
    dots[0] += p.e1[d] * p.e1[d]; dots[1] += p.e2[d] * p.e2[d]; dots[2] += p.n[d] * p.n[d];
    dots[3] += p.e1[d] * p.e2[d]; dots[4] += p.e1[d] * p.n[d]; dots[5] += p.e2[d] * p.n[d];
  }
  for (int i = 0; i < 3; i++) CHECK_CLOSE(dots[i], 1, 1e-15, 0);
  for (int i = 3; i < 6; i++) CHECK_CLOSE(dots[i], 0, 0, 1e-15);
  /* Kepler's third law */
  CHECK_CLOSE(4 * PI * PI * pow(p.sep, 3) / (p.period * p.period), SYNTH_G * (p.m1 + p.m2), 1e-13, 0);
  CHECK_CLOSE(p.n[2], cos(p.incl), 1e-15, 1e-15);
}

/* Draws: within the documented ranges, valid, and reproducible. */
static void test_draw_ranges(void) {
  int circular = 0, bad = 0;
  double mdot_lo = 1e-8 * SYNTH_MSUN / SYNTH_YEAR, mdot_hi = 1e-5 * SYNTH_MSUN / SYNTH_YEAR;
  for (int64_t i = 0; i < 2000; i++) {
    synth_params p, q;
    synth_draw(77, i, &p);
    synth_draw(77, i, &q);
    if (memcmp(&p, &q, sizeof p)) bad++;
    ce_err_clear();
    if (synth_check(&p) < 0) {
      bad++;
      fprintf(stderr, "model %lld: %s\n", (long long)i, ce_err_msg());
    }
    if (p.mdot < mdot_lo || p.mdot > mdot_hi || p.v_inf < 5e3 || p.v_inf > 25e3) bad++;
    if (p.period < 8 * SYNTH_YEAR || p.period > 120 * SYNTH_YEAR || p.ecc < 0 || p.ecc > 0.6) bad++;
    if (p.sep * (1 - p.ecc) < 1.5 * p.r_star * (1 - 1e-12)) bad++;
    if (p.half_width != SYNTH_HALF_WIDTH || 3 * p.sep * (1 + p.ecc) >= p.half_width) bad++;
    if (p.co_abundance < 1e-4 || p.co_abundance > 1e-3) bad++;
    circular += p.ecc == 0;
  }
  CHECK_MSG(bad == 0, "%d bad draws", bad);
  CHECK_MSG(circular > 900 && circular < 1100, "%d of 2000 orbits circular, expected about half", circular);
  /* different seeds and indices give different models */
  synth_params a, b, c;
  synth_draw(1, 0, &a);
  synth_draw(2, 0, &b);
  synth_draw(1, 1, &c);
  CHECK(a.mdot != b.mdot && a.mdot != c.mdot && a.period != b.period && a.period != c.period);
  /* high indices use the upper counter word */
  synth_draw(1, (int64_t)1 << 32, &b);
  CHECK(a.mdot != b.mdot);
}

static int files_equal(const char *x, const char *y) {
  char *a, *b;
  size_t na, nb;
  if (fs_read_all(x, &a, &na) < 0) return -1;
  if (fs_read_all(y, &b, &nb) < 0) {
    free(a);
    return -1;
  }
  int eq = na == nb && !memcmp(a, b, na);
  free(a);
  free(b);
  return eq;
}

/* Write models, parse them independently and check the bytes, the forest,
 * every cell and the mass flux. */
static void test_written_files(void) {
  synth_grid g = synth_grid_default();
  CHECK(g.levels == 3 && g.block_nx == 8 && g.base_nx == 32);
  const synth_grid grids[3] = {{3, 8, 32}, {4, 8, 24}, {3, 16, 48}};
  for (int t = 0; t < 3; t++) {
    char dir[300], path[1024];
    snprintf(dir, sizeof dir, "%s/g%d", tmpdir, t);
    CHECK_OK(fs_mkdir_p(dir));
    synth_params p;
    synth_draw(42, t, &p);
    CHECK_OK(synth_write_model(dir, 42, t, &grids[t], path, sizeof path));
    char want[400];
    snprintf(want, sizeof want, "%s/synth_%05d.dat", dir, t);
    CHECK(!strcmp(path, want));
    amrvac_snapshot s;
    if (raw_read(path, &s) < 0) {
      CHECK_MSG(0, "%s: %s", path, ce_err_msg());
      continue;
    }
    check_snapshot(&s, &p, &grids[t]);
    /* round trip through the real reader: the same forest and bit-identical values */
    amrvac_snapshot rd;
    CHECK_OK(amrvac_open(path, &rd));
    CHECK_OK(amrvac_read_blocks(&rd));
    if (rd.w) {
      CHECK(rd.h.nleafs == s.h.nleafs && rd.h.nparents == s.h.nparents && rd.h.levmax == s.h.levmax);
      for (int i = 0; i < s.h.nleafs && i < rd.h.nleafs; i++)
        CHECK(rd.leaves[i].id.level == s.leaves[i].id.level &&
              !memcmp(rd.leaves[i].id.ig, s.leaves[i].id.ig, sizeof s.leaves[i].id.ig));
      CHECK(!memcmp(rd.w, s.w, sizeof(double) * 5 * (size_t)s.h.nleafs * grids[t].block_nx *
                                   grids[t].block_nx * grids[t].block_nx));
      check_snapshot(&rd, &p, &grids[t]);
    }
    amrvac_free(&rd);
    /* and through the units sidecar into physical fields: n_CO, T and v at
     * cell centres are the model's (float32 storage in the model) */
    ce_model *mdl = NULL;
    CHECK_OK(model_load(path, NULL, &mdl));
    for (int q = 0; mdl && q < 200; q++) {
      int64_t leaf = (int64_t)(q * 7919) % mdl->nleaves;
      amrvac_block_id id = mdl->ids[leaf];
      double lo[3], hi[3], x[3];
      amrvac_leaf_bounds(&s.h, &id, lo, hi);
      int ci[3] = {q % grids[t].block_nx, (q / 3) % grids[t].block_nx, (q / 5) % grids[t].block_nx};
      for (int d = 0; d < 3; d++) /* code units (au) -> m */
        x[d] = (lo[d] + (ci[d] + 0.5) * (hi[d] - lo[d]) / grids[t].block_nx) * SYNTH_UNIT_LENGTH;
      model_cache mc = {0};
      int64_t cell = model_locate(mdl, x, &mc);
      CHECK(cell >= 0);
      if (cell < 0) continue;
      const model_real *f = &mdl->cells[cell * MODEL_NF];
      double nh2, T, v[3];
      synth_eval(&p, x, &nh2, &T, v);
      CHECK_CLOSE(f[MODEL_N], p.co_abundance * nh2, 2e-6, 0);
      CHECK_CLOSE(f[MODEL_T], T, 2e-6, 0);
      for (int d = 0; d < 3; d++) CHECK_CLOSE(f[MODEL_VX + d], v[d], 2e-6, 1e-6 * p.v_inf);
    }
    model_free(mdl);
    int levels_seen[8] = {0};
    for (int i = 0; i < s.h.nleafs; i++) levels_seen[s.leaves[i].id.level]++;
    int nlev = 0;
    for (int L = 1; L < 8; L++) nlev += levels_seen[L] > 0;
    CHECK_MSG(s.h.levmax == grids[t].levels && nlev >= 2,
              "grid %d: levmax %d, %d levels with leaves: expected real AMR", t, s.h.levmax, nlev);
    /* the same snapshot built in memory is what was written */
    amrvac_snapshot m;
    CHECK_OK(synth_build(&p, &grids[t], &m));
    CHECK(m.h.nleafs == s.h.nleafs && m.h.nparents == s.h.nparents &&
          !memcmp(m.w, s.w, sizeof(double) * 5 * (size_t)s.h.nleafs * grids[t].block_nx *
                                 grids[t].block_nx * grids[t].block_nx));
    synth_snapshot_free(&m);
    synth_snapshot_free(&s);
    /* the sidecar */
    char side[400], *y;
    size_t ny;
    snprintf(side, sizeof side, "%s/synth_%05d.units.yaml", dir, t);
    CHECK_OK(fs_read_all(side, &y, &ny));
    if (ny) {
      CHECK(strstr(y, "\nversion: 1\n") && strstr(y, "\nunit_system: si\n") &&
            strstr(y, "\nunit_length: 149597870700\n") && strstr(y, "\nunit_numberdensity: 1000000000000000\n") &&
            strstr(y, "\nunit_velocity: 1000\n") && strstr(y, "\nhe_abundance: 0.10000000000000001\n") &&
            strstr(y, "\nstretched: false\n") && strstr(y, "\nco_abundance: "));
      double co = strtod(strstr(y, "\nco_abundance: ") + 15, NULL);
      CHECK(co == p.co_abundance);
      free(y);
    }
  }
}

/* Mdot through spheres from the written cells, for the smooth wind. The
 * grid error of the windowed volume sum (docs/synth.md): below 1e-4 on a
 * uniform 64^3 grid, below 5e-3 on the default AMR grid, where the level
 * interfaces dominate it. */
static void file_flux_case(const synth_grid *g, double tol) {
  synth_params p = smooth_params();
  char dir[300], path[1024];
  snprintf(dir, sizeof dir, "%s/flux", tmpdir);
  CHECK_OK(fs_mkdir_p(dir));
  CHECK_OK(synth_write_params(dir, 11, 3, &p, g, 0, path, sizeof path, NULL));
  amrvac_snapshot s;
  if (raw_read(path, &s) < 0) return;
  double L = p.half_width;
  const double radii[4] = {0.25, 0.4, 0.55, 0.7};
  for (int i = 0; i < 4; i++) {
    double md = file_mass_flux(&s, radii[i] * L, 0.2 * L);
    CHECK_MSG(fabs(md / p.mdot - 1) < tol,
              "grid (%d levels, base %d): R = %.2f L: Mdot from the cells %.6g, requested %.6g (rel %.2g)",
              g->levels, g->base_nx, radii[i], md, p.mdot, md / p.mdot - 1);
  }
  synth_snapshot_free(&s);
}

static void test_file_mass_flux(void) {
  file_flux_case(&(synth_grid){1, 16, 64}, 1e-4);
  synth_grid g = synth_grid_default();
  file_flux_case(&g, 5e-3);
}

/* Same (seed, index) -> byte-identical files; another seed -> another file. */
static void test_reproducible(void) {
  synth_grid g = synth_grid_default();
  char d1[300], d2[300], d3[300], p1[1024], p2[1024], p3[1024];
  snprintf(d1, sizeof d1, "%s/r1", tmpdir);
  snprintf(d2, sizeof d2, "%s/r2", tmpdir);
  snprintf(d3, sizeof d3, "%s/r3", tmpdir);
  CHECK_OK(fs_mkdir_p(d1));
  CHECK_OK(fs_mkdir_p(d2));
  CHECK_OK(fs_mkdir_p(d3));
  CHECK_OK(synth_write_model(d1, 9, 17, &g, p1, sizeof p1));
  CHECK_OK(synth_write_model(d2, 9, 17, &g, p2, sizeof p2));
  CHECK_OK(synth_write_model(d3, 10, 17, &g, p3, sizeof p3));
  CHECK(files_equal(p1, p2) == 1);
  CHECK(files_equal(p1, p3) == 0);
}

/* The writer refuses what it cannot write faithfully. */
static void test_writer_errors(void) {
  synth_params p;
  synth_draw(3, 0, &p);
  synth_grid g = {2, 8, 16};
  amrvac_snapshot s;
  CHECK_OK(synth_build(&p, &g, &s));
  char path[400];
  snprintf(path, sizeof path, "%s/bad.dat", tmpdir);
  CHECK_OK(amrvac_write(path, &s));
  CHECK(s.h.offset_tree == 288 && s.file_size == fs_file_size(path));
  s.h.version = 4;
  CHECK_ERR(amrvac_write(path, &s), "version");
  s.h.version = 5;
  snprintf(s.h.w_names[1], sizeof s.h.w_names[1], "%s", "");
  CHECK_ERR(amrvac_write(path, &s), "w_names[1]");
  snprintf(s.h.w_names[1], sizeof s.h.w_names[1], "m1");
  s.leaves[0].ghost_lo[0] = 2;
  CHECK_ERR(amrvac_write(path, &s), "ghost");
  s.leaves[0].ghost_lo[0] = 0;
  s.node_bits[0] = !s.node_bits[0];
  CHECK_ERR(amrvac_write(path, &s), "tree");
  s.node_bits[0] = !s.node_bits[0];
  amrvac_block_id keep = s.leaves[1].id;
  s.leaves[1].id.ig[0]++;
  CHECK_ERR(amrvac_write(path, &s), "leaf 1");
  s.leaves[1].id = keep;
  s.h.domain_nx[1] = 12;
  CHECK_ERR(amrvac_write(path, &s), "domain_nx[2]");
  s.h.domain_nx[1] = 16;
  char nodir[400];
  snprintf(nodir, sizeof nodir, "%s/no/such/dir/x.dat", tmpdir);
  CHECK_ERR(amrvac_write(nodir, &s), "x.dat");
  /* the file written first is untouched by the failed attempts */
  amrvac_snapshot r;
  if (raw_read(path, &r) == 0) {
    check_file_forest(&r);
    check_file_cells(&r, &p);
    synth_snapshot_free(&r);
  }
  synth_snapshot_free(&s);
  /* bad grids and parameters */
  synth_grid bad[3] = {{0, 8, 32}, {3, 7, 32}, {3, 8, 36}};
  CHECK_ERR(synth_grid_check(&bad[0]), "levels");
  CHECK_ERR(synth_grid_check(&bad[1]), "block_nx");
  CHECK_ERR(synth_grid_check(&bad[2]), "base_nx");
  p.half_width = p.sep * 0.5;
  synth_derive(&p);
  CHECK_ERR(synth_build(&p, &g, &s), "companion");
  synth_draw(3, 0, &p);
  p.mdot = -1;
  CHECK_ERR(synth_check(&p), "mdot");
}

int main(void) {
  tmpdir = check_scratch("test_synth");
  RUN(test_eval_smooth_wind);
  RUN(test_eval_mass_flux);
  RUN(test_eval_arm_spacing);
  RUN(test_orbit);
  RUN(test_draw_ranges);
  RUN(test_written_files);
  RUN(test_file_mass_flux);
  RUN(test_reproducible);
  RUN(test_writer_errors);
  check_scratch_remove();
  return check_report();
}
