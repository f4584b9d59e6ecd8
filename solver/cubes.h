/* cubes.h - input cubes made on the spot: the built-in example (an analytic
 * AGB wind with a spiral shell) and random cubes with realistic ranges for
 * tests and benchmarks. Arrays are [(x*ny + y)*nz + z], z = line of sight,
 * v_z [m/s] (> 0 away from the observer at z = 0), T [K], n [m^-3] of CO.
 */
#ifndef COEMU_CUBES_H
#define COEMU_CUBES_H

#include <stdint.h>

/* Half the edge of the example box [m]: 100 au. */
#define CUBES_AGB_HALF_WIDTH 1.5e13

/* The example: an AGB star at the centre of an N^3 box of edge 2*H losing
 * 5e-5 Msun/yr (a dense, late AGB wind) in a 15 km/s radial wind
 * (n_CO ~ r^-2 with CO/H2 = 4e-4,
 * floored inside 5e11 m), a companion's Archimedean spiral (arm spacing
 * 4e12 m, density contrast 6, in the x-y plane, so seen face-on) and
 * T = 3000 K (r/5e11 m)^-0.7 clipped to 10..3000 K. Cell spacing 2H/N.
 * The line centre reaches tau ~ 5; about a quarter of the pixels have
 * tau > 1 in the 7 COEmuNet channels. */
void cubes_agb_spiral(int N, double half_width, double *v, double *T, double *n);

/* Random smooth cubes with realistic ranges: T log-uniform-ish in 10..3000 K,
 * n in 1e4..1e13 m^-3, v_z within +-10 km/s, each a sum of random Fourier
 * modes; about one cell in four repeats its predecessor's v and T, so
 * segments with equal Doppler offsets (Pomme's |b10| < 1e-4 branch) occur.
 * A pure function of (seed, shape). */
void cubes_random(uint64_t seed, int nx, int ny, int nz, double *v, double *T, double *n);

#endif
