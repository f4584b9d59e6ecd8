/* train.c - a training step and an evaluation pass (see train.h). */
#include "trainer/train.h"

#include <string.h>

#include "common/error.h"

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

/* Replicas (nn.h, nn_reducer): the global-batch loss is sum_r (n_r / n) L_r
 * with L_r the mean over replica r's n_r samples and n = sum n_r. Backprop is
 * linear in the seed, synchronised BatchNorm included, so seeding replica r
 * with (n_r world / n) dL_r/dy and averaging the summed parameter gradients
 * by world (nn_reduce_grads) gives dL/dw. Equal batches: the factor is 1. */
static int scale_seed(trainer *t) {
  nn_net *net = &t->model->net;
  const nn_reducer *r = nn_get_reducer(net);
  double n = net->batch;
  if (r->sum_f64(r->ctx, &n, 1) < 0)
    return ce_err_prefix("summing the batch size over %d replicas", r->world);
  const float f = (float)((double)net->batch * r->world / n);
  if (f != 1.0f) {
    float *g = nn_grad(net, t->model->output);
    const long len = (long)net->batch * net->nodes[t->model->output].size;
    for (long i = 0; i < len; i++) g[i] *= f;
  }
  return 0;
}

int trainer_step(trainer *t, const float *x, const float *target, double lr, loss_value *out) {
  nn_net *net = &t->model->net;
  const int parallel = nn_get_reducer(net) != NULL;
  CE_TRY(forward_loss(t, x, target, 1, out, nn_grad(net, t->model->output)));
  if (parallel) CE_TRY(scale_seed(t));
  nn_zero_grad(net);
  CE_TRY(nn_backward(net));
  if (parallel) CE_TRY(nn_reduce_grads(net));
  adam_step(t->opt, net, lr);
  return 0;
}

int trainer_eval(trainer *t, const float *x, const float *target, loss_value *out) {
  return forward_loss(t, x, target, 0, out, NULL);
}
