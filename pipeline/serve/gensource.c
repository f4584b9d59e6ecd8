/* gensource.c - samples made on the fly by MPI producer ranks (gensource.h). */
#include "pipeline/serve/gensource.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/checksum.h"
#include "common/error.h"
#include "common/progress.h"
#include "pipeline/dataset/h5util.h"
#include "stats/statsfile.h"

enum { TAG_TASK = 7301, TAG_RESULT = 7302, TAG_ERROR = 7303 };
#define GENSRC_ERR_MAX 1024
#define FRESH_ID_SEED 0x6672657368ull /* "fresh": the id of a fresh-views stream */

struct gensrc {
  gensrc_opts o;
  serve_external ext;
  int64_t *split;
  uint8_t *msplit; /* the split of every model */
  stats_norm norm;
  char info[8192];
  int rank, P;
  size_t in_vals, out_vals;
  float **rbuf;   /* per rank: its results */
  size_t *rcap;   /* bytes */
  int64_t **task; /* per rank: [len, epoch, idx...] */
  int64_t *order; /* scratch: positions sorted by model */
  int broken;     /* a rank failed to answer: every later read fails */
  char broken_msg[GENSRC_ERR_MAX];
  int64_t made;
  double secs;
};

/* The direction index the sampler is given for dataset sample idx in epoch. */
static int64_t view_of(const job *j, const uint8_t *msplit, int fresh, uint32_t epoch, int64_t idx) {
  int64_t D = j->directions, model = idx / D, d = idx % D;
  if (fresh && msplit[model] == SPLIT_TRAIN) return (int64_t)epoch * D + d;
  return d;
}

static int make_one(const gensrc_opts *o, const uint8_t *msplit, uint32_t epoch, int64_t idx,
                    float *in, float *tg, int64_t *made, double *secs) {
  const job *j = o->j;
  int64_t view = view_of(j, msplit, o->fresh_views, epoch, idx);
  if (view > (int64_t)UINT32_MAX)
    CE_FAIL("%s: fresh views: epoch %u x %lld directions is past the sampler's 2^32 direction "
            "indices", j->path, epoch, (long long)j->directions);
  double t0 = ce_now();
  int rc = o->sample(o->ctx, idx / j->directions, view, in, tg);
  *secs += ce_now() - t0;
  if (rc < 0)
    return ce_err_prefix("sample %lld (model %lld, direction %lld)", (long long)idx,
                         (long long)(idx / j->directions), (long long)(idx % j->directions));
  (*made)++;
  return 0;
}

static uint8_t *model_splits(const job *j) {
  uint8_t *m = ce_malloc_array((size_t)(j->n_models ? j->n_models : 1), 1, "model splits");
  if (m && job_model_splits(j, m) < 0) {
    free(m);
    return NULL;
  }
  return m;
}

/* JSON string body of text (quotes and backslashes escaped, controls dropped). */
static void json_str(const char *text, char *buf, size_t len) {
  size_t k = 0;
  for (const char *p = text; *p && k + 3 < len; p++) {
    if (*p == '"' || *p == '\\') buf[k++] = '\\';
    if ((unsigned char)*p >= 0x20) buf[k++] = *p;
  }
  buf[k] = 0;
}

int gensrc_open(const gensrc_opts *o, gensrc **out) {
  const job *j = o->j;
  if (j->skip_bad_models)
    CE_FAIL("%s: inputs.on_bad_model is skip: which samples a stored dataset of this job holds "
            "is known only once it is made, so it cannot be streamed on the fly (use fail)",
            j->path);
  gensrc *g = calloc(1, sizeof *g);
  if (!g) CE_FAIL("out of memory");
  g->o = *o;
  MPI_Comm_rank(o->comm, &g->rank);
  MPI_Comm_size(o->comm, &g->P);
  if (g->o.timeout_s <= 0) g->o.timeout_s = 600;
  int want;
  const char *sp = o->split ? o->split : "train";
  int64_t M = job_samples(j);
  g->in_vals = 3 * (size_t)j->n * j->n * j->n;
  g->out_vals = (size_t)j->nf * j->n * j->n;
  if (job_split_parse(sp, &want) < 0 || !(g->msplit = model_splits(j))) goto fail;
  g->split = ce_malloc_array((size_t)(M ? M : 1), sizeof(int64_t), "split index");
  g->order = ce_malloc_array(4096, sizeof(int64_t), "chunk order");
  g->rbuf = calloc((size_t)g->P, sizeof *g->rbuf);
  g->rcap = calloc((size_t)g->P, sizeof *g->rcap);
  g->task = calloc((size_t)g->P, sizeof *g->task);
  if (!g->split || !g->order || !g->rbuf || !g->rcap || !g->task) {
    ce_err("out of memory");
    goto fail;
  }
  for (int r = 0; r < g->P; r++)
    if (!(g->task[r] = malloc(sizeof(int64_t) * (2 + 4096)))) {
      ce_err("out of memory");
      goto fail;
    }
  int64_t ns = 0;
  for (int64_t i = 0; i < M; i++)
    if (want < 0 || g->msplit[i / j->directions] == want) g->split[ns++] = i;
  const char *norm_src = "null";
  char norm_buf[4200 + 32];
  if (o->stats_dataset) {
    char h5[4200], esc[4096];
    snprintf(h5, sizeof h5, "%s/dataset.h5", o->stats_dataset);
    h5_lock();
    int rc = stats_file_read_norm(h5, &g->norm);
    h5_unlock();
    if (rc < 0) {
      ce_err_prefix("--stats %s: the pilot dataset's /stats", o->stats_dataset);
      goto fail;
    }
    json_str(o->stats_dataset, esc, sizeof esc);
    snprintf(norm_buf, sizeof norm_buf, "\"pilot dataset %s\"", esc);
    norm_src = norm_buf;
  }
  char jesc[1024];
  json_str(j->path, jesc, sizeof jesc);
  snprintf(g->info, sizeof g->info,
           ", \"source\": \"generate\", \"job\": \"%s\", \"fresh_views\": %s, \"producers\": %d, "
           "\"normalisation_source\": %s",
           jesc, o->fresh_views ? "true" : "false", g->P, norm_src);
  g->ext = (serve_external){.read = gensrc_read, .ctx = g, .name = j->path, .samples = M,
                            .split = g->split, .nsplit = ns, .per_shard = j->samples_per_shard,
                            .in_shape = {3, (uint32_t)j->n, (uint32_t)j->n, (uint32_t)j->n},
                            .out_shape = {(uint32_t)j->nf, (uint32_t)j->n, (uint32_t)j->n},
                            .dataset_id = ce_xxh64(j->text, j->text_len,
                                                   o->fresh_views ? FRESH_ID_SEED : 0),
                            .norm = o->stats_dataset ? &g->norm : NULL, .info_extra = g->info};
  *out = g;
  return 0;
fail:
  gensrc_close(g, NULL);
  return -1;
}

const serve_external *gensrc_external(const gensrc *g) { return &g->ext; }

static const job *g_sort_job;
static const int64_t *g_sort_idx;
static int by_model(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  int64_t mx = g_sort_idx[x] / g_sort_job->directions, my = g_sort_idx[y] / g_sort_job->directions;
  return mx < my ? -1 : mx > my ? 1 : (x > y) - (x < y);
}

static void pause_us(long us) {
  struct timespec ts = {0, us * 1000L};
  nanosleep(&ts, NULL);
}

int gensrc_read(void *vg, uint32_t epoch, const int64_t *idx, int n, float *inputs,
                float *targets) {
  gensrc *g = vg;
  if (g->broken) CE_FAIL("%s", g->broken_msg);
  if (n > 4096) CE_FAIL("gensource: %d samples in one chunk (at most 4096)", n);
  const size_t per = (g->in_vals + g->out_vals) * sizeof(float);
  /* positions sorted by model, cut into P runs */
  for (int k = 0; k < n; k++) g->order[k] = k;
  g_sort_job = g->o.j, g_sort_idx = idx;
  qsort(g->order, (size_t)n, sizeof *g->order, by_model);
  MPI_Request *req = calloc((size_t)g->P, sizeof *req);
  if (!req) CE_FAIL("out of memory");
  for (int r = 0; r < g->P; r++) req[r] = MPI_REQUEST_NULL;
  int rc = 0;
  for (int r = 1; r < g->P && rc == 0; r++) {
    int lo = (int)((int64_t)n * r / g->P), hi = (int)((int64_t)n * (r + 1) / g->P);
    if (hi <= lo) continue;
    size_t need = (size_t)(hi - lo) * per;
    if (need < GENSRC_ERR_MAX) need = GENSRC_ERR_MAX;
    if (need > g->rcap[r]) {
      free(g->rbuf[r]);
      g->rbuf[r] = malloc(need);
      g->rcap[r] = g->rbuf[r] ? need : 0;
      if (!g->rbuf[r]) {
        rc = ce_err("out of memory for rank %d's samples", r);
        break;
      }
    }
    int64_t *t = g->task[r];
    t[0] = hi - lo, t[1] = epoch;
    for (int k = lo; k < hi; k++) t[2 + k - lo] = idx[g->order[k]];
    if (MPI_Irecv(g->rbuf[r], (int)need, MPI_BYTE, r, MPI_ANY_TAG, g->o.comm, &req[r]) !=
            MPI_SUCCESS ||
        MPI_Send(t, 2 + hi - lo, MPI_INT64_T, r, TAG_TASK, g->o.comm) != MPI_SUCCESS)
      rc = ce_err("cannot send work to producer rank %d", r);
  }
  /* rank 0's own run, meanwhile */
  int hi0 = (int)((int64_t)n / g->P);
  for (int k = 0; k < hi0 && rc == 0; k++) {
    int at = (int)g->order[k];
    rc = make_one(&g->o, g->msplit, epoch, idx[at], inputs + (size_t)at * g->in_vals,
                  targets + (size_t)at * g->out_vals, &g->made, &g->secs);
  }
  double t0 = ce_now();
  for (int r = 1; r < g->P; r++) {
    if (req[r] == MPI_REQUEST_NULL) continue;
    MPI_Status st;
    int done = 0;
    while (!done) {
      MPI_Test(&req[r], &done, &st);
      if (done) break;
      if (ce_now() - t0 > g->o.timeout_s) break;
      pause_us(200);
    }
    if (!done) {
      MPI_Cancel(&req[r]);
      g->broken = 1;
      snprintf(g->broken_msg, sizeof g->broken_msg,
               "producer rank %d of %d did not return its samples within %g s (has it died?): "
               "the stream cannot go on without it",
               r, g->P, g->o.timeout_s);
      if (rc == 0) rc = ce_err("%s", g->broken_msg);
      continue;
    }
    if (st.MPI_TAG == TAG_ERROR) {
      char *msg = (char *)g->rbuf[r];
      int len = 0;
      MPI_Get_count(&st, MPI_BYTE, &len);
      msg[len > 0 && len < GENSRC_ERR_MAX ? len - 1 : GENSRC_ERR_MAX - 1] = 0;
      if (rc == 0) rc = ce_err("producer rank %d: %s", r, msg);
      continue;
    }
    if (rc < 0) continue;
    int lo = (int)((int64_t)n * r / g->P), hi = (int)((int64_t)n * (r + 1) / g->P);
    for (int k = lo; k < hi; k++) {
      int at = (int)g->order[k];
      const float *src = g->rbuf[r] + (size_t)(k - lo) * (g->in_vals + g->out_vals);
      memcpy(inputs + (size_t)at * g->in_vals, src, g->in_vals * sizeof(float));
      memcpy(targets + (size_t)at * g->out_vals, src + g->in_vals, g->out_vals * sizeof(float));
    }
  }
  free(req);
  return rc;
}

int gensrc_worker(const gensrc_opts *o) {
  const job *j = o->j;
  const size_t in_vals = 3 * (size_t)j->n * j->n * j->n, out_vals = (size_t)j->nf * j->n * j->n;
  uint8_t *msplit = model_splits(j);
  int64_t *task = malloc(sizeof(int64_t) * (2 + 4096));
  float *buf = NULL;
  size_t cap = 0;
  int64_t made = 0;
  double secs = 0;
  int rc = msplit && task ? 0 : -1, failed = rc;
  for (;;) {
    MPI_Status st;
    int count = 0;
    /* wait for work without spinning a core (MPI_Probe busy-polls in
     * Open MPI): a waiting rank would take CPU from the producing ones */
    int flag = 0;
    long nap = 50;
    while (!flag) {
      MPI_Iprobe(0, TAG_TASK, o->comm, &flag, &st);
      if (!flag) {
        pause_us(nap);
        if (nap < 2000) nap *= 2;
      }
    }
    MPI_Get_count(&st, MPI_INT64_T, &count);
    if (count < 1 || count > 2 + 4096 || !task) {
      MPI_Recv(NULL, 0, MPI_INT64_T, 0, TAG_TASK, o->comm, MPI_STATUS_IGNORE);
      break;
    }
    MPI_Recv(task, count, MPI_INT64_T, 0, TAG_TASK, o->comm, MPI_STATUS_IGNORE);
    int64_t n = task[0];
    if (n < 0) break; /* stop */
    size_t need = (size_t)n * (in_vals + out_vals) * sizeof(float);
    if (need > cap) {
      free(buf);
      buf = malloc(need);
      cap = buf ? need : 0;
    }
    rc = buf && msplit ? 0 : ce_err("producer rank: out of memory");
    for (int64_t k = 0; k < n && rc == 0; k++) {
      float *in = buf + (size_t)k * (in_vals + out_vals);
      rc = make_one(o, msplit, (uint32_t)task[1], task[2 + k], in, in + in_vals, &made, &secs);
    }
    if (rc < 0) {
      char msg[GENSRC_ERR_MAX];
      snprintf(msg, sizeof msg, "%s", ce_err_msg());
      MPI_Send(msg, (int)strlen(msg) + 1, MPI_BYTE, 0, TAG_ERROR, o->comm);
      failed = -1;
    } else {
      MPI_Send(buf, (int)need, MPI_BYTE, 0, TAG_RESULT, o->comm);
    }
  }
  /* the final counters (gensrc_close) */
  int64_t loads = 0, hits = 0;
  size_t peak = 0;
  if (o->counters) o->counters(o->ctx, &loads, &hits, &peak);
  int64_t iv[3] = {made, loads, hits}, isum[3];
  uint64_t pk = peak, pmax;
  MPI_Reduce(iv, isum, 3, MPI_INT64_T, MPI_SUM, 0, o->comm);
  MPI_Reduce(&secs, NULL, 1, MPI_DOUBLE, MPI_SUM, 0, o->comm);
  MPI_Reduce(&pk, &pmax, 1, MPI_UINT64_T, MPI_MAX, 0, o->comm);
  free(buf);
  free(task);
  free(msplit);
  return failed;
}

void gensrc_close(gensrc *g, gensrc_stats *st) {
  if (!g) return;
  if (g->broken) { /* a rank that does not answer cannot take part in a collective */
    if (st) *st = (gensrc_stats){.ranks = -1};
    goto done;
  }
  int64_t stop[2] = {-1, 0};
  for (int r = 1; r < g->P; r++) MPI_Send(stop, 2, MPI_INT64_T, r, TAG_TASK, g->o.comm);
  int64_t loads = 0, hits = 0;
  size_t peak = 0;
  if (g->o.counters) g->o.counters(g->o.ctx, &loads, &hits, &peak);
  int64_t iv[3] = {g->made, loads, hits}, isum[3];
  double secs = 0;
  uint64_t pk = peak, pmax = 0;
  MPI_Reduce(iv, isum, 3, MPI_INT64_T, MPI_SUM, 0, g->o.comm);
  MPI_Reduce(&g->secs, &secs, 1, MPI_DOUBLE, MPI_SUM, 0, g->o.comm);
  MPI_Reduce(&pk, &pmax, 1, MPI_UINT64_T, MPI_MAX, 0, g->o.comm);
  if (st)
    *st = (gensrc_stats){g->P, isum[0], secs, isum[1], isum[2], (size_t)pmax};
done:
  for (int r = 0; g->rbuf && r < g->P; r++) free(g->rbuf[r]);
  for (int r = 0; g->task && r < g->P; r++) free(g->task[r]);
  free(g->rbuf);
  free(g->rcap);
  free(g->task);
  free(g->order);
  free(g->split);
  free(g->msplit);
  free(g);
}
