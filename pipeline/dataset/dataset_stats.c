/* dataset_stats.c - the /stats group of a dataset (DIR/dataset.h5),
 * computed in parallel over MPI_COMM_WORLD (coemu stats, coemu generate).
 *
 * Samples are split into contiguous blocks over the ranks; each rank reads
 * its samples from the shard files (shard_reader.h: the manifest's map, a
 * cache of open shards, consecutive samples of a shard in one read, each
 * sample checked; never through dataset.h5's virtual datasets) twice:
 *   read 1: exact moments (stats/moments.h), the first histogram pass of the
 *           exact quantiles, and each sample's lower median per field
 *           (stats/select.h);
 *   read 2: the second histogram pass, and the counts around the median of
 *           medians (its true rank); from memory when the rank's block of
 *           samples read 1 read fits in 256 MB (small samples: each shard
 *           is then opened once).
 * Fields: v_z, ln_T, ln_n_CO, ln_I (all channels) and ln_I_chK per channel
 * when there are several; ln I after the zero replacement (and the -40 clip
 * with several channels) of stats/transforms.h. Rank 0 writes /stats
 * (stats/statsfile.h) after the reductions. Layout: docs/dataset-format.md.
 * The same run (stats_run) takes samples from a callback instead of the
 * shards (dataset_stats_source_run: the pilot pass of coemu serve
 * --generate), so both compute the same statistics with the same code. */
#include <dirent.h>
#include <hdf5.h>
#include <unistd.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mpi.h>
#include <omp.h>

#include "common/error.h"
#include "common/fsutil.h"
#include "pipeline/dataset/dataset_stats.h"
#include "pipeline/dataset/h5util.h"
#include "pipeline/dataset/shard_reader.h"
#include "pipeline/job/job.h"
#include "pipeline/mpi/mpi_node.h"
#include "stats/moments.h"
#include "stats/moments_mpi.h"
#include "stats/quantile.h"
#include "stats/select.h"
#include "stats/statsfile.h"
#include "stats/transforms.h"

#define MAX_FIELDS (4 + JOB_STATS_MAX_CHANNELS) /* v_z, ln T, ln n, ln I + a field per channel */

typedef struct {
  shard_reader *rd;                  /* a dataset directory's samples, or */
  const dataset_stats_source *src;   /* samples from elsewhere (no split: all count) */
  hsize_t N, n, F;
  int has_inputs;  /* 0: made with output.store_inputs false (targets only) */
  uint8_t *split;  /* N entries (this rank's block filled), or NULL */
} dataset;

typedef struct {
  stats_moments mom;
  stats_qsel q;
  float *medians;  /* this rank's chunk medians */
  size_t nmed, capmed;
  uint64_t lt, le, nloc;
  double mom_value;
  stats_field out;
} field_acc;

/* Open DIR's samples for this rank: the shards, each rank on its own (the
 * reads are independent). The labels are read as the samples are, shard by
 * shard (load_split), so a shard is opened once for both. */
static int open_dataset(const char *dir, const char *path, dataset *ds) {
  memset(ds, 0, sizeof *ds);
  CE_TRY(shard_reader_open(dir, 0, &ds->rd));
  ds->has_inputs = shard_reader_has_inputs(ds->rd);
  if (shard_reader_images_only(ds->rd)) {
    /* the rebuilt cubes are made by OpenMP threads: this rank's share of
     * its CPUs, so ranks do not oversubscribe them (idle OpenMP threads
     * spin) */
    omp_set_num_threads(mpi_node_threads());
  }
  ds->N = (hsize_t)shard_reader_samples(ds->rd);
  ds->n = (hsize_t)shard_reader_n(ds->rd);
  ds->F = (hsize_t)shard_reader_channels(ds->rd);
  if (ds->F < 1 || ds->F > MAX_FIELDS - 4)
    CE_FAIL("%s: /targets has %llu channels, expected 1..%d", path, (unsigned long long)ds->F,
            MAX_FIELDS - 4);
  int has_split = 0;
  CE_TRY(shard_reader_labels(ds->rd, 0, 0, NULL, NULL, &has_split, NULL));
  if (has_split && !(ds->split = ce_malloc_array(ds->N ? ds->N : 1, 1, "/split"))) return -1;
  return 0;
}

/* The split of samples [i, end) with end the end of i's shard (at most hi),
 * checked: the split decides which samples count, so each shard's slice is
 * checked against the manifest's CRC-32, as the samples are against
 * /checksums. Returns end, or -1. */
static int64_t load_split(dataset *ds, const char *path, hsize_t i, hsize_t hi) {
  int64_t end = shard_reader_shard_end(ds->rd, (int64_t)i);
  if ((hsize_t)end > hi) end = (int64_t)hi;
  CE_TRY(shard_reader_labels(ds->rd, (int64_t)i, end - (int64_t)i, ds->split, NULL, NULL, NULL));
  for (hsize_t k = i; k < (hsize_t)end; k++)
    if (ds->split[k] > 2)
      CE_FAIL("%s: /split[%llu] = %d, expected 0 (train), 1 (validation) or 2 (test)", path,
              (unsigned long long)k, ds->split[k]);
  return end;
}

static void close_dataset(dataset *ds) {
  shard_reader_close(ds->rd);
  ds->rd = NULL;
  free(ds->split);
  ds->split = NULL;
}

static int push_median(field_acc *a, float v) {
  if (a->nmed == a->capmed) {
    size_t cap = a->capmed ? 2 * a->capmed : 256;
    float *p = realloc(a->medians, cap * sizeof *p);
    if (!p) CE_FAIL("out of memory for %zu chunk medians", cap);
    a->medians = p;
    a->capmed = cap;
  }
  a->medians[a->nmed++] = v;
  return 0;
}

/* Print this rank's error the way the command layer does (no rank when
 * there is only one). */
static void report(const char *cmd) {
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (size > 1) fprintf(stderr, "coemu %s: rank %d: error: %s\n", cmd, rank, ce_err_msg());
  else fprintf(stderr, "coemu %s: error: %s\n", cmd, ce_err_msg());
}

/* A collective "did any rank fail?". The lowest failing rank prints its
 * message: an error every rank meets (a missing file) is printed once. */
static int any_failed(int local_rc, const char *cmd) {
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  int mine = local_rc < 0 ? rank : size, first = size;
  MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (first == rank) report(cmd);
  return first < size;
}

/* Rank 0, holding the lock: remove dataset.h5.tmp.* left by a killed stats. */
static void remove_stale_copies(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return;
  struct dirent *e;
  while ((e = readdir(d)))
    if (!strncmp(e->d_name, "dataset.h5.tmp.", 15)) {
      char p[4400];
      snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
      unlink(p);
    }
  closedir(d);
}

int dataset_stats_group(const char *dir, const char *split_name, char *group, size_t len,
                        double *lnI_clip) {
  job_stats_settings js = {"train", STATS_LNI_CLIP};
  char jp[4200];
  snprintf(jp, sizeof jp, "%s/job.yaml", dir);
  if (access(jp, F_OK) == 0 && job_stats_settings_read(jp, &js) < 0) return -1;
  if (lnI_clip) *lnI_clip = js.lnI_clip;
  if (!strcmp(split_name, js.split)) snprintf(group, len, "/stats");
  else snprintf(group, len, "/stats_%s", split_name);
  return 0;
}

/* Rank 0: a new HDF5 file at path holding only /stats (and the root
 * attribute `source` = note), written to a temporary name and renamed. */
static int write_new_file(const char *path, const char *note, const stats_field *fl, int nfl,
                          const stats_norm *norm, const stats_provenance *prov) {
  char tmp[4200];
  if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= sizeof tmp)
    CE_FAIL("%s: path too long", path);
  hid_t f = -1;
  H5E_BEGIN_TRY { f = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT); } H5E_END_TRY;
  if (f < 0) CE_FAIL("%s: cannot create (is its folder there and writable?)", tmp);
  int rc = note ? h5_put_str_attr(f, "source", note) : 0;
  if (H5Fclose(f) < 0 && rc == 0) rc = ce_err("%s: cannot close", tmp);
  if (rc == 0) rc = stats_file_write_group(tmp, "/stats", fl, nfl, norm, prov);
  if (rc == 0) rc = fs_rename_durable(tmp, path);
  if (rc < 0) {
    unlink(tmp);
    return ce_err_prefix("%s: not written", path);
  }
  return 0;
}

/* What a run writes and prints, beside the samples it reads. */
typedef struct {
  const char *cmd;        /* in error lines: "coemu CMD: [rank R: ]error: ..." */
  const char *path;       /* the samples' name in messages (DIR/dataset.h5, or the source's) */
  const char *write_path; /* where /stats goes (NULL: nowhere) */
  const char *group;      /* the group written into write_path (an existing file) */
  int create;             /* write_path is a new file holding only /stats (dataset_stats_source) */
  const char *note;       /* create: the root attribute `source` */
  FILE *out;              /* the per-field report (NULL: none) */
  stats_norm *norm_out;   /* rank 0: the normalisation parameters (may be NULL) */
  int64_t *used_out, *outliers_out; /* rank 0 (may be NULL) */
  int64_t *reads_out;     /* rank 0: samples read, summed over ranks and passes (may be NULL) */
  double lnI_clip;        /* the floor of ln I (multi-channel targets) */
  const volatile sig_atomic_t *stop; /* NULL, or a stop asked for (dataset_stats) */
} run_opts;

static int stats_run(dataset *ds, int want, const char *split_name, int drop_outliers,
                     const run_opts *ro);

int dataset_stats(const char *dir, const char *split_name, int drop_outliers, double lnI_clip,
                  int quiet, const volatile sig_atomic_t *stop) {
  int want;
  CE_TRY(job_split_parse(split_name, &want));
  char path[4096], group[64];
  snprintf(path, sizeof path, "%s/dataset.h5", dir);
  int rank;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  int status = 1;
  dataset ds = {0};
  /* rank 0 locks DIR (a missing DIR: the open below says so) */
  int want_lock = rank == 0 && access(dir, F_OK) == 0;
  int locked = want_lock && fs_lock_dir(dir, "stats") == 0;
  if (any_failed(want_lock && !locked ? -1 : 0, "stats")) goto out;
  if (locked) remove_stale_copies(dir);
  if (any_failed(open_dataset(dir, path, &ds), "stats")) goto out;
  /* every rank reads DIR/job.yaml: the same file, the same answer */
  double job_clip;
  if (any_failed(dataset_stats_group(dir, split_name, group, sizeof group, &job_clip), "stats"))
    goto out;
  if (isnan(lnI_clip)) lnI_clip = job_clip;
  if (drop_outliers && !ds.has_inputs) {
    if (rank == 0) {
      ce_err("%s: --drop-outliers (statistics.drop_outliers) needs v_z from /inputs, and this "
             "dataset has none (made with output.store_inputs: false)", path);
      report("stats");
    }
    goto out;
  }
  if (rank == 0 && !quiet && !shard_reader_checked(ds.rd))
    fprintf(stderr, "coemu stats: note: %s has no per-sample /checksums (made before dataset "
                    "format 2): samples are not checked (coemu verify checks its shards)\n", path);
  if (want >= 0 && !ds.split && want != 0) {
    if (rank == 0) {
      ce_err("%s: no /split, so --split %s selects nothing (use --split all)", path, split_name);
      report("stats");
    }
    goto out;
  }
  run_opts ro = {.cmd = "stats", .path = path, .write_path = path, .group = group,
                 .out = quiet ? NULL : stdout, .lnI_clip = lnI_clip, .stop = stop};
  status = stats_run(&ds, want, split_name, drop_outliers, &ro);
out:
  close_dataset(&ds);
  if (locked) fs_unlock_dir(dir);
  return status == DATASET_STATS_STOPPED ? status : status ? -1 : 0;
}

int dataset_stats_source_run(const dataset_stats_source *src, const char *cmd, const char *out_path,
                             const char *note, int drop_outliers, double lnI_clip,
                             FILE *report_to, stats_norm *norm, int64_t *used, int64_t *outliers,
                             int64_t *reads) {
  dataset ds = {.src = src, .N = (hsize_t)src->samples, .n = (hsize_t)src->n,
                .F = (hsize_t)src->channels, .has_inputs = 1};
  int rank;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (src->samples < 1 || src->n < 2 || src->channels < 1 || src->channels > MAX_FIELDS - 4) {
    if (rank == 0) {
      ce_err("%s: %lld samples of %d^3 cubes and %d channels: expected at least 1 sample, n >= 2, "
             "1..%d channels", src->name, (long long)src->samples, src->n, src->channels,
             MAX_FIELDS - 4);
      report(cmd);
    }
    return -1;
  }
  run_opts ro = {.cmd = cmd, .path = src->name, .write_path = out_path, .group = "/stats",
                 .create = 1, .note = note, .out = report_to, .norm_out = norm, .used_out = used,
                 .outliers_out = outliers, .reads_out = reads, .lnI_clip = lnI_clip};
  return stats_run(&ds, SPLIT_TRAIN, "train", drop_outliers, &ro);
}

/* Samples [i0, i0 + run) of the source: from the shards, or the callback. */
static int read_run(dataset *ds, hsize_t i0, hsize_t run, float *in, float *tg) {
  if (ds->src) return ds->src->read(ds->src->ctx, (int64_t)i0, (int64_t)run, in, tg);
  return shard_reader_read(ds->rd, (int64_t)i0, (int64_t)run, ds->has_inputs ? in : NULL, tg);
}

/* Whether some rank was stopped (ro->stop) in the pass of reads just ended:
 * collective, after the pass's failure check, so every rank meets it. */
static int any_stopped(int stopped) {
  int any = 0;
  MPI_Allreduce(&stopped, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  return any;
}

/* The statistics of ds's samples in split `want` (collective); rank 0 writes
 * and prints what ro says. 0, or -1 on every rank (the failing rank printed),
 * or DATASET_STATS_STOPPED on every rank (ro->stop, dataset_stats). */
static int stats_run(dataset *ds, int want, const char *split_name, int drop_outliers,
                     const run_opts *ro) {
  const char *path = ro->path, *cmd = ro->cmd;
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  int status = 1;
  field_acc *acc = NULL;
  float *in = NULL, *tg = NULL, *inb = NULL, *tgb = NULL, *work = NULL, *scratch = NULL;
  float *keep_in = NULL, *keep_tg = NULL; /* pass 0's samples for pass 1 (small samples) */
  int nf = 0, stopped = 0;
  stats_norm norm = {0};
  /* Without /split every sample counts as training. */
  size_t nvox = (size_t)(ds->n * ds->n * ds->n), npix = (size_t)(ds->n * ds->n), F = (size_t)ds->F;
  nf = 4 + (F > 1 ? (int)F : 0);
  /* fields f0..nf-1: without /inputs only ln_I and its channels */
  const int f0 = ds->has_inputs ? 0 : 3;
  acc = calloc((size_t)nf, sizeof *acc);
  /* runs of up to B consecutive samples are read at once (one read per
   * shard they touch): about 8 MB, at least one sample */
  const size_t sample_bytes = sizeof(float) * (3 * nvox + F * npix);
  const hsize_t B = sample_bytes < ((size_t)8 << 20) ? ((size_t)8 << 20) / sample_bytes : 1;
  inb = ce_malloc_array((size_t)B, 3 * nvox * sizeof(float), "inputs of a run");
  tgb = ce_malloc_array((size_t)B, F * npix * sizeof(float), "targets of a run");
  in = inb;
  tg = tgb;
  work = ce_malloc_array(3 * nvox > F * npix ? 3 * nvox : F * npix, sizeof(float), "ln fields");
  scratch = ce_malloc_array(nvox > F * npix ? nvox : F * npix, sizeof(float), "median scratch");
  int lrc = (acc && in && tg && work && scratch) ? 0 : ce_err("out of memory");
  for (int f = 0; f < nf && lrc == 0; f++) {
    stats_moments_init(&acc[f].mom);
    lrc = stats_qsel_init(&acc[f].q, MPI_COMM_WORLD, STATS_KEY32, 1, (double[]){0.5});
    const char *names[4] = {"v_z", "ln_T", "ln_n_CO", "ln_I"};
    if (f < 4) snprintf(acc[f].out.name, sizeof acc[f].out.name, "%s", names[f]);
    else snprintf(acc[f].out.name, sizeof acc[f].out.name, "ln_I_ch%d", f - 4);
  }
  if (any_failed(lrc, cmd)) goto out;
  norm.outlier_vz_range = drop_outliers ? STATS_OUTLIER_VZ_RANGE : 0;
  norm.i_mode = F > 1 ? STATS_I_MINMAX : STATS_I_MEDIAN;
  norm.lnI_clip = F > 1 ? ro->lnI_clip : -INFINITY;

  hsize_t lo = ds->N * (hsize_t)rank / (hsize_t)size, hi = ds->N * (hsize_t)(rank + 1) / (hsize_t)size;
  int64_t used = 0, outliers = 0, empty = 0, below_all = 0, reads = 0;
  const double empty_level = exp(DATASET_EMPTY_LN_LEVEL);
  /* pixels below the clip (one channel, no clip: below the empty level) */
  const double clip_level = F > 1 ? exp(norm.lnI_clip) : empty_level;
  /* small samples: the rank's block read in the first pass is kept for the
   * second (up to 256 MB), so every shard is opened once, not twice */
  if (hi > lo && (size_t)(hi - lo) <= ((size_t)256 << 20) / sample_bytes) {
    keep_tg = malloc((size_t)(hi - lo) * F * npix * sizeof(float));
    keep_in = ds->has_inputs ? malloc((size_t)(hi - lo) * 3 * nvox * sizeof(float)) : NULL;
    if (!keep_tg || (ds->has_inputs && !keep_in)) { /* not kept: read twice */
      free(keep_tg);
      free(keep_in);
      keep_tg = keep_in = NULL;
    }
  }
  for (int pass = 0; pass < 2; pass++) {
#define IN_SPLIT(i) (want < 0 || !ds->split || ds->split[(i)] == want)
    hsize_t known = pass == 1 && keep_tg ? hi : lo; /* the split is loaded for [lo, known) */
    for (hsize_t i0 = lo, run = 0; i0 < hi && lrc == 0; i0 += run) {
      /* a stop is looked at before each read: at the paper's size a pass
       * is minutes, longer than a wall-time limit's last warning */
      if (ro->stop && *ro->stop) {
        stopped = 1;
        break;
      }
      if (ds->split && i0 >= known) {
        int64_t end = load_split(ds, path, i0, hi);
        if (end < 0) {
          lrc = -1;
          break;
        }
        known = (hsize_t)end;
      }
      if (!IN_SPLIT(i0)) {
        run = 1;
        continue;
      }
      for (run = 1; run < B && i0 + run < hi && (!ds->split || i0 + run < known) && IN_SPLIT(i0 + run);
           run++) {}
      if (pass == 1 && keep_tg) { /* what pass 0 read and checked */
        memcpy(tgb, keep_tg + (size_t)(i0 - lo) * F * npix, (size_t)run * F * npix * sizeof(float));
        if (keep_in)
          memcpy(inb, keep_in + (size_t)(i0 - lo) * 3 * nvox, (size_t)run * 3 * nvox * sizeof(float));
      } else {
        if ((lrc = read_run(ds, i0, (hsize_t)run, inb, tgb)) < 0) break;
        reads += (int64_t)run;
        if (keep_tg) {
          memcpy(keep_tg + (size_t)(i0 - lo) * F * npix, tgb, (size_t)run * F * npix * sizeof(float));
          if (keep_in)
            memcpy(keep_in + (size_t)(i0 - lo) * 3 * nvox, inb, (size_t)run * 3 * nvox * sizeof(float));
        }
      }
    for (hsize_t j = 0; j < run && lrc == 0; j++) {
      in = inb + (size_t)j * 3 * nvox;
      tg = tgb + (size_t)j * F * npix;
      if (ds->has_inputs && stats_is_outlier(&norm, in, nvox)) {
        outliers += pass == 0;
        continue;
      }
      used += pass == 0;
      if (pass == 0) {
        size_t below = 0, below_clip = 0;
        for (size_t k = 0; k < F * npix; k++) {
          below += (double)tg[k] < empty_level;
          below_clip += (double)tg[k] < clip_level;
        }
        empty += (double)below > DATASET_EMPTY_FRACTION * (double)(F * npix);
        below_all += (int64_t)below_clip;
      }
      if (ds->has_inputs) {
        memcpy(work, in, nvox * sizeof *in);
        stats_ln_f32(in + nvox, 2 * nvox, work + nvox);
      }
      for (int f = f0; f < nf; f++) {
        const float *x;
        size_t cnt;
        if (f < 3) { x = work + (size_t)f * nvox; cnt = nvox; }
        else if (f == 3) {
          /* ln I over all channels (the zero replacement is per sample). */
          stats_ln_intensity(tg, F * npix, norm.lnI_clip, scratch);
          memcpy(tg, scratch, F * npix * sizeof *tg);
          x = tg; cnt = F * npix;
        } else { x = tg + (size_t)(f - 4) * npix; cnt = npix; }
        field_acc *a = &acc[f];
        if (pass == 0) {
          stats_moments_add_f32(&a->mom, x, cnt);
          stats_qsel_feed_f32(&a->q, x, cnt);
          memcpy(scratch, x, cnt * sizeof *x);
          size_t m = stats_drop_nonfinite_f32(scratch, cnt);
          if (m > 0 && push_median(a, stats_lower_median_f32(scratch, m)) < 0) {
            lrc = -1;
            break;
          }
        } else {
          stats_qsel_feed_f32(&a->q, x, cnt);
          size_t m = 0;
          for (size_t k = 0; k < cnt; k++) m += isfinite(x[k]) != 0;
          stats_rank_count_f32(x, cnt, a->mom_value, &a->lt, &a->le);
          a->nloc += m;
        }
      }
    }
    }
#undef IN_SPLIT
    if (any_failed(lrc, cmd)) goto out;
    /* after the first pass a rank whose reads are done stops too (the
     * second pass costs as much again); after the second, only the
     * reductions and the write are left */
    if (pass == 0 && ro->stop && *ro->stop) stopped = 1;
    if (any_stopped(stopped)) {
      status = DATASET_STATS_STOPPED;
      goto out;
    }
    for (int f = f0; f < nf; f++) {
      field_acc *a = &acc[f];
      if (pass == 0) {
        lrc = stats_moments_allreduce(&a->mom, MPI_COMM_WORLD);
        if (lrc == 0) lrc = stats_mom_value(MPI_COMM_WORLD, a->medians, a->nmed, &a->mom_value);
        int64_t c = (int64_t)a->nmed;
        MPI_Allreduce(&c, &a->out.chunks, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
      }
      if (lrc == 0) lrc = stats_qsel_end_pass(&a->q);
      if (lrc < 0) break;
    }
    if (any_failed(lrc, cmd)) goto out;
  }
  int64_t totals[5] = {used, outliers, empty, below_all, reads};
  MPI_Allreduce(MPI_IN_PLACE, totals, 5, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
  const double below_frac =
      totals[0] > 0 ? (double)totals[3] / ((double)totals[0] * (double)(F * npix)) : 0;
  for (int f = f0; f < nf && lrc == 0; f++) {
    field_acc *a = &acc[f];
    if (!stats_qsel_done(&a->q)) CE_BUG("stats: selection not done after 2 passes");
    stats_qsel_result(&a->q, &a->out.median);
    stats_moments_summary(&a->mom, &a->out.s);
    lrc = stats_mom_finish(MPI_COMM_WORLD, a->mom_value, a->lt, a->le, a->nloc, &a->out.mom);
  }
  if (any_failed(lrc, cmd)) goto out;
  if (ds->rd) close_dataset(ds);
  MPI_Barrier(MPI_COMM_WORLD);  /* every rank has closed the file before rank 0 writes */

  if (rank == 0) {
    if (totals[0] == 0) /* said as serve and the readers say it */
      lrc = ce_err("%s: split '%s' has no samples%s", path, split_name,
                   totals[1] ? " left once the outliers are dropped" : "");
    for (int f = f0; f < nf && lrc == 0; f++)
      if (acc[f].out.s.count == 0)
        lrc = ce_err("%s: field %s has no finite values in split '%s' (%lld samples used)", path,
                     acc[f].out.name, split_name, (long long)totals[0]);
    if (lrc == 0) {
      norm.lnI_min = acc[3].out.s.min;
      norm.lnI_scale = norm.i_mode == STATS_I_MINMAX ? acc[3].out.s.max - acc[3].out.s.min
                                                     : acc[3].out.median - acc[3].out.s.min;
      if (ds->has_inputs) {
        norm.vz_mean = acc[0].out.s.mean;
        norm.vz_std = acc[0].out.s.std;
        norm.lnT_min = acc[1].out.s.min;
        norm.lnT_scale = acc[1].out.median - acc[1].out.s.min;
        norm.lnn_min = acc[2].out.s.min;
        norm.lnn_scale = acc[2].out.median - acc[2].out.s.min;
      } else {
        /* targets only: the inputs' parameters are NaN (readers that
         * normalise inputs need /inputs anyway, and refuse such a dataset) */
        norm.vz_mean = norm.vz_std = norm.lnT_min = norm.lnT_scale = NAN;
        norm.lnn_min = norm.lnn_scale = NAN;
      }
      const int has_in = ds->has_inputs;
      const char *bad = has_in && !(norm.vz_std > 0)    ? "v_z std"
                        : has_in && !(norm.lnT_scale > 0) ? "ln_T median - min"
                        : has_in && !(norm.lnn_scale > 0) ? "ln_n_CO median - min"
                        : !(norm.lnI_scale > 0)         ? "ln_I scale"
                                                        : NULL;
      if (bad && norm.i_mode == STATS_I_MINMAX && !(acc[3].out.s.max > norm.lnI_clip))
        /* every pixel at the clip: a line fainter than the clip (another
         * molecule or isotopologue), not constant data */
        lrc = ce_err("%s: every ln I of split '%s' is at or below the clip %g (I <= %.3g W m^-2 "
                     "Hz^-1 sr^-1), so every target would normalise to 0: the line is fainter "
                     "than the clip. Recompute /stats with a lower one (coemu stats DIR "
                     "--ln-intensity-clip X), and set statistics.ln_intensity_clip in new jobs",
                     path, split_name, norm.lnI_clip, exp(norm.lnI_clip));
      else if (bad)
        lrc = ce_err("%s: %s is not > 0 (constant data cannot be normalised)", path, bad);
      else if (norm.i_mode == STATS_I_MINMAX && below_frac > 0.5)
        fprintf(stderr, "coemu %s: warning: %s: %.1f%% of the target pixels of split '%s' are "
                        "below the ln I clip %g (I < %.3g W m^-2 Hz^-1 sr^-1) and normalise to 0; "
                        "a fainter line needs a lower clip (statistics.ln_intensity_clip; coemu "
                        "stats DIR --ln-intensity-clip X)\n",
                cmd, path, 100 * below_frac, split_name, norm.lnI_clip, exp(norm.lnI_clip));
    }
    stats_provenance prov = {split_name, (int64_t)ds->N, totals[0], totals[1], size,
                             totals[2], DATASET_EMPTY_LN_LEVEL, DATASET_EMPTY_FRACTION,
                             below_frac};
    if (lrc == 0) {
      stats_field *fl = malloc((size_t)nf * sizeof *fl);
      if (!fl) lrc = ce_err("out of memory");
      for (int f = f0; f < nf && lrc == 0; f++) fl[f - f0] = acc[f].out;
      if (lrc == 0 && ro->write_path)
        lrc = ro->create ? write_new_file(ro->write_path, ro->note, fl, nf - f0, &norm, &prov)
                         : stats_file_write_group(ro->write_path, ro->group, fl, nf - f0, &norm,
                                                  &prov);
      free(fl);
    }
    if (lrc == 0 && ro->norm_out) *ro->norm_out = norm;
    if (ro->used_out) *ro->used_out = totals[0];
    if (ro->outliers_out) *ro->outliers_out = totals[1];
    if (ro->reads_out) *ro->reads_out = totals[4];
    if (lrc < 0) report(cmd);
    else if (ro->out) {
      FILE *o = ro->out;
      const char *group = ro->write_path ? ro->group : "";
      fprintf(o, "%s: %s%s%s: split %s, %lld samples used, %lld outliers dropped, %d rank%s%s\n",
              cmd, ro->write_path ? ro->write_path : path, *group ? ":" : "", group, split_name,
              (long long)totals[0], (long long)totals[1], size, size == 1 ? "" : "s",
              !ro->write_path ? " (not written)"
              : strcmp(group, "/stats") ? " (not the normalisation: /stats is left as it was)"
                                        : " (the normalisation that serve and train read)");
      if (!ds->has_inputs)
        fprintf(o, "  no /inputs (output.store_inputs: false): statistics of the targets only\n");
      fprintf(o, "  mostly empty targets: %lld of %lld samples have more than %.0f%% of their "
             "pixels below I = e^%.0f W m^-2 Hz^-1 sr^-1\n",
             (long long)totals[2], (long long)totals[0], 100 * DATASET_EMPTY_FRACTION,
             DATASET_EMPTY_LN_LEVEL);
      fprintf(o, "  pixels below the clip: %.1f%% of all pixels x channels of the samples used "
             "(I < e^%g)\n", 100 * below_frac, F > 1 ? norm.lnI_clip : DATASET_EMPTY_LN_LEVEL);
      fprintf(o, "  per field: n values, mean, std, min, max, exact median; med-of-med = the median "
             "of the per-sample medians (the paper's estimate) and its true quantile in the "
             "field (0.5 = exact median)\n");
      for (int f = f0; f < nf; f++) {
        const stats_field *fd = &acc[f].out;
        fprintf(o, "  %-10s n=%lld mean=%.9g std=%.9g min=%.9g max=%.9g median=%.9g "
               "med-of-med=%.9g (quantile %.4f..%.4f) nan=%lld inf=%lld\n", fd->name,
               (long long)fd->s.count, fd->s.mean, fd->s.std, fd->s.min, fd->s.max, fd->median,
               fd->mom.mom, fd->mom.q_lo, fd->mom.q_hi, (long long)fd->s.nan_count,
               (long long)fd->s.inf_count);
      }
    }
  }
  MPI_Bcast(&lrc, 1, MPI_INT, 0, MPI_COMM_WORLD);
  status = lrc < 0 ? 1 : 0;
out:
  for (int f = 0; acc && f < nf; f++) {
    stats_qsel_free(&acc[f].q);
    free(acc[f].medians);
  }
  free(acc);
  free(inb);
  free(tgb);
  free(keep_in);
  free(keep_tg);
  free(work);
  free(scratch);
  return status == DATASET_STATS_STOPPED ? status : status ? -1 : 0;
}
