/* error.h - how coemu reports failure.
 *
 * Library functions never print and never exit. On failure they record one
 * message in a thread-local buffer and return a negative status (or NULL).
 * The message names what failed as precisely as the caller knows it: the
 * file, the byte offset or line, the field and what was expected, e.g.
 *   "model.dat: byte 288: tree section: level[17] = 9, expected 1..2"
 * Callers that add context prepend it with ce_err_prefix().  Only the
 * command layer (pipeline/) prints the message (with the MPI rank when it
 * runs under MPI) and turns it into a non-zero exit status.
 */
#ifndef COEMU_ERROR_H
#define COEMU_ERROR_H

#include <stddef.h>

#include "common/fp_model.h" /* refuses a fast floating-point model */

#if defined(__GNUC__)
#define CE_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define CE_PRINTF(a, b)
#endif

/* Record an error message (replaces any earlier one). Returns -1 so that
 * `return ce_err("...")` reads naturally. */
int ce_err(const char *fmt, ...) CE_PRINTF(1, 2);

/* Prepend context to the current message: "ctx: old message". Returns -1. */
int ce_err_prefix(const char *fmt, ...) CE_PRINTF(1, 2);

/* "PATH: cannot open AS", with the reason when the file cannot be read at
 * all ("No such file or directory", "Permission denied"): for opens whose
 * library says only that it failed (H5Fopen). AS says what it was to be
 * opened as ("as HDF5"). Returns -1. */
int ce_err_open(const char *path, const char *as);

/* The current message ("" if none) and clearing it. */
const char *ce_err_msg(void);
void ce_err_clear(void);

/* Fail from inside a function returning int: records and returns -1. */
#define CE_FAIL(...) return ce_err(__VA_ARGS__)

/* Propagate a failing call (status < 0) unchanged. */
#define CE_TRY(call)                                                           \
  do {                                                                         \
    if ((call) < 0) return -1;                                                 \
  } while (0)

/* Fatal internal error (a bug, not bad input): prints file:line and aborts.
 * Used for "cannot happen" conditions only. */
#define CE_BUG(...) ce_bug(__FILE__, __LINE__, __VA_ARGS__)
_Noreturn void ce_bug(const char *file, int line, const char *fmt, ...)
    CE_PRINTF(3, 4);

/* Checked allocation. ce_malloc_array() refuses products that overflow
 * size_t or exceed the limit set by ce_set_alloc_limit() (default 64 GiB),
 * so that absurd counts read from hostile files fail cleanly instead of
 * asking the kernel for terabytes. On failure: NULL and an error message
 * naming `what`. */
void *ce_malloc_array(size_t n, size_t size, const char *what);
void *ce_calloc_array(size_t n, size_t size, const char *what);
void ce_set_alloc_limit(size_t bytes);
size_t ce_alloc_limit(void);

/* Multiply with overflow detection: returns 0 and sets *out, or -1. */
int ce_mul_size(size_t a, size_t b, size_t *out);

#endif
