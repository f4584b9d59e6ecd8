/* synth.h - synthetic AGB binary-wind models, written as genuine MPI-AMRVAC
 * snapshots (coemu synth). The model, its equations and the parameter ranges
 * are in docs/synth.md; in short:
 *
 *   smooth wind   rho_w(r) = Mdot / (4 pi r^2 v(r)),
 *                 v(r) = max(v_inf (1 - Rs/r)^beta, v_floor),
 *                 T(r) = max(Ts (Rs/r)^q, T_floor)
 *   orbital plane F(mu) = (1 + E exp(-mu^2 / (2 h^2))) / (1 + E <g>),  mu = n.r^
 *   spiral shell  (1 + A(mu) S(psi)) / (1 + A(mu) <S>),  A(mu) = A0 (1 - mu^2),
 *                 psi = azimuth in the orbital plane - azimuth of the
 *                 companion at the launch time -r/v_inf (Kepler orbit),
 *                 S = exp((cos psi - 1) / (2 pi w)^2) (von Mises: a periodic
 *                 Gaussian of width 2 pi w in psi, w * lambda in radius)
 *   velocity      v(r) r^ + S (dv_r r^ + dv_t n x r^)
 *
 * (Rs = R*, Ts = T*.) Both normalisations are exact sphere averages, so the smooth wind, the
 * plane enhancement and the spiral all carry exactly Mdot through every
 * sphere r >= R* (dv_r adds the arms' radial momentum on top).
 *
 * Model i of seed S is a pure function of (S, i): parameters are drawn with
 * common/rng.h keyed by (S, i, 0, SYNTH_RNG_STREAM).
 *
 * Files: DIR/synth_%05d.dat (AMRVAC .dat v5, hd, Cartesian_3D, conserved
 * rho m1 m2 m3 e in code units, cell values = the analytic fields at cell
 * centres) and DIR/synth_%05d.units.yaml (docs/sidecar.md). Code units: 1 au,
 * 1 km/s, n_H = 1e15 m^-3 (so n_H2 = rho_code * 5e14 m^-3), He/H = 0.1.
 */
#ifndef COEMU_SYNTH_H
#define COEMU_SYNTH_H

#include <stddef.h>
#include <stdint.h>

#include "rotate/amrvac.h"
#include "rotate/units.h"

/* Physical constants and the code units of the written files (SI). */
#define SYNTH_AU 1.495978707e11               /* m */
#define SYNTH_MSUN 1.98847e30                 /* kg */
#define SYNTH_YEAR 3.15576e7                  /* s (Julian year) */
#define SYNTH_G 6.67430e-11                   /* m^3 kg^-1 s^-2 */
#define SYNTH_KB UNITS_K_B                    /* J/K */
#define SYNTH_M_H UNITS_M_H /* kg: the m_H the reader converts with (units.h), so a model reads back exactly */
#define SYNTH_HE 0.1                          /* n_He / n_H */
#define SYNTH_MU (1.4 / 0.6)                  /* H2 + He: (1 + 4 He) / (1/2 + He) */
#define SYNTH_GAMMA (5.0 / 3.0)
#define SYNTH_UNIT_LENGTH SYNTH_AU            /* m */
#define SYNTH_UNIT_VELOCITY 1.0e3             /* m/s */
#define SYNTH_UNIT_NUMBERDENSITY 1.0e15       /* n_H per m^3 */
#define SYNTH_HALF_WIDTH (300.0 * SYNTH_AU) /* m: the domain [-L, L]^3 of every model */
#define SYNTH_RNG_STREAM 1u                   /* rng.h stream of the model parameters */

typedef struct {
  /* AGB star and smooth wind */
  double mdot;          /* mass-loss rate [kg/s] */
  double v_inf;         /* terminal velocity [m/s] */
  double beta;          /* beta-law exponent */
  double v_floor;       /* minimum wind speed [m/s] (the beta law is 0 at R*) */
  double r_star;        /* stellar radius R* [m] */
  double t_star;        /* temperature at R* [K] */
  double t_exp;         /* T = Ts (Rs/r)^t_exp */
  double t_floor;       /* minimum temperature [K] */
  double co_abundance;  /* n_CO / n_H2 */
  /* orbit of the companion about the AGB star (relative orbit) */
  double m1, m2;        /* masses of the AGB star and the companion [kg] */
  double period;        /* orbital period [s] */
  double ecc;           /* eccentricity */
  double incl;          /* inclination of the orbital plane to the x-y plane [rad] */
  double node;          /* longitude of the ascending node, from +x [rad] */
  double periastron;    /* argument of periastron, from the node [rad] */
  double phase;         /* mean anomaly at t = 0 [rad] */
  /* spiral shell */
  double arm_contrast;  /* A0: peak density contrast of an arm in the orbital plane */
  double arm_width;     /* width of an arm (Gaussian sigma) as a fraction of the arm spacing */
  double arm_dv_r;      /* radial velocity excess in an arm [m/s] */
  /* equatorial density enhancement */
  double plane_contrast;/* E */
  double plane_width;   /* h, in mu = sin(latitude above the orbital plane) */
  /* domain: the cube [-half_width, half_width]^3 centred on the AGB star */
  double half_width;    /* [m] */
  /* derived by synth_derive() */
  double sep;           /* semi-major axis a [m] (Kepler's third law) */
  double arm_spacing;   /* lambda = v_inf * period [m] */
  double arm_dv_t;      /* the AGB star's reflex orbital speed 2 pi a m2/((m1+m2) P) [m/s] */
  double e1[3], e2[3], n[3]; /* orbital basis: e1 towards the node, n the orbit normal */
  double comp_pos[3];   /* companion position at t = 0 [m] */
  double plane_norm, arm_mean; /* <g> over mu in [0,1] and <S> over psi */
} synth_params;

/* Draw every parameter from the documented ranges (docs/synth.md) with the
 * generator keyed by (seed, index, 0, SYNTH_RNG_STREAM), then synth_derive(). */
void synth_draw(uint64_t seed, int64_t index, synth_params *p);

/* Fill the derived fields from the primary ones (call after editing a
 * synth_params by hand). */
void synth_derive(synth_params *p);

/* Check that a parameter set is usable (finite, positive where it must be,
 * companion outside the star and inside the domain); -1 with a message naming
 * the parameter otherwise. */
int synth_check(const synth_params *p);

/* Analytic fields at a point x [m] (relative to the AGB star, SI):
 * n_H2 [m^-3], T [K], v [m/s]. The mass density is n_H2 * SYNTH_RHO_PER_NH2. */
void synth_eval(const synth_params *p, const double x[3], double *n_h2, double *T, double v[3]);
#define SYNTH_RHO_PER_NH2 (2.0 * (1.0 + 4.0 * SYNTH_HE) * SYNTH_M_H) /* kg per H2 molecule */

typedef struct {
  int levels, block_nx, base_nx;
} synth_grid; /* defaults (synth_grid_default): 3 levels, 8^3 blocks, 32^3 base */

synth_grid synth_grid_default(void);
/* levels 1..6, block_nx 8 or 16 (or any even 2..64), base_nx a multiple of block_nx. */
int synth_grid_check(const synth_grid *g);

/* Build the snapshot in memory: forest refined (up to g->levels) near the
 * star, near the companion and where ln rho jumps by more than
 * SYNTH_REFINE_JUMP between neighbouring cells; cell values are the
 * analytic fields at the cell centres, as conserved code variables.
 * Free with synth_snapshot_free(). */
#define SYNTH_REFINE_JUMP 0.5
int synth_build(const synth_params *p, const synth_grid *g, amrvac_snapshot *s);
void synth_snapshot_free(amrvac_snapshot *s);

/* The units of a synth model in memory (what synth_write_sidecar writes). */
int synth_units(const synth_params *p, uint64_t seed, int64_t index, units *u);

/* Write the units sidecar (docs/sidecar.md) of a synth model. */
int synth_write_sidecar(const char *path, const synth_params *p, uint64_t seed, int64_t index);

/* What was written for one model. */
typedef struct {
  int nleafs, nparents, levmax; /* levmax: highest level present */
  int64_t ncells, bytes;        /* leaf cells and .dat size */
} synth_info;

/* The path of model `index` in DIR: "DIR/synth_NNNNN" + ext (".dat",
 * ".units.yaml", ".png"); -1 with a message if it does not fit in buf. */
int synth_model_path(char *buf, size_t len, const char *dir, int64_t index, const char *ext);

/* Draw model `index` of `seed`, build it and write DIR/synth_%05d.dat and
 * DIR/synth_%05d.units.yaml (atomically). The .dat path goes to dat_path. */
int synth_write_model(const char *dir, uint64_t seed, int64_t index, const synth_grid *g,
                      char *dat_path, size_t dat_len);

/* The same for given parameters; preview_npix > 0 also writes
 * DIR/synth_%05d.png (synth_preview_png). info may be NULL. */
int synth_write_params(const char *dir, uint64_t seed, int64_t index, const synth_params *p,
                       const synth_grid *g, int preview_npix, char *dat_path, size_t dat_len,
                       synth_info *info);

/* The catalogue: a CSV header line and one row per model (no newline). */
const char *synth_catalogue_header(void);
int synth_catalogue_row(char *buf, size_t len, int64_t index, uint64_t seed, const char *file,
                        const synth_params *p, const synth_info *info);

/* PNG of log10 n_H2 on a slice through the orbital plane (the plane through
 * the star spanned by e1, e2), sampled from the snapshot's cells
 * (nearest cell centre of the leaf that holds each pixel), npix x npix. */
int synth_preview_png(const char *path, const synth_params *p, const amrvac_snapshot *s, int npix);

#endif
