/* reducer_mpi.h - MPI as the trainer's replica reducer.
 *
 * trainer/ knows no MPI: data-parallel training sums BatchNorm statistics and
 * gradients through the callbacks of an nn_reducer (trainer/nn.h). This is
 * the MPI implementation: each sum is an MPI_Allreduce (MPI_SUM, in place)
 * over the communicator, split into int-sized pieces. Every rank gets the
 * same bits in the common MPI implementations, as nn.h requires.
 */
#ifndef COEMU_REDUCER_MPI_H
#define COEMU_REDUCER_MPI_H

#include <mpi.h>

#include "trainer/nn.h"

/* A reducer over the ranks of *comm (which must outlive the reducer's use);
 * local_batchnorm: see nn_reducer. */
nn_reducer reducer_mpi(MPI_Comm *comm, int local_batchnorm);

/* The device reducer of the CUDA backend: the sums above for host buffers,
 * NCCL (trainer/nccl_comm.h) for device memory, gradients in buckets of `bucket`
 * floats (NN_BUCKET_FLOATS: 25 MB) overlapped with the backward pass. A
 * collective over *comm, after the CUDA backend's init: rank 0 makes the
 * NCCL id and broadcasts it; every rank checks that its node has a GPU for
 * each of its ranks before any opens the communicator, so a refusal is the
 * same error everywhere and nobody waits in NCCL. *r is filled in for
 * nn_set_reducer; reducer_nccl_close after the net's last step. 0, or -1
 * with an error on every rank (NCCL not built, too few devices, NCCL's). */
typedef struct reducer_nccl reducer_nccl;
int reducer_nccl_open(MPI_Comm *comm, int local_batchnorm, size_t bucket, reducer_nccl **out,
                      nn_reducer *r);
void reducer_nccl_close(reducer_nccl *x);

#endif
