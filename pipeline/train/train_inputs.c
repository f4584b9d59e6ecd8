/* train_inputs.c - the inputs of a training job, checked before the run
 * (train_inputs.h). */
#include "pipeline/train/train_inputs.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/error.h"
#include "pipeline/dataset/shard_reader.h"
#include "pipeline/serve/serve.h"
#include "pipeline/train/train_data.h"
#include "stats/statsfile.h"
#include "trainer/checkpoint.h"
#include "trainer/coemunet.h"

static const char *STAGE_KEY[TRAIN_STAGES] = {"pretrain", "finetune"};

/* A key of the job: "FILE:LINE:COL: finetune.data.dataset" (no position
 * where the job does not give the key). */
typedef struct {
  char text[600];
} where;

static where where_of(const train_job *j, int stage, const char *sub, train_pos at) {
  where w;
  if (at.line > 0)
    snprintf(w.text, sizeof w.text, "%s:%d:%d: %s.%s", j->path, at.line, at.col, STAGE_KEY[stage],
             sub);
  else
    snprintf(w.text, sizeof w.text, "%s: %s.%s", j->path, STAGE_KEY[stage], sub);
  return w;
}

static int fail_at(const where *w, const char *fmt, ...) CE_PRINTF(2, 3);
static int fail_at(const where *w, const char *fmt, ...) {
  char msg[1600];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return ce_err("%s: %s", w->text, msg);
}

/* DIR is a finished dataset directory, as far as its files tell: what it is
 * instead is said as every reader says it (dataset_require_finished: no such
 * folder, a job not finished and its shards so far, not a coemu dataset). */
static int dataset_dir(const where *w, const char *dir) {
  if (dataset_require_finished(dir, TRAIN_UNFINISHED_HINT) < 0)
    return ce_err_prefix("%s", w->text);
  return 0;
}

static void shape_text(const uint32_t in[4], const uint32_t out[3], char *buf, size_t len) {
  snprintf(buf, len, "%u^3 cubes, %u channel%s", in[1], out[0], out[0] == 1 ? "" : "s");
}

/* The job's model on data of these shapes. */
static int model_fits(const where *w, const train_job *j, int stage, const char *dir,
                      const uint32_t in[4], const uint32_t out[3]) {
  if (stage == TRAIN_STAGE_PRETRAIN && out[0] != 1)
    return fail_at(w, "%s has %u channels; pretraining is for the single-channel model (a "
                      "dataset of 1 channel)", dir, out[0]);
  coemunet_config c = {(int)out[0], (int)in[1], j->stem, {j->enc[0], j->enc[1], j->enc[2]},
                       j->latent, j->dec, j->shortcut};
  if (coemunet_check_config(&c) < 0)
    return fail_at(w, "%s (%u^3 cubes, %u channels) does not fit the model: %s", dir, in[1],
                   out[0], ce_err_msg());
  return 0;
}

typedef struct {
  int have;
  uint32_t in[4], out[3];
  const char *what; /* the key and path the shapes came from */
  char what_buf[700];
} shapes;

/* data.dataset: opened as the run opens it (rank 0's share; every rank's is
 * as large). */
static int check_train_data(const train_job *j, int id, const train_inputs_opts *o, shapes *sh) {
  const train_stage *st = &j->stage[id];
  where w = where_of(j, id, "data.dataset", st->dataset_at);
  CE_TRY(dataset_dir(&w, st->dataset));
  train_data_opts dop = {st, j->seed, 0, o->world, (int)(st->batch / o->world), 0, 0, 1};
  train_data *d;
  if (train_data_open(&dop, &d) < 0) return ce_err_prefix("%s", w.text);
  int rc = train_data_shapes(d, sh->in, sh->out);
  if (rc == 0 && o->report) {
    char a[96];
    shape_text(sh->in, sh->out, a, sizeof a);
    fprintf(o->report, "  %s.data.dataset: %s; %s\n", STAGE_KEY[id], train_data_describe(d), a);
  }
  train_data_close(d);
  if (rc < 0) return ce_err_prefix("%s", w.text);
  sh->have = 1;
  snprintf(sh->what_buf, sizeof sh->what_buf, "%s.data.dataset %s", STAGE_KEY[id], st->dataset);
  sh->what = sh->what_buf;
  return model_fits(&w, j, id, st->dataset, sh->in, sh->out);
}

/* validation.dataset: opened as the run opens it. */
static int check_validation(const train_job *j, int id, const train_inputs_opts *o, shapes *sh) {
  const train_stage *st = &j->stage[id];
  int given = st->source == TRAIN_SRC_STREAM || strcmp(st->val_dataset, st->dataset) != 0;
  where w = where_of(j, id, given ? "validation.dataset" : "validation", st->val_at);
  if (!given) /* data.dataset, already checked: its split */
    snprintf(w.text + strlen(w.text), sizeof w.text - strlen(w.text), " (on data.dataset)");
  else
    CE_TRY(dataset_dir(&w, st->val_dataset));
  serve_opts vo = {.dataset_dir = st->val_dataset, .split = st->val_split, .seed = 0, .world = 1,
                   .batch = (int)st->val_batch, .drop_last = 0, .prefetch = 1, .read_threads = 1,
                   .unfinished_hint = TRAIN_UNFINISHED_HINT};
  serve_source *src;
  if (serve_open(&vo, &src) < 0) return ce_err_prefix("%s", w.text);
  uint32_t in[4], out[3];
  serve_shapes(src, in, out);
  int norm = serve_norm(src) != NULL;
  unsigned long long n = (unsigned long long)serve_split_size(src);
  serve_close(src);
  if (!norm)
    return fail_at(&w, "%s/dataset.h5 has no /stats group: validation needs the normalisation "
                       "(run `coemu stats %s`)", st->val_dataset, st->val_dataset);
  char a[96], b[96];
  shape_text(in, out, a, sizeof a);
  if (sh->have && (in[1] != sh->in[1] || out[0] != sh->out[0])) {
    shape_text(sh->in, sh->out, b, sizeof b);
    return fail_at(&w, "%s holds %s, the training data (%s) %s: the model is built for one shape",
                   st->val_dataset, a, sh->what, b);
  }
  if (!sh->have) CE_TRY(model_fits(&w, j, id, st->val_dataset, in, out));
  if (o->report)
    fprintf(o->report, "  %s.validation: dataset %s (split %s, %llu samples, %s)\n", STAGE_KEY[id],
            st->val_dataset, st->val_split, n, a);
  return 0;
}

/* data.stream.stats: the /stats a raw stream is normalised with. */
static int check_stream_stats(const train_job *j, int id, const train_inputs_opts *o) {
  const train_stage *st = &j->stage[id];
  where w = where_of(j, id, "data.stream.stats", st->stats_at);
  CE_TRY(dataset_dir(&w, st->stream_stats));
  char h5[4200];
  stats_norm norm;
  snprintf(h5, sizeof h5, "%s/dataset.h5", st->stream_stats);
  if (stats_file_read_norm(h5, &norm) < 0) return ce_err_prefix("%s", w.text);
  if (o->report)
    fprintf(o->report, "  %s.data.stream.stats: %s (/stats read)\n", STAGE_KEY[id],
            st->stream_stats);
  return 0;
}

/* init: the checkpoint the encoder is transferred from. */
static int check_init(const train_job *j, const train_inputs_opts *o, const shapes *sh) {
  const train_stage *st = &j->stage[TRAIN_STAGE_FINETUNE];
  where w = where_of(j, TRAIN_STAGE_FINETUNE, "init", st->init_at);
  coemunet_config c;
  if (checkpoint_read_config(st->init, &c, NULL) < 0) return ce_err_prefix("%s", w.text);
  static const char *field[] = {"grid", "model.stem", "model.encoder[0]", "model.encoder[1]",
                                "model.encoder[2]", "model.latent", "model.shortcut"};
  const int have[] = {c.grid, c.stem, c.enc[0], c.enc[1], c.enc[2], c.latent, c.shortcut};
  const int want[] = {sh->have ? (int)sh->in[1] : c.grid, j->stem, j->enc[0], j->enc[1],
                      j->enc[2], j->latent, j->shortcut};
  for (int i = 0; i < 7; i++)
    if (have[i] != want[i])
      return fail_at(&w, "%s: its %s is %d, the job's %s %d: the encoder cannot be transferred",
                     st->init, field[i], have[i], i ? "model has" : "data have", want[i]);
  if (o->report)
    fprintf(o->report, "  finetune.init: %s (a %d-channel model of grid %d)\n", st->init, c.nfreq,
            c.grid);
  return 0;
}

int train_inputs_check(const train_job *j, const train_inputs_opts *o) {
  shapes sh[TRAIN_STAGES];
  memset(sh, 0, sizeof sh);
  for (int id = 0; id < TRAIN_STAGES; id++) {
    const train_stage *st = &j->stage[id];
    if (!st->enabled || o->skip[id]) continue;
    if (o->world > 0 && st->batch % o->world)
      return ce_err("%s: %s.batch: batch %lld is not divisible by the %d ranks (each rank takes "
                    "an equal share of the global batch)", j->path, STAGE_KEY[id],
                    (long long)st->batch, o->world);
    if (st->source == TRAIN_SRC_DATASET)
      CE_TRY(check_train_data(j, id, o, &sh[id]));
    else if (*st->stream_stats)
      CE_TRY(check_stream_stats(j, id, o));
    if (*st->val_dataset) CE_TRY(check_validation(j, id, o, &sh[id]));
  }
  const train_stage *pre = &j->stage[TRAIN_STAGE_PRETRAIN], *fin = &j->stage[TRAIN_STAGE_FINETUNE];
  if (fin->enabled && !o->skip[TRAIN_STAGE_FINETUNE] && fin->transfer) {
    const shapes *a = &sh[TRAIN_STAGE_PRETRAIN], *b = &sh[TRAIN_STAGE_FINETUNE];
    if (*fin->init) CE_TRY(check_init(j, o, b));
    else if (pre->enabled && a->have && b->have && a->in[1] != b->in[1]) {
      where w = where_of(j, TRAIN_STAGE_FINETUNE,
                         fin->source == TRAIN_SRC_DATASET ? "data.dataset" : "validation.dataset",
                         fin->source == TRAIN_SRC_DATASET ? fin->dataset_at : fin->val_at);
      return fail_at(&w, "%s holds %u^3 cubes, the pretrain stage's data (%s) %u^3: the "
                         "encoder transferred from the pretrained model needs one grid",
                     fin->source == TRAIN_SRC_DATASET ? fin->dataset : fin->val_dataset,
                     b->in[1], a->what, a->in[1]);
    }
  }
  return 0;
}
