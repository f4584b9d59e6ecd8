/* input_rebuild.c - input cubes of an images-only dataset remade from the
 * models (input_rebuild.h). */
#include "pipeline/dataset/input_rebuild.h"

#include <hdf5.h>
#include <math.h>
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
  model_lru *lru;   /* models kept loaded across calls */
  ce_model **held;  /* [models]: the models of the current call (NULL: not asked) */
  int64_t *distinct; /* scratch: the models of a call */
  size_t distinct_cap;
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
  if (cubes) *cubes = rb->cubes;
  if (cpu_s) *cpu_s = rb->cpu_s;
  if (load_s) *load_s = rb->load_s;
  if (loads) *loads = rb->loads;
}

void input_rebuild_close(input_rebuild *rb) {
  if (!rb) return;
  for (int64_t m = 0; m < rb->models; m++) {
    if (rb->files) free(rb->files[m]);
    if (rb->paths) free(rb->paths[m]);
  }
  free(rb->files);
  free(rb->paths);
  free(rb->held);
  free(rb->distinct);
  model_lru_free(rb->lru);
  free(rb->skipped);
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
    rb->held = ce_calloc_array((size_t)dim, sizeof *rb->held, "models");
    rb->skipped = ce_calloc_array((size_t)dim, 1, "skipped models");
    if (!rb->files || !rb->paths || !rb->held || !rb->skipped) rc = -1;
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
  snprintf(rb->h5path, sizeof rb->h5path, "%s", h5path);
  rb->n = n;
  rb->directions = directions;
  int rc = 0;
  if (directions < 1)
    rc = ce_err("%s: images-only dataset: the manifest records no directions per model, so the "
                "model and direction of a sample are unknown", h5path);
  hid_t f = rc == 0 ? H5Fopen(h5path, H5F_ACC_RDONLY, H5P_DEFAULT) : -1;
  if (rc == 0 && f < 0) rc = ce_err("%s: cannot open as HDF5", h5path);
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

/* Model m from the LRU (loaded and checked against the geometry on a miss). */
static int get_model(input_rebuild *rb, int64_t m) {
  double t0 = ce_now();
  int loaded = 0;
  rb->held[m] = NULL;
  if (model_lru_get(rb->lru, rb->paths[m], rb->units[0] ? rb->units : NULL, &rb->held[m],
                    &loaded) < 0)
    return ce_err_prefix("rebuilding the input cubes of model %lld (%s)", (long long)m,
                         rb->paths[m]);
  if (loaded) {
    rb->loads++;
    /* what the reconstruction needs (corner values, slopes), made once per
     * load here rather than inside the first cube's sampling (counted as
     * the load) */
    if (!rb->compat &&
        (sampler_check(rb->held[m], &rb->so) < 0 || sampler_prepare(rb->held[m], &rb->so) < 0))
      return ce_err_prefix("rebuilding the input cubes of model %lld (%s)", (long long)m,
                           rb->paths[m]);
    rb->load_s += ce_now() - t0;
  }
  return 0;
}

/* Cubes of the samples k of idx[0..count) whose model is `only` (-1: all),
 * every model they need in rb->held; in parallel over the samples. */
static int make_cubes(input_rebuild *rb, const int64_t *idx, int count, int64_t only,
                      float *inputs, uint64_t *hash) {
  const size_t nvox = (size_t)rb->n * rb->n * rb->n, nin = 3 * nvox;
  int bad = count; /* the first sample that failed, and its message */
  char msg[2048] = "";
  double cpu = 0;
  int64_t made = 0;
#pragma omp parallel for schedule(dynamic, 1) reduction(+ : cpu, made)
  for (int k = 0; k < count; k++) {
    int64_t m = idx[k] / rb->directions, d = idx[k] % rb->directions;
    if (only >= 0 && m != only) continue;
    double c0 = thread_cpu();
    float *v = inputs + (size_t)k * nin, *T = v + nvox, *nco = v + 2 * nvox;
    int rc = 0;
    if (rb->skipped[m]) { /* generate stored zeros for a skipped model */
      memset(v, 0, nin * sizeof *v);
    } else {
      double q[4], dx, voxel;
      dir_quaternion(rb->sampler, rb->seed, (uint32_t)m, (uint32_t)d, q);
      rc = rb->compat ? compat_grid(rb->held[m], q, rb->so.ball_radius, v, T, nco, &dx, &voxel)
                      : sample_cube(rb->held[m], q, &rb->so, v, T, nco);
    }
    if (rc == 0) hash[k] = shard_row_hash(v, nin);
    cpu += thread_cpu() - c0;
    made++;
    if (rc < 0) {
#pragma omp critical(input_rebuild_err)
      if (k < bad) {
        bad = k;
        snprintf(msg, sizeof msg, "%s", ce_err_msg());
      }
    }
  }
  rb->cpu_s += cpu;
  rb->cubes += made;
  if (bad < count) {
    int64_t m = idx[bad] / rb->directions;
    CE_FAIL("%s: sample %lld (model %lld, %s, direction %lld): rebuilding its input cube: %s",
            rb->h5path, (long long)idx[bad], (long long)m, rb->paths[m],
            (long long)(idx[bad] % rb->directions), msg);
  }
  return 0;
}

int input_rebuild_cubes(input_rebuild *rb, const int64_t *idx, int count, float *inputs,
                        uint64_t *hash) {
  int64_t N = rb->models * rb->directions;
  if ((size_t)count > rb->distinct_cap) {
    free(rb->distinct);
    rb->distinct = ce_malloc_array((size_t)count, sizeof *rb->distinct, "model list");
    rb->distinct_cap = rb->distinct ? (size_t)count : 0;
    if (!rb->distinct) return -1;
  }
  /* the distinct models of this call, in order of first use */
  size_t nd = 0;
  for (int k = 0; k < count; k++) {
    if (idx[k] < 0 || idx[k] >= N)
      CE_FAIL("%s: sample %lld: not one of the %lld x %lld samples /models and the manifest's "
              "directions describe", rb->h5path, (long long)idx[k], (long long)rb->models,
              (long long)rb->directions);
    int64_t m = idx[k] / rb->directions;
    if (rb->skipped[m]) continue;
    size_t i = 0;
    while (i < nd && rb->distinct[i] != m) i++;
    if (i == nd) rb->distinct[nd++] = m;
  }
  /* all of them at once when they fit in the LRU together (no eviction
   * while they were fetched: every pointer is still valid), so the samples
   * of different models run in parallel; else one model at a time */
  model_lru_stats st0, st1;
  model_lru_get_stats(rb->lru, &st0);
  for (size_t i = 0; i < nd; i++) CE_TRY(get_model(rb, rb->distinct[i]));
  model_lru_get_stats(rb->lru, &st1);
  if (st1.evictions == st0.evictions) return make_cubes(rb, idx, count, -1, inputs, hash);
  for (size_t i = 0; i < nd; i++) {
    CE_TRY(get_model(rb, rb->distinct[i]));
    CE_TRY(make_cubes(rb, idx, count, rb->distinct[i], inputs, hash));
  }
  /* samples of skipped models (zeros: no model needed) */
  const size_t nin = 3 * (size_t)rb->n * rb->n * rb->n;
  for (int k = 0; k < count; k++)
    if (rb->skipped[idx[k] / rb->directions])
      CE_TRY(make_cubes(rb, idx + k, 1, -1, inputs + (size_t)k * nin, hash + k));
  return 0;
}
