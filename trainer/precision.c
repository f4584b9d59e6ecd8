/* precision.c - precision names and nn_set_precision (precision.h, nn.h). */
#include "trainer/precision.h"

#include <string.h>

#include "common/error.h"
#include "trainer/nn.h"

static const char *const NAMES[NN_PRECISIONS] = {"float32", "tf32", "bf16"};

const char *nn_precision_name(int p) { return p >= 0 && p < NN_PRECISIONS ? NAMES[p] : "?"; }

int nn_precision_parse(const char *name) {
  for (int p = 0; p < NN_PRECISIONS; p++)
    if (!strcmp(name, NAMES[p])) return p;
  return ce_err("precision '%s': expected float32, tf32 or bf16", name);
}

int nn_backend_check_precision(const nn_backend *be, int p) {
  if (p < 0 || p >= NN_PRECISIONS) return ce_err("precision %d: expected 0..%d", p, NN_PRECISIONS - 1);
  const unsigned ok = be->precisions | NN_PRECISION_BIT(NN_FLOAT32);
  if (!(ok & NN_PRECISION_BIT(p))) {
    char runs[64] = "";
    for (int q = 0; q < NN_PRECISIONS; q++)
      if (ok & NN_PRECISION_BIT(q)) {
        if (*runs) strcat(runs, ", ");
        strcat(runs, NAMES[q]);
      }
    return ce_err("precision %s: the trainer backend '%s' does not run it (it runs: %s)", NAMES[p],
                  be->name, runs);
  }
  return 0;
}

int nn_set_precision(nn_net *net, int p) {
  CE_TRY(nn_backend_check_precision(net->be, p));
  /* a device backend chooses its algorithms, and so the scratch that
     nn_set_batch sizes, by the precision (cuDNN's TF32 plans) */
  if (net->batch && p != net->precision)
    return ce_err("nn_set_precision: set the precision before nn_set_batch");
  net->precision = p;
  return 0;
}
