/* reducer_mpi.h - MPI as the trainer's replica reducer.
 *
 * trainer/ knows no MPI: data-parallel training sums BatchNorm statistics and
 * gradients through the callbacks of an nn_reducer (trainer/nn.h). This is
 * the MPI implementation: each sum is an MPI_Allreduce (MPI_SUM, in place)
 * over the communicator, split into int-sized pieces. Every rank gets the
 * same bits in the common MPI implementations, as nn.h requires.
 */
#ifndef COEMU_REDUCER_MPI_H
#define COEMU_REDUCER_MPI_H

#include <mpi.h>

#include "trainer/nn.h"

/* A reducer over the ranks of *comm (which must outlive the reducer's use);
 * local_batchnorm: see nn_reducer. */
nn_reducer reducer_mpi(MPI_Comm *comm, int local_batchnorm);

#endif
