#!/usr/bin/env python3
"""Summarise a meson testlog.json: the cases counted inside every test
executable ("N passed, N failed" lines printed by tests/check.h and the
Python tests) and the executables themselves. Prints one closing line
"N passed, N failed" and exits non-zero if anything failed.

  test_summary.py [--failures] LOG [RERUN_LOG ...]
A test in a later log (scripts/test.sh's reruns) replaces its entry in the
earlier ones.
  test_summary.py --sanitizer-faults LOG
prints the names of the failed tests whose output shows the sanitizer
runtime itself failing (lsan_fault below), one per line, and nothing else."""
import json
import re
import sys

# LeakSanitizer's own fault, not a leak: its tracer thread (which stops the
# process's threads to scan their stacks at exit) crashed. A known,
# intermittent fault of the runtime (google/sanitizers#1353), seen once in
# `coemu stats` in a CI run and gone on a rerun. A leak report reads
# "ERROR: LeakSanitizer: detected memory leaks" and is never matched.
def lsan_fault(out):
    return "Tracer caught signal" in out and "LeakSanitizer has encountered a fatal error" in out

failures_only = "--failures" in sys.argv
paths = [a for a in sys.argv[1:] if not a.startswith("--")]
tests = {}
for path in paths:
    for line in open(path):
        t = json.loads(line)
        tests[t["name"]] = t  # a rerun's entry replaces the first run's
if "--sanitizer-faults" in sys.argv:
    for name, t in tests.items():
        out = (t.get("stdout") or "") + (t.get("stderr") or "")
        if t["result"] not in ("OK", "EXPECTEDFAIL", "SKIP") and lsan_fault(out):
            print(name.split(" / ")[-1])
    sys.exit(0)
passed = failed = skipped = 0
for t in tests.values():
    out = (t.get("stdout") or "") + (t.get("stderr") or "")
    ok = t["result"] in ("OK", "EXPECTEDFAIL")
    if t["result"] == "SKIP":
        skipped += 1
        continue
    if failures_only:
        if not ok:
            print(f"=== {t['name']} ({t['result']})\n{out[-6000:]}")
        continue
    m = re.findall(r"^(\d+) passed, (\d+) failed", out, re.M)
    if t["result"] == "EXPECTEDFAIL":
        # a should_fail test (e.g. solver_lte_f32_naive): its own checks are
        # meant to fail; meson's verdict is the one case that counts
        p, f = 1, 0
    elif m:
        p, f = map(int, m[-1])
    else:
        p, f = (1, 0) if ok else (0, 1)
    if not ok and f == 0:
        f = 1  # crashed or timed out after its last report
    passed += p
    failed += f
if not failures_only:
    print(f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
    sys.exit(1 if failed else 0)
