"""The guard behind meson suite 'blas' (tests/meson.build, trainer/layers_cpu.c):
a program that reaches coemu's sgemm under COEMU_TEST_BLAS=forbidden ends
with exit status 3 and a line naming the suite, from a parallel region too,
before any product is computed; any other value of the variable, or none,
leaves it alone. Usage: test_blas_guard.py TEST_LAYERS_EXE (a program whose
every run reaches sgemm on two OpenMP threads). Prints "N passed, N failed"."""
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, report  # noqa: E402

EXE = sys.argv[1]


def run(value):
    env = dict(os.environ, OMP_NUM_THREADS="2")
    env.pop("COEMU_TEST_BLAS", None)
    if value is not None:
        env["COEMU_TEST_BLAS"] = value
    return subprocess.run([EXE], capture_output=True, text=True, timeout=120, env=env)


r = run("forbidden")
check(r.returncode == 3, f"forbidden: exit status 3, not {r.returncode}: {r.stderr[-400:]}")
check("add it to meson suite 'blas'" in r.stderr and "sgemm" in r.stderr,
      f"forbidden: the line says which suite: {r.stderr[-400:]}")
check(" passed, " not in r.stdout, f"forbidden: stopped at its first product: {r.stdout[-300:]}")
for value in ("allowed", None, "Forbidden"):
    r = run(value)
    check(r.returncode == 0 and "sgemm" not in r.stderr,
          f"COEMU_TEST_BLAS={value}: the program runs: {r.returncode} {r.stderr[-300:]}")
report()
