/* check_mpi.h - the end of an MPI test that uses tests/check.h: rank 0
 * prints the report (a failing rank prints its own as well), every rank
 * finalises MPI, and each exits 1 if any rank failed. */
#ifndef COEMU_CHECK_MPI_H
#define COEMU_CHECK_MPI_H

#include <mpi.h>

#include "check.h"

static inline int check_mpi_finish(void) {
  int rank = 0, failed = check_failed_, any = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  int rc = 0;
  if (rank == 0) rc = check_report();
  else if (check_failed_) check_report();
  MPI_Finalize();
  return any ? 1 : rc;
}

#endif
