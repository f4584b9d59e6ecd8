#!/usr/bin/env python3
"""fault_campaign.py - the whole fault campaign of docs/faults.md, with counts.

Where tests/pipeline/test_faults.py and tests/stream/test_hostile.py inject
each fault once (CI), this script draws many at random and counts what
happened to the data:

  generate   runs of `coemu generate` (the analytic producer of
             tests/pipeline/testgen.c, 1-3 ranks) killed at random moments
             (SIGKILL to the whole job, SIGKILL to one rank, SIGTERM) or stopped
             by a full disk (a file-size limit at a random size), then resumed
             with the same command until complete; the result is compared,
             sample by sample, with an uninterrupted run, and verified
  stats      `coemu stats` killed at random moments and at each step of the
             /stats rewrite: dataset.h5 must open with the old or the new /stats
  corruption random bit flips in random shards (in sample rows and anywhere
             in the file); stats, serve (+ the Python client) and verify must
             fail naming the shard, or read exactly the right values
  peers      `coemu serve` under a swarm of random hostile peers (garbage
             frames, raw TCP bytes, HELLOs with random fields, non-readers that
             keep granting credit, peers vanishing mid-chunk, resumers at random
             positions, lying BYEs) while a good rank reads its epochs; every
             epoch it reads must be exactly its share of the dataset, the server
             stays within its memory bound and leaves on SIGTERM

It prints one line per phase and the closing line
  "fault campaign: N faults injected; samples lost L, duplicated D, changed C; ..."
and exits 1 unless L = D = C = 0 and every check held.

Usage: scripts/fault_campaign.py [--build DIR] [--quick] [--seed S] [--rounds R]
  --build DIR  the meson build folder (default build): DIR/pipeline/coemu and
               DIR/tests/pipeline/testgen
  --quick      a few rounds of each phase (about a minute; CI runs this)
  --rounds R   rounds per phase (default 40; --quick: 3)
"""
import argparse
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings

import h5py
import numpy as np
import zmq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "pipeline", "stream"))
import coemu_stream as cs  # noqa: E402
sys.path.insert(0, os.path.join(ROOT, "tests"))
from pycheck import wait_bound  # noqa: E402

warnings.filterwarnings("ignore", message=".*xxhash.*")  # the pure-Python hash is fine here

MPIEXEC = [os.environ.get("COEMU_MPIEXEC", "mpiexec"), "--allow-run-as-root", "--oversubscribe"]
M, D, N, S = 6, 4, 8, 4  # 24 samples of 3 x 8^3 + 7 x 8^2 in 6 shards
JOB = f"""name: fault-campaign
inputs:
  synth: {{count: {M}, seed: 3}}
sampling: {{directions: {D}, n: {N}, seed: 99}}
line: {{lamda: co.dat}}
output: {{samples_per_shard: {S}}}
splits: {{train: 0.5, validation: 0.25, test: 0.25, seed: 2}}
"""
KEYS = ("inputs", "targets", "model_id", "direction_index", "split")

counts = {"faults": 0, "lost": 0, "duplicated": 0, "changed": 0, "failed_checks": 0}
phase = {}
failures = []


def fail(what):
    counts["failed_checks"] += 1
    failures.append(what)
    print(f"FAIL: {what}", flush=True)


def expect(cond, what):
    if not cond:
        fail(what)
    return cond


def run(cmd, env=None, timeout=120, **kw):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run(cmd, capture_output=True, text=True, env=e, timeout=timeout, **kw)


def read_dataset(d):
    with h5py.File(os.path.join(d, "dataset.h5"), "r") as h:
        return {k: h[k][()] for k in KEYS}


def compare(ref, got, what):
    """Count samples lost, duplicated and changed in `got` against `ref`,
    keyed by (model, direction)."""
    key = lambda a, i: (int(a["model_id"][i]), int(a["direction_index"][i]))  # noqa: E731
    rk = {key(ref, i): i for i in range(len(ref["model_id"]))}
    seen = {}
    dup = 0
    for i in range(len(got["model_id"])):
        k = key(got, i)
        if k in seen:
            dup += 1
        seen[k] = i
    lost = sum(1 for k in rk if k not in seen)
    changed = sum(1 for k, i in seen.items() if k not in rk or not all(
        np.array_equal(ref[f][rk[k]], got[f][i]) for f in ("inputs", "targets", "split")))
    counts["lost"] += lost
    counts["duplicated"] += dup
    counts["changed"] += changed
    expect(lost == dup == changed == 0, f"{what}: {lost} lost, {dup} duplicated, {changed} changed")


def session_gone(sid, limit):
    """Wait (at most `limit` s) until no process of session `sid` is left."""
    t = time.time()
    while time.time() - t < limit:
        left = subprocess.run(["ps", "-o", "pid=", "-s", str(sid)], capture_output=True,
                              text=True).stdout.split()
        if not left:
            return True
        time.sleep(0.05)
    for pid in left:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass
    return False


# ---- generate: kills and full disks, then resume ------------------------------------------

def generate_phase(a, tmp, rnd, rounds):
    job = os.path.join(tmp, "job.yaml")
    ref_dir = os.path.join(tmp, "reference")
    r = run(MPIEXEC + ["-n", "1", a.testgen, job, "--out", ref_dir, "--quiet"])
    if not expect(r.returncode == 0, f"the reference run: {r.stderr[-800:]}"):
        return None
    ref = read_dataset(ref_dir)
    n = {"kill_job": 0, "kill_rank": 0, "sigterm": 0, "disk_full": 0, "resumes": 0}
    delay = 30  # ms per sample: a run takes about 24 x 30 ms / ranks plus start-up
    for rd in range(rounds):
        ranks = rnd.choice((1, 2, 3))
        out = os.path.join(tmp, f"gen{rd}")
        for _ in range(rnd.randint(1, 3)):
            mode = rnd.choice(("kill_job", "kill_job", "kill_rank", "sigterm", "disk_full"))
            cmd = MPIEXEC + ["-n", str(ranks), a.testgen, job, "--out", out, "--quiet"]
            env = dict(os.environ, COEMU_TEST_DELAY_MS=str(delay))
            if mode == "disk_full":
                env["COEMU_TEST_FSIZE"] = str(rnd.randint(2000, 120000))
                r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
                said = [ln for ln in r.stderr.splitlines() if "error" in ln.lower()]
                expect(r.returncode == 0 or "File too large" in r.stderr,
                       f"round {rd}: a full disk ({env['COEMU_TEST_FSIZE']} bytes, {ranks} ranks) "
                       f"ends with an error saying so: rc {r.returncode}: {said[:4]}")
                expect("Segmentation" not in r.stderr and "core dumped" not in r.stderr,
                       f"round {rd}: a full disk does not crash: {r.stderr[-300:]}")
            else:
                p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
                time.sleep(rnd.uniform(0.2, 2.0))
                if mode == "kill_rank":
                    kids = subprocess.run(["ps", "-o", "pid=", "--ppid", str(p.pid)],
                                          capture_output=True, text=True).stdout.split()
                    if kids:
                        os.kill(int(rnd.choice(kids)), signal.SIGKILL)
                    else:
                        os.killpg(p.pid, signal.SIGKILL)
                elif mode == "sigterm":
                    os.killpg(p.pid, signal.SIGTERM)
                else:
                    os.killpg(p.pid, signal.SIGKILL)
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
                    fail(f"round {rd}: a run hung after {mode}")
                # the ranks leave after mpiexec (a user rerunning at once is told the
                # folder is in use, naming the pid): wait for the whole session to go
                expect(session_gone(p.pid, 30), f"round {rd}: ranks still alive 30 s after {mode}")
            n[mode] += 1
            counts["faults"] += 1
        # the same command until it completes (at most 3 tries)
        for _ in range(3):
            n["resumes"] += 1
            r = run(MPIEXEC + ["-n", str(ranks), a.testgen, job, "--out", out, "--quiet"])
            if r.returncode == 0:
                break
        if not expect(r.returncode == 0, f"round {rd}: the resumed job completes: {r.stderr[-600:]}"):
            continue
        compare(ref, read_dataset(out), f"generate round {rd} ({ranks} ranks)")
        r = run([a.coemu, "verify", out])
        expect(r.returncode == 0, f"round {rd}: verify: {r.stderr[-400:]}")
        left = [f for root, _, fs in os.walk(out) for f in fs if ".tmp." in f]
        expect(not left, f"round {rd}: temporaries left: {left}")
        if rd > 0:
            shutil.rmtree(out, ignore_errors=True)
    phase["generate"] = (f"{sum(v for k, v in n.items() if k != 'resumes')} interruptions "
                         f"({n['kill_job']} SIGKILL job, {n['kill_rank']} SIGKILL one rank, "
                         f"{n['sigterm']} SIGTERM, {n['disk_full']} full disks) in {rounds} runs, "
                         f"{n['resumes']} resumes")
    return ref_dir, ref


# ---- stats: kills during the /stats rewrite ----------------------------------------------

def stats_split(d):
    try:
        with h5py.File(os.path.join(d, "dataset.h5"), "r") as h:
            v = h["stats"].attrs["split"] if "stats" in h else b"none"
            return v.decode() if isinstance(v, bytes) else str(v)
    except Exception as e:  # noqa: BLE001
        return f"unreadable: {e}"


def stats_phase(a, tmp, rnd, rounds, base):
    kept = 0
    for rd in range(rounds):
        d = os.path.join(tmp, f"stats{rd}")
        shutil.copytree(base, d)
        before = stats_split(d)
        point = rnd.choice(("copied", "written", "closed", "renamed", "random"))
        cmd = MPIEXEC + ["-n", str(rnd.choice((1, 2))), a.coemu, "stats", d, "--quiet",
                         "--split", rnd.choice(("train", "all"))]
        if point == "random":
            p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True)
            time.sleep(rnd.uniform(0.05, 1.5))
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            expect(session_gone(p.pid, 30), f"stats round {rd}: ranks still alive 30 s after a kill")
        else:
            run(cmd, env={"COEMU_FAULT_STATS": point})
        counts["faults"] += 1
        after = stats_split(d)
        ok = not after.startswith("unreadable")
        kept += ok
        expect(ok, f"stats killed ({point}): dataset.h5 {after} (was {before})")
        r = run(MPIEXEC + ["-n", "1", a.coemu, "stats", d, "--quiet"])
        expect(r.returncode == 0, f"stats reruns after a kill ({point}): {r.stderr[-400:]}")
        shutil.rmtree(d, ignore_errors=True)
    phase["stats"] = f"{rounds} kills of coemu stats, {kept} left a readable old or new /stats"


# ---- corruption: random bit flips -------------------------------------------------------

def serve_all(coemu, d, tmp, live=False):
    """Stream split 'all' of dataset d once through `coemu serve` (--live if
    asked) to the Python client; (samples {id: (inputs, targets)}, failed,
    the client's error and the server's stderr). Also used by
    tests/pipeline/test_faults.py."""
    ep = f"ipc://{tmp}/serve-{time.monotonic_ns()}.sock"
    p = subprocess.Popen([coemu, "serve", d, "--endpoint", ep, "--split", "all", "--batch", "2",
                          "--epochs", "1", "--heartbeat", "0.2"] + (["--live"] if live else []),
                         stderr=subprocess.PIPE, text=True)
    got, err, failed = {}, "", False
    try:
        # a serve that fails first (a shard it cannot open) has exited by the
        # time wait_bound returns, and is not waited for through the client's
        # 10 s of silence
        wait_bound(p, ep)
        if p.poll() is not None:
            return got, True, p.communicate()[1]
        c = cs.StreamClient(ep, rank=0, world=1, timeout_s=10, heartbeat_s=0.2)
        try:
            while True:
                ch = c.next()
                if ch is None:
                    break
                for k, i in enumerate(ch.ids):
                    got[int(i)] = (ch.inputs[k].copy(), ch.targets[k].copy())
        except (cs.ProtocolError, cs.ProducerSilent) as e:
            err, failed = str(e), True
        finally:
            c.close()
    finally:
        p.terminate()
        try:
            err += p.communicate(timeout=20)[1]
        except subprocess.TimeoutExpired:
            p.kill()
            err += p.communicate()[1]
    return got, failed, err


def corruption_phase(a, tmp, rnd, rounds, base, ref):
    shards = sorted(os.listdir(os.path.join(base, "shards")))
    n = {"detected": 0, "harmless": 0, "readers": 0}
    for rd in range(rounds):
        d = os.path.join(tmp, f"flip{rd}")
        shutil.copytree(base, d)
        shard = rnd.choice(shards)
        path = os.path.join(d, "shards", shard)
        size = os.path.getsize(path)
        if rnd.random() < 0.7:  # inside a sample row of /inputs or /targets
            dset = rnd.choice(("inputs", "targets"))
            with h5py.File(path, "r") as h:
                info = h[dset].id.get_chunk_info(rnd.randrange(S))
            off = info.byte_offset + rnd.randrange(info.size)
        else:  # anywhere: metadata, B-trees, checksums, padding
            off = rnd.randrange(size)
        with open(path, "r+b") as f:
            f.seek(off)
            b = f.read(1)
            f.seek(off)
            f.write(bytes([b[0] ^ (1 << rnd.randrange(8))]))
        counts["faults"] += 1
        # each reader fails naming the shard, or reads exactly the reference
        r = run(MPIEXEC + ["-n", "1", a.coemu, "stats", d, "--split", "all", "--quiet"])
        got, failed, err = serve_all(a.coemu, d, tmp)
        v = run([a.coemu, "verify", d])
        n["readers"] += 3
        for what, rc, text in (("stats", r.returncode, r.stderr), ("serve", int(failed), err),
                               ("verify", v.returncode, v.stderr)):
            if rc != 0:
                expect(shard in text, f"flip {rd} ({shard} @ {off}): {what} fails without naming "
                                      f"the shard: {text[-400:]}")
                n["detected"] += shard in text
            else:
                n["harmless"] += 1
        if not failed:
            changed = sum(1 for i, (x, y) in got.items()
                          if not (np.array_equal(x, ref["inputs"][i]) and
                                  np.array_equal(y, ref["targets"][i])))
            counts["changed"] += changed
            counts["lost"] += len(ref["inputs"]) - len(got)
            expect(changed == 0 and len(got) == len(ref["inputs"]),
                   f"flip {rd} ({shard} @ {off}): serve succeeded with {changed} changed and "
                   f"{len(ref['inputs']) - len(got)} missing samples")
        if r.returncode == 0:  # stats succeeded: it must equal the clean dataset's
            expect(stats_equal(d, base), f"flip {rd} ({shard} @ {off}): stats succeeded with "
                                         "other values than the clean dataset's")
        if v.returncode == 0 and (failed or r.returncode != 0):
            fail(f"flip {rd} ({shard} @ {off}): a reader found damage verify did not")
        shutil.rmtree(d, ignore_errors=True)
    phase["corruption"] = (f"{rounds} bit flips, {n['readers']} reader runs: {n['detected']} "
                           f"failed naming the shard, {n['harmless']} read exact values")


def stats_equal(d, base):
    with h5py.File(os.path.join(d, "dataset.h5"), "r") as h, \
            h5py.File(os.path.join(base, "dataset.h5"), "r") as g:
        out = []
        h["stats"].visititems(lambda name, o: out.append(name) if isinstance(o, h5py.Dataset) else None)
        return all(np.array_equal(h["stats"][k][()], g["stats"][k][()]) for k in out)


# ---- peers: a swarm of hostile peers against coemu serve ----------------------------------

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def vmrss_kb(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def swarm(ctx, ep, port, rnd, stop, n):
    """Random hostile peers until stop is set; n counts the behaviours."""
    socks = []
    while not stop.is_set():
        kind = rnd.choice(("garbage", "raw_tcp", "hello", "nonreader", "vanish", "resume", "liar",
                           "flood"))
        n[kind] = n.get(kind, 0) + 1
        counts["faults"] += 1
        try:
            if kind == "raw_tcp":
                s = socket.create_connection(("127.0.0.1", port), timeout=1)
                s.sendall(bytes(rnd.getrandbits(8) for _ in range(rnd.randint(1, 4096))))
                s.close()
                continue
            z = ctx.socket(zmq.DEALER)
            z.setsockopt(zmq.LINGER, 0)
            z.setsockopt(zmq.RCVHWM, 1)
            z.connect(ep)
            if kind == "garbage":
                z.send_multipart([os.urandom(rnd.randint(0, 300)) for _ in range(rnd.randint(1, 6))])
            elif kind == "hello":
                z.send(cs.Header.encode(cs.HELLO, value=rnd.getrandbits(32), flags=rnd.getrandbits(32),
                                        dataset_id=rnd.choice((0, rnd.getrandbits(64))),
                                        epoch=rnd.getrandbits(32), nsamples=rnd.getrandbits(32),
                                        position=rnd.getrandbits(64), rank=rnd.getrandbits(16)))
            elif kind in ("nonreader", "flood"):
                z.send(cs.Header.encode(cs.HELLO, value=8, nsamples=2, rank=1))
                for _ in range(200 if kind == "flood" else 3):
                    z.send(cs.Header.encode(cs.CREDIT, value=rnd.getrandbits(32), nsamples=2, rank=1),
                           zmq.DONTWAIT)
            elif kind == "vanish":
                z.send(cs.Header.encode(cs.HELLO, value=8, nsamples=2, rank=1,
                                        position=rnd.randrange(64)))
                time.sleep(rnd.uniform(0, 0.05))
                z.close(0)
                continue
            elif kind == "resume":  # rank 1 sessions at random places
                z.send(cs.Header.encode(cs.HELLO, value=2, epoch=rnd.randrange(3), nsamples=2, rank=1,
                                        position=rnd.randrange(40)))
            elif kind == "liar":
                z.send(cs.Header.encode(cs.HELLO, value=1, nsamples=2, rank=rnd.randrange(2)))
                z.send(cs.Header.encode(cs.BYE, epoch=1 << 20, nsamples=2))
            socks.append(z)
            if len(socks) > 24:  # keep a bounded crowd: the oldest leave (or not, silently)
                socks.pop(0).close(0)
        except (zmq.ZMQError, OSError):
            pass
        time.sleep(rnd.uniform(0, 0.02))
    for z in socks:
        z.close(0)


def peers_phase(a, tmp, rnd, rounds, base, ref, seconds):
    ctx = zmq.Context()
    n = {}
    epochs_ok = 0
    try:
        for rd in range(rounds):
            port = free_port()
            ep = f"tcp://127.0.0.1:{port}"
            batch, credit, prefetch, maxc = 2, 4, 2, 12
            env = dict(os.environ)
            if os.environ.get("COEMU_SANITIZE") == "1":  # freed chunks in ASan's quarantine count as RSS
                env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=0"
            p = subprocess.Popen([a.coemu, "serve", base, "--endpoint", ep, "--ranks", "2",
                                  "--split", "all", "--batch", str(batch), "--max-credit",
                                  str(credit), "--prefetch", str(prefetch), "--max-consumers",
                                  str(maxc), "--heartbeat", "0.2", "--timeout", "2",
                                  "--seed", str(rd)],
                                 stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
            time.sleep(0.4)
            rss0 = vmrss_kb(p.pid)
            stop = threading.Event()
            th = threading.Thread(target=swarm, args=(ctx, ep, port, random.Random(rnd.random()),
                                                      stop, n))
            th.start()
            peak = rss0
            # after the crowd has gathered, the good rank 0 reads epochs (at least
            # 3, for at least `seconds`); each must be exactly its share
            time.sleep(1.0)
            per_rank = len(ref["inputs"]) // 2 // batch * batch
            c = None
            bad_round = False
            t_start, epoch = time.time(), -1
            try:
                while epoch < 2 or time.time() - t_start < seconds:
                    epoch += 1
                    for attempt in range(3):  # "busy" or "superseded" under a crowd: retry
                        try:
                            c = cs.StreamClient(ep, rank=0, world=2, epoch=epoch, timeout_s=10,
                                                heartbeat_s=0.2, credit=credit)
                            ids = []
                            while True:
                                ch = c.next()
                                peak = max(peak, vmrss_kb(p.pid))
                                if ch is None:
                                    break
                                for k, i in enumerate(ch.ids):
                                    ids.append(int(i))
                                    if not (np.array_equal(ch.inputs[k], ref["inputs"][i]) and
                                            np.array_equal(ch.targets[k], ref["targets"][i])):
                                        counts["changed"] += 1
                            c.close()
                            c = None
                            break
                        except cs.ProtocolError as e:
                            if c:
                                c.close()
                                c = None
                            if ("busy" not in str(e) and "superseded" not in str(e)) or attempt == 2:
                                raise
                            n["busy"] = n.get("busy", 0) + 1
                            time.sleep(2.5)  # stalled peers are dropped after --timeout 2
                    dup = len(ids) - len(set(ids))
                    lost = per_rank - len(set(ids))
                    counts["duplicated"] += dup
                    counts["lost"] += max(lost, 0)
                    if expect(dup == 0 and lost == 0, f"peers round {rd} epoch {epoch}: {len(ids)} "
                                                      f"samples, {dup} duplicated, {lost} lost"):
                        epochs_ok += 1
            except (cs.ProtocolError, cs.ProducerSilent) as e:
                fail(f"peers round {rd}: the good rank was not served in epoch {epoch}: {e}")
                counts["lost"] += per_rank
                bad_round = True
            finally:
                if c:
                    c.close()
                stop.set()
                th.join()
            expect(p.poll() is None, f"peers round {rd}: the server died: {p.poll()}")
            p.send_signal(signal.SIGTERM)
            try:
                _, err = p.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                _, err = p.communicate()
                fail(f"peers round {rd}: the server ignored SIGTERM for 10 s")
            if bad_round:
                print(f"  the server's account: {err.strip().splitlines()[-1:]}", flush=True)
            chunk = batch * (3 * N ** 3 + 7 * N * N) * 4
            bound_kb = ((maxc * credit + 2 * (prefetch + 1) + 2) * chunk) // 1024 + 24 * 1024
            expect(peak - rss0 <= bound_kb, f"peers round {rd}: RSS grew {peak - rss0} kB, bound "
                                            f"{bound_kb} kB")
            expect("AddressSanitizer" not in err and "runtime error" not in err,
                   f"peers round {rd}: sanitizer report: {err[-2000:]}")
    finally:
        ctx.term()
    busy = n.pop("busy", 0)
    phase["peers"] = (f"{sum(n.values())} hostile peers ({', '.join(f'{v} {k}' for k, v in sorted(n.items()))}) "
                      f"in {rounds} servers; {busy} busy or superseded answers to the good rank, which said HELLO again; "
                      f"the good rank read {epochs_ok} exact epochs")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--phases", default="generate,stats,corruption,peers",
                    help="comma-separated phases to run (the reference dataset is always made)")
    a = ap.parse_args()
    a.coemu = os.environ.get("COEMU", os.path.join(a.build, "pipeline", "coemu"))
    a.testgen = os.environ.get("COEMU_TESTGEN", os.path.join(a.build, "tests", "pipeline", "testgen"))
    for exe in (a.coemu, a.testgen):
        if not os.access(exe, os.X_OK):
            print(f"fault_campaign: {exe}: not built (meson setup {a.build} && ninja -C {a.build})",
                  file=sys.stderr)
            return 2
    rounds = a.rounds or (3 if a.quick else 40)
    rnd = random.Random(a.seed)
    t0 = time.time()
    tmp = tempfile.mkdtemp(prefix="coemu-campaign-")
    try:
        open(os.path.join(tmp, "job.yaml"), "w").write(JOB)
        shutil.copy(os.path.join(ROOT, "tests", "data", "lamda", "co.dat"), tmp)
        phases = a.phases.split(",")
        made = generate_phase(a, tmp, rnd, rounds if "generate" in phases else 0)
        print(f"generate: {phase.get('generate', 'not run')}", flush=True)
        if made:
            base, ref = made
            r = run(MPIEXEC + ["-n", "1", a.coemu, "stats", base, "--split", "all", "--quiet"])
            expect(r.returncode == 0, f"stats on the reference: {r.stderr[-400:]}")
            if "stats" in phases:
                stats_phase(a, tmp, rnd, rounds, base)
                print(f"stats: {phase['stats']}", flush=True)
            if "corruption" in phases:
                corruption_phase(a, tmp, rnd, rounds, base, ref)
                print(f"corruption: {phase['corruption']}", flush=True)
            if "peers" in phases:
                peers_phase(a, tmp, rnd, max(1, rounds // 4), base, ref, 3 if a.quick else 20)
                print(f"peers: {phase['peers']}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"fault campaign: {counts['faults']} faults injected; samples lost {counts['lost']}, "
          f"duplicated {counts['duplicated']}, changed {counts['changed']}; "
          f"{counts['failed_checks']} failed checks; seed {a.seed}, {rounds} rounds, "
          f"{time.time() - t0:.0f} s")
    ok = counts["failed_checks"] == 0 and counts["lost"] == counts["duplicated"] == counts["changed"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
