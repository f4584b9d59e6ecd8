/* units.h - the units sidecar (docs/sidecar.md) and code -> physical units.
 *
 * AMRVAC snapshots hold dimensionless code values. A small YAML sidecar
 * beside the snapshots says what the code units are; this module parses it
 * (libyaml; unknown keys, wrong types, missing keys -> an error naming
 * file:line:column) and converts one cell's conserved variables to the
 * fields the line solver needs, in SI: n_CO [m^-3], T [K], v [m/s].
 */
#ifndef COEMU_UNITS_H
#define COEMU_UNITS_H

#include <stddef.h>

#include "rotate/amrvac.h"

/* Constants, SI. m_H is AMRVAC's proton mass (mp_cgs = 1.672621777e-24 g),
 * used as "m_H" in both directions so that unit_density derived by AMRVAC
 * and n_H recovered here agree exactly. */
#define UNITS_M_H 1.672621777e-27
#define UNITS_K_B 1.380649e-23

typedef struct {
  char path[1024];
  int version;
  int si;                    /* unit_system: 1 = si, 0 = cgs */
  double unit_length;        /* as written (cm or m) */
  double unit_numberdensity; /* 0 if not given */
  double unit_density;       /* 0 if not given (then derived) */
  double he_abundance;       /* default 0.1 */
  double unit_velocity;
  double mu;
  double co_abundance;
  int stretched;
  int has_gamma;
  double gamma;
  int has_isothermal;
  double isothermal_constant;
  char temperature_variable[64]; /* "" if none */
} units;

/* Parse a sidecar file. */
int units_read(const char *path, units *u);

/* The same from a string (`name` labels the messages). */
int units_parse(const char *text, size_t len, const char *name, units *u);

/* Sidecar lookup for a snapshot (docs/sidecar.md): MODEL.units.yaml, then
 * units.yaml in the same directory. Returns 1 and the path if found, 0 if
 * neither exists. */
int units_find(const char *dat_path, char *out, size_t out_len);

/* SI scale factors derived from the sidecar. */
typedef struct {
  double length;   /* m per code length */
  double density;  /* kg m^-3 per code density */
  double velocity; /* m/s per code velocity */
  double pressure; /* Pa per code pressure */
  double n_h_per_rho; /* n_H [m^-3] per code density: unit_density / ((1+4He) m_H) */
} units_si;

void units_scales(const units *u, units_si *s);

/* How to turn a block's variables into physical fields: variable indices
 * (found by name) and gamma. Fails naming the missing variable, e.g. a file
 * without `e` and without isothermal_constant or temperature_variable. */
typedef struct {
  int irho, im[3], ie, itemp;  /* -1 if absent */
  int ndir;
  double gamma;
  units_si si;
  double co_abundance, mu, isothermal_constant, he_abundance;
  int isothermal;
} units_map;

int units_map_make(const units *u, const amrvac_header *h, units_map *m);

/* One cell: w[iw * stride] holds variable iw. Writes n_CO [m^-3], T [K] and
 * v [m/s] (3 components, 0 beyond ndir). */
void units_cell(const units_map *m, const double *w, size_t stride, double *n_co, double *T,
                double v[3]);

#endif
