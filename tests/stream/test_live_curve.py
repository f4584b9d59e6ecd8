#!/usr/bin/env python3
"""Live mode with CURVE, on loopback (runs on any machine; the cross-node
version over two network namespaces is test_live_netns.py).

A job whose `stream:` has curve_secret and curve_authorized (paths relative to
the job's folder) starts `coemu serve --live` with CURVE:
  - a consumer with a key that is not authorised gets nothing: the Python
    client raises CurveRefused (a ProducerSilent) before its timeout, INFO
    is refused too, `coemu train` fails saying its key was refused, and a
    consumer without CURVE gets nothing; serve.log names each refused peer
    (address and public key) and counts them at the end;
  - the authorised consumer reads the whole epoch while the job runs, every
    sample byte-identical to the finished dataset; meanwhile the same
    generate command run again (a resume) keeps the server that still
    serves, and the job's stderr pipe reaches EOF when the job ends (the
    server holds no descriptor of the job's).
And the rules of `coemu serve`: a routable endpoint without keys is refused,
keys come together, key files are checked by --check, and a server that
cannot start (an address this host does not have) fails the job's start with
serve's own message instead of a job that makes shards nobody can read."""
import atexit
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np

ROOT = os.path.abspath(os.environ.get("COEMU_SOURCE_ROOT", "."))
sys.path.insert(0, os.path.join(ROOT, "python"))
from coemu.stream import CurveRefused, ProducerSilent, StreamClient, server_info  # noqa: E402

COEMU = os.environ.get("COEMU", "build/pipeline/coemu")
LAMDA = os.path.join(ROOT, "tests", "data", "lamda", "co.dat")

# coemu generate and train are MPI programs (singletons here): under the
# sanitizer no leak checks in them, as tests/mpirun.sh says why
MPI_ENV = dict(os.environ)
if os.environ.get("COEMU_SANITIZE"):
    MPI_ENV["ASAN_OPTIONS"] = MPI_ENV.get("ASAN_OPTIONS", "") + ":detect_leaks=0"
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, report  # noqa: E402


def free_port():
    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        return so.getsockname()[1]


def public_key(path):
    for line in open(path):
        if line.startswith("public-key"):
            return line.split('"')[1]
    raise ValueError(path)


def job_text(endpoint, curve):
    return f"""name: livecurve
inputs:
  synth: {{count: 4, seed: 11, levels: 3}}
sampling: {{directions: 4, sampler: haar, n: 16, edge: 3.0e13, k: 2, seed: 5}}
line: {{lamda: {LAMDA}, transition: 2, channels: {{mode: grid, vmin: -600, vmax: 600, count: 5}}}}
output: {{directory: unused, samples_per_shard: 2}}
splits: {{train: 0.5, validation: 0.25, test: 0.25, seed: 2}}
statistics: {{compute: false}}
stream: {{endpoint: "{endpoint}", ranks: 1, batch: 2, epochs: 1, split: all{curve}}}
"""


with tempfile.TemporaryDirectory() as tmp:
    keys = os.path.join(tmp, "keys")
    auth = os.path.join(keys, "authorized")
    os.makedirs(auth)
    for name in ("srv", "cli", "stranger"):
        subprocess.run([COEMU, "keygen", os.path.join(keys, name)], check=True, capture_output=True)
    # an existing pair is kept: peers hold its public key (--force replaces it)
    srv = os.path.join(keys, "srv")
    old = open(srv + ".key_secret").read(), open(srv + ".key").read()
    r = subprocess.run([COEMU, "keygen", srv], capture_output=True, text=True)
    check(r.returncode == 2 and srv + ".key exists" in r.stderr and "--force" in r.stderr
          and (open(srv + ".key_secret").read(), open(srv + ".key").read()) == old,
          f"keygen onto an existing pair: refused, the pair unchanged: {r.returncode} {r.stderr}")
    os.remove(srv + ".key")  # half a pair is not replaced either
    r = subprocess.run([COEMU, "keygen", srv], capture_output=True, text=True)
    check(r.returncode == 2 and "key_secret exists" in r.stderr, f"half a pair: {r.stderr}")
    r = subprocess.run([COEMU, "keygen", srv, "--force"], capture_output=True, text=True)
    check(r.returncode == 0 and open(srv + ".key_secret").read() != old[0]
          and os.path.exists(srv + ".key"), f"keygen --force: a new pair: {r.stderr}")
    os.rename(os.path.join(keys, "cli.key"), os.path.join(auth, "cli.key"))
    jobdir = os.path.join(tmp, "job")
    os.makedirs(jobdir)
    curve = ", curve_secret: ../keys/srv.key_secret, curve_authorized: ../keys/authorized"
    job = os.path.join(jobdir, "job.yaml")

    def gen_check(endpoint, cv):
        open(job, "w").write(job_text(endpoint, cv))
        return subprocess.run([COEMU, "generate", "--check", job], capture_output=True, text=True,
                              env=MPI_ENV)

    # ---- the rules of coemu serve ----
    r = gen_check("tcp://0.0.0.0:5999", "")
    check(r.returncode != 0 and "stream.endpoint tcp://0.0.0.0:5999 is reachable from other "
          "machines: give stream.curve_secret and stream.curve_authorized" in r.stderr,
          f"routable endpoint without keys: {r.stderr}")
    r = gen_check("tcp://127.0.0.1:70000", "")
    check(r.returncode != 0 and re.search(r"job\.yaml:\d+:\d+: stream\.endpoint: endpoint "
          r"'tcp://127\.0\.0\.1:70000': port '70000': expected tcp://HOST:PORT", r.stderr),
          f"a port ZeroMQ would wrap: {r.stderr}")
    r = gen_check("tcp://0.0.0.0:5999", ", curve_secret: ../keys/srv.key_secret")
    check(r.returncode != 0 and "expected both curve_secret and curve_authorized (CURVE) or "
          "neither, got only curve_secret" in r.stderr, f"only one key: {r.stderr}")
    r = gen_check("tcp://0.0.0.0:5999", curve)
    check(r.returncode == 0, f"routable endpoint with keys passes --check: {r.stderr}")
    r = gen_check("tcp://0.0.0.0:5999", curve.replace("srv.key_secret", "none.key_secret"))
    check(r.returncode != 0 and "stream.curve_secret" in r.stderr and "none.key_secret" in r.stderr,
          f"--check: a missing key pair file is named: {r.stderr}")
    r = gen_check("tcp://0.0.0.0:5999", curve.replace("srv.key_secret", "srv.key"))
    check(r.returncode != 0 and "no valid secret-key" in r.stderr,
          f"--check: a public key given as the key pair: {r.stderr}")
    os.makedirs(os.path.join(keys, "empty"))
    r = gen_check("tcp://0.0.0.0:5999", curve.replace("/authorized", "/empty"))
    check(r.returncode != 0 and "no *.key public keys" in r.stderr,
          f"--check: no authorised keys: {r.stderr}")
    # an address this host does not have (TEST-NET-1, RFC 5737): serve cannot
    # bind; the job's start fails with serve's message and removes the folder
    open(job, "w").write(job_text(f"tcp://192.0.2.1:{free_port()}", curve))
    bad = os.path.join(tmp, "badbind")
    r = subprocess.run([COEMU, "generate", job, "--out", bad, "--quiet"], capture_output=True,
                       text=True, timeout=120, env=MPI_ENV)
    check(r.returncode != 0 and "coemu serve exited at its start" in r.stderr and
          "cannot bind tcp://192.0.2.1" in r.stderr, f"unbindable address: {r.stderr[-800:]}")
    check(not os.path.exists(bad), "unbindable address: the folder this start made is removed")

    # ---- the live stream with CURVE on loopback ----
    ep = f"tcp://127.0.0.1:{free_port()}"
    open(job, "w").write(job_text(ep, curve))
    d = os.path.join(tmp, "ds")
    gen = subprocess.Popen([COEMU, "generate", job, "--out", d, "--quiet"],
                           stderr=subprocess.PIPE, text=True, env=MPI_ENV)

    server = []

    @atexit.register
    def no_orphans():  # a failed check must not leave the live server for its idle hour
        gen.kill()
        for pid in server:
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
    t0 = time.time()
    while not os.path.exists(os.path.join(d, "serve.pid")) and time.time() - t0 < 60:
        time.sleep(0.05)
    check(os.path.exists(os.path.join(d, "serve.pid")), "the live server started")
    server.append(int(open(os.path.join(d, "serve.pid")).read()))
    good = (os.path.join(keys, "srv.key"), os.path.join(keys, "cli.key_secret"))
    wrong = (os.path.join(keys, "srv.key"), os.path.join(keys, "stranger.key_secret"))

    # a stranger's key: nothing, and it is told so before its timeout
    c = StreamClient(ep, rank=0, world=1, timeout_s=20, heartbeat_s=0.2, curve=wrong)
    t1 = time.time()
    try:
        ch = c.next()
        check(False, f"a stranger's key got a chunk: {ch}")
    except CurveRefused as e:
        check(time.time() - t1 < 10 and "refused this consumer's CURVE key" in str(e),
              f"a stranger's key: CurveRefused in {time.time() - t1:.1f} s: {e}")
    c.close()
    try:
        server_info(ep, timeout_s=1.0, curve=wrong)
        check(False, "a stranger's key gets no INFO")
    except CurveRefused:
        check(True, "a stranger's key gets no INFO")
    # no CURVE at all: the handshake fails before authentication; nothing
    c = StreamClient(ep, rank=0, world=1, timeout_s=1.5, heartbeat_s=0.2)
    try:
        c.next()
        check(False, "a consumer without CURVE got a chunk")
    except CurveRefused:
        check(False, "a consumer without CURVE: no key was offered, nothing to refuse")
    except ProducerSilent:
        check(True, "a consumer without CURVE gets nothing")
    c.close()
    # coemu train with a stranger's key: the C client says the key was refused
    tj = os.path.join(jobdir, "train.yaml")
    open(tj, "w").write(
        "name: t\nseed: 9\nmodel: {stem: 2, encoder: [4, 4, 8], latent: 32, decoder: 16}\n"
        f"finetune:\n  data: {{stream: {{endpoint: '{ep}', server_key: ../keys/srv.key, "
        "client_key: ../keys/stranger.key_secret, timeout: 20}}\n"
        "  validation: {split: none}\n  epochs: 1\n  batch: 2\n")
    t1 = time.time()
    r = subprocess.run([COEMU, "train", tj, "--out", os.path.join(tmp, "train"), "--quiet"],
                       capture_output=True, text=True, timeout=120, env=MPI_ENV)
    check(r.returncode == 1 and "refused this consumer's CURVE key" in r.stderr and
          time.time() - t1 < 15, f"coemu train with a stranger's key: {r.returncode} "
          f"in {time.time() - t1:.1f} s: {r.stderr[-600:]}")

    # the authorised consumer: the whole epoch, while the job runs
    got = []
    c = StreamClient(ep, rank=0, world=1, timeout_s=60, heartbeat_s=0.2, curve=good)
    try:
        got.append(c.next())
        err = gen.communicate(timeout=300)[1]
        check(gen.returncode == 0, f"generate: {err[-1500:]}")
        check("live stream on " + ep + " (CURVE)" in err,
              f"generate names the CURVE stream: {err[-400:]}")
        # the same command again while the server still serves, as a resume
        # (its manifest gone: a run stopped after its last shard; a finished
        # dataset's rerun starts nothing): it keeps that server (a second
        # one could not bind the port)
        os.unlink(os.path.join(d, "manifest.json"))
        r = subprocess.run([COEMU, "generate", job, "--out", d, "--quiet"], capture_output=True,
                           text=True, timeout=300, env=MPI_ENV)
        check(r.returncode == 0 and "the server an earlier run started still serves" in r.stderr,
              f"rerun with the live server still serving: {r.returncode} {r.stderr[-800:]}")
        got += c.drain()
    finally:
        c.close()
    ids = [int(i) for ch in got for i in ch.ids]
    check(ids == list(range(16)), f"epoch 0 in generation order: {ids}")
    with h5py.File(os.path.join(d, "dataset.h5"), "r") as f:
        X, Y = f["inputs"][()], f["targets"][()]
    same = all(ch.inputs[k].tobytes() == X[i].tobytes() and ch.targets[k].tobytes() == Y[i].tobytes()
               for ch in got for k, i in enumerate(ch.ids))
    check(same and len(ids) == len(X), "every streamed sample is byte-identical to the dataset's")
    pid = int(open(os.path.join(d, "serve.pid")).read())
    t0 = time.time()
    while time.time() - t0 < 15:
        try:
            os.kill(pid, 0)
            time.sleep(0.1)
        except ProcessLookupError:
            break
    log = open(os.path.join(d, "serve.log")).read()
    stranger = public_key(os.path.join(keys, "stranger.key"))
    check(f"refused a CURVE handshake from 127.0.0.1: public key {stranger} is not in" in log,
          f"serve.log names the refused peer and its key: {log[-1500:]}")
    check(public_key(os.path.join(auth, "cli.key")) not in log, "the authorised key is not logged")
    n = [int(line.split(" CURVE handshakes refused")[0].rsplit(" ", 1)[1])
         for line in log.splitlines() if " CURVE handshakes refused" in line]
    check(len(n) == 1 and n[0] >= 3, f"serve counts the refused handshakes: {n}")
    check("sent 16 samples" in log and "(CURVE)" in log, f"serve log: {log[-600:]}")

report()
