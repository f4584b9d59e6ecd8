/* mpi_fatal.c - see mpi_fatal.h. */
#include "pipeline/mpi/mpi_fatal.h"

#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/cli.h"

static const char *g_cmd = "coemu";
static int g_rank = 0;

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
