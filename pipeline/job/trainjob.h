/* trainjob.h - training jobs: what `coemu train` runs, read from YAML and
 * checked against the schema schemas/train.yaml (embedded in the binary, as
 * schemas/job.yaml is for generate jobs; the validator is pipeline/job/schema.h).
 *
 * A training job has up to two stages, run in this order:
 *   pretrain  - the single-channel model (a dataset of 1 channel, face-on in
 *               the paper) trained from scratch;
 *   finetune  - the multi-channel model; with `transfer: true` its encoder
 *               branches and latent layer start from the pretrained weights
 *               (the last checkpoint of the pretrain stage, or `init`).
 * At least one stage is given. Each stage reads training batches from a
 * dataset directory (the same per-epoch shuffle as `coemu serve`) or from a
 * stream endpoint (`coemu serve`), and validates on a dataset split.
 *
 * Errors are "FILE:LINE:COL: key.path: expected ..., got ..."; every default
 * is filled in, relative paths are resolved against the job file's folder.
 */
#ifndef COEMU_TRAINJOB_H
#define COEMU_TRAINJOB_H

#include <stdint.h>
#include <stdio.h>

typedef enum { TRAIN_STAGE_PRETRAIN = 0, TRAIN_STAGE_FINETUNE = 1, TRAIN_STAGES = 2 } train_stage_id;
typedef enum { TRAIN_SRC_DATASET = 0, TRAIN_SRC_STREAM = 1 } train_source_kind;

/* Where a key's value stands in the job file, for messages about what it
 * names (line 0: not known, e.g. a default). */
typedef struct {
  int line, col;
} train_pos;

typedef struct {
  int enabled;               /* the stage is in the job */
  /* training data (data:) */
  train_source_kind source;  /* exactly one of data.dataset / data.stream */
  char *dataset;             /* data.dataset: dataset directory (resolved) */
  char split[16];            /* data.split: train | validation | test | all (default train) */
  int order;                 /* data.order: -1 not given (exact; a stream: the producer's),
                                else an order_mode (pipeline/serve/order.h): 0 exact, 1 shards */
  int64_t order_shards;      /* data.order_shards: K (0: not given, the default) */
  int64_t order_buffer;      /* data.order_buffer: B (0: not given, the default) */
  char *endpoint;            /* data.stream.endpoint */
  int64_t credit;            /* data.stream.credit (default 4) */
  double timeout_s;          /* data.stream.timeout (default 30 s) */
  char *server_key;          /* data.stream.server_key: producer's public key file, "" = no CURVE */
  char *client_key;          /* data.stream.client_key: this trainer's key pair file */
  char *stream_stats;        /* data.stream.stats: dataset whose /stats the trainer normalises
                                a raw (live) stream with ("" = the producer normalises) */
  /* validation (validation:) */
  char *val_dataset;         /* validation.dataset (resolved); default: data.dataset; "" = none */
  char val_split[16];        /* validation.split: validation | test | train | all | none (default validation) */
  int64_t val_max_samples;   /* validation.max_samples: 0 = the whole split */
  int64_t val_batch;         /* validation.batch (default 16) */
  int64_t validate_every;    /* validation.every: epochs between validations (default 1) */
  /* optimisation */
  int64_t epochs;            /* epochs (required) */
  int64_t batch;             /* batch: global batch, divided evenly over the ranks (default 16) */
  int optimizer;             /* optimizer.kind: adam | adam_l2 | adamw -> adam_kind (optim.h) */
  double lr, weight_decay;   /* optimizer.lr (default 4e-4), optimizer.weight_decay (0) */
  double beta1, beta2, eps;  /* optimizer.betas [0.9, 0.999], optimizer.eps 1e-8 */
  int64_t lr_step;           /* schedule.step_size: epochs (0 = constant rate, default) */
  double lr_gamma;           /* schedule.gamma (default 0.1) */
  int64_t checkpoint_every;  /* steps between checkpoints (0 = at the end of each epoch only) */
  int transfer;              /* finetune only: transfer the encoder (default true when pretrain exists) */
  char *init;                /* a checkpoint to take the transferred weights from ("" = the pretrain stage's) */
  /* the positions of the keys that name inputs (pipeline/train/train_inputs.h) */
  train_pos dataset_at;      /* data.dataset */
  train_pos val_at;          /* validation.dataset; not given: the validation map (or the stage) */
  train_pos stats_at;        /* data.stream.stats */
  train_pos init_at;         /* init */
} train_stage;

typedef struct {
  char *path;       /* job file as given */
  char *dir;        /* folder relative paths are resolved against */
  char *text;       /* the job text, verbatim (provenance) */
  size_t text_len;
  char *name;       /* name (default "train") */
  char *out_dir;    /* output.directory (default "train", relative to the cwd; --out overrides) */
  uint64_t seed;    /* seed (default 1234): initialisation and data order */
  int threads;      /* threads per rank (0: OMP_NUM_THREADS, else the rank's share of its CPUs) */
  char *device;     /* device (cpu | cuda): the trainer backend each rank runs on (nn_backend_by_name) */
  int precision;    /* precision (float32 | tf32 | bf16): nn_precision of convolutions and linear layers */
  /* model: */
  int shortcut;     /* model.shortcut: reference | input -> COEMUNET_SHORTCUT_* */
  int stem;         /* model.stem (4) */
  int enc[3];       /* model.encoder [8, 16, 32] */
  int latent;       /* model.latent (4096) */
  int dec;          /* model.decoder (64) */
  int sync_batchnorm; /* model.sync_batchnorm (true): BatchNorm statistics over the global batch */
  train_stage stage[TRAIN_STAGES];
} train_job;

/* The schema text (schemas/train.yaml), embedded at build time. */
extern const char train_schema_text[];

int train_job_load(const char *path, train_job *j);
int train_job_parse(const char *name, const char *text, size_t len, const char *dir,
                    train_job *j);
void train_job_free(train_job *j);

/* One key whose value differs between two jobs (train_job_diff). */
typedef struct {
  char key[48];           /* the key path: "seed", "model.encoder", "finetune.epochs"; a whole
                             stage added or removed: "pretrain" / "finetune" */
  char before[128], after[128]; /* the values as text ("absent" for a missing stage) */
  int stage;              /* TRAIN_STAGE_* of a stage key, -1 for a job-wide key */
  int extendable;         /* 1: `coemu train --extend` may change it on a started run: it only
                             shapes what is still to come (epochs, the learning-rate schedule,
                             checkpoint and validation cadence, transport and naming) */
} train_job_change;

/* The keys (after defaults and path resolution) whose values differ between
 * two jobs, in schema order: the first `max` go to ch (which may be NULL);
 * returns how many differ. Paths that resolve (realpath) to the same file
 * or directory do not differ, however they are spelled. */
int train_job_diff(const train_job *before, const train_job *after, train_job_change *ch, int max);

/* docs/training-jobs.md's key table, generated from the schema. */
int train_job_schema_markdown(FILE *out);

#endif
