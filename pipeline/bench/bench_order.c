/* bench_order.c - `coemu bench order [JOB]`: what an epoch's order costs
 * (pipeline/serve/order.h) for the layout of a generate job (default
 * jobs/paper.yaml: 2,180,600 samples, 64 per shard, the train split 80% of
 * the models), in both modes: the time to compute it (indices only, the
 * median of --repeat runs) and the shard opens a reader with an LRU of H
 * open shards makes reading rank 0's share in that order one sample at a
 * time (order_lru_opens: a model, no file is read). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/cli.h"
#include "common/error.h"
#include "common/progress.h"
#include "pipeline/bench/benches.h"
#include "pipeline/job/job.h"
#include "pipeline/serve/order.h"

typedef struct {
  const int64_t *split, *shard;
  int64_t n, per_shard, ranks, handles, repeat;
  uint64_t seed;
} order_bench;

/* One mode: prints a line; -1 with the message set on failure. */
static int run_mode(const order_bench *b, const order_opts *o) {
  order_plan p;
  CE_TRY(order_plan_init(&p, o, b->split, b->shard, b->n, b->per_shard));
  int64_t *perm = ce_malloc_array((size_t)b->n, sizeof(int64_t), "epoch order");
  int64_t *reads = ce_malloc_array((size_t)(b->n / b->ranks + 1), sizeof(int64_t), "reads");
  double *t = ce_malloc_array((size_t)b->repeat, sizeof(double), "timings");
  int rc = perm && reads && t ? 0 : -1;
  for (int64_t r = 0; rc == 0 && r < b->repeat; r++) {
    double t0 = ce_now();
    rc = order_epoch(&p, b->seed, (uint32_t)r, perm);
    t[r] = ce_now() - t0;
  }
  if (rc == 0) {
    qsort(t, (size_t)b->repeat, sizeof(double), ce_cmp_double);
    /* rank 0 of W reads positions 0, W, 2W, ... (serve.h), shard = layout's */
    int64_t m = 0, nshard = 0;
    for (int64_t q = 0; q < b->n; q += b->ranks) reads[m++] = perm[q] / b->per_shard;
    for (int64_t k = 0; k < b->n; k++) nshard += k == 0 || b->shard[k] != b->shard[k - 1];
    /* the handles asked for, and the bound of order.h for shards mode */
    int64_t hs[2] = {b->handles, p.mode == ORDER_SHARDS ? 2 * p.shards + 2 * p.buffer / p.min_group : 0};
    printf("order %-6s samples %lld shards %lld ranks %lld: epoch order %.1f ms (median of %lld, "
           "min %.1f)", order_mode_name(p.mode), (long long)b->n, (long long)nshard,
           (long long)b->ranks, 1e3 * t[b->repeat / 2], (long long)b->repeat, 1e3 * t[0]);
    if (p.mode == ORDER_SHARDS)
      printf(" K %lld B %lld n_min %lld", (long long)p.shards, (long long)p.buffer,
             (long long)p.min_group);
    printf("\n");
    for (int i = 0; i < 2 && rc == 0; i++) {
      if (hs[i] <= 0 || (i == 1 && hs[1] == hs[0])) continue;
      int64_t opens = order_lru_opens(reads, m, hs[i]);
      if (opens < 0) {
        rc = -1;
        break;
      }
      printf("order %-6s rank 0 reads %lld samples one at a time, LRU of %lld shards%s: %lld "
             "opens (%.3f per shard of the split, %.3f per sample)\n",
             order_mode_name(p.mode), (long long)m, (long long)hs[i], i ? " (the bound)" : "",
             (long long)opens, (double)opens / (double)nshard, (double)opens / (double)m);
    }
  }
  free(perm);
  free(reads);
  free(t);
  order_plan_free(&p);
  return rc;
}

int bench_order(int argc, char **argv) {
  const char *split_name = "train";
  int64_t ranks = 1, handles = 64, repeat = 5, seed = 1234, K = 0, B = 0;
  cli_opt opts[] = {
      {"split", CLI_STR, &split_name, "NAME", "the split ordered: train (default), validation, test or all", 0, 0},
      {"ranks", CLI_INT, &ranks, "W", "trainer ranks, 1..65535: opens are counted for rank 0's share (default 1)", 0, 0},
      {"handles", CLI_INT, &handles, "H", "open shards the modelled reader keeps, >= 1 (LRU, default 64)", 0, 0},
      {"order-shards", CLI_INT, &K, "K", "order shards: shards read at once, 0..65536 (default 0: 8)", 0, 0},
      {"order-buffer", CLI_INT, &B, "B", "order shards: samples shuffled together, >= 0 (default 0: 4 x samples per shard)", 0, 0},
      {"seed", CLI_INT64, &seed, "S", "shuffle seed (default 1234)", 0, 0},
      {"repeat", CLI_INT, &repeat, "R", "epochs timed per mode, 1..1000; the median is printed (default 5)", 0, 0},
      {0}};
  const cli_command spec = {
      "bench order", "[JOB] [options]",
      "The cost of an epoch's sample order (coemu serve --order) for the layout of a generate\n"
      "job (default jobs/paper.yaml): milliseconds to compute it, and the shard opens of a\n"
      "reader that keeps H shards open and reads rank 0's share one sample at a time (a\n"
      "model: no file is read), for --order exact and shards.",
      opts, 0, 1};
  int np;
  char **pos;
  cli_status r = cli_run_parse(&spec, argc, argv, &np, &pos);
  if (r != CLI_OK) return cli_exit(r);
  int want;
  if (job_split_parse(split_name, &want) < 0) {
    free(pos);
    return cli_usage_fail("bench order", "--split: %s", ce_err_msg());
  }
  const char *dflt = "0: the default";
  const cli_range range[] = {{"--ranks", ranks, 1, 65535, NULL},
                             {"--handles", handles, 1, CLI_NO_MAX, NULL},
                             {"--order-shards", K, 0, ORDER_MAX_SHARDS, dflt},
                             {"--order-buffer", B, 0, CLI_NO_MAX, dflt},
                             {"--repeat", repeat, 1, 1000, NULL}};
  int bad = cli_check_ranges("bench order", range, sizeof range / sizeof range[0]);
  if (bad) {
    free(pos);
    return bad;
  }
  const char *path = np ? pos[0] : "jobs/paper.yaml";
  job j;
  if (job_load(path, &j) < 0) {
    free(pos);
    return cli_fail("bench order");
  }
  free(pos);
  int rc = 0;
  const int64_t N = job_samples(&j), D = j.directions;
  uint8_t *ms = ce_malloc_array((size_t)j.n_models, 1, "model splits");
  int64_t *split = ce_malloc_array((size_t)N, sizeof(int64_t), "split");
  int64_t *shard = ce_malloc_array((size_t)N, sizeof(int64_t), "shards");
  if (!ms || !split || !shard || job_model_splits(&j, ms) < 0) rc = -1;
  int64_t n = 0;
  for (int64_t i = 0; rc == 0 && i < N; i++)
    if (want < 0 || ms[i / D] == want) {
      split[n] = i;
      shard[n++] = i / j.samples_per_shard;
    }
  if (rc == 0 && n == 0) rc = ce_err("%s: split '%s' has no samples", path, split_name);
  if (rc == 0)
    printf("bench order: %s: %lld samples (%lld models x %lld directions), %lld per shard; split "
           "'%s': %lld samples\n", path, (long long)N, (long long)j.n_models, (long long)D,
           (long long)j.samples_per_shard, split_name, (long long)n);
  order_bench b = {split, shard, n, j.samples_per_shard, ranks, handles, repeat, (uint64_t)seed};
  order_opts ex = {.mode = ORDER_EXACT}, sh = {.mode = ORDER_SHARDS, .shards = K, .buffer = B};
  if (rc == 0) rc = run_mode(&b, &ex);
  if (rc == 0) rc = run_mode(&b, &sh);
  free(ms);
  free(split);
  free(shard);
  job_free(&j);
  return rc < 0 ? cli_fail("bench order") : 0;
}
