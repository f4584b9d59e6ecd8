"""Shared by the tests of the Python package (python/coemu): a small real
dataset made by `coemu generate` (12 synthetic models x 4 directions, n = 8,
3 channels, /checksums and /stats), `coemu serve` started on it, and the
package put on sys.path from this checkout."""
import atexit
import os
import subprocess
import sys
import time

ROOT = os.path.abspath(os.environ.get("COEMU_SOURCE_ROOT",
                                      os.path.join(os.path.dirname(__file__), "..", "..")))
COEMU = os.environ.get("COEMU", os.path.join(ROOT, "build", "pipeline", "coemu"))
sys.path.insert(0, os.path.join(ROOT, "python"))
sys.path.insert(0, os.path.join(ROOT, "tests"))


def have_torch():
    try:
        import torch  # noqa: F401
        return True
    except ImportError:
        return False


def skip_without_torch():
    """meson's skip status (77), with the reason, when torch cannot be imported."""
    if not have_torch():
        print(f"skipped: torch missing ({sys.executable} cannot import torch; "
              f"apt-get install python3-torch)")
        sys.exit(77)


def make_dataset(tmp, name="ds"):
    """48 samples: 24 train, 8 validation, 16 test (the split of the seed)."""
    d = os.path.join(tmp, name)
    job = os.path.join(tmp, name + ".yaml")
    lamda = os.path.join(ROOT, "tests", "data", "lamda", "co.dat")
    with open(job, "w") as f:
        f.write(f"""name: pytest
inputs: {{synth: {{count: 12, seed: 3, levels: 2}}}}
sampling: {{directions: 4, sampler: haar, n: 8, edge: 3.0e13, k: 1, seed: 11}}
line: {{lamda: {lamda}, transition: 2, channels: {{mode: grid, vmin: -600, vmax: 600, count: 3}}}}
output: {{directory: unused, samples_per_shard: 16}}
splits: {{train: 0.5, validation: 0.25, test: 0.25, seed: 2}}
statistics: {{compute: true}}
""")
    env = dict(os.environ, OMP_NUM_THREADS="2")
    if env.get("COEMU_SANITIZE"):
        env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + ":detect_leaks=0"
    r = subprocess.run([COEMU, "generate", job, "--out", d, "--quiet"], capture_output=True,
                       text=True, timeout=300, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"coemu generate failed: {r.stderr[-2000:]}")
    return d


_servers = []


@atexit.register
def _kill_servers():  # a test that fails half-way leaves no server behind
    for p in _servers:
        if p.poll() is None:
            p.kill()


def serve(d, ep, *args, curve=None):
    """coemu serve D on ep; returns the process once it answers INFO (asked
    with the CURVE keys `curve` when given)."""
    from coemu.stream import ProducerSilent, server_info
    p = subprocess.Popen([COEMU, "serve", d, "--endpoint", ep, "--heartbeat", "0.2", *args],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _servers.append(p)
    for _ in range(50):
        try:
            server_info(ep, timeout_s=0.2, curve=curve)
            return p
        except ProducerSilent:
            if p.poll() is not None:
                raise RuntimeError(f"coemu serve exited: {p.stderr.read()}")
    p.kill()
    raise RuntimeError("coemu serve did not answer INFO within 10 s")


def finish(p, timeout=15):
    """Wait for a server to exit; (status, stderr). Killed (-9) if it does not."""
    try:
        _, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
        return -9, err
    return p.returncode, err


def wait_gone(p, timeout):
    t0 = time.monotonic()
    while p.poll() is None and time.monotonic() - t0 < timeout:
        time.sleep(0.05)
    return p.poll() is not None
