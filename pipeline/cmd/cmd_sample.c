/* cmd_sample.c - `coemu sample MODEL.dat ...`: rotated, trimmed cubes of
 * (v_z, T, n_CO) for K directions, as .npy triples (OUT/dir_NNNN/v_z.npy,
 * T.npy, n.npy, with meta.txt holding dx and the quaternion) or one HDF5
 * file per direction (OUT/dir_NNNN.h5: datasets v_z, T, n; attributes
 * quaternion, dx), ready for `coemu solve`. docs/sampling.md has the
 * conventions. */
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/cli.h"
#include "common/error.h"
#include "common/fsutil.h"
#include "common/image.h"
#include "common/npy.h"
#include "pipeline/cmd/commands.h"
#include "rotate/compat.h"
#include "rotate/directions.h"
#include "rotate/model.h"
#include "rotate/sampler.h"

static const char *field_names[3] = {"v_z", "T", "n"};

static int write_npy_dir(const char *dir, float *const cube[3], int n, int f64, const double q[4],
                         double dx, const char *meta) {
  CE_TRY(fs_mkdir_p(dir));
  size_t N = (size_t)n * n * n, shape[3] = {(size_t)n, (size_t)n, (size_t)n};
  double *wide = f64 ? ce_malloc_array(N, sizeof *wide, "float64 cube") : NULL;
  if (f64 && !wide) return -1;
  char p[4096];
  for (int f = 0; f < 3; f++) {
    if (snprintf(p, sizeof p, "%s/%s.npy", dir, field_names[f]) >= (int)sizeof p) {
      free(wide);
      CE_FAIL("%s: output path too long", dir);
    }
    int rc;
    if (f64) {
      for (size_t i = 0; i < N; i++) wide[i] = cube[f][i];
      rc = npy_write(p, wide, NPY_F64, 3, shape);
    } else {
      rc = npy_write(p, cube[f], NPY_F32, 3, shape);
    }
    if (rc < 0) {
      free(wide);
      return -1;
    }
  }
  free(wide);
  if (snprintf(p, sizeof p, "%s/meta.txt", dir) >= (int)sizeof p)
    CE_FAIL("%s: output path too long", dir);
  char tmp[4200];
  FILE *fp;
  CE_TRY(fs_open_tmp(p, tmp, sizeof tmp, &fp));
  int ok = fprintf(fp, "dx %.17g\nquaternion %.17g %.17g %.17g %.17g\n%s", dx, q[0], q[1], q[2],
                   q[3], meta) > 0;
  return fs_commit_tmp(fp, tmp, p, ok);
}

static int write_h5(const char *path, float *const cube[3], int n, int f64, const double q[4],
                    double dx) {
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()); /* two runs never share it */
  hid_t file = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  if (file < 0) CE_FAIL("%s: cannot create the HDF5 file", tmp);
  hsize_t dims[3] = {(hsize_t)n, (hsize_t)n, (hsize_t)n}, four = 4, one = 1;
  int ok = 1;
  hid_t space = H5Screate_simple(3, dims, NULL);
  for (int f = 0; f < 3 && ok; f++) {
    hid_t ds = H5Dcreate2(file, field_names[f], f64 ? H5T_IEEE_F64LE : H5T_IEEE_F32LE, space,
                          H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    ok = ds >= 0 && H5Dwrite(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, cube[f]) >= 0;
    if (ds >= 0) H5Dclose(ds);
  }
  H5Sclose(space);
  hid_t s4 = H5Screate_simple(1, &four, NULL), s1 = H5Screate_simple(1, &one, NULL);
  hid_t a = H5Acreate2(file, "quaternion", H5T_IEEE_F64LE, s4, H5P_DEFAULT, H5P_DEFAULT);
  ok = ok && a >= 0 && H5Awrite(a, H5T_NATIVE_DOUBLE, q) >= 0;
  if (a >= 0) H5Aclose(a);
  a = H5Acreate2(file, "dx", H5T_IEEE_F64LE, s1, H5P_DEFAULT, H5P_DEFAULT);
  ok = ok && a >= 0 && H5Awrite(a, H5T_NATIVE_DOUBLE, &dx) >= 0;
  if (a >= 0) H5Aclose(a);
  H5Sclose(s4);
  H5Sclose(s1);
  if (H5Fclose(file) < 0) ok = 0;
  if (!ok) {
    remove(tmp);
    CE_FAIL("%s: writing the HDF5 file failed", path);
  }
  if (fs_rename_durable(tmp, path) < 0) {
    remove(tmp);
    return -1;
  }
  return 0;
}

/* Central x-y slices of n (log10), T and v_z, and the CO column (log10). */
static int write_preview(const char *path, float *const cube[3], int n, double h,
                         const char *title) {
  size_t nn = (size_t)n * n;
  double *p = ce_malloc_array(4 * nn, sizeof *p, "preview");
  if (!p) return -1;
  for (int x = 0; x < n; x++)
    for (int y = 0; y < n; y++) {
      size_t at = (size_t)x * n + y, c = ((size_t)x * n + y) * n + n / 2;
      p[at] = log10(fmax(cube[2][c], 1e-30));
      p[nn + at] = cube[1][c];
      p[2 * nn + at] = cube[0][c];
      double col = 0;
      for (int z = 0; z < n; z++) col += cube[2][((size_t)x * n + y) * n + z] * h;
      p[3 * nn + at] = log10(fmax(col, 1e-30));
    }
  ce_map2d maps[4];
  for (int i = 0; i < 4; i++) maps[i] = (ce_map2d){p + i * nn, n, n, n, 1};
  static const int groups[4] = {0, 1, 2, 3}; /* each panel its own range and bar */
  static const char *labels[4] = {"n_CO, z mid", "T, z mid", "v_z, z mid", "CO column"};
  static const char *bars[4] = {"log n_CO [m^-3]", "T [K]", "v_z [m/s]", "log N_CO [m^-2]"};
  ce_panel_style st = {.cmap = CE_CMAP_VIRIDIS, .title = title, .labels = labels, .colorbar = 1,
                       .groups = groups, .group_labels = bars};
  int rc = ce_write_panels_png(path, maps, 4, &st);
  free(p);
  return rc;
}

int cmd_sample(int argc, char **argv) {
  const char *units_path = NULL, *sampler_name = "haar", *out = NULL, *preview = NULL,
             *recon_name = NULL, *device = "cpu";
  int64_t ndir = 1, seed = 0, model_id = 0, n = 64, k = 2;
  double edge = 0, ball = 0, bg_n = 0, bg_T = 0;
  int compat = 0, f64 = 0, h5 = 0, fill = 0;
  cli_opt opts[] = {
      {"units", CLI_STR, &units_path, "FILE", "units sidecar (default: looked up beside MODEL)", 0, 0},
      {"directions", CLI_INT, &ndir, "K", "number of directions (default 1)", 0, 0},
      {"sampler", CLI_STR, &sampler_name, "NAME", "haar (default), faceon, lowdisc or coemunet", 0, 0},
      {"seed", CLI_INT64, &seed, "S", "job seed (default 0)", 0, 0},
      {"model-id", CLI_INT, &model_id, "I", "model id in the job (default 0)", 0, 0},
      {"n", CLI_INT, &n, "N", "voxels per cube edge (default 64)", 0, 0},
      {"edge", CLI_DOUBLE, &edge, "M",
       "cube edge [m] (default: the ball radius, as generate's sampling.edge: auto; a dataset's "
       "/geometry edge remakes its cubes)", 0, 0},
      {"ball", CLI_DOUBLE, &ball, "M",
       "ball radius [m] (default: this model's smallest half-extent, where generate takes the "
       "smallest over all the job's models: pass a dataset's /geometry ball_radius; --compat: "
       "the paper's R)", 0, 0},
      {"k", CLI_INT, &k, "K", "sub-samples per voxel edge (default 2)", 0, 0},
      {"reconstruction", CLI_STR, &recon_name, "NAME",
       "linear (default: ln n, ln T, v trilinear between cell corners), limited (cell values plus "
       "monotone slopes, cell averages kept) or constant (cell values)",
       0, 0},
      {"fill", CLI_FLAG, &fill, NULL, "fill what lies outside the ball with the background", 0, 0},
      {"bg-n", CLI_DOUBLE, &bg_n, "N", "background n_CO [m^-3] with --fill (default 0)", 0, 0},
      {"bg-T", CLI_DOUBLE, &bg_T, "K", "background T [K] with --fill (default 0)", 0, 0},
      {"compat", CLI_FLAG, &compat, NULL, "the COEmuNet paper's gridding (64^3, docs/sampling.md; not with --n, --k or --edge)", 0, 0},
      {"float64", CLI_FLAG, &f64, NULL, "write float64 cubes (default float32)", 0, 0},
      {"h5", CLI_FLAG, &h5, NULL, "one HDF5 file per direction instead of .npy files", 0, 0},
      {"preview", CLI_STR, &preview, "FILE.png", "central slices and CO column of direction 0", 0, 0},
      {"device", CLI_STR, &device, "cpu|cuda", "where the cubes are sampled (default cpu; cuda: the first GPU, same bits; not with --compat)", 0, 0},
      {"out", CLI_STR, &out, "DIR", "output directory", 1, 0},
      {0}};
  const cli_command spec = {
      "sample", "MODEL.dat --out DIR [options]",
      "Sample rotated, trimmed cubes of (v_z, T, n_CO) from an AMRVAC snapshot.", opts, 1, 1};
  int npos;
  char **pos;
  cli_status r = cli_run_parse(&spec, argc, argv, &npos, &pos);
  if (r != CLI_OK) return cli_exit(r);
  dir_sampler smp;
  if (dir_parse(sampler_name, &smp) < 0) {
    free(pos);
    return cli_usage_fail("sample", "%s", ce_err_msg());
  }
  int recon = recon_name ? sampler_recon_parse(recon_name) : SAMPLER_LINEAR;
  if (recon < 0 || (compat && recon_name && recon != SAMPLER_CONSTANT)) {
    free(pos);
    return cli_usage_fail("sample", "--reconstruction '%s': expected %s%s", recon_name,
                          SAMPLER_RECON_NAMES, compat ? " (constant with --compat)" : "");
  }
  const cli_range range[] = {{"--directions", ndir, 1, 1000000, NULL},
                             {"--n", n, 1, 4096, NULL},
                             {"--k", k, 1, 16, NULL},
                             {"--seed", seed, 0, CLI_NO_MAX, NULL},
                             {"--model-id", model_id, 0, UINT32_MAX, NULL}};
  int bad = cli_check_ranges("sample", range, sizeof range / sizeof range[0]);
  /* --compat's gridding is the paper's own: 64^3 over the trimming ball */
  if (!bad && compat && (cli_given(opts, &n) || cli_given(opts, &k) || cli_given(opts, &edge)))
    bad = cli_usage_fail("sample", "--n, --k and --edge do not go with --compat (its gridding is "
                                   "the paper's: %d^3 over the ball)", COMPAT_OUT);
  if (bad) {
    free(pos);
    return bad;
  }
  int on_device = !strcmp(device, "cuda");
  if (!on_device && strcmp(device, "cpu")) {
    free(pos);
    return cli_usage_fail("sample", "--device '%s', expected cpu or cuda", device);
  }
  if (on_device && compat) {
    free(pos);
    return cli_usage_fail("sample", "--device cuda samples the cubes of sampler.c, not --compat's gridding");
  }
  ce_model *m;
  const char *model_path = pos[0]; /* argv's string: outlives pos */
  if (model_load(pos[0], units_path, &m) < 0) {
    free(pos);
    return cli_fail("sample");
  }
  free(pos);
  int cn = compat ? COMPAT_OUT : (int)n;
  size_t N = (size_t)cn * cn * cn;
  float *cube[3];
  for (int f = 0; f < 3; f++) cube[f] = ce_malloc_array(N, sizeof(float), "cube");
  sampler_opts o;
  sampler_defaults(&o);
  o.n = (int)n;
  o.k = (int)k;
  o.reconstruction = recon;
  o.fill_background = fill;
  o.bg_n = bg_n;
  o.bg_T = bg_T;
  if (compat) {
    o.ball_radius = ball > 0 ? ball : COMPAT_PAPER_RADIUS;
  } else {
    o.ball_radius = ball > 0 ? ball : model_half_extent(m);
    o.edge = edge > 0 ? edge : o.ball_radius; /* generate's edge: auto (producer.c) */
  }
  int rc = cube[0] && cube[1] && cube[2] ? 0 : -1;
  sampler_device *dev = NULL;
  if (rc == 0 && on_device && sampler_device_open(m, recon, 0, &dev, NULL, 0) < 0) {
    ce_err_prefix("--device cuda");
    rc = -1;
  }
  if (rc == 0) rc = fs_mkdir_p(out);
  for (int64_t d = 0; d < ndir && rc == 0; d++) {
    double q[4], dx, voxel;
    dir_quaternion(smp, (uint64_t)seed, (uint32_t)model_id, (uint32_t)d, q);
    if (compat)
      rc = compat_grid(m, q, o.ball_radius, cube[0], cube[1], cube[2], &dx, &voxel);
    else {
      rc = dev ? sampler_device_sample(dev, 1, (const double(*)[4])q, &o, &cube[0], &cube[1], &cube[2])
               : sample_cube(m, q, &o, cube[0], cube[1], cube[2]);
      dx = voxel = o.edge / o.n;
    }
    if (rc < 0) break;
    char p[4096], meta[512];
    snprintf(meta, sizeof meta,
             "voxel %.17g\nsampler %s\nseed %lld\nmodel_id %lld\ndirection %lld\n%s%s%s",
             voxel, dir_name(smp), (long long)seed, (long long)model_id, (long long)d,
             compat ? "compat 1\n" : "reconstruction ", compat ? "" : sampler_recon_name(recon),
             compat ? "" : "\n");
    if (h5) {
      snprintf(p, sizeof p, "%s/dir_%04lld.h5", out, (long long)d);
      rc = write_h5(p, cube, cn, f64, q, dx);
    } else {
      snprintf(p, sizeof p, "%s/dir_%04lld", out, (long long)d);
      rc = write_npy_dir(p, cube, cn, f64, q, dx, meta);
    }
    if (rc == 0 && d == 0 && preview) {
      char title[4400];
      snprintf(title, sizeof title, "%s: direction 0 (%s, q = %.3f %.3f %.3f %.3f), voxel %.3g au",
               model_path, dir_name(smp), q[0], q[1], q[2], q[3], voxel / 149597870700.0);
      rc = write_preview(preview, cube, cn, voxel, title);
    }
  }
  for (int f = 0; f < 3; f++) free(cube[f]);
  sampler_device_close(dev);
  model_free(m);
  if (rc < 0) return cli_fail("sample");
  printf("coemu sample: %lld direction(s) of %d^3 written to %s\n", (long long)ndir, cn, out);
  return 0;
}
