#!/usr/bin/env python3
"""`coemu solve` end to end: npy/HDF5 inputs, npy/HDF5/FITS/PNG outputs, the
built-in example, and bad inputs (exit status and the message naming the
file, the array and the index). Env: COEMU (binary), COEMU_TEST_DATA."""
import errno
import os
import resource
import signal
import subprocess
import sys
import tempfile

import h5py
import numpy as np

COEMU = os.environ["COEMU"]
DATA = os.environ.get("COEMU_TEST_DATA", "tests/data")
CO = os.path.join(DATA, "lamda", "co.dat")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, report  # noqa: E402



def solve(*args):
    p = subprocess.run([COEMU, "solve", *map(str, args)], capture_output=True, text=True, timeout=120)
    return p.returncode, p.stderr


def expect_error(args, *needles, code=None):
    rc, err = solve(*args)
    ok = rc != 0 and (code is None or rc == code) and all(n in err for n in needles)
    check(ok, f"{' '.join(map(str, args))}: rc {rc}, stderr {err.strip()!r}, expected {needles}")


def read_fits(path):
    """Header cards and the data of a simple FITS primary HDU (BITPIX -64)."""
    raw = open(path, "rb").read()
    cards, pos = {}, 0
    while True:
        block = raw[pos:pos + 2880].decode("ascii")
        pos += 2880
        end = False
        for i in range(0, 2880, 80):
            card = block[i:i + 80]
            key = card[:8].strip()
            if key == "END":
                end = True
                break
            if card[8:10] == "= ":
                val = card[10:].split("/")[0].strip()
                if val.startswith("'"):
                    cards[key] = val.strip("'").strip()
                elif val in ("T", "F"):
                    cards[key] = val == "T"
                else:
                    cards[key] = float(val)
        if end:
            break
    shape = [int(cards[f"NAXIS{k}"]) for k in (3, 2, 1)]
    data = np.frombuffer(raw[pos:pos + 8 * int(np.prod(shape))], dtype=">f8").reshape(shape)
    return cards, data


with tempfile.TemporaryDirectory() as d:
    j = lambda name: os.path.join(d, name)
    rng = np.random.default_rng(5)
    shape = (6, 5, 20)
    z = np.arange(shape[2])
    v = np.broadcast_to(3000.0 * z / 19, shape).astype(np.float32)
    T = rng.uniform(20, 300, shape).astype(np.float32)
    n = 10 ** rng.uniform(6, 9, shape).astype(np.float32)
    for name, a in [("v", v), ("T", T), ("n", n)]:
        np.save(j(name + "32.npy"), a)
        np.save(j(name + "64.npy"), a.astype(np.float64))
    with h5py.File(j("cube.h5"), "w") as f:
        f["v_z"], f["T"], f["n"] = v, T, n
    base = ["--dx", "1e11", "--lamda", CO, "--channels", "coemunet"]
    npy32 = ["--vz", j("v32.npy"), "--T", j("T32.npy"), "--n", j("n32.npy")]
    npy64 = ["--vz", j("v64.npy"), "--T", j("T64.npy"), "--n", j("n64.npy")]

    rc, err = solve(*npy32, *base, "--out", j("a.npy"), "--fits", j("a.fits"), "--preview", j("a.png"))
    check(rc == 0, f"npy float32 run: {err}")
    a = np.load(j("a.npy"))
    check(a.shape == (6, 5, 7) and a.dtype == np.float64 and np.all(np.isfinite(a)), "image shape/dtype")
    check(a[..., 0].mean() > 2 * a[..., 6].mean(), "receding ramp: low-frequency channels brighter")
    rc, err = solve(*npy64, *base, "--out", j("b.npy"))
    check(rc == 0 and np.array_equal(np.load(j("b.npy")), a), "float64 inputs give the same image")
    rc, err = solve(*npy32, "--dx", "1e11", "--lamda", "builtin:co.dat", "--channels", "coemunet",
                    "--out", j("bi.npy"))
    check(rc == 0 and np.array_equal(np.load(j("bi.npy")), a), f"--lamda builtin:co.dat: {err}")
    rc, err = solve("--in", j("cube.h5"), *base, "--out", j("c.h5"), "--upper", 3, "--lower", 2, "--threads", 1)
    check(rc == 0, f"HDF5 run: {err}")
    with h5py.File(j("c.h5")) as f:
        check(np.array_equal(f["image"][...], a), "HDF5 input and output give the same image")
        fr = f["frequencies"][...]
        check(len(fr) == 7 and fr[3] == 230538000000.0, "frequencies dataset")
        at = f.attrs
        check(at["transition"] == 2 and at["upper_level"] == 3 and at["lower_level"] == 2, "transition attrs")
        ints = [k for k in ("transition", "upper_level", "lower_level", "abs", "corrected_taylor")
                if at[k].dtype != np.int64]
        check(not ints, f"counts, levels and flags as int64, as dataset.h5's /solver: {ints}")
        check("coemu solve" in at["command_line"] and at["lamda_file"] == CO and at["dx_m"] == 1e11,
              "provenance attrs")
        check(len(at["git_revision"]) > 0 and at["coemu_version"] != "", "version attrs")
    cards, data = read_fits(j("a.fits"))
    check(cards["CTYPE3"] == "FREQ" and cards["CUNIT3"] == "Hz" and cards["BUNIT"] == "W m-2 Hz-1 sr-1",
          f"FITS keywords {cards}")
    check(cards["RESTFRQ"] == 230538000000.0 and cards["CRVAL3"] == fr[0] and abs(cards["CDELT3"] - (fr[1] - fr[0])) < 1e-3,
          "FITS frequency axis")
    check(np.array_equal(data, np.transpose(a, (2, 1, 0))), "FITS data = image, axes (FREQ, y, x)")
    check(open(j("a.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n", "preview is a PNG")
    check(not [f for f in os.listdir(d) if ".tmp" in f], "no temporary files left")
    rc, err = solve(*npy32, *base, "--abs", "--corrected-taylor", "--background", "1e-16", "--vturb", "100",
                    "--mass", "28.0101", "--out", j("d.npy"))
    check(rc == 0 and np.all(np.load(j("d.npy")) >= 0), f"options run: {err}")
    rc, err = solve("--example", 12, "--abs", "--out", j("e.npy"), "--preview", j("e.png"))
    e = np.load(j("e.npy")) if rc == 0 else None
    check(rc == 0 and e.shape == (12, 12, 7) and e.max() > 0, f"example run: {err}")
    # the line named as astronomers do, from the LAMDA file's quantum numbers
    check("CO J=2-1 (230.5380000 GHz; LAMDA transition 2, levels 3 -> 2)" in err,
          f"the transition is named J=2-1: {err}")
    rc, err = solve("--example", 8, "--transition", 3, "--preview", j("e3.png"))
    check(rc == 0 and "CO J=3-2 (" in err, f"--transition 3 is J=3-2: {err}")
    expect_error(["--example", 8], "nothing to write: give --out, --fits or --preview", code=2)
    # the example is optically thick in places: a background shows through as exp(-tau)
    rc, err = solve("--example", 32, "--background", "1e-12", "--out", j("e1.npy"))
    rc2, err = solve("--example", 32, "--out", j("e0.npy"))
    if rc == 0 and rc2 == 0:
        tau = -np.log(np.maximum((np.load(j("e1.npy")) - np.load(j("e0.npy"))) / 1e-12, 1e-300))
        check(tau.max() > 2 and (tau > 1).mean() > 0.05, f"example optical depth: max {tau.max()}")
    else:
        check(False, f"example with background: {err}")
    rc, err = solve("--example", "--channels", "-3000:500:13", "--out", j("f.h5"))
    check(rc == 0, f"example 64 with velocity channels: {err}")
    rc, err = solve("--example", 8, "--channels", "list:230.538e9,230.5385e9,230.5395e9", "--fits", j("g.fits"))
    check(rc != 0 and "uniformly spaced" in err, "FITS refuses irregular channels")
    # a write that fails (a file-size limit, as a full disk or a quota would):
    # the message says why in the system's words, and nothing is left
    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))
    p = subprocess.run([COEMU, "solve", "--example", "16", "--fits", j("full.fits")], capture_output=True,
                       text=True, timeout=120, preexec_fn=limited)
    check(p.returncode == 1 and "full.fits: writing FITS failed: " in p.stderr
          and f"({os.strerror(errno.EFBIG)})" in p.stderr,
          f"a FITS write that fails says why: rc {p.returncode}, {p.stderr.strip()!r}")
    check(not [n for n in os.listdir(os.path.dirname(j("full.fits"))) if n.startswith("full.fits")],
          "a failed FITS write leaves nothing")

    # bad cubes: each names the file, the array and the index
    def bad(name, arr, *needles, which="T"):
        np.save(j(name), arr)
        files = {"vz": j("v32.npy"), "T": j("T32.npy"), "n": j("n32.npy")}
        files[which] = j(name)
        expect_error(["--vz", files["vz"], "--T", files["T"], "--n", files["n"], *base, "--out", j("x.npy")],
                     j(name), *needles)
    Tn = T.copy(); Tn[2, 3, 4] = np.nan
    bad("tnan.npy", Tn, "T[2, 3, 4] = nan")
    Tz = T.copy(); Tz[1, 0, 7] = 0
    bad("tzero.npy", Tz, "T[1, 0, 7] = 0, expected finite and > 0 K")
    nn = n.copy(); nn[5, 4, 19] = -1
    bad("nneg.npy", nn, "n[5, 4, 19] = -1, expected finite and >= 0", which="n")
    vi = v.copy(); vi[0, 1, 2] = np.inf
    bad("vinf.npy", vi, "v_z[0, 1, 2] = inf", which="vz")
    bad("shape.npy", T[:, :, :10], "T array has shape (6, 5, 10), but v_z", )
    bad("int.npy", T.astype(np.int32), "dtype '<i4' is not supported")
    bad("fortran.npy", np.asfortranarray(T), "Fortran order")
    bad("flat.npy", T.reshape(-1), "has 1 dimensions, expected 3")
    np.save(j("trunc.npy"), T)
    raw = open(j("trunc.npy"), "rb").read()
    open(j("trunc.npy"), "wb").write(raw[:-100])
    expect_error(["--vz", j("v32.npy"), "--T", j("trunc.npy"), "--n", j("n32.npy"), *base, "--out", j("x.npy")],
                 j("trunc.npy"), "data truncated")
    with h5py.File(j("bad.h5"), "w") as f:
        f["v_z"], f["T"] = v, T
    expect_error(["--in", j("bad.h5"), *base, "--out", j("x.npy")], j("bad.h5"), "no dataset 'n'")
    with h5py.File(j("bad2.h5"), "w") as f:
        f["v_z"], f["T"], f["n"] = v, np.where(np.arange(20) == 3, -5.0, T), n
    expect_error(["--in", j("bad2.h5"), *base, "--out", j("x.npy")], j("bad2.h5"), "T[0, 0, 3] = -5")
    expect_error([*npy32, *base, "--transition", 99, "--out", j("x.npy")], "transition 99 does not exist", "1..40")
    # 0 is a value, not "unset": refused as 99 is (it used to give the default J=2-1)
    expect_error([*npy32, *base, "--transition", 0, "--out", j("x.npy")], "transition 0 does not exist", "1..40")
    expect_error([*npy32, *base, "--upper", 0, "--lower", 0, "--out", j("x.npy")],
                 "no radiative transition from level 0 to level 0")
    expect_error([*npy32, *base, "--upper", 0, "--out", j("x.npy")], "--upper and --lower go together", code=2)
    # 2^32 + 3 and 2^32 + 2 are not levels 3 and 2 (J=2-1): an int option's range is the int's
    expect_error([*npy32, *base, "--upper", 4294967299, "--lower", 4294967298, "--out", j("x.npy")],
                 "option --upper: 4294967299 is out of range", "from -2147483648 to 2147483647", code=2)
    expect_error([*npy32, *base, "--transition", 0, "--upper", 3, "--lower", 2, "--out", j("x.npy")],
                 "--upper and --lower go together", code=2)
    expect_error([*npy32, *base, "--upper", 2, "--lower", 3, "--out", j("x.npy")],
                 "no radiative transition from level 2 to level 3")
    expect_error([*npy32, "--lamda", CO, "--out", j("x.npy")], "--dx is required", code=2)
    # --in: the file's attribute dx is the default spacing (coemu sample --h5 writes it)
    expect_error(["--in", j("cube.h5"), "--lamda", CO, "--out", j("x.npy")], "--dx is required",
                 j("cube.h5"), "no attribute dx", code=2)
    with h5py.File(j("cube_dx.h5"), "w") as f:
        f["v_z"], f["T"], f["n"] = v, T, n
        f.attrs["dx"] = 1e11
    rc, err = solve("--in", j("cube_dx.h5"), "--lamda", CO, "--channels", "coemunet", "--out", j("d.npy"))
    check(rc == 0 and np.array_equal(np.load(j("d.npy")), a), f"--in with attribute dx: {err}")
    with h5py.File(j("cube_dx0.h5"), "w") as f:
        f["v_z"], f["T"], f["n"] = v, T, n
        f.attrs["dx"] = -1.0
    expect_error(["--in", j("cube_dx0.h5"), "--lamda", CO, "--out", j("x.npy")], j("cube_dx0.h5"),
                 "attribute 'dx' is not a positive cell spacing")
    expect_error([*npy32, *base], "nothing to write", code=2)
    expect_error([*npy32, *base, "--out", j("x.txt")], "expected a name ending in .npy or .h5", code=2)
    expect_error(["--example", "--lamda", j("nope.dat"), "--out", j("x.npy")], "nope.dat: cannot open")
    expect_error([*npy32, *base, "--channels", "1:2", "--out", j("x.npy")], "--channels '1:2'")
    # channels that repeat one image: a zero velocity step, a repeated frequency
    expect_error([*npy32, *base, "--channels", "0:0:7", "--out", j("x.npy")],
                 "DV = 0 with COUNT = 7 gives 7 channels of the same velocity")
    expect_error([*npy32, *base, "--channels", "list:2.3e11,2.4e11,2.3e11", "--out", j("x.npy")],
                 "frequencies 1 and 3 are both 230000000000 Hz")
    # --device: a name that is no device is a usage error; cuda on a host without
    # a device (or a coemu without CUDA) is a clear run-time error and no output
    expect_error(["--example", "8", "--device", "gpu", "--out", j("x.npy")], "--device",
                 "expected cpu or cuda", code=2)
    rc, err = solve("--example", "12", "--device", "cuda", "--out", j("g.npy"))
    if rc == 0:  # a GPU here: the image (parity is scripts/gpu-check.sh's, with the reference's rule)
        g = np.load(j("g.npy"))
        check(g.shape == (12, 12, 7) and np.all(np.isfinite(g)), "--device cuda: image shape")
    else:
        check(rc == 1 and "--device cuda" in err and
              ("no CUDA device" in err or "is not built into this coemu" in err),
              f"--device cuda without a device: rc {rc}, {err.strip()!r}")
        check(not os.path.exists(j("g.npy")), "--device cuda without a device: no output")
    # --precision float32: the float32 path, within 1e-5 of float64 (docs/physics.md;
    # the example's pixels are all well-conditioned), recorded in the HDF5 output;
    # a name that is no precision is a usage error
    rc, err = solve("--example", 12, "--precision", "float32", "--out", j("e32.h5"))
    check(rc == 0, f"--precision float32: {err}")
    if rc == 0:
        with h5py.File(j("e32.h5"), "r") as f:
            e32 = f["image"][...]
            check(f.attrs["precision"] in ("float32", b"float32"), "precision attribute")
        big = np.abs(e) > 1e-12 * np.abs(e).max()
        rel = np.abs(e32[big] - e[big]) / np.abs(e[big])
        check(rel.max() <= 1e-5 and not np.array_equal(e32, e),
              f"--precision float32 vs float64: max rel {rel.max():.3g}")
    expect_error(["--example", "8", "--precision", "half", "--out", j("x.npy")], "--precision",
                 "expected float64 or float32", code=2)
    check(not os.path.exists(j("x.npy")), "no output after errors")

    # coemu bench solver --cubes FILE.h5,...: cubes as coemu sample --h5 writes
    # them (datasets v_z, T, n and the attribute dx), the batch cycling
    # through them; files that disagree or are no cubes are refused by name
    def bench(*args):
        p = subprocess.run([COEMU, "bench", "solver", *map(str, args)], capture_output=True,
                           text=True, timeout=120)
        return p.returncode, p.stdout, p.stderr

    for k, (cube_shape, dx) in enumerate([((8, 8, 8), 2e12), ((8, 8, 8), 2e12), ((8, 8, 8), 3e12),
                                          ((8, 8, 6), 2e12)]):
        with h5py.File(j(f"b{k}.h5"), "w") as f:
            f["v_z"] = rng.uniform(-3e3, 3e3, cube_shape)
            f["T"] = rng.uniform(20, 300, cube_shape)
            f["n"] = 10 ** rng.uniform(6, 9, cube_shape)
            f.attrs["dx"] = dx
    with h5py.File(j("b4.h5"), "w") as f:  # a bad cell: the solver's message, no figure
        f["v_z"], f["T"], f["n"] = np.zeros((8, 8, 8)), np.full((8, 8, 8), 100.0), np.full((8, 8, 8), 1e8)
        f["T"][1, 2, 3] = 0
        f.attrs["dx"] = 2e12
    rc, out, err = bench("--cubes", f"{j('b0.h5')},{j('b1.h5')}", "--reps", 1, "--batch", 3,
                         "--threads", 1)
    check(rc == 0 and "cubes from files: " in out and "solver lte8 threads=1 ms_per_cube" in out
          and "solver lte8 batch=3 threads=1 ms_per_cube" in out, f"bench on files: {out!r} {err!r}")
    for files, needles in [((j("b0.h5"), j("b2.h5")), (j("b2.h5"), "8^3 cells of 3e+12 m", "2e+12 m")),
                           ((j("b3.h5"),), (j("b3.h5"), "8 x 8 x 6 cells, expected a cube")),
                           ((j("cube.h5"),), (j("cube.h5"),)),
                           ((j("nope.h5"),), (j("nope.h5"), "cannot open")),
                           ((j("b4.h5"),), ("T[1, 2, 3] = 0, expected finite and > 0 K",))]:
        rc, out, err = bench("--cubes", ",".join(files), "--reps", 1)
        check(rc == 1 and all(n in err for n in needles), f"bench --cubes {files}: {rc} {err!r}")
    rc, out, err = bench("--cubes", j("b0.h5"), "--size", 16)
    check(rc == 2 and "--size goes with random or example cubes" in err, f"--size with files: {err!r}")
    rc, out, err = bench("--cubes", "example", "--reps", 1, "--size", 8, "--threads", 1)
    check(rc == 0 and "cubes example" in out and "solver lte8 threads=1" in out, f"example: {out!r}")

report()
