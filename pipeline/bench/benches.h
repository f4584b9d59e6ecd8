/* benches.h - entry points of the `coemu bench` benchmarks, one per line of
 * benches.def, each `int bench_<name>(int argc, char **argv)` in
 * bench_<name>.c returning the process exit status. */
#ifndef COEMU_BENCHES_H
#define COEMU_BENCHES_H

#define COEMU_BENCH(name, summary) int bench_##name(int argc, char **argv);
#include "pipeline/bench/benches.def"
#undef COEMU_BENCH

#include <pthread.h>
#include <stdint.h>

#include "pipeline/stream/stream_server.h"

/* A stream server run on its own thread for the length of a benchmark. */
typedef struct {
  stream_server *srv;
  volatile int stop;
  int rc;
  pthread_t th;
} bench_server;

/* Run srv (created by the caller) on a new thread. */
void bench_server_start(bench_server *b, stream_server *srv);
/* Stop it, join the thread and destroy the server. */
void bench_server_stop(bench_server *b);

/* The in-memory stream protocol (bench stream's core), for comparisons in
 * other benchmarks: `samples` samples of 3 x n^3 + nf x n^2 float32 from a
 * producer to one consumer on `endpoint`; GB/s and samples/s after warm-up. */
int bench_stream_rate(const char *endpoint, int n, int nf, uint64_t samples, int credit,
                      double *gbs, double *sps, double *cpu_s_per_gb);

/* CPU seconds (user + system, all threads) this process has used so far:
 * CPU time per byte moved is what a loaded, shared machine does not
 * inflate, unlike wall-clock rates. */
double bench_cpu_s(void);

/* The host's float32 multiply-add rate in FLOP/s, measured (cpu_peak.c):
 * `threads` threads at once, each timing chains of FMAs on the widest
 * vectors the CPU runs (*lanes: 16 for AVX-512, 8 for AVX2, 1 scalar;
 * may be NULL), summed. ~0.1 s. */
double bench_cpu_peak(int threads, int *lanes);

#endif
