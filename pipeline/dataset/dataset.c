/* dataset.c - dataset directories: preparation, manifest, virtual datasets,
 * verification. */
#include "pipeline/dataset/dataset.h"

#include <errno.h>
#include <hdf5.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <yaml.h>
#include <zmq.h>

#include "common/buildinfo.h"
#include "common/error.h"
#include "common/fsutil.h"
#include "common/version.h"
#include "pipeline/dataset/h5util.h"
#include "pipeline/dataset/shard_reader.h"
#include "pipeline/job/yamltree.h"
#include "rotate/directions.h"
#include "rotate/sampler.h"
#include "rotate/synth.h"
#include "solver/lte_kernel.h" /* lte_precision */
#include "stats/statsfile.h"

void dataset_layout(const job *j, shard_layout *lay) {
  lay->n = j->n;
  lay->nf = j->nf;
  lay->store_inputs = j->store_inputs;
  lay->inputs_f64 = j->inputs_f64;
  lay->targets_f64 = j->targets_f64;
  lay->gzip = j->gzip;
  lay->job_fingerprint = j->fingerprint;
}

static int refuse_other_job(const char *dir, const job *j) {
  CE_FAIL("%s: holds the dataset of a different job (its job.yaml differs from %s, byte "
          "for byte: an edited comment counts); to resume that dataset, run its own job: "
          "`coemu generate %s/job.yaml --out %s`; for this job, use another --out",
          dir, j->path, dir, dir);
}

int dataset_dir_judge(const char *dir, const job *j) {
  char p[4200];
  snprintf(p, sizeof p, "%s/job.yaml", dir);
  if (access(p, F_OK) != 0) return DATASET_DIR_NEW;
  char *old = NULL;
  size_t len = 0;
  CE_TRY(fs_read_all(p, &old, &len));
  int same = len == j->text_len && !memcmp(old, j->text, len);
  free(old);
  if (same) return DATASET_DIR_SAME_JOB;
  char man[4200], h5[4200];
  snprintf(man, sizeof man, "%s/manifest.json", dir);
  snprintf(h5, sizeof h5, "%s/dataset.h5", dir);
  if (dataset_count_shards(dir, 1) <= 0 && access(man, F_OK) != 0 && access(h5, F_OK) != 0)
    return DATASET_DIR_FAILED_START;
  return refuse_other_job(dir, j);
}

int dataset_prepare(const char *dir, const job *j) {
  char p[4096];
  snprintf(p, sizeof p, "%s/shards", dir);
  CE_TRY(fs_mkdir_p(p));
  CE_TRY(fs_lock_dir(dir, "generate")); /* held until the process ends */
  /* Left by a killed run: its shards, its finishing steps (manifest.json,
   * dataset.h5, preview.png) and its synthetic models (each rank writes its
   * share of OUT/models under a temporary name, so several may be there).
   * Only this run's rank 0 holds the lock taken above and no rank of this
   * run has written anything yet (the producer opens after this), so no
   * temporary left now belongs to a live run. */
  CE_TRY(fs_remove_tmp(p));
  CE_TRY(fs_remove_tmp(dir));
  snprintf(p, sizeof p, "%s/models", dir);
  if (access(p, F_OK) == 0) CE_TRY(fs_remove_tmp(p));
  /* a failed start of another job was cleared by the caller
   * (take_over_failed_start), so here it is refused as any other job's */
  int k = dataset_dir_judge(dir, j);
  if (k < 0) return -1;
  if (k == DATASET_DIR_FAILED_START) return refuse_other_job(dir, j);
  if (k == DATASET_DIR_SAME_JOB) return 0;
  snprintf(p, sizeof p, "%s/job.yaml", dir);
  char tmp[4200];
  FILE *f;
  CE_TRY(fs_open_tmp(p, tmp, sizeof tmp, &f));
  int ok = fwrite(j->text, 1, j->text_len, f) == j->text_len;
  return fs_commit_tmp(f, tmp, p, ok);
}

/* Rank 0, a rerun of DIR's own job (dataset.h). */
int dataset_finished(const char *dir, const job *j) {
  shard_reader *r;
  uint32_t fp;
  int level = 0;
  if (shard_reader_open(dir, 1, &r) == 0) { /* every shard there, its size; dataset.h5 opens */
    /* made under this job's fingerprint (a coemu whose fingerprint of the
     * same job.yaml differs remakes the shards, as a resume would) */
    if (shard_reader_job_fingerprint(r, &fp) == 0 && fp == j->fingerprint &&
        shard_reader_samples(r) == job_samples(j) && shard_reader_n(r) == j->n &&
        shard_reader_channels(r) == j->nf)
      level = DATASET_FINISHED_SHARDS;
    shard_reader_close(r);
  }
  stats_norm norm;
  char h5[4200];
  snprintf(h5, sizeof h5, "%s/dataset.h5", dir);
  if (level && (!j->stats_compute || stats_file_read_norm(h5, &norm) == 0))
    level = DATASET_FINISHED_ALL;
  ce_err_clear();
  return level;
}

/* ---- dataset.h5 ---- */

static int write_array(hid_t loc, const char *name, hid_t ftype, hid_t mtype, int rank,
                       const hsize_t *dims, const void *buf) {
  hid_t d = h5_create(loc, name, ftype, rank, dims, NULL, 0);
  herr_t rc = d >= 0 ? H5Dwrite(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) : -1;
  if (d >= 0) H5Dclose(d);
  return rc < 0 ? -1 : 0;
}

static int put_f64(hid_t g, const char *name, double v) {
  return h5_put_attr(g, name, H5T_NATIVE_DOUBLE, &v);
}

static int put_i64(hid_t g, const char *name, int64_t v) {
  return h5_put_attr(g, name, H5T_NATIVE_INT64, &v);
}

/* /models/file: each model's AMRVAC file, the job's path (inputs.amrvac) or
 * relative to the dataset directory (synthetic models, written under
 * DIR/models; /models attributes synth_seed and synth_levels remake them
 * with coemu synth). */
static int write_model_files(hid_t g, const job *j) {
  char **files = ce_calloc_array((size_t)j->n_models, sizeof *files, "model files");
  if (!files) return -1;
  int rc = 0;
  for (int64_t m = 0; rc == 0 && m < j->n_models; m++) {
    char p[4096];
    if (j->input == JOB_INPUT_AMRVAC) snprintf(p, sizeof p, "%s", j->model_names[m]);
    else rc = synth_model_path(p, sizeof p, "models", m, ".dat");
    if (rc == 0 && !(files[m] = strdup(p))) rc = ce_err("out of memory");
  }
  hsize_t md[1] = {(hsize_t)j->n_models};
  hid_t st = H5Tcopy(H5T_C_S1);
  H5Tset_size(st, H5T_VARIABLE);
  H5Tset_cset(st, H5T_CSET_UTF8);
  if (rc == 0 && write_array(g, "file", st, st, 1, md, files) < 0) rc = ce_err("HDF5 error");
  /* the units sidecar the job names for every model ("": each model's own,
   * MODEL.units.yaml or units.yaml beside it), for readers that remake an
   * input cube (input_rebuild.h) */
  if (rc == 0 && h5_put_str_attr(g, "units_file",
                                 j->input == JOB_INPUT_AMRVAC && j->amrvac_units ? j->amrvac_units : "") < 0)
    rc = ce_err("HDF5 error (attributes)");
  if (rc == 0 && j->input == JOB_INPUT_SYNTH &&
      (put_i64(g, "synth_seed", j->synth_seed) < 0 || put_i64(g, "synth_levels", j->synth_levels) < 0))
    rc = ce_err("HDF5 error (attributes)");
  H5Tclose(st);
  for (int64_t m = 0; m < j->n_models; m++) free(files[m]);
  free(files);
  return rc;
}

/* /geometry: how the input cubes were made, with every size in SI units
 * (docs/dataset-format.md, "Geometry"). */
static int write_geometry(hid_t f, const job *j, const dataset_geometry *g) {
  hid_t gr = H5Gcreate2(f, "geometry", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  if (gr < 0) return -1;
  char key[96];
  snprintf(key, sizeof key, "Philox4x32-10 key = seed (64 bits), counter = (model_id, "
                            "direction_index, stream %u, draw)", (unsigned)DIR_STREAM);
  int rc = h5_put_str_attr(gr, "gridding", g->compat ? "coemunet-compat" : "sampler") < 0 ||
           put_i64(gr, "n", j->n) < 0 || put_f64(gr, "edge", g->edge) < 0 ||
           put_i64(gr, "edge_auto", j->edge > 0 ? 0 : 1) < 0 || put_f64(gr, "dx", g->dx) < 0 ||
           put_f64(gr, "ball_radius", g->ball_radius) < 0 ||
           put_i64(gr, "k", g->compat ? 0 : j->k) < 0 ||
           h5_put_str_attr(gr, "sampler", g->compat ? "rotate/compat_grid" : "rotate/sample_cube") < 0 ||
           put_i64(gr, "sampler_version", g->compat ? 1 : sampler_recon_version(j->reconstruction)) < 0 ||
           h5_put_str_attr(gr, "reconstruction",
                           g->compat ? "bin mean" : sampler_recon_name(j->reconstruction)) < 0 ||
           put_i64(gr, "fill_background", j->fill_background) < 0 ||
           put_f64(gr, "background_n", j->background_n) < 0 ||
           put_f64(gr, "background_T", j->background_T) < 0 ||
           h5_put_str_attr(gr, "centre", "the model's domain centre (bounding-box centre)") < 0 ||
           h5_put_str_attr(gr, "line_of_sight", "+z, cube index z = 0 nearest the observer; "
                                                "v_z > 0 away from the observer") < 0 ||
           h5_put_str_attr(gr, "direction_sampler", j->sampler) < 0 ||
           h5_put_attr(gr, "direction_seed", H5T_NATIVE_UINT64, &j->seed) < 0 ||
           h5_put_str_attr(gr, "direction_generator", key) < 0 ||
           put_i64(gr, "direction_stream", DIR_STREAM) < 0 ||
           h5_put_str_attr(gr, "units", "edge m, dx m, ball_radius m, background_n m^-3, background_T K") < 0 ||
           h5_put_str_attr(gr, "note", g->compat ? "coemunet-compat: the box spans each sample's rotated points, "
                                                   "so edge and dx (2 x the voxel, the paper's value) are per "
                                                   "sample (NaN here); remake a sample with coemu sample --compat"
                                                 : "dx = edge / n; remake a sample with coemu sample --edge "
                                                   "--ball --n --k --sampler --seed --model-id") < 0
               ? -1
               : 0;
  H5Gclose(gr);
  return rc;
}

/* /solver: the line and the imager's options (the LAMDA file's text is the
 * scalar string dataset /solver/lamda). */
static int write_solver(hid_t f, const job *j, double nu0, double mass) {
  char *text = NULL;
  size_t len = 0;
  int builtin = !strncmp(j->lamda, JOB_LAMDA_BUILTIN_PREFIX, strlen(JOB_LAMDA_BUILTIN_PREFIX));
  if (!builtin && fs_read_all(j->lamda, &text, &len) < 0) return -1;
  const char *lam = builtin ? job_lamda_co_text : text;
  hid_t gr = H5Gcreate2(f, "solver", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  int rc = gr < 0 ? -1 : 0;
  if (rc == 0) {
    hid_t st = H5Tcopy(H5T_C_S1);
    H5Tset_size(st, H5T_VARIABLE);
    H5Tset_cset(st, H5T_CSET_UTF8);
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t d = H5Dcreate2(gr, "lamda", st, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    rc = d < 0 || H5Dwrite(d, st, H5S_ALL, H5S_ALL, H5P_DEFAULT, &lam) < 0 ||
                 h5_put_str_attr(d, "file", j->lamda) < 0
             ? -1
             : 0;
    if (d >= 0) H5Dclose(d);
    H5Sclose(sp);
    H5Tclose(st);
  }
  if (rc == 0 &&
      (h5_put_str_attr(gr, "imager", j->solver_precision == LTE_PRECISION_F32
                                         ? "LTE, Pomme-equivalent (docs/physics.md), float32 path"
                                         : "LTE, Pomme-equivalent (docs/physics.md), float64") < 0 ||
       put_i64(gr, "transition", j->transition) < 0 || put_f64(gr, "nu0", nu0) < 0 ||
       put_f64(gr, "mass", mass) < 0 || put_f64(gr, "vturb", j->vturb) < 0 ||
       put_f64(gr, "background", j->background) < 0 || put_i64(gr, "abs", j->take_abs) < 0 ||
       put_i64(gr, "corrected_taylor", j->corrected_taylor) < 0 ||
       h5_put_str_attr(gr, "channels", j->channel_mode == JOB_CH_COEMUNET ? "coemunet"
                                       : j->channel_mode == JOB_CH_GRID   ? "grid"
                                                                          : "list") < 0 ||
       h5_put_str_attr(gr, "units", "nu0 Hz, mass u (atomic mass units), vturb m/s, "
                                    "background W m^-2 Hz^-1 sr^-1; dx is /geometry's") < 0))
    rc = -1;
  if (gr >= 0) H5Gclose(gr);
  free(text);
  return rc < 0 ? ce_err("HDF5 error") : 0;
}

/* A virtual dataset /name [N, rest...] over the shards' /name. */
static hid_t virtual_set(hid_t file, const char *name, hid_t ftype, int rank,
                         const hsize_t *rest, int64_t samples, int64_t per_shard,
                         int64_t nshards) {
  hsize_t dims[8] = {(hsize_t)samples};
  for (int k = 1; k < rank; k++) dims[k] = rest[k - 1];
  hid_t vspace = H5Screate_simple(rank, dims, NULL);
  hid_t dcpl = h5_dcpl(0, NULL, 0);
  for (int64_t s = 0; s < nshards; s++) {
    int64_t first, count;
    dataset_shard_range(s, samples, per_shard, &first, &count);
    hsize_t start[8] = {(hsize_t)first}, cnt[8] = {(hsize_t)count};
    for (int k = 1; k < rank; k++) cnt[k] = rest[k - 1];
    hid_t src = H5Screate_simple(rank, cnt, NULL);
    H5Sselect_hyperslab(vspace, H5S_SELECT_SET, start, NULL, cnt, NULL);
    char file_name[64];
    dataset_shard_name(s, file_name, sizeof file_name);
    H5Pset_virtual(dcpl, vspace, file_name, name, src);
    H5Sclose(src);
  }
  H5Sselect_all(vspace);
  hid_t d = H5Dcreate2(file, name, ftype, vspace, H5P_DEFAULT, dcpl, H5P_DEFAULT);
  H5Pclose(dcpl);
  H5Sclose(vspace);
  return d;
}

static int write_dataset_h5(const char *dir, const dataset_provenance *pv, const uint8_t *msplit,
                            int checksums) {
  const job *j = pv->job;
  char path[4096], tmp[4200];
  snprintf(path, sizeof path, "%s/dataset.h5", dir);
  snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  H5Pset_libver_bounds(fapl, H5F_LIBVER_V110, H5F_LIBVER_LATEST); /* VDS needs 1.10 */
  errno = 0;
  hid_t f = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
  H5Pclose(fapl);
  if (f < 0) CE_FAIL("%s: cannot create: %s", tmp, errno ? strerror(errno) : "HDF5 error");
  int64_t N = job_samples(j), S = j->samples_per_shard, K = dataset_shards(N, S);
  hsize_t n = (hsize_t)j->n, nf = (hsize_t)j->nf;
  int rc = 0;
  struct {
    const char *name;
    hid_t type;
    int rank;
    hsize_t rest[4];
    const char *units, *doc;
  } sets[] = {
      {"inputs", j->inputs_f64 ? H5T_IEEE_F64LE : H5T_IEEE_F32LE, 5, {3, n, n, n},
       "m/s, K, m^-3", "input cubes: channel 0 v_z (line of sight, > 0 away from the observer), 1 T, 2 n_CO; axes (sample, field, x, y, z)"},
      {"targets", j->targets_f64 ? H5T_IEEE_F64LE : H5T_IEEE_F32LE, 4, {nf, n, n},
       "W m^-2 Hz^-1 sr^-1", "specific intensity I_nu; axes (sample, channel, x, y)"},
      {"model_id", H5T_STD_I64LE, 1, {0}, "", "index into /models"},
      {"direction_index", H5T_STD_I64LE, 1, {0}, "", "direction number within the model"},
      {"direction", H5T_IEEE_F64LE, 2, {4}, "", "rotation quaternion (w, x, y, z) applied to the model"},
      {"split", H5T_STD_U8LE, 1, {0}, "", "0 train, 1 validation, 2 test"},
      {"valid", H5T_STD_U8LE, 1, {0}, "", "1: sample made; 0: model skipped, sample is zeros"},
      {"checksums", H5T_STD_U64LE, 2, {2}, "",
       "XXH64 (seed 0) of each sample's inputs row and targets row as little-endian float32 in C "
       "order (images-only: the inputs row a reader rebuilds); every reader checks them"},
  };
  for (size_t i = 0; rc == 0 && i < sizeof sets / sizeof sets[0]; i++) {
    if (i == 0 && !j->store_inputs) continue;
    if (!strcmp(sets[i].name, "checksums") && !checksums) continue; /* shards of format 1 */
    hid_t d = virtual_set(f, sets[i].name, sets[i].type, sets[i].rank, sets[i].rest, N, S, K);
    if (d < 0 || h5_put_str_attr(d, "units", sets[i].units) < 0 || h5_put_str_attr(d, "description", sets[i].doc) < 0)
      rc = ce_err("%s: cannot create the virtual dataset /%s", tmp, sets[i].name);
    if (d >= 0 && i == 0 && rc == 0) {
      if (h5_put_str_attr(d, "fields", "v_z, T, n_CO") < 0) rc = ce_err("%s: /inputs attributes", tmp);
    }
    if (d >= 0) H5Dclose(d);
  }
  hsize_t fd[1] = {nf};
  if (rc == 0 && (write_array(f, "frequencies", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 1, fd, pv->frequencies) < 0 ||
                  write_array(f, "velocities", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 1, fd, j->velocities) < 0))
    rc = ce_err("%s: cannot write /frequencies", tmp);
  if (rc == 0) {
    hid_t d = H5Dopen2(f, "frequencies", H5P_DEFAULT);
    if (d < 0 || h5_put_str_attr(d, "units", "Hz") < 0 ||
        h5_put_attr(d, "nu0", H5T_NATIVE_DOUBLE, &pv->nu0) < 0)
      rc = ce_err("%s: cannot write the attributes of /frequencies", tmp);
    if (d >= 0) H5Dclose(d);
    d = rc == 0 ? H5Dopen2(f, "velocities", H5P_DEFAULT) : -1;
    if (rc == 0 && (d < 0 || h5_put_str_attr(d, "units", "m/s") < 0))
      rc = ce_err("%s: cannot write the attributes of /velocities", tmp);
    if (d >= 0) H5Dclose(d);
  }
  /* /models: the catalogue */
  hid_t g = rc == 0 ? H5Gcreate2(f, "models", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT) : -1;
  if (rc == 0 && g < 0) rc = ce_err("%s: cannot create /models", tmp);
  if (rc == 0) {
    hsize_t md[1] = {(hsize_t)j->n_models};
    hid_t st = H5Tcopy(H5T_C_S1);
    H5Tset_size(st, H5T_VARIABLE);
    H5Tset_cset(st, H5T_CSET_UTF8);
    int64_t *ids = ce_malloc_array((size_t)j->n_models, sizeof *ids, "model ids");
    if (!ids) rc = -1;
    for (int64_t m = 0; ids && m < j->n_models; m++) ids[m] = m;
    if (rc == 0 && (write_array(g, "name", st, st, 1, md, j->model_names) < 0 ||
                    write_array(g, "id", H5T_STD_I64LE, H5T_NATIVE_INT64, 1, md, ids) < 0 ||
                    write_array(g, "split", H5T_STD_U8LE, H5T_NATIVE_UINT8, 1, md, msplit) < 0))
      rc = ce_err("%s: cannot write /models", tmp);
    free(ids);
    H5Tclose(st);
    if (rc == 0 && h5_put_str_attr(g, "source", j->input == JOB_INPUT_AMRVAC ? "amrvac" : "synth") < 0)
      rc = ce_err("%s: cannot write /models attributes", tmp);
    if (rc == 0 && write_model_files(g, j) < 0) rc = ce_err_prefix("%s: /models/file", tmp);
  }
  if (g >= 0) H5Gclose(g);
  /* /provenance */
  g = rc == 0 ? H5Gcreate2(f, "provenance", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT) : -1;
  if (rc == 0 && g < 0) rc = ce_err("%s: cannot create /provenance", tmp);
  if (rc == 0) {
    unsigned a, b, c;
    char h5v[64], zv[64], fp[16], build[1024];
    ce_build_line(build, sizeof build);
    H5get_libversion(&a, &b, &c);
    snprintf(h5v, sizeof h5v, "%u.%u.%u", a, b, c);
    int za, zb, zc;
    zmq_version(&za, &zb, &zc);
    snprintf(zv, sizeof zv, "%d.%d.%d", za, zb, zc);
    snprintf(fp, sizeof fp, "%08x", j->fingerprint);
    int compat = j->coemunet_compat;
    if (h5_put_str_attr(g, "job", j->text) < 0 || h5_put_str_attr(g, "job_file", j->path) < 0 ||
        h5_put_str_attr(g, "job_fingerprint", fp) < 0 || h5_put_str_attr(g, "coemu_version", COEMU_VERSION) < 0 ||
        h5_put_str_attr(g, "git_revision", COEMU_GIT_REVISION) < 0 ||
        h5_put_str_attr(g, "build", build) < 0 || h5_put_str_attr(g, "hdf5_version", h5v) < 0 ||
        h5_put_str_attr(g, "mpi_version", pv->mpi_version ? pv->mpi_version : "") < 0 ||
        h5_put_str_attr(g, "libyaml_version", yaml_get_version_string()) < 0 ||
        h5_put_str_attr(g, "zmq_version", zv) < 0 || h5_put_str_attr(g, "producer", pv->producer) < 0 ||
        h5_put_attr(g, "seed", H5T_NATIVE_UINT64, &j->seed) < 0 ||
        h5_put_attr(g, "split_seed", H5T_NATIVE_UINT64, &j->split_seed) < 0 ||
        h5_put_attr(g, "coemunet_compat", H5T_NATIVE_INT, &compat) < 0 ||
        h5_put_attr(g, "ranks", H5T_NATIVE_INT, &pv->ranks) < 0 ||
        h5_put_str_attr(g, "units", "inputs: v_z m/s, T K, n_CO m^-3; targets: I_nu W m^-2 Hz^-1 sr^-1; "
                             "frequencies Hz; velocities m/s; direction: unit quaternion (w, x, y, z)") < 0)
      rc = ce_err("%s: cannot write /provenance", tmp);
  }
  if (rc == 0) { /* the line mode and its parameters (docs/nlte.md, "Jobs") */
    char lm[512];
    job_line_describe(&j->lvg, j->line_mode, j->abundance, lm, sizeof lm);
    if (h5_put_str_attr(g, "line_mode", job_line_mode_name(j->line_mode)) < 0 ||
        h5_put_str_attr(g, "line_populations", lm) < 0)
      rc = ce_err("%s: cannot write /provenance line_mode", tmp);
  }
  if (g >= 0) H5Gclose(g);
  if (rc == 0 && put_i64(f, "format_minor", DATASET_FORMAT_MINOR) < 0)
    rc = ce_err("%s: cannot write the format_minor attribute", tmp);
  if (rc == 0 && put_i64(f, "samples_per_shard", j->samples_per_shard) < 0)
    rc = ce_err("%s: cannot write the samples_per_shard attribute", tmp);
  /* images-only (output.store_inputs false): readers remake /inputs from the
   * models (input_rebuild.h), checked against /checksums' inputs column */
  if (rc == 0 && h5_put_str_attr(f, "inputs", j->store_inputs ? "stored" : "rebuilt") < 0)
    rc = ce_err("%s: cannot write the inputs attribute", tmp);
  if (rc == 0 && pv->geometry && write_geometry(f, j, pv->geometry) < 0)
    rc = ce_err("%s: cannot write /geometry", tmp);
  if (rc == 0 && pv->geometry && write_solver(f, j, pv->nu0, pv->mass) < 0)
    rc = ce_err_prefix("%s: cannot write /solver", tmp);
  errno = 0;
  if (H5Fclose(f) < 0 && rc == 0) rc = ce_err("%s: cannot close: %s", tmp, errno ? strerror(errno) : "HDF5 error");
  if (rc == 0) rc = fs_rename_durable(tmp, path);
  if (rc < 0) unlink(tmp);
  return rc;
}

int dataset_sample_shard(hid_t f, const char *dir, int64_t sample, char *path, size_t len,
                         int64_t *row) {
  int64_t S = 0;
  if (H5Aexists(f, "samples_per_shard") <= 0) return 0;
  if (h5_get_attr(f, "samples_per_shard", H5T_NATIVE_INT64, &S) < 0 || S < 1)
    CE_FAIL("%s/dataset.h5: attribute samples_per_shard: expected an integer >= 1", dir);
  if (sample < 0) CE_FAIL("%s: sample %lld: expected >= 0", dir, (long long)sample);
  CE_TRY(dataset_shard_path(dir, sample / S, path, len));
  *row = sample % S;
  return 1;
}

/* ---- manifest.json ---- */

int dataset_finish(const char *dir, const dataset_provenance *pv, const shard_sums *known) {
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  const job *j = pv->job;
  int64_t N = job_samples(j), S = j->samples_per_shard, K = dataset_shards(N, S);
  shard_sums *sums = ce_calloc_array((size_t)K, sizeof *sums, "shard sums");
  uint8_t *skipped = ce_calloc_array((size_t)j->n_models, 1, "skipped models");
  uint8_t *msplit = ce_calloc_array((size_t)j->n_models, 1, "model splits");
  uint8_t *valid = ce_calloc_array((size_t)S, 1, "valid flags");
  int rc = (sums && skipped && msplit && valid) ? 0 : -1, all_sums = 1;
  if (rc == 0) rc = job_model_splits(j, msplit);
  char path[4096];
  for (int64_t s = 0; rc == 0 && s < K; s++) {
    int64_t first, count;
    dataset_shard_range(s, N, S, &first, &count);
    if (dataset_shard_path(dir, s, path, sizeof path) < 0) {
      rc = ce_err_prefix("shard %lld", (long long)s);
      break;
    }
    /* what the rank that made or kept the shard read, or the file */
    if (known && known[s].count > 0)
      sums[s] = known[s];
    else if (shard_read_sums(path, &sums[s]) < 0) {
      rc = ce_err_prefix("shard %lld", (long long)s);
      break;
    }
    all_sums &= sums[s].has_checksums;
    if (sums[s].first != first || sums[s].count != count) {
      rc = ce_err("%s: holds samples %lld+%lld, expected %lld+%lld", path, (long long)sums[s].first,
                  (long long)sums[s].count, (long long)first, (long long)count);
      break;
    }
    if (sums[s].invalid > 0) {
      if (shard_read_valid(path, count, valid) < 0) {
        rc = -1;
        break;
      }
      for (int64_t i = 0; i < count; i++)
        if (!valid[i]) skipped[(first + i) / j->directions] = 1;
    }
  }
  if (rc == 0) {
    char mpath[4096], tmp[4200];
    FILE *f;
    snprintf(mpath, sizeof mpath, "%s/manifest.json", dir);
    rc = fs_open_tmp(mpath, tmp, sizeof tmp, &f);
    if (rc == 0) {
      fprintf(f, "{\n  \"format\": \"coemu-dataset\",\n  \"format_version\": %d,\n"
                 "  \"format_minor\": %d,\n",
              all_sums ? 2 : 1, DATASET_FORMAT_MINOR);
      fprintf(f, "  \"job_fingerprint\": \"%08x\",\n  \"samples\": %lld,\n  \"models\": %lld,\n",
              j->fingerprint, (long long)N, (long long)j->n_models);
      fprintf(f, "  \"directions\": %lld,\n  \"n\": %d,\n  \"channels\": %d,\n",
              (long long)j->directions, j->n, j->nf);
      fprintf(f, "  \"store_inputs\": %s,\n  \"inputs\": \"%s\",\n  \"samples_per_shard\": %lld,\n",
              j->store_inputs ? "true" : "false", j->store_inputs ? "stored" : "rebuilt",
              (long long)S);
      if (pv->geometry) { /* dataset.h5 /geometry's sizes (docs/dataset-format.md) */
        const dataset_geometry *g = pv->geometry;
        char e[32] = "null", dx[32] = "null";
        if (!g->compat) snprintf(e, sizeof e, "%.17g", g->edge), snprintf(dx, sizeof dx, "%.17g", g->dx);
        fprintf(f, "  \"geometry\": {\"gridding\": \"%s\", \"n\": %d, \"edge_m\": %s, \"dx_m\": %s, "
                   "\"ball_radius_m\": %.17g, \"k\": %d, \"direction_sampler\": \"%s\", "
                   "\"direction_seed\": %llu},\n",
                g->compat ? "coemunet-compat" : "sampler", j->n, e, dx, g->ball_radius,
                g->compat ? 0 : j->k, j->sampler, (unsigned long long)j->seed);
      }
      if (j->line_mode != JOB_LINE_LTE) { /* lte manifests stay as they were */
        char lm[512];
        job_line_describe(&j->lvg, j->line_mode, j->abundance, lm, sizeof lm);
        fprintf(f, "  \"line_mode\": \"%s\",\n  \"line_populations\": \"%s\",\n",
                job_line_mode_name(j->line_mode), lm);
      }
      fprintf(f, "  \"checksum\": \"crc32\",\n%s  \"skipped_models\": [",
              all_sums ? "  \"sample_checksum\": \"xxh64\",\n" : "");
      int first_skip = 1;
      for (int64_t m = 0; m < j->n_models; m++)
        if (skipped[m]) {
          fprintf(f, "%s%lld", first_skip ? "" : ", ", (long long)m);
          first_skip = 0;
        }
      fprintf(f, "],\n  \"shards\": [\n");
      for (int64_t s = 0; s < K; s++) {
        char name[64];
        dataset_shard_name(s, name, sizeof name);
        fprintf(f, "    {\"file\": \"%s\", \"first\": %lld, \"count\": %lld, "
                   "\"bytes\": %lld, \"invalid\": %lld, \"crc32\": {",
                name, (long long)sums[s].first, (long long)sums[s].count, (long long)sums[s].bytes,
                (long long)sums[s].invalid);
        int firstset = 1;
        for (int k = 0; k < SHARD_NSETS; k++) {
          if (k == SHARD_INPUTS && !j->store_inputs) continue;
          if (k == SHARD_CHECKSUMS && !sums[s].has_checksums) continue;
          fprintf(f, "%s\"%s\": \"%08x\"", firstset ? "" : ", ", shard_set_names[k], sums[s].crc[k]);
          firstset = 0;
        }
        fprintf(f, "}");
        if (sums[s].has_layout) { /* 2.3: where readers find the rows without HDF5 */
          const int64_t *L = sums[s].layout;
          fprintf(f, ", \"layout\": [%lld, %lld, %lld, %lld, %lld, %lld, %lld]", (long long)L[0],
                  (long long)L[1], (long long)L[2], (long long)L[3], (long long)L[4],
                  (long long)L[5], (long long)L[6]);
        }
        fprintf(f, "}%s\n", s + 1 < K ? "," : "");
      }
      fprintf(f, "  ]\n}\n");
      rc = fs_commit_tmp(f, tmp, mpath, !ferror(f));
    }
  }
  if (rc == 0) rc = write_dataset_h5(dir, pv, msplit, all_sums);
  free(sums);
  free(skipped);
  free(msplit);
  free(valid);
  return rc;
}

/* ---- verification ---- */

static int num_of(const yt_node *m, const char *key, long long *out) {
  const yt_node *v = yt_get(m, key);
  if (!v || v->kind != YT_SCALAR) return -1;
  char *end;
  errno = 0;
  *out = strtoll(v->text, &end, 10);
  return (*end || errno || end == v->text) ? -1 : 0;
}

/* Images-only: read every sample through shard_reader, whose inputs are
 * rebuilt and checked (shard_reader.h); the first problem is reported. */
static int verify_rebuilt(const char *dir, FILE *report, int part, int parts) {
  shard_reader *rd;
  if (shard_reader_open(dir, 0, &rd) < 0) {
    fprintf(report, "%s: %s\n", dir, ce_err_msg());
    return -1;
  }
  const int64_t all = shard_reader_samples(rd), B = 64;
  const int64_t lo = all * part / parts, N = all * (part + 1) / parts;
  size_t nin = 3 * (size_t)shard_reader_n(rd) * shard_reader_n(rd) * shard_reader_n(rd),
         ntg = (size_t)shard_reader_channels(rd) * shard_reader_n(rd) * shard_reader_n(rd);
  float *in = ce_malloc_array((size_t)B, nin * sizeof *in, "rebuilt inputs"),
        *tg = ce_malloc_array((size_t)B, ntg * sizeof *tg, "targets");
  int rc = in && tg ? 0 : -1;
  for (int64_t i = lo; rc == 0 && i < N; i += B)
    rc = shard_reader_read(rd, i, i + B <= N ? B : N - i, in, tg);
  if (rc < 0) fprintf(report, "%s: %s\n", dir, ce_err_msg());
  free(in);
  free(tg);
  shard_reader_close(rd);
  return rc;
}

int dataset_verify(const char *dir, FILE *report) {
  return dataset_verify_part(dir, report, 0, 1, NULL, NULL);
}

/* The manifest of DIR, checked for the keys verify needs; NULL with a message. */
static yt_node *verify_manifest(const char *mpath, long long *samples, long long *n,
                                long long *nf) {
  char *text;
  size_t len;
  if (fs_read_all(mpath, &text, &len) < 0) return NULL;
  yt_node *m = yt_parse(mpath, text, len);
  free(text);
  if (!m) return NULL;
  const yt_node *shards = yt_get(m, "shards"), *fpn = yt_get(m, "job_fingerprint"),
                *si = yt_get(m, "store_inputs");
  if (num_of(m, "samples", samples) < 0 || num_of(m, "n", n) < 0 ||
      num_of(m, "channels", nf) < 0 || !shards || shards->kind != YT_SEQ || !fpn ||
      fpn->kind != YT_SCALAR || !si || si->kind != YT_SCALAR) {
    yt_free(m);
    ce_err("%s: not a coemu manifest (expected samples, n, channels, job_fingerprint, "
           "store_inputs, shards)", mpath);
    return NULL;
  }
  return m;
}

int dataset_verify_part(const char *dir, FILE *report, int part, int parts,
                        dataset_verify_agree_fn agree, void *ctx) {
  char mpath[4096];
  snprintf(mpath, sizeof mpath, "%s/manifest.json", dir);
  long long samples, n, nf;
  yt_node *m = dataset_require_finished(dir, NULL) < 0 ? NULL
                                                       : verify_manifest(mpath, &samples, &n, &nf);
  if (!m) {
    if (agree) agree(ctx, -1); /* every part calls it once, on every path */
    return -1;
  }
  const yt_node *shards = yt_get(m, "shards"), *fpn = yt_get(m, "job_fingerprint"),
                *si = yt_get(m, "store_inputs");
  shard_layout lay = {0};
  lay.n = (int)n;
  lay.nf = (int)nf;
  lay.store_inputs = !strcmp(si->text, "true");
  lay.job_fingerprint = (uint32_t)strtoul(fpn->text, NULL, 16);
  int problems = 0;
  long long expect_first = 0;
  for (size_t i = 0; i < shards->n; i++) {
    const yt_node *e = shards->items[i];
    const yt_node *file = yt_get(e, "file"), *crc = yt_get(e, "crc32");
    long long first, count, bytes;
    if (!file || file->kind != YT_SCALAR || !crc || crc->kind != YT_MAP ||
        num_of(e, "first", &first) < 0 || num_of(e, "count", &count) < 0 ||
        num_of(e, "bytes", &bytes) < 0) {
      if (part == 0) {
        fprintf(report, "%s:%d:%d: shards[%zu]: expected file, first, count, bytes, crc32\n",
                mpath, e->line, e->col, i);
        problems++;
      }
      continue;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, file->text);
    if (first != expect_first && part == 0) {
      fprintf(report, "%s: shard %s: starts at sample %lld, expected %lld (gap or overlap)\n", dir,
              file->text, first, expect_first);
      problems++;
    }
    expect_first = first + count;
    if ((long long)(i % (size_t)parts) != part) continue; /* another part's shard */
    long long size = fs_file_size(path);
    if (size < 0) {
      fprintf(report, "%s: shard %s: %s\n", dir, file->text, ce_err_msg());
      problems++;
      continue;
    }
    if (size != bytes) {
      fprintf(report, "%s: shard %s: %lld bytes, manifest says %lld\n", dir, file->text, size, bytes);
      problems++;
    }
    shard_sums s;
    if (shard_verify(path, &lay, &s) < 0) {
      fprintf(report, "%s: shard %s: %s\n", dir, file->text, ce_err_msg());
      problems++;
      continue;
    }
    if (s.first != first || s.count != count) {
      fprintf(report, "%s: shard %s: holds samples %lld+%lld, manifest says %lld+%lld\n", dir,
              file->text, (long long)s.first, (long long)s.count, first, count);
      problems++;
    }
    const yt_node *ml = yt_get(e, "layout"); /* 2.3: where readers read without HDF5 */
    if (ml) {
      int same = ml->kind == YT_SEQ && ml->n == SHARD_LAY_N && s.has_layout;
      char have[200] = "none";
      for (size_t k = 0; same && k < SHARD_LAY_N; k++)
        same = ml->items[k]->kind == YT_SCALAR &&
               strtoll(ml->items[k]->text, NULL, 10) == (long long)s.layout[k];
      if (s.has_layout)
        snprintf(have, sizeof have, "[%lld, %lld, %lld, %lld, %lld, %lld, %lld]",
                 (long long)s.layout[0], (long long)s.layout[1], (long long)s.layout[2],
                 (long long)s.layout[3], (long long)s.layout[4], (long long)s.layout[5],
                 (long long)s.layout[6]);
      if (!same) {
        fprintf(report, "%s: shard %s: its arrays lie at %s, the manifest's layout (line %d) "
                        "says otherwise: the file was rewritten (readers read it through HDF5)\n",
                dir, file->text, have, ml->line);
        problems++;
      }
    }
    for (int k = 0; k < SHARD_NSETS; k++) {
      if (k == SHARD_INPUTS && !lay.store_inputs) continue;
      const yt_node *c = yt_get(crc, shard_set_names[k]);
      if (k == SHARD_CHECKSUMS && !s.has_checksums && !c) continue; /* format 1 */
      if (!c || c->kind != YT_SCALAR || (uint32_t)strtoul(c->text, NULL, 16) != s.crc[k]) {
        fprintf(report, "%s: shard %s: /%s: checksum %08x, manifest says %s\n", dir, file->text,
                shard_set_names[k], s.crc[k], c && c->kind == YT_SCALAR ? c->text : "nothing");
        problems++;
      }
    }
  }
  if (expect_first != samples && part == 0) {
    fprintf(report, "%s: shards cover samples 0..%lld, the manifest says %lld samples\n", dir,
            expect_first, samples);
    problems++;
  }
  const yt_node *how = yt_get(m, "inputs");
  int images_only = !lay.store_inputs && how && how->kind == YT_SCALAR && !strcmp(how->text, "rebuilt");
  yt_free(m);
  /* images-only: every input cube rebuilt from its model and checked against
   * its recorded checksum (a sampling pass: the models must be there and be
   * the ones the dataset was made with) */
  const int total = agree ? agree(ctx, problems) : problems;
  if (images_only && total == 0 && verify_rebuilt(dir, report, part, parts) < 0) problems++;
  if (part != 0) return problems;
  char dpath[4096];
  snprintf(dpath, sizeof dpath, "%s/dataset.h5", dir);
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  hid_t f = H5Fopen(dpath, H5F_ACC_RDONLY, H5P_DEFAULT);
  hid_t d = f >= 0 ? H5Dopen2(f, "targets", H5P_DEFAULT) : -1;
  hsize_t dims[4] = {0};
  if (d >= 0) {
    hid_t sp = H5Dget_space(d);
    H5Sget_simple_extent_dims(sp, dims, NULL);
    H5Sclose(sp);
    H5Dclose(d);
  }
  if (f >= 0) H5Fclose(f);
  if (d < 0 || (long long)dims[0] != samples) {
    fprintf(report, "%s: dataset.h5: missing, unreadable or /targets does not hold %lld samples\n",
            dir, samples);
    problems++;
  }
  return problems;
}

int dataset_write_plan(const char *dir, const job *j, const uint8_t *model_split) {
  char path[4200], tmp[4400];
  snprintf(path, sizeof path, "%s/plan.json", dir);
  FILE *f;
  CE_TRY(fs_open_tmp(path, tmp, sizeof tmp, &f));
  int ok = fprintf(f,
                   "{\"samples\": %lld, \"samples_per_shard\": %lld, \"directions\": %lld, "
                   "\"n\": %d, \"channels\": %d, \"store_inputs\": %d, \"skip_bad_models\": %d,\n"
                   " \"model_split\": [",
                   (long long)job_samples(j), (long long)j->samples_per_shard,
                   (long long)j->directions, j->n, j->nf, j->store_inputs, j->skip_bad_models) > 0;
  for (int64_t m = 0; ok && m < j->n_models; m++)
    ok = fprintf(f, "%s%d", m ? ", " : "", model_split[m]) > 0;
  ok = ok && fprintf(f, "]}\n") > 0;
  return fs_commit_tmp(f, tmp, path, ok);
}
