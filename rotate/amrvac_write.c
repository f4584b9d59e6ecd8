/* amrvac_write.c - MPI-AMRVAC .dat version 5 writer (see amrvac_write.h). */
#include "rotate/amrvac_write.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/fsutil.h"

int64_t amrvac_v5_header_bytes(const amrvac_header *h) {
  int64_t n = 4 * 10;                       /* version .. it */
  n += 8;                                   /* global_time */
  n += 8 * 2 * (int64_t)h->ndim;            /* xprobmin, xprobmax */
  n += 4 * 3 * (int64_t)h->ndim;            /* domain_nx, block_nx, periodic */
  n += AMRVAC_NAME_LEN + 4;                 /* geometry, staggered */
  n += AMRVAC_NAME_LEN * (int64_t)h->nw;    /* w_names */
  n += AMRVAC_NAME_LEN + 4;                 /* physics_type, n_params */
  n += (8 + AMRVAC_NAME_LEN) * (int64_t)h->n_params; /* params, param_names */
  n += 4 * 3;                               /* snapshotnext, slicenext, collapsenext */
  return n;
}

/* A growable little byte buffer for the header and tree section. */
typedef struct {
  unsigned char *p;
  size_t n;
} wbuf;

static void put(wbuf *b, const void *src, size_t len) {
  memcpy(b->p + b->n, src, len);
  b->n += len;
}
static void put_i32(wbuf *b, int32_t v) { put(b, &v, 4); }
static void put_f64(wbuf *b, double v) { put(b, &v, 8); }
static void put_name(wbuf *b, const char *s) {
  char pad[AMRVAC_NAME_LEN];
  memset(pad, ' ', sizeof pad);
  memcpy(pad, s, strlen(s));
  put(b, pad, sizeof pad);
}

static int check_name(const char *path, const char *field, int idx, const char *s) {
  size_t len = strlen(s);
  if (len == 0 || len > AMRVAC_NAME_LEN)
    CE_FAIL("%s: %s[%d] = '%s': expected 1 to %d characters", path, field, idx, s,
            AMRVAC_NAME_LEN);
  return 0;
}

static int validate(const char *path, const amrvac_snapshot *s) {
  const amrvac_header *h = &s->h;
  if (h->version != 5) CE_FAIL("%s: version = %d, the writer writes version 5 only", path, h->version);
  if (h->ndim < 1 || h->ndim > 3) CE_FAIL("%s: ndim = %d, expected 1..3", path, h->ndim);
  if (h->ndir < h->ndim || h->ndir > 3)
    CE_FAIL("%s: ndir = %d, expected ndim..3 (ndim = %d)", path, h->ndir, h->ndim);
  if (h->nw < 1) CE_FAIL("%s: nw = %d, expected >= 1", path, h->nw);
  if (h->levmax < 1) CE_FAIL("%s: levmax = %d, expected >= 1", path, h->levmax);
  if (h->nleafs < 1 || h->nparents < 0)
    CE_FAIL("%s: nleafs = %d, nparents = %d, expected >= 1 and >= 0", path, h->nleafs, h->nparents);
  if (h->n_params < 0) CE_FAIL("%s: n_params = %d, expected >= 0", path, h->n_params);
  if (h->staggered) CE_FAIL("%s: staggered = 1: the writer does not write face-centred variables", path);
  if (!s->node_bits || !s->leaves || !s->w) CE_FAIL("%s: snapshot has no tree or no data", path);
  for (int d = 0; d < h->ndim; d++) {
    if (!(h->xmax[d] > h->xmin[d]))
      CE_FAIL("%s: xprobmax[%d] = %g is not above xprobmin = %g", path, d + 1, h->xmax[d], h->xmin[d]);
    if (h->block_nx[d] < 1 || h->domain_nx[d] < 1 || h->domain_nx[d] % h->block_nx[d] != 0)
      CE_FAIL("%s: domain_nx[%d] = %d is not a positive multiple of block_nx = %d", path, d + 1,
              h->domain_nx[d], h->block_nx[d]);
  }
  CE_TRY(check_name(path, "geometry", 0, h->geometry));
  CE_TRY(check_name(path, "physics_type", 0, h->physics_type));
  for (int i = 0; i < h->nw; i++) CE_TRY(check_name(path, "w_names", i, h->w_names[i]));
  for (int i = 0; i < h->n_params; i++) CE_TRY(check_name(path, "param_names", i, h->param_names[i]));
  for (int i = 0; i < h->nleafs; i++)
    for (int d = 0; d < 3; d++)
      if (s->leaves[i].ghost_lo[d] || s->leaves[i].ghost_hi[d])
        CE_FAIL("%s: leaf %d has ghost layers: the writer writes interior cells only", path, i);
  /* the node bits must describe exactly these leaves, in this order */
  int ng[3] = {1, 1, 1};
  for (int d = 0; d < h->ndim; d++) ng[d] = h->domain_nx[d] / h->block_nx[d];
  amrvac_block_id *dec = ce_malloc_array((size_t)h->nleafs, sizeof *dec, "leaves");
  if (!dec) return -1;
  int rc = amrvac_forest_decode(h->ndim, ng, h->levmax, s->node_bits,
                                (int64_t)h->nleafs + h->nparents, h->nleafs, dec);
  for (int i = 0; rc == 0 && i < h->nleafs; i++) {
    int same = dec[i].level == s->leaves[i].id.level;
    for (int d = 0; d < h->ndim; d++) same = same && dec[i].ig[d] == s->leaves[i].id.ig[d];
    if (!same) rc = ce_err("leaf %d is (level %d, ig %d %d %d), but the node bits put (level %d, ig %d %d %d) there",
                           i, s->leaves[i].id.level, s->leaves[i].id.ig[0], s->leaves[i].id.ig[1],
                           s->leaves[i].id.ig[2], dec[i].level, dec[i].ig[0], dec[i].ig[1], dec[i].ig[2]);
  }
  free(dec);
  if (rc < 0) return ce_err_prefix("%s", path);
  return 0;
}

int amrvac_write(const char *path, amrvac_snapshot *s) {
  CE_TRY(validate(path, s));
  amrvac_header *h = &s->h;
  const int ndim = h->ndim, nleafs = h->nleafs;
  const int64_t nbits = (int64_t)nleafs + h->nparents;
  const int64_t hbytes = amrvac_v5_header_bytes(h);
  const int64_t tbytes = 4 * nbits + 4 * (int64_t)nleafs + 4 * (int64_t)ndim * nleafs + 8 * (int64_t)nleafs;
  const int64_t cells = amrvac_block_cells(h);
  const int64_t rec_bytes = 4 * 2 * (int64_t)ndim + 8 * (int64_t)h->nw * cells;
  if (hbytes + tbytes > INT32_MAX)
    CE_FAIL("%s: offset_blocks = %lld does not fit the header's int32 field", path,
            (long long)(hbytes + tbytes));

  wbuf b = {ce_malloc_array((size_t)(hbytes + tbytes), 1, "header and tree"), 0};
  if (!b.p) return -1;
  put_i32(&b, 5);
  put_i32(&b, (int32_t)hbytes);
  put_i32(&b, (int32_t)(hbytes + tbytes));
  put_i32(&b, h->nw);
  put_i32(&b, h->ndir);
  put_i32(&b, ndim);
  put_i32(&b, h->levmax);
  put_i32(&b, nleafs);
  put_i32(&b, h->nparents);
  put_i32(&b, h->it);
  put_f64(&b, h->time);
  for (int d = 0; d < ndim; d++) put_f64(&b, h->xmin[d]);
  for (int d = 0; d < ndim; d++) put_f64(&b, h->xmax[d]);
  for (int d = 0; d < ndim; d++) put_i32(&b, h->domain_nx[d]);
  for (int d = 0; d < ndim; d++) put_i32(&b, h->block_nx[d]);
  for (int d = 0; d < ndim; d++) put_i32(&b, h->periodic[d] ? 1 : 0);
  put_name(&b, h->geometry);
  put_i32(&b, 0); /* staggered */
  for (int i = 0; i < h->nw; i++) put_name(&b, h->w_names[i]);
  put_name(&b, h->physics_type);
  put_i32(&b, h->n_params);
  for (int i = 0; i < h->n_params; i++) put_f64(&b, h->params[i]);
  for (int i = 0; i < h->n_params; i++) put_name(&b, h->param_names[i]);
  put_i32(&b, h->snapshotnext);
  put_i32(&b, h->slicenext);
  put_i32(&b, h->collapsenext);
  if ((int64_t)b.n != hbytes) CE_BUG("header is %zu bytes, expected %lld", b.n, (long long)hbytes);
  for (int64_t i = 0; i < nbits; i++) put_i32(&b, s->node_bits[i] ? 1 : 0);
  for (int i = 0; i < nleafs; i++) put_i32(&b, s->leaves[i].id.level);
  for (int i = 0; i < nleafs; i++)
    for (int d = 0; d < ndim; d++) put_i32(&b, s->leaves[i].id.ig[d]);
  for (int i = 0; i < nleafs; i++) {
    int64_t off = hbytes + tbytes + (int64_t)i * rec_bytes;
    s->leaves[i].offset = off;
    memcpy(b.p + b.n, &off, 8);
    b.n += 8;
  }

  char tmp[1100];
  FILE *f;
  if (fs_open_tmp(path, tmp, sizeof tmp, &f) < 0) {
    free(b.p);
    return -1;
  }
  int ok = fwrite(b.p, 1, b.n, f) == b.n;
  free(b.p);
  const int32_t ghosts[6] = {0, 0, 0, 0, 0, 0};
  const size_t per_leaf = (size_t)h->nw * (size_t)cells;
  for (int i = 0; ok && i < nleafs; i++) {
    ok = fwrite(ghosts, 4, (size_t)(2 * ndim), f) == (size_t)(2 * ndim) &&
         fwrite(s->w + (size_t)i * per_leaf, 8, per_leaf, f) == per_leaf;
  }
  CE_TRY(fs_commit_tmp(f, tmp, path, ok));
  h->offset_tree = hbytes;
  h->offset_blocks = hbytes + tbytes;
  s->file_size = hbytes + tbytes + (int64_t)nleafs * rec_bytes;
  snprintf(s->path, sizeof s->path, "%s", path);
  return 0;
}
