/* statsfile.c - write and read the /stats group (see statsfile.h). */
#include "stats/statsfile.h"

#include <errno.h>
#include <hdf5.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "common/error.h"
#include "common/fsutil.h"

/* One scalar attribute: file type ftype, memory type mtype. */
static int put_scalar(hid_t loc, const char *name, hid_t ftype, hid_t mtype, const void *v) {
  hid_t sp = H5Screate(H5S_SCALAR);
  hid_t a = H5Acreate2(loc, name, ftype, sp, H5P_DEFAULT, H5P_DEFAULT);
  herr_t e = a < 0 ? -1 : H5Awrite(a, mtype, v);
  if (a >= 0) H5Aclose(a);
  H5Sclose(sp);
  return e < 0 ? ce_err("attribute %s: cannot write", name) : 0;
}

static int put_f64(hid_t loc, const char *name, double v) {
  return put_scalar(loc, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &v);
}

static int put_i64(hid_t loc, const char *name, int64_t v) {
  return put_scalar(loc, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &v);
}

static int put_str(hid_t loc, const char *name, const char *v) {
  hid_t t = H5Tcopy(H5T_C_S1);
  H5Tset_size(t, strlen(v) + 1);
  hid_t sp = H5Screate(H5S_SCALAR);
  hid_t a = H5Acreate2(loc, name, t, sp, H5P_DEFAULT, H5P_DEFAULT);
  herr_t e = a < 0 ? -1 : H5Awrite(a, t, v);
  if (a >= 0) H5Aclose(a);
  H5Sclose(sp);
  H5Tclose(t);
  return e < 0 ? ce_err("attribute %s: cannot write", name) : 0;
}

/* One scalar attribute read as memory type mtype; `kind` names it in errors. */
static int get_scalar(hid_t loc, const char *where, const char *name, hid_t mtype,
                      const char *kind, void *v) {
  if (H5Aexists(loc, name) <= 0) CE_FAIL("%s: attribute %s missing", where, name);
  hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
  herr_t e = a < 0 ? -1 : H5Aread(a, mtype, v);
  if (a >= 0) H5Aclose(a);
  return e < 0 ? ce_err("%s: attribute %s: cannot read as %s", where, name, kind) : 0;
}

static int get_f64(hid_t loc, const char *where, const char *name, double *v) {
  return get_scalar(loc, where, name, H5T_NATIVE_DOUBLE, "a number", v);
}

static int get_i64(hid_t loc, const char *where, const char *name, int64_t *v) {
  return get_scalar(loc, where, name, H5T_NATIVE_INT64, "an integer", v);
}

int stats_attr_str(hid_t loc, const char *where, const char *name, char *buf, size_t len) {
  buf[0] = 0;
  if (H5Aexists(loc, name) <= 0) CE_FAIL("%s: attribute %s missing", where, name);
  hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
  hid_t t = a < 0 ? -1 : H5Aget_type(a);
  int ok = t >= 0 && H5Tget_class(t) == H5T_STRING && !H5Tis_variable_str(t) &&
           H5Tget_size(t) < len;
  if (ok) {
    hid_t mt = H5Tcopy(H5T_C_S1);
    H5Tset_size(mt, H5Tget_size(t));
    memset(buf, 0, len);
    ok = H5Aread(a, mt, buf) >= 0;
    H5Tclose(mt);
  }
  if (t >= 0) H5Tclose(t);
  if (a >= 0) H5Aclose(a);
  return ok ? 0 : ce_err("%s: attribute %s: expected a fixed-length string", where, name);
}

static int write_field(hid_t g, const stats_field *f) {
  hid_t fg = H5Gcreate2(g, f->name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  if (fg < 0) CE_FAIL("cannot create group /stats/%s", f->name);
  int rc = 0;
  rc |= put_i64(fg, "count", f->s.count);
  rc |= put_f64(fg, "mean", f->s.mean);
  rc |= put_f64(fg, "std", f->s.std);
  rc |= put_f64(fg, "min", f->s.min);
  rc |= put_f64(fg, "max", f->s.max);
  rc |= put_f64(fg, "median", f->median);
  rc |= put_f64(fg, "median_of_medians", f->mom.mom);
  rc |= put_f64(fg, "mom_rank_error", f->mom.rank_error);
  rc |= put_f64(fg, "mom_quantile_lo", f->mom.q_lo);
  rc |= put_f64(fg, "mom_quantile_hi", f->mom.q_hi);
  rc |= put_i64(fg, "mom_chunks", f->chunks);
  rc |= put_i64(fg, "nan_count", f->s.nan_count);
  rc |= put_i64(fg, "inf_count", f->s.inf_count);
  H5Gclose(fg);
  return rc ? ce_err_prefix("/stats/%s", f->name) : 0;
}

static int write_norm(hid_t g, const stats_norm *p) {
  int rc = 0;
  rc |= put_f64(g, "vz_mean", p->vz_mean);
  rc |= put_f64(g, "vz_std", p->vz_std);
  rc |= put_f64(g, "lnT_min", p->lnT_min);
  rc |= put_f64(g, "lnT_scale", p->lnT_scale);
  rc |= put_f64(g, "lnn_min", p->lnn_min);
  rc |= put_f64(g, "lnn_scale", p->lnn_scale);
  rc |= put_str(g, "I_mode", p->i_mode == STATS_I_MEDIAN ? "median" : "minmax");
  rc |= put_f64(g, "lnI_clip", p->lnI_clip);
  rc |= put_f64(g, "lnI_min", p->lnI_min);
  rc |= put_f64(g, "lnI_scale", p->lnI_scale);
  rc |= put_f64(g, "outlier_vz_range", p->outlier_vz_range);
  return rc ? -1 : 0;
}

/* Fault hooks for tests/pipeline/test_faults.py: COEMU_FAULT_STATS=NAME
 * ends this process at once (_exit, as a kill would) at the step of that
 * name; COEMU_FAULT_STATS_FSIZE=BYTES sets a file-size limit (a full disk)
 * before the file is written. */
static void fault_point(const char *name) {
  const char *f = getenv("COEMU_FAULT_STATS");
  if (f && !strcmp(f, name)) _exit(137);
}

static void fault_fsize(void) {
  const char *v = getenv("COEMU_FAULT_STATS_FSIZE");
  if (!v || !*v) return;
  signal(SIGXFSZ, SIG_IGN);
  struct rlimit rl = {(rlim_t)strtoull(v, NULL, 10), (rlim_t)strtoull(v, NULL, 10)};
  setrlimit(RLIMIT_FSIZE, &rl);
}

/* HDF5's metadata checksum (exported by libhdf5, not in its public headers). */
uint32_t H5_checksum_metadata(const void *data, size_t len, uint32_t initval);

/* An image of a file open for writing, from HDF5 1.10's H5Fget_file_image,
 * has the superblock's "open for writing" flags cleared but the checksum of
 * the superblock with them set: make it whole (superblock versions 2, 3). */
static void fix_superblock(unsigned char *img, size_t len) {
  if (len < 16 || memcmp(img, "\211HDF\r\n\032\n", 8) != 0 || img[8] < 2) return;
  size_t so = img[9], end = 12 + 4 * so;
  if (end + 4 > len) return;
  img[11] = 0;
  uint32_t c = H5_checksum_metadata(img, end, 0);
  for (int k = 0; k < 4; k++) img[end + (size_t)k] = (unsigned char)(c >> (8 * k));
}

/* Replace /stats in the file `path` (the temporary copy). HDF5 edits it in
 * memory (the core driver, no backing store) and the image is written out
 * here: HDF5 never meets a disk error, which it does not survive (a failed
 * H5Fclose leaves a file that crashes its shutdown in MPI_Finalize). */
static int replace_stats(const char *h5path, const char *path, const char *group,
                         const stats_field *fields, int nfields, const stats_norm *norm,
                         const stats_provenance *prov) {
  char tmpgroup[80];
  snprintf(tmpgroup, sizeof tmpgroup, "%s.tmp", group);
  int rc = -1;
  hid_t f = -1, g = -1, fapl = H5Pcreate(H5P_FILE_ACCESS);
  void *image = NULL;
  ssize_t isize = -1;
  H5Pset_fapl_core(fapl, 1 << 16, 0);
  H5E_BEGIN_TRY {
    errno = 0;
    f = H5Fopen(path, H5F_ACC_RDWR, fapl);
    if (f < 0) {
      ce_err("%s: cannot open for writing /stats", path);
      goto done;
    }
    if (H5Lexists(f, tmpgroup, H5P_DEFAULT) > 0) H5Ldelete(f, tmpgroup, H5P_DEFAULT);
    g = H5Gcreate2(f, tmpgroup, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (g < 0) {
      ce_err("%s: cannot create group %s", h5path, tmpgroup);
      goto done;
    }
    if (put_i64(g, "format_version", 1) < 0 || write_norm(g, norm) < 0 ||
        put_str(g, "split", prov->split) < 0 ||
        put_i64(g, "samples_total", prov->samples_total) < 0 ||
        put_i64(g, "samples_used", prov->samples_used) < 0 ||
        put_i64(g, "samples_outliers", prov->samples_outliers) < 0 ||
        put_i64(g, "ranks", prov->ranks) < 0 ||
        put_i64(g, "empty_targets", prov->empty_targets) < 0 ||
        put_f64(g, "empty_ln_level", prov->empty_ln_level) < 0 ||
        put_f64(g, "empty_fraction", prov->empty_fraction) < 0 ||
        put_f64(g, "pixels_below_clip", prov->pixels_below_clip) < 0) {
      ce_err_prefix("%s: %s", h5path, group);
      goto done;
    }
    for (int i = 0; i < nfields; i++)
      if (write_field(g, &fields[i]) < 0) {
        ce_err_prefix("%s", h5path);
        goto done;
      }
    H5Gclose(g);
    g = -1;
    if (H5Lexists(f, group, H5P_DEFAULT) > 0 && H5Ldelete(f, group, H5P_DEFAULT) < 0) {
      ce_err("%s: cannot remove the old %s", h5path, group);
      goto done;
    }
    if (H5Lmove(f, tmpgroup, f, group, H5P_DEFAULT, H5P_DEFAULT) < 0) {
      ce_err("%s: cannot rename %s to %s", h5path, tmpgroup, group);
      goto done;
    }
    if (H5Fflush(f, H5F_SCOPE_GLOBAL) < 0 || (isize = H5Fget_file_image(f, NULL, 0)) <= 0 ||
        !(image = malloc((size_t)isize)) || H5Fget_file_image(f, image, (size_t)isize) != isize) {
      ce_err("%s: cannot build the new file in memory", path);
      goto done;
    }
    rc = 0;
  done:
    if (g >= 0) H5Gclose(g);
    if (f >= 0 && H5Fclose(f) < 0 && rc == 0) rc = ce_err("%s: cannot close", path);
  } H5E_END_TRY;
  H5Pclose(fapl);
  (void)h5path;
  if (rc == 0) {
    fix_superblock(image, (size_t)isize);
    fault_point("written");
    FILE *out = fopen(path, "wb");
    if (!out) rc = ce_err("%s: cannot open: %s", path, strerror(errno));
    else {
      errno = 0;
      int ok = fwrite(image, 1, (size_t)isize, out) == (size_t)isize && fflush(out) == 0;
      int e = errno;
      if (fclose(out) != 0 && ok) ok = 0, e = errno;
      if (!ok) rc = ce_err("%s: write failed: %s", path, strerror(e ? e : EIO));
    }
  }
  free(image);
  return rc;
}

/* /stats is never written in place: dataset.h5 is copied to
 * dataset.h5.tmp.PID, /stats is replaced in the copy, and the copy is
 * fsynced and renamed over dataset.h5. A kill or a full disk at any point
 * leaves the old file (old /stats) or the new one (new /stats), never a
 * file HDF5 cannot open; readers that have the old file open keep reading it. */
int stats_file_write(const char *h5path, const stats_field *fields, int nfields,
                     const stats_norm *norm, const stats_provenance *prov) {
  return stats_file_write_group(h5path, "/stats", fields, nfields, norm, prov);
}

int stats_file_write_group(const char *h5path, const char *group, const stats_field *fields,
                           int nfields, const stats_norm *norm, const stats_provenance *prov) {
  if (group[0] != '/' || strlen(group) > 64) CE_FAIL("stats group '%s': expected /NAME", group);
  char tmp[4200];
  if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp.%ld", h5path, (long)getpid()) >= sizeof tmp)
    CE_FAIL("%s: path too long", h5path);
  fault_fsize();
  if (fs_copy_file(h5path, tmp) < 0) return ce_err_prefix("writing /stats");
  fault_point("copied");
  int rc = replace_stats(h5path, tmp, group, fields, nfields, norm, prov);
  fault_point("closed");
  if (rc == 0) rc = fs_rename_durable(tmp, h5path);
  if (rc < 0) {
    unlink(tmp);
    return ce_err_prefix("%s: %s not written, the file is unchanged", h5path, group);
  }
  fault_point("renamed");
  return 0;
}

static hid_t open_stats(const char *h5path, hid_t *f) {
  hid_t g = -1;
  H5E_BEGIN_TRY {
    *f = H5Fopen(h5path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (*f >= 0) g = H5Gopen2(*f, "/stats", H5P_DEFAULT);
  } H5E_END_TRY;
  if (*f < 0) return ce_err_open(h5path, "as HDF5");
  if (g < 0) {
    H5Fclose(*f);
    return ce_err("%s: no group /stats (run `coemu stats` on the dataset)", h5path);
  }
  return g;
}

int stats_file_read_norm(const char *h5path, stats_norm *p) {
  hid_t f, g = open_stats(h5path, &f);
  if (g < 0) return -1;
  char where[600], mode[16];
  snprintf(where, sizeof where, "%s: /stats", h5path);
  memset(p, 0, sizeof *p);
  int rc = 0;
  H5E_BEGIN_TRY {
    int64_t version = 0;
    rc = get_i64(g, where, "format_version", &version);
    if (!rc && version != 1)
      rc = ce_err("%s: format_version %lld, expected 1", where, (long long)version);
    if (!rc)
      rc = get_f64(g, where, "vz_mean", &p->vz_mean) | get_f64(g, where, "vz_std", &p->vz_std) |
           get_f64(g, where, "lnT_min", &p->lnT_min) |
           get_f64(g, where, "lnT_scale", &p->lnT_scale) |
           get_f64(g, where, "lnn_min", &p->lnn_min) |
           get_f64(g, where, "lnn_scale", &p->lnn_scale) |
           stats_attr_str(g, where, "I_mode", mode, sizeof mode) |
           get_f64(g, where, "lnI_clip", &p->lnI_clip) |
           get_f64(g, where, "lnI_min", &p->lnI_min) |
           get_f64(g, where, "lnI_scale", &p->lnI_scale) |
           get_f64(g, where, "outlier_vz_range", &p->outlier_vz_range);
    if (!rc) {
      if (!strcmp(mode, "minmax")) p->i_mode = STATS_I_MINMAX;
      else if (!strcmp(mode, "median")) p->i_mode = STATS_I_MEDIAN;
      else rc = ce_err("%s: I_mode '%s', expected minmax or median", where, mode);
    }
    if (!rc && !(p->vz_std > 0 && p->lnT_scale > 0 && p->lnn_scale > 0 && p->lnI_scale > 0))
      rc = ce_err("%s: a scale (vz_std, lnT_scale, lnn_scale, lnI_scale) is not > 0", where);
  } H5E_END_TRY;
  H5Gclose(g);
  H5Fclose(f);
  return rc ? -1 : 0;
}

int stats_file_read_field(const char *h5path, const char *name, stats_field *fd) {
  hid_t f, g = open_stats(h5path, &f);
  if (g < 0) return -1;
  memset(fd, 0, sizeof *fd);
  snprintf(fd->name, sizeof fd->name, "%s", name);
  char where[600];
  snprintf(where, sizeof where, "%s: /stats/%s", h5path, name);
  int rc = 0;
  H5E_BEGIN_TRY {
    hid_t fg = H5Gopen2(g, name, H5P_DEFAULT);
    if (fg < 0) {
      rc = ce_err("%s: no such group", where);
    } else {
      rc = get_i64(fg, where, "count", &fd->s.count) | get_f64(fg, where, "mean", &fd->s.mean) |
           get_f64(fg, where, "std", &fd->s.std) | get_f64(fg, where, "min", &fd->s.min) |
           get_f64(fg, where, "max", &fd->s.max) | get_f64(fg, where, "median", &fd->median) |
           get_f64(fg, where, "median_of_medians", &fd->mom.mom) |
           get_f64(fg, where, "mom_rank_error", &fd->mom.rank_error) |
           get_f64(fg, where, "mom_quantile_lo", &fd->mom.q_lo) |
           get_f64(fg, where, "mom_quantile_hi", &fd->mom.q_hi) |
           get_i64(fg, where, "mom_chunks", &fd->chunks) |
           get_i64(fg, where, "nan_count", &fd->s.nan_count) |
           get_i64(fg, where, "inf_count", &fd->s.inf_count);
      fd->s.var = fd->s.std * fd->s.std;
      fd->s.m2 = fd->s.var * (double)fd->s.count;
      H5Gclose(fg);
    }
  } H5E_END_TRY;
  H5Gclose(g);
  H5Fclose(f);
  return rc ? -1 : 0;
}
