/* amrvac_write.h - write an amrvac_snapshot as an MPI-AMRVAC .dat file
 * (format version 5), byte for byte as AMRVAC's write_snapshot lays it out
 * (see docs/amrvac.md):
 *
 *   header (v5 field order, native little-endian, char16 names space padded)
 *   tree:   leaf bits (i32, nleafs + nparents), level (i32, nleafs),
 *           ig (i32, ndim x nleafs), block offsets (i64, nleafs)
 *   blocks: per leaf, n_ghost_lo/hi (i32, ndim each; always 0 here), then the
 *           interior w in Fortran order w(i1, i2, i3, iw)
 *
 * The file is written atomically (fs_open_tmp/fs_commit_tmp). Used by
 * coemu synth; the reader (amrvac.h) reads the result back unchanged.
 */
#ifndef COEMU_AMRVAC_WRITE_H
#define COEMU_AMRVAC_WRITE_H

#include <stdint.h>

#include "rotate/amrvac.h"

/* Bytes of the version-5 header of `h` (= offset_tree of the written file):
 * 288 for 3-D hd with 5 variables and one parameter. */
int64_t amrvac_v5_header_bytes(const amrvac_header *h);

/* Write s to path. Uses from s->h: ndim, ndir, nw, levmax, nleafs, nparents,
 * it, time, xmin, xmax, domain_nx, block_nx, periodic, geometry, staggered
 * (must be 0), w_names, physics_type, n_params, params, param_names,
 * snapshotnext, slicenext, collapsenext; s->h.version must be 5. Uses
 * s->node_bits, s->leaves[].id (ghost counts must be 0) and s->w (layout of
 * amrvac.h). The node bits are checked against the leaves with
 * amrvac_forest_decode before anything is written, and names must fit in
 * 16 characters. On success fills in what a reader would find:
 * s->h.offset_tree, s->h.offset_blocks, s->leaves[].offset, s->file_size and
 * s->path. Returns 0, or -1 with a message naming the file and field. */
int amrvac_write(const char *path, amrvac_snapshot *s);

#endif
