/* shard.h - one shard of a dataset: an HDF5 file holding a contiguous range
 * of samples, written by one rank, finished atomically, checksummed.
 *
 * Layout (schemas/dataset.yaml): /inputs [count,3,n,n,n] (unless inputs are
 * not stored), /targets [count,F,n,n], /model_id [count] int64,
 * /direction_index [count] int64, /direction [count,4] float64 (the rotation
 * quaternion), /split [count] uint8, /valid [count] uint8 (0: the model was
 * skipped and the sample is zeros), /checksums [count,2] uint64: the XXH64
 * (seed 0) of each sample's input row and target row as little-endian
 * float32 in C order (0 for inputs that are not stored; shard_row_hash). Sample arrays are chunked by sample and
 * written one sample at a time (hyperslabs), so a rank holds one sample in
 * memory, not a shard. Attributes: first, count, job_fingerprint and, on
 * every dataset, crc32 - the CRC-32 of its raw bytes in C order, computed from
 * the in-memory data as they are produced. A shard's bytes depend only on the
 * job and its sample range, never on which rank wrote it.
 *
 * The file is written as PATH.tmp.<pid> and renamed to PATH after a flush,
 * so a file named PATH is always complete. Stored as float32 without gzip,
 * /inputs' chunks are allocated when the shard is created (4 KiB-aligned)
 * and its rows written into them by a background thread (shard_row_buffer);
 * shard_close waits for them before it flushes.
 */
#ifndef COEMU_SHARD_H
#define COEMU_SHARD_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
  int n, nf;             /* cube side, channels */
  int store_inputs;
  int inputs_f64, targets_f64; /* stored as float64 (memory is always float32) */
  int gzip;              /* deflate level with byte shuffle; 0 = none */
  uint32_t job_fingerprint;
} shard_layout;

enum { SHARD_INPUTS, SHARD_TARGETS, SHARD_MODEL_ID, SHARD_DIRECTION_INDEX, SHARD_DIRECTION,
       SHARD_SPLIT, SHARD_VALID, SHARD_CHECKSUMS, SHARD_NSETS };

/* Dataset names, indexed by the enum above. */
extern const char *const shard_set_names[SHARD_NSETS];

typedef struct {
  int64_t first, count;
  uint32_t crc[SHARD_NSETS]; /* crc[SHARD_INPUTS] is 0 when inputs are not stored */
  int has_checksums;         /* 0: a shard made before /checksums (format 1) */
  int64_t invalid;           /* samples with valid = 0 */
  /* where the arrays readers use lie in the file (shard_read_sums; the
   * manifest's per-shard "layout", docs/dataset-format.md): byte offsets of
   * row 0 and the stride between rows of /inputs and /targets (inputs 0, 0
   * when not stored), and the offsets of /checksums, /split and /valid.
   * has_layout 0: some array cannot be read at a fixed place (filtered,
   * float64, rows not evenly spaced, no /checksums): readers use HDF5. */
  int has_layout;
  int64_t layout[7];
  int64_t bytes; /* the file's size (the manifest's "bytes") */
} shard_sums;

enum { SHARD_LAY_IN, SHARD_LAY_IN_STRIDE, SHARD_LAY_TG, SHARD_LAY_TG_STRIDE, SHARD_LAY_SUMS,
       SHARD_LAY_SPLIT, SHARD_LAY_VALID, SHARD_LAY_N };

typedef struct shard_writer shard_writer;

/* CRC-32 as zlib's crc32_z(crc, data, len) (the shards' crc32 attributes),
 * by carry-less multiplication where the build targets PCLMULQDQ (several
 * times zlib's speed), zlib's otherwise; equal results either way. */
uint32_t shard_crc32(uint32_t crc, const void *data, size_t len);

/* The per-sample checksum of a row of `count` float32 values (what
 * /checksums holds): XXH64, seed 0, of their little-endian bytes. */
uint64_t shard_row_hash(const float *row, size_t count);

/* Start a shard of `count` samples beginning at global sample `first`. */
int shard_open(shard_writer **w, const char *path, const shard_layout *lay, int64_t first,
               int64_t count);

/* A buffer for the next sample's inputs (3 n^3 floats when nfloats = 3 n^3),
 * aligned for direct I/O, from a small pool of this process: shard_put
 * hands a row in such a buffer to a background writer, which writes it
 * straight into its chunk of /inputs (O_DIRECT where the file system takes
 * it) while the caller produces the next sample; the buffer is reused once
 * written. Blocks while every buffer is still being written. NULL with the
 * message when out of memory. Use the returned buffer for one shard_put;
 * rows in other memory are written synchronously. */
float *shard_row_buffer(size_t nfloats);

/* Append the next sample (calls must come in sample order). inputs: 3*n^3
 * floats (ignored when not stored), targets: nf*n^2 floats. */
int shard_put(shard_writer *w, const float *inputs, const float *targets, int64_t model,
              int64_t direction_index, const double quat[4], uint8_t split, uint8_t valid);
/* The same for an images-only shard (store_inputs false) whose input row
 * was hashed where it was made (the device pipeline: the cubes never reach
 * the host): inputs_hash is the row's shard_row_hash, /checksums' value. */
int shard_put_hashed(shard_writer *w, uint64_t inputs_hash, const float *targets, int64_t model,
                     int64_t direction_index, const double quat[4], uint8_t split,
                     uint8_t valid);

/* Finish: if commit, write the metadata and checksums, flush, close and
 * rename into place (sums receives what shard_read_sums would read back:
 * the checksums, the layout and the file's size, so that the manifest needs
 * no second open); otherwise close and remove the temporary file. Frees w in
 * all cases. */
int shard_close(shard_writer *w, int commit, shard_sums *sums);

/* The same, but the final fsync and rename of a committed shard happen on a
 * background thread, so the caller can go on computing the next shard while
 * the disk catches up. Until shard_commits_wait() returns, the shard may
 * still be under its temporary name (a crash then remakes it on resume).
 * Returns -1 only for errors found before the hand-over. */
int shard_close_async(shard_writer *w, shard_sums *sums);

/* Wait for every shard handed to shard_close_async(); -1 with the first
 * error (naming the shard) if any of their fsync/rename failed. */
int shard_commits_wait(void);

/* Seconds this process has spent writing shards: hash_s hashing the
 * sample rows (CRC-32 and XXH64, in shard_put), write_s in HDF5 (creating,
 * writing rows and metadata, closing; with shard_close also its fsync), and
 * fsync_s in the committer thread's fsync + rename (overlapped with the
 * caller's work; shard_commits_wait's wait is the caller's). hash_cpu_s and
 * write_cpu_s are the CPU seconds (user + system) of the same steps, which
 * a loaded machine does not inflate. */
typedef struct {
  double hash_s, write_s, fsync_s;
  double hash_cpu_s, write_cpu_s;
  double rows_s, rows_cpu_s; /* the row writer thread writing /inputs rows (overlapped) */
} shard_times;

void shard_times_get(shard_times *t);

/* Check a finished shard: its layout and job fingerprint match `lay`, and
 * the CRC-32 recomputed from every dataset's data equals the stored one.
 * Fills sums. Errors name the file and the dataset. */
int shard_verify(const char *path, const shard_layout *lay, shard_sums *sums);

/* The same checks without reading any data: the file opens as HDF5 (HDF5
 * refuses one shorter than the end it records, so a truncated copy fails),
 * its layout and job fingerprint match `lay`, and every dataset is there
 * with the shard's row count and a crc32 attribute. What a resume keeps an
 * earlier run's shard on: a shard is under its final name only after its
 * bytes were fsynced (shard_close), so what is left to find is damage after
 * the fact, which `coemu verify` and the readers' per-sample checksums find.
 * Fills sums (the claimed CRC-32s) as shard_verify does. */
int shard_check_claims(const char *path, const shard_layout *lay, shard_sums *sums);

/* The checksums a shard claims (its attributes), without reading the data,
 * and where its arrays lie (sums->has_layout, sums->layout). */
int shard_read_sums(const char *path, shard_sums *sums);

/* Read /valid of a shard into valid[count] (the caller knows count). */
int shard_read_valid(const char *path, int64_t count, uint8_t *valid);

#endif
