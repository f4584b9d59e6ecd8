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

report()
