/* nn.c - the network graph: builders with shape checks, parameters and their
 * initialisation, activation storage, and the forward/backward drivers. The
 * memory and the arithmetic are the backend's (backend.h; backend_cpu.c). */
#include "trainer/nn.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/rng.h"
#ifdef COEMU_HAVE_CUDA_TRAINER
#include "trainer/cuda/backend_cuda.h"
#endif

void nn_init(nn_net *net) {
  memset(net, 0, sizeof *net);
  net->be = &nn_backend_cpu;
}

/* ---- backends ----------------------------------------------------------- */

static const nn_backend *const built_backends[] = {
    &nn_backend_cpu,
#ifdef COEMU_HAVE_CUDA_TRAINER
    &nn_backend_cuda,
#endif
};
#define NN_NBUILT ((int)(sizeof built_backends / sizeof built_backends[0]))

const char *nn_backends_built(void) {
#ifdef COEMU_HAVE_CUDA_TRAINER
  return "cpu, cuda";
#else
  return "cpu";
#endif
}

const nn_backend *nn_backend_by_name(const char *name) {
  for (int i = 0; i < NN_NBUILT; i++)
    if (!strcmp(built_backends[i]->name, name)) return built_backends[i];
  if (!strcmp(name, "cuda"))
    ce_err("trainer backend 'cuda' is not built into this coemu (built: %s; it needs nvcc, "
           "cuDNN, cuBLAS and cuFFT at build time: meson setup -Dcuda=enabled)",
           nn_backends_built());
  else
    ce_err("trainer backend '%s': unknown (built: %s)", name, nn_backends_built());
  return NULL;
}

/* The backends whose init has run, with the count of inits not yet
 * finished (process-wide, like the settings init makes; used from the
 * thread that runs the nets). */
#define NN_MAX_BACKENDS 8
static struct {
  const nn_backend *be;
  int count;
} ready_backends[NN_MAX_BACKENDS];
static int nready_backends;

static int ready_slot(const nn_backend *be) {
  for (int i = 0; i < nready_backends; i++)
    if (ready_backends[i].be == be) return i;
  return -1;
}

int nn_backend_ready(const nn_backend *be) { return ready_slot(be) >= 0; }

int nn_backend_init(const nn_backend *be, int threads) {
  if (threads < 0) return ce_err("backend '%s': %d threads, expected >= 0", be->name, threads);
  int i = ready_slot(be);
  if (i < 0 && nready_backends == NN_MAX_BACKENDS)
    return ce_err("backend '%s': more than %d backends initialised", be->name, NN_MAX_BACKENDS);
  if (be->init(threads) < 0) return ce_err_prefix("initialising backend '%s'", be->name);
  if (i < 0) {
    i = nready_backends++;
    ready_backends[i].be = be;
    ready_backends[i].count = 0;
  }
  ready_backends[i].count++;
  return 0;
}

void nn_backend_finish(const nn_backend *be) {
  int i = ready_slot(be);
  if (i < 0) return;
  be->finish();
  if (--ready_backends[i].count == 0) ready_backends[i] = ready_backends[--nready_backends];
}

int nn_set_backend(nn_net *net, const nn_backend *be) {
  if (net->finalized || net->nparams || net->nnodes)
    return ce_err("nn_set_backend: choose the backend before building the net");
  net->be = be;
  return 0;
}

float *nn_alloc(const nn_net *net, size_t n, const char *what) {
  size_t bytes;
  if (ce_mul_size(n, sizeof(float), &bytes) < 0 || bytes > ce_alloc_limit()) {
    ce_err("%s: %zu floats exceed the allocation limit of %zu bytes", what, n, ce_alloc_limit());
    return NULL;
  }
  float *p = net->be->alloc(bytes ? bytes : sizeof(float));
  if (!p) ce_err_prefix("%s: %zu floats on backend '%s'", what, n, net->be->name);
  return p;
}

void nn_release(const nn_net *net, void *p) {
  if (p) net->be->free(p);
}

/* ---- host <-> backend copies -------------------------------------------- */

int nn_upload(const nn_net *net, float *dst, const float *src, size_t n) {
  if (net->be->upload(dst, src, sizeof(float) * n) < 0)
    return ce_err_prefix("copying %zu floats to backend '%s'", n, net->be->name);
  return 0;
}

int nn_download(const nn_net *net, float *dst, const float *src, size_t n) {
  if (net->be->download(dst, src, sizeof(float) * n) < 0)
    return ce_err_prefix("copying %zu floats from backend '%s'", n, net->be->name);
  return 0;
}

/* A node's output (grad 0) or gradient buffer, with the float count of the
 * batch; NULL with an error when there is none. */
static float *node_buffer(const nn_net *net, int node, int grad, size_t *n, const char *what) {
  if (node < 0 || node >= net->nnodes) {
    ce_err("%s: node %d does not exist (net has %d nodes)", what, node, net->nnodes);
    return NULL;
  }
  const nn_node *nd = &net->nodes[node];
  float *buf = grad ? nd->grad : nd->out;
  if (!buf)
    ce_err("%s: layer '%s' has no %s buffer (nn_set_batch; a gradient needs needs_grad)", what,
           nd->name, grad ? "gradient" : "output");
  *n = (size_t)net->batch * (size_t)nd->size;
  return buf;
}

int nn_input_upload(nn_net *net, int node, const float *x) {
  size_t n;
  float *buf = node_buffer(net, node, 0, &n, "nn_input_upload");
  return buf ? nn_upload(net, buf, x, n) : -1;
}

int nn_out_download(const nn_net *net, int node, float *y) {
  size_t n;
  const float *buf = node_buffer(net, node, 0, &n, "nn_out_download");
  return buf ? nn_download(net, y, buf, n) : -1;
}

int nn_grad_upload(nn_net *net, int node, const float *g) {
  size_t n;
  float *buf = node_buffer(net, node, 1, &n, "nn_grad_upload");
  return buf ? nn_upload(net, buf, g, n) : -1;
}

int nn_grad_download(const nn_net *net, int node, float *g) {
  size_t n;
  const float *buf = node_buffer(net, node, 1, &n, "nn_grad_download");
  return buf ? nn_download(net, g, buf, n) : -1;
}

static int check_param(const nn_net *net, int i, int grad, const char *what) {
  if (i < 0 || i >= net->nparams)
    return ce_err("%s: parameter %d does not exist (net has %d)", what, i, net->nparams);
  if (!net->params[i].w || (grad && !net->params[i].g))
    return ce_err("%s: parameter '%s' has no %s (nn_finalize; buffers have no gradient)", what,
                  net->params[i].name, grad ? "gradient" : "values");
  return 0;
}

int nn_param_upload(nn_net *net, int i, const float *w) {
  CE_TRY(check_param(net, i, 0, "nn_param_upload"));
  return nn_upload(net, net->params[i].w, w, (size_t)net->params[i].n);
}

int nn_param_download(const nn_net *net, int i, float *w) {
  CE_TRY(check_param(net, i, 0, "nn_param_download"));
  return nn_download(net, w, net->params[i].w, (size_t)net->params[i].n);
}

int nn_param_grad_download(const nn_net *net, int i, float *g) {
  CE_TRY(check_param(net, i, 1, "nn_param_grad_download"));
  return nn_download(net, g, net->params[i].g, (size_t)net->params[i].n);
}

static int chunks(const nn_net *net, float *dev, size_t n, nn_chunk_fn fn, void *ctx, int up) {
  const size_t cap = n < NN_STAGE_FLOATS ? n : NN_STAGE_FLOATS;
  float *buf = ce_malloc_array(cap ? cap : 1, sizeof(float), "host staging buffer");
  if (!buf) return -1;
  int rc = 0;
  for (size_t off = 0; off < n && rc == 0; off += cap) {
    size_t k = n - off < cap ? n - off : cap;
    if (up) {
      if ((rc = fn(ctx, buf, off, k)) == 0) rc = nn_upload(net, dev + off, buf, k);
    } else if ((rc = nn_download(net, buf, dev + off, k)) == 0) {
      rc = fn(ctx, buf, off, k);
    }
  }
  free(buf);
  return rc;
}

int nn_download_chunks(const nn_net *net, const float *src, size_t n, nn_chunk_fn fn, void *ctx) {
  return chunks(net, (float *)src, n, fn, ctx, 0);
}

int nn_upload_chunks(const nn_net *net, float *dst, size_t n, nn_chunk_fn fn, void *ctx) {
  return chunks(net, dst, n, fn, ctx, 1);
}

typedef struct {
  const nn_net *to;
  float *dst;
} transfer_ctx;

static int transfer_chunk(void *ctx, float *chunk, size_t off, size_t n) {
  transfer_ctx *t = ctx;
  return nn_upload(t->to, t->dst + off, chunk, n);
}

int nn_transfer(const nn_net *to, float *dst, const nn_net *from, const float *src, size_t n) {
  if (to->be == from->be) {
    if (to->be->copy(dst, src, sizeof(float) * n) < 0)
      return ce_err_prefix("copying %zu floats on backend '%s'", n, to->be->name);
    return 0;
  }
  transfer_ctx t = {to, dst};
  return nn_download_chunks(from, src, n, transfer_chunk, &t);
}

/* ---- freeing ------------------------------------------------------------ */

static void free_activations(nn_net *net) {
  for (int i = 0; i < net->nnodes; i++) {
    nn_node *nd = &net->nodes[i];
    if (nd->kind != NN_VIEW) {
      nn_release(net, nd->out);
      nn_release(net, nd->grad);
    }
    nd->out = nd->grad = NULL;
  }
  nn_release(net, net->work);
  net->work = NULL;
  net->work_n = 0;
  net->batch = 0;
}

void nn_free(nn_net *net) {
  if (net->be) {
    free_activations(net);
    for (int i = 0; i < net->nnodes; i++) nn_release(net, net->nodes[i].save);
    for (int i = 0; i < net->nparams; i++) nn_release(net, net->params[i].w);
    nn_release(net, net->grad_block);
  }
  nn_bucket_plan_free(&net->buckets);
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
  net->grad_block = nn_alloc(net, total, "parameter gradients"); /* zero-filled, 64-byte aligned */
  if (!net->grad_block) return -1;
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
  if (!nn_backend_ready(net->be))
    return ce_err("nn_finalize: backend '%s' is not initialised (nn_backend_init)", net->be->name);
  for (int i = 0; i < net->nparams; i++) {
    nn_param *p = &net->params[i];
    p->w = nn_alloc(net, (size_t)p->n, p->name);
    if (!p->w) return -1;
  }
  CE_TRY(alloc_grads(net));
  net->finalized = 1;
  CE_TRY(nn_init_params(net, seed));
  /* nodes' saved state (BatchNorm: batch mean and 1/std per channel) */
  for (int i = 0; i < net->nnodes; i++) {
    nn_node *nd = &net->nodes[i];
    if (nd->kind == NN_BATCHNORM) {
      nd->save = nn_alloc(net, (size_t)2 * nd->c, nd->name);
      if (!nd->save) return -1;
    }
  }
  return 0;
}

/* One parameter's initial values, drawn on the host piece by piece. */
typedef struct {
  float fill; /* >= 0: every value (BatchNorm); else U(-bound, bound) from rng */
  double bound;
  ce_rng rng;
} init_draw;

static int draw_chunk(void *ctx, float *chunk, size_t off, size_t n) {
  init_draw *d = ctx;
  (void)off;
  if (d->fill >= 0)
    for (size_t j = 0; j < n; j++) chunk[j] = d->fill;
  else
    for (size_t j = 0; j < n; j++) chunk[j] = (float)((2 * ce_rng_uniform(&d->rng) - 1) * d->bound);
  return 0;
}

int nn_init_params(nn_net *net, uint64_t seed) {
  for (int i = 0; i < net->nparams; i++) {
    nn_param *p = &net->params[i];
    const char *what = strrchr(p->name, '.') + 1;
    init_draw d;
    memset(&d, 0, sizeof d);
    d.fill = -1;
    if (p->fan_in == 0) /* BatchNorm */
      d.fill = (!strcmp(what, "weight") || !strcmp(what, "running_var")) ? 1.0f : 0.0f;
    else {
      d.rng = ce_rng_make(seed, (uint32_t)i, 0, 7);
      d.bound = 1.0 / sqrt((double)p->fan_in);
    }
    if (nn_upload_chunks(net, p->w, (size_t)p->n, draw_chunk, &d) < 0)
      return ce_err_prefix("initialising '%s'", p->name);
  }
  return 0;
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
    nd->out = nn_alloc(net, count, nd->name);
    if (!nd->out) return -1;
    if (nd->needs_grad) {
      nd->grad = nn_alloc(net, count, nd->name);
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
    net->work = nn_alloc(net, work, "layer scratch");
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

int nn_zero_grad(nn_net *net) {
  const nn_backend *be = net->be;
  for (int i = 0; i < net->nparams; i++)
    if (net->params[i].g && be->zero(net->params[i].g, sizeof(float) * (size_t)net->params[i].n) < 0)
      return ce_err_prefix("clearing the gradient of '%s'", net->params[i].name);
  for (int i = 0; i < net->nnodes; i++) {
    nn_node *nd = &net->nodes[i];
    if (nd->grad && !nd->seed_grad && nd->kind != NN_VIEW &&
        be->zero(nd->grad, sizeof(float) * (size_t)net->batch * (size_t)nd->size) < 0)
      return ce_err_prefix("clearing the gradient of layer '%s'", nd->name);
  }
  return 0;
}

/* Hand the gradient buckets that are final once every node >= node has run
 * its backward to the backend (nn_reducer.bucket). */
static int send_buckets(nn_net *net, int node) {
  const nn_bucket_plan *p = &net->buckets;
  const int ready = nn_bucket_plan_ready(p, node);
  for (; net->buckets_sent < ready; net->buckets_sent++) {
    const nn_bucket *b = &p->b[net->buckets_sent];
    if (net->be->reduce_bucket(net, b->off, b->n) < 0)
      return ce_err_prefix("summing gradient bucket %d of %d (floats [%zu, %zu)) over %d replicas",
                           net->buckets_sent, p->n, b->off, b->off + b->n, net->reducer.world);
  }
  return 0;
}

static int bucketed(const nn_net *net) { return nn_get_reducer(net) && net->reducer.bucket; }

int nn_backward(nn_net *net) {
  if (!net->batch) return ce_err("nn_backward: call nn_set_batch first");
  const int buckets = bucketed(net);
  net->buckets_sent = 0;
  for (int i = net->nnodes - 1; i >= 0; i--) {
    nn_node *nd = &net->nodes[i];
    if (nd->kind != NN_INPUT && nd->kind != NN_VIEW && nd->needs_grad &&
        net->be->backward(net, nd) < 0)
      return ce_err_prefix("backward of layer '%s'", nd->name);
    if (buckets) CE_TRY(send_buckets(net, i));
  }
  return 0;
}

/* ---- data parallelism --------------------------------------------------- */

int nn_set_reducer(nn_net *net, const nn_reducer *r) {
  if (!r) {
    memset(&net->reducer, 0, sizeof net->reducer);
    nn_bucket_plan_free(&net->buckets);
    return 0;
  }
  if (r->world < 1) return ce_err("reducer: world = %d replicas, expected >= 1", r->world);
  if (!r->sum_f64 || !r->sum_f32)
    return ce_err("reducer: sum_f64 and sum_f32 are both needed (%s is NULL)",
                  r->sum_f64 ? "sum_f32" : "sum_f64");
  if (!r->dev_sum_f64 != !r->dev_sum_f32)
    return ce_err("reducer: device sums come in pairs (%s is NULL)",
                  r->dev_sum_f64 ? "dev_sum_f32" : "dev_sum_f64");
  nn_bucket_plan plan = {0};
  if (r->bucket) {
    if (!net->be->reduce_bucket)
      return ce_err("reducer: backend '%s' cannot sum gradient buckets", net->be->name);
    CE_TRY(nn_bucket_plan_make(net, r->bucket, &plan));
  }
  nn_bucket_plan_free(&net->buckets);
  net->buckets = plan;
  net->buckets_sent = 0;
  net->reducer = *r;
  return 0;
}

int nn_reduce_grads(nn_net *net) {
  if (!nn_get_reducer(net)) return 0;
  if (bucketed(net)) CE_TRY(send_buckets(net, -1)); /* those the backward did not reach */
  int rc = net->be->reduce_grads(net);
  net->buckets_sent = 0;
  return rc;
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
