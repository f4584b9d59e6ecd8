/* test_lte.c - the LTE imager against closed forms (docs/physics.md) and
 * against the literal scalar reference tests/solver/ref_lte.c on random
 * realistic cubes; frequency grids.
 *
 * Tolerances: the solver is double precision, per pixel, no BLAS, no sums
 * across threads, no FMA contraction (-ffp-contract=off); the AVX-512 kernel
 * of native builds uses libmvec's exp/erf (a few ulps), the portable one
 * libm's. Against the literal reference: 1e-13 with libm (the same
 * arithmetic, other summation orders), 1e-7 on pixels the reference's own
 * noise estimate calls well-conditioned (ref_lte.h); closed forms within a
 * few ulps of their double evaluation (2 DBL_EPSILON, 1e-15) or the printed
 * digits of published values (1e-6). CI runs native and portable builds. */
#include <float.h>
#include <stdlib.h>

#include "check.h"
#include "co_line.h"
#include "solver/cubes.h"
#include "solver/freqgrid.h"
#include "solver/lamda.h"
#include "solver/lte.h"
#include "solver/lte_kernel.h"
#include "ref_lte.h"

static lamda_molecule co;
static lte_line L;

static double *alloc(size_t n) { return calloc(n, sizeof(double)); }

static void test_constants(void) {
  CHECK(L.transition == 2 && L.upper == 3 && L.lower == 2);
  CHECK(L.nu0 == 230.538e9 && L.A == 6.910e-07 && L.g_u == 5 && L.g_l == 3);
  /* the same formulas' values (17 digits): within 2 ulps, room for pow's
     last bit (libm variants differ by <= 1 ulp; the rest is correctly rounded) */
  CHECK_CLOSE(L.B_ul, 3824774758.6123214, 2 * DBL_EPSILON, 0);
  CHECK_CLOSE(L.B_lu, 6374624597.687202, 2 * DBL_EPSILON, 0);
  CHECK_CLOSE(L.fac, 1.215594388482548e-23, 2 * DBL_EPSILON, 0);
  CHECK_CLOSE(L.two_k_over_m, 593.8901872161815, 2 * DBL_EPSILON, 0);
  CHECK_CLOSE(L.nu0_over_c, 768.9919937879158, 2 * DBL_EPSILON, 0);
  lte_line L2;
  CHECK_OK(lte_line_init(&L2, &co, 2, 0)); /* file's weight */
  CHECK(L2.mass_amu == 28.0);
  lte_line_free(&L2);
  CHECK_ERR(lte_line_init(&L2, &co, 41, 28), "transition 41 does not exist");
}

static void test_partition_and_source(void) {
  lte_cell c;
  lte_cell_eval(&L, 10, 0, &c);
  CHECK_CLOSE(c.Z, 3.96812, 2e-6, 0);
  lte_cell_eval(&L, 100, 0, &c);
  CHECK_CLOSE(c.Z, 36.4956, 2e-6, 0);
  CHECK_CLOSE(c.S, 1.544230e-15, 1e-6, 0);
  /* not the Planck function: LAMDA energies and nu0 differ by 4e-6 */
  double hnu = LTE_H * L.nu0, B = 2 * hnu * L.nu0 * L.nu0 / (LTE_C * LTE_C) / expm1(hnu / (LTE_KB * 100));
  CHECK_CLOSE(B, 1.544223e-15, 1e-6, 0);
  CHECK(fabs(c.S / B - 1) > 1e-6);
  lte_cell_eval(&L, 1000, 0, &c);
  CHECK_CLOSE(c.Z, 359.105, 2e-6, 0);
  /* width: thermal + turbulent in quadrature */
  lte_cell_eval(&L, 100, 300, &c);
  CHECK_CLOSE(1 / c.iw, L.nu0 / LTE_C * sqrt(2 * LTE_KB * 100 / (28 * LTE_AMU) + 300 * 300), 1e-15, 0);
}

/* Uniform slab at rest: I = S (1 - exp(-tau)), tau = (nz-1) a dx exp(-b^2). */
static void slab(double n, int corrected, double rtol, int *taylor) {
  const int nx = 2, ny = 3, nz = 40, nf = 7;
  double *v = alloc(nx * ny * nz), *T = alloc(nx * ny * nz), *nn = alloc(nx * ny * nz);
  for (int i = 0; i < nx * ny * nz; i++) T[i] = 100, nn[i] = n;
  double f[7], img[2 * 3 * 7];
  freqgrid_coemunet(L.nu0, f);
  lte_options o = {.dx = 1e11, .corrected_taylor = corrected};
  CHECK_OK(lte_solve_cube(&L, f, nf, nx, ny, nz, v, T, nn, &o, img));
  lte_cell c;
  lte_cell_eval(&L, 100, 0, &c);
  double a = (1 / sqrt(M_PI)) * c.iw * c.chi * n;
  *taylor = 0;
  for (int k = 0; k < nf; k++) {
    double b = c.iw * (f[k] - L.nu0), dtau = a * o.dx * exp(-b * b);
    double tau = (nz - 1) * dtau, want = c.S * -expm1(-tau);
    *taylor += dtau < 1e-4;
    for (int p = 0; p < nx * ny; p++) CHECK_CLOSE(img[p * nf + k], want, rtol, 0);
  }
  free(v), free(T), free(nn);
}

static void test_slab(void) {
  int taylor;
  slab(1e5, 1, 1e-13, &taylor); /* thin: every segment in the Taylor branch, exact series */
  CHECK(taylor == 7);
  slab(1e5, 0, 2e-9, &taylor);  /* Pomme's branch: wrong by ~D^2/4 */
  CHECK(taylor == 7);
  slab(1e10, 1, 1e-13, &taylor); /* thick line centre: exact branch */
  CHECK(taylor < 7);
}

/* Pomme's swapped Taylor terms are a real (tiny) error; the option fixes it. */
static void test_taylor_quirk(void) {
  int taylor;
  const int nx = 1, ny = 1, nz = 2;
  double v[2] = {0, 0}, T[2] = {100, 100}, n[2] = {2e5, 2e5}, f = L.nu0, pom, cor;
  lte_options o = {.dx = 1e11};
  CHECK_OK(lte_solve_cube(&L, &f, 1, nx, ny, nz, v, T, n, &o, &pom));
  o.corrected_taylor = 1;
  CHECK_OK(lte_solve_cube(&L, &f, 1, nx, ny, nz, v, T, n, &o, &cor));
  lte_cell c;
  lte_cell_eval(&L, 100, 0, &c);
  double D = (1 / sqrt(M_PI)) * c.iw * c.chi * n[0] * o.dx;
  CHECK(D > 1e-5 && D < 1e-4);
  double exact = c.S * -expm1(-D);
  CHECK_CLOSE(cor, exact, 1e-14, 0);
  CHECK_CLOSE(pom, exact * (1 + D * D / 4), 0.05 * D * D, 0); /* I_pomme = S (D - D^2/2 + 5D^3/12) */
  CHECK(fabs(pom / exact - 1) > 0.1 * D * D);
  (void)taylor;
}

/* A velocity ramp 0 -> +3 km/s (receding) moves emission to low frequencies. */
static void test_velocity_sign(void) {
  const int nz = 50;
  double v[50], T[50], n[50], f[7], img[7];
  for (int z = 0; z < nz; z++) v[z] = 3000.0 * z / (nz - 1), T[z] = 50, n[z] = 1e8;
  freqgrid_coemunet(L.nu0, f);
  lte_options o = {.dx = 1e11};
  CHECK_OK(lte_solve_cube(&L, f, 7, 1, 1, nz, v, T, n, &o, img));
  CHECK(f[0] < f[6]);
  for (int k = 0; k < 3; k++) CHECK_MSG(img[k] > 2 * img[6 - k], "channel %d: %g vs %g", k, img[k], img[6 - k]);
}

/* Fast path vs the literal reference on random realistic cubes. Round-off
 * pixels: |I| <= 1e-12 max|I| of the cube (there the relative difference
 * measures only cancellation noise). */
static void compare_random(uint64_t seed, int nx, int ny, int nz, double vturb, double bdy,
                           int corrected, double *worst, int *ill, int *total) {
  /* with libm's exp/erf the kernel must match the literal reference on every
   * pixel: the arithmetic is the same, only summation orders differ */
  static double worst_libm = 0;
  size_t nc = (size_t)nx * ny * nz;
  double *v = alloc(nc), *T = alloc(nc), *n = alloc(nc);
  cubes_random(seed, nx, ny, nz, v, T, n);
  double *fr;
  int nf;
  CHECK_OK(freqgrid_parse("-9000:1500:13", L.nu0, &fr, &nf));
  double *fast = alloc(nx * ny * nf), *ref = alloc(nx * ny * nf), *noise = alloc(nx * ny * nf);
  lte_options o = {.dx = 2e11, .vturb = vturb, .background = bdy, .corrected_taylor = corrected};
  ref_lte_image(&co, 2, 28.0, fr, nf, nx, ny, nz, v, T, n, o.dx, vturb, bdy, corrected, ref, noise);
  o.libm = 1;
  CHECK_OK(lte_solve_cube(&L, fr, nf, nx, ny, nz, v, T, n, &o, fast));
  for (int i = 0; i < nx * ny * nf; i++) {
    double rel = ref[i] != 0 ? fabs(fast[i] - ref[i]) / fabs(ref[i]) : fabs(fast[i]);
    worst_libm = fmax(worst_libm, rel);
    CHECK_MSG(rel <= 1e-13, "libm kernel: pixel %d: %.17g vs %.17g", i,
              fast[i], ref[i]);
  }
  fprintf(stderr, "  kernel in libm mode (libm exp/erf, direct Z) vs reference, all pixels: worst %.3g\n", worst_libm);
  o.libm = 0;
  CHECK_OK(lte_solve_cube(&L, fr, nf, nx, ny, nz, v, T, n, &o, fast));
  double mx = 0;
  for (int i = 0; i < nx * ny * nf; i++) mx = fmax(mx, fabs(ref[i]));
  int bad = 0, counted = 0;
  for (int i = 0; i < nx * ny * nf; i++) {
    const ref_lte_class cl = ref_lte_classify(ref[i], noise[i], mx);
    if (cl == REF_LTE_ROUNDOFF) continue;
    if (cl == REF_LTE_ILL) {
      (*ill)++;
      continue;
    }
    counted++;
    double rel = fabs(fast[i] - ref[i]) / fabs(ref[i]);
    if (rel > *worst) *worst = rel;
    if (!(rel <= 1e-7)) {
      if (bad++ < 5) CHECK_FAIL_("seed %llu pixel %d: fast %.17g ref %.17g rel %.3g",
                                  (unsigned long long)seed, i, fast[i], ref[i], rel);
    }
  }
  CHECK(counted > 0);
  *total += nx * ny * nf;
  free(v), free(T), free(n), free(fr), free(fast), free(ref), free(noise);
}

static void test_against_reference(void) {
  double worst = 0;
  int ill = 0, total = 0;
  ref_lte_counts = (ref_lte_branch_counts){0};
  compare_random(1, 9, 7, 64, 0, 0, 0, &worst, &ill, &total);
  compare_random(2, 5, 6, 37, 150, 0, 0, &worst, &ill, &total);
  compare_random(3, 4, 4, 9, 0, 1e-16, 0, &worst, &ill, &total);
  compare_random(4, 6, 5, 64, 50, 0, 1, &worst, &ill, &total);
  compare_random(5, 3, 3, 1, 0, 2e-15, 0, &worst, &ill, &total); /* no segment: the background only */
  fprintf(stderr, "  fast vs reference (%s): worst relative difference %.3g; %d of %d pixels ill-conditioned\n",
          lte_kernel_name(), worst, ill, total);
  CHECK(ill < total / 4);
  fprintf(stderr, "  segments: |b10|<1e-4 %ld, exact profile %ld, Taylor %ld, exact formal %ld\n",
          ref_lte_counts.b10_small, ref_lte_counts.b10_exact, ref_lte_counts.taylor,
          ref_lte_counts.exact);
  CHECK(ref_lte_counts.b10_small > 100 && ref_lte_counts.b10_exact > 100);
  CHECK(ref_lte_counts.taylor > 100 && ref_lte_counts.exact > 100);
}

/* float32 inputs, batches, thread counts, background map and |I| agree. */
static void test_variants(void) {
  const int nx = 5, ny = 4, nz = 33, nf = 7;
  size_t nc = nx * ny * nz;
  double *v = alloc(nc), *T = alloc(nc), *n = alloc(nc), f[7];
  float *v32 = malloc(nc * 4), *T32 = malloc(nc * 4), *n32 = malloc(nc * 4);
  cubes_random(11, nx, ny, nz, v, T, n);
  for (size_t i = 0; i < nc; i++) {
    v32[i] = (float)v[i], T32[i] = (float)T[i], n32[i] = (float)n[i];
    v[i] = v32[i], T[i] = T32[i], n[i] = n32[i];
  }
  freqgrid_coemunet(L.nu0, f);
  double a[140], b[140], c[140], d[140], e[140], bg[140];
  lte_options o = {.dx = 3e11, .threads = 1};
  CHECK_OK(lte_solve_cube(&L, f, nf, nx, ny, nz, v, T, n, &o, a));
  CHECK_OK(lte_solve_cube_f32(&L, f, nf, nx, ny, nz, v32, T32, n32, &o, b));
  o.threads = 2;
  const double *vs[2] = {v, v}, *Ts[2] = {T, T}, *ns[2] = {n, n};
  double *imgs[2] = {c, d};
  CHECK_OK(lte_solve_batch(&L, f, nf, 2, nx, ny, nz, vs, Ts, ns, &o, imgs));
  CHECK(!memcmp(a, b, sizeof a) && !memcmp(a, c, sizeof a) && !memcmp(a, d, sizeof a));
  for (int i = 0; i < 140; i++) bg[i] = 1e-16 * (i % 5);
  o.background_map = bg;
  o.take_abs = 1;
  CHECK_OK(lte_solve_cube(&L, f, nf, nx, ny, nz, v, T, n, &o, e));
  double ref[140];
  ref_lte_image(&co, 2, 28.0, f, nf, nx, ny, nz, v, T, n, o.dx, 0, 0, 0, ref, NULL);
  int checked = 0;
  for (int p = 0; p < nx * ny; p++)
    for (int k = 0; k < nf; k++) {
      /* with a per-pixel background: I = bg*exp(-tau) + I_0 >= I_0 */
      int i = p * nf + k;
      CHECK(e[i] >= 0);
      if (bg[i] == 0) CHECK(e[i] == fabs(a[i]));
      else {
        CHECK(e[i] >= a[i]); /* equal where the ray is opaque */
        checked += e[i] > a[i];
      }
    }
  CHECK(checked > 50);
  free(v), free(T), free(n), free(v32), free(T32), free(n32);
}

static void test_bad_input(void) {
  double v[24] = {0}, T[24], n[24], f = L.nu0, img[6];
  for (int i = 0; i < 24; i++) T[i] = 100, n[i] = 1e6;
  lte_options o = {.dx = 1e11};
  /* shape 2 x 3 x 4: cell (1, 2, 3) is index (1*3+2)*4+3 = 23 */
  T[23] = 0;
  CHECK_ERR(lte_solve_cube(&L, &f, 1, 2, 3, 4, v, T, n, &o, img), "T[1, 2, 3] = 0, expected finite and > 0 K");
  T[23] = 100;
  n[13] = -1; /* (1, 0, 1) */
  CHECK_ERR(lte_solve_cube(&L, &f, 1, 2, 3, 4, v, T, n, &o, img), "n[1, 0, 1] = -1, expected finite and >= 0");
  n[13] = 1e6;
  v[5] = NAN; /* (0, 1, 1) */
  v[20] = INFINITY;
  CHECK_ERR(lte_solve_cube(&L, &f, 1, 2, 3, 4, v, T, n, &o, img), "v_z[0, 1, 1] = nan");
  v[5] = v[20] = 0;
  T[2] = INFINITY;
  CHECK_ERR(lte_solve_cube(&L, &f, 1, 2, 3, 4, v, T, n, &o, img), "T[0, 0, 2] = inf");
  T[2] = 100;
  T[7] = 1e-310; /* (0, 1, 3): subnormal, which the host's flushed arithmetic reads as 0 */
  CHECK_ERR(lte_solve_cube(&L, &f, 1, 2, 3, 4, v, T, n, &o, img),
            "T[0, 1, 3] = 1e-310, expected finite and > 0 K (at least DBL_MIN");
  T[7] = DBL_MIN;
  CHECK_OK(lte_solve_cube(&L, &f, 1, 2, 3, 4, v, T, n, &o, img));
  T[7] = 100;
  CHECK_OK(lte_solve_cube(&L, &f, 1, 2, 3, 4, v, T, n, &o, img));
  o.dx = 0;
  CHECK_ERR(lte_solve_cube(&L, &f, 1, 2, 3, 4, v, T, n, &o, img), "dx = 0, expected > 0");
  o.dx = 1e11;
  o.vturb = -1;
  CHECK_ERR(lte_solve_cube(&L, &f, 1, 2, 3, 4, v, T, n, &o, img), "vturb = -1");
  o.vturb = 0;
  f = -1;
  CHECK_ERR(lte_solve_cube(&L, &f, 1, 2, 3, 4, v, T, n, &o, img), "frequency 0 = -1 Hz");
}

/* Cells so cold that both level populations underflow (T < ~0.05 K, seen in
 * real AMRVAC shocks) neither emit nor absorb: the image is that of the same
 * ray with those cells emptied, never NaN (Pomme's S = 0/0 gives NaN). */
static void test_cold_cells(void) {
  enum { NZ = 40 };
  double v[NZ], T[NZ], n[NZ], n0[NZ], f[FREQGRID_COEMUNET_N], a[7], b[7];
  freqgrid_coemunet(L.nu0, f);
  for (int z = 0; z < NZ; z++) {
    v[z] = 300.0 * (z - 20);
    T[z] = z % 7 == 3 ? 0.002 : 40 + 10 * z;
    n[z] = n0[z] = 1e8;
    if (T[z] < 1) n0[z] = 0;
  }
  lte_cell c;
  lte_cell_eval(&L, 0.002, 0, &c);
  CHECK(c.p_l == 0 && c.p_u == 0 && c.chi == 0 && c.S == 0);
  for (int libm = 0; libm < 2; libm++)
    for (int corr = 0; corr < 2; corr++) {
      lte_options o = {.dx = 3e10, .libm = libm, .corrected_taylor = corr};
      CHECK_OK(lte_solve_cube(&L, f, 7, 1, 1, NZ, v, T, n, &o, a));
      CHECK_OK(lte_solve_cube(&L, f, 7, 1, 1, NZ, v, T, n0, &o, b));
      for (int i = 0; i < 7; i++) CHECK(!isnan(a[i]) && a[i] == b[i] && a[i] > 0);
    }
  for (int z = 0; z < NZ; z++) T[z] = 0.001; /* an all-cold slab is dark */
  lte_options o = {.dx = 3e10};
  CHECK_OK(lte_solve_cube(&L, f, 7, 1, 1, NZ, v, T, n, &o, a));
  for (int i = 0; i < 7; i++) CHECK(a[i] == 0);
}

/* The host kernels' float environment (lte_kernel.h): subnormals flushed
 * while they compute, the caller's mode untouched after a solve, on the
 * calling thread and with threads. */
static void test_float_environment(void) {
#if defined(__x86_64__) || defined(__SSE2__)
  volatile double tiny = DBL_MIN, half = 0.5;
  const unsigned before = _mm_getcsr();
  CHECK(tiny * half > 0); /* gradual underflow here */
  const lte_host_fpenv e = lte_host_flush_begin();
  CHECK(tiny * half == 0 && (_mm_getcsr() & 0x8040u) == 0x8040u);
  lte_host_flush_end(e);
  CHECK(_mm_getcsr() == before && tiny * half > 0);
  double v[64] = {0}, T[64], n[64], f[FREQGRID_COEMUNET_N], img[7 * 4];
  for (int i = 0; i < 64; i++) T[i] = 50 + i, n[i] = 1e7;
  freqgrid_coemunet(L.nu0, f);
  for (int threads = 1; threads <= 2; threads++) {
    lte_options o = {.dx = 1e11, .threads = threads};
    CHECK_OK(lte_solve_cube(&L, f, 7, 2, 2, 16, v, T, n, &o, img));
    CHECK_MSG((_mm_getcsr() & 0x8040u) == (before & 0x8040u) && tiny * half > 0,
              "the caller's MXCSR changed by a solve on %d threads: 0x%x, was 0x%x", threads,
              _mm_getcsr(), before);
  }
#endif
}

/* The tabulated partition function against the direct sum, every molecule. */
static void test_partition_table(void) {
  const char *files[] = {"co.dat", "13co.dat", "c18o.dat", "sio-h2.dat", "hcn.dat", "so@lique.dat", "cs@lique.dat"};
  const char *dir = getenv("COEMU_TEST_DATA");
  double worst = 0;
  for (int i = 0; i < 7; i++) {
    char p[512];
    snprintf(p, sizeof p, "%s/lamda/%s", dir ? dir : "tests/data", files[i]);
    lamda_molecule m;
    lte_line l;
    CHECK_OK(lamda_read(p, &m));
    CHECK_OK(lte_line_init(&l, &m, 1, 0));
    int direct = 0;
    for (int k = 0; k < l.zpieces; k++) direct += l.zdirect[k];
    CHECK_MSG(l.zpieces > 0 && direct < l.zpieces / 10, "%s: %d table pieces fall back to the direct sum", files[i], direct);
    for (int k = 0; k < 20000; k++) {
      double T = pow(10.0, -0.5 + 5.2 * k / 20000.0), want = 0;
      for (int j = 0; j < l.nlev; j++) want += l.g[j] * exp(l.neg_e_over_k[j] / T);
      double rel = fabs(lte_partition(&l, T) - want) / want;
      if (rel > worst) worst = rel;
      CHECK_MSG(rel <= 5e-14, "%s: Z(%.17g) off by %.3g", files[i], T, rel);
    }
    lte_line_free(&l);
    lamda_free(&m);
  }
  fprintf(stderr, "  partition table: worst relative difference %.3g\n", worst);
}

/* freqgrid_find_repeat: the repeat with the smallest later index, first of
 * its group; none in distinct values; n log n (a 200,000-value list) */
static void test_find_repeat(void) {
  int a = -1, b = -1;
  CHECK(freqgrid_find_repeat((const double[]){5, -5, 5}, 3, &a, &b) == 1 && a == 0 && b == 2);
  CHECK(freqgrid_find_repeat((const double[]){1, 7, 3, 7, 1, 3}, 6, &a, &b) == 1 && a == 1 && b == 3);
  CHECK(freqgrid_find_repeat((const double[]){4, 9, 4, 4}, 4, &a, &b) == 1 && a == 0 && b == 2);
  CHECK(freqgrid_find_repeat((const double[]){1, 2, 3}, 3, &a, &b) == 0);
  CHECK(freqgrid_find_repeat((const double[]){1}, 1, &a, &b) == 0);
  const int n = 200000;
  double *v = malloc(sizeof *v * n);
  for (int i = 0; i < n; i++) v[i] = (double)((i * 7919LL) % n); /* a permutation */
  CHECK(freqgrid_find_repeat(v, n, &a, &b) == 0);
  v[n - 1] = v[12345];
  CHECK(freqgrid_find_repeat(v, n, &a, &b) == 1 && a == 12345 && b == n - 1);
  free(v);
}

static void test_freqgrid(void) {
  double f[7];
  freqgrid_coemunet(L.nu0, f);
  static const double want[7] = {230537307907.2056,  230537538604.80374, 230537769302.40186,
                                 230538000000.0,     230538230697.59814, 230538461395.19626,
                                 230538692092.7944};
  for (int i = 0; i < 7; i++) CHECK_MSG(f[i] == want[i], "channel %d: %.17g vs %.17g", i, f[i], want[i]);
  double *g;
  int n;
  CHECK_OK(freqgrid_parse("coemunet", L.nu0, &g, &n));
  CHECK(n == 7 && !memcmp(g, want, sizeof want));
  free(g);
  CHECK_OK(freqgrid_parse("-900:300:7", L.nu0, &g, &n));
  CHECK(n == 7);
  for (int i = 0; i < 7; i++) CHECK_CLOSE(g[i], want[6 - i], 1e-15, 0);
  double step;
  CHECK(freqgrid_uniform(g, n, &step) && step < 0);
  free(g);
  CHECK_OK(freqgrid_parse("-4500:300:31:12:18", L.nu0, &g, &n));
  CHECK(n == 7);
  CHECK_CLOSE(g[0], L.nu0 * (1 + 900 / LTE_C), 1e-15, 0);
  free(g);
  CHECK_OK(freqgrid_parse("list:230.538e9,230.5e9,1e9", L.nu0, &g, &n));
  CHECK(n == 3 && g[1] == 230.5e9 && !freqgrid_uniform(g, n, &step));
  free(g);
  CHECK_ERR(freqgrid_parse("list:1e9,x", L.nu0, &g, &n), "frequency 2 = 'x'");
  CHECK_ERR(freqgrid_parse("list:", L.nu0, &g, &n), "empty frequency list");
  CHECK_ERR(freqgrid_parse("1:2", L.nu0, &g, &n), "expected coemunet, V0:DV:COUNT");
  CHECK_ERR(freqgrid_parse("0:100:10:5:10", L.nu0, &g, &n), "keep 5..10, expected 0 <= LO <= HI < COUNT = 10");
  CHECK_ERR(freqgrid_parse("0:100:0", L.nu0, &g, &n), "COUNT = 0");
}

int main(void) {
  if (test_co_line(&co, &L) < 0) return 1;
  RUN(test_constants);
  RUN(test_partition_and_source);
  RUN(test_slab);
  RUN(test_taylor_quirk);
  RUN(test_velocity_sign);
  RUN(test_against_reference);
  RUN(test_variants);
  RUN(test_bad_input);
  RUN(test_cold_cells);
  RUN(test_partition_table);
  RUN(test_freqgrid);
  RUN(test_find_repeat);
  RUN(test_float_environment);
  lte_line_free(&L);
  lamda_free(&co);
  return check_report();
}
