/* cmd_solve.c - `coemu solve`: ray-trace one cube (v_z, T, n) with the exact
 * LTE line imager and write the image (npy or HDF5), a FITS cube and a PNG
 * of the channel maps. Input: three .npy files, an HDF5 file with datasets
 * v_z, T, n, or the built-in example (--example [N]). See docs/physics.md. */
#include <hdf5.h>
#include <fitsio.h>
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
#include "common/version.h"
#include "pipeline/cmd/commands.h"
#include "pipeline/dataset/export_fits.h"
#include "pipeline/job/job.h"
#include "pipeline/dataset/cube_file.h"
#include "pipeline/dataset/h5util.h"
#include "solver/cubes.h"
#include "solver/freqgrid.h"
#include "solver/lamda.h"
#include "solver/lte.h"

static int ends_with(const char *s, const char *suffix) {
  size_t a = strlen(s), b = strlen(suffix);
  return a >= b && !strcmp(s + a - b, suffix);
}

/* ---------------------------------------------------------------------- */
/* outputs */

typedef struct {
  const char *cmdline, *lamda, *channels, *input, *precision;
  int transition, upper, lower, take_abs, corrected;
  double dx, vturb, mass, background;
} provenance;

/* A scalar float64 attribute. */
static int put_num(hid_t loc, const char *name, double value) {
  return h5_put_attr(loc, name, H5T_NATIVE_DOUBLE, &value);
}

/* A scalar int64 attribute: counts, levels and flags, as dataset.h5's
 * /solver writes them (a reader compares the two files' attributes). */
static int put_int(hid_t loc, const char *name, long long value) {
  int64_t v = value;
  return h5_put_attr(loc, name, H5T_NATIVE_INT64, &v);
}

static int h5_dataset(hid_t f, const char *name, int rank, const hsize_t *dims, const double *data) {
  hid_t s = H5Screate_simple(rank, dims, NULL);
  hid_t d = H5Dcreate2(f, name, H5T_IEEE_F64LE, s, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  int ok = d >= 0 && H5Dwrite(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0;
  if (d >= 0) H5Dclose(d);
  H5Sclose(s);
  return ok ? 0 : -1;
}

static int write_h5(const char *path, const double *img, int nx, int ny, int nf,
                    const double *freqs, const provenance *p) {
  char tmp[4096];
  snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  hid_t f = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  if (f < 0) return ce_err("%s: cannot create HDF5 file", tmp);
  hsize_t di[3] = {(hsize_t)nx, (hsize_t)ny, (hsize_t)nf}, df[1] = {(hsize_t)nf};
  int bad = h5_dataset(f, "image", 3, di, img) < 0 || h5_dataset(f, "frequencies", 1, df, freqs) < 0;
  hid_t g = H5Gopen2(f, "/", H5P_DEFAULT);
  bad |= h5_put_str_attr(g, "coemu_version", COEMU_VERSION) < 0;
  bad |= h5_put_str_attr(g, "git_revision", COEMU_GIT_REVISION) < 0;
  bad |= h5_put_str_attr(g, "command_line", p->cmdline) < 0;
  bad |= h5_put_str_attr(g, "input", p->input) < 0;
  bad |= h5_put_str_attr(g, "lamda_file", p->lamda) < 0;
  bad |= h5_put_str_attr(g, "channels", p->channels) < 0;
  bad |= h5_put_str_attr(g, "image_axes", "x, y, frequency; I_nu [W m-2 Hz-1 sr-1]") < 0;
  bad |= put_int(g, "transition", p->transition) < 0;
  bad |= put_int(g, "upper_level", p->upper) < 0;
  bad |= put_int(g, "lower_level", p->lower) < 0;
  bad |= put_num(g, "dx_m", p->dx) < 0;
  bad |= put_num(g, "vturb_m_per_s", p->vturb) < 0;
  bad |= put_num(g, "mass_amu", p->mass) < 0;
  bad |= put_num(g, "background", p->background) < 0;
  bad |= put_int(g, "abs", p->take_abs) < 0;
  bad |= put_int(g, "corrected_taylor", p->corrected) < 0;
  bad |= h5_put_str_attr(g, "precision", p->precision) < 0;
  H5Gclose(g);
  bad |= H5Fclose(f) < 0;
  if (bad) {
    remove(tmp);
    return ce_err("%s: writing HDF5 failed", path);
  }
  return fs_rename_durable(tmp, path);
}

static int write_fits(const char *path, const double *img, int nx, int ny, int nf,
                      const double *freqs, double dx, const provenance *p, double nu0) {
  double step;
  if (!freqgrid_uniform(freqs, nf, &step))
    return ce_err("%s: FITS needs uniformly spaced channels for its FREQ axis; these are not "
                  "(use --out FILE.h5 for arbitrary lists)", path);
  if (nf == 1) step = 1.0; /* one plane: the spacing is nominal */
  /* FITS axis 1 varies fastest: data[f][y][x] */
  size_t npix = (size_t)nx * ny * nf;
  double *t = ce_malloc_array(npix, sizeof *t, "FITS cube");
  if (!t) return -1;
  char tmp[4096];
  void *vff;
  if (export_fits_open_tmp(path, tmp, sizeof tmp, &vff) < 0) return free(t), -1;
  fitsfile *ff = vff;
  int st = 0;
  long naxes[3] = {nx, ny, nf};
  fits_create_img(ff, DOUBLE_IMG, 3, naxes, &st);
  for (int x = 0; x < nx; x++)
    for (int y = 0; y < ny; y++)
      for (int f = 0; f < nf; f++) t[((size_t)f * ny + y) * nx + x] = img[((size_t)x * ny + y) * nf + f];
  double crpix_xy[2] = {(nx + 1) / 2.0, (ny + 1) / 2.0}, zero = 0, one = 1;
  fits_update_key(ff, TSTRING, "BUNIT", "W m-2 Hz-1 sr-1", "specific intensity I_nu", &st);
  fits_update_key(ff, TSTRING, "BTYPE", "Intensity", NULL, &st);
  const char *ax[2] = {"1", "2"};
  for (int i = 0; i < 2; i++) {
    char k[16];
    snprintf(k, sizeof k, "CTYPE%s", ax[i]);
    fits_update_key(ff, TSTRING, k, i == 0 ? "X" : "Y", "linear offset from the cube centre", &st);
    snprintf(k, sizeof k, "CUNIT%s", ax[i]);
    fits_update_key(ff, TSTRING, k, "m", NULL, &st);
    snprintf(k, sizeof k, "CRPIX%s", ax[i]);
    fits_update_key_dbl(ff, k, crpix_xy[i], -17, NULL, &st);
    snprintf(k, sizeof k, "CRVAL%s", ax[i]);
    fits_update_key_dbl(ff, k, zero, -17, NULL, &st);
    snprintf(k, sizeof k, "CDELT%s", ax[i]);
    fits_update_key_dbl(ff, k, dx, -17, "cell spacing [m]", &st);
  }
  fits_update_key(ff, TSTRING, "CTYPE3", "FREQ", NULL, &st);
  fits_update_key(ff, TSTRING, "CUNIT3", "Hz", NULL, &st);
  fits_update_key_dbl(ff, "CRPIX3", one, -17, NULL, &st);
  fits_update_key_dbl(ff, "CRVAL3", freqs[0], -17, NULL, &st);
  fits_update_key_dbl(ff, "CDELT3", step, -17, NULL, &st);
  fits_update_key(ff, TSTRING, "SPECSYS", "SOURCE", "frequencies in the source rest frame", &st);
  fits_update_key_dbl(ff, "RESTFRQ", nu0, -17, "rest frequency of the line [Hz]", &st);
  int tr = p->transition;
  fits_update_key(ff, TINT, "TRANSITN", &tr, "LAMDA transition number", &st);
  fits_update_key(ff, TSTRING, "ORIGIN", "coemu " COEMU_VERSION " (git " COEMU_GIT_REVISION ")", NULL, &st);
  fits_write_history(ff, "coemu solve: exact LTE line imager (Pomme-equivalent)", &st);
  fits_write_history(ff, p->cmdline, &st); /* cfitsio wraps long text */
  fits_write_img(ff, TDOUBLE, 1, (LONGLONG)npix, t, &st);
  free(t);
  return export_fits_close_commit(path, tmp, ff, st);
}

/* The channel maps on one log scale, each labelled with its radio velocity
 * v = c (1 - nu/nu0); the title names the input and the line. */
static int write_preview(const char *path, const double *img, int nx, int ny, int nf,
                         const double *freqs, double nu0, const char *title) {
  ce_map2d *maps = ce_malloc_array((size_t)nf, sizeof *maps, "preview panels");
  char (*lab)[32] = ce_malloc_array((size_t)nf, sizeof *lab, "preview labels");
  const char **labp = ce_malloc_array((size_t)nf, sizeof *labp, "preview labels");
  int rc = -1;
  if (maps && lab && labp) {
    for (int f = 0; f < nf; f++) {
      maps[f] = (ce_map2d){img + f, nx, ny, (ptrdiff_t)ny * nf, nf};
      snprintf(lab[f], sizeof lab[f], "%+.2f km/s", 299792.458 * (1 - freqs[f] / nu0));
      labp[f] = lab[f];
    }
    ce_panel_style st = {.cmap = CE_CMAP_INFERNO, .log_scale = 1, .shared_range = 1,
                         .columns = nf > 8 ? 8 : 0, .title = title, .labels = labp, .colorbar = 1,
                         .bar_label = "I_nu [W m^-2 Hz^-1 sr^-1] (log scale)"};
    rc = ce_write_panels_png(path, maps, nf, &st);
  }
  free(maps);
  free(lab);
  free(labp);
  return rc;
}

/* ---------------------------------------------------------------------- */

#define DEFAULT_EXAMPLE_N 64

int cmd_solve(int argc, char **argv) {
  /* --example takes an optional size: pull it out before cli_run_parse */
  int64_t example_n = 0;
  char **args = ce_malloc_array((size_t)argc + 1, sizeof *args, "arguments");
  if (!args) return cli_fail("solve");
  int nargs = 0, example = 0;
  for (int i = 0; i < argc; i++) {
    if (!strcmp(argv[i], "--example")) {
      example = 1;
      if (i + 1 < argc && cli_parse_int(argv[i + 1], &example_n) == 0) i++;
      continue;
    }
    if (!strncmp(argv[i], "--example=", 10)) {
      example = 1;
      if (cli_parse_int(argv[i] + 10, &example_n) < 0) {
        free(args);
        return cli_usage_fail("solve", "--example=%s: expected a cube size N", argv[i] + 10);
      }
      continue;
    }
    args[nargs++] = argv[i];
  }
  args[nargs] = NULL;

  const char *vz = NULL, *Tp = NULL, *np = NULL, *in = NULL, *lamda = NULL, *channels = "coemunet",
             *out = NULL, *fits = NULL, *preview = NULL, *device = "cpu",
             *precision = "float64";
  double dx = 0, vturb = 0, mass = 0, background = 0;
  int64_t transition = 0, upper = 0, lower = 0, threads = 0;
  int take_abs = 0, corrected = 0, dummy_example = 0;
  cli_opt opts[] = {
      {"vz", CLI_STR, &vz, "FILE", "v_z [m/s] as .npy (x, y, z), float32/float64, C order", 0, 0},
      {"T", CLI_STR, &Tp, "FILE", "kinetic temperature [K] as .npy", 0, 0},
      {"n", CLI_STR, &np, "FILE", "number density of the molecule [m^-3] as .npy", 0, 0},
      {"in", CLI_STR, &in, "FILE", "HDF5 file with datasets v_z, T, n (x, y, z) instead", 0, 0},
      {"example", CLI_FLAG, &dummy_example, "[N]",
       "built-in AGB wind with a spiral shell, N^3 cells (default 64)", 0, 0},
      {"dx", CLI_DOUBLE, &dx, "M", "cell spacing along z [m] (required for .npy files; --in: the file's attribute dx by default; example: 2*1.5e13/N)", 0, 0},
      {"lamda", CLI_STR, &lamda, "FILE", "LAMDA file, or builtin:co.dat (LAMDA's CO file, built in; default for --example: the co.dat named by $COEMU_LAMDA_CO or the build)", 0, 0},
      {"transition", CLI_INT, &transition, "K", "LAMDA transition number (default 2: CO J=2-1)", 0, 0},
      {"upper", CLI_INT, &upper, "U", "select the transition by its upper level ...", 0, 0},
      {"lower", CLI_INT, &lower, "L", "... and lower level (1-based, as in the file)", 0, 0},
      {"channels", CLI_STR, &channels, "SPEC", "coemunet | V0:DV:COUNT[:LO:HI] (m/s) | list:F1,F2,... (Hz)", 0, 0},
      {"vturb", CLI_DOUBLE, &vturb, "M/S", "turbulent velocity [m/s] (default 0, Pomme's; jobs: solver.vturb, default 150)", 0, 0},
      {"mass", CLI_DOUBLE, &mass, "U", "molecular mass [u] (default: the LAMDA file's weight)", 0, 0},
      {"background", CLI_DOUBLE, &background, "I", "background intensity [W m-2 Hz-1 sr-1] (default 0)", 0, 0},
      {"abs", CLI_FLAG, &take_abs, NULL, "write |I| (as COEmuNet did; jobs: solver.abs, default off)", 0, 0},
      {"corrected-taylor", CLI_FLAG, &corrected, NULL, "correct small-dtau expansion instead of Pomme's (jobs: solver.corrected_taylor, default on)", 0, 0},
      {"threads", CLI_INT, &threads, "N", "OpenMP threads (default: OMP_NUM_THREADS or all cores)", 0, 0},
      {"device", CLI_STR, &device, "cpu|cuda", "where the solver runs (default cpu; cuda: the first GPU, an error without one)", 0, 0},
      {"precision", CLI_STR, &precision, "P", "the solver's arithmetic: float64 (default, the reference) or float32 (within 1e-5 of it, docs/physics.md)", 0, 0},
      {"out", CLI_STR, &out, "FILE", "image (x, y, frequency) as .npy or .h5 (with frequencies and provenance)", 0, 0},
      {"fits", CLI_STR, &fits, "FILE", "also write a FITS cube (x, y, FREQ)", 0, 0},
      {"preview", CLI_STR, &preview, "FILE", "also write the channel maps as a PNG", 0, 0},
      {0}};
  const cli_command spec = {
      "solve", "(--vz F --T F --n F | --in F.h5 | --example [N]) (--out F | --fits F | --preview F)... [options]",
      "Ray-trace a cube (v_z, T, n) along z with the exact LTE line imager; at least one of\n"
      "--out, --fits and --preview says where the image goes. The defaults are Pomme's; a\n"
      "job's defaults differ (solver.vturb 150, solver.corrected_taylor true): to remake a\n"
      "dataset's image from its cube add --vturb 150 --corrected-taylor.", opts, 0, 0};
  cli_status r = cli_run_parse(&spec, nargs, args, NULL, NULL);
  if (r != CLI_OK) {
    free(args);
    return cli_exit(r);
  }
  /* the whole command line, for provenance */
  size_t cl_len = 16;
  for (int i = 0; i < argc; i++) cl_len += strlen(argv[i]) + 1;
  char *cmdline = malloc(cl_len);
  strcpy(cmdline, "coemu solve");
  for (int i = 0; i < argc; i++) strcat(strcat(cmdline, " "), argv[i]);

  int rc = 1;
  cube_file c = {0};
  lamda_molecule mol = {0};
  lte_line L = {0};
  double *freqs = NULL, *img = NULL;
  int nf = 0;
  char input_desc[4096];
  lte_backend backend = LTE_BACKEND_CPU;
  if (lte_backend_parse(device, &backend) < 0) {
    ce_err_prefix("--device");
    goto usage;
  }
  lte_precision prec = LTE_PRECISION_F64;
  if (lte_precision_parse(precision, &prec) < 0) {
    ce_err_prefix("--precision");
    goto usage;
  }
  int nsrc = example + (in != NULL) + (vz || Tp || np);
  if (nsrc != 1) {
    ce_err("give exactly one input: --vz/--T/--n, --in FILE.h5 or --example");
    goto usage;
  }
  if ((vz || Tp || np) && !(vz && Tp && np)) {
    ce_err("--vz, --T and --n go together (missing %s)", !vz ? "--vz" : !Tp ? "--T" : "--n");
    goto usage;
  }
  if (!out && !fits && !preview) {
    ce_err("nothing to write: give --out, --fits or --preview");
    goto usage;
  }
  if (out && !ends_with(out, ".npy") && !ends_with(out, ".h5") && !ends_with(out, ".hdf5")) {
    ce_err("--out %s: expected a name ending in .npy or .h5", out);
    goto usage;
  }
  /* Whether a line was chosen is what the parser saw, not the value: 0 is a
   * value a user can type (and must be refused as a transition or level),
   * so it cannot also mean "unset". */
  int by_transition = cli_given(opts, &transition), by_upper = cli_given(opts, &upper),
      by_lower = cli_given(opts, &lower), by_levels = by_upper || by_lower;
  if (by_levels && (!by_upper || !by_lower || by_transition)) {
    ce_err("--upper and --lower go together, instead of --transition");
    goto usage;
  }
  if (example) {
    if (example_n == 0) example_n = DEFAULT_EXAMPLE_N;
    if (example_n < 2 || example_n > 1024) {
      ce_err("--example %lld: expected a cube size 2..1024", (long long)example_n);
      goto usage;
    }
    int N = (int)example_n;
    size_t nc = (size_t)N * N * N;
    c.nx = c.ny = c.nz = N;
    c.v = ce_malloc_array(nc, sizeof(double), "example v_z");
    c.T = ce_malloc_array(nc, sizeof(double), "example T");
    c.n = ce_malloc_array(nc, sizeof(double), "example n");
    if (!c.v || !c.T || !c.n) goto fail;
    cubes_agb_spiral(N, CUBES_AGB_HALF_WIDTH, c.v, c.T, c.n);
    c.src[0] = c.src[1] = c.src[2] = "example";
    if (dx == 0) dx = 2 * CUBES_AGB_HALF_WIDTH / N;
    if (!lamda) lamda = lamda_default_co_path();
    snprintf(input_desc, sizeof input_desc, "example AGB spiral wind, %d^3", N);
  } else {
    if (!opts[5].seen && !in) {
      ce_err("--dx is required with .npy input files (cell spacing along z in metres)");
      goto usage;
    }
    if (!lamda) {
      ce_err("--lamda is required with input files");
      goto usage;
    }
    if (in) {
      if (cube_file_read_h5(in, &c) < 0) goto fail;
      if (!opts[5].seen) { /* the file's own spacing (coemu sample --h5 writes it) */
        if (isnan(c.dx)) {
          ce_err("--dx is required: %s has no attribute dx (cell spacing along z in metres)", in);
          goto usage;
        }
        dx = c.dx;
      }
      snprintf(input_desc, sizeof input_desc, "%s", in);
    } else {
      const char *paths[3] = {vz, Tp, np};
      if (cube_file_read_npy(paths, &c) < 0) goto fail;
      snprintf(input_desc, sizeof input_desc, "v_z=%s T=%s n=%s", vz, Tp, np);
    }
  }
  if (job_lamda_read_file(lamda, &mol) < 0) goto fail;
  if (by_levels) {
    int t = lamda_find_transition(&mol, (int)upper, (int)lower);
    if (t < 0) {
      ce_err_prefix("%s", lamda);
      goto fail;
    }
    transition = t;
  }
  if (!by_levels && !by_transition) transition = 2; /* CO J=2-1 */
  if (transition < 1 || transition > mol.nline) {
    ce_err("%s: transition %lld does not exist, expected 1..%d", lamda, (long long)transition, mol.nline);
    goto fail;
  }
  if (lte_line_init(&L, &mol, (int)transition, mass) < 0) goto fail;
  if (freqgrid_parse(channels, L.nu0, &freqs, &nf) < 0) goto fail;
  img = ce_malloc_array((size_t)c.nx * c.ny * nf, sizeof *img, "image");
  if (!img) goto fail;
  lte_options o = {.dx = dx, .vturb = vturb, .background = background, .take_abs = take_abs,
                   .corrected_taylor = corrected, .threads = (int)threads, .backend = backend,
                   .precision = prec};
  if (backend != LTE_BACKEND_CPU && lte_backend_open(backend, 0, NULL, 0) < 0) {
    ce_err_prefix("--device %s", device);
    goto fail;
  }
  if (lte_solve_cube(&L, freqs, nf, c.nx, c.ny, c.nz, c.v, c.T, c.n, &o, img) < 0) {
    /* the message starts with the array's name: add its file */
    const char *m = ce_err_msg();
    int which = !strncmp(m, "v_z[", 4) ? 0 : !strncmp(m, "T[", 2) ? 1 : !strncmp(m, "n[", 2) ? 2 : -1;
    if (which >= 0) ce_err_prefix("%s", c.src[which]);
    goto fail;
  }
  provenance p = {cmdline, lamda, channels, input_desc, precision, (int)transition, L.upper, L.lower,
                  take_abs, corrected, dx, vturb, L.mass_amu, background};
  if (out) {
    if (ends_with(out, ".npy")) {
      size_t shape[3] = {(size_t)c.nx, (size_t)c.ny, (size_t)nf};
      if (npy_write(out, img, NPY_F64, 3, shape) < 0) goto fail;
    } else if (write_h5(out, img, c.nx, c.ny, nf, freqs, &p) < 0) {
      goto fail;
    }
  }
  if (fits && write_fits(fits, img, c.nx, c.ny, nf, freqs, dx, &p, L.nu0) < 0) goto fail;
  if (preview) {
    char title[4400];
    snprintf(title, sizeof title, "%s: %s %.7f GHz (transition %lld), %d x %d x %d cells", input_desc,
             mol.name, L.nu0 * 1e-9, (long long)transition, c.nx, c.ny, c.nz);
    if (write_preview(preview, img, c.nx, c.ny, nf, freqs, L.nu0, title) < 0) goto fail;
  }
  double mx = 0;
  for (size_t i = 0; i < (size_t)c.nx * c.ny * nf; i++) mx = fmax(mx, fabs(img[i]));
  char label[160];
  lamda_transition_label(&mol, (int)transition, label, sizeof label);
  fprintf(stderr, "coemu solve: %s, %s %s (%.7f GHz; LAMDA transition %lld, levels %d -> %d), %d x %d x %d cells, %d channels, max |I| = %.4g W m-2 Hz-1 sr-1\n",
          input_desc, mol.name, label, L.nu0 * 1e-9, (long long)transition, L.upper, L.lower,
          c.nx, c.ny, c.nz, nf, mx);
  fprintf(stderr, "coemu solve: wrote%s%s%s%s%s%s\n", out ? " " : "", out ? out : "",
          fits ? " " : "", fits ? fits : "", preview ? " " : "", preview ? preview : "");
  rc = 0;
  goto done;
usage:
  rc = cli_usage_fail("solve", "%s", ce_err_msg());
  goto done;
fail:
  rc = cli_fail("solve");
done:
  free(args);
  free(cmdline);
  free(freqs);
  free(img);
  cube_file_free(&c);
  lte_line_free(&L);
  lamda_free(&mol);
  return rc;
}
