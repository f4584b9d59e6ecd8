#!/usr/bin/env python3
"""test_cpu_check.py - coemu started on a CPU without the instruction sets
it was built for stops with a clear error, not "Illegal instruction"
(common/cpu_check.c; docs/cluster.md, "Build nodes and compute nodes").

  - on this host coemu starts (the build host's CPU has what it was built for);
  - COEMU_TEST_CPU_LACKS=... makes the check take instruction sets as
    missing: coemu then exits with status 1 before anything else, naming
    the node, the sets the build needs, the ones missing and both ways out,
    and prints nothing on stdout; a build that needs nothing beyond x86-64
    (-Dnative=false) ignores it;
  - where qemu-x86_64 is installed (scripts/setup.sh --portable): coemu
    started on an emulated Nehalem (SSE4.2, no AVX) exits with status 1
    naming exactly the sets Nehalem lacks, or, when the build needs none of
    them (-Dnative=false), runs the solver there (the portable build really
    runs on any x86-64: a native build without the check dies of SIGILL).
Prints "N passed, N failed"."""
import os
import shutil
import socket
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, report  # noqa: E402

args = sys.argv[1:]
COEMU = args[args.index("--coemu") + 1]
REQUIRED = args[args.index("--required") + 1].split()
NEHALEM = {"popcnt", "sse3", "ssse3", "sse4.1", "sse4.2"}  # qemu's Nehalem model


def run(cmd, **env):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=dict(os.environ, **env))


def refused(r, lacks, what):
    err = r.stderr
    check(r.returncode == 1 and r.stdout == "", f"{what}: status {r.returncode} (expected 1), stdout {r.stdout[:200]!r}")
    check(err.startswith("coemu: error: this coemu was built for CPUs with " + " ".join(REQUIRED) + " (")
          and f"the CPU of {socket.gethostname()} lacks {' '.join(lacks)}:" in err
          and "-Dnative=false" in err and "docs/cluster.md" in err and err.count("\n") == 1,
          f"{what}: one line naming the node, the build's sets and the missing ones ({' '.join(lacks)}): {err!r}")


r = run([COEMU, "--version"])
check(r.returncode == 0 and r.stdout.startswith("coemu "), f"coemu starts on this host: {r.returncode} {r.stderr[-300:]}")
if REQUIRED:
    refused(run([COEMU, "--version"], COEMU_TEST_CPU_LACKS=REQUIRED[-1]), [REQUIRED[-1]], "one set missing")
    lacks = [REQUIRED[0], REQUIRED[-1]] if len(REQUIRED) > 1 else REQUIRED
    refused(run([COEMU, "solve", "--help"], COEMU_TEST_CPU_LACKS=" ".join(reversed(lacks))), lacks,
            "two sets missing, any command")
else:
    r = run([COEMU, "--version"], COEMU_TEST_CPU_LACKS="avx2 avx512f")
    check(r.returncode == 0, f"a build that needs nothing beyond x86-64 checks nothing: {r.returncode} {r.stderr[-300:]}")

qemu = shutil.which("qemu-x86_64")
if not qemu:
    print("qemu-x86_64 not installed (scripts/setup.sh --portable installs it): the emulated CPU is not tried")
elif os.environ.get("COEMU_SANITIZE"):
    print("sanitizer build: not started under qemu")
else:
    missing = [f for f in REQUIRED if f not in NEHALEM]
    if missing:
        refused(run([qemu, "-cpu", "Nehalem", COEMU, "--version"]), missing, "an emulated Nehalem")
    else:
        r = run([qemu, "-cpu", "Nehalem", COEMU, "bench", "solver", "--reps", "1", "--size", "16",
                 "--threads", "1", "--batch", "1"], OMP_NUM_THREADS="1")
        check(r.returncode == 0 and "solver lte16" in r.stdout,
              f"the solver runs on an emulated Nehalem: {r.returncode} {r.stdout[-300:]} {r.stderr[-500:]}")
report()
