/* evaluate.c - metrics of a model over a dataset split (evaluate.h). */
#include "pipeline/train/evaluate.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/progress.h"
#include "trainer/train.h"

enum { PS_INDEX, PS_MAXREL, PS_ZNCC, PS_SSIM_I, PS_SSIM_R, PS_FIELDS }; /* gathered per sample */

void eval_result_free(eval_result *r) {
  free(r->index);
  free(r->maxrel_ps);
  free(r->zncc_ps);
  free(r->ssim_interior_ps);
  free(r->ssim_reflect_ps);
  free(r->kept_pred);
  free(r->kept_target);
  memset(r, 0, sizeof *r);
}

/* The dataset index of evaluation sample j of n (of a split of N). */
static int64_t eval_sample(const serve_source *src, int64_t j, int64_t n, int64_t N) {
  int64_t k = n == N ? j : (int64_t)((__int128)j * N / n);
  return serve_split_sample(src, k);
}

/* n floats of be's staging memory (nn_backend.host_alloc), NULL with an
 * error naming what */
static float *eval_host(const nn_backend *be, size_t n, const char *what) {
  if (n > SIZE_MAX / sizeof(float)) {
    ce_err("%s: %zu floats do not fit in memory", what, n);
    return NULL;
  }
  float *p = be->host_alloc(sizeof(float) * n);
  if (!p) ce_err_prefix("%s", what);
  return p;
}

/* One batch: forward, loss and metrics on the model's backend into
 * ps[PS_FIELDS * real] (the metrics read the targets the loss uploaded);
 * the prediction is copied out to pred only when pred is not NULL. */
static int eval_batch(coemunet *m, trainer *tr, const stats_norm *norm, const float *in,
                      const float *tg, int real, double *ps, double sums[4], double *fwd_s,
                      double *tmp, float *pred) {
  nn_net *net = &m->net;
  const int F = m->cfg.nfreq, G = m->cfg.grid;
  CE_TRY(nn_input_upload(net, m->input, in));
  double t0 = ce_now();
  CE_TRY(nn_forward(net, 0));
  *fwd_s += ce_now() - t0;
  loss_value lv;
  CE_TRY(trainer_loss(tr, tg, real, &lv));
  if (pred) CE_TRY(nn_out_download(net, m->output, pred));
  double images = (double)real * F;
  sums[0] += lv.total * images;
  sums[1] += lv.mse * images;
  sums[2] += lv.fft * images;
  sums[3] += images;
  CE_TRY(net->be->metrics(norm, nn_out(net, m->output), tr->target, real, F, G, G, tmp));
  for (int s = 0; s < real; s++) {
    ps[s * PS_FIELDS + PS_MAXREL] = tmp[METRICS_MAXREL * real + s];
    ps[s * PS_FIELDS + PS_ZNCC] = tmp[METRICS_ZNCC * real + s];
    ps[s * PS_FIELDS + PS_SSIM_I] = tmp[METRICS_SSIM_I * real + s];
    ps[s * PS_FIELDS + PS_SSIM_R] = tmp[METRICS_SSIM_R * real + s];
  }
  return 0;
}

int evaluate_split(coemunet *m, serve_source *src, const eval_opts *o, eval_result *r) {
  memset(r, 0, sizeof *r);
  int rank, world;
  MPI_Comm_rank(o->comm, &rank);
  MPI_Comm_size(o->comm, &world);
  const stats_norm *norm = serve_norm(src);
  uint32_t ins[4], outs[3];
  serve_shapes(src, ins, outs);
  const int B = o->batch;
  int ok = 1;
  if (!norm) ok = ce_err("the dataset has no /stats group (run `coemu stats` on it)") == 0;
  else if ((int)ins[1] != m->cfg.grid || (int)outs[0] != m->cfg.nfreq)
    ok = ce_err("the dataset has cubes of %u^3 and %u channels, the model takes %d^3 and gives %d",
                ins[1], outs[0], m->cfg.grid, m->cfg.nfreq) == 0;
  else if (B < 1 || o->keep > B)
    ok = ce_err("evaluation batch %d (keep %d): expected batch >= 1 and keep <= batch", B, o->keep) == 0;
  if (!ok) return -1;
  const int64_t N = (int64_t)serve_split_size(src);
  const int64_t n = o->max_samples > 0 && o->max_samples < N ? o->max_samples : N;
  const int64_t nb = (n + B - 1) / B;
  const size_t iv = (size_t)ins[0] * ins[1] * ins[2] * ins[3], ov = (size_t)outs[0] * outs[1] * outs[2];
  double t_start = ce_now();
  CE_TRY(nn_set_batch(&m->net, B));
  trainer tr; /* the loss, on the model's backend */
  const int tr_ok = trainer_init(&tr, m, NULL) == 0;
  /* the batches the backend uploads from: page-locked on a device (its
   * host_alloc), so that each upload is one DMA at the bus's rate rather
   * than the driver staging pageable memory (~5 GB/s on the H200 host:
   * docs/trainer.md, "What the inference figure measured") */
  const nn_backend *be = m->net.be;
  float *in = eval_host(be, (size_t)B * iv, "evaluation inputs");
  float *tg = eval_host(be, (size_t)B * ov, "evaluation targets");
  float *pred = ce_malloc_array((size_t)B * ov, sizeof(float), "evaluation predictions");
  int64_t mine = 0;
  for (int64_t b = rank; b < nb; b += world) mine += (b + 1) * B <= n ? B : n - b * B;
  double *ps = ce_malloc_array((size_t)(mine ? mine : 1) * PS_FIELDS, sizeof(double), "per-sample metrics");
  double *tmp = ce_malloc_array(METRICS_FIELDS * (size_t)B, sizeof(double), "metric buffers");
  int64_t idx[4096];
  double sums[4] = {0, 0, 0, 0}, fwd_s = 0;
  int rc = tr_ok && in && tg && pred && ps && tmp && B <= 4096 ? 0 : -1;
  if (B > 4096) ce_err("evaluation batch %d, expected at most 4096", B);
  int64_t at = 0;
  for (int64_t b = rank; rc == 0 && b < nb; b += world) {
    int real = (b + 1) * B <= n ? B : (int)(n - b * B);
    for (int s = 0; s < B; s++) idx[s] = eval_sample(src, b * B + (s < real ? s : 0), n, N);
    rc = serve_read(src, idx, B, 1, in, tg);
    if (rc == 0)
      rc = eval_batch(m, &tr, norm, in, tg, real, ps + at * PS_FIELDS, sums, &fwd_s, tmp,
                      b == 0 && o->keep > 0 ? pred : NULL);
    for (int s = 0; rc == 0 && s < real; s++) ps[(at + s) * PS_FIELDS + PS_INDEX] = (double)(b * B + s);
    if (rc == 0 && b == 0 && o->keep > 0) { /* rank 0 holds batch 0 */
      r->kept = o->keep < real ? o->keep : real;
      r->kept_pred = malloc(sizeof(float) * ov * (size_t)r->kept);
      r->kept_target = malloc(sizeof(float) * ov * (size_t)r->kept);
      if (!r->kept_pred || !r->kept_target) rc = ce_err("out of memory for the kept samples");
      else {
        memcpy(r->kept_pred, pred, sizeof(float) * ov * (size_t)r->kept);
        memcpy(r->kept_target, tg, sizeof(float) * ov * (size_t)r->kept);
      }
    }
    at += real;
  }
  trainer_free(&tr);
  be->host_free(in);
  be->host_free(tg);
  free(pred);
  free(tmp);
  /* every rank learns whether all succeeded before the collectives below */
  int bad = rc < 0, any_bad = 0;
  MPI_Allreduce(&bad, &any_bad, 1, MPI_INT, MPI_MAX, o->comm);
  if (any_bad) {
    free(ps);
    eval_result_free(r);
    return bad ? -1 : ce_err(EVAL_PEER_FAILED);
  }
  double tot[5], loc[5] = {sums[0], sums[1], sums[2], sums[3], mine ? 1e3 * fwd_s / (double)mine : 0};
  MPI_Allreduce(loc, tot, 5, MPI_DOUBLE, MPI_SUM, o->comm);
  int cnt = (int)(mine * PS_FIELDS), *counts = NULL, *displs = NULL;
  double *all = NULL;
  if (rank == 0) {
    counts = malloc(sizeof(int) * (size_t)world);
    displs = malloc(sizeof(int) * (size_t)world);
    all = ce_malloc_array((size_t)n * PS_FIELDS, sizeof(double), "gathered metrics");
  }
  MPI_Gather(&cnt, 1, MPI_INT, counts, 1, MPI_INT, 0, o->comm);
  if (rank == 0)
    for (int i = 0, d = 0; i < world; i++) displs[i] = d, d += counts[i];
  MPI_Gatherv(ps, cnt, MPI_DOUBLE, all, counts, displs, MPI_DOUBLE, 0, o->comm);
  free(ps);
  free(counts);
  free(displs);
  r->n = n;
  r->loss = tot[0] / tot[3];
  r->mse = tot[1] / tot[3];
  r->fft = tot[2] / tot[3];
  r->infer_ms = tot[4] / world;
  if (rank == 0) {
    r->index = malloc(sizeof(int64_t) * (size_t)n);
    r->maxrel_ps = malloc(sizeof(double) * (size_t)n);
    r->zncc_ps = malloc(sizeof(double) * (size_t)n);
    r->ssim_interior_ps = malloc(sizeof(double) * (size_t)n);
    r->ssim_reflect_ps = malloc(sizeof(double) * (size_t)n);
    if (!all || !r->index || !r->maxrel_ps || !r->zncc_ps || !r->ssim_interior_ps ||
        !r->ssim_reflect_ps) {
      free(all);
      eval_result_free(r);
      CE_FAIL("out of memory for %lld per-sample metrics", (long long)n);
    }
    double zs = 0, si = 0, sr = 0;
    for (int64_t k = 0; k < n; k++) { /* back into sample order */
      const double *e = all + k * PS_FIELDS;
      int64_t j = (int64_t)e[PS_INDEX];
      r->index[j] = eval_sample(src, j, n, N);
      r->maxrel_ps[j] = e[PS_MAXREL];
      r->zncc_ps[j] = e[PS_ZNCC];
      r->ssim_interior_ps[j] = e[PS_SSIM_I];
      r->ssim_reflect_ps[j] = e[PS_SSIM_R];
    }
    for (int64_t j = 0; j < n; j++)
      zs += r->zncc_ps[j], si += r->ssim_interior_ps[j], sr += r->ssim_reflect_ps[j];
    r->zncc = zs / (double)n;
    r->ssim_interior = si / (double)n;
    r->ssim_reflect = sr / (double)n;
    free(all);
    if (metrics_summarise(r->maxrel_ps, (int)n, &r->maxrel) < 0) {
      eval_result_free(r);
      return -1;
    }
  }
  r->seconds = ce_now() - t_start;
  return 0;
}
