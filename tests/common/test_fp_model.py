#!/usr/bin/env python3
"""test_fp_model.py - a fast floating-point model is refused (common/
fp_model.h, meson.build; docs/cluster.md, "Compilers").

With -ffast-math a GCC build accepted 'nan' in a LAMDA file and `--dx inf`,
flushed subnormals and failed 24 of the 58 numerical tests (2026-12-07), so:
  - `meson setup` stops, before it looks for any dependency, with an error
    naming the flags and what to do, for -ffast-math, -Ofast and
    -ffinite-math-only (the macros), -funsafe-math-optimizations and
    -fassociative-math (no macro: the behavioural probe), and -ffast-math
    given only at link time (LDFLAGS: crtfastmath.o flushes subnormals);
  - where nvcc is installed, nvcc's fast model in -Dcuda_args
    (--use_fast_math, -ftz=true, --prec-div=false) is refused too;
  - plain flags pass both probes;
  - a file that includes common/error.h, as every coemu source does, does
    not compile with -ffast-math (builds without meson, e.g. the device
    scripts). Prints "N passed, N failed"."""
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, run_in_tmpdir  # noqa: E402

args = sys.argv[1:]
MESON = args[args.index("--meson") + 1]
CC = args[args.index("--cc") + 1:]
ROOT = os.environ["COEMU_SOURCE_ROOT"]
HINT = "coemu needs IEEE arithmetic"


def setup(tmp, name, cflags="", ldflags="", options=("-Dcuda=disabled",)):
    env = dict(os.environ, CC=" ".join(CC), CFLAGS=cflags, LDFLAGS=ldflags)
    return subprocess.run([MESON, "setup", os.path.join(tmp, name), ROOT, *options],
                          capture_output=True, text=True, env=env, timeout=300)


def main(tmp):
    cases = [("-ffast-math", "", "-ffast-math", "__FAST_MATH__"),
             ("-Ofast", "", "-Ofast", "__FAST_MATH__"),
             ("-O2 -ffinite-math-only", "", "-ffinite-math-only", "__FINITE_MATH_ONLY__"),
             ("-funsafe-math-optimizations", "", "", "sums are reassociated"),
             ("-fassociative-math -fno-signed-zeros -fno-trapping-math", "", "", "sums are reassociated"),
             ("", "-ffast-math", "", "subnormals are flushed to zero")]
    for i, (cflags, ldflags, named, why) in enumerate(cases):
        r = setup(tmp, f"b{i}", cflags, ldflags)
        out = r.stdout + r.stderr
        check(r.returncode != 0 and HINT in out and named in out and why in out
              and "docs/cluster.md" in out,
              f"CFLAGS={cflags!r} LDFLAGS={ldflags!r}: setup status {r.returncode}, expected an error "
              f"naming {named!r} and {why!r}: {out[-800:]}")
        # refused before any dependency is looked for: nothing else was probed
        check("Run-time dependency" not in out and "Found pkg-config" not in out,
              f"CFLAGS={cflags!r}: refused before the dependencies")
        check(not os.path.exists(os.path.join(tmp, f"b{i}", "build.ninja")),
              f"CFLAGS={cflags!r}: no build.ninja left that looks configured")
    # plain flags: both probes pass (the setup goes on to the dependencies)
    r = setup(tmp, "ok", "-O2")
    out = r.stdout + r.stderr
    check('"IEEE arithmetic (no fast-math macros)" compiles: YES' in out
          and '"IEEE arithmetic (behaviour)"' in out and "runs: YES" in out and HINT not in out,
          f"-O2: both probes pass: {out[-800:]}")
    # nvcc's fast model, where nvcc is installed
    if shutil.which("nvcc"):
        for flag in ("--use_fast_math", "-ftz=true", "--prec-div=false"):
            r = setup(tmp, "cuda" + flag.strip("-"), options=("-Dcuda=enabled", "-Dcuda_args=" + flag))
            out = r.stdout + r.stderr
            check(r.returncode != 0 and HINT in out and f"-Dcuda_args {flag}" in out,
                  f"-Dcuda_args={flag}: refused, naming it: {r.returncode} {out[-600:]}")
    # the header itself, for builds without meson
    src = os.path.join(tmp, "t.c")
    open(src, "w").write('#include "common/error.h"\nint main(void) { return 0; }\n')
    for flags in (["-ffast-math"], ["-ffinite-math-only"]):
        r = subprocess.run(CC + ["-std=c17", "-fsyntax-only", "-I", ROOT] + flags + [src],
                           capture_output=True, text=True)
        check(r.returncode != 0 and HINT in r.stderr, f"{flags}: common/error.h refuses it: {r.stderr[-400:]}")
    r = subprocess.run(CC + ["-std=c17", "-fsyntax-only", "-I", ROOT, src], capture_output=True, text=True)
    check(r.returncode == 0, f"common/error.h compiles with plain flags: {r.stderr[-400:]}")


run_in_tmpdir("coemu-fp-model-", main)
