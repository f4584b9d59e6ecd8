/* model_lvg.h - what the per-cell LVG solver (solver/nlte_lvg.h) needs from
 * a model, per leaf cell: the velocity-gradient tensor, n_H2 and the
 * molecule's density in cgs, the cell size, and a solving order in which
 * consecutive cells are face neighbours. docs/nlte.md, "3-D LVG per cell".
 *
 * Arrays are indexed like the model's cells (leaf * ncell + local cell,
 * m->cells), so populations solved on them are per-cell fields of the model
 * that sample_cube_fields (rotate/sampler.h) samples into the cubes.
 *
 * Velocity gradient: a least-squares fit of v(x_k) - v(x_0) = G (x_k - x_0)
 * over the face neighbours of the cell, found by locating x_0 +- h_d e_d
 * (h_d the cell's own size) in the forest, with x_k the centre of the leaf
 * cell found there (finer, coarser or equal): exact for a linear velocity
 * field on any AMR configuration, the central difference (v+ - v-)/(2h) on
 * a uniform patch, one-sided at the domain faces (the neighbour outside is
 * left out).
 *
 * Densities: the model holds n_CO = X_CO n_H2 (units.h: n_H2 =
 * rho / (2 (1 + 4 He) m_H), which is rho / (mu m_H (1 + 2 He)) for the
 * sidecar's mu of a fully molecular H2 + He gas), so n_H2 = n_CO / X_CO
 * with X_CO the sidecar's co_abundance, and the imaged molecule's
 * n_mol = X_mol n_H2 (X_mol = X_CO for CO). The ortho/para split of H2 is
 * the solver's (RADEX's thermal ratio where the file has o/p rates).
 *
 *   model_lvg_inputs in;
 *   model_lvg_inputs_make(m, units.co_abundance, x_mol, &in);
 *   nlte_lvg_cells C = {in.ncell, in.t_kin, in.n_h2, in.n_mol, in.grad_v,
 *                       in.length, in.order, in.chunk};
 *   ... nlte_lvg_solve(&M, &C, &o, &out) ...
 *   model_lvg_inputs_free(&in);
 */
#ifndef COEMU_MODEL_LVG_H
#define COEMU_MODEL_LVG_H

#include <stddef.h>
#include <stdint.h>

#include "rotate/model.h"

typedef struct {
  int64_t ncell;   /* m->nleaves * m->ncell */
  double *t_kin;   /* [ncell] K (the model's T) */
  double *n_h2;    /* [ncell] cm^-3 */
  double *n_mol;   /* [ncell] cm^-3 */
  double *grad_v;  /* [9 ncell] dv_i/dx_j [s^-1] */
  double *length;  /* [ncell] the cell's smallest edge [cm] */
  int64_t *order;  /* [ncell] leaf by leaf, serpentine inside each leaf */
  int64_t chunk;   /* m->ncell: one warm-start chain per leaf */
} model_lvg_inputs;

/* Fill in from m: x_co = n_CO / n_H2 of the model (the sidecar's
 * co_abundance), x_mol = n_mol / n_H2 of the molecule to solve; both in
 * (0, 1]. -1 with a message on bad abundances or no memory. */
int model_lvg_inputs_make(const ce_model *m, double x_co, double x_mol, model_lvg_inputs *in);
void model_lvg_inputs_free(model_lvg_inputs *in);

/* The velocity-gradient tensor of every cell into grad[9 * ncell]
 * (G[3i + j] = dv_i/dx_j [s^-1], the fit above). */
int model_velocity_gradient(const ce_model *m, double *grad);

/* Centre [m] of cell `cell` (leaf * ncell + local), and a name for
 * messages: "leaf L (level V, block i j k), cell (i, j, k) at (x, y, z) m". */
void model_cell_centre(const ce_model *m, int64_t cell, double x[3]);
void model_cell_name(const ce_model *m, int64_t cell, char *buf, size_t len);

#endif
