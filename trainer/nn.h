/* nn.h - a small neural-network graph: float32 NCDHW tensors, layers with
 * forward and backward, parameters, and the backend interface they run on.
 *
 * A network is a list of nodes in topological order (each node's inputs come
 * before it). Node 0.. are built with nn_input(), nn_conv(), ...; every
 * builder returns the new node's index, or -1 with an error message when the
 * shapes do not fit. Every activation is a 5-D NCDHW tensor: the batch size N
 * is set for the whole net by nn_set_batch(), each node stores its per-sample
 * shape (C, D, H, W). 2-D layers are the 3-D ones with depth 1 (Conv2d =
 * Conv3d with a (1,kh,kw) kernel on D = 1; BatchNorm2d = BatchNorm3d, the
 * statistics run over N,D,H,W either way); a flattened vector is (C,1,1,1).
 *
 *   nn_net net; nn_init(&net);
 *   int x = nn_input(&net, "x", 1, 8, 8, 8);
 *   int c = nn_conv(&net, "conv", x, 4, NN_K3(3, 3, 3), NN_K3(1, 1, 1), NN_PAD_SAME3);
 *   int b = nn_batchnorm(&net, "bn", c);  int r = nn_relu(&net, "relu", b);
 *   nn_backend_init(&nn_backend_cpu, threads); // once per process (backend.h)
 *   nn_finalize(&net, seed);   // allocate and initialise parameters
 *   nn_set_batch(&net, 16);    // allocate activations
 *   nn_input_upload(&net, x, host_x); nn_forward(&net, 1);
 *   nn_grad_upload(&net, r, dL/dy); nn_zero_grad(&net); ...; nn_backward(&net);
 *
 * An input's gradient is computed only if its needs_grad is set to 1 right
 * after nn_input() (before layers that read it are added): gradient checks.
 *
 * Backward convention: nn_backward() runs the nodes in reverse order and each
 * node ADDS its contribution to its inputs' gradients and to its parameters'
 * gradients, so a node feeding several others (a residual input) gets the sum.
 * nn_zero_grad() clears parameter gradients and every activation gradient
 * except those of nodes marked as seeds with nn_seed_grad() (the caller writes
 * dL/d(output) there).
 *
 * Backends (backend.h). Every tensor buffer of the net (parameters, their
 * gradients, activations and their gradients, saved state, scratch) is
 * allocated by the net's backend and may live on a device; the arithmetic
 * of each layer kind, the optimiser step, the loss and the gradient
 * reduction run in it too. Host code reads and writes tensors through the
 * upload/download functions below. The CPU reference (nn_backend_cpu,
 * backend_cpu.c: layers_cpu.c's vol2col + OpenBLAS sgemm, OpenMP) is the
 * default (see docs/trainer.md).
 */
#ifndef COEMU_NN_H
#define COEMU_NN_H

#include <stddef.h>
#include <stdint.h>

#include "trainer/backend.h"
#include "trainer/bucket.h"

typedef enum {
  NN_INPUT = 0,  /* data written by the caller */
  NN_CONV,       /* Conv3d with bias; weight (Cout, Cin, kd, kh, kw) */
  NN_BATCHNORM,  /* BatchNorm over N,D,H,W per channel; gamma, beta, running mean/var */
  NN_RELU,
  NN_TANH,
  NN_MAXPOOL,    /* MaxPool3d, kernel = stride = k, floor mode */
  NN_LINEAR,     /* y = x W^T + b on the flattened (C*D*H*W) input; weight (out, in) */
  NN_UPSAMPLE,   /* nearest, integer factors (fd, fh, fw) */
  NN_ADD,        /* elementwise sum of two inputs of equal shape */
  NN_CONCAT,     /* concatenation along channels of inputs with equal D,H,W */
  NN_VIEW,       /* the same memory with another per-sample shape (flatten, reshape) */
  NN_SLICE,      /* channels [c0, c0 + C) of the input */
  NN_KIND_COUNT
} nn_kind;

#define NN_MAX_IN 4
#define NN_NAME 96
#define NN_PAD_SAME (-1) /* 'same' padding: odd kernel, stride 1, pad (k-1)/2 */

typedef struct { int v[3]; } nn_int3; /* (depth, height, width) */
#define NN_K3(a, b, c) ((nn_int3){{(a), (b), (c)}})
#define NN_PAD_SAME3 NN_K3(NN_PAD_SAME, NN_PAD_SAME, NN_PAD_SAME)

/* A parameter tensor (or a buffer such as BatchNorm running statistics). */
typedef struct {
  char name[NN_NAME];
  int ndim;
  int64_t shape[5];
  int64_t n;       /* element count */
  float *w;        /* values (backend memory) */
  float *g;        /* gradient (NULL for buffers): a slice of nn_net.grad_block */
  int trainable;   /* 1: weight/bias updated by the optimiser; 0: buffer */
  int used;        /* 0: part of the model's state but on no forward path (gets no
                      gradient; the optimiser skips it, as PyTorch skips grad None) */
  int64_t fan_in;  /* for initialisation */
} nn_param;

typedef struct nn_node {
  nn_kind kind;
  char name[NN_NAME];
  int in[NN_MAX_IN];
  int nin;
  int c, d, h, w;        /* per-sample output shape */
  int64_t size;          /* c*d*h*w */
  float *out, *grad;     /* N*size each (backend memory); a VIEW aliases its input's */
  int needs_grad;        /* 1: dL/d(out) is needed: the node has parameters or an
                            ancestor has (0 for input data and slices of it) */
  int seed_grad;         /* 1: the caller writes this node's gradient (nn_zero_grad keeps it) */
  /* layer configuration */
  nn_int3 k, s, p;       /* conv: kernel, stride, padding; pool: k = s; upsample: s = factors */
  float momentum, eps;   /* batchnorm */
  int slice0;            /* slice: first channel */
  int param[4];          /* indices into net->params: conv/linear W,b; bn gamma,beta,mean,var */
  int nparam;
  float *save;           /* forward -> backward scratch (bn: batch mean, 1/std per channel;
                            backend memory) */
} nn_node;

/* Data parallelism: several replicas of one net (MPI ranks, threads), each
 * running a share of the global batch, kept identical by sums across them.
 * trainer/ knows no MPI: the caller installs the sums as callbacks.
 *
 * sum_f64 / sum_f32 replace buf[0..n) in place by its elementwise sum over
 * all replicas (an MPI_Allreduce with MPI_SUM, MPI_IN_PLACE). Every replica
 * must call them in the same order with the same n (they are collectives),
 * and every replica must get bit-identical results, or the replicas' weights
 * drift apart (MPI_Allreduce gives that in the common implementations; the
 * MPI standard recommends it). They return 0, or -1 with an error set
 * (common/error.h). world is the replica count (1: the sums are the
 * identity, and results are bit-identical to no reducer).
 *
 * With a reducer installed (see docs/trainer.md, "Data-parallel training"):
 *  - BatchNorm in training mode normalises with the statistics of the GLOBAL
 *    batch (synchronised BatchNorm). Per BN layer and forward: one sum_f64 of
 *    C+1 doubles (per-channel sums and the value count), one of C doubles
 *    (squared deviations from the global mean); per backward: one of 2C+1
 *    doubles (sums of dy and dy*xhat, the count). Running statistics are
 *    updated with the global mean and unbiased variance, identically
 *    everywhere. Evaluation mode needs no sums. (The backend does this: the
 *    CPU one in backend_cpu.c; backend.h lists the calls a device backend
 *    must make, in order.)
 *  - nn_reduce_grads() sums the parameter gradients across replicas and
 *    divides by world: called between backward and the optimiser step.
 *  - the dL/dy seeds of the replicas must be the gradients of (local batch /
 *    mean local batch) x the local mean loss, so that averaging by world gives
 *    the global-mean gradient; trainer_step() does this scaling itself (one
 *    more sum_f64, of the batch size).
 * chunk bounds a single sum_f32 (MPI counts are int: keep it <= INT_MAX).
 */
typedef struct {
  int world;     /* number of replicas, >= 1 */
  int (*sum_f64)(void *ctx, double *buf, size_t n);
  int (*sum_f32)(void *ctx, float *buf, size_t n);
  void *ctx;     /* passed to the sums */
  size_t chunk;  /* most floats per sum_f32 call in nn_reduce_grads (0: NN_REDUCE_CHUNK) */
  int local_batchnorm; /* 1: BatchNorm keeps each replica's own batch statistics (PyTorch
                          DDP without SyncBatchNorm); gradients are still reduced */
  /* > 0: the gradients are summed in buckets of at least this many floats
   * (bucket.h; NN_BUCKET_FLOATS is 25 MB) during the backward pass, each as
   * soon as the backward has produced all of its gradients, so a device
   * backend overlaps the sums with the rest of the backward; nn_reduce_grads
   * then waits for them and divides by world. 0: every sum after the
   * backward, in chunks. Both give the same bits with a reducer whose sum of
   * each value does not depend on how the buffer is cut (bucket.h). */
  size_t bucket;
  /* Device sums (the NCCL reducer, trainer/nccl_comm.h); NULL for host reducers.
   * When set, a device backend hands them its own memory and a stream
   * (cudaStream_t): the sum is queued on that stream, in place, and may
   * still run when they return; 0, or -1 with an error naming the rank and
   * the operation. The host sums above are still needed (trainer_step's
   * batch-size sum; the CPU backend). */
  int (*dev_sum_f64)(void *ctx, double *buf, size_t n, void *stream);
  int (*dev_sum_f32)(void *ctx, float *buf, size_t n, void *stream);
} nn_reducer;

#define NN_REDUCE_CHUNK ((size_t)1 << 24) /* 16 Mi floats = 64 MiB per call */

typedef struct nn_net {
  nn_node *nodes;
  int nnodes, node_cap;
  nn_param *params;
  int nparams, param_cap;
  int batch;             /* current N (0 until nn_set_batch) */
  int train;             /* mode of the last forward */
  int finalized;
  float *work;           /* backend scratch (vol2col columns; backend memory) */
  size_t work_n;
  const nn_backend *be;  /* where the tensors live and the arithmetic runs (backend.h) */
  float *grad_block;     /* every trainable parameter's gradient, one allocation (backend
                            memory): the used
                            ones first, each 64-byte aligned (zero padding between) */
  size_t grad_used_n;    /* floats of grad_block up to the end of the last used one */
  nn_reducer reducer;    /* world 0: none installed */
  int precision;         /* nn_precision of the convolutions and linear layers (precision.h) */
  nn_bucket_plan buckets; /* reducer.bucket > 0: the plan (bucket.h) */
  int buckets_sent;      /* buckets of this backward handed to the backend so far */
} nn_net;

/* An empty net on the CPU backend. */
void nn_init(nn_net *net);
void nn_free(nn_net *net);

/* Process setup of a backend (backend.h, init / finish): before the first
 * nn_finalize() on it, from the thread that runs the nets; threads > 0 is
 * the compute-thread count the command asked for, 0 keeps the caller's.
 * Each init is paired with a nn_backend_finish(); the last one undoes what
 * init changed (thread settings). nn_finalize() refuses a backend that is
 * not initialised. */
int nn_backend_init(const nn_backend *be, int threads);
void nn_backend_finish(const nn_backend *be);
int nn_backend_ready(const nn_backend *be);
/* The backend called name ("cpu", "cuda"), or NULL with an error naming
 * the backends this build has ("trainer backend 'cuda' is not built into
 * this coemu (built: cpu)"): the way commands and jobs choose one
 * (train.device, --device). The CUDA backend (trainer/cuda/) is built when
 * meson finds nvcc, cuDNN, cuBLAS and cuFFT. */
const nn_backend *nn_backend_by_name(const char *name);
/* The built backends' names, comma-separated ("cpu, cuda"). */
const char *nn_backends_built(void);

/* The arithmetic of the net's convolutions and linear layers (precision.h:
 * NN_FLOAT32, the default, NN_TF32, NN_BF16), before nn_set_batch (a
 * device backend sizes its scratch for the precision's algorithms); -1 with
 * an error naming the backend and what it runs where it cannot. The
 * parameters, their gradients and the optimiser stay float32. */
int nn_set_precision(nn_net *net, int precision);

/* Run the net on another backend: right after nn_init(), before nn_finalize(). */
int nn_set_backend(nn_net *net, const nn_backend *be);

/* Builders: return the node index, or -1 with an error message. */
int nn_input(nn_net *net, const char *name, int c, int d, int h, int w);
int nn_conv(nn_net *net, const char *name, int x, int cout, nn_int3 k, nn_int3 s, nn_int3 p);
int nn_batchnorm(nn_net *net, const char *name, int x);
int nn_relu(nn_net *net, const char *name, int x);
int nn_tanh(nn_net *net, const char *name, int x);
int nn_maxpool(nn_net *net, const char *name, int x, int k);
int nn_linear(nn_net *net, const char *name, int x, int out);
int nn_upsample(nn_net *net, const char *name, int x, nn_int3 factor);
int nn_add(nn_net *net, const char *name, int a, int b);
int nn_concat(nn_net *net, const char *name, const int *xs, int n);
int nn_view(nn_net *net, const char *name, int x, int c, int d, int h, int w);
int nn_slice(nn_net *net, const char *name, int x, int c0, int c);

/* Mark a parameter as present but unused (see nn_param.used). */
void nn_param_set_unused(nn_net *net, int param);

/* Allocate parameters and initialise them as PyTorch's defaults do:
 * conv/linear weights kaiming_uniform(a = sqrt(5)), i.e. U(-b, b) with
 * b = 1/sqrt(fan_in); biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)); BatchNorm
 * gamma 1, beta 0, running mean 0, var 1. Parameter i draws from
 * ce_rng_make(seed, i, 0, 7), so each tensor is independent of the others. */
int nn_finalize(nn_net *net, uint64_t seed); /* the backend must be initialised */
/* Re-draw every parameter as nn_finalize() does (a fresh model): drawn on the
 * host, uploaded piece by piece. */
int nn_init_params(nn_net *net, uint64_t seed);

/* (Re)allocate activations and scratch for batch size n (>= 1). */
int nn_set_batch(nn_net *net, int n);

/* Install a reducer (copied; its ctx must outlive it) or, with NULL, remove
 * it (single replica). A reducer with bucket > 0 makes the net's bucket plan
 * (bucket.h): install it after nn_finalize().
 * Fails if world < 1 or a sum is missing. */
int nn_set_reducer(nn_net *net, const nn_reducer *r);
/* The installed reducer, or NULL. */
static inline const nn_reducer *nn_get_reducer(const nn_net *net) {
  return net->reducer.world ? &net->reducer : NULL;
}
/* Sum the gradients of the used trainable parameters over the replicas and
 * divide them by world, in place, through the backend's reduce_grads: the
 * CPU backend makes ceil(floats / chunk) sum_f32 calls on grad_block directly
 * (no copies). With reducer.bucket > 0, nn_backward() has already handed the
 * buckets to the backend (reduce_bucket) as they became ready (any it did not
 * reach are handed over here); this waits for them and divides. Without a
 * reducer: nothing. */
int nn_reduce_grads(nn_net *net);

int nn_forward(nn_net *net, int train);
void nn_seed_grad(nn_net *net, int node);
int nn_zero_grad(nn_net *net);
int nn_backward(nn_net *net);

/* A node's activation and gradient buffers: backend memory (backend.h), for
 * passing to the backend; host code copies through the functions below. */
static inline float *nn_out(nn_net *net, int node) { return net->nodes[node].out; }
static inline float *nn_grad(nn_net *net, int node) { return net->nodes[node].grad; }

/* Host <-> backend copies (the CPU backend: memcpy). n counts floats; the
 * node forms copy the whole batch, net->batch * size floats; the param forms
 * nn_param.n floats. All return 0, or -1 with an error. */
int nn_upload(const nn_net *net, float *dst, const float *src, size_t n);
int nn_download(const nn_net *net, float *dst, const float *src, size_t n);
int nn_input_upload(nn_net *net, int node, const float *x);
int nn_out_download(const nn_net *net, int node, float *y);
int nn_grad_upload(nn_net *net, int node, const float *g);
int nn_grad_download(const nn_net *net, int node, float *g);
int nn_param_upload(nn_net *net, int param, const float *w);
int nn_param_download(const nn_net *net, int param, float *w);
int nn_param_grad_download(const nn_net *net, int param, float *g);

/* Large tensors in pieces through a bounded host buffer (NN_STAGE_FLOATS):
 * nn_download_chunks hands n floats of backend memory src to fn, piece by
 * piece in order; nn_upload_chunks has fn fill each piece, which then goes
 * to dst. off is the piece's offset in floats. A negative return of fn stops
 * the copy and is returned. (Checkpoints, initialisation, hashes.) */
#define NN_STAGE_FLOATS ((size_t)1 << 20)
typedef int (*nn_chunk_fn)(void *ctx, float *chunk, size_t off, size_t n);
int nn_download_chunks(const nn_net *net, const float *src, size_t n, nn_chunk_fn fn, void *ctx);
int nn_upload_chunks(const nn_net *net, float *dst, size_t n, nn_chunk_fn fn, void *ctx);

/* n floats from the backend memory src of net `from` to dst of net `to`: the
 * backend's copy when both nets are on one backend, else through the host. */
int nn_transfer(const nn_net *to, float *dst, const nn_net *from, const float *src, size_t n);

/* n floats of backend memory: allocated (zero-filled) and freed through the
 * net's backend, for buffers beside the net's own (optimiser moments,
 * targets). what names the buffer in the error message. */
float *nn_alloc(const nn_net *net, size_t n, const char *what);
void nn_release(const nn_net *net, void *p);

/* Trainable parameter count (PyTorch's sum(p.numel() for p in parameters())),
 * unused ones included as PyTorch counts them. */
int64_t nn_param_count(const nn_net *net);
int nn_find_param(const nn_net *net, const char *name);

/* Multiply-adds x 2 of one sample's forward pass (conv and linear layers). */
double nn_forward_flops(const nn_net *net);
/* The same for the backward pass (weight gradients, and input gradients
 * where they are needed). */
double nn_backward_flops(const nn_net *net);

#endif
