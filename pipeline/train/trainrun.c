/* trainrun.c - the training loop of `coemu train` (trainrun.h). */
#include "pipeline/train/trainrun.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/checksum.h"
#include "common/env.h"
#include "common/error.h"
#include "common/fsutil.h"
#include "common/progress.h"
#include "pipeline/serve/serve.h"
#include "pipeline/train/evaluate.h"
#include "pipeline/train/feed.h"
#include "pipeline/train/reducer_mpi.h"
#include "pipeline/train/runrecord.h"
#include "pipeline/train/train_data.h"
#include "pipeline/train/train_inputs.h"
#include "pipeline/train/trainplot.h"
#include "trainer/checkpoint.h"
#include "trainer/coemunet.h"
#include "trainer/nccl_comm.h"
#include "trainer/optim.h"
#include "trainer/train.h"

static const char *STAGE_NAME[TRAIN_STAGES] = {"pretrain", "finetune"};

static volatile sig_atomic_t g_stop_signal = 0;
static void on_signal(int sig) { g_stop_signal = sig; }

/* ---- small file helpers --------------------------------------------------- */

static int path_exists(const char *p) { return access(p, F_OK) == 0; }

/* Write `len` bytes to `path` atomically. */
static int write_file(const char *path, const char *text, size_t len) {
  FILE *f;
  char tmp[4300];
  CE_TRY(fs_open_tmp(path, tmp, sizeof tmp, &f));
  int ok = fwrite(text, 1, len, f) == len;
  return fs_commit_tmp(f, tmp, path, ok);
}

/* The epochs OUT/<stage>/last.ckpt has trained (-1: the stage has not started). */
static int stage_epochs_done(const char *out, int id, int64_t *done) {
  char p[4300];
  snprintf(p, sizeof p, "%s/%s/last.ckpt", out, STAGE_NAME[id]);
  *done = -1;
  if (!path_exists(p)) return 0;
  coemunet_config c;
  train_state st;
  CE_TRY(checkpoint_read_config(p, &c, &st));
  *done = st.epoch;
  return 0;
}

#define MAX_CHANGES 64

/* "key before -> after, ..." of the changes (only the refused ones if `refused`). */
static void change_list(const train_job_change *ch, int n, int refused, char *buf, size_t len) {
  size_t k = 0;
  buf[0] = 0;
  for (int i = 0; i < n && k + 1 < len; i++) {
    if (refused && ch[i].extendable) continue;
    int w = snprintf(buf + k, len - k, "%s%s %s -> %s", k ? ", " : "", ch[i].key, ch[i].before,
                     ch[i].after);
    if (w < 0) break;
    k += (size_t)w;
  }
  if (k >= len && len > 4) strcpy(buf + len - 4, "...");
}

/* OUT/train.yaml now holds j's text: the record names j's folder (the
 * datasets recorded stay: the run goes on with them). */
static int record_job(const char *out, const train_job *j, run_record *rec) {
  run_record_where(j->dir, rec->job_dir, sizeof rec->job_dir);
  return run_record_write(out, rec);
}

/* How a job stands to OUT (prepare_out). */
typedef enum {
  OUT_NEW,        /* no run there: it starts */
  OUT_TAKE_OVER,  /* only what a failed start of another job left */
  OUT_SAME,       /* the same job (or one naming the same data by other paths): it resumes */
  OUT_EXTEND      /* another job that --extend takes */
} out_state;

/* The folder a run's job text was read against: the record's, else (a run
 * made before the record) the new job's, the best guess there is. */
static const char *old_job_dir(const run_record *rec, const train_job *j) {
  return *rec->job_dir ? rec->job_dir : j->dir;
}

/* Do the old and the new path of the dataset key `key`
 * ("finetune.data.dataset") name the same dataset? The dataset id the
 * record holds for the key (for a run made before the record: the old
 * path's, where it still reads) against the new path's. */
static int same_dataset(const run_record *rec, const char *key, const char *old_path,
                        const char *new_path) {
  uint64_t was, now;
  const run_dataset *d = run_record_get(rec, key);
  if (d) was = d->id;
  else if (!*old_path || serve_dataset_dir_id(old_path, &was) < 0) {
    ce_err_clear();
    return 0;
  }
  int same = *new_path && serve_dataset_dir_id(new_path, &now) == 0 && now == was;
  ce_err_clear();
  return same;
}

/* Drop from ch[0..n) the dataset keys whose old and new paths name the same
 * dataset (same_dataset); returns the new count. */
static int drop_same_datasets(train_job_change *ch, int n, const train_job *old,
                              const train_job *j, const run_record *rec) {
  int k = 0;
  for (int i = 0; i < n; i++) {
    const train_job_change *c = &ch[i];
    int drop = 0;
    if (c->stage >= 0) {
      const train_stage *a = &old->stage[c->stage], *b = &j->stage[c->stage];
      const char *sub = strchr(c->key, '.') + 1;
      if (!strcmp(sub, "data.dataset")) drop = same_dataset(rec, c->key, a->dataset, b->dataset);
      if (!strcmp(sub, "validation.dataset"))
        drop = same_dataset(rec, c->key, a->val_dataset, b->val_dataset);
    }
    if (!drop) ch[k++] = *c;
  }
  return k;
}

/* OUT/train.yaml holds another job's text: the same job when only the paths
 * of its datasets differ and they name the same datasets (*state OUT_SAME),
 * else refused, or with --extend checked key by key against the run so far
 * (OUT_EXTEND) and, with `record`, recorded (trainrun.h). */
static int job_changed(const char *out, const char *p, const char *text, size_t len,
                       const train_job *j, const train_run_opts *o, int record,
                       run_record *rec, out_state *state) {
  train_job old;
  /* relative paths of the recorded text against the folder they were
     written for, so they name what the run read */
  if (train_job_parse(p, text, len, old_job_dir(rec, j), &old) < 0)
    return ce_err_prefix("%s holds a run of another training job (%s differs from %s), and "
                         "%s does not read as a training job", out, p, j->path, p);
  train_job_change ch[MAX_CHANGES];
  int n0 = train_job_diff(&old, j, ch, MAX_CHANGES);
  int n = n0 <= MAX_CHANGES ? drop_same_datasets(ch, n0, &old, j, rec) : n0;
  int shown = n < MAX_CHANGES ? n : MAX_CHANGES;
  if (n0 > 0 && n == 0) { /* the same data by other paths: the same run */
    train_job_free(&old);
    *state = OUT_SAME;
    return 0;
  }
  int all_ext = n <= MAX_CHANGES;
  for (int i = 0; i < shown; i++) all_ext &= ch[i].extendable;
  char list[2048];
  change_list(ch, shown, 0, list, sizeof list);
  /* a run made before the record: its relative paths were read here, which
     a message listing a path says */
  int paths = 0;
  for (int i = 0; i < shown; i++)
    paths |= strstr(ch[i].key, "dataset") || strstr(ch[i].key, "_key") ||
             strstr(ch[i].key, ".stats") || strstr(ch[i].key, ".init");
  char guess[4400] = "";
  if (!*rec->job_dir && paths)
    snprintf(guess, sizeof guess, "; %.1000s's relative paths read against %.1000s's folder, as "
             "%.1000s records no folder of its own (a run made before coemu wrote %.1000s/run.json)",
             p, j->path, out, out);
  if (!o->extend) {
    train_job_free(&old);
    CE_FAIL("%s holds a run of another training job (%s differs from %s: %s%s): %s", out, p,
            j->path, n ? list : "comments or layout only", guess,
            all_ext ? "rerun with --extend to continue the run under the new job, or use "
                      "another output directory"
                    : "use another output directory");
  }
  *state = OUT_EXTEND;
  if (!all_ext) {
    change_list(ch, shown, 1, list, sizeof list);
    train_job_free(&old);
    CE_FAIL("%s: --extend cannot change %s: the run so far was made with the old value%s%s; use "
            "another output directory", out, list, n > MAX_CHANGES ? " (and more keys differ)" : "",
            guess);
  }
  /* against the checkpoints: no epochs taken back, no pretrain stage grown
     under a finetune stage that already started from its weights */
  int64_t done[TRAIN_STAGES];
  int rc = 0;
  for (int id = 0; id < TRAIN_STAGES && rc == 0; id++) rc = stage_epochs_done(out, id, &done[id]);
  for (int id = 0; id < TRAIN_STAGES && rc == 0; id++) {
    const train_stage *st = &j->stage[id];
    if (st->enabled && done[id] > st->epochs)
      rc = ce_err("%s: --extend cannot change %s.epochs to %lld: the %s stage has already trained "
                  "%lld epochs; use another output directory", out, STAGE_NAME[id],
                  (long long)st->epochs, STAGE_NAME[id], (long long)done[id]);
  }
  const train_stage *pre = &j->stage[TRAIN_STAGE_PRETRAIN], *fin = &j->stage[TRAIN_STAGE_FINETUNE];
  if (rc == 0 && pre->enabled && fin->enabled && fin->transfer && !*fin->init &&
      done[TRAIN_STAGE_FINETUNE] >= 0 && pre->epochs > done[TRAIN_STAGE_PRETRAIN])
    rc = ce_err("%s: --extend cannot change pretrain.epochs to %lld: the finetune stage has "
                "already started from the pretrain stage's weights after %lld epochs; extend "
                "the finetune stage only, or use another output directory", out,
                (long long)pre->epochs, (long long)done[TRAIN_STAGE_PRETRAIN]);
  train_job_free(&old);
  if (rc < 0) return -1;
  if (!record) return 0;

  /* the record: the previous text kept as OUT/train.N.yaml, the change in
     OUT/train.log, the new text in OUT/train.yaml */
  char prev[4300], logp[4300];
  int k = 1;
  for (;; k++) {
    snprintf(prev, sizeof prev, "%s/train.%d.yaml", out, k);
    if (!path_exists(prev)) break;
  }
  CE_TRY(write_file(prev, text, len));
  snprintf(logp, sizeof logp, "%s/train.log", out);
  FILE *f = fopen(logp, "a");
  if (!f) CE_FAIL("%s: cannot open for appending: %s", logp, strerror(errno));
  char when[32];
  time_t now = time(NULL);
  struct tm tmv;
  strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&now, &tmv));
  fprintf(f, "%s extend: %s replaces the job (the previous one is kept as train.%d.yaml)\n", when,
          j->path, k);
  if (n == 0) fprintf(f, "%s extend:   no key changed (comments or layout only)\n", when);
  for (int i = 0; i < n; i++) {
    const train_job_change *c = &ch[i];
    char from[64] = "";
    if (c->stage >= 0 && done[c->stage] >= 0 &&
        (strstr(c->key, ".schedule.") || strstr(c->key, ".optimizer.lr")))
      snprintf(from, sizeof from, " (from epoch %lld on)", (long long)done[c->stage]);
    fprintf(f, "%s extend:   %s: %s -> %s%s\n", when, c->key, c->before, c->after, from);
  }
  int ok = fflush(f) == 0 && fsync(fileno(f)) == 0;
  ok &= fclose(f) == 0;
  if (!ok) CE_FAIL("%s: write failed: %s", logp, strerror(errno));
  CE_TRY(write_file(p, j->text, j->text_len));
  CE_TRY(record_job(out, j, rec));
  if (!o->quiet)
    fprintf(stderr, "coemu train: extending the run in %s: %s (recorded in %s)\n", out,
            n ? list : "no key changed", logp);
  return 0;
}

/* The logs a stage writes beside its checkpoints (trainrun.h). */
static const char *const STAGE_LOGS[] = {"train.csv", "validation.csv", "input.csv", "loss.png"};

/* Does OUT hold a run: a checkpoint, or a step logged, in some stage? A
 * folder that a failed start left (train.yaml, empty stage folders, at most
 * the untrained baseline in validation.csv) holds nothing a resume could use. */
static int holds_run(const char *out) {
  for (int id = 0; id < TRAIN_STAGES; id++) {
    char p[4300];
    snprintf(p, sizeof p, "%s/%s/last.ckpt", out, STAGE_NAME[id]);
    if (path_exists(p)) return 1;
    snprintf(p, sizeof p, "%s/%s/best.ckpt", out, STAGE_NAME[id]);
    if (path_exists(p)) return 1;
    snprintf(p, sizeof p, "%s/%s/train.csv", out, STAGE_NAME[id]);
    char *text;
    size_t len;
    if (!path_exists(p)) continue;
    if (fs_read_all(p, &text, &len) < 0) return 1; /* unreadable: keep it */
    const char *nl = memchr(text, '\n', len);
    int rows = nl && (size_t)(nl - text) + 1 < len; /* anything after the header */
    free(text);
    if (rows) return 1;
  }
  return 0;
}

/* OUT holds only what a failed start of another job left: its logs go, the
 * job's text replaces train.yaml. */
static int take_over(const char *out, const char *p, const train_job *j, run_record *rec) {
  for (int id = 0; id < TRAIN_STAGES; id++) {
    char d[4200], f[4300];
    snprintf(d, sizeof d, "%s/%s", out, STAGE_NAME[id]);
    if (!path_exists(d)) continue;
    CE_TRY(fs_remove_tmp(d));
    for (size_t k = 0; k < sizeof STAGE_LOGS / sizeof *STAGE_LOGS; k++) {
      snprintf(f, sizeof f, "%s/%s", d, STAGE_LOGS[k]);
      if (unlink(f) < 0 && errno != ENOENT) CE_FAIL("%s: cannot remove: %s", f, strerror(errno));
    }
    rmdir(d); /* made again by the stage; kept if something else lies there */
  }
  CE_TRY(write_file(p, j->text, j->text_len));
  rec->n = 0; /* nothing was trained on what it recorded */
  CE_TRY(record_job(out, j, rec));
  fprintf(stderr, "coemu train: note: %s held only what a failed start of another training job "
                  "left (no checkpoint, no step): taken over by %s\n", out, j->path);
  return 0;
}

/* The datasets the job's started, unfinished stages are to read, against
 * the identities OUT/run.json recorded for them: a resume or an extension
 * on other data is refused before anything is written. A dataset that
 * cannot be read is left to the input checks (train_inputs.h), a stream to
 * its first chunk (run_stage); complete and unstarted stages read nothing
 * the run holds. */
static int data_against_record(const char *out, const train_job *j, const run_record *rec) {
  for (int id = 0; id < TRAIN_STAGES; id++) {
    const train_stage *st = &j->stage[id];
    int64_t done;
    if (!st->enabled || stage_epochs_done(out, id, &done) < 0 || done < 0 || done >= st->epochs) {
      ce_err_clear(); /* an unreadable checkpoint: said where the stage reads it */
      continue;
    }
    const char *sub[2] = {"data.dataset", "validation.dataset"};
    const char *path[2] = {st->source == TRAIN_SRC_DATASET ? st->dataset : "", st->val_dataset};
    for (int k = 0; k < 2; k++) {
      char key[64], where[4096];
      uint64_t now;
      if (!path[k] || !*path[k]) continue;
      if (serve_dataset_dir_id(path[k], &now) < 0) {
        ce_err_clear();
        continue;
      }
      snprintf(key, sizeof key, "%s.%s", STAGE_NAME[id], sub[k]);
      run_record_where(path[k], where, sizeof where);
      CE_TRY(run_record_check(rec, out, key, where, now));
    }
  }
  return 0;
}

/* OUT/train.yaml and OUT/run.json: the job a directory belongs to and the
 * data it was trained on. With `write` 0 only whether the job may run
 * there, creating nothing (the check before the inputs', and --check's);
 * with 1 the same again under OUT's lock, and OUT made ready. *state says
 * how the job stands to OUT. */
static int prepare_out(const char *out, const train_job *j, const train_run_opts *o, int write,
                       out_state *state) {
  if (write) {
    CE_TRY(fs_mkdir_p(out));
    CE_TRY(fs_lock_dir(out, "train")); /* held until the process ends */
    CE_TRY(fs_remove_tmp(out));
  }
  char p[4200];
  run_record rec;
  snprintf(p, sizeof p, "%s/train.yaml", out);
  *state = OUT_NEW;
  if (!path_exists(p)) {
    memset(&rec, 0, sizeof rec);
    if (!write) return 0;
    CE_TRY(write_file(p, j->text, j->text_len));
    return record_job(out, j, &rec);
  }
  char *text;
  size_t len;
  CE_TRY(run_record_read(out, &rec));
  CE_TRY(fs_read_all(p, &text, &len));
  int rc = 0;
  if (!holds_run(out)) {
    *state = OUT_TAKE_OVER;
    if (write) rc = take_over(out, p, j, &rec);
  } else {
    *state = OUT_SAME;
    /* the data first: a job naming other data is refused for that, whatever
       else differs, before --extend records anything */
    rc = data_against_record(out, j, &rec);
    int same = len == j->text_len && memcmp(text, j->text, len) == 0;
    if (rc == 0 && !same) rc = job_changed(out, p, text, len, j, o, write, &rec, state);
  }
  free(text);
  return rc;
}

/* Keep the first rows of a CSV (header + rows whose first column <= max_step);
 * rows_in_epoch (NULL to skip) counts the kept rows of `epoch`. With
 * commit 0 the file is only read (the count a resume needs before it knows
 * whether its data are accepted: a refused resume leaves the log whole). */
static int csv_cut(const char *path, uint64_t max_step, uint32_t epoch, uint64_t *rows_in_epoch,
                   int commit) {
  uint64_t count = 0;
  if (rows_in_epoch) *rows_in_epoch = 0;
  if (!path_exists(path)) return 0;
  char *text;
  size_t len;
  CE_TRY(fs_read_all(path, &text, &len));
  char tmp[4300];
  FILE *f = NULL;
  if (commit && fs_open_tmp(path, tmp, sizeof tmp, &f) < 0) {
    free(text);
    return -1;
  }
  int ok = 1, first = 1;
  for (char *line = text, *nl; ok && *line; line = nl + 1) {
    nl = strchr(line, '\n');
    if (!nl) break; /* a partial last line: dropped */
    unsigned long long step = 0;
    unsigned e = 0;
    int keep = first || (sscanf(line, "%llu,%u", &step, &e) == 2 && step <= max_step);
    if (keep && f) ok = fwrite(line, 1, (size_t)(nl - line + 1), f) == (size_t)(nl - line + 1);
    if (!first && keep && e == epoch) count++;
    first = 0;
  }
  free(text);
  if (rows_in_epoch) *rows_in_epoch = count;
  return f ? fs_commit_tmp(f, tmp, path, ok) : 0;
}

static FILE *csv_open(const char *path, const char *header) {
  int fresh = !path_exists(path);
  FILE *f = fopen(path, "a");
  if (!f) {
    ce_err("%s: cannot open for appending: %s", path, strerror(errno));
    return NULL;
  }
  if (fresh) fprintf(f, "%s\n", header);
  return f;
}

static int csv_sync(FILE *f, const char *path) {
  if (fflush(f) != 0 || fsync(fileno(f)) != 0) CE_FAIL("%s: write failed: %s", path, strerror(errno));
  return 0;
}

/* ---- one stage ------------------------------------------------------------ */

typedef struct {
  const train_job *job;
  const train_stage *st;
  int id;
  const train_run_opts *o;
  MPI_Comm comm;
  int rank, world;
  char dir[4200], last[4300], best[4300], tcsv[4300], vcsv[4300], icsv[4300], png[4300];
  coemunet model;
  int have_model;
  adam opt;
  int have_opt;
  train_state state;
  train_data *data;
  train_feed *feed;   /* data read ahead into the backend's host buffers */
  serve_source *val;
  double best_maxrel;
  FILE *ftrain, *fval, *finput;
  reducer_nccl *nccl; /* the CUDA backend's device reducer, when used */
  nn_reducer red;
} stage_run;

static coemunet_config model_config(const train_job *j, int nfreq, int grid) {
  coemunet_config c = {nfreq, grid, j->stem, {j->enc[0], j->enc[1], j->enc[2]}, j->latent, j->dec,
                       j->shortcut};
  return c;
}

static int save_checkpoint(stage_run *s, const char *path) {
  if (s->rank != 0) return 0;
  if (s->ftrain) CE_TRY(csv_sync(s->ftrain, s->tcsv));
  if (s->finput) CE_TRY(csv_sync(s->finput, s->icsv));
  if (s->fval) CE_TRY(csv_sync(s->fval, s->vcsv));
  return checkpoint_save(path, &s->model, &s->opt, &s->state);
}

static int hash_chunk(void *ctx, float *chunk, size_t off, size_t n) {
  (void)off;
  ce_xxh64_update(ctx, chunk, sizeof(float) * n);
  return 0;
}

static int bcast_chunk(void *ctx, float *chunk, size_t off, size_t n) {
  (void)off;
  MPI_Bcast(chunk, (int)n, MPI_FLOAT, 0, *(MPI_Comm *)ctx); /* n <= NN_STAGE_FLOATS */
  return 0;
}

/* Rank 0's copy of a tensor (backend memory) onto every rank, piece by piece
 * through the host. */
static int bcast_tensor(stage_run *s, float *t, int64_t n) {
  if (s->rank == 0) return nn_download_chunks(&s->model.net, t, (size_t)n, bcast_chunk, &s->comm);
  return nn_upload_chunks(&s->model.net, t, (size_t)n, bcast_chunk, &s->comm);
}

/* Weights identical on every rank? Otherwise take rank 0's. */
static int weights_agree(stage_run *s) {
  if (s->world == 1) return 0;
  ce_xxh64_state h;
  ce_xxh64_init(&h, 0);
  nn_net *net = &s->model.net;
  for (int i = 0; i < net->nparams; i++) /* host memory: cannot fail but for the staging buffer */
    CE_TRY(nn_download_chunks(net, net->params[i].w, (size_t)net->params[i].n, hash_chunk, &h));
  uint64_t mine = ce_xxh64_digest(&h), root = mine;
  MPI_Bcast(&root, 1, MPI_UINT64_T, 0, s->comm);
  int differ = mine != root, any = 0;
  MPI_Allreduce(&differ, &any, 1, MPI_INT, MPI_MAX, s->comm);
  if (!any) return 0;
  if (s->rank == 0 && !s->o->quiet)
    fprintf(stderr, "coemu train: %s: the ranks' weights drifted apart by rounding; "
                    "rank 0's weights and optimiser state are broadcast\n", STAGE_NAME[s->id]);
  for (int i = 0; i < net->nparams; i++) {
    nn_param *p = &net->params[i];
    CE_TRY(bcast_tensor(s, p->w, p->n));
    if (adam_has_state(&s->opt, i)) {
      CE_TRY(bcast_tensor(s, s->opt.m[i], p->n));
      CE_TRY(bcast_tensor(s, s->opt.v[i], p->n));
    }
  }
  return 0;
}

/* The pretrained encoder into the fine-tuning model. */
static int transfer_encoder(stage_run *s) {
  const char *src = s->st->init && *s->st->init ? s->st->init : NULL;
  char pre[4300];
  if (!src) {
    snprintf(pre, sizeof pre, "%s/../pretrain/last.ckpt", s->dir);
    src = pre;
  }
  coemunet_config c;
  CE_TRY(checkpoint_read_config(src, &c, NULL));
  coemunet from;
  CE_TRY(coemunet_build(&from, &c, 0));
  int n = 0;
  int64_t values = 0;
  int rc = checkpoint_load(src, &from, NULL, NULL);
  if (rc == 0) rc = coemunet_transfer_encoder(&s->model, &from, &n, &values);
  coemunet_free(&from);
  if (rc < 0) return ce_err_prefix("%s: transferring the encoder from %s", STAGE_NAME[s->id], src);
  if (s->rank == 0 && !s->o->quiet)
    fprintf(stderr, "coemu train: %s: encoder transferred from %s: %d tensors, %lld values\n",
            STAGE_NAME[s->id], src, n, (long long)values);
  return 0;
}

static int validate(stage_run *s, uint32_t epoch, int *improved) {
  *improved = 0;
  eval_opts eo = {s->comm, (int)s->st->val_batch, s->st->val_max_samples, 0};
  eval_result r;
  CE_TRY(evaluate_split(&s->model, s->val, &eo, &r));
  if (s->rank == 0) {
    fprintf(s->fval, "%llu,%u,%.9g,%.9g,%.9g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%lld,%.3f\n",
            (unsigned long long)s->state.step, epoch, r.loss, r.mse, r.fft, r.maxrel.median,
            r.maxrel.mean, r.maxrel.p90, r.zncc, r.ssim_interior, r.ssim_reflect, (long long)r.n,
            r.seconds);
    /* the untrained baseline (epoch 0) is never "best": predicting ~0 bounds
       MaxRel by 100 %, which early, overshooting models can exceed */
    *improved = epoch > 0 && r.maxrel.median < s->best_maxrel;
    if (*improved) s->best_maxrel = r.maxrel.median;
    if (!s->o->quiet)
      fprintf(stderr, "coemu train: %s: epoch %u validation on %lld samples: loss %.5g, MaxRel "
                      "median %.3g%%, ZNCC %.4f, SSIM %.4f (interior) %.4f (reflect)%s\n",
              STAGE_NAME[s->id], epoch, (long long)r.n, r.loss, r.maxrel.median, r.zncc,
              r.ssim_interior, r.ssim_reflect, *improved ? "  [best]" : "");
  }
  MPI_Bcast(improved, 1, MPI_INT, 0, s->comm);
  eval_result_free(&r);
  return 0;
}

/* Lowest validation MaxRel logged after a training epoch (a resumed run
 * keeps its best): validation.csv columns epoch (1) and maxrel_median (5). */
static double best_logged(const char *vcsv) {
  double best = INFINITY, *epoch = NULL, *maxrel = NULL;
  int n = 0;
  if (path_exists(vcsv) && trainplot_read_columns(vcsv, 1, 5, &epoch, &maxrel, &n) == 0)
    for (int i = 0; i < n; i++)
      if (epoch[i] > 0 && maxrel[i] < best) best = maxrel[i];
  free(epoch);
  free(maxrel);
  return best;
}

static int data_next(void *d, uint32_t epoch, const float **x, const float **y) {
  return train_data_next(d, epoch, x, y);
}

static void stage_free(stage_run *s) {
  if (s->ftrain) fclose(s->ftrain);
  if (s->fval) fclose(s->fval);
  if (s->finput) fclose(s->finput);
  train_feed_close(s->feed); /* its thread reads s->data */
  train_data_close(s->data);
  serve_close(s->val);
  if (s->have_opt) adam_free(&s->opt);
  if (s->have_model) coemunet_free(&s->model);
  reducer_nccl_close(s->nccl); /* after the net: its last sums are done */
}

/* The replicas' reducer: NCCL on device memory for a device backend where it
 * is built (gradients in 25 MB buckets overlapped with the backward), unless
 * COEMU_REDUCER=mpi asks for the host sums; MPI on host memory otherwise. */
static int install_reducer(stage_run *s, int local_bn) {
  nn_net *net = &s->model.net;
  static const char *const reducers[] = {"mpi", "nccl"};
  int want = -1; /* unset: NCCL where it can be used */
  CE_TRY(ce_env_word("COEMU_REDUCER", reducers, 2, "mpi or nccl", &want));
  int nccl = net->be != &nn_backend_cpu && nn_nccl_built();
  if (want == 0) nccl = 0;
  if (want == 1) {
    if (net->be == &nn_backend_cpu)
      CE_FAIL("COEMU_REDUCER = nccl: NCCL sums device memory; this run trains on the CPU");
    nccl = 1; /* not built: reducer_nccl_open says so */
  }
  if (!nccl) {
    s->red = reducer_mpi(&s->comm, local_bn);
    return nn_set_reducer(net, &s->red);
  }
  CE_TRY(reducer_nccl_open(&s->comm, local_bn, NN_BUCKET_FLOATS, &s->nccl, &s->red));
  return nn_set_reducer(net, &s->red);
}

/* Rank 0: the stage's training and validation data (their dataset ids, the
 * stream's as its producer announced it) against OUT/run.json, then
 * recorded there. A stage that starts afresh (no checkpoint) holds nothing
 * of earlier data: its entries are replaced. -1 with the refusal. */
static int record_stage_data(stage_run *s, int resume) {
  const train_stage *st = s->st;
  const char *out = s->o->out_dir;
  run_record rec;
  CE_TRY(run_record_read(out, &rec));
  char key[64], where[4096];
  int changed = 0;
  uint64_t id = train_data_dataset_id(s->data);
  if (st->source == TRAIN_SRC_DATASET) {
    snprintf(key, sizeof key, "%s.data.dataset", STAGE_NAME[s->id]);
    run_record_where(st->dataset, where, sizeof where);
  } else {
    snprintf(key, sizeof key, "%s.data.stream.endpoint", STAGE_NAME[s->id]);
    snprintf(where, sizeof where, "%s", st->endpoint);
  }
  if (id) { /* 0: a producer that announces no id */
    if (resume) CE_TRY(run_record_check(&rec, out, key, where, id));
    changed |= run_record_put(&rec, key, where, id);
  }
  if (s->val) {
    snprintf(key, sizeof key, "%s.validation.dataset", STAGE_NAME[s->id]);
    run_record_where(st->val_dataset, where, sizeof where);
    id = serve_dataset_id(s->val);
    if (resume) CE_TRY(run_record_check(&rec, out, key, where, id));
    changed |= run_record_put(&rec, key, where, id);
  }
  return changed ? run_record_write(out, &rec) : 0;
}

static int run_stage(stage_run *s, int64_t *steps_left, double t_run0) {
  const train_stage *st = s->st;
  const train_job *j = s->job;
  const char *name = STAGE_NAME[s->id];
  snprintf(s->dir, sizeof s->dir, "%s/%s", s->o->out_dir, name);
  snprintf(s->last, sizeof s->last, "%s/last.ckpt", s->dir);
  snprintf(s->best, sizeof s->best, "%s/best.ckpt", s->dir);
  snprintf(s->tcsv, sizeof s->tcsv, "%s/train.csv", s->dir);
  snprintf(s->vcsv, sizeof s->vcsv, "%s/validation.csv", s->dir);
  snprintf(s->icsv, sizeof s->icsv, "%s/input.csv", s->dir);
  snprintf(s->png, sizeof s->png, "%s/loss.png", s->dir);
  if (s->rank == 0) {
    CE_TRY(fs_mkdir_p(s->dir));
    CE_TRY(fs_remove_tmp(s->dir)); /* checkpoints of a killed run (rank 0 holds the lock) */
  }
  MPI_Barrier(s->comm);

  /* where to start: a complete stage is skipped, a started one resumed */
  int resume = path_exists(s->last);
  train_state prev = {0};
  coemunet_config ck;
  if (resume) {
    CE_TRY(checkpoint_read_config(s->last, &ck, &prev));
    if (prev.epoch >= (uint32_t)st->epochs) {
      if (s->rank == 0 && !s->o->quiet)
        fprintf(stderr, "coemu train: %s: complete (%u epochs, %llu steps in %s)\n", name,
                prev.epoch, (unsigned long long)prev.step, s->last);
      return 0;
    }
  }
  if (st->batch % s->world)
    CE_FAIL("%s: batch %lld is not divisible by the %d ranks", name, (long long)st->batch, s->world);
  const int b = (int)(st->batch / s->world);

  /* the position within the epoch: train.csv holds one row per step (the
     rows after the checkpoint are cut once the data are accepted, below) */
  uint64_t in_epoch = 0;
  if (s->rank == 0 && resume) CE_TRY(csv_cut(s->tcsv, prev.step, prev.epoch, &in_epoch, 0));
  MPI_Bcast(&in_epoch, 1, MPI_UINT64_T, 0, s->comm);
  /* raw batches: the backend normalises them (on the device with CUDA) */
  train_data_opts dop = {st, j->seed, s->rank, s->world, b, prev.epoch, in_epoch, 1};
  CE_TRY(train_data_open(&dop, &s->data));
  uint32_t ins[4], outs[3];
  CE_TRY(train_data_shapes(s->data, ins, outs));
  if (s->id == TRAIN_STAGE_PRETRAIN && outs[0] != 1)
    CE_FAIL("%s: %s has %u channels; pretraining is for the single-channel model (a dataset of "
            "1 channel)", name, train_data_describe(s->data), outs[0]);
  coemunet_config cfg = model_config(j, (int)outs[0], (int)ins[1]);
  CE_TRY(coemunet_build_on(&s->model, &cfg, j->seed + (uint64_t)s->id,
                           s->o->be ? s->o->be : &nn_backend_cpu));
  s->have_model = 1;
  CE_TRY(nn_set_precision(&s->model.net, j->precision));
  CE_TRY(nn_set_batch(&s->model.net, b));
  adam_config ac = {(adam_kind)st->optimizer, st->lr, st->beta1, st->beta2, st->eps, st->weight_decay};
  CE_TRY(adam_init(&s->opt, &s->model.net, &ac));
  s->have_opt = 1;
  s->state = (train_state){j->seed, 0, 0, {st->lr, st->lr_gamma, (int)(st->lr_step ? st->lr_step : INT_MAX)}};
  if (resume) {
    CE_TRY(checkpoint_load(s->last, &s->model, &s->opt, &s->state));
    /* the job's rate and schedule: the checkpoint's own unless the run was
       extended with new ones (--extend), which then hold from this epoch on */
    s->state.sched = (steplr){st->lr, st->lr_gamma, (int)(st->lr_step ? st->lr_step : INT_MAX)};
    s->opt.cfg.lr = st->lr;
    if (s->rank == 0 && !s->o->quiet)
      fprintf(stderr, "coemu train: %s: resuming from %s (epoch %u, step %llu)\n", name, s->last,
              s->state.epoch, (unsigned long long)s->state.step);
  } else if (s->id == TRAIN_STAGE_FINETUNE && st->transfer)
    CE_TRY(transfer_encoder(s));
  if (s->world > 1) CE_TRY(install_reducer(s, !j->sync_batchnorm));
  trainer tr;
  CE_TRY(trainer_init(&tr, &s->model, &s->opt));

  if (st->val_dataset && *st->val_dataset) {
    serve_opts vo = {.dataset_dir = st->val_dataset, .split = st->val_split, .seed = 0, .world = 1,
                     .batch = (int)st->val_batch, .drop_last = 0, .prefetch = 1,
                     .unfinished_hint = TRAIN_UNFINISHED_HINT};
    if (serve_open(&vo, &s->val) < 0) {
      trainer_free(&tr);
      return ce_err_prefix("%s: validation data", name);
    }
  }
  /* the data against the record of what this stage trained on so far, and
     recorded (before the first step: the run's own record of its data) */
  int refused = s->rank == 0 ? record_stage_data(s, resume) : 0;
  MPI_Bcast(&refused, 1, MPI_INT, 0, s->comm);
  if (refused) {
    trainer_free(&tr);
    if (s->rank != 0) ce_err("rank 0 refused the data of %s (its message says why)", name);
    return TRAIN_RUN_REFUSED; /* every rank here: one message (cmd_train) */
  }
  if (s->rank == 0 && resume && (csv_cut(s->tcsv, prev.step, prev.epoch, NULL, 1) < 0 ||
                                 csv_cut(s->vcsv, prev.step, 0, NULL, 1) < 0)) {
    trainer_free(&tr);
    return -1;
  }
  if (s->rank == 0) {
    s->ftrain = csv_open(s->tcsv, "step,epoch,lr,loss,mse,fft,samples_per_s");
    s->fval = csv_open(s->vcsv, "step,epoch,loss,mse,fft,maxrel_median,maxrel_mean,maxrel_p90,"
                                "zncc,ssim_interior,ssim_reflect,samples,seconds");
    s->finput = csv_open(s->icsv, "epoch,seconds,input_wait_s,wait_fraction");
    if (!s->ftrain || !s->fval || !s->finput) {
      trainer_free(&tr);
      return -1;
    }
  }
  /* the next batch is read on a thread of its own while a step computes,
   * and copied to the backend while the step before it computes */
  train_feed_opts fo = {data_next, s->data, (size_t)b * ins[0] * ins[1] * ins[2] * ins[3],
                        (size_t)b * outs[0] * outs[1] * outs[2], s->state.epoch,
                        (uint32_t)st->epochs, s->model.net.be, 1, 1};
  if (s->state.epoch < (uint32_t)st->epochs && train_feed_open(&fo, &s->feed) < 0) {
    trainer_free(&tr);
    return -1;
  }
  s->best_maxrel = s->rank == 0 ? best_logged(s->vcsv) : INFINITY;
  uint64_t per_epoch = train_data_batches_per_epoch(s->data);
  if (s->rank == 0 && !s->o->quiet) {
    fprintf(stderr, "coemu train: %s: %s; model nfreq %d grid %d, %lld parameters; batch %lld "
                    "(%d per rank on %d rank%s), %llu steps per epoch, %lld epoch%s\n",
            name, train_data_describe(s->data), cfg.nfreq, cfg.grid,
            (long long)nn_param_count(&s->model.net), (long long)st->batch, b, s->world,
            s->world == 1 ? "" : "s", (unsigned long long)per_epoch, (long long)st->epochs,
            st->epochs == 1 ? "" : "s");
  }

  int rc = 0, stopped = 0;
  if (!resume && s->val) { /* the untrained model's figures: the baseline of the curves */
    int improved;
    rc = validate(s, 0, &improved);
    if (rc == 0) rc = nn_set_batch(&s->model.net, b);
    if (rc < 0) {
      trainer_free(&tr);
      return -1;
    }
  }
  ce_progress prog;
  /* the steps made so far and those still to come on these data: a run's
     steps per epoch are its data's (a checkpoint made on other data, or
     under another batch, has its own count of steps behind it) */
  int64_t total = 0;
  if (per_epoch && s->state.epoch < (uint32_t)st->epochs)
    total = (int64_t)(s->state.step + (in_epoch < per_epoch ? per_epoch - in_epoch : 0) +
                      per_epoch * ((uint64_t)st->epochs - s->state.epoch - 1));
  ce_progress_init(&prog, name, "steps", total, s->o->quiet || s->rank != 0);
  prog.kept = (int64_t)s->state.step; /* a resume's earlier steps: not in the rate */
  for (uint32_t epoch = s->state.epoch; rc == 0 && !stopped && epoch < (uint32_t)st->epochs; epoch++) {
    double lr = steplr_lr(&s->state.sched, (int)epoch);
    const double epoch_t0 = ce_now();
    train_feed_take_wait(s->feed); /* the wait of this epoch's steps only */
    for (;;) {
      const float *x, *y;
      double t0 = ce_now();
      int got = train_feed_next_dev(s->feed, epoch, &x, &y);
      /* every rank must know before the step's collectives whether all have a batch */
      int gmin = got, gmax = got;
      if (s->world > 1) {
        int g[2] = {-got, got};
        MPI_Allreduce(MPI_IN_PLACE, g, 2, MPI_INT, MPI_MAX, s->comm);
        gmin = -g[0], gmax = g[1];
      }
      if (gmin < 0 || gmin != gmax) {
        trainer_free(&tr);
        if (got < 0) return -1;
        CE_FAIL("%s: epoch %u: %s", name, epoch,
                gmin < 0 ? "another rank failed to read its batch"
                         : "the ranks disagree on where the epoch ends");
      }
      if (got == 0) break;
      loss_value lv = {0, 0, 0};
      rc = trainer_step_raw(&tr, x, y, train_data_norm(s->data), lr, &lv);
      double sums[5] = {lv.total, lv.mse, lv.fft, rc < 0 ? 1 : 0, g_stop_signal ? 1 : 0};
      if (s->world > 1) MPI_Allreduce(MPI_IN_PLACE, sums, 5, MPI_DOUBLE, MPI_SUM, s->comm);
      if (rc < 0) break;
      if (sums[3] > 0) {
        trainer_free(&tr);
        CE_FAIL("%s: another rank failed its training step", name);
      }
      s->state.step++;
      double dt = ce_now() - t0;
      if (s->rank == 0) {
        fprintf(s->ftrain, "%llu,%u,%.9g,%.9g,%.9g,%.9g,%.1f\n", (unsigned long long)s->state.step,
                epoch, lr, sums[0] / s->world, sums[1] / s->world, sums[2] / s->world,
                dt > 0 ? (double)st->batch / dt : 0);
        ce_progress_update(&prog, (int64_t)s->state.step);
      }
      (*steps_left)--;
      int stop = sums[4] > 0 || *steps_left == 0 ||
                 (s->o->time_limit_s > 0 && ce_now() - t_run0 > s->o->time_limit_s);
      if (s->world > 1) MPI_Allreduce(MPI_IN_PLACE, &stop, 1, MPI_INT, MPI_MAX, s->comm);
      if (stop) {
        stopped = 1;
        break;
      }
      if (st->checkpoint_every > 0 && s->state.step % (uint64_t)st->checkpoint_every == 0 &&
          (rc = save_checkpoint(s, s->last)) < 0)
        break;
    }
    if (rc < 0 || stopped) break;
    /* the time the steps waited for input, the slowest rank's */
    double wait = train_feed_take_wait(s->feed), secs = ce_now() - epoch_t0;
    if (s->world > 1) MPI_Allreduce(MPI_IN_PLACE, &wait, 1, MPI_DOUBLE, MPI_MAX, s->comm);
    if (s->rank == 0) {
      double frac = secs > 0 ? wait / secs : 0;
      fprintf(s->finput, "%u,%.3f,%.3f,%.4f\n", epoch, secs, wait, frac);
      if (!s->o->quiet)
        fprintf(stderr, "coemu train: %s: epoch %u: %.1f s, %.2f s waiting for input (wait "
                        "fraction %.3f)\n", name, epoch, secs, wait, frac);
    }
    /* the epoch is done: agree, validate, keep the best, checkpoint */
    s->state.epoch = epoch + 1;
    if ((rc = weights_agree(s)) < 0) break;
    int improved = 0;
    if (s->val && ((epoch + 1) % (uint32_t)st->validate_every == 0 || epoch + 1 == (uint32_t)st->epochs)) {
      if ((rc = validate(s, epoch + 1, &improved)) < 0) break;
      if ((rc = nn_set_batch(&s->model.net, b)) < 0) break;
      if (improved && (rc = save_checkpoint(s, s->best)) < 0) break;
    }
    if ((rc = save_checkpoint(s, s->last)) < 0) break;
    if (s->rank == 0 && trainplot_loss_png(s->png, s->tcsv, s->vcsv, name) < 0 && !s->o->quiet)
      fprintf(stderr, "coemu train: %s: warning: %s\n", name, ce_err_msg());
  }
  if (rc == 0 && stopped) { /* a clean stop: everything up to here is kept */
    rc = save_checkpoint(s, s->last);
    if (rc == 0 && s->rank == 0) /* a status, not progress: also with --quiet */
      fprintf(stderr, "coemu train: %s: stopped at step %llu (epoch %u); %s; rerun the same "
                      "command to resume\n", name, (unsigned long long)s->state.step,
              s->state.epoch, g_stop_signal ? "interrupted" : "step or time limit reached");
  }
  if (rc == 0 && !stopped && s->rank == 0) {
    ce_progress_done(&prog, (int64_t)s->state.step);
    if (!s->o->quiet)
      fprintf(stderr, "coemu train: %s: done: %u epochs, %llu steps; %s%s\n", name,
              s->state.epoch, (unsigned long long)s->state.step, s->last,
              s->val ? " and best.ckpt" : "");
  }
  trainer_free(&tr);
  if (rc < 0) return -1;
  return stopped ? TRAIN_RUN_STOPPED : 0;
}

/* The stages OUT shows complete (their inputs are not read again). */
static void complete_stages(const train_job *j, const char *out, int skip[TRAIN_STAGES]) {
  for (int id = 0; id < TRAIN_STAGES; id++) {
    int64_t done = -1;
    if (j->stage[id].enabled && stage_epochs_done(out, id, &done) < 0) done = -1; /* said later */
    skip[id] = done >= j->stage[id].epochs;
  }
  ce_err_clear();
}

/* Every rank checks the job's inputs (train_inputs.h), skipping the stages
 * OUT shows complete; the lowest failing rank's message becomes every rank's. */
static int check_inputs(const train_job *j, const char *out, int rank, int world, MPI_Comm comm) {
  train_inputs_opts io = {.world = world};
  complete_stages(j, out, io.skip);
  int bad = train_inputs_check(j, &io) < 0 ? rank : world, first = world;
  MPI_Allreduce(&bad, &first, 1, MPI_INT, MPI_MIN, comm);
  if (first == world) {
    ce_err_clear();
    return 0;
  }
  char msg[2048];
  snprintf(msg, sizeof msg, "%s", rank == first ? ce_err_msg() : "");
  MPI_Bcast(msg, (int)sizeof msg, MPI_CHAR, first, comm);
  if (first > 0) return ce_err("rank %d: %s", first, msg);
  return ce_err("%s", msg);
}

int train_run(const train_job *j, const train_run_opts *o) {
  train_run_opts opts = *o;
  if (!opts.out_dir) opts.out_dir = j->out_dir;
  int rank, world;
  MPI_Comm_rank(o->comm, &rank);
  MPI_Comm_size(o->comm, &world);
  /* whether the job may run in OUT, then its inputs, before anything is
     written: a start that fails on either leaves nothing behind */
  out_state state;
  int prep = rank == 0 ? prepare_out(opts.out_dir, j, &opts, 0, &state) : 0, prep_all = 0;
  MPI_Allreduce(&prep, &prep_all, 1, MPI_INT, MPI_MIN, o->comm);
  if (prep_all < 0) {
    if (prep == 0) ce_err("rank 0 could not prepare %s", opts.out_dir);
    return TRAIN_RUN_REFUSED;
  }
  if (check_inputs(j, opts.out_dir, rank, world, o->comm) < 0) return TRAIN_RUN_REFUSED;
  prep = rank == 0 ? prepare_out(opts.out_dir, j, &opts, 1, &state) : 0;
  MPI_Allreduce(&prep, &prep_all, 1, MPI_INT, MPI_MIN, o->comm);
  if (prep_all < 0) {
    if (prep == 0) ce_err("rank 0 could not prepare %s", opts.out_dir);
    return TRAIN_RUN_REFUSED; /* nothing written but, perhaps, OUT and its lock */
  }
  struct sigaction sa = {0}, old_int, old_term;
  sa.sa_handler = on_signal;
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);
  int64_t steps_left = opts.max_steps > 0 ? opts.max_steps : -1;
  double t0 = ce_now();
  int rc = 0;
  for (int id = 0; id < TRAIN_STAGES && rc == 0; id++) {
    if (!j->stage[id].enabled) continue;
    stage_run s;
    memset(&s, 0, sizeof s);
    s.job = j;
    s.st = &j->stage[id];
    s.id = id;
    s.o = &opts;
    s.comm = o->comm;
    s.rank = rank;
    s.world = world;
    rc = run_stage(&s, &steps_left, t0);
    stage_free(&s);
  }
  sigaction(SIGINT, &old_int, NULL);
  sigaction(SIGTERM, &old_term, NULL);
  return rc;
}

int train_run_check_out(const train_job *j, const char *out, int extend, int skip[TRAIN_STAGES],
                        FILE *report) {
  train_run_opts o = {.out_dir = out, .quiet = 1, .extend = extend};
  out_state state;
  CE_TRY(prepare_out(out, j, &o, 0, &state));
  complete_stages(j, out, skip);
  static const char *const says[] = {
      [OUT_NEW] = "no run there: the run starts",
      [OUT_TAKE_OVER] = "only what a failed start of another job left: taken over, the run starts",
      [OUT_SAME] = "a run of this job",
      [OUT_EXTEND] = "a run of another job that --extend continues"};
  fprintf(report, "  output %s: %s\n", out, says[state]);
  if (state != OUT_SAME && state != OUT_EXTEND) return 0;
  for (int id = 0; id < TRAIN_STAGES; id++) {
    const train_stage *st = &j->stage[id];
    char p[4300];
    coemunet_config c;
    train_state ts;
    snprintf(p, sizeof p, "%s/%s/last.ckpt", out, STAGE_NAME[id]);
    if (!st->enabled) continue;
    if (!path_exists(p)) fprintf(report, "    %s: not started: it starts\n", STAGE_NAME[id]);
    else if (checkpoint_read_config(p, &c, &ts) < 0) return -1;
    else if (ts.epoch >= (uint32_t)st->epochs)
      fprintf(report, "    %s: complete (%u epochs, %" PRIu64 " steps): skipped\n", STAGE_NAME[id],
              ts.epoch, ts.step);
    else
      fprintf(report, "    %s: resumes from %s (epoch %u, step %" PRIu64 ")\n", STAGE_NAME[id], p,
              ts.epoch, ts.step);
  }
  return 0;
}
