/* train_bench.c - the trainer's timing loops (train_bench.h). */
#include "trainer/train_bench.h"

#include <stdio.h>
#include <string.h>

#include "common/cli.h"
#include "common/clock.h"
#include "common/error.h"

static const char *const feed_names[TRAIN_BENCH_NFEEDS] = {"pageable", "pinned", "resident"};

const char *train_bench_feed_name(train_bench_feed f) {
  return f >= 0 && f < TRAIN_BENCH_NFEEDS ? feed_names[f] : "?";
}

int train_bench_feeds_parse(const char *list, unsigned *mask) {
  *mask = 0;
  const char *item;
  int f, n;
  while (cli_list_next(&list, feed_names, TRAIN_BENCH_NFEEDS, &f, &item, &n)) {
    if (f < 0)
      return ce_err("feed '%.*s': expected pageable, pinned or resident (a comma-separated list)",
                    n, item);
    *mask |= 1u << f;
  }
  if (!*mask) return ce_err("an empty list of feeds: expected pageable, pinned or resident");
  return 0;
}

/* Where the next step's batch comes from. pinned: two backend buffers, the
 * next batch copied into one (upload_async) while the step on the other
 * computes, as the input feed does (pipeline/train/feed.c). */
typedef struct {
  train_bench_feed feed;
  const nn_net *net;
  const float *x, *tg;  /* the caller's host batch */
  size_t nx, nt;        /* floats of inputs, of targets (0: none) */
  float *hx, *ht;       /* pinned: page-locked copies */
  float *dx[2], *dt[2]; /* resident: [0]; pinned: both */
  int next;             /* pinned: the buffer the copy in flight fills */
} feeder;

static void feeder_close(feeder *f) {
  const nn_backend *be = f->net->be;
  if (f->feed == TRAIN_BENCH_PINNED && f->hx) (void)be->upload_wait(); /* nothing left in flight */
  for (int i = 0; i < 2; i++) {
    be->free(f->dx[i]);
    be->free(f->dt[i]);
  }
  be->host_free(f->hx);
  be->host_free(f->ht);
  memset(f, 0, sizeof *f);
}

static int feeder_queue(feeder *f) { /* pinned: the batch into buffer f->next */
  const nn_backend *be = f->net->be;
  CE_TRY(be->upload_async(f->dx[f->next], f->hx, sizeof(float) * f->nx));
  if (f->nt) CE_TRY(be->upload_async(f->dt[f->next], f->ht, sizeof(float) * f->nt));
  return 0;
}

static int feeder_open(feeder *f, const nn_net *net, train_bench_feed feed, const float *x,
                       size_t nx, const float *tg, size_t nt) {
  memset(f, 0, sizeof *f);
  f->feed = feed, f->net = net, f->x = x, f->tg = tg, f->nx = nx, f->nt = nt;
  const nn_backend *be = net->be;
  const int nbuf = feed == TRAIN_BENCH_PINNED ? 2 : feed == TRAIN_BENCH_RESIDENT ? 1 : 0;
  int rc = 0;
  for (int i = 0; i < nbuf && rc == 0; i++) {
    f->dx[i] = nn_alloc(net, nx, "the bench's input batch");
    if (!f->dx[i] || (nt && !(f->dt[i] = nn_alloc(net, nt, "the bench's target batch")))) rc = -1;
  }
  if (rc == 0 && feed == TRAIN_BENCH_RESIDENT) {
    rc = nn_upload(net, f->dx[0], x, nx);
    if (rc == 0 && nt) rc = nn_upload(net, f->dt[0], tg, nt);
  }
  if (rc == 0 && feed == TRAIN_BENCH_PINNED) {
    f->hx = be->host_alloc(sizeof(float) * nx);
    f->ht = nt ? be->host_alloc(sizeof(float) * nt) : NULL;
    if (!f->hx || (nt && !f->ht)) rc = -1;
    else {
      memcpy(f->hx, x, sizeof(float) * nx);
      if (nt) memcpy(f->ht, tg, sizeof(float) * nt);
      rc = feeder_queue(f); /* the first batch */
    }
  }
  if (rc < 0) {
    ce_err_prefix("the bench's %s batch", feed_names[feed]);
    feeder_close(f);
  }
  return rc;
}

/* The next step's batch in backend memory (NULL for pageable: the step
 * uploads f->x, f->tg itself). pinned: wait for the copy in flight, then
 * queue the next one into the other buffer, behind the work queued so far
 * (the step that read that buffer last). */
static int feeder_next(feeder *f, const float **x, const float **tg) {
  *x = *tg = NULL;
  if (f->feed == TRAIN_BENCH_RESIDENT) *x = f->dx[0], *tg = f->dt[0];
  if (f->feed != TRAIN_BENCH_PINNED) return 0;
  CE_TRY(f->net->be->upload_wait());
  const int cur = f->next;
  f->next ^= 1;
  CE_TRY(feeder_queue(f));
  *x = f->dx[cur], *tg = f->dt[cur];
  return 0;
}

/* a download waits for everything queued before it (backend.h) */
int train_bench_sync(const nn_net *net) {
  float one;
  return nn_download(net, &one, net->params[0].w, 1);
}

static int one_step(trainer *t, feeder *f, double lr) {
  const float *x, *tg;
  loss_value lv;
  CE_TRY(feeder_next(f, &x, &tg));
  if (f->feed == TRAIN_BENCH_PAGEABLE) return trainer_step(t, f->x, f->tg, lr, &lv);
  return trainer_step_raw(t, x, tg, NULL, lr, &lv); /* device-to-device into the net */
}

static int one_forward(trainer *t, feeder *f) {
  nn_net *net = &t->model->net;
  const float *x, *tg;
  CE_TRY(feeder_next(f, &x, &tg));
  if (f->feed == TRAIN_BENCH_PAGEABLE) CE_TRY(nn_input_upload(net, t->model->input, f->x));
  else CE_TRY(net->be->copy(nn_out(net, t->model->input), x, sizeof(float) * f->nx));
  return nn_forward(net, 0);
}

/* warm untimed calls, then iters timed ones, of a step (train) or a forward */
static int timed(trainer *t, const float *x, const float *tg, double lr, train_bench_feed feed,
                 int train, int warm, int iters, double *seconds) {
  nn_net *net = &t->model->net;
  const size_t nx = (size_t)net->batch * (size_t)net->nodes[t->model->input].size;
  const size_t nt = train ? (size_t)net->batch * (size_t)net->nodes[t->model->output].size : 0;
  if (feed < 0 || feed >= TRAIN_BENCH_NFEEDS) return ce_err("train_bench: feed %d", (int)feed);
  feeder f;
  CE_TRY(feeder_open(&f, net, feed, x, nx, tg, nt));
  int rc = 0;
  for (int i = 0; i < warm && rc == 0; i++) rc = train ? one_step(t, &f, lr) : one_forward(t, &f);
  if (rc == 0) rc = train_bench_sync(net);
  const double t0 = ce_now_s();
  for (int i = 0; i < iters && rc == 0; i++) rc = train ? one_step(t, &f, lr) : one_forward(t, &f);
  if (rc == 0) rc = train_bench_sync(net);
  *seconds = ce_now_s() - t0;
  feeder_close(&f);
  return rc;
}

int train_bench_steps(trainer *t, const float *x, const float *tg, double lr,
                      train_bench_feed feed, int warm, int iters, double *seconds) {
  if (!t->opt) return ce_err("train_bench_steps: the trainer has no optimiser");
  return timed(t, x, tg, lr, feed, 1, warm, iters, seconds);
}

int train_bench_forwards(trainer *t, const float *x, train_bench_feed feed, int warm, int iters,
                         double *seconds) {
  return timed(t, x, NULL, 0, feed, 0, warm, iters, seconds);
}

int train_bench_upload(const nn_net *net, const float *src, size_t n, train_bench_feed feed,
                       int iters, double *seconds) {
  if (feed == TRAIN_BENCH_RESIDENT)
    return ce_err("train_bench_upload: 'resident' copies nothing (pageable or pinned)");
  const nn_backend *be = net->be;
  *seconds = 0;
  float *dst = nn_alloc(net, n, "the bench's upload buffer");
  float *h = feed == TRAIN_BENCH_PINNED ? be->host_alloc(sizeof(float) * n) : NULL;
  int rc = dst && (feed != TRAIN_BENCH_PINNED || h) ? 0 : -1;
  if (rc == 0 && h) memcpy(h, src, sizeof(float) * n);
  /* one untimed copy (the driver's first touch of the pages), then iters */
  for (int i = 0; i <= iters && rc == 0; i++) {
    const double t0 = ce_now_s();
    if (h) {
      rc = be->upload_async(dst, h, sizeof(float) * n);
      if (rc == 0) rc = be->upload_wait();
    } else {
      rc = nn_upload(net, dst, src, n);
    }
    if (i > 0) *seconds += ce_now_s() - t0;
  }
  be->host_free(h);
  be->free(dst);
  return rc < 0 ? ce_err_prefix("the bench's %s upload", feed_names[feed]) : 0;
}
