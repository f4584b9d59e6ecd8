/* mpi_fatal.h - failing an MPI command as a whole.
 *
 * An error on one rank must take every rank down: a rank that merely
 * returned would leave the others waiting for it in a collective forever.
 * mpi_fatal() prints "coemu CMD: rank R: error: MSG" and calls MPI_Abort;
 * mpi_fatal_init() records the command and rank and installs an MPI error
 * handler on MPI_COMM_WORLD that does the same for MPI's own errors.
 */
#ifndef COEMU_MPI_FATAL_H
#define COEMU_MPI_FATAL_H

/* After MPI_Init. */
void mpi_fatal_init(const char *cmd);
_Noreturn void mpi_fatal(const char *msg);
/* The rank recorded by mpi_fatal_init(). */
int mpi_fatal_rank(void);

#endif
