/* runrecord.h - OUT/run.json: what a training run directory records beside
 * its job text (trainrun.h), so that a rerun can tell whether it would go
 * on with the same run:
 *   job_dir   the folder OUT/train.yaml's relative paths were resolved
 *             against (the job file's folder when that text was written),
 *             so the recorded job is compared with a new one by what its
 *             paths named then, not by what they name from the new job's
 *             folder;
 *   datasets  for each data key a stage read (finetune.data.dataset,
 *             finetune.validation.dataset, finetune.data.stream.endpoint),
 *             where it was read (the dataset directory, absolute with
 *             symlinks resolved, or the endpoint) and the dataset's identity:
 *             serve_dataset_dir_id, which is also the dataset_id a stream
 *             of it carries (pipeline/serve/serve.h).
 *
 * { "job_dir": "/abs/jobs",
 *   "datasets": { "finetune.data.dataset": { "path": "/abs/demo-dataset",
 *                                            "dataset_id": "0123456789abcdef" } } }
 *
 * A run made before coemu wrote this file has none: its record reads as
 * empty (no job_dir, no datasets), and the datasets a rerun reads are
 * recorded from then on.
 */
#ifndef COEMU_RUNRECORD_H
#define COEMU_RUNRECORD_H

#include <stddef.h>
#include <stdint.h>

#define RUN_RECORD_MAX 8 /* two stages, each a training and a validation source */

typedef struct {
  char key[64];    /* the job key: "finetune.data.dataset" */
  char where[4096]; /* the dataset directory (absolute) or the stream endpoint */
  uint64_t id;     /* the dataset id */
} run_dataset;

typedef struct {
  char job_dir[4096]; /* "": not recorded */
  int n;
  run_dataset ds[RUN_RECORD_MAX];
} run_record;

/* OUT/run.json into *r; no such file: an empty record. 0, or -1 with the
 * message naming the file and what is wrong. */
int run_record_read(const char *out, run_record *r);

/* *r as OUT/run.json, atomically. */
int run_record_write(const char *out, const run_record *r);

/* The entry of `key`, or NULL. */
const run_dataset *run_record_get(const run_record *r, const char *key);

/* Record (key, where, id); an entry of the same key and id keeps the place
 * it was first read at. Returns 1 when the record changed, 0 when not. */
int run_record_put(run_record *r, const char *key, const char *where, uint64_t id);

/* `where` as recorded: a directory absolute with symlinks resolved (as
 * given when it cannot be resolved), anything else (an endpoint) as it is. */
void run_record_where(const char *path, char *buf, size_t len);

/* The data a run in OUT is to read now (key, where, id) against the record:
 * 0 when the record has no entry for the key or the same id, else -1 with
 * the refusal naming OUT, the key, the recorded id and place, the new ones
 * and what to do. */
int run_record_check(const run_record *r, const char *out, const char *key, const char *where,
                     uint64_t id);

#endif
