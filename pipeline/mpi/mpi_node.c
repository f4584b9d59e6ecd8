/* mpi_node.c - see mpi_node.h. */
#include "pipeline/mpi/mpi_node.h"

#include <mpi.h>

void mpi_node_place(int *local_rank, int *local_size) {
  int r = 0, n = 1;
  MPI_Comm node;
  if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) ==
      MPI_SUCCESS) {
    MPI_Comm_rank(node, &r);
    MPI_Comm_size(node, &n);
    MPI_Comm_free(&node);
  }
  if (local_rank) *local_rank = r;
  if (local_size) *local_size = n > 0 ? n : 1;
}
