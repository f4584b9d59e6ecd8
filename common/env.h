/* env.h - settings read from the environment (the COEMU_* switches of the
 * device paths: chunk sizes and modes for a device sweep), with the error
 * message every such setting gives for a bad value:
 *   "COEMU_DEVPIPE_CHUNK = 'x': expected a number of cubes, 1..4096"
 *   "COEMU_BF16 = 'x': expected native or emulated"
 * Header-only, for nvcc and the standalone device checks (which link
 * common/error.c); a .cu file includes common/cuda_check.h first, which
 * gives error.h its C linkage. */
#ifndef COEMU_ENV_H
#define COEMU_ENV_H

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"

/* name unset: 0, *out untouched; set to a whole number in [lo, hi]: 1 and
 * *out; anything else (empty, not a number, out of range): -1 with the
 * message above (what: what the number counts) */
static inline int ce_env_int(const char *name, long lo, long hi, const char *what, long *out) {
  const char *s = getenv(name);
  if (!s) return 0;
  char *end;
  errno = 0;
  const long v = strtol(s, &end, 10);
  if (end == s || *end || errno == ERANGE || v < lo || v > hi)
    return ce_err("%s = '%s': expected %s, %ld..%ld", name, s, what, lo, hi);
  *out = v;
  return 1;
}

/* name unset: 0, *out untouched; set to one of the nword words: 1 and its
 * index in *out; anything else (the empty string too): -1 with the message
 * above (expected: the words, and what each does, as the user reads them) */
static inline int ce_env_word(const char *name, const char *const *words, int nword,
                              const char *expected, int *out) {
  const char *s = getenv(name);
  if (!s) return 0;
  for (int i = 0; i < nword; i++)
    if (!strcmp(s, words[i])) {
      *out = i;
      return 1;
    }
  return ce_err("%s = '%s': expected %s", name, s, expected);
}

/* A two-way switch: 0 when unset or set to `off` (the default), 1 when set
 * to `on`, -1 with ce_env_word's message otherwise */
static inline int ce_env_switch(const char *name, const char *off, const char *on,
                                const char *expected) {
  const char *const words[2] = {off, on};
  int w = 0;
  return ce_env_word(name, words, 2, expected, &w) < 0 ? -1 : w;
}

#endif
