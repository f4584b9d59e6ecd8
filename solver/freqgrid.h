/* freqgrid.h - observer-frame frequency grids for the line imager.
 *
 * Three ways to name the channels of an image:
 *   "coemunet"                 the grid of the COEmuNet dataset: 31 channels of
 *                              300 m/s around nu0 computed with torch.linspace's
 *                              arithmetic, channels 12..18 kept (7 values, the
 *                              middle one exactly nu0; docs/physics.md)
 *   "V0:DV:COUNT[:LO:HI]"      velocity channels v_i = V0 + i*DV [m/s],
 *                              i = 0..COUNT-1, at nu_i = nu0*(1 - v_i/c)
 *                              (v > 0 recedes: lower frequency); optionally
 *                              keep only channels LO..HI (inclusive, 0-based)
 *   "list:F1,F2,..."           explicit frequencies [Hz]
 */
#ifndef COEMU_FREQGRID_H
#define COEMU_FREQGRID_H

#define FREQGRID_COEMUNET_N 7

/* torch.linspace(start, end, n) arithmetic: start + step*i for i < n/2,
 * end - step*(n-1-i) for the rest, step = (end-start)/(n-1). */
void freqgrid_linspace(double start, double end, int n, double *out);
/* The 7 COEmuNet channels around nu0 [Hz]. */
void freqgrid_coemunet(double nu0, double out[FREQGRID_COEMUNET_N]);
/* Velocity channels (see above). keep_lo/keep_hi < 0: keep all. Writes
 * *nout values to out (room for count). -1 with a message on bad ranges. */
int freqgrid_velocity(double nu0, double v0, double dv, int count, int keep_lo, int keep_hi,
                      double *out, int *nout);
/* The first repeated value of v[0..n): 1 with *first < *second the indices
 * of the repeat whose later index is the smallest (a channel list's two
 * channels of one image), else 0; -1 with a message when out of memory.
 * O(n log n), so that long lists cost nothing at start-up. */
int freqgrid_find_repeat(const double *v, int n, int *first, int *second);
/* Parse one of the three forms; *out is malloc'd. -1 with a message naming
 * the spec and the bad field. */
int freqgrid_parse(const char *spec, double nu0, double **out, int *nout);
/* Whether the grid is uniformly spaced to 1e-9 of the spacing (FITS axes
 * need it); *step gets the mean spacing. */
int freqgrid_uniform(const double *f, int n, double *step);

#endif
