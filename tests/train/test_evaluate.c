/* test_evaluate.c - pipeline/train/evaluate.c linked directly: a tiny
 * untrained COEmuNet (16^3 cubes, 3 channels) on the validation split of a
 * small dataset (tests/dataset_fixture.h). Run with 1 and 2 MPI ranks.
 *   - the per-sample MaxRel and ZNCC equal trainer/metrics.h applied to the
 *     model's own outputs, computed here one sample at a time; SSIM equals
 *     metrics_ssim over each evaluation batch (its data range is per batch,
 *     as evaluate.h documents), including a padded last batch;
 *   - the samples are the split in ascending order; max_samples takes
 *     floor(j N / max) evenly spaced, with the same per-sample figures;
 *   - kept predictions and targets are those of the first samples;
 *   - the summary is metrics_summarise of the per-sample MaxRel, the loss
 *     0.8 MSE + 0.2 FFT;
 *   - MaxRel and ZNCC per sample do not depend on the evaluation batch (the
 *     forward pass in evaluation mode treats samples independently; see
 *     check_batch_invariance for how exactly), SSIM does (per-batch range);
 *   - 2 ranks give exactly the per-sample figures of 1 rank (MPI_COMM_SELF
 *     on rank 0), the loss up to the order of the allreduce sum;
 *   - errors: model and data disagree, keep > batch, no /stats.
 */
#include <mpi.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "dataset_fixture.h"
#include "pipeline/serve/serve.h"
#include "pipeline/train/evaluate.h"
#include "trainer/coemunet.h"
#include "trainer/metrics.h"
#include "trainer/nn.h"

/* 12 models x 4 directions: 3 validation models = 12 samples */
static const fixture_spec SPEC = {.models = 12, .directions = 4, .n = 16, .nf = 3,
                                  .samples_per_shard = 16, .stats = 1};
static const fixture_spec SPEC_NOSTATS = {.models = 4, .directions = 2, .n = 16, .nf = 3,
                                          .samples_per_shard = 8, .stats = 0};
static int g_rank, g_world;
static char g_dir[1100], g_nostats[1100];
static coemunet g_model;
static serve_source *g_val;
static int64_t N; /* validation samples */
static size_t IV, OV;
static const int F = 3, G = 16;

/* Per-sample figures computed here, for every validation sample. */
static double *g_maxrel, *g_zncc;
static float *g_pred; /* N x OV, forward one sample at a time */

static coemunet_config tiny(int grid) {
  coemunet_config c = {3, grid, 2, {4, 4, 8}, 32, 16, COEMUNET_SHORTCUT_REFERENCE};
  return c;
}

/* The model's outputs for dataset samples idx[0..n) (one forward pass of
 * batch n, evaluation mode) into pred (n x OV); targets into tg. */
static int forward(const int64_t *idx, int n, float *pred, float *tg) {
  CE_TRY(nn_set_batch(&g_model.net, n));
  float *x = malloc(sizeof(float) * IV * (size_t)n);
  int rc = x ? 0 : ce_err("out of memory");
  /* the net's tensors are backend memory: in and out through upload/download */
  if (rc == 0) rc = serve_read(g_val, idx, n, 1, x, tg);
  if (rc == 0) rc = nn_input_upload(&g_model.net, g_model.input, x);
  if (rc == 0) rc = nn_forward(&g_model.net, 0);
  if (rc == 0) rc = nn_out_download(&g_model.net, g_model.output, pred);
  free(x);
  return rc;
}

static void reference(void) {
  g_maxrel = malloc(sizeof(double) * (size_t)N);
  g_zncc = malloc(sizeof(double) * (size_t)N);
  g_pred = malloc(sizeof(float) * OV * (size_t)N);
  float *tg = malloc(sizeof(float) * OV);
  for (int64_t j = 0; j < N; j++) {
    int64_t idx = serve_split_sample(g_val, j);
    CHECK_OK(forward(&idx, 1, g_pred + (size_t)j * OV, tg));
    CHECK_OK(metrics_maxrel(g_pred + (size_t)j * OV, tg, 1, F, G, G, metrics_stats_inverse,
                            serve_norm(g_val), &g_maxrel[j]));
    metrics_zncc(g_pred + (size_t)j * OV, tg, 1, F, G, G, &g_zncc[j]);
  }
  free(tg);
}

static int evaluate(MPI_Comm comm, int batch, int64_t max, int keep, eval_result *r) {
  eval_opts o = {comm, batch, max, keep};
  ce_err_clear();
  int rc = evaluate_split(&g_model, g_val, &o, r);
  CHECK_MSG(rc == 0, "evaluate_split(batch %d, max %lld): %s", batch, (long long)max, ce_err_msg());
  return rc;
}

/* SSIM of eval samples [j0, j0+real) as one batch, computed here. */
static void batch_ssim(int64_t j0, int real, double *si, double *sr) {
  float *pred = malloc(sizeof(float) * OV * (size_t)real), *tg = malloc(sizeof(float) * OV * (size_t)real);
  int64_t idx[64];
  for (int s = 0; s < real; s++) idx[s] = serve_split_sample(g_val, j0 + s);
  CHECK_OK(forward(idx, real, pred, tg));
  metrics_ssim(pred, tg, real, F, G, G, SSIM_INTERIOR, si);
  metrics_ssim(pred, tg, real, F, G, G, SSIM_REFLECT, sr);
  free(pred);
  free(tg);
}

static void test_per_sample(void) {
  for (int bi = 0; bi < 2; bi++) {
    const int B = bi ? 5 : 4; /* 12 = 4+4+4 and 5+5+2 (a padded last batch) */
    eval_result r;
    if (evaluate(MPI_COMM_WORLD, B, 0, 3, &r) < 0) continue;
    CHECK(r.n == N);
    if (g_rank == 0) {
      double si[64], sr[64];
      for (int64_t j0 = 0; j0 < N; j0 += B) {
        int real = (int)(j0 + B <= N ? B : N - j0);
        batch_ssim(j0, real, si + j0, sr + j0);
      }
      int bad = 0;
      for (int64_t j = 0; j < N; j++) {
        CHECK(r.index[j] == serve_split_sample(g_val, j));
        bad += r.maxrel_ps[j] != g_maxrel[j] || r.zncc_ps[j] != g_zncc[j];
        bad += r.ssim_interior_ps[j] != si[j] || r.ssim_reflect_ps[j] != sr[j];
        CHECK_CLOSE(r.maxrel_ps[j], g_maxrel[j], 1e-5, 0);
        CHECK_CLOSE(r.zncc_ps[j], g_zncc[j], 1e-5, 1e-6);
        CHECK_CLOSE(r.ssim_interior_ps[j], si[j], 1e-5, 1e-6);
        CHECK_CLOSE(r.ssim_reflect_ps[j], sr[j], 1e-5, 1e-6);
      }
      /* bit for bit: the forward pass of this backend treats samples alike at any batch */
      CHECK_MSG(bad == 0, "batch %d: %d per-sample figures differ in the last bits from the "
                          "direct computation", B, bad);
      CHECK(r.ssim_interior_ps[0] > -1 && r.ssim_interior_ps[0] < 1);
      /* kept: the first samples' targets and predictions */
      CHECK(r.kept == 3);
      float *tg = malloc(sizeof(float) * OV * 3);
      int64_t idx[3] = {serve_split_sample(g_val, 0), serve_split_sample(g_val, 1),
                        serve_split_sample(g_val, 2)};
      float *in = malloc(sizeof(float) * IV * 3);
      CHECK_OK(serve_read(g_val, idx, 3, 1, in, tg));
      CHECK(r.kept_target && !memcmp(r.kept_target, tg, sizeof(float) * OV * 3));
      double worst = 0;
      for (size_t v = 0; r.kept_pred && v < 3 * OV; v++)
        worst = fmax(worst, fabs((double)r.kept_pred[v] - g_pred[v]));
      CHECK_MSG(r.kept_pred && worst < 1e-5, "kept predictions off by %.3g", worst);
      free(tg);
      free(in);
      /* the summaries */
      metrics_summary s;
      CHECK_OK(metrics_summarise(r.maxrel_ps, (int)N, &s));
      CHECK(!memcmp(&s, &r.maxrel, sizeof s));
      double z = 0;
      for (int64_t j = 0; j < N; j++) z += r.zncc_ps[j];
      CHECK_CLOSE(r.zncc, z / (double)N, 1e-15, 0);
    } else
      CHECK(r.index == NULL && r.maxrel_ps == NULL && r.kept == 0);
    CHECK(isfinite(r.loss) && r.loss > 0 && r.mse > 0 && r.fft > 0);
    CHECK_CLOSE(r.loss, 0.8 * r.mse + 0.2 * r.fft, 1e-12, 0);
    CHECK(r.infer_ms > 0 && r.seconds > 0);
    eval_result_free(&r);
  }
}

static void test_max_samples(void) {
  const int64_t maxes[3] = {5, 7, 100};
  for (int t = 0; t < 3; t++) {
    eval_result r;
    if (evaluate(MPI_COMM_WORLD, 2, maxes[t], 0, &r) < 0) continue;
    int64_t n = maxes[t] < N ? maxes[t] : N;
    CHECK(r.n == n);
    if (g_rank == 0) {
      for (int64_t j = 0; j < n; j++) {
        int64_t k = j * N / n; /* evenly spaced over the split */
        CHECK_MSG(r.index[j] == serve_split_sample(g_val, k), "max %lld: sample %lld is %lld, "
                  "expected split sample %lld", (long long)maxes[t], (long long)j,
                  (long long)r.index[j], (long long)k);
        CHECK(r.maxrel_ps[j] == g_maxrel[k] && r.zncc_ps[j] == g_zncc[k]);
      }
      if (maxes[t] == 5) { /* 0, 2, 4, 7, 9 */
        CHECK(r.index[1] == serve_split_sample(g_val, 2) && r.index[3] == serve_split_sample(g_val, 7));
      }
    }
    eval_result_free(&r);
  }
}

/* MaxRel and ZNCC per sample are the same at every evaluation batch size.
 * They are compared bit for bit: in evaluation mode BatchNorm uses its
 * running statistics, so a sample's output depends only on that sample, and
 * the CPU backend (trainer/layers_cpu.c) convolves one sample at a time and
 * its linear layers' sgemm sums each output over the inputs in the same
 * order whatever the number of rows (checked against the one-sample forward
 * passes of reference()). A backend that reorders sums with the batch would
 * change the last bits: a relative tolerance of ~1e-5 would then be the
 * check (test_per_sample has both). SSIM's
 * data range is per evaluation batch, so SSIM changes with the batch (and
 * equals metrics_ssim over all N samples when the batch holds them all). The
 * loss is a mean of per-batch means weighted by images: equal up to the
 * order of the summation. */
static void check_batch_invariance(void) {
  const int batches[4] = {1, 3, 4, 12};
  eval_result r[4];
  int ok[4];
  for (int t = 0; t < 4; t++) ok[t] = evaluate(MPI_COMM_WORLD, batches[t], 0, 0, &r[t]) == 0;
  for (int t = 0; t < 4; t++) {
    if (!ok[t] || !ok[0]) continue;
    CHECK_CLOSE(r[t].loss, r[0].loss, 1e-6, 0);
    if (g_rank != 0) continue;
    CHECK_MSG(!memcmp(r[t].maxrel_ps, g_maxrel, sizeof(double) * (size_t)N) &&
                  !memcmp(r[t].zncc_ps, g_zncc, sizeof(double) * (size_t)N),
              "batch %d: MaxRel or ZNCC per sample depends on the batch", batches[t]);
  }
  if (g_rank == 0 && ok[3] && ok[2]) {
    double si[64], sr[64];
    batch_ssim(0, (int)N, si, sr);
    CHECK(!memcmp(r[3].ssim_interior_ps, si, sizeof(double) * (size_t)N));
    CHECK(!memcmp(r[3].ssim_reflect_ps, sr, sizeof(double) * (size_t)N));
    CHECK_MSG(memcmp(r[3].ssim_interior_ps, r[2].ssim_interior_ps, sizeof(double) * (size_t)N),
              "SSIM at batch 12 and 4 agree: the per-batch data range is not in use");
  }
  for (int t = 0; t < 4; t++)
    if (ok[t]) eval_result_free(&r[t]);
}

/* 2 ranks give the figures of 1 rank. */
static void test_ranks(void) {
  if (g_world == 1) return;
  eval_result one, all;
  int ok1 = g_rank == 0 ? evaluate(MPI_COMM_SELF, 2, 0, 2, &one) == 0 : 1;
  MPI_Barrier(MPI_COMM_WORLD);
  if (evaluate(MPI_COMM_WORLD, 2, 0, 2, &all) < 0) return;
  if (g_rank == 0 && ok1) {
    CHECK(one.n == all.n);
    const double *a[5] = {one.maxrel_ps, one.zncc_ps, one.ssim_interior_ps, one.ssim_reflect_ps},
                 *b[5] = {all.maxrel_ps, all.zncc_ps, all.ssim_interior_ps, all.ssim_reflect_ps};
    for (int k = 0; k < 4; k++) CHECK(!memcmp(a[k], b[k], sizeof(double) * (size_t)N));
    CHECK(!memcmp(one.index, all.index, sizeof(int64_t) * (size_t)N));
    CHECK(!memcmp(&one.maxrel, &all.maxrel, sizeof one.maxrel));
    CHECK(one.zncc == all.zncc && one.ssim_interior == all.ssim_interior);
    CHECK(one.kept == 2 && all.kept == 2 &&
          !memcmp(one.kept_pred, all.kept_pred, sizeof(float) * OV * 2));
    CHECK_CLOSE(all.loss, one.loss, 1e-13, 0);
    CHECK_CLOSE(all.mse, one.mse, 1e-13, 0);
    eval_result_free(&one);
  }
  eval_result_free(&all);
}

static void test_errors(void) {
  eval_result r;
  eval_opts o = {MPI_COMM_WORLD, 4, 0, 5};
  CHECK_ERR(evaluate_split(&g_model, g_val, &o, &r), "keep 5");
  o.keep = 0;
  o.batch = 0;
  CHECK_ERR(evaluate_split(&g_model, g_val, &o, &r), "evaluation batch 0");
  o.batch = 4;
  coemunet big;
  coemunet_config c = tiny(24);
  CHECK_OK(coemunet_build(&big, &c, 1));
  CHECK_ERR(evaluate_split(&big, g_val, &o, &r), "cubes of 16^3 and 3 channels, the model takes 24^3");
  coemunet_free(&big);
  serve_opts so = {.dataset_dir = g_nostats, .split = "all", .world = 1, .batch = 4, .drop_last = 0};
  serve_source *ns = NULL;
  CHECK_OK(serve_open(&so, &ns));
  if (ns) {
    CHECK_ERR(evaluate_split(&g_model, ns, &o, &r), "no /stats group");
    serve_close(ns);
  }
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_world);
  char tmp[1024] = "";
  if (g_rank == 0) snprintf(tmp, sizeof tmp, "%s", check_scratch("evaluate"));
  MPI_Bcast(tmp, sizeof tmp, MPI_CHAR, 0, MPI_COMM_WORLD);
  snprintf(g_dir, sizeof g_dir, "%s/ds", tmp);
  snprintf(g_nostats, sizeof g_nostats, "%s/nostats", tmp);
  IV = fixture_in_vals(&SPEC);
  OV = fixture_out_vals(&SPEC);
  coemunet_config cfg = tiny(16);
  serve_opts so = {.dataset_dir = g_dir, .split = "validation", .world = 1, .batch = 4,
                   .drop_last = 0, .prefetch = 1};
  if (nn_backend_init(&nn_backend_cpu, 1) < 0 || fixture_make(g_dir, &SPEC) < 0 ||
      fixture_make(g_nostats, &SPEC_NOSTATS) < 0 || coemunet_build(&g_model, &cfg, 17) < 0 || serve_open(&so, &g_val) < 0) {
    fprintf(stderr, "test_evaluate: rank %d: %s\n", g_rank, ce_err_msg());
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  N = (int64_t)serve_split_size(g_val);
  if (N != 12) {
    fprintf(stderr, "test_evaluate: %lld validation samples, expected 12\n", (long long)N);
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  RUN(reference);
  RUN(test_per_sample);
  RUN(test_max_samples);
  RUN(check_batch_invariance);
  RUN(test_ranks);
  RUN(test_errors);
  free(g_maxrel);
  free(g_zncc);
  free(g_pred);
  serve_close(g_val);
  coemunet_free(&g_model);
  nn_backend_finish(&nn_backend_cpu);
  MPI_Barrier(MPI_COMM_WORLD);
  if (g_rank == 0) check_scratch_remove();
  int failed = check_report(), any = 0;
  MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return any;
}
