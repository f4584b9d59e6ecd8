#!/bin/sh
# mpiexec for the MPI tests. Under the sanitizer build (COEMU_SANITIZE=1),
# leak checking is switched off in MPI processes: Open MPI unloads its
# plugins at MPI_Finalize, so LeakSanitizer sees their one-time allocations
# as leaks in "unknown modules" that no suppression can name. AddressSanitizer
# and UBSan stay on; coemu's own leaks are checked by the non-MPI tests.
if [ -n "${COEMU_SANITIZE:-}" ]; then
  ASAN_OPTIONS="${ASAN_OPTIONS:-}:detect_leaks=0"
  export ASAN_OPTIONS
fi
# One process: when it exits non-zero, Open MPI's mpiexec "kills" the job all
# the same, waiting odls_base_sigkill_timeout (1 s) twice for a process that is
# gone; ~2 s per failing run, and the suite checks ~25 of them a run. With
# more processes the wait stays: a rank still running gets its SIGTERM grace.
prev=""
for a in "$@"; do
  if [ "$prev" = "-n" ] || [ "$prev" = "-np" ]; then
    if [ "$a" = "1" ] && [ -z "${OMPI_MCA_odls_base_sigkill_timeout:-}" ]; then
      OMPI_MCA_odls_base_sigkill_timeout=0
      export OMPI_MCA_odls_base_sigkill_timeout
    fi
  fi
  prev="$a"
done
exec mpiexec "$@"
