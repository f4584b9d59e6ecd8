#!/usr/bin/env bash
# Build coemu for aarch64 Linux (NVIDIA Grace, AWS Graviton) on an x86-64
# Debian 12 host and run its tests under qemu-user (docs/cluster.md,
# "aarch64 (Grace, Graviton)"). As root; installs what is missing:
#   - the cross compilers and qemu-user (Debian packages, amd64);
#   - a sysroot, /opt/arm64-sysroot: Debian 12's arm64 packages of what
#     scripts/setup.sh installs (Open MPI, its HDF5, ZeroMQ, FFTW, libyaml,
#     OpenBLAS, libpng, cfitsio, libxxhash), downloaded and unpacked with
#     dpkg -x, not installed: multiarch -dev packages would replace the
#     host's amd64 MPI and HDF5 (apt's dry run removes them). apt needs the
#     arm64 architecture added (dpkg --add-architecture) to resolve them;
#   - qemu-aarch64 registered with binfmt_misc, so that the tests' Python and
#     shell drivers (and the host's mpiexec) can start the aarch64 binaries.
#   scripts/cross-check-arm64.sh             -Dnative=false, qemu's default CPU
#                                            (build dir /tmp/build-arm64)
#   scripts/cross-check-arm64.sh --grace     for Grace's cores (Neoverse V2: Armv9-A, SVE2):
#                                            -mcpu=neoverse-v2, or -mcpu=neoverse-n2 where the
#                                            compiler has no V2 (GCC 12), run as qemu's "max"
#                                            CPU (/tmp/build-arm64-grace)
#   scripts/cross-check-arm64.sh [...] --suite NAME   only meson suite NAME; repeatable
# BUILD_DIR overrides the build directory. Prints one closing line:
#   cross-check-arm64 (VARIANT, DIR): N compiler warnings; N ok, N expected fail, N failed,
#   N timed out, N skipped (T s ...); the build and test logs in DIR
# The CUDA parts are off (-Dcuda=disabled); the CUDA emulator's check needs
# the build machine's compiler and is not registered in a cross build.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
t0=$(date +%s)
variant=portable
suites=()
while [ $# -gt 0 ]; do
  case "$1" in
    --grace) variant=grace ;;
    --suite)
      [ $# -ge 2 ] || { echo "cross-check-arm64: --suite needs a meson suite name" >&2; exit 2; }
      suites+=(--suite "$2")
      shift ;;
    *) echo "usage: scripts/cross-check-arm64.sh [--grace] [--suite NAME]..." >&2; exit 2 ;;
  esac
  shift
done
[ "$(id -u)" -eq 0 ] || { echo "cross-check-arm64: run as root (apt, binfmt_misc)" >&2; exit 2; }

sysroot=/opt/arm64-sysroot   # as in scripts/cross/aarch64-linux-gnu.ini
debs=/opt/arm64-debs
# the arm64 counterparts of scripts/setup.sh's libraries (and their run-time
# libraries: libc, libgomp, libgfortran for OpenBLAS, libstdc++ for ZeroMQ)
arm_pkgs=(libc6-dev libgomp1 libstdc++6 libgfortran5 libopenmpi-dev libhdf5-openmpi-dev
          libzmq3-dev libfftw3-dev libyaml-dev libopenblas-dev libpng-dev libcfitsio-dev
          zlib1g-dev libxxhash0)
# the host's own build tools (meson, ninja, python3 modules, mpiexec), the
# cross compilers and qemu-user
bash scripts/setup.sh --arm64
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  echo "cross-check-arm64: adding the arm64 architecture to apt (for the sysroot's packages)"
  dpkg --add-architecture arm64
  apt-get update -qq
fi

# The sysroot, remade when the package list changes (its stamp).
stamp="$sysroot/.coemu-sysroot"
want="${arm_pkgs[*]}"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "cross-check-arm64: making $sysroot"
  rm -rf "$sysroot" "$debs"
  mkdir -p "$sysroot" "$debs"
  # apt resolves the dependencies (a dry run: nothing is installed); every
  # arm64 package it would install, at the version it names, is unpacked
  args=()
  for p in "${arm_pkgs[@]}"; do args+=("$p:arm64"); done
  DEBIAN_FRONTEND=noninteractive apt-get install --dry-run -y --no-install-recommends "${args[@]}" |
    sed -nE 's/^Inst ([^ ]+:arm64) (\[[^]]*\] )?\(([^ ]+) .*/\1=\3/p' > "$debs/list.txt"
  [ -s "$debs/list.txt" ] || { echo "cross-check-arm64: apt resolved no arm64 package" >&2; exit 1; }
  # the arm64 packages already installed on the host (none, normally) are not in the dry run
  (cd "$debs" && xargs apt-get download -qq < list.txt 2>/dev/null)
  for d in "$debs"/*.deb; do dpkg -x "$d" "$sysroot"; done
  # absolute links (libm.so -> /lib/...) point into the sysroot instead
  find "$sysroot" -type l -lname '/*' | while read -r l; do
    ln -sfn "$(realpath -m --relative-to="$(dirname "$l")" "$sysroot$(readlink "$l")")" "$l"
  done
  # what update-alternatives would have made: OpenBLAS as libopenblas, libblas, liblapack
  (cd "$sysroot/usr/lib/aarch64-linux-gnu" &&
    ln -sfn ../openblas-pthread/pkgconfig/openblas.pc pkgconfig/openblas.pc &&
    for l in libopenblas.so.0 libblas.so.3 liblapack.so.3; do ln -sfn "openblas-pthread/$l" "$l"; done)
  echo "$want" > "$stamp"
  echo "cross-check-arm64: $(wc -l < "$debs/list.txt") arm64 packages in $sysroot ($(du -sh "$sysroot" | cut -f1))"
fi

# binfmt_misc: aarch64 executables started by the tests' drivers run in qemu
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  cat /usr/lib/binfmt.d/qemu-aarch64.conf > /proc/sys/fs/binfmt_misc/register
fi
export QEMU_LD_PREFIX="$sysroot"   # where qemu finds the aarch64 loader and libraries
# Open MPI's shared-memory transport tries single-copy reads between ranks
# (process_vm_readv), which qemu-user does not provide: plain copies
export OMPI_MCA_btl_vader_single_copy_mechanism=none

cross=scripts/cross/aarch64-linux-gnu.ini
if [ "$variant" = grace ]; then
  builddir=${BUILD_DIR:-/tmp/build-arm64-grace}
  cpu=neoverse-v2
  echo 'int x;' | aarch64-linux-gnu-gcc -mcpu=$cpu -x c -c - -o /dev/null 2>/dev/null || cpu=neoverse-n2
  setup_args=(-Dnative=false -Dc_args=-mcpu=$cpu -Dcpp_args=-mcpu=$cpu)
  variant="grace, -mcpu=$cpu"
  export QEMU_CPU=max   # SVE2 and the Armv9 extensions neoverse-v2 code may use
else
  builddir=${BUILD_DIR:-/tmp/build-arm64}
  setup_args=(-Dnative=false)
fi
if [ ! -f "$builddir/build.ninja" ]; then
  nice -n 10 meson setup "$builddir" --cross-file "$cross" -Dcuda=disabled "${setup_args[@]}" >/dev/null
fi
nice -n 10 ninja -C "$builddir" -j2 > "$builddir/cross-check-build.log" ||
  { tail -30 "$builddir/cross-check-build.log"; exit 1; }
warnings=$(grep -c 'warning:' "$builddir/cross-check-build.log" || true)
t_build=$(($(date +%s) - t0))

# Everything runs emulated, 5-20 times slower than natively: the timeouts
# grow to match; two tests at a time on this host's 2 cores.
rc=0
nice -n 10 meson test -C "$builddir" --no-rebuild --num-processes 2 --timeout-multiplier 10 \
  --print-errorlogs "${suites[@]}" > "$builddir/cross-check.log" 2>&1 || rc=$?
grep -E '^ *[0-9]+/[0-9]+ ' "$builddir/cross-check.log" | grep -vE ' (OK|EXPECTEDFAIL|SKIP) ' || true
count() { sed -nE "s/^$1: +([0-9]+).*/\1/p" "$builddir/cross-check.log" | tail -1; }
echo "cross-check-arm64 ($variant, $builddir): $warnings compiler warnings; $(count Ok) ok, $(count 'Expected Fail') expected fail," \
  "$(count Fail) failed, $(count Timeout) timed out, $(count Skipped) skipped" \
  "($(($(date +%s) - t0)) s, of which setup and build $t_build s; log $builddir/cross-check.log)"
exit $rc
