"""The stats core library (moments, select, transforms; stats/meson.build)
has no MPI and no HDF5 dependency, so that the trainer can link it alone:
  1. no core source or header includes, directly or through the project's
     own headers, an MPI or HDF5 header;
  2. the core archive references no MPI or HDF5 symbol (nm -u);
  3. the probes, linked with --no-as-needed (every library of the meson
     dependency list stays in the executable), need no libmpi or libhdf5
     (ldd): one against the core only, one against the trainer library.
usage: test_core_deps.py --lib LIBCORE.a --probe EXE... -- CORE_FILES..."""
import os
import re
import shlex
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, report  # noqa: E402

ROOT = os.environ["COEMU_SOURCE_ROOT"]
# Where the project's quoted includes are found (meson's `inc`, the part the
# stats core may use; the root too, for folder-qualified "stats/x.h").
SEARCH = [ROOT, os.path.join(ROOT, "common"), os.path.join(ROOT, "stats")]
INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]', re.M)
FORBIDDEN_HEADER = re.compile(r"(^|/)(mpi[^/]*|pmpi[^/]*|hdf5[^/]*|H5[^/]*)\.h$", re.I)
FORBIDDEN_SYMBOL = re.compile(r"^(P?MPI_|ompi_|H5)")
FORBIDDEN_LIB = re.compile(r"lib(mpi|open-pal|open-rte|pmix|hdf5)", re.I)


def args():
    a = sys.argv[1:]
    cut = a.index("--")
    opts, files = a[:cut], a[cut + 1:]
    lib = opts[opts.index("--lib") + 1]
    probes = [opts[i + 1] for i, o in enumerate(opts) if o == "--probe"]
    return lib, probes, files


def resolve(name, here):
    for d in [here] + SEARCH:
        p = os.path.join(d, name)
        if os.path.isfile(p):
            return os.path.normpath(p)
    return None


def check_includes(files):
    seen, todo = set(), [os.path.normpath(f) for f in files]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        for kind, name in INCLUDE.findall(open(f).read()):
            rel = os.path.relpath(f, ROOT)
            check(not FORBIDDEN_HEADER.search(name),
                  f"{rel} includes {kind}{name}{'>' if kind == '<' else kind}: the stats core must not use MPI or HDF5 "
                  "(move the code to stats_mpi or stats_file, stats/meson.build)")
            if kind == '"':
                p = resolve(name, os.path.dirname(f))
                if check(p is not None, f'{rel}: "{name}" not found in {SEARCH}'):
                    todo.append(p)
    return seen


def main():
    lib, probes, files = args()
    seen = check_includes(files)
    check(len(seen) >= len(files), "core files read")

    r = subprocess.run(["nm", "-u", lib], capture_output=True, text=True)
    check(r.returncode == 0, f"nm -u {lib}: {r.stderr}")
    undef = {line.split()[-1] for line in r.stdout.splitlines() if line.strip() and
             not line.endswith(":")}
    check(len(undef) > 0, f"nm -u {lib} lists the core's undefined symbols")
    bad = sorted(s for s in undef if FORBIDDEN_SYMBOL.match(s))
    check(not bad, f"{os.path.basename(lib)} references MPI/HDF5 symbols: {bad}")

    # a cross build's tests run under meson's exe_wrapper (qemu-user for
    # aarch64, scripts/cross-check-arm64.sh), where the host's ldd cannot
    # read the probes: the probe's own dynamic loader lists them, as ldd has
    # it do, with LD_TRACE_LOADED_OBJECTS in the guest's environment (-E)
    wrapper = shlex.split(os.environ.get("MESON_EXE_WRAPPER", ""))
    for exe in probes:
        if wrapper:
            check(os.path.basename(wrapper[0]).startswith("qemu-"),
                  f"exe_wrapper {wrapper[0]}: only qemu-user can list a cross probe's libraries")
            r = subprocess.run(wrapper + ["-E", "LD_TRACE_LOADED_OBJECTS=1", exe],
                               capture_output=True, text=True)
        else:
            r = subprocess.run(["ldd", exe], capture_output=True, text=True)
        check(r.returncode == 0, f"ldd {exe}: {r.stderr}")
        bad = [line.split()[0] for line in r.stdout.splitlines() if FORBIDDEN_LIB.search(line)]
        check(not bad, f"{os.path.basename(exe)} (linked --no-as-needed) needs {bad}: "
              "a library in its meson dependency list brings in MPI or HDF5")
        r = subprocess.run(wrapper + [exe], capture_output=True, text=True)
        check(r.returncode == 0, f"{exe} runs: {r.stdout} {r.stderr}")
    report()


main()
