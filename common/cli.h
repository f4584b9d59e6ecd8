/* cli.h - declarative command-line options for coemu's subcommands.
 *
 * Each subcommand lists its options in a table; cli_parse() fills the
 * destinations, rejects unknown options and malformed numbers with a
 * message naming the option, and prints uniform --help text.
 *
 *   double dx = 0; const char *out = NULL; int abs_i = 0;
 *   cli_opt opts[] = {
 *     {"dx", CLI_DOUBLE, &dx, "M", "cell spacing along z [m]", 1},
 *     {"out", CLI_STR, &out, "FILE", "output image (.npy or .h5)", 0},
 *     {"abs", CLI_FLAG, &abs_i, NULL, "take |I|", 0},
 *     {0}};
 *   int r = cli_parse("solve", "[options]", "Ray-trace a cube.", opts, argc, argv, &npos, &pos);
 *   if (r != 0) return r < 0 ? 2 : 0;   // r == 1: help was printed
 *
 * Options are written --name VALUE or --name=VALUE. Positional arguments are
 * returned in order in a NULL-terminated array that the caller free()s (on
 * success only). "--" ends option parsing.
 */
#ifndef COEMU_CLI_H
#define COEMU_CLI_H

#include <stdint.h>

typedef enum { CLI_END = 0, CLI_FLAG, CLI_STR, CLI_INT, CLI_DOUBLE } cli_kind;

typedef struct {
  const char *name;  /* without the leading dashes */
  cli_kind kind;
  void *dest;        /* int* (FLAG), const char** (STR), int64_t* (INT), double* (DOUBLE) */
  const char *meta;  /* value placeholder in help, e.g. "FILE" */
  const char *help;
  int required;
  int seen;          /* set by cli_parse */
} cli_opt;

/* Returns 0 on success, 1 if help was printed, -1 on error (message set). */
int cli_parse(const char *cmd, const char *usage, const char *summary, cli_opt *opts,
              int argc, char **argv, int *npos, char ***pos);

void cli_print_help(const char *cmd, const char *usage, const char *summary,
                    const cli_opt *opts);

/* Reporting a failed command: one printer for every command and rank.
 * cli_fail() prints the current error message (common/error.h) as
 *   coemu CMD: error: MSG            (one process)
 *   coemu CMD: rank R: error: MSG    (under MPI)
 * and returns 1, the exit status of a failed command. The rank is the one
 * given to cli_set_rank() (pipeline/mpi/mpi_fatal.c sets it after MPI_Init),
 * else the launcher's environment (OMPI_COMM_WORLD_RANK, PMI_RANK), else
 * none. cli_print_error() prints a given message the same way. */
int cli_fail(const char *cmd);
void cli_print_error(const char *cmd, const char *msg);
void cli_set_rank(int rank);

/* Strict number parsing: the whole string must be a number. */
int cli_parse_double(const char *s, double *out);
int cli_parse_int(const char *s, int64_t *out);

#endif
