/* bench_isotropy.c - `coemu bench isotropy`: the grid artefacts of each
 * reconstruction as a number (docs/sampling.md, "The isotropy metric").
 *
 * The model is spherically symmetric: a synth model (seed, index 0) with its
 * orbital-plane and spiral contrasts and the arms' velocities set to 0, i.e. the smooth wind
 * n ~ 1/(r^2 v(r)), T = Ts (Rs/r)^q, v = v(r) r^, on the synth AMR grid
 * (refined near the star, the companion's place and where ln rho jumps). Its
 * images do not depend on the viewing direction, so for D Haar directions
 * (rotate/directions.c) the spread across directions of ln I per pixel and
 * channel (the sample standard deviation over the D images; pixels whose
 * ln I is above the clip STATS_LNI_CLIP in every direction) is the artefact
 * level; its 95th percentile is printed per reconstruction, with the same
 * spread of the inputs (ln n_CO per voxel; ln T and v_los as well) and the
 * thread CPU time of sampling one cube. The floor is the same spread for the
 * solver alone: the analytic fields averaged over the same k^3 sub-samples
 * of each voxel, given to the solver directly. That is also the
 * voxelisation floor (the analytic field at the voxels' sub-points, no AMR
 * cells): the sub-points of direction q sit at x = R u, |x| = |u|, and a
 * spherically symmetric wind (v radial, so v_los = v(r) u_z / r) has the
 * same values there in every direction, so the floor is float32 rounding;
 * the line after it says so. The reconstructions' spreads come from the
 * cells alone; `--base` and `--levels` show how they shrink with the cells.
 */
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
#include "rotate/synth.h"
#include "solver/freqgrid.h"
#include "solver/lamda.h"
#include "solver/lte.h"
#include "stats/transforms.h"

static double cpu_now(void) {
  struct timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

/* 95th percentile (nearest rank) of s[0..n-1] (sorted in place); 0 if n = 0 */
static double p95(double *s, size_t n) {
  if (!n) return 0;
  qsort(s, n, sizeof *s, ce_cmp_double);
  size_t r = (size_t)ceil(0.95 * (double)n);
  return s[r ? r - 1 : 0];
}

/* The spread of D fields of len values each (x[d * len + i]): per i the
 * sample standard deviation over d of f(x), over the i where keep(x) holds
 * in every direction; its 95th percentile, and the count kept. */
typedef enum { F_LN, F_LIN } xform;
static double spread_p95(const float *x, int D, size_t len, xform f, double floor_, size_t *kept,
                         double *scratch) {
  size_t m = 0;
  for (size_t i = 0; i < len; i++) {
    double s = 0, s2 = 0;
    int ok = 1;
    for (int d = 0; d < D && ok; d++) {
      double v = x[(size_t)d * len + i];
      if (f == F_LN) {
        if (!(v > 0) || log(v) <= floor_) ok = 0;
        v = log(v);
      }
      s += v;
      s2 += v * v;
    }
    if (!ok) continue;
    double mean = s / D, var = (s2 - D * mean * mean) / (D - 1);
    scratch[m++] = var > 0 ? sqrt(var) : 0;
  }
  if (kept) *kept = m;
  return p95(scratch, m);
}

typedef struct {
  const ce_model *m;
  const synth_params *p;
  const lte_line *L;
  const double *freqs;
  int nf, n, k, D;
  double edge;
  uint64_t seed;
} iso_setup;

/* The analytic fields averaged over the voxel's k^3 sub-samples as the
 * sampler averages (n plain mean, T and v_los n-weighted), for rotation q. */
static void analytic_cube(const iso_setup *s, const double q[4], float *v_los, float *T,
                          float *n_co) {
  double R[9];
  dir_matrix(q, R);
  const int n = s->n, k = s->k;
  const double h = s->edge / n;
  for (int ix = 0; ix < n; ix++)
    for (int iy = 0; iy < n; iy++)
      for (int iz = 0; iz < n; iz++) {
        double w = 0, wT = 0, wv = 0;
        for (int a = 0; a < k; a++)
          for (int b = 0; b < k; b++)
            for (int c = 0; c < k; c++) {
              double u[3] = {(ix + (a + 0.5) / k) * h - 0.5 * s->edge,
                             (iy + (b + 0.5) / k) * h - 0.5 * s->edge,
                             (iz + (c + 0.5) / k) * h - 0.5 * s->edge};
              double x[3], nh2, Tx, v[3];
              for (int d = 0; d < 3; d++)
                x[d] = R[3 * d] * u[0] + R[3 * d + 1] * u[1] + R[3 * d + 2] * u[2];
              synth_eval(s->p, x, &nh2, &Tx, v);
              double nc = nh2 * s->p->co_abundance;
              w += nc;
              wT += nc * Tx;
              wv += nc * (R[2] * v[0] + R[5] * v[1] + R[8] * v[2]);
            }
        size_t at = ((size_t)ix * n + iy) * n + iz;
        n_co[at] = (float)(w / (k * k * k));
        T[at] = (float)(wT / w);
        v_los[at] = (float)(wv / w);
      }
}

/* One variant: recon >= 0 a reconstruction, -1 the analytic cubes. */
static int measure(const iso_setup *s, int recon, float *v, float *T, float *nc, float *img,
                   double *scratch, double *mean_img) {
  const size_t nvox = (size_t)s->n * s->n * s->n, npix = (size_t)s->n * s->n * s->nf;
  sampler_opts o;
  sampler_defaults(&o);
  o.n = s->n;
  o.k = s->k;
  o.edge = s->edge;
  o.ball_radius = model_half_extent(s->m);
  if (recon >= 0) o.reconstruction = recon;
  /* the corner values are built once per model, outside the clock */
  if (recon == SAMPLER_LINEAR || recon == SAMPLER_LIMITED) {
    double t0 = cpu_now();
    CE_TRY(sampler_prepare((ce_model *)s->m, &o));
    printf("isotropy %s: %s built in %.3f s (once per model)\n",
           recon == SAMPLER_LINEAR ? "linear" : "limited",
           recon == SAMPLER_LINEAR ? "corner values" : "slopes", cpu_now() - t0);
  }
  lte_options lo = {.dx = s->edge / s->n, .vturb = 150.0, .take_abs = 1, .threads = 0};
  double cpu = 0;
  double *im = malloc(sizeof(double) * npix);
  if (!im) CE_FAIL("bench isotropy: out of memory");
  for (int d = 0; d < s->D; d++) {
    double q[4];
    dir_quaternion(DIR_HAAR, s->seed, 0, (uint32_t)d, q);
    float *vd = v + d * nvox, *Td = T + d * nvox, *nd = nc + d * nvox;
    if (recon >= 0) {
      double t0 = cpu_now();
      if (sample_cube(s->m, q, &o, vd, Td, nd) < 0) {
        free(im);
        return -1;
      }
      cpu += cpu_now() - t0;
    } else {
      analytic_cube(s, q, vd, Td, nd);
    }
    if (lte_solve_cube_f32(s->L, s->freqs, s->nf, s->n, s->n, s->n, vd, Td, nd, &lo, im) < 0) {
      free(im);
      return -1;
    }
    for (size_t i = 0; i < npix; i++) img[d * npix + i] = (float)im[i];
  }
  free(im);
  size_t kept;
  double sI = spread_p95(img, s->D, npix, F_LN, STATS_LNI_CLIP, &kept, scratch);
  double sn = spread_p95(nc, s->D, nvox, F_LN, -INFINITY, NULL, scratch);
  double sT = spread_p95(T, s->D, nvox, F_LN, -INFINITY, NULL, scratch);
  double sv = spread_p95(v, s->D, nvox, F_LIN, 0, NULL, scratch);
  /* the mean ln I image over directions, and (for a reconstruction) its
   * difference from the analytic one (mean_img[npix..] holds the analytic) */
  double err = 0;
  size_t ne = 0;
  for (size_t i = 0; i < npix; i++) {
    double a = 0;
    for (int d = 0; d < s->D; d++) a += log(fmax(img[d * npix + i], 1e-300));
    a /= s->D;
    if (recon < 0) mean_img[i] = a;
    else if (mean_img[i] > STATS_LNI_CLIP && a > STATS_LNI_CLIP) scratch[ne++] = fabs(a - mean_img[i]);
  }
  if (recon >= 0) err = p95(scratch, ne);
  const char *name = recon >= 0 ? sampler_recon_name(recon) : "solver_floor";
  printf("isotropy %s ln_I_spread_p95 %.4g inputs_spread_p95 %.4g ms_per_cube %.2f "
         "(ln_T %.4g, v_los %.4g m/s; %zu of %zu pixel-channels above the clip",
         name, sI, sn, recon >= 0 ? 1e3 * cpu / s->D : 0.0, sT, sv, kept, npix);
  if (recon >= 0) printf("; |mean ln I - analytic| p95 %.4g", err);
  printf(")\n");
  return 0;
}

int bench_isotropy(int argc, char **argv) {
  int64_t n = 64, D = 12, k = 2, seed = 1, levels = 0, base = 0;
  cli_opt opts[] = {
      {"n", CLI_INT, &n, "N", "voxels per cube edge, 4..256 (default 64)", 0, 0},
      {"directions", CLI_INT, &D, "D", "Haar directions, 2..1000 (default 12)", 0, 0},
      {"k", CLI_INT, &k, "K", "sub-samples per voxel edge, 1..8 (default 2)", 0, 0},
      {"seed", CLI_INT64, &seed, "S", "synth seed of the wind's parameters and the directions, >= 0 (default 1)", 0, 0},
      {"levels", CLI_INT, &levels, "L", "AMR levels of the model, 1..6 (default 0: the synth default)", 0, 0},
      {"base", CLI_INT, &base, "B", "level-1 cells per edge, a multiple of the block edge, at most 4096 (default 0: the synth default)", 0, 0},
      {0}};
  const cli_command spec = {
      "bench isotropy", "[options]",
      "Spread across viewing directions of the images of a spherically symmetric wind, per "
      "reconstruction, and the solver's own floor.",
      opts, 0, 0};
  cli_status r = cli_run_parse(&spec, argc, argv, NULL, NULL);
  if (r != CLI_OK) return cli_exit(r);
  const char *dflt = "0: the synth default";
  const cli_range range[] = {{"--n", n, 4, 256, NULL},
                             {"--directions", D, 2, 1000, NULL},
                             {"--k", k, 1, 8, NULL},
                             {"--seed", seed, 0, CLI_NO_MAX, NULL},
                             {"--levels", levels, 0, 6, dflt},
                             {"--base", base, 0, 4096, dflt}};
  int bad = cli_check_ranges("bench isotropy", range, sizeof range / sizeof range[0]);
  if (bad) return bad;
  synth_grid g = synth_grid_default();
  if (levels) g.levels = (int)levels;
  if (base) g.base_nx = (int)base;
  if (synth_grid_check(&g) < 0) /* --base against the block edge */
    return cli_usage_fail("bench isotropy", "--levels %lld --base %lld: %s", (long long)levels,
                          (long long)base, ce_err_msg());
  synth_params p;
  synth_draw((uint64_t)seed, 0, &p);
  p.arm_contrast = 0;
  p.plane_contrast = 0;
  synth_derive(&p);
  p.arm_dv_r = 0; /* no arm velocities either: v is radial */
  p.arm_dv_t = 0;
  amrvac_snapshot snap;
  units u;
  ce_model *m = NULL;
  if (synth_build(&p, &g, &snap) < 0) return cli_fail("bench isotropy");
  int rc = synth_units(&p, (uint64_t)seed, 0, &u) < 0 || model_from_snapshot(&snap, &u, &m) < 0;
  synth_snapshot_free(&snap);
  if (rc) return cli_fail("bench isotropy");
  lamda_molecule mol;
  lte_line L;
  if (lamda_read(lamda_default_co_path(), &mol) < 0) {
    model_free(m);
    return cli_fail("bench isotropy");
  }
  if (lte_line_init(&L, &mol, 2, 28.0) < 0) {
    lamda_free(&mol);
    model_free(m);
    return cli_fail("bench isotropy");
  }
  double f[FREQGRID_COEMUNET_N];
  freqgrid_coemunet(L.nu0, f);
  /* the job's automatic cube: edge = the ball radius (the model's half-extent) */
  iso_setup s = {m, &p, &L, f, FREQGRID_COEMUNET_N, (int)n, (int)k, (int)D,
                 model_half_extent(m), (uint64_t)seed};
  const size_t nvox = (size_t)n * n * n, npix = (size_t)n * n * s.nf;
  float *v = malloc(sizeof(float) * nvox * D), *T = malloc(sizeof(float) * nvox * D),
        *nc = malloc(sizeof(float) * nvox * D), *img = malloc(sizeof(float) * npix * D);
  double *scratch = malloc(sizeof(double) * (nvox > npix ? nvox : npix)),
         *mean_img = malloc(sizeof(double) * npix);
  rc = 0;
  if (!v || !T || !nc || !img || !scratch || !mean_img) rc = ce_err("bench isotropy: out of memory");
  int64_t ncell = m->nleaves * m->ncell;
  double dxmin = (m->xmax[0] - m->xmin[0]) / (double)m->nfine[0];
  if (rc == 0)
    printf("isotropy model: synth seed %lld without arms or plane, %lld leaves, %lld cells, levels "
           "%d, base %d, finest cell %.3g au; cube %lld^3, voxel %.3g au, k = %lld, %lld Haar "
           "directions, %d channels\n",
           (long long)seed, (long long)m->nleaves, (long long)ncell, m->levmax, g.base_nx,
           dxmin / SYNTH_AU, (long long)n, s.edge / n / SYNTH_AU, (long long)k, (long long)D,
           s.nf);
  if (rc == 0) rc = measure(&s, -1, v, T, nc, img, scratch, mean_img);
  if (rc == 0)
    printf("isotropy floor = voxelisation floor: the analytic field at the voxels' sub-points, the "
           "same in every direction for this symmetric wind (|R u| = |u|): float32 rounding\n");
  if (rc == 0) rc = measure(&s, SAMPLER_CONSTANT, v, T, nc, img, scratch, mean_img);
  if (rc == 0) rc = measure(&s, SAMPLER_LINEAR, v, T, nc, img, scratch, mean_img);
  if (rc == 0) rc = measure(&s, SAMPLER_LIMITED, v, T, nc, img, scratch, mean_img);
  free(v);
  free(T);
  free(nc);
  free(img);
  free(scratch);
  free(mean_img);
  lte_line_free(&L);
  lamda_free(&mol);
  model_free(m);
  return rc < 0 ? cli_fail("bench isotropy") : 0;
}
