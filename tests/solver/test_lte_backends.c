/* test_lte_backends.c - every kernel backend built into this coemu, called
 * through the kernel interface (lte_kernel.h) with the driver's constants,
 * against the literal reference tests/solver/ref_lte.c: batches of several
 * cubes, float32 and float64 cells, nz = 1 and nz not a multiple of 8, a
 * background map, |I|, both Taylor branches, literal (libm) mode; cold
 * cells; bad cells; results independent of the batch and the thread count;
 * the driver's dispatch. A backend that is not built gives a clear error.
 *
 * The criterion for every backend is the one of docs/physics.md: 1e-7
 * relative on every pixel that is neither round-off (|I| <= 1e-12 max|I|)
 * nor ill-conditioned (the reference's noise estimate above 1e-8 |I|). The
 * CPU kernel in literal mode computes with glibc's exp and erf, as the
 * reference does, and must match it on every pixel to 1e-13. */
#include <float.h>
#include <stdint.h>
#include <stdlib.h>

#include "check.h"
#include "co_line.h"
#include "solver/cubes.h"
#include "solver/freqgrid.h"
#include "solver/lamda.h"
#include "solver/lte.h"
#include "solver/lte_kernel_body.h"
#include "ref_lte.h"

static lamda_molecule co;
static lte_line L;

typedef struct {
  const char *grid;
  int ncube, nx, ny, nz;
  double dx, vturb, background;
  int corrected, f32, bgmap, take_abs;
  uint64_t seed;
} batch_case;

static const batch_case cases[] = {
    {"coemunet", 3, 9, 7, 64, 2e11, 0, 0, 0, 0, 0, 0, 1},
    {"-9000:1500:13", 2, 5, 6, 37, 2e11, 150, 0, 0, 1, 0, 0, 2}, /* float32 cells */
    {"-9000:1500:13", 1, 4, 4, 9, 2e11, 0, 1e-16, 0, 0, 0, 0, 3},
    {"-6000:1000:11", 2, 6, 5, 64, 2e11, 50, 0, 1, 0, 0, 0, 4}, /* corrected Taylor */
    {"-3000:500:9", 2, 3, 3, 1, 2e11, 0, 2e-15, 0, 0, 0, 0, 5},  /* no segment */
    {"coemunet", 2, 5, 4, 33, 3e11, 0, 0, 0, 1, 1, 1, 6},       /* map, |I|, float32 */
};

#define BG_STEP 1e-16 /* background map: BG_STEP * (i % 5) at image index i */

typedef struct {
  int nf, np;
  double *fr;
  size_t nc;
  double **v, **T, **n, **img;
  float **v32, **T32, **n32;
  double **ref, **noise;
  double *bg; /* a background map, BG_STEP * (i % 5) at image index i (cases with bgmap) */
} batch_data;

static double *dalloc(size_t n) { return calloc(n, sizeof(double)); }

static void batch_make(const batch_case *k, batch_data *d) {
  CHECK_OK(freqgrid_parse(k->grid, L.nu0, &d->fr, &d->nf));
  d->nc = (size_t)k->nx * k->ny * k->nz;
  d->np = k->nx * k->ny * d->nf;
  d->bg = dalloc(d->np);
  for (int i = 0; i < d->np; i++) d->bg[i] = BG_STEP * (i % 5);
  double ***dd[] = {&d->v, &d->T, &d->n, &d->img, &d->ref, &d->noise};
  for (int i = 0; i < 6; i++) *dd[i] = calloc(k->ncube, sizeof(double *));
  float ***ff[] = {&d->v32, &d->T32, &d->n32};
  for (int i = 0; i < 3; i++) *ff[i] = calloc(k->ncube, sizeof(float *));
  for (int c = 0; c < k->ncube; c++) {
    d->v[c] = dalloc(d->nc), d->T[c] = dalloc(d->nc), d->n[c] = dalloc(d->nc);
    d->img[c] = dalloc(d->np), d->ref[c] = dalloc(d->np), d->noise[c] = dalloc(d->np);
    cubes_random(k->seed * 100 + c, k->nx, k->ny, k->nz, d->v[c], d->T[c], d->n[c]);
    d->v32[c] = malloc(d->nc * sizeof(float));
    d->T32[c] = malloc(d->nc * sizeof(float));
    d->n32[c] = malloc(d->nc * sizeof(float));
    for (size_t i = 0; i < d->nc; i++) {
      d->v32[c][i] = (float)d->v[c][i], d->T32[c][i] = (float)d->T[c][i];
      d->n32[c][i] = (float)d->n[c][i];
      if (k->f32) /* the reference sees the widened cells */
        d->v[c][i] = d->v32[c][i], d->T[c][i] = d->T32[c][i], d->n[c][i] = d->n32[c][i];
    }
    if (!k->bgmap) {
      ref_lte_image(&co, 2, 28.0, d->fr, d->nf, k->nx, k->ny, k->nz, d->v[c], d->T[c], d->n[c],
                    k->dx, k->vturb, k->background, k->corrected, d->ref[c], d->noise[c]);
    } else { /* one reference per background value, each pixel from its own */
      double *r = dalloc(d->np);
      for (int b = 0; b < 5; b++) {
        ref_lte_image(&co, 2, 28.0, d->fr, d->nf, k->nx, k->ny, k->nz, d->v[c], d->T[c],
                      d->n[c], k->dx, k->vturb, BG_STEP * b, k->corrected, r, d->noise[c]);
        for (int i = b; i < d->np; i += 5) d->ref[c][i] = r[i];
      }
      free(r);
    }
    if (k->take_abs)
      for (int i = 0; i < d->np; i++) d->ref[c][i] = fabs(d->ref[c][i]);
  }
}

static void batch_free(const batch_case *k, batch_data *d) {
  for (int c = 0; c < k->ncube; c++) {
    free(d->v[c]), free(d->T[c]), free(d->n[c]), free(d->img[c]), free(d->ref[c]);
    free(d->noise[c]), free(d->v32[c]), free(d->T32[c]), free(d->n32[c]);
  }
  free(d->v), free(d->T), free(d->n), free(d->img), free(d->ref), free(d->noise);
  free(d->v32), free(d->T32), free(d->n32), free(d->fr), free(d->bg);
}

static lte_options case_options(const batch_case *k, const double *bg, int libm, int threads) {
  return (lte_options){.dx = k->dx, .vturb = k->vturb, .background = k->background,
                       .take_abs = k->take_abs, .corrected_taylor = k->corrected,
                       .background_map = k->bgmap ? bg : NULL, .threads = threads,
                       .libm = libm};
}

/* The batch of cubes [c0, c0 + ncube) of d as the kernel takes it. */
static lte_kernel_batch kernel_batch(const batch_case *k, batch_data *d, const lte_options *o,
                                     int c0, int ncube) {
  return (lte_kernel_batch){
      .ncube = ncube, .nx = k->nx, .ny = k->ny, .nz = k->nz,
      .dtype = k->f32 ? LTE_KERNEL_F32 : LTE_KERNEL_F64,
      .v = k->f32 ? (const void *const *)(d->v32 + c0) : (const void *const *)(d->v + c0),
      .T = k->f32 ? (const void *const *)(d->T32 + c0) : (const void *const *)(d->T + c0),
      .n = k->f32 ? (const void *const *)(d->n32 + c0) : (const void *const *)(d->n + c0),
      .nf = d->nf, .freqs = d->fr, .background = o->background,
      .background_map = o->background_map, .image = d->img + c0, .threads = o->threads};
}

/* Case k ready to solve: d made, *o its options (libm, threads,
 * precision), *m its kernel model; the whole batch. */
static lte_kernel_batch case_open(const batch_case *k, batch_data *d, int libm, int threads,
                                  lte_precision prec, lte_options *o, lte_kernel_model *m) {
  batch_make(k, d);
  *o = case_options(k, d->bg, libm, threads);
  o->precision = prec;
  lte_kernel_model_init(m, &L, o);
  return kernel_batch(k, d, o, 0, k->ncube);
}

typedef struct {
  double worst;
  int ill, counted, total;
} tally;

static void compare_named(const char *name, int exact, const batch_case *k, int ci,
                          batch_data *d, int libm, tally *t);
static void compare(lte_backend be, const batch_case *k, int ci, batch_data *d, int libm, tally *t) {
  compare_named(lte_backend_name(be), be == LTE_BACKEND_CPU && libm, k, ci, d, libm, t);
}

/* exact: literal mode, glibc's exp and erf as the reference: 1e-13 on every pixel */
static void compare_named(const char *name, int exact, const batch_case *k, int ci,
                          batch_data *d, int libm, tally *t) {
  const double *img = d->img[ci], *ref = d->ref[ci], *noise = d->noise[ci];
  double mx = 0;
  for (int i = 0; i < d->np; i++) mx = fmax(mx, fabs(ref[i]));
  int bad = 0;
  for (int i = 0; i < d->np; i++) {
    if (exact) {
      double rel = ref[i] != 0 ? fabs(img[i] - ref[i]) / fabs(ref[i]) : fabs(img[i]);
      if (!(rel <= 1e-13) && bad++ < 5)
        CHECK_FAIL_("%s, literal mode, %s seed %llu cube %d pixel %d: %.17g vs %.17g", name,
                    k->grid, (unsigned long long)k->seed, ci, i, img[i], ref[i]);
    }
    t->total++;
    const ref_lte_class cl = ref_lte_classify(ref[i], noise[i], mx);
    if (cl == REF_LTE_ROUNDOFF) continue;
    if (cl == REF_LTE_ILL) {
      t->ill++;
      continue;
    }
    t->counted++;
    double rel = fabs(img[i] - ref[i]) / fabs(ref[i]);
    t->worst = fmax(t->worst, rel);
    if (!(rel <= 1e-7) && bad++ < 5)
      CHECK_FAIL_("%s, libm %d, %s seed %llu cube %d pixel %d: %.17g vs reference %.17g (rel %.3g)",
                  name, libm, k->grid, (unsigned long long)k->seed, ci, i, img[i],
                  ref[i], rel);
  }
}

/* One backend, every case, both arithmetic modes. */
static void backend_against_reference(lte_backend be, const lte_kernel *kern) {
  for (int libm = 0; libm < 2; libm++) {
    tally t = {0};
    for (size_t ki = 0; ki < sizeof cases / sizeof *cases; ki++) {
      const batch_case *k = &cases[ki];
      batch_data d;
      lte_options o;
      lte_kernel_model m;
      /* the whole batch in one call */
      lte_kernel_batch b = case_open(k, &d, libm, 2, LTE_PRECISION_F64, &o, &m);
      o.backend = be;
      CHECK_MSG(kern->solve(&m, &b) == 0, "%s: %s", lte_backend_name(be), ce_err_msg());
      for (int c = 0; c < k->ncube; c++) compare(be, k, c, &d, libm, &t);
      /* each cube alone, on one thread: the same bits */
      double *alone = dalloc(d.np);
      for (int c = 0; c < k->ncube; c++) {
        lte_options o1 = case_options(k, d.bg, libm, 1);
        lte_kernel_batch b1 = kernel_batch(k, &d, &o1, c, 1);
        b1.image = &alone;
        CHECK(kern->solve(&m, &b1) == 0);
        CHECK_MSG(!memcmp(alone, d.img[c], d.np * sizeof(double)),
                  "%s: cube %d alone differs from the batch", lte_backend_name(be), c);
      }
      /* the driver hands the same batch to this backend: the same bits */
      double **drv = calloc((unsigned)k->ncube, sizeof(double *));
      for (int c = 0; c < k->ncube; c++) drv[c] = dalloc(d.np);
      if (k->f32)
        for (int c = 0; c < k->ncube; c++)
          CHECK_OK(lte_solve_cube_f32(&L, d.fr, d.nf, k->nx, k->ny, k->nz, d.v32[c], d.T32[c],
                                      d.n32[c], &o, drv[c]));
      else
        CHECK_OK(lte_solve_batch(&L, d.fr, d.nf, k->ncube, k->nx, k->ny, k->nz,
                                 (const double *const *)d.v, (const double *const *)d.T,
                                 (const double *const *)d.n, &o, drv));
      for (int c = 0; c < k->ncube; c++)
        CHECK_MSG(!memcmp(drv[c], d.img[c], d.np * sizeof(double)),
                  "%s: the driver's image of cube %d differs", lte_backend_name(be), c);
      for (int c = 0; c < k->ncube; c++) free(drv[c]);
      free(drv), free(alone);
      batch_free(k, &d);
    }
    fprintf(stderr, "  %s (%s), %s: worst relative difference %.3g on %d pixels; %d ill-conditioned of %d\n",
            lte_backend_name(be), kern->variant, libm ? "literal mode" : "fast", t.worst, t.counted,
            t.ill, t.total);
    CHECK(t.counted > 1000 && t.ill < t.total / 4);
  }
}

/* Cells so cold that both populations underflow neither emit nor absorb:
 * the image is that of the same ray with those cells emptied, never NaN. */
static void backend_cold_cells_p(lte_backend be, const lte_kernel *kern, lte_precision prec,
                                 double T_cold) {
  enum { NZ = 40 };
  double v[NZ], T[NZ], n[NZ], n0[NZ], f[FREQGRID_COEMUNET_N], a[7], b[7];
  freqgrid_coemunet(L.nu0, f);
  for (int z = 0; z < NZ; z++) {
    v[z] = 300.0 * (z - 20);
    T[z] = z % 7 == 3 ? T_cold : 40 + 10 * z;
    n[z] = n0[z] = 1e8;
    if (T[z] < 1) n0[z] = 0;
  }
  for (int libm = 0; libm < 2; libm++) {
    lte_options o = {.dx = 3e10, .libm = libm, .precision = prec};
    lte_kernel_model m;
    lte_kernel_model_init(&m, &L, &o);
    const void *pv = v, *pT = T, *pn = n, *pn0 = n0;
    double *pa = a, *pb = b;
    lte_kernel_batch k = {.ncube = 1, .nx = 1, .ny = 1, .nz = NZ, .v = &pv, .T = &pT, .n = &pn,
                          .nf = 7, .freqs = f, .image = &pa, .threads = 1};
    CHECK(kern->solve(&m, &k) == 0);
    k.n = &pn0, k.image = &pb;
    CHECK(kern->solve(&m, &k) == 0);
    for (int i = 0; i < 7; i++)
      CHECK_MSG(!isnan(a[i]) && a[i] == b[i] && a[i] > 0, "%s, libm %d, channel %d: %g vs %g",
                lte_backend_name(be), libm, i, a[i], b[i]);
  }
}

static void backend_cold_cells(lte_backend be, const lte_kernel *kern) {
  backend_cold_cells_p(be, kern, LTE_PRECISION_F64, 0.002);
}

/* A bad cell: the kernel says so, the driver names the first one. */
static void backend_bad_cells(lte_backend be, const lte_kernel *kern) {
  enum { NX = 2, NY = 3, NZ = 5, NC = NX * NY * NZ };
  double v[2][NC], T[2][NC], n[2][NC], img[2][NX * NY], f = L.nu0;
  for (int c = 0; c < 2; c++)
    for (int i = 0; i < NC; i++) v[c][i] = 100, T[c][i] = 50, n[c][i] = 1e8;
  const double *pv[2] = {v[0], v[1]}, *pT[2] = {T[0], T[1]}, *pn[2] = {n[0], n[1]};
  double *pi[2] = {img[0], img[1]};
  lte_options o = {.dx = 1e11, .backend = be};
  lte_kernel_model m;
  lte_kernel_model_init(&m, &L, &o);
  lte_kernel_batch b = {.ncube = 2, .nx = NX, .ny = NY, .nz = NZ,
                        .v = (const void *const *)pv, .T = (const void *const *)pT,
                        .n = (const void *const *)pn, .nf = 1, .freqs = &f, .image = pi};
  CHECK(kern->solve(&m, &b) == 0);
  /* cube 1, cell (1, 2, 4) = (1*3 + 2)*5 + 4 = 29, and a later one */
  T[1][29] = NAN;
  v[1][29] = -LTE_C;
  CHECK(kern->solve(&m, &b) == LTE_KERNEL_BAD_INPUT);
  CHECK_ERR(lte_solve_batch(&L, &f, 1, 2, NX, NY, NZ, pv, pT, pn, &o, pi),
            "cube 1: v_z[1, 2, 4] = -2.99792e+08, expected finite with |v| < c");
  v[1][29] = 100;
  n[1][7] = -1; /* (0, 1, 2): first in memory order */
  CHECK_ERR(lte_solve_batch(&L, &f, 1, 2, NX, NY, NZ, pv, pT, pn, &o, pi),
            "cube 1: n[0, 1, 2] = -1, expected finite and >= 0");
  n[1][7] = 1e8;
  T[1][29] = 50;
  v[0][0] = INFINITY;
  CHECK(kern->solve(&m, &b) == LTE_KERNEL_BAD_INPUT);
  CHECK_ERR(lte_solve_cube(&L, &f, 1, NX, NY, NZ, v[0], T[0], n[0], &o, img[0]),
            "v_z[0, 0, 0] = inf");
}

/* A device backend: a cube larger than the device's memory is refused with
 * a message before any cell is read (the cells here are never touched). */
static void backend_too_large(lte_backend be, const lte_kernel *kern) {
  double dummy[1] = {0}, f = L.nu0, img[1];
  const void *p = dummy;
  double *pi = img;
  lte_options o = {.dx = 1e11, .backend = be};
  lte_kernel_model m;
  lte_kernel_model_init(&m, &L, &o);
  lte_kernel_batch b = {.ncube = 1, .nx = 1 << 16, .ny = 1 << 16, .nz = 1 << 12, .v = &p,
                        .T = &p, .n = &p, .nf = 1, .freqs = &f, .image = &pi};
  CHECK(kern->solve(&m, &b) == -1);
  CHECK_MSG(strstr(ce_err_msg(), "on the device") && strstr(ce_err_msg(), "free"), "%s",
            ce_err_msg());
}

static void f32_against_reference(const char *name, const lte_kernel *kern, int cpu_bits);

static void backend_pops(lte_backend be, const lte_kernel *kern);
static void test_backends(void) {
  int built = 0;
  for (int i = 0; i < LTE_BACKEND_COUNT; i++) {
    lte_backend be = (lte_backend)i;
    const lte_kernel *k = lte_kernel_get(be);
    if (!k) continue;
    built++;
    CHECK(k->name && !strcmp(k->name, lte_backend_name(be)) && k->variant && k->solve);
    char desc[256] = "";
    if (lte_backend_open(be, 0, desc, sizeof desc) < 0) {
      /* a device backend on a host without the device (CI): a clear error,
       * from the driver's calls too; its code runs in test_bodies instead */
      char msg[512];
      snprintf(msg, sizeof msg, "%s", ce_err_msg());
      fprintf(stderr, "  %s: built, cannot run here: %s\n", k->name, msg);
      /* scripts/gpu-check.sh: on the GPU machine the device must run */
      CHECK_MSG(!getenv("COEMU_REQUIRE_DEVICE"), "COEMU_REQUIRE_DEVICE is set: %s", msg);
      CHECK_MSG(be != LTE_BACKEND_CPU && strstr(msg, k->name) && strstr(msg, "device"), "%s", msg);
      double v[4] = {0}, T[4] = {50, 50, 50, 50}, n[4] = {1e8, 1e8, 1e8, 1e8}, f = L.nu0, img[1];
      lte_options o = {.dx = 1e11, .backend = be};
      CHECK_ERR(lte_solve_cube(&L, &f, 1, 1, 1, 4, v, T, n, &o, img), "no CUDA device");
      continue;
    }
    fprintf(stderr, "  %s: %s\n", k->name, desc);
    backend_against_reference(be, k);
    f32_against_reference(k->name, k, 0);
    backend_cold_cells(be, k);
    backend_bad_cells(be, k);
    if (be != LTE_BACKEND_CPU) backend_too_large(be, k);
    if (be != LTE_BACKEND_CPU) backend_pops(be, k);
  }
  CHECK(built >= 1 && lte_kernel_get(LTE_BACKEND_CPU) == &lte_kernel_cpu);
  CHECK(!strcmp(lte_kernel_cpu.variant, lte_kernel_name()));
#ifdef COEMU_TEST_KERNEL_VARIANT /* the form this executable was built to test */
  CHECK_MSG(!strcmp(lte_kernel_cpu.variant, COEMU_TEST_KERNEL_VARIANT), "%s", lte_kernel_cpu.variant);
#endif
}

/* ---------------------------------------------------------------------- */
/* The CUDA kernel's per-thread bodies (solver/lte_kernel_body.h), compiled
 * for the host and run by a plain loop over the thread indices, as a kernel
 * table: the device's code without the device. */

/* fused: the fused form (lte_body_run_host_fused: one block's threads
 * phase after phase, the cells through its tile), else the two launches */
static int body_solve_form(const lte_kernel_model *M, const lte_kernel_batch *B, int fused) {
  const size_t npix = (size_t)B->nx * B->ny, ncell = npix * B->nz, nray = npix * B->ncube;
  const size_t esz = B->dtype == LTE_KERNEL_F32 ? 4 : 8, narr = B->pop_l ? 5 : 3;
  const void *const *src[5] = {B->v, B->T, B->n, B->pop_l, B->pop_u};
  unsigned char *cells[5] = {NULL};
  for (size_t a = 0; a < narr; a++) { /* gathered, as the device copies them */
    cells[a] = malloc(ncell * B->ncube * esz);
    for (int c = 0; c < B->ncube; c++)
      memcpy(cells[a] + c * ncell * esz, src[a][c], ncell * esz);
  }
  double *scratch = malloc(4 * ncell * B->ncube * sizeof(double));
  double *image = malloc(nray * B->nf * sizeof(double));
  float *targets = B->targets ? malloc(nray * B->nf * sizeof(float)) : NULL;
  int *bad = calloc(nray, sizeof(int));
  lte_body_view V = {.nray = (long long)nray, .npix = (long long)npix, .nz = B->nz, .nf = B->nf,
                     .dtype = B->dtype, .v = cells[0], .T = cells[1], .n = cells[2],
                     .pl = cells[3], .pu = cells[4], .freqs = B->freqs,
                     .background = B->background, .background_map = B->background_map,
                     .S = scratch, .adx = scratch + ncell * B->ncube,
                     .iw = scratch + 2 * ncell * B->ncube, .shift = scratch + 3 * ncell * B->ncube,
                     .bad = bad, .image = image, .targets = targets};
  if (fused) {
    /* the scratch is not the fused form's: NaN, so a read of it would show */
    memset(scratch, 0xff, 4 * ncell * B->ncube * sizeof(double));
    CHECK_MSG(lte_body_run_host_fused(M, &V) == 0, "the fused form refused %d channels", B->nf);
  } else
    lte_body_run_host(M, &V);
  int any = 0;
  for (size_t r = 0; r < nray; r++) any |= bad[r];
  for (int c = 0; c < B->ncube; c++) /* as the device's slots copy them out */
    if (B->targets)
      memcpy(B->targets[c], targets + c * npix * B->nf, npix * B->nf * sizeof(float));
    else
      memcpy(B->image[c], image + c * npix * B->nf, npix * B->nf * sizeof(double));
  for (size_t a = 0; a < narr; a++) free(cells[a]);
  free(scratch), free(image), free(targets), free(bad);
  return any ? LTE_KERNEL_BAD_INPUT : 0;
}

static int body_solve(const lte_kernel_model *M, const lte_kernel_batch *B) {
  return body_solve_form(M, B, 0);
}
static const lte_kernel body_kernel = {"cuda bodies on the host", "host", body_solve, NULL, NULL};

static int fused_solve(const lte_kernel_model *M, const lte_kernel_batch *B) {
  return body_solve_form(M, B, 1);
}
/* the fused kernel's bodies (lte_kernel_body.h, section 4), as a kernel table */
static const lte_kernel fused_kernel = {"cuda fused bodies on the host", "host", fused_solve, NULL,
                                        NULL};
/* both forms of the device's bodies: every body test runs on each */
static const lte_kernel *const body_forms[] = {&body_kernel, &fused_kernel};
#define NFORMS (int)(sizeof body_forms / sizeof *body_forms)

/* The bodies against the CPU kernel and the literal reference, every case,
 * both arithmetic modes. Same bits as the CPU kernel where the arithmetic is
 * the same: in literal mode (both call glibc's exp and erf and take the
 * direct Z sum) always, in fast mode when the CPU kernel is the portable one
 * (libm per lane, the same Z table); otherwise (AVX-512 libmvec exp/erf)
 * within docs/physics.md's rule of the reference, as every backend. */
static void test_bodies(void) {
  const int same_fast = !strcmp(lte_kernel_cpu.variant, "portable");
  for (int fi = 0; fi < NFORMS; fi++)
  for (int libm = 0; libm < 2; libm++) {
    const lte_kernel *kern = body_forms[fi];
    tally t = {0};
    long long differ = 0, pixels = 0;
    for (size_t ki = 0; ki < sizeof cases / sizeof *cases; ki++) {
      const batch_case *k = &cases[ki];
      batch_data d;
      lte_options o;
      lte_kernel_model m;
      lte_kernel_batch b = case_open(k, &d, libm, 2, LTE_PRECISION_F64, &o, &m);
      CHECK(lte_kernel_cpu.solve(&m, &b) == 0);
      double **cpu = calloc(k->ncube, sizeof(double *));
      for (int c = 0; c < k->ncube; c++) {
        cpu[c] = dalloc(d.np);
        memcpy(cpu[c], d.img[c], d.np * sizeof(double));
      }
      CHECK(kern->solve(&m, &b) == 0);
      for (int c = 0; c < k->ncube; c++) {
        compare_named(kern->name, libm, k, c, &d, libm, &t);
        for (int i = 0; i < d.np; i++, pixels++) {
          if (!memcmp(&cpu[c][i], &d.img[c][i], sizeof(double))) continue;
          if ((libm || same_fast) && differ < 5)
            CHECK_FAIL_("%s vs cpu (%s), libm %d, %s seed %llu cube %d pixel %d: %.17g vs %.17g",
                        kern->name, lte_kernel_cpu.variant, libm, k->grid,
                        (unsigned long long)k->seed, c, i, d.img[c][i], cpu[c][i]);
          differ++;
        }
        free(cpu[c]);
      }
      free(cpu);
      batch_free(k, &d);
    }
    fprintf(stderr, "  %s, %s: worst relative difference %.3g on %d pixels; %d "
            "ill-conditioned of %d; %lld of %lld pixels differ from the cpu kernel (%s) in any bit\n",
            kern->name, libm ? "literal mode" : "fast", t.worst, t.counted, t.ill, t.total, differ,
            pixels, lte_kernel_cpu.variant);
    CHECK(t.counted > 1000 && t.ill < t.total / 4);
    if (libm || same_fast) CHECK(differ == 0);
  }
  /* cold cells: never NaN; bad cells: flagged (the driver's messages are the CPU's) */
  for (int fi = 0; fi < NFORMS; fi++) {
    backend_cold_cells(LTE_BACKEND_CPU, body_forms[fi]);
    backend_bad_cells(LTE_BACKEND_CPU, body_forms[fi]);
  }
}

/* The targets the device makes (lte_kernel_batch.targets, the target
 * body): the bodies' images rounded to float32 in (f, x, y) order, value
 * for value, on every case; pixel (x, y) of channel f at (f nx + x) ny + y
 * of cube c. Fails when the body transposes by the wrong stride or channel. */
static void test_body_targets(void) {
  long long n = 0, differ = 0;
  for (int fi = 0; fi < NFORMS; fi++)
  for (size_t ki = 0; ki < sizeof cases / sizeof *cases; ki++) {
    const lte_kernel *kern = body_forms[fi];
    const batch_case *k = &cases[ki];
    batch_data d;
    batch_make(k, &d);
    lte_options o = case_options(k, NULL, 0, 2);
    lte_kernel_model m;
    lte_kernel_model_init(&m, &L, &o);
    lte_kernel_batch b = kernel_batch(k, &d, &o, 0, k->ncube);
    CHECK(kern->solve(&m, &b) == 0); /* the images into d.img */
    float **tg = calloc(k->ncube, sizeof *tg);
    for (int c = 0; c < k->ncube; c++) tg[c] = malloc(d.np * sizeof(float));
    b.targets = tg;
    b.image = NULL;
    CHECK(kern->solve(&m, &b) == 0);
    const int nx = b.nx, ny = b.ny, nf = b.nf;
    for (int c = 0; c < k->ncube; c++) {
      for (int x = 0; x < nx; x++)
        for (int y = 0; y < ny; y++)
          for (int f = 0; f < nf; f++, n++) {
            const float want = (float)d.img[c][((size_t)x * ny + y) * nf + f];
            const float got = tg[c][((size_t)f * nx + x) * ny + y];
            if (memcmp(&want, &got, sizeof got) && differ++ < 5)
              CHECK_FAIL_("targets by the %s, %s cube %d (x %d, y %d, f %d): %.9g, the image's "
                          "%.9g", kern->name, k->grid, c, x, y, f, got, want);
          }
      free(tg[c]);
    }
    free(tg);
    batch_free(k, &d);
  }
  fprintf(stderr, "  targets by the bodies (both forms): %lld values, %lld differ from the "
          "rounded images\n", n, differ);
  CHECK(n > 6000 && differ == 0);
}

/* The bodies with non-LTE populations (lte_kernel_batch.pop_l/pop_u) and
 * float32 cells: the CPU kernel's bits in literal mode; a bad population
 * is flagged. */
static void test_bodies_pops_form(const lte_kernel *kern);
static void test_bodies_pops(void) {
  for (int fi = 0; fi < NFORMS; fi++) test_bodies_pops_form(body_forms[fi]);
}

/* The populations' cube of these tests: random cells, populations of
 * which some are inverted (pu > (g_u/g_l) pl: chi < 0), so that most rays
 * have masing segments (docs/physics.md, "Masing segments"), and every
 * third ray none;
 * float64 and float32 copies. */
enum { NX = 4, NY = 3, NZ = 21, NC = NX * NY * NZ };
static double pv_[NC], pT_[NC], pn_[NC], ppl_[NC], ppu_[NC];
static float pv32_[NC], pT32_[NC], pn32_[NC], ppl32_[NC], ppu32_[NC];
static void pops_cube(void) {
  cubes_random(77, NX, NY, NZ, pv_, pT_, pn_);
  for (int i = 0; i < NC; i++) {
    ppl_[i] = 0.3 + 0.2 * sin(i * 0.7), ppu_[i] = 0.2 + 0.15 * cos(i * 1.3);
    if (i / NZ % 3 == 2) ppu_[i] = 0.5 * ppl_[i]; /* every third ray: nowhere inverted */
    pv32_[i] = (float)pv_[i], pT32_[i] = (float)pT_[i], pn32_[i] = (float)pn_[i];
    ppl32_[i] = (float)ppl_[i], ppu32_[i] = (float)ppu_[i];
  }
}

/* A batch of the populations' cube (float32 cells or float64), its arrays'
 * pointers held in p; the image into *img. */
typedef struct {
  const void *v, *T, *n, *pl, *pu;
} pops_arrays;
static lte_kernel_batch pops_batch(pops_arrays *p, int f32, const double *f, double **img) {
  p->v = f32 ? (const void *)pv32_ : pv_, p->T = f32 ? (const void *)pT32_ : pT_;
  p->n = f32 ? (const void *)pn32_ : pn_;
  p->pl = f32 ? (const void *)ppl32_ : ppl_, p->pu = f32 ? (const void *)ppu32_ : ppu_;
  lte_kernel_batch k = {.ncube = 1, .nx = NX, .ny = NY, .nz = NZ,
                        .dtype = f32 ? LTE_KERNEL_F32 : LTE_KERNEL_F64, .v = &p->v, .T = &p->T,
                        .n = &p->n, .nf = 7, .freqs = f, .image = img, .threads = 1,
                        .pop_l = &p->pl, .pop_u = &p->pu};
  return k;
}

/* rays of the populations' cube with a masing segment (the sign of
 * B_lu pl - B_ul pu changes between neighbouring cells) */
static int pops_masing_rays(const lte_kernel_model *m) {
  int rays = 0;
  for (int r = 0; r < NX * NY; r++) {
    int mas = 0;
    for (int z = 0; z + 1 < NZ; z++) {
      const double c0 = m->B_lu * ppl_[r * NZ + z] - m->B_ul * ppu_[r * NZ + z];
      const double c1 = m->B_lu * ppl_[r * NZ + z + 1] - m->B_ul * ppu_[r * NZ + z + 1];
      mas |= LTE_SEG_MASING(c0, c1);
    }
    rays += mas;
  }
  return rays;
}

/* A device backend with non-LTE populations, masing rays among them: its
 * images against the CPU kernel's, float64 and float32 cells, within
 * 1e-10 of the image's peak (the device's exp and erf are not glibc's, so
 * not its bits; every term of a masing ray is >= 0 and sums without
 * cancelling, and the LTE-like terms of the others differ as LTE images do,
 * ~1e-12); the float32 path within 1e-5 of the peak from the CPU's
 * float64. Under COEMU_CUDA_SOLVER_FORM=fused (scripts/gpu-check.sh, the
 * CUDA emulator's check) the fused kernel's pass that finds the masing
 * rays before their first tile. */
static void backend_pops(lte_backend be, const lte_kernel *kern) {
  pops_cube();
  double f[FREQGRID_COEMUNET_N], a[NX * NY * 7], b[NX * NY * 7];
  freqgrid_coemunet(L.nu0, f);
  for (int f32 = 0; f32 < 2; f32++) {
    for (int prec = 0; prec < 2; prec++) {
      lte_options o = {.dx = 2e11, .libm = 1,
                       .precision = prec ? LTE_PRECISION_F32 : LTE_PRECISION_F64};
      lte_kernel_model m, m64;
      lte_kernel_model_init(&m, &L, &o);
      o.precision = LTE_PRECISION_F64;
      lte_kernel_model_init(&m64, &L, &o);
      double *pa = a, *pb = b;
      pops_arrays arr;
      lte_kernel_batch k = pops_batch(&arr, f32, f, &pa);
      CHECK(lte_kernel_cpu.solve(&m64, &k) == 0);
      k.image = &pb;
      CHECK_MSG(kern->solve(&m, &k) == 0, "%s: %s", kern->name, ce_err_msg());
      double mx = 0, worst = 0;
      for (int i = 0; i < NX * NY * 7; i++) mx = fmax(mx, fabs(a[i]));
      for (int i = 0; i < NX * NY * 7; i++) worst = fmax(worst, fabs(b[i] - a[i]) / mx);
      const int masing = pops_masing_rays(&m);
      fprintf(stderr, "  %s, non-LTE populations (%d of %d rays masing), cells %s, %s: %.3g of "
              "the peak from the cpu's float64\n", kern->name, masing, NX * NY,
              f32 ? "float32" : "float64", prec ? "float32 path" : "float64", worst);
      CHECK(masing > 0 && masing < NX * NY);
      CHECK_MSG(worst <= (prec ? 1e-5 : 1e-10), "%s, non-LTE populations, cells float32 %d, "
                "precision float32 %d: %.3g of the peak from the cpu", kern->name, f32, prec,
                worst);
    }
  }
}

static void test_bodies_pops_form(const lte_kernel *kern) {
  pops_cube();
  double f[FREQGRID_COEMUNET_N], a[NX * NY * 7], b[NX * NY * 7];
  freqgrid_coemunet(L.nu0, f);
  for (int f32 = 0; f32 < 2; f32++) {
    lte_options o = {.dx = 2e11, .libm = 1};
    lte_kernel_model m;
    lte_kernel_model_init(&m, &L, &o);
    double *pa = a, *pb = b;
    pops_arrays arr;
    lte_kernel_batch k = pops_batch(&arr, f32, f, &pa);
    CHECK(lte_kernel_cpu.solve(&m, &k) == 0);
    k.image = &pb;
    CHECK(kern->solve(&m, &k) == 0);
    CHECK_MSG(!memcmp(a, b, sizeof a), "non-LTE populations, float32 %d: the %s differ from the cpu", f32,
              kern->name);
    { /* the float32 path with these populations (some inverted: chi < 0) */
      double c32[NX * NY * 7], mx = 0, worst = 0;
      double *pc = c32;
      lte_options o32 = o;
      o32.precision = LTE_PRECISION_F32;
      lte_kernel_model m32;
      lte_kernel_model_init(&m32, &L, &o32);
      k.image = &pc;
      CHECK(kern->solve(&m32, &k) == 0);
      { /* the CPU kernel's float32 path, literal mode: the bodies' bits */
        double d32[NX * NY * 7];
        double *pd = d32;
        k.image = &pd;
        CHECK(lte_kernel_cpu.solve(&m32, &k) == 0);
        CHECK_MSG(!memcmp(d32, c32, sizeof d32),
                  "non-LTE populations, float32 cells %d: the cpu kernel's float32 path differs "
                  "from the bodies'", f32);
      }
      k.image = &pb;
      for (int i = 0; i < NX * NY * 7; i++) mx = fmax(mx, fabs(a[i]));
      for (int i = 0; i < NX * NY * 7; i++)
        if (fabs(a[i]) > 1e-12 * mx) worst = fmax(worst, fabs(c32[i] - a[i]) / fabs(a[i]));
      fprintf(stderr, "  float32 bodies, non-LTE populations, float32 cells %d: worst relative "
              "difference %.3g from float64\n", f32, worst);
      CHECK_MSG(worst <= 1e-5, "non-LTE populations, float32 path: %.3g from float64", worst);
    }
    ppu_[NZ + 3] = 1.5, ppu32_[NZ + 3] = 1.5f; /* ray 1 */
    CHECK(kern->solve(&m, &k) == LTE_KERNEL_BAD_INPUT);
    CHECK(isnan(b[7]) && !isnan(b[0]) && b[0] == a[0] && b[14] == a[14]);
    ppu_[NZ + 3] = ppu32_[NZ + 3] = 0.25;
  }
}

/* ---------------------------------------------------------------------- */
/* The float32 path (lte_kernel_model.f32, lte_kernel_body.h): the
 * host-compiled float32 ray bodies against the float64 reference on every
 * batch case above (thin segments, |b1 - b0| < 1e-4 and D < 1e-4 included:
 * the random cubes repeat a quarter of their cells), both Taylor forms,
 * float32 and float64 cells, a background map, |I|. The criterion is
 * docs/physics.md's ("The float32 path"): 1e-5 relative on every pixel that
 * is neither round-off nor ill-conditioned, classified as for float64
 * (|I| <= 1e-12 max|I|: round-off; the reference's noise estimate above
 * 1e-8 |I|: ill-conditioned). The CPU backend's float32 path (the same
 * bodies, OpenMP over rays) and the driver give the same bits. With
 * LTE_BODY_F32_NAIVE (the meson test solver_lte_f32_naive, should_fail) the
 * bodies use the float64 formulas in float32 and this criterion fails. */
#define F32_TOL 1e-5

/* kern (precision float32) against the reference, every case, both cell
 * modes; with cpu_bits, the CPU backend's float32 path and the driver must
 * give kern's bits (kern: the host-compiled bodies). */
static void f32_against_reference(const char *name, const lte_kernel *kern, int cpu_bits) {
  for (int libm = 0; libm < 2; libm++) {
    tally t = {0};
    double worst_all = 0; /* every non-round-off pixel, ill-conditioned ones too */
    int bad = 0;
    for (size_t ki = 0; ki < sizeof cases / sizeof *cases; ki++) {
      const batch_case *k = &cases[ki];
      batch_data d;
      lte_options o;
      lte_kernel_model m;
      lte_kernel_batch b = case_open(k, &d, libm, 2, LTE_PRECISION_F32, &o, &m);
      CHECK(m.f32 == 1);
      CHECK_MSG(kern->solve(&m, &b) == 0, "%s: %s", name, ce_err_msg());
      for (int c = 0; c < k->ncube; c++) {
        const double *img = d.img[c], *ref = d.ref[c], *noise = d.noise[c];
        double mx = 0;
        for (int i = 0; i < d.np; i++) mx = fmax(mx, fabs(ref[i]));
        for (int i = 0; i < d.np; i++) {
          t.total++;
          const ref_lte_class cl = ref_lte_classify(ref[i], noise[i], mx);
          if (cl == REF_LTE_ROUNDOFF) continue;
          double rel = fabs(img[i] - ref[i]) / fabs(ref[i]);
          worst_all = fmax(worst_all, rel);
          if (cl == REF_LTE_ILL) {
            t.ill++;
            continue;
          }
          t.counted++;
          t.worst = fmax(t.worst, rel);
          if (!(rel <= F32_TOL) && bad++ < 5)
            CHECK_FAIL_("float32 %s, libm %d, %s seed %llu cube %d pixel %d: %.9g vs "
                        "reference %.9g (rel %.3g, |I|/max %.3g)",
                        name, libm, k->grid, (unsigned long long)k->seed, c, i, img[i], ref[i],
                        rel, fabs(ref[i]) / mx);
        }
      }
      if (cpu_bits) {
        /* the CPU backend's float32 kernel (16-lane vectors, lte_kernel_cpu.c)
         * in literal mode: the bodies' bits (libm lane by lane); in fast mode
         * (libmvec) it is held to the criterion above by its own run
         * (test_backends). The driver: the CPU backend's bits, both modes. */
        double **cpu = calloc((unsigned)k->ncube, sizeof(double *));
        for (int c = 0; c < k->ncube; c++) {
          cpu[c] = dalloc(d.np);
          memcpy(cpu[c], d.img[c], d.np * sizeof(double));
        }
        CHECK(lte_kernel_cpu.solve(&m, &b) == 0);
        for (int c = 0; c < k->ncube; c++) {
          if (libm)
            CHECK_MSG(!memcmp(cpu[c], d.img[c], d.np * sizeof(double)),
                      "float32, literal mode: the cpu backend's image of cube %d differs from the "
                      "bodies'", c);
          memcpy(cpu[c], d.img[c], d.np * sizeof(double));
        }
        if (!k->f32) {
          CHECK_OK(lte_solve_batch(&L, d.fr, d.nf, k->ncube, k->nx, k->ny, k->nz,
                                   (const double *const *)d.v, (const double *const *)d.T,
                                   (const double *const *)d.n, &o, d.img));
          for (int c = 0; c < k->ncube; c++)
            CHECK_MSG(!memcmp(cpu[c], d.img[c], d.np * sizeof(double)),
                      "float32: the driver's image of cube %d differs from the cpu backend's", c);
        }
        for (int c = 0; c < k->ncube; c++) free(cpu[c]);
        free(cpu);
      }
      batch_free(k, &d);
    }
    fprintf(stderr, "  float32 %s, %s: worst relative difference %.3g on %d pixels (%.3g "
            "with the %d ill-conditioned); %d round-off of %d\n",
            name, libm ? "literal cells" : "fast cells", t.worst, t.counted, worst_all, t.ill,
            t.total - t.counted - t.ill, t.total);
    CHECK(t.counted > 1000 && t.ill < t.total / 4);
  }
}

static void test_bodies_f32(void) {
#ifdef LTE_BODY_F32_NAIVE
  f32_against_reference("bodies (naive formulas)", &body_kernel, 0);
#else
  f32_against_reference("bodies", &body_kernel, 1);
  f32_against_reference("fused bodies", &fused_kernel, 1);
  /* cold cells: never NaN, the same image as with them emptied; 1e-300 K
   * puts b beyond float32's range */
  for (int fi = 0; fi < NFORMS; fi++) {
    backend_cold_cells_p(LTE_BACKEND_CPU, body_forms[fi], LTE_PRECISION_F32, 0.002);
    backend_cold_cells_p(LTE_BACKEND_CPU, body_forms[fi], LTE_PRECISION_F32, 1e-300);
  }
  backend_cold_cells_p(LTE_BACKEND_CPU, &lte_kernel_cpu, LTE_PRECISION_F32, 1e-300);
#endif
}

/* The fused form against the two-launch form, bit for bit (both are the
 * device's code on the host): every case, both arithmetic modes, both
 * precisions; then the shapes the fused form's tiles and groups make
 * awkward: 70 cells a ray (tiles of 32, 32 and 6), 35 rays (groups of 32
 * and 3), 1 channel and LTE_FUSED_MAX_NF channels, and a bad cell in the
 * second group's second tile, whose ray alone is NaN. It fails when a
 * tile's segments go into the wrong partial sum (the two forms then sum in
 * different orders) or a tile's last, shorter row is cut. More channels
 * than a block holds: the fused form refuses them (the device backend takes
 * the two launches then). */
static void fused_vs_two_launch(const char *what, const lte_kernel_model *m, lte_kernel_batch *b,
                                int np, long long *pixels, int want_rc) {
  double **two = calloc(b->ncube, sizeof *two), *const *img = b->image;
  for (int c = 0; c < b->ncube; c++) two[c] = malloc(np * sizeof(double));
  b->image = two;
  CHECK(body_kernel.solve(m, b) == want_rc);
  b->image = img;
  CHECK(fused_kernel.solve(m, b) == want_rc);
  int differ = 0;
  for (int c = 0; c < b->ncube; c++)
    for (int i = 0; i < np; i++, (*pixels)++)
      if (memcmp(&two[c][i], &img[c][i], sizeof(double)) && differ++ < 3)
        CHECK_FAIL_("fused vs two launches, %s: cube %d pixel %d: %.17g vs %.17g", what, c, i,
                    img[c][i], two[c][i]);
  for (int c = 0; c < b->ncube; c++) free(two[c]);
  free(two);
}

static void test_fused_bits(void) {
  long long pixels = 0;
  for (int prec = 0; prec < 2; prec++)
    for (int libm = 0; libm < 2; libm++)
      for (size_t ki = 0; ki < sizeof cases / sizeof *cases; ki++) {
        const batch_case *k = &cases[ki];
        batch_data d;
        lte_options o;
        lte_kernel_model m;
        lte_kernel_batch b = case_open(k, &d, libm, 1, prec ? LTE_PRECISION_F32 : LTE_PRECISION_F64,
                                       &o, &m);
        char what[96];
        snprintf(what, sizeof what, "%s, %s, %s", k->grid, prec ? "float32" : "float64",
                 libm ? "literal" : "fast");
        fused_vs_two_launch(what, &m, &b, d.np, &pixels, 0);
        batch_free(k, &d);
      }
  /* the awkward shapes */
  const char *grids[] = {"0:1:1", "-9300:600:32"};
  for (int gi = 0; gi < 2; gi++)
    for (int prec = 0; prec < 2; prec++) {
      const batch_case k = {grids[gi], 1, 5, 7, 70, 2e11, 0, 0, 0, 0, 0, 0, 11};
      batch_data d;
      lte_options o;
      lte_kernel_model m;
      lte_kernel_batch b =
          case_open(&k, &d, 1, 1, prec ? LTE_PRECISION_F32 : LTE_PRECISION_F64, &o, &m);
      char what[96];
      snprintf(what, sizeof what, "%d channels, 35 rays of 70 cells, %s", d.nf,
               prec ? "float32" : "float64");
      fused_vs_two_launch(what, &m, &b, d.np, &pixels, 0);
      const int ray = 33, z = 40; /* (x 4, y 5): group 2, tile 2 */
      d.T[0][(size_t)ray * 70 + z] = NAN;
      snprintf(what, sizeof what, "%d channels, a bad cell at ray 33 z 40, %s", d.nf,
               prec ? "float32" : "float64");
      fused_vs_two_launch(what, &m, &b, d.np, &pixels, LTE_KERNEL_BAD_INPUT);
      for (int i = 0; i < d.np; i++)
        CHECK_MSG(isnan(d.img[0][i]) == (i / d.nf == ray), "%s: pixel %d (ray %d) %g", what, i,
                  i / d.nf, d.img[0][i]);
      batch_free(&k, &d);
    }
  { /* one channel more than a block holds */
    const batch_case k = {"-9300:600:33", 1, 2, 2, 3, 2e11, 0, 0, 0, 0, 0, 0, 12};
    batch_data d;
    lte_options o;
    lte_kernel_model m;
    (void)case_open(&k, &d, 1, 1, LTE_PRECISION_F64, &o, &m);
    double *sc = dalloc(4 * d.nc), *img = dalloc(d.np);
    int bad[4] = {0};
    lte_body_view V = {.nray = 4, .npix = 4, .nz = 3, .nf = d.nf, .dtype = LTE_KERNEL_F64,
                       .v = d.v[0], .T = d.T[0], .n = d.n[0], .freqs = d.fr,
                       .S = sc, .adx = sc + d.nc, .iw = sc + 2 * d.nc, .shift = sc + 3 * d.nc,
                       .bad = bad, .image = img};
    CHECK(lte_body_run_host_fused(&m, &V) == -1);
    for (int i = 0; i < d.np; i++) CHECK(img[i] == 0.0); /* untouched */
    free(sc), free(img);
    batch_free(&k, &d);
  }
  fprintf(stderr, "  fused form vs two launches: %lld pixels compared bit for bit\n", pixels);
  CHECK(pixels > 15000);
}

/* The form choice of COEMU_CUDA_SOLVER_FORM=auto: the fastest of the
 * timed forms, the first of equals; the cache (lte_form_find / _put): a
 * shape differs from another in any one field of its key; a shape put is
 * found with its form; past LTE_FORM_SHAPES the oldest goes first and the
 * others stay. Fails when a field is left out of the comparison or the
 * replacement overwrites the newest. The variable's words are the forms'
 * names in order, auto last. */
static void test_form_cache(void) {
  const float t1[3] = {2.0f, 1.0f, 3.0f}, t2[3] = {1.0f, 1.0f, 0.5f}, t3[3] = {1.0f, 1.0f, 1.0f};
  CHECK(lte_form_fastest(t1, 3) == LTE_FORM_TWO_SMALL && lte_form_fastest(t2, 3) == LTE_FORM_FUSED);
  CHECK(lte_form_fastest(t2, 2) == LTE_FORM_TWO && lte_form_fastest(t3, 3) == LTE_FORM_TWO);
  const char *const *names = lte_form_names();
  CHECK(!strcmp(names[LTE_FORM_TWO], "two") && !strcmp(names[LTE_FORM_TWO_SMALL], "two-small") &&
        !strcmp(names[LTE_FORM_FUSED], "fused") && !strcmp(names[LTE_FORM_AUTO], "auto"));
  lte_form_cache c;
  memset(&c, 0, sizeof c);
  const lte_form_key k0 = {4096, 64, 7, 0, LTE_KERNEL_F64, 0};
  int form = -1;
  CHECK(!lte_form_find(&c, &k0, &form) && form == -1);
  lte_form_put(&c, &k0, 1);
  CHECK(lte_form_find(&c, &k0, &form) && form == 1);
  for (int field = 0; field < 6; field++) { /* each field alone makes another shape */
    lte_form_key k = k0;
    if (field == 0) k.npix++;
    if (field == 1) k.nz++;
    if (field == 2) k.nf++;
    if (field == 3) k.f32 = 1;
    if (field == 4) k.dtype = LTE_KERNEL_F32;
    if (field == 5) k.pops = 1;
    CHECK_MSG(!lte_form_find(&c, &k, &form), "field %d ignored", field);
  }
  /* fill: shapes npix 1 .. LTE_FORM_SHAPES - 1 beside k0, form npix % 2 */
  for (int i = 1; i < LTE_FORM_SHAPES; i++) {
    lte_form_key k = k0;
    k.npix = i;
    lte_form_put(&c, &k, i % 2);
  }
  CHECK(c.n == LTE_FORM_SHAPES);
  lte_form_key k9 = k0;
  k9.npix = 999;
  lte_form_put(&c, &k9, 0); /* replaces k0, the oldest */
  CHECK(!lte_form_find(&c, &k0, &form));
  CHECK(lte_form_find(&c, &k9, &form) && form == 0);
  for (int i = 1; i < LTE_FORM_SHAPES; i++) {
    lte_form_key k = k0;
    k.npix = i;
    CHECK_MSG(lte_form_find(&c, &k, &form) && form == i % 2, "shape %d lost", i);
  }
  lte_form_put(&c, &k0, 1); /* then the next oldest (npix 1) */
  lte_form_key k1 = k0;
  k1.npix = 1;
  CHECK(!lte_form_find(&c, &k1, &form) && lte_form_find(&c, &k9, &form));
}

/* Asking for a backend that is not built (or does not exist) is an error. */
static void test_backend_not_built(void) {
  double v[4] = {0}, T[4] = {50, 50, 50, 50}, n[4] = {1e8, 1e8, 1e8, 1e8}, f = L.nu0, img[1];
  lte_options o = {.dx = 1e11};
  CHECK(!strcmp(lte_backend_name(LTE_BACKEND_CPU), "cpu"));
  CHECK(!strcmp(lte_backend_name(LTE_BACKEND_CUDA), "cuda"));
  CHECK(lte_backend_name(LTE_BACKEND_COUNT) == NULL && lte_kernel_get(LTE_BACKEND_COUNT) == NULL);
  int missing = 0;
  for (int i = 0; i < LTE_BACKEND_COUNT; i++) {
    o.backend = (lte_backend)i;
    if (lte_kernel_get(o.backend)) {
      if (lte_backend_open(o.backend, 0, NULL, 0) == 0)
        CHECK_OK(lte_solve_cube(&L, &f, 1, 1, 1, 4, v, T, n, &o, img));
      else /* built, but no device here */
        CHECK_ERR(lte_solve_cube(&L, &f, 1, 1, 1, 4, v, T, n, &o, img), "no CUDA device");
      continue;
    }
    missing++;
    char want[128];
    snprintf(want, sizeof want, "solver backend '%s' is not built into this coemu (built: cpu",
             lte_backend_name(o.backend));
    CHECK_ERR(lte_solve_cube(&L, &f, 1, 1, 1, 4, v, T, n, &o, img), want);
    const float v32[4] = {0}, T32[4] = {50, 50, 50, 50}, n32[4] = {1e8, 1e8, 1e8, 1e8};
    CHECK_ERR(lte_solve_cube_f32(&L, &f, 1, 1, 1, 4, v32, T32, n32, &o, img), want);
  }
  fprintf(stderr, "  %d of %d backends not built into this coemu\n", missing, LTE_BACKEND_COUNT);
#ifndef COEMU_HAVE_CUDA
  CHECK(missing >= 1 && lte_kernel_get(LTE_BACKEND_CUDA) == NULL);
#endif
  o.backend = LTE_BACKEND_COUNT;
  char want[64];
  snprintf(want, sizeof want, "LTE solver: backend %d does not exist", LTE_BACKEND_COUNT);
  CHECK_ERR(lte_solve_cube(&L, &f, 1, 1, 1, 4, v, T, n, &o, img), want);
}

/* lte_body_group: every (ray, j) of nray x inner exactly once, for groups
 * that divide nray and for a shorter last group; in the grouped order a run
 * of LTE_BODY_RAY_GROUP threads is consecutive rays at one j */
static void test_body_group(void) {
  static const long long nrays[] = {1, 31, 32, 33, 189, 1000};
  static const long long inners[] = {1, 7, 64};
  for (size_t a = 0; a < sizeof nrays / sizeof *nrays; a++)
    for (size_t b = 0; b < sizeof inners / sizeof *inners; b++) {
      const long long R = nrays[a], J = inners[b];
      unsigned char *seen = calloc((size_t)(R * J), 1);
      long long bad = 0;
      for (int cells = 0; cells < 2; cells++) {
        memset(seen, 0, (size_t)(R * J));
        for (long long t = 0; t < R * J; t++) {
          long long ray;
          int j;
          lte_body_group(t, R, J, cells, &ray, &j);
          if (ray < 0 || ray >= R || j < 0 || j >= J || seen[ray * J + j]++) {
            bad++;
            continue;
          }
#if LTE_BODY_RAY_GROUP > 0
          if (t % LTE_BODY_RAY_GROUP && R % LTE_BODY_RAY_GROUP == 0) {
            long long r0;
            int j0;
            lte_body_group(t - 1, R, J, cells, &r0, &j0);
            bad += !(r0 + 1 == ray && j0 == j);
          }
#endif
        }
      }
      if (bad) CHECK_FAIL_("lte_body_group, %lld rays x %lld: %lld threads misplaced", R, J, bad);
      free(seen);
    }
}

/* lte_body_chunk_cubes, the device backend's chunk rule: the H200's
 * figures (132 SMs x 2048 threads; a 64^2 x 7 cube is 28,672 ray threads,
 * so a wave is 10 cubes), then its bounds over many batches */
static void test_chunk_cubes(void) {
  const long long h200 = 132LL * 2048, cube = 64LL * 64 * 7, big = 1000000;
  CHECK(lte_body_chunk_cubes(64, 2, cube, h200, big, 0) == 10); /* a wave, 7 chunks (was 32) */
  CHECK(lte_body_chunk_cubes(256, 2, cube, h200, big, 0) == 32); /* an eighth */
  CHECK(lte_body_chunk_cubes(16, 2, cube, h200, big, 0) == 8);   /* half: two chunks */
  CHECK(lte_body_chunk_cubes(3, 2, cube, h200, big, 0) == 2);
  CHECK(lte_body_chunk_cubes(1, 2, cube, h200, big, 0) == 1);
  CHECK(lte_body_chunk_cubes(256, 2, cube, h200, 5, 0) == 5);    /* the memory budget */
  CHECK(lte_body_chunk_cubes(64, 2, cube, h200, big, 1) == 1);   /* COEMU_CUDA_SOLVER_CHUNK */
  CHECK(lte_body_chunk_cubes(64, 2, cube, h200, big, 32) == 32); /* the old rule's chunks */
  CHECK(lte_body_chunk_cubes(64, 2, cube, h200, big, 100) == 64);
  CHECK(lte_body_chunk_cubes(64, 2, cube, h200, 7, 100) == 7);
  CHECK(lte_body_chunk_cubes(64, 2, cube, 0, big, 0) == 8); /* no device figure: an eighth */
  long long bad = 0;
  static const long long tpc[] = {1, 28672, 1000000000LL};
  static const long long caps[] = {1, 3, 1000};
  for (int n = 1; n <= 300; n++)
    for (size_t a = 0; a < 3; a++)
      for (size_t b = 0; b < 3; b++) {
        const int c = lte_body_chunk_cubes(n, 2, tpc[a], h200, caps[b], 0);
        const long long fill = (h200 + tpc[a] - 1) / tpc[a], half = (n + 1) / 2;
        const long long eighth = (n + 7) / 8, chunks = (n + c - 1) / c;
        long long want = eighth > fill ? eighth : fill; /* the rule, bounded below */
        if (want > half) want = half;
        if (want > caps[b]) want = caps[b];
        bad += c < 1 || c > n || c > caps[b] || c != (want < 1 ? 1 : want);
        bad += n >= 2 && chunks < 2; /* both streams get work */
      }
  if (bad) CHECK_FAIL_("lte_body_chunk_cubes: %lld of the rule's bounds broken", bad);
}

int main(void) {
  if (test_co_line(&co, &L) < 0) return 1;
#ifdef LTE_BODY_F32_NAIVE
  RUN(test_bodies_f32);
  (void)test_backends, (void)test_bodies, (void)test_bodies_pops, (void)test_backend_not_built;
  (void)test_body_targets, (void)test_body_group, (void)test_chunk_cubes, (void)test_fused_bits;
  (void)test_form_cache;
#else
  RUN(test_body_group);
  RUN(test_chunk_cubes);
  RUN(test_backends);
  RUN(test_bodies);
  RUN(test_fused_bits);
  RUN(test_form_cache);
  RUN(test_body_targets);
  RUN(test_bodies_pops);
  RUN(test_bodies_f32);
  RUN(test_backend_not_built);
#endif
  lte_line_free(&L);
  lamda_free(&co);
  return check_report();
}
