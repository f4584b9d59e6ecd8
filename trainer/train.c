/* train.c - a training step and an evaluation pass (see train.h). */
#include "train.h"

#include <string.h>

#include "error.h"

static int images(const coemunet *m) { return m->net.batch * m->cfg.nfreq; }

int trainer_init(trainer *t, coemunet *model, adam *opt) {
  memset(t, 0, sizeof *t);
  if (!model->net.batch) return ce_err("trainer: set the model's batch size first");
  t->model = model;
  t->opt = opt;
  t->loss = loss_create(model->cfg.grid, model->cfg.grid, images(model));
  return t->loss ? 0 : -1;
}

void trainer_free(trainer *t) {
  loss_destroy(t->loss);
  memset(t, 0, sizeof *t);
}

static int forward_loss(trainer *t, const float *x, const float *target, int train,
                        loss_value *out, float *grad) {
  nn_net *net = &t->model->net;
  const nn_node *in = &net->nodes[t->model->input];
  memcpy(in->out, x, sizeof(float) * (size_t)net->batch * (size_t)in->size);
  CE_TRY(nn_forward(net, train));
  return loss_eval(t->loss, nn_out(net, t->model->output), target, images(t->model), out, grad);
}

int trainer_step(trainer *t, const float *x, const float *target, double lr, loss_value *out) {
  nn_net *net = &t->model->net;
  CE_TRY(forward_loss(t, x, target, 1, out, nn_grad(net, t->model->output)));
  nn_zero_grad(net);
  CE_TRY(nn_backward(net));
  adam_step(t->opt, net, lr);
  return 0;
}

int trainer_eval(trainer *t, const float *x, const float *target, loss_value *out) {
  return forward_loss(t, x, target, 0, out, NULL);
}
