/* bucket.c - the gradient bucket plan (bucket.h). */
#include "trainer/bucket.h"

#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "trainer/nn.h"

int nn_bucket_plan_make(const nn_net *net, size_t floats, nn_bucket_plan *p) {
  memset(p, 0, sizeof *p);
  if (!net->finalized) return ce_err("gradient buckets: finalise the net first");
  if (floats < 1) return ce_err("gradient buckets of %zu floats, expected >= 1", floats);
  p->floats = floats;
  /* the used trainable parameters in grad_block order, with their owners */
  int *owner = malloc(sizeof(int) * (size_t)(net->nparams ? net->nparams : 1));
  int *order = malloc(sizeof(int) * (size_t)(net->nparams ? net->nparams : 1));
  p->b = malloc(sizeof(nn_bucket) * (size_t)(net->nparams ? net->nparams : 1));
  if (!owner || !order || !p->b) {
    free(owner);
    free(order);
    nn_bucket_plan_free(p);
    return ce_err("gradient buckets: out of memory");
  }
  for (int i = 0; i < net->nparams; i++) owner[i] = -1;
  for (int j = 0; j < net->nnodes; j++)
    for (int k = 0; k < net->nodes[j].nparam; k++) owner[net->nodes[j].param[k]] = j;
  int nused = 0;
  for (int i = 0; i < net->nparams; i++) {
    const nn_param *q = &net->params[i];
    if (q->trainable && q->used && q->g) order[nused++] = i;
  }
  /* grad_block order: by offset (insertion sort: a few hundred parameters) */
  for (int a = 1; a < nused; a++)
    for (int c = a; c > 0 && net->params[order[c]].g < net->params[order[c - 1]].g; c--) {
      int t = order[c];
      order[c] = order[c - 1];
      order[c - 1] = t;
    }
  size_t hi = net->grad_used_n;
  int rc = 0;
  for (int k = nused - 1; k >= 0;) {
    nn_bucket *b = &p->b[p->n++];
    memset(b, 0, sizeof *b);
    b->ready_node = net->nnodes;
    size_t lo = hi;
    do { /* whole parameters, the last ones first, until the bucket is full */
      const int i = order[k];
      if (owner[i] < 0) {
        rc = ce_err("gradient buckets: parameter '%s' belongs to no layer", net->params[i].name);
        break;
      }
      lo = (size_t)(net->params[i].g - net->grad_block);
      if (owner[i] < b->ready_node) b->ready_node = owner[i];
      b->nparams++;
      k--;
    } while (k >= 0 && hi - lo < floats);
    if (rc < 0) break;
    b->off = lo;
    b->n = hi - lo;
    hi = lo;
  }
  if (rc == 0 && hi != 0) /* the used block starts with the first used parameter */
    rc = ce_err("gradient buckets: the used gradients start at float %zu, expected 0", hi);
  free(owner);
  free(order);
  if (rc < 0) nn_bucket_plan_free(p);
  return rc;
}

void nn_bucket_plan_free(nn_bucket_plan *p) {
  free(p->b);
  memset(p, 0, sizeof *p);
}

int nn_bucket_plan_ready(const nn_bucket_plan *p, int node) {
  int k = 0;
  while (k < p->n && p->b[k].ready_node >= node) k++;
  return k;
}
