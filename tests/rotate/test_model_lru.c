/* test_model_lru.c - the model cache (rotate/model_lru.h): hits and loads,
 * least-recently-used eviction, the byte cap held by its own accounting
 * (corner values built after loading and attached payloads included), a
 * model larger than the cap served alone, errors cache nothing; the pinned
 * use by several threads (models loaded outside the cache, in parallel):
 * a pinned model is never evicted, a model inserted twice is kept once,
 * and the bytes held stay within max(cap, T x the largest model). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "rotate/model.h"
#include "rotate/model_lru.h"
#include "rotate/synth.h"

#define NM 4
static char paths[NM][4096];
static const char *tmpdir;
static int payloads_freed;

static void payload_free(void *p) {
  payloads_freed++;
  free(p);
}

static void write_models(void) {
  synth_grid g = synth_grid_default();
  g.levels = 2, g.block_nx = 8, g.base_nx = 16;
  for (int i = 0; i < NM; i++)
    CHECK(synth_write_model(tmpdir, 7, i, &g, paths[i], sizeof paths[i]) == 0);
}

static size_t bytes_of(int i) {
  ce_model *m = NULL;
  if (model_load(paths[i], NULL, &m) < 0) return 0;
  size_t b = model_lru_model_bytes(m);
  model_free(m);
  return b;
}

static void test_hits_loads_and_lru(void) {
  size_t big = 0;
  for (int i = 0; i < NM; i++) {
    size_t b = bytes_of(i);
    CHECK(b > 0);
    if (b > big) big = b;
  }
  /* room for two of the largest, not three */
  size_t cap = 2 * big + big / 2;
  model_lru *c;
  CHECK(model_lru_create(cap, &c) == 0);
  ce_model *m, *m0;
  int loaded;
  CHECK(model_lru_get(c, paths[0], NULL, &m0, &loaded) == 0 && loaded == 1);
  CHECK(model_lru_get(c, paths[0], NULL, &m, &loaded) == 0 && loaded == 0 && m == m0);
  CHECK(model_lru_get(c, paths[1], NULL, &m, &loaded) == 0 && loaded == 1);
  CHECK(model_lru_get(c, paths[0], NULL, &m, &loaded) == 0 && loaded == 0); /* 0 now newest */
  CHECK(model_lru_get(c, paths[2], NULL, &m, &loaded) == 0 && loaded == 1); /* evicts 1 */
  model_lru_stats s;
  model_lru_get_stats(c, &s);
  CHECK(s.entries == 2 && s.evictions == 1 && s.loads == 3 && s.hits == 2);
  CHECK_MSG(s.bytes <= cap && s.peak <= cap, "bytes %zu peak %zu cap %zu", s.bytes, s.peak, cap);
  CHECK(model_lru_get(c, paths[0], NULL, &m, &loaded) == 0 && loaded == 0); /* kept */
  CHECK(model_lru_get(c, paths[1], NULL, &m, &loaded) == 0 && loaded == 1); /* was evicted */
  /* the cached model is the model: same cells as a fresh load */
  ce_model *f = NULL;
  CHECK(model_load(paths[1], NULL, &f) == 0);
  CHECK(f && f->nleaves == m->nleaves && f->ncell == m->ncell &&
        memcmp(f->cells, m->cells, sizeof(model_real) * MODEL_NF * (size_t)f->nleaves * f->ncell) == 0);
  model_free(f);
  /* an epoch over the models, directions grouped: one load per model */
  model_lru_get_stats(c, &s);
  int64_t loads0 = s.loads;
  for (int i = 0; i < NM; i++)
    for (int d = 0; d < 5; d++) CHECK(model_lru_get(c, paths[i], NULL, &m, NULL) == 0);
  model_lru_get_stats(c, &s);
  CHECK_MSG(s.loads - loads0 <= NM, "loads %lld", (long long)(s.loads - loads0));
  CHECK(s.bytes <= cap && s.peak <= cap);
  model_lru_free(c);
}

/* the corner values built after loading count, and the cap still holds */
static void test_nodal_and_payload_counted(void) {
  size_t b0 = bytes_of(0);
  model_lru *c;
  CHECK(model_lru_create(3 * b0, &c) == 0);
  ce_model *m;
  CHECK(model_lru_get(c, paths[0], NULL, &m, NULL) == 0);
  model_lru_stats s;
  model_lru_get_stats(c, &s);
  size_t before = s.bytes;
  CHECK(model_nodal_build(m) == 0);
  model_lru_get_stats(c, &s);
  CHECK_MSG(s.bytes > before, "corners not counted: %zu vs %zu", s.bytes, before);
  size_t with_nodal = s.bytes;
  payloads_freed = 0;
  CHECK(model_lru_attach(c, m, malloc(1000), 1000, payload_free) == 0);
  CHECK(model_lru_payload(c, m) != NULL);
  model_lru_get_stats(c, &s);
  CHECK(s.bytes == with_nodal + 1000);
  /* loading more models keeps the total within the cap: the first (large
   * with its corners and payload) goes, its payload freed with it */
  for (int i = 1; i < NM; i++) {
    CHECK(model_lru_get(c, paths[i], NULL, &m, NULL) == 0);
    CHECK(model_nodal_build(m) == 0);
    model_lru_get_stats(c, &s);
    CHECK_MSG(s.peak <= 3 * b0 + 3 * b0 / 2 && s.bytes >= 1, "peak %zu", s.peak);
  }
  CHECK(model_lru_get(c, paths[3], NULL, &m, NULL) == 0); /* re-measured after the corners */
  model_lru_get_stats(c, &s);
  CHECK_MSG(s.bytes <= 3 * b0 || s.entries == 1, "bytes %zu cap %zu", s.bytes, 3 * b0);
  CHECK(payloads_freed == 1);
  model_lru_free(c);
}

static void test_larger_than_cap_and_errors(void) {
  model_lru *c;
  CHECK(model_lru_create(1000, &c) == 0); /* smaller than any model */
  ce_model *m;
  int loaded;
  CHECK(model_lru_get(c, paths[0], NULL, &m, &loaded) == 0 && loaded);
  CHECK(model_lru_get(c, paths[1], NULL, &m, &loaded) == 0 && loaded);
  model_lru_stats s;
  model_lru_get_stats(c, &s);
  CHECK(s.entries == 1 && s.evictions == 1);
  char missing[4200];
  snprintf(missing, sizeof missing, "%s/none.dat", tmpdir);
  CHECK(model_lru_get(c, missing, NULL, &m, &loaded) == -1);
  CHECK(strstr(ce_err_msg(), "none.dat") != NULL);
  model_lru_get_stats(c, &s);
  CHECK(s.loads == 2);
  CHECK(model_lru_attach(c, (const ce_model *)&s, NULL, 0, NULL) == -1);
  model_lru_free(c);
  CHECK(model_lru_create(0, &c) == 0);
  model_lru_get_stats(c, &s);
  CHECK(s.cap == MODEL_LRU_DEFAULT_CAP);
  model_lru_free(c);
}

/* pinned entries: never evicted; release evicts back to the cap; the same
 * files inserted twice (two threads loaded them at once) kept once */
static void test_pins(void) {
  size_t big = 0;
  for (int i = 0; i < NM; i++)
    if (bytes_of(i) > big) big = bytes_of(i);
  model_lru *c;
  CHECK(model_lru_create(1000, &c) == 0); /* smaller than any model */
  ce_model *a = NULL, *b = NULL, *f = NULL;
  CHECK(model_lru_find(c, paths[0], NULL, &a) == 0 && a == NULL);
  CHECK(model_load(paths[0], NULL, &a) == 0 && model_lru_insert(c, paths[0], NULL, &a) == 0);
  CHECK(model_load(paths[1], NULL, &b) == 0 && model_lru_insert(c, paths[1], NULL, &b) == 0);
  model_lru_stats s;
  model_lru_get_stats(c, &s);
  CHECK_MSG(s.entries == 2 && s.evictions == 0 && s.loads == 2, "both pinned, both held: %lld",
            (long long)s.entries);
  CHECK(model_lru_find(c, paths[0], NULL, &f) == 1 && f == a); /* pinned twice now */
  model_lru_release(c, a);
  model_lru_get_stats(c, &s);
  CHECK(s.entries == 2); /* a still pinned once */
  ce_model *dup = NULL;
  CHECK(model_load(paths[1], NULL, &dup) == 0 && model_lru_insert(c, paths[1], NULL, &dup) == 0);
  CHECK(dup == b); /* the copy loaded meanwhile was freed (ASan: no leak), b pinned twice */
  model_lru_release(c, b);
  model_lru_release(c, b); /* b unpinned: a is pinned, b is kept as the newest use */
  model_lru_get_stats(c, &s);
  CHECK(s.entries == 2 && s.loads == 2);
  model_lru_release(c, a); /* a unpinned: b, the older, goes */
  model_lru_get_stats(c, &s);
  CHECK_MSG(s.entries == 1 && s.evictions == 1 && s.bytes <= big, "after release: %lld entries",
            (long long)s.entries);
  CHECK(model_lru_find(c, paths[0], NULL, &f) == 1 && f == a);
  model_lru_release(c, a);
  model_lru_reserve(c, 1); /* room for one model being loaded: a goes */
  model_lru_get_stats(c, &s);
  CHECK(s.entries == 0);
  model_lru_free(c);
}

/* T threads on one cache under one mutex, loading outside it, each model
 * pinned while "sampled" (its cells read): every model read is the file's,
 * and the peak is within max(cap, T x the largest) */
typedef struct {
  model_lru *c;
  pthread_mutex_t *mu;
  int id, bad;
  uint64_t sums[NM];
} worker;

static uint64_t cells_sum(const ce_model *m) {
  uint64_t h = 0;
  const unsigned char *p = (const unsigned char *)m->cells;
  size_t n = sizeof(model_real) * MODEL_NF * (size_t)m->nleaves * m->ncell;
  for (size_t i = 0; i < n; i++) h = h * 31 + p[i];
  return h;
}

static uint64_t ref_sums[NM];

static void *work(void *arg) {
  worker *w = arg;
  for (int r = 0; r < 6; r++)
    for (int j = 0; j < NM; j++) {
      int i = (j + w->id + r) % NM;
      ce_model *m = NULL;
      pthread_mutex_lock(w->mu);
      int f = model_lru_find(w->c, paths[i], NULL, &m);
      if (f == 0) model_lru_reserve(w->c, 1);
      pthread_mutex_unlock(w->mu);
      if (f == 0) {
        if (model_load(paths[i], NULL, &m) < 0) {
          w->bad++;
          continue;
        }
        pthread_mutex_lock(w->mu);
        if (model_lru_insert(w->c, paths[i], NULL, &m) < 0) w->bad++;
        pthread_mutex_unlock(w->mu);
      }
      if (cells_sum(m) != ref_sums[i]) w->bad++; /* freed under us: ASan, or other bytes */
      pthread_mutex_lock(w->mu);
      model_lru_release(w->c, m);
      pthread_mutex_unlock(w->mu);
    }
  return NULL;
}

static void test_threads(void) {
  size_t big = 0;
  for (int i = 0; i < NM; i++) {
    ce_model *m = NULL;
    CHECK(model_load(paths[i], NULL, &m) == 0);
    ref_sums[i] = cells_sum(m);
    if (model_lru_model_bytes(m) > big) big = model_lru_model_bytes(m);
    model_free(m);
  }
  size_t caps[2] = {1, 2 * big + big / 2};
  for (int ci = 0; ci < 2; ci++)
    for (int T = 2; T <= 3; T++) {
      model_lru *c;
      CHECK(model_lru_create(caps[ci], &c) == 0);
      pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
      worker w[3];
      pthread_t th[3];
      for (int t = 0; t < T; t++) {
        w[t] = (worker){.c = c, .mu = &mu, .id = t};
        CHECK(pthread_create(&th[t], NULL, work, &w[t]) == 0);
      }
      int bad = 0;
      for (int t = 0; t < T; t++) {
        pthread_join(th[t], NULL);
        bad += w[t].bad;
      }
      model_lru_stats s;
      model_lru_get_stats(c, &s);
      size_t bound = caps[ci] > (size_t)T * big ? caps[ci] : (size_t)T * big;
      CHECK_MSG(bad == 0, "cap %zu, %d threads: %d models read wrong", caps[ci], T, bad);
      CHECK_MSG(s.peak <= bound, "cap %zu, %d threads: peak %zu > max(cap, %d x %zu)", caps[ci], T,
                s.peak, T, big);
      CHECK_MSG(s.bytes <= (caps[ci] > big ? caps[ci] : big), "at rest: %zu bytes held", s.bytes);
      model_lru_free(c);
    }
}

int main(void) {
  tmpdir = check_scratch("test_model_lru");
  RUN(write_models);
  RUN(test_hits_loads_and_lru);
  RUN(test_nodal_and_payload_counted);
  RUN(test_larger_than_cap_and_errors);
  RUN(test_pins);
  RUN(test_threads);
  check_scratch_remove();
  return check_report();
}
