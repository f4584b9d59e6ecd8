/* model_lru.c - an LRU of loaded models within a byte cap (model_lru.h). */
#include "rotate/model_lru.h"

#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "rotate/sampler.h"

typedef struct {
  char *key;   /* dat '\n' units ("" for NULL) */
  ce_model *m;
  void *payload;
  size_t payload_bytes;
  void (*payload_free)(void *);
  uint64_t used; /* tick of the last get */
  int pins;      /* model_lru_find/insert minus model_lru_release: never evicted while > 0 */
} lru_entry;

struct model_lru {
  size_t cap, largest;
  lru_entry *e;
  int64_t n, alloc;
  uint64_t tick;
  model_lru_stats st;
};

size_t model_lru_model_bytes(const ce_model *m) {
  if (!m) return 0;
  size_t b = sizeof *m;
  size_t cells = (size_t)m->nleaves * (size_t)m->ncell;
  b += cells * MODEL_NF * sizeof(model_real);
  b += (size_t)m->nleaves * sizeof(amrvac_block_id);
  b += (size_t)m->ng[0] * m->ng[1] * m->ng[2] * sizeof(int32_t);
  b += (size_t)m->nnodes * 8 * sizeof(int32_t);
  if (m->nodal) b += (size_t)m->nleaves * (size_t)m->nnodal * MODEL_NODAL_STRIDE * sizeof(model_real);
  if (m->limited) b += cells * SAMPLER_LIMITED_STRIDE * sizeof(model_real);
  return b;
}

static size_t entry_bytes(const lru_entry *e) { return model_lru_model_bytes(e->m) + e->payload_bytes; }

static size_t total_bytes(const model_lru *c) {
  size_t b = 0;
  for (int64_t i = 0; i < c->n; i++) b += entry_bytes(&c->e[i]);
  return b;
}

static void entry_drop(model_lru *c, int64_t i) {
  lru_entry *e = &c->e[i];
  if (e->payload && e->payload_free) e->payload_free(e->payload);
  model_free(e->m);
  free(e->key);
  c->e[i] = c->e[--c->n];
}

/* Evict least recently used entries other than `keep` (NULL: none kept)
 * and not pinned until the held bytes plus `extra` fit in the cap. */
static void evict(model_lru *c, const ce_model *keep, size_t extra) {
  for (;;) {
    size_t b = total_bytes(c);
    if (b + extra <= c->cap) return;
    int64_t victim = -1;
    for (int64_t i = 0; i < c->n; i++)
      if (c->e[i].m != keep && c->e[i].pins == 0 && (victim < 0 || c->e[i].used < c->e[victim].used)) victim = i;
    if (victim < 0) return;
    entry_drop(c, victim);
    c->st.evictions++;
  }
}

static void measure(model_lru *c) {
  c->st.bytes = total_bytes(c);
  c->st.entries = c->n;
  if (c->st.bytes > c->st.peak) c->st.peak = c->st.bytes;
}

int model_lru_create(size_t cap, model_lru **out) {
  model_lru *c = calloc(1, sizeof *c);
  if (!c) CE_FAIL("out of memory for the model cache");
  c->cap = cap ? cap : MODEL_LRU_DEFAULT_CAP;
  c->st.cap = c->cap;
  *out = c;
  return 0;
}

void model_lru_free(model_lru *c) {
  if (!c) return;
  while (c->n > 0) entry_drop(c, c->n - 1);
  free(c->e);
  free(c);
}

static char *make_key(const char *dat, const char *units_path) {
  size_t a = strlen(dat), b = units_path ? strlen(units_path) : 0;
  char *k = malloc(a + b + 2);
  if (!k) return NULL;
  memcpy(k, dat, a);
  k[a] = '\n';
  if (b) memcpy(k + a + 1, units_path, b);
  k[a + 1 + b] = 0;
  return k;
}

/* Append model m under key (owned by the cache from here; freed on
 * failure), count the load and bring the cache back within its cap, m kept.
 * 0, or -1 (out of memory; m is not the cache's then). */
static int add_entry(model_lru *c, char *key, ce_model *m, uint64_t used, int pins) {
  if (c->n == c->alloc) {
    int64_t na = c->alloc ? 2 * c->alloc : 8;
    lru_entry *ne = realloc(c->e, (size_t)na * sizeof *ne);
    if (!ne) {
      free(key);
      CE_FAIL("out of memory for the model cache");
    }
    c->e = ne, c->alloc = na;
  }
  c->e[c->n++] = (lru_entry){key, m, NULL, 0, NULL, used, pins};
  c->st.loads++;
  size_t b = model_lru_model_bytes(m);
  if (b > c->largest) c->largest = b;
  evict(c, m, 0);
  measure(c);
  return 0;
}

int model_lru_get(model_lru *c, const char *dat, const char *units_path, ce_model **m, int *loaded) {
  if (loaded) *loaded = 0;
  char *key = make_key(dat, units_path);
  if (!key) CE_FAIL("out of memory for the model cache");
  c->tick++;
  for (int64_t i = 0; i < c->n; i++)
    if (strcmp(c->e[i].key, key) == 0) {
      free(key);
      c->e[i].used = c->tick;
      c->st.hits++;
      *m = c->e[i].m;
      measure(c); /* the corners may have been built since */
      return 0;
    }
  /* make room for a model like the largest seen before reading this one */
  evict(c, NULL, c->largest);
  ce_model *nm = NULL;
  if (model_load(dat, units_path, &nm) < 0) {
    free(key);
    return -1;
  }
  if (add_entry(c, key, nm, c->tick, 0) < 0) {
    model_free(nm);
    return -1;
  }
  *m = nm;
  if (loaded) *loaded = 1;
  return 0;
}

static int64_t find_model(const model_lru *c, const ce_model *m);

static int64_t find_key(const model_lru *c, const char *key) {
  for (int64_t i = 0; i < c->n; i++)
    if (strcmp(c->e[i].key, key) == 0) return i;
  return -1;
}

int model_lru_find(model_lru *c, const char *dat, const char *units_path, ce_model **m) {
  *m = NULL;
  char *key = make_key(dat, units_path);
  if (!key) CE_FAIL("out of memory for the model cache");
  int64_t i = find_key(c, key);
  free(key);
  if (i < 0) return 0;
  c->e[i].used = ++c->tick;
  c->e[i].pins++;
  c->st.hits++;
  *m = c->e[i].m;
  return 1;
}

void model_lru_reserve(model_lru *c, int n) {
  evict(c, NULL, (size_t)(n > 0 ? n : 0) * c->largest);
}

int model_lru_insert(model_lru *c, const char *dat, const char *units_path, ce_model **m) {
  char *key = make_key(dat, units_path);
  if (!key) CE_FAIL("out of memory for the model cache");
  int64_t i = find_key(c, key);
  if (i >= 0) { /* the same files were loaded meanwhile: that copy is kept */
    free(key);
    model_free(*m);
    c->e[i].used = ++c->tick;
    c->e[i].pins++;
    *m = c->e[i].m;
    return 0;
  }
  return add_entry(c, key, *m, ++c->tick, 1);
}

void model_lru_release(model_lru *c, const ce_model *m) {
  int64_t i = find_model(c, m);
  if (i < 0 || c->e[i].pins < 1) CE_BUG("model cache: releasing a model that is not pinned");
  c->e[i].pins--;
  /* models other threads inserted while this one was pinned may have held
   * more than the cap: back within it now, this one kept (the newest use) */
  evict(c, m, 0);
  measure(c); /* the sampler may have built its corners meanwhile */
}

static int64_t find_model(const model_lru *c, const ce_model *m) {
  for (int64_t i = 0; i < c->n; i++)
    if (c->e[i].m == m) return i;
  return -1;
}

int model_lru_attach(model_lru *c, const ce_model *m, void *payload, size_t bytes,
                     void (*free_fn)(void *)) {
  int64_t i = find_model(c, m);
  if (i < 0) CE_FAIL("model cache: the model to attach to is not held");
  lru_entry *e = &c->e[i];
  if (e->payload && e->payload_free) e->payload_free(e->payload);
  e->payload = payload, e->payload_bytes = bytes, e->payload_free = free_fn;
  size_t eb = entry_bytes(e);
  if (eb > c->largest) c->largest = eb;
  evict(c, m, 0);
  measure(c);
  return 0;
}

void *model_lru_payload(const model_lru *c, const ce_model *m) {
  int64_t i = find_model(c, m);
  return i < 0 ? NULL : c->e[i].payload;
}

void model_lru_get_stats(const model_lru *c, model_lru_stats *s) {
  *s = c->st;
  s->bytes = total_bytes(c);
  s->entries = c->n;
}
