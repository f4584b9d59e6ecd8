/* train_bench.h - the trainer's timing loops, one text for `coemu bench
 * train` (pipeline/bench/bench_train.c) and the device check
 * (tests/trainer/trainer_gpu_check.c): seconds of training steps and of
 * evaluation-mode forwards with the batch fed one of three ways, and of the
 * host-to-backend copies alone, so that a figure says what it measured.
 *
 * Why three: a batch of 64 seven-channel COEmuNet inputs is 3 x 64^3 x 4 B
 * x 64 = 201 MB. Copied from pageable host memory (one host thread staging
 * it through the driver, ~5 GB/s) that alone is ~40 ms, which is what both
 * coemu's and PyTorch's inference figures on the H200 came to (~1,600
 * samples/s in every precision, bf16 no faster: docs/trainer.md, "What the
 * inference figure measured"). The three feeds:
 *   pageable  the batch in ordinary host memory, uploaded before each step
 *             (nn_input_upload / trainer_step: synchronous), as before;
 *   pinned    the batch in page-locked host memory (nn_backend.host_alloc),
 *             copied with upload_async into one of two backend buffers
 *             while the step before computes (the input feed's scheme,
 *             pipeline/train/feed.h): the rate a trainer or an inference
 *             service fed from host memory can reach;
 *   resident  the batch already in backend memory (uploaded once): the
 *             network's own rate, no bus.
 * On the CPU backend the three differ only by memcpy (host_alloc is plain
 * memory, upload_async a copy), and CI runs them there.
 */
#ifndef COEMU_TRAIN_BENCH_H
#define COEMU_TRAIN_BENCH_H

#include "trainer/train.h"

typedef enum {
  TRAIN_BENCH_PAGEABLE,
  TRAIN_BENCH_PINNED,
  TRAIN_BENCH_RESIDENT,
  TRAIN_BENCH_NFEEDS
} train_bench_feed;

/* "pageable", "pinned", "resident" */
const char *train_bench_feed_name(train_bench_feed f);

/* A comma-separated list of feed names as a bit mask (1 << feed); -1 with an
 * error naming the bad entry. */
int train_bench_feeds_parse(const char *list, unsigned *mask);

/* Seconds taken by `iters` training steps (forward, loss, backward, Adam at
 * rate lr) of t's model after `warm` untimed ones, on the batch x (inputs)
 * and tg (targets), host memory of t's model's batch size, fed as `feed`
 * says; the clock stops once the backend has finished the last step. The
 * model trains: its weights change (every feed sees the same batch). */
int train_bench_steps(trainer *t, const float *x, const float *tg, double lr,
                      train_bench_feed feed, int warm, int iters, double *seconds);

/* The same for evaluation-mode forwards: the input in, the forward, nothing
 * out (no loss). */
int train_bench_forwards(trainer *t, const float *x, train_bench_feed feed, int warm, int iters,
                         double *seconds);

/* Seconds taken by `iters` copies of n floats of host memory to backend
 * memory: pageable (nn_upload from src as given) or pinned (a page-locked
 * copy of src, upload_async + upload_wait each time); the bus alone. */
int train_bench_upload(const nn_net *net, const float *src, size_t n, train_bench_feed feed,
                       int iters, double *seconds);

/* Returns once net's backend has finished everything queued for it (the
 * clocks above stop there; also trainer_gpu_check's step tables). */
int train_bench_sync(const nn_net *net);

#endif
