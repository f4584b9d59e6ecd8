/* cli.c - option parsing shared by all subcommands. */
#include "common/cli.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"

static int g_rank = -1; /* -1: not set */

void cli_set_rank(int rank) { g_rank = rank; }

void cli_print_error(const char *cmd, const char *msg) {
  const char *env = getenv("OMPI_COMM_WORLD_RANK");
  if (!env) env = getenv("PMI_RANK");
  if (g_rank >= 0)
    fprintf(stderr, "coemu %s: rank %d: error: %s\n", cmd, g_rank, msg);
  else if (env)
    fprintf(stderr, "coemu %s: rank %s: error: %s\n", cmd, env, msg);
  else
    fprintf(stderr, "coemu %s: error: %s\n", cmd, msg);
  fflush(stderr);
}

int cli_fail(const char *cmd) {
  cli_print_error(cmd, ce_err_msg());
  return 1;
}

int cli_parse_double(const char *s, double *out) {
  if (!s || !*s) return -1;
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno == ERANGE || *end != 0 || end == s) return -1;
  *out = v;
  return 0;
}

int cli_parse_int(const char *s, int64_t *out) {
  if (!s || !*s) return -1;
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno == ERANGE || *end != 0 || end == s) return -1;
  *out = v;
  return 0;
}

void cli_print_help(const char *cmd, const char *usage, const char *summary,
                    const cli_opt *opts) {
  printf("usage: coemu %s %s\n\n%s\n", cmd, usage ? usage : "[options]",
         summary ? summary : "");
  if (opts && opts[0].name) printf("\noptions:\n");
  for (const cli_opt *o = opts; o && o->name; o++) {
    char left[64];
    if (o->kind == CLI_FLAG)
      snprintf(left, sizeof left, "--%s", o->name);
    else
      snprintf(left, sizeof left, "--%s %s", o->name, o->meta ? o->meta : "VALUE");
    printf("  %-26s %s%s\n", left, o->help ? o->help : "",
           o->required ? " (required)" : "");
  }
  printf("  %-26s %s\n", "--help", "show this help");
}

static int set_value(cli_opt *o, const char *val) {
  switch (o->kind) {
  case CLI_STR:
    *(const char **)o->dest = val;
    return 0;
  case CLI_INT:
    if (cli_parse_int(val, (int64_t *)o->dest) < 0)
      CE_FAIL("option --%s: '%s' is not an integer", o->name, val);
    return 0;
  case CLI_DOUBLE: {
    double d;
    if (cli_parse_double(val, &d) < 0 || !isfinite(d))
      CE_FAIL("option --%s: '%s' is not a finite number", o->name, val);
    *(double *)o->dest = d;
    return 0;
  }
  default:
    CE_FAIL("option --%s takes no value", o->name);
  }
}

int cli_parse(const char *cmd, const char *usage, const char *summary, cli_opt *opts,
              int argc, char **argv, int *npos, char ***pos) {
  char **p = malloc(sizeof(char *) * (size_t)(argc + 1));
  if (!p) CE_FAIL("out of memory");
  int np = 0, only_pos = 0;
  for (int i = 0; i < argc; i++) {
    const char *a = argv[i];
    if (only_pos || a[0] != '-' || a[1] == 0) {
      p[np++] = argv[i];
      continue;
    }
    if (!strcmp(a, "--")) {
      only_pos = 1;
      continue;
    }
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      cli_print_help(cmd, usage, summary, opts);
      free(p);
      return 1;
    }
    const char *name = a + (a[1] == '-' ? 2 : 1);
    const char *eq = strchr(name, '=');
    size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
    cli_opt *o = NULL;
    for (cli_opt *q = opts; q && q->name; q++)
      if (strlen(q->name) == nlen && !strncmp(q->name, name, nlen)) o = q;
    if (!o) {
      free(p);
      CE_FAIL("coemu %s: unknown option '%s' (see coemu %s --help)", cmd, a, cmd);
    }
    o->seen = 1;
    if (o->kind == CLI_FLAG) {
      if (eq) {
        free(p);
        CE_FAIL("coemu %s: option --%s takes no value", cmd, o->name);
      }
      *(int *)o->dest = 1;
      continue;
    }
    const char *val = eq ? eq + 1 : NULL;
    if (!val) {
      if (i + 1 >= argc) {
        free(p);
        CE_FAIL("coemu %s: option --%s needs a value (%s)", cmd, o->name,
                o->meta ? o->meta : "VALUE");
      }
      val = argv[++i];
    }
    if (set_value(o, val) < 0) {
      free(p);
      return ce_err_prefix("coemu %s", cmd);
    }
  }
  for (cli_opt *q = opts; q && q->name; q++)
    if (q->required && !q->seen) {
      free(p);
      CE_FAIL("coemu %s: option --%s is required (see coemu %s --help)", cmd, q->name, cmd);
    }
  if (npos) *npos = np;
  p[np] = NULL;
  if (pos)
    *pos = p; /* the caller frees it */
  else
    free(p);
  return 0;
}
