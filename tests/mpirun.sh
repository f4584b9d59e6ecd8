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
exec mpiexec "$@"
