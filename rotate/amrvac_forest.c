/* amrvac_forest.c - Morton-ordered roots and the depth-first node walk. */
#include "rotate/amrvac_forest.h"

#include <stdlib.h>

#include "common/error.h"

int amrvac_roots(int ndim, const int ng[3], amrvac_block_id **roots, int64_t *nroots) {
  if (ndim < 1 || ndim > 3) CE_FAIL("ndim = %d, expected 1, 2 or 3", ndim);
  int64_t n = 1;
  int maxng = 1;
  for (int d = 0; d < 3; d++) {
    int g = d < ndim ? ng[d] : 1;
    if (g < 1 || g > (1 << 20)) CE_FAIL("level-1 block count %d in dimension %d is out of range", g, d + 1);
    n *= g;
    if (g > maxng) maxng = g;
  }
  if (n > ((int64_t)1 << 30)) CE_FAIL("%lld level-1 blocks is out of range", (long long)n);
  /* side of the smallest power-of-two cube holding the roots */
  int bits = 0;
  while ((1 << bits) < maxng) bits++;
  amrvac_block_id *r = ce_malloc_array((size_t)n, sizeof *r, "level-1 roots");
  if (!r) return -1;
  int64_t k = 0;
  uint64_t ncodes = (uint64_t)1 << (bits * ndim);
  for (uint64_t code = 0; code < ncodes && k < n; code++) {
    int c[3] = {0, 0, 0};
    for (int b = 0; b < bits; b++)
      for (int d = 0; d < ndim; d++)
        if (code >> (ndim * b + d) & 1) c[d] |= 1 << b;
    int inside = 1;
    for (int d = 0; d < ndim; d++)
      if (c[d] >= ng[d]) inside = 0;
    if (!inside) continue;
    r[k].level = 1;
    for (int d = 0; d < 3; d++) r[k].ig[d] = d < ndim ? c[d] + 1 : 1;
    k++;
  }
  *roots = r;
  *nroots = n;
  return 0;
}

typedef struct {
  int ndim, levmax;
  /* decode */
  const int32_t *bits;
  int64_t nbits, pos, nleafs, nleaf_found;
  amrvac_block_id *leaves;
  /* build */
  amrvac_refine_fn refine;
  void *user;
  int32_t *obits;
  int64_t ocap;
  amrvac_block_id *oleaves;
  int64_t olcap;
} walk_state;

static int decode_node(walk_state *s, amrvac_block_id id) {
  if (s->pos >= s->nbits)
    CE_FAIL("tree: node bits end at node %lld, but the forest needs more nodes", (long long)s->pos);
  int leaf = s->bits[s->pos] != 0;
  s->pos++;
  if (leaf) {
    if (s->nleaf_found >= s->nleafs)
      CE_FAIL("tree: node %lld is leaf number %lld, but nleafs = %lld", (long long)(s->pos - 1),
              (long long)s->nleaf_found + 1, (long long)s->nleafs);
    s->leaves[s->nleaf_found++] = id;
    return 0;
  }
  if (id.level >= s->levmax)
    CE_FAIL("tree: node %lld at level %d is refined, but levmax = %d", (long long)(s->pos - 1),
            id.level, s->levmax);
  int nchild = 1 << s->ndim;
  for (int c = 0; c < nchild; c++) {
    amrvac_block_id ch = {id.level + 1, {1, 1, 1}};
    for (int d = 0; d < s->ndim; d++) ch.ig[d] = 2 * (id.ig[d] - 1) + ((c >> d) & 1) + 1;
    CE_TRY(decode_node(s, ch));
  }
  return 0;
}

int amrvac_forest_decode(int ndim, const int ng[3], int levmax, const int32_t *bits,
                         int64_t nbits, int64_t nleafs, amrvac_block_id *leaves) {
  amrvac_block_id *roots;
  int64_t nroots;
  CE_TRY(amrvac_roots(ndim, ng, &roots, &nroots));
  walk_state s = {.ndim = ndim, .levmax = levmax, .bits = bits, .nbits = nbits,
                  .nleafs = nleafs, .leaves = leaves};
  int rc = 0;
  for (int64_t i = 0; i < nroots && rc == 0; i++) rc = decode_node(&s, roots[i]);
  free(roots);
  CE_TRY(rc);
  if (s.pos != nbits)
    CE_FAIL("tree: the forest ends after %lld nodes, but nleafs + nparents = %lld",
            (long long)s.pos, (long long)nbits);
  if (s.nleaf_found != nleafs)
    CE_FAIL("tree: the forest has %lld leaves, but nleafs = %lld", (long long)s.nleaf_found,
            (long long)nleafs);
  return 0;
}

static int push_bit(walk_state *s, int32_t bit) {
  if (s->pos == s->ocap) {
    int64_t cap = s->ocap ? 2 * s->ocap : 256;
    int32_t *nb = realloc(s->obits, (size_t)cap * sizeof *nb);
    if (!nb) CE_FAIL("forest: out of memory");
    s->obits = nb;
    s->ocap = cap;
  }
  s->obits[s->pos++] = bit;
  return 0;
}

static int build_node(walk_state *s, amrvac_block_id id) {
  int split = id.level < s->levmax && s->refine(&id, s->user);
  CE_TRY(push_bit(s, split ? 0 : 1));
  if (!split) {
    if (s->nleaf_found == s->olcap) {
      int64_t cap = s->olcap ? 2 * s->olcap : 256;
      amrvac_block_id *nl = realloc(s->oleaves, (size_t)cap * sizeof *nl);
      if (!nl) CE_FAIL("forest: out of memory");
      s->oleaves = nl;
      s->olcap = cap;
    }
    s->oleaves[s->nleaf_found++] = id;
    return 0;
  }
  int nchild = 1 << s->ndim;
  for (int c = 0; c < nchild; c++) {
    amrvac_block_id ch = {id.level + 1, {1, 1, 1}};
    for (int d = 0; d < s->ndim; d++) ch.ig[d] = 2 * (id.ig[d] - 1) + ((c >> d) & 1) + 1;
    CE_TRY(build_node(s, ch));
  }
  return 0;
}

int amrvac_forest_build(int ndim, const int ng[3], int levmax, amrvac_refine_fn refine,
                        void *user, int32_t **bits, int64_t *nbits,
                        amrvac_block_id **leaves, int64_t *nleafs) {
  amrvac_block_id *roots;
  int64_t nroots;
  CE_TRY(amrvac_roots(ndim, ng, &roots, &nroots));
  walk_state s = {.ndim = ndim, .levmax = levmax, .refine = refine, .user = user};
  int rc = 0;
  for (int64_t i = 0; i < nroots && rc == 0; i++) rc = build_node(&s, roots[i]);
  free(roots);
  if (rc < 0) {
    free(s.obits);
    free(s.oleaves);
    return -1;
  }
  *bits = s.obits;
  *nbits = s.pos;
  *leaves = s.oleaves;
  *nleafs = s.nleaf_found;
  return 0;
}
