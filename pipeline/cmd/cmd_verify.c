/* cmd_verify.c - `coemu verify DATASET`: check every shard against the
 * manifest (files, sizes, sample ranges, CRC-32 of every dataset). Under
 * mpirun/srun the ranks share the shards (dataset_verify_part): a
 * multi-terabyte dataset is read by as many processes as the job has. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/cli.h"
#include "common/error.h"
#include "pipeline/cmd/commands.h"
#include "pipeline/dataset/dataset.h"

/* dataset_verify_agree_fn over MPI_COMM_WORLD: the problems of every rank,
 * or -1 if a rank could not read the manifest */
static int agree_mpi(void *ctx, int problems) {
  (void)ctx;
  int v[2] = {problems < 0 ? 1 : 0, problems > 0 ? problems : 0};
  MPI_Allreduce(MPI_IN_PLACE, v, 2, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  return v[0] ? -1 : v[1];
}

int cmd_verify(int argc, char **argv) {
  int quiet = 0;
  cli_opt opts[] = {{"quiet", CLI_FLAG, &quiet, NULL, "print problems only", 0, 0}, {0}};
  const cli_command spec = {"verify", "DATASET",
                            "Check a dataset directory against its manifest: every shard present, "
                            "complete and with the recorded checksums. Under mpirun (or srun) the "
                            "ranks share the shards.",
                            opts, 1, 1};
  int npos = 0;
  char **pos = NULL;
  cli_status r = cli_run_parse(&spec, argc, argv, &npos, &pos);
  if (r != CLI_OK) return cli_exit(r);
  const char *dir = pos[0];
  /* MPI only under a launcher that started several processes (or did not
   * say how many): a plain run needs no MPI singleton */
  int rank = 0, size = 1, mpi = cli_launcher_size() != 1;
  if (mpi) {
    MPI_Init(NULL, NULL);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
  }
  int problems = dataset_verify_part(dir, stderr, rank, size, mpi ? agree_mpi : NULL, NULL);
  int failed = problems < 0, total = problems > 0 ? problems : 0;
  if (mpi) {
    int v[2] = {failed, total};
    MPI_Allreduce(MPI_IN_PLACE, v, 2, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    /* each failing rank prints its own message; the others exit 1 quietly */
    total = v[0] > 0 && !failed ? -1 : v[1];
  }
  int rc = 0;
  if (failed) {
    rc = cli_fail("verify");
  } else if (total < 0) {
    rc = CLI_EXIT_FAILURE;
  } else if (total > 0) {
    if (rank == 0) {
      ce_err("%s: %d problem%s (listed above)", dir, total, total > 1 ? "s" : "");
      cli_fail("verify");
    }
    rc = CLI_EXIT_FAILURE;
  } else if (!quiet && rank == 0) {
    printf("%s: ok: every shard matches the manifest%s\n", dir,
           size > 1 ? " (checked by the ranks together)" : "");
  }
  free(pos);
  if (mpi) MPI_Finalize();
  return rc;
}
