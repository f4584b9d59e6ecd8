/* test_cli.c - common/cli: cli_run_parse() on every path (options, values,
 * positional counts, --help, each usage error), cli_usage_fail(), cli_exit()
 * and the error printer (cli_fail, with and without a rank). What the
 * helpers print is captured from stdout and stderr. */
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#include "check.h"
#include "common/cli.h"

static char tmpl_out[64], tmpl_err[64];

typedef struct {
  char out[8192], err[8192];
} captured;

static int redirect(int fd, const char *path) {
  int saved = dup(fd);
  int f = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  dup2(f, fd);
  close(f);
  return saved;
}

static void restore(int fd, int saved, const char *path, char *buf, size_t n) {
  dup2(saved, fd);
  close(saved);
  FILE *f = fopen(path, "r");
  size_t got = f ? fread(buf, 1, n - 1, f) : 0;
  buf[got] = 0;
  if (f) fclose(f);
}

static int64_t n, seed;
static double dx;
static const char *out;
static int flag;

/* The test command's option table; cli_run_parse resets `seen` itself. */
static cli_opt opts[] = {{"dx", CLI_DOUBLE, &dx, "M", "spacing", 1, 0},
                         {"out", CLI_STR, &out, "FILE", "output", 0, 0},
                         {"abs", CLI_FLAG, &flag, NULL, "take |I|", 0, 0},
                         {"n", CLI_INT, &n, "N", "count", 0, 0},
                         {"seed", CLI_INT64, &seed, "S", "seed", 0, 0},
                         {0}};

/* cli_run_parse on a copy of argv, stdout and stderr captured. */
static cli_status run(const cli_command *c, int argc, char **argv, int *np, char ***pos,
                      captured *cap) {
  n = 0, seed = 0, dx = 0, out = NULL, flag = 0;
  fflush(stdout);
  fflush(stderr);
  int so = redirect(1, tmpl_out), se = redirect(2, tmpl_err);
  cli_status r = cli_run_parse(c, argc, argv, np, pos);
  fflush(stdout);
  fflush(stderr);
  restore(1, so, tmpl_out, cap->out, sizeof cap->out);
  restore(2, se, tmpl_err, cap->err, sizeof cap->err);
  return r;
}

static const cli_command cmd = {"t", "A [B] [options]", "A test command.", opts, 1, 2};

static void test_parsed(void) {
  char *argv[] = {"--dx", "1.5e3", "pos1", "--out=x.npy", "--abs", "-n", "12", "--", "--pos2"};
  int np = -1;
  char **pos = NULL;
  captured cap;
  CHECK(run(&cmd, 9, argv, &np, &pos, &cap) == CLI_OK);
  CHECK(dx == 1500 && !strcmp(out, "x.npy") && flag == 1 && n == 12);
  CHECK(np == 2 && pos && !strcmp(pos[0], "pos1") && !strcmp(pos[1], "--pos2") && !pos[2]);
  CHECK(opts[0].seen && opts[1].seen && opts[2].seen && opts[3].seen);
  CHECK(cap.out[0] == 0 && cap.err[0] == 0);
  free(pos);
  /* seen is reset on every call; pos may be NULL */
  char *argv2[] = {"--dx=2", "a"};
  CHECK(run(&cmd, 2, argv2, &np, NULL, &cap) == CLI_OK);
  CHECK(np == 1 && dx == 2 && opts[0].seen && !opts[1].seen && !opts[2].seen && !opts[3].seen);
  CHECK(cli_exit(CLI_OK) == 0);
  /* the limits of both kinds are taken */
  char *argv3[] = {"--dx=1", "a", "-n", "-2147483648", "--seed", "9223372036854775807"};
  CHECK(run(&cmd, 6, argv3, &np, NULL, &cap) == CLI_OK);
  CHECK(n == INT32_MIN && seed == INT64_MAX && opts[4].seen);
  char *argv4[] = {"--dx=1", "a", "-n", "2147483647", "--seed", "-9223372036854775808"};
  CHECK(run(&cmd, 6, argv4, &np, NULL, &cap) == CLI_OK);
  CHECK(n == INT32_MAX && seed == INT64_MIN);
}

static void test_help(void) {
  char *argv[] = {"--dx", "1", "--help", "--bogus"};
  int np;
  char **pos = (char **)1;
  captured cap;
  CHECK(run(&cmd, 4, argv, &np, &pos, &cap) == CLI_HELP);
  CHECK(pos == NULL);
  CHECK(strstr(cap.out, "usage: coemu t A [B] [options]\n\nA test command.\n") == cap.out);
  CHECK(strstr(cap.out, "--dx M") && strstr(cap.out, "spacing (required)"));
  CHECK(strstr(cap.out, "--abs  ") && strstr(cap.out, "--help"));
  CHECK(cap.err[0] == 0);
  CHECK(cli_exit(CLI_HELP) == 0);
  char *argv2[] = {"-h"};
  CHECK(run(&cmd, 1, argv2, &np, &pos, &cap) == CLI_HELP && strstr(cap.out, "usage: coemu t"));
}

/* A usage error: CLI_USAGE, nothing on stdout, the message and the hint on
 * stderr, the message in ce_err_msg(), exit status 2. */
static void expect_usage(const cli_command *c, int argc, char **argv, const char *msg) {
  int np;
  char **pos = (char **)1;
  captured cap;
  cli_status r = run(c, argc, argv, &np, &pos, &cap);
  CHECK_MSG(r == CLI_USAGE, "%s: status %d, expected CLI_USAGE", msg, (int)r);
  CHECK(pos == NULL && cap.out[0] == 0);
  char want[512];
  snprintf(want, sizeof want, "coemu %s: error: %s\n(coemu %s --help for usage)\n", c->name, msg,
           c->name);
  CHECK_MSG(!strcmp(cap.err, want), "stderr '%s', expected '%s'", cap.err, want);
  CHECK_MSG(!strcmp(ce_err_msg(), msg), "ce_err_msg() '%s', expected '%s'", ce_err_msg(), msg);
  CHECK(cli_exit(r) == 2);
}

static void test_usage_errors(void) {
  char *unknown[] = {"--dx", "1", "a", "--bogus"};
  expect_usage(&cmd, 4, unknown, "unknown option '--bogus'");
  char *unknown_eq[] = {"--dx", "1", "a", "-bogus=3"};
  expect_usage(&cmd, 4, unknown_eq, "unknown option '-bogus=3'");
  char *bad_double[] = {"--dx", "abc", "a"};
  expect_usage(&cmd, 3, bad_double, "option --dx: 'abc' is not a finite number");
  char *inf_double[] = {"--dx=inf", "a"};
  expect_usage(&cmd, 2, inf_double, "option --dx: 'inf' is not a finite number");
  char *bad_int[] = {"--dx", "1", "-n", "1.5", "a"};
  expect_usage(&cmd, 5, bad_int, "option --n: '1.5' is not an integer");
  /* an int option's value must fit an int (commands narrow them: 2^32 + 2
   * must not become 2); CLI_INT64 takes any int64_t */
  char *big_int[] = {"--dx", "1", "-n", "4294967298", "a"};
  expect_usage(&cmd, 5, big_int,
               "option --n: 4294967298 is out of range (expected an integer from -2147483648 to 2147483647)");
  char *neg_int[] = {"--dx", "1", "-n=-2147483649", "a"};
  expect_usage(&cmd, 4, neg_int,
               "option --n: -2147483649 is out of range (expected an integer from -2147483648 to 2147483647)");
  char *huge_int[] = {"--dx", "1", "-n", "99999999999999999999", "a"};
  expect_usage(&cmd, 5, huge_int,
               "option --n: 99999999999999999999 is out of range (expected an integer from -2147483648 to 2147483647)");
  char *big_seed[] = {"--dx", "1", "--seed", "99999999999999999999", "a"};
  expect_usage(&cmd, 5, big_seed,
               "option --seed: 99999999999999999999 is out of range (expected an integer from "
               "-9223372036854775808 to 9223372036854775807)");
  char *flag_value[] = {"--dx", "1", "--abs=1", "a"};
  expect_usage(&cmd, 4, flag_value, "option --abs takes no value");
  char *no_value[] = {"a", "--dx"};
  expect_usage(&cmd, 2, no_value, "option --dx needs a value (M)");
  char *missing[] = {"a", "--out", "y"};
  expect_usage(&cmd, 3, missing, "option --dx is required");
}

static void test_positional_counts(void) {
  char *none[] = {"--dx", "1"};
  expect_usage(&cmd, 2, none, "expected at least 1 argument, got 0");
  char *three[] = {"--dx", "1", "a", "b", "c"};
  expect_usage(&cmd, 5, three, "unexpected argument 'c' (expected at most 2 arguments, got 3)");
  const cli_command one = {"one", "FILE", "", opts, 1, 1};
  expect_usage(&one, 2, none, "expected 1 argument, got 0");
  expect_usage(&one, 4, three, "unexpected argument 'b' (expected 1 argument, got 2)");
  const cli_command two = {"two", "A B", "", opts, 2, 2};
  char *a[] = {"--dx", "1", "a"};
  expect_usage(&two, 3, a, "expected 2 arguments, got 1");
  const cli_command bench = {"bench x", "[options]", "", NULL, 0, 0};
  char *extra[] = {"extra"};
  expect_usage(&bench, 1, extra, "unexpected argument 'extra' (the command takes options only)");
  char *opt[] = {"--dx"};
  expect_usage(&bench, 1, opt, "unknown option '--dx'");
  int np;
  captured cap;
  CHECK(run(&bench, 0, NULL, &np, NULL, &cap) == CLI_OK && np == 0);
  const cli_command any = {"any", "FILE...", "", opts, 0, CLI_ANY};
  char *many[] = {"--dx", "1", "a", "b", "c", "d"};
  char **pos;
  CHECK(run(&any, 6, many, &np, &pos, &cap) == CLI_OK && np == 4 && !strcmp(pos[3], "d"));
  free(pos);
}

static void test_usage_fail(void) {
  fflush(stderr);
  int se = redirect(2, tmpl_err);
  ce_err("synth grid: levels = 9, expected 1..6");
  int a = cli_usage_fail("synth", "%s", ce_err_msg()); /* the current message, unclobbered */
  int b = cli_usage_fail("bench synth", "-n %d: expected >= 1", -2);
  fflush(stderr);
  captured cap;
  restore(2, se, tmpl_err, cap.err, sizeof cap.err);
  CHECK(a == 2 && b == 2 && a == CLI_EXIT_USAGE);
  CHECK_MSG(!strcmp(cap.err, "coemu synth: error: synth grid: levels = 9, expected 1..6\n"
                             "(coemu synth --help for usage)\n"
                             "coemu bench synth: error: -n -2: expected >= 1\n"
                             "(coemu bench synth --help for usage)\n"),
            "stderr '%s'", cap.err);
  CHECK(!strcmp(ce_err_msg(), "-n -2: expected >= 1"));
}

/* cli_check_ranges: in range, 0 and nothing printed; else one message about
 * the first option out of its range (not every constraint), with its note,
 * and ">= lo" for an option bounded only below */
static void test_check_ranges(void) {
  const cli_range ok[] = {{"--k", 16, 1, 16, NULL}, {"--seed", 0, 0, CLI_NO_MAX, NULL}};
  const cli_range bad[] = {{"--batch", 8, 2, 4096, NULL},
                           {"--iters", 0, 1, 1000, NULL},
                           {"--nfreq", 99, 1, 64, NULL}};
  const cli_range below[] = {{"--handles", 0, 1, CLI_NO_MAX, NULL}};
  const cli_range noted[] = {{"--epochs", -5, 0, 100, "0: until stopped"}};
  fflush(stderr);
  int se = redirect(2, tmpl_err);
  int a = cli_check_ranges("t", ok, 2);
  int b = cli_check_ranges("bench train", bad, 3);
  int c = cli_check_ranges("bench order", below, 1);
  int d = cli_check_ranges("serve", noted, 1);
  fflush(stderr);
  captured cap;
  restore(2, se, tmpl_err, cap.err, sizeof cap.err);
  CHECK(a == 0 && b == 2 && c == 2 && d == 2);
  CHECK_MSG(!strcmp(cap.err, "coemu bench train: error: --iters 0: expected 1..1000\n"
                             "(coemu bench train --help for usage)\n"
                             "coemu bench order: error: --handles 0: expected >= 1\n"
                             "(coemu bench order --help for usage)\n"
                             "coemu serve: error: --epochs -5: expected 0..100 (0: until stopped)\n"
                             "(coemu serve --help for usage)\n"),
            "stderr '%s'", cap.err);
}

/* cli_check_double_ranges: the first value out of its range is named, with
 * the range (open or closed at its lower end, with or without an upper one) */
static void test_double_ranges(void) {
  fflush(stderr);
  int se = redirect(2, tmpl_err);
  const cli_drange ok[] = {{"--timeout", 0.5, 0, HUGE_VAL, 1, NULL},
                           {"--idle-exit", 0, 0, HUGE_VAL, 0, "0: never"},
                           {"--frac", 1, 0, 1, 0, NULL}};
  int a = cli_check_double_ranges("serve", ok, 3);
  const cli_drange zero[] = {{"--heartbeat", 1, 0, HUGE_VAL, 1, NULL},
                             {"--timeout", 0, 0, HUGE_VAL, 1, NULL}};
  int b = cli_check_double_ranges("serve", zero, 2);
  const cli_drange neg[] = {{"--idle-exit", -5, 0, HUGE_VAL, 0, "0: never"}};
  int c = cli_check_double_ranges("serve", neg, 1);
  const cli_drange high[] = {{"--frac", 1.5, 0, 1, 1, NULL}};
  int d = cli_check_double_ranges("t", high, 1);
  fflush(stderr);
  captured cap;
  restore(2, se, tmpl_err, cap.err, sizeof cap.err);
  CHECK(a == 0 && b == 2 && c == 2 && d == 2);
  CHECK_MSG(!strcmp(cap.err, "coemu serve: error: --timeout 0: expected > 0\n"
                             "(coemu serve --help for usage)\n"
                             "coemu serve: error: --idle-exit -5: expected >= 0 (0: never)\n"
                             "(coemu serve --help for usage)\n"
                             "coemu t: error: --frac 1.5: expected 0..1 (the lower end excluded)\n"
                             "(coemu t --help for usage)\n"),
            "stderr '%s'", cap.err);
}

static void test_fail_and_rank(void) {
  fflush(stderr);
  int se = redirect(2, tmpl_err);
  ce_err("x.dat: cannot open");
  int a = cli_fail("verify");
  cli_set_rank(3);
  int b = cli_fail("train");
  cli_print_error("eval", "MPI: gone");
  cli_set_rank(-1);
  setenv("PMIX_RANK", "7", 1); /* before MPI_Init: the launcher's rank (srun --mpi=pmix) */
  cli_print_error("verify", "early");
  unsetenv("PMIX_RANK");
  fflush(stderr);
  captured cap;
  restore(2, se, tmpl_err, cap.err, sizeof cap.err);
  CHECK(a == 1 && b == 1 && a == CLI_EXIT_FAILURE);
  CHECK_MSG(!strcmp(cap.err, "coemu verify: error: x.dat: cannot open\n"
                             "coemu train: rank 3: error: x.dat: cannot open\n"
                             "coemu eval: rank 3: error: MPI: gone\n"
                             "coemu verify: rank 7: error: early\n"),
            "stderr '%s'", cap.err);
  CHECK(CLI_EXIT_OK == 0 && CLI_EXIT_STOPPED == 3);
}

/* cli_list_next: every item in order with its index among the names, a
 * prefix or extension of a name is no match, empty items are items */
static void test_list_next(void) {
  static const char *const names[] = {"pinned", "pageable", "resident"};
  const char *p = "resident,pin,pinned,,pinnedx,pageable", *item;
  int idx[8], len[8], k = 0, i, ilen;
  char text[8][16];
  while (k < 8 && cli_list_next(&p, names, 3, &i, &item, &ilen)) {
    idx[k] = i, len[k] = ilen;
    snprintf(text[k], sizeof text[k], "%.*s", ilen, item);
    k++;
  }
  CHECK(k == 6 && *p == 0);
  const int want[6] = {2, -1, 0, -1, -1, 1};
  const char *wtext[6] = {"resident", "pin", "pinned", "", "pinnedx", "pageable"};
  for (int j = 0; j < 6 && j < k; j++)
    CHECK_MSG(idx[j] == want[j] && len[j] == (int)strlen(wtext[j]) && !strcmp(text[j], wtext[j]),
              "item %d: index %d '%s'", j, idx[j], text[j]);
  p = "";
  CHECK(!cli_list_next(&p, names, 3, &i, &item, &ilen));
  p = "pageable,"; /* a trailing comma ends the list */
  CHECK(cli_list_next(&p, names, 3, &i, &item, &ilen) && i == 1 && *p == 0);
  CHECK(!cli_list_next(&p, names, 3, &i, &item, &ilen));
}

/* every variable a launcher may set, cleared between the cases */
static const char *const launcher_vars[] = {
    "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_RANK", "PMI_SIZE", "MV2_COMM_WORLD_RANK",
    "MV2_COMM_WORLD_SIZE", "PMIX_RANK", "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_PROCID"};
static void clear_launcher(void) {
  for (size_t i = 0; i < sizeof launcher_vars / sizeof *launcher_vars; i++)
    unsetenv(launcher_vars[i]);
}

/* cli_launched / _size / _rank under each launcher's variables (the
 * environments of Open MPI's mpirun, MPICH's Hydra, srun with PMI-2 and
 * PMIx, MVAPICH's mpirun_rsh, a Slurm batch script) */
static void test_launchers(void) {
  static const struct {
    const char *what, *env[4][2];
    int launched, size, rank;
  } cases[] = {
      {"no launcher", {{0}}, 0, 1, 0},
      {"Open MPI", {{"OMPI_COMM_WORLD_RANK", "2"}, {"OMPI_COMM_WORLD_SIZE", "4"}}, 1, 4, 2},
      {"Open MPI, one process", {{"OMPI_COMM_WORLD_RANK", "0"}, {"OMPI_COMM_WORLD_SIZE", "1"}},
       1, 1, 0},
      {"Hydra (MPICH, Intel MPI)", {{"PMI_RANK", "5"}, {"PMI_SIZE", "8"}}, 1, 8, 5},
      {"MVAPICH mpirun_rsh", {{"MV2_COMM_WORLD_RANK", "1"}, {"MV2_COMM_WORLD_SIZE", "3"}}, 1, 3,
       1},
      /* srun --mpi=pmix with Open MPI: no OMPI_ variables; the step's size */
      {"srun, PMIx",
       {{"PMIX_RANK", "3"}, {"SLURM_STEP_NUM_TASKS", "128"}, {"SLURM_NTASKS", "256"}}, 1, 128, 3},
      {"PMIx outside Slurm", {{"PMIX_RANK", "1"}}, 1, 0, 1},
      /* prterun sets both: Open MPI's win */
      {"prterun", {{"PMIX_RANK", "1"}, {"OMPI_COMM_WORLD_RANK", "1"}, {"OMPI_COMM_WORLD_SIZE", "2"}},
       1, 2, 1},
      /* a command in the batch script itself: one process, whatever the
       * allocation's task count */
      {"Slurm batch script", {{"SLURM_NTASKS", "64"}, {"SLURM_PROCID", "0"}}, 0, 1, 0},
      {"srun --mpi=none", {{"SLURM_STEP_NUM_TASKS", "4"}, {"SLURM_PROCID", "2"}}, 0, 1, 0},
      {"garbage size", {{"PMI_RANK", "0"}, {"PMI_SIZE", "x"}}, 1, 0, 0},
  };
  for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
    clear_launcher();
    for (int v = 0; v < 4 && cases[c].env[v][0]; v++) setenv(cases[c].env[v][0], cases[c].env[v][1], 1);
    const int l = cli_launched(), sz = cli_launcher_size(), r = cli_launcher_rank();
    CHECK_MSG(l == cases[c].launched && sz == cases[c].size && r == cases[c].rank,
              "%s: launched %d size %d rank %d, expected %d %d %d", cases[c].what, l, sz, r,
              cases[c].launched, cases[c].size, cases[c].rank);
  }
  clear_launcher();
  CHECK(cli_launcher_entry("PMI_FD=3") && cli_launcher_entry("PMIX_NAMESPACE=x") &&
        cli_launcher_entry("OMPI_COMM_WORLD_RANK=0") && cli_launcher_entry("MV2_COMM_WORLD_RANK=0"));
  CHECK(!cli_launcher_entry("SLURM_STEP_NUM_TASKS=4") && !cli_launcher_entry("PMIXX=1"));
  CHECK(!cli_launcher_entry("PATH=/bin") && !cli_launcher_entry("MV2_ENABLE_AFFINITY=0"));
}

int main(void) {
  /* a launcher's rank would change the printed prefix */
  clear_launcher();
  const char *t = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  snprintf(tmpl_out, sizeof tmpl_out, "%.40s/test_cli_out.%d", t, (int)getpid());
  snprintf(tmpl_err, sizeof tmpl_err, "%.40s/test_cli_err.%d", t, (int)getpid());
  RUN(test_parsed);
  RUN(test_help);
  RUN(test_usage_errors);
  RUN(test_positional_counts);
  RUN(test_usage_fail);
  RUN(test_check_ranges);
  RUN(test_double_ranges);
  RUN(test_fail_and_rank);
  RUN(test_list_next);
  RUN(test_launchers);
  unlink(tmpl_out);
  unlink(tmpl_err);
  return check_report();
}
