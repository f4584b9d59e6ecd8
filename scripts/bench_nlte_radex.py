#!/usr/bin/env python3
"""coemu nlte against RADEX, in the same run: ms per one-zone model over the
45 conditions of `coemu bench nlte` (T_kin 10..1000 K, n_H2 1e3..1e7 cm^-3,
N 1e13..1e17 cm^-2, FWHM 1 km/s, T_bg 2.725 K, one geometry), one thread.
RADEX is timed through spectralradex's Fortran entry point (radexwrap
.from_dict, no pandas), which reads the molecule file on every call, as
RADEX does. Needs a venv with spectralradex (tests/solver/radex_golden.py):

  /work/venv-radex/bin/python scripts/bench_nlte_radex.py [--coemu build/pipeline/coemu]
      [--mol tests/data/lamda/co.dat] [--geometry sphere|lvg|slab|all] [--reps 3]
"""
import argparse
import os
import re
import subprocess
import sys
import time

import spectralradex.radex as radex
from radexwrap import from_dict

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
TK, NH, NC = [10, 30, 100, 300, 1000], [1e3, 1e5, 1e7], [1e13, 1e15, 1e17]
GEOM = {"sphere": 1, "lvg": 2, "slab": 3}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--coemu", default=os.path.join(ROOT, "build", "pipeline", "coemu"))
    ap.add_argument("--mol", default=os.path.join(ROOT, "tests", "data", "lamda", "co.dat"))
    ap.add_argument("--geometry", default="sphere", choices=list(GEOM) + ["all"],
                    help="one geometry, or all three in this run (a table at the end)")
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    mol = os.path.abspath(a.mol)
    models = [(t, n, c) for t in TK for n in NH for c in NC]
    rows = []
    for g in (list(GEOM) if a.geometry == "all" else [a.geometry]):
        rows.append((g,) + bench(a, mol, models, g))
    if len(rows) > 1:
        print("geometry  RADEX ms/model  coemu ms/model  ratio")
        for g, r, c in rows:
            print(f"{g:8s}  {r:14.3f}  {c:14.4f}  {r / c:5.0f}x")
        print(f"smallest ratio: {min(r / c for _, r, c in rows):.0f}x RADEX")


def bench(a, mol, models, geometry):
    devnull = os.open(os.devnull, os.O_WRONLY)
    saved = os.dup(1)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # RADEX and coemu alternate, pass by pass, and each keeps its best pass:
    # on a shared machine both then see the same minutes of load.
    best, coemu_ms, out = float("inf"), float("inf"), ""
    for _ in range(a.reps):
        sys.stdout.flush()
        os.dup2(devnull, 1)  # RADEX's Fortran warnings
        t0 = time.perf_counter()
        for t, n, c in models:
            p = radex.get_default_parameters()
            p.update({"molfile": mol, "tkin": float(t), "tbg": 2.725, "cdmol": c, "h2": n,
                      "linewidth": 1.0, "fmin": 0.0, "fmax": 1e7, "geometry": GEOM[geometry]})
            from_dict(p)
        dt = time.perf_counter() - t0
        os.dup2(saved, 1)
        best = min(best, dt)
        o = subprocess.run([a.coemu, "bench", "nlte", "--mol", mol, "--geometry", geometry,
                            "--reps", "20"], capture_output=True, text=True, env=env, check=True).stdout
        m = re.search(r"1 thread: ([0-9.]+) ms per model", o)
        if float(m.group(1)) < coemu_ms:
            coemu_ms, out = float(m.group(1)), o
    radex_ms = best / len(models) * 1e3
    os.close(devnull)
    os.close(saved)
    print(out.strip())
    print(f"RADEX 30nov2011 (spectralradex, from_dict): {radex_ms:.3f} ms per model "
          f"(best of {a.reps} passes over {len(models)} models)")
    print(f"coemu nlte: {coemu_ms:.4f} ms per model (best of {a.reps} runs of --reps 20, alternating "
          f"with RADEX's passes), {radex_ms / coemu_ms:.0f}x RADEX")


    return radex_ms, coemu_ms


if __name__ == "__main__":
    main()
