/* lte.c - the LTE line imager's driver (see lte.h and docs/physics.md): it
 * checks the arguments, derives the kernel's constants from the line and
 * the options, hands the batch to the chosen backend (lte_kernel.h) and
 * names the first bad cell when the kernel reports one. The line model is
 * in lte_line.c, the CPU kernel in lte_kernel_cpu.c.
 */
#include "solver/lte.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "common/error.h"

/* ---------------------------------------------------------------------- */
/* The backends built into this coemu */

static const char *const backend_names[LTE_BACKEND_COUNT] = {
    [LTE_BACKEND_CPU] = "cpu",
    [LTE_BACKEND_CUDA] = "cuda",
};

static const lte_kernel *const kernels[LTE_BACKEND_COUNT] = {
    [LTE_BACKEND_CPU] = &lte_kernel_cpu,
#ifdef COEMU_HAVE_CUDA
    [LTE_BACKEND_CUDA] = &lte_kernel_cuda,
#endif
};

const char *lte_backend_name(lte_backend b) {
  return (unsigned)b < LTE_BACKEND_COUNT ? backend_names[b] : NULL;
}

const lte_kernel *lte_kernel_get(lte_backend b) {
  return (unsigned)b < LTE_BACKEND_COUNT ? kernels[b] : NULL;
}

const char *lte_kernel_name(void) { return lte_kernel_cpu.variant; }

static int find_kernel(lte_backend b, const lte_kernel **k) {
  if ((unsigned)b >= LTE_BACKEND_COUNT)
    CE_FAIL("LTE solver: backend %d does not exist (0 .. %d)", (int)b, LTE_BACKEND_COUNT - 1);
  if (!(*k = kernels[b])) {
    char built[128] = "";
    for (int i = 0; i < LTE_BACKEND_COUNT; i++)
      if (kernels[i])
        snprintf(built + strlen(built), sizeof built - strlen(built), "%s%s", *built ? ", " : "",
                 backend_names[i]);
    CE_FAIL("solver backend '%s' is not built into this coemu (built: %s)", backend_names[b],
            built);
  }
  return 0;
}

int lte_backend_parse(const char *s, lte_backend *b) {
  for (int i = 0; i < LTE_BACKEND_COUNT; i++)
    if (s && !strcmp(s, backend_names[i])) {
      *b = (lte_backend)i;
      return 0;
    }
  CE_FAIL("solver device '%s', expected cpu or cuda", s ? s : "(null)");
}

int lte_backend_open(lte_backend b, int ordinal, char *desc, size_t ndesc) {
  const lte_kernel *k;
  CE_TRY(find_kernel(b, &k));
  char buf[256];
  if (k->open) {
    if (k->open(ordinal, buf, sizeof buf) < 0) return -1;
  } else {
    snprintf(buf, sizeof buf, "%s (%s)", k->name, k->variant);
  }
  if (desc && ndesc) snprintf(desc, ndesc, "%s", buf);
  return 0;
}

/* ---------------------------------------------------------------------- */
/* Arguments */

void lte_kernel_model_init(lte_kernel_model *m, const lte_line *L, const lte_options *o) {
  *m = (lte_kernel_model){
      .nlev = L->nlev,
      .neg_e_over_k = L->neg_e_over_k,
      .g = L->g,
      .ztab = L->ztab,
      .zdirect = L->zdirect,
      .any_zdirect = L->any_zdirect,
      .g_l = L->g_l,
      .g_u = L->g_u,
      .neg_e_over_k_l = L->neg_e_over_k_l,
      .neg_e_over_k_u = L->neg_e_over_k_u,
      .fac = L->fac,
      .eta_c = L->fac * L->A,
      .B_lu = L->B_lu,
      .B_ul = L->B_ul,
      .nu0 = L->nu0,
      .nu0_over_c = L->nu0_over_c,
      .two_k_over_m = L->two_k_over_m,
      .vt2 = o->vturb * o->vturb,
      .c = LTE_C,
      .inv_c = 1.0 / LTE_C,
      .dx = o->dx,
      .corrected_taylor = o->corrected_taylor,
      .take_abs = o->take_abs,
      .libm = o->libm,
      .f32 = o->precision == LTE_PRECISION_F32,
  };
}

static const char *const precision_names[] = {"float64", "float32"};

const char *lte_precision_name(lte_precision p) {
  return (unsigned)p < 2 ? precision_names[p] : NULL;
}

int lte_precision_parse(const char *s, lte_precision *p) {
  for (int i = 0; i < 2; i++)
    if (s && !strcmp(s, precision_names[i])) {
      *p = (lte_precision)i;
      return 0;
    }
  CE_FAIL("solver precision '%s', expected float64 or float32", s ? s : "(null)");
}

static int check_args(const lte_line *L, const double *freqs, int nf, int nx, int ny, int nz,
                      const lte_options *o) {
  if (!L || !L->g) CE_FAIL("LTE solver: line not initialised");
  if (nf < 1 || nx < 1 || ny < 1 || nz < 1)
    CE_FAIL("LTE solver: cube %d x %d x %d with %d frequencies, expected all >= 1", nx, ny, nz,
            nf);
  if (nz > (1 << 24)) CE_FAIL("LTE solver: nz = %d too large", nz);
  if (!(o->dx > 0) || !isfinite(o->dx)) CE_FAIL("LTE solver: dx = %g, expected > 0", o->dx);
  if (!(o->vturb >= 0) || !isfinite(o->vturb))
    CE_FAIL("LTE solver: vturb = %g m/s, expected >= 0", o->vturb);
  if ((unsigned)o->precision > LTE_PRECISION_F32)
    CE_FAIL("LTE solver: precision %d does not exist (0: float64, 1: float32)", (int)o->precision);
  if (!isfinite(o->background)) CE_FAIL("LTE solver: background = %g, expected finite", o->background);
  for (int f = 0; f < nf; f++)
    if (!(freqs[f] > 0) || !isfinite(freqs[f]))
      CE_FAIL("LTE solver: frequency %d = %g Hz, expected > 0", f, freqs[f]);
  return 0;
}

/* The kernel found a bad cell: name the first in memory order (cube by
 * cube; in a cell v, then T, then n). */
static int report_bad(const lte_kernel_batch *b, const char *backend) {
  static const char *names[5] = {"v_z", "T", "n", "x_l", "x_u"};
  static const char *expect[5] = {"finite with |v| < c",
                                  "finite and > 0 K (at least DBL_MIN, 2.2e-308 K)", "finite and >= 0",
                                  "a population in [0, 1]", "a population in [0, 1]"};
  const size_t ncell = (size_t)b->nx * b->ny * b->nz;
  const int na = b->pop_l ? 5 : 3;
  for (int c = 0; c < b->ncube; c++) {
    const void *a[5] = {b->v[c], b->T[c], b->n[c], b->pop_l ? b->pop_l[c] : NULL,
                        b->pop_u ? b->pop_u[c] : NULL};
    for (size_t i = 0; i < ncell; i++) {
      double x[5] = {0, 0, 0, 0, 0};
      for (int k = 0; k < na; k++)
        x[k] = b->dtype == LTE_KERNEL_F32 ? (double)((const float *)a[k])[i]
                                          : ((const double *)a[k])[i];
      /* the kernels' own tests (lte_kernel.h), field by field */
      int which = !lte_kernel_v_ok(x[0], LTE_C)          ? 0
                  : !lte_kernel_T_ok(x[1])               ? 1
                  : !lte_kernel_n_ok(x[2])               ? 2
                  : na == 5 && !lte_kernel_x_ok(x[3])    ? 3
                  : na == 5 && !lte_kernel_x_ok(x[4])    ? 4
                                                         : -1;
      if (which < 0) continue;
      size_t pix = i / b->nz;
      int x_ = (int)(pix / b->ny), y_ = (int)(pix % b->ny), z_ = (int)(i % b->nz);
      ce_err("%s[%d, %d, %d] = %g, expected %s", names[which], x_, y_, z_, x[which],
             expect[which]);
      if (b->ncube > 1) ce_err_prefix("cube %d", c);
      return -1;
    }
  }
  CE_FAIL("LTE solver: the %s backend reported a bad input cell, but every cell is valid",
          backend);
}

/* ---------------------------------------------------------------------- */
/* Dispatch */

static int solve(const lte_line *L, const double *freqs, int nf, int ncube, int nx, int ny,
                 int nz, lte_kernel_dtype dtype, const void *const *v, const void *const *T,
                 const void *const *n, const void *const *pop_l, const void *const *pop_u,
                 const lte_options *o, double *const *image, float *const *targets, int dev) {
  CE_TRY(check_args(L, freqs, nf, nx, ny, nz, o));
  const lte_kernel *k;
  CE_TRY(find_kernel(o->backend, &k));
  if (dev && !k->solve_dev)
    CE_FAIL("LTE solver: the %s backend takes no cubes in device memory", k->name);
  lte_kernel_model m;
  lte_kernel_model_init(&m, L, o);
  lte_kernel_batch b = {.ncube = ncube, .nx = nx, .ny = ny, .nz = nz, .dtype = dtype,
                        .v = v, .T = T, .n = n, .nf = nf, .freqs = freqs,
                        .background = o->background, .background_map = o->background_map,
                        .image = image, .targets = targets, .threads = o->threads,
                        .pop_l = pop_l, .pop_u = pop_u};
  int rc = (dev ? k->solve_dev : k->solve)(&m, &b);
  if (rc == LTE_KERNEL_BAD_INPUT && dev) {
    ce_err("LTE solver: a cube of this batch in %s device memory holds an invalid cell "
           "(v_z, T or n; solved on the host, the message names it)", k->name);
    return LTE_KERNEL_BAD_INPUT;
  }
  if (rc == LTE_KERNEL_BAD_INPUT) return report_bad(&b, k->name);
  return rc < 0 ? -1 : 0;
}

int lte_solve_cube(const lte_line *L, const double *freqs, int nf, int nx, int ny, int nz,
                   const double *v, const double *T, const double *n, const lte_options *opt,
                   double *image) {
  const void *pv = v, *pT = T, *pn = n;
  return solve(L, freqs, nf, 1, nx, ny, nz, LTE_KERNEL_F64, &pv, &pT, &pn, NULL, NULL, opt, &image, NULL, 0);
}

int lte_solve_cube_f32(const lte_line *L, const double *freqs, int nf, int nx, int ny, int nz,
                       const float *v, const float *T, const float *n, const lte_options *opt,
                       double *image) {
  const void *pv = v, *pT = T, *pn = n;
  return solve(L, freqs, nf, 1, nx, ny, nz, LTE_KERNEL_F32, &pv, &pT, &pn, NULL, NULL, opt, &image, NULL, 0);
}

int lte_solve_batch(const lte_line *L, const double *freqs, int nf, int ncube, int nx, int ny,
                    int nz, const double *const *v, const double *const *T,
                    const double *const *n, const lte_options *opt, double *const *image) {
  if (ncube < 1) CE_FAIL("LTE solver: %d cubes, expected >= 1", ncube);
  return solve(L, freqs, nf, ncube, nx, ny, nz, LTE_KERNEL_F64, (const void *const *)v,
               (const void *const *)T, (const void *const *)n, NULL, NULL, opt, image, NULL, 0);
}

int lte_solve_cube_pops(const lte_line *L, const double *freqs, int nf, int nx, int ny, int nz,
                        const double *v, const double *T, const double *n, const double *x_l,
                        const double *x_u, const lte_options *opt, double *image) {
  if (!x_l || !x_u) CE_FAIL("LTE solver: no level populations given (x_l, x_u)");
  const void *pv = v, *pT = T, *pn = n, *pl = x_l, *pu = x_u;
  return solve(L, freqs, nf, 1, nx, ny, nz, LTE_KERNEL_F64, &pv, &pT, &pn, &pl, &pu, opt, &image, NULL, 0);
}

int lte_solve_cube_pops_f32(const lte_line *L, const double *freqs, int nf, int nx, int ny, int nz,
                            const float *v, const float *T, const float *n, const float *x_l,
                            const float *x_u, const lte_options *opt, double *image) {
  if (!x_l || !x_u) CE_FAIL("LTE solver: no level populations given (x_l, x_u)");
  const void *pv = v, *pT = T, *pn = n, *pl = x_l, *pu = x_u;
  return solve(L, freqs, nf, 1, nx, ny, nz, LTE_KERNEL_F32, &pv, &pT, &pn, &pl, &pu, opt, &image, NULL, 0);
}

int lte_solve_batch_f32(const lte_line *L, const double *freqs, int nf, int ncube, int nx, int ny,
                        int nz, const float *const *v, const float *const *T,
                        const float *const *n, const lte_options *opt, double *const *image) {
  if (ncube < 1) CE_FAIL("LTE solver: %d cubes, expected >= 1", ncube);
  return solve(L, freqs, nf, ncube, nx, ny, nz, LTE_KERNEL_F32, (const void *const *)v,
               (const void *const *)T, (const void *const *)n, NULL, NULL, opt, image, NULL, 0);
}

int lte_solve_batch_device_targets(const lte_line *L, const double *freqs, int nf, int ncube,
                                   int nx, int ny, int nz, const float *const *v,
                                   const float *const *T, const float *const *n,
                                   const lte_options *opt, float *const *targets) {
  if (ncube < 1) CE_FAIL("LTE solver: %d cubes, expected >= 1", ncube);
  if (!targets) CE_FAIL("LTE solver: no targets given");
  return solve(L, freqs, nf, ncube, nx, ny, nz, LTE_KERNEL_F32, (const void *const *)v,
               (const void *const *)T, (const void *const *)n, NULL, NULL, opt, NULL, targets, 1);
}
