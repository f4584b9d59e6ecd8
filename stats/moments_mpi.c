/* moments_mpi.c - the MPI reduction of exact moments (see moments_mpi.h). */
#include "stats/moments_mpi.h"

#include <stdlib.h>

#include "common/error.h"

int stats_moments_allreduce(stats_moments *m, MPI_Comm comm) {
  int size, rank;
  if (MPI_Comm_size(comm, &size) != MPI_SUCCESS || MPI_Comm_rank(comm, &rank) != MPI_SUCCESS)
    CE_FAIL("stats_moments_allreduce: MPI_Comm_size/rank failed");
  stats_moments_packed w;
  stats_moments_pack(m, &w);
  stats_moments_packed *all =
      ce_malloc_array((size_t)size, sizeof(stats_moments_packed), "moments of all ranks");
  if (!all) return -1;
  if (MPI_Allgather(&w, (int)sizeof w, MPI_BYTE, all, (int)sizeof w, MPI_BYTE, comm) !=
      MPI_SUCCESS) {
    free(all);
    CE_FAIL("stats_moments_allreduce: MPI_Allgather of %zu bytes failed", sizeof w);
  }
  /* Integer sums: the order does not matter; rank order anyway. */
  stats_moments_init(m);
  for (int r = 0; r < size; r++) stats_moments_merge_packed(m, &all[r]);
  free(all);
  return 0;
}
