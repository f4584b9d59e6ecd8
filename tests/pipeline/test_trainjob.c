/* test_trainjob.c - training jobs against schemas/train.yaml: defaults, the
 * checks that span keys (each with its position), unknown keys, wrong types,
 * ranges, path resolution, hostile input, the shipped jobs and the generated
 * key table of docs/training-jobs.md.
 *   test_trainjob               run the tests
 *   test_trainjob --schema-doc  print the key table (to regenerate the docs)
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "common/fsutil.h"
#include "pipeline/job/schema.h"
#include "pipeline/job/trainjob.h"
#include "trainer/coemunet.h"
#include "trainer/optim.h"

/* A minimal job: one finetune stage on a dataset. */
static const char *base =
    "finetune:\n"
    "  data: {dataset: ds}\n"
    "  epochs: 2\n";

static int parse(const char *text, train_job *j) {
  return train_job_parse("t.yaml", text, strlen(text), "d", j);
}

/* base + extra must fail with a message containing msg (and leave *j empty). */
static void check_err(const char *extra, const char *msg) {
  char text[2048];
  snprintf(text, sizeof text, "%s%s", base, extra);
  train_job j;
  CHECK_ERR(parse(text, &j), msg);
  CHECK(!j.path && !j.stage[1].dataset);
}

static void check_text_err(const char *text, const char *msg) {
  train_job j;
  CHECK_ERR(parse(text, &j), msg);
}

static void test_defaults(void) {
  train_job j;
  CHECK_OK(parse(base, &j));
  CHECK(!strcmp(j.path, "t.yaml") && !strcmp(j.dir, "d") && j.text_len == strlen(base));
  CHECK(!strcmp(j.text, base));
  CHECK(!strcmp(j.name, "train") && !strcmp(j.out_dir, "train") && j.seed == 1234 && j.threads == 0);
  CHECK(!strcmp(j.device, "cpu") && j.precision == NN_FLOAT32);
  CHECK(j.shortcut == COEMUNET_SHORTCUT_REFERENCE && j.stem == 4);
  CHECK(j.enc[0] == 8 && j.enc[1] == 16 && j.enc[2] == 32 && j.latent == 4096 && j.dec == 64);
  CHECK(j.sync_batchnorm == 1);
  CHECK(!j.stage[TRAIN_STAGE_PRETRAIN].enabled && !j.stage[TRAIN_STAGE_PRETRAIN].dataset);
  const train_stage *s = &j.stage[TRAIN_STAGE_FINETUNE];
  CHECK(s->enabled && s->source == TRAIN_SRC_DATASET && !strcmp(s->dataset, "d/ds"));
  CHECK(!strcmp(s->split, "train") && !strcmp(s->endpoint, "") && !strcmp(s->server_key, ""));
  CHECK(!strcmp(s->client_key, ""));
  CHECK(!strcmp(s->val_dataset, "d/ds") && !strcmp(s->val_split, "validation"));
  CHECK(s->val_max_samples == 0 && s->val_batch == 16 && s->validate_every == 1);
  CHECK(s->epochs == 2 && s->batch == 16 && s->optimizer == ADAM);
  CHECK(s->lr == 4e-4 && s->weight_decay == 0 && s->beta1 == 0.9 && s->beta2 == 0.999);
  CHECK(s->eps == 1e-8 && s->lr_step == 0 && s->lr_gamma == 0.1 && s->checkpoint_every == 0);
  CHECK(s->transfer == 0 && !strcmp(s->init, ""));
  train_job_free(&j);
  CHECK(!j.path && !j.name && !j.stage[1].enabled);
}

static void test_full_job(void) {
  const char *text =
      "name: full\n"
      "seed: 7\n"
      "threads: 3\n"
      "device: cuda\n"
      "precision: bf16\n"
      "output: {directory: out/run}\n"
      "model: {shortcut: input, stem: 2, encoder: [3, 5, 7], latent: 100, decoder: 16, sync_batchnorm: false}\n"
      "pretrain:\n"
      "  data: {dataset: /abs/pre, split: all}\n"
      "  validation: {split: test, max_samples: 50, batch: 4, every: 5}\n"
      "  epochs: 1000\n"
      "  batch: 512\n"
      "  optimizer: {kind: adamw, lr: 4e-3, weight_decay: 0.01, betas: [0.5, 0.9], eps: 1e-6}\n"
      "  schedule: {step_size: 200, gamma: 0.5}\n"
      "  checkpoint_every: 100\n"
      "finetune:\n"
      "  data:\n"
      "    stream: {endpoint: 'tcp://10.1.2.3:5555', credit: 8, timeout: 2.5, server_key: ././keys/p.key, client_key: /k/c.key_secret}\n"
      "  validation: {dataset: ../val}\n"
      "  epochs: 100\n"
      "  batch: 2048\n"
      "  optimizer: {kind: adam_l2, lr: 1e-4}\n";
  train_job j;
  CHECK_OK(parse(text, &j));
  CHECK(!strcmp(j.name, "full") && !strcmp(j.out_dir, "out/run") && j.seed == 7 && j.threads == 3);
  CHECK(!strcmp(j.device, "cuda") && j.precision == NN_BF16);
  CHECK(j.shortcut == COEMUNET_SHORTCUT_INPUT && j.stem == 2 && j.enc[0] == 3 && j.enc[1] == 5);
  CHECK(j.enc[2] == 7 && j.latent == 100 && j.dec == 16 && j.sync_batchnorm == 0);
  const train_stage *p = &j.stage[TRAIN_STAGE_PRETRAIN], *f = &j.stage[TRAIN_STAGE_FINETUNE];
  CHECK(p->enabled && p->source == TRAIN_SRC_DATASET && !strcmp(p->dataset, "/abs/pre"));
  CHECK(!strcmp(p->split, "all") && !strcmp(p->val_dataset, "/abs/pre") && !strcmp(p->val_split, "test"));
  CHECK(p->val_max_samples == 50 && p->val_batch == 4 && p->validate_every == 5);
  CHECK(p->epochs == 1000 && p->batch == 512 && p->optimizer == ADAMW && p->lr == 4e-3);
  CHECK(p->weight_decay == 0.01 && p->beta1 == 0.5 && p->beta2 == 0.9 && p->eps == 1e-6);
  CHECK(p->lr_step == 200 && p->lr_gamma == 0.5 && p->checkpoint_every == 100);
  CHECK(p->transfer == 0 && !strcmp(p->init, ""));
  CHECK(f->enabled && f->source == TRAIN_SRC_STREAM && !strcmp(f->dataset, ""));
  CHECK(!strcmp(f->endpoint, "tcp://10.1.2.3:5555") && f->credit == 8 && f->timeout_s == 2.5);
  /* ././keys/p.key against d: d/keys/p.key (schema_resolve drops "./") */
  CHECK(!strcmp(f->server_key, "d/keys/p.key") && !strcmp(f->client_key, "/k/c.key_secret"));
  CHECK(!strcmp(f->val_dataset, "d/../val") && !strcmp(f->val_split, "validation"));
  CHECK(f->epochs == 100 && f->batch == 2048 && f->optimizer == ADAM_L2 && f->lr == 1e-4);
  /* transfer defaults to true when the job has a pretrain stage */
  CHECK(f->transfer == 1 && !strcmp(f->init, ""));
  train_job_free(&j);
}

static void test_stream_defaults_and_paths(void) {
  const char *text =
      "finetune:\n"
      "  data:\n"
      "    stream: {endpoint: 'ipc:///tmp/coemu'}\n"
      "  validation: {split: none}\n"
      "  epochs: 1\n"
      "  transfer: true\n"
      "  init: ck/pre.ckpt\n";
  train_job j;
  CHECK_OK(parse(text, &j));
  const train_stage *f = &j.stage[TRAIN_STAGE_FINETUNE];
  CHECK(f->source == TRAIN_SRC_STREAM && f->credit == 4 && f->timeout_s == 30);
  CHECK(!strcmp(f->server_key, "") && !strcmp(f->client_key, ""));
  /* validation split none: no validation dataset */
  CHECK(!strcmp(f->val_split, "none") && !strcmp(f->val_dataset, ""));
  CHECK(f->transfer == 1 && !strcmp(f->init, "d/ck/pre.ckpt"));
  train_job_free(&j);
  /* an empty folder leaves relative paths as they are; split none drops a
   * given validation dataset too */
  const char *t2 = "finetune: {data: {dataset: ds}, validation: {dataset: v, split: none}, epochs: 1}\n";
  CHECK_OK(train_job_parse("t.yaml", t2, strlen(t2), NULL, &j));
  CHECK(!strcmp(j.dir, "") && !strcmp(j.stage[1].dataset, "ds") && !strcmp(j.stage[1].val_dataset, ""));
  train_job_free(&j);
  /* transfer: false explicitly with a pretrain stage */
  const char *t3 = "pretrain: {data: {dataset: a}, epochs: 1}\nfinetune: {data: {dataset: b}, epochs: 1, transfer: false}\n";
  CHECK_OK(parse(t3, &j));
  CHECK(j.stage[0].enabled && j.stage[1].enabled && j.stage[1].transfer == 0);
  train_job_free(&j);
  /* only a pretrain stage */
  const char *t4 = "pretrain: {data: {dataset: a}, validation: {dataset: /v}, epochs: 3}\n";
  CHECK_OK(parse(t4, &j));
  CHECK(j.stage[0].enabled && !j.stage[1].enabled && !strcmp(j.stage[0].val_dataset, "/v"));
  train_job_free(&j);
}

/* data.order: not given (-1: exact for a dataset, the producer's for a
 * stream), exact, shards with K and B; K and B only with shards of a
 * dataset (each error names the key's position). */
static void test_order(void) {
  train_job j;
  CHECK_OK(parse(base, &j));
  CHECK(j.stage[1].order == -1 && j.stage[1].order_shards == 0 && j.stage[1].order_buffer == 0);
  train_job_free(&j);
  const char *t1 = "finetune:\n  data: {dataset: ds, order: shards, order_shards: 3, order_buffer: 100}\n"
                   "  epochs: 1\n";
  CHECK_OK(parse(t1, &j));
  CHECK(j.stage[1].order == 1 && j.stage[1].order_shards == 3 && j.stage[1].order_buffer == 100);
  train_job_free(&j);
  const char *t2 = "finetune:\n  data: {stream: {endpoint: 'ipc:///x'}, order: exact}\n"
                   "  validation: {split: none}\n  epochs: 1\n";
  CHECK_OK(parse(t2, &j));
  CHECK(j.stage[1].order == 0 && j.stage[1].source == TRAIN_SRC_STREAM);
  train_job_free(&j);
  /* an endpoint ZeroMQ would misread: port 99999 binds 34463; no scheme is no endpoint */
  check_text_err("finetune:\n  data: {stream: {endpoint: 'tcp://127.0.0.1:99999'}}\n  epochs: 1\n",
                 "t.yaml:2:29: finetune.data.stream.endpoint: endpoint 'tcp://127.0.0.1:99999': "
                 "port '99999': expected tcp://HOST:PORT");
  check_text_err("finetune:\n  data: {stream: {endpoint: 'localhost:5555'}}\n  epochs: 1\n",
                 "endpoint 'localhost:5555': expected tcp://HOST:PORT");
  check_text_err("finetune:\n  data: {dataset: ds, order: random}\n  epochs: 1\n", "order");
  check_text_err("finetune:\n  data: {dataset: ds, order_shards: 4}\n  epochs: 1\n",
                 "t.yaml:2:37: finetune.data.order_shards: expected only with order: shards and a "
                 "dataset");
  check_text_err("finetune:\n  data: {dataset: ds, order: exact, order_buffer: 4}\n  epochs: 1\n",
                 "finetune.data.order_buffer: expected only with order: shards and a dataset (a "
                 "stream's order is the producer's: coemu serve --order-shards/--order-buffer), got "
                 "it with order: exact");
  check_text_err("finetune:\n  data: {stream: {endpoint: 'ipc:///x'}, order: shards, order_shards: 2}\n"
                 "  validation: {split: none}\n  epochs: 1\n", "got it with a stream");
  check_text_err("finetune:\n  data: {dataset: ds, order: shards, order_shards: 0}\n  epochs: 1\n",
                 "order_shards");
}

static void test_cross_field_errors(void) {
  /* exactly one of dataset / stream */
  check_text_err("finetune:\n  data: {dataset: ds, stream: {endpoint: 'ipc:///x'}}\n  epochs: 2\n",
                 "t.yaml:2:9: finetune.data: expected exactly one of 'dataset' or 'stream', got both");
  check_text_err("finetune:\n  data: {split: test}\n  epochs: 2\n",
                 "t.yaml:2:9: finetune.data: expected exactly one of 'dataset' or 'stream', got neither");
  check_text_err("pretrain:\n  data: {}\n  epochs: 2\n", "t.yaml:2:9: pretrain.data: expected exactly one");
  /* a stream stage validates on a named dataset */
  check_text_err("finetune:\n  data:\n    stream: {endpoint: 'ipc:///x'}\n  epochs: 2\n"
                 "  validation: {batch: 4}\n",
                 "t.yaml:5:15: finetune.validation: expected a 'dataset' to validate on");
  check_text_err("finetune:\n  data:\n    stream: {endpoint: 'ipc:///x'}\n  epochs: 2\n",
                 "t.yaml:2:3: finetune.validation: expected a 'dataset'");
  /* transfer needs a pretrain stage or init; init needs transfer */
  check_err("  transfer: true\n",
            "t.yaml:4:13: finetune.transfer: expected a pretrain stage or finetune.init");
  check_err("  init: ck.bin\n", "t.yaml:4:9: finetune.init: expected transfer: true");
  check_err("  transfer: false\n  init: ck.bin\n", "t.yaml:5:9: finetune.init: expected transfer: true");
  check_text_err("pretrain: {data: {dataset: a}, epochs: 1}\nfinetune: {data: {dataset: b}, epochs: 1, "
                 "transfer: false, init: x}\n", "t.yaml:2:66: finetune.init: expected transfer: true");
  /* transfer and init only under finetune */
  check_text_err("pretrain:\n  data: {dataset: ds}\n  epochs: 2\n  transfer: true\n",
                 "t.yaml:4:3: unknown key 'pretrain.transfer' (allowed here: data, validation, "
                 "epochs, batch, optimizer, schedule, checkpoint_every)");
  check_text_err("pretrain:\n  data: {dataset: ds}\n  epochs: 2\n  init: x\n",
                 "t.yaml:4:3: unknown key 'pretrain.init'");
  /* at least one stage */
  check_text_err("name: x\n", "t.yaml:1:1: (top level): expected at least one of 'pretrain' or 'finetune'");
  /* CURVE keys together; off this machine they are needed */
  check_text_err("finetune:\n  data:\n    stream: {endpoint: 'ipc:///x', server_key: p.key}\n"
                 "  validation: {split: none}\n  epochs: 1\n",
                 "t.yaml:3:48: finetune.data.stream: expected both server_key and client_key");
  check_text_err("finetune:\n  data:\n    stream: {endpoint: 'ipc:///x', client_key: c.key}\n"
                 "  validation: {split: none}\n  epochs: 1\n", "got only client_key");
  check_text_err("finetune:\n  data:\n    stream: {endpoint: 'tcp://10.0.0.1:5555'}\n"
                 "  validation: {split: none}\n  epochs: 1\n",
                 "t.yaml:3:24: finetune.data.stream.endpoint: expected server_key and client_key");
  check_text_err("finetune:\n  data:\n    stream: {endpoint: ''}\n  validation: {split: none}\n"
                 "  epochs: 1\n", "t.yaml:3:24: finetune.data.stream.endpoint: expected a ZeroMQ endpoint");
  /* empty paths */
  check_text_err("finetune:\n  data: {dataset: ''}\n  epochs: 2\n",
                 "t.yaml:2:19: finetune.data.dataset: expected a dataset directory, got ''");
  check_err("  validation: {dataset: ''}\n",
            "t.yaml:4:25: finetune.validation.dataset: expected a dataset directory");
  /* bounds the schema's inclusive ranges cannot say */
  check_err("  optimizer: {lr: 0}\n", "t.yaml:4:19: finetune.optimizer.lr: expected a number > 0 and <= 10, got '0'");
  check_err("  optimizer: {eps: 0.0}\n", "t.yaml:4:20: finetune.optimizer.eps: expected a number > 0");
  check_err("  optimizer: {betas: [0.9, 1.0]}\n",
            "t.yaml:4:28: finetune.optimizer.betas[1]: expected a number in [0, 1), got '1.0'");
  check_err("  optimizer: {betas: [1, 0.5]}\n", "finetune.optimizer.betas[0]: expected a number in [0, 1)");
  check_err("  schedule: {gamma: 0}\n", "t.yaml:4:21: finetune.schedule.gamma: expected a number > 0");
  check_err("model: {decoder: 12}\n", "t.yaml:4:18: model.decoder: expected a multiple of 8, got '12'");
  /* required keys */
  check_text_err("finetune:\n  data: {dataset: ds}\n", "t.yaml:2:3: finetune: missing required key 'epochs'");
  check_text_err("pretrain: {epochs: 3}\n", "t.yaml:1:11: pretrain: missing required key 'data'");
  check_text_err("finetune:\n  data:\n    stream: {credit: 3}\n  epochs: 1\n",
                 "t.yaml:3:13: finetune.data.stream: missing required key 'endpoint'");
  /* the good neighbours of the bounds pass */
  train_job j;
  char text[512];
  snprintf(text, sizeof text, "%s  optimizer: {lr: 10, eps: 1, betas: [0, 0.9999999]}\n"
           "  schedule: {gamma: 1}\nmodel: {decoder: 8}\n", base);
  CHECK_OK(parse(text, &j));
  CHECK(j.stage[1].lr == 10 && j.stage[1].beta1 == 0 && j.dec == 8 && j.stage[1].lr_gamma == 1);
  train_job_free(&j);
}

static void test_schema_errors(void) {
  /* unknown keys, with what is allowed */
  check_err("model: {stems: 4}\n", "t.yaml:4:9: unknown key 'model.stems' (allowed here: shortcut, stem, "
                                    "encoder, latent, decoder, sync_batchnorm)");
  check_err("  epoch: 3\n", "t.yaml:4:3: unknown key 'finetune.epoch'");
  check_err("  data2: {}\n", "unknown key 'finetune.data2'");
  check_err("optimizer: {lr: 1}\n", "t.yaml:4:1: unknown key 'optimizer'");
  check_err("  optimizer: {momentum: 0.9}\n", "unknown key 'finetune.optimizer.momentum'");
  check_err("  validation: {datasets: x}\n", "unknown key 'finetune.validation.datasets'");
  /* wrong types */
  check_err("seed: '12'\n", "t.yaml:4:7: seed: expected an integer >= 0, got '12'");
  check_err("seed: 1.5\n", "seed: expected an integer");
  check_err("model: [1]\n", "t.yaml:4:8: model: expected a mapping, got a list");
  check_err("model: {sync_batchnorm: yes}\n", "model.sync_batchnorm: expected true or false, got 'yes'");
  check_err("name: {a: 1}\n", "t.yaml:4:7: name: expected a string, got a mapping");
  check_err("model: {encoder: 8}\n", "model.encoder: expected a list, got '8'");
  check_err("model: {encoder: [8, 16]}\n", "t.yaml:4:18: model.encoder: expected 3..3 items, got 2");
  check_err("model: {encoder: [8, a, 16]}\n", "model.encoder[1]: expected an integer in 1..4096, got 'a'");
  check_err("  optimizer: {betas: [0.9]}\n", "finetune.optimizer.betas: expected 2..2 items, got 1");
  check_err("  optimizer: {kind: sgd}\n", "t.yaml:4:21: finetune.optimizer.kind: expected one of adam, adam_l2, adamw, got 'sgd'");
  check_err("model: {shortcut: both}\n", "model.shortcut: expected one of reference, input");
  check_err("device: gpu\n", "t.yaml:4:9: device: expected one of cpu, cuda, got 'gpu'");
  check_err("precision: fp16\n", "t.yaml:4:12: precision: expected one of float32, tf32, bf16, got 'fp16'");
  check_err("  validation: {split: dev}\n", "expected one of validation, test, train, all, none, got 'dev'");
  check_err("  data2: 1\n", "unknown key");
  check_text_err("finetune: 3\n", "t.yaml:1:11: finetune: expected a mapping, got '3'");
  check_text_err("- a\n- b\n", "t.yaml:1:1: (top level): expected a mapping, got a list");
  check_text_err("finetune:\n  data: {dataset: [a]}\n  epochs: 2\n",
                 "t.yaml:2:19: finetune.data.dataset: expected a string, got a list");
  check_err("  transfer: 1\n", "finetune.transfer: expected true or false, got '1'");
  /* ranges */
  check_err("threads: 4097\n", "threads: expected an integer in 0..4096, got '4097'");
  check_err("threads: -1\n", "threads: expected an integer in 0..4096");
  check_err("  batch: 0\n", "finetune.batch: expected an integer in 1..65536, got '0'");
  check_err("  batch: 65537\n", "finetune.batch: expected an integer in 1..65536");
  check_err("model: {encoder: [8, 16, 4097]}\n", "model.encoder[2]: expected an integer in 1..4096, got '4097'");
  check_err("model: {latent: 65537}\n", "model.latent: expected an integer in 1..65536");
  check_err("model: {decoder: 0}\n", "model.decoder: expected an integer in 8..4096, got '0'");
  check_err("model: {stem: 0}\n", "model.stem: expected an integer in 1..4096");
  check_err("  optimizer: {lr: 11}\n", "finetune.optimizer.lr: expected a number in 0..10, got '11'");
  check_err("  optimizer: {lr: -1e-3}\n", "finetune.optimizer.lr: expected a number in 0..10");
  check_err("  optimizer: {betas: [-0.1, 0.9]}\n", "finetune.optimizer.betas[0]: expected a number in 0..1");
  check_err("  validation: {every: 0}\n", "finetune.validation.every: expected an integer in 1..1000000");
  check_text_err("finetune:\n  data: {dataset: ds}\n  epochs: 0\n",
                 "t.yaml:3:11: finetune.epochs: expected an integer in 1..1000000, got '0'");
  check_text_err("finetune:\n  data: {dataset: ds}\n  epochs: 1000001\n", "expected an integer in 1..1000000");
  check_text_err("finetune:\n  data:\n    stream: {endpoint: 'ipc:///x', credit: 0}\n  epochs: 1\n",
                 "finetune.data.stream.credit: expected an integer in 1..1024, got '0'");
  check_text_err("finetune:\n  data:\n    stream: {endpoint: 'ipc:///x', credit: 1025}\n  epochs: 1\n",
                 "finetune.data.stream.credit: expected an integer in 1..1024");
  check_text_err("finetune:\n  data:\n    stream: {endpoint: 'ipc:///x', timeout: 0.05}\n  epochs: 1\n",
                 "finetune.data.stream.timeout: expected a number in 0.1..86400, got '0.05'");
  check_text_err("finetune:\n  data:\n    stream: {endpoint: 'ipc:///x', timeout: 86401}\n  epochs: 1\n",
                 "finetune.data.stream.timeout: expected a number in 0.1..86400");
}

static void test_hostile(void) {
  train_job j;
  /* empty document and only a comment: no stage */
  CHECK_ERR(train_job_parse("t.yaml", "", 0, "d", &j), "t.yaml:");
  CHECK_ERR(train_job_parse("t.yaml", "", 0, "d", &j), "expected at least one of 'pretrain' or 'finetune'");
  check_text_err("# nothing\n", "expected at least one of 'pretrain' or 'finetune'");
  /* binary garbage, with NUL bytes and invalid UTF-8 */
  static const unsigned char garbage[] = {0x7f, 'E', 'L', 'F', 0, 1, 2, 0xff, 0xfe, 0x80, ':', '\n',
                                          0xc3, 0x28, '{', '[', 0, '\t', 0x1b, '%', '&', '*'};
  CHECK_ERR(train_job_parse("t.yaml", (const char *)garbage, sizeof garbage, "d", &j), "t.yaml:");
  uint64_t x = 0x9e3779b97f4a7c15ULL;
  char noise[4096];
  for (int round = 0; round < 64; round++) {
    for (size_t i = 0; i < sizeof noise; i++) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      noise[i] = (char)(x >> 24);
    }
    size_t len = (size_t)(x % sizeof noise);
    ce_err_clear();
    int rc = train_job_parse("t.yaml", noise, len, "d", &j);
    CHECK(rc < 0 && strstr(ce_err_msg(), "t.yaml"));
    if (rc == 0) train_job_free(&j);
  }
  /* deeply nested YAML: refused, no stack exhaustion */
  enum { DEPTH = 100000 };
  char *deep = malloc(2 * DEPTH + 16);
  if (deep) {
    size_t n = 0;
    n += (size_t)sprintf(deep, "finetune: ");
    for (int i = 0; i < DEPTH; i++) deep[n++] = '[';
    for (int i = 0; i < DEPTH; i++) deep[n++] = ']';
    deep[n] = 0;
    CHECK_ERR(train_job_parse("t.yaml", deep, n, "d", &j), "nesting deeper than 64 levels");
    n = 0;
    for (int i = 0; i < 70; i++) n += (size_t)sprintf(deep + n, "%*sa%d:\n", i, "", i);
    CHECK_ERR(train_job_parse("t.yaml", deep, n, "d", &j), "nesting deeper than 64 levels");
    free(deep);
  }
  /* huge and non-finite numbers */
  check_err("seed: 99999999999999999999999999\n", "t.yaml:4:7: seed: expected an integer >= 0");
  check_err("seed: -9223372036854775809\n", "seed: expected an integer");
  check_err("  optimizer: {lr: 1e999}\n", "finetune.optimizer.lr: expected a number in 0..10, got '1e999'");
  check_err("  optimizer: {lr: .nan}\n", "finetune.optimizer.lr: expected a number");
  check_err("  optimizer: {lr: .inf}\n", "finetune.optimizer.lr: expected a number");
  check_err("  optimizer: {lr: 1e-400}\n", "t.yaml:4:19: finetune.optimizer.lr: expected a number");
  check_text_err("finetune:\n  data: {dataset: ds}\n  epochs: 1e6\n", "finetune.epochs: expected an integer");
  check_text_err("finetune:\n  data: {dataset: ds}\n  epochs: 0x10\n", "t.yaml:");
  /* anchors, aliases, several documents, duplicate keys */
  check_err("a: &x 1\nb: *x\n", "t.yaml:");
  check_text_err("finetune: {data: {dataset: a}, epochs: 1}\n---\nfinetune: {}\n", "more than one YAML document");
  check_err("finetune: {}\n", "key 'finetune' appears twice");
  /* a long key (libyaml's limit for plain keys is 1024) and a very long
   * value: messages stay bounded */
  char *longtext = malloc(200000);
  if (longtext) {
    int n = sprintf(longtext, "%s", base);
    memset(longtext + n, 'k', 1000);
    n += 1000;
    n += sprintf(longtext + n, ": 1\nname: ");
    memset(longtext + n, 'v', 90000);
    n += 90000;
    longtext[n++] = '\n';
    ce_err_clear();
    CHECK(train_job_parse("t.yaml", longtext, (size_t)n, "d", &j) < 0);
    CHECK(strstr(ce_err_msg(), "t.yaml:4:1: unknown key 'kkkk") && strlen(ce_err_msg()) < 2000);
    n = sprintf(longtext, "%sname: ", base);
    memset(longtext + n, 'v', 150000);
    n += 150000;
    n += sprintf(longtext + n, "\nthreads: [%d]\n", 1);
    ce_err_clear();
    CHECK(train_job_parse("t.yaml", longtext, (size_t)n, "d", &j) < 0);
    CHECK(strstr(ce_err_msg(), "t.yaml:5:10: threads: expected an integer in 0..4096, got a list"));
    n = sprintf(longtext, "%sname: ", base);
    memset(longtext + n, 'v', 150000);
    n += 150000;
    longtext[n++] = '\n';
    CHECK_OK(train_job_parse("t.yaml", longtext, (size_t)n, "d", &j));
    CHECK(j.name && strlen(j.name) == 150000);
    if (j.path) train_job_free(&j);
    free(longtext);
  }
}

static int write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  if (!f) return ce_err("cannot write %s", path);
  size_t n = fwrite(text, 1, strlen(text), f);
  if (fclose(f) != 0 || n != strlen(text)) return ce_err("cannot write %s", path);
  return 0;
}

static void test_load_files(void) {
  const char *dir = check_scratch("trainjob");
  char p[2048];
  snprintf(p, sizeof p, "%s/job.yaml", dir);
  const char *text = "pretrain:\n  data: {dataset: pre}\n  epochs: 1\n"
                     "finetune:\n  data: {dataset: /abs/ft}\n  validation: {dataset: val}\n  epochs: 1\n";
  CHECK_OK(write_file(p, text));
  train_job j;
  CHECK_OK(train_job_load(p, &j));
  char want[2100];
  snprintf(want, sizeof want, "%s/pre", dir);
  CHECK(!strcmp(j.dir, dir) && !strcmp(j.path, p) && !strcmp(j.text, text));
  CHECK(!strcmp(j.stage[0].dataset, want) && !strcmp(j.stage[0].val_dataset, want));
  snprintf(want, sizeof want, "%s/val", dir);
  CHECK(!strcmp(j.stage[1].dataset, "/abs/ft") && !strcmp(j.stage[1].val_dataset, want));
  CHECK(!strcmp(j.out_dir, "train")); /* relative to the current folder, not resolved */
  CHECK(j.stage[1].transfer == 1);
  train_job_free(&j);
  /* an error names the file */
  snprintf(p, sizeof p, "%s/bad.yaml", dir);
  CHECK_OK(write_file(p, "finetune: {data: {dataset: a}, epochs: 0}\n"));
  ce_err_clear();
  CHECK(train_job_load(p, &j) < 0 && strstr(ce_err_msg(), "bad.yaml:1:40: finetune.epochs"));
  snprintf(p, sizeof p, "%s/missing.yaml", dir);
  CHECK_ERR(train_job_load(p, &j), "missing.yaml");
  check_scratch_remove();
}

static void test_shipped_jobs(void) {
  const char *root = getenv("COEMU_SOURCE_ROOT");
  char p[4096];
  train_job j;
  snprintf(p, sizeof p, "%s/jobs/train-demo.yaml", root ? root : ".");
  CHECK_OK(train_job_load(p, &j));
  if (j.path) {
    const train_stage *f = &j.stage[TRAIN_STAGE_FINETUNE];
    CHECK(!j.stage[0].enabled && f->enabled && f->source == TRAIN_SRC_DATASET);
    CHECK(strstr(f->dataset, "jobs/../demo-dataset") && !strcmp(f->val_dataset, f->dataset));
    CHECK(j.stem == 4 && j.enc[0] == 8 && j.enc[1] == 16 && j.enc[2] == 32 && j.latent == 256);
    CHECK(j.dec == 32 && f->epochs == 2 && f->batch == 8 && f->transfer == 0);
    /* the model fits the demo dataset: 7 channels of 64^3 cubes */
    coemunet_config c = {.nfreq = 7, .grid = 64, .stem = j.stem, .enc = {j.enc[0], j.enc[1], j.enc[2]},
                         .latent = j.latent, .dec = j.dec, .shortcut = j.shortcut};
    CHECK_OK(coemunet_check_config(&c));
    train_job_free(&j);
  }
  /* a generate job given to coemu train: the first unknown key, and what the
   * file is (its top-level keys are schemas/job.yaml's) */
  snprintf(p, sizeof p, "%s/jobs/demo.yaml", root ? root : ".");
  CHECK_ERR(train_job_load(p, &j), "unknown key 'inputs'");
  CHECK(strstr(ce_err_msg(), "demo.yaml:") &&
        strstr(ce_err_msg(), "; this looks like a generate job (top-level keys inputs, ") &&
        strstr(ce_err_msg(), "): run it with coemu generate"));
  /* a training job with a stray key is not taken for a generate job */
  check_err("inputs: 3\n", "unknown key 'inputs'");
  CHECK(!strstr(ce_err_msg(), "looks like"));
  snprintf(p, sizeof p, "%s/jobs/train-paper.yaml", root ? root : ".");
  CHECK_OK(train_job_load(p, &j));
  if (j.path) {
    const train_stage *pre = &j.stage[TRAIN_STAGE_PRETRAIN], *f = &j.stage[TRAIN_STAGE_FINETUNE];
    CHECK(pre->enabled && pre->lr == 4e-3 && pre->lr_step == 200 && pre->lr_gamma == 0.1);
    CHECK(pre->batch == 512 && pre->epochs == 1000);
    CHECK(f->enabled && f->lr == 1e-4 && f->batch == 2048 && f->epochs == 100 && f->transfer == 1);
    CHECK(j.stem == 4 && j.enc[2] == 32 && j.latent == 4096 && j.dec == 64);
    train_job_free(&j);
  }
}

/* The key table, as train_job_schema_markdown() writes it. */
static char *schema_table(size_t *len) {
  char *buf = NULL;
  FILE *f = open_memstream(&buf, len);
  if (!f) return NULL;
  int rc = train_job_schema_markdown(f);
  fclose(f);
  if (rc < 0) {
    free(buf);
    return NULL;
  }
  return buf;
}

static void test_docs(void) {
  size_t len;
  char *table = schema_table(&len);
  CHECK(table && len > 1000);
  if (!table) return;
  /* every key has a row, both stages expanded from one definition */
  CHECK(strstr(table, "| `pretrain.data.stream.endpoint` | string | required |"));
  CHECK(strstr(table, "| `finetune.data.stream.endpoint` | string | required |"));
  CHECK(strstr(table, "| `finetune.transfer` | bool |"));
  CHECK(strstr(table, "| `finetune.init` | string |"));
  CHECK(!strstr(table, "pretrain.transfer") && !strstr(table, "pretrain.init"));
  CHECK(strstr(table, "| `model.encoder` | list of int | `[8, 16, 32]` | 1..4096  |"));
  CHECK(strstr(table, "| `finetune.optimizer.betas` | list of float | `[0.9, 0.999]` | 0..1  |"));
  CHECK(!strstr(table, "defs") && !strstr(table, "`ref`"));
  const char *root = getenv("COEMU_SOURCE_ROOT");
  char p[4096], *doc = NULL;
  size_t dlen;
  snprintf(p, sizeof p, "%s/docs/training-jobs.md", root ? root : ".");
  CHECK_OK(fs_read_all(p, &doc, &dlen));
  CHECK_MSG(doc && strstr(doc, table),
            "docs/training-jobs.md does not hold the table train_job_schema_markdown() writes "
            "(regenerate it with test_trainjob --schema-doc)");
  free(doc);
  free(table);
}

/* The generic validator on a small schema of its own: ref expansion (own
 * fields replace the definition's, own keys are added), defaults filled in,
 * a missing map with required keys left out. */
static void test_schema_language(void) {
  const char *schema_text =
      "type: map\n"
      "doc: t\n"
      "defs:\n"
      "  pt: {type: map, doc: a point, keys: {x: {type: int, default: 1, doc: x}, y: {type: float, min: 0, doc: y}}}\n"
      "  box: {type: map, doc: box, keys: {lo: {ref: pt, doc: low}, hi: {ref: pt, doc: high, keys: {z: {type: bool, default: true, doc: z}}}}}\n"
      "keys:\n"
      "  a: {ref: box, doc: first}\n"
      "  b: {ref: pt, required: true, doc: second}\n"
      "  c: {type: map, doc: c, keys: {k: {type: string, required: true, doc: k}}}\n";
  yt_node *s = schema_tree("s.yaml", schema_text);
  CHECK(s != NULL);
  if (!s) return;
  CHECK(!strcmp(schema_str(s, "keys.a.doc"), "first") && !strcmp(schema_str(s, "keys.b.doc"), "second"));
  CHECK(!strcmp(schema_str(s, "keys.a.keys.lo.doc"), "low") && schema_at(s, "keys.a.keys.hi.keys.z"));
  CHECK(!schema_at(s, "keys.a.keys.lo.keys.z") && !schema_at(s, "keys.a.ref"));
  CHECK(!strcmp(schema_str(s, "keys.b.required"), "true"));
  const char *doc_text = "b: {y: 2.5}\n";
  yt_node *d = yt_parse("d.yaml", doc_text, strlen(doc_text));
  CHECK(d != NULL);
  if (d) {
    CHECK_OK(schema_validate("d.yaml", d, s));
    CHECK(schema_int(d, "a.lo.x") == 1 && schema_int(d, "a.hi.x") == 1 && schema_bool(d, "a.hi.z") == 1);
    CHECK(schema_num(d, "b.y") == 2.5 && schema_int(d, "b.x") == 1 && !schema_at(d, "c"));
    CHECK(!schema_at(d, "a.lo.y"));
    yt_free(d);
  }
  d = yt_parse("d.yaml", "b: {}\na: {lo: {z: false}}\n", 25);
  CHECK(d != NULL);
  if (d) {
    CHECK_ERR(schema_validate("d.yaml", d, s), "d.yaml:2:10: unknown key 'a.lo.z' (allowed here: x, y)");
    yt_free(d);
  }
  d = yt_parse("d.yaml", "a: {}\n", 6);
  if (d) {
    CHECK_ERR(schema_validate("d.yaml", d, s), "d.yaml:1:1: (top level): missing required key 'b'");
    yt_free(d);
  }
  yt_free(s);
  char *r = schema_resolve("dir", "a/b");
  CHECK(r && !strcmp(r, "dir/a/b"));
  free(r);
  r = schema_resolve("dir", "/a/b");
  CHECK(r && !strcmp(r, "/a/b"));
  free(r);
  r = schema_resolve("", "a");
  CHECK(r && !strcmp(r, "a"));
  free(r);
}

/* train_job_diff: every changed key named with its values, in schema order,
 * and marked extendable or not; defaults and resolved paths compared, not
 * the text (a comment or an explicit default is no change). */
static void test_diff(void) {
  train_job a, b;
  CHECK_OK(parse(base, &a));
  CHECK_OK(parse("# a comment\nseed: 1234\nfinetune:\n  data: {dataset: ds}\n  epochs: 2\n"
                 "  batch: 16\n", &b));
  CHECK_MSG(train_job_diff(&a, &b, NULL, 0) == 0, "no change: %d", train_job_diff(&a, &b, NULL, 0));
  train_job_free(&b);
  CHECK_OK(parse("seed: 7\nthreads: 2\nmodel: {encoder: [8, 16, 64]}\n"
                 "finetune:\n  data: {dataset: ds2}\n  epochs: 5\n  batch: 8\n"
                 "  optimizer: {lr: 1e-3, betas: [0.8, 0.999]}\n"
                 "  schedule: {step_size: 3, gamma: 0.5}\n  validation: {every: 2}\n", &b));
  struct { const char *key, *before, *after; int ext; } want[] = {
      {"seed", "1234", "7", 0},
      {"threads", "0", "2", 1},
      {"model.encoder", "[8, 16, 32]", "[8, 16, 64]", 0},
      {"finetune.data.dataset", "d/ds", "d/ds2", 0},
      {"finetune.validation.dataset", "d/ds", "d/ds2", 0},
      {"finetune.validation.every", "1", "2", 1},
      {"finetune.epochs", "2", "5", 1},
      {"finetune.batch", "16", "8", 0},
      {"finetune.optimizer.lr", "0.0004", "0.001", 1},
      {"finetune.optimizer.betas", "[0.9, 0.999]", "[0.8, 0.999]", 0},
      {"finetune.schedule.step_size", "0", "3", 1},
      {"finetune.schedule.gamma", "0.1", "0.5", 1}};
  const int nw = (int)(sizeof want / sizeof want[0]);
  train_job_change ch[32];
  int n = train_job_diff(&a, &b, ch, 32);
  CHECK_MSG(n == nw, "%d changes, expected %d", n, nw);
  for (int i = 0; i < n && i < nw; i++)
    CHECK_MSG(!strcmp(ch[i].key, want[i].key) && !strcmp(ch[i].before, want[i].before) &&
                  !strcmp(ch[i].after, want[i].after) && ch[i].extendable == want[i].ext &&
                  ch[i].stage == (strncmp(want[i].key, "finetune.", 9) ? -1 : TRAIN_STAGE_FINETUNE),
              "change %d: %s %s -> %s (%d), expected %s %s -> %s (%d)", i, ch[i].key, ch[i].before,
              ch[i].after, ch[i].extendable, want[i].key, want[i].before, want[i].after, want[i].ext);
  /* max bounds what is written, not the count */
  CHECK(train_job_diff(&a, &b, ch, 2) == nw && !strcmp(ch[1].key, "threads"));
  train_job_free(&b);
  /* the order: part of what the samples are, not extendable */
  CHECK_OK(parse("finetune:\n  data: {dataset: ds, order: shards, order_shards: 4}\n  epochs: 2\n", &b));
  n = train_job_diff(&a, &b, ch, 32);
  CHECK_MSG(n == 2 && !strcmp(ch[0].key, "finetune.data.order") && !strcmp(ch[0].before, "(not given)") &&
                !strcmp(ch[0].after, "shards") && !ch[0].extendable &&
                !strcmp(ch[1].key, "finetune.data.order_shards") && !ch[1].extendable,
            "%d changes: %s %s -> %s", n, n ? ch[0].key : "", n ? ch[0].before : "", n ? ch[0].after : "");
  train_job_free(&b);
  /* the device: extendable (checkpoints are the same on every backend) */
  CHECK_OK(parse("device: cuda\nfinetune:\n  data: {dataset: ds}\n  epochs: 2\n  batch: 16\n", &b));
  n = train_job_diff(&a, &b, ch, 32);
  CHECK_MSG(n == 1 && !strcmp(ch[0].key, "device") && !strcmp(ch[0].before, "cpu") &&
                !strcmp(ch[0].after, "cuda") && ch[0].extendable,
            "%d: %s %s -> %s", n, n ? ch[0].key : "", n ? ch[0].before : "", n ? ch[0].after : "");
  train_job_free(&b);
  /* a stage added: one change, the stage, not extendable */
  CHECK_OK(parse("pretrain: {data: {dataset: ds}, epochs: 1}\nfinetune:\n  data: {dataset: ds}\n"
                 "  epochs: 2\n", &b));
  n = train_job_diff(&a, &b, ch, 32);
  CHECK_MSG(n >= 1 && !strcmp(ch[0].key, "pretrain") && !strcmp(ch[0].before, "absent") &&
                !strcmp(ch[0].after, "present") && !ch[0].extendable,
            "%d: %s %s -> %s", n, n ? ch[0].key : "", n ? ch[0].before : "", n ? ch[0].after : "");
  train_job_free(&b);
  train_job_free(&a);
}

int main(int argc, char **argv) {
  if (argc > 1 && !strcmp(argv[1], "--schema-doc")) return train_job_schema_markdown(stdout) < 0;
  RUN(test_defaults);
  RUN(test_full_job);
  RUN(test_stream_defaults_and_paths);
  RUN(test_order);
  RUN(test_cross_field_errors);
  RUN(test_schema_errors);
  RUN(test_hostile);
  RUN(test_load_files);
  RUN(test_shipped_jobs);
  RUN(test_schema_language);
  RUN(test_docs);
  RUN(test_diff);
  return check_report();
}
