/* cubes.c - example and random input cubes (see cubes.h). */
#include "solver/cubes.h"

#include <math.h>
#include <stddef.h>

#include "common/rng.h"

void cubes_agb_spiral(int N, double H, double *v, double *T, double *n) {
  const double msun = 1.98841e30, year = 3.15576e7, amu = 1.66053906660e-27;
  const double mdot = 5e-5 * msun / year;  /* kg/s */
  const double vw = 15e3;                  /* m/s */
  const double mu_h2 = 2.0 * 1.00794 * 1.4; /* mass per H2 molecule incl. He [u] */
  const double x_co = 4e-4;                /* CO/H2 */
  const double r_in = 5e11, spacing = 4e12;
  const double dx = 2 * H / N;
  for (int i = 0; i < N; i++)
    for (int j = 0; j < N; j++)
      for (int k = 0; k < N; k++) {
        double x = -H + (i + 0.5) * dx, y = -H + (j + 0.5) * dx, z = -H + (k + 0.5) * dx;
        double r = sqrt(x * x + y * y + z * z), re = r > r_in ? r : r_in;
        double rho = mdot / (4 * M_PI * re * re * vw);
        double nco = x_co * rho / (mu_h2 * amu);
        /* spiral arm: phase of an Archimedean spiral r_cyl = spacing*phi/2pi */
        double rc = sqrt(x * x + y * y), phi = atan2(y, x);
        double psi = phi - 2 * M_PI * rc / spacing;
        double arm = exp(-(1 - cos(psi)) / 0.15) * exp(-(z * z) / (0.25 * re * re));
        size_t c = ((size_t)i * N + j) * N + k;
        n[c] = nco * (1 + 5 * arm);
        double t = 3000.0 * pow(re / r_in, -0.7);
        T[c] = t < 10 ? 10 : t > 3000 ? 3000 : t;
        v[c] = r > 0 ? vw * z / r : 0;
      }
}

/* A smooth random field in [-1, 1]: a normalised sum of 4 Fourier modes. */
typedef struct {
  double k[4][3], ph[4];
} field;

static void field_make(ce_rng *r, field *f, int nx, int ny, int nz) {
  for (int m = 0; m < 4; m++) {
    f->k[m][0] = 2 * M_PI * (ce_rng_uniform(r) * 2.5) / nx;
    f->k[m][1] = 2 * M_PI * (ce_rng_uniform(r) * 2.5) / ny;
    f->k[m][2] = 2 * M_PI * (ce_rng_uniform(r) * 2.5) / nz;
    f->ph[m] = 2 * M_PI * ce_rng_uniform(r);
  }
}

static double field_at(const field *f, int x, int y, int z) {
  double s = 0;
  for (int m = 0; m < 4; m++) s += sin(f->k[m][0] * x + f->k[m][1] * y + f->k[m][2] * z + f->ph[m]);
  return s / 4;
}

void cubes_random(uint64_t seed, int nx, int ny, int nz, double *v, double *T, double *n) {
  ce_rng r = ce_rng_make(seed, (uint32_t)nx, (uint32_t)(ny * 65536 + nz), 7);
  field fv, fT, fn;
  field_make(&r, &fv, nx, ny, nz);
  field_make(&r, &fT, nx, ny, nz);
  field_make(&r, &fn, nx, ny, nz);
  for (int x = 0; x < nx; x++)
    for (int y = 0; y < ny; y++)
      for (int z = 0; z < nz; z++) {
        size_t c = ((size_t)x * ny + y) * nz + z;
        double jitter = 0.05 * (ce_rng_uniform(&r) - 0.5);
        double repeat = ce_rng_uniform(&r) < 0.25;
        n[c] = pow(10.0, 8.5 + 4.5 * (field_at(&fn, x, y, z) + 2 * jitter) / 1.05);
        if (z > 0 && repeat) {
          v[c] = v[c - 1];
          T[c] = T[c - 1];
          continue;
        }
        v[c] = 1e4 * field_at(&fv, x, y, z) * (1 - fabs(jitter));
        T[c] = pow(10.0, 2.238 + 1.239 * (field_at(&fT, x, y, z) + jitter) / 1.025);
      }
}
