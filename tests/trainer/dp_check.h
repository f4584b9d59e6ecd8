/* dp_check.h - the data-parallel and input-feed parts of the trainer's device
 * check (trainer_gpu_check.c, scripts/gpu-check-trainer.sh), standalone (no
 * MPI):
 *   buckets  3 training steps with a world-1 reducer whose gradients go in
 *            buckets during the backward (trainer/bucket.h) against the same
 *            steps without a reducer: bit for bit (world 1's sums are the
 *            identity and the same kernels run on the same data). On the
 *            CUDA backend with NCCL built, the reducer is a single-rank NCCL
 *            communicator (device sums, buckets on the second stream); else a
 *            host identity reducer, and the NCCL part says why it is skipped.
 *            A 2-GPU NCCL check needs two processes: it is skipped with a
 *            message (mpirun -n 2 coemu train with train.device: cuda runs it).
 *   feed     steps fed through the prefetching feed (pipeline/train/feed.h,
 *            the backend's host staging: page-locked with CUDA) from a source
 *            that keeps up and from one throttled to 4x the step time: the
 *            wait fractions (~0, and ~1 - step / source time).
 *   feed dev the feed's backend path (train_feed_next_dev: batches copied
 *            with upload_async on the backend's copy stream while the step
 *            before computes; trainer_step_raw: raw batches normalised by the
 *            backend, stats/norm_body.h) against host normalisation and
 *            plain uploads on the same backend: the normalised values within
 *            what a 1-ulp difference of the float32 ln allows (exact on the
 *            CPU; CUDA's double log is within 1 ulp of glibc's), and 3
 *            steps' losses and weights bit for bit when the normalisation
 *            was exact. */
#ifndef COEMU_TEST_DP_CHECK_H
#define COEMU_TEST_DP_CHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/error.h"
#include "common/progress.h"
#include "pipeline/train/feed.h"
#include "stats/norm_body.h"
#include "step_batch.h"
#include "trainer/nccl_comm.h"
#include "trainer/train.h"
#ifdef COEMU_HAVE_CUDA_TRAINER
#include "trainer/cuda/backend_cuda.h"
#endif

static int dp_identity_f64(void *ctx, double *b, size_t n) { (void)ctx, (void)b, (void)n; return 0; }
static int dp_identity_f32(void *ctx, float *b, size_t n) { (void)ctx, (void)b, (void)n; return 0; }
static int dp_nccl_f64(void *ctx, double *b, size_t n, void *s) { return nn_nccl_sum_f64(ctx, b, n, s); }
static int dp_nccl_f32(void *ctx, float *b, size_t n, void *s) { return nn_nccl_sum_f32(ctx, b, n, s); }

/* 3 steps of a grid-G 7-channel COEmuNet at batch 2 on be; red NULL: none.
 * The weights after them (host, malloc'ed) in *w, their count in *nw. */
static int dp_train(const nn_backend *be, int grid, const nn_reducer *red, float **w, size_t *nw,
                    int *nbuckets) {
  coemunet_config cfg = coemunet_default(7);
  cfg.grid = grid;
  coemunet m;
  adam o;
  trainer tr;
  const int B = 2;
  const size_t nx = (size_t)B * 3 * grid * grid * grid, nt = (size_t)B * 7 * grid * grid;
  float *x = (float *)malloc(sizeof(float) * nx), *t = (float *)malloc(sizeof(float) * nt);
  CE_TRY(coemunet_build_on(&m, &cfg, 5, be));
  adam_config ac = adam_default();
  int rc = nn_set_batch(&m.net, B);
  if (rc == 0) rc = adam_init(&o, &m.net, &ac);
  if (rc == 0) rc = trainer_init(&tr, &m, &o);
  if (rc == 0 && red) rc = nn_set_reducer(&m.net, red);
  if (nbuckets) *nbuckets = m.net.buckets.n;
  loss_value lv;
  for (int k = 0; k < 3 && rc == 0; k++) {
    test_step_batch(&cfg, B, k, x, t);
    rc = trainer_step(&tr, x, t, 1e-3, &lv);
  }
  *nw = 0;
  for (int i = 0; i < m.net.nparams; i++) *nw += (size_t)m.net.params[i].n;
  *w = (float *)malloc(sizeof(float) * *nw);
  float *p = *w;
  for (int i = 0; i < m.net.nparams && rc == 0; i++) {
    rc = nn_param_download(&m.net, i, p);
    p += m.net.params[i].n;
  }
  trainer_free(&tr);
  adam_free(&o);
  coemunet_free(&m);
  free(x);
  free(t);
  return rc;
}

/* Returns the failures. */
static int dp_check_buckets(const nn_backend *be, int grid) {
  int nccl = 0;
#ifdef COEMU_HAVE_CUDA_TRAINER
  nccl = be == &nn_backend_cuda && nn_nccl_built();
#endif
  if (!nccl)
    printf("trainer-check: buckets nccl: SKIP: %s\n",
           !nn_nccl_built() ? "NCCL is not built into this check (nccl.h / libnccl not found)"
                            : "the backend is not cuda (host identity reducer instead)");
  nn_nccl *comm = NULL;
  unsigned char id[NN_NCCL_ID_BYTES];
  nn_reducer red = {.world = 1, .sum_f64 = dp_identity_f64, .sum_f32 = dp_identity_f32,
                    .bucket = 20000};
  if (nccl) {
    if (nn_nccl_unique_id(id) < 0 || nn_nccl_open(id, 0, 1, 1, &comm) < 0) {
      printf("trainer-check: buckets nccl: error: %s\n", ce_err_msg());
      return 1;
    }
    red.ctx = comm;
    red.dev_sum_f64 = dp_nccl_f64;
    red.dev_sum_f32 = dp_nccl_f32;
  }
  float *a = NULL, *b = NULL;
  size_t na = 0, nb = 0;
  int nbuckets = 0, fails = 0;
  const double t0 = ce_now();
  if (dp_train(be, grid, NULL, &a, &na, NULL) < 0 || dp_train(be, grid, &red, &b, &nb, &nbuckets) < 0) {
    printf("trainer-check: buckets %s: error: %s\n", be->name, ce_err_msg());
    fails = 1;
  } else {
    size_t diff = na == nb ? 0 : na;
    for (size_t i = 0; na == nb && i < na; i++) diff += memcmp(&a[i], &b[i], sizeof(float)) != 0;
    printf("trainer-check: buckets %s %s world 1: %d buckets, 3 steps, %zu of %zu weights differ "
           "from no reducer (%.1f s)\n", be->name, nccl ? "nccl" : "host", nbuckets, diff, na,
           ce_now() - t0);
    fails = diff != 0 || nbuckets < 2;
  }
  free(a);
  free(b);
  nn_nccl_close(comm);
#ifdef COEMU_HAVE_CUDA_TRAINER
  if (nccl) /* two ranks on this node: does it have a GPU for each? */
    printf("trainer-check: buckets nccl 2 GPUs: SKIP: %s\n",
           nn_nccl_check(0, 2, 2) == 0 ? "needs two processes (mpirun -n 2 coemu train with "
                                         "train.device: cuda)" : ce_err_msg());
#endif
  return fails;
}

typedef struct {
  float *x, *t;
  int steps, k;
  uint32_t epoch;
  double cost_s;
} dp_source;

static int dp_next(void *p, uint32_t epoch, const float **x, const float **t) {
  dp_source *s = (dp_source *)p;
  if (epoch != s->epoch) s->epoch = epoch, s->k = 0;
  if (s->k == s->steps) return 0;
  if (s->cost_s > 0) {
    struct timespec ts = {(time_t)s->cost_s, (long)((s->cost_s - (double)(time_t)s->cost_s) * 1e9)};
    nanosleep(&ts, NULL);
  }
  s->k++;
  *x = s->x;
  *t = s->t;
  return 1;
}

/* One epoch of `steps` training steps through the feed; the wait fraction. */
static int dp_feed_epoch(trainer *tr, dp_source *s, size_t nx, size_t nt, double *frac,
                         double *step_s) {
  train_feed_opts o = {dp_next, s, nx, nt, 0, 1, tr->be, 1, 0};
  train_feed *f;
  s->epoch = 0;
  s->k = 0;
  CE_TRY(train_feed_open(&o, &f));
  const double t0 = ce_now();
  const float *x, *t;
  loss_value lv;
  int got, rc = 0;
  while (rc == 0 && (got = train_feed_next(f, 0, &x, &t)) == 1) rc = trainer_step(tr, x, t, 1e-3, &lv);
  if (rc == 0 && got < 0) rc = -1;
  const double secs = ce_now() - t0, wait = train_feed_take_wait(f);
  train_feed_close(f);
  *frac = wait / secs;
  *step_s = (secs - wait) / s->steps;
  return rc;
}

static int dp_check_feed(const nn_backend *be, int grid, int batch) {
  coemunet_config cfg = coemunet_default(7);
  cfg.grid = grid;
  coemunet m;
  adam o;
  trainer tr;
  const size_t nx = (size_t)batch * 3 * grid * grid * grid, nt = (size_t)batch * 7 * grid * grid;
  dp_source s = {(float *)malloc(sizeof(float) * nx), (float *)malloc(sizeof(float) * nt), 6, 0, 0, 0};
  test_step_batch(&cfg, batch, 0, s.x, s.t);
  adam_config ac = adam_default();
  int rc = coemunet_build_on(&m, &cfg, 5, be), fails = 0;
  if (rc == 0) rc = nn_set_batch(&m.net, batch);
  if (rc == 0) rc = adam_init(&o, &m.net, &ac);
  if (rc == 0) rc = trainer_init(&tr, &m, &o);
  double fast = 0, slow = 0, step_s = 0, step_slow = 0;
  if (rc == 0) rc = dp_feed_epoch(&tr, &s, nx, nt, &fast, &step_s); /* warm: plans chosen */
  if (rc == 0) rc = dp_feed_epoch(&tr, &s, nx, nt, &fast, &step_s);
  /* the throttled epoch: each step waits for cost - step of every cost, so
     the fraction is about 1 - step / cost with the step time of that epoch;
     it must be at least half that (and above the fast epoch's). A shared
     host can slow the steps down between epochs until the source keeps up
     (cost / step near 1, nothing to wait for): then again, at 4 x the
     slower step time, up to 3 times */
  int ok = 0;
  for (int tries = 0; rc == 0 && !ok && tries < 3; tries++) {
    s.cost_s = 4 * (step_slow > step_s ? step_slow : step_s);
    rc = dp_feed_epoch(&tr, &s, nx, nt, &slow, &step_slow);
    const double expect = 1 - step_slow / s.cost_s;
    ok = expect > 0.25 && slow >= 0.5 * expect && slow <= 1 && fast < slow;
  }
  if (rc < 0) {
    printf("trainer-check: feed %s: error: %s\n", be->name, ce_err_msg());
    fails = 1;
  } else {
    printf("trainer-check: feed %s batch=%d: wait fraction %.3f with a source that keeps up "
           "(step %.4f s), %.3f with one at %.4f s a batch (step %.4f s: expected ~%.2f)\n",
           be->name, batch, fast, step_s, slow, s.cost_s, step_slow,
           1 - step_slow / s.cost_s);
    fails = !ok;
  }
  trainer_free(&tr);
  adam_free(&o);
  coemunet_free(&m);
  free(s.x);
  free(s.t);
  return fails;
}

typedef struct {
  const coemunet_config *cfg;
  float *x, *t;
  int batch, steps, k;
  uint32_t epoch;
} dp_raw_source;

static int dp_raw_next(void *p, uint32_t epoch, const float **x, const float **t) {
  dp_raw_source *s = (dp_raw_source *)p;
  if (epoch != s->epoch) s->epoch = epoch, s->k = 0;
  if (s->k == s->steps) return 0;
  const stats_norm norm = test_norm_params(0);
  test_raw_batch(s->cfg, &norm, s->batch, s->k++, s->x, s->t);
  *x = s->x;
  *t = s->t;
  return 1;
}

/* Steps through the host path (0) or the feed's backend path (1); losses
 * into loss[steps], the weights (malloc'ed) into *w. */
static int dp_feed_dev_train(const nn_backend *be, const coemunet_config *cfg, int batch, int dev,
                             double *loss, float **w, size_t *nw) {
  const size_t nx = (size_t)batch * 3 * cfg->grid * cfg->grid * cfg->grid,
               nt = (size_t)batch * cfg->nfreq * cfg->grid * cfg->grid;
  const stats_norm norm = test_norm_params(0);
  dp_raw_source s = {cfg, (float *)malloc(sizeof(float) * nx), (float *)malloc(sizeof(float) * nt),
                     batch, 3, 0, 0};
  coemunet m;
  adam o;
  trainer tr;
  adam_config ac = adam_default();
  train_feed *f = NULL;
  int rc = coemunet_build_on(&m, cfg, 5, be), steps = 0;
  if (rc == 0) rc = nn_set_batch(&m.net, batch);
  if (rc == 0) rc = adam_init(&o, &m.net, &ac);
  if (rc == 0) rc = trainer_init(&tr, &m, &o);
  train_feed_opts fo = {dp_raw_next, &s, nx, nt, 0, 1, be, 1, 1};
  if (rc == 0 && dev) rc = train_feed_open(&fo, &f);
  const size_t sx = nx / (size_t)batch, st = nt / (size_t)batch;
  for (;;) {
    const float *x, *t;
    loss_value lv;
    int got = rc < 0 ? -1 : dev ? train_feed_next_dev(f, 0, &x, &t) : dp_raw_next(&s, 0, &x, &t);
    if (got <= 0) {
      if (got < 0) rc = -1;
      break;
    }
    if (dev) {
      rc = trainer_step_raw(&tr, x, t, &norm, 1e-3, &lv);
    } else {
      for (int k = 0; k < batch; k++) {
        stats_norm_inputs(&norm, s.x + k * sx, sx / 3, s.x + k * sx);
        stats_norm_targets(&norm, s.t + k * st, st, s.t + k * st);
      }
      rc = trainer_step(&tr, s.x, s.t, 1e-3, &lv);
    }
    if (rc == 0) loss[steps++] = lv.total;
  }
  train_feed_close(f);
  if (rc == 0) {
    *nw = 0;
    for (int i = 0; i < m.net.nparams; i++) *nw += (size_t)m.net.params[i].n;
    float *p = *w = (float *)malloc(sizeof(float) * *nw);
    for (int i = 0; i < m.net.nparams && rc == 0; i++, p += m.net.params[i - 1].n)
      rc = nn_param_download(&m.net, i, p);
  }
  trainer_free(&tr);
  adam_free(&o);
  coemunet_free(&m);
  free(s.x);
  free(s.t);
  return rc;
}

static int dp_check_feed_dev(const nn_backend *be, int grid, int batch) {
  coemunet_config cfg = coemunet_default(7);
  cfg.grid = grid;
  const stats_norm norm = test_norm_params(0);
  const size_t nx = (size_t)batch * 3 * grid * grid * grid, nt = (size_t)batch * 7 * grid * grid;
  const size_t sx = nx / (size_t)batch, st = nt / (size_t)batch;
  float *x = (float *)malloc(sizeof(float) * nx), *t = (float *)malloc(sizeof(float) * nt);
  float *hx = (float *)malloc(sizeof(float) * nx), *ht = (float *)malloc(sizeof(float) * nt);
  float *rx = (float *)malloc(sizeof(float) * nx), *rt = (float *)malloc(sizeof(float) * nt);
  test_raw_batch(&cfg, &norm, batch, 0, rx, rt);
  for (int k = 0; k < batch; k++) {
    stats_norm_inputs(&norm, rx + k * sx, sx / 3, hx + k * sx);
    stats_norm_targets(&norm, rt + k * st, st, ht + k * st);
  }
  /* 1. the normalisation: backend against host */
  float *dx = (float *)be->alloc(sizeof(float) * nx), *dt = (float *)be->alloc(sizeof(float) * nt);
  int rc = dx && dt ? 0 : -1;
  if (rc == 0) rc = be->upload(dx, rx, sizeof(float) * nx);
  if (rc == 0) rc = be->upload(dt, rt, sizeof(float) * nt);
  if (rc == 0) rc = be->normalise_inputs(&norm, dx, dx, batch, sx / 3);
  if (rc == 0) rc = be->normalise_targets(&norm, dt, dt, batch, st);
  if (rc == 0) rc = be->download(x, dx, sizeof(float) * nx);
  if (rc == 0) rc = be->download(t, dt, sizeof(float) * nt);
  be->free(dx);
  be->free(dt);
  /* The bound: a device's double log within 1 ulp of the host's makes the
   * float32 ln l differ by at most 1 ulp of l; the map (l - min) / scale
   * in double carries that as ulp(l) / scale, and the two roundings to
   * float add at most 1 ulp of the result. v_z has no log: exact. */
  long differ = 0;
  double worst = 0; /* the largest |backend - host| / bound (bound 0: exact wanted) */
  for (size_t i = 0; rc == 0 && i < nx + nt; i++) {
    const int in = i < nx;
    const size_t j = in ? i : i - nx;
    const float d = in ? x[j] : t[j], h = in ? hx[j] : ht[j];
    if (!memcmp(&d, &h, sizeof d) || (d != d && h != h)) continue;
    differ++;
    double bound = 0;
    const int c = in ? (int)(j / (sx / 3) % 3) : 1;
    if (c > 0) {
      float l;
      double scale;
      if (in) {
        l = (float)log((double)rx[j]);
        scale = c == 1 ? norm.lnT_scale : norm.lnn_scale;
      } else {
        const float *smp = rt + j / st * st;
        l = norm_body_ln_intensity(
            rt[j], norm_body_zero_fill(norm_body_smallest_thread(smp, st, 0, 1, INFINITY)),
            norm.lnI_clip);
        scale = norm.lnI_scale;
      }
      bound = (nextafterf(fabsf(l), INFINITY) - fabsf(l)) / scale +
              (nextafterf(fabsf(h), INFINITY) - fabsf(h));
    }
    const double r = bound > 0 ? fabs((double)d - (double)h) / bound : INFINITY;
    worst = r > worst ? r : worst;
  }
  int fails = 0;
  if (rc < 0) {
    printf("trainer-check: feed dev %s: error: %s\n", be->name, ce_err_msg());
    fails = 1;
  } else {
    printf("trainer-check: feed dev %s: normalisation on the backend vs the host: %ld of %zu "
           "values differ, the largest by %.3g x the bound of a 1-ulp ln (tolerance 1)\n",
           be->name, differ, nx + nt, worst);
    fails = !(worst <= 1);
  }
  /* 2. 3 steps: the feed's backend path against the host path */
  double lh[3] = {0}, ld[3] = {0};
  float *wh = NULL, *wd = NULL;
  size_t nwh = 0, nwd = 0;
  if (rc == 0) rc = dp_feed_dev_train(be, &cfg, batch, 0, lh, &wh, &nwh);
  if (rc == 0) rc = dp_feed_dev_train(be, &cfg, batch, 1, ld, &wd, &nwd);
  if (rc < 0) {
    printf("trainer-check: feed dev %s: error: %s\n", be->name, ce_err_msg());
    fails = 1;
  } else {
    const int same = nwh == nwd && !memcmp(wh, wd, sizeof(float) * nwh) &&
                     !memcmp(lh, ld, sizeof lh);
    printf("trainer-check: feed dev %s batch=%d: 3 steps through the backend buffers (async "
           "copies, backend normalisation) vs host normalisation: losses %.9g %.9g %.9g vs "
           "%.9g %.9g %.9g, weights %s\n", be->name, batch, ld[0], ld[1], ld[2], lh[0], lh[1],
           lh[2], same ? "bit for bit" : "differ");
    /* bit for bit wherever the normalised batches are (the same kernels on
       the same bytes); else the first step within the effect of 1 ulp on
       every input (2.8e-7 measured, docs/benchmarks.md): 1e-5 */
    if (differ == 0 ? !same : !(fabs(ld[0] - lh[0]) <= 1e-5 * fabs(lh[0]))) fails = 1;
  }
  free(wh);
  free(wd);
  free(x);
  free(t);
  free(hx);
  free(ht);
  free(rx);
  free(rt);
  return fails;
}

#endif
