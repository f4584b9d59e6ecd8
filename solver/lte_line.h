/* lte_line.h - the line model of the LTE imager: physical constants, the
 * constants of one transition, the partition function and the level
 * populations (docs/physics.md). Callers include lte.h, which includes this.
 *
 * Every expression follows Pomme's operation order (Line/LineData), in
 * float64 without FMA contraction; lte_cell_eval is the scalar form of what
 * the kernels compute per cell (lte_kernel.h).
 */
#ifndef COEMU_LTE_LINE_H
#define COEMU_LTE_LINE_H

#include "solver/lamda.h"

/* Physical constants (CODATA 2018, the values astropy uses). */
#define LTE_C 299792458.0        /* speed of light [m/s] */
#define LTE_H 6.62607015e-34     /* Planck [J s] */
#define LTE_KB 1.380649e-23      /* Boltzmann [J/K] */
#define LTE_AMU 1.66053906660e-27 /* atomic mass unit [kg] */

/* Derived constants of one transition. */
typedef struct {
  int transition, upper, lower; /* 1-based LAMDA numbers */
  int nlev;
  double *neg_e_over_k;  /* -E_i/k_B [K], LAMDA file order */
  double *g;             /* statistical weights, same order */
  double *ztab;          /* partition function Z(T) as Chebyshev pieces, layout in lte_kernel.h */
  unsigned char *zdirect; /* pieces that failed their accuracy check: direct sum */
  int any_zdirect;
  int zpieces;           /* number of table pieces (zdirect has as many) */
  double g_u, g_l;       /* weights of the upper and lower level */
  double neg_e_over_k_u, neg_e_over_k_l;
  double nu0;            /* rest frequency [Hz] */
  double A, B_ul, B_lu;  /* Einstein coefficients (B per unit intensity, SI) */
  double fac;            /* h nu0 / (4 pi) */
  double mass_amu;       /* molecular mass [u] */
  double nu0_over_c;     /* nu0 / c */
  double two_k_over_m;   /* 2 k_B / (m u) */
} lte_line;

/* Derive the constants of `transition` (1-based LAMDA number) of m. A mass
 * <= 0 takes the file's molecular weight. -1 with a message on bad input. */
int lte_line_init(lte_line *L, const lamda_molecule *m, int transition, double mass_amu);
void lte_line_free(lte_line *L);

/* Per-cell quantities, exposed for tests: populations of the lower and upper
 * level, partition function Z, source function S, inverse width iw [1/Hz]. */
typedef struct {
  double Z, p_l, p_u, eta, chi, S, iw;
} lte_cell;
void lte_cell_eval(const lte_line *L, double T, double vturb, lte_cell *out);

/* The partition function as the kernel evaluates it: from the table for
 * 1 K <= T < 32768 K (within 5e-14 relative of the direct sum, checked when
 * the table is built), else the direct sum over all levels. */
double lte_partition(const lte_line *L, double T);

#endif
