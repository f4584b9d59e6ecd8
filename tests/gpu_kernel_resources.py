#!/usr/bin/env python3
"""Every CUDA kernel of the build without spills or a stack frame, checked
without a device.

A kernel whose registers spill, or whose local arrays fall to local memory
(a stack frame: e.g. the ray kernel's 8 partial sums when the loop over them
is not unrolled), reads and writes device memory where it meant registers:
several times slower, with the same results, so no parity test sees it.
This test recompiles each .cu file of the build with its own command from
compile_commands.json (the build's flags, -gencode list and defines), adds
`-Xptxas -v`, and reads ptxas's report of every entry function: registers,
stack frame, spill stores and loads. It fails when an entry function has a
stack frame or spills, naming the kernel, the file and the architecture,
and prints one line per kernel (the registers are the first figure to read
when a kernel's occupancy changes). scripts/gpu-tune.sh's launch-bound
variants spill on purpose; they are built there, not here.

  gpu_kernel_resources.py BUILD/compile_commands.json [--self-test]
--self-test: the parser on a fixed ptxas report (a spilling kernel, a
stack frame, a called function's frame that does not count) first.
"""
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pycheck import check, report  # noqa: E402

ENTRY = re.compile(r"Compiling entry function '([^']+)' for '([^']+)'")
PROPS = re.compile(r"Function properties for (\S+)\s*\n\s*(\d+) bytes stack frame, "
                   r"(\d+) bytes spill stores, (\d+) bytes spill loads")
USED = re.compile(r"Used (\d+) registers")


def parse(text):
    """[(kernel, arch, registers, stack, spill_stores, spill_loads)] of the
    entry functions in a ptxas -v report (properties of called, non-entry
    functions are not kernels: left out)."""
    props = {m.group(1): tuple(int(m.group(i)) for i in (2, 3, 4)) for m in PROPS.finditer(text)}
    out = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = ENTRY.search(line)
        if not m:
            continue
        regs = None
        for nxt in lines[i + 1:i + 6]:  # "Function properties", its figures, "Used N registers"
            u = USED.search(nxt)
            if u:
                regs = int(u.group(1))
                break
        stack, st, ld = props.get(m.group(1), (None, None, None))
        out.append((m.group(1), m.group(2), regs, stack, st, ld))
    return out


def self_test():
    text = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z3fooPd' for 'sm_90'
ptxas info    : Function properties for _Z3fooPd
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 84 registers, used 0 barriers, 432 bytes cmem[0]
ptxas info    : Function properties for __internal_trig_reduction_slowpathd
    40 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Compiling entry function '_Z3barPf' for 'sm_90'
ptxas info    : Function properties for _Z3barPf
    8 bytes stack frame, 8 bytes spill stores, 8 bytes spill loads
ptxas info    : Used 64 registers, used 0 barriers, 400 bytes cmem[0]
ptxas info    : Compiling entry function '_Z3bazv' for 'sm_80'
ptxas info    : Function properties for _Z3bazv
    32 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 20 registers, used 0 barriers, 352 bytes cmem[0]
"""
    got = parse(text)
    check(got == [("_Z3fooPd", "sm_90", 84, 0, 0, 0), ("_Z3barPf", "sm_90", 64, 8, 8, 8),
                  ("_Z3bazv", "sm_80", 20, 32, 0, 0)], f"the parser: {got}")
    check(len(bad(got)) == 2, "a spilling kernel and a stack frame are found, a called "
          "function's frame is not")


def bad(kernels):
    return [k for k in kernels if k[3] is None or k[3] or k[4] or k[5]]


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if "--self-test" in sys.argv:
        self_test()
    entries = [e for e in json.load(open(args[0])) if e["file"].endswith(".cu")]
    check(entries, f"{args[0]}: no .cu file in the build (built without CUDA?)")
    with tempfile.TemporaryDirectory(prefix="coemu-ptxas-") as tmp:
        for n, e in enumerate(entries):
            cmd = shlex.split(e["command"])
            while cmd and os.path.basename(cmd[0]) in ("ccache", "sccache"):
                cmd = cmd[1:]  # a cached compile would skip ptxas and its report
            if "-o" not in cmd:
                check(False, f"{e['file']}: no -o in its compile command")
                continue
            cmd[cmd.index("-o") + 1] = os.path.join(tmp, f"{n}.o")
            cmd += ["-Xptxas", "-v"]
            r = subprocess.run(cmd, cwd=e["directory"], capture_output=True, text=True)
            name = os.path.normpath(os.path.join(e["directory"], e["file"]))
            name = os.path.relpath(name, os.environ.get("COEMU_SOURCE_ROOT", os.getcwd()))
            if not check(r.returncode == 0, f"{name}: nvcc failed: {r.stderr[-800:]}"):
                continue
            kernels = parse(r.stderr + r.stdout)
            check(kernels, f"{name}: ptxas reported no entry function")
            for k in kernels:
                print(f"kernel {name} {k[1]} {k[0]}: {k[2]} registers, {k[3]} bytes stack, "
                      f"{k[4]}/{k[5]} bytes spilled (stores/loads)")
            for k in bad(kernels):
                check(False, f"{name}: kernel {k[0]} ({k[1]}) has a stack frame of {k[3]} bytes and "
                      f"spills {k[4]}/{k[5]} bytes (stores/loads): local memory where registers "
                      "were meant (a loop over a local array not unrolled, or more registers than "
                      "the launch bounds allow)")
    report()


if __name__ == "__main__":
    main()
