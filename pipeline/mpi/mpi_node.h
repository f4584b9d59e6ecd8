/* mpi_node.h - this rank's place on its node (the ranks that share its
 * memory: MPI_COMM_TYPE_SHARED), for sharing a node's cores and devices
 * among its ranks: one GPU per rank by local rank, OpenMP threads =
 * cores / local ranks. */
#ifndef COEMU_MPI_NODE_H
#define COEMU_MPI_NODE_H

/* local_rank, local_size (either may be NULL): this rank's index among the
 * ranks of its node and their number. If MPI cannot split the world by node
 * they are 0 and 1 (as if every rank had a node of its own). */
void mpi_node_place(int *local_rank, int *local_size);

#endif
