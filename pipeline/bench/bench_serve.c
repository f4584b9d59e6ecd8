/* bench_serve.c - `coemu bench serve DATASET`: what `coemu serve` delivers
 * from a finished dataset, to the C consumer (and to the Python client with
 * --python), beside the in-memory stream protocol of `coemu bench stream`
 * with samples of the same size, in the same run.
 *
 * The first epoch warms the page cache and the connection and is not timed;
 * the figures are over the following epochs, so they measure the serve path
 * (shard reads, checksums, the wire), not the disk. With --trainer, also the
 * trainer's own reader (pipeline/train/train_data.h: an in-process
 * serve_source, normalised batches, no wire), as `coemu train` reads a
 * dataset. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/cli.h"
#include "common/error.h"
#include "common/progress.h"
#include "pipeline/bench/benches.h"
#include "pipeline/serve/serve.h"
#include "pipeline/stream/stream_client.h"
#include "pipeline/stream/stream_server.h"
#include "pipeline/train/train_data.h"

/* serve_opts.unfinished_hint: serve's own ("serve a running job with
 * --live") names an option bench serve does not have */
#define UNFINISHED_HINT "bench serve times finished datasets only (`coemu serve DIR --live` serves a running job)"

typedef struct {
  const char *dir, *split, *python;
  int batch, credit, prefetch, epochs, read_threads, max_open, copy_rows, trainer;
  uint64_t rows_mapped, rows_copied, rows_hdf5; /* the C consumer's run (serve_read_counts) */
} serve_bench;

static int start(const serve_bench *b, const char *ep, serve_source **src, bench_server *t) {
  serve_opts so = {.dataset_dir = b->dir, .split = b->split, .seed = 1, .world = 1,
                   .batch = b->batch, .drop_last = 1, .prefetch = b->prefetch,
                   .read_threads = b->read_threads, .max_open = b->max_open,
                   .copy_rows = b->copy_rows, .row_views = 1, .unfinished_hint = UNFINISHED_HINT};
  CE_TRY(serve_open(&so, src));
  stream_server_opts o = {.endpoint = ep, .dataset_id = serve_dataset_id(*src),
                          .samples_per_epoch = serve_samples_per_rank(*src),
                          .max_epochs = (uint32_t)b->epochs, .max_credit = (uint32_t)b->credit,
                          .world = 1, .leave = serve_leave};
  stream_server *srv;
  if (stream_server_create(&o, serve_chunk, *src, &srv) < 0) {
    serve_close(*src);
    return -1;
  }
  bench_server_start(t, srv);
  return 0;
}

static void stop(serve_source *src, bench_server *t) {
  bench_server_stop(t);
  serve_close(src);
}

/* The C consumer: GB/s and samples/s over epochs 1.. (epoch 0 warms up). */
static int run_c(serve_bench *b, const char *ep, double *gbs, double *sps, double *cpu_gb) {
  serve_source *src;
  bench_server t;
  CE_TRY(start(b, ep, &src, &t));
  stream_client_opts co = {.endpoint = ep, .rank = 0, .world = 1, .credit = (uint32_t)b->credit};
  stream_client *c;
  if (stream_client_open(&co, &c) < 0) {
    stop(src, &t);
    return -1;
  }
  stream_chunk_view v;
  int r, ends = 0, rc = 0;
  double t0 = 0, cpu0 = 0;
  uint64_t bytes0 = 0, samples0 = 0;
  while (ends < b->epochs && (r = stream_client_next(c, &v)) >= 0) {
    if (r == 0 && ++ends == 1) { /* epoch 0 done: the timed part starts */
      stream_client_stats st;
      stream_client_get_stats(c, &st);
      bytes0 = st.bytes;
      samples0 = st.samples;
      t0 = ce_now();
      cpu0 = bench_cpu_s();
    }
  }
  if (ends < b->epochs) rc = ce_err_prefix("bench serve: the C consumer");
  double t1 = ce_now(), cpu1 = bench_cpu_s();
  stream_client_stats st;
  stream_client_get_stats(c, &st);
  stream_client_close(c);
  uint64_t direct, hdf5, mapped;
  serve_read_counts(src, &direct, &hdf5, &mapped);
  b->rows_mapped = mapped;
  b->rows_copied = direct - mapped;
  b->rows_hdf5 = hdf5;
  stop(src, &t);
  *gbs = (double)(st.bytes - bytes0) / (t1 - t0) / 1e9;
  *sps = (double)(st.samples - samples0) / (t1 - t0);
  *cpu_gb = (cpu1 - cpu0) / ((double)(st.bytes - bytes0) / 1e9);
  return rc;
}

/* The Python client (coemu_stream from b->python) in a child process. */
static int run_python(const serve_bench *b, const char *ep, double *gbs, double *sps,
                      double *py_cpu_gb) {
  serve_source *src;
  bench_server t;
  CE_TRY(start(b, ep, &src, &t));
  char cmd[8192];
  snprintf(cmd, sizeof cmd,
           "python3 -W ignore -c '\n"
           "import sys, time\n"
           "sys.path.insert(0, \"%s\")\n"
           "import coemu_stream as cs\n"
           "c = cs.StreamClient(\"%s\", rank=0, world=1, credit=%d, timeout_s=60)\n"
           "ends, nb, ns, t0, c0 = 0, 0, 0, 0.0, 0.0\n"
           "while ends < %d:\n"
           "    ch = c.next()\n"
           "    if ch is None:\n"
           "        ends += 1\n"
           "        if ends == 1:\n"
           "            t0, c0 = time.perf_counter(), time.process_time()\n"
           "    elif ends >= 1:\n"
           "        nb += ch.ids.nbytes + ch.inputs.nbytes + ch.targets.nbytes\n"
           "        ns += len(ch.ids)\n"
           "dt, dc = time.perf_counter() - t0, time.process_time() - c0\n"
           "c.close()\n"
           "print(nb / dt / 1e9, ns / dt, dc / (nb / 1e9))\n'",
           b->python, ep, b->credit, b->epochs);
  FILE *p = popen(cmd, "r");
  int rc = -1;
  if (!p)
    ce_err("bench serve: cannot run python3");
  else {
    if (fscanf(p, "%lf %lf %lf", gbs, sps, py_cpu_gb) == 3) rc = 0;
    int st = pclose(p);
    if (rc == 0 && st != 0) rc = -1;
    if (rc < 0) ce_err("bench serve: the Python client (coemu_stream from %s) failed", b->python);
  }
  stop(src, &t);
  return rc;
}

/* The trainer's reader: train_data over the same split and batch, one rank,
 * samples/s over epochs 1.. (epoch 0 warms up), as `coemu train` reads a
 * dataset (order exact, seed 1). */
static int run_trainer(const serve_bench *b, double *sps, double *cpu_s) {
  train_stage st = {.source = TRAIN_SRC_DATASET, .dataset = (char *)b->dir, .order = -1};
  snprintf(st.split, sizeof st.split, "%s", b->split);
  train_data_opts o = {.stage = &st, .seed = 1, .rank = 0, .world = 1, .batch = b->batch};
  train_data *d;
  if (train_data_open(&o, &d) < 0) return ce_err_prefix("bench serve: the trainer's reader");
  const float *in, *tg;
  uint64_t n = 0;
  double t0 = 0, c0 = 0;
  int r = 0;
  for (uint32_t e = 0; r >= 0 && e < (uint32_t)b->epochs; e++) {
    if (e == 1) t0 = ce_now(), c0 = bench_cpu_s();
    while ((r = train_data_next(d, e, &in, &tg)) == 1)
      if (e > 0) n += (uint64_t)b->batch;
  }
  double dt = ce_now() - t0, dc = bench_cpu_s() - c0;
  train_data_close(d);
  if (r < 0) return ce_err_prefix("bench serve: the trainer's reader");
  *sps = dt > 0 ? (double)n / dt : 0;
  *cpu_s = n ? dc / (double)n : 0;
  return 0;
}

int bench_serve(int argc, char **argv) {
  serve_bench b = {.split = "all", .batch = 1, .credit = 8, .prefetch = 4, .epochs = 3};
  int64_t batch = 1, credit = 8, prefetch = 4, epochs = 3, read_threads = 0, max_open = 0;
  const char *transport = "tcp";
  cli_opt opts[] = {
      {"split", CLI_STR, &b.split, "NAME", "split to serve (default all)", 0, 0},
      {"batch", CLI_INT, &batch, "B", "samples per chunk, 1..4096 (default 1)", 0, 0},
      {"credit", CLI_INT, &credit, "K", "consumer credit, chunks in flight, 1..1024 (default 8)", 0, 0},
      {"prefetch", CLI_INT, &prefetch, "P", "chunks read ahead, 1..1024 (default 4)", 0, 0},
      {"read-threads", CLI_INT, &read_threads, "N", "serve's reader threads, 0..64 (default 0: min(4, cores), as coemu serve)", 0, 0},
      {"max-open", CLI_INT, &max_open, "N", "shard files serve keeps open (and mapped) at once, 0..100000 (default 0: 64, as coemu serve)", 0, 0},
      {"copy-rows", CLI_FLAG, &b.copy_rows, NULL, "copy every row with pread, never send from the mapped shard file (as coemu serve --copy-rows)", 0, 0},
      {"epochs", CLI_INT, &epochs, "E", "epochs, 2..1000; the first warms up, untimed (default 3)", 0, 0},
      {"transport", CLI_STR, &transport, "tcp|ipc", "endpoint kind (default tcp)", 0, 0},
      {"python", CLI_STR, &b.python, "DIR",
       "also time the Python client, coemu_stream.py from DIR (e.g. pipeline/stream)", 0, 0},
      {"trainer", CLI_FLAG, &b.trainer, NULL,
       "also time the trainer's reader (coemu train's in-process dataset reader, normalised batches)", 0, 0},
      {0}};
  int npos = 0;
  char **pos = NULL;
  const cli_command spec = {"bench serve", "DATASET [options]",
                            "What coemu serve delivers from a dataset (page cache), to the C "
                            "consumer and the Python client, beside bench stream in the same run.",
                            opts, 1, 1};
  cli_status r = cli_run_parse(&spec, argc, argv, &npos, &pos);
  if (r != CLI_OK) return cli_exit(r);
  b.dir = pos[0];
  free(pos); /* the strings are argv's */
  const char *dflt = "0: the default";
  const cli_range range[] = {{"--batch", batch, 1, 4096, NULL},
                             {"--credit", credit, 1, 1024, NULL},
                             {"--prefetch", prefetch, 1, 1024, NULL},
                             {"--epochs", epochs, 2, 1000, "the first is not timed"},
                             {"--read-threads", read_threads, 0, SERVE_MAX_READ_THREADS, dflt},
                             {"--max-open", max_open, 0, 100000, dflt}};
  int bad = cli_check_ranges("bench serve", range, sizeof range / sizeof range[0]);
  if (bad) return bad;
  if (strcmp(transport, "tcp") && strcmp(transport, "ipc"))
    return cli_usage_fail("bench serve", "--transport %s: expected tcp or ipc", transport);
  b.batch = (int)batch;
  b.credit = (int)credit;
  b.prefetch = (int)prefetch;
  b.epochs = (int)epochs;
  b.max_open = (int)max_open;
  b.read_threads = read_threads ? (int)read_threads : serve_default_read_threads();
  char ep[256];
  if (!strcmp(transport, "tcp"))
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", 20000 + (int)(getpid() % 20000));
  else
    snprintf(ep, sizeof ep, "ipc:///tmp/coemu-bench-serve-%d.sock", (int)getpid());

  /* the sample shape, for the in-memory comparison */
  serve_opts so = {.dataset_dir = b.dir, .split = b.split, .seed = 1, .world = 1,
                   .batch = b.batch, .prefetch = 1, .drop_last = 1,
                   .unfinished_hint = UNFINISHED_HINT};
  serve_source *probe;
  if (serve_open(&so, &probe) < 0) return cli_fail("bench serve");
  uint32_t in_shape[4], out_shape[3];
  serve_shapes(probe, in_shape, out_shape);
  uint64_t per_epoch = serve_samples_per_rank(probe);
  serve_close(probe);
  if (per_epoch == 0) {
    ce_err("bench serve: %s: split %s has no full batch of %d samples", b.dir, b.split, b.batch);
    return cli_fail("bench serve");
  }
  double mb = 4.0 * ((double)in_shape[0] * in_shape[1] * in_shape[2] * in_shape[3] +
                     (double)out_shape[0] * out_shape[1] * out_shape[2]) / 1e6;

  double gbs, sps, mem_gbs, mem_sps, cpu_gb, mem_cpu_gb;
  if (run_c(&b, ep, &gbs, &sps, &cpu_gb) < 0) return cli_fail("bench serve");
  printf("serve c %s sample_MB %.2f samples_per_epoch %llu batch %d read_threads %d GB/s %.2f "
         "samples/s %.0f cpu_s_per_GB %.2f rows mapped %llu copied %llu hdf5 %llu\n",
         transport, mb, (unsigned long long)per_epoch, b.batch, b.read_threads, gbs, sps, cpu_gb,
         (unsigned long long)b.rows_mapped, (unsigned long long)b.rows_copied,
         (unsigned long long)b.rows_hdf5);
  fflush(stdout);
  uint64_t mem_samples = per_epoch * (uint64_t)(b.epochs - 1);
  if (mem_samples < 64) mem_samples = 64;
  if (bench_stream_rate(ep, (int)in_shape[1], (int)out_shape[0], mem_samples, b.credit, &mem_gbs,
                        &mem_sps, &mem_cpu_gb) < 0)
    return cli_fail("bench serve");
  printf("serve stream_in_memory %s sample_MB %.2f GB/s %.2f samples/s %.0f cpu_s_per_GB %.2f "
         "(serve c / in memory %.0f%%, CPU per byte in memory / serve c %.0f%%)\n",
         transport, mb, mem_gbs, mem_sps, mem_cpu_gb, 100 * gbs / mem_gbs,
         100 * mem_cpu_gb / cpu_gb);
  fflush(stdout);
  if (b.python) {
    double pg, ps, pcpu;
    if (run_python(&b, ep, &pg, &ps, &pcpu) < 0) return cli_fail("bench serve");
    printf("serve python %s sample_MB %.2f batch %d GB/s %.2f samples/s %.0f "
           "client_cpu_s_per_GB %.2f\n", transport, mb, b.batch, pg, ps, pcpu);
  }
  if (b.trainer) {
    double ts = 0, tc = 0;
    if (run_trainer(&b, &ts, &tc) < 0) return cli_fail("bench serve");
    printf("serve trainer_reader sample_MB %.2f batch %d samples/s %.0f ms_per_sample %.4f "
           "cpu_ms_per_sample %.4f\n", mb, b.batch, ts, ts > 0 ? 1e3 / ts : 0, 1e3 * tc);
  }
  if (!strcmp(transport, "ipc")) unlink(ep + 6);
  return 0;
}
