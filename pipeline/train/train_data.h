/* train_data.h - training batches for one trainer rank, from a dataset
 * directory or from a stream.
 *
 * Dataset: the rank reads through an in-process serve_source (serve.h), so
 * the order is exactly what `coemu serve` would send: for epoch e the split
 * is put in the order data.order names (pipeline/serve/order.h: exact, a
 * shuffle by (seed, e), or shards, the shard-aware order of (seed, e); both
 * recomputed from (seed, e) alone on resume), rank r takes positions r,
 * r+W, r+2W, ..., every rank gets the same number of whole batches (the
 * remainder is dropped) and
 * a prefetching reader thread overlaps the HDF5 reads with training.
 * Because rank r's batch k is positions r + W*(k*b + j), j < b, of the
 * shuffled order, the W batches of step k together are positions
 * [k*W*b, (k+1)*W*b): the same samples 1 rank with batch W*b sees, which is
 * what makes data-parallel training match single-rank training.
 *
 * Stream: a stream_client (stream_client.h) asking for normalised data; the
 * producer's chunks are gathered into batches (the batch must be a multiple
 * of the producer's chunk size, so a resume position is a chunk boundary).
 * Epochs follow the producer's; a partial batch at an epoch's end is dropped.
 * The order is the producer's; a data.order that names one is asked for in
 * the HELLO (serve.h, SERVE_FLAG_ORDER), and a producer serving the other
 * answers with an error that names both.
 *
 * Batches are normalised (stats/transforms.h with the dataset's /stats),
 * unless raw is set: then the values are as stored wherever the trainer has
 * the parameters (a dataset's /stats, data.stream.stats) and
 * train_data_norm returns them, for the trainer's backend to normalise
 * (nn_backend.normalise_inputs / normalise_targets: on the device with
 * CUDA, the same bits on the CPU); a stream normalised by its producer
 * stays normalised (train_data_norm NULL).
 */
#ifndef COEMU_TRAIN_DATA_H
#define COEMU_TRAIN_DATA_H

#include <stdint.h>

#include "pipeline/job/trainjob.h"
#include "stats/transforms.h"

/* serve_opts.unfinished_hint of the datasets training reads */
#define TRAIN_UNFINISHED_HINT "run or resume `coemu generate` for it, then train"

typedef struct {
  const train_stage *stage; /* data: source, dataset / endpoint, split, credit, timeout, keys */
  uint64_t seed;            /* shuffle seed (dataset source) */
  int rank, world;
  int batch;                /* samples per batch on this rank */
  uint32_t epoch;           /* where to start (resume) */
  uint64_t step;            /* batches of that epoch already consumed */
  int raw;                  /* 1: leave the normalisation to the caller (train_data_norm) */
} train_data_opts;

typedef struct train_data train_data;

int train_data_open(const train_data_opts *o, train_data **out);
void train_data_close(train_data *d);

/* Per-sample shapes (3, n, n, n) and (F, n, n). For a stream this waits for
 * the first chunk. */
int train_data_shapes(train_data *d, uint32_t in_shape[4], uint32_t out_shape[3]);

/* The identity of the data (serve_dataset_id, pipeline/serve/serve.h): a
 * dataset's own, or the dataset_id a stream's producer announced (known
 * after train_data_shapes; 0 when it announced none). */
uint64_t train_data_dataset_id(const train_data *d);

/* Batches per epoch on this rank (0 if the stream does not announce it). */
uint64_t train_data_batches_per_epoch(train_data *d);

/* The next batch of `epoch`: returns 1 with *inputs (batch x 3 n^3) and
 * *targets (batch x F n^2) valid until the next call, 0 when the epoch has
 * no more whole batches, or -1 with an error. Epochs are read in order. */
int train_data_next(train_data *d, uint32_t epoch, const float **inputs, const float **targets);

/* With opts.raw: the parameters the caller normalises the batches with, or
 * NULL when they come normalised (a stream without data.stream.stats).
 * Without: NULL. */
const stats_norm *train_data_norm(const train_data *d);

/* A description for logs: "dataset DIR (split train, 800 samples)" or "stream ENDPOINT". */
const char *train_data_describe(const train_data *d);

#endif
