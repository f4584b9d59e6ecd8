/* shard_reader.c - samples from the shard files: manifest map, LRU of open
 * shards, hyperslab runs, per-sample checks (shard_reader.h). */
#include "pipeline/dataset/shard_reader.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "common/checksum.h"
#include "common/error.h"
#include "common/fsutil.h"
#include "pipeline/dataset/h5util.h"
#include "pipeline/dataset/input_rebuild.h"
#include "pipeline/dataset/integrity.h"
#include "pipeline/dataset/shard.h"
#include "pipeline/job/yamltree.h"

enum { A_IN, A_OUT, A_SUMS, A_N };
static const char *const arr_name[A_N] = {"inputs", "targets", "checksums"};

/* A shard file mapped read-only (shard_reader.h, "zero copy"). */
struct shard_map {
  void *base;
  size_t len;
  atomic_int refs; /* the open shard's + one per view handed out */
};

void shard_map_release(shard_map *m) {
  if (m && atomic_fetch_sub(&m->refs, 1) == 1) {
    munmap(m->base, m->len);
    free(m);
  }
}

typedef struct {
  int64_t shard; /* -1: free */
  hid_t file, d[A_N];
  uint64_t used;
  /* direct reads (shard_reader_direct_*, at the end of this file) */
  int pins;          /* plans reading from this shard now: never evicted while > 0 */
  int direct;        /* 0: not looked at yet, 1: roff holds the rows, -1: HDF5 only */
  int fd;            /* HDF5's own descriptor of the file (no extra open) */
  int64_t *roff;     /* [count][2]: file offsets of the /inputs and /targets rows */
  uint64_t *rsums;   /* [count][2]: its /checksums, when sums_all does not hold them */
  shard_map *map;    /* the file mapped (direct reads), or NULL */
  /* a shard with a recorded layout (manifest "layout", format 2.3) is opened
   * with open(2) alone: HDF5 opens it only if the layout does not hold */
  int ofd;           /* our own descriptor of the file, or -1 (opened by HDF5) */
  int lay_tried;     /* layout_setup ran */
  int lay_ok;        /* the layout holds: roff, rsums read from the recorded places */
  int rsums_full;    /* rsums holds the whole /checksums, checked against the manifest's
                        CRC-32 where it records one (slot_sums) */
} open_slot;

typedef struct {
  int64_t first, count, bytes;
  char *file;            /* as the manifest names it, relative to DIR */
  uint32_t crc[3];       /* split, valid, checksums (manifest) */
  int has_crc[3];
  int has_lay;           /* manifest "layout" (format 2.3) */
  int64_t lay[SHARD_LAY_N];
} shard_entry;

struct shard_reader {
  char dir[4096], h5path[4200];
  int64_t samples;
  int n, nf, has_inputs, checked, has_label[2];
  int has_fingerprint;      /* the manifest names the job's fingerprint */
  uint32_t job_fingerprint; /* ... which is this */
  size_t in_vals, out_vals; /* floats per sample */
  /* shards mode */
  int64_t directions;   /* manifest: directions per model, or 0 */
  int64_t *skipped;     /* manifest: skipped models */
  size_t nskipped;
  int64_t nshards;
  shard_entry *sh;
  int32_t *slot_of;     /* [nshards]: slot holding the shard open, or -1 */
  open_slot *slots;
  int cap, nopen, peak;
  uint64_t tick;
  int64_t opens, h5opens, lay_fallbacks;
  uint64_t *sums;       /* scratch: /checksums rows of a run */
  size_t sums_cap;
  uint64_t *sums_all;   /* [samples][2]: /checksums rows read with the labels, or NULL */
  uint8_t *sums_have;   /* [nshards]: 1 when sums_all holds the shard's rows */
  /* arrays mode (no shard list): dataset.h5 as it is */
  hid_t file, d_in, d_out;
  integrity integ;
  int integ_open;
  /* images-only (manifest "inputs": "rebuilt"): inputs remade from the models */
  int images_only;
  input_rebuild *rb;
  uint64_t *rb_want, *rb_got; /* scratch: recorded and rebuilt input checksums */
  int64_t *rb_idx;
  size_t rb_cap;
};

static const char *const damaged_hint =
    "the dataset is damaged (coemu verify tells more; rerunning the same generate job remakes "
    "the shard)";

const char *shard_reader_h5path(const shard_reader *r) { return r->h5path; }
int64_t shard_reader_samples(const shard_reader *r) { return r->samples; }
int shard_reader_n(const shard_reader *r) { return r->n; }
int shard_reader_channels(const shard_reader *r) { return r->nf; }
int shard_reader_has_inputs(const shard_reader *r) { return r->has_inputs; }
int shard_reader_images_only(const shard_reader *r) { return r->rb != NULL; }
int shard_reader_rebuild_counters(const shard_reader *r, int64_t *cubes, double *cpu_s,
                                  double *load_s, int64_t *loads) {
  if (!r->rb) return -1;
  input_rebuild_counters(r->rb, cubes, cpu_s, load_s, loads);
  return 0;
}
int shard_reader_checked(const shard_reader *r) {
  return r->sh ? r->checked : integrity_checked(&r->integ);
}
int64_t shard_reader_shards(const shard_reader *r) {
  return r->sh ? r->nshards : r->integ_open ? r->integ.nsrc : 0;
}
int shard_reader_job_fingerprint(const shard_reader *r, uint32_t *fp) {
  if (!r->has_fingerprint) return -1;
  *fp = r->job_fingerprint;
  return 0;
}
int shard_reader_open_now(const shard_reader *r) { return r->nopen; }
int shard_reader_open_peak(const shard_reader *r) { return r->peak; }
int64_t shard_reader_opens(const shard_reader *r) { return r->opens; }
int64_t shard_reader_h5_opens(const shard_reader *r) { return r->h5opens; }
int64_t shard_reader_layout_fallbacks(const shard_reader *r) { return r->lay_fallbacks; }

/* ---- the manifest ---- */

static int num_of(const yt_node *m, const char *key, int64_t *out) {
  const yt_node *v = yt_get(m, key);
  if (!v || v->kind != YT_SCALAR) return -1;
  char *end;
  errno = 0;
  long long x = strtoll(v->text, &end, 10);
  if (*end || errno || end == v->text || x < 0) return -1;
  *out = (int64_t)x;
  return 0;
}

static int shard_path(const shard_reader *r, int64_t s, char *buf, size_t len) {
  if ((size_t)snprintf(buf, len, "%s/%s", r->dir, r->sh[s].file) >= len)
    CE_FAIL("%s/%s: path too long", r->dir, r->sh[s].file);
  return 0;
}

/* The manifest's shard list; 1 when there is one, 0 when the manifest has
 * none (a dataset.h5 made by hand), -1 on error. */
static int load_manifest(shard_reader *r) {
  char mpath[4200], *text;
  size_t len;
  snprintf(mpath, sizeof mpath, "%s/manifest.json", r->dir);
  if (access(mpath, F_OK) != 0 && errno == ENOENT) return 0;
  CE_TRY(fs_read_all(mpath, &text, &len));
  yt_node *m = yt_parse(mpath, text, len);
  free(text);
  if (!m) return -1;
  const yt_node *shards = yt_get(m, "shards"), *si = yt_get(m, "store_inputs"),
                *how = yt_get(m, "inputs");
  if (!shards) {
    yt_free(m);
    return 0;
  }
  int64_t samples = 0, n = 0, nf = 0;
  int rc = 0;
  if (shards->kind != YT_SEQ || num_of(m, "samples", &samples) < 0 || num_of(m, "n", &n) < 0 ||
      num_of(m, "channels", &nf) < 0 || n < 1 || nf < 1 || n > 4096 || nf > 65536 || !si ||
      si->kind != YT_SCALAR)
    rc = ce_err("%s: not a coemu manifest (expected samples, n, channels, store_inputs, shards)",
                mpath);
  if (rc == 0) {
    r->samples = samples;
    r->n = (int)n;
    r->nf = (int)nf;
    r->has_inputs = !strcmp(si->text, "true");
    const yt_node *fp = yt_get(m, "job_fingerprint");
    r->has_fingerprint = fp && fp->kind == YT_SCALAR;
    if (r->has_fingerprint) r->job_fingerprint = (uint32_t)strtoul(fp->text, NULL, 16);
    /* images-only (format_minor 2): readers rebuild the cubes; a manifest
     * whose store_inputs is false without it is targets only */
    r->images_only = !r->has_inputs && how && how->kind == YT_SCALAR && !strcmp(how->text, "rebuilt");
    if (how && how->kind == YT_SCALAR && strcmp(how->text, "rebuilt") && strcmp(how->text, "stored"))
      rc = ce_err("%s:%d:%d: inputs: '%s', expected stored or rebuilt (a newer coemu's dataset?)",
                  mpath, how->line, how->col, how->text);
    r->nshards = (int64_t)shards->n;
    r->sh = ce_calloc_array(shards->n ? shards->n : 1, sizeof *r->sh, "shard list");
    if (!r->sh) rc = -1;
  }
  int64_t expect = 0;
  for (size_t i = 0; rc == 0 && i < shards->n; i++) {
    const yt_node *e = shards->items[i], *file = yt_get(e, "file"), *crc = yt_get(e, "crc32");
    shard_entry *s = &r->sh[i];
    if (!file || file->kind != YT_SCALAR || num_of(e, "first", &s->first) < 0 ||
        num_of(e, "count", &s->count) < 0 || num_of(e, "bytes", &s->bytes) < 0) {
      rc = ce_err("%s:%d:%d: shards[%zu]: expected file, first, count, bytes", mpath, e->line,
                  e->col, i);
      break;
    }
    if (s->first != expect || s->count < 1) {
      rc = ce_err("%s:%d:%d: shards[%zu] (%s): samples %lld+%lld, expected to start at %lld "
                  "(gap or overlap)", mpath, e->line, e->col, i, file->text,
                  (long long)s->first, (long long)s->count, (long long)expect);
      break;
    }
    expect = s->first + s->count;
    if (!(s->file = strdup(file->text))) rc = ce_err("out of memory");
    static const char *const lab[3] = {"split", "valid", "checksums"};
    for (int k = 0; k < 3 && crc && crc->kind == YT_MAP; k++) {
      const yt_node *c = yt_get(crc, lab[k]);
      if (c && c->kind == YT_SCALAR) {
        s->crc[k] = (uint32_t)strtoul(c->text, NULL, 16);
        s->has_crc[k] = 1;
      }
    }
    const yt_node *lay = yt_get(e, "layout");
    if (rc == 0 && lay) {
      int ok = lay->kind == YT_SEQ && lay->n == SHARD_LAY_N;
      for (size_t k = 0; ok && k < SHARD_LAY_N; k++) {
        const yt_node *v = lay->items[k];
        char *end;
        errno = 0;
        long long x = v->kind == YT_SCALAR ? strtoll(v->text, &end, 10) : -1;
        /* offsets and strides below 2^48: every extent then fits in 64 bits */
        ok = v->kind == YT_SCALAR && !*end && end != v->text && !errno && x >= 0 &&
             x < ((long long)1 << 48);
        s->lay[k] = (int64_t)x;
      }
      if (!ok) {
        rc = ce_err("%s:%d:%d: shards[%zu] (%s): layout: expected %d byte offsets and strides "
                    "(non-negative integers below 2^48)", mpath, lay->line, lay->col, i,
                    file->text, SHARD_LAY_N);
        break;
      }
      s->has_lay = 1;
    }
  }
  const yt_node *dn = yt_get(m, "directions"), *sk = yt_get(m, "skipped_models");
  if (rc == 0 && dn && num_of(m, "directions", &r->directions) < 0) r->directions = 0;
  if (rc == 0 && sk && sk->kind == YT_SEQ && sk->n) {
    r->skipped = ce_malloc_array(sk->n, sizeof *r->skipped, "skipped models");
    if (!r->skipped) rc = -1;
    for (size_t i = 0; rc == 0 && i < sk->n; i++) {
      char *end;
      const yt_node *v = sk->items[i];
      long long x = v->kind == YT_SCALAR ? strtoll(v->text, &end, 10) : -1;
      if (x < 0 || *end) {
        rc = ce_err("%s:%d:%d: skipped_models[%zu]: expected a model number", mpath, v->line,
                    v->col, i);
        break;
      }
      r->skipped[r->nskipped++] = (int64_t)x;
    }
  }
  if (rc == 0 && expect != r->samples)
    rc = ce_err("%s: the shards cover samples 0..%lld, the manifest says %lld samples", mpath,
                (long long)expect - 1, (long long)r->samples);
  yt_free(m);
  return rc < 0 ? -1 : 1;
}

/* Every shard there, readable and not shorter than the manifest says. */
static int check_presence(const shard_reader *r) {
  for (int64_t s = 0; s < r->nshards; s++) {
    char p[4400];
    CE_TRY(shard_path(r, s, p, sizeof p));
    struct stat st;
    const char *why = NULL;
    char buf[128];
    if (stat(p, &st) != 0)
      why = errno == ENOENT ? "missing" : strerror(errno);
    else if (access(p, R_OK) != 0)
      why = "not readable";
    else if ((int64_t)st.st_size < r->sh[s].bytes) {
      snprintf(buf, sizeof buf, "truncated (%lld bytes, the manifest records %lld)",
               (long long)st.st_size, (long long)r->sh[s].bytes);
      why = buf;
    }
    if (why)
      CE_FAIL("%s: shard %s (samples %lld..%lld): %s; %s", r->h5path, p,
              (long long)r->sh[s].first, (long long)(r->sh[s].first + r->sh[s].count - 1), why,
              damaged_hint);
  }
  return 0;
}

/* ---- open / close ---- */

static int open_arrays(shard_reader *r) {
  r->file = H5Fopen(r->h5path, H5F_ACC_RDONLY, H5P_DEFAULT);
  if (r->file < 0) return ce_err_open(r->h5path, "as HDF5");
  hsize_t dt[4] = {0}, di[5] = {0};
  r->d_out = H5Dopen2(r->file, "targets", H5P_DEFAULT);
  if (r->d_out < 0) CE_FAIL("%s: no /targets dataset", r->h5path);
  hid_t sp = H5Dget_space(r->d_out);
  int nd = H5Sget_simple_extent_ndims(sp);
  if (nd == 4) H5Sget_simple_extent_dims(sp, dt, NULL);
  H5Sclose(sp);
  if (nd != 4) CE_FAIL("%s: /targets has %d dimensions, expected 4", r->h5path, nd);
  r->has_inputs = H5Lexists(r->file, "inputs", H5P_DEFAULT) > 0;
  if (r->has_inputs) {
    r->d_in = H5Dopen2(r->file, "inputs", H5P_DEFAULT);
    if (r->d_in < 0) CE_FAIL("%s: cannot open /inputs", r->h5path);
    sp = H5Dget_space(r->d_in);
    nd = H5Sget_simple_extent_ndims(sp);
    if (nd == 5) H5Sget_simple_extent_dims(sp, di, NULL);
    H5Sclose(sp);
    if (nd != 5) CE_FAIL("%s: /inputs has %d dimensions, expected 5", r->h5path, nd);
    if (di[0] != dt[0] || di[1] != 3 || di[2] != di[3] || di[3] != di[4])
      CE_FAIL("%s: /inputs [%llu,%llu,%llu,%llu,%llu] and /targets [%llu,...] disagree "
              "(expected [N,3,n,n,n] and [N,F,n,n])", r->h5path, (unsigned long long)di[0],
              (unsigned long long)di[1], (unsigned long long)di[2], (unsigned long long)di[3],
              (unsigned long long)di[4], (unsigned long long)dt[0]);
  }
  hid_t ds[2] = {r->d_in, r->d_out};
  for (int a = 0; a < 2; a++) {
    if (ds[a] < 0) continue;
    hid_t t = H5Dget_type(ds[a]);
    int fl = t >= 0 && H5Tget_class(t) == H5T_FLOAT && (H5Tget_size(t) == 4 || H5Tget_size(t) == 8);
    if (t >= 0) H5Tclose(t);
    if (!fl) CE_FAIL("%s: /%s is not float32 or float64", r->h5path, arr_name[a]);
  }
  r->samples = (int64_t)dt[0];
  r->n = (int)dt[2];
  r->nf = (int)dt[1];
  if (dt[2] != dt[3] || (r->has_inputs && di[2] != dt[2]))
    CE_FAIL("%s: /targets shape [%llu,%llu,%llu,%llu], expected [N,F,n,n] with the cubes' n",
            r->h5path, (unsigned long long)dt[0], (unsigned long long)dt[1],
            (unsigned long long)dt[2], (unsigned long long)dt[3]);
  CE_TRY(integrity_open(&r->integ, r->h5path, r->file));
  r->integ_open = 1;
  return 0;
}

long dataset_count_shards(const char *dir, long stop_at) {
  char p[4200];
  snprintf(p, sizeof p, "%s/shards", dir);
  DIR *d = opendir(p);
  if (!d) return -1;
  long n = 0;
  for (struct dirent *e; (stop_at <= 0 || n < stop_at) && (e = readdir(d));)
    n += !strncmp(e->d_name, "shard-", 6) && !strstr(e->d_name, ".tmp");
  closedir(d);
  return n;
}

int dataset_require_finished(const char *dir, const char *hint) {
  char path[4200];
  struct stat sb;
  snprintf(path, sizeof path, "%s/dataset.h5", dir);
  if (stat(path, &sb) == 0 || errno != ENOENT) return 0; /* the readers say what is wrong then */
  const char *sep = hint ? "; " : "", *h = hint ? hint : "";
  if (stat(dir, &sb) != 0) CE_FAIL("%s: no such dataset folder%s%s", dir, sep, h);
  if (!S_ISDIR(sb.st_mode))
    CE_FAIL("%s: not a folder (a dataset is the folder coemu generate makes)%s%s", dir, sep, h);
  snprintf(path, sizeof path, "%s/manifest.json", dir);
  if (access(path, F_OK) == 0) /* dataset.h5 is written after the manifest */
    CE_FAIL("%s is not a finished dataset: its manifest.json is there but no dataset.h5 (its job "
            "stopped while finishing: the same coemu generate command writes it)%s%s",
            dir, sep, h);
  long shards = dataset_count_shards(dir, 0);
  snprintf(path, sizeof path, "%s/job.yaml", dir);
  if (shards < 0 && access(path, F_OK) != 0)
    CE_FAIL("%s is not a coemu dataset: it has no dataset.h5, job.yaml or shards/%s%s", dir, sep,
            h);
  if (shards < 0) shards = 0;
  CE_FAIL("%s is not a finished dataset: no dataset.h5 yet, %ld shard%s made so far (its job is "
          "running, or it stopped: the same coemu generate command finishes it)%s%s",
          dir, shards, shards == 1 ? "" : "s", sep, h);
}

int shard_reader_open(const char *dir, int max_open, shard_reader **out) {
  *out = NULL;
  CE_TRY(dataset_require_finished(dir, NULL));
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  shard_reader *r = calloc(1, sizeof *r);
  if (!r) CE_FAIL("out of memory");
  r->file = r->d_in = r->d_out = -1;
  r->cap = max_open > 0 ? max_open : SHARD_READER_MAX_OPEN;
  int rc = 0;
  if ((size_t)snprintf(r->dir, sizeof r->dir, "%s", dir) >= sizeof r->dir)
    rc = ce_err("%.64s...: dataset path too long", dir);
  snprintf(r->h5path, sizeof r->h5path, "%s/dataset.h5", r->dir);
  int has_shards = rc == 0 ? load_manifest(r) : -1;
  if (has_shards < 0) rc = -1;
  if (rc == 0 && has_shards) {
    /* dataset.h5 says which labels and per-sample checksums the dataset has
     * (a link test: its virtual datasets are not opened) */
    hid_t f = H5Fopen(r->h5path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) {
      rc = ce_err("%s: not a readable HDF5 file (is %s a finished dataset?)", r->h5path, dir);
    } else {
      r->checked = H5Lexists(f, "checksums", H5P_DEFAULT) > 0;
      r->has_label[0] = H5Lexists(f, "split", H5P_DEFAULT) > 0;
      r->has_label[1] = H5Lexists(f, "valid", H5P_DEFAULT) > 0;
      H5Fclose(f);
    }
    if (rc == 0) rc = check_presence(r);
    if (rc == 0 && r->images_only && !r->checked)
      rc = ce_err("%s: an images-only dataset without /checksums: its rebuilt input cubes could "
                  "not be checked", r->h5path);
    if (rc == 0 && r->images_only)
      rc = input_rebuild_open(r->dir, r->h5path, r->n, r->directions, r->skipped, r->nskipped,
                              &r->rb);
    if (rc == 0 && r->images_only) r->has_inputs = 1; /* read: rebuilt */
    if (rc == 0) {
      r->slot_of = ce_malloc_array((size_t)(r->nshards ? r->nshards : 1), sizeof *r->slot_of,
                                   "shard slots");
      r->slots = ce_calloc_array((size_t)r->cap, sizeof *r->slots, "open shards");
      if (!r->slot_of || !r->slots) rc = -1;
      for (int64_t s = 0; rc == 0 && s < r->nshards; s++) r->slot_of[s] = -1;
      for (int i = 0; rc == 0 && i < r->cap; i++) r->slots[i].shard = -1, r->slots[i].ofd = -1;
    }
  } else if (rc == 0) {
    rc = open_arrays(r);
    if (rc == 0) {
      r->has_label[0] = H5Lexists(r->file, "split", H5P_DEFAULT) > 0;
      r->has_label[1] = H5Lexists(r->file, "valid", H5P_DEFAULT) > 0;
    }
  }
  r->in_vals = 3 * (size_t)r->n * r->n * r->n;
  r->out_vals = (size_t)r->nf * r->n * r->n;
  if (rc < 0) {
    shard_reader_close(r);
    return -1;
  }
  *out = r;
  return 0;
}

static void slot_close(shard_reader *r, open_slot *q) {
  if (q->shard < 0) return;
  for (int a = 0; a < A_N; a++)
    if (q->d[a] >= 0) H5Dclose(q->d[a]);
  if (q->file >= 0) H5Fclose(q->file);
  if (q->ofd >= 0) close(q->ofd);
  q->file = q->ofd = -1;
  q->lay_tried = q->lay_ok = q->rsums_full = 0;
  free(q->roff);
  free(q->rsums);
  shard_map_release(q->map); /* unmapped once no view holds it */
  q->map = NULL;
  q->roff = NULL;
  q->rsums = NULL;
  q->direct = 0;
  q->pins = 0;
  r->slot_of[q->shard] = -1;
  q->shard = -1;
  r->nopen--;
}

void shard_reader_close(shard_reader *r) {
  if (!r) return;
  for (int i = 0; r->slots && i < r->cap; i++) slot_close(r, &r->slots[i]);
  for (int64_t s = 0; r->sh && s < r->nshards; s++) free(r->sh[s].file);
  free(r->sh);
  free(r->slot_of);
  free(r->slots);
  free(r->sums);
  free(r->skipped);
  free(r->sums_all);
  free(r->sums_have);
  input_rebuild_close(r->rb);
  free(r->rb_want);
  free(r->rb_got);
  free(r->rb_idx);
  if (r->integ_open) integrity_close(&r->integ);
  if (r->d_in >= 0) H5Dclose(r->d_in);
  if (r->d_out >= 0) H5Dclose(r->d_out);
  if (r->file >= 0) H5Fclose(r->file);
  free(r);
}

/* ---- the cache of open shards ---- */

/* Rows of a dataset of a shard: its first dimension (and the rest checked). */
static int check_shape(hid_t d, int rank, const hsize_t *want) {
  hid_t sp = H5Dget_space(d);
  if (sp < 0) return -1;
  hsize_t dims[8];
  int nd = H5Sget_simple_extent_ndims(sp);
  int ok = nd == rank && H5Sget_simple_extent_dims(sp, dims, NULL) == rank;
  for (int k = 0; ok && k < rank; k++) ok = dims[k] == want[k];
  H5Sclose(sp);
  return ok ? 0 : -1;
}

/* Whether shard e is opened without HDF5, at the places the manifest
 * records (format 2.3): checked datasets only (every row is checked against
 * /checksums, itself checked against the manifest's CRC-32), on a
 * little-endian host (the layout is of little-endian float32 / uint64). */
static int use_layout(const shard_reader *r, const shard_entry *e) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  return e->has_lay && e->has_crc[2] && r->checked;
#else
  (void)r, (void)e;
  return 0;
#endif
}

/* The slot holding shard s open (opening it, and closing the least recently
 * used one when all max_open are taken). */
static open_slot *shard_get(shard_reader *r, int64_t s) {
  int32_t k = r->slot_of[s];
  if (k >= 0) {
    r->slots[k].used = ++r->tick;
    return &r->slots[k];
  }
  open_slot *q = NULL;
  for (int i = 0; i < r->cap && !q; i++)
    if (r->slots[i].shard < 0) q = &r->slots[i];
  int had_free = q != NULL;
  for (int i = 0; i < r->cap && !had_free; i++) /* the least recently used one not being read */
    if (!r->slots[i].pins && (!q || r->slots[i].used < q->used)) q = &r->slots[i];
  if (!q) {
    ce_err("%s: all %d open shards are being read (direct reads pin at most %d)", r->h5path,
           r->cap, r->cap - 1);
    return NULL;
  }
  slot_close(r, q);
  char p[4400];
  if (shard_path(r, s, p, sizeof p) < 0) return NULL;
  const shard_entry *e = &r->sh[s];
  for (int a = 0; a < A_N; a++) q->d[a] = -1;
  q->file = q->ofd = -1;
  r->opens++;
  if (use_layout(r, e)) { /* no HDF5 unless the layout does not hold (layout_setup) */
    q->ofd = open(p, O_RDONLY | O_CLOEXEC);
    if (q->ofd < 0) {
      ce_err("%s: shard %s (samples %lld..%lld): cannot be opened: %s; %s", r->h5path, p,
             (long long)e->first, (long long)(e->first + e->count - 1), strerror(errno),
             damaged_hint);
      return NULL;
    }
  } else {
    q->file = H5Fopen(p, H5F_ACC_RDONLY, H5P_DEFAULT);
    r->h5opens++;
    if (q->file < 0) {
      ce_err("%s: shard %s (samples %lld..%lld): not a readable HDF5 file (truncated or "
             "damaged); %s", r->h5path, p, (long long)e->first,
             (long long)(e->first + e->count - 1), damaged_hint);
      return NULL;
    }
  }
  q->shard = s;
  r->slot_of[s] = (int32_t)(q - r->slots);
  r->nopen++;
  if (r->nopen > r->peak) r->peak = r->nopen;
  q->used = ++r->tick;
  return q;
}

/* The HDF5 file of an open shard, opened on first use for a shard opened
 * through its layout. -1 (the slot closed unless pinned) when HDF5 cannot
 * open it. */
static hid_t slot_file(shard_reader *r, open_slot *q) {
  if (q->file >= 0) return q->file;
  char p[4400];
  shard_path(r, q->shard, p, sizeof p);
  q->file = H5Fopen(p, H5F_ACC_RDONLY, H5P_DEFAULT);
  r->h5opens++;
  if (q->file >= 0) return q->file;
  const shard_entry *e = &r->sh[q->shard];
  ce_err("%s: shard %s (samples %lld..%lld): not a readable HDF5 file (truncated or damaged); "
         "%s", r->h5path, p, (long long)e->first, (long long)(e->first + e->count - 1),
         damaged_hint);
  if (!q->pins) slot_close(r, q);
  return -1;
}

/* Array a of an open shard, opened on first use (its shape checked). */
static hid_t slot_dset(shard_reader *r, open_slot *q, int a) {
  if (q->d[a] >= 0) return q->d[a];
  if (slot_file(r, q) < 0) return -1;
  const shard_entry *e = &r->sh[q->shard];
  hsize_t c = (hsize_t)e->count, n = (hsize_t)r->n;
  const hsize_t shp_in[5] = {c, 3, n, n, n}, shp_out[4] = {c, (hsize_t)r->nf, n, n},
                shp_sums[2] = {c, 2};
  const hsize_t *shp[A_N] = {shp_in, shp_out, shp_sums};
  const int rank[A_N] = {5, 4, 2};
  H5E_BEGIN_TRY { q->d[a] = H5Dopen2(q->file, arr_name[a], H5P_DEFAULT); } H5E_END_TRY;
  if (q->d[a] < 0 || check_shape(q->d[a], rank[a], shp[a]) < 0) {
    char p[4400];
    shard_path(r, q->shard, p, sizeof p);
    ce_err("%s: shard %s (samples %lld..%lld): /%s %s; %s", r->h5path, p, (long long)e->first,
           (long long)(e->first + e->count - 1), arr_name[a],
           q->d[a] < 0 ? "cannot be opened (missing or its header is damaged)"
                       : "does not have the shape the manifest says",
           damaged_hint);
    if (!q->pins) slot_close(r, q); /* a damaged shard is not kept (once no plan reads it) */
    return -1;
  }
  return q->d[a];
}

/* The shard holding sample idx (binary search over the manifest's ranges). */
static int64_t shard_of(const shard_reader *r, int64_t idx) {
  int64_t lo = 0, hi = r->nshards - 1;
  while (lo < hi) {
    int64_t mid = lo + (hi - lo + 1) / 2;
    if (r->sh[mid].first <= idx) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

int shard_reader_shard_range(const shard_reader *r, int64_t idx, int64_t *shard,
                             int64_t *first, int64_t *count) {
  if (idx < 0 || idx >= r->samples) return -1;
  if (r->sh) {
    *shard = shard_of(r, idx);
    *first = r->sh[*shard].first;
    *count = r->sh[*shard].count;
    return 0;
  }
  for (int i = 0; r->integ_open && i < r->integ.nsrc; i++) {
    const integrity_source *q = &r->integ.src[i];
    if (idx >= q->first && idx < q->first + q->count) {
      *shard = i;
      *first = q->first;
      *count = q->count;
      return 0;
    }
  }
  return -1;
}

int64_t shard_reader_shard_end(const shard_reader *r, int64_t idx) {
  if (!r->sh || idx < 0 || idx >= r->samples) return r->samples;
  const shard_entry *e = &r->sh[shard_of(r, idx)];
  return e->first + e->count;
}

/* len bytes at file offset off of fd into buf: 0, or -1 with errno (0: the
 * file ends first). */
static int pread_all(int fd, void *buf, size_t len, int64_t off) {
  size_t got = 0;
  while (got < len) {
    ssize_t x = pread(fd, (char *)buf + got, len - got, (off_t)(off + (int64_t)got));
    if (x < 0 && errno == EINTR) continue;
    if (x <= 0) {
      if (x == 0) errno = 0;
      return -1;
    }
    got += (size_t)x;
  }
  return 0;
}

/* The whole /checksums of an open shard into q->rsums, read once through
 * HDF5 and, where the manifest records their CRC-32 (format 2), checked
 * against it: a file that is not the shard the dataset was made with (its
 * rows consistent with its own /checksums) is named, never read. 0, or -1
 * with the shard closed unless pinned. */
static int slot_sums(shard_reader *r, open_slot *q) {
  if (q->rsums_full) return 0;
  const shard_entry *e = &r->sh[q->shard];
  int64_t c = e->count;
  if (!q->rsums) q->rsums = ce_malloc_array((size_t)c, 2 * sizeof *q->rsums, "shard checksums");
  if (!q->rsums) return -1;
  if (slot_dset(r, q, A_SUMS) < 0) return -1;
  char p[4400];
  shard_path(r, q->shard, p, sizeof p);
  if (h5_read_rows(q->d[A_SUMS], 0, (hsize_t)c, H5T_NATIVE_UINT64, q->rsums) < 0)
    CE_FAIL("%s: samples %lld..%lld: cannot read their /checksums rows: %s", p,
            (long long)e->first, (long long)(e->first + c - 1), damaged_hint);
  uint32_t got = (uint32_t)crc32_z(0, (const Bytef *)q->rsums, (size_t)c * 16);
  if (e->has_crc[2] && got != e->crc[2])
    CE_FAIL("%s: samples %lld..%lld: /checksums does not match its checksum (crc32 %08x, the "
            "manifest records %08x): the file is not the shard the dataset was made with "
            "(replaced by another file?): %s", p, (long long)e->first,
            (long long)(e->first + c - 1), got, e->crc[2], damaged_hint);
  q->rsums_full = 1;
  return 0;
}

/* A shard opened through its recorded layout (q->ofd): check that the file
 * reaches the end of every recorded extent (else an error naming it), read
 * its /checksums from the recorded place and check them against the CRC-32
 * the manifest records for /checksums. 1: the layout holds (q->lay_ok:
 * roff, rsums and fd set); 0: it does not (the shard was rewritten with
 * another layout, e.g. h5repack): the shard is read through HDF5 from now
 * on, which checks it as any shard of an older dataset (counted in
 * lay_fallbacks); -1 on error. */
static int layout_setup(shard_reader *r, open_slot *q) {
  const shard_entry *e = &r->sh[q->shard];
  const int64_t *L = e->lay, c = e->count;
  q->lay_tried = 1;
  char p[4400];
  shard_path(r, q->shard, p, sizeof p);
  struct stat st;
  if (fstat(q->ofd, &st) != 0)
    CE_FAIL("%s: samples %lld..%lld: cannot stat the file: %s", p, (long long)e->first,
            (long long)(e->first + c - 1), strerror(errno));
  int stored = r->has_inputs && !r->images_only;
  const int64_t at[5] = {L[SHARD_LAY_IN], L[SHARD_LAY_TG], L[SHARD_LAY_SUMS], L[SHARD_LAY_SPLIT],
                         L[SHARD_LAY_VALID]},
                step[5] = {L[SHARD_LAY_IN_STRIDE], L[SHARD_LAY_TG_STRIDE], 16, 1, 1},
                len[5] = {(int64_t)(r->in_vals * sizeof(float)),
                          (int64_t)(r->out_vals * sizeof(float)), 16, 1, 1};
  static const char *const what[5] = {"inputs", "targets", "checksums", "split", "valid"};
  for (int k = stored ? 0 : 1; k < 5; k++) {
    if (k < 2 && step[k] < len[k])
      CE_FAIL("%s: the manifest's layout gives /%s rows %lld bytes apart, each is %lld bytes: "
              "the manifest is damaged", r->h5path, what[k], (long long)step[k], (long long)len[k]);
    unsigned __int128 end = (unsigned __int128)at[k] + (unsigned __int128)(c - 1) * (uint64_t)step[k] +
                            (uint64_t)len[k];
    if (end > (unsigned __int128)st.st_size)
      CE_FAIL("%s: samples %lld..%lld: the file is %lld bytes, but /%s reaches byte %lld in the "
              "layout the manifest records (truncated or replaced after the dataset was "
              "finished): %s", p, (long long)e->first, (long long)(e->first + c - 1),
              (long long)st.st_size, what[k], (long long)(end > INT64_MAX ? INT64_MAX : (int64_t)end),
              damaged_hint);
  }
  q->rsums = ce_malloc_array((size_t)c, 2 * sizeof *q->rsums, "shard checksums");
  q->roff = ce_malloc_array((size_t)c, 2 * sizeof *q->roff, "shard row offsets");
  if (!q->rsums || !q->roff) return -1;
  if (pread_all(q->ofd, q->rsums, (size_t)c * 16, L[SHARD_LAY_SUMS]) < 0)
    CE_FAIL("%s: samples %lld..%lld: cannot read their /checksums rows (%s): %s", p,
            (long long)e->first, (long long)(e->first + c - 1),
            errno ? strerror(errno) : "the file ends first", damaged_hint);
  if ((uint32_t)crc32_z(0, (const Bytef *)q->rsums, (size_t)c * 16) != e->crc[2]) {
    /* not the /checksums the dataset was finished with, at that place: the
     * file was rewritten. Its /checksums through HDF5 must still be the
     * manifest's (an h5repack'ed shard: read through HDF5 from now on, every
     * row checked against them); otherwise it is another file */
    free(q->roff);
    q->roff = NULL;
    r->lay_fallbacks++;
    return slot_sums(r, q) < 0 ? -1 : 0;
  }
  for (int64_t k = 0; k < c; k++) {
    q->roff[2 * k] = stored ? L[SHARD_LAY_IN] + k * L[SHARD_LAY_IN_STRIDE] : -1;
    q->roff[2 * k + 1] = L[SHARD_LAY_TG] + k * L[SHARD_LAY_TG_STRIDE];
  }
  q->fd = q->ofd;
  q->lay_ok = q->rsums_full = 1;
  return 1;
}

/* The error of a row whose XXH64 is not the one /checksums records (row:
 * the row in shard s; a: A_IN or A_OUT). Returns -1. */
static int row_mismatch(const shard_reader *r, int64_t s, int64_t row, int a, uint64_t got,
                        uint64_t want) {
  char p[4400];
  shard_path(r, s, p, sizeof p);
  CE_FAIL("%s: sample %lld (row %lld of the shard): /%s does not match its checksum "
          "(xxh64 %016llx, recorded %016llx): the shard is damaged (coemu verify tells "
          "more; rerunning the same generate job remakes it)",
          p, (long long)(r->sh[s].first + row), (long long)row, arr_name[a],
          (unsigned long long)got, (unsigned long long)want);
}

/* sums_out (may be NULL): the rows' XXH64s, 2 per sample (inputs, targets;
 * 0 for an array not read), as checked against /checksums. in_sums (may be
 * NULL): the recorded checksums of the rows' input cubes, 1 per sample
 * (images-only datasets: what a rebuilt cube must match). */
static int read_run(shard_reader *r, int64_t s, int64_t row, int64_t cnt, float *in, float *out,
                    uint64_t *sums_out, uint64_t *in_sums) {
  open_slot *q = shard_get(r, s);
  if (!q) return -1;
  if (q->ofd >= 0 && !q->lay_tried && layout_setup(r, q) < 0) return -1;
  const shard_entry *e = &r->sh[s];
  char p[4400];
  float *dst[2] = {in, out};
  size_t vals[2] = {r->in_vals, r->out_vals};
  for (int a = 0; q->lay_ok && a < 2; a++) { /* at the recorded places, no HDF5 */
    for (int64_t k = 0; dst[a] && k < cnt; k++) {
      if (pread_all(q->ofd, dst[a] + (size_t)k * vals[a], vals[a] * sizeof(float),
                    q->roff[2 * (row + k) + a]) == 0)
        continue;
      int err = errno;
      shard_path(r, s, p, sizeof p);
      CE_FAIL("%s: sample %lld (row %lld of the shard): reading /%s failed (%s): the shard is "
              "damaged (coemu verify tells more; rerunning the same generate job remakes it)", p,
              (long long)(e->first + row + k), (long long)(row + k), arr_name[a],
              err ? strerror(err) : "the file ends before the row");
    }
  }
  for (int a = 0; !q->lay_ok && a < 2; a++) {
    if (!dst[a]) continue;
    if (slot_dset(r, q, a) < 0) return -1;
    if (h5_read_rows(q->d[a], (hsize_t)row, (hsize_t)cnt, H5T_NATIVE_FLOAT, dst[a]) == 0) continue;
    /* which sample: read row by row to name it */
    int64_t bad = row;
    for (int64_t k = 0; k < cnt; k++)
      if (h5_read_rows(q->d[a], (hsize_t)(row + k), 1, H5T_NATIVE_FLOAT, dst[a] + (size_t)k * vals[a]) < 0) {
        bad = row + k;
        break;
      }
    shard_path(r, s, p, sizeof p);
    CE_FAIL("%s: sample %lld (row %lld of the shard): reading /%s failed: the shard is damaged "
            "(coemu verify tells more; rerunning the same generate job remakes it)",
            p, (long long)(e->first + bad), (long long)bad, arr_name[a]);
  }
  if (!r->checked) {
    /* (never images-only: refused at open) */
    for (int64_t k = 0; sums_out && k < cnt; k++)
      for (int a = 0; a < 2; a++)
        sums_out[2 * k + a] = dst[a] ? shard_row_hash(dst[a] + (size_t)k * vals[a], vals[a]) : 0;
    return 0;
  }
  const uint64_t *sums = r->sums;
  if (r->sums_have && r->sums_have[s]) {
    sums = r->sums_all + 2 * (size_t)(e->first + row); /* read with the labels */
    goto compare;
  }
  if (!q->rsums_full && e->has_crc[2] && slot_sums(r, q) < 0) return -1;
  if (q->rsums_full) {
    sums = q->rsums + 2 * (size_t)row; /* read once, checked against the manifest */
    goto compare;
  }
  if ((size_t)cnt * 2 > r->sums_cap) {
    uint64_t *m = realloc(r->sums, (size_t)cnt * 2 * sizeof *m);
    if (!m) CE_FAIL("out of memory");
    r->sums = m;
    r->sums_cap = (size_t)cnt * 2;
  }
  if (slot_dset(r, q, A_SUMS) < 0) return -1;
  if (h5_read_rows(q->d[A_SUMS], (hsize_t)row, (hsize_t)cnt, H5T_NATIVE_UINT64, r->sums) < 0) {
    shard_path(r, s, p, sizeof p);
    CE_FAIL("%s: samples %lld..%lld: cannot read their /checksums rows: the shard is damaged "
            "(coemu verify tells more; rerunning the same generate job remakes it)", p,
            (long long)(e->first + row), (long long)(e->first + row + cnt - 1));
  }
  sums = r->sums;
compare:
  for (int64_t k = 0; in_sums && k < cnt; k++) in_sums[k] = sums[2 * k];
  for (int64_t k = 0; k < cnt; k++) {
    for (int a = 0; a < 2; a++) {
      if (!dst[a]) {
        if (sums_out) sums_out[2 * k + a] = 0;
        continue;
      }
      uint64_t got = shard_row_hash(dst[a] + (size_t)k * vals[a], vals[a]),
               want = sums[2 * k + (size_t)a];
      if (sums_out) sums_out[2 * k + a] = got;
      if (got != want) return row_mismatch(r, s, row + k, a, got, want);
    }
  }
  return 0;
}

/* ---- reading ---- */

static int read_arrays(shard_reader *r, int64_t idx, float *in, float *out) {
  float *dst[2] = {in, out};
  hid_t ds[2] = {r->d_in, r->d_out};
  for (int a = 0; a < 2; a++)
    if (dst[a] && h5_read_sample_f32(ds[a], (hsize_t)idx, dst[a]) < 0)
      CE_FAIL("%s: /%s: cannot read sample %lld", r->h5path, arr_name[a], (long long)idx);
  return integrity_check(&r->integ, idx, in, in ? r->in_vals : 0, out, r->out_vals);
}

static int read_range(shard_reader *r, int64_t first, int64_t count, float *inputs,
                      float *targets, uint64_t *sums, uint64_t *in_sums);
static int read_list(shard_reader *r, const int64_t *idx, int n, float *inputs, float *targets,
                     uint64_t *sums, uint64_t *in_sums);

/* Scratch for n rebuilt samples. */
static int rb_reserve(shard_reader *r, size_t n) {
  if (n <= r->rb_cap) return 0;
  free(r->rb_want), free(r->rb_got), free(r->rb_idx);
  r->rb_want = ce_malloc_array(n, sizeof *r->rb_want, "input checksums");
  r->rb_got = ce_malloc_array(n, sizeof *r->rb_got, "input checksums");
  r->rb_idx = ce_malloc_array(n, sizeof *r->rb_idx, "sample list");
  r->rb_cap = r->rb_want && r->rb_got && r->rb_idx ? n : 0;
  return r->rb_cap ? 0 : -1;
}

/* Images-only: rebuild the cubes of idx[0..n) into inputs on `threads`
 * threads, each checked against its recorded checksum want[k] (read with
 * the targets); got[k] gets the rebuilt one. No HDF5 and no reader state
 * but the manifest's shard list (read-only after open) and the rebuild
 * (thread-safe): callers may run it on several threads at once. */
static int rebuild_checked(const shard_reader *r, const int64_t *idx, int n, int threads,
                           const uint64_t *want, float *inputs, uint64_t *got) {
  CE_TRY(input_rebuild_cubes(r->rb, idx, n, threads, inputs, got));
  for (int k = 0; k < n; k++) {
    if (got[k] == want[k]) continue;
    int64_t s = shard_of(r, idx[k]), m = input_rebuild_model_of(r->rb, idx[k]);
    char p[4400];
    shard_path(r, s, p, sizeof p);
    CE_FAIL("%s: sample %lld (row %lld of the shard): /inputs rebuilt from model %lld (%s), "
            "direction %lld, does not match its checksum (xxh64 %016llx, recorded %016llx): the "
            "model file is not the one the dataset was made with, or the shard's /checksums "
            "are damaged (coemu verify tells more)",
            p, (long long)idx[k], (long long)(idx[k] - r->sh[s].first), (long long)m,
            input_rebuild_model_file(r->rb, m), (long long)(idx[k] % r->directions),
            (unsigned long long)got[k], (unsigned long long)want[k]);
  }
  return 0;
}

int shard_reader_read_list_want(shard_reader *r, const int64_t *idx, int n, float *targets,
                                uint64_t *sums, uint64_t *want) {
  if (!r->rb) CE_BUG("shard_reader_read_list_want on a dataset that stores its inputs");
  if (n < 0 || !targets || !want) CE_BUG("shard_reader_read_list_want of %d samples", n);
  return read_list(r, idx, n, NULL, targets, sums, want);
}

int shard_reader_rebuild_list(const shard_reader *r, const int64_t *idx, int n, int threads,
                              const uint64_t *want, float *inputs, uint64_t *sums) {
  if (!r->rb) CE_BUG("shard_reader_rebuild_list on a dataset that stores its inputs");
  if (n < 0 || !inputs || !want) CE_BUG("shard_reader_rebuild_list of %d samples", n);
  uint64_t *got = ce_malloc_array((size_t)(n ? n : 1), sizeof *got, "input checksums");
  if (!got) return -1;
  int rc = rebuild_checked(r, idx, n, threads, want, inputs, got);
  for (int k = 0; rc == 0 && sums && k < n; k++) sums[2 * (size_t)k] = got[k]; /* = recorded */
  free(got);
  return rc;
}

void shard_reader_rebuild_lru(const shard_reader *r, model_lru_stats *st) {
  memset(st, 0, sizeof *st);
  if (r->rb) input_rebuild_lru_stats(r->rb, st);
}

int shard_reader_set_model_cap(shard_reader *r, size_t cap) {
  return r->rb ? input_rebuild_set_model_cap(r->rb, cap) : 0;
}

int shard_reader_read(shard_reader *r, int64_t first, int64_t count, float *inputs,
                      float *targets) {
  if (!inputs || !r->rb) return read_range(r, first, count, inputs, targets, NULL, NULL);
  if (!targets) CE_BUG("shard_reader_read without targets");
  if (first < 0 || count < 0 || first + count > r->samples || count > INT32_MAX)
    CE_FAIL("%s: samples %lld..%lld out of range (%lld samples)", r->h5path, (long long)first,
            (long long)(first + count - 1), (long long)r->samples);
  CE_TRY(rb_reserve(r, (size_t)count));
  CE_TRY(read_range(r, first, count, NULL, targets, NULL, r->rb_want));
  for (int64_t k = 0; k < count; k++) r->rb_idx[k] = first + k;
  return rebuild_checked(r, r->rb_idx, (int)count, 0, r->rb_want, inputs, r->rb_got);
}

int shard_reader_read_list(shard_reader *r, const int64_t *idx, int n, float *inputs,
                           float *targets) {
  return shard_reader_read_list_sums(r, idx, n, inputs, targets, NULL);
}

int shard_reader_read_list_sums(shard_reader *r, const int64_t *idx, int n, float *inputs,
                                float *targets, uint64_t *sums) {
  if (!inputs || !r->rb) return read_list(r, idx, n, inputs, targets, sums, NULL);
  if (n < 0) CE_BUG("shard_reader_read_list of %d samples", n);
  CE_TRY(rb_reserve(r, (size_t)n));
  CE_TRY(read_list(r, idx, n, NULL, targets, sums, r->rb_want));
  CE_TRY(rebuild_checked(r, idx, n, 0, r->rb_want, inputs, r->rb_got));
  for (int k = 0; sums && k < n; k++) sums[2 * (size_t)k] = r->rb_got[k]; /* = recorded */
  return 0;
}

static int read_range(shard_reader *r, int64_t first, int64_t count, float *inputs,
                      float *targets, uint64_t *sums, uint64_t *in_sums) {
  if (first < 0 || count < 0 || first + count > r->samples)
    CE_FAIL("%s: samples %lld..%lld out of range (%lld samples)", r->h5path, (long long)first,
            (long long)(first + count - 1), (long long)r->samples);
  if (inputs && !r->has_inputs) CE_FAIL("%s: the dataset stores no /inputs", r->h5path);
  if (!targets) CE_BUG("shard_reader_read without targets");
  if (!r->sh) {
    for (int64_t k = 0; k < count; k++) {
      float *in = inputs ? inputs + (size_t)k * r->in_vals : NULL,
            *out = targets + (size_t)k * r->out_vals;
      CE_TRY(read_arrays(r, first + k, in, out));
      if (sums) {
        sums[2 * k] = in ? shard_row_hash(in, r->in_vals) : 0;
        sums[2 * k + 1] = shard_row_hash(out, r->out_vals);
      }
    }
    return 0;
  }
  int64_t done = 0;
  while (done < count) {
    int64_t i = first + done, s = shard_of(r, i);
    int64_t row = i - r->sh[s].first, cnt = r->sh[s].count - row;
    if (cnt > count - done) cnt = count - done;
    CE_TRY(read_run(r, s, row, cnt, inputs ? inputs + (size_t)done * r->in_vals : NULL,
                    targets ? targets + (size_t)done * r->out_vals : NULL,
                    sums ? sums + 2 * (size_t)done : NULL, in_sums ? in_sums + done : NULL));
    done += cnt;
  }
  return 0;
}

static int read_list(shard_reader *r, const int64_t *idx, int n, float *inputs, float *targets,
                     uint64_t *sums, uint64_t *in_sums) {
  for (int k = 0; k < n;) {
    int m = 1; /* a run: consecutive samples of one shard */
    if (r->sh && idx[k] >= 0 && idx[k] < r->samples) {
      int64_t s = shard_of(r, idx[k]), end = r->sh[s].first + r->sh[s].count;
      while (k + m < n && idx[k + m] == idx[k] + m && idx[k + m] < end) m++;
    }
    CE_TRY(read_range(r, idx[k], m, inputs ? inputs + (size_t)k * r->in_vals : NULL,
                      targets ? targets + (size_t)k * r->out_vals : NULL,
                      sums ? sums + 2 * (size_t)k : NULL, in_sums ? in_sums + k : NULL));
    k += m;
  }
  return 0;
}

/* ---- labels ---- */

static int read_label_array(shard_reader *r, int k, uint8_t *dst) {
  static const char *const lab[2] = {"split", "valid"};
  hid_t d = H5Dopen2(r->file, lab[k], H5P_DEFAULT);
  hid_t sp = d >= 0 ? H5Dget_space(d) : -1;
  hsize_t dim = 0;
  int ok = sp >= 0 && H5Sget_simple_extent_ndims(sp) == 1 &&
           H5Sget_simple_extent_dims(sp, &dim, NULL) == 1 && (int64_t)dim == r->samples &&
           H5Dread(d, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, dst) >= 0;
  if (sp >= 0) H5Sclose(sp);
  if (d >= 0) H5Dclose(d);
  if (!ok)
    CE_FAIL("%s: /%s: expected a uint8 vector of %lld samples", r->h5path, lab[k],
            (long long)r->samples);
  /* the labels decide which samples are used: checked as the samples are */
  return integrity_check_labels(&r->integ, lab[k], dst, r->samples);
}

int shard_reader_labels(shard_reader *r, int64_t first, int64_t count, uint8_t *split,
                        uint8_t *valid, int *has_split, int *has_valid) {
  static const char *const lab[2] = {"split", "valid"};
  uint8_t *dst[2] = {split, valid};
  if (has_split) *has_split = r->has_label[0];
  if (has_valid) *has_valid = r->has_label[1];
  if (!r->sh) {
    for (int k = 0; k < 2; k++)
      if (dst[k] && r->has_label[k]) CE_TRY(read_label_array(r, k, dst[k]));
    return 0;
  }
  if (first < 0 || count < 0 || first + count > r->samples)
    CE_FAIL("%s: samples %lld..%lld out of range (%lld samples)", r->h5path, (long long)first,
            (long long)(first + count - 1), (long long)r->samples);
  int64_t s0 = count ? shard_of(r, first) : r->nshards,
          s1 = count ? shard_of(r, first + count - 1) : -1;
  /* every label of the dataset (serve): the /checksums rows come with them
   * (16 bytes a sample, up to 2^24 samples), so a sample read later opens
   * only /inputs and /targets of its shard */
  if (r->checked && first == 0 && count == r->samples && count > 0 && count <= ((int64_t)1 << 24) &&
      !r->sums_all) {
    r->sums_all = ce_malloc_array((size_t)count, 2 * sizeof *r->sums_all, "sample checksums");
    r->sums_have = ce_calloc_array((size_t)r->nshards, 1, "sample checksums");
    if (!r->sums_all || !r->sums_have) return -1;
  }
  for (int64_t s = s0; s <= s1; s++) {
    const shard_entry *e = &r->sh[s];
    int want = 0;
    for (int k = 0; k < 2; k++) want |= dst[k] && r->has_label[k];
    if (!want) break;
    open_slot *q = shard_get(r, s);
    if (!q) return -1;
    if (q->ofd >= 0 && !q->lay_tried && layout_setup(r, q) < 0) return -1;
    if (!q->lay_ok && slot_file(r, q) < 0) return -1;
    char p[4400];
    for (int k = 0; k < 2; k++) {
      if (!dst[k] || !r->has_label[k]) continue;
      uint8_t *v = dst[k] + e->first;
      hid_t d = -1;
      int ok;
      if (q->lay_ok) { /* at the recorded place; checked against the CRC-32 below */
        ok = pread_all(q->ofd, v, (size_t)e->count, e->lay[k ? SHARD_LAY_VALID : SHARD_LAY_SPLIT]) == 0;
      } else {
        H5E_BEGIN_TRY { d = H5Dopen2(q->file, lab[k], H5P_DEFAULT); } H5E_END_TRY;
        ok = d >= 0 && check_shape(d, 1, (hsize_t[]){(hsize_t)e->count}) == 0 &&
             h5_read_rows(d, 0, (hsize_t)e->count, H5T_NATIVE_UINT8, v) == 0;
      }
      if (d >= 0) H5Dclose(d);
      shard_path(r, s, p, sizeof p);
      if (!ok)
        CE_FAIL("%s: samples %lld..%lld: /%s cannot be read: %s", p, (long long)e->first,
                (long long)(e->first + e->count - 1), lab[k], damaged_hint);
      if (!e->has_crc[k]) continue; /* a manifest without label checksums */
      uint32_t got = (uint32_t)crc32_z(0, (const Bytef *)v, (size_t)e->count);
      if (got != e->crc[k])
        CE_FAIL("%s: samples %lld..%lld: /%s does not match its checksum (crc32 %08x, the "
                "manifest records %08x): the shard is damaged (coemu verify tells more; "
                "rerunning the same generate job remakes it)",
                p, (long long)e->first, (long long)(e->first + e->count - 1), lab[k], got,
                e->crc[k]);
    }
    if (r->sums_have && !r->sums_have[s] && (q->rsums_full || e->has_crc[2])) {
      if (slot_sums(r, q) < 0) return -1;
      memcpy(r->sums_all + 2 * (size_t)e->first, q->rsums, (size_t)e->count * 16);
      r->sums_have[s] = 1;
    }
    if (r->sums_have && !r->sums_have[s]) {
      shard_path(r, s, p, sizeof p);
      if (slot_dset(r, q, A_SUMS) < 0) return -1;
      if (h5_read_rows(q->d[A_SUMS], 0, (hsize_t)e->count, H5T_NATIVE_UINT64,
                    r->sums_all + 2 * (size_t)e->first) < 0)
        CE_FAIL("%s: samples %lld..%lld: cannot read their /checksums rows: %s", p,
                (long long)e->first, (long long)(e->first + e->count - 1), damaged_hint);
      r->sums_have[s] = 1;
    }
  }
  return 0;
}

int shard_reader_labels_planned(const shard_reader *r, const uint8_t *model_split,
                                int64_t models, uint8_t *split, uint8_t *valid) {
  if (!r->sh || r->directions < 1 || models < 1 || models > INT64_MAX / r->directions ||
      models * r->directions != r->samples)
    return 0;
  for (int64_t i = 0; i < r->samples; i++) {
    split[i] = model_split[i / r->directions];
    valid[i] = 1;
  }
  for (size_t k = 0; k < r->nskipped; k++) {
    int64_t m = r->skipped[k];
    if (m < 0 || m >= models) return 0;
    memset(valid + m * r->directions, 0, (size_t)r->directions);
  }
  for (int64_t s = 0; s < r->nshards; s++) {
    const shard_entry *e = &r->sh[s];
    const uint8_t *v[2] = {split + e->first, valid + e->first};
    for (int k = 0; k < 2; k++)
      if (!e->has_crc[k] || (uint32_t)crc32_z(0, (const Bytef *)v[k], (size_t)e->count) != e->crc[k])
        return 0;
  }
  return 1;
}

/* ---- direct reads (shard_reader.h): rows read with pread(2), no HDF5 ---- */

/* Where the rows of array a lie in the file: 0 and roff[2k + a] filled, 1
 * when they cannot be read directly, -1 on error. */
static int direct_rows(shard_reader *r, open_slot *q, int a, int64_t count, size_t vals) {
  hid_t d = slot_dset(r, q, a);
  if (d < 0) return -1;
  return h5_row_addrs(d, H5T_NATIVE_FLOAT, count, (hsize_t)vals * sizeof(float), q->roff + a, 2) == 0
             ? 0
             : 1;
}

/* Map a shard planned for direct reads (shard_reader.h, "zero copy"): the
 * file must reach the end of every row the plan found. 0 (mapped, or not
 * mapped where mmap is refused: pread then), -1 when the file is too
 * short. */
static int map_slot(shard_reader *r, open_slot *q) {
  const shard_entry *e = &r->sh[q->shard];
  struct stat st;
  if (fstat(q->fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size <= 0) return 0;
  int64_t end = 0;
  size_t bytes[2] = {r->in_vals * sizeof(float), r->out_vals * sizeof(float)};
  for (int64_t k = 0; k < e->count; k++)
    for (int a = 0; a < 2; a++) {
      if (a == A_IN && !r->has_inputs) continue;
      int64_t x = q->roff[2 * k + a] + (int64_t)bytes[a];
      if (x > end) end = x;
    }
  if (end > (int64_t)st.st_size) {
    char p[4400];
    shard_path(r, q->shard, p, sizeof p);
    CE_FAIL("%s: samples %lld..%lld: the file is %lld bytes, its rows reach byte %lld (truncated "
            "while open?): %s", p, (long long)e->first, (long long)(e->first + e->count - 1),
            (long long)st.st_size, (long long)end, damaged_hint);
  }
  void *base = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, q->fd, 0);
  if (base == MAP_FAILED) return 0; /* pread instead */
  shard_map *m = malloc(sizeof *m);
  if (!m) {
    munmap(base, (size_t)st.st_size);
    return 0;
  }
  m->base = base;
  m->len = (size_t)st.st_size;
  atomic_init(&m->refs, 1);
  q->map = m;
  return 0;
}

/* Look at an open shard once: q->direct = 1 (roff, the descriptor and the
 * checksums ready) or -1 (HDF5 reads only). 0, or -1 on error. */
static int direct_setup(shard_reader *r, open_slot *q) {
  const shard_entry *e = &r->sh[q->shard];
  int64_t s = q->shard;
  if (q->ofd >= 0 && !q->lay_tried && layout_setup(r, q) < 0) return -1;
  if (q->lay_ok) { /* opened and planned without HDF5 */
    if (map_slot(r, q) < 0) return -1;
    q->direct = 1;
    return 0;
  }
  q->direct = -1;
  hid_t file = slot_file(r, q);
  if (file < 0) return -1;
  hid_t fapl = H5Fget_access_plist(file);
  int sec2 = fapl >= 0 && H5Pget_driver(fapl) == H5FD_SEC2;
  int *fh = NULL;
  if (sec2 && (H5Fget_vfd_handle(file, fapl, (void **)&fh) < 0 || !fh || *fh < 0)) sec2 = 0;
  if (fapl >= 0) H5Pclose(fapl);
  if (!sec2) return 0;
  q->fd = *fh;
  q->roff = ce_malloc_array((size_t)e->count, 2 * sizeof *q->roff, "shard row offsets");
  if (!q->roff) return -1;
  for (int a = 0; a < 2; a++) {
    if (a == A_IN && !r->has_inputs) continue;
    int rc = direct_rows(r, q, a, e->count, a == A_IN ? r->in_vals : r->out_vals);
    if (rc < 0) return -1; /* slot_dset closed the (damaged) shard */
    if (rc > 0) {
      free(q->roff);
      q->roff = NULL;
      return 0;
    }
  }
  if (r->checked && !(r->sums_have && r->sums_have[s]) && slot_sums(r, q) < 0)
    return -1; /* its /checksums, once */
  if (map_slot(r, q) < 0) return -1; /* too short: left to the HDF5 path, which names it */
  q->direct = 1;
  return 0;
}

int shard_reader_direct_plan(shard_reader *r, const int64_t *idx, int n, shard_direct_row *rows,
                             int *direct) {
  *direct = 0;
  if (!r->sh || n < 1 || r->rb) return n; /* images-only: the inputs are rebuilt */
  int m = 0;
  for (; m < n; m++) {
    int64_t i = idx[m];
    if (i < 0 || i >= r->samples) break;
    int64_t s = shard_of(r, i);
    int32_t k = r->slot_of[s];
    if (k < 0 || !r->slots[k].pins) { /* one more shard pinned: one slot always left */
      int pinned = 0;
      for (int j = 0; j < r->cap; j++) pinned += r->slots[j].pins > 0;
      if (pinned >= r->cap - 1) break;
    }
    open_slot *q = shard_get(r, s);
    if (!q || (q->direct == 0 && direct_setup(r, q) < 0)) {
      if (m > 0) { /* the rows before it first: errors come in the order of the samples */
        ce_err_clear();
        break;
      }
      return -1;
    }
    if (q->direct < 0) break;
    q->pins++;
    const shard_entry *e = &r->sh[s];
    shard_direct_row *w = &rows[m];
    w->shard = s;
    w->row = i - e->first;
    w->fd = q->fd;
    w->map = q->map;
    w->off[0] = r->has_inputs ? q->roff[2 * w->row] : -1;
    w->off[1] = q->roff[2 * w->row + 1];
    const uint64_t *sums = !r->checked ? NULL
                           : q->rsums  ? q->rsums + 2 * w->row
                                       : r->sums_all + 2 * (size_t)i;
    w->want[0] = sums ? sums[0] : 0;
    w->want[1] = sums ? sums[1] : 0;
  }
  if (m > 0) {
    *direct = 1;
    return m;
  }
  /* through HDF5: this sample, and the next ones of the same shard */
  int64_t s = idx[0] >= 0 && idx[0] < r->samples ? shard_of(r, idx[0]) : -1;
  int64_t end = s >= 0 ? r->sh[s].first + r->sh[s].count : 0;
  m = 1;
  while (s >= 0 && m < n && idx[m] >= r->sh[s].first && idx[m] < end) m++;
  return m;
}

void shard_reader_direct_end(shard_reader *r, const shard_direct_row *rows, int m) {
  for (int k = 0; k < m; k++) {
    int32_t j = r->slot_of[rows[k].shard];
    if (j >= 0 && r->slots[j].pins > 0) r->slots[j].pins--;
  }
}

int shard_reader_direct_read(const shard_reader *r, const shard_direct_row *rows, int m,
                             float *inputs, float *targets, uint64_t *sums) {
  float *base[2] = {inputs, targets};
  size_t vals[2] = {r->in_vals, r->out_vals};
  char p[4400];
  for (int k = 0; k < m; k++) {
    const shard_direct_row *w = &rows[k];
    const shard_entry *e = &r->sh[w->shard];
    for (int a = 0; a < 2; a++) {
      float *dst = base[a] ? base[a] + (size_t)k * vals[a] : NULL;
      if (!dst) {
        if (sums) sums[2 * k + a] = 0;
        continue;
      }
      if (a == A_IN && !r->has_inputs) CE_FAIL("%s: the dataset stores no /inputs", r->h5path);
      if (pread_all(w->fd, dst, vals[a] * sizeof(float), w->off[a]) < 0) {
        int err = errno;
        shard_path(r, w->shard, p, sizeof p);
        CE_FAIL("%s: sample %lld (row %lld of the shard): reading /%s failed (%s): the shard "
                "is damaged (coemu verify tells more; rerunning the same generate job remakes "
                "it)", p, (long long)(e->first + w->row), (long long)w->row, arr_name[a],
                err ? strerror(err) : "the file ends before the row");
      }
      uint64_t h = shard_row_hash(dst, vals[a]);
      if (sums) sums[2 * k + a] = h;
      if (r->checked && h != w->want[a]) return row_mismatch(r, w->shard, w->row, a, h, w->want[a]);
    }
  }
  return 0;
}

/* ---- zero copy (shard_reader.h) ---- */

/* SIGBUS while a mapped row is checked: the file lost the page (truncated
 * while mapped). The thread checking arms a jump buffer; the handler jumps
 * back to it, and hands any other SIGBUS to the disposition it replaced. */
static _Thread_local sigjmp_buf *volatile bus_jump;
static struct sigaction bus_prev;
static pthread_once_t bus_once = PTHREAD_ONCE_INIT;

static void bus_handler(int sig, siginfo_t *si, void *uc) {
  sigjmp_buf *j = bus_jump;
  if (j) siglongjmp(*j, 1);
  if ((bus_prev.sa_flags & SA_SIGINFO) && bus_prev.sa_sigaction) {
    bus_prev.sa_sigaction(sig, si, uc);
    return;
  }
  if (!(bus_prev.sa_flags & SA_SIGINFO) && bus_prev.sa_handler != SIG_DFL &&
      bus_prev.sa_handler != SIG_IGN) {
    bus_prev.sa_handler(sig);
    return;
  }
  signal(SIGBUS, SIG_DFL); /* the access faults again and the default ends the process */
}

static void bus_install(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = bus_handler;
  sa.sa_flags = SA_SIGINFO;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGBUS, &sa, &bus_prev);
}

/* XXH64 of len mapped bytes at p into *h: 0, or -1 when reading them raised
 * SIGBUS. */
static int hash_mapped(const void *p, size_t len, uint64_t *h) {
  sigjmp_buf j;
  if (sigsetjmp(j, 1)) {
    bus_jump = NULL;
    return -1;
  }
  bus_jump = &j;
  uint64_t v = ce_xxh64(p, len, 0);
  bus_jump = NULL;
  *h = v;
  return 0;
}

/* Check one planned row where it lies in its mapping (SIGBUS caught, the
 * /checksums compared); its XXH64s into sums[0..2) when sums. */
static int check_mapped_row(const shard_reader *r, const shard_direct_row *w, uint64_t *sums) {
  size_t bytes[2] = {r->in_vals * sizeof(float), r->out_vals * sizeof(float)};
  const char *base = w->map->base;
  for (int a = 0; a < 2; a++) {
    uint64_t h = 0;
    if (hash_mapped(base + w->off[a], bytes[a], &h) < 0) {
      char p[4400];
      struct stat st;
      shard_path(r, w->shard, p, sizeof p);
      long long now = stat(p, &st) == 0 ? (long long)st.st_size : -1;
      CE_FAIL("%s: sample %lld (row %lld of the shard): /%s cannot be read from the mapped file "
              "(SIGBUS: the file was truncated while being served; now %lld bytes, the row "
              "ends at byte %lld): %s", p, (long long)(r->sh[w->shard].first + w->row),
              (long long)w->row, arr_name[a], now, (long long)(w->off[a] + (int64_t)bytes[a]),
              damaged_hint);
    }
    if (sums) sums[a] = h;
    if (r->checked && h != w->want[a]) return row_mismatch(r, w->shard, w->row, a, h, w->want[a]);
  }
  return 0;
}

int shard_reader_direct_map(const shard_reader *r, const shard_direct_row *rows, int m,
                            const void **inputs, const void **targets, uint64_t *sums,
                            shard_map **hold) {
  *hold = NULL;
  shard_map *map = m > 0 ? rows[0].map : NULL;
  if (!map || !r->has_inputs) return 0;
  size_t bytes[2] = {r->in_vals * sizeof(float), r->out_vals * sizeof(float)};
  for (int k = 1; k < m; k++) /* one shard, rows back to back in the file */
    for (int a = 0; a < 2; a++)
      if (rows[k].map != map || rows[k].off[a] != rows[0].off[a] + (int64_t)((size_t)k * bytes[a]))
        return 0;
  pthread_once(&bus_once, bus_install);
  for (int k = 0; k < m; k++)
    if (check_mapped_row(r, &rows[k], sums ? sums + 2 * k : NULL) < 0) return -1;
  atomic_fetch_add(&map->refs, 1);
  *hold = map;
  *inputs = (const char *)map->base + rows[0].off[0];
  *targets = (const char *)map->base + rows[0].off[1];
  return 1;
}

int shard_reader_direct_map_rows(const shard_reader *r, const shard_direct_row *rows, int m,
                                 const void **inputs, const void **targets, uint64_t *sums,
                                 shard_map **holds) {
  if (m < 1 || !r->has_inputs) return 0;
  for (int k = 0; k < m; k++)
    if (!rows[k].map) return 0;
  pthread_once(&bus_once, bus_install);
  for (int k = 0; k < m; k++)
    if (check_mapped_row(r, &rows[k], sums ? sums + 2 * k : NULL) < 0) return -1;
  for (int k = 0; k < m; k++) {
    shard_map *map = rows[k].map;
    atomic_fetch_add(&map->refs, 2); /* the inputs row's and the targets row's */
    holds[2 * k] = holds[2 * k + 1] = map;
    inputs[k] = (const char *)map->base + rows[k].off[0];
    targets[k] = (const char *)map->base + rows[k].off[1];
  }
  return 1;
}
