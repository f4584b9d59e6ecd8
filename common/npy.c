/* npy.c - minimal, strict .npy reader and writer. */
#include "common/npy.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/fsutil.h"

/* Find `key` in the header dict and return a pointer just past the colon. */
static const char *dict_value(const char *hdr, const char *key) {
  const char *p = strstr(hdr, key);
  if (!p) return NULL;
  p += strlen(key);
  while (*p == ' ' || *p == '\'' || *p == '"') p++;
  if (*p != ':') return NULL;
  p++;
  while (*p == ' ') p++;
  return p;
}

int npy_read_info(const char *path, npy_info *info) {
  memset(info, 0, sizeof *info);
  FILE *f = fopen(path, "rb");
  if (!f) CE_FAIL("%s: cannot open: %s", path, strerror(errno));
  unsigned char pre[12];
  int rc = -1;
  char *hdr = NULL;
  if (fread(pre, 1, 10, f) != 10) {
    ce_err("%s: byte 0: file is %s, expected a .npy magic and header", path,
           "shorter than 10 bytes");
    goto done;
  }
  if (memcmp(pre, "\x93NUMPY", 6) != 0) {
    ce_err("%s: byte 0: not a .npy file (magic \\x93NUMPY missing)", path);
    goto done;
  }
  int major = pre[6];
  size_t hlen, hstart;
  if (major == 1) {
    hlen = (size_t)pre[8] | ((size_t)pre[9] << 8);
    hstart = 10;
  } else if (major == 2 || major == 3) {
    if (fread(pre + 10, 1, 2, f) != 2) {
      ce_err("%s: byte 8: truncated header length", path);
      goto done;
    }
    hlen = (size_t)pre[8] | ((size_t)pre[9] << 8) | ((size_t)pre[10] << 16) |
           ((size_t)pre[11] << 24);
    hstart = 12;
  } else {
    ce_err("%s: byte 6: .npy format version %d.%d, expected 1.x, 2.x or 3.x",
           path, pre[6], pre[7]);
    goto done;
  }
  if (hlen == 0 || hlen > (1u << 20)) {
    ce_err("%s: byte 8: header length %zu is not plausible", path, hlen);
    goto done;
  }
  hdr = malloc(hlen + 1);
  if (!hdr || fread(hdr, 1, hlen, f) != hlen) {
    ce_err("%s: byte %zu: header truncated (expected %zu bytes)", path, hstart,
           hlen);
    goto done;
  }
  hdr[hlen] = 0;
  const char *v = dict_value(hdr, "descr");
  if (!v) {
    ce_err("%s: header: no 'descr' field", path);
    goto done;
  }
  if (*v == '\'' || *v == '"') v++;
  if (!strncmp(v, "<f8", 3))
    info->dtype = NPY_F64;
  else if (!strncmp(v, "<f4", 3))
    info->dtype = NPY_F32;
  else {
    char got[16] = {0};
    for (int i = 0; i < 15 && v[i] && v[i] != '\'' && v[i] != '"'; i++) got[i] = v[i];
    ce_err("%s: header: dtype '%s' is not supported, expected '<f4' (float32) "
           "or '<f8' (float64)", path, got);
    goto done;
  }
  v = dict_value(hdr, "fortran_order");
  if (!v) {
    ce_err("%s: header: no 'fortran_order' field", path);
    goto done;
  }
  if (!strncmp(v, "True", 4)) {
    ce_err("%s: header: array is in Fortran order, expected C order "
           "(use numpy.ascontiguousarray before saving)", path);
    goto done;
  }
  if (strncmp(v, "False", 5)) {
    ce_err("%s: header: fortran_order is not True or False", path);
    goto done;
  }
  v = dict_value(hdr, "shape");
  if (!v || *v != '(') {
    ce_err("%s: header: no 'shape' tuple", path);
    goto done;
  }
  v++;
  info->count = 1;
  while (1) {
    while (*v == ' ' || *v == ',') v++;
    if (*v == ')') break;
    if (!isdigit((unsigned char)*v)) {
      ce_err("%s: header: malformed shape", path);
      goto done;
    }
    if (info->ndim == NPY_MAX_DIMS) {
      ce_err("%s: header: more than %d dimensions", path, NPY_MAX_DIMS);
      goto done;
    }
    errno = 0;
    char *end;
    unsigned long long d = strtoull(v, &end, 10);
    if (errno || d > ((size_t)1 << 40)) {
      ce_err("%s: header: shape[%d] is too large", path, info->ndim);
      goto done;
    }
    info->shape[info->ndim++] = (size_t)d;
    if (ce_mul_size(info->count, (size_t)d, &info->count) < 0) {
      ce_err("%s: header: shape overflows", path);
      goto done;
    }
    v = end;
  }
  info->data_offset = hstart + hlen;
  size_t bytes;
  if (ce_mul_size(info->count, info->dtype, &bytes) < 0) {
    ce_err("%s: header: data size overflows", path);
    goto done;
  }
  long long fsize = fs_file_size(path);
  if (fsize < 0 || (unsigned long long)fsize < info->data_offset + bytes) {
    ce_err("%s: byte %zu: data truncated: shape needs %zu bytes, file has %lld",
           path, info->data_offset, bytes,
           fsize < 0 ? 0 : fsize - (long long)info->data_offset);
    goto done;
  }
  rc = 0;
done:
  free(hdr);
  fclose(f);
  return rc;
}

static int read_raw(const char *path, npy_info *info, void **raw) {
  CE_TRY(npy_read_info(path, info));
  *raw = ce_malloc_array(info->count, info->dtype, path);
  if (!*raw) return -1;
  FILE *f = fopen(path, "rb");
  if (!f) {
    free(*raw);
    CE_FAIL("%s: cannot open: %s", path, strerror(errno));
  }
  if (fseek(f, (long)info->data_offset, SEEK_SET) != 0 ||
      fread(*raw, info->dtype, info->count, f) != info->count) {
    fclose(f);
    free(*raw);
    CE_FAIL("%s: byte %zu: short read of %zu elements", path, info->data_offset,
            info->count);
  }
  fclose(f);
  return 0;
}

int npy_read_f64(const char *path, npy_info *info, double **out) {
  void *raw;
  CE_TRY(read_raw(path, info, &raw));
  if (info->dtype == NPY_F64) {
    *out = raw;
    return 0;
  }
  double *d = ce_malloc_array(info->count, sizeof *d, path);
  if (!d) {
    free(raw);
    return -1;
  }
  const float *s = raw;
  for (size_t i = 0; i < info->count; i++) d[i] = s[i];
  free(raw);
  *out = d;
  return 0;
}

int npy_read_f32(const char *path, npy_info *info, float **out) {
  void *raw;
  CE_TRY(read_raw(path, info, &raw));
  if (info->dtype == NPY_F32) {
    *out = raw;
    return 0;
  }
  float *d = ce_malloc_array(info->count, sizeof *d, path);
  if (!d) {
    free(raw);
    return -1;
  }
  const double *s = raw;
  for (size_t i = 0; i < info->count; i++) d[i] = (float)s[i];
  free(raw);
  *out = d;
  return 0;
}

int npy_write(const char *path, const void *data, npy_dtype dtype, int ndim,
              const size_t *shape) {
  if (ndim < 0 || ndim > NPY_MAX_DIMS) CE_FAIL("%s: %d dimensions", path, ndim);
  char dict[512];
  int n = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (",
                   dtype == NPY_F64 ? "<f8" : "<f4");
  size_t count = 1;
  for (int i = 0; i < ndim; i++) {
    n += snprintf(dict + n, sizeof dict - n, "%zu,%s", shape[i],
                  (i + 1 < ndim) ? " " : "");
    count *= shape[i];
  }
  if (ndim > 1) n--; /* numpy writes (a, b) not (a, b,) for ndim > 1 */
  n += snprintf(dict + n, sizeof dict - n, "), }");
  /* pad with spaces so that the data starts on a 64-byte boundary */
  size_t total = 10 + (size_t)n + 1;
  size_t pad = (64 - total % 64) % 64;
  size_t hlen = (size_t)n + pad + 1;
  unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0,
                           (unsigned char)(hlen & 0xff), (unsigned char)(hlen >> 8)};
  FILE *f;
  char tmp[4096];
  CE_TRY(fs_open_tmp(path, tmp, sizeof tmp, &f));
  int ok = fwrite(pre, 1, 10, f) == 10 && fwrite(dict, 1, (size_t)n, f) == (size_t)n;
  for (size_t i = 0; ok && i < pad; i++) ok = fputc(' ', f) != EOF;
  ok = ok && fputc('\n', f) != EOF;
  ok = ok && fwrite(data, dtype, count, f) == count;
  return fs_commit_tmp(f, tmp, path, ok);
}
