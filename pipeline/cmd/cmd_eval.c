/* cmd_eval.c - `coemu eval CHECKPOINT DATASET`: a trained model on a dataset
 * split: the metrics table, the per-sample MaxRel distribution (CSV and PNG),
 * predicted-vs-target channel maps, and the inference time per sample. The
 * work is evaluate.c; under mpirun the evaluation batches are spread over the
 * ranks (the figures do not depend on the number of ranks). */
#include <errno.h>
#include <hdf5.h>
#include <math.h>
#include <mpi.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/cli.h"
#include "common/error.h"
#include "common/fsutil.h"
#include "common/image.h"
#include "pipeline/cmd/commands.h"
#include "pipeline/dataset/export_fits.h"
#include "pipeline/dataset/h5util.h"
#include "pipeline/job/job.h"
#include "pipeline/mpi/mpi_fatal.h"
#include "pipeline/mpi/mpi_node.h"
#include "pipeline/serve/serve.h"
#include "pipeline/train/evaluate.h"
#include "pipeline/train/trainplot.h"
#include "stats/transforms.h"
#include "trainer/checkpoint.h"

/* The metrics table, to a stream (stdout and OUT/metrics.txt). */
static void print_table(FILE *f, const char *ckpt, const char *dataset, const char *split,
                        const coemunet *m, const eval_result *r, int batch, int threads, int ranks) {
  fprintf(f, "checkpoint  %s\ndataset     %s (split %s, %lld samples)\n", ckpt, dataset, split,
          (long long)r->n);
  fprintf(f, "model       COEmuNet nfreq %d, grid %d, %lld parameters, %s shortcut\n\n",
          m->cfg.nfreq, m->cfg.grid, (long long)nn_param_count(&m->net),
          m->cfg.shortcut == COEMUNET_SHORTCUT_REFERENCE ? "reference" : "input");
  fprintf(f, "%-40s %s\n", "metric", "value");
  fprintf(f, "%-40s %.6g\n", "loss (0.8 MSE + 0.2 spectral L1)", r->loss);
  fprintf(f, "%-40s %.6g\n", "  MSE", r->mse);
  fprintf(f, "%-40s %.6g\n", "  mean |FFT2(t) - FFT2(p)|", r->fft);
  fprintf(f, "%-40s %.4f\n", "MaxRel median (%)", r->maxrel.median);
  fprintf(f, "%-40s %.4f\n", "MaxRel mean (%)", r->maxrel.mean);
  fprintf(f, "%-40s %.4f / %.4f / %.4f / %.4f\n", "MaxRel p10 / p25 / p75 / p90 (%)", r->maxrel.p10,
          r->maxrel.p25, r->maxrel.p75, r->maxrel.p90);
  fprintf(f, "%-40s %.4f / %.4f\n", "MaxRel min / max (%)", r->maxrel.min, r->maxrel.max);
  fprintf(f, "%-40s %.4f\n", "fraction of samples with MaxRel < 10%", r->maxrel.frac_below_10);
  fprintf(f, "%-40s %.6f\n", "ZNCC", r->zncc);
  fprintf(f, "%-40s %.6f\n", "SSIM (interior: 5 px border cropped)", r->ssim_interior);
  fprintf(f, "%-40s %.6f\n", "SSIM (reflect padding, torchmetrics>=1.5)", r->ssim_reflect);
  fprintf(f, "%-40s %.3f (batch %d, %d threads x %d ranks)\n", "inference ms per sample", r->infer_ms,
          batch, threads, ranks);
}

static int write_csv(const char *path, const eval_result *r) {
  FILE *f;
  char tmp[4300];
  CE_TRY(fs_open_tmp(path, tmp, sizeof tmp, &f));
  int ok = fprintf(f, "position,sample,maxrel_percent,zncc,ssim_interior,ssim_reflect\n") > 0;
  for (int64_t k = 0; ok && k < r->n; k++)
    ok = fprintf(f, "%lld,%lld,%.9g,%.9g,%.9g,%.9g\n", (long long)k, (long long)r->index[k],
                 r->maxrel_ps[k], r->zncc_ps[k], r->ssim_interior_ps[k], r->ssim_reflect_ps[k]) > 0;
  return fs_commit_tmp(f, tmp, path, ok);
}

/* The channel velocities [m/s] of a dataset (/velocities), or NaN where
 * it has none (labels then give the channel number). */
static void channel_velocities(const char *dataset, int F, double *v) {
  for (int c = 0; c < F; c++) v[c] = NAN;
  char p[4200];
  snprintf(p, sizeof p, "%s/dataset.h5", dataset);
  h5_lock();
  hid_t f = H5Fopen(p, H5F_ACC_RDONLY, H5P_DEFAULT);
  hid_t d = f >= 0 && H5Lexists(f, "velocities", H5P_DEFAULT) > 0 ? H5Dopen2(f, "velocities", H5P_DEFAULT) : -1;
  hid_t sp = d >= 0 ? H5Dget_space(d) : -1;
  if (sp >= 0 && H5Sget_simple_extent_npoints(sp) == F)
    H5Dread(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, v);
  if (sp >= 0) H5Sclose(sp);
  if (d >= 0) H5Dclose(d);
  if (f >= 0) H5Fclose(f);
  h5_unlock();
}

/* OUT/maps-SAMPLE.fits (fits != 0): the target and predicted cubes, I_nu
 * denormalised, with the WCS of export_fits.h (linear au axes from the
 * dataset's recorded edge; pixels where it records none: coemunet-compat, or
 * made before format_minor 1 with sampling.edge auto). */
static int write_maps_fits(const char *out, const char *dataset, int64_t sample, const double *t,
                           const double *p, const double *vel, int F, int G) {
  const size_t ns = (size_t)F * G * G;
  export_fits_info info;
  CE_TRY(export_fits_read_info(dataset, sample, 0, F, G, NULL, &info));
  float *c = ce_malloc_array(2 * ns, sizeof *c, "FITS maps");
  if (!c) return -1;
  for (size_t i = 0; i < ns; i++) c[i] = (float)t[i], c[ns + i] = (float)p[i];
  const export_fits_cube cubes[2] = {{"TARGET", "W m-2 Hz-1 sr-1", "Intensity", c},
                                     {"PREDICTED", "W m-2 Hz-1 sr-1", "Intensity", c + ns}};
  char path[4400];
  snprintf(path, sizeof path, "%s/maps-%06lld.fits", out, (long long)sample);
  int rc = export_fits_write(path, cubes, 2, F, G, isnan(vel[0]) ? NULL : vel, &info, 0);
  free(c);
  return rc;
}

/* OUT/maps-SAMPLE.png: target (top row) and prediction (bottom row) of every
 * channel on one log10 intensity scale; OUT/error-SAMPLE.png: the relative
 * error |I_p - I_t| / max_f I_t per channel (MaxRel's per-pixel term). */
static int write_maps(const char *out, const char *dataset, const eval_result *r,
                      const stats_norm *norm, int F, int G, int fits) {
  const size_t img = (size_t)G * G, ns = (size_t)F * img;
  double *t = ce_malloc_array(3 * ns, sizeof(double), "map buffers");
  ce_map2d *pan = ce_malloc_array(2 * (size_t)F, sizeof *pan, "map panels");
  char (*lab)[48] = ce_malloc_array(3 * (size_t)F, sizeof *lab, "map labels");
  const char **labp = ce_malloc_array(3 * (size_t)F, sizeof *labp, "map labels");
  double *vel = ce_malloc_array((size_t)F, sizeof *vel, "channel velocities");
  int rc = t && pan && lab && labp && vel ? 0 : -1;
  if (rc == 0) channel_velocities(dataset, F, vel);
  for (int s = 0; rc == 0 && s < r->kept; s++) {
    double *p = t + ns, *e = t + 2 * ns;
    stats_denorm_targets_f64(norm, r->kept_target + (size_t)s * ns, ns, t);
    stats_denorm_targets_f64(norm, r->kept_pred + (size_t)s * ns, ns, p);
    double acc = 0;
    for (size_t px = 0; px < img; px++) {
      double mx = 0;
      for (int c = 0; c < F; c++) mx = fmax(mx, t[c * img + px]);
      for (int c = 0; c < F; c++) {
        e[c * img + px] = mx > 0 ? fabs(p[c * img + px] - t[c * img + px]) / mx : NAN;
        acc += e[c * img + px];
      }
    }
    for (int c = 0; c < F; c++) {
      pan[c] = (ce_map2d){t + c * img, G, G, G, 1};
      pan[F + c] = (ce_map2d){p + c * img, G, G, G, 1};
      char ch[24];
      if (isnan(vel[c])) snprintf(ch, sizeof ch, "channel %d", c);
      else snprintf(ch, sizeof ch, "%+.0f m/s", vel[c]);
      snprintf(lab[c], sizeof lab[c], "target %s", ch);
      snprintf(lab[F + c], sizeof lab[F + c], "predicted %s", ch);
      snprintf(lab[2 * F + c], sizeof lab[2 * F + c], "error %s", ch);
      for (int k = 0; k < 3; k++) labp[k * F + c] = lab[k * F + c];
    }
    char path[4400], title[800], who[640];
    export_fits_info in; /* the title names the sample, its model and direction */
    if (export_fits_read_info(dataset, r->index[s], -1, 0, G, NULL, &in) == 0)
      snprintf(who, sizeof who, "sample %lld (model %s, direction %lld)", (long long)r->index[s],
               in.model, (long long)in.direction_index);
    else
      snprintf(who, sizeof who, "sample %lld", (long long)r->index[s]);
    snprintf(path, sizeof path, "%s/maps-%06lld.png", out, (long long)r->index[s]);
    snprintf(title, sizeof title, "%s: target (top), predicted (bottom); MaxRel %.3g%%", who,
             r->maxrel_ps[s]);
    ce_panel_style st = {.cmap = CE_CMAP_INFERNO, .log_scale = 1, .shared_range = 1, .columns = F,
                         .title = title, .labels = labp, .colorbar = 1,
                         .bar_label = "I_nu [W m^-2 Hz^-1 sr^-1] (log scale)"};
    rc = ce_write_panels_png(path, pan, 2 * F, &st);
    for (int c = 0; rc == 0 && c < F; c++) pan[c] = (ce_map2d){e + c * img, G, G, G, 1};
    snprintf(path, sizeof path, "%s/error-%06lld.png", out, (long long)r->index[s]);
    snprintf(title, sizeof title, "%s: relative error (mean %.3g%% = MaxRel)", who,
             100 * acc / (double)ns);
    ce_panel_style se = {.cmap = CE_CMAP_VIRIDIS, .shared_range = 1, .columns = F, .title = title,
                         .labels = labp + 2 * F, .colorbar = 1,
                         .bar_label = "|I_p - I_t| / max over channels of I_t"};
    if (rc == 0) rc = ce_write_panels_png(path, pan, F, &se);
    if (rc == 0 && fits) rc = write_maps_fits(out, dataset, r->index[s], t, p, vel, F, G);
  }
  free(t);
  free(pan);
  free(lab);
  free(labp);
  free(vel);
  return rc;
}

/* Rank 0: maxrel.csv, maxrel.png, the maps, and metrics.txt last; the table
 * on stdout. metrics.txt marks a finished evaluation: an earlier one's is
 * removed first, so a run that fails half-way (a full disk) leaves pictures
 * but no metrics.txt, never a folder that looks complete, or one that mixes
 * an old table with new pictures. */
static int write_outputs(const char *out, const char *ckpt, const char *dataset, const char *split,
                         const coemunet *m, const eval_result *res, const serve_source *src,
                         int batch, int world, int maps, int64_t maps_asked, int fits, int quiet) {
  char p[4400], metrics[4400], tmp[4500];
  int nthreads = omp_get_max_threads();
  FILE *f;
  CE_TRY(fs_mkdir_p(out));
  snprintf(metrics, sizeof metrics, "%s/metrics.txt", out);
  if (unlink(metrics) < 0 && errno != ENOENT)
    CE_FAIL("%s: cannot remove the earlier evaluation's table: %s", metrics, strerror(errno));
  int rc = 0;
  snprintf(p, sizeof p, "%s/maxrel.csv", out);
  rc = write_csv(p, res);
  snprintf(p, sizeof p, "%s/maxrel.png", out);
  if (rc == 0) rc = trainplot_maxrel_png(p, res->maxrel_ps, res->n, &res->maxrel, split);
  if (rc == 0) rc = write_maps(out, dataset, res, serve_norm(src), m->cfg.nfreq, m->cfg.grid, fits);
  if (rc == 0) rc = fs_open_tmp(metrics, tmp, sizeof tmp, &f);
  if (rc == 0) {
    print_table(f, ckpt, dataset, split, m, res, batch, nthreads, world);
    rc = fs_commit_tmp(f, tmp, metrics, !ferror(f));
  }
  if (rc < 0) return ce_err_prefix("%s is incomplete (no metrics.txt)", out);
  if (res->kept < maps_asked)
    fprintf(stderr, "coemu eval: warning: --maps %lld: %d maps written: %s\n",
            (long long)maps_asked, res->kept,
            res->kept < maps ? "the split has no more samples"
                             : "the maps come from the first evaluation batch (raise --batch "
                               "for more)");
  if (!quiet) {
    print_table(stdout, ckpt, dataset, split, m, res, batch, nthreads, world);
    printf("\nwritten: %s/metrics.txt, maxrel.csv, maxrel.png, %d maps-*.png and error-*.png\n",
           out, res->kept);
  }
  return 0;
}

int cmd_eval(int argc, char **argv) {
  const char *split = "test", *out = NULL;
  int64_t max_samples = 0, batch = 16, maps = 4, threads = 0;
  int quiet = 0, fits = 0;
  cli_opt opts[] = {
      {"split", CLI_STR, &split, "NAME", "test (default), validation, train or all", 0, 0},
      {"max-samples", CLI_INT, &max_samples, "N", "evaluate N samples evenly spaced over the split, >= 0 (default 0: all)", 0, 0},
      {"batch", CLI_INT, &batch, "N", "samples per forward pass, 1..4096 (default 16)", 0, 0},
      {"maps", CLI_INT, &maps, "K", "channel-map PNGs for the first K samples, >= 0 (default 4; at most --batch, with a warning)", 0, 0},
      {"threads", CLI_INT, &threads, "N", "threads per rank, >= 0 (default 0: OMP_NUM_THREADS, else the rank's share of its CPUs)", 0, 0},
      {"out", CLI_STR, &out, "DIR", "where the tables and pictures go (default: CHECKPOINT's folder/eval-SPLIT)", 0, 0},
      {"fits", CLI_FLAG, &fits, NULL, "also write the maps as FITS cubes (maps-SAMPLE.fits: TARGET, PREDICTED; docs/export.md)", 0, 0},
      {"quiet", CLI_FLAG, &quiet, NULL, "do not print the table", 0, 0},
      {0}};
  const cli_command spec = {
      "eval", "CHECKPOINT DATASET_DIR [options]   (mpirun for several ranks)",
      "Evaluate a trained COEmuNet checkpoint on a dataset split: loss, MaxRel (median and "
      "distribution), ZNCC, SSIM in both conventions, inference time; writes metrics.txt, "
      "maxrel.csv, maxrel.png and channel maps.",
      opts, 2, 2};
  int npos = 0;
  char **pos = NULL;
  cli_status r = cli_run_parse(&spec, argc, argv, &npos, &pos);
  if (r != CLI_OK) return cli_exit(r);
  const cli_range range[] = {{"--max-samples", max_samples, 0, CLI_NO_MAX, "0: all"},
                             {"--batch", batch, 1, 4096, NULL},
                             {"--maps", maps, 0, CLI_NO_MAX, NULL},
                             {"--threads", threads, 0, CLI_NO_MAX, "0: the default"}};
  int bad = cli_check_ranges("eval", range, sizeof range / sizeof range[0]);
  if (bad) {
    free(pos);
    return bad;
  }
  int split_id;
  if (job_split_parse(split, &split_id) < 0) {
    free(pos);
    return cli_usage_fail("eval", "--split: %s", ce_err_msg());
  }
  const char *ckpt = pos[0], *dataset = pos[1];
  char outbuf[4200];
  if (!out) {
    const char *slash = strrchr(ckpt, '/');
    snprintf(outbuf, sizeof outbuf, "%.*s%seval-%s", slash ? (int)(slash - ckpt) : 0, ckpt,
             slash ? "/" : "", split);
    out = outbuf;
  }
  int64_t maps_asked = maps;
  if (maps > batch) maps = batch; /* the maps come from the first evaluation batch */
  MPI_Init(&argc, &argv);
  mpi_fatal_init("eval");
  mpi_node_default_threads(); /* OMP_NUM_THREADS, else this rank's share of its CPUs */
  int rank, world;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  coemunet m;
  int have_m = 0;
  serve_source *src = NULL;
  coemunet_config cfg;
  eval_result res;
  memset(&res, 0, sizeof res);
  /* Every failure below is one every rank reaches in step (the same
     checkpoint, dataset and options on each; evaluate_split agrees on its
     own failures before its collectives; the outputs are rank 0's while the
     others wait in the agreement after them), so they end in mpi_any_failed:
     one message, exit status 1, no MPI_ABORT banner (mpi_fatal.h). Only
     MPI's own errors abort. */
  /* the one place the thread settings are made (OpenMP to --threads; 0:
     OMP_NUM_THREADS, else this rank's share of its CPUs, set above;
     OpenBLAS to 1) */
  int rc = nn_backend_init(&nn_backend_cpu, (int)threads);
  if (rc == 0) rc = checkpoint_read_config(ckpt, &cfg, NULL);
  if (rc == 0) have_m = (rc = coemunet_build(&m, &cfg, 0)) == 0;
  if (rc == 0) rc = checkpoint_load(ckpt, &m, NULL, NULL);
  if (rc == 0) {
    serve_opts so = {.dataset_dir = dataset, .split = split, .world = 1, .batch = (int)batch,
                     .drop_last = 0, .prefetch = 1,
                     .unfinished_hint = "run or resume `coemu generate` for it, then evaluate"};
    rc = serve_open(&so, &src);
  }
  /* the evaluation batch (evaluate_split's own nn_set_batch is then a no-op,
     so a failure to allocate it is agreed here, not one rank's early return) */
  if (rc == 0 && nn_set_batch(&m.net, (int)batch) < 0)
    rc = ce_err_prefix("%s: evaluation batch %lld", ckpt, (long long)batch);
  if (!mpi_any_failed(rc)) {
    eval_opts eo = {MPI_COMM_WORLD, (int)batch, max_samples, rank == 0 ? (int)maps : 0};
    rc = evaluate_split(&m, src, &eo, &res);
    /* a rank whose peer failed yields to the peer's message (evaluate.h);
       evaluate_split's own refusals (no /stats, the shapes against the
       model) get the names the user gave */
    if (rc < 0 && !strcmp(ce_err_msg(), EVAL_PEER_FAILED)) rc = MPI_AGREE_PEER;
    else if (rc < 0 && !strstr(ce_err_msg(), dataset))
      ce_err_prefix("%s (model %s)", dataset, ckpt);
    if (rc == 0 && rank == 0) rc = write_outputs(out, ckpt, dataset, split, &m, &res, src,
                                                 (int)batch, world, (int)maps, maps_asked, fits, quiet);
    rc = mpi_any_failed(rc) ? -1 : 0;
  } else
    rc = -1;
  eval_result_free(&res);
  serve_close(src);
  if (have_m) coemunet_free(&m);
  nn_backend_finish(&nn_backend_cpu);
  free(pos);
  fflush(stdout);
  MPI_Finalize();
  return rc < 0 ? 1 : 0;
}
