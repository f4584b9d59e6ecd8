#!/usr/bin/env python3
"""Throughput of the Python consumers of `coemu serve` (docs/benchmarks.md,
"Python package"): one epoch of a dataset's training split through

  bare     a DEALER that only receives and grants credit (no checks, no
           copies): what the server delivers, the bound for the others
  raw      coemu.stream.StreamClient, 1 connection (--ranks 1)
  batched  StreamDataset(batched=True), DataLoader(batch_size=None), no workers
  samples  StreamDataset, DataLoader(batch_size=B), no workers
  workers  StreamDataset, DataLoader(batch_size=B, num_workers=2), --ranks 2

each REPS times against a fresh `coemu serve DATASET --epochs 1 --batch B`;
every payload is XXH64-checked on both sides (but in `bare`). Prints samples/s and GB/s
(payload: inputs + targets) as median [min-max].

    python3 tests/python/bench_stream.py DATASET [REPS] [B]
"""
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fixture  # noqa: E402
import torch  # noqa: E402

import zmq  # noqa: E402

from coemu.stream import (BYE, CHUNK, CREDIT, EPOCH_END, HELLO, XXH64_BACKEND, Header,  # noqa: E402
                          StreamClient, server_info)
from coemu.torch_data import StreamDataset  # noqa: E402

d = sys.argv[1]
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 3
B = int(sys.argv[3]) if len(sys.argv) > 3 else 16


def bare(ep):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.connect(ep)
    sock.send(Header.encode(HELLO, 8, nsamples=1))
    n = 0
    while True:
        h = Header.decode(sock.recv_multipart(copy=False)[0].bytes)
        if h.type == CHUNK:
            n += h.nsamples
            sock.send(Header.encode(CREDIT, 1, nsamples=1))
        elif h.type == EPOCH_END:
            break
    sock.send(Header.encode(BYE, epoch=1, nsamples=1))
    sock.close(200)
    return n


def raw(ep):
    info = server_info(ep)
    n = 0
    with StreamClient(ep, rank=0, world=info["world"], credit=8) as c:
        for ch in c.iter_epoch():
            n += len(ch.ids)
    return n


def loader(ep, **kw):
    def run():
        ds = StreamDataset(ep, batched=kw.get("batch_size", 0) is None)
        n = 0
        for x, y in torch.utils.data.DataLoader(ds, **kw):
            n += x.shape[0]
        return n
    return run


cases = [("bare", 1, bare), ("raw", 1, raw), ("batched", 1, lambda ep: loader(ep, batch_size=None)()),
         ("samples", 1, lambda ep: loader(ep, batch_size=B)()),
         ("workers", 2, lambda ep: loader(ep, batch_size=B, num_workers=2)())]
with tempfile.TemporaryDirectory() as tmp:
    ep = f"ipc://{tmp}/s.sock"
    print(f"dataset {d}, batch {B}, XXH64 {XXH64_BACKEND}, torch {torch.__version__}, "
          f"{reps} runs each, load {os.getloadavg()[0]:.2f}")
    for name, ranks, fn in cases:
        rates, gbs = [], []
        for _ in range(reps):
            p = fixture.serve(d, ep, "--ranks", str(ranks), "--batch", str(B), "--epochs", "1")
            info = server_info(ep)
            per = 4 * (eval("*".join(map(str, info["in_shape"]))) +
                       eval("*".join(map(str, info["out_shape"]))))
            t0 = time.perf_counter()
            n = fn(ep)
            el = time.perf_counter() - t0
            fixture.finish(p)
            rates.append(n / el)
            gbs.append(n * per / el / 1e9)
        med = statistics.median
        print(f"{name:8s} {n:5d} samples  {med(rates):7.1f} [{min(rates):.1f}-{max(rates):.1f}] "
              f"samples/s  {med(gbs):.2f} [{min(gbs):.2f}-{max(gbs):.2f}] GB/s")
