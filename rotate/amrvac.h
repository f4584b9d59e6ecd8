/* amrvac.h - MPI-AMRVAC .dat snapshots (format versions 3, 4 and 5).
 *
 * The in-memory form of a snapshot, shared by the reader (amrvac.c) and the
 * writer (amrvac_write.c, used by coemu synth). A snapshot is opened in two
 * steps: amrvac_open() reads and validates the header and the tree section
 * (cheap: what `coemu inspect` needs), amrvac_read_blocks() streams the leaf
 * blocks one by one into `w`, dropping ghost layers. The finest-level grid is
 * never built. All indices are as in the file: levels and block indices are
 * 1-based, leaves are in the file's Morton order.
 */
#ifndef COEMU_AMRVAC_H
#define COEMU_AMRVAC_H

#include <stdint.h>

#include "rotate/amrvac_forest.h"

#define AMRVAC_NAME_LEN 16 /* character(len=16) in the file, space padded */

typedef struct {
  int version;            /* 3, 4 or 5 */
  int ndim, ndir, nw;
  int levmax, nleafs, nparents, it;
  double time;
  double xmin[3], xmax[3];     /* unused dimensions: 0 and 1 */
  int domain_nx[3], block_nx[3]; /* unused dimensions: 1 */
  int periodic[3];             /* v5 only (else 0) */
  char geometry[AMRVAC_NAME_LEN + 1]; /* v5 only (else ""), trailing blanks removed */
  int staggered;               /* v5 only (else 0) */
  char (*w_names)[AMRVAC_NAME_LEN + 1]; /* nw names, trailing blanks removed */
  char physics_type[AMRVAC_NAME_LEN + 1];
  int n_params;
  double *params;
  char (*param_names)[AMRVAC_NAME_LEN + 1];
  int snapshotnext, slicenext, collapsenext; /* v4+ (else 0) */
  int64_t offset_tree, offset_blocks;
} amrvac_header;

typedef struct {
  amrvac_block_id id;       /* level and 1-based block index */
  int64_t offset;           /* byte offset of the block record */
  int ghost_lo[3], ghost_hi[3]; /* ghost layers stored on each side (0 for unused dims) */
} amrvac_leaf;

typedef struct {
  char path[1024];
  int64_t file_size;
  amrvac_header h;
  amrvac_leaf *leaves;      /* h.nleafs, file order */
  int32_t *node_bits;       /* h.nleafs + h.nparents stored leaf flags (1 = leaf) */
  /* Interior cell values of all leaves, after amrvac_read_blocks():
   * w[(((size_t)leaf*nw + iw)*n3 + k)*n2*n1 + j*n1 + i], with
   * (n1, n2, n3) = block_nx (1 for unused dims): x fastest, as in Fortran. */
  double *w;
  /* Added for streaming readers: the stream amrvac_open_stream() was given
   * (borrowed, not closed), or NULL when the snapshot was opened by path. */
  void *stream;
  int64_t *record_size;     /* h.nleafs: bytes of each block record */
} amrvac_snapshot;

/* Read and validate the header and the tree section (and the block record
 * sizes, from the ghost counts). On failure the message names the file, the
 * byte offset and the field, and *s is left empty (amrvac_free-safe). */
int amrvac_open(const char *path, amrvac_snapshot *s);

/* The same from an open stream (a FILE*, e.g. fmemopen'd bytes): `name`
 * labels the messages. The stream must stay open while s is used. */
int amrvac_open_stream(void *file, const char *name, amrvac_snapshot *s);

/* Read all leaf blocks into s->w (interior cells only). */
int amrvac_read_blocks(amrvac_snapshot *s);

/* Stream one leaf block: its interior cells (nw * amrvac_block_cells
 * values, layout as one leaf of s->w) into `out`. `f` is an open FILE* on
 * the snapshot (amrvac_stream_open) and `scratch` holds at least
 * amrvac_record_values(s, leaf) doubles (the block with its ghost layers). */
int amrvac_read_leaf(const amrvac_snapshot *s, void *f, int64_t leaf, double *out, double *scratch);
int64_t amrvac_record_values(const amrvac_snapshot *s, int64_t leaf);
/* The stream to read blocks from: s->stream, or the file reopened by path
 * (close with amrvac_stream_close). NULL with a message on failure. */
void *amrvac_stream_open(const amrvac_snapshot *s);
void amrvac_stream_close(const amrvac_snapshot *s, void *f);

/* Index of the variable called `name` (exact match after trimming), or -1. */
int amrvac_var_index(const amrvac_header *h, const char *name);

/* Cells per block (interior) and the physical bounds of a leaf. */
int64_t amrvac_block_cells(const amrvac_header *h);
void amrvac_leaf_bounds(const amrvac_header *h, const amrvac_block_id *id, double lo[3],
                        double hi[3]);
/* Cell size on a level. */
void amrvac_cell_size(const amrvac_header *h, int level, double dx[3]);

void amrvac_free(amrvac_snapshot *s);

#endif
