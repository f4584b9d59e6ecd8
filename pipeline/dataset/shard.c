/* shard.c - shard files: per-sample hyperslab writes, CRC-32, verification. */
#include "pipeline/dataset/shard.h"

#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>
#if defined(__PCLMUL__) && defined(__SSE4_1__)
#include <immintrin.h>
#define SHARD_CRC_CLMUL 1
#endif

#include "common/checksum.h"
#include "common/error.h"
#include "common/fsutil.h"
#include "common/progress.h"
#include "pipeline/dataset/h5util.h"

const char *const shard_set_names[SHARD_NSETS] = {"inputs", "targets", "model_id",
                                                  "direction_index", "direction", "split",
                                                  "valid", "checksums"};

struct shard_writer {
  char path[4096], tmp[4200];
  shard_layout lay;
  int64_t first, count, next;
  hid_t file, inputs, targets;
  uint32_t crc[SHARD_NSETS];
  int64_t *model, *dirix;
  double *quat;
  uint8_t *split, *valid;
  uint64_t *rowsum; /* [count][2]: XXH64 of each sample's input and target rows */
  /* /inputs rows written by the row writer (raw chunk writes, below):
   * the file offset of every row's chunk, and the files' descriptors */
  int64_t *row_off;
  size_t row_bytes;
  int fd_direct, fd_plain;
};

#ifdef SHARD_CRC_CLMUL
/* CRC-32 (zlib's: reflected 0x04C11DB7) of len >= 64 bytes, len % 16 == 0,
 * by carry-less multiplication: four 128-bit lanes folded over 64-byte
 * blocks, then folded to 128 bits and Barrett-reduced (V. Gopal et al.,
 * "Fast CRC Computation for Generic Polynomials Using PCLMULQDQ
 * Instruction", Intel, 2009; the constants are the paper's bit-reflected
 * k1..k5, P(x) and mu for this polynomial, as in zlib-ng and Chromium's
 * zlib). `crc` is the register (pre-inverted), as is the result. */
static uint32_t crc32_clmul(const unsigned char *buf, size_t len, uint32_t crc) {
  static const uint64_t k1k2[2] __attribute__((aligned(16))) = {0x0154442bd4, 0x01c6e41596};
  static const uint64_t k3k4[2] __attribute__((aligned(16))) = {0x01751997d0, 0x00ccaa009e};
  static const uint64_t k5k0[2] __attribute__((aligned(16))) = {0x0163cd6124, 0x0000000000};
  static const uint64_t poly[2] __attribute__((aligned(16))) = {0x01db710641, 0x01f7011641};
  __m128i x0, x1, x2, x3, x4, x5, x6, x7, x8, y5, y6, y7, y8;
  x1 = _mm_loadu_si128((const __m128i *)(buf + 0x00));
  x2 = _mm_loadu_si128((const __m128i *)(buf + 0x10));
  x3 = _mm_loadu_si128((const __m128i *)(buf + 0x20));
  x4 = _mm_loadu_si128((const __m128i *)(buf + 0x30));
  x1 = _mm_xor_si128(x1, _mm_cvtsi32_si128((int)crc));
  x0 = _mm_load_si128((const __m128i *)k1k2);
  buf += 64;
  len -= 64;
  while (len >= 64) {
    x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x6 = _mm_clmulepi64_si128(x2, x0, 0x00);
    x7 = _mm_clmulepi64_si128(x3, x0, 0x00);
    x8 = _mm_clmulepi64_si128(x4, x0, 0x00);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
    x2 = _mm_clmulepi64_si128(x2, x0, 0x11);
    x3 = _mm_clmulepi64_si128(x3, x0, 0x11);
    x4 = _mm_clmulepi64_si128(x4, x0, 0x11);
    y5 = _mm_loadu_si128((const __m128i *)(buf + 0x00));
    y6 = _mm_loadu_si128((const __m128i *)(buf + 0x10));
    y7 = _mm_loadu_si128((const __m128i *)(buf + 0x20));
    y8 = _mm_loadu_si128((const __m128i *)(buf + 0x30));
    x1 = _mm_xor_si128(_mm_xor_si128(x1, x5), y5);
    x2 = _mm_xor_si128(_mm_xor_si128(x2, x6), y6);
    x3 = _mm_xor_si128(_mm_xor_si128(x3, x7), y7);
    x4 = _mm_xor_si128(_mm_xor_si128(x4, x8), y8);
    buf += 64;
    len -= 64;
  }
  x0 = _mm_load_si128((const __m128i *)k3k4);
  x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
  x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
  x1 = _mm_xor_si128(_mm_xor_si128(x1, x2), x5);
  x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
  x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
  x1 = _mm_xor_si128(_mm_xor_si128(x1, x3), x5);
  x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
  x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
  x1 = _mm_xor_si128(_mm_xor_si128(x1, x4), x5);
  while (len >= 16) {
    x2 = _mm_loadu_si128((const __m128i *)buf);
    x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
    x1 = _mm_xor_si128(_mm_xor_si128(x1, x2), x5);
    buf += 16;
    len -= 16;
  }
  /* 128 -> 64 bits */
  x2 = _mm_clmulepi64_si128(x1, x0, 0x10);
  x3 = _mm_setr_epi32(~0, 0, ~0, 0);
  x1 = _mm_srli_si128(x1, 8);
  x1 = _mm_xor_si128(x1, x2);
  x0 = _mm_loadl_epi64((const __m128i *)k5k0);
  x2 = _mm_srli_si128(x1, 4);
  x1 = _mm_and_si128(x1, x3);
  x1 = _mm_clmulepi64_si128(x1, x0, 0x00);
  x1 = _mm_xor_si128(x1, x2);
  /* Barrett reduction to 32 bits */
  x0 = _mm_load_si128((const __m128i *)poly);
  x2 = _mm_and_si128(x1, x3);
  x2 = _mm_clmulepi64_si128(x2, x0, 0x10);
  x2 = _mm_and_si128(x2, x3);
  x2 = _mm_clmulepi64_si128(x2, x0, 0x00);
  x1 = _mm_xor_si128(x1, x2);
  return (uint32_t)_mm_extract_epi32(x1, 1);
}
#endif

uint32_t shard_crc32(uint32_t crc, const void *data, size_t len) {
  const unsigned char *p = data;
#ifdef SHARD_CRC_CLMUL
  if (len >= 64) {
    size_t body = len & ~(size_t)15;
    crc = ~crc32_clmul(p, body, ~crc);
    p += body;
    len -= body;
  }
#endif
  return (uint32_t)crc32_z(crc, p, len);
}

/* seconds spent by this process's writers (shard_times_get); fsync_s is
 * also written by the committer thread, under commit_mu */
static shard_times g_times;
static pthread_mutex_t times_mu = PTHREAD_MUTEX_INITIALIZER;

/* CPU seconds of the calling thread (user + system: a write's copy into
 * the page cache counts) */
static double thread_cpu(void) {
  struct timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

void shard_times_get(shard_times *t) {
  pthread_mutex_lock(&times_mu);
  *t = g_times;
  pthread_mutex_unlock(&times_mu);
}

uint64_t shard_row_hash(const float *row, size_t count) {
  return ce_xxh64(row, count * sizeof *row, 0); /* float32 in memory: little-endian on our hosts */
}

/* "PATH: WHAT failed: strerror" - HDF5's own stack is switched off; errno,
 * when set, says why (ENOSPC, EFBIG, EIO). */
static int h5fail(const char *path, const char *what) {
  int e = errno;
  if (e == ENOSPC || e == EDQUOT)
    return ce_err("%s: %s failed: %s (free space, then rerun the same command: finished shards "
                  "are kept)", path, what, strerror(e));
  if (e == EFBIG)
    return ce_err("%s: %s failed: %s (a file-size limit: raise it (ulimit -f) or use smaller "
                  "shards (output.samples_per_shard), then rerun the same command: finished "
                  "shards are kept)", path, what, strerror(e));
  if (e) return ce_err("%s: %s failed: %s", path, what, strerror(e));
  return ce_err("%s: %s failed (HDF5 error)", path, what);
}

static void free_writer(shard_writer *w) {
  free(w->row_off);
  free(w->model);
  free(w->dirix);
  free(w->quat);
  free(w->split);
  free(w->valid);
  free(w->rowsum);
  free(w);
}

/* ---- the row writer ----
 * /inputs rows (3 n^3 float32, nearly all of a shard's bytes) are written by
 * one background thread per process, straight into the chunks HDF5
 * allocated for them when the dataset was created, while the caller
 * produces the next sample: the chunks are allocated early, never filled,
 * 4 KiB-aligned, and written with O_DIRECT where the file system takes it
 * (no copy into the page cache, which cost more CPU than hashing), with
 * ordinary writes otherwise. Rows come from the ROW_SLOTS buffers of
 * shard_row_buffer(); a row in any other memory is written by HDF5 at once.
 * shard_close waits for its rows before it flushes, so commit, fsync and
 * rename see every byte; HDF5 never touches those chunks (not thread-safe,
 * and it is only ever called by the caller's thread). */
enum { ROW_SLOTS = 3, ROW_ALIGN = 4096 };

typedef struct {
  int fd, fd_plain, slot;
  int64_t off;
  size_t len;
  const char *path;
  int64_t row;
} row_job;

static struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int started, failed, no_direct;
  float *slot[ROW_SLOTS];
  size_t cap;             /* bytes per slot */
  int busy[ROW_SLOTS];    /* queued or being written */
  row_job q[ROW_SLOTS];   /* FIFO; at most one job per slot */
  int qh, qn;
  char err[1024];
} rows = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static int pwrite_all(int fd, const void *buf, size_t len, int64_t off) {
  const char *p = buf;
  while (len > 0) {
    ssize_t k = pwrite(fd, p, len, (off_t)off);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return -1;
    p += k, len -= (size_t)k, off += k;
  }
  return 0;
}

static void *row_loop(void *arg) {
  (void)arg;
  pthread_mutex_lock(&rows.mu);
  for (;;) {
    while (rows.qn == 0) pthread_cond_wait(&rows.cv, &rows.mu);
    row_job j = rows.q[rows.qh];
    int direct_ok = !rows.no_direct;
    pthread_mutex_unlock(&rows.mu);
    double t0 = ce_now(), c0 = thread_cpu();
    errno = 0;
    int rc = -1, e = 0, fell_back = 0;
    if (j.fd >= 0 && direct_ok) {
      rc = pwrite_all(j.fd, rows.slot[j.slot], j.len, j.off);
      /* a file system that wants another alignment: ordinary writes */
      if (rc < 0 && errno == EINVAL) fell_back = 1, rc = -1;
    }
    if (rc < 0 && (j.fd < 0 || !direct_ok || fell_back)) {
      errno = 0;
      rc = pwrite_all(j.fd_plain, rows.slot[j.slot], j.len, j.off);
    }
    e = errno;
    double dt = ce_now() - t0, dc = thread_cpu() - c0;
    pthread_mutex_lock(&times_mu);
    g_times.rows_s += dt;
    g_times.rows_cpu_s += dc;
    pthread_mutex_unlock(&times_mu);
    pthread_mutex_lock(&rows.mu);
    if (fell_back) rows.no_direct = 1;
    if (rc < 0 && !rows.failed) {
      rows.failed = 1;
      snprintf(rows.err, sizeof rows.err, "%s: writing /inputs row %lld failed: %s%s", j.path,
               (long long)j.row, e ? strerror(e) : "short write",
               e == ENOSPC || e == EDQUOT
                   ? " (free space, then rerun the same command: finished shards are kept)"
               : e == EFBIG ? " (a file-size limit: raise it (ulimit -f) or use smaller shards "
                              "(output.samples_per_shard), then rerun the same command: "
                              "finished shards are kept)"
                            : "");
    }
    rows.busy[j.slot] = 0;
    rows.qh = (rows.qh + 1) % ROW_SLOTS;
    rows.qn--;
    pthread_cond_broadcast(&rows.cv);
  }
  return NULL;
}

float *shard_row_buffer(size_t nfloats) {
  size_t need = (nfloats * sizeof(float) + ROW_ALIGN - 1) / ROW_ALIGN * ROW_ALIGN;
  double t0 = ce_now();
  pthread_mutex_lock(&rows.mu);
  if (!rows.started) {
    pthread_attr_t at;
    pthread_t th;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    rows.started = pthread_create(&th, &at, row_loop, NULL) == 0;
    pthread_attr_destroy(&at);
    if (!rows.started) {
      pthread_mutex_unlock(&rows.mu);
      ce_err("cannot start the shard row writer thread");
      return NULL;
    }
  }
  if (need > rows.cap) { /* (re)size the slots once every row is written */
    while (rows.qn > 0) pthread_cond_wait(&rows.cv, &rows.mu);
    for (int k = 0; k < ROW_SLOTS; k++) {
      free(rows.slot[k]);
      rows.slot[k] = NULL;
      if (posix_memalign((void **)&rows.slot[k], ROW_ALIGN, need) != 0) rows.slot[k] = NULL;
    }
    rows.cap = need;
    for (int k = 0; k < ROW_SLOTS; k++)
      if (!rows.slot[k]) rows.cap = 0;
    if (!rows.cap) {
      pthread_mutex_unlock(&rows.mu);
      ce_err("out of memory for %d sample buffers of %zu bytes", ROW_SLOTS, need);
      return NULL;
    }
  }
  int k;
  for (;;) {
    for (k = 0; k < ROW_SLOTS && rows.busy[k]; k++) {}
    if (k < ROW_SLOTS) break;
    pthread_cond_wait(&rows.cv, &rows.mu);
  }
  float *b = rows.slot[k];
  pthread_mutex_unlock(&rows.mu);
  g_times.write_s += ce_now() - t0; /* waiting for the disk */
  return b;
}

/* The slot that holds `p`, or -1 */
static int row_slot_of(const float *p) {
  for (int k = 0; k < ROW_SLOTS; k++)
    if (rows.slot[k] && rows.slot[k] == p) return k;
  return -1;
}

/* Wait until every row of w is written; -1 with the first error. */
static int rows_drain(shard_writer *w) {
  if (!w->row_off) return 0;
  pthread_mutex_lock(&rows.mu);
  for (;;) {
    int mine = 0;
    for (int i = 0, k = rows.qh; i < rows.qn; i++, k = (k + 1) % ROW_SLOTS)
      if (rows.q[k].fd_plain == w->fd_plain) mine = 1;
    if (!mine) break;
    pthread_cond_wait(&rows.cv, &rows.mu);
  }
  int failed = rows.failed;
  if (failed) ce_err("%s", rows.err);
  pthread_mutex_unlock(&rows.mu);
  return failed ? -1 : 0;
}

/* After /inputs is created (early allocation): where each row's chunk is,
 * and the descriptors to write it with. Returns 0 (rows then go to the row
 * writer) or 1 (not possible here: HDF5 writes them). */
static int rows_setup(shard_writer *w) {
  size_t c = (size_t)w->count, n = (size_t)w->lay.n;
  w->row_bytes = 3 * n * n * n * sizeof(float);
  w->row_off = ce_malloc_array(c, sizeof *w->row_off, "shard row offsets");
  if (!w->row_off) return ce_err_clear(), 1;
  hid_t fs = H5Dget_space(w->inputs);
  int aligned = w->row_bytes % ROW_ALIGN == 0;
  for (size_t i = 0; i < c; i++) {
    hsize_t off[5];
    unsigned mask = 0;
    haddr_t addr = HADDR_UNDEF;
    hsize_t size = 0;
    if (H5Dget_chunk_info(w->inputs, fs, i, off, &mask, &addr, &size) < 0 || addr == HADDR_UNDEF ||
        size != w->row_bytes || off[0] != i) {
      H5Sclose(fs);
      free(w->row_off);
      w->row_off = NULL;
      return 1;
    }
    w->row_off[i] = (int64_t)addr;
    if (addr % ROW_ALIGN) aligned = 0;
  }
  H5Sclose(fs);
  w->fd_plain = open(w->tmp, O_WRONLY | O_CLOEXEC);
  w->fd_direct = aligned ? open(w->tmp, O_WRONLY | O_CLOEXEC | O_DIRECT) : -1;
  if (w->fd_plain < 0) {
    if (w->fd_direct >= 0) close(w->fd_direct);
    w->fd_direct = -1;
    free(w->row_off);
    w->row_off = NULL;
    return 1;
  }
  return 0;
}

static void rows_close_fds(shard_writer *w) {
  if (w->fd_direct >= 0) close(w->fd_direct);
  if (w->fd_plain >= 0) close(w->fd_plain);
  w->fd_direct = w->fd_plain = -1;
}

static int shard_open_impl(shard_writer **out, const char *path, const shard_layout *lay,
                           int64_t first, int64_t count);

int shard_open(shard_writer **out, const char *path, const shard_layout *lay, int64_t first,
               int64_t count) {
  double t0 = ce_now(), c0 = thread_cpu();
  int rc = shard_open_impl(out, path, lay, first, count);
  g_times.write_s += ce_now() - t0;
  g_times.write_cpu_s += thread_cpu() - c0;
  return rc;
}

/* A float32 dataset of one row a chunk, no filter, every chunk allocated
 * at creation and never filled: rows can be written into place and lie
 * back to back (the raw row writer, rows_setup; the manifest's layout). */
static hid_t create_allocated(hid_t file, const char *name, int rank, const hsize_t *dims,
                              const hsize_t *chunk) {
  hid_t space = H5Screate_simple(rank, dims, NULL), dcpl = h5_dcpl(rank, chunk, 0), d = -1;
  if (space >= 0 && dcpl >= 0 && H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY) >= 0 &&
      H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER) >= 0)
    d = H5Dcreate2(file, name, H5T_IEEE_F32LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
  if (dcpl >= 0) H5Pclose(dcpl);
  if (space >= 0) H5Sclose(space);
  return d;
}

static int shard_open_impl(shard_writer **out, const char *path, const shard_layout *lay,
                           int64_t first, int64_t count) {
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  *out = NULL;
  shard_writer *w = calloc(1, sizeof *w);
  if (!w) CE_FAIL("out of memory");
  if ((size_t)snprintf(w->path, sizeof w->path, "%s", path) >= sizeof w->path) {
    free(w);
    CE_FAIL("%s: path too long", path);
  }
  snprintf(w->tmp, sizeof w->tmp, "%s.tmp.%ld", path, (long)getpid());
  w->lay = *lay;
  w->first = first;
  w->count = count;
  w->inputs = w->targets = -1;
  w->fd_direct = w->fd_plain = -1;
  size_t c = (size_t)count;
  w->model = ce_malloc_array(c, sizeof *w->model, "shard model ids");
  w->dirix = ce_malloc_array(c, sizeof *w->dirix, "shard direction indices");
  w->quat = ce_malloc_array(c, 4 * sizeof *w->quat, "shard directions");
  w->split = ce_malloc_array(c, 1, "shard splits");
  w->valid = ce_malloc_array(c, 1, "shard valid flags");
  w->rowsum = ce_malloc_array(c, 2 * sizeof *w->rowsum, "shard sample checksums");
  if (!w->model || !w->dirix || !w->quat || !w->split || !w->valid || !w->rowsum) {
    free_writer(w);
    return -1;
  }
  errno = 0;
  /* HDF5 1.10's file format: every piece of metadata (superblock, object
   * headers, chunk indexes) carries a checksum, so damaged metadata is an
   * error when a reader opens the shard, not a crash inside HDF5 */
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  H5Pset_libver_bounds(fapl, H5F_LIBVER_V110, H5F_LIBVER_LATEST);
  /* large blocks (the /inputs rows) at 4 KiB boundaries, for direct I/O */
  H5Pset_alignment(fapl, 1 << 20, ROW_ALIGN);
  /* no timestamps in the root group's header either (the datasets have
   * none, h5_dcpl): a shard's bytes depend on the job and its range only */
  hid_t fcpl = H5Pcreate(H5P_FILE_CREATE);
  H5Pset_obj_track_times(fcpl, 0);
  w->file = H5Fcreate(w->tmp, H5F_ACC_TRUNC, fcpl, fapl);
  H5Pclose(fcpl);
  H5Pclose(fapl);
  if (w->file < 0) {
    h5fail(w->path, "creating the file");
    free_writer(w);
    return -1;
  }
  hsize_t n = (hsize_t)lay->n, cnt = (hsize_t)count;
  int raw_rows = lay->store_inputs && !lay->inputs_f64 && lay->gzip <= 0;
  if (lay->store_inputs && raw_rows) {
    /* float32, no filter: every chunk allocated now, never filled, so the
     * row writer can write the rows into place (above) */
    hsize_t dims[5] = {cnt, 3, n, n, n}, chunk[5] = {1, 3, n, n, n};
    w->inputs = create_allocated(w->file, "inputs", 5, dims, chunk);
    if (w->inputs >= 0 && rows_setup(w) != 0) raw_rows = 0;
  } else if (lay->store_inputs) {
    hsize_t dims[5] = {cnt, 3, n, n, n}, chunk[5] = {1, 3, n, n, n};
    w->inputs = h5_create(w->file, "inputs", lay->inputs_f64 ? H5T_IEEE_F64LE : H5T_IEEE_F32LE,
                           5, dims, chunk, lay->gzip);
  }
  hsize_t tdims[4] = {cnt, (hsize_t)lay->nf, n, n}, tchunk[4] = {1, (hsize_t)lay->nf, n, n};
  if (!lay->targets_f64 && lay->gzip <= 0) {
    /* float32, no filter: every chunk allocated now, back to back (HDF5
     * allocates chunks written one by one wherever its metadata leave room),
     * so the rows lie at one stride and the manifest can record where
     * (shard_read_sums: readers open the shard without HDF5) */
    w->targets = create_allocated(w->file, "targets", 4, tdims, tchunk);
  } else {
    w->targets = h5_create(w->file, "targets", lay->targets_f64 ? H5T_IEEE_F64LE : H5T_IEEE_F32LE,
                           4, tdims, tchunk, lay->gzip);
  }
  if ((lay->store_inputs && w->inputs < 0) || w->targets < 0) {
    h5fail(w->path, "creating the sample datasets");
    shard_close(w, 0, NULL);
    return -1;
  }
  *out = w;
  return 0;
}

/* Write row `i` of a sample dataset from float32 memory. */
static int write_row(hid_t d, int64_t i, const float *buf) {
  hid_t fs = H5Dget_space(d);
  int rank = H5Sget_simple_extent_ndims(fs);
  hsize_t dims[8], start[8] = {0}, cnt[8];
  H5Sget_simple_extent_dims(fs, dims, NULL);
  for (int k = 0; k < rank; k++) cnt[k] = dims[k];
  start[0] = (hsize_t)i;
  cnt[0] = 1;
  H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, cnt, NULL);
  hid_t ms = H5Screate_simple(rank, cnt, NULL);
  herr_t rc = H5Dwrite(d, H5T_NATIVE_FLOAT, ms, fs, H5P_DEFAULT, buf);
  H5Sclose(ms);
  H5Sclose(fs);
  return rc < 0 ? -1 : 0;
}

/* shard_put and shard_put_hashed: inputs_hash (images-only) is the input
 * row's checksum made elsewhere, in place of hashing inputs */
static int put_sample(shard_writer *w, const float *inputs, const uint64_t *inputs_hash,
                      const float *targets, int64_t model, int64_t direction_index,
                      const double quat[4], uint8_t split, uint8_t valid) {
  if (w->next >= w->count) CE_BUG("shard_put past the end of %s", w->path);
  int64_t i = w->next;
  size_t n = (size_t)w->lay.n, nin = 3 * n * n * n, ntg = (size_t)w->lay.nf * n * n;
  double t0 = ce_now(), c0 = thread_cpu();
  if (inputs_hash) {
    w->rowsum[2 * i] = *inputs_hash;
  } else if (w->lay.store_inputs) {
    w->crc[SHARD_INPUTS] = shard_crc32(w->crc[SHARD_INPUTS], inputs, nin * sizeof(float));
    w->rowsum[2 * i] = shard_row_hash(inputs, nin);
  } else if (inputs) {
    /* images-only (docs/dataset-format.md): the checksum the row would have
     * if stored, so a reader's rebuilt cube is checked against it */
    w->rowsum[2 * i] = shard_row_hash(inputs, nin);
  } else {
    w->rowsum[2 * i] = 0;
  }
  w->crc[SHARD_TARGETS] = shard_crc32(w->crc[SHARD_TARGETS], targets, ntg * sizeof(float));
  w->rowsum[2 * i + 1] = shard_row_hash(targets, ntg);
  double t1 = ce_now(), c1 = thread_cpu();
  g_times.hash_s += t1 - t0;
  g_times.hash_cpu_s += c1 - c0;
  errno = 0;
  int rc = 0, slot = w->lay.store_inputs && w->row_off ? row_slot_of(inputs) : -1;
  if (slot >= 0) { /* to the row writer; the slot is its own until written */
    pthread_mutex_lock(&rows.mu);
    if (rows.failed) {
      rc = ce_err("%s", rows.err);
    } else {
      row_job j = {w->fd_direct, w->fd_plain, slot, w->row_off[i], w->row_bytes, w->path, i};
      rows.q[(rows.qh + rows.qn) % ROW_SLOTS] = j;
      rows.qn++;
      rows.busy[slot] = 1;
      pthread_cond_broadcast(&rows.cv);
    }
    pthread_mutex_unlock(&rows.mu);
  } else if (w->lay.store_inputs && w->row_off) {
    /* a row in the caller's own memory: written here, into its chunk */
    if (pwrite_all(w->fd_plain, inputs, w->row_bytes, w->row_off[i]) < 0)
      rc = h5fail(w->path, "writing /inputs");
  } else if (w->lay.store_inputs && write_row(w->inputs, i, inputs) < 0) {
    rc = h5fail(w->path, "writing /inputs");
  }
  if (rc == 0 && write_row(w->targets, i, targets) < 0) rc = h5fail(w->path, "writing /targets");
  g_times.write_s += ce_now() - t1;
  g_times.write_cpu_s += thread_cpu() - c1;
  if (rc < 0) return rc;
  w->model[i] = model;
  w->dirix[i] = direction_index;
  memcpy(w->quat + 4 * i, quat, 4 * sizeof *quat);
  w->split[i] = split;
  w->valid[i] = valid;
  w->next++;
  return 0;
}

int shard_put(shard_writer *w, const float *inputs, const float *targets, int64_t model,
              int64_t direction_index, const double quat[4], uint8_t split, uint8_t valid) {
  return put_sample(w, inputs, NULL, targets, model, direction_index, quat, split, valid);
}

int shard_put_hashed(shard_writer *w, uint64_t inputs_hash, const float *targets, int64_t model,
                     int64_t direction_index, const double quat[4], uint8_t split,
                     uint8_t valid) {
  if (w->lay.store_inputs) CE_BUG("shard_put_hashed on %s, which stores its inputs", w->path);
  return put_sample(w, NULL, &inputs_hash, targets, model, direction_index, quat, split, valid);
}

static int write_meta(shard_writer *w, int set, hid_t ftype, hid_t mtype, int rank,
                      const void *buf, size_t bytes) {
  hsize_t dims[2] = {(hsize_t)w->count, set == SHARD_CHECKSUMS ? 2 : 4};
  hid_t d = h5_create(w->file, shard_set_names[set], ftype, rank, dims, NULL, 0);
  if (d < 0) return -1;
  herr_t rc = H5Dwrite(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf);
  w->crc[set] = shard_crc32(0, buf, bytes);
  if (rc >= 0) rc = h5_put_attr(d, "crc32", H5T_NATIVE_UINT32, &w->crc[set]);
  H5Dclose(d);
  return rc < 0 ? -1 : 0;
}

static int commit_enqueue(const char *tmp, const char *path);
static void read_layout(hid_t f, shard_sums *sums);

static int shard_close_impl(shard_writer *w, int commit, shard_sums *sums, int async) {
  int rc = 0;
  if (commit && w->next != w->count) CE_BUG("shard %s closed after %lld of %lld samples",
                                            w->path, (long long)w->next, (long long)w->count);
  /* every row the row writer holds for this shard, before the flush */
  if (rows_drain(w) < 0 && commit) rc = -1;
  rows_close_fds(w);
  errno = 0;
  if (commit && rc == 0) {
    size_t c = (size_t)w->count;
    int64_t invalid = 0;
    for (size_t i = 0; i < c; i++) invalid += !w->valid[i];
    if (w->lay.store_inputs && h5_put_attr(w->inputs, "crc32", H5T_NATIVE_UINT32, &w->crc[SHARD_INPUTS]) < 0)
      rc = -1;
    if (h5_put_attr(w->targets, "crc32", H5T_NATIVE_UINT32, &w->crc[SHARD_TARGETS]) < 0) rc = -1;
    if (rc == 0 &&
        (write_meta(w, SHARD_MODEL_ID, H5T_STD_I64LE, H5T_NATIVE_INT64, 1, w->model, c * 8) < 0 ||
         write_meta(w, SHARD_DIRECTION_INDEX, H5T_STD_I64LE, H5T_NATIVE_INT64, 1, w->dirix, c * 8) < 0 ||
         write_meta(w, SHARD_DIRECTION, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 2, w->quat, c * 32) < 0 ||
         write_meta(w, SHARD_SPLIT, H5T_STD_U8LE, H5T_NATIVE_UINT8, 1, w->split, c) < 0 ||
         write_meta(w, SHARD_VALID, H5T_STD_U8LE, H5T_NATIVE_UINT8, 1, w->valid, c) < 0 ||
         write_meta(w, SHARD_CHECKSUMS, H5T_STD_U64LE, H5T_NATIVE_UINT64, 2, w->rowsum, c * 16) < 0))
      rc = -1;
    int n = w->lay.n, nf = w->lay.nf, si = w->lay.store_inputs;
    uint32_t fp = w->lay.job_fingerprint;
    if (rc == 0 && (h5_put_attr(w->file, "first", H5T_NATIVE_INT64, &w->first) < 0 ||
                    h5_put_attr(w->file, "count", H5T_NATIVE_INT64, &w->count) < 0 ||
                    h5_put_attr(w->file, "invalid", H5T_NATIVE_INT64, &invalid) < 0 ||
                    h5_put_attr(w->file, "n", H5T_NATIVE_INT, &n) < 0 ||
                    h5_put_attr(w->file, "channels", H5T_NATIVE_INT, &nf) < 0 ||
                    h5_put_attr(w->file, "store_inputs", H5T_NATIVE_INT, &si) < 0 ||
                    h5_put_attr(w->file, "job_fingerprint", H5T_NATIVE_UINT32, &fp) < 0))
      rc = -1;
    if (rc == 0 && H5Fflush(w->file, H5F_SCOPE_GLOBAL) < 0) rc = -1;
    if (rc < 0) h5fail(w->path, "writing the shard metadata");
    if (sums) {
      memset(sums, 0, sizeof *sums); /* padding too: ranks send it to rank 0 as bytes */
      sums->first = w->first;
      sums->count = w->count;
      sums->invalid = invalid;
      sums->has_checksums = 1;
      memcpy(sums->crc, w->crc, sizeof sums->crc);
      /* where the rows lie, from the file as written: HDF5 places the
       * metadata arrays' data only now */
      if (rc == 0) read_layout(w->file, sums);
    }
  }
  if (w->inputs >= 0) H5Dclose(w->inputs);
  if (w->targets >= 0) H5Dclose(w->targets);
  errno = 0;
  if (H5Fclose(w->file) < 0 && commit && rc == 0) rc = h5fail(w->path, "closing the file");
  if (commit && rc == 0 && sums && (sums->bytes = fs_file_size(w->tmp)) < 0)
    rc = ce_err("%s: cannot stat the closed shard: %s", w->tmp, strerror(errno));
  if (commit && rc == 0) {
    if (async)
      rc = commit_enqueue(w->tmp, w->path);
    else
      rc = fs_rename_durable(w->tmp, w->path);
  }
  if (!commit || rc < 0) unlink(w->tmp);
  free_writer(w);
  return rc;
}

int shard_close(shard_writer *w, int commit, shard_sums *sums) {
  double t0 = ce_now(), c0 = thread_cpu();
  int rc = shard_close_impl(w, commit, sums, 0);
  g_times.write_s += ce_now() - t0;
  g_times.write_cpu_s += thread_cpu() - c0; /* the fsync too, here */
  return rc;
}

int shard_close_async(shard_writer *w, shard_sums *sums) {
  double t0 = ce_now(), c0 = thread_cpu();
  int rc = shard_close_impl(w, 1, sums, 1);
  g_times.write_s += ce_now() - t0;
  g_times.write_cpu_s += thread_cpu() - c0;
  return rc;
}

/* The committer: one background thread per process doing fsync + rename of
 * finished shards in order; it touches no HDF5 (not thread-safe). */
typedef struct commit_job {
  char *tmp, *path;
  struct commit_job *next;
} commit_job;

static pthread_mutex_t commit_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t commit_cv = PTHREAD_COND_INITIALIZER;
static commit_job *commit_head, *commit_tail;
static int commit_busy, commit_started, commit_failed;
static char commit_err[1024];
static pthread_t commit_thread;

static void *commit_loop(void *arg) {
  (void)arg;
  pthread_mutex_lock(&commit_mu);
  for (;;) {
    while (!commit_head) pthread_cond_wait(&commit_cv, &commit_mu);
    commit_job *j = commit_head;
    commit_head = j->next;
    if (!commit_head) commit_tail = NULL;
    commit_busy = 1;
    pthread_mutex_unlock(&commit_mu);
    double t0 = ce_now();
    int rc = fs_rename_durable(j->tmp, j->path);
    if (rc < 0) unlink(j->tmp);
    pthread_mutex_lock(&times_mu);
    g_times.fsync_s += ce_now() - t0;
    pthread_mutex_unlock(&times_mu);
    pthread_mutex_lock(&commit_mu);
    if (rc < 0 && !commit_failed) {
      commit_failed = 1;
      snprintf(commit_err, sizeof commit_err, "%s", ce_err_msg());
    }
    commit_busy = 0;
    free(j->tmp);
    free(j->path);
    free(j);
    pthread_cond_broadcast(&commit_cv);
  }
  return NULL;
}

static int commit_enqueue(const char *tmp, const char *path) {
  commit_job *j = calloc(1, sizeof *j);
  if (!j || !(j->tmp = strdup(tmp)) || !(j->path = strdup(path))) {
    if (j) free(j->tmp);
    free(j);
    return fs_rename_durable(tmp, path); /* no memory: commit here */
  }
  pthread_mutex_lock(&commit_mu);
  if (!commit_started) {
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    commit_started = pthread_create(&commit_thread, &at, commit_loop, NULL) == 0;
    pthread_attr_destroy(&at);
    if (!commit_started) {
      pthread_mutex_unlock(&commit_mu);
      free(j->tmp);
      free(j->path);
      free(j);
      return fs_rename_durable(tmp, path);
    }
  }
  if (commit_tail)
    commit_tail->next = j;
  else
    commit_head = j;
  commit_tail = j;
  pthread_cond_broadcast(&commit_cv);
  pthread_mutex_unlock(&commit_mu);
  return 0;
}

int shard_commits_wait(void) {
  pthread_mutex_lock(&commit_mu);
  while (commit_head || commit_busy) pthread_cond_wait(&commit_cv, &commit_mu);
  int failed = commit_failed;
  if (failed) ce_err("%s", commit_err);
  pthread_mutex_unlock(&commit_mu);
  return failed ? -1 : 0;
}

/* Where the rows of d lie: *base and *stride with row k at base + k stride,
 * each row_bytes long, as the file stores them (type ftype, no filter); 0,
 * or -1 when they do not lie so (then readers use HDF5). */
static int rows_at(hid_t d, hid_t ftype, int64_t count, hsize_t row_bytes, int64_t *base,
                   int64_t *stride) {
  int64_t *a = malloc((size_t)(count > 0 ? count : 1) * sizeof *a);
  int ok = a && count >= 1 && h5_row_addrs(d, ftype, count, row_bytes, a, 1) == 0;
  if (ok) {
    *base = a[0];
    *stride = count > 1 ? a[1] - a[0] : (int64_t)row_bytes;
    ok = *stride >= (int64_t)row_bytes;
    for (int64_t k = 0; ok && k < count; k++) ok = a[k] == *base + k * *stride;
  }
  free(a);
  return ok ? 0 : -1;
}

/* The datasets whose rows readers find at fixed places (the manifest's
 * "layout"): /inputs (when stored), /targets, /checksums, /split, /valid. */
static int is_layout_set(int s, int store_inputs) {
  return (s == SHARD_INPUTS && store_inputs) || s == SHARD_TARGETS || s == SHARD_CHECKSUMS ||
         s == SHARD_SPLIT || s == SHARD_VALID;
}

/* Where the rows of d, the shard's dataset s (a layout set), lie, into
 * sums->layout: row 0's offset, and for /inputs and /targets the stride
 * (the metadata arrays are read whole: their rows must lie back to back).
 * 0, or -1 when they do not lie so. */
static int set_layout(hid_t d, int s, int n, int nf, shard_sums *sums) {
  hsize_t nn = (hsize_t)n * (hsize_t)n, row;
  hid_t ftype;
  int at;
  switch (s) {
  case SHARD_INPUTS: at = SHARD_LAY_IN, ftype = H5T_IEEE_F32LE, row = 3 * nn * (hsize_t)n * 4; break;
  case SHARD_TARGETS: at = SHARD_LAY_TG, ftype = H5T_IEEE_F32LE, row = (hsize_t)nf * nn * 4; break;
  case SHARD_CHECKSUMS: at = SHARD_LAY_SUMS, ftype = H5T_STD_U64LE, row = 16; break;
  case SHARD_SPLIT: at = SHARD_LAY_SPLIT, ftype = H5T_STD_U8LE, row = 1; break;
  case SHARD_VALID: at = SHARD_LAY_VALID, ftype = H5T_STD_U8LE, row = 1; break;
  default: return -1;
  }
  int64_t stride;
  if (rows_at(d, ftype, sums->count, row, &sums->layout[at], &stride) < 0) return -1;
  if (s == SHARD_INPUTS || s == SHARD_TARGETS) sums->layout[at + 1] = stride;
  else if (stride != (int64_t)row) return -1;
  return 0;
}

/* The shard's attributes n, channels, store_inputs into a[3], -1 where
 * absent; whether they allow a layout (n, channels >= 1, store_inputs
 * there). */
static int layout_attrs(hid_t f, int a[3]) {
  static const char *const names[3] = {"n", "channels", "store_inputs"};
  for (int k = 0; k < 3; k++)
    if (h5_get_attr(f, names[k], H5T_NATIVE_INT, &a[k]) < 0) a[k] = -1;
  return a[0] >= 1 && a[1] >= 1 && a[2] >= 0;
}

/* Whether d, the shard's dataset s, does not have `count` rows; then the
 * message, naming the file and the dataset, is in msg. */
static int rows_differ(hid_t d, const char *path, int s, int64_t count, char *msg, size_t len) {
  hid_t sp = H5Dget_space(d);
  hsize_t dims[8] = {0};
  int ok = sp >= 0 && H5Sget_simple_extent_ndims(sp) >= 1 &&
           H5Sget_simple_extent_dims(sp, dims, NULL) >= 1 && (int64_t)dims[0] == count;
  if (sp >= 0) H5Sclose(sp);
  if (!ok)
    snprintf(msg, len, "%s: /%s: %llu rows, expected %lld", path, shard_set_names[s],
             (unsigned long long)dims[0], (long long)count);
  return !ok;
}

/* sums->layout of the open shard f (shard.h) whose counts and checksums
 * sums already holds (shard_close); has_layout 0 where it cannot be
 * given. */
static void read_layout(hid_t f, shard_sums *sums) {
  sums->has_layout = 0;
  memset(sums->layout, 0, sizeof sums->layout);
  int a[3], n, nf, si;
  int ok = sums->has_checksums && sums->count >= 1 && layout_attrs(f, a);
  n = a[0], nf = a[1], si = a[2];
  for (int s = 0; ok && s < SHARD_NSETS; s++) {
    if (!is_layout_set(s, si)) continue;
    hid_t d = H5Dopen2(f, shard_set_names[s], H5P_DEFAULT);
    ok = d >= 0 && set_layout(d, s, n, nf, sums) == 0;
    if (d >= 0) H5Dclose(d);
  }
  sums->has_layout = ok;
  if (!ok) memset(sums->layout, 0, sizeof sums->layout);
}

/* What the open shard f claims, each dataset opened once (path for
 * messages): the attributes first, count, invalid; every dataset's crc32
 * (/inputs and /checksums may be absent: not stored, format 1; present[s]
 * says which are there); where the rows lie (sums->layout); and its n,
 * channels, store_inputs into attrs[3] (-1 where absent). With rows_err, a
 * dataset whose row count is not the shard's is noted there (the first one)
 * instead of failing, so that the caller reports the file's other faults
 * first. At tens of thousands of shards these opens are the cost of a
 * resume: each dataset was opened three times before (2026-12-06). */
static int read_sets(hid_t f, const char *path, shard_sums *sums, int present[SHARD_NSETS],
                     int attrs[3], char *rows_err, size_t rows_len) {
  memset(sums, 0, sizeof *sums);
  if (rows_err) rows_err[0] = 0;
  if (h5_get_attr(f, "first", H5T_NATIVE_INT64, &sums->first) < 0 ||
      h5_get_attr(f, "count", H5T_NATIVE_INT64, &sums->count) < 0 ||
      h5_get_attr(f, "invalid", H5T_NATIVE_INT64, &sums->invalid) < 0)
    CE_FAIL("%s: missing shard attributes (first, count, invalid)", path);
  int lay_ok = layout_attrs(f, attrs) && sums->count >= 1;
  int n = attrs[0], nf = attrs[1], si = attrs[2] > 0;
  for (int s = 0; s < SHARD_NSETS; s++) {
    present[s] = 0;
    hid_t d = H5Dopen2(f, shard_set_names[s], H5P_DEFAULT);
    if (d < 0) {
      if (s == SHARD_INPUTS || s == SHARD_CHECKSUMS) continue; /* not stored; format 1 */
      CE_FAIL("%s: /%s: missing", path, shard_set_names[s]);
    }
    present[s] = 1;
    if (s == SHARD_CHECKSUMS) sums->has_checksums = 1;
    int rc = h5_get_attr(d, "crc32", H5T_NATIVE_UINT32, &sums->crc[s]) < 0
                 ? ce_err("%s: /%s: no crc32 attribute", path, shard_set_names[s])
                 : 0;
    if (rc == 0 && rows_err && !rows_err[0])
      rows_differ(d, path, s, sums->count, rows_err, rows_len);
    if (rc == 0 && lay_ok && is_layout_set(s, si)) lay_ok = set_layout(d, s, n, nf, sums) == 0;
    H5Dclose(d);
    if (rc < 0) return -1;
  }
  sums->has_layout = lay_ok && sums->has_checksums && (!si || present[SHARD_INPUTS]);
  if (!sums->has_layout) memset(sums->layout, 0, sizeof sums->layout);
  return 0;
}

int shard_read_sums(const char *path, shard_sums *sums) {
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  memset(sums, 0, sizeof *sums);
  hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
  if (f < 0) CE_FAIL("%s: not a readable HDF5 file", path);
  int present[SHARD_NSETS], attrs[3];
  int rc = read_sets(f, path, sums, present, attrs, NULL, 0);
  H5Fclose(f);
  if (rc == 0 && (sums->bytes = fs_file_size(path)) < 0)
    rc = ce_err("%s: cannot stat: %s", path, strerror(errno));
  return rc;
}

int shard_read_valid(const char *path, int64_t count, uint8_t *valid) {
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
  if (f < 0) CE_FAIL("%s: not a readable HDF5 file", path);
  hid_t d = H5Dopen2(f, "valid", H5P_DEFAULT);
  hid_t s = d >= 0 ? H5Dget_space(d) : -1;
  int rc = 0;
  if (s < 0 || H5Sget_simple_extent_npoints(s) != count ||
      H5Dread(d, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, valid) < 0)
    rc = ce_err("%s: /valid: cannot read %lld flags", path, (long long)count);
  if (s >= 0) H5Sclose(s);
  if (d >= 0) H5Dclose(d);
  H5Fclose(f);
  return rc;
}

/* CRC-32 of a dataset's data read back as `mtype`, one row at a time. */
static int crc_of_set(const char *path, hid_t d, hid_t mtype, size_t elem, uint32_t *crc) {
  hid_t fs = H5Dget_space(d);
  int rank = H5Sget_simple_extent_ndims(fs);
  hsize_t dims[8], start[8] = {0}, cnt[8];
  H5Sget_simple_extent_dims(fs, dims, NULL);
  size_t row = elem;
  for (int k = 0; k < rank; k++) {
    cnt[k] = dims[k];
    if (k > 0) row *= dims[k];
  }
  cnt[0] = 1;
  void *buf = ce_malloc_array(row, 1, "shard row");
  if (!buf) {
    H5Sclose(fs);
    return -1;
  }
  hid_t ms = H5Screate_simple(rank, cnt, NULL);
  uint32_t c = 0;
  int rc = 0;
  for (hsize_t i = 0; i < dims[0]; i++) {
    start[0] = i;
    H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, cnt, NULL);
    if (H5Dread(d, mtype, ms, fs, H5P_DEFAULT, buf) < 0) {
      rc = ce_err("%s: row %llu cannot be read (corrupt file?)", path, (unsigned long long)i);
      break;
    }
    c = shard_crc32(c, buf, row);
  }
  H5Sclose(ms);
  H5Sclose(fs);
  free(buf);
  *crc = c;
  return rc;
}

/* whether shard_verify / shard_check_claims look at dataset s */
static int set_checked(int s, const shard_layout *lay, const shard_sums *sums) {
  if (s == SHARD_INPUTS && !lay->store_inputs) return 0;
  if (s == SHARD_CHECKSUMS && !sums->has_checksums) return 0; /* format 1 */
  return 1;
}

/* Open a finished shard and check what it claims, reading no data: its
 * attributes (first, count, invalid, every dataset's crc32), where its arrays
 * lie, and its layout and job fingerprint against `lay`; with check_rows
 * also that every dataset it should have is there with the shard's row
 * count (shard_check_claims; shard_verify checks them as it reads). *f is
 * left open (also on an error; -1 when the file did not open). HDF5 refuses
 * to open a file shorter than the end it records, so a truncated copy fails
 * here. */
static int open_claims(const char *path, const shard_layout *lay, shard_sums *sums, hid_t *f,
                       int check_rows) {
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  memset(sums, 0, sizeof *sums);
  *f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT); /* once: claims (and shard_verify's data) */
  if (*f < 0) CE_FAIL("%s: not a readable HDF5 file", path);
  int present[SHARD_NSETS], attrs[3];
  char rows_err[1200];
  /* the layout is the manifest's; coemu verify compares the two */
  if (read_sets(*f, path, sums, present, attrs, check_rows ? rows_err : NULL, sizeof rows_err) < 0)
    return -1;
  if ((sums->bytes = fs_file_size(path)) < 0) CE_FAIL("%s: cannot stat: %s", path, strerror(errno));
  int n = attrs[0], nf = attrs[1], si = attrs[2];
  uint32_t fp = 0;
  if (n < 0 || nf < 0 || si < 0 || h5_get_attr(*f, "job_fingerprint", H5T_NATIVE_UINT32, &fp) < 0)
    CE_FAIL("%s: missing layout attributes (n, channels, store_inputs, job_fingerprint)", path);
  if (n != lay->n || nf != lay->nf || !si != !lay->store_inputs)
    CE_FAIL("%s: layout n=%d channels=%d store_inputs=%d, expected %d, %d, %d", path, n, nf, si,
            lay->n, lay->nf, lay->store_inputs);
  if (fp != lay->job_fingerprint)
    CE_FAIL("%s: made by a different job (fingerprint %08x, expected %08x)", path, fp,
            lay->job_fingerprint);
  for (int s = 0; check_rows && s < SHARD_NSETS; s++)
    if (set_checked(s, lay, sums) && !present[s])
      CE_FAIL("%s: /%s: missing", path, shard_set_names[s]);
  if (check_rows && rows_err[0]) CE_FAIL("%s", rows_err);
  return 0;
}

/* Open dataset s of f and check it has sums->count rows: the dataset, or -1
 * with the message. */
static hid_t open_set_rows(hid_t f, const char *path, int s, const shard_sums *sums) {
  hid_t d = H5Dopen2(f, shard_set_names[s], H5P_DEFAULT);
  if (d < 0) {
    ce_err("%s: /%s: missing", path, shard_set_names[s]);
    return -1;
  }
  char msg[1200];
  if (!rows_differ(d, path, s, sums->count, msg, sizeof msg)) return d;
  H5Dclose(d);
  ce_err("%s", msg);
  return -1;
}

int shard_check_claims(const char *path, const shard_layout *lay, shard_sums *sums) {
  hid_t f;
  int rc = open_claims(path, lay, sums, &f, 1);
  if (f >= 0) H5Fclose(f);
  return rc;
}

int shard_verify(const char *path, const shard_layout *lay, shard_sums *sums) {
  hid_t f;
  if (open_claims(path, lay, sums, &f, 0) < 0) {
    if (f >= 0) H5Fclose(f);
    return -1;
  }
  static const int elem[SHARD_NSETS] = {4, 4, 8, 8, 8, 1, 1, 8};
  hid_t mtypes[SHARD_NSETS] = {H5T_NATIVE_FLOAT, H5T_NATIVE_FLOAT,  H5T_NATIVE_INT64,
                               H5T_NATIVE_INT64, H5T_NATIVE_DOUBLE, H5T_NATIVE_UINT8,
                               H5T_NATIVE_UINT8, H5T_NATIVE_UINT64};
  /* every bad dataset is reported, not only the first: "PATH: /a: ...; /b: ..." */
  char all[2048] = "";
  size_t used = 0;
  int rc = 0;
  for (int s = 0; s < SHARD_NSETS; s++) {
    if (!set_checked(s, lay, sums)) continue;
    if (rc < 0 && used < sizeof all) {
      const char *m = ce_err_msg();
      size_t pl = strlen(path);
      if (used && !strncmp(m, path, pl) && !strncmp(m + pl, ": ", 2)) m += pl + 2;
      used += (size_t)snprintf(all + used, sizeof all - used, "%s%s", used ? "; " : "", m);
      rc = 0;
    }
    hid_t d = open_set_rows(f, path, s, sums);
    uint32_t c = 0;
    if (d < 0) {
      rc = -1;
      if (H5Lexists(f, shard_set_names[s], H5P_DEFAULT) <= 0) break; /* missing: as before */
      continue;
    }
    if (crc_of_set(path, d, mtypes[s], (size_t)elem[s], &c) < 0)
      rc = ce_err_prefix("/%s", shard_set_names[s]);
    else if (c != sums->crc[s])
      rc = ce_err("%s: /%s: checksum mismatch (stored crc32 %08x, data %08x)", path,
                  shard_set_names[s], sums->crc[s], c);
    H5Dclose(d);
  }
  if (used && used < sizeof all) {
    if (rc < 0) {
      const char *m = ce_err_msg();
      size_t pl = strlen(path);
      if (!strncmp(m, path, pl) && !strncmp(m + pl, ": ", 2)) m += pl + 2;
      snprintf(all + used, sizeof all - used, "; %s", m);
    }
    rc = ce_err("%s", all);
  } else if (used) {
    rc = ce_err("%s", all);
  }
  H5Fclose(f);
  return rc;
}
