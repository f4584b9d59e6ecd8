/* moments_mpi.h - the MPI reduction of exact moments (moments.h).
 *
 * Each rank packs its folded state (stats_moments_pack), all states are
 * gathered, and every rank adds them up in rank order with the exact integer
 * sum of moments.c (stats_moments_merge_packed): every rank gets the same
 * state, bit for bit, whatever the split of the data.
 *
 *   stats_moments m; ... stats_moments_add_f32(&m, mine, n);
 *   stats_moments_allreduce(&m, MPI_COMM_WORLD);
 *
 * Part of the stats MPI library (with quantile.h); the core (moments, select,
 * transforms) has no MPI.
 */
#ifndef COEMU_STATS_MOMENTS_MPI_H
#define COEMU_STATS_MOMENTS_MPI_H

#include <mpi.h>

#include "stats/moments.h"

/* Sum the states of all ranks of comm; every rank gets the total. Returns
 * 0, or -1 with a message if MPI fails. */
int stats_moments_allreduce(stats_moments *m, MPI_Comm comm);

#endif
