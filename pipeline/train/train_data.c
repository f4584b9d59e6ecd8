/* train_data.c - training batches from a dataset or a stream (train_data.h). */
#include "pipeline/train/train_data.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "pipeline/serve/serve.h"
#include "pipeline/stream/stream_client.h"
#include "stats/statsfile.h"
#include "stats/transforms.h"

struct train_data {
  train_data_opts o;
  char desc[4400];
  uint32_t in_shape[4], out_shape[3];
  size_t in_vals, out_vals; /* floats per sample */
  int have_shapes;
  uint32_t epoch;           /* the epoch being read */
  uint64_t step;            /* batches of it returned */
  /* dataset */
  serve_source *src;
  stream_chunk held;        /* the chunk handed out last (released on the next call) */
  int holding;
  /* stream */
  stream_client *cli;
  stream_chunk_view view;   /* the chunk being consumed */
  uint32_t view_used;       /* its samples already copied */
  int view_valid;
  float *bin, *bout;        /* the batch assembled from chunks */
  int self_norm;            /* the trainer normalises (data.stream.stats) */
  stats_norm norm;
};

static void release_held(train_data *d) {
  if (d->holding && d->held.release) d->held.release(d->held.token);
  d->holding = 0;
}

static void set_shapes(train_data *d, const uint32_t in[4], const uint32_t out[3]) {
  memcpy(d->in_shape, in, sizeof d->in_shape);
  memcpy(d->out_shape, out, sizeof d->out_shape);
  d->in_vals = (size_t)in[0] * in[1] * in[2] * in[3];
  d->out_vals = (size_t)out[0] * out[1] * out[2];
  d->have_shapes = 1;
}

static int open_dataset(train_data *d) {
  const train_stage *s = d->o.stage;
  serve_opts so = {.dataset_dir = s->dataset, .split = s->split, .seed = d->o.seed,
                   .world = d->o.world, .batch = d->o.batch, .drop_last = 1, .prefetch = 3,
                   .order = {.mode = s->order == ORDER_SHARDS ? ORDER_SHARDS : ORDER_EXACT,
                             .shards = s->order_shards, .buffer = s->order_buffer},
                   .unfinished_hint = TRAIN_UNFINISHED_HINT};
  CE_TRY(serve_open(&so, &d->src));
  if (!serve_norm(d->src)) {
    return ce_err("%s/dataset.h5 has no /stats group: the trainer needs the normalisation (run "
                  "`coemu stats %s`)", s->dataset, s->dataset);
  }
  uint32_t in[4], out[3];
  serve_shapes(d->src, in, out);
  set_shapes(d, in, out);
  const order_plan *op = serve_order(d->src);
  char order[96] = "order exact";
  if (op->mode == ORDER_SHARDS)
    snprintf(order, sizeof order, "order shards: %lld shards at once, blocks of %lld",
             (long long)op->shards, (long long)op->buffer);
  snprintf(d->desc, sizeof d->desc,
           "dataset %s (split %s, %llu samples, %llu per rank and epoch, %s)", s->dataset,
           s->split, (unsigned long long)serve_split_size(d->src),
           (unsigned long long)serve_samples_per_rank(d->src), order);
  return 0;
}

static int open_stream(train_data *d) {
  const train_stage *s = d->o.stage;
  stream_client_opts so = {.endpoint = s->endpoint, .rank = (uint16_t)d->o.rank,
                           .world = (uint16_t)d->o.world, .epoch = d->o.epoch,
                           .position = d->o.step * (uint64_t)d->o.batch,
                           .credit = (uint32_t)s->credit, .timeout_s = s->timeout_s,
                           .curve_server_key = s->server_key && *s->server_key ? s->server_key : NULL,
                           .curve_client_key = s->client_key && *s->client_key ? s->client_key : NULL};
  /* normalised data; the order asked for, when data.order names one */
  so.flags = 1u | (s->order >= 0 ? SERVE_FLAG_ORDER(s->order) : 0u);
  if (s->stream_stats && *s->stream_stats) { /* raw samples, normalised here */
    char h5[4200];
    snprintf(h5, sizeof h5, "%s/dataset.h5", s->stream_stats);
    if (stats_file_read_norm(h5, &d->norm) < 0)
      return ce_err_prefix("data.stream.stats: the normalisation for the stream");
    d->self_norm = 1;
    so.flags &= ~1u;
  }
  CE_TRY(stream_client_open(&so, &d->cli));
  snprintf(d->desc, sizeof d->desc, "stream %s (rank %d of %d%s%s)", s->endpoint, d->o.rank,
           d->o.world, d->self_norm ? ", normalised with the /stats of " : "",
           d->self_norm ? s->stream_stats : "");
  return 0;
}

int train_data_open(const train_data_opts *o, train_data **out) {
  if (o->batch < 1 || o->world < 1 || o->rank < 0 || o->rank >= o->world)
    CE_FAIL("train data: batch %d, rank %d of %d: expected batch >= 1 and 0 <= rank < ranks",
            o->batch, o->rank, o->world);
  train_data *d = calloc(1, sizeof *d);
  if (!d) CE_FAIL("out of memory");
  d->o = *o;
  d->epoch = o->epoch;
  d->step = o->step;
  int rc = o->stage->source == TRAIN_SRC_DATASET ? open_dataset(d) : open_stream(d);
  if (rc < 0) {
    train_data_close(d);
    return -1;
  }
  *out = d;
  return 0;
}

void train_data_close(train_data *d) {
  if (!d) return;
  release_held(d);
  if (d->src) serve_close(d->src);
  if (d->cli) stream_client_close(d->cli);
  free(d->bin);
  free(d->bout);
  free(d);
}

const char *train_data_describe(const train_data *d) { return d->desc; }

const stats_norm *train_data_norm(const train_data *d) {
  if (!d->o.raw) return NULL;
  if (d->src) return serve_norm(d->src);
  return d->self_norm ? &d->norm : NULL;
}

/* Stream: the next chunk into d->view (1), the end of the epoch (0), or an
 * error. A silent producer is given a few reconnects (it may be restarting). */
static int next_chunk(train_data *d) {
  for (int tries = 0;; tries++) {
    int rc = stream_client_next(d->cli, &d->view);
    if (rc >= 0) {
      d->view_used = 0;
      d->view_valid = rc == 1;
      return rc;
    }
    if (rc != STREAM_E_SILENT || tries == 3) return ce_err_prefix("%s", d->desc);
    if (stream_client_reconnect(d->cli) < 0) return ce_err_prefix("%s", d->desc);
  }
}

static int check_chunk(train_data *d) {
  const stream_header *h = &d->view.h;
  const int normalised = (h->flags & 1) != 0;
  if (normalised && d->self_norm)
    CE_FAIL("%s: the producer sent normalised data, but data.stream.stats asks for raw ones",
            d->desc);
  if (!normalised && !d->self_norm)
    CE_FAIL("%s: the producer sent data that are not normalised (a live stream, or a dataset "
            "without /stats): give data.stream.stats", d->desc);
  if (!d->have_shapes) {
    if (h->in_shape[0] != 3 || h->in_shape[1] != h->in_shape[2] || h->in_shape[2] != h->in_shape[3] ||
        h->out_shape[1] != h->in_shape[1] || h->out_shape[2] != h->in_shape[1])
      CE_FAIL("%s: chunk shapes (%u,%u,%u,%u) -> (%u,%u,%u): expected (3,n,n,n) -> (F,n,n)",
              d->desc, h->in_shape[0], h->in_shape[1], h->in_shape[2], h->in_shape[3],
              h->out_shape[0], h->out_shape[1], h->out_shape[2]);
    if (h->nsamples == 0 || (uint32_t)d->o.batch % h->nsamples)
      CE_FAIL("%s: the producer's chunks hold %u samples; the batch per rank (%d) must be a "
              "multiple of that (coemu serve --batch)", d->desc, h->nsamples, d->o.batch);
    set_shapes(d, h->in_shape, h->out_shape);
    d->bin = ce_malloc_array((size_t)d->o.batch * d->in_vals, sizeof(float), "batch inputs");
    d->bout = ce_malloc_array((size_t)d->o.batch * d->out_vals, sizeof(float), "batch targets");
    if (!d->bin || !d->bout) return -1;
  } else if (memcmp(h->in_shape, d->in_shape, sizeof d->in_shape) ||
             memcmp(h->out_shape, d->out_shape, sizeof d->out_shape))
    CE_FAIL("%s: epoch %u position %llu: the chunk shapes changed", d->desc, h->epoch,
            (unsigned long long)h->position);
  return 0;
}

int train_data_shapes(train_data *d, uint32_t in_shape[4], uint32_t out_shape[3]) {
  if (!d->have_shapes) { /* stream: look at the first chunk (kept for the first batch) */
    int rc = next_chunk(d);
    if (rc < 0) return -1;
    if (rc == 0) CE_FAIL("%s: the producer ended the epoch without sending data", d->desc);
    CE_TRY(check_chunk(d));
  }
  memcpy(in_shape, d->in_shape, sizeof d->in_shape);
  memcpy(out_shape, d->out_shape, sizeof d->out_shape);
  return 0;
}

uint64_t train_data_dataset_id(const train_data *d) {
  return d->src ? serve_dataset_id(d->src) : stream_client_dataset_id(d->cli);
}

uint64_t train_data_batches_per_epoch(train_data *d) {
  if (d->src) return serve_samples_per_rank(d->src) / (uint64_t)d->o.batch;
  return stream_client_samples_per_epoch(d->cli) / (uint64_t)d->o.batch;
}

static int next_dataset(train_data *d, const float **in, const float **out) {
  release_held(d);
  stream_consumer c = {(uint16_t)d->o.rank, (uint16_t)d->o.world, d->o.raw ? 0 : 1};
  uint64_t pos = d->step * (uint64_t)d->o.batch;
  int rc = serve_chunk(d->src, &c, d->epoch, pos, &d->held);
  if (rc <= 0) return rc;
  d->holding = 1;
  *in = d->held.inputs;
  *out = d->held.targets;
  return 1;
}

static int next_stream(train_data *d, const float **in, const float **out) {
  uint32_t filled = 0;
  while (filled < (uint32_t)d->o.batch) {
    if (!d->view_valid || d->view_used == d->view.h.nsamples) {
      int rc = next_chunk(d);
      if (rc < 0) return -1;
      if (rc == 0) return 0; /* epoch over: a partial batch is dropped */
    }
    CE_TRY(check_chunk(d));
    if (d->view.h.epoch != d->epoch)
      CE_FAIL("%s: got a chunk of epoch %u while reading epoch %u", d->desc, d->view.h.epoch,
              d->epoch);
    uint32_t take = d->view.h.nsamples - d->view_used;
    if (take > (uint32_t)d->o.batch - filled) take = (uint32_t)d->o.batch - filled;
    memcpy(d->bin + (size_t)filled * d->in_vals, d->view.inputs + (size_t)d->view_used * d->in_vals,
           sizeof(float) * take * d->in_vals);
    memcpy(d->bout + (size_t)filled * d->out_vals,
           d->view.targets + (size_t)d->view_used * d->out_vals, sizeof(float) * take * d->out_vals);
    if (d->self_norm && !d->o.raw)
      for (uint32_t k = filled; k < filled + take; k++) {
        stats_norm_inputs(&d->norm, d->bin + (size_t)k * d->in_vals, d->in_vals / 3,
                          d->bin + (size_t)k * d->in_vals);
        stats_norm_targets(&d->norm, d->bout + (size_t)k * d->out_vals, d->out_vals,
                           d->bout + (size_t)k * d->out_vals);
      }
    d->view_used += take;
    filled += take;
  }
  *in = d->bin;
  *out = d->bout;
  return 1;
}

int train_data_next(train_data *d, uint32_t epoch, const float **inputs, const float **targets) {
  if (epoch != d->epoch) {
    if (epoch != d->epoch + 1)
      CE_FAIL("%s: epoch %u asked for after epoch %u", d->desc, epoch, d->epoch);
    d->epoch = epoch;
    d->step = 0;
  }
  int rc = d->src ? next_dataset(d, inputs, targets) : next_stream(d, inputs, targets);
  if (rc == 1) d->step++;
  return rc;
}
