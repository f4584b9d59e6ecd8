/* dataset_fixture.h - small datasets for the C unit tests of pipeline/serve
 * and pipeline/train, made in-process the way `coemu generate` makes them:
 * a job (job_parse), shards (shard_open / shard_put / shard_close), the
 * manifest and dataset.h5 (dataset_finish) and, on request, /stats
 * (dataset_stats). The samples come from an analytic producer,
 * fixture_sample(): every sample differs from every other in every array,
 * so a test can tell which sample a batch row is by comparing bytes.
 *
 * Job: M models x D directions of n^3 cubes and nf channels, splits
 * 0.5 / 0.25 / 0.25 of the models (round(M/2) train, round(M/4)
 * validation, the rest test), /stats over the train split.
 *
 *   fixture_make(dir, spec)         MPI must be up; collective over
 *                                   MPI_COMM_WORLD (rank 0 writes, every
 *                                   rank takes part in dataset_stats).
 *   fixture_make_forked(dir, spec)  for tests that do not use MPI: makes the
 *                                   dataset in a child process that runs MPI
 *                                   as a singleton and leaves with _exit(),
 *                                   so the test process itself never starts
 *                                   MPI and keeps LeakSanitizer's checks.
 */
#ifndef COEMU_TEST_DATASET_FIXTURE_H
#define COEMU_TEST_DATASET_FIXTURE_H

#include <math.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/error.h"
#include "pipeline/dataset/dataset.h"
#include "pipeline/dataset/dataset_stats.h"
#include "pipeline/job/job.h"

typedef struct {
  int models, directions, n, nf;
  int samples_per_shard;
  int stats; /* compute /stats (over the train split) */
} fixture_spec;

static inline int64_t fixture_samples(const fixture_spec *f) {
  return (int64_t)f->models * f->directions;
}
static inline size_t fixture_in_vals(const fixture_spec *f) {
  return 3 * (size_t)f->n * f->n * f->n;
}
static inline size_t fixture_out_vals(const fixture_spec *f) {
  return (size_t)f->nf * f->n * f->n;
}

/* Sample i: v_z, T, n_CO cubes and nf positive intensity images, all exact
 * in float32 and distinct for every sample. */
static inline void fixture_sample(const fixture_spec *f, int64_t i, float *in, float *tg) {
  const int n = f->n;
  const size_t n3 = (size_t)n * n * n;
  for (int x = 0; x < n; x++)
    for (int y = 0; y < n; y++)
      for (int z = 0; z < n; z++) {
        size_t v = ((size_t)x * n + y) * n + z;
        in[v] = (float)(((x - y) * 25 + (z % 5) * 7) * (1 + (i % 3)) + 50 * i);
        in[n3 + v] = (float)(10 + x + 2 * y + 3 * z + 0.5 * (double)i);
        in[2 * n3 + v] = (float)((1 + i) * 1000 + z * (1 + x % 4) + y);
      }
  for (int c = 0; c < f->nf; c++)
    for (int x = 0; x < n; x++)
      for (int y = 0; y < n; y++) {
        int r2 = (x - n / 2) * (x - n / 2) + (y - n / 2) * (y - n / 2);
        int k = (int)((r2 * (3 + c) + 13 * i + 5 * c + x) % 997) + 1;
        tg[((size_t)c * n + x) * n + y] = (float)ldexp((double)k, -30 - (int)(i % 4));
      }
}

static inline int fixture_job_text(const fixture_spec *f, char *buf, size_t len) {
  char channels[200];
  if (f->nf == 1)
    snprintf(channels, sizeof channels, "{mode: list, velocities: [0.0]}");
  else
    snprintf(channels, sizeof channels, "{mode: grid, vmin: -600, vmax: 600, count: %d}", f->nf);
  int w = snprintf(buf, len,
                   "name: unit-fixture\n"
                   "inputs: {synth: {count: %d, seed: 3}}\n"
                   "sampling: {directions: %d, n: %d, seed: 99}\n"
                   "line: {lamda: co.dat, channels: %s}\n"
                   "output: {samples_per_shard: %d}\n"
                   "splits: {train: 0.5, validation: 0.25, test: 0.25, seed: 2}\n"
                   "statistics: {compute: %s}\n",
                   f->models, f->directions, f->n, channels, f->samples_per_shard,
                   f->stats ? "true" : "false");
  return w > 0 && (size_t)w < len ? 0 : ce_err("fixture job text too long");
}

/* The split of every sample (job_split values) into split[samples]. */
static inline int fixture_splits(const fixture_spec *f, uint8_t *split) {
  char text[1024];
  CE_TRY(fixture_job_text(f, text, sizeof text));
  job j;
  CE_TRY(job_parse("<fixture>", text, strlen(text), ".", &j));
  uint8_t *ms = malloc((size_t)f->models);
  int rc = ms ? job_model_splits(&j, ms) : ce_err("out of memory");
  for (int64_t i = 0; rc == 0 && i < fixture_samples(f); i++) split[i] = ms[i / f->directions];
  free(ms);
  job_free(&j);
  return rc;
}

/* Rank 0's part: the job, the shards, manifest.json and dataset.h5. */
static inline int fixture_write(const char *dir, const fixture_spec *f) {
  char text[1024];
  CE_TRY(fixture_job_text(f, text, sizeof text));
  job j;
  CE_TRY(job_parse("<fixture>", text, strlen(text), dir, &j));
  shard_layout lay;
  dataset_layout(&j, &lay);
  int64_t N = job_samples(&j), K = dataset_shards(N, j.samples_per_shard);
  uint8_t *ms = malloc((size_t)j.n_models);
  float *in = malloc(sizeof(float) * fixture_in_vals(f));
  float *tg = malloc(sizeof(float) * fixture_out_vals(f));
  double *freq = malloc(sizeof(double) * (size_t)j.nf);
  int rc = ms && in && tg && freq ? 0 : ce_err("out of memory");
  if (rc == 0) rc = dataset_prepare(dir, &j);
  if (rc == 0) rc = job_model_splits(&j, ms);
  for (int64_t s = 0; rc == 0 && s < K; s++) {
    int64_t first, count;
    char path[4096];
    dataset_shard_range(s, N, j.samples_per_shard, &first, &count);
    shard_writer *w = NULL;
    rc = dataset_shard_path(dir, s, path, sizeof path);
    if (rc == 0) rc = shard_open(&w, path, &lay, first, count);
    for (int64_t i = first; rc == 0 && i < first + count; i++) {
      const double q[4] = {1, 0, 0, 0};
      fixture_sample(f, i, in, tg);
      rc = shard_put(w, in, tg, i / j.directions, i % j.directions, q, ms[i / j.directions], 1);
    }
    if (w) {
      int crc = shard_close(w, rc == 0, NULL);
      if (rc == 0) rc = crc;
    }
  }
  if (rc == 0) {
    job_frequencies(&j, 230.538e9, freq);
    dataset_provenance pv = {.job = &j, .frequencies = freq, .nu0 = 230.538e9, .mass = 28.0,
                             .producer = "tests/dataset_fixture.h", .mpi_version = "none",
                             .ranks = 1};
    rc = dataset_finish(dir, &pv, NULL);
  }
  free(ms);
  free(in);
  free(tg);
  free(freq);
  job_free(&j);
  return rc;
}

static inline int fixture_make(const char *dir, const fixture_spec *f) {
  int rank;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  int rc = rank == 0 ? fixture_write(dir, f) : 0;
  if (rc < 0) fprintf(stderr, "fixture %s: %s\n", dir, ce_err_msg());
  MPI_Bcast(&rc, 1, MPI_INT, 0, MPI_COMM_WORLD);
  if (rc < 0) return ce_err("fixture %s: could not be made", dir);
  if (f->stats && dataset_stats(dir, "train", 0, NAN, 1, NULL) < 0) return -1;
  return 0;
}

static inline int fixture_make_forked(const char *dir, const fixture_spec *f) {
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid < 0) CE_FAIL("fork failed");
  if (pid == 0) {
    MPI_Init(NULL, NULL);
    int rc = fixture_make(dir, f);
    if (rc < 0) fprintf(stderr, "fixture %s: %s\n", dir, ce_err_msg());
    MPI_Finalize();
    fflush(stderr);
    _exit(rc < 0 ? 1 : 0); /* no atexit handlers: no leak report of the MPI runtime */
  }
  int st = 0;
  if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
    CE_FAIL("fixture %s: the child process failed (status %d)", dir, st);
  return 0;
}

#endif
