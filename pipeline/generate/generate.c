/* generate.c - the generate driver: job -> shards -> manifest + dataset.h5. */
#include "pipeline/generate/generate.h"

#include <mpi.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/cli.h"
#include "common/error.h"
#include "common/progress.h"
#include "pipeline/dataset/dataset.h"
#include "pipeline/dataset/dataset_stats.h"
#include "pipeline/dataset/preview.h"
#include "pipeline/dataset/shard.h"
#include "pipeline/generate/live.h"
#include "pipeline/generate/workplan.h"
#include "pipeline/mpi/mpi_fatal.h"

static const char *g_cmd = "generate";
static int g_rank = 0;

_Noreturn static void fatal(const char *msg) { mpi_fatal(msg); }

static int check_only(const job *j) {
  int64_t N = job_samples(j);
  printf("%s: ok: %lld models x %lld directions = %lld samples, %d^3 cubes, %d channels, "
         "%lld shards of %lld\n",
         j->path, (long long)j->n_models, (long long)j->directions, (long long)N, j->n, j->nf,
         (long long)dataset_shards(N, j->samples_per_shard), (long long)j->samples_per_shard);
  return 0;
}

/* Seconds this rank spent inside the producer (the rest is pipeline
 * overhead: I/O, checksums, coordination). */
static double g_produce_s;

/* Make (or keep) shard s. Returns the samples it holds; sets *made. */
static int64_t do_shard(const job *j, const shard_layout *lay, const char *out, int64_t s,
                        const generate_producer *p, const uint8_t *msplit, float *in, float *tg,
                        workplan *wp, int *made) {
  int64_t N = job_samples(j), first, count;
  dataset_shard_range(s, N, j->samples_per_shard, &first, &count);
  char path[4096];
  if (dataset_shard_path(out, s, path, sizeof path) < 0) fatal(ce_err_msg());
  *made = 0;
  if (access(path, F_OK) == 0) {
    shard_sums sums;
    if (shard_verify(path, lay, &sums) == 0 && sums.first == first && sums.count == count)
      return count; /* finished by an earlier run and intact: keep it */
    fprintf(stderr, "coemu %s: rank %d: warning: %s; making the shard again\n", g_cmd, g_rank,
            ce_err_msg());
    if (unlink(path) < 0) fatal("cannot remove a damaged shard");
  }
  shard_writer *w;
  if (shard_open(&w, path, lay, first, count) < 0) fatal(ce_err_msg());
  size_t nin = 3 * (size_t)j->n * j->n * j->n, ntg = (size_t)j->nf * j->n * j->n;
  for (int64_t i = 0; i < count; i++) {
    int64_t sample = first + i, model = sample / j->directions, dir = sample % j->directions;
    double q[4] = {1, 0, 0, 0};
    uint8_t valid = 1;
    ce_err_clear();
    double t0 = ce_now();
    int prc = p->sample(p->ctx, model, dir, in, tg, q);
    g_produce_s += ce_now() - t0;
    if (prc < 0) {
      char msg[1400];
      snprintf(msg, sizeof msg, "model %lld (%s), direction %lld: %s", (long long)model,
               j->model_names[model], (long long)dir, ce_err_msg());
      if (!j->skip_bad_models) {
        shard_close(w, 0, NULL);
        fatal(msg);
      }
      fprintf(stderr, "coemu %s: rank %d: warning: %s; sample skipped (valid = 0)\n", g_cmd,
              g_rank, msg);
      memset(in, 0, nin * sizeof *in);
      memset(tg, 0, ntg * sizeof *tg);
      memset(q, 0, sizeof q);
      valid = 0;
    }
    if (shard_put(w, in, tg, model, dir, q, msplit[model], valid) < 0) {
      char msg[1100];
      snprintf(msg, sizeof msg, "%s", ce_err_msg());
      shard_close(w, 0, NULL);
      fatal(msg);
    }
    workplan_serve(wp, i + 1);
  }
  if (shard_close_async(w, NULL) < 0) fatal(ce_err_msg()); /* fsync + rename in the background */
  *made = 1;
  return count;
}

int generate_main(const char *cmd, int argc, char **argv, producer_open_fn open) {
  g_cmd = cmd;
  const char *out = NULL;
  int check = 0, quiet = 0, schema_doc = 0;
  cli_opt opts[] = {
      {"out", CLI_STR, &out, "DIR", "dataset directory (default: the job's output.directory)", 0, 0},
      {"check", CLI_FLAG, &check, NULL, "validate the job file and exit", 0, 0},
      {"quiet", CLI_FLAG, &quiet, NULL, "no progress lines", 0, 0},
      {"schema-doc", CLI_FLAG, &schema_doc, NULL, "print the job-file key table (Markdown) and exit", 0, 0},
      {0}};
  const cli_command spec = {
      cmd, "[JOB.yaml] [options]   (under mpirun for several ranks)",
      "Make a dataset: run a job file (default: the embedded demo job) over all MPI ranks into a "
      "directory of HDF5 shards, a manifest and dataset.h5; rerun the same command to resume.",
      opts, 0, 1};
  int npos = 0;
  char **pos = NULL;
  cli_status r = cli_run_parse(&spec, argc, argv, &npos, &pos);
  if (r != CLI_OK) return cli_exit(r);
  const char *job_path = npos ? pos[0] : NULL;
  free(pos);
  if (schema_doc) return job_schema_markdown(stdout) < 0 ? 1 : 0;

  job j;
  int loaded = job_path ? job_load(job_path, &j)
                        : job_parse("<embedded jobs/demo.yaml>", job_demo_text,
                                    strlen(job_demo_text), "jobs", &j);
  if (check) {
    if (loaded < 0) return cli_fail(cmd);
    check_only(&j);
    job_free(&j);
    return 0;
  }

  MPI_Init(&argc, &argv);
  mpi_fatal_init(cmd);
  g_rank = mpi_fatal_rank();
  int size;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  /* Over a file-size limit, write() must fail with EFBIG (a clean error
   * naming the shard) instead of the process dying of SIGXFSZ. */
  signal(SIGXFSZ, SIG_IGN);
  if (loaded < 0) fatal(ce_err_msg());
  if (!out) out = j.out_dir;

  shard_layout lay;
  dataset_layout(&j, &lay);
  if (g_rank == 0 && dataset_prepare(out, &j) < 0) fatal(ce_err_msg());
  MPI_Barrier(MPI_COMM_WORLD);

  generate_producer p = {0};
  if (open(&j, out, &p) < 0) fatal(ce_err_msg());
  uint8_t *msplit = ce_malloc_array((size_t)j.n_models, 1, "model splits");
  float *in = ce_malloc_array(3 * (size_t)j.n * j.n * j.n, sizeof(float), "input cube");
  float *tg = ce_malloc_array((size_t)j.nf * j.n * j.n, sizeof(float), "target image");
  if (!msplit || !in || !tg || job_model_splits(&j, msplit) < 0) fatal(ce_err_msg());
  if (g_rank == 0 && dataset_write_plan(out, &j, msplit) < 0) fatal(ce_err_msg());
  if (g_rank == 0 && j.has_stream && live_serve_spawn(out, &j) < 0) fatal(ce_err_msg());

  int64_t N = job_samples(&j), K = dataset_shards(N, j.samples_per_shard);
  ce_progress prog;
  ce_progress_init(&prog, cmd, "samples", N, quiet || g_rank != 0);
  workplan wp;
  workplan_init(&wp, MPI_COMM_WORLD, K, g_rank == 0 ? &prog : NULL);
  int64_t last = 0, counts[2] = {0, 0}; /* shards made, shards kept */
  double t_start = ce_now();
  for (;;) {
    int64_t s = workplan_next(&wp, last);
    if (s < 0) break;
    int made = 0;
    last = do_shard(&j, &lay, out, s, &p, msplit, in, tg, &wp, &made);
    counts[made ? 0 : 1]++;
  }
  if (shard_commits_wait() < 0) fatal(ce_err_msg());
  workplan_drain(&wp);
  int64_t total[2];
  MPI_Reduce(counts, total, 2, MPI_INT64_T, MPI_SUM, 0, MPI_COMM_WORLD);
  double busy[2] = {g_produce_s, ce_now() - t_start}, busy_sum[2];
  MPI_Reduce(busy, busy_sum, 2, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD);
  if (g_rank == 0) {
    ce_progress_done(&prog, N);
    char mpiv[MPI_MAX_LIBRARY_VERSION_STRING];
    int len = 0;
    MPI_Get_library_version(mpiv, &len);
    char *nl = strchr(mpiv, '\n');
    if (nl) *nl = 0;
    double *freq = ce_malloc_array((size_t)j.nf, sizeof *freq, "frequencies");
    if (!freq) fatal(ce_err_msg());
    job_frequencies(&j, p.nu0, freq);
    dataset_provenance pv = {&j, freq, p.nu0, p.name, mpiv, size};
    if (dataset_finish(out, &pv) < 0) fatal(ce_err_msg());
    char png[4200];
    snprintf(png, sizeof png, "%s/preview.png", out);
    if (dataset_preview(out, 4, png) < 0) fatal(ce_err_msg());
    free(freq);
    if (!quiet)
      fprintf(stderr, "coemu %s: %s: %lld samples in %lld shards (%lld made now, %lld kept from "
                      "an earlier run)\n",
              cmd, out, (long long)N, (long long)K, (long long)total[0], (long long)total[1]);
    if (!quiet)
      fprintf(stderr, "coemu %s: dataset %s/dataset.h5, preview %s\n", cmd, out, png);
  if (g_rank == 0 && !quiet && busy_sum[1] > 0)
    fprintf(stderr, "coemu %s: producer %.2f s of %.2f s rank time (%.1f%% outside: I/O, "
                    "checksums, coordination)\n",
            cmd, busy_sum[0], busy_sum[1], 100 * (1 - busy_sum[0] / busy_sum[1]));
  }
  if (p.close) p.close(p.ctx);
  p.close = NULL;
  /* Every rank: the /stats group over the finished dataset (recomputed from
   * the shards, so a resumed job gets the same numbers as an uninterrupted
   * one). dataset_stats prints a failing rank's error itself. */
  MPI_Barrier(MPI_COMM_WORLD);
  int stats_rc = 0;
  if (j.stats_compute) {
    double ts = ce_now();
    stats_rc = dataset_stats(out, j.stats_split, j.stats_drop_outliers, 1);
    if (g_rank == 0 && !quiet && stats_rc == 0)
      fprintf(stderr, "coemu %s: /stats over the %s split in %.1f s\n", cmd, j.stats_split,
              ce_now() - ts);
  }
  free(msplit);
  free(in);
  free(tg);
  job_free(&j);
  MPI_Finalize();
  return stats_rc < 0 ? 1 : 0;
}
