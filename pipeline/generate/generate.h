/* generate.h - `coemu generate`: run a job over all MPI ranks into a dataset
 * directory, resuming what an earlier run left.
 *
 * The samples come from a producer behind a narrow seam: a function that
 * makes sample (model, direction) of the job - input cubes and target
 * images - as a pure function of the job and those two numbers. The command
 * line, the work distribution, the shards, manifest, virtual datasets,
 * provenance, resume and error handling are all here; the producer is the
 * sampler plus the solver in the real command.
 */
#ifndef COEMU_GENERATE_H
#define COEMU_GENERATE_H

#include <stdint.h>

#include "pipeline/dataset/dataset.h"
#include "pipeline/job/job.h"

/* Make one sample. inputs[3*n^3]: v_z [m/s], T [K], n_CO [m^-3], each in
 * (x, y, z) C order; targets[nf*n^2]: I_nu per channel, (f, x, y) C order;
 * quat: the rotation (w, x, y, z). Returns 0, or -1 with an error message
 * (e.g. the model cannot be read). */
typedef int (*sample_fn)(void *ctx, int64_t model, int64_t direction, float *inputs,
                         float *targets, double quat[4]);

typedef struct {
  sample_fn sample;
  void *ctx;
  double nu0;            /* the line's rest frequency [Hz] (-> /frequencies) */
  double mass;           /* the molecular mass the solver used [u] (-> /solver mass) */
  const char *name;      /* recorded in the provenance */
  int has_geometry;      /* 1: geometry holds the sizes the samples were made with */
  dataset_geometry geometry; /* -> dataset.h5 /geometry (docs/dataset-format.md) */
  void (*close)(void *ctx);
  /* NULL, or a hint: samples [first, first + count) (sample = model *
   * directions + direction) are asked for next, in order, so a producer
   * may make them in batches (the device pipeline) without making any
   * that nobody asks for. */
  void (*plan)(void *ctx, int64_t first, int64_t count);
  /* NULL, or for images-only jobs (output.store_inputs false) in place of
   * sample: the same sample without its input cubes, only *inputs_hash,
   * the XXH64 (seed 0) of the row they make (shard_row_hash's value, what
   * /checksums records), so that a producer whose cubes are made elsewhere
   * (the device pipeline) need not bring them back to the host. */
  int (*sample_images)(void *ctx, int64_t model, int64_t direction, uint64_t *inputs_hash,
                       float *targets, double quat[4]);
  /* NULL (the real producer), or a test hook: called on the rank that is
   * about to check shard `shard` in a resume's first pass (generate.c,
   * resume_pass; the shard need not be there), so that the test producer
   * (tests/pipeline/testgen.c) can signal or slow a rank at a known place
   * inside it. */
  void (*resume_check)(void *ctx, int64_t shard);
} generate_producer;

/* Build the producer for a job on this rank (load the line data, etc.),
 * called on every rank after MPI is up and `out_dir` exists (a producer may
 * keep files there, e.g. synthetic models under out_dir/models, and may use
 * collectives on MPI_COMM_WORLD, e.g. to agree on the ball radius). Returns 0
 * or -1 with an error message. */
typedef int (*producer_open_fn)(const job *j, const char *out_dir, generate_producer *p);

/* The whole command: argv after "generate". Initialises and finalises MPI
 * itself (except for --check and --schema-doc, which need no MPI). --check
 * also reads the job's input files (job_check_inputs) and prints an estimate
 * of samples, disk and time. Before creating anything every rank checks the
 * inputs; an error then, or anywhere later, is printed once ("coemu CMD:
 * rank R: error: ...", by the lowest rank that met it) and every rank exits
 * with 1 after MPI_Finalize (mpi_agree; a failure while making a shard stops
 * every rank after its current shard, see workplan.h). A start that fails
 * removes the folder it created; a folder holding only another job's failed
 * start (no finished shard, no manifest) is taken over. */
int generate_main(const char *cmd, int argc, char **argv, producer_open_fn open);

/* NULL in coemu; a test hook: called as a finishing step begins, "dataset"
 * on every rank before rank 0 writes manifest.json and dataset.h5,
 * "preview" on rank 0 before it writes preview.png (also in a rerun of a
 * finished dataset without one), "stats" on every rank before /stats (also
 * in such a rerun), so that tests/pipeline/testgen.c can signal a rank at a
 * known step (COEMU_TEST_FINISH_SIGNAL). A global, not a producer hook: a
 * rerun of a finished dataset opens no producer. */
extern void (*generate_finish_hook)(const char *step);

/* The default job (jobs/demo.yaml), embedded at build time. */
extern const char job_demo_text[];

#endif
