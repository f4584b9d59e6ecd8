/* test_buckets_mpi.c - gradient buckets (trainer/bucket.h) through the MPI
 * reducer (pipeline/train/reducer_mpi.c), on 1 and N ranks (mpirun -n 2):
 * a few data-parallel training steps with the gradients summed in buckets
 * during the backward give the same bits as the chunked sums after it, on
 * every rank. Exact by construction on 1 and 2 ranks: each float's sum is
 * the same operation on the same operands whatever the cut (MPI_SUM of two
 * values is one commutative addition). On more ranks an MPI library may pick
 * another reduction algorithm, so another summation order, for another
 * message size (Open MPI's tuned allreduce switches by count), so buckets
 * and chunks would then agree only within the rounding of a reordered sum
 * of world values; this test runs on 1 and 2 ranks, where the bits are
 * promised. The replicas must also agree with each other bit for bit (every
 * rank gets the same sums), and a bucketed run makes one sum of floats per
 * bucket and step. The CUDA backend's device (NCCL) reducer uses the same
 * plan and order: scripts/gpu-check-trainer.sh. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../trainer/step_batch.h"
#include "check.h"
#include "pipeline/train/reducer_mpi.h"
#include "trainer/bucket.h"
#include "trainer/train.h"

static int g_rank, g_world;

#define STEPS 2
#define LOCAL 2 /* samples per rank */

typedef struct {
  float *w; /* every parameter's values after the steps, concatenated */
  float *g; /* the last step's reduced gradients */
  size_t nw, ng;
  double loss[STEPS];
  long calls_f32;
  double secs; /* the steps' wall time */
} result;

static long g_calls_f32;
static int counting_f32(void *ctx, float *buf, size_t n) {
  g_calls_f32++;
  return reducer_mpi((MPI_Comm *)ctx, 0).sum_f32(ctx, buf, n);
}

static void train(size_t bucket, size_t chunk, result *out) {
  coemunet_config cfg = {2, 16, 2, {2, 3, 4}, 8, 8, COEMUNET_SHORTCUT_REFERENCE};
  coemunet m;
  adam o;
  trainer tr;
  CHECK_OK(coemunet_build(&m, &cfg, 4242)); /* the same seed on every rank */
  CHECK_OK(nn_set_batch(&m.net, LOCAL));
  adam_config ac = adam_default();
  ac.eps = 1e-3;
  CHECK_OK(adam_init(&o, &m.net, &ac));
  CHECK_OK(trainer_init(&tr, &m, &o));
  static MPI_Comm comm;
  comm = MPI_COMM_WORLD;
  nn_reducer red = reducer_mpi(&comm, 0);
  red.sum_f32 = counting_f32;
  red.bucket = bucket;
  red.chunk = chunk;
  CHECK_OK(nn_set_reducer(&m.net, &red));
  const int B = LOCAL * g_world;
  const size_t nx = (size_t)3 * 16 * 16 * 16, nt = (size_t)2 * 16 * 16;
  float *x = malloc(sizeof(float) * nx * B), *t = malloc(sizeof(float) * nt * B);
  g_calls_f32 = 0;
  MPI_Barrier(MPI_COMM_WORLD);
  const double t0 = MPI_Wtime();
  for (int k = 0; k < STEPS; k++) {
    test_step_batch(&cfg, B, k, x, t);
    loss_value lv;
    CHECK_OK(trainer_step(&tr, x + nx * LOCAL * g_rank, t + nt * LOCAL * g_rank, 2e-3, &lv));
    out->loss[k] = lv.total;
  }
  out->secs = MPI_Wtime() - t0;
  out->calls_f32 = g_calls_f32;
  const nn_net *net = &m.net;
  out->nw = 0;
  for (int i = 0; i < net->nparams; i++) out->nw += (size_t)net->params[i].n;
  out->w = malloc(sizeof(float) * out->nw);
  out->ng = net->grad_used_n;
  out->g = malloc(sizeof(float) * out->ng);
  size_t off = 0;
  for (int i = 0; i < net->nparams; i++) {
    CHECK_OK(nn_param_download(net, i, out->w + off));
    off += (size_t)net->params[i].n;
  }
  CHECK_OK(nn_download(net, out->g, net->grad_block, out->ng));
  free(x);
  free(t);
  trainer_free(&tr);
  adam_free(&o);
  coemunet_free(&m);
}

static int same(const result *a, const result *b) {
  return a->nw == b->nw && a->ng == b->ng && !memcmp(a->w, b->w, sizeof(float) * a->nw) &&
         !memcmp(a->g, b->g, sizeof(float) * a->ng) && !memcmp(a->loss, b->loss, sizeof a->loss);
}

/* rank 0's bits broadcast and compared on every rank */
static int same_as_rank0(const result *a) {
  float *w = malloc(sizeof(float) * a->nw);
  memcpy(w, a->w, sizeof(float) * a->nw);
  MPI_Bcast(w, (int)a->nw, MPI_FLOAT, 0, MPI_COMM_WORLD);
  int ok = !memcmp(w, a->w, sizeof(float) * a->nw), all = 0;
  MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  free(w);
  return all;
}

static void result_free(result *r) {
  free(r->w);
  free(r->g);
}

static void test_buckets_equal_chunks(void) {
  result chunked, small, big;
  train(0, 1000, &chunked);       /* chunks of 1000 floats after the backward */
  train(3000, 0, &small);         /* buckets of >= 3000 floats during it */
  train(NN_BUCKET_FLOATS, 0, &big); /* 25 MB: one bucket for this small net */
  CHECK(chunked.calls_f32 == STEPS * (long)((chunked.ng + 999) / 1000));
  CHECK(big.calls_f32 == STEPS);
  CHECK(small.calls_f32 > 2 * STEPS);
  CHECK_MSG(same(&chunked, &small), "rank %d of %d: buckets of 3000 floats differ from chunks",
            g_rank, g_world);
  CHECK_MSG(same(&chunked, &big), "rank %d of %d: one bucket differs from chunks", g_rank,
            g_world);
  CHECK_MSG(same_as_rank0(&small), "rank %d of %d: the replicas' weights differ", g_rank, g_world);
  if (g_rank == 0)
    fprintf(stderr, "%d ranks: %ld sums of floats per step in buckets of 3000 floats, %ld in "
                    "chunks of 1000 (%zu floats of gradients); %d steps: %.3f s chunked, %.3f s "
                    "in buckets of 3000, %.3f s in one bucket\n",
            g_world, small.calls_f32 / STEPS, chunked.calls_f32 / STEPS, chunked.ng, STEPS,
            chunked.secs, small.secs, big.secs);
  result_free(&chunked);
  result_free(&small);
  result_free(&big);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_world);
  if (nn_backend_init(&nn_backend_cpu, 1) < 0) {
    fprintf(stderr, "%s\n", ce_err_msg());
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  RUN(test_buckets_equal_chunks);
  nn_backend_finish(&nn_backend_cpu);
  int failed = check_report(), any = 0;
  MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return any;
}
