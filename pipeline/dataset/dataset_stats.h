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

#include <stddef.h>

int dataset_stats(const char *dir, const char *split, int drop_outliers, int quiet);

/* Where the statistics of a split go: /stats for the normalisation split
 * (the statistics.split of DIR/job.yaml, train when there is no job.yaml),
 * /stats_SPLIT for any other, so computing another split's statistics never
 * replaces the /stats that serve and train normalise with. */
int dataset_stats_group(const char *dir, const char *split, char *group, size_t len);

/* Mostly empty targets, counted by dataset_stats and written to the group
 * (empty_targets): samples with more than DATASET_EMPTY_FRACTION of their
 * pixels (all channels) below I = exp(DATASET_EMPTY_LN_LEVEL), the ln I clip
 * of the minmax normalisation. */
#define DATASET_EMPTY_LN_LEVEL (-40.0)
#define DATASET_EMPTY_FRACTION 0.9

#endif
