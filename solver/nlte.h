/* nlte.h - one-zone non-LTE statistical equilibrium with escape
 * probabilities, as RADEX (van der Tak et al. 2007) solves it, for any LAMDA
 * molecule (solver/lamda.h). docs/nlte.md has the equations and every choice.
 *
 * Collisional rates of every partner are interpolated linearly in T_kin in
 * the file's table (the first/last column outside it, as RADEX), upward
 * rates follow by detailed balance; radiative rates use the escape
 * probability beta(tau) of one of RADEX's three geometries and a black-body
 * background (the CMB by default). The populations are solved from the
 * optically thin solution by Newton's method on the full non-linear system
 * (beta depends on the populations through tau; RADEX-style relaxation
 * steps where a Newton step fails), and where that does not converge
 * within 200 iterations by continuation from the optically thin limit, to
 * a stated relative tolerance; the iterations are reported and
 * non-convergence is an error, never a silent result.
 *
 *   lamda_molecule mol;  lamda_read("co.dat", &mol);
 *   nlte_model M;        nlte_model_init(&M, &mol);    // borrows mol
 *   nlte_conditions c;   nlte_conditions_default(&c);
 *   c.t_kin = 30; c.density[NLTE_H2] = 1e4; c.column = 1e16; c.fwhm_kms = 1;
 *   nlte_result r;       nlte_result_init(&r, &M);
 *   if (nlte_solve(&M, &c, NULL, &r) < 0) ... ce_err_msg() says what
 *   r.tex[0], r.tau[0], r.pop[...], r.iterations
 *   nlte_result_free(&r); nlte_model_free(&M); lamda_free(&mol);
 *
 * A model is read-only during nlte_solve, so threads may share one model,
 * each with its own result (which holds the work arrays).
 */
#ifndef COEMU_NLTE_H
#define COEMU_NLTE_H

#include "solver/lamda.h"

/* Collision partners, indexed by their LAMDA id (lamda_partner.id). */
enum { NLTE_H2 = 1, NLTE_PH2 = 2, NLTE_OH2 = 3, NLTE_E = 4, NLTE_H = 5, NLTE_HE = 6, NLTE_HP = 7,
       NLTE_NPARTNER = 8 };

/* The three escape-probability geometries of RADEX (its "method" 1..3). */
typedef enum { NLTE_SPHERE = 1, NLTE_LVG = 2, NLTE_SLAB = 3 } nlte_geometry;

/* Constants (cgs). NLTE_FK and NLTE_THC are hc/k and 2hc from CODATA 2018. */
#define NLTE_FK 1.4387768775039338   /* h c / k [cm K] */
#define NLTE_THC 3.9728917142978e-16 /* 2 h c [erg cm] */
#define NLTE_KB_CGS 1.380649e-16     /* k [erg/K] */
#define NLTE_FGAUS_FAC 1.0645        /* sqrt(pi / (4 ln 2)) as RADEX rounds it */
#define NLTE_T_CMB 2.725             /* default background [K] */

/* The kinetic temperatures the solvers take [K]: RADEX's own limits (rates
 * outside a file's table are clamped to its ends, docs/nlte.md). */
#define NLTE_T_KIN_MIN 0.1
#define NLTE_T_KIN_MAX 1e4

typedef struct {
  double t_kin;                   /* kinetic temperature [K], NLTE_T_KIN_MIN .. MAX */
  double density[NLTE_NPARTNER];  /* [cm^-3] by partner id (index 0 unused); >= 0 */
  double column;                  /* column density of the molecule [cm^-2], > 0 */
  double fwhm_kms;                /* line width, FWHM [km/s], > 0 */
  nlte_geometry geometry;
  double t_bg;                    /* background black body [K] (0: none) */
} nlte_conditions;

/* T_bg = 2.725 K, sphere, everything else 0 (to be set). */
void nlte_conditions_default(nlte_conditions *c);

typedef struct {
  double tol;    /* relative change of every population > 1e-20 (default 1e-10) */
  int max_iter;  /* iterations in all, continuation included (default 1000) */
} nlte_options;

/* The molecule's constants, prepared once (borrows the molecule, which must
 * outlive the model). */
typedef struct {
  const lamda_molecule *mol;
  int nlev, nline;
  double *xnu;    /* [nline] line wavenumber from the level energies [cm^-1] */
  double *gu_gl;  /* [nline] g_u / g_l */
  int *up, *lo;   /* [nline] 0-based levels */
  double *ecm;    /* [nlev] level energies [cm^-1] */
  double *g;      /* [nlev] */
  int has[NLTE_NPARTNER]; /* partner id -> index into mol->partners + 1 (0: absent) */
} nlte_model;

int nlte_model_init(nlte_model *M, const lamda_molecule *mol);
void nlte_model_free(nlte_model *M);

/* Results per level and per line (LAMDA order), and the work arrays. */
typedef struct {
  int nlev, nline;
  double *pop;        /* [nlev] fractional populations, sum 1 */
  double *tex;        /* [nline] excitation temperature [K] (negative: masing) */
  double *tau;        /* [nline] line-centre optical depth */
  double *beta;       /* [nline] escape probability */
  double *t_r;        /* [nline] radiation temperature above the background [K], as RADEX */
  double *flux_kkms;  /* [nline] 1.0645 T_R FWHM [K km/s] */
  double *flux_erg;   /* [nline] [erg cm^-2 s^-1] as RADEX */
  double density_used[NLTE_NPARTNER]; /* densities as applied (o/p-H2 split) */
  int iterations;     /* iterations taken (relaxation and Newton steps) */
  double max_rel_change; /* of the last iteration */
  double *work;
  int *ipiv;
} nlte_result;

int nlte_result_init(nlte_result *r, const nlte_model *M);
void nlte_result_free(nlte_result *r);

/* Solve the statistical equilibrium for conditions c (o: NULL = defaults).
 * 0 and r filled, or -1 with a message: bad conditions (names the field), a
 * partner with a density that the file lacks, no partner with rates, a
 * non-finite value, or no convergence after max_iter iterations. */
int nlte_solve(const nlte_model *M, const nlte_conditions *c, const nlte_options *o,
               nlte_result *r);

/* The 3-D LVG cell (solver/nlte_lvg.h): beta is the weighted mean over
 * ndir directions of esc(tau * w[d]), where tau is the line-centre optical depth
 * the one-zone formula gives with cddv in place of column / FWHM (so w[d] is
 * the direction's Sobolev length factor, docs/nlte.md). c->column, fwhm_kms
 * and geometry are then not used (the fluxes are meaningless). x0: warm
 * start (Newton from these populations instead of the optically thin
 * start, and no continuation fallback: the caller retries cold), or NULL. nlte_solve(M, c, o, r) is
 * nlte_solve_dirs(M, c, o, NULL, r). */
typedef struct nlte_dirs_ {
  int ndir;
  const double *w;                        /* [ndir] >= 0 */
  const double *q;                        /* [ndir] weights summing to 1, or NULL: 1/ndir each */
  double (*esc)(double tau, double *dbeta); /* per-direction escape probability */
  double cddv;                            /* [cm^-2 (cm/s)^-1], >= 0 */
  const double *x0;                       /* [nlev] or NULL */
  /* Optional thin-line shortcut (thin_x > 0): where |tau| wmax < thin_x,
   * esc(a) is the polynomial 1 + c[1] a + c[2] a^2 + c[3] a^3 in a = |tau| w
   * (d/d tau with the sign of tau), so the weighted mean over directions is
   * 1 + sum_k c[k] |tau|^k m[k] with the moments m[k] = sum_d q_d w_d^k. */
  double thin_x, wmax, c[4], m[4];
  /* Optional: the whole weighted mean in one call (a vectorised esc), used
   * instead of the loop over esc when set; w and q then hold a multiple of
   * 8 entries, the ones past ndir with q = 0 and w = 1. */
  double (*mean)(const struct nlte_dirs_ *d, double tau, double *dbeta);
} nlte_dirs;

int nlte_solve_dirs(const nlte_model *M, const nlte_conditions *c, const nlte_options *o,
                    const nlte_dirs *dirs, nlte_result *r);

/* Escape probability of one geometry (RADEX's formulas, docs/nlte.md), and
 * its derivative d beta / d tau when dbeta != NULL. */
double nlte_beta(nlte_geometry geom, double tau, double *dbeta);

/* Collision rate coefficient of partner p (index into mol->partners) for
 * its transition k at T [cm^3 s^-1]: linear in T inside the table, the
 * first / last column outside it. */
double nlte_coll_rate(const lamda_partner *p, int k, double t);

/* Name of a partner id ("H2", "pH2", "oH2", "e", "H", "He", "H+"), and the
 * id of a name (case-insensitive; -1 if unknown). */
const char *nlte_partner_name(int id);
int nlte_partner_id(const char *name);
/* "sphere", "lvg", "slab" <-> geometry (-1 if unknown). */
const char *nlte_geometry_name(nlte_geometry g);
int nlte_geometry_parse(const char *s);

#endif
