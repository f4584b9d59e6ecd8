/* cmd_bench.c - `coemu bench TARGET`: dispatch to the hot-path benchmarks.
 * Each benchmark prints its figures on stdout, one line per figure, in the
 * form "<target> <what> <value> <unit> ..." so docs/benchmarks.md can quote
 * them verbatim. */
#include <stdio.h>
#include <string.h>

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

static void usage(FILE *out) {
  fprintf(out, "usage: coemu bench TARGET [options]   (coemu bench TARGET --help)\n\ntargets:\n");
  for (const bench *b = benches; b->name; b++) fprintf(out, "  %-10s %s\n", b->name, b->summary);
}

int cmd_bench(int argc, char **argv) {
  if (argc < 1 || !strcmp(argv[0], "--help") || !strcmp(argv[0], "-h")) {
    usage(argc < 1 ? stderr : stdout);
    return argc < 1 ? 2 : 0;
  }
  for (const bench *b = benches; b->name; b++)
    if (!strcmp(argv[0], b->name)) return b->run(argc - 1, argv + 1);
  fprintf(stderr, "coemu bench: unknown target '%s'\n", argv[0]);
  usage(stderr);
  return 2;
}
