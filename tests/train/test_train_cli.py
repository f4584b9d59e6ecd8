#!/usr/bin/env python3
"""`coemu train` as a first-time user meets it: the inputs a job names are
checked before anything is written, and by --check (docs/training.md).

On a tiny generated dataset (8 models x 2 directions, 16^3 cubes, 2
channels) and copies of it made bad:
  - --check reads each stage's dataset and validation dataset: a missing one,
    an unfinished one (job.yaml only) and one without /stats fail with the
    job file's FILE:LINE:COL, the key and the path, in train's own words (no
    hint at serve's --live); a good one prints what it read; --no-data checks
    the job file only; jobs/train-paper.yaml (whose datasets are not here)
    fails naming pretrain.data.dataset;
  - a run on a dataset with a truncated shard fails and leaves no output
    directory, so the corrected job then trains there;
  - --max-steps 1 --quiet exits 3 and still says where it stopped.
Prints "N passed, N failed"."""
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, mpi_singleton_env, run_in_tmpdir  # noqa: E402

COEMU = os.environ["COEMU"]
ROOT = os.environ.get("COEMU_SOURCE_ROOT", ".")
LAMDA = os.path.join(os.environ["COEMU_TEST_DATA"], "lamda", "co.dat")
ENV = mpi_singleton_env()  # generate and train start MPI as singletons
ENV["OMP_NUM_THREADS"] = "1"

GEN = f"""name: t
inputs: {{synth: {{count: 8, seed: 3, levels: 2}}}}
sampling: {{directions: 2, sampler: haar, n: 16, edge: 3.0e13, k: 1, seed: 11}}
line: {{lamda: {LAMDA}, transition: 2, channels: {{mode: grid, vmin: -600, vmax: 600, count: 2}}}}
output: {{directory: unused, samples_per_shard: 4}}
splits: {{train: 0.5, validation: 0.25, test: 0.25, seed: 2}}
statistics: {{compute: STATS}}
"""

# data.dataset's value stands at line 4, column 19
JOB = """name: cli
model: {stem: 2, encoder: [4, 4, 8], latent: 32, decoder: 16}
finetune:
  data: {dataset: DS}
  validation: {split: validation, batch: 2}
  epochs: 1
  batch: 2
"""


def run(args, cwd):
    return subprocess.run([COEMU] + args, capture_output=True, text=True, cwd=cwd, env=ENV,
                          timeout=300)


def job(tmp, name, ds):
    path = os.path.join(tmp, name + ".yaml")
    open(path, "w").write(JOB.replace("DS", ds))
    return name + ".yaml"


def main(tmp):
    for name, stats in (("ds", "true"), ("nostats", "false")):
        open(os.path.join(tmp, name + ".gen.yaml"), "w").write(GEN.replace("STATS", stats))
        r = run(["generate", name + ".gen.yaml", "--out", name, "--quiet"], tmp)
        check(r.returncode == 0, f"generate {name}: {r.stderr[-1000:]}")

    # ---- --check reads the inputs ----
    j = job(tmp, "missing", "./no-such-ds")
    r = run(["train", j, "--check"], tmp)
    check(r.returncode == 1 and "ok" not in r.stdout
          and f"{j}:4:19: finetune.data.dataset: ./no-such-ds: no such dataset folder; run or resume `coemu generate`" in r.stderr,
          f"--check of a job whose dataset does not exist: {r.returncode} {r.stdout} {r.stderr}")
    r = run(["train", j, "--check", "--no-data"], tmp)
    check(r.returncode == 0 and "ok" in r.stdout and "not checked (--no-data)" in r.stdout,
          f"--check --no-data: the job file only: {r.returncode} {r.stdout} {r.stderr}")
    r = run(["train", j, "--no-data"], tmp)
    check(r.returncode == 2 and "--no-data goes with --check" in r.stderr,
          f"--no-data without --check: {r.returncode} {r.stderr}")
    os.makedirs(os.path.join(tmp, "unfinished"))
    shutil.copy(os.path.join(tmp, "ds", "job.yaml"), os.path.join(tmp, "unfinished"))
    j = job(tmp, "unfinished", "unfinished")
    r = run(["train", j, "--check"], tmp)
    check(r.returncode == 1 and f"{j}:4:19: finetune.data.dataset: ./unfinished is not a finished dataset: "
          "no dataset.h5 yet, 0 shards made so far" in r.stderr and "coemu generate" in r.stderr
          and "--live" not in r.stderr,
          f"--check of an unfinished dataset: {r.returncode} {r.stderr}")
    # the words every reader uses (docs/faults.md, "Not a finished dataset")
    os.makedirs(os.path.join(tmp, "empty"))
    j = job(tmp, "empty", "empty")
    r = run(["train", j, "--check"], tmp)
    check(r.returncode == 1 and f"{j}:4:19: finetune.data.dataset: ./empty is not a coemu dataset: "
          "it has no dataset.h5, job.yaml or shards/" in r.stderr,
          f"--check of a folder that is no dataset: {r.returncode} {r.stderr}")
    j = job(tmp, "nostats", "nostats")
    r = run(["train", j, "--check"], tmp)
    check(r.returncode == 1 and f"{j}:4:19: finetune.data.dataset: " in r.stderr
          and "no /stats group" in r.stderr and "coemu stats" in r.stderr,
          f"--check of a dataset without /stats: {r.returncode} {r.stderr}")
    j = job(tmp, "good", "ds")
    r = run(["train", j, "--check"], tmp)
    check(r.returncode == 0 and "ok" in r.stdout and "finetune.data.dataset: dataset ./ds" in r.stdout
          and "16^3 cubes, 2 channels" in r.stdout and "finetune.validation: dataset ./ds" in r.stdout,
          f"--check of a good job: {r.returncode} {r.stdout} {r.stderr}")
    paper = os.path.join(ROOT, "jobs", "train-paper.yaml")
    if not os.path.exists(os.path.join(ROOT, "paper-faceon-dataset")):
        r = run(["train", paper, "--check"], tmp)
        check(r.returncode == 1 and "pretrain.data.dataset" in r.stderr
              and "paper-faceon-dataset: no such dataset folder" in r.stderr,
              f"--check of jobs/train-paper.yaml without its datasets: {r.returncode} {r.stderr}")
        r = run(["train", paper, "--check", "--no-data"], tmp)
        check(r.returncode == 0, f"jobs/train-paper.yaml --check --no-data: {r.stderr}")
    r = run(["train", "--help"], tmp)
    check("--no-data" in r.stdout + r.stderr and "/stats" in r.stdout + r.stderr,
          "train --help documents what --check reads and --no-data")

    # ---- a failed start leaves nothing; the corrected job trains there ----
    shutil.copytree(os.path.join(tmp, "ds"), os.path.join(tmp, "trunc"))
    shard = os.path.join(tmp, "trunc", "shards", "shard-000001.h5")
    os.truncate(shard, os.path.getsize(shard) // 2)
    j = job(tmp, "trunc", "./trunc")
    out = os.path.join(tmp, "out")
    r = run(["train", j, "--out", out], tmp)
    check(r.returncode == 1 and f"{j}:4:19: finetune.data.dataset: " in r.stderr
          and "truncated" in r.stderr, f"a truncated shard: {r.returncode} {r.stderr}")
    check(not os.path.exists(out), f"the failed start left {os.listdir(out) if os.path.exists(out) else ''}")
    # the corrected job, same directory, stopped after one step: --quiet
    # still says why it stopped (exit status 3)
    j = job(tmp, "trunc", "./ds")
    r = run(["train", j, "--out", out, "--max-steps", "1", "--quiet"], tmp)
    check(r.returncode == 3 and "stopped at step 1" in r.stderr and "rerun the same command" in r.stderr,
          f"the corrected job after a failed start, --quiet: {r.returncode} {r.stderr}")
    check(os.path.exists(os.path.join(out, "finetune", "last.ckpt")), "the stop's checkpoint")
    # a real run of another job is still refused
    j = job(tmp, "other", "./ds")
    open(os.path.join(tmp, j), "a").write("seed: 5\n")
    r = run(["train", j, "--out", out, "--quiet"], tmp)
    check(r.returncode == 1 and "holds a run of another training job" in r.stderr
          and "seed 1234 -> 5" in r.stderr, f"another job's run: {r.returncode} {r.stderr}")


run_in_tmpdir("coemu_train_cli_", main)
