/* test_model_lru.c - the model cache (rotate/model_lru.h): hits and loads,
 * least-recently-used eviction, the byte cap held by its own accounting
 * (corner values built after loading and attached payloads included), a
 * model larger than the cap served alone, errors cache nothing. */
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

int main(void) {
  tmpdir = check_scratch("test_model_lru");
  RUN(write_models);
  RUN(test_hits_loads_and_lru);
  RUN(test_nodal_and_payload_counted);
  RUN(test_larger_than_cap_and_errors);
  check_scratch_remove();
  return check_report();
}
