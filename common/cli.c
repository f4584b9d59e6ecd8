/* cli.c - option parsing, usage errors and the error printer of every
 * command (see cli.h). */
#include "common/cli.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"

static int g_rank = -1; /* -1: not set */

void cli_set_rank(int rank) { g_rank = rank; }

/* The launchers' variables, in the order they are believed, rank and size
 * of one launcher at the same index:
 *   Open MPI's mpirun / prterun        OMPI_COMM_WORLD_RANK, _SIZE
 *   PMI-1/2: MPICH's and Intel MPI's   PMI_RANK, PMI_SIZE
 *     Hydra, srun --mpi=pmi2, Cray PMI
 *   MVAPICH's mpirun_rsh               MV2_COMM_WORLD_RANK, _SIZE
 *   PMIx: srun --mpi=pmix (Open MPI    PMIX_RANK; no size of its own, so
 *     under Slurm sets no OMPI_ ones)  Slurm's SLURM_STEP_NUM_TASKS, which srun
 *                                      sets for every task of a step (not the
 *                                      batch script's SLURM_NTASKS: a command
 *                                      run in the script itself is one process) */
static const char *const launcher_rank_vars[] = {"OMPI_COMM_WORLD_RANK", "PMI_RANK",
                                                 "MV2_COMM_WORLD_RANK", "PMIX_RANK"};
static const char *const launcher_size_vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE",
                                                 "MV2_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS"};

/* the index of the launcher that started this process, -1 for none */
static int launcher(void) {
  for (int i = 0; i < (int)(sizeof launcher_rank_vars / sizeof *launcher_rank_vars); i++)
    if (getenv(launcher_rank_vars[i])) return i;
  return -1;
}

int cli_launched(void) { return launcher() >= 0; }

int cli_launcher_entry(const char *entry) {
  static const char *const prefixes[] = {"OMPI_", "PMIX_", "PMI_", "MV2_COMM_WORLD_"};
  for (size_t i = 0; i < sizeof prefixes / sizeof *prefixes; i++)
    if (!strncmp(entry, prefixes[i], strlen(prefixes[i]))) return 1;
  return 0;
}

int cli_launcher_size(void) {
  const int i = launcher();
  if (i < 0) return 1;
  const char *ws = getenv(launcher_size_vars[i]);
  const int n = ws ? atoi(ws) : 0;
  return n > 0 ? n : 0;
}

int cli_launcher_rank(void) {
  const int i = launcher();
  const int r = i >= 0 ? atoi(getenv(launcher_rank_vars[i])) : 0;
  return r > 0 ? r : 0;
}

void cli_print_error(const char *cmd, const char *msg) {
  if (g_rank >= 0)
    fprintf(stderr, "coemu %s: rank %d: error: %s\n", cmd, g_rank, msg);
  else if (cli_launched())
    fprintf(stderr, "coemu %s: rank %d: error: %s\n", cmd, cli_launcher_rank(), msg);
  else
    fprintf(stderr, "coemu %s: error: %s\n", cmd, msg);
  fflush(stderr);
}

int cli_fail(const char *cmd) {
  cli_print_error(cmd, ce_err_msg());
  return CLI_EXIT_FAILURE;
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

static void print_help(const cli_command *c) {
  printf("usage: coemu %s %s\n\n%s\n", c->name, c->usage ? c->usage : "[options]",
         c->summary ? c->summary : "");
  const cli_opt *opts = c->opts;
  printf("\noptions:\n"); /* --help at least */
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
  fflush(stdout);
}

static int set_value(cli_opt *o, const char *val) {
  switch (o->kind) {
  case CLI_STR:
    *(const char **)o->dest = val;
    return 0;
  case CLI_INT:
  case CLI_INT64: {
    int64_t v;
    int ok = cli_parse_int(val, &v) == 0;
    if (!ok && errno != ERANGE) CE_FAIL("option --%s: '%s' is not an integer", o->name, val);
    if (!ok && o->kind == CLI_INT64)
      CE_FAIL("option --%s: %s is out of range (expected an integer from %lld to %lld)", o->name,
              val, (long long)INT64_MIN, (long long)INT64_MAX);
    if (!ok || (o->kind == CLI_INT && (v < INT_MIN || v > INT_MAX)))
      CE_FAIL("option --%s: %s is out of range (expected an integer from %d to %d)", o->name, val,
              INT_MIN, INT_MAX);
    *(int64_t *)o->dest = v;
    return 0;
  }
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

static const char *plural(int n) { return n == 1 ? "" : "s"; }

/* The positional count against [min_pos, max_pos]: 0, or -1 and a message. */
static int check_count(const cli_command *c, int np, char **p) {
  int lo = c->min_pos < 0 ? 0 : c->min_pos, hi = c->max_pos;
  if (hi >= 0 && np > hi) {
    if (hi == 0) CE_FAIL("unexpected argument '%s' (the command takes options only)", p[0]);
    if (lo == hi)
      CE_FAIL("unexpected argument '%s' (expected %d argument%s, got %d)", p[hi], hi, plural(hi), np);
    CE_FAIL("unexpected argument '%s' (expected at most %d argument%s, got %d)", p[hi], hi,
            plural(hi), np);
  }
  if (np < lo) {
    if (lo == hi) CE_FAIL("expected %d argument%s, got %d", lo, plural(lo), np);
    CE_FAIL("expected at least %d argument%s, got %d", lo, plural(lo), np);
  }
  return 0;
}

/* Options and positional arguments; no printing. 1: --help was asked for,
 * 0: parsed (*pos is the caller's), -1: a usage error (message set). */
static int parse(const cli_command *c, int argc, char **argv, int *npos, char ***pos) {
  cli_opt *opts = c->opts;
  for (cli_opt *q = opts; q && q->name; q++) q->seen = 0;
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
      CE_FAIL("unknown option '%s'", a);
    }
    o->seen = 1;
    if (o->kind == CLI_FLAG) {
      if (eq) {
        free(p);
        CE_FAIL("option --%s takes no value", o->name);
      }
      *(int *)o->dest = 1;
      continue;
    }
    const char *val = eq ? eq + 1 : NULL;
    if (!val) {
      if (i + 1 >= argc) {
        free(p);
        CE_FAIL("option --%s needs a value (%s)", o->name, o->meta ? o->meta : "VALUE");
      }
      val = argv[++i];
    }
    if (set_value(o, val) < 0) {
      free(p);
      return -1;
    }
  }
  for (cli_opt *q = opts; q && q->name; q++)
    if (q->required && !q->seen) {
      free(p);
      CE_FAIL("option --%s is required", q->name);
    }
  if (check_count(c, np, p) < 0) {
    free(p);
    return -1;
  }
  if (npos) *npos = np;
  p[np] = NULL;
  if (pos)
    *pos = p; /* the caller frees it */
  else
    free(p);
  return 0;
}

static void print_usage_error(const char *cmd, const char *msg) {
  cli_print_error(cmd, msg);
  fprintf(stderr, "(coemu %s --help for usage)\n", cmd);
  fflush(stderr);
}

cli_status cli_run_parse(const cli_command *c, int argc, char **argv, int *npos, char ***pos) {
  if (npos) *npos = 0;
  if (pos) *pos = NULL;
  int r = parse(c, argc, argv, npos, pos);
  if (r == 1) {
    print_help(c);
    return CLI_HELP;
  }
  if (r < 0) {
    print_usage_error(c->name, ce_err_msg());
    return CLI_USAGE;
  }
  return CLI_OK;
}

int cli_exit(cli_status s) { return s == CLI_USAGE ? CLI_EXIT_USAGE : CLI_EXIT_OK; }

const cli_opt *cli_find(const cli_opt *opts, const void *dest) {
  for (const cli_opt *o = opts; o->name; o++)
    if (o->dest == dest) return o;
  return NULL;
}

int cli_given(const cli_opt *opts, const void *dest) {
  const cli_opt *o = cli_find(opts, dest);
  return o && o->seen;
}

/* The usage error of an option out of its range, for both checkers:
 * "OPT VALUE: expected RANGE (NOTE)". */
static int range_fail(const char *cmd, const char *opt, const char *value, const char *range,
                      const char *note) {
  return cli_usage_fail(cmd, "%s %s: expected %s%s%s%s", opt, value, range, note ? " (" : "",
                        note ? note : "", note ? ")" : "");
}

int cli_check_ranges(const char *cmd, const cli_range *r, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (r[i].v >= r[i].lo && r[i].v <= r[i].hi) continue;
    char value[32], range[64];
    snprintf(value, sizeof value, "%lld", r[i].v);
    if (r[i].hi == CLI_NO_MAX)
      snprintf(range, sizeof range, ">= %lld", r[i].lo);
    else
      snprintf(range, sizeof range, "%lld..%lld", r[i].lo, r[i].hi);
    return range_fail(cmd, r[i].opt, value, range, r[i].note);
  }
  return 0;
}

int cli_check_double_ranges(const char *cmd, const cli_drange *r, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if ((r[i].lo_open ? r[i].v > r[i].lo : r[i].v >= r[i].lo) && r[i].v <= r[i].hi) continue;
    char value[32], range[96];
    snprintf(value, sizeof value, "%g", r[i].v);
    if (r[i].hi == HUGE_VAL)
      snprintf(range, sizeof range, "%s %g", r[i].lo_open ? ">" : ">=", r[i].lo);
    else
      snprintf(range, sizeof range, "%g..%g%s", r[i].lo, r[i].hi,
               r[i].lo_open ? " (the lower end excluded)" : "");
    return range_fail(cmd, r[i].opt, value, range, r[i].note);
  }
  return 0;
}

int cli_usage_fail(const char *cmd, const char *fmt, ...) {
  char msg[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap); /* before ce_err: fmt may print ce_err_msg() */
  va_end(ap);
  ce_err("%s", msg);
  print_usage_error(cmd, msg);
  return CLI_EXIT_USAGE;
}
