/* order.c - per-epoch sample orders: the exact permutation and the
 * shard-aware interleave + block shuffle (order.h). */
#include "pipeline/serve/order.h"

#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/rng.h"

#define RNG_STREAM_SHUFFLE 7u /* rng.h stream reserved for epoch shuffles */
#define CTR_EXACT 0u          /* counter word b: the exact permutation */
#define CTR_SHARDS 1u         /* the shard list */
#define CTR_BLOCK0 2u         /* block k: 2 + k */

int order_mode_parse(const char *text, int *mode) {
  if (text && !strcmp(text, "exact")) {
    *mode = ORDER_EXACT;
    return 0;
  }
  if (text && !strcmp(text, "shards")) {
    *mode = ORDER_SHARDS;
    return 0;
  }
  CE_FAIL("order '%s': expected exact or shards", text ? text : "");
}

const char *order_mode_name(int mode) {
  return mode == ORDER_EXACT ? "exact" : mode == ORDER_SHARDS ? "shards" : "?";
}

/* Fisher-Yates with unbiased bounded draws: the exact mode's permutation
 * since the first coemu serve (its output must not change). */
static void shuffle(int64_t *p, int64_t n, ce_rng *r) {
  for (int64_t i = n - 1; i > 0; i--) {
    uint64_t bound = (uint64_t)i + 1, lim = UINT64_MAX - UINT64_MAX % bound, x;
    do x = ce_rng_u64(r);
    while (x >= lim);
    int64_t j = (int64_t)(x % bound), t = p[i];
    p[i] = p[j];
    p[j] = t;
  }
}

int order_plan_init(order_plan *p, const order_opts *o, const int64_t *split, const int64_t *shard,
                    int64_t n, int64_t per_shard) {
  memset(p, 0, sizeof *p);
  p->mode = o->mode;
  p->n = n;
  p->split = split;
  if (o->mode != ORDER_EXACT && o->mode != ORDER_SHARDS)
    CE_FAIL("order mode %d: expected exact (0) or shards (1)", o->mode);
  if (n < 1) CE_FAIL("order: the split has no samples");
  if (o->mode == ORDER_EXACT) return 0;
  p->shards = o->shards ? o->shards : ORDER_DEFAULT_SHARDS;
  if (p->shards < 1 || p->shards > ORDER_MAX_SHARDS)
    CE_FAIL("order shards: %lld shards interleaved: expected 1..%d", (long long)p->shards,
            ORDER_MAX_SHARDS);
  if (o->buffer < 0) CE_FAIL("order buffer: %lld samples: expected >= 1", (long long)o->buffer);
  if (!shard) CE_FAIL("order shards: the shard of every sample is needed");
  int64_t groups = 1;
  for (int64_t k = 0; k < n; k++) {
    if (shard[k] < 0)
      CE_FAIL("order: sample %lld has shard %lld: expected a shard index >= 0", (long long)split[k],
              (long long)shard[k]);
    if (k && shard[k] < shard[k - 1])
      CE_FAIL("order: sample %lld is in shard %lld, after sample %lld of shard %lld: expected "
              "shards to hold contiguous, ascending sample ranges", (long long)split[k],
              (long long)shard[k], (long long)split[k - 1], (long long)shard[k - 1]);
    if (k && shard[k] != shard[k - 1]) groups++;
  }
  p->group_first = ce_malloc_array((size_t)groups + 1, sizeof(int64_t), "order: shard groups");
  if (!p->group_first) return -1;
  p->ngroups = 0;
  p->min_group = n;
  p->max_group = 0;
  for (int64_t k = 0; k <= n; k++)
    if (k == n || k == 0 || shard[k] != shard[k - 1]) {
      if (p->ngroups) {
        int64_t m = k - p->group_first[p->ngroups - 1];
        if (m < p->min_group) p->min_group = m;
        if (m > p->max_group) p->max_group = m;
      }
      p->group_first[p->ngroups++] = k;
    }
  p->ngroups--; /* the last entry is the end */
  int64_t spp = per_shard > 0 ? per_shard : p->max_group;
  p->buffer = o->buffer ? o->buffer : ORDER_DEFAULT_BUFFER_SHARDS * spp;
  if ((n - 1) / p->buffer > (int64_t)(UINT32_MAX - CTR_BLOCK0)) {
    int64_t b = p->buffer;
    order_plan_free(p);
    CE_FAIL("order buffer: %lld samples cut into blocks of %lld: more blocks than the shuffle can "
            "key (2^32 - 2): expected a larger buffer", (long long)n, (long long)b);
  }
  return 0;
}

void order_plan_free(order_plan *p) {
  free(p->group_first);
  p->group_first = NULL;
}

/* Shards mode: interleave K lanes of shuffled shard groups into perm, then
 * shuffle each block of B. */
static int order_shards(const order_plan *p, uint64_t seed, uint32_t epoch, int64_t *perm) {
  const int64_t G = p->ngroups, K = p->shards < G ? p->shards : G;
  int64_t *gl = ce_malloc_array((size_t)G, sizeof(int64_t), "order: shard list");
  int64_t *next = ce_malloc_array((size_t)K, sizeof(int64_t), "order: lanes");
  int64_t *end = ce_malloc_array((size_t)K, sizeof(int64_t), "order: lanes");
  if (!gl || !next || !end) {
    free(gl);
    free(next);
    free(end);
    return -1;
  }
  for (int64_t g = 0; g < G; g++) gl[g] = g;
  ce_rng r = ce_rng_make(seed, epoch, CTR_SHARDS, RNG_STREAM_SHUFFLE);
  shuffle(gl, G, &r);
  /* lanes [0, na): the next sample and the end of each lane's group, in lane
   * order; a lane that runs out of groups is dropped and the rest keep
   * their order, so a lane emits once per round */
  int64_t na = 0, taken = 0, t = 0;
  for (; na < K; na++) {
    next[na] = p->group_first[gl[taken]];
    end[na] = p->group_first[gl[taken] + 1];
    taken++;
  }
  while (na > 0) {
    int64_t w = 0;
    for (int64_t i = 0; i < na; i++) {
      int64_t nx = next[i], en = end[i];
      perm[t++] = p->split[nx++];
      if (nx == en) {
        if (taken == G) continue; /* no group left: the lane drops out */
        nx = p->group_first[gl[taken]];
        en = p->group_first[gl[taken] + 1];
        taken++;
      }
      next[w] = nx;
      end[w] = en;
      w++;
    }
    na = w;
  }
  free(gl);
  free(next);
  free(end);
  if (t != p->n) CE_BUG("order: interleave emitted %lld of %lld samples", (long long)t, (long long)p->n);
  for (int64_t b = 0, k = 0; b < p->n; b += p->buffer, k++) {
    int64_t len = p->n - b < p->buffer ? p->n - b : p->buffer;
    ce_rng rb = ce_rng_make(seed, epoch, CTR_BLOCK0 + (uint32_t)k, RNG_STREAM_SHUFFLE);
    shuffle(perm + b, len, &rb);
  }
  return 0;
}

int order_epoch(const order_plan *p, uint64_t seed, uint32_t epoch, int64_t *perm) {
  if (p->mode == ORDER_SHARDS) return order_shards(p, seed, epoch, perm);
  memcpy(perm, p->split, sizeof(int64_t) * (size_t)p->n);
  ce_rng r = ce_rng_make(seed, epoch, CTR_EXACT, RNG_STREAM_SHUFFLE);
  shuffle(perm, p->n, &r);
  return 0;
}

int64_t order_lru_opens(const int64_t *shards, int64_t n, int64_t handles) {
  if (handles < 1) CE_FAIL("order: an LRU of %lld handles: expected >= 1", (long long)handles);
  int64_t top = -1;
  for (int64_t k = 0; k < n; k++) {
    if (shards[k] < 0) CE_FAIL("order: read %lld is of shard %lld: expected >= 0", (long long)k, (long long)shards[k]);
    if (shards[k] > top) top = shards[k];
  }
  if (n == 0) return 0;
  /* a doubly linked list of the open shards, most recent first, indexed by
   * shard id: prev/next = -1 at the ends, open[s] = 1 while s is open */
  int64_t *prev = ce_malloc_array((size_t)top + 1, sizeof(int64_t), "order: LRU");
  int64_t *nxt = ce_malloc_array((size_t)top + 1, sizeof(int64_t), "order: LRU");
  uint8_t *open = calloc((size_t)top + 1, 1);
  if (!prev || !nxt || !open) {
    free(prev);
    free(nxt);
    free(open);
    CE_FAIL("out of memory for an LRU over %lld shards", (long long)top + 1);
  }
  int64_t head = -1, tail = -1, nopen = 0, opens = 0;
  for (int64_t k = 0; k < n; k++) {
    int64_t s = shards[k];
    if (open[s]) { /* unlink */
      if (s == head) continue;
      nxt[prev[s]] = nxt[s];
      if (nxt[s] >= 0) prev[nxt[s]] = prev[s];
      else tail = prev[s];
    } else {
      opens++;
      if (nopen == handles) { /* close the least recently used */
        int64_t v = tail;
        open[v] = 0;
        tail = prev[v];
        if (tail >= 0) nxt[tail] = -1;
        else head = -1;
      } else
        nopen++;
      open[s] = 1;
    }
    prev[s] = -1; /* push front */
    nxt[s] = head;
    if (head >= 0) prev[head] = s;
    head = s;
    if (tail < 0) tail = s;
  }
  free(prev);
  free(nxt);
  free(open);
  return opens;
}
