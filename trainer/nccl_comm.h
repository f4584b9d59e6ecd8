/* nccl_comm.h - NCCL communicators for the trainer's device reducer: gradient and
 * BatchNorm sums made in place on device memory (nn_reducer.dev_sum_f32 /
 * dev_sum_f64, backend.h), one GPU per rank.
 *
 * trainer/ knows no MPI: the caller makes the unique id on rank 0
 * (nn_nccl_unique_id), hands it to every rank (an MPI_Bcast of
 * NN_NCCL_ID_BYTES bytes: pipeline/train/reducer_mpi.c) and opens the
 * communicator on each, after the CUDA backend's init has chosen the rank's
 * device (by node-local rank). A single rank needs no MPI at all (world 1:
 * scripts/gpu-check-trainer.sh).
 *
 * Built where meson finds NCCL beside the CUDA backend (-Dnccl=auto|enabled|
 * disabled; nccl.h and libnccl in the CUDA toolkit); elsewhere every function
 * fails with "NCCL is not built into this coemu ...". Errors name the rank and
 * the operation ("rank 1 of 2: ncclAllReduce of 6250000 floats: unhandled
 * system error ...").
 */
#ifndef COEMU_NCCL_COMM_H
#define COEMU_NCCL_COMM_H

#include <stddef.h>

#define NN_NCCL_ID_BYTES 128 /* sizeof(ncclUniqueId) */

/* 1 when NCCL is built in. */
int nn_nccl_built(void);

/* A new unique id (rank 0 only): 0, or -1 with an error. */
int nn_nccl_unique_id(unsigned char id[NN_NCCL_ID_BYTES]);

typedef struct nn_nccl nn_nccl;

/* What nn_nccl_open refuses before it talks to the other ranks: NCCL not
 * built, no CUDA device, more ranks on this node (local_ranks) than it has
 * GPUs. The MPI caller agrees on it across ranks first, so no rank waits in
 * ncclCommInitRank for one that gave up. 0, or -1 with an error. */
int nn_nccl_check(int rank, int world, int local_ranks);

/* The communicator of `rank` among `world` ranks on the current CUDA device
 * (the CUDA backend must be initialised: nn_backend_init). local_ranks: the
 * ranks sharing this node (mpi_node_place); more of them than the node has
 * GPUs is an error, as NCCL needs one device per rank. A collective: every
 * rank calls it with the same id. */
int nn_nccl_open(const unsigned char id[NN_NCCL_ID_BYTES], int rank, int world, int local_ranks,
                 nn_nccl **out);
void nn_nccl_close(nn_nccl *c);

/* In-place sums over the ranks (ncclAllReduce, ncclSum) of n values of
 * device memory, queued on `stream` (a cudaStream_t): they may still run
 * when these return. 0, or -1 with an error naming the rank and the call. */
int nn_nccl_sum_f32(nn_nccl *c, float *buf, size_t n, void *stream);
int nn_nccl_sum_f64(nn_nccl *c, double *buf, size_t n, void *stream);

#endif
