#!/usr/bin/env python3
"""coemu bench lvg: usage errors (status 2) name the option and what was
expected (the line range read from the molecule file), and a run-time
failure (status 1) names the file. The benchmark itself (seconds per model)
is not run here. Env: COEMU, COEMU_SOURCE_ROOT."""
import os
import subprocess
import sys

COEMU = os.environ.get("COEMU", "build/pipeline/coemu")
ROOT = os.environ.get("COEMU_SOURCE_ROOT", ".")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, report  # noqa: E402

HCN = os.path.join(ROOT, "tests", "data", "lamda", "hcn.dat")


def run(*args):
    p = subprocess.run([COEMU, "bench", "lvg", *map(str, args)], capture_output=True, text=True,
                       timeout=120)
    return p.returncode, p.stdout, p.stderr


rc, out, err = run("--help")
check(rc == 0 and all(o in out for o in ["--mol", "--line", "--ndir", "--escape", "--vturb", "--tol",
                                          "--max-threads", "--index", "--levels", "--seed"]),
      f"--help lists every option: {out}")
for args, want in [(["--line", 99], "--line 99: expected 1..40"),
                   (["--mol", HCN, "--line", 0], "--line 0: expected 1..25"),
                   (["--ndir", 7], "--ndir 7: expected 3 or 2 m^2"),
                   (["--escape", "x"], "--escape x: expected sobolev or radex"),
                   (["--levels", 9], "--levels 9: expected 1..6"),
                   (["--tol", 2], "--tol 2: expected in (0, 1)"),
                   (["--vturb", -1], "--vturb -1: expected >= 0")]:
    rc, out, err = run(*args)
    check(rc == 2 and want in err, f"{args}: status {rc}, {err!r}")
rc, out, err = run("--mol", "/no/such/molecule.dat")
check(rc == 1 and "/no/such/molecule.dat" in err, f"missing molecule file: {rc} {err!r}")
sys.exit(report())
