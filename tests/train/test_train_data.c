/* test_train_data.c - pipeline/train/train_data.c linked directly, on a
 * small dataset (tests/dataset_fixture.h):
 *   - shapes, batches per epoch (floor(floor(M/W)/b)), the description;
 *   - every row of every batch, over several epochs and for each of W ranks,
 *     is bit for bit the normalised sample at that position of serve's
 *     (seed, epoch) order, read synchronously with serve_read: the prefetch
 *     thread delivers what a direct read gives;
 *   - the end of an epoch is reported (0) and stays reported; the next epoch
 *     follows; skipping an epoch is an error;
 *   - the W ranks' batches of step k are the rows of 1 rank's batch k with
 *     batch W*b (row r + W j is rank r's row j): data parallelism sees the
 *     samples single-rank training sees;
 *   - a reader opened at (epoch, step) - a resume - continues with the
 *     batches an uninterrupted reader gives there;
 *   - data.order shards: the batches follow serve's shard-aware order of
 *     (seed, epoch) on every rank, and a reader opened at every step of an
 *     epoch continues as the uninterrupted one;
 *   - the same job with one sample per shard (48 shards): every batch of
 *     every rank and epoch is the same bytes as from 16 samples per shard,
 *     and a reader capped at 4 open shards never holds more;
 *   - errors: a dataset without /stats (named, with the command that makes
 *     it), a missing dataset, bad rank/batch.
 * No MPI in this process (see dataset_fixture.h). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "dataset_fixture.h"
#include "pipeline/serve/serve.h"
#include "pipeline/train/train_data.h"

/* 12 models x 4 directions, 16^3 cubes, 2 channels: 6 training models = 24 samples */
static const fixture_spec SPEC = {.models = 12, .directions = 4, .n = 16, .nf = 2,
                                  .samples_per_shard = 16, .stats = 1};
static const fixture_spec SPEC_NOSTATS = {.models = 4, .directions = 2, .n = 16, .nf = 1,
                                          .samples_per_shard = 4, .stats = 0};
/* SPEC with one sample per shard: 48 shards, the same samples and /stats */
static const fixture_spec SPEC_MANY = {.models = 12, .directions = 4, .n = 16, .nf = 2,
                                       .samples_per_shard = 1, .stats = 1};
static char g_dir[1100], g_nostats[1100], g_many[1100];
static size_t IV, OV;

static train_stage stage_for(char *dir) {
  train_stage st;
  memset(&st, 0, sizeof st);
  st.enabled = 1;
  st.source = TRAIN_SRC_DATASET;
  st.dataset = dir;
  snprintf(st.split, sizeof st.split, "train");
  return st;
}

static train_data *open_td(const train_stage *st, uint64_t seed, int rank, int world, int batch,
                           uint32_t epoch, uint64_t step) {
  train_data_opts o = {st, seed, rank, world, batch, epoch, step, 0};
  train_data *d = NULL;
  CHECK_OK(train_data_open(&o, &d));
  return d;
}

/* Compare a batch with the normalised samples at positions pos..pos+b-1 of
 * rank/world's order, read by serve_read. */
static int batch_is(serve_source *ref, uint32_t epoch, int rank, uint64_t pos, int b,
                    const float *in, const float *tg, float *bin, float *bout) {
  int64_t idx[64];
  for (int k = 0; k < b; k++) idx[k] = serve_sample_at(ref, epoch, rank, pos + (uint64_t)k);
  if (serve_read(ref, idx, b, 1, bin, bout) < 0) return 0;
  return !memcmp(in, bin, sizeof(float) * IV * (size_t)b) &&
         !memcmp(tg, bout, sizeof(float) * OV * (size_t)b);
}

static void test_epochs_per_rank(void) {
  train_stage st = stage_for(g_dir);
  const int W = 3, b = 2;
  serve_opts so = {.dataset_dir = g_dir, .split = "train", .seed = 11, .world = W, .batch = b,
                   .drop_last = 1, .prefetch = 1};
  serve_source *ref = NULL;
  CHECK_OK(serve_open(&so, &ref));
  float *bin = malloc(sizeof(float) * IV * b), *bout = malloc(sizeof(float) * OV * b);
  for (int r = 0; ref && r < W; r++) {
    train_data *d = open_td(&st, 11, r, W, b, 0, 0);
    if (!d) continue;
    uint32_t in[4], out[3];
    CHECK_OK(train_data_shapes(d, in, out));
    CHECK(in[0] == 3 && in[1] == 16 && in[3] == 16 && out[0] == 2 && out[1] == 16 && out[2] == 16);
    /* 24 samples over 3 ranks: 8 each, 4 batches of 2 */
    CHECK(train_data_batches_per_epoch(d) == 4);
    CHECK(strstr(train_data_describe(d), g_dir) && strstr(train_data_describe(d), "24 samples"));
    for (uint32_t e = 0; e < 3; e++) {
      const float *x, *y;
      uint64_t k = 0;
      int rc;
      while ((rc = train_data_next(d, e, &x, &y)) == 1) {
        CHECK_MSG(batch_is(ref, e, r, k * b, b, x, y, bin, bout),
                  "rank %d epoch %u batch %llu: not the samples of serve's order", r, e,
                  (unsigned long long)k);
        k++;
      }
      CHECK_MSG(rc == 0, "rank %d epoch %u: %d (%s)", r, e, rc, ce_err_msg());
      CHECK_MSG(k == 4, "rank %d epoch %u: %llu batches, expected 4", r, e, (unsigned long long)k);
      CHECK(train_data_next(d, e, &x, &y) == 0); /* the end stays the end */
    }
    const float *x, *y;
    CHECK_ERR(train_data_next(d, 5, &x, &y), "epoch 5 asked for after epoch 2");
    train_data_close(d);
  }
  free(bin);
  free(bout);
  serve_close(ref);
}

static void test_ranks_make_the_global_batch(void) {
  train_stage st = stage_for(g_dir);
  const int W = 2, b = 3;
  train_data *one = open_td(&st, 4, 0, 1, W * b, 0, 0), *rk[2] = {open_td(&st, 4, 0, W, b, 0, 0),
                                                                open_td(&st, 4, 1, W, b, 0, 0)};
  if (!one || !rk[0] || !rk[1]) goto done;
  CHECK(train_data_batches_per_epoch(one) == train_data_batches_per_epoch(rk[0]));
  for (uint32_t e = 0; e < 2; e++)
    for (uint64_t k = 0;; k++) {
      const float *x1, *y1, *x[2], *y[2];
      int g1 = train_data_next(one, e, &x1, &y1);
      int g[2] = {train_data_next(rk[0], e, &x[0], &y[0]), train_data_next(rk[1], e, &x[1], &y[1])};
      CHECK(g1 == g[0] && g1 == g[1]);
      if (g1 != 1 || g[0] != 1 || g[1] != 1) break;
      for (int r = 0; r < W; r++)
        for (int j = 0; j < b; j++) {
          size_t row = (size_t)(r + W * j);
          CHECK_MSG(!memcmp(x[r] + (size_t)j * IV, x1 + row * IV, sizeof(float) * IV) &&
                        !memcmp(y[r] + (size_t)j * OV, y1 + row * OV, sizeof(float) * OV),
                    "epoch %u step %llu: rank %d row %d is not row %zu of the global batch", e,
                    (unsigned long long)k, r, j, row);
        }
    }
done:
  train_data_close(one);
  train_data_close(rk[0]);
  train_data_close(rk[1]);
}

static void test_resume(void) {
  train_stage st = stage_for(g_dir);
  const int b = 4; /* 24 samples: 6 batches */
  train_data *full = open_td(&st, 8, 0, 1, b, 0, 0);
  if (!full) return;
  float *keep = malloc(sizeof(float) * (IV + OV) * b * 12);
  const float *x, *y;
  int n = 0;
  for (uint32_t e = 0; e < 2; e++)
    while (train_data_next(full, e, &x, &y) == 1) {
      memcpy(keep + (size_t)n * (IV + OV) * b, x, sizeof(float) * IV * b);
      memcpy(keep + (size_t)n * (IV + OV) * b + IV * b, y, sizeof(float) * OV * b);
      n++;
    }
  CHECK(n == 12);
  train_data_close(full);
  /* resumed at epoch 1, 2 batches done: batches 2..5 of epoch 1 (8..11 above) */
  const uint32_t starts[3][2] = {{1, 2}, {0, 5}, {0, 6}};
  for (int t = 0; t < 3; t++) {
    train_data *d = open_td(&st, 8, 0, 1, b, starts[t][0], starts[t][1]);
    if (!d) continue;
    int at = (int)(starts[t][0] * 6 + starts[t][1]);
    for (uint32_t e = starts[t][0]; e < 2; e++) {
      int rc;
      while ((rc = train_data_next(d, e, &x, &y)) == 1) {
        const float *want = keep + (size_t)at * (IV + OV) * b;
        CHECK_MSG(at < 12 && !memcmp(x, want, sizeof(float) * IV * b) &&
                      !memcmp(y, want + IV * b, sizeof(float) * OV * b),
                  "resumed at (%u, %u): batch %d differs", starts[t][0], starts[t][1], at);
        at++;
      }
      CHECK(rc == 0);
    }
    CHECK_MSG(at == 12, "resumed at (%u, %u): ended at batch %d", starts[t][0], starts[t][1], at);
    train_data_close(d);
  }
  free(keep);
}

static void test_order_shards(void) {
  train_stage st = stage_for(g_dir);
  st.order = 1; /* ORDER_SHARDS */
  st.order_shards = 2;
  st.order_buffer = 5;
  const int W = 2, b = 2; /* 24 samples: 12 per rank, 6 batches */
  serve_opts so = {.dataset_dir = g_dir, .split = "train", .seed = 3, .world = W, .batch = b,
                   .drop_last = 1, .prefetch = 1,
                   .order = {.mode = ORDER_SHARDS, .shards = 2, .buffer = 5}};
  serve_source *ref = NULL;
  CHECK_OK(serve_open(&so, &ref));
  if (!ref) return;
  float *bin = malloc(sizeof(float) * IV * b), *bout = malloc(sizeof(float) * OV * b);
  float *keep = malloc(sizeof(float) * (IV + OV) * b * 6);
  for (int r = 0; r < W; r++) {
    train_data *d = open_td(&st, 3, r, W, b, 0, 0);
    if (!d) continue;
    CHECK_MSG(strstr(train_data_describe(d), "order shards: 2 shards at once, blocks of 5"), "%s",
              train_data_describe(d));
    const float *x, *y;
    for (uint32_t e = 0; e < 2; e++) {
      uint64_t k = 0;
      while (train_data_next(d, e, &x, &y) == 1) {
        CHECK_MSG(batch_is(ref, e, r, k * b, b, x, y, bin, bout),
                  "rank %d epoch %u batch %llu: not the samples of the shards order", r, e,
                  (unsigned long long)k);
        if (e == 1 && k < 6) {
          memcpy(keep + k * (IV + OV) * b, x, sizeof(float) * IV * b);
          memcpy(keep + k * (IV + OV) * b + IV * b, y, sizeof(float) * OV * b);
        }
        k++;
      }
      CHECK(k == 6);
    }
    train_data_close(d);
    for (uint64_t k0 = 0; k0 <= 6; k0++) { /* resumed at (1, k0) */
      train_data *rd = open_td(&st, 3, r, W, b, 1, k0);
      if (!rd) continue;
      uint64_t k = k0;
      while (train_data_next(rd, 1, &x, &y) == 1) {
        const float *want = keep + k * (IV + OV) * b;
        CHECK_MSG(k < 6 && !memcmp(x, want, sizeof(float) * IV * b) &&
                      !memcmp(y, want + IV * b, sizeof(float) * OV * b),
                  "rank %d resumed at (1, %llu): batch %llu differs", r, (unsigned long long)k0,
                  (unsigned long long)k);
        k++;
      }
      CHECK(k == 6);
      train_data_close(rd);
    }
  }
  free(keep);
  free(bin);
  free(bout);
  serve_close(ref);
}

static void test_many_shards(void) {
  train_stage sa = stage_for(g_dir), sb = stage_for(g_many);
  for (int world = 1; world <= 2; world++)
    for (int rank = 0; rank < world; rank++) {
      train_data *a = open_td(&sa, 5, rank, world, 3, 0, 0), *b = open_td(&sb, 5, rank, world, 3, 0, 0);
      if (!a || !b) {
        train_data_close(a);
        train_data_close(b);
        return;
      }
      CHECK(train_data_batches_per_epoch(a) == train_data_batches_per_epoch(b));
      int same = 1, batches = 0;
      for (uint32_t e = 0; e < 2; e++)
        for (;;) {
          const float *ia, *ta, *ib, *tb;
          int ra = train_data_next(a, e, &ia, &ta), rb = train_data_next(b, e, &ib, &tb);
          CHECK(ra == rb);
          if (ra != 1 || rb != 1) break;
          batches++;
          same &= !memcmp(ia, ib, sizeof(float) * IV * 3) && !memcmp(ta, tb, sizeof(float) * OV * 3);
        }
      CHECK(batches > 0);
      CHECK(same); /* exact: the same samples, normalised with the same /stats */
      train_data_close(a);
      train_data_close(b);
    }
  /* the cap on open shards: every training sample read through a reader
   * that may hold 4 of the 48 shards */
  serve_opts so = {.dataset_dir = g_many, .split = "all", .seed = 1, .world = 1, .batch = 4,
                   .drop_last = 1, .max_open = 4};
  serve_source *src = NULL;
  CHECK_OK(serve_open(&so, &src));
  if (!src) return;
  float *in = malloc(sizeof(float) * IV * 8), *tg = malloc(sizeof(float) * OV * 8);
  int64_t n = (int64_t)serve_split_size(src), idx[8];
  int ok = in && tg, now = 0, peak = 0;
  for (int64_t k = 0; ok && k < n; k += 8) { /* every sample, 8 at a time, shuffled order */
    int m = n - k < 8 ? (int)(n - k) : 8;
    for (int j = 0; j < m; j++) idx[j] = serve_sample_at(src, 0, 0, (uint64_t)(k + j)) ;
    ok = serve_read(src, idx, m, 0, in, tg) == 0;
    for (int j = 0; ok && j < m; j++) {
      float ein[16 * 16 * 16 * 3], etg[2 * 16 * 16];
      fixture_sample(&SPEC_MANY, idx[j], ein, etg);
      ok = !memcmp(ein, in + (size_t)j * IV, sizeof ein) && !memcmp(etg, tg + (size_t)j * OV, sizeof etg);
    }
  }
  CHECK(ok);
  serve_open_shards(src, &now, &peak);
  CHECK(peak == 4); /* 48 shards visited, at most 4 open */
  CHECK(now <= 4);
  free(in);
  free(tg);
  serve_close(src);
}

static void test_errors(void) {
  train_stage st = stage_for(g_nostats);
  train_data_opts o = {&st, 1, 0, 1, 2, 0, 0, 0};
  train_data *d = NULL;
  char msg[1300];
  snprintf(msg, sizeof msg, "%s/dataset.h5 has no /stats group", g_nostats);
  CHECK_ERR(train_data_open(&o, &d), msg);
  CHECK_ERR(train_data_open(&o, &d), "coemu stats");
  CHECK(d == NULL);
  char missing[1200];
  snprintf(missing, sizeof missing, "%s/missing", g_dir);
  st = stage_for(missing);
  CHECK_ERR(train_data_open(&o, &d), "missing");
  st = stage_for(g_dir);
  o.rank = 2;
  o.world = 2;
  CHECK_ERR(train_data_open(&o, &d), "rank 2 of 2");
  o.rank = 0;
  o.batch = 0;
  CHECK_ERR(train_data_open(&o, &d), "batch 0");
  o.batch = 25; /* more than the split */
  CHECK_ERR(train_data_open(&o, &d), "not one batch of 25");
}

int main(void) {
  const char *tmp = check_scratch("train_data");
  snprintf(g_dir, sizeof g_dir, "%s/ds", tmp);
  snprintf(g_nostats, sizeof g_nostats, "%s/nostats", tmp);
  snprintf(g_many, sizeof g_many, "%s/many", tmp);
  IV = fixture_in_vals(&SPEC);
  OV = fixture_out_vals(&SPEC);
  if (fixture_make_forked(g_dir, &SPEC) < 0 || fixture_make_forked(g_nostats, &SPEC_NOSTATS) < 0 ||
      fixture_make_forked(g_many, &SPEC_MANY) < 0) {
    fprintf(stderr, "test_train_data: %s\n", ce_err_msg());
    check_scratch_remove();
    return 2;
  }
  RUN(test_epochs_per_rank);
  RUN(test_ranks_make_the_global_batch);
  RUN(test_resume);
  RUN(test_order_shards);
  RUN(test_many_shards);
  RUN(test_errors);
  check_scratch_remove();
  return check_report();
}
