/* test_shard_layout.c - shards opened without HDF5 at the places the
 * manifest records (format 2.3, shard_reader.h "Opening a shard without
 * HDF5"), and the rules that keep that safe:
 *   - every sample read through the layout (shard_reader_read, _read_list,
 *     the direct plan with pread and with mapped views, the labels) equals
 *     the sample that was written, with no HDF5 open of any shard, for
 *     shards of one row and of several; the same dataset without the
 *     recorded layout (a 2.2 manifest) reads the same bytes through HDF5;
 *     a shard of 1,200 samples has its layout recorded too (its /targets
 *     chunks allocated when it is created, at one stride);
 *   - a shard file shorter than a recorded extent (truncated after the
 *     reader opened) is an error naming the file;
 *   - a shard replaced by another shard's file (same size, same layout, its
 *     rows consistent with its own /checksums) is an error naming it, on
 *     every read path; before the manifest's CRC-32 of /checksums was
 *     checked, the other shard's samples were delivered;
 *   - a shard rewritten with another layout and the same content (what
 *     h5repack does) falls back to HDF5 and still reads the right samples;
 *   - a malformed "layout" in the manifest is an error naming its position;
 *   - a sample's catalogue entry (model, direction, split: what the preview
 *     and `coemu eval` print) read from its shard through dataset.h5's
 *     samples_per_shard (format 2.4) equals the one read through the
 *     virtual datasets, which a dataset without the attribute still uses.
 * The datasets are made in a child process (tests/dataset_fixture.h), so
 * this process runs no MPI and keeps LeakSanitizer's checks. */
#include <fcntl.h>
#include <hdf5.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "common/fsutil.h"
#include "dataset_fixture.h"
#include "pipeline/dataset/export_fits.h"
#include "pipeline/dataset/shard.h"
#include "pipeline/dataset/shard_reader.h"

static const fixture_spec ONE = {4, 3, 4, 3, 1, 0};  /* 12 shards of one sample */
static const fixture_spec FIVE = {4, 3, 4, 3, 5, 0}; /* 3 shards: 5, 5, 2 samples */
/* one shard of 1,200 samples: /targets chunks written one by one would lie
 * around HDF5's metadata (not at one stride); allocated up front they do */
static const fixture_spec BIG = {40, 30, 4, 3, 1200, 0};
static const char *g_tmp;
static int g_n;

static int make(const fixture_spec *f, char *dir, size_t len) {
  snprintf(dir, len, "%s/ds%d", g_tmp, g_n++);
  if (fixture_make_forked(dir, f) < 0) {
    CHECK_MSG(0, "fixture: %s", ce_err_msg());
    return -1;
  }
  return 0;
}

static void shard_file(const char *dir, int s, char *buf, size_t len) {
  snprintf(buf, len, "%s/shards/shard-%06d.h5", dir, s);
}

static char *slurp(const char *path) {
  char *t = NULL;
  size_t n = 0;
  if (fs_read_all(path, &t, &n) < 0) return NULL;
  return t;
}

static int spit(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  if (!f) return -1;
  fputs(text, f);
  return fclose(f);
}

static int count_of(const char *text, const char *what) {
  int k = 0;
  for (const char *p = text; (p = strstr(p, what)); p++) k++;
  return k;
}

/* The manifest without its "layout" entries: what a 2.2 coemu wrote. */
static int strip_layout(const char *dir) {
  char mpath[4200];
  snprintf(mpath, sizeof mpath, "%s/manifest.json", dir);
  char *t = slurp(mpath);
  if (!t) return -1;
  char *w = t;
  for (const char *p = t; *p;) {
    if (!strncmp(p, ", \"layout\": [", 13)) {
      p = strchr(p, ']');
      if (!p) break;
      p++;
      continue;
    }
    *w++ = *p++;
  }
  *w = 0;
  int rc = spit(mpath, t);
  free(t);
  return rc;
}

/* Every sample of the dataset through every read path, against the
 * fixture's own samples (exact: the same float32 values written). */
static void read_everything(const fixture_spec *f, const char *dir, int64_t *opens,
                            int64_t *h5opens, int64_t *fallbacks) {
  shard_reader *r = NULL;
  int64_t N = fixture_samples(f);
  size_t ni = fixture_in_vals(f), no = fixture_out_vals(f);
  float *win = malloc(ni * sizeof(float)), *wout = malloc(no * sizeof(float));
  float *in = malloc((size_t)N * ni * sizeof(float)), *out = malloc((size_t)N * no * sizeof(float));
  uint8_t *split = calloc((size_t)N, 1), *valid = calloc((size_t)N, 1), *want = calloc((size_t)N, 1);
  int64_t *idx = malloc((size_t)N * sizeof *idx);
  uint64_t *sums = malloc((size_t)N * 2 * sizeof *sums);
  shard_direct_row *rows = malloc((size_t)N * sizeof *rows);
  if (!win || !wout || !in || !out || !split || !valid || !want || !idx || !sums || !rows) abort();
  CHECK(fixture_splits(f, want) == 0);
  /* a cap of 3 open shards: shards are evicted and opened again */
  if (shard_reader_open(dir, 3, &r) < 0) {
    CHECK_MSG(0, "open %s: %s", dir, ce_err_msg());
    goto done;
  }
  CHECK(shard_reader_checked(r));
  int hs = 0, hv = 0;
  CHECK_MSG(shard_reader_labels(r, 0, N, split, valid, &hs, &hv) == 0, "labels: %s", ce_err_msg());
  CHECK(hs && hv && !memcmp(split, want, (size_t)N));
  for (int64_t i = 0; i < N; i++) CHECK(valid[i] == 1);
  /* in order, one call */
  CHECK_MSG(shard_reader_read(r, 0, N, in, out) == 0, "read: %s", ce_err_msg());
  for (int64_t i = 0; i < N; i++) {
    fixture_sample(f, i, win, wout);
    CHECK_MSG(!memcmp(in + (size_t)i * ni, win, ni * sizeof(float)) &&
                  !memcmp(out + (size_t)i * no, wout, no * sizeof(float)),
              "%s: sample %lld differs (read)", dir, (long long)i);
  }
  /* a list in another order (runs of consecutive samples and single ones) */
  for (int64_t k = 0; k < N; k++) idx[k] = (k * 5 + 3) % N;
  memset(in, 0, (size_t)N * ni * sizeof(float));
  CHECK_MSG(shard_reader_read_list_sums(r, idx, (int)N, in, out, sums) == 0, "list: %s", ce_err_msg());
  for (int64_t k = 0; k < N; k++) {
    fixture_sample(f, idx[k], win, wout);
    CHECK_MSG(!memcmp(in + (size_t)k * ni, win, ni * sizeof(float)) &&
                  !memcmp(out + (size_t)k * no, wout, no * sizeof(float)) &&
                  sums[2 * k + 1] == shard_row_hash(wout, no),
              "%s: sample %lld differs (list)", dir, (long long)idx[k]);
  }
  /* the direct plan: pread, and mapped views of runs */
  for (int64_t k = 0; k < N; k++) idx[k] = k;
  for (int64_t k = 0; k < N;) {
    /* one shard's rows a plan: the run a mapped view covers */
    int64_t run = shard_reader_shard_end(r, k) - k;
    int direct = 0, m = shard_reader_direct_plan(r, idx + k, (int)run, rows, &direct);
    if (m < 1) {
      CHECK_MSG(0, "plan at %lld: %s", (long long)k, ce_err_msg());
      break;
    }
    CHECK(direct == 1);
    if (direct) {
      CHECK_MSG(shard_reader_direct_read(r, rows, m, in, out, sums) == 0, "direct: %s", ce_err_msg());
      const void *vi = NULL, *vo = NULL;
      shard_map *hold = NULL;
      int mapped = shard_reader_direct_map(r, rows, m, &vi, &vo, sums, &hold);
      int back_to_back = 1; /* a mapped view needs the run's rows back to back */
      for (int j = 1; j < m; j++)
        back_to_back &= rows[j].off[0] == rows[0].off[0] + (int64_t)(j * ni * 4) &&
                        rows[j].off[1] == rows[0].off[1] + (int64_t)(j * no * 4);
      CHECK_MSG(mapped == back_to_back, "%s: sample %lld: mapped %d, rows back to back %d", dir,
                (long long)k, mapped, back_to_back);
      for (int j = 0; j < m; j++) {
        fixture_sample(f, k + j, win, wout);
        CHECK_MSG(!memcmp(in + (size_t)j * ni, win, ni * sizeof(float)) &&
                      !memcmp(out + (size_t)j * no, wout, no * sizeof(float)),
                  "%s: sample %lld differs (direct)", dir, (long long)(k + j));
        if (mapped == 1)
          CHECK_MSG(!memcmp((const char *)vi + (size_t)j * ni * 4, win, ni * sizeof(float)) &&
                        !memcmp((const char *)vo + (size_t)j * no * 4, wout, no * sizeof(float)),
                    "%s: sample %lld differs (mapped)", dir, (long long)(k + j));
      }
      shard_map_release(hold);
      shard_reader_direct_end(r, rows, m);
    }
    k += m;
  }
  *opens = shard_reader_opens(r);
  *h5opens = shard_reader_h5_opens(r);
  *fallbacks = shard_reader_layout_fallbacks(r);
done:
  shard_reader_close(r);
  free(win), free(wout), free(in), free(out), free(split), free(valid), free(want), free(idx);
  free(sums), free(rows);
}

static void test_layout_read(void) {
  const fixture_spec *specs[3] = {&ONE, &FIVE, &BIG};
  for (int k = 0; k < 3; k++) {
    const fixture_spec *f = specs[k];
    char dir[1200], mpath[1300];
    if (make(f, dir, sizeof dir) < 0) return;
    snprintf(mpath, sizeof mpath, "%s/manifest.json", dir);
    char *t = slurp(mpath);
    int64_t K = (fixture_samples(f) + f->samples_per_shard - 1) / f->samples_per_shard;
    CHECK_MSG(t && count_of(t, "\"layout\": [") == K && strstr(t, "\"format_minor\": 4"),
              "%s: every shard's layout recorded, format 2.4", mpath);
    free(t);
    int64_t opens = 0, h5 = -1, fb = -1;
    read_everything(f, dir, &opens, &h5, &fb);
    /* cap 3 < shards: reopened after eviction, never through HDF5 */
    CHECK_MSG(opens >= K && h5 == 0 && fb == 0, "layout: %lld opens, %lld by HDF5, %lld fallbacks",
              (long long)opens, (long long)h5, (long long)fb);
    CHECK(strip_layout(dir) == 0);
    read_everything(f, dir, &opens, &h5, &fb); /* the same bytes through HDF5 */
    CHECK_MSG(opens >= K && h5 == opens && fb == 0, "2.2: %lld opens, %lld by HDF5",
              (long long)opens, (long long)h5);
  }
}

/* Shard 2 cut short after the reader opened the dataset (the open checks
 * the manifest's sizes): each read path names the file and the extent. */
static void test_layout_truncated(void) {
  char dir[1200], p[1300];
  size_t ni = fixture_in_vals(&ONE), no = fixture_out_vals(&ONE);
  float *in = malloc(ni * sizeof(float)), *out = malloc(no * sizeof(float));
  uint8_t split[12];
  for (int path = 0; path < 3; path++) {
    if (make(&ONE, dir, sizeof dir) < 0) break;
    shard_reader *r = NULL;
    if (shard_reader_open(dir, 0, &r) < 0) {
      CHECK_MSG(0, "open: %s", ce_err_msg());
      break;
    }
    int s = 2 + path;
    shard_file(dir, s, p, sizeof p);
    CHECK(truncate(p, 1500) == 0); /* the rows and /checksums lie beyond */
    int rc;
    if (path == 0) {
      rc = shard_reader_read(r, s, 1, in, out);
    } else if (path == 1) {
      rc = shard_reader_labels(r, s, 1, split, NULL, NULL, NULL);
    } else {
      int64_t i = s;
      int direct = 0;
      shard_direct_row row;
      rc = shard_reader_direct_plan(r, &i, 1, &row, &direct);
      if (rc >= 1 && direct) shard_reader_direct_end(r, &row, rc), rc = 0;
      rc = rc < 0 ? -1 : 0;
    }
    const char *msg = ce_err_msg();
    CHECK_MSG(rc < 0 && strstr(msg, p) && strstr(msg, "the file is 1500 bytes") &&
                  strstr(msg, "reaches byte"),
              "path %d: %s", path, rc < 0 ? msg : "no error");
    shard_reader_close(r);
  }
  free(in), free(out);
}

/* Shard 2 replaced by shard 1's file (the same model: the same /split and
 * /valid): the same size and layout, its rows matching its own /checksums;
 * only the manifest's CRC-32 of /checksums tells them apart. Named on
 * every path, with and without the recorded layout; no sample delivered. */
static void test_layout_replaced(void) {
  for (int strip = 0; strip < 2; strip++) {
    char dir[1200], p2[1300], p5[1300];
    if (make(&ONE, dir, sizeof dir) < 0) return;
    if (strip) CHECK(strip_layout(dir) == 0);
    shard_file(dir, 2, p2, sizeof p2);
    shard_file(dir, 1, p5, sizeof p5);
    char *a = NULL;
    size_t len = 0;
    CHECK(fs_read_all(p5, &a, &len) == 0);
    FILE *w = fopen(p2, "wb");
    CHECK(w && fwrite(a, 1, len, w) == len && fclose(w) == 0);
    free(a);
    size_t ni = fixture_in_vals(&ONE), no = fixture_out_vals(&ONE);
    float *in = calloc(ni, sizeof(float)), *out = calloc(no, sizeof(float));
    uint8_t split[12];
    for (int path = 0; path < 3; path++) {
      shard_reader *r = NULL;
      if (shard_reader_open(dir, 0, &r) < 0) {
        CHECK_MSG(0, "open: %s", ce_err_msg());
        break;
      }
      int rc;
      if (path == 0) {
        rc = shard_reader_read(r, 2, 1, in, out);
      } else if (path == 1) { /* serve's first step: every label and checksum */
        rc = shard_reader_labels(r, 0, 12, split, NULL, NULL, NULL);
      } else {
        int64_t i = 2;
        int direct = 0;
        shard_direct_row row;
        rc = shard_reader_direct_plan(r, &i, 1, &row, &direct);
        if (rc >= 1 && direct) {
          rc = shard_reader_direct_read(r, &row, 1, in, out, NULL);
          shard_reader_direct_end(r, &row, 1);
        } else if (rc >= 1) {
          rc = shard_reader_read_list(r, &i, 1, in, out);
        }
      }
      const char *msg = ce_err_msg();
      CHECK_MSG(rc < 0 && strstr(msg, p2) && strstr(msg, "/checksums does not match"),
                "%s, path %d: %s", strip ? "2.2" : "2.3", path, rc < 0 ? msg : "no error");
      shard_reader_close(r);
    }
    free(in), free(out);
  }
}

/* Shard 1 rewritten with the same content at other places (every dataset
 * copied behind a 5000-byte block, as h5repack moves them): read through
 * HDF5 (one fallback), the right samples. */
static herr_t copy_attr(hid_t loc, const char *name, const H5A_info_t *ai, void *dst) {
  (void)ai;
  hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
  hid_t t = a >= 0 ? H5Aget_type(a) : -1, sp = a >= 0 ? H5Aget_space(a) : -1;
  unsigned char buf[64];
  int ok = a >= 0 && t >= 0 && sp >= 0 && H5Aget_storage_size(a) <= sizeof buf &&
           H5Aread(a, t, buf) >= 0;
  hid_t b = ok ? H5Acreate2(*(hid_t *)dst, name, t, sp, H5P_DEFAULT, H5P_DEFAULT) : -1;
  ok = ok && b >= 0 && H5Awrite(b, t, buf) >= 0;
  if (b >= 0) H5Aclose(b);
  if (t >= 0) H5Tclose(t);
  if (sp >= 0) H5Sclose(sp);
  if (a >= 0) H5Aclose(a);
  return ok ? 0 : -1;
}

static int rewrite_moved(const char *path) {
  char tmp[1400];
  snprintf(tmp, sizeof tmp, "%s.moved", path);
  hid_t src = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  H5Pset_libver_bounds(fapl, H5F_LIBVER_V110, H5F_LIBVER_LATEST);
  hid_t dst = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
  H5Pclose(fapl);
  int ok = src >= 0 && dst >= 0;
  hsize_t pad = 5000;
  hid_t sp = H5Screate_simple(1, &pad, NULL);
  hid_t d = ok ? H5Dcreate2(dst, "pad", H5T_STD_U8LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT) : -1;
  unsigned char *z = calloc(pad, 1);
  ok = ok && d >= 0 && z && H5Dwrite(d, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, z) >= 0;
  free(z);
  if (d >= 0) H5Dclose(d);
  H5Sclose(sp);
  /* reversed: the small arrays first, so every offset moves */
  static const char *const names[] = {"checksums", "valid", "split", "direction", "direction_index",
                                      "model_id", "targets", "inputs"};
  for (int k = 0; ok && k < 8; k++)
    ok = H5Ocopy(src, names[k], dst, names[k], H5P_DEFAULT, H5P_DEFAULT) >= 0;
  /* the root's attributes (first, count, n, ...) */
  ok = ok && H5Aiterate2(src, H5_INDEX_NAME, H5_ITER_INC, NULL, copy_attr, &dst) >= 0;
  if (src >= 0) H5Fclose(src);
  if (dst >= 0) H5Fclose(dst);
  return ok && rename(tmp, path) == 0 ? 0 : -1;
}

static void test_layout_rewritten(void) {
  char dir[1200], p[1300];
  if (make(&FIVE, dir, sizeof dir) < 0) return;
  shard_file(dir, 1, p, sizeof p);
  CHECK(rewrite_moved(p) == 0);
  int64_t opens = 0, h5 = -1, fb = -1;
  read_everything(&FIVE, dir, &opens, &h5, &fb);
  CHECK_MSG(fb >= 1 && h5 == fb && opens > h5, "%lld opens, %lld by HDF5, %lld fallbacks",
            (long long)opens, (long long)h5, (long long)fb);
  /* coemu verify names the rewritten shard and its layout */
  char *rep = NULL;
  size_t rlen = 0;
  FILE *mem = open_memstream(&rep, &rlen);
  int bad = mem ? dataset_verify(dir, mem) : -2;
  if (mem) fclose(mem);
  CHECK_MSG(bad != 0 && rep && strstr(rep, "shard-000001.h5: its arrays lie at") &&
                !strstr(rep, "shard-000000.h5") && !strstr(rep, "shard-000002.h5"),
            "verify: %d: %s", bad, rep ? rep : "");
  free(rep);
}

static void test_layout_malformed(void) {
  char dir[1200], mpath[1300];
  if (make(&FIVE, dir, sizeof dir) < 0) return;
  snprintf(mpath, sizeof mpath, "%s/manifest.json", dir);
  char *t = slurp(mpath), *at = t ? strstr(t, "\"layout\": [") : NULL;
  CHECK(at != NULL);
  if (!at) {
    free(t);
    return;
  }
  at[12] = '-'; /* a negative offset */
  CHECK(spit(mpath, t) == 0);
  free(t);
  shard_reader *r = NULL;
  int rc = shard_reader_open(dir, 0, &r);
  const char *msg = ce_err_msg();
  CHECK_MSG(rc < 0 && strstr(msg, mpath) && strstr(msg, "shards[0]") && strstr(msg, "layout"),
            "%s", rc < 0 ? msg : "opened");
  shard_reader_close(r);
}

/* the catalogue entry of every sample of FIVE (shards of 5, 5, 2 samples)
 * from its shard, then, with the attribute removed (a dataset of format
 * 2.3), from the virtual datasets: the same entries; a sample past the end
 * is an error both ways */
static void test_sample_info(void) {
  char dir[1200], h5[1300], path[1400];
  if (make(&FIVE, dir, sizeof dir) < 0) return;
  snprintf(h5, sizeof h5, "%s/dataset.h5", dir);
  int64_t N = fixture_samples(&FIVE), row = -1;
  export_fits_info a[12], b;
  hid_t f = H5Fopen(h5, H5F_ACC_RDONLY, H5P_DEFAULT);
  CHECK(f >= 0 && dataset_sample_shard(f, dir, 11, path, sizeof path, &row) == 1 && row == 1 &&
        strstr(path, "/shards/shard-000002.h5") != NULL);
  if (f >= 0) H5Fclose(f);
  for (int64_t i = 0; i < N && i < 12; i++) {
    CHECK_OK(export_fits_read_info(dir, i, -1, 0, FIVE.n, NULL, &a[i]));
    CHECK_MSG(a[i].model_id == i / FIVE.directions && a[i].direction_index == i % FIVE.directions,
              "sample %lld: model %lld direction %lld", (long long)i, (long long)a[i].model_id,
              (long long)a[i].direction_index);
  }
  CHECK_ERR(export_fits_read_info(dir, N, -1, 0, FIVE.n, NULL, &b), "shard-000002.h5: sample 12 (row 2)");
  /* a hostile attribute: an error naming it, not a division by zero */
  int64_t zero = 0, five = 5;
  f = H5Fopen(h5, H5F_ACC_RDWR, H5P_DEFAULT);
  hid_t at = f >= 0 ? H5Aopen(f, "samples_per_shard", H5P_DEFAULT) : -1;
  CHECK(at >= 0 && H5Awrite(at, H5T_NATIVE_INT64, &zero) >= 0);
  if (at >= 0) H5Aclose(at);
  if (f >= 0) H5Fclose(f);
  CHECK_ERR(export_fits_read_info(dir, 3, -1, 0, FIVE.n, NULL, &b),
            "dataset.h5: attribute samples_per_shard: expected an integer >= 1");
  f = H5Fopen(h5, H5F_ACC_RDWR, H5P_DEFAULT);
  at = f >= 0 ? H5Aopen(f, "samples_per_shard", H5P_DEFAULT) : -1;
  CHECK(at >= 0 && H5Awrite(at, H5T_NATIVE_INT64, &five) >= 0);
  if (at >= 0) H5Aclose(at);
  CHECK(f >= 0 && H5Adelete(f, "samples_per_shard") >= 0);
  if (f >= 0) H5Fclose(f);
  for (int64_t i = 0; i < N && i < 12; i++) {
    CHECK_OK(export_fits_read_info(dir, i, -1, 0, FIVE.n, NULL, &b));
    CHECK_MSG(b.model_id == a[i].model_id && b.direction_index == a[i].direction_index &&
              !memcmp(b.quat, a[i].quat, sizeof b.quat) && b.split == a[i].split &&
              !strcmp(b.model, a[i].model),
              "sample %lld: the shard's entry equals the virtual datasets'", (long long)i);
  }
  CHECK_ERR(export_fits_read_info(dir, N, -1, 0, FIVE.n, NULL, &b), "dataset.h5: sample 12");
}

int main(void) {
  g_tmp = check_scratch("shard_layout");
  RUN(test_layout_read);
  RUN(test_layout_truncated);
  RUN(test_layout_replaced);
  RUN(test_layout_rewritten);
  RUN(test_layout_malformed);
  RUN(test_sample_info);
  check_scratch_remove();
  return check_report();
}
