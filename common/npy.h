/* npy.h - NumPy .npy files (format versions 1.0, 2.0 and 3.0).
 *
 * Reads little-endian float32 ('<f4') and float64 ('<f8') arrays in C order
 * of up to 8 dimensions, converting to float64 on request. Anything else
 * (big-endian, Fortran order, other dtypes, object arrays, a data section
 * shorter than the shape says) is refused with a message naming the file
 * and what was found. Writes float32 or float64, C order, version 1.0.
 */
#ifndef COEMU_NPY_H
#define COEMU_NPY_H

#include <stddef.h>
#include <stdint.h>

#define NPY_MAX_DIMS 8

typedef enum { NPY_F32 = 4, NPY_F64 = 8 } npy_dtype;

typedef struct {
  int ndim;
  size_t shape[NPY_MAX_DIMS];
  npy_dtype dtype;
  size_t count;   /* product of shape */
  size_t data_offset; /* byte offset of the data in the file */
} npy_info;

/* Parse the header only. */
int npy_read_info(const char *path, npy_info *info);

/* Read a whole array as float64 (float32 is widened exactly). *out is
 * allocated with malloc; the caller frees it. */
int npy_read_f64(const char *path, npy_info *info, double **out);

/* Read a whole array as float32 (float64 is rounded to nearest). */
int npy_read_f32(const char *path, npy_info *info, float **out);

/* Write an array. `data` holds count(shape) elements of `dtype`. The file is
 * written to PATH.tmp and renamed, so a reader never sees a partial file. */
int npy_write(const char *path, const void *data, npy_dtype dtype, int ndim,
              const size_t *shape);

#endif
