/* mpi_node.h - this rank's place on its node (the ranks that share its
 * memory: MPI_COMM_TYPE_SHARED), for sharing a node's cores and devices
 * among its ranks: one GPU per rank by local rank, OpenMP threads from the
 * CPUs a rank may run on and the ranks it shares them with. */
#ifndef COEMU_MPI_NODE_H
#define COEMU_MPI_NODE_H

#include <sched.h> /* cpu_set_t */

/* local_rank, local_size (either may be NULL): this rank's index among the
 * ranks of its node and their number. If MPI cannot split the world by node
 * they are 0 and 1 (as if every rank had a node of its own). Collective. */
void mpi_node_place(int *local_rank, int *local_size);

/* The OpenMP threads for this rank: the CPUs of its affinity mask divided
 * among the ranks of its node whose masks meet it. A launcher that binds
 * each rank to its own cores (Open MPI's mpirun with 2 ranks or fewer,
 * srun --cpus-per-task=C) gives the mask's C; one that leaves the ranks
 * free (MPICH's and Intel's Hydra without -bind-to, mpirun --bind-to none)
 * or binds several to a socket (Open MPI's mpirun above 2 ranks) gives each
 * its share: without it every rank would start a thread per CPU of the
 * node, 64 x 64 threads on a 64-core node. At least 1. Collective. */
int mpi_node_threads(void);

/* The rule of mpi_node_threads, for a rank whose mask is *mine among the
 * n masks of its node's ranks (its own among them): the CPUs of *mine
 * divided by the number of masks that meet it, at least 1. */
int mpi_node_share(const cpu_set_t *mine, const cpu_set_t *masks, int n);

/* Unless OMP_NUM_THREADS says otherwise (the user's choice, e.g. the
 * jobs/slurm scripts' ${SLURM_CPUS_PER_TASK}), OpenMP's thread count for
 * this process is mpi_node_threads(); the count taken is returned.
 * Collective: every rank calls it, after MPI_Init, before its first
 * parallel region. */
int mpi_node_default_threads(void);

#endif
