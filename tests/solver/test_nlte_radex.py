#!/usr/bin/env python3
"""coemu nlte --grid against RADEX's golden values (tests/data/nlte/, written
once by radex_golden.py with spectralradex; numpy only here). T_ex, tau and
the populations must agree within RTOL relative, on every line of every model
RADEX converged on; models RADEX flagged as not converged are skipped and
counted; so are models where RADEX's output is unphysical (a population > 1,
a line with |tau| < 1e-12 between populated levels) and strong masers
(tau < -1 in either code: the solution is not unique there). The grid's
thickest column is required too, and reported apart (docs/nlte.md).
Populations < 1e-10, |tau| < 1e-6 and |T_ex| > 1e4 K are not compared.
Env: COEMU (binary), COEMU_SOURCE_ROOT. --report prints the error table."""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

COEMU = os.environ.get("COEMU", "build/pipeline/coemu")
ROOT = os.environ.get("COEMU_SOURCE_ROOT", ".")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, report  # noqa: E402

RTOL = 1e-3
DATA = os.path.join(ROOT, "tests", "data", "nlte")
meta = json.load(open(os.path.join(DATA, "radex_golden.json")))
tmp = tempfile.mkdtemp(prefix="coemu_nlte_radex.")
QUANT = ["T_ex", "tau", "pop_up", "pop_low", "T_R"]
table = []
for mol, info in meta["molecules"].items():
    out = os.path.join(tmp, f"{mol}.csv")
    p = subprocess.run([COEMU, "nlte", os.path.join(ROOT, info["file"]), "--grid",
                        os.path.join(DATA, f"radex_grid_{mol}.csv"), "--out", out,
                        "--fwhm", str(meta["settings"]["fwhm_kms"]),
                        "--t-bg", str(meta["settings"]["tbg_K"]), "--keep-going"],
                       capture_output=True, text=True, timeout=300)
    check(p.returncode == 0, f"{mol}: coemu nlte --grid: status {p.returncode}: {p.stderr[-800:]}")
    if p.returncode != 0:
        continue
    ours = np.genfromtxt(out, delimiter=",", names=True, dtype=None, encoding="utf-8")
    gold = np.genfromtxt(os.path.join(DATA, f"radex_golden_{mol}.csv"), delimiter=",", names=True)
    nl = meta["settings"]["nlines_kept"]
    nline_file = int(ours["line"].max())
    sel = np.array([m * nline_file + l - 1 for m, l in zip(gold["model"].astype(int),
                                                           gold["line"].astype(int))])
    check(np.all(ours["model"][sel] == gold["model"]) and np.all(ours["line"][sel] == gold["line"]),
          f"{mol}: rows line up")
    nskip = len(info["not_converged"])
    nmodels = info["models"]
    gm = gold["model"].astype(int)
    conv = gold["converged"] == 1
    check(int((~conv).sum()) == nskip * nl, f"{mol}: {nskip} models flagged by RADEX")
    # Per model: RADEX's output is unphysical (a population > 1, or a line
    # with |tau| < 1e-12 between populated levels: RADEX's artefact of a
    # masing line it lost), or strongly masing (tau < -1 in either code:
    # the solution is not unique, docs/nlte.md).
    ok_ours = ours["converged"][sel] == 1
    unphys = (gold["pop_up"] > 1) | (gold["pop_low"] > 1) | (gold["pop_up"] < 0) | \
        ((np.abs(gold["tau"]) < 1e-12) & (gold["pop_up"] > 1e-10))
    maser = (gold["tau"] < -1) | (ours["tau"][sel].astype(float) < -1)
    per_model = lambda v: np.array([v[gm == m].any() for m in range(nmodels)])  # noqa: E731
    unphys_m, maser_m = per_model(unphys), per_model(maser & ~unphys)
    conv_m = per_model(conv)
    ok_m = ~per_model(~ok_ours)
    cols = np.array(info["columns_cm2"])
    thickest = per_model(ours["column"][sel].astype(float) >= cols.max() * (1 - 1e-9))
    # Required: RADEX converged and physical, no strong maser. The grid's
    # thickest column is required too (where the direct iteration cycles and
    # the solver continues from the thin limit) and reported apart.
    req_m = conv_m & ~unphys_m & ~maser_m & ~thickest
    thick_m = conv_m & ~unphys_m & ~maser_m & thickest
    check(bool(ok_m[req_m | thick_m].all()), f"{mol}: coemu converged on every required model "
          f"(failed: {np.where((req_m | thick_m) & ~ok_m)[0].tolist()})")
    print(f"{mol}: {nmodels} models x {nl} lines: skipped {int((~conv_m).sum())} RADEX not converged, "
          f"{int((conv_m & unphys_m).sum())} RADEX unphysical, {int((conv_m & ~unphys_m & maser_m).sum())} "
          f"strong masers; required {int(req_m.sum())}")
    for part, mm in (("required", req_m), ("thickest column", thick_m)):
        rows = mm[gm] & ok_ours
        agree_m = np.ones(nmodels, bool)
        for q in QUANT:
            a, b = ours[q][sel].astype(float), gold[q].astype(float)
            m = rows.copy()
            if q in ("pop_up", "pop_low"):
                m &= np.abs(b) > 1e-10
            if q == "T_ex":  # |T_ex| > 1e4 K: ln(n_l g_u / n_u g_l) ~ 0, T_ex ill-conditioned
                m &= (gold["pop_up"] > 1e-10) & (np.abs(b) < 1e4)
            if q == "tau":
                m &= np.abs(b) > 1e-6
            if q == "T_R":
                m &= np.abs(b) > 1e-3
            rel = np.where(m, np.abs(a - b) / np.abs(np.where(b == 0, 1, b)), 0.0)
            rel = np.where(np.isnan(rel), np.inf, rel)
            worst = int(np.argmax(rel))
            bad = int((rel > RTOL).sum())
            if q != "T_R":
                for mdl in set(gm[rel > RTOL].tolist()):
                    agree_m[mdl] = False
            table.append((mol, part[:8], q, int(m.sum()), float(rel.max()), bad))
            if q != "T_R":
                check(bad == 0, f"{mol} {q}: {bad} of {int(m.sum())} beyond {RTOL} relative, worst "
                                f"{rel[worst]:.3g} at model {int(gm[worst])} line "
                                f"{int(gold['line'][worst])}: coemu {a[worst]:.9g}, RADEX {b[worst]:.9g}")
        print(f"  {part}: {int(mm.sum())} models, coemu failed on {int((mm & ~ok_m).sum())}, "
              f"agree within {RTOL} on {int((mm & ok_m & agree_m).sum())}")
for mol, part, q, n, mx, bad in table:
    print(f"  {mol:4s} {part:8s} {q:8s} compared {n:5d}  max rel err {mx:.3g}  beyond {RTOL}: {bad}")
for f in os.listdir(tmp):
    os.unlink(os.path.join(tmp, f))
os.rmdir(tmp)
report()
