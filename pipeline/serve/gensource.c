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
  if (!g->split || !g->order || !g->rbuf || !g->rcap) {
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

/* The next sorted position rank r makes (-1: none left): from the front of
 * its own region [lo, hi) of the sorted chunk, else from the back of the
 * region with the most left (work stealing at the end of a chunk). */
static int take(int64_t *lo, int64_t *hi, int P, int r) {
  if (lo[r] < hi[r]) return (int)lo[r]++;
  int best = -1;
  for (int q = 0; q < P; q++)
    if (hi[q] - lo[q] > 0 && (best < 0 || hi[q] - lo[q] > hi[best] - lo[best])) best = q;
  if (best < 0) return -1;
  return (int)--hi[best];
}

#define GENSRC_DEPTH 2 /* samples sent ahead to each rank */

int gensrc_read(void *vg, uint32_t epoch, const int64_t *idx, int n, float *inputs,
                float *targets) {
  gensrc *g = vg;
  if (g->broken) CE_FAIL("%s", g->broken_msg);
  if (n > 4096) CE_FAIL("gensource: %d samples in one chunk (at most 4096)", n);
  const int P = g->P;
  const size_t per = (g->in_vals + g->out_vals) * sizeof(float);
  /* positions sorted by model; rank r's region is the r-th of P nearly
   * equal runs, so a rank makes a model's directions together */
  for (int k = 0; k < n; k++) g->order[k] = k;
  g_sort_job = g->o.j, g_sort_idx = idx;
  qsort(g->order, (size_t)n, sizeof *g->order, by_model);
  int64_t *lo = calloc((size_t)P, sizeof *lo), *hi = calloc((size_t)P, sizeof *hi);
  MPI_Request *req = calloc((size_t)P * GENSRC_DEPTH, sizeof *req);
  int *pos = calloc((size_t)P * GENSRC_DEPTH, sizeof *pos);
  double *since = calloc((size_t)P * GENSRC_DEPTH, sizeof *since);
  if (!lo || !hi || !req || !pos || !since) {
    free(lo), free(hi), free(req), free(pos), free(since);
    CE_FAIL("out of memory");
  }
  for (int r = 0; r < P; r++) lo[r] = (int64_t)n * r / P, hi[r] = (int64_t)n * (r + 1) / P;
  for (int q = 0; q < P * GENSRC_DEPTH; q++) req[q] = MPI_REQUEST_NULL, pos[q] = -1;
  int rc = 0, busy = 0;
  for (int r = 1; r < P && rc == 0; r++) {
    size_t need = GENSRC_DEPTH * (per > GENSRC_ERR_MAX ? per : GENSRC_ERR_MAX);
    if (need > g->rcap[r]) {
      free(g->rbuf[r]);
      g->rbuf[r] = malloc(need);
      g->rcap[r] = g->rbuf[r] ? need : 0;
      if (!g->rbuf[r]) rc = ce_err("out of memory for rank %d's samples", r);
    }
  }
  const size_t slot_bytes = per > GENSRC_ERR_MAX ? per : GENSRC_ERR_MAX;
  for (;;) {
    /* keep every other rank GENSRC_DEPTH samples ahead */
    for (int r = 1; r < P && rc == 0; r++)
      for (int d = 0; d < GENSRC_DEPTH; d++) {
        int q = r * GENSRC_DEPTH + d;
        if (pos[q] >= 0) continue;
        int mine = 0;
        for (int e = 0; e < GENSRC_DEPTH; e++) mine += pos[r * GENSRC_DEPTH + e] >= 0;
        if (mine > 0) { /* a sample queued behind the one being made: only while there is
                        enough left for every rank, so the chunk's end is not held up */
          int64_t left = 0;
          for (int x = 0; x < P; x++) left += hi[x] - lo[x];
          if (left < P) break;
        }
        int k = take(lo, hi, P, r);
        if (k < 0) break;
        int64_t msg[3] = {1, epoch, idx[g->order[k]]};
        char *buf = (char *)g->rbuf[r] + (size_t)d * slot_bytes;
        if (MPI_Irecv(buf, (int)slot_bytes, MPI_BYTE, r, MPI_ANY_TAG, g->o.comm, &req[q]) !=
                MPI_SUCCESS ||
            MPI_Send(msg, 3, MPI_INT64_T, r, TAG_TASK, g->o.comm) != MPI_SUCCESS) {
          rc = ce_err("cannot send work to producer rank %d", r);
          break;
        }
        pos[q] = k, since[q] = ce_now(), busy++;
      }
    /* collect what came back */
    for (int q = GENSRC_DEPTH; q < P * GENSRC_DEPTH && busy > 0; q++) {
      if (pos[q] < 0) continue;
      int r = q / GENSRC_DEPTH, done = 0;
      MPI_Status st;
      MPI_Test(&req[q], &done, &st);
      if (!done) {
        if (ce_now() - since[q] > g->o.timeout_s) {
          MPI_Cancel(&req[q]);
          g->broken = 1;
          snprintf(g->broken_msg, sizeof g->broken_msg,
                   "producer rank %d of %d did not return its sample within %g s (has it died?): "
                   "the stream cannot go on without it",
                   r, P, g->o.timeout_s);
          if (rc == 0) rc = ce_err("%s", g->broken_msg);
          pos[q] = -1, busy--;
        }
        continue;
      }
      const char *buf = (const char *)g->rbuf[r] + (size_t)(q % GENSRC_DEPTH) * slot_bytes;
      if (st.MPI_TAG == TAG_ERROR) {
        char msg[GENSRC_ERR_MAX];
        int len = 0;
        MPI_Get_count(&st, MPI_BYTE, &len);
        if (len < 1) len = 1;
        if (len > GENSRC_ERR_MAX) len = GENSRC_ERR_MAX;
        memcpy(msg, buf, (size_t)len);
        msg[len - 1] = 0;
        if (rc == 0) rc = ce_err("producer rank %d: %s", r, msg);
      } else if (rc == 0) {
        int at = (int)g->order[pos[q]];
        const float *src = (const float *)buf;
        memcpy(inputs + (size_t)at * g->in_vals, src, g->in_vals * sizeof(float));
        memcpy(targets + (size_t)at * g->out_vals, src + g->in_vals, g->out_vals * sizeof(float));
      }
      pos[q] = -1, busy--;
    }
    if (g->broken) break; /* a rank that does not answer: stop here */
    /* one sample of rank 0's own, then look again */
    int k = rc == 0 ? take(lo, hi, P, 0) : -1;
    if (k >= 0) {
      int at = (int)g->order[k];
      rc = make_one(&g->o, g->msplit, epoch, idx[at], inputs + (size_t)at * g->in_vals,
                    targets + (size_t)at * g->out_vals, &g->made, &g->secs);
      continue;
    }
    if (busy == 0) break; /* nothing left to make (take steals from every region) */
    pause_us(100);
  }
  free(lo), free(hi), free(req), free(pos), free(since);
  return rc;
}

/* Wait for a request without spinning a core (MPI_Wait busy-polls in Open
 * MPI): a waiting rank would take CPU from the producing ones. */
static void wait_quietly(MPI_Request *r) {
  int done = 0;
  long nap = 50;
  while (*r != MPI_REQUEST_NULL) {
    MPI_Test(r, &done, MPI_STATUS_IGNORE);
    if (done) break;
    pause_us(nap);
    if (nap < 2000) nap *= 2;
  }
}

int gensrc_worker(const gensrc_opts *o) {
  const job *j = o->j;
  const size_t in_vals = 3 * (size_t)j->n * j->n * j->n, out_vals = (size_t)j->nf * j->n * j->n;
  uint8_t *msplit = model_splits(j);
  int64_t *task = malloc(sizeof(int64_t) * (2 + 4096));
  /* two result buffers: a result is sent (MPI_Isend) while the next sample
   * is made, since a large message moves only when rank 0 next calls MPI */
  float *buf[2] = {NULL, NULL};
  size_t cap[2] = {0, 0};
  MPI_Request sent[2] = {MPI_REQUEST_NULL, MPI_REQUEST_NULL};
  int cur = 0;
  int64_t made = 0;
  double secs = 0;
  int rc = msplit && task ? 0 : -1, failed = rc;
  for (;;) {
    MPI_Status st;
    int count = 0, flag = 0;
    long nap = 50;
    while (!flag) { /* as wait_quietly */
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
    wait_quietly(&sent[cur]); /* this buffer's last result has gone */
    size_t need = (size_t)n * (in_vals + out_vals) * sizeof(float);
    if (need > cap[cur]) {
      free(buf[cur]);
      buf[cur] = malloc(need);
      cap[cur] = buf[cur] ? need : 0;
    }
    rc = buf[cur] && msplit ? 0 : ce_err("producer rank: out of memory");
    for (int64_t k = 0; k < n && rc == 0; k++) {
      float *in = buf[cur] + (size_t)k * (in_vals + out_vals);
      rc = make_one(o, msplit, (uint32_t)task[1], task[2 + k], in, in + in_vals, &made, &secs);
    }
    if (rc < 0) {
      char msg[GENSRC_ERR_MAX];
      snprintf(msg, sizeof msg, "%s", ce_err_msg());
      MPI_Send(msg, (int)strlen(msg) + 1, MPI_BYTE, 0, TAG_ERROR, o->comm);
      failed = -1;
    } else {
      MPI_Isend(buf[cur], (int)need, MPI_BYTE, 0, TAG_RESULT, o->comm, &sent[cur]);
      cur ^= 1;
    }
  }
  wait_quietly(&sent[0]);
  wait_quietly(&sent[1]);
  /* the final counters (gensrc_close) */
  int64_t loads = 0, hits = 0;
  size_t peak = 0;
  if (o->counters) o->counters(o->ctx, &loads, &hits, &peak);
  int64_t iv[3] = {made, loads, hits}, isum[3];
  uint64_t pk = peak, pmax;
  MPI_Reduce(iv, isum, 3, MPI_INT64_T, MPI_SUM, 0, o->comm);
  MPI_Reduce(&secs, NULL, 1, MPI_DOUBLE, MPI_SUM, 0, o->comm);
  MPI_Reduce(&pk, &pmax, 1, MPI_UINT64_T, MPI_MAX, 0, o->comm);
  free(buf[0]);
  free(buf[1]);
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
  free(g->rbuf);
  free(g->rcap);
  free(g->order);
  free(g->split);
  free(g->msplit);
  free(g);
}
