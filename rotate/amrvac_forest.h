/* amrvac_forest.h - the block forest of an MPI-AMRVAC snapshot.
 *
 * AMRVAC stores its octree (quadtree in 2-D) as one logical per node, in
 * depth-first pre-order, with the level-1 roots visited in Morton order and
 * the 2^ndim children of a node with the x index varying fastest. Leaves are
 * identified by (level, ig), ig being the 1-based block index on that level.
 * Both the reader (to validate the stored level/ig arrays) and the writer
 * (coemu synth) use this one implementation.
 */
#ifndef COEMU_AMRVAC_FOREST_H
#define COEMU_AMRVAC_FOREST_H

#include <stdint.h>

typedef struct {
  int level;  /* 1-based */
  int ig[3];  /* 1-based block index on `level`; 1 in unused dimensions */
} amrvac_block_id;

/* Level-1 roots in AMRVAC's Morton order. ng[d] = domain_nx[d]/block_nx[d]
 * (1 for d >= ndim). *roots is malloc'd with ng[0]*ng[1]*ng[2] entries. */
int amrvac_roots(int ndim, const int ng[3], amrvac_block_id **roots, int64_t *nroots);

/* Decode the stored node bits (1 = leaf, 0 = refined) into the leaves in
 * file order. Fails (with a message naming the node index) if the bits end
 * early, leave bits unused, refine past `levmax`, or give a leaf count other
 * than `nleafs`. `leaves` must hold nleafs entries. */
int amrvac_forest_decode(int ndim, const int ng[3], int levmax, const int32_t *bits,
                         int64_t nbits, int64_t nleafs, amrvac_block_id *leaves);

/* Build a forest by refinement: refine(id, user) returns 1 to split a block
 * (never called on level levmax). *bits (nleafs + nparents entries) and
 * *leaves (nleafs) are malloc'd, in file order. */
typedef int (*amrvac_refine_fn)(const amrvac_block_id *id, void *user);
int amrvac_forest_build(int ndim, const int ng[3], int levmax, amrvac_refine_fn refine,
                        void *user, int32_t **bits, int64_t *nbits,
                        amrvac_block_id **leaves, int64_t *nleafs);

#endif
