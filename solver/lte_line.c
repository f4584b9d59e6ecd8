/* lte_line.c - the line model of the LTE imager (see lte_line.h and
 * docs/physics.md): the constants of one transition and its partition
 * function table.
 *
 * Expressions follow Pomme's operation order (parenthesised as Pomme
 * evaluates it); the build disables FMA contraction for solver/.
 */
#include "solver/lte_line.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "solver/lte_kernel.h"

#define PI 3.141592653589793

typedef struct {
  double e;
  double g;
} level_eg;

/* The partition function Z(T) = sum_i g_i exp(-E_i/(k T)) over all levels
 * depends on T alone, and summing it directly costs one exp per level and
 * cell (41 for CO, 91 for SO): most of the solver's time. The kernel reads
 * it instead from Chebyshev pieces (layout in lte_kernel.h): each octave
 * [2^e, 2^(e+1)) of T from 1 K to 32768 K is cut into LTE_ZT_SUB equal
 * pieces, each with a degree LTE_ZT_NC-1 interpolant (128 pieces of degree
 * 6: fewer gathered coefficients per cell than 64 of degree 9, measured
 * 0.8 ms faster per 64^3 cube) at Chebyshev nodes of the direct sum. Every
 * piece is checked against the direct sum at points between the nodes when
 * the table is built; one that is off by more than ZT_TOL relative is marked
 * to use the direct sum instead. So Z differs from Pomme's by <= 5e-14
 * relative, far inside the 1e-7 equivalence; S, eta and chi follow it
 * linearly. */
#define ZT_TOL 5e-14

static double z_direct(const lte_line *L, double T) {
  return lte_z_direct(L->nlev, L->neg_e_over_k, L->g, T);
}

static double piece_T(int piece, double s) {
  int e = piece / LTE_ZT_SUB, j = piece % LTE_ZT_SUB;
  return ldexp(1.0 + (j + 0.5 * (s + 1.0)) / LTE_ZT_SUB, e);
}

static int z_table_build(lte_line *L) {
  const int np = LTE_ZT_PIECES;
  L->ztab = ce_malloc_array((size_t)np * LTE_ZT_NC, sizeof(double), "partition table");
  L->zdirect = ce_calloc_array((size_t)np, 1, "partition table");
  L->zpieces = np;
  if (!L->ztab || !L->zdirect) return -1;
  for (int p = 0; p < np; p++) {
    double f[LTE_ZT_NC], *c = L->ztab + (size_t)p * LTE_ZT_NC;
    for (int n = 0; n < LTE_ZT_NC; n++)
      f[n] = z_direct(L, piece_T(p, cos(PI * (n + 0.5) / LTE_ZT_NC)));
    for (int k = 0; k < LTE_ZT_NC; k++) {
      double a = 0;
      for (int n = 0; n < LTE_ZT_NC; n++) a += f[n] * cos(PI * k * (n + 0.5) / LTE_ZT_NC);
      c[k] = (k == 0 ? 1.0 : 2.0) * a / LTE_ZT_NC;
    }
    for (int q = 0; q <= 6; q++) { /* check between and beyond the nodes */
      double s = -1.0 + q / 3.0, zt = lte_z_cheb(c, s), zd = z_direct(L, piece_T(p, s));
      if (!(fabs(zt - zd) <= ZT_TOL * zd)) L->zdirect[p] = L->any_zdirect = 1;
    }
  }
  return 0;
}

double lte_partition(const lte_line *L, double T) {
  return lte_z_partition(L->nlev, L->neg_e_over_k, L->g, L->ztab, L->zdirect, T);
}

int lte_line_init(lte_line *L, const lamda_molecule *m, int transition, double mass_amu) {
  memset(L, 0, sizeof *L);
  CE_TRY(lamda_check_transition(m, transition));
  const lamda_line *t = &m->lines[transition - 1];
  L->transition = transition;
  L->upper = t->upper;
  L->lower = t->lower;
  L->nlev = m->nlev;
  L->mass_amu = mass_amu > 0 ? mass_amu : m->weight;
  if (!(L->mass_amu > 0) || !isfinite(L->mass_amu))
    return ce_err("molecular mass = %g u, expected > 0", L->mass_amu);
  level_eg *lv = ce_malloc_array((size_t)m->nlev, sizeof *lv, "LTE levels");
  L->neg_e_over_k = ce_malloc_array((size_t)m->nlev, sizeof(double), "LTE levels");
  L->g = ce_malloc_array((size_t)m->nlev, sizeof(double), "LTE levels");
  if (!lv || !L->neg_e_over_k || !L->g) {
    free(lv);
    lte_line_free(L);
    return -1;
  }
  /* Pomme: energy *= 1.0E+2*HH*CC (cm^-1 -> J); exponent = (-energy/KB)/T */
  const double cm_to_j = (1.0e2 * LTE_H) * LTE_C;
  for (int i = 0; i < m->nlev; i++) {
    double e_j = m->levels[i].energy_cm * cm_to_j;
    lv[i].e = -e_j / LTE_KB;
    lv[i].g = m->levels[i].weight;
  }
  L->neg_e_over_k_u = lv[t->upper - 1].e;
  L->neg_e_over_k_l = lv[t->lower - 1].e;
  L->g_u = lv[t->upper - 1].g;
  L->g_l = lv[t->lower - 1].g;
  for (int i = 0; i < m->nlev; i++) { /* file order, as Pomme sums */
    L->neg_e_over_k[i] = lv[i].e;
    L->g[i] = lv[i].g;
  }
  free(lv);
  if (z_table_build(L) < 0) {
    lte_line_free(L);
    return -1;
  }
  /* Pomme's LineData/Line constants */
  L->nu0 = t->freq_ghz * 1.0e9;
  L->A = t->A;
  L->B_ul = (L->A * (LTE_C * LTE_C)) / ((2.0 * LTE_H) * pow(L->nu0, 3));
  L->B_lu = (L->g_u / L->g_l) * L->B_ul;
  L->fac = (LTE_H * L->nu0) / (4.0 * PI);
  L->nu0_over_c = L->nu0 / LTE_C;
  L->two_k_over_m = (2.0 * LTE_KB) / (L->mass_amu * LTE_AMU);
  return 0;
}

void lte_line_free(lte_line *L) {
  if (!L) return;
  free(L->neg_e_over_k);
  free(L->g);
  free(L->ztab);
  free(L->zdirect);
  L->neg_e_over_k = L->g = L->ztab = NULL;
  L->zdirect = NULL;
}

void lte_cell_eval(const lte_line *L, double T, double vturb, lte_cell *o) {
  double invT = 1.0 / T, Z = z_direct(L, T);
  double r = 1.0 / Z;
  o->Z = Z;
  o->p_l = (L->g_l * exp(L->neg_e_over_k_l * invT)) * r;
  o->p_u = (L->g_u * exp(L->neg_e_over_k_u * invT)) * r;
  o->eta = (L->fac * L->A) * o->p_u;
  o->chi = L->fac * (L->B_lu * o->p_l - L->B_ul * o->p_u);
  /* Below ~0.05 K both levels' populations underflow to 0: the cell neither
   * emits nor absorbs, and its S (0/0 in Pomme, which then returns NaN
   * images) is set to 0, the value whose contribution is the true one. */
  o->S = o->chi != 0 ? o->eta / o->chi : 0.0;
  o->iw = 1.0 / (L->nu0_over_c * sqrt(L->two_k_over_m * T + vturb * vturb));
}
