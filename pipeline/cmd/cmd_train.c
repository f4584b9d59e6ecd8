/* cmd_train.c - `coemu train JOB.yaml`: train COEmuNet from a training job
 * (trainjob.h) over all MPI ranks; the loop is trainrun.c. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/cli.h"
#include "common/error.h"
#include "pipeline/cmd/commands.h"
#include "pipeline/job/trainjob.h"
#include "pipeline/mpi/mpi_fatal.h"
#include "pipeline/mpi/mpi_node.h"
#include "pipeline/train/train_inputs.h"
#include "pipeline/train/trainrun.h"
#include "trainer/nn.h"

static void print_check(const train_job *j, const char *out) {
  printf("%s: ok: training job '%s', output %s, seed %llu, device %s%s%s\n", j->path, j->name,
         out, (unsigned long long)j->seed, j->device,
         j->precision != NN_FLOAT32 ? ", precision " : "",
         j->precision != NN_FLOAT32 ? nn_precision_name(j->precision) : "");
  static const char *names[TRAIN_STAGES] = {"pretrain", "finetune"};
  for (int i = 0; i < TRAIN_STAGES; i++) {
    const train_stage *s = &j->stage[i];
    if (!s->enabled) continue;
    printf("  %s: %s %s (split %s), %lld epochs, batch %lld, lr %g, validation %s%s%s\n", names[i],
           s->source == TRAIN_SRC_DATASET ? "dataset" : "stream",
           s->source == TRAIN_SRC_DATASET ? s->dataset : s->endpoint, s->split,
           (long long)s->epochs, (long long)s->batch, s->lr,
           *s->val_dataset ? s->val_dataset : "none", *s->val_dataset ? " split " : "",
           *s->val_dataset ? s->val_split : "");
  }
}

int cmd_train(int argc, char **argv) {
  const char *out = NULL;
  int check = 0, no_data = 0, quiet = 0, schema_doc = 0, extend = 0;
  int64_t max_steps = 0;
  double time_limit = 0;
  cli_opt opts[] = {
      {"out", CLI_STR, &out, "DIR", "output directory (default: the job's output.directory)", 0, 0},
      {"max-steps", CLI_INT, &max_steps, "N",
       "stop cleanly after N optimiser steps in this run, >= 0 (rerun to resume; default 0: no limit)", 0, 0},
      {"time-limit", CLI_DOUBLE, &time_limit, "SECONDS",
       "stop cleanly once this much wall time has passed, >= 0 (for batch-system slots; default 0: no limit)", 0, 0},
      {"extend", CLI_FLAG, &extend, NULL,
       "continue the run in the output directory under a changed job: more epochs, a new "
       "learning rate or schedule (other changes are refused; the change is logged in "
       "OUT/train.log)", 0, 0},
      {"check", CLI_FLAG, &check, NULL,
       "validate the job file and what it names, then exit: the output directory (--out, "
       "--extend as given: whether the run would start, resume or be refused there, as the "
       "run itself decides); each stage's dataset and validation dataset exist, are finished, "
       "have /stats and fit the model; data.stream.stats and init are read too (a stream is "
       "not contacted)", 0, 0},
      {"no-data", CLI_FLAG, &no_data, NULL,
       "with --check: the job file only, not the output directory and the datasets and "
       "checkpoints it names (a job written before its data exist)", 0, 0},
      {"quiet", CLI_FLAG, &quiet, NULL,
       "no progress lines (a stop before the end, exit status 3, is still reported)", 0, 0},
      {"schema-doc", CLI_FLAG, &schema_doc, NULL,
       "print the training-job key table (Markdown) and exit", 0, 0},
      {0}};
  /* --schema-doc needs no job file: the count is checked below */
  const cli_command spec = {
      "train", "JOB.yaml [options]   (under mpirun for data-parallel training)",
      "Train COEmuNet as a training job says (pretraining on single-channel data, then "
      "fine-tuning with the encoder transferred), from dataset directories or streams, over all "
      "MPI ranks. Rerun the same command to resume; exit status 3 means it stopped early and can "
      "be resumed. With --extend, a finished or stopped run continues from its last checkpoints "
      "under an edited job (more epochs, a new schedule).",
      opts, 0, 1};
  int npos = 0;
  char **pos = NULL;
  cli_status r = cli_run_parse(&spec, argc, argv, &npos, &pos);
  if (r != CLI_OK) return cli_exit(r);
  if (schema_doc) {
    free(pos);
    return train_job_schema_markdown(stdout) < 0 ? 1 : 0;
  }
  if (npos != 1) {
    free(pos);
    return cli_usage_fail("train", "expected one training job file, got %d arguments", npos);
  }
  if (no_data && !check) {
    free(pos);
    return cli_usage_fail("train", "--no-data goes with --check");
  }
  const cli_range range[] = {{"--max-steps", max_steps, 0, CLI_NO_MAX, "0: no limit"}};
  int bad = cli_check_ranges("train", range, 1);
  if (!bad && time_limit < 0)
    bad = cli_usage_fail("train", "--time-limit %g: expected >= 0 (0: no limit)", time_limit);
  if (bad) {
    free(pos);
    return bad;
  }
  train_job j;
  int loaded = train_job_load(pos[0], &j);
  free(pos);
  if (loaded < 0) return cli_fail("train");
  if (check) {
    /* the output directory, then the inputs, as the run checks them, before
       the "ok": the first problem is the error */
    const char *dir = out ? out : j.out_dir;
    train_inputs_opts io = {.world = 1, .report = NULL};
    char *lines = NULL;
    size_t nlines = 0;
    FILE *rep = no_data ? NULL : open_memstream(&lines, &nlines);
    io.report = rep;
    int rc = no_data ? 0 : rep ? train_run_check_out(&j, dir, extend, io.skip, rep)
                               : ce_err("out of memory");
    if (rc == 0 && !no_data) rc = train_inputs_check(&j, &io);
    if (rep) fclose(rep);
    if (rc == 0) {
      print_check(&j, dir);
      if (lines) fputs(lines, stdout);
      if (no_data) printf("  output %s, inputs: not checked (--no-data)\n", dir);
    }
    free(lines);
    train_job_free(&j);
    return rc < 0 ? cli_fail("train") : 0;
  }
  /* device: a backend this coemu was not built with is an error before MPI */
  const nn_backend *be = nn_backend_by_name(j.device);
  if (!be) {
    ce_err_prefix("%s: device", j.path);
    train_job_free(&j);
    return cli_fail("train");
  }
  if (nn_backend_check_precision(be, j.precision) < 0) {
    ce_err_prefix("%s: precision", j.path);
    train_job_free(&j);
    return cli_fail("train");
  }
  MPI_Init(&argc, &argv);
  mpi_fatal_init("train");
  int world;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  /* the one place the thread settings are made: the CPU backend's init
     (OpenMP to the job's count; 0: OMP_NUM_THREADS, else this rank's share
     of its CPUs, pipeline/mpi/mpi_node.h; OpenBLAS to 1); the CPU backend
     also reads checkpoints for the encoder transfer. The device's backend:
     its init fails clearly without a device. */
  mpi_node_default_threads(); /* collective: every rank */
  int rc = nn_backend_init(&nn_backend_cpu, j.threads), be_ready = 0;
  if (rc == 0 && be != &nn_backend_cpu) {
    rc = nn_backend_init(be, j.threads);
    if (rc < 0) ce_err_prefix("%s: device %s", j.path, j.device);
    be_ready = rc == 0;
  }
  train_run_opts o = {out, max_steps, time_limit, quiet, extend, MPI_COMM_WORLD, be};
  if (rc == 0) rc = train_run(&j, &o);
  if (rc == TRAIN_RUN_REFUSED && world > 1) {
    mpi_any_failed(-1); /* every rank is here: the lowest one's message, no abort */
  } else if (rc < 0) {
    if (world > 1) mpi_fatal(ce_err_msg());
    fprintf(stderr, "coemu train: error: %s\n", ce_err_msg());
  }
  if (be_ready) nn_backend_finish(be);
  nn_backend_finish(&nn_backend_cpu);
  train_job_free(&j);
  MPI_Finalize();
  return rc < 0 ? 1 : rc;
}
