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
#include "pipeline/mpi/mpi_node.h"
#include "common/progress.h"
#include "pipeline/generate/devpipe.h"
#include "rotate/amrvac.h"
#include "rotate/compat.h"
#include "rotate/directions.h"
#include "rotate/model.h"
#include "rotate/model_lru.h"
#include "rotate/model_lvg.h"
#include "rotate/sampler.h"
#include "rotate/synth.h"
#include "rotate/units.h"
#include "solver/lamda.h"
#include "solver/lte.h"
#include "solver/nlte.h"
#include "solver/nlte_lvg.h"

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
  ce_model *model;   /* owned by `models` */
  model_lru *models; /* recently used models (and their populations), within a byte cap */
  double *image;     /* n*n*nf, (x, y, f) */
  /* line.mode lvg and line.abundance (NULL / 0 when not used) */
  int lvg;
  nlte_model M;
  nlte_lvg_options lo;
  double x_co;       /* the current model's co_abundance */
  float *xl, *xu;    /* the current model's populations, per leaf cell (owned by `models`) */
  float *cl, *cu;    /* sampled into the cube, n^3 */
  float *nmol;       /* (X_mol / X_CO) n_CO, n^3 (line.abundance > 0) */
  int64_t failed;    /* a model whose populations failed (-1: none): its message, */
  char fail_msg[2048]; /* so that its other directions do not solve it again */
  /* solver.device cuda with a reconstruction the device samples: the
   * sample + solve pipeline (devpipe.h), batches of one model's directions
   * within the shard generate plans (NULL dpi: the per-sample path) */
  const devpipe_impl *dpi;
  devpipe *dp;
  const ce_model *dp_m;      /* the model dp holds */
  int ordinal, dp_batch;
  int dp_batch_in;           /* directions per batch that brings the input cubes back */
  int dp_with_inputs;        /* the batch made holds its input cubes (else their checksums) */
  int64_t dp_model, dp_first, dp_count; /* the batch made: directions [first, first + count) */
  int64_t plan_first, plan_end;         /* samples generate will ask for next */
  int64_t host_until;        /* samples before it: the per-sample path (a batch held a bad cell) */
  double (*dp_q)[4];
  /* rows in one block each, page-locked for a device (devpipe_host_alloc:
   * its chunks come back in one copy, straight there) */
  float *dp_tgbuf, **dp_tg;  /* [dp_batch] targets */
  float *dp_inbuf, **dp_in;  /* [dp_batch_in] inputs, made when a caller first wants them */
  int dp_tg_pinned, dp_in_pinned;
  uint64_t *dp_hash;         /* [dp_batch] the input rows' checksums (devpipe_row_hash) */
  float *in_scratch;         /* images-only on the per-sample path: the cube hashed, n^3 x 3 */
} producer_ctx;

int producer_lvg_populations(const ce_model *m, double x_co, double x_mol, const nlte_model *M,
                             const nlte_lvg_options *o, int line, float *x_l, float *x_u,
                             nlte_lvg_out *stats, double *t_inputs) {
  double t0 = ce_now();
  model_lvg_inputs in;
  CE_TRY(model_lvg_inputs_make(m, x_co, x_mol, &in));
  if (t_inputs) *t_inputs = ce_now() - t0;
  double *xl = malloc(sizeof(double) * (size_t)in.ncell), *xu = malloc(sizeof(double) * (size_t)in.ncell);
  if (!xl || !xu) {
    free(xl), free(xu);
    model_lvg_inputs_free(&in);
    CE_FAIL("out of memory for %lld populations", (long long)in.ncell);
  }
  nlte_lvg_cells C = {in.ncell, in.t_kin, in.n_h2, in.n_mol, in.grad_v, in.length, in.order, in.chunk};
  nlte_lvg_out out = {.line = line, .x_l = xl, .x_u = xu};
  int rc = nlte_lvg_solve(M, &C, o, &out);
  if (rc < 0 && out.bad_cell >= 0) {
    char name[256];
    model_cell_name(m, out.bad_cell, name, sizeof name);
    ce_err_prefix("%s", name);
  }
  for (int64_t c = 0; rc == 0 && c < in.ncell; c++) x_l[c] = (float)xl[c], x_u[c] = (float)xu[c];
  if (stats) *stats = out;
  free(xl), free(xu);
  model_lvg_inputs_free(&in);
  return rc;
}

static void producer_close(void *vctx) {
  producer_ctx *c = vctx;
  if (!c) return;
  devpipe_close(c->dp);
  devpipe_host_free(c->dp_tgbuf, c->dp_tg_pinned), devpipe_host_free(c->dp_inbuf, c->dp_in_pinned);
  free(c->dp_q), free(c->dp_tg), free(c->dp_in);
  free(c->dp_hash), free(c->in_scratch);
  model_lru_free(c->models);
  if (c->lvg) nlte_model_free(&c->M);
  free(c->cl), free(c->cu), free(c->nmol);
  lte_line_free(&c->line);
  lamda_free(&c->mol);
  if (c->paths)
    for (int64_t i = 0; i < c->j->n_models; i++) free(c->paths[i]);
  free(c->paths);
  free(c->freqs);
  free(c->image);
  free(c);
}

/* What a model carries besides its fields: its CO abundance and, with
 * line.mode lvg, its populations (kept with it in the model cache). */
typedef struct {
  double x_co;
  float *xl, *xu;
} model_extra;

static void model_extra_free(void *p) {
  model_extra *e = p;
  if (!e) return;
  free(e->xl), free(e->xu), free(e);
}

static size_t producer_cache_cap = 1; /* 1: only the model in use (generate goes model by model) */
void producer_set_model_cache(size_t bytes) { producer_cache_cap = bytes; }

void producer_model_counters(void *vctx, int64_t *loads, int64_t *hits, size_t *peak) {
  producer_ctx *c = vctx;
  model_lru_stats st;
  model_lru_get_stats(c->models, &st);
  *loads = st.loads, *hits = st.hits, *peak = st.peak;
}

static int load_model(producer_ctx *c, int64_t model) {
  if (c->cached == model) return 0;
  if (c->failed == model) return ce_err("%s", c->fail_msg);
  c->model = NULL;
  c->cached = -1;
  int loaded = 0;
  CE_TRY(model_lru_get(c->models, c->paths[model], c->units, &c->model, &loaded));
  model_extra *e = model_lru_payload(c->models, c->model);
  if (!loaded && e) {
    c->x_co = e->x_co, c->xl = e->xl, c->xu = e->xu;
    c->cached = model;
    return 0;
  }
  e = calloc(1, sizeof *e);
  if (!e) return ce_err("out of memory");
  if (c->lvg || c->j->abundance > 0) {
    char side[4096];
    const char *upath = c->units;
    units u;
    if (!upath && units_find(c->paths[model], side, sizeof side) == 1) upath = side;
    if (!upath || units_read(upath, &u) < 0) {
      free(e);
      return upath ? -1 : ce_err("%s: no units sidecar", c->paths[model]);
    }
    e->x_co = u.co_abundance;
  }
  size_t bytes = sizeof *e;
  if (c->lvg) {
    const ce_model *m = c->model;
    size_t N = (size_t)(m->nleaves * m->ncell);
    e->xl = ce_malloc_array(N, sizeof *e->xl, "populations");
    e->xu = ce_malloc_array(N, sizeof *e->xu, "populations");
    if (!e->xl || !e->xu) {
      model_extra_free(e);
      return -1;
    }
    bytes += 2 * N * sizeof(float);
    double x_mol = c->j->abundance > 0 ? c->j->abundance : e->x_co;
    if (producer_lvg_populations(m, e->x_co, x_mol, &c->M, &c->lo, c->j->transition, e->xl, e->xu,
                                 NULL, NULL) < 0) {
      model_extra_free(e);
      ce_err_prefix("line.mode lvg");
      c->failed = model;
      snprintf(c->fail_msg, sizeof c->fail_msg, "%s", ce_err_msg());
      return -1;
    }
  }
  if (model_lru_attach(c->models, c->model, e, bytes, model_extra_free) < 0) {
    model_extra_free(e);
    return -1;
  }
  c->x_co = e->x_co, c->xl = e->xl, c->xu = e->xu;
  c->cached = model;
  return 0;
}

static void producer_plan(void *vctx, int64_t first, int64_t count) {
  producer_ctx *c = vctx;
  c->plan_first = first, c->plan_end = first + count;
}

/* The input buffers of batches that bring the cubes back (sample(), and
 * images-only jobs never ask). */
static int pipeline_inputs_alloc(producer_ctx *c) {
  const size_t nin = 3 * (size_t)c->j->n * c->j->n * c->j->n;
  c->dp_inbuf = devpipe_host_alloc(c->dpi, c->ordinal, (size_t)c->dp_batch_in, nin * sizeof(float),
                                   "pipeline samples", &c->dp_in_pinned);
  c->dp_in = ce_malloc_array((size_t)c->dp_batch_in, sizeof *c->dp_in, "pipeline samples");
  if (!c->dp_inbuf || !c->dp_in) return -1;
  for (int i = 0; i < c->dp_batch_in; i++) c->dp_in[i] = c->dp_inbuf + (size_t)i * nin;
  return 0;
}

/* The device pipeline: sample (model, direction) from the batch made, or
 * make the batch that starts there (the directions of this model that the
 * plan asks for next). inputs != NULL: its input cubes there; else
 * *in_hash gets their checksum (the batch then brings back only that).
 * 1: make this sample on the per-sample path. */
static int produce_batched(producer_ctx *c, int64_t model, int64_t dir, float *inputs,
                           uint64_t *in_hash, float *targets, double quat[4]) {
  const job *j = c->j;
  const int64_t D = j->directions, s = model * D + dir;
  const size_t nin = 3 * (size_t)j->n * j->n * j->n, ntg = (size_t)j->nf * j->n * j->n;
  if (!(c->dp_model == model && dir >= c->dp_first && dir < c->dp_first + c->dp_count &&
        (!inputs || c->dp_with_inputs))) {
    if (s < c->host_until) return 1;
    if (inputs && !c->dp_in) CE_TRY(pipeline_inputs_alloc(c));
    CE_TRY(load_model(c, model));
    if (c->dp_m != c->model) { /* a model (re)loaded: upload it */
      devpipe_close(c->dp);
      c->dp = NULL, c->dp_m = NULL, c->dp_model = -1, c->dp_count = 0;
      devpipe_args a = {c->model, &c->so, &c->line, &c->opt, c->freqs, j->nf, c->dp_batch};
      CE_TRY(devpipe_open(c->dpi, &a, c->ordinal, &c->dp, NULL, 0));
      c->dp_m = c->model;
    }
    int64_t end = dir + 1;
    if (s >= c->plan_first && s < c->plan_end) {
      end = c->plan_end - model * D;
      if (end > D) end = D;
      const int cap = inputs ? c->dp_batch_in : c->dp_batch;
      if (end > dir + cap) end = dir + cap;
    }
    int nb = (int)(end - dir), done = 0;
    for (int i = 0; i < nb; i++)
      dir_quaternion(c->sampler, j->seed, (uint32_t)model, (uint32_t)(dir + i), c->dp_q[i]);
    c->dp_model = model, c->dp_first = dir, c->dp_count = 0;
    c->dp_with_inputs = inputs != NULL;
    int rc = devpipe_run(c->dp, nb, (const double (*)[4])c->dp_q, c->dp_tg,
                         inputs ? c->dp_in : NULL, c->dp_hash, &done);
    c->dp_count = done;
    if (rc == DEVPIPE_BAD_CELL) { /* the per-sample path names the cell */
      c->host_until = s + nb;
      if (done == 0) return 1;
    } else if (rc < 0) {
      return -1;
    }
  }
  const int64_t i = dir - c->dp_first;
  if (inputs)
    memcpy(inputs, c->dp_in[i], nin * sizeof *inputs);
  else
    *in_hash = c->dp_with_inputs ? devpipe_row_hash(c->dp_in[i], nin) : c->dp_hash[i];
  memcpy(targets, c->dp_tg[i], ntg * sizeof *targets);
  memcpy(quat, c->dp_q[i], sizeof c->dp_q[i]);
  return 0;
}

/* The per-sample path. */
static int produce_one(producer_ctx *c, int64_t model, int64_t direction, float *inputs,
                       float *targets, double quat[4]) {
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
  } else if (c->lvg) {
    CE_TRY(sample_cube_fields(c->model, quat, &c->so, v, T, nco, 2, (const float *const[]){c->xl, c->xu},
                              NULL, (float *const[]){c->cl, c->cu}));
  } else {
    CE_TRY(sample_cube(c->model, quat, &c->so, v, T, nco));
  }
  const float *dens = nco;
  if (j->abundance > 0 && j->abundance != c->x_co) { /* another molecule than the sidecar's CO */
    double ratio = j->abundance / c->x_co;
    for (size_t i = 0; i < nvox; i++) c->nmol[i] = (float)((double)nco[i] * ratio);
    dens = c->nmol;
  }
  if (c->lvg)
    CE_TRY(lte_solve_cube_pops_f32(&c->line, c->freqs, nf, n, n, n, v, T, dens, c->cl, c->cu, &opt,
                                   c->image));
  else
    CE_TRY(lte_solve_cube_f32(&c->line, c->freqs, nf, n, n, n, v, T, dens, &opt, c->image));
  devpipe_image_to_targets(c->image, n, nf, targets);
  return 0;
}

static int produce(void *vctx, int64_t model, int64_t direction, float *inputs, float *targets,
                   double quat[4]) {
  producer_ctx *c = vctx;
  if (c->dpi) {
    int rc = produce_batched(c, model, direction, inputs, NULL, targets, quat);
    if (rc <= 0) return rc;
  }
  return produce_one(c, model, direction, inputs, targets, quat);
}

/* generate_producer.sample_images (images-only jobs on the pipeline): the
 * batches bring back the rows' checksums, not the rows; a sample on the
 * per-sample path is made here and hashed by the same function. */
static int produce_images(void *vctx, int64_t model, int64_t direction, uint64_t *in_hash,
                          float *targets, double quat[4]) {
  producer_ctx *c = vctx;
  int rc = produce_batched(c, model, direction, NULL, in_hash, targets, quat);
  if (rc <= 0) return rc;
  const size_t nin = 3 * (size_t)c->j->n * c->j->n * c->j->n;
  if (!c->in_scratch && !(c->in_scratch = ce_malloc_array(nin, sizeof(float), "input cubes")))
    return -1;
  CE_TRY(produce_one(c, model, direction, c->in_scratch, targets, quat));
  *in_hash = devpipe_row_hash(c->in_scratch, nin);
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

/* line.mode lvg: the molecule's model, the solver options, the cubes; a
 * file without H2 rates, or a molecule other than CO without
 * line.abundance, is an error at line.lamda. */
static int lvg_open(producer_ctx *c) {
  const job *j = c->j;
  CE_TRY(job_check_line_mode(j, &c->mol));
  if (j->line_mode != JOB_LINE_LVG) return 0;
  CE_TRY(nlte_model_init(&c->M, &c->mol));
  c->lvg = 1;
  nlte_lvg_options_default(&c->lo);
  c->lo.ndir = j->lvg.directions;
  c->lo.escape = (nlte_lvg_escape)nlte_lvg_escape_parse(j->lvg.escape);
  c->lo.t_bg = j->lvg.t_bg;
  c->lo.tol = j->lvg.tol;
  c->lo.max_iter = j->lvg.max_iter;
  c->lo.vturb_kms = j->lvg.vturb * 1e-3;
  size_t n3 = (size_t)j->n * j->n * j->n;
  c->cl = ce_malloc_array(n3, sizeof *c->cl, "population cube");
  c->cu = ce_malloc_array(n3, sizeof *c->cu, "population cube");
  return c->cl && c->cu ? 0 : -1;
}

/* The device pipeline where it can make what the per-sample path makes:
 * a device solver, a reconstruction the device samples (asked, not
 * assumed), and the sampled n_CO imaged as it is (no LVG populations, no
 * line.abundance ratio, no COEmuNet gridding). With solver.device cpu the
 * environment's COEMU_PRODUCER_BATCHED=1 puts the pipeline's CPU
 * implementation there (the same bytes: test_generate_real checks the
 * batching, the plan and the cache on hosts without a device). */
static int pipeline_open(producer_ctx *c) {
  const job *j = c->j;
  c->dp_model = -1;
  const char *batched = getenv("COEMU_PRODUCER_BATCHED");
  int cpu_batched = batched && !strcmp(batched, "1");
  if ((j->solver_device == LTE_BACKEND_CPU && !cpu_batched) || j->coemunet_compat || c->lvg ||
      j->abundance > 0)
    return 0;
  c->dpi = devpipe_impl_for((lte_backend)j->solver_device, j->reconstruction);
  if (!c->dpi) return 0;
  const size_t ntg = (size_t)j->nf * j->n * j->n;
  /* images-only: batches of checksums, not cubes, so more directions each */
  c->dp_batch_in = devpipe_batch_size(j->n, j->nf, 1, (size_t)256 << 20);
  c->dp_batch = devpipe_batch_size(j->n, j->nf, j->store_inputs, (size_t)256 << 20);
  c->dp_q = ce_malloc_array((size_t)c->dp_batch, sizeof *c->dp_q, "pipeline directions");
  c->dp_tgbuf = devpipe_host_alloc(c->dpi, c->ordinal, (size_t)c->dp_batch, ntg * sizeof(float),
                                   "pipeline samples", &c->dp_tg_pinned);
  c->dp_tg = ce_malloc_array((size_t)c->dp_batch, sizeof *c->dp_tg, "pipeline samples");
  c->dp_hash = ce_malloc_array((size_t)c->dp_batch, sizeof *c->dp_hash, "pipeline checksums");
  if (!c->dp_q || !c->dp_tgbuf || !c->dp_tg || !c->dp_hash) return -1;
  for (int i = 0; i < c->dp_batch; i++) c->dp_tg[i] = c->dp_tgbuf + (size_t)i * ntg;
  return 0;
}

int producer_open(const job *j, const char *out_dir, generate_producer *p) {
  producer_ctx *c = calloc(1, sizeof *c);
  if (!c) CE_FAIL("out of memory");
  c->j = j;
  c->cached = -1;
  c->failed = -1;
  if (model_lru_create(producer_cache_cap, &c->models) < 0) {
    free(c);
    return -1;
  }
  if (j->coemunet_compat && j->n != COMPAT_OUT) {
    model_lru_free(c->models);
    free(c);
    CE_FAIL("%s: sampling.coemunet_compat grids %d^3 cubes as the paper did, but sampling.n = %d",
            j->path, COMPAT_OUT, j->n);
  }
  int rc = job_lamda_read(j, &c->mol);
  if (rc == 0) rc = lte_line_init(&c->line, &c->mol, j->transition, j->mass);
  if (rc == 0) rc = lvg_open(c);
  if (rc == 0 && j->abundance > 0)
    c->nmol = ce_malloc_array((size_t)j->n * j->n * j->n, sizeof *c->nmol, "density cube"), rc = c->nmol ? 0 : -1;
  if (rc == 0 && dir_parse(j->sampler, &c->sampler) < 0) rc = -1;
  c->freqs = ce_malloc_array((size_t)j->nf, sizeof *c->freqs, "frequencies");
  c->image = ce_malloc_array((size_t)j->n * j->n * j->nf, sizeof *c->image, "image");
  c->paths = calloc((size_t)j->n_models, sizeof *c->paths);
  if (rc == 0 && (!c->freqs || !c->image || !c->paths)) rc = ce_err("out of memory");
  /* solver.device: one device per rank, by the rank's place on its node;
   * the CPU solver's OpenMP threads: this rank's share of its CPUs (unless
   * OMP_NUM_THREADS says), so that ranks a launcher left unbound do not
   * each start a thread per core of the node */
  int local_rank;
  mpi_node_place(&local_rank, NULL);
  mpi_node_default_threads();
  c->ordinal = local_rank;
  if (rc == 0 && j->solver_device != LTE_BACKEND_CPU &&
      lte_backend_open((lte_backend)j->solver_device, local_rank, NULL, 0) < 0) {
    ce_err_prefix("%s: solver.device", j->path);
    rc = -1;
  }
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
  c->so.reconstruction = j->reconstruction;
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
  p->has_geometry = 1; /* what the job alone does not say, for /geometry */
  p->geometry = (dataset_geometry){j->coemunet_compat, c->so.ball_radius,
                                   j->coemunet_compat ? NAN : c->so.edge,
                                   j->coemunet_compat ? NAN : c->opt.dx};
  c->opt.vturb = j->vturb;
  c->opt.background = j->background;
  c->opt.take_abs = j->take_abs;
  c->opt.corrected_taylor = j->corrected_taylor;
  c->opt.backend = (lte_backend)j->solver_device;
  c->opt.precision = (lte_precision)j->solver_precision;
  if (rc == 0) rc = pipeline_open(c);
  if (rc < 0) {
    producer_close(c);
    return rc;
  }
  p->sample = produce;
  if (c->dpi && !j->store_inputs) p->sample_images = produce_images;
  p->ctx = c;
  p->nu0 = c->line.nu0;
  p->mass = c->line.mass_amu; /* solver.mass, or the LAMDA file's weight */
  p->name = j->coemunet_compat ? "coemunet-compat gridding + LTE solver"
            : c->lvg            ? "sampler + per-cell LVG populations + solver"
                                : "sampler + LTE solver";
  p->close = producer_close;
  p->plan = producer_plan;
  return 0;
}
