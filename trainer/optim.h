/* optim.h - Adam and its weight-decay variants, and the StepLR schedule,
 * with PyTorch's update rules (torch.optim.Adam / AdamW, StepLR):
 *
 *   t += 1; g = grad (+ wd * w for ADAM_L2)
 *   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
 *   (ADAMW: w *= 1 - lr * wd)
 *   w -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
 *
 * Parameters that are not trainable (BatchNorm running statistics) or not
 * used (nn_param.used = 0: PyTorch's grad None) are left alone.
 *
 * The moments are backend memory (backend.h) of the net's backend, which
 * also runs the update (nn_backend.adam_update); the step count, the bias
 * corrections and the learning rate are the host's.
 */
#ifndef COEMU_OPTIM_H
#define COEMU_OPTIM_H

#include <stdint.h>

#include "trainer/nn.h"

typedef enum {
  ADAM = 0,    /* no weight decay */
  ADAM_L2 = 1, /* "Adam with weight_decay": wd * w added to the gradient */
  ADAMW = 2    /* decoupled weight decay (Loshchilov & Hutter) */
} adam_kind;

typedef struct {
  adam_kind kind;
  double lr, beta1, beta2, eps, weight_decay;
} adam_config;

/* Reference-code defaults: Adam, lr 4e-4, betas (0.9, 0.999), eps 1e-8, no decay. */
adam_config adam_default(void);
const char *adam_kind_name(adam_kind k);

typedef struct {
  adam_config cfg;
  int64_t t;     /* steps taken */
  int nparams;
  float **m, **v; /* per parameter (NULL for those the optimiser skips); backend memory */
  const nn_backend *be; /* the net's, which holds m and v */
} adam;

int adam_init(adam *o, const nn_net *net, const adam_config *cfg);
void adam_free(adam *o);
/* One update of every trainable, used parameter with learning rate lr. */
int adam_step(adam *o, nn_net *net, double lr);
/* The coefficients of the update after t steps at learning rate lr. */
nn_adam_coef adam_coef(const adam_config *cfg, int64_t t, double lr);
/* 1 if the optimiser keeps state for parameter i. */
int adam_has_state(const adam *o, int i);

/* StepLR: lr = lr0 * gamma^floor(epoch / step_size). */
typedef struct {
  double lr0, gamma;
  int step_size;
} steplr;
double steplr_lr(const steplr *s, int epoch);

#endif
