/* images_only_threads.c - an images-only dataset's input cubes rebuilt by
 * several threads at once, the way serve's readers rebuild them
 * (shard_reader_read_list_want under the HDF5 lock, then
 * shard_reader_rebuild_list without it, each reader on its own chunk), for
 * test_images_only.py:
 *
 *   images_only_threads ok DIR
 *     - the cubes of every sample, rebuilt by 1, 2 and 3 reader threads
 *       taking chunks of 2 in reverse order, with 1 or 2 OpenMP threads per
 *       call, equal byte for byte the ones shard_reader_read rebuilds in one
 *       call (the old single-caller path), and the targets and checksums
 *       equal too;
 *     - the model cache's cap holds with threads sharing it: with a cap of
 *       one byte (every model alone) the bytes held never exceed T x the
 *       largest model (the peak of a one-thread run under the same cap is
 *       the largest model), and every cube is still right: a model in use
 *       is never evicted under another thread (ASan would see it freed);
 *       with the default cap the peak is within it.
 *   images_only_threads error DIR FIRST LAST TEXT...
 *     - rebuilding every sample fails with a message naming a failing sample
 *       and every TEXT (model number, file, the cause): one call on 2
 *       OpenMP threads names FIRST (the call's first failing sample, in idx
 *       order, whichever thread met it); 2 reader threads name one of
 *       FIRST..LAST (the samples of the bad model): an error raised on a
 *       worker thread reaches the caller.
 * Prints "N passed, N failed". */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "common/error.h"
#include "pipeline/dataset/shard_reader.h"

static shard_reader *rd;
static int64_t S;
static size_t nin, nout;
static float *ref_in, *ref_tg;

/* a chunk-taking reader pool over the samples, in reverse order */
typedef struct {
  pthread_mutex_t h5, take;
  int64_t next; /* chunks handed out */
  int batch, omp_threads;
  float *in, *tg;
  uint64_t *sums;
  int failed;
  char err[4096];
} pool;

static void *reader(void *arg) {
  pool *p = arg;
  int64_t idx[8];
  uint64_t want[8];
  for (;;) {
    pthread_mutex_lock(&p->take);
    int64_t c = p->next++;
    pthread_mutex_unlock(&p->take);
    int64_t first = S - 1 - c * p->batch;
    if (first < 0) break;
    int n = 0;
    for (int k = 0; k < p->batch && first - k >= 0; k++) idx[n++] = first - k;
    /* the rows land where the reference has them: one sample at a time */
    float *tg = malloc((size_t)n * nout * sizeof *tg), *in = malloc((size_t)n * nin * sizeof *in);
    uint64_t sums[16];
    pthread_mutex_lock(&p->h5);
    int rc = shard_reader_read_list_want(rd, idx, n, tg, sums, want);
    pthread_mutex_unlock(&p->h5);
    if (rc == 0) rc = shard_reader_rebuild_list(rd, idx, n, p->omp_threads, want, in, sums);
    if (rc < 0) {
      pthread_mutex_lock(&p->take);
      if (!p->failed) snprintf(p->err, sizeof p->err, "%s", ce_err_msg()); /* thread-local */
      p->failed = 1;
      pthread_mutex_unlock(&p->take);
    }
    for (int k = 0; rc == 0 && k < n; k++) {
      memcpy(p->in + (size_t)idx[k] * nin, in + (size_t)k * nin, nin * sizeof *in);
      memcpy(p->tg + (size_t)idx[k] * nout, tg + (size_t)k * nout, nout * sizeof *tg);
      p->sums[2 * idx[k]] = sums[2 * k];
      p->sums[2 * idx[k] + 1] = sums[2 * k + 1];
    }
    free(tg);
    free(in);
  }
  return NULL;
}

static int run_pool(int nthreads, int omp_threads, pool *p) {
  memset(p, 0, sizeof *p);
  pthread_mutex_init(&p->h5, NULL);
  pthread_mutex_init(&p->take, NULL);
  p->batch = 2;
  p->omp_threads = omp_threads;
  p->in = calloc((size_t)S, nin * sizeof(float));
  p->tg = calloc((size_t)S, nout * sizeof(float));
  p->sums = calloc((size_t)S, 2 * sizeof(uint64_t));
  pthread_t th[4];
  for (int t = 0; t < nthreads; t++) pthread_create(&th[t], NULL, reader, p);
  for (int t = 0; t < nthreads; t++) pthread_join(th[t], NULL);
  pthread_mutex_destroy(&p->h5);
  pthread_mutex_destroy(&p->take);
  return p->failed ? -1 : 0;
}

static void pool_free(pool *p) {
  free(p->in);
  free(p->tg);
  free(p->sums);
}

static void test_same_bytes(void) {
  uint64_t *ref_sums = calloc((size_t)S, 2 * sizeof(uint64_t));
  int64_t *all = malloc((size_t)S * sizeof *all);
  for (int64_t i = 0; i < S; i++) all[i] = i;
  CHECK_OK(shard_reader_read_list_sums(rd, all, (int)S, ref_in, ref_tg, ref_sums));
  for (int readers = 1; readers <= 3; readers++)
    for (int omp = 1; omp <= 2; omp++) {
      pool p;
      int rc = run_pool(readers, omp, &p);
      CHECK_MSG(rc == 0, "%d readers x %d threads: %s", readers, omp, p.err);
      CHECK_MSG(rc < 0 || (memcmp(p.in, ref_in, (size_t)S * nin * sizeof(float)) == 0 &&
                           memcmp(p.tg, ref_tg, (size_t)S * nout * sizeof(float)) == 0 &&
                           memcmp(p.sums, ref_sums, (size_t)S * 2 * sizeof(uint64_t)) == 0),
                "%d readers x %d threads: the rebuilt samples differ from one call's", readers, omp);
      pool_free(&p);
    }
  free(ref_sums);
  free(all);
}

static void test_cap(void) {
  model_lru_stats st;
  shard_reader_rebuild_lru(rd, &st);
  CHECK_MSG(st.peak > 0 && st.peak <= st.cap, "default cap: peak %zu, cap %zu", st.peak, st.cap);
  /* one byte: every model alone; one reader gives the largest model */
  CHECK_OK(shard_reader_set_model_cap(rd, 1));
  pool p;
  CHECK(run_pool(1, 1, &p) == 0);
  CHECK(memcmp(p.in, ref_in, (size_t)S * nin * sizeof(float)) == 0);
  pool_free(&p);
  shard_reader_rebuild_lru(rd, &st);
  size_t largest = st.peak;
  CHECK_MSG(st.cap == 1 && st.entries <= 1 && largest > 0, "cap 1: %lld entries, peak %zu",
            (long long)st.entries, st.peak);
  for (int readers = 2; readers <= 3; readers++) {
    CHECK_OK(shard_reader_set_model_cap(rd, 1));
    int rc = run_pool(readers, 1, &p);
    CHECK_MSG(rc == 0, "%s", p.err);
    CHECK_MSG(rc < 0 || memcmp(p.in, ref_in, (size_t)S * nin * sizeof(float)) == 0,
              "cap 1, %d readers: cubes differ", readers);
    pool_free(&p);
    shard_reader_rebuild_lru(rd, &st);
    /* each reader pins one model at a time: at most `readers` held */
    CHECK_MSG(st.peak <= (size_t)readers * largest && st.entries <= 1,
              "cap 1, %d readers: peak %zu > %d x the largest model %zu (now %lld entries)",
              readers, st.peak, readers, largest, (long long)st.entries);
  }
  CHECK_OK(shard_reader_set_model_cap(rd, 0));
}

static int nwant;
static char **wants;
static int64_t first_bad, last_bad;

static void expect_error(const char *what, int rc, const char *msg, int64_t lo, int64_t hi) {
  int named = 0;
  for (int64_t i = lo; i <= hi; i++) {
    char s[64];
    snprintf(s, sizeof s, "sample %lld (", (long long)i);
    named |= strstr(msg, s) != NULL;
  }
  int ok = rc < 0 && named;
  for (int i = 0; ok && i < nwant; i++) ok = strstr(msg, wants[i]) != NULL;
  CHECK_MSG(ok, "%s: rc %d, expected an error naming sample %lld..%lld and the given texts: %s",
            what, rc, (long long)lo, (long long)hi, msg);
}

static void test_error(void) {
  int64_t *all = malloc((size_t)S * sizeof *all);
  uint64_t *want = malloc((size_t)S * sizeof *want);
  for (int64_t i = 0; i < S; i++) all[i] = i;
  CHECK_OK(shard_reader_read_list_want(rd, all, (int)S, ref_tg, NULL, want));
  ce_err_clear();
  int rc = shard_reader_rebuild_list(rd, all, (int)S, 2, want, ref_in, NULL);
  expect_error("one call on 2 threads", rc, ce_err_msg(), first_bad, first_bad);
  /* serve's readers: each on its own chunk; the failing chunk's reader
   * thread carries the message back */
  pool p;
  rc = run_pool(2, 1, &p);
  expect_error("2 reader threads", rc, p.err, first_bad, last_bad);
  pool_free(&p);
  free(all);
  free(want);
}

int main(int argc, char **argv) {
  if (argc < 3 || (strcmp(argv[1], "ok") && strcmp(argv[1], "error")) ||
      (!strcmp(argv[1], "error") && argc < 6)) {
    fprintf(stderr, "usage: %s ok DIR | error DIR FIRST LAST TEXT...\n", argv[0]);
    return 2;
  }
  if (shard_reader_open(argv[2], 0, &rd) < 0) {
    fprintf(stderr, "error: %s\n", ce_err_msg());
    return 1;
  }
  CHECK(shard_reader_images_only(rd) == 1);
  S = shard_reader_samples(rd);
  int n = shard_reader_n(rd);
  nin = 3 * (size_t)n * n * n;
  nout = (size_t)shard_reader_channels(rd) * n * n;
  ref_in = malloc((size_t)S * nin * sizeof *ref_in);
  ref_tg = malloc((size_t)S * nout * sizeof *ref_tg);
  if (!strcmp(argv[1], "ok")) {
    RUN(test_same_bytes);
    RUN(test_cap);
  } else {
    first_bad = atoll(argv[3]);
    last_bad = atoll(argv[4]);
    wants = argv + 5;
    nwant = argc - 5;
    RUN(test_error);
  }
  free(ref_in);
  free(ref_tg);
  shard_reader_close(rd);
  return check_report();
}
