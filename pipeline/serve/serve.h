/* serve.h - a dataset as a stream source (`coemu serve`).
 *
 * Serves one split of a finished dataset (DIR/dataset.h5) to W trainer
 * ranks. For each epoch e the split's samples are put in a deterministic
 * order keyed by (seed, e) (order.h: by default the exact Fisher-Yates
 * permutation, or the shard-aware order), and rank r takes the samples at
 * positions r, r+W, r+2W, ... of that order: disjoint across ranks. Every
 * rank gets the same number of samples and of batches:
 * with drop_last the last M mod W samples and the incomplete last batch are
 * left out of the epoch; without it the order wraps around to pad them.
 * A chunk is one batch. A pool of reader threads (read_threads) prefetches
 * the next chunks of each consumer, one chunk per thread at a time, so the
 * producer's socket thread never waits on the disk when the trainer is
 * slower than it. HDF5 is called by one thread at a time (h5_lock): under
 * it a reader only plans where a chunk's rows lie in their shard files
 * (shard_reader_direct_plan); it then reads them with pread(2) and checks
 * each row's XXH64 against the shard's /checksums without the lock, in
 * parallel with the other readers. Shards whose rows cannot be read that
 * way (filtered, rebuilt inputs, ...) are read through HDF5 under the lock.
 * The chunks are the same bytes whichever reader reads them.
 * Zero copy: a chunk of raw samples whose rows lie back to back in one
 * shard file (every chunk of batch 1; at larger batches, consecutive rows of
 * a shard) is not copied at all: the reader checks its rows where they lie
 * in the shard file mapped read-only (shard_reader_direct_map) and the
 * chunk's frames point there, so ZeroMQ sends them from the page cache; the
 * chunk holds a reference to the mapping until ZeroMQ has sent it.
 * Normalised chunks, chunks of scattered rows, HDF5-read shards, live mode
 * and external sources are copied as before, and so is everything with
 * serve_opts.copy_rows.
 * Samples are read from the shard files (pipeline/dataset/shard_reader.h:
 * the manifest's sample -> shard map, a cache of at most max_open open
 * shards, consecutive rows in one read, every sample checked), never
 * through dataset.h5's virtual datasets.
 * Normalisation (stats/transforms.h, parameters from the dataset's /stats)
 * is applied when the consumer asks for it.
 *
 * Live mode serves a dataset that `coemu generate` is still making: the
 * sample plan comes from DIR/plan.json (written before any shard), samples
 * are read from DIR/shards/ as soon as their shard has been renamed into
 * place, and a chunk whose shard is not finished yet is answered with
 * STREAM_SOURCE_WAIT (the producer keeps heart-beating meanwhile). Epoch 0
 * is in generation order, so training starts with the first shards; later
 * epochs use the shuffled order. Normalisation is not available live (no
 * /stats yet).
 */
#ifndef COEMU_SERVE_H
#define COEMU_SERVE_H

#include <stdint.h>

#include "pipeline/serve/order.h"
#include "pipeline/stream/stream_server.h"
#include "stats/transforms.h"

/* A source of samples other than a dataset (serve_opts.external): e.g.
 * samples made on the fly (gensource.h). serve.c keeps the order, the
 * rank slices, the prefetch slots, normalisation and INFO; the source makes
 * the samples, pipelined: serve's reader thread (the only thread that calls
 * these three) submits every chunk it means to read (its prefetch window,
 * across chunk and epoch boundaries), in the order they will be sent, and
 * then collects them oldest first, so the source can work on later chunks
 * while a chunk's last samples are being made.
 * submit: dataset indices idx[0..n) of `epoch` (copied) into inputs
 *   (n x 3 n^3) and targets (n x F n^2), raw (serve.c normalises); the
 *   buffers stay the caller's and must live until the ticket is collected
 *   or cancelled. 0, or -1 with a message (nothing submitted).
 * collect: wait until the chunk of `ticket` is made: 0, or -1 with the
 *   message that failed it. The ticket is then forgotten.
 * cancel: the chunk of `ticket` is no longer wanted: its samples not yet
 *   started are dropped, nothing more is written to its buffers, and the
 *   ticket is forgotten. */
typedef struct {
  int (*submit)(void *ctx, uint64_t ticket, uint32_t epoch, const int64_t *idx, int n,
                float *inputs, float *targets);
  int (*collect)(void *ctx, uint64_t ticket);
  void (*cancel)(void *ctx, uint64_t ticket);
  void *ctx;
  const char *name;          /* in messages, e.g. the job file */
  int64_t samples;           /* dataset indices 0..samples-1 */
  const int64_t *split;      /* the split's dataset indices, ascending (copied) */
  int64_t nsplit;
  int64_t per_shard;         /* the shard of index i is i / per_shard (order shards) */
  uint32_t in_shape[4], out_shape[3];
  uint64_t dataset_id;
  const stats_norm *norm;    /* normalisation parameters (copied), or NULL: none */
  const char *info_extra;    /* appended to the INFO object (", \"key\": value, ..."), or NULL */
} serve_external;

typedef struct {
  const char *dataset_dir;
  const char *split;      /* "train" (default), "validation", "test", "all" */
  uint64_t seed;
  int world;              /* trainer ranks */
  int batch;              /* samples per chunk (default 16) */
  int drop_last;          /* 1: drop the remainder (default); 0: pad by wrapping */
  int prefetch;           /* chunks read ahead per consumer (default 4), past the end of an
                             epoch into the next one (the stream moves on to it) */
  uint32_t epochs;        /* epochs the run serves (0: unbounded): no read-ahead past the last */
  int live;               /* serve a dataset while it is being generated (below) */
  order_opts order;       /* the epoch order (order.h; zeroed: exact) */
  int max_open;           /* shard files kept open at once (LRU; 0: SHARD_READER_MAX_OPEN) */
  int read_threads;       /* reader threads (0: serve_default_read_threads(); live: 1) */
  int copy_rows;          /* 1: copy every row into the chunk (pread), never send it from the
                             mapped shard file (below, "zero copy") */
  int row_views;          /* 1: a chunk whose rows are not back to back in one shard may be
                             handed out row by row (stream_chunk.in_rows, each row where it
                             lies in its own mapped shard, one mapping reference per row
                             frame: for a sender of protocol 3's row frames, coemu serve);
                             0: every chunk is one contiguous block (stream_chunk.inputs) */
  const serve_external *external; /* non-NULL: serve its samples instead of dataset_dir's */
  const char *unfinished_hint; /* what "DIR is not a finished dataset (HINT)" advises, in the
                                  words of the command that opens it (NULL: serve's, "serve a
                                  running job with --live") */
} serve_opts;

#define SERVE_MAX_READ_THREADS 64

/* The default pool of reader threads: min(4, the cores this process may use). */
int serve_default_read_threads(void);

/* HELLO flags bits 1-2: the order a consumer asks for (0: whatever the
 * producer serves; 1 + order_mode: that one, or an ERROR naming both). */
#define SERVE_FLAG_ORDER_SHIFT 1
#define SERVE_FLAG_ORDER_MASK (3u << SERVE_FLAG_ORDER_SHIFT)
#define SERVE_FLAG_ORDER(mode) ((uint32_t)((mode) + 1) << SERVE_FLAG_ORDER_SHIFT)

typedef struct serve_source serve_source;

int serve_open(const serve_opts *o, serve_source **out);
void serve_close(serve_source *s);

/* The stream_source_fn to give stream_server_create() with ctx = s. */
int serve_chunk(void *s, const stream_consumer *c, uint32_t epoch, uint64_t position,
                stream_chunk *out);

/* The stream_server_opts.leave callback: the last consumer of c->rank left,
 * so what was read ahead for it is freed (and no more is read). */
void serve_leave(void *s, const stream_consumer *c);

/* The stream_server_opts.producing callback of a live source (a dataset
 * coemu generate is still making): 1 while a coemu generate holds the
 * dataset's lock (DIR/.lock), or once every shard is made (nothing is left
 * to wait for); 0 when none holds it and shards are missing (the job was
 * killed, failed, or waits to be requeued: consumers waiting for its
 * shards wait for its rerun); -1 when the lock cannot be read. `why` says
 * which, naming the directory (and the holder, or the first shard
 * missing). Not live: always 1. */
int serve_live_producing(void *s, char *why, size_t len);

/* The dataset id announced to consumers (serve_dataset_dir_id; a
 * serve_external's own). */
uint64_t serve_dataset_id(const serve_source *s);
/* The id of the dataset in DIR, finished or being generated: XXH64 of
 * DIR/job.yaml (the job determines the data, so a copy or a move of the
 * directory keeps it, and a dataset of another job - another seed - has
 * another), or of DIR/manifest.json where there is no job.yaml. What `coemu
 * serve` announces and what `coemu train` records of the data a run trained
 * on. 0, or -1 with the message (neither file readable). */
int serve_dataset_dir_id(const char *dir, uint64_t *id);
/* Samples per epoch for each rank (a multiple of the batch). */
uint64_t serve_samples_per_rank(const serve_source *s);
/* Samples of the split. */
uint64_t serve_split_size(const serve_source *s);
/* The epoch order as resolved (mode, and K and B in shards mode). */
const order_plan *serve_order(const serve_source *s);

/* The text of the stream's INFO reply (docs/stream-protocol.md, "INFO"): a
 * JSON object with the ranks served, the split, batch, seed, epochs (0:
 * unbounded), samples per rank and of the split, the per-sample shapes and
 * dtype, and the /stats normalisation parameters (null without /stats), so
 * a consumer can adopt the server's world and denormalise without opening
 * the dataset; also the order ("exact" or "shards", with order_shards and
 * order_buffer: K and B, null in exact mode). Writes at most len bytes
 * (NUL included); returns the length, or -1 with the message set when len
 * is too small. */
int serve_info_json(const serve_source *s, uint32_t epochs, char *buf, size_t len);

/* In-process use (the trainer reads through a serve_source instead of a
 * socket: the same split, order and normalisation as a stream). */

/* The dataset index of the k-th sample of the split (ascending order), or
 * -1 when k is out of range. */
int64_t serve_split_sample(const serve_source *s, int64_t k);
/* Per-sample shapes: inputs (3, n, n, n), targets (F, n, n). */
void serve_shapes(const serve_source *s, uint32_t in_shape[4], uint32_t out_shape[3]);
/* The id of a set of normalisation parameters (the stream INFO's
 * normalisation_id, for every source: equal ids, equal normalisation):
 * XXH64 of its eleven values as doubles, in the order of stats_norm. */
uint64_t serve_norm_id(const stats_norm *p);

/* The dataset's normalisation (/stats), or NULL when it has none. */
/* Samples of a finished dataset read so far (every reader, serve_read too):
 * directly (direct) and through HDF5 (shards that cannot be read directly,
 * or every other open shard busy: shard_reader.h); of the direct ones,
 * *mapped (may be NULL) were not copied at all: sent from the mapped shard
 * file (serve_opts.copy_rows). For tests and benches. */
void serve_read_counts(const serve_source *s, uint64_t *direct, uint64_t *hdf5, uint64_t *mapped);
/* Chunk buffers (docs/stream-protocol.md, "Chunk buffers"): chunks made new and
 * chunks that reused the buffers of one already sent; made never exceeds the most
 * chunks in use at once (read-ahead slots + chunks queued in ZeroMQ). */
void serve_pool_counts(const serve_source *s, uint64_t *made, uint64_t *reused);

const stats_norm *serve_norm(const serve_source *s);

/* An images-only dataset (shard_reader_images_only): input cubes rebuilt so
 * far, the thread CPU seconds their sampling took, the model loads and their
 * seconds (docs/benchmarks.md,
 * the producer bound); -1 for a dataset that stores its inputs, or live. */
int serve_rebuild_counters(const serve_source *s, int64_t *cubes, double *cpu_s, double *load_s,
                           int64_t *loads);
/* Read dataset samples idx[0..n) now, in the calling thread (normalised on
 * request), into inputs (n x 3 n^3) and targets (n x F n^2). Safe alongside
 * the reader thread (h5_lock). */
int serve_read(serve_source *s, const int64_t *idx, int n, int normalised, float *inputs,
               float *targets);

/* Shard files the reader holds open now, and the most it held at once
 * (never more than opts.max_open); 0 in live mode. */
void serve_open_shards(const serve_source *s, int *now, int *peak);

/* The dataset sample index at `position` of `rank`'s order in `epoch`
 * (exposed for tests and the Python client's checks). */
int64_t serve_sample_at(const serve_source *s, uint32_t epoch, int rank, uint64_t position);

#endif
