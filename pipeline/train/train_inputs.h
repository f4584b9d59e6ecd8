/* train_inputs.h - the inputs a training job names, checked before
 * `coemu train` writes anything (train_run, on every rank: a dataset a node
 * cannot see is found there) and by `coemu train --check`.
 *
 * For each stage:
 *   data.dataset        a directory that holds a finished dataset (dataset.h5
 *                       and manifest.json; its shards open and agree with the
 *                       manifest, truncated ones included), with /stats, whose
 *                       split gives every rank at least one batch, and whose
 *                       shapes fit the job's model (coemunet_check_config; a
 *                       pretrain stage: 1 channel); opened exactly as the run
 *                       opens it (train_data_open);
 *   validation.dataset  the same for validation.split (the split need not
 *                       fill a batch), with the training data's shapes;
 *   data.stream.stats   a finished dataset with /stats (the stream itself is
 *                       not contacted);
 *   init                a checkpoint whose encoder fits the model and data;
 *   batch               divisible by the ranks;
 * and a finetune stage transferring from the pretrain stage reads data of
 * the pretrain data's grid.
 *
 * The first problem is the error, naming the job file, FILE:LINE:COL of the
 * key where the job gives it, the key (finetune.data.dataset) and the path,
 * and what is missing: "no such directory", "not a dataset (no dataset.h5)",
 * "not finished (no manifest.json): run or resume `coemu generate`", "no
 * /stats group (run `coemu stats DIR`)", or the reader's own message (a
 * damaged shard, a split too small for the ranks).
 */
#ifndef COEMU_TRAIN_INPUTS_H
#define COEMU_TRAIN_INPUTS_H

#include <stdio.h>

#include "pipeline/job/trainjob.h"

typedef struct {
  int world;                /* the ranks of the run (--check: 1) */
  int skip[TRAIN_STAGES];   /* 1: do not check this stage (complete in the output directory) */
  FILE *report;             /* not NULL: one line per input checked (--check) */
} train_inputs_opts;

/* 0 when every input is there and fits, else -1 with the message set. */
int train_inputs_check(const train_job *j, const train_inputs_opts *o);

#endif
