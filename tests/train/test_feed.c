/* test_feed.c - the trainer's input feed (pipeline/train/feed.h) on the CPU
 * backend, with sources made here: training through the feed is training on
 * the source bit for bit (with and without the reader thread; and through
 * the backend buffers with asynchronous copies and the backend's
 * normalisation of raw batches against the host's), the wait
 * fraction is near 0 when the source keeps up and near 1 when it is
 * throttled, and the source's errors reach the consumer with its message. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../trainer/step_batch.h"
#include "check.h"
#include "common/error.h"
#include "common/progress.h"
#include "pipeline/train/feed.h"
#include "trainer/train.h"

#define B 2

static const coemunet_config CFG = {1, 16, 2, {2, 3, 4}, 8, 8, COEMUNET_SHORTCUT_REFERENCE};
static const size_t NX = (size_t)3 * 16 * 16 * 16, NT = (size_t)16 * 16;

/* A source of `steps` batches per epoch (test_step_batch of step epoch *
 * steps + k), each taking `cost_s` seconds; fail_at >= 0: that batch fails. */
typedef struct {
  int raw; /* 1: test_raw_batch (values as stored) */
  int steps, fail_at, served;
  double cost_s;
  uint32_t epoch;
  int k;
  float *x, *t;
} source;

static void sleep_s(double s) {
  if (s <= 0) return;
  struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
  nanosleep(&ts, NULL);
}

static int src_next(void *p, uint32_t epoch, const float **x, const float **t) {
  source *s = p;
  if (epoch != s->epoch) {
    s->epoch = epoch;
    s->k = 0;
  }
  if (s->k == s->steps) return 0;
  if (s->fail_at == s->served) return ce_err("source: batch %d cannot be read (test)", s->served);
  sleep_s(s->cost_s);
  if (s->raw) {
    const stats_norm norm = test_norm_params(0);
    test_raw_batch(&CFG, &norm, B, (int)epoch * s->steps + s->k, s->x, s->t);
  } else
    test_step_batch(&CFG, B, (int)epoch * s->steps + s->k, s->x, s->t);
  s->k++;
  s->served++;
  *x = s->x;
  *t = s->t;
  return 1;
}

static source make_source(int steps, double cost_s) {
  source s = {0, steps, -1, 0, cost_s, 0, 0, malloc(sizeof(float) * NX * B), malloc(sizeof(float) * NT * B)};
  return s;
}

static void free_source(source *s) {
  free(s->x);
  free(s->t);
}

static train_feed *open_feed(source *s, uint32_t epochs, int prefetch) {
  train_feed_opts o = {src_next, s, NX * B, NT * B, 0, epochs, &nn_backend_cpu, prefetch, s->raw};
  train_feed *f = NULL;
  CHECK_OK(train_feed_open(&o, &f));
  return f;
}

/* mode 0: the source directly; 1: the feed without the thread; 2: with it.
 * raw: the source gives values as stored: normalised on the host
 * (stats_norm_*) in mode 0, by the backend from its own buffers
 * (train_feed_next_dev, trainer_step_raw: the asynchronous copies) in
 * modes 1 and 2. Every weight after 2 epochs of 3 steps, concatenated. */
static float *train(int mode, int raw, size_t *nw) {
  coemunet m;
  adam o;
  trainer tr;
  CHECK_OK(coemunet_build(&m, &CFG, 99));
  CHECK_OK(nn_set_batch(&m.net, B));
  adam_config ac = adam_default();
  CHECK_OK(adam_init(&o, &m.net, &ac));
  CHECK_OK(trainer_init(&tr, &m, &o));
  source s = make_source(3, 0);
  s.raw = raw;
  const stats_norm norm = test_norm_params(0);
  train_feed *f = mode ? open_feed(&s, 2, mode == 2) : NULL;
  int steps = 0;
  for (uint32_t e = 0; e < 2; e++)
    for (;;) {
      const float *x, *t;
      int got = !f ? src_next(&s, e, &x, &t)
                : raw ? train_feed_next_dev(f, e, &x, &t) : train_feed_next(f, e, &x, &t);
      CHECK(got >= 0);
      if (got <= 0) break;
      loss_value lv;
      if (raw && f) {
        CHECK_OK(trainer_step_raw(&tr, x, t, &norm, 1e-3, &lv));
      } else {
        if (raw) /* the host normalisation, as serve does it */
          for (int k = 0; k < B; k++) {
            stats_norm_inputs(&norm, s.x + k * NX, NX / 3, s.x + k * NX);
            stats_norm_targets(&norm, s.t + k * NT, NT, s.t + k * NT);
          }
        CHECK_OK(trainer_step(&tr, x, t, 1e-3, &lv));
      }
      steps++;
    }
  CHECK(steps == 6);
  train_feed_close(f);
  *nw = 0;
  for (int i = 0; i < m.net.nparams; i++) *nw += (size_t)m.net.params[i].n;
  float *w = malloc(sizeof(float) * *nw), *p = w;
  for (int i = 0; i < m.net.nparams; i++) {
    CHECK_OK(nn_param_download(&m.net, i, p));
    p += m.net.params[i].n;
  }
  free_source(&s);
  trainer_free(&tr);
  adam_free(&o);
  coemunet_free(&m);
  return w;
}

/* exact by construction: the same batches (copies of the source's bits) in
 * the same order through the same kernels */
static void test_bit_identical(void) {
  for (int raw = 0; raw < 2; raw++) {
    size_t n0, n1, n2;
    float *direct = train(0, raw, &n0), *sync = train(1, raw, &n1), *ahead = train(2, raw, &n2);
    CHECK(n0 == n1 && n0 == n2);
    CHECK_MSG(!memcmp(direct, sync, sizeof(float) * n0), "the synchronous feed changed training%s",
              raw ? " (backend buffers, normalised by the backend)" : "");
    CHECK_MSG(!memcmp(direct, ahead, sizeof(float) * n0), "the prefetching feed changed training%s",
              raw ? " (backend buffers, normalised by the backend)" : "");
    free(direct);
    free(sync);
    free(ahead);
  }
}

/* One epoch of `steps` steps of `step_s` seconds each, the source taking
 * cost_s a batch: the wait fraction (wait / epoch time). */
static double wait_fraction(int steps, double cost_s, double step_s, int prefetch) {
  source s = make_source(steps, cost_s);
  train_feed *f = open_feed(&s, 1, prefetch);
  const double t0 = ce_now();
  const float *x, *t;
  int got;
  while ((got = train_feed_next(f, 0, &x, &t)) == 1) sleep_s(step_s); /* the step */
  CHECK(got == 0);
  double frac = train_feed_take_wait(f) / (ce_now() - t0);
  CHECK(train_feed_take_wait(f) == 0); /* taken */
  train_feed_close(f);
  free_source(&s);
  return frac;
}

/* Fast source (about 1 ms a batch) and 50 ms steps: the reader has each
 * batch ready long before the step ends; only the first batch is waited for
 * (1 of 10, ~1 ms of ~500 ms): fraction ~0.002; 0.1 leaves 50 ms of
 * scheduling delay (seen: 0.05 with 20 ms steps at load 22 on 2 cores, i.e.
 * ~10 ms). Throttled (100 ms a batch, 2 ms steps): each step waits ~98 ms
 * of every ~100: fraction ~0.98; 0.75 leaves 23 ms of oversleeping per step
 * (seen: 0.86 with 40 ms batches under that load). Without the thread the
 * throttled wait is the source's whole time, 100 of 102 ms. */
static void test_wait_fraction(void) {
  double fast = wait_fraction(10, 0, 0.050, 1);
  double slow = wait_fraction(6, 0.100, 0.002, 1);
  double slow_sync = wait_fraction(6, 0.100, 0.002, 0);
  fprintf(stderr, "wait fraction: fast source %.4f, throttled %.4f (synchronous %.4f)\n", fast,
          slow, slow_sync);
  CHECK(fast >= 0 && fast < 0.1);
  CHECK(slow > 0.75 && slow <= 1.0);
  CHECK(slow_sync > 0.75 && slow_sync <= 1.0);
}

/* The source's error reaches the consumer at its batch, with its message;
 * close returns (the reader has stopped). Asking past the last epoch, or for
 * another epoch than the source is at, is an error too. */
static void test_errors(void) {
  for (int prefetch = 0; prefetch <= 1; prefetch++) {
    source s = make_source(5, 0);
    s.fail_at = 2;
    train_feed *f = open_feed(&s, 1, prefetch);
    const float *x, *t;
    CHECK(train_feed_next(f, 0, &x, &t) == 1);
    CHECK(train_feed_next(f, 0, &x, &t) == 1);
    CHECK_ERR(train_feed_next(f, 0, &x, &t), "batch 2 cannot be read");
    train_feed_close(f);
    free_source(&s);
  }
  source s = make_source(1, 0);
  train_feed *f = open_feed(&s, 1, 1);
  const float *x, *t;
  CHECK(train_feed_next(f, 0, &x, &t) == 1);
  CHECK(train_feed_next(f, 0, &x, &t) == 0);
  CHECK_ERR(train_feed_next(f, 1, &x, &t), "after the last epoch");
  train_feed_close(f);
  free_source(&s);
  s = make_source(2, 0);
  f = open_feed(&s, 2, 1);
  CHECK_ERR(train_feed_next(f, 1, &x, &t), "epoch 1 asked for, the source is at epoch 0");
  train_feed_close(f);
  free_source(&s);
}

int main(void) {
  if (nn_backend_init(&nn_backend_cpu, 1) < 0) {
    fprintf(stderr, "%s\n", ce_err_msg());
    return 1;
  }
  RUN(test_bit_identical);
  RUN(test_wait_fraction);
  RUN(test_errors);
  nn_backend_finish(&nn_backend_cpu);
  return check_report();
}
