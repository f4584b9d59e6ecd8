#!/usr/bin/env python3
"""Cross-node live feeding, over two network namespaces joined by a veth pair.

The "CPU node" is namespace A (10.199.0.1): `coemu generate` runs there with
its live server bound to tcp://10.199.0.1:PORT (an address only A has) and
CURVE keys. The "GPU node" is namespace B (10.199.0.2): there
  - a consumer with a key the server does not know gets nothing (CurveRefused)
    and a consumer without CURVE gets nothing (ProducerSilent);
  - the authorised consumer reads the whole epoch while the job runs, every
    sample byte-identical to the stored dataset;
and serve.log names the refused peer by its address in B.

Creating namespaces needs root and a kernel and container that allow it
(`ip netns add`, veth): where they do not, the test says why and exits 77,
meson's SKIP, never a silent pass.

  test_live_netns.py            the test
  test_live_netns.py --bench [SAMPLES] [ROUNDS]
                                live throughput of a finished job's server
                                (COEmuNet-sized samples, 3.26 MB), to a
                                consumer in B (across the veth pair) and in A
                                (loopback), alternately; prints the medians
  (internal) test_live_netns.py consume|stranger|plain|read EP ...
                                the consumers, run inside namespace B or A
"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.environ.get("COEMU_SOURCE_ROOT", "."))
sys.path.insert(0, os.path.join(ROOT, "python"))
COEMU = os.path.abspath(os.environ.get("COEMU", "build/pipeline/coemu"))
LAMDA = os.path.join(ROOT, "tests", "data", "lamda", "co.dat")

# coemu generate and train are MPI programs (singletons here): under the
# sanitizer no leak checks in them, as tests/mpirun.sh says why
MPI_ENV = dict(os.environ)
if os.environ.get("COEMU_SANITIZE"):
    MPI_ENV["ASAN_OPTIONS"] = MPI_ENV.get("ASAN_OPTIONS", "") + ":detect_leaks=0"
SKIP = 77
A_IP, B_IP = "10.199.0.1", "10.199.0.2"


# ---- the consumers (run inside a namespace) ----
def consumer_main(argv):
    import numpy as np
    from coemu.stream import CurveRefused, ProducerSilent, StreamClient
    mode, ep = argv[0], argv[1]
    if mode == "consume":  # EP SRVKEY CLIKEY OUT.npz: the whole epoch, saved
        srv, cli, out = argv[2:5]
        ids, xs, ys = [], [], []
        with StreamClient(ep, rank=0, world=1, timeout_s=60, heartbeat_s=0.2,
                          curve=(srv, cli)) as c:
            for ch in c.drain():
                ids += [int(i) for i in ch.ids]
                xs.append(np.array(ch.inputs))
                ys.append(np.array(ch.targets))
        np.savez(out, ids=np.array(ids), x=np.concatenate(xs), y=np.concatenate(ys))
        return 0
    if mode in ("stranger", "plain"):  # EP [SRVKEY KEY]: expect nothing
        curve = (argv[2], argv[3]) if mode == "stranger" else None
        c = StreamClient(ep, rank=0, world=1, timeout_s=3 if curve is None else 20,
                         heartbeat_s=0.2, curve=curve)
        try:
            ch = c.next()
            print(f"GOT DATA: {ch}")
            return 1
        except CurveRefused as e:
            print(f"REFUSED: {e}")
            return 0 if curve else 1
        except ProducerSilent as e:
            print(f"SILENT: {e}")
            return 0 if curve is None else 1
        finally:
            c.close()
    if mode == "read":  # EP SRVKEY CLIKEY EPOCH0 EPOCHS: timed epochs, from EPOCH0
        srv, cli, e0, ne = argv[2], argv[3], int(argv[4]), int(argv[5])
        nbytes = 0
        with StreamClient(ep, rank=0, world=1, epoch=e0, timeout_s=60, heartbeat_s=0.5,
                          curve=None if srv == "-" else (srv, cli)) as c:
            first = c.next()  # connected and streaming: the clock starts here
            t0 = time.perf_counter()
            ends = 0
            while ends < ne:
                ch = c.next()
                if ch is None:
                    ends += 1
                    continue
                nbytes += ch.inputs.nbytes + ch.targets.nbytes
            dt = time.perf_counter() - t0
        print(f"READ {nbytes} {dt:.6f} {first.inputs.nbytes + first.targets.nbytes}")
        return 0
    raise SystemExit(f"unknown mode {mode}")


if len(sys.argv) > 1 and sys.argv[1] in ("consume", "stranger", "plain", "read"):
    sys.exit(consumer_main(sys.argv[1:]))


# ---- the namespaces ----
def skip(why):
    print(f"SKIP: {why}")
    sys.exit(SKIP)


def sh(*args, **kw):
    return subprocess.run(list(args), capture_output=True, text=True, **kw)


class Namespaces:
    """Two namespaces A and B, a veth pair between them, A_IP and B_IP."""

    def __init__(self):
        tag = f"{os.getpid() % 100000}"
        self.a, self.b = f"coemu{tag}a", f"coemu{tag}b"
        self.va, self.vb = f"cev{tag}a", f"cev{tag}b"  # at most 15 characters
        self.made = []

    def __enter__(self):
        steps = [
            ["ip", "netns", "add", self.a], ["ip", "netns", "add", self.b],
            ["ip", "link", "add", self.va, "type", "veth", "peer", "name", self.vb],
            ["ip", "link", "set", self.va, "netns", self.a],
            ["ip", "link", "set", self.vb, "netns", self.b],
            ["ip", "-n", self.a, "addr", "add", f"{A_IP}/24", "dev", self.va],
            ["ip", "-n", self.b, "addr", "add", f"{B_IP}/24", "dev", self.vb],
            ["ip", "-n", self.a, "link", "set", self.va, "up"],
            ["ip", "-n", self.b, "link", "set", self.vb, "up"],
            ["ip", "-n", self.a, "link", "set", "lo", "up"],
            ["ip", "-n", self.b, "link", "set", "lo", "up"]]
        for st in steps:
            r = sh(*st)
            if r.returncode != 0:
                self.__exit__()
                skip(f"cannot set up network namespaces here: `{' '.join(st)}`: "
                     f"{r.stderr.strip()}")
            if st[1] == "netns":
                self.made.append(st[3])
        return self

    def __exit__(self, *a):
        for ns in self.made:  # deleting a namespace deletes its end of the veth, and the pair
            sh("ip", "netns", "del", ns)
        self.made = []

    def run(self, ns, args, **kw):
        return ["ip", "netns", "exec", ns] + args


def keys_in(tmp):
    keys = os.path.join(tmp, "keys")
    auth = os.path.join(keys, "authorized")
    os.makedirs(auth)
    for name in ("srv", "cli", "stranger"):
        subprocess.run([COEMU, "keygen", os.path.join(keys, name)], check=True,
                       capture_output=True)
    os.rename(os.path.join(keys, "cli.key"), os.path.join(auth, "cli.key"))
    return keys


def job_file(tmp, keys, port, n, count, channels, epochs):
    job = os.path.join(tmp, "job.yaml")
    open(job, "w").write(f"""name: netns
inputs:
  synth: {{count: {count}, seed: 11, levels: 3}}
sampling: {{directions: 4, sampler: haar, n: {n}, edge: 3.0e13, k: 2, seed: 5}}
line: {{lamda: {LAMDA}, transition: 2, channels: {channels}}}
output: {{directory: unused, samples_per_shard: 2}}
splits: {{train: 0.5, validation: 0.25, test: 0.25, seed: 2}}
statistics: {{compute: false}}
stream: {{endpoint: "tcp://{A_IP}:{port}", ranks: 1, batch: 2, epochs: {epochs}, split: all,
          curve_secret: {keys}/srv.key_secret, curve_authorized: {keys}/authorized}}
""")
    return job


def wait_pid(d, limit=120):
    t0 = time.time()
    while not os.path.exists(os.path.join(d, "serve.pid")) and time.time() - t0 < limit:
        time.sleep(0.05)
    if not os.path.exists(os.path.join(d, "serve.pid")):
        raise SystemExit(f"FAIL: the live server did not start in {limit} s (no {d}/serve.pid)")
    return int(open(os.path.join(d, "serve.pid")).read())


def free_port():
    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        return so.getsockname()[1]


def preflight():
    if os.geteuid() != 0:
        skip("creating network namespaces needs root")
    if not shutil.which("ip"):
        skip("no `ip` command (iproute2)")


def test():
    import h5py
    import numpy as np
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from pycheck import check, report
    preflight()
    me = os.path.abspath(__file__)
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp, Namespaces() as ns:
        r = sh(*ns.run(ns.b, ["ping", "-c", "1", "-W", "2", A_IP])) if shutil.which("ping") \
            else None
        if r is not None and r.returncode != 0:
            skip(f"the veth pair carries no traffic: {r.stdout}{r.stderr}")
        keys = keys_in(tmp)
        port = free_port()
        ep = f"tcp://{A_IP}:{port}"
        job = job_file(tmp, keys, port, 16, 4, "{mode: grid, vmin: -600, vmax: 600, count: 5}", 1)
        d = os.path.join(tmp, "ds")
        gen = subprocess.Popen(ns.run(ns.a, [COEMU, "generate", job, "--out", d, "--quiet"]),
                               stderr=subprocess.PIPE, text=True, env=MPI_ENV)
        pid = None
        try:
            pid = wait_pid(d)
            srv, cli, stranger = (os.path.join(keys, f) for f in
                                  ("srv.key", "cli.key_secret", "stranger.key_secret"))
            # the bound address is only in A: B reaches it over the veth pair
            r = sh(*ns.run(ns.b, [py, me, "stranger", ep, srv, stranger]), timeout=120)
            check(r.returncode == 0 and r.stdout.startswith("REFUSED"),
                  f"B, a stranger's key: nothing, and told so: {r.stdout}{r.stderr[-600:]}")
            r = sh(*ns.run(ns.b, [py, me, "plain", ep]), timeout=120)
            check(r.returncode == 0 and r.stdout.startswith("SILENT"),
                  f"B, no CURVE: nothing: {r.stdout}{r.stderr[-600:]}")
            out = os.path.join(tmp, "got.npz")
            r = sh(*ns.run(ns.b, [py, me, "consume", ep, srv, os.path.join(keys, "cli.key_secret"),
                                  out]), timeout=300)
            check(r.returncode == 0, f"B, the authorised consumer: {r.stdout}{r.stderr[-800:]}")
            err = gen.communicate(timeout=300)[1]
            check(gen.returncode == 0, f"generate in A: {err[-1500:]}")
            with h5py.File(os.path.join(d, "dataset.h5"), "r") as f:
                X, Y = f["inputs"][()], f["targets"][()]
            got = np.load(out) if os.path.exists(out) else None
            check(got is not None and list(got["ids"]) == list(range(len(X))),
                  f"B read the whole epoch in generation order: "
                  f"{None if got is None else list(got['ids'])}")
            if got is not None and len(got["ids"]) == len(X):
                check(got["x"].tobytes() == X.tobytes() and got["y"].tobytes() == Y.tobytes(),
                      "every sample B read is byte-identical to the stored dataset")
            t0 = time.time()
            while time.time() - t0 < 15 and os.path.exists(f"/proc/{pid}"):
                time.sleep(0.1)
            log = open(os.path.join(d, "serve.log")).read()
            check(f"listening on {ep} (CURVE)" in log, f"serve bound {ep}: {log[:400]}")
            check(f"refused a CURVE handshake from {B_IP}: public key" in log,
                  f"serve.log names the refused peer in B: {log[-1200:]}")
            check("sent 16 samples" in log, f"serve sent the epoch once: {log[-400:]}")
        finally:
            gen.kill()
            if pid:
                try:
                    os.kill(pid, 15)
                except OSError:
                    pass
    report()


def bench(samples, rounds):
    """Live throughput of a finished job's server, to B over veth and to A over lo."""
    preflight()
    me = os.path.abspath(__file__)
    py = sys.executable
    epochs_per_round = 4
    with tempfile.TemporaryDirectory() as tmp, Namespaces() as ns:
        keys = keys_in(tmp)
        port = free_port()
        ep = f"tcp://{A_IP}:{port}"
        # COEmuNet-sized samples: 64^3 cubes, 7 channels (3 x 64^3 + 7 x 64^2 float32)
        job = job_file(tmp, keys, port, 64, samples // 4, "{mode: coemunet}",
                       2 * rounds * epochs_per_round + 1)
        d = os.path.join(tmp, "ds")
        gen = subprocess.run(ns.run(ns.a, [COEMU, "generate", job, "--out", d, "--quiet"]),
                             capture_output=True, text=True, env=MPI_ENV)
        if gen.returncode != 0:
            raise SystemExit(f"generate: {gen.stderr[-1500:]}")
        pid = wait_pid(d)
        srv, cli = os.path.join(keys, "srv.key"), os.path.join(keys, "cli.key_secret")
        # for scale: the same live dataset served without CURVE on A's loopback
        plain = f"tcp://127.0.0.1:{free_port()}"
        total = 2 * rounds * epochs_per_round + 1
        psrv = subprocess.Popen(ns.run(ns.a, [COEMU, "serve", d, "--live", "--endpoint", plain,
                                              "--batch", "2", "--split", "all", "--seed", "5",
                                              "--epochs", str(total)]),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        paths = (("veth (B -> A)", ns.b, ep, srv, cli), ("loopback (A -> A)", ns.a, ep, srv, cli),
                 ("loopback, no CURVE", ns.a, plain, "-", "-"))
        rates = {p[0]: [] for p in paths}
        epochs = {p[2]: 0 for p in paths}
        try:
            for _ in range(rounds):
                for name, where, e, k1, k2 in paths:
                    r = sh(*ns.run(where, [py, me, "read", e, k1, k2, str(epochs[e]),
                                           str(epochs_per_round)]), timeout=600)
                    epochs[e] += epochs_per_round
                    line = [x for x in r.stdout.splitlines() if x.startswith("READ")]
                    if r.returncode != 0 or not line:
                        raise SystemExit(f"{name}: {r.stdout}{r.stderr[-800:]}")
                    nb, dt, chunk = line[0].split()[1:]
                    rates[name].append(int(nb) / float(dt) / 1e9)
        finally:
            os.kill(pid, 15)
            psrv.kill()
            psrv.wait()
        sample_mb = int(chunk) / 2 / 1e6
        print(f"live server, {samples} samples of {sample_mb:.2f} MB, batch 2, CURVE, "
              f"{epochs_per_round} epochs per read, {rounds} rounds, load {os.getloadavg()[0]:.1f}")
        for name, v in rates.items():
            v.sort()
            print(f"  {name:19s} median {v[len(v) // 2]:.2f} GB/s  (all: "
                  f"{', '.join(f'{x:.2f}' for x in v)})")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--bench":
        bench(int(sys.argv[2]) if len(sys.argv) > 2 else 32,
              int(sys.argv[3]) if len(sys.argv) > 3 else 3)
    else:
        test()
