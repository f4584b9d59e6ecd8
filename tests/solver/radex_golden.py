#!/usr/bin/env python3
"""Write RADEX golden values for coemu nlte (tests/data/nlte/). Run ONCE, by
hand, in a virtual environment with spectralradex (which wraps RADEX's
Fortran); the test (test_nlte_radex.py) needs only numpy:

  python3 -m venv /work/venv-radex
  /work/venv-radex/bin/pip install 'numpy<2' spectralradex
  /work/venv-radex/bin/python tests/solver/radex_golden.py

For each molecule it writes radex_grid_<mol>.csv (the models, in the
`coemu nlte --grid` format) and radex_golden_<mol>.csv (RADEX's line
outputs, the first NLINES lines of every model), plus radex_golden.json
(versions, settings, the models RADEX flagged as not converged)."""
import json
import os
import sys
import tempfile

import numpy as np
import spectralradex
import spectralradex.radex as radex

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.join(ROOT, "tests", "data", "nlte")
NLINES = 8
TBG = 2.73          # RADEX's default background (set explicitly in coemu's grid)
FWHM = 1.0          # km/s
TKIN = [10.0, 30.0, 100.0, 300.0, 1000.0, 2000.0]
NH2 = [1e2, 1e4, 1e6, 1e8, 1e10]
GEOM = {1: "sphere", 2: "lvg", 3: "slab"}
MOLS = {
    # file, columns (thin .. thick), how the H2 density is given
    "co": ("co.dat", [1e13, 1e16, 1e19], "ortho_para"),  # file has pH2, oH2: give both, o/p = 3
    "hcn": ("hcn.dat", [1e11, 1e14, 1e17], "h2"),         # file has H2 only
}


class CaptureFd:
    """Fortran writes to fd 1: capture it to see RADEX's warnings."""

    def __enter__(self):
        sys.stdout.flush()
        self.tmp = tempfile.TemporaryFile(mode="w+b")
        self.saved = os.dup(1)
        os.dup2(self.tmp.fileno(), 1)
        return self

    def __exit__(self, *a):
        sys.stdout.flush()
        os.dup2(self.saved, 1)
        os.close(self.saved)
        self.tmp.seek(0)
        self.text = self.tmp.read().decode(errors="replace")
        self.tmp.close()


def main():
    os.makedirs(OUT, exist_ok=True)
    meta = {"radex_version": "30nov2011 (the version string in spectralradex's radexwrap)",
            "spectralradex_version": spectralradex.__version__ if hasattr(spectralradex, "__version__")
            else "1.1.5",
            "settings": {"tbg_K": TBG, "fwhm_kms": FWHM, "fmin": 0, "fmax": 1e7, "nlines_kept": NLINES,
                         "co_h2": "p-h2 = n/4, o-h2 = 3n/4 given explicitly",
                         "hcn_h2": "h2 = n (file has H2 rates)"},
            "radex_convergence": "RADEX stops when no line with tau > 0.01 changes T_ex by more than "
                                 "ccrit = 1e-6 (relative) between iterations (radex.inc)",
            "molecules": {}}
    for name, (fname, cols, h2mode) in MOLS.items():
        molfile = os.path.abspath(os.path.join(ROOT, "tests", "data", "lamda", fname))
        grid_rows, gold_rows, flagged = [], [], []
        model = 0
        for geom in (1, 2, 3):
            for T in TKIN:
                for n in NH2:
                    for N in cols:
                        p = radex.get_default_parameters()
                        p.update({"molfile": molfile, "tkin": T, "tbg": TBG, "cdmol": N,
                                  "linewidth": FWHM, "fmin": 0.0, "fmax": 1e7, "geometry": geom,
                                  "h2": 0.0, "p-h2": 0.0, "o-h2": 0.0})
                        if h2mode == "ortho_para":
                            p["p-h2"], p["o-h2"] = n / 4, 3 * n / 4
                            grid_rows.append(f"{T:.10g},{n/4:.10g},{3*n/4:.10g},{N:.10g},{GEOM[geom]}")
                        else:
                            p["h2"] = n
                            grid_rows.append(f"{T:.10g},{n:.10g},{N:.10g},{GEOM[geom]}")
                        with CaptureFd() as cap:
                            out = radex.run(p)
                        warn = [ln.strip() for ln in cap.text.splitlines()
                                if "converge" in ln.lower() or "warning" in ln.lower()]
                        conv = not any("converge" in w.lower() for w in warn)
                        if out is None:
                            raise SystemExit(f"RADEX failed: {p}\n{cap.text}")
                        if not conv:
                            flagged.append({"model": model, "warnings": warn})
                        for l in range(NLINES):
                            r = out.iloc[l]
                            gold_rows.append(
                                f"{model},{l+1},{int(conv)},{r['T_ex']:.9g},{r['tau']:.9g},"
                                f"{r['T_R (K)']:.9g},{r['POP UP']:.9g},{r['POP LOW']:.9g},"
                                f"{r['FLUX (K*km/s)']:.9g},{r['FLUX (erg/cm2/s)']:.9g}")
                        model += 1
        head = "t_kin,n_pH2,n_oH2,column,geometry" if h2mode == "ortho_para" else "t_kin,n_H2,column,geometry"
        with open(os.path.join(OUT, f"radex_grid_{name}.csv"), "w") as f:
            f.write(f"# RADEX comparison grid for {fname} (tests/solver/radex_golden.py); "
                    f"fwhm {FWHM} km/s, t_bg {TBG} K given on the command line\n")
            f.write(head + "\n" + "\n".join(grid_rows) + "\n")
        with open(os.path.join(OUT, f"radex_golden_{name}.csv"), "w") as f:
            f.write("model,line,converged,T_ex,tau,T_R,pop_up,pop_low,flux_Kkms,flux_erg\n")
            f.write("\n".join(gold_rows) + "\n")
        meta["molecules"][name] = {"file": f"tests/data/lamda/{fname}", "models": model,
                                   "columns_cm2": cols, "tkin_K": TKIN, "n_h2_cm3": NH2,
                                   "geometries": list(GEOM.values()),
                                   "not_converged": flagged}
        print(f"{name}: {model} models, {len(flagged)} flagged by RADEX", file=sys.stderr)
    with open(os.path.join(OUT, "radex_golden.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
