/* cpu_check.c - a coemu built for one CPU, started on a CPU without the
 * instructions it was built with, stops with a clear error, not with
 * "Illegal instruction".
 *
 * The default build is -march=native (meson_options.txt): on a cluster the
 * build host is often a login node of another generation than the compute
 * nodes (an AVX-512 login node, AVX2 compute nodes), and the binary would die
 * with SIGILL on its first vector instruction, under MPI as an abort of the
 * whole job that names no cause. common/meson.build lists the instruction
 * sets the build's flags enable (cpu_required.h); this file, compiled for the
 * baseline x86-64 whatever the build's -march, checks them in a constructor
 * that runs before main() and before any other of coemu's code, and exits
 * with status 1 naming the node and what it lacks.
 *
 * COEMU_TEST_CPU_LACKS="name ..." makes the check take those instruction
 * sets as missing (tests/common/test_cpu_check.py; the test also starts
 * coemu under qemu-x86_64 emulating an older CPU where qemu is installed). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cpu_required.h"

/* is name a word of the space-separated list? */
static int listed(const char *list, const char *name) {
  size_t n = strlen(name);
  for (const char *p = list; p && (p = strstr(p, name)); p += n)
    if ((p == list || p[-1] == ' ') && (p[n] == ' ' || p[n] == 0)) return 1;
  return 0;
}

static void append(char *buf, size_t cap, const char *name) {
  size_t len = strlen(buf);
  snprintf(buf + len, cap - len, "%s%s", len ? " " : "", name);
}

__attribute__((constructor(101))) static void coemu_cpu_check(void) {
  char built[512] = "", lacks[512] = "";
  const char *pretend = getenv("COEMU_TEST_CPU_LACKS");
  __builtin_cpu_init(); /* constructors may run before libgcc's own */
#define CE_CPU_X(name)                                                  \
  append(built, sizeof built, name);                                    \
  if (!__builtin_cpu_supports(name) || listed(pretend, name)) append(lacks, sizeof lacks, name);
  CE_CPU_REQUIRED_LIST
#undef CE_CPU_X
  (void)listed;
  (void)pretend;
  if (!lacks[0]) return;
  char host[256] = "";
  if (gethostname(host, sizeof host - 1) != 0 || !host[0]) snprintf(host, sizeof host, "this node");
  fprintf(stderr,
          "coemu: error: this coemu was built for CPUs with %s (%s), and the CPU of %s lacks %s: "
          "it would stop with 'Illegal instruction'. Build coemu on a node of this kind, or with "
          "-Dnative=false for a binary that runs on any x86-64 node (docs/cluster.md, "
          "\"Build nodes and compute nodes\")\n",
          built, CE_CPU_BUILD_FLAGS, host, lacks);
  fflush(stderr);
  _exit(1); /* CLI_EXIT_FAILURE; nothing of coemu's has started yet */
}
