/* check.h - the tiny test harness of the C unit tests.
 *
 *   #include "check.h"
 *   static void test_slab(void) { CHECK_CLOSE(I, expected, 1e-14, 0); }
 *   int main(void) { RUN(test_slab); return check_report(); }
 *
 * A failing CHECK prints file:line, the expression and the values, and the
 * test goes on; check_report() prints "N passed, N failed" and returns the
 * exit status (0 only if nothing failed).
 */
#ifndef COEMU_CHECK_H
#define COEMU_CHECK_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"

static int check_failed_, check_passed_, check_test_failed_;
static const char *check_current_ = "";

#define CHECK_FAIL_(...)                                                       \
  do {                                                                         \
    fprintf(stderr, "%s:%d: %s: ", __FILE__, __LINE__, check_current_);       \
    fprintf(stderr, __VA_ARGS__);                                              \
    fputc('\n', stderr);                                                       \
    check_test_failed_ = 1;                                                    \
  } while (0)

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) CHECK_FAIL_("CHECK(%s) failed", #cond);                       \
  } while (0)

#define CHECK_MSG(cond, ...)                                                   \
  do {                                                                         \
    if (!(cond)) CHECK_FAIL_(__VA_ARGS__);                                     \
  } while (0)

/* |a-b| <= atol + rtol*|b| (NaN never passes). */
#define CHECK_CLOSE(a, b, rtol, atol)                                          \
  do {                                                                         \
    double ca_ = (double)(a), cb_ = (double)(b);                               \
    if (!(fabs(ca_ - cb_) <= (atol) + (rtol)*fabs(cb_)))                       \
      CHECK_FAIL_("%s = %.17g, expected %s = %.17g (rel %.3g)", #a, ca_, #b,   \
                  cb_, cb_ != 0 ? fabs(ca_ - cb_) / fabs(cb_) : fabs(ca_));    \
  } while (0)

/* A call that must succeed (status >= 0); prints the error message if not. */
#define CHECK_OK(call)                                                         \
  do {                                                                         \
    ce_err_clear();                                                            \
    if ((call) < 0) CHECK_FAIL_("%s failed: %s", #call, ce_err_msg());         \
  } while (0)

/* A call that must fail (status < 0) with a message containing `substr`. */
#define CHECK_ERR(call, substr)                                                \
  do {                                                                         \
    ce_err_clear();                                                            \
    if ((call) >= 0)                                                           \
      CHECK_FAIL_("%s succeeded, expected an error containing '%s'", #call,    \
                  substr);                                                     \
    else if (!strstr(ce_err_msg(), substr))                                    \
      CHECK_FAIL_("%s: error '%s' does not contain '%s'", #call, ce_err_msg(), \
                  substr);                                                     \
  } while (0)

#define RUN(fn)                                                                \
  do {                                                                         \
    check_current_ = #fn;                                                      \
    check_test_failed_ = 0;                                                    \
    fn();                                                                      \
    if (check_test_failed_) {                                                  \
      check_failed_++;                                                         \
      fprintf(stderr, "FAIL %s\n", #fn);                                       \
    } else {                                                                   \
      check_passed_++;                                                         \
      fprintf(stderr, "ok   %s\n", #fn);                                       \
    }                                                                          \
  } while (0)

/* A fresh scratch directory for the test program, $TMPDIR (or /tmp)
 * /coemu_<name>_XXXXXX; the program exits with status 2 if it cannot be
 * made. check_scratch_remove() deletes it and everything in it. */
static char check_scratch_[1024];

static inline const char *check_scratch(const char *name) {
  const char *base = getenv("TMPDIR");
  snprintf(check_scratch_, sizeof check_scratch_, "%s/coemu_%s_XXXXXX", base ? base : "/tmp", name);
  if (!mkdtemp(check_scratch_)) {
    perror(check_scratch_);
    exit(2);
  }
  return check_scratch_;
}

static inline void check_scratch_remove(void) {
  char cmd[1100];
  if (!check_scratch_[0]) return;
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", check_scratch_);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", check_scratch_);
}

static inline int check_report(void) {
  printf("%d passed, %d failed\n", check_passed_, check_failed_);
  return check_failed_ ? 1 : 0;
}

#endif
