/* train.h - one COEmuNet training step and batched evaluation, the pieces a
 * training loop (coemu train, later) and the benchmark are made of.
 *
 * Inputs are (N, 3, G, G, G) and targets (N, 1, F, G, G) float32 in
 * normalised units, host memory, N = the batch size set on the net
 * (nn_set_batch). Each step uploads them to the model's backend (two
 * uploads, no download: the loss value comes back as loss_value).
 */
#ifndef COEMU_TRAIN_H
#define COEMU_TRAIN_H

#include "trainer/coemunet.h"
#include "trainer/loss.h"
#include "trainer/optim.h"

typedef struct {
  coemunet *model;
  adam *opt;
  const nn_backend *be; /* the model's: it runs the loss and holds the targets */
  void *loss;           /* the backend's loss (nn_backend.loss_create) */
  float *target;        /* backend memory for `cap` samples' targets */
  int cap;              /* the batch size at trainer_init: the most samples per call */
} trainer;

/* A trainer for the model at its current batch size (makes the loss and the
 * target buffer; later batches may be smaller, not larger). opt may be NULL
 * for evaluation only (no trainer_step). */
int trainer_init(trainer *t, coemunet *model, adam *opt);
void trainer_free(trainer *t);

/* forward (train mode) + loss + backward + Adam update with rate lr.
 * With a reducer on the net (nn_set_reducer, data parallelism): BatchNorm
 * uses the global batch's statistics, the loss gradient is weighted by this
 * replica's share of the global batch, and the parameter gradients are
 * averaged across replicas (nn_reduce_grads) before the update, so every
 * replica takes the step of the global-batch mean loss; each replica calls
 * it in lockstep. *out stays the loss of the local batch: the caller
 * combines the replicas' values (weighted by their batch sizes). */
int trainer_step(trainer *t, const float *x, const float *target, double lr, loss_value *out);

/* The same step from a batch already in backend memory (the input feed's
 * buffers, uploaded with upload_async and waited for), the values as stored:
 * normalised on the backend with norm (nn_backend.normalise_inputs /
 * normalise_targets: the host's stats_norm_* bit for bit on the CPU), or
 * taken as they are when norm is NULL (already normalised). */
int trainer_step_raw(trainer *t, const float *x_raw, const float *target_raw,
                     const stats_norm *norm, double lr, loss_value *out);

/* forward in evaluation mode (running BatchNorm statistics) + loss; the
 * prediction stays in nn_out(&model->net, model->output) (backend memory:
 * nn_out_download copies it out). */
int trainer_eval(trainer *t, const float *x, const float *target, loss_value *out);

/* The loss of the prediction now in the model's output against target (host
 * memory, net->batch samples), over its first `samples` samples
 * (1..batch); no gradient. For evaluation passes that time the forward
 * apart (pipeline/train/evaluate.c). */
int trainer_loss(trainer *t, const float *target, int samples, loss_value *out);

#endif
