"""coemu synth from the command line: files, catalogue, model independence
from the range it is generated in, previews, and bad input.

The .dat files are parsed here with numpy, independently of the C code."""
import csv
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np

COEMU = os.environ.get("COEMU", "build/pipeline/coemu")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, report  # noqa: E402



def run(*args):
    return subprocess.run([COEMU, "synth", *args], capture_output=True, text=True)


def read_dat(path):
    """Header fields and the leaf arrays of a 3-D v5 file (native little-endian)."""
    b = open(path, "rb").read()
    version, off_tree, off_blocks, nw, ndir, ndim, levmax, nleafs, nparents, it = struct.unpack_from("<10i", b, 0)
    geometry = b[132:148].decode().rstrip()  # after time, xprobmin/max, domain_nx, block_nx, periodic
    names_at = 148 + 4  # after staggered
    names = [b[names_at + 16 * i: names_at + 16 * i + 16].decode().rstrip() for i in range(nw)]
    t = off_tree
    nb = nleafs + nparents
    bits = np.frombuffer(b, "<i4", nb, t)
    t += 4 * nb
    lev = np.frombuffer(b, "<i4", nleafs, t)
    t += 4 * nleafs
    ig = np.frombuffer(b, "<i4", 3 * nleafs, t).reshape(nleafs, 3)
    t += 12 * nleafs
    offs = np.frombuffer(b, "<i8", nleafs, t)
    t += 8 * nleafs
    return dict(version=version, off_tree=off_tree, off_blocks=off_blocks, nw=nw, ndim=ndim,
                levmax=levmax, nleafs=nleafs, nparents=nparents, geometry=geometry, names=names,
                tree_end=t, lev=lev, ig=ig, offs=offs, size=len(b), bits=bits)


with tempfile.TemporaryDirectory() as tmp:
    a, b, c = (os.path.join(tmp, d) for d in "abc")
    r = run("-n", "4", "--seed", "7", "--out", a, "--preview", "--quiet")
    check(r.returncode == 0, f"synth -n 4: rc {r.returncode} {r.stderr}")
    r = run("-n", "1", "--first", "2", "--seed", "7", "--out", b, "--quiet")
    check(r.returncode == 0, f"synth --first 2: rc {r.returncode} {r.stderr}")
    r = run("-n", "1", "--first", "2", "--seed", "8", "--out", c)
    check(r.returncode == 0, f"synth --seed 8: rc {r.returncode} {r.stderr}")
    check("synth:" in r.stderr, "progress lines on stderr without --quiet")
    for i in range(4):
        for ext in (".dat", ".units.yaml", ".png"):
            check(os.path.isfile(f"{a}/synth_{i:05d}{ext}"), f"synth_{i:05d}{ext} written")
    check(not any(".tmp." in f for f in os.listdir(a)), "no temporary files left")
    same = open(f"{a}/synth_00002.dat", "rb").read() == open(f"{b}/synth_00002.dat", "rb").read()
    check(same, "model 2 is byte-identical generated alone or in a range")
    check(open(f"{a}/synth_00002.units.yaml").read() == open(f"{b}/synth_00002.units.yaml").read(),
          "sidecar of model 2 identical alone or in a range")
    check(open(f"{a}/synth_00002.dat", "rb").read() != open(f"{c}/synth_00002.dat", "rb").read(),
          "another seed gives another model")
    check(open(f"{a}/synth_00002.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n", "preview is a PNG")

    rows = list(csv.DictReader(open(f"{a}/catalogue.csv")))
    check(len(rows) == 4 and [int(x["index"]) for x in rows] == [0, 1, 2, 3], "catalogue rows 0..3 in order")
    rows_b = list(csv.DictReader(open(f"{b}/catalogue.csv")))
    check(len(rows_b) == 1 and rows_b[0] == rows[2], "catalogue row of model 2 identical alone or in a range")
    for row in rows:
        f = read_dat(os.path.join(a, row["file"]))
        check(f["version"] == 5 and f["ndim"] == 3 and f["nw"] == 5, "v5, 3-D, 5 variables")
        check(f["geometry"] == "Cartesian_3D" and f["names"] == ["rho", "m1", "m2", "m3", "e"], "names")
        check(f["off_blocks"] == f["tree_end"] and f["offs"][0] == f["off_blocks"], "offsets")
        rec = 24 + 8 * 5 * 512
        check(np.all(np.diff(f["offs"]) == rec) and f["offs"][-1] + rec == f["size"], "contiguous blocks")
        check(int(row["nleafs"]) == f["nleafs"] and int(row["bytes"]) == f["size"], "catalogue nleafs/bytes")
        check(int(row["levmax"]) == f["levmax"] == f["lev"].max() and f["levmax"] == 3, "levmax")
        # leaves tile the domain: the leaf volumes add up to the domain volume
        check(np.sum(8.0 ** (1 - f["lev"].astype(float))) == 64, "leaf volumes = domain volume")
        check(int(np.sum(f["bits"])) == f["nleafs"], "leaf bits count the leaves")
        mdot = float(row["mdot_kg_s"]) / 1.98847e30 * 3.15576e7
        v = float(row["v_inf_m_s"]) / 1e3
        check(1e-8 <= mdot <= 1e-5 and 5 <= v <= 25, "Mdot and v_inf in the documented ranges")

    # bad input: clear message, exit status 2 for a bad command line and 1 for
    # a failure at run time, nothing written
    bad = [
        (["-n", "2", "--seed", "1", "--out", c, "--block", "12"], "--block", 2),
        (["-n", "0", "--seed", "1", "--out", c], "-n", 2),
        (["-n", "2", "--seed", "1"], "--out", 2),
        (["-n", "2", "--seed", "1", "--out", c, "--base-nx", "36"], "base_nx", 2),
        (["-n", "2", "--seed", "1", "--out", c, "--levels", "9"], "levels", 2),
        (["-n", "2", "--seed", "-3", "--out", c], "--seed", 2),
        (["-n", "2", "--seed", "1", "--out", c, "extra"], "extra", 2),
        (["-n", "x", "--seed", "1", "--out", c], "n", 2),
        (["-n", "1", "--seed", "1", "--out", "/proc/no_such_dir"], "no_such_dir", 1),
    ]
    for args, word, code in bad:
        r = run(*args)
        check(r.returncode == code and "error" in r.stderr and word in r.stderr,
              f"synth {' '.join(args)}: rc {r.returncode}, stderr {r.stderr.strip()!r}, "
              f"expected {code} and '{word}'")
    # a model that cannot be written fails the run, names the model, leaves no catalogue
    d = os.path.join(tmp, "d")
    os.makedirs(os.path.join(d, "synth_00001.dat"))
    r = run("-n", "3", "--seed", "1", "--out", d, "--quiet")
    check(r.returncode == 1 and "model 1:" in r.stderr and "synth_00001.dat" in r.stderr,
          f"unwritable model: rc {r.returncode}, stderr {r.stderr.strip()!r}")
    check(not os.path.exists(os.path.join(d, "catalogue.csv")), "no catalogue after a failure")
    check(not any(".tmp." in x for x in os.listdir(d)), "no temporary files after a failure")
    r = run("--help")
    check(r.returncode == 0 and "--preview" in r.stdout, "--help")

report()
