/* test_recon.c - the sampler's linear reconstruction (docs/sampling.md):
 * exact on fields whose interpolated variables (ln n, ln T, v) are linear,
 * across AMR levels; continuous across a coarse-fine face (where the
 * constant reconstruction jumps: the check can fail); the CO mass of a
 * cloud within the derived bound of the constant reconstruction's.
 *
 * Tolerances: the reconstruction works in float32: corner values rounded
 * once, then 7 lerps a + f (b - a) (z, then x, then y), each a rounded
 * difference and a rounded fused multiply-add. With f in [0, 1] a lerp's
 * result is a convex combination, so an error in a or b is carried with
 * weight <= 1, and each lerp adds at most 2 roundings of its own (of
 * |b - a| and of the result, both below the field's largest magnitude):
 * along the 3-deep tree, the corner rounding plus 6 roundings, each at
 * most 2^-22 = 2.4e-7 for values below 2^2 (ln n, ln T; sampler version
 * 2's monomial form had ~20), then expf (relative error ~1e-7): < 2e-6
 * relative, checked at 1e-5 as before (room for the two terms below);
 * velocities the same relative to their largest magnitude. Two
 * more terms: v_los is projected at the corners (l . v in double, rounded
 * once: one rounding of |v|), and a point's place in its cell is stepped
 * in float from its leaf run's first point (three roundings of values
 * below the block's 4 cells: < 1e-6 of a cell), times the field's change
 * across a cell (here below 0.45 in ln n and 700 m/s in v: < 5e-7 and
 * < 3e-7 of 3000 m/s). Measured worst: 1.4e-6 (T), 2.3e-7 (n), 1.1e-7 (v). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "rotate/directions.h"
#include "rotate/model.h"
#include "rotate/sampler.h"
#include "model_fixture.h"

/* level-1 blocks of 4 cells in [-8, 8]^3 (16 cells): refine those within 4 of 0 */
static int refine_centre(const amrvac_block_id *id, void *user) {
  double h = 16.0 / 4 / (1 << (id->level - 1));
  for (int d = 0; d < 3; d++) {
    double lo = -8 + (id->ig[d] - 1) * h, hi = lo + h;
    if (hi < -4 || lo > 4) return 0;
  }
  return 1;
}

static ce_model *build(const int nx, const double half, int levmax, amrvac_refine_fn refine,
                       model_state_fn state, units_map *map) {
  amrvac_snapshot s;
  if (model_synthetic_snapshot((int[3]){nx, nx, nx}, (int[3]){4, 4, 4},
                               (double[3]){-half, -half, -half}, (double[3]){half, half, half},
                               levmax, 5.0 / 3, refine, NULL, state, NULL, &s) < 0) {
    CHECK_MSG(0, "snapshot: %s", ce_err_msg());
    return NULL;
  }
  units u = test_units();
  ce_model *m = NULL;
  CHECK_OK(model_from_snapshot(&s, &u, &m));
  if (map) CHECK_OK(units_map_make(&u, &s.h, map));
  amrvac_free(&s);
  return m;
}

/* The voxels of the exact fields: the sub-samples as the sampler places
 * them, n their plain mean, T and v_los n-weighted means. */
static void expected_voxel(const units_map *map, model_state_fn state, const double R[9], int n,
                           int k, double edge, int ix, int iy, int iz, double out[3]) {
  double w = 0, wT = 0, wv = 0;
  for (int a = 0; a < k; a++)
    for (int b = 0; b < k; b++)
      for (int c = 0; c < k; c++) {
        double u[3] = {((ix + (a + 0.5) / k) / n - 0.5) * edge,
                       ((iy + (b + 0.5) / k) / n - 0.5) * edge,
                       ((iz + (c + 0.5) / k) / n - 0.5) * edge};
        double x[3], st[5], nn, T, v[3];
        for (int d = 0; d < 3; d++) x[d] = R[3 * d] * u[0] + R[3 * d + 1] * u[1] + R[3 * d + 2] * u[2];
        state(x, st, NULL);
        units_cell(map, st, 1, &nn, &T, v);
        w += nn;
        wT += nn * T;
        wv += nn * (R[2] * v[0] + R[5] * v[1] + R[8] * v[2]);
      }
  out[0] = wv / w;
  out[1] = wT / w;
  out[2] = w / (k * k * k);
}

static void test_linear_exact(void) {
  units_map map;
  ce_model *m = build(16, 8, 3, refine_centre, linear_state, &map);
  if (!m) return;
  CHECK(m->levmax == 3);
  const int n = 20;
  size_t N = (size_t)n * n * n;
  float *c[3];
  for (int f = 0; f < 3; f++) c[f] = malloc(N * 4);
  sampler_opts o;
  sampler_defaults(&o);
  CHECK(o.reconstruction == SAMPLER_LINEAR); /* the default */
  o.n = n;
  o.edge = 7; /* corners 6.06 from the centre: no cell touching the domain's faces */
  o.ball_radius = 8;
  double all[3] = {0, 0, 0};
  for (int t = 0; t < 4; t++)
    for (int k = 1; k <= 2; k++) {
      double q[4], R[9];
      dir_quaternion(DIR_HAAR, 3, 0, (uint32_t)t, q);
      dir_matrix(q, R);
      o.k = k;
      CHECK_OK(sample_cube(m, q, &o, c[0], c[1], c[2]));
      double worst[3] = {0, 0, 0};
      for (int ix = 0; ix < n; ix++)
        for (int iy = 0; iy < n; iy++)
          for (int iz = 0; iz < n; iz++) {
            double e[3];
            expected_voxel(&map, linear_state, R, n, k, o.edge, ix, iy, iz, e);
            size_t at = ((size_t)ix * n + iy) * n + iz;
            worst[0] = fmax(worst[0], fabs(c[0][at] - e[0]) / 3000);
            worst[1] = fmax(worst[1], fabs(c[1][at] - e[1]) / e[1]);
            worst[2] = fmax(worst[2], fabs(c[2][at] - e[2]) / e[2]);
          }
      CHECK_MSG(worst[0] < 1e-5 && worst[1] < 1e-5 && worst[2] < 1e-5,
                "direction %d, k = %d: relative errors v %g, T %g, n %g", t, k, worst[0],
                worst[1], worst[2]);
      for (int f = 0; f < 3; f++) all[f] = fmax(all[f], worst[f]);
    }
  fprintf(stderr, "linear on a linear field: worst relative errors v %.2g, T %.2g, n %.2g\n",
          all[0], all[1], all[2]);
  /* the constant reconstruction is not exact here (the check can fail) */
  o.reconstruction = SAMPLER_CONSTANT;
  o.k = 1;
  double q[4] = {1, 0, 0, 0}, R[9];
  dir_matrix(q, R);
  CHECK_OK(sample_cube(m, q, &o, c[0], c[1], c[2]));
  double worst = 0;
  for (int ix = 0; ix < n; ix++) {
    double e[3];
    expected_voxel(&map, linear_state, R, n, 1, o.edge, ix, 3, 5, e);
    worst = fmax(worst, fabs(c[2][((size_t)ix * n + 3) * n + 5] - e[2]) / e[2]);
  }
  CHECK_MSG(worst > 1e-3, "constant: %g", worst);
  for (int f = 0; f < 3; f++) free(c[f]);
  model_free(m);
}

/* The linear reconstruction with a ball and a background fill: the
 * sub-samples beyond the ball take (bg_n, bg_T, v = 0) exactly, those inside
 * the field (exact on this linear field); k = 1, 2, 3, and 20 voxels per
 * column (the sums go 8 voxels at a time with AVX-512, then one by one).
 * With bg_n = 0 the voxels wholly outside hold no CO and take the plain
 * means, bg_T and 0. The expected voxels follow the rule sub-sample by
 * sub-sample (n plain mean, T and v_los n-weighted, plain where n = 0). */
static void test_linear_fill(void) {
  units_map map;
  ce_model *m = build(16, 8, 3, refine_centre, linear_state, &map);
  if (!m) return;
  const int n = 20;
  size_t N = (size_t)n * n * n;
  float *c[3];
  for (int f = 0; f < 3; f++) c[f] = malloc(N * 4);
  sampler_opts o;
  sampler_defaults(&o);
  o.n = n;
  o.edge = 9; /* corners 7.8 from the centre: beyond the ball, inside the domain */
  o.ball_radius = 5;
  o.fill_background = 1;
  for (int t = 0; t < 4; t++) {
    const int k = 1 + t % 3;
    double q[4], R[9];
    dir_quaternion(DIR_HAAR, 5, 0, (uint32_t)t, q);
    dir_matrix(q, R);
    o.k = k;
    o.bg_n = t == 3 ? 0 : 2e3;
    o.bg_T = 15;
    CHECK_OK(sample_cube(m, q, &o, c[0], c[1], c[2]));
    double worst[3] = {0, 0, 0};
    int outside = 0, bad = 0;
    for (int ix = 0; ix < n; ix++)
      for (int iy = 0; iy < n; iy++)
        for (int iz = 0; iz < n; iz++) {
          double w = 0, wT = 0, wv = 0, pT = 0, in = 0;
          for (int a = 0; a < k; a++)
            for (int b = 0; b < k; b++)
              for (int e = 0; e < k; e++) {
                double u[3] = {((ix + (a + 0.5) / k) / n - 0.5) * o.edge,
                               ((iy + (b + 0.5) / k) / n - 0.5) * o.edge,
                               ((iz + (e + 0.5) / k) / n - 0.5) * o.edge};
                double x[3], st[5], nn = (float)o.bg_n, T = (float)o.bg_T, v[3] = {0, 0, 0};
                for (int d = 0; d < 3; d++)
                  x[d] = R[3 * d] * u[0] + R[3 * d + 1] * u[1] + R[3 * d + 2] * u[2];
                if (x[0] * x[0] + x[1] * x[1] + x[2] * x[2] <= 25) {
                  linear_state(x, st, NULL);
                  units_cell(&map, st, 1, &nn, &T, v);
                  in++;
                }
                w += nn;
                wT += nn * T;
                wv += nn * (R[2] * v[0] + R[5] * v[1] + R[8] * v[2]);
                pT += T;
              }
          const double kkk = k * k * k, ev = w > 0 ? wv / w : 0, eT = w > 0 ? wT / w : pT / kkk,
                       en = w / kkk;
          size_t at = ((size_t)ix * n + iy) * n + iz;
          if (in == 0) { /* wholly outside: the background itself */
            outside++;
            if (!(c[0][at] == 0 && fabs(c[1][at] - eT) <= 1e-6 * eT &&
                  fabs(c[2][at] - en) <= 1e-6 * en) && bad++ < 5)
              fprintf(stderr, "k %d, bg_n %g: voxel %d %d %d outside the ball: v %g T %.9g n %.9g, "
                      "expected 0, %.9g, %.9g\n", k, o.bg_n, ix, iy, iz, c[0][at], c[1][at],
                      c[2][at], eT, en);
            continue;
          }
          worst[0] = fmax(worst[0], fabs(c[0][at] - ev) / 3000);
          worst[1] = fmax(worst[1], fabs(c[1][at] - eT) / eT);
          worst[2] = fmax(worst[2], fabs(c[2][at] - en) / en);
        }
    CHECK_MSG(outside > 100, "direction %d: only %d voxels outside the ball", t, outside);
    CHECK_MSG(bad == 0, "k %d, bg_n %g: %d voxels outside the ball are not the background", k,
              o.bg_n, bad);
    CHECK_MSG(worst[0] < 1e-5 && worst[1] < 1e-5 && worst[2] < 1e-5,
              "direction %d, k = %d, bg_n %g: relative errors v %g, T %g, n %g", t, k, o.bg_n,
              worst[0], worst[1], worst[2]);
  }
  for (int f = 0; f < 3; f++) free(c[f]);
  model_free(m);
}

/* smooth, not linear in any of the interpolated variables */
static void curved_state(const double x[3], double w[5], void *user) {
  double a = x[0] - 0.3, b = x[1] + 0.2;
  double rho = exp(-(a * a + 0.5 * b * b + 0.7 * x[2] * x[2]) / 2);
  double v[3] = {1000 * sin(x[0]), 500 * cos(x[1] + x[0]), 300 * x[2] * x[2]};
  double p = rho * (1 + 0.3 * x[0] * x[0] + 0.1 * x[1]);
  conserved(rho, v, p, w);
}

/* [-4, 4]^3 of 2 x 2 x 2 level-1 blocks of 4 cells; the x < 0 half refined */
static int refine_low_x(const amrvac_block_id *id, void *user) { return id->ig[0] == 1; }

/* linear's arithmetic bit for bit (docs/sampling.md, "Arithmetic"): an
 * unrotated cube at k = 1 whose points lie on dyadic places (edge 4 of
 * 16 voxels in the [-4, 4]^3 of test_seam, base cells 1 and the x < 0 half
 * refined to 1/2: every place in a cell is exact in float, as the sampler
 * steps it, on both levels), so each voxel's v_los is the
 * lerp of the 8 corner v_z of its cell (l = z: the projected corner is v_z
 * itself; v_los = (n v) / n in double is v exactly), in z, then x, then y,
 * each a + f (b - a) in float with one fused multiply-add. Compared
 * exactly; on this field (v_z varies along x, y and z), another form of the same
 * trilinear function (the monomial form of sampler version 2) differs in
 * the last bits of some voxels (the check can fail). */
static float lerp_f(float f, float a, float b) { return fmaf(f, b - a, a); }

/* curved_state with a v_z that varies along x, y and z */
static void arith_state(const double x[3], double w[5], void *user) {
  double a = x[0] - 0.3, b = x[1] + 0.2;
  double rho = exp(-(a * a + 0.5 * b * b + 0.7 * x[2] * x[2]) / 2);
  double v[3] = {0, 0, 1000 * sin(x[0] + 0.7 * x[1] * x[2]) * cos(0.9 * x[2] + 0.3)};
  conserved(rho, v, rho * (1 + 0.3 * x[0] * x[0]), w);
  (void)user;
}

static void test_linear_arithmetic(void) {
  ce_model *m = build(8, 4, 2, refine_low_x, arith_state, NULL);
  if (!m) return;
  const int n = 16;
  size_t N = (size_t)n * n * n;
  float *c[3];
  for (int f = 0; f < 3; f++) c[f] = malloc(N * 4);
  sampler_opts o;
  sampler_defaults(&o);
  o.reconstruction = SAMPLER_LINEAR;
  o.n = n;
  o.k = 1;
  o.edge = 4;
  o.ball_radius = 4;
  const double q[4] = {1, 0, 0, 0};
  CHECK_OK(sample_cube(m, q, &o, c[0], c[1], c[2]));
  const int64_t b0 = m->bnx[0], b1 = m->bnx[1], b2 = m->bnx[2], n0 = b0 + 1, n1 = b1 + 1;
  int bad = 0, levels = 0, other = 0;
  for (int ix = 0; ix < n; ix++)
    for (int iy = 0; iy < n; iy++)
      for (int iz = 0; iz < n; iz++) {
        const int iv[3] = {ix, iy, iz};
        double t[3];
        int64_t fc[3];
        for (int d = 0; d < 3; d++) { /* fine-cell coordinates, exact */
          t[d] = (((iv[d] + 0.5) / n - 0.5) * o.edge - m->xmin[d]) * m->inv_dxf[d];
          fc[d] = (int64_t)t[d];
        }
        model_cache mc;
        CHECK(model_find(m, fc, &mc) >= 0);
        levels |= 1 << mc.shift;
        const int64_t bn[3] = {b0, b1, b2};
        int64_t ic[3];
        float fr[3];
        for (int d = 0; d < 3; d++) {
          const double s = (t[d] - (double)mc.lo[d]) / (double)((int64_t)1 << mc.shift);
          double i = floor(s);
          i = i < 0 ? 0 : i > (double)(bn[d] - 1) ? (double)(bn[d] - 1) : i;
          ic[d] = (int64_t)i;
          fr[d] = (float)fmin(fmax(s - i, 0), 1);
        }
        const model_real *nd = m->nodal + (mc.base / m->ncell) * m->nnodal * MODEL_NODAL_STRIDE;
        float cv[2][2][2]; /* [z][y][x] */
        for (int dz = 0; dz < 2; dz++)
          for (int dy = 0; dy < 2; dy++)
            for (int dx = 0; dx < 2; dx++)
              cv[dz][dy][dx] = nd[((ic[2] + dz) * n1 * n0 + (ic[1] + dy) * n0 + ic[0] + dx) *
                                      MODEL_NODAL_STRIDE + MODEL_VZ];
        float w[2][2]; /* [y][x] */
        for (int dy = 0; dy < 2; dy++)
          for (int dx = 0; dx < 2; dx++) w[dy][dx] = lerp_f(fr[2], cv[0][dy][dx], cv[1][dy][dx]);
        const float x0 = lerp_f(fr[0], w[0][0], w[0][1]), x1 = lerp_f(fr[0], w[1][0], w[1][1]);
        const float e = lerp_f(fr[1], x0, x1);
        { /* the monomial form of version 2 (poly_make, poly_eval), for the check below */
          const float c000 = cv[0][0][0], ex = cv[0][0][1] - c000, ey = cv[0][1][0] - c000,
                      ez = cv[1][0][0] - c000, exy = (cv[0][1][1] - cv[0][1][0]) - ex,
                      exz = (cv[1][0][1] - cv[1][0][0]) - ex, eyz = (cv[1][1][0] - cv[1][0][0]) - ey,
                      exyz = ((cv[1][1][1] - cv[1][1][0]) - (cv[1][0][1] - cv[1][0][0])) - exy;
          const float a = fmaf(fr[0], exyz, eyz), b = fmaf(fr[0], exz, ez),
                      cc = fmaf(fr[0], exy, ey), d = fmaf(fr[0], ex, c000);
          other += fmaf(fr[2], fmaf(fr[1], a, b), fmaf(fr[1], cc, d)) != lerp_f(fr[1], x0, x1);
        }
        const float got = c[0][((size_t)ix * n + iy) * n + iz];
        if (got != e && bad++ < 5)
          fprintf(stderr, "voxel (%d, %d, %d): v_los %.9g, lerp of the corners %.9g\n", ix, iy,
                  iz, got, e);
      }
  fprintf(stderr, "linear arithmetic: the monomial form differs in %d of %zu voxels\n", other, N);
  CHECK_MSG(other > 0, "the monomial form gives the same bits: the check is blind");
  CHECK_MSG(levels == 3, "the cube does not reach every level (shifts seen: mask %d)", levels);
  CHECK_MSG(bad == 0, "linear: %d of %zu voxels differ from the lerp of their corners", bad, N);
  for (int f = 0; f < 3; f++) free(c[f]);
  model_free(m);
}

/* Steps between neighbouring voxels along x (k = 1: point values) across the
 * coarse-fine face x = 0, which lies between voxels n/2 - 1 and n/2: the
 * step across it is at most twice the larger of its neighbouring steps plus
 * the float32 noise (a continuous function with bounded slopes); the number
 * of columns where it is not. */
static int seams(const float *f, int n, int logf_, double noise) {
  int bad = 0;
  for (int iy = 0; iy < n; iy++)
    for (int iz = 0; iz < n; iz++) {
      double s[3];
      for (int j = 0; j < 3; j++) {
        int ix = n / 2 - 2 + j;
        double a = f[((size_t)ix * n + iy) * n + iz], b = f[((size_t)(ix + 1) * n + iy) * n + iz];
        s[j] = logf_ ? fabs(log(b) - log(a)) : fabs(b - a);
      }
      if (s[1] > 2 * fmax(s[0], s[2]) + noise) bad++;
    }
  return bad;
}

static void test_seam(void) {
  ce_model *m = build(8, 4, 2, refine_low_x, curved_state, NULL);
  if (!m) return;
  CHECK(m->levmax == 2);
  const int n = 48;
  size_t N = (size_t)n * n * n;
  float *c[3];
  for (int f = 0; f < 3; f++) c[f] = malloc(N * 4);
  sampler_opts o;
  sampler_defaults(&o);
  o.n = n;
  o.k = 1;
  o.edge = 2.5; /* voxels of 0.052: 10 per fine cell (0.5), 19 per coarse one */
  o.ball_radius = 4;
  double q[4] = {1, 0, 0, 0};
  CHECK_OK(sample_cube(m, q, &o, c[0], c[1], c[2]));
  int bv = seams(c[0], n, 0, 1e-5 * 1000), bT = seams(c[1], n, 1, 1e-5), bn = seams(c[2], n, 1, 1e-5);
  CHECK_MSG(bv == 0 && bT == 0 && bn == 0, "linear: seams in %d, %d, %d of %d columns (v, T, n)",
            bv, bT, bn, n * n);
  /* the constant reconstruction jumps there (the check can fail) */
  o.reconstruction = SAMPLER_CONSTANT;
  CHECK_OK(sample_cube(m, q, &o, c[0], c[1], c[2]));
  bn = seams(c[2], n, 1, 1e-5);
  CHECK_MSG(bn > n * n / 2, "constant: seams in only %d of %d columns", bn, n * n);
  for (int f = 0; f < 3; f++) free(c[f]);
  model_free(m);
}

/* a Gaussian cloud (test_sample.c's mass test) */
static void cloud(const double x[3], double w[5], void *user) {
  double r2 = x[0] * x[0] + x[1] * x[1] + x[2] * x[2];
  double v[3] = {0, 0, 0};
  conserved(exp(-r2 / 4.0), v, exp(-r2 / 4.0), w);
}

/* The CO mass of the linear reconstruction against the constant one. ln n =
 * -r^2/4 + c has second derivative c2 = -1/2 along each axis. The corner
 * value, the mean of the 8 cells at +-h/2, is off by c2 (h/2)^2 / 2 = c2 h^2/8
 * per axis; the chord between corners by c2 t (h - t) / 2 at t in the cell,
 * c2 h^2 / 12 on average over it. Summed over 3 axes the cell-mean bias of
 * ln n is 3 c2 (h^2/8 + h^2/12) = -5 h^2 / 16 (pointwise -3h^2/16 .. -6h^2/16),
 * in general (5 h^2 / 24) times the Laplacian of ln n. The cloud lies in
 * cells of h = 0.25: the mass ratio is exp(-0.0195) - 1 = -1.9%, checked
 * within the pointwise range, widened by the constant's own 0.3%
 * resampling error (test_sample.c). */
static void test_mass(void) {
  ce_model *m = build(16, 8, 3, refine_centre, cloud, NULL);
  if (!m) return;
  int n = 36;
  size_t N = (size_t)n * n * n;
  float *v = malloc(N * 4), *T = malloc(N * 4), *nc = malloc(N * 4);
  sampler_opts o;
  sampler_defaults(&o);
  o.n = n;
  o.ball_radius = 8;
  o.edge = 9;
  double h3 = pow(o.edge / n, 3), lo = -6 * 0.25 * 0.25 / 16, hi = -3 * 0.25 * 0.25 / 16;
  for (int t = 0; t < 5; t++) {
    double q[4], mass[3];
    dir_quaternion(DIR_HAAR, 7, 0, (uint32_t)t, q);
    for (int r = 0; r < 3; r++) {
      o.reconstruction = r == 2 ? SAMPLER_LIMITED : r ? SAMPLER_LINEAR : SAMPLER_CONSTANT;
      CHECK_OK(sample_cube(m, q, &o, v, T, nc));
      double sum = 0;
      for (size_t i = 0; i < N; i++) sum += nc[i];
      mass[r] = sum * h3;
    }
    double rel = mass[1] / mass[0] - 1;
    double rlim = mass[2] / mass[0] - 1;
    fprintf(stderr, "direction %d: mass constant %.6f linear %.6f (%+.4f%%) limited %.6f (%+.4f%%)\n",
            t, mass[0], mass[1], 100 * rel, mass[2], 100 * rlim);
    /* limited keeps the cells' averages: only the resampling error (0.3%) */
    CHECK_MSG(fabs(rlim) < 0.003, "direction %d: limited/constant - 1 = %g", t, rlim);
    CHECK_MSG(rel > expm1(lo) - 0.003 && rel < expm1(hi) + 0.003,
              "direction %d: linear/constant - 1 = %g, expected %g .. %g", t, rel, expm1(lo),
              expm1(hi));
  }
  free(v);
  free(T);
  free(nc);
  model_free(m);
}

/* The corner values are built once; both reconstructions read the same
 * model, and an unknown reconstruction is refused. */
static void test_options(void) {
  ce_model *m = build(8, 4, 2, refine_low_x, curved_state, NULL);
  if (!m) return;
  sampler_opts o;
  sampler_defaults(&o);
  o.n = 4;
  o.edge = 2;
  float v[64], T[64], n[64];
  o.reconstruction = 7;
  CHECK_ERR(sample_cube(m, (double[4]){1, 0, 0, 0}, &o, v, T, n), "reconstruction 7");
  CHECK(sampler_recon_parse("linear") == SAMPLER_LINEAR);
  CHECK(sampler_recon_parse("constant") == SAMPLER_CONSTANT);
  CHECK(sampler_recon_parse("limited") == SAMPLER_LIMITED);
  CHECK(sampler_recon_parse("cubic") == -1);
  /* the per-thread bodies and the device sampler have all three; limited
   * once its records are built */
  sampler_geo G;
  o.reconstruction = SAMPLER_LINEAR;
  CHECK_OK(sampler_geometry(m, (double[4]){1, 0, 0, 0}, &o, &G));
  CHECK(G.recon == SB_RECON_LINEAR);
  o.reconstruction = SAMPLER_LIMITED;
  CHECK_ERR(sampler_geometry(m, (double[4]){1, 0, 0, 0}, &o, &G), "not built for this model");
  CHECK_OK(sampler_prepare(m, &o));
  CHECK_OK(sampler_geometry(m, (double[4]){1, 0, 0, 0}, &o, &G));
  CHECK(G.recon == SB_RECON_LIMITED);
  for (int r = 0; r < 3; r++) CHECK(sampler_device_supports(r));
  CHECK(!sampler_device_supports(7));
  sampler_device *dev = NULL;
  float *outs[1] = {v};
  o.reconstruction = 7;
  CHECK_ERR(sampler_device_sample(dev, 1, (const double(*)[4]) & (double[4]){1, 0, 0, 0}, &o, outs,
                                  outs, outs),
            "reconstruction 7, expected constant | linear | limited");
  o.reconstruction = SAMPLER_LIMITED;
  CHECK_ERR(sampler_device_sample(dev, 1, (const double(*)[4]) & (double[4]){1, 0, 0, 0}, &o, outs,
                                  outs, outs),
            "no device handle");
  CHECK_ERR(sampler_device_open(m, 7, 0, &dev, NULL, 0), "reconstruction 7");
  CHECK(m->nodal == NULL);
  CHECK_OK(model_nodal_build(m));
  model_real *first = m->nodal;
  CHECK_OK(model_nodal_build(m));
  CHECK(m->nodal == first);
  model_free(m);
}

/* rho = 1, curved p and v: the voxels' T and v_los are plain means */
static void flat_rho_state(const double x[3], double w[5], void *user) {
  double v[3] = {1000 * sin(x[0]), 500 * cos(x[1] + x[0]), 300 * x[2] * x[2]};
  conserved(1, v, 1 + 0.3 * x[0] * x[0] + 0.1 * x[1] + 0.2 * x[2] * x[2], w);
}

/* The limited reconstruction keeps the cell averages: an unrotated cube
 * whose voxels are the coarse cells of [-4, 4]^3 (k = 2: the sub-samples at
 * +-h/4 from a coarse centre, symmetric, or at the centres of the 8 fine
 * cells of a refined voxel, where the offset is 0) has the voxels of the
 * constant reconstruction: each of the 8 sub-sample values is rounded to
 * float once (2^-24 relative; within the range of the cell and its
 * neighbours, so below 2x the voxel's value on these smooth fields), the
 * slopes' terms cancel in double: 8 * 2 * 6e-8 / 8 ~ 1.2e-7 relative, checked
 * at 5e-7 (v_los: relative to 1000 m/s). `linear` does not keep them (the
 * check can fail: it is run on linear too and must miss). */
static void test_limited_averages(void) {
  for (int model = 0; model < 2; model++) {
    ce_model *m = build(8, 4, 2, refine_low_x, model ? flat_rho_state : curved_state, NULL);
    if (!m) return;
    const int n = 8;
    float c[3][3][512];
    sampler_opts o;
    sampler_defaults(&o);
    o.n = n;
    o.k = 2;
    o.edge = 8;
    o.fill_background = 1;
    const int recon[3] = {SAMPLER_CONSTANT, SAMPLER_LIMITED, SAMPLER_LINEAR};
    for (int r = 0; r < 3; r++) {
      o.reconstruction = recon[r];
      CHECK_OK(sample_cube(m, (double[4]){1, 0, 0, 0}, &o, c[r][0], c[r][1], c[r][2]));
    }
    double worst[2] = {0, 0};
    for (int i = 0; i < n * n * n; i++)
      for (int r = 1; r < 3; r++) {
        /* curved: n (field 2); flat rho: T and v_los (fields 1, 0) */
        for (int f = 0; f < 3; f++) {
          if (model == 0 ? f != 2 : f == 2) continue;
          double scale = f == 0 ? 1000 : fabs(c[0][f][i]);
          worst[r - 1] = fmax(worst[r - 1], fabs(c[r][f][i] - c[0][f][i]) / scale);
        }
      }
    CHECK_MSG(worst[0] <= 5e-7, "model %d: limited voxels off the cell averages by %g", model,
              worst[0]);
    CHECK_MSG(worst[1] > 1e-3, "model %d: linear keeps the cell averages (%g): the check is blind",
              model, worst[1]);
    fprintf(stderr, "model %d: limited - constant %.3g, linear - constant %.3g (relative)\n", model,
            worst[0], worst[1]);
    model_free(m);
  }
}

/* n and v_z along z only, a steep front (tanh(3z) on cells of 0.5 and 1) */
static void front_state(const double x[3], double w[5], void *user) {
  double t = tanh(3 * x[2]);
  double v[3] = {0, 0, 1000 * t};
  double rho = 1 + 0.9 * t;
  conserved(rho, v, rho, w);
}

/* Monotone: along each z column of an unrotated cube (k = 1, 10 points per
 * fine cell) n and v_z never decrease, across the front and on both sides
 * of the coarse-fine face x = 0, and stay within the cells' range. An
 * unlimited (central) slope dips below the lower cell at the front's foot:
 * the check can fail. */
static void test_limited_monotone(void) {
  ce_model *m = build(8, 4, 2, refine_low_x, front_state, NULL);
  if (!m) return;
  const int n = 48;
  size_t N = (size_t)n * n * n;
  float *c[3];
  for (int f = 0; f < 3; f++) c[f] = malloc(N * 4);
  double lo[2] = {INFINITY, INFINITY}, hi[2] = {-INFINITY, -INFINITY};
  for (int64_t i = 0; i < m->nleaves * m->ncell; i++) {
    const model_real *v = m->cells + i * MODEL_NF;
    lo[0] = fmin(lo[0], v[MODEL_N]), hi[0] = fmax(hi[0], v[MODEL_N]);
    lo[1] = fmin(lo[1], v[MODEL_VZ]), hi[1] = fmax(hi[1], v[MODEL_VZ]);
  }
  sampler_opts o;
  sampler_defaults(&o);
  o.n = n;
  o.k = 1;
  o.edge = 4.6;
  o.ball_radius = 4;
  o.reconstruction = SAMPLER_LIMITED;
  CHECK_OK(sample_cube(m, (double[4]){1, 0, 0, 0}, &o, c[0], c[1], c[2]));
  int bad = 0;
  for (size_t col = 0; col < (size_t)n * n; col++)
    for (int iz = 0; iz < n; iz++) {
      size_t at = col * n + iz;
      /* float noise: the stored slopes and values, 2^-24 of the largest */
      for (int f = 0; f < 2; f++) {
        const float *x = f ? c[0] : c[2];
        double noise = 4 * 6e-8 * fmax(fabs(lo[f]), fabs(hi[f]));
        if (!(x[at] >= lo[f] - noise && x[at] <= hi[f] + noise) ||
            (iz > 0 && x[at] < x[at - 1] - noise))
          if (bad++ < 5)
            fprintf(stderr, "column %zu, iz %d, field %d: %.9g after %.9g (cells %g .. %g)\n",
                    col, iz, f, x[at], iz ? x[at - 1] : NAN, lo[f], hi[f]);
      }
    }
  CHECK_MSG(bad == 0, "limited: %d values not monotone along z or outside the cells' range", bad);
  for (int f = 0; f < 3; f++) free(c[f]);
  model_free(m);
}

int main(void) {
  RUN(test_limited_averages);
  RUN(test_limited_monotone);
  RUN(test_linear_exact);
  RUN(test_linear_fill);
  RUN(test_linear_arithmetic);
  RUN(test_seam);
  RUN(test_mass);
  RUN(test_options);
  return check_report();
}
