/* backend.h - the seam between the trainer and the hardware it runs on.
 *
 * One interface, one file per implementation (as redis' ae_*.c event loops
 * or SQLite's VFS): a backend is a table of functions, nn_backend, and a net
 * runs on the table its nn_net.be points to. backend_cpu.c is the CPU
 * reference (the kernels of layers_cpu.c and loss.c, OpenBLAS, OpenMP); a
 * CUDA backend (trainer/cuda/, later) provides the same table with the same
 * arguments, as llm.c keeps a plain CPU reference beside each CUDA kernel.
 *
 * What a backend owns:
 *   - memory: alloc / free / upload / download / copy / zero;
 *   - the layers: forward / backward / workspace per node;
 *   - the optimiser step: adam_update (the learning-rate schedule and the
 *     bias corrections stay on the host: optim.c computes nn_adam_coef);
 *   - the precision of convolutions and linear layers (precisions, and
 *     nn_net.precision read by forward / backward: precision.h);
 *   - the loss: loss_create / loss_eval / loss_destroy (value and dL/dy seed);
 *   - the gradient reduction across replicas: reduce_grads (nn_reduce_grads);
 *   - process setup: init(threads) / finish();
 *   - the input feed: upload_async / upload_wait (copies overlapped with
 *     compute) and the normalisation of raw batches (normalise_inputs,
 *     normalise_targets; stats/norm_body.h);
 *   - the evaluation metrics of a batch (metrics; trainer/metrics_body.h).
 *
 * BACKEND MEMORY. These pointers are backend memory, allocated by be->alloc
 * and released by be->free; a device backend keeps them on the device and
 * host code never dereferences them:
 *   nn_param.w; nn_param.g (slices of nn_net.grad_block, one allocation);
 *   nn_node.out and nn_node.grad (a VIEW shares its input's); nn_node.save;
 *   nn_net.work; the Adam moments adam.m[i], adam.v[i]; trainer.target;
 *   the p, t and grad arguments of loss_eval.
 * Everything else is host memory: the graph (node and parameter lists,
 * names, shapes), nn_adam_coef, loss_value, the buffers handed to the
 * reducer's sums, and the data the caller uploads from or downloads into.
 * Host code reads and writes tensors only through upload / download (nn.h:
 * nn_input_upload, nn_out_download, nn_param_download, nn_download_chunks,
 * ...): checkpoints, initialisation, input copy-in, output copy-out, tests.
 * For the CPU backend these are memcpy; backend memory is 64-byte aligned
 * host memory. The checking backend of tests/trainer/test_backend.c keeps
 * it inaccessible (PROT_NONE) outside backend calls, so any host access
 * that bypasses the table faults.
 *
 * HOST SYNCHRONISATION. A device backend may queue work (one stream) as long
 * as the calls take effect in the order they are made. It must have
 * finished everything queued before it returns from:
 *   download (the host buffer holds the bytes), upload (the host buffer may
 *   be reused; queued work that reads dst sees the new bytes), upload_wait,
 *   loss_eval
 *   (loss_value is read on the host right away: once per step), every
 *   reducer call (the sums run on host buffers), finish and free.
 * The one exception is upload_async (the input feed's copies, overlapped
 * with compute): it returns once the copy is queued, on a queue of its own
 * that runs beside the compute. Until the next upload_wait returns:
 *   - the host must not write (or free) src: the copy may still read it;
 *   - no call may read or write dst: the bytes may not be there yet (the
 *     checking backend of tests/trainer/test_backend.c copies only in
 *     upload_wait and keeps src inaccessible until then, so breaking either
 *     rule changes a result or faults).
 * The copy starts after the work queued before the upload_async call (so
 * dst may be a buffer that work still reads). upload_wait blocks the host
 * until every upload_async so far is complete and orders the work queued
 * after it behind them. Usage (pipeline/train/trainrun.c): batch b+1 is
 * queued into the second of two backend buffers right after upload_wait of
 * batch b, and copies while step b computes.
 * Errors: every int function returns 0, or -1 with a message (error.h).
 *
 * REDUCER CALLS (data parallelism, nn.h nn_reducer; only when one is
 * installed). They are collectives: every replica makes the same calls in
 * the same order with the same counts. The sums take host buffers (MPI on
 * host memory): a device backend stages them through the host (download,
 * sum, upload) unless a later reducer says it takes device pointers (NCCL).
 *   forward, training mode, each BatchNorm node in graph order, unless
 *   reducer.local_batchnorm:
 *     1. sum_f64 of C+1 doubles: per-channel sums of x, then the local value
 *        count N*D*H*W; mean = sum / count;
 *     2. sum_f64 of C doubles: per-channel sums of (x - mean)^2 with the
 *        GLOBAL mean; var = that / count (population), running_var gets the
 *        unbiased one (count - 1);
 *   between forward and loss (trainer_step, not the backend): one sum_f64 of
 *     1 double, the local batch size, giving the seed scale of loss_eval;
 *   backward, each BatchNorm node in reverse graph order whose input needs a
 *   gradient, same condition as the forward:
 *     3. sum_f64 of 2C+1 doubles: per-channel sums of dy, of dy*xhat, the
 *        local value count; dgamma, dbeta keep the LOCAL sums;
 *   reduce_grads (nn_reduce_grads, after backward, before adam_update):
 *     4. sum_f32 over grad_block[0, grad_used_n) in ceil(n / chunk) calls of
 *        at most reducer.chunk floats, in order, then every value / world.
 *        With reducer.bucket > 0 instead: during the backward, each bucket
 *        of the plan (bucket.h) in plan order, right after its ready node's
 *        backward, in pieces of at most reducer.chunk floats; then, in
 *        reduce_grads, every value / world.
 * A reducer with device sums (dev_sum_f64 / dev_sum_f32: NCCL) takes the
 * backend's own memory: a device backend then makes calls 1-4 on device
 * buffers (the counts appended on the device) instead of staging them, and
 * need not synchronise the host for them.
 * The arithmetic between these calls is the CPU one of layers_cpu.h
 * (batchnorm_sums, batchnorm_sqdev, batchnorm_normalise,
 * batchnorm_backward_sums, batchnorm_backward_dx); docs/trainer.md derives it.
 */
#ifndef COEMU_BACKEND_H
#define COEMU_BACKEND_H

#include <stddef.h>

#include "stats/transforms.h"  /* stats_norm */
#include "trainer/precision.h" /* nn_precision, NN_PRECISION_BIT */

struct nn_net;
struct nn_node;
struct loss_value; /* loss.h */

/* One Adam / Adam+L2 / AdamW step's coefficients (optim.h has the rule),
 * computed on the host in double and rounded once:
 *   g' = g + l2 w;  m = b1 m + omb1 g';  v = b2 v + omb2 g'^2;
 *   w = w decay - step m / (sqrt(v) rbc2 + eps)                            */
typedef struct nn_adam_coef {
  float step;       /* lr / (1 - beta1^t) */
  float rbc2;       /* 1 / sqrt(1 - beta2^t) */
  float b1, b2;     /* beta1, beta2 */
  float omb1, omb2; /* 1 - beta1, 1 - beta2 (in double, then rounded) */
  float eps;
  float l2;         /* Adam+L2: weight decay added to the gradient; else 0 */
  float decay;      /* AdamW: 1 - lr weight_decay; else 1 */
} nn_adam_coef;

typedef struct nn_backend {
  const char *name;
  /* NN_PRECISION_BIT(p) for each precision p it runs besides float32
   * (precision.h); forward and backward read the net's (nn_net.precision)
   * and round the operands of convolutions and linear layers as precision.h
   * says, at the points it lists. */
  unsigned precisions;

  /* ---- process setup (nn_backend_init / nn_backend_finish in nn.h) ---- */
  /* Called before the first net is finalised on this backend, from the
   * thread that runs the nets; every init is paired with a finish. threads
   * > 0: the compute threads the command asked for; 0: keep the caller's
   * setting. The CPU backend: OpenBLAS to one thread (its sgemm calls run
   * inside the backend's OpenMP loops), OpenMP to `threads` when > 0; the
   * settings the first init replaced are restored by the last finish. */
  int (*init)(int threads);
  void (*finish)(void);

  /* ---- memory ---- */
  /* bytes of zero-filled backend memory, 64-byte aligned; NULL (and an
   * error message) when out of memory. free(NULL) does nothing. */
  void *(*alloc)(size_t bytes);
  void (*free)(void *p);
  int (*upload)(void *dst, const void *src, size_t bytes);   /* host -> backend */
  int (*download)(void *dst, const void *src, size_t bytes); /* backend -> host */
  int (*copy)(void *dst, const void *src, size_t bytes);     /* backend -> backend */
  int (*zero)(void *p, size_t bytes);

  /* ---- layers ---- */
  /* Compute node->out from its inputs' out (train: BatchNorm uses batch
   * statistics and updates the running ones; otherwise the running ones). */
  int (*forward)(struct nn_net *net, struct nn_node *node, int train);
  /* ADD this node's contributions to its inputs' grad (where needs_grad) and
   * to its parameters' gradients, given node->grad and the forward state. */
  int (*backward)(struct nn_net *net, struct nn_node *node);
  /* Scratch floats the node needs at the current batch size (net->work). */
  size_t (*workspace)(const struct nn_net *net, const struct nn_node *node);

  /* ---- optimiser ---- */
  /* One update of every parameter i with m[i] != NULL (the trainable, used
   * ones), from its gradient net->params[i].g; m[i], v[i]: its moments. */
  int (*adam_update)(struct nn_net *net, float *const *m, float *const *v, const nn_adam_coef *c);

  /* ---- loss (loss.h: 0.8 MSE + 0.2 mean |FFT2(t) - FFT2(p)|) ---- */
  /* A loss for up to max_images images of h x w; NULL with an error. */
  void *(*loss_create)(int h, int w, int max_images);
  void (*loss_destroy)(void *loss);
  /* The loss of p against t over m images (m <= max_images) into *out (host);
   * grad (NULL to skip) is overwritten with seed_scale x dL/dp (the scale
   * multiplies the float dL/dp when it is not 1: replicas' seeds, nn.h). */
  int (*loss_eval)(void *loss, const float *p, const float *t, int m, float seed_scale,
                   struct loss_value *out, float *grad);

  /* ---- data parallelism ---- */
  /* Sum the used gradients (grad_block[0, grad_used_n)) over the replicas of
   * the installed reducer and divide by world (call 4 above). With
   * reducer.bucket > 0 the sums were handed over bucket by bucket
   * (reduce_bucket): wait for them, then divide. */
  int (*reduce_grads)(struct nn_net *net);
  /* Sum grad_block[off, off + n) over the replicas (a bucket of bucket.h,
   * called by nn_backward as soon as its gradients are final; call 4 in
   * buckets). It may return before the sum is done (a device backend queues
   * it on a second stream after the backward work queued so far) as long as
   * reduce_grads waits for it and nothing writes the bucket before. */
  int (*reduce_bucket)(struct nn_net *net, size_t off, size_t n);

  /* ---- host staging ---- */
  /* bytes of zero-filled HOST memory, 64-byte aligned, that upload copies
   * from fastest: page-locked on a device backend (cudaHostAlloc, so the
   * copy is a DMA that needs no bounce buffer), plain aligned memory on the
   * CPU; the input feed's batch buffers (pipeline/train/feed.h). NULL with an
   * error when out of memory. host_free(NULL) does nothing. */
  void *(*host_alloc)(size_t bytes);
  void (*host_free)(void *p);

  /* ---- the input feed's copies and normalisation ---- */
  /* host -> backend, returning once queued (HOST SYNCHRONISATION above for
   * the rules); src: host_alloc memory (other host memory is allowed, but a
   * device backend may then copy synchronously). */
  int (*upload_async)(void *dst, const void *src, size_t bytes);
  /* Every upload_async so far is complete (its src may be reused) and the
   * work queued from now on sees its dst. */
  int (*upload_wait)(void);
  /* out = the normalisation of raw values as stored (transforms.h, the
   * dataset's /stats p), backend memory both (out == in allowed): inputs of
   * `samples` samples of [3][nvox] values, targets of `samples` samples of
   * nval values (all F channels: the zero fill is per sample). The
   * arithmetic is stats/norm_body.h's, so the result is the host's
   * stats_norm_inputs / stats_norm_targets bit for bit on the CPU. */
  int (*normalise_inputs)(const stats_norm *p, const float *in, float *out, int samples,
                          size_t nvox);
  int (*normalise_targets)(const stats_norm *p, const float *in, float *out, int samples,
                           size_t nval);

  /* ---- evaluation ---- */
  /* The per-sample metrics of metrics.h of pred against target (backend
   * memory, n samples of [f][h][w] normalised values; p: the dataset's
   * /stats, MaxRel's inverse transform) into out (HOST, METRICS_FIELDS n
   * doubles): out[k n + s] for k = METRICS_MAXREL, _ZNCC, _SSIM_I, _SSIM_R
   * (metrics.h); SSIM's data range per channel is over these n samples, and
   * is NaN when h or w < 11. The arithmetic is trainer/metrics_body.h's, so
   * on the CPU the values are metrics_maxrel / _zncc / _ssim's bit for bit.
   * A sample with no MaxRel (a pixel whose largest target is not > 0): -1
   * with metrics_maxrel's message. Returns once out holds the values. */
  int (*metrics)(const stats_norm *p, const float *pred, const float *target, int n, int f, int h,
                 int w, double *out);
} nn_backend;

/* The CPU reference (backend_cpu.c). */
extern const nn_backend nn_backend_cpu;

#endif
