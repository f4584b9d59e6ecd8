/* cmd_version.c - `coemu version [--verbose]`: the version and git revision;
 * with --verbose what this build is, the libraries it runs with (their
 * run-time versions, which a cluster's modules can make differ from the
 * headers it was compiled against) and this machine (node, CPU, OpenMP
 * threads, the solver's CPU kernel and CUDA device): the first thing to
 * send with a question about a cluster run. */
#include <cblas.h>
#include <hdf5.h>
#include <mpi.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <fftw3.h>
#include <yaml.h>
#include <zmq.h>

#include "common/buildinfo.h"
#include "common/cli.h"
#include "common/error.h"
#include "common/version.h"
#include "pipeline/cmd/commands.h"
#include "solver/lte_kernel.h"

static void row(const char *key, const char *value) { printf("  %-17s %s\n", key, value); }

/* ", built with A.B.C" after v where the headers were another version than
 * the library loaded now (a cluster's modules) */
static void built_with(char *v, size_t n, int a, int b, int c, int ha, int hb, int hc) {
  if (a != ha || b != hb || c != hc)
    snprintf(v + strlen(v), n - strlen(v), ", built with %d.%d.%d", ha, hb, hc);
}

int cmd_version(int argc, char **argv) {
  int verbose = 0;
  cli_opt opts[] = {
      {"verbose", CLI_FLAG, &verbose, NULL,
       "also the build (compiler, flags, instruction sets, MPI, CUDA), the libraries' run-time "
       "versions and this machine (CPU, threads, the solver's kernel, the CUDA device)", 0, 0},
      {0}};
  const cli_command spec = {"version", "[--verbose]",
                            "Print coemu's version and git revision; --verbose: what this build is "
                            "and what it finds on this machine.",
                            opts, 0, 0};
  int np;
  char **pos;
  cli_status r = cli_run_parse(&spec, argc, argv, &np, &pos);
  if (r != CLI_OK) return cli_exit(r);
  free(pos);
  printf("coemu %s (git %s)\n", COEMU_VERSION, COEMU_GIT_REVISION);
  if (!verbose) return 0;
  char v[1024];
  printf("build\n");
  const char *val;
  for (int i = 0; ce_build_field(i, &val); i++) row(ce_build_field(i, &val), val);

  printf("libraries (as loaded now; \"built with\" where the headers were another version)\n");
  /* callable before MPI_Init; MPICH's string is several lines (up to 8 KiB):
   * its first line, tabs as spaces */
  static char mpiv[MPI_MAX_LIBRARY_VERSION_STRING];
  int len = 0;
  MPI_Get_library_version(mpiv, &len);
  mpiv[strcspn(mpiv, "\n")] = 0;
  for (char *t = mpiv; (t = strchr(t, '\t'));) *t = ' ';
  row("MPI", mpiv);
  unsigned a, b, c;
  H5get_libversion(&a, &b, &c);
  snprintf(v, sizeof v, "%u.%u.%u%s", a, b, c,
#ifdef H5_HAVE_PARALLEL
           " (parallel)"
#else
           " (serial)"
#endif
  );
  built_with(v, sizeof v, (int)a, (int)b, (int)c, H5_VERS_MAJOR, H5_VERS_MINOR, H5_VERS_RELEASE);
  row("HDF5", v);
  int za, zb, zc;
  zmq_version(&za, &zb, &zc);
  snprintf(v, sizeof v, "%d.%d.%d", za, zb, zc);
  built_with(v, sizeof v, za, zb, zc, ZMQ_VERSION_MAJOR, ZMQ_VERSION_MINOR, ZMQ_VERSION_PATCH);
  row("ZeroMQ", v);
  row("libyaml", yaml_get_version_string());
  row("FFTW", fftw_version);
  snprintf(v, sizeof v, "%s", openblas_get_config());
  v[strcspn(v, "\n")] = 0;
  snprintf(v + strlen(v), sizeof v - strlen(v), "; kernel %s", openblas_get_corename());
  row("OpenBLAS", v);

  printf("this machine\n");
  char host[256] = "";
  gethostname(host, sizeof host - 1);
  row("node", host[0] ? host : "unknown");
  ce_cpu_model(v, sizeof v);
  row("CPU", v);
  row("instruction sets", "every one the build needs (coemu checks before it starts)");
  const char *ont = getenv("OMP_NUM_THREADS");
  snprintf(v, sizeof v, "%d threads (OMP_NUM_THREADS %s)", omp_get_max_threads(), ont ? ont : "unset");
  row("OpenMP", v);
  const lte_kernel *k = lte_kernel_get(LTE_BACKEND_CPU);
  row("solver, cpu", k ? k->variant : "none");
  k = lte_kernel_get(LTE_BACKEND_CUDA);
  if (!k) {
    row("solver, cuda", "not built into this coemu");
  } else if (!k->open || k->open(0, v, sizeof v) < 0) {
    snprintf(v, sizeof v, "%s", ce_err_msg());
    row("solver, cuda", v);
  } else {
    row("solver, cuda", v);
  }
  return 0;
}
