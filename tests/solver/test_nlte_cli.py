#!/usr/bin/env python3
"""coemu nlte: one model printed as RADEX prints it, a grid to CSV (threads
give the same bytes as one thread), usage errors (status 2) and run-time
failures (status 1) with their messages. Env: COEMU, COEMU_SOURCE_ROOT."""
import os
import subprocess
import sys
import tempfile

COEMU = os.environ.get("COEMU", "build/pipeline/coemu")
ROOT = os.environ.get("COEMU_SOURCE_ROOT", ".")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, report  # noqa: E402

CO = os.path.join(ROOT, "tests", "data", "lamda", "co.dat")
tmp = tempfile.mkdtemp(prefix="coemu_nlte_cli.")


def run(*args, env=None):
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.run([COEMU, "nlte", *map(str, args)], capture_output=True, text=True, timeout=120,
                       env=e)
    return p.returncode, p.stdout, p.stderr


# One model: the header and one row per line, RADEX's columns.
rc, out, err = run(CO, "--t-kin", 30, "--n", "pH2=2.5e3,oH2=7.5e3", "--column", 1e16, "--t-bg", 2.73)
check(rc == 0 and "* Molecule          : CO" in out and "FLUX(erg/cm2/s)" in out, f"one model: {rc} {err}")
rows = [ln for ln in out.splitlines() if ln.startswith("1 -- 0")]
check(len(rows) == 1, "the 1-0 row")
if rows:
    f = rows[0].split()
    # RADEX 30nov2011 (spectralradex): T_ex 39.362781, tau 0.223097, T_R 7.162974
    check(abs(float(f[6]) - 39.362781) < 0.01 and abs(float(f[7]) - 0.223097) < 1e-4
          and abs(float(f[8]) - 7.162974) < 1e-3, f"CO 1-0 as RADEX: {rows[0]}")
check(sum(1 for ln in out.splitlines() if " -- " in ln) == 40, "40 lines")
# --n-h2 alone on a file with o/p-H2: RADEX's thermal ortho/para split
rc, out, err = run(CO, "--t-kin", 50, "--n-h2", 1e4, "--column", 1e15, "--t-bg", 2.73)
check(rc == 0 and "Density of pH2" in out and "Density of oH2" in out, f"thermal o/p: {err}")
# builtin:co.dat, as jobs name it: the same file, the same output
rc2, out2, err2 = run("builtin:co.dat", "--t-kin", 50, "--n-h2", 1e4, "--column", 1e15, "--t-bg", 2.73)
check(rc2 == 0 and out2 == out, f"builtin:co.dat as the file: {rc2} {err2}")

# A grid: same bytes with 1 and 2 threads.
grid = os.path.join(tmp, "grid.csv")
with open(grid, "w") as f:
    f.write("# t_kin, n_H2, column, geometry\nt_kin,n_H2,column,geometry,fwhm\n")
    for T in (20, 100, 500):
        for n in (1e3, 1e6):
            for g in ("sphere", "lvg", "slab"):
                f.write(f"{T},{n},1e15,{g},2.0\n")
outs = []
for th in (1, 2):
    o = os.path.join(tmp, f"out{th}.csv")
    rc, out, err = run(CO, "--grid", grid, "--out", o, env={"OMP_NUM_THREADS": str(th)})
    check(rc == 0 and "18 models" in err, f"grid with {th} threads: {rc} {err}")
    outs.append(open(o).read() if rc == 0 else "")
check(outs[0] == outs[1] and outs[0].count("\n") == 1 + 18 * 40, "grid: threads give the same CSV")
check(outs[0].startswith("model,line,upper,lower,t_kin,column,geometry,E_up,freq_GHz,T_ex,tau,T_R,"
                         "pop_up,pop_low,flux_Kkms,flux_erg,iterations,converged\n"), "grid header")


def usage(args, needle):
    rc, out, err = run(*args)
    check(rc == 2 and err.startswith("coemu nlte: error: ") and needle in err,
          f"usage error {args}: {rc} {err!r}, expected {needle!r}")


def failure(args, needle):
    rc, out, err = run(*args)
    check(rc == 1 and "coemu nlte: error: " in err and needle in err and "--help" not in err,
          f"failure {args}: {rc} {err!r}, expected {needle!r}")


usage([CO, "--n", "H2=1e4"], "expected --t-kin and --column")
usage([CO, "--t-kin", 30, "--column", 1e15, "--n", "Xe=4"], "unknown partner 'Xe'")
usage([CO, "--t-kin", 30, "--column", 1e15, "--n", "H2"], "expected PARTNER=DENSITY")
usage([CO, "--t-kin", 30, "--column", 1e15, "--geometry", "cube"], "--geometry cube")
usage([CO, "--grid", grid], "--grid needs --out")
usage([CO, "--t-kin", 30, "--column", 1e15, "--tol", 2], "--tol 2")
failure([CO, "--t-kin", 30, "--column", 1e15, "--n", "He=1e4"], "partner He has density")
usage([CO, "--t-kin", 30, "--column", 1e15], "expected a collision-partner density: --n-h2 N")
failure([CO, "--t-kin", 1e5, "--column", 1e15, "--n-h2", 1e4], "T_kin = 100000 K")
failure([os.path.join(tmp, "none.dat"), "--t-kin", 30, "--column", 1e15, "--n-h2", 1e4], "none.dat")
bad = os.path.join(tmp, "bad.csv")
with open(bad, "w") as f:
    f.write("t_kin,n_H2,colum\n30,1e4,1e15\n")
failure([CO, "--grid", bad, "--out", os.path.join(tmp, "x.csv")], "unknown grid column 'colum'")
with open(bad, "w") as f:
    f.write("t_kin,n_H2,column\n30,1e4,1e15\n30,0,1e15\n")
failure([CO, "--grid", bad, "--out", os.path.join(tmp, "x.csv")], "row 2 of the grid")
check(not os.path.exists(os.path.join(tmp, "x.csv")), "a failed grid writes no CSV")
# --keep-going: the failed model is reported and written as converged = 0
rc, out, err = run(CO, "--grid", bad, "--out", os.path.join(tmp, "x.csv"), "--keep-going")
text = open(os.path.join(tmp, "x.csv")).read() if rc == 0 else ""
check(rc == 0 and "model 1 (row 2 of the grid) failed" in err and ",-1,0\n" in text
      and ",1\n" in text, f"--keep-going: {rc} {err}")

for f in os.listdir(tmp):
    os.unlink(os.path.join(tmp, f))
os.rmdir(tmp)
report()
