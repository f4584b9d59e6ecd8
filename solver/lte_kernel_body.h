/* lte_kernel_body.h - the per-thread bodies of the device kernel
 * (solver/lte_kernel_cuda.cu), as functions that nvcc compiles for the
 * device and any C compiler for the host (LTE_HD, lte_kernel.h): CI runs
 * exactly this code, driven by a plain loop over the thread indices
 * (lte_body_run_host below; tests/solver/test_lte_backends.c), against the
 * CPU kernel and the literal reference. Only the launches, the copies and
 * the streams are left for the device.
 *
 * The arithmetic is the CPU kernel's (lte_kernel.h, lte_kernel_cpu.c),
 * scalar: every expression in the same order and parenthesisation, no FMA
 * contraction (-ffp-contract=off for C, --fmad=false for nvcc), the same
 * exact shortcuts in the wings (exp(-x) = 0 from x = 746, erf = +-1 from
 * b^2 = 36) and the same order of the sums: tau over segments in order; the
 * formal solution's segment terms in 8 partial sums (segment k into sum
 * k mod 8, each in order of k), then the 8 summed in order, as the CPU's
 * 8-lane accumulator does. Compiled for the host with libm this gives the
 * CPU portable kernel's bits and, in literal mode, the CPU kernel's bits
 * in every build (libm exp and erf, direct Z); on a device only exp and
 * erf differ (CUDA's, within 2 ulp), so the device images obey the
 * comparison rules of docs/physics.md.
 *
 * Layout of the work (one batch, rays r = c*nx*ny + x*ny + y):
 *   1. cell threads, t in [0, nray*nz): (ray, z) = lte_body_group(t, nz):
 *      check the cell, derive its constants (S, a*dx, 1/width, 1 + v/c)
 *      into the scratch arrays at z*nray + ray (so that the ray threads of
 *      a warp read neighbouring addresses); a bad cell sets bad[ray].
 *   2. ray threads, t in [0, nray*nf): (ray, channel f) = lte_body_group(t,
 *      nf): the optical depth and the formal solution along the ray,
 *      streaming over its cells, into image[ray*nf + f]; NaN where bad[ray].
 *   Both in groups of LTE_BODY_RAY_GROUP rays: a warp is 32 neighbouring
 *   rays at one z (one channel), the next warps the same rays at the next
 *   z (channel). So the cell threads' stores are whole lines, and their
 *   loads (z runs fastest in the cells) are shared by the group's warps in
 *   the cache; and the nf ray threads of a ray run together, reading the
 *   ray's scratch once from memory rather than nf times over a batch that
 *   does not fit the device's cache. The order of the threads changes no
 *   value: each writes only its own outputs.
 *   3. (targets != NULL) target threads, t in [0, nray*nf): the images as
 *      stored targets, float32 in (cube, f, pixel) order, so that a device
 *      sends back half the bytes and the host has no transpose to do.
 *      With lte_kernel_model.f32 the ray threads are lte_body_ray_thread_f32
 *      (the float32 path, below: its own formulas, within 1e-5 of these).
 *   4. (COEMU_CUDA_SOLVER_FORM) steps 1 and 2 in one kernel, a block per
 *      group of 32 rays, the cells through a tile of shared memory instead
 *      of the scratch arrays: the same functions in the same order, the
 *      same bits (section 4 below; lte_body_run_host_fused on the host).
 */
#ifndef COEMU_LTE_KERNEL_BODY_H
#define COEMU_LTE_KERNEL_BODY_H

#include <stdlib.h>

#include "solver/lte_kernel.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LTE_BODY_SQRT_PI 1.7724538509055159 /* as lte_kernel_cpu.c */

/* The segment arithmetic, written once for any type T with C's arithmetic
 * operators: double here (host and device) and the CPU kernel's 8-lane
 * vectors (GCC vector extensions, lte_kernel_cpu.c). One text gives the same
 * operations in the same order in every kernel. They declare the named
 * results in the caller's scope. */

/* the optical depth of segment (cells 0, 1): d in general, near where
 * |b1 - b0| < 1e-4 (the caller selects by b10). The two branches are also
 * macros of their own (b10 = b1 - b0 declared first), so that a vector
 * kernel computes only the one its lanes all take: the same operations give
 * the same bits either way. */
#define LTE_SEG_DTAU_FAR(T, a0, a1, b0, b1, eb0, eb1, er0, er1, b10, d)                       \
  T sp_a1b0_##d = (LTE_BODY_SQRT_PI * (a1)) * (b0);                                     \
  T sp_a0b1_##d = (LTE_BODY_SQRT_PI * (a0)) * (b1);                                     \
  T d = ((a1) - (a0)) * ((eb0) - (eb1));                                                \
  d = d + (sp_a1b0_##d - sp_a0b1_##d) * ((er0) - (er1));                                \
  d = d * (0.5 / (b10 * b10 + 1.0e-30))
#define LTE_SEG_DTAU_NEAR(T, a0, a1, b0, eb0, b10, near)                                      \
  T a01_##near = (a0) + (a1);                                                           \
  T near = (0.5 * a01_##near) * (eb0) -                                                 \
           ((1.0 / 3.0) * (a01_##near + (a1))) * (((eb0) * (b0)) * b10)
#define LTE_SEG_DTAU(T, a0, a1, b0, b1, eb0, eb1, er0, er1, b10, d, near)              \
  T b10 = (b1) - (b0);                                                                  \
  LTE_SEG_DTAU_FAR(T, a0, a1, b0, b1, eb0, eb1, er0, er1, b10, d);                      \
  LTE_SEG_DTAU_NEAR(T, a0, a1, b0, eb0, b10, near)

/* one segment's term of the formal solution, S linear in tau: r in general,
 * taylor where D < 1e-4 (the caller selects by D). corrected: the exact
 * series f0 = D/2 - D^2/6 + D^3/24, f1 = D/2 + D^2/6 + D^3/24; else Pomme's,
 * with the D^2 and D^3 signs swapped. Each branch is a macro of its own too
 * (as LTE_SEG_DTAU's). */
#define LTE_SEG_FORMAL_R(T, D, S0, S1, em0, em1, r)                                           \
  T r = (S0) * ((em1) - (em0) * (1.0 - (D)));                                           \
  r = r + (S1) * ((em0) - (em1) * (1.0 + (D)));                                         \
  r = r / ((D) + 1.0e-30)
#define LTE_SEG_FORMAL_TAYLOR(T, D, S0, S1, em0, em1, corrected, taylor)                      \
  T taylor;                                                                             \
  {                                                                                     \
    T c_ = 0.5 * (D), f0_ = c_, f1_ = c_;                                               \
    c_ = c_ * ((1.0 / 3.0) * (D));                                                      \
    if (corrected) {                                                                    \
      f0_ = f0_ - c_;                                                                   \
      f1_ = f1_ + c_;                                                                   \
      c_ = c_ * ((1.0 / 4.0) * (D));                                                    \
      f0_ = f0_ + c_;                                                                   \
      f1_ = f1_ + c_;                                                                   \
    } else {                                                                            \
      f0_ = f0_ + c_;                                                                   \
      f1_ = f1_ - c_;                                                                   \
      c_ = c_ * ((1.0 / 4.0) * (D));                                                    \
      f0_ = f0_ + c_;                                                                   \
      f1_ = f1_ - c_;                                                                   \
    }                                                                                   \
    taylor = (S0) * ((em0) * f0_) + (S1) * ((em1) * f1_);                               \
  }
#define LTE_SEG_FORMAL(T, D, S0, S1, em0, em1, corrected, r, taylor)                  \
  LTE_SEG_FORMAL_R(T, D, S0, S1, em0, em1, r);                                          \
  LTE_SEG_FORMAL_TAYLOR(T, D, S0, S1, em0, em1, corrected, taylor)
#define LTE_BODY_INV_SQRT_PI (1.0 / LTE_BODY_SQRT_PI)
#define LTE_BODY_EXP_ZERO 746.0 /* exp(-x) = 0 from here on (lte_kernel_cpu.c) */
#define LTE_BODY_LANES 8        /* the CPU's partial sums of the formal solution */
#if defined(__CUDA_ARCH__)
#define LTE_UNROLL _Pragma("unroll")
#else
#define LTE_UNROLL
#endif

/* A batch as the threads see it: the cubes gathered into one array each.
 * Every pointer is device memory on a device, host memory on the host. */
typedef struct lte_body_view {
  long long nray;  /* ncube * nx * ny */
  long long npix;  /* nx * ny: background_map[(ray % npix)*nf + f] */
  int nz, nf;
  lte_kernel_dtype dtype;
  const void *v, *T, *n;   /* [nray * nz]: ray r's cells at r*nz .. */
  const void *pl, *pu;     /* NULL (LTE), or the populations, same layout */
  const double *freqs;     /* [nf] */
  double background;
  const double *background_map; /* NULL or [npix * nf] */
  double *S, *adx, *iw, *shift; /* scratch [nz * nray]: cell z of ray r at z*nray + r */
  int *bad;                     /* [nray], zero before the cell threads */
  double *image;                /* [nray * nf] */
  float *targets; /* NULL or [nray * nf]: cube c's channel f at pixel p at (c nf + f) npix + p */
} lte_body_view;

/* Rays per group of threads (a warp's worth); 0: the plain order (ray
 * t / inner, j = t % inner for cells, ray t % nray, j = t / nray for rays),
 * kept for the device sweep (scripts/gpu-tune.sh, GPU_NVCC_DEFS). */
#ifndef LTE_BODY_RAY_GROUP
#define LTE_BODY_RAY_GROUP 32
#endif

/* Thread t of nray * inner as (ray, j): groups of LTE_BODY_RAY_GROUP rays
 * (the last one shorter), j = t's place within the group / the group's
 * width, the ray the remainder; a bijection onto [0, nray) x [0, inner). */
static inline LTE_HD void lte_body_group(long long t, long long nray, long long inner, int cells,
                                         long long *ray, int *j) {
#if LTE_BODY_RAY_GROUP > 0
  (void)cells;
  const long long G = (long long)LTE_BODY_RAY_GROUP * inner, g = t / G;
  const long long base = g * LTE_BODY_RAY_GROUP, rem = t - g * G;
  const long long w = nray - base < LTE_BODY_RAY_GROUP ? nray - base : LTE_BODY_RAY_GROUP;
  *ray = base + rem % w;
  *j = (int)(rem / w);
#else
  if (cells) *ray = t / inner, *j = (int)(t % inner);
  else *ray = t % nray, *j = (int)(t / nray);
#endif
}

static inline LTE_HD double lte_body_load(const void *a, lte_kernel_dtype dt, long long i) {
  return dt == LTE_KERNEL_F32 ? (double)((const float *)a)[i] : ((const double *)a)[i];
}

/* exp(-x) as the CPU kernel computes it (x >= 0 or -0) */
static inline LTE_HD double lte_body_expneg(double x) {
  return x >= LTE_BODY_EXP_ZERO ? 0.0 : exp(-x);
}

/* 1. one cell: its constants (S, a*dx, 1/width, 1 + v/c); 0 when the cell,
 * or its populations, are bad */
typedef struct lte_body_cell_c {
  double S, adx, iw, shift;
} lte_body_cell_c;
static inline LTE_HD int lte_body_cell(const lte_kernel_model *M, const lte_body_view *V,
                                       long long ray, int z, lte_body_cell_c *c) {
  const long long i = ray * V->nz + z; /* the cell in the input arrays */
  double v = lte_body_load(V->v, V->dtype, i), T = lte_body_load(V->T, V->dtype, i),
         n = lte_body_load(V->n, V->dtype, i);
  int ok = lte_kernel_cell_ok(v, T, n, M->c);
  double pl, pu;
  if (V->pl) { /* non-LTE: the given populations */
    pl = lte_body_load(V->pl, V->dtype, i);
    pu = lte_body_load(V->pu, V->dtype, i);
    ok &= lte_kernel_pop_ok(pl, pu);
  }
  if (!ok) return 0;
  if (!V->pl) {
    double invT = 1.0 / T;
    double Z = M->libm ? lte_z_direct(M->nlev, M->neg_e_over_k, M->g, T)
                       : lte_z_partition(M->nlev, M->neg_e_over_k, M->g, M->ztab, M->zdirect, T);
    double r = 1.0 / Z;
    pl = (M->g_l * exp(M->neg_e_over_k_l * invT)) * r;
    pu = (M->g_u * exp(M->neg_e_over_k_u * invT)) * r;
  }
  double eta = M->eta_c * pu;
  double chi = M->fac * (M->B_lu * pl - M->B_ul * pu);
  double S = chi != 0.0 ? eta / chi : 0.0; /* chi == 0: populations underflow */
  double iw = 1.0 / (M->nu0_over_c * sqrt(M->two_k_over_m * T + M->vt2));
  c->S = S;
  c->iw = iw;
  c->adx = (((LTE_BODY_INV_SQRT_PI * iw) * chi) * n) * M->dx;
  c->shift = 1.0 + v * M->inv_c;
  return 1;
}

/* a cell thread: the constants into the scratch arrays; a bad cell sets bad[ray] */
static inline LTE_HD void lte_body_cell_thread(const lte_kernel_model *M, const lte_body_view *V,
                                               long long t) {
  long long ray;
  int z;
  lte_body_group(t, V->nray, V->nz, 1, &ray, &z);
  lte_body_cell_c c;
  if (!lte_body_cell(M, V, ray, z, &c)) {
    V->bad[ray] = 1;
    return;
  }
  const long long o = (long long)z * V->nray + ray;
  V->S[o] = c.S;
  V->iw[o] = c.iw;
  V->adx[o] = c.adx;
  V->shift[o] = c.shift;
}

/* b, exp(-b^2), erf(b) of a cell at frequency nu */
static inline LTE_HD void lte_body_profile(const lte_kernel_model *M, double iw, double shift,
                                           double nu, double *b, double *eb, double *er) {
  double x = iw * (shift * nu - M->nu0);
  double bb = x * x;
  *b = x;
  *eb = bb >= LTE_BODY_EXP_ZERO ? 0.0 : exp(-bb);
  *er = bb >= 36.0 ? copysign(1.0, x) : erf(x);
}

/* the optical depth of one segment (cells 0 and 1) */
static inline LTE_HD double lte_body_dtau(double a0, double a1, double b0, double b1, double eb0,
                                          double eb1, double er0, double er1) {
  /* a branch, not a select: the 32 neighbouring rays of a warp mostly take
   * the same one, and the other (with its division) is then not run */
  const double b10 = b1 - b0;
  if (fabs(b10) < 1.0e-4) {
    LTE_SEG_DTAU_NEAR(double, a0, a1, b0, eb0, b10, near);
    return near;
  }
  LTE_SEG_DTAU_FAR(double, a0, a1, b0, b1, eb0, eb1, er0, er1, b10, d);
  return d;
}

/* one segment's term of the formal solution, S linear in tau */
static inline LTE_HD double lte_body_formal(double D, double S0, double S1, double em0, double em1,
                                            int corrected) {
  /* a branch, as lte_body_dtau's: thin segments (the line's wings) are most
   * of a ray's, and their warps then skip the general term's division */
  if (D < 1.0e-4) {
    LTE_SEG_FORMAL_TAYLOR(double, D, S0, S1, em0, em1, corrected, taylor);
    return taylor;
  }
  LTE_SEG_FORMAL_R(double, D, S0, S1, em0, em1, r);
  return r;
}

/* Masing rays (docs/physics.md, "Masing segments"): with non-LTE
 * populations the line opacity, and so a = a*dx, can change sign between
 * two cells (a population inversion on one side; LTE cells have a >= 0).
 * S = eta/chi diverges where chi crosses 0, so the term above (S linear in
 * tau) means nothing on such a segment (it goes negative, by far more than
 * the true intensity) and is too large on the segments beside it, where S
 * changes by a large factor however fine the ray. On a ray that has a
 * masing segment every segment takes the emissivity form instead: e = S a
 * (eta times the cell's constants: >= 0, finite as chi -> 0) linear along
 * the segment, as a and b are, and the attenuation across it taken as
 * exp(-D s):
 *   r = exp(-tau0) (E0 g0(D) + E1 g1(D)),
 *   E0 = int_0^1 e0 (1-s) exp(-b(s)^2) ds, E1 = int_0^1 e1 s exp(-b(s)^2) ds
 *        (the optical depth's exact formula with (a0, a1) -> (e0, 0), (0, e1);
 *        clamped at >= 0: the general branch cancels),
 *   g0(D) = 2 (D - 1 + e^-D)/D^2, g1(D) = 2 (1 - (1 + D) e^-D)/D^2
 *        (int_0^1 (1-s) e^-Ds ds and int_0^1 s e^-Ds ds over their D = 0
 *        values: > 0 for every D; amplified where D < 0).
 * Never negative; exact for a uniform segment (g0 + g1 = 2 (1 - e^-D)/D);
 * first order in the segment where exp(-b^2) changes along it. The test,
 * LTE_SEG_MASING, is written (a0 < 0 & a1 > 0) | (a0 > 0 & a1 < 0) rather
 * than a0 a1 < 0 (which underflows), with & and | so that it also gives a
 * vector kernel's lane mask. Rays without a masing segment (every LTE ray)
 * keep the term above, bit for bit. */
#define LTE_SEG_MASING(a0, a1) ((((a0) < 0.0) & ((a1) > 0.0)) | (((a0) > 0.0) & ((a1) < 0.0)))

/* g0(D), g1(D) above; |D| < 0.1: their series sum_n 2 (-D)^n / (n+2)! and
 * sum_n 2 (n+1) (-D)^n / (n+2)!, 11 terms (truncation < 1e-19 relative);
 * else from x = expm1(-D): g0 = 2 (D + x)/D^2, g1 = 2 (-x - D (1 + x))/D^2
 * (cancellation <= 20 at D = 0.1) */
static inline LTE_HD void lte_body_emissive_w(double D, double *g0, double *g1) {
  if (fabs(D) < 0.1) {
    *g0 = 1.0 - D * (1.0 / 3 - D * (1.0 / 12 - D * (1.0 / 60 - D * (1.0 / 360 - D * (1.0 / 2520 -
          D * (1.0 / 20160 - D * (1.0 / 181440 - D * (1.0 / 1814400 - D * (1.0 / 19958400 -
          D * (1.0 / 239500800))))))))));
    *g1 = 1.0 - D * (2.0 / 3 - D * (1.0 / 4 - D * (1.0 / 15 - D * (1.0 / 72 - D * (1.0 / 420 -
          D * (1.0 / 2880 - D * (1.0 / 22680 - D * (1.0 / 201600 - D * (1.0 / 1995840 -
          D * (1.0 / 21772800))))))))));
    return;
  }
  const double x = expm1(-D), k = 2.0 / (D * D);
  *g0 = (D + x) * k;
  *g1 = (-x - D * (1.0 + x)) * k;
}

/* a segment's term on a masing ray: em0 = exp(-tau0), D its optical depth */
static inline LTE_HD double lte_body_emissive(double a0, double a1, double S0, double S1,
                                              double b0, double b1, double eb0, double eb1,
                                              double er0, double er1, double D, double em0) {
  double E0 = lte_body_dtau(S0 * a0, 0.0, b0, b1, eb0, eb1, er0, er1);
  double E1 = lte_body_dtau(0.0, S1 * a1, b0, b1, eb0, eb1, er0, er1);
  if (!(E0 > 0.0)) E0 = 0.0;
  if (!(E1 > 0.0)) E1 = 0.0;
  double g0, g1;
  lte_body_emissive_w(D, &g0, &g1);
  return em0 * (E0 * g0 + E1 * g1);
}

/* whether a ray has a masing segment, from its cells' a*dx (adx[z * stride],
 * z < nz): its every segment then takes the emissivity form */
static inline LTE_HD int lte_body_masing_ray(const double *adx, long long stride, int nz) {
  int m = 0;
  for (int z = 0; z + 1 < nz; z++) m |= LTE_SEG_MASING(adx[z * stride], adx[(z + 1) * stride]);
  return m;
}

/* 2. one ray at one channel */
/* The ray threads' common start: thread t is (ray, channel) =
 * lte_body_group(t, nf); its output pixel, frequency and background. 0 when
 * the ray holds a bad cell (its pixel is then NaN and the thread has nothing
 * to do). */
typedef struct lte_body_ray {
  long long ray;
  int f;
  double *out, nu, bdy;
} lte_body_ray;
/* ray's channel f: its frequency and background (both forms) */
static inline LTE_HD void lte_body_channel(const lte_body_view *V, long long ray, int f, double *nu,
                                           double *bdy) {
  *nu = V->freqs[f];
  *bdy = V->background_map ? V->background_map[(ray % V->npix) * V->nf + f] : V->background;
}
static inline LTE_HD int lte_body_ray_begin(const lte_body_view *V, long long t, lte_body_ray *r) {
  lte_body_group(t, V->nray, V->nf, 0, &r->ray, &r->f);
  r->out = V->image + r->ray * V->nf + r->f;
  if (V->bad[r->ray]) {
    *r->out = NAN;
    return 0;
  }
  lte_body_channel(V, r->ray, r->f, &r->nu, &r->bdy);
  return 1;
}

/* A ray at one channel as it goes: the 8 partial sums of the formal
 * solution, the optical depth and the last cell's terms. Start at cell 0,
 * step to cells 1 .. nz-1 (segment k = cell k+1's step into acc[k mod 8]),
 * end: the intensity. One text for the ray threads below (the scratch in
 * device memory) and the fused form's (a tile in shared memory). On the
 * device the lane is a constant of an unrolled loop, so that acc stays in
 * registers. */
typedef struct lte_body_ray_state {
  double acc[LTE_BODY_LANES];
  double a0, S0, b0, eb0, er0, tau, em0;
  int emissive; /* the ray has a masing segment: every segment's term by lte_body_emissive */
} lte_body_ray_state;

static inline LTE_HD void lte_body_ray_start(const lte_kernel_model *M, double nu, double a,
                                             double S, double iw, double shift, int emissive,
                                             lte_body_ray_state *s) {
  for (int i = 0; i < LTE_BODY_LANES; i++) s->acc[i] = 0.0;
  s->emissive = emissive;
  s->a0 = a, s->S0 = S;
  lte_body_profile(M, iw, shift, nu, &s->b0, &s->eb0, &s->er0);
  s->tau = 0.0;
  s->em0 = lte_body_expneg(s->tau);
}

static inline LTE_HD void lte_body_ray_step(const lte_kernel_model *M, double nu, double a1,
                                            double S1, double iw1, double shift1,
                                            lte_body_ray_state *s, int lane) {
  double b1, eb1, er1;
  lte_body_profile(M, iw1, shift1, nu, &b1, &eb1, &er1);
  double D = lte_body_dtau(s->a0, a1, s->b0, b1, s->eb0, eb1, s->er0, er1);
  s->tau = s->tau + D;
  double em1 = lte_body_expneg(s->tau);
  /* behind an opaque layer every term is exactly 0 */
  if (!(s->em0 == 0.0 && em1 == 0.0)) {
    const double r = s->emissive
                         ? lte_body_emissive(s->a0, a1, s->S0, S1, s->b0, b1, s->eb0, eb1, s->er0,
                                             er1, D, s->em0)
                         : lte_body_formal(D, s->S0, S1, s->em0, em1, M->corrected_taylor);
    s->acc[lane] = s->acc[lane] + r;
  }
  s->a0 = a1, s->S0 = S1, s->b0 = b1, s->eb0 = eb1, s->er0 = er1, s->em0 = em1;
}

static inline LTE_HD double lte_body_ray_end(const lte_kernel_model *M, double bdy,
                                             const lte_body_ray_state *s) {
  double sum = 0.0;
  for (int i = 0; i < LTE_BODY_LANES; i++) sum += s->acc[i];
  double I = bdy * s->em0 + sum;
  return M->take_abs ? fabs(I) : I;
}

/* A ray thread's cells, read a step ahead (LTE_BODY_READ_AHEAD): the four
 * values of cell k + 2 are loaded before step k (into cell k + 1) runs, so
 * that the step's arithmetic (the profile's exp and erf, the segment,
 * exp(-tau), the formal term: ~400 instructions of float64) runs while they
 * come from device memory. Read at the step instead, as before, every step
 * first waited for its cell's loads: the sm_90 SASS issued them at the
 * step's top and used them a few instructions later (docs/physics.md, "The
 * CUDA kernel"). The same values reach the same arithmetic either way; 0
 * keeps the old order for the device sweep (scripts/gpu-tune.sh). */
#ifndef LTE_BODY_READ_AHEAD
#define LTE_BODY_READ_AHEAD 1
#endif
typedef struct lte_body_next {
  double a, S, iw, shift;
} lte_body_next;
/* cell z of the ray, or zeros past its last cell */
static inline LTE_HD void lte_body_next_load(const lte_body_view *V, int z, long long ray,
                                             lte_body_next *c) {
  if (z >= V->nz) {
    c->a = c->S = c->iw = c->shift = 0.0;
    return;
  }
  const long long o = (long long)z * V->nray + ray;
  c->a = V->adx[o], c->S = V->S[o], c->iw = V->iw[o], c->shift = V->shift[o];
}
/* step k's cell (k + 1) into cur; ahead holds cell k + 1 on entry (from
 * lte_body_next_load(V, 1, ...) before step 0) and cell k + 2 on return */
static inline LTE_HD void lte_body_next_step(const lte_body_view *V, int k, long long ray,
                                             lte_body_next *ahead, lte_body_next *cur) {
#if LTE_BODY_READ_AHEAD
  *cur = *ahead;
  lte_body_next_load(V, k + 2, ray, ahead);
#else
  (void)ahead;
  lte_body_next_load(V, k + 1, ray, cur);
#endif
}

static inline LTE_HD void lte_body_ray_thread(const lte_kernel_model *M, const lte_body_view *V,
                                              long long t) {
  lte_body_ray r;
  if (!lte_body_ray_begin(V, t, &r)) return;
  const long long ray = r.ray;
  const int nz = V->nz;
  lte_body_ray_state s;
  lte_body_ray_start(M, r.nu, V->adx[ray], V->S[ray], V->iw[ray], V->shift[ray],
                     V->pl && lte_body_masing_ray(V->adx + ray, V->nray, nz), &s);
  lte_body_next c;
  lte_body_next_load(V, 1, ray, &c);
  for (int k0 = 0; k0 + 1 < nz; k0 += LTE_BODY_LANES) {
    LTE_UNROLL
    for (int j = 0; j < LTE_BODY_LANES; j++) {
      const int k = k0 + j;
      if (k + 1 >= nz) break;
      lte_body_next cur;
      lte_body_next_step(V, k, ray, &c, &cur);
      lte_body_ray_step(M, r.nu, cur.a, cur.S, cur.iw, cur.shift, &s, j);
    }
  }
  *r.out = lte_body_ray_end(M, r.bdy, &s);
}

/* ---------------------------------------------------------------------- */
/* The float32 path (lte_kernel_model.f32; docs/physics.md, "The float32
 * path"). The formulas above cancel: erf1 - erf0 and e0 - e1 over
 * (b1 - b0)^2, em1 - em0 (1 - D) over D. In float32 (u = 6e-8) that
 * amplifies a rounding by 1e4 and more on thin segments. Here the same
 * integrals are written so that nothing cancels by more than a small
 * bounded factor, and computed in float32 (exp, erfc, the segment and the
 * formal solution); what stays float64 is cheap and keeps the error bound:
 * the cell constants (the cell thread above, unchanged), b (the Doppler
 * offset nu (1 + v/c) - nu0 cancels; b is the float64 expression rounded
 * once), and the two running sums along the ray (tau and the intensity). */

#define LTE_F32_SQRT_PI_2 0.886226925f /* sqrt(pi)/2 */
#define LTE_F32_EXP_ZERO 104.0f        /* expf(-x) = 0 from here on (below the least subnormal) */

/* exp(-x), x >= 0, float */
static inline LTE_HD float lte_f32_expneg(float x) { return x >= LTE_F32_EXP_ZERO ? 0.0f : expf(-x); }

/* The optical depth of a segment, int_0^1 a(s) exp(-b(s)^2) ds with a and b
 * linear from (a0, b0) to (a1, b1) (the exact integral that LTE_SEG_DTAU
 * writes with erf differences), from e = exp(-b^2) and c = erfc(|b|) of the
 * two cells. It is a0 K0 + a1 K1 with the endpoint weights
 * K0 = int (1-s) E, K1 = int s E >= 0, so with a >= 0 nothing cancels in the
 * sum. It is even in (b0, b1) -> (-b0, -b1), so bm = (b0+b1)/2 >= 0 below.
 *  - near (|h| <= 1/2, |2 bm h| <= 1, h = (b1-b0)/2): E around the midpoint,
 *    exp(-(bm + h t)^2) = exp(-bm^2) sum c_n t^n with c_0 = 1, c_1 = -x,
 *    (n+1) c_{n+1} = -(x c_n + 2y c_{n-1}), x = 2 bm h, y = h^2; then
 *    J0 = exp(-bm^2) sum_even c_n/(n+1), J1 = exp(-bm^2) sum_odd c_n/(n+2),
 *    K0 = (J0 - J1)/2, K1 = (J0 + J1)/2 (|J1| <= J0/2: no cancellation);
 *  - far: with p <= q the two b's and L = q - p, I0 = int_p^q E du from
 *    erfc differences in the same tail (p >= 0: erfc(p) - erfc(q), ratio
 *    <= exp(-L(p+q)) <= exp(-1)) or erf sums across 0 (p < 0), the moment
 *    I1 = int (u - p) E du = (e_p - e_q)/2 - p I0 and int (q - u) E du =
 *    L I0 - I1; K_p, K_q = those over L^2. */
#define LTE_F32_NSER 14 /* the near series to c_(NSER+1): truncation < 3e-11 of J0 */

/* The float32 segment arithmetic, written once for any type T with C's
 * arithmetic operators, as LTE_SEG_DTAU / LTE_SEG_FORMAL above: float in the
 * bodies (host and device), the CPU kernel's 16-lane float vectors
 * (lte_kernel_cpu.c). A branch of the scalar bodies is one macro; the
 * bodies choose between them with if, the vector kernel computes them all
 * and keeps each lane's own (the same operations in the same order: the
 * same bits per lane). SPLAT(c): the constant c as a T; SEL(m, a, b): a
 * where m, else b (m: a comparison of T's); EXPNEG: lte_f32_expneg on T.
 * Each declares its named result in the caller's scope. */

/* dtau, near: the series around the midpoint (bm, h after the sign flip) */
#define LTE_F32_DTAU_NEAR(T, SPLAT, EXPNEG, a0, a1, bm, h, out)                               \
  T out;                                                                                      \
  {                                                                                           \
    /* 1/k, k = 1 .. LTE_F32_NSER + 3 (multiplications: no divisions in the loop) */          \
    const float inv_[LTE_F32_NSER + 4] = {0.0f,       1.0f,       1.0f / 2,  1.0f / 3,       \
                                          1.0f / 4,   1.0f / 5,   1.0f / 6,  1.0f / 7,       \
                                          1.0f / 8,   1.0f / 9,   1.0f / 10, 1.0f / 11,      \
                                          1.0f / 12,  1.0f / 13,  1.0f / 14, 1.0f / 15,      \
                                          1.0f / 16,  1.0f / 17};                             \
    const T x_ = 2.0f * (bm) * (h), y2_ = 2.0f * ((h) * (h));                                 \
    T cm_ = SPLAT(1.0f), cn_ = -x_, s0_ = SPLAT(1.0f), s1_ = -x_ * (1.0f / 3.0f);             \
    LTE_UNROLL                                                                                \
    for (int n_ = 1; n_ < LTE_F32_NSER; n_ += 2) { /* c_{n+1} (even), then c_{n+2} (odd) */   \
      const T ce_ = -(x_ * cn_ + y2_ * cm_) * inv_[n_ + 1];                                   \
      s0_ += ce_ * inv_[n_ + 2];                                                              \
      const T co_ = -(x_ * ce_ + y2_ * cn_) * inv_[n_ + 2];                                   \
      s1_ += co_ * inv_[n_ + 4];                                                              \
      cm_ = ce_, cn_ = co_;                                                                   \
    }                                                                                         \
    const T em_ = EXPNEG((bm) * (bm));                                                        \
    const T J0_ = em_ * s0_, J1_ = em_ * s1_;                                                 \
    out = (a0) * (0.5f * (J0_ - J1_)) + (a1) * (0.5f * (J0_ + J1_));                          \
  }

/* dtau, far: p <= q the two b's, the erfc differences in one tail (p >= 0)
 * or the erf sum across 0 (p < 0), selected per value */
#define LTE_F32_DTAU_FAR(T, SPLAT, SEL, a0, a1, b0, b1, e0, e1, c0, c1, out)                        \
  T out;                                                                                      \
  {                                                                                           \
    const T p_ = SEL((b1) < (b0), b1, b0), q_ = SEL((b1) < (b0), b0, b1);                     \
    const T ap_ = SEL((b1) < (b0), a1, a0), aq_ = SEL((b1) < (b0), a0, a1);                   \
    const T ep_ = SEL((b1) < (b0), e1, e0), eq_ = SEL((b1) < (b0), e0, e1);                   \
    const T cp_ = SEL((b1) < (b0), c1, c0), cq_ = SEL((b1) < (b0), c0, c1);                   \
    const T L_ = q_ - p_;                                                                     \
    /* same tail: erfc(p) - erfc(q) */                                                        \
    const T I0s_ = LTE_F32_SQRT_PI_2 * (cp_ - cq_);                                           \
    T Iqs_ = 0.5f * (ep_ - eq_) - p_ * I0s_;                                                  \
    Iqs_ = SEL(Iqs_ > 0.0f, Iqs_, SPLAT(0.0f));                                               \
    const T Ips_ = L_ * I0s_ - Iqs_;                                                          \
    /* across 0 (|p| <= q): erf(q) + erf(|p|), both terms of Iq >= 0 */                       \
    const T I0a_ = LTE_F32_SQRT_PI_2 * ((1.0f - cq_) + (1.0f - cp_));                         \
    const T Iqa_ = 0.5f * (ep_ - eq_) - p_ * I0a_;                                            \
    const T Ipa_ = q_ * I0a_ - 0.5f * (ep_ - eq_);                                            \
    const T il2_ = 1.0f / (L_ * L_);                                                          \
    out = (ap_ * SEL(p_ >= 0.0f, Ips_, Ipa_) + aq_ * SEL(p_ >= 0.0f, Iqs_, Iqa_)) * il2_;     \
  }

/* the formal solution's term, D < 1e-4: Pomme's series as LTE_SEG_FORMAL */
#define LTE_F32_FORMAL_TAYLOR(T, D, S0, S1, em0, em1, corrected, out)                         \
  T out;                                                                                      \
  {                                                                                           \
    const T c1_ = 0.5f * (D), c2_ = c1_ * ((1.0f / 3.0f) * (D)), c3_ = c2_ * (0.25f * (D));   \
    const T f0_ = (corrected) ? c1_ - c2_ + c3_ : c1_ + c2_ + c3_;                            \
    const T f1_ = (corrected) ? c1_ + c2_ + c3_ : c1_ - c2_ - c3_;                            \
    out = (S0) * ((em0) * f0_) + (S1) * ((em1) * f1_);                                        \
  }

/* the weights' series, D < 1/2 (Horner from n = 9: coefficients 1/(n+1)!
 * and n/(n+1)! with alternating signs) */
#define LTE_F32_FORMAL_SERIES(T, SPLAT, D, w0, w1)                                                   \
  T w0, w1;                                                                                   \
  {                                                                                           \
    const float k0_[9] = {1.0f / 2,      -1.0f / 6,     1.0f / 24,      -1.0f / 120,         \
                          1.0f / 720,    -1.0f / 5040,  1.0f / 40320,   -1.0f / 362880,      \
                          1.0f / 3628800};                                                    \
    const float k1_[9] = {1.0f / 2,      -2.0f / 6,     3.0f / 24,      -4.0f / 120,         \
                          5.0f / 720,    -6.0f / 5040,  7.0f / 40320,   -8.0f / 362880,      \
                          9.0f / 3628800};                                                    \
    w0 = SPLAT(k0_[8]), w1 = SPLAT(k1_[8]);                                                   \
    LTE_UNROLL                                                                                \
    for (int i_ = 7; i_ >= 0; i_--) w0 = w0 * (D) + k0_[i_], w1 = w1 * (D) + k1_[i_];         \
    w0 *= (D), w1 *= (D);                                                                     \
  }

/* the weights from g = 1 - e^-D (EXPM1: expm1f on T), D >= 1/2 */
#define LTE_F32_FORMAL_EXP(T, EXPM1, D, w0, w1)                                               \
  T w0, w1;                                                                                   \
  {                                                                                           \
    const T g_ = -EXPM1(-(D)), gd_ = g_ / (D);                                                \
    w0 = 1.0f - gd_;                                                                          \
    w1 = gd_ - (1.0f - g_);                                                                   \
  }

/* The optical depth of a segment, int_0^1 a(s) exp(-b(s)^2) ds with a and b
 * linear from (a0, b0) to (a1, b1) (the exact integral that LTE_SEG_DTAU
 * writes with erf differences), from e = exp(-b^2) and c = erfc(|b|) of the
 * two cells. It is a0 K0 + a1 K1 with the endpoint weights
 * K0 = int (1-s) E, K1 = int s E >= 0, so with a >= 0 nothing cancels in the
 * sum. It is even in (b0, b1) -> (-b0, -b1), so bm = (b0+b1)/2 >= 0 below.
 *  - near (|h| <= 1/2, |2 bm h| <= 1, h = (b1-b0)/2): E around the midpoint,
 *    exp(-(bm + h t)^2) = exp(-bm^2) sum c_n t^n with c_0 = 1, c_1 = -x,
 *    (n+1) c_{n+1} = -(x c_n + 2y c_{n-1}), x = 2 bm h, y = h^2; then
 *    J0 = exp(-bm^2) sum_even c_n/(n+1), J1 = exp(-bm^2) sum_odd c_n/(n+2),
 *    K0 = (J0 - J1)/2, K1 = (J0 + J1)/2 (|J1| <= J0/2: no cancellation);
 *  - far: with p <= q the two b's and L = q - p, I0 = int_p^q E du from
 *    erfc differences in the same tail (p >= 0: erfc(p) - erfc(q), ratio
 *    <= exp(-L(p+q)) <= exp(-1)) or erf sums across 0 (p < 0), the moment
 *    I1 = int (u - p) E du = (e_p - e_q)/2 - p I0 and int (q - u) E du =
 *    L I0 - I1; K_p, K_q = those over L^2. */
#define LTE_F32_SCALAR(c) (c)
#define LTE_F32_SEL(m, a, b) ((m) ? (a) : (b))
static inline LTE_HD float lte_f32_dtau(float a0, float a1, float b0, float b1, float e0, float e1,
                                        float c0, float c1) {
  if (b0 + b1 < 0.0f) b0 = -b0, b1 = -b1; /* e, c are of |b| */
  const float h = 0.5f * (b1 - b0), bm = 0.5f * (b0 + b1);
  const float ah = fabsf(h);
  if (ah <= 0.5f && bm * ah <= 0.5f) {
    LTE_F32_DTAU_NEAR(float, LTE_F32_SCALAR, lte_f32_expneg, a0, a1, bm, h, d);
    return d;
  }
  LTE_F32_DTAU_FAR(float, LTE_F32_SCALAR, LTE_F32_SEL, a0, a1, b0, b1, e0, e1, c0, c1, d);
  return d;
}

/* One segment's term of the formal solution, S linear in tau, from em0 =
 * exp(-tau0), em1 = exp(-tau1) and D. D < 1e-4: Pomme's series as
 * LTE_SEG_FORMAL (the float64 path's branch, its sign quirk included).
 * Else em0 (S0 w0 + S1 w1) with the exact weights w0 = (e^-D - 1 + D)/D,
 * w1 = (1 - (1 + D) e^-D)/D: by their series below D = 1/2
 * (w0 = sum (-1)^(n+1) D^n/(n+1)!, w1 = sum (-1)^(n+1) n D^n/(n+1)!,
 * 9 terms: truncation < 2e-9 relative), above from g = 1 - e^-D = -expm1(-D)
 * (w0 = 1 - g/D, w1 = g/D - (1 - g): cancellation <= 4.4 at D = 1/2). */
static inline LTE_HD float lte_f32_formal(float D, float S0, float S1, float em0, float em1,
                                          int corrected) {
  if (D < 1.0e-4f) {
    LTE_F32_FORMAL_TAYLOR(float, D, S0, S1, em0, em1, corrected, t);
    return t;
  }
  if (D < 0.5f) {
    LTE_F32_FORMAL_SERIES(float, LTE_F32_SCALAR, D, w0, w1);
    return em0 * (S0 * w0 + S1 * w1);
  }
  LTE_F32_FORMAL_EXP(float, expm1f, D, w0, w1);
  return em0 * (S0 * w0 + S1 * w1);
}

/* a segment's term on a masing ray (lte_body_emissive, in float32): E0,
 * E1 from lte_f32_dtau with (a0, a1) -> (e0, 0), (0, e1) (>= 0: its
 * weights are, so nothing cancels); g0, g1 by their series below |D| = 1/2
 * (9 terms: truncation < 1e-9 relative), above from expm1f (cancellation
 * <= 4) */
static inline LTE_HD float lte_f32_emissive(float a0, float a1, float S0, float S1, float b0,
                                            float b1, float e0, float e1, float c0, float c1,
                                            float D, float em0) {
  float E0 = lte_f32_dtau(S0 * a0, 0.0f, b0, b1, e0, e1, c0, c1);
  float E1 = lte_f32_dtau(0.0f, S1 * a1, b0, b1, e0, e1, c0, c1);
  if (!(E0 > 0.0f)) E0 = 0.0f;
  if (!(E1 > 0.0f)) E1 = 0.0f;
  float g0, g1;
  if (fabsf(D) < 0.5f) {
    g0 = 1.0f - D * (1.0f / 3 - D * (1.0f / 12 - D * (1.0f / 60 - D * (1.0f / 360 - D * (1.0f / 2520 -
         D * (1.0f / 20160 - D * (1.0f / 181440 - D * (1.0f / 1814400))))))));
    g1 = 1.0f - D * (2.0f / 3 - D * (1.0f / 4 - D * (1.0f / 15 - D * (1.0f / 72 - D * (1.0f / 420 -
         D * (1.0f / 2880 - D * (1.0f / 22680 - D * (1.0f / 201600))))))));
  } else {
    const float x = expm1f(-D), k = 2.0f / (D * D);
    g0 = (D + x) * k;
    g1 = (-x - D * (1.0f + x)) * k;
  }
  return em0 * (E0 * g0 + E1 * g1);
}

/* b of a cell at frequency nu, as float: the float64 expression xd of
 * lte_body_profile rounded once, within +-1e18 (a cell of T < ~1e-25 K
 * would overflow float32; there exp and erfc are 0 alike, and L^2 in
 * lte_f32_dtau stays finite) */
#define LTE_F32_B_MAX 1e18
static inline LTE_HD float lte_f32_b(double xd) {
  return (float)(xd > LTE_F32_B_MAX ? LTE_F32_B_MAX : xd < -LTE_F32_B_MAX ? -LTE_F32_B_MAX : xd);
}

/* b, exp(-b^2) and erfc(|b|) of a cell at frequency nu (lte_f32_b) */
static inline LTE_HD void lte_f32_profile(const lte_kernel_model *M, double iw, double shift,
                                          double nu, float *b, float *e, float *c) {
  const float x = lte_f32_b(iw * (shift * nu - M->nu0));
  *b = x;
  *e = lte_f32_expneg(x * x);
  *c = erfcf(fabsf(x));
}

#ifdef LTE_BODY_F32_NAIVE
/* The float64 formulas in float32 (test_lte_backends' naive build: its
 * float32 criterion must fail on these) */
static inline LTE_HD float lte_f32_naive_dtau(float a0, float a1, float b0, float b1, float e0,
                                              float e1, float er0, float er1) {
  LTE_SEG_DTAU(float, a0, a1, b0, b1, e0, e1, er0, er1, b10, d, near);
  return fabsf(b10) < 1.0e-4f ? near : d;
}
static inline LTE_HD float lte_f32_naive_formal(float D, float S0, float S1, float em0, float em1,
                                                int corrected) {
  LTE_SEG_FORMAL(float, D, S0, S1, em0, em1, corrected, r, taylor);
  return D < 1.0e-4f ? taylor : r;
}
#endif

/* 2, float32: a ray at one channel as it goes (as lte_body_ray_state; the
 * cell constants arrive as float64 and are rounded here) */
typedef struct lte_f32_ray_state {
  float a0, S0, b0, e0, c0, em0;
  double tau, sum;
  int emissive; /* as lte_body_ray_state's */
} lte_f32_ray_state;

static inline LTE_HD void lte_f32_ray_start(const lte_kernel_model *M, double nu, double a, double S,
                                            double iw, double shift, int emissive,
                                            lte_f32_ray_state *s) {
  s->emissive = emissive;
  s->a0 = (float)a, s->S0 = (float)S;
  lte_f32_profile(M, iw, shift, nu, &s->b0, &s->e0, &s->c0);
  s->tau = 0.0, s->sum = 0.0;
  s->em0 = 1.0f;
}

static inline LTE_HD void lte_f32_ray_step(const lte_kernel_model *M, double nu, double a,
                                           double S, double iw1, double shift1,
                                           lte_f32_ray_state *s) {
  float a1 = (float)a, S1 = (float)S, b1, e1, c1;
  lte_f32_profile(M, iw1, shift1, nu, &b1, &e1, &c1);
#ifdef LTE_BODY_F32_NAIVE
  const float er0 = erff(s->b0), er1 = erff(b1);
  const float D = lte_f32_naive_dtau(s->a0, a1, s->b0, b1, s->e0, e1, er0, er1);
#else
  const float D = lte_f32_dtau(s->a0, a1, s->b0, b1, s->e0, e1, s->c0, c1);
#endif
  s->tau = s->tau + (double)D;
  const float em1 = lte_f32_expneg((float)s->tau);
  if (s->em0 != 0.0f && s->emissive) /* docs/physics.md, "Masing segments" */
    s->sum = s->sum + (double)lte_f32_emissive(s->a0, a1, s->S0, S1, s->b0, b1, s->e0, e1, s->c0,
                                               c1, D, s->em0);
  else if (s->em0 != 0.0f) /* behind an opaque layer every term is 0 */
#ifdef LTE_BODY_F32_NAIVE
    s->sum = s->sum + (double)lte_f32_naive_formal(D, s->S0, S1, s->em0, em1, M->corrected_taylor);
#else
    s->sum = s->sum + (double)lte_f32_formal(D, s->S0, S1, s->em0, em1, M->corrected_taylor);
#endif
  s->a0 = a1, s->S0 = S1, s->b0 = b1, s->e0 = e1, s->c0 = c1, s->em0 = em1;
}

static inline LTE_HD double lte_f32_ray_end(const lte_kernel_model *M, double bdy,
                                            const lte_f32_ray_state *s) {
  double I = bdy * (double)s->em0 + s->sum;
  return M->take_abs ? fabs(I) : I;
}

/* 2, float32: one ray at one channel (the cell thread is the float64 one) */
static inline LTE_HD void lte_body_ray_thread_f32(const lte_kernel_model *M, const lte_body_view *V,
                                                  long long t) {
  lte_body_ray r;
  if (!lte_body_ray_begin(V, t, &r)) return;
  const long long ray = r.ray;
  lte_f32_ray_state s;
  lte_f32_ray_start(M, r.nu, V->adx[ray], V->S[ray], V->iw[ray], V->shift[ray],
                    V->pl && lte_body_masing_ray(V->adx + ray, V->nray, V->nz), &s);
  lte_body_next c;
  lte_body_next_load(V, 1, ray, &c);
  for (int k = 0; k + 1 < V->nz; k++) {
    lte_body_next cur;
    lte_body_next_step(V, k, ray, &c, &cur);
    lte_f32_ray_step(M, r.nu, cur.a, cur.S, cur.iw, cur.shift, &s);
  }
  *r.out = lte_f32_ray_end(M, r.bdy, &s);
}

/* 3. one target value: thread t is (cube, channel, pixel) in the targets'
 * order (writes in order), its image value (float64) rounded once to
 * float32, as devpipe_image_to_targets does on the host */
static inline LTE_HD void lte_body_target_thread(const lte_body_view *V, long long t) {
  const long long per = V->npix * V->nf, c = t / per, r = t % per;
  const long long f = r / V->npix, pix = r % V->npix;
  V->targets[t] = (float)V->image[(c * V->npix + pix) * V->nf + f];
}

/* ---------------------------------------------------------------------- */
/* 4. The fused form (lte_kernel_cuda.cu's lte_fused_kernel;
 * COEMU_CUDA_SOLVER_FORM=fused, or auto where it times fastest). One block
 * per group of LTE_FUSED_RAYS neighbouring rays, one thread per (ray,
 * channel) of the group: thread tid = f * LTE_FUSED_RAYS + ray's place, so
 * that a warp is the group's rays at one channel, as in the two-launch
 * form. The block makes its
 * rays' cell constants a tile of LTE_FUSED_TILE cells along z at a time
 * into shared memory (lte_fused_cells: every thread of the block takes a
 * share), waits, and its ray threads step through the tile
 * (lte_fused_rays); then the next tile. What it saves: the scratch never
 * goes to device memory (4 float64 a cell: 8.4 MB written and read back a
 * 64^3 cube in the two-launch form), the ray threads read their cells from
 * shared memory rather than from the device's, and one block's cell work
 * runs beside other blocks' ray work. The arithmetic is the same functions
 * in the same order (lte_body_cell, lte_body_ray_step: segment k into lane
 * k mod 8), so the images are the two-launch form's bit for bit (and,
 * compiled for the host, the CPU kernel's in literal mode). At most
 * LTE_FUSED_MAX_NF channels (a block's 1,024 threads); the device backend
 * uses the two-launch form beyond. */
#define LTE_FUSED_RAYS 32 /* a warp */
#define LTE_FUSED_TILE 32 /* cells along z per tile; a multiple of LTE_BODY_LANES */
#define LTE_FUSED_PITCH (LTE_FUSED_RAYS + 1) /* a tile row: +1 keeps a warp's stores of one
                                              * ray's cells off a single shared-memory bank */
#define LTE_FUSED_MAX_NF (1024 / LTE_FUSED_RAYS)
/* a tile starts at a cell z0 = 0 mod 8, so cell z0 + i's segment goes into
 * lane (i - 1) mod 8: a constant of the unrolled loop in lte_fused_rays */
typedef char lte_fused_tile_is_whole_lanes[LTE_FUSED_TILE % LTE_BODY_LANES == 0 ? 1 : -1];

/* The block's shared memory (34,048 bytes): cell z0 + i of the group's ray
 * q at i * LTE_FUSED_PITCH + q; bad[q]: a bad cell seen on ray q so far;
 * masing[q]: ray q has a masing segment (lte_fused_masing). */
typedef struct lte_fused_tile {
  double S[LTE_FUSED_TILE * LTE_FUSED_PITCH], adx[LTE_FUSED_TILE * LTE_FUSED_PITCH];
  double iw[LTE_FUSED_TILE * LTE_FUSED_PITCH], shift[LTE_FUSED_TILE * LTE_FUSED_PITCH];
  int bad[LTE_FUSED_RAYS];
  int masing[LTE_FUSED_RAYS]; /* ray q has a masing segment (lte_fused_masing) */
} lte_fused_tile;

/* A ray thread of the fused form: its place q in group g, its channel f;
 * in: q is one of the group's rays (the last group may be narrower); bad:
 * the ray holds a bad cell (its pixel is NaN, its steps stop). */
typedef struct lte_fused_ray {
  long long ray;
  int q, f, in, bad;
  double nu, bdy;
} lte_fused_ray;

/* the groups of a view's rays: the fused kernel's blocks */
static inline LTE_HD long long lte_fused_groups(const lte_body_view *V) {
  return (V->nray + LTE_FUSED_RAYS - 1) / LTE_FUSED_RAYS;
}

/* whether a block holds nf channels' threads (block_max: the kernel's
 * largest block; else the two-launch form) */
static inline LTE_HD int lte_fused_fits(int nf, int block_max) {
  return nf >= 1 && LTE_FUSED_RAYS * nf <= block_max;
}

/* the group's rays: the last one may hold fewer than LTE_FUSED_RAYS */
static inline LTE_HD int lte_fused_width(const lte_body_view *V, long long g) {
  const long long left = V->nray - g * LTE_FUSED_RAYS;
  return left < LTE_FUSED_RAYS ? (int)left : LTE_FUSED_RAYS;
}

/* the tile's cells, [z0, z0 + LTE_FUSED_TILE) within nz */
static inline LTE_HD int lte_fused_cells_in(const lte_body_view *V, int z0) {
  return V->nz - z0 < LTE_FUSED_TILE ? V->nz - z0 : LTE_FUSED_TILE;
}

/* thread tid's start in group g (before the block's first tile) */
static inline LTE_HD void lte_fused_begin(const lte_body_view *V, long long g, int tid,
                                          lte_fused_tile *tl, lte_fused_ray *r) {
  if (tid < LTE_FUSED_RAYS) tl->bad[tid] = 0, tl->masing[tid] = 0;
  r->q = tid % LTE_FUSED_RAYS, r->f = tid / LTE_FUSED_RAYS;
  r->ray = g * LTE_FUSED_RAYS + r->q;
  r->in = r->q < lte_fused_width(V, g), r->bad = 0;
  r->nu = r->bdy = 0.0;
  if (r->in) lte_body_channel(V, r->ray, r->f, &r->nu, &r->bdy);
}

/* the tile's cells [z0, ..) of group g's rays: thread tid of nthr takes
 * cells tid, tid + nthr, ..., one ray's cells in a row (consecutive
 * threads read consecutive addresses of the input arrays); a bad cell
 * marks its ray in the tile and in bad[] (the flags the host reads) */
static inline LTE_HD void lte_fused_cells(const lte_kernel_model *M, const lte_body_view *V,
                                          long long g, int z0, lte_fused_tile *tl, int tid,
                                          int nthr) {
  const int w = lte_fused_width(V, g), zt = lte_fused_cells_in(V, z0);
  for (int c = tid; c < w * zt; c += nthr) {
    const int q = c / zt, i = c - q * zt;
    const long long ray = g * LTE_FUSED_RAYS + q;
    lte_body_cell_c cc;
    if (!lte_body_cell(M, V, ray, z0 + i, &cc)) {
      tl->bad[q] = 1;
      V->bad[ray] = 1;
      continue;
    }
    const int o = i * LTE_FUSED_PITCH + q;
    tl->S[o] = cc.S, tl->adx[o] = cc.adx, tl->iw[o] = cc.iw, tl->shift[o] = cc.shift;
  }
}

/* With populations (V->pl), before the first tile (and after
 * lte_fused_begin): whether each of group g's rays has a masing segment, so
 * that its steps take the emissivity form from the first (lte_body_masing_ray
 * of the two-launch form, which has the ray's cells at hand). The tiles
 * hold a part of the ray, so this pass computes each segment's two cells'
 * a*dx itself: thread tid of nthr takes segments tid, tid + nthr, ...; the
 * flags only go from 0 to 1. A bad cell is left to the tiles (its ray's
 * pixel is NaN whatever the flag). Twice the cells' arithmetic, for
 * non-LTE cubes only. */
static inline LTE_HD void lte_fused_masing(const lte_kernel_model *M, const lte_body_view *V,
                                           long long g, lte_fused_tile *tl, int tid, int nthr) {
  if (!V->pl) return;
  const int w = lte_fused_width(V, g), ns = V->nz - 1;
  for (int c = tid; c < w * ns; c += nthr) {
    const int q = c / ns, k = c - q * ns;
    const long long ray = g * LTE_FUSED_RAYS + q;
    lte_body_cell_c c0, c1;
    if (lte_body_cell(M, V, ray, k, &c0) && lte_body_cell(M, V, ray, k + 1, &c1) &&
        LTE_SEG_MASING(c0.adx, c1.adx))
      tl->masing[q] = 1;
  }
}

/* 0 when the thread has nothing to do in this tile (outside the group, or
 * its ray holds a bad cell: no step reads a cell that was not written) */
static inline LTE_HD int lte_fused_live(const lte_fused_tile *tl, lte_fused_ray *r) {
  if (!r->in || r->bad) return 0;
  if (tl->bad[r->q]) r->bad = 1;
  return !r->bad;
}

/* a ray thread through the tile at z0, float64 */
static inline LTE_HD void lte_fused_rays(const lte_kernel_model *M, const lte_body_view *V, int z0,
                                         const lte_fused_tile *tl, lte_fused_ray *r,
                                         lte_body_ray_state *s) {
  if (!lte_fused_live(tl, r)) return;
  const int zt = lte_fused_cells_in(V, z0), q = r->q;
  if (z0 == 0)
    lte_body_ray_start(M, r->nu, tl->adx[q], tl->S[q], tl->iw[q], tl->shift[q], tl->masing[q], s);
  for (int i0 = 0; i0 < zt; i0 += LTE_BODY_LANES) {
    LTE_UNROLL
    for (int j = 0; j < LTE_BODY_LANES; j++) {
      const int i = i0 + j;
      if (i >= zt) break;
      if (z0 + i == 0) continue; /* cell 0: the start */
      const int o = i * LTE_FUSED_PITCH + q;
      lte_body_ray_step(M, r->nu, tl->adx[o], tl->S[o], tl->iw[o], tl->shift[o], s,
                        (j + LTE_BODY_LANES - 1) % LTE_BODY_LANES);
    }
  }
}

/* the same, float32 path */
static inline LTE_HD void lte_fused_rays_f32(const lte_kernel_model *M, const lte_body_view *V,
                                             int z0, const lte_fused_tile *tl, lte_fused_ray *r,
                                             lte_f32_ray_state *s) {
  if (!lte_fused_live(tl, r)) return;
  const int zt = lte_fused_cells_in(V, z0), q = r->q;
  int i = 0;
  if (z0 == 0)
    lte_f32_ray_start(M, r->nu, tl->adx[q], tl->S[q], tl->iw[q], tl->shift[q], tl->masing[q], s),
        i = 1;
  for (; i < zt; i++) {
    const int o = i * LTE_FUSED_PITCH + q;
    lte_f32_ray_step(M, r->nu, tl->adx[o], tl->S[o], tl->iw[o], tl->shift[o], s);
  }
}

/* after the last tile: the pixel (NaN for a ray with a bad cell) */
static inline LTE_HD void lte_fused_end(const lte_kernel_model *M, const lte_body_view *V,
                                        const lte_fused_ray *r, const lte_body_ray_state *s,
                                        const lte_f32_ray_state *s32) {
  if (!r->in) return;
  double *out = V->image + r->ray * V->nf + r->f;
  *out = r->bad ? NAN : M->f32 ? lte_f32_ray_end(M, r->bdy, s32) : lte_body_ray_end(M, r->bdy, s);
}

/* The device backend's kernel forms (COEMU_CUDA_SOLVER_FORM; the same bits
 * in each): the cell kernel then the ray kernel in blocks of
 * LTE_RAYS_BLOCK threads (two) or half that (two-small: more blocks an SM
 * where the registers allow), or the fused kernel (section 4); auto, the
 * default: the fastest of them, timed on each shape's first chunk. The
 * names are the variable's words, in this order. */
enum { LTE_FORM_TWO = 0, LTE_FORM_TWO_SMALL = 1, LTE_FORM_FUSED = 2, LTE_FORMS = 3,
       LTE_FORM_AUTO = LTE_FORMS };
static inline const char *const *lte_form_names(void) {
  static const char *const names[LTE_FORMS + 1] = {"two", "two-small", "fused", "auto"};
  return names;
}

/* the fastest of n timed forms (the first of equals) */
static inline int lte_form_fastest(const float *ms, int n) {
  int b = 0;
  for (int f = 1; f < n; f++)
    if (ms[f] < ms[b]) b = f;
  return b;
}

/* The kernel form each shape of chunk took (lte_kernel_cuda.cu,
 * pick_form; here so that the host tests check it): the form timed fastest
 * for cubes of npix rays of nz cells at nf channels, float32 arithmetic or
 * not, the cells' type, populations or not. A few shapes are remembered;
 * past that the oldest is replaced (and timed again when it comes back). */
typedef struct lte_form_key {
  long long npix;
  int nz, nf, f32, dtype, pops;
} lte_form_key;
#define LTE_FORM_SHAPES 8
typedef struct lte_form_cache {
  lte_form_key key[LTE_FORM_SHAPES];
  int form[LTE_FORM_SHAPES];
  int n, next; /* entries held; the next to replace once full */
} lte_form_cache;

static inline int lte_form_key_eq(const lte_form_key *a, const lte_form_key *b) {
  return a->npix == b->npix && a->nz == b->nz && a->nf == b->nf && a->f32 == b->f32 &&
         a->dtype == b->dtype && a->pops == b->pops;
}

/* 1 and *form: the shape's form; 0: not timed yet */
static inline int lte_form_find(const lte_form_cache *c, const lte_form_key *k, int *form) {
  for (int i = 0; i < c->n; i++)
    if (lte_form_key_eq(&c->key[i], k)) {
      *form = c->form[i];
      return 1;
    }
  return 0;
}

static inline void lte_form_put(lte_form_cache *c, const lte_form_key *k, int form) {
  int i;
  if (c->n < LTE_FORM_SHAPES)
    i = c->n++;
  else
    i = c->next, c->next = (c->next + 1) % LTE_FORM_SHAPES;
  c->key[i] = *k, c->form[i] = form;
}

/* How many cubes one chunk of the device backend holds (lte_kernel_cuda.cu,
 * solve_locked; here so that the host tests check it). A batch is cut into
 * chunks that alternate on nslot streams: while the device computes one
 * chunk, the last one's images come back and the host takes them, and the
 * next one's cells go over. What the device does not hide is the first
 * chunk's cells going over and the last chunk's images coming back (and,
 * from pageable rows, the host's copy of them): with two chunks (half the
 * batch each, the rule until 2026-12-05) that was half the batch's copies
 * in series with the kernels. Now a chunk is 1/(nslot *
 * LTE_CHUNKS_PER_SLOT) of the batch, but at least one full wave of the ray
 * kernel (device_threads, the device's resident threads, over
 * threads_per_cube, a cube's rays times channels), so that no chunk leaves
 * the device part idle; and at most half the batch (small batches keep two
 * chunks), at most cap (the memory budget; >= 1), at least 1. forced > 0
 * (COEMU_CUDA_SOLVER_CHUNK): that many, within cap and the batch. */
#define LTE_CHUNKS_PER_SLOT 4
static inline int lte_body_chunk_cubes(int ncube, int nslot, long long threads_per_cube,
                                       long long device_threads, long long cap, int forced) {
  long long c;
  if (forced > 0)
    c = forced;
  else {
    const long long parts = (long long)nslot * LTE_CHUNKS_PER_SLOT;
    const long long fill = threads_per_cube > 0 ? (device_threads + threads_per_cube - 1) /
                                                      threads_per_cube
                                                : 1;
    const long long half = ((long long)ncube + nslot - 1) / nslot;
    c = ((long long)ncube + parts - 1) / parts;
    if (c < fill) c = fill;
    if (c > half) c = half;
  }
  if (c > cap) c = cap;
  if (c > ncube) c = ncube;
  return c < 1 ? 1 : (int)c;
}

#ifndef __CUDACC__
/* The host: the same bodies, one plain loop per launch, in thread order. */
static inline void lte_body_run_host(const lte_kernel_model *M, const lte_body_view *V) {
  const lte_host_fpenv fenv = lte_host_flush_begin(); /* as the CPU kernel (lte_kernel.h) */
  for (long long t = 0; t < V->nray * V->nz; t++) lte_body_cell_thread(M, V, t);
  for (long long t = 0; t < V->nray * V->nf; t++)
    if (M->f32)
      lte_body_ray_thread_f32(M, V, t);
    else
      lte_body_ray_thread(M, V, t);
  lte_host_flush_end(fenv); /* the targets' rounding keeps float32's subnormals, as a device's */
  if (V->targets)
    for (long long t = 0; t < V->nray * V->nf; t++) lte_body_target_thread(V, t);
}

/* The fused form on the host: each block's threads one after the other in
 * every phase, the phases in the block's order (the device's
 * __syncthreads between them). -1 (out of memory, or more channels than a
 * block holds) leaves the view as it was. */
static inline int lte_body_run_host_fused(const lte_kernel_model *M, const lte_body_view *V) {
  if (!lte_fused_fits(V->nf, LTE_FUSED_RAYS * LTE_FUSED_MAX_NF)) return -1;
  const int nthr = LTE_FUSED_RAYS * V->nf;
  lte_fused_tile *tl = (lte_fused_tile *)malloc(sizeof *tl);
  lte_fused_ray *r = (lte_fused_ray *)malloc(nthr * sizeof *r);
  lte_body_ray_state *s = (lte_body_ray_state *)malloc(nthr * sizeof *s);
  lte_f32_ray_state *s32 = (lte_f32_ray_state *)malloc(nthr * sizeof *s32);
  if (!tl || !r || !s || !s32) {
    free(tl), free(r), free(s), free(s32);
    return -1;
  }
  const lte_host_fpenv fenv = lte_host_flush_begin();
  for (long long g = 0; g < lte_fused_groups(V); g++) {
    for (int t = 0; t < nthr; t++) lte_fused_begin(V, g, t, tl, &r[t]);
    for (int t = 0; t < nthr; t++) lte_fused_masing(M, V, g, tl, t, nthr);
    for (int z0 = 0; z0 < V->nz; z0 += LTE_FUSED_TILE) {
      for (int t = 0; t < nthr; t++) lte_fused_cells(M, V, g, z0, tl, t, nthr);
      for (int t = 0; t < nthr; t++)
        if (M->f32)
          lte_fused_rays_f32(M, V, z0, tl, &r[t], &s32[t]);
        else
          lte_fused_rays(M, V, z0, tl, &r[t], &s[t]);
    }
    for (int t = 0; t < nthr; t++) lte_fused_end(M, V, &r[t], &s[t], &s32[t]);
  }
  lte_host_flush_end(fenv);
  if (V->targets)
    for (long long t = 0; t < V->nray * V->nf; t++) lte_body_target_thread(V, t);
  free(tl), free(r), free(s), free(s32);
  return 0;
}
#endif

#ifdef __cplusplus
}
#endif

#endif
