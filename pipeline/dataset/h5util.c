/* h5util.c - shared HDF5 idioms of the dataset files. */
#include "pipeline/dataset/h5util.h"

#include <pthread.h>

#include <stdio.h>

int h5_put_attr(hid_t obj, const char *name, hid_t type, const void *value) {
  hid_t space = H5Screate(H5S_SCALAR);
  hid_t a = H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
  herr_t rc = a >= 0 ? H5Awrite(a, type, value) : -1;
  if (a >= 0) H5Aclose(a);
  H5Sclose(space);
  return rc < 0 ? -1 : 0;
}

int h5_get_attr(hid_t obj, const char *name, hid_t type, void *value) {
  if (H5Aexists(obj, name) <= 0) return -1;
  hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
  if (a < 0) return -1;
  herr_t rc = H5Aread(a, type, value);
  H5Aclose(a);
  return rc < 0 ? -1 : 0;
}

static hid_t vlen_utf8(void) {
  hid_t t = H5Tcopy(H5T_C_S1);
  H5Tset_size(t, H5T_VARIABLE);
  H5Tset_cset(t, H5T_CSET_UTF8);
  return t;
}

int h5_put_str_attr(hid_t obj, const char *name, const char *value) {
  hid_t t = vlen_utf8();
  int rc = h5_put_attr(obj, name, t, &value);
  H5Tclose(t);
  return rc;
}

int h5_get_str_attr(hid_t obj, const char *name, char *buf, size_t len) {
  buf[0] = 0;
  hid_t t = vlen_utf8();
  char *s = NULL;
  int rc = h5_get_attr(obj, name, t, &s) == 0 && s ? 0 : -1;
  if (rc == 0) snprintf(buf, len, "%s", s);
  H5free_memory(s);
  H5Tclose(t);
  return rc;
}

hid_t h5_dcpl(int rank, const hsize_t *chunk, int gzip) {
  hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  if (dcpl < 0) return -1;
  H5Pset_obj_track_times(dcpl, 0);
  if (chunk) {
    H5Pset_chunk(dcpl, rank, chunk);
    if (gzip > 0) {
      H5Pset_shuffle(dcpl);
      H5Pset_deflate(dcpl, (unsigned)gzip);
    }
  }
  return dcpl;
}

hid_t h5_create(hid_t loc, const char *name, hid_t type, int rank, const hsize_t *dims,
                const hsize_t *chunk, int gzip) {
  hid_t space = H5Screate_simple(rank, dims, NULL);
  hid_t dcpl = h5_dcpl(rank, chunk, gzip);
  hid_t d = -1;
  if (space >= 0 && dcpl >= 0) d = H5Dcreate2(loc, name, type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
  if (dcpl >= 0) H5Pclose(dcpl);
  if (space >= 0) H5Sclose(space);
  return d;
}

int h5_read_rows(hid_t d, hsize_t row, hsize_t cnt, hid_t mtype, void *buf) {
  hid_t fs = H5Dget_space(d);
  if (fs < 0) return -1;
  int rank = H5Sget_simple_extent_ndims(fs);
  hsize_t start[8] = {0}, count[8];
  if (rank < 1 || rank > 8 || H5Sget_simple_extent_dims(fs, count, NULL) < 0 || cnt == 0 ||
      row >= count[0] || cnt > count[0] - row) {
    H5Sclose(fs);
    return -1;
  }
  start[0] = row;
  count[0] = cnt;
  hid_t ms = H5Screate_simple(rank, count, NULL);
  herr_t e = -1;
  H5E_BEGIN_TRY {
    e = H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL);
    if (e >= 0) e = H5Dread(d, mtype, ms, fs, H5P_DEFAULT, buf);
  } H5E_END_TRY;
  H5Sclose(ms);
  H5Sclose(fs);
  return e < 0 ? -1 : 0;
}

int h5_read_sample_f32(hid_t d, hsize_t index, float *buf) {
  return h5_read_rows(d, index, 1, H5T_NATIVE_FLOAT, buf);
}

static pthread_mutex_t h5_mutex = PTHREAD_MUTEX_INITIALIZER;
void h5_lock(void) { pthread_mutex_lock(&h5_mutex); }
void h5_unlock(void) { pthread_mutex_unlock(&h5_mutex); }

int h5_row_addrs(hid_t d, hid_t ftype, int64_t count, hsize_t row_bytes, int64_t *addr,
                 int64_t astride) {
  hid_t type = H5Dget_type(d), dcpl = H5Dget_create_plist(d), fs = H5Dget_space(d);
  int ok = type >= 0 && dcpl >= 0 && fs >= 0 && H5Tequal(type, ftype) > 0 &&
           H5Pget_nfilters(dcpl) == 0 && H5Pget_external_count(dcpl) == 0 && count >= 0;
  int rank = ok ? H5Sget_simple_extent_ndims(fs) : -1;
  hsize_t dims[8] = {0}, chunk[8] = {0}, elems = 1;
  ok = ok && rank >= 1 && rank <= 8 && H5Sget_simple_extent_dims(fs, dims, NULL) == rank &&
       dims[0] >= (hsize_t)count;
  for (int j = 1; ok && j < rank; j++) elems *= dims[j];
  ok = ok && elems * H5Tget_size(type) == row_bytes;
  H5D_layout_t lay = ok ? H5Pget_layout(dcpl) : H5D_LAYOUT_ERROR;
  if (ok && lay == H5D_CONTIGUOUS) {
    haddr_t base = H5Dget_offset(d);
    ok = base != HADDR_UNDEF;
    for (int64_t k = 0; ok && k < count; k++)
      addr[k * astride] = (int64_t)(base + (hsize_t)k * row_bytes);
  } else if (ok && lay == H5D_CHUNKED) {
    ok = H5Pget_chunk(dcpl, rank, chunk) == rank && chunk[0] == 1;
    for (int j = 1; ok && j < rank; j++) ok = chunk[j] == dims[j]; /* one row a chunk */
    for (int64_t k = 0; ok && k < count; k++) {
      hsize_t off[8] = {(hsize_t)k}, size = 0;
      unsigned mask = 0;
      haddr_t a = HADDR_UNDEF;
      ok = H5Dget_chunk_info_by_coord(d, off, &mask, &a, &size) >= 0 && a != HADDR_UNDEF &&
           size == row_bytes && mask == 0;
      addr[k * astride] = (int64_t)a;
    }
  } else
    ok = 0;
  if (type >= 0) H5Tclose(type);
  if (dcpl >= 0) H5Pclose(dcpl);
  if (fs >= 0) H5Sclose(fs);
  return ok ? 0 : -1;
}
