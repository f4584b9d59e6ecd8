#!/usr/bin/env python3
"""scripts/test_summary.py, the closing line's counter: its counts, the
rerun logs that replace a first run's entries, and --sanitizer-faults,
which must name a test only when LeakSanitizer's runtime itself failed
(scripts/test.sh reruns those once) and never a test that found a leak or
failed for any other reason."""
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, report  # noqa: E402

ROOT = os.environ.get("COEMU_SOURCE_ROOT",
                      os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
SUMMARY = os.path.join(ROOT, "scripts", "test_summary.py")

TRACER = ("FAIL: coemu stats: ...\nTracer caught signal 11: addr=0x0 pc=0x7f5e sp=0x7f5d\n"
          "==4242==LeakSanitizer has encountered a fatal error.\n"
          "==4242==HINT: For debugging, try setting environment variable "
          "LSAN_OPTIONS=verbosity=1:log_threads=1\n")
LEAK = ("=================================================================\n"
        "==77==ERROR: LeakSanitizer: detected memory leaks\n\n"
        "Direct leak of 64 byte(s) in 1 object(s) allocated from:\n")


def entry(name, result, stdout, rc):
    return {"name": f"coemu:{name.split('_')[0]} / {name}", "result": result,
            "stdout": stdout, "returncode": rc}


def write(path, entries):
    with open(path, "w") as f:
        for e in entries:
            f.write(json.dumps(e) + "\n")


def run(*args):
    r = subprocess.run([sys.executable, SUMMARY, *args], capture_output=True, text=True)
    return r.returncode, r.stdout


def main():
    with tempfile.TemporaryDirectory(prefix="coemu-test-summary-") as tmp:
        first = os.path.join(tmp, "testlog.json")
        write(first, [
            entry("solver_cli", "OK", "60 passed, 0 failed\n", 0),
            entry("pipeline_lvg_job", "FAIL", "40 passed, 1 failed\n" + TRACER, 1),
            entry("stats_leaky", "FAIL", "3 passed, 0 failed\n" + LEAK, 1),
            entry("trainer_broken", "FAIL", "7 passed, 2 failed\n", 1),
            entry("rotate_slow", "TIMEOUT", "", -15),
            entry("serve_ok_with_text", "OK", "5 passed, 0 failed\n" + TRACER, 0),
            entry("solver_naive", "EXPECTEDFAIL", "1 passed, 9 failed\n", 1),
            entry("gpu_check", "SKIP", "", 77),
        ])
        rc, out = run("--sanitizer-faults", first)
        check(rc == 0 and out.split() == ["pipeline_lvg_job"],
              f"--sanitizer-faults names only the test whose tracer crashed: {out!r}")

        rc, out = run(first)
        # 60 + (40, 1) + (3, then 1 for a failed test that counted none) +
        # (7, 2) + (0, 1) + 5 + 1: passed 116, failed 5
        check(rc == 1 and out.strip() == "116 passed, 5 failed, 1 skipped",
              f"the first run's counts: {out!r} (exit {rc})")

        rerun = os.path.join(tmp, "rerun.json")
        write(rerun, [entry("pipeline_lvg_job", "OK", "41 passed, 0 failed\n", 0)])
        rc, out = run(first, rerun)
        check(rc == 1 and out.strip() == "117 passed, 4 failed, 1 skipped",
              f"the rerun's entry replaces the first, the other failures stand: {out!r}")

        clean = os.path.join(tmp, "clean.json")
        write(clean, [entry("solver_cli", "OK", "60 passed, 0 failed\n", 0),
                      entry("pipeline_lvg_job", "FAIL", "40 passed, 1 failed\n" + TRACER, 1)])
        rc, out = run(clean, rerun)
        check(rc == 0 and out.strip() == "101 passed, 0 failed",
              f"a suite whose only failure was the tracer passes after its rerun: {out!r}")
        rc, out = run(clean, os.path.join(tmp, "clean.json"))
        check(rc == 1, "the same failure in the rerun still fails")

        rc, out = run("--failures", first, rerun)
        check("=== coemu:pipeline / pipeline_lvg_job" not in out
              and "=== coemu:stats / stats_leaky (FAIL)" in out and "detected memory leaks" in out,
              f"--failures lists what still failed after the rerun: {out[:300]!r}")
    report()


if __name__ == "__main__":
    main()
