/* fuzz_amrvac.c - libFuzzer target: the AMRVAC reader on arbitrary bytes.
 *
 * Built as a fuzzer with -Dfuzz=true and clang (tests/meson.build,
 * fuzz_targets) and run by `bash scripts/fuzz.sh 300 amrvac`.
 * Without -DCOEMU_LIBFUZZER, tests/fuzz_main.h gives it a main() that runs
 * the seed corpus, so the normal test suite exercises it. Any input must be
 * accepted or refused with a message, never crash, hang or leak. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "fuzz_main.h"
#include "rotate/amrvac.h"

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

