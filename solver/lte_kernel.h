/* lte_kernel.h - the seam between the LTE imager's driver (lte.c) and its
 * kernel backends: a batch of rays in, images out.
 *
 * One interface, one file per implementation: solver/lte_kernel_cpu.c (the
 * AVX-512 and portable kernels, OpenMP over rays) is built always; a device
 * kernel (solver/lte_kernel_cuda.cu, with COEMU_HAVE_CUDA) provides the same
 * table under its own name, computes each ray with the functions of
 * solver/lte_kernel_body.h (compiled for the host too, so CI runs them) and
 * is checked against the same reference (tests/solver/test_lte_backends.c
 * runs every built backend, and the host-compiled bodies).
 *
 * Division of work. The driver (lte_solve_cube, lte_solve_cube_f32,
 * lte_solve_batch) checks the arguments (shape >= 1, nz <= 2^24, dx > 0,
 * vturb >= 0, a finite background, frequencies > 0, ncube >= 1, all finite),
 * derives the constants below from the lte_line and the lte_options
 * (lte_kernel_model_init, lte.h) and picks the backend. The kernel reads the
 * cells, checks them, and writes the images. When a kernel reports a bad cell
 * the driver finds the first one itself and writes the message.
 *
 * Everything is SI and float64. No pointer may be NULL except
 * background_map. Inputs are read-only; a kernel keeps no pointer after it
 * returns.
 *
 * What a kernel computes, per cube c, pixel (x, y), channel f (the ray runs
 * from the observer at z = 0 to the background behind z = nz-1; ref_lte.c
 * writes it out literally, docs/physics.md derives it):
 *   per cell:  Z = partition(T) (below), invT = 1/T, r = 1/Z,
 *              pl = (g_l * exp(neg_e_over_k_l * invT)) * r,
 *              pu = (g_u * exp(neg_e_over_k_u * invT)) * r,
 *              eta = eta_c * pu, chi = fac * (B_lu * pl - B_ul * pu),
 *              S = chi != 0 ? eta / chi : 0,
 *              iw = 1 / (nu0_over_c * sqrt(two_k_over_m * T + vt2)),
 *              adx = ((((1/sqrt(pi)) * iw) * chi) * n) * dx,
 *              shift = 1 + v * inv_c;
 *   per cell and channel: b = iw * (shift * freqs[f] - nu0), exp(-b^2), erf(b);
 *   per segment k = 0..nz-2 (cells k, k+1): the optical depth dtau_k of the
 *              Gaussian profile integrated exactly with a and b linear in z
 *              (Pomme's branch for |b1 - b0| < 1e-4), tau_{k+1} = tau_k + dtau_k
 *              summed in order of k from tau_0 = 0, em = exp(-tau);
 *   the formal solution with S linear in tau (Pomme's Taylor branch for
 *              dtau < 1e-4, with its D^2, D^3 signs swapped unless
 *              corrected_taylor), summed over segments, plus
 *              background * em[nz-1]; |I| if take_abs.
 *
 * Arithmetic order. Every expression follows Pomme's parenthesisation as
 * written above and in lte_kernel_cpu.c, without FMA contraction
 * (-ffp-contract=off, or __fmul_rn/__fadd_rn on a device): thin segments
 * cancel, and the optical depth amplifies a last-bit change of an
 * intermediate by 1e4 or more. The CPU kernel's images are the reference
 * bits: a change to it must leave them bit-identical (compare images before
 * and after). Another backend may differ in its exp/erf by an ulp or two and
 * in the order of the sums over segments and levels; it must then match the
 * literal reference to 1e-7 relative on every pixel that is neither
 * round-off nor ill-conditioned (the criterion of test_lte_backends.c and
 * docs/physics.md). Results may not depend on the thread count or on which
 * other cubes share a batch: each ray is computed alone.
 *
 * The float environment. On the host (x86-64) the kernels compute with
 * subnormal numbers flushed to zero: results below DBL_MIN (FLT_MIN) become
 * 0 and such operands read as 0 (MXCSR FTZ and DAZ, set per thread for the
 * kernel's work and restored after: lte_host_flush_begin / _end below; the
 * host-run bodies of lte_kernel_body.h alike). Gradual underflow is exact
 * but slow on x86: every operation with a subnormal operand or result takes
 * a microcode assist of ~100 cycles, and the line's far wings are full of
 * them (exp(-b^2) for b^2 in [708, 746), segment terms of 1e-300 and
 * below): on cubes sampled from an AMRVAC model they were two thirds of the
 * CPU kernel's time (docs/benchmarks.md, "Subnormals"). What is flushed is
 * below 2.2e-308 in a sum whose pixels are 1e-16 and more, so no image of
 * the test cubes, the example or the AMRVAC samples changed by a bit; a
 * pixel could change only where its whole value is of that order (and then
 * to 0 in the float32 targets either way). Devices compute float64 with
 * gradual underflow (CUDA has no flush for doubles): that is one more of
 * the last-bit differences the criterion above allows. A temperature below
 * DBL_MIN would read as 0, so such a cell is invalid everywhere
 * (lte_kernel_cell_ok).
 *
 * The float32 path (f32 below, lte_options.precision): the cells as above,
 * the rays by lte_kernel_body.h's float32 formulas (lte_body_ray_thread_f32,
 * docs/physics.md "The float32 path"), which every backend runs as written;
 * it must match the literal reference to 1e-5 relative under the same
 * classification of pixels.
 *
 * The partition function. Z(T) = sum_i g[i] * exp(neg_e_over_k[i] * (1/T)),
 * summed in file order (lte_z_direct). For 1 K <= T < 2^LTE_ZT_OCT K it is read
 * from a table instead: octave e = floor(log2 T) in LTE_ZT_SUB equal pieces;
 * piece p = e*LTE_ZT_SUB + j of mantissa m = T/2^e in [1, 2) has
 * j = floor((m - 1)*LTE_ZT_SUB) and local coordinate s = 2*((m - 1)*LTE_ZT_SUB - j) - 1
 * in [-1, 1]; ztab[p*LTE_ZT_NC .. +LTE_ZT_NC) are its Chebyshev coefficients,
 * summed by Clenshaw's recurrence from the highest (lte_z_cheb). A piece with
 * zdirect[p] set, and any T outside the table, takes the direct sum. With
 * libm set a kernel takes the direct sum everywhere and the platform's
 * scalar exp and erf ("literal" mode, for comparisons). lte_z_partition is
 * the scalar form of all this; kernels may vectorise it but must give the
 * same bits.
 *
 * Bad cells. A cell is valid when |v| < c, DBL_MIN <= T <= DBL_MAX and
 * 0 <= n <= DBL_MAX (lte_kernel_cell_ok; NaN fails every test). A kernel
 * checks every cell it reads; if any fails it still writes every image (the
 * rays with a bad cell: anything, the CPU writes NaN) and returns
 * LTE_KERNEL_BAD_INPUT.
 */
#ifndef COEMU_LTE_KERNEL_H
#define COEMU_LTE_KERNEL_H

#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* The scalar functions below are compiled for the host and, by nvcc, for the
 * device as well (solver/lte_kernel_body.h). */
#if defined(__CUDACC__)
#define LTE_HD __host__ __device__
#else
#define LTE_HD
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* The backends. lte_options.backend picks one; 0 is the default. */
typedef enum {
  LTE_BACKEND_CPU = 0, /* lte_kernel_cpu.c, always built */
  LTE_BACKEND_CUDA,    /* lte_kernel_cuda.cu, with COEMU_HAVE_CUDA */
  LTE_BACKEND_COUNT
} lte_backend;

/* Layout of the partition table (lte_line.ztab, lte_kernel_model.ztab). */
#define LTE_ZT_OCT 15  /* octaves: 1 K <= T < 2^15 K */
#define LTE_ZT_SUB 128 /* pieces per octave */
#define LTE_ZT_NC 7    /* Chebyshev coefficients per piece (degree 6) */
#define LTE_ZT_PIECES (LTE_ZT_OCT * LTE_ZT_SUB)

/* The constants a kernel computes with: one transition of one molecule and
 * the options of the call, derived by the driver (lte_kernel_model_init). */
typedef struct lte_kernel_model {
  /* partition function (see above) */
  int nlev;
  const double *neg_e_over_k;   /* [nlev] -E_i/k_B [K], LAMDA file order */
  const double *g;              /* [nlev] statistical weights */
  const double *ztab;           /* [LTE_ZT_PIECES * LTE_ZT_NC] Chebyshev coefficients */
  const unsigned char *zdirect; /* [LTE_ZT_PIECES] 1: this piece takes the direct sum */
  int any_zdirect;              /* some zdirect[p] is 1 */
  /* populations, emissivity and opacity of the transition */
  double g_l, g_u;                       /* weights of the lower and upper level */
  double neg_e_over_k_l, neg_e_over_k_u; /* their -E/k_B [K] */
  double fac;                            /* h nu0 / (4 pi) [J] */
  double eta_c;                          /* fac * A [J s^-1] */
  double B_lu, B_ul;                     /* Einstein B (per unit intensity, SI) */
  /* profile and geometry */
  double nu0;          /* rest frequency [Hz] */
  double nu0_over_c;   /* nu0 / c [Hz s m^-1] */
  double two_k_over_m; /* 2 k_B / m [m^2 s^-2 K^-1] */
  double vt2;          /* vturb^2 [m^2 s^-2] */
  double c;            /* speed of light [m/s]: a valid cell has |v| < c */
  double inv_c;        /* 1 / c [s/m], the Doppler factor is 1 + v * inv_c */
  double dx;           /* spacing of cell centres along z [m] */
  /* arithmetic */
  int corrected_taylor; /* exact D < 1e-4 series instead of Pomme's */
  int take_abs;         /* |I| */
  int libm;             /* literal mode: direct Z sum, scalar libm exp and erf */
  int f32;              /* the float32 path (lte_kernel_body.h): the rays in float32
                           arithmetic, within 1e-5 of float64 (docs/physics.md) */
} lte_kernel_model;

/* The arithmetic of the rays (lte_options.precision, lte_kernel_model.f32). */
typedef enum { LTE_PRECISION_F64 = 0, LTE_PRECISION_F32 = 1 } lte_precision;

/* Element type of the cells. float32 cells are widened exactly. */
typedef enum { LTE_KERNEL_F64 = 0, LTE_KERNEL_F32 = 1 } lte_kernel_dtype;

/* A batch: ncube cubes of one shape, ncube*nx*ny rays in all (ray
 * r = (c*nx + x)*ny + y), every ray at the same nf channels. Each cube is
 * its own allocation (the callers' arrays); a device backend gathers them
 * into one buffer and may take the whole batch in one launch. */
typedef struct lte_kernel_batch {
  int ncube, nx, ny, nz;
  lte_kernel_dtype dtype;
  /* [ncube] cubes of [(x*ny + y)*nz + z] cells: v_z [m/s] (> 0 away from
   * the observer), T [K], n [m^-3]; a ray is nz contiguous cells */
  const void *const *v, *const *T, *const *n;
  int nf;
  const double *freqs;          /* [nf] channel frequencies [Hz] */
  double background;            /* I_bdy [W m^-2 Hz^-1 sr^-1] when background_map is NULL */
  const double *background_map; /* NULL or [(x*ny + y)*nf + f], shared by all cubes */
  double *const *image;         /* [ncube] images of [(x*ny + y)*nf + f], I_nu [W m^-2 Hz^-1 sr^-1] */
  /* NULL, or (solve_dev of a backend that has it, for the sample + solve
   * pipeline) [ncube] the images as stored targets instead, float32 of
   * [(f*nx + x)*ny + y]: each value rounded once from the float64 image
   * (pipeline/generate/devpipe.h's devpipe_image_to_targets); image is
   * then not written and may be NULL */
  float *const *targets;
  int threads;                  /* host threads (CPU: OpenMP); <= 0: the default */
  /* Non-LTE (solver/nlte_lvg.h): NULL (LTE: Boltzmann populations at T),
   * or [ncube] cubes of the fractional populations of the line's lower
   * and upper level per cell, same layout and dtype as T. Then per cell
   * pl = pop_l, pu = pop_u replace the Boltzmann ones above (Z is not
   * computed) and everything else is unchanged (T still sets the width).
   * A valid cell then also has 0 <= pop_l, pop_u <= 1 (lte_kernel_pop_ok). */
  const void *const *pop_l, *const *pop_u;
} lte_kernel_batch;

/* solve(): 0 when every image is written; LTE_KERNEL_BAD_INPUT when some
 * cell is not valid (see above); -1 with a message (ce_err) on failure
 * (memory, device). */
#define LTE_KERNEL_BAD_INPUT 1

typedef struct lte_kernel {
  const char *name;    /* the backend's name, as lte_backend_name gives it */
  const char *variant; /* how this build computes: "avx512-libmvec", "avx2-libmvec",
                          "portable", ... */
  int (*solve)(const lte_kernel_model *m, const lte_kernel_batch *b);
  /* NULL (nothing to prepare), or: make the backend ready in this process
   * on device `ordinal` modulo the devices present (one GPU per MPI rank:
   * the node-local rank) and describe it into desc[ndesc]; -1 with a message
   * when it cannot run here (no device, no driver). solve() opens device 0
   * itself when open was not called. */
  int (*open)(int ordinal, char *desc, size_t ndesc);
  /* NULL (the backend takes host cubes only), or solve() for cubes already
   * in the memory of the device open() chose (e.g. sampled there:
   * rotate/sampler_cuda.h): b's v, T, n, pop_l, pop_u hold device pointers
   * (written by work that completed before the call); everything else,
   * images included, is host memory as for solve(). */
  int (*solve_dev)(const lte_kernel_model *m, const lte_kernel_batch *b);
} lte_kernel;

extern const lte_kernel lte_kernel_cpu; /* lte_kernel_cpu.c */
#ifdef COEMU_HAVE_CUDA
extern const lte_kernel lte_kernel_cuda; /* lte_kernel_cuda.cu */
#endif

/* The kernel of backend b, or NULL when this build has none (lte.c). */
const lte_kernel *lte_kernel_get(lte_backend b);
/* "cpu", "cuda"; NULL when b is no backend. */
const char *lte_backend_name(lte_backend b);

/* The scalar forms of the contract, shared by the line model (lte_line.c)
 * and the CPU kernel. Compile with -ffp-contract=off (a project argument: meson.build). */
/* The host kernels' float environment (above): subnormals flushed to zero
 * in this thread (x86: MXCSR FTZ | DAZ) until lte_host_flush_end puts the
 * saved mode back. Elsewhere both do nothing (gradual underflow). */
#if !defined(__CUDACC__)
#if defined(__x86_64__) || defined(__SSE2__)
#include <xmmintrin.h>
typedef unsigned lte_host_fpenv;
static inline lte_host_fpenv lte_host_flush_begin(void) {
  const unsigned saved = _mm_getcsr();
  _mm_setcsr(saved | 0x8040u); /* FTZ (bit 15), DAZ (bit 6) */
  return saved;
}
static inline void lte_host_flush_end(lte_host_fpenv saved) { _mm_setcsr(saved); }
#else
typedef int lte_host_fpenv;
static inline lte_host_fpenv lte_host_flush_begin(void) { return 0; }
static inline void lte_host_flush_end(lte_host_fpenv saved) { (void)saved; }
#endif
#endif

static inline LTE_HD int lte_kernel_v_ok(double v, double c) { return fabs(v) < c; }
static inline LTE_HD int lte_kernel_T_ok(double T) { return (T >= DBL_MIN) & (T <= DBL_MAX); }
static inline LTE_HD int lte_kernel_n_ok(double n) { return (n >= 0) & (n <= DBL_MAX); }
static inline LTE_HD int lte_kernel_cell_ok(double v, double T, double n, double c) {
  return lte_kernel_v_ok(v, c) & lte_kernel_T_ok(T) & lte_kernel_n_ok(n);
}

static inline LTE_HD int lte_kernel_x_ok(double p) { return (p >= 0) & (p <= 1); }
static inline LTE_HD int lte_kernel_pop_ok(double pl, double pu) {
  return lte_kernel_x_ok(pl) & lte_kernel_x_ok(pu);
}

static inline LTE_HD double lte_z_direct(int nlev, const double *neg_e_over_k, const double *g,
                                  double T) {
  double invT = 1.0 / T, Z = 0;
  for (int i = 0; i < nlev; i++) Z += g[i] * exp(neg_e_over_k[i] * invT);
  return Z;
}

static inline LTE_HD double lte_z_cheb(const double *c, double s) {
  double b1 = 0, b2 = 0, s2 = 2 * s;
  for (int k = LTE_ZT_NC - 1; k >= 1; k--) {
    double b0 = c[k] + s2 * b1 - b2;
    b2 = b1;
    b1 = b0;
  }
  return c[0] + s * b1 - b2;
}

/* Piece index and local coordinate s in [-1, 1] of T, or -1 outside. */
static inline LTE_HD int lte_z_piece(double T, double *s) {
  if (!(T >= 1.0 && T < (double)(1 << LTE_ZT_OCT))) return -1;
  uint64_t bits;
  memcpy(&bits, &T, 8);
  int e = (int)(bits >> 52) - 1023;
  bits = (bits & 0x000fffffffffffffULL) | 0x3ff0000000000000ULL;
  double m;
  memcpy(&m, &bits, 8);
  double u = (m - 1.0) * LTE_ZT_SUB;
  int j = (int)u;
  if (j >= LTE_ZT_SUB) j = LTE_ZT_SUB - 1;
  *s = 2.0 * (u - j) - 1.0;
  return e * LTE_ZT_SUB + j;
}

/* Z(T) as every kernel evaluates it: the table, or the direct sum. */
static inline LTE_HD double lte_z_partition(int nlev, const double *neg_e_over_k, const double *g,
                                     const double *ztab, const unsigned char *zdirect, double T) {
  double s;
  int p = lte_z_piece(T, &s);
  if (p < 0 || zdirect[p]) return lte_z_direct(nlev, neg_e_over_k, g, T);
  return lte_z_cheb(ztab + (size_t)p * LTE_ZT_NC, s);
}

#ifdef __cplusplus
}
#endif

#endif
