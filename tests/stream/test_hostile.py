#!/usr/bin/env python3
"""coemu serve against hostile and broken peers (issue 13), speaking the raw
protocol over loopback TCP:

  1. sessions of one rank resuming at 20, 0, 0 (and 60 clients that vanish
     mid-chunk) must not deadlock the producer; SIGTERM is always honoured;
  2. a HELLO whose world does not fit 16 bits (65536 + W) is refused (no
     out-of-bounds write: the sanitizer suite runs this test);
  3. non-reading peers that keep granting credit do not grow the server
     beyond its stated bound, and a well-behaved rank keeps its pace;
  6. the rank set is the server's own (--ranks): a peer's HELLO world or
     lying BYE neither ends the server nor keeps it alive; --epochs ends it
     once every rank has been sent every epoch and said BYE.

Every wait is bounded; every process is killed at the end."""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np
import zmq

ROOT = os.environ.get("COEMU_SOURCE_ROOT", os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "pipeline", "stream"))
import coemu_stream as cs  # noqa: E402

COEMU = os.environ.get("COEMU", "build/pipeline/coemu")
SANITIZE = os.environ.get("COEMU_SANITIZE") == "1"
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check as _check, report  # noqa: E402


def check(cond, what, *detail):
    return _check(cond, what + (": " + " ".join(str(x) for x in detail) if detail and not cond else ""))

N, NF = 16, 3  # per sample: 3 x 16^3 + 3 x 16^2 float32 = 52 KB
SAMPLE_BYTES = 4 * (3 * N ** 3 + NF * N * N)
procs = []


def make_dataset(d, n_samples):
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(13)
    inputs = rng.random((n_samples, 3, N, N, N), dtype=np.float32)
    targets = rng.random((n_samples, NF, N, N), dtype=np.float32)
    with h5py.File(os.path.join(d, "dataset.h5"), "w") as f:
        f["inputs"] = inputs
        f["targets"] = targets
        f["split"] = np.zeros(n_samples, dtype=np.uint8)
    with open(os.path.join(d, "manifest.json"), "w") as f:
        json.dump({"samples": n_samples}, f)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def serve(d, *args, env=None):
    ep = f"tcp://127.0.0.1:{free_port()}"
    p = subprocess.Popen([COEMU, "serve", d, "--endpoint", ep, "--heartbeat", "0.2", *args],
                         stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    procs.append(p)
    time.sleep(0.5 if not SANITIZE else 1.5)
    return p, ep


def finish(p, what, sig=signal.SIGTERM, limit=10):
    """Stop p with sig; True if it left within `limit` seconds (else killed)."""
    if p.poll() is None:
        p.send_signal(sig)
    try:
        _, err = p.communicate(timeout=limit)
        ok = True
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
        ok = False
    check(ok, f"{what}: the server left within {limit} s of signal {sig}")
    check("ERROR: AddressSanitizer" not in err and "runtime error" not in err,
          f"{what}: no sanitizer report", err[-3000:])
    return err


def vmrss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Raw:
    """A raw DEALER peer."""

    def __init__(self, ctx, ep, rcvhwm=4):
        self.s = ctx.socket(zmq.DEALER)
        self.s.setsockopt(zmq.LINGER, 0)
        self.s.setsockopt(zmq.RCVHWM, rcvhwm)  # a non-reader holds little on its side
        self.s.connect(ep)

    def send(self, type_, **kw):
        self.s.send(cs.Header.encode(type_, **kw), zmq.DONTWAIT)

    def recv(self, timeout_s):
        """Next message's header and frames, or None after timeout_s."""
        if not self.s.poll(int(timeout_s * 1000)):
            return None, None
        fr = self.s.recv_multipart()
        return cs.Header.decode(fr[0]), fr

    def close(self):
        self.s.close(0)


def read_epoch(ep, rank, world, epoch=0, position=0, limit=None, timeout_s=5):
    """Samples read with StreamClient (None if the producer went silent)."""
    c = cs.StreamClient(ep, rank=rank, world=world, epoch=epoch, position=position,
                        timeout_s=timeout_s, heartbeat_s=0.2, credit=4)
    n = 0
    try:
        while limit is None or n < limit:
            ch = c.next()
            if ch is None:
                break
            n += len(ch.ids)
    except cs.ProducerSilent:
        return None, c
    return n, c


with tempfile.TemporaryDirectory() as tmp:
    d = os.path.join(tmp, "ds")
    make_dataset(d, 64)
    ctx = zmq.Context()
    try:
        # ---- 1: resume at 20, 0, 0 with --batch 1: no deadlock --------------------
        p, ep = serve(d, "--batch", "1")
        n1, c1 = read_epoch(ep, 0, 1, position=20, limit=1)
        n2, c2 = read_epoch(ep, 0, 1, position=0, limit=1)
        n3, c3 = read_epoch(ep, 0, 1, position=0)
        check(n1 == 1 and n2 == 1, "item 1: the first two sessions get their chunk", n1, n2)
        check(n3 == 64, "item 1: the third session of rank 0 reads its whole epoch", n3)
        for c in (c1, c2, c3):
            c.close()
        # 60 clients that vanish mid-chunk, then a well-behaved one
        for k in range(60):
            r = Raw(ctx, ep)
            r.send(cs.HELLO, value=8, nsamples=1, rank=0, position=(k * 7) % 64)
            time.sleep(0.005)
            r.close()
        n4, c4 = read_epoch(ep, 0, 1, position=0)
        check(n4 == 64, "item 1: after 60 vanished clients a session reads its epoch", n4)
        c4.close()
        finish(p, "item 1")

        # ---- 2: HELLO with world 65536 + W: refused, nothing written out of bounds --
        p, ep = serve(d, "--ranks", "1")
        bad = Raw(ctx, ep)
        bad.send(cs.HELLO, value=8, nsamples=65536 + 1, rank=5)
        got = []
        t0 = time.time()
        while time.time() - t0 < 1.5:
            h, _ = bad.recv(0.3)
            if h is not None:
                got.append(h.type)
        check(cs.CHUNK not in got and cs.WELCOME not in got,
              "item 2: HELLO world 65537 rank 5 gets neither WELCOME nor CHUNK", got)
        bad.send(cs.HELLO, value=8, nsamples=65535, rank=65534)
        h, fr = bad.recv(2)
        check(h is not None and h.type == cs.ERROR and b"ranks" in fr[1],
              "item 2: HELLO world 65535 on a 1-rank server gets an ERROR naming the ranks",
              h and h.type, fr and fr[-1][:200])
        bad.close()
        n, c = read_epoch(ep, 0, 1)
        check(n == 64, "item 2: a well-behaved rank is served afterwards", n)
        c.close()
        check(p.poll() is None, "item 2: the server is still running")
        finish(p, "item 2")

        # ---- 6: the rank set is the server's (--ranks), not a peer's --------------
        p, ep = serve(d, "--ranks", "2", "--epochs", "1", "--batch", "4")
        liar = Raw(ctx, ep)
        liar.send(cs.HELLO, value=8, nsamples=1, rank=0)   # world 1 on a 2-rank server
        liar.send(cs.BYE, epoch=1)
        liar2 = Raw(ctx, ep)
        liar2.send(cs.HELLO, value=1, nsamples=2, rank=1, epoch=1)  # claims to be done
        liar2.send(cs.BYE, epoch=1)
        time.sleep(1.0)
        check(p.poll() is None, "item 6: HELLO(world=1) + BYE(epoch=1) does not end a 2-rank server")
        liar.close()
        liar2.close()
        got = [read_epoch(ep, r, 2) for r in (0, 1)]
        check([g[0] for g in got] == [32, 32], "item 6: both ranks read their epoch", [g[0] for g in got])
        for _, c in got:
            c.close()  # BYE at epoch 1
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        check(p.poll() == 0, "item 6: --epochs 1 --ranks 2 ends once both ranks said BYE", p.poll())
        finish(p, "item 6")

        # a rejected first HELLO with world 65535 does not keep --epochs 1 alive
        p, ep = serve(d, "--ranks", "1", "--epochs", "1")
        bad = Raw(ctx, ep)
        bad.send(cs.HELLO, value=8, nsamples=65535, rank=7)
        time.sleep(0.3)
        bad.close()
        n, c = read_epoch(ep, 0, 1)
        c.close()
        check(n == 64, "item 6: the one rank reads its epoch", n)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        check(p.poll() == 0, "item 6: a rejected HELLO(world 65535) does not keep the server alive",
              p.poll())
        finish(p, "item 6b")

        # consumer gone mid-epoch: --epochs alone implies an idle exit (600 s) ...
        p, ep = serve(d, "--ranks", "1", "--epochs", "1")
        err = finish(p, "default idle exit")
        check("idle exit after 600 s" in err, "users: --epochs implies --idle-exit 600", err[:400])
        p, ep = serve(d, "--ranks", "1")
        err = finish(p, "no idle exit")
        check("idle exit never" in err, "users: without --epochs no idle exit", err[:400])
        # ... which ends the server once the consumer that stopped mid-epoch is gone
        p, ep = serve(d, "--ranks", "1", "--epochs", "1", "--idle-exit", "1")
        n, c = read_epoch(ep, 0, 1, limit=8)
        c.close()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        check(p.poll() == 0, "users: a consumer that stops mid-epoch: --idle-exit ends the server",
              p.poll())
        finish(p, "idle exit")

        # ---- connections are capped (--max-consumers); places belong to readers,
        # and every rank of the world has a right to one -----------------------------
        p, ep = serve(d, "--ranks", "2", "--batch", "8", "--max-consumers", "3")
        raws = []
        for k in range(3):
            r = Raw(ctx, ep)
            r.send(cs.HELLO, value=2, nsamples=2, rank=1)
            raws.append(r)
        time.sleep(0.5)  # each has taken chunks: to the server they are reading
        extra = Raw(ctx, ep)
        extra.send(cs.HELLO, value=2, nsamples=2, rank=1)
        h, fr = extra.recv(2)
        while h is not None and h.type == cs.HEARTBEAT:
            h, fr = extra.recv(2)
        check(h is not None and h.type == cs.ERROR and b"busy" in fr[1],
              "max-consumers: a 4th session of rank 1 gets an ERROR saying the producer is busy",
              h and h.type, fr and fr[-1][:200])
        extra.close()
        # rank 0 holds no place: it takes one of rank 1's three (before: "busy")
        n, c = read_epoch(ep, 0, 2)
        c.close()
        check(n == 32, "max-consumers: rank 0, with no place, is admitted and reads its epoch", n)
        for r in raws:
            r.close()
        err = finish(p, "max-consumers")
        check("1 superseded" in err, "max-consumers: the server counts the superseded session",
              err[-400:])

        # ---- dropped peers that neither read nor disconnect lose their place --------
        # Two peers (rank 0 and rank 1 of 2) fill --max-consumers 2, grant credit
        # (so they are heard) and never read: chunks of 3.3 MB, 8 of them per
        # peer, stay queued in the server beyond what the peer's pipe (1 message)
        # and the loopback TCP buffers hold. They are dropped as stalled after
        # --timeout 1 but their queued chunks keep their places (no session is
        # left to give way); the server shuts their connections down, ZeroMQ
        # releases the chunks, and a good rank is admitted (before: "producer
        # busy" for as long as they stay connected).
        d2 = os.path.join(tmp, "ds128")
        make_dataset(d2, 128)
        p, ep = serve(d2, "--ranks", "2", "--batch", "64", "--max-credit", "8",
                      "--max-consumers", "2", "--timeout", "1")
        zs = [Raw(ctx, ep, rcvhwm=1) for _ in range(2)]
        for k, z in enumerate(zs):
            z.send(cs.HELLO, value=8, nsamples=2, rank=k)
        t = time.time()
        while time.time() - t < 3.0:
            for z in zs:
                try:
                    z.send(cs.CREDIT, value=8)
                except zmq.Again:
                    pass
            time.sleep(0.1)
        try:
            n, c = read_epoch(ep, 0, 2)
            c.close()
        except Exception as e:  # the producer said it is busy
            n = repr(e)
        check(n == 64, "zombies: after two non-reading peers were dropped, a good rank reads its epoch", n)
        for z in zs:
            z.close()
        err = finish(p, "zombies")
        import re
        shut = re.search(r"(\d+) connections shut", err)
        check(shut and int(shut.group(1)) >= 1,
              "zombies: the server shut the dropped peers' connections", err[-400:])

        # ---- 3: non-reading peers: bounded memory, a fair share for the good rank ---
        BATCH, CREDIT, PREFETCH, BAD, EPOCHS = 8, 8, 2, 5, 200
        CHUNK = BATCH * SAMPLE_BYTES
        env = dict(os.environ)
        if SANITIZE:  # freed chunks would sit in ASan's quarantine (256 MB) and count as RSS
            env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=0"
        p, ep = serve(d, "--ranks", "2", "--batch", str(BATCH), "--max-credit", str(CREDIT),
                      "--prefetch", str(PREFETCH), "--timeout", "30", env=env)

        def read_epochs(first):
            """Rank 0 reads EPOCHS epochs from `first`; (samples, seconds)."""
            global peak
            t = time.time()
            c = cs.StreamClient(ep, rank=0, world=2, epoch=first, timeout_s=5, heartbeat_s=0.2,
                                credit=4)
            got = 0
            try:
                while time.time() - t < 60 and c.epoch < first + EPOCHS:
                    ch = c.next()
                    if ch is not None:
                        got += len(ch.ids)
                    for b in bads:
                        try:
                            b.send(cs.CREDIT, value=CREDIT)
                        except zmq.Again:
                            pass
                    peak = max(peak, vmrss_kb(p.pid))
            except cs.ProducerSilent:
                pass
            c.close()
            return got, time.time() - t

        bads = []
        peak = 0
        n, alone = read_epochs(0)
        check(n == 32 * EPOCHS, "item 3: rank 0 alone reads its epochs", n)
        rss0 = vmrss_kb(p.pid)
        for k in range(BAD):
            b = Raw(ctx, ep)
            b.send(cs.HELLO, value=CREDIT, nsamples=2, rank=1)
            bads.append(b)
        peak = rss0

        def abuse(seconds):
            global peak
            t = time.time()
            while time.time() - t < seconds:
                for b in bads:
                    try:
                        b.send(cs.CREDIT, value=CREDIT)
                    except zmq.Again:
                        pass
                peak = max(peak, vmrss_kb(p.pid))
                time.sleep(0.02)

        abuse(2.0)
        # the good rank reads as many epochs while the abusers keep granting credit
        got, busy = read_epochs(EPOCHS)
        abuse(1.0)
        # bound (docs/stream-protocol.md): per peer at most --max-credit chunks queued,
        # plus W x (prefetch + 1) + 2 chunks read ahead; 24 MB slack for allocator noise
        bound_kb = ((BAD + 1) * CREDIT + 2 * (PREFETCH + 1) + 2) * CHUNK // 1024 + 24 * 1024
        print(f"item 3: RSS {rss0} kB -> peak {peak} kB (bound +{bound_kb} kB); good rank "
              f"{got} samples in {busy:.2f} s with {BAD} non-reading peers, {alone:.2f} s alone")
        check(peak - rss0 <= bound_kb, "item 3: server RSS growth bounded with 5 non-reading peers",
              f"grew {peak - rss0} kB, bound {bound_kb} kB")
        # stated fraction: at least 1/4 of the rate alone (+0.5 s for scheduling noise)
        check(got == 32 * EPOCHS and busy <= 4 * alone + 0.5,
              "item 3: the good rank reads its epoch at >= 1/4 of its rate alone",
              f"{got} samples in {busy:.2f} s, alone {alone:.2f} s")
        for b in bads:
            b.close()
        finish(p, "item 3")
    finally:
        for q in procs:
            if q.poll() is None:
                q.kill()
                q.wait()
        ctx.term()

sys.exit(report())
