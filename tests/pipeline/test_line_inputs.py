#!/usr/bin/env python3
"""Input checks of a job for another line or other models (docs/jobs.md,
"Before the run" and "Line modes"): a molecule other than CO needs
line.abundance in LTE as in LVG (else it would be imaged at the models' CO
density), and an AMRVAC file the sampler refuses (a 2-D snapshot) is an
error of --check and of the run's start, naming the job's glob key, with no
"ok" line and no folder left behind.  Prints "N passed, N failed"."""
import os
import re
import shutil
import subprocess
import sys

import h5py

COEMU = os.environ.get("COEMU", "build/pipeline/coemu")
ROOT = os.environ.get("COEMU_SOURCE_ROOT", ".")
LAMDA = os.path.join(ROOT, "tests", "data", "lamda")
AMRVAC = os.path.join(ROOT, "tests", "data", "amrvac")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, mpi_singleton_env, run_in_tmpdir, sanitizer_full_stacks  # noqa: E402

sanitizer_full_stacks()

JOB = """name: {name}
inputs:
  {inputs}
sampling: {{directions: 1, n: 4, k: 1}}
line: {{lamda: {lamda}{extra}}}
output: {{samples_per_shard: 1}}
splits: {{train: 1.0, validation: 0.0, test: 0.0}}
"""
SYNTH = "synth: {count: 1, seed: 1, levels: 1}"


def run(args):
    return subprocess.run(args, capture_output=True, text=True, timeout=300, env=mpi_singleton_env())


def write(tmp, name, **kw):
    kw.setdefault("inputs", SYNTH)
    kw.setdefault("lamda", "builtin:co.dat")
    kw.setdefault("extra", "")
    path = os.path.join(tmp, name + ".yaml")
    open(path, "w").write(JOB.format(name=name, **kw))
    return path


def refused(tmp, name, path, want):
    """--check and the run fail with `want` after the job's path, and leave nothing."""
    r = run([COEMU, "generate", path, "--check"])
    check(r.returncode == 1 and re.search(re.escape(path) + want, r.stderr),
          f"{name}, --check: exit {r.returncode}, {r.stderr.strip()[-400:]}")
    check(": ok: " not in r.stdout, f"{name}, --check: no 'ok' line ({r.stdout.strip()[:200]})")
    out = os.path.join(tmp, name + "-out")
    r = run([COEMU, "generate", path, "--out", out, "--quiet"])
    check(r.returncode == 1 and re.search(re.escape(path) + want, r.stderr),
          f"{name}, run: exit {r.returncode}, {r.stderr.strip()[-400:]}")
    check(not os.path.exists(out), f"{name}, run: a failed start leaves no folder")


def accepted(name, path):
    r = run([COEMU, "generate", path, "--check"])
    check(r.returncode == 0 and ": ok: " in r.stdout, f"{name}, --check: {r.stderr.strip()[-400:]}")


def main(tmp):
    hcn = os.path.join(LAMDA, "hcn.dat")
    # another molecule in LTE: without its abundance it would be imaged at n_CO
    refused(tmp, "hcn-lte-no-x", write(tmp, "hcn-lte-no-x", lamda=hcn, extra=", transition: 3"),
            r":5:\d+: line\.lamda: .*hcn\.dat is HCN, not CO: line\.mode lte needs its abundance")
    refused(tmp, "13co-lte-no-x", write(tmp, "13co-lte-no-x", lamda=os.path.join(LAMDA, "13co.dat")),
            r":5:\d+: line\.lamda: .*13co\.dat is 13C16O, not CO: .*line\.abundance")
    accepted("hcn-lte-x", write(tmp, "hcn-lte-x", lamda=hcn, extra=", transition: 3, abundance: 2.0e-8"))
    accepted("co-lte", write(tmp, "co-lte"))

    # a 2-D snapshot (with a valid sidecar): the sampler refuses it, so must --check
    d = os.path.join(tmp, "m2d")
    os.makedirs(d)
    shutil.copy(os.path.join(AMRVAC, "thirdparty_WR_2D_0004.dat"), os.path.join(d, "wr.dat"))
    shutil.copy(os.path.join(AMRVAC, "agbwind3d_0000.units.yaml"), os.path.join(d, "wr.units.yaml"))
    refused(tmp, "amrvac-2d", write(tmp, "amrvac-2d", inputs='amrvac: {glob: "m2d/*.dat"}'),
            r":3:\d+: inputs\.amrvac\.glob: model 0 of 1: .*wr\.dat: ndim = 2: the CO path needs a 3-D snapshot")
    # the same sidecar beside a 3-D wind is fine
    d = os.path.join(tmp, "m3d")
    os.makedirs(d)
    shutil.copy(os.path.join(AMRVAC, "agbwind3d_0000.dat"), os.path.join(d, "w.dat"))
    shutil.copy(os.path.join(AMRVAC, "agbwind3d_0000.units.yaml"), os.path.join(d, "w.units.yaml"))
    accepted("amrvac-3d", write(tmp, "amrvac-3d", inputs='amrvac: {glob: "m3d/*.dat"}'))

    # the thermal width's molecular mass: by default the LAMDA file's weight
    # (SiO 44.1, as the LVG populations use), not CO's 28; solver.mass within
    # 1 % of it is taken; dataset.h5 records the mass used. A mass copied from
    # a CO job (28) onto SiO is refused, in --check and in the run
    sio = os.path.join(LAMDA, "sio-h2.dat")
    for what in ("--check", "--quiet"):
        path = write(tmp, "sio-28", lamda=sio, extra=", abundance: 1.0e-7")
        open(path, "a").write("solver: {mass: 28.0}\nstatistics: {compute: false}\n")
        out = os.path.join(tmp, "sio-28-out")
        r = run([COEMU, "generate", path, "--out", out, what])
        check(r.returncode == 1 and re.search(
              re.escape(path) + r":8:\d+: solver\.mass: 28 u, but .*sio-h2\.dat gives a molecular "
              r"weight of 44\.1 u: remove solver\.mass", r.stderr) and not os.path.exists(
              os.path.join(out, "dataset.h5")),
              f"SiO with solver.mass 28 ({what}): {r.returncode} {r.stderr.strip()[-400:]}")
    for name, solver, want in (("sio-default", "", 44.1), ("sio-44", "solver: {mass: 44.0}\n", 44.0)):
        path = write(tmp, name, lamda=sio, extra=", abundance: 1.0e-7")
        open(path, "a").write(solver + "statistics: {compute: false}\n")
        out = os.path.join(tmp, name + "-out")
        r = run([COEMU, "generate", path, "--out", out, "--quiet"])
        got = None
        if r.returncode == 0:
            with h5py.File(os.path.join(out, "dataset.h5"), "r") as h:
                got = float(h["solver"].attrs["mass"])
        check(got == want, f"{name}: /solver mass {got}, expected {want}: {r.stderr.strip()[-300:]}")
    path = write(tmp, "mass-bad")
    open(path, "a").write("solver: {mass: 0.3}\n")
    r = run([COEMU, "generate", path, "--check"])
    check(r.returncode == 1 and re.search(re.escape(path) + r":8:\d+: solver\.mass: 0\.3 u; expected 0", r.stderr),
          f"solver.mass 0.3: {r.stderr.strip()[-300:]}")


run_in_tmpdir("coemu-line-inputs-", main)
