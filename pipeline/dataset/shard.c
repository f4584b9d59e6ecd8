/* shard.c - shard files: per-sample hyperslab writes, CRC-32, verification. */
#include "pipeline/dataset/shard.h"

#include <errno.h>
#include <hdf5.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "common/checksum.h"
#include "common/error.h"
#include "common/fsutil.h"
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
};

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
  free(w->model);
  free(w->dirix);
  free(w->quat);
  free(w->split);
  free(w->valid);
  free(w->rowsum);
  free(w);
}

int shard_open(shard_writer **out, const char *path, const shard_layout *lay, int64_t first,
               int64_t count) {
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
  w->file = H5Fcreate(w->tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
  H5Pclose(fapl);
  if (w->file < 0) {
    h5fail(w->path, "creating the file");
    free_writer(w);
    return -1;
  }
  hsize_t n = (hsize_t)lay->n, cnt = (hsize_t)count;
  if (lay->store_inputs) {
    hsize_t dims[5] = {cnt, 3, n, n, n}, chunk[5] = {1, 3, n, n, n};
    w->inputs = h5_create(w->file, "inputs", lay->inputs_f64 ? H5T_IEEE_F64LE : H5T_IEEE_F32LE,
                           5, dims, chunk, lay->gzip);
  }
  hsize_t tdims[4] = {cnt, (hsize_t)lay->nf, n, n}, tchunk[4] = {1, (hsize_t)lay->nf, n, n};
  w->targets = h5_create(w->file, "targets", lay->targets_f64 ? H5T_IEEE_F64LE : H5T_IEEE_F32LE,
                          4, tdims, tchunk, lay->gzip);
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

int shard_put(shard_writer *w, const float *inputs, const float *targets, int64_t model,
              int64_t direction_index, const double quat[4], uint8_t split, uint8_t valid) {
  if (w->next >= w->count) CE_BUG("shard_put past the end of %s", w->path);
  int64_t i = w->next;
  size_t n = (size_t)w->lay.n;
  errno = 0;
  if (w->lay.store_inputs) {
    if (write_row(w->inputs, i, inputs) < 0) return h5fail(w->path, "writing /inputs");
    w->crc[SHARD_INPUTS] = (uint32_t)crc32_z(w->crc[SHARD_INPUTS], (const Bytef *)inputs,
                                             3 * n * n * n * sizeof(float));
  }
  if (write_row(w->targets, i, targets) < 0) return h5fail(w->path, "writing /targets");
  w->crc[SHARD_TARGETS] = (uint32_t)crc32_z(w->crc[SHARD_TARGETS], (const Bytef *)targets,
                                            (size_t)w->lay.nf * n * n * sizeof(float));
  w->rowsum[2 * i] = w->lay.store_inputs ? shard_row_hash(inputs, 3 * n * n * n) : 0;
  w->rowsum[2 * i + 1] = shard_row_hash(targets, (size_t)w->lay.nf * n * n);
  w->model[i] = model;
  w->dirix[i] = direction_index;
  memcpy(w->quat + 4 * i, quat, 4 * sizeof *quat);
  w->split[i] = split;
  w->valid[i] = valid;
  w->next++;
  return 0;
}

static int write_meta(shard_writer *w, int set, hid_t ftype, hid_t mtype, int rank,
                      const void *buf, size_t bytes) {
  hsize_t dims[2] = {(hsize_t)w->count, set == SHARD_CHECKSUMS ? 2 : 4};
  hid_t d = h5_create(w->file, shard_set_names[set], ftype, rank, dims, NULL, 0);
  if (d < 0) return -1;
  herr_t rc = H5Dwrite(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf);
  w->crc[set] = (uint32_t)crc32_z(0, (const Bytef *)buf, bytes);
  if (rc >= 0) rc = h5_put_attr(d, "crc32", H5T_NATIVE_UINT32, &w->crc[set]);
  H5Dclose(d);
  return rc < 0 ? -1 : 0;
}

static int commit_enqueue(const char *tmp, const char *path);

static int shard_close_impl(shard_writer *w, int commit, shard_sums *sums, int async) {
  int rc = 0;
  if (commit && w->next != w->count) CE_BUG("shard %s closed after %lld of %lld samples",
                                            w->path, (long long)w->next, (long long)w->count);
  errno = 0;
  if (commit) {
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
      sums->first = w->first;
      sums->count = w->count;
      sums->invalid = invalid;
      sums->has_checksums = 1;
      memcpy(sums->crc, w->crc, sizeof sums->crc);
    }
  }
  if (w->inputs >= 0) H5Dclose(w->inputs);
  if (w->targets >= 0) H5Dclose(w->targets);
  errno = 0;
  if (H5Fclose(w->file) < 0 && commit && rc == 0) rc = h5fail(w->path, "closing the file");
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
  return shard_close_impl(w, commit, sums, 0);
}

int shard_close_async(shard_writer *w, shard_sums *sums) {
  return shard_close_impl(w, 1, sums, 1);
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
    int rc = fs_rename_durable(j->tmp, j->path);
    if (rc < 0) unlink(j->tmp);
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

/* The checksums of the open shard f (path for messages). */
static int read_sums(hid_t f, const char *path, shard_sums *sums) {
  memset(sums, 0, sizeof *sums);
  int rc = 0;
  if (h5_get_attr(f, "first", H5T_NATIVE_INT64, &sums->first) < 0 ||
      h5_get_attr(f, "count", H5T_NATIVE_INT64, &sums->count) < 0 ||
      h5_get_attr(f, "invalid", H5T_NATIVE_INT64, &sums->invalid) < 0)
    rc = ce_err("%s: missing shard attributes (first, count, invalid)", path);
  for (int s = 0; rc == 0 && s < SHARD_NSETS; s++) {
    if (H5Lexists(f, shard_set_names[s], H5P_DEFAULT) <= 0) {
      if (s == SHARD_INPUTS || s == SHARD_CHECKSUMS) continue; /* not stored; format 1 */
      rc = ce_err("%s: /%s: missing", path, shard_set_names[s]);
      break;
    }
    hid_t d = H5Dopen2(f, shard_set_names[s], H5P_DEFAULT);
    if (d < 0 || h5_get_attr(d, "crc32", H5T_NATIVE_UINT32, &sums->crc[s]) < 0)
      rc = ce_err("%s: /%s: no crc32 attribute", path, shard_set_names[s]);
    if (d >= 0) H5Dclose(d);
    if (s == SHARD_CHECKSUMS) sums->has_checksums = 1;
  }
  return rc;
}

int shard_read_sums(const char *path, shard_sums *sums) {
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  memset(sums, 0, sizeof *sums);
  hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
  if (f < 0) CE_FAIL("%s: not a readable HDF5 file", path);
  int rc = read_sums(f, path, sums);
  H5Fclose(f);
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
    c = (uint32_t)crc32_z(c, buf, row);
  }
  H5Sclose(ms);
  H5Sclose(fs);
  free(buf);
  *crc = c;
  return rc;
}

int shard_verify(const char *path, const shard_layout *lay, shard_sums *sums) {
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  memset(sums, 0, sizeof *sums);
  hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT); /* once: sums, layout and data */
  if (f < 0) CE_FAIL("%s: not a readable HDF5 file", path);
  if (read_sums(f, path, sums) < 0) {
    H5Fclose(f);
    return -1;
  }
  int n = 0, nf = 0, si = 0, rc = 0;
  uint32_t fp = 0;
  if (h5_get_attr(f, "n", H5T_NATIVE_INT, &n) < 0 || h5_get_attr(f, "channels", H5T_NATIVE_INT, &nf) < 0 ||
      h5_get_attr(f, "store_inputs", H5T_NATIVE_INT, &si) < 0 ||
      h5_get_attr(f, "job_fingerprint", H5T_NATIVE_UINT32, &fp) < 0)
    rc = ce_err("%s: missing layout attributes (n, channels, store_inputs, job_fingerprint)", path);
  else if (n != lay->n || nf != lay->nf || !si != !lay->store_inputs)
    rc = ce_err("%s: layout n=%d channels=%d store_inputs=%d, expected %d, %d, %d", path, n, nf,
                si, lay->n, lay->nf, lay->store_inputs);
  else if (fp != lay->job_fingerprint)
    rc = ce_err("%s: made by a different job (fingerprint %08x, expected %08x)", path, fp,
                lay->job_fingerprint);
  static const int elem[SHARD_NSETS] = {4, 4, 8, 8, 8, 1, 1, 8};
  hid_t mtypes[SHARD_NSETS] = {H5T_NATIVE_FLOAT, H5T_NATIVE_FLOAT,  H5T_NATIVE_INT64,
                               H5T_NATIVE_INT64, H5T_NATIVE_DOUBLE, H5T_NATIVE_UINT8,
                               H5T_NATIVE_UINT8, H5T_NATIVE_UINT64};
  /* every bad dataset is reported, not only the first: "PATH: /a: ...; /b: ..." */
  char all[2048] = "";
  size_t used = 0;
  int layout_bad = rc < 0;
  for (int s = 0; !layout_bad && s < SHARD_NSETS; s++) {
    if (s == SHARD_INPUTS && !lay->store_inputs) continue;
    if (s == SHARD_CHECKSUMS && !sums->has_checksums) continue; /* format 1 */
    if (rc < 0 && used < sizeof all) {
      const char *m = ce_err_msg();
      size_t pl = strlen(path);
      if (used && !strncmp(m, path, pl) && !strncmp(m + pl, ": ", 2)) m += pl + 2;
      used += (size_t)snprintf(all + used, sizeof all - used, "%s%s", used ? "; " : "", m);
      rc = 0;
    }
    hid_t d = H5Dopen2(f, shard_set_names[s], H5P_DEFAULT);
    if (d < 0) {
      rc = ce_err("%s: /%s: missing", path, shard_set_names[s]);
      break;
    }
    hid_t sp = H5Dget_space(d);
    hsize_t dims[8];
    H5Sget_simple_extent_dims(sp, dims, NULL);
    H5Sclose(sp);
    uint32_t c = 0;
    if ((int64_t)dims[0] != sums->count)
      rc = ce_err("%s: /%s: %llu rows, expected %lld", path, shard_set_names[s],
                  (unsigned long long)dims[0], (long long)sums->count);
    else if (crc_of_set(path, d, mtypes[s], (size_t)elem[s], &c) < 0)
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
