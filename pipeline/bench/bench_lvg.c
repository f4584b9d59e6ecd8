/* bench_lvg.c - `coemu bench lvg`: seconds per model of the per-cell 3-D
 * LVG populations (solver/nlte_lvg.h) on a synthetic binary-wind model of
 * the demo's size (coemu synth, seed 1, 3 levels: ~1.9e5 leaf cells), CO
 * with every level of its LAMDA file; velocity gradients and inputs
 * (rotate/model_lvg.h) timed apart; 1 thread, then 2, 4, ... up to all.
 *
 * It times producer_lvg_populations() (pipeline/generate/producer.h), the
 * wiring `coemu generate` uses for line.mode lvg: model + molecule +
 * options -> per-cell float populations of the imaged line's two levels
 * (docs/nlte.md, "Wiring"). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/cli.h"
#include "common/error.h"
#include "common/progress.h"
#include "pipeline/bench/benches.h"
#include "pipeline/generate/producer.h"
#include "rotate/model.h"
#include "rotate/synth.h"
#include "rotate/units.h"
#include "solver/lamda.h"
#include "solver/nlte.h"
#include "solver/nlte_lvg.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#define BN "bench lvg"

static double cpu_now(void) { /* this process's CPU time [s]: all threads */
  struct timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

int bench_lvg(int argc, char **argv) {
  const char *mol = NULL, *esc = "sobolev";
  int64_t seed = 1, index = 0, levels = 3, ndir = NLTE_LVG_DEFAULT_DIR, line = 2, maxthreads = 0;
  double vturb = 0.15, tol = 1e-8;
  cli_opt opts[] = {
      {"mol", CLI_STR, &mol, "FILE", "LAMDA file (default: co.dat of the source tree)", 0, 0},
      {"line", CLI_INT, &line, "K", "LAMDA line whose level populations are kept, 1..the file's lines (default 2)", 0, 0},
      {"seed", CLI_INT64, &seed, "S", "coemu synth seed, >= 0 (default 1, the demo's)", 0, 0},
      {"index", CLI_INT, &index, "I", "model index, >= 0 (default 0)", 0, 0},
      {"levels", CLI_INT, &levels, "L", "AMR levels, 1..6 (default 3, the demo's)", 0, 0},
      {"ndir", CLI_INT, &ndir, "N", "directions: 3 or 2 m^2 up to 1024 (default 18)", 0, 0},
      {"escape", CLI_STR, &esc, "E", "sobolev (default) or radex", 0, 0},
      {"vturb", CLI_DOUBLE, &vturb, "KM/S", "microturbulence in the clamp, >= 0 (default 0.15, the demo's)", 0, 0},
      {"tol", CLI_DOUBLE, &tol, "T", "relative tolerance per population, in (0, 1) (default 1e-8)", 0, 0},
      {"max-threads", CLI_INT, &maxthreads, "N", "largest thread count, >= 0 (default 0: all)", 0, 0},
      {0}};
  const cli_command spec = {BN, "[options]",
                            "Seconds per model of the per-cell 3-D LVG populations (docs/nlte.md) on a\n"
                            "synthetic model of the demo's size (~1.9e5 cells), CO with all levels;\n"
                            "1 thread, then 2, 4, ... threads (results checked equal bit for bit).",
                            opts, 0, 0};
  cli_status st = cli_run_parse(&spec, argc, argv, NULL, NULL);
  if (st != CLI_OK) return cli_exit(st);
  int e = nlte_lvg_escape_parse(esc);
  if (e < 0) return cli_usage_fail(BN, "--escape %s: expected sobolev or radex", esc);
  const cli_range range[] = {{"--levels", levels, 1, 6, NULL},
                             {"--seed", seed, 0, CLI_NO_MAX, NULL},
                             {"--index", index, 0, CLI_NO_MAX, NULL},
                             {"--max-threads", maxthreads, 0, CLI_NO_MAX, "0: all"}};
  int bad = cli_check_ranges(BN, range, sizeof range / sizeof range[0]);
  if (bad) return bad;
  if (!(vturb >= 0)) return cli_usage_fail(BN, "--vturb %g: expected >= 0", vturb);
  if (!(tol > 0 && tol < 1)) return cli_usage_fail(BN, "--tol %g: expected in (0, 1)", tol);
  double dirs[3 * NLTE_LVG_MAX_DIR], qw[NLTE_LVG_MAX_DIR];
  if (ndir < 1 || ndir > NLTE_LVG_MAX_DIR || nlte_lvg_directions((int)ndir, dirs, qw) < 0)
    return cli_usage_fail(BN, "--ndir %lld: expected 3 or 2 m^2 (8, 18, 32, ...)", (long long)ndir);
  if (!mol) mol = lamda_default_co_path();
  lamda_molecule lm;
  if (lamda_read(mol, &lm) < 0) return cli_fail(BN);
  nlte_model M;
  if (nlte_model_init(&M, &lm) < 0) {
    lamda_free(&lm);
    return cli_fail(BN);
  }
  if (line < 1 || line > M.nline) {
    int nline = M.nline;
    nlte_model_free(&M);
    lamda_free(&lm);
    return cli_usage_fail(BN, "--line %lld: expected 1..%d", (long long)line, nline);
  }
  /* the model, as coemu synth writes it and coemu generate reads it */
  char dir[] = "/tmp/coemu-bench-lvg-XXXXXX", dat[2048], side[2048];
  int rc = 0;
  ce_model *m = NULL;
  units u;
  synth_grid g = synth_grid_default();
  g.levels = (int)levels;
  if (!mkdtemp(dir)) {
    ce_err("cannot make a temporary folder %s", dir);
    rc = -1;
  }
  if (rc == 0) rc = synth_write_model(dir, (uint64_t)seed, index, &g, dat, sizeof dat);
  if (rc == 0) rc = synth_model_path(side, sizeof side, dir, index, ".units.yaml");
  if (rc == 0) rc = units_read(side, &u);
  if (rc == 0) rc = model_load(dat, side, &m);
  unlink(dat);
  unlink(side);
  rmdir(dir);
  if (rc < 0) {
    nlte_model_free(&M);
    lamda_free(&lm);
    return cli_fail(BN);
  }
  int64_t N = m->nleaves * m->ncell;
  float *xl1 = malloc(sizeof(float) * N), *xu1 = malloc(sizeof(float) * N);
  float *xl = malloc(sizeof(float) * N), *xu = malloc(sizeof(float) * N);
  nlte_lvg_options o;
  nlte_lvg_options_default(&o);
  o.ndir = (int)ndir;
  o.escape = (nlte_lvg_escape)e;
  o.vturb_kms = vturb;
  o.tol = tol;
  int nmax = 1;
#ifdef _OPENMP
  nmax = omp_get_max_threads();
#endif
  if (maxthreads > 0 && maxthreads < nmax) nmax = (int)maxthreads;
  printf("lvg model: synth seed %lld index %lld, %d levels: %lld leaves x %lld cells = %lld cells\n",
         (long long)seed, (long long)index, (int)levels, (long long)m->nleaves, (long long)m->ncell,
         (long long)N);
  printf("lvg molecule: %s (%d levels, %d lines), %d directions, %s escape, vturb %g km/s, tol %g\n",
         lm.name, M.nlev, M.nline, o.ndir, nlte_lvg_escape_name(o.escape), vturb, tol);
  for (int nt = 1; rc == 0 && nt <= nmax; nt = nt * 2 > nmax && nt < nmax ? nmax : nt * 2) {
    o.threads = nt;
    nlte_lvg_out s = {0};
    double tin = 0, t0 = ce_now(), c0 = cpu_now();
    rc = producer_lvg_populations(m, u.co_abundance, u.co_abundance, &M, &o, (int)line,
                                  nt == 1 ? xl1 : xl, nt == 1 ? xu1 : xu, &s, &tin);
    double t = ce_now() - t0, cpu = cpu_now() - c0;
    if (rc < 0) break;
    if (nt == 1) {
      printf("lvg inputs (gradients, densities, order): %.3f s\n", tin);
      printf("lvg iterations: %.2f per cell (max %d), %lld cold starts (%lld warm starts redone)\n",
             (double)s.iterations / N, s.max_iterations, (long long)s.cold_starts,
             (long long)s.warm_redone);
    } else if (memcmp(xl, xl1, sizeof(float) * N) || memcmp(xu, xu1, sizeof(float) * N)) {
      ce_err("%d threads gave other populations than 1 thread", nt);
      rc = -1;
      break;
    }
    printf("lvg %d thread%s: %.2f s per model wall, %.2f s CPU (%.1f us CPU per cell; inputs %.3f s)\n",
           nt, nt > 1 ? "s" : "", t, cpu, cpu / N * 1e6, tin);
  }
  free(xl1), free(xu1), free(xl), free(xu);
  model_free(m);
  nlte_model_free(&M);
  lamda_free(&lm);
  return rc < 0 ? cli_fail(BN) : 0;
}
