/* cmd_bench.c - `coemu bench TARGET`: dispatch to the hot-path benchmarks.
 * Each benchmark prints its figures on stdout, one line per figure, in the
 * form "<target> <what> <value> <unit> ..." so docs/benchmarks.md can quote
 * them verbatim. */
#include <stdio.h>
#include <string.h>

#include "common/cli.h"
#include "pipeline/bench/benches.h"
#include "pipeline/cmd/commands.h"

typedef struct {
  const char *name, *summary;
  int (*run)(int, char **);
} bench;

static const bench benches[] = {
#define COEMU_BENCH(n, s) {#n, s, bench_##n},
#include "pipeline/bench/benches.def"
#undef COEMU_BENCH
    {NULL, NULL, NULL}};

static void usage(void) {
  printf("usage: coemu bench TARGET [options]   (coemu bench TARGET --help)\n\n"
         "Run a benchmark and print its figures.\n\ntargets:\n");
  for (const bench *b = benches; b->name; b++) printf("  %-10s %s\n", b->name, b->summary);
}

/* "synth, stream, ...": the targets, for messages. */
static const char *target_list(void) {
  static char list[256];
  size_t at = 0;
  list[0] = 0;
  for (const bench *b = benches; b->name && at < sizeof list; b++)
    at += (size_t)snprintf(list + at, sizeof list - at, "%s%s", b == benches ? "" : ", ", b->name);
  return list;
}

int cmd_bench(int argc, char **argv) {
  if (argc >= 1 && (!strcmp(argv[0], "--help") || !strcmp(argv[0], "-h"))) {
    usage();
    return CLI_EXIT_OK;
  }
  if (argc < 1) return cli_usage_fail("bench", "expected a TARGET: %s", target_list());
  if (argv[0][0] == '-')
    return cli_usage_fail("bench", "unknown option '%s' (options go after the TARGET: %s)",
                          argv[0], target_list());
  for (const bench *b = benches; b->name; b++)
    if (!strcmp(argv[0], b->name)) return b->run(argc - 1, argv + 1);
  return cli_usage_fail("bench", "unknown target '%s' (targets: %s)", argv[0], target_list());
}
