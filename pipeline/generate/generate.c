/* generate.c - the generate driver: job -> shards -> manifest + dataset.h5. */
#include "pipeline/generate/generate.h"

#include <limits.h>
#include <hdf5.h>
#include <mpi.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <time.h>

#include "common/cli.h"
#include "common/error.h"
#include "common/fsutil.h"
#include "common/progress.h"
#include "pipeline/dataset/dataset.h"
#include "pipeline/dataset/dataset_stats.h"
#include "pipeline/dataset/preview.h"
#include "pipeline/dataset/shard.h"
#include "pipeline/generate/live.h"
#include "pipeline/generate/workplan.h"
#include "pipeline/mpi/mpi_fatal.h"
#include "rotate/model.h"
#include "rotate/sampler.h"
#include "rotate/synth.h"
#include "solver/lamda.h"
#include "solver/lte_line.h"

static const char *g_cmd = "generate";
static int g_rank = 0;

/* HDF5 1.10 does not survive a failed H5Fclose (a full disk, a file-size
 * limit): the file stays half closed in its ID table, and the library's
 * shutdown, which MPI_Finalize runs (HDF5 hangs it on MPI_COMM_SELF), crashes
 * in H5F__close_cb. A rank whose shard failed therefore marks the library
 * as shut down before MPI_Finalize. H5_libinit_g is exported by libhdf5 but
 * not in its public headers (as H5_checksum_metadata, which
 * stats/statsfile.c uses). Nothing of that rank's is left to flush: its
 * failed shard is a temporary file the next run removes, its finished
 * shards are closed. */
extern hbool_t H5_libinit_g;
static void hdf5_skip_shutdown(void) { H5_libinit_g = 0; }

static void human_bytes(double b, char *out, size_t len) {
  const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  int k = 0;
  while (b >= 1024 && k < 5) b /= 1024, k++;
  snprintf(out, len, k ? "%.3g %s" : "%.0f %s", b, u[k]);
}

static void human_time(double s, char *out, size_t len) {
  if (s < 10) snprintf(out, len, "%.2g s", s);
  else if (s < 120) snprintf(out, len, "%.0f s", s);
  else if (s < 7200) snprintf(out, len, "%.0f min", s / 60);
  else if (s < 3 * 86400) snprintf(out, len, "%.1f h", s / 3600);
  else snprintf(out, len, "%.1f days", s / 86400);
}

/* --check's resolution line: how the first model's cells compare with the
 * job's voxels (model_coarse_fraction, in the ball of that model's smallest
 * half-extent; the job's ball may be smaller), and model 0's cell count.
 * Synthetic models are built in memory for it. */
typedef struct {
  double voxel, coarse; /* the voxel's edge [m], the fraction coarser */
  int64_t cells;        /* model 0's leaf cells */
} check_model0;

static int check_resolution(const job *j, check_model0 *out) {
  ce_model *m = NULL;
  if (j->input == JOB_INPUT_SYNTH) {
    synth_params p;
    synth_draw((uint64_t)j->synth_seed, 0, &p);
    synth_grid g = synth_grid_default();
    g.levels = j->synth_levels;
    amrvac_snapshot s;
    units u;
    CE_TRY(synth_build(&p, &g, &s));
    int rc = synth_units(&p, (uint64_t)j->synth_seed, 0, &u) < 0 ||
             model_from_snapshot(&s, &u, &m) < 0;
    synth_snapshot_free(&s);
    if (rc) return -1;
  } else {
    CE_TRY(model_load(j->model_names[0], j->amrvac_units && j->amrvac_units[0] ? j->amrvac_units : NULL, &m));
  }
  double r = model_half_extent(m), edge = j->edge > 0 ? j->edge : r;
  out->voxel = edge / j->n;
  out->coarse = model_coarse_fraction(m, r, out->voxel, 64, NULL);
  out->cells = m->nleaves * m->ncell;
  model_free(m);
  return 0;
}

static int check_out_dir(const job *j, const char *out, int judged);

/* --check: the job, its input files, its output folder (judged as the run
 * judges it, before "ok" is said), and what it will cost. */
static int check_only(const job *j, const char *out) {
  job_lvg_report lvg;
  if (job_check_inputs_part(j, 0, 1, &lvg) < 0) return -1;
  check_model0 m0;
  CE_TRY(check_resolution(j, &m0));
  int judged = access(out, F_OK) == 0 ? dataset_dir_judge(out, j) : DATASET_DIR_NEW;
  if (judged < 0) return -1;
  job_estimate e;
  job_estimate_of(j, &e);
  /* line.mode lvg: the populations, once per model (on each rank that
   * samples it): the cells read, or model 0's for synthetic models */
  double lvg_cells = j->line_mode != JOB_LINE_LVG ? 0
                     : j->input == JOB_INPUT_SYNTH ? (double)m0.cells * (double)j->n_models
                                                   : (double)lvg.cells;
  double lvg_seconds = lvg_cells * JOB_COST_NS_LVG_CELL * 1e-9;
  e.core_seconds += lvg_seconds;
  char per[32], all[32], models[32], one[32], r64[32];
  human_bytes(e.sample_bytes, per, sizeof per);
  human_bytes(e.dataset_bytes, all, sizeof all);
  human_bytes(e.models_bytes, models, sizeof models);
  human_time(e.core_seconds, one, sizeof one);
  human_time(e.core_seconds / 64, r64, sizeof r64);
  printf("%s: ok: %lld models x %lld directions = %lld samples, %d^3 cubes, %d channels, "
         "%lld shards of %lld\n",
         j->path, (long long)j->n_models, (long long)j->directions, (long long)e.samples, j->n,
         j->nf, (long long)e.shards, (long long)j->samples_per_shard);
  printf("  inputs: %s\n", j->input == JOB_INPUT_SYNTH ? "synthetic (written to OUT/models when the job runs)"
                         : j->line_mode == JOB_LINE_LVG
                             ? "every AMRVAC file read in full (line.mode lvg) and its units sidecar"
                             : "every AMRVAC file's header and units sidecar read");
  { /* the line as the solver sees it (job_check_inputs read the file) */
    lamda_molecule mol;
    lte_line line;
    if (job_lamda_read(j, &mol) < 0) return -1;
    if (lte_line_init(&line, &mol, j->transition, j->mass) < 0) {
      lamda_free(&mol);
      return -1;
    }
    char label[160];
    lamda_transition_label(&mol, j->transition, label, sizeof label);
    printf("  line: %s: %s %s, %.7f GHz (LAMDA transition %d), molecular mass %g u%s, %s\n",
           j->lamda, mol.name, label, line.nu0 * 1e-9, j->transition, line.mass_amu,
           j->mass > 0 ? " (solver.mass)" : " (the file's)",
           j->line_mode == JOB_LINE_LVG ? "non-LTE (line.mode lvg)" : "LTE");
    lte_line_free(&line);
    lamda_free(&mol);
  }
  if (j->line_mode == JOB_LINE_LVG) {
    char t[32];
    human_time(lvg_seconds, t, sizeof t);
    if (j->input == JOB_INPUT_SYNTH)
      printf("  populations (line.mode lvg): ~%lld cells a model (model 0's), ~%s on one rank for "
             "the %lld models (%.0f us a cell, docs/benchmarks.md), in the time below\n",
             (long long)m0.cells, t, (long long)j->n_models, JOB_COST_NS_LVG_CELL * 1e-3);
    else
      printf("  populations (line.mode lvg): %lld models read (T_kin %.3g .. %.3g K), %lld cells "
             "to solve: ~%s on one rank (%.0f us a cell, docs/benchmarks.md), in the time below\n",
             (long long)lvg.models, lvg.t_min, lvg.t_max, (long long)lvg.cells, t,
             JOB_COST_NS_LVG_CELL * 1e-3);
    if (lvg.models_skipped > 0)
      printf("  skipped: %lld of %lld models, their %lld samples stored invalid "
             "(inputs.on_bad_model: skip); the first: %s\n",
             (long long)lvg.models_skipped, (long long)j->n_models,
             (long long)(lvg.models_skipped * j->directions), lvg.first_skipped);
  }
  printf("  disk: %s per sample (%s), %s for the dataset%s", per,
         j->store_inputs ? (j->inputs_f64 ? "inputs float64" : "inputs float32")
                         : "images-only: output.store_inputs false, readers rebuild the inputs",
         all, j->gzip > 0 ? " before gzip" : "");
  if (j->input == JOB_INPUT_SYNTH)
    printf(" + %s of synthetic models", e.models_bytes > 0 ? models : "(not measured at this "
                                                                       "inputs.synth.levels)");
  printf("\n  time: ~%.0f ms a sample, ~%s on one rank, divided by the ranks (64 ranks: ~%s), + "
         "/stats; cost model: (%.0f + %.1f x channels) ns per cube voxel per sample (+ %.0f ns "
         "per sub-sample with sampling.reconstruction linear), measured on 3-level synthetic "
         "models (docs/jobs.md); deeper AMR trees, larger k, model loads and synthetic models' "
         "making cost more (scripts/scaling_model.py models them: docs/scaling.md)\n",
         e.samples > 0 ? 1e3 * e.core_seconds / (double)e.samples : 0.0, one, r64,
         JOB_COST_NS_VOXEL, JOB_COST_NS_VOXEL_CHANNEL, JOB_COST_NS_SUBSAMPLE_LINEAR);
  printf("  resolution: model 0's cells are coarser than a voxel (%.4g m) in %.1f%% of its ball; "
         "sampling.reconstruction %s (docs/sampling.md)\n",
         m0.voxel, 100 * m0.coarse,
         j->coemunet_compat ? "constant (coemunet_compat)" : sampler_recon_name(j->reconstruction));
  return check_out_dir(j, out, judged);
}

/* ---- the output folder on a failed start ----
 * Rank 0 remembers whether this run created the folder; when the start fails
 * (before any shard), mpi_agree's cleanup removes the folder again, so a
 * corrected job can use it. A folder that exists already is never removed;
 * one holding only what a failed start of another job left (no finished
 * shard, no manifest) is taken over by the next job (take_over_failed_start). */
typedef struct {
  const char *dir;
  int created;  /* rank 0: this run made the folder */
  int active;   /* the start is not over yet (no shard made) */
  /* what mpi_agree's exit frees on every rank */
  job *job;
  generate_producer *producer;
  void *buffers[3];
} start_state;

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st, (void)flag, (void)ftw;
  return remove(path) < 0 ? -1 : 0;
}

static void undo_start(void *vctx) {
  start_state *s = vctx;
  /* created means "absent when this run began": a start that failed to
   * make it (a read-only or full file system, no permission) has nothing
   * to remove */
  if (g_rank == 0 && s->active && s->created && access(s->dir, F_OK) == 0) {
    fs_unlock_dir(s->dir);
    if (nftw(s->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS) < 0)
      fprintf(stderr, "coemu %s: warning: could not remove %s, which this failed start "
                      "created\n", g_cmd, s->dir);
  }
  if (s->producer && s->producer->close) s->producer->close(s->producer->ctx);
  for (int k = 0; k < 3; k++) free(s->buffers[k]);
  if (s->job) job_free(s->job);
  /* an agreed failure may be an HDF5 file that could not be closed (rank 0
   * writing dataset.h5 on a full disk); every file of this process is closed
   * otherwise, so there is nothing for the library's shutdown to do */
  hdf5_skip_shutdown();
}

/* Rank 0, before dataset_prepare: DIR holds another job's job.yaml but no
 * finished shard and no manifest (a start that failed, e.g. a LAMDA file
 * that was missing): clear it for this job. Another job's dataset is
 * refused (dataset_dir_judge's message); the same job is left for
 * dataset_prepare (it resumes). */
static int take_over_failed_start(const char *dir, const job *j) {
  char p[4200];
  snprintf(p, sizeof p, "%s/job.yaml", dir);
  if (access(p, F_OK) != 0) return 0;
  CE_TRY(fs_lock_dir(dir, "generate"));
  /* the judgement --check prints too (dataset_dir_judge) */
  int k = dataset_dir_judge(dir, j);
  if (k != DATASET_DIR_FAILED_START) return k < 0 ? -1 : 0;
  char plan[4200];
  /* the synthetic models of another job must not be taken for this one's */
  char models[4200];
  snprintf(models, sizeof models, "%s/models", dir);
  if (access(models, F_OK) == 0 && nftw(models, rm_entry, 16, FTW_DEPTH | FTW_PHYS) < 0)
    CE_FAIL("%s: cannot remove the models another job's failed start left", models);
  snprintf(plan, sizeof plan, "%s/plan.json", dir);
  if ((access(plan, F_OK) == 0 && unlink(plan) < 0) || unlink(p) < 0)
    CE_FAIL("%s: cannot remove what another job's failed start left", dir);
  fprintf(stderr, "coemu %s: note: %s held only what a failed start of another job left (no "
                  "finished shard): it is used for this job\n", g_cmd, dir);
  return 0;
}

/* Where this rank's time goes (the breakdown printed at the end): seconds
 * inside the producer, checking shards an earlier run left, and asking for
 * work / waiting for the other ranks; shard.c counts hashing, HDF5 writes
 * and fsync (shard_times). */
static double g_produce_s, g_resume_s, g_coord_s, g_produce_cpu_s;
static int g_verify_kept; /* --verify-kept */

/* CPU seconds of the whole process (the producer's OpenMP threads too) */
static double process_cpu(void) {
  struct timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* ---- wall-time limits: SIGTERM / SIGINT / SIGUSR1 ----
 * SIGUSR1 asks to finish the shard being made and stop; SIGTERM and SIGINT
 * ask to stop at once: no further sample is started, and the shard being
 * made is abandoned (its temporary file removed) unless its last sample was
 * already under way. Every rank then stops (rank 0 hands out no more
 * shards), finished shards are committed, and the command exits with 3
 * (CLI_EXIT_STOPPED): rerunning it resumes. */
enum { STOP_NONE = 0, STOP_FINISH_SHARD = 1, STOP_NOW = 2 };
static volatile sig_atomic_t g_stop, g_stop_sig;
/* The finishing steps (after the last shard) act on SIGTERM and SIGINT
 * only: SIGUSR1 is the early warning (Slurm's --signal=USR1@600) that asks
 * to finish, and finishing is what the run is doing; if the steps do not
 * fit in the warning's minutes, the SIGTERM at the limit stops them cleanly
 * (exit 3) before the SIGKILL. Stopping on SIGUSR1 would throw away a
 * finish that would have fitted, and requeue a job for nothing. */
static volatile sig_atomic_t g_stop_now;

static void on_stop_signal(int sig) {
  int level = sig == SIGUSR1 ? STOP_FINISH_SHARD : STOP_NOW;
  if (level > g_stop) g_stop = level;
  if (level == STOP_NOW) g_stop_now = 1;
  if (!g_stop_sig || level == STOP_NOW) g_stop_sig = sig;
}

/* Installed once, for the whole run: the finishing steps too (manifest.json
 * and dataset.h5, preview.png, /stats: 12 minutes on 64 ranks at the paper's
 * size, longer than Slurm's SIGUSR1 warning). A signal's default effect
 * there killed the rank with 143/130 (no requeue: the batch script requeues
 * on 3), with a temporary file left behind; a SIGTERM or SIGINT noted there
 * is acted on at the next step or read of /stats (finish_stopped), a
 * SIGUSR1 not at all (g_stop_now). SA_RESTART: a write in progress
 * completes. */
static void stop_signals(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_stop_signal;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGUSR1, &sa, NULL);
}

/* A signalled rank says which signal stopped it (shard phase and finishing). */
static void say_rank_stopped(const char *cmd) {
  if (g_stop_sig)
    fprintf(stderr, "coemu %s: rank %d: stopped by %s\n", cmd, g_rank,
            g_stop_sig == SIGUSR1 ? "SIGUSR1" : g_stop_sig == SIGINT ? "SIGINT" : "SIGTERM");
}

void (*generate_finish_hook)(const char *step);

static void finish_hook(const char *step) {
  if (generate_finish_hook) generate_finish_hook(step);
}

/* Collective: whether any rank was signalled, for the finishing steps after
 * one of them. `done` (rank 0's FINISHED_* below) goes to every rank with it. */
enum { FINISHED_NONE = 0, FINISHED_DATASET = 1, FINISHED_PREVIEW = 2 };
static int any_stop_signal(int *done) {
  int mine[2] = {g_stop_now != 0, g_rank == 0 ? *done : 0}, all[2];
  MPI_Allreduce(mine, all, 2, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  *done = all[1];
  return all[0];
}

/* Every rank, stopped by a signal after the last shard: rank 0 says what is
 * left (`left`), each signalled rank its signal. CLI_EXIT_STOPPED; the
 * caller frees and finalises. Nothing partial is under a final name: each
 * step writes a temporary and renames it, and a step under way when the
 * signal came was finished (the next run removes any temporary a SIGKILL
 * left: dataset_prepare). */
static int finish_stopped(const char *cmd, const char *out, const char *left) {
  if (g_rank == 0)
    fprintf(stderr, "coemu %s: stopped by a signal after every shard was made: %s; every shard "
                    "is kept in %s: rerun the same command to resume (it makes no shard, only "
                    "what is missing)\n", cmd, left, out);
  say_rank_stopped(cmd);
  return CLI_EXIT_STOPPED;
}

/* What a run stopped at `done` (FINISHED_*) has still to write; stats: /stats
 * is still to compute (a rerun of a dataset that has it: 0) */
static const char *finish_left(int done, int stats) {
  if (done == FINISHED_NONE)
    return stats ? "manifest.json, dataset.h5, preview.png and /stats are not written"
                 : "manifest.json, dataset.h5 and preview.png are not written";
  if (done == FINISHED_DATASET)
    return stats ? "preview.png and /stats are not written" : "preview.png is not written";
  return "/stats is not computed";
}

/* Rank 0: OUT/preview.png (png) unless a SIGTERM/SIGINT came first;
 * *done becomes FINISHED_PREVIEW when it is written. `missing`: say that it
 * is made because it is missing (a rerun of a finished dataset). 0 or -1. */
static int finish_preview(const char *cmd, const char *out, const char *png, int *done,
                          int missing, int quiet) {
  finish_hook("preview");
  if (g_stop_now) return 0;
  if (missing && !quiet) fprintf(stderr, "coemu %s: %s has no preview.png yet: making it\n", cmd, out);
  CE_TRY(dataset_preview(out, 4, png));
  *done = FINISHED_PREVIEW;
  return 0;
}

static int job_stats(const char *cmd, const job *j, const char *out, int quiet);

/* Every rank, after rank 0's steps reached `done`: a signal to any rank
 * stops them all while something is left; else /stats when `stats` asks
 * for it (`missing`: say that it is computed because it is missing, as a
 * rerun of a finished dataset does). The exit status. */
static int finish_rest(const char *cmd, const job *j, const char *out, int quiet, int done,
                       int stats, int missing) {
  if (any_stop_signal(&done) && (done < FINISHED_PREVIEW || stats))
    return finish_stopped(cmd, out, finish_left(done, stats));
  if (!stats) return 0;
  if (missing && g_rank == 0 && !quiet)
    fprintf(stderr, "coemu %s: %s/dataset.h5 has no /stats yet: computing it\n", cmd, out);
  int rc = job_stats(cmd, j, out, quiet);
  return rc == DATASET_STATS_STOPPED ? finish_stopped(cmd, out, finish_left(done, stats))
         : rc < 0                    ? 1
                                     : 0;
}

/* Shard s, left by an earlier run: keep it (1, *sums filled) on what it
 * claims (shard_check_claims: a shard gets its final name only after
 * fsync), or on its CRC-32s read back in full with --verify-kept; reading
 * every byte again made a resume cost as much as reading the dataset (7 TB
 * at the paper's size), and `coemu verify` is that check when it is wanted.
 * A shard that fails is removed with a warning (0: make it again); a shard
 * not there is 0 too; -1 with the message when it cannot be removed. */
/* Whether shard s (at path, which exists) would be kept: 1 (*sums filled),
 * or 0 with the reason as the message. Read only: keep_shard and --check's
 * count of what a resume keeps (check_out_dir) judge alike. */
static int shard_keepable(const job *j, const shard_layout *lay, const char *path, int64_t s,
                          shard_sums *sums) {
  int64_t first, count;
  dataset_shard_range(s, job_samples(j), j->samples_per_shard, &first, &count);
  if ((g_verify_kept ? shard_verify(path, lay, sums) : shard_check_claims(path, lay, sums)) < 0)
    return 0;
  if (sums->first != first || sums->count != count) {
    ce_err("%s: holds samples %lld..%lld, expected %lld..%lld", path, (long long)sums->first,
           (long long)(sums->first + sums->count - 1), (long long)first, (long long)(first + count - 1));
    return 0;
  }
  return 1;
}

static int keep_shard(const job *j, const shard_layout *lay, const char *out, int64_t s,
                      shard_sums *sums) {
  char path[4096];
  CE_TRY(dataset_shard_path(out, s, path, sizeof path));
  if (access(path, F_OK) != 0) return 0;
  double t0 = ce_now();
  int ok = shard_keepable(j, lay, path, s, sums);
  g_resume_s += ce_now() - t0;
  if (ok) return 1;
  fprintf(stderr, "coemu %s: rank %d: warning: %s; making the shard again\n", g_cmd, g_rank,
          ce_err_msg());
  if (unlink(path) < 0) CE_FAIL("%s: cannot remove a damaged shard: %s", path, strerror(errno));
  return 0;
}

/* --check's output line: what the run would do with `out`, which
 * dataset_dir_judge gave `judged` (refusals are made before): create it,
 * take it over, rerun a finished dataset (nothing to make), or resume,
 * keeping the shards shard_keepable keeps (with --verify-kept their data
 * read back, as the run would). Reads only: a shard the run would make
 * again is named, not removed. */
static int check_out_dir(const job *j, const char *out, int judged) {
  if (access(out, F_OK) != 0) {
    printf("  output: %s does not exist: the run creates it\n", out);
    return 0;
  }
  if (judged == DATASET_DIR_NEW) {
    printf("  output: %s holds no dataset: the run makes one there\n", out);
    return 0;
  }
  if (judged == DATASET_DIR_FAILED_START) {
    printf("  output: %s holds only what a failed start of another job left (no finished "
           "shard): the run takes it over\n", out);
    return 0;
  }
  int level = dataset_finished(out, j);
  int64_t N = job_samples(j), K = dataset_shards(N, j->samples_per_shard);
  const char *stats = level == DATASET_FINISHED_SHARDS && j->stats_compute
                          ? "; its /stats is missing: the run computes it" : "";
  if (level && !g_verify_kept) {
    printf("  output: %s holds this job's finished dataset: nothing to make%s (no shard read: "
           "`coemu verify %s` reads every byte, as does the run with --verify-kept)\n",
           out, stats, out);
    return 0;
  }
  shard_layout lay;
  dataset_layout(j, &lay);
  int64_t kept = 0, kept_samples = 0, remade = 0;
  for (int64_t s = 0; s < K; s++) {
    char path[4096];
    CE_TRY(dataset_shard_path(out, s, path, sizeof path));
    if (access(path, F_OK) != 0) continue;
    shard_sums sums;
    if (shard_keepable(j, &lay, path, s, &sums)) {
      kept++;
      kept_samples += sums.count;
    } else if (++remade <= 5) {
      printf("  output: %s; the run makes the shard again\n", ce_err_msg());
    }
  }
  ce_err_clear();
  if (level && remade == 0)
    printf("  output: %s holds this job's finished dataset, every shard's CRC-32s read back "
           "and matching (--verify-kept): nothing to make%s\n", out, stats);
  else if (level)
    printf("  output: %s holds this job's finished dataset with %lld damaged shard%s "
           "(--verify-kept read every shard back): the run makes %s again and rewrites "
           "manifest.json, dataset.h5 and /stats\n", out, (long long)remade,
           remade == 1 ? "" : "s", remade == 1 ? "it" : "them");
  else
    printf("  output: %s holds this job's unfinished dataset: the run resumes it, keeping %lld "
           "of %lld shards (%lld of %lld samples; %s) and making %lld\n", out, (long long)kept,
           (long long)K, (long long)kept_samples, (long long)N,
           g_verify_kept ? "their CRC-32s read back: --verify-kept"
                         : "judged on what their files claim, no data read",
           (long long)(K - kept));
  return 0;
}

/* Make shard s. Returns the samples it holds (*sums: what the manifest
 * needs of it), -1 with the message, or -2 when a stop signal abandoned it
 * (its temporary file removed). */
static int64_t do_shard(const job *j, const shard_layout *lay, const char *out, int64_t s,
                        const generate_producer *p, const uint8_t *msplit, float *in, float *tg,
                        workplan *wp, shard_sums *sums) {
  int64_t N = job_samples(j), first, count;
  dataset_shard_range(s, N, j->samples_per_shard, &first, &count);
  char path[4096];
  CE_TRY(dataset_shard_path(out, s, path, sizeof path));
  shard_writer *w;
  CE_TRY(shard_open(&w, path, lay, first, count));
  if (p->plan) p->plan(p->ctx, first, count);
  size_t nin = 3 * (size_t)j->n * j->n * j->n, ntg = (size_t)j->nf * j->n * j->n;
  for (int64_t i = 0; i < count; i++) {
    if (g_stop == STOP_NOW) { /* SIGTERM/SIGINT: start no other sample */
      shard_close(w, 0, NULL);
      return -2;
    }
    int64_t sample = first + i, model = sample / j->directions, dir = sample % j->directions;
    double q[4] = {1, 0, 0, 0};
    uint8_t valid = 1;
    ce_err_clear();
    /* with stored inputs, the sample is made in a buffer of the shard row
     * writer's, which writes it while the next one is made */
    float *row = j->store_inputs ? shard_row_buffer(nin) : in;
    if (!row) {
      char msg[1100];
      snprintf(msg, sizeof msg, "%s", ce_err_msg());
      shard_close(w, 0, NULL);
      CE_FAIL("%s", msg);
    }
    /* images-only with a producer that hashes its own input rows: none
     * reaches this buffer (unless the sample fails: zeros, hashed below) */
    int hashed = !j->store_inputs && p->sample_images;
    uint64_t in_hash = 0;
    double t0 = ce_now(), c0 = process_cpu();
    int prc = hashed ? p->sample_images(p->ctx, model, dir, &in_hash, tg, q)
                     : p->sample(p->ctx, model, dir, row, tg, q);
    g_produce_s += ce_now() - t0;
    g_produce_cpu_s += process_cpu() - c0;
    if (prc < 0) {
      char msg[1400];
      snprintf(msg, sizeof msg, "model %lld (%s), direction %lld: %s", (long long)model,
               j->model_names[model], (long long)dir, ce_err_msg());
      if (!j->skip_bad_models) {
        shard_close(w, 0, NULL);
        CE_FAIL("%s (inputs.on_bad_model: skip makes such samples invalid instead)", msg);
      }
      fprintf(stderr, "coemu %s: rank %d: warning: %s; sample skipped (valid = 0)\n", g_cmd,
              g_rank, msg);
      memset(row, 0, nin * sizeof *row);
      memset(tg, 0, ntg * sizeof *tg);
      memset(q, 0, sizeof q);
      valid = 0;
      hashed = 0;
    }
    if ((hashed ? shard_put_hashed(w, in_hash, tg, model, dir, q, msplit[model], valid)
                : shard_put(w, row, tg, model, dir, q, msplit[model], valid)) < 0) {
      char msg[1100];
      snprintf(msg, sizeof msg, "%s", ce_err_msg());
      shard_close(w, 0, NULL);
      CE_FAIL("%s", msg);
    }
    workplan_serve(wp, i + 1);
  }
  CE_TRY(shard_close_async(w, sums)); /* fsync + rename in the background */
  return count;
}

/* What this rank read or wrote of each shard it kept or made: rank 0 gets
 * them all (gather_sums) and writes the manifest without opening any shard
 * again. */
typedef struct {
  int64_t shard;
  shard_sums sums;
} shard_record;

typedef struct {
  shard_record *r;
  size_t n, cap;
} shard_records;

/* Append; on no memory the records are dropped (ok = 0): rank 0 then reads
 * the shards itself, as before. */
static void records_add(shard_records *rs, int *ok, int64_t s, const shard_sums *sums) {
  if (!*ok) return;
  if (rs->n == rs->cap) {
    size_t cap = rs->cap ? 2 * rs->cap : 1024;
    shard_record *r = realloc(rs->r, cap * sizeof *r);
    if (!r) {
      *ok = 0;
      return;
    }
    rs->r = r, rs->cap = cap;
  }
  rs->r[rs->n].shard = s;
  rs->r[rs->n].sums = *sums;
  rs->n++;
}

/* Every rank: rank 0 receives every rank's records into known[K] (count 0:
 * none, dataset_finish reads that shard). Returns known on rank 0 (NULL
 * elsewhere, or when some rank had no memory or too many records for one
 * message: then rank 0 reads every shard). */
static shard_sums *gather_sums(const shard_records *rs, int ok, int64_t K, int size) {
  if ((double)rs->n * sizeof(shard_record) > INT_MAX) ok = 0;
  int all_ok = 0;
  MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (!all_ok) return NULL;
  int mine = (int)(rs->n * sizeof(shard_record)), *bytes = NULL, *at = NULL;
  shard_record *all = NULL;
  shard_sums *known = NULL;
  int64_t total = 0;
  int rok = 1;
  if (g_rank == 0) {
    bytes = calloc((size_t)size, sizeof *bytes);
    at = calloc((size_t)size, sizeof *at);
    rok = bytes && at;
  }
  MPI_Bcast(&rok, 1, MPI_INT, 0, MPI_COMM_WORLD); /* no gather into memory rank 0 lacks */
  if (rok) MPI_Gather(&mine, 1, MPI_INT, bytes, 1, MPI_INT, 0, MPI_COMM_WORLD);
  if (g_rank == 0) {
    for (int r = 0; rok && r < size; r++) {
      if (total > INT_MAX - bytes[r]) rok = 0;
      else at[r] = (int)total, total += bytes[r];
    }
    all = rok ? malloc(total > 0 ? (size_t)total : 1) : NULL;
    known = rok ? calloc((size_t)K, sizeof *known) : NULL;
    rok = all && known;
  }
  MPI_Bcast(&rok, 1, MPI_INT, 0, MPI_COMM_WORLD);
  if (rok)
    MPI_Gatherv(rs->r, mine, MPI_BYTE, all, bytes, at, MPI_BYTE, 0, MPI_COMM_WORLD);
  if (rok && g_rank == 0)
    for (int64_t k = 0; k < total / (int64_t)sizeof(shard_record); k++)
      if (all[k].shard >= 0 && all[k].shard < K) known[all[k].shard] = all[k].sums;
  free(all);
  free(bytes);
  free(at);
  if (!rok) {
    free(known);
    known = NULL;
  }
  return known;
}

/* The resume pass: rank r checks the shards r, r + size, ... that an earlier
 * run left (keep_shard). The checks cost the same for every shard, so a
 * fixed share is even, and no rank asks rank 0 anything: handing out
 * 34,000 kept shards one by one took 4.4 s of a resume. need[K] (zeroed by
 * the caller) ends, on every rank, with 1 for each shard still to make;
 * *kept_samples with the samples kept by all ranks, *own_kept with the
 * shards this rank kept. A stop signal ends
 * this rank's share after the check in progress (its unchecked shards are
 * then marked to make) and, on every rank, *any_stop is 1 when some rank
 * was stopped in the pass: no shard is then made at all (see below). -1
 * with the message (kept and need still agreed) when a damaged shard could
 * not be removed. */
static int resume_pass(const job *j, const shard_layout *lay, const char *out, int64_t K,
                       int size, const generate_producer *p, uint8_t *need, shard_records *rs,
                       int *rs_ok, int64_t *kept_samples, int64_t *own_kept, int *any_stop,
                       ce_progress *prog) {
  int64_t N = job_samples(j), mine[3] = {0, 0, 0};
  int rc = 0;
  for (int64_t s = g_rank; s < K; s += size) {
    int k = 0;
    shard_sums sums;
    if (rc == 0 && !g_stop) {
      if (p->resume_check) p->resume_check(p->ctx, s); /* a test hook (generate.h) */
      k = keep_shard(j, lay, out, s, &sums);
      if (k < 0) rc = -1;
    }
    if (k <= 0) {
      need[s] = 1;
      continue;
    }
    records_add(rs, rs_ok, s, &sums);
    mine[0]++;
    mine[1] += sums.count;
    /* rank 0's share times the ranks: the others check as fast */
    if (prog) {
      prog->kept = mine[1] * size < N ? mine[1] * size : N;
      ce_progress_update(prog, prog->kept);
    }
  }
  /* The stop is agreed here, with the kept samples, not left to the
   * signalled rank's first request for work: rank 0 (and any rank it
   * answers first) would otherwise be handed a shard before that request
   * arrives, and make it in full after the signal (tests/pipeline/
   * test_generate_resume_signals.py saw it every time on 2 ranks). That
   * shard may even be a finished one the stopped rank left unchecked
   * (marked to make above), made again for nothing: minutes of work at the
   * paper's size, after a SIGTERM that gives 30 s. */
  mine[2] = g_stop != 0;
  int64_t sum[2];
  double tc = ce_now();
  MPI_Allreduce(MPI_IN_PLACE, need, (int)K, MPI_UINT8_T, MPI_BOR, MPI_COMM_WORLD);
  MPI_Allreduce(&mine[1], sum, 2, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
  g_coord_s += ce_now() - tc;
  *kept_samples = sum[0];
  *any_stop = sum[1] > 0;
  *own_kept = mine[0];
  return rc;
}

/* The end-of-run breakdown of rank time, summed over the ranks (docs/jobs.md,
 * "Where the time goes"), with the rate of the samples made in this run
 * (made: a resume's kept shards cost no production and do not count):
 * b = {rank, produce, hash, write, commit wait,
 * resume checks, coordination, background fsync} in wall seconds, then
 * {produce, hash, write} in CPU seconds, then the row writer's wall and CPU
 * seconds. */
static void print_breakdown(const char *cmd, const double *b, int ranks, int64_t made) {
  double T = b[0] > 0 ? b[0] : 1, other = b[0];
  for (int k = 1; k < 7; k++) other -= b[k];
  if (other < 0) other = 0;
  char rate[64];
  if (made > 0 && b[0] > 0)
    snprintf(rate, sizeof rate, "%.1f samples/s", (double)made * ranks / b[0]);
  else
    snprintf(rate, sizeof rate, "no sample made now");
  fprintf(stderr, "coemu %s: rank time %.2f s (%d %s, %s): produce %.2f s "
                  "(%.1f%%), hash %.2f s (%.1f%%), write %.2f s (%.1f%%), fsync wait %.2f s "
                  "(%.1f%%), resume checks %.2f s (%.1f%%), coordination %.2f s (%.1f%%), "
                  "other %.2f s (%.1f%%); %.1f%% outside the producer; in the background: "
                  "input rows written %.2f s, fsync %.2f s\n",
          cmd, b[0], ranks, ranks == 1 ? "rank" : "ranks", rate, b[1], 100 * b[1] / T, b[2],
          100 * b[2] / T, b[3], 100 * b[3] / T, b[4], 100 * b[4] / T, b[5], 100 * b[5] / T, b[6],
          100 * b[6] / T, other, 100 * other / T, 100 * (1 - b[1] / T), b[11], b[7]);
  double cpu = b[8] + b[9] + b[10] + b[12];
  if (cpu > 0)
    fprintf(stderr, "coemu %s: CPU time: produce %.2f s, hash %.2f s, write %.2f s, input rows "
                    "%.2f s: %.1f%% of the CPU outside the producer (what waiting for a loaded "
                    "machine's cores does not inflate)\n",
            cmd, b[8], b[9], b[10], b[12], 100 * (b[9] + b[10] + b[12]) / cpu);
}

/* Every rank: the /stats group over the finished dataset (recomputed from
 * the shards, so a resumed job gets the same numbers as an uninterrupted
 * one). dataset_stats prints a failing rank's error itself. 0, -1, or
 * DATASET_STATS_STOPPED on every rank (a signal: the caller says so). */
static int job_stats(const char *cmd, const job *j, const char *out, int quiet) {
  double ts = ce_now();
  finish_hook("stats");
  /* SIGTERM/SIGINT stop it between reads of samples (g_stop_now, every rank) */
  int rc = dataset_stats(out, j->stats_split, j->stats_drop_outliers, j->stats_lnI_clip, 1,
                         &g_stop_now);
  if (g_rank == 0 && !quiet && rc == 0)
    fprintf(stderr, "coemu %s: /stats over the %s split in %.1f s\n", cmd, j->stats_split,
            ce_now() - ts);
  if (g_rank == 0 && rc == -1)
    fprintf(stderr, "coemu %s: every sample is made and kept in %s; only its /stats failed "
                    "(above): after fixing the cause, `coemu stats %s` (under mpirun for "
                    "parallel) computes it without making any sample again\n", cmd, out, out);
  return rc;
}

/* The producer and the run's buffers, on the paths that leave before the
 * dataset is finished (a finished dataset found again, a stop or a failure). */
static void release_run(generate_producer *p, uint8_t *need, shard_records *recs, uint8_t *msplit,
                        float *in, float *tg) {
  if (p->close) p->close(p->ctx);
  p->close = NULL;
  free(need);
  free(recs->r);
  free(msplit);
  free(in);
  free(tg);
}

/* A rerun of a finished job (dataset_finished gave `level`, every rank):
 * nothing made, no shard read (with --verify-kept: every shard read back
 * and kept), manifest and dataset.h5 as they were; preview.png and /stats
 * made only when they are missing (a run stopped by a signal, or failed on
 * a full disk, after dataset.h5). A signal stops it as it stops the
 * finishing steps of any run (exit 3). The exit status, after MPI_Finalize. */
static int rerun_finished(const char *cmd, job *j, const char *out, int level, int quiet) {
  if (g_rank == 0 && !quiet) {
    char how[512], hint[512] = "";
    if (g_verify_kept) {
      snprintf(how, sizeof how, "every shard read back and its CRC-32s matching (--verify-kept)");
    } else {
      snprintf(how, sizeof how, "each where manifest.json says with its recorded size");
      snprintf(hint, sizeof hint, " (no shard read: `coemu verify %.300s` reads every byte, and "
               "--verify-kept reads every shard back and makes a damaged one again)", out);
    }
    fprintf(stderr, "coemu %s: %s is finished: %lld samples in %lld shards, %s, and dataset.h5%s; "
                    "nothing to make%s\n",
            cmd, out, (long long)job_samples(j),
            (long long)dataset_shards(job_samples(j), j->samples_per_shard), how,
            level == DATASET_FINISHED_ALL && j->stats_compute ? " with /stats" : "", hint);
  }
  /* a consumer waiting on the job's live stream would wait for ever: say
   * where a finished dataset is served (even with --quiet) */
  if (g_rank == 0 && j->has_stream && !j->stream_generate)
    fprintf(stderr, "coemu %s: the job's stream section starts no live server for a finished "
                    "dataset: serve it with `coemu serve %s --endpoint %s`\n",
            cmd, out, j->stream_endpoint);
  /* dataset_finished does not judge preview.png (a picture, no data): a
   * finished dataset without it is still finished, but the rerun is what
   * makes it, as the run would have */
  int rc = 0, done = FINISHED_PREVIEW, stats = level == DATASET_FINISHED_SHARDS && j->stats_compute;
  if (g_rank == 0) {
    char png[4200];
    snprintf(png, sizeof png, "%s/preview.png", out);
    if (access(png, F_OK) != 0) {
      done = FINISHED_DATASET;
      rc = finish_preview(cmd, out, png, &done, 1, quiet);
    }
  }
  mpi_agree(rc);
  rc = finish_rest(cmd, j, out, quiet, done, stats, 1);
  job_free(j);
  MPI_Finalize();
  return rc;
}

int generate_main(const char *cmd, int argc, char **argv, producer_open_fn open) {
  g_cmd = cmd;
  const char *out = NULL;
  int check = 0, quiet = 0, schema_doc = 0;
  cli_opt opts[] = {
      {"out", CLI_STR, &out, "DIR", "dataset directory (default: the job's output.directory)", 0, 0},
      {"check", CLI_FLAG, &check, NULL, "validate the job, read its input files (LAMDA, AMRVAC headers, units sidecars; with line.mode lvg every model in full, for cells the LVG solve refuses) and judge the output folder as the run would (another job's dataset is refused; a resume says how many shards it keeps, a finished dataset that there is nothing to make), print the samples, disk and time it will take, and exit", 0, 0},
      {"quiet", CLI_FLAG, &quiet, NULL, "no progress lines", 0, 0},
      {"verify-kept", CLI_FLAG, &g_verify_kept, NULL, "on a resume, and on a rerun of a finished dataset, read back every shard an earlier run finished and check its CRC-32s before keeping it (a damaged one is made again; with --check, counted); without it a kept shard is checked on what its file claims (layout, job, sample range, row counts), reading no data, and a finished dataset is not read at all", 0, 0},
      {"schema-doc", CLI_FLAG, &schema_doc, NULL, "print the job-file key table (Markdown) and exit", 0, 0},
      {0}};
  const cli_command spec = {
      cmd, "[JOB.yaml] [options]   (under mpirun for several ranks)",
      "Make a dataset: run a job file (default: the embedded demo job) over all MPI ranks into a "
      "directory of HDF5 shards, a manifest and dataset.h5; rerun the same command to resume. "
      "SIGUSR1 finishes the shards being made and stops, SIGTERM/SIGINT abandon them and stop: "
      "exit status 3, rerun to resume (docs/jobs.md, \"Wall-time limits\"). Prints where the "
      "ranks' time went at the end.",
      opts, 0, 1};
  int npos = 0;
  char **pos = NULL;
  cli_status r = cli_run_parse(&spec, argc, argv, &npos, &pos);
  if (r != CLI_OK) return cli_exit(r);
  const char *job_path = npos ? pos[0] : NULL;
  free(pos);
  if (schema_doc) return job_schema_markdown(stdout) < 0 ? 1 : 0;

  job j;
  int loaded = job_path ? job_load(job_path, &j)
                        : job_parse("<embedded jobs/demo.yaml>", job_demo_text,
                                    strlen(job_demo_text), "jobs", &j);
  if (check) {
    if (loaded < 0) return cli_fail(cmd);
    int rc = check_only(&j, out ? out : j.out_dir);
    job_free(&j);
    return rc < 0 ? cli_fail(cmd) : 0;
  }

  MPI_Init(&argc, &argv);
  /* Under a launcher, a rank dies with it: ranks that outlived a killed
   * mpirun would go on writing and hold the folder's lock, so that the
   * rerun is refused ("in use by another coemu"). A rank without a launcher
   * (a singleton) keeps running when its shell goes (nohup). */
  if (cli_launched()) {
    pid_t parent = getppid();
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) == 0 && getppid() != parent) raise(SIGKILL);
  }
  mpi_fatal_init(cmd);
  g_rank = mpi_fatal_rank();
  /* from here a stop signal is noted and acted on at the next sample (see
   * on_stop_signal); before the first shard it stops the run there */
  stop_signals();
  int size;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  /* Over a file-size limit, write() must fail with EFBIG (a clean error
   * naming the shard) instead of the process dying of SIGXFSZ. */
  signal(SIGXFSZ, SIG_IGN);
  /* Every error up to the shard loop is found by all ranks in step: one
   * message, MPI_Finalize, exit 1 (mpi_agree). A bad job is found by every
   * rank alike. */
  mpi_agree(loaded);
  if (!out) out = j.out_dir;

  /* from here on an agreed failure frees the job (and, below, undoes the
   * start) before it exits */
  start_state start = {out, 0, 0, &j, NULL, {NULL, NULL, NULL}};
  mpi_set_cleanup(undo_start, &start);
  /* The input files, before anything is created: every rank reads the
   * LAMDA file (all nodes must see it) and its share of the AMRVAC headers
   * and sidecars. */
  mpi_agree(job_check_inputs_part(&j, g_rank, size, NULL));
  start.active = 1;
  shard_layout lay;
  dataset_layout(&j, &lay);
  if (g_rank == 0) {
    int rc = 0;
    start.created = access(out, F_OK) != 0;
    if (!start.created) rc = take_over_failed_start(out, &j);
    if (rc == 0) rc = dataset_prepare(out, &j);
    mpi_agree(rc);
  } else {
    mpi_agree(0);
  }

  /* A rerun of a finished job (docs/jobs.md, "Rerunning a finished job"):
   * nothing to make, and nothing to read again either (at the paper's size
   * every shard verified and /stats recomputed took as long as reading the
   * 7 TB twice); at most its missing /stats */
  int finished = g_rank == 0 ? dataset_finished(out, &j) : 0;
  MPI_Bcast(&finished, 1, MPI_INT, 0, MPI_COMM_WORLD);
  /* --verify-kept promises every kept shard read back, a finished dataset's
   * too: it goes through the resume pass below (a damaged shard is made
   * again, and the dataset then finished as any resume finishes it) */
  if (finished && !g_verify_kept) {
    start.active = 0;
    mpi_set_cleanup(NULL, NULL);
    return rerun_finished(cmd, &j, out, finished, quiet);
  }

  generate_producer p = {0};
  mpi_agree(open(&j, out, &p));
  start.producer = &p;
  uint8_t *msplit = ce_malloc_array((size_t)j.n_models, 1, "model splits");
  float *in = ce_malloc_array(3 * (size_t)j.n * j.n * j.n, sizeof(float), "input cube");
  float *tg = ce_malloc_array((size_t)j.nf * j.n * j.n, sizeof(float), "target image");
  start.buffers[0] = msplit, start.buffers[1] = in, start.buffers[2] = tg;
  mpi_agree((!msplit || !in || !tg || job_model_splits(&j, msplit) < 0) ? -1 : 0);
  {
    int rc = 0;
    if (g_rank == 0) rc = dataset_write_plan(out, &j, msplit);
    /* a finished dataset (being verified: --verify-kept) is served by coemu
     * serve, not followed live */
    if (g_rank == 0 && rc == 0 && j.has_stream && !j.stream_generate && !finished)
      rc = live_serve_spawn(out, &j);
    mpi_agree(rc);
  }
  /* from here on the folder holds this job's work: a failure keeps it for
   * the resume */
  start.active = 0;

  int64_t N = job_samples(&j), K = dataset_shards(N, j.samples_per_shard);
  ce_progress prog;
  ce_progress_init(&prog, cmd, "samples", N, quiet || g_rank != 0);
  uint8_t *need = calloc((size_t)K, 1);
  mpi_agree(need ? 0 : ce_err("out of memory for the flags of %lld shards", (long long)K));
  shard_records recs = {NULL, 0, 0};
  int recs_ok = 1;
  int64_t counts[3] = {0, 0, 0}, kept_samples = 0; /* shards made, shards kept, samples made */
  double t_start = ce_now();
  int failed = 0, stopped = 0;
  char failure[2048] = "";
  if (resume_pass(&j, &lay, out, K, size, &p, need, &recs, &recs_ok, &kept_samples, &counts[1],
                  &stopped, g_rank == 0 ? &prog : NULL) < 0) {
    snprintf(failure, sizeof failure, "%s", ce_err_msg());
    failed = 1; /* said to rank 0 at the first request below */
  }
  /* --verify-kept on a finished dataset whose every shard was read back and
   * kept: nothing to make, so it is left as it was (manifest, dataset.h5 and
   * a /stats that coemu stats recomputed), as a rerun without the flag
   * leaves it. need is agreed, and a rank that failed or was stopped left a
   * shard marked, so every rank takes this branch or none. */
  if (finished) {
    int64_t s = 0;
    while (s < K && !need[s]) s++;
    if (s == K && !stopped) {
      release_run(&p, need, &recs, msplit, in, tg);
      ce_progress_done(&prog, N);
      mpi_set_cleanup(NULL, NULL);
      return rerun_finished(cmd, &j, out, finished, quiet);
    }
  }
  /* stopped: a rank was signalled in the resume pass (or the start), so
   * every rank asks for no work below and none is handed out */
  workplan wp;
  workplan_init(&wp, MPI_COMM_WORLD, K, need, kept_samples, g_rank == 0 ? &prog : NULL);
  int64_t last = 0;
  for (;;) {
    /* a stop signal: ask for no more work (rank 0 then hands out no more
     * shards, so every rank stops after its current shard) */
    if (g_stop) stopped = 1;
    double tc = ce_now();
    int64_t s = workplan_next(&wp, last, failed || stopped);
    g_coord_s += ce_now() - tc;
    if (s < 0) break;
    if (g_stop == STOP_NOW) { /* arrived while asking: leave shard s to the resume */
      stopped = 1;
      continue;
    }
    shard_sums sums;
    last = do_shard(&j, &lay, out, s, &p, msplit, in, tg, &wp, &sums);
    if (last == -2) { /* abandoned by SIGTERM/SIGINT */
      stopped = 1;
      last = 0;
      continue;
    }
    if (last < 0) {
      /* tell rank 0 (no more shards for anyone) and meet the others below */
      snprintf(failure, sizeof failure, "%s", ce_err_msg());
      failed = 1;
      last = 0;
      continue;
    }
    records_add(&recs, &recs_ok, s, &sums);
    counts[0]++;
    counts[2] += last;
  }
  double tw = ce_now();
  if (shard_commits_wait() < 0 && !failed) {
    snprintf(failure, sizeof failure, "%s", ce_err_msg());
    failed = 1;
  }
  double t_commit = ce_now() - tw;
  tw = ce_now();
  workplan_drain(&wp);
  if (failed) ce_err("%s", failure);
  int any_failed = mpi_any_failed(failed ? -1 : 0);
  if (g_stop) stopped = 1;
  g_coord_s += ce_now() - tw;
  double t_rank = ce_now() - t_start;
  int any_stopped = 0;
  if (!any_failed) MPI_Allreduce(&stopped, &any_stopped, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (any_failed || any_stopped) {
    int64_t made_sum = 0;
    MPI_Reduce(&counts[0], &made_sum, 1, MPI_INT64_T, MPI_SUM, 0, MPI_COMM_WORLD);
    if (g_rank == 0 && any_failed)
      fprintf(stderr, "coemu %s: the shards finished so far are kept in %s: fix the cause and "
                      "rerun the same command to resume\n", cmd, out);
    if (g_rank == 0 && !any_failed)
      fprintf(stderr, "coemu %s: stopped by a signal (SIGTERM/SIGINT: the shards being made were "
                      "abandoned; SIGUSR1: they were finished); %lld shards made now, every "
                      "finished shard is kept in %s: rerun the same command to resume\n",
              cmd, (long long)made_sum, out);
    if (!any_failed && stopped) say_rank_stopped(cmd);
    release_run(&p, need, &recs, msplit, in, tg);
    job_free(&j);
    if (failed) hdf5_skip_shutdown();
    MPI_Finalize();
    return any_failed ? CLI_EXIT_FAILURE : CLI_EXIT_STOPPED;
  }
  /* Every rank goes on to the finishing steps: rank 0 writes manifest.json
   * and dataset.h5, then preview.png; then every rank computes /stats. Each
   * is written to a temporary name and renamed, and the signal handlers stay
   * (stop_signals): SIGTERM or SIGINT (not SIGUSR1: g_stop_now) lets the
   * step under way finish and stops the run before the next one, or between
   * reads of /stats;
   * every rank then exits 3 and the rerun (rerun_finished, or a resume
   * that keeps every shard when dataset.h5 is missing) does what is left. */
  int64_t total[3];
  MPI_Reduce(counts, total, 3, MPI_INT64_T, MPI_SUM, 0, MPI_COMM_WORLD);
  shard_times st;
  shard_times_get(&st);
  /* rank time = produce + hash + write + commit wait + resume checks +
   * coordination + other (the loop's own bookkeeping) */
  double bd[13] = {t_rank, g_produce_s, st.hash_s, st.write_s, t_commit, g_resume_s, g_coord_s,
                   st.fsync_s, g_produce_cpu_s, st.hash_cpu_s, st.write_cpu_s, st.rows_s,
                   st.rows_cpu_s},
         bd_sum[13];
  MPI_Reduce(bd, bd_sum, 13, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD);
  free(need);
  shard_sums *known = gather_sums(&recs, recs_ok, K, size);
  free(recs.r);
  int frc = 0, done = FINISHED_NONE;
  finish_hook("dataset");
  if (g_rank == 0) {
    ce_progress_done(&prog, N);
    char mpiv[MPI_MAX_LIBRARY_VERSION_STRING];
    int len = 0;
    MPI_Get_library_version(mpiv, &len);
    char *nl = strchr(mpiv, '\n');
    if (nl) *nl = 0;
    double *freq = ce_malloc_array((size_t)j.nf, sizeof *freq, "frequencies");
    char png[4200];
    snprintf(png, sizeof png, "%s/preview.png", out);
    if (!freq) frc = -1;
    if (frc == 0 && !g_stop_now) {
      job_frequencies(&j, p.nu0, freq);
      dataset_provenance pv = {&j, freq, p.nu0, p.mass, p.name, mpiv, size,
                               p.has_geometry ? &p.geometry : NULL};
      frc = dataset_finish(out, &pv, known);
      if (frc == 0) done = FINISHED_DATASET;
    }
    if (done == FINISHED_DATASET) frc = finish_preview(cmd, out, png, &done, 0, quiet);
    free(freq);
    free(known);
    if (done == FINISHED_PREVIEW && !quiet) {
      fprintf(stderr, "coemu %s: %s: %lld samples in %lld shards (%lld made now, %lld kept from "
                      "an earlier run)\n",
              cmd, out, (long long)N, (long long)K, (long long)total[0], (long long)total[1]);
      fprintf(stderr, "coemu %s: dataset %s/dataset.h5, preview %s\n", cmd, out, png);
      print_breakdown(cmd, bd_sum, size, total[2]);
    }
  }
  if (p.close) p.close(p.ctx);
  p.close = NULL;
  mpi_agree(frc);
  mpi_set_cleanup(NULL, NULL);
  /* a signal to any rank during rank 0's steps stops every rank here; with
   * nothing left to do (every step done, no /stats asked for) the run is
   * finished and exits 0 */
  int rc = finish_rest(cmd, &j, out, quiet, done, j.stats_compute, 0);
  free(msplit);
  free(in);
  free(tg);
  job_free(&j);
  MPI_Finalize();
  return rc;
}
