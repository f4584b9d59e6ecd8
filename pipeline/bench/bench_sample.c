/* bench_sample.c - `coemu bench sample`: milliseconds per 64^3 cube (k = 2,
 * one thread, Haar rotations) from a 2-level model (agbwind3d_0000.dat with
 * its sidecar) and a 4-level model built in memory (an analytic wind on a
 * forest refined towards the centre), on the CPU for each reconstruction
 * (the corner values of `linear` and the slopes of `limited` are built before
 * the clock starts: once per model). With --device cuda (linear, constant, then
 * limited): cubes per second
 * of batches of --batch directions sampled on the GPU (copies to the host
 * included), and samples per second of sample + LTE solve (7 COEmuNet
 * channels) on the GPU, the cubes crossing the bus to the host and back. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/cli.h"
#include "common/error.h"
#include "pipeline/bench/benches.h"
#include "rotate/directions.h"
#include "rotate/model.h"
#include "rotate/sampler.h"
#include "solver/freqgrid.h"
#include "solver/lamda.h"
#include "solver/lte.h"

/* thread CPU time: the figure stays meaningful on a loaded machine */
static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

/* rho ~ 1/r^2 wind with a radial velocity, in code units of 1 au, 1 km/s */
static void wind(const double x[3], double w[5], void *user) {
  double r = fmax(sqrt(x[0] * x[0] + x[1] * x[1] + x[2] * x[2]), 1.5);
  double rho = 10 / (r * r), v = 15;
  w[0] = rho;
  for (int d = 0; d < 3; d++) w[d + 1] = rho * v * x[d] / r;
  w[4] = rho / (2.0 / 3.0) + 0.5 * rho * v * v;
}

/* refine blocks that come within 8 / 2^(level-1) au of the centre */
static int refine(const amrvac_block_id *id, void *user) {
  double h = 64.0 / 4 / (1 << (id->level - 1)), reach = 12.0 / (1 << (id->level - 1)), d2 = 0;
  for (int d = 0; d < 3; d++) {
    double lo = -32 + (id->ig[d] - 1) * h, hi = lo + h, c = fmax(lo, fmin(0, hi));
    d2 += c * c;
  }
  return d2 < reach * reach;
}

/* reps directions, each sampled `repeat` times: the mean over the
 * directions of their first time, the least time of any run (over every
 * repeat too: a minimum of the first runs alone could exceed mean_of_least),
 * and (repeat > 1) the mean over the directions of each one's least time,
 * the dataset's cost per cube without the interference of other work on the
 * host */
static int run(const char *label, const ce_model *m, int reps, int repeat, int recon) {
  sampler_opts o;
  sampler_defaults(&o);
  o.reconstruction = recon;
  if (sampler_prepare((ce_model *)m, &o) < 0) return -1;
  o.ball_radius = model_half_extent(m);
  o.edge = 2 * o.ball_radius / sqrt(3.0);
  size_t N = 64 * 64 * 64;
  float *a = malloc(N * 4), *b = malloc(N * 4), *c = malloc(N * 4);
  double *t = malloc(sizeof(double) * reps), *tf = malloc(sizeof(double) * reps);
  if (!a || !b || !c || !t || !tf) CE_FAIL("bench sample: out of memory");
  for (int i = 0; i < reps; i++) {
    double q[4];
    dir_quaternion(DIR_HAAR, 1, 0, (uint32_t)i, q);
    for (int r = 0; r < repeat; r++) {
      double t0 = now();
      CE_TRY(sample_cube(m, q, &o, a, b, c));
      t0 = now() - t0;
      if (r == 0) t[i] = tf[i] = t0;
      else t[i] = fmin(t[i], t0);
    }
  }
  double best = INFINITY, sum = 0, sum_least = 0;
  for (int i = 0; i < reps; i++) best = fmin(best, t[i]), sum += tf[i], sum_least += t[i];
  printf("sample %s %s cpu_ms_per_cube_mean %.3f ms (min %.3f, %d cubes of 64^3, k=2, 1 thread, %lld leaves, levmax %d)",
         label, sampler_recon_name(recon), 1e3 * sum / reps, 1e3 * best, reps,
         (long long)m->nleaves, m->levmax);
  if (repeat > 1)
    printf(" mean_of_least %.3f ms (each direction's least of %d)", 1e3 * sum_least / reps,
           repeat);
  printf("\n");
  free(a);
  free(b);
  free(c);
  free(t);
  free(tf);
  return 0;
}

/* the reconstructions on the CPU */
static int run_cpu(const char *label, const ce_model *m, int reps, int repeat) {
  CE_TRY(run(label, m, reps, repeat, SAMPLER_CONSTANT));
  CE_TRY(run(label, m, reps, repeat, SAMPLER_LINEAR));
  return run(label, m, reps, repeat, SAMPLER_LIMITED);
}

static double wall(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

/* the device figures of one model and reconstruction: median of reps batches */
static int run_device_recon(const char *label, const ce_model *m, int reps, int nb,
                            const lte_line *L, int recon) {
  sampler_device *d;
  char desc[320];
  CE_TRY(sampler_device_open(m, recon, 0, &d, desc, sizeof desc));
  printf("sample %s device %s\n", label, desc);
  sampler_opts o;
  sampler_defaults(&o);
  o.reconstruction = recon;
  o.ball_radius = model_half_extent(m);
  o.edge = 2 * o.ball_radius / sqrt(3.0);
  const size_t N = 64 * 64 * 64, np = 64 * 64 * 7;
  float **a = calloc(nb, sizeof *a), **b = calloc(nb, sizeof *b), **c = calloc(nb, sizeof *c);
  double **img = calloc(nb, sizeof *img), (*q)[4] = calloc(nb, sizeof *q);
  double *t = calloc(2 * reps, sizeof *t);
  int rc = a && b && c && img && q && t ? 0 : ce_err("bench sample: out of memory");
  for (int i = 0; i < nb && rc == 0; i++) {
    a[i] = malloc(N * 4), b[i] = malloc(N * 4), c[i] = malloc(N * 4), img[i] = malloc(np * 8);
    if (!a[i] || !b[i] || !c[i] || !img[i]) rc = ce_err("bench sample: out of memory");
    dir_quaternion(DIR_HAAR, 1, 0, (uint32_t)i, q[i]);
  }
  double f[7];
  freqgrid_coemunet(L->nu0, f);
  lte_options lo = {.dx = o.edge / 64, .take_abs = 1, .backend = LTE_BACKEND_CUDA};
  lte_kernel_model km;
  lte_kernel_model_init(&km, L, &lo);
  const lte_kernel *k = lte_kernel_get(LTE_BACKEND_CUDA);
  lte_kernel_batch kb = {.ncube = nb, .nx = 64, .ny = 64, .nz = 64, .dtype = LTE_KERNEL_F32,
                         .v = (const void *const *)a, .T = (const void *const *)b,
                         .n = (const void *const *)c, .nf = 7, .freqs = f, .image = img};
  if (rc == 0 && !k) rc = ce_err("solver backend 'cuda' is not built into this coemu");
  /* warm-up, then reps batches sampled, and reps sampled and solved */
  if (rc == 0) rc = sampler_device_sample(d, nb, (const double(*)[4])q, &o, a, b, c);
  if (rc == 0 && k->solve(&km, &kb) != 0) rc = -1;
  for (int r = 0; r < reps && rc == 0; r++) {
    double t0 = wall();
    rc = sampler_device_sample(d, nb, (const double(*)[4])q, &o, a, b, c);
    double t1 = wall();
    if (rc == 0 && k->solve(&km, &kb) != 0) rc = -1;
    t[r] = t1 - t0, t[reps + r] = wall() - t0;
  }
  if (rc == 0) {
    qsort(t, reps, sizeof *t, ce_cmp_double);
    qsort(t + reps, reps, sizeof *t, ce_cmp_double);
    printf("sample %s %s device=cuda batch=%d cubes_per_s %.1f (64^3, k=2, cubes copied to the "
           "host)\n", label, sampler_recon_name(recon), nb, nb / t[reps / 2]);
    printf("sample+solve %s %s device=cuda batch=%d samples_per_s %.1f (7 channels; cubes cross "
           "the bus to the host and back)\n", label, sampler_recon_name(recon), nb,
           nb / t[reps + reps / 2]);
  }
  for (int i = 0; i < nb && a && b && c && img; i++) free(a[i]), free(b[i]), free(c[i]), free(img[i]);
  free(a), free(b), free(c), free(img), free(q), free(t);
  sampler_device_close(d);
  return rc;
}

static int run_device(const char *label, const ce_model *m, int reps, int nb, const lte_line *L) {
  CE_TRY(run_device_recon(label, m, reps, nb, L, SAMPLER_LINEAR));
  CE_TRY(run_device_recon(label, m, reps, nb, L, SAMPLER_CONSTANT));
  return run_device_recon(label, m, reps, nb, L, SAMPLER_LIMITED);
}

int bench_sample(int argc, char **argv) {
  const char *model = NULL;
  int64_t reps = 20, batch = 64, repeat = 1;
  const char *device = "cpu";
  cli_opt opts[] = {
      {"model", CLI_STR, &model, "FILE", "2-level model (default $COEMU_TEST_DATA or tests/data: amrvac/agbwind3d_0000.dat)", 0, 0},
      {"reps", CLI_INT, &reps, "N", "cubes per model, 1..10000 (default 20); --device cuda: batches", 0, 0},
      {"repeat", CLI_INT, &repeat, "R", "CPU: each direction sampled R times, 1..1000 (default 1): the mean stays over each direction's first time, min is over all runs, and R > 1 adds mean_of_least, the mean over directions of each one's least time", 0, 0},
      {"device", CLI_STR, &device, "cpu|cuda", "where the cubes are sampled (default cpu; cuda: the first GPU, with sample + solve)", 0, 0},
      {"batch", CLI_INT, &batch, "N", "--device cuda: directions per batch, 1..4096 (default 64)", 0, 0},
      {0}};
  const cli_command spec = {
      "bench sample", "[--model FILE] [--reps N] [--repeat R] [--device cpu|cuda] [--batch N]",
      "Milliseconds per 64^3 cube (k = 2) from a 2-level and a 4-level model, per reconstruction.",
      opts, 0, 0};
  cli_status r = cli_run_parse(&spec, argc, argv, NULL, NULL);
  if (r != CLI_OK) return cli_exit(r);
  const cli_range range[] = {{"--reps", reps, 1, 10000, NULL},
                             {"--repeat", repeat, 1, 1000, NULL},
                             {"--batch", batch, 1, 4096, NULL}};
  int bad = cli_check_ranges("bench sample", range, sizeof range / sizeof range[0]);
  if (bad) return bad;
  int on_device = !strcmp(device, "cuda");
  if (!on_device && strcmp(device, "cpu"))
    return cli_usage_fail("bench sample", "--device %s: expected cpu or cuda", device);
  char path[2048];
  if (!model) {
    const char *dd = getenv("COEMU_TEST_DATA");
    snprintf(path, sizeof path, "%s/amrvac/agbwind3d_0000.dat", dd ? dd : "tests/data");
    model = path;
  }
  lamda_molecule mol;
  lte_line L;
  if (on_device) {
    if (lamda_read(lamda_default_co_path(), &mol) < 0) return cli_fail("bench sample");
    if (lte_line_init(&L, &mol, 2, 28.0) < 0) {
      lamda_free(&mol);
      return cli_fail("bench sample");
    }
  }
#define RUN_MODEL(label, m) (on_device ? run_device(label, m, (int)reps, (int)batch, &L) \
                                       : run_cpu(label, m, (int)reps, (int)repeat))
  ce_model *m;
  int rc = model_load(model, NULL, &m);
  if (rc == 0) {
    rc = RUN_MODEL("2-level", m);
    model_free(m);
  }
  amrvac_snapshot s;
  if (rc == 0)
    rc = model_synthetic_snapshot((int[3]){32, 32, 32}, (int[3]){8, 8, 8},
                                  (double[3]){-32, -32, -32}, (double[3]){32, 32, 32}, 4, 5.0 / 3,
                                  refine, NULL, wind, NULL, &s);
  if (rc == 0) {
    units u;
    const char *y = "version: 1\nunit_system: cgs\nunit_length: 1.495978707e13\n"
                    "unit_numberdensity: 1.0e9\nunit_velocity: 1.0e5\nmu: 2.3\n"
                    "co_abundance: 1.0e-4\nstretched: false\n";
    rc = units_parse(y, strlen(y), "(bench units)", &u);
    if (rc == 0) rc = model_from_snapshot(&s, &u, &m);
    amrvac_free(&s);
    if (rc == 0) {
      rc = RUN_MODEL("4-level", m);
      model_free(m);
    }
  }
  if (on_device) lte_line_free(&L), lamda_free(&mol);
  return rc < 0 ? cli_fail("bench sample") : 0;
}
