/* mpi_fatal.c - see mpi_fatal.h. */
#include "pipeline/mpi/mpi_fatal.h"

#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/cli.h"
#include "common/error.h"

static const char *g_cmd = "coemu";
static int g_rank = 0;
static void (*g_cleanup)(void *);
static void *g_cleanup_ctx;

_Noreturn void mpi_fatal(const char *msg) {
  cli_print_error(g_cmd, msg);
  MPI_Abort(MPI_COMM_WORLD, 1);
  exit(1); /* not reached */
}

static void mpi_error_handler(MPI_Comm *comm, int *code, ...) {
  char s[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(*code, s, &len);
  char msg[MPI_MAX_ERROR_STRING + 32];
  snprintf(msg, sizeof msg, "MPI: %s", s);
  (void)comm;
  mpi_fatal(msg);
}

void mpi_fatal_init(const char *cmd) {
  g_cmd = cmd;
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  cli_set_rank(g_rank);
  MPI_Errhandler eh;
  MPI_Comm_create_errhandler(mpi_error_handler, &eh);
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, eh);
  MPI_Errhandler_free(&eh); /* the communicator keeps its own reference */
}

int mpi_fatal_rank(void) { return g_rank; }

void mpi_set_cleanup(void (*fn)(void *ctx), void *ctx) {
  g_cleanup = fn;
  g_cleanup_ctx = ctx;
}

int mpi_any_failed(int rc) {
  int size;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  /* the lowest rank with a failure of its own, else the lowest failing
   * rank (MPI_AGREE_PEER: "another rank failed"), else none (2 size) */
  int cls = rc == MPI_AGREE_PEER ? 1 : rc < 0 ? 0 : 2;
  int mine = cls * size + g_rank, first = 0;
  MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (first >= 2 * size) return 0;
  if (first == mine) cli_print_error(g_cmd, ce_err_msg());
  return 1;
}

void mpi_agree(int rc) {
  if (!mpi_any_failed(rc)) return;
  if (g_cleanup) g_cleanup(g_cleanup_ctx);
  g_cleanup = NULL;
  fflush(stdout);
  fflush(stderr);
  MPI_Finalize();
  exit(1);
}
