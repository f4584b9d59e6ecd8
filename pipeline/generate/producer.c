/* producer.c - sampler + LTE solver as generate's sample producer. */
#include "pipeline/generate/producer.h"

#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/error.h"
#include "common/fsutil.h"
#include "pipeline/mpi/mpi_fatal.h"
#include "rotate/amrvac.h"
#include "rotate/compat.h"
#include "rotate/directions.h"
#include "rotate/model.h"
#include "rotate/sampler.h"
#include "rotate/synth.h"
#include "rotate/units.h"
#include "solver/lamda.h"
#include "solver/lte.h"

typedef struct {
  const job *j;
  lamda_molecule mol;
  lte_line line;
  lte_options opt;
  double *freqs;
  dir_sampler sampler;
  sampler_opts so;
  char **paths;      /* .dat of each model */
  const char *units; /* sidecar for AMRVAC inputs (NULL: look beside each file) */
  int64_t cached;    /* model held in `model` (-1: none) */
  ce_model *model;
  double *image;     /* n*n*nf, (x, y, f) */
} producer_ctx;

static void producer_close(void *vctx) {
  producer_ctx *c = vctx;
  if (!c) return;
  model_free(c->model);
  lte_line_free(&c->line);
  lamda_free(&c->mol);
  if (c->paths)
    for (int64_t i = 0; i < c->j->n_models; i++) free(c->paths[i]);
  free(c->paths);
  free(c->freqs);
  free(c->image);
  free(c);
}

static int load_model(producer_ctx *c, int64_t model) {
  if (c->cached == model) return 0;
  model_free(c->model);
  c->model = NULL;
  c->cached = -1;
  CE_TRY(model_load(c->paths[model], c->units, &c->model));
  c->cached = model;
  return 0;
}

static int produce(void *vctx, int64_t model, int64_t direction, float *inputs, float *targets,
                   double quat[4]) {
  producer_ctx *c = vctx;
  const job *j = c->j;
  const int n = j->n, nf = j->nf;
  const size_t nvox = (size_t)n * n * n;
  CE_TRY(load_model(c, model));
  dir_quaternion(c->sampler, j->seed, (uint32_t)model, (uint32_t)direction, quat);
  float *v = inputs, *T = inputs + nvox, *nco = inputs + 2 * nvox;
  lte_options opt = c->opt;
  if (j->coemunet_compat) {
    double dx, voxel;
    CE_TRY(compat_grid(c->model, quat, c->so.ball_radius, v, T, nco, &dx, &voxel));
    opt.dx = dx; /* the paper's dx: twice the voxel, reproduced on purpose */
  } else {
    CE_TRY(sample_cube(c->model, quat, &c->so, v, T, nco));
  }
  CE_TRY(lte_solve_cube_f32(&c->line, c->freqs, nf, n, n, n, v, T, nco, &opt, c->image));
  for (int x = 0; x < n; x++)
    for (int y = 0; y < n; y++)
      for (int f = 0; f < nf; f++)
        targets[((size_t)f * n + x) * n + y] = (float)c->image[((size_t)x * n + y) * nf + f];
  return 0;
}

/* Synthetic inputs: rank r writes models r, r+P, ... unless already there. */
static int write_synth_models(producer_ctx *c, const char *out_dir) {
  const job *j = c->j;
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  char dir[4096];
  snprintf(dir, sizeof dir, "%s/models", out_dir);
  int rc = rank == 0 ? fs_mkdir_p(dir) : 0, all;
  MPI_Allreduce(&rc, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (all < 0) {
    if (rank == 0) return -1;
    ce_err("%s: cannot create the models directory", dir);
    return MPI_AGREE_PEER;
  }
  synth_grid g = synth_grid_default();
  g.levels = j->synth_levels;
  rc = 0;
  for (int64_t i = 0; i < j->n_models; i++) {
    char path[4200], side[4300];
    if (synth_model_path(path, sizeof path, dir, i, ".dat") < 0 ||
        synth_model_path(side, sizeof side, dir, i, ".units.yaml") < 0) {
      rc = -1;
      break;
    }
    c->paths[i] = strdup(path);
    if (!c->paths[i]) rc = ce_err("out of memory");
    if (rc < 0 || i % size != rank) continue;
    struct stat st;
    if (stat(path, &st) == 0 && stat(side, &st) == 0) continue; /* from an earlier run */
    char made[4300];
    if (synth_write_model(dir, (uint64_t)j->synth_seed, i, &g, made, sizeof made) < 0)
      rc = ce_err_prefix("synthetic model %lld", (long long)i);
  }
  MPI_Allreduce(&rc, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (all < 0 && rc == 0) {
    ce_err("another rank failed to write its synthetic models");
    return MPI_AGREE_PEER;
  }
  return all < 0 ? -1 : 0;
}

/* The smallest half-extent over all models [m]; each rank reads the headers
 * of its share. */
static int ball_radius(producer_ctx *c, double *r) {
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  double mine = INFINITY;
  int rc = 0;
  for (int64_t i = rank; i < c->j->n_models && rc == 0; i += size) {
    amrvac_snapshot s;
    units u;
    char side[4096];
    const char *upath = c->units;
    if (!upath && units_find(c->paths[i], side, sizeof side) == 1) upath = side;
    if (!upath) {
      rc = ce_err("%s: no units sidecar (MODEL.units.yaml or units.yaml beside it, or "
                  "inputs.amrvac.units in the job)", c->paths[i]);
      break;
    }
    if (amrvac_open(c->paths[i], &s) < 0 || units_read(upath, &u) < 0) {
      amrvac_free(&s);
      rc = -1;
      break;
    }
    units_si si;
    units_scales(&u, &si);
    for (int d = 0; d < 3; d++) {
      double h = 0.5 * (s.h.xmax[d] - s.h.xmin[d]) * si.length;
      if (h < mine) mine = h;
    }
    amrvac_free(&s);
  }
  int all;
  MPI_Allreduce(&rc, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (all < 0) {
    if (rc < 0) return -1;
    ce_err("another rank could not read a model header");
    return MPI_AGREE_PEER;
  }
  MPI_Allreduce(&mine, r, 1, MPI_DOUBLE, MPI_MIN, MPI_COMM_WORLD);
  return 0;
}

int producer_open(const job *j, const char *out_dir, generate_producer *p) {
  producer_ctx *c = calloc(1, sizeof *c);
  if (!c) CE_FAIL("out of memory");
  c->j = j;
  c->cached = -1;
  if (j->coemunet_compat && j->n != COMPAT_OUT) {
    free(c);
    CE_FAIL("%s: sampling.coemunet_compat grids %d^3 cubes as the paper did, but sampling.n = %d",
            j->path, COMPAT_OUT, j->n);
  }
  int rc = job_lamda_read(j, &c->mol);
  if (rc == 0) rc = lte_line_init(&c->line, &c->mol, j->transition, j->mass);
  if (rc == 0 && dir_parse(j->sampler, &c->sampler) < 0) rc = -1;
  c->freqs = ce_malloc_array((size_t)j->nf, sizeof *c->freqs, "frequencies");
  c->image = ce_malloc_array((size_t)j->n * j->n * j->nf, sizeof *c->image, "image");
  c->paths = calloc((size_t)j->n_models, sizeof *c->paths);
  if (rc == 0 && (!c->freqs || !c->image || !c->paths)) rc = ce_err("out of memory");
  /* every rank meets here before the collectives below, so a failure on
   * one rank cannot leave the others waiting in them */
  int all = 0;
  MPI_Allreduce(&rc, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (all < 0) {
    producer_close(c);
    if (rc < 0) return -1;
    ce_err("another rank could not set up its producer");
    return MPI_AGREE_PEER;
  }
  job_frequencies(j, c->line.nu0, c->freqs);
  if (j->input == JOB_INPUT_SYNTH) {
    rc = write_synth_models(c, out_dir);
  } else {
    c->units = j->amrvac_units && j->amrvac_units[0] ? j->amrvac_units : NULL;
    for (int64_t i = 0; i < j->n_models && rc == 0; i++)
      if (!(c->paths[i] = strdup(j->model_names[i]))) rc = ce_err("out of memory");
  }
  sampler_defaults(&c->so);
  c->so.n = j->n;
  c->so.k = j->k;
  c->so.fill_background = j->fill_background;
  c->so.bg_n = j->background_n;
  c->so.bg_T = j->background_T;
  double r = 0;
  if (rc == 0) rc = ball_radius(c, &r);
  if (rc == 0) {
    if (j->coemunet_compat) {
      c->so.ball_radius = COMPAT_PAPER_RADIUS < r ? COMPAT_PAPER_RADIUS : r;
    } else {
      c->so.ball_radius = r;
      c->so.edge = j->edge > 0 ? j->edge : r; /* auto: edge = ball radius (the paper's choice) */
    }
  }
  c->opt.dx = c->so.edge / j->n;
  c->opt.vturb = j->vturb;
  c->opt.background = j->background;
  c->opt.take_abs = j->take_abs;
  c->opt.corrected_taylor = j->corrected_taylor;
  if (rc < 0) {
    producer_close(c);
    return rc;
  }
  p->sample = produce;
  p->ctx = c;
  p->nu0 = c->line.nu0;
  p->name = j->coemunet_compat ? "coemunet-compat gridding + LTE solver" : "sampler + LTE solver";
  p->close = producer_close;
  return 0;
}
