#!/usr/bin/env python3
"""FITS export (docs/export.md): `coemu export DIR --format fits` and
`coemu eval --fits`, read back with a FITS reader written here (2880-byte
blocks, 80-character cards, big-endian data; no astropy), independently of
cfitsio.

Two small datasets are made with `coemu generate` (synthetic models, n = 16,
3 channels): one with a numeric sampling.edge and evenly spaced channels, one
with edge auto and a list of unevenly spaced velocities. Checked: the data
equal the dataset's /targets (and /inputs) bit for bit in FITS axis order;
the WCS keywords equal the values computed here from the job's edge, the
distance and /velocities (exactly: the same double operations); the
provenance keywords; the CHANNEL axis for uneven channels; the edge of an
edge-auto dataset from /geometry (the header equals --edge with that value);
datasets without /geometry (before format_minor 1): the job's numeric edge,
or an error for auto; sample out of range; eval's maps-SAMPLE.fits (target
within the normalisation's rounding of the dataset, WCS as above).

Writes that fail (a file-size limit, as a full disk or a quota) say why in
the system's words for FITS, safetensors and checkpoints, and leave no file.

Usage: test_export_fits.py DUMP_FORWARD_EXE   ($COEMU: coemu)"""
import errno
import json
import os
import resource
import signal
import shutil
import struct
import subprocess
import sys
import tempfile

import h5py
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, report  # noqa: E402

COEMU = os.environ["COEMU"]
LAMDA = os.path.join(os.environ["COEMU_TEST_DATA"], "lamda", "co.dat")
DUMP = sys.argv[1]
# coemu generate and eval are MPI programs: under the sanitizer build their
# leak checks are off, as in tests/mpirun.sh (Open MPI's plugins); the
# other commands keep them
MPI_ENV = dict(os.environ)
if MPI_ENV.get("COEMU_SANITIZE"):
    MPI_ENV["ASAN_OPTIONS"] = MPI_ENV.get("ASAN_OPTIONS", "") + ":detect_leaks=0"
AU = 149597870700.0


def read_fits(path):
    """[(header dict, data array in FITS order (axis n ... axis 1))] of every HDU."""
    b = open(path, "rb").read()
    check(len(b) % 2880 == 0, f"{path}: {len(b)} bytes, not whole 2880-byte blocks")
    hdus, pos = [], 0
    while pos < len(b):
        h, end = {}, False
        while not end:
            block = b[pos:pos + 2880]
            pos += 2880
            for i in range(0, 2880, 80):
                card = block[i:i + 80].decode("ascii")
                key = card[:8].strip()
                if key == "END":
                    end = True
                    break
                if card[8:10] != "= ":
                    continue
                v = card[10:].strip()
                if v.startswith("'"):  # a string: '' is a quote; ends at the lone quote
                    s, j = "", 1
                    while j < len(v):
                        if v[j] == "'" and v[j + 1:j + 2] == "'":
                            s, j = s + "'", j + 2
                        elif v[j] == "'":
                            break
                        else:
                            s, j = s + v[j], j + 1
                    h[key] = s.rstrip()
                else:
                    v = v.split("/")[0].strip()
                    h[key] = True if v == "T" else False if v == "F" else (
                        int(v) if v.lstrip("+-").isdigit() else float(v.replace("D", "E")))
        shape = [h[f"NAXIS{k}"] for k in range(h["NAXIS"], 0, -1)]
        n = int(np.prod(shape)) if shape else 0
        dt = {-32: ">f4", -64: ">f8", 8: ">u1", 16: ">i2", 32: ">i4"}[h["BITPIX"]]
        nbytes = n * abs(h["BITPIX"]) // 8
        data = np.frombuffer(b[pos:pos + nbytes], dt).reshape(shape)
        pos += (nbytes + 2879) // 2880 * 2880
        hdus.append((h, data))
    return hdus


def generate(d, name, edge, channels, store=True):
    job = os.path.join(d, name + ".yaml")
    with open(job, "w") as f:
        f.write(f"name: {name}\ninputs:\n  synth: {{count: 2, seed: 3}}\n"
                f"sampling: {{directions: 2, n: 16, seed: 99, edge: {edge}}}\n"
                f"line: {{lamda: {LAMDA}, channels: {channels}}}\n"
                f"output: {{samples_per_shard: 4, directory: {os.path.join(d, name)}}}\n"
                "splits: {train: 0.5, validation: 0.25, test: 0.25, seed: 2}\n")
    r = subprocess.run([COEMU, "generate", job], capture_output=True, text=True, timeout=120,
                       env=MPI_ENV)
    check(r.returncode == 0, f"generate {name}: {r.stderr[-2000:]}")
    return os.path.join(d, name)


def export(*args):
    return subprocess.run([COEMU, "export", *map(str, args)], capture_output=True, text=True,
                          timeout=60)


def check_wcs(what, h, n, pixel_m, dist, vel):
    au = pixel_m / AU
    check(h["CRPIX1"] == h["CRPIX2"] == (n + 1) / 2 and h["CRVAL1"] == h["CRVAL2"] == 0,
          f"{what}: reference pixel {h.get('CRPIX1')} {h.get('CRPIX2')}")
    if dist:
        want = ("RA---SIN", "DEC--SIN", "deg", "deg", -au / dist / 3600, au / dist / 3600)
    elif pixel_m:
        want = ("X", "Y", "AU", "AU", au, au)
    else:
        want = ("X", "Y", "pixel", "pixel", 1.0, 1.0)
    got = tuple(h.get(k) for k in ("CTYPE1", "CTYPE2", "CUNIT1", "CUNIT2", "CDELT1", "CDELT2"))
    check(got == want, f"{what}: spatial WCS {got}, expected {want}")
    if pixel_m:
        check(h["PIXSIZE"] == au, f"{what}: PIXSIZE {h.get('PIXSIZE')} vs {au}")
    step = (vel[-1] - vel[0]) / (len(vel) - 1)
    even = np.allclose(vel, vel[0] + step * np.arange(len(vel)), rtol=0, atol=1e-6 * abs(step))
    if even:
        got = tuple(h.get(k) for k in ("CTYPE3", "CUNIT3", "CRPIX3", "CRVAL3", "CDELT3"))
        want = ("VRAD", "km/s", 1.0, vel[0] / 1000, step / 1000)
    else:
        got = (h.get("CTYPE3"),) + tuple(h.get(f"CHVEL{c:03d}") for c in range(len(vel)))
        want = ("CHANNEL",) + tuple(v / 1000 for v in vel)
    check(got == want, f"{what}: velocity axis {got}, expected {want}")
    check(h.get("SPECSYS") == "SOURCE" and h.get("BUNIT") == "W m-2 Hz-1 sr-1",
          f"{what}: SPECSYS/BUNIT {h.get('SPECSYS')} {h.get('BUNIT')}")


with tempfile.TemporaryDirectory() as d:
    edge = 3.0e13
    even = generate(d, "even", edge, "{mode: grid, vmin: -600, vmax: 600, count: 3}")
    # 20 uneven channels: more channels than the cube side (F n^2 > n^3, the
    # buffer a FITS cube and an input cube share)
    uvel = [-2000 + 150 * c + 7 * c * c for c in range(20)]
    uneven = generate(d, "uneven", "auto", "{mode: list, velocities: [%s]}" % ", ".join(map(str, uvel)))
    with h5py.File(os.path.join(even, "dataset.h5"), "r") as f:
        ds = {k: f[k][()] for k in ("targets", "inputs", "velocities", "model_id", "direction",
                                    "direction_index", "split")}
        names = [s.decode() for s in f["models/name"][()]]
        nu0 = float(f["frequencies"].attrs["nu0"])
        lnI_min, lnI_scale = (float(f["stats"].attrs[a]) for a in ("lnI_min", "lnI_scale"))
    N, F, n = ds["targets"].shape[:3]
    for k, dist in ((0, 0), (N - 1, 140.0)):
        out = os.path.join(d, f"s{k}.fits")
        args = [even, "--format", "fits", "--sample", k, "--out", out, "--inputs"]
        r = export(*(args + (["--distance", dist] if dist else [])))
        check(r.returncode == 0 and out in r.stdout, f"export sample {k}: {r.stderr}")
        hdus = read_fits(out)
        check([h.get("EXTNAME") for h, _ in hdus] == ["TARGET", "VZ", "T", "NCO"],
              f"sample {k}: HDUs {[h.get('EXTNAME') for h, _ in hdus]}")
        h, data = hdus[0]
        # FITS order (channel, y, x) against /targets (channel, x, y): exact
        check(data.shape == (F, n, n) and np.array_equal(data.transpose(0, 2, 1), ds["targets"][k]),
              f"sample {k}: the target cube differs from /targets")
        check_wcs(f"sample {k}", h, n, edge / n, dist, ds["velocities"])
        m = int(ds["model_id"][k])
        check(h["SAMPLE"] == k and h["MODELID"] == m and h["OBJECT"] == names[m]
              and h["DIRIDX"] == ds["direction_index"][k] and h["RESTFRQ"] == nu0
              and [h[q] for q in ("QUAT_W", "QUAT_X", "QUAT_Y", "QUAT_Z")] == list(ds["direction"][k])
              and h["SPLIT"] == ("train", "validation", "test")[ds["split"][k]]
              and (not dist or h["DISTANCE"] == dist),
              f"sample {k}: provenance keywords {h}")
        for c, (hc, dc) in enumerate(hdus[1:]):  # (z, y, x) against /inputs (x, y, z)
            check(np.array_equal(dc.transpose(2, 1, 0), ds["inputs"][k][c])
                  and hc["CTYPE3"] == "Z" and hc["CUNIT3"] == "AU" and hc["CDELT3"] == edge / n / AU
                  and hc["CTYPE1"] == h["CTYPE1"] and hc["CDELT1"] == h["CDELT1"],
                  f"sample {k}: input {hc.get('EXTNAME')} differs from /inputs[{c}] or its WCS")
        check(hdus[1][0]["BUNIT"] == "m/s" and hdus[2][0]["BUNIT"] == "K" and hdus[3][0]["BUNIT"] == "m-3",
              "input units")

    # edge auto: the edge dataset.h5 records (/geometry edge, the ball radius),
    # the same header as --edge with that value
    out = os.path.join(d, "u.fits")
    with h5py.File(os.path.join(uneven, "dataset.h5"), "r") as f:
        gedge = float(f["geometry"].attrs["edge"])
    r = export(uneven, "--format", "fits", "--sample", 1, "--out", out + "g")
    check(r.returncode == 0, f"edge auto, recorded in /geometry: {r.returncode} {r.stderr}")
    r = export(uneven, "--format", "fits", "--sample", 1, "--out", out + "e", "--edge", repr(gedge))
    check(r.returncode == 0, f"edge auto, --edge {gedge!r}: {r.stderr}")
    if os.path.exists(out + "g") and os.path.exists(out + "e"):
        hg, he = read_fits(out + "g")[0][0], read_fits(out + "e")[0][0]
        check(hg == he, f"edge from /geometry: header differs from --edge {gedge!r}: "
              f"{ {k: (hg.get(k), he.get(k)) for k in set(hg) | set(he) if hg.get(k) != he.get(k)} }")
        check_wcs("uneven, /geometry edge", hg, n, gedge / n, 0, [-2000 + 150 * c + 7 * c * c for c in range(20)])
    # a dataset made before format_minor 1 (no /geometry): the job's edge
    # where it is a number, an error naming the cause where it is auto
    for src, name in ((uneven, "old-auto"), (even, "old-even")):
        old = os.path.join(d, name)
        shutil.copytree(src, old)
        with h5py.File(os.path.join(old, "dataset.h5"), "r+") as f:
            del f["geometry"]
    r = export(os.path.join(d, "old-auto"), "--format", "fits", "--sample", 1, "--out", out)
    check(r.returncode == 1 and "sampling.edge is auto" in r.stderr and "format_minor 1" in r.stderr
          and "--edge" in r.stderr and not os.path.exists(out),
          f"no /geometry, edge auto, without --edge: {r.returncode} {r.stderr}")
    r = export(os.path.join(d, "old-even"), "--format", "fits", "--sample", 0, "--out", out + "o")
    check(r.returncode == 0, f"no /geometry, numeric job edge: {r.stderr}")
    if r.returncode == 0:
        check_wcs("no /geometry, job edge", read_fits(out + "o")[0][0], n, edge / n, 0, ds["velocities"])
    # a CHANNEL axis for uneven channels
    r = export(uneven, "--format", "fits", "--sample", 1, "--out", out, "--edge", 2e13, "--inputs")
    check(r.returncode == 0, f"edge auto with --edge: {r.stderr}")
    with h5py.File(os.path.join(uneven, "dataset.h5"), "r") as f:
        ut, uv, ui = f["targets"][1], f["velocities"][()], f["inputs"][1]
    hdus = read_fits(out)
    h, data = hdus[0]
    check(np.array_equal(data.transpose(0, 2, 1), ut) and len(hdus) == 4
          and all(np.array_equal(hdus[1 + c][1].transpose(2, 1, 0), ui[c]) for c in range(3)),
          "uneven (20 channels, 16^3 inputs): data")
    check(list(uv) == uvel, f"uneven: the job's velocities {uv}")
    check_wcs("uneven", h, n, 2e13 / n, 0, uv)
    r = export(even, "--format", "fits", "--sample", N, "--out", out + "2")
    check(r.returncode == 1 and f"samples 0..{N - 1}" in r.stderr and not os.path.exists(out + "2"),
          f"sample out of range: {r.stderr}")

    # coemu eval --fits: a 3-channel net on the even dataset
    r = subprocess.run([DUMP, d], capture_output=True, text=True)
    check(r.returncode == 0, f"dump_forward: {r.stderr}")
    # (and export --format safetensors --dataset: the normalisation in the metadata, exactly)
    st = os.path.join(d, "w.safetensors")
    r = export(os.path.join(d, "f3-reference.ckpt"), "--format", "safetensors", "--dataset", even,
               "--out", st)
    check(r.returncode == 0, f"export --dataset: {r.stderr}")
    raw = open(st, "rb").read()
    meta = json.loads(raw[8:8 + struct.unpack_from("<Q", raw)[0]])["__metadata__"]
    with h5py.File(os.path.join(even, "dataset.h5"), "r") as f:
        a = f["stats"].attrs
        for key in ("vz_mean", "vz_std", "lnT_min", "lnT_scale", "lnn_min", "lnn_scale", "lnI_min",
                    "lnI_scale", "lnI_clip"):
            check(float(meta.get("norm." + key, "nan")) == float(a[key]),
                  f"norm.{key} = {meta.get('norm.' + key)} vs /stats {a[key]}")
        mode = a["I_mode"]
        check(meta.get("norm.i_mode") == (mode.decode() if isinstance(mode, bytes) else str(mode)),
              f"norm.i_mode {meta.get('norm.i_mode')} vs I_mode {a['I_mode']}")
    # writes that fail (a file-size limit acts as a full disk or a quota):
    # each says why in the system's words, and leaves no file
    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))
    efbig = f"({os.strerror(errno.EFBIG)})"
    for what, args, out in (
            ("FITS", [even, "--format", "fits", "--sample", "0", "--out"], "full.fits"),
            ("safetensors", [os.path.join(d, "f3-reference.ckpt"), "--format", "safetensors", "--out"],
             "full.safetensors"),
            ("checkpoint", [st, "--format", "ckpt", "--out"], "full.ckpt")):
        r = subprocess.run([COEMU, "export", *args, os.path.join(d, out)], capture_output=True, text=True,
                           timeout=60, preexec_fn=limited)
        words = "writing FITS failed: " if what == "FITS" else "write failed: "
        check(r.returncode == 1 and f"{out}: {words}" in r.stderr
              and (efbig if what == "FITS" else efbig[1:-1]) in r.stderr,
              f"export to {what} past the file-size limit: rc {r.returncode}, {r.stderr.strip()!r}")
        check(not [n for n in os.listdir(d) if n.startswith(out)], f"a failed {what} write leaves nothing")
    ev = os.path.join(d, "eval")
    r = subprocess.run([COEMU, "eval", os.path.join(d, "f3-reference.ckpt"), even, "--split", "all",
                        "--maps", "2", "--fits", "--out", ev, "--quiet"],
                       capture_output=True, text=True, timeout=120, env=MPI_ENV)
    check(r.returncode == 0, f"eval --fits: {r.stderr[-2000:]}")
    fits = sorted(f for f in os.listdir(ev) if f.endswith(".fits")) if os.path.isdir(ev) else []
    check(len(fits) == 2, f"eval wrote {fits}")
    for name in fits:
        k = int(name[5:11])
        hdus = read_fits(os.path.join(ev, name))
        check([h.get("EXTNAME") for h, _ in hdus] == ["TARGET", "PREDICTED"], f"{name}: HDUs")
        t = hdus[0][1].transpose(0, 2, 1).astype(np.float64)
        want = ds["targets"][k].astype(np.float64)
        # TARGET is the sample clipped at e^-40 (the normalisation's clip) up to
        # the float32 rounding of t = (ln I - min) / scale: |d ln I| <= a few
        # ulp of |ln I| <= |min| + scale
        want = np.maximum(want, np.exp(-40.0))
        tol = 8 * float(np.finfo(np.float32).eps) * (abs(lnI_min) + lnI_scale)
        err = float(np.max(np.abs(np.log(t / want))))
        check(err <= tol, f"{name}: TARGET is the dataset's sample {k} (denormalised): "
              f"ln error {err:.1e} > {tol:.1e}")
        check(np.all(np.isfinite(hdus[1][1])) and hdus[1][1].shape == (F, n, n), f"{name}: PREDICTED")
        check_wcs(name, hdus[0][0], n, edge / n, 0, ds["velocities"])
        check(hdus[0][0]["SAMPLE"] == k, f"{name}: SAMPLE")
report()
