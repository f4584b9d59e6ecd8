/* lte.c - the LTE line imager (see lte.h and docs/physics.md).
 *
 * Every expression below follows Pomme's operation order (parenthesised as
 * Pomme evaluates it), because optically thin segments cancel: reordering a
 * product changes the last bit of an intermediate, and the per-segment
 * optical depth can amplify that by 1e4 or more. The build disables FMA
 * contraction for this file for the same reason.
 *
 * Layout of the work: one ray (pixel) at a time per thread. Per cell, 8
 * cells at once: populations, S, a*dx, 1/width, Doppler factor. Per
 * frequency: b, exp(-b^2), erf(b) per cell; the segment optical depths; the
 * running sum tau (scalar: it is a recurrence); exp(-tau); the formal
 * solution per segment, summed.
 */
#include "lte.h"

#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

#define SQRT_PI 1.7724538509055159 /* np.sqrt(np.pi) */
#define INV_SQRT_PI (1.0 / SQRT_PI)
#define PI 3.141592653589793

/* ---------------------------------------------------------------------- */
/* 8-wide double vectors (GCC vector extensions: the same source gives
 * AVX-512 code with -march=native on AVX-512 hosts and SSE/AVX pairs
 * elsewhere). */
typedef double v8d __attribute__((vector_size(64)));
typedef long long v8l __attribute__((vector_size(64)));
#define W 8

static inline v8d ld(const double *p) {
  v8d r;
  memcpy(&r, p, sizeof r);
  return r;
}
static inline void st(double *p, v8d x) { memcpy(p, &x, sizeof x); }
static inline v8d splat(double x) { return (v8d){x, x, x, x, x, x, x, x}; }
/* mask ? x : y, mask lanes all ones or all zeros */
static inline v8d blend(v8l mask, v8d x, v8d y) {
  return (v8d)(((v8l)x & mask) | ((v8l)y & ~mask));
}
static inline v8d vabs(v8d x) {
  const long long m = 0x7fffffffffffffffLL;
  return (v8d)((v8l)x & (v8l){m, m, m, m, m, m, m, m});
}

#if defined(__AVX512F__) && defined(COEMU_HAVE_LIBMVEC)
#include <immintrin.h>
/* glibc libmvec, AVX-512 variants (declared here: math.h exposes them only
 * under -ffast-math). Accuracy: exp <= 1 ulp, erf <= 1 ulp per glibc's
 * libmvec ulps table; the tests compare against libm on random cubes. */
__m512d _ZGVeN8v_exp(__m512d);
__m512d _ZGVeN8v_erf(__m512d);
static inline v8d vexp(v8d x) { return (v8d)_ZGVeN8v_exp((__m512d)x); }
static inline v8d verf(v8d x) { return (v8d)_ZGVeN8v_erf((__m512d)x); }
static inline v8d vsqrt(v8d x) { return (v8d)_mm512_sqrt_pd((__m512d)x); }
static inline int all_true(v8l m) {
  return _mm512_cmpneq_epi64_mask((__m512i)m, _mm512_setzero_si512()) == 0xff;
}
const char *lte_kernel_name(void) { return "avx512-libmvec"; }
#else
static inline v8d vexp(v8d x) {
  for (int i = 0; i < W; i++) x[i] = exp(x[i]);
  return x;
}
static inline v8d verf(v8d x) {
  for (int i = 0; i < W; i++) x[i] = erf(x[i]);
  return x;
}
static inline v8d vsqrt(v8d x) {
  for (int i = 0; i < W; i++) x[i] = sqrt(x[i]);
  return x;
}
static inline int all_true(v8l m) {
  for (int i = 0; i < W; i++)
    if (!m[i]) return 0;
  return 1;
}
const char *lte_kernel_name(void) { return "portable"; }
#endif

/* ---------------------------------------------------------------------- */
/* Line constants */

typedef struct {
  double e;
  double g;
} level_eg;

static int cmp_energy(const void *a, const void *b) {
  double x = ((const level_eg *)a)->e, y = ((const level_eg *)b)->e;
  return (x > y) - (x < y);
}

int lte_line_init(lte_line *L, const lamda_molecule *m, int transition, double mass_amu) {
  memset(L, 0, sizeof *L);
  CE_TRY(lamda_check_transition(m, transition));
  const lamda_line *t = &m->lines[transition - 1];
  L->transition = transition;
  L->upper = t->upper;
  L->lower = t->lower;
  L->nlev = m->nlev;
  L->mass_amu = mass_amu > 0 ? mass_amu : m->weight;
  if (!(L->mass_amu > 0) || !isfinite(L->mass_amu))
    return ce_err("molecular mass = %g u, expected > 0", L->mass_amu);
  level_eg *lv = ce_malloc_array((size_t)m->nlev, sizeof *lv, "LTE levels");
  L->neg_e_over_k = ce_malloc_array((size_t)m->nlev, sizeof(double), "LTE levels");
  L->g = ce_malloc_array((size_t)m->nlev, sizeof(double), "LTE levels");
  L->g_tail_ratio = ce_malloc_array((size_t)m->nlev, sizeof(double), "LTE levels");
  if (!lv || !L->neg_e_over_k || !L->g || !L->g_tail_ratio) {
    free(lv);
    lte_line_free(L);
    return -1;
  }
  /* Pomme: energy *= 1.0E+2*HH*CC (cm^-1 -> J); exponent = (-energy/KB)/T */
  const double cm_to_j = (1.0e2 * LTE_H) * LTE_C;
  for (int i = 0; i < m->nlev; i++) {
    double e_j = m->levels[i].energy_cm * cm_to_j;
    lv[i].e = -e_j / LTE_KB;
    lv[i].g = m->levels[i].weight;
  }
  L->neg_e_over_k_u = lv[t->upper - 1].e;
  L->neg_e_over_k_l = lv[t->lower - 1].e;
  L->g_u = lv[t->upper - 1].g;
  L->g_l = lv[t->lower - 1].g;
  /* The partition sum runs in ascending energy (the file order for every
   * LAMDA file shipped here), which lets the kernel stop exactly where the
   * remaining terms can no longer change the sum (see populations()). */
  for (int i = 0; i < m->nlev; i++) lv[i].e = -lv[i].e;
  qsort(lv, (size_t)m->nlev, sizeof *lv, cmp_energy); /* ascending E */
  for (int i = 0; i < m->nlev; i++) {
    L->neg_e_over_k[i] = -lv[i].e;
    L->g[i] = lv[i].g;
  }
  double gmax = 0;
  for (int i = m->nlev - 1; i >= 0; i--) {
    if (L->g[i] > gmax) gmax = L->g[i];
    L->g_tail_ratio[i] = gmax / L->g[i];
  }
  free(lv);
  /* Pomme's LineData/Line constants */
  L->nu0 = t->freq_ghz * 1.0e9;
  L->A = t->A;
  L->B_ul = (L->A * (LTE_C * LTE_C)) / ((2.0 * LTE_H) * pow(L->nu0, 3));
  L->B_lu = (L->g_u / L->g_l) * L->B_ul;
  L->fac = (LTE_H * L->nu0) / (4.0 * PI);
  L->nu0_over_c = L->nu0 / LTE_C;
  L->two_k_over_m = (2.0 * LTE_KB) / (L->mass_amu * LTE_AMU);
  return 0;
}

void lte_line_free(lte_line *L) {
  if (!L) return;
  free(L->neg_e_over_k);
  free(L->g);
  free(L->g_tail_ratio);
  L->neg_e_over_k = L->g = L->g_tail_ratio = NULL;
}

void lte_cell_eval(const lte_line *L, double T, double vturb, lte_cell *o) {
  double invT = 1.0 / T, Z = 0;
  for (int i = 0; i < L->nlev; i++) Z += L->g[i] * exp(L->neg_e_over_k[i] * invT);
  double r = 1.0 / Z;
  o->Z = Z;
  o->p_l = (L->g_l * exp(L->neg_e_over_k_l * invT)) * r;
  o->p_u = (L->g_u * exp(L->neg_e_over_k_u * invT)) * r;
  o->eta = (L->fac * L->A) * o->p_u;
  o->chi = L->fac * (L->B_lu * o->p_l - L->B_ul * o->p_u);
  o->S = o->eta / o->chi;
  o->iw = 1.0 / (L->nu0_over_c * sqrt(L->two_k_over_m * T + vturb * vturb));
}

/* ---------------------------------------------------------------------- */
/* The kernel */

typedef struct {
  int nzp;  /* nz rounded up to W */
  double *T, *n, *v;              /* ray inputs, float64 */
  double *S, *adx, *iw, *shift;   /* per cell */
  double *b, *eb, *er;            /* per cell, one frequency */
  double *dtau, *tau, *em;        /* per segment / cell, one frequency */
} workspace;

static int ws_alloc(workspace *w, int nz) {
  memset(w, 0, sizeof *w);
  w->nzp = (nz + W - 1) / W * W;
  size_t len = (size_t)w->nzp + W; /* one spare vector: segment loads read k+1 */
  double *all = calloc(13 * len, sizeof(double));
  if (!all) return -1;
  double **p[] = {&w->T, &w->n, &w->v, &w->S, &w->adx, &w->iw, &w->shift,
                  &w->b, &w->eb, &w->er, &w->dtau, &w->tau, &w->em};
  for (int i = 0; i < 13; i++) *p[i] = all + (size_t)i * len;
  return 0;
}
static void ws_free(workspace *w) { free(w->T); }

/* Per-cell constants for cells [0, nzp): populations (LTE over all levels),
 * S, a*dx, 1/width, 1+v/c. */
static void cells(const lte_line *L, const lte_options *o, workspace *w) {
  const double vt2 = o->vturb * o->vturb;
  const double tiny = 0x1p-54; /* below half an ulp of the partial sum */
  const double eta_c = L->fac * L->A;
  for (int z = 0; z < w->nzp; z += W) {
    v8d T = ld(w->T + z);
    v8d invT = 1.0 / T;
    v8d Z = splat(0);
    for (int i = 0; i < L->nlev; i++) {
      v8d t = L->g[i] * vexp(L->neg_e_over_k[i] * invT);
      /* Levels are in ascending energy, so every later term is at most
       * t * g_tail_ratio. Once that is below half an ulp of Z in every lane,
       * adding them one by one would round back to Z each time: stopping
       * gives the sequential sum over ALL levels bit for bit. */
      if (all_true((v8l)(t * L->g_tail_ratio[i] < tiny * Z))) break;
      Z = Z + t;
    }
    v8d r = 1.0 / Z;
    v8d pl = (L->g_l * vexp(L->neg_e_over_k_l * invT)) * r;
    v8d pu = (L->g_u * vexp(L->neg_e_over_k_u * invT)) * r;
    v8d eta = eta_c * pu;
    v8d chi = L->fac * (L->B_lu * pl - L->B_ul * pu);
    st(w->S + z, eta / chi);
    v8d iw = 1.0 / (L->nu0_over_c * vsqrt(L->two_k_over_m * T + vt2));
    st(w->iw + z, iw);
    st(w->adx + z, (((INV_SQRT_PI * iw) * chi) * ld(w->n + z)) * o->dx);
    st(w->shift + z, 1.0 + ld(w->v + z) * (1.0 / LTE_C));
  }
}

/* Intensity of one ray at frequency nu. */
static double ray_freq(const lte_line *L, const lte_options *o, workspace *w, int nz, double nu,
                       double bdy) {
  const int nzp = w->nzp, nseg = nz - 1;
  const double nu0 = L->nu0;
  for (int z = 0; z < nzp; z += W) {
    v8d b = ld(w->iw + z) * (ld(w->shift + z) * nu - nu0);
    st(w->b + z, b);
    st(w->eb + z, vexp(-(b * b)));
    st(w->er + z, verf(b));
  }
  /* segment optical depths */
  for (int k = 0; k < nseg; k += W) {
    v8d a0 = ld(w->adx + k), a1 = ld(w->adx + k + 1);
    v8d b0 = ld(w->b + k), b1 = ld(w->b + k + 1);
    v8d eb0 = ld(w->eb + k), eb1 = ld(w->eb + k + 1);
    v8d er0 = ld(w->er + k), er1 = ld(w->er + k + 1);
    v8d b10 = b1 - b0, a01 = a0 + a1;
    v8d sp_a1b0 = (SQRT_PI * a1) * b0;
    v8d sp_a0b1 = (SQRT_PI * a0) * b1;
    v8d d = (a1 - a0) * (eb0 - eb1);
    d = d + (sp_a1b0 - sp_a0b1) * (er0 - er1);
    d = d * (0.5 / (b10 * b10 + 1.0e-30));
    v8d near = (0.5 * a01) * eb0 - ((1.0 / 3.0) * (a01 + a1)) * ((eb0 * b0) * b10);
    st(w->dtau + k, blend((v8l)(vabs(b10) < 1.0e-4), near, d));
  }
  /* running sum from the observer (a recurrence: scalar) */
  double tau = 0;
  w->tau[0] = 0;
  for (int k = 0; k < nseg; k++) {
    tau = tau + w->dtau[k];
    w->tau[k + 1] = tau;
  }
  for (int z = nz; z < nzp; z++) w->tau[z] = tau;
  for (int z = 0; z < nzp; z += W) st(w->em + z, vexp(-ld(w->tau + z)));
  /* formal solution, S linear in tau */
  v8d acc = splat(0);
  const int corrected = o->corrected_taylor;
  for (int k = 0; k < nseg; k += W) {
    v8d D = ld(w->dtau + k);
    v8d S0 = ld(w->S + k), S1 = ld(w->S + k + 1);
    v8d em0 = ld(w->em + k), em1 = ld(w->em + k + 1);
    v8d r = S0 * (em1 - em0 * (1.0 - D));
    r = r + S1 * (em0 - em1 * (1.0 + D));
    r = r / (D + 1.0e-30);
    v8d c = 0.5 * D, f0 = c, f1 = c;
    c = c * ((1.0 / 3.0) * D);
    if (corrected) { /* exact: f0 = D/2 - D^2/6 + D^3/24, f1 = D/2 + D^2/6 + D^3/24 */
      f0 = f0 - c;
      f1 = f1 + c;
      c = c * ((1.0 / 4.0) * D);
      f0 = f0 + c;
      f1 = f1 + c;
    } else { /* Pomme: D^2 and D^3 signs swapped */
      f0 = f0 + c;
      f1 = f1 - c;
      c = c * ((1.0 / 4.0) * D);
      f0 = f0 + c;
      f1 = f1 - c;
    }
    v8d taylor = S0 * (em0 * f0) + S1 * (em1 * f1);
    r = blend((v8l)(D < 1.0e-4), taylor, r);
    if (k + W > nseg) { /* lanes past the last segment */
      v8l live;
      for (int i = 0; i < W; i++) live[i] = k + i < nseg ? -1 : 0;
      r = blend(live, r, splat(0));
    }
    acc = acc + r;
  }
  double sum = 0;
  for (int i = 0; i < W; i++) sum += acc[i];
  double I = bdy * w->em[nz - 1] + sum;
  return o->take_abs ? fabs(I) : I;
}

/* ---------------------------------------------------------------------- */
/* Driver: rays of one or more cubes over OpenMP threads */

typedef struct {
  int f32;
  const void *const *v, *const *T, *const *n;
} cube_inputs;

/* Copy ray `ray` of cube c into the workspace (float64), checking values.
 * Returns the z index of the first bad cell and its array (0 v, 1 T, 2 n),
 * or -1. */
static int load_ray(const cube_inputs *in, int c, size_t off, int nz, workspace *w, int *which) {
  for (int z = 0; z < nz; z++) {
    double v, T, n;
    if (in->f32) {
      v = ((const float *)in->v[c])[off + z];
      T = ((const float *)in->T[c])[off + z];
      n = ((const float *)in->n[c])[off + z];
    } else {
      v = ((const double *)in->v[c])[off + z];
      T = ((const double *)in->T[c])[off + z];
      n = ((const double *)in->n[c])[off + z];
    }
    if (!(fabs(v) < LTE_C)) { *which = 0; return z; }
    if (!(T > 0) || !isfinite(T)) { *which = 1; return z; }
    if (!(n >= 0) || !isfinite(n)) { *which = 2; return z; }
    w->v[z] = v;
    w->T[z] = T;
    w->n[z] = n;
  }
  for (int z = nz; z < w->nzp; z++) { /* padding: finite copies of the last cell */
    w->v[z] = w->v[nz - 1];
    w->T[z] = w->T[nz - 1];
    w->n[z] = w->n[nz - 1];
  }
  return -1;
}

static int check_args(const lte_line *L, const double *freqs, int nf, int nx, int ny, int nz,
                      const lte_options *o) {
  if (!L || !L->g) CE_FAIL("LTE solver: line not initialised");
  if (nf < 1 || nx < 1 || ny < 1 || nz < 1)
    CE_FAIL("LTE solver: cube %d x %d x %d with %d frequencies, expected all >= 1", nx, ny, nz,
            nf);
  if (nz > (1 << 24)) CE_FAIL("LTE solver: nz = %d too large", nz);
  if (!(o->dx > 0) || !isfinite(o->dx)) CE_FAIL("LTE solver: dx = %g, expected > 0", o->dx);
  if (!(o->vturb >= 0) || !isfinite(o->vturb))
    CE_FAIL("LTE solver: vturb = %g m/s, expected >= 0", o->vturb);
  if (!isfinite(o->background)) CE_FAIL("LTE solver: background = %g, expected finite", o->background);
  for (int f = 0; f < nf; f++)
    if (!(freqs[f] > 0) || !isfinite(freqs[f]))
      CE_FAIL("LTE solver: frequency %d = %g Hz, expected > 0", f, freqs[f]);
  return 0;
}

static int solve(const lte_line *L, const double *freqs, int nf, int ncube, int nx, int ny,
                 int nz, const cube_inputs *in, const lte_options *o, double *const *image) {
  CE_TRY(check_args(L, freqs, nf, nx, ny, nz, o));
  const long long rays = (long long)nx * ny, total = rays * ncube;
  long long bad = -1; /* first bad ray (cube-major), reported after the loop */
  int bad_z = 0, bad_which = 0, alloc_failed = 0;
  int nt = o->threads > 0 ? o->threads : omp_get_max_threads();
#pragma omp parallel num_threads(nt)
  {
    workspace w;
    int ok = ws_alloc(&w, nz) == 0;
    if (!ok) {
#pragma omp atomic write
      alloc_failed = 1;
    }
#pragma omp for schedule(dynamic, 16)
    for (long long r = 0; r < total; r++) {
      if (!ok) continue;
      int c = (int)(r / rays);
      long long pix = r % rays;
      int which, z = load_ray(in, c, (size_t)pix * nz, nz, &w, &which);
      double *img = image[c] + (size_t)pix * nf;
      if (z >= 0) {
#pragma omp critical(lte_bad)
        if (bad < 0 || r < bad) {
          bad = r;
          bad_z = z;
          bad_which = which;
        }
        for (int f = 0; f < nf; f++) img[f] = NAN;
        continue;
      }
      cells(L, o, &w);
      for (int f = 0; f < nf; f++) {
        double bdy = o->background_map ? o->background_map[(size_t)pix * nf + f] : o->background;
        img[f] = ray_freq(L, o, &w, nz, freqs[f], bdy);
      }
    }
    if (ok) ws_free(&w);
  }
  if (alloc_failed) CE_FAIL("LTE solver: out of memory for the ray workspace (nz = %d)", nz);
  if (bad >= 0) {
    int c = (int)(bad / rays);
    long long pix = bad % rays;
    int x = (int)(pix / ny), y = (int)(pix % ny);
    size_t off = (size_t)pix * nz + bad_z;
    static const char *names[3] = {"v_z", "T", "n"};
    static const char *expect[3] = {"finite with |v| < c", "finite and > 0 K",
                                    "finite and >= 0"};
    double val = in->f32 ? (double)((const float *const *)(bad_which == 0   ? in->v
                                                           : bad_which == 1 ? in->T
                                                                            : in->n))[c][off]
                         : ((const double *const *)(bad_which == 0   ? in->v
                                                    : bad_which == 1 ? in->T
                                                                     : in->n))[c][off];
    ce_err("%s[%d, %d, %d] = %g, expected %s", names[bad_which], x, y, bad_z, val,
           expect[bad_which]);
    if (ncube > 1) ce_err_prefix("cube %d", c);
    return -1;
  }
  return 0;
}

int lte_solve_cube(const lte_line *L, const double *freqs, int nf, int nx, int ny, int nz,
                   const double *v, const double *T, const double *n, const lte_options *opt,
                   double *image) {
  const void *pv = v, *pT = T, *pn = n;
  cube_inputs in = {0, &pv, &pT, &pn};
  return solve(L, freqs, nf, 1, nx, ny, nz, &in, opt, &image);
}

int lte_solve_cube_f32(const lte_line *L, const double *freqs, int nf, int nx, int ny, int nz,
                       const float *v, const float *T, const float *n, const lte_options *opt,
                       double *image) {
  const void *pv = v, *pT = T, *pn = n;
  cube_inputs in = {1, &pv, &pT, &pn};
  return solve(L, freqs, nf, 1, nx, ny, nz, &in, opt, &image);
}

int lte_solve_batch(const lte_line *L, const double *freqs, int nf, int ncube, int nx, int ny,
                    int nz, const double *const *v, const double *const *T,
                    const double *const *n, const lte_options *opt, double *const *image) {
  if (ncube < 1) CE_FAIL("LTE solver: %d cubes, expected >= 1", ncube);
  cube_inputs in = {0, (const void *const *)v, (const void *const *)T, (const void *const *)n};
  return solve(L, freqs, nf, ncube, nx, ny, nz, &in, opt, image);
}
