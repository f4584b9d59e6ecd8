/* ref_lte.h - slow, literal scalar reference of docs/physics.md for tests. */
#ifndef COEMU_REF_LTE_H
#define COEMU_REF_LTE_H
#include <math.h>

#include "solver/lamda.h"
/* How many segments took each branch (summed over calls). */
typedef struct { long b10_small, b10_exact, taylor, exact; } ref_lte_branch_counts;
extern ref_lte_branch_counts ref_lte_counts;
/* image[(x*ny+y)*nf+f]; v,T,n [(x*ny+y)*nz+z]; libm exp/erf; no |I|.
 * noise (optional, per pixel): how far the image may move when exp(-b^2) and
 * erf(b) are off by ~2 ulp, as different libm/vector implementations are:
 * the segment formula divides differences of erf by b10^2, so where the
 * line is far in the wing with a small velocity step this is the intrinsic
 * uncertainty of Pomme's own result. */
void ref_lte_image(const lamda_molecule *m, int transition, double mass_amu, const double *freqs,
                   int nf, int nx, int ny, int nz, const double *v, const double *T,
                   const double *n, double dx, double vturb, double background, int corrected,
                   double *image, double *noise);
/* docs/physics.md's classes of a pixel compared with this reference (mx: the
 * largest |I| of the reference image): round-off (|I| <= 1e-12 mx), ill-
 * conditioned (the reference's own noise above 1e-8 |I|), or counted. */
typedef enum { REF_LTE_ROUNDOFF, REF_LTE_ILL, REF_LTE_COUNTED } ref_lte_class;
static inline ref_lte_class ref_lte_classify(double ref, double noise, double mx) {
  if (fabs(ref) <= 1e-12 * mx) return REF_LTE_ROUNDOFF;
  return noise > 1e-8 * fabs(ref) ? REF_LTE_ILL : REF_LTE_COUNTED;
}
#endif
