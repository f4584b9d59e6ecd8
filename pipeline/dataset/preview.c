/* preview.c - PNG preview of a dataset (reads DIR/dataset.h5 serially). */
#include "pipeline/dataset/preview.h"

#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/image.h"
#include "pipeline/dataset/dataset_stats.h"
#include "pipeline/dataset/export_fits.h"
#include "pipeline/dataset/h5util.h"

int dataset_preview(const char *dir, int nsamples, const char *png_path) {
  char path[4096];
  snprintf(path, sizeof path, "%s/dataset.h5", dir);
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
  if (f < 0) return ce_err_open(path, "as HDF5");
  hid_t din = H5Lexists(f, "inputs", H5P_DEFAULT) > 0 ? H5Dopen2(f, "inputs", H5P_DEFAULT) : -1;
  hid_t dtg = H5Dopen2(f, "targets", H5P_DEFAULT);
  if (dtg < 0) {
    if (din >= 0) H5Dclose(din);
    H5Fclose(f);
    CE_FAIL("%s: no /targets dataset", path);
  }
  hsize_t di[5] = {0}, dt[4] = {0};
  hid_t sp = H5Dget_space(dtg);
  int ok = H5Sget_simple_extent_ndims(sp) == 4;
  H5Sget_simple_extent_dims(sp, dt, NULL);
  H5Sclose(sp);
  if (din >= 0) {
    sp = H5Dget_space(din);
    ok = ok && H5Sget_simple_extent_ndims(sp) == 5;
    H5Sget_simple_extent_dims(sp, di, NULL);
    H5Sclose(sp);
  }
  int rc = 0;
  if (!ok || dt[0] == 0) {
    rc = ce_err("%s: /targets [N,F,n,n] (and /inputs [N,3,n,n,n]) expected", path);
    goto done;
  }
  int ns = nsamples < (int)dt[0] ? nsamples : (int)dt[0];
  int nf = (int)dt[1], n = (int)dt[2], nin = din >= 0 ? 3 : 0;
  int cols = nin + nf;
  size_t cube = din >= 0 ? 3 * (size_t)di[2] * di[3] * di[4] : 0, img = (size_t)nf * n * n;
  int ni = din >= 0 ? (int)di[2] : 0;
  /* each panel is n x n; input slices are taken at the middle of the z axis */
  double *maps = ce_malloc_array((size_t)ns * cols * n * n, sizeof(double), "preview");
  float *buf = ce_malloc_array(cube > img ? cube : img, sizeof(float), "preview sample");
  ce_map2d *pan = ce_malloc_array((size_t)ns * cols, sizeof *pan, "preview panels");
  double *below = ce_malloc_array((size_t)ns, sizeof *below, "preview marks");
  if (!maps || !buf || !pan || !below) {
    rc = -1;
    goto freeall;
  }
  for (int s = 0; s < ns; s++) {
    hsize_t idx = ns > 1 ? (hsize_t)((double)s * (double)(dt[0] - 1) / (ns - 1) + 0.5) : 0;
    double *row = maps + (size_t)s * cols * n * n;
    if (din >= 0) {
      if (h5_read_sample_f32(din, idx, buf) < 0) {
        rc = ce_err("%s: reading /inputs sample %llu failed", path, (unsigned long long)idx);
        goto freeall;
      }
      for (int c = 0; c < 3; c++)
        for (int x = 0; x < n && x < ni; x++)
          for (int y = 0; y < n && y < ni; y++) {
            float v = buf[(((size_t)c * ni + x) * ni + y) * ni + ni / 2];
            row[((size_t)c * n + x) * n + y] = c == 0 ? v / 1000 : (v > 0 ? log10(v) : NAN);
          }
    }
    if (h5_read_sample_f32(dtg, idx, buf) < 0) {
      rc = ce_err("%s: reading /targets sample %llu failed", path, (unsigned long long)idx);
      goto freeall;
    }
    /* pixels below the ln I clip (I < e^-40, DATASET_EMPTY_LN_LEVEL) are
     * marked: NaN, drawn grey, and counted for the row's title */
    const double clip = exp(DATASET_EMPTY_LN_LEVEL);
    size_t nb = 0;
    for (size_t i = 0; i < img; i++) {
      int low = !((double)buf[i] >= clip);
      nb += low;
      row[(size_t)nin * n * n + i] = low ? NAN : log10(buf[i]);
    }
    below[s] = (double)nb / (double)img;
    for (int c = 0; c < cols; c++)
      pan[s * cols + c] = (ce_map2d){row + (size_t)c * n * n, n, n, n, 1};
  }
  /* one row a sample, titled with where it came from; the columns named on
   * the first row (the channels by their velocity); one colour range and bar
   * (with units) per input field and one for all channels, over every row */
  const char **labels = calloc((size_t)ns * cols, sizeof *labels);
  char (*names)[48] = calloc((size_t)cols, sizeof *names);
  char (*rtitle)[600] = calloc((size_t)ns, sizeof *rtitle);
  const char **rtp = calloc((size_t)ns, sizeof *rtp);
  int *groups = calloc((size_t)cols, sizeof *groups);
  double *vel = calloc((size_t)nf, sizeof *vel);
  if (!labels || !names || !rtitle || !rtp || !groups || !vel) {
    rc = ce_err("out of memory for the preview labels");
    goto freelabels;
  }
  for (int s = 0; s < ns; s++) {
    hsize_t idx = ns > 1 ? (hsize_t)((double)s * (double)(dt[0] - 1) / (ns - 1) + 0.5) : 0;
    export_fits_info in;
    static const char *splits[3] = {"train", "validation", "test"};
    if (export_fits_read_info(dir, (int64_t)idx, -1, s == 0 ? nf : 0, n, vel, &in) == 0)
      snprintf(rtitle[s], sizeof rtitle[s], "sample %llu: model %s (id %lld), direction %lld, %s split",
               (unsigned long long)idx, in.model, (long long)in.model_id,
               (long long)in.direction_index, in.split < 3 ? splits[in.split] : "?");
    else { /* a dataset without the catalogue (format 1): the index only */
      snprintf(rtitle[s], sizeof rtitle[s], "sample %llu", (unsigned long long)idx);
      for (int c = 0; s == 0 && c < nf; c++) vel[c] = NAN;
    }
    size_t used = strlen(rtitle[s]);
    snprintf(rtitle[s] + used, sizeof rtitle[s] - used, "; %.1f%% of pixels below the clip%s",
             100 * below[s], below[s] > DATASET_EMPTY_FRACTION ? " - NEARLY EMPTY" : "");
    rtp[s] = rtitle[s];
  }
  static const char *inames[3] = {"v_z, z mid", "T, z mid", "n_CO, z mid"};
  static const char *units[4] = {"v_z [km/s]", "log T [K]", "log n_CO [m^-3]",
                                 "log I_nu [W m^-2 Hz^-1 sr^-1]"};
  for (int c = 0; c < cols; c++) {
    if (c < nin) snprintf(names[c], sizeof names[c], "%s", inames[c]);
    else if (isnan(vel[c - nin])) snprintf(names[c], sizeof names[c], "channel %d", c - nin);
    else snprintf(names[c], sizeof names[c], "%+.2f km/s", vel[c - nin] / 1000);
    labels[c] = names[c];
    groups[c] = c < nin ? c : 3;
  }
  char title[4200];
  snprintf(title, sizeof title, "%s: %d of %llu samples; inputs at the middle of the line of sight, "
           "channel maps by velocity; log = log10; grey: I below the clip e^-40", dir, ns, (unsigned long long)dt[0]);
  ce_panel_style st = {.cmap = CE_CMAP_INFERNO, .columns = cols, .scale = n >= 48 ? 2 : (96 + n - 1) / n,
                       .title = title, .labels = labels, .row_titles = rtp, .colorbar = 1,
                       .groups = groups, .group_labels = units};
  if (!nin) { /* no inputs: the channels are group 0 */
    for (int c = 0; c < cols; c++) groups[c] = 0;
    st.group_labels = units + 3;
  }
  rc = ce_write_panels_png(png_path, pan, ns * cols, &st);
freelabels:
  free(labels);
  free(names);
  free(rtitle);
  free(rtp);
  free(groups);
  free(vel);
freeall:
  free(maps);
  free(buf);
  free(pan);
  free(below);
done:
  if (din >= 0) H5Dclose(din);
  H5Dclose(dtg);
  H5Fclose(f);
  return rc;
}
