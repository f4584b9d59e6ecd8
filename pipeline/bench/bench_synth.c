/* bench_synth.c - `coemu bench synth`: models per second of coemu synth at
 * a given grid, building in memory only and building + writing the .dat and
 * sidecar (with the fsync of the atomic write), one thread. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "common/cli.h"
#include "common/error.h"
#include "common/fsutil.h"
#include "common/progress.h"
#include "pipeline/bench/benches.h"
#include "rotate/synth.h"

int bench_synth(int argc, char **argv) {
  int64_t n = 20, levels = 3, block = 8, base = 32, seed = 1;
  const char *dir = NULL;
  cli_opt opts[] = {
      {"n", CLI_INT, &n, "N", "models per measurement, >= 1 (default 20)", 0, 0},
      {"seed", CLI_INT64, &seed, "S", "seed (default 1)", 0, 0},
      {"levels", CLI_INT, &levels, "L", "AMR levels, 1..6 (default 3)", 0, 0},
      {"block", CLI_INT, &block, "NB", "block edge, even, 2..64 (default 8)", 0, 0},
      {"base-nx", CLI_INT, &base, "NX", "level-1 cells per edge, a multiple of the block edge, at most 4096 (default 32)", 0, 0},
      {"dir", CLI_STR, &dir, "DIR", "where to write (default /tmp/coemu_bench_synth.PID, removed after)", 0, 0},
      {0}};
  const cli_command spec = {"bench synth", "[options]", "Models per second of coemu synth.", opts,
                            0, 0};
  cli_status r = cli_run_parse(&spec, argc, argv, NULL, NULL);
  if (r != CLI_OK) return cli_exit(r);
  synth_grid g = {(int)levels, (int)block, (int)base};
  if (n < 1) return cli_usage_fail("bench synth", "-n %lld: expected >= 1", (long long)n);
  if (synth_grid_check(&g) < 0) return cli_usage_fail("bench synth", "%s", ce_err_msg());
  char tmp[256];
  int own = dir == NULL;
  if (own) {
    snprintf(tmp, sizeof tmp, "/tmp/coemu_bench_synth.%ld", (long)getpid());
    dir = tmp;
  }
  if (fs_mkdir_p(dir) < 0) return cli_fail("bench synth");
  double t0 = ce_now(), cells = 0, leaves = 0;
  for (int64_t i = 0; i < n; i++) {
    synth_params p;
    amrvac_snapshot s;
    synth_draw((uint64_t)seed, i, &p);
    if (synth_build(&p, &g, &s) < 0) return cli_fail("bench synth");
    leaves += s.h.nleafs;
    cells += (double)s.h.nleafs * block * block * block;
    synth_snapshot_free(&s);
  }
  double t1 = ce_now(), bytes = 0;
  for (int64_t i = 0; i < n; i++) {
    synth_params p;
    synth_info info;
    synth_draw((uint64_t)seed, i, &p);
    if (synth_write_params(dir, (uint64_t)seed, i, &p, &g, 0, NULL, 0, &info) < 0)
      return cli_fail("bench synth");
    bytes += (double)info.bytes;
  }
  double t2 = ce_now();
  if (own) {
    char path[1100];
    for (int64_t i = 0; i < n; i++) {
      if (synth_model_path(path, sizeof path, dir, i, ".dat") == 0) unlink(path);
      if (synth_model_path(path, sizeof path, dir, i, ".units.yaml") == 0) unlink(path);
    }
    rmdir(dir);
  }
  printf("synth grid %lld levels, %lld^3 blocks, %lld^3 base, %lld models: %.0f leaves, %.3g cells, %.1f MB per model\n",
         (long long)levels, (long long)block, (long long)base, (long long)n, leaves / n, cells / n,
         bytes / n / 1e6);
  printf("synth build %.2f models/s (%.3g cells/s, in memory, 1 thread)\n", n / (t1 - t0), cells / (t1 - t0));
  printf("synth write %.2f models/s (%.0f MB/s, build + .dat + sidecar, fsync, 1 thread)\n", n / (t2 - t1),
         bytes / (t2 - t1) / 1e6);
  return 0;
}
