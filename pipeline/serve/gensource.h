/* gensource.h - samples made on the fly as a stream source
 * (`coemu serve --generate JOB`, docs/onthefly.md).
 *
 * Nothing is stored: MPI rank 0 serves the stream (serve.h with a
 * serve_external source, so the order, rank slices, prefetch, credits,
 * resume, normalisation, INFO and CURVE are those of a stored dataset) and
 * every rank, rank 0 included, makes samples with the producer of
 * `coemu generate` (behind sample_fn: this room does not know the sampler or
 * the solver). The dataset this stands for is the one `coemu generate JOB`
 * makes: sample i = (model i / D, direction i % D), the split of each model
 * from job_model_splits, shards of output.samples_per_shard samples (for
 * --order shards), the dataset id the XXH64 of the job text. So the epoch
 * order of every split is the one `coemu serve` uses on that dataset, and
 * every sample is byte for byte the stored one.
 *
 * Work: serve's reader thread submits every chunk (a batch) of its
 * read-ahead window, across chunk and epoch boundaries, and collects them in
 * order (serve_external). Each submitted chunk's samples are sorted by model
 * and cut into P nearly equal regions, one per rank, so that a rank makes the
 * directions of a model together (its model cache then loads a model once
 * per chunk at most, and once per epoch where the order keeps a model's
 * samples together, e.g. --order shards). A rank takes from the oldest chunk
 * that has work left: from the front of its own region and, once that is
 * empty, from the back of the fullest one (work stealing); once the oldest
 * chunk has nothing left to hand out, from the next one. So no rank waits at
 * a chunk's (or an epoch's) end while the slowest makes that chunk's last
 * sample, as long as a later chunk has been submitted; chunks still complete
 * oldest first and serve sends them strictly in order. Rank 0 makes its
 * samples one at a time in the reader thread and, in between, keeps every
 * other rank GENSRC_DEPTH (2) samples ahead: one sample per MPI message each
 * way. Memory: the submitted chunks' buffers are serve's prefetch slots (at
 * most world x (prefetch + 1) + 2 chunks, as without pipelining); rank 0
 * adds GENSRC_DEPTH samples per other rank for their results, and each
 * submitted chunk its index lists (24 bytes per sample).
 * MPI must be initialised with at least MPI_THREAD_SERIALIZED: on rank 0
 * only the reader thread talks MPI while serving.
 *
 * Fresh views (optional): for samples of training models, direction d of
 * epoch e is made with direction index e*D + d of the job's sampler (Philox
 * stream (seed, model, e*D + d)): new orientations each epoch, reproducibly;
 * validation and test samples (and every sample of epoch 0) are the stored
 * ones. The dataset id then differs from the stored dataset's.
 *
 * Normalisation (optional): the /stats of a pilot dataset or file
 * (stats_dataset), or a pilot pass run first (gensrc_pilot_run): the exact
 * statistics of `coemu stats` (pipeline/dataset/dataset_stats.h, the same
 * code) of a stated subset of the training split made on the fly by every
 * rank. The subset of N samples, with T training models: directions
 * 0..k-1 of every training model and direction k of the first r training
 * models (model id order), k = N / T, r = N % T (direction 0 of every model
 * first, then direction 1, ...: as spread over the models as N allows), in
 * sample order (a model's directions together). With r = 0 it is the
 * training split of the same job with sampling.directions k (a sample is a
 * function of (seed, model, direction) only), so `coemu generate` + `coemu
 * stats` of that job give the same /stats bit for bit. INFO names the
 * source and an id of the parameters (normalisation_id: XXH64 of the
 * stats_norm values), the same for the pilot pass and for --stats fed the
 * file the pass wrote.
 *
 * A producer rank that does not answer within the timeout fails the chunk
 * with a message naming the rank (sent to the consumer as ERROR); a rank that
 * reports an error (e.g. an unreadable model) does the same with its message.
 * Errors follow common/error.h.
 */
#ifndef COEMU_SERVE_GENSOURCE_H
#define COEMU_SERVE_GENSOURCE_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#include "pipeline/job/job.h"
#include "pipeline/serve/serve.h"
#include "stats/transforms.h"

/* Make sample (model, view) of the job: inputs (3 n^3), targets (F n^2) as
 * generate.h's sample_fn (view: the direction index given to the sampler). */
typedef int (*gensrc_sample_fn)(void *ctx, int64_t model, int64_t view, float *inputs,
                                float *targets);

/* The producer's model cache counters (optional). */
typedef void (*gensrc_counters_fn)(void *ctx, int64_t *loads, int64_t *hits, size_t *peak_bytes);

typedef struct gensrc_pilot gensrc_pilot;

typedef struct {
  const job *j;
  const char *split;         /* the split served (for messages; serve_opts.split decides) */
  int fresh_views;
  const char *stats_dataset; /* a pilot dataset (DIR: DIR/dataset.h5) or a file written by a
                                pilot pass, whose /stats normalise (NULL: none) */
  const gensrc_pilot *pilot; /* or the result of a pilot pass (rank 0; NULL: none) */
  double timeout_s;          /* a rank silent this long fails the chunk (0: 600) */
  gensrc_sample_fn sample;
  gensrc_counters_fn counters;
  void *ctx;
  MPI_Comm comm;             /* every rank produces; rank 0 serves */
} gensrc_opts;

typedef struct gensrc gensrc;

/* A pilot pass: its subset (see above) and, on rank 0, its result. */
struct gensrc_pilot {
  int64_t samples;         /* N */
  int64_t train_models;    /* T */
  int64_t rounds, extra;   /* k = N / T, r = N % T */
  stats_norm norm;         /* rank 0 */
  int64_t used, outliers;  /* samples used, dropped (statistics.drop_outliers) */
  int64_t made;            /* samples made, all ranks (twice each when a rank's share of the
                              pilot is over dataset_stats' 256 MB: its second read) */
  double seconds;          /* wall clock of the pass */
  int ranks;
  char subset[256];        /* the subset in words */
};

/* The subset of a pilot pass of n samples of job j (every rank; no MPI):
 * fills p's samples, train_models, rounds, extra and subset. -1 with a
 * message when n is not 1..the training split's samples. */
int gensrc_pilot_plan(const job *j, int64_t n, gensrc_pilot *p);

/* Run the pilot pass of n samples (collective over MPI_COMM_WORLD, which
 * o->comm must be; before gensrc_open / gensrc_worker): every rank makes its
 * block of the subset with o->sample (the stored views: fresh views do not
 * apply), dataset_stats_source_run computes the statistics; with out_path
 * they are written there (an HDF5 file with /stats, for --stats FILE).
 * Rank 0 prints a progress line (unless quiet) and gets p->norm. 0, or -1
 * on every rank (the failing rank printed "coemu serve: rank R: error: ..."). */
int gensrc_pilot_run(const gensrc_opts *o, int64_t n, const char *out_path, int quiet,
                     gensrc_pilot *p);

/* Rank 0: the source for serve_opts.external, for split `split` (train,
 * validation, test, all). Collective: no (the workers wait in
 * gensrc_worker). -1 with a message naming the job (or the pilot dataset). */
int gensrc_open(const gensrc_opts *o, gensrc **out);
const serve_external *gensrc_external(const gensrc *g);

/* Ranks > 0: make what rank 0 asks for until it says stop; then take part
 * in the final counters (gensrc_close). 0, or -1 with a message (the error
 * was also sent to rank 0). */
int gensrc_worker(const gensrc_opts *o);

/* What the ranks did, summed (rank 0 after gensrc_close). */
typedef struct {
  int ranks;
  int64_t samples;     /* samples made */
  double seconds;      /* inside sample_fn, summed over ranks */
  int64_t loads, hits; /* model cache, summed */
  size_t peak_bytes;   /* the largest peak of one rank's model cache */
  int64_t ahead;       /* samples handed out while an earlier chunk was still being made */
} gensrc_stats;

/* Rank 0: tell the workers to stop (after serve_close: the reader thread
 * is gone), gather their counters into st (may be NULL), free. Every rank
 * must reach its gensrc_worker return / this call. After a rank failed to
 * answer nothing is gathered (st->ranks = -1): the caller must MPI_Abort. */
void gensrc_close(gensrc *g, gensrc_stats *st);

/* The pipelined source (serve_external; rank 0's reader thread only, one
 * thread at a time): submit chunk `ticket`, collect it (making samples and
 * moving every submitted chunk on meanwhile), or cancel it. */
int gensrc_submit(void *g, uint64_t ticket, uint32_t epoch, const int64_t *idx, int n,
                  float *inputs, float *targets);
int gensrc_collect(void *g, uint64_t ticket);
void gensrc_cancel(void *g, uint64_t ticket);

#endif
