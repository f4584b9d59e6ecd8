/* test_mpi_node.c - OpenMP threads per rank from the CPUs a rank may run on
 * (pipeline/mpi/mpi_node.h), run with 1, 2 and 3 ranks on one node. Each
 * case sets every rank's affinity mask itself, as a launcher would leave
 * it, so the expected counts do not depend on how mpiexec bound the ranks:
 *   shared   every rank on the same CPUs (Hydra, mpirun --bind-to none):
 *            the CPUs divided among the ranks, at least 1;
 *   own      each rank on CPUs of its own (mpirun's --bind-to core, srun
 *            --cpus-per-task): all of them, where the host has enough CPUs;
 *   mixed    rank 0 alone on CPU 0, the others on every CPU: each counts
 *            the ranks its mask meets;
 * then mpi_node_default_threads() with and without OMP_NUM_THREADS. */
#include <mpi.h>
#include <omp.h>
#include <sched.h>
#include <stdlib.h>
#include <unistd.h>

#include "check_mpi.h"
#include "pipeline/mpi/mpi_node.h"

static int rank_, size_;

static int set_cpus(int first, int count) {
  cpu_set_t s;
  CPU_ZERO(&s);
  for (int c = first; c < first + count; c++) CPU_SET(c, &s);
  return sched_setaffinity(0, sizeof s, &s);
}

/* the rule alone, on the masks of bigger nodes than this one: a 64-CPU node
 * with 16 ranks bound to 4 CPUs each (srun --cpus-per-task=4), 64 ranks
 * unbound (Hydra), 64 ranks bound by socket (Open MPI's mpirun above 2
 * ranks: two sockets of 32), and ranks of a node bound unevenly */
static void masks_of(cpu_set_t *m, int n, int (*first)(int), int (*count)(int)) {
  for (int r = 0; r < n; r++) {
    CPU_ZERO(&m[r]);
    for (int c = first(r); c < first(r) + count(r); c++) CPU_SET(c, &m[r]);
  }
}
static int by4(int r) { return 4 * r; }
static int four(int r) { return 4; }
static int zero(int r) { return 0; }
static int all64(int r) { return 64; }
static int socket_of(int r) { return r < 32 ? 0 : 32; }
static int thirtytwo(int r) { return 32; }
static int uneven_first(int r) { return r == 0 ? 0 : 8; }   /* rank 0: 0-7; the rest: 8-63 */
static int uneven_count(int r) { return r == 0 ? 8 : 56; }

static void test_share_rule(void) {
  static cpu_set_t m[64];
  masks_of(m, 16, by4, four);
  for (int r = 0; r < 16; r++) CHECK_MSG(mpi_node_share(&m[r], m, 16) == 4, "bound rank %d", r);
  masks_of(m, 64, zero, all64);
  CHECK(mpi_node_share(&m[0], m, 64) == 1 && mpi_node_share(&m[63], m, 64) == 1);
  masks_of(m, 16, zero, all64);
  CHECK(mpi_node_share(&m[5], m, 16) == 4); /* 16 unbound ranks on 64 CPUs */
  masks_of(m, 64, socket_of, thirtytwo);
  CHECK(mpi_node_share(&m[0], m, 64) == 1 && mpi_node_share(&m[40], m, 64) == 1);
  masks_of(m, 4, socket_of, thirtytwo); /* 4 ranks, all on socket 0 */
  CHECK(mpi_node_share(&m[1], m, 4) == 8);
  masks_of(m, 8, uneven_first, uneven_count); /* rank 0 alone on 8, 7 ranks on 56 */
  CHECK(mpi_node_share(&m[0], m, 8) == 8 && mpi_node_share(&m[3], m, 8) == 8);
  masks_of(m, 1, zero, all64);
  CHECK(mpi_node_share(&m[0], m, 1) == 64);
  cpu_set_t none;
  CPU_ZERO(&none);
  CHECK(mpi_node_share(&none, m, 1) == 1); /* never 0 */
}

static void test_threads(void) {
  cpu_set_t orig;
  CHECK(sched_getaffinity(0, sizeof orig, &orig) == 0);
  const long online = sysconf(_SC_NPROCESSORS_ONLN);
  int ncpu = online > 0 ? (int)online : 1;
  if (ncpu > CPU_SETSIZE) ncpu = CPU_SETSIZE;

  /* shared: every rank on CPUs 0 .. ncpu-1 */
  CHECK(set_cpus(0, ncpu) == 0);
  int t = mpi_node_threads(), want = ncpu / size_ > 0 ? ncpu / size_ : 1;
  CHECK_MSG(t == want, "rank %d of %d, %d CPUs shared: %d threads, expected %d", rank_, size_,
            ncpu, t, want);

  /* own: rank r on CPUs r k .. r k + k - 1, k = ncpu / size (skipped, on
   * every rank alike, where that is 0) */
  const int k = ncpu / size_;
  if (k > 0) {
    CHECK(set_cpus(rank_ * k, k) == 0);
    t = mpi_node_threads();
    CHECK_MSG(t == k, "rank %d of %d, %d CPUs of its own: %d threads", rank_, size_, k, t);
  }

  /* mixed: rank 0 on CPU 0 (meets every rank), the others on every CPU
   * (meet each other and rank 0) */
  CHECK(rank_ == 0 ? set_cpus(0, 1) == 0 : set_cpus(0, ncpu) == 0);
  t = mpi_node_threads();
  want = rank_ == 0 ? 1 : (ncpu / size_ > 0 ? ncpu / size_ : 1);
  CHECK_MSG(t == want, "rank %d of %d, mixed masks: %d threads, expected %d", rank_, size_, t,
            want);

  /* the default: OMP_NUM_THREADS wins; without it, the share */
  CHECK(set_cpus(0, ncpu) == 0);
  want = ncpu / size_ > 0 ? ncpu / size_ : 1;
  setenv("OMP_NUM_THREADS", "3", 1);
  omp_set_num_threads(3);
  CHECK(mpi_node_default_threads() == 3 && omp_get_max_threads() == 3);
  unsetenv("OMP_NUM_THREADS");
  t = mpi_node_default_threads();
  CHECK_MSG(t == want && omp_get_max_threads() == want, "default: %d, omp %d, expected %d", t,
            omp_get_max_threads(), want);
  CHECK(sched_setaffinity(0, sizeof orig, &orig) == 0);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
  RUN(test_share_rule);
  RUN(test_threads);
  return check_mpi_finish();
}
