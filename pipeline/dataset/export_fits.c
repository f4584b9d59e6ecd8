/* export_fits.c - FITS cubes of dataset samples and channel maps (see
 * export_fits.h). */
#include "pipeline/dataset/export_fits.h"

#include <errno.h>
#include <fitsio.h>
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/error.h"
#include "common/fsutil.h"
#include "common/version.h"
#include "pipeline/dataset/dataset.h"
#include "pipeline/dataset/h5util.h"
#include "pipeline/job/yamltree.h"

#define AU_M 149597870700.0               /* IAU 2012 */
#define PC_AU (648000.0 / 3.14159265358979323846) /* IAU 2015: 1 pc = 648000/pi au */

/* The cube edge the job asked for (sampling.edge), 0 for auto. */
static int job_edge(const char *dir, double *edge) {
  char p[4200], *text;
  size_t len;
  snprintf(p, sizeof p, "%s/job.yaml", dir);
  CE_TRY(fs_read_all(p, &text, &len));
  yt_node *root = yt_parse(p, text, len);
  free(text);
  if (!root) return -1;
  yt_node *e = yt_get(yt_get(root, "sampling"), "edge");
  int rc = 0;
  *edge = 0;
  if (e && e->kind == YT_SCALAR && strcmp(e->text, "auto")) {
    char *end;
    errno = 0;
    *edge = strtod(e->text, &end);
    if (end == e->text || *end || errno || !(*edge > 0) || !isfinite(*edge))
      rc = ce_err("%s:%d:%d: sampling.edge '%s': expected a length in metres or auto", p, e->line,
                  e->col, e->text);
  }
  yt_free(root);
  return rc;
}

static int read_1d(hid_t f, const char *name, hid_t mtype, hsize_t at, void *out) {
  hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
  if (d < 0) return -1;
  hid_t sp = H5Dget_space(d);
  int nd = H5Sget_simple_extent_ndims(sp);
  hsize_t dims[2] = {0, 0}, start[2] = {at, 0}, count[2] = {1, 0};
  H5Sget_simple_extent_dims(sp, dims, NULL);
  int ok = nd >= 1 && nd <= 2 && at < dims[0];
  count[1] = nd == 2 ? dims[1] : 1;
  hid_t ms = -1;
  if (ok) {
    ok = H5Sselect_hyperslab(sp, H5S_SELECT_SET, start, NULL, count, NULL) >= 0;
    ms = H5Screate_simple(nd, count, NULL);
    ok = ok && ms >= 0 && H5Dread(d, mtype, ms, sp, H5P_DEFAULT, out) >= 0;
  }
  if (ms >= 0) H5Sclose(ms);
  H5Sclose(sp);
  H5Dclose(d);
  return ok ? 0 : -1;
}

/* The cube edge dataset.h5 records (/geometry edge, format_minor >= 1: the
 * resolved edge, the ball radius where the job said auto), > 0; 0 with
 * *why = EXPORT_EDGE_COMPAT where it is per sample (coemunet-compat
 * gridding: NaN), EXPORT_EDGE_NOT_RECORDED where there is no /geometry. */
static double recorded_edge(hid_t f, int *why) {
  double edge = 0;
  *why = EXPORT_EDGE_NOT_RECORDED;
  if (H5Lexists(f, "geometry", H5P_DEFAULT) <= 0) return 0;
  hid_t g = H5Gopen2(f, "geometry", H5P_DEFAULT);
  if (g < 0) return 0;
  if (h5_get_attr(g, "edge", H5T_NATIVE_DOUBLE, &edge) < 0) edge = 0;
  H5Gclose(g);
  if (edge > 0 && isfinite(edge)) {
    *why = EXPORT_EDGE_KNOWN;
    return edge;
  }
  *why = EXPORT_EDGE_COMPAT;
  return 0;
}

int export_fits_read_info(const char *dir, int64_t sample, double edge_m, int nf, int n,
                          double *vel, export_fits_info *info) {
  memset(info, 0, sizeof *info);
  info->sample = sample;
  char p[4200];
  snprintf(p, sizeof p, "%s/dataset.h5", dir);
  h5_lock();
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  hid_t f = H5Fopen(p, H5F_ACC_RDONLY, H5P_DEFAULT);
  int rc = f < 0 ? ce_err_open(p, "as HDF5") : 0;
  /* the cube edge: --edge, else /geometry's, else (a dataset made before
     format_minor 1) the job's sampling.edge unless it is auto */
  double edge = edge_m;
  info->edge_unknown = EXPORT_EDGE_KNOWN;
  if (rc == 0 && edge == 0) edge = recorded_edge(f, &info->edge_unknown);
  if (rc == 0 && edge == 0 && info->edge_unknown == EXPORT_EDGE_NOT_RECORDED &&
      (rc = job_edge(dir, &edge)) == 0 && edge > 0)
    info->edge_unknown = EXPORT_EDGE_KNOWN;
  if (edge < 0) info->edge_unknown = EXPORT_EDGE_KNOWN; /* not wanted */
  info->pixel_m = edge > 0 ? edge / n : 0;
  uint8_t split = 0;
  /* the sample's row of its shard (format 2.4), else of the virtual
   * datasets, whose every open decodes one mapping per shard */
  char shard_path[4200];
  int64_t row = sample;
  int in_shard = rc == 0 ? dataset_sample_shard(f, dir, sample, shard_path, sizeof shard_path, &row) : 0;
  if (in_shard < 0) rc = -1;
  hid_t src = in_shard > 0 ? H5Fopen(shard_path, H5F_ACC_RDONLY, H5P_DEFAULT) : f;
  if (rc == 0 && src < 0) rc = ce_err_open(shard_path, "as HDF5");
  const char *from = in_shard > 0 ? shard_path : p;
  if (rc == 0 && (read_1d(src, "model_id", H5T_NATIVE_INT64, (hsize_t)row, &info->model_id) < 0 ||
                  read_1d(src, "direction_index", H5T_NATIVE_INT64, (hsize_t)row, &info->direction_index) < 0 ||
                  read_1d(src, "direction", H5T_NATIVE_DOUBLE, (hsize_t)row, info->quat) < 0 ||
                  read_1d(src, "split", H5T_NATIVE_UINT8, (hsize_t)row, &split) < 0))
    rc = ce_err("%s: sample %lld (row %lld): cannot read /model_id, /direction_index, /direction, "
                "/split", from, (long long)sample, (long long)row);
  if (in_shard > 0 && src >= 0) H5Fclose(src);
  info->split = split;
  if (rc == 0) { /* the model's name (variable-length string) */
    hid_t st = H5Tcopy(H5T_C_S1);
    H5Tset_size(st, H5T_VARIABLE);
    H5Tset_cset(st, H5T_CSET_UTF8); /* as written: HDF5 converts no character sets */
    char *name = NULL;
    if (read_1d(f, "models/name", st, (hsize_t)info->model_id, &name) == 0 && name) {
      snprintf(info->model, sizeof info->model, "%s", name);
      H5free_memory(name);
    } else
      snprintf(info->model, sizeof info->model, "model %lld", (long long)info->model_id);
    H5Tclose(st);
  }
  if (rc == 0 && nf > 0) { /* velocities and the rest frequency */
    hid_t d = H5Dopen2(f, "velocities", H5P_DEFAULT);
    hid_t sp = d >= 0 ? H5Dget_space(d) : -1;
    if (vel && (sp < 0 || H5Sget_simple_extent_npoints(sp) != nf ||
                H5Dread(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, vel) < 0))
      rc = ce_err("%s: /velocities: expected %d channel velocities", p, nf);
    if (sp >= 0) H5Sclose(sp);
    if (d >= 0) H5Dclose(d);
    d = H5Dopen2(f, "frequencies", H5P_DEFAULT);
    if (d >= 0 && h5_get_attr(d, "nu0", H5T_NATIVE_DOUBLE, &info->nu0) < 0) info->nu0 = 0;
    if (d >= 0) H5Dclose(d);
  }
  if (f >= 0) H5Fclose(f);
  h5_unlock();
  return rc;
}

/* cfitsio's status says "error writing to FITS file", not why: for its I/O
 * statuses the errno of the failed call (ENOSPC, EDQUOT, EIO) is added;
 * export_fits_open_tmp clears errno first, so it is not an older call's. */
static int fits_fail(int status, const char *tmp, const char *path, fitsfile *ff) {
  int e = errno;
  char msg[FLEN_STATUS] = "", why[160] = "";
  if (status) fits_get_errstatus(status, msg);
  if (e && (status == WRITE_ERROR || status == FILE_NOT_CREATED || status == FILE_NOT_CLOSED))
    snprintf(why, sizeof why, " (%s)", strerror(e));
  int st2 = 0;
  if (ff) fits_close_file(ff, &st2);
  remove(tmp);
  return ce_err("%s: writing FITS failed: %s%s", path, status ? msg : ce_err_msg(), why);
}

static void key_s(fitsfile *ff, const char *k, const char *v, const char *c, int *st) {
  fits_update_key(ff, TSTRING, k, (void *)v, c, st);
}
static void key_d(fitsfile *ff, const char *k, double v, const char *c, int *st) {
  fits_update_key_dbl(ff, k, v, -17, c, st);
}

/* The spatial WCS of axes a (x) and a+1 (y) (and a+2 = z, line of sight, if los). */
static void spatial_wcs(fitsfile *ff, int n, const export_fits_info *in, double dist, int los,
                        int *st) {
  const double au = in->pixel_m / AU_M, crpix = (n + 1) / 2.0;
  for (int i = 0; i < 2 + los; i++) {
    char k[16];
    const char *ct, *cu;
    double d;
    if (in->pixel_m > 0 && dist > 0 && i < 2) {
      ct = i == 0 ? "RA---SIN" : "DEC--SIN";
      cu = "deg";
      d = (i == 0 ? -1 : 1) * au / dist / 3600.0; /* au at 1 pc = 1 arcsec */
    } else if (in->pixel_m > 0) {
      ct = i == 0 ? "X" : i == 1 ? "Y" : "Z";
      cu = "AU";
      d = au;
    } else {
      ct = i == 0 ? "X" : i == 1 ? "Y" : "Z";
      cu = "pixel";
      d = 1;
    }
    snprintf(k, sizeof k, "CTYPE%d", i + 1);
    key_s(ff, k, ct, i == 2 ? "offset along the line of sight (z, away from the observer)"
                     : "offset from the cube centre", st);
    snprintf(k, sizeof k, "CUNIT%d", i + 1);
    key_s(ff, k, cu, NULL, st);
    snprintf(k, sizeof k, "CRPIX%d", i + 1);
    key_d(ff, k, crpix, "the cube centre", st);
    snprintf(k, sizeof k, "CRVAL%d", i + 1);
    key_d(ff, k, 0.0, NULL, st);
    snprintf(k, sizeof k, "CDELT%d", i + 1);
    key_d(ff, k, d, NULL, st);
  }
  if (in->pixel_m > 0) {
    key_d(ff, "PIXSIZE", au, "pixel size [au]", st);
    if (dist > 0) key_d(ff, "DISTANCE", dist, "distance [pc] of the sky axes", st);
  } else
    fits_write_comment(ff, "pixel size unknown (sampling.edge: auto): spatial axes in pixels", st);
}

static void provenance(fitsfile *ff, const export_fits_info *in, int *st) {
  static const char *splits[3] = {"train", "validation", "test"};
  long long s = in->sample, m = in->model_id, di = in->direction_index;
  key_s(ff, "OBJECT", in->model, "model (AMRVAC file or synth-SEED-INDEX)", st);
  fits_update_key(ff, TLONGLONG, "SAMPLE", &s, "sample index in dataset.h5", st);
  fits_update_key(ff, TLONGLONG, "MODELID", &m, "model id (/models)", st);
  fits_update_key(ff, TLONGLONG, "DIRIDX", &di, "direction number within the model", st);
  key_d(ff, "QUAT_W", in->quat[0], "rotation quaternion (w, x, y, z) applied to", st);
  key_d(ff, "QUAT_X", in->quat[1], "the model before viewing along +z", st);
  key_d(ff, "QUAT_Y", in->quat[2], NULL, st);
  key_d(ff, "QUAT_Z", in->quat[3], NULL, st);
  key_s(ff, "SPLIT", in->split < 3 ? splits[in->split] : "?", NULL, st);
  key_s(ff, "ORIGIN", "coemu " COEMU_VERSION " (git " COEMU_GIT_REVISION ")", NULL, st);
}

static int uniform(const double *v, int nf, double *step) {
  if (nf < 2) return *step = 1.0, 1;
  *step = (v[nf - 1] - v[0]) / (nf - 1);
  if (!(*step != 0) || !isfinite(*step)) return 0;
  for (int c = 0; c < nf; c++)
    if (fabs(v[c] - (v[0] + c * *step)) > 1e-6 * fabs(*step)) return 0;
  return 1;
}

int export_fits_open_tmp(const char *path, char *tmp, size_t cap, void **out) {
  snprintf(tmp, cap, "!%s.tmp.%d", path, (int)getpid());
  int st = 0;
  fitsfile *ff = NULL;
  errno = 0;
  fits_create_file(&ff, tmp, &st);
  if (st) return fits_fail(st, tmp + 1, path, NULL);
  *out = ff;
  return 0;
}

int export_fits_close_commit(const char *path, const char *tmp, void *vff, int st) {
  fitsfile *ff = vff;
  if (st) return fits_fail(st, tmp + 1, path, ff);
  fits_close_file(ff, &st);
  if (st) return fits_fail(st, tmp + 1, path, NULL);
  return fs_rename_durable(tmp + 1, path);
}

/* One nf x n x n cube [f][x][y] as the next HDU, axes (x, y, f). */
static void write_cube(fitsfile *ff, const export_fits_cube *c, int nf, int n, const double *vel,
                       const export_fits_info *in, double dist, float *t, int *st) {
  long naxes[3] = {n, n, nf};
  fits_create_img(ff, FLOAT_IMG, 3, naxes, st);
  for (int f = 0; f < nf; f++)
    for (int x = 0; x < n; x++)
      for (int y = 0; y < n; y++)
        t[((size_t)f * n + y) * n + x] = c->data[((size_t)f * n + x) * n + y];
  key_s(ff, "EXTNAME", c->extname, NULL, st);
  key_s(ff, "BUNIT", c->bunit, NULL, st);
  key_s(ff, "BTYPE", c->btype, NULL, st);
  spatial_wcs(ff, n, in, dist, 0, st);
  double step;
  if (vel && uniform(vel, nf, &step)) {
    key_s(ff, "CTYPE3", "VRAD", "radio velocity, > 0 away from the observer", st);
    key_s(ff, "CUNIT3", "km/s", NULL, st);
    key_d(ff, "CRPIX3", 1.0, NULL, st);
    key_d(ff, "CRVAL3", vel[0] / 1000, NULL, st);
    key_d(ff, "CDELT3", step / 1000, nf < 2 ? "one channel: nominal spacing" : NULL, st);
  } else {
    key_s(ff, "CTYPE3", "CHANNEL", "channel number; velocities in CHVELnnn", st);
    key_d(ff, "CRPIX3", 1.0, NULL, st);
    key_d(ff, "CRVAL3", 0.0, NULL, st);
    key_d(ff, "CDELT3", 1.0, NULL, st);
    for (int f = 0; vel && f < nf && f < 1000; f++) {
      char k[16];
      snprintf(k, sizeof k, "CHVEL%03d", f);
      key_d(ff, k, vel[f] / 1000, "channel velocity [km/s]", st);
    }
  }
  key_s(ff, "SPECSYS", "SOURCE", "velocities in the source rest frame", st);
  if (in->nu0 > 0) key_d(ff, "RESTFRQ", in->nu0, "rest frequency of the line [Hz]", st);
  provenance(ff, in, st);
  fits_write_img(ff, TFLOAT, 1, (LONGLONG)nf * n * n, t, st);
}

int export_fits_write(const char *path, const export_fits_cube *cubes, int ncube, int nf, int n,
                      const double *vel, const export_fits_info *info, double distance_pc) {
  char tmp[4300];
  float *t = ce_malloc_array((size_t)nf * n * n, sizeof *t, "FITS cube");
  if (!t) return -1;
  void *vff;
  if (export_fits_open_tmp(path, tmp, sizeof tmp, &vff) < 0) return free(t), -1;
  fitsfile *ff = vff;
  int st = 0;
  for (int i = 0; i < ncube && !st; i++) write_cube(ff, &cubes[i], nf, n, vel, info, distance_pc, t, &st);
  free(t);
  return export_fits_close_commit(path, tmp, ff, st);
}

int export_fits_sample(const char *dir, const export_fits_opts *o, const char *path) {
  char p[4200];
  snprintf(p, sizeof p, "%s/dataset.h5", dir);
  h5_lock();
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  hid_t f = H5Fopen(p, H5F_ACC_RDONLY, H5P_DEFAULT);
  hid_t dt = f >= 0 ? H5Dopen2(f, "targets", H5P_DEFAULT) : -1;
  hid_t di = f >= 0 && H5Lexists(f, "inputs", H5P_DEFAULT) > 0 ? H5Dopen2(f, "inputs", H5P_DEFAULT) : -1;
  hsize_t td[4] = {0}, id[5] = {0};
  int rc = 0;
  if (f < 0) rc = ce_err_open(p, "as HDF5");
  else if (dt < 0) rc = ce_err("%s: no /targets dataset", p);
  if (rc == 0) {
    hid_t sp = H5Dget_space(dt);
    if (H5Sget_simple_extent_ndims(sp) != 4) rc = ce_err("%s: /targets: expected [N, F, n, n]", p);
    H5Sget_simple_extent_dims(sp, td, NULL);
    H5Sclose(sp);
  }
  if (rc == 0 && (o->sample < 0 || (hsize_t)o->sample >= td[0]))
    rc = ce_err("%s: sample %lld: the dataset has samples 0..%lld", p, (long long)o->sample,
                (long long)td[0] - 1);
  if (rc == 0 && o->inputs && di < 0)
    rc = ce_err("%s: --inputs: the dataset has no /inputs (output.store_inputs: false)", p);
  if (rc == 0 && di >= 0) {
    hid_t sp = H5Dget_space(di);
    H5Sget_simple_extent_dims(sp, id, NULL);
    H5Sclose(sp);
  }
  const int nf = (int)td[1], n = (int)td[2];
  size_t nimg = (size_t)nf * n * n, ncube = o->inputs ? 3 * (size_t)id[2] * id[3] * id[4] : 0;
  float *tg = rc == 0 ? ce_malloc_array(nimg, sizeof *tg, "target cube") : NULL;
  float *in = rc == 0 && ncube ? ce_malloc_array(ncube, sizeof *in, "input cubes") : NULL;
  if (rc == 0 && (!tg || (ncube && !in))) rc = -1;
  if (rc == 0 && h5_read_sample_f32(dt, (hsize_t)o->sample, tg) < 0)
    rc = ce_err("%s: reading /targets sample %lld failed", p, (long long)o->sample);
  if (rc == 0 && in && h5_read_sample_f32(di, (hsize_t)o->sample, in) < 0)
    rc = ce_err("%s: reading /inputs sample %lld failed", p, (long long)o->sample);
  if (di >= 0) H5Dclose(di);
  if (dt >= 0) H5Dclose(dt);
  if (f >= 0) H5Fclose(f);
  h5_unlock();
  double *vel = rc == 0 ? ce_malloc_array((size_t)nf, sizeof *vel, "velocities") : NULL;
  export_fits_info info;
  if (rc == 0 && !vel) rc = -1;
  if (rc == 0) rc = export_fits_read_info(dir, o->sample, o->edge_m, nf, n, vel, &info);
  if (rc == 0 && !(info.pixel_m > 0) && info.edge_unknown == EXPORT_EDGE_COMPAT)
    rc = ce_err("%s: /geometry: the cube edge is per sample (coemunet-compat gridding), so the "
                "dataset records none: give the cube edge with --edge M", p);
  else if (rc == 0 && !(info.pixel_m > 0))
    rc = ce_err("%s: no /geometry (a dataset made before format_minor 1) and %s/job.yaml's "
                "sampling.edge is auto (the ball radius, which such a dataset does not record): "
                "give the cube edge with --edge M", p, dir);
  if (rc == 0) {
    char tmp[4300];
    void *vff = NULL;
    int st = 0;
    float *t = ce_malloc_array(ncube / 3 > nimg ? ncube / 3 : nimg, sizeof *t, "FITS buffer");
    if (!t) rc = -1;
    else if ((rc = export_fits_open_tmp(path, tmp, sizeof tmp, &vff)) == 0) {
      fitsfile *ff = vff;
      export_fits_cube c = {"TARGET", "W m-2 Hz-1 sr-1", "Intensity", tg};
      write_cube(ff, &c, nf, n, vel, &info, o->distance_pc, t, &st);
      fits_write_history(ff, "coemu export: /targets of a coemu dataset (exact LTE images)", &st);
      static const char *names[3] = {"VZ", "T", "NCO"}, *units[3] = {"m/s", "K", "m-3"},
                        *types[3] = {"Velocity", "Temperature", "Density"};
      const int m = (int)id[2];
      for (int k = 0; in && k < 3 && !st; k++) { /* [x][y][z] -> FITS (x, y, z) */
        long naxes[3] = {m, m, m};
        fits_create_img(ff, FLOAT_IMG, 3, naxes, &st);
        const float *src = in + (size_t)k * m * m * m;
        for (int x = 0; x < m; x++)
          for (int y = 0; y < m; y++)
            for (int z = 0; z < m; z++)
              t[((size_t)z * m + y) * m + x] = src[((size_t)x * m + y) * m + z];
        key_s(ff, "EXTNAME", names[k], NULL, &st);
        key_s(ff, "BUNIT", units[k], NULL, &st);
        key_s(ff, "BTYPE", types[k], k == 0 ? "line-of-sight velocity, > 0 away from the observer"
                                             : k == 2 ? "CO number density" : NULL, &st);
        export_fits_info ii = info;
        spatial_wcs(ff, m, &ii, o->distance_pc, 1, &st);
        provenance(ff, &info, &st);
        fits_write_img(ff, TFLOAT, 1, (LONGLONG)m * m * m, t, &st);
      }
      rc = export_fits_close_commit(path, tmp, ff, st);
    }
    free(t);
  }
  free(tg);
  free(in);
  free(vel);
  return rc;
}
