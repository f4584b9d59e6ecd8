/* bench_stream.c - `coemu bench stream`: producer -> consumer throughput of
 * the coemu stream protocol (ROUTER/DEALER, credit, zero-copy sends, XXH64
 * on both sides) with COEmuNet-sized samples (3 x 64^3 inputs + 7 x 64^2
 * targets, float32: 3.26 MB), over tcp loopback and ipc. */
#include <pthread.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/cli.h"
#include "common/error.h"
#include "common/progress.h"
#include "pipeline/bench/benches.h"
#include "pipeline/stream/stream_client.h"
#include "pipeline/stream/stream_server.h"

typedef struct {
  int n;          /* cube edge */
  int nf;         /* channels */
  uint64_t samples;
  float *inputs, *targets;
  uint64_t *ids;
} bench_src;

static int bench_source(void *ctx, const stream_consumer *c, uint32_t epoch, uint64_t pos,
                        stream_chunk *out) {
  (void)c;
  (void)epoch;
  bench_src *b = ctx;
  if (pos >= b->samples) return 0;
  out->nsamples = 1;
  out->ids = &b->ids[pos % 64];
  out->inputs = b->inputs;
  out->targets = b->targets;
  out->in_shape[0] = 3;
  out->in_shape[1] = out->in_shape[2] = out->in_shape[3] = (uint32_t)b->n;
  out->out_shape[0] = (uint32_t)b->nf;
  out->out_shape[1] = out->out_shape[2] = (uint32_t)b->n;
  return 1;
}

static void *run_server(void *arg) {
  bench_server *b = arg;
  b->rc = stream_server_run(b->srv, &b->stop);
  return NULL;
}

void bench_server_start(bench_server *b, stream_server *srv) {
  b->srv = srv;
  b->stop = 0;
  b->rc = 0;
  pthread_create(&b->th, NULL, run_server, b);
}

void bench_server_stop(bench_server *b) {
  b->stop = 1;
  pthread_join(b->th, NULL);
  stream_server_destroy(b->srv);
}

double bench_cpu_s(void) {
  struct rusage u;
  getrusage(RUSAGE_SELF, &u);
  return (double)u.ru_utime.tv_sec + 1e-6 * (double)u.ru_utime.tv_usec +
         (double)u.ru_stime.tv_sec + 1e-6 * (double)u.ru_stime.tv_usec;
}

static int run_one(const char *endpoint, bench_src *src, int credit, double *gbs, double *sps,
                   uint64_t *realigned, double *cpu_gb) {
  if (src->samples < 16) return ce_err("bench stream: at least 16 samples");
  stream_server_opts so = {.endpoint = endpoint, .dataset_id = 1, .samples_per_epoch = src->samples,
                           .max_epochs = 1, .max_credit = (uint32_t)credit, .world = 1};
  stream_server *srv;
  CE_TRY(stream_server_create(&so, bench_source, src, &srv));
  bench_server t;
  bench_server_start(&t, srv);
  stream_client_opts co = {.endpoint = endpoint, .rank = 0, .world = 1, .credit = (uint32_t)credit};
  stream_client *c;
  if (stream_client_open(&co, &c) < 0) {
    bench_server_stop(&t);
    return -1;
  }
  stream_chunk_view v;
  double t0 = 0, cpu0 = 0;
  uint64_t got = 0, bytes0 = 0;
  int r, rc = 0;
  while ((r = stream_client_next(c, &v)) == 1) {
    if (got == 8) { /* warm-up: connection set-up and first allocations */
      stream_client_stats st;
      stream_client_get_stats(c, &st);
      bytes0 = st.bytes;
      t0 = ce_now();
      cpu0 = bench_cpu_s();
    }
    got++;
  }
  double t1 = ce_now(), cpu1 = bench_cpu_s();
  if (r < 0) rc = -1;
  stream_client_stats st;
  stream_client_get_stats(c, &st);
  stream_client_close(c);
  bench_server_stop(&t);
  if (rc == 0 && got != src->samples)
    rc = ce_err("bench stream: received %llu samples, expected %llu", (unsigned long long)got,
                (unsigned long long)src->samples);
  *gbs = (double)(st.bytes - bytes0) / (t1 - t0) / 1e9;
  *sps = (double)(got - 8) / (t1 - t0);
  *cpu_gb = (cpu1 - cpu0) / ((double)(st.bytes - bytes0) / 1e9);
  *realigned = st.realigned;
  return rc;
}

/* Fill a source with samples of 3 x n^3 + nf x n^2 float32. */
static int src_make(bench_src *src, int n, int nf, uint64_t samples) {
  *src = (bench_src){.n = n, .nf = nf, .samples = samples};
  size_t nin = 3 * (size_t)n * n * n, nout = (size_t)nf * n * n;
  src->inputs = malloc(nin * 4);
  src->targets = malloc(nout * 4);
  src->ids = malloc(64 * 8);
  if (!src->inputs || !src->targets || !src->ids) {
    free(src->inputs), free(src->targets), free(src->ids);
    CE_FAIL("out of memory");
  }
  for (size_t i = 0; i < nin; i++) src->inputs[i] = (float)(i % 1000) * 0.001f;
  for (size_t i = 0; i < nout; i++) src->targets[i] = (float)(i % 777) * 0.01f;
  for (int i = 0; i < 64; i++) src->ids[i] = (uint64_t)i;
  return 0;
}

static void src_free(bench_src *src) {
  free(src->inputs);
  free(src->targets);
  free(src->ids);
}

int bench_stream_rate(const char *endpoint, int n, int nf, uint64_t samples, int credit,
                      double *gbs, double *sps, double *cpu_s_per_gb) {
  bench_src src;
  CE_TRY(src_make(&src, n, nf, samples));
  uint64_t realigned;
  int rc = run_one(endpoint, &src, credit, gbs, sps, &realigned, cpu_s_per_gb);
  src_free(&src);
  return rc;
}

int bench_stream(int argc, char **argv) {
  int64_t samples = 1500, credit = 8, n = 64, nf = 7;
  const char *transport = "all";
  cli_opt opts[] = {
      {"samples", CLI_INT, &samples, "N", "samples per transport, >= 16 (default 1500)", 0, 0},
      {"credit", CLI_INT, &credit, "K", "consumer credit, chunks in flight, 1..1024 (default 8)", 0, 0},
      {"n", CLI_INT, &n, "N", "cube edge, 1..512 (default 64)", 0, 0},
      {"channels", CLI_INT, &nf, "F", "image channels, 1..1024 (default 7)", 0, 0},
      {"transport", CLI_STR, &transport, "tcp|ipc|all", "which transports (default all)", 0, 0},
      {0}};
  const cli_command spec = {"bench stream", "[options]",
                            "Producer -> consumer throughput of the coemu stream protocol.", opts,
                            0, 0};
  cli_status r = cli_run_parse(&spec, argc, argv, NULL, NULL);
  if (r != CLI_OK) return cli_exit(r);
  const cli_range range[] = {{"--samples", samples, 16, CLI_NO_MAX, NULL},
                             {"--credit", credit, 1, 1024, NULL},
                             {"--n", n, 1, 512, NULL},
                             {"--channels", nf, 1, 1024, NULL}};
  int bad = cli_check_ranges("bench stream", range, sizeof range / sizeof range[0]);
  if (bad) return bad;
  if (strcmp(transport, "all") && strcmp(transport, "tcp") && strcmp(transport, "ipc"))
    return cli_usage_fail("bench stream", "--transport %s: expected tcp, ipc or all", transport);
  bench_src src;
  if (src_make(&src, (int)n, (int)nf, (uint64_t)samples) < 0) return cli_fail("bench stream");
  size_t nin = 3 * (size_t)n * n * n, nout = (size_t)nf * n * n;
  double mb = (double)(nin + nout) * 4 / 1e6;
  int rc = 0;
  char ipc[256];
  snprintf(ipc, sizeof ipc, "ipc:///tmp/coemu-bench-stream-%d.sock", (int)getpid());
  const char *eps[2][2] = {{"tcp", "tcp://127.0.0.1:0"}, {"ipc", ipc}};
  for (int i = 0; i < 2 && rc == 0; i++) {
    if (strcmp(transport, "all") && strcmp(transport, eps[i][0])) continue;
    char ep[256];
    snprintf(ep, sizeof ep, "%s", eps[i][1]);
    if (i == 0) snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", 20000 + (int)(getpid() % 20000));
    double gbs, sps, cpu_gb;
    uint64_t realigned;
    rc = run_one(ep, &src, (int)credit, &gbs, &sps, &realigned, &cpu_gb);
    if (rc == 0)
      printf("stream %s sample_MB %.2f samples %lld credit %lld GB/s %.2f samples/s %.0f "
             "realigned_frames %llu cpu_s_per_GB %.2f\n",
             eps[i][0], mb, (long long)samples, (long long)credit, gbs, sps,
             (unsigned long long)realigned, cpu_gb);
    if (i == 1) unlink(ipc + 6);
  }
  src_free(&src);
  return rc ? cli_fail("bench stream") : 0;
}
