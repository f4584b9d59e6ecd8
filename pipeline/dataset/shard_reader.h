/* shard_reader.h - the reading side of a finished dataset: samples read
 * from the shard files themselves, never through dataset.h5's virtual
 * datasets (serve, the trainer through serve, stats, inspect).
 *
 * A coemu dataset (DIR/manifest.json lists its shards): the manifest maps
 * sample -> (shard, row); each shard file is opened when a sample of it is
 * first read and kept in a least-recently-used cache of at most `max_open`
 * open shards (file + its /inputs, /targets, /checksums), so a reader pays
 * one open per shard it visits, not one per sample, and never holds more
 * than max_open files. Consecutive samples of one shard are read as one
 * hyperslab (one HDF5 read per array per shard-run, their /checksums rows
 * too). Why: a virtual dataset re-resolves its mapping (thousands of source
 * files) on every read; at 5,000 shards of one small sample that cost
 * 7-30 ms per sample (docs/benchmarks.md, "Readers at 5,000 shards").
 *
 * What a reader checks (docs/faults.md, "Reading a dataset"):
 *   - at open: every shard the manifest lists exists, is readable and has
 *     the size the manifest records (a truncated shard is refused); the
 *     shards cover the samples in order. Errors name the shard file and its
 *     sample range;
 *   - per sample: the XXH64 of its rows as read (float32) against the
 *     shard's /checksums row (shard.h); a mismatch names the shard file, the
 *     sample, its row in the shard and the array;
 *   - labels: each shard's /split and /valid against the CRC-32 the manifest
 *     records for them.
 * Samples are checked when dataset.h5 has /checksums (format 2); a dataset
 * of format 1 has none: shards are still checked at open, values are not
 * (shard_reader_checked() says which).
 *
 * Opening a shard without HDF5 (format 2.3): where the manifest records a
 * shard's "layout" (the byte offsets of its /inputs and /targets rows, its
 * /checksums, /split and /valid, taken by `coemu generate` when it finishes
 * the dataset), a checked dataset's shard is opened with open(2) alone: no
 * H5Fopen, whose fresh metadata cache and object lookups were most of a
 * small shard's read cost (docs/benchmarks.md, "Opening shards without
 * HDF5"). The file must reach the end of every recorded extent (else an
 * error naming it); its /checksums, read at the recorded place, must match
 * the CRC-32 the manifest records for them; then every row is checked
 * against them as always. A shard whose /checksums are not there (rewritten
 * with another layout: re-generated differently, h5repack'ed) is read
 * through HDF5 from then on, with that path's checks (a different shard is
 * then named by its row checksums); a shard without a recorded layout (a
 * dataset before 2.3, filtered or float64 rows) is read through HDF5.
 *
 * A dataset.h5 without a shard list beside it (plain arrays, or virtual
 * datasets made by hand, e.g. in tests) is read through dataset.h5 as it
 * is, with the checks of integrity.h.
 *
 * Not thread-safe, and it calls HDF5: a caller whose threads share HDF5
 * holds h5_lock() around every call (h5util.h). */
#ifndef COEMU_SHARD_READER_H
#define COEMU_SHARD_READER_H

#include <stddef.h>
#include <stdint.h>

#include "rotate/model_lru.h"

#define SHARD_READER_MAX_OPEN 64 /* default cap on open shard files */

typedef struct shard_reader shard_reader;

/* 0 when DIR/dataset.h5 exists; else -1 with a message that says what DIR
 * is instead: missing, not a folder, a dataset whose job has not finished
 * (its shards so far), or no dataset at all; `hint` (NULL: none) is added,
 * e.g. "serve a running job with --live". Readers call it before opening
 * anything, so a user's wrong folder is not reported as a broken HDF5 file. */
int dataset_require_finished(const char *dir, const char *hint);

/* The finished shard files in DIR/shards (shard-*, no temporaries), counted
 * up to stop_at (<= 0: all); -1 when DIR has no shards/ folder. */
long dataset_count_shards(const char *dir, long stop_at);

/* Open DIR for reading (DIR/manifest.json and DIR/dataset.h5). max_open:
 * the cap on shard files open at once (0: SHARD_READER_MAX_OPEN). */
int shard_reader_open(const char *dir, int max_open, shard_reader **out);
void shard_reader_close(shard_reader *r);

/* "DIR/dataset.h5", for messages and /stats. */
const char *shard_reader_h5path(const shard_reader *r);

/* Samples; cube side n; channels F; 1 when inputs can be read: stored, or
 * rebuilt from the models (an images-only dataset, below). */
int64_t shard_reader_samples(const shard_reader *r);
int shard_reader_n(const shard_reader *r);
int shard_reader_channels(const shard_reader *r);
int shard_reader_has_inputs(const shard_reader *r);
/* The job fingerprint manifest.json records (its "job_fingerprint"): 0, or
 * -1 when it records none (no manifest: dataset.h5 read as it is). */
int shard_reader_job_fingerprint(const shard_reader *r, uint32_t *fp);

/* 1 for an images-only dataset (output.store_inputs false, format_minor 2;
 * docs/dataset-format.md, "Images-only datasets"): the shards hold no
 * /inputs, and shard_reader_read / _read_list remake each input cube from
 * its model and direction with what dataset.h5 records
 * (pipeline/dataset/input_rebuild.h), the cubes of one call in parallel
 * (OpenMP), each checked against the checksum /checksums records for it: a
 * cube that differs is an error naming the shard, the sample, its row, the
 * model file and the direction, never a served sample. Targets are read
 * and checked as for any dataset. */
int shard_reader_images_only(const shard_reader *r);

/* Images-only, in two steps, so the rebuild runs outside the caller's
 * HDF5 lock and on several threads at once (serve's readers, each on its
 * own chunk: no core waits for another chunk's last cube or its target
 * read). read_list_want: the targets of idx[0..n) read and checked, as
 * shard_reader_read_list_sums (sums may be NULL), and the input checksums
 * /checksums records for them into want[0..n): an HDF5 call like every
 * other (under the caller's lock). rebuild_list: the input cubes of
 * idx[0..n) remade into inputs on `threads` threads (0: OpenMP's default,
 * 1: the calling thread) and checked against want (a cube that differs is
 * the error shard_reader_images_only describes); sums' even entries get
 * their checksums. No HDF5: it may run without the lock, on several
 * threads at once, beside any other shard_reader call on r. */
int shard_reader_read_list_want(shard_reader *r, const int64_t *idx, int n, float *targets,
                                uint64_t *sums, uint64_t *want);
int shard_reader_rebuild_list(const shard_reader *r, const int64_t *idx, int n, int threads,
                              const uint64_t *want, float *inputs, uint64_t *sums);
/* Images-only: the model LRU now (zeros for a dataset that stores its
 * inputs), and its cap (0: the default, 2 GiB; only while no rebuild runs). */
void shard_reader_rebuild_lru(const shard_reader *r, model_lru_stats *st);
int shard_reader_set_model_cap(shard_reader *r, size_t cap);

/* Images-only: input cubes rebuilt so far, the thread CPU seconds their
 * sampling took, the seconds spent loading models and the loads (-1 for
 * a dataset that stores its inputs). */
int shard_reader_rebuild_counters(const shard_reader *r, int64_t *cubes, double *cpu_s,
                                  double *load_s, int64_t *loads);
/* 1 when every sample read is checked against /checksums (format 2). */
int shard_reader_checked(const shard_reader *r);
/* Shards behind the dataset (for dataset.h5 read as it is: the source
 * files of its virtual /targets, 0 for plain arrays). */
int64_t shard_reader_shards(const shard_reader *r);

/* The per-sample labels of samples [first, first + count), checked
 * (above), into split[first..] and valid[first..] (arrays of all N samples;
 * either may be NULL; values just outside the range, of the same shards, may
 * be filled too). Only the shards overlapping the range are opened.
 * *has_split / *has_valid (may be NULL) say whether the dataset has them; a
 * missing one is left as it was in the caller's array. */
int shard_reader_labels(shard_reader *r, int64_t first, int64_t count, uint8_t *split,
                        uint8_t *valid, int *has_split, int *has_valid);

/* The labels as the job planned them, without opening a shard: split[i] =
 * model_split[i / directions] (dataset.h5's /models/split), valid[i] = 0
 * for the manifest's skipped_models; each shard's slices are then checked
 * against the CRC-32s the manifest records for that shard's /split and
 * /valid. 1: filled and every shard agrees; 0: not derivable (no shard
 * list, no directions, sizes differ) or some shard disagrees: read them with
 * shard_reader_labels, which names the shard. For summaries (inspect) of
 * many shards: a reader that uses samples reads the shards' own labels. */
int shard_reader_labels_planned(const shard_reader *r, const uint8_t *model_split,
                                int64_t models, uint8_t *split, uint8_t *valid);

/* The shard holding sample idx: its number and sample range (for a
 * dataset.h5 read as it is: the source file of its virtual /targets).
 * 0, or -1 when idx is in no shard (no shards behind the dataset). */
int shard_reader_shard_range(const shard_reader *r, int64_t idx, int64_t *shard,
                             int64_t *first, int64_t *count);

/* The end (one past the last sample) of the shard holding sample idx: a
 * reader that walks the samples in order reads a shard's labels and rows
 * while it is open (N for a dataset read through dataset.h5). */
int64_t shard_reader_shard_end(const shard_reader *r, int64_t idx);

/* Read samples [first, first + count) as float32: inputs (count x 3 n^3,
 * NULL: not read; must be NULL when inputs are not stored) and targets
 * (count x F n^2, NULL: not read), each sample checked. 0, or -1 with a
 * message naming the shard, the sample and the array. */
int shard_reader_read(shard_reader *r, int64_t first, int64_t count, float *inputs,
                      float *targets);

/* Read samples idx[0..n) (any order) into rows 0..n-1 of inputs / targets;
 * runs of consecutive samples of one shard are read as one hyperslab. */
int shard_reader_read_list(shard_reader *r, const int64_t *idx, int n, float *inputs,
                           float *targets);
/* The same, also giving each sample's row checksums in sums[2k] (inputs;
 * 0 when inputs is NULL) and sums[2k+1] (targets): the XXH64 (seed 0) of
 * the rows as read, the values they were checked against (so a stream
 * forwards them instead of hashing again: stream_proto.h); computed from
 * the rows for a dataset without /checksums. */
int shard_reader_read_list_sums(shard_reader *r, const int64_t *idx, int n, float *inputs,
                                float *targets, uint64_t *sums);

/* Shard files open now, the most ever open at once, and the opens so far
 * (each a file open; for tests and benches). */
int shard_reader_open_now(const shard_reader *r);
int shard_reader_open_peak(const shard_reader *r);
int64_t shard_reader_opens(const shard_reader *r);
/* Of those, the shards HDF5 opened (H5Fopen), and the shards whose recorded
 * layout did not hold (below). */
int64_t shard_reader_h5_opens(const shard_reader *r);
int64_t shard_reader_layout_fallbacks(const shard_reader *r);

/* ---- direct reads: a pool of threads reading rows without HDF5 ----
 * HDF5 is not thread-safe in this build. A pool plans its reads under
 * h5_lock() (shard_reader_direct_plan: where each row lies in its shard
 * file, found once per open shard: H5Dget_chunk_info_by_coord for a dataset
 * chunked one row per chunk, H5Dget_offset for a contiguous one), reads and
 * checks the rows with pread(2) on HDF5's own descriptor of the file and
 * without the lock (shard_reader_direct_read), then ends the plan under the
 * lock again (shard_reader_direct_end). A planned shard stays open (pinned:
 * the LRU never evicts it) until its plan ends; at most max_open - 1 shards
 * are pinned at once, so no descriptor is added to the cap and an HDF5 read
 * always finds a slot. */
typedef struct shard_map shard_map; /* a shard file mapped into memory (below) */

typedef struct {
  int64_t shard, row; /* the sample's shard and its row there */
  int fd;             /* the shard file, open while pinned */
  int64_t off[2];     /* file offsets of its /inputs and /targets rows */
  uint64_t want[2];   /* their /checksums (datasets checked: shard_reader_checked) */
  shard_map *map;     /* the shard file mapped read-only, or NULL (not mapped: pread only) */
} shard_direct_row;

/* Plan reading samples idx[0..n) (n >= 1): m >= 1 of them, idx[0..m), into
 * rows[0..m). *direct = 1: read them with shard_reader_direct_read, then
 * shard_reader_direct_end(r, rows, m). *direct = 0: read idx[0..m) through
 * HDF5 (shard_reader_read_list_sums), nothing pinned: a shard whose rows
 * cannot be read directly (filtered or not float32, rows not allocated, not
 * a plain file), no shard list (dataset.h5 as it is), an images-only dataset
 * (inputs rebuilt), a sample out of range
 * (the HDF5 read names it), or every other open shard pinned. -1 on error
 * (a damaged shard, named). Hold h5_lock(). */
int shard_reader_direct_plan(shard_reader *r, const int64_t *idx, int n, shard_direct_row *rows,
                             int *direct);
/* Read and check the m planned rows into inputs / targets (NULL: not read)
 * and sums, as shard_reader_read_list_sums does, with the same errors
 * (shard, sample, row, array). Calls no HDF5: any thread, no lock; reads
 * only what does not change while the rows are pinned. */
int shard_reader_direct_read(const shard_reader *r, const shard_direct_row *rows, int m,
                             float *inputs, float *targets, uint64_t *sums);
/* Unpin the shards of a plan. Hold h5_lock(). */
void shard_reader_direct_end(shard_reader *r, const shard_direct_row *rows, int m);

/* ---- zero copy: rows handed out where they lie in the mapped shard file ----
 * When a shard is first planned for direct reads, its file is also mapped
 * read-only (mmap(2) of the whole file, MAP_SHARED: the page cache's own
 * pages, no copy), after checking that the file still reaches the end of
 * every row the plan found (a file shorter than that is an error naming
 * it). The mapping is reference counted: the open shard holds one
 * reference, dropped when the LRU closes the shard; every view handed out
 * by shard_reader_direct_map holds another, dropped by shard_map_release
 * (any thread, e.g. ZeroMQ's I/O thread once it has sent the frames), and
 * the last one unmaps. So a view stays valid after its plan ends and after
 * its shard is evicted, for as long as the caller holds it; the mappings
 * alive are the open shards' plus those of views still held.
 * A mapping fails softly: where mmap is refused the shard is read with
 * pread as before (rows[k].map NULL). */

/* Views of the m planned rows (shard_reader_direct_plan with *direct = 1)
 * when they are one run of consecutive rows of one mapped shard, in the
 * file back to back (always for m = 1: one row of /inputs and one of
 * /targets): *inputs (m x 3 n^3 float32) and *targets (m x F n^2) point
 * into the mapping, every row is checked against /checksums as
 * shard_reader_direct_read checks it (a mismatch names the shard, sample,
 * row and array), sums gets the rows' XXH64s, and *hold a reference to the
 * mapping that keeps the views valid until shard_map_release(*hold).
 * The pointers are not aligned beyond what the file offsets give (HDF5
 * places rows at any byte): read them as bytes or memcpy.
 * A row lost from the mapping (the file truncated while mapped: the kernel
 * raises SIGBUS on reading it) is caught while it is checked and is an
 * error naming the shard, the sample and its row, never a crash. What
 * cannot be caught here: a file truncated after its rows were checked, while
 * the views are still held (docs/stream-protocol.md, "Zero copy"). Returns 1 (views
 * made), 0 (the rows are not one mapped run: read them with
 * shard_reader_direct_read), -1 on error. Calls no HDF5: any thread, no
 * lock, between the plan and shard_reader_direct_end. */
int shard_reader_direct_map(const shard_reader *r, const shard_direct_row *rows, int m,
                            const void **inputs, const void **targets, uint64_t *sums,
                            shard_map **hold);
/* Views of the m planned rows one by one, wherever each lies (any shard,
 * any order), for a sender that sends every row as a frame of its own
 * (stream protocol 3): inputs[k] and targets[k] point into row k's
 * mapping, every row is checked as shard_reader_direct_map checks it (the
 * same errors, SIGBUS caught), sums[2k..2k+2) gets its XXH64s, and
 * holds[2k] and holds[2k+1] each a reference to row k's mapping (one for
 * its inputs row, one for its targets row), each dropped on its own by
 * shard_map_release, so a row's mapping lives as long as the frame that
 * points into it, after its plan ends and its shard is evicted. Nothing is
 * held on failure. Returns 1 (views made), 0 (a row's shard is not mapped:
 * read the rows with shard_reader_direct_read), -1 on error. Calls no HDF5:
 * any thread, no lock, between the plan and shard_reader_direct_end. */
int shard_reader_direct_map_rows(const shard_reader *r, const shard_direct_row *rows, int m,
                                 const void **inputs, const void **targets, uint64_t *sums,
                                 shard_map **holds);
/* Drop a reference taken by shard_reader_direct_map (NULL: nothing); the
 * last one unmaps the file. Thread-safe; no lock needed. */
void shard_map_release(shard_map *m);

#endif
