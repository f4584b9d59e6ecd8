#!/usr/bin/env python3
"""On-the-fly streaming (`coemu serve --generate JOB`, docs/onthefly.md).

A tiny job (4 synthetic models x 4 directions, 16^3 cubes, 3 channels) is
generated and stored once; then, under mpirun -n 2:
- every sample streamed on the fly equals the stored sample byte for byte,
  and the per-epoch order (ids) of two epochs of the train split, and of
  --order shards, equals what `coemu serve` sends from the stored dataset;
- a consumer that resumes mid-epoch (epoch, position) gets the rest of the
  uninterrupted sequence;
- --fresh-views: training samples of epoch 1 differ from the stored ones
  and are the same in a second run; validation samples stay the stored ones;
- --stats PILOT: normalised samples equal those `coemu serve` normalises
  with the same /stats, and INFO says where the normalisation comes from;
- killing producer rank 1 mid-epoch is reported to the consumer as an
  error, and what it got before is an exact prefix of the epoch (nothing
  skipped or duplicated);
- read-ahead across chunks and epochs: one consumer reading three epochs on
  one connection (a read-ahead window longer than an epoch) gets each
  epoch's stored order and bytes, the producers made samples of later chunks
  while a chunk's last ones were being made, and nothing past the last
  epoch; a consumer that stops after epoch 1 of 4 finds the read-ahead
  window made past epoch 2's end."""
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, report  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from servetest import COEMU, LAMDA, MPI, ROOT, cs, finish, start, wait_up  # noqa: E402,F401

# a cross build's tests run under qemu-user (MESON_EXE_WRAPPER), 5-20 x slower:
# the producer and consumer timeouts that a failure must trip grow with it
EMU = 10 if os.environ.get("MESON_EXE_WRAPPER") else 1


def consume(ep, epochs=1, **kw):
    """chunks of `epochs` epochs (a list per epoch), one consumer per epoch."""
    out = []
    for e in range(epochs):
        c = cs.StreamClient(ep, rank=0, world=1, epoch=e, timeout_s=30, heartbeat_s=0.2, **kw)
        got = []
        try:
            while True:
                ch = c.next()
                if ch is None:
                    break
                got.append(ch)
        finally:
            c.close()
        out.append(got)
    return out


def consume_one(ep, epochs, hold_s=0, **kw):
    """`epochs` epochs on one connection (the stream goes on from an epoch's
    end to the next epoch), then hold the connection hold_s seconds."""
    c = cs.StreamClient(ep, rank=0, world=1, timeout_s=30, heartbeat_s=0.2, **kw)
    out = []
    try:
        for _ in range(epochs):
            got = []
            while True:
                ch = c.next()
                if ch is None:
                    break
                got.append(ch)
            out.append(got)
        time.sleep(hold_s)
    finally:
        c.close()
    return out


def made_of(err):
    m = re.search(r"(\d+) producer ranks made (\d+) samples.*; (\d+) samples made ahead of an "
                  r"unfinished chunk", err)
    return (int(m.group(2)), int(m.group(3))) if m else (None, None)


def ids_of(chunks):
    return [int(i) for ch in chunks for i in ch.ids]


with tempfile.TemporaryDirectory() as tmp:
    job = os.path.join(tmp, "job.yaml")
    ds = os.path.join(tmp, "ds")
    open(job, "w").write(f"""name: onfly
inputs:
  synth: {{count: 4, seed: 11, levels: 2}}
sampling: {{directions: 4, sampler: haar, n: 16, edge: 3.0e13, k: 2, seed: 5}}
line: {{lamda: {LAMDA}, transition: 2, channels: {{mode: grid, vmin: -600, vmax: 600, count: 3}}}}
output: {{directory: {ds}, samples_per_shard: 3}}
splits: {{train: 0.5, validation: 0.25, test: 0.25, seed: 2}}
statistics: {{compute: true}}
stream: {{mode: generate, endpoint: "ipc://{tmp}/jobmode.sock", batch: 2, epochs: 1, split: validation}}
""")
    g = subprocess.run(MPI + ["-n", "2", COEMU, "generate", job, "--quiet"], capture_output=True,
                       text=True, timeout=300)
    check(g.returncode == 0, f"generate: {g.stderr[-1500:]}")
    with h5py.File(os.path.join(ds, "dataset.h5"), "r") as f:
        X, Y = f["inputs"][()], f["targets"][()]

    def same_as_stored(chunks):
        return all(np.array_equal(ch.inputs[k], X[i]) and np.array_equal(ch.targets[k], Y[i])
                   for ch in chunks for k, i in enumerate(ch.ids))

    check(not os.path.exists(os.path.join(ds, "serve.pid")),
          "stream.mode generate: coemu generate starts no live server")
    common = ["--batch", "2", "--heartbeat", "0.2", "--seed", "1234", "--split", "train"]
    # -- the stored dataset's stream: the reference order
    ref = {}
    for name, extra in [("exact", []), ("shards", ["--order", "shards"])]:
        ep = f"ipc://{tmp}/ref-{name}.sock"
        p = start([ds, "--endpoint", ep, "--epochs", "3"] + common + extra, mpi=False)
        check(wait_up(ep, p) is not None, f"stored serve ({name}) up")
        ref[name] = consume(ep, epochs=3)
        finish(p, f"serve {name}")
    check(len(ref["exact"]) == 3 and all(len(e) == 4 for e in ref["exact"]),
          f"reference: 3 epochs of 4 chunks: {[len(e) for e in ref['exact']]}")

    # -- the job's stream section (mode generate) gives the settings
    ep = f"ipc://{tmp}/jobmode.sock"
    p = start(["--generate", job])
    info = wait_up(ep, p)
    check(info is not None and info.get("batch") == 2 and info.get("split") == "validation"
          and info.get("seed") == 5 and info.get("epochs") == 1, f"settings from the job: {info}")
    got = consume(ep)[0]
    finish(p, "serve --generate JOB (settings from the job)")
    check(len(ids_of(got)) == 4 and same_as_stored(got), "the job's validation split, stored bytes")

    # -- on the fly, exact and shards orders, two epochs
    for name, extra in [("exact", []), ("shards", ["--order", "shards"])]:
        ep = f"ipc://{tmp}/gen-{name}.sock"
        p = start(["--generate", job, "--endpoint", ep, "--epochs", "2"] + common + extra)
        info = wait_up(ep, p)
        check(info is not None, f"serve --generate ({name}) up")
        if info is None:
            print(p.communicate()[1][-2000:])
            break
        got = consume(ep, epochs=2)
        err = finish(p, f"serve --generate {name}")
        for e in range(2):
            check(ids_of(got[e]) == ids_of(ref[name][e]),
                  f"{name} epoch {e}: on-the-fly order {ids_of(got[e])} == stored "
                  f"{ids_of(ref[name][e])}")
            check(same_as_stored(got[e]), f"{name} epoch {e}: samples byte for byte the stored ones")
        check(info.get("source") == "generate" and info.get("fresh_views") is False,
              f"INFO says generate: {info}")
        made = re.search(r"(\d+) producer ranks made (\d+) samples", err)
        check(made and made.group(1) == "2" and int(made.group(2)) >= 16,
              f"2 ranks made the 16 samples (and what was read ahead): {err[-600:]}")
        check("model cache:" in err and "loads" in err, "model cache counters reported")

    # -- read-ahead across chunks and epochs changes nothing that is sent.
    # --prefetch 8: the window (8 chunks of 2) runs past each epoch's end (4
    # chunks) into the next, up to a whole epoch ahead, but not past the
    # last: exactly 3 epochs of 8 samples are made.
    ep = f"ipc://{tmp}/ahead.sock"
    p = start(["--generate", job, "--endpoint", ep, "--epochs", "3", "--prefetch", "8"] + common)
    check(wait_up(ep, p) is not None, "serve --generate (read-ahead) up")
    got = consume_one(ep, 3)
    err = finish(p, "serve --generate --prefetch 8")
    for e in range(3):
        check(ids_of(got[e]) == ids_of(ref["exact"][e]) and same_as_stored(got[e]),
              f"read-ahead, epoch {e} on one connection: {ids_of(got[e])} == stored "
              f"{ids_of(ref['exact'][e])}, stored bytes")
    made, ahead = made_of(err)
    check(made == 24, f"3 epochs of 8 samples made, none past the last epoch: {err[-600:]}")
    check(ahead is not None and ahead > 0,
          f"samples of later chunks were made while a chunk was unfinished: {ahead}")
    # a consumer that stops after epoch 1 of 4 (--order shards, default
    # --prefetch 4). The tapered consumer grants one credit at the epoch's
    # end, which takes chunk (2, 0); the producers then make the window after
    # it, (2, 2), (2, 4), (2, 6) and (3, 0): 16 + 2 + 8 = 26 samples. Without
    # read-ahead past an epoch's end, (3, 0) is not made: 24.
    ep = f"ipc://{tmp}/ahead2.sock"
    p = start(["--generate", job, "--endpoint", ep, "--epochs", "4", "--idle-exit", "1",
               "--order", "shards"] + common)
    check(wait_up(ep, p) is not None, "serve --generate (read-ahead past an epoch) up")
    got = consume_one(ep, 2, hold_s=4, taper=True)
    err = finish(p, "serve --generate (read-ahead past an epoch)")
    for e in range(2):
        check(ids_of(got[e]) == ids_of(ref["shards"][e]) and same_as_stored(got[e]),
              f"read-ahead, order shards, epoch {e}: {ids_of(got[e])} == stored "
              f"{ids_of(ref['shards'][e])}, stored bytes")
    made, ahead = made_of(err)
    check(made == 26, f"epochs 0 and 1 and chunk (2, 0) sent, (2, 2) to (3, 0) made ahead: 26 "
          f"samples made: {made}")

    # -- resume mid-epoch: positions 4.. of epoch 1 equal the uninterrupted tail
    ep = f"ipc://{tmp}/resume.sock"
    p = start(["--generate", job, "--endpoint", ep, "--epochs", "2"] + common)
    check(wait_up(ep, p) is not None, "serve --generate (resume) up")
    consume(ep)  # epoch 0, so that the run ends after epoch 1
    c = cs.StreamClient(ep, rank=0, world=1, epoch=1, position=4, timeout_s=30, heartbeat_s=0.2)
    tail = []
    try:
        while True:
            ch = c.next()
            if ch is None or ch.epoch != 1:
                break
            tail.append(ch)
    finally:
        c.close()
    finish(p, "serve --generate (resume)")  # the last epoch was sent and acknowledged
    check(ids_of(tail) == ids_of(ref["exact"][1])[4:],
          f"resumed at (1, 4): {ids_of(tail)} == {ids_of(ref['exact'][1])[4:]}")
    check(same_as_stored(tail), "resumed samples are the stored ones")

    # -- fresh views: train samples new in epoch 1, reproducible; validation fixed
    runs = []
    for r in range(2):
        ep = f"ipc://{tmp}/fresh{r}.sock"
        p = start(["--generate", job, "--endpoint", ep, "--epochs", "2", "--fresh-views"] + common
                  + ["--split", "all"])
        info = wait_up(ep, p)
        check(info is not None and info.get("fresh_views") is True, f"fresh views INFO: {info}")
        runs.append(consume(ep, epochs=2))
        finish(p, "serve --generate --fresh-views")
    with h5py.File(os.path.join(ds, "dataset.h5"), "r") as f:
        split = f["split"][()]
    e0, e1 = runs[0]
    check(same_as_stored(e0), "fresh views: epoch 0 is the stored dataset")
    train_new = val_same = True
    for ch in e1:
        for k, i in enumerate(ch.ids):
            stored = np.array_equal(ch.inputs[k], X[i])
            if split[i] == 0 and stored:
                train_new = False
            if split[i] != 0 and not (stored and np.array_equal(ch.targets[k], Y[i])):
                val_same = False
    check(train_new, "fresh views: every training sample of epoch 1 is a new view")
    check(val_same, "fresh views: validation and test samples are the stored ones")
    same = all(np.array_equal(a.inputs, b.inputs) and np.array_equal(a.targets, b.targets)
               and list(a.ids) == list(b.ids) for a, b in zip(runs[0][1], runs[1][1]))
    check(same, "fresh views: a second run streams the same epoch 1")

    # -- normalisation from a pilot dataset's /stats
    ep = f"ipc://{tmp}/norm-ref.sock"
    p = start([ds, "--endpoint", ep, "--epochs", "1"] + common, mpi=False)
    check(wait_up(ep, p) is not None, "stored serve (normalised) up")
    nref = consume(ep, normalised=True)[0]
    finish(p, "serve normalised")
    ep = f"ipc://{tmp}/norm.sock"
    p = start(["--generate", job, "--endpoint", ep, "--epochs", "1", "--stats", ds] + common)
    info = wait_up(ep, p)
    check(info is not None and info.get("normalisation") is not None and
          "pilot dataset" in str(info.get("normalisation_source")), f"INFO normalisation: {info}")
    ngot = consume(ep, normalised=True)[0]
    finish(p, "serve --generate --stats")
    check(ids_of(ngot) == ids_of(nref) and
          all(np.array_equal(a.inputs, b.inputs) and np.array_equal(a.targets, b.targets)
              for a, b in zip(ngot, nref)), "normalised on the fly == normalised from the dataset")
    ep = f"ipc://{tmp}/nonorm.sock"
    p = start(["--generate", job, "--endpoint", ep, "--epochs", "1"] + common)
    wait_up(ep, p)
    try:
        consume(ep, normalised=True)
        check(False, "normalised data without --stats is refused")
    except cs.ProtocolError as e:
        check("--pilot" in str(e) and "--stats" in str(e) and "coemu stats" not in str(e),
              f"refusal says how to give a normalisation on the fly: {e}")
    consume(ep)  # a plain consumer then ends the run
    finish(p, "serve --generate (no stats)")

    # -- a producer rank killed mid-epoch: an error, never a silent gap
    # (--prefetch 1: the producers work at most one chunk ahead of the
    # consumer, so half the epoch is still to be made when rank 1 dies)
    ep = f"ipc://{tmp}/kill.sock"
    p = start(["--generate", job, "--endpoint", ep, "--epochs", "1", "--timeout", str(3 * EMU),
               "--producer-timeout", str(3 * EMU), "--prefetch", "1"] + common)
    check(wait_up(ep, p) is not None, "serve --generate (kill) up")

    def rank_pids():
        out = {}
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
                env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
            except OSError:
                continue
            # cmd[0], or after an interpreter's path where binfmt_misc ran
            # coemu through one (qemu-user in the aarch64 cross check)
            if ep.encode() in cmd and any(a.endswith(b"coemu") for a in cmd[:3]):
                for v in env:  # Open MPI's rank, or PMI's (MPICH's Hydra)
                    if v.startswith((b"OMPI_COMM_WORLD_RANK=", b"PMI_RANK=")):
                        out[int(v.split(b"=")[1])] = int(pid)
        return out

    pids = rank_pids()
    check(1 in pids, f"found producer rank 1: {pids}")
    c = cs.StreamClient(ep, rank=0, world=1, timeout_s=10 * EMU, heartbeat_s=0.2, credit=1)
    got, error = [], None
    try:
        got.append(c.next())
        os.kill(pids[1], signal.SIGKILL)
        while True:
            ch = c.next()
            if ch is None:
                break
            got.append(ch)
    except (cs.ProtocolError, cs.ProducerSilent) as e:
        error = e
    finally:
        c.close()
    try:
        p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
    full = ids_of(ref["exact"][0])
    check(error is not None, f"the consumer is told (got {len(ids_of(got))} of {len(full)} samples)")
    print(f"killed rank 1: consumer error: {type(error).__name__}: {error}")
    check(ids_of(got) == full[:len(ids_of(got))] and len(ids_of(got)) < len(full),
          f"what came before is an exact prefix: {ids_of(got)} of {full}")
    check(same_as_stored(got), "samples before the failure are the stored ones")
    check(p.returncode != 0, "mpirun fails")

    # -- done when: a COEmuNet trains from `coemu serve --generate` (CPU trainer),
    # normalised with the pilot dataset's /stats; the losses are finite and the
    # server sent every batch of both epochs
    ep = f"ipc://{tmp}/train.sock"
    p = start(["--generate", job, "--endpoint", ep, "--epochs", "2", "--stats", ds,
               "--idle-exit", "20"] + common)
    check(wait_up(ep, p) is not None, "serve --generate (training) up")
    tj = os.path.join(tmp, "train.yaml")
    open(tj, "w").write("name: onfly\nseed: 9\n"
                        "model: {stem: 2, encoder: [4, 4, 8], latent: 32, decoder: 16}\n"
                        f"finetune:\n  data: {{stream: {{endpoint: '{ep}', timeout: 60}}}}\n"
                        f"  validation: {{dataset: {ds}, split: validation, batch: 2}}\n"
                        "  epochs: 2\n  batch: 4\n  optimizer: {lr: 3.0e-3}\n")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if env.get("COEMU_SANITIZE"):
        env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + ":detect_leaks=0"
    r = subprocess.run([COEMU, "train", tj, "--out", os.path.join(tmp, "trained"), "--quiet"],
                       capture_output=True, text=True, timeout=300, env=env)
    check(r.returncode == 0, f"coemu train from serve --generate: {r.returncode}: {r.stderr[-2000:]}")
    err = finish(p, "serve --generate (training)")
    csvp = os.path.join(tmp, "trained", "finetune", "train.csv")
    rows = open(csvp).read().splitlines() if os.path.exists(csvp) else []
    check(len(rows) == 1 + 4, f"2 epochs x 2 steps of 4 samples trained: {rows}")
    check("sent 16 samples" in err, f"the server sent 2 epochs of 8 samples: {err[-800:]}")

sys.exit(report())
