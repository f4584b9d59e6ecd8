/* coemunet.c - COEmuNet built from nn.h layers (see coemunet.h). */
#include "trainer/coemunet.h"

#include <stdio.h>
#include <string.h>

#include "common/error.h"

coemunet_config coemunet_default(int nfreq) {
  coemunet_config c = {nfreq, 64, 4, {8, 16, 32}, 4096, 64, COEMUNET_SHORTCUT_REFERENCE};
  return c;
}

int coemunet_check_config(const coemunet_config *c) {
  if (c->nfreq < 1 || c->nfreq > 4096) return ce_err("coemunet: nfreq = %d, expected 1..4096", c->nfreq);
  if (c->grid < 16 || c->grid % 8 || c->grid > 1024)
    return ce_err("coemunet: grid = %d, expected a multiple of 8 in 16..1024", c->grid);
  if (c->stem < 1) return ce_err("coemunet: stem = %d channels, expected >= 1", c->stem);
  for (int i = 0; i < 3; i++)
    if (c->enc[i] < 1) return ce_err("coemunet: enc[%d] = %d channels, expected >= 1", i, c->enc[i]);
  if (c->latent < 1) return ce_err("coemunet: latent = %d, expected >= 1", c->latent);
  if (c->dec < 8 || c->dec % 8) return ce_err("coemunet: dec = %d, expected a multiple of 8", c->dec);
  if (c->shortcut != COEMUNET_SHORTCUT_REFERENCE && c->shortcut != COEMUNET_SHORTCUT_INPUT)
    return ce_err("coemunet: shortcut = %d, expected 0 (reference) or 1 (input)", c->shortcut);
  return 0;
}

typedef struct {
  nn_net *net;
  char prefix[NN_NAME];
} builder;

static int name_of(char *out, const char *prefix, const char *what) {
  if (snprintf(out, NN_NAME, "%s%s", prefix, what) >= NN_NAME)
    return ce_err("coemunet: layer name '%s%s' too long", prefix, what);
  return 0;
}

/* Conv_BN_Relu: "<p>layers.0" conv, "<p>layers.1" bn, "<p>layers.2" relu. */
static int cbr(nn_net *net, const char *p, int x, int cout, nn_int3 k, nn_int3 s, nn_int3 pad) {
  char n[NN_NAME];
  CE_TRY(name_of(n, p, "layers.0"));
  int c = nn_conv(net, n, x, cout, k, s, pad);
  if (c < 0) return -1;
  CE_TRY(name_of(n, p, "layers.1"));
  int b = nn_batchnorm(net, n, c);
  if (b < 0) return -1;
  CE_TRY(name_of(n, p, "layers.2"));
  return nn_relu(net, n, b);
}

/* residual_Block: CBR0 (k3, stride, pad 1), CBR1 (k3, 'same'), short_CBR0 (1x1x1). */
static int res_block(nn_net *net, const char *p, int x, int cout, int stride, int conv_skip,
                     int variant) {
  char n[NN_NAME], q[NN_NAME];
  const nn_int3 k3 = NN_K3(3, 3, 3), one = NN_K3(1, 1, 1), zero = NN_K3(0, 0, 0);
  CE_TRY(name_of(q, p, "CBR0."));
  int x1 = cbr(net, q, x, cout, k3, NN_K3(stride, stride, stride), one);
  if (x1 < 0) return -1;
  CE_TRY(name_of(q, p, "CBR1."));
  int x2 = cbr(net, q, x1, cout, k3, one, NN_PAD_SAME3);
  if (x2 < 0) return -1;
  CE_TRY(name_of(q, p, "short_CBR0."));
  CE_TRY(name_of(n, p, "add"));
  if (variant == COEMUNET_SHORTCUT_REFERENCE) {
    /* the shortcut sees x2 (the quirk); identity blocks build it unused */
    int first = net->nparams, sc = cbr(net, q, x2, cout, one, one, zero);
    if (sc < 0) return -1;
    if (conv_skip) return nn_add(net, n, x2, sc);
    for (int i = first; i < net->nparams; i++) nn_param_set_unused(net, i);
    /* the unused branch's nodes are computed but reach no output; drop them
       from the graph by rewinding the node list (parameters stay) */
    net->nnodes = sc - 2;
    return nn_add(net, n, x2, x);
  }
  if (conv_skip) {
    int sc = cbr(net, q, x, cout, one, NN_K3(stride, stride, stride), zero);
    if (sc < 0) return -1;
    return nn_add(net, n, x2, sc);
  }
  return nn_add(net, n, x2, x);
}

static int encoder(nn_net *net, const coemunet_config *c, int e, int x) {
  char p[NN_NAME], n[NN_NAME];
  snprintf(p, sizeof p, "encoder%d.layers.0.", e);
  int h = cbr(net, p, x, c->stem, NN_K3(3, 3, 3), NN_K3(1, 1, 1), NN_K3(0, 0, 0));
  if (h < 0) return -1;
  snprintf(n, sizeof n, "encoder%d.layers.1", e);
  h = nn_maxpool(net, n, h, 2);
  int idx = 2;
  for (int st = 0; st < 3 && h >= 0; st++)
    for (int b = 0; b < 3 && h >= 0; b++, idx++) {
      snprintf(p, sizeof p, "encoder%d.layers.%d.", e, idx);
      h = res_block(net, p, h, c->enc[st], b == 0 ? 2 : 1, b == 0, c->shortcut);
    }
  return h;
}

static int build_graph(coemunet *m) {
  nn_net *net = &m->net;
  const coemunet_config *c = &m->cfg;
  const int G = c->grid, lg = G / 8, F = c->nfreq;
  char n[NN_NAME];
  m->input = nn_input(net, "input", 3, G, G, G);
  if (m->input < 0) return -1;
  int flat[3];
  for (int e = 0; e < 3; e++) {
    snprintf(n, sizeof n, "input.channel%d", e);
    int xs = nn_slice(net, n, m->input, e, 1);
    int h = xs < 0 ? -1 : encoder(net, c, e, xs);
    if (h < 0) return -1;
    snprintf(n, sizeof n, "encoder%d.flatten", e);
    flat[e] = nn_view(net, n, h, (int)net->nodes[h].size, 1, 1, 1);
    if (flat[e] < 0) return -1;
  }
  int h = nn_concat(net, "cat", flat, 3);
  if (h < 0) return -1;
  h = nn_linear(net, "to_lat", h, c->latent);
  if (h < 0) return -1;
  h = nn_linear(net, "to_dec", h, c->dec * F * lg * lg);
  if (h < 0) return -1;
  h = nn_relu(net, "to_dec.relu", h);
  if (h < 0) return -1;
  h = nn_view(net, "latent.view", h, c->dec, F, lg, lg);
  if (h < 0) return -1;
  const nn_int3 k = NN_K3(1, 3, 3), s1 = NN_K3(1, 1, 1), pad = NN_K3(0, 1, 1), up = NN_K3(1, 2, 2);
  const char *dp = F == 1 ? "decoder.layers." : "decoder3d.layers.";
  int ch = c->dec, idx = 0;
  for (int st = 0; st < 3; st++) {
    int convs = F == 1 ? 1 : 3;
    for (int j = 0; j < convs; j++) {
      snprintf(n, sizeof n, "%s%d", dp, idx++);
      h = nn_conv(net, n, h, ch / 2, k, s1, pad);
      if (h < 0) return -1;
      snprintf(n, sizeof n, "%s%d", dp, idx++);
      h = nn_batchnorm(net, n, h);
      if (h < 0) return -1;
      snprintf(n, sizeof n, "%s%d", dp, idx++);
      h = nn_relu(net, n, h);
      if (h < 0) return -1;
    }
    snprintf(n, sizeof n, "%s%d", dp, idx++);
    h = nn_upsample(net, n, h, up);
    if (h < 0) return -1;
    ch /= 2;
  }
  snprintf(n, sizeof n, "%s%d", dp, idx++);
  h = nn_conv(net, n, h, 1, k, s1, pad);
  if (h < 0) return -1;
  if (F > 1) {
    snprintf(n, sizeof n, "%s%d", dp, idx++);
    h = nn_tanh(net, n, h);
    if (h < 0) return -1;
  }
  m->output = h;
  return 0;
}

static int describe_on(coemunet *m, const coemunet_config *cfg, const nn_backend *be) {
  memset(m, 0, sizeof *m);
  CE_TRY(coemunet_check_config(cfg));
  m->cfg = *cfg;
  nn_init(&m->net);
  if (be) CE_TRY(nn_set_backend(&m->net, be));
  if (build_graph(m) < 0) {
    ce_err_prefix("building COEmuNet");
    nn_free(&m->net);
    return -1;
  }
  return 0;
}

int coemunet_describe(coemunet *m, const coemunet_config *cfg) { return describe_on(m, cfg, NULL); }

int coemunet_build(coemunet *m, const coemunet_config *cfg, uint64_t seed) {
  return coemunet_build_on(m, cfg, seed, &nn_backend_cpu);
}

int coemunet_build_on(coemunet *m, const coemunet_config *cfg, uint64_t seed,
                      const nn_backend *be) {
  CE_TRY(describe_on(m, cfg, be));
  if (nn_finalize(&m->net, seed) < 0) {
    ce_err_prefix("building COEmuNet");
    nn_free(&m->net);
    return -1;
  }
  nn_seed_grad(&m->net, m->output);
  return 0;
}

void coemunet_free(coemunet *m) { nn_free(&m->net); }

static int transferred(const char *name) {
  return !strncmp(name, "encoder", 7) || !strncmp(name, "to_lat.", 7);
}

int coemunet_transfer_encoder(coemunet *dst, const coemunet *src, int *ntensors, int64_t *nvalues) {
  const coemunet_config *a = &dst->cfg, *b = &src->cfg;
  static const char *field[] = {"grid", "stem", "encoder[0]", "encoder[1]", "encoder[2]", "latent",
                                "shortcut"};
  const int va[] = {a->grid, a->stem, a->enc[0], a->enc[1], a->enc[2], a->latent, a->shortcut};
  const int vb[] = {b->grid, b->stem, b->enc[0], b->enc[1], b->enc[2], b->latent, b->shortcut};
  for (int i = 0; i < 7; i++)
    if (va[i] != vb[i])
      return ce_err("encoder transfer: %s is %d in the source model and %d in the target", field[i],
                    vb[i], va[i]);
  /* check every tensor first, so that a failure leaves dst untouched */
  int n = 0;
  int64_t values = 0;
  for (int pass = 0; pass < 2; pass++)
    for (int i = 0; i < src->net.nparams; i++) {
      const nn_param *p = &src->net.params[i];
      if (!transferred(p->name)) continue;
      int j = nn_find_param(&dst->net, p->name);
      if (j < 0) return ce_err("encoder transfer: the target model has no tensor '%s'", p->name);
      nn_param *q = &dst->net.params[j];
      if (q->n != p->n || q->ndim != p->ndim)
        return ce_err("encoder transfer: tensor '%s' has %lld values in the source, %lld in the target",
                      p->name, (long long)p->n, (long long)q->n);
      if (pass == 1) {
        CE_TRY(nn_transfer(&dst->net, q->w, &src->net, p->w, (size_t)p->n));
        n++;
        values += p->n;
      }
    }
  if (n == 0) return ce_err("encoder transfer: the source model has no encoder tensors");
  if (ntensors) *ntensors = n;
  if (nvalues) *nvalues = values;
  return 0;
}
