/* dataset_inspect.c - `coemu inspect DATASET`: a summary of a dataset
 * directory: the layout and labels from the manifest and the shards
 * (shard_reader.h; never dataset.h5's virtual datasets, whose open costs
 * grow with the number of shards), channels, provenance and /stats from
 * dataset.h5. */
#include <hdf5.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "pipeline/dataset/dataset.h"
#include "pipeline/dataset/h5util.h"
#include "pipeline/dataset/shard_reader.h"
#include "stats/statsfile.h"

static int dims_of(hid_t f, const char *name, hsize_t *dims) {
  hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
  if (d < 0) return -1;
  hid_t s = H5Dget_space(d);
  int r = H5Sget_simple_extent_ndims(s);
  H5Sget_simple_extent_dims(s, dims, NULL);
  H5Sclose(s);
  H5Dclose(d);
  return r;
}

/* One line per statistics group (/stats, /stats_validation, ...): its split
 * and the mostly-empty targets `coemu stats` counted there. */
static void print_stats_groups(hid_t f) {
  static const char *const groups[] = {"stats", "stats_train", "stats_validation", "stats_test",
                                       "stats_all"};
  int any = 0;
  for (size_t k = 0; k < sizeof groups / sizeof *groups; k++) {
    if (H5Lexists(f, groups[k], H5P_DEFAULT) <= 0) continue;
    hid_t g = H5Gopen2(f, groups[k], H5P_DEFAULT);
    if (g < 0) continue;
    char split[32];
    int64_t used = 0, empty = 0;
    double level = 0, frac = 0;
    int has_split = stats_attr_str(g, "/stats", "split", split, sizeof split) == 0;
    if (!has_split) ce_err_clear(); /* a /stats of an older coemu: no split named */
    int has_used = h5_get_attr(g, "samples_used", H5T_NATIVE_INT64, &used) == 0;
    int counted = h5_get_attr(g, "empty_targets", H5T_NATIVE_INT64, &empty) == 0 &&
                  h5_get_attr(g, "empty_ln_level", H5T_NATIVE_DOUBLE, &level) == 0 &&
                  h5_get_attr(g, "empty_fraction", H5T_NATIVE_DOUBLE, &frac) == 0;
    H5Gclose(g);
    printf("%-9s /%s: split %s, %lld samples%s", any ? "" : "stats", groups[k],
           has_split ? split : "?", (long long)(has_used ? used : 0),
           strcmp(groups[k], "stats") ? "" : " (the normalisation serve and train use)");
    if (counted)
      printf("; %lld mostly empty (> %.0f%% of pixels below I = e^%.0f W m^-2 Hz^-1 sr^-1)\n",
             (long long)empty, 100 * frac, level);
    else
      printf("; mostly empty targets not counted (rerun coemu stats)\n");
    any = 1;
  }
  if (!any) printf("stats     none (coemu stats DIR computes them)\n");
}

#define AU_M 149597870700.0 /* the astronomical unit [m] */

/* /geometry and /solver (docs/dataset-format.md, "Geometry"): what remakes a
 * sample; the exact values are the groups' attributes, in SI units. */
static void print_geometry(hid_t f) {
  if (H5Lexists(f, "geometry", H5P_DEFAULT) <= 0) {
    printf("geometry  not recorded (a dataset made before format_minor 1)\n");
    return;
  }
  hid_t g = H5Gopen2(f, "geometry", H5P_DEFAULT);
  if (g < 0) return;
  char grid[64] = "", smp[64] = "", dsmp[32] = "", rec[32] = "";
  double edge = 0, dx = 0, r = 0, bn = 0, bT = 0;
  int64_t n = 0, k = 0, ver = 0, fill = 0, autoe = 0;
  uint64_t seed = 0;
  h5_get_str_attr(g, "gridding", grid, sizeof grid);
  h5_get_str_attr(g, "sampler", smp, sizeof smp);
  h5_get_str_attr(g, "direction_sampler", dsmp, sizeof dsmp);
  h5_get_str_attr(g, "reconstruction", rec, sizeof rec);
  h5_get_attr(g, "edge", H5T_NATIVE_DOUBLE, &edge);
  h5_get_attr(g, "dx", H5T_NATIVE_DOUBLE, &dx);
  h5_get_attr(g, "ball_radius", H5T_NATIVE_DOUBLE, &r);
  h5_get_attr(g, "background_n", H5T_NATIVE_DOUBLE, &bn);
  h5_get_attr(g, "background_T", H5T_NATIVE_DOUBLE, &bT);
  h5_get_attr(g, "n", H5T_NATIVE_INT64, &n);
  h5_get_attr(g, "k", H5T_NATIVE_INT64, &k);
  h5_get_attr(g, "sampler_version", H5T_NATIVE_INT64, &ver);
  h5_get_attr(g, "fill_background", H5T_NATIVE_INT64, &fill);
  h5_get_attr(g, "edge_auto", H5T_NATIVE_INT64, &autoe);
  h5_get_attr(g, "direction_seed", H5T_NATIVE_UINT64, &seed);
  H5Gclose(g);
  if (!strcmp(grid, "coemunet-compat"))
    printf("geometry  coemunet-compat gridding, %lld^3 (edge and dx per sample), ball radius %.6g m "
           "(%.4g au)\n", (long long)n, r, r / AU_M);
  else
    printf("geometry  %lld^3, edge %.6g m (%.4g au)%s, dx %.6g m, ball radius %.6g m (%.4g au), k %lld\n",
           (long long)n, edge, edge / AU_M, autoe ? ", auto" : "", dx, r, r / AU_M, (long long)k);
  printf("          sampler %s v%lld (%s), directions %s seed %llu", smp, (long long)ver, rec, dsmp,
         (unsigned long long)seed);
  if (fill) printf(", background n_CO %g m^-3, T %g K", bn, bT);
  printf("\n");
  if (H5Lexists(f, "solver", H5P_DEFAULT) <= 0) return;
  g = H5Gopen2(f, "solver", H5P_DEFAULT);
  if (g < 0) return;
  double mass = 0, vt = 0, bg = 0;
  int64_t tr = 0, ab = 0, ct = 0;
  h5_get_attr(g, "transition", H5T_NATIVE_INT64, &tr);
  h5_get_attr(g, "mass", H5T_NATIVE_DOUBLE, &mass);
  h5_get_attr(g, "vturb", H5T_NATIVE_DOUBLE, &vt);
  h5_get_attr(g, "background", H5T_NATIVE_DOUBLE, &bg);
  h5_get_attr(g, "abs", H5T_NATIVE_INT64, &ab);
  h5_get_attr(g, "corrected_taylor", H5T_NATIVE_INT64, &ct);
  H5Gclose(g);
  printf("solver    LAMDA transition %lld (file text in /solver/lamda), mass %g u, vturb %g m/s, "
         "background %g W m^-2 Hz^-1 sr^-1%s%s\n", (long long)tr, mass, vt, bg, ab ? ", |I|" : "",
         ct ? ", corrected Taylor" : "");
}

/* The labels from /models/split and the manifest, checked against each
 * shard's recorded CRC-32s (shard_reader_labels_planned): 1, or 0 when they
 * cannot be had that way (the shards are read then). */
static int planned_labels(hid_t f, const shard_reader *rd, int64_t models, uint8_t *split,
                          uint8_t *valid) {
  uint8_t *ms = malloc(models > 0 ? (size_t)models : 1);
  hid_t d = H5Dopen2(f, "models/split", H5P_DEFAULT);
  int ok = ms && d >= 0 && models > 0 &&
           H5Dread(d, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, ms) >= 0 &&
           shard_reader_labels_planned(rd, ms, models, split, valid) == 1;
  if (d >= 0) H5Dclose(d);
  free(ms);
  return ok;
}

int dataset_inspect(const char *dir) {
  CE_TRY(dataset_require_finished(dir, NULL));
  char path[4096];
  snprintf(path, sizeof path, "%s/dataset.h5", dir);
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
  if (f < 0) CE_FAIL("%s: not a readable HDF5 file (is %s a finished dataset?)", path, dir);
  hsize_t md[1] = {0}, fd[1] = {0};
  int rc = 0;
  if (dims_of(f, "models/id", md) != 1 || dims_of(f, "frequencies", fd) != 1) {
    H5Fclose(f);
    CE_FAIL("%s: missing /models/id or /frequencies", path);
  }
  shard_reader *rd;
  if (shard_reader_open(dir, 0, &rd) < 0) {
    H5Fclose(f);
    return -1;
  }
  int has_inputs = shard_reader_has_inputs(rd), images_only = shard_reader_images_only(rd);
  int64_t N = shard_reader_samples(rd);
  unsigned long long n = (unsigned long long)shard_reader_n(rd);
  unsigned long long nf = (unsigned long long)shard_reader_channels(rd);
  uint8_t *split = malloc(N ? (size_t)N : 1), *valid = malloc(N ? (size_t)N : 1);
  double *freq = malloc(fd[0] * sizeof *freq);
  hid_t dfq = H5Dopen2(f, "frequencies", H5P_DEFAULT);
  int has_split = 0, has_valid = 0;
  if (split) memset(split, 0, N ? (size_t)N : 1);
  if (valid) memset(valid, 1, N ? (size_t)N : 1);
  if (!split || !valid || !freq)
    rc = ce_err("out of memory");
  else if (planned_labels(f, rd, (int64_t)md[0], split, valid) == 1)
    ; /* as planned, every shard's CRC-32s agree: no shard opened */
  else if (shard_reader_labels(rd, 0, N, split, valid, &has_split, &has_valid) < 0)
    rc = -1;
  else if (!has_split || !has_valid)
    rc = ce_err("%s: no /split or /valid", path);
  if (rc == 0 && (dfq < 0 || H5Dread(dfq, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, freq) < 0))
    rc = ce_err("%s: cannot read /frequencies", path);
  shard_reader_close(rd);
  if (rc == 0) {
    int64_t count[3] = {0}, invalid = 0;
    for (int64_t i = 0; i < N; i++) {
      if (split[i] < 3) count[split[i]]++;
      invalid += !valid[i];
    }
    char ver[256], rev[256], name[256], prod[256];
    hid_t g = H5Gopen2(f, "provenance", H5P_DEFAULT);
    h5_get_str_attr(g, "coemu_version", ver, sizeof ver);
    h5_get_str_attr(g, "git_revision", rev, sizeof rev);
    h5_get_str_attr(g, "job_file", name, sizeof name);
    h5_get_str_attr(g, "producer", prod, sizeof prod);
    H5Gclose(g);
    printf("dataset   %s\n", dir);
    printf("samples   %lld (%lld models; train %lld, validation %lld, test %lld; %lld skipped)\n",
           (long long)N, (long long)md[0], (long long)count[0], (long long)count[1],
           (long long)count[2], (long long)invalid);
    if (has_inputs)
      printf("inputs    [%lld, 3, %llu, %llu, %llu] (v_z m/s, T K, n_CO m^-3)%s\n", (long long)N,
             n, n, n, images_only ? "; images-only: not stored, rebuilt by every reader from "
                                    "/models/file and /geometry, checked against /checksums" : "");
    else
      printf("inputs    not stored\n");
    printf("targets   [%lld, %llu, %llu, %llu] (I_nu W m^-2 Hz^-1 sr^-1)\n", (long long)N, nf,
           n, n);
    /* velocities to 1 m/s and frequencies to 1 kHz (a channel of 1 m/s is
       0.77 kHz at CO J=2-1): the full values are /velocities, /frequencies */
    double nu0 = 0, *vel = malloc(fd[0] * sizeof *vel);
    hid_t dvel = H5Dopen2(f, "velocities", H5P_DEFAULT);
    int have_v = vel && dvel >= 0 &&
                 H5Dread(dvel, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, vel) >= 0;
    if (dvel >= 0) H5Dclose(dvel);
    printf("channels  %llu", (unsigned long long)fd[0]);
    if (have_v) {
      printf(", velocity (km/s):");
      for (hsize_t k = 0; k < fd[0]; k++) printf(" %.3f", vel[k] * 1e-3);
      printf("\n         ");
    }
    printf(" frequency (GHz):");
    for (hsize_t k = 0; k < fd[0]; k++) printf(" %.6f", freq[k] * 1e-9);
    if (h5_get_attr(dfq, "nu0", H5T_NATIVE_DOUBLE, &nu0) == 0 && nu0 > 0)
      printf(" (line rest frequency %.6f GHz)", nu0 * 1e-9);
    free(vel);
    printf("\n");
    print_geometry(f);
    printf("job       %s\nmade by   coemu %s (git %s), producer %s\n", name, ver, rev, prod);
    print_stats_groups(f);
  }
  if (dfq >= 0) H5Dclose(dfq);
  free(split);
  free(valid);
  free(freq);
  H5Fclose(f);
  return rc;
}
