/* export_fits.h - dataset samples and channel maps as FITS cubes with a WCS
 * an astronomer's viewer understands (docs/export.md).
 *
 * A cube of F channel maps (axes x, y as in /targets) is written with FITS
 * axis 1 = x, axis 2 = y, axis 3 = channel, float32 values exactly as given
 * (BITPIX -32, big-endian in the file). The WCS:
 *   spatial, pixel size p = edge / n, reference pixel (n+1)/2 (the cube's
 *     centre, between the two middle pixels for even n), value 0:
 *     distance d > 0: CTYPE1/2 'RA---SIN' / 'DEC--SIN', CUNIT 'deg', CDELT1 =
 *       -p/d, CDELT2 = +p/d in degrees (1 au at 1 pc = 1 arcsec; x grows to
 *       the west, as on the sky with north up);
 *     d = 0: linear offsets CTYPE 'X' / 'Y', CUNIT 'AU';
 *     p unknown (0): CTYPE 'X' / 'Y', CUNIT 'pixel', CDELT 1;
 *   spectral: CTYPE3 'VRAD', CUNIT3 'km/s' from /velocities (radio velocity,
 *     > 0 away from the observer) when the channels are evenly spaced
 *     (within 1e-6 of the step), else CTYPE3 'CHANNEL' (the channel number)
 *     with each velocity in a keyword CHVEL001.. [km/s]; SPECSYS 'SOURCE',
 *     RESTFRQ the line's rest frequency.
 * Header keywords name where the cube came from (SAMPLE, MODELID, OBJECT =
 * the model's name, DIRIDX, QUAT_W..QUAT_Z, SPLIT, ORIGIN). Files are written
 * to a temporary name and renamed when complete. */
#ifndef COEMU_EXPORT_FITS_H
#define COEMU_EXPORT_FITS_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
  int64_t sample;     /* index into DIR/dataset.h5 */
  double distance_pc; /* > 0: sky axes at this distance; 0: linear au */
  double edge_m;      /* cube edge [m]; 0: the dataset's (DIR/dataset.h5 /geometry edge;
                         a dataset without /geometry: the job's sampling.edge) */
  int inputs;         /* also the input cubes: extensions VZ [m/s], T [K], NCO [m^-3],
                         axes x, y, z (z along the line of sight, linear au) */
} export_fits_opts;

/* Sample o->sample of dataset DIR: the target cube as the primary HDU. An
 * unknown cube edge is an error unless edge_m is given: a coemunet-compat
 * dataset (its edge is per sample), or one made before format_minor 1 (no
 * /geometry) whose job said sampling.edge: auto. */
int export_fits_sample(const char *dir, const export_fits_opts *o, const char *path);

/* Where the maps of one sample came from, read from DIR/dataset.h5. */
typedef struct {
  int64_t sample, model_id, direction_index;
  int split;
  double quat[4];
  char model[512];
  double nu0;          /* rest frequency [Hz] (0: unknown) */
  double pixel_m;      /* edge / n, 0: unknown */
  int edge_unknown;    /* why pixel_m is 0 (EXPORT_EDGE_*) */
} export_fits_info;

enum {
  EXPORT_EDGE_KNOWN = 0,        /* pixel_m > 0, or the edge was not wanted */
  EXPORT_EDGE_COMPAT = 1,       /* /geometry edge NaN: coemunet-compat, per sample */
  EXPORT_EDGE_NOT_RECORDED = 2  /* no /geometry (before format_minor 1), job's edge auto */
};

/* The sample's catalogue entry and the pixel size: edge_m > 0, else with
 * edge_m = 0 the dataset's recorded edge (/geometry edge), or for a dataset
 * without /geometry the job's sampling.edge (DIR/job.yaml), 0 if neither
 * gives one (info->edge_unknown says why); edge_m < 0: not wanted, 0.
 * vel (nf values, may be NULL) gets /velocities; nf = 0 reads neither them
 * nor the rest frequency. Also for picture titles (preview.c, coemu eval). */
int export_fits_read_info(const char *dir, int64_t sample, double edge_m, int nf, int n,
                          double *vel, export_fits_info *info);

/* One image cube: nf maps of n x n float32 values laid out [f][x][y]. */
typedef struct {
  const char *extname; /* EXTNAME (the primary HDU gets one too) */
  const char *bunit, *btype;
  const float *data;
} export_fits_cube;

/* ncube cubes into one file (the first as the primary HDU), each with the
 * WCS above from info, distance_pc and the channel velocities vel [m/s]. */
int export_fits_write(const char *path, const export_fits_cube *cubes, int ncube, int nf, int n,
                      const double *vel, const export_fits_info *info, double distance_pc);

/* One FITS file written under PATH.tmp.PID and renamed into place only when
 * whole (the exporters and coemu solve share it). open: *ff is cfitsio's
 * fitsfile * (void here: this header does not need fitsio.h), tmp gets the
 * "!PATH.tmp.PID" name cfitsio was given. close_commit: status is cfitsio's
 * after the writes; nonzero, or a failing close, removes the temporary and
 * fails with "PATH: writing FITS failed: WHY (the errno's words, for I/O
 * errors)"; else the file is renamed durably. */
int export_fits_open_tmp(const char *path, char *tmp, size_t cap, void **ff);
int export_fits_close_commit(const char *path, const char *tmp, void *ff, int status);

#endif
