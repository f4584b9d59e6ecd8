/* fuzz_main.h - the seed-corpus main() shared by the libFuzzer targets.
 *
 * A target file includes this header and defines LLVMFuzzerTestOneInput.
 * Built with -DCOEMU_LIBFUZZER and -fsanitize=fuzzer (meson -Dfuzz=true,
 * CC=clang) libFuzzer supplies main(); otherwise this main() runs the
 * target on each file named on the command line and on every prefix of it
 * at a 1/64 stride (truncations are the commonest damage a file meets), so
 * that the normal test suite, under the sanitizer builds too, runs the same
 * code on the committed seeds. A target reports a contract violation (a
 * refusal without a message) by abort().
 *
 * Binary formats whose seeds are better made by coemu's own writers than
 * committed (stream headers, checkpoints) define FUZZ_BUILTIN_SEEDS before
 * the include and then fuzz_builtin_seeds(), which hands each seed to
 * add(). The main() runs them as it runs files, and `--make-seeds DIR`
 * writes them to DIR/seed-N, the fuzzer's starting corpus. */
#ifndef COEMU_TESTS_FUZZ_MAIN_H
#define COEMU_TESTS_FUZZ_MAIN_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#ifdef FUZZ_BUILTIN_SEEDS
typedef void (*fuzz_seed_fn)(const uint8_t *data, size_t size, void *ctx);
static int fuzz_builtin_seeds(fuzz_seed_fn add, void *ctx) __attribute__((unused));
#endif

#ifndef COEMU_LIBFUZZER
/* the input whole and every prefix of it at a coarse stride */
static void fuzz_run_seed(const uint8_t *b, size_t n) {
  LLVMFuzzerTestOneInput(b, n);
  for (size_t cut = 0; cut < n; cut += 1 + n / 64) LLVMFuzzerTestOneInput(b, cut);
}

#ifdef FUZZ_BUILTIN_SEEDS
typedef struct {
  const char *dir; /* NULL: run the seed */
  int n, failed;
} fuzz_seed_ctx;

static void fuzz_seed_take(const uint8_t *data, size_t size, void *ctx) {
  fuzz_seed_ctx *c = ctx;
  c->n++;
  if (!c->dir) {
    fuzz_run_seed(data, size);
    return;
  }
  char path[4096];
  snprintf(path, sizeof path, "%s/seed-%d", c->dir, c->n);
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(data, 1, size, f) != size) {
    fprintf(stderr, "cannot write %s\n", path);
    c->failed++;
  }
  if (f && fclose(f) != 0) c->failed++;
}
#endif

int main(int argc, char **argv) {
  int passed = 0, failed = 0;
#ifdef FUZZ_BUILTIN_SEEDS
  fuzz_seed_ctx c = {.dir = argc == 3 && !strcmp(argv[1], "--make-seeds") ? argv[2] : NULL};
  if (fuzz_builtin_seeds(fuzz_seed_take, &c) < 0 || c.failed) {
    fprintf(stderr, "making the built-in seeds failed\n");
    return 1;
  }
  if (c.dir) {
    printf("%d seeds written to %s\n", c.n, c.dir);
    return 0;
  }
  passed += c.n;
#endif
  for (int i = 1; i < argc; i++) {
    FILE *f = fopen(argv[i], "rb");
    if (!f) {
      fprintf(stderr, "cannot open %s\n", argv[i]);
      failed++;
      continue;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(n > 0 ? (size_t)n : 1);
    if (!b || n < 0 || fread(b, 1, (size_t)n, f) != (size_t)n) {
      fprintf(stderr, "cannot read %s\n", argv[i]);
      failed++;
    } else {
      fuzz_run_seed(b, (size_t)n);
      passed++;
    }
    free(b);
    fclose(f);
  }
  printf("%d passed, %d failed\n", passed, failed);
  return failed || passed == 0 ? 1 : 0;
}
#endif

#endif
