/* commands.h - entry points of the `coemu` subcommands and benchmarks. */
#ifndef COEMU_COMMANDS_H
#define COEMU_COMMANDS_H

#define COEMU_CMD(name, summary) int cmd_##name(int argc, char **argv);
#include "commands.def"
#undef COEMU_CMD

#define COEMU_BENCH(name, summary) int bench_##name(int argc, char **argv);
#include "benches.def"
#undef COEMU_BENCH

/* Print the current error message as "coemu CMD: error: MSG" (with the MPI
 * rank when running under MPI) and return the exit status 1. */
int cmd_fail(const char *cmd);

#endif
