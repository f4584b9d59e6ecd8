/* cmd_inspect.c - `coemu inspect MODEL.dat [--units FILE]`: what a snapshot
 * holds (header, leaves per level, variables and their ranges), and its
 * physical fields and how its cells compare with a cube's voxels (the
 * resolution report) when a units sidecar is found or given. Reads 1-D and 2-D
 * snapshots too (the physical part needs the CO path: 3-D Cartesian). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/cli.h"
#include "common/error.h"
#include "pipeline/cmd/commands.h"
#include "pipeline/dataset/dataset.h"
#include "rotate/amrvac.h"
#include "rotate/model.h"

static int var_ranges(amrvac_snapshot *s, double *lo, double *hi) {
  const amrvac_header *h = &s->h;
  int64_t nc = amrvac_block_cells(h), maxrec = 0;
  for (int64_t i = 0; i < h->nleafs; i++)
    if (amrvac_record_values(s, i) > maxrec) maxrec = amrvac_record_values(s, i);
  double *w = ce_malloc_array((size_t)(nc * h->nw), sizeof *w, "block values");
  double *scratch = ce_malloc_array((size_t)maxrec, sizeof *scratch, "block record");
  void *f = w && scratch ? amrvac_stream_open(s) : NULL;
  int rc = f ? 0 : -1;
  for (int iw = 0; iw < h->nw; iw++) lo[iw] = INFINITY, hi[iw] = -INFINITY;
  for (int64_t l = 0; l < h->nleafs && rc == 0; l++) {
    rc = amrvac_read_leaf(s, f, l, w, scratch);
    for (int iw = 0; iw < h->nw && rc == 0; iw++)
      for (int64_t c = 0; c < nc; c++) {
        double v = w[iw * nc + c];
        if (v < lo[iw]) lo[iw] = v;
        if (v > hi[iw]) hi[iw] = v;
      }
  }
  amrvac_stream_close(s, f);
  free(w);
  free(scratch);
  return rc;
}

/* How the cells compare with the voxels of a cube of n^3 and edge `edge`
 * (0: the job's auto edge, the ball radius) in the ball of the model's
 * smallest half-extent. */
static void resolution(const ce_model *m, int n, double edge) {
  double r = model_half_extent(m), *lf = calloc((size_t)m->levmax, sizeof *lf);
  if (!(edge > 0)) edge = r;
  double voxel = edge / n, f = model_coarse_fraction(m, r, voxel, 96, lf);
  printf("resolution  cube %d^3, edge %.6g m (voxel %.6g m): cells coarser than a voxel in %.1f%% "
         "of the ball (radius %.6g m)\n  ball by level", n, edge, voxel, 100 * f, r);
  for (int L = 0; lf && L < m->levmax; L++)
    printf(" %d:%.1f%%(cell %.3g voxels)", L + 1, 100 * lf[L],
           (m->xmax[0] - m->xmin[0]) / (double)m->nfine[0] * (double)(1 << (m->levmax - 1 - L)) /
               voxel);
  printf("\n");
  free(lf);
}

static void physical(const ce_model *m) {
  const char *names[MODEL_NF] = {"n_CO [m^-3]", "T [K]", "v_x [m/s]", "v_y [m/s]", "v_z [m/s]"};
  double lo[MODEL_NF], hi[MODEL_NF];
  for (int f = 0; f < MODEL_NF; f++) lo[f] = INFINITY, hi[f] = -INFINITY;
  size_t n = (size_t)(m->nleaves * m->ncell);
  for (size_t c = 0; c < n; c++)
    for (int f = 0; f < MODEL_NF; f++) {
      double v = m->cells[c * MODEL_NF + f];
      if (v < lo[f]) lo[f] = v;
      if (v > hi[f]) hi[f] = v;
    }
  double c[3];
  model_centre(m, c);
  printf("physical (SI):\n  domain     [%.6g, %.6g] x [%.6g, %.6g] x [%.6g, %.6g] m\n", m->xmin[0],
         m->xmax[0], m->xmin[1], m->xmax[1], m->xmin[2], m->xmax[2]);
  printf("  centre     %.6g %.6g %.6g m, smallest half-extent %.6g m\n", c[0], c[1], c[2],
         model_half_extent(m));
  for (int f = 0; f < MODEL_NF; f++)
    printf("  %-12s min %-14.6g max %.6g\n", names[f], lo[f], hi[f]);
}

int cmd_inspect(int argc, char **argv) {
  const char *units_path = NULL;
  int64_t cube_n = 64;
  double cube_edge = 0;
  cli_opt opts[] = {
      {"units", CLI_STR, &units_path, "FILE", "units sidecar (default: looked up beside MODEL)", 0, 0},
      {"n", CLI_INT, &cube_n, "N",
       "voxels per cube edge for the resolution report, 1..4096 (default 64; needs units)", 0, 0},
      {"edge", CLI_DOUBLE, &cube_edge, "M",
       "cube edge [m] for the resolution report, >= 0 (default 0: the job's auto edge, the ball radius)", 0, 0},
      {0}};
  const cli_command spec = {
      "inspect", "MODEL.dat [--units FILE] [--n N] [--edge M] | DATASET-DIR",
      "Print a snapshot's header, leaves per level, variables and their ranges (and physical "
      "fields with a units sidecar),\nor summarise a dataset directory made by coemu generate.",
      opts, 1, 1};
  int npos;
  char **pos;
  cli_status r = cli_run_parse(&spec, argc, argv, &npos, &pos);
  if (r != CLI_OK) return cli_exit(r);
  const char *path = pos[0];
  const cli_range range[] = {{"--n", cube_n, 1, 4096, NULL}};
  int bad = cli_check_ranges("inspect", range, 1);
  if (!bad && !(cube_edge >= 0)) /* the parser has refused inf and nan */
    bad = cli_usage_fail("inspect", "--edge %g: expected >= 0 (0: the job's auto edge)", cube_edge);
  if (bad) {
    free(pos);
    return bad;
  }
  struct stat st;
  if (stat(path, &st) != 0) { /* neither a snapshot nor a dataset: say so, not which */
    ce_err("%s: no such file or folder (expected a snapshot MODEL.dat or a dataset folder): %s",
           path, strerror(errno));
    free(pos);
    return cli_fail("inspect");
  }
  if (S_ISDIR(st.st_mode)) {
    int rc = dataset_inspect(path);
    free(pos);
    return rc < 0 ? cli_fail("inspect") : 0;
  }
  amrvac_snapshot s;
  if (amrvac_open(path, &s) < 0) {
    free(pos);
    return cli_fail("inspect");
  }
  const amrvac_header *h = &s.h;
  printf("file        %s (%lld bytes)\n", path, (long long)s.file_size);
  printf("version     %d\nphysics     %s\ngeometry    %s\nndim %d  ndir %d  nw %d\n", h->version,
         h->physics_type, h->geometry[0] ? h->geometry : "(not stored)", h->ndim, h->ndir, h->nw);
  printf("time        %.17g (it %d)\n", h->time, h->it);
  printf("domain     ");
  for (int d = 0; d < h->ndim; d++) printf(" [%.9g, %.9g]", h->xmin[d], h->xmax[d]);
  printf("\ndomain_nx  ");
  for (int d = 0; d < h->ndim; d++) printf(" %d", h->domain_nx[d]);
  printf("\nblock_nx   ");
  for (int d = 0; d < h->ndim; d++) printf(" %d", h->block_nx[d]);
  if (h->version >= 5) {
    printf("\nperiodic   ");
    for (int d = 0; d < h->ndim; d++) printf(" %s", h->periodic[d] ? "T" : "F");
    printf("\nstaggered   %s", h->staggered ? "T" : "F");
  }
  printf("\nparams     ");
  for (int i = 0; i < h->n_params; i++) printf(" %s=%.17g", h->param_names[i], h->params[i]);
  printf("\nleaves      %d, parents %d, levmax %d\nlevels     ", h->nleafs, h->nparents, h->levmax);
  for (int L = 1; L <= h->levmax; L++) {
    int c = 0;
    for (int i = 0; i < h->nleafs; i++) c += s.leaves[i].id.level == L;
    printf(" %d:%d", L, c);
  }
  printf("\n");
  double *lo = ce_malloc_array((size_t)h->nw, sizeof *lo, "ranges");
  double *hi = ce_malloc_array((size_t)h->nw, sizeof *hi, "ranges");
  if (!lo || !hi || var_ranges(&s, lo, hi) < 0) {
    free(lo);
    free(hi);
    amrvac_free(&s);
    free(pos);
    return cli_fail("inspect");
  }
  printf("variables (code units):\n");
  for (int iw = 0; iw < h->nw; iw++)
    printf("  %-16s min %-24.17g max %.17g\n", h->w_names[iw], lo[iw], hi[iw]);
  free(lo);
  free(hi);
  char found[2048];
  int have = units_path != NULL;
  if (!have && units_find(path, found, sizeof found)) {
    units_path = found;
    have = 1;
  }
  int rc = 0, usable = 1;
  if (have) {
    /* a snapshot the CO path does not take (2-D, non-Cartesian, staggered,
     * stretched) is still inspected: its physical part is left out with the
     * reason, not an error (a bad sidecar is one) */
    units u;
    if (units_read(units_path, &u) < 0) {
      amrvac_free(&s);
      free(pos);
      return cli_fail("inspect");
    }
    if (model_check_usable(&s.h, &u, path) < 0) {
      printf("units       %s\nphysical    not shown: %s\n", units_path, ce_err_msg());
      usable = 0;
    }
  }
  amrvac_free(&s);
  if (have && usable) {
    printf("units       %s\n", units_path);
    ce_model *m;
    if (model_load(path, units_path, &m) < 0) {
      rc = cli_fail("inspect");
    } else {
      physical(m);
      resolution(m, (int)cube_n, cube_edge);
      model_free(m);
    }
  } else if (!have) {
    printf("units       none (no sidecar beside the snapshot; --units FILE gives one)\n");
  }
  free(pos);
  return rc;
}
