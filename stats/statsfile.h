/* statsfile.h - the /stats group of a dataset's HDF5 file: per-field
 * statistics and the normalisation parameters (layout: docs/dataset-format.md,
 * section /stats).
 *
 * stats_file_write() replaces /stats as a whole and atomically: the file
 * is copied to PATH.tmp.PID, /stats is replaced in the copy (built under
 * /stats.tmp, then moved), and the copy is fsynced and renamed over PATH.
 * A kill or a full disk at any point leaves the old file or the new one,
 * never a half-written one; readers holding the old file open keep it.
 * Called by one process (rank 0) with no other handle open on the file.
 */
#ifndef COEMU_STATS_STATSFILE_H
#define COEMU_STATS_STATSFILE_H

#include <hdf5.h>
#include <stddef.h>
#include <stdint.h>

#include "stats/moments.h"
#include "stats/quantile.h"
#include "stats/transforms.h"

typedef struct {
  char name[40];          /* subgroup name, e.g. "ln_T", "ln_I_ch3" */
  stats_summary s;        /* count, mean, std, min, max, NaN/Inf counts */
  double median;          /* exact, numpy definition */
  stats_mom_report mom;   /* median of medians and its true quantile interval */
  int64_t chunks;         /* chunks (samples) that gave a median */
} stats_field;

typedef struct {
  const char *split;          /* "train", "all", ... */
  int64_t samples_total;      /* in the dataset */
  int64_t samples_used;       /* in the split and not dropped */
  int64_t samples_outliers;   /* dropped by the outlier rule */
  int ranks;                  /* MPI ranks that computed the statistics */
  /* mostly empty targets: samples with more than empty_fraction of their
   * pixels (all channels) below I = exp(empty_ln_level) (0 when not counted) */
  int64_t empty_targets;
  double empty_ln_level, empty_fraction;
  /* the fraction of all target values (pixels x channels of the samples
   * used) below the ln I clip, I < exp(lnI_clip) (one channel, no clip:
   * below exp(empty_ln_level); 0 when not counted); attribute
   * pixels_below_clip */
  double pixels_below_clip;
} stats_provenance;

int stats_file_write(const char *h5path, const stats_field *fields, int nfields,
                     const stats_norm *norm, const stats_provenance *prov);

/* The same into another group of the file ("/stats_validation", ...), so
 * the statistics of another split never replace the /stats that
 * normalisation reads; every other group is left as it was. */
int stats_file_write_group(const char *h5path, const char *group, const stats_field *fields,
                           int nfields, const stats_norm *norm, const stats_provenance *prov);

/* Read the normalisation parameters of /stats (the trainer and the stream). */
int stats_file_read_norm(const char *h5path, stats_norm *norm);

/* A fixed-length string attribute `name` of `loc` (as this file writes them)
 * into buf (len bytes). -1 with a message naming `where` when it is missing
 * or not a fixed-length string shorter than len. */
int stats_attr_str(hid_t loc, const char *where, const char *name, char *buf, size_t len);

/* Read one field's statistics (name as written, e.g. "v_z"). */
int stats_file_read_field(const char *h5path, const char *name, stats_field *field);

#endif
