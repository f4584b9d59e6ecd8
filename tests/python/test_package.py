#!/usr/bin/env python3
"""The coemu Python package installs with pip and works from where it was
installed: `pip install --no-deps --no-build-isolation --target DIR` of a
copy of python/ (no network, no system site touched), then, in a fresh
interpreter that does not see this checkout, `import coemu` comes from DIR,
reads the stream of `coemu serve` (INFO, then a whole epoch, checked) and
the old name coemu_stream (pipeline/stream) still gives the same client."""
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fixture  # noqa: E402
from pycheck import check, report  # noqa: E402

if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode:
    print(f"skipped: pip missing for {sys.executable} (apt-get install python3-pip)")
    sys.exit(77)

# pip builds the package with this interpreter's setuptools (no network):
# setuptools before 70.1 needs the wheel package for that
r = subprocess.run([sys.executable, "-c", "import setuptools, sys; v = tuple(int(x) for x in "
                    "setuptools.__version__.split('.')[:2]); v >= (70, 1) or __import__('wheel')"],
                   capture_output=True)
if r.returncode:
    print(f"skipped: {sys.executable} has no setuptools >= 70.1 nor the wheel package to build "
          f"with (apt-get install python3-wheel, or pip install wheel)")
    sys.exit(77)

PROBE = r"""
import os, sys
import coemu, coemu.stream, coemu.normalise, coemu.dataset
assert coemu.__file__.startswith(os.environ["TARGET"]), coemu.__file__
from coemu.stream import StreamClient, server_info
ep = sys.argv[1]
info = server_info(ep)
n = 0
with StreamClient(ep, rank=0, world=info["world"]) as c:
    for ch in c.iter_epoch():
        n += len(ch.ids)
print("ok", coemu.__version__, info["world"], n, c.malformed)
"""

# XXH64: the fast backend (xxhash module or libxxhash), over frames split
# anywhere, equals the pure-Python reference (which the header checks use)
import numpy as np  # noqa: E402

from coemu import stream  # noqa: E402

rng = np.random.default_rng(3)
for n in (0, 1, 3, 4, 7, 8, 31, 32, 33, 100, 4099):
    data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    want = stream.xxh64_small(data, 7)
    cut = n // 3
    check(stream.xxh64_frames([data[:cut], memoryview(data)[cut:]], 7) == want and
          stream.xxh64(np.frombuffer(data, np.uint8), 7) == want,
          f"XXH64 ({stream.XXH64_BACKEND}) of {n} bytes in two frames")
check(stream.xxh64_small(b"") == 0xEF46DB3751D8E999, "XXH64 of nothing (the published value)")

# a HELLO the producer would drop without a word (docs/stream-protocol.md,
# "Range checks": rank < world <= 65535, credit >= 1) is refused at once,
# naming the value, instead of a ProducerSilent after the timeout
for kw, word in (({"rank": 7, "world": 2}, "rank 7"), ({"rank": 0, "world": 0}, "world 0"),
                 ({"rank": 0, "world": 70000}, "world 70000"), ({"rank": -1, "world": 1}, "rank -1"),
                 ({"credit": 0}, "credit 0")):
    try:
        c = stream.StreamClient("ipc:///nonexistent/coemu-test.sock", timeout_s=1, **kw)
        c.close()
        check(False, f"StreamClient({kw}) refused")
    except Exception as e:  # noqa: BLE001 - before: struct.error, or silence
        check(isinstance(e, ValueError) and word in str(e), f"StreamClient({kw}): {e!r}")

# a malformed endpoint is a ValueError naming it and the forms expected (not
# a bare ZMQError); a dataset path that is no finished dataset says which
for ep in ("tcp://127.0.0.1", "nonsense"):
    try:
        stream.StreamClient(ep, timeout_s=1).close()
        check(False, f"endpoint {ep} refused")
    except Exception as e:  # noqa: BLE001
        check(isinstance(e, ValueError) and f"endpoint '{ep}'" in str(e) and "tcp://HOST:PORT" in str(e),
              f"endpoint {ep}: {e!r}")
from coemu.dataset import H5Dataset  # noqa: E402
with tempfile.TemporaryDirectory() as unfinished:
    open(os.path.join(unfinished, "job.yaml"), "w").write("name: x\n")
    for path, word in ((unfinished, "has not finished"), (os.path.join(unfinished, "none"), "expected a dataset directory")):
        try:
            H5Dataset(path)
            check(False, f"H5Dataset({path}) refused")
        except Exception as e:  # noqa: BLE001
            check(isinstance(e, ValueError) and word in str(e), f"H5Dataset({path}): {e!r}")

# a client dropped without close(): its keepalive thread ends once the client
# is collected (it held the client itself, and heart-beat for the life of the
# process)
import gc  # noqa: E402
c = stream.StreamClient("ipc:///nonexistent/coemu-test-drop.sock", timeout_s=1, heartbeat_s=0.1)
ka = c._keepalive
check(ka is not None and ka.is_alive(), "the keepalive thread runs")
del c
gc.collect()
ka.join(timeout=5)
check(not ka.is_alive(), "a dropped client's keepalive thread ends")

# protocol 2's row check: every row against its row checksum, in place
rows_in = rng.standard_normal((3, 5, 4)).astype("<f4")
rows_out = rng.standard_normal((3, 6)).astype("<f4")
sums = np.array([[stream.xxh64_small(rows_in[k].tobytes()), stream.xxh64_small(rows_out[k].tobytes())]
                 for k in range(3)], dtype="<u8")
check(stream.rows_ok(rows_in, 80, rows_out, 24, 3, sums), "row checksums of 3 samples match")
bad = rows_out.copy()
bad[2, 5] = np.nextafter(bad[2, 5], np.float32(10))  # one ulp of the last sample's last target
check(not stream.rows_ok(rows_in, 80, bad, 24, 3, sums), "one ulp in one row is caught")
check(not stream.rows_ok(rows_in, 80, rows_out, 24, 3, sums[::-1].copy()), "rows swapped are caught")

# protocol 3 (docs/stream-protocol.md): a CHUNK of n samples is 3 + 2n frames, each
# row its own frame. From a fake producer: a CHUNK in version 2's layout (5 frames),
# ones whose input or target row does not match its row checksum (in a batch and
# in a one-sample chunk, whose rows are handed out as the frames themselves) and
# one with a row frame a value short are dropped (counted malformed); the good
# ones are handed out as one batch each, every value in place, and an array
# still held is never reused for the next chunk.
import threading  # noqa: E402

import zmq  # noqa: E402


def _chunk(pos, n, layout=3, bad_row=None, short=None):
    """bad_row: k (sample k's input row) or (k, 1) (its target row) does not
    match its checksum; short: (k, 1) that row's frame is one value short."""
    ids = np.arange(pos, pos + n, dtype="<u8")
    xin = np.stack([np.full((2, 3), i + 0.25, "<f4") for i in ids])
    xout = np.stack([np.full((4,), i + 0.5, "<f4") for i in ids])
    sums = np.array([[stream.xxh64_small(xin[k].tobytes()), stream.xxh64_small(xout[k].tobytes())]
                     for k in range(n)], dtype="<u8")
    if bad_row is not None:
        sums[bad_row if isinstance(bad_row, tuple) else (bad_row, 0)] ^= np.uint64(1)
    h = struct.pack(stream._FMT, stream.MAGIC, stream.VERSION, stream.CHUNK, 0, 0, 0, 0, n, 0,
                    pos, 1, 0, 1, 2, 3, 1, 1, 1, 4,  # dtype, rank, in_shape, out_shape
                    stream.xxh64_small(ids.tobytes() + sums.tobytes()))
    h += struct.pack("<Q", stream.xxh64_small(h))
    rows = [xin.tobytes(), xout.tobytes()] if layout == 2 else \
        [xin[k].tobytes() for k in range(n)] + [xout[k].tobytes() for k in range(n)]
    if short is not None:
        r = short[0] + n * short[1]
        rows[r] = rows[r][:-4]
    return [h, ids.tobytes(), sums.tobytes()] + rows


def _fake_producer(ep, ready):
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.ROUTER)
    s.setsockopt(zmq.LINGER, 0)
    s.bind(ep)
    ready.set()
    if s.poll(20000):
        peer, hello = s.recv_multipart()[:2]
        if stream.Header.decode(hello).type == stream.HELLO:
            s.send_multipart([peer, stream.Header.encode(stream.WELCOME, value=4, nsamples=7)])
            for fr in (_chunk(0, 3, layout=2), _chunk(0, 3, bad_row=1), _chunk(0, 3),
                       _chunk(3, 3, bad_row=(2, 1)), _chunk(3, 3, short=(1, 1)), _chunk(3, 3),
                       _chunk(6, 1, bad_row=0), _chunk(6, 1, bad_row=(0, 1)),
                       _chunk(6, 1, short=(0, 0)), _chunk(6, 1)):
                s.send_multipart([peer] + fr)
            s.send_multipart([peer, stream.Header.encode(stream.EPOCH_END, epoch=0, position=7)])
            s.poll(3000)
    s.close()


import struct  # noqa: E402

with tempfile.TemporaryDirectory() as tmp:
    ep = f"ipc://{tmp}/fake.sock"
    ready = threading.Event()
    th = threading.Thread(target=_fake_producer, args=(ep, ready), daemon=True)
    th.start()
    ready.wait(10)
    got = []
    with stream.StreamClient(ep, rank=0, world=1, timeout_s=10, heartbeat_s=0.2) as c:
        for ch in c.iter_epoch():
            got.append(ch)  # all held: no array may be reused under them
        malformed = c.malformed
    th.join(10)
    check(malformed == 7 and [list(map(int, ch.ids)) for ch in got] == [[0, 1, 2], [3, 4, 5], [6]],
          f"fake producer: 7 chunks dropped (v2 layout, bad input and target rows, short "
          f"rows), 7 samples in 3 chunks: {malformed} malformed, {[list(ch.ids) for ch in got]}")
    check(all(ch.inputs.shape == (len(ch.ids), 1, 2, 3, 1) and
              ch.targets.shape == (len(ch.ids), 1, 1, 4) and
              all((ch.inputs[k] == i + 0.25).all() and (ch.targets[k] == i + 0.5).all()
                  for k, i in enumerate(ch.ids)) for ch in got) and
          len(got) == 3 and not np.shares_memory(got[0].inputs, got[1].inputs),
          "fake producer: every row in place; the held batch not reused")

with tempfile.TemporaryDirectory() as tmp:
    src = os.path.join(tmp, "src")
    shutil.copytree(os.path.join(fixture.ROOT, "python"), src,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = os.path.join(tmp, "site")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                        "--no-build-isolation", "--no-index", "--target", target, src],
                       capture_output=True, text=True, timeout=300)
    check(r.returncode == 0, f"pip install: {r.stdout[-1500:]} {r.stderr[-1500:]}")
    check(os.path.isfile(os.path.join(target, "coemu", "torch_data.py")),
          "the package's modules are installed")
    check(any(n.startswith("coemu-0.1.0") and n.endswith("-info") for n in os.listdir(target)),
          f"installed as coemu 0.1.0: {os.listdir(target)}")

    d = fixture.make_dataset(tmp)
    ep = f"ipc://{tmp}/s.sock"
    p = fixture.serve(d, ep, "--ranks", "1", "--batch", "4", "--epochs", "1")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=target, TARGET=target)
    r = subprocess.run([sys.executable, "-c", PROBE, ep], capture_output=True, text=True,
                       timeout=120, env=env, cwd=tmp)
    check(r.returncode == 0 and r.stdout.split() == ["ok", "0.1.0", "1", "24", "0"],
          f"the installed package reads an epoch: {r.stdout} {r.stderr[-1500:]}")
    rc, err = fixture.finish(p)
    check(rc == 0, f"serve --epochs 1 exits: {rc} {err[-500:]}")

    # the old import path: the same class
    r = subprocess.run([sys.executable, "-c",
                        "import sys; sys.path.insert(0, sys.argv[1]); import coemu_stream, "
                        "coemu.stream; assert coemu_stream.StreamClient is "
                        "coemu.stream.StreamClient; print(coemu_stream.XXH64_BACKEND)",
                        os.path.join(fixture.ROOT, "pipeline", "stream")],
                       capture_output=True, text=True, timeout=60, env=env, cwd=tmp)
    check(r.returncode == 0, f"coemu_stream is the package's client: {r.stderr[-800:]}")
    print("XXH64 backend:", r.stdout.strip())

# shared memory (docs/stream-protocol.md, "Shared memory"), from a fake producer
# that makes a segment as serve does: the client maps it, answers with the nonce
# read from it, and checks every row where it lies. A row damaged in the
# segment, a descriptor outside it and one of another row size are dropped
# (counted malformed, their credit returned); the good chunks (a one-sample one
# too) are handed out with every value in place.
from fake_shm import fake_shm_producer  # noqa: E402

with tempfile.TemporaryDirectory() as tmp:
    ep = f"ipc://{tmp}/fake-shm.sock"
    name = f"/coemu-stream-{os.getpid()}-{os.urandom(16).hex()}"
    ready, answer = threading.Event(), []
    th = threading.Thread(target=fake_shm_producer, args=(ep, ready, name, answer), daemon=True)
    th.start()
    ready.wait(10)
    got = []
    with stream.StreamClient(ep, rank=0, world=1, timeout_s=10, heartbeat_s=0.2,
                             transport="shm") as c:
        for ch in c.iter_epoch():
            got.append(ch)
        malformed, mapped = c.malformed, c.shm_mapped
    th.join(10)
    check(answer == [(stream.CREDIT, stream.FLAG_SHM_ANSWER, True)] and mapped == 1,
          f"shm: the client maps the segment and answers with its nonce: {answer} {mapped}")
    check(malformed == 3 and [list(map(int, ch.ids)) for ch in got] == [[0, 1, 2], [3, 4, 5], [6]],
          f"shm: a damaged row, a descriptor outside the segment and one of another size are "
          f"dropped: {malformed} malformed, {[list(ch.ids) for ch in got]}")
    check(all((ch.inputs[k] == i + 0.25).all() and (ch.targets[k] == i + 0.5).all()
              for ch in got for k, i in enumerate(ch.ids)), "shm: every row in place")
    check(not os.path.exists("/dev/shm" + name), "shm: the fake producer's segment is gone")


report()
