#!/usr/bin/env python3
"""coemu serve + the Python client (pipeline/stream/coemu_stream.py): whole epochs
read from Python match the dataset; ranks get disjoint, equal shares; the
shuffle changes per epoch and is reproducible; a consumer that stops
mid-epoch resumes without loss or repetition; bad requests get clear errors."""
import json
import os
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np

ROOT = os.environ.get("COEMU_SOURCE_ROOT", os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "pipeline", "stream"))
import coemu_stream as cs  # noqa: E402

COEMU = os.environ.get("COEMU", "build/pipeline/coemu")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, report  # noqa: E402



def make_dataset(d, n_samples=26, n=4, nf=3):
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(5)
    inputs = rng.random((n_samples, 3, n, n, n), dtype=np.float32) + 1.0
    targets = rng.random((n_samples, nf, n, n), dtype=np.float32)
    for i in range(n_samples):  # tag each sample with its index
        inputs[i, 0, 0, 0, 0] = i
    split = np.array([2 if i % 5 == 4 else 0 for i in range(n_samples)], dtype=np.uint8)
    with h5py.File(os.path.join(d, "dataset.h5"), "w") as f:
        f["inputs"] = inputs
        f["targets"] = targets
        f["split"] = split
    with open(os.path.join(d, "manifest.json"), "w") as f:
        json.dump({"samples": n_samples}, f)
    return inputs, targets, split


def serve(d, ep, *args):
    p = subprocess.Popen([COEMU, "serve", d, "--endpoint", ep, "--heartbeat", "0.2", *args],
                         stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    return p


def read_epoch(ep, rank, world, epoch=0, position=0, stop_after=None, **kw):
    got = []
    c = cs.StreamClient(ep, rank=rank, world=world, epoch=epoch, position=position,
                        timeout_s=10, heartbeat_s=0.2, **kw)
    try:
        for ch in c.iter_epoch():
            got.append(ch)
            if stop_after is not None and len(got) == stop_after:
                return got, (c.epoch, c.position)
    finally:
        c.close()
    return got, (c.epoch, c.position)


with tempfile.TemporaryDirectory() as tmp:
    d = os.path.join(tmp, "ds")
    inputs, targets, split = make_dataset(d)
    train = [i for i in range(len(split)) if split[i] == 0]  # 20 samples
    ep = f"ipc://{tmp}/serve.sock"

    # two ranks, batch 3, two epochs: 20 // 2 = 10 per rank -> 3 batches of 3 (9 samples)
    p = serve(d, ep, "--ranks", "2", "--batch", "3", "--epochs", "2", "--seed", "9")
    epochs = {0: [], 1: []}
    for e in range(2):
        for r in range(2):
            try:
                got, _ = read_epoch(ep, r, 2, epoch=e)
            except cs.ProducerSilent:
                p.kill()
                print(p.stderr.read(), file=sys.stderr)
                raise
            ids = [int(i) for ch in got for i in ch.ids]
            check(len(got) == 3 and all(ch.inputs.shape == (3, 3, 4, 4, 4) for ch in got),
                  f"epoch {e} rank {r}: 3 chunks of 3 samples")
            for ch in got:
                for k, i in enumerate(ch.ids):
                    check(np.array_equal(ch.inputs[k], inputs[i]) and
                          np.array_equal(ch.targets[k], targets[i]), f"sample {i} data")
            epochs[e].append(ids)
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
    check(p.returncode == 0, f"serve exit status {p.returncode}")
    for e in range(2):
        a, b = epochs[e]
        check(not set(a) & set(b), f"epoch {e}: ranks disjoint")
        check(set(a) | set(b) <= set(train), f"epoch {e}: only training samples")
        check(len(set(a) | set(b)) == 18, f"epoch {e}: 18 distinct samples")
    check(epochs[0] != epochs[1], "the shuffle changes with the epoch")

    # the same seed gives the same order; a consumer stopping mid-epoch resumes exactly
    p = serve(d, ep, "--ranks", "2", "--batch", "3", "--epochs", "1", "--seed", "9")
    part, state = read_epoch(ep, 1, 2, stop_after=1)
    rest, _ = read_epoch(ep, 1, 2, epoch=state[0], position=state[1])
    ids = [int(i) for ch in part + rest for i in ch.ids]
    check(state == (0, 3), f"state after one chunk {state}")
    check(ids == epochs[0][1], "resumed epoch equals the uninterrupted one")
    read_epoch(ep, 0, 2)
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()

    # a server restarted mid-epoch (stopped, started again on the same
    # endpoint): the consumer is told at its next heartbeat (RESET), says
    # HELLO again and carries on where it was, long before its 30 s timeout;
    # the epoch equals the uninterrupted one
    args = ("--ranks", "1", "--batch", "2", "--epochs", "1", "--seed", "9")
    p = serve(d, ep, *args)
    whole, _ = read_epoch(ep, 0, 1)
    p.wait(timeout=10)
    p = serve(d, ep, *args)
    c = cs.StreamClient(ep, rank=0, world=1, timeout_s=30, heartbeat_s=0.2)
    got = [c.next() for _ in range(3)]
    p.terminate()
    p.communicate(timeout=10)
    p = serve(d, ep, *args)
    t0 = time.monotonic()
    try:
        got += list(c.iter_epoch())
    finally:
        c.close()
    took = time.monotonic() - t0
    check([int(i) for ch in got for i in ch.ids] == [int(i) for ch in whole for i in ch.ids],
          "a restarted server: the epoch equals the uninterrupted one")
    check(took < 5 and c.resets == 1,
          f"a restarted server noticed at once: {took:.1f} s, {c.resets} HELLOs said again")
    p.wait(timeout=10)

    # A torch DataLoader with workers (docs/python.md) reads each epoch on new
    # connections, one per server rank, each left at its epoch's end (BYE).
    # Such a connection is sent at most one chunk of the next epoch, whatever
    # credit its HELLO gave (4: with one chunk per epoch, a whole further
    # epoch and more went to a connection about to leave), and the next
    # epoch asked for on a new connection is no repeat (serve warned that
    # set_epoch was missing when it was called); a real repeat still warns.
    def loader_epoch(e, world, keep=None):
        n = 0
        for r in range(world):
            c = cs.StreamClient(ep, rank=r, world=world, epoch=e, credit=4, taper=True,
                                timeout_s=10, heartbeat_s=0.2)
            n += sum(len(ch.ids) for ch in c.drain())
            c.say_bye()
            c.wait_bye(5)  # as StreamDataset: the server read the BYE before the close
            c.close()
        return n

    def chunks_sent(err):
        import re
        m = re.search(r"sent (\d+) samples in (\d+) chunks", err)
        return int(m.group(2)) if m else None

    # 20 samples, 2 ranks, batch 9: one chunk per rank per epoch
    p = serve(d, ep, "--ranks", "2", "--batch", "9", "--epochs", "3")
    got = [loader_epoch(e, 2) for e in range(3)]
    err = p.communicate(timeout=20)[1]
    sent = chunks_sent(err)
    # 6 chunks read; the 4 connections of epochs 0 and 1 may each have been
    # sent one chunk of the next epoch
    check(got == [18, 18, 18] and p.returncode == 0 and sent is not None and sent <= 6 + 4,
          f"set_epoch per epoch: {got} read, {sent} chunks sent (at most 10): {err[-800:]}")
    check("asks for epoch" not in err and "asked for an epoch again" not in err,
          f"set_epoch per epoch: no repeat warning: {err[-1500:]}")
    p = serve(d, ep, "--ranks", "1", "--batch", "9", "--epochs", "2")
    got = [loader_epoch(0, 1), loader_epoch(0, 1), loader_epoch(1, 1)]  # set_epoch forgotten once
    err = p.communicate(timeout=20)[1]
    check(got == [18, 18, 18] and "serve: warning: rank 0 asks for epoch 0 again from its start"
          in err and "serve: 1 HELLO asked for an epoch again" in err,
          f"a missing set_epoch is still warned of: {got} {err[-1500:]}")

    # --pad: 20 samples over 3 ranks -> 7 each, padded to batches of 4 -> 8
    p = serve(d, ep, "--ranks", "3", "--batch", "4", "--epochs", "1", "--pad")
    allids = []
    for r in range(3):
        got, _ = read_epoch(ep, r, 3)
        check(sum(len(ch.ids) for ch in got) == 8, f"pad: rank {r} gets 8")
        allids += [int(i) for ch in got for i in ch.ids]
    check(set(allids) == set(train), "pad: every training sample served")
    p.wait(timeout=10)

    # normalised data without /stats: the producer says why
    p = serve(d, ep, "--ranks", "1", "--batch", "2", "--epochs", "1")
    try:
        read_epoch(ep, 0, 1, normalised=True)
        check(False, "normalised request without /stats must fail")
    except cs.ProtocolError as e:
        check("no /stats group" in str(e), f"error text: {e}")
    p.terminate()
    err = p.communicate(timeout=10)[1]
    # the last lines say why it ended and how far its epochs got
    check(p.returncode == 0 and "serve: ended: stopped by SIGTERM" in err and
          "serve: ranks sent all their epochs: 0 of 1; a rerun serves the rest" in err,
          f"serve's end after SIGTERM: {err[-600:]}")

    # --idle-exit: a producer nobody connects to leaves by itself
    t0 = time.time()
    r = subprocess.run([COEMU, "serve", d, "--endpoint", ep, "--idle-exit", "0.5"], capture_output=True,
                       text=True, timeout=20)
    check(r.returncode == 0 and time.time() - t0 < 5 and
          "serve: ended: idle exit, no consumer for 0.5 s" in r.stderr,
          f"idle exit: {r.returncode} {time.time() - t0:.1f} s {r.stderr[-300:]}")

    # a stored dataset under mpirun: one clear refusal from rank 0 (each rank
    # was a server of its own on the same endpoint), not a hang or a race
    mpiexec = os.environ.get("COEMU_MPIEXEC", "mpiexec")
    r = subprocess.run([mpiexec, "--allow-run-as-root", "--oversubscribe", "-n", "2", COEMU, "serve",
                        d, "--endpoint", ep, "--idle-exit", "0.5"], capture_output=True, text=True,
                       timeout=60)
    check(r.returncode != 0 and r.stderr.count("serving a stored dataset is one process (2 ranks "
                                               "started)") == 1, f"serve under mpirun: {r.stderr}")
    # the same under srun --mpi=pmix, as its tasks see it (no Open MPI or PMI
    # variables: PMIX_RANK, and the step's size from Slurm); a batch script's
    # own SLURM_NTASKS is no launcher (common/cli.c)
    for rank in (0, 1):
        env = dict(os.environ, PMIX_RANK=str(rank), SLURM_STEP_NUM_TASKS="3", SLURM_NTASKS="3")
        r = subprocess.run([COEMU, "serve", d, "--endpoint", ep, "--idle-exit", "0.5"], env=env,
                           capture_output=True, text=True, timeout=60)
        said = r.stderr.count("serving a stored dataset is one process (3 ranks started)")
        check(r.returncode == 2 and said == (rank == 0),
              f"serve under srun --mpi=pmix, rank {rank}: exit {r.returncode}: {r.stderr}")

    # a second server on the same ipc:// path is refused (ZeroMQ alone would
    # take the path over without a word, orphaning the first); the first
    # serves on, and a stale socket file left behind does not block a start
    p = serve(d, ep, "--ranks", "1", "--batch", "2", "--epochs", "1")
    r = subprocess.run([COEMU, "serve", d, "--endpoint", ep, "--idle-exit", "0.5"],
                       capture_output=True, text=True, timeout=20)
    check(r.returncode == 1 and "Address already in use" in r.stderr,
          f"second server on {ep}: {r.returncode} {r.stderr[-300:]}")
    got, _ = read_epoch(ep, 0, 1)
    check(sum(len(ch.ids) for ch in got) == 20, "the first server still serves its path")
    p.wait(timeout=10)
    path = ep[len("ipc://"):]
    import socket
    if not os.path.exists(path):  # the server left its socket file, or make one
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(path)
        stale.close()
    r = subprocess.run([COEMU, "serve", d, "--endpoint", ep, "--idle-exit", "0.5"],
                       capture_output=True, text=True, timeout=20)
    check(r.returncode == 0, f"a stale socket file does not block a start: {r.stderr[-300:]}")

    # bad invocations
    r = subprocess.run([COEMU, "serve", os.path.join(tmp, "nope")], capture_output=True, text=True)
    check(r.returncode != 0 and "nope: no such dataset folder" in r.stderr, f"missing dataset: {r.stderr}")
    r = subprocess.run([COEMU, "serve", d, "--endpoint", "tcp://0.0.0.0:5999"], capture_output=True, text=True)
    check(r.returncode != 0 and "curve" in r.stderr.lower(), f"non-local without CURVE: {r.stderr}")
    r = subprocess.run([COEMU, "serve", d, "--split", "validation"], capture_output=True, text=True)
    check(r.returncode != 0 and "no samples" in r.stderr, f"empty split: {r.stderr}")
    r = subprocess.run([COEMU, "serve", d, "--ranks", "50", "--batch", "4"], capture_output=True, text=True)
    check(r.returncode != 0 and "not one batch" in r.stderr, f"too many ranks: {r.stderr}")
    # order shards needs the shards behind dataset.h5 (this one is plain arrays)
    r = subprocess.run([COEMU, "serve", d, "--order", "shards"], capture_output=True, text=True)
    check(r.returncode == 1 and "no shards behind /inputs and /targets" in r.stderr,
          f"order shards without shards: {r.returncode} {r.stderr}")

report()
