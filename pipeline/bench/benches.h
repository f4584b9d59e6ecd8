/* benches.h - entry points of the `coemu bench` benchmarks, one per line of
 * benches.def, each `int bench_<name>(int argc, char **argv)` in
 * bench_<name>.c returning the process exit status. */
#ifndef COEMU_BENCHES_H
#define COEMU_BENCHES_H

#define COEMU_BENCH(name, summary) int bench_##name(int argc, char **argv);
#include "pipeline/bench/benches.def"
#undef COEMU_BENCH

#endif
