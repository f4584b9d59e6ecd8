/* coemu.c - the `coemu` command: a thin dispatcher over the stage libraries. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/version.h"
#include "pipeline/cmd/commands.h"

typedef struct {
  const char *name, *summary;
  int (*run)(int, char **);
} command;

static const command commands[] = {
#define COEMU_CMD(n, s) {#n, s, cmd_##n},
#include "pipeline/cmd/commands.def"
#undef COEMU_CMD
};

static void usage(FILE *out) {
  fprintf(out,
          "coemu %s - training sets for spectral-line radiative-transfer emulators\n\n"
          "usage: coemu COMMAND [options]   (coemu COMMAND --help for its options)\n\n"
          "commands:\n",
          COEMU_VERSION);
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    fprintf(out, "  %-10s %s\n", commands[i].name, commands[i].summary);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  const char *name = argv[1];
  if (!strcmp(name, "--help") || !strcmp(name, "-h") || !strcmp(name, "help")) {
    usage(stdout);
    return 0;
  }
  if (!strcmp(name, "--version")) return cmd_version(argc - 2, argv + 2);
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    if (!strcmp(name, commands[i].name)) return commands[i].run(argc - 2, argv + 2);
  fprintf(stderr, "coemu: unknown command '%s'\n\n", name);
  usage(stderr);
  return 2;
}
