/* mpi_node.c - see mpi_node.h. */
#include "pipeline/mpi/mpi_node.h"

#include <mpi.h>
#include <omp.h>
#include <sched.h>
#include <stdlib.h>
#include <unistd.h>

/* the node's communicator, or MPI_COMM_SELF's duplicate where MPI cannot
 * split the world by node */
static MPI_Comm node_comm(void) {
  MPI_Comm node;
  if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) !=
      MPI_SUCCESS)
    MPI_Comm_dup(MPI_COMM_SELF, &node);
  return node;
}

void mpi_node_place(int *local_rank, int *local_size) {
  int r = 0, n = 1;
  MPI_Comm node = node_comm();
  MPI_Comm_rank(node, &r);
  MPI_Comm_size(node, &n);
  MPI_Comm_free(&node);
  if (local_rank) *local_rank = r;
  if (local_size) *local_size = n > 0 ? n : 1;
}

int mpi_node_threads(void) {
  cpu_set_t mine;
  CPU_ZERO(&mine);
  int cpus;
  if (sched_getaffinity(0, sizeof mine, &mine) == 0) {
    cpus = CPU_COUNT(&mine);
  } else { /* no mask to read: every online CPU, shared by every local rank */
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    cpus = online > 0 ? (int)online : 1;
    CPU_ZERO(&mine);
    for (int c = 0; c < cpus && c < CPU_SETSIZE; c++) CPU_SET(c, &mine);
  }
  MPI_Comm node = node_comm();
  int n = 1;
  MPI_Comm_size(node, &n);
  cpu_set_t *all = malloc(sizeof(cpu_set_t) * (size_t)(n > 0 ? n : 1));
  int t;
  if (all && MPI_Allgather(&mine, (int)sizeof mine, MPI_BYTE, all, (int)sizeof mine, MPI_BYTE,
                           node) == MPI_SUCCESS)
    t = mpi_node_share(&mine, all, n);
  else /* as if every rank of the node shared this mask */
    t = cpus / (n > 0 ? n : 1);
  free(all);
  MPI_Comm_free(&node);
  return t > 0 ? t : 1;
}

int mpi_node_share(const cpu_set_t *mine, const cpu_set_t *masks, int n) {
  int sharing = 0;
  for (int r = 0; r < n; r++) {
    cpu_set_t both;
    CPU_AND(&both, mine, &masks[r]);
    sharing += CPU_COUNT(&both) > 0;
  }
  const int t = CPU_COUNT(mine) / (sharing > 0 ? sharing : 1);
  return t > 0 ? t : 1;
}

int mpi_node_default_threads(void) {
  const int t = mpi_node_threads(); /* collective: on every rank, whatever its environment */
  const char *env = getenv("OMP_NUM_THREADS");
  if (env && *env) return omp_get_max_threads();
  omp_set_num_threads(t);
  return t;
}
