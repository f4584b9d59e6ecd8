#!/usr/bin/env python3
"""Print the OpenBLAS kernel the test executables of BUILDDIR run on this host
(openblas_get_corename() and openblas_get_config() of the library `coemu`
links, as `coemu version --verbose` reports them), so that a CI log says which
kernel ran (OPENBLAS_CORETYPE chooses it).
Usage: blas_core.py BUILDDIR"""
import os
import subprocess
import sys

exe = os.path.join(sys.argv[1] if len(sys.argv) > 1 else "build", "pipeline", "coemu")
try:
    out = subprocess.run([exe, "version", "--verbose"], capture_output=True, text=True,
                         timeout=60).stdout
    row = next(ln.strip() for ln in out.splitlines() if ln.strip().startswith("OpenBLAS "))
    config, _, kernel = row[len("OpenBLAS"):].strip().rpartition("; kernel ")
    print(f"{kernel} ({config})")
except Exception as e:  # noqa: BLE001 - a report line, never a failure
    print(f"unknown ({type(e).__name__}: {e})")
