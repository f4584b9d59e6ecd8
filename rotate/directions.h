/* directions.h - viewing directions: rotations as unit quaternions.
 *
 * A direction is a pure function of (seed, model id, direction index) via
 * the counter-based generator of common/rng.h (stream DIR_STREAM), so it
 * does not depend on ranks or work order. The rotation R of quaternion q
 * maps cube axes to model axes (docs/sampling.md): the line of sight (the
 * cube's +z axis, away from the observer) is R e_z in model coordinates.
 *
 *   haar      uniform on SO(3) (uniform unit quaternions, Shoemake 1992);
 *             the line of sight is uniform on the sphere: E[R_zz] = 0.
 *   faceon    the identity: the line of sight is the model's +z axis.
 *   lowdisc   lines of sight from a low-discrepancy (Kronecker, R2)
 *             sequence on the sphere by direction index, shifted per model
 *             (Cranley-Patterson rotation keyed by (seed, model)), with a
 *             uniform random roll about the line of sight.
 *   coemunet  the COEmuNet paper's sampler: axis uniform on the sphere,
 *             angle uniform in [0, 2 pi). Not uniform on SO(3): the line of
 *             sight leans towards +z (E[R_zz] = 1/3).
 */
#ifndef COEMU_DIRECTIONS_H
#define COEMU_DIRECTIONS_H

#include <stdint.h>

#define DIR_STREAM 0u /* rng.h stream of rotations */

typedef enum { DIR_HAAR, DIR_FACEON, DIR_LOWDISC, DIR_COEMUNET } dir_sampler;

/* "haar", "faceon", "lowdisc", "coemunet" -> sampler (error naming the
 * accepted names otherwise). */
int dir_parse(const char *name, dir_sampler *out);
const char *dir_name(dir_sampler s);

/* Unit quaternion (w, x, y, z) of direction `dir_index` of model `model_id`. */
void dir_quaternion(dir_sampler s, uint64_t seed, uint32_t model_id, uint32_t dir_index,
                    double q[4]);

/* Rotation matrix of a unit quaternion, row-major: R[3*i + j]. */
void dir_matrix(const double q[4], double R[9]);

/* Quaternion of a rotation by `angle` [rad] about the unit `axis`. */
void dir_axis_angle(const double axis[3], double angle, double q[4]);

/* Quaternion product a*b (rotation b first, then a). */
void dir_qmul(const double a[4], const double b[4], double out[4]);

#endif
