/* error.c - thread-local error messages and checked allocation. */
#include "common/error.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CE_ERR_LEN 2048

static _Thread_local char err_buf[CE_ERR_LEN];
static size_t alloc_limit = (size_t)64 << 30;

int ce_err(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err_buf, sizeof err_buf, fmt, ap);
  va_end(ap);
  return -1;
}

int ce_err_prefix(const char *fmt, ...) {
  char old[CE_ERR_LEN], pre[CE_ERR_LEN];
  memcpy(old, err_buf, sizeof old);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(pre, sizeof pre, fmt, ap);
  va_end(ap);
  if (old[0])
    snprintf(err_buf, sizeof err_buf, "%.1000s: %.1000s", pre, old);
  else
    snprintf(err_buf, sizeof err_buf, "%s", pre);
  return -1;
}

int ce_err_open(const char *path, const char *as) {
  if (access(path, R_OK) != 0) return ce_err("%s: cannot open %s: %s", path, as, strerror(errno));
  return ce_err("%s: cannot open %s", path, as);
}

const char *ce_err_msg(void) { return err_buf; }
void ce_err_clear(void) { err_buf[0] = 0; }

void ce_bug(const char *file, int line, const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, "coemu: internal error at %s:%d: ", file, line);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  abort();
}

int ce_mul_size(size_t a, size_t b, size_t *out) {
  if (a != 0 && b > SIZE_MAX / a) return -1;
  *out = a * b;
  return 0;
}

void ce_set_alloc_limit(size_t bytes) { alloc_limit = bytes; }
size_t ce_alloc_limit(void) { return alloc_limit; }

static void *alloc_checked(size_t n, size_t size, const char *what, int zero) {
  size_t bytes;
  if (ce_mul_size(n, size, &bytes) < 0 || bytes > alloc_limit) {
    ce_err("%s: %zu x %zu bytes exceeds the allocation limit of %zu bytes",
           what ? what : "allocation", n, size, alloc_limit);
    return NULL;
  }
  if (bytes == 0) bytes = 1;
  void *p = zero ? calloc(1, bytes) : malloc(bytes);
  if (!p) ce_err("%s: out of memory allocating %zu bytes", what ? what : "allocation", bytes);
  return p;
}

void *ce_malloc_array(size_t n, size_t size, const char *what) {
  return alloc_checked(n, size, what, 0);
}
void *ce_calloc_array(size_t n, size_t size, const char *what) {
  return alloc_checked(n, size, what, 1);
}
