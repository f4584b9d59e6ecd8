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
  - where qemu is installed (scripts/setup.sh --portable; the aarch64
    cross build's own): coemu started on an emulated older CPU (x86: a
    Nehalem, SSE4.2 and no AVX; aarch64: a Cortex-A57, Armv8.0) exits with
    status 1 naming exactly the sets that CPU lacks, or, when the build
    needs none of them (-Dnative=false), runs the solver there (the portable
    build really runs on the baseline: a native build without the check
    dies of SIGILL);
  - `coemu version --verbose` names the same sets (meson's list, passed
    here), this node, and one row for each part of the build, library and
    machine, exit 0; a bad option is a usage error.
Prints "N passed, N failed"."""
import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, report  # noqa: E402

args = sys.argv[1:]
COEMU = args[args.index("--coemu") + 1]
REQUIRED = args[args.index("--required") + 1].split()
# an older CPU that qemu emulates, and what it has of the checked sets
WRAPPER = shlex.split(os.environ.get("MESON_EXE_WRAPPER", ""))  # a cross build's qemu
if platform.machine() == "x86_64" and not WRAPPER:
    QEMU, OLD_CPU, OLD_HAS = "qemu-x86_64", "Nehalem", {"popcnt", "sse3", "ssse3", "sse4.1", "sse4.2"}
else:  # aarch64, natively or under the cross build's qemu-aarch64: Armv8.0 with crypto
    QEMU, OLD_CPU, OLD_HAS = "qemu-aarch64", "cortex-a57", {"crc32", "aes", "sha2"}


def run(cmd, **env):
    if cmd[0] == COEMU:
        cmd = WRAPPER + cmd
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, **env))


def refused(r, lacks, what):
    err = r.stderr
    check(r.returncode == 1 and r.stdout == "", f"{what}: status {r.returncode} (expected 1), stdout {r.stdout[:200]!r}")
    check(err.startswith("coemu: error: this coemu was built for CPUs with " + " ".join(REQUIRED) + " (")
          and f"the CPU of {socket.gethostname()} lacks {' '.join(lacks)}:" in err
          and "-Dnative=false" in err and "docs/cluster.md" in err and err.count("\n") == 1,
          f"{what}: one line naming the node, the build's sets and the missing ones ({' '.join(lacks)}): {err!r}")


r = run([COEMU, "--version"])
check(r.returncode == 0 and r.stdout.startswith("coemu "), f"coemu starts on this host: {r.returncode} {r.stderr[-300:]}")
v = run([COEMU, "version", "--verbose"])
rows = {}
for line in v.stdout.splitlines():
    if line.startswith("  "):
        key, _, val = line[2:].partition("  ")
        rows.setdefault(key.strip(), val.strip())
check(v.returncode == 0 and v.stdout.startswith(r.stdout) and v.stderr == "",
      f"version --verbose: status {v.returncode}, starts with --version's line: {v.stdout[:200]!r} {v.stderr[-300:]!r}")
want = ["compiler", "build type", "instruction sets", "MPI", "CUDA", "sanitize", "HDF5", "ZeroMQ",
        "libyaml", "FFTW", "OpenBLAS", "node", "CPU", "OpenMP", "solver, cpu", "solver, cuda"]
check(all(rows.get(k) for k in want), f"version --verbose: a row for each of {want}: {sorted(rows)}")
isa = rows.get("instruction sets", "")
check(isa.endswith(": " + " ".join(REQUIRED)) if REQUIRED else "none beyond the baseline" in isa,
      f"version --verbose names meson's instruction sets {REQUIRED}: {isa!r}")
check(rows.get("node") == socket.gethostname(), f"version --verbose: node {rows.get('node')!r}")
u = run([COEMU, "version", "--verbos"])
check(u.returncode == 2 and "--verbos" in u.stderr, f"version --verbos: usage error {u.returncode} {u.stderr!r}")
if REQUIRED:
    refused(run([COEMU, "--version"], COEMU_TEST_CPU_LACKS=REQUIRED[-1]), [REQUIRED[-1]], "one set missing")
    lacks = [REQUIRED[0], REQUIRED[-1]] if len(REQUIRED) > 1 else REQUIRED
    refused(run([COEMU, "solve", "--help"], COEMU_TEST_CPU_LACKS=" ".join(reversed(lacks))), lacks,
            "two sets missing, any command")
else:
    r = run([COEMU, "--version"], COEMU_TEST_CPU_LACKS="avx2 avx512f")
    check(r.returncode == 0, f"a build that needs nothing beyond x86-64 checks nothing: {r.returncode} {r.stderr[-300:]}")

qemu = shutil.which(QEMU)
if not qemu:
    print(f"{QEMU} not installed (scripts/setup.sh --portable installs it): the emulated CPU is not tried")
elif os.environ.get("COEMU_SANITIZE"):
    print("sanitizer build: not started under qemu")
else:
    # a cross build's wrapper carries the sysroot (-L): keep it, add the CPU
    old = (WRAPPER or [qemu]) + ["-cpu", OLD_CPU, COEMU]
    missing = [f for f in REQUIRED if f not in OLD_HAS]
    if missing:
        refused(run(old + ["--version"]), missing, f"an emulated {OLD_CPU}")
    else:
        r = run(old + ["bench", "solver", "--reps", "1", "--size", "16", "--threads", "1", "--batch", "1"],
                OMP_NUM_THREADS="1")
        check(r.returncode == 0 and "solver lte16" in r.stdout,
              f"the solver runs on an emulated {OLD_CPU}: {r.returncode} {r.stdout[-300:]} {r.stderr[-500:]}")
report()
