/* dataset_stats.h - global statistics of a dataset written to its /stats.
 *
 * Collective over MPI_COMM_WORLD (MPI initialised by the caller): each rank
 * reads a contiguous block of samples of DIR/dataset.h5 twice; exact moments,
 * exact medians (two histogram passes), per-sample medians and the median of
 * medians with its true rank, for v_z, ln T, ln n_CO and ln I (over all
 * channels and per channel); rank 0 writes /stats with the normalisation
 * parameters (stats/statsfile.h; layout: docs/dataset-format.md).
 * A dataset without /inputs (output.store_inputs: false) gets the statistics
 * of ln I only (the inputs' normalisation parameters are NaN); float64
 * /inputs or /targets are read as float32, as every reader does.
 * split: "train", "validation", "test" or "all". A failure on any rank is
 * printed by that rank ("coemu stats: rank R: error: ...") and returns -1 on
 * every rank. */
#ifndef COEMU_DATASET_STATS_H
#define COEMU_DATASET_STATS_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "stats/transforms.h"

/* lnI_clip: the floor of ln I in the normalisation of multi-channel targets
 * (statistics.ln_intensity_clip); NAN: the one DIR/job.yaml gives (-40
 * without a job.yaml). stop: NULL, or a flag a signal handler sets (coemu
 * generate's wall-time signals): it is read before every read of samples
 * (about 8 MB), and once some rank saw it set, every rank stops at the end
 * of that pass of reads (the ranks meet only there) and returns
 * DATASET_STATS_STOPPED, nothing written (dataset.h5 as it was; computing
 * /stats again starts over). A rank whose reads of the first pass are done
 * also stops on a flag set while it waits for the others; once the second
 * pass's reads are done only the reductions and the write are left
 * (seconds), so a signal then is not acted on. 0, -1 or DATASET_STATS_STOPPED
 * (the same on every rank). */
#define DATASET_STATS_STOPPED (-2)
int dataset_stats(const char *dir, const char *split, int drop_outliers, double lnI_clip,
                  int quiet, const volatile sig_atomic_t *stop);

/* Samples from elsewhere than a dataset directory (the pilot pass of
 * `coemu serve --generate`, pipeline/serve/gensource.h): sample i of
 * [0, samples) has inputs (3 n^3: v_z, T, n_CO) and targets (channels x n^2),
 * float32. read() fills samples [first, first + count) (count <= 8 MB of
 * samples, at least 1) on the calling rank; 0, or -1 with a message. */
typedef struct {
  const char *name;  /* what the samples are, in messages */
  int64_t samples;
  int n, channels;
  int (*read)(void *ctx, int64_t first, int64_t count, float *inputs, float *targets);
  void *ctx;
} dataset_stats_source;

/* The statistics dataset_stats computes, of every sample of src, as the
 * split `train` (collective over MPI_COMM_WORLD, with the same code: the
 * samples in contiguous blocks over the ranks, each read once, or twice
 * when a rank's block is over 256 MB; exact moments and quantiles, so the
 * result is bit for bit that of `coemu stats` on a dataset of exactly these
 * samples, whatever the number of ranks). On rank 0: *norm (may be NULL),
 * *used and *outliers (samples used and dropped by drop_outliers), *reads
 * (samples read, all ranks and passes); with out_path a new HDF5 file is
 * written there (temporary name, renamed) holding /stats as dataset.h5 has
 * it (`coemu serve --stats FILE` reads it) and the root attribute `source`
 * = note (may be NULL). report_to (may be NULL): dataset_stats's per-field
 * report. A failure on any rank is printed by the lowest failing rank
 * ("coemu CMD: rank R: error: ...") and returns -1 on every rank. */
int dataset_stats_source_run(const dataset_stats_source *src, const char *cmd, const char *out_path,
                             const char *note, int drop_outliers, double lnI_clip,
                             FILE *report_to, stats_norm *norm, int64_t *used, int64_t *outliers,
                             int64_t *reads);

/* Where the statistics of a split go: /stats for the normalisation split
 * (the statistics.split of DIR/job.yaml, train when there is no job.yaml),
 * /stats_SPLIT for any other, so computing another split's statistics never
 * replaces the /stats that serve and train normalise with; *lnI_clip: the
 * job's statistics.ln_intensity_clip (STATS_LNI_CLIP without a job.yaml). */
int dataset_stats_group(const char *dir, const char *split, char *group, size_t len,
                        double *lnI_clip);

/* Mostly empty targets, counted by dataset_stats and written to the group
 * (empty_targets): samples with more than DATASET_EMPTY_FRACTION of their
 * pixels (all channels) below I = exp(DATASET_EMPTY_LN_LEVEL), the ln I clip
 * of the minmax normalisation. */
#define DATASET_EMPTY_LN_LEVEL (-40.0)
#define DATASET_EMPTY_FRACTION 0.9

#endif
