/* body_bench.c - what the sampler's per-thread bodies (rotate/sampler_body.h,
 * sampler_body_linear.h: the device's code) cost when the host runs them by
 * a plain loop over thread indices, against sample_cube on the same cubes:
 * thread CPU ms per 64^3 cube, k = 2, one thread, --reps Haar directions,
 * constant, linear and limited, from agbwind3d_0000.dat (or --model). Not a device
 * figure: the host-run bodies are the test vehicle of the device code (no
 * leaf trail, no vectors, a point's 8 corners projected per point), so this
 * says how much more work per point the device's form does. Each cube is
 * also compared bit for bit (the line ends "identical R of R").
 *   build/tests/rotate/body_bench [--reps R] [--model FILE.dat] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/error.h"
#include "rotate/directions.h"
#include "rotate/model.h"
#include "rotate/sampler.h"
#include "rotate/sampler_body_linear.h"

static double cpu_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

int main(int argc, char **argv) {
  int reps = 6;
  const char *dd = getenv("COEMU_TEST_DATA");
  char model[2048];
  snprintf(model, sizeof model, "%s/amrvac/agbwind3d_0000.dat", dd ? dd : "tests/data");
  for (int i = 1; i < argc; i++) {
    if (i + 1 < argc && !strcmp(argv[i], "--reps")) reps = atoi(argv[++i]);
    else if (i + 1 < argc && !strcmp(argv[i], "--model")) snprintf(model, sizeof model, "%s", argv[++i]);
    else {
      fprintf(stderr, "usage: body_bench [--reps R] [--model FILE.dat]\n");
      return 2;
    }
  }
  if (reps < 1) reps = 1;
  ce_model *m;
  int32_t *geo = NULL;
  sampler_flat F;
  if (model_load(model, NULL, &m) < 0 || sampler_flatten(m, &F, &geo) < 0) {
    fprintf(stderr, "body_bench: %s\n", ce_err_msg());
    return 1;
  }
  const size_t N = 64 * 64 * 64;
  float *a[3], *b[3];
  for (int i = 0; i < 3; i++) a[i] = malloc(N * 4), b[i] = malloc(N * 4);
  int rc = 0;
  for (int recon = SAMPLER_CONSTANT; recon <= SAMPLER_LIMITED && rc == 0; recon++) {
    sampler_opts o;
    sampler_defaults(&o);
    o.reconstruction = recon;
    o.ball_radius = model_half_extent(m);
    o.edge = o.ball_radius;
    double tc = 0, tb = 0;
    int same = 0;
    void *scratch = NULL;
    for (int r = 0; r < reps && rc == 0; r++) {
      double q[4];
      sampler_geo G;
      dir_quaternion(DIR_HAAR, 1, 0, (uint32_t)r, q);
      if (sampler_prepare(m, &o) < 0 || sampler_geometry(m, q, &o, &G) < 0) {
        rc = 1;
        break;
      }
      F.limited = m->limited; /* built by sampler_prepare, after the flattening */
      if (!scratch && !(scratch = malloc((size_t)sb_scratch_bytes(&G)))) {
        rc = ce_err("body_bench: out of memory");
        break;
      }
      double t0 = cpu_s();
      rc = sample_cube(m, q, &o, a[0], a[1], a[2]);
      double t1 = cpu_s();
      sampler_body_run_host(&F, &G, scratch, b[0], b[1], b[2]);
      double t2 = cpu_s();
      tc += t1 - t0, tb += t2 - t1;
      same += !memcmp(a[0], b[0], N * 4) && !memcmp(a[1], b[1], N * 4) && !memcmp(a[2], b[2], N * 4);
    }
    free(scratch);
    if (rc == 0)
      printf("body_bench %s sample_cube_ms %.1f host_bodies_ms %.1f ratio %.2f (64^3, k=2, 1 thread, "
             "mean of %d directions; identical %d of %d)\n", sampler_recon_name(recon),
             1e3 * tc / reps, 1e3 * tb / reps, tb / tc, reps, same, reps);
  }
  if (rc) fprintf(stderr, "body_bench: %s\n", ce_err_msg());
  for (int i = 0; i < 3; i++) free(a[i]), free(b[i]);
  free(geo);
  model_free(m);
  return rc ? 1 : 0;
}
