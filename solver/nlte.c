/* nlte.c - one-zone statistical equilibrium with escape probabilities
 * (nlte.h, docs/nlte.md). */
#include "solver/nlte.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <strings.h>

#include "common/error.h"

#define NLTE_MINPOP 1e-20 /* RADEX's minpop: smaller populations do not steer convergence */

static const char *const partner_names[NLTE_NPARTNER] = {"", "H2", "pH2", "oH2", "e", "H", "He", "H+"};

const char *nlte_partner_name(int id) {
  return id >= 1 && id < NLTE_NPARTNER ? partner_names[id] : "?";
}

int nlte_partner_id(const char *name) {
  static const struct { const char *s; int id; } alias[] = {
      {"h2", 1}, {"ph2", 2}, {"p-h2", 2}, {"oh2", 3}, {"o-h2", 3}, {"e", 4}, {"e-", 4},
      {"h", 5}, {"he", 6}, {"h+", 7}, {"hp", 7}};
  for (size_t i = 0; i < sizeof alias / sizeof alias[0]; i++)
    if (strcasecmp(name, alias[i].s) == 0) return alias[i].id;
  return -1;
}

const char *nlte_geometry_name(nlte_geometry g) {
  return g == NLTE_SPHERE ? "sphere" : g == NLTE_LVG ? "lvg" : g == NLTE_SLAB ? "slab" : "?";
}

int nlte_geometry_parse(const char *s) {
  if (strcasecmp(s, "sphere") == 0 || strcmp(s, "1") == 0) return NLTE_SPHERE;
  if (strcasecmp(s, "lvg") == 0 || strcmp(s, "2") == 0) return NLTE_LVG;
  if (strcasecmp(s, "slab") == 0 || strcmp(s, "3") == 0) return NLTE_SLAB;
  return -1;
}

void nlte_conditions_default(nlte_conditions *c) {
  memset(c, 0, sizeof *c);
  c->geometry = NLTE_SPHERE;
  c->t_bg = NLTE_T_CMB;
}

/* ---- escape probabilities (RADEX's escprob, with its branches) ---- */

/* Branch k of geometry g at tau: beta and d beta / d tau. RADEX picks the
 * branch by |x| (x = tau/2 for the spheres, 3 tau for the slab) against the
 * bounds below. */
static double beta_branch(nlte_geometry geom, int k, double tau, double *dbeta) {
  double b, d;
  if (geom == NLTE_SPHERE) { /* uniform sphere (Osterbrock), t = tau/2 */
    double t = 0.5 * tau;
    if (k == 0) {
      b = 1.0 - 0.75 * t + t * t / 2.5 - t * t * t / 6.0 + t * t * t * t / 17.5;
      d = -0.75 + 2.0 * t / 2.5 - t * t / 2.0 + 4.0 * t * t * t / 17.5;
    } else if (k == 1) {
      double e = exp(fmin(-2.0 * t, 700.0)), it = 1.0 / t, it2 = it * it;
      double gg = 1.0 - 0.5 * it2 + (it + 0.5 * it2) * e;
      double gp = it2 * it - e * (2.0 * it + 2.0 * it2 + it2 * it);
      b = 0.75 * it * gg;
      d = 0.75 * (gp * it - gg * it2);
    } else {
      b = 0.75 / t;
      d = -0.75 / (t * t);
    }
    d *= 0.5;
  } else if (geom == NLTE_LVG) { /* expanding sphere (de Jong et al. 1980, x2), t = tau/2 */
    double t = 0.5 * tau;
    if (k == 0) {
      b = 1.0;
      d = 0.0;
    } else if (k == 1) {
      double a = 2.34, e = exp(fmin(-a * t, 50.0));
      b = (1.0 - e) / (a * t);
      d = (a * t * e - (1.0 - e)) / (a * t * t);
    } else {
      double L = log(t / sqrt(M_PI));
      b = 1.0 / (2.0 * t * sqrt(L));
      d = -b / t * (1.0 + 0.5 / L);
    }
    d *= 0.5;
  } else { /* slab (de Jong, Dalgarno & Chu 1975); the thin branch is RADEX's */
    if (k == 0) {
      b = 1.0 - 1.5 * (tau + tau * tau);
      d = -1.5 * (1.0 + 2.0 * tau);
    } else if (k == 1) {
      double e = exp(fmin(-3.0 * tau, 700.0));
      b = (1.0 - e) / (3.0 * tau);
      d = (3.0 * tau * e - (1.0 - e)) / (3.0 * tau * tau);
    } else {
      b = 1.0 / (3.0 * tau);
      d = -1.0 / (3.0 * tau * tau);
    }
  }
  *dbeta = d;
  return b;
}

/* RADEX's branches jump at some bounds (LVG: 1.2 % at |tau/2| = 0.01). A
 * jump can leave the equations without a root, so within a relative width
 * NLTE_RAMP below each bound beta goes linearly from one branch to the next. */
#define NLTE_RAMP 1e-3

double nlte_beta(nlte_geometry geom, double tau, double *dbeta) {
  double x, dxdt, b0, b1;
  if (geom == NLTE_SPHERE) x = 0.5 * tau, dxdt = 0.5, b0 = 0.1, b1 = 50.0;
  else if (geom == NLTE_LVG) x = 0.5 * tau, dxdt = 0.5, b0 = 0.01, b1 = tau < 0 ? INFINITY : 7.0;
  else x = 3.0 * tau, dxdt = 3.0, b0 = 0.1, b1 = 50.0;
  double ax = fabs(x), sg = x < 0 ? -1.0 : 1.0;
  int k = ax < b0 ? 0 : ax < b1 ? 1 : 2;
  double d, b = beta_branch(geom, k, tau, &d);
  double bound = k == 0 ? b0 : b1;
  int ramp = k < 2 && !(geom == NLTE_SPHERE && k == 0) && ax > bound * (1.0 - NLTE_RAMP);
  if (ramp) { /* blend into the next branch */
    double d2, b2 = beta_branch(geom, k + 1, tau, &d2);
    double w = (ax - bound * (1.0 - NLTE_RAMP)) / (bound * NLTE_RAMP);
    double dw = sg * dxdt / (bound * NLTE_RAMP);
    d = (1.0 - w) * d + w * d2 + (b2 - b) * dw;
    b = (1.0 - w) * b + w * b2;
  }
  if (dbeta) *dbeta = d;
  return b;
}

/* The table column i and weight f of T: rate = row[i] + f (row[i+1] - row[i])
 * (f = 0 and i the first or last column outside the table). */
static void coll_interval(const lamda_partner *p, double t, int *ci, double *cf) {
  int n = p->ntemp, i = 0;
  *cf = 0;
  if (n <= 1 || t <= p->temps[0]) {
    *ci = 0;
    return;
  }
  if (t >= p->temps[n - 1]) {
    *ci = n - 1;
    return;
  }
  while (i < n - 2 && t > p->temps[i + 1]) i++;
  *ci = i;
  *cf = (t - p->temps[i]) / (p->temps[i + 1] - p->temps[i]);
}

static double coll_at(const lamda_partner *p, int k, int i, double f) {
  const double *row = p->rates + (size_t)k * p->ntemp;
  return f == 0 ? row[i] : row[i] + f * (row[i + 1] - row[i]);
}

double nlte_coll_rate(const lamda_partner *p, int k, double t) {
  int i;
  double f;
  coll_interval(p, t, &i, &f);
  return coll_at(p, k, i, f);
}

/* ---- model and result ---- */

int nlte_model_init(nlte_model *M, const lamda_molecule *mol) {
  memset(M, 0, sizeof *M);
  if (!mol || mol->nlev < 2 || mol->nline < 1)
    CE_FAIL("nlte: molecule '%s' has %d levels and %d lines, expected >= 2 and >= 1",
            mol ? mol->name : "(null)", mol ? mol->nlev : 0, mol ? mol->nline : 0);
  M->mol = mol;
  M->nlev = mol->nlev;
  M->nline = mol->nline;
  int n = M->nlev, L = M->nline;
  M->xnu = ce_malloc_array((size_t)L, sizeof(double), "nlte lines");
  M->gu_gl = ce_malloc_array((size_t)L, sizeof(double), "nlte lines");
  M->up = ce_malloc_array((size_t)L, sizeof(int), "nlte lines");
  M->lo = ce_malloc_array((size_t)L, sizeof(int), "nlte lines");
  M->ecm = ce_malloc_array((size_t)n, sizeof(double), "nlte levels");
  M->g = ce_malloc_array((size_t)n, sizeof(double), "nlte levels");
  if (!M->xnu || !M->gu_gl || !M->up || !M->lo || !M->ecm || !M->g) {
    nlte_model_free(M);
    return -1;
  }
  for (int i = 0; i < n; i++) {
    if (mol->levels[i].index != i + 1) {
      nlte_model_free(M);
      CE_FAIL("nlte: %s: level %d is numbered %d, expected levels 1..%d in order", mol->name, i + 1,
              mol->levels[i].index, n);
    }
    M->ecm[i] = mol->levels[i].energy_cm;
    M->g[i] = mol->levels[i].weight;
  }
  for (int l = 0; l < L; l++) {
    const lamda_line *ln = &mol->lines[l];
    M->up[l] = ln->upper - 1;
    M->lo[l] = ln->lower - 1;
    M->xnu[l] = M->ecm[M->up[l]] - M->ecm[M->lo[l]];
    M->gu_gl[l] = M->g[M->up[l]] / M->g[M->lo[l]];
    if (!(M->xnu[l] > 0)) {
      nlte_model_free(M);
      CE_FAIL("nlte: %s: line %d (%d -> %d): E_up - E_low = %g cm^-1, expected > 0", mol->name,
              ln->index, ln->upper, ln->lower, M->xnu[l]);
    }
  }
  for (int p = 0; p < mol->npart; p++) {
    int id = mol->partners[p].id;
    if (id >= 1 && id < NLTE_NPARTNER && !M->has[id]) M->has[id] = p + 1;
  }
  return 0;
}

void nlte_model_free(nlte_model *M) {
  free(M->xnu);
  free(M->gu_gl);
  free(M->up);
  free(M->lo);
  free(M->ecm);
  free(M->g);
  memset(M, 0, sizeof *M);
}

/* Row stride of the LU's augmented matrix [a | b]: n + 1 rounded up to 8
 * doubles (one AVX-512 vector, two AVX ones), rows 64-byte aligned. */
static int lu_ld(int n) { return (n + 1 + 7) & ~7; }

int nlte_result_init(nlte_result *r, const nlte_model *M) {
  memset(r, 0, sizeof *r);
  r->nlev = M->nlev;
  r->nline = M->nline;
  size_t n = (size_t)M->nlev, L = (size_t)M->nline;
  r->pop = ce_calloc_array(n + 6 * L, sizeof(double), "nlte result");
  /* C, J, Lm, Lc (n x n), x, f, dx, xt (n), the LU's augmented matrix (64-byte aligned) */
  r->work = ce_calloc_array(4 * n * n + 4 * n + n * (size_t)lu_ld((int)n) + 8, sizeof(double), "nlte work");
  r->ipiv = ce_calloc_array(n, sizeof(int), "nlte work");
  if (!r->pop || !r->work || !r->ipiv) {
    nlte_result_free(r);
    return -1;
  }
  r->tex = r->pop + n;
  r->tau = r->tex + L;
  r->beta = r->tau + L;
  r->t_r = r->beta + L;
  r->flux_kkms = r->t_r + L;
  r->flux_erg = r->flux_kkms + L;
  return 0;
}

void nlte_result_free(nlte_result *r) {
  free(r->pop);
  free(r->work);
  free(r->ipiv);
  memset(r, 0, sizeof *r);
}

/* ---- the solver ---- */

/* LU with partial pivoting of the n x n row-major a, then solve a x = b in
 * place. -1 if singular. */
/* Solve a x = b (a: n x n, row-major, not modified) into b, by Gaussian
 * elimination with partial pivoting on the augmented matrix [a | b] in w
 * (n lu_ld(n) doubles, 64-byte aligned). Every row update runs over whole
 * vectors, from column (k + 1) rounded down to 8 up to the padded width: the
 * extra columns on the left are those already eliminated (set to 0 after each
 * update, as elimination makes them), the ones on the right zeros, so the
 * arithmetic on the live entries (and the result) is the same as the
 * textbook loop's, bit for bit. -1 if a pivot is 0. */
static int lu_solve(const double *a, double *b, int *piv, int n, double *w) {
  const int ld = lu_ld(n);
  double *m = __builtin_assume_aligned(w, 64);
  for (int i = 0; i < n; i++) {
    double *mi = m + (size_t)i * ld;
    memcpy(mi, a + (size_t)i * n, sizeof(double) * (size_t)n);
    mi[n] = b[i];
    for (int j = n + 1; j < ld; j++) mi[j] = 0.0;
  }
  for (int k = 0; k < n; k++) {
    int p = k;
    double amax = fabs(m[(size_t)k * ld + k]);
    for (int i = k + 1; i < n; i++) {
      double v = fabs(m[(size_t)i * ld + k]);
      if (v > amax) amax = v, p = i;
    }
    if (!(amax > 0)) return -1;
    piv[k] = p;
    if (p != k)
      for (int j = 0; j < ld; j++) {
        double t = m[(size_t)k * ld + j];
        m[(size_t)k * ld + j] = m[(size_t)p * ld + j];
        m[(size_t)p * ld + j] = t;
      }
    const double *rk = __builtin_assume_aligned(m + (size_t)k * ld, 64);
    double inv = 1.0 / rk[k];
    int j0 = (k + 1) & ~7;
    for (int i = k + 1; i < n; i++) {
      double *ri = __builtin_assume_aligned(m + (size_t)i * ld, 64);
      double f = ri[k] * inv;
      if (f == 0) continue;
      for (int j = j0; j < ld; j += 8)
        for (int q = 0; q < 8; q++) ri[j + q] -= f * rk[j + q];
      ri[k] = 0.0;
    }
  }
  for (int i = n - 1; i >= 0; i--) {
    const double *mi = m + (size_t)i * ld;
    double s = mi[n];
    for (int j = i + 1; j < n; j++) s -= mi[j] * b[j];
    b[i] = s / mi[i];
  }
  return 0;
}

static int check_conditions(const nlte_model *M, const nlte_conditions *c, double *dens, int lvg3d) {
  const char *mol = M->mol->name;
  if (!(c->t_kin >= NLTE_T_KIN_MIN && c->t_kin <= NLTE_T_KIN_MAX))
    CE_FAIL("nlte: %s: T_kin = %g K, expected 0.1 .. 1e4 K (RADEX's range)", mol, c->t_kin);
  if (!lvg3d && !(c->column > 0 && isfinite(c->column)))
    CE_FAIL("nlte: %s: column density = %g cm^-2, expected > 0", mol, c->column);
  if (!lvg3d && !(c->fwhm_kms > 0 && isfinite(c->fwhm_kms)))
    CE_FAIL("nlte: %s: line width = %g km/s, expected > 0", mol, c->fwhm_kms);
  if (!(c->t_bg >= 0 && isfinite(c->t_bg)))
    CE_FAIL("nlte: %s: T_bg = %g K, expected >= 0", mol, c->t_bg);
  if (!lvg3d && c->geometry != NLTE_SPHERE && c->geometry != NLTE_LVG && c->geometry != NLTE_SLAB)
    CE_FAIL("nlte: geometry %d, expected 1 (sphere), 2 (lvg) or 3 (slab)", (int)c->geometry);
  double any = 0;
  for (int id = 1; id < NLTE_NPARTNER; id++) {
    dens[id] = c->density[id];
    if (!(dens[id] >= 0 && isfinite(dens[id])))
      CE_FAIL("nlte: %s: density of %s = %g cm^-3, expected >= 0", mol, nlte_partner_name(id),
              dens[id]);
    any += dens[id];
  }
  dens[0] = 0;
  if (!(any > 0)) CE_FAIL("nlte: %s: every collision-partner density is zero", mol);
  /* H2 given, the file has ortho/para-H2 only and no o/p given: RADEX's
   * thermal ortho/para ratio. o/p-H2 given, the file has H2 only: their sum. */
  if (dens[NLTE_H2] > 0 && !M->has[NLTE_H2] && (M->has[NLTE_PH2] || M->has[NLTE_OH2])) {
    if (dens[NLTE_PH2] > 0 || dens[NLTE_OH2] > 0)
      CE_FAIL("nlte: %s: give either H2 or pH2/oH2 densities, not both (the file has pH2/oH2 rates)",
              mol);
    double opr = fmin(3.0, 9.0 * exp(-170.6 / c->t_kin));
    dens[NLTE_PH2] = dens[NLTE_H2] / (opr + 1.0);
    dens[NLTE_OH2] = dens[NLTE_H2] / (1.0 + 1.0 / opr);
    dens[NLTE_H2] = 0;
  } else if (!M->has[NLTE_PH2] && !M->has[NLTE_OH2] && M->has[NLTE_H2] &&
             (dens[NLTE_PH2] > 0 || dens[NLTE_OH2] > 0)) {
    if (dens[NLTE_H2] > 0)
      CE_FAIL("nlte: %s: give either H2 or pH2/oH2 densities, not both (the file has H2 rates)", mol);
    dens[NLTE_H2] = dens[NLTE_PH2] + dens[NLTE_OH2];
    dens[NLTE_PH2] = dens[NLTE_OH2] = 0;
  }
  for (int id = 1; id < NLTE_NPARTNER; id++)
    if (dens[id] > 0 && !M->has[id]) {
      char have[128] = "";
      for (int j = 1; j < NLTE_NPARTNER; j++)
        if (M->has[j]) {
          strcat(have, have[0] ? ", " : "");
          strcat(have, nlte_partner_name(j));
        }
      CE_FAIL("nlte: %s: partner %s has density %g cm^-3 but the file has no rates for it "
              "(it has: %s)", mol, nlte_partner_name(id), dens[id], have[0] ? have : "none");
    }
  return 0;
}

/* Collision rate matrix C[i*n+j] (i -> j, s^-1), upward by detailed balance
 * (zero where hc dE / kT >= 160, as RADEX). */
static void build_coll(const nlte_model *M, double T, const double *dens, double *C) {
  int n = M->nlev;
  memset(C, 0, sizeof(double) * (size_t)n * n);
  for (int id = 1; id < NLTE_NPARTNER; id++) {
    if (!(dens[id] > 0) || !M->has[id]) continue;
    const lamda_partner *p = &M->mol->partners[M->has[id] - 1];
    int ci;
    double cf;
    coll_interval(p, T, &ci, &cf);
    for (int k = 0; k < p->ntrans; k++) {
      int u = p->upper[k] - 1, l = p->lower[k] - 1;
      if (u < 0 || u >= n || l < 0 || l >= n || u == l) continue;
      C[(size_t)u * n + l] += dens[id] * coll_at(p, k, ci, cf);
    }
  }
  /* the file's "upper" may be either level: go by energy, as RADEX;
   * g_i/g_j exp(-x_ij) = (g_i e_i) (1 / (g_j e_j)) from one exponential and
   * one division per level where that is exact enough (e not near
   * underflow; a few ulp), no division per pair */
  double *e = C + (size_t)n * n, *w = e + n; /* 2n scratch doubles after C (J's space) */
  const double fkt = NLTE_FK / T;
  for (int i = 0; i < n; i++) {
    e[i] = exp(-NLTE_FK * M->ecm[i] / T);
    w[i] = e[i] > 1e-280 ? 1.0 / (M->g[i] * e[i]) : 0.0;
  }
  for (int i = 0; i < n; i++) {
    const double gei = e[i] > 1e-280 ? M->g[i] * e[i] : 0.0;
    const double *ci = C + (size_t)i * n;
    for (int j = 0; j < n; j++) {
      double de = M->ecm[i] - M->ecm[j];
      if (!(de > 0) || ci[j] == 0) continue;
      double x = de * fkt, up;
      if (x >= 160.0) up = 0.0;
      else if (gei > 0 && w[j] > 0) up = gei * w[j] * ci[j];
      else up = M->g[i] / M->g[j] * exp(-x) * ci[j];
      C[(size_t)j * n + i] = up;
    }
  }
}

/* tau of every line from populations x */
static void line_taus(const nlte_model *M, const double *x, double cddv, double *tau) {
  for (int l = 0; l < M->nline; l++) {
    double xt = M->xnu[l] * M->xnu[l] * M->xnu[l];
    double A = M->mol->lines[l].A;
    tau[l] = cddv * (x[M->lo[l]] * M->gu_gl[l] - x[M->up[l]]) * A / (NLTE_FGAUS_FAC * 8.0 * M_PI * xt);
  }
}

typedef struct {
  const nlte_model *M;
  const double *Lc, *occ; /* collisional part of the rate matrix; background occupation */
  double cddv;
  nlte_geometry geom;
  const nlte_dirs *dirs; /* NULL: the one-zone beta of geom */
  double *dbeta;         /* dirs: d beta / d tau of the last rate_matrix call, per line */
} nlte_sys;

/* beta of the system at line-centre tau (one-zone: nlte_beta of the
 * geometry; 3-D LVG cell: the mean over directions of esc(tau w_d)) */
static double sys_beta(const nlte_sys *S, double tau, double *dbeta) {
  const nlte_dirs *d = S->dirs;
  if (!d) return nlte_beta(S->geom, tau, dbeta);
  double b = 0, db = 0, x = fabs(tau);
  if (x * d->wmax < d->thin_x) { /* every direction thin: the moments */
    const double *c = d->c, *m = d->m;
    if (dbeta) *dbeta = (tau < 0 ? -1.0 : 1.0) * (c[1] * m[1] + x * (2.0 * c[2] * m[2] + x * (3.0 * c[3] * m[3])));
    return 1.0 + x * (c[1] * m[1] + x * (c[2] * m[2] + x * (c[3] * m[3])));
  }
  if (d->mean) return d->mean(d, tau, dbeta);
  if (d->q) {
    for (int k = 0; k < d->ndir; k++) {
      double dk, bk = d->esc(tau * d->w[k], dbeta ? &dk : NULL);
      b += d->q[k] * bk;
      if (dbeta) db += d->q[k] * (d->w[k] * dk);
    }
    if (dbeta) *dbeta = db;
    return b;
  }
  for (int k = 0; k < d->ndir; k++) {
    double dk, bk = d->esc(tau * d->w[k], dbeta ? &dk : NULL);
    b += bk;
    if (dbeta) db += d->w[k] * dk;
  }
  if (dbeta) *dbeta = db / d->ndir;
  return b / d->ndir;
}

/* The rate matrix Lm at populations x (beta = 1 when thin, else beta(tau(x)),
 * taus and betas into tau/beta), the residual f = Lm x and, unless NULL, the
 * merit sum_i (f_i / s_i)^2 where s_i is the total flux through level i. */
static void rate_matrix(const nlte_sys *S, const double *x, int thin, double *tau, double *beta,
                        double *Lm, double *f, double *merit) {
  const nlte_model *M = S->M;
  int n = M->nlev, L = M->nline;
  if (!thin) line_taus(M, x, S->cddv, tau);
  memcpy(Lm, S->Lc, sizeof(double) * (size_t)n * n);
  for (int l = 0; l < L; l++) {
    double A = M->mol->lines[l].A, b = S->occ[l], gr = M->gu_gl[l];
    double bt = thin ? 1.0 : sys_beta(S, tau[l], S->dirs ? &S->dbeta[l] : NULL);
    beta[l] = bt;
    int u = M->up[l], lo = M->lo[l];
    double down = A * bt * (1.0 + b), upr = A * bt * gr * b;
    Lm[(size_t)lo * n + u] += down;
    Lm[(size_t)u * n + u] -= down;
    Lm[(size_t)u * n + lo] += upr;
    Lm[(size_t)lo * n + lo] -= upr;
  }
  if (!f) return;
  double m = 0;
  for (int i = 0; i < n; i++) {
    double s = 0, flux = 0;
    for (int j = 0; j < n; j++) {
      double t = Lm[(size_t)i * n + j] * x[j];
      s += t;
      flux += fabs(t);
    }
    f[i] = s;
    if (merit && flux > 0) m += (s / flux) * (s / flux);
  }
  if (merit) *merit = m;
}

int nlte_solve(const nlte_model *M, const nlte_conditions *c, const nlte_options *o,
               nlte_result *r) {
  return nlte_solve_dirs(M, c, o, NULL, r);
}

/* One solve at cddv scaled by `scale` (1: the problem as posed), from x0
 * (warm start, Newton) or NULL (optically thin start and relaxation). -1 on
 * error; *no_conv = 1 if the error is that max_iter iterations did not
 * converge (or a singular / non-finite step), which the caller may retry. */
static int solve_once(const nlte_model *M, const nlte_conditions *c, double tol, int max_iter,
                      const nlte_dirs *dirs, const double *x0, double scale, nlte_result *r,
                      int *no_conv) {
  *no_conv = 0;
  double dens[NLTE_NPARTNER];
  if (dirs && !(dirs->ndir >= 1 && dirs->w && dirs->esc && dirs->cddv >= 0 && isfinite(dirs->cddv)))
    CE_FAIL("nlte: direction set: %d directions, scale %g, expected >= 1 and >= 0", dirs->ndir,
            dirs->cddv);
  CE_TRY(check_conditions(M, c, dens, dirs != NULL));
  memcpy(r->density_used, dens, sizeof dens);
  const int n = M->nlev, L = M->nline;
  const char *mol = M->mol->name;
  double *C = r->work, *J = C + (size_t)n * n, *Lm = J + (size_t)n * n;
  double *x = Lm + (size_t)n * n, *f = x + n, *dx = f + n, *xt = dx + n;
  double *occ = r->t_r; /* background photon occupation per line (scratch until the end) */
  double T = c->t_kin;
  build_coll(M, T, dens, C);
  /* the collisional part of the rate matrix, once: Lc[i][j] = C[j][i], Lc[i][i] = -sum_j C[i][j] */
  double *Lc = xt + n;
  double *lu_w = Lc + (size_t)n * n; /* the LU's matrix, 64-byte aligned */
  lu_w += (8 - ((uintptr_t)lu_w / sizeof(double)) % 8) % 8;
  /* a plain transpose and row sums, no branches (the same bits as summing
   * the non-zero rates only: adding 0 changes nothing) */
  for (int i = 0; i < n; i++)
    for (int j = 0; j < n; j++) Lc[(size_t)j * n + i] = C[(size_t)i * n + j];
  for (int i = 0; i < n; i++) {
    double diag = 0;
    const double *ci = C + (size_t)i * n;
    for (int j = 0; j < i; j++) diag -= ci[j];
    for (int j = i + 1; j < n; j++) diag -= ci[j];
    Lc[(size_t)i * n + i] = diag;
  }
  for (int l = 0; l < L; l++) {
    double h = c->t_bg > 0 ? NLTE_FK * M->xnu[l] / c->t_bg : INFINITY;
    occ[l] = h >= 160.0 ? 0.0 : 1.0 / expm1(h);
  }
  double cddv = scale * (dirs ? dirs->cddv : c->column / (c->fwhm_kms * 1e5));
  double *dbeta = r->flux_kkms; /* scratch too */
  nlte_sys S = {M, Lc, occ, cddv, c->geometry, dirs, dbeta};
  int it;
  if (x0) { /* warm start: Newton from the given populations */
    double sum = 0;
    for (int i = 0; i < n; i++) sum += x[i] = x0[i] > 0 ? x0[i] : 0.0;
    if (!(sum > 0) || !isfinite(sum)) CE_FAIL("nlte: %s: warm-start populations sum to %g", mol, sum);
    for (int i = 0; i < n; i++) x[i] /= sum;
    goto iterate;
  }

  /* Iteration 0: optically thin (beta = 1), a linear system. */
  rate_matrix(&S, NULL, 1, r->tau, r->beta, Lm, NULL, NULL);
  for (int i = 0; i < n; i++) f[i] = 0;
  for (int j = 0; j < n; j++) Lm[j] = 1.0;
  f[0] = 1.0;
  if (lu_solve(Lm, f, r->ipiv, n, lu_w) < 0)
    CE_FAIL("nlte: %s: T_kin %g K: the optically thin rate matrix is singular", mol, T);
  double sum = 0;
  for (int i = 0; i < n; i++) sum += x[i] = f[i] > 0 ? f[i] : 0.0;
  if (!(sum > 0)) CE_FAIL("nlte: %s: T_kin %g K: no optically thin solution", mol, T);
  for (int i = 0; i < n; i++) x[i] /= sum;

iterate:;
  /* Newton on f(x) = 0, sum x = 1, from the optically thin solution (or
   * the warm start), in log populations (steps of at most a factor e per
   * population, halved until the merit falls); a Newton step that cannot
   * lower the merit is replaced by a RADEX-style step (the populations of
   * the rate matrix at the betas of the current populations, under-relaxed:
   * weight 0.7 on the new ones, halved after a step that raised the merit
   * down to 0.05, raised by 1.25 after one that lowered it). Converged: the
   * full Newton step changes no population > 1e-20 by more than tol, or the
   * error left after it, estimated from the contraction of the last two
   * full steps, is below tol. (Until issue 16's speed-up the iteration began
   * with RADEX-style steps until they changed the populations by < 10 %:
   * 3-4 extra LU solves per model that did not shorten Newton, docs/nlte.md.) */
  double wrelax = 0.7; /* weight of the new populations in a relaxation step */
  double rel = INFINITY, merit, rel_prev = INFINITY;
  const double K0 = cddv / (NLTE_FGAUS_FAC * 8.0 * M_PI);
  rate_matrix(&S, x, 0, r->tau, r->beta, Lm, f, &merit);
  for (it = 1; it <= max_iter; it++) {
    int rrow = 0;
    for (int i = 1; i < n; i++)
      if (x[i] > x[rrow]) rrow = i;
    double mt = INFINITY, s = 0;
    int accepted = 0;
    {
      memcpy(J, Lm, sizeof(double) * (size_t)n * n);
      for (int l = 0; l < L; l++) {
        if (!dirs) sys_beta(&S, r->tau[l], &dbeta[l]); /* dirs: rate_matrix set it */
        if (dbeta[l] == 0) continue;
        double A = M->mol->lines[l].A, b = occ[l], gr = M->gu_gl[l];
        int u = M->up[l], lo = M->lo[l];
        double K = K0 * A / (M->xnu[l] * M->xnu[l] * M->xnu[l]);
        double G = A * dbeta[l] * ((1.0 + b) * x[u] - gr * b * x[lo]); /* dF/dtau */
        double dFu = G * (-K), dFl = G * (K * gr);
        J[(size_t)u * n + u] -= dFu;
        J[(size_t)u * n + lo] -= dFl;
        J[(size_t)lo * n + u] += dFu;
        J[(size_t)lo * n + lo] += dFl;
      }
      for (int i = 0; i < n; i++) dx[i] = -f[i];
      for (int j = 0; j < n; j++) {
        J[(size_t)rrow * n + j] = 1.0;
        s += x[j];
      }
      dx[rrow] = 1.0 - s;
      /* a singular Jacobian or a non-finite step: a relaxation step instead */
      int usable = lu_solve(J, dx, r->ipiv, n, lu_w) == 0;
      rel = 0;
      for (int i = 0; usable && i < n; i++) {
        if (!isfinite(dx[i])) usable = 0;
        dx[i] = x[i] > 0 ? dx[i] / x[i] : 0.0; /* now d ln x */
        if (x[i] > NLTE_MINPOP && fabs(dx[i]) > rel) rel = fabs(dx[i]);
      }
      if (!usable) rel = INFINITY;
      /* converged: the step is below tol, or the error left after it,
       * estimated from the contraction rate of the last two full steps
       * (rho = rel / rel_prev: rel rho / (1 - rho)), is (docs/nlte.md) */
      double rho = rel / rel_prev;
      int conv = rel < tol || (isfinite(rel_prev) && rho < 0.5 && rel * rho / (1.0 - rho) < tol);
      double lam = rel > 1.0 ? 1.0 / rel : 1.0, lam_acc = 0;
      for (int k = 0; usable && k < 8 && !accepted; k++, lam *= 0.5) {
        double st = 0;
        for (int i = 0; i < n; i++) {
          double d = lam * dx[i];
          d = d > 1.0 ? 1.0 : d < -5.0 ? -5.0 : d; /* levels below 1e-20 follow, bounded */
          xt[i] = dx[i] > -1.0 && lam == 1.0 ? x[i] * (1.0 + dx[i]) : x[i] * exp(d);
          st += xt[i];
        }
        for (int i = 0; i < n; i++) xt[i] /= st;
        rate_matrix(&S, xt, 0, r->tau, r->beta, J, f, &mt);
        accepted = mt < merit || conv;
        lam_acc = lam;
      }
      rel_prev = accepted && lam_acc == 1.0 ? rel : INFINITY;
      if (accepted && conv) {
        memcpy(x, xt, sizeof(double) * (size_t)n);
        memcpy(Lm, J, sizeof(double) * (size_t)n * n);
        break;
      }
    }
    if (!accepted) {
      memcpy(J, Lm, sizeof(double) * (size_t)n * n); /* the rate matrix at x */
      for (int i = 0; i < n; i++) dx[i] = 0;
      for (int j = 0; j < n; j++) J[(size_t)rrow * n + j] = 1.0;
      dx[rrow] = 1.0;
      if (lu_solve(J, dx, r->ipiv, n, lu_w) < 0) {
        *no_conv = 1;
        CE_FAIL("nlte: %s: T_kin %g K: singular rate matrix at iteration %d", mol, T, it);
      }
      double st = 0;
      for (int i = 0; i < n; i++) {
        double v = dx[i] > 0 ? dx[i] : 0.0;
        xt[i] = (1.0 - wrelax) * x[i] + wrelax * v;
        st += xt[i];
      }
      if (!(st > 0) || !isfinite(st)) {
        *no_conv = 1;
        CE_FAIL("nlte: %s: T_kin %g K: populations not finite at iteration %d", mol, T, it);
      }
      for (int i = 0; i < n; i++) xt[i] /= st;
      rate_matrix(&S, xt, 0, r->tau, r->beta, J, f, &mt);
      wrelax = mt > merit ? fmax(0.05, 0.5 * wrelax) : fmin(0.7, 1.25 * wrelax);
      rel = rel_prev = INFINITY; /* a relaxation step never ends the iteration */
    }
    memcpy(Lm, J, sizeof(double) * (size_t)n * n);
    memcpy(x, xt, sizeof(double) * (size_t)n);
    merit = mt;
  }
  r->iterations = it > max_iter ? max_iter : it;
  r->max_rel_change = rel;
  if (it > max_iter) {
    *no_conv = 1;
    if (isinf(rel))
      CE_FAIL("nlte: %s: T_kin %g K, column %g cm^-2: no convergence after %d iterations (the last "
              "was a relaxation step: Newton could not lower the residual)", mol, T, c->column, max_iter);
    CE_FAIL("nlte: %s: T_kin %g K, column %g cm^-2: no convergence after %d iterations (largest "
            "relative population change %.3g, tolerance %.3g)", mol, T, c->column, max_iter, rel, tol);
  }

  /* outputs, as RADEX prints them */
  memcpy(r->pop, x, sizeof(double) * (size_t)n);
  line_taus(M, x, cddv, r->tau);
  for (int l = 0; l < L; l++) {
    int u = M->up[l], lo = M->lo[l];
    double xnu = M->xnu[l], x3 = xnu * xnu * xnu;
    r->beta[l] = sys_beta(&S, r->tau[l], NULL);
    double ratio = x[lo] * M->gu_gl[l] / x[u];
    double tex = x[u] > 0 && x[lo] > 0 ? NLTE_FK * xnu / log(ratio) : 0.0;
    r->tex[l] = tex;
    double backi = occ[l] * NLTE_THC * x3;
    double hnu = tex != 0 ? NLTE_FK * xnu / tex : INFINITY;
    double bnutex = hnu >= 160.0 ? 0.0 : NLTE_THC * x3 / expm1(hnu);
    double ftau = fabs(r->tau[l]) <= 300.0 ? exp(-r->tau[l]) : 0.0;
    double toti = backi * ftau + bnutex * (1.0 - ftau);
    double ta = (toti - backi) / (NLTE_THC * xnu * xnu / NLTE_FK);
    r->t_r[l] = ta;
    r->flux_kkms[l] = NLTE_FGAUS_FAC * c->fwhm_kms * ta;
    r->flux_erg[l] = NLTE_FGAUS_FAC * 8.0 * M_PI * NLTE_KB_CGS * c->fwhm_kms * 1e5 * ta * x3;
    if (!isfinite(r->tau[l]) || !isfinite(ta))
      CE_FAIL("nlte: %s: line %d: tau = %g, T_R = %g: not finite", mol, M->mol->lines[l].index,
              r->tau[l], ta);
  }
  return 0;
}

/* Iterations of the direct solve before the continuation fallback takes
 * over (converging models take 5-15; the slowest that converged directly on
 * the RADEX grids took 599, and converge by continuation as well). */
#define NLTE_DIRECT_ITER 200
/* Continuation: the first scale of cddv (optically thin for every line of
 * the LAMDA files here), the first factor between scales, Newton iterations
 * allowed per scale, and the smallest factor before giving up. */
#define NLTE_CONT_S0 1e-6
#define NLTE_CONT_Q0 10.0
#define NLTE_CONT_ITER 30
#define NLTE_CONT_QMIN 1.0005

int nlte_solve_dirs(const nlte_model *M, const nlte_conditions *c, const nlte_options *o,
                    const nlte_dirs *dirs, nlte_result *r) {
  if (r->nlev != M->nlev || r->nline != M->nline || !r->work)
    CE_FAIL("nlte: result not initialised for this model");
  double tol = o && o->tol > 0 ? o->tol : 1e-10;
  int max_iter = o && o->max_iter > 0 ? o->max_iter : 1000;
  const double *x0 = dirs ? dirs->x0 : NULL;
  int no_conv;
  /* A warm start is the caller's guess (the 3-D cells redo a failed one
   * cold): no fallback. */
  int direct = x0 ? max_iter : max_iter < NLTE_DIRECT_ITER ? max_iter : NLTE_DIRECT_ITER;
  if (solve_once(M, c, tol, direct, dirs, x0, 1.0, r, &no_conv) == 0) return 0;
  if (!no_conv || x0 || direct >= max_iter) return -1;
  /* The direct iteration did not converge (strongly masing, very thick
   * lines, where it can cycle between branches): follow the solution from
   * the optically thin limit, cddv s = 1e-6 .. 1, by Newton from the
   * populations at the previous s, the step in log s halved when Newton
   * does not converge within NLTE_CONT_ITER iterations (and doubled after a
   * success). This tracks the branch connected to the thin solution, which
   * is the one RADEX's iteration from the thin start ends on where it
   * converges (docs/nlte.md). */
  char first[512];
  snprintf(first, sizeof first, "%s", ce_err_msg());
  int total = direct, n = M->nlev;
  double *xs = malloc(sizeof(double) * (size_t)n);
  if (!xs) CE_FAIL("nlte: out of memory (%d levels)", n);
  double s = NLTE_CONT_S0, q = NLTE_CONT_Q0;
  int rc = solve_once(M, c, tol, max_iter - total, dirs, NULL, s, r, &no_conv);
  total += rc == 0 ? r->iterations : max_iter - total;
  if (rc == 0) memcpy(xs, r->pop, sizeof(double) * (size_t)n);
  while (rc == 0 && s < 1.0) {
    if (total >= max_iter) {
      rc = -1;
      break;
    }
    double sn = s * q < 1.0 ? s * q : 1.0;
    int lim = max_iter - total < NLTE_CONT_ITER ? max_iter - total : NLTE_CONT_ITER;
    int ok = solve_once(M, c, tol, lim, dirs, xs, sn, r, &no_conv) == 0;
    total += ok ? r->iterations : lim;
    if (!ok && !no_conv) { /* not a convergence failure: report it */
      free(xs);
      return -1;
    }
    if (ok) {
      s = sn;
      memcpy(xs, r->pop, sizeof(double) * (size_t)n);
      q = q * q < NLTE_CONT_Q0 ? q * q : NLTE_CONT_Q0;
    } else {
      q = sqrt(q);
      if (q < NLTE_CONT_QMIN) {
        rc = -1;
        break;
      }
    }
  }
  free(xs);
  r->iterations = total < max_iter ? total : max_iter;
  if (rc == 0 && s >= 1.0) return 0;
  CE_FAIL("%s; the continuation from the optically thin limit stopped at %.3g of the column "
          "(%d iterations in all)", first, s, total);
}
