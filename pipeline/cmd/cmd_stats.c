/* cmd_stats.c - `coemu stats DIR`: recompute the /stats group (or
 * /stats_SPLIT for a split other than the normalisation split) of a dataset
 * (DIR/dataset.h5) in parallel: mpirun -n K coemu stats DIR. The work is
 * pipeline/dataset/dataset_stats.c. */
#include <math.h>
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
  double clip = NAN;
  cli_opt opts[] = {
      {"split", CLI_STR, &split_name, "NAME", "train (default), validation, test or all", 0, 0},
      {"drop-outliers", CLI_FLAG, &drop_outliers, NULL,
       "drop samples with max(v_z) - min(v_z) > 1e5 m/s (the paper's rule)", 0, 0},
      {"ln-intensity-clip", CLI_DOUBLE, &clip, "X",
       "the floor of ln I (I in W m^-2 Hz^-1 sr^-1) in the normalisation of multi-channel targets "
       "(default: the dataset job's statistics.ln_intensity_clip, -40 unless it sets one); a "
       "fainter line needs a lower one", 0, 0},
      {"quiet", CLI_FLAG, &quiet, NULL, "print nothing on success", 0, 0},
      {0}};
  const cli_command spec = {
      "stats", "DATASET_DIR [options]",
      "Recompute the statistics and normalisation parameters of a dataset over a split and write "
      "them to DATASET_DIR/dataset.h5: /stats for the job's statistics.split (train by default: "
      "what serve and train normalise with), /stats_SPLIT for any other split, which leaves "
      "/stats as it was. Also counts mostly empty targets (> 90% of pixels below I = e^-40) and "
      "the pixels below the ln I clip. "
      "Run under mpirun for parallel.",
      opts, 1, 1};
  int npos;
  char **pos;
  cli_status r = cli_run_parse(&spec, argc, argv, &npos, &pos);
  if (r != CLI_OK) return cli_exit(r);
  int want;
  if (job_split_parse(split_name, &want) < 0) {
    free(pos);
    return cli_usage_fail("stats", "--split: %s", ce_err_msg());
  }
  const cli_opt *clip_opt = &opts[2];
  if (clip_opt->seen && !(clip >= -700 && clip <= 700)) {
    free(pos);
    return cli_usage_fail("stats", "--ln-intensity-clip %g: expected a number in [-700, 700]",
                          clip);
  }
  int inited = 0;
  MPI_Initialized(&inited);
  if (!inited) MPI_Init(NULL, NULL);
  int rc = dataset_stats(pos[0], split_name, drop_outliers, clip, quiet, NULL);
  free(pos);
  if (!inited) MPI_Finalize();
  return rc < 0 ? 1 : 0;
}
