/* cmd_keygen.c - `coemu keygen NAME`: a CURVE key pair for streams. */
#include <stdio.h>
#include <stdlib.h>

#include "common/cli.h"
#include "common/error.h"
#include "pipeline/cmd/commands.h"
#include "pipeline/stream/stream_security.h"

int cmd_keygen(int argc, char **argv) {
  const cli_command spec = {
      "keygen", "NAME",
      "Write a CURVE key pair for authenticated streams: NAME.key (public; give it\n"
      "to the other side) and NAME.key_secret (secret, mode 0600).",
      NULL, 1, 1};
  int np;
  char **pos;
  cli_status r = cli_run_parse(&spec, argc, argv, &np, &pos);
  if (r != CLI_OK) return cli_exit(r);
  int rc = stream_keygen(pos[0]);
  if (rc == 0) printf("wrote %s.key and %s.key_secret\n", pos[0], pos[0]);
  free(pos);
  return rc < 0 ? cli_fail("keygen") : 0;
}
