/* test_lvg_model.c - the 3-D LVG path end to end on an AMR model: a uniform
 * box in a Hubble flow v = h x (rotate/model_lvg.h: velocity gradients on
 * the leaves; solver/nlte_lvg.h: populations per cell;
 * rotate/sampler.h: sample_cube_fields; solver/lte.h: lte_solve_cube_pops_f32)
 * against the one-zone LVG (nlte_solve, RADEX's expanding sphere) with the
 * matching column, and the image against the Sobolev closed form of that
 * one-zone result. Also: the gradient stencil on a coarse/fine AMR model,
 * the serpentine order, and extra fields sampled like T (same bits for
 * v, T, n as sample_cube). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "rotate/directions.h"
#include "rotate/model.h"
#include "rotate/model_lvg.h"
#include "rotate/sampler.h"
#include "rotate/units.h"
#include "solver/lamda.h"
#include "solver/lte.h"
#include "solver/nlte.h"
#include "solver/nlte_lvg.h"

static const char *data_dir;

#define H_CODE 1.0   /* dv/dx in code units: 1 km/s per code length (1e13 m): 1e-10 s^-1 */
#define T_BOX 100.0  /* K */
#define X_CO 1e-4

typedef struct {
  units_si si;
  double mu, gamma;
  int linear; /* 1: v = H x (Hubble); 2: a general linear field */
} box_state;

static const double GEN[9] = {0.3, -0.2, 0.05, 0.1, 0.7, -0.4, 0.25, 0.15, -0.5};

static void state(const double x[3], double w[5], void *user) {
  const box_state *b = user;
  double rho = b->linear == 2 ? 1.0 + 0.5 * sin(0.7 * x[0] + 0.3 * x[1] - 0.2 * x[2]) : 1.0, v[3];
  for (int a = 0; a < 3; a++)
    v[a] = b->linear == 1 ? H_CODE * x[a] : GEN[3 * a] * x[0] + GEN[3 * a + 1] * x[1] + GEN[3 * a + 2] * x[2];
  /* T = mu m_H p / (rho k), all SI */
  double p_si = T_BOX * UNITS_K_B * (rho * b->si.density) / (b->mu * UNITS_M_H);
  double p = p_si / b->si.pressure;
  w[0] = rho;
  for (int a = 0; a < 3; a++) w[1 + a] = rho * v[a];
  w[4] = p / (b->gamma - 1) + 0.5 * rho * (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]);
}

/* refine the level-1 blocks with x < 0 (a coarse/fine interface at x = 0) */
static int refine_half(const amrvac_block_id *id, void *user) {
  (void)user;
  return id->level == 1 && id->ig[0] <= 2;
}

static units box_units(void) {
  units u;
  const char *y = "version: 1\nunit_system: si\nunit_length: 1e13\nunit_numberdensity: 1e12\n"
                  "unit_velocity: 1e3\nmu: 2.3333333333333335\nco_abundance: 1e-4\nstretched: false\n";
  CHECK_OK(units_parse(y, strlen(y), "box.units.yaml", &u));
  return u;
}

static ce_model *box_model(int linear) {
  units u = box_units();
  box_state b = {.mu = u.mu, .gamma = 5.0 / 3.0, .linear = linear};
  units_scales(&u, &b.si);
  amrvac_snapshot s;
  CHECK_OK(model_synthetic_snapshot((int[3]){32, 32, 32}, (int[3]){8, 8, 8},
                                    (double[3]){-16, -16, -16}, (double[3]){16, 16, 16}, 2, 5.0 / 3,
                                    refine_half, NULL, state, &b, &s));
  ce_model *m = NULL;
  CHECK_OK(model_from_snapshot(&s, &u, &m));
  amrvac_free(&s);
  return m;
}

/* The velocity gradient of a linear field is exact on every cell (also at
 * the coarse/fine interface and at the domain faces) up to the float32
 * storage of v: |dG| <= 2 eps_f |v|max / dx_min per entry. */
static void test_gradient_stencil(void) {
  ce_model *m = box_model(2);
  if (!m) return;
  int64_t N = m->nleaves * m->ncell;
  double *G = malloc(sizeof(double) * 9 * N);
  CHECK_OK(model_velocity_gradient(m, G));
  /* |v| <= 16 * sqrt(3) * max row sum of GEN km/s; dx_min = 0.5e13 m */
  double vmax = 16 * sqrt(3.0) * 1.0 * 1e3, bound = 4 * 6e-8 * vmax / 0.5e13;
  double worst = 0;
  for (int64_t c = 0; c < N; c++)
    for (int k = 0; k < 9; k++) worst = fmax(worst, fabs(G[9 * c + k] - GEN[k] * 1e-10));
  fprintf(stderr, "  linear field on a 2-level model (%lld cells): gradient within %.2g s^-1 (bound %.2g)\n",
          (long long)N, worst, bound);
  CHECK_MSG(worst < bound, "gradient off by %.3g s^-1", worst);
  /* the order: a permutation, leaf by leaf, each step to a face neighbour */
  model_lvg_inputs in;
  CHECK_OK(model_lvg_inputs_make(m, X_CO, X_CO, &in));
  CHECK(in.ncell == N && in.chunk == m->ncell);
  char *seen = calloc(N, 1);
  int bad = 0;
  for (int64_t i = 0; i < N; i++) {
    int64_t c = in.order[i];
    bad |= c < 0 || c >= N || seen[c];
    if (c >= 0 && c < N) seen[c] = 1;
    if (i % m->ncell) {
      double a[3], b[3], d = 0;
      model_cell_centre(m, in.order[i - 1], a);
      model_cell_centre(m, c, b);
      for (int k = 0; k < 3; k++) d += fabs(a[k] - b[k]);
      bad |= fabs(d / ((in.length[c] / 100.0)) - 1) > 1e-9; /* one cell edge apart */
    }
  }
  CHECK(!bad);
  {
    double x0[3]; /* n_H2 = n_H / 2 [cm^-3] (n_CO stored as float) */
    model_cell_centre(m, 0, x0);
    double rho = 1.0 + 0.5 * sin((0.7 * x0[0] + 0.3 * x0[1] - 0.2 * x0[2]) / 1e13);
    CHECK_CLOSE(in.n_h2[0], 0.5e12 * 1e-6 * rho, 1e-6, 0);
    CHECK_CLOSE(in.n_mol[0], X_CO * in.n_h2[0], 1e-15, 0);
  }
  char name[256];
  model_cell_name(m, 5, name, sizeof name);
  CHECK(strstr(name, "leaf 0 (level") && strstr(name, "cell (5, 0, 0)"));
  model_lvg_inputs_free(&in);
  /* an extra field is sampled as T and v_los are (n-weighted): the model's
   * own v_z as the field gives the v_los cube at identity, bit for bit, on
   * this model of varying density */
  {
    const int n = 16;
    size_t nv = (size_t)n * n * n;
    float *vz = malloc(sizeof(float) * N), *v = malloc(nv * 4), *T = malloc(nv * 4),
          *nc = malloc(nv * 4), *ex = malloc(nv * 4);
    for (int64_t c = 0; c < N; c++) vz[c] = m->cells[c * MODEL_NF + MODEL_VZ];
    sampler_opts so;
    sampler_defaults(&so);
    so.reconstruction = SAMPLER_CONSTANT; /* cell values, as the extra field */
    so.n = n;
    so.edge = 16.0e13;
    so.ball_radius = 16e13;
    const double q[4] = {1, 0, 0, 0};
    const float *fields[1] = {vz};
    float *outs[1] = {ex};
    CHECK_OK(sample_cube_fields(m, q, &so, v, T, nc, 1, fields, NULL, outs));
    CHECK(memcmp(v, ex, nv * 4) == 0);
    double nmin = INFINITY, nmax = 0;
    for (size_t i = 0; i < nv; i++) nmin = fmin(nmin, nc[i]), nmax = fmax(nmax, nc[i]);
    CHECK(nmax > 2 * nmin); /* the weighting matters here */
    CHECK_ERR(sample_cube_fields(m, q, &so, v, T, nc, 1, NULL, NULL, outs), "1 extra fields");
    free(vz), free(v), free(T), free(nc), free(ex);
  }
  CHECK_ERR(model_lvg_inputs_make(m, 0, X_CO, &in), "CO abundance");
  CHECK_ERR(model_lvg_inputs_make(m, X_CO, 2.0, &in), "molecule abundance n_mol/n_H2 = 2");
  free(seen);
  free(G);
  model_free(m);
}

/* A uniform box in a Hubble flow: every cell is the one-zone LVG with
 * N / dv = 1.0645 n_mol / h (RADEX's escape), and the image of every pixel
 * is the Sobolev closed form I = S (1 - exp(-tau_nu)) with
 * tau_nu = chi n c / (nu h) (the Gaussian profile integrated exactly along
 * the ray by the imager, exact for v_los linear in z: the voxels are the
 * coarse cells, 8 fine cells averaged in the refined half, so v_los is
 * exactly h z; the wings beyond the cube, |v| > 6.5 km/s from every
 * channel against a width of 0.24 km/s, are below 1e-300). Tolerances: the gradient carries
 * the float32 error of v, relative <= 4 eps_f |v|max / (h dx) = 1.6e-5
 * (bound of test_gradient_stencil for this field), which moves tau by as
 * much and the populations by at most as much (|d ln x / d ln tau| <= 1:
 * beta's logarithmic slope is at most 1); the cube stores x, n, v, T in
 * float32 (6e-8). So populations within 2e-5, the image within 4e-5. */
static void test_hubble_box(void) {
  ce_model *m = box_model(1);
  if (!m) return;
  char p[600];
  snprintf(p, sizeof p, "%s/lamda/co.dat", data_dir);
  lamda_molecule mol;
  CHECK_OK(lamda_read(p, &mol));
  nlte_model M;
  CHECK_OK(nlte_model_init(&M, &mol));
  model_lvg_inputs in;
  CHECK_OK(model_lvg_inputs_make(m, X_CO, X_CO, &in));
  const int line = 2; /* CO 2-1 */
  int64_t N = in.ncell;
  double *xl = malloc(sizeof(double) * N), *xu = malloc(sizeof(double) * N);
  nlte_lvg_options o;
  nlte_lvg_options_default(&o);
  o.escape = NLTE_ESC_RADEX;
  o.tol = 1e-10;
  nlte_lvg_cells C = {in.ncell, in.t_kin, in.n_h2, in.n_mol, in.grad_v, in.length, in.order, in.chunk};
  nlte_lvg_out out = {.line = line, .x_l = xl, .x_u = xu};
  CHECK_OK(nlte_lvg_solve(&M, &C, &o, &out));
  /* the one-zone LVG */
  nlte_result r;
  CHECK_OK(nlte_result_init(&r, &M));
  nlte_conditions cz;
  nlte_conditions_default(&cz);
  cz.t_kin = in.t_kin[0];
  cz.density[NLTE_H2] = in.n_h2[0];
  cz.fwhm_kms = 1.0;
  cz.column = NLTE_FGAUS_FAC * in.n_mol[0] * 1e5 / 1e-10;
  cz.geometry = NLTE_LVG;
  nlte_options oz = {1e-10, 1000};
  CHECK_OK(nlte_solve(&M, &cz, &oz, &r));
  int lo = M.lo[line - 1], up = M.up[line - 1];
  double worst = 0;
  for (int64_t c = 0; c < N; c++) {
    CHECK(in.t_kin[c] == in.t_kin[0] && in.n_h2[c] == in.n_h2[0]);
    worst = fmax(worst, fmax(fabs(xl[c] / r.pop[lo] - 1), fabs(xu[c] / r.pop[up] - 1)));
  }
  fprintf(stderr, "  Hubble box, %lld cells: x_l, x_u within %.2g of the one-zone LVG (tau %.3f, T_ex %.3f K)\n",
          (long long)N, worst, r.tau[line - 1], r.tex[line - 1]);
  CHECK_MSG(worst < 2e-5, "populations %.3g from the one-zone LVG", worst);
  CHECK(r.tau[line - 1] > 0.3); /* not a thin test */
  /* sample and image */
  float *fl = malloc(sizeof(float) * N), *fu = malloc(sizeof(float) * N);
  for (int64_t c = 0; c < N; c++) fl[c] = (float)xl[c], fu[c] = (float)xu[c];
  const int n = 16;
  size_t nv = (size_t)n * n * n;
  float *v = malloc(nv * 4), *T = malloc(nv * 4), *nc = malloc(nv * 4), *cl = malloc(nv * 4),
        *cu = malloc(nv * 4), *v2 = malloc(nv * 4), *T2 = malloc(nv * 4), *n2 = malloc(nv * 4);
  sampler_opts so;
  sampler_defaults(&so);
  so.n = n;
  so.edge = 16.0e13; /* voxels of one coarse cell, aligned with the cells: v_los exactly h z */
  so.ball_radius = 16e13;
  const double q[4] = {1, 0, 0, 0};
  const float *fields[2] = {fl, fu};
  float *outs[2] = {cl, cu};
  CHECK_OK(sample_cube_fields(m, q, &so, v, T, nc, 2, fields, NULL, outs));
  CHECK_OK(sample_cube(m, q, &so, v2, T2, n2));
  CHECK(!memcmp(v, v2, nv * 4) && !memcmp(T, T2, nv * 4) && !memcmp(nc, n2, nv * 4));
  lte_line L;
  CHECK_OK(lte_line_init(&L, &mol, line, 28.0));
  double freqs[5], img[16 * 16 * 5];
  for (int f = 0; f < 5; f++) freqs[f] = L.nu0 * (1.0 - (f - 2) * 0.5e3 / LTE_C); /* v = -1..1 km/s */
  /* the box's wings: |v_los| reaches 7.5 km/s, 27 widths from these channels */
  lte_options lo_ = {.dx = so.edge / n, .corrected_taylor = 1};
  CHECK_OK(lte_solve_cube_pops_f32(&L, freqs, 5, n, n, n, v, T, nc, cl, cu, &lo_, img));
  /* the closed form from the one-zone populations */
  double xl0 = r.pop[lo], xu0 = r.pop[up], nmol = in.n_mol[0] * 1e6; /* m^-3 */
  double S = (L.A * xu0) / (L.B_lu * xl0 - L.B_ul * xu0);
  double chi = L.fac * (L.B_lu * xl0 - L.B_ul * xu0), hsi = 1e-10;
  double wi = 0, wt = 0;
  for (int f = 0; f < 5; f++) {
    double tau = chi * nmol * LTE_C / (freqs[f] * hsi);
    wt = fmax(wt, fabs(tau / r.tau[line - 1] - 1));
    double I = S * -expm1(-tau);
    for (int pix = 0; pix < n * n; pix++) wi = fmax(wi, fabs(img[pix * 5 + f] / I - 1));
  }
  fprintf(stderr, "  image within %.2g of S (1 - e^-tau) (Sobolev tau within %.2g of the one-zone tau)\n",
          wi, wt);
  CHECK_MSG(wi < 4e-5, "image %.3g from the Sobolev closed form", wi);
  /* the imager's tau (the file's frequency, and 1/nu with nu/nu0 - 1 <= 3.4e-6) against
   * RADEX's (xnu from the level energies, given to 6 decimals: xnu^3 to ~1e-5) */
  CHECK_MSG(wt < 1e-4, "Sobolev tau %.3g from the one-zone tau", wt);
  lte_line_free(&L);
  free(v), free(T), free(nc), free(cl), free(cu), free(v2), free(T2), free(n2), free(fl), free(fu);
  free(xl), free(xu);
  nlte_result_free(&r);
  model_lvg_inputs_free(&in);
  nlte_model_free(&M);
  lamda_free(&mol);
  model_free(m);
}

int main(void) {
  data_dir = getenv("COEMU_TEST_DATA");
  if (!data_dir) data_dir = "tests/data";
  RUN(test_gradient_stencil);
  RUN(test_hubble_box);
  return check_report();
}
