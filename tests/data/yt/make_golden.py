#!/usr/bin/env python3
"""yt's smoothed covering grid as the golden for coemu's linear reconstruction.

Run once, in a venv with yt (see README.md beside this file):
    python3 -m venv /work/venv-yt && /work/venv-yt/bin/pip install yt numpy
    /work/venv-yt/bin/python tests/data/yt/make_golden.py build/tests/rotate/test_yt

`test_yt --write DIR` writes DIR/linear.dat and DIR/curved.dat: the test
models' cell values (coemu's floats, as ln n_CO, ln T, vx, vy, vz) as MPI-AMRVAC
snapshots. yt loads them with its AMRVAC frontend and interpolates the raw
fields with ds.smoothed_covering_grid at level 1 (the fine level) on the box
[-6, 6] x [-6, 6] x [-4.5, -3] (24 x 24 x 3 cells of 0.5); the values are
written as linear_golden.txt and curved_golden.txt ("i j k lnn lnT vz").
tests/rotate/test_yt.c compares coemu's sampler with them.
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
import yt

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make_golden.py PATH/TO/test_yt")
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.argv[1], "--write", d], check=True)
        for name in ("linear", "curved"):
            ds = yt.load(os.path.join(d, name + ".dat"))
            assert ds.max_level == 1, ds.max_level
            cg = ds.smoothed_covering_grid(1, left_edge=[-6.0, -6.0, -4.5], dims=[24, 24, 3])
            f = {k: np.asarray(cg[("amrvac", k)], dtype=np.float64) for k in ("lnn", "lnT", "vz")}
            x = np.asarray(cg[("index", "x")])
            assert abs(x[0, 0, 0] + 5.75) < 1e-12 and abs(x[-1, 0, 0] - 5.75) < 1e-12, x[:, 0, 0]
            out = os.path.join(HERE, name + "_golden.txt")
            with open(out, "w") as fo:
                fo.write("# yt %s smoothed_covering_grid(level=1, left_edge=(-6,-6,-4.5), "
                         "dims=(24,24,3)) of %s.dat written by test_yt --write\n" % (yt.__version__, name))
                fo.write("# point (i, j, k) = (-5.75 + 0.5 i, -5.75 + 0.5 j, -4.25 + 0.5 k); "
                         "columns: i j k lnn lnT vz\n")
                for i in range(24):
                    for j in range(24):
                        for k in range(3):
                            fo.write("%d %d %d %.12g %.12g %.12g\n" % (
                                i, j, k, f["lnn"][i, j, k], f["lnT"][i, j, k], f["vz"][i, j, k]))
            print("wrote", out)


if __name__ == "__main__":
    main()
