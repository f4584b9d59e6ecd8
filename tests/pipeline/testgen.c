/* testgen.c - `coemu generate` with an analytic sample producer, for the
 * pipeline tests (tests/pipeline/test_generate.py).
 *
 * The producer is a pure function of (job seed, model, direction): every
 * value is a small integer or a power-of-two fraction, exact in float32, so
 * the Python test recomputes it exactly with numpy. Environment:
 *   COEMU_TEST_DELAY_MS   sleep this long per sample (to kill runs mid-way)
 *   COEMU_TEST_FAIL_MODEL a model id whose samples fail ("cannot read")
 *   COEMU_TEST_FAIL_OPEN  a rank whose producer cannot start ("cannot set up")
 *   COEMU_TEST_SIGNAL     "SIG:SAMPLE[:RANK]" (SIG: TERM, INT or USR1): the rank
 *                         making global sample SAMPLE (only RANK, when given)
 *                         sends itself SIG just before making it, for
 *                         stops at known places (test_generate_signals.py)
 *   COEMU_TEST_RESUME_SIGNAL  "SIG:SHARD[:RANK]": in a resume's first pass
 *                         (generate.c, resume_pass), the rank about to check
 *                         shard SHARD (only RANK, when given) sends itself SIG
 *                         just before that check
 *   COEMU_TEST_RESUME_DELAY_MS  sleep this long before each shard check of
 *                         that pass (to signal ranks from outside while in it);
 *                         with either, each check is announced first ("testgen:
 *                         rank R: checking shard S")
 *   COEMU_TEST_FSIZE      a file-size limit (RLIMIT_FSIZE, bytes) set once MPI
 *                         is up (MPI's own start-up writes files), to act as a
 *                         full disk
 *   COEMU_TEST_CLOSE_PAUSE_MS  the producer's close (after the shards, also
 *                         when the run is stopping) prints "testgen: rank R:
 *                         closing" and then sleeps this long: a window in which
 *                         a test signals ranks that are past their shards
 *   COEMU_TEST_FINISH_SIGNAL  "SIG:STEP[:RANK]" (STEP: dataset, preview or
 *                         stats, generate.h's generate_finish_hook): the rank
 *                         beginning finishing step STEP (only RANK, when
 *                         given) sends itself SIG there
 *   COEMU_TEST_FINISH_PAUSE  "STEP:MS": each rank beginning step STEP prints
 *                         "testgen: rank R: finishing STEP" and sleeps MS ms
 *                         (a window to signal every rank from outside)
 * `testgen inspect DIR` runs dataset_inspect(DIR).
 */
#include <math.h>
#include <mpi.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "common/error.h"
#include "common/rng.h"
#include "pipeline/dataset/dataset.h"
#include "pipeline/generate/generate.h"

typedef struct {
  int n, nf;
  uint64_t seed;
  long delay_ms;
  long fail_model;
  int signal, signal_rank;
  long long signal_sample;
  int64_t directions;
  int resume_signal, resume_signal_rank; /* COEMU_TEST_RESUME_SIGNAL */
  long long resume_signal_shard;
  long resume_delay_ms;
} analytic;

static analytic g_an;

static int analytic_sample(void *ctx, int64_t model, int64_t dir, float *in, float *tg,
                           double q[4]) {
  const analytic *a = ctx;
  if (model == a->fail_model) CE_FAIL("model %lld: cannot read (test producer)", (long long)model);
  if (a->signal && model * a->directions + dir == a->signal_sample) {
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (a->signal_rank < 0 || a->signal_rank == rank) raise(a->signal);
  }
  if (a->delay_ms > 0) {
    struct timespec ts = {a->delay_ms / 1000, (a->delay_ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
  }
  int n = a->n;
  size_t n3 = (size_t)n * n * n;
  for (int x = 0; x < n; x++)
    for (int y = 0; y < n; y++)
      for (int z = 0; z < n; z++) {
        size_t i = ((size_t)x * n + y) * n + z;
        in[i] = (float)((x - y) * 10 + model * 100 + dir);
        in[n3 + i] = (float)(10 + x + 2 * y + 3 * z + model + 0.5 * dir);
        in[2 * n3 + i] = (float)((1 + model) * 1000 + z * dir);
      }
  for (int f = 0; f < a->nf; f++)
    for (int x = 0; x < n; x++)
      for (int y = 0; y < n; y++)
        tg[((size_t)f * n + x) * n + y] =
            (float)ldexp((double)(((f + 1) * 1000 + x * 37 + y * 11 + model * 7 + dir * 3) % 65536), -40);
  ce_rng r = ce_rng_make(a->seed, (uint32_t)model, (uint32_t)dir, 0);
  double s = 0;
  for (int k = 0; k < 4; k++) {
    q[k] = 2 * ce_rng_uniform(&r) - 1;
    s += q[k] * q[k];
  }
  for (int k = 0; k < 4; k++) q[k] /= sqrt(s);
  return 0;
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) < 0) { /* a noted signal interrupts it: sleep the rest */
  }
}

/* generate_producer.resume_check: before this rank checks kept shard `shard` */
static void analytic_resume_check(void *ctx, int64_t shard) {
  const analytic *a = ctx;
  if (!a->resume_signal && a->resume_delay_ms <= 0) return;
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  fprintf(stderr, "testgen: rank %d: checking shard %lld\n", rank, (long long)shard);
  fflush(stderr);
  if (a->resume_signal && shard == a->resume_signal_shard &&
      (a->resume_signal_rank < 0 || a->resume_signal_rank == rank))
    raise(a->resume_signal);
  if (a->resume_delay_ms > 0) sleep_ms(a->resume_delay_ms);
}

/* "SIG:NUMBER[:RANK]" of the variable `var` (SIG: TERM, INT or USR1) */
static int parse_signal(const char *var, int *sig, long long *at, int *rank) {
  const char *v = getenv(var);
  *sig = 0, *at = -1, *rank = -1;
  if (!v) return 0;
  char name[8] = "";
  if (sscanf(v, "%7[A-Z1]:%lld:%d", name, at, rank) < 2)
    CE_FAIL("%s=%s: expected SIG:NUMBER[:RANK]", var, v);
  *sig = !strcmp(name, "TERM") ? SIGTERM : !strcmp(name, "INT") ? SIGINT
       : !strcmp(name, "USR1") ? SIGUSR1 : 0;
  if (!*sig) CE_FAIL("%s=%s: SIG is TERM, INT or USR1", var, v);
  return 0;
}

static void analytic_close(void *ctx) {
  (void)ctx;
  const char *ms = getenv("COEMU_TEST_CLOSE_PAUSE_MS");
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  fprintf(stderr, "testgen: rank %d: closing\n", rank);
  fflush(stderr);
  sleep_ms(atol(ms));
}

static int analytic_open(const job *j, const char *out_dir, generate_producer *p) {
  g_an.n = j->n;
  g_an.nf = j->nf;
  g_an.seed = j->seed;
  const char *d = getenv("COEMU_TEST_DELAY_MS"), *f = getenv("COEMU_TEST_FAIL_MODEL");
  g_an.delay_ms = d ? atol(d) : 0;
  g_an.fail_model = f ? atol(f) : -1;
  g_an.directions = j->directions;
  CE_TRY(parse_signal("COEMU_TEST_SIGNAL", &g_an.signal, &g_an.signal_sample,
                      &g_an.signal_rank));
  CE_TRY(parse_signal("COEMU_TEST_RESUME_SIGNAL", &g_an.resume_signal,
                      &g_an.resume_signal_shard, &g_an.resume_signal_rank));
  const char *rd = getenv("COEMU_TEST_RESUME_DELAY_MS");
  g_an.resume_delay_ms = rd ? atol(rd) : 0;
  const char *fo = getenv("COEMU_TEST_FAIL_OPEN");
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (fo && atoi(fo) == rank) CE_FAIL("rank %d: cannot set up (test producer)", rank);
  const char *lim = getenv("COEMU_TEST_FSIZE");
  if (lim) {
    struct rlimit rl = {(rlim_t)atoll(lim), (rlim_t)atoll(lim)};
    if (setrlimit(RLIMIT_FSIZE, &rl) < 0) CE_FAIL("setrlimit(RLIMIT_FSIZE) failed");
  }
  p->sample = analytic_sample;
  p->ctx = &g_an;
  p->nu0 = 230.5380000e9;
  p->name = "analytic test producer (tests/pipeline/testgen.c)";
  p->close = getenv("COEMU_TEST_CLOSE_PAUSE_MS") ? analytic_close : NULL;
  p->resume_check = analytic_resume_check;
  return 0;
}

/* generate_finish_hook: COEMU_TEST_FINISH_SIGNAL and COEMU_TEST_FINISH_PAUSE.
 * A malformed value is a test's bug: said, and the run aborted. */
static void finish_step(const char *step) {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  const char *v = getenv("COEMU_TEST_FINISH_SIGNAL");
  if (v) {
    char name[8] = "", at[16] = "";
    int only = -1;
    if (sscanf(v, "%7[A-Z1]:%15[a-z]:%d", name, at, &only) < 2) {
      fprintf(stderr, "testgen: COEMU_TEST_FINISH_SIGNAL=%s: expected SIG:STEP[:RANK]\n", v);
      abort();
    }
    int sig = !strcmp(name, "TERM") ? SIGTERM : !strcmp(name, "INT") ? SIGINT
            : !strcmp(name, "USR1") ? SIGUSR1 : 0;
    if (!sig) {
      fprintf(stderr, "testgen: COEMU_TEST_FINISH_SIGNAL=%s: SIG is TERM, INT or USR1\n", v);
      abort();
    }
    if (!strcmp(at, step) && (only < 0 || only == rank)) raise(sig);
  }
  const char *pause = getenv("COEMU_TEST_FINISH_PAUSE");
  char at[16] = "";
  long ms = 0;
  if (pause && sscanf(pause, "%15[a-z]:%ld", at, &ms) == 2 && !strcmp(at, step)) {
    fprintf(stderr, "testgen: rank %d: finishing %s\n", rank, step);
    fflush(stderr);
    sleep_ms(ms);
  }
}

int main(int argc, char **argv) {
  generate_finish_hook = finish_step;
  if (argc == 3 && !strcmp(argv[1], "inspect")) {
    if (dataset_inspect(argv[2]) < 0) {
      fprintf(stderr, "testgen inspect: error: %s\n", ce_err_msg());
      return 1;
    }
    return 0;
  }
  return generate_main("generate", argc - 1, argv + 1, analytic_open);
}
