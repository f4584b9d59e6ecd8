#!/usr/bin/env python3
"""`coemu eval`'s input errors end cleanly (pipeline/mpi/mpi_fatal.h): one
error line that names the dataset (and the checkpoint where it is at fault),
exit status 1, no Open MPI "MPI_ABORT was invoked" banner, no hang, alone and
on 2 ranks under mpirun.

One small dataset is made with `coemu generate` (synthetic models, n = 16,
3 channels, 4 samples in one shard), and checkpoints with dump_forward (16^3,
1 and 3 channels). Cases: a model of the wrong channel count; a dataset
without /stats (deleted from a copy); an --out that cannot be made (rank 0's
outputs); a shard whose sample 2 no longer matches its checksum, read by
rank 1 alone (--batch 2 on 2 ranks): its own message wins over rank 0's
"failed on another rank". A good run on 2 ranks still succeeds; a run that
fails while writing its pictures leaves no metrics.txt (the earlier run's
removed), so its folder does not look finished.

Usage: test_eval_errors.py DUMP_FORWARD_EXE MPIEXEC   ($COEMU: coemu)"""
import os
import shutil
import subprocess
import sys
import tempfile

import h5py

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, report  # noqa: E402

COEMU = os.environ["COEMU"]
LAMDA = os.path.join(os.environ["COEMU_TEST_DATA"], "lamda", "co.dat")
DUMP, MPIEXEC = sys.argv[1], sys.argv[2]
MPI = [MPIEXEC, "--allow-run-as-root", "--oversubscribe", "-n", "2"]
# coemu eval is an MPI program: leak checks off under the sanitizers, as in
# tests/mpirun.sh
ENV = dict(os.environ)
if ENV.get("COEMU_SANITIZE"):
    ENV["ASAN_OPTIONS"] = ENV.get("ASAN_OPTIONS", "") + ":detect_leaks=0"


def run(args, timeout=120):
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=ENV)
    except subprocess.TimeoutExpired:
        check(False, f"{' '.join(args)}: no exit within {timeout} s (a rank left waiting?)")
        return None


def clean_failure(what, r, *needles):
    """rc 1, exactly one error line holding every needle, no MPI_ABORT banner."""
    if r is None:
        return
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("coemu eval:") and "error:" in ln]
    check(r.returncode == 1, f"{what}: exit status {r.returncode}, expected 1: {r.stderr[-1500:]}")
    check("MPI_ABORT" not in r.stderr and "MPI_Abort" not in r.stderr,
          f"{what}: the MPI_ABORT banner after an input error: {r.stderr[-1500:]}")
    check(len(errors) == 1, f"{what}: {len(errors)} error lines, expected 1: {r.stderr[-1500:]}")
    for n in needles:
        check(any(n in ln for ln in errors), f"{what}: the error does not say {n!r}: {errors}")


with tempfile.TemporaryDirectory() as d:
    job = os.path.join(d, "ds.yaml")
    ds = os.path.join(d, "ds")
    with open(job, "w") as f:
        f.write(f"name: ds\ninputs:\n  synth: {{count: 2, seed: 3}}\n"
                "sampling: {directions: 2, n: 16, seed: 99, edge: auto}\n"
                f"line: {{lamda: {LAMDA}, channels: {{mode: grid, vmin: -600, vmax: 600, count: 3}}}}\n"
                f"output: {{samples_per_shard: 4, directory: {ds}}}\n"
                "splits: {train: 0.5, validation: 0.25, test: 0.25, seed: 2}\n")
    r = run([COEMU, "generate", job, "--quiet"])
    check(r is not None and r.returncode == 0, f"generate: {r and r.stderr[-2000:]}")
    r = run([DUMP, d])
    check(r is not None and r.returncode == 0, f"dump_forward: {r and r.stderr}")
    f1, f3 = os.path.join(d, "f1-reference.ckpt"), os.path.join(d, "f3-reference.ckpt")
    nostats = os.path.join(d, "nostats")
    shutil.copytree(ds, nostats)
    with h5py.File(os.path.join(nostats, "dataset.h5"), "r+") as f:
        del f["stats"]
    damaged = os.path.join(d, "damaged")
    shutil.copytree(ds, damaged)
    shards = sorted(os.listdir(os.path.join(damaged, "shards")))
    with h5py.File(os.path.join(damaged, "shards", shards[0]), "r+") as f:
        f["targets"][2] = f["targets"][2] * 2 + 1  # sample 2 no longer matches its checksum
    notdir = os.path.join(d, "a-file")
    open(notdir, "w").close()

    def ev(ckpt, data, *extra):
        return [COEMU, "eval", ckpt, data, "--split", "all", "--quiet",
                "--out", os.path.join(d, "out")] + list(extra)

    for how, pre in (("1 process", []), ("2 ranks", MPI)):
        clean_failure(f"{how}: 1-channel model, 3-channel dataset", run(pre + ev(f1, ds)),
                      ds, f1, "3 channels", "gives 1")
        clean_failure(f"{how}: dataset without /stats", run(pre + ev(f3, nostats)),
                      nostats, "/stats", "coemu stats")
        clean_failure(f"{how}: --out under a file", run(pre + ev(f3, ds, "--out", os.path.join(notdir, "x"))),
                      notdir)
    # rank 1 alone reads the damaged sample (batch 1 of 2): its message is the one printed
    r = run(MPI + ev(f3, damaged, "--batch", "2"))
    clean_failure("2 ranks: damaged sample on rank 1", r, "rank 1", "checksum", damaged)
    check(r is None or "another rank" not in r.stderr, f"the peer's message won: {r and r.stderr[-800:]}")
    r = run(MPI + ev(f3, ds, "--batch", "2"))
    check(r is not None and r.returncode == 0 and os.path.exists(os.path.join(d, "out", "metrics.txt")),
          f"2 ranks, good input: {r and r.stderr[-1500:]}")
    # a failure while writing the pictures (a map's name taken by a folder,
    # as a full disk would fail it): the earlier run's metrics.txt is gone and
    # none is written, so the folder does not look like a finished evaluation
    out = os.path.join(d, "out")
    maps = sorted(n for n in os.listdir(out) if n.startswith("maps-") and n.endswith(".png"))
    check(len(maps) > 0, f"the good run wrote maps: {os.listdir(out)}")
    if maps:
        os.remove(os.path.join(out, maps[0]))
        os.makedirs(os.path.join(out, maps[0]))
        r = run(ev(f3, ds))
        clean_failure("a map that cannot be written", r, f"{out} is incomplete (no metrics.txt)", maps[0])
        check(not os.path.exists(os.path.join(out, "metrics.txt")) and os.path.exists(os.path.join(out, "maxrel.csv")),
              f"a failed evaluation leaves no metrics.txt: {sorted(os.listdir(out))}")
report()
