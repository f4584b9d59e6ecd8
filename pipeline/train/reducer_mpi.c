/* reducer_mpi.c - see reducer_mpi.h. */
#include "pipeline/train/reducer_mpi.h"

#include <limits.h>

#include "common/error.h"

static int mpi_sum(MPI_Comm comm, void *buf, size_t n, MPI_Datatype t, size_t size) {
  char *p = buf;
  while (n > 0) { /* MPI counts are ints */
    int c = n > (size_t)INT_MAX / 2 ? INT_MAX / 2 : (int)n;
    if (MPI_Allreduce(MPI_IN_PLACE, p, c, t, MPI_SUM, comm) != MPI_SUCCESS)
      CE_FAIL("MPI_Allreduce of %d values failed", c);
    p += (size_t)c * size;
    n -= (size_t)c;
  }
  return 0;
}

static int sum_f64(void *ctx, double *buf, size_t n) {
  return mpi_sum(*(MPI_Comm *)ctx, buf, n, MPI_DOUBLE, sizeof(double));
}

static int sum_f32(void *ctx, float *buf, size_t n) {
  return mpi_sum(*(MPI_Comm *)ctx, buf, n, MPI_FLOAT, sizeof(float));
}

nn_reducer reducer_mpi(MPI_Comm *comm, int local_batchnorm) {
  int world = 1;
  MPI_Comm_size(*comm, &world);
  nn_reducer r = {.world = world, .sum_f64 = sum_f64, .sum_f32 = sum_f32, .ctx = comm,
                  .local_batchnorm = local_batchnorm};
  return r;
}
