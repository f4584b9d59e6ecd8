/* trainjob.c - training jobs: the fill from the tree validated against
 * schemas/train.yaml (schema.c) and the checks that span keys. */
#include "pipeline/job/trainjob.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "pipeline/job/job.h"
#include "pipeline/job/schema.h"
#include "pipeline/stream/stream_security.h"
#include "trainer/coemunet.h"
#include "trainer/optim.h"
#include "trainer/precision.h"

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
  free(j->device);
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

static train_pos pos_of(const yt_node *v) {
  train_pos p = {v ? v->line : 0, v ? v->col : 0};
  return p;
}

/* A bound the schema's inclusive min/max cannot say: x > 0 or x < 1. */
static int check_open(const stage_reader *s, const yt_node *v, const char *path, double x,
                      int positive, const char *expected) {
  if (positive ? x > 0 : x < 1) return 0;
  CE_FAIL("%s:%d:%d: %s.%s: expected %s, got '%s'", s->name, v->line, v->col, s->key, path,
          expected, v->text);
}

/* data.order, data.order_shards, data.order_buffer (values checked by the
 * schema): K and B go with order shards of a dataset. */
static int fill_order(const stage_reader *s, train_stage *t, int stream) {
  const yt_node *o = s_at(s, "data.order"), *k = s_at(s, "data.order_shards"),
                *b = s_at(s, "data.order_buffer");
  t->order = !o ? -1 : !strcmp(o->text, "shards") ? 1 : 0;
  t->order_shards = k ? s_int(s, "data.order_shards") : 0;
  t->order_buffer = b ? s_int(s, "data.order_buffer") : 0;
  const yt_node *kb = k ? k : b;
  if (kb && (stream || t->order != 1))
    CE_FAIL("%s:%d:%d: %s.data.%s: expected only with order: shards and a dataset (a stream's "
            "order is the producer's: coemu serve --order-shards/--order-buffer), got it with %s",
            s->name, kb->line, kb->col, s->key, k ? "order_shards" : "order_buffer",
            stream ? "a stream" : t->order == 0 ? "order: exact" : "no order");
  return 0;
}

static int fill_data(const stage_reader *s, train_stage *t) {
  const yt_node *data = s_at(s, "data"), *ds = yt_get(data, "dataset"),
                *st = yt_get(data, "stream");
  if (!!ds == !!st)
    CE_FAIL("%s:%d:%d: %s.data: expected exactly one of 'dataset' or 'stream', got %s", s->name,
            data->line, data->col, s->key, ds ? "both" : "neither");
  snprintf(t->split, sizeof t->split, "%s", s_str(s, "data.split"));
  CE_TRY(fill_order(s, t, !!st));
  if (ds) {
    t->source = TRAIN_SRC_DATASET;
    if (!*ds->text)
      CE_FAIL("%s:%d:%d: %s.data.dataset: expected a dataset directory, got ''", s->name,
              ds->line, ds->col, s->key);
    /* the stream fields stay "" and 0 */
    t->dataset_at = pos_of(ds);
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
  if (stream_endpoint_check(ep->text) < 0)
    return ce_err_prefix("%s:%d:%d: %s.data.stream.endpoint", s->name, ep->line, ep->col, s->key);
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
  const char *stats = s_str(s, "data.stream.stats");
  if (*stats) t->stats_at = pos_of(s_at(s, "data.stream.stats"));
  return resolved(s->dir, stats, &t->stream_stats);
}

static int fill_validation(const stage_reader *s, train_stage *t) {
  snprintf(t->val_split, sizeof t->val_split, "%s", s_str(s, "validation.split"));
  t->val_max_samples = s_int(s, "validation.max_samples");
  t->val_batch = s_int(s, "validation.batch");
  t->validate_every = s_int(s, "validation.every");
  const yt_node *val = s_at(s, "validation"), *vd = yt_get(val, "dataset");
  t->val_at = pos_of(vd ? vd : val);
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
  if (*t->init) t->init_at = pos_of(in);
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
  if (!(j->name = strdup(schema_str(r, "name"))) || !(j->device = strdup(schema_str(r, "device"))) ||
      !(j->out_dir = strdup(schema_str(r, "output.directory"))))
    CE_FAIL("out of memory");
  j->seed = (uint64_t)schema_int(r, "seed");
  if ((j->precision = nn_precision_parse(schema_str(r, "precision"))) < 0)
    CE_BUG("trainjob: precision not validated");
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
  /* a generate job given to coemu train is told so (schema.h) */
  static const schema_other gen = {job_schema_text, "a generate job", "coemu generate"};
  yt_node *doc = schema_load(name, text, len, SCHEMA_NAME, train_schema_text, &gen);
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

/* ---- differences between two jobs (coemu train --extend) ------------------ */

typedef struct {
  train_job_change *ch;
  int max, n;
} diff_acc;

static void diff_add(diff_acc *d, int stage, const char *key, int ext, const char *a,
                     const char *b) {
  if (d->ch && d->n < d->max) {
    train_job_change *c = &d->ch[d->n];
    if (stage >= 0)
      snprintf(c->key, sizeof c->key, "%s.%s", stage_key[stage], key);
    else
      snprintf(c->key, sizeof c->key, "%s", key);
    snprintf(c->before, sizeof c->before, "%s", a);
    snprintf(c->after, sizeof c->after, "%s", b);
    c->stage = stage;
    c->extendable = ext;
  }
  d->n++;
}

static void diff_str(diff_acc *d, int stage, const char *key, int ext, const char *a,
                     const char *b) {
  a = a ? a : "";
  b = b ? b : "";
  if (strcmp(a, b)) diff_add(d, stage, key, ext, *a ? a : "''", *b ? b : "''");
}

/* Paths by what they name: the same file or directory by two spellings
 * (a/../b, a symlink, a relative and an absolute path) is no change. */
static void diff_path(diff_acc *d, int stage, const char *key, int ext, const char *a,
                      const char *b) {
  char ra[PATH_MAX], rb[PATH_MAX];
  if (a && b && *a && *b && strcmp(a, b) && realpath(a, ra) && realpath(b, rb) && !strcmp(ra, rb))
    return;
  diff_str(d, stage, key, ext, a, b);
}

static void diff_int(diff_acc *d, int stage, const char *key, int ext, int64_t a, int64_t b) {
  char x[32], y[32];
  snprintf(x, sizeof x, "%lld", (long long)a);
  snprintf(y, sizeof y, "%lld", (long long)b);
  if (a != b) diff_add(d, stage, key, ext, x, y);
}

/* The shortest %g text that reads back as v. */
static void num_text(double v, char *buf, size_t len) {
  for (int p = 1; p <= 17; p++) {
    snprintf(buf, len, "%.*g", p, v);
    if (strtod(buf, NULL) == v) return;
  }
}

static void diff_num(diff_acc *d, int stage, const char *key, int ext, double a, double b) {
  char x[40], y[40];
  num_text(a, x, sizeof x);
  num_text(b, y, sizeof y);
  if (a != b) diff_add(d, stage, key, ext, x, y);
}

static void diff_bool(diff_acc *d, int stage, const char *key, int ext, int a, int b) {
  if (!a != !b) diff_add(d, stage, key, ext, a ? "true" : "false", b ? "true" : "false");
}

static const char *optimizer_name(int k) {
  return k == ADAMW ? "adamw" : k == ADAM_L2 ? "adam_l2" : "adam";
}

static void diff_stage(diff_acc *d, int i, const train_stage *a, const train_stage *b) {
  /* what the samples are, and how they are normalised: not extendable */
  diff_path(d, i, "data.dataset", 0, a->dataset, b->dataset);
  diff_str(d, i, "data.stream.endpoint", 0, a->endpoint, b->endpoint);
  diff_int(d, i, "data.stream.credit", 1, a->credit, b->credit);
  diff_num(d, i, "data.stream.timeout", 1, a->timeout_s, b->timeout_s);
  diff_path(d, i, "data.stream.server_key", 0, a->server_key, b->server_key);
  diff_path(d, i, "data.stream.client_key", 0, a->client_key, b->client_key);
  diff_path(d, i, "data.stream.stats", 0, a->stream_stats, b->stream_stats);
  diff_str(d, i, "data.split", 0, a->split, b->split);
  if (a->order != b->order)
    diff_add(d, i, "data.order", 0, a->order < 0 ? "(not given)" : a->order ? "shards" : "exact",
             b->order < 0 ? "(not given)" : b->order ? "shards" : "exact");
  diff_int(d, i, "data.order_shards", 0, a->order_shards, b->order_shards);
  diff_int(d, i, "data.order_buffer", 0, a->order_buffer, b->order_buffer);
  /* validation: the figures best.ckpt is chosen by stay comparable; only how
     often they are taken may change */
  diff_path(d, i, "validation.dataset", 0, a->val_dataset, b->val_dataset);
  diff_str(d, i, "validation.split", 0, a->val_split, b->val_split);
  diff_int(d, i, "validation.max_samples", 0, a->val_max_samples, b->val_max_samples);
  diff_int(d, i, "validation.batch", 0, a->val_batch, b->val_batch);
  diff_int(d, i, "validation.every", 1, a->validate_every, b->validate_every);
  diff_int(d, i, "epochs", 1, a->epochs, b->epochs);
  diff_int(d, i, "batch", 0, a->batch, b->batch);
  if (a->optimizer != b->optimizer)
    diff_add(d, i, "optimizer.kind", 0, optimizer_name(a->optimizer), optimizer_name(b->optimizer));
  diff_num(d, i, "optimizer.lr", 1, a->lr, b->lr);
  diff_num(d, i, "optimizer.weight_decay", 0, a->weight_decay, b->weight_decay);
  if (a->beta1 != b->beta1 || a->beta2 != b->beta2) {
    char x[4][40], p[96], q[96];
    num_text(a->beta1, x[0], sizeof x[0]);
    num_text(a->beta2, x[1], sizeof x[1]);
    num_text(b->beta1, x[2], sizeof x[2]);
    num_text(b->beta2, x[3], sizeof x[3]);
    snprintf(p, sizeof p, "[%s, %s]", x[0], x[1]);
    snprintf(q, sizeof q, "[%s, %s]", x[2], x[3]);
    diff_add(d, i, "optimizer.betas", 0, p, q);
  }
  diff_num(d, i, "optimizer.eps", 0, a->eps, b->eps);
  diff_int(d, i, "schedule.step_size", 1, a->lr_step, b->lr_step);
  diff_num(d, i, "schedule.gamma", 1, a->lr_gamma, b->lr_gamma);
  diff_int(d, i, "checkpoint_every", 1, a->checkpoint_every, b->checkpoint_every);
  if (i == TRAIN_STAGE_FINETUNE) {
    diff_bool(d, i, "transfer", 0, a->transfer, b->transfer);
    diff_path(d, i, "init", 0, a->init, b->init);
  }
}

int train_job_diff(const train_job *a, const train_job *b, train_job_change *ch, int max) {
  diff_acc d = {ch, max, 0};
  diff_str(&d, -1, "name", 1, a->name, b->name);
  diff_int(&d, -1, "seed", 0, (int64_t)a->seed, (int64_t)b->seed);
  diff_int(&d, -1, "threads", 1, a->threads, b->threads);
  diff_str(&d, -1, "device", 1, a->device, b->device); /* checkpoints are backend-independent */
  diff_str(&d, -1, "precision", 1, nn_precision_name(a->precision), nn_precision_name(b->precision)); /* and float32 */
  diff_str(&d, -1, "output.directory", 1, a->out_dir, b->out_dir);
  if (a->shortcut != b->shortcut)
    diff_add(&d, -1, "model.shortcut", 0,
             a->shortcut == COEMUNET_SHORTCUT_INPUT ? "input" : "reference",
             b->shortcut == COEMUNET_SHORTCUT_INPUT ? "input" : "reference");
  diff_int(&d, -1, "model.stem", 0, a->stem, b->stem);
  if (memcmp(a->enc, b->enc, sizeof a->enc)) {
    char x[64], y[64];
    snprintf(x, sizeof x, "[%d, %d, %d]", a->enc[0], a->enc[1], a->enc[2]);
    snprintf(y, sizeof y, "[%d, %d, %d]", b->enc[0], b->enc[1], b->enc[2]);
    diff_add(&d, -1, "model.encoder", 0, x, y);
  }
  diff_int(&d, -1, "model.latent", 0, a->latent, b->latent);
  diff_int(&d, -1, "model.decoder", 0, a->dec, b->dec);
  diff_bool(&d, -1, "model.sync_batchnorm", 0, a->sync_batchnorm, b->sync_batchnorm);
  for (int i = 0; i < TRAIN_STAGES; i++) {
    const train_stage *x = &a->stage[i], *y = &b->stage[i];
    if (x->enabled != y->enabled) {
      diff_add(&d, -1, stage_key[i], 0, x->enabled ? "present" : "absent",
               y->enabled ? "present" : "absent");
      continue;
    }
    if (x->enabled) diff_stage(&d, i, x, y);
  }
  return d.n;
}
