/* devpipe_fixture.h - the demo job's samples in memory, without MPI, HDF5 or
 * a job file, for test_devpipe.c (CI: the pipeline's driver on the CPU) and
 * gpu_devpipe_check.c (scripts/gpu-check.sh: the device pipeline against
 * the CPU): jobs/demo.yaml's synthetic model i (synth seed 1, `levels`
 * refinement levels), its Haar directions (sampling seed 1234), CO J=2-1 at
 * the 7 COEmuNet channels, the demo's solver options, and the producer's
 * per-sample path written out (sample_cube, lte_solve_cube_f32, the (f, x, y)
 * transpose as a literal loop), which the pipeline must equal. Header-only;
 * the caller includes common/error.h first. */
#ifndef COEMU_TESTS_DEVPIPE_FIXTURE_H
#define COEMU_TESTS_DEVPIPE_FIXTURE_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pipeline/generate/devpipe.h"
#include "rotate/directions.h"
#include "rotate/model.h"
#include "rotate/sampler.h"
#include "rotate/synth.h"
#include "solver/freqgrid.h"
#include "solver/lamda.h"
#include "solver/lte.h"

typedef struct {
  ce_model *m;
  lamda_molecule mol;
  lte_line line;
  sampler_opts so;
  lte_options opt;
  double freqs[FREQGRID_COEMUNET_N];
  int nf;
} dpf_sample_setup;

/* The demo's model `index` at `levels` levels, n^3 cubes, reconstruction r. */
static int dpf_open(dpf_sample_setup *S, int64_t index, int levels, int n, int recon) {
  memset(S, 0, sizeof *S);
  synth_params p;
  synth_draw(1, index, &p);
  synth_grid g = synth_grid_default();
  g.levels = levels;
  amrvac_snapshot s;
  units u;
  CE_TRY(synth_build(&p, &g, &s));
  int rc = synth_units(&p, 1, index, &u);
  if (rc == 0) rc = model_from_snapshot(&s, &u, &S->m);
  synth_snapshot_free(&s);
  CE_TRY(rc);
  const char *dd = getenv("COEMU_TEST_DATA");
  char path[2048];
  snprintf(path, sizeof path, "%s/lamda/co.dat", dd ? dd : "tests/data");
  CE_TRY(lamda_read(path, &S->mol));
  CE_TRY(lte_line_init(&S->line, &S->mol, 2, 28.0));
  S->nf = FREQGRID_COEMUNET_N;
  freqgrid_coemunet(S->line.nu0, S->freqs);
  /* edge: auto (the model's smallest half-extent, as the producer's ball) */
  double r = INFINITY;
  for (int d = 0; d < 3; d++) {
    double h = 0.5 * (S->m->xmax[d] - S->m->xmin[d]);
    if (h < r) r = h;
  }
  sampler_defaults(&S->so);
  S->so.n = n, S->so.k = 2, S->so.reconstruction = recon;
  S->so.ball_radius = r, S->so.edge = r;
  S->opt = (lte_options){.dx = r / n, .vturb = 150.0, .corrected_taylor = 1};
  return 0;
}

static void dpf_close(dpf_sample_setup *S) {
  model_free(S->m);
  lte_line_free(&S->line);
  lamda_free(&S->mol);
}

/* direction d of the demo's model `index` */
static void dpf_direction(int64_t index, int64_t d, double q[4]) {
  dir_quaternion(DIR_HAAR, 1234, (uint32_t)index, (uint32_t)d, q);
}

/* The producer's per-sample path: inputs[3 n^3], targets[nf n^2] (f, x, y). */
static int dpf_reference(const dpf_sample_setup *S, const double q[4], float *inputs,
                         float *targets) {
  const int n = S->so.n, nf = S->nf;
  const size_t nv = (size_t)n * n * n;
  double *img = malloc(sizeof(double) * (size_t)n * n * nf);
  if (!img) CE_FAIL("out of memory");
  lte_options o = S->opt;
  o.backend = LTE_BACKEND_CPU;
  int rc = sample_cube(S->m, q, &S->so, inputs, inputs + nv, inputs + 2 * nv);
  if (rc == 0)
    rc = lte_solve_cube_f32(&S->line, S->freqs, nf, n, n, n, inputs, inputs + nv, inputs + 2 * nv,
                            &o, img);
  for (int x = 0; rc == 0 && x < n; x++)
    for (int y = 0; y < n; y++)
      for (int f = 0; f < nf; f++) targets[(f * n + x) * n + y] = (float)img[(x * n + y) * nf + f];
  free(img);
  return rc;
}

#endif
