/* integrity.h - the checks of a reader that reads dataset.h5 as it is (a
 * dataset.h5 with no shard list beside it, e.g. virtual datasets made by
 * hand) and of serve --live (integrity_check_row). coemu datasets are read
 * from their shards by shard_reader.h, which makes the same checks.
 *
 * dataset.h5's /inputs and /targets are virtual datasets over the shard
 * files, and HDF5 reads a missing or unreadable source file as fill values
 * (zeros) without an error. So a reader
 *   - at open: checks that every shard the virtual datasets map exists and
 *     opens as HDF5 (an error names the shard file and its sample range);
 *   - per sample: compares the XXH64 of the rows it read (as float32) with
 *     the sample's row of /checksums [N,2] uint64 (inputs, targets), written
 *     by the generator from the values it computed (shard.h); a mismatch is
 *     an error naming the shard file, the sample and the array.
 * Datasets made before /checksums existed (format 1) have no per-sample
 * checksums: integrity_open() checks the shards as above, and
 * integrity_check() checks nothing (integrity_checked() says
 * which); `coemu verify DIR` checks such a dataset's CRC-32s in full.
 * docs/dataset-format.md, "Faults", says what this promises.
 *
 * Calls HDF5: the caller holds h5_lock() where threads share HDF5. */
#ifndef COEMU_DATASET_INTEGRITY_H
#define COEMU_DATASET_INTEGRITY_H

#include <hdf5.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
  int64_t first, count; /* sample range of the source */
  char *path;           /* the shard file, as the reader resolves it */
} integrity_source;

typedef struct {
  char h5path[4096];
  hid_t sums;            /* /checksums, or -1 (format 1) */
  int nsrc;
  integrity_source *src; /* the virtual datasets' source files, in sample order */
} integrity;

/* Open the checks of `file` (the already open dataset.h5 at h5path): list
 * the shards behind /targets and check they exist; open /checksums. */
int integrity_open(integrity *c, const char *h5path, hid_t file);

/* 1 when samples are checked (the dataset has /checksums), else 0. */
int integrity_checked(const integrity *c);

/* Check sample idx: inputs (nin floats, or NULL/0 when not read) and
 * targets (nout floats) as read. 0, or -1 with a message naming the shard,
 * the sample and the array. */
int integrity_check(integrity *c, int64_t idx, const float *inputs, size_t nin,
                    const float *targets, size_t nout);

/* The same check against row `row` of a shard's own /checksums dataset
 * (`sums`, of the shard file `file`): for readers of the shard files
 * themselves (serve --live). */
int integrity_check_row(hid_t sums, hsize_t row, const char *file, int64_t idx,
                        const float *inputs, size_t nin, const float *targets, size_t nout);

/* Check a per-sample label array read whole through the virtual datasets
 * (`name` = "split" or "valid", n uint8 values, the dataset's samples in
 * order) against the CRC-32 that DIR/manifest.json records for each shard's
 * slice of it. /checksums covers the sample rows only; the labels decide
 * which samples a reader uses, so a damaged byte there would silently move
 * or drop samples. 0 (also for a dataset.h5 of plain arrays, with no shards
 * behind it, or one without manifest.json: nothing to check against), or -1
 * naming the shard and the array. */
int integrity_check_labels(const integrity *c, const char *name, const uint8_t *values, int64_t n);

void integrity_close(integrity *c);

#endif
