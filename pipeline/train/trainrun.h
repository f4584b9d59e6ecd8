/* trainrun.h - `coemu train`: run a training job's stages over MPI ranks.
 *
 * Output directory OUT (the job's output.directory or --out):
 *   OUT/train.yaml            the job text; a rerun with the same job resumes,
 *                             a different job is refused, naming the keys that
 *                             differ, unless extend is set (below) or OUT holds
 *                             no run (no checkpoint, no step: taken over)
 *   OUT/train.N.yaml          with extend: the job text before the N-th extension
 *   OUT/train.log             with extend: one entry per extension, key: old -> new
 *   OUT/run.json              the folder train.yaml's paths were read against
 *                             and the identity of each stage's data
 *                             (runrecord.h; below)
 *   OUT/<stage>/last.ckpt     the newest checkpoint (every checkpoint_every
 *                             steps, at each epoch's end, on a clean stop)
 *   OUT/<stage>/best.ckpt     the checkpoint with the lowest validation MaxRel
 *   OUT/<stage>/train.csv     one row per optimiser step: step, epoch, lr,
 *                             loss, mse, fft (means over the global batch), samples/s
 *   OUT/<stage>/validation.csv one row per validation (before the first step:
 *                             the untrained baseline, then every validation.every
 *                             epochs and after the last): step, epoch, loss, MaxRel
 *                             median/mean/p90, ZNCC, SSIM (both conventions)
 *   OUT/<stage>/loss.png      training and validation loss curves
 * with <stage> = pretrain, finetune. A stage whose last checkpoint has all its
 * epochs is complete and skipped; otherwise it resumes from last.ckpt at the
 * step it records (train.csv is cut back to that step), so a run stopped and
 * resumed gives the same loss curve as one that was not stopped.
 *
 * The run's data: a resume or an extension reads the data the run was made
 * with. Each stage records its data's dataset id in OUT/run.json before its
 * first step (serve_dataset_dir_id, or the id a stream's producer
 * announces); a started, unfinished stage whose data.dataset or
 * validation.dataset now holds another id is refused before anything is
 * written, a stream of another id at its first chunk (TRAIN_RUN_REFUSED
 * on every rank). The job is compared with OUT/train.yaml by what its
 * paths name (the recorded text read against the recorded folder; a path
 * by the file it resolves to, a dataset key by its id), so a job naming the
 * same datasets by other paths resumes as the same job. A run made before
 * the record has none: it resumes, and its data are recorded from then on.
 *
 * Extending a run (extend, `coemu train --extend`): a job that differs from
 * OUT/train.yaml only in extendable keys (train_job_change.extendable: the
 * stages' epochs, optimizer.lr, schedule, checkpoint_every, validation.every,
 * data.stream.credit/timeout, and name, threads, output.directory) takes the
 * run over: each stage resumes from its last.ckpt with the new epochs, and the
 * new rate and schedule (a function of the epoch number, as always) from the
 * next epoch on. Refused, naming the key: any other key; epochs below what a
 * stage has already trained; a pretrain stage that would train further under
 * a finetune stage that has already taken its weights. Since the data order
 * and the schedule are functions of (seed, epoch), a run extended with more
 * epochs and an unchanged schedule (or one that changes only epochs not yet
 * trained) ends bit-identical to an uninterrupted run of the final job.
 *
 * Data order: the dataset source shuffles with the job's seed, exactly as
 * `coemu serve --seed SEED --batch B/W --ranks W` would, so training from
 * such a stream and from the dataset directory gives the same batches. The
 * model of stage k (0 pretrain, 1 finetune) is initialised from seed + k.
 *
 * Data parallelism: every rank holds the whole model; the global batch is
 * split evenly over the ranks (train_data.h), BatchNorm statistics are
 * computed over the global batch when model.sync_batchnorm is set, and the
 * gradients are summed over the ranks (MPI_Allreduce) before each update, so
 * W ranks with batch B/W follow 1 rank with batch B up to summation order.
 * Only rank 0 writes files. At each epoch's end the ranks compare a hash of
 * their weights; a difference (possible with more than two ranks, where the
 * allreduce may round differently on different ranks) is repaired by
 * broadcasting rank 0's weights and optimiser state, and reported.
 */
#ifndef COEMU_TRAINRUN_H
#define COEMU_TRAINRUN_H

#include <mpi.h>
#include <stdint.h>
#include <stdio.h>

#include "pipeline/job/trainjob.h"
#include "trainer/backend.h"

typedef struct {
  const char *out_dir;   /* NULL: the job's output.directory */
  int64_t max_steps;     /* > 0: stop cleanly (checkpointed) after this many steps in this run */
  double time_limit_s;   /* > 0: stop cleanly once this much wall time has passed */
  int quiet;
  int extend;            /* OUT holds a run of a job that differs: continue it under this job
                            when only extendable keys differ (see above) */
  MPI_Comm comm;
  const nn_backend *be;  /* the backend the models train on (initialised; NULL: the CPU's) */
} train_run_opts;

#define TRAIN_RUN_STOPPED 3  /* train_run's return when it stopped early (resumable) */
#define TRAIN_RUN_REFUSED (-2) /* ... when it failed before starting, on every rank at the same
                                  point (OUT belongs to another job or holds a run on other
                                  data, an input is missing or bad: train_inputs.h): nothing
                                  was written; or when a stream stage's producer announced
                                  another dataset than the run's, at its first chunk: nothing
                                  was trained */

/* Run the job: 0 when every stage is complete, TRAIN_RUN_STOPPED after a
 * clean early stop (--max-steps, --time-limit, SIGINT/SIGTERM), < 0 on error
 * (message set; collective errors are agreed so no rank hangs):
 * TRAIN_RUN_REFUSED before the start, -1 later.
 *
 * Before it writes anything, rank 0 checks that the job may run in OUT (the
 * same job on the same data, a run --extend accepts, or a directory
 * without a run, below),
 * and every rank checks the job's inputs (train_inputs.h; stages OUT shows
 * complete are skipped), so a start that fails on them leaves nothing
 * behind. A directory holding another job's train.yaml but no checkpoint
 * and no logged step (what a failed start of an older version, or one that
 * failed after these checks, leaves) is taken over: its stage logs are
 * removed, train.yaml replaced, and a note printed. */
int train_run(const train_job *j, const train_run_opts *o);

/* `coemu train --check` on OUT: the refusal train_run would give there
 * (another job's run, one on other datasets: OUT/run.json), with extend
 * as --extend; else 0, the stages OUT shows complete in skip (the run does
 * not read their inputs), and what the run would do there as lines on
 * report (starts, resumes a stage at epoch E step S, a stage complete,
 * --extend continuing it). Creates nothing. */
int train_run_check_out(const train_job *j, const char *out, int extend, int skip[TRAIN_STAGES],
                        FILE *report);

#endif
