/* producer.h - the real sample producer of `coemu generate`: the sampler
 * (rotate/) and the LTE solver (solver/) behind generate.h's seam.
 *
 * Sample (model, direction) of a job is made as a pure function of the job
 * and those two numbers:
 *   q       = dir_quaternion(sampler, seed, model, direction)
 *   inputs  = sample_cube(model, q, edge, n, k)    (or the COEmuNet gridding)
 *   targets = lte_solve_cube_f32(line, frequencies, inputs), transposed to (f, x, y)
 * For synthetic inputs, the models are first written as AMRVAC files under
 * OUT/models (each rank writes a share; files already there from an earlier
 * run are complete, since they were renamed into place, and are reused). With
 * `edge: auto` the ball radius is the smallest half-extent over all models
 * (agreed with MPI_Allreduce) and the cube edge equals it, as in the paper.
 */
#ifndef COEMU_PRODUCER_H
#define COEMU_PRODUCER_H

#include "pipeline/generate/generate.h"

/* generate.h's producer_open_fn for the sampler + solver. */
int producer_open(const job *j, const char *out_dir, generate_producer *p);

#endif
