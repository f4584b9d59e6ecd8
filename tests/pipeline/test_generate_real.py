#!/usr/bin/env python3
"""coemu generate with the real producer (synthetic models -> sampler -> LTE
solver): 1 and 2 ranks give identical samples; a resumed run too; every
target equals `coemu solve` on the stored inputs; the dataset verifies and
reads with h5py; the compat job runs on real AMRVAC snapshots."""
import os
import subprocess
import sys
import tempfile

import h5py
import numpy as np

COEMU = os.environ.get("COEMU", "build/pipeline/coemu")
ROOT = os.environ.get("COEMU_SOURCE_ROOT", ".")
LAMDA = os.path.join(ROOT, "tests", "data", "lamda", "co.dat")
MPI = [os.environ.get("COEMU_MPIEXEC", "mpirun"), "--allow-run-as-root", "--oversubscribe"]
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, report  # noqa: E402



JOB = f"""name: e2e
inputs:
  synth: {{count: 3, seed: 7, levels: 2}}
sampling: {{directions: 3, sampler: haar, n: 16, edge: 3.0e13, k: 2, seed: 99}}
line: {{lamda: {LAMDA}, transition: 2, channels: {{mode: coemunet}}}}
solver: {{vturb: 150.0, background: 0.0, abs: true, mass: 28.0, corrected_taylor: false}}
output: {{directory: unused, samples_per_shard: 4}}
splits: {{train: 0.34, validation: 0.33, test: 0.33, seed: 3}}
"""


def run(args, **kw):
    return subprocess.run(args, capture_output=True, text=True, timeout=300, **kw)


def arrays(d):
    with h5py.File(os.path.join(d, "dataset.h5"), "r") as f:
        return {k: f[k][()] for k in ("inputs", "targets", "direction", "model_id", "split", "valid",
                                      "checksums") if k in f}


with tempfile.TemporaryDirectory() as tmp:
    job = os.path.join(tmp, "job.yaml")
    open(job, "w").write(JOB)
    outs = {}
    for ranks in (1, 2):
        d = os.path.join(tmp, f"r{ranks}")
        r = run(MPI + ["-n", str(ranks), COEMU, "generate", job, "--out", d, "--quiet"])
        check(r.returncode == 0, f"generate on {ranks} ranks: {r.stderr[-2000:]}")
        outs[ranks] = arrays(d) if r.returncode == 0 else None
    # the producer's batches through the sample + solve pipeline (its CPU
    # implementation, COEMU_PRODUCER_BATCHED=1: what solver.device cuda runs
    # through the device's), on 2 ranks: shards of 4 samples cut across the
    # models' 3 directions; exact: the same sampler and kernel per ray
    d = os.path.join(tmp, "batched")
    r = run(MPI + ["-n", "2", "-x", "COEMU_PRODUCER_BATCHED=1", COEMU, "generate", job, "--out", d,
                   "--quiet"])
    check(r.returncode == 0, f"generate, batched producer: {r.stderr[-2000:]}")
    if r.returncode == 0 and outs[1]:
        c = arrays(d)
        for k in c:
            check(np.array_equal(c[k], outs[1][k]), f"batched producer: /{k} identical")
    # images-only (output.store_inputs false): the batched producer hands
    # generate each input row's XXH64, made inside the pipeline (on a device
    # the cubes never come back), not the row; the dataset (targets,
    # /checksums with its inputs column, the rest) equals the per-sample
    # path's, and the stored-inputs dataset's but for /inputs
    ijob = os.path.join(tmp, "img.yaml")
    open(ijob, "w").write(JOB.replace("samples_per_shard: 4}", "samples_per_shard: 4, store_inputs: false}"))
    img = {}
    for name, env in (("per-sample", []), ("batched", ["-x", "COEMU_PRODUCER_BATCHED=1"])):
        d = os.path.join(tmp, f"img-{name}")
        r = run(MPI + ["-n", "2"] + env + [COEMU, "generate", ijob, "--out", d, "--quiet"])
        check(r.returncode == 0, f"images-only generate, {name}: {r.stderr[-2000:]}")
        img[name] = arrays(d) if r.returncode == 0 else None
        if r.returncode == 0:
            check(run([COEMU, "verify", d]).returncode == 0, f"images-only, {name}: verify")
    if img["per-sample"] and img["batched"] and outs[1]:
        p, c = img["per-sample"], img["batched"]
        check("inputs" not in c and set(c) == set(p), f"images-only: no /inputs: {sorted(c)}")
        for k in p:
            check(np.array_equal(c[k], p[k]), f"images-only, batched vs per-sample: /{k} identical")
            check(np.array_equal(c[k], outs[1][k]), f"images-only batched vs stored inputs: /{k} identical")
    a, b = outs[1], outs[2]
    if a and b:
        for k in a:
            # exact by construction: every sample is computed alike whichever rank takes it
            check(np.array_equal(a[k], b[k]), f"1 vs 2 ranks: /{k} identical")
        check(a["inputs"].shape == (9, 3, 16, 16, 16) and a["targets"].shape == (9, 7, 16, 16), "shapes")
        check(np.all(a["valid"] == 1), "all valid")
        T, n = a["inputs"][:, 1], a["inputs"][:, 2]
        check(np.all(T >= 10) and np.all(T < 1e4) and np.all(n > 0), "T in range, n_CO > 0")
        check(np.all(a["targets"] >= 0) and a["targets"].max() > 0, "intensities >= 0 (abs), some > 0")
        q = a["direction"]
        check(np.allclose((q * q).sum(1), 1, atol=1e-12), "unit quaternions")
        check(len(set(map(tuple, q))) == 9, "9 distinct directions")
        m = a["model_id"]
        check(all(len(set(a["split"][m == i])) == 1 for i in range(3)), "one split per model")
        # every target is `coemu solve` on the stored inputs (same float64 solver)
        for s in (0, 4, 8):
            for c, name in enumerate(("vz", "T", "n")):
                np.save(os.path.join(tmp, f"{name}.npy"), a["inputs"][s, c])
            out = os.path.join(tmp, "img.npy")
            r = run([COEMU, "solve", "--vz", os.path.join(tmp, "vz.npy"), "--T", os.path.join(tmp, "T.npy"),
                     "--n", os.path.join(tmp, "n.npy"), "--dx", repr(3.0e13 / 16), "--lamda", LAMDA,
                     "--transition", "2", "--channels", "coemunet", "--vturb", "150", "--mass", "28",
                     "--abs", "--out", out])
            check(r.returncode == 0, f"solve: {r.stderr}")
            if r.returncode == 0:
                img = np.load(out).astype(np.float32).transpose(2, 0, 1)
                check(np.array_equal(img, a["targets"][s]), f"sample {s}: target == coemu solve")
        # verify passes; a resumed run after deleting a shard remakes it identically
        d = os.path.join(tmp, "r2")
        check(run([COEMU, "verify", d]).returncode == 0, "verify")
        os.remove(os.path.join(d, "shards", sorted(os.listdir(os.path.join(d, "shards")))[1]))
        r = run(MPI + ["-n", "2", COEMU, "generate", job, "--out", d, "--quiet"])
        check(r.returncode == 0, f"resume: {r.stderr[-2000:]}")
        c = arrays(d)
        check(all(np.array_equal(a[k], c[k]) for k in a), "resumed dataset identical")
        check(os.path.exists(os.path.join(d, "preview.png")), "preview written")
        r = run([COEMU, "inspect", d])
        check(r.returncode == 0 and "9" in r.stdout, f"inspect: {r.stdout[:300]} {r.stderr}")

    # the compat job on the real AGB wind snapshots (fewer directions)
    cjob = open(os.path.join(ROOT, "jobs", "coemunet-compat.yaml")).read()
    cjob = cjob.replace("../tests/data", os.path.join(ROOT, "tests", "data")).replace("directions: 200", "directions: 2")
    cj = os.path.join(tmp, "compat.yaml")
    open(cj, "w").write(cjob)
    d = os.path.join(tmp, "compat")
    r = run(MPI + ["-n", "2", COEMU, "generate", cj, "--out", d, "--quiet"])
    check(r.returncode == 0, f"compat generate: {r.stderr[-2000:]}")
    if r.returncode == 0:
        c = arrays(d)
        check(c["inputs"].shape == (6, 3, 64, 64, 64) and np.all(c["inputs"][:, 1] > 0), "compat inputs")
        check(np.all(c["targets"] >= 0) and c["targets"].max() > 0, "compat targets")

    # solver.device: cuda: one GPU per rank; without a device (or a CUDA build) every
    # rank stops with a message naming the job's field, and no dataset is left
    open(job, "w").write(JOB.replace("corrected_taylor: false}", "corrected_taylor: false, device: cuda}"))
    d = os.path.join(tmp, "cuda")
    r = run(MPI + ["-n", "2", COEMU, "generate", job, "--out", d, "--quiet"])
    if r.returncode == 0:  # a GPU here: the same inputs (the images' parity is scripts/gpu-check.sh's)
        c = arrays(d)
        check(a is not None and np.array_equal(c["inputs"], a["inputs"]), "device: cuda: same inputs")
        check(np.all(np.isfinite(c["targets"])), "device: cuda: finite targets")
    else:
        check(r.returncode == 1 and "solver.device" in r.stderr and
              ("no CUDA device" in r.stderr or "is not built into this coemu" in r.stderr),
              f"device: cuda without a device: rc {r.returncode}, {r.stderr[-800:]}")
        check(not os.path.exists(os.path.join(d, "dataset.h5")), "device: cuda without a device: no dataset")

    # a job whose models cannot be read stops with a message naming the model
    bad = JOB.replace("synth: {count: 3, seed: 7, levels: 2}",
                      f"amrvac: {{glob: {os.path.join(tmp, 'nomodels')}/*.dat}}")
    open(job, "w").write(bad)
    r = run(MPI + ["-n", "1", COEMU, "generate", job, "--out", os.path.join(tmp, "bad")])
    check(r.returncode != 0 and "nomodels" in r.stderr, f"no models: {r.stderr[-500:]}")

report()
