/* feed.h - the trainer's input feed: the next batch read ahead on a thread of
 * its own while the current step computes, into the backend's host staging
 * buffers (page-locked with CUDA, aligned host memory on the CPU:
 * nn_backend.host_alloc), and the time the steps waited for input.
 *
 * The source is any function with train_data_next's contract (train_data.h:
 * 1 and a batch valid until the next call, 0 at the end of the epoch, -1 with
 * an error; epochs in order), so the feed serves the dataset reader and the
 * stream alike, and the tests drive it with sources of their own. Batches
 * come out in the source's order, bit for bit what the source returned (a
 * copy), so training through the feed is training on the source directly.
 *
 * Two slots: while the step uses one batch, the thread fills the other; it
 * reads epochs [epoch, epochs) and stops after the last (a stream's producer
 * is not asked for an epoch the run will not train). An error of the source
 * reaches train_feed_next when the consumer gets to that batch, with the
 * source's message.
 *
 * Wait: train_feed_next times how long it blocks for a batch (with
 * prefetch 0, the source's own time; train_feed_next_dev adds its wait for
 * the copy); train_feed_take_wait returns the sum
 * since its last call. The trainer's epoch wait fraction is that over the
 * epoch's wall time: near 0 when the source keeps up, near 1 when the steps
 * mostly wait for it (docs/training.md, "Input wait").
 */
#ifndef COEMU_TRAIN_FEED_H
#define COEMU_TRAIN_FEED_H

#include <stddef.h>
#include <stdint.h>

#include "trainer/backend.h"

typedef int (*train_feed_source)(void *src, uint32_t epoch, const float **inputs,
                                 const float **targets);

typedef struct {
  train_feed_source next;
  void *src;
  size_t in_floats, out_floats; /* per batch */
  uint32_t epoch, epochs;       /* the epochs to read: [epoch, epochs) */
  const nn_backend *be;         /* whose host_alloc makes the buffers */
  int prefetch;                 /* 1: a thread reads ahead; 0: read in train_feed_next */
  int device;                   /* 1: two batches of backend memory too (train_feed_next_dev) */
} train_feed_opts;

typedef struct train_feed train_feed;

int train_feed_open(const train_feed_opts *o, train_feed **out);
/* Stops the thread (after the source call it is in returns) and frees. */
void train_feed_close(train_feed *f);

/* train_data_next's contract: the next batch of `epoch` (1; valid until the
 * next call), the end of the epoch (0), or -1 with an error. */
int train_feed_next(train_feed *f, uint32_t epoch, const float **inputs, const float **targets);

/* The same contract with the batch in backend memory (opts.device): two
 * backend buffers, and batch b+1 queued into the other with
 * nn_backend.upload_async (from the host slot the reader filled) before
 * batch b is handed out, so it copies while step b computes; the call waits
 * for batch b's copy (upload_wait) before it releases b's host slot to the
 * reader (backend.h, HOST SYNCHRONISATION). Batch b is valid until the next
 * call; an error of batch b+1 comes from the call that would hand it out.
 * Use one of train_feed_next and train_feed_next_dev on a feed. */
int train_feed_next_dev(train_feed *f, uint32_t epoch, const float **inputs,
                        const float **targets);

/* Seconds train_feed_next blocked for input since the last call. */
double train_feed_take_wait(train_feed *f);

#endif
