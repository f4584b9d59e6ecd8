/* cmd_keygen.c - `coemu keygen NAME`: a CURVE key pair for streams. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "common/cli.h"
#include "common/error.h"
#include "pipeline/cmd/commands.h"
#include "pipeline/stream/stream_security.h"

int cmd_keygen(int argc, char **argv) {
  int force = 0;
  cli_opt opts[] = {
      {"force", CLI_FLAG, &force, NULL,
       "replace an existing pair (every peer given the old public key is then refused)", 0, 0},
      {0}};
  const cli_command spec = {
      "keygen", "NAME [--force]",
      "Write a CURVE key pair for authenticated streams: NAME.key (public; give it\n"
      "to the other side) and NAME.key_secret (secret, mode 0600). An existing pair\n"
      "is kept (exit 2) unless --force: the peers that hold its public key would be\n"
      "locked out.",
      opts, 1, 1};
  int np;
  char **pos;
  cli_status r = cli_run_parse(&spec, argc, argv, &np, &pos);
  if (r != CLI_OK) return cli_exit(r);
  static const char *ext[] = {".key", ".key_secret"};
  for (int i = 0; i < 2 && !force; i++) {
    char path[4200];
    struct stat sb;
    snprintf(path, sizeof path, "%s%s", pos[0], ext[i]);
    if (stat(path, &sb) == 0) {
      free(pos);
      return cli_usage_fail("keygen", "%s exists: its pair is kept (peers may hold its public "
                            "key); --force replaces it", path);
    }
  }
  int rc = stream_keygen(pos[0]);
  if (rc == 0) printf("wrote %s.key and %s.key_secret\n", pos[0], pos[0]);
  free(pos);
  return rc < 0 ? cli_fail("keygen") : 0;
}
