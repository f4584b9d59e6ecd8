/* ckpt_forward.c - a checkpoint's COEmuNet on an input batch, evaluation mode
 * (running statistics), for test_safetensors.py: the C side of a model that
 * was changed in PyTorch and imported back with `coemu export --format ckpt`.
 *
 * ckpt_forward CKPT X.npy OUT.npy: X float32 (N, 3, G, G, G); OUT float32
 * (N, 1, F, G, G). */
#include <stdio.h>
#include <stdlib.h>

#include "common/error.h"
#include "common/npy.h"
#include "trainer/checkpoint.h"
#include "trainer/coemunet.h"

static int run(const char *ckpt, const char *xp, const char *out) {
  coemunet_config cfg;
  coemunet m;
  CE_TRY(checkpoint_read_config(ckpt, &cfg, NULL));
  CE_TRY(coemunet_build(&m, &cfg, 0));
  CE_TRY(checkpoint_load(ckpt, &m, NULL, NULL));
  npy_info in;
  float *x = NULL;
  CE_TRY(npy_read_f32(xp, &in, &x));
  const size_t G = (size_t)cfg.grid;
  if (in.ndim != 5 || in.shape[1] != 3 || in.shape[2] != G || in.shape[3] != G || in.shape[4] != G)
    CE_FAIL("%s: expected (N, 3, %zu, %zu, %zu)", xp, G, G, G);
  const size_t N = in.shape[0], ys[5] = {N, 1, (size_t)cfg.nfreq, G, G};
  float *y = malloc(sizeof(float) * N * (size_t)cfg.nfreq * G * G);
  if (!y) CE_FAIL("out of memory");
  CE_TRY(nn_set_batch(&m.net, (int)N));
  CE_TRY(nn_input_upload(&m.net, m.input, x));
  CE_TRY(nn_forward(&m.net, 0));
  CE_TRY(nn_out_download(&m.net, m.output, y));
  CE_TRY(npy_write(out, y, NPY_F32, 5, ys));
  free(x);
  free(y);
  coemunet_free(&m);
  return 0;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: ckpt_forward CKPT X.npy OUT.npy\n");
    return 2;
  }
  if (nn_backend_init(&nn_backend_cpu, 0) < 0 || run(argv[1], argv[2], argv[3]) < 0) {
    fprintf(stderr, "ckpt_forward: %s\n", ce_err_msg());
    return 1;
  }
  nn_backend_finish(&nn_backend_cpu);
  return 0;
}
