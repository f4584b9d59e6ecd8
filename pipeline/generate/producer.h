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

#include <stddef.h>

#include "pipeline/generate/generate.h"

#include "rotate/model.h"
#include "solver/nlte_lvg.h"

/* The non-LTE wiring (docs/nlte.md, "Wiring"): model + molecule + options ->
 * x_l, x_u (float, per leaf cell, indexed as m->cells) of LAMDA line `line`,
 * by the per-cell 3-D LVG. x_co: the model's n_CO/n_H2 (sidecar), x_mol:
 * the molecule's n/n_H2. On a solver error the message names the cell (its
 * leaf and position). stats (may be NULL) gets the solver's counters,
 * t_inputs (may be NULL) the seconds spent on gradients and densities. */
int producer_lvg_populations(const ce_model *m, double x_co, double x_mol, const nlte_model *M,
                             const nlte_lvg_options *o, int line, float *x_l, float *x_u,
                             nlte_lvg_out *stats, double *t_inputs);

/* generate.h's producer_open_fn for the sampler + solver. With line.mode
 * lvg, the populations of each model are solved once when the model is
 * loaded (producer_lvg_populations), sampled into the cube with every
 * direction (sample_cube_fields) and imaged with lte_solve_cube_pops_f32;
 * with line.abundance > 0 the imaged density is (X_mol / X_CO) n_CO (the
 * stored input cube stays n_CO). */
int producer_open(const job *j, const char *out_dir, generate_producer *p);

/* The byte cap of each producer's model cache (rotate/model_lru.h: the
 * models recently used, with their per-cell populations), for producers
 * opened after this call. Default 1 byte: only the model in use is kept, as
 * before (generate makes a model's directions together); 0:
 * MODEL_LRU_DEFAULT_CAP. */
void producer_set_model_cache(size_t bytes);
/* A producer's model cache counters (ctx: generate_producer.ctx). */
void producer_model_counters(void *ctx, int64_t *loads, int64_t *hits, size_t *peak);

#endif
