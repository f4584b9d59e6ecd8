/* benches.h - entry points of the `coemu bench` benchmarks, one per line of
 * benches.def, each `int bench_<name>(int argc, char **argv)` in
 * bench_<name>.c returning the process exit status. */
#ifndef COEMU_BENCHES_H
#define COEMU_BENCHES_H

#define COEMU_BENCH(name, summary) int bench_##name(int argc, char **argv);
#include "pipeline/bench/benches.def"
#undef COEMU_BENCH

#include <stdint.h>

/* The in-memory stream protocol (bench stream's core), for comparisons in
 * other benchmarks: `samples` samples of 3 x n^3 + nf x n^2 float32 from a
 * producer to one consumer on `endpoint`; GB/s and samples/s after warm-up. */
int bench_stream_rate(const char *endpoint, int n, int nf, uint64_t samples, int credit,
                      double *gbs, double *sps);

#endif
