/* cmd_stats.c - `coemu stats DIR`: recompute the /stats group of a dataset
 * (DIR/dataset.h5) in parallel: mpirun -n K coemu stats DIR. The work is
 * pipeline/dataset/dataset_stats.c. */
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "common/cli.h"
#include "common/error.h"
#include "pipeline/cmd/commands.h"
#include "pipeline/dataset/dataset_stats.h"
#include "pipeline/job/job.h"

int cmd_stats(int argc, char **argv) {
  const char *split_name = "train";
  int drop_outliers = 0, quiet = 0;
  cli_opt opts[] = {
      {"split", CLI_STR, &split_name, "NAME", "train (default), validation, test or all", 0, 0},
      {"drop-outliers", CLI_FLAG, &drop_outliers, NULL,
       "drop samples with max(v_z) - min(v_z) > 1e5 m/s (the paper's rule)", 0, 0},
      {"quiet", CLI_FLAG, &quiet, NULL, "print nothing on success", 0, 0},
      {0}};
  int npos;
  char **pos;
  int r = cli_parse("stats", "DATASET_DIR [options]",
                    "Recompute the statistics and normalisation parameters of a dataset over a "
                    "split and write them to DATASET_DIR/dataset.h5:/stats (run under mpirun for "
                    "parallel).", opts, argc, argv, &npos, &pos);
  if (r != 0) return r < 0 ? cli_fail("stats") + 1 : 0;  /* usage error: exit 2 */
  if (npos != 1) {
    free(pos);
    ce_err("expected one dataset directory, got %d arguments", npos);
    return cli_fail("stats") + 1;
  }
  int want;
  if (job_split_parse(split_name, &want) < 0) {
    free(pos);
    ce_err_prefix("--split");
    return cli_fail("stats") + 1;
  }
  int inited = 0;
  MPI_Initialized(&inited);
  if (!inited) MPI_Init(NULL, NULL);
  int rc = dataset_stats(pos[0], split_name, drop_outliers, quiet);
  free(pos);
  if (!inited) MPI_Finalize();
  return rc < 0 ? 1 : 0;
}
