/* fuzz_weights.c - libFuzzer target: the readers of files that carry a
 * network or arrays from elsewhere: coemu checkpoints (.ckpt), safetensors
 * (coemu export's format, also what PyTorch users hand back) and .npy.
 *
 * Each input is written to a memory file and read back through the public
 * path-based readers, all three on every input (each refuses the others'
 * magic at once): checkpoint_read_config, then, for an architecture small
 * enough, checkpoint_load into a network and an optimiser built for it;
 * safetensors_read_meta, safetensors_meta_config and safetensors_load the
 * same way; npy_read_info and npy_read_f64 / npy_read_f32. Any input is
 * accepted or refused with a message. Built as a fuzzer with -Dfuzz=true
 * and clang (tests/meson.build, fuzz_targets) and run by `bash
 * scripts/fuzz.sh 300 weights`, which makes the starting corpus with
 * `fuzz_weights_seeds --make-seeds DIR` (the seeds below).
 * Without -DCOEMU_LIBFUZZER, tests/fuzz_main.h gives it a main() that runs
 * the built-in seeds (a small COEmuNet's checkpoint and safetensors as
 * coemu writes them, two .npy arrays) and every prefix of them: the test
 * trainer_fuzz_weights_seeds. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/error.h"
#include "common/fsutil.h"
#include "common/npy.h"
#define FUZZ_BUILTIN_SEEDS
#include "fuzz_main.h"
#include "trainer/checkpoint.h"
#include "trainer/coemunet.h"
#include "trainer/nn.h"
#include "trainer/optim.h"
#include "trainer/safetensors.h"

/* the architecture of the seeds: every layer kind, a 100 KB safetensors file */
static coemunet_config small_config(void) {
  coemunet_config c = coemunet_default(2);
  c.grid = 16, c.stem = 2, c.enc[0] = 2, c.enc[1] = 2, c.enc[2] = 2, c.latent = 4, c.dec = 8;
  return c;
}

/* a file's architecture built only when it is about the seeds' size: the
 * readers' checks are the target, not the allocation of a large network */
static int small_enough(const coemunet_config *c) {
  return c->grid <= 24 && c->nfreq <= 8 && c->stem <= 8 && c->enc[0] <= 8 && c->enc[1] <= 8 &&
         c->enc[2] <= 8 && c->latent <= 64 && c->dec <= 32;
}

/* the CPU backend, once a process (as coemu does), before the first network
 * is built: by the seeds or by the first input, whichever comes first */
static int backend_ready(void) {
  static int ready;
  if (!ready && nn_backend_init(&nn_backend_cpu, 0) == 0) ready = 1;
  return ready ? 0 : -1;
}

static void refused_with_message(void) {
  if (!ce_err_msg()[0]) abort(); /* a refusal must say why */
  ce_err_clear();
}

static void fuzz_checkpoint(const char *path) {
  coemunet_config cfg;
  train_state st;
  if (checkpoint_read_config(path, &cfg, &st) < 0) return refused_with_message();
  if (coemunet_check_config(&cfg) < 0) return refused_with_message();
  if (!small_enough(&cfg)) return;
  coemunet m;
  if (coemunet_build(&m, &cfg, 1) < 0) abort();
  adam o;
  adam_config ac = adam_default();
  if (adam_init(&o, &m.net, &ac) < 0) abort();
  if (checkpoint_load(path, &m, &o, &st) < 0) refused_with_message();
  if (checkpoint_load(path, &m, NULL, NULL) < 0) refused_with_message();
  adam_free(&o);
  coemunet_free(&m);
}

static void fuzz_safetensors(const char *path) {
  static safetensors_meta md; /* 36 KiB: not on the fuzzer's stack */
  coemunet_config cfg;
  if (safetensors_read_meta(path, &md) < 0) return refused_with_message();
  if (safetensors_meta_config(&md, path, &cfg) < 0) return refused_with_message();
  if (coemunet_check_config(&cfg) < 0) return refused_with_message();
  if (!small_enough(&cfg)) return;
  coemunet m;
  if (coemunet_build(&m, &cfg, 1) < 0) abort();
  if (safetensors_load(path, &m) < 0) refused_with_message();
  coemunet_free(&m);
}

static void fuzz_npy(const char *path) {
  npy_info info;
  if (npy_read_info(path, &info) < 0) return refused_with_message();
  double *d = NULL;
  if (npy_read_f64(path, &info, &d) < 0) refused_with_message();
  free(d);
  float *f = NULL;
  if (npy_read_f32(path, &info, &f) < 0) refused_with_message();
  free(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static int fd = -1;
  static char path[64];
  ce_set_alloc_limit((size_t)256 << 20);
  if (fd < 0) {
    if (backend_ready() < 0) abort();
    fd = memfd_create("coemu-fuzz", 0);
    if (fd < 0) abort();
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  }
  if (ftruncate(fd, 0) != 0 || pwrite(fd, data, size, 0) != (ssize_t)size) abort();
  ce_err_clear();
  fuzz_checkpoint(path);
  fuzz_safetensors(path);
  fuzz_npy(path);
  return 0;
}

/* the seeds as coemu's writers make them */
static int add_file(const char *path, fuzz_seed_fn add, void *ctx) {
  char *buf;
  size_t len;
  if (fs_read_all(path, &buf, &len) < 0) return -1;
  add((const uint8_t *)buf, len, ctx);
  free(buf);
  return 0;
}

static int fuzz_builtin_seeds(fuzz_seed_fn add, void *ctx) {
  char dir[] = "/tmp/coemu-fuzz-seeds-XXXXXX", ck[96], st[96], n1[96], n2[96];
  if (!mkdtemp(dir)) return -1;
  snprintf(ck, sizeof ck, "%s/small.ckpt", dir);
  snprintf(st, sizeof st, "%s/small.safetensors", dir);
  snprintf(n1, sizeof n1, "%s/a.npy", dir);
  snprintf(n2, sizeof n2, "%s/b.npy", dir);
  if (backend_ready() < 0) return -1;
  coemunet_config cfg = small_config();
  coemunet m;
  adam o;
  adam_config ac = adam_default();
  train_state ts = {.seed = 7, .step = 3, .epoch = 1, .sched = {4e-4, 0.5, 10}};
  int rc = coemunet_build(&m, &cfg, 1);
  if (rc == 0) rc = adam_init(&o, &m.net, &ac);
  if (rc == 0) {
    rc = checkpoint_save(ck, &m, &o, &ts);
    if (rc == 0) rc = safetensors_save(st, &m, NULL, 3);
    adam_free(&o);
  }
  coemunet_free(&m);
  const double a[6] = {1, -2, 3.5, 0, 1e300, -0.0};
  const float b[4] = {1, 2, 3, 4};
  const size_t sa[2] = {2, 3}, sb[1] = {4};
  if (rc == 0) rc = npy_write(n1, a, NPY_F64, 2, sa);
  if (rc == 0) rc = npy_write(n2, b, NPY_F32, 1, sb);
  if (rc == 0) rc = add_file(ck, add, ctx);
  if (rc == 0) rc = add_file(st, add, ctx);
  if (rc == 0) rc = add_file(n1, add, ctx);
  if (rc == 0) rc = add_file(n2, add, ctx);
  if (rc < 0) fprintf(stderr, "fuzz_weights seeds: %s\n", ce_err_msg());
  unlink(ck), unlink(st), unlink(n1), unlink(n2), rmdir(dir);
  return rc;
}
