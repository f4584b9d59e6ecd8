#!/usr/bin/env python3
"""Reproducibility from the file alone (docs/dataset-format.md, "Geometry"):
for small real-producer datasets (synthetic models -> sampler -> LTE solver)
in each channel mode (coemunet, grid, list) and with the paper's gridding
(compat, on the AGB wind snapshots),

- every stored target is remade bit for bit by `coemu solve` on the stored
  inputs with only what dataset.h5 records: the cell size /geometry dx, the
  line's LAMDA text /solver/lamda, the transition, mass, vturb, background,
  abs and corrected_taylor of /solver, the channels /frequencies;
- every stored input cube is remade bit for bit by `coemu sample` on the
  model file /models/file with /geometry's ball_radius, edge, n, k,
  direction sampler, seed and background (compat: `coemu sample --compat`
  with the ball radius, sampler and seed, whose per-sample dx the targets
  are then solved with);
- /velocities and /frequencies satisfy nu = nu0 (1 - v/c) to rounding, in
  the documented order: coemunet frequency rising (velocity +900..-900 m/s),
  grid velocity rising from vmin to vmax, list as the job gives them.

Nothing is taken from the job text: the jobs differ in edge (auto and
explicit), k, direction sampler, background fill, LAMDA source (a file and
builtin:co.dat) and solver options, so a value the file does not record (or
records wrongly) makes a check fail."""
import json
import os
import subprocess
import sys
import tempfile

import h5py
import numpy as np
import yaml

COEMU = os.environ.get("COEMU", "build/pipeline/coemu")
ROOT = os.environ.get("COEMU_SOURCE_ROOT", ".")
LAMDA = os.path.abspath(os.path.join(ROOT, "tests", "data", "lamda", "co.dat"))
MPI = [os.environ.get("COEMU_MPIEXEC", "mpirun"), "--allow-run-as-root", "--oversubscribe"]
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, report  # noqa: E402

C = 299792458.0

JOB = """name: repro-{name}
inputs: {inputs}
sampling: {sampling}
line: {{lamda: {lamda}, transition: 2, channels: {channels}}}
solver: {solver}
output: {{directory: unused, samples_per_shard: 4}}
splits: {{train: 0.34, validation: 0.33, test: 0.33, seed: 3}}
"""

SYNTH = "{synth: {count: 3, seed: 7, levels: 2}}"
AMRVAC = os.path.abspath(os.path.join(ROOT, "tests", "data", "amrvac"))
JOBS = {
    # the pipeline tests' demo size, edge auto (= the ball radius the producer finds)
    "coemunet": dict(inputs=SYNTH, sampling="{directions: 2, sampler: haar, n: 16, edge: auto, k: 2, seed: 99}",
                     lamda=LAMDA, channels="{mode: coemunet}",
                     solver="{vturb: 150.0, background: 0.0, abs: true, mass: 28.0, corrected_taylor: false}"),
    # an explicit edge whose corners leave the ball (filled with the background),
    # k = 3, low-discrepancy directions, the built-in LAMDA file, other solver options
    "grid": dict(inputs=SYNTH, sampling="{directions: 2, sampler: lowdisc, n: 12, edge: 6.0e13, k: 3, seed: 5, "
                          "fill_background: true, background_n: 1000.0, background_T: 12.5}",
                 lamda="builtin:co.dat", channels="{mode: grid, vmin: -1500, vmax: 1200, count: 5}",
                 solver="{vturb: 0.0, background: 1.0e-21, abs: false, mass: 28.0101, corrected_taylor: true}"),
    "list": dict(inputs=SYNTH, sampling="{directions: 2, sampler: coemunet, n: 8, edge: auto, k: 1, seed: 11}",
                 lamda=LAMDA, channels="{mode: list, velocities: [250.5, -3000.0, 0.0, 7000.0]}",
                 solver="{vturb: 50.0, background: 0.0, abs: true, mass: 28.0, corrected_taylor: false}"),
    # the paper's gridding on the real AGB wind snapshots: dx is per sample (the
    # box spans the rotated points), remade with coemu sample --compat
    "compat": dict(inputs="{amrvac: {glob: %s/agbwind3d_*.dat}}" % AMRVAC,
                   sampling="{directions: 1, sampler: coemunet, n: 64, edge: auto, k: 1, seed: 1234, "
                            "coemunet_compat: true}",
                   lamda="builtin:co.dat", channels="{mode: coemunet}",
                   solver="{vturb: 0.0, background: 0.0, abs: true, mass: 28.0, corrected_taylor: false}"),
}


def run(args):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300)


def attrs(g):
    return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in g.attrs.items()}


def check_channels(mode, vel, freq, nu0):
    """nu = nu0 (1 - v/c): each side is at most 8 roundings of numbers <=
    nu0 (1 + 1e-4) (torch.linspace's arithmetic for coemunet, nu0 (1 - v/c)
    for the others), so they differ by less than 16 u nu0, u = 2^-53."""
    want = nu0 * (1 - vel / C)
    err = np.abs(freq - want).max()
    check(err <= 16 * 2.0 ** -53 * nu0, f"{mode}: /frequencies = nu0 (1 - /velocities/c) to rounding "
          f"(worst {err} Hz; velocities {vel})")
    if mode == "coemunet":
        check(np.all(np.diff(freq) > 0) and list(vel) == [900, 600, 300, 0, -300, -600, -900],
              f"coemunet: frequency rising, velocity +900..-900 m/s: {vel}")
    elif mode == "grid":
        check(np.all(np.diff(vel) > 0) and np.all(np.diff(freq) < 0) and vel[0] == -1500 and vel[-1] == 1200,
              f"grid: velocity rising from vmin to vmax, frequency falling: {vel}")
    else:
        check(list(vel) == [250.5, -3000.0, 0.0, 7000.0], f"list: the job's velocities in order: {vel}")


def reproduce(tmp, mode):
    d = os.path.join(tmp, mode)
    job = os.path.join(tmp, f"{mode}.yaml")
    open(job, "w").write(JOB.format(name=mode, **JOBS[mode]))
    r = run(MPI + ["-n", "1", COEMU, "generate", job, "--out", d, "--quiet"])
    check(r.returncode == 0, f"{mode}: generate: {r.stderr[-2000:]}")
    if r.returncode != 0:
        return
    with h5py.File(os.path.join(d, "dataset.h5"), "r") as f:
        freq, vel = f["frequencies"][()], f["velocities"][()]
        nu0 = f["frequencies"].attrs["nu0"]
        check_channels("coemunet" if mode == "compat" else mode, vel, freq, nu0)
        if not check("geometry" in f and "solver" in f and "file" in f["models"],
                     f"{mode}: dataset.h5 records /geometry, /solver, /models/file: {list(f)}"):
            return
        lay = yaml.safe_load(open(os.path.join(ROOT, "schemas", "dataset.yaml")))
        check(f.attrs.get("format_minor") == lay["format_minor"] == 4, f"{mode}: format_minor 4")
        spec = lay["dataset.h5"]
        missing = [f"{g}.{a}" for g, gd in spec["groups"].items() for a in gd["attrs"] if a not in f[g].attrs]
        missing += [x for x in spec["datasets"] if x not in f] + [a for a in spec["attrs"] if a not in f.attrs]
        check(not missing, f"{mode}: every group, attribute and dataset schemas/dataset.yaml names: {missing}")
        man = json.load(open(os.path.join(d, "manifest.json")))
        mg = man.get("geometry", {})
        g = f["geometry"].attrs
        nan_null = (lambda v: None if np.isnan(v) else v)
        check(man.get("format_minor") == 4 and mg.get("edge_m") == nan_null(g["edge"]) and
              mg.get("dx_m") == nan_null(g["dx"]) and mg.get("ball_radius_m") == f["geometry"].attrs["ball_radius"]
              and mg.get("k") == f["geometry"].attrs["k"], f"{mode}: manifest.json geometry = /geometry: {mg}")
        geo, sol = attrs(f["geometry"]), attrs(f["solver"])
        lamda_text = f["solver/lamda"][()]
        files = [x.decode() for x in f["models/file"][()]]
        ds = {k: f[k][()] for k in ("inputs", "targets", "model_id", "direction_index", "direction")}
    check(sol["nu0"] == nu0, f"{mode}: /solver nu0 = /frequencies nu0")
    n, compat = int(geo["n"]), mode == "compat"
    if compat:
        check(geo["gridding"] == "coemunet-compat" and np.isnan(geo["dx"]) and np.isnan(geo["edge"]) and
              0 < geo["ball_radius"] <= 2.8984584112701441e13 and n == 64, f"compat: /geometry {geo}")
    else:
        check(geo["gridding"] == "sampler" and geo["dx"] == geo["edge"] / n,
              f"{mode}: /geometry dx = edge / n: {geo}")
    lam = os.path.join(tmp, f"{mode}-lamda.dat")
    open(lam, "wb").write(lamda_text)
    channels = "list:" + ",".join(repr(float(x)) for x in freq)  # repr round-trips each double
    N = ds["targets"].shape[0]
    same_t = same_i = 0
    for s in range(N):
        # inputs: coemu sample on the model file with the recorded geometry
        m, k = int(ds["model_id"][s]), int(ds["direction_index"][s])
        sd = os.path.join(tmp, f"{mode}-sample-{s}")
        args = [COEMU, "sample", os.path.join(d, files[m]), "--ball", repr(float(geo["ball_radius"])),
                "--sampler", geo["direction_sampler"], "--seed", int(geo["direction_seed"]),
                "--model-id", m, "--directions", k + 1, "--out", sd]
        if compat:
            args += ["--compat"]
        else:
            args += ["--edge", repr(float(geo["edge"])), "--n", n, "--k", int(geo["k"])]
        if geo["fill_background"]:
            args += ["--fill", "--bg-n", repr(float(geo["background_n"])), "--bg-T", repr(float(geo["background_T"]))]
        r = run(args)
        dx = float(geo["dx"])
        if check(r.returncode == 0, f"{mode}: sample: {r.stderr}"):
            cube = np.stack([np.load(os.path.join(sd, f"dir_{k:04d}", f"{x}.npy")) for x in ("v_z", "T", "n")])
            # exact: the same sampler, options and direction
            same_i += check(np.array_equal(cube, ds["inputs"][s]), f"{mode} sample {s}: inputs == coemu sample "
                            f"with /geometry")
            meta = dict(x.split(" ", 1) for x in open(os.path.join(sd, f"dir_{k:04d}", "meta.txt")).read().splitlines())
            q = np.array([float(x) for x in meta["quaternion"].split()])
            check(np.array_equal(q, ds["direction"][s]), f"{mode} sample {s}: the stored quaternion")
            if compat:
                dx = float(meta["dx"])  # per sample, %.17g: the same double
        # targets: coemu solve on the stored inputs with the recorded line, dx and options
        for c, name in enumerate(("vz", "T", "n")):
            np.save(os.path.join(tmp, f"{name}.npy"), ds["inputs"][s, c])
        out = os.path.join(tmp, "img.npy")
        args = [COEMU, "solve", "--vz", os.path.join(tmp, "vz.npy"), "--T", os.path.join(tmp, "T.npy"),
                "--n", os.path.join(tmp, "n.npy"), "--dx", repr(dx), "--lamda", lam,
                "--transition", int(sol["transition"]), "--channels", channels,
                "--vturb", repr(float(sol["vturb"])), "--mass", repr(float(sol["mass"])),
                "--background", repr(float(sol["background"])), "--out", out]
        args += ["--abs"] * int(sol["abs"]) + ["--corrected-taylor"] * int(sol["corrected_taylor"])
        r = run(args)
        if check(r.returncode == 0, f"{mode}: solve: {r.stderr}"):
            img = np.load(out).astype(np.float32).transpose(2, 0, 1)
            # exact: the same float64 solver on the same float32 cells, then one rounding to float32
            same_t += check(np.array_equal(img, ds["targets"][s]), f"{mode} sample {s}: target == coemu solve "
                            f"with what dataset.h5 records (max diff {np.abs(img - ds['targets'][s]).max()})")
    print(f"{mode}: {N} samples, targets remade {same_t}, inputs remade {same_i}")
    r = run([COEMU, "inspect", d])
    check(r.returncode == 0 and "geometry" in r.stdout and "ball radius" in r.stdout,
          f"{mode}: inspect prints the geometry: {r.stdout[-1500:]}")


with tempfile.TemporaryDirectory() as tmp:
    for mode in JOBS:
        reproduce(tmp, mode)

report()
