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
    o->m[i] = ce_calloc_array((size_t)p->n, sizeof(float), "adam first moment");
    o->v[i] = ce_calloc_array((size_t)p->n, sizeof(float), "adam second moment");
    if (!o->m[i] || !o->v[i]) {
      adam_free(o);
      return ce_err_prefix("adam: parameter '%s'", p->name);
    }
  }
  return 0;
}

void adam_free(adam *o) {
  for (int i = 0; i < o->nparams && o->m; i++) {
    free(o->m[i]);
    free(o->v[i]);
  }
  free(o->m);
  free(o->v);
  memset(o, 0, sizeof *o);
}

int adam_has_state(const adam *o, int i) { return i >= 0 && i < o->nparams && o->m[i] != NULL; }

void adam_step(adam *o, nn_net *net, double lr) {
  o->t++;
  const double b1 = o->cfg.beta1, b2 = o->cfg.beta2, eps = o->cfg.eps, wd = o->cfg.weight_decay;
  const double bc1 = 1 - pow(b1, (double)o->t), bc2 = 1 - pow(b2, (double)o->t);
  const float step = (float)(lr / bc1), rbc2 = (float)(1 / sqrt(bc2));
  /* 1 - b in double: (1 - 0.999f) would be off by 1.3e-5 relative */
  const float fb1 = (float)b1, fb2 = (float)b2, omb1 = (float)(1 - b1), omb2 = (float)(1 - b2);
  const float feps = (float)eps;
  const float l2 = o->cfg.kind == ADAM_L2 ? (float)wd : 0.0f;
  const float decay = o->cfg.kind == ADAMW ? (float)(1 - lr * wd) : 1.0f;
  for (int i = 0; i < net->nparams; i++) {
    nn_param *p = &net->params[i];
    if (!o->m[i]) continue;
    float *w = p->w, *m = o->m[i], *v = o->v[i];
    const float *g = p->g;
#pragma omp parallel for schedule(static)
    for (int64_t j = 0; j < p->n; j++) {
      float gj = g[j] + l2 * w[j];
      m[j] = fb1 * m[j] + omb1 * gj;
      v[j] = fb2 * v[j] + omb2 * gj * gj;
      w[j] = w[j] * decay - step * m[j] / (sqrtf(v[j]) * rbc2 + feps);
    }
  }
}

double steplr_lr(const steplr *s, int epoch) {
  if (s->step_size <= 0) return s->lr0;
  return s->lr0 * pow(s->gamma, (double)(epoch / s->step_size));
}
