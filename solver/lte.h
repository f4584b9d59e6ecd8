/* lte.h - the exact LTE line imager: a cube (v_z, T, n) ray-traced along z.
 *
 * The model is Pomme's `Line.LTE_image_along_last_axis` (docs/physics.md),
 * reproduced operation by operation in float64 so that the same inputs give
 * the same image to 1e-7 relative (usually ~1e-13):
 *   - LTE populations over all levels of the LAMDA file,
 *   - line emissivity/opacity, source function S = eta/chi,
 *   - thermal + turbulent Gaussian width, Doppler shift b = iw*((1+v/c)nu - nu0),
 *   - per segment the Gaussian profile integrated exactly with a and b linear
 *     in z (with Pomme's |b10| < 1e-4 branch),
 *   - the formal solution with S linear in tau, including Pomme's Taylor
 *     branch for D < 1e-4 whose D^2 and D^3 terms have swapped signs; the
 *     correct expansion is an option (corrected_taylor).
 * The observer sits at z index 0 looking towards +z; the background enters
 * at z = nz-1. Output: I_nu [W m^-2 Hz^-1 sr^-1].
 *
 * Three parts: the line model (lte_line.h: constants, partition function,
 * populations), this driver (lte.c: argument checks, the kernel's constants,
 * dispatch) and the kernels behind one interface (lte_kernel.h: a batch of
 * rays in, images out). The CPU kernel (lte_kernel_cpu.c) is vectorised on
 * the host's vectors (glibc libmvec's exp/erf when built with AVX-512 or
 * AVX2; otherwise a portable build with scalar libm calls, same
 * arithmetic) and runs OpenMP threads over rays; lte_options.backend picks
 * another.
 *
 *   lte_line L;  lte_line_init(&L, &mol, 2, 28.0);
 *   lte_options o = {.dx = 1e11};
 *   lte_solve_cube(&L, freqs, 7, 64, 64, 64, v, T, n, &o, image);
 *   lte_line_free(&L);
 */
#ifndef COEMU_LTE_H
#define COEMU_LTE_H

#include <stddef.h>

#include "solver/lamda.h"
#include "solver/lte_kernel.h"
#include "solver/lte_line.h"

typedef struct {
  double dx;          /* spacing of cell centres along z [m] */
  double vturb;       /* turbulent velocity [m/s] */
  double background;  /* background intensity I_bdy (when background_map is NULL) */
  int take_abs;       /* return |I| (COEmuNet) */
  int corrected_taylor; /* correct D < 1e-4 expansion instead of Pomme's */
  const double *background_map; /* optional I_bdy per pixel and frequency,
                                   [(x*ny + y)*nf + f]; NULL: scalar */
  int threads;        /* OpenMP threads; <= 0: the OpenMP default */
  int libm;           /* literal arithmetic: per-lane libm exp/erf instead of the
                         vector routines and the direct partition sum instead
                         of its table; slower, for comparisons */
  lte_backend backend; /* the kernel (lte_kernel.h); LTE_BACKEND_CPU (0) is the
                          default, one not built gives -1 and a message */
  lte_precision precision; /* LTE_PRECISION_F64 (0, the default): the reference
                              arithmetic; F32: the float32 path, within 1e-5 of
                              it (docs/physics.md, "The float32 path") */
} lte_options;

/* Ray-trace one cube. v [m/s], T [K], n [m^-3] are [(x*ny + y)*nz + z];
 * image[(x*ny + y)*nf + f]. Inputs are checked as they are read: a NaN or
 * Inf, T <= 0, n < 0 or |v| >= c gives -1 and a message naming the array
 * and the index (the first such cell in memory order). */
int lte_solve_cube(const lte_line *L, const double *freqs, int nf, int nx, int ny, int nz,
                   const double *v, const double *T, const double *n, const lte_options *opt,
                   double *image);
/* The same for float32 inputs (widened exactly; float64 inside). */
int lte_solve_cube_f32(const lte_line *L, const double *freqs, int nf, int nx, int ny, int nz,
                       const float *v, const float *T, const float *n, const lte_options *opt,
                       double *image);
/* Many cubes of one shape in one parallel pass (threads share all rays of
 * all cubes): v[c], T[c], n[c] -> image[c]. A message names the cube. */
int lte_solve_batch(const lte_line *L, const double *freqs, int nf, int ncube, int nx, int ny,
                    int nz, const double *const *v, const double *const *T,
                    const double *const *n, const lte_options *opt, double *const *image);
/* The same for float32 cubes (a sampler's). */
int lte_solve_batch_f32(const lte_line *L, const double *freqs, int nf, int ncube, int nx, int ny,
                        int nz, const float *const *v, const float *const *T,
                        const float *const *n, const lte_options *opt, double *const *image);
/* The same for float32 cubes in the memory of opt->backend's device (opened
 * by lte_backend_open; e.g. sampled there, rotate/sampler.h's
 * sampler_device_sample_dev): the backend's solve_dev (lte_kernel.h), each
 * image written as the stored targets (float32 of [(f*nx + x)*ny + y],
 * every value the float64 image's rounded once, as pipeline/generate/
 * devpipe.h's devpipe_image_to_targets would make it) into host memory:
 * the device makes them, so half the images' bytes come back and the host
 * does no transpose (lte_kernel_batch.targets); targets that are one
 * page-locked block (targets[c] = targets[0] + c nf nx ny floats, e.g.
 * from rotate/sampler.h's sampler_device_host_alloc) take them in one copy
 * straight from the device, others through a staging buffer. A backend without a
 * solve_dev (cpu) is an error. A bad cell cannot be located in device
 * memory: the call then returns LTE_KERNEL_BAD_INPUT (1) with a message
 * saying so, and the caller solves those cubes on the host to name it. */
int lte_solve_batch_device_targets(const lte_line *L, const double *freqs, int nf, int ncube,
                                   int nx, int ny, int nz, const float *const *v,
                                   const float *const *T, const float *const *n,
                                   const lte_options *opt, float *const *targets);

/* Non-LTE images: the same, with the fractional populations of the line's
 * lower and upper level per cell (x_l, x_u, same layout; e.g. from
 * solver/nlte_lvg.h, sampled into the cube like T) in place of the
 * Boltzmann populations at T: eta and chi follow from them, T still sets
 * the thermal width (lte_kernel.h). A population outside [0, 1] or NaN is
 * an error naming the array (x_l, x_u) and the cell. */
int lte_solve_cube_pops(const lte_line *L, const double *freqs, int nf, int nx, int ny, int nz,
                        const double *v, const double *T, const double *n, const double *x_l,
                        const double *x_u, const lte_options *opt, double *image);
int lte_solve_cube_pops_f32(const lte_line *L, const double *freqs, int nf, int nx, int ny, int nz,
                            const float *v, const float *T, const float *n, const float *x_l,
                            const float *x_u, const lte_options *opt, double *image);

/* The constants a kernel computes with, for line L and options o: what the
 * calls above hand the backend (for tests that call a kernel directly). */
void lte_kernel_model_init(lte_kernel_model *m, const lte_line *L, const lte_options *o);

/* The backend named s ("cpu", "cuda"): 0, or -1 with a message listing the
 * names. Whether it is built is lte_backend_open's question. */
int lte_backend_parse(const char *s, lte_backend *b);
/* Make backend b ready in this process (lte_kernel.h, open): -1 with a
 * message when it is not built ("solver backend 'cuda' is not built into
 * this coemu (built: cpu)") or cannot run here ("... no CUDA device ...");
 * ordinal picks the device (modulo the devices present; the node-local MPI
 * rank). desc (may be NULL) gets a line describing what will compute. */
int lte_backend_open(lte_backend b, int ordinal, char *desc, size_t ndesc);

/* The precision named s ("float64", "float32"): 0, or -1 with a message. */
int lte_precision_parse(const char *s, lte_precision *p);
/* "float64", "float32"; NULL when p is none. */
const char *lte_precision_name(lte_precision p);

/* Which vector path this build's CPU kernel uses ("avx512-libmvec",
 * "avx2-libmvec" or "portable"). */
const char *lte_kernel_name(void);

#endif
