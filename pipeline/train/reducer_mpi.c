/* reducer_mpi.c - see reducer_mpi.h. */
#include "pipeline/train/reducer_mpi.h"

#include <limits.h>
#include <stdlib.h>

#include "common/error.h"
#include "pipeline/mpi/mpi_node.h"
#include "trainer/nccl_comm.h"

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

/* ---- NCCL ---------------------------------------------------------------- */

struct reducer_nccl {
  MPI_Comm *comm;
  nn_nccl *nccl;
};

static int nccl_host_f64(void *ctx, double *buf, size_t n) {
  return sum_f64(((reducer_nccl *)ctx)->comm, buf, n);
}

static int nccl_host_f32(void *ctx, float *buf, size_t n) {
  return sum_f32(((reducer_nccl *)ctx)->comm, buf, n);
}

static int nccl_dev_f64(void *ctx, double *buf, size_t n, void *stream) {
  return nn_nccl_sum_f64(((reducer_nccl *)ctx)->nccl, buf, n, stream);
}

static int nccl_dev_f32(void *ctx, float *buf, size_t n, void *stream) {
  return nn_nccl_sum_f32(((reducer_nccl *)ctx)->nccl, buf, n, stream);
}

/* Whether every rank got here without an error (each keeps its own message;
 * a rank that had none gets `why`). */
static int all_ok(MPI_Comm comm, int ok, const char *why) {
  int all = ok;
  MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, comm);
  if (!all && ok) return ce_err("%s", why);
  return all ? 0 : -1;
}

int reducer_nccl_open(MPI_Comm *comm, int local_batchnorm, size_t bucket, reducer_nccl **out,
                      nn_reducer *r) {
  *out = NULL;
  int rank = 0, world = 1, local_ranks = 1;
  MPI_Comm_rank(*comm, &rank);
  MPI_Comm_size(*comm, &world);
  mpi_node_place(NULL, &local_ranks);
  /* what nn_nccl_open refuses alone, agreed before any rank waits in
     ncclCommInitRank */
  CE_TRY(all_ok(*comm, nn_nccl_check(rank, world, local_ranks) == 0,
                "another rank cannot use NCCL (its own error says why)"));
  unsigned char id[NN_NCCL_ID_BYTES + 1] = {0}; /* the id, then rank 0's status */
  if (rank == 0) id[NN_NCCL_ID_BYTES] = nn_nccl_unique_id(id) == 0;
  MPI_Bcast(id, (int)sizeof id, MPI_UNSIGNED_CHAR, 0, *comm);
  if (!id[NN_NCCL_ID_BYTES])
    return rank == 0 ? -1 : ce_err("rank 0 could not make the NCCL communicator's id");
  reducer_nccl *x = calloc(1, sizeof *x);
  int ok = x != NULL;
  if (ok) {
    x->comm = comm;
    ok = nn_nccl_open(id, rank, world, local_ranks, &x->nccl) == 0;
  } else {
    ce_err("out of memory");
  }
  if (all_ok(*comm, ok, "another rank could not open the NCCL communicator") < 0) {
    reducer_nccl_close(x);
    return -1;
  }
  *r = (nn_reducer){.world = world, .sum_f64 = nccl_host_f64, .sum_f32 = nccl_host_f32, .ctx = x,
                    .local_batchnorm = local_batchnorm, .bucket = bucket,
                    .dev_sum_f64 = nccl_dev_f64, .dev_sum_f32 = nccl_dev_f32};
  *out = x;
  return 0;
}

void reducer_nccl_close(reducer_nccl *x) {
  if (!x) return;
  nn_nccl_close(x->nccl);
  free(x);
}
