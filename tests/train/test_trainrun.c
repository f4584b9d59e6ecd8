/* test_trainrun.c - pipeline/train/trainrun.c linked directly: a tiny
 * fine-tuning job (16^3 cubes, 2 channels, a scaled-down COEmuNet, 2 epochs
 * of 6 steps) on a small dataset (tests/dataset_fixture.h), run through
 * train_run() in this process. Run with 1 and 2 MPI ranks.
 *   - an uninterrupted run writes train.yaml, last.ckpt (state: 2 epochs,
 *     12 steps), best.ckpt, train.csv (12 rows), validation.csv (the
 *     untrained baseline and one row per epoch), input.csv (one row per
 *     epoch: its input wait fraction) and loss.png;
 *   - runs stopped with max_steps (mid-epoch, exactly at an epoch's last
 *     step, twice in a row) return TRAIN_RUN_STOPPED with a checkpoint at
 *     the stop, and resumed give train.csv and validation.csv rows equal
 *     to the uninterrupted run's, value for value (all but the timing
 *     columns): the data order, the model and the optimiser state are all
 *     restored and the arithmetic is deterministic;
 *   - a complete stage is skipped on a rerun (nothing appended);
 *   - another job in the same directory is refused, naming the directory
 *     and the keys that differ; a batch the ranks cannot share is refused;
 *   - a finished run extended (--extend) by an epoch and a schedule that
 *     starts there ends byte-identical to an uninterrupted run of the final
 *     job (checkpoints) and value-identical in its logs; the change is
 *     recorded (train.N.yaml, train.log); other keys, epochs taken back and a
 *     pretrain stage grown under a started finetune stage are refused;
 *   - a start that fails on its inputs (no such dataset, an unfinished one,
 *     a truncated shard, a batch the ranks cannot share) fails before it
 *     writes anything, naming the job, the key's position, the key and what
 *     is missing, so the corrected job starts in the same directory; a
 *     directory that a failed start of another job left without a checkpoint
 *     or a step (as older versions did) is taken over.
 */
#include <math.h>
#include <mpi.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "common/fsutil.h"
#include "dataset_fixture.h"
#include "pipeline/job/trainjob.h"
#include "pipeline/train/trainrun.h"
#include "trainer/checkpoint.h"
#include "trainer/nn.h"

/* 12 models x 2 directions: 6 training models = 12 samples (6 steps of 2
 * per epoch), 3 validation models = 6 samples */
static const fixture_spec SPEC = {.models = 12, .directions = 2, .n = 16, .nf = 2,
                                  .samples_per_shard = 8, .stats = 1};
static int g_rank, g_world;
static char g_tmp[1024], g_dir[1100];

/* The unit job on dataset directory ds, with `epochs` and `extra` lines
 * added to the finetune stage. */
static int make_job_at(train_job *j, const char *ds, uint64_t seed, int batch, int epochs,
                       const char *extra) {
  char text[2048];
  snprintf(text, sizeof text,
           "name: unit\n"
           "seed: %llu\n"
           "model: {stem: 2, encoder: [4, 4, 8], latent: 32, decoder: 16}\n"
           "finetune:\n"
           "  data: {dataset: %s}\n"
           "  validation: {split: validation, batch: 4, max_samples: 5}\n"
           "  epochs: %d\n"
           "  batch: %d\n"
           "  optimizer: {lr: 3.0e-3, eps: 1.0e-3}\n"
           "  checkpoint_every: 4\n%s",
           (unsigned long long)seed, ds, epochs, batch, extra);
  return train_job_parse("<unit job>", text, strlen(text), g_tmp, j);
}

static int make_job_ex(train_job *j, uint64_t seed, int batch, int epochs, const char *extra) {
  return make_job_at(j, g_dir, seed, batch, epochs, extra);
}

/* make_job's text on another dataset directory. */
static int make_job_on(train_job *j, const char *ds, uint64_t seed, int batch) {
  return make_job_at(j, ds, seed, batch, 2, "");
}

static int make_job(train_job *j, uint64_t seed, int batch) {
  return make_job_on(j, g_dir, seed, batch);
}

static int run_ex(const train_job *j, const char *out, int64_t max_steps, int extend) {
  train_run_opts o = {.out_dir = out, .max_steps = max_steps, .quiet = 1, .extend = extend,
                      .comm = MPI_COMM_WORLD};
  ce_err_clear();
  return train_run(j, &o);
}

static int run(const train_job *j, const char *out, int64_t max_steps) {
  return run_ex(j, out, max_steps, 0);
}

static char *slurp(const char *dir, const char *file) {
  char p[1400], *text = NULL;
  size_t len;
  snprintf(p, sizeof p, "%s/%s", dir, file);
  if (fs_read_all(p, &text, &len) < 0) return NULL;
  return text;
}

/* The rows of a CSV with their last `drop` columns removed (timings). */
static int rows_without(const char *text, int drop, char rows[][256], int max) {
  int n = 0;
  for (const char *line = text; line && *line && n < max; n++) {
    const char *nl = strchr(line, '\n');
    size_t len = nl ? (size_t)(nl - line) : strlen(line);
    char buf[256];
    snprintf(buf, sizeof buf, "%.*s", (int)len, line);
    for (int d = 0; d < drop; d++) {
      char *c = strrchr(buf, ',');
      if (c) *c = 0;
    }
    snprintf(rows[n], 256, "%s", buf);
    line = nl ? nl + 1 : NULL;
  }
  return n;
}

static int exists(const char *dir, const char *file) {
  char p[1400];
  snprintf(p, sizeof p, "%s/%s", dir, file);
  return access(p, F_OK) == 0;
}

static train_state ckpt_state(const char *path) {
  train_state st;
  memset(&st, 0, sizeof st);
  coemunet_config c;
  CHECK_OK(checkpoint_read_config(path, &c, &st));
  return st;
}

static char g_ref_train[32][256], g_ref_val[8][256];
static int g_ref_ntrain, g_ref_nval;

static void test_uninterrupted(void) {
  train_job j;
  CHECK_OK(make_job(&j, 9, 2));
  char out[1200];
  snprintf(out, sizeof out, "%s/a", g_tmp);
  int rc = run(&j, out, 0);
  CHECK_MSG(rc == 0, "train_run: %d (%s)", rc, ce_err_msg());
  if (g_rank == 0) {
    char st[1300];
    snprintf(st, sizeof st, "%s/finetune", out);
    CHECK(exists(out, "train.yaml") && !exists(out, "pretrain"));
    const char *files[5] = {"last.ckpt", "best.ckpt", "train.csv", "validation.csv", "loss.png"};
    for (int k = 0; k < 5; k++) CHECK_MSG(exists(st, files[k]), "finetune/%s missing", files[k]);
    char ck[1400];
    snprintf(ck, sizeof ck, "%s/last.ckpt", st);
    train_state s = ckpt_state(ck);
    CHECK(s.epoch == 2 && s.step == 12 && s.seed == 9);
    char *t = slurp(st, "train.csv"), *v = slurp(st, "validation.csv");
    g_ref_ntrain = t ? rows_without(t, 1, g_ref_train, 32) : 0;
    g_ref_nval = v ? rows_without(v, 1, g_ref_val, 8) : 0;
    CHECK_MSG(g_ref_ntrain == 13, "train.csv: %d lines, expected a header and 12 rows", g_ref_ntrain);
    CHECK_MSG(g_ref_nval == 4, "validation.csv: %d lines, expected a header and 3 rows", g_ref_nval);
    CHECK(!strncmp(g_ref_train[1], "1,0,", 4) && !strncmp(g_ref_train[12], "12,1,", 5));
    CHECK(!strncmp(g_ref_val[1], "0,0,", 4) && !strncmp(g_ref_val[2], "6,1,", 4) &&
          !strncmp(g_ref_val[3], "12,2,", 5));
    /* the loss went down (lr 3e-3 on 12 samples) */
    double l1 = 0, l12 = 0;
    if (g_ref_ntrain == 13) {
      sscanf(g_ref_train[1], "%*[^,],%*[^,],%*[^,],%lf", &l1);
      sscanf(g_ref_train[12], "%*[^,],%*[^,],%*[^,],%lf", &l12);
    }
    CHECK_MSG(l1 > 0 && l12 > 0 && l12 < l1, "training loss %g -> %g", l1, l12);
    /* input.csv: one row per epoch, a wait fraction in [0, 1] that is
       wait / seconds */
    char *in = slurp(st, "input.csv"), inrows[8][256];
    int nin = in ? rows_without(in, 0, inrows, 8) : 0;
    CHECK_MSG(nin == 3, "input.csv: %d lines, expected a header and 2 rows", nin);
    CHECK(nin > 0 && !strcmp(inrows[0], "epoch,seconds,input_wait_s,wait_fraction"));
    for (int r = 1; r < nin; r++) {
      unsigned e = 99;
      double secs = -1, wait = -1, frac = -1;
      CHECK(sscanf(inrows[r], "%u,%lf,%lf,%lf", &e, &secs, &wait, &frac) == 4);
      CHECK(e == (unsigned)(r - 1) && secs > 0 && wait >= 0 && wait <= secs + 1e-3);
      CHECK(frac >= 0 && frac <= 1 && fabs(frac - wait / secs) < 1e-3 + 1e-3 / secs) /* printed to 3 and 4 decimals */;
    }
    free(in);
    free(t);
    free(v);
  }
  /* a complete stage: skipped, nothing appended */
  CHECK(run(&j, out, 0) == 0);
  if (g_rank == 0) {
    char st[1300], rows[32][256];
    snprintf(st, sizeof st, "%s/finetune", out);
    char *t = slurp(st, "train.csv");
    CHECK(t && rows_without(t, 1, rows, 32) == 13);
    free(t);
  }
  train_job_free(&j);
}

/* Stop after each of `stops` steps (0: to the end), then compare. */
static void stop_and_resume(const char *name, const int64_t *stops, int nstops) {
  train_job j;
  CHECK_OK(make_job(&j, 9, 2));
  char out[1200], st[1300], ck[1400];
  snprintf(out, sizeof out, "%s/%s", g_tmp, name);
  snprintf(st, sizeof st, "%s/finetune", out);
  snprintf(ck, sizeof ck, "%s/last.ckpt", st);
  int64_t done = 0;
  for (int k = 0; k < nstops; k++) {
    int rc = run(&j, out, stops[k]);
    int want = stops[k] ? TRAIN_RUN_STOPPED : 0;
    CHECK_MSG(rc == want, "%s: run %d (max_steps %lld): %d, expected %d (%s)", name, k,
              (long long)stops[k], rc, want, ce_err_msg());
    done = stops[k] ? done + stops[k] : 12;
    if (g_rank == 0) {
      train_state s = ckpt_state(ck);
      CHECK_MSG(s.step == (uint64_t)done, "%s: checkpoint at step %llu, expected %lld", name,
                (unsigned long long)s.step, (long long)done);
      char *t = slurp(st, "train.csv"), rows[32][256];
      CHECK(t && rows_without(t, 1, rows, 32) == 1 + done);
      free(t);
    }
  }
  if (g_rank == 0) {
    char *t = slurp(st, "train.csv"), *v = slurp(st, "validation.csv");
    char rt[32][256], rv[8][256];
    int nt = t ? rows_without(t, 1, rt, 32) : 0, nv = v ? rows_without(v, 1, rv, 8) : 0;
    CHECK_MSG(nt == g_ref_ntrain && nv == g_ref_nval, "%s: %d and %d lines, expected %d and %d",
              name, nt, nv, g_ref_ntrain, g_ref_nval);
    for (int r = 0; r < nt && r < g_ref_ntrain; r++)
      CHECK_MSG(!strcmp(rt[r], g_ref_train[r]), "%s: train.csv row %d: '%s', uninterrupted '%s'",
                name, r, rt[r], g_ref_train[r]);
    for (int r = 0; r < nv && r < g_ref_nval; r++)
      CHECK_MSG(!strcmp(rv[r], g_ref_val[r]), "%s: validation.csv row %d: '%s', uninterrupted '%s'",
                name, r, rv[r], g_ref_val[r]);
    free(t);
    free(v);
  }
  train_job_free(&j);
}

static void test_resume_mid_epoch(void) {
  const int64_t stops[2] = {5, 0}; /* after a checkpoint_every checkpoint (4), mid-epoch */
  stop_and_resume("mid", stops, 2);
}

static void test_resume_at_epoch_end(void) {
  const int64_t stops[3] = {6, 3, 0}; /* the last step of epoch 0, then mid-epoch 1 */
  stop_and_resume("edge", stops, 3);
}

static void test_refusals(void) {
  train_job other;
  CHECK_OK(make_job(&other, 10, 2));
  char out[1200];
  snprintf(out, sizeof out, "%s/a", g_tmp);
  int rc = run(&other, out, 0);
  CHECK_MSG(rc < 0, "another job in a used directory: %d", rc);
  if (g_rank == 0) {
    CHECK_MSG(strstr(ce_err_msg(), "holds a run of another training job") &&
                  strstr(ce_err_msg(), out) && strstr(ce_err_msg(), "seed 9 -> 10") &&
                  !strstr(ce_err_msg(), "--extend"),
              "message: %s", ce_err_msg());
    char *t = slurp(out, "finetune/train.csv"), rows[32][256];
    CHECK(t && rows_without(t, 1, rows, 32) == 13); /* untouched */
    free(t);
  } else
    CHECK(strstr(ce_err_msg(), "rank 0 could not prepare"));
  train_job_free(&other);
  if (g_world > 1) { /* batch 3 over 2 ranks */
    train_job odd;
    CHECK_OK(make_job(&odd, 9, 3));
    snprintf(out, sizeof out, "%s/odd", g_tmp);
    CHECK_ERR(run(&odd, out, 0), "batch 3 is not divisible by the 2 ranks");
    CHECK(strstr(ce_err_msg(), "<unit job>: finetune.batch: "));
    CHECK_MSG(!exists(out, ""), "a start refused for its batch leaves nothing: %s exists", out);
    train_job_free(&odd);
  }
}

static char *slurp_len(const char *dir, const char *file, size_t *len);

/* A start whose dataset is bad fails before writing anything: the message
 * names the job, the position and key of data.dataset and what is wrong. */
static void failed_start(const char *ds, const char *out, const char *what, const char *not) {
  train_job j;
  CHECK_OK(make_job_on(&j, ds, 9, 2));
  int rc = run(&j, out, 0);
  CHECK_MSG(rc < 0, "%s: %d", what, rc);
  CHECK_MSG(strstr(ce_err_msg(), "<unit job>:5:19: finetune.data.dataset: ") &&
                strstr(ce_err_msg(), ds) && strstr(ce_err_msg(), what) &&
                (!not || !strstr(ce_err_msg(), not)),
            "%s: message: %s", what, ce_err_msg());
  MPI_Barrier(MPI_COMM_WORLD);
  CHECK_MSG(!exists(out, ""), "%s: the failed start left %s", what, out);
  train_job_free(&j);
}

/* The locks a test's runs took on a directory (one per run, fs_lock_dir):
 * released, as a process holds at most 8 directories. */
static void unlock(const char *dir) {
  for (int k = 0; k < 16; k++) fs_unlock_dir(dir);
}

static int lines_of(const char *dir, const char *file) {
  char *t = slurp(dir, file);
  if (!t) return -1;
  int n = 0;
  for (const char *c = t; *c; c++) n += *c == '\n';
  free(t);
  return n;
}

static void test_failed_start(void) {
  char out[1200], ds[1200];
  snprintf(out, sizeof out, "%s/fs", g_tmp);
  snprintf(ds, sizeof ds, "%s/no-such-ds", g_tmp);
  failed_start(ds, out, "no such dataset folder", NULL);
  /* a dataset `coemu generate` has not finished: the words every reader uses */
  snprintf(ds, sizeof ds, "%s/unfinished", g_tmp);
  if (g_rank == 0) {
    char p[1300];
    CHECK_OK(fs_mkdir_p(ds));
    snprintf(p, sizeof p, "%s/job.yaml", ds);
    FILE *f = fopen(p, "w");
    CHECK(f && fputs("name: t\n", f) >= 0 && fclose(f) == 0);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  failed_start(ds, out, "is not a finished dataset", "--live");
  CHECK(strstr(ce_err_msg(), "coemu generate"));
  /* a truncated shard, then the corrected job in the same directory */
  snprintf(ds, sizeof ds, "%s/trunc", g_tmp);
  if (fixture_make(ds, &SPEC) < 0) CHECK_MSG(0, "fixture: %s", ce_err_msg());
  if (g_rank == 0) {
    char shard[1400];
    CHECK_OK(dataset_shard_path(ds, 1, shard, sizeof shard));
    CHECK(truncate(shard, 5000) == 0);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  failed_start(ds, out, "truncated", NULL);
  train_job good;
  CHECK_OK(make_job(&good, 9, 2));
  int rc = run(&good, out, 1);
  CHECK_MSG(rc == TRAIN_RUN_STOPPED, "the corrected job after a failed start: %d: %s", rc,
            ce_err_msg());
  unlock(out);
  unlock(ds);
  /* what an older coemu's failed start left: another job's train.yaml, an
     empty stage folder, the untrained baseline; no checkpoint, no step */
  snprintf(out, sizeof out, "%s/left", g_tmp);
  if (g_rank == 0) {
    train_job other;
    CHECK_OK(make_job_on(&other, ds, 9, 2));
    char p[1400];
    snprintf(p, sizeof p, "%s/finetune", out);
    CHECK_OK(fs_mkdir_p(p));
    snprintf(p, sizeof p, "%s/train.yaml", out);
    FILE *f = fopen(p, "w");
    CHECK(f && fwrite(other.text, 1, other.text_len, f) == other.text_len && fclose(f) == 0);
    snprintf(p, sizeof p, "%s/finetune/validation.csv", out);
    f = fopen(p, "w");
    CHECK(f && fputs("step,epoch,loss\n0,0,1.5\n", f) >= 0 && fclose(f) == 0);
    snprintf(p, sizeof p, "%s/finetune/train.csv", out);
    f = fopen(p, "w");
    CHECK(f && fputs("step,epoch,lr,loss,mse,fft,samples_per_s\n", f) >= 0 && fclose(f) == 0);
    train_job_free(&other);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  rc = run(&good, out, 1);
  CHECK_MSG(rc == TRAIN_RUN_STOPPED, "a folder left by a failed start is taken over: %d: %s", rc,
            ce_err_msg());
  if (g_rank == 0) {
    size_t len = 0;
    char *t = slurp_len(out, "train.yaml", &len);
    CHECK_MSG(t && len == good.text_len && !memcmp(t, good.text, len), "train.yaml is the new job's");
    free(t);
    CHECK(lines_of(out, "finetune/train.csv") == 2);      /* header + the one step */
    CHECK(lines_of(out, "finetune/validation.csv") == 2); /* header + the new baseline */
  }
  unlock(out);
  train_job_free(&good);
}

/* The bytes of a file (NULL if unreadable); *len its size. */
static char *slurp_len(const char *dir, const char *file, size_t *len) {
  char p[1400], *text = NULL;
  snprintf(p, sizeof p, "%s/%s", dir, file);
  if (fs_read_all(p, &text, len) < 0) return NULL;
  return text;
}

static int same_file(const char *a, const char *b, const char *file) {
  size_t la = 0, lb = 0;
  char *x = slurp_len(a, file, &la), *y = slurp_len(b, file, &lb);
  int same = x && y && la == lb && memcmp(x, y, la) == 0;
  free(x);
  free(y);
  return same;
}

/* A finished run extended (--extend) by one epoch and a step schedule that
 * starts at the new epoch, against an uninterrupted run of the final job:
 * the same by construction (the data order and the rate are functions of
 * (seed, epoch); the epoch-1 checkpoint holds the whole state), so the
 * checkpoints are compared byte for byte and the logs value for value. */
static void test_extend(void) {
  const char *sched = "  schedule: {step_size: 1, gamma: 0.5}\n";
  train_job first, final;
  CHECK_OK(make_job_ex(&first, 9, 2, 1, ""));
  CHECK_OK(make_job_ex(&final, 9, 2, 2, sched));
  char ref[1200], ext[1200], rst[1300], est[1300];
  snprintf(ref, sizeof ref, "%s/ext_ref", g_tmp);
  snprintf(ext, sizeof ext, "%s/ext", g_tmp);
  snprintf(rst, sizeof rst, "%s/finetune", ref);
  snprintf(est, sizeof est, "%s/finetune", ext);
  CHECK_MSG(run(&final, ref, 0) == 0, "uninterrupted: %s", ce_err_msg());
  CHECK_MSG(run(&first, ext, 0) == 0, "first run: %s", ce_err_msg());
  /* without --extend: refused, naming the keys and the flag */
  CHECK(run(&final, ext, 0) < 0);
  if (g_rank == 0)
    CHECK_MSG(strstr(ce_err_msg(), "finetune.epochs 1 -> 2") &&
                  strstr(ce_err_msg(), "finetune.schedule.step_size 0 -> 1") &&
                  strstr(ce_err_msg(), "finetune.schedule.gamma 0.1 -> 0.5") &&
                  strstr(ce_err_msg(), "rerun with --extend"),
              "message: %s", ce_err_msg());
  int rc = run_ex(&final, ext, 0, 1);
  CHECK_MSG(rc == 0, "extended: %d (%s)", rc, ce_err_msg());
  if (g_rank == 0) {
    CHECK_MSG(same_file(rst, est, "last.ckpt"), "extended last.ckpt differs from the uninterrupted one");
    CHECK_MSG(same_file(rst, est, "best.ckpt"), "extended best.ckpt differs from the uninterrupted one");
    char *t = slurp(est, "train.csv"), *v = slurp(est, "validation.csv");
    char *t0 = slurp(rst, "train.csv"), *v0 = slurp(rst, "validation.csv");
    char a[32][256], b[32][256], c[8][256], d[8][256];
    int na = t ? rows_without(t, 1, a, 32) : 0, nb = t0 ? rows_without(t0, 1, b, 32) : 0;
    int nc = v ? rows_without(v, 1, c, 8) : 0, nd = v0 ? rows_without(v0, 1, d, 8) : 0;
    CHECK_MSG(na == 13 && na == nb && nc == 4 && nc == nd, "rows: %d %d %d %d", na, nb, nc, nd);
    for (int r = 0; r < na && r < nb; r++)
      CHECK_MSG(!strcmp(a[r], b[r]), "train.csv row %d: '%s', uninterrupted '%s'", r, a[r], b[r]);
    for (int r = 0; r < nc && r < nd; r++)
      CHECK_MSG(!strcmp(c[r], d[r]), "validation.csv row %d: '%s', uninterrupted '%s'", r, c[r], d[r]);
    /* the new rate holds from epoch 1: 3e-3 * 0.5 */
    CHECK_MSG(na == 13 && !strncmp(a[7], "7,1,0.0015,", 11), "step 7: %s", na == 13 ? a[7] : "");
    /* the record: the old text kept, the new one in train.yaml, the change logged */
    char *y1 = slurp(ext, "train.1.yaml"), *y = slurp(ext, "train.yaml"), *log = slurp(ext, "train.log");
    CHECK(y1 && strlen(y1) == first.text_len && !memcmp(y1, first.text, first.text_len));
    CHECK(y && strlen(y) == final.text_len && !memcmp(y, final.text, final.text_len));
    CHECK_MSG(log && strstr(log, "extend: <unit job> replaces the job (the previous one is kept as "
                                 "train.1.yaml)") &&
                  strstr(log, "extend:   finetune.epochs: 1 -> 2\n") &&
                  strstr(log, "extend:   finetune.schedule.step_size: 0 -> 1 (from epoch 1 on)\n") &&
                  strstr(log, "extend:   finetune.schedule.gamma: 0.1 -> 0.5 (from epoch 1 on)\n"),
              "train.log: %s", log ? log : "(missing)");
    free(t), free(v), free(t0), free(v0), free(y1), free(y), free(log);
  }
  /* the final job now resumes there without --extend (complete: skipped) */
  CHECK_MSG(run(&final, ext, 0) == 0, "rerun of the final job: %s", ce_err_msg());

  /* refused, naming the key, with nothing recorded */
  train_job bigger, fewer, reseed;
  CHECK_OK(make_job_ex(&bigger, 9, 4, 3, sched));
  CHECK_OK(make_job_ex(&fewer, 9, 2, 1, sched));
  CHECK_OK(make_job_ex(&reseed, 10, 2, 3, sched));
  CHECK(run_ex(&bigger, ext, 0, 1) < 0);
  if (g_rank == 0)
    CHECK_MSG(strstr(ce_err_msg(), "--extend cannot change finetune.batch 2 -> 4") &&
                  !strstr(ce_err_msg(), "epochs"), "message: %s", ce_err_msg());
  CHECK(run_ex(&reseed, ext, 0, 1) < 0);
  if (g_rank == 0)
    CHECK_MSG(strstr(ce_err_msg(), "--extend cannot change seed 9 -> 10"), "message: %s", ce_err_msg());
  CHECK(run_ex(&fewer, ext, 0, 1) < 0);
  if (g_rank == 0) {
    CHECK_MSG(strstr(ce_err_msg(), "--extend cannot change finetune.epochs to 1: the finetune "
                                   "stage has already trained 2 epochs"), "message: %s", ce_err_msg());
    CHECK(!exists(ext, "train.2.yaml"));
    char *y = slurp(ext, "train.yaml"), *log = slurp(ext, "train.log");
    CHECK(y && strlen(y) == final.text_len && !memcmp(y, final.text, final.text_len));
    CHECK(log && !strstr(log, "train.2.yaml"));
    free(y), free(log);
  }
  train_job_free(&bigger), train_job_free(&fewer), train_job_free(&reseed);
  train_job_free(&first), train_job_free(&final);
}

/* A pretrain stage may not grow under a finetune stage that already took its
 * weights: a run folder with both stages' checkpoints (any checkpoint after
 * 2 epochs serves: the check reads the epoch counts before anything runs). */
static void test_extend_pretrain_refused(void) {
  char out[1200], text[4096], src[1300];
  snprintf(out, sizeof out, "%s/twostage", g_tmp);
  snprintf(src, sizeof src, "%s/ext_ref/finetune/last.ckpt", g_tmp);
  const char *fmt = "seed: 9\n"
                    "pretrain: {data: {dataset: %s}, epochs: %d}\n"
                    "finetune: {data: {dataset: %s}, epochs: 2}\n";
  snprintf(text, sizeof text, fmt, g_dir, 2, g_dir);
  if (g_rank == 0) {
    char *ck;
    size_t len;
    CHECK_OK(fs_mkdir_p(out));
    CHECK_OK(fs_read_all(src, &ck, &len));
    const char *stages[2] = {"pretrain", "finetune"};
    for (int k = 0; k < 2; k++) {
      char d[1400], p[1500];
      snprintf(d, sizeof d, "%s/%s", out, stages[k]);
      snprintf(p, sizeof p, "%s/last.ckpt", d);
      CHECK_OK(fs_mkdir_p(d));
      FILE *f = fopen(p, "wb");
      CHECK(f && fwrite(ck, 1, len, f) == len && fclose(f) == 0);
    }
    snprintf(src, sizeof src, "%s/train.yaml", out);
    FILE *f = fopen(src, "wb");
    CHECK(f && fwrite(text, 1, strlen(text), f) == strlen(text) && fclose(f) == 0);
    free(ck);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  snprintf(text, sizeof text, fmt, g_dir, 3, g_dir);
  train_job j;
  CHECK_OK(train_job_parse("<two-stage job>", text, strlen(text), g_tmp, &j));
  CHECK(run_ex(&j, out, 0, 1) < 0);
  if (g_rank == 0)
    CHECK_MSG(strstr(ce_err_msg(), "--extend cannot change pretrain.epochs to 3: the finetune "
                                   "stage has already started from the pretrain stage's weights"),
              "message: %s", ce_err_msg());
  train_job_free(&j);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_world);
  if (g_rank == 0) snprintf(g_tmp, sizeof g_tmp, "%s", check_scratch("trainrun"));
  MPI_Bcast(g_tmp, sizeof g_tmp, MPI_CHAR, 0, MPI_COMM_WORLD);
  snprintf(g_dir, sizeof g_dir, "%s/ds", g_tmp);
  if (nn_backend_init(&nn_backend_cpu, 1) < 0 || fixture_make(g_dir, &SPEC) < 0) {
    fprintf(stderr, "test_trainrun: rank %d: %s\n", g_rank, ce_err_msg());
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  RUN(test_uninterrupted);
  RUN(test_resume_mid_epoch);
  RUN(test_resume_at_epoch_end);
  RUN(test_refusals);
  RUN(test_failed_start);
  RUN(test_extend);
  RUN(test_extend_pretrain_refused);
  nn_backend_finish(&nn_backend_cpu);
  MPI_Barrier(MPI_COMM_WORLD);
  if (g_rank == 0) check_scratch_remove();
  int failed = check_report(), any = 0;
  MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return any;
}
