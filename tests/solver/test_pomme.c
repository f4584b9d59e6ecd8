/* test_pomme.c - the solver against golden images made by the real Pomme
 * 0.2.1 (tests/solver/pomme_golden.py; provenance in
 * tests/data/solver/README.md): relative difference <= 1e-7 on every pixel
 * that is neither round-off (|I| <= 1e-12 max|I|) nor ill-conditioned (the
 * reference's noise estimate above 1e-8 |I|: there Pomme's own value moves
 * by more than that with ~1-ulp changes of exp/erf, see ref_lte.h). Every
 * kernel backend built into this coemu (lte_kernel.h) is checked, and its
 * float32 path (docs/physics.md) to 1e-5 under the same classification. */
#include <stdlib.h>

#include "check.h"
#include "co_line.h"
#include "common/npy.h"
#include "solver/freqgrid.h"
#include "solver/lamda.h"
#include "solver/lte.h"
#include "ref_lte.h"

static const char *dir;
static lamda_molecule co;
static lte_line L;

static double *load(int k, const char *name, npy_info *info) {
  char p[512];
  snprintf(p, sizeof p, "%s/solver/pomme%d_%s.npy", dir, k, name);
  double *a = NULL;
  if (npy_read_f64(p, info, &a) < 0) CHECK_FAIL_("%s", ce_err_msg());
  return a;
}

static void golden(int k, lte_backend be, lte_precision prec, int *ill, int *total,
                   double *worst_fast, double *worst_ref) {
  const double tol = prec == LTE_PRECISION_F32 ? 1e-5 : 1e-7;
  npy_info iv, iT, in, iff, ip, ii;
  double *v = load(k, "vz", &iv), *T = load(k, "T", &iT), *n = load(k, "n", &in);
  double *f = load(k, "freqs", &iff), *par = load(k, "params", &ip), *want = load(k, "image", &ii);
  if (!v || !T || !n || !f || !par || !want) return;
  int nx = (int)iv.shape[0], ny = (int)iv.shape[1], nz = (int)iv.shape[2], nf = (int)iff.count;
  CHECK(ii.ndim == 3 && (int)ii.shape[0] == nx && (int)ii.shape[1] == ny && (int)ii.shape[2] == nf);
  CHECK(par[3] == 28.0 && par[4] == 2.0);
  if (k == 1) { /* torch.linspace's grid, bit for bit */
    double g[7];
    freqgrid_coemunet(L.nu0, g);
    CHECK(nf == 7 && !memcmp(g, f, sizeof g));
  }
  size_t np = (size_t)nx * ny * nf;
  double *fast = malloc(np * 8), *ref = malloc(np * 8), *noise = malloc(np * 8);
  lte_options o = {.dx = par[0], .vturb = par[1], .background = par[2], .backend = be,
                   .precision = prec};
  CHECK_OK(lte_solve_cube(&L, f, nf, nx, ny, nz, v, T, n, &o, fast));
  ref_lte_image(&co, 2, 28.0, f, nf, nx, ny, nz, v, T, n, o.dx, o.vturb, o.background, 0, ref, noise);
  double mx = 0;
  for (size_t i = 0; i < np; i++) mx = fmax(mx, fabs(want[i]));
  int bad = 0;
  for (size_t i = 0; i < np; i++) {
    if (fabs(want[i]) <= 1e-12 * mx) continue;
    (*total)++;
    if (noise[i] > 1e-8 * fabs(want[i])) {
      (*ill)++;
      continue;
    }
    double rf = fabs(fast[i] - want[i]) / fabs(want[i]), rr = fabs(ref[i] - want[i]) / fabs(want[i]);
    *worst_fast = fmax(*worst_fast, rf);
    *worst_ref = fmax(*worst_ref, rr);
    if (!(rf <= tol) && bad++ < 5)
      CHECK_FAIL_("%s %s: case %d pixel %zu: coemu %.17g pomme %.17g rel %.3g",
                  lte_backend_name(be), lte_precision_name(prec), k, i, fast[i], want[i], rf);
  }
  free(v), free(T), free(n), free(f), free(par), free(want), free(fast), free(ref), free(noise);
}

static void test_pomme_golden(void) {
  for (int b = 0; b < LTE_BACKEND_COUNT; b++) {
    if (!lte_kernel_get((lte_backend)b)) continue;
    if (lte_backend_open((lte_backend)b, 0, NULL, 0) < 0) { /* built, no device here */
      fprintf(stderr, "  %s backend: %s\n", lte_backend_name((lte_backend)b), ce_err_msg());
      CHECK(b != LTE_BACKEND_CPU);
      CHECK_MSG(!getenv("COEMU_REQUIRE_DEVICE"), "COEMU_REQUIRE_DEVICE is set: %s", ce_err_msg());
      continue;
    }
    for (int p = 0; p < 2; p++) {
      int ill = 0, total = 0;
      double wf = 0, wr = 0;
      for (int k = 1; k <= 3; k++) golden(k, (lte_backend)b, (lte_precision)p, &ill, &total, &wf, &wr);
      fprintf(stderr, "  %s backend vs Pomme 0.2.1%s: worst relative difference %.3g (fast), %.3g "
              "(literal reference); %d of %d pixels ill-conditioned\n",
              lte_backend_name((lte_backend)b), p ? " (float32 path)" : "", wf, wr, ill, total);
      CHECK(total > 1000 && ill < total / 4);
    }
  }
}

int main(void) {
  dir = getenv("COEMU_TEST_DATA");
  if (!dir) dir = "tests/data";
  if (test_co_line(&co, &L) < 0) return 1;
  RUN(test_pomme_golden);
  lte_line_free(&L);
  lamda_free(&co);
  return check_report();
}
