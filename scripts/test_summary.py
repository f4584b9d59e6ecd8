#!/usr/bin/env python3
"""Summarise a meson testlog.json: the cases counted inside every test
executable ("N passed, N failed" lines printed by tests/check.h and the
Python tests) and the executables themselves. Prints one closing line
"N passed, N failed" and exits non-zero if anything failed."""
import json
import re
import sys

failures_only = "--failures" in sys.argv
path = [a for a in sys.argv[1:] if not a.startswith("--")][0]
passed = failed = skipped = 0
for line in open(path):
    t = json.loads(line)
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
