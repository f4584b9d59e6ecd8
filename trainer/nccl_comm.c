/* nccl_comm.c - NCCL communicators for the device reducer (nccl_comm.h). */
#include "trainer/nccl_comm.h"

#include <stdio.h>
#include <stdlib.h>

#include "common/error.h"

#ifdef COEMU_HAVE_NCCL

#include <cuda_runtime.h>
/* nccl.h declares some functions as f() */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wstrict-prototypes"
#include <nccl.h>
#pragma GCC diagnostic pop
#include <string.h>

_Static_assert(sizeof(ncclUniqueId) == NN_NCCL_ID_BYTES, "NN_NCCL_ID_BYTES is ncclUniqueId's size");

struct nn_nccl {
  ncclComm_t comm;
  int rank, world;
};

int nn_nccl_built(void) { return 1; }

/* NCCL's own message for the last failure is more precise than the code's. */
static int nccl_fail(int rank, int world, const char *what, ncclResult_t r, ncclComm_t comm) {
  const char *last = ncclGetLastError(comm);
  return ce_err("rank %d of %d: %s: %s%s%s", rank, world, what, ncclGetErrorString(r),
                last && *last ? ": " : "", last && *last ? last : "");
}

int nn_nccl_unique_id(unsigned char id[NN_NCCL_ID_BYTES]) {
  ncclUniqueId u;
  ncclResult_t r = ncclGetUniqueId(&u);
  if (r != ncclSuccess) return nccl_fail(0, 0, "ncclGetUniqueId", r, NULL);
  memcpy(id, &u, sizeof u);
  return 0;
}

int nn_nccl_check(int rank, int world, int local_ranks) {
  if (world < 1 || rank < 0 || rank >= world)
    return ce_err("NCCL: rank %d of %d: expected 0 <= rank < world", rank, world);
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess)
    return ce_err("rank %d of %d: NCCL needs a CUDA device: cudaGetDeviceCount: %s", rank, world,
                  cudaGetErrorString(e));
  if (local_ranks > count)
    return ce_err("rank %d of %d: %d ranks on this node but %d CUDA device%s: NCCL needs one GPU "
                  "per rank (start at most %d ranks per node)", rank, world, local_ranks, count,
                  count == 1 ? "" : "s", count);
  return 0;
}

int nn_nccl_open(const unsigned char id[NN_NCCL_ID_BYTES], int rank, int world, int local_ranks,
                 nn_nccl **out) {
  *out = NULL;
  CE_TRY(nn_nccl_check(rank, world, local_ranks));
  int dev = -1;
  cudaError_t e;
  if ((e = cudaGetDevice(&dev)) != cudaSuccess)
    return ce_err("rank %d of %d: cudaGetDevice: %s", rank, world, cudaGetErrorString(e));
  nn_nccl *c = calloc(1, sizeof *c);
  if (!c) return ce_err("rank %d of %d: out of memory", rank, world);
  c->rank = rank;
  c->world = world;
  ncclUniqueId u;
  memcpy(&u, id, sizeof u);
  ncclResult_t r = ncclCommInitRank(&c->comm, world, u, rank);
  if (r != ncclSuccess) {
    nccl_fail(rank, world, "ncclCommInitRank", r, NULL);
    ce_err_prefix("opening the NCCL communicator on device %d", dev);
    free(c);
    return -1;
  }
  *out = c;
  return 0;
}

void nn_nccl_close(nn_nccl *c) {
  if (!c) return;
  if (c->comm) ncclCommDestroy(c->comm);
  free(c);
}

static int sum(nn_nccl *c, void *buf, size_t n, ncclDataType_t t, const char *what, void *stream) {
  ncclResult_t r = ncclAllReduce(buf, buf, n, t, ncclSum, c->comm, (cudaStream_t)stream);
  if (r != ncclSuccess) {
    char op[96];
    snprintf(op, sizeof op, "ncclAllReduce of %zu %s", n, what);
    return nccl_fail(c->rank, c->world, op, r, c->comm);
  }
  return 0;
}

int nn_nccl_sum_f32(nn_nccl *c, float *buf, size_t n, void *stream) {
  return sum(c, buf, n, ncclFloat32, "floats", stream);
}

int nn_nccl_sum_f64(nn_nccl *c, double *buf, size_t n, void *stream) {
  return sum(c, buf, n, ncclFloat64, "doubles", stream);
}

#else /* NCCL not built: every entry says so */

struct nn_nccl {
  int unused;
};

static int not_built(void) {
  return ce_err("NCCL is not built into this coemu (it needs the CUDA backend and nccl.h / "
                "libnccl at build time: meson setup -Dnccl=enabled)");
}

int nn_nccl_built(void) { return 0; }
int nn_nccl_check(int rank, int world, int local_ranks) {
  (void)rank, (void)world, (void)local_ranks;
  return not_built();
}
int nn_nccl_unique_id(unsigned char id[NN_NCCL_ID_BYTES]) {
  (void)id;
  return not_built();
}
int nn_nccl_open(const unsigned char id[NN_NCCL_ID_BYTES], int rank, int world, int local_ranks,
                 nn_nccl **out) {
  (void)id, (void)rank, (void)world, (void)local_ranks;
  *out = NULL;
  return not_built();
}
void nn_nccl_close(nn_nccl *c) { free(c); }
int nn_nccl_sum_f32(nn_nccl *c, float *buf, size_t n, void *stream) {
  (void)c, (void)buf, (void)n, (void)stream;
  return not_built();
}
int nn_nccl_sum_f64(nn_nccl *c, double *buf, size_t n, void *stream) {
  (void)c, (void)buf, (void)n, (void)stream;
  return not_built();
}

#endif
