/* synth.c - synthetic AGB binary-wind models as AMRVAC snapshots (synth.h). */
#include "rotate/synth.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/fsutil.h"
#include "common/image.h"
#include "common/rng.h"
#include "rotate/amrvac_write.h"

#define PI 3.14159265358979323846
#define KMS 1.0e3

/* ---- parameters ------------------------------------------------------ */

static double uni(ce_rng *r, double lo, double hi) { return lo + (hi - lo) * ce_rng_uniform(r); }
static double loguni(ce_rng *r, double lo, double hi) {
  return exp(log(lo) + (log(hi) - log(lo)) * ce_rng_uniform(r));
}

/* The documented ranges (docs/synth.md, "Parameters"). The order of the draws
 * is part of the format: append new draws at the end only. */
void synth_draw(uint64_t seed, int64_t index, synth_params *p) {
  ce_rng r = ce_rng_make(seed, (uint32_t)index, (uint32_t)((uint64_t)index >> 32), SYNTH_RNG_STREAM);
  memset(p, 0, sizeof *p);
  p->mdot = loguni(&r, 1e-8, 1e-5) * SYNTH_MSUN / SYNTH_YEAR;
  p->v_inf = uni(&r, 5, 25) * KMS;
  p->beta = uni(&r, 0.5, 2.0);
  p->v_floor = uni(&r, 1.0, 3.0) * KMS;
  p->r_star = uni(&r, 1.0, 2.0) * SYNTH_AU;
  p->t_star = uni(&r, 2000, 3200);
  p->t_exp = uni(&r, 0.5, 1.0);
  p->t_floor = 10.0;
  p->co_abundance = loguni(&r, 1e-4, 1e-3);
  p->m1 = uni(&r, 1.0, 3.0) * SYNTH_MSUN;
  p->m2 = uni(&r, 0.1, 1.5) * SYNTH_MSUN;
  p->period = loguni(&r, 8, 120) * SYNTH_YEAR;
  /* half the orbits circular; the others up to e = 0.6, keeping periastron
   * at least 1.5 R* away from the star */
  double u_circ = ce_rng_uniform(&r), u_ecc = ce_rng_uniform(&r);
  double a = cbrt(SYNTH_G * (p->m1 + p->m2) * p->period * p->period / (4 * PI * PI));
  double emax = fmin(0.6, 1.0 - 1.5 * p->r_star / a);
  p->ecc = u_circ < 0.5 || emax <= 0 ? 0.0 : u_ecc * emax;
  p->incl = acos(uni(&r, -1.0, 1.0)); /* isotropic orbit normals */
  p->node = uni(&r, 0, 2 * PI);
  p->periastron = uni(&r, 0, 2 * PI);
  p->phase = uni(&r, 0, 2 * PI);
  p->arm_contrast = uni(&r, 0.5, 4.0);
  p->arm_width = uni(&r, 0.05, 0.2);
  p->arm_dv_r = uni(&r, 0.0, 0.1) * p->v_inf;
  p->plane_contrast = uni(&r, 0.0, 3.0);
  p->plane_width = uni(&r, 0.15, 0.6);
  /* One domain for every model: a training set views all models through the
   * same ball (the smallest half-extent over the job), so models must share
   * their physical extent or most would be seen through a keyhole. */
  p->half_width = SYNTH_HALF_WIDTH;
  synth_derive(p);
}

static void cross(const double a[3], const double b[3], double c[3]) {
  c[0] = a[1] * b[2] - a[2] * b[1];
  c[1] = a[2] * b[0] - a[0] * b[2];
  c[2] = a[0] * b[1] - a[1] * b[0];
}

/* True anomaly for mean anomaly M (Kepler's equation by Newton's method). */
static double true_anomaly(double M, double e) {
  if (e == 0) return M;
  M = remainder(M, 2 * PI);
  double E = M + e * sin(M);
  for (int it = 0; it < 50; it++) {
    double dE = (E - e * sin(E) - M) / (1 - e * cos(E));
    E -= dE;
    if (fabs(dE) < 1e-14) break;
  }
  return 2 * atan2(sqrt(1 + e) * sin(E / 2), sqrt(1 - e) * cos(E / 2));
}

/* Orbital-plane azimuth of the companion at time t (t = 0: now). */
static double companion_azimuth(const synth_params *p, double t) {
  return p->periastron + true_anomaly(p->phase + 2 * PI * t / p->period, p->ecc);
}

void synth_derive(synth_params *p) {
  double mt = p->m1 + p->m2;
  p->sep = cbrt(SYNTH_G * mt * p->period * p->period / (4 * PI * PI));
  p->arm_spacing = p->v_inf * p->period;
  p->arm_dv_t = 2 * PI * p->sep * p->m2 / (mt * p->period);
  double ci = cos(p->incl), si = sin(p->incl), cn = cos(p->node), sn = sin(p->node);
  p->e1[0] = cn; p->e1[1] = sn; p->e1[2] = 0;
  p->n[0] = si * sn; p->n[1] = -si * cn; p->n[2] = ci;
  cross(p->n, p->e1, p->e2);
  /* relative orbit: r = a (1 - e^2) / (1 + e cos nu) */
  double th = companion_azimuth(p, 0), nu = th - p->periastron;
  double rc = p->sep * (1 - p->ecc * p->ecc) / (1 + p->ecc * cos(nu));
  for (int d = 0; d < 3; d++) p->comp_pos[d] = rc * (cos(th) * p->e1[d] + sin(th) * p->e2[d]);
  double h = p->plane_width, sig = 2 * PI * p->arm_width, kappa = 1 / (sig * sig);
  p->plane_norm = h * sqrt(PI / 2) * erf(1 / (h * sqrt(2.0)));
  /* <exp(kappa (cos psi - 1))> = exp(-kappa) I0(kappa), I0 by its power series
   * (all terms positive; kappa <= ~1e3 for arm widths >= 0.005) */
  double term = 1, sum = 1;
  for (int k = 1; k < 4000 && term > 1e-17 * sum; k++) {
    term *= (kappa / 2) * (kappa / 2) / ((double)k * k);
    sum += term;
  }
  p->arm_mean = exp(-kappa) * sum;
}

int synth_check(const synth_params *p) {
  struct { const char *name; double v, lo, hi; } lim[] = {
      {"mdot", p->mdot, 0, INFINITY}, {"v_inf", p->v_inf, 0, INFINITY},
      {"beta", p->beta, 0, 100}, {"v_floor", p->v_floor, 0, INFINITY},
      {"r_star", p->r_star, 0, INFINITY}, {"t_star", p->t_star, 0, INFINITY},
      {"t_exp", p->t_exp, 0, 10}, {"t_floor", p->t_floor, 0, INFINITY},
      {"co_abundance", p->co_abundance, 0, 1}, {"m1", p->m1, 0, INFINITY},
      {"m2", p->m2, 0, INFINITY}, {"period", p->period, 0, INFINITY},
      {"arm_width", p->arm_width, 0, 1}, {"plane_width", p->plane_width, 0, 10},
      {"half_width", p->half_width, 0, INFINITY}};
  for (size_t i = 0; i < sizeof lim / sizeof lim[0]; i++)
    if (!(lim[i].v > lim[i].lo && lim[i].v < lim[i].hi))
      CE_FAIL("synth parameter %s = %g, expected in (%g, %g)", lim[i].name, lim[i].v, lim[i].lo,
              lim[i].hi);
  if (!(p->ecc >= 0 && p->ecc < 1)) CE_FAIL("synth parameter ecc = %g, expected in [0, 1)", p->ecc);
  if (!(p->arm_contrast >= 0) || !(p->plane_contrast >= 0) || !isfinite(p->arm_dv_r))
    CE_FAIL("synth parameters arm_contrast = %g, plane_contrast = %g, arm_dv_r = %g: expected "
            "finite, contrasts >= 0", p->arm_contrast, p->plane_contrast, p->arm_dv_r);
  if (!(p->v_floor <= p->v_inf)) CE_FAIL("synth parameter v_floor = %g exceeds v_inf = %g", p->v_floor, p->v_inf);
  double peri = p->sep * (1 - p->ecc);
  if (!(peri > p->r_star))
    CE_FAIL("synth parameters: periastron distance %g m is inside the star (r_star = %g m)", peri, p->r_star);
  for (int d = 0; d < 3; d++)
    if (!(fabs(p->comp_pos[d]) < p->half_width))
      CE_FAIL("synth parameters: the companion (%g m from the star along axis %d) lies outside the "
              "domain half_width = %g m", p->comp_pos[d], d + 1, p->half_width);
  return 0;
}

/* ---- the analytic fields --------------------------------------------- */

static double smooth_speed(const synth_params *p, double r) {
  return fmax(p->v_inf * pow(1 - p->r_star / r, p->beta), p->v_floor);
}

/* n_H2, and (if v != NULL) the arm profile S and radial speed for the velocity. */
static double eval_density(const synth_params *p, const double x[3], double r, double *S_out,
                           double *vr_out, double *mu_out) {
  if (r < p->r_star) {
    *S_out = 0;
    *vr_out = p->v_floor * r / p->r_star;
    *mu_out = 0;
    return p->mdot / (4 * PI * p->r_star * p->r_star * p->v_floor) / SYNTH_RHO_PER_NH2;
  }
  double vr = smooth_speed(p, r);
  double ns = p->mdot / (4 * PI * r * r * vr) / SYNTH_RHO_PER_NH2;
  double mu = (p->n[0] * x[0] + p->n[1] * x[1] + p->n[2] * x[2]) / r;
  double h = p->plane_width;
  double F = (1 + p->plane_contrast * exp(-mu * mu / (2 * h * h))) / (1 + p->plane_contrast * p->plane_norm);
  double x1 = p->e1[0] * x[0] + p->e1[1] * x[1] + p->e1[2] * x[2];
  double x2 = p->e2[0] * x[0] + p->e2[1] * x[1] + p->e2[2] * x[2];
  double psi = atan2(x2, x1) - companion_azimuth(p, -r / p->v_inf);
  double sig = 2 * PI * p->arm_width;
  double S = exp((cos(psi) - 1) / (sig * sig)); /* von Mises: a periodic Gaussian of width sig */
  double A = p->arm_contrast * (1 - mu * mu);
  double G = (1 + A * S) / (1 + A * p->arm_mean);
  *S_out = S;
  *vr_out = vr;
  *mu_out = mu;
  return ns * F * G;
}

void synth_eval(const synth_params *p, const double x[3], double *n_h2, double *T, double v[3]) {
  double r = sqrt(x[0] * x[0] + x[1] * x[1] + x[2] * x[2]);
  double S, vr, mu;
  *n_h2 = eval_density(p, x, r, &S, &vr, &mu);
  if (r < p->r_star) {
    *T = p->t_star;
    for (int d = 0; d < 3; d++) v[d] = r > 0 ? vr * x[d] / r : 0.0;
    return;
  }
  *T = fmax(p->t_star * pow(p->r_star / r, p->t_exp), p->t_floor);
  double nx[3];
  cross(p->n, x, nx); /* |n x x| = r sqrt(1 - mu^2): the orbital motion fades to the poles */
  double rad = (vr + S * p->arm_dv_r) / r, tan = S * p->arm_dv_t / r;
  for (int d = 0; d < 3; d++) v[d] = rad * x[d] + tan * nx[d];
}

/* ---- grid ------------------------------------------------------------ */

synth_grid synth_grid_default(void) { return (synth_grid){3, 8, 32}; }

int synth_grid_check(const synth_grid *g) {
  if (g->levels < 1 || g->levels > 6) CE_FAIL("synth grid: levels = %d, expected 1..6", g->levels);
  if (g->block_nx < 2 || g->block_nx > 64 || g->block_nx % 2)
    CE_FAIL("synth grid: block_nx = %d, expected an even number 2..64 (8 or 16 usual)", g->block_nx);
  if (g->base_nx < g->block_nx || g->base_nx % g->block_nx || g->base_nx > 4096)
    CE_FAIL("synth grid: base_nx = %d, expected a multiple of block_nx = %d, at most 4096",
            g->base_nx, g->block_nx);
  return 0;
}

typedef struct {
  const synth_params *p;
  const synth_grid *g;
  double dx1; /* level-1 cell size [m] */
  double *lnrho; /* block_nx^3 scratch */
} refine_ctx;

static void block_bounds(const refine_ctx *c, const amrvac_block_id *id, double lo[3], double *dx,
                         double *width) {
  *dx = c->dx1 / (double)(1 << (id->level - 1));
  *width = c->g->block_nx * *dx;
  for (int d = 0; d < 3; d++) lo[d] = -c->p->half_width + (id->ig[d] - 1) * *width;
}

static int near_point(const double lo[3], double width, const double x[3]) {
  for (int d = 0; d < 3; d++)
    if (x[d] < lo[d] - 0.5 * width || x[d] > lo[d] + 1.5 * width) return 0;
  return 1;
}

/* Split a block if the star or the companion lies in it or within half a
 * block of it, or if ln n_H2 jumps by more than SYNTH_REFINE_JUMP between
 * two neighbouring cell centres of the block (on the block's own level). */
static int refine_block(const amrvac_block_id *id, void *user) {
  refine_ctx *c = user;
  double lo[3], dx, width;
  block_bounds(c, id, lo, &dx, &width);
  const double star[3] = {0, 0, 0};
  if (near_point(lo, width, star) || near_point(lo, width, c->p->comp_pos)) return 1;
  if (id->level + 1 >= c->g->levels && c->g->levels > 2) return 0; /* the finest level: star and companion only */
  const int n = c->g->block_nx;
  double S, vr, mu;
  for (int k = 0; k < n; k++)
    for (int j = 0; j < n; j++)
      for (int i = 0; i < n; i++) {
        double x[3] = {lo[0] + (i + 0.5) * dx, lo[1] + (j + 0.5) * dx, lo[2] + (k + 0.5) * dx};
        double r = sqrt(x[0] * x[0] + x[1] * x[1] + x[2] * x[2]);
        c->lnrho[(k * n + j) * n + i] = log(eval_density(c->p, x, r, &S, &vr, &mu));
      }
  const double *q = c->lnrho;
  for (int k = 0; k < n; k++)
    for (int j = 0; j < n; j++)
      for (int i = 0; i < n; i++) {
        int a = (k * n + j) * n + i;
        if (i + 1 < n && fabs(q[a + 1] - q[a]) > SYNTH_REFINE_JUMP) return 1;
        if (j + 1 < n && fabs(q[a + n] - q[a]) > SYNTH_REFINE_JUMP) return 1;
        if (k + 1 < n && fabs(q[a + n * n] - q[a]) > SYNTH_REFINE_JUMP) return 1;
      }
  return 0;
}

void synth_snapshot_free(amrvac_snapshot *s) {
  free(s->leaves);
  free(s->node_bits);
  free(s->w);
  free(s->h.w_names);
  free(s->h.params);
  free(s->h.param_names);
  memset(s, 0, sizeof *s);
}

int synth_build(const synth_params *p, const synth_grid *g, amrvac_snapshot *s) {
  memset(s, 0, sizeof *s);
  CE_TRY(synth_grid_check(g));
  CE_TRY(synth_check(p));
  const int n = g->block_nx, ng = g->base_nx / g->block_nx;
  refine_ctx c = {p, g, 2 * p->half_width / g->base_nx, NULL};
  c.lnrho = ce_malloc_array((size_t)n * n * n, sizeof(double), "refinement scratch");
  if (!c.lnrho) return -1;
  int32_t *bits;
  int64_t nbits, nleafs;
  amrvac_block_id *ids;
  int rc = amrvac_forest_build(3, (int[3]){ng, ng, ng}, g->levels, refine_block, &c, &bits, &nbits,
                               &ids, &nleafs);
  free(c.lnrho);
  CE_TRY(rc);
  if (nleafs > INT32_MAX) {
    free(bits);
    free(ids);
    CE_FAIL("synth: %lld leaves do not fit the file's int32 count", (long long)nleafs);
  }
  amrvac_header *h = &s->h;
  h->version = 5;
  h->ndim = 3;
  h->ndir = 3;
  h->nw = 5;
  h->nleafs = (int)nleafs;
  h->nparents = (int)(nbits - nleafs);
  h->levmax = 1;
  for (int64_t i = 0; i < nleafs; i++)
    if (ids[i].level > h->levmax) h->levmax = ids[i].level;
  for (int d = 0; d < 3; d++) {
    h->xmin[d] = -p->half_width / SYNTH_UNIT_LENGTH;
    h->xmax[d] = p->half_width / SYNTH_UNIT_LENGTH;
    h->domain_nx[d] = g->base_nx;
    h->block_nx[d] = n;
  }
  snprintf(h->geometry, sizeof h->geometry, "Cartesian_3D");
  snprintf(h->physics_type, sizeof h->physics_type, "hd");
  s->node_bits = bits;
  s->leaves = ce_calloc_array((size_t)nleafs, sizeof *s->leaves, "leaves");
  h->w_names = ce_calloc_array(5, sizeof *h->w_names, "variable names");
  h->params = ce_calloc_array(1, sizeof *h->params, "params");
  h->param_names = ce_calloc_array(1, sizeof *h->param_names, "param names");
  const size_t cells = (size_t)n * n * n;
  s->w = ce_malloc_array((size_t)nleafs * 5, cells * sizeof(double), "cell values");
  if (!s->leaves || !h->w_names || !h->params || !h->param_names || !s->w) {
    free(ids);
    synth_snapshot_free(s);
    return -1;
  }
  const char *names[5] = {"rho", "m1", "m2", "m3", "e"};
  for (int i = 0; i < 5; i++) snprintf(h->w_names[i], sizeof h->w_names[i], "%s", names[i]);
  h->n_params = 1;
  h->params[0] = SYNTH_GAMMA;
  snprintf(h->param_names[0], sizeof h->param_names[0], "gamma");

  /* code units: rho_code = n_H / 1e15 = 2 n_H2 / 1e15; v in km/s;
   * p_code = rho_code k_B T / (mu m_H unit_velocity^2) */
  const double kT_unit = SYNTH_KB / (SYNTH_MU * SYNTH_M_H * SYNTH_UNIT_VELOCITY * SYNTH_UNIT_VELOCITY);
  for (int64_t l = 0; l < nleafs; l++) {
    s->leaves[l].id = ids[l];
    double lo[3], dx, width;
    block_bounds(&c, &ids[l], lo, &dx, &width);
    double *w = s->w + (size_t)l * 5 * cells;
    for (int k = 0; k < n; k++)
      for (int j = 0; j < n; j++)
        for (int i = 0; i < n; i++) {
          double x[3] = {lo[0] + (i + 0.5) * dx, lo[1] + (j + 0.5) * dx, lo[2] + (k + 0.5) * dx};
          double nh2, T, v[3];
          synth_eval(p, x, &nh2, &T, v);
          double rho = 2 * nh2 / SYNTH_UNIT_NUMBERDENSITY;
          double vc[3] = {v[0] / SYNTH_UNIT_VELOCITY, v[1] / SYNTH_UNIT_VELOCITY, v[2] / SYNTH_UNIT_VELOCITY};
          double pc = rho * kT_unit * T;
          size_t a = ((size_t)k * n + j) * n + i;
          w[a] = rho;
          w[cells + a] = rho * vc[0];
          w[2 * cells + a] = rho * vc[1];
          w[3 * cells + a] = rho * vc[2];
          w[4 * cells + a] = pc / (SYNTH_GAMMA - 1) +
                             0.5 * rho * (vc[0] * vc[0] + vc[1] * vc[1] + vc[2] * vc[2]);
        }
  }
  free(ids);
  return 0;
}

/* ---- files ----------------------------------------------------------- */

/* The sidecar's text (docs/sidecar.md) of a synth model. */
static int sidecar_text(char *buf, size_t len, const synth_params *p, uint64_t seed,
                        int64_t index) {
  int w = snprintf(buf, len,
                   "# coemu units sidecar, version 1 (docs/sidecar.md)\n"
                   "# written by coemu synth: seed %llu, model %lld (docs/synth.md)\n"
                   "version: 1\n"
                   "unit_system: si\n"
                   "unit_length: %.17g\n"
                   "unit_numberdensity: %.17g\n"
                   "he_abundance: %.17g\n"
                   "unit_velocity: %.17g\n"
                   "mu: %.17g\n"
                   "co_abundance: %.17g\n"
                   "stretched: false\n"
                   "gamma: %.17g\n",
                   (unsigned long long)seed, (long long)index, SYNTH_UNIT_LENGTH,
                   SYNTH_UNIT_NUMBERDENSITY, SYNTH_HE, SYNTH_UNIT_VELOCITY, SYNTH_MU,
                   p->co_abundance, SYNTH_GAMMA);
  if (w < 0 || (size_t)w >= len) CE_FAIL("synth: the sidecar text does not fit");
  return 0;
}

int synth_write_sidecar(const char *path, const synth_params *p, uint64_t seed, int64_t index) {
  char tmp[1100], text[1024];
  if (sidecar_text(text, sizeof text, p, seed, index) < 0) return -1;
  FILE *f;
  CE_TRY(fs_open_tmp(path, tmp, sizeof tmp, &f));
  int ok = fputs(text, f) >= 0;
  return fs_commit_tmp(f, tmp, path, ok);
}

int synth_units(const synth_params *p, uint64_t seed, int64_t index, units *u) {
  char text[1024];
  CE_TRY(sidecar_text(text, sizeof text, p, seed, index));
  return units_parse(text, strlen(text), "(synth units)", u);
}

int synth_model_path(char *buf, size_t len, const char *dir, int64_t index, const char *ext) {
  if ((size_t)snprintf(buf, len, "%s/synth_%05lld%s", dir, (long long)index, ext) >= len)
    CE_FAIL("%s: output path too long", dir);
  return 0;
}

int synth_write_params(const char *dir, uint64_t seed, int64_t index, const synth_params *p,
                       const synth_grid *g, int preview_npix, char *dat_path, size_t dat_len,
                       synth_info *info) {
  char path[1024], side[1024], png[1024];
  CE_TRY(synth_model_path(path, sizeof path, dir, index, ".dat"));
  CE_TRY(synth_model_path(side, sizeof side, dir, index, ".units.yaml"));
  CE_TRY(synth_model_path(png, sizeof png, dir, index, ".png"));
  amrvac_snapshot s;
  if (synth_build(p, g, &s) < 0) return ce_err_prefix("%s", path);
  int rc = amrvac_write(path, &s);
  if (rc == 0) rc = synth_write_sidecar(side, p, seed, index);
  if (rc == 0 && preview_npix > 0) rc = synth_preview_png(png, p, &s, preview_npix);
  if (rc == 0 && info) {
    info->nleafs = s.h.nleafs;
    info->nparents = s.h.nparents;
    info->levmax = s.h.levmax;
    info->ncells = (int64_t)s.h.nleafs * g->block_nx * g->block_nx * g->block_nx;
    info->bytes = s.file_size;
  }
  synth_snapshot_free(&s);
  CE_TRY(rc);
  if (dat_path && (size_t)snprintf(dat_path, dat_len, "%s", path) >= dat_len)
    CE_FAIL("%s: path longer than the %zu-byte buffer", path, dat_len);
  return 0;
}

int synth_write_model(const char *dir, uint64_t seed, int64_t index, const synth_grid *g,
                      char *dat_path, size_t dat_len) {
  synth_params p;
  synth_draw(seed, index, &p);
  return synth_write_params(dir, seed, index, &p, g, 0, dat_path, dat_len, NULL);
}

const char *synth_catalogue_header(void) {
  return "index,seed,file,mdot_kg_s,v_inf_m_s,beta,v_floor_m_s,r_star_m,t_star_K,t_exp,t_floor_K,"
         "co_abundance,m1_kg,m2_kg,period_s,ecc,incl_rad,node_rad,periastron_rad,phase_rad,"
         "arm_contrast,arm_width,arm_dv_r_m_s,plane_contrast,plane_width,half_width_m,sep_m,"
         "arm_spacing_m,arm_dv_t_m_s,comp_x_m,comp_y_m,comp_z_m,nleafs,levmax,ncells,bytes";
}

int synth_catalogue_row(char *buf, size_t len, int64_t index, uint64_t seed, const char *file,
                        const synth_params *p, const synth_info *info) {
  synth_info none = {0, 0, 0, 0, 0};
  if (!info) info = &none;
  int n = snprintf(buf, len,
                   "%lld,%llu,%s,%.17g,%.17g,%.17g,%.17g,%.17g,%.17g,%.17g,%.17g,%.17g,%.17g,"
                   "%.17g,%.17g,%.17g,%.17g,%.17g,%.17g,%.17g,%.17g,%.17g,%.17g,%.17g,%.17g,"
                   "%.17g,%.17g,%.17g,%.17g,%.17g,%.17g,%.17g,%d,%d,%lld,%lld",
                   (long long)index, (unsigned long long)seed, file, p->mdot, p->v_inf, p->beta,
                   p->v_floor, p->r_star, p->t_star, p->t_exp, p->t_floor, p->co_abundance, p->m1,
                   p->m2, p->period, p->ecc, p->incl, p->node, p->periastron, p->phase,
                   p->arm_contrast, p->arm_width, p->arm_dv_r, p->plane_contrast, p->plane_width,
                   p->half_width, p->sep, p->arm_spacing, p->arm_dv_t, p->comp_pos[0],
                   p->comp_pos[1], p->comp_pos[2], info->nleafs, info->levmax,
                   (long long)info->ncells, (long long)info->bytes);
  if (n < 0 || (size_t)n >= len) CE_FAIL("catalogue row of model %lld longer than %zu bytes", (long long)index, len);
  return 0;
}

/* ---- preview --------------------------------------------------------- */

static uint64_t leaf_key(int level, int i, int j, int k) {
  return (uint64_t)level << 57 | (uint64_t)i << 38 | (uint64_t)j << 19 | (uint64_t)k;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

int synth_preview_png(const char *path, const synth_params *p, const amrvac_snapshot *s, int npix) {
  const amrvac_header *h = &s->h;
  const int n = h->block_nx[0];
  const size_t cells = (size_t)n * n * n;
  const int64_t nl = h->nleafs;
  /* sorted (level, ig) keys with the leaf index in the low bits of a second array */
  uint64_t *keys = ce_malloc_array((size_t)nl, 2 * sizeof(uint64_t), "preview index");
  double *img = ce_malloc_array((size_t)npix * npix, sizeof(double), "preview image");
  if (!keys || !img) {
    free(keys);
    free(img);
    return -1;
  }
  for (int64_t l = 0; l < nl; l++) {
    const amrvac_block_id *id = &s->leaves[l].id;
    keys[2 * l] = leaf_key(id->level, id->ig[0], id->ig[1], id->ig[2]);
    keys[2 * l + 1] = (uint64_t)l;
  }
  qsort(keys, (size_t)nl, 2 * sizeof(uint64_t), cmp_u64);
  const double L = p->half_width / SYNTH_UNIT_LENGTH; /* code units */
  const double dx1 = 2 * L / h->domain_nx[0];
  for (int b = 0; b < npix; b++)
    for (int a = 0; a < npix; a++) {
      double u = L * ((a + 0.5) / npix * 2 - 1), v = L * ((b + 0.5) / npix * 2 - 1);
      double x[3];
      int inside = 1;
      for (int d = 0; d < 3; d++) {
        x[d] = u * p->e1[d] + v * p->e2[d];
        if (!(fabs(x[d]) < L)) inside = 0;
      }
      double val = NAN;
      for (int lev = 1; inside && lev <= h->levmax; lev++) {
        double dx = dx1 / (double)(1 << (lev - 1));
        int c[3], ig[3];
        for (int d = 0; d < 3; d++) {
          c[d] = (int)floor((x[d] + L) / dx);
          int nmax = h->domain_nx[d] << (lev - 1);
          if (c[d] >= nmax) c[d] = nmax - 1;
          ig[d] = c[d] / n + 1;
        }
        uint64_t key[2] = {leaf_key(lev, ig[0], ig[1], ig[2]), 0};
        uint64_t *hit = bsearch(key, keys, (size_t)nl, 2 * sizeof(uint64_t), cmp_u64);
        if (!hit) continue;
        size_t a3 = ((size_t)(c[2] % n) * n + (size_t)(c[1] % n)) * n + (size_t)(c[0] % n);
        val = s->w[(size_t)hit[1] * 5 * cells + a3] * SYNTH_UNIT_NUMBERDENSITY / 2;
        break;
      }
      img[(size_t)b * npix + a] = val;
    }
  free(keys);
  ce_map2d m = {img, npix, npix, 1, npix};
  char title[512]; /* the model's name: the file's, without ".png" */
  const char *base = strrchr(path, '/'), *dot = strrchr(path, '.');
  base = base ? base + 1 : path;
  snprintf(title, sizeof title, "%.*s: n_H2 in the orbital plane, %.0f au across",
           (int)(dot && dot > base ? dot - base : (ptrdiff_t)strlen(base)), base,
           2 * p->half_width / 149597870700.0);
  ce_panel_style st = {.cmap = CE_CMAP_INFERNO, .log_scale = 1, .scale = 1, .shared_range = 1,
                       .title = title, .colorbar = 1, .bar_label = "n_H2 [m^-3] (log scale)"};
  int rc = ce_write_panels_png(path, &m, 1, &st);
  free(img);
  return rc;
}
