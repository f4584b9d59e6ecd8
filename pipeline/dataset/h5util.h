/* h5util.h - the few HDF5 idioms the dataset files share: scalar and string
 * attributes, dataset-creation properties without timestamps.
 *
 * All return 0 / a valid id on success and -1 on failure without setting an
 * error message: the caller knows which file and object it was writing and
 * says so. */
#ifndef COEMU_H5UTIL_H
#define COEMU_H5UTIL_H

#include <hdf5.h>
#include <stddef.h>
#include <stdint.h>

/* Write / read a scalar attribute of memory type `type` (e.g. H5T_NATIVE_INT64). */
int h5_put_attr(hid_t obj, const char *name, hid_t type, const void *value);
int h5_get_attr(hid_t obj, const char *name, hid_t type, void *value);

/* A variable-length UTF-8 string attribute (h5py reads it as str); reading
 * copies at most len-1 bytes into buf. */
int h5_put_str_attr(hid_t obj, const char *name, const char *value);
int h5_get_str_attr(hid_t obj, const char *name, char *buf, size_t len);

/* Dataset-creation properties: no object timestamps (the same job gives the
 * same bytes); chunked as `chunk` when given, with byte shuffle + deflate at
 * level `gzip` when > 0. Close with H5Pclose. */
hid_t h5_dcpl(int rank, const hsize_t *chunk, int gzip);

/* Create dataset `name` of file type `type` and shape dims (see h5_dcpl). */
hid_t h5_create(hid_t loc, const char *name, hid_t type, int rank, const hsize_t *dims,
                const hsize_t *chunk, int gzip);

/* Read sample `index` (one index along the first dimension, everything
 * else whole) of a dataset of rank <= 8 as float32 into buf. The memory
 * space has the selection's own shape, so HDF5 copies whole rows instead of
 * iterating element by element. Returns 0, or -1 without a message (the
 * caller names the file and dataset). */
int h5_read_sample_f32(hid_t d, hsize_t index, float *buf);

/* Read rows [row, row + cnt) along the first dimension (everything else
 * whole) of a dataset of rank <= 8 into buf as memory type mtype, in one
 * hyperslab read. Returns 0, or -1 without a message (also for rows out of
 * range). */
int h5_read_rows(hid_t d, hsize_t row, hsize_t cnt, hid_t mtype, void *buf);

/* Where rows [0, count) of dataset d lie in its file, for reading them
 * without HDF5: addr[k * astride] = the file offset of row k, each row
 * row_bytes long as the file stores it. Only for a dataset of file type
 * ftype with no filter and no external storage, at least count rows of
 * row_bytes each, stored contiguously or one row a chunk. Returns 0, or -1
 * when the rows do not lie so (addr is then partly written; readers use
 * HDF5). */
int h5_row_addrs(hid_t d, hid_t ftype, int64_t count, hsize_t row_bytes, int64_t *addr,
                 int64_t astride);

/* HDF5 as Debian builds it is not thread-safe: every thread of a process
 * that calls HDF5 while another thread may do so (a serve_source's reader
 * thread, the trainer's validation reads) holds this process-wide lock
 * around its calls. */
void h5_lock(void);
void h5_unlock(void);

#endif
