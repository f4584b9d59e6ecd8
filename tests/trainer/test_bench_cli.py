"""`coemu bench train` refuses bad options with a message and exit status 2
(a usage error), a short run on the CPU (the one-channel model, batch 2)
prints a training and an inference figure for each feed asked for
(trainer/train_bench.h) and their share of the CPU's measured peak (or,
with --flops-per-cycle, threads x clock x that), and --device cuda fails clearly (exit 1) without
a CUDA build or a device."""
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
# --help gives each option's range, and the check names only the option
# out of it (it used to list every constraint: "--batch 1 (2..4096), --iters
# 1 (1..1000), --nfreq 1 (1..64): out of range")
case("help gives the batch range", ["--help"], 0, "training batch size, 2..4096")
case("help gives the nfreq range", ["--help"], 0, "output channels, 1..64")
case("batch too small", ["--batch", "1", "--iters", "1"], 2, "error: --batch 1: expected 2..4096\n")
case("too many channels", ["--nfreq", "65"], 2, "error: --nfreq 65: expected 1..64\n")
case("no iterations", ["--iters", "0"], 2, "error: --iters 0: expected 1..1000\n")
case("not a number", ["--iters", "x"], 2, "iters")
case("unknown option", ["--bogus"], 2, "bogus")
case("positional argument", ["extra"], 2, "unexpected argument")
case("negative FLOP a cycle", ["--flops-per-cycle", "-5"], 2, "--flops-per-cycle -5: expected 0..4096")
case("unknown device", ["--device", "gpu"], 2, "--device gpu: expected cpu or cuda")
case("unknown feed", ["--feeds", "pageable,mapped"], 2,
     "--feeds pageable,mapped: feed 'mapped': expected pageable, pinned or resident")
case("an empty feed", ["--feeds", "pinned,,resident"], 2, "feed '': expected pageable")
case("no feeds", ["--feeds", ""], 2, "an empty list of feeds")
# every feed's figures, in order, once each; the GFLOP/s lines once (the first feed's)
r = subprocess.run([coemu, "bench", "train", "--batch", "2", "--iters", "1", "--nfreq", "1",
                    "--feeds", "resident,pageable,pinned"], capture_output=True, text=True,
                   timeout=300)
lines = r.stdout.splitlines()
want = ["train coemunet1 batch=2 samples/s", "infer coemunet1 ms/sample",
        "train coemunet1 batch=2 feed=pinned samples/s", "infer coemunet1 feed=pinned ms/sample",
        "train coemunet1 batch=2 feed=resident samples/s", "infer coemunet1 feed=resident ms/sample"]
at = [next((i for i, ln in enumerate(lines) if ln.startswith(w + " ")), -1) for w in want]
check(r.returncode == 0 and -1 not in at and at == sorted(at)
      and sum(ln.startswith("train coemunet1 GFLOP/s") for ln in lines) == 1
      and all(float(lines[i].split()[-1]) > 0 for i in at),
      f"three feeds: exit {r.returncode}, figures at lines {at}, stdout {r.stdout!r}, "
      f"stderr {r.stderr!r}")
# the peak: measured by default (the threads' FMA rate: no clock or FLOP per
# cycle assumed), positive, and above what training reaches (the layers'
# GFLOP/s are a share of it: this run's is a few per cent); with
# --flops-per-cycle, threads x clock x that
peak = [ln for ln in lines if ln.startswith("train peak GFLOP/s ")]
shares = [float(ln.split("(")[1].split("%")[0].split(",")[-1]) for ln in lines
          if ln.startswith(("train coemunet1 GFLOP/s", "infer coemunet1 GFLOP/s"))]
check(len(peak) == 1 and "(measured: " in peak[0] and float(peak[0].split()[3]) > 0
      and len(shares) == 2 and all(0 <= x <= 100 for x in shares),
      f"the measured peak: {peak}, shares of it {shares}")
r = subprocess.run([coemu, "bench", "train", "--batch", "2", "--iters", "1", "--nfreq", "1",
                    "--flops-per-cycle", "64"], capture_output=True, text=True, timeout=300)
check(r.returncode == 0 and " MHz x 64 FLOP/cycle)" in r.stdout,
      f"--flops-per-cycle 64: exit {r.returncode}, stdout {r.stdout!r}")
# --device cuda: without the CUDA backend in this build, or without a device,
# exit 1 with the reason; on a GPU host it runs (a short configuration)
r = subprocess.run([coemu, "bench", "train", "--device", "cuda", "--batch", "2", "--iters", "1",
                    "--nfreq", "1"], capture_output=True, text=True, timeout=300)
why = ("trainer backend 'cuda' is not built into this coemu", "no usable CUDA device", "no CUDA device")
check((r.returncode == 0 and "train coemunet1 cuda batch=2 samples/s" in r.stdout)
      or (r.returncode == 1 and r.stderr.startswith("coemu bench train: error: ")
          and any(w in r.stderr for w in why)),
      f"--device cuda: exit {r.returncode}, stderr {r.stderr!r}")
report()
