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
HEADER = ("model,line,upper,lower,t_kin,column,geometry,fwhm,t_bg,n_H2,n_pH2,n_oH2,n_e,n_H,n_He,n_H+,"
          "E_up,freq_GHz,T_ex,tau,T_R,pop_up,pop_low,flux_Kkms,flux_erg,iterations,converged\n")
check(outs[0].startswith(HEADER), f"grid header: {outs[0][:300]!r}")

# Every row echoes all of its model's inputs, from the grid or the options:
# two models that differ only in density and width are told apart by a row.
g2 = os.path.join(tmp, "g2.csv")
with open(g2, "w") as f:
    f.write("n_H2,fwhm\n1e3,1\n1e5,2\n")
o2 = os.path.join(tmp, "o2.csv")
rc, out, err = run(CO, "--grid", g2, "--out", o2, "--t-kin", 30, "--column", 1e15, "--t-bg", 3)
text = open(o2).read() if rc == 0 else ""
lines = text.splitlines()
check(rc == 0 and text.startswith(HEADER) and len(lines) == 1 + 2 * 40, f"grid echoes inputs: {rc} {err}")
if len(lines) == 81:
    h = HEADER.strip().split(",")
    r0, r1 = dict(zip(h, lines[1].split(","))), dict(zip(h, lines[41].split(",")))
    check((r0["model"], r0["t_kin"], r0["column"], r0["geometry"], r0["fwhm"], r0["t_bg"], r0["n_H2"],
           r0["n_pH2"], r0["n_e"]) == ("0", "30", "1e+15", "sphere", "1", "3", "1000", "0", "0"),
          f"row of model 0: {r0}")
    check((r1["model"], r1["t_kin"], r1["fwhm"], r1["n_H2"]) == ("1", "30", "2", "100000"), f"row of model 1: {r1}")

# --out never replaces an input, however it is spelt: refused, nothing written.
before = open(g2).read()
for spelt in (g2, os.path.join(tmp, ".", "g2.csv"), os.path.relpath(g2)):
    rc, out, err = run(CO, "--grid", g2, "--out", spelt, "--t-kin", 30, "--column", 1e15)
    check(rc == 2 and "coemu nlte: error: --out" in err and "is the grid file" in err
          and open(g2).read() == before, f"--out {spelt} = the grid: {rc} {err!r}")
os.symlink(g2, os.path.join(tmp, "link.csv"))
os.link(g2, os.path.join(tmp, "hard.csv"))
for other in ("link.csv", "hard.csv"):
    rc, out, err = run(CO, "--grid", g2, "--out", os.path.join(tmp, other), "--t-kin", 30, "--column", 1e15)
    check(rc == 2 and "is the grid file" in err and open(g2).read() == before, f"--out {other}: {rc} {err!r}")
mol = os.path.join(tmp, "co.dat")
with open(CO) as a, open(mol, "w") as b:
    b.write(a.read())
rc, out, err = run(mol, "--grid", g2, "--out", mol, "--t-kin", 30, "--column", 1e15)
check(rc == 2 and "is the molecule file" in err and open(mol).read() == open(CO).read(),
      f"--out the molecule file: {rc} {err!r}")
check(not [f for f in os.listdir(tmp) if ".tmp." in f], "no temporary file left")


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
# a negative density names its option and value, as --n does
usage([CO, "--t-kin", 30, "--n-h2", -1e4, "--column", 1e16], "--n-h2 -10000: expected a density >= 0 [cm^-3]")
usage([CO, "--t-kin", 30, "--n-e", -5, "--n-h2", 1e4, "--column", 1e16], "--n-e -5: expected a density >= 0")
usage([CO, "--t-kin", 30, "--n", "pH2=-5", "--column", 1e16], "--n pH2=-5: expected a density >= 0")
# one value, one source: an option and --n, or an option and a grid column,
# giving the same condition is refused (none silently wins)
usage([CO, "--t-kin", 30, "--n-h2", 1e4, "--n", "H2=1e5", "--column", 1e16],
      "--n H2=1e5: the H2 density is also given by --n-h2")
usage([CO, "--grid", g2, "--out", os.path.join(tmp, "x.csv"), "--t-kin", 30, "--column", 1e15, "--fwhm", 3],
      f"--fwhm and {g2}'s column fwhm both give the line width: give one")
usage([CO, "--grid", g2, "--out", os.path.join(tmp, "x.csv"), "--t-kin", 30, "--column", 1e15, "--n", "H2=1"],
      f"--n H2 and {g2}'s column n_H2 both give a density")
usage([CO, "--grid", grid, "--out", os.path.join(tmp, "x.csv"), "--t-kin", 40],
      f"--t-kin and {grid}'s column t_kin both give T_kin: give one")
check(not os.path.exists(os.path.join(tmp, "x.csv")), "a refused grid writes no CSV")
failure([CO, "--t-kin", 1e5, "--column", 1e15, "--n-h2", 1e4], "T_kin = 100000 K")
failure([os.path.join(tmp, "none.dat"), "--t-kin", 30, "--column", 1e15, "--n-h2", 1e4], "none.dat")
bad = os.path.join(tmp, "bad.csv")
with open(bad, "w") as f:
    f.write("t_kin,n_H2,colum\n30,1e4,1e15\n")
failure([CO, "--grid", bad, "--out", os.path.join(tmp, "x.csv")], "unknown grid column 'colum'")
with open(bad, "w") as f:
    f.write("t_kin,n_H2,column,t_kin\n30,1e4,1e15,40\n")
failure([CO, "--grid", bad, "--out", os.path.join(tmp, "x.csv")], "column 't_kin' appears twice (field 1 and 4)")
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
