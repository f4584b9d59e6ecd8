#!/usr/bin/env python3
"""`coemu train` resumes only on the data a run was made with, whatever the
job's paths say (docs/training.md, "The run's data").

Two tiny generated datasets of different jobs (other seeds, 16 and 8
samples); a run of a job in a/ naming ../demo-dataset and ../val-dataset
(a copy) is stopped after 3 steps in tr2, then:
  - the record OUT/run.json holds each dataset's id and place;
  - the other dataset put where ../demo-dataset (or ../val-dataset) points:
    the unchanged job is refused, naming tr2, the key, the recorded id and
    place, the new one and --out; nothing is trained, and a log row written
    after the checkpoint is kept (an accepted resume cuts it); --check --out tr2
    gives the same refusal (and without a change says the stage resumes);
  - a job in err/ naming the same datasets by other paths (an absolute path
    to a copy, ../val-dataset from another folder) resumes;
  - a job in err/ naming a dataset that is not there lists the recorded
    value as the run read it (a/../demo-dataset, not err/../demo-dataset);
  - --check --out honours --out and --extend: another job's run is refused,
    a longer one is continued with --extend;
  - a run made before the record (run.json removed) still resumes, and its
    progress line never counts more steps than its total although the data
    now have fewer steps per epoch;
  - a stream of another dataset is refused at its first chunk, leaving
    train.csv whole;
  - a run begun on the fly (`serve --generate` of the dataset's job) resumes
    on the stored dataset (the same id); fresh views are refused;
  - `coemu eval` on an unfinished dataset advises generate, not serve's --live.
Prints "N passed, N failed"."""
import csv
import json
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, mpi_singleton_env, run_in_tmpdir, wait_bound  # noqa: E402

COEMU = os.environ["COEMU"]
LAMDA = os.path.join(os.environ["COEMU_TEST_DATA"], "lamda", "co.dat")
ENV = mpi_singleton_env()  # generate and train start MPI as singletons
ENV["OMP_NUM_THREADS"] = "1"

GEN = f"""name: t
inputs: {{synth: {{count: COUNT, seed: SEED, levels: 2}}}}
sampling: {{directions: 2, sampler: haar, n: 16, edge: 3.0e13, k: 1, seed: 11}}
line: {{lamda: {LAMDA}, transition: 2, channels: {{mode: grid, vmin: -600, vmax: 600, count: 2}}}}
output: {{directory: unused, samples_per_shard: 4}}
splits: {{train: 0.5, validation: 0.25, test: 0.25, seed: 2}}
statistics: {{compute: true}}
"""

JOB = """name: rd
model: {stem: 2, encoder: [4, 4, 8], latent: 32, decoder: 16}
finetune:
  data: {dataset: DS}
  validation: {dataset: VAL, split: validation, batch: 2}
  epochs: 2
  batch: 2
"""


def run(args, cwd):
    return subprocess.run([COEMU] + args, capture_output=True, text=True, cwd=cwd, env=ENV,
                          timeout=300)


def job(tmp, path, ds, val="../val-dataset", extra=""):
    os.makedirs(os.path.dirname(os.path.join(tmp, path)), exist_ok=True)
    open(os.path.join(tmp, path), "w").write(JOB.replace("DS", ds).replace("VAL", val) + extra)
    return path


def record(tmp):
    """OUT/run.json, or {} (a coemu that writes none)."""
    p = os.path.join(tmp, "tr2", "run.json")
    return json.load(open(p)) if os.path.exists(p) else {"job_dir": None, "datasets": {}}


def step_of(tmp):
    rows = list(csv.reader(open(os.path.join(tmp, "tr2", "finetune", "train.csv"))))
    return len(rows) - 1


def swap(tmp, a, b):
    """Exchange the directories a and b."""
    os.rename(os.path.join(tmp, a), os.path.join(tmp, "swap.tmp"))
    os.rename(os.path.join(tmp, b), os.path.join(tmp, a))
    os.rename(os.path.join(tmp, "swap.tmp"), os.path.join(tmp, b))


def main(tmp):
    real = os.path.realpath(tmp)
    for name, count, seed in (("demo-dataset", 8, 3), ("other-dataset", 4, 5)):
        open(os.path.join(tmp, name + ".gen.yaml"), "w").write(
            GEN.replace("COUNT", str(count)).replace("SEED", str(seed)))
        r = run(["generate", name + ".gen.yaml", "--out", name, "--quiet"], tmp)
        check(r.returncode == 0, f"generate {name}: {r.stderr[-1000:]}")
    shutil.copytree(os.path.join(tmp, "demo-dataset"), os.path.join(tmp, "val-dataset"))
    shutil.copytree(os.path.join(tmp, "demo-dataset"), os.path.join(tmp, "fresh", "demo-dataset"))

    j = job(tmp, "a/job.yaml", "../demo-dataset")
    r = run(["train", j, "--out", "tr2", "--max-steps", "3"], tmp)
    check(r.returncode == 3, f"the first run, stopped at step 3: {r.returncode} {r.stderr[-1500:]}")
    rec = record(tmp)
    data = rec["datasets"].get("finetune.data.dataset", {})
    val = rec["datasets"].get("finetune.validation.dataset", {})
    check(rec["job_dir"] == os.path.join(real, "a")
          and data.get("path") == os.path.join(real, "demo-dataset")
          and val.get("path") == os.path.join(real, "val-dataset")
          and len(data.get("dataset_id", "")) == 16 and data["dataset_id"] == val["dataset_id"],
          f"run.json records the job's folder and each dataset's place and id: {rec}")
    demo_id = data.get("dataset_id", "?")

    r = run(["train", j, "--out", "tr2", "--check"], tmp)
    check(r.returncode == 0 and "output tr2" in r.stdout and "a run of this job" in r.stdout
          and "finetune: resumes from tr2/finetune/last.ckpt (epoch 0, step 3)" in r.stdout,
          f"--check --out: the run would resume: {r.returncode} {r.stdout} {r.stderr}")

    # ---- another dataset where the job's relative path points ----
    # a row logged after the last checkpoint (a run killed between the two):
    # a resume cuts it, but only once its data are accepted; a refused
    # resume leaves the logs as they were
    tcsv, vcsv = (os.path.join(tmp, "tr2", "finetune", n) for n in ("train.csv", "validation.csv"))
    with open(tcsv, "a") as f:
        f.write("4,0,0.001,0.5,0.5,0,10\n")
    logs = open(tcsv).read(), open(vcsv).read()
    for key, place in (("finetune.data.dataset", "demo-dataset"),
                       ("finetune.validation.dataset", "val-dataset")):
        swap(tmp, place, "other-dataset")
        r = run(["train", j, "--out", "tr2", "--max-steps", "1"], tmp)
        check((open(tcsv).read(), open(vcsv).read()) == logs,
              f"{place} replaced: the refused resume left train.csv and validation.csv as they were")
        err = r.stderr
        check(r.returncode == 1 and f"tr2 holds a run whose {key} was dataset {demo_id}" in err
              and f"(read at {os.path.join(real, place)}" in err and "is another dataset (id " in err
              and "another output directory (--out)" in err and "resuming" not in err,
              f"{place} replaced by another dataset: refused: {r.returncode} {err[-1500:]}")
        check(step_of(tmp) == 4, f"{place} replaced: nothing trained ({step_of(tmp)} rows)")
        c = run(["train", j, "--out", "tr2", "--check"], tmp)
        check(c.returncode == 1 and "ok" not in c.stdout
              and f"tr2 holds a run whose {key} was dataset {demo_id}" in c.stderr,
              f"--check --out gives the run's refusal: {c.returncode} {c.stdout} {c.stderr}")
        swap(tmp, place, "other-dataset")

    # ---- the same datasets by other paths: the run resumes ----
    e = job(tmp, "err/job.yaml", os.path.join(tmp, "fresh", "demo-dataset"))
    r = run(["train", e, "--out", "tr2", "--max-steps", "1"], tmp)
    check(r.returncode == 3 and "resuming from tr2/finetune/last.ckpt (epoch 0, step 3)" in r.stderr,
          f"the same datasets by other paths resume: {r.returncode} {r.stderr[-1500:]}")
    check(step_of(tmp) == 4, f"one step more, the row after the checkpoint cut: {step_of(tmp)}")
    # a changed key names the recorded value as the run read it
    b = job(tmp, "err/bad.yaml", "../no-such-dataset")
    r = run(["train", b, "--out", "tr2"], tmp)
    check(r.returncode == 1 and "holds a run of another training job" in r.stderr
          and f"finetune.data.dataset {os.path.join(real, 'a')}/../demo-dataset -> " in r.stderr
          and "err/../demo-dataset" not in r.stderr,
          f"the recorded path as it was: {r.returncode} {r.stderr[-1500:]}")

    # ---- --check honours --out and --extend ----
    o = job(tmp, "a/seed.yaml", "../demo-dataset", extra="seed: 5\n")
    r = run(["train", o, "--out", "tr2", "--check"], tmp)
    check(r.returncode == 1 and "ok" not in r.stdout and "holds a run of another training job" in r.stderr
          and "seed 1234 -> 5" in r.stderr, f"--check --out: another job: {r.returncode} {r.stderr}")
    x = job(tmp, "a/longer.yaml", "../demo-dataset")
    text = open(os.path.join(tmp, x)).read()
    open(os.path.join(tmp, x), "w").write(text.replace("epochs: 2", "epochs: 3"))
    r = run(["train", x, "--out", "tr2", "--check"], tmp)
    check(r.returncode == 1 and "rerun with --extend" in r.stderr, f"--check: more epochs: {r.stderr}")
    r = run(["train", x, "--out", "tr2", "--check", "--extend"], tmp)
    check(r.returncode == 0 and "a run of another job that --extend continues" in r.stdout,
          f"--check --extend: {r.returncode} {r.stdout} {r.stderr}")
    check(not os.path.exists(os.path.join(tmp, "tr2", "train.1.yaml")), "--check --extend records nothing")

    # ---- a run made before the record; fewer steps per epoch ----
    if os.path.exists(os.path.join(tmp, "tr2", "run.json")):
        os.remove(os.path.join(tmp, "tr2", "run.json"))
    swap(tmp, "demo-dataset", "other-dataset")
    r = run(["train", j, "--out", "tr2"], tmp)
    check(r.returncode == 0 and "resuming from tr2/finetune/last.ckpt (epoch 0, step 4)" in r.stderr,
          f"a run without a record resumes: {r.returncode} {r.stderr[-1500:]}")
    lines = re.findall(r"finetune: (\d+)/(\d+) steps", r.stderr)
    check(lines and all(int(a) <= int(t) for a, t in lines),
          f"the progress counts no more steps than its total: {lines}")
    rec = record(tmp)
    check(rec["job_dir"] == "" and "finetune.data.dataset" in rec["datasets"],
          f"the record made on that resume: {rec}")
    swap(tmp, "demo-dataset", "other-dataset")

    # ---- a stream: the id its producer announces ----
    ep = "ipc://" + os.path.join(tmp, "s.sock")
    sj = os.path.join("s", "job.yaml")
    os.makedirs(os.path.join(tmp, "s"))
    open(os.path.join(tmp, sj), "w").write(
        JOB.replace("{dataset: DS}", f"{{stream: {{endpoint: '{ep}'}}}}")
        .replace("{dataset: VAL, split: validation, batch: 2}", "{split: none}"))
    for ds, steps, want in (("demo-dataset", "1", 3), ("other-dataset", "1", 1)):
        if ds == "other-dataset":  # a row logged after the checkpoint, kept by the refusal
            with open(os.path.join(tmp, "st", "finetune", "train.csv"), "a") as f:
                f.write("2,0,0.001,0.5,0.5,0,10\n")
        srv = subprocess.Popen([COEMU, "serve", ds, "--endpoint", ep, "--batch", "2", "--seed", "1234",
                                "--idle-exit", "20"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=ENV, cwd=tmp)
        check(wait_bound(srv, ep), f"coemu serve {ds} is up")
        r = run(["train", sj, "--out", "st", "--max-steps", steps], tmp)
        srv.terminate()
        srv.communicate(timeout=30)
        check(r.returncode == want, f"from a stream of {ds}: {r.returncode}, expected {want}: {r.stderr[-1500:]}")
    check("st holds a run whose finetune.data.stream.endpoint was dataset " + demo_id in r.stderr
          and f"the stream at {ep} is another dataset" in r.stderr,
          f"a stream of another dataset at the endpoint is refused: {r.stderr[-1500:]}")
    rec = json.load(open(os.path.join(tmp, "st", "run.json"))) if os.path.exists(
        os.path.join(tmp, "st", "run.json")) else {"datasets": {}}
    check(rec["datasets"].get("finetune.data.stream.endpoint", {}).get("dataset_id") == demo_id,
          f"the stream's id is the dataset's: {rec}")
    check(len(list(csv.reader(open(os.path.join(tmp, "st", "finetune", "train.csv"))))) == 3,
          "nothing trained on the other stream, and the refusal at its first chunk cut no log row")

    # ---- on the fly: `serve --generate JOB` announces the id of the dataset
    # `coemu generate JOB` makes (the job's text), so a run begun on the fly
    # resumes on the stored dataset; fresh views are other data: refused ----
    for how, args, steps, want in (("on the fly", [], 1, 3), ("the dataset", None, 2, 3),
                                   ("fresh views", ["--fresh-views"], 3, 1)):
        cmd = ([COEMU, "serve", "--generate", "demo-dataset.gen.yaml", "--stats", "demo-dataset",
                "--out", "onfly-models"] + args) if args is not None else [COEMU, "serve", "demo-dataset"]
        srv = subprocess.Popen(cmd + ["--endpoint", ep, "--batch", "2", "--seed", "1234", "--idle-exit", "20"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=tmp)
        check(wait_bound(srv, ep), f"coemu serve ({how}) is up")
        r = run(["train", sj, "--out", "fly", "--max-steps", str(steps)], tmp)  # one step each
        srv.terminate()
        srv.communicate(timeout=60)
        check(r.returncode == want, f"a run from a stream ({how}): {r.returncode}, expected {want}: {r.stderr[-1500:]}")
    rec = json.load(open(os.path.join(tmp, "fly", "run.json"))) if os.path.exists(
        os.path.join(tmp, "fly", "run.json")) else {"datasets": {}}
    check(rec["datasets"].get("finetune.data.stream.endpoint", {}).get("dataset_id") == demo_id,
          f"on the fly: the recorded id is the dataset's: {rec}")
    check("is another dataset" in r.stderr, f"fresh views are another dataset: {r.stderr[-1000:]}")

    # ---- coemu eval on an unfinished dataset: its own advice ----
    shutil.copytree(os.path.join(tmp, "demo-dataset"), os.path.join(tmp, "unfinished"))
    os.remove(os.path.join(tmp, "unfinished", "manifest.json"))
    r = run(["eval", "tr2/finetune/last.ckpt", "unfinished", "--out", "ev"], tmp)
    check(r.returncode == 1 and "unfinished is not a finished dataset" in r.stderr
          and "--live" not in r.stderr and "coemu generate" in r.stderr,
          f"eval on an unfinished dataset: {r.returncode} {r.stderr[-800:]}")


run_in_tmpdir("coemu_train_resume_data_", main)
