/* mpi_fatal.h - failing an MPI command as a whole.
 *
 * Two ways down, by what the failure is:
 *
 * - An error every rank reaches in step (a bad job file, an input file that
 *   cannot be read, a shard that cannot be written, found while the ranks
 *   are between the same collectives): mpi_agree() is a collective "did any
 *   rank fail?". When one did, the lowest failing rank prints its message
 *   ("coemu CMD: rank R: error: MSG"), every rank runs the cleanup hook,
 *   calls MPI_Finalize and exits with status 1: one message, no MPI_ABORT
 *   banner, and mpirun returns 1.
 *
 * - A failure on one rank while its peers may be waiting for it elsewhere (in
 *   MPI's own calls: MPI_ERRORS handler; an internal invariant): mpi_fatal()
 *   prints the message and calls MPI_Abort, because a rank that merely
 *   returned would leave the others waiting in a collective for ever.
 *
 * mpi_fatal_init() records the command and rank and installs an MPI error
 * handler on MPI_COMM_WORLD that calls mpi_fatal() for MPI's own errors.
 */
#ifndef COEMU_MPI_FATAL_H
#define COEMU_MPI_FATAL_H

/* After MPI_Init. */
void mpi_fatal_init(const char *cmd);
_Noreturn void mpi_fatal(const char *msg);
/* The rank recorded by mpi_fatal_init(). */
int mpi_fatal_rank(void);

/* Collective over MPI_COMM_WORLD: rc is this rank's status (0, or < 0 with
 * the message set, common/error.h; MPI_AGREE_PEER for "I failed because
 * another rank did", which yields to a rank's own message). Returns when
 * every rank passed 0; otherwise the lowest rank with a failure of its own
 * prints its message, the cleanup hook runs, and every rank finalises MPI
 * and exits with 1. */
#define MPI_AGREE_PEER (-2)
void mpi_agree(int rc);

/* Collective like mpi_agree, but returns instead of exiting: 1 when some
 * rank failed (the lowest failing rank has printed its message), else 0. */
int mpi_any_failed(int rc);

/* A function mpi_agree() runs on every rank before MPI_Finalize when it
 * exits (e.g. remove the output folder this run created); NULL: none. */
void mpi_set_cleanup(void (*fn)(void *ctx), void *ctx);

#endif
