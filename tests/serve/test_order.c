/* test_order.c - pipeline/serve/order: the per-epoch sample orders, no
 * dataset needed (the split and the shard of every sample are plain arrays).
 *   - exact mode is bit for bit the order coemu serve gave before order.c
 *     existed: goldens made by main's epoch_perm (serve.c at d17d44a,
 *     extracted verbatim into a harness; 1,000 samples of a sparse split for
 *     three seeds x four epochs, edge sizes 1-3, and the paper's 1.74M);
 *   - both modes: a permutation of the split; the same (seed, epoch) gives
 *     the same order from a fresh plan (what a restarted producer computes:
 *     resuming at any position continues it), another epoch or seed another;
 *   - shards mode's locality bounds (order.h): a shard with m samples lies
 *     in at most ceil((m-1) K / B) + 1 consecutive blocks of B, with a sample
 *     in each of them (B >= K); two consecutive blocks hold at most
 *     D = 2K + floor(2B / n_min) shards; an LRU of D handles opens every
 *     shard exactly once, where exact mode opens many times more;
 *   - the LRU model against hand-counted opens; errors name what is wrong. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "common/checksum.h"
#include "common/rng.h"
#include "pipeline/serve/order.h"

static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

/* A dataset laid out as coemu generate lays it out: `models` models of `dirs`
 * directions, `per_shard` samples per shard (shard = index / per_shard), each
 * model in split 0, 1 or 2 (a Philox draw, 0 with probability 0.6). The
 * split `want`'s samples go to split[] (ascending), their shards to shard[]. */
typedef struct {
  int64_t n, per_shard;
  int64_t *split, *shard;
} layout;

static layout make_layout(int64_t models, int64_t dirs, int64_t per_shard, int want, uint64_t seed) {
  layout l = {0, per_shard, malloc(sizeof(int64_t) * (size_t)(models * dirs)),
              malloc(sizeof(int64_t) * (size_t)(models * dirs))};
  ce_rng r = ce_rng_make(seed, 0, 0, 99);
  for (int64_t m = 0; m < models; m++) {
    double u = ce_rng_uniform(&r);
    int sp = u < 0.6 ? 0 : u < 0.8 ? 1 : 2;
    if (want >= 0 && sp != want) continue;
    for (int64_t d = 0; d < dirs; d++) {
      l.split[l.n] = m * dirs + d;
      l.shard[l.n] = l.split[l.n] / per_shard;
      l.n++;
    }
  }
  return l;
}

static void free_layout(layout *l) {
  free(l->split);
  free(l->shard);
}

/* perm[] = epoch order of the layout in `mode`; 0 or -1 (checked). */
static int epoch_order(const layout *l, int mode, int64_t K, int64_t B, uint64_t seed, uint32_t e,
                       int64_t *perm, order_plan *keep) {
  order_opts o = {.mode = mode, .shards = K, .buffer = B};
  order_plan p;
  ce_err_clear();
  if (order_plan_init(&p, &o, l->split, l->shard, l->n, l->per_shard) < 0) {
    CHECK_FAIL_("order_plan_init: %s", ce_err_msg());
    return -1;
  }
  int rc = order_epoch(&p, seed, e, perm);
  CHECK_MSG(rc == 0, "order_epoch: %s", ce_err_msg());
  if (keep)
    *keep = p;
  else
    order_plan_free(&p);
  return rc;
}

static int is_permutation(const int64_t *perm, const int64_t *split, int64_t n) {
  int64_t *s = malloc(sizeof(int64_t) * (size_t)n);
  memcpy(s, perm, sizeof(int64_t) * (size_t)n);
  qsort(s, (size_t)n, sizeof(int64_t), cmp_i64);
  int ok = !memcmp(s, split, sizeof(int64_t) * (size_t)n);
  free(s);
  return ok;
}

/* Goldens of main's epoch_perm: {n, sparse, seed, epoch, XXH64 of the
 * int64 order, its first six entries (-1 past the end)}. The split is the
 * first n indices i with (i * 7) % 10 < 8 (sparse) or 0..n-1. */
static const struct {
  int64_t n;
  int sparse;
  uint64_t seed;
  uint32_t epoch;
  uint64_t xxh;
  int64_t first[6];
} GOLDEN[] = {
    {1000, 1, 1ull, 0u, 0xaf5a7db35e7ca9ccull, {1045, 40, 628, 916, 375, 742}},
    {1000, 1, 1ull, 1u, 0x3a304b02638d2ab2ull, {392, 343, 639, 889, 28, 261}},
    {1000, 1, 1ull, 7u, 0x22d11e9381808ff0ull, {401, 1035, 1040, 265, 319, 386}},
    {1000, 1, 1ull, 4294967295u, 0x28f99a0b0322cb23ull, {605, 553, 71, 620, 210, 543}},
    {1000, 1, 1234ull, 0u, 0x5ad1c455746a9485ull, {499, 111, 670, 75, 263, 219}},
    {1000, 1, 1234ull, 1u, 0x6cd79bd218230eedull, {378, 246, 1071, 676, 1132, 1176}},
    {1000, 1, 1234ull, 7u, 0xd37a58fd165a4464ull, {691, 362, 1108, 72, 1138, 892}},
    {1000, 1, 1234ull, 4294967295u, 0x9b3b3060db2e5053ull, {643, 826, 719, 1212, 485, 560}},
    {1000, 1, 1099511627781ull, 0u, 0x59dcc5e8dfce6cbfull, {1232, 281, 1135, 273, 493, 431}},
    {1000, 1, 1099511627781ull, 1u, 0x1cf94e94a5e77b20ull, {1216, 305, 1078, 21, 302, 751}},
    {1000, 1, 1099511627781ull, 7u, 0x6370b150967b774eull, {356, 748, 213, 1029, 793, 1168}},
    {1000, 1, 1099511627781ull, 4294967295u, 0x5e032140e21cb3b6ull, {226, 716, 278, 529, 888, 283}},
    {1, 0, 1234ull, 0u, 0x34c96acdcadb1bbbull, {0, -1, -1, -1, -1, -1}},
    {2, 0, 1234ull, 0u, 0x5522e3e91134a8fbull, {0, 1, -1, -1, -1, -1}},
    {2, 0, 1234ull, 1u, 0x6c1cff0459c8bb10ull, {1, 0, -1, -1, -1, -1}},
    {3, 1, 99ull, 3u, 0xc9cd304750df8bbaull, {2, 1, 0, -1, -1, -1}},
    {1740000, 0, 1234ull, 0u, 0xc6d4f1c56327f58full, {434431, 945287, 514110, 1639122, 1689135, 119537}},
    {1740000, 0, 1234ull, 1u, 0xa798a2590cfb98a3ull, {599862, 546018, 73592, 1209473, 716509, 1590362}},
};

static int64_t perm_at_or(const int64_t *perm, int64_t n, int64_t k) { return k < n ? perm[k] : -1; }

static void test_exact_golden(void) {
  for (size_t g = 0; g < sizeof GOLDEN / sizeof GOLDEN[0]; g++) {
    int64_t n = GOLDEN[g].n, *split = malloc(sizeof(int64_t) * (size_t)n),
            *perm = malloc(sizeof(int64_t) * (size_t)n);
    for (int64_t i = 0, k = 0; k < n; i++)
      if (!GOLDEN[g].sparse || (i * 7) % 10 < 8) split[k++] = i;
    order_opts o = {0}; /* zeroed: exact, the default */
    order_plan p;
    CHECK_OK(order_plan_init(&p, &o, split, NULL, n, 0));
    CHECK_OK(order_epoch(&p, GOLDEN[g].seed, GOLDEN[g].epoch, perm));
    uint64_t h = ce_xxh64(perm, sizeof(int64_t) * (size_t)n, 0);
    CHECK_MSG(h == GOLDEN[g].xxh, "n %lld seed %llu epoch %u: XXH64 %016llx, main gave %016llx",
              (long long)n, (unsigned long long)GOLDEN[g].seed, GOLDEN[g].epoch,
              (unsigned long long)h, (unsigned long long)GOLDEN[g].xxh);
    for (int k = 0; k < 6; k++)
      CHECK(perm_at_or(perm, n, k) == GOLDEN[g].first[k]);
    order_plan_free(&p);
    free(split);
    free(perm);
  }
}

/* Layouts: (models, directions, samples per shard), like the fixture, the
 * paper (200 directions, 64 per shard), 1-sample shards, shards that are
 * not a multiple of a model. */
static const int64_t LAYOUTS[][3] = {{50, 3, 8}, {40, 200, 64}, {300, 5, 1}, {37, 10, 7}, {9, 11, 100}};
#define NLAYOUTS (sizeof LAYOUTS / sizeof LAYOUTS[0])

static void test_permutation_and_determinism(void) {
  for (size_t c = 0; c < NLAYOUTS; c++)
    for (int want = -1; want < 3; want++) {
      layout l = make_layout(LAYOUTS[c][0], LAYOUTS[c][1], LAYOUTS[c][2], want, 5 + c);
      if (l.n < 8) {
        free_layout(&l);
        continue;
      }
      size_t bytes = sizeof(int64_t) * (size_t)l.n;
      int64_t *a = malloc(bytes), *b = malloc(bytes);
      for (int mode = 0; mode < 2; mode++)
        for (uint32_t e = 0; e < 3; e++) {
          if (epoch_order(&l, mode, 3, 0, 42, e, a, NULL) < 0) continue;
          CHECK_MSG(is_permutation(a, l.split, l.n),
                    "layout %zu split %d %s epoch %u: not a permutation of the split", c, want,
                    order_mode_name(mode), e);
          CHECK_MSG(memcmp(a, l.split, bytes), "layout %zu %s epoch %u: not shuffled", c,
                    order_mode_name(mode), e);
          /* a fresh plan (a restarted producer) computes the same order, so
           * a consumer resuming at any position gets the rest of this one */
          epoch_order(&l, mode, 3, 0, 42, e, b, NULL);
          CHECK_MSG(!memcmp(a, b, bytes), "layout %zu %s epoch %u: a second plan differs", c,
                    order_mode_name(mode), e);
          epoch_order(&l, mode, 3, 0, 42, e + 1, b, NULL);
          CHECK_MSG(memcmp(a, b, bytes), "layout %zu %s: epochs %u and %u agree", c,
                    order_mode_name(mode), e, e + 1);
          epoch_order(&l, mode, 3, 0, 43, e, b, NULL);
          CHECK_MSG(memcmp(a, b, bytes), "layout %zu %s epoch %u: seeds 42 and 43 agree", c,
                    order_mode_name(mode), e);
          /* the other mode is another order */
          epoch_order(&l, !mode, 3, 0, 42, e, b, NULL);
          CHECK_MSG(memcmp(a, b, bytes), "layout %zu epoch %u: exact and shards agree", c, e);
        }
      free(a);
      free(b);
      free_layout(&l);
    }
}

/* Shards mode's bounds (order.h), for each layout and several K and B >= K. */
static void check_locality(const layout *l, int64_t K, int64_t B, uint32_t e) {
  size_t bytes = sizeof(int64_t) * (size_t)l->n;
  int64_t *perm = malloc(bytes), *sh = malloc(bytes);
  order_plan p;
  if (epoch_order(l, ORDER_SHARDS, K, B, 7, e, perm, &p) < 0) {
    free(perm);
    free(sh);
    return;
  }
  CHECK(p.shards == K && p.buffer == (B ? B : 4 * l->per_shard));
  B = p.buffer;
  const int64_t nshard = l->shard[l->n - 1] + 1, nblocks = (l->n + B - 1) / B;
  /* per shard: samples, first and last block, blocks with a sample */
  int64_t *cnt = calloc((size_t)nshard, sizeof(int64_t)), *first = malloc(sizeof(int64_t) * (size_t)nshard),
          *last = calloc((size_t)nshard, sizeof(int64_t)), *inblocks = calloc((size_t)nshard, sizeof(int64_t)),
          *lastseen = malloc(sizeof(int64_t) * (size_t)nshard);
  for (int64_t s = 0; s < nshard; s++) first[s] = lastseen[s] = -1;
  for (int64_t k = 0; k < l->n; k++) {
    sh[k] = perm[k] / l->per_shard;
    int64_t s = sh[k], b = k / B;
    cnt[s]++;
    if (first[s] < 0) first[s] = b;
    last[s] = b;
    if (lastseen[s] != b) inblocks[s]++;
    lastseen[s] = b;
  }
  int64_t groups = 0, nmin = l->n;
  for (int64_t s = 0; s < nshard; s++)
    if (cnt[s]) {
      groups++;
      if (cnt[s] < nmin) nmin = cnt[s];
    }
  CHECK(groups == p.ngroups && nmin == p.min_group);
  for (int64_t s = 0; s < nshard; s++) {
    if (!cnt[s]) continue;
    int64_t span = last[s] - first[s] + 1, bound = ((cnt[s] - 1) * K + B - 1) / B + 1;
    CHECK_MSG(span <= bound, "K %lld B %lld: shard %lld (%lld samples) spans %lld blocks, bound %lld",
              (long long)K, (long long)B, (long long)s, (long long)cnt[s], (long long)span,
              (long long)bound);
    CHECK_MSG(inblocks[s] == span, "K %lld B %lld: shard %lld spans %lld blocks but is in %lld of them",
              (long long)K, (long long)B, (long long)s, (long long)span, (long long)inblocks[s]);
  }
  /* distinct shards of any two consecutive blocks */
  const int64_t D = 2 * K + 2 * B / nmin;
  int64_t most = 0;
  uint8_t *seen = calloc((size_t)nshard, 1);
  for (int64_t b = 0; b < nblocks; b++) {
    int64_t lo = b * B, hi = (b + 2) * B < l->n ? (b + 2) * B : l->n, d = 0;
    for (int64_t k = lo; k < hi; k++)
      if (!seen[sh[k]]) seen[sh[k]] = 1, d++;
    for (int64_t k = lo; k < hi; k++) seen[sh[k]] = 0;
    if (d > most) most = d;
  }
  CHECK_MSG(most <= D, "K %lld B %lld n_min %lld: two blocks hold %lld shards, bound %lld",
            (long long)K, (long long)B, (long long)nmin, (long long)most, (long long)D);
  int64_t opens = order_lru_opens(sh, l->n, D);
  CHECK_MSG(opens == groups, "K %lld B %lld: an LRU of %lld handles opens %lld times for %lld shards",
            (long long)K, (long long)B, (long long)D, (long long)opens, (long long)groups);
  /* exact mode, same handles: a shard is opened again and again (when the
   * split has far more shards than handles) */
  if (groups >= 4 * D && l->n >= 2 * groups) {
    int64_t *ex = malloc(bytes);
    epoch_order(l, ORDER_EXACT, 0, 0, 7, e, ex, NULL);
    for (int64_t k = 0; k < l->n; k++) ex[k] /= l->per_shard;
    int64_t exact_opens = order_lru_opens(ex, l->n, D);
    CHECK_MSG(exact_opens > groups + groups / 2, "exact mode: %lld opens for %lld shards",
              (long long)exact_opens, (long long)groups);
    free(ex);
  }
  free(seen);
  free(cnt);
  free(first);
  free(last);
  free(inblocks);
  free(lastseen);
  order_plan_free(&p);
  free(perm);
  free(sh);
}

static void test_locality(void) {
  const int64_t Ks[] = {1, 2, 3, 8, 16};
  for (size_t c = 0; c < NLAYOUTS; c++)
    for (int want = -1; want < 3; want += 3) { /* all, and the train split */
      layout l = make_layout(LAYOUTS[c][0], LAYOUTS[c][1], LAYOUTS[c][2], want, 11 + c);
      for (size_t ki = 0; ki < sizeof Ks / sizeof Ks[0]; ki++) {
        int64_t K = Ks[ki], Bs[] = {K, K + 3, 0 /* default: 4 x per shard */, 5 * K, l.n};
        for (size_t bi = 0; bi < sizeof Bs / sizeof Bs[0]; bi++) {
          if (Bs[bi] && Bs[bi] < K) continue;
          if (!Bs[bi] && 4 * l.per_shard < K) continue;
          check_locality(&l, K, Bs[bi], (uint32_t)(c + ki + bi));
        }
      }
      free_layout(&l);
    }
}

/* The paper's layout (40 models of 200 directions, 64 per shard), train
 * split, defaults: an LRU of 2K + 2B/64 = 24 handles opens each shard once. */
static void test_defaults(void) {
  layout l = make_layout(40, 200, 64, 0, 3);
  int64_t *perm = malloc(sizeof(int64_t) * (size_t)l.n);
  order_plan p;
  if (epoch_order(&l, ORDER_SHARDS, 0, 0, 1234, 0, perm, &p) == 0) {
    CHECK(p.shards == ORDER_DEFAULT_SHARDS && p.buffer == ORDER_DEFAULT_BUFFER_SHARDS * 64);
    order_plan_free(&p);
  }
  check_locality(&l, ORDER_DEFAULT_SHARDS, 0, 0);
  /* per_shard <= 0: B = 4 x the most split samples of one shard (64 here) */
  order_opts o = {.mode = ORDER_SHARDS};
  CHECK_OK(order_plan_init(&p, &o, l.split, l.shard, l.n, 0));
  CHECK(p.buffer == 4 * 64 && p.max_group == 64);
  order_plan_free(&p);
  free(perm);
  free_layout(&l);
}

static void test_lru(void) {
  const int64_t seq[] = {0, 1, 0, 2, 1, 3, 0};
  const int64_t want[] = {7, 6, 5, 4, 4}; /* handles 1..5, counted by hand */
  for (int h = 1; h <= 5; h++) CHECK(order_lru_opens(seq, 7, h) == want[h - 1]);
  CHECK(order_lru_opens(seq, 0, 1) == 0);
  const int64_t neg[] = {0, -1};
  CHECK_ERR(order_lru_opens(neg, 2, 1), "shard -1");
  CHECK_ERR(order_lru_opens(seq, 7, 0), "expected >= 1");
}

static void test_errors(void) {
  int m = -1;
  CHECK(order_mode_parse("exact", &m) == 0 && m == ORDER_EXACT);
  CHECK(order_mode_parse("shards", &m) == 0 && m == ORDER_SHARDS);
  CHECK_ERR(order_mode_parse("random", &m), "order 'random': expected exact or shards");
  CHECK(!strcmp(order_mode_name(ORDER_SHARDS), "shards") && !strcmp(order_mode_name(5), "?"));
  const int64_t split[4] = {0, 1, 5, 6}, shard[4] = {0, 0, 2, 2}, bad[4] = {0, 2, 1, 2},
                neg[4] = {-1, 0, 0, 0};
  order_plan p;
  order_opts o = {.mode = ORDER_SHARDS};
  CHECK_ERR(order_plan_init(&p, &o, split, NULL, 4, 2), "the shard of every sample is needed");
  CHECK_ERR(order_plan_init(&p, &o, split, bad, 4, 2),
            "sample 5 is in shard 1, after sample 1 of shard 2");
  CHECK_ERR(order_plan_init(&p, &o, split, neg, 4, 2), "sample 0 has shard -1");
  CHECK_ERR(order_plan_init(&p, &o, split, shard, 0, 2), "the split has no samples");
  order_opts k0 = {.mode = ORDER_SHARDS, .shards = ORDER_MAX_SHARDS + 1};
  CHECK_ERR(order_plan_init(&p, &k0, split, shard, 4, 2), "expected 1..65536");
  order_opts bneg = {.mode = ORDER_SHARDS, .buffer = -3};
  CHECK_ERR(order_plan_init(&p, &bneg, split, shard, 4, 2), "-3 samples: expected >= 1");
  order_opts mbad = {.mode = 7};
  CHECK_ERR(order_plan_init(&p, &mbad, split, shard, 4, 2), "order mode 7");
  /* two groups of 2: {0,1} and {5,6} */
  CHECK_OK(order_plan_init(&p, &o, split, shard, 4, 2));
  CHECK(p.ngroups == 2 && p.min_group == 2 && p.max_group == 2 && p.buffer == 8 && p.shards == 8);
  order_plan_free(&p);
}

int main(void) {
  RUN(test_exact_golden);
  RUN(test_permutation_and_determinism);
  RUN(test_locality);
  RUN(test_defaults);
  RUN(test_lru);
  RUN(test_errors);
  return check_report();
}
