/* bench_nlte.c - `coemu bench nlte`: ms per one-zone non-LTE model
 * (solver/nlte.h) over a fixed set of conditions (T_kin 10..1000 K, n_H2
 * 1e3..1e7 cm^-3, columns 1e13..1e17 cm^-2, one geometry), one thread, and
 * models per second on all threads. scripts/bench_nlte_radex.py runs RADEX
 * (spectralradex) on the same set. */
#include <stdio.h>
#include <stdlib.h>

#include "common/cli.h"
#include "common/error.h"
#include "common/progress.h"
#include "pipeline/bench/benches.h"
#include "solver/lamda.h"
#include "solver/nlte.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#define BN "bench nlte"

static const double TK[] = {10, 30, 100, 300, 1000}, NH[] = {1e3, 1e5, 1e7}, NC[] = {1e13, 1e15, 1e17};
enum { NSET = 5 * 3 * 3 };

static void conditions(int i, nlte_geometry g, nlte_conditions *c) {
  nlte_conditions_default(c);
  c->t_kin = TK[i / 9];
  c->density[NLTE_H2] = NH[(i / 3) % 3];
  c->column = NC[i % 3];
  c->fwhm_kms = 1.0;
  c->geometry = g;
}

int bench_nlte(int argc, char **argv) {
  const char *mol = NULL, *geom = "sphere";
  int64_t reps = 20;
  cli_opt opts[] = {
      {"mol", CLI_STR, &mol, "FILE", "LAMDA file (default: co.dat of the source tree)", 0, 0},
      {"geometry", CLI_STR, &geom, "G", "sphere (default), lvg or slab", 0, 0},
      {"reps", CLI_INT, &reps, "R", "passes over the 45 conditions, 1..100000 (default 20)", 0, 0},
      {0}};
  const cli_command spec = {BN, "[options]",
                            "ms per one-zone non-LTE model (coemu nlte) over 45 conditions: T_kin\n"
                            "10..1000 K, n_H2 1e3..1e7 cm^-3, N 1e13..1e17 cm^-2; 1 and all threads.",
                            opts, 0, 0};
  cli_status st = cli_run_parse(&spec, argc, argv, NULL, NULL);
  if (st != CLI_OK) return cli_exit(st);
  if (reps < 1 || reps > 100000) return cli_usage_fail(BN, "--reps %lld: expected 1..100000", (long long)reps);
  int g = nlte_geometry_parse(geom);
  if (g < 0) return cli_usage_fail(BN, "--geometry %s: expected sphere, lvg or slab", geom);
  if (!mol) mol = lamda_default_co_path();
  lamda_molecule m;
  if (lamda_read(mol, &m) < 0) return cli_fail(BN);
  nlte_model M;
  if (nlte_model_init(&M, &m) < 0) {
    lamda_free(&m);
    return cli_fail(BN);
  }
  nlte_result r;
  if (nlte_result_init(&r, &M) < 0) {
    nlte_model_free(&M);
    lamda_free(&m);
    return cli_fail(BN);
  }
  long iters = 0, nfail = 0;
  int rc = 0;
  double t0 = ce_now();
  for (int64_t k = 0; k < reps && rc == 0; k++)
    for (int i = 0; i < NSET; i++) {
      nlte_conditions c;
      conditions(i, (nlte_geometry)g, &c);
      if (nlte_solve(&M, &c, NULL, &r) < 0) {
        if (k == 0) fprintf(stderr, "bench nlte: condition %d: %s\n", i, ce_err_msg());
        nfail++;
      }
      iters += r.iterations;
    }
  double t1 = ce_now();
  nlte_result_free(&r);
  int nth = 1, failed = 0; /* failures of the threaded pass repeat those above */
  double t2 = ce_now();
  if (rc == 0) {
#pragma omp parallel reduction(+ : failed)
    {
      nlte_result rr;
      int ok = nlte_result_init(&rr, &M) == 0;
#ifdef _OPENMP
#pragma omp single
      nth = omp_get_num_threads();
#endif
#pragma omp for schedule(dynamic, 4)
      for (int64_t k = 0; k < reps * NSET; k++) {
        nlte_conditions c;
        conditions((int)(k % NSET), (nlte_geometry)g, &c);
        if (!ok || nlte_solve(&M, &c, NULL, &rr) < 0) failed++;
      }
      nlte_result_free(&rr);
    }
  }
  double t3 = ce_now();

  if (rc == 0) {
    double nmod = (double)reps * NSET;
    printf("nlte %s (%d levels, %d lines), %s, %d conditions x %lld reps\n", m.name, m.nlev, m.nline,
           nlte_geometry_name((nlte_geometry)g), NSET, (long long)reps);
    printf("nlte 1 thread: %.4f ms per model (%.1f iterations per model)\n", (t1 - t0) / nmod * 1e3,
           iters / nmod);
    printf("nlte %d threads: %.0f models/s\n", nth, nmod / (t3 - t2));
    if (nfail)
      printf("nlte: %ld of %.0f models failed (no convergence; timed all the same, messages on stderr)\n",
             nfail, nmod);
  }
  nlte_model_free(&M);
  lamda_free(&m);
  return rc;
}
