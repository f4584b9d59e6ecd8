/* test_model.c - COEmuNet as a whole: parameter counts and shapes of the
 * paper's models, the loss against closed forms and a naive DFT, its gradient
 * by finite differences, gradient checks of small whole networks (both
 * decoders, both shortcut variants), short training runs (learning
 * criteria on the mean of five seeds), Adam, and checkpoints (round trip,
 * resume, corrupted and mismatched files). */
#include <dirent.h>
#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "check.h"
#include "trainer/checkpoint.h"
#include "trainer/coemunet.h"
#include "gradcheck.h"
#include "common/rng.h"
#include "trainer/loss.h"
#include "trainer/optim.h"
#include "trainer/train.h"

static const char *tmpdir;

/* float32 unit roundoff */
static const double U32 = FLT_EPSILON / 2;

/* Parameter i of net a and parameter j of net b hold the same bits. */
static int same_param(const nn_net *a, const nn_net *b, int i, int j) {
  if (a->params[i].n != b->params[j].n) return 0;
  float *x = gc_host_param(a, i), *y = gc_host_param(b, j);
  int same = memcmp(x, y, sizeof(float) * (size_t)a->params[i].n) == 0;
  free(x);
  free(y);
  return same;
}

/* ---- the paper's models ------------------------------------------------- */

static void test_parameter_counts(void) {
  struct { int nfreq, shortcut; long long params; int f; } cases[] = {
      {1, COEMUNET_SHORTCUT_REFERENCE, 42591409LL, 1},
      {7, COEMUNET_SHORTCUT_REFERENCE, 143303809LL, 7},
      /* the corrected variant: identity blocks own no shortcut (-3024 per
         encoder) and the strided shortcuts map in->out, not out->out
         (-(8*8-4*8) - (16*16-8*16) - (32*32-16*32) = -672 per encoder) */
      {1, COEMUNET_SHORTCUT_INPUT, 42591409LL - 3 * (3024 + 672), 1},
      {7, COEMUNET_SHORTCUT_INPUT, 143303809LL - 3 * (3024 + 672), 7}};
  for (int i = 0; i < 4; i++) {
    coemunet m;
    coemunet_config cfg = coemunet_default(cases[i].nfreq);
    cfg.shortcut = cases[i].shortcut;
    CHECK_OK(coemunet_describe(&m, &cfg));
    CHECK_MSG(nn_param_count(&m.net) == cases[i].params, "nfreq %d shortcut %d: %lld parameters, expected %lld",
              cases[i].nfreq, cases[i].shortcut, (long long)nn_param_count(&m.net), cases[i].params);
    const nn_node *o = &m.net.nodes[m.output];
    CHECK(o->c == 1 && o->d == cases[i].f && o->h == 64 && o->w == 64);
    int e = -1;
    for (int k = 0; k < m.net.nnodes; k++)
      if (!strcmp(m.net.nodes[k].name, "encoder0.flatten")) e = k;
    CHECK(e >= 0 && m.net.nodes[e].c == 32 * 4 * 4 * 4);
    int lat = nn_find_param(&m.net, "to_dec.weight");
    CHECK(lat >= 0 && m.net.params[lat].shape[0] == 64LL * cases[i].f * 8 * 8 && m.net.params[lat].shape[1] == 4096);
    /* the quirk: identity blocks carry unused shortcut parameters */
    int q = nn_find_param(&m.net, "encoder1.layers.3.short_CBR0.layers.0.weight");
    if (cases[i].shortcut == COEMUNET_SHORTCUT_REFERENCE)
      CHECK(q >= 0 && !m.net.params[q].used);
    else
      CHECK(q < 0);
    coemunet_free(&m);
  }
  coemunet m;
  coemunet_config bad = coemunet_default(7);
  bad.grid = 60;
  CHECK_ERR(coemunet_describe(&m, &bad), "grid");
}

/* A scaled-down COEmuNet: 24^3 input, few channels. */
static coemunet_config small_config(int nfreq, int shortcut) {
  coemunet_config c = {nfreq, 24, 2, {2, 3, 4}, 8, 8, shortcut};
  return c;
}

/* ---- the loss ----------------------------------------------------------- */

static void test_loss_closed_forms(void) {
  const int H = 4, W = 5, M = 3;
  coemu_loss *l = loss_create(H, W, M);
  CHECK(l != NULL);
  float p[3 * 20], t[3 * 20], g[3 * 20];
  loss_value v;
  /* a constant error c: E = c H W at k = 0 only */
  for (int i = 0; i < M * H * W; i++) {
    t[i] = 0.25f * (i % 7);
    p[i] = t[i] + 0.5f;
  }
  CHECK_OK(loss_eval(l, p, t, M, &v, g));
  /* Tolerances: the loss is double precision. An FFT of n points is within
     ~log2(n) DBL_EPSILON x the norm of its input per coefficient (any
     algorithm FFTW picks on any host); summed over the n coefficients
     against a sum of n moduli: fft_tol below is that bound with room. */
  const double fft_tol = 8.0 * H * W * log2((double)H * W) * DBL_EPSILON;
  CHECK(v.mse == 0.25); /* dyadic values: exact by construction */
  CHECK_CLOSE(v.fft, 0.5, fft_tol, 0);
  CHECK_CLOSE(v.total, 0.8 * 0.25 + 0.2 * 0.5, fft_tol, 0);
  /* e = cos(2 pi x / W): two coefficients of modulus H W / 2 */
  for (int i = 0; i < M * H * W; i++) {
    t[i] = 0;
    p[i] = (float)cos(2 * M_PI * (i % W) / W);
  }
  CHECK_OK(loss_eval(l, p, t, M, &v, NULL));
  /* p is cos rounded to float32 (relative error <= U32): mse = mean p^2 moves
     by <= 2 U32 relative; each of the H W coefficients by <= H W U32, against
     a sum of moduli H W per image */
  CHECK_CLOSE(v.fft, 1.0, H * W * U32 + fft_tol, 0);
  CHECK_CLOSE(v.mse, 0.5, 2 * U32 + fft_tol, 0);
  /* identical images: zero loss and zero gradient (E/|E| := 0 at |E| = 0) */
  CHECK_OK(loss_eval(l, t, t, M, &v, g));
  CHECK(v.total == 0);
  for (int i = 0; i < M * H * W; i++) CHECK(g[i] == 0);
  CHECK_ERR(loss_eval(l, p, t, M + 1, &v, g), "images");
  loss_destroy(l);
}

static void test_loss_naive_dft_and_gradient(void) {
  for (int shape = 0; shape < 2; shape++) {
    const int H = shape ? 6 : 5, W = shape ? 8 : 7, M = 2, N = M * H * W;
    coemu_loss *l = loss_create(H, W, M);
    float *p = malloc(sizeof(float) * N), *t = malloc(sizeof(float) * N), *g = malloc(sizeof(float) * N);
    ce_rng rng = ce_rng_make(4, 4, 4, 4);
    gc_fill(p, N, &rng, -1, 1);
    gc_fill(t, N, &rng, -1, 1);
    loss_value v;
    CHECK_OK(loss_eval(l, p, t, M, &v, g));
    double sabs = 0, bound = 0;
    for (int m = 0; m < M; m++) {
      /* a naive DFT coefficient: H W products summed (gamma_HW) with cos/sin
         of phases |ph| < 4 pi, rounded (<= 16 DBL_EPSILON each, absolute);
         the FFT's error is smaller. Bound on the sum of moduli: */
      double e1 = 0;
      for (int i = 0; i < H * W; i++) e1 += fabs((double)t[m * H * W + i] - p[m * H * W + i]);
      bound += H * W * ((H * W + 16.0) * DBL_EPSILON) * e1 * 2;
      for (int ky = 0; ky < H; ky++)
        for (int kx = 0; kx < W; kx++) {
          double re = 0, im = 0;
          for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++) {
              double e = (double)t[(m * H + y) * W + x] - p[(m * H + y) * W + x];
              double ph = -2 * M_PI * ((double)ky * y / H + (double)kx * x / W);
              re += e * cos(ph);
              im += e * sin(ph);
            }
          sabs += hypot(re, im);
        }
    }
    CHECK_CLOSE(v.fft, sabs / N, bound / sabs, 0);
    /* central differences entry by entry: the loss is double, p float. The
       tolerance is for the O(h^2) truncation, a property of the loss at these
       fixed data, the same on every host; the rounding, ~DBL_EPSILON L / h
       ~ 1e-13, is far below it on any host (FFTW's codelets included). */
    for (int i = 0; i < N; i += 3) {
      float p0 = p[i];
      loss_value a, b;
      p[i] = p0 + 1e-3f;
      double hp = (double)p[i] - p0;
      loss_eval(l, p, t, M, &a, NULL);
      p[i] = p0 - 1e-3f;
      double hm = (double)p0 - p[i];
      loss_eval(l, p, t, M, &b, NULL);
      p[i] = p0;
      double num = (a.total - b.total) / (hp + hm);
      CHECK_MSG(fabs(num - g[i]) <= 1e-4 * fabs(g[i]) + 1e-8, "%dx%d: dL/dp[%d] = %.10g by differences, %.10g analytic",
                H, W, i, num, (double)g[i]);
    }
    free(p);
    free(t);
    free(g);
    loss_destroy(l);
  }
}

/* ---- whole-network gradients -------------------------------------------- */

typedef struct {
  coemu_loss *loss;
  const float *target;
  int images;
} loss_ctx;

/* the CPU loss (loss.c) on the output copied to the host */
static double loss_objective(nn_net *net, int out, const float *r, float *grad, void *user) {
  (void)r;
  loss_ctx *c = user;
  nn_forward(net, 1);
  float *y = gc_host_out(net, out);
  loss_value v;
  loss_eval(c->loss, y, c->target, c->images, &v, grad);
  free(y);
  return v.total;
}

static void gradcheck_model(int nfreq, int shortcut) {
  coemunet m;
  /* 24^3 input (the last encoder stage keeps 2^3 voxels), batch 4: BatchNorm
     statistics over enough values that the net is not too chaotic for
     differences; see gradcheck.h and docs/trainer.md */
  coemunet_config cfg = {nfreq, 24, 4, {4, 8, 8}, 16, 16, shortcut};
  const int B = 4;
  CHECK_OK(coemunet_build(&m, &cfg, 21));
  CHECK_OK(nn_set_batch(&m.net, B));
  size_t nt = B * m.net.nodes[m.output].size;
  float *t = malloc(sizeof(float) * nt);
  ce_rng rng = ce_rng_make(8, 8, 8, 8);
  free(gc_fill_input(&m.net, m.input, &rng, -1, 1));
  gc_fill(t, nt, &rng, -0.5, 0.5);
  loss_ctx c = {loss_create(24, 24, B * nfreq), t, B * nfreq};
  char what[64];
  snprintf(what, sizeof what, "coemunet nfreq %d shortcut %d", nfreq, shortcut);
  const char *groups[] = {"encoder0.", "encoder1.layers.0.", "encoder1.layers.2.", "encoder1.layers.5.",
                          "encoder1.layers.10.", "encoder2.", "to_lat.", "to_dec.", "decoder", "", NULL};
  gc_net(&m.net, m.input, m.output, loss_objective, &c, 1e-5, 0.1, what, groups);
  /* the unused shortcut parameters get no gradient */
  int q = nn_find_param(&m.net, "encoder0.layers.3.short_CBR0.layers.0.weight");
  if (q >= 0) {
    float *g = malloc(sizeof(float) * m.net.params[q].n);
    CHECK_OK(nn_param_grad_download(&m.net, q, g));
    for (int64_t i = 0; i < m.net.params[q].n; i++) CHECK(g[i] == 0);
    free(g);
  }
  loss_destroy(c.loss);
  free(t);
  coemunet_free(&m);
}

static void test_model_gradients(void) {
  gradcheck_model(1, COEMUNET_SHORTCUT_REFERENCE);
  gradcheck_model(2, COEMUNET_SHORTCUT_REFERENCE);
  gradcheck_model(2, COEMUNET_SHORTCUT_INPUT);
}

/* ---- Adam --------------------------------------------------------------- */

static void test_adam_update_rule(void) {
  /* one scalar parameter, gradient 2 w (L = w^2), checked against the rule
   * evaluated in double */
  for (int kind = 0; kind < 3; kind++) {
    nn_net net;
    nn_init(&net);
    int x = nn_input(&net, "x", 1, 1, 1, 1);
    nn_linear(&net, "fc", x, 1);
    CHECK_OK(nn_finalize(&net, 1));
    adam o;
    adam_config ac = {(adam_kind)kind, 0.1, 0.9, 0.999, 1e-8, 0.05};
    CHECK_OK(adam_init(&o, &net, &ac));
    double w = 0.7, m = 0, v = 0, err = 0;
    float wf = (float)w, gf[2];
    CHECK_OK(nn_param_upload(&net, 0, &wf));
    for (int t = 1; t <= 5; t++) {
      double g = 2 * w;
      gf[0] = (float)g;
      gf[1] = 0;
      CHECK_OK(nn_upload(&net, net.params[0].g, &gf[0], 1));
      CHECK_OK(nn_upload(&net, net.params[1].g, &gf[1], 1));
      CHECK_OK(adam_step(&o, &net, 0.1));
      if (kind == ADAM_L2) g += 0.05 * w;
      m = 0.9 * m + 0.1 * g;
      v = 0.999 * v + 0.001 * g * g;
      if (kind == ADAMW) w *= 1 - 0.1 * 0.05;
      const double step = 0.1 / (1 - pow(0.9, t)) * m / (sqrt(v) / sqrt(1 - pow(0.999, t)) + 1e-8);
      w -= step;
      /* error budget of the float32 update against this double one (a bound,
         any host): m and v carry <= 3 U32 relative per step each (summed
         over t steps), the step's own ~10 float32 operations add 10 U32, so
         the step is within (6 t + 10) U32 <= 40 U32 relative; the decay
         factor and the update's rounding move w by <= 3 U32 |w| */
      err += 40 * U32 * fabs(step) + 3 * U32 * fabs(w);
      CHECK_OK(nn_param_download(&net, 0, &wf));
      CHECK_CLOSE(wf, w, 0, err);
    }
    CHECK(!strcmp(adam_kind_name((adam_kind)kind), kind == 0 ? "Adam" : kind == 1 ? "Adam+L2" : "AdamW"));
    adam_free(&o);
    nn_free(&net);
  }
  /* lr0 gamma^k: pow within 1 ulp, the product and the literals 1/2 ulp
     each, 0.1's representation error raised to the k-th power k/2 ulp */
  steplr s = {4e-3, 0.1, 200};
  CHECK(steplr_lr(&s, 0) == 4e-3 && steplr_lr(&s, 199) == 4e-3); /* gamma^0 = 1: exact */
  CHECK_CLOSE(steplr_lr(&s, 200), 4e-4, 3 * DBL_EPSILON, 0);
  CHECK_CLOSE(steplr_lr(&s, 650), 4e-6, 4 * DBL_EPSILON, 0);
  adam o;
  nn_net net;
  nn_init(&net);
  adam_config bad = {ADAM, 1e-3, 1.0, 0.999, 1e-8, 0};
  CHECK_ERR(adam_init(&o, &net, &bad), "betas");
}

/* ---- training ----------------------------------------------------------- */

/* Synthetic regression: sample s has two numbers (a, b); its inputs are
 * a, b and a*b plus noise in the three channels, its target image is
 * a * blob(y, x) + b * ramp(x), shared across frequencies with a per-frequency
 * weight. A fixed mapping a small net learns in a few dozen steps. */
static void make_sample(const coemunet_config *c, uint32_t s, float *x, float *t) {
  ce_rng r = ce_rng_make(2024, s, 0, 5);
  double a = ce_rng_uniform(&r), b = ce_rng_uniform(&r);
  const int G = c->grid;
  size_t v = (size_t)G * G * G;
  for (size_t i = 0; i < v; i++) {
    x[i] = (float)(2 * a - 1 + 0.1 * (ce_rng_uniform(&r) - 0.5));
    x[v + i] = (float)(2 * b - 1 + 0.1 * (ce_rng_uniform(&r) - 0.5));
    x[2 * v + i] = (float)(a * b + 0.1 * (ce_rng_uniform(&r) - 0.5));
  }
  for (int f = 0; f < c->nfreq; f++)
    for (int y = 0; y < G; y++)
      for (int xx = 0; xx < G; xx++) {
        double blob = exp(-((y - G / 2.0) * (y - G / 2.0) + (xx - G / 2.0) * (xx - G / 2.0)) / (G * G / 8.0));
        t[((size_t)f * G + y) * G + xx] = (float)(0.6 * a * blob * (1 + 0.2 * f) + 0.3 * b * xx / G);
      }
}

static void make_batch(const coemunet_config *c, uint32_t first, int n, float *x, float *t) {
  size_t nx = (size_t)3 * c->grid * c->grid * c->grid, nt = (size_t)c->nfreq * c->grid * c->grid;
  for (int i = 0; i < n; i++) make_sample(c, first + (uint32_t)i, x + i * nx, t + i * nt);
}

/* One training run of the small net from initial weights `seed`: 120 Adam
 * steps over 32 samples; the training loss's last / first step and the
 * held-out validation loss (evaluation mode) after / before. */
static void train_small(const coemunet_config *cfg, int B, uint64_t seed, const float *x,
                        const float *t, const float *vx, const float *vt, double *train_ratio,
                        double *val_ratio) {
  coemunet m;
  *train_ratio = *val_ratio = 1;
  CHECK_OK(coemunet_build(&m, cfg, seed));
  CHECK_OK(nn_set_batch(&m.net, B));
  adam o;
  adam_config ac = adam_default();
  ac.lr = 1e-3;
  CHECK_OK(adam_init(&o, &m.net, &ac));
  trainer tr;
  CHECK_OK(trainer_init(&tr, &m, &o));
  size_t g = (size_t)cfg->grid, nx = (size_t)B * 3 * g * g * g, nt = (size_t)B * cfg->nfreq * g * g;
  loss_value v0, v1, lv, first = {0, 0, 0};
  CHECK_OK(trainer_eval(&tr, vx, vt, &v0));
  for (int step = 0; step < 120; step++) {
    int k = step % 4;
    CHECK_OK(trainer_step(&tr, x + k * nx, t + k * nt, ac.lr, &lv));
    if (step == 0) first = lv;
  }
  CHECK_OK(trainer_eval(&tr, vx, vt, &v1));
  fprintf(stderr, "  seed %llu: training loss %.5f -> %.5f (x %.3f), validation loss (evaluation mode) "
          "%.5f -> %.5f (x %.3f)\n", (unsigned long long)seed, first.total, lv.total,
          lv.total / first.total, v0.total, v1.total, v1.total / v0.total);
  if (first.total > 0 && v0.total > 0) {
    *train_ratio = lv.total / first.total;
    *val_ratio = v1.total / v0.total;
  }
  trainer_free(&tr);
  adam_free(&o);
  coemunet_free(&m);
}

static void test_training_lowers_validation_loss(void) {
  /* a net this small is faster on one thread than on two contended ones */
  int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  /* the paper's decoder widths (64 -> 32, 16, 8), a small encoder */
  coemunet_config cfg = {2, 16, 4, {4, 8, 8}, 32, 64, COEMUNET_SHORTCUT_REFERENCE};
  const int B = 8;
  size_t nx = (size_t)B * 3 * 16 * 16 * 16, nt = (size_t)B * 2 * 16 * 16;
  float *x = malloc(sizeof(float) * nx * 5), *t = malloc(sizeof(float) * nt * 5);
  float *vx = malloc(sizeof(float) * nx), *vt = malloc(sizeof(float) * nt);
  make_batch(&cfg, 0, 4 * B, x, t);          /* 32 training samples */
  make_batch(&cfg, 100000, B, vx, vt);       /* 8 held-out samples */
  /* Learning criteria, not rounding tolerances: 120 steps of float32
     training end wherever the host's summation orders lead, and a single
     run's end is too spread for a threshold to hold on every host. Over
     initial-weight seeds 1-30 on 3 OpenBLAS kernels (Haswell/Zen,
     Sandybridge, Nehalem; 2026-12-07, 90 runs) a run's validation loss
     (evaluation mode, whose running statistics lag the weights) ended at
     0.21-0.83 of the untrained model's (median 0.42; above 0.7 in 6.7 % of
     the runs), its training loss at 0.04-0.13 of its first step. Another
     kernel moves one seed's run by up to 0.24 (seed 22: 0.69-0.93; seed
     1234, this test's old single run, 0.41-0.52 on 5 kernels), no more than
     another seed does, and no kernel shifts the distribution (medians
     0.413-0.419). So the criteria are on the mean of five seeds, whose
     distribution that sample bounds: resampled, the validation mean's 99.99th
     percentile is 0.686 (the threshold 0.7), the training mean's 0.111
     (0.2). A trainer that does not learn (lr 0) gives training x 1.02 and,
     its running statistics moved under fixed weights, validation x 4. */
  double tr_sum = 0, va_sum = 0;
  const int NSEED = 5;
  for (uint64_t seed = 1; seed <= (uint64_t)NSEED; seed++) {
    double tr_ratio, va_ratio;
    train_small(&cfg, B, seed, x, t, vx, vt, &tr_ratio, &va_ratio);
    tr_sum += tr_ratio;
    va_sum += va_ratio;
  }
  const double tr_mean = tr_sum / NSEED, va_mean = va_sum / NSEED;
  fprintf(stderr, "  mean of %d seeds: training loss x %.3f (< 0.2), validation loss x %.3f (< 0.7)\n",
          NSEED, tr_mean, va_mean);
  CHECK_MSG(va_mean < 0.7, "validation loss x %.3f (mean of %d seeds): expected a drop of 30%% or more",
            va_mean, NSEED);
  CHECK_MSG(tr_mean < 0.2, "training loss x %.3f (mean of %d seeds): expected a 5x drop", tr_mean,
            NSEED);
  free(x); free(t); free(vx); free(vt);
  omp_set_num_threads(threads);
}

/* ---- checkpoints -------------------------------------------------------- */

typedef struct {
  coemunet m;
  adam o;
  trainer tr;
  float *x, *t;
} run;

static void run_open(run *r, int nfreq, int shortcut, uint64_t seed) {
  coemunet_config cfg = small_config(nfreq, shortcut);
  CHECK_OK(coemunet_build(&r->m, &cfg, seed));
  CHECK_OK(nn_set_batch(&r->m.net, 4));
  adam_config ac = {ADAMW, 2e-3, 0.9, 0.999, 1e-8, 0.01};
  CHECK_OK(adam_init(&r->o, &r->m.net, &ac));
  CHECK_OK(trainer_init(&r->tr, &r->m, &r->o));
  r->x = malloc(sizeof(float) * 4 * 3 * 24 * 24 * 24);
  r->t = malloc(sizeof(float) * 4 * nfreq * 24 * 24);
}

static void run_close(run *r) {
  free(r->x);
  free(r->t);
  trainer_free(&r->tr);
  adam_free(&r->o);
  coemunet_free(&r->m);
}

/* Step k of a run: the data and the learning rate depend only on k. */
static double run_step(run *r, uint64_t k) {
  make_batch(&r->m.cfg, (uint32_t)(4 * k), 4, r->x, r->t);
  steplr s = {2e-3, 0.5, 2};
  loss_value lv;
  CHECK_OK(trainer_step(&r->tr, r->x, r->t, steplr_lr(&s, (int)(k / 2)), &lv));
  return lv.total;
}

static void test_checkpoint_resume(void) {
  char path[512];
  snprintf(path, sizeof path, "%s/run.ckpt", tmpdir);
  run a, b;
  run_open(&a, 2, COEMUNET_SHORTCUT_REFERENCE, 77);
  double la[6], lb[6];
  for (int k = 0; k < 3; k++) la[k] = run_step(&a, (uint64_t)k);
  train_state st = {77, 3, 1, {2e-3, 0.5, 2}};
  CHECK_OK(checkpoint_save(path, &a.m, &a.o, &st));
  for (int k = 3; k < 6; k++) la[k] = run_step(&a, (uint64_t)k);
  /* a fresh run from another seed, resumed from the checkpoint */
  run_open(&b, 2, COEMUNET_SHORTCUT_REFERENCE, 5);
  train_state st2;
  memset(&st2, 0, sizeof st2);
  CHECK_OK(checkpoint_load(path, &b.m, &b.o, &st2));
  CHECK(st2.seed == 77 && st2.step == 3 && st2.epoch == 1 && st2.sched.step_size == 2 && st2.sched.gamma == 0.5);
  CHECK(b.o.t == 3 && b.o.cfg.kind == ADAMW && b.o.cfg.weight_decay == 0.01);
  for (int k = 3; k < 6; k++) lb[k] = run_step(&b, (uint64_t)k);
  /* bit for bit, exact by construction: the checkpoint holds the whole state
     (float32 weights, running statistics, Adam moments and step) losslessly,
     and the resumed steps run the same kernels with the same thread count
     on the same data in this process */
  for (int k = 3; k < 6; k++)
    CHECK_MSG(la[k] == lb[k], "step %d: loss %.17g without stopping, %.17g resumed", k, la[k], lb[k]);
  for (int i = 0; i < a.m.net.nparams; i++) CHECK(same_param(&a.m.net, &b.m.net, i, i));
  /* the loss went down meanwhile, and nothing temporary was left behind */
  CHECK(la[5] < la[0]);
  DIR *d = opendir(tmpdir);
  struct dirent *e;
  while (d && (e = readdir(d)))
    CHECK_MSG(!strstr(e->d_name, ".tmp."), "temporary file %s left behind", e->d_name);
  if (d) closedir(d);
  run_close(&a);
  run_close(&b);
}

static unsigned char *slurp(const char *path, long *n) {
  FILE *f = fopen(path, "rb");
  fseek(f, 0, SEEK_END);
  *n = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *b = malloc((size_t)*n);
  CHECK(fread(b, 1, (size_t)*n, f) == (size_t)*n);
  fclose(f);
  return b;
}

static void spit(const char *path, const unsigned char *b, long n) {
  FILE *f = fopen(path, "wb");
  fwrite(b, 1, (size_t)n, f);
  fclose(f);
}

static void fix_crc(unsigned char *b, long n) {
  uint32_t c = (uint32_t)crc32(crc32(0L, Z_NULL, 0), b, (uInt)(n - 4));
  memcpy(b + n - 4, &c, 4);
}

static void test_checkpoint_errors(void) {
  char good[512], bad[512];
  snprintf(good, sizeof good, "%s/good.ckpt", tmpdir);
  snprintf(bad, sizeof bad, "%s/bad.ckpt", tmpdir);
  run a;
  run_open(&a, 1, COEMUNET_SHORTCUT_REFERENCE, 3);
  run_step(&a, 0);
  train_state st = {3, 1, 0, {2e-3, 0.5, 2}};
  CHECK_OK(checkpoint_save(good, &a.m, &a.o, &st));
  long n;
  unsigned char *b = slurp(good, &n), *c = malloc((size_t)n + 8);
  /* round trip into the same configuration */
  CHECK_OK(checkpoint_load(good, &a.m, &a.o, &st));
  /* one flipped bit in the tensor data */
  memcpy(c, b, (size_t)n);
  c[n / 2] ^= 0x10;
  spit(bad, c, n);
  CHECK_ERR(checkpoint_load(bad, &a.m, &a.o, &st), "checksum");
  CHECK_ERR(checkpoint_load(bad, &a.m, &a.o, &st), "bad.ckpt");
  /* truncated, and followed by garbage */
  spit(bad, b, n - 100);
  CHECK_ERR(checkpoint_load(bad, &a.m, &a.o, &st), "truncated");
  spit(bad, b, 10);
  CHECK_ERR(checkpoint_load(bad, &a.m, &a.o, &st), "truncated");
  memcpy(c, b, (size_t)n);
  memset(c + n, 0, 8);
  spit(bad, c, n + 8);
  CHECK_ERR(checkpoint_load(bad, &a.m, &a.o, &st), "extra bytes");
  /* not a checkpoint; another version */
  memcpy(c, b, (size_t)n);
  c[0] = 'X';
  spit(bad, c, n);
  CHECK_ERR(checkpoint_load(bad, &a.m, &a.o, &st), "magic");
  memcpy(c, b, (size_t)n);
  c[8] = 9;
  spit(bad, c, n);
  CHECK_ERR(checkpoint_load(bad, &a.m, &a.o, &st), "version: 9");
  /* a consistent file (valid checksum) whose header names another grid */
  memcpy(c, b, (size_t)n);
  c[16 + 4] = 32;
  fix_crc(c, n);
  spit(bad, c, n);
  CHECK_ERR(checkpoint_load(bad, &a.m, &a.o, &st), "architecture field grid = 32");
  /* a consistent file with a renamed tensor */
  memcpy(c, b, (size_t)n);
  unsigned char *hit = memmem(c, (size_t)n, "to_lat.weight", 13);
  CHECK(hit != NULL);
  if (hit) hit[0] = 'T';
  fix_crc(c, n);
  spit(bad, c, n);
  CHECK_ERR(checkpoint_load(bad, &a.m, &a.o, &st), "'To_lat.weight', the network's is 'to_lat.weight'");
  /* checkpoints of other architectures */
  run other;
  run_open(&other, 2, COEMUNET_SHORTCUT_REFERENCE, 3);
  CHECK_ERR(checkpoint_load(good, &other.m, &other.o, &st), "architecture field nfreq = 1, the network has 2");
  run_close(&other);
  run_open(&other, 1, COEMUNET_SHORTCUT_INPUT, 3);
  CHECK_ERR(checkpoint_load(good, &other.m, &other.o, &st), "shortcut");
  run_close(&other);
  snprintf(bad, sizeof bad, "%s/missing.ckpt", tmpdir);
  CHECK_ERR(checkpoint_load(bad, &a.m, &a.o, &st), "missing.ckpt");
  free(b);
  free(c);
  run_close(&a);
}

/* Pretraining -> fine-tuning: the encoder and latent tensors of a trained
 * single-channel model, loaded weights-only from its checkpoint, are copied
 * into a multi-frequency model; nothing else is touched. */
static void test_encoder_transfer(void) {
  char path[512];
  snprintf(path, sizeof path, "%s/pre.ckpt", tmpdir);
  run a;
  run_open(&a, 1, COEMUNET_SHORTCUT_REFERENCE, 21);
  run_step(&a, 0);
  run_step(&a, 1);
  train_state st = {21, 2, 0, {2e-3, 0.5, 2}};
  CHECK_OK(checkpoint_save(path, &a.m, &a.o, &st));
  /* the header alone gives the architecture */
  coemunet_config cfg;
  train_state st2;
  CHECK_OK(checkpoint_read_config(path, &cfg, &st2));
  CHECK(cfg.nfreq == 1 && cfg.grid == a.m.cfg.grid && cfg.latent == a.m.cfg.latent && st2.step == 2);
  /* weights only, without an optimiser: the file's Adam state is skipped */
  coemunet src;
  CHECK_OK(coemunet_build(&src, &cfg, 99));
  CHECK_OK(checkpoint_load(path, &src, NULL, NULL));
  for (int i = 0; i < src.net.nparams; i++) CHECK(same_param(&src.net, &a.m.net, i, i));
  /* into a 3-channel model */
  coemunet_config c3 = cfg;
  c3.nfreq = 3;
  coemunet dst, ref;
  CHECK_OK(coemunet_build(&dst, &c3, 5));
  CHECK_OK(coemunet_build(&ref, &c3, 5));
  int n = 0;
  int64_t values = 0, expect = 0, copied = 0;
  CHECK_OK(coemunet_transfer_encoder(&dst, &src, &n, &values));
  for (int i = 0; i < dst.net.nparams; i++) {
    const nn_param *p = &dst.net.params[i];
    int j = nn_find_param(&src.net, p->name);
    int enc = !strncmp(p->name, "encoder", 7) || !strncmp(p->name, "to_lat.", 7);
    if (enc) {
      CHECK_MSG(j >= 0 && same_param(&dst.net, &src.net, i, j), "tensor %s not transferred", p->name);
      expect += p->n;
      copied++;
    } else
      CHECK_MSG(same_param(&dst.net, &ref.net, i, i), "tensor %s changed by the transfer", p->name);
  }
  CHECK(n == copied && values == expect && n > 100);
  /* mismatches are refused and leave the target as it was */
  coemunet other;
  coemunet_config wide = c3;
  wide.enc[2] = 6;
  CHECK_OK(coemunet_build(&other, &wide, 5));
  CHECK_ERR(coemunet_transfer_encoder(&other, &src, NULL, NULL), "encoder[2] is 4 in the source model and 6");
  coemunet_free(&other);
  coemunet_config sc = c3;
  sc.shortcut = COEMUNET_SHORTCUT_INPUT;
  CHECK_OK(coemunet_build(&other, &sc, 5));
  CHECK_ERR(coemunet_transfer_encoder(&other, &src, NULL, NULL), "shortcut");
  coemunet_free(&other);
  /* a weights-only load still checks the architecture */
  CHECK_ERR(checkpoint_load(path, &ref, NULL, NULL), "architecture field nfreq = 1, the network has 3");
  coemunet_free(&src);
  coemunet_free(&dst);
  coemunet_free(&ref);
  run_close(&a);
}

int main(void) {
  if (nn_backend_init(&nn_backend_cpu, 0) < 0) { /* OpenBLAS to 1 thread */
    fprintf(stderr, "%s\n", ce_err_msg());
    return 1;
  }
  tmpdir = check_scratch("trainer");
  RUN(test_parameter_counts);
  RUN(test_loss_closed_forms);
  RUN(test_loss_naive_dft_and_gradient);
  RUN(test_model_gradients);
  RUN(test_adam_update_rule);
  RUN(test_training_lowers_validation_loss);
  RUN(test_checkpoint_resume);
  RUN(test_checkpoint_errors);
  RUN(test_encoder_transfer);
  check_scratch_remove();
  nn_backend_finish(&nn_backend_cpu);
  return check_report();
}
