#!/bin/sh
# mpiexec for the MPI tests, of the MPI the build links (meson's -Dmpi:
# COEMU_MPI_LAUNCHER is that MPI's mpiexec, COEMU_MPI_FLAVOUR its family,
# openmpi, mpich or other, from its mpi.h; tests/meson.build sets both). The tests speak Open MPI's options;
# MPICH's Hydra refuses options it does not know, so for it
# --allow-run-as-root and --oversubscribe are dropped (Hydra runs as root and
# oversubscribes without being asked) and -x NAME=VALUE (an environment
# variable for every rank) becomes -genv NAME VALUE.
#
# Under the sanitizer build (COEMU_SANITIZE=1), leak checking is switched off
# in MPI processes: Open MPI unloads its plugins at MPI_Finalize, so
# LeakSanitizer sees their one-time allocations as leaks in "unknown modules"
# that no suppression can name. AddressSanitizer and UBSan stay on; coemu's
# own leaks are checked by the non-MPI tests.
if [ -n "${COEMU_SANITIZE:-}" ]; then
  ASAN_OPTIONS="${ASAN_OPTIONS:-}:detect_leaks=0"
  export ASAN_OPTIONS
fi
launcher="${COEMU_MPI_LAUNCHER:-mpiexec}"
if [ "${COEMU_MPI_FLAVOUR:-openmpi}" = "mpich" ]; then
  n=$#
  while [ "$n" -gt 0 ]; do
    a="$1"
    shift
    n=$((n - 1))
    case "$a" in
      --allow-run-as-root | --oversubscribe) ;;
      -x)
        v="$1"
        shift
        n=$((n - 1))
        case "$v" in
          *=*) set -- "$@" -genv "${v%%=*}" "${v#*=}" ;;
          *) set -- "$@" -genvlist "$v" ;;
        esac
        ;;
      *) set -- "$@" "$a" ;;
    esac
  done
  exec "$launcher" "$@"
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
exec "$launcher" "$@"
