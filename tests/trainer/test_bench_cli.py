"""`coemu bench train` refuses bad options with a message and exit status 2
(a usage error; the benchmark itself is too long for the test suite)."""
import os
import subprocess
import sys

coemu = os.environ.get("COEMU", "build/pipeline/coemu")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, report  # noqa: E402


def case(name, args, code, text):
    r = subprocess.run([coemu, "bench", "train", *args], capture_output=True, text=True, timeout=60)
    check(r.returncode == code and text in (r.stderr + r.stdout),
          f"{name}: exit {r.returncode}, stderr {r.stderr!r}")


case("help", ["--help"], 0, "--batch")
case("batch too small", ["--batch", "1"], 2, "--batch 1")
case("not a number", ["--iters", "x"], 2, "iters")
case("unknown option", ["--bogus"], 2, "bogus")
case("positional argument", ["extra"], 2, "unexpected argument")
report()
