/* gensource.c - samples made on the fly by MPI producer ranks (gensource.h). */
#include "pipeline/serve/gensource.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/checksum.h"
#include "common/error.h"
#include "common/fsutil.h"
#include "common/progress.h"
#include "pipeline/dataset/dataset_stats.h"
#include "pipeline/dataset/h5util.h"
#include "stats/statsfile.h"

enum { TAG_TASK = 7301, TAG_RESULT = 7302, TAG_ERROR = 7303 };
#define GENSRC_ERR_MAX 1024
#define FRESH_ID_SEED 0x6672657368ull /* "fresh": the id of a fresh-views stream */

/* A submitted chunk (gensrc_submit), until collected or cancelled. */
typedef struct {
  uint64_t ticket;
  uint32_t epoch;
  int n;
  int left;          /* samples not finished: still to hand out, or being made */
  int cancelled, rc; /* rc < 0: failed with err (its other samples are dropped) */
  int64_t *idx;      /* copied */
  int *order;        /* positions sorted by model */
  int *lo, *hi;      /* rank r's region [lo[r], hi[r]) of order, still to hand out */
  float *inputs, *targets;
  char err[GENSRC_ERR_MAX + 64];
} gchunk;

struct gensrc {
  gensrc_opts o;
  serve_external ext;
  int64_t *split;
  uint8_t *msplit; /* the split of every model */
  stats_norm norm;
  char info[8192];
  int rank, P;
  size_t in_vals, out_vals;
  /* the submitted chunks, oldest first */
  gchunk **q;
  int nq, capq;
  /* per other rank r, GENSRC_DEPTH samples in flight: slot r * GENSRC_DEPTH + d */
  char *rbuf;         /* their results (or error messages), slot_bytes each */
  size_t slot_bytes;
  MPI_Request *req;
  gchunk **fch;       /* the chunk of the slot's sample, NULL: slot free */
  int *fpos;          /* its position in the chunk's order */
  double *since;
  int busy;           /* slots in flight */
  int broken;         /* a rank failed to answer: every later read fails */
  char broken_msg[GENSRC_ERR_MAX];
  int64_t made, ahead;
  double secs;
};

#define GENSRC_DEPTH 3 /* samples sent ahead to each rank */


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

/* --stats PATH: a dataset directory (its dataset.h5) or a file a pilot pass
 * wrote (its root attribute `source` says what the statistics are of). The
 * parameters into *norm, INFO's normalisation_source (a JSON string) into
 * src. */
static int norm_from_file(const char *path, stats_norm *norm, char *src, size_t len) {
  char h5[4200], esc[4096], note[1024] = "";
  struct stat st;
  int dir = stat(path, &st) == 0 && S_ISDIR(st.st_mode);
  if (dir) snprintf(h5, sizeof h5, "%s/dataset.h5", path);
  else snprintf(h5, sizeof h5, "%s", path);
  h5_lock();
  int rc = stats_file_read_norm(h5, norm);
  if (rc == 0 && !dir) { /* the pilot pass's description, if it is one */
    hid_t f = -1;
    H5E_BEGIN_TRY { f = H5Fopen(h5, H5F_ACC_RDONLY, H5P_DEFAULT); } H5E_END_TRY;
    if (f >= 0 && H5Aexists(f, "source") > 0 && h5_get_str_attr(f, "source", note, sizeof note) < 0)
      note[0] = 0;
    if (f >= 0) H5Fclose(f);
  }
  h5_unlock();
  if (rc < 0)
    return ce_err_prefix("--stats %s: the pilot %s's /stats", path, dir ? "dataset" : "statistics");
  json_str(path, esc, sizeof esc);
  int w;
  if (dir) {
    w = snprintf(src, len, "\"pilot dataset %s\"", esc);
  } else {
    char nesc[1024];
    json_str(note, nesc, sizeof nesc);
    w = snprintf(src, len, "\"pilot statistics %s%s%s%s\"", esc, *note ? " (" : "", nesc,
                 *note ? ")" : "");
  }
  /* a cut string would end INFO's JSON without its closing quote */
  if (w < 0 || (size_t)w >= len)
    return ce_err("--stats %s: the normalisation source's description takes %d bytes, expected "
                  "fewer than %zu (a shorter path)", path, w, len);
  return 0;
}

int gensrc_pilot_plan(const job *j, int64_t n, gensrc_pilot *p) {
  memset(p, 0, sizeof *p);
  int64_t train = job_train_samples(j);
  if (train < 0) return -1;
  if (n < 1 || n > train)
    CE_FAIL("%s: a pilot pass of %lld samples: expected 1..%lld, the samples of the training "
            "split (%lld training models x %lld directions)", j->path, (long long)n,
            (long long)train, (long long)(train / j->directions), (long long)j->directions);
  p->samples = n;
  p->train_models = train / j->directions;
  p->rounds = n / p->train_models;
  p->extra = n % p->train_models;
  char more[96] = "";
  if (p->extra)
    snprintf(more, sizeof more, " and direction %lld of the first %lld", (long long)p->rounds,
             (long long)p->extra);
  char dirs[64];
  if (p->rounds == 1) snprintf(dirs, sizeof dirs, "direction 0");
  else snprintf(dirs, sizeof dirs, "directions 0..%lld", (long long)p->rounds - 1);
  if (p->rounds > 0)
    snprintf(p->subset, sizeof p->subset, "%lld samples of split train: %s of all %lld training "
             "models%s", (long long)n, dirs, (long long)p->train_models, more);
  else
    snprintf(p->subset, sizeof p->subset,
             "%lld samples of split train: direction 0 of the first %lld of %lld training models",
             (long long)n, (long long)p->extra, (long long)p->train_models);
  return 0;
}

/* The pilot pass's samples, for dataset_stats_source. */
typedef struct {
  const gensrc_opts *o;
  const gensrc_pilot *p;
  int64_t *train;          /* the training models, ascending */
  int64_t lo, hi;          /* rank 0: its block, for the progress line */
  int64_t last;
  ce_progress prog;
  int quiet, rank, second;
} pilot_ctx;

static int pilot_read(void *vc, int64_t first, int64_t count, float *inputs, float *targets) {
  pilot_ctx *c = vc;
  const job *j = c->o->j;
  const gensrc_pilot *p = c->p;
  const size_t in_vals = 3 * (size_t)j->n * j->n * j->n, out_vals = (size_t)j->nf * j->n * j->n;
  if (c->rank == 0 && first < c->last && !c->second) { /* dataset_stats' second read */
    ce_progress_done(&c->prog, c->last - c->lo);
    ce_progress_init(&c->prog, "serve: pilot pass, rank 0's share (second read)", "samples",
                     c->hi - c->lo, c->quiet);
    c->second = 1;
  }
  for (int64_t i = first; i < first + count; i++) {
    /* position i of the subset in sample order: the first r training models
     * have k + 1 directions, the others k */
    int64_t t, d, k = p->rounds, r = p->extra;
    if (i < r * (k + 1)) t = i / (k + 1), d = i % (k + 1);
    else t = r + (i - r * (k + 1)) / k, d = (i - r * (k + 1)) % k;
    int64_t model = c->train[t];
    float *in = inputs + (size_t)(i - first) * in_vals, *tg = targets + (size_t)(i - first) * out_vals;
    if (c->o->sample(c->o->ctx, model, d, in, tg) < 0)
      return ce_err_prefix("pilot pass: sample %lld (model %lld, direction %lld)",
                           (long long)(model * j->directions + d), (long long)model, (long long)d);
  }
  c->last = first + count;
  if (c->rank == 0 && c->last < c->hi) /* the share's end: ce_progress_done's line */
    ce_progress_update(&c->prog, c->last - c->lo);
  return 0;
}

int gensrc_pilot_run(const gensrc_opts *o, int64_t n, const char *out_path, int quiet,
                     gensrc_pilot *p) {
  const job *j = o->j;
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  pilot_ctx c = {.o = o, .p = p, .quiet = quiet, .rank = rank};
  uint8_t *msplit = NULL;
  int same = MPI_UNEQUAL;
  MPI_Comm_compare(o->comm, MPI_COMM_WORLD, &same);
  int rc = same == MPI_IDENT ? gensrc_pilot_plan(j, n, p)
                             : ce_err("pilot pass: the producers' communicator must be MPI_COMM_WORLD "
                                      "(the statistics' reductions are over it)");
  if (rc == 0 && !(msplit = model_splits(j))) rc = -1;
  if (rc == 0 && !(c.train = ce_malloc_array((size_t)p->train_models, sizeof *c.train,
                                             "training models")))
    rc = -1;
  for (int64_t m = 0, t = 0; rc == 0 && m < j->n_models; m++)
    if (msplit[m] == SPLIT_TRAIN) c.train[t++] = m;
  if (rc == 0 && rank == 0 && out_path && *out_path) { /* the writer: before the pass */
    char dir[4200];
    fs_parent_dir(out_path, dir, sizeof dir);
    if (access(dir, W_OK | X_OK) != 0)
      rc = ce_err("pilot pass: %s cannot be written: its folder %s is not there or not writable",
                  out_path, dir);
  }
  /* the lowest failing rank prints (the plan is the same on every rank) */
  int mine = rc < 0 ? rank : size, first = size;
  MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (first < size) {
    if (first == rank) {
      if (size > 1) fprintf(stderr, "coemu serve: rank %d: error: %s\n", rank, ce_err_msg());
      else fprintf(stderr, "coemu serve: error: %s\n", ce_err_msg());
    }
    free(msplit);
    free(c.train);
    return -1;
  }
  c.lo = n * rank / size, c.hi = n * (rank + 1) / size, c.last = c.lo;
  if (rank == 0)
    ce_progress_init(&c.prog, "serve: pilot pass, rank 0's share", "samples", c.hi - c.lo, quiet);
  char name[1200], note[1400];
  snprintf(name, sizeof name, "%s: pilot pass", j->path);
  snprintf(note, sizeof note, "pilot pass: %s; job %s (dataset id %016llx)", p->subset, j->path,
           (unsigned long long)ce_xxh64(j->text, j->text_len, 0));
  dataset_stats_source src = {.name = name, .samples = n, .n = j->n, .channels = j->nf,
                              .read = pilot_read, .ctx = &c};
  double t0 = ce_now();
  rc = dataset_stats_source_run(&src, "serve", out_path && *out_path ? out_path : NULL, note,
                                j->stats_drop_outliers, j->stats_lnI_clip, NULL, &p->norm, &p->used, &p->outliers,
                                &p->made);
  p->seconds = ce_now() - t0;
  p->ranks = size;
  if (rank == 0) ce_progress_done(&c.prog, c.last - c.lo);
  free(msplit);
  free(c.train);
  return rc;
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
  size_t per = (g->in_vals + g->out_vals) * sizeof(float), nslot = (size_t)g->P * GENSRC_DEPTH;
  g->slot_bytes = per > GENSRC_ERR_MAX ? per : GENSRC_ERR_MAX;
  if (g->slot_bytes > (size_t)INT32_MAX) {
    ce_err("%s: one sample is %zu bytes, more than one MPI message carries here", j->path, per);
    goto fail;
  }
  g->rbuf = g->P > 1 ? ce_malloc_array(nslot, g->slot_bytes, "the producer ranks' results") : NULL;
  g->req = calloc(nslot, sizeof *g->req);
  g->fch = calloc(nslot, sizeof *g->fch);
  g->fpos = calloc(nslot, sizeof *g->fpos);
  g->since = calloc(nslot, sizeof *g->since);
  if (!g->split || (g->P > 1 && !g->rbuf) || !g->req || !g->fch || !g->fpos || !g->since) {
    ce_err("out of memory");
    goto fail;
  }
  for (size_t q = 0; q < nslot; q++) g->req[q] = MPI_REQUEST_NULL;
  int64_t ns = 0;
  for (int64_t i = 0; i < M; i++)
    if (want < 0 || g->msplit[i / j->directions] == want) g->split[ns++] = i;
  const char *norm_src = "null";
  char norm_buf[4800];
  if (o->stats_dataset && norm_from_file(o->stats_dataset, &g->norm, norm_buf, sizeof norm_buf) < 0)
    goto fail;
  if (o->pilot) {
    const gensrc_pilot *pp = o->pilot;
    g->norm = pp->norm;
    snprintf(norm_buf, sizeof norm_buf,
             "\"pilot pass: %s\", \"pilot\": {\"samples\": %lld, \"split\": \"train\", "
             "\"directions\": %lld, \"extra_models\": %lld, \"training_models\": %lld, "
             "\"used\": %lld, \"outliers\": %lld}", pp->subset, (long long)pp->samples,
             (long long)pp->rounds, (long long)pp->extra, (long long)pp->train_models,
             (long long)pp->used, (long long)pp->outliers);
  }
  /* INFO's normalisation_id: serve_info_json, as for every source */
  const int have_norm = o->stats_dataset || o->pilot;
  if (have_norm) norm_src = norm_buf;
  char jesc[1024];
  json_str(j->path, jesc, sizeof jesc);
  snprintf(g->info, sizeof g->info,
           ", \"source\": \"generate\", \"job\": \"%s\", \"fresh_views\": %s, \"producers\": %d, "
           "\"normalisation_source\": %s",
           jesc, o->fresh_views ? "true" : "false", g->P, norm_src);
  g->ext = (serve_external){.submit = gensrc_submit, .collect = gensrc_collect,
                            .cancel = gensrc_cancel, .ctx = g, .name = j->path, .samples = M,
                            .split = g->split, .nsplit = ns, .per_shard = j->samples_per_shard,
                            .in_shape = {3, (uint32_t)j->n, (uint32_t)j->n, (uint32_t)j->n},
                            .out_shape = {(uint32_t)j->nf, (uint32_t)j->n, (uint32_t)j->n},
                            .dataset_id = ce_xxh64(j->text, j->text_len,
                                                   o->fresh_views ? FRESH_ID_SEED : 0),
                            .norm = have_norm ? &g->norm : NULL, .info_extra = g->info};
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
  int x = *(const int *)a, y = *(const int *)b;
  int64_t mx = g_sort_idx[x] / g_sort_job->directions, my = g_sort_idx[y] / g_sort_job->directions;
  return mx < my ? -1 : mx > my ? 1 : (x > y) - (x < y);
}

static void pause_us(long us) {
  struct timespec ts = {0, us * 1000L};
  nanosleep(&ts, NULL);
}

static void chunk_free(gchunk *c) {
  if (!c) return;
  free(c->idx);
  free(c->order);
  free(c->lo);
  free(c->hi);
  free(c);
}

static int chunk_at(const gensrc *g, uint64_t ticket) {
  for (int i = 0; i < g->nq; i++)
    if (g->q[i]->ticket == ticket) return i;
  return -1;
}

static void chunk_remove(gensrc *g, int i) {
  chunk_free(g->q[i]);
  memmove(g->q + i, g->q + i + 1, sizeof *g->q * (size_t)(g->nq - i - 1));
  g->nq--;
}

/* Nothing more of chunk c is handed out (it failed or was cancelled). */
static void chunk_drop_rest(gensrc *g, gchunk *c) {
  for (int r = 0; r < g->P; r++) c->left -= c->hi[r] - c->lo[r], c->lo[r] = c->hi[r];
}

/* Sample k of chunk c is finished (made, failed or discarded); a cancelled
 * chunk goes once nothing of it is in flight. */
static void chunk_done_one(gensrc *g, gchunk *c) {
  if (--c->left == 0 && c->cancelled) chunk_remove(g, chunk_at(g, c->ticket));
}

static void chunk_fail(gensrc *g, gchunk *c, const char *msg) {
  if (c->rc == 0) {
    c->rc = -1;
    snprintf(c->err, sizeof c->err, "%s", msg);
  }
  chunk_drop_rest(g, c);
}

/* The next sample rank r makes: from the oldest chunk with work left to hand
 * out, the front of r's own region of it, else the back of its fullest
 * region (work stealing at a chunk's end). 0 (*out, *k), or -1: none.
 * Counts the samples handed out while an earlier chunk is still being made
 * (g->ahead: the work that a chunk barrier would have left undone). */
static int take(gensrc *g, int r, gchunk **out, int *k) {
  int older = 0;
  for (int i = 0; i < g->nq; i++) {
    gchunk *c = g->q[i];
    int best = c->lo[r] < c->hi[r] ? r : -1;
    for (int x = 0; x < g->P && best != r; x++) /* steal from the fullest */
      if (c->hi[x] > c->lo[x] && (best < 0 || c->hi[x] - c->lo[x] > c->hi[best] - c->lo[best]))
        best = x;
    if (best >= 0) {
      *out = c, *k = best == r ? c->lo[r]++ : --c->hi[best];
      g->ahead += older;
      return 0;
    }
    older |= c->left > 0;
  }
  return -1;
}

/* Samples of every submitted chunk not yet handed out. */
static int64_t unassigned(const gensrc *g) {
  int64_t n = 0;
  for (int i = 0; i < g->nq; i++)
    for (int r = 0; r < g->P; r++) n += g->q[i]->hi[r] - g->q[i]->lo[r];
  return n;
}

/* A rank stopped answering: every chunk fails, now and later. */
static void set_broken(gensrc *g, int r) {
  g->broken = 1;
  snprintf(g->broken_msg, sizeof g->broken_msg,
           "producer rank %d of %d did not return its sample within %g s (has it died?): "
           "the stream cannot go on without it",
           r, g->P, g->o.timeout_s);
}

/* Take in what the other ranks sent back, then keep each of them
 * GENSRC_DEPTH samples ahead (in this order, so a slot freed now is filled
 * now: a rank that finished its queue waits for nothing but this call). No
 * sample is queued behind a rank's busy one while fewer samples than ranks
 * are left to hand out, so the last ones go to idle ranks. */
static void dispatch_and_poll(gensrc *g) {
  const int P = g->P;
  for (int q = GENSRC_DEPTH; q < P * GENSRC_DEPTH && g->busy > 0; q++) {
    gchunk *c = g->fch[q];
    if (!c) continue;
    int r = q / GENSRC_DEPTH, done = 0;
    MPI_Status st;
    MPI_Test(&g->req[q], &done, &st);
    if (!done) {
      if (ce_now() - g->since[q] > g->o.timeout_s) {
        MPI_Cancel(&g->req[q]);
        MPI_Request_free(&g->req[q]);
        set_broken(g, r);
        g->fch[q] = NULL, g->busy--;
        chunk_done_one(g, c);
      }
      continue;
    }
    const char *buf = g->rbuf + (size_t)q * g->slot_bytes;
    g->fch[q] = NULL, g->busy--;
    if (st.MPI_TAG == TAG_ERROR) {
      char msg[GENSRC_ERR_MAX], full[GENSRC_ERR_MAX + 64];
      int len = 0;
      MPI_Get_count(&st, MPI_BYTE, &len);
      if (len < 1) len = 1;
      if (len > GENSRC_ERR_MAX) len = GENSRC_ERR_MAX;
      memcpy(msg, buf, (size_t)len);
      msg[len - 1] = 0;
      snprintf(full, sizeof full, "producer rank %d: %s", r, msg);
      chunk_fail(g, c, full);
    } else if (c->rc == 0 && !c->cancelled) {
      int at = c->order[g->fpos[q]];
      const float *src = (const float *)buf;
      memcpy(c->inputs + (size_t)at * g->in_vals, src, g->in_vals * sizeof(float));
      memcpy(c->targets + (size_t)at * g->out_vals, src + g->in_vals, g->out_vals * sizeof(float));
    }
    chunk_done_one(g, c);
  }
  /* samples still to hand out: counted once here (not per slot: O(chunks x
   * P) each), one less per sample taken, counted again after a failure */
  int64_t left = -1;
  for (int r = 1; r < P && !g->broken; r++)
    for (int d = 0; d < GENSRC_DEPTH; d++) {
      int q = r * GENSRC_DEPTH + d, mine = 0;
      if (g->fch[q]) continue;
      for (int e = 0; e < GENSRC_DEPTH; e++) mine += g->fch[r * GENSRC_DEPTH + e] != NULL;
      if (mine > 0) {
        if (left < 0) left = unassigned(g);
        if (left < P) break;
      }
      gchunk *c;
      int k;
      if (take(g, r, &c, &k) < 0) break;
      if (left > 0) left--;
      int64_t msg[3] = {1, c->epoch, c->idx[c->order[k]]};
      char *buf = g->rbuf + (size_t)q * g->slot_bytes;
      if (MPI_Irecv(buf, (int)g->slot_bytes, MPI_BYTE, r, MPI_ANY_TAG, g->o.comm, &g->req[q]) !=
              MPI_SUCCESS ||
          MPI_Send(msg, 3, MPI_INT64_T, r, TAG_TASK, g->o.comm) != MPI_SUCCESS) {
        char m[GENSRC_ERR_MAX];
        snprintf(m, sizeof m, "cannot send work to producer rank %d", r);
        chunk_fail(g, c, m);
        chunk_done_one(g, c);
        left = -1;
        break;
      }
      g->fch[q] = c, g->fpos[q] = k, g->since[q] = ce_now(), g->busy++;
    }
}

int gensrc_submit(void *vg, uint64_t ticket, uint32_t epoch, const int64_t *idx, int n,
                  float *inputs, float *targets) {
  gensrc *g = vg;
  if (g->broken) CE_FAIL("%s", g->broken_msg);
  if (n < 1 || n > 4096) CE_FAIL("gensource: %d samples in one chunk (1 to 4096)", n);
  if (g->nq == g->capq) {
    int cap = g->capq ? 2 * g->capq : 16;
    gchunk **q = realloc(g->q, sizeof *q * (size_t)cap);
    if (!q) CE_FAIL("out of memory");
    g->q = q, g->capq = cap;
  }
  gchunk *c = calloc(1, sizeof *c);
  if (c) {
    c->idx = malloc(sizeof *c->idx * (size_t)n);
    c->order = malloc(sizeof *c->order * (size_t)n);
    c->lo = calloc((size_t)g->P, sizeof *c->lo);
    c->hi = calloc((size_t)g->P, sizeof *c->hi);
  }
  if (!c || !c->idx || !c->order || !c->lo || !c->hi) {
    chunk_free(c);
    CE_FAIL("out of memory");
  }
  *c = (gchunk){.ticket = ticket, .epoch = epoch, .n = n, .left = n, .idx = c->idx,
                .order = c->order, .lo = c->lo, .hi = c->hi, .inputs = inputs, .targets = targets};
  memcpy(c->idx, idx, sizeof *c->idx * (size_t)n);
  /* positions sorted by model; rank r's region is the r-th of P nearly
   * equal runs, so a rank makes a model's directions together */
  for (int k = 0; k < n; k++) c->order[k] = k;
  g_sort_job = g->o.j, g_sort_idx = c->idx;
  qsort(c->order, (size_t)n, sizeof *c->order, by_model);
  for (int r = 0; r < g->P; r++)
    c->lo[r] = (int)((int64_t)n * r / g->P), c->hi[r] = (int)((int64_t)n * (r + 1) / g->P);
  g->q[g->nq++] = c;
  dispatch_and_poll(g); /* idle ranks start on it now */
  return 0;
}

int gensrc_collect(void *vg, uint64_t ticket) {
  gensrc *g = vg;
  int i = chunk_at(g, ticket);
  if (i < 0 || g->q[i]->cancelled) CE_BUG("gensource: chunk %llu was not submitted", (unsigned long long)ticket);
  gchunk *c = g->q[i];
  long nap = 50;
  while (c->left > 0 && !g->broken) {
    dispatch_and_poll(g);
    if (c->left == 0 || g->broken) break;
    /* one sample of rank 0's own (of the oldest chunk with work), then look again */
    gchunk *m;
    int k;
    if (take(g, 0, &m, &k) == 0) {
      int at = m->order[k];
      if (make_one(&g->o, g->msplit, m->epoch, m->idx[at], m->inputs + (size_t)at * g->in_vals,
                   m->targets + (size_t)at * g->out_vals, &g->made, &g->secs) < 0)
        chunk_fail(g, m, ce_err_msg());
      chunk_done_one(g, m);
      nap = 50;
      continue;
    }
    pause_us(nap); /* every sample left is another rank's: wait without spinning */
    if (nap < 1000) nap *= 2;
  }
  i = chunk_at(g, ticket);
  int rc = g->broken ? ce_err("%s", g->broken_msg) : c->rc < 0 ? ce_err("%s", c->err) : 0;
  if (g->broken) {
    c->cancelled = 1; /* in flight samples of it are never taken in now */
    chunk_drop_rest(g, c);
  }
  chunk_remove(g, i);
  return rc;
}

void gensrc_cancel(void *vg, uint64_t ticket) {
  gensrc *g = vg;
  int i = chunk_at(g, ticket);
  if (i < 0) return;
  gchunk *c = g->q[i];
  c->cancelled = 1;
  chunk_drop_rest(g, c);
  if (c->left == 0) chunk_remove(g, i); /* else once its samples in flight are back */
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
  /* a result buffer per sample rank 0 keeps queued here: a result is sent
   * (MPI_Isend) while the next ones are made, since a large message moves
   * only when rank 0 next calls MPI (between two samples of its own) */
  float *buf[GENSRC_DEPTH] = {NULL};
  size_t cap[GENSRC_DEPTH] = {0};
  MPI_Request sent[GENSRC_DEPTH];
  for (int d = 0; d < GENSRC_DEPTH; d++) sent[d] = MPI_REQUEST_NULL;
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
      cur = (cur + 1) % GENSRC_DEPTH;
    }
  }
  for (int d = 0; d < GENSRC_DEPTH; d++) wait_quietly(&sent[d]);
  /* the final counters (gensrc_close) */
  int64_t loads = 0, hits = 0;
  size_t peak = 0;
  if (o->counters) o->counters(o->ctx, &loads, &hits, &peak);
  int64_t iv[3] = {made, loads, hits}, isum[3];
  uint64_t pk = peak, pmax;
  MPI_Reduce(iv, isum, 3, MPI_INT64_T, MPI_SUM, 0, o->comm);
  MPI_Reduce(&secs, NULL, 1, MPI_DOUBLE, MPI_SUM, 0, o->comm);
  MPI_Reduce(&pk, &pmax, 1, MPI_UINT64_T, MPI_MAX, 0, o->comm);
  for (int d = 0; d < GENSRC_DEPTH; d++) free(buf[d]);
  free(task);
  free(msplit);
  return failed;
}

void gensrc_close(gensrc *g, gensrc_stats *st) {
  if (!g) return;
  /* what is still submitted is not wanted; the samples in flight are taken
   * in (a rank's result waits in its MPI_Isend until it is received) */
  for (int i = g->nq - 1; i >= 0; i--) gensrc_cancel(g, g->q[i]->ticket);
  long nap = 50;
  while (g->busy > 0 && !g->broken) {
    dispatch_and_poll(g);
    if (g->busy == 0) break;
    pause_us(nap);
    if (nap < 2000) nap *= 2;
  }
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
    *st = (gensrc_stats){g->P, isum[0], secs, isum[1], isum[2], (size_t)pmax, g->ahead};
done:
  for (int i = 0; i < g->nq; i++) chunk_free(g->q[i]);
  free(g->q);
  free(g->rbuf);
  free(g->req);
  free(g->fch);
  free(g->fpos);
  free(g->since);
  free(g->split);
  free(g->msplit);
  free(g);
}
