/* cube_file.c - one cube of (v_z, T, n) read from files (cube_file.h). */
#include "pipeline/dataset/cube_file.h"

#include <hdf5.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/npy.h"

void cube_file_free(cube_file *c) {
  free(c->v);
  free(c->T);
  free(c->n);
  c->v = c->T = c->n = NULL;
}

int cube_file_read_npy(const char *paths[3], cube_file *c) {
  c->dx = NAN;
  static const char *names[3] = {"v_z", "T", "n"};
  double **dst[3] = {&c->v, &c->T, &c->n};
  npy_info info[3];
  for (int i = 0; i < 3; i++) {
    c->src[i] = paths[i];
    if (npy_read_f64(paths[i], &info[i], dst[i]) < 0) return ce_err_prefix("%s array", names[i]);
    if (info[i].ndim != 3)
      return ce_err("%s: %s array has %d dimensions, expected 3 (x, y, z)", paths[i], names[i],
                    info[i].ndim);
    if (i > 0 && memcmp(info[i].shape, info[0].shape, 3 * sizeof(size_t)))
      return ce_err("%s: %s array has shape (%zu, %zu, %zu), but %s (%s) has (%zu, %zu, %zu)",
                    paths[i], names[i], info[i].shape[0], info[i].shape[1], info[i].shape[2],
                    names[0], paths[0], info[0].shape[0], info[0].shape[1], info[0].shape[2]);
  }
  for (int d = 0; d < 3; d++)
    if (info[0].shape[d] < 1 || info[0].shape[d] > (1u << 20))
      return ce_err("%s: axis %d has %zu cells, expected 1..%u", paths[0], d, info[0].shape[d],
                    1u << 20);
  c->nx = (int)info[0].shape[0], c->ny = (int)info[0].shape[1], c->nz = (int)info[0].shape[2];
  return 0;
}

int cube_file_read_h5(const char *path, cube_file *c) {
  c->dx = NAN;
  static const char *names[3] = {"v_z", "T", "n"};
  double **dst[3] = {&c->v, &c->T, &c->n};
  hsize_t dims0[3] = {0};
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
  if (f < 0) return ce_err_open(path, "as HDF5");
  int rc = 0;
  for (int i = 0; i < 3 && rc == 0; i++) {
    c->src[i] = path;
    hid_t d = H5Dopen2(f, names[i], H5P_DEFAULT);
    if (d < 0) {
      rc = ce_err("%s: no dataset '%s' (expected datasets v_z, T, n of shape (x, y, z))", path,
                  names[i]);
      break;
    }
    hid_t s = H5Dget_space(d);
    hid_t t = H5Dget_type(d);
    int nd = H5Sget_simple_extent_ndims(s);
    hsize_t dims[3] = {0};
    if (H5Tget_class(t) != H5T_FLOAT)
      rc = ce_err("%s: dataset '%s' is not floating point", path, names[i]);
    else if (nd != 3)
      rc = ce_err("%s: dataset '%s' has %d dimensions, expected 3 (x, y, z)", path, names[i], nd);
    else {
      H5Sget_simple_extent_dims(s, dims, NULL);
      if (i == 0) memcpy(dims0, dims, sizeof dims);
      if (memcmp(dims, dims0, sizeof dims))
        rc = ce_err("%s: dataset '%s' has shape (%llu, %llu, %llu), but v_z has (%llu, %llu, %llu)",
                    path, names[i], (unsigned long long)dims[0], (unsigned long long)dims[1],
                    (unsigned long long)dims[2], (unsigned long long)dims0[0],
                    (unsigned long long)dims0[1], (unsigned long long)dims0[2]);
      for (int k = 0; k < 3 && rc == 0; k++)
        if (dims[k] < 1 || dims[k] > (1u << 20))
          rc = ce_err("%s: dataset '%s' axis %d has %llu cells, expected 1..%u", path, names[i], k,
                      (unsigned long long)dims[k], 1u << 20);
      if (rc == 0) {
        *dst[i] = ce_malloc_array((size_t)(dims[0] * dims[1] * dims[2]), sizeof(double), names[i]);
        if (!*dst[i])
          rc = -1;
        else if (H5Dread(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, *dst[i]) < 0)
          rc = ce_err("%s: cannot read dataset '%s'", path, names[i]);
      }
    }
    H5Tclose(t);
    H5Sclose(s);
    H5Dclose(d);
  }
  /* the cell spacing, where the file says it (coemu sample --h5 does) */
  if (rc == 0 && H5Aexists(f, "dx") > 0) {
    hid_t at = H5Aopen(f, "dx", H5P_DEFAULT);
    double dx = NAN;
    if (at < 0 || H5Aread(at, H5T_NATIVE_DOUBLE, &dx) < 0 || !(dx > 0) || !isfinite(dx))
      rc = ce_err("%s: attribute 'dx' is not a positive cell spacing in m", path);
    else
      c->dx = dx;
    if (at >= 0) H5Aclose(at);
  }
  H5Fclose(f);
  c->nx = (int)dims0[0], c->ny = (int)dims0[1], c->nz = (int)dims0[2];
  return rc;
}
