/* nn.c - the network graph: builders with shape checks, parameters and their
 * initialisation, activation storage, and the forward/backward drivers. The
 * arithmetic is in the backend (layers_cpu.c). */
#include "trainer/nn.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/rng.h"

void nn_init(nn_net *net) {
  memset(net, 0, sizeof *net);
  net->be = &nn_backend_cpu;
}

static void free_activations(nn_net *net) {
  for (int i = 0; i < net->nnodes; i++) {
    nn_node *nd = &net->nodes[i];
    if (nd->kind != NN_VIEW) {
      free(nd->out);
      free(nd->grad);
    }
    nd->out = nd->grad = NULL;
  }
  free(net->work);
  net->work = NULL;
  net->work_n = 0;
  net->batch = 0;
}

void nn_free(nn_net *net) {
  free_activations(net);
  for (int i = 0; i < net->nnodes; i++) free(net->nodes[i].save);
  for (int i = 0; i < net->nparams; i++) free(net->params[i].w);
  free(net->grad_block);
  free(net->nodes);
  free(net->params);
  memset(net, 0, sizeof *net);
}

/* ---- building ----------------------------------------------------------- */

static int check_node(const nn_net *net, int x, const char *name) {
  if (x < 0 || x >= net->nnodes)
    return ce_err("layer '%s': input node %d does not exist (net has %d nodes)", name, x,
                  net->nnodes);
  return 0;
}

static int new_node(nn_net *net, nn_kind kind, const char *name, const int *in, int nin, int c,
                    int d, int h, int w) {
  if (net->finalized) return ce_err("layer '%s': the net is already finalised", name);
  if (strlen(name) >= NN_NAME) return ce_err("layer name '%s' longer than %d bytes", name, NN_NAME - 1);
  for (int i = 0; i < nin; i++) CE_TRY(check_node(net, in[i], name));
  if (c < 1 || d < 1 || h < 1 || w < 1)
    return ce_err("layer '%s': output shape (%d, %d, %d, %d) has an empty axis", name, c, d, h, w);
  if (net->nnodes == net->node_cap) {
    int cap = net->node_cap ? 2 * net->node_cap : 64;
    nn_node *n2 = realloc(net->nodes, sizeof *n2 * cap);
    if (!n2) return ce_err("out of memory growing the layer list");
    net->nodes = n2;
    net->node_cap = cap;
  }
  nn_node *nd = &net->nodes[net->nnodes];
  memset(nd, 0, sizeof *nd);
  nd->kind = kind;
  snprintf(nd->name, sizeof nd->name, "%s", name);
  nd->nin = nin;
  nd->needs_grad = 0;
  for (int i = 0; i < nin; i++) {
    nd->in[i] = in[i];
    if (net->nodes[in[i]].needs_grad) nd->needs_grad = 1;
  }
  nd->c = c; nd->d = d; nd->h = h; nd->w = w;
  nd->size = (int64_t)c * d * h * w;
  return net->nnodes++;
}

static int new_param(nn_net *net, const char *layer, const char *what, int ndim,
                     const int64_t *shape, int trainable, int64_t fan_in) {
  if (net->nparams == net->param_cap) {
    int cap = net->param_cap ? 2 * net->param_cap : 64;
    nn_param *p2 = realloc(net->params, sizeof *p2 * cap);
    if (!p2) return ce_err("out of memory growing the parameter list");
    net->params = p2;
    net->param_cap = cap;
  }
  nn_param *p = &net->params[net->nparams];
  memset(p, 0, sizeof *p);
  if (snprintf(p->name, sizeof p->name, "%s.%s", layer, what) >= (int)sizeof p->name)
    return ce_err("parameter name '%s.%s' too long", layer, what);
  p->ndim = ndim;
  p->n = 1;
  for (int i = 0; i < ndim; i++) {
    p->shape[i] = shape[i];
    p->n *= shape[i];
  }
  p->trainable = trainable;
  p->used = 1;
  p->fan_in = fan_in;
  return net->nparams++;
}

int nn_input(nn_net *net, const char *name, int c, int d, int h, int w) {
  return new_node(net, NN_INPUT, name, NULL, 0, c, d, h, w);
}

static int out_len(const char *name, const char *axis, int n, int k, int s, int p, int *out) {
  if (k < 1 || s < 1 || p < 0)
    return ce_err("layer '%s': %s: kernel %d, stride %d, padding %d: expected kernel >= 1, "
                  "stride >= 1, padding >= 0", name, axis, k, s, p);
  if (n + 2 * p < k)
    return ce_err("layer '%s': %s: input %d + 2*padding %d is smaller than the kernel %d", name,
                  axis, n, p, k);
  *out = (n + 2 * p - k) / s + 1;
  return 0;
}

int nn_conv(nn_net *net, const char *name, int x, int cout, nn_int3 k, nn_int3 s, nn_int3 p) {
  CE_TRY(check_node(net, x, name));
  const int cin = net->nodes[x].c; /* a copy: new_node() may move the node list */
  static const char *axes[3] = {"depth", "height", "width"};
  int n[3] = {net->nodes[x].d, net->nodes[x].h, net->nodes[x].w}, o[3];
  for (int a = 0; a < 3; a++) {
    if (p.v[a] == NN_PAD_SAME) {
      if (s.v[a] != 1 || k.v[a] % 2 == 0)
        return ce_err("layer '%s': %s: 'same' padding needs stride 1 and an odd kernel "
                      "(got stride %d, kernel %d)", name, axes[a], s.v[a], k.v[a]);
      p.v[a] = (k.v[a] - 1) / 2;
    }
    CE_TRY(out_len(name, axes[a], n[a], k.v[a], s.v[a], p.v[a], &o[a]));
  }
  if (cout < 1) return ce_err("layer '%s': %d output channels, expected >= 1", name, cout);
  int id = new_node(net, NN_CONV, name, &x, 1, cout, o[0], o[1], o[2]);
  if (id < 0) return -1;
  nn_node *nd = &net->nodes[id];
  nd->k = k; nd->s = s; nd->p = p;
  int64_t fan_in = (int64_t)cin * k.v[0] * k.v[1] * k.v[2];
  int64_t wshape[5] = {cout, cin, k.v[0], k.v[1], k.v[2]}, bshape[1] = {cout};
  int pw = new_param(net, name, "weight", 5, wshape, 1, fan_in);
  int pb = pw < 0 ? -1 : new_param(net, name, "bias", 1, bshape, 1, fan_in);
  if (pb < 0) return -1;
  nd = &net->nodes[id];
  nd->param[0] = pw; nd->param[1] = pb; nd->nparam = 2;
  nd->needs_grad = 1;
  return id;
}

int nn_batchnorm(nn_net *net, const char *name, int x) {
  CE_TRY(check_node(net, x, name));
  const nn_node in = net->nodes[x];
  int id = new_node(net, NN_BATCHNORM, name, &x, 1, in.c, in.d, in.h, in.w);
  if (id < 0) return -1;
  int64_t shape[1] = {in.c};
  int pg = new_param(net, name, "weight", 1, shape, 1, 0);
  int pb = pg < 0 ? -1 : new_param(net, name, "bias", 1, shape, 1, 0);
  int pm = pb < 0 ? -1 : new_param(net, name, "running_mean", 1, shape, 0, 0);
  int pv = pm < 0 ? -1 : new_param(net, name, "running_var", 1, shape, 0, 0);
  if (pv < 0) return -1;
  nn_node *nd = &net->nodes[id];
  nd->param[0] = pg; nd->param[1] = pb; nd->param[2] = pm; nd->param[3] = pv;
  nd->nparam = 4;
  nd->needs_grad = 1;
  nd->momentum = 0.1f;
  nd->eps = 1e-5f;
  return id;
}

static int unary(nn_net *net, nn_kind kind, const char *name, int x) {
  CE_TRY(check_node(net, x, name));
  const nn_node in = net->nodes[x];
  return new_node(net, kind, name, &x, 1, in.c, in.d, in.h, in.w);
}

int nn_relu(nn_net *net, const char *name, int x) { return unary(net, NN_RELU, name, x); }
int nn_tanh(nn_net *net, const char *name, int x) { return unary(net, NN_TANH, name, x); }

int nn_maxpool(nn_net *net, const char *name, int x, int k) {
  CE_TRY(check_node(net, x, name));
  const nn_node in = net->nodes[x];
  if (k < 1 || in.d < k || in.h < k || in.w < k)
    return ce_err("layer '%s': pooling kernel %d does not fit the input (%d, %d, %d)", name, k,
                  in.d, in.h, in.w);
  int id = new_node(net, NN_MAXPOOL, name, &x, 1, in.c, in.d / k, in.h / k, in.w / k);
  if (id >= 0) net->nodes[id].k = net->nodes[id].s = NN_K3(k, k, k);
  return id;
}

int nn_linear(nn_net *net, const char *name, int x, int out) {
  CE_TRY(check_node(net, x, name));
  int64_t fan_in = net->nodes[x].size;
  if (out < 1) return ce_err("layer '%s': %d outputs, expected >= 1", name, out);
  int id = new_node(net, NN_LINEAR, name, &x, 1, out, 1, 1, 1);
  if (id < 0) return -1;
  int64_t wshape[2] = {out, fan_in}, bshape[1] = {out};
  int pw = new_param(net, name, "weight", 2, wshape, 1, fan_in);
  int pb = pw < 0 ? -1 : new_param(net, name, "bias", 1, bshape, 1, fan_in);
  if (pb < 0) return -1;
  nn_node *nd = &net->nodes[id];
  nd->param[0] = pw; nd->param[1] = pb; nd->nparam = 2;
  nd->needs_grad = 1;
  return id;
}

int nn_upsample(nn_net *net, const char *name, int x, nn_int3 f) {
  CE_TRY(check_node(net, x, name));
  const nn_node in = net->nodes[x];
  if (f.v[0] < 1 || f.v[1] < 1 || f.v[2] < 1)
    return ce_err("layer '%s': upsampling factors (%d, %d, %d), expected >= 1", name, f.v[0],
                  f.v[1], f.v[2]);
  int id = new_node(net, NN_UPSAMPLE, name, &x, 1, in.c, in.d * f.v[0], in.h * f.v[1],
                    in.w * f.v[2]);
  if (id >= 0) net->nodes[id].s = f;
  return id;
}

int nn_add(nn_net *net, const char *name, int a, int b) {
  CE_TRY(check_node(net, a, name));
  CE_TRY(check_node(net, b, name));
  const nn_node A = net->nodes[a], B = net->nodes[b];
  if (A.c != B.c || A.d != B.d || A.h != B.h || A.w != B.w)
    return ce_err("layer '%s': cannot add '%s' (%d, %d, %d, %d) and '%s' (%d, %d, %d, %d)", name,
                  A.name, A.c, A.d, A.h, A.w, B.name, B.c, B.d, B.h, B.w);
  int in[2] = {a, b};
  return new_node(net, NN_ADD, name, in, 2, A.c, A.d, A.h, A.w);
}

int nn_concat(nn_net *net, const char *name, const int *xs, int n) {
  if (n < 1 || n > NN_MAX_IN)
    return ce_err("layer '%s': %d inputs to concatenate, expected 1..%d", name, n, NN_MAX_IN);
  int c = 0;
  for (int i = 0; i < n; i++) {
    CE_TRY(check_node(net, xs[i], name));
    const nn_node *a = &net->nodes[xs[i]], *b = &net->nodes[xs[0]];
    if (a->d != b->d || a->h != b->h || a->w != b->w)
      return ce_err("layer '%s': input '%s' is (%d, %d, %d) spatially, '%s' is (%d, %d, %d)",
                    name, a->name, a->d, a->h, a->w, b->name, b->d, b->h, b->w);
    c += a->c;
  }
  const nn_node b = net->nodes[xs[0]];
  return new_node(net, NN_CONCAT, name, xs, n, c, b.d, b.h, b.w);
}

int nn_view(nn_net *net, const char *name, int x, int c, int d, int h, int w) {
  CE_TRY(check_node(net, x, name));
  int64_t n = (int64_t)c * d * h * w;
  if (n != net->nodes[x].size)
    return ce_err("layer '%s': view (%d, %d, %d, %d) has %lld elements, input '%s' has %lld", name,
                  c, d, h, w, (long long)n, net->nodes[x].name, (long long)net->nodes[x].size);
  return new_node(net, NN_VIEW, name, &x, 1, c, d, h, w);
}

int nn_slice(nn_net *net, const char *name, int x, int c0, int c) {
  CE_TRY(check_node(net, x, name));
  const nn_node in = net->nodes[x];
  if (c0 < 0 || c < 1 || c0 + c > in.c)
    return ce_err("layer '%s': channels [%d, %d) outside the input's %d channels", name, c0, c0 + c,
                  in.c);
  int id = new_node(net, NN_SLICE, name, &x, 1, c, in.d, in.h, in.w);
  if (id >= 0) net->nodes[id].slice0 = c0;
  return id;
}

void nn_param_set_unused(nn_net *net, int param) { net->params[param].used = 0; }

/* ---- parameters --------------------------------------------------------- */

#define GRAD_ALIGN 16 /* floats: 64 bytes */

static size_t aligned_len(int64_t n) {
  return ((size_t)n + GRAD_ALIGN - 1) / GRAD_ALIGN * GRAD_ALIGN;
}

/* All trainable gradients in one block, the used parameters first, so that
 * nn_reduce_grads() can hand the block to the reducer as it is. */
static int alloc_grads(nn_net *net) {
  size_t total = 0;
  for (int i = 0; i < net->nparams; i++)
    if (net->params[i].trainable) total += aligned_len(net->params[i].n);
  if (!total) return 0;
  net->grad_block = aligned_alloc(64, sizeof(float) * total);
  if (!net->grad_block)
    return ce_err("out of memory for %zu floats of parameter gradients", total);
  memset(net->grad_block, 0, sizeof(float) * total);
  size_t off = 0;
  for (int pass = 1; pass >= 0; pass--) /* used, then unused */
    for (int i = 0; i < net->nparams; i++) {
      nn_param *p = &net->params[i];
      if (!p->trainable || (p->used != 0) != pass) continue;
      p->g = net->grad_block + off;
      off += aligned_len(p->n);
      if (pass) net->grad_used_n = off;
    }
  return 0;
}

int nn_finalize(nn_net *net, uint64_t seed) {
  if (net->finalized) return ce_err("nn_finalize: the net is already finalised");
  for (int i = 0; i < net->nparams; i++) {
    nn_param *p = &net->params[i];
    p->w = ce_malloc_array((size_t)p->n, sizeof(float), p->name);
    if (!p->w) return -1;
  }
  CE_TRY(alloc_grads(net));
  net->finalized = 1;
  nn_init_params(net, seed);
  /* nodes' saved state (BatchNorm: batch mean and 1/std per channel) */
  for (int i = 0; i < net->nnodes; i++) {
    nn_node *nd = &net->nodes[i];
    if (nd->kind == NN_BATCHNORM) {
      nd->save = ce_calloc_array((size_t)2 * nd->c, sizeof(float), nd->name);
      if (!nd->save) return -1;
    }
  }
  return 0;
}

void nn_init_params(nn_net *net, uint64_t seed) {
  for (int i = 0; i < net->nparams; i++) {
    nn_param *p = &net->params[i];
    const char *what = strrchr(p->name, '.') + 1;
    float fill = -1;
    if (p->fan_in == 0) /* BatchNorm */
      fill = (!strcmp(what, "weight") || !strcmp(what, "running_var")) ? 1.0f : 0.0f;
    if (fill >= 0) {
      for (int64_t j = 0; j < p->n; j++) p->w[j] = fill;
    } else {
      ce_rng r = ce_rng_make(seed, (uint32_t)i, 0, 7);
      double bound = 1.0 / sqrt((double)p->fan_in);
      for (int64_t j = 0; j < p->n; j++) p->w[j] = (float)((2 * ce_rng_uniform(&r) - 1) * bound);
    }
  }
}

int64_t nn_param_count(const nn_net *net) {
  int64_t n = 0;
  for (int i = 0; i < net->nparams; i++)
    if (net->params[i].trainable) n += net->params[i].n;
  return n;
}

int nn_find_param(const nn_net *net, const char *name) {
  for (int i = 0; i < net->nparams; i++)
    if (!strcmp(net->params[i].name, name)) return i;
  return -1;
}

/* ---- activations -------------------------------------------------------- */

int nn_set_batch(nn_net *net, int n) {
  if (!net->finalized) return ce_err("nn_set_batch: finalise the net first");
  if (n < 1) return ce_err("batch size %d, expected >= 1", n);
  if (n == net->batch) return 0;
  free_activations(net);
  for (int i = 0; i < net->nnodes; i++) {
    nn_node *nd = &net->nodes[i];
    if (nd->kind == NN_VIEW) continue;
    size_t count;
    if (ce_mul_size((size_t)n, (size_t)nd->size, &count) < 0)
      return ce_err("layer '%s': batch %d x %lld elements overflows", nd->name, n,
                    (long long)nd->size);
    nd->out = ce_calloc_array(count, sizeof(float), nd->name);
    if (!nd->out) return -1;
    if (nd->needs_grad) {
      nd->grad = ce_calloc_array(count, sizeof(float), nd->name);
      if (!nd->grad) return -1;
    }
  }
  for (int i = 0; i < net->nnodes; i++) { /* views share their input's memory */
    nn_node *nd = &net->nodes[i];
    if (nd->kind == NN_VIEW) {
      nd->out = net->nodes[nd->in[0]].out;
      nd->grad = net->nodes[nd->in[0]].grad;
    }
  }
  net->batch = n;
  size_t work = 0;
  for (int i = 0; i < net->nnodes; i++) {
    size_t w = net->be->workspace(net, &net->nodes[i]);
    if (w > work) work = w;
  }
  if (work) {
    net->work = ce_malloc_array(work, sizeof(float), "layer scratch");
    if (!net->work) return -1;
    net->work_n = work;
  }
  return 0;
}

/* ---- running ------------------------------------------------------------ */

int nn_forward(nn_net *net, int train) {
  if (!net->batch) return ce_err("nn_forward: call nn_set_batch first");
  net->train = train;
  for (int i = 0; i < net->nnodes; i++) {
    nn_node *nd = &net->nodes[i];
    if (nd->kind == NN_INPUT || nd->kind == NN_VIEW) continue;
    if (net->be->forward(net, nd, train) < 0)
      return ce_err_prefix("forward of layer '%s'", nd->name);
  }
  return 0;
}

void nn_seed_grad(nn_net *net, int node) {
  /* a view shares its input's gradient buffer: protect that one from zeroing */
  for (int i = node;; i = net->nodes[i].in[0]) {
    net->nodes[i].seed_grad = 1;
    if (net->nodes[i].kind != NN_VIEW) break;
  }
}

void nn_zero_grad(nn_net *net) {
  for (int i = 0; i < net->nparams; i++)
    if (net->params[i].g) memset(net->params[i].g, 0, sizeof(float) * (size_t)net->params[i].n);
  for (int i = 0; i < net->nnodes; i++) {
    nn_node *nd = &net->nodes[i];
    if (nd->grad && !nd->seed_grad && nd->kind != NN_VIEW)
      memset(nd->grad, 0, sizeof(float) * (size_t)net->batch * (size_t)nd->size);
  }
}

int nn_backward(nn_net *net) {
  if (!net->batch) return ce_err("nn_backward: call nn_set_batch first");
  for (int i = net->nnodes - 1; i >= 0; i--) {
    nn_node *nd = &net->nodes[i];
    if (nd->kind == NN_INPUT || nd->kind == NN_VIEW || !nd->needs_grad) continue;
    if (net->be->backward(net, nd) < 0)
      return ce_err_prefix("backward of layer '%s'", nd->name);
  }
  return 0;
}

/* ---- data parallelism --------------------------------------------------- */

int nn_set_reducer(nn_net *net, const nn_reducer *r) {
  if (!r) {
    memset(&net->reducer, 0, sizeof net->reducer);
    return 0;
  }
  if (r->world < 1) return ce_err("reducer: world = %d replicas, expected >= 1", r->world);
  if (!r->sum_f64 || !r->sum_f32)
    return ce_err("reducer: sum_f64 and sum_f32 are both needed (%s is NULL)",
                  r->sum_f64 ? "sum_f32" : "sum_f64");
  net->reducer = *r;
  return 0;
}

int nn_reduce_grads(nn_net *net) {
  const nn_reducer *r = nn_get_reducer(net);
  if (!r) return 0;
  const size_t chunk = r->chunk ? r->chunk : NN_REDUCE_CHUNK;
  /* the padding between parameters is zero everywhere and stays zero */
  for (size_t off = 0; off < net->grad_used_n; off += chunk) {
    size_t n = net->grad_used_n - off < chunk ? net->grad_used_n - off : chunk;
    if (r->sum_f32(r->ctx, net->grad_block + off, n) < 0)
      return ce_err_prefix("summing parameter gradients [%zu, %zu) over %d replicas", off,
                           off + n, r->world);
  }
  if (r->world > 1) {
    const float world = (float)r->world;
    const long n = (long)net->grad_used_n;
    float *g = net->grad_block;
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) g[i] /= world;
  }
  return 0;
}

/* ---- cost --------------------------------------------------------------- */

static double gemm_flops(const nn_net *net, const nn_node *nd) {
  const nn_node *in = &net->nodes[nd->in[0]];
  if (nd->kind == NN_CONV)
    return 2.0 * nd->size * in->c * nd->k.v[0] * nd->k.v[1] * nd->k.v[2];
  if (nd->kind == NN_LINEAR) return 2.0 * nd->c * in->size;
  return 0;
}

double nn_forward_flops(const nn_net *net) {
  double f = 0;
  for (int i = 0; i < net->nnodes; i++) f += gemm_flops(net, &net->nodes[i]);
  return f;
}

double nn_backward_flops(const nn_net *net) {
  double f = 0;
  for (int i = 0; i < net->nnodes; i++) {
    const nn_node *nd = &net->nodes[i];
    double g = gemm_flops(net, nd);
    f += g; /* weight gradient */
    if (nd->nin && net->nodes[nd->in[0]].needs_grad) f += g; /* input gradient */
  }
  return f;
}
