/* test_serve.c - pipeline/serve linked directly: a serve_source over a small
 * dataset made with the dataset room (tests/dataset_fixture.h).
 *   - the split index: ascending, exactly the samples of the split;
 *   - the per-(seed, epoch) order: a permutation of the split, the same for
 *     the same (seed, epoch) (also after the permutation cache has turned
 *     over), different for another epoch or seed; rank r of W takes positions
 *     r, r+W, ... of it;
 *   - rank shares: equal sizes; drop_last: floor(floor(M/W)/B)*B samples
 *     each, disjoint, together the first W*share positions of the order;
 *     padded: ceil(ceil(M/W)/B)*B each, together the whole split;
 *   - chunks from the reader thread (serve_chunk) hold the samples of that
 *     order, bit for bit what serve_read reads in the calling thread; the
 *     end of a rank's epoch, a reconnect at an earlier position and a fresh
 *     source started at a position continue the same order;
 *   - raw samples are the producer's values; normalised ones are the /stats
 *     transforms of them, as stats/transforms.h documents them;
 *   - errors name the dataset: missing directory, no dataset.h5, no /stats
 *     when normalised data are asked for, a split too small for one batch,
 *     bad options;
 *   - stale read-ahead (a rank resumed elsewhere, or left) is evicted: no
 *     request waits for ever on slots nobody will take;
 *   - the default order (exact) is bit for bit main's before order.c
 *     (goldens printed by this fixture at d17d44a); order shards
 *     (order.h) is order_epoch over the dataset's shards, announced in
 *     INFO, and a fresh source resumed at every position of every rank
 *     sends the rest of the uninterrupted epoch; a consumer asking for the
 *     other order gets an error naming both;
 *   - read-ahead runs on into the next epoch (not past a bounded run's last)
 *     and changes nothing that is sent.
 * No MPI in this process (the fixture is made in a child), so
 * LeakSanitizer checks the reader thread's buffers. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <hdf5.h>

#include "check.h"
#include "common/checksum.h"
#include "pipeline/dataset/layout.h"
#include "dataset_fixture.h"
#include "pipeline/serve/order.h"
#include "pipeline/serve/serve.h"
#include "stats/statsfile.h"
#include "stats/transforms.h"

/* 10 models x 3 directions = 30 samples, split by model as job_model_splits
 * decides (g_split); 16^3 cubes, 3 channels. */
static const fixture_spec SPEC = {.models = 10, .directions = 3, .n = 16, .nf = 3,
                                  .samples_per_shard = 8, .stats = 1};
static const fixture_spec SPEC_NOSTATS = {.models = 4, .directions = 2, .n = 16, .nf = 1,
                                          .samples_per_shard = 4, .stats = 0};
static char g_dir[1100], g_nostats[1100];
static uint8_t g_split[64];

static serve_source *open_src(const char *split, uint64_t seed, int world, int batch, int drop_last) {
  serve_opts o = {.dataset_dir = g_dir, .split = split, .seed = seed, .world = world,
                  .batch = batch, .drop_last = drop_last, .prefetch = 2};
  serve_source *s = NULL;
  CHECK_OK(serve_open(&o, &s));
  return s;
}

static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

static void test_split_index(void) {
  const char *names[4] = {"train", "validation", "test", "all"};
  int64_t total = 0;
  for (int k = 0; k < 4; k++) {
    serve_source *s = open_src(names[k], 1, 1, 1, 1);
    if (!s) return;
    int64_t expect[64], m = 0;
    for (int64_t i = 0; i < fixture_samples(&SPEC); i++)
      if (k == 3 || g_split[i] == k) expect[m++] = i;
    CHECK(m > 0);
    CHECK(serve_split_size(s) == (uint64_t)m);
    for (int64_t j = 0; j < m; j++)
      CHECK_MSG(serve_split_sample(s, j) == expect[j], "%s: split sample %lld is %lld, expected %lld",
                names[k], (long long)j, (long long)serve_split_sample(s, j), (long long)expect[j]);
    CHECK(serve_split_sample(s, m) == -1 && serve_split_sample(s, -1) == -1);
    if (k < 3) total += m;
    uint32_t in[4], out[3];
    serve_shapes(s, in, out);
    CHECK(in[0] == 3 && in[1] == 16 && in[2] == 16 && in[3] == 16);
    CHECK(out[0] == 3 && out[1] == 16 && out[2] == 16);
    serve_close(s);
  }
  CHECK(total == fixture_samples(&SPEC));
}

/* The order of `epoch` for one rank: positions 0..M-1. */
static void order(serve_source *s, uint32_t epoch, int64_t *o, int64_t m) {
  for (int64_t p = 0; p < m; p++) o[p] = serve_sample_at(s, epoch, 0, (uint64_t)p);
}

static void test_epoch_order(void) {
  serve_source *a = open_src("train", 42, 1, 1, 1), *b = open_src("train", 42, 1, 1, 1),
               *c = open_src("train", 43, 1, 1, 1);
  if (!a || !b || !c) return;
  const int64_t m = (int64_t)serve_split_size(a);
  int64_t o[6][64], ob[64], oc[64], sorted[64], split[64];
  for (int64_t j = 0; j < m; j++) split[j] = serve_split_sample(a, j);
  for (uint32_t e = 0; e < 6; e++) { /* more epochs than the source caches */
    order(a, e, o[e], m);
    memcpy(sorted, o[e], sizeof(int64_t) * (size_t)m);
    qsort(sorted, (size_t)m, sizeof(int64_t), cmp_i64);
    CHECK_MSG(!memcmp(sorted, split, sizeof(int64_t) * (size_t)m),
              "epoch %u: the order is not a permutation of the split", e);
    order(b, e, ob, m);
    CHECK_MSG(!memcmp(ob, o[e], sizeof(int64_t) * (size_t)m),
              "epoch %u: another source with the same seed gives another order", e);
    order(c, e, oc, m);
    CHECK_MSG(memcmp(oc, o[e], sizeof(int64_t) * (size_t)m), "epoch %u: seeds 42 and 43 agree", e);
    CHECK_MSG(memcmp(o[e], split, sizeof(int64_t) * (size_t)m), "epoch %u: not shuffled", e);
  }
  for (uint32_t e = 1; e < 6; e++)
    CHECK_MSG(memcmp(o[e], o[0], sizeof(int64_t) * (size_t)m), "epochs 0 and %u in the same order", e);
  for (int e = 5; e >= 0; e--) { /* asked again, in another order: the same */
    order(a, (uint32_t)e, ob, m);
    CHECK_MSG(!memcmp(ob, o[e], sizeof(int64_t) * (size_t)m), "epoch %d asked again differs", e);
  }
  /* W ranks: rank r, position p is position r + W p of the epoch's order */
  serve_source *w3 = open_src("train", 42, 3, 1, 0);
  if (w3) {
    for (uint32_t e = 0; e < 3; e++)
      for (int r = 0; r < 3; r++)
        for (uint64_t p = 0; p < serve_samples_per_rank(w3); p++)
          CHECK(serve_sample_at(w3, e, r, p) == o[e][((uint64_t)r + 3 * p) % (uint64_t)m]);
    serve_close(w3);
  }
  serve_close(a);
  serve_close(b);
  serve_close(c);
}

static void test_rank_shares(void) {
  for (int world = 1; world <= 4; world++)
    for (int batch = 1; batch <= 3; batch++)
      for (int drop = 0; drop <= 1; drop++) {
        serve_opts o = {.dataset_dir = g_dir, .split = "all", .seed = 7, .world = world,
                        .batch = batch, .drop_last = drop, .prefetch = 1};
        serve_source *s = NULL;
        CHECK_OK(serve_open(&o, &s));
        if (!s) continue;
        const uint64_t m = serve_split_size(s), w = (uint64_t)world, b = (uint64_t)batch;
        const uint64_t share = serve_samples_per_rank(s);
        uint64_t expect = drop ? m / w / b * b : ((m + w - 1) / w + b - 1) / b * b;
        CHECK_MSG(share == expect, "W %d B %d drop %d: %llu samples per rank, expected %llu",
                  world, batch, drop, (unsigned long long)share, (unsigned long long)expect);
        CHECK(share % b == 0);
        int seen[64] = {0};
        int64_t ord[64];
        serve_source *one = NULL;
        serve_opts o1 = o;
        o1.world = 1;
        o1.batch = 1;
        CHECK_OK(serve_open(&o1, &one));
        if (!one) {
          serve_close(s);
          continue;
        }
        order(one, 3, ord, (int64_t)m);
        int dup = 0;
        for (int r = 0; r < world; r++)
          for (uint64_t p = 0; p < share; p++) {
            int64_t id = serve_sample_at(s, 3, r, p);
            CHECK(id >= 0 && id < 64);
            if (id < 0 || id >= 64) continue;
            dup += seen[id]++ > 0;
          }
        if (drop) {
          /* disjoint, and together the first W * share positions of the order */
          CHECK_MSG(dup == 0, "W %d B %d: %d samples served twice", world, batch, dup);
          for (uint64_t p = 0; p < m; p++)
            CHECK_MSG(seen[ord[p]] == (p < w * share), "W %d B %d: position %llu served %d times",
                      world, batch, (unsigned long long)p, seen[ord[p]]);
        } else {
          /* every sample at least once; the padding repeats the order's first samples */
          for (uint64_t p = 0; p < m; p++)
            CHECK_MSG(seen[ord[p]] == 1 + (p < w * share - m), "W %d B %d pad: position %llu "
                      "served %d times", world, batch, (unsigned long long)p, seen[ord[p]]);
        }
        serve_close(one);
        serve_close(s);
      }
}

/* The bytes serve_read gives for dataset samples idx[0..n). */
static int read_ref(serve_source *s, const int64_t *idx, int n, int norm, float **in, float **out) {
  *in = malloc(sizeof(float) * fixture_in_vals(&SPEC) * (size_t)n);
  *out = malloc(sizeof(float) * fixture_out_vals(&SPEC) * (size_t)n);
  if (!*in || !*out) return -1;
  return serve_read(s, idx, n, norm, *in, *out);
}

/* Chunk at (epoch, position) for rank/world equals the expected samples. */
static void check_chunk(serve_source *s, serve_source *ref, int rank, int world, uint32_t epoch,
                        uint64_t pos, int norm, int batch) {
  stream_consumer c = {(uint16_t)rank, (uint16_t)world, (uint32_t)norm};
  stream_chunk ch;
  memset(&ch, 0, sizeof ch);
  int rc = serve_chunk(s, &c, epoch, pos, &ch);
  CHECK_MSG(rc == 1, "rank %d epoch %u position %llu: serve_chunk gave %d (%s)", rank, epoch,
            (unsigned long long)pos, rc, ce_err_msg());
  if (rc != 1) return;
  CHECK(ch.nsamples == (uint32_t)batch && ch.flags == (uint32_t)norm);
  CHECK(ch.in_shape[0] == 3 && ch.in_shape[1] == 16 && ch.out_shape[0] == 3 && ch.out_shape[2] == 16);
  int64_t idx[16];
  for (int k = 0; k < batch; k++) {
    idx[k] = serve_sample_at(ref, epoch, rank, pos + (uint64_t)k);
    CHECK_MSG(ch.ids[k] == (uint64_t)idx[k], "rank %d epoch %u position %llu: id %llu, expected %lld",
              rank, epoch, (unsigned long long)(pos + (uint64_t)k), (unsigned long long)ch.ids[k],
              (long long)idx[k]);
  }
  float *in = NULL, *out = NULL;
  CHECK_OK(read_ref(ref, idx, batch, norm, &in, &out));
  if (in && out) {
    CHECK(!memcmp(ch.inputs, in, sizeof(float) * fixture_in_vals(&SPEC) * (size_t)batch));
    CHECK(!memcmp(ch.targets, out, sizeof(float) * fixture_out_vals(&SPEC) * (size_t)batch));
  }
  free(in);
  free(out);
  ch.release(ch.token);
}

static void test_chunks(void) {
  const int W = 2, B = 3;
  serve_source *s = open_src("all", 5, W, B, 1), *ref = open_src("all", 5, W, B, 1);
  if (!s || !ref) return;
  const uint64_t share = serve_samples_per_rank(s);
  CHECK(share == 15); /* 30 samples, 2 ranks: 15 each, 5 batches of 3 */
  for (uint32_t e = 0; e < 2; e++)
    for (uint64_t pos = 0; pos < share; pos += B)
      for (int r = 0; r < W; r++) check_chunk(s, ref, r, W, e, pos, (int)(pos / B + e) % 2, B);
  /* the end of a rank's epoch */
  stream_consumer c0 = {0, (uint16_t)W, 1};
  stream_chunk ch;
  CHECK(serve_chunk(s, &c0, 1, share, &ch) == 0);
  CHECK(serve_chunk(s, &c0, 1, share + B, &ch) == 0);
  /* not a batch boundary, wrong world */
  CHECK_ERR(serve_chunk(s, &c0, 1, 1, &ch), "not a multiple of the batch");
  stream_consumer bad = {0, 3, 1};
  CHECK_ERR(serve_chunk(s, &bad, 1, 0, &ch), "the producer serves 2");
  /* resume: a reconnect asks for an earlier position again; a fresh source
     starts in the middle of an epoch: the same samples either way */
  check_chunk(s, ref, 1, W, 4, 0, 1, B);
  check_chunk(s, ref, 1, W, 4, 3, 1, B);
  check_chunk(s, ref, 1, W, 4, 6, 1, B);
  check_chunk(s, ref, 1, W, 4, 3, 1, B);
  check_chunk(s, ref, 1, W, 4, 6, 1, B);
  serve_close(s);
  serve_source *fresh = open_src("all", 5, W, B, 1);
  if (fresh) {
    check_chunk(fresh, ref, 0, W, 4, 9, 1, B);
    check_chunk(fresh, ref, 1, W, 4, 12, 0, B);
    serve_close(fresh);
  }
  /* a consumer that jumps past chunks prefetched for it (a reconnect at a
     later position): the skipped chunks are freed at once, and serve_close
     must not free them again (it did: a double free) */
  serve_source *busy = open_src("all", 5, W, B, 1);
  if (busy) {
    stream_chunk c2;
    if (serve_chunk(busy, &c0, 0, 0, &c2) == 1) c2.release(c2.token);
    usleep(200000); /* the reader prefetches positions 3 and 6 meanwhile */
    check_chunk(busy, ref, 0, W, 0, 12, 1, B);
    serve_close(busy);
  }
  serve_close(ref);
}

static void test_normalisation(void) {
  serve_source *s = open_src("all", 1, 1, 1, 1);
  if (!s) return;
  const stats_norm *p = serve_norm(s);
  CHECK(p != NULL);
  if (!p) {
    serve_close(s);
    return;
  }
  char h5[1200];
  snprintf(h5, sizeof h5, "%s/dataset.h5", g_dir);
  stats_norm file;
  CHECK_OK(stats_file_read_norm(h5, &file));
  CHECK(!memcmp(&file, p, sizeof file));
  CHECK(p->i_mode == STATS_I_MINMAX && p->lnI_clip == STATS_LNI_CLIP); /* 3 channels */
  CHECK(p->vz_std > 0 && p->lnT_scale > 0 && p->lnn_scale > 0 && p->lnI_scale > 0);
  const size_t iv = fixture_in_vals(&SPEC), ov = fixture_out_vals(&SPEC), nvox = iv / 3;
  float *raw_in = malloc(iv * 4), *raw_out = malloc(ov * 4), *nin = malloc(iv * 4),
        *nout = malloc(ov * 4), *ein = malloc(iv * 4), *eout = malloc(ov * 4),
        *back = malloc(iv * 4);
  double *lnI = malloc(ov * 8);
  for (int64_t idx = 0; idx < fixture_samples(&SPEC); idx += 7) {
    CHECK_OK(serve_read(s, &idx, 1, 0, raw_in, raw_out));
    CHECK_OK(serve_read(s, &idx, 1, 1, nin, nout));
    fixture_sample(&SPEC, idx, ein, eout);
    CHECK_MSG(!memcmp(raw_in, ein, iv * 4) && !memcmp(raw_out, eout, ov * 4),
              "sample %lld: raw data differ from the producer's", (long long)idx);
    /* the transforms as stats/transforms.h documents them, written out here */
    int bad = 0;
    for (size_t v = 0; v < nvox; v++) {
      bad += nin[v] != (float)(((double)raw_in[v] - p->vz_mean) / p->vz_std);
      bad += nin[nvox + v] !=
             (float)(((double)(float)log((double)raw_in[nvox + v]) - p->lnT_min) / p->lnT_scale);
      bad += nin[2 * nvox + v] !=
             (float)(((double)(float)log((double)raw_in[2 * nvox + v]) - p->lnn_min) / p->lnn_scale);
    }
    for (size_t v = 0; v < ov; v++) { /* minmax: clip at -40, then (t - min) / (max - min) */
      double t = log((double)raw_out[v]);
      float tf = (float)(t < STATS_LNI_CLIP ? STATS_LNI_CLIP : t);
      bad += nout[v] != (float)(((double)tf - p->lnI_min) / p->lnI_scale);
    }
    CHECK_MSG(bad == 0, "sample %lld: %d normalised values differ from the documented transforms",
              (long long)idx, bad);
    /* and the inverse gives the raw values back (to float rounding) */
    stats_denorm_inputs(p, nin, nvox, back);
    stats_denorm_targets_f64(p, nout, ov, lnI);
    double worst = 0;
    for (size_t v = nvox; v < iv; v++) worst = fmax(worst, fabs(back[v] / raw_in[v] - 1));
    for (size_t v = 0; v < nvox; v++) worst = fmax(worst, fabs(back[v] - raw_in[v]) / p->vz_std);
    for (size_t v = 0; v < ov; v++) worst = fmax(worst, fabs(lnI[v] / raw_out[v] - 1));
    CHECK_MSG(worst < 1e-4, "sample %lld: the inverse is off by %.3g", (long long)idx, worst);
  }
  free(raw_in);
  free(raw_out);
  free(nin);
  free(nout);
  free(ein);
  free(eout);
  free(back);
  free(lnI);
  serve_close(s);
}

static void test_errors(void) {
  serve_source *s = NULL;
  char missing[1200], empty[1200];
  snprintf(missing, sizeof missing, "%s/no-such-dataset", g_dir);
  serve_opts o = {.dataset_dir = missing, .split = "train", .world = 1, .batch = 1, .drop_last = 1};
  CHECK_ERR(serve_open(&o, &s), "no-such-dataset");
  CHECK_ERR(serve_open(&o, &s), "no-such-dataset: no such dataset folder; serve a running job "
                                "with --live");
  /* a manifest but no dataset.h5 */
  snprintf(empty, sizeof empty, "%s/empty", check_scratch_);
  char man[1300];
  snprintf(man, sizeof man, "%s/manifest.json", empty);
  CHECK(mkdir(empty, 0755) == 0);
  FILE *f = fopen(man, "w");
  if (f) {
    fputs("{}\n", f);
    fclose(f);
  }
  o.dataset_dir = empty;
  CHECK_ERR(serve_open(&o, &s), "empty is not a finished dataset: its manifest.json is there but "
                                "no dataset.h5");
  /* bad options and splits */
  o.dataset_dir = g_dir;
  o.world = 0;
  CHECK_ERR(serve_open(&o, &s), "ranks must be 1..65535");
  o.world = 1;
  o.split = "training";
  CHECK_ERR(serve_open(&o, &s), "training");
  o.split = "test";
  o.batch = 1000;
  CHECK_ERR(serve_open(&o, &s), "dataset.h5: split 'test' has");
  /* no /stats: raw data are served, normalised ones refused naming the file */
  serve_opts on = {.dataset_dir = g_nostats, .split = "all", .world = 1, .batch = 2, .drop_last = 1};
  s = NULL;
  CHECK_OK(serve_open(&on, &s));
  if (!s) return;
  CHECK(serve_norm(s) == NULL);
  char h5[1200];
  snprintf(h5, sizeof h5, "%s/dataset.h5 has no /stats group", g_nostats);
  stream_consumer c = {0, 1, 1};
  stream_chunk ch;
  CHECK_ERR(serve_chunk(s, &c, 0, 0, &ch), h5);
  CHECK_ERR(serve_chunk(s, &c, 0, 0, &ch), "coemu stats");
  float in[3 * 4096], out[256];
  int64_t idx = 1;
  CHECK_ERR(serve_read(s, &idx, 1, 1, in, out), h5);
  CHECK_OK(serve_read(s, &idx, 1, 0, in, out));
  idx = 8;
  CHECK_ERR(serve_read(s, &idx, 1, 0, in, out), "sample 8 out of range");
  c.flags = 0;
  CHECK(serve_chunk(s, &c, 0, 0, &ch) == 1);
  if (ch.release) ch.release(ch.token);
  serve_close(s);
}

/* Sessions of one rank resuming at ever earlier positions (24, 18, 12, 6,
 * 0), each leaving chunks read ahead for it: those are stale once the rank
 * resumed elsewhere and must be evicted, or every slot ends up holding one
 * and the next request waits for ever (issue 13, item 1). With batch 1 and
 * prefetch 2 there are 1 x 3 + 2 = 5 slots. A rank whose last consumer left
 * (serve_leave) keeps nothing read ahead. */
static void test_stale_slots(void) {
  serve_source *s = open_src("all", 7, 1, 1, 1), *ref = open_src("all", 7, 1, 1, 1);
  if (!s || !ref) {
    serve_close(s);
    serve_close(ref);
    return;
  }
  for (int pos = 24; pos >= 0; pos -= 6) {
    check_chunk(s, ref, 0, 1, 0, (uint64_t)pos, 1, 1);
    usleep(150000); /* the reader fills the read-ahead window meanwhile */
  }
  stream_consumer c0 = {.rank = 0, .world = 1};
  serve_leave(s, &c0);
  check_chunk(s, ref, 0, 1, 0, 3, 1, 1);
  serve_close(s);
  serve_close(ref);
}

/* serve_sample_at for world 1 on this fixture at d17d44a (before order.c):
 * {split, seed, epoch, the order}. */
static const struct {
  const char *split;
  uint64_t seed;
  uint32_t epoch;
  int64_t order[30];
} SERVE_GOLDEN[] = {
    {"all", 1234, 0, {7, 6, 8, 5, 28, 12, 4, 25, 2, 3, 26, 29, 1, 13, 27, 22, 17, 14, 15, 10, 11, 18, 24, 20, 19, 21, 23, 16, 0, 9}},
    {"all", 1234, 1, {11, 14, 4, 27, 15, 23, 7, 10, 0, 13, 18, 8, 21, 5, 29, 24, 20, 6, 16, 19, 12, 3, 2, 9, 26, 25, 22, 17, 1, 28}},
    {"all", 1234, 5, {8, 14, 16, 27, 17, 29, 20, 18, 15, 13, 24, 28, 25, 19, 22, 11, 23, 21, 12, 3, 26, 9, 4, 5, 6, 7, 0, 2, 10, 1}},
    {"all", 42, 0, {21, 0, 10, 27, 1, 3, 7, 19, 25, 15, 16, 9, 22, 11, 8, 18, 26, 5, 17, 28, 12, 6, 4, 20, 13, 23, 2, 29, 14, 24}},
    {"all", 42, 1, {28, 19, 11, 13, 15, 12, 4, 21, 23, 8, 0, 27, 9, 7, 26, 3, 14, 16, 20, 5, 18, 1, 2, 17, 25, 22, 6, 29, 24, 10}},
    {"all", 42, 5, {11, 0, 17, 20, 13, 8, 21, 22, 9, 26, 2, 15, 18, 4, 3, 1, 10, 6, 24, 25, 29, 19, 16, 14, 27, 28, 23, 5, 7, 12}},
    {"train", 1234, 0, {6, 12, 13, 29, 3, 22, 4, 14, 23, 7, 8, 27, 5, 28, 21}},
    {"train", 1234, 1, {22, 4, 27, 21, 23, 3, 14, 29, 12, 13, 5, 7, 8, 6, 28}},
    {"train", 1234, 5, {23, 27, 7, 12, 28, 3, 22, 6, 8, 29, 14, 21, 5, 13, 4}},
    {"train", 42, 0, {28, 6, 27, 12, 22, 3, 4, 29, 5, 23, 7, 14, 13, 8, 21}},
    {"train", 42, 1, {8, 7, 29, 14, 12, 28, 3, 6, 23, 5, 4, 21, 27, 13, 22}},
    {"train", 42, 5, {13, 7, 12, 4, 22, 21, 14, 6, 29, 3, 5, 23, 28, 8, 27}},
};

static void test_exact_golden(void) {
  for (size_t g = 0; g < sizeof SERVE_GOLDEN / sizeof SERVE_GOLDEN[0]; g++) {
    serve_source *s = open_src(SERVE_GOLDEN[g].split, SERVE_GOLDEN[g].seed, 1, 1, 1);
    if (!s) return;
    CHECK(serve_order(s)->mode == ORDER_EXACT);
    for (uint64_t p = 0; p < serve_split_size(s); p++)
      CHECK_MSG(serve_sample_at(s, SERVE_GOLDEN[g].epoch, 0, p) == SERVE_GOLDEN[g].order[p],
                "%s seed %llu epoch %u position %llu: %lld, main gave %lld", SERVE_GOLDEN[g].split,
                (unsigned long long)SERVE_GOLDEN[g].seed, SERVE_GOLDEN[g].epoch,
                (unsigned long long)p, (long long)serve_sample_at(s, SERVE_GOLDEN[g].epoch, 0, p),
                (long long)SERVE_GOLDEN[g].order[p]);
    serve_close(s);
  }
}

static serve_source *open_shards(const char *split, int world, int batch, int64_t K, int64_t B) {
  serve_opts o = {.dataset_dir = g_dir, .split = split, .seed = 9, .world = world, .batch = batch,
                  .drop_last = 1, .prefetch = 2,
                  .order = {.mode = ORDER_SHARDS, .shards = K, .buffer = B}};
  serve_source *s = NULL;
  CHECK_OK(serve_open(&o, &s));
  return s;
}

/* Order shards through serve: order_epoch over the split with the shards
 * of the fixture's layout (8 samples per shard), announced in INFO. */
static void test_shards_order(void) {
  const char *splits[2] = {"all", "train"};
  for (int k = 0; k < 2; k++) {
    serve_source *s = open_shards(splits[k], 1, 1, 2, 5);
    if (!s) return;
    const int64_t m = (int64_t)serve_split_size(s);
    int64_t split[64], shard[64], want[64];
    for (int64_t j = 0; j < m; j++) {
      split[j] = serve_split_sample(s, j);
      shard[j] = split[j] / SPEC.samples_per_shard;
    }
    order_opts oo = {.mode = ORDER_SHARDS, .shards = 2, .buffer = 5};
    order_plan p;
    CHECK_OK(order_plan_init(&p, &oo, split, shard, m, SPEC.samples_per_shard));
    for (uint32_t e = 0; e < 3; e++) {
      CHECK_OK(order_epoch(&p, 9, e, want));
      for (int64_t j = 0; j < m; j++)
        CHECK_MSG(serve_sample_at(s, e, 0, (uint64_t)j) == want[j],
                  "%s epoch %u position %lld: %lld, order_epoch gives %lld", splits[k], e,
                  (long long)j, (long long)serve_sample_at(s, e, 0, (uint64_t)j), (long long)want[j]);
    }
    order_plan_free(&p);
    char info[4096];
    CHECK(serve_info_json(s, 0, info, sizeof info) > 0);
    CHECK_MSG(strstr(info, "\"order\": \"shards\", \"order_shards\": 2, \"order_buffer\": 5"),
              "INFO: %s", info);
    serve_close(s);
  }
  /* defaults: K = 8, B = 4 x 8 samples per shard */
  serve_source *d = open_shards("all", 1, 1, 0, 0);
  if (d) {
    CHECK(serve_order(d)->shards == 8 && serve_order(d)->buffer == 32);
    serve_close(d);
  }
  serve_source *x = open_src("all", 9, 1, 1, 1);
  if (x) {
    char info[4096];
    CHECK(serve_info_json(x, 0, info, sizeof info) > 0);
    CHECK_MSG(strstr(info, "\"order\": \"exact\", \"order_shards\": null, \"order_buffer\": null"),
              "INFO: %s", info);
    serve_close(x);
  }
  serve_opts bad = {.dataset_dir = g_dir, .split = "all", .world = 1, .batch = 1,
                    .order = {.mode = ORDER_SHARDS, .shards = 70000}};
  serve_source *b = NULL;
  CHECK_ERR(serve_open(&bad, &b), "order shards: 70000 shards interleaved: expected 1..65536");
}

/* Resume in shards mode: a fresh source (a restarted producer) asked for
 * rank r's chunks from position k on, for every k and r, sends exactly the
 * rest of what an uninterrupted source sent; with read-ahead and batch 1. */
static void test_shards_resume(void) {
  const int W = 2;
  serve_source *s = open_shards("all", W, 1, 2, 5);
  if (!s) return;
  const uint64_t share = serve_samples_per_rank(s);
  CHECK(share == 15);
  uint64_t full[2][15];
  for (int r = 0; r < W; r++)
    for (uint64_t p = 0; p < share; p++) {
      stream_consumer c = {(uint16_t)r, (uint16_t)W, 0};
      stream_chunk ch;
      memset(&ch, 0, sizeof ch);
      int rc = serve_chunk(s, &c, 1, p, &ch);
      CHECK_MSG(rc == 1, "rank %d position %llu: %d (%s)", r, (unsigned long long)p, rc, ce_err_msg());
      full[r][p] = rc == 1 ? ch.ids[0] : UINT64_MAX;
      if (rc == 1) ch.release(ch.token);
    }
  serve_close(s);
  for (uint64_t k = 0; k < share; k++) {
    serve_source *f = open_shards("all", W, 1, 2, 5);
    if (!f) return;
    for (int r = 0; r < W; r++)
      for (uint64_t p = k; p < share; p++) {
        stream_consumer c = {(uint16_t)r, (uint16_t)W, SERVE_FLAG_ORDER(ORDER_SHARDS)};
        stream_chunk ch;
        memset(&ch, 0, sizeof ch);
        int rc = serve_chunk(f, &c, 1, p, &ch);
        CHECK_MSG(rc == 1 && ch.ids[0] == full[r][p],
                  "resumed at %llu: rank %d position %llu: rc %d, id %llu, uninterrupted %llu",
                  (unsigned long long)k, r, (unsigned long long)p, rc,
                  rc == 1 ? (unsigned long long)ch.ids[0] : 0ull, (unsigned long long)full[r][p]);
        if (rc == 1) ch.release(ch.token);
      }
    stream_consumer c = {0, (uint16_t)W, 0};
    stream_chunk ch;
    CHECK(serve_chunk(f, &c, 1, share, &ch) == 0); /* and the epoch ends there */
    serve_close(f);
  }
  /* the data are the samples named, bit for bit */
  serve_source *a = open_shards("all", W, 3, 2, 5), *ref = open_shards("all", W, 3, 2, 5);
  if (a && ref)
    for (uint64_t p = 0; p < share; p += 3) check_chunk(a, ref, 1, W, 2, p, 0, 3);
  serve_close(a);
  serve_close(ref);
}

/* A consumer names the order it expects (HELLO flags bits 1-2). */
static void test_order_request(void) {
  serve_source *sh = open_shards("all", 1, 1, 2, 5), *ex = open_src("all", 9, 1, 1, 1);
  if (sh && ex) {
    stream_chunk ch;
    stream_consumer want_exact = {0, 1, SERVE_FLAG_ORDER(ORDER_EXACT)},
                    want_shards = {0, 1, SERVE_FLAG_ORDER(ORDER_SHARDS)}, any = {0, 1, 0};
    CHECK_ERR(serve_chunk(sh, &want_exact, 0, 0, &ch),
              "the consumer asks for order exact, the producer serves order shards (coemu serve "
              "--order exact)");
    CHECK_ERR(serve_chunk(ex, &want_shards, 0, 0, &ch), "asks for order shards, the producer serves order exact");
    stream_consumer bad = {0, 1, 3u << SERVE_FLAG_ORDER_SHIFT};
    CHECK_ERR(serve_chunk(ex, &bad, 0, 0, &ch), "asks for order 3 (HELLO flags bits 1-2)");
    serve_source *ok[3] = {sh, sh, ex};
    stream_consumer *cs[3] = {&want_shards, &any, &want_exact};
    for (int i = 0; i < 3; i++) {
      memset(&ch, 0, sizeof ch);
      int rc = serve_chunk(ok[i], cs[i], 0, 0, &ch);
      CHECK_MSG(rc == 1, "case %d: %d (%s)", i, rc, ce_err_msg());
      if (rc == 1) ch.release(ch.token);
    }
  }
  serve_close(sh);
  serve_close(ex);
}

/* Samples read so far, once the reader has been idle for 0.3 s (at most
 * 20 s): what it read ahead. */
static uint64_t rows_read_settled(serve_source *s) {
  uint64_t last = UINT64_MAX;
  for (int k = 0; k < 200; k++) {
    uint64_t d, h; /* mapped rows are counted in d */
    serve_read_counts(s, &d, &h, NULL);
    if (d + h == last) return last;
    last = d + h;
    usleep(300000);
  }
  return last;
}

/* Read-ahead runs on past the end of an epoch into the next one (the
 * stream goes on there; issue 19: the first chunk of every epoch waited),
 * but not past the last epoch of a bounded run (serve_opts.epochs), and it
 * changes nothing that is sent: a consumer that reads three epochs gets
 * each one's order. One rank, batch 3, prefetch 2: 30 samples = 10 chunks
 * per epoch, so after epoch 0 exactly 30 + 2 x 3 samples have been read
 * (exact: every chunk is read once, the reader is single). */
static void test_readahead_epochs(void) {
  for (uint32_t epochs = 0; epochs <= 3; epochs += 3) {
    serve_opts o = {.dataset_dir = g_dir, .split = "all", .seed = 77, .world = 1, .batch = 3,
                    .drop_last = 1, .prefetch = 2, .read_threads = 1, .epochs = epochs};
    serve_source *s = NULL, *ref = open_src("all", 77, 1, 3, 1);
    CHECK_OK(serve_open(&o, &s));
    if (!s || !ref) {
      serve_close(s);
      serve_close(ref);
      return;
    }
    const uint64_t per = serve_samples_per_rank(s);
    CHECK(per == 30);
    stream_consumer c = {0, 1, 0};
    stream_chunk ch;
    for (uint32_t e = 0; e < 3; e++) {
      for (uint64_t pos = 0; pos < per; pos += 3) check_chunk(s, ref, 0, 1, e, pos, 0, 3);
      memset(&ch, 0, sizeof ch);
      CHECK(serve_chunk(s, &c, e, per, &ch) == 0); /* the epoch's end */
      uint64_t got = rows_read_settled(s), want = (e + 1) * per + (e + 1 < 3 || !epochs ? 6 : 0);
      CHECK_MSG(got == want, "epochs %u: after epoch %u, %llu samples read, expected %llu "
                "(the next epoch's first %d chunks read ahead)", epochs, e,
                (unsigned long long)got, (unsigned long long)want, e + 1 < 3 || !epochs ? 2 : 0);
    }
    serve_close(s);
    serve_close(ref);
  }
}

/* ---- reader threads (issue 14: prefetch on a thread pool) ---- */

/* Every chunk of epochs 0 and 1 (W 2, B 3, all 30 samples) from a source
 * with `threads` readers and `max_open` open shards: the ids of the order,
 * the producer's exact values (fixture_sample) and their XXH64s. */
static void stream_all(int threads, int max_open, int mode, uint64_t *direct, uint64_t *hdf5) {
  const int W = 2, B = 3;
  serve_opts o = {.dataset_dir = g_dir, .split = "all", .seed = 5, .world = W, .batch = B,
                  .drop_last = 1, .prefetch = 3, .read_threads = threads, .max_open = max_open,
                  .order = {.mode = mode}};
  serve_source *s = NULL;
  *direct = *hdf5 = 0;
  CHECK_OK(serve_open(&o, &s));
  if (!s) return;
  size_t iv = fixture_in_vals(&SPEC), ov = fixture_out_vals(&SPEC);
  float *in = malloc(sizeof(float) * iv), *tg = malloc(sizeof(float) * ov);
  int bad = 0;
  for (uint32_t e = 0; e < 2 && in && tg; e++)
    for (uint64_t pos = 0; pos < serve_samples_per_rank(s); pos += B)
      for (int r = 0; r < W; r++) {
        stream_consumer c = {(uint16_t)r, (uint16_t)W, 0};
        stream_chunk ch;
        memset(&ch, 0, sizeof ch);
        int rc = serve_chunk(s, &c, e, pos, &ch);
        CHECK_MSG(rc == 1, "threads %d max_open %d: epoch %u rank %d position %llu: %s", threads,
                  max_open, e, r, (unsigned long long)pos, ce_err_msg());
        if (rc != 1) continue;
        CHECK(ch.sums != NULL);
        const float *cin = ch.inputs, *ctg = ch.targets;
        for (int k = 0; k < B; k++) {
          int64_t id = serve_sample_at(s, e, r, pos + (uint64_t)k);
          fixture_sample(&SPEC, id, in, tg);
          bad += ch.ids[k] != (uint64_t)id ||
                 memcmp(cin + (size_t)k * iv, in, sizeof(float) * iv) ||
                 memcmp(ctg + (size_t)k * ov, tg, sizeof(float) * ov) ||
                 (ch.sums && (ch.sums[2 * k] != ce_xxh64(in, sizeof(float) * iv, 0) ||
                              ch.sums[2 * k + 1] != ce_xxh64(tg, sizeof(float) * ov, 0)));
        }
        ch.release(ch.token);
      }
  CHECK_MSG(bad == 0, "threads %d max_open %d order %d: %d samples differ from the producer's",
            threads, max_open, mode, bad);
  int now, peak;
  serve_open_shards(s, &now, &peak);
  CHECK_MSG(peak <= (max_open ? max_open : 64), "max_open %d: %d shards were open at once",
            max_open, peak);
  serve_read_counts(s, direct, hdf5, NULL);
  free(in);
  free(tg);
  serve_close(s);
}

static void test_read_threads(void) {
  uint64_t d, h;
  for (int mode = ORDER_EXACT; mode <= ORDER_SHARDS; mode++)
    for (int t = 1; t <= 4; t += 3) {
      /* the fixture's shards are float32 rows, unfiltered: all read with pread */
      stream_all(t, 0, mode, &d, &h);
      CHECK_MSG(d >= 60 && h == 0, "threads %d: %llu samples read directly, %llu through HDF5 "
                "(expected all 60+ directly)", t, (unsigned long long)d, (unsigned long long)h);
      /* one open shard: none may be pinned, every read goes through HDF5 */
      stream_all(t, 1, mode, &d, &h);
      CHECK_MSG(d == 0 && h >= 60, "max_open 1: %llu direct, %llu through HDF5", (unsigned long long)d,
                (unsigned long long)h);
      /* two: one pinned at a time, the other readers fall back (same bytes) */
      stream_all(t, 2, mode, &d, &h);
      CHECK(d + h >= 60);
    }
}

/* A row whose bytes changed on disk is refused by every reader, naming the
 * shard, the sample, its row and the array: a copy of the fixture with one
 * bit flipped in /inputs of sample 13 (shard 1, row 5) and in /targets of
 * sample 26 (shard 3, row 2). */
static void flip_bit(const char *dir, int64_t shard, int64_t row, const char *name) {
  char p[1400];
  CHECK_OK(dataset_shard_path(dir, shard, p, sizeof p));
  hid_t f = H5Fopen(p, H5F_ACC_RDONLY, H5P_DEFAULT), d = f >= 0 ? H5Dopen2(f, name, H5P_DEFAULT) : -1;
  hsize_t off[5] = {(hsize_t)row, 0, 0, 0, 0}, size = 0;
  unsigned mask = 0;
  haddr_t addr = HADDR_UNDEF;
  CHECK(d >= 0 && H5Dget_chunk_info_by_coord(d, off, &mask, &addr, &size) >= 0 &&
        addr != HADDR_UNDEF);
  if (d >= 0) H5Dclose(d);
  if (f >= 0) H5Fclose(f);
  FILE *fp = fopen(p, "r+b");
  CHECK(fp != NULL);
  if (!fp || addr == HADDR_UNDEF) {
    if (fp) fclose(fp);
    return;
  }
  unsigned char b = 0;
  long at = (long)addr + 4 * 17 + 1; /* a mantissa bit of value 17 of the row */
  CHECK(fseek(fp, at, SEEK_SET) == 0 && fread(&b, 1, 1, fp) == 1);
  b ^= 0x10;
  CHECK(fseek(fp, at, SEEK_SET) == 0 && fwrite(&b, 1, 1, fp) == 1);
  fclose(fp);
}

/* A chunk handed out row by row (serve_opts.row_views) holds a mapping
 * reference per row frame: dropped here as the stream server drops them. */
static void chunk_release(stream_chunk *ch) {
  if (ch->in_rows && ch->row_release)
    for (uint32_t j = 0; j < 2 * ch->nsamples; j++) ch->row_release(ch->row_tokens[j]);
  if (ch->release) ch->release(ch->token);
}

static void test_damaged_row_threads(void) {
  char dir[1200];
  snprintf(dir, sizeof dir, "%s/damaged", check_scratch_);
  if (fixture_make_forked(dir, &SPEC) < 0) {
    CHECK_MSG(0, "fixture: %s", ce_err_msg());
    return;
  }
  flip_bit(dir, 1, 5, "inputs");
  flip_bit(dir, 3, 2, "targets");
  char want13[1600], want26[1600], p[1400];
  CHECK_OK(dataset_shard_path(dir, 1, p, sizeof p));
  snprintf(want13, sizeof want13,
           "%s: sample 13 (row 5 of the shard): /inputs does not match its checksum", p);
  CHECK_OK(dataset_shard_path(dir, 3, p, sizeof p));
  snprintf(want26, sizeof want26,
           "%s: sample 26 (row 2 of the shard): /targets does not match its checksum", p);
  /* batch 2: rows copied (pread, then HDF5 with one open shard), or with
   * row_views each row checked where it lies in its mapped shard; batch 1:
   * every chunk one row, checked where it lies in the mapped file */
  for (int B = 2; B >= 1; B--)
  for (int rv = 0; rv <= (B == 2); rv++)
  for (int max_open = 0; max_open <= 1; max_open++) {
    serve_opts o = {.dataset_dir = dir, .split = "all", .seed = 9, .world = 1, .batch = B,
                    .drop_last = 1, .prefetch = 4, .read_threads = 4, .max_open = max_open,
                    .row_views = rv};
    serve_source *s = NULL;
    CHECK_OK(serve_open(&o, &s));
    if (!s) continue;
    int fails = 0;
    for (uint64_t pos = 0; pos < serve_samples_per_rank(s); pos += B) {
      int has13 = 0, has26 = 0;
      for (int k = 0; k < B; k++) {
        int64_t id = serve_sample_at(s, 0, 0, pos + (uint64_t)k);
        has13 |= id == 13;
        has26 |= id == 26 && !has13; /* the first damaged row of the chunk is named */
      }
      stream_consumer c = {0, 1, 0};
      stream_chunk ch;
      memset(&ch, 0, sizeof ch);
      if (has13 || has26) {
        CHECK_ERR(serve_chunk(s, &c, 0, pos, &ch), has13 ? want13 : want26);
        fails++;
      } else {
        int rc = serve_chunk(s, &c, 0, pos, &ch);
        CHECK_MSG(rc == 1, "position %llu (no damaged sample): %s", (unsigned long long)pos,
                  ce_err_msg());
        if (rc == 1) chunk_release(&ch);
      }
    }
    CHECK(fails == 2);
    uint64_t d, h, mp;
    serve_read_counts(s, &d, &h, &mp);
    CHECK_MSG(max_open ? d == 0 : h == 0, "max_open %d: %llu direct, %llu HDF5", max_open,
              (unsigned long long)d, (unsigned long long)h);
    CHECK_MSG((B == 1 || rv) && !max_open ? mp == d && mp >= 26 : mp == 0,
              "batch %d row_views %d max_open %d: %llu of %llu direct rows sent from the mapping",
              B, rv, max_open, (unsigned long long)mp, (unsigned long long)d);
    serve_close(s);
  }
}

/* ---- zero copy: chunks that point into the mapped shard files ---- */

/* Every chunk of epochs 0 and 1 (W 2, batch 1, both orders) with and without
 * serve_opts.copy_rows: the producer's exact bytes and their XXH64s either
 * way; every row mapped without copy_rows, none with it. */
static void test_zero_copy_chunks(void) {
  const int W = 2;
  size_t iv = fixture_in_vals(&SPEC), ov = fixture_out_vals(&SPEC);
  float *in = malloc(sizeof(float) * iv), *tg = malloc(sizeof(float) * ov);
  for (int mode = ORDER_EXACT; mode <= ORDER_SHARDS && in && tg; mode++)
    for (int copy = 0; copy <= 1; copy++) {
      serve_opts o = {.dataset_dir = g_dir, .split = "all", .seed = 5, .world = W, .batch = 1,
                      .drop_last = 1, .prefetch = 3, .read_threads = 2, .copy_rows = copy,
                      .order = {.mode = mode}};
      serve_source *s = NULL;
      CHECK_OK(serve_open(&o, &s));
      if (!s) continue;
      int bad = 0, n = 0;
      for (uint32_t e = 0; e < 2; e++)
        for (uint64_t pos = 0; pos < serve_samples_per_rank(s); pos++)
          for (int r = 0; r < W; r++) {
            stream_consumer c = {(uint16_t)r, (uint16_t)W, 0};
            stream_chunk ch;
            memset(&ch, 0, sizeof ch);
            int rc = serve_chunk(s, &c, e, pos, &ch);
            CHECK_MSG(rc == 1, "copy %d: epoch %u rank %d position %llu: %s", copy, e, r,
                      (unsigned long long)pos, ce_err_msg());
            if (rc != 1) continue;
            int64_t id = serve_sample_at(s, e, r, pos);
            fixture_sample(&SPEC, id, in, tg);
            bad += ch.ids[0] != (uint64_t)id || !ch.sums ||
                   memcmp(ch.inputs, in, sizeof(float) * iv) ||
                   memcmp(ch.targets, tg, sizeof(float) * ov) ||
                   ch.sums[0] != ce_xxh64(in, sizeof(float) * iv, 0) ||
                   ch.sums[1] != ce_xxh64(tg, sizeof(float) * ov, 0);
            n++;
            ch.release(ch.token);
          }
      CHECK_MSG(bad == 0 && n == 60, "order %d copy %d: %d of %d chunks differ from the producer's",
                mode, copy, bad, n);
      uint64_t d, h, mp;
      serve_read_counts(s, &d, &h, &mp);
      CHECK_MSG(copy ? mp == 0 && d >= 60 : mp == d && d >= 60 && h == 0,
                "order %d copy %d: %llu rows mapped, %llu direct, %llu HDF5", mode, copy,
                (unsigned long long)mp, (unsigned long long)d, (unsigned long long)h);
      serve_close(s);
    }
  free(in);
  free(tg);
}

/* A view outlives its plan, its shard's eviction and the source itself:
 * one reader, two open shards at most, every chunk of an epoch held until
 * the end (the 30 samples lie in 4 shards, so mapped shards are closed
 * while their chunks are held), then compared byte for byte (a mapping
 * released too early faults here, or under ASan reads freed memory). */
static void test_zero_copy_lifetime(void) {
  serve_opts o = {.dataset_dir = g_dir, .split = "all", .seed = 3, .world = 1, .batch = 1,
                  .drop_last = 1, .prefetch = 2, .read_threads = 1, .max_open = 2};
  serve_source *s = NULL;
  CHECK_OK(serve_open(&o, &s));
  if (!s) return;
  enum { N = 30 };
  stream_chunk held[N];
  int64_t ids[N];
  int got = 0;
  for (uint64_t pos = 0; pos < serve_samples_per_rank(s) && got < N; pos++) {
    stream_consumer c = {0, 1, 0};
    memset(&held[got], 0, sizeof held[got]);
    int rc = serve_chunk(s, &c, 0, pos, &held[got]);
    CHECK_MSG(rc == 1, "position %llu: %s", (unsigned long long)pos, ce_err_msg());
    if (rc == 1) ids[got++] = serve_sample_at(s, 0, 0, pos);
  }
  int now, peak;
  serve_open_shards(s, &now, &peak);
  uint64_t d, h, mp;
  serve_read_counts(s, &d, &h, &mp);
  CHECK_MSG(peak <= 2 && mp >= 15, "%d shards open at most, %llu of %llu rows mapped", peak,
            (unsigned long long)mp, (unsigned long long)(d + h));
  serve_close(s); /* the views hold their mappings, not the source */
  size_t iv = fixture_in_vals(&SPEC), ov = fixture_out_vals(&SPEC);
  float *in = malloc(sizeof(float) * iv), *tg = malloc(sizeof(float) * ov);
  int bad = 0;
  for (int k = 0; k < got && in && tg; k++) {
    fixture_sample(&SPEC, ids[k], in, tg);
    bad += held[k].ids[0] != (uint64_t)ids[k] || memcmp(held[k].inputs, in, sizeof(float) * iv) ||
           memcmp(held[k].targets, tg, sizeof(float) * ov);
  }
  for (int k = 0; k < got; k++) held[k].release(held[k].token);
  CHECK_MSG(got == N && bad == 0, "%d chunks held, %d differ after their shards were closed", got,
            bad);
  free(in);
  free(tg);
}

/* Row by row (serve_opts.row_views): shuffled chunks of 4 rows from 4
 * shards, one reader, two open shards at most, every chunk of an epoch held
 * (so shards are evicted, and the source closed, while their rows are
 * held): every row points into its own shard's mapping (none copied), is
 * the producer's exact bytes with its XXH64s, and each row frame's mapping
 * reference is dropped on its own: the inputs rows' first, then the
 * targets rows are still whole (a mapping unmapped early faults here);
 * without row_views the same chunks are contiguous and copied. */
static void test_zero_copy_rows(void) {
  enum { B = 4, NCH = 7 };
  size_t iv = fixture_in_vals(&SPEC), ov = fixture_out_vals(&SPEC);
  float *in = malloc(sizeof(float) * iv), *tg = malloc(sizeof(float) * ov);
  for (int rv = 0; rv <= 1 && in && tg; rv++) {
    serve_opts o = {.dataset_dir = g_dir, .split = "all", .seed = 3, .world = 1, .batch = B,
                    .drop_last = 1, .prefetch = 2, .read_threads = 1, .max_open = 2,
                    .row_views = rv};
    serve_source *s = NULL;
    CHECK_OK(serve_open(&o, &s));
    if (!s) continue;
    stream_chunk held[NCH];
    int64_t ids[NCH][B];
    int got = 0, shards_mixed = 0;
    for (uint64_t pos = 0; pos + B <= serve_samples_per_rank(s) && got < NCH; pos += B) {
      stream_consumer c = {0, 1, 0};
      memset(&held[got], 0, sizeof held[got]);
      int rc = serve_chunk(s, &c, 0, pos, &held[got]);
      CHECK_MSG(rc == 1, "row_views %d position %llu: %s", rv, (unsigned long long)pos,
                ce_err_msg());
      if (rc != 1) continue;
      for (int k = 0; k < B; k++) ids[got][k] = serve_sample_at(s, 0, 0, pos + (uint64_t)k);
      for (int k = 1; k < B; k++)
        shards_mixed += ids[got][k] / SPEC.samples_per_shard != ids[got][0] / SPEC.samples_per_shard;
      got++;
    }
    int now, peak;
    serve_open_shards(s, &now, &peak);
    uint64_t d, h, mp;
    serve_read_counts(s, &d, &h, &mp);
    CHECK_MSG(got == NCH && shards_mixed > 0 && peak <= 2, "%d chunks, %d rows from another shard "
              "than their chunk's first, %d shards open at most", got, shards_mixed, peak);
    CHECK_MSG(rv ? mp == d && mp >= (uint64_t)(NCH * B) && h == 0 : mp == 0,
              "row_views %d: %llu rows mapped, %llu direct, %llu HDF5", rv, (unsigned long long)mp,
              (unsigned long long)d, (unsigned long long)h);
    serve_close(s); /* the row references hold their mappings, not the source */
    int bad = 0;
    for (int pass = 0; pass < 2; pass++) /* inputs, then targets after the inputs' refs dropped */
      for (int c = 0; c < got; c++) {
        stream_chunk *ch = &held[c];
        bad += rv != (ch->in_rows != NULL) || (rv && (ch->inputs || !ch->row_release)) || !ch->sums;
        for (int k = 0; k < B; k++) {
          fixture_sample(&SPEC, ids[c][k], in, tg);
          const void *x = ch->in_rows ? ch->in_rows[k] : (const char *)ch->inputs + k * iv * 4;
          const void *y = ch->tg_rows ? ch->tg_rows[k] : (const char *)ch->targets + k * ov * 4;
          if (pass == 0)
            bad += ch->ids[k] != (uint64_t)ids[c][k] || memcmp(x, in, sizeof(float) * iv) ||
                   ch->sums[2 * k] != ce_xxh64(in, sizeof(float) * iv, 0);
          else
            bad += memcmp(y, tg, sizeof(float) * ov) ||
                   ch->sums[2 * k + 1] != ce_xxh64(tg, sizeof(float) * ov, 0);
          if (ch->in_rows) ch->row_release(ch->row_tokens[2 * k + pass]);
        }
      }
    for (int c = 0; c < got; c++) held[c].release(held[c].token);
    CHECK_MSG(bad == 0, "row_views %d: %d rows differ after their shards were closed", rv, bad);
  }
  free(in);
  free(tg);
}

/* A shard truncated while it is mapped: the rows it lost are an error
 * naming the shard, the sample and its row (the SIGBUS of reading them is
 * caught while they are checked), never a crash; the rows it kept are
 * served. One reader, prefetch 1: after the first chunk at most one more is
 * read before the cut. */
static void test_zero_copy_truncated(void) {
  char dir[1200];
  snprintf(dir, sizeof dir, "%s/truncated", check_scratch_);
  if (fixture_make_forked(dir, &SPEC) < 0) {
    CHECK_MSG(0, "fixture: %s", ce_err_msg());
    return;
  }
  serve_opts o = {.dataset_dir = dir, .split = "all", .seed = 9, .world = 1, .batch = 1,
                  .drop_last = 1, .prefetch = 1, .read_threads = 1};
  serve_source *s = NULL;
  CHECK_OK(serve_open(&o, &s));
  if (!s) return;
  stream_consumer c = {0, 1, 0};
  stream_chunk ch;
  memset(&ch, 0, sizeof ch);
  CHECK(serve_chunk(s, &c, 0, 0, &ch) == 1);
  if (ch.release) ch.release(ch.token);
  int64_t first = serve_sample_at(s, 0, 0, 0), shard = first / SPEC.samples_per_shard;
  char p[1400];
  CHECK_OK(dataset_shard_path(dir, shard, p, sizeof p));
  struct stat st;
  CHECK(stat(p, &st) == 0 && truncate(p, st.st_size / 2) == 0);
  char want[1600];
  snprintf(want, sizeof want, "%s: sample ", p);
  int fails = 0, named = 0, served = 0;
  for (uint64_t pos = 1; pos < serve_samples_per_rank(s); pos++) {
    int64_t id = serve_sample_at(s, 0, 0, pos);
    memset(&ch, 0, sizeof ch);
    ce_err_clear();
    int rc = serve_chunk(s, &c, 0, pos, &ch);
    if (rc == 1) {
      ch.release(ch.token); /* not read: it may lie in the part cut off (checked before the cut) */
      served++;
      continue;
    }
    fails++;
    char row[64];
    snprintf(row, sizeof row, "sample %lld (row %lld of the shard)", (long long)id,
             (long long)(id - shard * SPEC.samples_per_shard));
    named += id / SPEC.samples_per_shard == shard && strstr(ce_err_msg(), want) &&
             strstr(ce_err_msg(), row) && strstr(ce_err_msg(), "SIGBUS") &&
             strstr(ce_err_msg(), "truncated");
    if (id / SPEC.samples_per_shard != shard || !strstr(ce_err_msg(), want))
      CHECK_MSG(0, "position %llu (sample %lld): %s", (unsigned long long)pos, (long long)id,
                ce_err_msg());
  }
  CHECK_MSG(fails >= 1 && named == fails && served >= 20,
            "%d chunks failed (%d named with the shard, sample, row and SIGBUS), %d served",
            fails, named, served);
  serve_close(s);
}

/* Chunk buffers are reused (serve.c's chunk pool): at batch 1 (raw chunks
 * mapped, normalised ones copied) and batch 3 (scattered rows, copied),
 * raw and normalised chunks alternating, so a buffer goes from a mapped
 * chunk to a copied one, from one with forwarded row checksums to one
 * without, and back: every chunk is still the producer's exact bytes, a
 * raw chunk carries its rows' XXH64s and a normalised one none (the server
 * hashes it). Made chunks never outnumber the most in use at once (the
 * read-ahead slots, W x (prefetch + 1) + 2, and the one held here); before
 * the pool every chunk was made new (30 of 30). A chunk held past
 * serve_close is still whole (ASan: no use after free). */
static void test_chunk_pool(void) {
  size_t iv = fixture_in_vals(&SPEC), ov = fixture_out_vals(&SPEC);
  for (int B = 1; B <= 3; B += 2) {
    const int W = 1, P = 2;
    serve_opts o = {.dataset_dir = g_dir, .split = "all", .seed = 5, .world = W, .batch = B,
                    .drop_last = 1, .prefetch = P, .read_threads = 2};
    serve_source *s = NULL, *ref = NULL;
    CHECK_OK(serve_open(&o, &s));
    CHECK_OK(serve_open(&o, &ref));
    if (!s || !ref) {
      serve_close(s);
      serve_close(ref);
      continue;
    }
    int bad = 0, n = 0;
    uint64_t per = serve_samples_per_rank(s);
    for (uint32_t e = 0; e < 3; e++)
      for (uint64_t pos = 0; pos < per; pos += (uint64_t)B) {
        int norm = (int)((pos / (uint64_t)B + e) % 2);
        stream_consumer c = {0, (uint16_t)W, (uint32_t)norm};
        stream_chunk ch;
        memset(&ch, 0, sizeof ch);
        int rc = serve_chunk(s, &c, e, pos, &ch);
        CHECK_MSG(rc == 1, "batch %d epoch %u position %llu: %s", B, e, (unsigned long long)pos,
                  ce_err_msg());
        if (rc != 1) continue;
        int64_t idx[3];
        for (int k = 0; k < B; k++) idx[k] = serve_sample_at(ref, e, 0, pos + (uint64_t)k);
        float *in = NULL, *tg = NULL;
        CHECK_OK(read_ref(ref, idx, B, norm, &in, &tg));
        int diff = !in || !tg || memcmp(ch.inputs, in, sizeof(float) * iv * (size_t)B) ||
                   memcmp(ch.targets, tg, sizeof(float) * ov * (size_t)B) ||
                   (norm ? ch.sums != NULL : ch.sums == NULL);
        for (int k = 0; k < B && !diff; k++)
          diff = ch.ids[k] != (uint64_t)idx[k] ||
                 (!norm && (ch.sums[2 * k] != ce_xxh64(in + iv * (size_t)k, sizeof(float) * iv, 0) ||
                            ch.sums[2 * k + 1] != ce_xxh64(tg + ov * (size_t)k, sizeof(float) * ov, 0)));
        bad += diff;
        n++;
        free(in);
        free(tg);
        ch.release(ch.token);
      }
    CHECK_MSG(bad == 0 && n == 3 * (int)(per / (uint64_t)B),
              "batch %d: %d of %d chunks differ from the producer's", B, bad, n);
    uint64_t made = 0, reused = 0;
    serve_pool_counts(s, &made, &reused);
    const uint64_t most = (uint64_t)(W * (P + 1) + 2) + 1;
    CHECK_MSG(made <= most && made + reused >= (uint64_t)n,
              "batch %d: %llu chunks made new, %llu reused, for %d chunks served (at most %llu "
              "in use at once)", B, (unsigned long long)made, (unsigned long long)reused, n,
              (unsigned long long)most);
    /* a (copied) chunk held past serve_close */
    stream_consumer c = {0, (uint16_t)W, 1};
    stream_chunk ch;
    memset(&ch, 0, sizeof ch);
    CHECK(serve_chunk(s, &c, 0, 0, &ch) == 1);
    serve_close(s);
    if (ch.release) {
      int64_t idx[3];
      for (int k = 0; k < B; k++) idx[k] = serve_sample_at(ref, 0, 0, (uint64_t)k);
      float *in = NULL, *tg = NULL;
      CHECK_OK(read_ref(ref, idx, B, 1, &in, &tg));
      CHECK(in && tg && !memcmp(ch.inputs, in, sizeof(float) * iv * (size_t)B) &&
            !memcmp(ch.targets, tg, sizeof(float) * ov * (size_t)B));
      free(in);
      free(tg);
      ch.release(ch.token);
    }
    serve_close(ref);
  }
}

int main(void) {
  const char *tmp = check_scratch("serve");
  snprintf(g_dir, sizeof g_dir, "%s/ds", tmp);
  snprintf(g_nostats, sizeof g_nostats, "%s/nostats", tmp);
  if (fixture_make_forked(g_dir, &SPEC) < 0 || fixture_make_forked(g_nostats, &SPEC_NOSTATS) < 0 ||
      fixture_splits(&SPEC, g_split) < 0) {
    fprintf(stderr, "test_serve: %s\n", ce_err_msg());
    check_scratch_remove();
    return 2;
  }
  RUN(test_split_index);
  RUN(test_epoch_order);
  RUN(test_rank_shares);
  RUN(test_chunks);
  RUN(test_stale_slots);
  RUN(test_exact_golden);
  RUN(test_shards_order);
  RUN(test_shards_resume);
  RUN(test_order_request);
  RUN(test_normalisation);
  RUN(test_errors);
  RUN(test_readahead_epochs);
  RUN(test_read_threads);
  RUN(test_damaged_row_threads);
  RUN(test_zero_copy_chunks);
  RUN(test_zero_copy_lifetime);
  RUN(test_zero_copy_rows);
  RUN(test_zero_copy_truncated);
  RUN(test_chunk_pool);
  check_scratch_remove();
  return check_report();
}
