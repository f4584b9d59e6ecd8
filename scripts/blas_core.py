#!/usr/bin/env python3
"""Print the OpenBLAS kernel the test executables of BUILDDIR run on this host
(openblas_get_corename(), openblas_get_config() of the library `coemu` links),
so that a CI log says which kernel ran (OPENBLAS_CORETYPE chooses it).
Usage: blas_core.py BUILDDIR"""
import ctypes
import os
import re
import subprocess
import sys

exe = os.path.join(sys.argv[1] if len(sys.argv) > 1 else "build", "pipeline", "coemu")
try:
    ldd = subprocess.run(["ldd", exe], capture_output=True, text=True).stdout
    path = re.search(r"(\S*openblas\S*)\s+=>\s+(\S+)", ldd).group(2)
    lib = ctypes.CDLL(path)
    for f in (lib.openblas_get_corename, lib.openblas_get_config):
        f.restype = ctypes.c_char_p
    print(f"{lib.openblas_get_corename().decode()} ({lib.openblas_get_config().decode().strip()})")
except Exception as e:  # noqa: BLE001 - a report line, never a failure
    print(f"unknown ({type(e).__name__}: {e})")
