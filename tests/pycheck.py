"""pycheck - the Python tests' counterpart of tests/check.h: check() counts
and reports failures and goes on; report() prints "N passed, N failed" (the
line scripts/test_summary.py and CI read) and exits non-zero on failure."""
import sys

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
