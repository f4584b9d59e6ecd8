#!/usr/bin/env python3
"""On-the-fly streaming against its producer bound (docs/onthefly.md,
docs/benchmarks.md "On-the-fly streaming").

    python3 scripts/bench_onfly.py [--job jobs/demo.yaml] [--ranks 2] [--epochs 1]
                                   [--batch 16] [--order exact|shards] [--model-cache MB]

Starts `mpirun -n RANKS coemu serve --generate JOB` and one consumer (the
Python client) that reads EPOCHS epochs of the train split. The producer
bound is RANKS / (producer seconds per sample), the producer time measured
by the ranks themselves in the same run (the server's last line); the
delivered rate is what the consumer received per second of wall time from
its first request to its last chunk (and, apart, from its first chunk on:
the first chunk waits for a whole chunk to be made). Prints both, their ratio
and the model cache's loads per epoch.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "pipeline", "stream"))
import coemu_stream as cs  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--job", default=os.path.join(ROOT, "jobs", "demo.yaml"))
ap.add_argument("--coemu", default=os.path.join(ROOT, "build", "pipeline", "coemu"))
ap.add_argument("--ranks", type=int, default=2)
ap.add_argument("--epochs", type=int, default=1)
ap.add_argument("--batch", type=int, default=16)
ap.add_argument("--order", default="exact")
ap.add_argument("--model-cache", default="1024", help="MB per producer rank (coemu serve --model-cache)")
ap.add_argument("--out", default=None, help="where synthetic models go (default: a temporary folder)")
a = ap.parse_args()

with tempfile.TemporaryDirectory() as tmp:
    ep = f"ipc://{tmp}/bench.sock"
    cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-n", str(a.ranks), a.coemu, "serve",
           "--generate", a.job, "--endpoint", ep, "--epochs", str(a.epochs), "--batch",
           str(a.batch), "--order", a.order, "--out", a.out or tmp, "--model-cache", a.model_cache]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    info = None
    t0 = time.time()
    while info is None and time.time() - t0 < 600 and p.poll() is None:
        try:
            info = cs.server_info(ep, timeout_s=0.5)
        except Exception:
            time.sleep(0.2)
    if info is None:
        print(p.communicate()[1][-3000:], file=sys.stderr)
        sys.exit("the server did not start")
    n = 0
    t_first = time.time()
    t_chunk1, n1 = None, 0
    c = cs.StreamClient(ep, rank=0, world=1, timeout_s=600, credit=8)  # one consumer, every epoch
    for e in range(a.epochs):
        while True:
            ch = c.next()
            if ch is None:
                break
            n += len(ch.ids)
            if t_chunk1 is None:
                t_chunk1, n1 = time.time(), len(ch.ids)
    t_last = time.time()
    c.close()
    wall = t_last - t_first
    err = p.communicate(timeout=120)[1]
    m = re.search(r"(\d+) producer ranks made (\d+) samples, ([0-9.]+) ms of producer time per "
                  r"sample .*model cache: (\d+) loads, (\d+) hits, peak ([0-9.]+) MB", err)
    if not m:
        print(err[-3000:], file=sys.stderr)
        sys.exit("no producer line from the server")
    ranks, made, ms = int(m.group(1)), int(m.group(2)), float(m.group(3))
    bound = ranks / (ms / 1e3)
    rate = n / wall
    print(f"job {a.job}: {n} samples to the consumer in {wall:.2f} s = {rate:.2f} samples/s")
    print(f"producer: {ranks} ranks made {made} samples at {ms:.2f} ms each: bound {bound:.2f} samples/s")
    print(f"delivered / bound = {rate / bound:.3f}")
    steady = (n - n1) / (t_last - t_chunk1)
    print(f"after the first chunk (the pipeline filled): {steady:.2f} samples/s = "
          f"{steady / bound:.3f} of the bound")
    print(f"model cache: {m.group(4)} loads ({int(m.group(4)) / a.epochs:.1f} per epoch over all ranks), "
          f"{m.group(5)} hits, peak {m.group(6)} MB per rank")
