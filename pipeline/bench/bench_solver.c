/* bench_solver.c - `coemu bench solver`: milliseconds per 64^3 cube x 7
 * COEmuNet channels of the exact LTE imager, on one thread and on all
 * threads, for a random cube with realistic ranges (T 10..3000 K,
 * n 1e4..1e13 m^-3, v_z within +-10 km/s), or with --cubes example the
 * built-in AGB wind with a spiral shell (solver/cubes.h: a model's smooth
 * wings, where the far-wing arithmetic dominates; docs/benchmarks.md,
 * "Subnormals"). Each figure is the median of
 * --reps timed runs after one warm-up. With --device cuda: cubes per second
 * of batches of --batch cubes on the GPU (copies included), instead, with
 * the kernel form's choice on stderr (COEMU_CUDA_SOLVER_FORM, docs/physics.md).
 * --precision float32 times the float32 path (docs/physics.md). */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/cli.h"
#include "common/error.h"
#include "pipeline/bench/benches.h"
#include "pipeline/dataset/cube_file.h"
#include "solver/cubes.h"
#include "solver/freqgrid.h"
#include "solver/lamda.h"
#include "solver/lte.h"

static double clock_ms(clockid_t id) {
  struct timespec t;
  clock_gettime(id, &t);
  return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
}

/* Median wall-clock ms per cube over reps runs of a batch of ncube cubes;
 * *cpu gets the median CPU time of the process per cube (on a machine
 * shared with other work, CPU time / threads is the better speed figure). */
static double time_solve(double *cpu, double *best, const lte_line *L, const double *f, int N,
                         double dx, int ncube,
                         const double *const *v, const double *const *T, const double *const *n,
                         double *const *img, int threads, int reps, lte_backend be,
                         lte_precision prec) {
  lte_options o = {.dx = dx, .take_abs = 1, .threads = threads,
                   .backend = be, .precision = prec};
  double *ms = malloc(sizeof(double) * reps), *cms = malloc(sizeof(double) * reps);
  if (lte_solve_batch(L, f, 7, ncube, N, N, N, v, T, n, &o, img) < 0) { /* warm-up */
    free(ms);
    free(cms);
    return -1;
  }
  for (int r = 0; r < reps; r++) {
    double t0 = clock_ms(CLOCK_MONOTONIC), c0 = clock_ms(CLOCK_PROCESS_CPUTIME_ID);
    if (lte_solve_batch(L, f, 7, ncube, N, N, N, v, T, n, &o, img) < 0) {
      free(ms);
      free(cms);
      return -1;
    }
    ms[r] = (clock_ms(CLOCK_MONOTONIC) - t0) / ncube;
    cms[r] = (clock_ms(CLOCK_PROCESS_CPUTIME_ID) - c0) / ncube;
  }
  qsort(ms, reps, sizeof *ms, ce_cmp_double);
  qsort(cms, reps, sizeof *cms, ce_cmp_double);
  double med = ms[reps / 2];
  *cpu = cms[reps / 2];
  *best = ms[0];
  free(ms);
  free(cms);
  return med;
}

/* The comma-separated HDF5 files of list (coemu sample --h5's) into
 * *out[*n]: cubes of one edge and one spacing (their attribute dx). -1 with
 * an error naming the file; nothing to free then. */
static int read_cube_files(const char *list, cube_file **out, int *n) {
  *out = NULL, *n = 0;
  char *copy = strdup(list);
  if (!copy) return ce_err("out of memory");
  int rc = 0;
  cube_file *cf = NULL;
  for (char *save = NULL, *p = strtok_r(copy, ",", &save); p && rc == 0;
       p = strtok_r(NULL, ",", &save)) {
    cube_file *g = realloc(cf, sizeof *cf * (size_t)(*n + 1));
    if (!g) {
      rc = ce_err("out of memory");
      break;
    }
    cf = g;
    cube_file *c = memset(&cf[(*n)++], 0, sizeof *cf);
    if (cube_file_read_h5(p, c) < 0) rc = -1;
    else if (c->nx != c->ny || c->ny != c->nz)
      rc = ce_err("%s: %d x %d x %d cells, expected a cube (N^3)", p, c->nx, c->ny, c->nz);
    else if (isnan(c->dx))
      rc = ce_err("%s: no attribute dx (the cell spacing in m, as coemu sample --h5 writes)", p);
    else if (c->nx != cf[0].nx || c->dx != cf[0].dx)
      rc = ce_err("%s: %d^3 cells of %g m, but the first file has %d^3 of %g m", p, c->nx, c->dx,
                  cf[0].nx, cf[0].dx);
  }
  free(copy);
  if (rc == 0 && !*n) rc = ce_err("--cubes %s: no file", list);
  if (rc < 0) {
    for (int i = 0; i < *n; i++) cube_file_free(&cf[i]);
    free(cf);
    *n = 0;
    return -1;
  }
  *out = cf;
  return 0;
}

int bench_solver(int argc, char **argv) {
  int64_t reps = 9, threads = 0, batch = 4, size = 64;
  const char *lamda = NULL, *device = "cpu", *precision = "float64", *cubes = "random";
  cli_opt opts[] = {
      {"reps", CLI_INT, &reps, "N", "timed repetitions per figure, >= 1 (median; default 9)", 0, 0},
      {"threads", CLI_INT, &threads, "N", "threads for the parallel figure, >= 0 (default 0: all)", 0, 0},
      {"batch", CLI_INT, &batch, "N", "cubes per call in the batch figure, >= 1 (default 4)", 0, 0},
      {"size", CLI_INT, &size, "N", "cube edge, 2..512 (default 64)", 0, 0},
      {"lamda", CLI_STR, &lamda, "FILE", "LAMDA file (default: the built-in co.dat path)", 0, 0},
      {"device", CLI_STR, &device, "cpu|cuda", "where the solver runs (default cpu; cuda: the first GPU, batch figures only)", 0, 0},
      {"precision", CLI_STR, &precision, "P", "the solver's arithmetic: float64 (default) or float32", 0, 0},
      {"cubes", CLI_STR, &cubes, "KIND", "random (default: random smooth cubes), example (the built-in AGB spiral wind, as coemu solve --example) or FILE.h5[,FILE.h5...] (cubes as coemu sample --h5 writes them, with their dx; the batch cycles through them)", 0, 0},
      {0}};
  const cli_command spec = {"bench solver", "[options]",
                            "Time the LTE imager on random 64^3 cubes (or the built-in example).", opts, 0, 0};
  cli_status r = cli_run_parse(&spec, argc, argv, NULL, NULL);
  if (r != CLI_OK) return cli_exit(r);
  const cli_range range[] = {{"--reps", reps, 1, CLI_NO_MAX, NULL},
                             {"--threads", threads, 0, CLI_NO_MAX, "0: all"},
                             {"--batch", batch, 1, CLI_NO_MAX, NULL},
                             {"--size", size, 2, 512, NULL}};
  int bad = cli_check_ranges("bench solver", range, sizeof range / sizeof range[0]);
  if (bad) return bad;
  const int example = !strcmp(cubes, "example"), files = !example && strcmp(cubes, "random");
  if (files && !strstr(cubes, ".h5"))
    return cli_usage_fail("bench solver", "--cubes %s: expected random, example or HDF5 files "
                          "(FILE.h5[,FILE.h5...])", cubes);
  if (files && cli_given(opts, &size))
    return cli_usage_fail("bench solver", "--size goes with random or example cubes: files "
                          "have their own");
  lte_backend be;
  if (lte_backend_parse(device, &be) < 0)
    return cli_usage_fail("bench solver", "--device: %s", ce_err_msg());
  lte_precision prec;
  if (lte_precision_parse(precision, &prec) < 0)
    return cli_usage_fail("bench solver", "--precision: %s", ce_err_msg());
  char desc[320];
  if (lte_backend_open(be, 0, desc, sizeof desc) < 0) {
    ce_err_prefix("--device %s", device);
    return cli_fail("bench solver");
  }
  if (threads <= 0) threads = omp_get_num_procs();
  lamda_molecule m;
  lte_line L;
  if (lamda_read(lamda ? lamda : lamda_default_co_path(), &m) < 0) return cli_fail("bench solver");
  if (lte_line_init(&L, &m, 2, 28.0) < 0) {
    lamda_free(&m);
    return cli_fail("bench solver");
  }
  int N = (int)size, nb = (int)batch;
  double dx = 2 * CUBES_AGB_HALF_WIDTH / N;
  int nfile = 0;
  cube_file *cf = NULL;
  if (files) {
    if (read_cube_files(cubes, &cf, &nfile) < 0) {
      lte_line_free(&L);
      lamda_free(&m);
      return cli_fail("bench solver");
    }
    N = cf[0].nx, dx = cf[0].dx;
  }
  size_t nc = (size_t)N * N * N;
  double **v = malloc(sizeof(double *) * nb), **T = malloc(sizeof(double *) * nb),
         **n = malloc(sizeof(double *) * nb), **img = malloc(sizeof(double *) * nb);
  for (int c = 0; c < nb; c++) {
    v[c] = malloc(nc * sizeof(double));
    T[c] = malloc(nc * sizeof(double));
    n[c] = malloc(nc * sizeof(double));
    img[c] = malloc((size_t)N * N * 7 * sizeof(double));
    if (files) {
      const cube_file *k = &cf[c % nfile];
      memcpy(v[c], k->v, nc * sizeof(double));
      memcpy(T[c], k->T, nc * sizeof(double));
      memcpy(n[c], k->n, nc * sizeof(double));
    } else if (example) { /* the same cube each time: a batch of one model's views */
      cubes_agb_spiral(N, CUBES_AGB_HALF_WIDTH, v[c], T[c], n[c]);
    } else {
      cubes_random(1000 + c, N, N, N, v[c], T[c], n[c]);
    }
  }
  for (int i = 0; i < nfile; i++) cube_file_free(&cf[i]);
  free(cf);
  double f[7];
  freqgrid_coemunet(L.nu0, f);
  const double *const *cv = (const double *const *)v, *const *cT = (const double *const *)T,
                      *const *cn = (const double *const *)n;
  int rc = 0;
  if (be != LTE_BACKEND_CPU) {
    /* the device: batches only (one cube per call leaves a GPU idle); the
       kernel form (COEMU_CUDA_SOLVER_FORM) by default auto, set explicitly
       so that the backend says on stderr which form it timed fastest */
    double cb, bb;
    printf("solver device %s\n", desc);
    if (!getenv("COEMU_CUDA_SOLVER_FORM")) setenv("COEMU_CUDA_SOLVER_FORM", "auto", 1);
    double tb = time_solve(&cb, &bb, &L, f, N, dx, nb, cv, cT, cn, img, (int)threads, (int)reps, be, prec);
    if (tb < 0) {
      rc = cli_fail("bench solver");
    } else {
      printf("solver lte%d device=%s precision=%s batch=%d ms_per_cube %.4f cubes_per_s %.0f best_cubes_per_s "
             "%.0f\n", N, device, precision, nb, tb, 1e3 / tb, 1e3 / bb);
    }
    goto done;
  }
  printf("solver kernel %s precision %s cubes %s%s\n", lte_kernel_name(), precision,
         files ? "from files: " : "", cubes);
  /* median wall time, its speedup over 1 thread, the best (least disturbed)
   * run and the speedup of best over best, median CPU time */
  double c1, cn_, cb, b1, bn, bb;
  double t1 = time_solve(&c1, &b1, &L, f, N, dx, 1, cv, cT, cn, img, 1, (int)reps, be, prec);
  if (t1 < 0) { /* a cube of a user's file with a bad cell: the solver named it */
    rc = cli_fail("bench solver");
    goto done;
  }
  printf("solver lte%d threads=1 ms_per_cube %.2f best %.2f cpu_ms_per_cube %.2f\n", N, t1, b1, c1);
  double tn = time_solve(&cn_, &bn, &L, f, N, dx, 1, cv, cT, cn, img, (int)threads, (int)reps, be, prec);
  printf("solver lte%d threads=%d ms_per_cube %.2f speedup %.2f best %.2f best_speedup %.2f "
         "cpu_ms_per_cube %.2f\n", N, (int)threads, tn, t1 / tn, bn, b1 / bn, cn_);
  double tb = time_solve(&cb, &bb, &L, f, N, dx, nb, cv, cT, cn, img, (int)threads, (int)reps, be, prec);
  printf("solver lte%d batch=%d threads=%d ms_per_cube %.2f speedup %.2f best %.2f best_speedup "
         "%.2f cpu_ms_per_cube %.2f\n", N, nb, (int)threads, tb, t1 / tb, bb, b1 / bb, cb);
done:
  for (int c = 0; c < nb; c++) free(v[c]), free(T[c]), free(n[c]), free(img[c]);
  free(v), free(T), free(n), free(img);
  lte_line_free(&L);
  lamda_free(&m);
  return rc;
}
