/* nlte_lvg.c - per-cell LVG populations in 3-D (nlte_lvg.h, docs/nlte.md). */
#include "solver/nlte_lvg.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "common/error.h"
#include "common/vecmath.h"

#define LVG_AMU_G 1.66053906660e-24 /* atomic mass unit [g] */

void nlte_lvg_options_default(nlte_lvg_options *o) {
  memset(o, 0, sizeof *o);
  o->ndir = NLTE_LVG_DEFAULT_DIR;
  o->escape = NLTE_ESC_SOBOLEV;
  o->t_bg = NLTE_T_CMB;
  o->tol = 1e-8;
  o->max_iter = 1000;
}

int nlte_lvg_escape_parse(const char *s) {
  if (strcasecmp(s, "sobolev") == 0) return NLTE_ESC_SOBOLEV;
  if (strcasecmp(s, "radex") == 0) return NLTE_ESC_RADEX;
  return -1;
}

const char *nlte_lvg_escape_name(nlte_lvg_escape e) {
  return e == NLTE_ESC_SOBOLEV ? "sobolev" : e == NLTE_ESC_RADEX ? "radex" : "?";
}

double nlte_esc_sobolev(double tau, double *dbeta) {
  double x = fabs(tau), sg = tau < 0 ? -1.0 : 1.0, b, d;
  if (x < 1e-4) { /* series: the next terms are below 1e-18 */
    b = 1.0 - x * (0.5 - x * (1.0 / 6.0 - x / 24.0));
    d = -0.5 + x * (1.0 / 3.0 - x * (0.125 - x / 30.0));
  } else {
    double e = exp(-x), om = x < 0.5 ? -expm1(-x) : 1.0 - e; /* 1 - e exact enough from 0.5 on */
    b = om / x;
    d = (x * e - om) / (x * x);
  }
  if (dbeta) *dbeta = sg * d;
  return b;
}

/* The direction mean of the Sobolev escape probability, 8 directions at a
 * time (nlte_dirs.mean): the same formulas as nlte_esc_sobolev, with
 * e^-x = 1 - (1 - e^-x) from one expm1 (libmvec's on AVX-512 and AVX2
 * builds: common/vecmath.h), on the host's vectors, 8 partial sums on
 * every host. w, q padded to a multiple of 8 (q = 0, w = 1). */
static double sobolev_mean(const nlte_dirs *d, double tau, double *dbeta) {
  typedef vm_vd vd;
  typedef vm_vl vl;
  enum { NACC = 8 / VM_ND }; /* 8 partial sums on every host, VM_ND a vector */
  const double x0 = fabs(tau);
  vd sb[NACC], sd[NACC];
  for (int p = 0; p < NACC; p++) sb[p] = sd[p] = (vd){0};
  for (int k0 = 0; k0 < d->ndir; k0 += 8)
    for (int p = 0; p < NACC; p++) {
      const int k = k0 + p * VM_ND;
      vd w, q;
      memcpy(&w, d->w + k, sizeof w);
      memcpy(&q, d->q + k, sizeof q);
      vd x = x0 * w;
      vl small = x < 1e-4;
      vd om = -vm_expm1(-x), e = 1.0 - om;
      vd xs = (vd)((vl)x | (small & (vl)(x - x + 1.0))); /* x, or 1 where small (no 0/0) */
      vd b = om / xs, dd = (xs * e - om) / (xs * xs);
      vd bs = 1.0 - x * (0.5 - x * (1.0 / 6.0 - x / 24.0));
      vd ds = -0.5 + x * (1.0 / 3.0 - x * (0.125 - x / 30.0));
      b = (vd)((small & (vl)bs) | (~small & (vl)b));
      dd = (vd)((small & (vl)ds) | (~small & (vl)dd));
      sb[p] += q * b;
      sd[p] += q * (w * dd);
    }
  double b = 0, db = 0;
  for (int p = 0; p < NACC; p++)
    for (int i = 0; i < VM_ND; i++) b += sb[p][i], db += sd[p][i];
  if (dbeta) *dbeta = tau < 0 ? -db : db;
  return b;
}

double nlte_esc_radex_lvg(double tau, double *dbeta) { return nlte_beta(NLTE_LVG, tau, dbeta); }

/* Gauss-Legendre nodes and weights on (0, 1), m points (Newton on P_m). */
static void gauss01(int m, double *x, double *w) {
  for (int i = 0; i < m; i++) {
    double z = cos(M_PI * (i + 0.75) / (m + 0.5)), pp = 1;
    for (int it = 0; it < 100; it++) {
      double p1 = 1, p2 = 0;
      for (int j = 1; j <= m; j++) {
        double p3 = p2;
        p2 = p1;
        p1 = ((2.0 * j - 1) * z * p2 - (j - 1.0) * p3) / j;
      }
      pp = m * (z * p1 - p2) / (z * z - 1);
      double dz = p1 / pp;
      z -= dz;
      if (fabs(dz) < 1e-16) break;
    }
    x[i] = 0.5 * (1 - z);
    w[i] = 1.0 / ((1 - z * z) * pp * pp); /* 2/((1-z^2)P'^2), halved for (0, 1) */
  }
}

int nlte_lvg_directions(int ndir, double *n, double *q) {
  if (ndir == 3) {
    static const double ax[9] = {1, 0, 0, 0, 1, 0, 0, 0, 1};
    memcpy(n, ax, sizeof ax);
    for (int k = 0; k < 3; k++) q[k] = 1.0 / 3.0;
    return 0;
  }
  int m = (int)lround(sqrt(ndir / 2.0));
  if (ndir < 2 || ndir > NLTE_LVG_MAX_DIR || 2 * m * m != ndir)
    CE_FAIL("nlte lvg: %d directions, expected 3 (the axes) or 2 m^2 <= %d (8, 18, 32, 50, 72, ...)",
            ndir, NLTE_LVG_MAX_DIR);
  double zx[32], zw[32];
  gauss01(m, zx, zw);
  for (int i = 0, k = 0; i < m; i++)
    for (int j = 0; j < 2 * m; j++, k++) {
      double z = zx[i], s = sqrt(fmax(0.0, 1.0 - z * z));
      double ph = M_PI * (j + 0.5 * (i & 1)) / m; /* 2m azimuths, staggered per ring */
      n[3 * k] = s * cos(ph);
      n[3 * k + 1] = s * sin(ph);
      n[3 * k + 2] = z;
      q[k] = zw[i] / (2 * m);
    }
  return 0;
}

/* Input checks, serial, before any solving: the lowest bad index; with a
 * scan, every cell (nlte_lvg.h). */
int nlte_lvg_cells_check(const nlte_lvg_cells *C, int64_t *bad_cell, nlte_lvg_scan *scan) {
  char msg[256] = "";
  int64_t first = -1;
  if (scan) scan->bad = 0, scan->t_min = INFINITY, scan->t_max = -INFINITY;
  for (int64_t c = 0; c < C->ncell; c++) {
    const char *what = NULL, *expect = NULL;
    double v = 0;
    if (scan && C->t_kin[c] == C->t_kin[c]) {
      if (C->t_kin[c] < scan->t_min) scan->t_min = C->t_kin[c];
      if (C->t_kin[c] > scan->t_max) scan->t_max = C->t_kin[c];
    }
    if (!(C->t_kin[c] >= NLTE_T_KIN_MIN && C->t_kin[c] <= NLTE_T_KIN_MAX))
      what = "T_kin", v = C->t_kin[c], expect = "0.1 .. 1e4 K";
    else if (!(C->n_h2[c] > 0 && isfinite(C->n_h2[c])))
      what = "n_H2", v = C->n_h2[c], expect = "> 0 cm^-3 and finite (the collision partner)";
    else if (!(C->n_mol[c] >= 0 && isfinite(C->n_mol[c])))
      what = "n_mol", v = C->n_mol[c], expect = ">= 0 cm^-3 and finite";
    else if (C->length && !(C->length[c] > 0 && isfinite(C->length[c])))
      what = "length", v = C->length[c], expect = "> 0 cm and finite";
    else
      for (int k = 0; k < 9 && !what; k++)
        if (!isfinite(C->grad_v[9 * c + k]))
          what = "grad_v", v = C->grad_v[9 * c + k], expect = "finite [s^-1]";
    if (!what) continue;
    if (first < 0) {
      first = c;
      snprintf(msg, sizeof msg, "cell %lld: %s = %g, expected %s", (long long)c, what, v, expect);
    }
    if (!scan) break;
    scan->bad++;
  }
  if (bad_cell) *bad_cell = first;
  if (first >= 0) CE_FAIL("%s", msg);
  return 0;
}

typedef struct {
  int64_t cell; /* lowest failing cell, INT64_MAX: none */
  char msg[512];
} lvg_fail;

int nlte_lvg_solve(const nlte_model *M, const nlte_lvg_cells *C, const nlte_lvg_options *o,
                   nlte_lvg_out *out) {
  out->iterations = out->cold_starts = out->warm_redone = 0;
  out->max_iterations = 0;
  out->bad_cell = -1;
  nlte_lvg_options def;
  if (!o) nlte_lvg_options_default(&def), o = &def;
  const int64_t N = C->ncell;
  if (N < 0 || (N > 0 && (!C->t_kin || !C->n_h2 || !C->n_mol || !C->grad_v)))
    CE_FAIL("nlte lvg: %lld cells, or a missing input array (t_kin, n_h2, n_mol, grad_v)",
            (long long)N);
  if (o->escape != NLTE_ESC_SOBOLEV && o->escape != NLTE_ESC_RADEX)
    CE_FAIL("nlte lvg: escape %d, expected 0 (sobolev) or 1 (radex)", (int)o->escape);
  if (!(o->vturb_kms >= 0 && isfinite(o->vturb_kms)))
    CE_FAIL("nlte lvg: vturb = %g km/s, expected >= 0", o->vturb_kms);
  if (!C->length && !(o->length_cm > 0 && isfinite(o->length_cm)))
    CE_FAIL("nlte lvg: no cell lengths and a clamp length of %g cm, expected > 0", o->length_cm);
  if (!(o->t_bg >= 0 && isfinite(o->t_bg))) CE_FAIL("nlte lvg: T_bg = %g K, expected >= 0", o->t_bg);
  if (out->line < 0 || out->line > M->nline)
    CE_FAIL("nlte lvg: line %d, expected 1..%d (or 0: none)", out->line, M->nline);
  if (!(M->mol->weight > 0))
    CE_FAIL("nlte lvg: %s: molecular weight %g, expected > 0 (the thermal width)", M->mol->name,
            M->mol->weight);
  double dirs[3 * NLTE_LVG_MAX_DIR], qw[NLTE_LVG_MAX_DIR + 8];
  CE_TRY(nlte_lvg_directions(o->ndir, dirs, qw));
  for (int d = o->ndir; d < NLTE_LVG_MAX_DIR + 8; d++) qw[d] = 0; /* sobolev_mean's padding */
  if (C->order) { /* a permutation: every index once */
    unsigned char *seen = calloc((size_t)N + 1, 1);
    if (!seen) CE_FAIL("nlte lvg: out of memory");
    for (int64_t i = 0; i < N; i++) {
      int64_t c = C->order[i];
      if (c < 0 || c >= N || seen[c]) {
        free(seen);
        CE_FAIL("nlte lvg: order[%lld] = %lld: not a permutation of 0..%lld", (long long)i,
                (long long)c, (long long)N - 1);
      }
      seen[c] = 1;
    }
    free(seen);
  }
  CE_TRY(nlte_lvg_cells_check(C, &out->bad_cell, NULL));
  if (N == 0) return 0;

  const int nlev = M->nlev, line = out->line - 1;
  const int64_t chunk = C->chunk > 0 ? C->chunk : NLTE_LVG_DEFAULT_CHUNK;
  const int64_t nchunk = (N + chunk - 1) / chunk;
  const double two_k_m = 2.0 * NLTE_KB_CGS / (M->mol->weight * LVG_AMU_G); /* [cm^2 s^-2 K^-1] */
  const double vt2 = (o->vturb_kms * 1e5) * (o->vturb_kms * 1e5);
  double (*esc)(double, double *) = o->escape == NLTE_ESC_RADEX ? nlte_esc_radex_lvg : nlte_esc_sobolev;
  /* the thin-line shortcut (nlte_dirs): Sobolev's series below 1e-4 (as
   * nlte_esc_sobolev), RADEX's constant 1 below |tau/2| = 0.01 (less its
   * ramp) */
  const double thin_x = o->escape == NLTE_ESC_RADEX ? 0.02 * (1.0 - 1e-3) : 1e-4;
  const double ser[4] = {1.0, o->escape == NLTE_ESC_RADEX ? 0.0 : -0.5,
                         o->escape == NLTE_ESC_RADEX ? 0.0 : 1.0 / 6.0,
                         o->escape == NLTE_ESC_RADEX ? 0.0 : -1.0 / 24.0};
  const nlte_options nopt_cold = {o->tol, o->max_iter};
  const nlte_options nopt_warm = {o->tol, o->max_iter < NLTE_LVG_WARM_ITER ? o->max_iter : NLTE_LVG_WARM_ITER};
  int nt = 1;
#ifdef _OPENMP
  nt = o->threads > 0 ? o->threads : omp_get_max_threads();
#endif
  lvg_fail fail = {INT64_MAX, ""};
  int64_t iters = 0, colds = 0, redone = 0;
  int maxit = 0, alloc_failed = 0;
#pragma omp parallel num_threads(nt) reduction(+ : iters, colds, redone) reduction(max : maxit)
  {
    nlte_result r;
    double *prev = malloc(sizeof(double) * (size_t)nlev);
    double w[NLTE_LVG_MAX_DIR + 8];
    for (int d = 0; d < NLTE_LVG_MAX_DIR + 8; d++) w[d] = 1.0; /* padding: q = 0 there */
    int ok = nlte_result_init(&r, M) == 0 && prev;
    if (!ok) {
#pragma omp atomic write
      alloc_failed = 1;
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t ch = 0; ch < nchunk; ch++) {
      if (!ok) continue;
      int64_t end = (ch + 1) * chunk < N ? (ch + 1) * chunk : N;
      int have_prev = 0;
      for (int64_t i = ch * chunk; i < end; i++) {
        int64_t c = C->order ? C->order[i] : i;
        const double *G = C->grad_v + 9 * c;
        double T = C->t_kin[c], len = C->length ? C->length[c] : o->length_cm;
        double gmin = sqrt(two_k_m * T + vt2) / len;
        for (int d = 0; d < o->ndir; d++) {
          const double *n = dirs + 3 * d;
          double g = 0;
          for (int a = 0; a < 3; a++)
            g += n[a] * (G[3 * a] * n[0] + G[3 * a + 1] * n[1] + G[3 * a + 2] * n[2]);
          g = fabs(g);
          w[d] = 1.0 / (g > gmin ? g : gmin);
        }
        nlte_conditions cond;
        nlte_conditions_default(&cond);
        cond.t_kin = T;
        cond.density[NLTE_H2] = C->n_h2[c];
        cond.t_bg = o->t_bg;
        nlte_dirs D = {o->ndir, w, qw, esc, NLTE_FGAUS_FAC * C->n_mol[c], have_prev ? prev : NULL,
                       .thin_x = thin_x, .c = {1.0, ser[1], ser[2], ser[3]},
                       .mean = o->escape == NLTE_ESC_SOBOLEV ? sobolev_mean : NULL};
        for (int d = 0; d < o->ndir; d++) {
          double wd = w[d];
          D.wmax = wd > D.wmax ? wd : D.wmax;
          D.m[1] += qw[d] * wd, D.m[2] += qw[d] * (wd * wd), D.m[3] += qw[d] * (wd * wd * wd);
        }
        int rc = -1;
        if (have_prev) {
          rc = nlte_solve_dirs(M, &cond, &nopt_warm, &D, &r);
          if (rc < 0) redone++;
        }
        if (rc < 0) {
          D.x0 = NULL;
          colds++;
          rc = nlte_solve_dirs(M, &cond, &nopt_cold, &D, &r);
        }
        if (rc < 0) {
#pragma omp critical(nlte_lvg_fail)
          if (c < fail.cell) {
            fail.cell = c;
            snprintf(fail.msg, sizeof fail.msg, "%s", ce_err_msg());
          }
          have_prev = 0;
          continue;
        }
        iters += r.iterations;
        if (r.iterations > maxit) maxit = r.iterations;
        memcpy(prev, r.pop, sizeof(double) * (size_t)nlev);
        have_prev = 1;
        if (out->pop) memcpy(out->pop + (size_t)c * nlev, r.pop, sizeof(double) * (size_t)nlev);
        if (line >= 0) {
          if (out->x_l) out->x_l[c] = r.pop[M->lo[line]];
          if (out->x_u) out->x_u[c] = r.pop[M->up[line]];
          if (out->tex) out->tex[c] = r.tex[line];
        }
      }
    }
    if (ok) nlte_result_free(&r);
    else if (r.pop) nlte_result_free(&r);
    free(prev);
  }
  out->iterations = iters;
  out->cold_starts = colds;
  out->warm_redone = redone;
  out->max_iterations = maxit;
  if (alloc_failed) CE_FAIL("nlte lvg: out of memory for the per-thread work arrays");
  if (fail.cell != INT64_MAX) {
    out->bad_cell = fail.cell;
    CE_FAIL("cell %lld (T_kin %g K, n_H2 %g cm^-3, n_mol %g cm^-3): %s", (long long)fail.cell,
            C->t_kin[fail.cell], C->n_h2[fail.cell], C->n_mol[fail.cell], fail.msg);
  }
  return 0;
}
