/* gpu_sample_bench.c - the sample + solve benchmark of scripts/gpu-check.sh,
 * built without meson, MPI, HDF5 or ZeroMQ (rotate/, solver/, common/error,
 * fsutil, cli; libyaml for the units sidecar): a loaded AMRVAC model
 * (agbwind3d_0000.dat) uploaded to the GPU once, batches of --batch Haar
 * directions sampled there (64^3, k = 2), then ray-traced there at the 7
 * COEmuNet channels. The cubes come back to the host between the two (the
 * sampler and the solver are separate rooms), so sample + solve pays the bus
 * twice. --reconstruction linear (the default), constant or limited. One line per
 * figure (median of --reps batches after a warm-up):
 *   gpu_sample_bench sample linear 64^3 k=2 batch=64 cubes_per_s ...
 *   gpu_sample_bench sample+solve linear 64^3x7 batch=64 samples_per_s ... bus_GB_per_s ...
 *   gpu_sample_bench device_vs_cpu_sampler linear identical 64 of 64 cubes
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/error.h"
#include "rotate/directions.h"
#include "rotate/model.h"
#include "rotate/sampler.h"
#include "solver/freqgrid.h"
#include "solver/lamda.h"
#include "solver/lte.h"

static int fail(const char *what) {
  printf("gpu_sample_bench %s: %s\n", what, ce_err_msg());
  return 1;
}

int main(int argc, char **argv) {
  int nb = 64, reps = 5;
  const char *dd = getenv("COEMU_TEST_DATA");
  char model[2048];
  snprintf(model, sizeof model, "%s/amrvac/agbwind3d_0000.dat", dd ? dd : "tests/data");
  const char *lamda = COEMU_DEFAULT_LAMDA_CO;
  int recon = SAMPLER_LINEAR;
  for (int i = 1; i < argc; i++) {
    if (i + 1 < argc && !strcmp(argv[i], "--batch")) nb = atoi(argv[++i]);
    else if (i + 1 < argc && !strcmp(argv[i], "--reps")) reps = atoi(argv[++i]);
    else if (i + 1 < argc && !strcmp(argv[i], "--model")) snprintf(model, sizeof model, "%s", argv[++i]);
    else if (i + 1 < argc && !strcmp(argv[i], "--reconstruction") &&
             (recon = sampler_recon_parse(argv[++i])) >= 0) continue;
    else {
      fprintf(stderr, "usage: gpu_sample_bench [--batch B] [--reps R] [--model FILE.dat] "
                      "[--reconstruction linear|constant|limited]\n");
      return 2;
    }
  }
  if (nb < 1 || reps < 1) {
    fprintf(stderr, "gpu_sample_bench: --batch and --reps >= 1\n");
    return 2;
  }
  ce_model *m;
  if (model_load(model, NULL, &m) < 0) return fail("model");
  lamda_molecule mol;
  lte_line L;
  if (lamda_read(lamda, &mol) < 0 || lte_line_init(&L, &mol, 2, 28.0) < 0) return fail("line");
  sampler_device *d;
  char desc[320];
  if (sampler_device_open(m, recon, 0, &d, desc, sizeof desc) < 0) return fail("device");
  printf("gpu_sample_bench device: %s (%s: %lld leaves, levmax %d)\n", desc, model,
         (long long)m->nleaves, m->levmax);
  sampler_opts o;
  sampler_defaults(&o);
  o.reconstruction = recon;
  o.ball_radius = model_half_extent(m);
  o.edge = 2 * o.ball_radius / sqrt(3.0);
  const size_t N = 64 * 64 * 64, np = 64 * 64 * 7;
  float **a = calloc(nb, sizeof *a), **b = calloc(nb, sizeof *b), **c = calloc(nb, sizeof *c);
  double **img = calloc(nb, sizeof *img), (*q)[4] = calloc(nb, sizeof *q);
  double *t = calloc(2 * (size_t)reps, sizeof *t);
  float *ca = malloc(N * 4), *cb = malloc(N * 4), *cc = malloc(N * 4);
  for (int i = 0; i < nb; i++) {
    a[i] = malloc(N * 4), b[i] = malloc(N * 4), c[i] = malloc(N * 4), img[i] = malloc(np * 8);
    if (!a[i] || !b[i] || !c[i] || !img[i]) {
      fprintf(stderr, "gpu_sample_bench: out of host memory\n");
      return 1;
    }
    dir_quaternion(DIR_HAAR, 1, 0, (uint32_t)i, q[i]);
  }
  double f[7];
  freqgrid_coemunet(L.nu0, f);
  lte_options lo = {.dx = o.edge / 64, .take_abs = 1, .backend = LTE_BACKEND_CUDA};
  lte_kernel_model km;
  lte_kernel_model_init(&km, &L, &lo);
  const lte_kernel *k = lte_kernel_get(LTE_BACKEND_CUDA);
  lte_kernel_batch kb = {.ncube = nb, .nx = 64, .ny = 64, .nz = 64, .dtype = LTE_KERNEL_F32,
                         .v = (const void *const *)a, .T = (const void *const *)b,
                         .n = (const void *const *)c, .nf = 7, .freqs = f, .image = img};
  if (!k) {
    printf("gpu_sample_bench: the cuda solver is not built in\n");
    return 1;
  }
  if (sampler_device_sample(d, nb, (const double(*)[4])q, &o, a, b, c) < 0) return fail("sample");
  if (k->solve(&km, &kb) != 0) return fail("solve");
  for (int r = 0; r < reps; r++) {
    double t0 = ce_now_s();
    if (sampler_device_sample(d, nb, (const double(*)[4])q, &o, a, b, c) < 0) return fail("sample");
    double t1 = ce_now_s();
    if (k->solve(&km, &kb) != 0) return fail("solve");
    t[r] = t1 - t0, t[reps + r] = ce_now_s() - t0;
  }
  qsort(t, reps, sizeof *t, ce_cmp_double);
  qsort(t + reps, reps, sizeof *t, ce_cmp_double);
  double ts = t[reps / 2], tss = t[reps + reps / 2];
  /* bytes over the bus per sample: cubes down (3 float32), cubes up, image down */
  double bytes = 3.0 * N * 4 * 2 + np * 8;
  const char *rn = sampler_recon_name(recon);
  printf("gpu_sample_bench sample %s 64^3 k=2 batch=%d cubes_per_s %.1f\n", rn, nb, nb / ts);
  printf("gpu_sample_bench sample+solve %s 64^3x7 batch=%d samples_per_s %.1f bus_GB_per_s %.2f\n",
         rn, nb, nb / tss, nb * bytes / tss * 1e-9);
  int same = 0;
  for (int i = 0; i < nb; i++) {
    if (sample_cube(m, q[i], &o, ca, cb, cc) < 0) return fail("cpu sample");
    same += !memcmp(ca, a[i], N * 4) && !memcmp(cb, b[i], N * 4) && !memcmp(cc, c[i], N * 4);
  }
  printf("gpu_sample_bench device_vs_cpu_sampler %s identical %d of %d cubes\n", rn, same, nb);
  for (int i = 0; i < nb; i++) free(a[i]), free(b[i]), free(c[i]), free(img[i]);
  free(a), free(b), free(c), free(img), free(q), free(t), free(ca), free(cb), free(cc);
  sampler_device_close(d);
  lte_line_free(&L);
  lamda_free(&mol);
  model_free(m);
  return same == nb ? 0 : 1;
}
