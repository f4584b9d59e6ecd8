/* model.h - a model ready for sampling: physical fields on the leaf cells of
 * an AMRVAC forest, and a point locator.
 *
 * Fields are SI (n_CO [m^-3], T [K], v [m/s]); positions are metres. The
 * fields of all leaf cells are kept (five floats per cell), interleaved so
 * that one lookup touches one cache line; the finest-level grid is never
 * built. Point location: a level-1 lookup grid gives the root node, then the
 * node tree is descended using the point's integer coordinates on the finest
 * level (one division per level). model_locate() remembers the last leaf, so
 * nearby points (the common case when sampling) cost a few comparisons.
 *
 * Only what the CO path can use is accepted: 3-D, Cartesian (v5 geometry
 * string "Cartesian..."/"slab"; v3/v4 files carry none and are taken as
 * Cartesian), not staggered, and a sidecar that does not declare a
 * stretched grid.
 */
#ifndef COEMU_MODEL_H
#define COEMU_MODEL_H

#include <math.h>
#include <pthread.h>
#include <stdint.h>

#include "rotate/amrvac.h"
#include "rotate/units.h"

/* Cell fields are stored in single precision: the cubes are float32, and
 * half the memory traffic makes sampling faster (docs/sampling.md). */
typedef float model_real;

#define MODEL_NODAL_STRIDE 8
enum { MODEL_N = 0, MODEL_T = 1, MODEL_VX = 2, MODEL_VY = 3, MODEL_VZ = 4, MODEL_NF = 5 };

typedef struct ce_model {
  int levmax;
  int ng[3];        /* level-1 blocks per dimension */
  int bnx[3];       /* cells per block per dimension */
  int bshift;       /* log2 of bnx when the same power of two in all dimensions, else -1 */
  double xmin[3], xmax[3]; /* domain [m] */
  double inv_dxf[3];       /* 1 / finest cell size [1/m] */
  int64_t nfine[3];        /* finest-level cells per dimension */
  int64_t nleaves, ncell;  /* leaves; cells per leaf */
  amrvac_block_id *ids;    /* nleaves */
  model_real *cells; /* [(leaf*ncell + (k*bnx1 + j)*bnx0 + i)*MODEL_NF + field] */
  int32_t *root;  /* ng0*ng1*ng2 node codes, x fastest */
  int32_t *nodes; /* 8 children per refined node; code >= 0: first child, < 0: leaf -(code+1) */
  int64_t nnodes;
  /* Corner (nodal) values for the linear reconstruction (model_nodal_build):
   * per leaf (bnx0+1)(bnx1+1)(bnx2+1) nodes, x fastest, MODEL_NODAL_STRIDE
   * floats each (the MODEL_NF fields, then zeros: one aligned 32-byte
   * record); NULL until built. */
  model_real *nodal;
  int64_t nnodal; /* nodes per leaf */
  pthread_mutex_t nodal_lock;
  /* The limited reconstruction's per-cell records (sampler_limited_build,
   * rotate/sampler.c; built under nodal_lock); NULL until built. */
  model_real *limited;
} ce_model;

/* Read MODEL.dat and its units sidecar (units_path NULL: MODEL.units.yaml,
 * then units.yaml beside it; none is an error), streaming the blocks. */
int model_load(const char *dat_path, const char *units_path, ce_model **out);

/* From a snapshot whose blocks are in memory (s->w, e.g. built in memory
 * for tests and benchmarks). */
int model_from_snapshot(const amrvac_snapshot *s, const units *u, ce_model **out);

void model_free(ce_model *m);

/* The linear reconstruction interpolates ln n_CO, ln T and v (docs/sampling.md):
 * ln of a value clamped to MODEL_NODAL_TINY (so that n = 0 gives a finite
 * ln), in double. */
#define MODEL_NODAL_TINY 1e-37
static inline double model_nodal_ln(double x) { return x > MODEL_NODAL_TINY ? log(x) : log(MODEL_NODAL_TINY); }

/* The linear reconstruction's corner values (docs/sampling.md): for every
 * corner of every leaf cell, the value of (ln n_CO, ln T, v) there, so that the
 * trilinear interpolation of a cell's 8 corners is continuous across all cell
 * faces, coarse-fine ones included, and exact on fields linear in x:
 *  - a node that is a corner of each of the (up to 8) leaf cells meeting at
 *    it takes their mean weighted by 1/h (h the cell size): exact on linear
 *    fields, because the cell centres lie at p + s h/2 (s = +-1 per axis) and
 *    sum_s (1/h_s)(s h_s/2) = 0;
 *  - a hanging node (inside a face or an edge of a larger leaf cell) takes
 *    that cell's trilinear value there (the largest such cell), so both
 *    sides of a coarse-fine face interpolate the same bilinear function.
 * Octants outside the domain are left out (nodes on the domain's faces are
 * not linear-exact). Idempotent and thread-safe; 0, or -1 (out of memory). */
int model_nodal_build(ce_model *m);
void model_centre(const ce_model *m, double c[3]);
double model_half_extent(const ce_model *m);

/* Resolution against a cube (docs/sampling.md): the fraction of the ball of
 * radius r about the centre where the leaf cells are coarser than a voxel
 * (cell edge > voxel, the largest edge of the cell), measured on a regular
 * lattice of npts^3 points over the ball's bounding cube (those in the
 * ball), and per level the fraction of the ball it covers (level_frac[L-1],
 * L = 1..levmax; NULL: not wanted). */
double model_coarse_fraction(const ce_model *m, double r, double voxel, int npts,
                             double *level_frac);

/* Why a snapshot cannot feed the CO path (ndim, geometry, staggered,
 * stretched): 0 if it can, else -1 with the reason. */
int model_check_usable(const amrvac_header *h, const units *u, const char *name);

/* The last leaf found, for model_locate(). Zero-initialise before use. */
typedef struct {
  int64_t lo[3], hi[3]; /* finest-level cell range of the leaf, [lo, hi) */
  int shift;            /* levmax - level */
  int64_t base;         /* first cell index of the leaf */
  int64_t leaf;         /* the leaf's number: base / ncell */
  int valid;
} model_cache;

int64_t model_find(const ce_model *m, const int64_t f[3], model_cache *c);

/* Index of the leaf cell containing x [m] (its fields at
 * m->cells[index * MODEL_NF]), or -1 outside the domain. */
static inline int64_t model_locate(const ce_model *m, const double x[3], model_cache *c) {
  int64_t f[3];
  for (int d = 0; d < 3; d++) {
    double t = (x[d] - m->xmin[d]) * m->inv_dxf[d];
    if (!(t >= 0 && t < (double)m->nfine[d])) return -1;
    f[d] = (int64_t)t;
  }
  if (!(c->valid && f[0] >= c->lo[0] && f[0] < c->hi[0] && f[1] >= c->lo[1] &&
        f[1] < c->hi[1] && f[2] >= c->lo[2] && f[2] < c->hi[2]))
    return model_find(m, f, c);
  int s = c->shift;
  return c->base + ((((f[2] - c->lo[2]) >> s) * m->bnx[1] + ((f[1] - c->lo[1]) >> s)) * m->bnx[0] +
                    ((f[0] - c->lo[0]) >> s));
}

/* An in-memory hd snapshot (variables rho m1 m2 m3 e, gamma in params) of
 * an analytic state: the forest is built by `refine` (amrvac_forest_build),
 * and state(x, w, user) gives the conserved code values w[5] at each cell
 * centre x (code units). For tests and benchmarks. */
typedef void (*model_state_fn)(const double x[3], double w[5], void *user);
int model_synthetic_snapshot(const int domain_nx[3], const int block_nx[3], const double xmin[3],
                             const double xmax[3], int levmax, double gamma,
                             amrvac_refine_fn refine, void *refine_user, model_state_fn state,
                             void *state_user, amrvac_snapshot *s);

#endif
