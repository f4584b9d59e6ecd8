/* gpu_bench.c - the benchmark of scripts/gpu-check.sh, built without meson,
 * MPI, HDF5 or ZeroMQ (solver/ and common/error, fsutil, cli only): the LTE
 * solver on random 64^3 cubes (solver/cubes.c, as `coemu bench solver`) at
 * the 7 COEmuNet channels, in batches, on every backend this binary has
 * that can run here. One line per figure:
 *   gpu_bench device cuda: cuda device 0 of 1: NVIDIA H200 (...)
 *   gpu_bench lte64x7 backend=cuda cells=f64 batch=64 cubes_per_s 21234 ms_per_batch 3.01
 *   gpu_bench lte64x7 backend=cuda cells=f32 batch=64 cubes_per_s ...
 *   gpu_bench lte64x7 backend=cuda cells=f32 precision=float32 batch=64 cubes_per_s ...
 *   gpu_bench lte64x7 backend=cpu cells=f64 batch=8 threads=16 cubes_per_s ...
 *   gpu_bench lte64x7 cuda_vs_cpu max_rel 3.1e-12 pixels 28672 (informational; the
 *     pass/fail parity is test_lte_backends')
 * and for a device, each mode also with the cubes already on the device
 * (`resident`: the images into rows that are one page-locked block, as the
 * pipeline's, which the backend copies straight into; `resident
 * images=pageable`: into malloc'd rows through its staging buffer, as the
 * second H200 run measured), then with the chunk sizes of --chunks
 * (COEMU_CUDA_SOLVER_CHUNK, `resident chunk=N`), and in each kernel form
 * (COEMU_CUDA_SOLVER_FORM: `resident form=two`, a cell kernel then a ray
 * kernel; `form=two-small`, the ray kernel in blocks of half the threads;
 * `form=fused`, one launch with the cells through shared memory,
 * lte_kernel_body.h; the default times them once per shape and takes the
 * fastest, saying so on stderr). Every resident image must
 * equal the same mode's image from host cells bit for bit (same device,
 * same kernels, same cells): a `resident_bits` line says so, and a
 * difference fails the run.
 * cells=f32 is float32 input cells (widened exactly; float64 arithmetic),
 * the layout of a dataset's stored inputs: half the bytes over the bus;
 * precision=float32 is the float32 path (docs/physics.md) on float32 cells,
 * with an informational line of its difference from float64 on cube 0
 * (f32_vs_f64; the pass/fail criterion is test_lte_backends').
 * Each figure: the median of --reps timed calls after one warm-up call.
 *
 *   gpu_bench [--batch B] [--reps R] [--size N] [--cpu-batch B] [--lamda FILE]
 *             [--chunks N,N,...]
 */
#define _POSIX_C_SOURCE 200809L /* setenv, strtok_r */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/error.h"
#include "solver/cubes.h"
#include "solver/freqgrid.h"
#include "solver/lamda.h"
#include "solver/lte.h"
#ifdef COEMU_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

typedef struct {
  int N, nb;
  double **v, **T, **n, **img;
  float **v32, **T32, **n32;
} cubes;

/* The batch's cells copied to the device once (as the device sampler leaves
 * them), for the solver's resident figure: what the kernels sustain when no
 * cube crosses the bus. 0, or -1 where there is no CUDA runtime or memory. */
typedef struct {
  void **v, **T, **n;
} resident_cells;

static void resident_free(resident_cells *r, int nb) {
#ifdef COEMU_HAVE_CUDA
  for (int b = 0; b < nb && r->v; b++) cudaFree(r->v[b]), cudaFree(r->T[b]), cudaFree(r->n[b]);
#else
  (void)nb;
#endif
  free(r->v), free(r->T), free(r->n);
  memset(r, 0, sizeof *r);
}

static int resident_upload(resident_cells *r, const cubes *c, int nb, int f32) {
  memset(r, 0, sizeof *r);
#ifdef COEMU_HAVE_CUDA
  const size_t bytes = (size_t)c->N * c->N * c->N * (f32 ? 4 : 8);
  r->v = calloc(nb, sizeof(void *)), r->T = calloc(nb, sizeof(void *));
  r->n = calloc(nb, sizeof(void *));
  if (!r->v || !r->T || !r->n) return -1;
  for (int b = 0; b < nb; b++) {
    const void *src[3] = {f32 ? (void *)c->v32[b] : (void *)c->v[b],
                          f32 ? (void *)c->T32[b] : (void *)c->T[b],
                          f32 ? (void *)c->n32[b] : (void *)c->n[b]};
    void **dst[3] = {&r->v[b], &r->T[b], &r->n[b]};
    for (int a = 0; a < 3; a++)
      if (cudaMalloc(dst[a], bytes) != cudaSuccess ||
          cudaMemcpy(*dst[a], src[a], bytes, cudaMemcpyHostToDevice) != cudaSuccess) {
        ce_err("gpu_bench: cannot hold %d cubes on the device", nb);
        resident_free(r, nb);
        return -1;
      }
  }
  return 0;
#else
  (void)c, (void)nb, (void)f32;
  return ce_err("gpu_bench: resident cubes need the CUDA runtime");
#endif
}

/* nb image rows of np doubles, one page-locked block (as the pipeline's
 * rows); NULL without the CUDA runtime or the memory */
static double **pinned_rows(int nb, size_t np) {
#ifdef COEMU_HAVE_CUDA
  double *block = NULL, **rows = calloc(nb, sizeof *rows);
  if (!rows || cudaHostAlloc((void **)&block, (size_t)nb * np * sizeof(double),
                             cudaHostAllocDefault) != cudaSuccess) {
    free(rows);
    return NULL;
  }
  for (int b = 0; b < nb; b++) rows[b] = block + (size_t)b * np;
  return rows;
#else
  (void)nb, (void)np;
  return NULL;
#endif
}
static void pinned_rows_free(double **rows) {
#ifdef COEMU_HAVE_CUDA
  if (rows) cudaFreeHost(rows[0]);
#endif
  free(rows);
}

/* median seconds per call of reps calls on nb cubes; -1 on error. res: the
 * cubes are already on the device (solve_dev), else host memory (solve).
 * img: the image rows (NULL: c->img) */
static double timed(const lte_line *L, const double *f, const cubes *c, int nb, int f32,
                    lte_backend be, lte_precision prec, int reps, const resident_cells *res,
                    double *const *img) {
  lte_options o = {.dx = 2 * CUBES_AGB_HALF_WIDTH / c->N, .take_abs = 1, .backend = be,
                   .precision = prec};
  lte_kernel_model m;
  lte_kernel_model_init(&m, L, &o);
  const lte_kernel *k = lte_kernel_get(be);
  lte_kernel_batch b = {.ncube = nb, .nx = c->N, .ny = c->N, .nz = c->N,
                        .dtype = f32 ? LTE_KERNEL_F32 : LTE_KERNEL_F64,
                        .v = f32 ? (const void *const *)c->v32 : (const void *const *)c->v,
                        .T = f32 ? (const void *const *)c->T32 : (const void *const *)c->T,
                        .n = f32 ? (const void *const *)c->n32 : (const void *const *)c->n,
                        .nf = 7, .freqs = f, .image = img ? img : c->img};
  int (*solve)(const lte_kernel_model *, const lte_kernel_batch *) = k->solve;
  if (res) {
    if (!k->solve_dev) return ce_err("gpu_bench: backend %s takes no device cubes", k->name);
    solve = k->solve_dev;
    b.v = (const void *const *)res->v, b.T = (const void *const *)res->T;
    b.n = (const void *const *)res->n;
  }
  double *t = malloc(sizeof(double) * reps);
  if (solve(&m, &b) != 0) { /* warm-up: buffers, tables */
    free(t);
    return -1;
  }
  for (int r = 0; r < reps; r++) {
    double t0 = ce_now_s();
    if (solve(&m, &b) != 0) {
      free(t);
      return -1;
    }
    t[r] = ce_now_s() - t0;
  }
  qsort(t, reps, sizeof *t, ce_cmp_double);
  double med = t[reps / 2];
  free(t);
  return med;
}

/* the same cubes already on the device: the figures of the header's
 * `resident` lines, each set of images checked against c->img (this mode's
 * images from host cells) bit for bit. -1 when one failed or differed. */
static int resident(const lte_line *L, const double *f, const cubes *c, int batch, int f32,
                    lte_backend be, lte_precision prec, int reps, const char *chunks,
                    const char *pl) {
  const lte_kernel *k = lte_kernel_get(be);
  const size_t np = (size_t)c->N * c->N * 7;
  const int N = c->N;
  const char *cells = f32 ? "f32" : "f64";
  resident_cells res;
  double **pin = pinned_rows(batch, np), **pg = calloc(batch, sizeof *pg);
  int rc = 0, ok = pin && pg;
  for (int b = 0; ok && b < batch; b++) ok = (pg[b] = malloc(np * 8)) != NULL;
  if (!ok || resident_upload(&res, c, batch, f32) < 0) {
    printf("gpu_bench lte%dx7 backend=%s resident failed: %s\n", N, k->name,
           ok ? ce_err_msg() : "no page-locked or host memory for the image rows");
    rc = -1;
    goto done;
  }
  /* "0": the backend's own chunks and kernel form (then also into pageable
   * rows); "two", "two-small", "fused": the same in each kernel form
   * (COEMU_CUDA_SOLVER_FORM; the default, auto, times them once per shape
   * and says which it took on stderr); then one line per chunk size of
   * --chunks (COEMU_CUDA_SOLVER_CHUNK). COEMU_CUDA_SOLVER_FORM as main set
   * it (auto, or the caller's) is put back after each form's lines. */
  const char *form_env = getenv("COEMU_CUDA_SOLVER_FORM");
  char list[256], *save = NULL, form_was[64];
  snprintf(form_was, sizeof form_was, "%s", form_env ? form_env : "auto");
  snprintf(list, sizeof list, "0,two,two-small,fused%s%s", *chunks ? "," : "", chunks);
  for (char *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    const int own = !strcmp(tok, "0"), form = !strncmp(tok, "two", 3) || !strcmp(tok, "fused");
    char label[48] = "";
    setenv("COEMU_CUDA_SOLVER_FORM", form_was, 1);
    if (own)
      unsetenv("COEMU_CUDA_SOLVER_CHUNK");
    else if (form) {
      unsetenv("COEMU_CUDA_SOLVER_CHUNK");
      setenv("COEMU_CUDA_SOLVER_FORM", tok, 1);
      snprintf(label, sizeof label, " form=%.30s", tok);
    } else {
      setenv("COEMU_CUDA_SOLVER_CHUNK", tok, 1);
      snprintf(label, sizeof label, " chunk=%.30s", tok);
    }
    for (int pageable = 0; pageable < 1 + own; pageable++) {
      double *const *img = pageable ? pg : pin;
      for (int b = 0; b < batch; b++) memset(img[b], 0xff, np * 8); /* NaN: a row not written differs */
      double sr = timed(L, f, c, batch, f32, be, prec, reps, &res, img);
      const char *how = pageable ? " images=pageable" : "";
      if (sr < 0) {
        printf("gpu_bench lte%dx7 backend=%s cells=%s%s resident%s%s failed: %s\n", N, k->name,
               cells, pl, label, how, ce_err_msg());
        rc = -1;
        continue;
      }
      printf("gpu_bench lte%dx7 backend=%s cells=%s%s resident%s%s batch=%d cubes_per_s %.1f "
             "ms_per_batch %.3f (cubes on the device: no cells over the bus)\n",
             N, k->name, cells, pl, label, how, batch, batch / sr, sr * 1e3);
      int differ = 0;
      for (int b = 0; b < batch; b++) differ += memcmp(img[b], c->img[b], np * 8) != 0;
      printf("gpu_bench lte%dx7 backend=%s cells=%s%s resident%s%s resident_bits %s: %d of %d "
             "images differ from those of host cells\n",
             N, k->name, cells, pl, label, how, differ ? "FAIL" : "ok", differ, batch);
      if (differ) rc = -1;
      fflush(stdout);
    }
  }
  unsetenv("COEMU_CUDA_SOLVER_CHUNK");
  setenv("COEMU_CUDA_SOLVER_FORM", form_was, 1);
  resident_free(&res, batch);
done:
  pinned_rows_free(pin);
  for (int b = 0; pg && b < batch; b++) free(pg[b]);
  free(pg);
  return rc;
}

int main(int argc, char **argv) {
  int nb = 64, reps = 5, N = 64, cpu_nb = 8;
  const char *chunks = "4,16,32";
  const char *lamda = COEMU_DEFAULT_LAMDA_CO;
  for (int i = 1; i < argc; i++) {
    if (i + 1 < argc && !strcmp(argv[i], "--batch")) nb = atoi(argv[++i]);
    else if (i + 1 < argc && !strcmp(argv[i], "--reps")) reps = atoi(argv[++i]);
    else if (i + 1 < argc && !strcmp(argv[i], "--size")) N = atoi(argv[++i]);
    else if (i + 1 < argc && !strcmp(argv[i], "--cpu-batch")) cpu_nb = atoi(argv[++i]);
    else if (i + 1 < argc && !strcmp(argv[i], "--lamda")) lamda = argv[++i];
    else if (i + 1 < argc && !strcmp(argv[i], "--chunks")) chunks = argv[++i];
    else {
      fprintf(stderr, "usage: gpu_bench [--batch B] [--reps R] [--size N] [--cpu-batch B] "
                      "[--lamda FILE] [--chunks N,N,...]\n");
      return 2;
    }
  }
  if (nb < 1 || reps < 1 || N < 2 || N > 512 || cpu_nb < 1) {
    fprintf(stderr, "gpu_bench: --batch, --reps, --cpu-batch >= 1, --size 2..512\n");
    return 2;
  }
  if (cpu_nb > nb) cpu_nb = nb;
  /* the solver's kernel form: the default (auto), set explicitly so that
   * the device backend says on stderr which it took and why */
  if (!getenv("COEMU_CUDA_SOLVER_FORM")) setenv("COEMU_CUDA_SOLVER_FORM", "auto", 1);
  lamda_molecule mol;
  lte_line L;
  if (lamda_read(lamda, &mol) < 0 || lte_line_init(&L, &mol, 2, 28.0) < 0) {
    fprintf(stderr, "gpu_bench: %s\n", ce_err_msg());
    return 1;
  }
  double f[7];
  freqgrid_coemunet(L.nu0, f);
  cubes c = {.N = N, .nb = nb};
  size_t nc = (size_t)N * N * N, np = (size_t)N * N * 7;
  double ***dd[] = {&c.v, &c.T, &c.n, &c.img};
  for (int i = 0; i < 4; i++) *dd[i] = calloc(nb, sizeof(double *));
  float ***ff[] = {&c.v32, &c.T32, &c.n32};
  for (int i = 0; i < 3; i++) *ff[i] = calloc(nb, sizeof(float *));
  for (int b = 0; b < nb; b++) {
    c.v[b] = malloc(nc * 8), c.T[b] = malloc(nc * 8), c.n[b] = malloc(nc * 8);
    c.img[b] = malloc(np * 8);
    c.v32[b] = malloc(nc * 4), c.T32[b] = malloc(nc * 4), c.n32[b] = malloc(nc * 4);
    if (!c.v[b] || !c.T[b] || !c.n[b] || !c.img[b] || !c.v32[b] || !c.T32[b] || !c.n32[b]) {
      fprintf(stderr, "gpu_bench: out of host memory for %d cubes\n", nb);
      return 1;
    }
    cubes_random(1000 + b, N, N, N, c.v[b], c.T[b], c.n[b]);
    for (size_t i = 0; i < nc; i++)
      c.v32[b][i] = (float)c.v[b][i], c.T32[b][i] = (float)c.T[b][i], c.n32[b][i] = (float)c.n[b][i];
  }
  int rc = 0, ran_device = 0;
  double *cpu_img = malloc(np * 8), *f64_img = malloc(np * 8);
  for (int i = LTE_BACKEND_COUNT - 1; i >= 0; i--) {
    lte_backend be = (lte_backend)i;
    const lte_kernel *k = lte_kernel_get(be);
    if (!k) continue;
    char desc[320];
    if (lte_backend_open(be, 0, desc, sizeof desc) < 0) {
      printf("gpu_bench device %s: cannot run here: %s\n", k->name, ce_err_msg());
      rc = 1;
      continue;
    }
    printf("gpu_bench device %s: %s\n", k->name, desc);
    int batch = be == LTE_BACKEND_CPU ? cpu_nb : nb;
    /* f64 cells, f32 cells (float64 arithmetic), then the float32 path */
    for (int mode = 0; mode < 3; mode++) {
      const int f32 = mode >= 1;
      const lte_precision prec = mode == 2 ? LTE_PRECISION_F32 : LTE_PRECISION_F64;
      double s = timed(&L, f, &c, batch, f32, be, prec, reps, NULL, NULL);
      if (s < 0) {
        printf("gpu_bench lte%dx7 backend=%s failed: %s\n", N, k->name, ce_err_msg());
        rc = 1;
        break;
      }
      printf("gpu_bench lte%dx7 backend=%s cells=%s%s batch=%d", N, k->name, f32 ? "f32" : "f64",
             mode == 2 ? " precision=float32" : "", batch);
      if (be == LTE_BACKEND_CPU) printf(" threads=%d", omp_get_max_threads());
      printf(" cubes_per_s %.1f ms_per_batch %.3f\n", batch / s, s * 1e3);
      fflush(stdout);
      if (be != LTE_BACKEND_CPU && resident(&L, f, &c, batch, f32, be, prec, reps, chunks,
                                            mode == 2 ? " precision=float32" : "") < 0)
        rc = 1;
      if (mode == 1) { /* this backend's float64 image of cube 0, f32 cells */
        memcpy(f64_img, c.img[0], np * 8);
        if (be != LTE_BACKEND_CPU) memcpy(cpu_img, c.img[0], np * 8);
      }
      if (mode == 2) {
        double worst = 0, mx = 0;
        size_t counted = 0;
        for (size_t i = 0; i < np; i++) mx = fmax(mx, fabs(f64_img[i]));
        for (size_t i = 0; i < np; i++) {
          if (fabs(f64_img[i]) <= 1e-12 * mx) continue;
          counted++;
          worst = fmax(worst, fabs(c.img[0][i] - f64_img[i]) / fabs(f64_img[i]));
        }
        printf("gpu_bench lte%dx7 backend=%s f32_vs_f64 max_rel %.3g pixels %zu (informational: "
               "every pixel above round-off, ill-conditioned ones included)\n",
               N, k->name, worst, counted);
        memcpy(c.img[0], f64_img, np * 8); /* the cuda_vs_cpu line compares float64 */
      }
    }
    if (be != LTE_BACKEND_CPU) {
      ran_device = 1; /* cpu_img: the device's float64 image of cube 0 (f32 cells) */
    } else if (ran_device) {
      double worst = 0, mx = 0;
      for (size_t i = 0; i < np; i++) mx = fmax(mx, fabs(c.img[0][i]));
      size_t counted = 0;
      for (size_t i = 0; i < np; i++) {
        if (fabs(c.img[0][i]) <= 1e-12 * mx) continue;
        counted++;
        worst = fmax(worst, fabs(cpu_img[i] - c.img[0][i]) / fabs(c.img[0][i]));
      }
      printf("gpu_bench lte%dx7 cuda_vs_cpu max_rel %.3g pixels %zu (informational: every pixel "
             "above round-off, ill-conditioned ones included; the pass/fail parity is "
             "test_lte_backends')\n", N, worst, counted);
    }
  }
  for (int b = 0; b < nb; b++) {
    free(c.v[b]), free(c.T[b]), free(c.n[b]), free(c.img[b]);
    free(c.v32[b]), free(c.T32[b]), free(c.n32[b]);
  }
  free(c.v), free(c.T), free(c.n), free(c.img), free(c.v32), free(c.T32), free(c.n32);
  free(cpu_img), free(f64_img);
  lte_line_free(&L);
  lamda_free(&mol);
  return rc;
}
