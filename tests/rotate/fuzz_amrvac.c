/* fuzz_amrvac.c - libFuzzer target: the AMRVAC reader on arbitrary bytes.
 *
 * Built as a fuzzer with -Dfuzz=true and clang (tests/rotate/meson.build):
 *   ./build-fuzz/tests/rotate/fuzz_amrvac -max_total_time=300 CORPUS tests/data/amrvac
 * Without -DCOEMU_LIBFUZZER the same file gets a main() that runs the input
 * on each file named on the command line (the seed corpus), so the normal
 * test suite exercises it. Any input must be accepted or refused with a
 * message, never crash, hang or leak. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "rotate/amrvac.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0) return 0;
  ce_set_alloc_limit((size_t)256 << 20);
  FILE *f = fmemopen((void *)data, size, "rb");
  if (!f) return 0;
  amrvac_snapshot s;
  ce_err_clear();
  if (amrvac_open_stream(f, "fuzz.dat", &s) == 0) {
    if (amrvac_read_blocks(&s) < 0 && !ce_err_msg()[0]) abort();
    amrvac_free(&s);
  } else if (!ce_err_msg()[0]) {
    abort(); /* a refusal must say why */
  }
  fclose(f);
  return 0;
}

#ifndef COEMU_LIBFUZZER
int main(int argc, char **argv) {
  int passed = 0, failed = 0;
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
    if (!b || fread(b, 1, (size_t)n, f) != (size_t)n) {
      failed++;
    } else {
      LLVMFuzzerTestOneInput(b, (size_t)n);
      /* and every prefix at a coarse stride: truncations of a seed */
      for (long cut = 0; cut < n; cut += 1 + n / 64) LLVMFuzzerTestOneInput(b, (size_t)cut);
      passed++;
    }
    free(b);
    fclose(f);
  }
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
#endif
