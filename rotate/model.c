/* model.c - building a model from a snapshot and locating points in it. */
#include "rotate/model.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "common/error.h"

int model_check_usable(const amrvac_header *h, const units *u, const char *name) {
  if (h->ndim != 3)
    CE_FAIL("%s: ndim = %d: the CO path needs a 3-D snapshot (coemu inspect still shows its header and variables)",
            name, h->ndim);
  if (h->ndir != 3)
    CE_FAIL("%s: ndir = %d: the CO path needs 3 velocity components", name, h->ndir);
  if (h->geometry[0] && strncasecmp(h->geometry, "Cartesian", 9) != 0 &&
      strcasecmp(h->geometry, "slab") != 0)
    CE_FAIL("%s: geometry '%s': only Cartesian snapshots can be sampled", name, h->geometry);
  if (h->staggered)
    CE_FAIL("%s: staggered (face-centred) fields are not supported by the CO path", name);
  if (u && u->stretched)
    CE_FAIL("%s: the sidecar %s declares a stretched grid, which is not supported", name,
            u->path);
  return 0;
}

void model_free(ce_model *m) {
  if (!m) return;
  pthread_mutex_destroy(&m->nodal_lock);
  free(m->nodal);
  free(m->limited);
  free(m->ids);
  free(m->cells);
  free(m->root);
  free(m->nodes);
  free(m);
}

void model_centre(const ce_model *m, double c[3]) {
  for (int d = 0; d < 3; d++) c[d] = 0.5 * (m->xmin[d] + m->xmax[d]);
}

double model_half_extent(const ce_model *m) {
  double h = INFINITY;
  for (int d = 0; d < 3; d++) h = fmin(h, 0.5 * (m->xmax[d] - m->xmin[d]));
  return h;
}

/* Geometry and the locator (root grid + node tree) of the leaves. */
static int model_geometry(const amrvac_header *h, const amrvac_leaf *leaves, double length,
                          ce_model **out) {
  ce_model *m = calloc(1, sizeof *m);
  if (!m) CE_FAIL("model: out of memory");
  pthread_mutex_init(&m->nodal_lock, NULL);
  m->levmax = h->levmax;
  m->nleaves = h->nleafs;
  m->ncell = amrvac_block_cells(h);
  for (int d = 0; d < 3; d++) {
    m->bnx[d] = h->block_nx[d];
    m->ng[d] = h->domain_nx[d] / h->block_nx[d];
    m->xmin[d] = h->xmin[d] * length;
    m->xmax[d] = h->xmax[d] * length;
    m->nfine[d] = (int64_t)h->domain_nx[d] << (h->levmax - 1);
    m->inv_dxf[d] = (double)m->nfine[d] / (m->xmax[d] - m->xmin[d]);
  }
  m->bshift = -1;
  for (int b = 0; b < 13; b++)
    if (m->bnx[0] == 1 << b && m->bnx[1] == 1 << b && m->bnx[2] == 1 << b) m->bshift = b;
  size_t nroot = (size_t)m->ng[0] * m->ng[1] * m->ng[2];
  m->ids = ce_malloc_array((size_t)m->nleaves, sizeof *m->ids, "model leaves");
  m->root = ce_malloc_array(nroot, sizeof *m->root, "model root grid");
  /* at most nleaves nodes are refined ones in a forest; 8 children each */
  m->nodes = ce_malloc_array((size_t)m->nleaves, 8 * sizeof *m->nodes, "model nodes");
  if (!m->ids || !m->root || !m->nodes) {
    model_free(m);
    return -1;
  }
  const int32_t unset = INT32_MIN;
  for (size_t i = 0; i < nroot; i++) m->root[i] = unset;
  for (int64_t l = 0; l < m->nleaves; l++) {
    const amrvac_block_id *id = &leaves[l].id;
    m->ids[l] = *id;
    /* the ancestors of this leaf, from level 1 down */
    int32_t *slot;
    int L = id->level;
    int r[3];
    for (int d = 0; d < 3; d++) r[d] = (id->ig[d] - 1) >> (L - 1);
    slot = &m->root[((size_t)r[2] * m->ng[1] + r[1]) * m->ng[0] + r[0]];
    for (int lev = 1; lev < L; lev++) {
      if (*slot == unset) {
        if (m->nnodes + 8 > 8 * m->nleaves) {
          model_free(m);
          CE_FAIL("model: the leaves do not form a forest");
        }
        *slot = (int32_t)m->nnodes;
        for (int c = 0; c < 8; c++) m->nodes[m->nnodes + c] = unset;
        m->nnodes += 8;
      } else if (*slot < 0) {
        model_free(m);
        CE_FAIL("model: leaf %lld lies inside another leaf", (long long)l + 1);
      }
      int ic = 0;
      for (int d = 0; d < 3; d++) ic |= (((id->ig[d] - 1) >> (L - lev - 1)) & 1) << d;
      slot = &m->nodes[*slot + ic];
    }
    if (*slot != unset) {
      model_free(m);
      CE_FAIL("model: leaf %lld overlaps another block", (long long)l + 1);
    }
    *slot = -(int32_t)(l + 1);
  }
  for (size_t i = 0; i < nroot; i++)
    if (m->root[i] == unset) {
      model_free(m);
      CE_FAIL("model: level-1 block %zu is not covered by leaves", i + 1);
    }
  for (int64_t i = 0; i < m->nnodes; i++)
    if (m->nodes[i] == unset) {
      model_free(m);
      CE_FAIL("model: a refined block is not covered by leaves");
    }
  m->cells = ce_malloc_array((size_t)m->nleaves * m->ncell, MODEL_NF * sizeof(model_real),
                             "model cells");
  if (!m->cells) {
    model_free(m);
    return -1;
  }
  *out = m;
  return 0;
}

int64_t model_find(const ce_model *m, const int64_t f[3], model_cache *c) {
  int32_t code;
  int lev = 1;
  if (m->bshift >= 0) { /* cells per block a power of two (the usual case): shifts only */
    int s0 = m->bshift + m->levmax - 1;
    code = m->root[((size_t)(f[2] >> s0) * m->ng[1] + (size_t)(f[1] >> s0)) * m->ng[0] +
                   (size_t)(f[0] >> s0)];
    while (code >= 0) {
      lev++;
      int sh = m->bshift + m->levmax - lev;
      code = m->nodes[code + (int)((f[0] >> sh) & 1) + 2 * (int)((f[1] >> sh) & 1) +
                      4 * (int)((f[2] >> sh) & 1)];
    }
  } else {
    int64_t r[3];
    for (int d = 0; d < 3; d++) r[d] = f[d] / ((int64_t)m->bnx[d] << (m->levmax - 1));
    code = m->root[((size_t)r[2] * m->ng[1] + r[1]) * m->ng[0] + r[0]];
    while (code >= 0) {
      lev++;
      int ic = 0;
      for (int d = 0; d < 3; d++)
        ic |= (int)((f[d] / ((int64_t)m->bnx[d] << (m->levmax - lev))) & 1) << d;
      code = m->nodes[code + ic];
    }
  }
  int64_t leaf = -(int64_t)code - 1;
  const amrvac_block_id *id = &m->ids[leaf];
  c->shift = m->levmax - id->level;
  for (int d = 0; d < 3; d++) {
    int64_t span = (int64_t)m->bnx[d] << c->shift;
    c->lo[d] = (int64_t)(id->ig[d] - 1) * span;
    c->hi[d] = c->lo[d] + span;
  }
  c->base = leaf * m->ncell;
  c->leaf = leaf;
  c->valid = 1;
  int s = c->shift;
  return c->base + ((((f[2] - c->lo[2]) >> s) * m->bnx[1] + ((f[1] - c->lo[1]) >> s)) * m->bnx[0] +
                    ((f[0] - c->lo[0]) >> s));
}

/* The value at the lattice node P (integer coordinates on the finest level,
 * 0..nfine): see model_nodal_build. */
static void node_value(const ce_model *m, const int64_t P[3], double out[MODEL_NF]) {
  double acc[MODEL_NF] = {0}, wsum = 0;
  int hang = -1; /* shift of the largest leaf cell P hangs on */
  model_cache hc = {0};
  int64_t hf[3] = {0, 0, 0};
  for (int s = 0; s < 8; s++) {
    int64_t f[3];
    int in = 1;
    for (int d = 0; d < 3; d++) {
      f[d] = P[d] - 1 + ((s >> d) & 1);
      if (f[d] < 0 || f[d] >= m->nfine[d]) in = 0;
    }
    if (!in) continue;
    model_cache c = {0};
    int64_t cell = model_find(m, f, &c);
    int64_t mask = ((int64_t)1 << c.shift) - 1;
    if (((P[0] - c.lo[0]) & mask) || ((P[1] - c.lo[1]) & mask) || ((P[2] - c.lo[2]) & mask)) {
      if (c.shift > hang) {
        hang = c.shift;
        hc = c;
        for (int d = 0; d < 3; d++) hf[d] = f[d];
      }
      continue;
    }
    double w = 1.0 / (double)((int64_t)1 << c.shift);
    const model_real *v = m->cells + cell * MODEL_NF;
    acc[MODEL_N] += w * model_nodal_ln(v[MODEL_N]);
    acc[MODEL_T] += w * model_nodal_ln(v[MODEL_T]);
    for (int q = MODEL_VX; q < MODEL_NF; q++) acc[q] += w * v[q];
    wsum += w;
  }
  if (hang >= 0) { /* the trilinear value of that cell's corners at P */
    int64_t i[3];
    double fr[3];
    for (int d = 0; d < 3; d++) {
      i[d] = (hf[d] - hc.lo[d]) >> hang;
      fr[d] = (double)(P[d] - hc.lo[d] - (i[d] << hang)) / (double)((int64_t)1 << hang);
    }
    for (int q = 0; q < MODEL_NF; q++) out[q] = 0;
    for (int e = 0; e < 8; e++) {
      double w = 1;
      int64_t Q[3];
      for (int d = 0; d < 3; d++) {
        int b = (e >> d) & 1;
        w *= b ? fr[d] : 1 - fr[d];
        Q[d] = hc.lo[d] + ((i[d] + b) << hang);
      }
      if (w == 0) continue;
      double v[MODEL_NF];
      node_value(m, Q, v);
      for (int q = 0; q < MODEL_NF; q++) out[q] += w * v[q];
    }
    return;
  }
  for (int q = 0; q < MODEL_NF; q++) out[q] = wsum > 0 ? acc[q] / wsum : 0;
}

int model_nodal_build(ce_model *m) {
  pthread_mutex_lock(&m->nodal_lock);
  if (m->nodal) {
    pthread_mutex_unlock(&m->nodal_lock);
    return 0;
  }
  const int64_t b0 = m->bnx[0] + 1, b1 = m->bnx[1] + 1, b2 = m->bnx[2] + 1;
  int64_t per = b0 * b1 * b2;
  size_t bytes;
  if (__builtin_mul_overflow((size_t)(m->nleaves * per), MODEL_NODAL_STRIDE * sizeof(model_real),
                             &bytes)) {
    pthread_mutex_unlock(&m->nodal_lock);
    CE_FAIL("model: %lld corner values are too many", (long long)(m->nleaves * per));
  }
  model_real *nv = aligned_alloc(32, (bytes + 31) / 32 * 32);
  if (!nv) {
    ce_err("model: out of memory for %zu bytes of corner values", bytes);
    pthread_mutex_unlock(&m->nodal_lock);
    return -1;
  }
  for (int64_t l = 0; l < m->nleaves; l++) {
    const amrvac_block_id *id = &m->ids[l];
    int sh = m->levmax - id->level;
    int64_t lo[3];
    for (int d = 0; d < 3; d++) lo[d] = (int64_t)(id->ig[d] - 1) * ((int64_t)m->bnx[d] << sh);
    for (int64_t k = 0; k < b2; k++)
      for (int64_t j = 0; j < b1; j++)
        for (int64_t i = 0; i < b0; i++) {
          int64_t P[3] = {lo[0] + (i << sh), lo[1] + (j << sh), lo[2] + (k << sh)};
          double v[MODEL_NF];
          node_value(m, P, v);
          model_real *o = nv + ((l * per) + (k * b1 + j) * b0 + i) * MODEL_NODAL_STRIDE;
          for (int q = 0; q < MODEL_NODAL_STRIDE; q++) o[q] = q < MODEL_NF ? (model_real)v[q] : 0;
        }
  }
  m->nnodal = per;
  m->nodal = nv;
  pthread_mutex_unlock(&m->nodal_lock);
  return 0;
}

double model_coarse_fraction(const ce_model *m, double r, double voxel, int npts,
                             double *level_frac) {
  double c[3], dxf = 0;
  model_centre(m, c);
  for (int d = 0; d < 3; d++) dxf = fmax(dxf, 1.0 / m->inv_dxf[d]);
  int64_t in = 0, coarse = 0, *lev = calloc((size_t)m->levmax, sizeof *lev);
  model_cache cache = {0};
  for (int i = 0; i < npts; i++)
    for (int j = 0; j < npts; j++)
      for (int k = 0; k < npts; k++) {
        double u[3] = {((i + 0.5) / npts * 2 - 1) * r, ((j + 0.5) / npts * 2 - 1) * r,
                       ((k + 0.5) / npts * 2 - 1) * r};
        if (u[0] * u[0] + u[1] * u[1] + u[2] * u[2] > r * r) continue;
        double x[3] = {c[0] + u[0], c[1] + u[1], c[2] + u[2]};
        if (model_locate(m, x, &cache) < 0) continue;
        in++;
        if (dxf * (double)((int64_t)1 << cache.shift) > voxel) coarse++;
        if (lev) lev[m->levmax - 1 - cache.shift]++;
      }
  if (level_frac)
    for (int L = 0; L < m->levmax; L++) level_frac[L] = in && lev ? (double)lev[L] / in : 0;
  free(lev);
  return in ? (double)coarse / in : 0;
}

static void fill_leaf(ce_model *m, const units_map *map, int64_t leaf, const double *w) {
  size_t nc = (size_t)m->ncell;
  for (size_t c = 0; c < nc; c++) {
    model_real *o = m->cells + ((size_t)leaf * nc + c) * MODEL_NF;
    double n, T, v[3];
    units_cell(map, w + c, nc, &n, &T, v);
    o[MODEL_N] = (model_real)n;
    o[MODEL_T] = (model_real)T;
    for (int d = 0; d < 3; d++) o[MODEL_VX + d] = (model_real)v[d];
  }
}

int model_from_snapshot(const amrvac_snapshot *s, const units *u, ce_model **out) {
  CE_TRY(model_check_usable(&s->h, u, s->path));
  if (!s->w) CE_FAIL("%s: the blocks have not been read", s->path);
  units_map map;
  CE_TRY(units_map_make(u, &s->h, &map));
  ce_model *m;
  CE_TRY(model_geometry(&s->h, s->leaves, map.si.length, &m));
  size_t per = (size_t)m->ncell * s->h.nw;
  for (int64_t l = 0; l < m->nleaves; l++) fill_leaf(m, &map, l, s->w + l * per);
  *out = m;
  return 0;
}

int model_load(const char *dat_path, const char *units_path, ce_model **out) {
  char found[2048];
  /* a wrong path is the likelier mistake than a missing sidecar: say so first */
  if (access(dat_path, R_OK) != 0) return ce_err_open(dat_path, "the snapshot");
  if (!units_path) {
    if (!units_find(dat_path, found, sizeof found))
      CE_FAIL("%s: no units sidecar: give --units FILE, or put MODEL.units.yaml or units.yaml "
              "beside the snapshot (docs/sidecar.md)",
              dat_path);
    units_path = found;
  }
  units u;
  CE_TRY(units_read(units_path, &u));
  amrvac_snapshot s;
  CE_TRY(amrvac_open(dat_path, &s));
  int rc = -1;
  ce_model *m = NULL;
  double *w = NULL, *scratch = NULL;
  void *f = NULL;
  units_map map;
  if (model_check_usable(&s.h, &u, dat_path) < 0 || units_map_make(&u, &s.h, &map) < 0 ||
      model_geometry(&s.h, s.leaves, map.si.length, &m) < 0)
    goto done;
  int64_t maxrec = 0;
  for (int64_t i = 0; i < s.h.nleafs; i++)
    if (amrvac_record_values(&s, i) > maxrec) maxrec = amrvac_record_values(&s, i);
  w = ce_malloc_array((size_t)m->ncell * s.h.nw, sizeof *w, "block values");
  scratch = ce_malloc_array((size_t)maxrec, sizeof *scratch, "block record");
  if (!w || !scratch || !(f = amrvac_stream_open(&s))) goto done;
  for (int64_t l = 0; l < m->nleaves; l++) {
    if (amrvac_read_leaf(&s, f, l, w, scratch) < 0) goto done;
    fill_leaf(m, &map, l, w);
  }
  rc = 0;
done:
  amrvac_stream_close(&s, f);
  free(w);
  free(scratch);
  amrvac_free(&s);
  if (rc < 0) {
    model_free(m);
    return -1;
  }
  *out = m;
  return 0;
}

typedef struct {
  model_state_fn state;
  void *user;
} synth_ctx;

int model_synthetic_snapshot(const int domain_nx[3], const int block_nx[3], const double xmin[3],
                             const double xmax[3], int levmax, double gamma,
                             amrvac_refine_fn refine, void *refine_user, model_state_fn state,
                             void *state_user, amrvac_snapshot *s) {
  memset(s, 0, sizeof *s);
  snprintf(s->path, sizeof s->path, "(synthetic snapshot)");
  amrvac_header *h = &s->h;
  h->version = 5;
  h->ndim = 3;
  h->ndir = 3;
  h->nw = 5;
  h->levmax = levmax;
  snprintf(h->geometry, sizeof h->geometry, "Cartesian_3D");
  snprintf(h->physics_type, sizeof h->physics_type, "hd");
  int ng[3];
  for (int d = 0; d < 3; d++) {
    h->xmin[d] = xmin[d];
    h->xmax[d] = xmax[d];
    h->domain_nx[d] = domain_nx[d];
    h->block_nx[d] = block_nx[d];
    ng[d] = domain_nx[d] / block_nx[d];
  }
  h->w_names = calloc(5, sizeof *h->w_names);
  h->params = malloc(sizeof *h->params);
  h->param_names = calloc(1, sizeof *h->param_names);
  if (!h->w_names || !h->params || !h->param_names) {
    amrvac_free(s);
    CE_FAIL("synthetic snapshot: out of memory");
  }
  static const char *names[5] = {"rho", "m1", "m2", "m3", "e"};
  for (int i = 0; i < 5; i++) snprintf(h->w_names[i], AMRVAC_NAME_LEN + 1, "%s", names[i]);
  h->n_params = 1;
  h->params[0] = gamma;
  snprintf(h->param_names[0], AMRVAC_NAME_LEN + 1, "gamma");
  int64_t nbits, nleafs;
  amrvac_block_id *ids;
  if (amrvac_forest_build(3, ng, levmax, refine, refine_user, &s->node_bits, &nbits, &ids,
                          &nleafs) < 0) {
    amrvac_free(s);
    return -1;
  }
  h->nleafs = (int)nleafs;
  h->nparents = (int)(nbits - nleafs);
  s->leaves = calloc((size_t)nleafs, sizeof *s->leaves);
  int64_t nc = amrvac_block_cells(h);
  s->w = ce_malloc_array((size_t)(nleafs * nc), 5 * sizeof(double), "synthetic cells");
  if (!s->leaves || !s->w) {
    free(ids);
    amrvac_free(s);
    CE_FAIL("synthetic snapshot: out of memory");
  }
  for (int64_t l = 0; l < nleafs; l++) {
    s->leaves[l].id = ids[l];
    double lo[3], hi[3], dx[3];
    amrvac_leaf_bounds(h, &ids[l], lo, hi);
    amrvac_cell_size(h, ids[l].level, dx);
    double *wl = s->w + l * nc * 5;
    for (int k = 0; k < block_nx[2]; k++)
      for (int j = 0; j < block_nx[1]; j++)
        for (int i = 0; i < block_nx[0]; i++) {
          double x[3] = {lo[0] + (i + 0.5) * dx[0], lo[1] + (j + 0.5) * dx[1],
                         lo[2] + (k + 0.5) * dx[2]};
          double w[5];
          state(x, w, state_user);
          int64_t c = ((int64_t)k * block_nx[1] + j) * block_nx[0] + i;
          for (int v = 0; v < 5; v++) wl[v * nc + c] = w[v];
        }
  }
  free(ids);
  return 0;
}
