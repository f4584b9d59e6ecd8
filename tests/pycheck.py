"""pycheck - the Python tests' counterpart of tests/check.h: check() counts
and reports failures and goes on; report() prints "N passed, N failed" (the
line scripts/test_summary.py and CI read) and exits non-zero on failure."""
import os
import sys
import time

_counts = {"passed": 0, "failed": 0}


def check(cond, what):
    if cond:
        _counts["passed"] += 1
    else:
        _counts["failed"] += 1
        print("FAIL:", what, file=sys.stderr)
    return bool(cond)


def report():
    print(f"{_counts['passed']} passed, {_counts['failed']} failed")
    sys.exit(1 if _counts["failed"] else 0)


def run_in_tmpdir(prefix, run):
    """The tests' main: run(tmp) in a fresh temporary folder, removed
    afterwards whatever happens, then report()."""
    import shutil
    import tempfile
    tmp = tempfile.mkdtemp(prefix=prefix)
    try:
        run(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report()


def mpi_singleton_env():
    """The environment for a coemu command that starts MPI without mpiexec
    (an MPI singleton: generate, stats): under the sanitizers
    (COEMU_SANITIZE), leak checking off, as tests/mpirun.sh has it for every
    MPI process. Open MPI unloads its plugins at exit, and LeakSanitizer's
    tracer crashes in singletons ("Tracer caught signal 11", in `coemu
    stats` three times in a row on one host), which no rerun cures.
    AddressSanitizer and UBSan stay on."""
    import os
    env = dict(os.environ)
    if env.get("COEMU_SANITIZE"):
        env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + ":detect_leaks=0"
    return env


def sanitizer_full_stacks():
    """Under the sanitizers: unwind fully in the processes this test starts,
    so that leaks kept by Open MPI's dlopen'ed components are attributed to
    libmpi and friends (tests/lsan.supp) instead of "<unknown module>"."""
    import os
    for var in ('ASAN_OPTIONS', 'LSAN_OPTIONS'):
        if var in os.environ:
            os.environ[var] += ':fast_unwind_on_malloc=0'


def wait_bound(proc, endpoint, limit_s=60.0):
    """Wait until the server process proc has bound its ipc:// endpoint (the
    socket file exists) or has exited, at most limit_s; True when it is up.
    Not a fixed sleep: a sanitizer build may need seconds to start, a normal
    one milliseconds, and a server that fails first is not waited for."""
    path, t0 = endpoint[len("ipc://"):], time.monotonic()
    assert endpoint.startswith("ipc://"), endpoint
    while proc.poll() is None and time.monotonic() - t0 < limit_s:
        if os.path.exists(path):
            return True
        time.sleep(0.01)
    return proc.poll() is None and os.path.exists(path)


def h5_group_bytes(path, name):
    """Every dataset and attribute under /name of the HDF5 file at path, as
    bytes by name (for byte-identity checks of e.g. /stats)."""
    import h5py
    import numpy as np
    out = {}
    with h5py.File(path, 'r') as h:
        g = h[name]
        for k, v in g.attrs.items():
            out['@' + k] = np.asarray(v).tobytes()

        def visit(sub, obj):
            for k, v in obj.attrs.items():
                out[sub + '@' + k] = np.asarray(v).tobytes()
            if isinstance(obj, h5py.Dataset):
                out[sub] = obj[()].tobytes()
        g.visititems(visit)
    return out
