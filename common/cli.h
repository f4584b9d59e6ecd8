/* cli.h - the command-line layer shared by every coemu command and benchmark:
 * declarative options, one parse-and-report call, one error printer and the
 * exit statuses.
 *
 * A command describes itself in a cli_command and hands it to
 * cli_run_parse(), which fills the option destinations, prints --help and
 * reports every usage error itself:
 *
 *   double dx = 0; const char *out = NULL; int abs_i = 0;
 *   cli_opt opts[] = {
 *     {"dx", CLI_DOUBLE, &dx, "M", "cell spacing along z [m]", 1},
 *     {"out", CLI_STR, &out, "FILE", "output image (.npy or .h5)", 0},
 *     {"abs", CLI_FLAG, &abs_i, NULL, "take |I|", 0},
 *     {0}};
 *   const cli_command spec = {"solve", "CUBE.h5 [options]", "Ray-trace a cube.", opts, 1, 1};
 *   int npos; char **pos;
 *   int r = cli_run_parse(&spec, argc, argv, &npos, &pos);
 *   if (r != CLI_OK) return cli_exit(r);      // help printed (0) or usage error (2)
 *   if (dx <= 0) { free(pos); return cli_usage_fail("solve", "--dx %g: expected > 0", dx); }
 *   if (solve(pos[0], ...) < 0) { free(pos); return cli_fail("solve"); }   // exit 1
 *
 * Options are written --name VALUE, --name=VALUE or -name VALUE. Positional
 * arguments are returned in order in a NULL-terminated array that the caller
 * free()s (on CLI_OK only; pass pos = NULL to have none). "--" ends option
 * parsing; "--help" or "-h" prints the help on stdout.
 *
 * A usage error is printed as
 *   coemu CMD: error: MSG
 *   (coemu CMD --help for usage)
 * on stderr, and the command exits with status 2 (CLI_EXIT_USAGE).
 */
#ifndef COEMU_CLI_H
#define COEMU_CLI_H

#include <stdint.h>

#include "common/error.h"

/* The exit statuses of every coemu command (docs/architecture.md, Errors). */
enum {
  CLI_EXIT_OK = 0,      /* done */
  CLI_EXIT_FAILURE = 1, /* failed at run time: bad input file, I/O, ... (cli_fail) */
  CLI_EXIT_USAGE = 2,   /* bad command line (cli_run_parse, cli_usage_fail) */
  CLI_EXIT_STOPPED = 3  /* stopped cleanly by a signal or a limit; rerun to resume */
};

/* CLI_INT takes an integer that fits an int (commands narrow most of them:
 * --upper 4294967298 must not become 2); CLI_INT64 any int64_t (seeds). */
typedef enum { CLI_END = 0, CLI_FLAG, CLI_STR, CLI_INT, CLI_DOUBLE, CLI_INT64 } cli_kind;

typedef struct {
  const char *name;  /* without the leading dashes */
  cli_kind kind;
  void *dest;        /* int* (FLAG), const char** (STR), int64_t* (INT, INT64), double* (DOUBLE) */
  const char *meta;  /* value placeholder in help, e.g. "FILE" */
  const char *help;
  int required;
  int seen;          /* set by cli_run_parse: the option was given */
} cli_opt;

#define CLI_ANY (-1) /* cli_command.max_pos: no limit */

/* A command (or benchmark) as the user sees it. */
typedef struct {
  const char *name;    /* the words after "coemu": "synth", "bench synth" */
  const char *usage;   /* the synopsis after the name, e.g. "DATASET [options]" */
  const char *summary; /* the paragraph --help prints under the synopsis */
  cli_opt *opts;       /* the option table, ending in {0}; NULL: none */
  int min_pos;         /* positional arguments: at least min_pos ... */
  int max_pos;         /* ... and at most max_pos (CLI_ANY: no limit) */
} cli_command;

/* What cli_run_parse() found. */
typedef enum {
  CLI_OK = 0, /* parsed: the destinations are set, *pos is the caller's */
  CLI_HELP,   /* --help was printed on stdout: exit 0 */
  CLI_USAGE   /* a usage error was printed on stderr (the message stays in
                 ce_err_msg()): exit 2 */
} cli_status;

/* Parses argv[0..argc) (the arguments after the command's name) as `c`
 * describes: options (unknown option, option without its value, malformed
 * number, value given to a flag, missing required option) and the number of
 * positional arguments. Prints the help or the usage error itself. */
cli_status cli_run_parse(const cli_command *c, int argc, char **argv, int *npos, char ***pos);

/* The exit status for a cli_run_parse() result: 0 for CLI_OK and CLI_HELP,
 * 2 for CLI_USAGE. */
int cli_exit(cli_status s);

/* A value the command itself rejects as a usage error (out of range, options
 * that do not go together, ...): prints "coemu CMD: error: MSG" and the
 * --help hint, records MSG (ce_err_msg()) and returns 2, the exit status.
 * fmt may print ce_err_msg() ("%s"). */
int cli_usage_fail(const char *cmd, const char *fmt, ...) CE_PRINTF(2, 3);

/* The option of opts that writes to dest (NULL: none), and whether it was
 * given (after cli_run_parse): an option found by its variable, not by its
 * place in the table. */
const cli_opt *cli_find(const cli_opt *opts, const void *dest);
int cli_given(const cli_opt *opts, const void *dest);

/* An integer option's value and its accepted range, for cli_check_ranges. */
typedef struct {
  const char *opt; /* "--ranks" */
  long long v, lo, hi; /* hi CLI_NO_MAX: no upper bound ("expected >= 1") */
  const char *note; /* after the range ("0: the default"), or NULL */
} cli_range;

/* cli_range.hi of an option bounded only below: the parser already keeps a
 * CLI_INT within int, so the message gives the bound that means something
 * ("--handles 0: expected >= 1", not "1..2147483647"). */
#define CLI_NO_MAX INT64_MAX

/* 0 when every value lies in its range; else the usage error of the first
 * that does not, naming it ("--k 0: expected 1..16"), and 2: one message
 * about the option given wrong, not every constraint of the command. */
int cli_check_ranges(const char *cmd, const cli_range *r, size_t n);

/* The same for a real option (seconds, megabytes): its value must lie in
 * lo..hi, lo itself excluded when lo_open ("--timeout 0: expected > 0"; an
 * upper bound of HUGE_VAL prints none). For options a library would take
 * <= 0 as "the default": the user who types one must hear it is refused,
 * not get the default silently. */
typedef struct {
  const char *opt; /* "--timeout" */
  double v, lo, hi;
  int lo_open;
  const char *note; /* after the range ("0: never"), or NULL */
} cli_drange;
int cli_check_double_ranges(const char *cmd, const cli_drange *r, size_t n);

/* Reporting a failed command: one printer for every command and rank.
 * cli_fail() prints the current error message (common/error.h) as
 *   coemu CMD: error: MSG            (one process)
 *   coemu CMD: rank R: error: MSG    (under MPI)
 * and returns 1, the exit status of a failed command. The rank is the one
 * given to cli_set_rank() (pipeline/mpi/mpi_fatal.c sets it after MPI_Init),
 * else the launcher's (cli_launcher_rank, when cli_launched), else none.
 * cli_print_error() prints a given message the same way. */
int cli_fail(const char *cmd);
void cli_print_error(const char *cmd, const char *msg);
void cli_set_rank(int rank);

/* What an MPI launcher told this process before MPI_Init, for commands
 * that start MPI only under a launcher: Open MPI's mpirun, MPICH's or Intel
 * MPI's mpiexec (Hydra), MVAPICH's mpirun_rsh, srun with PMI-2 or PMIx
 * (cli.c lists the variables). cli_launched(): whether one started this
 * process (1 even for one process); cli_launcher_size(): the number of
 * processes it started, 1 without a launcher, 0 when the launcher does not
 * say (PMIx outside Slurm: MPI_Comm_size will); cli_launcher_rank(): this
 * one's rank among them (0 without a launcher). */
int cli_launched(void);
int cli_launcher_size(void);
int cli_launcher_rank(void);
/* Whether an environment entry ("NAME=value") is an MPI launcher's: a
 * process spawned without them (e.g. generate's `serve --live`) is not
 * taken for a rank by cli_launched() or by the MPI library. */
int cli_launcher_entry(const char *entry);

/* Strict number parsing: the whole string must be a number. */
int cli_parse_double(const char *s, double *out);
int cli_parse_int(const char *s, int64_t *out);

/* Comma-separated lists of names ("pageable,pinned"): the next item of *p
 * as its index in names[0..n) (-1: none of them) and its text (*item, *len,
 * not terminated); *p moves past it and its comma. 0 at the end of the
 * list. Header-only, for the standalone device checks that link no cli.c. */
static inline int cli_list_next(const char **p, const char *const *names, int n, int *index,
                                const char **item, int *len) {
  if (!**p) return 0;
  const char *s = *p;
  size_t k = 0;
  while (s[k] && s[k] != ',') k++;
  *item = s, *len = (int)k, *index = -1;
  for (int i = 0; i < n && *index < 0; i++) {
    size_t m = 0;
    while (names[i][m] && m < k && names[i][m] == s[m]) m++;
    if (m == k && !names[i][m]) *index = i;
  }
  *p = s + k + (s[k] == ',');
  return 1;
}

#endif
