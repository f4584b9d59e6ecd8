/* train.h - one COEmuNet training step and batched evaluation, the pieces a
 * training loop (coemu train, later) and the benchmark are made of.
 *
 * Inputs are (N, 3, G, G, G) and targets (N, 1, F, G, G) float32 in
 * normalised units, N = the batch size set on the net (nn_set_batch).
 */
#ifndef COEMU_TRAIN_H
#define COEMU_TRAIN_H

#include "trainer/coemunet.h"
#include "trainer/loss.h"
#include "trainer/optim.h"

typedef struct {
  coemunet *model;
  adam *opt;
  coemu_loss *loss;
} trainer;

/* A trainer for the model at its current batch size (makes the loss). */
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

/* forward in evaluation mode (running BatchNorm statistics) + loss; the
 * prediction stays in nn_out(&model->net, model->output). */
int trainer_eval(trainer *t, const float *x, const float *target, loss_value *out);

#endif
