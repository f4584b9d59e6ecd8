"""What the Python tests of `coemu serve --generate` share (test_onfly,
test_pilot): the binaries, the MPI launcher, the LAMDA file, and starting a
server and waiting until it answers INFO."""
import os
import subprocess
import sys
import time

ROOT = os.environ.get("COEMU_SOURCE_ROOT", ".")
sys.path.insert(0, os.path.join(ROOT, "pipeline", "stream"))
import coemu_stream as cs  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, wait_bound  # noqa: E402

COEMU = os.environ.get("COEMU", "build/pipeline/coemu")
MPI = [os.environ.get("COEMU_MPIEXEC", "mpirun"), "--allow-run-as-root", "--oversubscribe"]
LAMDA = os.path.join(os.path.abspath(ROOT), "tests", "data", "lamda", "co.dat")


def start(args, mpi=True):
    """`coemu serve ARGS`, on 2 MPI ranks unless mpi is False; stderr piped."""
    cmd = (MPI + ["-n", "2"] if mpi else []) + [COEMU, "serve"] + args
    return subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)


def wait_up(ep, proc, t=120):
    """The server's INFO once it answers at ep; None if proc exits first or t s pass."""
    t0 = time.time()
    while time.time() - t0 < t:
        if proc.poll() is not None:
            return None
        try:
            return cs.server_info(ep, timeout_s=0.5)
        except Exception:
            time.sleep(0.1)
    return None


def finish(p, what):
    """stderr of a started server once it exits (killed after 60 s); checks it exited 0."""
    try:
        err = p.communicate(timeout=60)[1]
    except subprocess.TimeoutExpired:
        p.kill()
        err = p.communicate()[1]
    check(p.returncode == 0, f"{what}: exit {p.returncode}: {err[-2000:]}")
    return err


SLOW = 4 if os.environ.get("COEMU_SANITIZE") else 1  # sanitizer builds run ~4x slower


def serve_stored(d, tmp, args):
    """`coemu serve D` (one process, split 'all', 2 epochs, seed 7) on a fresh
    ipc endpoint under tmp: (the process, the endpoint)."""
    ep = f"ipc://{tmp}/s-{time.monotonic_ns()}.sock"
    p = subprocess.Popen([COEMU, "serve", d, "--endpoint", ep, "--split", "all", "--epochs", "2",
                          "--heartbeat", "0.2", "--seed", "7", *args],
                         stderr=subprocess.PIPE, text=True)
    wait_bound(p, ep, 60 * SLOW)
    return p, ep


def stop(p):
    """stderr of a serve_stored process once it exits (killed after 20 s)."""
    try:
        return p.communicate(timeout=20 * SLOW)[1]
    except subprocess.TimeoutExpired:
        p.kill()
        return p.communicate()[1]
