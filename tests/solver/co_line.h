/* co_line.h - the solver tests' line: CO J=2-1 (transition 2, 28 u) from
 * LAMDA's co.dat of the test data ($COEMU_TEST_DATA, else tests/data). */
#ifndef COEMU_TEST_CO_LINE_H
#define COEMU_TEST_CO_LINE_H

#include <stdio.h>
#include <stdlib.h>

#include "common/error.h"
#include "solver/lamda.h"
#include "solver/lte_line.h"

/* 0, or -1 with the error printed (the test's main then returns 1) */
static inline int test_co_line(lamda_molecule *co, lte_line *L) {
  const char *dir = getenv("COEMU_TEST_DATA");
  char path[512];
  snprintf(path, sizeof path, "%s/lamda/co.dat", dir ? dir : "tests/data");
  if (lamda_read(path, co) < 0 || lte_line_init(L, co, 2, 28.0) < 0) {
    fprintf(stderr, "%s\n", ce_err_msg());
    return -1;
  }
  return 0;
}

#endif
