#!/usr/bin/env python3
"""coemu.torch_data.StreamDataset against `coemu serve`, with PyTorch:

- 2 torch.distributed ranks (gloo, 2 processes) x 2 DataLoader workers read
  `serve --ranks 4` for 2 epochs without being told 4 (the INFO message):
  every training sample of each epoch exactly once, each sample's bytes equal
  to its /checksums row, equal counts per rank, a new order in epoch 1, and
  the server exits by itself after the last epoch;
- more consumers than server ranks, or a world that does not split evenly
  under torch.distributed: a clear error naming the --ranks to use;
- normalised=True: the stream equals coemu.normalise applied to the raw
  samples (within the bound of one last-bit difference of a logarithm), and
  the dataset's parameters equal /stats; without a normalisation the
  refusal says how to get one (coemu stats, serve --generate --pilot/--stats);
- readers that take epoch 0 again from its start (fresh DataLoaders
  without set_epoch): the server warns once and counts them; none with
  set_epoch;
- early break: a DataLoader (2 workers) left after one batch says BYE on
  every connection: the server counts no dropped consumer, serves the next
  reader at once, and `serve --epochs 1` exits once that reader is done;
  the same without workers;
- training steps longer than the server's --timeout: the keepalive thread
  keeps the session (no reconnect, nothing dropped, and the consumer's own
  absence is not taken for the producer's silence); without it the consumer
  reconnects and resumes; the epoch is read exactly once either way;
- CURVE (tcp, coemu keygen keys): an authorised consumer reads the epoch,
  a stranger's key gets not even the INFO reply.
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fixture  # noqa: E402

fixture.skip_without_torch()
import h5py  # noqa: E402
import torch  # noqa: E402

from coemu.normalise import Normalisation  # noqa: E402
from coemu.stream import xxh64  # noqa: E402
from coemu.torch_data import StreamDataset  # noqa: E402
from pycheck import check, report  # noqa: E402


def no_stats_advice():
    """normalised=True from a server without a normalisation: the advice
    fits the server (INFO's source and live): --pilot/--stats for serve
    --generate, none for a live stream, coemu stats for a dataset."""
    import coemu.torch_data as td
    real = td.server_info
    base = {"world": 1, "samples_per_rank": 4, "epochs": 0, "normalisation": None}
    try:
        for extra, want, unwanted in (({"live": False}, "coemu stats", "--pilot"),
                                      ({"live": False, "source": "generate"}, "--pilot",
                                       "coemu stats"),
                                      ({"live": True}, "live", "coemu stats")):
            td.server_info = lambda *a, **k: dict(base, **extra)
            try:
                StreamDataset("ipc:///nonexistent/x.sock", normalised=True)
                check(False, f"normalised without a normalisation refused ({extra})")
            except RuntimeError as e:
                check(want in str(e) and unwanted not in str(e), f"advice for {extra}: {e}")
    finally:
        td.server_info = real


def ddp_child(ep, rank, pgfile, out):
    """One torch.distributed rank: 2 workers, 2 epochs, what it got to `out`."""
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{pgfile}", rank=rank, world_size=2)
    ds = StreamDataset(ep, with_ids=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)
    got = {"len": len(ds), "epochs": []}
    for epoch in range(2):
        ds.set_epoch(epoch)
        rows = []
        for x, y, ids in loader:
            for k in range(len(ids)):
                rows.append([int(ids[k]), xxh64(x[k].numpy()), xxh64(y[k].numpy())])
        n = torch.tensor([len(rows)])
        dist.all_reduce(n)  # DDP needs every rank to reach this: equal shares
        got["epochs"].append({"rows": rows, "total": int(n)})
    dist.destroy_process_group()
    with open(out, "w") as f:
        json.dump(got, f)


if len(sys.argv) == 5 and sys.argv[1] == "--ddp-child":
    ddp_child(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[4] + f".{sys.argv[3]}.json")
    sys.exit(0)

no_stats_advice()

with tempfile.TemporaryDirectory() as tmp:
    d = fixture.make_dataset(tmp)
    h5 = os.path.join(d, "dataset.h5")
    with h5py.File(h5, "r") as f:
        split, valid, sums = f["split"][:], f["valid"][:], f["checksums"][:]
        raw_in, raw_out = f["inputs"][:], f["targets"][:]
    train = {i for i in range(len(split)) if split[i] == 0 and valid[i] == 1}
    ep = f"ipc://{tmp}/s.sock"

    # ---- 2 ranks x 2 workers over serve --ranks 4, 2 epochs ----
    p = fixture.serve(d, ep, "--ranks", "4", "--batch", "2", "--epochs", "2")
    pg = os.path.join(tmp, "pg")
    kids = [subprocess.Popen([sys.executable, __file__, "--ddp-child", ep, str(r), pg],
                             stderr=subprocess.PIPE, text=True) for r in range(2)]
    for r, k in enumerate(kids):
        try:
            _, err = k.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            k.kill()
            _, err = k.communicate()
        check(k.returncode == 0, f"DDP rank {r}: exit {k.returncode}: {err[-2000:]}")
    rc, err = fixture.finish(p)
    check(rc == 0, f"serve --epochs 2 exits by itself after the last epoch: {rc} {err[-1000:]}")
    check("again from its start" not in err and "asked for an epoch again" not in err,
          f"set_epoch each epoch: no repeat warning: {err[-600:]}")
    # at the end of epoch 0 each of the 4 connections may have been sent one
    # chunk (2 samples) of epoch 1 before it left, no more (credit is kept to
    # the chunks left in an epoch); after the last epoch nothing
    m = re.search(r"sent (\d+) samples", err)
    sent = int(m.group(1)) if m else -1
    check(2 * len(train) <= sent <= 2 * len(train) + 4 * 2,
          f"samples sent {sent}: at most one chunk per connection sent twice")
    res = []
    for r in range(2):
        try:
            res.append(json.load(open(f"{pg}.{r}.json")))
        except OSError:
            res.append(None)
    if all(res):
        orders = []
        for e in range(2):
            rows = [row for r in range(2) for row in res[r]["epochs"][e]["rows"]]
            ids = [row[0] for row in rows]
            check(sorted(ids) == sorted(train),
                  f"epoch {e}: every training sample exactly once ({len(ids)} rows, "
                  f"{len(set(ids))} distinct, {len(train)} expected)")
            bad = [row[0] for row in rows
                   if row[1] != int(sums[row[0]][0]) or row[2] != int(sums[row[0]][1])]
            check(not bad, f"epoch {e}: samples whose bytes differ from /checksums: {bad}")
            n = [len(res[r]["epochs"][e]["rows"]) for r in range(2)]
            check(n[0] == n[1] == len(train) // 2 == res[0]["len"],
                  f"epoch {e}: equal shares {n}, len(ds) {res[0]['len']}")
            check(res[0]["epochs"][e]["total"] == len(train), f"epoch {e}: all_reduce total")
            orders.append([row[0] for row in res[0]["epochs"][e]["rows"]])
        check(orders[0] != orders[1], "set_epoch: epoch 1 is a new order")

    # ---- consumers vs the server's ranks ----
    p = fixture.serve(d, ep, "--ranks", "4", "--batch", "2")
    ds = StreamDataset(ep, rank=0, world_size=2)  # a simulated rank of 2
    check(ds.world == 4 and ds.server_ranks(1, 2) == [1], f"rank 0 worker 1 of 2: "
          f"server ranks {ds.server_ranks(1, 2)}")
    try:
        ds.server_ranks(0, 4)
        check(False, "8 consumers over 4 server ranks refused")
    except RuntimeError as e:
        check("--ranks 8" in str(e) and "serves --ranks 4" in str(e), f"advice: {e}")
    try:
        next(iter(torch.utils.data.DataLoader(StreamDataset(ep, rank=1, world_size=2),
                                              num_workers=3)))
        check(False, "6 consumers over 4 server ranks under DDP refused")
    except Exception as e:  # noqa: BLE001 - the DataLoader re-raises the worker's error
        check("--ranks 6" in str(e) or "--ranks 8" in str(e), f"advice through a DataLoader: {e}")
    try:
        StreamDataset(ep, rank=0, world_size=3)
        check(False, "3 torch ranks over 4 server ranks refused")
    except RuntimeError as e:
        check("--ranks 6" in str(e), f"advice for 3 ranks: {e}")
    # more torch ranks than server ranks: only --ranks can help (fewer workers
    # cannot), and no DataLoader exists yet to count workers of
    try:
        StreamDataset(ep, rank=0, world_size=8)
        check(False, "8 torch ranks over 4 server ranks refused")
    except RuntimeError as e:
        check(str(e) == "8 consumers (8 torch ranks) but `coemu serve` serves --ranks 4: start "
              "it with --ranks 8 (or a multiple of 8)", f"advice for 8 ranks: {e}")
    # a single process may take uneven shares: 3 workers over 4 ranks
    one = StreamDataset(ep, with_ids=True, batched=True)
    ids = []
    for x, y, i in torch.utils.data.DataLoader(one, batch_size=None, num_workers=3):
        check(x.shape == (2, 3, 8, 8, 8) and y.shape == (2, 3, 8, 8), f"batched shapes {x.shape}")
        ids += i.tolist()
    check(sorted(ids) == sorted(train), "3 workers over 4 ranks: the whole epoch once")
    # transport "shm" (docs/stream-protocol.md, "Shared memory"): the same samples, byte
    # for byte, as frames, through 2 workers
    got = {}
    for transport in ("socket", "shm"):
        got[transport] = {}
        for x, y, b in torch.utils.data.DataLoader(
                StreamDataset(ep, with_ids=True, batched=True, transport=transport),
                batch_size=None, num_workers=2):
            for k, i in enumerate(b.tolist()):
                got[transport][i] = (x[k].numpy().tobytes(), y[k].numpy().tobytes())
    check(sorted(got["shm"]) == sorted(train) and got["shm"] == got["socket"],
          "transport shm: the whole epoch once, the same bytes as over frames")

    # without INFO (a server older than the message): the world given by hand
    ids = [i for _, _, b in torch.utils.data.DataLoader(StreamDataset(ep, world=4, with_ids=True),
                                                        batch_size=2, num_workers=2)
           for i in b.tolist()]
    check(sorted(ids) == sorted(train), "world=4 given by hand: the whole epoch once")
    from coemu.stream import ProducerSilent
    try:
        StreamDataset(f"ipc://{tmp}/nobody.sock", info_timeout_s=0.5)
        check(False, "no server: an error")
    except ProducerSilent as e:
        check("no INFO reply" in str(e) and "world=" in str(e), f"no server: {e}")

    # ---- normalised stream == coemu.normalise of the raw samples ----
    norm_h5 = Normalisation.from_h5(h5)
    ns = StreamDataset(ep, normalised=True, with_ids=True)
    check(ns.norm == norm_h5, "the stream's INFO parameters equal /stats")
    worst = 0.0
    for x, y, i in torch.utils.data.DataLoader(ns, batch_size=4, num_workers=0):
        for k, idx in enumerate(i.tolist()):
            for got, raw, fn, what in ((x[k].numpy(), raw_in[idx], norm_h5.normalise_inputs, "in"),
                                       (y[k].numpy(), raw_out[idx], norm_h5.normalise_targets, "out")):
                want = fn(raw)
                # a 1-ulp difference of a double log can flip the float32 ln by one
                # ulp: the result moves by ulp(ln)/scale, then 1 ulp of rounding
                if what == "in":
                    with np.errstate(invalid="ignore"):
                        ln = np.log(raw.astype(np.float64)).astype(np.float32)
                    scale = np.array([norm_h5.vz_std, norm_h5.lnT_scale, norm_h5.lnn_scale])
                    tol = np.spacing(np.abs(ln)) / scale[:, None, None, None]
                    tol[0] = 0
                else:
                    ln = np.log(np.maximum(raw, np.float32(1e-38)).astype(np.float64)).astype(np.float32)
                    tol = np.spacing(np.abs(ln)) / norm_h5.lnI_scale
                tol = tol + np.spacing(np.abs(want))
                diff = np.abs(got.astype(np.float64) - want)
                ok = np.all(diff <= tol)
                worst = max(worst, float(np.max(diff)))
                check(ok, f"normalised sample {idx} {what}: max diff {np.max(diff)}")
    print(f"normalised stream vs coemu.normalise: max |diff| {worst:.3g}")
    p.terminate()
    _, err = fixture.finish(p)
    # the readers above each took epoch 0 from its start (fresh DataLoaders,
    # no set_epoch): the server warns once, names the cause, counts them all
    m = re.search(r"serve: (\d+) HELLOs? asked for an epoch again", err)
    check(err.count("asks for epoch 0 again from its start") == 1 and "set_epoch" in err and
          m and int(m.group(1)) >= 8, f"epoch 0 read again: one warning, every repeat counted: "
          f"{err[-1200:]}")

    # ---- early break ----
    p = fixture.serve(d, ep, "--ranks", "2", "--batch", "2", "--epochs", "1",
                      "--max-consumers", "2", "--idle-exit", "60")
    ds = StreamDataset(ep, with_ids=True)
    it = iter(torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2))
    first = next(it)
    check(len(first[2]) == 2, "one batch read before the break")
    del it  # what `break` does: the iterator goes, its workers stop
    t0 = time.monotonic()
    got = [i for _, _, b in torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)
           for i in b.tolist()]
    took = time.monotonic() - t0
    check(sorted(got) == sorted(train), "after the break, the next reader gets the whole epoch")
    check(took < 8, f"the next reader was served at once ({took:.1f} s; the server drops a "
                    f"silent peer after 10 s)")
    ok = fixture.wait_gone(p, 10)
    rc, err = fixture.finish(p)
    check(ok and rc == 0, f"serve --epochs 1 exits after the reader: {rc} {err[-800:]}")
    check(" 0 consumers dropped" in err, f"every connection ended with BYE: {err[-400:]}")
    print(err.strip().splitlines()[-1])

    # the same without workers: the generator's finally says BYE on break
    p = fixture.serve(d, ep, "--ranks", "2", "--batch", "2", "--epochs", "1",
                      "--max-consumers", "2", "--idle-exit", "60")
    ds = StreamDataset(ep)
    for n, _ in enumerate(torch.utils.data.DataLoader(ds, batch_size=2)):
        if n == 1:
            break
    got = sum(len(x) for x, _ in torch.utils.data.DataLoader(ds, batch_size=2))
    check(got == len(train), f"no workers: after a break the epoch is read whole ({got})")
    ok = fixture.wait_gone(p, 10)
    rc, err = fixture.finish(p)
    check(ok and rc == 0 and " 0 consumers dropped" in err,
          f"no workers: BYE on break, serve exits: {rc} {err[-400:]}")

    # ---- steps longer than the server's --timeout (1.5 s) ----
    from coemu.stream import StreamClient

    def slow(p, what, **kw):
        """Sleep 2.5 s after the second chunk; the epoch must come exactly once."""
        got, c = [], StreamClient(ep, rank=0, world=1, heartbeat_s=0.2, **kw)
        try:
            for n, ch in enumerate(c.iter_epoch()):
                got += ch.ids.tolist()
                if n == 1:
                    time.sleep(2.5)
        except Exception as e:  # noqa: BLE001
            check(False, f"{what}: {e!r}")
        c.close()
        check(sorted(got) == sorted(train), f"{what}: the epoch exactly once ({len(got)} samples)")
        rc, err = fixture.finish(p)
        check(rc == 0, f"{what}: serve exits: {rc} {err[-300:]}")
        return c, err

    args = ("--ranks", "1", "--batch", "2", "--epochs", "1", "--timeout", "1.5")
    # keepalive (the default): heartbeats while the consumer sleeps, no reconnect;
    # and 2.5 s of the consumer's own absence is not the producer's silence (1 s)
    c, err = slow(fixture.serve(d, ep, *args), "keepalive", timeout_s=1.0)
    check(c.resumes == 0 and " 1 hellos" in err and " 0 consumers dropped" in err,
          f"keepalive: one session, never dropped: {c.resumes} resumes; {err[-300:]}")
    # no keepalive: the producer drops the consumer; it reconnects and resumes
    c, err = slow(fixture.serve(d, ep, *args), "resume", keepalive=False, resume_after_s=0.75)
    check(c.resumes == 1 and " 2 hellos" in err, f"resume: {c.resumes} resumes; {err[-300:]}")
    # the dataset: keepalive in its workers, the resume as a fallback
    p = fixture.serve(d, ep, *args)
    ds = StreamDataset(ep, with_ids=True)
    check(ds.resume_after_s == 0.75, f"resume after half the server's timeout: {ds.resume_after_s}")
    got = []
    for n, (x, y, i) in enumerate(torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1)):
        got += i.tolist()
        if n == 1:
            time.sleep(2.5)
    check(sorted(got) == sorted(train), f"slow steps: the epoch exactly once ({len(got)} samples)")
    rc, err = fixture.finish(p)
    check(rc == 0 and " 0 consumers dropped" in err, f"slow steps, workers: {rc} {err[-400:]}")

    # ---- CURVE: keys from coemu keygen; a stranger's key gets nothing ----
    import socket
    from coemu.stream import server_info
    for name in ("srv", "cli", "stranger"):
        subprocess.run([fixture.COEMU, "keygen", os.path.join(tmp, name)], check=True,
                       capture_output=True)
    auth = os.path.join(tmp, "authorized")
    os.makedirs(auth)
    os.rename(os.path.join(tmp, "cli.key"), os.path.join(auth, "cli.key"))
    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        port = so.getsockname()[1]
    tep = f"tcp://127.0.0.1:{port}"
    keys = (os.path.join(tmp, "srv.key"), os.path.join(tmp, "cli.key_secret"))
    p = fixture.serve(d, tep, "--ranks", "2", "--batch", "2", "--epochs", "1",
                      "--curve-secret", os.path.join(tmp, "srv.key_secret"),
                      "--curve-authorized", auth, curve=keys)
    try:
        server_info(tep, timeout_s=1.0, curve=(keys[0], os.path.join(tmp, "stranger.key_secret")))
        check(False, "a stranger's key gets no INFO")
    except ProducerSilent:
        check(True, "a stranger's key gets no INFO")
    ds = StreamDataset(tep, with_ids=True, curve=keys)
    got = [i for _, _, b in torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)
           for i in b.tolist()]
    check(sorted(got) == sorted(train), "CURVE: 2 workers read the epoch exactly once")
    rc, err = fixture.finish(p)
    check(rc == 0, f"CURVE serve exits: {rc} {err[-400:]}")

report()
