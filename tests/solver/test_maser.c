/* test_maser.c - the line imager on masing rays (docs/physics.md, "Masing
 * segments"): non-LTE populations that are inverted in some cells, so that
 * the line opacity chi (and a = a*dx) changes sign between neighbouring
 * cells and S = eta/chi diverges where chi crosses 0.
 *
 *  - every pixel >= 0 (the exact I = int eta exp(-tau) ds, eta >= 0, no
 *    background, never is < 0), and within a stated bound of an
 *    independent fine quadrature of the same piecewise-linear model (a, e =
 *    S a, b linear in s along each segment; midpoint rule, 10^5 sub-steps a
 *    segment), the bound shrinking as the ray is refined;
 *  - the CPU kernel, the host-run device bodies (both forms) bit for bit,
 *    float64 and float32 (literal mode);
 *  - the float32 path >= 0 and within 1e-5 of the peak from float64;
 *  - a ray without a masing segment (ray 5, inverted throughout) for
 *    comparison: the S-linear-in-tau term, second order there;
 *  - the same ten times thicker (|tau| up to 21, amplified and absorbed).
 * Fails on the S-linear-in-tau term across a sign change (the pixels go
 * negative, down to -100 times the largest positive one), and on the
 * emissivity form on the masing segment alone (the scheme before
 * 2026-12-06: the segments beside the crossing, S-linear, left 0.18 of the
 * peak at m = 4 and converged as 1/m from there, 60 times above the bound). */
#include <stdlib.h>

#include "check.h"
#include "co_line.h"
#include "solver/freqgrid.h"
#include "solver/lamda.h"
#include "solver/lte.h"
#include "solver/lte_kernel_body.h"

static lamda_molecule co;
static lte_line L;

#define NF FREQGRID_COEMUNET_N
#define TK 50.0    /* K, every cell: the width (so b is linear in v) */
#define NDEN 1e6   /* m^-3, every cell: a and e linear in (pl, pu) */
#define DX 2e11    /* m; test_masing_rays also runs 10 x thicker */
#define SQRT_PI_ 1.7724538509055159

/* The rays: cells of (v [m/s], pl, pu). The inversion threshold is
 * pu = (g_u/g_l) pl = 5/3 pl (CO J=2-1). */
typedef struct {
  int nz;
  double v[4], pl[4], pu[4];
} ray_def;
static const ray_def rays[] = {
    {3, {-200, 0, 200}, {0.30, 0.25, 0.08}, {0.10, 0.20, 0.40}}, /* + + -: crossing at s 0.45 */
    {3, {200, 0, -200}, {0.08, 0.25, 0.30}, {0.40, 0.20, 0.10}}, /* - + +: at s 0.55 */
    {2, {-100, 100}, {0.30, 0.05}, {0.02, 0.40}},                /* strong absorber -> maser */
    {4, {300, 100, -100, -300}, {0.20, 0.16, 0.22, 0.13}, {0.10, 0.43, 0.25, 0.43}}, /* + - + - */
    {2, {0, 0}, {0.16, 0.15}, {0.36, 0.11}},                     /* - +, no velocity step */
    {2, {-150, 150}, {0.10, 0.08}, {0.30, 0.40}},                /* - -: no masing segment */
    /* a thick absorbing column, its last cell inverted: velocity steps of
     * ~12, ~2.4 and 0 line widths a cell (the unresolved winds of a
     * sampled cube, and none) */
    {4, {-3000, -1000, 1000, 3000}, {0.30, 0.30, 0.30, 0.05}, {0.10, 0.12, 0.10, 0.40}},
    {4, {-600, -200, 200, 600}, {0.30, 0.30, 0.30, 0.05}, {0.10, 0.12, 0.10, 0.40}},
    {4, {0, 0, 0, 0}, {0.30, 0.30, 0.30, 0.05}, {0.10, 0.12, 0.10, 0.40}},
};
#define NRAY (int)(sizeof rays / sizeof *rays)

/* ray r refined m times: m - 1 cells inserted in each segment, v, pl, pu
 * linear between its ends (so a, e = S a and b are linear along it, T and
 * n being constant: the same piecewise-linear model) */
static int refine(const ray_def *r, int m, double *v, double *pl, double *pu) {
  int nz = 0;
  for (int k = 0; k + 1 < r->nz; k++)
    for (int j = 0; j < m; j++) {
      const double s = (double)j / m;
      v[nz] = r->v[k] + s * (r->v[k + 1] - r->v[k]);
      pl[nz] = r->pl[k] + s * (r->pl[k + 1] - r->pl[k]);
      pu[nz] = r->pu[k] + s * (r->pu[k + 1] - r->pu[k]);
      nz++;
    }
  v[nz] = r->v[r->nz - 1], pl[nz] = r->pl[r->nz - 1], pu[nz] = r->pu[r->nz - 1];
  return nz + 1;
}

/* The independent check: I = int e(s) phi(s) exp(-tau(s)) ds, tau' = a phi,
 * phi = exp(-b^2), with a (absorption: chi), e (emission: eta) and b linear
 * along each segment; midpoint rule, Q sub-steps a segment (tau at the
 * sub-step's middle from the exact sum of the ones before plus half its
 * own). Error O(Q^-2): < 1e-9 relative here. */
static double quadrature(const lte_kernel_model *M, int nz, const double *v, const double *pl,
                         const double *pu, double nu, int Q, double *tau_out) {
  double I = 0, tau = 0;
  const double iw = 1 / (M->nu0_over_c * sqrt(M->two_k_over_m * TK + M->vt2));
  const double k = iw / SQRT_PI_ * NDEN * M->dx;
  for (int z = 0; z + 1 < nz; z++) {
    const double a0 = k * M->fac * (M->B_lu * pl[z] - M->B_ul * pu[z]);
    const double a1 = k * M->fac * (M->B_lu * pl[z + 1] - M->B_ul * pu[z + 1]);
    const double e0 = k * M->eta_c * pu[z], e1 = k * M->eta_c * pu[z + 1];
    const double b0 = iw * ((1 + v[z] / M->c) * nu - M->nu0);
    const double b1 = iw * ((1 + v[z + 1] / M->c) * nu - M->nu0);
    for (int j = 0; j < Q; j++) {
      const double s = (j + 0.5) / Q, b = b0 + s * (b1 - b0), phi = exp(-b * b) / Q;
      const double dt = (a0 + s * (a1 - a0)) * phi;
      I += (e0 + s * (e1 - e0)) * phi * exp(-(tau + 0.5 * dt));
      tau += dt;
    }
  }
  *tau_out = tau;
  return I;
}

/* ---------------------------------------------------------------------- */
/* the device's bodies on the host (as tests/solver/test_lte_backends.c):
 * one ray, float64 cells; fused: the fused form */
static void body_solve(const lte_kernel_model *M, int nz, const double *v, const double *T,
                       const double *n, const double *pl, const double *pu, const double *f,
                       int fused, double *img) {
  double *scratch = malloc(4 * nz * sizeof(double));
  int bad = 0;
  lte_body_view V = {.nray = 1, .npix = 1, .nz = nz, .nf = NF, .dtype = LTE_KERNEL_F64,
                     .v = v, .T = T, .n = n, .pl = pl, .pu = pu, .freqs = f,
                     .S = scratch, .adx = scratch + nz, .iw = scratch + 2 * nz,
                     .shift = scratch + 3 * nz, .bad = &bad, .image = img};
  if (fused)
    CHECK(lte_body_run_host_fused(M, &V) == 0);
  else
    lte_body_run_host(M, &V);
  CHECK(!bad);
  free(scratch);
}

static void cpu_solve(const lte_kernel_model *M, int nz, const double *v, const double *T,
                      const double *n, const double *pl, const double *pu, const double *f,
                      double *img) {
  const void *pv = v, *pT = T, *pn = n, *ppl = pl, *ppu = pu;
  lte_kernel_batch b = {.ncube = 1, .nx = 1, .ny = 1, .nz = nz, .dtype = LTE_KERNEL_F64,
                        .v = &pv, .T = &pT, .n = &pn, .nf = NF, .freqs = f, .image = &img,
                        .threads = 1, .pop_l = &ppl, .pop_u = &ppu};
  CHECK(lte_kernel_cpu.solve(M, &b) == 0);
}

#define MAXZ 1100

/* every ray, refined m = 1, 4, 16, 64 times, cells dx_scale x DX long:
 * >= 0, the bodies' bits, the quadrature within a bound of the ray's
 * largest pixel that shrinks with the scheme's order; the float32 path
 * likewise (its own bits in the cpu kernel and the bodies, >= 0, within
 * 1e-5 of the peak from float64) */
static void masing_rays(double dx_scale) {
  double f[NF];
  freqgrid_coemunet(L.nu0, f);
  static const int ms[] = {1, 4, 16, 64};
  /* The bound, of the ray's peak. A masing ray (all but ray 5: every
   * segment in the emissivity form) converges as 1/m: the attenuation
   * across a segment is taken as exp(-D s) where exp(-b^2) changes along
   * it, an error O(D) of the segment's emission, O(1/m^2) a segment. So the
   * bound is B/m, and for rays 0-4 each refinement by 4 must gain at least
   * 2.5 (rays 6-8, with steps of line widths a cell, are not in the
   * asymptotic range from m = 1: 2.4e-4 then 3.6e-4 for ray 6). B: 5e-3 at
   * DX (seen: at most 2.2e-3 unrefined, 3.5e-5 at m = 64; the old scheme,
   * the masing segment alone in this form: up to 0.09, 0.44, 0.23, 0.019),
   * 0.05 ten times thicker (|tau| up to 21; seen 0.023 .. 3.4e-4). Ray 5
   * (inverted throughout, no masing segment) keeps the S-linear-in-tau
   * term, second order: 0.1/m^2 at DX (seen 0.071, 0.0049, 3e-4, 1.7e-5);
   * ten times thicker its amplification, e^4, takes the quadrature's own
   * error up to the scheme's at m = 64, so there 0.1. */
  const int thick = dx_scale > 1;
  const double B = thick ? 0.05 : 5e-3;
  static double v[MAXZ], T[MAXZ], n[MAXZ], pl[MAXZ], pu[MAXZ];
  for (int i = 0; i < MAXZ; i++) T[i] = TK, n[i] = NDEN;
  int negative = 0;
  for (int corrected = 0; corrected < 2; corrected++) {
    lte_options o = {.dx = DX * dx_scale, .libm = 1, .corrected_taylor = corrected};
    lte_kernel_model M, M32;
    lte_kernel_model_init(&M, &L, &o);
    o.precision = LTE_PRECISION_F32;
    lte_kernel_model_init(&M32, &L, &o);
    for (int r = 0; r < NRAY; r++) {
      double worst[4] = {0}, taumax = 0, worst32 = 0;
      for (int mi = 0; mi < 4; mi++) {
        const int nz = refine(&rays[r], ms[mi], v, pl, pu);
        double cpu[NF], body[NF], fused[NF], ref[NF], mx = 0;
        double cpu32[NF], body32[NF], fused32[NF];
        cpu_solve(&M, nz, v, T, n, pl, pu, f, cpu);
        body_solve(&M, nz, v, T, n, pl, pu, f, 0, body);
        body_solve(&M, nz, v, T, n, pl, pu, f, 1, fused);
        CHECK_MSG(!memcmp(cpu, body, sizeof cpu) && !memcmp(cpu, fused, sizeof cpu),
                  "ray %d x %d: the bodies differ from the cpu kernel", r, ms[mi]);
        cpu_solve(&M32, nz, v, T, n, pl, pu, f, cpu32);
        body_solve(&M32, nz, v, T, n, pl, pu, f, 0, body32);
        body_solve(&M32, nz, v, T, n, pl, pu, f, 1, fused32);
        CHECK_MSG(!memcmp(cpu32, body32, sizeof cpu) && !memcmp(cpu32, fused32, sizeof cpu),
                  "ray %d x %d, float32: the bodies differ from the cpu kernel", r, ms[mi]);
        for (int c = 0; c < NF; c++) {
          double tau;
          ref[c] = quadrature(&M, nz, v, pl, pu, f[c], 100000 / ms[mi] + 1, &tau);
          taumax = fmax(taumax, fabs(tau));
          mx = fmax(mx, ref[c]);
        }
        for (int c = 0; c < NF; c++) {
          if (!(cpu[c] >= 0 && cpu32[c] >= 0) && negative++ < 10)
            CHECK_FAIL_("ray %d x %d, corrected %d, channel %d: I = %.6g, float32 %.6g < 0 "
                        "(quadrature %.6g, peak %.6g)", r, ms[mi], corrected, c, cpu[c], cpu32[c],
                        ref[c], mx);
          worst[mi] = fmax(worst[mi], fabs(cpu[c] - ref[c]) / mx);
          worst32 = fmax(worst32, fabs(cpu32[c] - cpu[c]) / mx);
        }
        const double bound = r != 5 ? B / ms[mi] : thick ? 0.1 : 0.1 / ((double)ms[mi] * ms[mi]);
        CHECK_MSG(worst[mi] <= bound, "ray %d x %d, dx x %g, corrected %d: %.3g of the peak "
                  "from the quadrature (bound %.3g)", r, ms[mi], dx_scale, corrected, worst[mi],
                  bound);
        if (r < 5 && mi > 0)
          CHECK_MSG(worst[mi - 1] >= 2.5 * worst[mi], "ray %d, dx x %g: refined x%d %.3g, x%d "
                    "%.3g: not first order", r, dx_scale, ms[mi - 1], worst[mi - 1], ms[mi],
                    worst[mi]);
      }
      fprintf(stderr, "  ray %d, dx x %g, corrected %d: largest difference from the quadrature, of "
              "the peak, refined x1 x4 x16 x64: %.3g %.3g %.3g %.3g (|tau| <= %.3g); float32 "
              "from float64: %.3g\n", r, dx_scale, corrected, worst[0], worst[1], worst[2],
              worst[3], taumax, worst32);
      CHECK_MSG(worst32 <= 1e-5, "ray %d: float32 %.3g of the peak from float64", r, worst32);
    }
  }
}

static void test_masing_rays(void) { masing_rays(1.0); }
static void test_masing_rays_thick(void) { masing_rays(10.0); }

int main(void) {
  if (test_co_line(&co, &L) < 0) return 1;
  RUN(test_masing_rays);
  RUN(test_masing_rays_thick);
  lte_line_free(&L);
  lamda_free(&co);
  return check_report();
}
