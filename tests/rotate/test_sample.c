/* test_sample.c - the model, the sampler, the direction samplers and the
 * compat gridding: the analytic t=0 wind cube to round-off, exact
 * permutations under 90-degree rotations, mass invariance of a spherical
 * model, the statistics of the rotation samplers.
 *
 * Tolerances: sampling is scalar double arithmetic in fixed orders (no BLAS,
 * no sums across threads, no FMA contraction: -ffp-contract=off), the same on every
 * host up to the last bit of libm; each tolerance bounds a known error:
 * 1.2e-7 (2^-23) one float32 rounding of the stored fields, 1e-14/1e-15 a
 * few double roundings, 0.003 and the ball check the resampling error of
 * these fixed grids (docs/sampling.md), exact where the result is a
 * permutation or a copy. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "check.h"
#include "rotate/compat.h"
#include "rotate/directions.h"
#include "rotate/model.h"
#include "rotate/sampler.h"
#include "rotate/sampler_body_linear.h"
#include "model_fixture.h"

static const char *data_dir;
static const double AU = 1.495978707e11;

static void agb_wind(const double x[3], double *rho, double m[3]) {
  const double mdot = 1202.3709349768806, vw = 15, rin = 1.5;
  double r = sqrt(x[0] * x[0] + x[1] * x[1] + x[2] * x[2]), re = r > rin ? r : rin;
  *rho = mdot / (4 * M_PI * re * re * vw);
  for (int d = 0; d < 3; d++) m[d] = *rho * vw * x[d] / re;
}

static ce_model *load_agb(void) {
  char p[1024];
  snprintf(p, sizeof p, "%s/amrvac/agbwind3d_0000.dat", data_dir);
  ce_model *m = NULL;
  CHECK_OK(model_load(p, NULL, &m));
  return m;
}

/* The expected 64^3 fields: each leaf cell's analytic value injected into
 * the finest grid (independent of the locator). */
static void expected_grid(double *rho, double *mom /* 3 per cell */) {
  char p[1024];
  snprintf(p, sizeof p, "%s/amrvac/agbwind3d_0000.dat", data_dir);
  amrvac_snapshot s;
  CHECK_OK(amrvac_open(p, &s));
  for (int l = 0; l < s.h.nleafs; l++) {
    int f = s.leaves[l].id.level == 1 ? 2 : 1;
    double dx[3];
    amrvac_cell_size(&s.h, s.leaves[l].id.level, dx);
    for (int k = 0; k < 8; k++)
      for (int j = 0; j < 8; j++)
        for (int i = 0; i < 8; i++) {
          int ii[3] = {i, j, k};
          double x[3], r, m[3];
          for (int d = 0; d < 3; d++)
            x[d] = s.h.xmin[d] + ((s.leaves[l].id.ig[d] - 1) * 8 + ii[d] + 0.5) * dx[d];
          agb_wind(x, &r, m);
          for (int a = 0; a < f; a++)
            for (int b = 0; b < f; b++)
              for (int c = 0; c < f; c++) {
                int g[3];
                for (int d = 0; d < 3; d++)
                  g[d] = ((s.leaves[l].id.ig[d] - 1) * 8 + ii[d]) * f + (d == 0 ? a : d == 1 ? b : c);
                size_t o = ((size_t)g[0] * 64 + g[1]) * 64 + g[2];
                rho[o] = r;
                for (int d = 0; d < 3; d++) mom[3 * o + d] = m[d];
              }
        }
  }
  amrvac_free(&s);
}

static void test_agb_cube_exact(void) {
  ce_model *m = load_agb();
  if (!m) return;
  size_t N = 64 * 64 * 64;
  double *rho = malloc(N * 8), *mom = malloc(3 * N * 8);
  float *v = malloc(N * 4), *T = malloc(N * 4), *n = malloc(N * 4);
  expected_grid(rho, mom);
  sampler_opts o;
  sampler_defaults(&o);
  o.reconstruction = SAMPLER_CONSTANT; /* the cells themselves (test_recon.c: linear) */
  o.edge = 32 * AU;
  o.k = 1;
  o.fill_background = 1;
  /* identity: v_los = v_z; 90 degrees about y: v_los = v_x; -90 about x: v_los = v_y */
  double axes[3][3] = {{0, 1, 0}, {1, 0, 0}, {0, 0, 1}};
  double angles[3] = {M_PI / 2, -M_PI / 2, 0};
  int comp[3] = {0, 1, 2};
  double worst_n = 0, worst_v = 0;
  for (int t = 0; t < 3; t++) {
    double q[4], R[9];
    dir_axis_angle(axes[t], angles[t], q);
    dir_matrix(q, R);
    CHECK_CLOSE(R[2 + 3 * comp[t]], 1.0, 1e-15, 0); /* the line of sight is the model axis comp */
    CHECK_OK(sample_cube(m, q, &o, v, T, n));
    for (int ix = 0; ix < 64; ix++)
      for (int iy = 0; iy < 64; iy++)
        for (int iz = 0; iz < 64; iz++) {
          /* model cell of this voxel: x = R u, in cell units */
          double u[3] = {ix - 31.5, iy - 31.5, iz - 31.5}, x[3];
          int g[3];
          for (int d = 0; d < 3; d++) {
            x[d] = R[3 * d] * u[0] + R[3 * d + 1] * u[1] + R[3 * d + 2] * u[2];
            g[d] = (int)lround(x[d] + 31.5);
          }
          size_t e = ((size_t)g[0] * 64 + g[1]) * 64 + g[2], c = ((size_t)ix * 64 + iy) * 64 + iz;
          double n_exp = 1e-4 * 0.5 * rho[e] * 1e15; /* n_H = rho_code * 1e9 cm^-3 */
          double v_exp = mom[3 * e + comp[t]] / rho[e] * 1e3;
          worst_n = fmax(worst_n, fabs(n[c] - n_exp) / n_exp);
          worst_v = fmax(worst_v, fabs(v[c] - v_exp) / 15e3);
        }
  }
  /* float32 output: round-off is 2^-24 relative */
  CHECK_MSG(worst_n < 1.2e-7, "n_CO: largest relative difference %g", worst_n);
  CHECK_MSG(worst_v < 1.2e-7, "v: largest difference %g of v_w", worst_v);
  free(rho);
  free(mom);
  free(v);
  free(T);
  free(n);
  model_free(m);
}

/* A 90-degree rotation permutes the cube exactly (k = 1, and k = 2 to
 * round-off of the summation order). */
static void test_permutation(void) {
  ce_model *m = load_agb();
  if (!m) return;
  const int n = 32;
  size_t N = (size_t)n * n * n;
  float *a[3], *b[3];
  for (int i = 0; i < 3; i++) {
    a[i] = malloc(N * 4);
    b[i] = malloc(N * 4);
  }
  sampler_opts o;
  sampler_defaults(&o);
  o.reconstruction = SAMPLER_CONSTANT; /* cell values: exact permutations, leaf values */
  o.n = n;
  o.edge = 16 * AU;
  o.ball_radius = 16 * AU;
  double id[4] = {1, 0, 0, 0}, q[4];
  dir_axis_angle((double[3]){0, 0, 1}, M_PI / 2, q); /* about z: x -> y */
  for (int k = 1; k <= 2; k++) {
    o.k = k;
    CHECK_OK(sample_cube(m, id, &o, a[0], a[1], a[2]));
    CHECK_OK(sample_cube(m, q, &o, b[0], b[1], b[2]));
    /* x = R u: u = (ux, uy, uz) -> (-uy, ux, uz), so b[ix][iy][iz] = a[n-1-iy][ix][iz] */
    double worst = 0;
    int exact = 1;
    for (int ix = 0; ix < n; ix++)
      for (int iy = 0; iy < n; iy++)
        for (int iz = 0; iz < n; iz++) {
          size_t cb = ((size_t)ix * n + iy) * n + iz, ca = ((size_t)(n - 1 - iy) * n + ix) * n + iz;
          for (int f = 0; f < 3; f++) {
            if (a[f][ca] != b[f][cb]) exact = 0;
            double s = f == 0 ? 15e3 : fabs(a[f][ca]) + 1e-30;
            worst = fmax(worst, fabs(a[f][ca] - b[f][cb]) / s);
          }
        }
    if (k == 1) CHECK_MSG(exact, "k = 1: the rotated cube is not an exact permutation (%g)", worst);
    CHECK_MSG(worst < 1e-6, "k = %d: largest relative difference %g", k, worst);
  }
  /* identity reproduces leaf values: the voxel holds the value of the cell at its centre */
  o.k = 1;
  CHECK_OK(sample_cube(m, id, &o, a[0], a[1], a[2]));
  double c[3];
  model_centre(m, c);
  model_cache cache = {0};
  int bad = 0;
  for (int ix = 0; ix < n; ix += 3)
    for (int iy = 0; iy < n; iy += 5)
      for (int iz = 0; iz < n; iz++) {
        double x[3] = {c[0] + (ix - 15.5) * 0.5 * AU, c[1] + (iy - 15.5) * 0.5 * AU,
                       c[2] + (iz - 15.5) * 0.5 * AU};
        int64_t cell = model_locate(m, x, &cache);
        size_t ca = ((size_t)ix * n + iy) * n + iz;
        if (cell < 0 || a[2][ca] != (float)m->cells[cell * MODEL_NF + MODEL_N] ||
            a[1][ca] != (float)m->cells[cell * MODEL_NF + MODEL_T] ||
            a[0][ca] != (float)m->cells[cell * MODEL_NF + MODEL_VZ])
          bad++;
      }
  CHECK(bad == 0);
  for (int i = 0; i < 3; i++) {
    free(a[i]);
    free(b[i]);
  }
  model_free(m);
}

/* A spherically symmetric Gaussian cloud on a 3-level forest refined near
 * the centre. */
static void cloud(const double x[3], double w[5], void *user) {
  double r2 = x[0] * x[0] + x[1] * x[1] + x[2] * x[2];
  w[0] = exp(-r2 / 4.0);
  w[1] = w[2] = w[3] = 0;
  w[4] = w[0] / (2.0 / 3.0); /* p = rho */
}
static int refine_centre(const amrvac_block_id *id, void *user) {
  /* level-1 blocks of 4 cells in a [-8, 8]^3 box of 16 cells: refine those within 4 of 0 */
  double h = 16.0 / 4 / (1 << (id->level - 1));
  for (int d = 0; d < 3; d++) {
    double lo = -8 + (id->ig[d] - 1) * h, hi = lo + h;
    if (hi < -4 || lo > 4) return 0;
  }
  return 1;
}

static void test_mass_invariance(void) {
  amrvac_snapshot s;
  CHECK_OK(model_synthetic_snapshot((int[3]){16, 16, 16}, (int[3]){4, 4, 4},
                                    (double[3]){-8, -8, -8}, (double[3]){8, 8, 8}, 3, 5.0 / 3,
                                    refine_centre, NULL, cloud, NULL, &s));
  units u = test_units();
  ce_model *m;
  CHECK_OK(model_from_snapshot(&s, &u, &m));
  amrvac_free(&s);
  if (!m) return;
  /* voxels of 0.25 = the finest cells: at identity the k^3 sub-samples
   * weigh every cell equally (point sub-sampling of cells that do not
   * align with the voxels aliases, about 1.5% here for n = 40) */
  int n = 36;
  size_t N = (size_t)n * n * n;
  float *v = malloc(N * 4), *T = malloc(N * 4), *nc = malloc(N * 4);
  sampler_opts o;
  sampler_defaults(&o);
  o.reconstruction = SAMPLER_CONSTANT; /* linear: test_recon.c */
  o.n = n;
  o.ball_radius = 8;
  o.edge = 9;
  double mass[9], h3 = pow(o.edge / n, 3);
  for (int t = 0; t < 9; t++) {
    double q[4];
    dir_quaternion(DIR_HAAR, 7, 0, (uint32_t)t, q);
    if (t == 0) q[0] = 1, q[1] = q[2] = q[3] = 0;
    CHECK_OK(sample_cube(m, q, &o, v, T, nc));
    double sum = 0;
    for (size_t i = 0; i < N; i++) sum += nc[i];
    mass[t] = sum * h3;
    /* T = mu m_H p / (rho k_B) with p = rho (code = SI here): constant */
    CHECK_CLOSE(T[N / 2 + n / 2], 2.3 * UNITS_M_H / UNITS_K_B, 1e-6, 0);
  }
  /* the exact mass within the cube: integral of 0.5 exp(-r^2/4) over [-a, a]^3 */
  double a = o.edge / 2, one = sqrt(M_PI * 4) * erf(a / 2);
  double exact = 0.5 * one * one * one;
  fprintf(stderr, "mass: exact %.6f identity %.6f", exact, mass[0]);
  for (int t = 1; t < 9; t++) fprintf(stderr, " %.6f", mass[t]);
  fprintf(stderr, "\n");
  for (int t = 0; t < 9; t++) CHECK_CLOSE(mass[t], exact, 0.003, 0);
  /* rotations change the mass only by the resampling error (docs/sampling.md) */
  for (int t = 1; t < 9; t++) CHECK_CLOSE(mass[t], mass[0], 0.003, 0);
  /* the ball check */
  o.edge *= 1.2;
  CHECK_ERR(sample_cube(m, (double[4]){1, 0, 0, 0}, &o, v, T, nc), "outside the ball");
  o.fill_background = 1;
  CHECK_OK(sample_cube(m, (double[4]){1, 0, 0, 0}, &o, v, T, nc));
  CHECK(nc[0] == 0); /* the corner is outside the ball: background */
  free(v);
  free(T);
  free(nc);
  model_free(m);
}

/* Kolmogorov-Smirnov distance of cos(theta) samples from uniform on [-1, 1]. */
static double ks_uniform(double *c, int n) {
  qsort(c, (size_t)n, sizeof *c, ce_cmp_double);
  double D = 0;
  for (int i = 0; i < n; i++) {
    double F = (c[i] + 1) / 2;
    D = fmax(D, fmax(fabs(F - (double)i / n), fabs((double)(i + 1) / n - F)));
  }
  return D;
}

static void test_directions(void) {
  enum { N = 20000 };
  static double cz[N];
  dir_sampler s;
  CHECK_OK(dir_parse("haar", &s));
  CHECK(s == DIR_HAAR);
  CHECK_ERR(dir_parse("random", &s), "expected haar, faceon, lowdisc or coemunet");
  double mean[4] = {0}, D[4];
  for (int smp = 0; smp < 4; smp++) {
    for (int i = 0; i < N; i++) {
      double q[4], R[9];
      dir_quaternion((dir_sampler)smp, 12345, 3, (uint32_t)i, q);
      CHECK_CLOSE(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3], 1, 1e-14, 0);
      dir_matrix(q, R);
      cz[i] = R[8];
      mean[smp] += R[8] / N;
    }
    D[smp] = ks_uniform(cz, N);
  }
  /* haar: E[R_zz] = 0 (sd 1/sqrt(3N) = 0.004); KS at 1% significance: 1.63/sqrt(N) = 0.0115 */
  CHECK_MSG(fabs(mean[DIR_HAAR]) < 0.02, "haar mean R_zz %g", mean[DIR_HAAR]);
  CHECK_MSG(D[DIR_HAAR] < 1.63 / sqrt(N), "haar KS distance %g", D[DIR_HAAR]);
  CHECK_CLOSE(mean[DIR_FACEON], 1, 1e-12, 0);
  /* lowdisc: far more uniform than random */
  CHECK_MSG(D[DIR_LOWDISC] < 0.002, "lowdisc KS distance %g", D[DIR_LOWDISC]);
  /* coemunet: mean cos = 1/3, clearly not uniform */
  CHECK_MSG(fabs(mean[DIR_COEMUNET] - 1.0 / 3) < 0.02, "coemunet mean R_zz %g", mean[DIR_COEMUNET]);
  CHECK_MSG(D[DIR_COEMUNET] > 0.1, "coemunet KS distance %g", D[DIR_COEMUNET]);
  /* reproducible and keyed: same key, same draw; another model, another draw */
  double q1[4], q2[4], q3[4];
  dir_quaternion(DIR_HAAR, 1, 2, 3, q1);
  dir_quaternion(DIR_HAAR, 1, 2, 3, q2);
  dir_quaternion(DIR_HAAR, 1, 5, 3, q3);
  CHECK(!memcmp(q1, q2, sizeof q1) && memcmp(q1, q3, sizeof q1) != 0);
  /* lowdisc: the roll does not move the line of sight off the sequence */
  dir_quaternion(DIR_LOWDISC, 1, 2, 0, q1);
  CHECK_CLOSE(q1[0] * q1[0] + q1[1] * q1[1] + q1[2] * q1[2] + q1[3] * q1[3], 1, 1e-14, 0);
}

static void uniform_state(const double x[3], double w[5], void *user) {
  w[0] = 2;
  w[1] = 2 * 1;
  w[2] = 2 * -2;
  w[3] = 2 * 3;
  w[4] = 3 / (2.0 / 3.0) + 0.5 * 2 * 14;
}
static int refine_low_x(const amrvac_block_id *id, void *user) { return id->ig[0] == 1; }

static void test_compat(void) {
  amrvac_snapshot s;
  CHECK_OK(model_synthetic_snapshot((int[3]){32, 32, 32}, (int[3]){8, 8, 8},
                                    (double[3]){-16, -16, -16}, (double[3]){16, 16, 16}, 2, 5.0 / 3,
                                    refine_low_x, NULL, uniform_state, NULL, &s));
  units u = test_units();
  ce_model *m;
  CHECK_OK(model_from_snapshot(&s, &u, &m));
  amrvac_free(&s);
  if (!m) return;
  size_t N = 64 * 64 * 64;
  float *v = malloc(N * 4), *T = malloc(N * 4), *n = malloc(N * 4);
  double q[4], R[9], dx, voxel;
  dir_quaternion(DIR_COEMUNET, 9, 1, 4, q);
  dir_matrix(q, R);
  CHECK_OK(compat_grid(m, q, 10.3, v, T, n, &dx, &voxel));
  CHECK_CLOSE(dx, 2 * voxel, 1e-15, 0);
  double vl = R[2] * 1 + R[5] * -2 + R[8] * 3;
  int bad = 0;
  for (size_t i = 0; i < N; i++)
    bad += fabs(v[i] - vl) > 1e-5 || fabs(n[i] - 1.0) > 1e-6 ||
           fabs(T[i] - 2.3 * UNITS_M_H * 1.5 / UNITS_K_B) > 1e-5 * T[i];
  CHECK_MSG(bad == 0, "%d voxels differ from the uniform state", bad);
  /* identity on the level-1 grid (cells of 1): the z extent of the centres within
   * r = 10.3 is 2 * 9.5, so the 128 box has voxels of 19/128 and dx = 19/64 */
  CHECK_OK(compat_grid(m, (double[4]){1, 0, 0, 0}, 10.3, v, T, n, &dx, &voxel));
  CHECK_CLOSE(dx, 19.0 / 64, 1e-14, 0);
  CHECK_ERR(compat_grid(m, (double[4]){1, 0, 0, 0}, 0.1, v, T, n, &dx, &voxel), "no cell centre");
  free(v);
  free(T);
  free(n);
  model_free(m);
}

/* Parent fill against a brute-force reading of the rule: a 16^3-cell model
 * binned into 128^3 leaves most bins empty; each output voxel must be the
 * mean of the points in its smallest non-empty ancestor bin. */
static void gradient_state(const double x[3], double w[5], void *user) {
  w[0] = 1 + 0.05 * x[0] + 0.02 * x[1] + 0.01 * x[2];
  w[1] = w[2] = 0;
  w[3] = w[0] * (x[0] - x[2]); /* v_z = x - z */
  w[4] = 1.5 * w[0] + 0.5 * w[3] * w[3] / w[0];
}
static int refine_never(const amrvac_block_id *id, void *user) { return 0; }

static void test_compat_parent_fill(void) {
  amrvac_snapshot s;
  CHECK_OK(model_synthetic_snapshot((int[3]){16, 16, 16}, (int[3]){8, 8, 8},
                                    (double[3]){-8, -8, -8}, (double[3]){8, 8, 8}, 1, 5.0 / 3,
                                    refine_never, NULL, gradient_state, NULL, &s));
  units u = test_units();
  ce_model *m;
  CHECK_OK(model_from_snapshot(&s, &u, &m));
  amrvac_free(&s);
  if (!m) return;
  size_t N = 64 * 64 * 64;
  float *v = malloc(N * 4), *T = malloc(N * 4), *n = malloc(N * 4);
  double q[4] = {1, 0, 0, 0}, dx, voxel, R = 7.9;
  CHECK_OK(compat_grid(m, q, R, v, T, n, &dx, &voxel));
  /* the points: centres (i + 0.5 - 8) within R; the box spans them per axis */
  static double pts[4096][3], val[4096][2];
  double lo[3] = {1e9, 1e9, 1e9}, hi[3] = {-1e9, -1e9, -1e9};
  int np = 0;
  for (int i = 0; i < 16; i++)
    for (int j = 0; j < 16; j++)
      for (int k = 0; k < 16; k++) {
        double x[3] = {i - 7.5, j - 7.5, k - 7.5}, w[5];
        if (x[0] * x[0] + x[1] * x[1] + x[2] * x[2] > R * R) continue;
        gradient_state(x, w, NULL);
        for (int d = 0; d < 3; d++) {
          pts[np][d] = x[d];
          lo[d] = fmin(lo[d], x[d]);
          hi[d] = fmax(hi[d], x[d]);
        }
        val[np][0] = 0.5 * w[0]; /* n_CO = co 0.5 n_H, all units 1 */
        val[np][1] = w[3] / w[0];
        np++;
      }
  static int bin[4096][3];
  for (int p = 0; p < np; p++)
    for (int d = 0; d < 3; d++) {
      int b = (int)floor((pts[p][d] - lo[d]) / (hi[d] - lo[d]) * 128);
      bin[p][d] = b > 127 ? 127 : b;
    }
  int bad = 0, checked = 0;
  for (int t = 0; t < 600; t++) {
    int o[3] = {(t * 37) % 64, (t * 11 + 5) % 64, (t * 7 + 3) % 64};
    for (int L = 7; L >= 0; L--) {
      double sn = 0, sv = 0;
      int cnt = 0;
      for (int p = 0; p < np; p++) {
        int same = 1;
        for (int d = 0; d < 3; d++) same &= (bin[p][d] >> (7 - L)) == ((o[d] + 32) >> (7 - L));
        if (same) sn += val[p][0], sv += val[p][1], cnt++;
      }
      if (!cnt) continue;
      size_t at = ((size_t)o[0] * 64 + o[1]) * 64 + o[2];
      bad += fabs(n[at] - sn / cnt) > 1e-6 * (sn / cnt) || fabs(v[at] - sv / cnt) > 1e-5;
      checked++;
      break;
    }
  }
  CHECK(checked == 600);
  CHECK_MSG(bad == 0, "%d of 600 voxels differ from the brute-force parent fill", bad);
  CHECK_CLOSE(dx, (hi[2] - lo[2]) / 64, 1e-14, 0);
  free(v);
  free(T);
  free(n);
  model_free(m);
}

static void test_refusals(void) {
  char p[1024], up[1024];
  snprintf(p, sizeof p, "%s/amrvac/thirdparty_WR_2D_0004.dat", data_dir);
  snprintf(up, sizeof up, "%s/amrvac/agbwind3d_0000.units.yaml", data_dir);
  ce_model *m;
  CHECK_ERR(model_load(p, up, &m), "ndim = 2");
  snprintf(p, sizeof p, "%s/amrvac/bw3d_amr_0000.dat", data_dir);
  CHECK_ERR(model_load(p, NULL, &m), "no units sidecar");
  /* a wrong path is named as such, not as a missing sidecar */
  snprintf(p, sizeof p, "%s/amrvac/no_such_0000.dat", data_dir);
  CHECK_ERR(model_load(p, NULL, &m), "no_such_0000.dat: cannot open the snapshot: No such file");
  snprintf(p, sizeof p, "%s/amrvac/bw3d_amr_0000.dat", data_dir);
  CHECK_OK(model_load(p, up, &m));
  if (m) {
    CHECK_CLOSE(model_half_extent(m), 1 * 1.495978707e11, 1e-14, 0);
    double c[3];
    model_centre(m, c);
    CHECK_CLOSE(c[0], 1.5 * 1.495978707e11, 1e-14, 0);
    model_free(m);
  }
  amrvac_header h = {.ndim = 3, .ndir = 3};
  snprintf(h.geometry, sizeof h.geometry, "spherical_3D");
  CHECK_ERR(model_check_usable(&h, NULL, "x"), "only Cartesian");
  snprintf(h.geometry, sizeof h.geometry, "Cartesian_3D");
  h.staggered = 1;
  CHECK_ERR(model_check_usable(&h, NULL, "x"), "staggered");
  h.staggered = 0;
  units u = test_units();
  u.stretched = 1;
  CHECK_ERR(model_check_usable(&h, &u, "x"), "stretched");
}

/* ---------------------------------------------------------------------- */
/* The sampler's per-thread bodies (rotate/sampler_body.h and
 * sampler_body_linear.h, what a device runs), driven by a plain loop over
 * thread indices: the bits of sample_cube, exact by construction (the same
 * arithmetic in the same order), for the constant, linear and limited
 * reconstructions, on models with power-of-two and other block sizes, 2 and
 * 3 levels, k = 1, 2, 3, with and without a ball and a background fill, at
 * the identity and at Philox-drawn Haar directions. */

static int bodies_case(const ce_model *m, const sampler_opts *o, const double q[4],
                       const char *what) {
  const size_t n = (size_t)o->n, N = n * n * n;
  float *a[3], *b[3];
  for (int i = 0; i < 3; i++) a[i] = malloc(N * 4), b[i] = malloc(N * 4);
  void *scratch = NULL;
  int32_t *geo = NULL;
  sampler_flat F;
  sampler_geo G;
  int same = -1;
  CHECK_OK(sample_cube(m, q, o, a[0], a[1], a[2]));
  if (sampler_flatten(m, &F, &geo) == 0 && sampler_geometry(m, q, o, &G) == 0 &&
      (scratch = malloc((size_t)sb_scratch_bytes(&G)))) {
    sampler_body_run_host(&F, &G, scratch, b[0], b[1], b[2]);
    same = 1;
    for (int i = 0; i < 3; i++) {
      if (memcmp(a[i], b[i], N * 4)) {
        size_t j = 0;
        while (!memcmp(&a[i][j], &b[i][j], 4)) j++;
        CHECK_FAIL_("%s (%s, n %d, k %d, fill %d): bodies differ from sample_cube in array %d at "
                    "%zu: %.9g vs %.9g", what, sampler_recon_name(o->reconstruction), o->n, o->k,
                    o->fill_background, i, j, b[i][j], a[i][j]);
        same = 0;
      }
    }
  }
  for (int i = 0; i < 3; i++) free(a[i]), free(b[i]);
  free(scratch), free(geo);
  return same;
}

static int refine_centre6(const amrvac_block_id *id, void *user) {
  /* blocks of 6 cells in a [-9, 9]^3 box of 18 cells: refine those within 4 of 0 */
  double h = 18.0 / 3 / (1 << (id->level - 1));
  for (int d = 0; d < 3; d++) {
    double lo = -9 + (id->ig[d] - 1) * h, hi = lo + h;
    if (hi < -4 || lo > 4) return 0;
  }
  return 1;
}

static void test_bodies(void) {
  ce_model *models[3] = {load_agb(), NULL, NULL};
  amrvac_snapshot s;
  units u = test_units();
  CHECK_OK(model_synthetic_snapshot((int[3]){16, 16, 16}, (int[3]){4, 4, 4},
                                    (double[3]){-8, -8, -8}, (double[3]){8, 8, 8}, 3, 5.0 / 3,
                                    refine_centre, NULL, cloud, NULL, &s));
  CHECK_OK(model_from_snapshot(&s, &u, &models[1]));
  amrvac_free(&s);
  CHECK_OK(model_synthetic_snapshot((int[3]){18, 18, 18}, (int[3]){6, 6, 6},
                                    (double[3]){-9, -9, -9}, (double[3]){9, 9, 9}, 2, 5.0 / 3,
                                    refine_centre6, NULL, cloud, NULL, &s));
  CHECK_OK(model_from_snapshot(&s, &u, &models[2]));
  amrvac_free(&s);
  const char *names[3] = {"agbwind3d_0000 (blocks 2^k)", "cloud, 3 levels, blocks of 4",
                          "cloud, blocks of 6"};
  int cases = 0, same = 0;
  for (int mi = 0; mi < 3; mi++) {
    ce_model *m = models[mi];
    if (!m) continue;
    CHECK(mi != 2 || m->bshift < 0); /* the general (division) path of the locator */
    double half = model_half_extent(m);
    for (int recon = 0; recon < 3; recon++)
    for (int k = 1; k <= 3; k++)
      for (int fill = 0; fill < 2; fill++) {
        sampler_opts o;
        sampler_defaults(&o);
        o.reconstruction = recon; /* constant, linear, limited */
        o.n = k == 3 ? 12 : 20;
        o.k = k;
        o.ball_radius = half;
        /* inside the ball, or (fill) reaching past it and past the domain */
        o.edge = fill ? 1.9 * half : 1.1 * half;
        o.fill_background = fill;
        o.bg_n = fill ? 3.0 : 0, o.bg_T = fill ? 20.0 : 0;
        for (int t = 0; t < 4; t++) {
          double q[4] = {1, 0, 0, 0};
          if (t) dir_quaternion(DIR_HAAR, 11, (uint32_t)mi, (uint32_t)t, q);
          int r = bodies_case(m, &o, q, names[mi]);
          cases++;
          same += r == 1;
        }
      }
    model_free(m);
  }
  fprintf(stderr, "  sampler bodies on the host: %d of %d cubes bit-identical to sample_cube\n",
          same, cases);
  CHECK(cases == 3 * 3 * 3 * 2 * 4 && same == cases);
}

/* The sampler on a CUDA device: the bits of sample_cube for a batch of
 * directions, constant, linear and limited (one handle opened for limited
 * samples all three), where a device runs (bitwise: the
 * device runs the bodies above, the same float and double operations with
 * the fused steps explicit and no contraction, --fmad=false); elsewhere
 * (CI) a clear error. With COEMU_REQUIRE_DEVICE set (scripts/gpu-check.sh)
 * the device must run. */
static void test_device_sampler(void) {
  ce_model *m = load_agb();
  if (!m) return;
  sampler_device *d = NULL;
  char desc[320] = "";
  if (sampler_device_open(m, SAMPLER_LIMITED, 0, &d, desc, sizeof desc) < 0) {
    const char *e = ce_err_msg();
    fprintf(stderr, "  device sampler: %s\n", e);
    CHECK_MSG(strstr(e, "sampler device 'cuda'") &&
                  (strstr(e, "no CUDA device") || strstr(e, "is not built into this coemu")),
              "%s", e);
    CHECK_MSG(!getenv("COEMU_REQUIRE_DEVICE"), "COEMU_REQUIRE_DEVICE is set: %s", e);
    model_free(m);
    return;
  }
  fprintf(stderr, "  device sampler: %s\n", desc);
  enum { NB = 5 };
  int cases = 0, same = 0;
  for (int recon = 0; recon < 3; recon++)
  for (int k = 1; k <= 3; k++)
    for (int fill = 0; fill < 2; fill++) {
      sampler_opts o;
      sampler_defaults(&o);
      o.reconstruction = recon;
      double half = model_half_extent(m);
      o.n = 24, o.k = k, o.ball_radius = half, o.edge = fill ? 1.9 * half : 1.1 * half;
      o.fill_background = fill, o.bg_n = fill ? 3.0 : 0, o.bg_T = fill ? 20.0 : 0;
      size_t N = (size_t)o.n * o.n * o.n;
      double q[NB][4];
      float *dv[NB], *dT[NB], *dn[NB], *cv = malloc(N * 4), *cT = malloc(N * 4), *cn = malloc(N * 4);
      for (int c = 0; c < NB; c++) {
        dir_quaternion(DIR_HAAR, 5, (uint32_t)k, (uint32_t)c, q[c]);
        dv[c] = malloc(N * 4), dT[c] = malloc(N * 4), dn[c] = malloc(N * 4);
      }
      CHECK_OK(sampler_device_sample(d, NB, (const double(*)[4])q, &o, dv, dT, dn));
      for (int c = 0; c < NB; c++) {
        CHECK_OK(sample_cube(m, q[c], &o, cv, cT, cn));
        int ok = !memcmp(cv, dv[c], N * 4) && !memcmp(cT, dT[c], N * 4) && !memcmp(cn, dn[c], N * 4);
        CHECK_MSG(ok, "device sampler, %s k %d fill %d direction %d: differs from sample_cube",
                  sampler_recon_name(o.reconstruction), k, fill, c);
        cases++, same += ok;
        free(dv[c]), free(dT[c]), free(dn[c]);
      }
      free(cv), free(cT), free(cn);
    }
  fprintf(stderr, "  device sampler: %d of %d cubes bit-identical to sample_cube\n", same, cases);
  CHECK(cases == 3 * 3 * 2 * NB && same == cases);
  sampler_device_close(d);
  /* a handle opened for another reconstruction has no limited records */
  CHECK_OK(sampler_device_open(m, SAMPLER_CONSTANT, 0, &d, NULL, 0));
  if (d) {
    sampler_opts o;
    sampler_defaults(&o);
    o.reconstruction = SAMPLER_LIMITED, o.n = 8, o.edge = model_half_extent(m);
    float v[512], T[512], n[512], *pv[1] = {v}, *pT[1] = {T}, *pn[1] = {n};
    CHECK_ERR(sampler_device_sample(d, 1, (const double(*)[4]) & (double[4]){1, 0, 0, 0}, &o, pv,
                                    pT, pn),
              "open the device sampler for limited");
    sampler_device_close(d);
  }
  model_free(m);
}

int main(void) {
  data_dir = getenv("COEMU_TEST_DATA");
  if (!data_dir) data_dir = "tests/data";
  RUN(test_agb_cube_exact);
  RUN(test_permutation);
  RUN(test_mass_invariance);
  RUN(test_directions);
  RUN(test_compat);
  RUN(test_compat_parent_fill);
  RUN(test_refusals);
  RUN(test_bodies);
  RUN(test_device_sampler);
  return check_report();
}
