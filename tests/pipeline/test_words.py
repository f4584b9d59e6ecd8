#!/usr/bin/env python3
"""What coemu says to its users (issue 15, "Words"), checked on the binary:
  - `coemu inspect DATASET` gives the channels as velocities in km/s and
    frequencies in GHz (with the line's rest frequency), to 1 m/s and 1 kHz,
    not as 17-digit Hz;
  - a model without a units sidecar names the job key that gives one,
    inputs.amrvac.units;
  - `coemu --help` says inspect reads datasets as well as AMRVAC snapshots.
(`coemu solve`'s J=2-1 is in tests/solver/test_solve_cli.py, `eval --maps`
above the batch in test_train.py, help against docs in test_cli_docs.py.)
Env: COEMU (binary), COEMU_SOURCE_ROOT."""
import os
import re
import shutil
import subprocess
import sys
import tempfile

COEMU = os.environ.get("COEMU", "build/pipeline/coemu")
ROOT = os.environ.get("COEMU_SOURCE_ROOT", ".")
LAMDA = os.path.join(os.path.abspath(ROOT), "tests", "data", "lamda", "co.dat")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, mpi_singleton_env, report  # noqa: E402

# reconstruction constant: the 1-level model's star is one 19 au cell, which
# linear spreads below the ln I clip in every pixel (docs/sampling.md), and
# coemu stats cannot normalise a dataset of clipped pixels only
JOB = f"""name: words
inputs: {{amrvac: {{glob: m/*.dat}}}}
sampling: {{directions: 1, sampler: haar, n: 16, edge: 3.0e13, k: 1, seed: 11, reconstruction: constant}}
line: {{lamda: {LAMDA}, transition: 2, channels: {{mode: coemunet}}}}
output: {{directory: unused, samples_per_shard: 4}}
splits: {{train: 1.0, validation: 0.0, test: 0.0, seed: 2}}
"""


def run(*args):
    env = mpi_singleton_env() if args and args[0] in ("generate", "stats") else None
    return subprocess.run([COEMU, *map(str, args)], capture_output=True, text=True, timeout=300,
                          env=env)


r = subprocess.run([COEMU, "--help"], capture_output=True, text=True, timeout=60)
line = next((x for x in r.stdout.split("\n") if x.strip().startswith("inspect ")), "")
check("AMRVAC snapshot" in line and "dataset" in line, f"coemu --help: {line!r}")

with tempfile.TemporaryDirectory() as tmp:
    m = os.path.join(tmp, "m")
    r = run("synth", "--n", 1, "--seed", 3, "--out", m, "--levels", 1, "--quiet")
    check(r.returncode == 0, f"synth: {r.stderr}")
    job = os.path.join(tmp, "job.yaml")
    open(job, "w").write(JOB)
    d = os.path.join(tmp, "d")
    r = run("generate", job, "--out", d, "--quiet")
    check(r.returncode == 0, f"generate: {r.stderr[-1500:]}")

    r = run("inspect", d)
    check(r.returncode == 0, f"inspect: {r.stderr}")
    # the 7 COEmuNet channels of CO J=2-1, frequency rising: +900..-900 m/s under
    # nu = nu0 (1 - v/c) (docs/physics.md)
    check("channels  7, velocity (km/s): 0.900 0.600 0.300 0.000 -0.300 -0.600 -0.900\n" in r.stdout,
          f"inspect gives channel velocities in km/s: {r.stdout!r}")
    check("frequency (GHz): 230.537308 230.537539 230.537769 230.538000 230.538231 230.538461 "
          "230.538692 (line rest frequency 230.538000 GHz)\n" in r.stdout,
          f"inspect gives channel frequencies in GHz: {r.stdout!r}")
    check(not re.search(r"\d{12,}", r.stdout), f"no 17-digit numbers: {r.stdout!r}")

    # no sidecar: the message names the job key that gives one
    shutil.move(os.path.join(m, "synth_00000.units.yaml"), os.path.join(tmp, "u.yaml"))
    r = run("generate", job, "--out", os.path.join(tmp, "d2"), "--quiet")
    check(r.returncode == 1 and "synth_00000.dat: no units sidecar" in r.stderr
          and "inputs.amrvac.units in the job" in r.stderr,
          f"a missing sidecar names inputs.amrvac.units: {r.returncode} {r.stderr[-600:]}")
    # ... and that key is the one that works
    open(job, "w").write(JOB.replace("glob: m/*.dat", f"glob: m/*.dat, units: {tmp}/u.yaml"))
    r = run("generate", job, "--out", os.path.join(tmp, "d3"), "--quiet")
    check(r.returncode == 0, f"inputs.amrvac.units given: {r.stderr[-600:]}")

report()
