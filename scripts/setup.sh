#!/usr/bin/env bash
# Install what coemu needs on Debian 12 (as root), skipping what is present.
# Debian packages: compiler, meson/ninja, OpenMPI, parallel HDF5 (openmpi
# flavour), ZeroMQ, FFTW, libyaml, OpenBLAS, libpng, cfitsio. Python
# packages used by the interoperability tests: numpy, h5py, pyzmq; torch
# (python3-torch), wheel and libxxhash for the Python package's tests
# (tests/python: they run with Debian's python3 when the python3 first on
# PATH has no torch).
#   scripts/setup.sh           the above
#   scripts/setup.sh --mpich   and MPICH with its HDF5 beside Open MPI, for a
#                              -Dmpi=mpich build (scripts/test.sh --mpich)
#   scripts/setup.sh --clang   and clang with LLVM's OpenMP runtime, for a
#                              CC=clang build (scripts/test.sh --clang)
#   scripts/setup.sh --arm64   and the aarch64 cross compilers and qemu-user
#                              (scripts/cross-check-arm64.sh)
#   scripts/setup.sh --portable
#                              and qemu-user, whose emulated older x86 CPU
#                              tests/common/test_cpu_check.py starts coemu on
#                              (scripts/test.sh --portable)
set -euo pipefail

pkgs=(build-essential pkg-config meson ninja-build git
      openmpi-bin libopenmpi-dev libhdf5-openmpi-dev hdf5-tools
      libzmq3-dev libfftw3-dev libyaml-dev libopenblas-dev libpng-dev
      libcfitsio-dev zlib1g-dev python3 python3-pip python3-numpy python3-h5py
      python3-zmq python3-torch python3-wheel libxxhash0)
case "${1:-}" in
  --mpich) pkgs+=(mpich libmpich-dev libhdf5-mpich-dev) ;;
  --clang) pkgs+=(clang libomp-dev) ;;
  --portable) pkgs+=(qemu-user) ;;
  --arm64) pkgs+=(gcc-aarch64-linux-gnu g++-aarch64-linux-gnu binutils-aarch64-linux-gnu
                  qemu-user qemu-user-binfmt) ;;
  "") ;;
  *) echo "usage: scripts/setup.sh [--mpich | --clang | --arm64 | --portable]" >&2; exit 2 ;;
esac

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The python3 first on PATH may not be Debian's (pyenv, conda): make sure it
# has the modules the tests use.
if ! python3 -c 'import numpy, h5py, zmq' 2>/dev/null; then
  echo "setup: installing numpy h5py pyzmq for $(command -v python3)"
  python3 -m pip install -q numpy h5py pyzmq 2>/dev/null ||
    python3 -m pip install -q --break-system-packages numpy h5py pyzmq
fi
