"""coemu.torch_data: a torch IterableDataset over `coemu serve`.

    import torch
    from coemu.torch_data import StreamDataset

    ds = StreamDataset("tcp://127.0.0.1:5555", normalised=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=16, num_workers=2)
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        for x, y in loader:       # x (16, 3, n, n, n), y (16, F, n, n)
            ...

The dataset asks the server first (the INFO message) how many ranks W it
serves (`coemu serve --ranks W`), the sample shapes and the normalisation
parameters; it never has to be told W. It then splits the W server ranks
over its consumers: C = (torch.distributed world size) x (DataLoader
workers), consumer k = rank x workers + worker id takes the server ranks r
with r % C == k, one connection each, read in turn. So every sample of an
epoch reaches exactly one consumer, and each torch rank gets W / world_size
server ranks' samples. C > W is an error that says which --ranks to use; under
torch.distributed, W must be a multiple of C (every rank then gets the same
number of samples, which DistributedDataParallel needs).

Epochs: set_epoch(e) before each epoch, as with DistributedSampler; the
dataset also counts the epochs it finished in the process that iterates it
(num_workers=0 or persistent_workers=True need no set_epoch). A `break`
out of the loop closes every connection with a BYE: the server frees them at
once and serves the next consumer (or the next epoch) without waiting.
"""
import math
import time

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from coemu.normalise import Normalisation
from coemu.stream import TRANSPORTS, StreamClient, order_flags, server_info


def _dist_rank_world():
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class StreamDataset(IterableDataset):
    """Samples (or the server's whole batches, batched=True) streamed from
    `coemu serve` at `endpoint`.

    Items: (inputs, targets) float32 tensors, (3, n, n, n) and (F, n, n) per
    sample ((B, ...) with batched=True; use DataLoader(batch_size=None)),
    plus the dataset sample ids (int64) when with_ids. normalised=True asks
    the server for normalised data (its dataset's /stats); `self.norm` holds
    those parameters (None without /stats) for denormalising predictions.

    rank / world_size default to torch.distributed's (read when the dataset
    is made: make it after init_process_group), 1 process otherwise; pass
    them to override. world: the server's ranks when it cannot be asked (a
    coemu without the INFO message). curve: (the producer's NAME.key, this
    consumer's NAME.key_secret) for a CURVE producer (coemu keygen).
    order: None (the server's), "exact" or "shards": the epoch order
    expected (docs/stream-protocol.md, "Order"); a server announcing the
    other one is refused at once, and the HELLOs ask for it too.
    transport: "auto" (default), "socket" or "shm": rows through the
    producer's shared-memory segment when this process is on its host, else
    as ZeroMQ frames; always frames; the segment or an error (StreamClient; docs/stream-protocol.md, "Shared memory")."""

    def __init__(self, endpoint, normalised=False, batched=False, with_ids=False, epoch=0,
                 rank=None, world_size=None, world=None, credit=4, timeout_s=None,
                 info_timeout_s=10.0, curve=None, order=None, transport="auto"):
        super().__init__()
        self.endpoint, self.normalised = endpoint, normalised
        self.batched, self.with_ids, self.credit = batched, with_ids, credit
        self.curve = curve
        order_flags(order)  # a bad value fails here
        self.order = order
        if transport not in TRANSPORTS:
            raise ValueError(f"transport {transport!r}: expected one of {TRANSPORTS}")
        self.transport = transport
        if world is None:
            self.info = server_info(endpoint, timeout_s=info_timeout_s, curve=curve)
        else:
            self.info = {"world": int(world), "samples_per_rank": 0, "epochs": 0}
        self.world = int(self.info["world"])
        if self.world < 1:
            raise RuntimeError(f"{endpoint}: the server announces {self.world} ranks (a server "
                               f"that accepts any world): pass world=")
        r, w = _dist_rank_world()
        self.rank = r if rank is None else int(rank)
        self.world_size = w if world_size is None else int(world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} of world size {self.world_size}")
        if self.world % self.world_size:
            raise RuntimeError(self._advice(self.world_size, None))
        served = self.info.get("order")
        if order is not None and served is not None and served != order:
            raise RuntimeError(f"{endpoint}: order {order!r} asked for, but the server serves "
                               f"order {served!r} (start it with coemu serve --order {order})")
        self.norm = None
        if self.info.get("normalisation") is not None:
            self.norm = Normalisation.from_info(self.info)
        elif normalised and "normalisation" in self.info:
            if self.info.get("source") == "generate":
                how = ("`coemu serve --generate` was started without a normalisation: give it "
                       "--pilot N or --stats PILOT (docs/onthefly.md)")
            elif self.info.get("live"):
                how = ("a live server (a dataset still being made) serves raw data only: "
                       "normalise with the finished dataset's /stats (docs/stream-protocol.md)")
            else:
                how = "run `coemu stats` on it"
            raise RuntimeError(f"{endpoint}: normalised data asked for, but the server's dataset "
                               f"has no /stats ({how})")
        server_timeout = float(self.info.get("timeout_s") or 10.0)
        self.heartbeat_s = min(1.0, float(self.info.get("heartbeat_s") or 1.0))
        self.timeout_s = float(timeout_s) if timeout_s else max(10.0, server_timeout)
        # a consumer idle longer than half the server's timeout reconnects and resumes
        self.resume_after_s = server_timeout / 2
        self._epoch = int(epoch)
        self._finished = int(epoch)  # epochs finished in this process, plus the start

    # ---- epochs ----
    def set_epoch(self, epoch):
        """The epoch the next iteration streams (as DistributedSampler.set_epoch)."""
        self._epoch = int(epoch)

    @property
    def epoch(self):
        return max(self._epoch, self._finished)

    # ---- who reads what ----
    def _advice(self, consumers, workers):
        """Why `consumers` connections cannot share the server's ranks, and
        what to change. workers: DataLoader workers per torch rank, or None
        when no loader exists yet (the dataset is being made: the consumers
        are then the torch ranks alone)."""
        w = self.world
        who = (f"{self.world_size} torch ranks" if workers is None else
               f"{self.world_size} torch ranks x {workers} DataLoader workers")
        if consumers > w:
            fix = f"start it with --ranks {consumers} (or a multiple of {consumers})"
            # fewer workers help only while one worker per torch rank fits:
            # with more torch ranks than server ranks only --ranks can
            if workers is not None and w >= self.world_size:
                fix += f", or use at most {w // self.world_size} workers per rank"
            return f"{consumers} consumers ({who}) but `coemu serve` serves --ranks {w}: {fix}"
        return (f"`coemu serve --ranks {w}` does not split evenly over {consumers} consumers "
                f"({who}): with torch.distributed every rank must get the same number of "
                f"samples; start it with --ranks {consumers * max(1, math.ceil(w / consumers))} "
                f"(a multiple of {consumers})")

    def server_ranks(self, worker_id=0, num_workers=1):
        """The server ranks consumer (this rank, worker_id) reads."""
        c = self.world_size * num_workers
        if c > self.world or (self.world_size > 1 and self.world % c):
            raise RuntimeError(self._advice(c, num_workers))
        return list(range(self.rank * num_workers + worker_id, self.world, c))

    def __len__(self):
        """Items this torch rank gets per epoch (samples, or batches when batched)."""
        n = self.info.get("samples_per_rank", 0) * (self.world // self.world_size)
        if self.batched:
            n //= max(1, int(self.info.get("batch", 1)))
        return n

    # ---- the stream ----
    def _items(self, ch):
        if self.batched:
            x, y = torch.from_numpy(ch.inputs), torch.from_numpy(ch.targets)
            if self.with_ids:
                return [(x, y, torch.from_numpy(ch.ids.astype(np.int64)))]
            return [(x, y)]
        ids = ch.ids.astype(np.int64)
        xs, ys = torch.from_numpy(ch.inputs), torch.from_numpy(ch.targets)
        if self.with_ids:
            return [(xs[i], ys[i], int(ids[i])) for i in range(len(ids))]
        return [(xs[i], ys[i]) for i in range(len(ids))]

    def __iter__(self):
        wi = get_worker_info()
        nw, wid = (wi.num_workers, wi.id) if wi is not None else (1, 0)
        ranks = self.server_ranks(wid, nw)
        epoch = self.epoch
        max_epochs = int(self.info.get("epochs") or 0)
        if max_epochs and epoch >= max_epochs:
            raise RuntimeError(f"epoch {epoch} asked for, but the server at {self.endpoint} "
                               f"serves {max_epochs} epochs (coemu serve --epochs {max_epochs})")
        clients = []
        try:
            for r in ranks:
                clients.append(StreamClient(self.endpoint, rank=r, world=self.world, epoch=epoch,
                                            credit=self.credit, normalised=self.normalised,
                                            heartbeat_s=self.heartbeat_s, timeout_s=self.timeout_s,
                                            resume_after_s=self.resume_after_s,
                                            curve=self.curve, taper=True, order=self.order,
                                            transport=self.transport))
            active = list(clients)
            while active:
                for c in list(active):
                    ch = c.next()
                    if ch is None:
                        active.remove(c)
                        continue
                    for item in self._items(ch):
                        yield item
            self._finished = epoch + 1
        finally:  # also on break (GeneratorExit): BYE frees the server's connections now
            for c in clients:
                try:
                    c.say_bye()
                except Exception:  # noqa: BLE001 - every connection must be reached
                    pass
            end = time.monotonic() + 0.5  # the server confirms it read each BYE
            for c in clients:
                try:
                    c.wait_bye(max(0.0, end - time.monotonic()))
                except Exception:  # noqa: BLE001
                    pass
            for c in clients:
                try:
                    c.close(grace_s=0)
                except Exception:  # noqa: BLE001
                    pass
