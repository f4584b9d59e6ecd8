/* cmd_verify.c - `coemu verify DATASET`: check every shard against the
 * manifest (files, sizes, sample ranges, CRC-32 of every dataset). */
#include <stdio.h>
#include <stdlib.h>

#include "common/cli.h"
#include "common/error.h"
#include "pipeline/cmd/commands.h"
#include "pipeline/dataset/dataset.h"

int cmd_verify(int argc, char **argv) {
  int quiet = 0;
  cli_opt opts[] = {{"quiet", CLI_FLAG, &quiet, NULL, "print problems only", 0, 0}, {0}};
  const cli_command spec = {"verify", "DATASET",
                            "Check a dataset directory against its manifest: every shard present, "
                            "complete and with the recorded checksums.",
                            opts, 1, 1};
  int npos = 0;
  char **pos = NULL;
  cli_status r = cli_run_parse(&spec, argc, argv, &npos, &pos);
  if (r != CLI_OK) return cli_exit(r);
  const char *dir = pos[0];
  int problems = dataset_verify(dir, stderr);
  free(pos);
  if (problems < 0) return cli_fail("verify");
  if (problems > 0) {
    ce_err("%s: %d problem%s (listed above)", dir, problems, problems > 1 ? "s" : "");
    return cli_fail("verify");
  }
  if (!quiet) printf("%s: ok: every shard matches the manifest\n", dir);
  return 0;
}
