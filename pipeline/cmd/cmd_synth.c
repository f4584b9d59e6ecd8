/* cmd_synth.c - `coemu synth`: write synthetic AGB binary-wind models as
 * AMRVAC .dat snapshots with units sidecars and a parameter catalogue
 * (rotate/synth.h, docs/synth.md). Models are independent, so they are made
 * in parallel (OpenMP) and each is a pure function of (seed, index). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cli.h"
#include "common/error.h"
#include "common/fsutil.h"
#include "common/progress.h"
#include "pipeline/cmd/commands.h"
#include "rotate/synth.h"

int cmd_synth(int argc, char **argv) {
  int64_t n = 0, seed = 0, first = 0, levels = 3, block = 8, base = 32;
  const char *out = NULL;
  int preview = 0, quiet = 0;
  cli_opt opts[] = {
      {"n", CLI_INT, &n, "N", "number of models", 1, 0},
      {"seed", CLI_INT64, &seed, "S", "job seed (model i is a pure function of seed and i)", 1, 0},
      {"out", CLI_STR, &out, "DIR", "output directory (created if missing)", 1, 0},
      {"first", CLI_INT, &first, "I", "index of the first model (default 0)", 0, 0},
      {"levels", CLI_INT, &levels, "L", "AMR levels, 1..6 (default 3)", 0, 0},
      {"block", CLI_INT, &block, "NB", "cells per block edge: 8 or 16 (default 8)", 0, 0},
      {"base-nx", CLI_INT, &base, "NX", "level-1 cells per edge, a multiple of --block, 1..4096 (default 32)", 0, 0},
      {"preview", CLI_FLAG, &preview, NULL, "also write DIR/synth_%05d.png: log n_H2 in the orbital plane", 0, 0},
      {"quiet", CLI_FLAG, &quiet, NULL, "no progress lines", 0, 0},
      {0}};
  const cli_command spec = {
      "synth", "--n N --seed S --out DIR [options]",
      "Write synthetic AGB binary-wind models as AMRVAC .dat v5 snapshots\n"
      "(DIR/synth_%05d.dat + .units.yaml) and DIR/catalogue.csv of their parameters.",
      opts, 0, 0};
  cli_status r = cli_run_parse(&spec, argc, argv, NULL, NULL);
  if (r != CLI_OK) return cli_exit(r);
  if (n < 1 || n > 100000000)
    return cli_usage_fail("synth", "-n %lld: expected 1..1e8 models", (long long)n);
  if (seed < 0)
    return cli_usage_fail("synth", "--seed %lld: expected a non-negative integer", (long long)seed);
  if (first < 0 || first > INT64_MAX - n)
    return cli_usage_fail("synth", "--first %lld: expected a non-negative index", (long long)first);
  if (block != 8 && block != 16)
    return cli_usage_fail("synth", "--block %lld: expected 8 or 16", (long long)block);
  const cli_range range[] = {{"--levels", levels, 1, 6, NULL}, {"--base-nx", base, 1, 4096, NULL}};
  int bad = cli_check_ranges("synth", range, sizeof range / sizeof range[0]);
  if (bad) return bad;
  synth_grid g = {(int)levels, (int)block, (int)base};
  if (synth_grid_check(&g) < 0) return cli_usage_fail("synth", "%s", ce_err_msg());
  if (fs_mkdir_p(out) < 0) return cli_fail("synth");

  /* Models are made in chunks (in parallel within a chunk) and their
   * catalogue rows appended in index order to a temporary catalogue that is
   * renamed into place only when every model is written. */
  char cat[1100], tmp[1200];
  snprintf(cat, sizeof cat, "%s/catalogue.csv", out);
  FILE *f;
  if (fs_open_tmp(cat, tmp, sizeof tmp, &f) < 0) return cli_fail("synth");
  int ok = fprintf(f, "%s\n", synth_catalogue_header()) > 0;
  enum { CHUNK = 64, ROW_LEN = 2048 };
  static char rows[CHUNK][ROW_LEN];
  ce_progress prog;
  ce_progress_init(&prog, "synth", "models", n, quiet);
  int64_t done = 0, failed_at = -1;
  char errmsg[1024] = "";
  for (int64_t c0 = 0; ok && failed_at < 0 && c0 < n; c0 += CHUNK) {
    int64_t cn = n - c0 < CHUNK ? n - c0 : CHUNK;
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t i = 0; i < cn; i++) {
      int64_t idx = first + c0 + i;
      synth_params p;
      synth_draw((uint64_t)seed, idx, &p);
      synth_info info;
      char path[1024];
      int rc = synth_write_params(out, (uint64_t)seed, idx, &p, &g, preview ? 512 : 0, path,
                                  sizeof path, &info);
      if (rc == 0) {
        const char *base_name = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
        rc = synth_catalogue_row(rows[i], ROW_LEN, idx, (uint64_t)seed, base_name, &p, &info);
      }
#pragma omp critical(synth_progress)
      {
        if (rc < 0 && (failed_at < 0 || idx < failed_at)) {
          failed_at = idx;
          snprintf(errmsg, sizeof errmsg, "%s", ce_err_msg());
        }
        done++;
        ce_progress_update(&prog, done);
      }
    }
    for (int64_t i = 0; ok && failed_at < 0 && i < cn; i++) ok = fprintf(f, "%s\n", rows[i]) > 0;
  }
  if (failed_at >= 0) {
    fs_commit_tmp(f, tmp, cat, 0); /* removes the partial catalogue */
    ce_err("model %lld: %s", (long long)failed_at, errmsg);
    return cli_fail("synth");
  }
  if (fs_commit_tmp(f, tmp, cat, ok) < 0) return cli_fail("synth");
  ce_progress_done(&prog, done);
  if (!quiet) fprintf(stderr, "synth: wrote %lld models and %s\n", (long long)n, cat);
  return 0;
}
