/* bench_sample.c - `coemu bench sample`: milliseconds per 64^3 cube (k = 2,
 * one thread, Haar rotations) from a 2-level model (agbwind3d_0000.dat with
 * its sidecar) and a 4-level model built in memory (an analytic wind on a
 * forest refined towards the centre), for each reconstruction (the corner
 * values of `linear` are built before the clock starts: once per model). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/cli.h"
#include "common/error.h"
#include "pipeline/bench/benches.h"
#include "rotate/directions.h"
#include "rotate/model.h"
#include "rotate/sampler.h"

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

static int run(const char *label, const ce_model *m, int reps, int recon) {
  sampler_opts o;
  sampler_defaults(&o);
  o.reconstruction = recon;
  if (recon == SAMPLER_LINEAR && model_nodal_build((ce_model *)m) < 0) return -1;
  o.ball_radius = model_half_extent(m);
  o.edge = 2 * o.ball_radius / sqrt(3.0);
  size_t N = 64 * 64 * 64;
  float *a = malloc(N * 4), *b = malloc(N * 4), *c = malloc(N * 4);
  double *t = malloc(sizeof(double) * reps);
  if (!a || !b || !c || !t) CE_FAIL("bench sample: out of memory");
  for (int i = 0; i < reps; i++) {
    double q[4];
    dir_quaternion(DIR_HAAR, 1, 0, (uint32_t)i, q);
    double t0 = now();
    CE_TRY(sample_cube(m, q, &o, a, b, c));
    t[i] = now() - t0;
  }
  double best = INFINITY, sum = 0;
  for (int i = 0; i < reps; i++) best = fmin(best, t[i]), sum += t[i];
  printf("sample %s %s cpu_ms_per_cube_mean %.3f ms (min %.3f, %d cubes of 64^3, k=2, 1 thread, %lld leaves, levmax %d)\n",
         label, sampler_recon_name(recon), 1e3 * sum / reps, 1e3 * best, reps,
         (long long)m->nleaves, m->levmax);
  free(a);
  free(b);
  free(c);
  free(t);
  return 0;
}

int bench_sample(int argc, char **argv) {
  const char *model = NULL;
  int64_t reps = 20;
  cli_opt opts[] = {
      {"model", CLI_STR, &model, "FILE", "2-level model (default $COEMU_TEST_DATA or tests/data: amrvac/agbwind3d_0000.dat)", 0, 0},
      {"reps", CLI_INT, &reps, "N", "cubes per model (default 20)", 0, 0},
      {0}};
  const cli_command spec = {
      "bench sample", "[--model FILE] [--reps N]",
      "Milliseconds per 64^3 cube (k = 2) from a 2-level and a 4-level model, per reconstruction.", opts, 0, 0};
  cli_status r = cli_run_parse(&spec, argc, argv, NULL, NULL);
  if (r != CLI_OK) return cli_exit(r);
  if (reps < 1 || reps > 10000)
    return cli_usage_fail("bench sample", "--reps %lld, expected 1..10000", (long long)reps);
  char path[2048];
  if (!model) {
    const char *dd = getenv("COEMU_TEST_DATA");
    snprintf(path, sizeof path, "%s/amrvac/agbwind3d_0000.dat", dd ? dd : "tests/data");
    model = path;
  }
  ce_model *m;
  if (model_load(model, NULL, &m) < 0) return cli_fail("bench sample");
  int rc = run("2-level", m, (int)reps, SAMPLER_CONSTANT);
  if (rc == 0) rc = run("2-level", m, (int)reps, SAMPLER_LINEAR);
  model_free(m);
  if (rc < 0) return cli_fail("bench sample");
  amrvac_snapshot s;
  if (model_synthetic_snapshot((int[3]){32, 32, 32}, (int[3]){8, 8, 8}, (double[3]){-32, -32, -32},
                               (double[3]){32, 32, 32}, 4, 5.0 / 3, refine, NULL, wind, NULL,
                               &s) < 0)
    return cli_fail("bench sample");
  units u;
  const char *y = "version: 1\nunit_system: cgs\nunit_length: 1.495978707e13\n"
                  "unit_numberdensity: 1.0e9\nunit_velocity: 1.0e5\nmu: 2.3\n"
                  "co_abundance: 1.0e-4\nstretched: false\n";
  if (units_parse(y, strlen(y), "(bench units)", &u) < 0 || model_from_snapshot(&s, &u, &m) < 0) {
    amrvac_free(&s);
    return cli_fail("bench sample");
  }
  amrvac_free(&s);
  rc = run("4-level", m, (int)reps, SAMPLER_CONSTANT);
  if (rc == 0) rc = run("4-level", m, (int)reps, SAMPLER_LINEAR);
  model_free(m);
  return rc < 0 ? cli_fail("bench sample") : 0;
}
