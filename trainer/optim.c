/* optim.c - Adam / Adam+L2 / AdamW and StepLR (see optim.h). */
#include "trainer/optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"

adam_config adam_default(void) {
  adam_config c = {ADAM, 4e-4, 0.9, 0.999, 1e-8, 0.0};
  return c;
}

const char *adam_kind_name(adam_kind k) {
  switch (k) {
  case ADAM: return "Adam";
  case ADAM_L2: return "Adam+L2";
  case ADAMW: return "AdamW";
  }
  return "?";
}

static int skipped(const nn_param *p) { return !p->trainable || !p->used; }

int adam_init(adam *o, const nn_net *net, const adam_config *cfg) {
  memset(o, 0, sizeof *o);
  if (cfg->kind < ADAM || cfg->kind > ADAMW) return ce_err("adam: kind %d, expected 0..2", (int)cfg->kind);
  if (!(cfg->lr >= 0) || !(cfg->beta1 >= 0 && cfg->beta1 < 1) || !(cfg->beta2 >= 0 && cfg->beta2 < 1) ||
      !(cfg->eps > 0) || !(cfg->weight_decay >= 0))
    return ce_err("adam: lr %g, betas (%g, %g), eps %g, weight decay %g: expected lr >= 0, "
                  "betas in [0, 1), eps > 0, decay >= 0", cfg->lr, cfg->beta1, cfg->beta2, cfg->eps,
                  cfg->weight_decay);
  o->cfg = *cfg;
  o->be = net->be;
  o->nparams = net->nparams;
  o->m = calloc((size_t)net->nparams, sizeof *o->m);
  o->v = calloc((size_t)net->nparams, sizeof *o->v);
  if (!o->m || !o->v) {
    adam_free(o);
    return ce_err("adam: out of memory");
  }
  for (int i = 0; i < net->nparams; i++) {
    const nn_param *p = &net->params[i];
    if (skipped(p)) continue;
    o->m[i] = nn_alloc(net, (size_t)p->n, "adam first moment");  /* zero-filled */
    o->v[i] = o->m[i] ? nn_alloc(net, (size_t)p->n, "adam second moment") : NULL;
    if (!o->m[i] || !o->v[i]) {
      adam_free(o);
      return ce_err_prefix("adam: parameter '%s'", p->name);
    }
  }
  return 0;
}

void adam_free(adam *o) {
  for (int i = 0; i < o->nparams && o->m; i++) {
    if (o->m[i]) o->be->free(o->m[i]);
    if (o->v && o->v[i]) o->be->free(o->v[i]);
  }
  free(o->m);
  free(o->v);
  memset(o, 0, sizeof *o);
}

int adam_has_state(const adam *o, int i) { return i >= 0 && i < o->nparams && o->m[i] != NULL; }

nn_adam_coef adam_coef(const adam_config *cfg, int64_t t, double lr) {
  const double b1 = cfg->beta1, b2 = cfg->beta2, wd = cfg->weight_decay;
  const double bc1 = 1 - pow(b1, (double)t), bc2 = 1 - pow(b2, (double)t);
  nn_adam_coef c;
  c.step = (float)(lr / bc1);
  c.rbc2 = (float)(1 / sqrt(bc2));
  c.b1 = (float)b1;
  c.b2 = (float)b2;
  /* 1 - b in double: (1 - 0.999f) would be off by 1.3e-5 relative */
  c.omb1 = (float)(1 - b1);
  c.omb2 = (float)(1 - b2);
  c.eps = (float)cfg->eps;
  c.l2 = cfg->kind == ADAM_L2 ? (float)wd : 0.0f;
  c.decay = cfg->kind == ADAMW ? (float)(1 - lr * wd) : 1.0f;
  return c;
}

int adam_step(adam *o, nn_net *net, double lr) {
  if (net->be != o->be || net->nparams != o->nparams)
    return ce_err("adam: the optimiser was made for another net");
  o->t++;
  const nn_adam_coef c = adam_coef(&o->cfg, o->t, lr);
  if (net->be->adam_update(net, o->m, o->v, &c) < 0)
    return ce_err_prefix("adam step %lld", (long long)o->t);
  return 0;
}

double steplr_lr(const steplr *s, int epoch) {
  if (s->step_size <= 0) return s->lr0;
  return s->lr0 * pow(s->gamma, (double)(epoch / s->step_size));
}
