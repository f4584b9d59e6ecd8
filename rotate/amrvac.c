/* amrvac.c - reading and validating MPI-AMRVAC .dat snapshots (v3, v4, v5).
 *
 * Every count read from the file is bounded by the file size before it sizes
 * an allocation, and every offset is checked against the file before a seek,
 * so truncated or hostile files fail with a message instead of a crash or a
 * huge allocation. The tree is decoded with amrvac_forest_decode() and must
 * reproduce the stored level/ig arrays; block records must sit back to back
 * and the last must end at the end of the file.
 */
#include "rotate/amrvac.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"

#define MAX_GHOST 64     /* ghost layers per face; AMRVAC uses 1..4 */
#define MAX_NODE_BITS 24 /* Morton cube of the roots: at most 2^24 codes */

typedef struct {
  FILE *f;
  const char *name;
  int64_t size, pos;
} rd;

static int rd_seek(rd *r, int64_t off, const char *what) {
  if (off < 0 || off > r->size)
    CE_FAIL("%s: %s at byte %lld is outside the file (%lld bytes)", r->name, what, (long long)off,
            (long long)r->size);
  if (fseeko(r->f, (off_t)off, SEEK_SET) != 0)
    CE_FAIL("%s: cannot seek to byte %lld (%s)", r->name, (long long)off, what);
  r->pos = off;
  return 0;
}

static int rd_bytes(rd *r, void *dst, int64_t n, const char *what) {
  if (n < 0 || r->pos + n > r->size)
    CE_FAIL("%s: byte %lld: %s: the file ends (%lld bytes), %lld more expected", r->name,
            (long long)r->pos, what, (long long)r->size, (long long)(r->pos + n - r->size));
  if (n > 0 && fread(dst, 1, (size_t)n, r->f) != (size_t)n)
    CE_FAIL("%s: byte %lld: %s: read error", r->name, (long long)r->pos, what);
  r->pos += n;
  return 0;
}

static int rd_i32(rd *r, int32_t *v, const char *what) { return rd_bytes(r, v, 4, what); }
static int rd_f64(rd *r, double *v, const char *what) { return rd_bytes(r, v, 8, what); }

/* character(len=16), space padded: trailing blanks and NULs removed */
static int rd_name(rd *r, char out[AMRVAC_NAME_LEN + 1], const char *what) {
  CE_TRY(rd_bytes(r, out, AMRVAC_NAME_LEN, what));
  out[AMRVAC_NAME_LEN] = 0;
  for (int i = AMRVAC_NAME_LEN - 1; i >= 0 && (out[i] == ' ' || out[i] == 0); i--) out[i] = 0;
  for (int i = 0; out[i]; i++)
    if ((unsigned char)out[i] < 32 || (unsigned char)out[i] > 126) out[i] = '?';
  return 0;
}

static uint32_t bswap32(uint32_t v) {
  return (v >> 24) | ((v >> 8) & 0xff00u) | ((v << 8) & 0xff0000u) | (v << 24);
}

int64_t amrvac_block_cells(const amrvac_header *h) {
  return (int64_t)h->block_nx[0] * h->block_nx[1] * h->block_nx[2];
}

void amrvac_cell_size(const amrvac_header *h, int level, double dx[3]) {
  for (int d = 0; d < 3; d++)
    dx[d] = (h->xmax[d] - h->xmin[d]) / h->domain_nx[d] / ldexp(1.0, level - 1);
}

void amrvac_leaf_bounds(const amrvac_header *h, const amrvac_block_id *id, double lo[3],
                        double hi[3]) {
  double dx[3];
  amrvac_cell_size(h, id->level, dx);
  for (int d = 0; d < 3; d++) {
    lo[d] = h->xmin[d] + (double)(id->ig[d] - 1) * h->block_nx[d] * dx[d];
    hi[d] = lo[d] + h->block_nx[d] * dx[d];
  }
}

int amrvac_var_index(const amrvac_header *h, const char *name) {
  for (int i = 0; i < h->nw; i++)
    if (!strcmp(h->w_names[i], name)) return i;
  return -1;
}

void amrvac_free(amrvac_snapshot *s) {
  if (!s) return;
  free(s->h.w_names);
  free(s->h.params);
  free(s->h.param_names);
  free(s->leaves);
  free(s->node_bits);
  free(s->w);
  free(s->record_size);
  memset(s, 0, sizeof *s);
}

static int read_header(rd *r, amrvac_header *h) {
  int32_t v;
  CE_TRY(rd_i32(r, &v, "version"));
  if (v < 3 || v > 5) {
    uint32_t sw = bswap32((uint32_t)v);
    if (sw >= 3 && sw <= 5)
      CE_FAIL("%s: byte 0: version: %u in the other byte order: big-endian snapshots are not "
              "supported (expected a little-endian file, version 3, 4 or 5)",
              r->name, sw);
    CE_FAIL("%s: byte 0: version = %d, expected 3, 4 or 5 (versions 1 and 2 are not supported)",
            r->name, (int)v);
  }
  h->version = v;
  int32_t f[9];
  static const char *fname[9] = {"offset_tree", "offset_blocks", "nw", "ndir", "ndim",
                                 "levmax", "nleafs", "nparents", "it"};
  for (int i = 0; i < 9; i++) CE_TRY(rd_i32(r, &f[i], fname[i]));
  h->offset_tree = f[0];
  h->offset_blocks = f[1];
  h->nw = f[2];
  h->ndir = f[3];
  h->ndim = f[4];
  h->levmax = f[5];
  h->nleafs = f[6];
  h->nparents = f[7];
  h->it = f[8];
  if (h->ndim < 1 || h->ndim > 3)
    CE_FAIL("%s: byte 20: ndim = %d, expected 1, 2 or 3", r->name, h->ndim);
  if (h->ndir < 1 || h->ndir > 3)
    CE_FAIL("%s: byte 16: ndir = %d, expected 1, 2 or 3", r->name, h->ndir);
  if (h->nw < 1 || (int64_t)h->nw * AMRVAC_NAME_LEN > r->size)
    CE_FAIL("%s: byte 12: nw = %d, expected 1 or more, and at most the file size / 16", r->name,
            h->nw);
  if (h->levmax < 1 || h->levmax > 30)
    CE_FAIL("%s: byte 24: levmax = %d, expected 1..30", r->name, h->levmax);
  if (h->nleafs < 1 || (int64_t)h->nleafs * 16 > r->size)
    CE_FAIL("%s: byte 28: nleafs = %d, expected 1 or more, and at most the file size / 16 "
            "(the file has %lld bytes: truncated?)",
            r->name, h->nleafs, (long long)r->size);
  if (h->nparents < 0 || (int64_t)h->nparents * 4 > r->size)
    CE_FAIL("%s: byte 32: nparents = %d, expected 0 or more, and at most the file size / 4",
            r->name, h->nparents);
  CE_TRY(rd_f64(r, &h->time, "global_time"));
  for (int d = 0; d < 3; d++) {
    h->xmin[d] = 0;
    h->xmax[d] = 1;
    h->domain_nx[d] = h->block_nx[d] = 1;
  }
  for (int d = 0; d < h->ndim; d++) CE_TRY(rd_f64(r, &h->xmin[d], "xprobmin"));
  for (int d = 0; d < h->ndim; d++) CE_TRY(rd_f64(r, &h->xmax[d], "xprobmax"));
  for (int d = 0; d < h->ndim; d++) {
    int32_t n;
    CE_TRY(rd_i32(r, &n, "domain_nx"));
    h->domain_nx[d] = n;
  }
  for (int d = 0; d < h->ndim; d++) {
    int32_t n;
    CE_TRY(rd_i32(r, &n, "block_nx"));
    h->block_nx[d] = n;
  }
  for (int d = 0; d < h->ndim; d++) {
    if (!isfinite(h->xmin[d]) || !isfinite(h->xmax[d]) || !(h->xmax[d] > h->xmin[d]))
      CE_FAIL("%s: header: domain in dimension %d is [%g, %g], expected finite bounds with "
              "xprobmax > xprobmin",
              r->name, d + 1, h->xmin[d], h->xmax[d]);
    if (h->block_nx[d] < 1 || h->block_nx[d] > 4096)
      CE_FAIL("%s: header: block_nx%d = %d, expected 1..4096", r->name, d + 1, h->block_nx[d]);
    if (h->domain_nx[d] < 1 || h->domain_nx[d] % h->block_nx[d] != 0)
      CE_FAIL("%s: header: domain_nx%d = %d, expected a positive multiple of block_nx%d = %d",
              r->name, d + 1, h->domain_nx[d], d + 1, h->block_nx[d]);
    /* block indices on the finest level must fit in an int */
    int64_t ng = h->domain_nx[d] / h->block_nx[d];
    if (ng > ((int64_t)1 << (30 - (h->levmax - 1))))
      CE_FAIL("%s: header: %lld level-1 blocks in dimension %d with levmax = %d: block indices "
              "would overflow",
              r->name, (long long)ng, d + 1, h->levmax);
  }
  if (h->version >= 5) {
    for (int d = 0; d < h->ndim; d++) {
      int32_t p;
      CE_TRY(rd_i32(r, &p, "periodic"));
      h->periodic[d] = p != 0;
    }
    CE_TRY(rd_name(r, h->geometry, "geometry"));
    int32_t st;
    CE_TRY(rd_i32(r, &st, "staggered"));
    h->staggered = st != 0;
  }
  int64_t names_at = r->pos;
  if ((int64_t)h->nw * AMRVAC_NAME_LEN > r->size - r->pos)
    CE_FAIL("%s: byte %lld: w_names: %d names of 16 bytes do not fit in the file", r->name,
            (long long)names_at, h->nw);
  h->w_names = ce_malloc_array((size_t)h->nw, sizeof *h->w_names, "w_names");
  if (!h->w_names) return -1;
  for (int i = 0; i < h->nw; i++) CE_TRY(rd_name(r, h->w_names[i], "w_names"));
  CE_TRY(rd_name(r, h->physics_type, "physics_type"));
  int32_t np;
  int64_t np_at = r->pos;
  CE_TRY(rd_i32(r, &np, "n_params"));
  if (np < 0 || (int64_t)np * 24 > r->size - r->pos)
    CE_FAIL("%s: byte %lld: n_params = %d, expected 0 or more, fitting in the file", r->name,
            (long long)np_at, (int)np);
  h->n_params = np;
  h->params = ce_malloc_array((size_t)np, sizeof *h->params, "params");
  h->param_names = ce_malloc_array((size_t)np, sizeof *h->param_names, "param_names");
  if (!h->params || !h->param_names) return -1;
  for (int i = 0; i < np; i++) CE_TRY(rd_f64(r, &h->params[i], "params"));
  for (int i = 0; i < np; i++) CE_TRY(rd_name(r, h->param_names[i], "param_names"));
  if (h->version >= 4) {
    int32_t nx[3];
    CE_TRY(rd_i32(r, &nx[0], "snapshotnext"));
    CE_TRY(rd_i32(r, &nx[1], "slicenext"));
    CE_TRY(rd_i32(r, &nx[2], "collapsenext"));
    h->snapshotnext = nx[0];
    h->slicenext = nx[1];
    h->collapsenext = nx[2];
  }
  if (r->pos > h->offset_tree)
    CE_FAIL("%s: byte 4: offset_tree = %lld, but the header ends at byte %lld", r->name,
            (long long)h->offset_tree, (long long)r->pos);
  return 0;
}

static int read_tree(rd *r, amrvac_snapshot *s) {
  amrvac_header *h = &s->h;
  int nd = h->ndim;
  int64_t nbits = (int64_t)h->nleafs + h->nparents;
  int64_t tree_bytes = 4 * nbits + 4 * (int64_t)h->nleafs * (1 + nd) + 8 * (int64_t)h->nleafs;
  if (h->offset_tree < 0 || h->offset_tree + tree_bytes > r->size)
    CE_FAIL("%s: byte 4: offset_tree = %lld: the tree section (%lld bytes for nleafs = %d, "
            "nparents = %d) does not fit in the file (%lld bytes)",
            r->name, (long long)h->offset_tree, (long long)tree_bytes, h->nleafs, h->nparents,
            (long long)r->size);
  int ng[3] = {1, 1, 1};
  int64_t nroots = 1;
  int maxng = 1;
  for (int d = 0; d < nd; d++) {
    ng[d] = h->domain_nx[d] / h->block_nx[d];
    if (ng[d] > maxng) maxng = ng[d];
    /* capped at 2^40: more roots than any tree of this file can hold, and no overflow */
    nroots = nroots > ((int64_t)1 << 40) / ng[d] ? ((int64_t)1 << 40) + 1 : nroots * ng[d];
  }
  int bits = 0;
  while ((1 << bits) < maxng) bits++;
  if (bits * nd > MAX_NODE_BITS || nroots > nbits)
    CE_FAIL("%s: header: %.17g level-1 blocks, but the tree holds %lld nodes", r->name,
            (double)ng[0] * ng[1] * ng[2], (long long)nbits);
  CE_TRY(rd_seek(r, h->offset_tree, "tree section"));
  s->node_bits = ce_malloc_array((size_t)nbits, sizeof *s->node_bits, "tree leaf flags");
  int32_t *lev = ce_malloc_array((size_t)h->nleafs, 4, "tree levels");
  int32_t *ig = ce_malloc_array((size_t)h->nleafs * nd, 4, "tree block indices");
  int64_t *off = ce_malloc_array((size_t)h->nleafs, 8, "block offsets");
  s->leaves = ce_calloc_array((size_t)h->nleafs, sizeof *s->leaves, "leaves");
  s->record_size = ce_malloc_array((size_t)h->nleafs, sizeof *s->record_size, "record sizes");
  amrvac_block_id *walk = ce_malloc_array((size_t)h->nleafs, sizeof *walk, "forest walk");
  int rc = -1;
  if (!s->node_bits || !lev || !ig || !off || !s->leaves || !s->record_size || !walk) goto done;
  if (rd_bytes(r, s->node_bits, 4 * nbits, "tree: leaf flags") < 0 ||
      rd_bytes(r, lev, 4 * (int64_t)h->nleafs, "tree: levels") < 0 ||
      rd_bytes(r, ig, 4 * (int64_t)h->nleafs * nd, "tree: block indices") < 0 ||
      rd_bytes(r, off, 8 * (int64_t)h->nleafs, "tree: block offsets") < 0)
    goto done;
  int64_t tree_end = r->pos;
  for (int64_t i = 0; i < h->nleafs; i++)
    if (lev[i] < 1 || lev[i] > h->levmax) {
      ce_err("%s: byte %lld: tree: level[%lld] = %d, expected 1..%d", r->name,
             (long long)(h->offset_tree + 4 * nbits + 4 * i), (long long)i + 1, lev[i], h->levmax);
      goto done;
    }
  for (int64_t i = 0; i < h->nleafs; i++)
    for (int d = 0; d < nd; d++) {
      int64_t top = (int64_t)ng[d] << (lev[i] - 1);
      int32_t g = ig[i * nd + d];
      if (g < 1 || g > top) {
        ce_err("%s: byte %lld: tree: ig%d of leaf %lld = %d, expected 1..%lld on level %d",
               r->name, (long long)(h->offset_tree + 4 * nbits + 4 * (int64_t)h->nleafs + 4 * (i * nd + d)),
               d + 1, (long long)i + 1, g, (long long)top, lev[i]);
        goto done;
      }
    }
  if (amrvac_forest_decode(nd, ng, h->levmax, s->node_bits, nbits, h->nleafs, walk) < 0) {
    ce_err_prefix("%s: byte %lld", r->name, (long long)h->offset_tree);
    goto done;
  }
  for (int64_t i = 0; i < h->nleafs; i++) {
    int same = walk[i].level == lev[i];
    for (int d = 0; d < nd; d++) same = same && walk[i].ig[d] == ig[i * nd + d];
    if (!same) {
      ce_err("%s: tree: leaf %lld is stored as level %d ig (%d %d %d), but the forest walk "
             "gives level %d ig (%d %d %d)",
             r->name, (long long)i + 1, lev[i], ig[i * nd], nd > 1 ? ig[i * nd + 1] : 1,
             nd > 2 ? ig[i * nd + 2] : 1, walk[i].level, walk[i].ig[0], walk[i].ig[1],
             walk[i].ig[2]);
      goto done;
    }
    s->leaves[i].id = walk[i];
    s->leaves[i].offset = off[i];
  }
  int deepest = 0;
  for (int64_t i = 0; i < h->nleafs; i++)
    if (lev[i] > deepest) deepest = lev[i];
  if (deepest != h->levmax) {
    ce_err("%s: byte 24: levmax = %d, but the deepest leaf is on level %d", r->name, h->levmax,
           deepest);
    goto done;
  }
  /* the leaves tile the domain: volumes in units of a finest-level block */
  unsigned __int128 vol = 0, want = (unsigned __int128)nroots << (nd * (h->levmax - 1));
  for (int64_t i = 0; i < h->nleafs; i++) vol += (unsigned __int128)1 << (nd * (h->levmax - lev[i]));
  if (vol != want) {
    ce_err("%s: tree: the leaves cover %.17g of the domain volume, expected all of it", r->name,
           (double)vol / (double)want);
    goto done;
  }
  if (off[0] != h->offset_blocks) {
    ce_err("%s: byte 8: offset_blocks = %lld, but the first block offset is %lld", r->name,
           (long long)h->offset_blocks, (long long)off[0]);
    goto done;
  }
  if (off[0] < tree_end) {
    ce_err("%s: tree: the first block at byte %lld overlaps the tree section (ends at byte %lld)",
           r->name, (long long)off[0], (long long)tree_end);
    goto done;
  }
  rc = 0;
done:
  free(lev);
  free(ig);
  free(off);
  free(walk);
  return rc;
}

/* The ghost counts of every block record give its size; the records must
 * be contiguous and the last must end at the end of the file. */
static int read_records(rd *r, amrvac_snapshot *s) {
  amrvac_header *h = &s->h;
  int nd = h->ndim;
  for (int64_t i = 0; i < h->nleafs; i++) {
    amrvac_leaf *lf = &s->leaves[i];
    int64_t expect = i == 0 ? h->offset_blocks : s->leaves[i - 1].offset + s->record_size[i - 1];
    if (lf->offset != expect)
      CE_FAIL("%s: tree: block %lld starts at byte %lld, expected %lld (records are contiguous)",
              r->name, (long long)i + 1, (long long)lf->offset, (long long)expect);
    CE_TRY(rd_seek(r, lf->offset, "block record"));
    int32_t g[6];
    CE_TRY(rd_bytes(r, g, 8 * nd, "block ghost counts"));
    int64_t n = 1, ns = 1;
    for (int d = 0; d < 3; d++) {
      lf->ghost_lo[d] = d < nd ? g[d] : 0;
      lf->ghost_hi[d] = d < nd ? g[nd + d] : 0;
      if (lf->ghost_lo[d] < 0 || lf->ghost_lo[d] > MAX_GHOST || lf->ghost_hi[d] < 0 ||
          lf->ghost_hi[d] > MAX_GHOST)
        CE_FAIL("%s: byte %lld: block %lld: ghost layers (%d, %d) in dimension %d, expected "
                "0..%d",
                r->name, (long long)lf->offset, (long long)i + 1, lf->ghost_lo[d],
                lf->ghost_hi[d], d + 1, MAX_GHOST);
      int64_t m = h->block_nx[d] + lf->ghost_lo[d] + lf->ghost_hi[d];
      n *= m;
      ns *= d < nd ? m + 1 : 1;
    }
    /* staggered (face-centred) values: one per dimension (AMRVAC's nws = ndim) */
    int64_t vals = n * h->nw + (h->staggered ? ns * nd : 0);
    s->record_size[i] = 8 * (int64_t)nd + 8 * vals;
    if (lf->offset + s->record_size[i] > r->size)
      CE_FAIL("%s: byte %lld: block %lld needs %lld bytes, but the file ends at byte %lld",
              r->name, (long long)lf->offset, (long long)i + 1, (long long)s->record_size[i],
              (long long)r->size);
  }
  int64_t end = s->leaves[h->nleafs - 1].offset + s->record_size[h->nleafs - 1];
  if (end != r->size)
    CE_FAIL("%s: the last block ends at byte %lld, but the file has %lld bytes", r->name,
            (long long)end, (long long)r->size);
  return 0;
}

static int open_rd(rd *r, amrvac_snapshot *s) {
  CE_TRY(read_header(r, &s->h));
  CE_TRY(read_tree(r, s));
  return read_records(r, s);
}

static int file_size(FILE *f, int64_t *size) {
  if (fseeko(f, 0, SEEK_END) != 0) return -1;
  off_t e = ftello(f);
  if (e < 0 || fseeko(f, 0, SEEK_SET) != 0) return -1;
  *size = (int64_t)e;
  return 0;
}

int amrvac_open_stream(void *file, const char *name, amrvac_snapshot *s) {
  memset(s, 0, sizeof *s);
  snprintf(s->path, sizeof s->path, "%s", name);
  rd r = {.f = file, .name = s->path};
  if (file_size(file, &r.size) < 0) {
    ce_err("%s: cannot determine the size of the stream", name);
    return -1;
  }
  s->file_size = r.size;
  s->stream = file;
  if (open_rd(&r, s) < 0) {
    amrvac_free(s);
    return -1;
  }
  return 0;
}

int amrvac_open(const char *path, amrvac_snapshot *s) {
  memset(s, 0, sizeof *s);
  FILE *f = fopen(path, "rb");
  if (!f) return ce_err_open(path, "the snapshot");
  rd r = {.f = f, .name = path};
  if (file_size(f, &r.size) < 0) {
    fclose(f);
    CE_FAIL("%s: cannot determine the file size", path);
  }
  snprintf(s->path, sizeof s->path, "%s", path);
  s->file_size = r.size;
  int rc = open_rd(&r, s);
  fclose(f);
  if (rc < 0) amrvac_free(s);
  return rc;
}

void *amrvac_stream_open(const amrvac_snapshot *s) {
  if (s->stream) return s->stream;
  FILE *f = fopen(s->path, "rb");
  if (!f) ce_err("%s: cannot reopen the snapshot", s->path);
  return f;
}

void amrvac_stream_close(const amrvac_snapshot *s, void *f) {
  if (f && f != s->stream) fclose(f);
}

int64_t amrvac_record_values(const amrvac_snapshot *s, int64_t leaf) {
  return (s->record_size[leaf] - 8 * (int64_t)s->h.ndim) / 8;
}

int amrvac_read_leaf(const amrvac_snapshot *s, void *f, int64_t leaf, double *out,
                     double *scratch) {
  const amrvac_header *h = &s->h;
  const amrvac_leaf *lf = &s->leaves[leaf];
  rd r = {.f = f, .name = s->path, .size = s->file_size};
  CE_TRY(rd_seek(&r, lf->offset + 8 * (int64_t)h->ndim, "block data"));
  int64_t m[3], n[3];
  for (int d = 0; d < 3; d++) {
    n[d] = h->block_nx[d];
    m[d] = n[d] + lf->ghost_lo[d] + lf->ghost_hi[d];
  }
  int64_t total = m[0] * m[1] * m[2] * h->nw;
  CE_TRY(rd_bytes(&r, scratch, 8 * total, "block data"));
  int64_t nc = n[0] * n[1] * n[2];
  for (int iw = 0; iw < h->nw; iw++)
    for (int64_t k = 0; k < n[2]; k++)
      for (int64_t j = 0; j < n[1]; j++) {
        const double *src = scratch + ((iw * m[2] + k + lf->ghost_lo[2]) * m[1] + j +
                                       lf->ghost_lo[1]) * m[0] + lf->ghost_lo[0];
        memcpy(out + iw * nc + (k * n[1] + j) * n[0], src, (size_t)n[0] * sizeof *src);
      }
  return 0;
}

int amrvac_read_blocks(amrvac_snapshot *s) {
  const amrvac_header *h = &s->h;
  int64_t per = amrvac_block_cells(h) * h->nw, maxrec = 0;
  for (int64_t i = 0; i < h->nleafs; i++)
    if (amrvac_record_values(s, i) > maxrec) maxrec = amrvac_record_values(s, i);
  double *w = ce_malloc_array((size_t)h->nleafs, (size_t)per * sizeof(double), "leaf values");
  double *scratch = ce_malloc_array((size_t)maxrec, sizeof(double), "block record");
  void *f = w && scratch ? amrvac_stream_open(s) : NULL;
  int rc = f ? 0 : -1;
  for (int64_t i = 0; i < h->nleafs && rc == 0; i++)
    rc = amrvac_read_leaf(s, f, i, w + i * per, scratch);
  amrvac_stream_close(s, f);
  free(scratch);
  if (rc < 0) {
    free(w);
    return -1;
  }
  free(s->w);
  s->w = w;
  return 0;
}
