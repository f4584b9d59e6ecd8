/* input_rebuild.c - input cubes of an images-only dataset remade from the
 * models (input_rebuild.h). */
#include "pipeline/dataset/input_rebuild.h"

#include <hdf5.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/error.h"
#include "common/progress.h"
#include "pipeline/dataset/h5util.h"
#include "pipeline/dataset/shard.h"
#include "rotate/compat.h"
#include "rotate/directions.h"
#include "rotate/model.h"
#include "rotate/model_lru.h"
#include "rotate/sampler.h"

struct input_rebuild {
  char h5path[4200];
  int n, compat;
  int64_t directions, models;
  sampler_opts so;
  dir_sampler sampler;
  uint64_t seed;
  char **files;    /* [models] as recorded */
  char **paths;    /* [models] resolved */
  char units[4096];
  uint8_t *skipped; /* [models] */
  /* under mu (every caller's threads share them): */
  pthread_mutex_t mu;
  pthread_cond_t loaded; /* a load ended (well or not) */
  model_lru *lru;        /* models kept loaded across calls (pinned while used) */
  uint8_t *loading;      /* [models]: a thread is loading it outside the lock */
  int nloading;
  int64_t cubes, loads;
  double cpu_s, load_s;
};

static double thread_cpu(void) {
  struct timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int64_t input_rebuild_model_of(const input_rebuild *rb, int64_t idx) {
  return idx / rb->directions;
}

const char *input_rebuild_model_file(const input_rebuild *rb, int64_t model) {
  return model >= 0 && model < rb->models ? rb->paths[model] : "?";
}

void input_rebuild_counters(const input_rebuild *rb, int64_t *cubes, double *cpu_s,
                            double *load_s, int64_t *loads) {
  pthread_mutex_lock((pthread_mutex_t *)&rb->mu);
  if (cubes) *cubes = rb->cubes;
  if (cpu_s) *cpu_s = rb->cpu_s;
  if (load_s) *load_s = rb->load_s;
  if (loads) *loads = rb->loads;
  pthread_mutex_unlock((pthread_mutex_t *)&rb->mu);
}

int input_rebuild_set_model_cap(input_rebuild *rb, size_t cap) {
  model_lru *c = NULL;
  CE_TRY(model_lru_create(cap, &c));
  pthread_mutex_lock(&rb->mu);
  int busy = rb->nloading > 0;
  if (!busy) {
    model_lru_free(rb->lru); /* no call runs (the contract): nothing is pinned */
    rb->lru = c;
  }
  pthread_mutex_unlock(&rb->mu);
  if (busy) {
    model_lru_free(c);
    CE_FAIL("input_rebuild_set_model_cap while models are being loaded");
  }
  return 0;
}

void input_rebuild_lru_stats(const input_rebuild *rb, model_lru_stats *st) {
  pthread_mutex_lock((pthread_mutex_t *)&rb->mu);
  model_lru_get_stats(rb->lru, st);
  pthread_mutex_unlock((pthread_mutex_t *)&rb->mu);
}

void input_rebuild_close(input_rebuild *rb) {
  if (!rb) return;
  for (int64_t m = 0; m < rb->models; m++) {
    if (rb->files) free(rb->files[m]);
    if (rb->paths) free(rb->paths[m]);
  }
  free(rb->files);
  free(rb->paths);
  free(rb->loading);
  model_lru_free(rb->lru);
  free(rb->skipped);
  pthread_mutex_destroy(&rb->mu);
  pthread_cond_destroy(&rb->loaded);
  free(rb);
}

/* ---- the recipe in dataset.h5 ---- */

static int geo_f64(const input_rebuild *rb, hid_t g, const char *name, double *v) {
  if (h5_get_attr(g, name, H5T_NATIVE_DOUBLE, v) < 0)
    CE_FAIL("%s: /geometry has no attribute %s (needed to rebuild the input cubes of an "
            "images-only dataset)", rb->h5path, name);
  return 0;
}

static int geo_i64(const input_rebuild *rb, hid_t g, const char *name, int64_t *v) {
  if (h5_get_attr(g, name, H5T_NATIVE_INT64, v) < 0)
    CE_FAIL("%s: /geometry has no attribute %s (needed to rebuild the input cubes of an "
            "images-only dataset)", rb->h5path, name);
  return 0;
}

static int geo_str(const input_rebuild *rb, hid_t g, const char *name, char *buf, size_t len) {
  if (h5_get_str_attr(g, name, buf, len) < 0)
    CE_FAIL("%s: /geometry has no attribute %s (needed to rebuild the input cubes of an "
            "images-only dataset)", rb->h5path, name);
  return 0;
}

static int read_geometry(input_rebuild *rb, hid_t f) {
  hid_t g = H5Gopen2(f, "geometry", H5P_DEFAULT);
  if (g < 0)
    CE_FAIL("%s: no /geometry group: the input cubes of an images-only dataset cannot be "
            "rebuilt without it", rb->h5path);
  char grid[64] = "", recon[64] = "", samp[64] = "";
  int64_t n = 0, k = 0, fill = 0, version = 0;
  double edge = 0, ball = 0, bg_n = 0, bg_T = 0;
  int rc = geo_str(rb, g, "gridding", grid, sizeof grid) < 0 || geo_i64(rb, g, "n", &n) < 0 ||
                   geo_f64(rb, g, "edge", &edge) < 0 || geo_f64(rb, g, "ball_radius", &ball) < 0 ||
                   geo_i64(rb, g, "k", &k) < 0 ||
                   geo_str(rb, g, "reconstruction", recon, sizeof recon) < 0 ||
                   geo_i64(rb, g, "fill_background", &fill) < 0 ||
                   geo_f64(rb, g, "background_n", &bg_n) < 0 ||
                   geo_f64(rb, g, "background_T", &bg_T) < 0 ||
                   geo_str(rb, g, "direction_sampler", samp, sizeof samp) < 0 ||
                   geo_i64(rb, g, "sampler_version", &version) < 0
               ? -1
               : 0;
  if (rc == 0 && h5_get_attr(g, "direction_seed", H5T_NATIVE_UINT64, &rb->seed) < 0)
    rc = ce_err("%s: /geometry has no attribute direction_seed (needed to rebuild the input "
                "cubes of an images-only dataset)", rb->h5path);
  H5Gclose(g);
  if (rc < 0) return -1;
  if (n != rb->n)
    CE_FAIL("%s: /geometry n = %lld, the manifest says cubes of %d^3", rb->h5path, (long long)n,
            rb->n);
  if (dir_parse(samp, &rb->sampler) < 0)
    CE_FAIL("%s: /geometry direction_sampler '%s' is not one this coemu knows", rb->h5path, samp);
  rb->compat = !strcmp(grid, "coemunet-compat");
  if (!rb->compat && strcmp(grid, "sampler"))
    CE_FAIL("%s: /geometry gridding '%s': expected sampler or coemunet-compat", rb->h5path, grid);
  sampler_defaults(&rb->so);
  rb->so.ball_radius = ball;
  if (rb->compat) {
    if (rb->n != COMPAT_OUT || version != 1)
      CE_FAIL("%s: /geometry: coemunet-compat gridding of n = %d, version %lld: this coemu "
              "remakes n = %d, version 1", rb->h5path, rb->n, (long long)version, COMPAT_OUT);
    return 0;
  }
  int r = sampler_recon_parse(recon);
  if (r < 0)
    CE_FAIL("%s: /geometry reconstruction '%s': expected %s", rb->h5path, recon,
            SAMPLER_RECON_NAMES);
  if (version != sampler_recon_version(r))
    CE_FAIL("%s: /geometry sampler_version %lld: this coemu's sampler is version %d for "
            "reconstruction %s, whose cubes may differ in their bits, so the input cubes cannot "
            "be rebuilt (regenerate with this coemu, or store the inputs)",
            rb->h5path, (long long)version, sampler_recon_version(r), recon);
  if (!(edge > 0) || k < 1 || k > 64)
    CE_FAIL("%s: /geometry edge %g, k %lld: expected edge > 0 and 1 <= k <= 64", rb->h5path, edge,
            (long long)k);
  rb->so.n = rb->n;
  rb->so.edge = edge;
  rb->so.k = (int)k;
  rb->so.fill_background = fill != 0;
  rb->so.bg_n = bg_n;
  rb->so.bg_T = bg_T;
  rb->so.reconstruction = r;
  return 0;
}

/* A model file as recorded: absolute as it is; relative to the dataset
 * directory when there (synthetic models: models/...), else as it is
 * (relative to the current directory, as generate was given it). */
static char *resolve(const char *dir, const char *file) {
  char buf[8300];
  if (file[0] != '/' && (size_t)snprintf(buf, sizeof buf, "%s/%s", dir, file) < sizeof buf) {
    FILE *t = fopen(buf, "rb");
    if (t) {
      fclose(t);
      return strdup(buf);
    }
  }
  return strdup(file);
}

static int read_models(input_rebuild *rb, const char *dir, hid_t f) {
  hid_t d = H5Dopen2(f, "models/file", H5P_DEFAULT);
  if (d < 0)
    CE_FAIL("%s: no /models/file: the input cubes of an images-only dataset cannot be rebuilt "
            "without the model files", rb->h5path);
  hid_t sp = H5Dget_space(d);
  hsize_t dim = 0;
  int ok = H5Sget_simple_extent_ndims(sp) == 1 && H5Sget_simple_extent_dims(sp, &dim, NULL) == 1;
  H5Sclose(sp);
  int rc = 0;
  if (!ok || dim < 1) rc = ce_err("%s: /models/file: expected a vector of model files", rb->h5path);
  rb->models = rc == 0 ? (int64_t)dim : 0;
  if (rc == 0) {
    rb->files = ce_calloc_array((size_t)dim, sizeof *rb->files, "model files");
    rb->paths = ce_calloc_array((size_t)dim, sizeof *rb->paths, "model files");
    rb->loading = ce_calloc_array((size_t)dim, 1, "models");
    rb->skipped = ce_calloc_array((size_t)dim, 1, "skipped models");
    if (!rb->files || !rb->paths || !rb->loading || !rb->skipped) rc = -1;
  }
  if (rc == 0) {
    hid_t st = H5Tcopy(H5T_C_S1);
    H5Tset_size(st, H5T_VARIABLE);
    H5Tset_cset(st, H5T_CSET_UTF8);
    if (H5Dread(d, st, H5S_ALL, H5S_ALL, H5P_DEFAULT, rb->files) < 0)
      rc = ce_err("%s: /models/file cannot be read", rb->h5path);
    H5Tclose(st);
    for (int64_t m = 0; rc == 0 && m < rb->models; m++) {
      if (!rb->files[m] || !rb->files[m][0]) {
        rc = ce_err("%s: /models/file[%lld] is empty", rb->h5path, (long long)m);
        break;
      }
      /* HDF5 allocated the strings with malloc: they are freed with free */
      if (!(rb->paths[m] = resolve(dir, rb->files[m]))) rc = ce_err("out of memory");
    }
  }
  H5Dclose(d);
  if (rc < 0) return -1;
  hid_t g = H5Gopen2(f, "models", H5P_DEFAULT);
  if (g < 0 || h5_get_str_attr(g, "units_file", rb->units, sizeof rb->units) < 0) {
    if (g >= 0) H5Gclose(g);
    CE_FAIL("%s: /models has no units_file attribute (needed to rebuild the input cubes)",
            rb->h5path);
  }
  H5Gclose(g);
  return 0;
}

int input_rebuild_open(const char *dir, const char *h5path, int n, int64_t directions,
                       const int64_t *skipped, size_t nskipped, input_rebuild **out) {
  *out = NULL;
  input_rebuild *rb = calloc(1, sizeof *rb);
  if (!rb) CE_FAIL("out of memory");
  pthread_mutex_init(&rb->mu, NULL);
  pthread_cond_init(&rb->loaded, NULL);
  snprintf(rb->h5path, sizeof rb->h5path, "%s", h5path);
  rb->n = n;
  rb->directions = directions;
  int rc = 0;
  if (directions < 1)
    rc = ce_err("%s: images-only dataset: the manifest records no directions per model, so the "
                "model and direction of a sample are unknown", h5path);
  hid_t f = rc == 0 ? H5Fopen(h5path, H5F_ACC_RDONLY, H5P_DEFAULT) : -1;
  if (rc == 0 && f < 0) rc = ce_err_open(h5path, "as HDF5");
  if (rc == 0) rc = read_geometry(rb, f);
  if (rc == 0) rc = read_models(rb, dir, f);
  if (rc == 0) rc = model_lru_create(0, &rb->lru);
  if (f >= 0) H5Fclose(f);
  for (size_t i = 0; rc == 0 && i < nskipped; i++) {
    if (skipped[i] < 0 || skipped[i] >= rb->models) {
      rc = ce_err("%s: the manifest's skipped model %lld is not one of the %lld models", h5path,
                  (long long)skipped[i], (long long)rb->models);
      break;
    }
    rb->skipped[skipped[i]] = 1;
  }
  if (rc < 0) {
    input_rebuild_close(rb);
    return -1;
  }
  *out = rb;
  return 0;
}

/* ---- the cubes ---- */

/* Model m, pinned in the LRU (release_model when done): a hit, or loaded
 * and checked against the geometry (and prepared for the sampler) outside
 * the lock, so threads that need different models load them at once; a
 * thread that needs a model another one is loading waits for it. 0, or -1
 * with a message naming the model (number and file). */
static int acquire_model(input_rebuild *rb, int64_t m, ce_model **out) {
  const char *up = rb->units[0] ? rb->units : NULL;
  *out = NULL;
  pthread_mutex_lock(&rb->mu);
  for (;;) {
    int f = model_lru_find(rb->lru, rb->paths[m], up, out);
    if (f != 0 || !rb->loading[m]) {
      if (f == 0) break; /* nobody loads it: this thread does */
      pthread_mutex_unlock(&rb->mu);
      return f < 0 ? ce_err_prefix("rebuilding the input cubes of model %lld (%s)",
                                   (long long)m, rb->paths[m])
                   : 0;
    }
    pthread_cond_wait(&rb->loaded, &rb->mu);
  }
  rb->loading[m] = 1;
  rb->nloading++;
  model_lru_reserve(rb->lru, rb->nloading); /* room for the models being loaded */
  pthread_mutex_unlock(&rb->mu);
  double t0 = ce_now();
  ce_model *nm = NULL;
  int rc = model_load(rb->paths[m], up, &nm);
  /* what the reconstruction needs (corner values, slopes), made once per
   * load here, before other threads can see the model (counted as the load) */
  if (rc == 0 && !rb->compat && (sampler_check(nm, &rb->so) < 0 || sampler_prepare(nm, &rb->so) < 0))
    rc = -1;
  double dt = ce_now() - t0;
  pthread_mutex_lock(&rb->mu);
  rb->loading[m] = 0;
  rb->nloading--;
  if (rc == 0 && model_lru_insert(rb->lru, rb->paths[m], up, &nm) < 0) rc = -1;
  if (rc == 0) {
    rb->loads++;
    rb->load_s += dt;
  }
  pthread_cond_broadcast(&rb->loaded); /* waiters find it, or load it themselves */
  pthread_mutex_unlock(&rb->mu);
  if (rc < 0) {
    model_free(nm);
    return ce_err_prefix("rebuilding the input cubes of model %lld (%s)", (long long)m,
                         rb->paths[m]);
  }
  *out = nm;
  return 0;
}

static void release_model(input_rebuild *rb, ce_model *mp) {
  if (!mp) return;
  pthread_mutex_lock(&rb->mu);
  model_lru_release(rb->lru, mp);
  pthread_mutex_unlock(&rb->mu);
}

/* The positions of idx[0..count) ordered by model (stable), so the samples
 * of one model run back to back: a thread keeps its model pinned across
 * them and a model is loaded once per call while the cap holds a model per
 * thread. */
static void order_by_model(const input_rebuild *rb, const int64_t *idx, int count, int *pos) {
  for (int k = 0; k < count; k++) pos[k] = k;
  for (int k = 1; k < count; k++) { /* insertion sort: count is a chunk */
    int p = pos[k], j = k;
    int64_t mp = idx[p] / rb->directions;
    while (j > 0 && idx[pos[j - 1]] / rb->directions > mp) {
      pos[j] = pos[j - 1];
      j--;
    }
    pos[j] = p;
  }
}

int input_rebuild_cubes(input_rebuild *rb, const int64_t *idx, int count, int threads,
                        float *inputs, uint64_t *hash) {
  int64_t N = rb->models * rb->directions;
  for (int k = 0; k < count; k++)
    if (idx[k] < 0 || idx[k] >= N)
      CE_FAIL("%s: sample %lld: not one of the %lld x %lld samples /models and the manifest's "
              "directions describe", rb->h5path, (long long)idx[k], (long long)rb->models,
              (long long)rb->directions);
  if (count < 1) return 0;
  int *pos = ce_malloc_array((size_t)count, sizeof *pos, "sample order");
  if (!pos) return -1;
  order_by_model(rb, idx, count, pos);
  const size_t nvox = (size_t)rb->n * rb->n * rb->n, nin = 3 * nvox;
  int bad = count; /* the first sample (in idx order) that failed, and its message */
  char msg[2048] = "";
  double cpu = 0;
  int64_t made = 0;
  int nt = threads > 0 ? threads : omp_get_max_threads();
  if (nt > count) nt = count;
  /* every thread takes the next sample in model order (no barrier but the
   * call's end); an error on any thread is kept with its sample, the first
   * in idx order is the call's */
#pragma omp parallel num_threads(nt) if (nt > 1) reduction(+ : cpu, made)
  {
    int64_t cur = -1; /* the model this thread holds pinned */
    ce_model *held = NULL;
#pragma omp for schedule(dynamic, 1) nowait
    for (int j = 0; j < count; j++) {
      int k = pos[j];
      int64_t m = idx[k] / rb->directions, d = idx[k] % rb->directions;
      float *v = inputs + (size_t)k * nin, *T = v + nvox, *nco = v + 2 * nvox;
      int rc = 0;
      if (!rb->skipped[m] && m != cur) {
        release_model(rb, held);
        held = NULL, cur = -1;
        rc = acquire_model(rb, m, &held);
        if (rc == 0) cur = m;
      }
      double c0 = thread_cpu();
      if (rc == 0 && rb->skipped[m]) { /* generate stored zeros for a skipped model */
        memset(v, 0, nin * sizeof *v);
      } else if (rc == 0) {
        double q[4], dx, voxel;
        dir_quaternion(rb->sampler, rb->seed, (uint32_t)m, (uint32_t)d, q);
        rc = rb->compat ? compat_grid(held, q, rb->so.ball_radius, v, T, nco, &dx, &voxel)
                        : sample_cube(held, q, &rb->so, v, T, nco);
      }
      if (rc == 0) {
        hash[k] = shard_row_hash(v, nin);
        cpu += thread_cpu() - c0;
        made++;
      } else {
#pragma omp critical(input_rebuild_err)
        if (k < bad) {
          bad = k;
          snprintf(msg, sizeof msg, "%s", ce_err_msg());
        }
      }
    }
    release_model(rb, held);
  }
  free(pos);
  pthread_mutex_lock(&rb->mu);
  rb->cpu_s += cpu;
  rb->cubes += made;
  pthread_mutex_unlock(&rb->mu);
  if (bad < count) {
    int64_t m = idx[bad] / rb->directions;
    CE_FAIL("%s: sample %lld (model %lld, %s, direction %lld): rebuilding its input cube: %s",
            rb->h5path, (long long)idx[bad], (long long)m, rb->paths[m],
            (long long)(idx[bad] % rb->directions), msg);
  }
  return 0;
}
