/* model_fixture.h - the rotate tests' shared pieces for building models in
 * memory: SI units of 1 (so code values are physical values), the
 * conserved hd variables of (rho, v, p), and a state whose ln rho, ln(p/rho)
 * and v are linear in x (on which the `linear` reconstruction is exact).
 * Header-only (static functions), included by test_recon.c, test_yt.c and
 * test_sample.c; needs check.h and rotate/model.h first. */
#ifndef COEMU_TESTS_ROTATE_MODEL_FIXTURE_H
#define COEMU_TESTS_ROTATE_MODEL_FIXTURE_H

#include <math.h>
#include <string.h>

static units test_units(void) {
  units u;
  const char *y = "version: 1\nunit_system: si\nunit_length: 1\nunit_numberdensity: 1\n"
                  "unit_velocity: 1\nmu: 2.3\nco_abundance: 1\nstretched: false\n";
  CHECK_OK(units_parse(y, strlen(y), "t.yaml", &u));
  return u;
}

/* conserved hd variables of rho, v, p (gamma 5/3) */
static inline void conserved(double rho, const double v[3], double p, double w[5]) {
  w[0] = rho;
  for (int d = 0; d < 3; d++) w[d + 1] = rho * v[d];
  w[4] = p / (2.0 / 3.0) + 0.5 * rho * (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]);
}

/* ln rho, ln(p / rho) and v linear in x */
static inline void linear_state(const double x[3], double w[5], void *user) {
  (void)user;
  double rho = exp(0.1 + 0.2 * x[0] - 0.15 * x[1] + 0.1 * x[2]);
  double v[3] = {1000 + 300 * x[0], -200 + 100 * x[1] - 200 * x[2], 500 + 50 * x[0] + 100 * x[2]};
  double p = rho * exp(0.5 + 0.05 * x[0] + 0.08 * x[1] - 0.1 * x[2]);
  conserved(rho, v, p, w);
}

#endif
