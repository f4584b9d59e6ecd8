"""`coemu bench train` refuses bad options with a message and a non-zero
exit (the benchmark itself is too long for the test suite)."""
import os
import subprocess
import sys

coemu = os.environ.get("COEMU", "build/pipeline/coemu")
passed = failed = 0


def case(name, args, code, text):
    global passed, failed
    r = subprocess.run([coemu, "bench", "train", *args], capture_output=True, text=True, timeout=60)
    ok = r.returncode == code and text in (r.stderr + r.stdout)
    if ok:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name}: exit {r.returncode}, stderr {r.stderr!r}")


case("help", ["--help"], 0, "--batch")
case("batch too small", ["--batch", "1"], 1, "--batch 1")
case("not a number", ["--iters", "x"], 1, "iters")
case("unknown option", ["--bogus"], 1, "bogus")
case("positional argument", ["extra"], 1, "unexpected argument")
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
