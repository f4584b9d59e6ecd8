/* serve.c - dataset source for the stream: shuffles, rank slices, a pool
 * of prefetching reader threads (rows read with pread, HDF5 under one lock). */
#include "pipeline/serve/serve.h"

#include <errno.h>
#include <hdf5.h>
#include <sched.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/checksum.h"
#include "common/cli.h"
#include "common/error.h"
#include "common/fsutil.h"
#include "pipeline/dataset/h5util.h"
#include "pipeline/dataset/integrity.h"
#include "pipeline/dataset/layout.h"
#include "pipeline/dataset/shard_reader.h"
#include "pipeline/job/job.h"
#include "pipeline/job/yamltree.h"
#include "pipeline/stream/stream_proto.h"
#include "stats/statsfile.h"
#include "stats/transforms.h"

#define PERM_CACHE 3

enum { SLOT_FREE = 0, SLOT_WANTED, SLOT_READING, SLOT_READY };

typedef struct {
  int state, rank, normalised, failed;
  int claimed;     /* a consumer waits for it (serve_chunk) */
  uint32_t epoch;
  uint64_t position;
  uint64_t ticket; /* an external source's chunk being made (external_loop) */
  void *buf; /* chunk_mem */
  char err[512];
} slot;

typedef struct {
  uint64_t *ids;
  uint64_t *sums; /* the rows' checksums as verified by the reader, or NULL (stream_chunk) */
  float *inputs, *targets; /* the rows copied here, or NULL (views) */
  /* zero copy: the rows where they lie in the mapped shard file, and the
   * reference that keeps the mapping (shard_reader_direct_map) */
  const void *in_view, *tg_view;
  shard_map *hold;
  /* zero copy row by row (serve_opts.row_views): row k where it lies,
   * holds[2k], holds[2k + 1] its mapping's references for its two frames;
   * nrows > 0 while the chunk is made of them, given_rows once they went to
   * the stream server (which drops them frame by frame) */
  const void **in_rows, **tg_rows;
  void **holds;
  int nrows, given_rows;
  /* the pool it returns to (chunk_free), and the room its arrays have */
  struct chunk_pool *pool;
  int cap_n;        /* samples its ids, sums, inputs and targets have room for */
  uint64_t *sums_buf; /* the room of sums (sums is NULL when the server hashes the rows) */
} chunk_mem;

/* Chunk buffers are reused: a chunk of --batch 16 of 3.26 MB samples is
 * 52 MB, above glibc's largest mmap threshold (32 MiB), so every new one
 * was a fresh mmap that the kernel faulted in and zeroed page by page, and
 * every free an munmap (docs/stream-protocol.md, "Chunk buffers"). A
 * chunk freed (by a reader, serve_close, or ZeroMQ's I/O thread once it
 * has written the chunk out) goes back here, and the next chunk of the
 * same size takes it. A block is made only when none is free, so the
 * blocks (in use and free) never outnumber the most chunks ever in use at
 * once: the pool adds nothing to serve's memory bound (read-ahead slots +
 * max_consumers x max_credit queued chunks); it keeps at most `cap` free
 * ones after a burst. Reference counted: queued chunks may outlive the
 * source (serve_close), and the pool outlives them. */
typedef struct chunk_pool {
  pthread_mutex_t mu;
  int refs; /* the source's (until serve_close) + one per chunk out of the pool */
  int open; /* the source still uses it: freed chunks are kept */
  int nfree, cap;
  uint64_t made, reused; /* chunks made new / taken from the pool (mu) */
  chunk_mem **free;
} chunk_pool;

typedef struct {
  int active, normalised;
  uint32_t epoch;
  uint64_t next; /* position after the last one asked for */
} cursor;

struct serve_source {
  serve_opts o;
  char h5path[4096];
  /* live mode: samples come from the shard files */
  int64_t spp;                /* samples per shard */
  hid_t shard;                /* the shard file open now, or -1 */
  int64_t shard_idx;
  hid_t shard_d[2];
  hid_t shard_sums;           /* its /checksums, or -1 */
  shard_reader *rd;           /* finished mode: the shards (checked reads, open-shard cache) */
  uint64_t rows_direct, rows_hdf5; /* samples read with pread / through HDF5 (h5_lock) */
  uint64_t rows_mapped;       /* of rows_direct: sent from the mapped file, no copy (h5_lock) */
  int64_t nsamples_total, nsplit;
  int64_t shards_made; /* live: the leading shards found made (serve_live_producing) */
  int64_t *split_idx;         /* dataset indices of the split, ascending */
  uint32_t in_shape[4], out_shape[3];
  size_t in_vals, out_vals;   /* floats per sample */
  uint64_t per_rank;          /* samples per epoch per rank */
  uint64_t dataset_id;
  int have_norm;
  stats_norm norm;
  /* epoch permutations (order.h) */
  order_plan plan;
  int plan_open;
  int64_t *perm[PERM_CACHE];
  uint32_t perm_epoch[PERM_CACHE];
  int perm_next;
  /* reader threads */
  pthread_t *threads;
  int nthreads;
  int rebuild_threads; /* images-only: threads per reader's rebuild (cores / readers) */
  pthread_mutex_t mu;
  pthread_cond_t cv_reader, cv_ready;
  int stop, started;
  slot *slots;
  int nslots;
  cursor *cursors;
  uint64_t tickets; /* external source: chunks submitted so far */
  chunk_pool *pool; /* chunk buffers, reused */
};

static void chunk_destroy(chunk_mem *m) {
  free(m->ids);
  free(m->sums_buf);
  free(m->inputs);
  free(m->targets);
  free(m->in_rows);
  free(m->tg_rows);
  free(m->holds);
  free(m);
}

static void pool_unref(chunk_pool *p) { /* p->mu held; unlocks it */
  int last = --p->refs == 0;
  pthread_mutex_unlock(&p->mu);
  if (!last) return;
  for (int i = 0; i < p->nfree; i++) chunk_destroy(p->free[i]);
  free(p->free);
  pthread_mutex_destroy(&p->mu);
  free(p);
}

/* A chunk is done with (a failed read, serve_close, or ZeroMQ has written
 * it out: may run in ZeroMQ's I/O thread). Its mapping reference is
 * dropped; its buffers go back to the pool while the source is open. */
static void chunk_free(void *ptr) {
  chunk_mem *m = ptr;
  if (!m) return;
  shard_map_release(m->hold); /* no lock needed */
  m->hold = NULL;
  if (!m->given_rows) /* made but never handed to the stream server */
    for (int j = 0; j < 2 * m->nrows; j++) shard_map_release(m->holds[j]);
  m->nrows = m->given_rows = 0;
  chunk_pool *p = m->pool;
  if (!p) {
    chunk_destroy(m);
    return;
  }
  pthread_mutex_lock(&p->mu);
  if (p->open && p->nfree < p->cap) {
    p->free[p->nfree++] = m;
    m = NULL;
  }
  pool_unref(p);
  if (m) chunk_destroy(m);
}

static chunk_pool *chunk_pool_create(int cap) {
  chunk_pool *p = calloc(1, sizeof *p);
  if (!p) return NULL;
  p->free = calloc((size_t)(cap > 0 ? cap : 1), sizeof *p->free);
  if (!p->free) {
    free(p);
    return NULL;
  }
  pthread_mutex_init(&p->mu, NULL);
  p->refs = 1;
  p->open = 1;
  p->cap = cap;
  return p;
}

/* The source is closed: free what the pool keeps; chunks still queued
 * are freed when ZeroMQ releases them, and the last frees the pool. */
static void chunk_pool_close(chunk_pool *p) {
  if (!p) return;
  pthread_mutex_lock(&p->mu);
  p->open = 0;
  for (int i = 0; i < p->nfree; i++) chunk_destroy(p->free[i]);
  p->nfree = 0;
  pool_unref(p);
}

/* A chunk of n samples: ids, and (with_sums) room for the row checksums;
 * inputs and targets have room for n rows when rows (else whatever a
 * reused chunk had, allocated later if needed: chunk_rows). From the pool
 * when one of that size is free. NULL when out of memory (message set). */
static chunk_mem *chunk_new(serve_source *s, int n, int with_sums);
static int chunk_rows(const serve_source *s, chunk_mem *m);

static int read_split(serve_source *s) {
  const char *sp = s->o.split ? s->o.split : "train";
  int want;
  CE_TRY(job_split_parse(sp, &want));
  int64_t n = s->nsamples_total;
  uint8_t *split = ce_malloc_array((size_t)(n ? n : 1), 1, "/split");
  uint8_t *valid = ce_malloc_array((size_t)(n ? n : 1), 1, "/valid");
  int has_split = 0;
  if (!split || !valid) goto fail;
  memset(split, 0, (size_t)n);
  memset(valid, 1, (size_t)n);
  /* the labels decide which samples are served: checked as the samples are */
  if (shard_reader_labels(s->rd, 0, n, split, valid, &has_split, NULL) < 0) goto fail;
  if (want >= 0 && !has_split) {
    ce_err("%s: no /split dataset, but split '%s' was asked for", s->h5path, sp);
    goto fail;
  }
  s->split_idx = ce_malloc_array((size_t)(n ? n : 1), sizeof(int64_t), "split index");
  if (!s->split_idx) goto fail;
  s->nsplit = 0;
  for (int64_t i = 0; i < n; i++)
    if (valid[i] && (want < 0 || split[i] == want)) s->split_idx[s->nsplit++] = i;
  free(split);
  free(valid);
  if (s->nsplit == 0) CE_FAIL("%s: split '%s' has no samples", s->h5path, sp);
  return 0;
fail:
  free(split);
  free(valid);
  return -1;
}

static const int64_t *epoch_perm(serve_source *s, uint32_t epoch) {
  for (int i = 0; i < PERM_CACHE; i++)
    if (s->perm[i] && s->perm_epoch[i] == epoch) return s->perm[i];
  int k = s->perm_next;
  s->perm_next = (k + 1) % PERM_CACHE;
  int64_t *p = s->perm[k];
  if (!p) p = s->perm[k] = malloc(sizeof(int64_t) * (size_t)s->nsplit);
  if (!p) return NULL;
  s->perm_epoch[k] = epoch;
  if (s->o.live && epoch == 0) { /* live: the first epoch in generation order */
    memcpy(p, s->split_idx, sizeof(int64_t) * (size_t)s->nsplit);
    return p;
  }
  if (order_epoch(&s->plan, s->o.seed, epoch, p) < 0) {
    free(p); /* not cached: the next call tries again */
    s->perm[k] = NULL;
    return NULL;
  }
  return p;
}

/* The order of the split (order.h); shards mode needs the shard of every
 * sample: the plan's for a live dataset, the manifest's (shard_reader.h)
 * for a finished one. */
static int open_order(serve_source *s) {
  int64_t *shard = NULL, per_shard = s->spp;
  if (s->o.order.mode == ORDER_SHARDS) {
    if (!s->o.live && !s->o.external && shard_reader_shards(s->rd) == 0)
      CE_FAIL("%s: no shards behind /inputs and /targets: order shards needs a dataset made by "
              "coemu generate (use order exact)", s->h5path);
    shard = ce_malloc_array((size_t)s->nsplit, sizeof(int64_t), "the shard of every sample");
    if (!shard) return -1;
    for (int64_t k = 0; k < s->nsplit; k++) {
      int64_t idx = s->split_idx[k], sh, first, count;
      if (s->o.live || s->o.external) {
        shard[k] = idx / s->spp;
        continue;
      }
      if (shard_reader_shard_range(s->rd, idx, &sh, &first, &count) < 0) {
        free(shard);
        CE_FAIL("%s: sample %lld is in none of the shards behind /targets", s->h5path,
                (long long)idx);
      }
      shard[k] = sh;
      if (count > per_shard) per_shard = count;
    }
  }
  int rc = order_plan_init(&s->plan, &s->o.order, s->split_idx, shard, s->nsplit, per_shard);
  free(shard);
  if (rc < 0) return ce_err_prefix("%s", s->o.external ? s->o.external->name : s->o.dataset_dir);
  s->plan_open = 1;
  return 0;
}

int64_t serve_sample_at(const serve_source *cs, uint32_t epoch, int rank, uint64_t position) {
  serve_source *s = (serve_source *)cs;
  pthread_mutex_lock(&s->mu);
  const int64_t *p = epoch_perm(s, epoch);
  int64_t v = p ? p[((uint64_t)rank + position * (uint64_t)s->o.world) % (uint64_t)s->nsplit] : -1;
  pthread_mutex_unlock(&s->mu);
  return v;
}

/* Cannot fail: serve_open checked that DIR/dataset.h5 fits in 4096 bytes, and
 * DIR/shards/shard-N.h5 is at most 25 bytes longer (N has at most 19 digits);
 * callers pass 4200-byte buffers. */
static void shard_path(const serve_source *s, int64_t shard, char *buf, size_t len) {
  (void)dataset_shard_path(s->o.dataset_dir, shard, buf, len);
}

/* Live mode: is the shard holding dataset sample idx finished (renamed into
 * place)? */
static int sample_ready(const serve_source *s, int64_t idx) {
  if (!s->o.live) return 1;
  char p[4200];
  shard_path(s, idx / s->spp, p, sizeof p);
  return access(p, F_OK) == 0;
}

int serve_live_producing(void *ctx, char *why, size_t len) {
  serve_source *s = ctx;
  if (!s->o.live) return 1;
  const char *dir = s->o.dataset_dir;
  char who[256];
  int held = fs_dir_locked(dir, who, sizeof who);
  if (held < 0) {
    snprintf(why, len, "cannot tell whether coemu generate still makes %s: %s", dir, ce_err_msg());
    return -1;
  }
  if (held) {
    snprintf(why, len, "%s holds %s/.lock: its shards are served as they are made",
             who[0] ? who : "a coemu generate", dir);
    return 1;
  }
  /* free: a job that finished (or made every shard before it stopped)
   * leaves nothing to wait for. Shards are counted once each, in order: a
   * probe costs a stat of the first shard not seen yet */
  int64_t nshards = (s->nsamples_total + s->spp - 1) / s->spp;
  char p[4200] = "";
  while (s->shards_made < nshards) {
    shard_path(s, s->shards_made, p, sizeof p);
    if (access(p, F_OK) != 0) break;
    s->shards_made++;
  }
  if (s->shards_made == nshards) {
    snprintf(why, len, "every shard of %s is made", dir);
    return 1;
  }
  snprintf(why, len, "no coemu generate holds %s/.lock (the job making it was killed, failed or "
           "waits to be requeued) and %s is not made yet: the same coemu generate command resumes "
           "the job, and its shards are then served as they are made", dir, p);
  return 0;
}

static void shard_close_current(serve_source *s) {
  for (int a = 0; a < 2; a++)
    if (s->shard_d[a] >= 0) H5Dclose(s->shard_d[a]);
  if (s->shard_sums >= 0) H5Dclose(s->shard_sums);
  if (s->shard >= 0) H5Fclose(s->shard);
  s->shard = s->shard_d[0] = s->shard_d[1] = s->shard_sums = -1;
}

/* Live mode: the datasets of the shard holding sample idx, and its row there. */
static int sample_source(serve_source *s, int64_t idx, hid_t ds[2], hsize_t *at) {
  int64_t sh = idx / s->spp;
  if (sh != s->shard_idx || s->shard < 0) {
    shard_close_current(s);
    char p[4200];
    shard_path(s, sh, p, sizeof p);
    s->shard = H5Fopen(p, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (s->shard < 0) return ce_err_open(p, "as HDF5");
    s->shard_d[0] = H5Dopen2(s->shard, "inputs", H5P_DEFAULT);
    s->shard_d[1] = H5Dopen2(s->shard, "targets", H5P_DEFAULT);
    s->shard_sums = H5Lexists(s->shard, "checksums", H5P_DEFAULT) > 0
                        ? H5Dopen2(s->shard, "checksums", H5P_DEFAULT) : -1;
    s->shard_idx = sh;
    if (s->shard_d[0] < 0 || s->shard_d[1] < 0) {
      shard_close_current(s);
      CE_FAIL("%s: no /inputs and /targets", p);
    }
  }
  ds[0] = s->shard_d[0];
  ds[1] = s->shard_d[1];
  *at = (hsize_t)(idx - sh * s->spp);
  return 0;
}

static int read_samples(serve_source *s, const int64_t *idx, int n, int normalised,
                        float *inputs, float *targets, uint64_t *sums);
static int read_finished(serve_source *s, const int64_t *idx, int n, float *inputs,
                         float *targets, uint64_t *sums);
static int read_mapped(serve_source *s, const int64_t *idx, int n, chunk_mem *m);
static int read_mapped_rows(serve_source *s, const int64_t *idx, int n, chunk_mem *m);
static void row_map_release(void *token) { shard_map_release(token); }
static int slot_indices(serve_source *s, const slot *q, int64_t *idx);
static int serve_cores(void);
static void slot_done(serve_source *s, slot *q, chunk_mem *m, int rc);

/* Read (and normalise) one chunk; called by the reader thread, mutex NOT held. */
static chunk_mem *chunk_new(serve_source *s, int n, int with_sums) {
  chunk_mem *m = NULL;
  chunk_pool *p = s->pool;
  pthread_mutex_lock(&p->mu);
  for (int i = p->nfree - 1; i >= 0 && !m; i--) /* the most recently freed: warmest */
    if (p->free[i]->cap_n == n) {
      m = p->free[i];
      p->free[i] = p->free[--p->nfree];
    }
  *(m ? &p->reused : &p->made) += 1;
  p->refs++; /* the chunk's, given back by chunk_free */
  pthread_mutex_unlock(&p->mu);
  if (!m) {
    m = calloc(1, sizeof *m);
    if (m) {
      m->pool = p;
      m->cap_n = n;
      m->ids = ce_malloc_array((size_t)n, 8, "chunk ids");
    }
    if (!m || !m->ids) {
      if (m) free(m);
      pthread_mutex_lock(&p->mu);
      pool_unref(p);
      ce_err("out of memory for a chunk of %d samples", n);
      return NULL;
    }
  }
  m->in_view = m->tg_view = NULL;
  m->nrows = m->given_rows = 0;
  m->sums = NULL;
  if (with_sums) {
    if (!m->sums_buf)
      m->sums_buf = ce_malloc_array((size_t)n, 2 * sizeof(uint64_t), "chunk checksums");
    if (!m->sums_buf) {
      chunk_free(m);
      return NULL;
    }
    m->sums = m->sums_buf;
  }
  return m;
}

static int chunk_rows(const serve_source *s, chunk_mem *m) {
  if (!m->inputs) m->inputs = ce_malloc_array((size_t)m->cap_n * s->in_vals, 4, "chunk inputs");
  if (!m->targets)
    m->targets = ce_malloc_array((size_t)m->cap_n * s->out_vals, 4, "chunk targets");
  return m->inputs && m->targets ? 0 : -1;
}

static int read_chunk(serve_source *s, const int64_t *idx, int n, int normalised,
                      chunk_mem **out) {
  /* the reader's verified row checksums go on the wire as they are; live,
   * external or normalised rows are hashed by the stream server */
  int forward = !s->o.live && !s->o.external && !normalised;
  chunk_mem *m = chunk_new(s, n, forward);
  if (!m) return -1;
  /* raw rows of a finished dataset that lie back to back in one mapped
   * shard (every chunk of one sample) are sent from the mapping itself */
  int mapped = forward && !s->o.copy_rows ? read_mapped(s, idx, n, m) : 0;
  /* a sender of row frames: the rows of any shards, each from its mapping */
  if (!mapped && forward && !s->o.copy_rows && s->o.row_views)
    mapped = read_mapped_rows(s, idx, n, m);
  if (mapped < 0 ||
      (!mapped && (chunk_rows(s, m) < 0 ||
                   read_samples(s, idx, n, normalised, m->inputs, m->targets, m->sums) < 0))) {
    chunk_free(m);
    return -1;
  }
  for (int k = 0; k < n; k++) m->ids[k] = (uint64_t)idx[k];
  *out = m;
  return 0;
}

static slot *find_slot(serve_source *s, int rank, uint32_t epoch, uint64_t pos, int norm) {
  for (int i = 0; i < s->nslots; i++) {
    slot *q = &s->slots[i];
    if (q->state != SLOT_FREE && q->rank == rank && q->epoch == epoch && q->position == pos &&
        q->normalised == norm)
      return q;
  }
  return NULL;
}

static slot *free_slot(serve_source *s) {
  for (int i = 0; i < s->nslots; i++)
    if (s->slots[i].state == SLOT_FREE) return &s->slots[i];
  return NULL;
}

/* The k-th chunk (0 <= k < prefetch) of the read-ahead window of cursor cu:
 * the positions after the last one asked for, running on from the end of
 * the epoch into the next one, where the stream goes on (stream_server:
 * after EPOCH_END the consumer's next chunk is (epoch + 1, 0)), but not past
 * the last epoch of the run (serve_opts.epochs) nor more than an epoch ahead.
 * 0 (*epoch, *pos), or -1: no such chunk. */
static int window_chunk(const serve_source *s, const cursor *cu, int k, uint32_t *epoch,
                        uint64_t *pos) {
  uint64_t p = cu->next + (uint64_t)k * (uint64_t)s->o.batch;
  uint32_t e = cu->epoch;
  if (p >= s->per_rank) {
    p -= s->per_rank;
    if (p >= s->per_rank || e == UINT32_MAX || (s->o.epochs && e + 1 >= s->o.epochs)) return -1;
    e++;
  }
  *epoch = e;
  *pos = p;
  return 0;
}

/* Is slot q one a consumer still wants: in the read-ahead window of its
 * rank's cursor? (mutex held) */
static int slot_wanted(const serve_source *s, const slot *q) {
  if (q->rank < 0 || q->rank >= s->o.world) return 0;
  const cursor *cu = &s->cursors[q->rank];
  if (!cu->active || q->normalised != cu->normalised) return 0;
  uint32_t e;
  uint64_t p;
  for (int k = 0; k < s->o.prefetch && window_chunk(s, cu, k, &e, &p) == 0; k++)
    if (q->epoch == e && q->position == p) return 1;
  return 0;
}

static void slot_release(slot *q) {
  chunk_free(q->buf);
  q->buf = NULL; /* serve_close frees what the slots still hold */
  q->state = SLOT_FREE;
}

/* Free every slot read (or asked) for a place no cursor wants any more: its
 * consumer left, or resumed elsewhere. A slot being read is left to the
 * reader; it is evicted once read. (mutex held) */
static void evict_stale(serve_source *s, const slot *keep) {
  for (int i = 0; i < s->nslots; i++) {
    slot *q = &s->slots[i];
    if (q != keep && (q->state == SLOT_READY || q->state == SLOT_WANTED) && !slot_wanted(s, q))
      slot_release(q);
  }
}

void serve_leave(void *ctx, const stream_consumer *c) {
  serve_source *s = ctx;
  if (c->rank >= s->o.world) return;
  pthread_mutex_lock(&s->mu);
  s->cursors[c->rank].active = 0;
  evict_stale(s, NULL);
  pthread_mutex_unlock(&s->mu);
}

/* The reader's next job (mutex held): an explicit request first, then
 * prefetch for each active consumer. */
/* Live mode: are all samples of this chunk in finished shards? (mutex held) */
static int chunk_ready(serve_source *s, const slot *q) {
  if (!s->o.live) return 1;
  const int64_t *p = epoch_perm(s, q->epoch);
  if (!p) return 1; /* the read reports the error */
  for (int k = 0; k < s->o.batch; k++)
    if (!sample_ready(s, p[((uint64_t)q->rank + (q->position + (uint64_t)k) * (uint64_t)s->o.world) %
                         (uint64_t)s->nsplit]))
      return 0;
  return 1;
}

static slot *next_job(serve_source *s) {
  for (int i = 0; i < s->nslots; i++)
    if (s->slots[i].state == SLOT_WANTED && chunk_ready(s, &s->slots[i])) return &s->slots[i];
  /* nearest first across the consumers' windows (the k-th chunk of every
   * rank before the (k+1)-th of any), so no rank's read-ahead starves the
   * others' next chunk */
  for (int k = 0; k < s->o.prefetch; k++)
    for (int r = 0; r < s->o.world; r++) {
      cursor *c = &s->cursors[r];
      uint32_t e;
      uint64_t pos;
      if (!c->active || window_chunk(s, c, k, &e, &pos) < 0) continue;
      if (find_slot(s, r, e, pos, c->normalised)) continue;
      slot *q = free_slot(s);
      if (!q) return NULL;
      *q = (slot){.state = SLOT_WANTED, .rank = r, .epoch = e, .position = pos,
                  .normalised = c->normalised};
      if (chunk_ready(s, q)) return q;
    }
  return NULL;
}

static void timed_wait(pthread_cond_t *cv, pthread_mutex_t *mu, long ms) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_nsec += ms * 1000000L;
  while (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
  pthread_cond_timedwait(cv, mu, &ts);
}

static void *reader_loop(void *arg) {
  serve_source *s = arg;
  pthread_mutex_lock(&s->mu);
  while (!s->stop) {
    slot *q = next_job(s);
    if (!q) {
      if (s->o.live) { /* shards appear on disk: look again shortly */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 200000000;
        if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
        pthread_cond_timedwait(&s->cv_reader, &s->mu, &ts);
      } else
        pthread_cond_wait(&s->cv_reader, &s->mu);
      continue;
    }
    q->state = SLOT_READING;
    int n = s->o.batch;
    int64_t idx[4096];
    int have = slot_indices(s, q, idx) == 0;
    int norm = q->normalised;
    pthread_mutex_unlock(&s->mu);
    chunk_mem *m = NULL;
    ce_err_clear();
    int rc = have ? read_chunk(s, idx, n, norm, &m) : ce_err("out of memory for the shuffle");
    pthread_mutex_lock(&s->mu);
    slot_done(s, q, m, rc);
  }
  pthread_mutex_unlock(&s->mu);
  return NULL;
}

/* The dataset indices of slot q's chunk into idx (mutex held). 0, or -1
 * (out of memory for the epoch's order). */
static int slot_indices(serve_source *s, const slot *q, int64_t *idx) {
  const int64_t *p = epoch_perm(s, q->epoch);
  if (!p) return -1;
  for (int k = 0; k < s->o.batch; k++)
    idx[k] = p[((uint64_t)q->rank + (q->position + (uint64_t)k) * (uint64_t)s->o.world) %
               (uint64_t)s->nsplit];
  return 0;
}

static void normalise_rows(const serve_source *s, int n, float *inputs, float *targets);

/* An external source's chunk: its ids and room for its samples. */
static chunk_mem *external_chunk_new(serve_source *s, const int64_t *idx, int n) {
  chunk_mem *m = chunk_new(s, n, 0);
  if (!m) return NULL;
  if (chunk_rows(s, m) < 0) {
    chunk_free(m);
    return NULL;
  }
  for (int k = 0; k < n; k++) m->ids[k] = (uint64_t)idx[k];
  return m;
}

/* A slot's read is over: its chunk, or the message that failed it
 * (mutex held). */
static void slot_done(serve_source *s, slot *q, chunk_mem *m, int rc) {
  q->failed = rc < 0;
  if (rc < 0) {
    snprintf(q->err, sizeof q->err, "%s", ce_err_msg());
    chunk_free(m);
    m = NULL;
  }
  q->buf = m;
  q->state = SLOT_READY;
  pthread_cond_broadcast(&s->cv_ready);
}

/* The reader of an external source (serve --generate: one thread, the only
 * one that calls the source). It submits every chunk of the consumers'
 * read-ahead windows (next_job), nearest first, and collects them oldest
 * first, so the source works on the next chunks, across chunk and epoch
 * boundaries, while a chunk's last samples are made; chunks are still
 * ready, and sent, in order. A chunk being made that no consumer waits for
 * nor has in its window any more (it left, or resumed elsewhere) is
 * cancelled. The chunks being made are the slots' memory (SLOT_READING),
 * so the bound is that of the slots: world x (prefetch + 1) + 2 chunks. */
static void *external_loop(void *arg) {
  serve_source *s = arg;
  const serve_external *x = s->o.external;
  pthread_mutex_lock(&s->mu);
  while (!s->stop) {
    slot *q;
    while (!s->stop && (q = next_job(s))) {
      int64_t idx[4096];
      const int n = s->o.batch;
      int rc = slot_indices(s, q, idx);
      q->state = SLOT_READING;
      q->ticket = ++s->tickets;
      uint32_t ep = q->epoch;
      uint64_t t = q->ticket;
      pthread_mutex_unlock(&s->mu);
      ce_err_clear();
      chunk_mem *m = NULL;
      if (rc < 0)
        rc = ce_err("out of memory for the shuffle");
      else if (!(m = external_chunk_new(s, idx, n)))
        rc = ce_err("out of memory for a chunk of %d samples", n);
      else
        rc = x->submit(x->ctx, t, ep, idx, n, m->inputs, m->targets);
      pthread_mutex_lock(&s->mu);
      if (rc < 0)
        slot_done(s, q, m, rc);
      else
        q->buf = m; /* written by the source until collected or cancelled */
    }
    slot *oldest = NULL;
    for (int i = 0; i < s->nslots; i++) {
      slot *r = &s->slots[i];
      if (r->state != SLOT_READING) continue;
      if (!r->claimed && !slot_wanted(s, r)) { /* nobody will ask for it */
        x->cancel(x->ctx, r->ticket);
        slot_release(r);
      } else if (!oldest || r->ticket < oldest->ticket) {
        oldest = r;
      }
    }
    if (!oldest) {
      if (!s->stop) pthread_cond_wait(&s->cv_reader, &s->mu);
      continue;
    }
    chunk_mem *m = oldest->buf;
    uint64_t t = oldest->ticket;
    int norm = oldest->normalised;
    pthread_mutex_unlock(&s->mu);
    ce_err_clear();
    int rc = x->collect(x->ctx, t);
    if (rc == 0 && norm) normalise_rows(s, s->o.batch, m->inputs, m->targets);
    pthread_mutex_lock(&s->mu);
    slot_done(s, oldest, m, rc);
  }
  /* the source writes into no slot after this */
  for (int i = 0; i < s->nslots; i++)
    if (s->slots[i].state == SLOT_READING) x->cancel(x->ctx, s->slots[i].ticket);
  pthread_mutex_unlock(&s->mu);
  return NULL;
}

int serve_chunk(void *ctx, const stream_consumer *c, uint32_t epoch, uint64_t position,
                stream_chunk *out) {
  serve_source *s = ctx;
  if (c->world != s->o.world || c->rank >= s->o.world)
    CE_FAIL("consumer says it is rank %u of %u ranks, the producer serves %d", c->rank, c->world,
            s->o.world);
  int norm = c->flags & 1;
  uint32_t want = (c->flags & SERVE_FLAG_ORDER_MASK) >> SERVE_FLAG_ORDER_SHIFT;
  if (want > ORDER_SHARDS + 1)
    CE_FAIL("the consumer asks for order %u (HELLO flags bits 1-2): expected 0 (any), 1 (exact) "
            "or 2 (shards)", want);
  if (want && (int)want - 1 != s->plan.mode)
    CE_FAIL("the consumer asks for order %s, the producer serves order %s (coemu serve --order %s)",
            order_mode_name((int)want - 1), order_mode_name(s->plan.mode),
            order_mode_name((int)want - 1));
  if (norm && !s->have_norm) {
    if (s->o.external)
      CE_FAIL("%s: no normalisation: coemu serve --generate was started without one (give it "
              "--pilot N or --stats PILOT, docs/onthefly.md)", s->o.external->name);
    CE_FAIL("%s has no /stats group: %s", s->h5path,
            s->o.live ? "normalised data are not available while the dataset is being made"
                      : "run `coemu stats` on it before asking for normalised data");
  }
  if (position >= s->per_rank) return 0;
  if (position % (uint64_t)s->o.batch)
    CE_FAIL("position %llu is not a multiple of the batch (%d)", (unsigned long long)position,
            s->o.batch);
  pthread_mutex_lock(&s->mu);
  cursor *cu = &s->cursors[c->rank];
  cu->active = 1;
  cu->epoch = epoch;
  cu->normalised = norm;
  cu->next = position + (uint64_t)s->o.batch;
  slot *q = find_slot(s, c->rank, epoch, position, norm);
  /* forget what no consumer needs any more (this rank resumed elsewhere,
   * another rank's consumer left): slots never fill with stale chunks */
  evict_stale(s, q);
  if (!q) {
    /* the cursors' windows hold at most W x prefetch slots, so a slot is
     * free, or one being read out of every window frees up once read */
    q = free_slot(s);
    while (!q) {
      if (s->o.live) { /* the producer asks again, and serves others meanwhile */
        pthread_mutex_unlock(&s->mu);
        return STREAM_SOURCE_WAIT;
      }
      timed_wait(&s->cv_ready, &s->mu, 100);
      evict_stale(s, NULL);
      q = free_slot(s);
    }
    *q = (slot){.state = SLOT_WANTED, .rank = c->rank, .epoch = epoch, .position = position,
                .normalised = norm};
  }
  q->claimed = 1; /* an external source's reader does not cancel it */
  pthread_cond_signal(&s->cv_reader);
  if (s->o.live && q->state != SLOT_READY) { /* not made yet: the producer asks again */
    pthread_mutex_unlock(&s->mu);
    return STREAM_SOURCE_WAIT;
  }
  while (q->state != SLOT_READY) timed_wait(&s->cv_ready, &s->mu, 100); /* a read in progress */
  chunk_mem *m = q->buf;
  int failed = q->failed;
  char err[512];
  memcpy(err, q->err, sizeof err);
  q->state = SLOT_FREE;
  q->buf = NULL;
  pthread_cond_signal(&s->cv_reader); /* a slot is free: prefetch on */
  pthread_mutex_unlock(&s->mu);
  if (failed) CE_FAIL("%s", err);
  out->nsamples = (uint32_t)s->o.batch;
  out->ids = m->ids;
  out->sums = m->sums;
  out->inputs = m->hold ? m->in_view : m->inputs;
  out->targets = m->hold ? m->tg_view : m->targets;
  out->in_rows = out->tg_rows = NULL;
  out->row_release = NULL;
  out->row_tokens = NULL;
  if (m->nrows) { /* row by row: the server drops each row's references with its frames */
    out->inputs = out->targets = NULL;
    out->in_rows = m->in_rows;
    out->tg_rows = m->tg_rows;
    out->row_release = row_map_release;
    out->row_tokens = m->holds;
    m->given_rows = 1;
  }
  memcpy(out->in_shape, s->in_shape, sizeof s->in_shape);
  memcpy(out->out_shape, s->out_shape, sizeof s->out_shape);
  out->flags = (uint32_t)norm;
  out->release = chunk_free;
  out->token = m;
  return 1;
}

/* A finished dataset: DIR/manifest.json and DIR/dataset.h5. */
static int open_finished(serve_source *s) {
  char mpath[4096];
  const char *hint = s->o.unfinished_hint ? s->o.unfinished_hint : "serve a running job with --live";
  CE_TRY(dataset_require_finished(s->o.dataset_dir, hint)); /* what the folder is, if no dataset.h5 */
  snprintf(mpath, sizeof mpath, "%s/manifest.json", s->o.dataset_dir);
  if (access(mpath, F_OK) != 0) {
    ce_err("%s: cannot open: %s", mpath, strerror(errno));
    return ce_err_prefix("%s is not a finished dataset (%s)", s->o.dataset_dir, hint);
  }
  CE_TRY(serve_dataset_dir_id(s->o.dataset_dir, &s->dataset_id));
  /* samples come from the shards themselves (shard_reader.h), never
   * through dataset.h5's virtual datasets */
  CE_TRY(shard_reader_open(s->o.dataset_dir, s->o.max_open, &s->rd));
  if (!shard_reader_has_inputs(s->rd))
    CE_FAIL("%s: no /inputs dataset (the job does not store inputs: nothing to stream)",
            s->h5path);
  uint32_t n = (uint32_t)shard_reader_n(s->rd), nf = (uint32_t)shard_reader_channels(s->rd);
  s->nsamples_total = shard_reader_samples(s->rd);
  s->in_shape[0] = 3;
  s->in_shape[1] = s->in_shape[2] = s->in_shape[3] = n;
  s->out_shape[0] = nf;
  s->out_shape[1] = s->out_shape[2] = n;
  s->in_vals = 3 * (size_t)n * n * n;
  s->out_vals = (size_t)nf * n * n;
  CE_TRY(read_split(s));
  hid_t f = H5Fopen(s->h5path, H5F_ACC_RDONLY, H5P_DEFAULT); /* /stats: no virtual dataset opened */
  if (f < 0) return ce_err_open(s->h5path, "as HDF5");
  s->have_norm = H5Lexists(f, "stats", H5P_DEFAULT) > 0;
  H5Fclose(f);
  return 0;
}

/* Another source (serve_external): its split, shapes, id and norm. */
static int open_external(serve_source *s) {
  const serve_external *x = s->o.external;
  snprintf(s->h5path, sizeof s->h5path, "%s", x->name ? x->name : "(samples made on the fly)");
  s->nsamples_total = x->samples;
  s->spp = x->per_shard > 0 ? x->per_shard : 1;
  memcpy(s->in_shape, x->in_shape, sizeof s->in_shape);
  memcpy(s->out_shape, x->out_shape, sizeof s->out_shape);
  s->in_vals = (size_t)x->in_shape[0] * x->in_shape[1] * x->in_shape[2] * x->in_shape[3];
  s->out_vals = (size_t)x->out_shape[0] * x->out_shape[1] * x->out_shape[2];
  s->dataset_id = x->dataset_id;
  if (x->norm) s->norm = *x->norm;
  if (x->nsplit <= 0) CE_FAIL("%s: split '%s' has no samples", s->h5path, s->o.split ? s->o.split : "train");
  s->split_idx = ce_malloc_array((size_t)x->nsplit, sizeof(int64_t), "split index");
  if (!s->split_idx) return -1;
  memcpy(s->split_idx, x->split, sizeof(int64_t) * (size_t)x->nsplit);
  s->nsplit = x->nsplit;
  return 0;
}

/* Live: the plan of a dataset being generated (DIR/plan.json). */
static int open_live(serve_source *s) {
  char path[4200], *text;
  size_t len;
  snprintf(path, sizeof path, "%s/plan.json", s->o.dataset_dir);
  if (fs_read_all(path, &text, &len) < 0)
    return ce_err_prefix("%s: no sample plan: is coemu generate running there?", s->o.dataset_dir);
  yt_node *root = yt_parse(path, text, len);
  free(text);
  if (!root) return -1;
  const char *keys[7] = {"samples", "samples_per_shard", "directions", "n", "channels",
                         "store_inputs", "skip_bad_models"};
  int64_t v[7];
  int rc = 0;
  for (int i = 0; i < 7 && rc == 0; i++) {
    const yt_node *x = yt_get(root, keys[i]);
    if (!x || x->kind != YT_SCALAR || cli_parse_int(x->text, &v[i]) < 0 || v[i] < 0)
      rc = ce_err("%s: '%s' missing or not a whole number", path, keys[i]);
  }
  const yt_node *ms = yt_get(root, "model_split");
  if (rc == 0 && (!ms || ms->kind != YT_SEQ || v[1] < 1 || v[2] < 1 || v[3] < 1 || v[4] < 1 ||
                  (int64_t)ms->n * v[2] != v[0]))
    rc = ce_err("%s: inconsistent plan", path);
  if (rc == 0 && !v[5]) rc = ce_err("%s: the job does not store inputs: nothing to stream", path);
  if (rc == 0 && v[6])
    rc = ce_err("%s: the job skips bad models (on_bad_model: skip); a live stream cannot know "
                "in advance which samples will be missing", path);
  if (rc == 0) {
    s->nsamples_total = v[0];
    s->spp = v[1];
    s->in_shape[0] = 3;
    s->in_shape[1] = s->in_shape[2] = s->in_shape[3] = (uint32_t)v[3];
    s->out_shape[0] = (uint32_t)v[4];
    s->out_shape[1] = s->out_shape[2] = (uint32_t)v[3];
    s->in_vals = 3 * (size_t)v[3] * v[3] * v[3];
    s->out_vals = (size_t)v[4] * v[3] * v[3];
    const char *sp = s->o.split ? s->o.split : "train";
    int want = SPLIT_ALL;
    rc = job_split_parse(sp, &want);
    s->split_idx = rc ? NULL : ce_malloc_array((size_t)(v[0] ? v[0] : 1), sizeof(int64_t), "split index");
    if (!rc && !s->split_idx) rc = -1;
    for (int64_t i = 0; rc == 0 && i < v[0]; i++) {
      int64_t split;
      const yt_node *x = ms->items[i / v[2]];
      if (x->kind != YT_SCALAR || cli_parse_int(x->text, &split) < 0)
        rc = ce_err("%s: model_split[%lld] is not a number", path, (long long)(i / v[2]));
      else if (want < 0 || split == want)
        s->split_idx[s->nsplit++] = i;
    }
    if (rc == 0 && s->nsplit == 0) rc = ce_err("%s: split '%s' has no samples", path, sp);
  }
  yt_free(root);
  CE_TRY(rc);
  /* the dataset id: the job's text, the same the finished dataset announces */
  snprintf(path, sizeof path, "%s/job.yaml", s->o.dataset_dir);
  if (access(path, F_OK) != 0) CE_FAIL("%s: cannot open: %s", path, strerror(errno));
  return serve_dataset_dir_id(s->o.dataset_dir, &s->dataset_id);
}

int serve_dataset_dir_id(const char *dir, uint64_t *id) {
  /* the job identifies its data (live or finished, wherever the directory
     lies); a dataset without its job (made by hand) by its manifest */
  char path[4200], *text;
  size_t len;
  snprintf(path, sizeof path, "%s/job.yaml", dir);
  if (access(path, F_OK) != 0) snprintf(path, sizeof path, "%s/manifest.json", dir);
  CE_TRY(fs_read_all(path, &text, &len));
  *id = ce_xxh64(text, len, 0);
  free(text);
  return 0;
}

int serve_open(const serve_opts *o, serve_source **out) {
  serve_source *s = calloc(1, sizeof *s);
  if (!s) CE_FAIL("out of memory");
  s->o = *o;
  s->shard = s->shard_d[0] = s->shard_d[1] = s->shard_sums = -1;
  s->shard_idx = -1;
  if (s->o.batch <= 0) s->o.batch = 16;
  if (s->o.prefetch <= 0) s->o.prefetch = 4;
  if (s->o.read_threads <= 0) s->o.read_threads = serve_default_read_threads();
  pthread_mutex_init(&s->mu, NULL);
  pthread_cond_init(&s->cv_reader, NULL);
  pthread_cond_init(&s->cv_ready, NULL);
  if (s->o.world < 1 || s->o.world > 65535 || s->o.batch > 4096 ||
      s->o.read_threads > SERVE_MAX_READ_THREADS) {
    serve_close(s);
    CE_FAIL("serve: ranks must be 1..65535, the batch 1..4096 and the reader threads 1..%d",
            SERVE_MAX_READ_THREADS);
  }
  /* the shard paths (shard_path) fit their 4200-byte buffers once this fits */
  if (!o->external && (size_t)snprintf(s->h5path, sizeof s->h5path, "%s/dataset.h5", o->dataset_dir) >=
      sizeof s->h5path) {
    serve_close(s);
    CE_FAIL("%.64s...: dataset path too long", o->dataset_dir);
  }
  h5_lock();
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  int opened = o->external ? open_external(s) : o->live ? open_live(s) : open_finished(s);
  h5_unlock();
  if (opened < 0 || open_order(s) < 0) {
    serve_close(s);
    return -1;
  }
  uint64_t m = (uint64_t)s->nsplit, w = (uint64_t)s->o.world, b = (uint64_t)s->o.batch;
  uint64_t pr = s->o.drop_last ? m / w : (m + w - 1) / w;
  s->per_rank = s->o.drop_last ? pr / b * b : (pr + b - 1) / b * b;
  if (s->per_rank == 0) {
    ce_err("%s: split '%s' has %llu samples: not one batch of %d for each of %d ranks", s->h5path,
           o->split ? o->split : "train", (unsigned long long)m, s->o.batch, o->world);
    serve_close(s);
    return -1;
  }
  h5_lock();
  int has_stats = !o->live && !o->external && s->have_norm;
  int norm_rc = has_stats ? stats_file_read_norm(s->h5path, &s->norm) : 0;
  h5_unlock();
  if (norm_rc < 0) {
    serve_close(s);
    return -1;
  }
  s->have_norm = has_stats || (o->external && o->external->norm);
  s->nslots = s->o.world * (s->o.prefetch + 1) + 2;
  s->slots = calloc((size_t)s->nslots, sizeof *s->slots);
  s->cursors = calloc((size_t)s->o.world, sizeof *s->cursors);
  /* live: one reader (it reads through HDF5 row by row, one shard open);
   * an external source (serve --generate): one reader, external_loop */
  s->nthreads = o->live || o->external ? 1 : s->o.read_threads;
  /* images-only: each reader rebuilds its own chunk's cubes outside the
   * HDF5 lock (read_finished) on its share of the cores, so the readers
   * together keep every core busy across chunk boundaries */
  s->rebuild_threads = serve_cores() / s->nthreads;
  if (s->rebuild_threads < 1) s->rebuild_threads = 1;
  s->threads = calloc((size_t)s->nthreads, sizeof *s->threads);
  s->pool = chunk_pool_create(s->nslots); /* keeps at most a read-ahead's worth free */
  if (!s->slots || !s->cursors || !s->threads || !s->pool) {
    serve_close(s);
    CE_FAIL("out of memory");
  }
  for (int i = 0; i < s->nthreads; i++) {
    if (pthread_create(&s->threads[i], NULL, o->external ? external_loop : reader_loop, s) != 0) {
      serve_close(s);
      CE_FAIL("serve: cannot start reader thread %d of %d", i + 1, s->nthreads);
    }
    s->started = i + 1;
  }
  *out = s;
  return 0;
}

void serve_close(serve_source *s) {
  if (!s) return;
  if (s->started) {
    pthread_mutex_lock(&s->mu);
    s->stop = 1;
    pthread_cond_broadcast(&s->cv_reader);
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; i < s->started; i++) pthread_join(s->threads[i], NULL);
  }
  free(s->threads);
  for (int i = 0; i < s->nslots; i++) chunk_free(s->slots[i].buf);
  chunk_pool_close(s->pool); /* chunks still queued in ZeroMQ free it when released */
  free(s->slots);
  free(s->cursors);
  for (int i = 0; i < PERM_CACHE; i++) free(s->perm[i]);
  if (s->plan_open) order_plan_free(&s->plan);
  free(s->split_idx);
  h5_lock();
  shard_close_current(s);
  shard_reader_close(s->rd);
  h5_unlock();
  pthread_mutex_destroy(&s->mu);
  pthread_cond_destroy(&s->cv_reader);
  pthread_cond_destroy(&s->cv_ready);
  free(s);
}

/* The cores this process may run on. */
static int serve_cores(void) {
  long c = sysconf(_SC_NPROCESSORS_ONLN);
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) c = CPU_COUNT(&set);
  return c < 1 ? 1 : c > 4096 ? 4096 : (int)c;
}

int serve_default_read_threads(void) {
  int c = serve_cores();
  return c > 4 ? 4 : c;
}

uint64_t serve_dataset_id(const serve_source *s) { return s->dataset_id; }
uint64_t serve_samples_per_rank(const serve_source *s) { return s->per_rank; }
uint64_t serve_split_size(const serve_source *s) { return (uint64_t)s->nsplit; }
const order_plan *serve_order(const serve_source *s) { return &s->plan; }

int64_t serve_split_sample(const serve_source *s, int64_t k) {
  return k >= 0 && k < s->nsplit ? s->split_idx[k] : -1;
}

void serve_shapes(const serve_source *s, uint32_t in_shape[4], uint32_t out_shape[3]) {
  memcpy(in_shape, s->in_shape, sizeof s->in_shape);
  memcpy(out_shape, s->out_shape, sizeof s->out_shape);
}

void serve_open_shards(const serve_source *s, int *now, int *peak) {
  serve_source *m = (serve_source *)s;
  h5_lock(); /* the reader thread changes them */
  *now = m->rd ? shard_reader_open_now(m->rd) : 0;
  *peak = m->rd ? shard_reader_open_peak(m->rd) : 0;
  h5_unlock();
}

void serve_read_counts(const serve_source *s, uint64_t *direct, uint64_t *hdf5, uint64_t *mapped) {
  h5_lock(); /* the readers count under it */
  *direct = s->rows_direct;
  *hdf5 = s->rows_hdf5;
  if (mapped) *mapped = s->rows_mapped;
  h5_unlock();
}

void serve_pool_counts(const serve_source *s, uint64_t *made, uint64_t *reused) {
  pthread_mutex_lock(&s->pool->mu);
  *made = s->pool->made;
  *reused = s->pool->reused;
  pthread_mutex_unlock(&s->pool->mu);
}

const stats_norm *serve_norm(const serve_source *s) { return s->have_norm ? &s->norm : NULL; }

int serve_rebuild_counters(const serve_source *s, int64_t *cubes, double *cpu_s, double *load_s,
                           int64_t *loads) {
  if (s->o.live || !s->rd) return -1;
  return shard_reader_rebuild_counters(s->rd, cubes, cpu_s, load_s, loads); /* its own lock */
}

/* An images-only dataset's samples idx[0..n): the targets and the recorded
 * input checksums under the HDF5 lock, then the input cubes rebuilt and
 * checked without it, on this reader's share of the cores, while the other
 * readers read or rebuild their own chunks. */
static int read_rebuilt(serve_source *s, const int64_t *idx, int n, float *inputs,
                        float *targets, uint64_t *sums) {
  uint64_t *want = ce_malloc_array((size_t)(n ? n : 1), sizeof *want, "input checksums");
  if (!want) return -1;
  h5_lock();
  int rc = shard_reader_read_list_want(s->rd, idx, n, targets, sums, want);
  if (rc == 0) s->rows_hdf5 += (uint64_t)n;
  h5_unlock();
  if (rc == 0) rc = shard_reader_rebuild_list(s->rd, idx, n, s->rebuild_threads, want, inputs, sums);
  free(want);
  return rc;
}

/* A finished dataset's samples idx[0..n), each checked: planned under the
 * HDF5 lock, read and checked without it where the shard allows
 * (shard_reader_direct_*), else through HDF5 (runs of consecutive rows of
 * one shard in one read). */
static int read_finished(serve_source *s, const int64_t *idx, int n, float *inputs,
                         float *targets, uint64_t *sums) {
  if (shard_reader_images_only(s->rd)) return read_rebuilt(s, idx, n, inputs, targets, sums);
  shard_direct_row *rows = ce_malloc_array((size_t)n, sizeof *rows, "read plan");
  if (!rows) return -1;
  int rc = 0;
  for (int k = 0; k < n && rc == 0;) {
    float *in = inputs + (size_t)k * s->in_vals, *tg = targets + (size_t)k * s->out_vals;
    uint64_t *sm = sums ? sums + 2 * (size_t)k : NULL;
    int direct = 0;
    h5_lock();
    int m = shard_reader_direct_plan(s->rd, idx + k, n - k, rows, &direct);
    if (m > 0 && !direct) rc = shard_reader_read_list_sums(s->rd, idx + k, m, in, tg, sm);
    if (m > 0) *(direct ? &s->rows_direct : &s->rows_hdf5) += (uint64_t)m;
    h5_unlock();
    if (m < 0) rc = -1;
    if (m > 0 && direct) {
      rc = shard_reader_direct_read(s->rd, rows, m, in, tg, sm);
      h5_lock();
      shard_reader_direct_end(s->rd, rows, m);
      h5_unlock();
    }
    k += m > 0 ? m : 0;
  }
  free(rows);
  return rc;
}

/* Zero copy (shard_reader.h): the n samples of a chunk as views of their
 * mapped shard when the plan reads them all directly and they lie back to
 * back in one mapped shard file. 1: m->in_view, tg_view, hold and sums set,
 * every row checked; 0: not so (the caller reads a copy); -1 on error (the
 * damaged or truncated shard named). */
static int read_mapped(serve_source *s, const int64_t *idx, int n, chunk_mem *m) {
  if (!s->rd || shard_reader_images_only(s->rd)) return 0; /* inputs rebuilt: read_rebuilt */
  /* rows back to back in one shard are consecutive samples: a shuffled
   * chunk is not planned here and again by read_finished */
  for (int k = 1; k < n; k++)
    if (idx[k] != idx[0] + k) return 0;
  shard_direct_row *rows = ce_malloc_array((size_t)n, sizeof *rows, "read plan");
  if (!rows) return -1;
  int direct = 0;
  h5_lock();
  int k = shard_reader_direct_plan(s->rd, idx, n, rows, &direct);
  if (k > 0 && direct && k < n) shard_reader_direct_end(s->rd, rows, k);
  h5_unlock();
  int rc = 0;
  if (k < 0) rc = -1;
  if (k == n && direct) {
    rc = shard_reader_direct_map(s->rd, rows, n, &m->in_view, &m->tg_view, m->sums, &m->hold);
    h5_lock();
    shard_reader_direct_end(s->rd, rows, n);
    if (rc > 0) s->rows_direct += (uint64_t)n, s->rows_mapped += (uint64_t)n;
    h5_unlock();
  }
  free(rows);
  return rc;
}

/* Zero copy row by row (serve_opts.row_views): the n samples of a chunk,
 * in any order and any shards, each as a view of its own mapped shard,
 * planned in as many pieces as the plan takes (each piece's shards pinned
 * only while its rows are checked and referenced). 1: m->in_rows, tg_rows,
 * holds, nrows and sums set, every row checked; 0: some row cannot be
 * (not read directly, not mapped: the caller reads a copy; nothing held);
 * -1 on error (the damaged or truncated shard named; nothing held). */
static int read_mapped_rows(serve_source *s, const int64_t *idx, int n, chunk_mem *m) {
  if (!s->rd || shard_reader_images_only(s->rd)) return 0; /* inputs rebuilt: read_rebuilt */
  if (!m->in_rows) m->in_rows = ce_malloc_array((size_t)m->cap_n, sizeof *m->in_rows, "row views");
  if (!m->tg_rows) m->tg_rows = ce_malloc_array((size_t)m->cap_n, sizeof *m->tg_rows, "row views");
  if (!m->holds) m->holds = ce_malloc_array((size_t)m->cap_n, 2 * sizeof *m->holds, "row views");
  shard_direct_row *rows = ce_malloc_array((size_t)n, sizeof *rows, "read plan");
  if (!m->in_rows || !m->tg_rows || !m->holds || !rows) {
    free(rows);
    return -1;
  }
  shard_map **h = ce_malloc_array((size_t)n, 2 * sizeof *h, "row views");
  if (!h) {
    free(rows);
    return -1;
  }
  int done = 0, rc = 1;
  while (done < n && rc > 0) {
    int direct = 0;
    h5_lock();
    int k = shard_reader_direct_plan(s->rd, idx + done, n - done, rows, &direct);
    h5_unlock();
    if (k < 0) rc = -1;
    else if (!direct || k < 1) rc = 0; /* nothing pinned */
    else {
      rc = shard_reader_direct_map_rows(s->rd, rows, k, m->in_rows + done, m->tg_rows + done,
                                        m->sums + 2 * done, h + 2 * done);
      h5_lock();
      shard_reader_direct_end(s->rd, rows, k);
      h5_unlock();
      if (rc > 0) done += k;
    }
  }
  if (rc > 0) {
    for (int j = 0; j < 2 * n; j++) m->holds[j] = h[j];
    m->nrows = n;
    h5_lock();
    s->rows_direct += (uint64_t)n, s->rows_mapped += (uint64_t)n;
    h5_unlock();
  } else {
    for (int j = 0; j < 2 * done; j++) shard_map_release(h[j]);
  }
  free(h);
  free(rows);
  return rc;
}

int serve_read(serve_source *s, const int64_t *idx, int n, int normalised, float *inputs,
               float *targets) {
  return read_samples(s, idx, n, normalised, inputs, targets, NULL);
}

/* serve_read, also giving the rows' checksums (sums: finished datasets only, not normalised:
 * shard_reader_read_list_sums). */
static int read_samples(serve_source *s, const int64_t *idx, int n, int normalised,
                        float *inputs, float *targets, uint64_t *sums) {
  if (normalised && !s->have_norm)
    CE_FAIL("%s has no /stats group: run `coemu stats` on it first", s->h5path);
  for (int k = 0; k < n; k++)
    if (idx[k] < 0 || idx[k] >= s->nsamples_total)
      CE_FAIL("%s: sample %lld out of range (%lld samples)", s->h5path, (long long)idx[k],
              (long long)s->nsamples_total);
  if (s->o.external) { /* only its reader thread may call it (external_loop) */
    CE_FAIL("%s: samples made on the fly are read by the stream's reader thread only",
            s->h5path);
  } else if (!s->o.live) { /* the shards: rows read with pread where they can be (read_finished) */
    CE_TRY(read_finished(s, idx, n, inputs, targets, sums));
  }
  for (int k = 0; s->o.live && !s->o.external && k < n; k++) {
    float *dst[2] = {inputs + (size_t)k * s->in_vals, targets + (size_t)k * s->out_vals};
    /* set by sample_source when rc is 0; initialised for GCC 12 on aarch64, whose
       -Wmaybe-uninitialized does not see that */
    hid_t ds[2] = {-1, -1};
    hsize_t at = 0;
    h5_lock();
    int rc = sample_source(s, idx[k], ds, &at), bad = -1;
    for (int a = 0; a < 2 && rc == 0 && bad < 0; a++)
      if (h5_read_sample_f32(ds[a], at, dst[a]) < 0) bad = a;
    if (rc == 0 && bad < 0 && s->shard_sums >= 0) { /* live: the shard's own sums */
      char p[4200];
      shard_path(s, s->shard_idx, p, sizeof p);
      rc = integrity_check_row(s->shard_sums, at, p, idx[k], dst[0], s->in_vals, dst[1],
                               s->out_vals);
    }
    h5_unlock();
    if (rc < 0) return -1;
    if (bad >= 0) { /* name the shard that holds it: that is the file to look at */
      char p[4200];
      shard_path(s, idx[k] / s->spp, p, sizeof p);
      CE_FAIL("%s: sample %lld (row %lld of the shard): reading /%s failed: the shard is "
              "damaged (coemu verify tells more; rerunning the same generate job remakes it)",
              p, (long long)idx[k], (long long)(idx[k] % s->spp), bad == 0 ? "inputs" : "targets");
    }
  }
  if (normalised) normalise_rows(s, n, inputs, targets);
  return 0;
}

static void normalise_rows(const serve_source *s, int n, float *inputs, float *targets) {
  for (int k = 0; k < n; k++) {
    float *in = inputs + (size_t)k * s->in_vals, *tg = targets + (size_t)k * s->out_vals;
    stats_norm_inputs(&s->norm, in, s->in_vals / 3, in);
    stats_norm_targets(&s->norm, tg, s->out_vals, tg);
  }
}

/* A double as JSON: %.17g round-trips; infinities and NaN are null. */
static const char *json_num(double v, char *buf, size_t len) {
  if (isfinite(v))
    snprintf(buf, len, "%.17g", v);
  else
    snprintf(buf, len, "null");
  return buf;
}

uint64_t serve_norm_id(const stats_norm *n) {
  double v[11] = {n->vz_mean, n->vz_std, n->lnT_min, n->lnT_scale, n->lnn_min, n->lnn_scale,
                  (double)n->i_mode, n->lnI_clip, n->lnI_min, n->lnI_scale, n->outlier_vz_range};
  return ce_xxh64(v, sizeof v, 0);
}

int serve_info_json(const serve_source *s, uint32_t epochs, char *buf, size_t len) {
  char norm[1100] = "null";
  if (s->have_norm) {
    const stats_norm *p = &s->norm;
    char b[10][32];
    snprintf(norm, sizeof norm,
             "{\"vz_mean\": %s, \"vz_std\": %s, \"lnT_min\": %s, \"lnT_scale\": %s, "
             "\"lnn_min\": %s, \"lnn_scale\": %s, \"I_mode\": \"%s\", \"lnI_clip\": %s, "
             "\"lnI_min\": %s, \"lnI_scale\": %s, \"outlier_vz_range\": %s}",
             json_num(p->vz_mean, b[0], 32), json_num(p->vz_std, b[1], 32),
             json_num(p->lnT_min, b[2], 32), json_num(p->lnT_scale, b[3], 32),
             json_num(p->lnn_min, b[4], 32), json_num(p->lnn_scale, b[5], 32),
             p->i_mode == STATS_I_MEDIAN ? "median" : "minmax", json_num(p->lnI_clip, b[6], 32),
             json_num(p->lnI_min, b[7], 32), json_num(p->lnI_scale, b[8], 32),
             json_num(p->outlier_vz_range, b[9], 32));
    /* the same id for every source: a stored dataset and a --generate
     * stream normalised alike say so */
    snprintf(norm + strlen(norm), sizeof norm - strlen(norm), ", \"normalisation_id\": \"%016llx\"",
             (unsigned long long)serve_norm_id(p));
  }
  char order[128] = "\"order\": \"exact\", \"order_shards\": null, \"order_buffer\": null";
  if (s->plan.mode == ORDER_SHARDS)
    snprintf(order, sizeof order, "\"order\": \"shards\", \"order_shards\": %lld, \"order_buffer\": %lld",
             (long long)s->plan.shards, (long long)s->plan.buffer);
  int n = snprintf(buf, len,
                   "{\"protocol\": %d, \"world\": %d, \"split\": \"%s\", \"batch\": %d, "
                   "\"seed\": %llu, %s, \"drop_last\": %s, \"live\": %s, \"epochs\": %u, "
                   "\"samples_per_rank\": %llu, \"split_size\": %lld, "
                   "\"dataset_id\": \"%016llx\", \"dtype\": \"float32\", "
                   "\"in_shape\": [%u, %u, %u, %u], \"out_shape\": [%u, %u, %u], "
                   "\"normalisation\": %s%s}",
                   STREAM_VERSION, s->o.world, s->o.split ? s->o.split : "train", s->o.batch,
                   (unsigned long long)s->o.seed, order, s->o.drop_last ? "true" : "false",
                   s->o.live ? "true" : "false", epochs, (unsigned long long)s->per_rank,
                   (long long)s->nsplit, (unsigned long long)s->dataset_id, s->in_shape[0],
                   s->in_shape[1], s->in_shape[2], s->in_shape[3], s->out_shape[0],
                   s->out_shape[1], s->out_shape[2], norm,
                   s->o.external && s->o.external->info_extra ? s->o.external->info_extra : "");
  if (n < 0 || (size_t)n >= len) CE_FAIL("serve: the INFO text needs %d bytes, %zu given", n, len);
  return n;
}
