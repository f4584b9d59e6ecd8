/* feed.c - the prefetching input feed (feed.h). */
#include "pipeline/train/feed.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/progress.h"

#define NSLOT 2

typedef struct {
  float *in, *out;
  int state;        /* 0 free, 1 being filled or held by the consumer, 2 ready */
  int rc;           /* the source's answer: 1 batch, 0 end of epoch, -1 error */
  uint32_t epoch;
  char err[512];
} slot;

struct train_feed {
  train_feed_opts o;
  slot s[NSLOT];
  int next_fill, next_take; /* slot indices, round robin */
  int held;                 /* the slot the consumer holds, or -1 */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  pthread_t th;
  int have_thread, stop;
  int done;                 /* the reader has returned (last epoch read, error, stop) */
  double wait;              /* seconds blocked since train_feed_take_wait */
  /* opts.device: the batches in backend memory, one queued ahead */
  float *din[NSLOT], *dout[NSLOT];
  int dnext;                /* the buffer the next batch is queued into */
  int ahead;                /* 1: a source answer is held for the next call */
  int ahead_rc;             /* it: 1 (a batch in buffer ahead_slot, being copied), 0, -1 */
  int ahead_slot;
  uint32_t ahead_epoch;
  char ahead_err[512];
};

/* One source call into slot x (its buffers). */
static void fill(train_feed *f, slot *x, uint32_t epoch) {
  const float *in, *out;
  x->epoch = epoch;
  x->rc = f->o.next(f->o.src, epoch, &in, &out);
  if (x->rc == 1) {
    memcpy(x->in, in, sizeof(float) * f->o.in_floats);
    memcpy(x->out, out, sizeof(float) * f->o.out_floats);
  } else if (x->rc < 0) {
    x->rc = -1;
    snprintf(x->err, sizeof x->err, "%s", ce_err_msg());
  }
}

static void *reader(void *arg) {
  train_feed *f = arg;
  uint32_t epoch = f->o.epoch;
  pthread_mutex_lock(&f->mu);
  while (!f->stop && epoch < f->o.epochs) {
    slot *x = &f->s[f->next_fill];
    if (x->state != 0) {
      pthread_cond_wait(&f->cv, &f->mu);
      continue;
    }
    x->state = 1;
    f->next_fill = (f->next_fill + 1) % NSLOT;
    pthread_mutex_unlock(&f->mu);
    fill(f, x, epoch);
    pthread_mutex_lock(&f->mu);
    x->state = 2;
    pthread_cond_broadcast(&f->cv);
    if (x->rc < 0) break; /* the consumer gets the error when it gets here */
    if (x->rc == 0) epoch++;
  }
  f->done = 1;
  pthread_cond_broadcast(&f->cv);
  pthread_mutex_unlock(&f->mu);
  return NULL;
}

int train_feed_open(const train_feed_opts *o, train_feed **out) {
  *out = NULL;
  if (!o->next || !o->be || !o->be->host_alloc)
    return ce_err("input feed: a source and a backend with host staging are needed");
  train_feed *f = calloc(1, sizeof *f);
  if (!f) return ce_err("input feed: out of memory");
  f->o = *o;
  f->held = -1;
  pthread_mutex_init(&f->mu, NULL);
  pthread_cond_init(&f->cv, NULL);
  for (int i = 0; i < NSLOT; i++) {
    f->s[i].in = o->be->host_alloc(sizeof(float) * (o->in_floats ? o->in_floats : 1));
    f->s[i].out = f->s[i].in ? o->be->host_alloc(sizeof(float) * (o->out_floats ? o->out_floats : 1))
                             : NULL;
    if (!f->s[i].out) {
      ce_err_prefix("input feed: batch buffers of %zu + %zu floats on backend '%s'", o->in_floats,
                    o->out_floats, o->be->name);
      train_feed_close(f);
      return -1;
    }
  }
  for (int i = 0; o->device && i < NSLOT; i++) {
    f->din[i] = o->be->alloc(sizeof(float) * (o->in_floats ? o->in_floats : 1));
    f->dout[i] = f->din[i] ? o->be->alloc(sizeof(float) * (o->out_floats ? o->out_floats : 1))
                           : NULL;
    if (!f->dout[i]) {
      ce_err_prefix("input feed: backend batch buffers of %zu + %zu floats on backend '%s'",
                    o->in_floats, o->out_floats, o->be->name);
      train_feed_close(f);
      return -1;
    }
  }
  if (o->prefetch) {
    int e = pthread_create(&f->th, NULL, reader, f);
    if (e) {
      train_feed_close(f);
      return ce_err("input feed: cannot start the reader thread: %s", strerror(e));
    }
    f->have_thread = 1;
  }
  *out = f;
  return 0;
}

void train_feed_close(train_feed *f) {
  if (!f) return;
  if (f->have_thread) {
    pthread_mutex_lock(&f->mu);
    f->stop = 1;
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
    pthread_join(f->th, NULL);
  }
  if (f->ahead && f->ahead_rc == 1) f->o.be->upload_wait(); /* the copy reads a host slot */
  for (int i = 0; i < NSLOT; i++) {
    if (f->o.be && f->o.be->free) {
      f->o.be->free(f->din[i]);
      f->o.be->free(f->dout[i]);
    }
    if (f->o.be && f->o.be->host_free) {
      f->o.be->host_free(f->s[i].in);
      f->o.be->host_free(f->s[i].out);
    }
  }
  pthread_cond_destroy(&f->cv);
  pthread_mutex_destroy(&f->mu);
  free(f);
}

static int hand_out(train_feed *f, slot *x, uint32_t epoch, const float **in, const float **out) {
  if (x->rc < 0) return ce_err("%s", x->err);
  if (x->epoch != epoch)
    return ce_err("input feed: epoch %u asked for, the source is at epoch %u", epoch, x->epoch);
  *in = x->in;
  *out = x->out;
  return x->rc;
}

int train_feed_next(train_feed *f, uint32_t epoch, const float **in, const float **out) {
  const double t0 = ce_now();
  if (!f->o.prefetch) { /* synchronous: the source's time is the wait */
    slot *x = &f->s[0];
    fill(f, x, epoch);
    f->wait += ce_now() - t0;
    return hand_out(f, x, epoch, in, out);
  }
  pthread_mutex_lock(&f->mu);
  if (f->held >= 0) { /* the batch handed out last is done with */
    f->s[f->held].state = 0;
    f->held = -1;
    pthread_cond_broadcast(&f->cv);
  }
  slot *x = &f->s[f->next_take];
  while (x->state != 2 && !f->done) pthread_cond_wait(&f->cv, &f->mu);
  int ready = x->state == 2;
  if (ready) {
    x->state = 1; /* held */
    f->held = f->next_take;
    f->next_take = (f->next_take + 1) % NSLOT;
  }
  pthread_mutex_unlock(&f->mu);
  f->wait += ce_now() - t0;
  if (!ready)
    return ce_err("input feed: epoch %u asked for after the last epoch the feed reads (%u)", epoch,
                  f->o.epochs - 1);
  int rc = hand_out(f, x, epoch, in, out);
  if (rc == 0) { /* an end-of-epoch marker holds no data: free it now */
    pthread_mutex_lock(&f->mu);
    x->state = 0;
    f->held = -1;
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
  }
  return rc;
}

/* The source's answer for the next batch of `epoch`: a batch is queued
 * into buffer f->dnext at once. */
static void fetch_ahead(train_feed *f, uint32_t epoch) {
  const float *x, *y;
  f->ahead = 1;
  f->ahead_epoch = epoch;
  f->ahead_rc = train_feed_next(f, epoch, &x, &y);
  if (f->ahead_rc == 1) {
    const nn_backend *be = f->o.be;
    f->ahead_slot = f->dnext;
    if (be->upload_async(f->din[f->dnext], x, sizeof(float) * f->o.in_floats) < 0 ||
        be->upload_async(f->dout[f->dnext], y, sizeof(float) * f->o.out_floats) < 0) {
      ce_err_prefix("input feed: queueing the copy of a batch of epoch %u", epoch);
      f->ahead_rc = -1;
    }
    f->dnext = (f->dnext + 1) % NSLOT;
  }
  if (f->ahead_rc < 0) snprintf(f->ahead_err, sizeof f->ahead_err, "%s", ce_err_msg());
}

int train_feed_next_dev(train_feed *f, uint32_t epoch, const float **in, const float **out) {
  if (!f->o.device) return ce_err("input feed: opened without backend buffers (opts.device)");
  if (f->ahead && f->ahead_epoch != epoch)
    return ce_err("input feed: epoch %u asked for, batch ahead is of epoch %u", epoch,
                  f->ahead_epoch);
  if (!f->ahead) fetch_ahead(f, epoch); /* the first batch of an epoch: nothing ahead */
  f->ahead = 0;
  const int rc = f->ahead_rc, buf = f->ahead_slot;
  if (rc < 0) return ce_err("%s", f->ahead_err);
  if (rc == 0) return 0;
  const double t0 = ce_now(); /* the copy not yet done is input the step waits for */
  const int w = f->o.be->upload_wait();
  f->wait += ce_now() - t0;
  if (w < 0) return ce_err_prefix("input feed: waiting for the copy of a batch of epoch %u", epoch);
  /* its host slot goes back to the reader now; the next batch copies while
   * this one's step computes */
  fetch_ahead(f, epoch);
  *in = f->din[buf];
  *out = f->dout[buf];
  return 1;
}

double train_feed_take_wait(train_feed *f) {
  double w = f->wait;
  f->wait = 0;
  return w;
}
