/* trainjob.c - training jobs: the fill from the tree validated against
 * schemas/train.yaml (schema.c) and the checks that span keys. */
#include "pipeline/job/trainjob.h"

#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "pipeline/job/schema.h"
#include "pipeline/stream/stream_security.h"
#include "trainer/coemunet.h"
#include "trainer/optim.h"

#define SCHEMA_NAME "schemas/train.yaml"

static const char *const stage_key[TRAIN_STAGES] = {"pretrain", "finetune"};

static void stage_free(train_stage *s) {
  free(s->dataset);
  free(s->endpoint);
  free(s->server_key);
  free(s->client_key);
  free(s->stream_stats);
  free(s->val_dataset);
  free(s->init);
}

void train_job_free(train_job *j) {
  free(j->path);
  free(j->dir);
  free(j->text);
  free(j->name);
  free(j->out_dir);
  for (int i = 0; i < TRAIN_STAGES; i++) stage_free(&j->stage[i]);
  memset(j, 0, sizeof *j);
}

/* Reading one stage: the validated tree, the stage's key and the job. */
typedef struct {
  const char *name;  /* file name for messages */
  const yt_node *r;  /* the validated tree */
  const char *key;   /* "pretrain" | "finetune" */
  const char *dir;   /* folder relative paths resolve against */
} stage_reader;

/* "<stage>.<sub>" in the caller's buffer. */
static const char *sp(const stage_reader *s, const char *sub, char *buf, size_t len) {
  snprintf(buf, len, "%s.%s", s->key, sub);
  return buf;
}

static int64_t s_int(const stage_reader *s, const char *sub) {
  char b[128];
  return schema_int(s->r, sp(s, sub, b, sizeof b));
}
static double s_num(const stage_reader *s, const char *sub) {
  char b[128];
  return schema_num(s->r, sp(s, sub, b, sizeof b));
}
static const char *s_str(const stage_reader *s, const char *sub) {
  char b[128];
  return schema_str(s->r, sp(s, sub, b, sizeof b));
}
static const yt_node *s_at(const stage_reader *s, const char *sub) {
  char b[128];
  return schema_at(s->r, sp(s, sub, b, sizeof b));
}

/* A resolved copy of a path ("" stays ""). */
static int resolved(const char *dir, const char *p, char **out) {
  *out = *p ? schema_resolve(dir, p) : strdup("");
  if (!*out) CE_FAIL("out of memory");
  return 0;
}

/* A bound the schema's inclusive min/max cannot say: x > 0 or x < 1. */
static int check_open(const stage_reader *s, const yt_node *v, const char *path, double x,
                      int positive, const char *expected) {
  if (positive ? x > 0 : x < 1) return 0;
  CE_FAIL("%s:%d:%d: %s.%s: expected %s, got '%s'", s->name, v->line, v->col, s->key, path,
          expected, v->text);
}

static int fill_data(const stage_reader *s, train_stage *t) {
  const yt_node *data = s_at(s, "data"), *ds = yt_get(data, "dataset"),
                *st = yt_get(data, "stream");
  if (!!ds == !!st)
    CE_FAIL("%s:%d:%d: %s.data: expected exactly one of 'dataset' or 'stream', got %s", s->name,
            data->line, data->col, s->key, ds ? "both" : "neither");
  snprintf(t->split, sizeof t->split, "%s", s_str(s, "data.split"));
  if (ds) {
    t->source = TRAIN_SRC_DATASET;
    if (!*ds->text)
      CE_FAIL("%s:%d:%d: %s.data.dataset: expected a dataset directory, got ''", s->name,
              ds->line, ds->col, s->key);
    /* the stream fields stay "" and 0 */
    CE_TRY(resolved(s->dir, ds->text, &t->dataset));
    CE_TRY(resolved(s->dir, "", &t->endpoint));
    CE_TRY(resolved(s->dir, "", &t->server_key));
    CE_TRY(resolved(s->dir, "", &t->stream_stats));
    return resolved(s->dir, "", &t->client_key);
  }
  t->source = TRAIN_SRC_STREAM;
  CE_TRY(resolved(s->dir, "", &t->dataset));
  if (!(t->endpoint = strdup(s_str(s, "data.stream.endpoint")))) CE_FAIL("out of memory");
  t->credit = s_int(s, "data.stream.credit");
  t->timeout_s = s_num(s, "data.stream.timeout");
  const char *sk = s_str(s, "data.stream.server_key"), *ck = s_str(s, "data.stream.client_key");
  const yt_node *ep = s_at(s, "data.stream.endpoint");
  if (!*ep->text)
    CE_FAIL("%s:%d:%d: %s.data.stream.endpoint: expected a ZeroMQ endpoint, got ''", s->name,
            ep->line, ep->col, s->key);
  if (!*sk != !*ck) {
    const yt_node *given = s_at(s, *sk ? "data.stream.server_key" : "data.stream.client_key");
    CE_FAIL("%s:%d:%d: %s.data.stream: expected both server_key and client_key (CURVE) or "
            "neither, got only %s", s->name, given->line, given->col, s->key,
            *sk ? "server_key" : "client_key");
  }
  if (!*sk && !stream_endpoint_is_local(ep->text))
    CE_FAIL("%s:%d:%d: %s.data.stream.endpoint: expected server_key and client_key for an "
            "endpoint reachable from other machines (coemu serve requires CURVE there), got '%s'",
            s->name, ep->line, ep->col, s->key, ep->text);
  CE_TRY(resolved(s->dir, sk, &t->server_key));
  CE_TRY(resolved(s->dir, ck, &t->client_key));
  return resolved(s->dir, s_str(s, "data.stream.stats"), &t->stream_stats);
}

static int fill_validation(const stage_reader *s, train_stage *t) {
  snprintf(t->val_split, sizeof t->val_split, "%s", s_str(s, "validation.split"));
  t->val_max_samples = s_int(s, "validation.max_samples");
  t->val_batch = s_int(s, "validation.batch");
  t->validate_every = s_int(s, "validation.every");
  const yt_node *val = s_at(s, "validation"), *vd = yt_get(val, "dataset");
  if (!strcmp(t->val_split, "none")) return resolved(s->dir, "", &t->val_dataset);
  if (vd) {
    if (!*vd->text)
      CE_FAIL("%s:%d:%d: %s.validation.dataset: expected a dataset directory (or split: none), "
              "got ''", s->name, vd->line, vd->col, s->key);
    return resolved(s->dir, vd->text, &t->val_dataset);
  }
  if (t->source == TRAIN_SRC_STREAM)
    CE_FAIL("%s:%d:%d: %s.validation: expected a 'dataset' to validate on (a stream stage has "
            "no dataset to default to) or split: none, got neither", s->name, val->line,
            val->col, s->key);
  if (!(t->val_dataset = strdup(t->dataset))) CE_FAIL("out of memory");
  return 0;
}

static int fill_optimizer(const stage_reader *s, train_stage *t) {
  static const char *const kinds[] = {"adam", "adam_l2", "adamw"};
  static const int kind_ids[] = {ADAM, ADAM_L2, ADAMW};
  const char *kind = s_str(s, "optimizer.kind");
  for (int i = 0; i < 3; i++)
    if (!strcmp(kind, kinds[i])) t->optimizer = kind_ids[i];
  t->lr = s_num(s, "optimizer.lr");
  CE_TRY(check_open(s, s_at(s, "optimizer.lr"), "optimizer.lr", t->lr, 1,
                    "a number > 0 and <= 10"));
  t->weight_decay = s_num(s, "optimizer.weight_decay");
  const yt_node *betas = s_at(s, "optimizer.betas");
  double b[2];
  for (int i = 0; i < 2; i++) {
    char p[32];
    snprintf(p, sizeof p, "optimizer.betas[%d]", i);
    if (schema_as_num(betas->items[i], &b[i]) < 0) CE_BUG("trainjob: %s not validated", p);
    CE_TRY(check_open(s, betas->items[i], p, b[i], 0, "a number in [0, 1)"));
  }
  t->beta1 = b[0];
  t->beta2 = b[1];
  t->eps = s_num(s, "optimizer.eps");
  CE_TRY(check_open(s, s_at(s, "optimizer.eps"), "optimizer.eps", t->eps, 1,
                    "a number > 0 and <= 1"));
  t->lr_step = s_int(s, "schedule.step_size");
  t->lr_gamma = s_num(s, "schedule.gamma");
  CE_TRY(check_open(s, s_at(s, "schedule.gamma"), "schedule.gamma", t->lr_gamma, 1,
                    "a number > 0 and <= 1"));
  return 0;
}

/* The finetune-only keys (the schema allows them under finetune only). */
static int fill_transfer(const stage_reader *s, const train_job *j, train_stage *t) {
  const yt_node *tr = s_at(s, "transfer"), *in = s_at(s, "init");
  int has_pretrain = j->stage[TRAIN_STAGE_PRETRAIN].enabled;
  t->transfer = has_pretrain;
  if (tr && schema_as_bool(tr, &t->transfer) < 0) CE_BUG("trainjob: transfer not validated");
  CE_TRY(resolved(s->dir, in->text, &t->init));
  if (t->transfer && !has_pretrain && !*t->init)
    CE_FAIL("%s:%d:%d: finetune.transfer: expected a pretrain stage or finetune.init (a "
            "checkpoint) to transfer from, got true with neither", s->name, tr->line, tr->col);
  if (!t->transfer && *t->init)
    CE_FAIL("%s:%d:%d: finetune.init: expected transfer: true to take weights from a "
            "checkpoint, got '%s' with transfer: false", s->name, in->line, in->col, in->text);
  return 0;
}

static int fill_stage(const stage_reader *s, const train_job *j, train_stage *t) {
  t->enabled = 1;
  CE_TRY(fill_data(s, t));
  CE_TRY(fill_validation(s, t));
  t->epochs = s_int(s, "epochs");
  t->batch = s_int(s, "batch");
  CE_TRY(fill_optimizer(s, t));
  t->checkpoint_every = s_int(s, "checkpoint_every");
  if (!strcmp(s->key, "finetune")) return fill_transfer(s, j, t);
  return resolved(s->dir, "", &t->init);
}

static int fill(const char *name, const yt_node *r, train_job *j) {
  if (!(j->name = strdup(schema_str(r, "name"))) ||
      !(j->out_dir = strdup(schema_str(r, "output.directory"))))
    CE_FAIL("out of memory");
  j->seed = (uint64_t)schema_int(r, "seed");
  j->threads = (int)schema_int(r, "threads");

  j->shortcut = !strcmp(schema_str(r, "model.shortcut"), "input") ? COEMUNET_SHORTCUT_INPUT
                                                                  : COEMUNET_SHORTCUT_REFERENCE;
  j->stem = (int)schema_int(r, "model.stem");
  const yt_node *enc = schema_at(r, "model.encoder");
  for (int i = 0; i < 3; i++) {
    int64_t w;
    if (schema_as_int(enc->items[i], &w) < 0) CE_BUG("trainjob: model.encoder not validated");
    j->enc[i] = (int)w;
  }
  j->latent = (int)schema_int(r, "model.latent");
  j->dec = (int)schema_int(r, "model.decoder");
  if (j->dec % 8) {
    const yt_node *d = schema_at(r, "model.decoder");
    CE_FAIL("%s:%d:%d: model.decoder: expected a multiple of 8, got '%s'", name, d->line, d->col,
            d->text);
  }
  j->sync_batchnorm = schema_bool(r, "model.sync_batchnorm");

  if (!yt_get(r, "pretrain") && !yt_get(r, "finetune")) {
    if (r->line < 1) /* an empty document has no position */
      CE_FAIL("%s: the job is empty: expected at least one of 'pretrain' or 'finetune'", name);
    CE_FAIL("%s:%d:%d: (top level): expected at least one of 'pretrain' or 'finetune', got "
            "neither", name, r->line, r->col);
  }
  for (int i = 0; i < TRAIN_STAGES; i++) {
    if (!yt_get(r, stage_key[i])) continue;
    stage_reader s = {name, r, stage_key[i], j->dir};
    CE_TRY(fill_stage(&s, j, &j->stage[i]));
  }
  return 0;
}

int train_job_parse(const char *name, const char *text, size_t len, const char *dir,
                    train_job *j) {
  memset(j, 0, sizeof *j);
  CE_TRY(schema_keep_source(name, text, len, dir, &j->path, &j->dir, &j->text));
  j->text_len = len;
  yt_node *doc = schema_load(name, text, len, SCHEMA_NAME, train_schema_text);
  int rc = doc ? fill(name, doc, j) : -1;
  yt_free(doc);
  if (rc < 0) train_job_free(j);
  return rc;
}

static int parse_any(const char *name, const char *text, size_t len, const char *dir, void *j) {
  return train_job_parse(name, text, len, dir, j);
}

int train_job_load(const char *path, train_job *j) { return schema_load_file(path, parse_any, j); }

int train_job_schema_markdown(FILE *out) { return schema_markdown(out, SCHEMA_NAME, train_schema_text); }
