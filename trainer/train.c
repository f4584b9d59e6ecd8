/* train.c - a training step and an evaluation pass (see train.h). */
#include "trainer/train.h"

#include <string.h>

#include "common/error.h"

static int images(const coemunet *m) { return m->net.batch * m->cfg.nfreq; }

static size_t target_floats(const coemunet *m, int samples) {
  return (size_t)samples * (size_t)m->net.nodes[m->output].size;
}

int trainer_init(trainer *t, coemunet *model, adam *opt) {
  memset(t, 0, sizeof *t);
  if (!model->net.batch) return ce_err("trainer: set the model's batch size first");
  if (opt && opt->be != model->net.be)
    return ce_err("trainer: the optimiser runs on backend '%s', the model on '%s'", opt->be->name,
                  model->net.be->name);
  t->model = model;
  t->opt = opt;
  t->be = model->net.be;
  t->cap = model->net.batch;
  t->loss = t->be->loss_create(model->cfg.grid, model->cfg.grid, images(model));
  if (!t->loss) return -1;
  t->target = nn_alloc(&model->net, target_floats(model, t->cap), "trainer targets");
  if (!t->target) {
    trainer_free(t);
    return -1;
  }
  return 0;
}

void trainer_free(trainer *t) {
  if (t->be) {
    if (t->loss) t->be->loss_destroy(t->loss);
    if (t->target) t->be->free(t->target);
  }
  memset(t, 0, sizeof *t);
}

static int check_batch(const trainer *t) {
  if (t->model->net.batch > t->cap)
    return ce_err("trainer: batch %d, the trainer was made for at most %d", t->model->net.batch,
                  t->cap);
  return 0;
}

/* The backend's loss of the output against t->target over the first
 * `samples` samples (grad: the output's gradient, the seed). */
static int loss_on_device(trainer *t, int samples, float seed_scale, loss_value *out, int grad) {
  nn_net *net = &t->model->net;
  return t->be->loss_eval(t->loss, nn_out(net, t->model->output), t->target,
                          samples * t->model->cfg.nfreq, seed_scale, out,
                          grad ? nn_grad(net, t->model->output) : NULL);
}

/* The targets into backend memory, then loss_on_device. */
static int loss_of(trainer *t, const float *target, int samples, float seed_scale,
                   loss_value *out, int grad) {
  nn_net *net = &t->model->net;
  CE_TRY(nn_upload(net, t->target, target, target_floats(t->model, net->batch)));
  return loss_on_device(t, samples, seed_scale, out, grad);
}

/* Replicas (nn.h, nn_reducer): the global-batch loss is sum_r (n_r / n) L_r
 * with L_r the mean over replica r's n_r samples and n = sum n_r. Backprop is
 * linear in the seed, synchronised BatchNorm included, so seeding replica r
 * with (n_r world / n) dL_r/dy and averaging the summed parameter gradients
 * by world (nn_reduce_grads) gives dL/dw. Equal batches: the factor is 1.
 * The sum comes after the forward's and before the backward's, in the same
 * place on every replica (backend.h lists the order). */
static int seed_scale(trainer *t, float *f) {
  nn_net *net = &t->model->net;
  const nn_reducer *r = nn_get_reducer(net);
  double n = net->batch;
  if (r->sum_f64(r->ctx, &n, 1) < 0)
    return ce_err_prefix("summing the batch size over %d replicas", r->world);
  *f = (float)((double)net->batch * r->world / n);
  return 0;
}

/* The step once the input node and t->target hold the batch. */
static int step_on_device(trainer *t, double lr, loss_value *out) {
  nn_net *net = &t->model->net;
  float f = 1.0f;
  CE_TRY(nn_forward(net, 1));
  if (nn_get_reducer(net)) CE_TRY(seed_scale(t, &f));
  CE_TRY(loss_on_device(t, net->batch, f, out, 1));
  CE_TRY(nn_zero_grad(net));
  CE_TRY(nn_backward(net));
  CE_TRY(nn_reduce_grads(net));
  return adam_step(t->opt, net, lr);
}

int trainer_step(trainer *t, const float *x, const float *target, double lr, loss_value *out) {
  nn_net *net = &t->model->net;
  if (!t->opt) return ce_err("trainer_step: this trainer has no optimiser (evaluation only)");
  CE_TRY(check_batch(t));
  CE_TRY(nn_input_upload(net, t->model->input, x));
  CE_TRY(nn_upload(net, t->target, target, target_floats(t->model, net->batch)));
  return step_on_device(t, lr, out);
}

int trainer_step_raw(trainer *t, const float *x_raw, const float *target_raw,
                     const stats_norm *norm, double lr, loss_value *out) {
  nn_net *net = &t->model->net;
  if (!t->opt) return ce_err("trainer_step_raw: this trainer has no optimiser (evaluation only)");
  CE_TRY(check_batch(t));
  const int g = t->model->cfg.grid;
  float *x = nn_out(net, t->model->input);
  if (norm) {
    CE_TRY(t->be->normalise_inputs(norm, x_raw, x, net->batch, (size_t)g * g * g));
    CE_TRY(t->be->normalise_targets(norm, target_raw, t->target, net->batch,
                                    target_floats(t->model, 1)));
  } else {
    CE_TRY(t->be->copy(x, x_raw, sizeof(float) * (size_t)net->nodes[t->model->input].size *
                                     (size_t)net->batch));
    CE_TRY(t->be->copy(t->target, target_raw,
                       sizeof(float) * target_floats(t->model, net->batch)));
  }
  return step_on_device(t, lr, out);
}

int trainer_eval(trainer *t, const float *x, const float *target, loss_value *out) {
  nn_net *net = &t->model->net;
  CE_TRY(check_batch(t));
  CE_TRY(nn_input_upload(net, t->model->input, x));
  CE_TRY(nn_forward(net, 0));
  return loss_of(t, target, net->batch, 1.0f, out, 0);
}

int trainer_loss(trainer *t, const float *target, int samples, loss_value *out) {
  CE_TRY(check_batch(t));
  if (samples < 1 || samples > t->model->net.batch)
    return ce_err("trainer_loss: %d samples, the batch has %d", samples, t->model->net.batch);
  return loss_of(t, target, samples, 1.0f, out, 0);
}
