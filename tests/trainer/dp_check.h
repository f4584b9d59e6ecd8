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
 *            wait fractions (~0, and ~1 - step / source time). */
#ifndef COEMU_TEST_DP_CHECK_H
#define COEMU_TEST_DP_CHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/error.h"
#include "common/progress.h"
#include "pipeline/train/feed.h"
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
  train_feed_opts o = {dp_next, s, nx, nt, 0, 1, tr->be, 1};
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
  s.cost_s = 4 * step_s;
  if (rc == 0) rc = dp_feed_epoch(&tr, &s, nx, nt, &slow, &step_slow);
  if (rc < 0) {
    printf("trainer-check: feed %s: error: %s\n", be->name, ce_err_msg());
    fails = 1;
  } else {
    /* throttled, each step waits for cost - step of every cost: the fraction
       is about 1 - step / cost with the step time of that epoch (shared
       hosts slow the steps down between epochs) */
    printf("trainer-check: feed %s batch=%d: wait fraction %.3f with a source that keeps up "
           "(step %.4f s), %.3f with one at %.4f s a batch (step %.4f s: expected ~%.2f)\n",
           be->name, batch, fast, step_s, slow, s.cost_s, step_slow,
           1 - step_slow / s.cost_s);
    fails = !(slow > 0.3 && slow <= 1 && fast < slow);
  }
  trainer_free(&tr);
  adam_free(&o);
  coemunet_free(&m);
  free(s.x);
  free(s.t);
  return fails;
}

#endif
