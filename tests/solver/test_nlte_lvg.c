/* test_nlte_lvg.c - per-cell 3-D LVG (solver/nlte_lvg.h): a uniform Hubble
 * flow against the one-zone LVG (nlte_solve, RADEX's expanding sphere), a
 * two-level molecule in an anisotropic flow against its closed form, the
 * optically thin limit, the high-density limit (Boltzmann) and the imager
 * fed those populations against the LTE imager, the direction set's
 * convergence to the exact angle average, thread-count independence (bit for
 * bit), warm starts against cold starts, and bad input naming the cell. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "solver/lamda.h"
#include "solver/lte.h"
#include "solver/nlte.h"
#include "solver/nlte_lvg.h"

static const char *data_dir;

static int load(const char *name, lamda_molecule *m) {
  char p[600];
  snprintf(p, sizeof p, "%s/lamda/%s", data_dir, name);
  return lamda_read(p, m);
}

/* A two-level molecule (as test_nlte.c): E1 = 10 cm^-1, g = 1, 3,
 * A = 1e-4 s^-1, k10(H2) = 2e-11 cm^3/s at every T. */
static double temps2[2] = {10.0, 1000.0};
static int up2[1] = {2}, lo2[1] = {1};
static double rates2[2] = {2e-11, 2e-11};
static lamda_level lev2[2] = {{1, 0.0, 1.0, "0"}, {2, 10.0, 3.0, "1"}};
static lamda_line line2[1] = {{1, 2, 1, 1e-4, 299.792458, 14.39}};
static lamda_partner part2[1];
static lamda_molecule two_level(int partner) {
  lamda_molecule m;
  memset(&m, 0, sizeof m);
  snprintf(m.name, sizeof m.name, "TWO");
  m.weight = 28;
  m.nlev = 2;
  m.nline = 1;
  m.npart = 1;
  m.levels = lev2;
  m.lines = line2;
  part2[0] = (lamda_partner){.id = partner, .ntrans = 1, .ntemp = 2, .temps = temps2, .upper = up2,
                             .lower = lo2, .rates = rates2};
  m.partners = part2;
  return m;
}

/* x1/x0 of the two-level molecule at escape probability beta (closed form). */
static double two_level_ratio(double T, double nh2, double Tbg, double beta) {
  double e = 10.0, A = 1e-4, gr = 3.0;
  double c10 = nh2 * 2e-11, c01 = c10 * gr * exp(-NLTE_FK * e / T);
  double b = Tbg > 0 ? 1.0 / expm1(NLTE_FK * e / Tbg) : 0.0;
  return (c01 + A * beta * gr * b) / (c10 + A * beta * (1.0 + b));
}

typedef struct {
  int64_t n;
  double *T, *nh2, *nmol, *G, *len;
} cells_t;

static void cells_alloc(cells_t *c, int64_t n) {
  c->n = n;
  c->T = calloc((size_t)n, sizeof(double));
  c->nh2 = calloc((size_t)n, sizeof(double));
  c->nmol = calloc((size_t)n, sizeof(double));
  c->G = calloc((size_t)n * 9, sizeof(double));
  c->len = calloc((size_t)n, sizeof(double));
}
static void cells_free(cells_t *c) {
  free(c->T), free(c->nh2), free(c->nmol), free(c->G), free(c->len);
}
static nlte_lvg_cells view(const cells_t *c) {
  return (nlte_lvg_cells){.ncell = c->n, .t_kin = c->T, .n_h2 = c->nh2, .n_mol = c->nmol,
                          .grad_v = c->G, .length = c->len};
}

/* A uniform Hubble flow v = h x: n.G.n = h for every direction, so every
 * cell is RADEX's one-zone LVG with N / dv_FWHM = 1.0645 n_mol / h (the
 * Sobolev tau_n = A/(8 pi xnu^3) n_mol (..) / h against RADEX's
 * tau = A/(1.0645 8 pi xnu^3) N/dv (..)), and with RADEX's escape function
 * the mean over directions of identical betas is that beta. Both solutions
 * converge to tol = 1e-10 (the last Newton step below it, the error after it
 * O(step^2)); the two systems differ only in the round-off of tau (a few
 * ulp) and of the mean over ndir equal terms (ndir ulp), so populations
 * > 1e-10 must agree to 1e-9, well above both and far below any modelling
 * difference (the escape functions differ by 10 % at tau ~ 1). */
static void hubble_vs_one_zone(const char *file, const double xs[3]) {
  lamda_molecule m;
  CHECK_OK(load(file, &m));
  nlte_model M;
  CHECK_OK(nlte_model_init(&M, &m));
  nlte_result r;
  CHECK_OK(nlte_result_init(&r, &M));
  const double Ts[] = {15, 60, 300, 1500}, ns[] = {1e3, 1e5, 1e8};
  const int nc = 4 * 3 * 3;
  const double h = 1e-9; /* s^-1: 10 km/s over 1e15 cm */
  cells_t c;
  cells_alloc(&c, nc);
  for (int i = 0; i < nc; i++) {
    c.T[i] = Ts[i / 9];
    c.nh2[i] = ns[(i / 3) % 3];
    c.nmol[i] = xs[i % 3] * c.nh2[i];
    for (int a = 0; a < 3; a++) c.G[9 * i + 4 * a] = h;
    c.len[i] = 1e30; /* no clamp */
  }
  double *pop = calloc((size_t)nc * M.nlev, sizeof(double));
  for (int nd = 0; nd < 3; nd++) {
    nlte_lvg_options o;
    nlte_lvg_options_default(&o);
    o.escape = NLTE_ESC_RADEX;
    o.ndir = nd == 0 ? 3 : nd == 1 ? 18 : 50;
    o.tol = 1e-10;
    o.t_bg = 2.73;
    nlte_lvg_cells C = view(&c);
    C.chunk = 5; /* warm and cold starts both */
    nlte_lvg_out out = {.pop = pop};
    CHECK_OK(nlte_lvg_solve(&M, &C, &o, &out));
    double worst = 0, worst_tex = 0;
    for (int i = 0; i < nc; i++) {
      nlte_conditions cz;
      nlte_conditions_default(&cz);
      cz.t_kin = c.T[i];
      cz.density[NLTE_H2] = c.nh2[i];
      cz.fwhm_kms = 1.0;
      cz.column = NLTE_FGAUS_FAC * c.nmol[i] * 1e5 / h;
      cz.geometry = NLTE_LVG;
      cz.t_bg = 2.73;
      nlte_options oz = {1e-10, 1000};
      CHECK_OK(nlte_solve(&M, &cz, &oz, &r));
      for (int k = 0; k < M.nlev; k++)
        if (r.pop[k] > 1e-10) worst = fmax(worst, fabs(pop[(size_t)i * M.nlev + k] / r.pop[k] - 1));
      double xl = pop[(size_t)i * M.nlev], xu = pop[(size_t)i * M.nlev + 1];
      double tex = NLTE_FK * M.xnu[0] / log(xl * M.gu_gl[0] / xu);
      worst_tex = fmax(worst_tex, fabs(tex / r.tex[0] - 1));
    }
    fprintf(stderr, "  %s, Hubble flow, %d directions: populations within %.2g, T_ex(line 1) within "
                    "%.2g of the one-zone LVG\n", file, o.ndir, worst, worst_tex);
    CHECK_MSG(worst < 1e-9, "ndir %d: populations differ from one-zone LVG by %.3g", o.ndir, worst);
  }
  free(pop);
  cells_free(&c);
  nlte_result_free(&r);
  nlte_model_free(&M);
  lamda_free(&m);
}

static void test_hubble_vs_one_zone(void) {
  /* CO: o/p-H2 rates (the thermal split); HCN: H2 rates, abundances below
   * the thick masing conditions where the one-zone solver itself does not
   * converge (docs/nlte.md, Known limits) */
  hubble_vs_one_zone("co.dat", (const double[3]){1e-8, 1e-4, 1e-2});
  hubble_vs_one_zone("hcn.dat", (const double[3]){1e-10, 1e-8, 1e-6});
}

/* The two-level molecule in an anisotropic flow (a radial wind: dv/dr = a
 * along x, v/r = b across), Sobolev escape: the solution must satisfy the
 * closed form at its own beta = mean_d esc(tau_d), tau_d computed here from
 * the populations and the direction set (nlte_lvg_directions). */
static void test_two_level_closed_form(void) {
  lamda_molecule m = two_level(NLTE_H2);
  nlte_model M;
  CHECK_OK(nlte_model_init(&M, &m));
  const int nc = 12;
  cells_t c;
  cells_alloc(&c, nc);
  for (int i = 0; i < nc; i++) {
    c.T[i] = 20.0 + 30.0 * (i % 4);
    c.nh2[i] = i < 6 ? 1e3 : 1e6;
    c.nmol[i] = i % 3 == 0 ? 1e-9 : i % 3 == 1 ? 1e-3 : 1.0;
    double a = 1e-10 * (1 + i), b = 4e-10;
    c.G[9 * i + 0] = a, c.G[9 * i + 4] = b, c.G[9 * i + 8] = b;
    c.G[9 * i + 1] = 1e-11; /* a shear term too */
    c.len[i] = 1e30;
  }
  double pop[2 * 12];
  nlte_lvg_options o;
  nlte_lvg_options_default(&o);
  o.tol = 1e-12;
  nlte_lvg_cells C = view(&c);
  nlte_lvg_out out = {.pop = pop};
  CHECK_OK(nlte_lvg_solve(&M, &C, &o, &out));
  double dirs[3 * NLTE_LVG_MAX_DIR], qw[NLTE_LVG_MAX_DIR];
  CHECK_OK(nlte_lvg_directions(o.ndir, dirs, qw));
  double tau_max = 0;
  for (int i = 0; i < nc; i++) {
    double x0 = pop[2 * i], x1 = pop[2 * i + 1], beta = 0;
    for (int d = 0; d < o.ndir; d++) {
      const double *n = dirs + 3 * d, *G = c.G + 9 * i;
      double g = 0;
      for (int p = 0; p < 3; p++)
        for (int q = 0; q < 3; q++) g += n[p] * G[3 * p + q] * n[q];
      double tau = c.nmol[i] / fabs(g) * (3.0 * x0 - x1) * 1e-4 / (8.0 * M_PI * 1000.0);
      tau_max = fmax(tau_max, tau);
      beta += qw[d] * (tau < 1e-8 ? 1.0 : (1.0 - exp(-tau)) / tau);
    }
    CHECK_CLOSE(x1 / x0, two_level_ratio(c.T[i], c.nh2[i], NLTE_T_CMB, beta), 1e-9, 0);
    CHECK_CLOSE(x0 + x1, 1.0, 1e-14, 0);
  }
  CHECK_MSG(tau_max > 10, "the cells reach tau = %g only (want thick ones too)", tau_max);
  cells_free(&c);
  nlte_model_free(&M);
}

/* Optically thin: n_mol -> 0 gives the one-zone thin populations (beta = 1)
 * whatever the gradient. tau ~ 1e-12 here, so beta = 1 - O(1e-12). */
static void test_thin_limit(void) {
  lamda_molecule m;
  CHECK_OK(load("co.dat", &m));
  nlte_model M;
  CHECK_OK(nlte_model_init(&M, &m));
  nlte_result r;
  CHECK_OK(nlte_result_init(&r, &M));
  const int nc = 6;
  cells_t c;
  cells_alloc(&c, nc);
  for (int i = 0; i < nc; i++) {
    c.T[i] = 30.0 * (i + 1);
    c.nh2[i] = pow(10.0, 2 + i);
    c.nmol[i] = 1e-12;
    c.G[9 * i] = 1e-9 * (i + 1), c.G[9 * i + 4] = -3e-10, c.G[9 * i + 8] = 2e-9, c.G[9 * i + 5] = 1e-10;
    c.len[i] = 1e16;
  }
  double *pop = calloc((size_t)nc * M.nlev, sizeof(double));
  nlte_lvg_options o;
  nlte_lvg_options_default(&o);
  o.tol = 1e-10;
  nlte_lvg_cells C = view(&c);
  nlte_lvg_out out = {.pop = pop};
  CHECK_OK(nlte_lvg_solve(&M, &C, &o, &out));
  double worst = 0;
  for (int i = 0; i < nc; i++) {
    nlte_conditions cz;
    nlte_conditions_default(&cz);
    cz.t_kin = c.T[i];
    cz.density[NLTE_H2] = c.nh2[i];
    cz.fwhm_kms = 1.0;
    cz.column = 1e-2; /* tau ~ 1e-18 */
    nlte_options oz = {1e-10, 1000};
    CHECK_OK(nlte_solve(&M, &cz, &oz, &r));
    for (int k = 0; k < M.nlev; k++)
      if (r.pop[k] > 1e-10) worst = fmax(worst, fabs(pop[(size_t)i * M.nlev + k] / r.pop[k] - 1));
  }
  CHECK_MSG(worst < 1e-9, "thin limit: %.3g from the one-zone thin populations", worst);
  free(pop);
  cells_free(&c);
  nlte_result_free(&r);
  nlte_model_free(&M);
  lamda_free(&m);
}

static void boltzmann(const nlte_model *M, double T, double *p) {
  double z = 0;
  for (int i = 0; i < M->nlev; i++) z += p[i] = M->g[i] * exp(-NLTE_FK * M->ecm[i] / T);
  for (int i = 0; i < M->nlev; i++) p[i] /= z;
}

/* The direction average against the exact angle average for a radial wind
 * (n.G.n = a mu^2 + b (1 - mu^2)): the mean of esc over the set converges
 * to (1/1) int_0^1 esc(tau0 / (a mu^2 + b (1 - mu^2))) dmu. Prints the
 * table of docs/nlte.md. */
static void test_direction_convergence(void) {
  const double a = 1.0, b = 0.1; /* dv/dr = v/r / 10 (wind near v_inf is the reverse) */
  const int nds[] = {3, 8, 18, 32, 50, 72, 128};
  const double taus[] = {0.3, 3.0, 30.0};
  for (int t = 0; t < 3; t++) {
    const double tau0 = taus[t];
    double exact = 0;
    const int nq = 200000; /* midpoint rule, error ~ 1/nq^2 */
    for (int k = 0; k < nq; k++) {
      double mu = (k + 0.5) / nq;
      exact += nlte_esc_sobolev(tau0 / (a * mu * mu + b * (1 - mu * mu)), NULL);
    }
    exact /= nq;
    fprintf(stderr, "  tau0 %-4g exact <beta> %.6f; relative error with ndir:", tau0, exact);
    for (int i = 0; i < 7; i++) {
      double dirs[3 * NLTE_LVG_MAX_DIR], qw[NLTE_LVG_MAX_DIR], s = 0, qs = 0;
      CHECK_OK(nlte_lvg_directions(nds[i], dirs, qw));
      for (int d = 0; d < nds[i]; d++) {
        double *n = dirs + 3 * d;
        CHECK_CLOSE(n[0] * n[0] + n[1] * n[1] + n[2] * n[2], 1.0, 1e-15, 0);
        CHECK(n[2] >= 0);
        /* the flow's axis along x: mu = n_x */
        s += qw[d] * nlte_esc_sobolev(tau0 / (a * n[0] * n[0] + b * (1 - n[0] * n[0])), NULL);
        qs += qw[d];
      }
      CHECK_CLOSE(qs, 1.0, 1e-14, 0);
      double err = fabs(s / exact - 1);
      fprintf(stderr, " %d: %.1e", nds[i], err);
      /* the bounds: what the product rule gives here, with a margin of 2 */
      double bound = nds[i] >= 128 ? 1e-5 : nds[i] >= 72 ? 2e-4 : nds[i] >= 18 ? 1.5e-3 : 1;
      CHECK_MSG(err < bound, "ndir %d: %.3g from the angle average", nds[i], err);
    }
    fprintf(stderr, "\n");
  }
}

/* The escape functions and their derivatives. */
static void test_escape(void) {
  const double taus[] = {-3.0, -0.5, -1e-4, 1e-5, 9e-4, 1.1e-3, 0.3, 2.0, 40.0, 800.0};
  for (size_t i = 0; i < sizeof taus / sizeof taus[0]; i++) {
    double t = taus[i], x = fabs(t), d, h = 1e-6 * fmax(1e-3, x);
    double b = nlte_esc_sobolev(t, &d);
    CHECK_CLOSE(b, -expm1(-x) / x, 2e-15, 0);
    double fd = (nlte_esc_sobolev(t + h, NULL) - nlte_esc_sobolev(t - h, NULL)) / (2 * h);
    CHECK_MSG(fabs(d - fd) <= 1e-6 * fabs(fd) + 1e-9, "tau %g: dbeta %.9g, finite difference %.9g", t,
              d, fd);
  }
  CHECK(nlte_esc_sobolev(0.0, NULL) == 1.0);
  CHECK(nlte_esc_radex_lvg(2.0, NULL) == nlte_beta(NLTE_LVG, 2.0, NULL));
  CHECK(nlte_lvg_escape_parse("Sobolev") == NLTE_ESC_SOBOLEV && nlte_lvg_escape_parse("radex") == NLTE_ESC_RADEX &&
        nlte_lvg_escape_parse("x") == -1);
}

/* A field of varied cells (a wind with a shear and a spiral-like density
 * wave): thread counts 1, 2, 3 give the same bits; every cell also matches
 * a cold start of its own (warm starts converge to the same solution), to
 * the tolerance: 1e-8 on the Newton step, so O(1e-8) between two converged
 * solutions from different starts. */
static void test_threads_and_warm_starts(void) {
  lamda_molecule m;
  CHECK_OK(load("co.dat", &m));
  nlte_model M;
  CHECK_OK(nlte_model_init(&M, &m));
  const int nc = 600;
  cells_t c;
  cells_alloc(&c, nc);
  for (int i = 0; i < nc; i++) {
    double r = 1.0 + 0.05 * i; /* in 1e15 cm */
    c.T[i] = fmax(10.0, 2000.0 * pow(r, -0.7));
    c.nh2[i] = 1e9 * pow(r, -2) * (1 + 0.5 * sin(0.3 * i));
    c.nmol[i] = 3e-4 * c.nh2[i];
    double v = 1.5e6, a = 2e-10 / r, bt = v / (r * 1e15);
    c.G[9 * i] = a, c.G[9 * i + 4] = bt, c.G[9 * i + 8] = bt, c.G[9 * i + 3] = 0.3 * bt;
    c.len[i] = 1e13;
  }
  size_t np = (size_t)nc * M.nlev;
  double *p1 = calloc(np, sizeof(double)), *p2 = calloc(np, sizeof(double)),
         *p3 = calloc(np, sizeof(double)), *pc = calloc(np, sizeof(double));
  nlte_lvg_options o;
  nlte_lvg_options_default(&o);
  nlte_lvg_cells C = view(&c);
  C.chunk = 64;
  nlte_lvg_out out = {.pop = p1};
  o.threads = 1;
  CHECK_OK(nlte_lvg_solve(&M, &C, &o, &out));
  int64_t cold = out.cold_starts;
  fprintf(stderr, "  600 cells: %lld iterations, %lld cold starts (%lld warm redone), max %d per cell\n",
          (long long)out.iterations, (long long)out.cold_starts, (long long)out.warm_redone,
          out.max_iterations);
  CHECK(cold >= 10 && cold < 60); /* 10 chains */
  o.threads = 2, out.pop = p2;
  CHECK_OK(nlte_lvg_solve(&M, &C, &o, &out));
  o.threads = 3, out.pop = p3;
  CHECK_OK(nlte_lvg_solve(&M, &C, &o, &out));
  CHECK(memcmp(p1, p2, np * sizeof(double)) == 0);
  CHECK(memcmp(p1, p3, np * sizeof(double)) == 0);
  /* reversed order: other chains, other warm starts, the same solution */
  int64_t *ord = malloc(sizeof(int64_t) * nc);
  for (int i = 0; i < nc; i++) ord[i] = nc - 1 - i;
  C.order = ord;
  C.chunk = 1; /* every cell cold */
  out.pop = pc;
  CHECK_OK(nlte_lvg_solve(&M, &C, &o, &out));
  CHECK(out.cold_starts == nc && out.warm_redone == 0);
  double worst = 0;
  for (size_t k = 0; k < np; k++)
    if (pc[k] > 1e-10) worst = fmax(worst, fabs(p1[k] / pc[k] - 1));
  CHECK_MSG(worst < 1e-7, "warm vs cold starts: %.3g", worst);
  fprintf(stderr, "  warm-started populations within %.2g of cold-started ones\n", worst);
  free(ord);
  free(p1), free(p2), free(p3), free(pc);
  cells_free(&c);
  nlte_model_free(&M);
  lamda_free(&m);
}

/* High density: Boltzmann at T_kin. Departures scale as A beta / (n_H2 k):
 * for CO's levels with a population > 1e-10 at these T, A <= 0.02 s^-1 and
 * k >= 1e-12 cm^3/s, so at n_H2 = 1e16 they are below 2e-6 * beta... we
 * take n_H2 = 1e18, bounding them by 2e-8. Then the imager given these
 * populations must reproduce the LTE imager: the image is linear in the
 * emissivity and opacity (through exp(-tau), |dI/I| <= (1 + tau) |dx/x|),
 * so with tau <= 10 here the images agree to 1e-6 relative. */
static void test_high_density_and_image(void) {
  lamda_molecule m;
  CHECK_OK(load("co.dat", &m));
  nlte_model M;
  CHECK_OK(nlte_model_init(&M, &m));
  const int nx = 3, ny = 2, nz = 24, nc = nx * ny * nz;
  cells_t c;
  cells_alloc(&c, nc);
  double *v = calloc(nc, sizeof(double)), *nm = calloc(nc, sizeof(double));
  for (int i = 0; i < nc; i++) {
    int z = i % nz;
    c.T[i] = 40.0 + 200.0 * z / nz + 10.0 * (i / nz);
    c.nh2[i] = 1e18;
    c.nmol[i] = 1e-4 * 1e6 * (1.0 + 0.1 * z); /* cm^-3: the molecule stays thin-ish per cell */
    nm[i] = c.nmol[i] * 1e6;                  /* m^-3 for the imager */
    v[i] = 800.0 * (z - nz / 2.0);
    for (int a = 0; a < 3; a++) c.G[9 * i + 4 * a] = 1e-9;
    c.len[i] = 1e14;
  }
  size_t np = (size_t)nc * M.nlev;
  double *pop = calloc(np, sizeof(double)), *xl = calloc(nc, sizeof(double)),
         *xu = calloc(nc, sizeof(double)), *p = calloc(M.nlev, sizeof(double));
  nlte_lvg_options o;
  nlte_lvg_options_default(&o);
  o.tol = 1e-10;
  nlte_lvg_cells C = view(&c);
  nlte_lvg_out out = {.pop = pop, .line = 2, .x_l = xl, .x_u = xu};
  CHECK_OK(nlte_lvg_solve(&M, &C, &o, &out));
  double worst = 0;
  for (int i = 0; i < nc; i++) {
    boltzmann(&M, c.T[i], p);
    for (int k = 0; k < M.nlev; k++)
      if (p[k] > 1e-10) worst = fmax(worst, fabs(pop[(size_t)i * M.nlev + k] / p[k] - 1));
    CHECK(xl[i] == pop[(size_t)i * M.nlev + 1] && xu[i] == pop[(size_t)i * M.nlev + 2]);
  }
  fprintf(stderr, "  n_H2 1e18: populations within %.2g of Boltzmann\n", worst);
  CHECK_MSG(worst < 2e-8, "high density: %.3g from Boltzmann", worst);
  /* the image */
  lte_line L;
  CHECK_OK(lte_line_init(&L, &m, 2, 28.0));
  double freqs[7];
  for (int f = 0; f < 7; f++) freqs[f] = L.nu0 * (1.0 + (f - 3) * 2e-6);
  lte_options lo = {.dx = 1e13, .vturb = 150.0, .corrected_taylor = 1};
  double *img_lte = calloc((size_t)nx * ny * 7, sizeof(double)),
         *img_pop = calloc((size_t)nx * ny * 7, sizeof(double));
  CHECK_OK(lte_solve_cube(&L, freqs, 7, nx, ny, nz, v, c.T, nm, &lo, img_lte));
  CHECK_OK(lte_solve_cube_pops(&L, freqs, 7, nx, ny, nz, v, c.T, nm, xl, xu, &lo, img_pop));
  double wi = 0, imax = 0;
  for (int k = 0; k < nx * ny * 7; k++) imax = fmax(imax, fabs(img_lte[k]));
  for (int k = 0; k < nx * ny * 7; k++) wi = fmax(wi, fabs(img_pop[k] - img_lte[k]) / fabs(img_lte[k]));
  fprintf(stderr, "  image from the populations within %.2g of the LTE image (peak %.3g)\n", wi, imax);
  CHECK(imax > 0);
  CHECK_MSG(wi < 1e-6, "image: %.3g from the LTE imager", wi);
  /* and with the Boltzmann populations the kernel's own Z gives, the same bits */
  for (int i = 0; i < nc; i++) {
    lte_cell e;
    lte_cell_eval(&L, c.T[i], 150.0, &e);
    xl[i] = e.p_l, xu[i] = e.p_u;
  }
  lo.libm = 1; /* the direct sum for Z, as lte_cell_eval */
  CHECK_OK(lte_solve_cube(&L, freqs, 7, nx, ny, nz, v, c.T, nm, &lo, img_lte));
  CHECK_OK(lte_solve_cube_pops(&L, freqs, 7, nx, ny, nz, v, c.T, nm, xl, xu, &lo, img_pop));
  CHECK(memcmp(img_lte, img_pop, sizeof(double) * nx * ny * 7) == 0);
  /* float32 */
  float *vf = calloc(nc, sizeof(float)), *Tf = calloc(nc, sizeof(float)), *nf = calloc(nc, sizeof(float)),
        *lf = calloc(nc, sizeof(float)), *uf = calloc(nc, sizeof(float));
  for (int i = 0; i < nc; i++) vf[i] = (float)v[i], Tf[i] = (float)c.T[i], nf[i] = (float)nm[i],
                               lf[i] = (float)xl[i], uf[i] = (float)xu[i];
  CHECK_OK(lte_solve_cube_pops_f32(&L, freqs, 7, nx, ny, nz, vf, Tf, nf, lf, uf, &lo, img_pop));
  CHECK(isfinite(img_pop[0]));
  /* a bad population is named */
  xu[5] = NAN;
  CHECK_ERR(lte_solve_cube_pops(&L, freqs, 7, nx, ny, nz, v, c.T, nm, xl, xu, &lo, img_pop),
            "x_u[0, 0, 5]");
  xu[5] = 1.5;
  CHECK_ERR(lte_solve_cube_pops(&L, freqs, 7, nx, ny, nz, v, c.T, nm, xl, xu, &lo, img_pop),
            "x_u[0, 0, 5]");
  free(vf), free(Tf), free(nf), free(lf), free(uf);
  lte_line_free(&L);
  free(img_lte), free(img_pop), free(v), free(nm);
  free(pop), free(xl), free(xu), free(p);
  cells_free(&c);
  nlte_model_free(&M);
  lamda_free(&m);
}

/* Bad input: each a clear error naming the cell. */
static void test_bad_input(void) {
  lamda_molecule m;
  CHECK_OK(load("co.dat", &m));
  nlte_model M;
  CHECK_OK(nlte_model_init(&M, &m));
  const int nc = 10;
  cells_t c;
  cells_alloc(&c, nc);
  for (int i = 0; i < nc; i++) {
    c.T[i] = 50, c.nh2[i] = 1e5, c.nmol[i] = 1e-1, c.len[i] = 1e14;
    for (int a = 0; a < 3; a++) c.G[9 * i + 4 * a] = 1e-9;
  }
  nlte_lvg_options o;
  nlte_lvg_options_default(&o);
  nlte_lvg_cells C = view(&c);
  nlte_lvg_out out = {0};
  CHECK_OK(nlte_lvg_solve(&M, &C, &o, &out));
  c.T[7] = NAN;
  CHECK_ERR(nlte_lvg_solve(&M, &C, &o, &out), "cell 7: T_kin = nan");
  CHECK(out.bad_cell == 7);
  c.T[7] = 5e4;
  CHECK_ERR(nlte_lvg_solve(&M, &C, &o, &out), "cell 7: T_kin = 50000, expected 0.1 .. 1e4 K");
  /* the checks on their own (generate --check's scan of a model): the
   * lowest bad cell named, every bad cell counted, T_kin's range */
  int64_t bad = -2;
  nlte_lvg_scan scan;
  c.T[2] = 0.05, c.T[9] = 2e4, c.nh2[5] = 0;
  CHECK_ERR(nlte_lvg_cells_check(&C, &bad, &scan), "cell 2: T_kin = 0.05, expected 0.1 .. 1e4 K");
  CHECK(bad == 2 && scan.bad == 4 && scan.t_min == 0.05 && scan.t_max == 5e4);
  CHECK_ERR(nlte_lvg_cells_check(&C, &bad, NULL), "cell 2: T_kin = 0.05");
  CHECK(bad == 2);
  c.T[2] = c.T[9] = 50, c.nh2[5] = 1e5, c.T[7] = 0.1, c.T[0] = 1e4; /* the limits are taken */
  CHECK_OK(nlte_lvg_cells_check(&C, &bad, &scan));
  CHECK(bad == -1 && scan.bad == 0 && scan.t_min == 0.1 && scan.t_max == 1e4);
  c.T[0] = 50;
  c.T[7] = 50;
  c.nh2[3] = 0;
  CHECK_ERR(nlte_lvg_solve(&M, &C, &o, &out), "cell 3: n_H2 = 0");
  c.nh2[3] = 1e5;
  c.nmol[4] = -1;
  CHECK_ERR(nlte_lvg_solve(&M, &C, &o, &out), "cell 4: n_mol = -1");
  c.nmol[4] = 1e-1;
  c.G[9 * 8 + 5] = INFINITY;
  CHECK_ERR(nlte_lvg_solve(&M, &C, &o, &out), "cell 8: grad_v = inf");
  c.G[9 * 8 + 5] = 0;
  c.len[2] = 0;
  CHECK_ERR(nlte_lvg_solve(&M, &C, &o, &out), "cell 2: length = 0");
  c.len[2] = 1e14;
  o.ndir = 0;
  CHECK_ERR(nlte_lvg_solve(&M, &C, &o, &out), "0 directions");
  o.ndir = 6;
  CHECK_ERR(nlte_lvg_solve(&M, &C, &o, &out), "6 directions, expected 3 (the axes) or 2 m^2");
  o.ndir = 8;
  out.line = 99;
  CHECK_ERR(nlte_lvg_solve(&M, &C, &o, &out), "line 99");
  out.line = 0;
  int64_t ord[10] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 8};
  C.order = ord;
  CHECK_ERR(nlte_lvg_solve(&M, &C, &o, &out), "not a permutation");
  C.order = NULL;
  /* a molecule with electron rates only: H2 has no rates */
  lamda_molecule e2 = two_level(NLTE_E);
  nlte_model ME;
  CHECK_OK(nlte_model_init(&ME, &e2));
  CHECK_ERR(nlte_lvg_solve(&ME, &C, &o, &out), "cell 0 (T_kin 50 K");
  CHECK(strstr(ce_err_msg(), "no rates for it") != NULL);
  CHECK(out.bad_cell == 0);
  /* no convergence names the cell */
  o.max_iter = 1;
  o.tol = 1e-300;
  CHECK_ERR(nlte_lvg_solve(&M, &C, &o, &out), "cell 0 (");
  CHECK(strstr(ce_err_msg(), "no convergence") != NULL);
  nlte_model_free(&ME);
  cells_free(&c);
  nlte_model_free(&M);
  lamda_free(&m);
}

int main(void) {
  data_dir = getenv("COEMU_TEST_DATA");
  if (!data_dir) data_dir = "tests/data";
  RUN(test_escape);
  RUN(test_direction_convergence);
  RUN(test_hubble_vs_one_zone);
  RUN(test_two_level_closed_form);
  RUN(test_thin_limit);
  RUN(test_threads_and_warm_starts);
  RUN(test_high_density_and_image);
  RUN(test_bad_input);
  return check_report();
}
