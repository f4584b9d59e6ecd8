/* nlte_lvg.h - non-LTE level populations per cell in 3-D: the local LVG
 * (Sobolev) approximation from each cell's velocity-gradient tensor, solved
 * once per model for every cell (not per view direction). docs/nlte.md,
 * "3-D LVG per cell", has the equations and every choice.
 *
 * Input is plain arrays per cell (this room knows nothing of models or AMR:
 * rotate/lvg_model.h makes them from a model). Per cell c:
 *   T_kin [K], n_H2 [cm^-3] (split into ortho/para-H2 at RADEX's thermal
 *   ratio when the file has o/p rates only, as nlte_solve does), n_mol
 *   [cm^-3] (the molecule's number density), the velocity-gradient tensor
 *   G[9c + 3i + j] = dv_i/dx_j [s^-1], and a length [cm] (the cell size) for
 *   the clamp below.
 * Sobolev optical depth of line u->l along unit vector n:
 *   tau_n = A_ul / (8 pi xnu^3) * n_mol (x_l g_u/g_l - x_u) / |dv/ds|_n,
 *   |dv/ds|_n = max(|n.G.n|, b / length),  b = sqrt(2 k T_kin / m + vturb^2)
 * (xnu [cm^-1]; m the molecule's mass from the LAMDA file): the Sobolev
 * length b/|dv/ds| never exceeds the cell. beta = mean over the direction
 * set of esc(tau_n); n.G.n is even in n, so the set is a half sphere:
 * ndir = 3 is the three axes (the 6 directions +-x, +-y, +-z), ndir = 2 m^2
 * a Gauss-Legendre x uniform-azimuth product rule on the half sphere z > 0
 * (nlte_lvg_directions). esc is the Sobolev (1 - e^-tau)/tau by
 * default, or RADEX's expanding-sphere formula (nlte_beta(NLTE_LVG)), with
 * which a uniform Hubble flow gives RADEX's one-zone LVG exactly.
 *
 * Order and warm starts. Cells are solved in chains of `chunk` consecutive
 * entries of `order` (NULL: 0..ncell-1): the first cell of a chain from the
 * optically thin solution (nlte_solve's cold start), every other one by
 * Newton from the populations of the cell before it in the chain (a
 * neighbour when the caller orders cells so; rotate/lvg_model does, leaf by
 * leaf, serpentine). A warm start that does not converge in
 * NLTE_LVG_WARM_ITER iterations is redone cold. Chains are spread over
 * OpenMP threads; each chain is computed alone, so the results do not
 * depend on the thread count (bit for bit).
 *
 *   nlte_lvg_cells C = {.ncell = n, .t_kin = T, .n_h2 = nh2, .n_mol = nco,
 *                       .grad_v = G, .length = len};
 *   nlte_lvg_options o;  nlte_lvg_options_default(&o);
 *   nlte_lvg_out out = {.line = 2, .x_l = xl, .x_u = xu, .tex = tex};
 *   if (nlte_lvg_solve(&M, &C, &o, &out) < 0) ... ce_err_msg(), out.bad_cell
 */
#ifndef COEMU_NLTE_LVG_H
#define COEMU_NLTE_LVG_H

#include <stdint.h>

#include "solver/nlte.h"

typedef enum { NLTE_ESC_SOBOLEV = 0, NLTE_ESC_RADEX = 1 } nlte_lvg_escape;

#define NLTE_LVG_MAX_DIR 1024
#define NLTE_LVG_DEFAULT_DIR 18 /* docs/nlte.md: convergence with ndir */
#define NLTE_LVG_DEFAULT_CHUNK 512
#define NLTE_LVG_WARM_ITER 40

typedef struct {
  int64_t ncell;
  const double *t_kin;  /* [ncell] K, 0.1 .. 1e4 */
  const double *n_h2;   /* [ncell] cm^-3, > 0 */
  const double *n_mol;  /* [ncell] cm^-3, >= 0 */
  const double *grad_v; /* [9 ncell] dv_i/dx_j [s^-1] */
  const double *length; /* [ncell] cm, > 0; NULL: options.length_cm for all */
  const int64_t *order; /* [ncell] a permutation, or NULL: 0..ncell-1 */
  int64_t chunk;        /* cells per warm-start chain; <= 0: NLTE_LVG_DEFAULT_CHUNK */
} nlte_lvg_cells;

typedef struct {
  int ndir;               /* directions on the half sphere: 3 or 2 m^2 <= NLTE_LVG_MAX_DIR */
  nlte_lvg_escape escape; /* per-direction escape probability */
  double vturb_kms;       /* microturbulent speed in b [km/s], >= 0 */
  double length_cm;       /* clamp length when cells.length is NULL [cm] */
  double t_bg;            /* background black body [K] (0: none) */
  double tol;             /* nlte_options.tol (relative, per population) */
  int max_iter;           /* nlte_options.max_iter of a cold start */
  int threads;            /* OpenMP threads; <= 0: the default */
} nlte_lvg_options;

/* ndir = NLTE_LVG_DEFAULT_DIR, Sobolev escape, vturb 0, length 0 (must be
 * set if cells.length is NULL), T_bg = 2.725 K, tol 1e-8, max_iter 1000,
 * threads 0. */
void nlte_lvg_options_default(nlte_lvg_options *o);

typedef struct {
  /* what to write (NULL: not wanted) */
  double *pop;             /* [ncell * nlev] fractional populations, LAMDA order */
  int line;                /* 1-based LAMDA line number for x_l, x_u, tex (0: none) */
  double *x_l, *x_u, *tex; /* [ncell] populations of its lower and upper level, T_ex [K] */
  /* filled by the call */
  int64_t iterations;      /* over all cells */
  int64_t cold_starts;     /* chain starts + warm starts redone cold */
  int64_t warm_redone;     /* warm starts that failed and were redone cold */
  int max_iterations;      /* of one cell */
  int64_t bad_cell;        /* on failure: the cell the message names (-1: none) */
} nlte_lvg_out;

/* Solve every cell. 0, or -1 with a message naming the cell ("cell C:
 * ...", out->bad_cell = C): bad input (T outside 0.1..1e4 K, n_H2 <= 0,
 * NaN or Inf anywhere, negative n_mol or length), a partner the file has no
 * rates for, or no convergence. Input errors are found before any solving
 * (the lowest bad index); a solver error names the lowest failing cell. */
int nlte_lvg_solve(const nlte_model *M, const nlte_lvg_cells *cells, const nlte_lvg_options *o,
                   nlte_lvg_out *out);

/* The input checks nlte_lvg_solve makes before it solves anything, on
 * their own (coemu generate --check runs them on every model of a
 * line.mode lvg job): 0, or -1 with the message the solve gives for the
 * lowest bad cell ("cell C: T_kin = 2.5e4, expected 0.1 .. 1e4 K"; *bad_cell
 * = C, -1 when all are good). scan != NULL looks at every cell: how many
 * would be refused, and the range of T_kin (NaN left out). */
typedef struct {
  int64_t bad;         /* cells refused */
  double t_min, t_max; /* T_kin over all cells [K] */
} nlte_lvg_scan;
int nlte_lvg_cells_check(const nlte_lvg_cells *cells, int64_t *bad_cell, nlte_lvg_scan *scan);

/* The direction set: ndir unit vectors n[3d..3d+2] on the half sphere and
 * their weights q[d] (sum 1): ndir = 3, the axes, weights 1/3; ndir = 2 m^2,
 * a product rule: m Gauss-Legendre nodes in z on (0, 1) times 2m equally
 * spaced azimuths (staggered by half a step on every other ring), weight
 * GL weight / 2m (exact for polynomials in z of degree 2m-1 times
 * trigonometric ones in phi of degree 2m-1). -1 for any other ndir. */
int nlte_lvg_directions(int ndir, double *n, double *q);

/* The per-direction escape probabilities and d beta / d tau: Sobolev
 * (1 - e^-|tau|)/|tau| (|tau| for masing lines, as RADEX), and RADEX's
 * expanding sphere (nlte_beta(NLTE_LVG, ...)). */
double nlte_esc_sobolev(double tau, double *dbeta);
double nlte_esc_radex_lvg(double tau, double *dbeta);

/* "sobolev" / "radex" <-> escape (-1 if unknown). */
int nlte_lvg_escape_parse(const char *s);
const char *nlte_lvg_escape_name(nlte_lvg_escape e);

#endif
