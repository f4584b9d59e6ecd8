#!/usr/bin/env python3
"""coemu train and coemu eval end to end, on two small generated datasets
(16^3 cubes): a single-channel face-on set for pretraining and a
three-channel set for fine-tuning, with a scaled-down COEmuNet.

  - pretraining then fine-tuning lower the training and validation losses
    by a clear margin, in the mean of five seeds (the criteria's comment);
  - the encoder is really transferred (checkpoint tensors compared);
  - a run stopped (--max-steps) and resumed gives the same loss curve,
    value for value, as one that was not stopped;
  - a finished run extended with --extend trains the added epoch, records
    the change, and refuses a changed batch with exit status 1 naming it;
  - 2 MPI ranks with batch B/2 each follow 1 rank with batch B up to
    summation order;
  - training from a `coemu serve` stream gives the same losses as from the
    dataset directory (same order, same normalisation);
  - with data.order: shards the same holds against `coemu serve --order
    shards` (and the losses differ from order exact's); a trainer asking
    for order exact from that producer is refused, naming both orders;
  - coemu eval writes its table, CSV and pictures, and 1 and 2 ranks give the
    same per-sample metrics;
  - bad input: corrupted and mismatched checkpoints, another job's output
    directory, a dataset without /stats, multi-channel data for pretraining.
"""
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

COEMU = os.environ.get("COEMU", "build/pipeline/coemu")
ROOT = os.environ.get("COEMU_SOURCE_ROOT", ".")
LAMDA = os.path.join(os.path.abspath(ROOT), "tests", "data", "lamda", "co.dat")
MPI = [os.environ.get("COEMU_MPIEXEC", "mpirun"), "--allow-run-as-root", "--oversubscribe"]
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, report  # noqa: E402
from ckptfile import INT32_MAX, read_ckpt  # noqa: E402

U32 = float(np.finfo(np.float32).eps) / 2  # float32 unit roundoff

ENV = dict(os.environ, OMP_NUM_THREADS="2")
if ENV.get("COEMU_SANITIZE"):  # coemu train/eval are MPI programs: see tests/mpirun.sh
    ENV["ASAN_OPTIONS"] = ENV.get("ASAN_OPTIONS", "") + ":detect_leaks=0"


def run(args, timeout=600, **kw):
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=ENV, **kw)


def gen_job(sampler, channels, stats=True, count=24, directions=4):
    return f"""name: t
inputs: {{synth: {{count: {count}, seed: 3, levels: 2}}}}
sampling: {{directions: {directions}, sampler: {sampler}, n: 16, edge: 3.0e13, k: 1, seed: 11}}
line: {{lamda: {LAMDA}, transition: 2, channels: {channels}}}
output: {{directory: unused, samples_per_shard: 16}}
splits: {{train: 0.75, validation: 0.125, test: 0.125, seed: 2}}
statistics: {{compute: {'true' if stats else 'false'}}}
"""


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def losses(path, n=None):
    r = rows(path)[:n]
    return np.array([[float(x[k]) for k in ("loss", "mse", "fft")] for x in r])


MODEL = "model: {stem: 2, encoder: [4, 4, 8], latent: 32, decoder: 16}"


# 24 models x 4 directions: 18 training models (72 samples, 9 steps of 8 per
# epoch), 3 validation and 3 test models (12 samples each). Adam's eps is
# 1e-3 where runs are compared: a convolution bias right before a BatchNorm
# has a true gradient of 0, and with eps 1e-8 Adam turns its float32 noise
# into full-size steps that make every summation-order difference grow.
def stage(dataset, epochs, extra="", eps="1.0e-8"):
    return f"""  data: {{dataset: {dataset}}}
  validation: {{split: validation, batch: 4}}
  epochs: {epochs}
  batch: 8
  optimizer: {{lr: 3.0e-3, eps: {eps}}}
{extra}"""


with tempfile.TemporaryDirectory() as tmp:
    pre, ft, nostats = (os.path.join(tmp, d) for d in ("pre", "ft", "nostats"))
    # face-on is one view per model (coemu generate refuses more: they would
    # be copies), so the pretraining set has 4x the models for its 96 samples
    for d, job in ((pre, gen_job("faceon", "{mode: list, velocities: [0.0]}", count=96, directions=1)),
                   (ft, gen_job("haar", "{mode: grid, vmin: -600, vmax: 600, count: 3}")),
                   (nostats, gen_job("haar", "{mode: grid, vmin: -600, vmax: 600, count: 3}", False))):
        open(d + ".yaml", "w").write(job)
        r = run(MPI + ["-n", "2", COEMU, "generate", d + ".yaml", "--out", d, "--quiet"])
        check(r.returncode == 0, f"generate {d}: {r.stderr[-1500:]}")

    # ---- pretraining, then fine-tuning with the encoder transferred ----
    full = os.path.join(tmp, "full.yaml")
    open(full, "w").write(f"name: full\nseed: 5\n{MODEL}\npretrain:\n{stage(pre, 6)}"
                          f"finetune:\n{stage(ft, 6, '  checkpoint_every: 4')}")
    out = os.path.join(tmp, "out")
    t0 = time.time()
    r = run([COEMU, "train", full, "--out", out])
    check(r.returncode == 0, f"train pretrain+finetune: rc {r.returncode}: {r.stderr[-3000:]}")
    print(f"pretrain + finetune: {time.time() - t0:.1f} s")
    check("encoder transferred from" in r.stderr, "the transfer is reported")
    for st, epochs in (("pretrain", 6), ("finetune", 6)):
        d = os.path.join(out, st)
        for f in ("last.ckpt", "best.ckpt", "train.csv", "validation.csv", "loss.png"):
            check(os.path.exists(os.path.join(d, f)), f"{st}/{f} written")
        tr = rows(os.path.join(d, "train.csv"))
        check(len(tr) == epochs * 9, f"{st}: {len(tr)} training rows, expected {epochs * 9}")
        va = rows(os.path.join(d, "validation.csv"))
        check(len(va) == epochs + 1 and va[0]["epoch"] == "0", f"{st}: a baseline and one row per epoch")
        print(f"{st}: validation loss {float(va[0]['loss']):.4g} -> best "
              f"{min(float(x['loss']) for x in va):.4g}, MaxRel median "
              f"{float(va[0]['maxrel_median']):.3g}% -> {float(va[-1]['maxrel_median']):.3g}%")

    # the header as docs/trainer.md gives it (read_ckpt checks the header size,
    # 132, and reads the table at 148): a stage without a schedule (step_size
    # 0, a constant rate) stores StepLR's step size as INT32_MAX
    h, _ = read_ckpt(os.path.join(out, "pretrain", "last.ckpt"), header=True)
    check(h["step_size"] == INT32_MAX and h["epoch"] == 6 and h["step"] == 6 * 9 and h["seed"] == 5,
          f"pretrain/last.ckpt header: {h}")

    # learning criteria, not rounding tolerances. Where 54 float32 Adam steps
    # end depends on the host's summation orders (BLAS kernels, compiler,
    # architecture: aarch64 gave 0.822 for this run's fine-tuning ratio below,
    # x86 hosts 0.65-0.74), and so does a single run's ratio much more than a
    # threshold can allow: over 40 seeds and 4 OpenBLAS kernels (2026-12-07)
    # the fine-tuning's best validation loss was 0.32-0.99 of its first
    # (median 0.65; above 0.8 in 17 % of the runs). Another seed is at least
    # as large a perturbation as another host's summation order (seed 5 on
    # 4 kernels and aarch64: 0.65-0.82), so the criteria are on the mean of
    # five seeds, whose distribution that sample bounds: resampled, the
    # fine-tuning mean's 99.9th percentile is 0.885 (the threshold 0.9), the
    # pretraining's 99.99th 0.75 (0.8), and the training losses' worst single
    # run 0.56 (the mean: 0.5). A trainer that does not learn gives 1.
    ratios = {st: [] for st in ("pretrain", "finetune")}
    for seed in (1, 2, 3, 4, 5):
        o = out if seed == 5 else os.path.join(tmp, f"seed{seed}")
        if seed != 5:
            job = os.path.join(tmp, f"seed{seed}.yaml")
            open(job, "w").write(f"name: full\nseed: {seed}\n{MODEL}\npretrain:\n{stage(pre, 6)}"
                                 f"finetune:\n{stage(ft, 6)}")
            r = run([COEMU, "train", job, "--out", o, "--quiet"])
            check(r.returncode == 0, f"train seed {seed}: rc {r.returncode}: {r.stderr[-1500:]}")
            if r.returncode:
                continue
        for st in ratios:
            tr, va = rows(os.path.join(o, st, "train.csv")), rows(os.path.join(o, st, "validation.csv"))
            last_epoch = np.mean([float(x["loss"]) for x in tr[-9:]])
            ratios[st].append((last_epoch / float(tr[0]["loss"]),
                               min(float(x["loss"]) for x in va) / float(va[0]["loss"])))
    for st, vmax in (("pretrain", 0.8), ("finetune", 0.9)):
        t, v = np.array(ratios[st]).T
        print(f"{st}, seeds 1-5: training loss x {' '.join(f'{x:.3f}' for x in t)} (mean {t.mean():.3f}, "
              f"< 0.5); best validation loss x {' '.join(f'{x:.3f}' for x in v)} (mean {v.mean():.3f}, < {vmax})")
        check(len(t) == 5 and t.mean() < 0.5, f"{st}: training loss falls to {t.mean():.3f} of its first step "
              f"(last epoch's mean; mean of the seeds), expected < 0.5")
        check(len(v) == 5 and v.mean() < vmax, f"{st}: best validation loss {v.mean():.3f} of the untrained "
              f"model's (mean of the seeds), expected < {vmax}")
    # the encoder really came from the pretrained model: after 1 Adam step at
    # lr 3e-3 a transferred weight is within lr of its pretrained value (a
    # bound on any host: Adam's first step is lr g / (|g| + eps) per weight),
    # while an independently initialised one is not
    one = os.path.join(tmp, "one.yaml")
    open(one, "w").write(f"name: one\nseed: 5\n{MODEL}\nfinetune:\n{stage(ft, 1)}  transfer: true\n"
                         f"  init: {os.path.join(out, 'pretrain', 'last.ckpt')}\n")
    r = run([COEMU, "train", one, "--out", os.path.join(tmp, "one"), "--max-steps", "1"])
    check(r.returncode == 3, f"--max-steps 1 stops with status 3: {r.returncode} {r.stderr[-1500:]}")
    _, p = read_ckpt(os.path.join(out, "pretrain", "last.ckpt"))
    _, f1 = read_ckpt(os.path.join(tmp, "one", "finetune", "last.ckpt"))
    enc = [k for k in p if k.startswith("encoder") or k.startswith("to_lat")]
    check(len(enc) > 50 and all(k in f1 for k in enc), f"{len(enc)} encoder tensors in both")
    moved = max(float(np.abs(f1[k] - p[k]).max()) for k in enc if "running" not in k and "num_batches" not in k)
    check(moved < 1e-2, f"transferred weights moved {moved:.3g} in one step (expected < 1e-2)")
    dec = [k for k in f1 if k.startswith("decoder")]
    check(len(dec) > 0 and "decoder3d.layers.0.weight" in f1, "a 3-D decoder in the fine-tuned model")

    # ---- stop and resume = not stopping ----
    solo = os.path.join(tmp, "solo.yaml")
    open(solo, "w").write(f"name: solo\nseed: 9\n{MODEL}\nfinetune:\n{stage(ft, 3, eps='1.0e-3')}")
    a, b = os.path.join(tmp, "a"), os.path.join(tmp, "b")
    r = run([COEMU, "train", solo, "--out", a, "--quiet"])
    check(r.returncode == 0, f"uninterrupted run: {r.stderr[-1500:]}")
    r = run([COEMU, "train", solo, "--out", b, "--quiet", "--max-steps", "13"])
    check(r.returncode == 3, f"stopped run: status {r.returncode}: {r.stderr[-1500:]}")
    check(len(rows(os.path.join(b, "finetune", "train.csv"))) == 13, "13 steps before the stop (mid-epoch)")
    # what a run killed while writing leaves: temporaries next to the real files
    # (garbage, as a kill mid-write leaves them); the resumed run removes them
    # and is not misled by them (its curve is checked below)
    stale = [os.path.join(b, "train.yaml.tmp.4242"), os.path.join(b, "finetune", "last.ckpt.tmp.4242"),
             os.path.join(b, "finetune", "train.csv.tmp.77")]
    for f in stale:
        open(f, "wb").write(b"\x00garbage from a killed run")
    r = run([COEMU, "train", solo, "--out", b, "--quiet"])
    check(r.returncode == 0, f"resumed run: {r.stderr[-1500:]}")
    left = [f for f in stale if os.path.exists(f)]
    check(not left, f"a killed run's temporaries are removed on resume (left: {left})")
    ta, tb = rows(os.path.join(a, "finetune", "train.csv")), rows(os.path.join(b, "finetune", "train.csv"))
    same = len(ta) == len(tb) == 27 and all(
        x[k] == y[k] for x, y in zip(ta, tb) for k in ("step", "epoch", "lr", "loss", "mse", "fft"))
    check(same, "the resumed loss curve equals the uninterrupted one, value for value")
    va, vb = rows(os.path.join(a, "finetune", "validation.csv")), rows(os.path.join(b, "finetune", "validation.csv"))
    check(len(va) == len(vb) and all(x["loss"] == y["loss"] and x["maxrel_median"] == y["maxrel_median"]
                                     for x, y in zip(va, vb)), "the same validation rows")
    # value for value, exact by construction: the checkpoint holds the whole
    # state losslessly, and the resumed process runs the same build, kernels
    # and thread count on the same batches (the data order is seeded)
    r = run([COEMU, "train", solo, "--out", b])
    check(r.returncode == 0 and "complete" in r.stderr, "a finished run is not trained again")

    # ---- a finished run extended by an epoch (--extend) ----
    # (tests/train/test_trainrun.c checks that an extended run ends
    # byte-identical to an uninterrupted run of the final job)
    solo4 = os.path.join(tmp, "solo4.yaml")
    open(solo4, "w").write(f"name: solo\nseed: 9\n{MODEL}\nfinetune:\n{stage(ft, 4, eps='1.0e-3')}")
    r = run([COEMU, "train", solo4, "--out", b, "--quiet"])
    check(r.returncode == 1 and "coemu train: error: " in r.stderr and "finetune.epochs 3 -> 4" in r.stderr
          and "rerun with --extend" in r.stderr, f"a changed job without --extend: {r.returncode} {r.stderr[-600:]}")
    r = run([COEMU, "train", solo4, "--out", b, "--extend"])
    check(r.returncode == 0 and "extending the run in" in r.stderr and "resuming from" in r.stderr,
          f"--extend: {r.returncode} {r.stderr[-1500:]}")
    tb = rows(os.path.join(b, "finetune", "train.csv"))
    check(len(tb) == 36 and all(x[k] == y[k] for x, y in zip(ta, tb) for k in ("step", "loss")),
          f"the extended run keeps its 27 steps and adds 9 ({len(tb)} rows)")
    log = open(os.path.join(b, "train.log")).read() if os.path.exists(os.path.join(b, "train.log")) else ""
    check("finetune.epochs: 3 -> 4" in log and open(os.path.join(b, "train.yaml")).read() == open(solo4).read()
          and open(os.path.join(b, "train.1.yaml")).read() == open(solo).read(),
          f"the change is in train.log, the new job in train.yaml, the old in train.1.yaml: {log!r}")
    solo_b4 = os.path.join(tmp, "solo_b4.yaml")
    open(solo_b4, "w").write(open(solo4).read().replace("batch: 8", "batch: 4").replace("epochs: 4", "epochs: 5"))
    r = run([COEMU, "train", solo_b4, "--out", b, "--extend"])
    check(r.returncode == 1 and "coemu train: error: " in r.stderr
          and "--extend cannot change finetune.batch 8 -> 4" in r.stderr,
          f"--extend refuses another batch, naming the key: {r.returncode} {r.stderr[-600:]}")

    # ---- 2 ranks x batch 4 == 1 rank x batch 8, up to summation order ----
    # Each comparison is of steps from the same state: step 1 from the same
    # initial weights; steps 3-4 from the state 2 ranks reached after 2 steps
    # (the run stopped, copied, resumed on 2 ranks, on 1 rank, and on 1 rank
    # with 1 thread): step 3's loss is the same forward, step 4's shows step
    # 3's update. Losses of whole trajectories would compare the net's chaos
    # instead: this tiny net amplifies rounding differences ~10x per step,
    # and a max-pooling choice flipped by one rounding moves a later loss by
    # 1e-2 (seen here between 1 and 2 threads after 3 steps).
    c, c1, c1t, c3t, c2t = (os.path.join(tmp, x) for x in ("c", "c1", "c1t", "c3t", "c2t"))
    one_thread = os.path.join(tmp, "t1")
    env1 = dict(ENV, OMP_NUM_THREADS="1")
    r = run(MPI + ["-n", "2", COEMU, "train", solo, "--out", c, "--quiet", "--max-steps", "2"])
    check(r.returncode == 3, f"2 ranks: status {r.returncode}: {r.stderr[-2000:]}")
    for x in (c1, c1t, c3t, c2t):
        shutil.copytree(c, x)
    r = run(MPI + ["-n", "2", COEMU, "train", solo, "--out", c, "--quiet", "--max-steps", "4"])
    check(r.returncode == 3, f"2 ranks, resumed: status {r.returncode}: {r.stderr[-2000:]}")
    r = run([COEMU, "train", solo, "--out", c1, "--quiet", "--max-steps", "4"])
    check(r.returncode == 3, f"1 rank from the 2 ranks' state: status {r.returncode}: {r.stderr[-2000:]}")
    r = subprocess.run([COEMU, "train", solo, "--out", c1t, "--quiet", "--max-steps", "4"],
                       capture_output=True, text=True, env=env1)
    check(r.returncode == 3, f"1 rank, 1 thread from the 2 ranks' state: status {r.returncode}")
    r = subprocess.run([COEMU, "train", solo, "--out", c3t, "--quiet", "--max-steps", "4"],
                       capture_output=True, text=True, env=dict(ENV, OMP_NUM_THREADS="3"))
    check(r.returncode == 3, f"1 rank, 3 threads from the 2 ranks' state: status {r.returncode}")
    r = subprocess.run(MPI + ["-n", "2", COEMU, "train", solo, "--out", c2t, "--quiet", "--max-steps", "4"],
                       capture_output=True, text=True, env=env1)
    check(r.returncode == 3, f"2 ranks, 1 thread each, resumed: status {r.returncode}: {r.stderr[-2000:]}")
    r = subprocess.run([COEMU, "train", solo, "--out", one_thread, "--quiet", "--max-steps", "1"],
                       capture_output=True, text=True, env=env1)
    check(r.returncode == 3, f"1 thread: status {r.returncode}")
    l1 = losses(os.path.join(a, "finetune", "train.csv"), 3)
    l2 = losses(os.path.join(c, "finetune", "train.csv"), 4)
    l21 = losses(os.path.join(c1, "finetune", "train.csv"), 4)
    l21t = losses(os.path.join(c1t, "finetune", "train.csv"), 4)
    l23t = losses(os.path.join(c3t, "finetune", "train.csv"), 4)
    l22t = losses(os.path.join(c2t, "finetune", "train.csv"), 4)
    lt = losses(os.path.join(one_thread, "finetune", "train.csv"), 1)

    def reldiff(x, y, n, first=0):  # over steps first+1..n (1.0: fewer steps than that)
        if len(x) < n or len(y) < n:
            return 1.0
        return float(np.max(np.abs(x[first:n] - y[first:n]) / np.abs(y[first:n])))
    d1, dt1 = reldiff(l2, l1, 1), reldiff(lt, l1, 1)
    d3, d4 = reldiff(l21, l2, 3, 2), reldiff(l21, l2, 4, 3)
    dt4 = max(reldiff(l21t, l21, 4, 3), reldiff(l23t, l21, 4, 3), reldiff(l22t, l2, 4, 3))
    # The losses differ only by float32 summation orders (the linear layers'
    # products split by rank, BatchNorm's double sums, the gradients' sums):
    # a few U32 relative (measured <= 3 U32 on 12 OpenBLAS kernels in
    # trainer_parallel, which derives its tolerances from a noise floor), or
    # 10 x what 1, 2 (and for step 4 also 3) threads differ by in the same
    # comparison if more (other partial sums of the convolution gradients).
    # Step 4 shows step 3's update, whose gradients are not continuous in the
    # rounding (a flipped max-pooling or ReLU choice), so its mismatch is not
    # a few U32 (2 ranks vs 1: 1.3-36 U32 over seeds 1-12 on the Prescott,
    # Haswell and Sandybridge kernels, 2026-12-07), and its floor includes
    # the 2 ranks' own variant (1 thread each): with only the 1-rank run's
    # threads it was 10x smaller than the mismatch on one kernel (this seed
    # on Prescott: 1.58e-6 against 1.69e-7, 0.94 of the tolerance; the other
    # 35 runs of seeds 1-12 x 3 kernels at most 0.38); with it, at most 0.32.
    # A broken reduction breaks both 2-rank runs alike and leaves this floor.
    tol1, tol4 = max(16 * U32, 10 * dt1), max(16 * U32, 10 * dt4)
    check(d1 < tol1, f"step 1 (same weights, global BatchNorm statistics): 2 ranks vs 1 differ by "
          f"{d1:.2e} (tolerance {tol1:.1e})")
    check(len(l21) == 4 and np.array_equal(l21[:2], l2[:2]), "the resumed 1-rank run kept steps 1-2")
    check(d3 < tol1, f"step 3 from the same state: 2 ranks vs 1 differ by {d3:.2e} (tolerance {tol1:.1e})")
    check(d4 < tol4, f"step 4 after step 3 from the same state: 2 ranks vs 1 differ by {d4:.2e} "
          f"(tolerance {tol4:.1e})")
    print(f"2 ranks vs 1 rank: step 1 {d1:.1e}, steps 3 and 4 from the same state {d3:.1e} {d4:.1e}; "
          f"1 (or 3) vs 2 threads: step 1 {dt1:.1e}, step 4 {dt4:.1e} (1 or 2 ranks); the whole 3 steps "
          f"{reldiff(l2, l1, 3):.1e} apart")
    local = os.path.join(tmp, "local.yaml")
    open(local, "w").write(open(solo).read().replace("decoder: 16}", "decoder: 16, sync_batchnorm: false}"))
    r = run(MPI + ["-n", "2", COEMU, "train", local, "--out", os.path.join(tmp, "loc"), "--quiet", "--max-steps", "1"])
    check(r.returncode == 3, f"2 ranks, local BatchNorm: status {r.returncode}: {r.stderr[-1500:]}")
    ll = losses(os.path.join(tmp, "loc", "finetune", "train.csv"), 1)
    dl = reldiff(ll, l1, 1)
    check(dl > 100 * tol1, f"without synchronised BatchNorm step 1 differs clearly ({dl:.2e})")

    # ---- the same batches from a stream ----
    ep = "ipc://" + os.path.join(tmp, "serve.sock")
    srv = subprocess.Popen([COEMU, "serve", ft, "--endpoint", ep, "--batch", "4", "--seed", "9",
                            "--idle-exit", "20"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=ENV)
    sj = os.path.join(tmp, "stream.yaml")
    open(sj, "w").write(f"name: s\nseed: 9\n{MODEL}\nfinetune:\n  data: {{stream: {{endpoint: '{ep}'}}}}\n"
                        f"  validation: {{dataset: {ft}, split: validation, batch: 4}}\n"
                        f"  epochs: 3\n  batch: 8\n  optimizer: {{lr: 3.0e-3, eps: 1.0e-3}}\n")
    r = run([COEMU, "train", sj, "--out", os.path.join(tmp, "s"), "--quiet", "--max-steps", "3"])
    srv.terminate()
    srv.wait(timeout=30)
    check(r.returncode == 3, f"training from a stream: status {r.returncode}: {r.stderr[-2000:]}")
    ls = losses(os.path.join(tmp, "s", "finetune", "train.csv"))
    # exact by construction: the same float32 batches in the same order (the
    # server reads them with the trainer's reader), the same kernels and threads
    check(ls.shape == l1.shape and np.array_equal(ls, l1),
          "stream and dataset directory give the same losses, bit for bit")

    # ---- 2 trainer ranks fed by one producer ----
    ep2 = "ipc://" + os.path.join(tmp, "serve2.sock")
    srv = subprocess.Popen([COEMU, "serve", ft, "--endpoint", ep2, "--batch", "4", "--seed", "9",
                            "--ranks", "2", "--idle-exit", "20"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=ENV)
    text = open(sj).read().replace(ep, ep2)
    open(sj, "w").write(text)
    r = run(MPI + ["-n", "2", COEMU, "train", sj, "--out", os.path.join(tmp, "s2"), "--quiet", "--max-steps", "1"])
    srv.terminate()
    srv.wait(timeout=30)
    check(r.returncode == 3, f"2 ranks from a stream: status {r.returncode}: {r.stderr[-2000:]}")
    ls2 = losses(os.path.join(tmp, "s2", "finetune", "train.csv"))
    check(ls2.shape == (1, 3) and reldiff(ls2, l1, 1) < tol1,
          "2 ranks from a stream: step 1 equals 1 rank from the dataset (as 2 ranks do above)")

    # ---- data.order: shards, from the dataset and from serve --order shards ----
    oa, ob = os.path.join(tmp, "oa"), os.path.join(tmp, "ob")
    oj = os.path.join(tmp, "order.yaml")
    order_keys = "order: shards, order_shards: 2, order_buffer: 6"
    open(oj, "w").write(f"name: o\nseed: 9\n{MODEL}\nfinetune:\n  data: {{dataset: {ft}, {order_keys}}}\n"
                        f"  validation: {{dataset: {ft}, split: validation, batch: 4}}\n"
                        f"  epochs: 3\n  batch: 8\n  optimizer: {{lr: 3.0e-3, eps: 1.0e-3}}\n")
    r = run([COEMU, "train", oj, "--out", oa, "--quiet", "--max-steps", "3"])
    check(r.returncode == 3, f"data.order shards: status {r.returncode}: {r.stderr[-2000:]}")
    lo = losses(os.path.join(oa, "finetune", "train.csv"))
    ep3 = "ipc://" + os.path.join(tmp, "serve3.sock")
    srv = subprocess.Popen([COEMU, "serve", ft, "--endpoint", ep3, "--batch", "4", "--seed", "9",
                            "--order", "shards", "--order-shards", "2", "--order-buffer", "6",
                            "--idle-exit", "20"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=ENV)
    sjo = os.path.join(tmp, "stream-order.yaml")
    open(sjo, "w").write(f"name: s\nseed: 9\n{MODEL}\nfinetune:\n"
                         f"  data: {{stream: {{endpoint: '{ep3}'}}, order: shards}}\n"
                         f"  validation: {{dataset: {ft}, split: validation, batch: 4}}\n"
                         f"  epochs: 3\n  batch: 8\n  optimizer: {{lr: 3.0e-3, eps: 1.0e-3}}\n")
    r = run([COEMU, "train", sjo, "--out", ob, "--quiet", "--max-steps", "3"])
    check(r.returncode == 3, f"order shards from a stream: status {r.returncode}: {r.stderr[-2000:]}")
    lso = losses(os.path.join(ob, "finetune", "train.csv"))
    # exact by construction, as above: the same batches, kernels and threads
    check(lo.shape == l1.shape and np.array_equal(lso, lo),
          "order shards: stream and dataset directory give the same losses, bit for bit")
    check(not np.array_equal(lo, l1), "order shards trains on other batches than order exact")
    # a trainer that asks for order exact from this producer is refused, naming both
    otext = open(sjo).read().replace("order: shards", "order: exact")
    open(sjo, "w").write(otext)
    r = run([COEMU, "train", sjo, "--out", os.path.join(tmp, "oc"), "--quiet", "--max-steps", "1"])
    srv.terminate()
    srv.wait(timeout=30)
    check(r.returncode == 1 and "asks for order exact, the producer serves order shards" in r.stderr,
          f"order exact asked of a shards producer: {r.returncode} {r.stderr[-800:]}")

    # ---- a live trainer: coemu generate streams shards as they finish ----
    # the stream is raw (no /stats yet); the trainer normalises with the
    # /stats of a pilot dataset (here: the same job, already made)
    epl = "ipc://" + os.path.join(tmp, "live.sock")
    livejob = os.path.join(tmp, "livegen.yaml")
    open(livejob, "w").write(gen_job("haar", "{mode: grid, vmin: -600, vmax: 600, count: 3}") +
                             f'stream: {{endpoint: "{epl}", ranks: 1, batch: 4, epochs: 1, split: train}}\n')
    gen = subprocess.Popen(MPI + ["-n", "2", COEMU, "generate", livejob, "--out", os.path.join(tmp, "live"),
                                  "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    lj = os.path.join(tmp, "livetrain.yaml")
    open(lj, "w").write(f"name: live\nseed: 9\n{MODEL}\nfinetune:\n"
                        f"  data: {{stream: {{endpoint: '{epl}', stats: {ft}, timeout: 60}}}}\n"
                        f"  validation: {{dataset: {ft}, split: validation, batch: 4}}\n"
                        f"  epochs: 1\n  batch: 8\n  optimizer: {{lr: 3.0e-3}}\n")
    r = run([COEMU, "train", lj, "--out", os.path.join(tmp, "livetrain")])
    _, gerr = gen.communicate(timeout=300)
    check(gen.returncode == 0, f"live generate: {gerr[-1500:]}")
    check(r.returncode == 0, f"training from a live stream: {r.returncode}: {r.stderr[-2000:]}")
    lt = rows(os.path.join(tmp, "livetrain", "finetune", "train.csv")) if r.returncode == 0 else []
    check(len(lt) == 9 and all(np.isfinite(float(x["loss"])) for x in lt),
          f"one epoch of 9 steps from the live stream ({len(lt)} rows)")
    check("normalised with the /stats of" in r.stderr, "the trainer says it normalises the stream")
    # a raw stream without data.stream.stats is refused with a clear message
    srv = subprocess.Popen([COEMU, "serve", nostats, "--endpoint", ep, "--batch", "4", "--seed", "9",
                            "--idle-exit", "20"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=ENV)
    open(sj, "w").write(text.replace(ep2, ep))
    r = run([COEMU, "train", sj, "--out", os.path.join(tmp, "raw"), "--quiet", "--max-steps", "1"])
    srv.terminate()
    srv.wait(timeout=30)
    check(r.returncode != 0 and "/stats" in r.stderr, f"a stream without normalisation: {r.stderr[-400:]}")

    # ---- SIGTERM stops cleanly at a step boundary; the run resumes ----
    long = os.path.join(tmp, "long.yaml")
    open(long, "w").write(f"name: long\nseed: 9\n{MODEL}\nfinetune:\n{stage(ft, 200)}")
    lo = os.path.join(tmp, "long")
    p = subprocess.Popen([COEMU, "train", long, "--out", lo], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=ENV)
    tcsv = os.path.join(lo, "finetune", "train.csv")
    t0 = time.time()
    while time.time() - t0 < 120 and (not os.path.exists(tcsv) or len(open(tcsv).read().splitlines()) < 4):
        time.sleep(0.05)
    p.send_signal(15)
    _, err = p.communicate(timeout=120)
    check(p.returncode == 3 and "interrupted" in err, f"SIGTERM: status {p.returncode}: {err[-500:]}")
    done = len(rows(tcsv))
    r = run([COEMU, "train", long, "--out", lo, "--max-steps", "2"])
    check(r.returncode == 3 and "resuming" in r.stderr and len(rows(tcsv)) == done + 2,
          f"resumed after SIGTERM at step {done}: {r.stderr[-500:]}")
    r = run([COEMU, "train", long, "--out", lo, "--time-limit", "0.5"])
    check(r.returncode == 3 and "time limit" in r.stderr, f"--time-limit: {r.returncode} {r.stderr[-300:]}")

    # ---- coemu eval ----
    ck = os.path.join(out, "finetune", "best.ckpt")
    e1, e2 = os.path.join(tmp, "e1"), os.path.join(tmp, "e2")
    r = run([COEMU, "eval", ck, ft, "--split", "test", "--batch", "4", "--out", e1])
    check(r.returncode == 0, f"eval: {r.stderr[-2000:]}")
    check("MaxRel median (%)" in r.stdout and "SSIM (reflect" in r.stdout and
          "inference ms per sample" in r.stdout, "eval prints the metrics table")
    for f in ("metrics.txt", "maxrel.csv", "maxrel.png"):
        check(os.path.exists(os.path.join(e1, f)), f"eval writes {f}")
    m1 = rows(os.path.join(e1, "maxrel.csv"))
    check(len(m1) == 12, f"one CSV row per test sample ({len(m1)})")
    pngs = [f for f in os.listdir(e1) if f.startswith("maps-") or f.startswith("error-")]
    check(len(pngs) == 8, f"channel maps and error maps of 4 samples ({len(pngs)} files)")
    r = run(MPI + ["-n", "2", COEMU, "eval", ck, ft, "--split", "test", "--batch", "4", "--out", e2, "--quiet"])
    check(r.returncode == 0, f"eval on 2 ranks: {r.stderr[-2000:]}")
    m2 = rows(os.path.join(e2, "maxrel.csv")) if r.returncode == 0 else []
    # exact by construction: ranks take whole batches round robin (the same
    # composition, padded alike), so every sample's forward is the same
    # computation on 1 rank and on 2
    check(len(m2) == 12 and all(x == y for x, y in zip(m1, m2)),
          "1 and 2 ranks give the same per-sample metrics, value for value")

    r = run([COEMU, "eval", ck, ft, "--split", "test", "--max-samples", "5", "--out", os.path.join(tmp, "e5"), "--quiet",
             "--batch", "4", "--maps", "6"])
    m5 = rows(os.path.join(tmp, "e5", "maxrel.csv")) if r.returncode == 0 else []
    maps5 = [f for f in os.listdir(os.path.join(tmp, "e5")) if f.startswith("maps-")] if r.returncode == 0 else []
    check(len(maps5) == 4 and "warning: --maps 6: 4 maps written: the maps come from the first "
          "evaluation batch (raise --batch for more)" in r.stderr,
          f"--maps above --batch is capped with a warning: {len(maps5)} maps, {r.stderr[-400:]!r}")
    # evenly spaced: sample j of 5 is split sample floor(12 j / 5)
    check(len(m5) == 5 and [x["sample"] for x in m5] == [m1[12 * j // 5]["sample"] for j in range(5)],
          "--max-samples 5 takes samples evenly spaced over the split")

    # ---- bad input ----
    bad = os.path.join(tmp, "bad.ckpt")
    open(bad, "wb").write(open(ck, "rb").read()[:5000])
    r = run([COEMU, "eval", bad, ft, "--out", os.path.join(tmp, "x")])
    check(r.returncode != 0 and "truncated" in r.stderr, f"truncated checkpoint: {r.stderr[-300:]}")
    blob = bytearray(open(ck, "rb").read())
    blob[len(blob) // 2] ^= 0x40
    open(bad, "wb").write(bytes(blob))
    r = run([COEMU, "eval", bad, ft, "--out", os.path.join(tmp, "x")])
    check(r.returncode != 0 and "corrupted" in r.stderr, f"flipped bit: {r.stderr[-300:]}")
    r = run([COEMU, "eval", os.path.join(out, "pretrain", "best.ckpt"), ft, "--out", os.path.join(tmp, "x")])
    check(r.returncode != 0 and "channels" in r.stderr, f"1-channel model on 3-channel data: {r.stderr[-300:]}")
    r = run([COEMU, "train", one, "--out", out])
    check(r.returncode != 0 and "another training job" in r.stderr, f"another job's directory: {r.stderr[-300:]}")
    ns = os.path.join(tmp, "ns.yaml")
    open(ns, "w").write(f"name: ns\n{MODEL}\nfinetune:\n{stage(nostats, 1)}")
    r = run([COEMU, "train", ns, "--out", os.path.join(tmp, "ns")])
    check(r.returncode != 0 and "/stats" in r.stderr, f"dataset without /stats: {r.stderr[-300:]}")
    pj = os.path.join(tmp, "pj.yaml")
    open(pj, "w").write(f"name: pj\n{MODEL}\npretrain:\n{stage(ft, 1)}")
    r = run([COEMU, "train", pj, "--out", os.path.join(tmp, "pj")])
    check(r.returncode != 0 and "single-channel" in r.stderr, f"3-channel data for pretraining: {r.stderr[-300:]}")
    # device: cuda without a CUDA build or without a device: exit 1 naming the
    # job, the key and why; with both (a GPU host) it trains one step
    dj = os.path.join(tmp, "dj.yaml")
    open(dj, "w").write(f"name: dj\ndevice: cuda\n{MODEL}\nfinetune:\n{stage(ft, 1)}")
    r = run([COEMU, "train", dj, "--out", os.path.join(tmp, "dj"), "--quiet", "--max-steps", "1"])
    why = ("trainer backend 'cuda' is not built into this coemu", "no usable CUDA device",
           "no CUDA device")
    check(r.returncode in (0, 3) or (r.returncode == 1 and f"{dj}: device" in r.stderr
                                and any(w in r.stderr for w in why)
                                and "Traceback" not in r.stderr and "Segmentation" not in r.stderr),
          f"device: cuda: status {r.returncode}: {r.stderr[-400:]}")
    # precision: bf16 (the CPU backend's emulation): trains, the losses are
    # finite and off float32's (operands rounded to bfloat16)
    bj = os.path.join(tmp, "bj.yaml")
    open(bj, "w").write(f"name: bj\nprecision: bf16\n{MODEL}\nfinetune:\n{stage(ft, 1)}")
    r = run([COEMU, "train", bj, "--out", os.path.join(tmp, "bj"), "--quiet", "--max-steps", "2"])
    check(r.returncode in (0, 3), f"precision: bf16: status {r.returncode}: {r.stderr[-400:]}")
    r = run([COEMU, "train", bj, "--check"])
    check(r.returncode == 0 and "precision bf16" in r.stdout, f"--check of a bf16 job: {r.stdout[-300:]}")

report()
