"""`coemu inspect` and `coemu sample` on the test snapshots and on bad input:
exit status, messages, output files."""
import os
import re
import subprocess
import sys
import tempfile

import h5py
import numpy as np

COEMU = os.environ.get("COEMU", "build/pipeline/coemu")
DATA = os.path.join(os.environ.get("COEMU_TEST_DATA", "tests/data"), "amrvac")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, report  # noqa: E402



def run(*args):
    p = subprocess.run([COEMU, *args], capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout, p.stderr


def data(name):
    return os.path.join(DATA, name)


AGB = data("agbwind3d_0000.dat")
AGB_UNITS = data("agbwind3d_0000.units.yaml")

# inspect: every test file
expect = {
    "agbwind3d_0000.dat": "levels      1:56 2:64",
    "agbwind3d_0001.dat": "levels      1:56 2:64",
    "agbwind3d_0002.dat": "levels      1:56 2:64",
    "bw3d_amr_0000.dat": "levels      1:8 2:32",
    "bw3d_amr_ghost_0000.dat": "levels      1:8 2:32",
    "thirdparty_WR_2D_0004.dat": "levels      1:5 2:4 3:23 4:36",
}
for name, lev in expect.items():
    rc, out, err = run("inspect", data(name))
    check(rc == 0, f"inspect {name}: exit {rc}: {err}")
    check(lev in out, f"inspect {name}: '{lev}' not in output")
    check("variables (code units)" in out and "rho" in out, f"inspect {name}: variables")
rc, out, err = run("inspect", AGB)
check("physical (SI)" in out and "T [K]" in out, "inspect agbwind: physical fields from the sidecar")
rc, out, err = run("inspect", data("bw3d_amr_0000.dat"))
check("units       none" in out, "inspect bw3d: no sidecar")
rc, out, err = run("inspect", data("thirdparty_WR_2D_0004.dat"), "--units", AGB_UNITS)
# a snapshot the CO path does not take is still inspected: the physical part
# is left out with the reason, exit 0 (docs/amrvac.md: inspect reads any
# snapshot); a bad sidecar is an error
check(rc == 0 and "physical    not shown:" in out and "ndim = 2" in out and "physical (SI)" not in out,
      f"inspect 2-D with units: {rc} {out[-300:]} {err}")
bad_units = os.path.join(tempfile.mkdtemp(prefix="coemu_inspect_"), "bad.units.yaml")
open(bad_units, "w").write("unit_length: -1\n")
rc, out, err = run("inspect", data("thirdparty_WR_2D_0004.dat"), "--units", bad_units)
check(rc == 1 and "bad.units.yaml" in err, f"inspect with a bad sidecar: {rc} {err}")

# inspect: bad input
rc, out, err = run("inspect")
check(rc == 2, f"inspect without a file: exit {rc}")
rc, out, err = run("inspect", "/nonexistent.dat")
check(rc == 1 and "coemu inspect: error:" in err and "/nonexistent.dat: no such file or folder" in err,
      f"missing file: {err}")
raw = open(AGB, "rb").read()
with tempfile.TemporaryDirectory() as tmp:
    def bad(name, content, needle):
        p = os.path.join(tmp, name)
        with open(p, "wb") as f:
            f.write(content)
        rc, out, err = run("inspect", p)
        check(rc == 1 and needle in err and name in err, f"{name}: exit {rc}, stderr {err!r}")

    bad("empty.dat", b"", "version")
    bad("trunc_header.dat", raw[:100], "truncated?")
    bad("trunc_tree.dat", raw[:3000], "tree section")
    bad("trunc_blocks.dat", raw[: len(raw) // 2], "block")
    bad("trunc_last.dat", raw[:-8], "the file ends")
    bad("v2.dat", (2).to_bytes(4, "little") + raw[4:], "version = 2")
    bad("swapped.dat", (5).to_bytes(4, "big") + raw[4:], "big-endian")
    bad("nleafs.dat", raw[:28] + (2**31 - 1).to_bytes(4, "little") + raw[32:], "nleafs")
    bad("text.dat", b"hello world, not a snapshot\n" * 10, "version")
    # a bad sidecar: the message has file:line:column
    ys = os.path.join(tmp, "bad.units.yaml")
    with open(ys, "w") as f:
        f.write(open(AGB_UNITS).read() + "colour: blue\n")
    rc, out, err = run("inspect", AGB, "--units", ys)
    check(rc == 1 and "bad.units.yaml:11:1: unknown key 'colour'" in err, f"bad sidecar: {err!r}")

    # sample: .npy triples
    out_dir = os.path.join(tmp, "npy")
    png = os.path.join(tmp, "p.png")
    rc, out, err = run("sample", AGB, "--directions", "2", "--n", "16", "--seed", "3",
                       "--model-id", "5", "--out", out_dir, "--preview", png)
    check(rc == 0, f"sample npy: {rc} {err}")
    for d in ("dir_0000", "dir_0001"):
        for f in ("v_z", "T", "n"):
            p = os.path.join(out_dir, d, f + ".npy")
            ok = os.path.exists(p)
            check(ok, f"{p} written")
            if ok:
                a = np.load(p)
                check(a.shape == (16, 16, 16) and a.dtype == np.float32, f"{p}: {a.shape} {a.dtype}")
                check(np.all(np.isfinite(a)), f"{p}: finite")
        meta = open(os.path.join(out_dir, d, "meta.txt")).read()
        check("dx " in meta and "quaternion " in meta and "sampler haar" in meta, f"meta {meta!r}")
    T = np.load(os.path.join(out_dir, "dir_0000", "T.npy"))
    check(T.min() > 30 and T.max() < 1600, f"T range {T.min()} {T.max()}")
    v = np.load(os.path.join(out_dir, "dir_0000", "v_z.npy"))
    check(np.abs(v).max() <= 15000 * 1.0001, "|v_los| <= v_w")
    check(os.path.exists(png) and open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n", "preview PNG")
    # the same job gives the same cubes
    out2 = os.path.join(tmp, "npy2")
    run("sample", AGB, "--directions", "1", "--n", "16", "--seed", "3", "--model-id", "5",
        "--out", out2)
    check(np.array_equal(np.load(os.path.join(out2, "dir_0000", "n.npy")),
                         np.load(os.path.join(out_dir, "dir_0000", "n.npy"))), "reproducible")

    # sample: HDF5, float64, faceon
    h5dir = os.path.join(tmp, "h5")
    rc, out, err = run("sample", AGB, "--sampler", "faceon", "--n", "8", "--k", "1",
                       "--float64", "--h5", "--out", h5dir)
    check(rc == 0, f"sample h5: {rc} {err}")
    with h5py.File(os.path.join(h5dir, "dir_0000.h5"), "r") as f:
        check(set(f.keys()) == {"v_z", "T", "n"}, f"h5 datasets {list(f.keys())}")
        check(f["n"].shape == (8, 8, 8) and f["n"].dtype == np.float64, "h5 shape/dtype")
        check(np.allclose(f.attrs["quaternion"], [1, 0, 0, 0]), "faceon quaternion")
        half = 16 * 1.495978707e11
        # dx is a fixed double formula (a few roundings, far below 1e-6), the
        # same on every host
        # the default edge is the ball radius, as generate's edge: auto
        check(abs(f.attrs["dx"] - half / 8) < 1e-6 * half, "dx = edge / n, edge = r")

    # compat: 64^3 and dx = twice the voxel
    cdir = os.path.join(tmp, "compat")
    rc, out, err = run("sample", AGB, "--compat", "--sampler", "coemunet", "--ball", "2e12",
                       "--out", cdir)
    check(rc == 0, f"sample compat: {rc} {err}")
    if rc == 0:
        check(np.load(os.path.join(cdir, "dir_0000", "n.npy")).shape == (64, 64, 64), "compat 64^3")
        meta = dict(l.split(" ", 1) for l in open(os.path.join(cdir, "dir_0000", "meta.txt")).read().splitlines())
        check(abs(float(meta["dx"]) - 2 * float(meta["voxel"])) < 1e-9 * float(meta["dx"]), "compat dx")

    # sample: errors
    rc, out, err = run("sample", AGB, "--sampler", "spiral", "--out", os.path.join(tmp, "x"))
    check(rc == 2 and "expected haar, faceon, lowdisc or coemunet" in err, f"bad sampler: {err!r}")
    rc, out, err = run("sample", AGB, "--edge", "3e12", "--out", os.path.join(tmp, "x"))
    check(rc == 1 and "outside the ball" in err, f"cube too big: {err!r}")
    rc, out, err = run("sample", AGB, "--edge", "3e12", "--fill", "--n", "8",
                       "--out", os.path.join(tmp, "fill"))
    check(rc == 0, f"cube too big with --fill: {err!r}")
    rc, out, err = run("sample", data("bw3d_amr_0000.dat"), "--out", os.path.join(tmp, "x"))
    check(rc == 1 and "no units sidecar" in err, f"no sidecar: {err!r}")
    rc, out, err = run("sample", data("thirdparty_WR_2D_0004.dat"), "--units", AGB_UNITS,
                       "--out", os.path.join(tmp, "x"))
    check(rc == 1 and "ndim = 2" in err, f"2-D refused: {err!r}")
    rc, out, err = run("sample", AGB)
    check(rc == 2, "sample without --out")

    # --device: a bad name or --compat is a usage error; cuda without a device (or a
    # CUDA build) is a clear error and writes nothing; with one, the CPU's cubes
    rc, out, err = run("sample", AGB, "--device", "gpu", "--out", os.path.join(tmp, "x"))
    check(rc == 2 and "expected cpu or cuda" in err, f"--device gpu: {err!r}")
    rc, out, err = run("sample", AGB, "--device", "cuda", "--compat", "--out", os.path.join(tmp, "x"))
    check(rc == 2 and "--compat" in err, f"--device cuda --compat: {err!r}")
    # linear (the default) and limited (its records uploaded with the model):
    # the device's cubes and the CPU's of the same directions
    runs = {}
    for recon in ("linear", "limited"):
        for device in ("cuda", "cpu"):
            d = os.path.join(tmp, f"{device}-{recon}")
            runs[recon, device] = (d,) + run("sample", AGB, "--directions", "2", "--n", "16",
                                             "--seed", "3", "--model-id", "5", "--device", device,
                                             "--reconstruction", recon, "--out", d)
        check(runs[recon, "cpu"][1] == 0, f"the CPU's {recon} cubes: {runs[recon, 'cpu'][3]}")
    ddir, rc, out, err = runs["linear", "cuda"]
    ldir, rc3, _, err3 = runs["limited", "cuda"]
    check(rc3 == rc, f"--device cuda limited as linear: {rc3} {err3!r} against {rc}")
    if rc == 0:  # a GPU here: the same bits as the CPU's
        for recon in ("linear", "limited"):
            for f in ("v_z", "T", "n"):
                check(np.array_equal(np.load(os.path.join(runs[recon, "cuda"][0], "dir_0000", f + ".npy")),
                                     np.load(os.path.join(runs[recon, "cpu"][0], "dir_0000", f + ".npy"))),
                      f"--device cuda {recon}: {f} as on the CPU")
    else:
        check(not os.path.exists(ldir), "--device cuda limited without a device: nothing written")
        check(rc == 1 and "--device cuda" in err and
              ("no CUDA device" in err or "is not built into this coemu" in err),
              f"--device cuda without a device: {rc} {err!r}")
        check(not os.path.exists(ddir), "--device cuda without a device: nothing written")

# --reconstruction: linear by default (recorded in meta.txt), constant on
# request; unknown names and linear with --compat are usage errors
with tempfile.TemporaryDirectory() as tmp:
    rc, out, err = run("sample", AGB, "--out", os.path.join(tmp, "l"), "--n", "16")
    meta = open(os.path.join(tmp, "l", "dir_0000", "meta.txt")).read() if rc == 0 else ""
    check(rc == 0 and "reconstruction linear" in meta, f"default linear: {err} {meta}")
    rc, out, err = run("sample", AGB, "--out", os.path.join(tmp, "c"), "--n", "16",
                       "--reconstruction", "constant")
    meta = open(os.path.join(tmp, "c", "dir_0000", "meta.txt")).read() if rc == 0 else ""
    check(rc == 0 and "reconstruction constant" in meta, f"constant: {err} {meta}")
    if rc == 0:
        a = np.load(os.path.join(tmp, "l", "dir_0000", "n.npy"))
        b = np.load(os.path.join(tmp, "c", "dir_0000", "n.npy"))
        check(a.shape == b.shape and not np.array_equal(a, b), "linear and constant differ")
    rc, out, err = run("sample", AGB, "--out", tmp, "--reconstruction", "cubic")
    check(rc == 2 and "--reconstruction 'cubic'" in err, f"unknown: {rc} {err}")
    rc, out, err = run("sample", AGB, "--out", tmp, "--compat", "--reconstruction", "linear")
    check(rc == 2 and "constant with --compat" in err, f"linear with --compat: {rc} {err}")

# bench sample --repeat: `min` is the least time of any run, so it is at most
# mean_of_least (it was the least of each direction's first run only, and
# could exceed it). With one direction the two are the same time.
LINE_RE = (r"sample (\S+ \S+) cpu_ms_per_cube_mean (\S+) ms \(min (\S+), .*\) "
          r"mean_of_least (\S+) ms")
for reps in ("1", "2"):
    rc, out, err = run("bench", "sample", "--reps", reps, "--repeat", "3")
    got = [re.match(LINE_RE, ln) for ln in out.splitlines()]
    check(rc == 0 and len(got) == 6 and all(got), f"bench sample --reps {reps} --repeat 3: {rc} {out} {err}")
    for m in filter(None, got):
        mean, least, mol = (float(m.group(i)) for i in (2, 3, 4))
        check(least <= mol and least <= mean and (reps != "1" or least == mol),
              f"bench sample --reps {reps} --repeat 3, {m.group(1)}: min {least}, "
              f"mean_of_least {mol}, mean {mean}")

report()
