#!/usr/bin/env python3
"""line.mode lvg end to end (docs/nlte.md, "Jobs"): a tiny non-LTE job through
coemu generate (1 and 2 ranks give identical data; the dataset records the
mode), coemu stats and coemu serve (one epoch read with coemu_stream.py); the
high-density limit, where the LVG targets must approach the LTE job's as
1/n_H2; the shipped non-LTE jobs validate; models with cells the LVG
solve refuses are found by --check and before the run makes anything; an HCN job (another molecule, line.abundance); bad keys and a
molecule without H2 rates fail with FILE:LINE:COL messages.  Prints
"N passed, N failed"."""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import h5py
import numpy as np

COEMU = os.environ.get("COEMU", "build/pipeline/coemu")
ROOT = os.environ.get("COEMU_SOURCE_ROOT", ".")
LAMDA = os.path.join(ROOT, "tests", "data", "lamda")
MPI = [os.environ.get("COEMU_MPIEXEC", "mpirun"), "--allow-run-as-root", "--oversubscribe"]
sys.path.insert(0, os.path.join(ROOT, "pipeline", "stream"))
import coemu_stream as cs  # noqa: E402
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, mpi_singleton_env, report, sanitizer_full_stacks, wait_bound  # noqa: E402

sanitizer_full_stacks()

# synth levels 1 (32^3 = 32768 leaf cells per model): the LVG solve takes
# ~1.5 s of CPU per model (docs/benchmarks.md: ~45 us per cell), so the whole
# test fits the 2 shared cores of the CI host; levels 2 would be ~16 s a model.
INPUTS = "synth: {count: 2, seed: 3, levels: 1}"
# reconstruction constant: lvg jobs sample cell values (auto resolves to
# constant there), and the LTE jobs compared with them must cut the same cubes
COMMON = """sampling: {{directions: 2, n: 16, seed: 99, reconstruction: constant{sampling}}}
line: {{lamda: {lamda}, mode: {mode}{extra}}}
output: {{samples_per_shard: 2}}
splits: {{train: 0.5, validation: 0.5, test: 0.0, seed: 2}}
"""


def job(name, mode, inputs=INPUTS, lamda=os.path.join(LAMDA, "co.dat"), extra=", lvg: {directions: 8}",
        sampling=""):
    return f"name: {name}\ninputs:\n  {inputs}\n" + COMMON.format(lamda=lamda, mode=mode, extra=extra,
                                                                  sampling=sampling)


def run(args, **kw):
    if args[0] == COEMU:  # generate or stats without mpiexec: an MPI singleton
        kw.setdefault("env", mpi_singleton_env())
    return subprocess.run(args, capture_output=True, text=True, timeout=600, **kw)


def generate(tmp, name, text, out, ranks=1):
    path = os.path.join(tmp, name + ".yaml")
    open(path, "w").write(text)
    r = run(MPI + ["-n", str(ranks), COEMU, "generate", path, "--out", out, "--quiet"])
    check(r.returncode == 0, f"generate {name} on {ranks} rank(s): {r.stderr[-2000:]}")
    return r.returncode == 0


def arrays(d):
    with h5py.File(os.path.join(d, "dataset.h5"), "r") as f:
        return {k: f[k][()] for k in ("inputs", "targets", "direction", "model_id", "split", "valid")}


def rel_diff(a, b):
    """max |a - b| / max |b| per image (the images' own scale)"""
    scale = np.abs(b).max(axis=(1, 2, 3), keepdims=True)
    return float((np.abs(a.astype(np.float64) - b) / scale).max())


def end_to_end(tmp):
    text = job("lvg-tiny", "lvg")
    outs = {}
    for ranks in (1, 2):
        d = os.path.join(tmp, f"lvg{ranks}")
        outs[ranks] = arrays(d) if generate(tmp, f"lvg{ranks}", text, d, ranks) else None
    a, b = outs[1], outs[2]
    if not (a and b):
        return None
    for k in a:  # exact by construction: populations per model do not depend on the rank
        check(np.array_equal(a[k], b[k]), f"lvg, 1 vs 2 ranks: /{k} identical")
    t = a["targets"]
    check(t.shape == (4, 7, 16, 16) and np.all(np.isfinite(t)) and t.max() > 0, "lvg targets finite, > 0")
    # I = int eta exp(-tau) ds >= 0 with no background, masers included (CO J=2-1 inverts in some
    # cells: chi changes sign within a segment there; docs/physics.md, "Masing segments")
    check(t.min() >= 0, f"lvg targets >= 0: {int((t < 0).sum())} of {t.size} below 0, down to {t.min():.3g} "
          f"(max {t.max():.3g})")
    d = os.path.join(tmp, "lvg1")
    with h5py.File(os.path.join(d, "dataset.h5"), "r") as f:
        pv = f["provenance"].attrs
        check(pv["line_mode"] == "lvg", "provenance: line_mode lvg")
        lp = pv["line_populations"]
        check(lp.startswith("lvg ") and "directions=8" in lp and "escape=sobolev" in lp and
              "t_bg=2.725" in lp and "tol=1e-08" in lp and "max_iter=1000" in lp and "vturb=150" in lp,
              f"provenance: the lvg parameters ({lp})")
    man = json.load(open(os.path.join(d, "manifest.json")))
    check(man.get("line_mode") == "lvg" and man.get("line_populations") == lp, "manifest: line mode")
    # the LTE job of the same models: other targets, same inputs, other fingerprint
    lte = os.path.join(tmp, "lte")
    if generate(tmp, "lte", job("lvg-tiny", "lte", extra=""), lte):
        c = arrays(lte)
        check(np.array_equal(c["inputs"], a["inputs"]), "lte vs lvg: the same input cubes")
        check(not np.array_equal(c["targets"], a["targets"]), "lte vs lvg: other targets")
        check("line_mode" not in json.load(open(os.path.join(lte, "manifest.json"))),
              "lte manifest as before (no line_mode)")
        with h5py.File(os.path.join(lte, "dataset.h5"), "r") as f:
            check(f["provenance"].attrs["line_mode"] == "lte", "provenance: line_mode lte")
            fl = f["provenance"].attrs["job_fingerprint"]
        with h5py.File(os.path.join(d, "dataset.h5"), "r") as f:
            check(f["provenance"].attrs["job_fingerprint"] != fl, "the fingerprints differ")
    # stats
    r = run([COEMU, "stats", d, "--quiet"])
    check(r.returncode == 0, f"coemu stats: {r.stderr[-1500:]}")
    with h5py.File(os.path.join(d, "dataset.h5"), "r") as f:
        check("stats" in f, "/stats written")
    # serve: one epoch of the training split, read from Python
    ep = f"ipc://{tmp}/serve.sock"
    p = subprocess.Popen([COEMU, "serve", d, "--endpoint", ep, "--heartbeat", "0.2", "--batch", "1",
                          "--epochs", "1"], stderr=subprocess.PIPE, text=True)
    wait_bound(p, ep)
    got = []
    try:
        c = cs.StreamClient(ep, timeout_s=20, heartbeat_s=0.2)
        try:
            got = c.drain()
        finally:
            c.close()
    except Exception as e:  # noqa: BLE001
        check(False, f"serve: {e}")
    try:
        p.wait(timeout=20)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    check(p.returncode == 0, f"serve exit status {p.returncode}: {p.stderr.read()[-1000:]}")
    train = np.flatnonzero(a["split"] == 0)
    ids = [int(i) for ch in got for i in ch.ids]
    check(sorted(ids) == sorted(train.tolist()) and len(train) > 0, f"serve: the training samples ({ids})")
    ok = all(np.array_equal(ch.targets[k], a["targets"][int(i)]) and
             np.array_equal(ch.inputs[k], a["inputs"][int(i)]) for ch in got for k, i in enumerate(ch.ids))
    check(ok and got, "serve: the samples as stored")
    return a


def scaled_models(tmp, src, name, s):
    """the synth models of `src` as AMRVAC inputs with n_H2 x s and X_CO / s:
    n_CO (so the LTE targets and every optical depth) unchanged, collisions x s"""
    d = os.path.join(tmp, name)
    os.makedirs(d)
    for f in sorted(os.listdir(src)):
        if f.endswith(".dat"):
            shutil.copy(os.path.join(src, f), d)
        elif f.endswith(".units.yaml"):
            t = open(os.path.join(src, f)).read()
            t = re.sub(r"(?m)^unit_numberdensity: (\S+)", lambda m: f"unit_numberdensity: {float(m[1]) * s!r}", t)
            t = re.sub(r"(?m)^co_abundance: (\S+)", lambda m: f"co_abundance: {float(m[1]) / s!r}", t)
            open(os.path.join(d, f), "w").write(t)
    return f"amrvac: {{glob: {d}/*.dat}}"


def high_density(tmp):
    """At high n_H2 the LVG populations go to Boltzmann at T_kin with
    departures A beta / (n_H2 k) (tests/solver/test_nlte_lvg.c), linear in
    1/n_H2 to first order; the images are smooth in the populations, so
    d(s) = |targets_lvg - targets_lte| / scale = a / s + O(1/s^2). With
    d(s1) already small (< 0.05, the linear regime) the bound at s2 = 100 s1
    is 2 d(s1) / 100 (a factor 2 for the second-order term) plus the noise
    floor of the comparison: float32 targets (2^-24 relative, x 4 for the two
    roundings and the populations' own float32) and the solver's tol 1e-10.
    One sub-sample per voxel (k = 1): with k > 1 the LVG voxel holds the
    mean of the sub-samples' n x (the emissivity's mean) where the LTE
    imager takes Boltzmann at the mean T, a difference of the sampling, not
    of the populations, that does not go away with density."""
    src = os.path.join(tmp, "lvg1", "models")
    if not os.path.isdir(src):
        check(False, "high density: no models from the end-to-end run")
        return
    s1, s2 = 1e6, 1e8
    inp1, inp2 = scaled_models(tmp, src, "m1", s1), scaled_models(tmp, src, "m2", s2)
    outs = {}
    for key, inp, mode in (("lte", inp1, "lte"), ("lvg1", inp1, "lvg"), ("lvg2", inp2, "lvg")):
        d = os.path.join(tmp, "hd-" + key)
        extra = "" if mode == "lte" else ", lvg: {directions: 8, tol: 1e-10}"
        outs[key] = arrays(d)["targets"] if generate(tmp, "hd-" + key, job("hd", mode, inp, extra=extra, sampling=", k: 1"), d) else None
    if any(v is None for v in outs.values()):
        return
    d1, d2 = rel_diff(outs["lvg1"], outs["lte"]), rel_diff(outs["lvg2"], outs["lte"])
    floor = 4 * 2.0**-24 + 1e-8
    bound = 2 * d1 * s1 / s2 + floor
    print(f"  high density: n_H2 x {s1:g}: {d1:.3g}, x {s2:g}: {d2:.3g} from the LTE targets "
          f"(bound {bound:.3g})", file=sys.stderr)
    check(d1 < 0.05, f"n_H2 x {s1:g}: in the linear regime ({d1:.3g} < 0.05)")
    check(d2 <= bound, f"n_H2 x {s2:g}: {d2:.3g} from LTE, bound {bound:.3g}")


def hcn(tmp):
    d = os.path.join(tmp, "hcn")
    extra = ", transition: 3, abundance: 2.0e-8, lvg: {directions: 8}"
    if generate(tmp, "hcn", job("hcn", "lvg", lamda=os.path.join(LAMDA, "hcn.dat"), extra=extra), d):
        t = arrays(d)["targets"]
        check(np.all(np.isfinite(t)) and t.max() > 0, "hcn: targets finite, > 0")
        with h5py.File(os.path.join(d, "dataset.h5"), "r") as f:
            check("abundance=2e-08" in f["provenance"].attrs["line_populations"], "hcn: abundance recorded")


def cell_error(tmp):
    """HCN at X = 2e-7 has a cell of synth model 1 (seed 3) where the solver
    does not converge (docs/nlte.md, "Known limits"): the job stops with the
    model and the cell named; with on_bad_model: skip that model's samples
    are invalid and the other model's are made."""
    extra = ", transition: 3, abundance: 2.0e-7, lvg: {directions: 8}"
    hcn = os.path.join(LAMDA, "hcn.dat")
    path = os.path.join(tmp, "cell.yaml")
    open(path, "w").write(job("cell", "lvg", lamda=hcn, extra=extra))
    r = run([COEMU, "generate", path, "--out", os.path.join(tmp, "cell")])
    want = r"model 1 \(synth-3-000001\), direction 0: line\.mode lvg: leaf \d+ \(level \d, block [\d ]+\), cell \([\d, ]+\) at \(.*\) m: cell \d+ \(T_kin"
    check(r.returncode == 1 and re.search(want, r.stderr), f"a failing cell is named: {r.stderr[-600:]}")
    check(not os.path.exists(os.path.join(tmp, "cell", "dataset.h5")), "a failing cell: no dataset")
    d = os.path.join(tmp, "cellskip")
    text = job("cell", "lvg", inputs=INPUTS + "\n  on_bad_model: skip", lamda=hcn, extra=extra)
    text += "statistics: {split: all}\n"  # the training split is model 1 alone
    if generate(tmp, "cellskip", text, d):
        a = arrays(d)
        check(np.array_equal(a["valid"], (a["model_id"] == 0).astype(a["valid"].dtype)),
              f"on_bad_model skip: model 1 invalid, model 0 valid ({a['valid']}, {a['model_id']})")


def hot_models(tmp):
    """tests/data/amrvac/agbwind3d_0001 and _0002 have cells hotter (and
    colder) than the LVG solve takes (0.1 .. 1e4 K; _0000, the analytic
    initial state, has none). --check reads every model of an lvg job and
    says so, naming the model, the cell and how many cells; the run refuses
    before it creates anything (it used to make model 0's shard and stop at
    model 1). With on_bad_model: skip, --check counts the models it will
    skip and the run skips exactly those."""
    amr = os.path.join(ROOT, "tests", "data", "amrvac")
    inputs = f"amrvac: {{glob: {amr}/agbwind3d_000*.dat}}"
    path = os.path.join(tmp, "hot.yaml")
    open(path, "w").write(job("hot", "lvg", inputs=inputs))
    out = os.path.join(tmp, "hot")
    want = (re.escape(path) + r":3:\d+: inputs\.amrvac\.glob: model 1 of 3, .*agbwind3d_0001\.dat: line\.mode lvg: "
            r"leaf \d+ \(level \d, block [\d ]+\), cell \([\d, ]+\) at \(.*\) m: cell \d+: T_kin = [\d.e+]+, "
            r"expected 0\.1 \.\. 1e4 K; 3260 of 61440 cells are outside what the LVG solve takes "
            r"\(T_kin 0\.00976\d* \.\. 26\d+ K in this model\): this model stops the run.*on_bad_model: skip")
    r = run([COEMU, "generate", path, "--check", "--out", out])
    check(r.returncode == 1 and re.search(want, r.stderr) and ": ok: " not in r.stdout,
          f"hot models, --check: exit {r.returncode}, {r.stderr.strip()[-700:]}")
    r = run([COEMU, "generate", path, "--out", out, "--quiet"])
    check(r.returncode == 1 and re.search(want, r.stderr), f"hot models, run: exit {r.returncode}, {r.stderr.strip()[-700:]}")
    check(not os.path.exists(out), "hot models: the run refused before it created its folder")
    open(path, "w").write(job("hot", "lvg", inputs=inputs + "\n  on_bad_model: skip") + "statistics: {split: all}\n")
    r = run([COEMU, "generate", path, "--check", "--out", out])
    check(r.returncode == 0 and "populations (line.mode lvg): 3 models read (T_kin 0.00364 .. 2.62e+05 K), 61440 cells to solve" in r.stdout
          and re.search(r"skipped: 2 of 3 models, their 4 samples stored invalid \(inputs\.on_bad_model: skip\); "
                        r"the first: .*model 1 of 3, .*agbwind3d_0001\.dat", r.stdout),
          f"hot models, skip, --check: exit {r.returncode}, {r.stdout[-900:]} {r.stderr[-500:]}")
    if generate(tmp, "hot", open(path).read(), out):
        a = arrays(out)
        check(np.array_equal(a["valid"], (a["model_id"] == 0).astype(a["valid"].dtype)),
              f"hot models, skip: models 1 and 2 invalid as --check said ({a['valid']}, {a['model_id']})")


def bad(tmp):
    cases = [
        ("mode", job("b", "foo"), r":5:\d+: line\.mode: expected one of lte, lvg, got 'foo'"),
        ("dirs0", job("b", "lvg", extra=", lvg: {directions: 0}"), r":5:\d+: line\.lvg\.directions: expected an integer in 1\.\.1024"),
        ("dirs5", job("b", "lvg", extra=", lvg: {directions: 5}"), r":5:\d+: line\.lvg\.directions: expected 3 or 2 m\^2"),
        ("escape", job("b", "lvg", extra=", lvg: {escape: foo}"), r":5:\d+: line\.lvg\.escape: expected one of sobolev, radex"),
        ("key", job("b", "lvg", extra=", lvg: {direction: 8}"), r":5:\d+: unknown key 'line\.lvg\.direction'"),
        ("hcn-no-x", job("b", "lvg", lamda=os.path.join(LAMDA, "hcn.dat")), r":5:\d+: line\.lamda: .*hcn\.dat is HCN, not CO: .*line\.abundance"),
    ]
    # a molecule whose file has rates for He only (hcn.dat with its partner id made 6)
    he = os.path.join(tmp, "hcn-he.dat")
    open(he, "w").write(re.sub(r"(?m)^1 HCN-H2", "6 HCN-He", open(os.path.join(LAMDA, "hcn.dat")).read()))
    cases.append(("no-h2", job("b", "lvg", lamda=he, extra=", abundance: 1e-7"),
                  r":5:\d+: line\.lamda: .*hcn-he\.dat has no collision rates with H2 .*partners: He.*\)"))
    for name, text, want in cases:
        path = os.path.join(tmp, f"bad-{name}.yaml")
        open(path, "w").write(text)
        r = run([COEMU, "generate", path, "--out", os.path.join(tmp, f"bad-{name}")])
        check(r.returncode != 0 and re.search(re.escape(path) + want, r.stderr),
              f"bad job {name}: exit {r.returncode}, {r.stderr.strip()[-400:]}")
        check(not os.path.exists(os.path.join(tmp, f"bad-{name}", "dataset.h5")), f"bad job {name}: no dataset")
        r = run([COEMU, "generate", path, "--check"])
        check(r.returncode != 0 and re.search(re.escape(path) + want, r.stderr),
              f"bad job {name}, --check: exit {r.returncode}, {r.stderr.strip()[-400:]}")


def shipped():
    for name in ("demo-lvg", "hcn-lvg"):
        r = run([COEMU, "generate", os.path.join(ROOT, "jobs", name + ".yaml"), "--check"])
        check(r.returncode == 0 and ": ok: " in r.stdout, f"--check jobs/{name}.yaml: {r.stderr}")


def main():
    tmp = tempfile.mkdtemp(prefix="coemu-lvg-")
    try:
        shipped()
        hot_models(tmp)
        bad(tmp)
        end_to_end(tmp)
        high_density(tmp)
        hcn(tmp)
        cell_error(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report()


main()
