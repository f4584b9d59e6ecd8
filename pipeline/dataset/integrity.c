/* integrity.c - shard presence and per-sample checksums for readers. */
#include "pipeline/dataset/integrity.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <zlib.h>

#include "common/error.h"
#include "common/fsutil.h"
#include "pipeline/dataset/shard.h"
#include "pipeline/job/yamltree.h"

/* Resolve a virtual source name the way HDF5 does: relative to the directory
 * of the virtual dataset's file. */
static char *source_path(const char *h5path, const char *name) {
  size_t dl = 0;
  const char *slash = strrchr(h5path, '/');
  if (name[0] != '/' && slash) dl = (size_t)(slash - h5path) + 1;
  size_t len = dl + strlen(name) + 1;
  char *p = malloc(len);
  if (!p) return NULL;
  memcpy(p, h5path, dl);
  strcpy(p + dl, name);
  return p;
}

static int list_sources(integrity *c, hid_t file) {
  hid_t d = H5Dopen2(file, "targets", H5P_DEFAULT);
  if (d < 0) CE_FAIL("%s: no /targets dataset", c->h5path);
  hid_t dcpl = H5Dget_create_plist(d);
  int rc = 0;
  size_t n = 0;
  if (dcpl >= 0 && H5Pget_layout(dcpl) == H5D_VIRTUAL && H5Pget_virtual_count(dcpl, &n) >= 0 && n) {
    c->src = calloc(n, sizeof *c->src);
    if (!c->src) rc = ce_err("out of memory");
    for (size_t i = 0; rc == 0 && i < n; i++) {
      ssize_t len = H5Pget_virtual_filename(dcpl, i, NULL, 0);
      char *name = len >= 0 ? malloc((size_t)len + 1) : NULL;
      hid_t vs = H5Pget_virtual_vspace(dcpl, i);
      hsize_t start[8] = {0}, end[8] = {0};
      if (!name || vs < 0 || H5Pget_virtual_filename(dcpl, i, name, (size_t)len + 1) < 0 ||
          H5Sget_select_bounds(vs, start, end) < 0) {
        rc = ce_err("%s: /targets: cannot read virtual mapping %zu", c->h5path, i);
      } else {
        integrity_source *s = &c->src[c->nsrc];
        s->first = (int64_t)start[0];
        s->count = (int64_t)(end[0] - start[0] + 1);
        s->path = strcmp(name, ".") ? source_path(c->h5path, name) : NULL;
        if (strcmp(name, ".") && !s->path) rc = ce_err("out of memory");
        else if (s->path) c->nsrc++;
      }
      if (vs >= 0) H5Sclose(vs);
      free(name);
    }
  }
  if (dcpl >= 0) H5Pclose(dcpl);
  H5Dclose(d);
  return rc;
}

/* What is wrong with a source file, if anything visible from outside. */
static const char *source_problem(const char *path) {
  if (access(path, F_OK) != 0) return "missing";
  if (access(path, R_OK) != 0) return "not readable";
  hid_t f = -1;
  H5E_BEGIN_TRY { f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT); } H5E_END_TRY;
  if (f >= 0) H5Fclose(f);
  return f >= 0 ? NULL : "not a readable HDF5 file (truncated or damaged)";
}

int integrity_open(integrity *c, const char *h5path, hid_t file) {
  memset(c, 0, sizeof *c);
  c->sums = -1;
  snprintf(c->h5path, sizeof c->h5path, "%s", h5path);
  if (list_sources(c, file) < 0) {
    integrity_close(c);
    return -1;
  }
  htri_t has = -1;
  H5E_BEGIN_TRY { has = H5Lexists(file, "checksums", H5P_DEFAULT); } H5E_END_TRY;
  if (has > 0) {
    c->sums = H5Dopen2(file, "checksums", H5P_DEFAULT);
    hid_t sp = c->sums >= 0 ? H5Dget_space(c->sums) : -1;
    hsize_t dims[2] = {0};
    int ok = sp >= 0 && H5Sget_simple_extent_ndims(sp) == 2 &&
             H5Sget_simple_extent_dims(sp, dims, NULL) == 2 && dims[1] == 2;
    if (sp >= 0) H5Sclose(sp);
    if (!ok) {
      integrity_close(c);
      CE_FAIL("%s: /checksums: expected uint64 [N, 2]", h5path);
    }
  }
  /* A missing or unreadable shard reads as zeros through the virtual
   * datasets (its /valid too: its samples would drop out of every split):
   * refuse it here, naming it. A damaged sample is found per sample. */
  for (int i = 0; i < c->nsrc; i++) {
    const char *why = source_problem(c->src[i].path);
    if (why) {
      ce_err("%s: shard %s (samples %lld..%lld): %s; the dataset is damaged (coemu verify "
             "tells more; rerunning the same generate job remakes the shard)", h5path,
             c->src[i].path, (long long)c->src[i].first,
             (long long)(c->src[i].first + c->src[i].count - 1), why);
      integrity_close(c);
      return -1;
    }
  }
  return 0;
}

int integrity_checked(const integrity *c) { return c->sums >= 0; }

int integrity_check(integrity *c, int64_t idx, const float *inputs, size_t nin,
                    const float *targets, size_t nout) {
  if (c->sums < 0) return 0;
  uint64_t want[2] = {0, 0};
  hid_t fs = H5Dget_space(c->sums);
  hsize_t start[2] = {(hsize_t)idx, 0}, cnt[2] = {1, 2};
  hid_t ms = H5Screate_simple(2, cnt, NULL);
  herr_t e = -1;
  H5E_BEGIN_TRY {
    e = H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, cnt, NULL);
    if (e >= 0) e = H5Dread(c->sums, H5T_NATIVE_UINT64, ms, fs, H5P_DEFAULT, want);
  } H5E_END_TRY;
  H5Sclose(ms);
  H5Sclose(fs);
  uint64_t got[2] = {inputs && nin ? shard_row_hash(inputs, nin) : want[0],
                     shard_row_hash(targets, nout)};
  int bad = e < 0 ? 2 : got[0] != want[0] ? 0 : got[1] != want[1] ? 1 : -1;
  if (bad < 0) return 0;
  const integrity_source *s = NULL;
  for (int i = 0; i < c->nsrc; i++)
    if (idx >= c->src[i].first && idx < c->src[i].first + c->src[i].count) s = &c->src[i];
  const char *why = s ? source_problem(s->path) : NULL;
  if (s && why)
    return ce_err("%s: shard %s (samples %lld..%lld): %s, at sample %lld; the dataset is "
                  "damaged (coemu verify tells more)", c->h5path, s->path, (long long)s->first,
                  (long long)(s->first + s->count - 1), why, (long long)idx);
  if (bad == 2)
    return ce_err("%s: sample %lld: cannot read its /checksums row", s ? s->path : c->h5path,
                  (long long)idx);
  return ce_err("%s: sample %lld (row %lld of the shard): /%s does not match its checksum "
                "(xxh64 %016llx, recorded %016llx): the shard is damaged (coemu verify tells "
                "more; rerunning the same generate job remakes it)",
                s ? s->path : c->h5path, (long long)idx, (long long)(s ? idx - s->first : idx),
                bad == 0 ? "inputs" : "targets", (unsigned long long)got[bad],
                (unsigned long long)want[bad]);
}

int integrity_check_row(hid_t sums, hsize_t row, const char *file, int64_t idx,
                        const float *inputs, size_t nin, const float *targets, size_t nout) {
  uint64_t want[2] = {0, 0};
  hid_t fs = H5Dget_space(sums);
  hsize_t start[2] = {row, 0}, cnt[2] = {1, 2};
  hid_t ms = H5Screate_simple(2, cnt, NULL);
  herr_t e = -1;
  H5E_BEGIN_TRY {
    e = H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, cnt, NULL);
    if (e >= 0) e = H5Dread(sums, H5T_NATIVE_UINT64, ms, fs, H5P_DEFAULT, want);
  } H5E_END_TRY;
  H5Sclose(ms);
  H5Sclose(fs);
  if (e < 0) return ce_err("%s: sample %lld: cannot read its /checksums row", file, (long long)idx);
  uint64_t got[2] = {inputs && nin ? shard_row_hash(inputs, nin) : want[0],
                     shard_row_hash(targets, nout)};
  int bad = got[0] != want[0] ? 0 : got[1] != want[1] ? 1 : -1;
  if (bad < 0) return 0;
  return ce_err("%s: sample %lld (row %llu of the shard): /%s does not match its checksum "
                "(xxh64 %016llx, recorded %016llx): the shard is damaged", file, (long long)idx,
                (unsigned long long)row, bad == 0 ? "inputs" : "targets",
                (unsigned long long)got[bad], (unsigned long long)want[bad]);
}

void integrity_close(integrity *c) {
  if (c->sums >= 0) H5Dclose(c->sums);
  c->sums = -1;
  for (int i = 0; i < c->nsrc; i++) free(c->src[i].path);
  free(c->src);
  c->src = NULL;
  c->nsrc = 0;
}

/* A whole number from a manifest entry, or -1. */
static int64_t manifest_int(const yt_node *e, const char *key) {
  const yt_node *v = yt_get(e, key);
  if (!v || v->kind != YT_SCALAR) return -1;
  char *end;
  long long x = strtoll(v->text, &end, 10);
  return (*end || end == v->text || x < 0) ? -1 : (int64_t)x;
}

int integrity_check_labels(const integrity *ic, const char *name, const uint8_t *values, int64_t n) {
  if (ic->nsrc == 0) return 0; /* plain arrays: no shards, no manifest to check against */
  char dir[4096], mpath[4200], *text;
  size_t len;
  fs_parent_dir(ic->h5path, dir, sizeof dir);
  snprintf(mpath, sizeof mpath, "%s/manifest.json", dir);
  /* virtual datasets made by hand (no manifest: not coemu's) have no
   * recorded label checksums; serve refuses them earlier (not finished) */
  if (access(mpath, F_OK) != 0 && errno == ENOENT) return 0;
  CE_TRY(fs_read_all(mpath, &text, &len));
  yt_node *m = yt_parse(mpath, text, len);
  free(text);
  if (!m) return -1;
  const yt_node *shards = yt_get(m, "shards");
  int rc = 0;
  if (!shards || shards->kind != YT_SEQ) rc = ce_err("%s: no shards list", mpath);
  for (size_t i = 0; rc == 0 && i < shards->n; i++) {
    const yt_node *e = shards->items[i], *file = yt_get(e, "file"), *crc = yt_get(e, "crc32");
    const yt_node *c = crc ? yt_get(crc, name) : NULL;
    int64_t first = manifest_int(e, "first"), count = manifest_int(e, "count");
    if (!file || file->kind != YT_SCALAR || !c || c->kind != YT_SCALAR || first < 0 ||
        count < 0 || first + count > n) {
      rc = ce_err("%s:%d:%d: shards[%zu]: expected file, first, count and crc32.%s within %lld "
                  "samples", mpath, e->line, e->col, i, name, (long long)n);
      break;
    }
    uint32_t want = (uint32_t)strtoul(c->text, NULL, 16);
    uint32_t got = (uint32_t)crc32_z(0, (const Bytef *)(values + first), (size_t)count);
    if (got != want)
      rc = ce_err("%s/%s: samples %lld..%lld: /%s does not match its checksum (crc32 %08x, the "
                  "manifest records %08x): the shard is damaged (coemu verify tells more; "
                  "rerunning the same generate job remakes it)",
                  dir, file->text, (long long)first, (long long)(first + count - 1), name, got,
                  want);
  }
  yt_free(m);
  return rc;
}
