#!/usr/bin/env python3
"""coemu serve --order shards end to end, read with the Python client: a
dataset made by coemu generate (48 samples, 16 per shard: 3 shards; 24 train
samples), 2 ranks, K = 2 shards at once, blocks of B = 5.
  - INFO announces the order, K and B; `exact` is the default;
  - every epoch is the train split exactly once over the ranks, the same on
    a second server, and changes with the epoch; it is not the exact order;
  - the global order (rank r, position p at r + W p) has the locality of
    docs/stream-protocol.md ("Order"): a shard with m samples lies in at
    most ceil((m - 1) K / B) + 1 blocks of B and has a sample in each;
  - a consumer resuming at every chunk boundary of an epoch (a new
    connection with its (epoch, position)) gets the rest of that epoch;
  - a consumer asking for order exact is refused with an error naming both
    orders; StreamDataset(order=...) checks INFO first (torch only)."""
import math
import os
import sys
import tempfile

import h5py

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fixture  # noqa: E402
from pycheck import check, report  # noqa: E402

from coemu.stream import ProtocolError, StreamClient, server_info  # noqa: E402

W, BATCH, K, B, SPP = 2, 2, 2, 5, 16


def read(ep, rank, epoch=0, position=0, order="shards"):
    with StreamClient(ep, rank=rank, world=W, epoch=epoch, position=position, timeout_s=10,
                      heartbeat_s=0.2, order=order) as c:
        return [int(i) for ch in c.iter_epoch() for i in ch.ids]


def epochs(ep, n, order="shards"):
    """Per epoch: the ids of each rank, in order."""
    return [[read(ep, r, e, order=order) for r in range(W)] for e in range(n)]


with tempfile.TemporaryDirectory() as tmp:
    d = fixture.make_dataset(tmp)
    with h5py.File(os.path.join(d, "dataset.h5"), "r") as f:
        split = f["split"][:]
    train = [i for i in range(len(split)) if split[i] == 0]
    ep = "ipc://" + os.path.join(tmp, "s")
    args = ["--ranks", str(W), "--batch", str(BATCH), "--seed", "5"]

    p = fixture.serve(d, ep, *args, "--epochs", "1")
    info = server_info(ep)
    check(info["order"] == "exact" and info["order_shards"] is None and info["order_buffer"] is None,
          f"default order: {info}")
    exact = epochs(ep, 1, order=None)
    p.wait(timeout=20)

    order_args = ["--order", "shards", "--order-shards", str(K), "--order-buffer", str(B)]
    p = fixture.serve(d, ep, *args, *order_args, "--epochs", "3")
    info = server_info(ep)
    check(info["order"] == "shards" and info["order_shards"] == K and info["order_buffer"] == B,
          f"INFO: {info}")
    try:
        read(ep, 0, order="exact")
        check(False, "a consumer asking for order exact is refused")
    except ProtocolError as e:
        check("asks for order exact, the producer serves order shards" in str(e), f"refusal: {e}")
    if fixture.have_torch():
        from coemu.torch_data import StreamDataset
        try:
            StreamDataset(ep, order="exact")
            check(False, "StreamDataset(order='exact') on a shards server is refused")
        except RuntimeError as e:
            check("--order exact" in str(e), f"StreamDataset refusal: {e}")
        check(StreamDataset(ep, order="shards").order == "shards", "StreamDataset(order='shards')")
    got = epochs(ep, 3)
    p.wait(timeout=20)
    check(p.returncode == 0, f"serve --epochs 3 exits: {p.returncode}")

    p = fixture.serve(d, ep, *args, *order_args, "--epochs", "2")
    again = epochs(ep, 2, order=None)  # the producer's order: not asked for
    p.wait(timeout=20)
    check(again == got[:2], "a second server gives the same epochs")
    check(got[0] != got[1] and got[1] != got[2], "the order changes with the epoch")
    check(got[0] != exact[0], "order shards is not the exact order")

    for e, ranks in enumerate(got):
        check(sorted(ranks[0] + ranks[1]) == train, f"epoch {e}: the train split exactly once")
        n = len(ranks[0])
        order = [ranks[q % W][q // W] for q in range(W * n)]  # the global order
        blocks = {}
        for q, i in enumerate(order):
            blocks.setdefault(i // SPP, []).append(q // B)
        for s, bl in blocks.items():
            m, span = len(bl), max(bl) - min(bl) + 1
            check(span <= math.ceil((m - 1) * K / B) + 1,
                  f"epoch {e}: shard {s} ({m} samples) spans {span} blocks")
            check(len(set(bl)) == span, f"epoch {e}: shard {s} misses a block of its span")

    # resume at every chunk boundary of epoch 1, each rank
    p = fixture.serve(d, ep, *args, *order_args)
    for r in range(W):
        for pos in range(0, len(got[1][r]), BATCH):
            rest = read(ep, r, 1, pos)
            check(rest == got[1][r][pos:], f"rank {r} resumed at (1, {pos}): {rest}")
    p.terminate()
    p.wait(timeout=20)

report()
