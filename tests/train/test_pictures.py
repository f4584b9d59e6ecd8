#!/usr/bin/env python3
"""Every map picture coemu writes has a title and colour bars with units
(docs/plots.md): the dataset preview (`coemu generate`), `coemu solve
--preview`, `coemu synth --preview`, `coemu sample --preview`, and `coemu
eval`'s maps-SAMPLE.png and error-SAMPLE.png.

Each PNG is read by a decoder written here (zlib + the five PNG filters, no
PIL). Checked:
- its words, from the PNG text chunks coemu writes with them (Title,
  Description: row titles, panel labels, colour bars with label and range):
  the sample ids, models, directions and channel velocities are the
  dataset's, each colour bar's range is the one of the data it stands for;
- its pixels: as many colour ramps as bars, each exactly the colour map from
  0 to 1 (viridis or inferno, tables copied from common/image.c), text ink
  (the font's colour 0x202020) under each ramp and in the title band.

Usage: test_pictures.py DUMP_FORWARD_EXE   ($COEMU: coemu)"""
import os
import re
import struct
import subprocess
import sys
import tempfile
import zlib

import h5py
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, report  # noqa: E402

COEMU = os.environ["COEMU"]
DATA = os.environ["COEMU_TEST_DATA"]
DUMP = sys.argv[1]
# coemu generate and eval are MPI programs: under the sanitizer build their
# leak checks are off, as in tests/mpirun.sh (Open MPI's plugins); the
# other commands keep them
MPI_ENV = dict(os.environ)
if MPI_ENV.get("COEMU_SANITIZE"):
    MPI_ENV["ASAN_OPTIONS"] = MPI_ENV.get("ASAN_OPTIONS", "") + ":detect_leaks=0"
INK = (0x20, 0x20, 0x20)

CMAPS = {
    "viridis": [(68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 144, 141),
                (39, 173, 129), (92, 200, 99), (170, 220, 50), (253, 231, 37)],
    "inferno": [(0, 0, 4), (31, 12, 72), (85, 15, 109), (136, 34, 106), (186, 54, 85),
                (227, 89, 51), (249, 140, 10), (249, 201, 50), (252, 255, 164)],
}


def ramp(name, w):
    """The colour map sampled at i / (w - 1), i < w: (w, 3)."""
    tab = np.array(CMAPS[name], np.float64)
    s = np.linspace(0, 1, w) * 8
    i = np.minimum(s.astype(int), 7)
    f = (s - i)[:, None]
    return np.rint(tab[i] + f * (tab[i + 1] - tab[i]))


def read_png(path):
    """(RGB array (h, w, 3), {text key: value}) of an 8-bit RGB PNG."""
    b = open(path, "rb").read()
    assert b[:8] == b"\x89PNG\r\n\x1a\n", path
    pos, idat, text = 8, b"", {}
    while pos < len(b):
        n, t = struct.unpack(">I4s", b[pos:pos + 8])
        d = b[pos + 8:pos + 8 + n]
        pos += 12 + n
        if t == b"IHDR":
            w, h, depth, ctype = struct.unpack(">IIBB", d[:10])
            assert depth == 8 and ctype == 2, f"{path}: 8-bit RGB expected"
        elif t == b"IDAT":
            idat += d
        elif t == b"tEXt":
            k, v = d.split(b"\0", 1)
            text[k.decode("latin-1")] = v.decode("latin-1")
    raw = zlib.decompress(idat)
    stride = 3 * w
    out = np.zeros((h, stride), np.int32)
    prev = np.zeros(stride, np.int32)
    for y in range(h):
        ft = raw[y * (stride + 1)]
        line = np.frombuffer(raw, np.uint8, stride, y * (stride + 1) + 1).astype(np.int32)
        cur = np.zeros(stride, np.int32)
        for x in range(stride):
            a = cur[x - 3] if x >= 3 else 0
            c = prev[x - 3] if x >= 3 else 0
            up = prev[x]
            if ft == 0:
                p = 0
            elif ft == 1:
                p = a
            elif ft == 2:
                p = up
            elif ft == 3:
                p = (a + up) // 2
            else:
                pa, pb, pc = abs(up - c), abs(a - c), abs(a + up - 2 * c)
                p = a if pa <= pb and pa <= pc else up if pb <= pc else c
            cur[x] = (line[x] + p) & 255
        out[y] = cur
        prev = cur
    return out.reshape(h, w, 3), text


def ramps_in(img, cmap):
    """(row, [(x0, width)]) of the first row holding colour ramps of cmap, one
    per run of non-white pixels at least 40 wide."""
    for y in range(img.shape[0]):
        row = img[y]
        white = np.all(row == 255, axis=1)
        runs, x = [], 0
        while x < len(row):
            if white[x]:
                x += 1
                continue
            x1 = x
            while x1 < len(row) and not white[x1]:
                x1 += 1
            if x1 - x >= 40 and np.max(np.abs(row[x:x1] - ramp(cmap, x1 - x))) <= 1:
                runs.append((x, x1 - x))
            x = x1
        if runs:
            return y, runs
    return None, []


def bars_of(text):
    """[(label, lo, hi)] of the Description's colour bars."""
    return [(m.group(1), float(m.group(2)), float(m.group(3)))
            for m in re.finditer(r"colour bar \d+: (.*); (?:log10 )?range (\S+) to (\S+)",
                                 text.get("Description", ""))]


def picture(what, path, cmap, labels):
    """The common checks; returns (image, text) or (None, {})."""
    if not os.path.exists(path):
        check(False, f"{what}: {path} not written")
        return None, {}
    img, text = read_png(path)
    bars = bars_of(text)
    check(text.get("Title"), f"{what}: no Title text")
    check([b[0] for b in bars] == labels, f"{what}: colour bar labels {[b[0] for b in bars]}, "
          f"expected {labels}")
    y, runs = ramps_in(img, cmap)
    check(len(runs) == len(labels), f"{what}: {len(runs)} {cmap} ramps in the pixels, expected "
          f"{len(labels)}")
    for x0, w in runs:
        below = img[y + 1:, x0:x0 + w]
        ink = int(np.sum(np.all(below == INK, axis=2)))
        check(ink > 30, f"{what}: ticks and label under the bar at x {x0}: {ink} ink pixels")
    title_ink = int(np.sum(np.all(img[4:13] == INK, axis=2)))
    check(title_ink > 20, f"{what}: the title is drawn ({title_ink} ink pixels in its band)")
    return img, text


def near(a, b):
    return abs(a - b) <= 1e-5 * max(1.0, abs(b))


def run(*args, **kw):
    r = subprocess.run([COEMU, *map(str, args)], capture_output=True, text=True, timeout=180, **kw)
    check(r.returncode == 0, f"coemu {' '.join(map(str, args))}: {r.stderr[-1500:]}")
    return r


with tempfile.TemporaryDirectory() as d:
    # the dataset preview (coemu generate)
    job = os.path.join(d, "job.yaml")
    with open(job, "w") as f:
        f.write(f"name: pictures\ninputs:\n  synth: {{count: 2, seed: 3}}\n"
                "sampling: {directions: 2, n: 16, seed: 99, edge: 3.0e13}\n"
                f"line: {{lamda: {os.path.join(DATA, 'lamda', 'co.dat')}, "
                "channels: {mode: grid, vmin: -600, vmax: 600, count: 3}}\n"
                f"output: {{samples_per_shard: 4, directory: {os.path.join(d, 'ds')}}}\n"
                "splits: {train: 0.5, validation: 0.25, test: 0.25, seed: 2}\n")
    run("generate", job, env=MPI_ENV)
    ds = os.path.join(d, "ds")
    with h5py.File(os.path.join(ds, "dataset.h5"), "r") as f:
        tg, inp, vel = f["targets"][()], f["inputs"][()], f["velocities"][()]
        mid, did = f["model_id"][()], f["direction_index"][()]
        names = [s.decode() for s in f["models/name"][()]]
    img, text = picture("dataset preview", os.path.join(ds, "preview.png"), "inferno",
                        ["v_z [km/s]", "log T [K]", "log n_CO [m^-3]", "log I_nu [W m^-2 Hz^-1 sr^-1]"])
    desc = text.get("Description", "")
    for k in range(len(tg)):  # 4 samples: every one is a row
        want = f"sample {k}: model {names[mid[k]]} (id {mid[k]}), direction {did[k]}"
        check(want in desc, f"preview: row title '{want}' in {desc[:300]!r}")
    for v in vel:
        check(f"{v / 1000:+.2f} km/s" in desc, f"preview: channel velocity {v} labelled")
    # each row says its share of pixels below the clip (grey in the panels)
    for k in range(len(tg)):
        frac = np.count_nonzero(tg[k].astype(np.float64) < np.exp(-40)) / tg[k].size
        check(f"direction {did[k]}, " in desc and f"{100 * frac:.1f}% of pixels below the clip" in desc,
              f"preview: row {k} marks {100 * frac:.1f}% below the clip in {desc[:600]!r}")
    bars = bars_of(text)
    if len(bars) == 4:
        n = inp.shape[2]
        vz = inp[:, 0, :, :, n // 2] / 1000
        pos = tg[tg.astype(np.float64) >= np.exp(-40)]  # below the ln I clip: grey, not on the bar
        check(near(bars[0][1], float(vz.min())) and near(bars[0][2], float(vz.max())),
              f"preview: v_z bar range {bars[0][1:]} vs the slices' {vz.min()}..{vz.max()}")
        check(near(bars[3][1], float(np.log10(pos.min()))) and near(bars[3][2], float(np.log10(pos.max()))),
              f"preview: intensity bar range {bars[3][1:]} vs log10 of the targets'")

    # coemu solve --preview
    ex = os.path.join(d, "example.png")
    run("solve", "--example", 16, "--preview", ex)
    img, text = picture("solve --preview", ex, "inferno", ["I_nu [W m^-2 Hz^-1 sr^-1] (log scale)"])
    desc = text.get("Description", "")
    check("GHz" in text.get("Title", "") and "example" in text.get("Title", ""), f"solve: title {text}")
    check(all(f"{v:+.2f} km/s" in desc for v in (-0.9, -0.6, -0.3, 0.0, 0.3, 0.6, 0.9)),
          f"solve: the seven COEmuNet channel velocities labelled: {desc!r}")

    # coemu synth --preview
    syn = os.path.join(d, "synth")
    run("synth", "-n", 1, "--seed", 3, "--out", syn, "--preview")
    img, text = picture("synth --preview", os.path.join(syn, "synth_00000.png"), "inferno",
                        ["n_H2 [m^-3] (log scale)"])
    check(text.get("Title", "").startswith("synth_00000: n_H2 in the orbital plane"),
          f"synth: title {text.get('Title')!r}")

    # coemu sample --preview
    sp = os.path.join(d, "sample.png")
    run("sample", os.path.join(DATA, "amrvac", "agbwind3d_0000.dat"), "--out", os.path.join(d, "smp"),
        "--n", 16, "--preview", sp)
    img, text = picture("sample --preview", sp, "viridis",
                        ["log n_CO [m^-3]", "T [K]", "v_z [m/s]", "log N_CO [m^-2]"])
    check("agbwind3d_0000.dat: direction 0" in text.get("Title", ""), f"sample: title {text.get('Title')!r}")

    # coemu eval: maps and errors
    r = subprocess.run([DUMP, d], capture_output=True, text=True)
    check(r.returncode == 0, f"dump_forward: {r.stderr}")
    ev = os.path.join(d, "eval")
    run("eval", os.path.join(d, "f3-reference.ckpt"), ds, "--split", "all", "--maps", 1, "--out", ev,
        "--quiet", env=MPI_ENV)
    k = 0
    who = f"sample {k} (model {names[mid[k]]}, direction {did[k]})"
    img, text = picture("eval maps", os.path.join(ev, f"maps-{k:06d}.png"), "inferno",
                        ["I_nu [W m^-2 Hz^-1 sr^-1] (log scale)"])
    check(text.get("Title", "").startswith(who), f"eval maps: title {text.get('Title')!r}, expected {who}")
    check(all(f"target {v:+.0f} m/s" in text.get("Description", "") for v in vel), "eval maps: velocities")
    img, text = picture("eval errors", os.path.join(ev, f"error-{k:06d}.png"), "viridis",
                        ["|I_p - I_t| / max over channels of I_t"])
    check(text.get("Title", "").startswith(who), f"eval errors: title {text.get('Title')!r}")
    # the MaxRel chart (trainplot.c): its title and axis with units, in pixels and words
    img, text = read_png(os.path.join(ev, "maxrel.png"))
    check(text.get("Title", "").startswith("MaxRel per sample (all, 4 samples)")
          and "x: MaxRel (%)" in text.get("Description", ""), f"maxrel.png: {text}")
    check(int(np.sum(np.all(img[:40] == INK, axis=2))) > 50, "maxrel.png: the title is drawn")
report()
