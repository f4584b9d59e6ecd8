/* dataset.h - a dataset directory: shards, manifest, virtual datasets.
 *
 *   DIR/job.yaml           the job text (a resume must use the same job)
 *   DIR/shards/shard-NNNNNN.h5   samples [s*S, ...), see layout.h and shard.h
 *   DIR/manifest.json      every shard: file, sample range, bytes, CRC-32 of
 *                          each dataset; the layout; skipped models
 *   DIR/dataset.h5         /inputs, /targets, /model_id, /direction_index,
 *                          /direction, /split, /valid as HDF5 virtual
 *                          datasets over the shards; /frequencies,
 *                          /velocities, /models catalogue, /provenance,
 *                          /geometry and /solver (what remakes a sample)
 *
 * The manifest and dataset.h5 are written by rank 0 after every shard is
 * finished, each atomically, so a manifest never lists a partial shard.
 * schemas/dataset.yaml and docs/dataset-format.md describe the layout.
 */
#ifndef COEMU_DATASET_H
#define COEMU_DATASET_H

#include <hdf5.h>
#include <stdint.h>
#include <stdio.h>

#include "pipeline/dataset/layout.h"
#include "pipeline/dataset/shard.h"
#include "pipeline/job/job.h"

/* Rank 0, before any shard: DIR/plan.json, the sample plan a live stream
 * needs before the dataset exists (samples, samples per shard, directions,
 * cube side, channels, whether inputs are stored, the split of every model),
 * written atomically. */
int dataset_write_plan(const char *dir, const job *j, const uint8_t *model_split);

/* The shard layout a job asks for. */
void dataset_layout(const job *j, shard_layout *lay);

/* What DIR is to job j, read only (no lock taken, nothing written), for the
 * run (take_over_failed_start, dataset_prepare) and for --check alike:
 * DATASET_DIR_NEW: DIR is absent or holds no job.yaml; DATASET_DIR_SAME_JOB:
 * its job.yaml is j's text byte for byte (the run resumes or reruns it);
 * DATASET_DIR_FAILED_START: another job's job.yaml but no finished shard,
 * no manifest.json and no dataset.h5 (what a failed start left: the run
 * takes it over). -1 with the message when DIR holds a different job's
 * dataset (or job.yaml cannot be read). */
enum { DATASET_DIR_NEW = 0, DATASET_DIR_SAME_JOB = 1, DATASET_DIR_FAILED_START = 2 };
int dataset_dir_judge(const char *dir, const job *j);

/* Rank 0, before any shard: create DIR and DIR/shards; lock DIR for this
 * process (fs_lock_dir: a second generate, stats or a run on DIR is refused,
 * naming this one); record the job text in
 * DIR/job.yaml, or refuse if DIR holds a different job's dataset; remove
 * the temporary files (*.tmp.*) an interrupted run left in DIR, DIR/shards
 * and DIR/models. */
int dataset_prepare(const char *dir, const job *j);

/* The format's minor version (manifest.json "format_minor", dataset.h5's root
 * attribute format_minor): changes readers of the major format_version need
 * not know about. 0 (absent): before /geometry and /solver, and coemunet
 * /velocities with the wrong sign (-900..+900 m/s; docs/dataset-format.md,
 * "Changes"); 1: /geometry, /solver, /velocities = c (1 - nu/nu0) to rounding; 2:
 * images-only datasets (output.store_inputs false): /checksums' inputs column
 * holds the checksum of the cube that was not stored, the root attribute
 * `inputs` ("stored" | "rebuilt", manifest "inputs") and /models' units_file,
 * so readers rebuild the cubes (input_rebuild.h); 3: the manifest's per-shard
 * "layout" (byte offsets of /inputs, /targets, /checksums, /split, /valid in
 * the shard file), so readers open a shard without HDF5 (shard_reader.h); 4:
 * dataset.h5's root attribute samples_per_shard, so a reader of a few samples
 * opens their shards instead of the virtual datasets (dataset_sample_shard). */
#define DATASET_FORMAT_MINOR 4

/* Where sample `sample` of the dataset in `dir` lies: *path (its shard) and
 * *row, from dataset.h5's root attribute samples_per_shard (f: dataset.h5,
 * open). 1 when found; 0 when dataset.h5 predates the attribute (format_minor
 * < 4: read the virtual datasets); -1 with the message on an error. Opening a
 * virtual dataset decodes one mapping per shard (about 0.2 s at 34,000
 * shards), which a reader of a few samples need not pay. */
int dataset_sample_shard(hid_t f, const char *dir, int64_t sample, char *path, size_t len,
                         int64_t *row);

/* What the producer chose that the job alone does not say: the sizes a sample
 * was made with (docs/dataset-format.md, "Geometry"). Written to dataset.h5's
 * /geometry and manifest.json's "geometry". */
typedef struct {
  int compat;            /* 1: sampling.coemunet_compat's gridding (dx per sample) */
  double ball_radius;    /* [m] the trimming ball (the smallest half-extent over the models,
                            or with compat the paper's R if smaller) */
  double edge;           /* [m] the cube edge (NaN with compat: the box spans the points) */
  double dx;             /* [m] the solver's cell size, edge / n (NaN with compat: per sample) */
} dataset_geometry;

typedef struct {
  const job *job;
  const double *frequencies; /* [nf] Hz */
  double nu0;                /* rest frequency of the line [Hz] */
  double mass;               /* the molecular mass the solver used [u] (with geometry) */
  const char *producer;      /* what made the samples, e.g. "sampler+lte" */
  const char *mpi_version;   /* MPI_Get_library_version */
  int ranks;
  const dataset_geometry *geometry; /* NULL: none recorded (producers without a sampler) */
} dataset_provenance;

/* Rank 0, after every shard is finished: write manifest.json and
 * dataset.h5. Fails (naming the shard) if a shard is missing. known: NULL,
 * or one entry per shard with what the rank that made or kept it already
 * read (shard_close's or shard_check_claims' sums); an entry with count 0 is
 * read from its file (shard_read_sums). At tens of thousands of shards the
 * second open of every shard, serial on rank 0, was most of a resume. */
int dataset_finish(const char *dir, const dataset_provenance *prov, const shard_sums *known);

/* Rank 0, for a rerun of the job that made DIR (dataset_prepare agreed):
 * how much of it is finished, judged without reading any shard's data.
 * DATASET_FINISHED_SHARDS: manifest.json lists every sample of the job, each
 * listed shard is there with its recorded size, and dataset.h5 opens
 * (what shard_reader_open checks); DATASET_FINISHED_ALL: also /stats, when
 * the job computes it. A damaged shard of the right size is not found here:
 * coemu verify reads every byte. 0 when not finished (the error cleared). */
enum { DATASET_FINISHED_SHARDS = 1, DATASET_FINISHED_ALL = 2 };
int dataset_finished(const char *dir, const job *j);

/* Check a dataset against its manifest: every listed shard exists, has the
 * listed size, range and layout, and every dataset's CRC-32 recomputed from
 * the data matches the manifest; the shards cover all samples; dataset.h5
 * opens. Each problem is printed to `report` as "DIR: shard FILE: /SET: ...".
 * Returns the number of problems (0: all good), or -1 if the manifest itself
 * cannot be read (error message set). */
int dataset_verify(const char *dir, FILE *report);

/* The same work shared by `parts` processes (coemu verify under mpirun):
 * part p reads and checks the shards i with i % parts == p and, for an
 * images-only dataset, rebuilds the inputs of its block of samples; part 0
 * also checks the manifest's coverage and dataset.h5. `agree` (NULL with
 * one part) is collective: given this part's problems so far it returns the
 * total of every part (or -1), and is called exactly once by every part,
 * between the shard checks and the rebuild (which runs only when no part
 * found a problem). Returns this part's problems, or -1. */
typedef int (*dataset_verify_agree_fn)(void *ctx, int problems);
int dataset_verify_part(const char *dir, FILE *report, int part, int parts,
                        dataset_verify_agree_fn agree, void *ctx);

/* Print a summary of a dataset (samples, layout, splits, channels, shards,
 * provenance) to stdout. */
int dataset_inspect(const char *dir);

#endif
