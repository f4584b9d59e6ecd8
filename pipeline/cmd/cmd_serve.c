/* cmd_serve.c - `coemu serve DATASET`: stream a dataset to trainer ranks;
 * `coemu serve --generate JOB`: stream samples made on the fly (MPI producer
 * ranks: the producer of coemu generate behind pipeline/serve/gensource.h). */
#include <math.h>
#include <mpi.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cli.h"
#include "common/error.h"
#include "common/progress.h"
#include "pipeline/cmd/commands.h"
#include "pipeline/generate/producer.h"
#include "pipeline/job/job.h"
#include "pipeline/mpi/mpi_fatal.h"
#include "pipeline/serve/gensource.h"
#include "pipeline/serve/serve.h"
#include "pipeline/stream/stream_security.h"
#include "pipeline/stream/stream_server.h"

/* A refused CURVE handshake, from the authentication thread: the first
 * REFUSED_LOGGED are named in the log (a hostile peer cannot fill the disk),
 * the rest counted in the last line. */
#define REFUSED_LOGGED 100
static _Atomic unsigned refused_seen;
static void on_refused(void *ctx, const char *address, const char *public_key) {
  const char *dir = ctx;
  unsigned k = atomic_fetch_add(&refused_seen, 1) + 1;
  if (k <= REFUSED_LOGGED)
    fprintf(stderr, "serve: refused a CURVE handshake from %s: public key %s is not in %s%s\n",
            address, public_key, dir,
            k == REFUSED_LOGGED ? " (later refusals are only counted)" : "");
}

static volatile sig_atomic_t serve_stop_sig;
static volatile int serve_stop;
static void on_signal(int sig) {
  serve_stop_sig = sig;
  serve_stop = 1;
}

/* stream_server_opts.log: what the server's operator should read (errors
 * sent to consumers, a live stream's job stopping and coming back). */
static void on_log(void *ctx, const char *line) {
  (void)ctx;
  fprintf(stderr, "serve: %s\n", line);
}

/* stream_server_opts.repeat: the first HELLO that asks again for an epoch
 * its rank already read whole. The usual cause is a trainer's mistake
 * that nothing else would show (the same order every epoch); a second
 * trainer reading the same server does it by design, hence a warning. */
static void on_repeat(void *ctx, const stream_consumer *c, uint32_t epoch) {
  (void)ctx;
  fprintf(stderr, "serve: warning: rank %u asks for epoch %u again from its start, after it "
                  "read that whole epoch from this server: the same samples in the same order. A torch "
                  "DataLoader with workers (persistent_workers=False) does this every epoch "
                  "unless StreamDataset.set_epoch(epoch) is called before each one "
                  "(docs/python.md); a new trainer reading this server may ignore this. Later "
                  "repeats are counted on the end line\n", (unsigned)c->rank, (unsigned)epoch);
}

typedef struct {
  const char *endpoint, *split, *curve_secret, *curve_auth;
  int64_t ranks, batch, epochs, credit, maxcons;
  double heartbeat, timeout, idle_exit, orphan_exit;
  int live, no_shm;
} server_args;

/* Serve src until stopped; prints the start and end lines. 0 or -1. */
static int run_server(const char *what, serve_source *src, const server_args *a) {
  char info[STREAM_INFO_MAX + 1];
  if (serve_info_json(src, (uint32_t)a->epochs, info, sizeof info) < 0) return -1;
  stream_server_opts o = {.info = info, .endpoint = a->endpoint, .dataset_id = serve_dataset_id(src),
                          .samples_per_epoch = serve_samples_per_rank(src),
                          .max_epochs = (uint32_t)a->epochs, .max_credit = (uint32_t)a->credit,
                          .heartbeat_s = a->heartbeat, .timeout_s = a->timeout,
                          .idle_exit_s = a->idle_exit, .world = (uint32_t)a->ranks,
                          .max_consumers = (uint32_t)a->maxcons, .leave = serve_leave,
                          .repeat = on_repeat, .log = on_log,
                          /* live: the job making the dataset may stop (docs/faults.md) */
                          .producing = a->live ? serve_live_producing : NULL,
                          .orphan_exit_s = a->orphan_exit,
                          .curve_secret_key_file = a->curve_secret,
                          .curve_authorized_dir = a->curve_auth, .curve_refused = on_refused,
                          .curve_refused_ctx = (void *)a->curve_auth};
  if (!a->no_shm) { /* a chunk's rows, for consumers on this host that ask */
    uint32_t ins[4], outs[3];
    serve_shapes(src, ins, outs);
    size_t inb = 4, outb = 4;
    for (int i = 0; i < 4; i++) inb *= ins[i];
    for (int i = 0; i < 3; i++) outb *= outs[i];
    o.shm_chunk_bytes = (size_t)a->batch * (inb + outb);
  }
  stream_server *srv;
  CE_TRY(stream_server_create(&o, serve_chunk, src, &srv));
  char idle_buf[64];
  if (a->idle_exit > 0)
    snprintf(idle_buf, sizeof idle_buf, "after %g s without consumers", a->idle_exit);
  else
    snprintf(idle_buf, sizeof idle_buf, "never");
  const order_plan *op = serve_order(src);
  char order_buf[96] = "order exact";
  if (op->mode == ORDER_SHARDS)
    snprintf(order_buf, sizeof order_buf, "order shards (K %lld, buffer %lld, %lld shards)",
             (long long)op->shards, (long long)op->buffer, (long long)op->ngroups);
  fprintf(stderr,
          "serve: %s%s split '%s': %llu samples, %llu per rank per epoch for %lld rank%s, batch %lld, "
          "%s, dataset id %016llx, listening on %s%s; idle exit %s\n",
          what, a->live ? " (live)" : "", a->split, (unsigned long long)serve_split_size(src),
          (unsigned long long)serve_samples_per_rank(src), (long long)a->ranks,
          a->ranks == 1 ? "" : "s", (long long)a->batch,
          order_buf, (unsigned long long)serve_dataset_id(src), a->endpoint,
          a->curve_secret ? " (CURVE)" : "", idle_buf);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal; /* no SA_RESTART: a wait is interrupted; the loop sees the flag */
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  double t0 = ce_now();
  int rc = stream_server_run(srv, &serve_stop);
  stream_server_stats st;
  stream_server_get_stats(srv, &st);
  double el = ce_now() - t0;
  fprintf(stderr,
          "serve: sent %llu samples in %llu chunks (%.2f GB, %.2f GB/s over %.1f s); %llu hellos, "
          "%llu malformed and %llu unexpected messages dropped (%llu answered with RESET), %llu consumers dropped (%llu stalled, "
          "%llu superseded, %llu connections shut), %llu hellos refused, %llu CURVE handshakes refused\n",
          (unsigned long long)st.samples_sent, (unsigned long long)st.chunks_sent,
          (double)st.bytes_sent / 1e9, el > 0 ? (double)st.bytes_sent / 1e9 / el : 0, el,
          (unsigned long long)st.hellos, (unsigned long long)st.malformed,
          (unsigned long long)st.unexpected, (unsigned long long)st.resets,
          (unsigned long long)st.consumers_dropped,
          (unsigned long long)st.stalled, (unsigned long long)st.superseded,
          (unsigned long long)st.connections_shut,
          (unsigned long long)st.refused, (unsigned long long)st.curve_refused);
  /* why it ended: the exit status is 0 in every case (an unbounded server
   * ends by a signal or its idle exit as a matter of course) */
  if (st.end == STREAM_END_EPOCHS)
    fprintf(stderr, "serve: ended: every rank of %lld was sent its %lld epoch%s\n",
            (long long)a->ranks, (long long)a->epochs, a->epochs == 1 ? "" : "s");
  else if (st.end == STREAM_END_IDLE)
    fprintf(stderr, "serve: ended: idle exit, no consumer for %g s\n", a->idle_exit);
  else if (st.end == STREAM_END_ORPHANED)
    fprintf(stderr, "serve: ended: no coemu generate made the dataset for %g s "
                    "(--live-orphan-exit)\n", a->orphan_exit);
  else
    fprintf(stderr, "serve: ended: stopped by %s\n",
            serve_stop_sig == SIGINT ? "SIGINT" : serve_stop_sig == SIGTERM ? "SIGTERM" : "a signal");
  if (a->epochs > 0 && st.end != STREAM_END_EPOCHS)
    fprintf(stderr, "serve: ranks sent all their epochs: %u of %lld; a rerun serves the rest "
                    "(consumers resume at their epoch and position)\n", st.ranks_done,
            (long long)a->ranks);
  if (st.repeated)
    fprintf(stderr, "serve: %llu HELLO%s asked for an epoch again from its start, after its rank "
                    "had read that whole epoch (the warning above)\n",
            (unsigned long long)st.repeated, st.repeated == 1 ? "" : "s");
  if (st.errors_sent)
    fprintf(stderr, "serve: %llu error%s sent to consumers (each distinct one logged above)\n",
            (unsigned long long)st.errors_sent, st.errors_sent == 1 ? "" : "s");
  if (st.shm_consumers || st.shm_refused)
    fprintf(stderr, "serve: shared memory: %llu sessions mapped their segment, %llu chunks sent "
                    "through it, %llu sessions took frames instead\n",
            (unsigned long long)st.shm_consumers, (unsigned long long)st.shm_chunks,
            (unsigned long long)st.shm_refused);
  int64_t cubes = 0, loads = 0;
  double cube_s = 0, load_s = 0;
  if (serve_rebuild_counters(src, &cubes, &cube_s, &load_s, &loads) == 0 && cubes > 0)
    fprintf(stderr, "serve: images-only: %lld input cubes rebuilt, %.2f ms CPU each (sampling; the "
                    "producer bound is cores / that); %lld model loads, %.1f s\n", (long long)cubes,
            1e3 * cube_s / (double)cubes, (long long)loads, load_s);
  uint64_t direct = 0, hdf5 = 0, mapped = 0;
  serve_read_counts(src, &direct, &hdf5, &mapped);
  if (direct + hdf5 > 0)
    fprintf(stderr, "serve: rows read: %llu samples sent from the mapped shard files (no copy), "
                    "%llu copied with pread, %llu through HDF5\n", (unsigned long long)mapped,
            (unsigned long long)(direct - mapped), (unsigned long long)hdf5);
  stream_server_destroy(srv);
  return rc;
}

/* counters of the producer's model cache, for gensource */
static void producer_counters(void *ctx, int64_t *loads, int64_t *hits, size_t *peak) {
  const generate_producer *p = ctx;
  producer_model_counters(p->ctx, loads, hits, peak);
}

static int sample_fn_adapter(void *ctx, int64_t model, int64_t view, float *inputs, float *targets) {
  const generate_producer *p = ctx;
  double q[4];
  return p->sample(p->ctx, model, view, inputs, targets, q);
}

/* serve's options as given (NULL / -1: not given; with --generate, the
 * job's stream section with mode generate gives them, then the defaults) */
typedef struct {
  const char *endpoint, *split, *curve_secret, *curve_auth, *order, *stats_path, *gen_out,
      *pilot_out;
  int64_t ranks, batch, epochs, seed, prefetch, read_threads, credit, maxcons, order_shards,
      order_buffer, pilot_n;
  int pad, live, generate, fresh, cache_given, copy_rows, no_shm;
  double model_cache_mb, producer_timeout, heartbeat, timeout, idle_exit, orphan_exit;
} serve_cli;

/* `coemu serve --generate JOB`: every rank makes samples, rank 0 serves. */
static int serve_generate(const job *jp, serve_opts *so, const server_args *a,
                          const serve_cli *c) {
  int provided = 0;
  MPI_Init_thread(NULL, NULL, MPI_THREAD_SERIALIZED, &provided);
  mpi_fatal_init("serve");
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  const job *j = jp;
  const char *job_path = j->path;
  int rc = provided < MPI_THREAD_SERIALIZED
               ? ce_err("the MPI library gives thread level %d, serve --generate needs "
                        "MPI_THREAD_SERIALIZED (%d)", provided, MPI_THREAD_SERIALIZED)
               : 0;
  mpi_agree(rc);
  /* the producer of coemu generate; synthetic models under OUT/models */
  producer_set_model_cache((size_t)(c->model_cache_mb * 1048576.0));
  generate_producer p;
  memset(&p, 0, sizeof p);
  mpi_agree(producer_open(j, c->gen_out ? c->gen_out : j->out_dir, &p));
  gensrc_opts go = {.j = j, .split = so->split, .fresh_views = c->fresh, .stats_dataset = c->stats_path,
                    .timeout_s = c->producer_timeout, .sample = sample_fn_adapter,
                    .counters = producer_counters, .ctx = &p, .comm = MPI_COMM_WORLD};
  int ret = 0;
  /* the pilot pass (every rank), before any rank serves or waits for work */
  gensrc_pilot pilot;
  if (c->pilot_n > 0) {
    mpi_agree(rank == 0 ? stream_endpoint_probe(c->endpoint) : 0); /* busy: say so before the pass */
    if (gensrc_pilot_run(&go, c->pilot_n, c->pilot_out, 0, &pilot) < 0) {
      if (p.close) p.close(p.ctx);
      MPI_Finalize();
      return 1; /* the failing rank printed its error */
    }
    go.pilot = &pilot;
    if (rank == 0)
      fprintf(stderr,
              "serve: pilot pass: %s; %lld samples made on %d ranks in %.2f s (%.1f ms of rank time "
              "per pilot sample), %lld used, %lld outliers dropped; statistics id %016llx%s%s\n",
              pilot.subset, (long long)pilot.made, pilot.ranks, pilot.seconds,
              1e3 * pilot.seconds * pilot.ranks / (double)pilot.samples, (long long)pilot.used,
              (long long)pilot.outliers, (unsigned long long)serve_norm_id(&pilot.norm),
              c->pilot_out ? ", written to " : "", c->pilot_out ? c->pilot_out : "");
  }
  if (rank > 0) {
    /* mpirun forwards SIGINT / SIGTERM to every rank: rank 0 stops serving
     * and then tells the workers to stop, so they wait for that */
    signal(SIGINT, SIG_IGN);
    signal(SIGTERM, SIG_IGN);
    if (gensrc_worker(&go) < 0) ret = 1; /* the error went to rank 0, and on to the consumer */
  } else {
    gensrc *g = NULL;
    serve_source *src = NULL;
    rc = gensrc_open(&go, &g);
    if (rc == 0) {
      so->external = gensrc_external(g);
      rc = serve_open(so, &src);
    }
    if (rc == 0) rc = run_server(job_path, src, a);
    if (rc < 0) ret = cli_fail("serve");
    serve_close(src);
    gensrc_stats st = {0};
    if (g) gensrc_close(g, &st);
    if (g && st.ranks < 0) {
      fprintf(stderr, "serve: a producer rank stopped answering: aborting the others\n");
      MPI_Abort(MPI_COMM_WORLD, 1);
    }
    if (g && st.samples > 0)
      fprintf(stderr,
              "serve: on the fly: %d producer ranks made %lld samples, %.2f ms of producer time "
              "per sample (producer bound %.1f samples/s on %d ranks); model cache: %lld loads, "
              "%lld hits, peak %.1f MB of %.0f MB per rank; %lld samples made ahead of an "
              "unfinished chunk\n",
              st.ranks, (long long)st.samples, 1e3 * st.seconds / (double)st.samples,
              st.seconds > 0 ? (double)st.ranks * (double)st.samples / st.seconds : 0, st.ranks,
              (long long)st.loads, (long long)st.hits, (double)st.peak_bytes / 1048576.0, c->model_cache_mb,
              (long long)st.ahead);
  }
  if (p.close) p.close(p.ctx);
  MPI_Finalize();
  return ret;
}

static int cmd_serve_run(char **pos, job *jp, serve_cli *c);

int cmd_serve(int argc, char **argv) {
  serve_cli c = {.order = "exact", .ranks = -1, .batch = -1, .epochs = -1, .seed = -1,
                 .prefetch = 4, .credit = -1, .model_cache_mb = -1, .producer_timeout = 600,
                 .pilot_n = -1,
                 .heartbeat = 1.0, .timeout = 10.0, .idle_exit = -1};
  cli_opt opts[] = {
      {"endpoint", CLI_STR, &c.endpoint, "URL", "where to listen (default tcp://127.0.0.1:5555; ipc://PATH)", 0, 0},
      {"ranks", CLI_INT, &c.ranks, "W", "number of trainer ranks (default 1)", 0, 0},
      {"split", CLI_STR, &c.split, "NAME", "train (default), validation, test or all", 0, 0},
      {"batch", CLI_INT, &c.batch, "B", "samples per chunk (default 16)", 0, 0},
      {"epochs", CLI_INT, &c.epochs, "E", "stop after E epochs for every rank (default: serve until stopped)", 0, 0},
      {"seed", CLI_INT64, &c.seed, "S", "shuffle seed (default 1234)", 0, 0},
      {"order", CLI_STR, &c.order, "MODE", "epoch order: exact (default: a uniform shuffle) or shards (shard-aware, for parallel file systems)", 0, 0},
      {"order-shards", CLI_INT, &c.order_shards, "K", "order shards: shards read at once (default 8)", 0, 0},
      {"order-buffer", CLI_INT, &c.order_buffer, "B", "order shards: samples shuffled together (default 4 x samples per shard)", 0, 0},
      {"pad", CLI_FLAG, &c.pad, NULL, "pad the last batch by wrapping around (default: drop the remainder)", 0, 0},
      {"live", CLI_FLAG, &c.live, NULL, "serve a dataset coemu generate is still making (shards as they finish)", 0, 0},
      {"generate", CLI_FLAG, &c.generate, NULL, "the argument is a JOB file: make its samples on the fly on every MPI rank, store nothing (docs/onthefly.md)", 0, 0},
      {"fresh-views", CLI_FLAG, &c.fresh, NULL, "generate: new directions for training models every epoch (e*D + d); validation and test fixed", 0, 0},
      {"stats", CLI_STR, &c.stats_path, "PILOT", "generate: normalise with the /stats of this pilot dataset (coemu generate + coemu stats) or of a file --pilot-out wrote", 0, 0},
      {"pilot", CLI_INT, &c.pilot_n, "N", "generate: first run a pilot pass: exact statistics of N training samples made on the fly (directions 0, 1, ... of every training model in turn), and normalise with them (docs/onthefly.md)", 0, 0},
      {"pilot-out", CLI_STR, &c.pilot_out, "FILE", "generate: write the pilot pass's /stats to this HDF5 file (reuse with --stats FILE)", 0, 0},
      {"model-cache", CLI_DOUBLE, &c.model_cache_mb, "MB", "generate: models kept in memory per producer rank, in MB (default 1024)", 0, 0},
      {"producer-timeout", CLI_DOUBLE, &c.producer_timeout, "S", "generate: a producer rank silent this long fails the stream [s] (default 600)", 0, 0},
      {"out", CLI_STR, &c.gen_out, "DIR", "generate: where synthetic models are written (default: the job's output.directory)", 0, 0},
      {"prefetch", CLI_INT, &c.prefetch, "K", "chunks read ahead per rank, on into the next epoch (default 4)", 0, 0},
      {"read-threads", CLI_INT, &c.read_threads, "N", "threads reading and checking samples (default min(4, cores); --live: 1)", 0, 0},
      {"copy-rows", CLI_FLAG, &c.copy_rows, NULL, "copy every row out of the shard files (pread) instead of sending it from the mapped file (docs/stream-protocol.md, \"Zero copy\")", 0, 0},
      {"no-shm", CLI_FLAG, &c.no_shm, NULL, "never offer consumers on this host their rows through shared memory: frames on the socket only (docs/stream-protocol.md, \"Shared memory\")", 0, 0},
      {"max-credit", CLI_INT, &c.credit, "K", "most chunks in flight per rank (default 8)", 0, 0},
      {"heartbeat", CLI_DOUBLE, &c.heartbeat, "S", "heartbeat interval [s] (default 1)", 0, 0},
      {"timeout", CLI_DOUBLE, &c.timeout, "S", "drop a rank silent this long [s] (default 10)", 0, 0},
      {"idle-exit", CLI_DOUBLE, &c.idle_exit, "S", "exit after S seconds without any consumer (default: never; 600 with --epochs; 0: never)", 0, 0},
      {"live-orphan-exit", CLI_DOUBLE, &c.orphan_exit, "S", "live: once no coemu generate has made the dataset for S seconds (its lock free, shards missing), send the consumers an error and exit (default 0: they wait for the job's rerun, told that it stopped)", 0, 0},
      {"max-consumers", CLI_INT, &c.maxcons, "N", "connections served at once (default 2 x ranks + 8)", 0, 0},
      {"curve-secret", CLI_STR, &c.curve_secret, "FILE", "producer key pair (coemu keygen); required off loopback", 0, 0},
      {"curve-authorized", CLI_STR, &c.curve_auth, "DIR", "directory of authorised consumer public keys (*.key)", 0, 0},
      {0}};
  const cli_command spec = {
      "serve", "(DATASET | --generate JOB) [options]",
      "Stream a dataset's split to W trainer ranks over ZeroMQ (docs/stream-protocol.md):\n"
      "a deterministic order per (seed, epoch) (--order exact: a uniform shuffle; shards:\n"
      "shard-aware), disjoint samples per rank, equal batch counts, credit-based flow\n"
      "control, resume from (epoch, position), normalisation with the dataset's /stats on\n"
      "request. With --generate (under mpirun: every rank makes samples, rank 0 serves)\n"
      "the samples of JOB are made on the fly, in the order serve would use on the dataset\n"
      "coemu generate JOB makes, byte for byte the same, and nothing is stored.",
      opts, 1, 1};
  int np;
  char **pos;
  cli_status r = cli_run_parse(&spec, argc, argv, &np, &pos);
  if (r != CLI_OK) return cli_exit(r);
  /* -1 stands for "not given" below (the job's stream section, then the
   * defaults, fill those in): a negative value typed on the command line
   * must not pass for it (--epochs -5 served for ever, --batch -1 used 16) */
  const int64_t *sentinel[] = {&c.ranks, &c.batch, &c.epochs, &c.seed, &c.credit};
  for (size_t i = 0; i < sizeof sentinel / sizeof sentinel[0]; i++)
    if (*sentinel[i] < 0 && cli_given(opts, sentinel[i])) {
      free(pos);
      return cli_usage_fail("serve", "--%s %lld: expected >= 0", cli_find(opts, sentinel[i])->name,
                            (long long)*sentinel[i]);
    }
  /* the real options likewise: a value out of range is refused, never
   * replaced by a default (--idle-exit -5 said "idle exit after 600 s",
   * --timeout 0 and --heartbeat -1 took 10 s and 1 s); --idle-exit and
   * --model-cache are -1 when not given */
  const cli_drange real[] = {
      {"--heartbeat", c.heartbeat, 0, HUGE_VAL, 1, NULL},
      {"--timeout", c.timeout, 0, HUGE_VAL, 1, NULL},
      {"--idle-exit", cli_given(opts, &c.idle_exit) ? c.idle_exit : 0, 0, HUGE_VAL, 0, "0: never"},
      {"--model-cache", cli_given(opts, &c.model_cache_mb) ? c.model_cache_mb : 1, 0, HUGE_VAL, 1,
       NULL},
      {"--producer-timeout", c.producer_timeout, 0, HUGE_VAL, 1, NULL},
      {"--live-orphan-exit", c.orphan_exit, 0, HUGE_VAL, 0, "0: wait for the job's rerun"}};
  int bad = cli_check_double_ranges("serve", real, sizeof real / sizeof real[0]);
  if (bad) {
    free(pos);
    return bad;
  }
  job j;
  memset(&j, 0, sizeof j);
  if (c.generate && job_load(pos[0], &j) < 0) {
    free(pos);
    return cli_fail("serve");
  }
  if (c.generate && j.has_stream && j.stream_generate) { /* the job's stream section */
    if (!c.endpoint) c.endpoint = j.stream_endpoint;
    if (!c.split) c.split = j.stream_split;
    if (c.ranks < 0) c.ranks = j.stream_ranks;
    if (c.batch < 0) c.batch = j.stream_batch;
    if (c.epochs < 0) c.epochs = j.stream_epochs;
    if (c.credit < 0) c.credit = j.stream_credits;
    if (c.seed < 0) c.seed = (int64_t)j.seed; /* as the live server of the job */
    if (!c.curve_secret && *j.stream_curve_secret) c.curve_secret = j.stream_curve_secret;
    if (!c.curve_auth && *j.stream_curve_authorized) c.curve_auth = j.stream_curve_authorized;
    if (j.stream_fresh_views) c.fresh = 1;
    if (c.model_cache_mb < 0) c.model_cache_mb = (double)j.stream_model_cache_mb;
    /* stream.stats.pilot, unless the command line names the normalisation */
    if (c.pilot_n < 0 && !c.stats_path && j.stream_pilot_samples > 0) {
      c.pilot_n = j.stream_pilot_samples;
      if (!c.pilot_out && *j.stream_pilot_out) c.pilot_out = j.stream_pilot_out;
    }
  }
  if (!c.generate) {
    /* a stored dataset is served by one process (more readers:
     * --read-threads); under a launcher every process would be a server of
     * its own on the same endpoint */
    const int world = cli_launcher_size();
    if (world > 1) {
      job_free(&j);
      free(pos);
      if (cli_launcher_rank() == 0)
        return cli_usage_fail("serve", "serving a stored dataset is one process (%d ranks "
                              "started): run it without mpirun/srun (more readers: "
                              "--read-threads N); MPI ranks are for --generate",
                              world);
      return CLI_EXIT_USAGE;
    }
  }
  if (!c.endpoint) c.endpoint = "tcp://127.0.0.1:5555";
  if (!c.split) c.split = "train";
  int split_id;
  if (job_split_parse(c.split, &split_id) < 0) { /* before anything is opened: a usage error */
    job_free(&j);
    free(pos);
    return cli_usage_fail("serve", "--split: %s", ce_err_msg());
  }
  if (c.ranks < 0) c.ranks = 1;
  if (c.batch < 0) c.batch = 16;
  if (c.epochs < 0) c.epochs = 0;
  if (c.credit < 0) c.credit = 8;
  if (c.seed < 0) c.seed = 1234;
  c.cache_given = c.model_cache_mb >= 0 || (c.generate && j.has_stream && j.stream_generate);
  if (c.model_cache_mb < 0) c.model_cache_mb = 1024;
  int rc = cmd_serve_run(pos, &j, &c);
  job_free(&j);
  free(pos);
  return rc;
}

static int cmd_serve_run(char **pos, job *jp, serve_cli *c) {
  if (stream_endpoint_check(c->endpoint) < 0) return cli_usage_fail("serve", "--endpoint: %s", ce_err_msg());
  if (!stream_endpoint_is_local(c->endpoint) && !c->curve_secret) {
    return cli_usage_fail("serve",
                          "endpoint %s is reachable from other machines: give --curve-secret and "
                          "--curve-authorized (coemu keygen), or use tcp://127.0.0.1:PORT or ipc://",
                          c->endpoint);
  }
  /* each bound with its option, so the message names the one given wrong */
  const char *dflt = "0: the default";
  const cli_range range[] = {{"--ranks", c->ranks, 1, 65535, NULL},
                             {"--batch", c->batch, 1, 4096, NULL},
                             {"--epochs", c->epochs, 0, UINT32_MAX, "0: until stopped"},
                             {"--prefetch", c->prefetch, 1, 64, NULL},
                             {"--max-credit", c->credit, 1, 1024, NULL},
                             {"--max-consumers", c->maxcons, 0, 1000000, dflt},
                             {"--read-threads", c->read_threads, 0, SERVE_MAX_READ_THREADS, dflt},
                             {"--order-shards", c->order_shards, 0, ORDER_MAX_SHARDS, dflt},
                             {"--order-buffer", c->order_buffer, 0, CLI_NO_MAX, dflt}};
  int bad = cli_check_ranges("serve", range, sizeof range / sizeof range[0]);
  if (bad) return bad;
  int omode;
  if (order_mode_parse(c->order, &omode) < 0) {
    return cli_usage_fail("serve", "--order: %s", ce_err_msg());
  }
  if ((c->order_shards || c->order_buffer) && omode != ORDER_SHARDS) {
    return cli_usage_fail("serve", "--order-shards and --order-buffer go with --order shards");
  }
  if (!c->generate && (c->fresh || c->stats_path || c->gen_out || c->cache_given ||
                       c->producer_timeout != 600 || c->pilot_n != -1 || c->pilot_out)) {
    return cli_usage_fail("serve", "--fresh-views, --stats, --pilot, --pilot-out, --model-cache, "
                                   "--producer-timeout and --out go with --generate");
  }
  if (c->generate && c->pilot_n != -1) {
    if (c->stats_path)
      return cli_usage_fail("serve", "--stats and --pilot both name the normalisation: give one");
    int64_t train = job_train_samples(jp);
    if (train < 0) return cli_fail("serve");
    if (c->pilot_n < 1 || c->pilot_n > train)
      return cli_usage_fail("serve", "--pilot %lld: expected 1..%lld, the samples of %s's training "
                                     "split (%lld training models x %lld directions)",
                            (long long)c->pilot_n, (long long)train, jp->path,
                            (long long)(train / jp->directions), (long long)jp->directions);
  }
  if (c->pilot_out && c->pilot_n == -1)
    return cli_usage_fail("serve", "--pilot-out writes the statistics of a pilot pass: give --pilot N");
  if (c->orphan_exit > 0 && !c->live)
    return cli_usage_fail("serve", "--live-orphan-exit goes with --live (a dataset coemu generate "
                                   "is making)");
  if (c->generate && c->live) {
    return cli_usage_fail("serve", "--live serves a dataset being made; --generate makes the samples itself: not both");
  }
  /* a consumer that stops mid-epoch must not keep an --epochs server for ever */
  if (c->idle_exit < 0) c->idle_exit = c->epochs > 0 ? 600 : 0;
  serve_opts so = {.dataset_dir = pos[0], .split = c->split, .seed = (uint64_t)c->seed,
                   .world = (int)c->ranks, .batch = (int)c->batch, .drop_last = !c->pad,
                   .prefetch = (int)c->prefetch, .epochs = (uint32_t)c->epochs,
                   .live = c->live, .read_threads = (int)c->read_threads, .copy_rows = c->copy_rows,
                   .row_views = 1,
                   .order = {.mode = omode, .shards = c->order_shards, .buffer = c->order_buffer}};
  server_args a = {c->endpoint, c->split, c->curve_secret, c->curve_auth, c->ranks,
                   c->batch, c->epochs, c->credit, c->maxcons, c->heartbeat,
                   c->timeout, c->idle_exit, c->orphan_exit, c->live, c->no_shm};
  if (c->generate) {
    return serve_generate(jp, &so, &a, c);
  }
  serve_source *src;
  if (serve_open(&so, &src) < 0) {
    return cli_fail("serve");
  }
  int rc = run_server(pos[0], src, &a);
  serve_close(src);
  return rc < 0 ? cli_fail("serve") : 0;
}
