/* compat.h - the COEmuNet paper's gridding, reproduced on purpose.
 *
 * What the paper did (docs/sampling.md, compat mode; docs/physics.md),
 * step by step:
 *  1. keep the leaf cell centres within a ball of radius R (one global
 *     value; the paper's R = COMPAT_PAPER_RADIUS) around the model centre;
 *  2. rotate the points and the velocities: with this project's convention
 *     (docs/sampling.md) u = R^T (x - c) and v' = R^T v, so v_z = v'_z is
 *     the same line-of-sight velocity as sample_cube()'s v_los;
 *  3. bin the points into a 128^3 box spanning the rotated points (per axis
 *     from the smallest to the largest coordinate, the largest falling in
 *     the last bin as numpy.histogramdd does): each cell is the plain mean
 *     of the points in it; an empty cell takes the mean of the points of its
 *     parent on the next coarser grid (64^3, 32^3, ..., 1);
 *  4. keep the central 64^3 (bins 32..95);
 *  5. report dx = (z extent of the 128^3 box) / 64, twice the voxel size, as
 *     the paper passed to its solver.
 * The paper's rotation sampler is DIR_COEMUNET; the paper's R^T-vs-R
 * choice does not matter for it, as its axis-angle law is the same for a
 * rotation and its inverse.
 */
#ifndef COEMU_COMPAT_H
#define COEMU_COMPAT_H

#include "rotate/model.h"

#define COMPAT_PAPER_RADIUS 2.8984584112701441e13 /* [m] */
#define COMPAT_BINS 128
#define COMPAT_OUT 64

/* Cubes of COMPAT_OUT^3, [(x*64 + y)*64 + z]; *dx as the paper reported it,
 * *voxel the true voxel size along z. Fails if no cell centre lies in the
 * ball. */
int compat_grid(const ce_model *m, const double q[4], double radius, float *v_z, float *T,
                float *n_co, double *dx, double *voxel);

#endif
