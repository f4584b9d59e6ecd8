/* dump_forward.c - fixed-seed forward passes of small COEmuNets for
 * test_forward_golden.py, which recomputes them with an independent numpy
 * implementation of the architecture from the checkpoint's tensors (by their
 * PyTorch state_dict names).
 *
 * dump_forward DIR: for each case (nfreq 1 / 3, reference / input shortcut)
 * builds the net from a fixed seed, trains it 20 steps (so weights and the
 * BatchNorm running statistics are no longer their initial values), saves
 * DIR/CASE.ckpt, then writes DIR/CASE-x.npy (an input batch), the output in
 * evaluation mode (CASE-eval.npy, running statistics) and in training mode
 * (CASE-train.npy, batch statistics), and DIR/CASE-after.ckpt holding the
 * running statistics the training-mode pass left. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/npy.h"
#include "common/rng.h"
#include "trainer/checkpoint.h"
#include "trainer/coemunet.h"
#include "trainer/train.h"

static void fill(float *a, size_t n, uint32_t s, double lo, double hi) {
  ce_rng r = ce_rng_make(77, s, 0, 0);
  for (size_t i = 0; i < n; i++) a[i] = (float)(lo + (hi - lo) * ce_rng_uniform(&r));
}

static int one(const char *dir, const char *name, int nfreq, int shortcut) {
  enum { N = 3, G = 16 };
  coemunet_config cfg = {nfreq, G, 2, {2, 3, 4}, 8, 16, shortcut};
  coemunet m;
  adam o;
  trainer tr;
  CE_TRY(coemunet_build(&m, &cfg, 2024));
  CE_TRY(nn_set_batch(&m.net, N));
  adam_config ac = adam_default();
  ac.lr = 2e-3;
  CE_TRY(adam_init(&o, &m.net, &ac));
  CE_TRY(trainer_init(&tr, &m, &o));
  size_t nin = (size_t)N * 3 * G * G * G, nout = (size_t)N * nfreq * G * G;
  float *x = malloc(sizeof(float) * nin), *t = malloc(sizeof(float) * nout);
  if (!x || !t) CE_FAIL("out of memory");
  for (int k = 0; k < 20; k++) {
    fill(x, nin, 10 + (uint32_t)k, -1, 2);
    fill(t, nout, 20 + (uint32_t)k, 0, 1);
    loss_value lv;
    CE_TRY(trainer_step(&tr, x, t, 2e-3, &lv));
  }
  char p[1024];
  train_state st = {2024, 20, 0, {1e-2, 0.1, 1}};
  snprintf(p, sizeof p, "%s/%s.ckpt", dir, name);
  CE_TRY(checkpoint_save(p, &m, &o, &st));
  fill(x, nin, 30, -1, 2);
  size_t xs[5] = {N, 3, G, G, G}, ys[5] = {N, 1, (size_t)nfreq, G, G};
  snprintf(p, sizeof p, "%s/%s-x.npy", dir, name);
  CE_TRY(npy_write(p, x, NPY_F32, 5, xs));
  CE_TRY(nn_input_upload(&m.net, m.input, x));
  CE_TRY(nn_forward(&m.net, 0));
  snprintf(p, sizeof p, "%s/%s-eval.npy", dir, name);
  CE_TRY(nn_out_download(&m.net, m.output, t)); /* t holds N outputs */
  CE_TRY(npy_write(p, t, NPY_F32, 5, ys));
  CE_TRY(nn_forward(&m.net, 1));
  snprintf(p, sizeof p, "%s/%s-train.npy", dir, name);
  CE_TRY(nn_out_download(&m.net, m.output, t));
  CE_TRY(npy_write(p, t, NPY_F32, 5, ys));
  snprintf(p, sizeof p, "%s/%s-after.ckpt", dir, name);
  CE_TRY(checkpoint_save(p, &m, &o, &st));
  free(x);
  free(t);
  trainer_free(&tr);
  adam_free(&o);
  coemunet_free(&m);
  return 0;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: dump_forward DIR\n");
    return 2;
  }
  if (nn_backend_init(&nn_backend_cpu, 0) < 0) {
    fprintf(stderr, "dump_forward: %s\n", ce_err_msg());
    return 1;
  }
  static const struct { const char *name; int nfreq, shortcut; } cases[] = {
      {"f1-reference", 1, COEMUNET_SHORTCUT_REFERENCE}, {"f3-reference", 3, COEMUNET_SHORTCUT_REFERENCE},
      {"f1-input", 1, COEMUNET_SHORTCUT_INPUT}, {"f3-input", 3, COEMUNET_SHORTCUT_INPUT}};
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
    if (one(argv[1], cases[i].name, cases[i].nfreq, cases[i].shortcut) < 0) {
      fprintf(stderr, "dump_forward: %s: %s\n", cases[i].name, ce_err_msg());
      return 1;
    }
  return 0;
}
