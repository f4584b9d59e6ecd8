/* dataset_stats.h - global statistics of a dataset written to its /stats.
 *
 * Collective over MPI_COMM_WORLD (MPI initialised by the caller): each rank
 * reads a contiguous block of samples of DIR/dataset.h5 twice; exact moments,
 * exact medians (two histogram passes), per-sample medians and the median of
 * medians with its true rank, for v_z, ln T, ln n_CO and ln I (over all
 * channels and per channel); rank 0 writes /stats with the normalisation
 * parameters (stats/statsfile.h; layout: docs/dataset-format.md).
 * split: "train", "validation", "test" or "all". A failure on any rank is
 * printed by that rank ("coemu stats: rank R: error: ...") and returns -1 on
 * every rank. */
#ifndef COEMU_DATASET_STATS_H
#define COEMU_DATASET_STATS_H

int dataset_stats(const char *dir, const char *split, int drop_outliers, int quiet);

#endif
